#![doc = include_str!("../README.md")]
#![allow(clippy::print_stdout)] // the report on stdout is the point of this binary

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::stream::{self, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

mod cpu;

#[derive(Parser, Debug)]
#[command(version, about = "Load test of a running Shomei deployment")]
struct Cli {
    /// Base URL of the API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    api: String,
    /// API key of the tenant to load (`shomei-api tenant create NAME` prints one).
    #[arg(long, env = "SHOMEI_LOADTEST_KEY", hide_env_values = true)]
    key: String,
    /// Documents to upload and sign (one sign job each).
    #[arg(long, default_value_t = 100)]
    documents: usize,
    /// Requests in flight at once, for uploads and for sign submissions.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Instead of the load run: sign this many documents one at a time, each submitted only
    /// when the previous one is signed, and report the idle submit→signed latency.
    #[arg(long, default_value_t = 0)]
    idle_latency: usize,
    /// Submit the sign requests as batches of this many (`POST /v1/batches`) instead of one
    /// `POST /v1/documents/{id}/sign` each, and follow the batches instead of the jobs; 0: one
    /// by one.
    #[arg(long, default_value_t = 0)]
    batch_size: usize,
    /// The PDF uploaded N times.
    #[arg(long, default_value = "samples/contract.pdf")]
    pdf: PathBuf,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Interval between two polling rounds of `GET /v1/jobs?ids=…` (`GET /v1/batches/{id}` with
    /// `--batch-size`).
    #[arg(long, default_value_t = 50)]
    poll_interval_ms: u64,
    /// Pending jobs (batches with `--batch-size`) polled per round at most, oldest submission
    /// first, in chunks of `--poll-concurrency`. Jobs run roughly in order, so a round ends at the
    /// first such chunk of which less than half had finished (polling the backlog behind it
    /// would only load the API being measured). A round that finds at least half of the window
    /// finished is followed by the next one without the pause.
    #[arg(long, default_value_t = 64)]
    poll_window: usize,
    /// Jobs per polling request (`GET /v1/jobs?ids=…`), or batches polled at once with
    /// `--batch-size`; also the requests in flight at once when the details of batched jobs are
    /// fetched, after the measured phase.
    #[arg(long, default_value_t = 8)]
    poll_concurrency: usize,
    /// Sign this many extra documents first, unmeasured, and wait for them: proves the workers
    /// consume and warms up connections and HSM sessions.
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Give up on the jobs still pending when none finished for this long.
    #[arg(long, default_value_t = 120)]
    stall_timeout_secs: u64,
    /// After the pipeline run, measure the raw HSM signing rate (`sign_digest` with the
    /// configured key, from the SHOMEI_* environment) for this many seconds; 0 skips it.
    #[arg(long, default_value_t = 0.0)]
    hsm_seconds: f64,
    /// Threads signing at once for the raw HSM rate (default: the number of CPUs).
    #[arg(long)]
    hsm_threads: Option<u32>,
    /// HSM signatures one document costs (2 for B-T with a TSA that signs with the same HSM):
    /// the HSM bound is the raw rate divided by this.
    #[arg(long, default_value_t = 1)]
    signatures_per_document: u32,
    /// Report the CPU time this process (and its children) used during the measured phase:
    /// NAME=PID, repeatable (the API, each worker, the TSA, the PostgreSQL postmaster, Redis).
    #[arg(long = "cpu-of", value_parser = cpu::parse_watched)]
    cpu_of: Vec<cpu::Watched>,
}

/// Error and retry tallies, keyed by a short description.
#[derive(Default)]
struct Tally(Mutex<BTreeMap<String, u64>>);

impl Tally {
    fn add(&self, kind: impl Into<String>) {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind.into())
            .or_default() += 1;
    }
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Default)]
struct Progress {
    uploaded: AtomicU64,
    submitted: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    polls: AtomicU64,
}

struct Shared {
    http: reqwest::Client,
    api: String,
    key: String,
    progress: Progress,
    errors: Tally,
}

/// A sign job on its way, and when its sign (or batch) POST was sent.
#[derive(Clone, Copy)]
struct Submitted {
    job_id: Uuid,
    submitted_at: Instant,
}

/// What the submitters hand the poller to follow.
enum Tracked {
    /// A job submitted on its own, followed with `GET /v1/jobs?ids=…` with the jobs beside it.
    Job(Submitted),
    /// A batch, followed with `GET /v1/batches/{id}` until its `completed_at` is set; `seen`:
    /// its jobs finished at the last poll.
    Batch {
        batch_id: Uuid,
        jobs: Vec<Submitted>,
        seen: Counts,
    },
}

impl Tracked {
    /// Its jobs: one, or the batch's.
    fn jobs(&self) -> &[Submitted] {
        match self {
            Tracked::Job(job) => std::slice::from_ref(job),
            Tracked::Batch { jobs, .. } => jobs,
        }
    }
}

/// Finished jobs of a batch, as counted by `GET /v1/batches/{id}`.
#[derive(Clone, Copy, Default)]
struct Counts {
    succeeded: u64,
    failed: u64,
}

/// What the poller saw.
#[derive(Default)]
struct Polled {
    /// Jobs followed on their own, finished.
    finished: Vec<Finished>,
    /// Jobs of completed batches, with when their batch was seen complete: their details come
    /// after the measured phase (`job_details`).
    batched: Vec<(Submitted, Instant)>,
    /// Jobs still pending at the stall timeout (every job of a batch still pending).
    timed_out: u64,
}

struct Finished {
    status: String,
    attempts: i64,
    error: Option<String>,
    /// Client view: sign POST sent → job seen finished by polling (a job of a batch: batch
    /// POST sent → batch seen complete).
    completion: Duration,
    observed_at: Instant,
    created_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
}

