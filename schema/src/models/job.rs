use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::prepared::{PlanEachRun, Prepare};
use crate::schema::{documents, jobs};

/// The kinds of work the pipeline does. The string is stored in `jobs.kind` and names the
/// queue, so it must stay stable and unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Sign,
    Timestamp,
    Verify,
    /// One e-mail to one recipient.
    NotifyEmail,
    /// One event to one webhook endpoint.
    NotifyWebhook,
    /// One export: the tenant's signed PDFs as ZIP archive parts.
    BulkDownload,
    /// A cancelled tenant's files once their deletion is due, or one document's on request.
    Deletion,
}

impl JobKind {
    pub const ALL: [JobKind; 7] = [
        JobKind::Sign,
        JobKind::Timestamp,
        JobKind::Verify,
        JobKind::NotifyEmail,
        JobKind::NotifyWebhook,
        JobKind::BulkDownload,
        JobKind::Deletion,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            JobKind::Sign => "sign",
            JobKind::Timestamp => "timestamp",
            JobKind::Verify => "verify",
            JobKind::NotifyEmail => "notify_email",
            JobKind::NotifyWebhook => "notify_webhook",
            JobKind::BulkDownload => "bulk_download",
            JobKind::Deletion => "deletion",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed)
    }
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = jobs)]
pub struct Job {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub kind: String,
    pub document_id: Option<Uuid>,
    pub payload: serde_json::Value,
    pub status: String,
    pub attempts: i32,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub idempotency_key: Option<String>,
    pub request_sha256: Option<Vec<u8>>,
    pub created_at: DateTime<Utc>,
    pub enqueued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Set while a retry waits for its time; the job is not run before it.
    pub run_after: Option<DateTime<Utc>>,
    /// The batch it was submitted in, if any.
    pub batch_id: Option<Uuid>,
}

// `None` sent as NULL (the column's default), not as DEFAULT: one SQL text whatever is set,
// so the insert of several rows can stay prepared (`crate::prepared`).
#[derive(Debug, Clone, Default, Insertable)]
#[diesel(table_name = jobs, treat_none_as_default_value = false)]
pub struct NewJob {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub kind: &'static str,
    pub document_id: Option<Uuid>,
    pub payload: serde_json::Value,
    pub idempotency_key: Option<String>,
    pub request_sha256: Option<Vec<u8>>,
    pub batch_id: Option<Uuid>,
}

/// One row of [`Job::depth`].
#[derive(Debug, Clone, QueryableByName)]
pub struct QueueDepth {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub kind: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub status: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub jobs: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    pub oldest_due: Option<DateTime<Utc>>,
}

/// The statuses of a job not yet finished: the predicate of the partial index `jobs_unfinished`
/// (on `enqueued_at`), which the scans over the queue use (the reconciler's, the gauges').
pub(crate) const UNFINISHED: [&str; 2] = [JobStatus::Queued.as_str(), JobStatus::Running.as_str()];

/// The statuses a job ends in. A statement that picks jobs by id and skips the finished ones
/// says `status <> ALL(FINISHED)`, not `status = ANY(UNFINISHED)`: the same rows, but a
/// condition that does not match `jobs_unfinished`'s predicate, so the planner cannot add that
/// index to the primary key's. It did, when its statistics undercounted the unfinished jobs (a
/// burst after a quiet spell, a table not yet analysed), and a claim of six jobs then read every
/// queued job's index entry: 0.9 ms per claim with 6,000 queued, growing with the backlog
/// (`testkit/tests/pipeline/backlog.rs`).
pub(crate) const FINISHED: [&str; 2] = [JobStatus::Succeeded.as_str(), JobStatus::Failed.as_str()];

impl Job {
    /// `None` only for a kind written by a newer release than this process knows.
    pub fn kind(&self) -> Option<JobKind> {
        JobKind::parse(&self.kind)
    }

    pub fn status(&self) -> JobStatus {
        match self.status.as_str() {
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "failed" => JobStatus::Failed,
            _ => JobStatus::Queued,
        }
    }

