//! Periodic work every worker does besides jobs: sealing the chained logs (every tick) and the
//! scheduled tasks (anchoring the logs, retention purges), each run once per period across
//! all workers.
//!
//! A task's schedule is its `scheduled_tasks` row, not a timer in a process. A worker runs a
//! task only when its claim, one atomic UPDATE that moves `next_run_at` a period ahead,
//! returns the row: claims racing for one row are serialised by PostgreSQL, and the loser
//! re-reads the moved `next_run_at` and finds the task not due. So a run happens once however
//! many workers are up, and restarts neither reset nor skip the schedule: a purge that fell
//! due while every worker was down runs at the first tick of the first worker back, and no
//! restart makes it run early. A run longer than its period cannot overlap the next one
//! harmfully: purges hold the log's advisory lock and anchors are keyed by log and seq. A
//! worker that dies mid-run leaves the rest to the next period; every step is its own,
//! idempotent transaction.
//!
//! An advisory lock alone would not do for scheduled tasks: it keeps two runs from overlapping,
//! not a second worker from running the task again a moment after the first finished. Sealing
//! is not scheduled: every worker tries at every tick, and the holder of a log's advisory lock
//! seals it (see [`crate::ledger`]).

use std::time::Duration;

use tracing::Instrument;

use shomei_schema::{interact, ScheduledTask};

use crate::context::JobContext;
use crate::error::chain;
use crate::ledger;

/// How often a worker seals and looks for due tasks.
pub const TICK: Duration = Duration::from_secs(1);
/// Retention purges run daily.
pub const PURGE_EVERY: Duration = Duration::from_secs(24 * 3600);
/// A failed run is tried again after this (or its period, if shorter).
const RETRY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Time-stamp each log's newest entry (`SHOMEI_LOG_ANCHOR_SECS`).
    AnchorLogs,
    /// Delete log entries past retention (daily).
    PurgeLogs,
}

impl Task {
    pub const ALL: [Task; 2] = [Task::AnchorLogs, Task::PurgeLogs];

    /// The task's `scheduled_tasks.name`.
    pub fn name(self) -> &'static str {
        match self {
            Task::AnchorLogs => "log_anchor",
            Task::PurgeLogs => "log_purge",
        }
    }

    fn every(self, ctx: &JobContext) -> Duration {
        match self {
            Task::AnchorLogs => ctx.logs.anchor_every,
            Task::PurgeLogs => PURGE_EVERY,
        }
    }
}

/// Ticks until the task is dropped.
pub async fn run(ctx: std::sync::Arc<JobContext>) {
    if !ctx.concludes_with_timestamp() {
        tracing::warn!("no TSA configured (SHOMEI_TSA_URLS): the logs are sealed but not anchored");
    }
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        tick(&ctx).await;
    }
}

/// One tick: seal, then run whatever task is due and claimed by this worker.
pub async fn tick(ctx: &JobContext) {
    match interact(&ctx.db, |conn| Ok(ledger::seal_all(conn)?)).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(ledger.sealed = n, "log entries sealed"),
        Err(e) => tracing::warn!(error = %chain(&e), "sealing the logs failed; will try again"),
    }
    for task in Task::ALL {
        let span = tracing::info_span!("task", task.name = task.name());
        if let Err(e) = run_if_due(ctx, task).instrument(span).await {
            tracing::warn!(task.name = task.name(), error = %e, "scheduled task failed; will try again");
        }
    }
}

async fn run_if_due(ctx: &JobContext, task: Task) -> Result<(), String> {
    let name = task.name();
    let every = task.every(ctx);
    let claimed = interact(&ctx.db, move |conn| {
        Ok(ScheduledTask::claim(conn, name, every)?)
    })
    .await
    .map_err(|e| chain(&e))?;
    if !claimed {
        return Ok(());
    }
    let outcome = match task {
        Task::AnchorLogs => match ctx.timestamper() {
            Err(e) => Err(e.to_string()),
            Ok(timestamper) => interact(&ctx.db, move |conn| {
                Ok(ledger::anchor_all(conn, timestamper.as_ref()))
            })
            .await
            .map_err(|e| chain(&e))
            .and_then(|r| r.map_err(|e| chain(&e)))
            .map(|anchored| {
                if !anchored.is_empty() {
                    tracing::debug!(?anchored, "logs anchored");
                }
            }),
        },
        Task::PurgeLogs => {
            let config = ctx.logs.clone();
            interact(&ctx.db, move |conn| Ok(ledger::purge_all(conn, &config)?))
                .await
                .map_err(|e| chain(&e))
                .map(|purges| {
                    tracing::info!(purges = purges.len(), "retention purge done");
                })
        }
    };
    let error = outcome.as_ref().err().cloned();
    interact(&ctx.db, move |conn| {
        Ok(ScheduledTask::finished(
            conn,
            name,
            error.as_deref(),
            RETRY.min(every),
        )?)
    })
    .await
    .map_err(|e| chain(&e))?;
    outcome
}