/// Documents/s between the 10th and the 90th percentile of the finish times (by the database
/// clock): the middle 80 % of the documents over the time they took. `None` for fewer than 20.
fn steady_rate(mut finished_at: Vec<DateTime<Utc>>) -> Option<f64> {
    if finished_at.len() < 20 {
        return None;
    }
    finished_at.sort_unstable();
    let (first, last) = (finished_at.len() / 10, finished_at.len() * 9 / 10 - 1);
    let seconds = (finished_at[last] - finished_at[first]).num_microseconds()? as f64 / 1e6;
    (seconds > 0.0).then(|| (last - first) as f64 / seconds)
}

#[derive(Serialize)]
struct LatencySummary {
    count: usize,
    mean_ms: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl LatencySummary {
    fn of(mut samples: Vec<Duration>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        // Nearest-rank percentile.
        let pct = |p: f64| {
            let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
            ms(samples[rank.clamp(1, samples.len()) - 1])
        };
        let total: Duration = samples.iter().sum();
        Some(LatencySummary {
            count: samples.len(),
            mean_ms: ms(total) / samples.len() as f64,
            p50_ms: pct(50.0),
            p95_ms: pct(95.0),
            p99_ms: pct(99.0),
            max_ms: ms(*samples.last().expect("not empty")),
        })
    }

    fn line(&self) -> String {
        format!(
            "n={:<5} mean={:>8.1} ms  p50={:>8.1} ms  p95={:>8.1} ms  p99={:>8.1} ms  max={:>8.1} ms",
            self.count, self.mean_ms, self.p50_ms, self.p95_ms, self.p99_ms, self.max_ms
        )
    }
}

#[derive(Serialize)]
struct HsmRate {
    key_label: String,
    threads: u32,
    seconds: f64,
    signatures: u64,
    signatures_per_second: f64,
}

#[derive(Serialize)]
struct Report {
    api: String,
    pdf: String,
    pdf_bytes: usize,
    documents: usize,
    concurrency: usize,
    poll_interval_ms: u64,
    uploaded: u64,
    upload_seconds: f64,
    upload_latency: Option<LatencySummary>,
    submitted: u64,
    succeeded: u64,
    failed: u64,
    timed_out: u64,
    /// Jobs that needed more than one attempt.
    retried_jobs: u64,
    attempts_total: i64,
    /// Sign POST latency (202 received).
    submit_latency: Option<LatencySummary>,
    /// Client view: sign POST sent → job seen finished (includes up to one polling round); with
    /// batches, batch POST sent → batch seen complete, for each of its jobs.
    completion_latency: Option<LatencySummary>,
    /// Server view: job `created_at` → `finished_at` (no polling delay).
    server_completion_latency: Option<LatencySummary>,
    /// First sign POST sent → last job seen finished.
    pipeline_seconds: f64,
    /// Succeeded documents ÷ pipeline_seconds.
    documents_per_second: f64,
    /// Earliest job `created_at` → latest `finished_at`, by the database clock.
    server_pipeline_seconds: Option<f64>,
    server_documents_per_second: Option<f64>,
    /// Documents/s in the middle of the run ([`steady_rate`]): the pipeline once it is full,
    /// without the intake at the start and the last stragglers.
    steady_documents_per_second: Option<f64>,
    /// 0: sign requests one by one; otherwise items per `POST /v1/batches`.
    batch_size: usize,
    /// First submission sent → last one accepted (intake; the workers run meanwhile).
    submit_seconds: f64,
    /// Polling requests during the measured phase: `GET /v1/jobs?ids=…`, or with batches
    /// `GET /v1/batches/{id}`.
    polls: u64,
    /// `GET /v1/jobs?ids=…` for the jobs of completed batches, after the measured phase (not in
    /// `polls`).
    job_detail_requests: u64,
    /// Errors by kind: HTTP status per phase, transport errors, job failure reasons.
    errors: BTreeMap<String, u64>,
    /// Last transient error recorded on jobs that succeeded after a retry.
    retry_reasons: BTreeMap<String, u64>,
    hsm: Option<HsmRate>,
    /// documents_per_second ÷ hsm.signatures_per_second.
    pipeline_to_hsm_ratio: Option<f64>,
    signatures_per_document: u32,
    /// hsm.signatures_per_second ÷ signatures_per_document: documents/s if the HSM were all.
    hsm_bound_documents_per_second: Option<f64>,
    /// documents_per_second ÷ hsm_bound_documents_per_second.
    pipeline_to_bound_ratio: Option<f64>,
    /// CPU time per process during the measured phase (first submission → last job finished).
    cpu: Vec<cpu::Usage>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.documents > 0, "--documents must be at least 1");
    anyhow::ensure!(cli.concurrency > 0, "--concurrency must be at least 1");
    let pdf = Arc::new(
        std::fs::read(&cli.pdf).with_context(|| format!("reading {}", cli.pdf.display()))?,
    );
    // Read the HSM configuration up front so a missing variable fails before the long run.
    let hsm_config = if cli.hsm_seconds > 0.0 {
        Some(
            shomei_config::Config::from_env()
                .context("reading the SHOMEI_* configuration for --hsm-seconds")?,
        )
    } else {
        None
    };

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(cli.concurrency + cli.poll_concurrency)
        .timeout(Duration::from_secs(60))
        .build()?;
    let new_shared = || {
        Arc::new(Shared {
            http: http.clone(),
            api: cli.api.trim_end_matches('/').to_owned(),
            key: cli.key.clone(),
            progress: Progress::default(),
            errors: Tally::default(),
        })
    };
    if cli.warmup > 0 {
        warmup(&cli, new_shared(), pdf.clone()).await?;
    }
    if cli.idle_latency > 0 {
        return idle_latency(&new_shared(), pdf, cli.idle_latency).await;
    }
    let shared = new_shared();
    let n = cli.documents as u64;
    let ticker = spawn_progress(shared.clone(), n);

