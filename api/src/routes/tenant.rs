//! The caller's own tenant: its state, cancellation (which schedules the deletion of its files,
//! R-DEL-1) and the evidence of what was deleted.

use std::sync::Arc;

use diesel::Connection;
use serde::Serialize;
use serde_json::json;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use shomei_jobs::calendar::deletion_due;
use shomei_jobs::deletion::DeletionJob;
use shomei_jobs::events::{self, kind, NewEvent};
use shomei_schema::models::deletion::DeletionRecord;
use shomei_schema::{interact, Job, Tenant};

use super::{client_ip, created, respond, with_state};
use crate::auth::{caller, Caller};
use crate::problem::ApiError;
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let auth = caller(state.db.clone());
    let show = warp::path!("v1" / "tenant")
        .and(warp::get())
        .and(auth.clone())
        .and(with_state(state.clone()))
        .then(show)
        .map(respond);
    let cancel = warp::path!("v1" / "tenant" / "cancel")
        .and(warp::post())
        .and(auth.clone())
        .and(with_state(state.clone()))
        .and(super::remote())
        .then(cancel)
        .map(respond);
    let evidence = warp::path!("v1" / "tenant" / "deletion-log")
        .and(warp::get())
        .and(auth)
        .and(with_state(state))
        .then(deletion_log)
        .map(respond);
    show.or(cancel).unify().or(evidence).unify()
}

#[derive(Serialize)]
struct TenantView {
    id: uuid::Uuid,
    name: String,
    created_at: chrono::DateTime<chrono::Utc>,
    signature_level: String,
    cancelled_at: Option<chrono::DateTime<chrono::Utc>>,
    deletion_due_at: Option<chrono::DateTime<chrono::Utc>>,
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<Tenant> for TenantView {
    fn from(t: Tenant) -> Self {
        Self {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
            signature_level: t.signature_level,
            cancelled_at: t.cancelled_at,
            deletion_due_at: t.deletion_due_at,
            deleted_at: t.deleted_at,
        }
    }
}

async fn show(caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let tenant = interact(&state.db, move |conn| {
        Ok(Tenant::get(conn, caller.tenant_id)?)
    })
    .await?;
    Ok(warp::reply::json(&TenantView::from(tenant)).into_response())
}

/// Records the cancellation and schedules the deletion job for the end of the second month
/// after this one (Tokyo calendar). Asking again changes nothing and answers the same.
async fn cancel(
    caller: Caller,
    state: Arc<AppState>,
    remote: Option<std::net::SocketAddr>,
) -> Result<Response, ApiError> {
    caller.require_owner("cancel the contract")?;
    let ip = client_ip(remote);
    let (tenant, job, pending) = interact(&state.db, move |conn| {
        Ok(conn.transaction(|conn| {
            let tenant = Tenant::lock(conn, caller.tenant_id)?;
            let (tenant, pending) = match tenant.cancelled_at {
                Some(_) => (tenant, events::Pending::default()),
                None => {
                    let now = chrono::Utc::now();
                    let due = deletion_due(now);
                    let tenant = Tenant::cancel(conn, caller.tenant_id, now, due)?;
                    let pending = events::emit(
                        conn,
                        NewEvent {
                            tenant_id: caller.tenant_id,
                            kind: kind::TENANT_CANCELLED,
                            document_id: None,
                            request_id: None,
                            actor: caller.actor(),
                            ip,
                            data: json!({"deletion_due_at": due}),
                        },
                    )?;
                    (tenant, pending)
                }
            };
            let due = tenant.deletion_due_at.expect("set with cancelled_at");
            // The key makes a repeated cancellation find the job made the first time.
            let new = DeletionJob::Tenant.new_job(caller.tenant_id, Some("deletion".into()));
            let job = Job::insert_scheduled(conn, &new, due)?;
            diesel::QueryResult::Ok((tenant, job, pending))
        })?)
    })
    .await?;
    pending.push(&state.queue).await;
    let mut body = serde_json::to_value(TenantView::from(tenant)).map_err(anyhow::Error::from)?;
    body["deletion_job_id"] = json!(job.id);
    Ok(created(&body, "/v1/tenant", StatusCode::ACCEPTED))
}

#[derive(Serialize)]
struct EvidenceView {
    id: uuid::Uuid,
    document_id: Option<uuid::Uuid>,
    object_kind: String,
    object_id: String,
    ciphertext_sha256: Option<String>,
    size_bytes: Option<i64>,
    reason: String,
    actor: String,
    deleted_at: chrono::DateTime<chrono::Utc>,
}

async fn deletion_log(caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    caller.require_export()?;
    let records = interact(&state.db, move |conn| {
        Ok(DeletionRecord::for_tenant(conn, caller.tenant_id)?)
    })
    .await?;
    let views: Vec<EvidenceView> = records
        .into_iter()
        .map(|r| EvidenceView {
            id: r.id,
            document_id: r.document_id,
            object_kind: r.object_kind,
            object_id: r.object_id,
            ciphertext_sha256: r.ciphertext_sha256.map(hex::encode),
            size_bytes: r.size_bytes,
            reason: r.reason,
            actor: r.actor,
            deleted_at: r.deleted_at,
        })
        .collect();
    Ok(warp::reply::json(&json!({"deletions": views})).into_response())
}
