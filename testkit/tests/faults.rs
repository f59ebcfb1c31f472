//! The fault-injection suite (R-OPS-5, issue 9). A whole deployment on loopback (API, three
//! workers, our TSA, a PostgreSQL cluster and a Redis of its own, an SMTP server, a webhook
//! receiver, the HSM behind `p11-kit server`) signs a batch of documents and runs signature
//! requests by e-mail while a random worker is SIGKILLed every few seconds (and a new one
//! started), and each of Redis (restarted empty), the TSA, the HSM, PostgreSQL (immediate stop,
//! crash recovery), the SMTP server and the webhook receiver goes down once and comes back.
//! Then it checks that every accepted job finished, every document is signed exactly once,
//! every webhook event arrived at least once under one `webhook-id`, every e-mail arrived
//! once, the permanently failing job failed once, and prints (and writes as JSON) the figures
//! with the recovery time after each fault.
//!
//! Its own test binary, not a module of `pipeline`: it starts its own PostgreSQL and Redis and
//! keeps both cores busy, so it must not share the machine with the other end-to-end tests.
//!
//! Environment: `SHOMEI_FAULTS_DOCUMENTS` (240, the bounded form `cargo test` runs),
//! `SHOMEI_FAULTS_OUTAGE_SECS` (6), `SHOMEI_FAULTS_KILL_EVERY_SECS` (4), `SHOMEI_FAULTS_REPORT`
//! (where to write the JSON; default `target/tmp/faults/<id>/report.json`).
//! `scripts/faults.sh [DOCUMENTS]` runs the full form with release binaries.
#![allow(clippy::print_stdout)] // the report on stdout is the point

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::{Connection, PgConnection, RunQueryDsl};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::task::block_in_place;

use shomei_testkit::services::{self, P11KitServer, Postgres, Redis, P11_KIT_CLIENT};
use shomei_testkit::smtp::{messages_in, SmtpOptions, SmtpServer};
use shomei_testkit::validate::{assert_externally_valid, embedded_signatures, Expected};
use shomei_testkit::webhook_receiver::WebhookReceiver;
use shomei_testkit::{sample, TestApp, TestAppOptions};

/// Notification retries, compressed (production: 10 s, 1 min, 5 min …) so that an outage of a
/// few seconds is bridged within the run; the sum (about 2 minutes) outlasts every outage.
const NOTIFY_SCHEDULE: &str = "2s,3s,5s,8s,13s,21s,34s";
const WORKERS: usize = 3;
const BATCH_ITEMS: usize = 100;
/// The certified signer whose key is not in the token: their signature fails for good.
const BROKEN_KEY: &str = "no-such-key-faults";
const BROKEN_PIN: &str = "135790";

struct Settings {
    documents: usize,
    requests: usize,
    outage: Duration,
    kill_every: Duration,
    report: Option<PathBuf>,
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
enum Fault {
    Redis,
    Tsa,
    Hsm,
    Postgres,
    Smtp,
    Webhooks,
}

impl Fault {
    /// In the order they are injected, one at a time.
    /// Notifications first: they flow only while documents are being signed and requests
    /// answered, and the batch is over sooner than the faults on a fast machine.
    const ALL: [Fault; 6] = [
        Fault::Smtp,
        Fault::Webhooks,
        Fault::Redis,
        Fault::Tsa,
        Fault::Hsm,
        Fault::Postgres,
    ];

    fn describe(self) -> &'static str {
        match self {
            Fault::Redis => "Redis killed, restarted empty",
            Fault::Tsa => "TSA (shomei-tsa) killed, restarted",
            Fault::Hsm => "TSA's HSM gone (p11-kit server killed), back",
            Fault::Postgres => "PostgreSQL stopped (immediate), restarted",
            Fault::Smtp => "SMTP server killed, restarted",
            Fault::Webhooks => "webhook receiver down, back",
        }
    }

    /// The job kind whose work it holds up.
    fn kind(self) -> &'static str {
        match self {
            Fault::Smtp => "notify_email",
            Fault::Webhooks => "notify_webhook",
            _ => "sign",
        }
    }
}

/// Everything the suite runs, torn down in this order (the app first: it drops its database
/// on the PostgreSQL below).
struct Deployment {
    app: TestApp,
    hsm: P11KitServer,
    smtp: SmtpServer,
    receiver: WebhookReceiver,
    redis: Redis,
    pg: Postgres,
}

impl Deployment {
    async fn take_down(&mut self, fault: Fault) {
        match fault {
            Fault::Redis => self.redis.stop(),
            Fault::Tsa => self.app.stop_tsa(),
            Fault::Hsm => self.hsm.stop(),
            Fault::Postgres => block_in_place(|| self.pg.stop()),
            Fault::Smtp => self.smtp.stop(),
            Fault::Webhooks => self.receiver.stop().await,
        }
    }

    async fn bring_back(&mut self, fault: Fault) {
        match fault {
            Fault::Redis => block_in_place(|| self.redis.start_again()),
            Fault::Tsa => self.app.start_tsa().await,
            Fault::Hsm => block_in_place(|| self.hsm.start_again()),
            Fault::Postgres => block_in_place(|| self.pg.start_again()),
            Fault::Smtp => block_in_place(|| self.smtp.start_again()),
            Fault::Webhooks => self.receiver.start_again().await,
        }
    }
}

