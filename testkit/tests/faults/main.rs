//! The fault-injection suite (R-OPS-5, issue 9). A whole deployment on loopback (API, three
//! workers, our TSA, a PostgreSQL cluster and a Redis of its own, an SMTP server, a webhook
//! receiver, the TSA's HSM behind `p11-kit server`, the workers' HSM behind the fault-injection
//! PKCS#11 module `shomei-hsm-fault`) signs a batch of documents and runs signature requests by
//! e-mail while a random worker is SIGKILLed every few seconds (and a new one started), and each
//! of Redis (restarted empty), the TSA, its HSM, the workers' HSM (device removed, then back
//! with every session reset), PostgreSQL (immediate stop, crash recovery), the SMTP server and
//! the webhook receiver goes down once and comes back.
//! Then it checks that every accepted job finished, every document is signed exactly once,
//! every webhook event arrived at least once under one `webhook-id`, every e-mail arrived
//! (once, or twice when its worker was killed between sending it and recording that), the
//! permanently failing job failed once, and prints (and writes as JSON) the figures
//! with the recovery time after each fault.
//!
//! Its own test binary, not a module of `pipeline`: it starts its own PostgreSQL and Redis and
//! keeps both cores busy, so it must not share the machine with the other end-to-end tests.
//!
//! `work` submits what clients and signers would, this file deploys and injects the faults,
//! `check` counts and reports.
//!
//! Environment: `SHOMEI_FAULTS_DOCUMENTS` (240, the bounded form `cargo test` runs),
//! `SHOMEI_FAULTS_OUTAGE_SECS` (6), `SHOMEI_FAULTS_KILL_EVERY_SECS` (4), `SHOMEI_FAULTS_REPORT`
//! (where to write the JSON; default `target/tmp/faults/<id>/report.json`).
//! `scripts/faults.sh [DOCUMENTS]` runs the full form with release binaries.
#![allow(clippy::print_stdout)] // the report on stdout is the point

mod check;
mod db;
mod work;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::task::block_in_place;

use shomei_testkit::services::{self, P11KitServer, Postgres, Redis, P11_KIT_CLIENT};
use shomei_testkit::smtp::{SmtpOptions, SmtpServer};
use shomei_testkit::webhook_receiver::WebhookReceiver;
use shomei_testkit::{TestApp, TestAppOptions};

use work::{json_of, send_request, Feed, Submitted};

/// Notification retries, compressed (production: 10 s, 1 min, 5 min …) so that an outage of a
/// few seconds is bridged within the run; the sum (about 2 minutes) outlasts every outage.
pub const NOTIFY_SCHEDULE: &str = "2s,3s,5s,8s,13s,21s,34s";
pub const WORKERS: usize = 3;
pub const BATCH_ITEMS: usize = 100;
/// The certified signer whose key is not in the token: their signature fails for good.
pub const BROKEN_KEY: &str = "no-such-key-faults";
pub const BROKEN_PIN: &str = "135790";

pub struct Settings {
    pub documents: usize,
    pub requests: usize,
    pub outage: Duration,
    pub kill_every: Duration,
    pub report: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> Settings {
        let number = |name: &str, default: u64| -> u64 {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
                })
                .unwrap_or(default)
        };
        let documents = number("SHOMEI_FAULTS_DOCUMENTS", 240) as usize;
        Settings {
            documents,
            requests: (documents / 10).clamp(4, 200),
            outage: Duration::from_secs(number("SHOMEI_FAULTS_OUTAGE_SECS", 6)),
            kill_every: Duration::from_secs(number("SHOMEI_FAULTS_KILL_EVERY_SECS", 4)),
            report: std::env::var_os("SHOMEI_FAULTS_REPORT").map(PathBuf::from),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Redis,
    Tsa,
    TsaHsm,
    WorkerHsm,
    Postgres,
    Smtp,
    Webhooks,
}