    // 1. Uploads (not part of the measured pipeline).
    eprintln!(
        "uploading {} × {} ({} bytes), {} at a time",
        n,
        cli.pdf.display(),
        pdf.len(),
        cli.concurrency
    );
    let upload_start = Instant::now();
    let uploads: Vec<(Uuid, Duration)> = stream::iter(0..cli.documents)
        .map(|i| {
            let (shared, pdf) = (shared.clone(), pdf.clone());
            async move { upload(&shared, i, pdf).await }
        })
        .buffer_unordered(cli.concurrency)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    let upload_seconds = upload_start.elapsed().as_secs_f64();
    let upload_latency = LatencySummary::of(uploads.iter().map(|u| u.1).collect());

    // 2. Sign submissions, C at a time, while a poller follows the jobs (or the batches).
    let (tx, rx) = mpsc::unbounded_channel::<Tracked>();
    let poller = tokio::spawn(poll_jobs(
        shared.clone(),
        rx,
        Duration::from_millis(cli.poll_interval_ms),
        cli.poll_window.max(1),
        cli.poll_concurrency.max(1),
        Duration::from_secs(cli.stall_timeout_secs),
    ));
    let cpu_before = cpu::snapshot(&cli.cpu_of);
    let pipeline_start = Instant::now();
    let submit_latencies: Vec<Duration> = if cli.batch_size > 0 {
        let documents: Vec<Uuid> = uploads.iter().map(|u| u.0).collect();
        let chunks: Vec<(usize, Vec<Uuid>)> = documents
            .chunks(cli.batch_size)
            .enumerate()
            .map(|(i, c)| (i * cli.batch_size, c.to_vec()))
            .collect();
        stream::iter(chunks)
            .map(|(first, docs)| {
                let (shared, tx) = (shared.clone(), tx.clone());
                async move { submit_batch(&shared, first, docs, &tx).await }
            })
            .buffer_unordered(cli.concurrency)
            .filter_map(|r| async move { r })
            .collect()
            .await
    } else {
        stream::iter(uploads.iter().map(|u| u.0).enumerate())
            .map(|(i, doc)| {
                let (shared, tx) = (shared.clone(), tx.clone());
                async move { submit(&shared, i, doc, &tx).await }
            })
            .buffer_unordered(cli.concurrency)
            .filter_map(|r| async move { r })
            .collect()
            .await
    };
    let submit_seconds = pipeline_start.elapsed().as_secs_f64();
    drop(tx);
    let polled = poller.await.context("poller")?;
    let cpu_after = cpu::snapshot(&cli.cpu_of);
    ticker.abort();
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    // The details of batched jobs, now that the measured phase is over.
    let job_detail_requests = polled.batched.len().div_ceil(IDS_PER_REQUEST) as u64;
    if job_detail_requests > 0 {
        eprintln!(
            "fetching the details of {} batched job(s)",
            polled.batched.len()
        );
    }
    let timed_out = polled.timed_out;
    let mut finished = polled.finished;
    finished.extend(job_details(&shared, polled.batched, cli.poll_concurrency.max(1)).await);

    let last_observed = finished.iter().map(|f| f.observed_at).max();
    let pipeline_seconds = last_observed
        .map(|t| t.duration_since(pipeline_start).as_secs_f64())
        .unwrap_or(0.0);
    let succeeded = finished.iter().filter(|f| f.status == "succeeded").count() as u64;
    let failed = finished.len() as u64 - succeeded;
    let retry_reasons = Tally::default();
    for f in &finished {
        if f.status == "succeeded" && f.attempts > 1 {
            retry_reasons.add(error_kind(
                f.error.as_deref().unwrap_or("(no error recorded)"),
            ));
        }
    }
    let created_min = finished.iter().filter_map(|f| f.created_at).min();
    let finished_max = finished.iter().filter_map(|f| f.finished_at).max();
    let server_pipeline_seconds = match (created_min, finished_max) {
        (Some(a), Some(b)) => Some((b - a).num_microseconds().unwrap_or(0) as f64 / 1e6),
        _ => None,
    };
    let per_second = |secs: f64| {
        if secs > 0.0 {
            succeeded as f64 / secs
        } else {
            0.0
        }
    };
    let documents_per_second = per_second(pipeline_seconds);

    // 3. The raw HSM rate, with the pipeline idle.
    let hsm = match hsm_config {
        Some(config) => {
            let threads = cli.hsm_threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
            });
            let seconds = cli.hsm_seconds;
            eprintln!(
                "measuring the raw HSM rate: key {}, {threads} thread(s), {seconds} s",
                config.hsm.key_label
            );
            Some(
                tokio::task::spawn_blocking(move || hsm_rate(&config, threads, seconds))
                    .await
                    .context("HSM measurement")??,
            )
        }
        None => None,
    };
    let pipeline_to_hsm_ratio = hsm
        .as_ref()
        .filter(|h| h.signatures_per_second > 0.0)
        .map(|h| documents_per_second / h.signatures_per_second);
    let signatures_per_document = cli.signatures_per_document.max(1);
    let hsm_bound_documents_per_second = hsm
        .as_ref()
        .map(|h| h.signatures_per_second / f64::from(signatures_per_document));
    let pipeline_to_bound_ratio =
        pipeline_to_hsm_ratio.map(|r| r * f64::from(signatures_per_document));

    let report = Report {
        api: shared.api.clone(),
        pdf: cli.pdf.display().to_string(),
        pdf_bytes: pdf.len(),
        documents: cli.documents,
        concurrency: cli.concurrency,
        batch_size: cli.batch_size,
        poll_interval_ms: cli.poll_interval_ms,
        uploaded: uploads.len() as u64,
        upload_seconds,
        upload_latency,
        submitted: shared.progress.submitted.load(Ordering::Relaxed),
        submit_seconds,
        succeeded,
        failed,
        timed_out,
        retried_jobs: finished.iter().filter(|f| f.attempts > 1).count() as u64,
        attempts_total: finished.iter().map(|f| f.attempts).sum(),
        submit_latency: LatencySummary::of(submit_latencies),
        completion_latency: LatencySummary::of(finished.iter().map(|f| f.completion).collect()),
        server_completion_latency: LatencySummary::of(
            finished
                .iter()
                .filter_map(|f| (f.finished_at? - f.created_at?).to_std().ok())
                .collect(),
        ),
        pipeline_seconds,
        documents_per_second,
        server_pipeline_seconds,
        server_documents_per_second: server_pipeline_seconds.map(per_second),
        steady_documents_per_second: steady_rate(
            finished
                .iter()
                .filter(|f| f.status == "succeeded")
                .filter_map(|f| f.finished_at)
                .collect(),
        ),
        polls: shared.progress.polls.load(Ordering::Relaxed),
        job_detail_requests,
        errors: shared.errors.snapshot(),
        retry_reasons: retry_reasons.snapshot(),
        hsm,
        pipeline_to_hsm_ratio,
        signatures_per_document,
        hsm_bound_documents_per_second,
        pipeline_to_bound_ratio,
        cpu: cpu::usage(&cpu_before, &cpu_after, succeeded),
    };
    print_report(&report);
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("JSON report: {}", path.display());
    }
    Ok(())
}

