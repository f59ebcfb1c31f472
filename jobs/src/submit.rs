//! Accepting a job: the row first, then the queue. Once the row is committed the job is
//! accepted, whatever Redis does next; if the push fails, the reconciler pushes it later.

use shomei_schema::{interact, DbError, Job, NewJob};

use crate::queue::Queue;

/// Records the job (or finds the one made earlier with the same idempotency key) and queues
/// it. Returns the job and whether it was created by this call.
pub async fn submit(
    db: &shomei_schema::DbPool,
    queue: &Queue,
    new: NewJob,
) -> Result<(Job, bool), DbError> {
    let (job, created) = interact(db, move |conn| Ok(Job::insert_or_existing(conn, &new)?)).await?;
    if let (true, Some(kind)) = (created, job.kind()) {
        shomei_telemetry::metrics::JOBS_SUBMITTED
            .with_label_values(&[kind.as_str()])
            .inc();
        if let Err(e) = queue.push(kind, job.id).await {
            // Accepted anyway: the row is the truth and the reconciler will push it.
            tracing::warn!(job.id = %job.id, error = %e, "queue push failed; left to the reconciler");
        }
    }
    Ok((job, created))
}