impl Fault {
    /// In the order they are injected, one at a time.
    /// Notifications first: they flow only while documents are being signed and requests
    /// answered, and the batch is over sooner than the faults on a fast machine.
    const ALL: [Fault; 7] = [
        Fault::Smtp,
        Fault::Webhooks,
        Fault::Redis,
        Fault::Tsa,
        Fault::TsaHsm,
        Fault::WorkerHsm,
        Fault::Postgres,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Fault::Redis => "Redis killed, restarted empty",
            Fault::Tsa => "TSA (shomei-tsa) killed, restarted",
            Fault::TsaHsm => "TSA's HSM gone (p11-kit server killed), back",
            Fault::WorkerHsm => "workers' HSM removed, back with sessions reset",
            Fault::Postgres => "PostgreSQL stopped (immediate), restarted",
            Fault::Smtp => "SMTP server killed, restarted",
            Fault::Webhooks => "webhook receiver down, back",
        }
    }

    /// The job kind whose work it holds up.
    pub fn kind(self) -> &'static str {
        match self {
            Fault::Smtp => "notify_email",
            Fault::Webhooks => "notify_webhook",
            _ => "sign",
        }
    }
}

/// Everything the suite runs, torn down in this order (the app first: it drops its database
/// on the PostgreSQL below).
pub struct Deployment {
    pub app: TestApp,
    tsa_hsm: P11KitServer,
    pub smtp: SmtpServer,
    pub receiver: WebhookReceiver,
    redis: Redis,
    pg: Postgres,
}

impl Deployment {
    async fn take_down(&mut self, fault: Fault) {
        match fault {
            Fault::Redis => self.redis.stop(),
            Fault::Tsa => self.app.stop_tsa(),
            Fault::TsaHsm => self.tsa_hsm.stop(),
            Fault::WorkerHsm => self.app.worker_hsm().down(),
            Fault::Postgres => block_in_place(|| self.pg.stop()),
            Fault::Smtp => self.smtp.stop(),
            Fault::Webhooks => self.receiver.stop().await,
        }
    }

    async fn bring_back(&mut self, fault: Fault) {
        match fault {
            Fault::Redis => block_in_place(|| self.redis.start_again()),
            Fault::Tsa => self.app.start_tsa().await,
            Fault::TsaHsm => block_in_place(|| self.tsa_hsm.start_again()),
            Fault::WorkerHsm => self.app.worker_hsm().up(),
            Fault::Postgres => block_in_place(|| self.pg.start_again()),
            Fault::Smtp => block_in_place(|| self.smtp.start_again()),
            Fault::Webhooks => self.receiver.start_again().await,
        }
    }
}