struct Injected {
    fault: Fault,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

struct Kill {
    at: DateTime<Utc>,
    /// Jobs `running` just before (unknown while PostgreSQL is down).
    running: Option<Vec<String>>,
}

/// A witness signature request the suite's signer goes through by e-mail.
struct Request {
    signer: String,
    owner: String,
    document: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn accepted_jobs_all_finish_exactly_once_through_killed_workers_and_outages() {
    let settings = Settings::from_env();
    let dir = services::scratch("faults");
    let mut d = deploy(&dir).await;
    let run_started = Utc::now();
    let clock = Instant::now();
    let db = d.app.database_url();

    // The tenant's systems hear about everything.
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
    let requests: Vec<Request> = futures::stream::iter(0..settings.requests)
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

    // The batch: uploads, then sign items in batches of BATCH_ITEMS.
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
    let accepted_at = clock.elapsed();
    println!(
        "faults: {} documents and {} signature requests accepted in {:.1} s; injecting faults",
        feed.count(),
        requests.len() + 1,
        accepted_at.as_secs_f64()
    );

    // Progress (batch sign jobs succeeded), read apart from the driver: PostgreSQL may be down.
    let signed = Arc::new(AtomicI64::new(0));
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_progress(
        db.clone(),
        signed.clone(),
        stop_sampling.clone(),
    ));

    // A fast machine signs the batch before the last fault: while faults are left, more
    // documents are added whenever fewer than two batches' worth wait.
    let faults_over = Arc::new(AtomicBool::new(false));
    let feeder = tokio::spawn(top_up(feed.clone(), signed.clone(), faults_over.clone()));

    // The signers go through their requests by e-mail while the faults come.
    let signer = tokio::spawn(sign_requests(
        d.app.client().clone(),
        d.app.base_url.clone(),
        d.smtp.dir().to_owned(),
        requests.iter().map(|r| r.signer.clone()).collect(),
        signed.clone(),
        settings.documents as i64,
    ));

    // The driver: kills, supervision, one outage at a time, spread over the batch.
    let mut pending: Vec<Fault> = Fault::ALL.to_vec();
    pending.reverse();
    let mut active: Option<(Fault, DateTime<Utc>, Instant)> = None;
    let mut injected: Vec<Injected> = Vec::new();
    let mut kills: Vec<Kill> = Vec::new();
    let mut exits = 0usize;
    let mut last_end = Instant::now();
    let mut next_kill = Instant::now() + settings.kill_every;
    let mut seed = uuid::Uuid::new_v4().as_u128();
    let deadline = Instant::now() + Duration::from_secs(60 + settings.documents as u64 * 2);
    let mut respawn_due: Vec<Instant> = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let progress = signed.load(Ordering::SeqCst);
        let total = feed.count() as i64;
        let batch_done = progress >= total;

