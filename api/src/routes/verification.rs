//! Verification reports (R-VERIFY-1): `POST /v1/verify` checks a PDF given in the body,
//! `GET /v1/documents/{id}/verification` the latest revision of a stored document. Each report
//! covers every signature and document time-stamp: integrity, coverage and what later
//! revisions changed, the chain to the configured trust anchors, time-stamps, and the PAdES level.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use uuid::Uuid;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use shomei_schema::JobKind;
use shomei_signing::VerificationReport;

use super::documents::{body_within, find_document};
use super::jobs::queue_job;
use super::{respond, with_state};
use crate::auth::{authorized, Caller, Permission};
use crate::problem::ApiError;
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let upload = warp::path!("v1" / "verify")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::ReadDocuments))
        .and(with_state(state.clone()))
        .and(body_within(state.max_upload_bytes))
        .then(verify_upload)
        .map(respond);
    let stored = warp::path!("v1" / "documents" / Uuid / "verification")
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ReadDocuments))
        .and(with_state(state.clone()))
        .then(verify_stored)
        .map(respond);
    let bulk = warp::path!("v1" / "verifications")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::ManageDocuments))
        .and(with_state(state))
        .and(warp::header::optional::<String>("idempotency-key"))
        .then(verify_all)
        .map(respond);
    upload.or(stored).unify().or(bulk).unify()
}

/// Queues a **verify** job over every document of the tenant; its result counts valid,
/// invalid and changed documents, and a report per document is recorded.
async fn verify_all(
    caller: Caller,
    state: Arc<AppState>,
    idempotency_key: Option<String>,
) -> Result<Response, ApiError> {
    queue_job(
        &state,
        caller,
        None,
        JobKind::Verify,
        json!({}),
        json!({}),
        idempotency_key,
    )
    .await
}

async fn verify(state: &AppState, pdf: Bytes) -> Result<VerificationReport, ApiError> {
    let anchors = state.trust_anchors.clone();
    let report = tokio::task::spawn_blocking(move || shomei_signing::verify_pdf(&pdf, &anchors))
        .await
        .map_err(anyhow::Error::from)??;
    Ok(report)
}

async fn verify_upload(
    _caller: Caller,
    state: Arc<AppState>,
    pdf: Bytes,
) -> Result<Response, ApiError> {
    let report = verify(&state, pdf).await?;
    Ok(warp::reply::json(&report).into_response())
}

async fn verify_stored(
    id: Uuid,
    caller: Caller,
    state: Arc<AppState>,
) -> Result<Response, ApiError> {
    let (doc, latest) = find_document(&state, caller, id).await?;
    let pdf = state
        .storage
        .get_verified(&latest.storage_key, &latest.sha256)
        .await
        .map_err(anyhow::Error::from)?;
    let report = verify(&state, pdf).await?;
    Ok(warp::reply::json(&json!({
        "document_id": doc.id,
        "revision": latest.revision,
        "sha256": hex::encode(&latest.sha256),
        "report": report,
    }))
    .into_response())
}