pub struct Injected {
    pub fault: Fault,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

pub struct Kill {
    pub at: DateTime<Utc>,
    /// Jobs `running` just before (unknown while PostgreSQL is down).
    pub running: Option<Vec<String>>,
}

/// A witness signature request the suite's signer goes through by e-mail.
pub struct Request {
    pub signer: String,
    pub owner: String,
    pub document: String,
}

/// What the fault driver did.
pub struct Timeline {
    pub injected: Vec<Injected>,
    pub kills: Vec<Kill>,
    /// Workers that exited on their own and were started again.
    pub exits: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_jobs_all_finish_exactly_once_through_killed_workers_and_outages() {
    let settings = Settings::from_env();
    let dir = services::scratch("faults");
    let mut d = deploy(&dir).await;
    let started = Utc::now();
    let clock = Instant::now();
    let db = d.app.database_url();

    let (requests, broken_document) = send_requests(&d, &settings).await;
    let feed = Arc::new(Feed {
        client: d.app.client().clone(),
        base: d.app.base_url.clone(),
        key: d.app.api_key.clone(),
        submitted: std::sync::Mutex::new(Submitted::default()),
        paused: AtomicBool::new(false),
    });
    for _ in 0..settings.documents.div_ceil(BATCH_ITEMS) {
        let left = settings.documents - feed.count();
        assert!(
            feed.submit(left.min(BATCH_ITEMS)).await,
            "submitting the batch"
        );
    }
    let accepted = clock.elapsed();
    println!(
        "faults: {} documents and {} signature requests accepted in {:.1} s; injecting faults",
        feed.count(),
        requests.len() + 1,
        accepted.as_secs_f64()
    );

    // Progress (batch sign jobs finished), read apart from the driver: PostgreSQL may be down.
    let signed = Arc::new(AtomicI64::new(0));
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(work::sample_progress(
        db.clone(),
        signed.clone(),
        stop_sampling.clone(),
    ));
    // A fast machine signs the batch before the last fault: while faults are left, more
    // documents are added whenever fewer than two batches' worth wait.
    let faults_over = Arc::new(AtomicBool::new(false));
    let feeder = tokio::spawn(work::top_up(
        feed.clone(),
        signed.clone(),
        faults_over.clone(),
    ));
    // The signers go through their requests by e-mail while the faults come.
    let signer = tokio::spawn(work::sign_requests(
        d.app.client().clone(),
        d.app.base_url.clone(),
        d.smtp.dir().to_owned(),
        requests.iter().map(|r| r.signer.clone()).collect(),
        signed.clone(),
        settings.documents as i64,
    ));

    let timeline = inject_faults(&mut d, &settings, &feed, &signed, &faults_over, &signer).await;
    faults_over.store(true, Ordering::SeqCst);
    let _ = feeder.await;
    let faults_done = clock.elapsed();
    let (request_jobs, broken_job): (Vec<String>, Option<String>) =
        tokio::time::timeout(Duration::from_secs(120), signer)
            .await
            .map(|joined| joined.expect("the signer task panicked"))
            .unwrap_or_default();

    // Everything accepted must finish: wait until no job is unfinished (or give up and count).
    let unfinished = "SELECT count(*) AS n FROM jobs WHERE status NOT IN ('succeeded', 'failed')";
    let drain_deadline = Instant::now() + Duration::from_secs(300);
    while block_in_place(|| db::count(&db, unfinished)).unwrap_or(1) > 0
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let finished = clock.elapsed();
    stop_sampling.store(true, Ordering::SeqCst);
    let _ = sampler.await;

    let submitted = std::mem::take(&mut *feed.submitted.lock().unwrap());
    let report = check::check(
        &d,
        &settings,
        &check::Run {
            started,
            topped_up: submitted.documents.len().saturating_sub(settings.documents),
            documents: &submitted.documents,
            batches: &submitted.batches,
            requests: &requests,
            request_jobs: &request_jobs,
            broken_document: &broken_document,
            broken_job: broken_job.as_deref(),
            timeline: &timeline,
            accepted_secs: accepted.as_secs_f64(),
            faults_secs: faults_done.as_secs_f64(),
            finished_secs: finished.as_secs_f64(),
        },
    )
    .await;
    let path = settings
        .report
        .clone()
        .unwrap_or_else(|| dir.join("report.json"));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&report.json).unwrap()).unwrap();
    println!("{}", report.text);
    println!("faults: JSON report in {}", path.display());
    assert!(
        report.problems.is_empty(),
        "the fault-injection suite found problems:\n  {}\n(logs in {} and {})",
        report.problems.join("\n  "),
        d.app.log_dir().display(),
        dir.display()
    );
}

