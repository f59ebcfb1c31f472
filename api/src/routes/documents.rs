//! Documents: upload (`POST /v1/documents`), metadata, the latest PDF, and queueing a signature
//! (`POST /v1/documents/{id}/sign`).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use uuid::Uuid;
use warp::http::{header, StatusCode};
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use diesel::Connection;
use shomei_jobs::deletion::DeletionJob;
use shomei_jobs::events::{self, kind, NewEvent};
use shomei_jobs::personal;
use shomei_jobs::sign::SignRequest;
use shomei_schema::models::deletion;
use shomei_schema::models::NewDocument;
use shomei_schema::{interact, Document, JobKind, Revision};

use super::jobs::queue_job;
use super::{created, json_body, respond, with_state};
use crate::auth::{authorized, Caller, Permission};
use crate::client::client_addr;
use crate::problem::ApiError;
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let limit = state.max_upload_bytes;

    let upload = warp::path!("v1" / "documents")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::Upload))
        .and(with_state(state.clone()))
        .and(client_addr(state.gate.clone()))
        .and(warp::query::<UploadQuery>())
        .and(body_within(limit))
        .then(upload)
        .map(respond);
    let show = warp::path!("v1" / "documents" / Uuid)
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ReadDocuments))
        .and(with_state(state.clone()))
        .then(show)
        .map(respond);
    let pdf = warp::path!("v1" / "documents" / Uuid / "pdf")
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ReadDocuments))
        .and(with_state(state.clone()))
        .then(download)
        .map(respond);
    let sign = warp::path!("v1" / "documents" / Uuid / "sign")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::Sign))
        .and(with_state(state.clone()))
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(json_body(64 * 1024))
        .then(sign)
        .map(respond);
    let delete = warp::path!("v1" / "documents" / Uuid)
        .and(warp::delete())
        .and(authorized(state.clone(), Permission::ManageDocuments))
        .and(with_state(state.clone()))
        .then(delete)
        .map(respond);
    let hold = warp::path!("v1" / "documents" / Uuid / "holds")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::ManageDocuments))
        .and(with_state(state.clone()))
        .and(json_body(16 * 1024))
        .then(hold)
        .map(respond);
    let timestamp = warp::path!("v1" / "documents" / Uuid / "timestamp")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::Sign))
        .and(with_state(state))
        .and(warp::header::optional::<String>("idempotency-key"))
        .then(timestamp)
        .map(respond);

    upload
        .or(show)
        .unify()
        .or(pdf)
        .unify()
        .or(sign)
        .unify()
        .or(timestamp)
        .unify()
        .or(delete)
        .unify()
        .or(hold)
        .unify()
}

/// The raw body, refused before it is read when its declared length exceeds `limit`.
pub(super) fn body_within(
    limit: u64,
) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and_then(move |length: Option<u64>| async move {
            match length {
                None => Err(warp::reject::custom(ApiError::LengthRequired)),
                Some(n) if n > limit => Err(warp::reject::custom(ApiError::TooLarge { limit })),
                Some(_) => Ok(()),
            }
        })
        .untuple_one()
        .and(warp::body::bytes())
}

#[derive(Debug, Deserialize)]
struct UploadQuery {
    title: Option<String>,
    /// A folder path such as `/sales/2026`; the root `/` when absent.
    folder: Option<String>,
}

