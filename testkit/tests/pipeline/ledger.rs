//! Tamper-evident logs end to end (R-LOG-1): real activity is sealed into hash chains and
//! time-stamped by the workers; `shomei-api log verify` passes the chains, then names the entry
//! that SQL edited, slipped in or removed, and catches a chain rebuilt with every hash
//! recomputed through its anchors. Hashes are recomputed here by a second implementation of the
//! documented encoding, in SQL with PostgreSQL's own `sha256()`, sharing no code with Shomei.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use shomei_testkit::webhook_receiver::WebhookReceiver;
use shomei_testkit::{sample, TestApp, TestAppOptions};

use crate::JOB_TIMEOUT;

/// Sealing runs every second and anchoring (here) too; this is for a loaded debug build.
const SEAL_TIMEOUT: Duration = Duration::from_secs(60);

fn options(workers: usize) -> TestAppOptions {
    TestAppOptions {
        workers,
        env: vec![
            ("SHOMEI_LOG_ANCHOR_SECS".into(), "1".into()),
            ("SHOMEI_OPERATOR".into(), "test-operator".into()),
        ],
        ..TestAppOptions::default()
    }
}

/// The encoding of jobs/src/ledger.rs, written again from its documentation.
const ENCODING_SQL: [&str; 7] = [
    r"CREATE FUNCTION t_field(b bytea) RETURNS bytea LANGUAGE sql IMMUTABLE AS
      $$ SELECT CASE WHEN b IS NULL THEN '\x00'::bytea ELSE '\x01'::bytea || int4send(length(b)) || b END $$",
    r"CREATE FUNCTION t_text(t text) RETURNS bytea LANGUAGE sql IMMUTABLE AS
      $$ SELECT t_field(convert_to(t, 'UTF8')) $$",
    r"CREATE FUNCTION t_uuid(u uuid) RETURNS bytea LANGUAGE sql IMMUTABLE AS
      $$ SELECT t_field(uuid_send(u)) $$",
    r"CREATE FUNCTION t_time(t timestamptz) RETURNS bytea LANGUAGE sql IMMUTABLE AS
      $$ SELECT t_field(int8send((extract(epoch FROM t) * 1000000)::bigint)) $$",
    r"CREATE FUNCTION t_event_hash(e events) RETURNS bytea LANGUAGE sql AS
      $$ SELECT sha256(e.prev_hash || t_text('shomei-log-v1') || t_text('events')
           || t_uuid(e.id) || t_uuid(e.tenant_id) || t_text(e.kind) || t_uuid(e.document_id)
           || t_uuid(e.request_id) || t_text(e.actor) || t_text(e.ip) || t_text(e.data::text)
           || t_time(e.created_at)) $$",
    r"CREATE FUNCTION t_deletion_hash(d deletion_log) RETURNS bytea LANGUAGE sql AS
      $$ SELECT sha256(d.prev_hash || t_text('shomei-log-v1') || t_text('deletions')
           || t_uuid(d.id) || t_uuid(d.tenant_id) || t_uuid(d.document_id)
           || t_text(d.object_kind) || t_text(d.object_id) || t_field(d.ciphertext_sha256)
           || t_field(int8send(d.size_bytes)) || t_text(d.reason) || t_text(d.actor)
           || t_uuid(d.job_id) || t_time(d.deleted_at)) $$",
    r"CREATE FUNCTION t_operator_hash(o operator_actions) RETURNS bytea LANGUAGE sql AS
      $$ SELECT sha256(o.prev_hash || t_text('shomei-log-v1') || t_text('operator')
           || t_uuid(o.id) || t_text(o.actor) || t_text(o.action) || t_text(o.target)
           || t_text(o.detail::text) || t_time(o.created_at)) $$",
];

fn create_encoding_functions(app: &TestApp) {
    for statement in ENCODING_SQL {
        app.sql_execute(statement);
    }
}

