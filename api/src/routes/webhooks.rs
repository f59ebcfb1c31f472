//! Webhook endpoints, per tenant (Standard Webhooks): register (`POST /v1/webhooks`, the
//! `whsec_` secret is shown once), list, show, delete, re-enable, read the delivery log
//! (`GET /v1/webhooks/{id}/deliveries`) and re-send a delivery by hand.
//! Endpoints on loopback or private addresses are refused unless configuration allows them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};
use warp::{Filter, Rejection};

use shomei_jobs::notify_webhook::WebhookJob;
use shomei_jobs::Pending;
use shomei_notify::webhook::{check_target, WebhookSecret};
use shomei_schema::{interact, Event, Job, JobKind, NewJob, WebhookAttempt, WebhookEndpoint};

use super::{created, json_body, respond, with_state};
use crate::auth::{authorized, Caller, Permission};
use crate::problem::ApiError;
use crate::AppState;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let create = warp::path!("v1" / "webhooks")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::ManageIntegrations))
        .and(with_state(state.clone()))
        .and(json_body(16 * 1024))
        .then(create)
        .map(respond);
    let list = warp::path!("v1" / "webhooks")
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ManageIntegrations))
        .and(with_state(state.clone()))
        .then(list)
        .map(respond);
    let show = warp::path!("v1" / "webhooks" / Uuid)
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ManageIntegrations))
        .and(with_state(state.clone()))
        .then(show)
        .map(respond);
    let delete = warp::path!("v1" / "webhooks" / Uuid)
        .and(warp::delete())
        .and(authorized(state.clone(), Permission::ManageIntegrations))
        .and(with_state(state.clone()))
        .then(delete)
        .map(respond);
    let enable = warp::path!("v1" / "webhooks" / Uuid / "enable")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::ManageIntegrations))
        .and(with_state(state.clone()))
        .then(enable)
        .map(respond);
    let deliveries = warp::path!("v1" / "webhooks" / Uuid / "deliveries")
        .and(warp::get())
        .and(authorized(state.clone(), Permission::ManageIntegrations))
        .and(with_state(state.clone()))
        .then(deliveries)
        .map(respond);
    let resend = warp::path!("v1" / "webhooks" / Uuid / "deliveries" / Uuid / "resend")
        .and(warp::post())
        .and(authorized(state.clone(), Permission::ManageIntegrations))
        .and(with_state(state))
        .then(resend)
        .map(respond);
    create
        .or(list)
        .unify()
        .or(show)
        .unify()
        .or(delete)
        .unify()
        .or(enable)
        .unify()
        .or(deliveries)
        .unify()
        .or(resend)
        .unify()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    url: String,
    #[serde(default)]
    description: Option<String>,
    /// Event kinds to send (`document.signed`, ...); omitted: all of them.
    #[serde(default)]
    event_kinds: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
struct EndpointView {
    id: Uuid,
    url: String,
    description: Option<String>,
    event_kinds: Option<Vec<String>>,
    enabled: bool,
    disabled_reason: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    /// Only in the response that created the endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl From<WebhookEndpoint> for EndpointView {
    fn from(e: WebhookEndpoint) -> Self {
        Self {
            id: e.id,
            url: e.url,
            description: e.description,
            event_kinds: e.event_kinds,
            enabled: e.enabled,
            disabled_reason: e.disabled_reason,
            created_at: e.created_at,
            secret: None,
        }
    }
}

async fn create(
    caller: Caller,
    state: Arc<AppState>,
    body: CreateBody,
) -> Result<Response, ApiError> {
    if body.url.len() > 2000 {
        return Err(ApiError::BadRequest(
            "url is longer than 2000 characters".into(),
        ));
    }
    if body
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 500)
    {
        return Err(ApiError::BadRequest(
            "description is longer than 500 characters".into(),
        ));
    }
    if let Some(kinds) = &body.event_kinds {
        if kinds.is_empty() || kinds.iter().any(|k| k.is_empty() || k.len() > 100) {
            return Err(ApiError::BadRequest(
                "event_kinds must list event kinds such as \"document.signed\"".into(),
            ));
        }
    }
    check_target(&body.url, state.allow_private_webhooks)
        .await
        .map_err(|e| ApiError::Unprocessable(format!("url {:?} cannot be used: {e}", body.url)))?;
    let secret = WebhookSecret::generate();
    let endpoint = WebhookEndpoint {
        id: Uuid::now_v7(),
        tenant_id: caller.tenant_id,
        url: body.url,
        description: body.description,
        secret: secret.expose().to_owned(),
        event_kinds: body.event_kinds,
        enabled: true,
        disabled_reason: None,
        created_at: chrono::Utc::now(),
        deleted_at: None,
    };
    let saved = endpoint.clone();
    interact(&state.db, move |conn| Ok(saved.insert(conn)?)).await?;
    let location = format!("/v1/webhooks/{}", endpoint.id);
    let mut view = EndpointView::from(endpoint);
    view.secret = Some(secret.expose().to_owned());
    Ok(created(&view, &location, StatusCode::CREATED))
}