#[derive(Debug, Serialize)]
struct DocumentView {
    id: Uuid,
    title: Option<String>,
    folder: String,
    pages: i32,
    sha256: String,
    revision: i32,
    created_at: chrono::DateTime<chrono::Utc>,
    /// Set once its files are deleted; the record stays.
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl DocumentView {
    fn new(doc: Document, latest: &Revision) -> Self {
        Self {
            id: doc.id,
            title: doc.title,
            folder: doc.folder,
            pages: doc.pages,
            sha256: hex::encode(&latest.sha256),
            revision: latest.revision,
            created_at: doc.created_at,
            deleted_at: doc.deleted_at,
        }
    }
}

async fn upload(
    caller: Caller,
    state: Arc<AppState>,
    client: Option<IpAddr>,
    query: UploadQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let title = query.title.filter(|t| !t.trim().is_empty());
    if title.as_ref().is_some_and(|t| t.chars().count() > 500) {
        return Err(ApiError::BadRequest(
            "title is longer than 500 characters".into(),
        ));
    }
    let folder = match query.folder.as_deref() {
        None => "/".to_owned(),
        Some(f) => shomei_schema::models::normalise_folder(f).map_err(ApiError::BadRequest)?,
    };
    let checked = folder.clone();
    let allowed = interact(&state.db, move |conn| {
        Ok(shomei_schema::models::may_see_folder(
            conn,
            caller.principal(),
            &checked,
        )?)
    })
    .await?;
    if !allowed {
        return Err(ApiError::Forbidden(format!(
            "folder {folder} is outside the folders of this key's groups"
        )));
    }
    // Checked (intake), sealed and stored on one blocking thread: all three are CPU or file
    // work, one hand-off for them together.
    let document_id = Uuid::now_v7();
    let (storage, runtime, tenant_id) = (
        state.storage.clone(),
        tokio::runtime::Handle::current(),
        caller.tenant_id,
    );
    let (info, stored) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let info = shomei_signing::inspect_pdf(&body)?;
        let stored = storage
            .blocking(&runtime)
            .put_pdf(tenant_id, document_id, &body)
            .map_err(anyhow::Error::from)?;
        Ok((info, stored))
    })
    .await
    .map_err(anyhow::Error::from)??;
    let first = Revision {
        document_id,
        revision: 0,
        sha256: stored.sha256.to_vec(),
        size_bytes: stored.size as i64,
        storage_key: stored.key,
        job_id: None,
        created_at: chrono::Utc::now(),
    };
    let pages = i32::try_from(info.pages).unwrap_or(i32::MAX);
    let (doc, first, pending) = interact(&state.db, move |conn| {
        let new = NewDocument {
            id: document_id,
            tenant_id: caller.tenant_id,
            title: title.as_deref(),
            pages,
            folder: &folder,
        };
        Ok(conn.transaction(|conn| {
            let doc = Document::create(conn, &new, &first)?;
            let pending = events::emit(
                conn,
                NewEvent {
                    tenant_id: caller.tenant_id,
                    kind: kind::DOCUMENT_UPLOADED,
                    document_id: Some(doc.id),
                    request_id: None,
                    actor: caller.actor(),
                    ip: super::client_ip(client),
                    data: json!({"title": doc.title, "folder": doc.folder, "pages": doc.pages,
                                 "sha256": hex::encode(&first.sha256)}),
                },
            )?;
            diesel::QueryResult::Ok((doc, first, pending))
        })?)
    })
    .await?;
    pending.push(&state.queue).await;
    tracing::info!(doc.id = %doc.id, doc.pages = pages, "document uploaded");
    let view = DocumentView::new(doc, &first);
    Ok(created(
        &view,
        &format!("/v1/documents/{}", view.id),
        StatusCode::CREATED,
    ))
}

/// The document and its latest revision, if the caller's tenant owns it.
/// The caller's document with its latest revision, whether or not its files were deleted.
async fn find_record(
    state: &AppState,
    caller: Caller,
    id: Uuid,
) -> Result<(Document, Revision), ApiError> {
    interact(&state.db, move |conn| {
        let Some(doc) = Document::find(conn, caller.tenant_id, caller.principal(), id)? else {
            return Ok(None);
        };
        let latest = Revision::latest(conn, doc.id)?;
        Ok(Some((doc, latest)))
    })
    .await?
    .ok_or(ApiError::NotFound("document"))
}

/// The caller's document, to act on: `410` once its files were deleted (its record stays).
pub(super) async fn find_document(
    state: &AppState,
    caller: Caller,
    id: Uuid,
) -> Result<(Document, Revision), ApiError> {
    let (doc, latest) = find_record(state, caller, id).await?;
    Ok((live(doc)?, latest))
}

/// The document, unless its files were deleted (`410`).
fn live(doc: Document) -> Result<Document, ApiError> {
    match doc.deleted_at {
        Some(at) => Err(ApiError::Gone(format!(
            "the document's files were deleted at {}",
            at.to_rfc3339()
        ))),
        None => Ok(doc),
    }
}

async fn show(id: Uuid, caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let (doc, latest) = find_record(&state, caller, id).await?;
    Ok(warp::reply::json(&DocumentView::new(doc, &latest)).into_response())
}