    /// Inserts the job, or, when the tenant already used this idempotency key, returns the job
    /// made then (`false`: nothing new was created). The caller compares request hashes.
    ///
    /// No transaction of its own: the insert waits for a concurrent one with the same key to
    /// commit (or roll back), so the earlier job is there to read when the insert did nothing.
    pub fn insert_or_existing(conn: &mut PgConnection, new: &NewJob) -> QueryResult<(Job, bool)> {
        let inserted = diesel::insert_into(jobs::table)
            .values(new)
            .on_conflict((jobs::tenant_id, jobs::idempotency_key))
            .do_nothing()
            .returning(Job::as_returning())
            .get_result(conn)
            .optional()?;
        match inserted {
            Some(job) => Ok((job, true)),
            None => jobs::table
                .filter(jobs::tenant_id.eq(new.tenant_id))
                .filter(jobs::idempotency_key.eq(&new.idempotency_key))
                .select(Job::as_select())
                .first(conn)
                .map(|job| (job, false)),
        }
    }

    /// [`Job::insert_or_existing`] for many jobs in one statement (the API's group commit of
    /// single submissions): one answer per job, in order. A job whose idempotency key another
    /// job already holds (made earlier, or earlier in `new`) answers with that job, read in a
    /// second statement that only runs when there is one.
    pub fn insert_all_or_existing(
        conn: &mut PgConnection,
        new: &[NewJob],
    ) -> QueryResult<Vec<(Job, bool)>> {
        let mut inserted: HashMap<Uuid, Job> = diesel::insert_into(jobs::table)
            .values(new)
            .on_conflict((jobs::tenant_id, jobs::idempotency_key))
            .do_nothing()
            .returning(Job::as_returning())
            .get_results(conn)?
            .into_iter()
            .map(|job| (job.id, job))
            .collect();
        let mut existing: HashMap<(Uuid, String), Job> = HashMap::new();
        let (tenants, keys): (Vec<Uuid>, Vec<&str>) = new
            .iter()
            .filter(|n| !inserted.contains_key(&n.id))
            .filter_map(|n| Some((n.tenant_id, n.idempotency_key.as_deref()?)))
            .unzip();
        if !keys.is_empty() {
            // Pairs, matched in Rust: a tenant's keys are few per group.
            for job in jobs::table
                .filter(jobs::tenant_id.eq_any(&tenants))
                .filter(jobs::idempotency_key.eq_any(&keys))
                .select(Job::as_select())
                .load(conn)?
            {
                if let Some(key) = job.idempotency_key.clone() {
                    existing.insert((job.tenant_id, key), job);
                }
            }
        }
        new.iter()
            .map(|n| match inserted.remove(&n.id) {
                Some(job) => Ok((job, true)),
                None => n
                    .idempotency_key
                    .clone()
                    .and_then(|key| existing.get(&(n.tenant_id, key)).cloned())
                    .map(|job| (job, false))
                    .ok_or(diesel::result::Error::NotFound),
            })
            .collect()
    }

    /// The job if it belongs to `tenant_id`.
    pub fn find(conn: &mut PgConnection, tenant_id: Uuid, id: Uuid) -> QueryResult<Option<Job>> {
        jobs::table
            .filter(jobs::id.eq(id))
            .filter(jobs::tenant_id.eq(tenant_id))
            .select(Job::as_select())
            .first(conn)
            .optional()
    }

    /// The job if it belongs to `tenant_id` and is on no document, or on one in a folder
    /// `principal` may see: one statement, for the status polls clients send most.
    pub fn find_visible(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        principal: Uuid,
        id: Uuid,
    ) -> QueryResult<Option<Job>> {
        Ok(Self::find_all_visible(conn, tenant_id, principal, &[id])?.pop())
    }

