//! The one apalis handler every queue runs: it claims the job row, dispatches to the kind's
//! handler and records the outcome in PostgreSQL before apalis acknowledges the message.
//!
//! Delivery is at least once (apalis re-runs a dead worker's jobs), so a finished job arriving
//! again is acknowledged without work. Attempts are counted in PostgreSQL when a run starts, so
//! a job that kills its worker every time still reaches the cap. apalis-redis reschedules any
//! failed task up to 25 times whatever its retry policy says, so giving up is done here, by
//! answering with `AbortError`.

use std::sync::Arc;

use apalis::prelude::{AbortError, BoxDynError, Data};
use futures::FutureExt;
use tracing::Instrument;

use shomei_schema::{interact, Job, JobStatus};
use shomei_telemetry::metrics;

use crate::context::JobContext;
use crate::error::JobError;
use crate::events::Pending;
use crate::group_commit::{Claimed, Record};
use crate::queue::JobMessage;
use crate::registry::{dispatch, Done};

pub async fn handle(message: JobMessage, ctx: Data<Arc<JobContext>>) -> Result<(), BoxDynError> {
    let span =
        tracing::info_span!("job", job.id = %message.job_id, job.kind = tracing::field::Empty);
    run(message, (*ctx).clone()).instrument(span).await
}

async fn run(message: JobMessage, ctx: Arc<JobContext>) -> Result<(), BoxDynError> {
    let job_id = message.job_id;
    let Some(Claimed {
        job,
        starting_revision,
    }) = ctx.group_commit.start(job_id).await?
    else {
        tracing::info!("job already finished; duplicate delivery acknowledged");
        return Ok(());
    };
    tracing::Span::current().record("job.kind", job.kind.as_str());
    let kind_label = job.kind.clone();
    if job.attempts == 1 {
        let waited = (chrono::Utc::now() - job.created_at)
            .to_std()
            .unwrap_or_default();
        metrics::JOB_QUEUE_WAIT
            .with_label_values(&[&kind_label])
            .observe(waited.as_secs_f64());
    }
    let Some(kind) = job.kind() else {
        return finish_failed(&ctx, &job, format!("unknown job kind {:?}", job.kind)).await;
    };
    if job.attempts > ctx.attempt_cap(kind) {
        let reason = format!(
            "gave up after {} attempts; last error: {}",
            job.attempts - 1,
            job.error
                .as_deref()
                .unwrap_or("the worker stopped while running it")
        );
        return finish_failed(&ctx, &job, reason).await;
    }

    // A panic in a handler is a bug for this input: fail the job with it, do not loop.
    // A run past the kind's timeout is cancelled (the handler's future dropped: it stops at
    // its next await; blocking work it handed to a thread finishes there, unseen) and counts
    // as a transient failure. Handlers are idempotent: whatever a cancelled run got as far as
    // recording (a transaction handed to a blocking thread still commits), the next run finds.
    let timer = metrics::JOB_DURATION
        .with_label_values(&[&kind_label])
        .start_timer();
    let limit = ctx.timeout(kind);
    let run =
        std::panic::AssertUnwindSafe(dispatch(kind, &ctx, &job, starting_revision)).catch_unwind();
    let (outcome, timed_out) = match tokio::time::timeout(limit, run).await {
        Ok(finished) => (
            finished.unwrap_or_else(|_| Err(JobError::permanent("the handler panicked"))),
            false,
        ),
        // The cancelled run's transaction, on its blocking thread, may have recorded the
        // result and marked the job succeeded already: then the run did succeed.
        Err(_) if succeeded_meanwhile(&ctx, &job).await => (Ok(Done::Recorded), true),
        Err(_) => (
            Err(JobError::transient(format!(
                "the run took longer than the {} job timeout of {} s and was cancelled",
                kind.as_str(),
                limit.as_secs_f64()
            ))),
            true,
        ),
    };
    timer.observe_duration();
    let (outcome_label, reason_label) = match &outcome {
        Ok(_) => ("succeeded", None),
        Err(JobError::Permanent(_)) => ("failed", Some("permanent")),
        Err(JobError::Transient(_)) if job.attempts >= ctx.attempt_cap(kind) => {
            ("failed", Some("gave_up"))
        }
        Err(_) if timed_out => ("retried", Some("timeout")),
        Err(_) => ("retried", Some("transient")),
    };
    metrics::JOBS_FINISHED
        .with_label_values(&[&kind_label, outcome_label])
        .inc();
    if let Some(reason) = reason_label {
        metrics::JOB_FAILURES
            .with_label_values(&[&kind_label, reason])
            .inc();
    }

    match outcome {
        Ok(done) => {
            if let Done::Result(result) = done {
                // A plain success has no event: nothing is left pending.
                let _ = ctx
                    .group_commit
                    .record(Record {
                        revision: None,
                        event: None,
                        work: Box::new(|_| Ok(Pending::default())),
                        succeeded: Some((job_id, result)),
                    })
                    .await?;
            }
            // Committed either way (here, or in the handler's own transaction).
            crate::batches::settle(&ctx, &job).await;
            tracing::info!(job.attempts = job.attempts, "job succeeded");
            Ok(())
        }
        Err(JobError::Permanent(reason)) => finish_failed(&ctx, &job, reason).await,
        Err(JobError::Transient(reason)) if job.attempts >= ctx.attempt_cap(kind) => {
            finish_failed(
                &ctx,
                &job,
                format!("gave up after {} attempts: {reason}", job.attempts),
            )
            .await
        }
        Err(JobError::Later { reason, after }) => {
            // Not pushed again now: the reconciler pushes the job once `run_after` has come,
            // so the wait survives restarts and Redis losing everything.
            tracing::warn!(job.attempts = job.attempts, error = %reason, retry_in = ?after, "job failed; will retry later");
            let run_after = chrono::Utc::now()
                + chrono::Duration::from_std(after).unwrap_or(chrono::Duration::days(1));
            interact(&ctx.db, move |conn| {
                Ok(Job::release_until(conn, job_id, &reason, run_after)?)
            })
            .await?;
            Ok(())
        }
        Err(JobError::Transient(reason)) => {
            tracing::warn!(job.attempts = job.attempts, error = %reason, "job failed; will retry");
            let recorded = reason.clone();
            interact(&ctx.db, move |conn| {
                Ok(Job::release_after_error(conn, job_id, &recorded)?)
            })
            .await?;
            Err(reason.into())
        }
    }
}