/// Registers the webhook endpoint (every event), the broken certified signer and their
/// request, and the witness requests; returns the requests and the broken request's document.
async fn send_requests(d: &Deployment, settings: &Settings) -> (Vec<Request>, String) {
    let endpoint: Value = d
        .app
        .post_json(
            Some(&d.app.api_key),
            "/v1/webhooks",
            &json!({"url": d.receiver.url()}),
        )
        .await
        .json()
        .await
        .unwrap();
    d.receiver
        .set_secret(endpoint["secret"].as_str().expect("a webhook secret"));

    // The permanently failing job: a certified signer whose key the token does not have.
    let (status, body) = json_of(
        d.app
            .post_json(
                Some(&d.app.api_key),
                "/v1/signer-identities",
                &json!({"name": "Broken Key", "email": "broken@example.com",
                        "key_label": BROKEN_KEY, "pin": BROKEN_PIN}),
            )
            .await,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let broken_document = send_request(
        &d.app,
        "Faults broken",
        "owner-broken@example.com",
        json!([{"name": "Broken Key", "email": "broken@example.com", "method": "certified"}]),
    )
    .await;
    let requests = futures::stream::iter(0..settings.requests)
        .map(|i| {
            let app = &d.app;
            async move {
                let signer = format!("signer-{i}@example.com");
                let owner = format!("owner-{i}@example.com");
                let document = send_request(
                    app,
                    &format!("Faults request {i}"),
                    &owner,
                    json!([{"name": format!("Signer {i}"), "email": signer, "method": "witness"}]),
                )
                .await;
                Request {
                    signer,
                    owner,
                    document,
                }
            }
        })
        .buffered(4)
        .collect()
        .await;
    (requests, broken_document)
}

/// The driver: a random worker SIGKILLed every `kill_every` (and a new one started), workers
/// that exit restarted, and one outage at a time, the `k`-th once `k / (faults + 2)` of the
/// batch is done, until the faults are over, the batch done and the signers through.
async fn inject_faults(
    d: &mut Deployment,
    settings: &Settings,
    feed: &Feed,
    signed: &AtomicI64,
    faults_over: &AtomicBool,
    signer: &tokio::task::JoinHandle<(Vec<String>, Option<String>)>,
) -> Timeline {
    let clock = Instant::now();
    let db = d.app.database_url();
    let mut pending: Vec<Fault> = Fault::ALL.to_vec();
    pending.reverse();
    let mut active: Option<(Fault, DateTime<Utc>, Instant)> = None;
    let mut timeline = Timeline {
        injected: Vec::new(),
        kills: Vec::new(),
        exits: 0,
    };
    let mut last_end = Instant::now();
    // Signing resumed after the last fault: (batch signed when it ended, when it moved again).
    let mut resumed: (i64, Option<Instant>) = (0, Some(Instant::now()));
    let mut next_kill = Instant::now() + settings.kill_every;
    let mut seed = uuid::Uuid::new_v4().as_u128();
    let deadline = Instant::now() + Duration::from_secs(120 + settings.documents as u64 * 2);
    let mut respawn_due: Vec<Instant> = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let progress = signed.load(Ordering::SeqCst);
        let total = feed.count() as i64;
        let batch_done = progress >= total;

        // A supervisor's job: a worker that exits (it cannot start while PostgreSQL or Redis is
        // away) is started again a second later.
        for i in d.app.live_workers() {
            if d.app.worker_exited(i) {
                timeline.exits += 1;
                respawn_due.push(Instant::now() + Duration::from_secs(1));
            }
        }
        respawn_due.retain(|due| {
            if Instant::now() >= *due {
                d.app.start_worker();
                false
            } else {
                true
            }
        });

        if !batch_done && Instant::now() >= next_kill {
            next_kill = Instant::now() + settings.kill_every;
            let live = d.app.live_workers();
            if !live.is_empty() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let victim = live[(seed >> 64) as usize % live.len()];
                let running = block_in_place(|| {
                    db::texts(
                        &db,
                        "SELECT id::text AS t FROM jobs WHERE status = 'running'",
                    )
                    .ok()
                });
                d.app.kill_worker(victim);
                timeline.kills.push(Kill {
                    at: Utc::now(),
                    running,
                });
                d.app.start_worker();
            }
        }

        match active {
            Some((fault, start, since)) if since.elapsed() >= settings.outage => {
                d.bring_back(fault).await;
                println!(
                    "faults: {:>6.1} s  {} (down {:.1} s)",
                    clock.elapsed().as_secs_f64(),
                    fault.describe(),
                    since.elapsed().as_secs_f64()
                );
                timeline.injected.push(Injected {
                    fault,
                    start,
                    end: Utc::now(),
                });
                feed.paused.store(false, Ordering::SeqCst);
                active = None;
                last_end = Instant::now();
                resumed = (signed.load(Ordering::SeqCst), None);
            }
            Some(_) => {}
            None => {
                if resumed.1.is_none() && progress > resumed.0 {
                    resumed.1 = Some(Instant::now());
                }
                // The next fault comes once signing has run again for a few seconds after the
                // last one (so that each recovery is measured on its own), or after a minute.
                let settled = resumed
                    .1
                    .is_some_and(|t| t.elapsed() >= Duration::from_secs(5))
                    || last_end.elapsed() >= Duration::from_secs(60)
                    || batch_done;
                let next = Fault::ALL.len() - pending.len() + 1;
                let due = progress * (Fault::ALL.len() as i64 + 2) >= total * next as i64;
                if let Some(&fault) = pending.last() {
                    if (due || batch_done) && settled && last_end.elapsed() >= settings.outage / 2 {
                        pending.pop();
                        if pending.is_empty() {
                            faults_over.store(true, Ordering::SeqCst);
                        }
                        // A batch whose answer is lost while PostgreSQL restarts could be
                        // submitted twice; the feeder waits.
                        feed.paused
                            .store(fault == Fault::Postgres, Ordering::SeqCst);
                        d.take_down(fault).await;
                        active = Some((fault, Utc::now(), Instant::now()));
                    }
                }
            }
        }

        if pending.is_empty() && active.is_none() && batch_done && signer.is_finished() {
            break;
        }
        if Instant::now() > deadline {
            println!("faults: the batch did not finish in time; checking what there is");
            if let Some((fault, start, _)) = active.take() {
                d.bring_back(fault).await;
                timeline.injected.push(Injected {
                    fault,
                    start,
                    end: Utc::now(),
                });
            }
            break;
        }
    }
    for _ in respawn_due.drain(..) {
        d.app.start_worker();
    }
    timeline
}