    /// Those of `ids` that [`Job::find_visible`] finds, in one statement, in no given order.
    pub fn find_all_visible(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        principal: Uuid,
        ids: &[Uuid],
    ) -> QueryResult<Vec<Job>> {
        // Looked up by primary keys alone, the tenant and folder checked on each row: a
        // condition on `tenant_id` here let the planner (with a plan cached while the tables
        // were small) walk every job of the tenant by another index and test every document of
        // the tenant against the folder rule, a hashed subplan that made each poll cost tens of
        // milliseconds under load. Planned for its values on every run, for the reason
        // [`Job::start_all`] gives: kept prepared, a plan made on a small table hashed a scan
        // of all of `jobs` for every poll (in one load-test run of six, 308 buffers and 1.4 ms a
        // poll against 44 and 0.18).
        let found: Vec<(Job, Option<Uuid>, Option<bool>)> = jobs::table
            .left_join(documents::table)
            .filter(jobs::id.eq_any(ids))
            .select((
                Job::as_select(),
                documents::tenant_id.nullable(),
                super::folder_visible(principal, documents::folder).nullable(),
            ))
            .planned_each_run()
            .load(conn)?;
        Ok(found
            .into_iter()
            .filter_map(|(job, document_tenant, visible)| {
                let on_visible_document =
                    document_tenant == Some(tenant_id) && visible == Some(true);
                (job.tenant_id == tenant_id && (job.document_id.is_none() || on_visible_document))
                    .then_some(job)
            })
            .collect())
    }

