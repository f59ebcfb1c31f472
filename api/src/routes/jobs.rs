//! `GET /v1/jobs/{id}`: a job's state, read from PostgreSQL (the truth), never from Redis.

use std::sync::Arc;

use serde::Serialize;
use uuid::Uuid;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use shomei_schema::{interact, Job, JobStatus};

use super::{respond, with_state};
use crate::auth::{caller, Caller};
use crate::problem::ApiError;
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("v1" / "jobs" / Uuid)
        .and(warp::get())
        .and(caller(state.db.clone()))
        .and(with_state(state))
        .then(show)
        .map(respond)
}

#[derive(Debug, Serialize)]
struct JobView {
    id: Uuid,
    kind: String,
    status: JobStatus,
    attempts: i32,
    error: Option<String>,
    document_id: Option<Uuid>,
    created_at: chrono::DateTime<chrono::Utc>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
    result: Option<serde_json::Value>,
}

async fn show(id: Uuid, caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let job = interact(&state.db, move |conn| {
        Ok(Job::find(conn, caller.tenant_id, id)?)
    })
    .await?
    .ok_or(ApiError::NotFound("job"))?;
    let view = JobView {
        id: job.id,
        status: job.status(),
        kind: job.kind,
        attempts: job.attempts,
        error: job.error,
        document_id: job.document_id,
        created_at: job.created_at,
        finished_at: job.finished_at,
        result: job.result,
    };
    Ok(warp::reply::json(&view).into_response())
}
