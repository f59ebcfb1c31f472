//! The group commit (`shomei_jobs::group_commit`) of the workers and of the API's intake
//! (`shomei_jobs::Intake`) on the test app's database: steps sent together run as one group,
//! and one member's failure (or panic) is its own; the sign requests' document look-ups are
//! coalesced the same way.

use diesel::RunQueryDsl;
use futures::future::join_all;

use shomei_jobs::events::NewEvent;
use shomei_jobs::group_commit::{GroupCommit, Record};
use shomei_jobs::{Intake, Pending};
use shomei_schema::{Job, JobKind, NewJob, Revision};
use shomei_telemetry::metrics::{GROUP_COMMIT_SIZE, GROUP_COMMIT_SPLITS};
use shomei_testkit::{sample, TestApp};

/// A record inserting `id` into the probe table (its primary key: a second insert fails).
fn insert(id: i32) -> Record {
    Record::work(Box::new(move |conn| {
        diesel::sql_query(format!("INSERT INTO group_commit_probe (id) VALUES ({id})"))
            .execute(conn)?;
        Ok(Pending::default())
    }))
}

#[tokio::test]
async fn steps_sent_together_run_as_one_group_and_each_keeps_its_own_outcome() {
    let app = TestApp::spawn().await;
    app.sql_execute("CREATE TABLE group_commit_probe (id integer PRIMARY KEY)");
    let group_commit = GroupCommit::spawn(shomei_schema::connect(&app.database_url(), 2));
    let sizes = GROUP_COMMIT_SIZE.with_label_values(&["record"]);
    let (groups, members, splits) = (
        sizes.get_sample_count(),
        sizes.get_sample_sum(),
        GROUP_COMMIT_SPLITS.with_label_values(&["record"]).get(),
    );

    // Sent in one poll, before the group task runs: one group of four, whose third member
    // repeats the first's key, so the group's transaction fails and is split.
    let outcomes = join_all([1, 2, 1, 3].map(|id| group_commit.record(insert(id)))).await;
    let failed: Vec<bool> = outcomes.iter().map(Result::is_err).collect();
    assert_eq!(failed, [false, false, true, false], "{outcomes:?}");
    let error = outcomes[2].as_ref().unwrap_err().to_string();
    assert!(error.contains("group_commit_probe_pkey"), "{error}");
    assert_eq!(sizes.get_sample_count(), groups + 1, "one group");
    assert_eq!(sizes.get_sample_sum(), members + 4.0, "of four");
    assert_eq!(
        GROUP_COMMIT_SPLITS.with_label_values(&["record"]).get(),
        splits + 1,
        "split once"
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM group_commit_probe WHERE id IN (1, 2, 3)"),
        3
    );

    // A group that succeeds commits every member, and a lone step runs on its own.
    let outcomes = join_all([4, 5].map(|id| group_commit.record(insert(id)))).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    let _nothing_pending = group_commit.record(insert(6)).await.unwrap();
    assert_eq!(
        GROUP_COMMIT_SPLITS.with_label_values(&["record"]).get(),
        splits + 1
    );
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM group_commit_probe"),
        6
    );

    // A member that panics fails alone, for good; the others commit, and the group task
    // survives it.
    let panics = Record::work(Box::new(|_| panic!("a bug in a record")));
    let outcomes = join_all([
        group_commit.record(insert(7)),
        group_commit.record(panics),
        group_commit.record(insert(8)),
    ])
    .await;
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    assert!(
        matches!(outcomes[1], Err(shomei_jobs::JobError::Permanent(_))),
        "{outcomes:?}"
    );
    let _nothing_pending = group_commit.record(insert(9)).await.unwrap();
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM group_commit_probe"),
        9
    );

    // Claims, taken together, with the revisions they start from: a sign job's own revision
    // from an earlier run (though not the latest), another sign job's latest, and none for a
    // job that adds no revision.
    let document: uuid::Uuid = app.upload_ok(sample("contract.pdf")).await.parse().unwrap();
    let [earlier_run, other_job, verify_job] = [(); 3].map(|_| uuid::Uuid::now_v7());
    for (job, kind) in [
        (earlier_run, "sign"),
        (other_job, "sign"),
        (verify_job, "verify"),
    ] {
        app.sql_execute(&format!(
            "INSERT INTO jobs (id, tenant_id, kind, document_id, payload) \
             SELECT '{job}', tenant_id, '{kind}', id, '{{}}' FROM documents WHERE id = '{document}'"
        ));
    }
    for (revision, job) in [(1, earlier_run), (2, uuid::Uuid::new_v4())] {
        app.sql_execute(&format!(
            "INSERT INTO document_revisions (document_id, revision, sha256, size_bytes, \
             storage_key, job_id) VALUES ('{document}', {revision}, '\\x00', 1, 'probe', '{job}')"
        ));
    }
    let starts = GROUP_COMMIT_SIZE.with_label_values(&["start"]);
    let (groups, members) = (starts.get_sample_count(), starts.get_sample_sum());
    let claims =
        join_all([earlier_run, other_job, verify_job].map(|id| group_commit.start(id))).await;
    assert_eq!(starts.get_sample_count(), groups + 1, "one group");
    assert_eq!(starts.get_sample_sum(), members + 3.0, "of three");
    let revisions: Vec<(uuid::Uuid, i32, Option<i32>)> = claims
        .iter()
        .map(|claim| {
            let claimed = claim.as_ref().unwrap().as_ref().unwrap();
            let revision = claimed.starting_revision.as_ref().map(|r| r.revision);
            (claimed.job.id, claimed.job.attempts, revision)
        })
        .collect();
    assert_eq!(
        revisions,
        [
            (earlier_run, 1, Some(1)),
            (other_job, 1, Some(2)),
            (verify_job, 1, None)
        ],
        "{claims:?}"
    );

    // Claiming: an unknown job is not started, and the statement still answers every caller.
    let unknown = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
    let claims = join_all(unknown.map(|id| group_commit.start(id))).await;
    assert!(claims.iter().all(|c| matches!(c, Ok(None))), "{claims:?}");
}

