//! Jobs: how every route queues one ([`queue_job`]), and `GET /v1/jobs/{id}`, a job's state
//! read from PostgreSQL (the truth), never from Redis; `GET /v1/jobs?ids=…`, the states of up
//! to [`IDS_MAX`] jobs in one request, for a client following many. The dead letters (jobs
//! failed for good): `GET /v1/jobs/dead` lists them, `POST /v1/jobs/{id}/retry` retries one
//! ([`shomei_jobs::dead_letters`]).

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use shomei_schema::{interact, Job, JobKind, JobStatus, NewJob};

use shomei_jobs::dead_letters::{self, Operator, Retried};

use super::{client_ip, created, respond, with_state};
use crate::auth::{authorized, Caller, Permission};
use crate::client::client_addr;
use crate::problem::ApiError;
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let dead = warp::path!("v1" / "jobs" / "dead")
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ManageJobs))
        .and(warp::query::<DeadQuery>())
        .and(with_state(state.clone()))
        .then(dead)
        .map(respond);
    let retry = warp::path!("v1" / "jobs" / Uuid / "retry")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::ManageJobs))
        .and(with_state(state.clone()))
        .and(client_addr(state.gate.clone()))
        .then(retry)
        .map(respond);
    let show = warp::path!("v1" / "jobs" / Uuid)
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ReadDocuments))
        .and(with_state(state.clone()))
        .then(show)
        .map(respond);
    let list = warp::path!("v1" / "jobs")
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ReadDocuments))
        // Read as pairs, so that an unknown or missing parameter is named in the answer.
        .and(warp::query::<Vec<(String, String)>>())
        .and(with_state(state))
        .then(list)
        .map(respond);
    dead.or(retry).unify().or(show).unify().or(list).unify()
}

/// The most jobs one `GET /v1/jobs?ids=…` asks for.
pub const IDS_MAX: usize = 100;

/// Dead letters per page by default, and at most.
const PAGE: i64 = 100;
const PAGE_MAX: i64 = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadQuery {
    kind: Option<String>,
    limit: Option<i64>,
    /// The `next_after` of the previous page.
    after: Option<Uuid>,
}

async fn dead(
    caller: Caller,
    query: DeadQuery,
    state: Arc<AppState>,
) -> Result<Response, ApiError> {
    let kind = match query.kind.as_deref() {
        None => None,
        Some(name) => Some(JobKind::parse(name).ok_or_else(|| {
            let kinds: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
            ApiError::BadRequest(format!(
                "kind must be one of {}, not {name:?}",
                kinds.join(", ")
            ))
        })?),
    };
    let limit = query.limit.unwrap_or(PAGE);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be 1 to {PAGE_MAX}"
        )));
    }
    let after = query.after;
    let jobs = interact(&state.db, move |conn| {
        Ok(Job::dead_letters(
            conn,
            caller.tenant_id,
            caller.principal(),
            kind,
            after,
            limit,
        )?)
    })
    .await?;
    // A full page may have more after it; the next page starts after its last job.
    let next_after = (jobs.len() as i64 == limit)
        .then(|| jobs.last().map(|job| job.id))
        .flatten();
    let jobs: Vec<JobView> = jobs.into_iter().map(JobView::from).collect();
    Ok(warp::reply::json(&json!({"jobs": jobs, "next_after": next_after})).into_response())
}

async fn retry(
    id: Uuid,
    caller: Caller,
    state: Arc<AppState>,
    client: Option<IpAddr>,
) -> Result<Response, ApiError> {
    let operator = Operator {
        tenant_id: caller.tenant_id,
        principal: caller.principal(),
        actor: caller.actor(),
        ip: client_ip(client),
    };
    let job = match dead_letters::retry(&state.db, &state.queue, operator, id).await? {
        Retried::Requeued(job) | Retried::AlreadyPending(job) => job,
        Retried::NotFound => return Err(ApiError::NotFound("job")),
        Retried::Succeeded => {
            return Err(ApiError::Conflict(
                "the job succeeded; there is nothing to retry".into(),
            ))
        }
        Retried::RequestStep => {
            return Err(ApiError::Conflict(
                "a signature request's sign job is not retried: its failure gave the signer \
                 their turn back, and they sign again through their link"
                    .into(),
            ))
        }
    };
    Ok(created(
        &json!({"job_id": job.id}),
        &format!("/v1/jobs/{}", job.id),
        StatusCode::ACCEPTED,
    ))
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
    // A job on a document in a folder the caller may not see is not there for it.
    let job = interact(&state.db, move |conn| {
        Ok(Job::find_visible(
            conn,
            caller.tenant_id,
            caller.principal(),
            id,
        )?)
    })
    .await?
    .ok_or(ApiError::NotFound("job"))?;
    Ok(warp::reply::json(&JobView::from(job)).into_response())
}