/// Marks the job failed for good (with its `job.failed` event, in one transaction) and tells
/// apalis not to retry it.
async fn finish_failed(ctx: &JobContext, job: &Job, reason: String) -> Result<(), BoxDynError> {
    tracing::error!(job.attempts = job.attempts, error = %reason, "job failed permanently");
    let failed = job.clone();
    let recorded = reason.clone();
    let pending = ctx
        .group_commit
        .record(Record::work(Box::new(move |conn| {
            crate::registry::on_failed(conn, &failed, &recorded)
        })))
        .await?;
    pending.push(&ctx.queue).await;
    crate::batches::settle(ctx, job).await;
    Err(AbortError::new(JobError::Permanent(reason)).into())
}

/// Whether the job is recorded as succeeded (a cancelled run's transaction marked it); `false`
/// when it is not (the sweeper may have failed it meanwhile) or the database cannot say, so
/// the run counts as timed out and apalis delivers it again (a finished job is then
/// acknowledged without work).
async fn succeeded_meanwhile(ctx: &JobContext, job: &Job) -> bool {
    let (tenant_id, job_id) = (job.tenant_id, job.id);
    interact(&ctx.db, move |conn| Ok(Job::find(conn, tenant_id, job_id)?))
        .await
        .is_ok_and(|found| found.is_some_and(|j| j.status == JobStatus::Succeeded.as_str()))
}