async fn find(state: &AppState, caller: Caller, id: Uuid) -> Result<WebhookEndpoint, ApiError> {
    interact(&state.db, move |conn| {
        Ok(WebhookEndpoint::find(conn, caller.tenant_id, id)?)
    })
    .await?
    .ok_or(ApiError::NotFound("webhook endpoint"))
}

async fn list(caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let endpoints = interact(&state.db, move |conn| {
        Ok(WebhookEndpoint::list(conn, caller.tenant_id)?)
    })
    .await?;
    let views: Vec<EndpointView> = endpoints.into_iter().map(EndpointView::from).collect();
    Ok(warp::reply::json(&json!({"webhooks": views})).into_response())
}

async fn show(id: Uuid, caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let endpoint = find(&state, caller, id).await?;
    Ok(warp::reply::json(&EndpointView::from(endpoint)).into_response())
}

async fn delete(id: Uuid, caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let deleted = interact(&state.db, move |conn| {
        Ok(WebhookEndpoint::delete(conn, caller.tenant_id, id)?)
    })
    .await?;
    if !deleted {
        return Err(ApiError::NotFound("webhook endpoint"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn enable(id: Uuid, caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let mut endpoint = find(&state, caller, id).await?;
    interact(&state.db, move |conn| {
        Ok(WebhookEndpoint::set_enabled(conn, id, true, None)?)
    })
    .await?;
    endpoint.enabled = true;
    endpoint.disabled_reason = None;
    Ok(warp::reply::json(&EndpointView::from(endpoint)).into_response())
}

#[derive(Debug, Serialize)]
struct AttemptView {
    id: Uuid,
    event_id: Uuid,
    event_kind: String,
    webhook_id: String,
    job_id: Uuid,
    attempt: i32,
    outcome: String,
    status_code: Option<i32>,
    error: Option<String>,
    response_excerpt: Option<String>,
    duration_ms: i32,
    created_at: chrono::DateTime<chrono::Utc>,
}

async fn deliveries(id: Uuid, caller: Caller, state: Arc<AppState>) -> Result<Response, ApiError> {
    let endpoint = find(&state, caller, id).await?;
    let attempts = interact(&state.db, move |conn| {
        let attempts = WebhookAttempt::list(conn, endpoint.id, 200)?;
        let mut views = Vec::with_capacity(attempts.len());
        for a in attempts {
            let event = Event::get(conn, a.event_id)?;
            views.push(AttemptView {
                id: a.id,
                event_id: a.event_id,
                event_kind: event.kind,
                webhook_id: shomei_jobs::notify_webhook::message_id(a.event_id),
                job_id: a.job_id,
                attempt: a.attempt,
                outcome: a.outcome,
                status_code: a.status_code,
                error: a.error,
                response_excerpt: a.response_excerpt,
                duration_ms: a.duration_ms,
                created_at: a.created_at,
            });
        }
        Ok(views)
    })
    .await?;
    Ok(warp::reply::json(&json!({"deliveries": attempts})).into_response())
}

/// Sends the event of a logged attempt again, as a new delivery job (same `webhook-id`).
async fn resend(
    id: Uuid,
    attempt_id: Uuid,
    caller: Caller,
    state: Arc<AppState>,
) -> Result<Response, ApiError> {
    let endpoint = find(&state, caller, id).await?;
    if !endpoint.enabled {
        return Err(ApiError::Conflict(
            "the endpoint is disabled; enable it first (POST .../enable)".into(),
        ));
    }
    let job = interact(&state.db, move |conn| {
        let Some(attempt) = WebhookAttempt::find(conn, endpoint.id, attempt_id)? else {
            return Ok(None);
        };
        let event = Event::get(conn, attempt.event_id)?;
        let job = NewJob {
            id: Uuid::now_v7(),
            tenant_id: caller.tenant_id,
            kind: JobKind::NotifyWebhook.as_str(),
            document_id: event.document_id,
            payload: json!(WebhookJob {
                endpoint_id: endpoint.id,
                event_id: event.id,
            }),
            idempotency_key: None,
            request_sha256: None,
            batch_id: None,
        };
        Ok(Some(Job::insert_all(conn, &[job])?))
    })
    .await?
    .ok_or(ApiError::NotFound("delivery"))?;
    let job_id = job.first().map(|(_, id)| *id).unwrap_or_default();
    Pending::jobs(job).push(&state.queue).await;
    Ok(created(
        &json!({"job_id": job_id}),
        &format!("/v1/jobs/{job_id}"),
        StatusCode::ACCEPTED,
    ))
}