    /// Records that these jobs were pushed to the queue again, or seen there; returns how many
    /// rows it marked. Rows another transaction holds locked (a worker claiming or finishing
    /// the job) are skipped and keep their old time, so the next pass looks at them again:
    /// locking them in this statement's order against a worker's group, which locks its
    /// jobs in its own order, was a deadlock that aborted one of the two.
    pub fn mark_enqueued(conn: &mut PgConnection, ids: &[Uuid]) -> QueryResult<usize> {
        // diesel has no locking clause in an update's subquery.
        diesel::sql_query(
            "UPDATE jobs SET enqueued_at = now() WHERE id IN \
             (SELECT id FROM jobs WHERE id = ANY($1) FOR UPDATE SKIP LOCKED)",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(ids)
        .execute(conn)
    }

    /// Those of `ids` that are still unfinished now.
    pub fn still_unfinished(conn: &mut PgConnection, ids: &[Uuid]) -> QueryResult<Vec<Uuid>> {
        jobs::table
            .filter(jobs::id.eq_any(ids))
            .filter(jobs::status.ne_all(FINISHED))
            .select(jobs::id)
            .load(conn)
    }

    /// Claims the unfinished, due jobs among `ids` for a run and counts their attempts, in one
    /// statement. A job missing from the answer is already finished or waits for a later retry:
    /// a duplicate delivery, which the caller acknowledges without work (the reconciler pushes
    /// a waiting job when it is due).
    ///
    /// Planned for its values on every run, not kept prepared: PostgreSQL plans a prepared
    /// statement once for any values after its fifth run and keeps that plan for the
    /// connection's life (until an `ANALYZE` of the table). A plan made while `jobs` was small
    /// (a new deployment's first minute, a load test's fresh database) is a scan of the whole
    /// table, and the table then grew under it: a group's record took 1.4 ms instead of 0.2
    /// with 16,000 jobs, more with every job added. Planning it each time costs about 0.1 ms
    /// per group (`testkit/tests/pipeline/backlog.rs`).
    pub fn start_all(conn: &mut PgConnection, ids: &[Uuid]) -> QueryResult<Vec<Job>> {
        diesel::update(
            jobs::table
                .filter(jobs::id.eq_any(ids))
                .filter(jobs::status.ne_all(FINISHED))
                .filter(
                    jobs::run_after
                        .is_null()
                        .or(jobs::run_after.le(diesel::dsl::now)),
                ),
        )
        .set((
            jobs::status.eq(JobStatus::Running.as_str()),
            jobs::attempts.eq(jobs::attempts + 1),
            jobs::started_at.eq(diesel::dsl::now),
        ))
        .returning(Job::as_returning())
        .get_results(conn)
    }

    /// Marks each job of `done` succeeded with its result, in one statement (the jobs a group
    /// commit records together); a job already finished (the sweeper failed it meanwhile, say)
    /// is left as it is. Planned for its values on every run, for the reason [`Job::start_all`] gives.
    pub fn succeed_all(
        conn: &mut PgConnection,
        done: &[(Uuid, &serde_json::Value)],
    ) -> QueryResult<()> {
        use diesel::sql_types::{Array, Jsonb, Text, Uuid as SqlUuid};
        if done.is_empty() {
            return Ok(());
        }
        let (ids, results): (Vec<Uuid>, Vec<&serde_json::Value>) = done.iter().copied().unzip();
        diesel::sql_query(
            "UPDATE jobs SET status = $3, result = done.result, error = NULL, finished_at = now()
             FROM unnest($1::uuid[], $2::jsonb[]) AS done (id, result)
             WHERE jobs.id = done.id AND jobs.status <> ALL($4)",
        )
        .bind::<Array<SqlUuid>, _>(ids)
        .bind::<Array<Jsonb>, _>(results)
        .bind::<Text, _>(JobStatus::Succeeded.as_str())
        .bind::<Array<Text>, _>(FINISHED.as_slice())
        .execute(conn)
        .map(|_| ())
    }

    pub fn fail(conn: &mut PgConnection, id: Uuid, error: &str) -> QueryResult<()> {
        diesel::update(jobs::table.find(id).filter(jobs::status.ne_all(FINISHED)))
            .set((
                jobs::status.eq(JobStatus::Failed.as_str()),
                jobs::error.eq(error),
                jobs::finished_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .map(|_| ())
    }

    /// A transient failure: the job goes back to `queued` (the queue retries it) and keeps the
    /// last error for the status endpoint.
    pub fn release_after_error(conn: &mut PgConnection, id: Uuid, error: &str) -> QueryResult<()> {
        diesel::update(jobs::table.find(id).filter(jobs::status.ne_all(FINISHED)))
            .set((
                jobs::status.eq(JobStatus::Queued.as_str()),
                jobs::error.eq(error),
            ))
            .execute(conn)
            .map(|_| ())
    }

    /// A transient failure whose retry must wait until `run_after`: the job goes back to
    /// `queued` but is not pushed; the reconciler pushes it once it is due.
    pub fn release_until(
        conn: &mut PgConnection,
        id: Uuid,
        error: &str,
        run_after: DateTime<Utc>,
    ) -> QueryResult<()> {
        diesel::update(jobs::table.find(id).filter(jobs::status.ne_all(FINISHED)))
            .set((
                jobs::status.eq(JobStatus::Queued.as_str()),
                jobs::error.eq(error),
                jobs::run_after.eq(run_after),
            ))
            .execute(conn)
            .map(|_| ())
    }

    /// Inserts a job that must not run before `run_after` (nothing is pushed: the reconciler
    /// pushes it once it is due, so the date survives restarts and Redis losing everything).
    /// With an idempotency key, an existing job with that key is returned instead.
    pub fn insert_scheduled(
        conn: &mut PgConnection,
        new: &NewJob,
        run_after: DateTime<Utc>,
    ) -> QueryResult<Job> {
        // One transaction: the reconciler must never see the job without its date.
        conn.transaction(|conn| {
            let (job, created) = Job::insert_or_existing(conn, new)?;
            if !created {
                return Ok(job);
            }
            diesel::update(jobs::table.find(job.id))
                .set(jobs::run_after.eq(run_after))
                .returning(Job::as_returning())
                .get_result(conn)
        })
    }

    /// Inserts jobs made together with another change (in its transaction); the caller pushes
    /// them once the transaction has committed.
    pub fn insert_all(
        conn: &mut PgConnection,
        new: &[NewJob],
    ) -> QueryResult<Vec<(JobKind, Uuid)>> {
        // diesel sends `SELECT 1 FROM jobs WHERE 1=0` for an empty insert: a round trip for
        // nothing, twice per signed document (events without subscribers).
        if new.is_empty() {
            return Ok(Vec::new());
        }
        // One variant per number of rows (at most a group's, `MAX_GROUP`).
        diesel::insert_into(jobs::table)
            .values(new)
            .returning(jobs::id)
            .prepared()
            .get_results::<Uuid>(conn)?;
        Ok(new
            .iter()
            .filter_map(|job| JobKind::parse(job.kind).map(|kind| (kind, job.id)))
            .collect())
    }

    /// Unfinished jobs per kind and status, with the creation time of the oldest one that is
    /// due (a job waiting for a scheduled retry is not late): what the queue gauges show.
    pub fn depth(conn: &mut PgConnection) -> QueryResult<Vec<QueueDepth>> {
        diesel::sql_query(
            "SELECT kind, status, count(*) AS jobs, \
                    min(created_at) FILTER (WHERE run_after IS NULL OR run_after <= now()) AS oldest_due \
               FROM jobs WHERE status IN ('queued', 'running') GROUP BY kind, status",
        )
        .load(conn)
    }

    /// The sweeper's claim: every `kind` job still `running` from a run started before
    /// `started_before` goes back to `queued` with `error`, its attempt already counted, and is
    /// returned. One statement, so of several workers sweeping at once each job goes to one.
    pub fn release_stuck(
        conn: &mut PgConnection,
        kind: JobKind,
        started_before: DateTime<Utc>,
        error: &str,
    ) -> QueryResult<Vec<Job>> {
        diesel::update(
            jobs::table
                .filter(jobs::kind.eq(kind.as_str()))
                .filter(jobs::status.eq(JobStatus::Running.as_str()))
                .filter(jobs::started_at.lt(started_before)),
        )
        .set((
            jobs::status.eq(JobStatus::Queued.as_str()),
            jobs::error.eq(error),
            jobs::enqueued_at.eq(diesel::dsl::now),
        ))
        .returning(Job::as_returning())
        .get_results(conn)
    }

    /// The dead letters: the tenant's jobs that failed for good, in id (creation) order after
    /// `after`, at most `limit`, of one kind or all; jobs on documents in folders `principal`
    /// may not see are left out.
    pub fn dead_letters(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        principal: Uuid,
        kind: Option<JobKind>,
        after: Option<Uuid>,
        limit: i64,
    ) -> QueryResult<Vec<Job>> {
        let visible = documents::table
            .filter(documents::tenant_id.eq(tenant_id))
            .filter(super::folder_visible(principal, documents::folder))
            .select(documents::id.nullable());
        let mut query = jobs::table
            .filter(jobs::tenant_id.eq(tenant_id))
            .filter(jobs::status.eq(JobStatus::Failed.as_str()))
            .filter(
                jobs::document_id
                    .is_null()
                    .or(jobs::document_id.eq_any(visible)),
            )
            .into_boxed();
        if let Some(kind) = kind {
            query = query.filter(jobs::kind.eq(kind.as_str()));
        }
        if let Some(after) = after {
            query = query.filter(jobs::id.gt(after));
        }
        query
            .order(jobs::id.asc())
            .limit(limit)
            .select(Job::as_select())
            .load(conn)
    }

    /// Gives a failed job a fresh start: `queued`, no attempts, no error or result. `None`
    /// when it is not `failed` (any more): of two retries at once, one resets it.
    pub fn retry(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<Job>> {
        diesel::update(
            jobs::table
                .find(id)
                .filter(jobs::status.eq(JobStatus::Failed.as_str())),
        )
        .set((
            jobs::status.eq(JobStatus::Queued.as_str()),
            jobs::attempts.eq(0),
            jobs::error.eq(None::<String>),
            jobs::result.eq(None::<serde_json::Value>),
            jobs::started_at.eq(None::<DateTime<Utc>>),
            jobs::finished_at.eq(None::<DateTime<Utc>>),
            jobs::run_after.eq(None::<DateTime<Utc>>),
            jobs::enqueued_at.eq(diesel::dsl::now),
        ))
        .returning(Job::as_returning())
        .get_result(conn)
        .optional()
    }

    /// Unfinished, due jobs last pushed to (or seen in) the queue before `cutoff`, oldest first:
    /// the reconciler's candidates for re-queueing.
    pub fn unfinished_enqueued_before(
        conn: &mut PgConnection,
        cutoff: DateTime<Utc>,
        limit: i64,
    ) -> QueryResult<Vec<Job>> {
        jobs::table
            .filter(jobs::status.eq_any(UNFINISHED))
            .filter(jobs::enqueued_at.lt(cutoff))
            .filter(
                jobs::run_after
                    .is_null()
                    .or(jobs::run_after.le(diesel::dsl::now)),
            )
            .order(jobs::enqueued_at.asc())
            .limit(limit)
            .select(Job::as_select())
            .load(conn)
    }
}