/// The jobs among `ids` that `GET /v1/jobs/{id}` would show, in the order asked (each once); the
/// others (unknown, another tenant's, in a folder the caller may not see) are left out, as that
/// route answers `404` for them.
async fn list(
    caller: Caller,
    query: Vec<(String, String)>,
    state: Arc<AppState>,
) -> Result<Response, ApiError> {
    let mut asked = None;
    for (name, value) in query {
        match name.as_str() {
            "ids" if asked.is_none() => asked = Some(value),
            "ids" => return Err(ApiError::BadRequest("ids: give it once".into())),
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: this route takes ids"
                )))
            }
        }
    }
    let asked = asked.ok_or_else(|| {
        ApiError::BadRequest("ids: the job ids to show, separated by commas, are missing".into())
    })?;
    // Counted before anything else: the check of each id against those before it is
    // quadratic, and a long query string must not buy that.
    let parts: Vec<&str> = asked.split(',').collect();
    if parts.len() > IDS_MAX {
        return Err(ApiError::BadRequest(format!(
            "ids: at most {IDS_MAX} jobs per request, not {}",
            parts.len()
        )));
    }
    let mut ids: Vec<Uuid> = Vec::with_capacity(parts.len());
    for part in parts {
        let id: Uuid = part
            .trim()
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("ids: {part:?} is not a job id (a UUID)")))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let asked = ids.clone();
    let mut found = interact(&state.db, move |conn| {
        Ok(Job::find_all_visible(
            conn,
            caller.tenant_id,
            caller.principal(),
            &asked,
        )?)
    })
    .await?;
    found.sort_by_key(|job| ids.iter().position(|id| *id == job.id));
    let jobs: Vec<JobView> = found.into_iter().map(JobView::from).collect();
    Ok(warp::reply::json(&json!({ "jobs": jobs })).into_response())
}

impl From<Job> for JobView {
    fn from(job: Job) -> Self {
        Self {
            id: job.id,
            status: job.status(),
            kind: job.kind,
            attempts: job.attempts,
            error: job.error,
            document_id: job.document_id,
            created_at: job.created_at,
            finished_at: job.finished_at,
            result: job.result,
        }
    }
}

/// Records and queues a job (on a document, or on the tenant's documents when `document_id`
/// is `None`): `202` with the job id, or the job an earlier request with the same
/// `Idempotency-Key` made.
pub(super) async fn queue_job(
    state: &AppState,
    caller: Caller,
    document_id: Option<Uuid>,
    kind: JobKind,
    request: serde_json::Value,
    payload: serde_json::Value,
    idempotency_key: Option<String>,
) -> Result<Response, ApiError> {
    if idempotency_key
        .as_ref()
        .is_some_and(|k| k.is_empty() || k.len() > 255)
    {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 255 characters".into(),
        ));
    }
    // The fingerprint covers what the caller asked for (`request`; the stored `payload` may be
    // sealed, which no two requests share), so the same key with another body (or on another
    // document, or for another kind of job) is told apart from a retry. It is keyed (a blind
    // index under the tenant's records key): a request can hold personal data, and a plain
    // hash of it could be confirmed by guessing.
    let key = shomei_jobs::personal::records_key(&state.keys, caller.tenant_id).await?;
    let fingerprint = key.blind_index(&format!(
        "{}\n{}\n{request}",
        kind.as_str(),
        document_id.map(|id| id.to_string()).unwrap_or_default()
    ));
    let new = NewJob {
        id: Uuid::now_v7(),
        tenant_id: caller.tenant_id,
        kind: kind.as_str(),
        document_id,
        payload,
        idempotency_key,
        request_sha256: Some(fingerprint.clone()),
        batch_id: None,
    };
    let (job, _created) = state.intake.submit(new).await?;
    if job.request_sha256.as_deref() != Some(fingerprint.as_slice()) {
        return Err(ApiError::IdempotencyKeyReused);
    }
    Ok(created(
        &json!({"job_id": job.id}),
        &format!("/v1/jobs/{}", job.id),
        StatusCode::ACCEPTED,
    ))
}