/// One document at a time on an idle pipeline: submit, poll every 2 ms until signed. Prints
/// the client's submit→seen-signed latency and the server's created→finished latency.
async fn idle_latency(shared: &Shared, pdf: Arc<Vec<u8>>, n: usize) -> anyhow::Result<()> {
    let (mut client, mut server) = (Vec::new(), Vec::new());
    for i in 0..n {
        let Some((document, _)) = upload(shared, i, pdf.clone()).await else {
            continue;
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<Tracked>();
        let started = Instant::now();
        if submit(shared, i, document, &tx).await.is_none() {
            continue;
        }
        let job = rx.recv().await.context("submitted job")?.jobs()[0].job_id;
        loop {
            let view: serde_json::Value = shared
                .http
                .get(format!("{}/v1/jobs/{job}", shared.api))
                .bearer_auth(&shared.key)
                .send()
                .await?
                .json()
                .await?;
            if view["status"] == "succeeded" || view["status"] == "failed" {
                client.push(started.elapsed());
                let time = |k: &str| {
                    view[k]
                        .as_str()
                        .and_then(|t| t.parse::<DateTime<Utc>>().ok())
                };
                if let (Some(a), Some(b)) = (time("created_at"), time("finished_at")) {
                    server.push((b - a).to_std().unwrap_or_default());
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    println!(
        "idle submit → signed, one document at a time ({} documents):",
        client.len()
    );
    for (name, samples) in [
        ("client (POST → seen)", client),
        ("server (created → finished)", server),
    ] {
        if let Some(s) = LatencySummary::of(samples) {
            println!(
                "  {name:28} p50 {:7.1} ms  p95 {:7.1} ms  p99 {:7.1} ms",
                s.p50_ms, s.p95_ms, s.p99_ms
            );
        }
    }
    Ok(())
}

/// Signs `cli.warmup` documents and waits for them, reporting only trouble.
async fn warmup(cli: &Cli, shared: Arc<Shared>, pdf: Arc<Vec<u8>>) -> anyhow::Result<()> {
    eprintln!("warm-up: {} document(s)", cli.warmup);
    let start = Instant::now();
    let docs: Vec<Uuid> = stream::iter(0..cli.warmup)
        .map(|i| {
            let (shared, pdf) = (shared.clone(), pdf.clone());
            async move { upload(&shared, i, pdf).await.map(|u| u.0) }
        })
        .buffer_unordered(cli.concurrency)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    let (tx, rx) = mpsc::unbounded_channel::<Tracked>();
    let poller = tokio::spawn(poll_jobs(
        shared.clone(),
        rx,
        Duration::from_millis(cli.poll_interval_ms),
        cli.poll_window.max(1),
        cli.poll_concurrency.max(1),
        Duration::from_secs(cli.stall_timeout_secs),
    ));
    stream::iter(docs.into_iter().enumerate())
        .map(|(i, doc)| {
            let (shared, tx) = (shared.clone(), tx.clone());
            async move { submit(&shared, i, doc, &tx).await }
        })
        .buffer_unordered(cli.concurrency)
        .collect::<Vec<_>>()
        .await;
    drop(tx);
    let finished = poller.await.context("warm-up poller")?.finished;
    let ok = finished.iter().filter(|f| f.status == "succeeded").count();
    eprintln!(
        "warm-up: {ok}/{} succeeded in {:.2} s",
        cli.warmup,
        start.elapsed().as_secs_f64()
    );
    for (kind, n) in shared.errors.snapshot() {
        eprintln!("warm-up error: {n} × {kind}");
    }
    Ok(())
}

fn spawn_progress(shared: Arc<Shared>, n: u64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(if tty { 1 } else { 5 }));
        tick.tick().await;
        loop {
            tick.tick().await;
            let p = &shared.progress;
            let line = format!(
                "[{:>5.0}s] uploaded {}/{n}  submitted {}/{n}  succeeded {}  failed {}  polls {}",
                start.elapsed().as_secs_f64(),
                p.uploaded.load(Ordering::Relaxed),
                p.submitted.load(Ordering::Relaxed),
                p.succeeded.load(Ordering::Relaxed),
                p.failed.load(Ordering::Relaxed),
                p.polls.load(Ordering::Relaxed),
            );
            if tty {
                eprint!("\r{line}");
            } else {
                eprintln!("{line}");
            }
        }
    })
}

/// Shortens an error text to a tally key: ids and numbers would make every error unique.
fn error_kind(text: &str) -> String {
    let mut out = String::new();
    for word in text.split_whitespace() {
        let hexish = word.len() >= 8
            && word
                .chars()
                .all(|c| c.is_ascii_hexdigit() || matches!(c, '-' | '"' | '\'' | ',' | ':' | '.'));
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(if hexish { "<id>" } else { word });
        if out.len() > 160 {
            out.push('…');
            break;
        }
    }
    out
}

async fn problem_kind(phase: &str, response: reqwest::Response) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let title = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("title").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(80).collect());
    format!("{phase}: HTTP {} {}", status.as_u16(), title)
}

