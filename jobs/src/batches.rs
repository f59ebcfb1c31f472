//! Batches (R-OPS-1): many sign jobs accepted in one call (`POST /v1/batches`), each a job of
//! its own carrying the batch id. When the last job of a batch finishes, in the transaction
//! that finishes it, the batch is marked complete and `batch.completed` is emitted; the batch
//! row is locked there, so of two last jobs finishing at once exactly one completes it.

use diesel::prelude::*;
use serde_json::json;

use shomei_schema::{Batch, Job};

use crate::events::{self, kind, NewEvent, Pending};

/// Call in the transaction that marks `job` finished.
pub fn job_finished(conn: &mut PgConnection, job: &Job) -> QueryResult<Pending> {
    let Some(batch_id) = job.batch_id else {
        return Ok(Pending::default());
    };
    let mut batch = Batch::lock(conn, batch_id)?;
    if batch.completed_at.is_some() {
        return Ok(Pending::default());
    }
    let counts = batch.counts(conn)?;
    let unfinished = counts
        .iter()
        .any(|(_, status, n)| *n > 0 && (status == "queued" || status == "running"));
    if unfinished {
        return Ok(Pending::default());
    }
    batch.complete(conn)?;
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
            actor: format!("job:{}", job.id),
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