/// A revision of `document` made by `job`, as a signature would record it.
fn revision_by(document: uuid::Uuid, revision: i32, job: uuid::Uuid) -> Revision {
    Revision {
        document_id: document,
        revision,
        sha256: vec![revision as u8; 32],
        size_bytes: 1000 + i64::from(revision),
        storage_key: format!("probe/{revision}"),
        job_id: Some(job),
        created_at: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn a_groups_revisions_and_successes_are_recorded_together_and_a_collision_stays_its_own() {
    let app = TestApp::spawn().await;
    let group_commit = GroupCommit::spawn(shomei_schema::connect(&app.database_url(), 2));
    let documents: Vec<uuid::Uuid> =
        join_all((0..3).map(|_| app.upload_ok(sample("contract.pdf"))))
            .await
            .into_iter()
            .map(|id| id.parse().unwrap())
            .collect();
    let jobs = [(); 5].map(|_| uuid::Uuid::now_v7());
    // Running sign jobs: one per document, a fourth racing the first on its document, and a
    // fifth signing the second document after the second job.
    for (job, document) in jobs.iter().zip([
        documents[0],
        documents[1],
        documents[2],
        documents[0],
        documents[1],
    ]) {
        app.sql_execute(&format!(
            "INSERT INTO jobs (id, tenant_id, kind, document_id, payload, status) \
             SELECT '{job}', tenant_id, 'sign', id, '{{}}', 'running' FROM documents WHERE id = '{document}'"
        ));
    }
    let tenant: uuid::Uuid = app
        .sql_text(&format!(
            "SELECT tenant_id::text AS t FROM documents WHERE id = '{}'",
            documents[0]
        ))
        .unwrap()
        .parse()
        .unwrap();
    // An endpoint subscribed to the members' events: each event gets its delivery job.
    app.sql_execute(&format!(
        "INSERT INTO webhook_endpoints (id, tenant_id, url, secret, event_kinds, enabled) \
         VALUES (gen_random_uuid(), '{tenant}', 'http://127.0.0.1:9/', 'whsec_probe', \
                 '{{group.probe}}', true)"
    ));
    // The event `job` records with `revision`.
    let probe_event = |job: uuid::Uuid, revision: &Revision| NewEvent {
        tenant_id: tenant,
        kind: "group.probe",
        document_id: Some(revision.document_id),
        request_id: None,
        actor: format!("job:{job}"),
        ip: None,
        data: serde_json::json!({ "revision": revision.revision }),
    };
    let record = |job: uuid::Uuid, revision: Revision, work: bool| Record {
        succeeded: Some((job, serde_json::json!({ "revision": revision.revision }))),
        event: Some(probe_event(job, &revision)),
        revision: Some(revision),
        work: Box::new(move |conn| {
            if work {
                diesel::sql_query(format!(
                    "INSERT INTO group_commit_probe (id, job) VALUES (1, '{job}')"
                ))
                .execute(conn)?;
            }
            Ok(Pending::default())
        }),
    };
    // The events of `job`'s record, and their delivery jobs.
    let events_of = |job: uuid::Uuid| {
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM events WHERE actor = 'job:{job}' AND kind = 'group.probe'"
        ))
    };
    let deliveries_of = |job: uuid::Uuid| {
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM events e JOIN jobs d \
               ON d.kind = 'notify_webhook' AND d.payload->>'event_id' = e.id::text \
             WHERE e.actor = 'job:{job}'"
        ))
    };
    app.sql_execute("CREATE TABLE group_commit_probe (id integer, job uuid)");

    // One group of three: each revision is recorded, each job succeeded with its result, and
    // each member's own work ran between.
    let outcomes = join_all([0, 1, 2].map(|i| {
        group_commit.record(record(jobs[i], revision_by(documents[i], 1, jobs[i]), true))
    }))
    .await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    for (job, document) in jobs.iter().zip(&documents) {
        assert_eq!(
            app.sql_count(&format!(
                "SELECT count(*) AS n FROM jobs j JOIN document_revisions r ON r.job_id = j.id \
                 WHERE j.id = '{job}' AND j.status = 'succeeded' AND j.result = '{{\"revision\": 1}}' \
                 AND r.document_id = '{document}' AND r.revision = 1 AND r.size_bytes = 1001 \
                 AND r.storage_key = 'probe/1' AND r.sha256 = '\\x{}'",
                "01".repeat(32)
            )),
            1,
            "job {job}"
        );
    }
    assert_eq!(
        app.sql_count("SELECT count(*) AS n FROM group_commit_probe"),
        3
    );
    // Each member's event (in one statement for the group) with its own delivery job.
    for job in &jobs[..3] {
        assert_eq!((events_of(*job), deliveries_of(*job)), (1, 1), "job {job}");
    }

    // The fourth job races the first: its revision 1 of the same document collides. In a group
    // with a revision 2 of the second document, the group is split: the collision fails alone
    // (its job stays running) and the other member is recorded.
    let splits = GROUP_COMMIT_SPLITS.with_label_values(&["record"]).get();
    let outcomes = join_all([
        group_commit.record(record(
            jobs[3],
            revision_by(documents[0], 1, jobs[3]),
            false,
        )),
        group_commit.record(Record {
            event: Some(probe_event(jobs[4], &revision_by(documents[1], 2, jobs[4]))),
            revision: Some(revision_by(documents[1], 2, jobs[4])),
            work: Box::new(|_| Ok(Pending::default())),
            succeeded: None,
        }),
    ])
    .await;
    // The collision's event is not recorded; the other member's is, once, though its group's
    // transaction ran it before the split.
    assert_eq!((events_of(jobs[3]), deliveries_of(jobs[3])), (0, 0));
    assert_eq!((events_of(jobs[4]), deliveries_of(jobs[4])), (1, 1));
    assert_eq!(
        GROUP_COMMIT_SPLITS.with_label_values(&["record"]).get(),
        splits + 1
    );
    let error = outcomes[0].as_ref().unwrap_err().to_string();
    assert!(error.contains("document_revisions"), "{error}");
    assert!(outcomes[1].is_ok(), "{outcomes:?}");
    assert_eq!(
        app.sql_text(&format!(
            "SELECT status AS t FROM jobs WHERE id = '{}'",
            jobs[3]
        ))
        .unwrap(),
        "running"
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM document_revisions WHERE document_id = '{}' AND revision = 2",
            documents[1]
        )),
        1
    );
}

