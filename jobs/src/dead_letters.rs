//! Dead letters: jobs that failed for good (a permanent error, or their attempts spent) stay in
//! PostgreSQL with status `failed` and their reason. An operator lists them and, once the cause
//! is fixed, retries one: the job starts afresh (no attempts, no error) under the same id, and
//! the retry is an event (`job.retried`) in the operation log.
//!
//! Retrying never undoes what the failure did for other rows: a batch the job completed stays
//! completed. A sign job of a signature request is not retried: its failure handed the signer
//! their turn back, and they sign again through their link.

use diesel::Connection;
use serde_json::json;
use uuid::Uuid;

use shomei_schema::{interact, DbError, Document, Export, Job, JobKind, JobStatus};

use crate::events::{self, kind, NewEvent, Pending};
use crate::queue::Queue;

/// What a retry did.
#[derive(Debug)]
pub enum Retried {
    /// The job was failed and is queued again.
    Requeued(Job),
    /// The job was not failed but queued or running (already retried, say): nothing changed.
    AlreadyPending(Job),
    /// The job succeeded: there is nothing to retry.
    Succeeded,
    /// A sign job of a signature request: the signer signs again through their link.
    RequestStep,
    /// No such job for this caller (another tenant's, or on a document it may not see).
    NotFound,
}

/// Who retries, for the event.
#[derive(Debug, Clone)]
pub struct Operator {
    pub tenant_id: Uuid,
    /// Whose folders the caller sees.
    pub principal: Uuid,
    /// As the audit trail names the caller (`api_key:<id>`, `user:<id>`).
    pub actor: String,
    pub ip: Option<String>,
}

/// Retries the failed job `id` for `operator`: resets it and records `job.retried` in one
/// transaction, then pushes it. Retrying a job that is already queued again does nothing, so a
/// repeated call is harmless.
pub async fn retry(
    db: &shomei_schema::DbPool,
    queue: &Queue,
    operator: Operator,
    id: Uuid,
) -> Result<Retried, DbError> {
    let (outcome, pending) = interact(db, move |conn| {
        Ok(conn.transaction(|conn| {
            let none = Pending::default();
            let Some(job) = Job::find(conn, operator.tenant_id, id)? else {
                return Ok((Retried::NotFound, none));
            };
            if let Some(document_id) = job.document_id {
                if Document::find(conn, operator.tenant_id, operator.principal, document_id)?
                    .is_none()
                {
                    return Ok((Retried::NotFound, none));
                }
            }
            match job.status() {
                JobStatus::Succeeded => return Ok((Retried::Succeeded, none)),
                JobStatus::Queued | JobStatus::Running => {
                    return Ok((Retried::AlreadyPending(job), none))
                }
                JobStatus::Failed => {}
            }
            if crate::sign::step_of(&job).is_some() {
                return Ok((Retried::RequestStep, none));
            }
            let Some(reset) = Job::retry(conn, job.id)? else {
                // Another retry reset it since the read above (the row was not locked).
                return Ok((Retried::AlreadyPending(job), none));
            };
            if job.kind() == Some(JobKind::BulkDownload) {
                Export::requeue(conn, job.id)?;
            }
            let pending = events::emit(
                conn,
                NewEvent {
                    tenant_id: job.tenant_id,
                    kind: kind::JOB_RETRIED,
                    document_id: job.document_id,
                    request_id: None,
                    actor: operator.actor.clone(),
                    ip: operator.ip.clone(),
                    data: json!({
                        "job_id": job.id,
                        "job_kind": job.kind,
                        "attempts": job.attempts,
                        "error": job.error,
                    }),
                },
            )?;
            diesel::QueryResult::Ok((Retried::Requeued(reset), pending))
        })?)
    })
    .await?;
    pending.push(queue).await;
    if let Retried::Requeued(job) = &outcome {
        if let Some(kind) = job.kind() {
            tracing::info!(job.id = %job.id, job.kind = kind.as_str(), "failed job retried by hand");
            if let Err(e) = queue.requeue(kind, job.id).await {
                // Queued in PostgreSQL: the reconciler pushes it.
                tracing::warn!(job.id = %job.id, error = %e, "queue push failed; left to the reconciler");
            }
        }
    }
    Ok(outcome)
}
