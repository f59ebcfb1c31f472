//! Re-queues jobs that PostgreSQL holds as unfinished but Redis no longer has: Redis keeps
//! nothing on disk here and may come back empty, and a push may have failed after the row was
//! committed. Every worker runs one; duplicate pushes are harmless (same task id).
//! Each pass also makes Redis forget the tasks apalis has finished.

use std::time::Duration;

use shomei_schema::{interact, Job, JobKind};

use crate::context::JobContext;
use crate::error::JobError;

/// Jobs checked per pass; the oldest first, so a large backlog is worked through in turns.
const BATCH: i64 = 500;

/// Runs passes every `every` until the task is dropped.
pub async fn run(ctx: std::sync::Arc<JobContext>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match pass(&ctx, every).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs.requeued = n, "re-queued jobs missing from Redis"),
            Err(e) => tracing::warn!(error = %e, "reconciler pass failed; will try again"),
        }
    }
}

/// Finished apalis tasks forgotten per kind and pass.
const PRUNE: usize = 5_000;

/// One pass: every unfinished job not confirmed in Redis for `grace` is checked, and pushed
/// again when Redis does not know it. Returns how many were pushed.
pub async fn pass(ctx: &JobContext, grace: Duration) -> Result<usize, JobError> {
    let cutoff = chrono::Utc::now() - grace;
    let candidates = interact(&ctx.db, move |conn| {
        Ok(Job::unfinished_enqueued_before(conn, cutoff, BATCH)?)
    })
    .await?;
    let mut requeued = 0;
    for job in candidates {
        let Some(kind) = job.kind() else { continue };
        let present = ctx
            .queue
            .contains(kind, job.id)
            .await
            .map_err(queue_error)?;
        if !present {
            ctx.queue.push(kind, job.id).await.map_err(queue_error)?;
            requeued += 1;
        }
        let id = job.id;
        interact(&ctx.db, move |conn| Ok(Job::mark_enqueued(conn, id)?)).await?;
    }
    for kind in JobKind::ALL {
        ctx.queue
            .prune_finished(kind, PRUNE)
            .await
            .map_err(queue_error)?;
    }
    Ok(requeued)
}

fn queue_error(e: crate::queue::QueueError) -> JobError {
    JobError::transient(e.to_string())
}
