//! Faults survived with nothing lost (R-OPS-5), the pipeline's side: a run past its timeout is
//! cancelled and retried, a job left `running` by a worker that vanished is swept back, a dead
//! letter is retried by hand, the API answers `503` while PostgreSQL is unreachable and records
//! nothing it cannot, SIGTERM stops a worker and the API cleanly, a sign job run again after
//! its revision was recorded signs nothing twice, and the workers' HSM gone for a while (or its
//! sessions reset) holds signing up without failing it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use shomei_testkit::validate::{assert_externally_valid, embedded_signatures, Expected};
use shomei_testkit::{sample, TestApp, TestAppOptions};

use crate::{assert_problem, JOB_TIMEOUT};

/// The value of a worker's metric sample whose line starts with `series` (0 when absent).
async fn worker_metric(app: &TestApp, index: usize, series: &str) -> f64 {
    let text = reqwest::get(app.worker_metrics_url(index))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Forgets every Redis key of the app's queues, as a Redis that restarted empty would.
async fn empty_the_queues(app: &TestApp) {
    let mut redis = app.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(app.queue_key("*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    if !keys.is_empty() {
        let () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
}

fn count(app: &TestApp, query: &str) -> i64 {
    app.sql_count(query)
}

/// One signed revision and one embedded signature.
async fn assert_signed_once(app: &TestApp, document: &str) {
    assert_eq!(
        count(
            app,
            &format!(
                "SELECT count(*) AS n FROM document_revisions \
                 WHERE document_id = '{document}' AND revision > 0"
            )
        ),
        1,
        "one signed revision of {document}"
    );
    assert_eq!(
        embedded_signatures(&app.download(document).await).len(),
        1,
        "one signature in {document}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_past_its_timeout_is_cancelled_and_the_job_retried() {
    // A TSA, tried first, that takes connections and never answers them (the client would
    // wait its full 120 s) until told to hang up on every new one (the client then moves on
    // to the app's own TSA at once).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging = format!("http://{}/", listener.local_addr().unwrap());
    let hang = Arc::new(AtomicBool::new(true));
    let accepted = Arc::new(AtomicUsize::new(0));
    let server = tokio::spawn({
        let (hang, accepted) = (hang.clone(), accepted.clone());
        async move {
            let mut held = Vec::new();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                if hang.load(Ordering::SeqCst) {
                    held.push(stream);
                }
            }
        }
    });
    let app = TestApp::spawn_with(TestAppOptions {
        tsa_urls_before: vec![hanging],
        env: vec![("SHOMEI_TSA_TIMEOUT_SECS".into(), "120".into())],
        worker_env: vec![("SHOMEI_JOB_TIMEOUTS".into(), "sign=5s".into())],
        ..Default::default()
    })
    .await;
    let document = app.upload_ok(sample("contract.pdf")).await;
    let job = app.sign_ok(&document, "Taro Suzuki").await;

    // The first run waits on the TSA until the job's timeout cuts it off.
    let deadline = Instant::now() + JOB_TIMEOUT;
    let error = loop {
        let error = app.sql_text(&format!("SELECT error AS t FROM jobs WHERE id = '{job}'"));
        if let Some(error) = error.filter(|e| e.contains("timeout")) {
            break error;
        }
        assert!(Instant::now() < deadline, "no run timed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        error.contains("sign job timeout of 5 s") && error.contains("cancelled"),
        "{error}"
    );
    hang.store(false, Ordering::SeqCst);

    let state = app.wait_for_job(&job, JOB_TIMEOUT).await;
    assert_eq!(state["status"], "succeeded", "{state}");
    assert!(
        state["attempts"].as_i64().unwrap() >= 2,
        "the first run hung on the TSA and was cut off: {state}"
    );
    assert!(
        accepted.load(Ordering::SeqCst) >= 2,
        "the hanging TSA was tried again"
    );
    assert!(
        worker_metric(
            &app,
            0,
            r#"shomei_job_failures_total{kind="sign",reason="timeout"}"#
        )
        .await
            >= 1.0,
        "the cancelled run is counted as a timeout"
    );
    // The cancelled run recorded nothing: one signature, from the run that finished.
    assert_signed_once(&app, &document).await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_left_running_by_a_vanished_worker_is_swept_back_and_finished_or_failed() {
    let mut app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..Default::default()
    })
    .await;
    let revived_doc = app.upload_ok(sample("contract.pdf")).await;
    let revived = app.sign_ok(&revived_doc, "Taro Suzuki").await;
    let spent_doc = app.upload_ok(sample("contract.pdf")).await;
    let spent = app.sign_ok(&spent_doc, "Hanako Yamada").await;
    // A worker took both an hour ago and died with them; Redis has since lost everything.
    // `spent` was on its last attempt (SHOMEI_JOB_MAX_ATTEMPTS is 5 in tests).
    empty_the_queues(&app).await;
    for (job, attempts) in [(&revived, 1), (&spent, 5)] {
        app.sql_execute(&format!(
            "UPDATE jobs SET status = 'running', attempts = {attempts}, \
             started_at = now() - interval '1 hour' WHERE id = '{job}'"
        ));
    }

    app.start_worker();
    let state = app.wait_for_job(&revived, JOB_TIMEOUT).await;
    assert_eq!(state["status"], "succeeded", "{state}");
    assert_eq!(state["attempts"], 2, "the lost run counted: {state}");
    assert_signed_once(&app, &revived_doc).await;

    let state = app.wait_for_job(&spent, JOB_TIMEOUT).await;
    assert_eq!(state["status"], "failed", "{state}");
    assert_eq!(state["attempts"], 5, "not run again: {state}");
    let error = state["error"].as_str().unwrap();
    assert!(
        error.contains("gave up after 5 attempts") && error.contains("never finished"),
        "the sweeper's reason: {error}"
    );
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT count(*) AS n FROM events \
                 WHERE kind = 'job.failed' AND data->>'job_id' = '{spent}'"
            )
        ),
        1
    );
    assert_eq!(app.download(&spent_doc).await, sample("contract.pdf"));
    for (outcome, n) in [("requeued", 1.0), ("failed", 1.0)] {
        let series = format!(r#"shomei_jobs_swept_total{{kind="sign",outcome="{outcome}"}}"#);
        assert_eq!(worker_metric(&app, 0, &series).await, n, "{series}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_is_listed_and_retried_by_an_owner_or_admin_once_its_cause_is_fixed() {
    let mut app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..Default::default()
    })
    .await;
    let mut jobs = vec![];
    for signer in ["Taro Suzuki", "Hanako Yamada"] {
        let document = app.upload_ok(sample("contract.pdf")).await;
        jobs.push((document.clone(), app.sign_ok(&document, signer).await));
    }
    // A worker whose signing key is missing fails both for good.
    let broken = app.start_worker_with(&[("SHOMEI_HSM_KEY_LABEL", "no-such-key")]);
    for (_, job) in &jobs {
        let state = app.wait_for_job(job, JOB_TIMEOUT).await;
        assert_eq!(state["status"], "failed", "{state}");
    }
    app.kill_worker(broken);
    let admin = app.create_key("admin").await;
    let viewer = app.create_key("viewer").await;
    let page: Value = list(&app, &admin, "").await.json().await.unwrap();
    let ids: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [jobs[0].1.as_str(), jobs[1].1.as_str()], "{page}");
    assert!(page["jobs"][0]["error"]
        .as_str()
        .unwrap()
        .contains("no-such-key"));
    assert_eq!(page["next_after"], Value::Null);
    // Page by page.
    let first: Value = list(&app, &app.api_key, "?limit=1&kind=sign")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(first["jobs"][0]["id"], jobs[0].1.as_str());
    let after = first["next_after"].as_str().unwrap().to_owned();
    let second: Value = app
        .get(
            &app.api_key,
            &format!("/v1/jobs/dead?limit=1&after={after}"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["jobs"][0]["id"], jobs[1].1.as_str());
    let other_kind: Value = list(&app, &admin, "?kind=verify")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(other_kind["jobs"], serde_json::json!([]));
    assert_problem(list(&app, &admin, "?kind=bogus").await, 400).await;
    assert_problem(list(&app, &admin, "?limit=0").await, 400).await;
    assert_problem(list(&app, &viewer, "").await, 403).await;

    // The key is fixed (a healthy worker); the admin retries the first job, twice.
    let (document, job) = &jobs[0];
    assert_problem(retry(&app, &viewer, job).await, 403).await;
    for _ in 0..2 {
        let response = retry(&app, &admin, job).await;
        assert_eq!(TestApp::accepted_job(response).await, *job);
    }
    let state: Value = app
        .get(&app.api_key, &format!("/v1/jobs/{job}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(state["status"], "queued", "{state}");
    assert_eq!(state["attempts"], 0, "{state}");
    assert_eq!(state["error"], Value::Null, "{state}");
    let retried = count(
        &app,
        &format!(
            "SELECT count(*) AS n FROM events \
             WHERE kind = 'job.retried' AND data->>'job_id' = '{job}' AND actor LIKE 'api_key:%'"
        ),
    );
    assert_eq!(retried, 1, "one retry recorded, the repeat changed nothing");
    let still_dead: Value = list(&app, &admin, "").await.json().await.unwrap();
    assert_eq!(still_dead["jobs"].as_array().unwrap().len(), 1);

    app.start_worker();
    let state = app.wait_for_job(job, JOB_TIMEOUT).await;
    assert_eq!(state["status"], "succeeded", "{state}");
    assert_eq!(state["attempts"], 1, "{state}");
    assert_signed_once(&app, document).await;

    // Nothing to retry on a job that succeeded, an unknown one, or another tenant's.
    assert_problem(retry(&app, &admin, job).await, 409).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_problem(retry(&app, &admin, &unknown).await, 404).await;
    let stranger = app.create_tenant("Stranger KK").await;
    assert_problem(retry(&app, &stranger, &jobs[1].1).await, 404).await;
    let theirs: Value = list(&app, &stranger, "").await.json().await.unwrap();
    assert_eq!(theirs["jobs"], serde_json::json!([]));
}

async fn list(app: &TestApp, key: &str, query: &str) -> reqwest::Response {
    app.get(key, &format!("/v1/jobs/dead{query}")).await
}

async fn retry(app: &TestApp, key: &str, job: &str) -> reqwest::Response {
    app.client()
        .post(app.url(&format!("/v1/jobs/{job}/retry")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

/// A request that must not hang while the database is away (the pool gives up after 5 s).
async fn within(
    what: &str,
    request: impl std::future::Future<Output = reqwest::Response>,
) -> reqwest::Response {
    tokio::time::timeout(Duration::from_secs(30), request)
        .await
        .unwrap_or_else(|_| panic!("{what} hung while the database was unreachable"))
}

async fn assert_unavailable(response: reqwest::Response) {
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned())
        .expect("Retry-After on a 503");
    assert!(retry_after.parse::<u32>().is_ok(), "{retry_after}");
    let problem = assert_problem(response, 503).await;
    assert!(
        problem["detail"].as_str().unwrap().contains("database"),
        "{problem}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn while_postgresql_is_unreachable_the_api_answers_503_and_accepts_nothing_then_recovers() {
    let app = TestApp::spawn().await;
    let signed = app.signed_document().await;
    let jobs_before = count(&app, "SELECT count(*) AS n FROM jobs");
    let documents_before = count(&app, "SELECT count(*) AS n FROM documents");

    app.cut_database();
    let upload = within(
        "an upload",
        app.upload(&app.api_key, sample("contract.pdf"), Some("Outage")),
    )
    .await;
    assert_unavailable(upload).await;
    let body = serde_json::json!({"signer": {"name": "Taro Suzuki"}});
    assert_unavailable(within("a sign request", app.sign(&app.api_key, &signed, &body)).await)
        .await;
    assert_unavailable(within("a job's state", app.get(&app.api_key, "/v1/jobs/dead")).await).await;
    let ready = within("readiness", async {
        app.client().get(app.url("/readyz")).send().await.unwrap()
    })
    .await;
    assert_eq!(ready.status(), 503);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["postgresql"]["status"], "down", "{ready}");
    let live = app.client().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(live.status(), 200, "the process itself is alive");

    // Back: the same API process (and worker) serve again, with nothing from the outage.
    app.restore_database();
    let deadline = Instant::now() + Duration::from_secs(60);
    let document = loop {
        let response = app
            .upload(&app.api_key, sample("contract.pdf"), Some("After"))
            .await;
        if response.status() == 201 {
            break response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the API did not recover: {}",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(count(&app, "SELECT count(*) AS n FROM jobs"), jobs_before);
    assert_eq!(
        count(&app, "SELECT count(*) AS n FROM documents"),
        documents_before + 1,
        "only the upload made after the outage"
    );
    let job = app.sign_ok(&document, "Hanako Yamada").await;
    let state = app.wait_for_job(&job, JOB_TIMEOUT).await;
    assert_eq!(state["status"], "succeeded", "{state}");
    let ready = app.client().get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_a_worker_taking_jobs_and_lets_it_finish_those_it_runs() {
    const BATCH: i64 = 40;
    let mut app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        concurrency: 2,
        ..Default::default()
    })
    .await;
    let mut batch = vec![];
    for i in 0..BATCH {
        let document = app.upload_ok(sample("contract.pdf")).await;
        batch.push((
            document.clone(),
            app.sign_ok(&document, &format!("Signer {i}")).await,
        ));
    }
    let worker = app.start_worker();
    let done = |app: &TestApp| {
        count(
            app,
            "SELECT count(*) AS n FROM jobs WHERE status = 'succeeded'",
        )
    };
    while done(&app) < 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.terminate_worker(worker);
    // The worker's shutdown grace is 30 s; a sign job takes well under that.
    let status = app
        .wait_worker_exit(worker, Duration::from_secs(60))
        .await
        .expect("the worker exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS n FROM jobs WHERE status = 'running'"
        ),
        0,
        "every run it had started was finished before it exited"
    );
    assert!(
        done(&app) < BATCH,
        "the worker stopped taking jobs (or the batch was too small to tell)"
    );
    let log = std::fs::read_to_string(app.log_dir().join(format!("worker-{worker}.log"))).unwrap();
    assert!(log.contains("shutdown requested") && log.contains("worker shut down"));

    // Another worker takes the rest; every document is signed exactly once.
    app.start_worker();
    for (document, job) in &batch {
        let state = app.wait_for_job(job, JOB_TIMEOUT).await;
        assert_eq!(state["status"], "succeeded", "{state}");
        assert_eq!(
            embedded_signatures(&app.download(document).await).len(),
            1,
            "{document}"
        );
    }
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS n FROM document_revisions WHERE revision > 0"
        ),
        BATCH
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_api_finish_an_open_request_refuse_new_ones_and_exit_cleanly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..Default::default()
    })
    .await;
    let pdf = sample("contract.pdf");
    let addr = app.api_addr().to_owned();
    // An upload whose body arrives in two halves, SIGTERM in between.
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/documents?title=Slow HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/pdf\r\nContent-Length: {}\r\n\r\n",
        app.api_key,
        pdf.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (first, rest) = pdf.split_at(pdf.len() / 2);
    stream.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    app.terminate_api();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the API still accepts connections after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    stream.write_all(rest).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 201"),
        "the open upload was finished: {response}"
    );
    let status = app
        .wait_api_exit(Duration::from_secs(45))
        .await
        .expect("the API exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert_eq!(count(&app, "SELECT count(*) AS n FROM documents"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_job_run_again_after_its_revision_was_recorded_signs_nothing_twice() {
    let app = TestApp::spawn().await;
    let document = app.upload_ok(sample("contract.pdf")).await;
    let job = app.sign_ok(&document, "Taro Suzuki").await;
    let first = app.wait_for_job(&job, JOB_TIMEOUT).await;
    assert_eq!(first["status"], "succeeded", "{first}");

    // As if its worker died after the revision's transaction, before marking the job done:
    // the row still says running, and Redis has no task left to deliver (finished tasks are
    // pruned), so the reconciler pushes it again.
    app.sql_execute(&format!(
        "UPDATE jobs SET status = 'running', result = NULL, finished_at = NULL WHERE id = '{job}'"
    ));
    let again = app.wait_for_job(&job, JOB_TIMEOUT).await;
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["attempts"], 2, "it ran again: {again}");
    assert_eq!(
        again["result"], first["result"],
        "the run reported the revision already made"
    );
    assert_signed_once(&app, &document).await;
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT count(*) AS n FROM events \
                 WHERE kind = 'document.signed' AND document_id = '{document}'"
            )
        ),
        1,
        "one document.signed event"
    );
}

