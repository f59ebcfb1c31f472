//! Re-queues jobs that PostgreSQL holds as unfinished but Redis no longer has: Redis keeps
//! nothing on disk here and may come back empty, and a push may have failed after the row was
//! committed. Every worker runs one; duplicate pushes are harmless (same task id).
//! Each pass also makes Redis forget the tasks apalis has finished.

use std::time::Duration;

use uuid::Uuid;

use shomei_schema::{interact, Job, JobKind};
use shomei_telemetry::metrics;

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
    let mut missing = Vec::new();
    for job in &candidates {
        let Some(kind) = job.kind() else { continue };
        if !ctx
            .queue
            .contains(kind, job.id)
            .await
            .map_err(queue_error)?
        {
            missing.push((kind, job.id));
        }
    }
    // A job can finish (and Redis forget it) between the query above and the look in Redis;
    // only those PostgreSQL still holds as unfinished after the look are really lost.
    let ids: Vec<Uuid> = missing.iter().map(|(_, id)| *id).collect();
    let lost = interact(&ctx.db, move |conn| Ok(Job::still_unfinished(conn, &ids)?)).await?;
    for (kind, id) in missing.iter().filter(|(_, id)| lost.contains(id)) {
        ctx.queue.push(*kind, *id).await.map_err(queue_error)?;
    }
    let seen: Vec<Uuid> = candidates.iter().map(|job| job.id).collect();
    interact(&ctx.db, move |conn| Ok(Job::mark_enqueued(conn, &seen)?)).await?;
    for kind in JobKind::ALL {
        ctx.queue
            .prune_finished(kind, PRUNE)
            .await
            .map_err(queue_error)?;
    }
    report_depth(ctx).await?;
    Ok(lost.len())
}

/// Publishes unfinished jobs per kind and status, the age of the oldest due one, and the HSM
/// session pool's state (also published on every checkout; this keeps it fresh when idle).
async fn report_depth(ctx: &JobContext) -> Result<(), JobError> {
    ctx.hsm.report_pool();
    let rows = interact(&ctx.db, |conn| Ok(Job::depth(conn)?)).await?;
    let now = chrono::Utc::now();
    for kind in JobKind::ALL {
        for status in ["queued", "running"] {
            let row = rows
                .iter()
                .find(|r| r.kind == kind.as_str() && r.status == status);
            metrics::QUEUE_DEPTH
                .with_label_values(&[kind.as_str(), status])
                .set(row.map_or(0, |r| r.jobs));
            if status == "queued" {
                let age = row.and_then(|r| r.oldest_due).map_or(0.0, |oldest| {
                    (now - oldest).num_milliseconds() as f64 / 1000.0
                });
                metrics::QUEUE_OLDEST_AGE
                    .with_label_values(&[kind.as_str()])
                    .set(age.max(0.0));
            }
        }
    }
    Ok(())
}

fn queue_error(e: crate::queue::QueueError) -> JobError {
    JobError::transient(e.to_string())
}
