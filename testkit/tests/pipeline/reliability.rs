use std::time::Duration;

use shomei_testkit::services::{self, Redis};
use shomei_testkit::validate::{assert_externally_valid, embedded_signatures, Expected};
use shomei_testkit::{sample, TestApp, TestAppOptions};
use tokio::task::block_in_place;

use crate::JOB_TIMEOUT;

/// Uploads `n` documents and queues one signature on each; returns (document, job) ids.
async fn queue_batch(app: &TestApp, n: usize) -> Vec<(String, String)> {
    let mut batch = Vec::with_capacity(n);
    for i in 0..n {
        let document = app.upload_ok(sample("contract.pdf")).await;
        let job = app.sign_ok(&document, &format!("Signer {i}")).await;
        batch.push((document, job));
    }
    batch
}

/// Every job succeeded and every document carries exactly one signature.
async fn assert_each_signed_once(app: &TestApp, batch: &[(String, String)]) {
    for (document, job) in batch {
        let state = app.wait_for_job(job, JOB_TIMEOUT).await;
        assert_eq!(state["status"], "succeeded", "{state}");
        let pdf = app.download(document).await;
        assert_eq!(
            embedded_signatures(&pdf).len(),
            1,
            "document {document} must carry one signature"
        );
    }
    let revisions =
        app.sql_count("SELECT count(*) AS n FROM document_revisions WHERE revision > 0");
    assert_eq!(
        revisions,
        batch.len() as i64,
        "one signed revision per document, no duplicates"
    );
    let (document, _) = &batch[0];
    assert_externally_valid(
        "e2e-batch",
        &app.download(document).await,
        Expected::timestamped(1),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_batch_leaves_every_document_signed_exactly_once() {
    const BATCH: i64 = 100;
    let mut app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        concurrency: 2,
        ..Default::default()
    })
    .await;
    let batch = queue_batch(&app, BATCH as usize).await;
    app.start_worker();
    app.start_worker();

    // Kill while the batch is being worked through, not before it starts or after it ends.
    let done =
        |app: &TestApp| app.sql_count("SELECT count(*) AS n FROM jobs WHERE status = 'succeeded'");
    while done(&app) < 5 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.kill_worker(0);
    assert!(
        done(&app) < BATCH,
        "the batch finished before the kill; make it larger"
    );
    app.start_worker();

    assert_each_signed_once(&app, &batch).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_queued_before_redis_is_flushed_still_complete() {
    // A Redis database of its own: FLUSHDB must not touch the other tests' queues.
    let mut app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        redis_db: 9,
        ..Default::default()
    })
    .await;
    let batch = queue_batch(&app, 10).await;

    let mut redis = app.redis().await;
    let before: i64 = redis::cmd("DBSIZE").query_async(&mut redis).await.unwrap();
    assert!(before > 0, "the jobs were pushed to Redis");
    let () = redis::cmd("FLUSHDB").query_async(&mut redis).await.unwrap();
    let after: i64 = redis::cmd("DBSIZE").query_async(&mut redis).await.unwrap();
    assert_eq!(after, 0, "Redis lost everything");

    app.start_worker();
    assert_each_signed_once(&app, &batch).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanently_failing_job_fails_once_with_its_reason() {
    let options = TestAppOptions {
        worker_env: vec![("SHOMEI_HSM_KEY_LABEL".into(), "no-such-key".into())],
        ..Default::default()
    };
    let app = TestApp::spawn_with(options).await;
    let document = app.upload_ok(sample("contract.pdf")).await;
    let job = app.sign_ok(&document, "Taro Suzuki").await;

    let state = app.wait_for_job(&job, JOB_TIMEOUT).await;
    assert_eq!(state["status"], "failed", "{state}");
    assert_eq!(
        state["attempts"], 1,
        "a permanent error is not retried: {state}"
    );
    assert!(
        state["error"].as_str().unwrap().contains("no-such-key"),
        "{state}"
    );
    // Still failed, still one attempt, a while later: nothing re-ran it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = app.wait_for_job(&job, JOB_TIMEOUT).await;
    assert_eq!(later["attempts"], 1, "{later}");
    assert_eq!(app.download(&document).await, sample("contract.pdf"));
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_forgets_jobs_once_they_are_finished() {
    let app = TestApp::spawn().await;
    let batch = queue_batch(&app, 5).await;
    assert_each_signed_once(&app, &batch).await;

    let mut redis = app.redis().await;
    let key = app.queue_key("sign:data");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let held: i64 = redis::cmd("HLEN")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        if held == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{held} finished tasks still in {key}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_larger_than_a_redis_script_can_unpack_still_drains() {
    // apalis-redis puts every pushed task in the queue's scheduled set, and each fetch moved all
    // the due ones to the active list in one Lua call, which unpacks at most 7,999 values: with
    // more queued than that before a worker fetched (workers down, a burst of submissions),
    // every fetch failed and the queue stood still for good (`vendor/apalis-redis`).
    const BACKLOG: usize = 8_200;
    let mut app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..Default::default()
    })
    .await;
    let document = app.upload_ok(sample("contract.pdf")).await;
    let config =
        shomei_config::Config::from_lookup(|name| app.env_var(name).map(String::from)).unwrap();
    let queue = shomei_jobs::Queue::connect(&config).await.unwrap();
    // Ids with no job row behind them: a worker acknowledges each as a duplicate delivery.
    let ids: Vec<uuid::Uuid> = (0..BACKLOG).map(|_| uuid::Uuid::now_v7()).collect();
    for chunk in ids.chunks(200) {
        let pushes = chunk
            .iter()
            .map(|id| queue.push(shomei_schema::JobKind::Sign, *id));
        for pushed in futures::future::join_all(pushes).await {
            pushed.unwrap();
        }
    }
    let job = app.sign_ok(&document, "Taro Suzuki").await;
    let mut redis = app.redis().await;
    let scheduled = app.queue_key("sign:scheduled");
    let waiting: usize = redis::cmd("ZCARD")
        .arg(&scheduled)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(waiting, BACKLOG + 1, "every push waits in {scheduled}");

    let scans_before = list_removals(&mut redis).await;
    app.start_worker();
    let done = app.wait_for_job(&job, Duration::from_secs(180)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let waiting: usize = redis::cmd("ZCARD")
        .arg(&scheduled)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(waiting, 0);
    // Nor does a worker's lease on each task it runs scan the backlog behind it: apalis-redis
    // removed the task from the active list with an `LREM` (a walk of the whole list, found
    // nothing: the fetch had taken it off already), once per task (`vendor/apalis-redis`). No
    // code of the pipeline's sends an `LREM` now, whatever the other tests run meanwhile.
    assert_eq!(
        list_removals(&mut redis).await,
        scans_before,
        "LREM calls while the worker drained the backlog"
    );
}

/// `LREM` calls Redis has served since it started (`INFO commandstats`).
async fn list_removals(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .unwrap();
    stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_lrem:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |calls| calls.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn documents_larger_than_the_workers_pdf_budget_are_signed_one_at_a_time() {
    // A budget smaller than any contract: every job must wait for all of it, and get it.
    let app = TestApp::spawn_with(TestAppOptions {
        concurrency: 4,
        worker_env: vec![("SHOMEI_WORKER_PDF_BYTES".into(), "1024".into())],
        ..TestAppOptions::default()
    })
    .await;
    let batch = queue_batch(&app, 4).await;
    assert_each_signed_once(&app, &batch).await;
}

/// The reconciler's mark of the jobs it found in Redis (`Job::mark_enqueued`) skips rows a
/// worker holds locked instead of waiting for them: waiting, it locked its rows in its own
/// order against a worker's record group locking them in another, and PostgreSQL aborted one
/// of the two as a deadlock (seen in a load test's log).
#[tokio::test]
async fn the_reconcilers_mark_skips_jobs_a_worker_holds_instead_of_waiting() {
    use diesel::{Connection, PgConnection, RunQueryDsl};
    use shomei_schema::{Job, JobKind, NewJob};

    let app = TestApp::spawn_with(TestAppOptions {
        workers: 0,
        ..TestAppOptions::default()
    })
    .await;
    let url = app.database_url();
    tokio::task::spawn_blocking(move || {
        let mut worker = PgConnection::establish(&url).unwrap();
        let mut reconciler = PgConnection::establish(&url).unwrap();
        let tenant = uuid::Uuid::now_v7();
        diesel::sql_query(format!(
            "INSERT INTO tenants (id, name) VALUES ('{tenant}', 'reconciler locks')"
        ))
        .execute(&mut worker)
        .unwrap();
        let jobs: Vec<NewJob> = (0..2)
            .map(|_| NewJob {
                id: uuid::Uuid::now_v7(),
                tenant_id: tenant,
                kind: JobKind::Sign.as_str(),
                payload: serde_json::json!({}),
                ..NewJob::default()
            })
            .collect();
        Job::insert_all(&mut worker, &jobs).unwrap();
        let (held, free) = (jobs[0].id, jobs[1].id);
        let enqueued_at =
            |conn: &mut PgConnection, id| Job::find(conn, tenant, id).unwrap().unwrap().enqueued_at;
        let before = enqueued_at(&mut reconciler, held);
        // Waiting for the lock would fail here rather than hang the test.
        diesel::sql_query("SET lock_timeout = '5s'")
            .execute(&mut reconciler)
            .unwrap();

        // The worker holds the first job's row, as a record group does until its commit.
        worker
            .transaction(|worker| {
                diesel::sql_query(format!("UPDATE jobs SET attempts = 1 WHERE id = '{held}'"))
                    .execute(worker)?;
                let marked = Job::mark_enqueued(&mut reconciler, &[held, free]).unwrap();
                assert_eq!(marked, 1, "only the job no worker holds is marked");
                diesel::QueryResult::Ok(())
            })
            .unwrap();
        assert!(
            enqueued_at(&mut reconciler, free) > before,
            "the free job is marked"
        );
        assert_eq!(
            enqueued_at(&mut reconciler, held),
            before,
            "the held job keeps its old mark"
        );
        // Once the worker let go, the next pass marks it.
        assert_eq!(Job::mark_enqueued(&mut reconciler, &[held]).unwrap(), 1);
        assert!(enqueued_at(&mut reconciler, held) > before);
    })
    .await
    .unwrap();
}

/// Waits (a minute at most) for the first worker's log to hold `line`.
async fn wait_for_worker_log(app: &TestApp, line: &str) {
    let path = app.log_dir().join("worker-0.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&path)
        .unwrap_or_default()
        .contains(line)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never logged {line:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_worker_is_woken_by_the_announced_push_not_by_its_poll() {
    // A Redis of its own: the test cuts its subscriptions.
    let redis = block_in_place(|| Redis::start(&services::scratch("announced-pushes")));
    // The worker's poll and heartbeat ten minutes apart: within the test, only an announced
    // push (or the wake-up of a new subscription) can make it fetch.
    let app = TestApp::spawn_with(TestAppOptions {
        redis_url: Some(redis.url()),
        worker_env: vec![
            ("SHOMEI_WORKER_POLL_MS".into(), "600000".into()),
            ("SHOMEI_HEARTBEAT_SECS".into(), "600".into()),
        ],
        ..Default::default()
    })
    .await;
    let sign = |document: String| {
        let app = &app;
        async move {
            let job = app
                .wait_for_job(&app.sign_ok(&document, "Taro Suzuki").await, JOB_TIMEOUT)
                .await;
            assert_eq!(job["status"], "succeeded", "{job}");
        }
    };
    let first = app.upload_ok(sample("contract.pdf")).await;
    let second = app.upload_ok(sample("contract.pdf")).await;
    // Idle: its fetches at start-up found nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sign(first).await;

    // The subscription is cut (as a Redis restart would): the worker says so and subscribes
    // again within a second or so, and is woken by the next push again.
    let mut conn = app.redis().await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(killed >= 1, "the worker had subscribed");
    wait_for_worker_log(&app, "listening to announced pushes again").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    sign(second).await;
}