        // A supervisor's job: a worker that exits (it cannot start while PostgreSQL, Redis or the
        // HSM is away) is started again a second later.
        for i in d.app.live_workers() {
            if d.app.worker_exited(i) {
                exits += 1;
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
            next_kill += settings.kill_every;
            let live = d.app.live_workers();
            if !live.is_empty() {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let victim = live[(seed >> 64) as usize % live.len()];
                let running = block_in_place(|| {
                    texts(
                        &db,
                        "SELECT id::text AS t FROM jobs WHERE status = 'running'",
                    )
                    .ok()
                });
                d.app.kill_worker(victim);
                kills.push(Kill {
                    at: Utc::now(),
                    running,
                });
                d.app.start_worker();
            }
        }

        match active {
            Some((fault, start, since)) if since.elapsed() >= settings.outage => {
                d.bring_back(fault).await;
                let end = Utc::now();
                println!(
                    "faults: {:>6.1} s  {} (down {:.1} s)",
                    clock.elapsed().as_secs_f64(),
                    fault.describe(),
                    since.elapsed().as_secs_f64()
                );
                injected.push(Injected { fault, start, end });
                feed.paused.store(false, Ordering::SeqCst);
                active = None;
                last_end = Instant::now();
            }
            Some(_) => {}
            None => {
                let next = Fault::ALL.len() - pending.len() + 1;
                let due = progress * (Fault::ALL.len() as i64 + 2) >= total * next as i64;
                if let Some(&fault) = pending.last() {
                    if (due || batch_done) && last_end.elapsed() >= settings.outage / 2 {
                        pending.pop();
                        if pending.is_empty() {
                            faults_over.store(true, Ordering::SeqCst);
                        }
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
                injected.push(Injected {
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
    faults_over.store(true, Ordering::SeqCst);
    let _ = feeder.await;
    let faults_done_at = clock.elapsed();
    let (documents, batches, topped_up) = {
        let submitted = feed.submitted.lock().unwrap();
        (
            submitted.documents.clone(),
            submitted.batches.clone(),
            submitted.documents.len().saturating_sub(settings.documents),
        )
    };
    let signer_outcome = tokio::time::timeout(Duration::from_secs(120), signer)
        .await
        .map(|joined| joined.expect("the signer task panicked"));
    let (request_jobs, broken_job) = match signer_outcome {
        Ok(outcome) => outcome,
        Err(_) => (Vec::new(), None),
    };

    // Everything accepted must finish: wait until no job is unfinished (or give up and count).
    let unfinished = "SELECT count(*) AS n FROM jobs WHERE status NOT IN ('succeeded', 'failed')";
    let drain_deadline = Instant::now() + Duration::from_secs(300);
    while block_in_place(|| count(&db, unfinished)).unwrap_or(1) > 0
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let finished_at = clock.elapsed();
    stop_sampling.store(true, Ordering::SeqCst);
    let _ = sampler.await;

    let report = check(
        &d,
        &settings,
        &Run {
            started: run_started,
            documents: &documents,
            topped_up,
            batches: &batches,
            requests: &requests,
            request_jobs: &request_jobs,
            broken_document: &broken_document,
            broken_job: broken_job.as_deref(),
            injected: &injected,
            kills: &kills,
            exits,
            accepted_secs: accepted_at.as_secs_f64(),
            faults_secs: faults_done_at.as_secs_f64(),
            finished_secs: finished_at.as_secs_f64(),
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

async fn deploy(dir: &Path) -> Deployment {
    let pg = block_in_place(Postgres::start);
    let redis = block_in_place(|| Redis::start(dir));
    let smtp = block_in_place(|| SmtpServer::start(SmtpOptions::default()));
    // The real secret is known once the endpoint is registered.
    let receiver = WebhookReceiver::start("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").await;
    // The TSA reaches the HSM through p11-kit (its own copy of the dev token): killing the
    // server cuts it off. Not the workers: p11-kit 0.24's RPC cannot carry the AES-GCM
    // parameters their data-key unwrapping needs (CKR_MECHANISM_INVALID).
    let hsm = block_in_place(|| P11KitServer::start(&dir.join("p11.sock"), &token_copy(dir)));
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
            ("P11_KIT_SERVER_ADDRESS".into(), hsm.address()),
        ],
        worker_env: vec![("SHOMEI_SMTP_URL".into(), smtp.url())],
        ..TestAppOptions::default()
    })
    .await;
    let mut d = Deployment {
        app,
        hsm,
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

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Uploads the sample as `title` and sends it round `signers`; returns the document id.
async fn send_request(app: &TestApp, title: &str, owner: &str, signers: Value) -> String {
    let (status, body) = json_of(
        app.upload(&app.api_key, sample("contract.pdf"), Some(title))
            .await,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let document = body["id"].as_str().unwrap().to_owned();
    let (status, body) = json_of(
        app.post_json(
            Some(&app.api_key),
            &format!("/v1/documents/{document}/requests"),
            &json!({"owner": {"name": "Faults Owner", "email": owner}, "locale": "en",
                    "signers": signers}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    document
}

#[derive(Default)]
struct Submitted {
    documents: Vec<String>,
    batches: Vec<String>,
}

/// Submits documents for signing through the API, as a client would.
struct Feed {
    client: reqwest::Client,
    base: String,
    key: String,
    submitted: std::sync::Mutex<Submitted>,
    /// Set while PostgreSQL is down: a batch whose answer is lost must not be sent twice.
    paused: AtomicBool,
}

impl Feed {
    fn count(&self) -> usize {
        self.submitted.lock().unwrap().documents.len()
    }

    /// Uploads `n` copies of the sample and submits them as one batch; false when the API
    /// refused or did not answer (nothing recorded: documents uploaded but never submitted are
    /// not part of the run).
    async fn submit(&self, n: usize) -> bool {
        let upload = |_| async {
            let response = self
                .client
                .post(format!("{}/v1/documents", self.base))
                .bearer_auth(&self.key)
                .header("content-type", "application/pdf")
                .body(sample("contract.pdf"))
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .ok()?;
            if response.status() != 201 {
                return None;
            }
            let body: Value = response.json().await.ok()?;
            body["id"].as_str().map(str::to_owned)
        };
        let uploaded: Vec<Option<String>> = futures::stream::iter(0..n)
            .map(upload)
            .buffered(8)
            .collect()
            .await;
        let Some(documents) = uploaded.into_iter().collect::<Option<Vec<String>>>() else {
            return false;
        };
        let batch_no = self.submitted.lock().unwrap().batches.len();
        let items: Vec<Value> = documents
            .iter()
            .enumerate()
            .map(|(i, id)| {
                json!({"document_id": id, "reason": "一括署名",
                       "signer": {"name": format!("Batch {batch_no}-{i}"), "email": "batch@example.com"}})
            })
            .collect();
        let response = self
            .client
            .post(format!("{}/v1/batches", self.base))
            .bearer_auth(&self.key)
            .json(&json!({"items": items}))
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        let Ok(response) = response else {
            return false;
        };
        let (status, body) = json_of(response).await;
        if status != 202 || body["total"] != documents.len() {
            println!("faults: a batch was refused: {status} {body}");
            return false;
        }
        let mut submitted = self.submitted.lock().unwrap();
        submitted
            .batches
            .push(body["batch_id"].as_str().unwrap().to_owned());
        submitted.documents.extend(documents);
        true
    }
}

async fn top_up(feed: Arc<Feed>, signed: Arc<AtomicI64>, faults_over: Arc<AtomicBool>) {
    while !faults_over.load(Ordering::SeqCst) {
        let waiting = feed.count() as i64 - signed.load(Ordering::SeqCst);
        if !feed.paused.load(Ordering::SeqCst) && waiting < 2 * BATCH_ITEMS as i64 {
            feed.submit(BATCH_ITEMS).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn sample_progress(db: String, signed: Arc<AtomicI64>, stop: Arc<AtomicBool>) {
    let query = "SELECT count(*) AS n FROM jobs \
                 WHERE kind = 'sign' AND batch_id IS NOT NULL AND status = 'succeeded'";
    while !stop.load(Ordering::SeqCst) {
        let db = db.clone();
        if let Ok(Ok(n)) = tokio::task::spawn_blocking(move || count(&db, query)).await {
            signed.store(n, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The signers' side, by e-mail: each witness takes the link from their invitation, asks for a
/// code, reads it from the next e-mail and signs, request `i` once the batch is `i/n` done (so
/// the e-mails run through the faults). The broken signer signs first, with their PIN.
/// Returns the request sign jobs and the broken one.
async fn sign_requests(
    client: reqwest::Client,
    base: String,
    spool: PathBuf,
    signers: Vec<String>,
    progress: Arc<AtomicI64>,
    total: i64,
) -> (Vec<String>, Option<String>) {
    let step = Arc::new(Step {
        client,
        base,
        spool,
        deadline: Instant::now() + Duration::from_secs(600 + total as u64),
    });
    let broken = async {
        let link = step.link("broken@example.com").await?;
        step.sign(&link, json!({"pin": BROKEN_PIN})).await
    }
    .await;
    let n = signers.len() as i64;
    let jobs = futures::stream::iter(signers.into_iter().enumerate())
        .map(|(i, signer)| {
            let step = step.clone();
            let progress = progress.clone();
            async move {
                while progress.load(Ordering::SeqCst) * n < total * i as i64
                    && Instant::now() < step.deadline
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                step.witness_signs(&signer).await
            }
        })
        .buffer_unordered(3)
        .collect::<Vec<Option<String>>>()
        .await;
    (jobs.into_iter().flatten().collect(), broken)
}

struct Step {
    client: reqwest::Client,
    base: String,
    spool: PathBuf,
    deadline: Instant,
}

impl Step {
    /// A witness: link from the invitation, a code asked for and read from its e-mail, signed.
    async fn witness_signs(&self, signer: &str) -> Option<String> {
        let link = self.link(signer).await?;
        let before = self.mails_to(signer, "verification code");
        self.post(&format!("/v1/signing/{link}/code"), json!({}))
            .await?;
        let mail = self.mail(signer, "verification code", before).await?;
        let code = mail
            .text
            .lines()
            .map(str::trim)
            .find(|l| l.len() == 6 && l.bytes().all(|b| b.is_ascii_digit()))?
            .to_owned();
        self.sign(&link, json!({"code": code})).await
    }

    fn mails_to(&self, to: &str, subject: &str) -> usize {
        messages_in(&self.spool)
            .iter()
            .filter(|m| m.to.iter().any(|t| t == to) && m.subject.contains(subject))
            .count()
    }

    /// The `skip+1`-th e-mail to `to` with `subject` in its subject, once it arrived.
    async fn mail(
        &self,
        to: &str,
        subject: &str,
        skip: usize,
    ) -> Option<shomei_testkit::smtp::ReceivedMail> {
        while Instant::now() < self.deadline {
            let found = messages_in(&self.spool)
                .into_iter()
                .filter(|m| m.to.iter().any(|t| t == to) && m.subject.contains(subject))
                .nth(skip);
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("faults: no e-mail {subject:?} to {to}");
        None
    }

    /// The signing link's token from `to`'s invitation.
    async fn link(&self, to: &str) -> Option<String> {
        let mail = self.mail(to, "Please sign", 0).await?;
        let start = mail.text.find("/v1/signing/")? + 12;
        Some(
            mail.text[start..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect(),
        )
    }

    /// POSTs until the API accepts (it answers 5xx while PostgreSQL is away); `None` on a 4xx.
    async fn post(&self, path: &str, body: Value) -> Option<Value> {
        while Instant::now() < self.deadline {
            let sent = tokio::time::timeout(
                Duration::from_secs(15),
                self.client
                    .post(format!("{}{path}", self.base))
                    .json(&body)
                    .send(),
            )
            .await;
            if let Ok(Ok(response)) = sent {
                let status = response.status();
                if status.is_success() {
                    return Some(response.json().await.unwrap_or(Value::Null));
                }
                if status.is_client_error() {
                    let body = response.text().await.unwrap_or_default();
                    println!("faults: POST {path}: {status} {body}");
                    return None;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        None
    }

    async fn sign(&self, link: &str, body: Value) -> Option<String> {
        let queued = self.post(&format!("/v1/signing/{link}/sign"), body).await?;
        queued["job_id"].as_str().map(str::to_owned)
    }
}

struct Run<'a> {
    started: DateTime<Utc>,
    documents: &'a [String],
    /// Of those, added while faults were left (see `top_up`).
    topped_up: usize,
    batches: &'a [String],
    requests: &'a [Request],
    request_jobs: &'a [String],
    broken_document: &'a str,
    broken_job: Option<&'a str>,
    injected: &'a [Injected],
    kills: &'a [Kill],
    exits: usize,
    accepted_secs: f64,
    faults_secs: f64,
    finished_secs: f64,
}

struct Report {
    text: String,
    json: Value,
    problems: Vec<String>,
}

async fn check(d: &Deployment, settings: &Settings, run: &Run<'_>) -> Report {
    let app = &d.app;
    let db = app.database_url();
    let mut problems = Vec::new();
    let q = |sql: &str| block_in_place(|| count(&db, sql)).expect(sql);
    let since = |t: &DateTime<Utc>| format!("'{}'::timestamptz", t.to_rfc3339());

    // Jobs: none lost, none stuck.
    let batch_list = run
        .batches
        .iter()
        .map(|b| format!("'{b}'"))
        .collect::<Vec<_>>()
        .join(",");
    let batch_jobs = q(&format!(
        "SELECT count(*) AS n FROM jobs WHERE kind = 'sign' AND batch_id IN ({batch_list})"
    ));
    let batch_signed = q(&format!(
        "SELECT count(*) AS n FROM jobs WHERE kind = 'sign' AND batch_id IN ({batch_list}) \
         AND status = 'succeeded'"
    ));
    let accepted = q("SELECT count(*) AS n FROM jobs");
    let stuck_rows = block_in_place(|| {
        texts(
            &db,
            "SELECT kind || ' ' || status || ' ' || id || coalesce(' ' || error, '') AS t \
             FROM jobs WHERE status NOT IN ('succeeded', 'failed') ORDER BY created_at",
        )
    })
    .unwrap();
    let failed_rows = block_in_place(|| {
        texts(
            &db,
            "SELECT kind || ' ' || id || ' after ' || attempts || ' attempt(s): ' \
             || coalesce(error, '') AS t FROM jobs WHERE status = 'failed' ORDER BY created_at",
        )
    })
    .unwrap();
    let broken = run
        .broken_job
        .unwrap_or("00000000-0000-0000-0000-000000000000");
    let unexpected_failures: Vec<&String> =
        failed_rows.iter().filter(|r| !r.contains(broken)).collect();
    let lost = run.documents.len() as i64 - batch_signed;
    if batch_jobs != run.documents.len() as i64 {
        problems.push(format!(
            "{} batch items accepted, {batch_jobs} sign jobs recorded",
            run.documents.len()
        ));
    }
    if !stuck_rows.is_empty() {
        problems.push(format!(
            "{} job(s) never finished: {:?}",
            stuck_rows.len(),
            &stuck_rows[..stuck_rows.len().min(10)]
        ));
    }
    if !unexpected_failures.is_empty() {
        problems.push(format!(
            "{} job(s) failed: {:?}",
            unexpected_failures.len(),
            &unexpected_failures[..unexpected_failures.len().min(10)]
        ));
    }
    if run.request_jobs.len() != run.requests.len() {
        problems.push(format!(
            "{} of {} signature requests got as far as their sign job",
            run.request_jobs.len(),
            run.requests.len()
        ));
    }

    // Signatures: counted in every file (each /ByteRange: a signature or document time-stamp),
    // checked with pdfsig, qpdf and openssl on a few.
    let counted: Vec<(String, usize, usize)> = futures::stream::iter(
        run.documents
            .iter()
            .map(|doc| (doc.clone(), 1usize))
            .chain(run.requests.iter().map(|r| (r.document.clone(), 2)))
            .chain(std::iter::once((run.broken_document.to_owned(), 0))),
    )
    .map(|(doc, expected)| async move {
        let response = app
            .get(&app.api_key, &format!("/v1/documents/{doc}/pdf"))
            .await;
        let found = if response.status().is_success() {
            embedded_signatures(&response.bytes().await.unwrap()).len()
        } else {
            usize::MAX
        };
        (doc, expected, found)
    })
    .buffered(8)
    .collect()
    .await;
    let duplicated: Vec<&(String, usize, usize)> = counted
        .iter()
        .filter(|(_, e, f)| *f != usize::MAX && f > e)
        .collect();
    let unsigned: Vec<&(String, usize, usize)> = counted.iter().filter(|(_, e, f)| f < e).collect();
    let unreadable = counted.iter().filter(|(_, _, f)| *f == usize::MAX).count();
    if !duplicated.is_empty() {
        problems.push(format!(
            "{} document(s) signed more than once: {:?}",
            duplicated.len(),
            &duplicated[..duplicated.len().min(10)]
        ));
    }
    if !unsigned.is_empty() || unreadable > 0 {
        problems.push(format!(
            "{} document(s) short of their signatures, {unreadable} not downloadable: {:?}",
            unsigned.len(),
            &unsigned[..unsigned.len().min(10)]
        ));
    }
    let revisions_per_job = q(
        "SELECT count(*) AS n FROM (SELECT job_id FROM document_revisions \
         WHERE job_id IS NOT NULL GROUP BY job_id HAVING count(*) > 1) AS twice",
    );
    if revisions_per_job > 0 {
        problems.push(format!("{revisions_per_job} job(s) made two revisions"));
    }
    let middle = &run.documents[run.documents.len() / 2];
    for doc in [&run.documents[0], middle, run.documents.last().unwrap()] {
        assert_externally_valid(
            "faults-batch",
            &app.download(doc).await,
            Expected::timestamped(1),
        );
    }
    if let Some(request) = run.requests.first() {
        assert_externally_valid(
            "faults-request",
            &app.download(&request.document).await,
            Expected::timestamped(1).and_document_timestamps(1),
        );
    }

    // Webhooks: every event with a delivery job arrived at least once, under one webhook-id.
    let expected_events: HashSet<String> = block_in_place(|| {
        texts(
            &db,
            "SELECT payload->>'event_id' AS t FROM jobs WHERE kind = 'notify_webhook'",
        )
    })
    .unwrap()
    .into_iter()
    .map(|id| id.replace('-', ""))
    .collect();
    let received = d.receiver.received();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for hook in &received {
        let id = hook.id.trim_start_matches("msg_").replace('-', "");
        *per_id.entry(id).or_default() += 1;
    }
    let unverified = received.iter().filter(|h| !h.verified).count();
    let missing_events = expected_events
        .iter()
        .filter(|id| !per_id.contains_key(*id))
        .count();
    let unknown_ids = per_id
        .keys()
        .filter(|id| !expected_events.contains(*id))
        .count();
    let hook_duplicates = received.len() - per_id.len();
    if missing_events > 0 {
        problems.push(format!(
            "{missing_events} of {} webhook events never delivered",
            expected_events.len()
        ));
    }
    if unverified > 0 || unknown_ids > 0 {
        problems.push(format!(
            "{unverified} webhook deliveries failed verification, {unknown_ids} ids match no event"
        ));
    }

    // E-mails: each one once.
    let mails = messages_in(d.smtp.dir());
    let mut per_mail: BTreeMap<(String, String), usize> = BTreeMap::new();
    for mail in &mails {
        for to in &mail.to {
            *per_mail
                .entry((to.clone(), mail.subject.clone()))
                .or_default() += 1;
        }
    }
    let mail_duplicates: Vec<String> = per_mail
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|((to, subject), n)| format!("{n}× {subject:?} to {to}"))
        .collect();
    let mut mail_missing = Vec::new();
    for request in run.requests {
        for (to, subject) in [
            (&request.signer, "Please sign"),
            (&request.signer, "verification code"),
            (&request.signer, "Signed by everyone"),
            (&request.owner, "Signed by everyone"),
        ] {
            let n: usize = per_mail
                .iter()
                .filter(|((t, s), _)| t == to && s.contains(subject))
                .map(|(_, n)| n)
                .sum();
            if n == 0 {
                mail_missing.push(format!("{subject:?} to {to}"));
            }
        }
    }
    let email_jobs = q(
        "SELECT count(*) AS n FROM jobs WHERE kind = 'notify_email' \
         AND status = 'succeeded'",
    );
    if !mail_duplicates.is_empty() || mails.len() as i64 != email_jobs {
        problems.push(format!(
            "{} e-mails received for {email_jobs} e-mail jobs; sent more than once: {mail_duplicates:?}",
            mails.len()
        ));
    }
    if !mail_missing.is_empty() {
        problems.push(format!("e-mails never received: {mail_missing:?}"));
    }

    // The permanent failure: failed once, with its reason, never run again.
    let (broken_status, broken_attempts, broken_failed_events, broken_error) = match run.broken_job
    {
        Some(job) => {
            let state = app.wait_for_job(job, Duration::from_secs(1)).await;
            let events = q(&format!(
                "SELECT count(*) AS n FROM events WHERE kind = 'job.failed' \
                 AND data->>'job_id' = '{job}'"
            ));
            (
                state["status"].as_str().unwrap_or_default().to_owned(),
                state["attempts"].as_i64().unwrap_or(-1),
                events,
                state["error"].as_str().unwrap_or_default().to_owned(),
            )
        }
        None => ("never queued".to_owned(), -1, 0, String::new()),
    };
    if broken_status != "failed"
        || broken_attempts != 1
        || broken_failed_events != 1
        || !broken_error.contains(BROKEN_KEY)
    {
        problems.push(format!(
            "the permanently failing sign job: {broken_status}, {broken_attempts} attempt(s), \
             {broken_failed_events} job.failed event(s), error {broken_error:?}"
        ));
    }

    // Recovery after each fault, from the jobs' own finish times: when work of the kind the
    // fault held up finished again, and when it was back to normal: for signing, the pace of
    // the 10 s before the fault (80 % of it over 5 s); for notifications, every delivery due
    // before the service came back done.
    let seconds = |sql: String| block_in_place(|| float(&db, &sql)).unwrap_or(None);
    let sign_times = block_in_place(|| {
        floats(
            &db,
            "SELECT extract(epoch FROM finished_at)::float8 AS v FROM jobs \
             WHERE kind = 'sign' AND status = 'succeeded' ORDER BY finished_at",
        )
    })
    .unwrap();
    let in_window = |from: f64, to: f64| {
        sign_times.partition_point(|t| *t < to) - sign_times.partition_point(|t| *t < from)
    };
    let epoch = |t: &DateTime<Utc>| t.timestamp_micros() as f64 / 1e6;
    let mut fault_rows = Vec::new();
    let mut fault_json = Vec::new();
    for f in run.injected {
        let kind = f.fault.kind();
        let (start, end) = (since(&f.start), since(&f.end));
        let during = q(&format!(
            "SELECT count(*) AS n FROM jobs WHERE kind = '{kind}' AND status = 'succeeded' \
             AND finished_at > {start} AND finished_at <= {end}"
        ));
        let resumed = seconds(format!(
            "SELECT extract(epoch FROM min(finished_at) - {end})::float8 AS v FROM jobs \
             WHERE kind = '{kind}' AND status = 'succeeded' AND finished_at > {end}"
        ));
        let recovered = if kind == "sign" {
            let (start, end) = (epoch(&f.start), epoch(&f.end));
            let pace = in_window(start - 10.0, start) as f64 / 10.0;
            (pace > 0.0)
                .then(|| {
                    (0..240).map(|i| i as f64 * 0.5).find(|after| {
                        in_window(end + after, end + after + 5.0) as f64 >= 0.8 * pace * 5.0
                    })
                })
                .flatten()
        } else {
            seconds(format!(
                "SELECT greatest(0, extract(epoch FROM max(finished_at) - {end}))::float8 AS v \
                 FROM jobs WHERE kind = '{kind}' AND created_at < {end}"
            ))
        };
        let down = (f.end - f.start).num_milliseconds() as f64 / 1000.0;
        let at = (f.start - run.started).num_milliseconds() as f64 / 1000.0;
        fault_rows.push(format!(
            "  {:<46} at {:>6.1} s  down {:>4.1} s  {:<14} done while down {:>4}  \
             resumed after {:>7}  recovered after {:>7}",
            f.fault.describe(),
            at,
            down,
            kind,
            during,
            secs(resumed),
            secs(recovered),
        ));
        fault_json.push(json!({
            "fault": f.fault.describe(), "at_s": at, "down_s": down, "kind": kind,
            "completed_while_down": during, "resumed_after_s": resumed,
            "recovered_after_s": recovered,
        }));
    }
    // After a kill, the jobs it cut off wait for three missed heartbeats before another worker's
    // heartbeat puts them back on the queue (at its end): when each was taken up again, and
    // when every job running at the kill had finished.
    let mut picked_up: Vec<f64> = Vec::new();
    let mut finished: Vec<f64> = Vec::new();
    for kill in run.kills {
        let Some(running) = kill.running.as_ref().filter(|r| !r.is_empty()) else {
            continue;
        };
        let ids = running
            .iter()
            .map(|id| format!("'{id}'"))
            .collect::<Vec<_>>()
            .join(",");
        let at = since(&kill.at);
        picked_up.extend(seconds(format!(
            "SELECT extract(epoch FROM max(started_at) - {at})::float8 AS v \
             FROM jobs WHERE id IN ({ids}) AND started_at > {at}"
        )));
        finished.extend(seconds(format!(
            "SELECT greatest(0, extract(epoch FROM max(finished_at) - {at}))::float8 AS v \
             FROM jobs WHERE id IN ({ids})"
        )));
    }
    let spread = |values: &mut Vec<f64>| -> [Option<f64>; 3] {
        values.sort_by(f64::total_cmp);
        let pick = |p: f64| {
            (!values.is_empty()).then(|| values[((values.len() - 1) as f64 * p).round() as usize])
        };
        [pick(0.0), pick(0.5), pick(1.0)]
    };
    let picked_up = spread(&mut picked_up);
    let finished = spread(&mut finished);
    let retried = q("SELECT count(*) AS n FROM jobs WHERE attempts > 1");
    let signatures: usize = counted
        .iter()
        .filter(|(_, _, f)| *f != usize::MAX)
        .map(|(_, _, f)| *f)
        .sum();

    let text = format!(
        "\n== Fault-injection suite ({} documents ({} of them added to outlast the faults), \
         {} signature requests + 1 failing for good) ==\n\
         settings: {WORKERS} workers × concurrency 4, outages {} s, a worker SIGKILLed every {} s, \
         heartbeat 3 s, reconciler 10 s, 8 attempts, notification retries {NOTIFY_SCHEDULE}\n\
         timeline: accepted in {:.1} s, faults over at {:.1} s, everything finished at {:.1} s\n\
         faults injected: {} outages, {} worker kills, {} worker exits restarted by the supervisor\n\
         {}\n\
         (resumed: the first job of that kind finished after the service was back; recovered: \
         signing back to 80 % of its pace before the fault, or every notification due by then delivered)\n\
         worker kills: the jobs a kill cut off were taken up again after min {} / median {} / max {}; \
         every job running at a kill had finished after min {} / median {} / max {}\n\
         jobs: {accepted} accepted, {} stuck, {} failed (expected 1), {retried} retried after a transient error or a kill\n\
         documents: {} batch items, {batch_signed} signed, lost {}, duplicated {}, short {} \
         ({signatures} /ByteRange signatures and time-stamps counted in {} files)\n\
         webhooks: {} events, {} deliveries received, missing {missing_events}, \
         {hook_duplicates} repeated deliveries (same webhook-id), {unverified} unverified\n\
         e-mails: {} received for {email_jobs} e-mail jobs, duplicated {}, missing {}\n\
         permanent failure: {broken_status} after {broken_attempts} attempt(s), \
         {broken_failed_events} job.failed event(s): {broken_error}\n\
         verdict: {}\n",
        run.documents.len(),
        run.topped_up,
        run.requests.len(),
        settings.outage.as_secs(),
        settings.kill_every.as_secs(),
        run.accepted_secs,
        run.faults_secs,
        run.finished_secs,
        run.injected.len(),
        run.kills.len(),
        run.exits,
        fault_rows.join("\n"),
        secs(picked_up[0]),
        secs(picked_up[1]),
        secs(picked_up[2]),
        secs(finished[0]),
        secs(finished[1]),
        secs(finished[2]),
        stuck_rows.len(),
        failed_rows.len(),
        run.documents.len(),
        lost.max(0),
        duplicated.len(),
        unsigned.len(),
        counted.len(),
        expected_events.len(),
        received.len(),
        mails.len(),
        mail_duplicates.len(),
        mail_missing.len(),
        if problems.is_empty() {
            "all checks passed".to_owned()
        } else {
            format!("{} problem(s)", problems.len())
        },
    );
    let json = json!({
        "documents": run.documents.len(),
        "documents_topped_up": run.topped_up,
        "signature_requests": run.requests.len(),
        "settings": {
            "workers": WORKERS, "concurrency": 4, "outage_s": settings.outage.as_secs(),
            "kill_every_s": settings.kill_every.as_secs(), "heartbeat_s": 3, "reconcile_s": 10,
            "max_attempts": 8, "notify_schedule": NOTIFY_SCHEDULE,
        },
        "timeline_s": {"accepted": run.accepted_secs, "faults_over": run.faults_secs,
                       "finished": run.finished_secs},
        "faults": fault_json,
        "worker_kills": run.kills.len(),
        "worker_exits_restarted": run.exits,
        "kill_taken_up_again_s": {"min": picked_up[0], "median": picked_up[1], "max": picked_up[2]},
        "kill_all_running_finished_s": {"min": finished[0], "median": finished[1], "max": finished[2]},
        "jobs": {"accepted": accepted, "stuck": stuck_rows.len(), "failed": failed_rows.len(),
                 "retried": retried},
        "signed": {"batch_items": run.documents.len(), "signed": batch_signed,
                   "lost": lost.max(0), "duplicated": duplicated.len(),
                   "short": unsigned.len(), "files_counted": counted.len()},
        "webhooks": {"events": expected_events.len(), "deliveries": received.len(),
                     "missing": missing_events, "repeated": hook_duplicates,
                     "unverified": unverified},
        "emails": {"received": mails.len(), "jobs": email_jobs,
                   "duplicated": mail_duplicates.len(), "missing": mail_missing.len()},
        "permanent_failure": {"status": broken_status, "attempts": broken_attempts,
                              "job_failed_events": broken_failed_events, "error": broken_error},
        "problems": problems,
    });
    Report {
        text,
        json,
        problems,
    }
}

fn secs(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.1} s"))
}

fn connect(db: &str) -> Result<PgConnection, String> {
    PgConnection::establish(db).map_err(|e| e.to_string())
}

fn count(db: &str, sql: &str) -> Result<i64, String> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<Count>(&mut connect(db)?)
        .map(|c| c.n)
        .map_err(|e| e.to_string())
}

fn texts(db: &str, sql: &str) -> Result<Vec<String>, String> {
    #[derive(diesel::QueryableByName)]
    struct Text {
        #[diesel(sql_type = diesel::sql_types::Text)]
        t: String,
    }
    diesel::sql_query(sql)
        .load::<Text>(&mut connect(db)?)
        .map(|rows| rows.into_iter().map(|r| r.t).collect())
        .map_err(|e| e.to_string())
}

fn floats(db: &str, sql: &str) -> Result<Vec<f64>, String> {
    #[derive(diesel::QueryableByName)]
    struct Float {
        #[diesel(sql_type = diesel::sql_types::Double)]
        v: f64,
    }
    diesel::sql_query(sql)
        .load::<Float>(&mut connect(db)?)
        .map(|rows| rows.into_iter().map(|r| r.v).collect())
        .map_err(|e| e.to_string())
}

fn float(db: &str, sql: &str) -> Result<Option<f64>, String> {
    #[derive(diesel::QueryableByName)]
    struct Float {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
        v: Option<f64>,
    }
    diesel::sql_query(sql)
        .get_result::<Float>(&mut connect(db)?)
        .map(|f| f.v)
        .map_err(|e| e.to_string())
}
