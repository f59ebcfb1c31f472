//! The explicit list of job kinds and their handlers. A new kind gets a file of its own and
//! one line in each match here; its name (`JobKind::as_str`) must be unique for the whole
//! application.

use diesel::PgConnection;
use serde_json::json;

use shomei_schema::{Job, JobKind, Revision};

use crate::context::JobContext;
use crate::error::JobError;
use crate::events::{self, kind, NewEvent, Pending};
use crate::{deletion, export, notify_email, notify_webhook, requests, sign, timestamp, verify};

/// What a handler that succeeded hands back to the runner.
pub(crate) enum Done {
    /// The job's `result`: the runner marks the job succeeded with it.
    Result(serde_json::Value),
    /// The handler marked the job succeeded itself, in the transaction of the change it made
    /// ([`crate::revisions::record`]): one commit per job instead of two.
    Recorded,
}

/// Runs the handler of `kind`; `starting_revision` is what the claim read for a job that adds
/// a revision ([`crate::group_commit::Claimed`]).
pub(crate) async fn dispatch(
    kind: JobKind,
    ctx: &JobContext,
    job: &Job,
    starting_revision: Option<Revision>,
) -> Result<Done, JobError> {
    match kind {
        JobKind::Sign => sign::run(ctx, job, starting_revision).await,
        JobKind::Timestamp => timestamp::run(ctx, job, starting_revision).await,
        JobKind::Verify => verify::run(ctx, job).await.map(Done::Result),
        JobKind::NotifyEmail => notify_email::run(ctx, job).await.map(Done::Result),
        JobKind::NotifyWebhook => notify_webhook::run(ctx, job).await.map(Done::Result),
        JobKind::BulkDownload => export::run(ctx, job).await.map(Done::Result),
        JobKind::Deletion => deletion::run(ctx, job).await.map(Done::Result),
    }
}

/// Marks `job` failed for good with `reason`; in the transaction, a sign job of a signature
/// request gives the signer back their turn, and every job but a notification emits
/// `job.failed` (a failed notification announced by notifications could loop). Its batch is
/// settled after the commit (`crate::batches::settle`).
pub(crate) fn on_failed(
    conn: &mut PgConnection,
    job: &Job,
    reason: &str,
) -> diesel::QueryResult<Pending> {
    Job::fail(conn, job.id, reason)?;
    let mut pending = Pending::default();
    if matches!(
        job.kind(),
        Some(JobKind::NotifyEmail | JobKind::NotifyWebhook)
    ) {
        return Ok(pending);
    }
    if let Some(step) = sign::step_of(job) {
        requests::sign_failed(conn, &step)?;
    }
    if job.kind() == Some(JobKind::BulkDownload) {
        shomei_schema::Export::fail(conn, job.id)?;
    }
    pending.add(events::emit(
        conn,
        NewEvent {
            tenant_id: job.tenant_id,
            kind: kind::JOB_FAILED,
            document_id: job.document_id,
            request_id: sign::step_of(job).map(|s| s.request_id),
            actor: format!("job:{}", job.id),
            ip: None,
            data: json!({"job_id": job.id, "job_kind": job.kind, "error": reason}),
        },
    )?);
    Ok(pending)
}
