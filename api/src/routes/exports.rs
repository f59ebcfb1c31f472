//! Bulk exports (R-DATA-5): `POST /v1/exports` with a filter queues a **bulk_download** job
//! (`shomei_jobs::export`); `GET /v1/exports/{id}` shows its progress and, once ready, a signed
//! download link per archive part; `GET /v1/exports/{id}/parts/{n}?expires=&signature=` streams
//! a part to whoever holds the link (no API key: the signature is the credential) until it
//! expires. Only keys whose role may export can start or read one.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use diesel::Connection;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;
use warp::http::{header, StatusCode};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use shomei_jobs::export::{link_signature, link_signature_ok, ExportJob, Part};
use shomei_jobs::Pending;
use shomei_schema::{interact, DocumentFilter, Export, Job, JobKind, NewJob};

use super::{created, json_body, respond, with_state};
use crate::auth::{authorized, Caller, Permission};
use crate::problem::ApiError;
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let create = warp::path!("v1" / "exports")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::Export))
        .and(with_state(state.clone()))
        .and(json_body(1024 * 1024))
        .then(create)
        .map(respond);
    let show = warp::path!("v1" / "exports" / Uuid)
        .and(warp::get())
        .and(authorized(state.clone(), Permission::Export))
        .and(with_state(state.clone()))
        .then(show)
        .map(respond);
    let download = warp::path!("v1" / "exports" / Uuid / "parts" / u32)
        .and(warp::get())
        .and(with_state(state))
        .and(warp::query::<LinkQuery>())
        .then(download)
        .map(respond);
    create.or(show).unify().or(download).unify()
}

async fn create(
    caller: Caller,
    state: Arc<AppState>,
    filter: DocumentFilter,
) -> Result<Response, ApiError> {
    filter.check().map_err(ApiError::BadRequest)?;
    let export_id = Uuid::now_v7();
    let job = NewJob {
        id: Uuid::now_v7(),
        tenant_id: caller.tenant_id,
        kind: JobKind::BulkDownload.as_str(),
        document_id: None,
        payload: json!(ExportJob { export_id }),
        idempotency_key: None,
        request_sha256: None,
        batch_id: None,
    };
    let export = Export {
        id: export_id,
        tenant_id: caller.tenant_id,
        job_id: job.id,
        filter: json!(filter),
        status: "queued".into(),
        total: 0,
        done: 0,
        parts: json!([]),
        expires_at: None,
        created_by: caller.actor(),
        created_at: Utc::now(),
        finished_at: None,
        principal_id: Some(caller.principal()),
    };
    let queued = interact(&state.db, move |conn| {
        // Another tenant's ids are refused outright, never silently left out.
        if let Some(ids) = &filter.ids {
            if !DocumentFilter::foreign_ids(conn, caller.tenant_id, caller.principal(), ids)?
                .is_empty()
            {
                return Ok(None);
            }
        }
        Ok(Some(conn.transaction(|conn| {
            let jobs = Job::insert_all(conn, &[job])?;
            export.insert(conn)?;
            diesel::QueryResult::Ok((export, jobs))
        })?))
    })
    .await?;
    let Some((export, jobs)) = queued else {
        return Err(ApiError::NotFound("document (one or more ids in the list)"));
    };
    Pending::jobs(jobs).push(&state.queue).await;
    Ok(created(
        &json!({"export_id": export.id, "job_id": export.job_id, "status": export.status}),
        &format!("/v1/exports/{}", export.id),
        StatusCode::ACCEPTED,
    ))
}

#[derive(Debug, Serialize)]
struct ExportView {
    id: Uuid,
    job_id: Uuid,
    status: String,
    filter: serde_json::Value,
    total: i32,
    done: i32,
    parts: Vec<PartView>,
    expires_at: Option<DateTime<Utc>>,
    expired: bool,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize)]
struct PartView {
    part: u32,
    documents: u32,
    size_bytes: u64,
    /// Absent once the links have expired.
    url: Option<String>,
}

async fn show(id: Uuid, caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let export = interact(&state.db, move |conn| {
        Ok(Export::find(conn, caller.tenant_id, id)?)
    })
    .await?
    .ok_or(ApiError::NotFound("export"))?;
    let parts: Vec<Part> = serde_json::from_value(export.parts.clone()).unwrap_or_default();
    let expired = export.expires_at.is_some_and(|t| t <= Utc::now());
    let key = state.link_key.expose_secret();
    let view = ExportView {
        parts: parts
            .iter()
            .map(|p| PartView {
                part: p.part,
                documents: p.documents,
                size_bytes: p.size_bytes,
                url: export.expires_at.filter(|_| !expired).map(|expires| {
                    format!(
                        "{}/v1/exports/{}/parts/{}?expires={}&signature={}",
                        state.public_url,
                        export.id,
                        p.part,
                        expires.timestamp(),
                        link_signature(key, export.id, p.part, expires)
                    )
                }),
            })
            .collect(),
        id: export.id,
        job_id: export.job_id,
        status: export.status,
        filter: export.filter,
        total: export.total,
        done: export.done,
        expires_at: export.expires_at,
        expired,
        created_at: export.created_at,
        finished_at: export.finished_at,
    };
    Ok(warp::reply::json(&view).into_response())
}

#[derive(Debug, Deserialize)]
struct LinkQuery {
    expires: i64,
    signature: String,
}

async fn download(
    id: Uuid,
    part: u32,
    state: Arc<AppState>,
    link: LinkQuery,
) -> Result<Response, ApiError> {
    let expires = DateTime::from_timestamp(link.expires, 0)
        .ok_or_else(|| ApiError::BadRequest("expires is not a time".into()))?;
    if !link_signature_ok(
        state.link_key.expose_secret(),
        id,
        part,
        expires,
        &link.signature,
    ) {
        return Err(ApiError::Forbidden(
            "the download link is not valid (altered, or signed by another deployment)".into(),
        ));
    }
    if expires <= Utc::now() {
        return Err(ApiError::Gone(
            "the download link has expired; start a new export".into(),
        ));
    }
    let export = interact(&state.db, move |conn| Ok(Export::get(conn, id)?)).await?;
    let parts: Vec<Part> = serde_json::from_value(export.parts).unwrap_or_default();
    let part = parts
        .into_iter()
        .find(|p| p.part == part)
        .ok_or(ApiError::NotFound("export part"))?;
    let (size, stream) = state
        .storage
        .stream(&part.key)
        .await
        .map_err(anyhow::Error::from)?;
    let mut response = warp::reply::stream(super::body_stream(stream)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        "application/zip".parse().expect("valid"),
    );
    headers.insert(header::CONTENT_LENGTH, size.into());
    let disposition = format!(
        "attachment; filename=\"shomei-export-{id}-part-{}.zip\"",
        part.part
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        disposition.parse().map_err(anyhow::Error::from)?,
    );
    Ok(response)
}