/// A sign job on `document` for the API's intake, with an idempotency key and a payload.
fn sign_job(tenant: uuid::Uuid, document: uuid::Uuid, key: &str, payload: &str) -> NewJob {
    NewJob {
        id: uuid::Uuid::now_v7(),
        tenant_id: tenant,
        kind: JobKind::Sign.as_str(),
        document_id: Some(document),
        payload: serde_json::json!({ "probe": payload }),
        idempotency_key: Some(key.to_owned()),
        request_sha256: None,
        batch_id: None,
    }
}

#[tokio::test]
async fn single_submissions_arriving_together_are_written_as_one_statement_and_each_keeps_its_own_outcome(
) {
    let app = TestApp::spawn().await;
    let config =
        shomei_config::Config::from_lookup(|name| app.env_var(name).map(String::from)).unwrap();
    let queue = shomei_jobs::Queue::connect(&config).await.unwrap();
    let intake = Intake::spawn(
        shomei_schema::connect(&app.database_url(), 2),
        queue.clone(),
    );
    let document: uuid::Uuid = app.upload_ok(sample("contract.pdf")).await.parse().unwrap();
    let tenant: uuid::Uuid = app
        .sql_text(&format!(
            "SELECT tenant_id::text AS t FROM documents WHERE id = '{document}'"
        ))
        .unwrap()
        .parse()
        .unwrap();
    let sizes = GROUP_COMMIT_SIZE.with_label_values(&["submit"]);
    let splits = GROUP_COMMIT_SPLITS.with_label_values(&["submit"]);
    let (groups, members, split) = (
        sizes.get_sample_count(),
        sizes.get_sample_sum(),
        splits.get(),
    );

    // One group of three in one statement: the second repeats the first's idempotency key and
    // is answered with the first's job, made by the same statement.
    let [first, again, other] = ["k1", "k1", "k2"].map(|key| sign_job(tenant, document, key, "ok"));
    let outcomes = join_all([first, again, other].map(|new| intake.submit(new))).await;
    let outcomes: Vec<(Job, bool)> = outcomes.into_iter().map(Result::unwrap).collect();
    assert_eq!(sizes.get_sample_count(), groups + 1, "one group");
    assert_eq!(sizes.get_sample_sum(), members + 3.0, "of three");
    assert_eq!(splits.get(), split, "not split");
    assert!(
        outcomes[0].1 && !outcomes[1].1 && outcomes[2].1,
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1].0.id, outcomes[0].0.id, "the key's first job");
    let k2 = outcomes[2].0.id;
    assert_ne!(k2, outcomes[0].0.id);
    // Each job made is queued (the repeat made none), and an id never pushed is not: Redis's
    // answers come back in the order asked.
    let asked = [
        (JobKind::Sign, outcomes[0].0.id),
        (JobKind::Sign, uuid::Uuid::now_v7()),
        (JobKind::Sign, k2),
    ];
    assert_eq!(
        queue.contains_all(&asked).await.unwrap(),
        [true, false, true]
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM jobs WHERE document_id = '{document}' \
             AND idempotency_key IN ('k1', 'k2')"
        )),
        2
    );

    // A payload PostgreSQL refuses (U+0000 in jsonb) fails the group's statement: the group
    // is split, that job fails alone with the database's reason, the two beside it are made.
    let jobs = [("k3", "ok"), ("k4", "nul \u{0}"), ("k5", "ok")]
        .map(|(key, payload)| sign_job(tenant, document, key, payload));
    let outcomes = join_all(jobs.map(|new| intake.submit(new))).await;
    assert_eq!(splits.get(), split + 1, "split once");
    assert!(
        outcomes[0].as_ref().is_ok_and(|(_, made)| *made),
        "{outcomes:?}"
    );
    assert!(
        outcomes[2].as_ref().is_ok_and(|(_, made)| *made),
        "{outcomes:?}"
    );
    let error = outcomes[1].as_ref().unwrap_err().to_string();
    assert!(
        error.contains("unsupported Unicode escape sequence"),
        "{error}"
    );
    assert_eq!(
        app.sql_count(&format!(
            "SELECT count(*) AS n FROM jobs WHERE document_id = '{document}' \
             AND idempotency_key IN ('k3', 'k4', 'k5')"
        )),
        2
    );

    // A lone submission runs at once, and a key used earlier answers with its job.
    let (job, made) = intake
        .submit(sign_job(tenant, document, "k2", "ok"))
        .await
        .unwrap();
    assert!(!made);
    assert_eq!(job.id, k2);
    assert_eq!(sizes.get_sample_count(), groups + 3, "three groups in all");
}

