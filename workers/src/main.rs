#![doc = include_str!("../README.md")]

use std::sync::Arc;
use std::time::Duration;

use apalis::layers::WorkerBuilderExt;
use apalis::prelude::{Monitor, WorkerBuilder};

use shomei_config::Config;
use shomei_jobs::{reconciler, runner, scheduler, JobContext};
use shomei_schema::JobKind;

/// On SIGTERM the worker stops taking jobs and waits this long for the running ones; past it,
/// it exits anyway and their jobs are run again elsewhere (apalis hands a silent worker's
/// tasks to the others; the sweeper takes back their rows).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What the exit waits for blocking calls still running (dropping a tokio runtime would wait
/// for them for ever).
const EXIT_GRACE: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run());
    // A run cancelled at its timeout may have left a blocking call behind (a PKCS#11 call or a
    // TSA request on a blocking thread); it must not hold up the exit.
    runtime.shutdown_timeout(EXIT_GRACE);
    result
}

async fn run() -> anyhow::Result<()> {
    shomei_telemetry::init();
    let config = Config::from_env()?;
    shomei_telemetry::metrics::init("worker");
    let metrics_addr = shomei_telemetry::metrics::serve(config.worker.metrics_addr).await?;
    tracing::info!(%metrics_addr, "metrics at /metrics");
    let ctx = Arc::new(JobContext::open(&config).await?);
    let concurrency = config.worker.concurrency;
    let process = format!(
        "{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    tracing::info!(worker.process = %process, concurrency, "worker starting");

    let reconcile = tokio::spawn(reconciler::run(ctx.clone(), config.worker.reconcile_every));
    // Seals the chained logs, anchors them and purges them past retention.
    let schedule = tokio::spawn(scheduler::run(ctx.clone()));

    // An idle worker fetches when a push of its kind is announced, and polls in any case
    // (`shomei_jobs::wake`).
    let notices = ctx.queue.listen_for_pushes();
    let poll_every = config.worker.poll_every;
    let mut monitor = Monitor::new();
    for kind in JobKind::ALL {
        let ctx = ctx.clone();
        let process = process.clone();
        let notices = notices.clone();
        monitor = monitor.register(move |restarts| {
            let storage = ctx.queue.worker_storage(kind, poll_every, &notices);
            // apalis-redis refuses a name whose heartbeat is still fresh, so a restarted worker
            // (after Redis came back empty, say) needs a new one.
            WorkerBuilder::new(format!("{}-{process}-r{restarts}", kind.as_str()))
                .backend(storage)
                .data(ctx.clone())
                .concurrency(concurrency)
                .build(runner::handle)
        });
    }
    let result = monitor
        .should_restart(|worker, error| {
            tracing::warn!(worker = %worker.name(), %error, "worker stopped; restarting");
            // Redis down makes every restart fail at once; pace them instead of spinning.
            tokio::task::block_in_place(|| std::thread::sleep(Duration::from_secs(1)));
            true
        })
        .shutdown_timeout(SHUTDOWN_GRACE)
        .run_with_signal(async {
            shomei_telemetry::shutdown_signal().await;
            Ok(())
        })
        .await;
    reconcile.abort();
    schedule.abort();
    tracing::info!("worker shut down");
    Ok(result?)
}
