//! The statements that pick jobs by id read those rows by primary key whatever the backlog: they
//! do not walk `jobs_unfinished`, the index of every queued and running job. A planner whose
//! statistics undercount the unfinished jobs (a burst after a quiet spell, a table not yet
//! analysed) combined that index with the primary key when the statement's status condition
//! matched the index's own, so that a worker's claim of six jobs read 6,000 index entries with
//! 6,000 jobs queued (`FINISHED` in `schema/src/models/job.rs` says how they are written now).

use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use serde_json::json;
use uuid::Uuid;

use shomei_schema::Job;
use shomei_testkit::TestApp;

#[derive(QueryableByName)]
struct Number {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// Scans of `relation` in the current transaction so far: of an index, the index scans; of a
/// table, the sequential scans.
fn scans_of(conn: &mut PgConnection, relation: &str) -> i64 {
    diesel::sql_query(format!(
        "SELECT pg_stat_get_xact_numscans('{relation}'::regclass) AS n"
    ))
    .get_result::<Number>(conn)
    .unwrap()
    .n
}

/// Jobs whose error the statements under test set.
fn probed(conn: &mut PgConnection) -> usize {
    diesel::sql_query("SELECT count(*) AS n FROM jobs WHERE error = 'probe'")
        .get_result::<Number>(conn)
        .map_or(0, |number| number.n as usize)
}

/// A connection to the test app's database and a new tenant in it.
fn connection_with_tenant(url: &str) -> (PgConnection, Uuid) {
    let mut conn = PgConnection::establish(url).unwrap();
    let tenant = Uuid::now_v7();
    diesel::sql_query(format!(
        "INSERT INTO tenants (id, name) VALUES ('{tenant}', 'plans')"
    ))
    .execute(&mut conn)
    .unwrap();
    (conn, tenant)
}

/// Adds `n` queued jobs of `kind` (which no worker runs) for `tenant`, without an `ANALYZE`.
fn insert_jobs(conn: &mut PgConnection, tenant: Uuid, kind: &str, n: usize) {
    diesel::sql_query(format!(
        "INSERT INTO jobs (id, tenant_id, kind, payload)
              SELECT gen_random_uuid(), '{tenant}', '{kind}', '{{}}' FROM generate_series(1, {n})"
    ))
    .execute(conn)
    .unwrap();
}

/// The ids of up to `n` queued jobs of `kind`.
fn queued_ids(conn: &mut PgConnection, kind: &str, n: usize) -> Vec<Uuid> {
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: Uuid,
    }
    diesel::sql_query(format!(
        "SELECT id FROM jobs WHERE kind = '{kind}' AND status = 'queued' LIMIT {n}"
    ))
    .load::<Id>(conn)
    .unwrap()
    .into_iter()
    .map(|row| row.id)
    .collect()
}

#[tokio::test]
async fn statements_on_jobs_by_id_do_not_read_the_whole_backlog() {
    let app = TestApp::spawn().await;
    let url = app.database_url();
    tokio::task::spawn_blocking(move || {
        let (mut conn, tenant) = connection_with_tenant(&url);
        // A backlog the statistics have not seen: 6,000 queued jobs in a table never analysed.
        insert_jobs(&mut conn, tenant, "backlog-probe", 6000);
        let ids = queued_ids(&mut conn, "backlog-probe", 6);
        let done = json!({ "probe": true });
        let succeeded: Vec<(Uuid, &serde_json::Value)> =
            ids.iter().map(|id| (*id, &done)).collect();

        type Statement<'a> = Box<dyn Fn(&mut PgConnection) -> diesel::QueryResult<usize> + 'a>;
        let statements: [(&str, Statement<'_>); 5] = [
            (
                "claim",
                Box::new(|c| Job::start_all(c, &ids).map(|j| j.len())),
            ),
            (
                "still unfinished",
                Box::new(|c| Job::still_unfinished(c, &ids).map(|j| j.len())),
            ),
            (
                "succeed",
                Box::new(|c| Job::succeed_all(c, &succeeded).map(|()| 6)),
            ),
            (
                "fail",
                Box::new(|c| Job::fail(c, ids[0], "probe").map(|()| probed(c))),
            ),
            (
                "release",
                Box::new(|c| Job::release_after_error(c, ids[0], "probe").map(|()| probed(c))),
            ),
        ];
        for (name, statement) in &statements {
            // Each in a transaction rolled back, on the backlog as it was; the first runs of a
            // prepared statement are planned for their values, as after a reconnect.
            let result = conn.transaction::<(), diesel::result::Error, _>(|conn| {
                let before = scans_of(conn, "jobs_unfinished");
                let rows = statement(conn)?;
                assert!(rows > 0, "{name}: touched no job");
                let scans = scans_of(conn, "jobs_unfinished") - before;
                assert_eq!(scans, 0, "{name}: walked the index of unfinished jobs");
                Err(diesel::result::Error::RollbackTransaction)
            });
            assert!(matches!(
                result,
                Err(diesel::result::Error::RollbackTransaction)
            ));
        }
    })
    .await
    .unwrap();
}

/// A worker's claim and record statements and the API's look-up of jobs by id (a status poll),
/// run first on a nearly empty `jobs` (as a new deployment's or a load test's first jobs are),
/// do not go on scanning the whole table once it has grown: PostgreSQL keeps a prepared
/// statement's generic plan for the connection's life, and one made for a table of a few rows
/// reads every row.
#[tokio::test]
async fn claims_records_and_polls_planned_on_a_small_table_do_not_scan_it_once_grown() {
    let app = TestApp::spawn().await;
    let url = app.database_url();
    tokio::task::spawn_blocking(move || {
        let (mut conn, tenant) = connection_with_tenant(&url);
        let done = json!({ "probe": true });
        let principal = Uuid::now_v7();
        let poll_claim_and_record = |conn: &mut PgConnection, ids: &[Uuid]| {
            let polled = Job::find_all_visible(conn, tenant, principal, ids).unwrap();
            assert_eq!(polled.len(), ids.len());
            let claimed = Job::start_all(conn, ids).unwrap();
            assert_eq!(claimed.len(), ids.len());
            let succeeded: Vec<(Uuid, &serde_json::Value)> =
                ids.iter().map(|id| (*id, &done)).collect();
            Job::succeed_all(conn, &succeeded).unwrap();
        };

        // Ten rounds on a table of a few rows: past the five runs after which PostgreSQL may
        // keep a generic plan.
        insert_jobs(&mut conn, tenant, "plan-probe", 5);
        for _ in 0..10 {
            let ids = queued_ids(&mut conn, "plan-probe", 5);
            conn.transaction::<(), diesel::result::Error, _>(|conn| {
                poll_claim_and_record(conn, &ids);
                Err(diesel::result::Error::RollbackTransaction)
            })
            .unwrap_err();
        }

        // The table grows past what a scan of it should ever be spent on; no ANALYZE.
        insert_jobs(&mut conn, tenant, "plan-probe", 20_000);
        let ids = queued_ids(&mut conn, "plan-probe", 5);
        conn.transaction::<(), diesel::result::Error, _>(|conn| {
            let before = scans_of(conn, "jobs");
            poll_claim_and_record(conn, &ids);
            let scans = scans_of(conn, "jobs") - before;
            assert_eq!(
                scans, 0,
                "the poll, the claim or the record scanned all of jobs"
            );
            Ok(())
        })
        .unwrap();
    })
    .await
    .unwrap();
}