/// The worker's log so far.
fn worker_log(app: &TestApp, index: usize) -> String {
    std::fs::read_to_string(app.log_dir().join(format!("worker-{index}.log"))).unwrap()
}

/// A job's row: status, attempts, last error.
fn job_row(app: &TestApp, job: &str) -> (String, i64, Option<String>) {
    let text = |column: &str| {
        app.sql_text(&format!(
            "SELECT {column}::text AS t FROM jobs WHERE id = '{job}'"
        ))
    };
    (
        text("status").unwrap(),
        text("attempts").unwrap().parse().unwrap(),
        text("error"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sign_job_while_the_workers_hsm_is_gone_is_retried_and_signed_once_it_is_back() {
    let app = TestApp::spawn_with(TestAppOptions {
        worker_hsm_fault: true,
        // Room for the attempts made while the HSM is gone, whatever the machine's pace.
        env: vec![("SHOMEI_JOB_MAX_ATTEMPTS".into(), "20".into())],
        ..Default::default()
    })
    .await;
    // Through the fault-injection module, healthy: signing as ever.
    app.signed_document().await;

    app.worker_hsm().down();
    let document = app.upload_ok(sample("contract.pdf")).await;
    let job = app.sign_ok(&document, "Hanako Yamada").await;
    // Held until it failed on the missing HSM and was taken up again, the HSM still gone.
    let deadline = Instant::now() + JOB_TIMEOUT;
    let (status, attempts, error) = loop {
        let row = job_row(&app, &job);
        if row.1 >= 2 && row.2.is_some() {
            break row;
        }
        assert_ne!(row.0, "failed", "{row:?}");
        assert!(Instant::now() < deadline, "no attempt failed: {row:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        matches!(status.as_str(), "queued" | "running"),
        "retried, not failed: {status} after {attempts} attempts"
    );
    let error = error.unwrap();
    assert!(
        error.contains("not present") || error.contains("removed"),
        "the failed attempt names the missing token: {error}"
    );
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) AS n FROM document_revisions WHERE document_id = '{document}' AND revision > 0")
        ),
        0,
        "nothing signed while the HSM is gone"
    );

    // Back, after a reset: the sessions from before are invalid, the login is gone.
    app.worker_hsm().up();
    let state = app.wait_for_job(&job, JOB_TIMEOUT).await;
    assert_eq!(state["status"], "succeeded", "{state}");
    assert_signed_once(&app, &document).await;
    assert_externally_valid(
        "hsm-outage",
        &app.download(&document).await,
        Expected::timestamped(1),
    );
    // The worker noticed the device gone, counted the failures and initialised the module again
    // (which also drops every session of the old initialisation from the pool).
    assert!(
        worker_metric(&app, 0, "shomei_hsm_errors_total").await >= 1.0,
        "HSM failures counted"
    );
    let log = worker_log(&app, 0);
    assert!(
        log.contains("HSM still unreachable") && log.contains("reconnected to HSM"),
        "the module was initialised again once the HSM was back:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reset_of_the_workers_hsm_sessions_alone_is_survived_without_reinitialising() {
    let app = TestApp::spawn_with(TestAppOptions {
        worker_hsm_fault: true,
        ..Default::default()
    })
    .await;
    app.signed_document().await;

    // The sessions the pool holds are invalid from now on, and the login with them.
    app.worker_hsm().reset_sessions();
    let document = app.upload_ok(sample("contract.pdf")).await;
    let job = app.sign_ok(&document, "Hanako Yamada").await;
    let state = app.wait_for_job(&job, JOB_TIMEOUT).await;
    assert_eq!(state["status"], "succeeded", "{state}");
    // The pool tests a session when it hands it out, so a stale one never reaches a job: it is
    // refused there and closed, and a fresh one opened and logged in. What the reset may cost
    // is the signing key's handle, which SoftHSM2 lets go of with the login: the cached
    // identity fails once (CKR_OBJECT_HANDLE_INVALID), is forgotten, and the retry looks it up
    // again.
    assert!(
        state["attempts"].as_i64().unwrap() <= 2,
        "at most one retry: {state}"
    );
    assert_signed_once(&app, &document).await;
    assert_externally_valid(
        "hsm-session-reset",
        &app.download(&document).await,
        Expected::timestamped(1),
    );
    let log = worker_log(&app, 0);
    assert!(
        log.contains("session handle was invalid"),
        "the stale sessions were refused at check-out:\n{log}"
    );
    assert!(
        !log.contains("discarding HSM session"),
        "no operation ran on a stale session:\n{log}"
    );
    assert!(
        !log.contains("reconnected to HSM"),
        "a session error alone does not initialise the module again:\n{log}"
    );
}