/// Deletes the document's files (on request; R-DEL-1's path): refused while something holds
/// it, queued as a deletion job otherwise. Its record stays, marked deleted.
async fn delete(id: Uuid, caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let (doc, _) = find_document(&state, caller, id).await?;
    let hold = interact(&state.db, move |conn| Ok(deletion::hold_on(conn, doc.id)?)).await?;
    if let Some(hold) = hold {
        return Err(ApiError::Conflict(format!(
            "the document cannot be deleted yet: {hold}"
        )));
    }
    let job = DeletionJob::Document {
        document_id: doc.id,
    };
    queue_job(
        &state,
        caller,
        Some(doc.id),
        JobKind::Deletion,
        json!(job),
        json!(job),
        Some(format!("delete:{}", doc.id)),
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldBody {
    /// Who holds it: a counterparty's account, a court, an auditor.
    holder: String,
    #[serde(default)]
    reason: Option<String>,
    /// When the hold ends by itself; never when absent.
    #[serde(default)]
    until: Option<chrono::DateTime<chrono::Utc>>,
}

/// Puts a hold on a document: neither a deletion on request nor the tenant's scheduled
/// deletion removes it while the hold lasts (R-DEL-3).
async fn hold(
    id: Uuid,
    caller: Caller,
    state: Arc<AppState>,
    body: HoldBody,
) -> Result<Response, ApiError> {
    if body.holder.trim().is_empty() || body.holder.chars().count() > 200 {
        return Err(ApiError::BadRequest(
            "holder must be 1 to 200 characters".into(),
        ));
    }
    let (doc, _) = find_document(&state, caller, id).await?;
    let hold_id = interact(&state.db, move |conn| {
        Ok(deletion::add_hold(
            conn,
            caller.tenant_id,
            doc.id,
            body.holder.trim(),
            body.reason.as_deref(),
            body.until,
        )?)
    })
    .await?;
    Ok(created(
        &json!({"hold_id": hold_id, "document_id": doc.id}),
        &format!("/v1/documents/{}", doc.id),
        StatusCode::CREATED,
    ))
}

async fn download(id: Uuid, caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let (_, latest) = find_document(&state, caller, id).await?;
    pdf_response(&state, &latest).await
}

/// A revision's bytes (checked against their SHA-256) as a PDF download.
pub(super) async fn pdf_response(
    state: &AppState,
    latest: &Revision,
) -> Result<Response, ApiError> {
    let bytes = state
        .storage
        .get_verified(&latest.storage_key, &latest.sha256)
        .await
        .map_err(anyhow::Error::from)?;
    let mut response = Response::new(bytes.into());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/pdf"),
    );
    let etag = format!("\"{}\"", hex::encode(&latest.sha256));
    let disposition = format!(
        "attachment; filename=\"{}-r{}.pdf\"",
        latest.document_id, latest.revision
    );
    for (name, value) in [
        (header::ETAG, etag),
        (header::CONTENT_DISPOSITION, disposition),
    ] {
        headers.insert(name, value.parse().map_err(anyhow::Error::from)?);
    }
    Ok(response)
}

async fn sign(
    id: Uuid,
    caller: Caller,
    state: Arc<AppState>,
    idempotency_key: Option<String>,
    mut request: SignRequest,
) -> Result<Response, ApiError> {
    request.validate().map_err(ApiError::BadRequest)?;
    if request.step.is_some() {
        return Err(ApiError::BadRequest("unknown field `step`".into()));
    }
    // The document and the tenant's default level, taken when the request names none
    // (resolved now, so a later change of the default leaves queued jobs alone): one statement,
    // shared with the sign requests arriving at the same time.
    let (doc, default_level) = state
        .intake
        .find_document(caller.tenant_id, caller.principal(), id)
        .await?
        .ok_or(ApiError::NotFound("document"))?;
    let doc = live(doc)?;
    if request.level.is_none() {
        request.level = Some(default_level.parse().map_err(anyhow::Error::msg)?);
    }
    let key = personal::records_key(&state.keys, caller.tenant_id).await?;
    queue_job(
        &state,
        caller,
        Some(doc.id),
        JobKind::Sign,
        request.fingerprint(),
        request.to_payload(&key),
        idempotency_key,
    )
    .await
}

async fn timestamp(
    id: Uuid,
    caller: Caller,
    state: Arc<AppState>,
    idempotency_key: Option<String>,
) -> Result<Response, ApiError> {
    let (doc, _) = find_document(&state, caller, id).await?;
    queue_job(
        &state,
        caller,
        Some(doc.id),
        JobKind::Timestamp,
        json!({}),
        json!({}),
        idempotency_key,
    )
    .await
}