fn transport_kind(phase: &str, error: &reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect error"
    } else if error.is_decode() {
        "bad response body"
    } else {
        "transport error"
    };
    format!("{phase}: {what}")
}

async fn upload(shared: &Shared, i: usize, pdf: Arc<Vec<u8>>) -> Option<(Uuid, Duration)> {
    let start = Instant::now();
    let result = shared
        .http
        .post(format!("{}/v1/documents", shared.api))
        .query(&[("title", format!("loadtest-{i}"))])
        .bearer_auth(&shared.key)
        .header(reqwest::header::CONTENT_TYPE, "application/pdf")
        .body((*pdf).clone())
        .send()
        .await;
    let response = match result {
        Ok(r) if r.status().as_u16() == 201 => r,
        Ok(r) => {
            shared.errors.add(problem_kind("upload", r).await);
            return None;
        }
        Err(e) => {
            shared.errors.add(transport_kind("upload", &e));
            return None;
        }
    };
    let id = response
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|v| v.get("id")?.as_str()?.parse::<Uuid>().ok());
    let latency = start.elapsed();
    match id {
        Some(id) => {
            shared.progress.uploaded.fetch_add(1, Ordering::Relaxed);
            Some((id, latency))
        }
        None => {
            shared.errors.add("upload: 201 without a document id");
            None
        }
    }
}

/// Sign requests for `documents` as one `POST /v1/batches`; the batch is handed to the poller,
/// its jobs with the batch's submission time. Returns the batch call's latency.
async fn submit_batch(
    shared: &Shared,
    first: usize,
    documents: Vec<Uuid>,
    tx: &mpsc::UnboundedSender<Tracked>,
) -> Option<Duration> {
    let items: Vec<serde_json::Value> = documents
        .iter()
        .enumerate()
        .map(|(k, doc)| {
            let i = first + k;
            serde_json::json!({
                "document_id": doc,
                "signer": {"name": format!("Load Tester {i}"), "email": format!("load{i}@example.jp")},
                "reason": "Load test",
                "location": "Tokyo",
            })
        })
        .collect();
    let submitted_at = Instant::now();
    let result = shared
        .http
        .post(format!("{}/v1/batches", shared.api))
        .bearer_auth(&shared.key)
        .json(&serde_json::json!({"items": items}))
        .send()
        .await;
    let response = match result {
        Ok(r) if r.status().as_u16() == 202 => r,
        Ok(r) => {
            shared.errors.add(problem_kind("batch", r).await);
            return None;
        }
        Err(e) => {
            shared.errors.add(transport_kind("batch", &e));
            return None;
        }
    };
    let latency = submitted_at.elapsed();
    let accepted = response
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|v| {
            let batch_id = v.get("batch_id")?.as_str()?.parse::<Uuid>().ok()?;
            let job_ids: Vec<Uuid> = serde_json::from_value(v.get("job_ids")?.clone()).ok()?;
            Some((batch_id, job_ids))
        })
        .filter(|(_, job_ids)| job_ids.len() == documents.len());
    let Some((batch_id, job_ids)) = accepted else {
        shared
            .errors
            .add("batch: 202 without a batch_id and a job id per item");
        return None;
    };
    shared
        .progress
        .submitted
        .fetch_add(job_ids.len() as u64, Ordering::Relaxed);
    let jobs = job_ids
        .into_iter()
        .map(|job_id| Submitted {
            job_id,
            submitted_at,
        })
        .collect();
    // The poller outlives every sender, so this cannot fail.
    let _ = tx.send(Tracked::Batch {
        batch_id,
        jobs,
        seen: Counts::default(),
    });
    Some(latency)
}

async fn submit(
    shared: &Shared,
    i: usize,
    document: Uuid,
    tx: &mpsc::UnboundedSender<Tracked>,
) -> Option<Duration> {
    let body = serde_json::json!({
        "signer": {"name": format!("Load Tester {i}"), "email": format!("load{i}@example.jp")},
        "reason": "Load test",
        "location": "Tokyo",
    });
    let submitted_at = Instant::now();
    let result = shared
        .http
        .post(format!("{}/v1/documents/{document}/sign", shared.api))
        .bearer_auth(&shared.key)
        .json(&body)
        .send()
        .await;
    let response = match result {
        Ok(r) if r.status().as_u16() == 202 => r,
        Ok(r) => {
            shared.errors.add(problem_kind("submit", r).await);
            return None;
        }
        Err(e) => {
            shared.errors.add(transport_kind("submit", &e));
            return None;
        }
    };
    let latency = submitted_at.elapsed();
    let job_id = response
        .json::<serde_json::Value>()
        .await
        .ok()
        .and_then(|v| v.get("job_id")?.as_str()?.parse::<Uuid>().ok());
    let Some(job_id) = job_id else {
        shared.errors.add("submit: 202 without a job_id");
        return None;
    };
    shared.progress.submitted.fetch_add(1, Ordering::Relaxed);
    // The poller outlives every sender, so this cannot fail.
    let _ = tx.send(Tracked::Job(Submitted {
        job_id,
        submitted_at,
    }));
    Some(latency)
}

/// What one poll of a tracked job or batch found.
enum Poll {
    /// Nothing finished since the last poll.
    Pending,
    /// Some jobs of a batch finished since the last poll, not all of them.
    Progress,
    /// A job followed on its own finished.
    Finished(Finished),
    /// Every job of a batch has finished: seen at that instant.
    Completed(Instant),
    /// The request failed (tallied); the next round tries again.
    Error,
}

