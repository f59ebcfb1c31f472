//! Accepting a job: the row first, then the queue. Once the row is committed the job is
//! accepted, whatever Redis does next; if the push fails, the reconciler pushes it later.
//!
//! The rows of submissions arriving together are written as one statement (one round trip,
//! one commit: the API's side of the [group commit](crate::group_commit)); each is then pushed
//! by its own request.

use diesel::PgConnection;
use shomei_schema::{DbError, DbPool, Job, NewJob};
use shomei_telemetry::metrics;

use crate::group_commit::{split, Coalescer, GroupFailure};
use crate::queue::Queue;

/// Why a job could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Group(#[from] GroupFailure),
}

/// Records and queues jobs: the API's intake.
pub struct Intake {
    queue: Queue,
    inserts: Coalescer<NewJob, (Job, bool), SubmitError>,
}

impl Intake {
    /// Spawns the task that writes the rows on the current runtime.
    pub fn spawn(db: DbPool, queue: Queue) -> Self {
        metrics::GROUP_COMMIT_SPLITS
            .with_label_values(&["submit"])
            .inc_by(0);
        Self {
            queue,
            inserts: Coalescer::spawn(db, "submit", insert_group),
        }
    }

    /// Records the job (or finds the one made earlier with the same idempotency key) and
    /// queues it. Returns the job and whether it was created by this call.
    pub async fn submit(&self, new: NewJob) -> Result<(Job, bool), SubmitError> {
        let (job, created) = self.inserts.call(new).await?;
        if let (true, Some(kind)) = (created, job.kind()) {
            metrics::JOBS_SUBMITTED
                .with_label_values(&[kind.as_str()])
                .inc();
            if let Err(e) = self.queue.push(kind, job.id).await {
                // Accepted anyway: the row is the truth and the reconciler will push it.
                tracing::warn!(job.id = %job.id, error = %e, "queue push failed; left to the reconciler");
            }
        }
        Ok((job, created))
    }
}

/// One statement for the group; when it fails (one job's payload refused, a deadlock with
/// another API process inserting the same keys), one per job, so an error stays its own.
fn insert_group(
    conn: &mut PgConnection,
    new: &mut [NewJob],
) -> Vec<Result<(Job, bool), SubmitError>> {
    if new.len() > 1 {
        match Job::insert_all_or_existing(conn, new) {
            Ok(jobs) => return jobs.into_iter().map(Ok).collect(),
            Err(e) => split("submit", new.len(), &e),
        }
    }
    new.iter()
        .map(|n| Job::insert_or_existing(conn, n).map_err(|e| DbError::from(e).into()))
        .collect()
}
