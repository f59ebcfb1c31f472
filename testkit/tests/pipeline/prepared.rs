//! The statements of a document's path that diesel would send unprepared run as prepared
//! statements of their connection (`shomei_schema::prepared`): PostgreSQL parses and plans each
//! once per connection, not on every run. A worker's claim and its group's successes are the
//! exception: they are planned on every run (`Job::start_all` says why;
//! `backlog.rs` tests it).

use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use serde_json::json;
use uuid::Uuid;

use shomei_schema::{Document, Event, Job, JobKind, NewJob, Revision};
use shomei_testkit::TestApp;

#[derive(QueryableByName)]
struct PreparedStatement {
    #[diesel(sql_type = diesel::sql_types::Text)]
    statement: String,
}

#[tokio::test]
async fn the_hot_statements_are_prepared_once_per_connection() {
    let app = TestApp::spawn().await;
    let url = app.database_url();
    tokio::task::spawn_blocking(move || {
        let mut conn = PgConnection::establish(&url).unwrap();
        let tenant = Uuid::now_v7();
        diesel::sql_query(format!(
            "INSERT INTO tenants (id, name) VALUES ('{tenant}', 'prepared statements')"
        ))
        .execute(&mut conn)
        .unwrap();

        // Three documents through the statements of their path, with optional values set and
        // not set: each statement is prepared once.
        for round in 0..3 {
            let document = Uuid::now_v7();
            let with_job = (round % 2 == 1).then(Uuid::now_v7);
            let new = shomei_schema::models::NewDocument {
                id: document,
                tenant_id: tenant,
                title: with_job.map(|_| "with a title"),
                pages: 1,
                folder: "/",
            };
            let revision = |n: i32| Revision {
                document_id: document,
                revision: n,
                sha256: vec![n as u8; 32],
                size_bytes: 1,
                storage_key: format!("{document}/{n}"),
                job_id: with_job.filter(|_| n > 0),
                created_at: chrono::Utc::now(),
            };
            Document::create(&mut conn, &new, &revision(0)).unwrap();
            let job = NewJob {
                id: Uuid::now_v7(),
                tenant_id: tenant,
                kind: JobKind::Sign.as_str(),
                document_id: Some(document),
                payload: json!({}),
                batch_id: None,
                idempotency_key: with_job.map(|id| id.to_string()),
                ..NewJob::default()
            };
            Job::insert_all(&mut conn, std::slice::from_ref(&job)).unwrap();
            assert_eq!(Job::start_all(&mut conn, &[job.id]).unwrap().len(), 1);
            Revision::insert_all(&mut conn, &[&revision(1)]).unwrap();
            let event = Event {
                id: Uuid::now_v7(),
                tenant_id: tenant,
                kind: "document.signed".into(),
                document_id: Some(document),
                request_id: None,
                actor: format!("job:{}", job.id),
                ip: with_job.map(|_| "127.0.0.1".into()),
                data: json!({ "round": round }),
                created_at: chrono::Utc::now(),
            };
            Event::insert_all_for_subscribers(&mut conn, &[&event]).unwrap();
            Job::succeed_all(&mut conn, &[(job.id, &json!({ "revision": 1 }))]).unwrap();
        }

        let prepared: Vec<String> =
            diesel::sql_query("SELECT statement FROM pg_prepared_statements")
                .load::<PreparedStatement>(&mut conn)
                .unwrap()
                .into_iter()
                .map(|p| p.statement)
                .collect();
        for start in [
            r#"INSERT INTO "documents""#,
            r#"INSERT INTO "document_revisions""#,
            r#"INSERT INTO "jobs""#,
            "INSERT INTO document_revisions (document_id",
            "WITH event AS",
        ] {
            let n = prepared
                .iter()
                .filter(|s| s.trim_start().starts_with(start))
                .count();
            assert_eq!(n, 1, "{start}: prepared {n} times, in {prepared:#?}");
        }
    })
    .await
    .unwrap();
}