/// `GET {path}` from the API: the JSON body and when the response arrived, or `None` with the
/// error tallied under `phase`.
async fn get_json(
    shared: &Shared,
    path: &str,
    phase: &str,
) -> Option<(serde_json::Value, Instant)> {
    let result = shared
        .http
        .get(format!("{}{path}", shared.api))
        .bearer_auth(&shared.key)
        .send()
        .await;
    let observed_at = Instant::now();
    let response = match result {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            shared.errors.add(problem_kind(phase, r).await);
            return None;
        }
        Err(e) => {
            shared.errors.add(transport_kind(phase, &e));
            return None;
        }
    };
    match response.json().await {
        Ok(view) => Some((view, observed_at)),
        Err(e) => {
            shared.errors.add(transport_kind(phase, &e));
            None
        }
    }
}

/// Reads a job view (`GET /v1/jobs/{id}`) of `job`, seen finished at `observed_at`: `None`
/// while it is queued or running.
fn finished_job(
    view: &serde_json::Value,
    job: &Submitted,
    observed_at: Instant,
) -> Option<Finished> {
    let status = view["status"].as_str().unwrap_or("").to_owned();
    if status != "succeeded" && status != "failed" {
        return None;
    }
    let time = |field: &str| {
        view[field]
            .as_str()
            .and_then(|s| s.parse::<DateTime<Utc>>().ok())
    };
    Some(Finished {
        attempts: view["attempts"].as_i64().unwrap_or(0),
        error: view["error"].as_str().map(str::to_owned),
        completion: observed_at.duration_since(job.submitted_at),
        observed_at,
        created_at: time("created_at"),
        finished_at: time("finished_at"),
        status,
    })
}

/// Tallies the error of a failed job; called once per job.
fn tally_failure(errors: &Tally, job: &Finished) {
    if job.status != "succeeded" {
        errors.add(format!(
            "job {}: {}",
            job.status,
            error_kind(job.error.as_deref().unwrap_or("(no error)"))
        ));
    }
}

/// The most jobs per `GET /v1/jobs?ids=…` (the API's limit).
const IDS_PER_REQUEST: usize = 100;

/// `GET /v1/jobs?ids=…` for `ids` (at most [`IDS_PER_REQUEST`]): the job views by id, and when
/// the answer came.
async fn get_jobs(
    shared: &Shared,
    ids: impl Iterator<Item = Uuid>,
    phase: &str,
) -> Option<(HashMap<Uuid, serde_json::Value>, Instant)> {
    let ids: Vec<String> = ids.map(|id| id.to_string()).collect();
    let path = format!("/v1/jobs?ids={}", ids.join(","));
    let (mut view, observed_at) = get_json(shared, &path, phase).await?;
    let views = match view["jobs"].take() {
        serde_json::Value::Array(jobs) => jobs,
        _ => Vec::new(),
    };
    let by_id = views
        .into_iter()
        .filter_map(|job| Some((job["id"].as_str()?.parse().ok()?, job)))
        .collect();
    Some((by_id, observed_at))
}

/// Polls `jobs` in one request ([`get_jobs`]).
async fn poll_many(shared: &Shared, jobs: &[&Submitted]) -> Vec<Poll> {
    shared.progress.polls.fetch_add(1, Ordering::Relaxed);
    let Some((views, observed_at)) = get_jobs(shared, jobs.iter().map(|j| j.job_id), "poll").await
    else {
        return jobs.iter().map(|_| Poll::Error).collect();
    };
    jobs.iter()
        .map(|job| match views.get(&job.job_id) {
            None => {
                shared
                    .errors
                    .add("poll: a submitted job missing from GET /v1/jobs");
                Poll::Error
            }
            Some(view) => match finished_job(view, job, observed_at) {
                Some(f) => Poll::Finished(f),
                None => Poll::Pending,
            },
        })
        .collect()
}

/// Polls a chunk of what is followed: its jobs in one request, its batches one request each,
/// at once.
async fn poll_chunk(shared: &Shared, items: &mut [Tracked]) -> Vec<Poll> {
    let jobs: Vec<&Submitted> = items
        .iter()
        .filter_map(|item| match item {
            Tracked::Job(job) => Some(job),
            Tracked::Batch { .. } => None,
        })
        .collect();
    if jobs.len() == items.len() {
        return poll_many(shared, &jobs).await;
    }
    // Made up front: a lazy `map` over the borrowed items trips up the `Send` check of the
    // spawned poller.
    let polls: Vec<_> = items
        .iter_mut()
        .map(|item| async move {
            match item {
                Tracked::Job(job) => poll_many(shared, &[&*job]).await.remove(0),
                Tracked::Batch { batch_id, seen, .. } => poll_batch(shared, *batch_id, seen).await,
            }
        })
        .collect();
    futures::future::join_all(polls).await
}

/// Polls a batch: adds the jobs finished since the last poll (`seen`) to the progress counts.
async fn poll_batch(shared: &Shared, batch_id: Uuid, seen: &mut Counts) -> Poll {
    shared.progress.polls.fetch_add(1, Ordering::Relaxed);
    let path = format!("/v1/batches/{batch_id}");
    let Some((view, observed_at)) = get_json(shared, &path, "batch poll").await else {
        return Poll::Error;
    };
    let count = |status: &str| view["jobs"][status].as_u64().unwrap_or(0);
    let now = Counts {
        succeeded: count("succeeded"),
        failed: count("failed"),
    };
    let progress = &shared.progress;
    let new_succeeded = now.succeeded.saturating_sub(seen.succeeded);
    let new_failed = now.failed.saturating_sub(seen.failed);
    progress
        .succeeded
        .fetch_add(new_succeeded, Ordering::Relaxed);
    progress.failed.fetch_add(new_failed, Ordering::Relaxed);
    *seen = now;
    if !view["completed_at"].is_null() {
        Poll::Completed(observed_at)
    } else if new_succeeded + new_failed > 0 {
        Poll::Progress
    } else {
        Poll::Pending
    }
}

