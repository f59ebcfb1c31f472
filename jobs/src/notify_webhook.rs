//! The **notify_webhook** job: one event to one endpoint, per the Standard Webhooks
//! specification. The `webhook-id` is the event's, so it is the same on every retry and the
//! receiver can drop duplicates; each attempt is written to the delivery log.
//!
//! Outcomes: any 2xx is delivered. `410 Gone` disables the endpoint and fails the job once.
//! `429`/`503` with `Retry-After` wait at least that long. Anything else (other statuses,
//! timeouts, refused connections) waits for the next step of the retry schedule (5 s up to
//! 24 h, about three days in all) and fails the job when it runs out.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use shomei_notify::webhook::{Outcome, WebhookSecret};
use shomei_schema::{interact, Event, Job, WebhookAttempt, WebhookEndpoint};

use crate::context::JobContext;
use crate::error::JobError;

/// The payload of a notify_webhook job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WebhookJob {
    pub endpoint_id: Uuid,
    pub event_id: Uuid,
}

/// The Standard Webhooks message id of an event: the same for every attempt and endpoint.
pub fn message_id(event_id: Uuid) -> String {
    format!("msg_{}", event_id.simple())
}

/// The body every endpoint receives for an event (built from the row alone, so every attempt
/// sends the same bytes).
pub fn body(event: &Event) -> serde_json::Value {
    let mut data = json!({
        "event_id": event.id,
        "document_id": event.document_id,
        "request_id": event.request_id,
    });
    if let (Some(fields), Some(extra)) = (data.as_object_mut(), event.data.as_object()) {
        for (k, v) in extra {
            fields.insert(k.clone(), v.clone());
        }
    }
    json!({
        "type": event.kind,
        "timestamp": event.created_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
}

pub async fn run(ctx: &JobContext, job: &Job) -> Result<serde_json::Value, JobError> {
    let payload: WebhookJob = serde_json::from_value(job.payload.clone())
        .map_err(|e| JobError::permanent(format!("unreadable notify_webhook payload: {e}")))?;
    let (endpoint, event) = interact(&ctx.db, move |conn| {
        Ok((
            WebhookEndpoint::get(conn, payload.endpoint_id)?,
            Event::get(conn, payload.event_id)?,
        ))
    })
    .await?;
    if endpoint.deleted_at.is_some() {
        return Err(JobError::permanent("the endpoint was deleted"));
    }
    if !endpoint.enabled {
        return Err(JobError::permanent(format!(
            "the endpoint is disabled: {}",
            endpoint
                .disabled_reason
                .as_deref()
                .unwrap_or("by the tenant")
        )));
    }
    let secret = WebhookSecret::parse(&endpoint.secret)
        .map_err(|e| JobError::permanent(format!("the endpoint's secret is unusable: {e}")))?;
    let body = serde_json::to_vec(&body(&event))
        .map_err(|e| JobError::permanent(format!("serialising the event: {e}")))?;
    let attempt = ctx
        .webhooks
        .deliver(&endpoint.url, &secret, &message_id(event.id), &body)
        .await;

    let (outcome, verdict) = match &attempt.outcome {
        Outcome::Delivered => ("delivered", Ok(json!({"status": attempt.status}))),
        Outcome::Gone => (
            "gone",
            Err(JobError::permanent(
                "the endpoint answered 410 Gone; it has been disabled",
            )),
        ),
        Outcome::Refused => (
            "refused",
            Err(JobError::permanent(format!(
                "the endpoint's address is not allowed: {}",
                attempt
                    .error
                    .as_deref()
                    .unwrap_or("private or loopback address")
            ))),
        ),
        Outcome::RetryAfter(wait) => ("retry_after", Err(retry(ctx, job, &attempt, Some(*wait)))),
        Outcome::Failed => ("failed", Err(retry(ctx, job, &attempt, None))),
    };
    let log = WebhookAttempt {
        id: Uuid::now_v7(),
        endpoint_id: endpoint.id,
        event_id: event.id,
        job_id: job.id,
        attempt: job.attempts,
        outcome: outcome.to_owned(),
        status_code: attempt.status.map(i32::from),
        error: attempt.error.clone(),
        response_excerpt: attempt.response_excerpt.clone(),
        duration_ms: i32::try_from(attempt.duration.as_millis()).unwrap_or(i32::MAX),
        created_at: chrono::Utc::now(),
    };
    shomei_telemetry::metrics::WEBHOOK_DELIVERIES
        .with_label_values(&[outcome])
        .inc();
    let gone = matches!(attempt.outcome, Outcome::Gone);
    if gone {
        shomei_telemetry::metrics::WEBHOOK_ENDPOINTS_DISABLED.inc();
    }
    interact(&ctx.db, move |conn| {
        log.insert(conn)?;
        if gone {
            WebhookEndpoint::set_enabled(
                conn,
                log.endpoint_id,
                false,
                Some("the endpoint answered 410 Gone"),
            )?;
        }
        Ok(())
    })
    .await?;
    if gone {
        tracing::warn!(endpoint.id = %endpoint.id, "webhook endpoint answered 410; disabled");
    }
    verdict
}

/// The next attempt, on the schedule (and no earlier than a `Retry-After`), or the end.
fn retry(
    ctx: &JobContext,
    job: &Job,
    attempt: &shomei_notify::webhook::Attempt,
    retry_after: Option<Duration>,
) -> JobError {
    let what = match (attempt.status, &attempt.error) {
        (Some(status), _) => format!("the endpoint answered {status}"),
        (None, Some(error)) => error.clone(),
        (None, None) => "the delivery failed".to_owned(),
    };
    match shomei_notify::webhook::next_delay(
        &ctx.webhook_schedule,
        job.attempts as u32,
        retry_after,
    ) {
        Some(after) => JobError::later(what, after),
        None => JobError::permanent(format!(
            "gave up after {} attempts; last: {what}",
            job.attempts
        )),
    }
}
