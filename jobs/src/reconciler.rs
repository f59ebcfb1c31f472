//! Re-queues jobs that PostgreSQL holds as unfinished but Redis no longer has: Redis keeps
//! nothing on disk here and may come back empty, and a push may have failed after the row was
//! committed. Every worker runs one; duplicate pushes are harmless (same task id).
//! Each pass also makes Redis forget the tasks apalis has finished, and completes the batches
//! whose last job's worker stopped before completing them ([`crate::batches::settle_forgotten`]).
//!
//! Each pass first sweeps: a job still `running` `timeout + grace` after its run started
//! ([`JobContext::timeout`]) was left by a worker that died or hung (the runner cancels its own
//! runs at the timeout). It goes back to `queued`, its attempt counted, and is pushed; or, with
//! its attempts spent, it fails with the reason. One `UPDATE … RETURNING` claims the jobs, so
//! however many workers sweep at once, each job is taken back once.

use std::time::Duration;

use uuid::Uuid;

use diesel::Connection;

use shomei_schema::{interact, Job, JobKind};
use shomei_telemetry::metrics;

use crate::context::JobContext;
use crate::error::JobError;
use crate::events::Pending;

/// What the sweeper did with a job running past its timeout (`shomei_jobs_swept_total`).
const SWEEP_OUTCOMES: [&str; 2] = ["requeued", "failed"];

/// Jobs checked per pass; the oldest first, so a large backlog is worked through in turns.
const BATCH: i64 = 500;

/// Runs passes every `every` until the task is dropped.
pub async fn run(ctx: std::sync::Arc<JobContext>, every: Duration) {
    // Every kind's sweep counters are exposed from the start, at zero: the dashboard's panel
    // has a series to show and `increase()` counts the first sweep.
    for kind in JobKind::ALL {
        for outcome in SWEEP_OUTCOMES {
            metrics::JOBS_SWEPT.with_label_values(&[kind.as_str(), outcome]);
        }
    }
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
    sweep(ctx).await?;
    crate::batches::settle_forgotten(ctx).await?;
    let cutoff = chrono::Utc::now() - grace;
    let candidates = interact(&ctx.db, move |conn| {
        Ok(Job::unfinished_enqueued_before(conn, cutoff, BATCH)?)
    })
    .await?;
    let known: Vec<(JobKind, Uuid)> = candidates
        .iter()
        .filter_map(|job| Some((job.kind()?, job.id)))
        .collect();
    let in_redis = ctx.queue.contains_all(&known).await.map_err(queue_error)?;
    let missing: Vec<(JobKind, Uuid)> = known
        .into_iter()
        .zip(in_redis)
        .filter_map(|(job, found)| (!found).then_some(job))
        .collect();
    // A job can finish (and Redis forget it) between the query above and the look in Redis;
    // only those PostgreSQL still holds as unfinished after the look are really lost.
    let ids: Vec<Uuid> = missing.iter().map(|(_, id)| *id).collect();
    let lost = interact(&ctx.db, move |conn| Ok(Job::still_unfinished(conn, &ids)?)).await?;
    for (kind, id) in missing.iter().filter(|(_, id)| lost.contains(id)) {
        ctx.queue.push(*kind, *id).await.map_err(queue_error)?;
    }
    let seen: Vec<Uuid> = candidates.iter().map(|job| job.id).collect();
    // Marked where no worker holds the row; the others are looked at again next pass.
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

/// Takes back the jobs whose runs outlived their timeout by the grace (see the module's
/// comment). Returns how many.
pub async fn sweep(ctx: &JobContext) -> Result<usize, JobError> {
    let mut swept = 0;
    for kind in JobKind::ALL {
        let limit = ctx.timeout(kind) + ctx.sweep_grace;
        let started_before = chrono::Utc::now()
            - chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::days(365));
        let cap = ctx.attempt_cap(kind);
        let reason = format!(
            "the run started more than {} s before and never finished: the worker running it \
             stopped or hung",
            limit.as_secs()
        );
        let (requeued, failed, pending) = interact(&ctx.db, move |conn| {
            Ok(conn.transaction(|conn| {
                let mut requeued = Vec::new();
                let mut failed = 0;
                let mut pending = Pending::default();
                for job in Job::release_stuck(conn, kind, started_before, &reason)? {
                    if job.attempts < cap {
                        requeued.push(job.id);
                        continue;
                    }
                    let reason = format!("gave up after {} attempts: {reason}", job.attempts);
                    pending.add(crate::registry::on_failed(conn, &job, &reason)?);
                    failed += 1;
                }
                diesel::QueryResult::Ok((requeued, failed, pending))
            })?)
        })
        .await?;
        pending.push(&ctx.queue).await;
        for id in &requeued {
            if let Err(e) = ctx.queue.requeue(kind, *id).await {
                tracing::warn!(job.id = %id, error = %e, "queue push failed; left to the reconciler");
            }
        }
        if requeued.is_empty() && failed == 0 {
            continue;
        }
        tracing::warn!(
            job.kind = kind.as_str(),
            jobs.requeued = requeued.len(),
            jobs.failed = failed,
            "took back jobs running past their timeout"
        );
        for (outcome, n) in SWEEP_OUTCOMES.into_iter().zip([requeued.len(), failed]) {
            metrics::JOBS_SWEPT
                .with_label_values(&[kind.as_str(), outcome])
                .inc_by(n as u64);
        }
        swept += requeued.len() + failed;
    }
    Ok(swept)
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