/// Fetches the details of the jobs of completed batches, `concurrency` requests at a time, each
/// seen finished when its batch was, and tallies the failed ones. Not counted as polls.
async fn job_details(
    shared: &Shared,
    jobs: Vec<(Submitted, Instant)>,
    concurrency: usize,
) -> Vec<Finished> {
    let chunks: Vec<Vec<(Submitted, Instant)>> = jobs
        .chunks(IDS_PER_REQUEST)
        .map(<[(Submitted, Instant)]>::to_vec)
        .collect();
    stream::iter(chunks)
        .map(|chunk| async move {
            let ids = chunk.iter().map(|(job, _)| job.job_id);
            let Some((views, _)) = get_jobs(shared, ids, "details").await else {
                return Vec::new();
            };
            chunk
                .iter()
                .filter_map(|(job, observed_at)| {
                    let finished = views
                        .get(&job.job_id)
                        .and_then(|view| finished_job(view, job, *observed_at));
                    if finished.is_none() {
                        shared
                            .errors
                            .add("details: job unfinished although its batch completed");
                    }
                    finished
                })
                .inspect(|finished| tally_failure(&shared.errors, finished))
                .collect()
        })
        .buffer_unordered(concurrency)
        .flat_map(stream::iter)
        .collect()
        .await
}