async fn deploy(dir: &Path) -> Deployment {
    let pg = block_in_place(Postgres::start);
    let redis = block_in_place(|| Redis::start(dir));
    let smtp = block_in_place(|| SmtpServer::start(SmtpOptions::default()));
    // The real secret is known once the endpoint is registered.
    let receiver = WebhookReceiver::start("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").await;
    // The TSA reaches the HSM through p11-kit (its own copy of the dev token): killing the
    // server cuts it off. Not the workers: p11-kit 0.24's RPC cannot carry the AES-GCM
    // parameters their data-key unwrapping needs (CKR_MECHANISM_INVALID). They load the
    // fault-injection module over the app's token instead (`worker_hsm_fault`), told when the
    // device is gone.
    let tsa_hsm = block_in_place(|| P11KitServer::start(&dir.join("p11.sock"), &token_copy(dir)));
    let production = |name: &str, value: &str| (name.to_owned(), value.to_owned());
    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        concurrency: 4,
        postgres: Some(pg.url()),
        redis_url: Some(redis.url()),
        env: vec![
            // The production defaults (TestApp shortens them for the other tests).
            production("SHOMEI_RECONCILE_SECS", "10"),
            production("SHOMEI_HEARTBEAT_SECS", "3"),
            production("SHOMEI_JOB_MAX_ATTEMPTS", "8"),
            production("SHOMEI_TSA_ATTEMPTS", "3"),
            production("SHOMEI_WEBHOOK_RETRY_SCHEDULE", NOTIFY_SCHEDULE),
            production("SHOMEI_MAIL_RETRY_SCHEDULE", NOTIFY_SCHEDULE),
        ],
        tsa_env: vec![
            ("SHOMEI_HSM_MODULE".into(), P11_KIT_CLIENT.into()),
            ("P11_KIT_SERVER_ADDRESS".into(), tsa_hsm.address()),
        ],
        worker_env: vec![("SHOMEI_SMTP_URL".into(), smtp.url())],
        worker_hsm_fault: true,
        ..TestAppOptions::default()
    })
    .await;
    let mut d = Deployment {
        app,
        tsa_hsm,
        smtp,
        receiver,
        redis,
        pg,
    };
    for _ in 0..WORKERS {
        d.app.start_worker();
    }
    d
}

/// A copy of the dev token for the p11-kit server, and its SoftHSM2 configuration's path.
fn token_copy(dir: &Path) -> String {
    let tokens = dir.join("p11-tokens");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(shomei_testkit::hsm_dir().join("tokens"))
        .arg(&tokens)
        .status()
        .unwrap();
    assert!(status.success(), "copying the dev token");
    let conf = dir.join("p11-softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    conf.display().to_string()
}