/// Waits until every row of `table` is sealed and the chain's head is time-stamped.
async fn wait_sealed_and_anchored(app: &TestApp, table: &str, log: &str) {
    let deadline = Instant::now() + SEAL_TIMEOUT;
    loop {
        let unsealed = app.sql_count(&format!(
            "SELECT count(*) AS n FROM {table} WHERE seq IS NULL"
        ));
        let head = app.sql_count(&format!("SELECT coalesce(max(seq), 0) AS n FROM {table}"));
        let anchored = app.sql_count(&format!(
            "SELECT coalesce(max(seq), 0) AS n FROM log_anchors WHERE log = '{log}'"
        ));
        if unsealed == 0 && head > 0 && anchored == head {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{table}: {unsealed} unsealed, head {head}, anchored up to {anchored}; see {}",
            app.log_dir().display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The operator log's head moves with every anchor record; it is anchored once everything but
/// those records is.
async fn wait_operator_anchored(app: &TestApp) {
    let deadline = Instant::now() + SEAL_TIMEOUT;
    loop {
        let unsealed =
            app.sql_count("SELECT count(*) AS n FROM operator_actions WHERE seq IS NULL");
        let last = app.sql_count(
            "SELECT coalesce(max(seq), 0) AS n FROM operator_actions WHERE action <> 'log.anchor'",
        );
        let anchored = app
            .sql_count("SELECT coalesce(max(seq), 0) AS n FROM log_anchors WHERE log = 'operator'");
        if unsealed == 0 && last > 0 && anchored >= last {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "operator: {unsealed} unsealed, last action {last}, anchored up to {anchored}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `shomei-api log verify --json [--log LOG]`: whether it exited successfully, and the reports.
fn verify(app: &TestApp, log: Option<&str>) -> (bool, Value) {
    let mut args = vec!["log", "verify", "--json"];
    if let Some(log) = log {
        args.extend(["--log", log]);
    }
    let out = app.cli_output(&args);
    let reports = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "log verify printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), reports)
}

/// Asserts the log verifies; returns its report.
fn assert_verifies(app: &TestApp, log: &str) -> Value {
    let (ok, reports) = verify(app, Some(log));
    assert!(ok && reports[0]["ok"] == true, "{reports:#}");
    reports[0].clone()
}

/// Asserts the log fails verification; returns the problem named: (kind, seq, entry id).
fn problem(app: &TestApp, log: &str) -> (String, i64, Option<String>) {
    let (ok, reports) = verify(app, Some(log));
    assert!(!ok, "verification must fail (exit status): {reports:#}");
    let problem = &reports[0]["problem"];
    assert_eq!(reports[0]["ok"], false, "{reports:#}");
    (
        problem["kind"].as_str().unwrap().to_owned(),
        problem["seq"].as_i64().unwrap(),
        problem["id"].as_str().map(str::to_owned),
    )
}

fn event_id(app: &TestApp, seq: i64) -> String {
    app.sql_text(&format!(
        "SELECT id::text AS t FROM events WHERE seq = {seq}"
    ))
    .unwrap()
}

/// Moves the seq of every event from `from` on by `by` (in two steps: seq is UNIQUE).
fn shift_events(app: &TestApp, from: i64, by: i64) {
    app.sql_execute(&format!(
        "UPDATE events SET seq = -(seq + {by}) WHERE seq >= {from}"
    ));
    app.sql_execute("UPDATE events SET seq = -seq WHERE seq < 0");
}

/// What someone with write access would do to hide an edit: recompute every hash from `from` on.
fn rehash_events_from(app: &TestApp, from: i64) {
    app.sql_execute(&format!(
        "DO $$ DECLARE r record; prev bytea; BEGIN
           SELECT entry_hash INTO prev FROM events WHERE seq = {from} - 1;
           FOR r IN SELECT id FROM events WHERE seq >= {from} ORDER BY seq LOOP
             UPDATE events SET prev_hash = prev WHERE id = r.id;
             UPDATE events SET entry_hash = t_event_hash(events) WHERE id = r.id
               RETURNING entry_hash INTO prev;
           END LOOP;
         END $$"
    ));
}

const EVENT_MISMATCHES: &str =
    "SELECT count(*) AS n FROM events WHERE entry_hash IS DISTINCT FROM t_event_hash(events)";

#[tokio::test]
async fn the_operation_log_verifies_and_an_edited_inserted_or_removed_event_is_named() {
    let mut app = TestApp::spawn_with(options(1)).await;
    let mut documents = Vec::new();
    for _ in 0..4 {
        documents.push(app.upload_ok(sample("contract.pdf")).await);
    }
    let job = app.sign_ok(&documents[0], "山田 太郎").await;
    let job = app.wait_for_job(&job, JOB_TIMEOUT).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    wait_sealed_and_anchored(&app, "events", "events").await;
    // Nothing seals or anchors behind the test's back from here on.
    app.kill_worker(0);

    let entries = app.sql_count("SELECT count(*) AS n FROM events");
    assert!(entries >= 5, "4 uploads and a signature: {entries} events");
    assert_eq!(
        app.sql_count("SELECT max(seq) AS n FROM events"),
        entries,
        "seq counts from 1 without gaps"
    );
    create_encoding_functions(&app);
    assert_eq!(
        app.sql_count(EVENT_MISMATCHES),
        0,
        "the documented encoding, recomputed in SQL, gives the stored hashes"
    );
    let report = assert_verifies(&app, "events");
    assert_eq!(report["entries"], entries);
    assert_eq!(report["newest_anchor"]["seq"], entries, "{report:#}");
    assert!(report["anchors"].as_u64().unwrap() >= 1);

    // (a) An edited event.
    app.sql_execute(r#"UPDATE events SET data = data || '{"forged": true}' WHERE seq = 2"#);
    assert_eq!(
        problem(&app, "events"),
        ("edited".to_owned(), 2, Some(event_id(&app, 2)))
    );
    app.sql_execute("UPDATE events SET data = data - 'forged' WHERE seq = 2");
    assert_verifies(&app, "events");

    // (b) An event slipped in after entry 2, the later ones moved up: first with a sound hash
    // (it links to entry 2 and hashes right), then with a made-up one. The anchors before the
    // newest are set aside meanwhile: the workers may have time-stamped entry 3 on the way
    // (sealing and anchoring run while the events arrive), and a sound entry where a
    // time-stamped one was is a rewrite of time-stamped history, case (d), not this one.
    app.sql_execute(&format!(
        "CREATE TABLE saved_event_anchors AS
         SELECT * FROM log_anchors WHERE log = 'events' AND seq < {entries}"
    ));
    app.sql_execute(&format!(
        "DELETE FROM log_anchors WHERE log = 'events' AND seq < {entries}"
    ));
    shift_events(&app, 3, 1);
    app.sql_execute(
        r"INSERT INTO events (id, tenant_id, kind, actor, data, created_at, seq, prev_hash, entry_hash)
          SELECT gen_random_uuid(), tenant_id, 'document.signed', 'api_key:forged', '{}',
                 created_at, 3, entry_hash, '\x00'
          FROM events WHERE seq = 2",
    );
    app.sql_execute("UPDATE events SET entry_hash = t_event_hash(events) WHERE seq = 3");
    let forged = event_id(&app, 3);
    assert_eq!(
        problem(&app, "events"),
        ("inserted".to_owned(), 3, Some(forged.clone()))
    );
    app.sql_execute("UPDATE events SET entry_hash = sha256('made up') WHERE seq = 3");
    assert_eq!(
        problem(&app, "events"),
        ("inserted".to_owned(), 3, Some(forged.clone()))
    );
    app.sql_execute(&format!("DELETE FROM events WHERE id = '{forged}'"));
    shift_events(&app, 4, -1);
    app.sql_execute("INSERT INTO log_anchors SELECT * FROM saved_event_anchors");
    assert_verifies(&app, "events");

    // (c) A removed event.
    app.sql_execute("CREATE TABLE removed_event AS SELECT * FROM events WHERE seq = 3");
    app.sql_execute("DELETE FROM events WHERE seq = 3");
    assert_eq!(problem(&app, "events"), ("removed".to_owned(), 3, None));
    app.sql_execute("INSERT INTO events SELECT * FROM removed_event");
    assert_verifies(&app, "events");

    // (d) An edit hidden by recomputing every hash after it: sound in itself, but no longer
    // what was time-stamped.
    app.sql_execute("UPDATE events SET actor = 'api_key:forged' WHERE seq = 2");
    rehash_events_from(&app, 2);
    assert_eq!(
        app.sql_count(EVENT_MISMATCHES),
        0,
        "the chain is sound in itself"
    );
    let first_anchor_after =
        app.sql_count("SELECT min(seq) AS n FROM log_anchors WHERE log = 'events' AND seq >= 2");
    let (kind, seq, _) = problem(&app, "events");
    assert_eq!((kind.as_str(), seq), ("rewritten", first_anchor_after));
}

#[tokio::test]
async fn operator_actions_and_the_deletion_log_are_chained_and_anchored_too() {
    let mut app = TestApp::spawn_with(options(1)).await;
    app.create_key("member").await;
    // The deletion log is written by the deletion jobs; here by hand, the way they would.
    app.sql_execute(&format!(
        "INSERT INTO deletion_log (id, tenant_id, object_kind, object_id, ciphertext_sha256,
                                   size_bytes, reason, actor)
         VALUES (gen_random_uuid(), '{tenant}', 'document', 'doc-1', sha256('x'), 1234,
                 'tenant cancelled', 'job:1'),
                (gen_random_uuid(), '{tenant}', 'revision', 'rev-1', NULL, NULL,
                 'tenant cancelled', 'job:1')",
        tenant = app.tenant_id
    ));
    wait_sealed_and_anchored(&app, "deletion_log", "deletions").await;
    wait_operator_anchored(&app).await;
    app.kill_worker(0);

    assert_eq!(
        app.sql_count(
            "SELECT count(*) AS n FROM operator_actions
             WHERE actor = 'cli:test-operator' AND action IN ('tenant.create', 'key.create')"
        ),
        2,
        "both CLI commands are recorded, with who ran them"
    );
    assert!(
        app.sql_count(
            "SELECT count(*) AS n FROM operator_actions
             WHERE action = 'log.anchor' AND target = 'deletions'"
        ) >= 1
    );
    create_encoding_functions(&app);
    for (table, function) in [
        ("deletion_log", "t_deletion_hash"),
        ("operator_actions", "t_operator_hash"),
    ] {
        assert_eq!(
            app.sql_count(&format!(
                "SELECT count(*) AS n FROM {table} WHERE entry_hash IS DISTINCT FROM {function}({table})"
            )),
            0,
            "{table}: the documented encoding gives the stored hashes"
        );
    }

    // Every log at once, as an operator reads it.
    let out = app.cli_output(&["log", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("events: OK"), "{text}");
    assert!(
        lines[1].starts_with("deletions: OK, 2 entries (seq 1 to 2)"),
        "{text}"
    );
    assert!(lines[2].starts_with("operator: OK"), "{text}");

    // An edited operator action fails the whole run and is named.
    let seq = app.sql_count("SELECT seq AS n FROM operator_actions WHERE action = 'key.create'");
    let id = app
        .sql_text("SELECT id::text AS t FROM operator_actions WHERE action = 'key.create'")
        .unwrap();
    app.sql_execute(
        r#"UPDATE operator_actions SET detail = detail || '{"role": "owner"}' WHERE action = 'key.create'"#,
    );
    assert_eq!(
        problem(&app, "operator"),
        ("edited".to_owned(), seq, Some(id.clone()))
    );
    let out = app.cli_output(&["log", "verify"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("operator: FAILED at seq {seq} (id {id}): edited")),
        "{text}"
    );

    // Anchors: one gone (its operator record remains), one whose token was altered.
    app.sql_execute(
        "CREATE TABLE saved_anchors AS SELECT * FROM log_anchors WHERE log = 'deletions'",
    );
    app.sql_execute("DELETE FROM log_anchors WHERE log = 'deletions'");
    assert_eq!(problem(&app, "deletions").0, "bad_anchor");
    app.sql_execute("INSERT INTO log_anchors SELECT * FROM saved_anchors");
    assert_verifies(&app, "deletions");
    app.sql_execute(
        "UPDATE log_anchors SET token = overlay(token PLACING '\\xff'::bytea FROM length(token) - 10 FOR 1)
         WHERE log = 'deletions'",
    );
    assert_eq!(problem(&app, "deletions").0, "bad_anchor");
    app.sql_execute("DELETE FROM log_anchors WHERE log = 'deletions'");
    app.sql_execute("INSERT INTO log_anchors SELECT * FROM saved_anchors");
    assert_verifies(&app, "deletions");

    // The first deletion record removed.
    app.sql_execute("DELETE FROM deletion_log WHERE seq = 1");
    assert_eq!(problem(&app, "deletions"), ("removed".to_owned(), 1, None));
}

#[tokio::test]
async fn a_purge_past_retention_runs_once_is_recorded_and_leaves_a_chain_that_verifies() {
    // Two workers: the purge must still run once.
    let mut app = TestApp::spawn_with(options(2)).await;
    // Deliveries reference events; a purge must take them along.
    let receiver = WebhookReceiver::start("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").await;
    let response = app
        .post_json(
            Some(&app.api_key),
            "/v1/webhooks",
            &json!({"url": receiver.url(), "event_kinds": ["document.uploaded"]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let endpoint: Value = response.json().await.unwrap();
    receiver.set_secret(endpoint["secret"].as_str().unwrap());
    for _ in 0..4 {
        app.upload_ok(sample("contract.pdf")).await;
    }
    receiver.wait_for(4, JOB_TIMEOUT).await;
    wait_sealed_and_anchored(&app, "events", "events").await;
    let deadline = Instant::now() + JOB_TIMEOUT;
    while app.sql_count("SELECT count(*) AS n FROM webhook_attempts") < 4 {
        assert!(Instant::now() < deadline, "delivery attempts not recorded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.sql_count("SELECT count(*) AS n FROM events"), 4);

    // The first two events fall past the operation log's retention (400 days by default).
    app.sql_execute(
        "UPDATE events SET created_at = created_at - interval '500 days' WHERE seq <= 2",
    );
    let runs = app.sql_count("SELECT runs AS n FROM scheduled_tasks WHERE name = 'log_purge'");
    app.sql_execute("UPDATE scheduled_tasks SET next_run_at = now() WHERE name = 'log_purge'");
    let purges = "SELECT count(*) AS n FROM operator_actions
                  WHERE action = 'log.purge' AND target = 'events'";
    let deadline = Instant::now() + SEAL_TIMEOUT;
    while app.sql_count(purges) == 0 {
        assert!(Instant::now() < deadline, "no purge recorded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Both workers tick every second; give them several ticks to run it again if they would.
    tokio::time::sleep(Duration::from_secs(4)).await;
    app.kill_worker(0);
    app.kill_worker(1);
    assert_eq!(
        app.sql_count("SELECT runs AS n FROM scheduled_tasks WHERE name = 'log_purge'"),
        runs + 1,
        "one run for one due time, with two workers up"
    );
    assert_eq!(app.sql_count(purges), 1);
    assert_eq!(
        app.sql_count(
            "SELECT (detail->>'through_seq')::bigint AS n FROM operator_actions
             WHERE action = 'log.purge' AND target = 'events'"
        ),
        2
    );
    assert_eq!(
        app.sql_count(
            "SELECT (detail->>'entries')::bigint AS n FROM operator_actions
             WHERE action = 'log.purge' AND target = 'events'"
        ),
        2
    );
    assert_eq!(app.sql_count("SELECT min(seq) AS n FROM events"), 3);
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM webhook_attempts"),
        2,
        "the purged events' deliveries went with them"
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM log_anchors WHERE log = 'events' AND seq <= 2"),
        0
    );

    let report = assert_verifies(&app, "events");
    assert_eq!(report["starts_after"]["through_seq"], 2, "{report:#}");
    assert_eq!(report["first_seq"], 3);
    assert_eq!(report["entries"], 2);
    assert_verifies(&app, "operator");

    // A removal anywhere else is still one: here, the first entry after the purge.
    app.sql_execute(
        "DELETE FROM webhook_attempts WHERE event_id IN (SELECT id FROM events WHERE seq = 3)",
    );
    app.sql_execute("DELETE FROM events WHERE seq = 3");
    assert_eq!(problem(&app, "events"), ("removed".to_owned(), 3, None));
}
