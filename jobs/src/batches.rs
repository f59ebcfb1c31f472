//! Batches (R-OPS-1): many sign jobs accepted in one call (`POST /v1/batches`), each a job of
//! its own carrying the batch id. Once one of them has finished (its transaction committed),
//! [`settle`] asks whether the batch is done; the one call that finds it so marks it complete
//! and emits `batch.completed`, in one transaction. The question is asked after the commit, so
//! the jobs of a batch never wait for one another's transactions (a lock on the batch row
//! held until each finishing job's commit made them take turns), and of two last jobs the
//! second sees the first's commit. A worker that stops between the two steps leaves a done
//! batch open: the reconciler settles those ([`settle_forgotten`]).

use diesel::prelude::*;
use serde_json::json;
use uuid::Uuid;

use shomei_schema::{interact, Batch, Job};

use crate::context::JobContext;
use crate::events::{self, kind, NewEvent, Pending};

/// Completes `job`'s batch if that job was its last unfinished one. The runner calls it once the
/// transaction that finished the job has committed (the handler's own, or the runner's). A
/// failure is logged and left to the reconciler.
pub async fn settle(ctx: &JobContext, job: &Job) {
    let Some(batch_id) = job.batch_id else {
        return;
    };
    settle_batch(ctx, batch_id, format!("job:{}", job.id)).await;
}

/// Batches the reconciler completes per pass.
const FORGOTTEN_PER_PASS: i64 = 100;

/// Completes the batches whose jobs have all finished but that were not marked complete.
pub async fn settle_forgotten(ctx: &JobContext) -> Result<(), crate::error::JobError> {
    let open = interact(&ctx.db, |conn| {
        Ok(Batch::done_but_open(conn, FORGOTTEN_PER_PASS)?)
    })
    .await?;
    for batch_id in open {
        tracing::warn!(batch.id = %batch_id, "completing a batch its last job left open");
        settle_batch(ctx, batch_id, "reconciler".to_owned()).await;
    }
    Ok(())
}

async fn settle_batch(ctx: &JobContext, batch_id: Uuid, actor: String) {
    // Most jobs of a batch are not its last: one statement tells, without a transaction. The
    // last job to commit sees every other job's commit, so it gets past this.
    let settled = interact(&ctx.db, move |conn| {
        if Batch::has_unfinished(conn, batch_id)? {
            return Ok(Pending::default());
        }
        Ok(conn.transaction(|conn| complete_if_done(conn, batch_id, actor))?)
    })
    .await;
    match settled {
        Ok(pending) => pending.push(&ctx.queue).await,
        Err(e) => {
            tracing::warn!(batch.id = %batch_id, error = %e, "batch not settled; left to the reconciler");
        }
    }
}

fn complete_if_done(
    conn: &mut PgConnection,
    batch_id: Uuid,
    actor: String,
) -> QueryResult<Pending> {
    let Some(batch) = Batch::complete_if_done(conn, batch_id)? else {
        return Ok(Pending::default());
    };
    let counts = batch.counts(conn)?;
    let count = |wanted: &str| -> i64 {
        counts
            .iter()
            .filter(|(_, status, _)| status == wanted)
            .map(|(_, _, n)| n)
            .sum()
    };
    let seconds = (batch.completed_at.unwrap_or(batch.created_at) - batch.created_at)
        .num_milliseconds() as f64
        / 1000.0;
    events::emit(
        conn,
        NewEvent {
            tenant_id: batch.tenant_id,
            kind: kind::BATCH_COMPLETED,
            document_id: None,
            request_id: None,
            actor,
            ip: None,
            data: json!({
                "batch_id": batch.id,
                "total": batch.total,
                "succeeded": count("succeeded"),
                "failed": count("failed"),
                "seconds": seconds,
            }),
        },
    )
}