/// Follows the submitted jobs and batches until each has finished (or nothing finished for
/// `stall_timeout`). Each round polls up to the `window` oldest pending ones, `concurrency` at a
/// time, until a chunk finds less than half finished, then sleeps `interval`.
async fn poll_jobs(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<Tracked>,
    interval: Duration,
    window: usize,
    concurrency: usize,
    stall_timeout: Duration,
) -> Polled {
    let mut pending: Vec<Tracked> = Vec::new();
    let mut polled = Polled::default();
    let mut open = true;
    let mut last_progress = Instant::now();
    loop {
        while open {
            match rx.try_recv() {
                Ok(item) => pending.push(item),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => open = false,
            }
        }
        if pending.is_empty() {
            if !open {
                break;
            }
            // Nothing submitted yet (or all caught up): wait for the next submission.
            match rx.recv().await {
                Some(item) => pending.push(item),
                None => open = false,
            }
            continue;
        }
        // Oldest first, `concurrency` at a time; jobs run roughly in submission order, so a chunk
        // of which less than half had finished ends the round: the ones after it are mostly
        // still queued, and polling them would only load the API being measured.
        let limit = window.min(pending.len());
        let mut results: Vec<(usize, Poll)> = Vec::new();
        let mut start = 0;
        while start < limit {
            let end = (start + concurrency).min(limit);
            let chunk = poll_chunk(&shared, &mut pending[start..end]).await;
            let finished = chunk
                .iter()
                .filter(|poll| matches!(poll, Poll::Finished(_) | Poll::Completed(_)))
                .count();
            results.extend((start..end).zip(chunk));
            if finished * 2 < end - start {
                break;
            }
            start = end;
        }
        let mut done: Vec<usize> = Vec::new();
        let mut progressed = false;
        for (i, poll) in results {
            match poll {
                Poll::Pending | Poll::Error => continue,
                Poll::Progress => {
                    progressed = true;
                    continue;
                }
                Poll::Finished(f) => {
                    let counter = if f.status == "succeeded" {
                        &shared.progress.succeeded
                    } else {
                        &shared.progress.failed
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tally_failure(&shared.errors, &f);
                    polled.finished.push(f);
                }
                Poll::Completed(observed_at) => polled
                    .batched
                    .extend(pending[i].jobs().iter().map(|&job| (job, observed_at))),
            }
            done.push(i);
        }
        // Most of the head finished: the poller is behind the workers, catch up without sleeping.
        let behind = done.len() * 2 >= window.min(pending.len());
        if progressed || !done.is_empty() {
            last_progress = Instant::now();
            done.sort_unstable();
            for i in done.into_iter().rev() {
                pending.remove(i);
            }
        } else if last_progress.elapsed() > stall_timeout {
            polled.timed_out = pending.iter().map(|t| t.jobs().len() as u64).sum();
            for _ in 0..polled.timed_out {
                shared
                    .errors
                    .add("job timeout: still queued/running at the stall timeout");
            }
            return polled;
        }
        if !behind {
            tokio::time::sleep(interval).await;
        }
    }
    polled
}

fn hsm_rate(config: &shomei_config::Config, threads: u32, seconds: f64) -> anyhow::Result<HsmRate> {
    use shomei_signing::{Hsm, HsmSettings};
    let hsm = Hsm::connect(&HsmSettings {
        pool_size: threads.max(1),
        ..HsmSettings::from_config(&config.hsm)
    })
    .context("connecting to the HSM")?;
    let identity = hsm
        .identity(&config.hsm.key_label)
        .with_context(|| format!("key {}", config.hsm.key_label))?;
    let duration = Duration::from_secs_f64(seconds);
    // Warm up every session of the pool before the clock starts.
    hsm.sign_digest(&identity, &[0u8; 32]).context("signing")?;
    let start = Instant::now();
    let total = std::thread::scope(|scope| -> anyhow::Result<u64> {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|t| {
                let (hsm, identity) = (&hsm, &identity);
                scope.spawn(move || -> anyhow::Result<u64> {
                    let mut digest = [0u8; 32];
                    digest[0] = t as u8;
                    let mut count = 0u64;
                    while start.elapsed() < duration {
                        digest[1..9].copy_from_slice(&count.to_le_bytes());
                        hsm.sign_digest(identity, &digest).context("signing")?;
                        count += 1;
                    }
                    Ok(count)
                })
            })
            .collect();
        let mut total = 0;
        for w in workers {
            total += w
                .join()
                .map_err(|_| anyhow::anyhow!("signing thread panicked"))??;
        }
        Ok(total)
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    Ok(HsmRate {
        key_label: config.hsm.key_label.clone(),
        threads: threads.max(1),
        seconds: elapsed,
        signatures: total,
        signatures_per_second: total as f64 / elapsed,
    })
}

fn print_report(r: &Report) {
    println!();
    println!("== Shomei load test: {} ==", r.api);
    println!(
        "documents {}  concurrency {}  pdf {} ({} bytes)  poll every {} ms  submitted {}",
        r.documents,
        r.concurrency,
        r.pdf,
        r.pdf_bytes,
        r.poll_interval_ms,
        if r.batch_size > 0 {
            format!("in batches of {}", r.batch_size)
        } else {
            "one by one".to_owned()
        }
    );
    println!(
        "uploads     {} ok in {:.2} s ({:.1}/s)",
        r.uploaded,
        r.upload_seconds,
        if r.upload_seconds > 0.0 {
            r.uploaded as f64 / r.upload_seconds
        } else {
            0.0
        }
    );
    if let Some(l) = &r.upload_latency {
        println!("  upload latency           {}", l.line());
    }
    println!(
        "sign jobs   submitted {}  succeeded {}  failed {}  timed out {}  retried {} (attempts {})",
        r.submitted, r.succeeded, r.failed, r.timed_out, r.retried_jobs, r.attempts_total
    );
    if let Some(l) = &r.submit_latency {
        println!("  submit latency           {}", l.line());
    }
    if r.submit_seconds > 0.0 {
        println!(
            "  intake                   {:.0} submissions/s ({} accepted in {:.2} s, workers running)",
            r.submitted as f64 / r.submit_seconds,
            r.submitted,
            r.submit_seconds
        );
    }
    if let Some(l) = &r.completion_latency {
        println!("  completion (client)      {}", l.line());
    }
    if let Some(l) = &r.server_completion_latency {
        println!("  completion (server)      {}", l.line());
    }
    println!(
        "throughput  {:.2} documents/s  ({} signed in {:.2} s, first submit → last seen finished)",
        r.documents_per_second, r.succeeded, r.pipeline_seconds
    );
    if let (Some(s), Some(d)) = (r.server_pipeline_seconds, r.server_documents_per_second) {
        println!("            {d:.2} documents/s by the database clock (first created → last finished, {s:.2} s)");
    }
    if let Some(d) = r.steady_documents_per_second {
        println!("            {d:.2} documents/s in the middle of the run (10th → 90th percentile of the finish times)");
    }
    if r.batch_size > 0 {
        println!(
            "polls       {} GET /v1/batches; then {} GET /v1/jobs for the job details, unmeasured",
            r.polls, r.job_detail_requests
        );
    } else {
        println!("polls       {} GET /v1/jobs", r.polls);
    }
    if r.errors.is_empty() {
        println!("errors      none");
    } else {
        println!("errors");
        for (kind, n) in &r.errors {
            println!("  {n:>6}  {kind}");
        }
    }
    if !r.retry_reasons.is_empty() {
        println!("retried, then succeeded (last error recorded)");
        for (kind, n) in &r.retry_reasons {
            println!("  {n:>6}  {kind}");
        }
    }
    if let Some(h) = &r.hsm {
        println!(
            "raw HSM     {:.1} signatures/s  ({} with {}, {} thread(s), {:.1} s)",
            h.signatures_per_second, h.signatures, h.key_label, h.threads, h.seconds
        );
    }
    if let Some(ratio) = r.pipeline_to_hsm_ratio {
        println!(
            "ratio       pipeline documents/s ÷ raw HSM signatures/s = {:.3} ({:.1} %)",
            ratio,
            ratio * 100.0
        );
    }
    if let (Some(bound), Some(ratio)) =
        (r.hsm_bound_documents_per_second, r.pipeline_to_bound_ratio)
    {
        println!(
            "HSM bound   {bound:.1} documents/s ({} signature(s) per document); pipeline at {:.1} % of it",
            r.signatures_per_document,
            ratio * 100.0
        );
        if let Some(steady) = r.steady_documents_per_second {
            println!(
                "            {:.1} % of it in the middle of the run",
                steady / bound * 100.0
            );
        }
    }
    if !r.cpu.is_empty() {
        println!("CPU during the measured phase (process and its children), peak RSS (process)");
        for u in &r.cpu {
            println!(
                "  {:<12} {:>8.2} s  {:>6.2} ms/document  {:>5.1} %  {}",
                u.process,
                u.cpu_seconds,
                u.ms_per_document,
                u.share * 100.0,
                u.peak_rss_mib
                    .map_or(String::new(), |m| format!("{m:>7.1} MiB"))
            );
        }
        let total: f64 = r.cpu.iter().map(|u| u.ms_per_document).sum();
        println!("  {:<12} {:>8} {:>8.2} ms/document", "all", "", total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steady_rate_leaves_out_a_slow_start_and_a_slow_end() {
        let start = DateTime::<Utc>::UNIX_EPOCH;
        let at = |ms: i64| start + chrono::Duration::milliseconds(ms);
        // 100 documents: 10 in the first 5 s, 80 at one every 10 ms, 10 in the last 5 s.
        let mut times: Vec<_> = (0..10).map(|i| at(i * 500)).collect();
        times.extend((0..80).map(|i| at(5_000 + i * 10)));
        times.extend((0..10).map(|i| at(5_800 + (i + 1) * 500)));
        times.reverse();
        let rate = steady_rate(times).unwrap();
        // The 11th to the 90th document: 79 more finished from 5.00 s to 5.79 s.
        assert!((rate - 100.0).abs() < 1e-9, "{rate}");
        assert_eq!(steady_rate(vec![start; 19]), None);
        assert_eq!(steady_rate(vec![start; 40]), None);
    }
}