#[tokio::test]
async fn document_look_ups_arriving_together_are_one_group_and_each_gets_its_own_answer() {
    let app = TestApp::spawn().await;
    let config =
        shomei_config::Config::from_lookup(|name| app.env_var(name).map(String::from)).unwrap();
    let queue = shomei_jobs::Queue::connect(&config).await.unwrap();
    let intake = Intake::spawn(shomei_schema::connect(&app.database_url(), 2), queue);
    let upload = |folder: &'static str| {
        let app = &app;
        async move {
            let response = app.upload_to_folder(&app.api_key, folder).await;
            assert_eq!(response.status(), 201);
            let id = response.json::<serde_json::Value>().await.unwrap()["id"].clone();
            id.as_str().unwrap().parse::<uuid::Uuid>().unwrap()
        }
    };
    let (sales, legal) = (upload("/sales/2026").await, upload("/legal").await);
    // A member of a group that may see `/sales` only; any other principal is in no group and
    // sees every folder.
    let (_, member) = app.create_group_member("sales", &["/sales"]).await;
    let member: uuid::Uuid = member.parse().unwrap();
    let tenant: uuid::Uuid = app.tenant_id.parse().unwrap();
    let level = app
        .sql_text(&format!(
            "SELECT signature_level AS t FROM tenants WHERE id = '{tenant}'"
        ))
        .unwrap();
    let (anyone, stranger, missing) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    let sizes = GROUP_COMMIT_SIZE.with_label_values(&["document"]);
    let (groups, members) = (sizes.get_sample_count(), sizes.get_sample_sum());

    // (tenant, principal, document) → whether it is found.
    let asked = [
        (tenant, anyone, sales, true),
        (tenant, anyone, legal, true),
        (tenant, member, sales, true),
        (tenant, member, legal, false),
        (stranger, anyone, sales, false),
        (tenant, anyone, missing, false),
    ];
    let answers = join_all(
        asked.map(|(tenant, principal, id, _)| intake.find_document(tenant, principal, id)),
    )
    .await;
    assert_eq!(sizes.get_sample_count(), groups + 1, "one group");
    assert_eq!(sizes.get_sample_sum(), members + asked.len() as f64);
    for ((_, _, id, expected), answer) in asked.iter().zip(answers) {
        let answer = answer.unwrap();
        assert_eq!(answer.is_some(), *expected, "{id}: {answer:?}");
        if let Some((doc, doc_level)) = answer {
            assert_eq!((doc.id, doc_level.as_str()), (*id, level.as_str()));
        }
    }
}
