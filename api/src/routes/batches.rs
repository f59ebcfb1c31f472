//! Batches (R-OPS-1): `POST /v1/batches` accepts up to 10,000 sign (or sign-and-conclude)
//! items in one call: every item is checked, the batch and all its jobs are written in one
//! transaction (one multi-row insert), then pushed. `GET /v1/batches/{id}` counts its jobs per
//! status and reports documents/s; `batch.completed` fires when the last job finishes
//! (`shomei_jobs::batches`).

use std::sync::Arc;

use chrono::Utc;
use diesel::Connection;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use shomei_jobs::sign::SignRequest;
use shomei_jobs::Pending;
use shomei_schema::{interact, Batch, DocumentFilter, Job, JobKind, NewJob, Tenant};

use super::{created, json_body, respond, with_state};
use crate::auth::{authorized, Caller, Permission};
use crate::problem::ApiError;
use crate::AppState;

/// Items one batch may hold.
const MAX_ITEMS: usize = 10_000;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let create = warp::path!("v1" / "batches")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::Sign))
        .and(with_state(state.clone()))
        .and(json_body(16 * 1024 * 1024))
        .then(create)
        .map(respond);
    let show = warp::path!("v1" / "batches" / Uuid)
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ReadDocuments))
        .and(with_state(state))
        .then(show)
        .map(respond);
    create.or(show).unify()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    items: Vec<Item>,
}

/// One item: a document and the sign request for it (`conclude: true` also concludes it).
/// Unknown fields are refused when the rest is read as a `SignRequest`.
#[derive(Debug, Deserialize)]
struct Item {
    document_id: Uuid,
    #[serde(flatten)]
    sign: serde_json::Map<String, serde_json::Value>,
}

async fn create(
    caller: Caller,
    state: Arc<AppState>,
    body: BatchBody,
) -> Result<Response, ApiError> {
    if body.items.is_empty() || body.items.len() > MAX_ITEMS {
        return Err(ApiError::BadRequest(format!(
            "items must list 1 to {MAX_ITEMS} sign requests"
        )));
    }
    let mut requests = Vec::with_capacity(body.items.len());
    for (i, item) in body.items.iter().enumerate() {
        let request: SignRequest =
            serde_json::from_value(serde_json::Value::Object(item.sign.clone()))
                .map_err(|e| ApiError::BadRequest(format!("items[{i}]: {e}")))?;
        request
            .validate()
            .map_err(|e| ApiError::BadRequest(format!("items[{i}]: {e}")))?;
        if request.step.is_some() {
            return Err(ApiError::BadRequest(format!(
                "items[{i}]: unknown field `step`"
            )));
        }
        requests.push((item.document_id, request));
    }
    let ids: Vec<Uuid> = requests.iter().map(|(id, _)| *id).collect();
    let batch_id = Uuid::now_v7();
    let created_by = caller.actor();
    let key = shomei_jobs::personal::records_key(&state.keys, caller.tenant_id).await?;
    let accepted = interact(&state.db, move |conn| {
        if !DocumentFilter::foreign_ids(conn, caller.tenant_id, caller.principal(), &ids)?
            .is_empty()
        {
            return Ok(None);
        }
        let tenant = Tenant::get(conn, caller.tenant_id)?;
        let default_level = tenant.signature_level.parse().ok();
        let jobs: Vec<NewJob> = requests
            .into_iter()
            .map(|(document_id, mut request)| {
                // Resolved now, as for single sign requests.
                request.level = request.level.or(default_level);
                NewJob {
                    id: Uuid::now_v7(),
                    tenant_id: caller.tenant_id,
                    kind: JobKind::Sign.as_str(),
                    document_id: Some(document_id),
                    payload: request.to_payload(&key),
                    batch_id: Some(batch_id),
                    ..NewJob::default()
                }
            })
            .collect();
        let batch = Batch {
            id: batch_id,
            tenant_id: caller.tenant_id,
            total: jobs.len() as i32,
            created_by,
            created_at: Utc::now(),
            completed_at: None,
        };
        Ok(Some(conn.transaction(|conn| {
            batch.insert(conn)?;
            let queued = Job::insert_all(conn, &jobs)?;
            diesel::QueryResult::Ok((batch, queued))
        })?))
    })
    .await?;
    let Some((batch, jobs)) = accepted else {
        return Err(ApiError::NotFound(
            "document (one or more ids in the batch)",
        ));
    };
    let job_ids: Vec<Uuid> = jobs.iter().map(|(_, id)| *id).collect();
    Pending::jobs(jobs).push(&state.queue).await;
    Ok(created(
        &json!({"batch_id": batch.id, "total": batch.total, "job_ids": job_ids}),
        &format!("/v1/batches/{}", batch.id),
        StatusCode::ACCEPTED,
    ))
}

#[derive(Debug, Serialize)]
struct BatchView {
    id: Uuid,
    total: i32,
    /// Jobs per status (sign jobs and the conclusions they queued).
    jobs: serde_json::Map<String, serde_json::Value>,
    documents_signed: i64,
    created_at: chrono::DateTime<Utc>,
    completed_at: Option<chrono::DateTime<Utc>>,
    /// Signed documents per second from submission to completion (or to now).
    documents_per_second: f64,
}

async fn show(id: Uuid, caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let (batch, counts) = interact(&state.db, move |conn| {
        let Some(batch) = Batch::find(conn, caller.tenant_id, id)? else {
            return Ok(None);
        };
        let counts = batch.counts(conn)?;
        Ok(Some((batch, counts)))
    })
    .await?
    .ok_or(ApiError::NotFound("batch"))?;
    let mut jobs = serde_json::Map::new();
    for status in ["queued", "running", "succeeded", "failed"] {
        let n: i64 = counts
            .iter()
            .filter(|(_, s, _)| s == status)
            .map(|(_, _, n)| n)
            .sum();
        jobs.insert(status.to_owned(), json!(n));
    }
    let signed: i64 = counts
        .iter()
        .filter(|(kind, status, _)| kind == "sign" && status == "succeeded")
        .map(|(_, _, n)| n)
        .sum();
    let end = batch.completed_at.unwrap_or_else(Utc::now);
    let seconds = ((end - batch.created_at).num_milliseconds() as f64 / 1000.0).max(0.001);
    let view = BatchView {
        id: batch.id,
        total: batch.total,
        jobs,
        documents_signed: signed,
        created_at: batch.created_at,
        completed_at: batch.completed_at,
        documents_per_second: signed as f64 / seconds,
    };
    Ok(warp::reply::json(&view).into_response())
}
