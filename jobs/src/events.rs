//! Events: every state change is recorded as an [`Event`] row in the transaction that makes
//! the change (the audit trail), and fanned out in that same transaction into **notify** jobs:
//! one `notify_webhook` job per subscribed endpoint and one `notify_email` job per recipient.
//! Each job stands alone, so an e-mail that fails never holds back a webhook, and the reverse.
//!
//! The jobs are pushed to Redis after the commit ([`Pending::push`]); a push that fails is
//! left to the reconciler, as for every job.

use diesel::prelude::*;
use serde_json::json;
use uuid::Uuid;

use shomei_schema::{Event, JobKind, NewJob, RequestSigner, SignatureRequest};

use crate::notify_email::{EmailJob, Recipient, Template};
use crate::notify_webhook::WebhookJob;
use crate::queue::Queue;

/// The event kinds, as webhook consumers see them in `type`.
pub mod kind {
    pub const DOCUMENT_UPLOADED: &str = "document.uploaded";
    pub const DOCUMENT_SIGNED: &str = "document.signed";
    pub const DOCUMENT_COMPLETED: &str = "document.completed";
    pub const REQUEST_CREATED: &str = "request.created";
    pub const REQUEST_SENT: &str = "request.sent";
    pub const REQUEST_DECLINED: &str = "request.declined";
    pub const REQUEST_CANCELLED: &str = "request.cancelled";
    pub const SIGNER_CODE_SENT: &str = "signer.code_sent";
    pub const SIGNER_AUTHENTICATED: &str = "signer.authenticated";
    pub const JOB_FAILED: &str = "job.failed";
    pub const JOB_RETRIED: &str = "job.retried";
    pub const EXPORT_READY: &str = "export.ready";
    pub const BATCH_COMPLETED: &str = "batch.completed";
    pub const DOCUMENT_DELETED: &str = "document.deleted";
    pub const TENANT_CANCELLED: &str = "tenant.cancelled";
    pub const TENANT_DELETED: &str = "tenant.deleted";
}

/// What happened; [`emit`] adds the id and time.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub tenant_id: Uuid,
    pub kind: &'static str,
    pub document_id: Option<Uuid>,
    pub request_id: Option<Uuid>,
    /// `api_key:<id>`, `signer:<id>` or `job:<id>`.
    pub actor: String,
    pub ip: Option<String>,
    pub data: serde_json::Value,
}

/// Queue pushes [`Pending::push`] keeps in flight at once.
const PUSHES_IN_FLIGHT: usize = 64;

/// Jobs written in a transaction, to push once it has committed.
#[derive(Debug, Default)]
#[must_use = "push the jobs after the transaction commits"]
pub struct Pending(Vec<(JobKind, Uuid)>);

impl Pending {
    pub fn add(&mut self, more: Pending) {
        self.0.extend(more.0);
    }

    /// Jobs just inserted (see `Job::insert_all`).
    pub fn jobs(jobs: Vec<(JobKind, Uuid)>) -> Pending {
        Pending(jobs)
    }

    /// Pushes every job, several at a time (one connection, pipelined: a batch of thousands
    /// is not thousands of sequential round trips); one Redis cannot take is left to the
    /// reconciler.
    pub async fn push(self, queue: &Queue) {
        use futures::stream::{self, StreamExt};
        stream::iter(self.0)
            .for_each_concurrent(PUSHES_IN_FLIGHT, |(kind, id)| async move {
                shomei_telemetry::metrics::JOBS_SUBMITTED
                    .with_label_values(&[kind.as_str()])
                    .inc();
                if let Err(e) = queue.push(kind, id).await {
                    tracing::warn!(job.id = %id, error = %e, "queue push failed; left to the reconciler");
                }
            })
            .await;
    }
}

/// Records the event and its notify jobs. Call inside the transaction of the change.
pub fn emit(conn: &mut PgConnection, new: NewEvent) -> QueryResult<Pending> {
    Ok(emit_all(conn, vec![new])?.pop().unwrap_or_default())
}

/// Records the events and their notify jobs, in two statements whatever their number (a
/// worker's group records its members' events together, [`crate::group_commit::Record`]), plus
/// the reads some kinds need to address their e-mails. Returns each event's jobs, in order.
pub fn emit_all(conn: &mut PgConnection, new: Vec<NewEvent>) -> QueryResult<Vec<Pending>> {
    let events: Vec<Event> = new
        .into_iter()
        .map(|new| Event {
            id: Uuid::now_v7(),
            tenant_id: new.tenant_id,
            kind: new.kind.to_owned(),
            document_id: new.document_id,
            request_id: new.request_id,
            actor: new.actor,
            ip: new.ip,
            data: new.data,
            created_at: chrono::Utc::now(),
        })
        .collect();
    let subscribers = Event::insert_all_for_subscribers(conn, &events.iter().collect::<Vec<_>>())?;
    // The notify jobs of all the events, each with the position of its event.
    let mut jobs = Vec::new();
    let mut owners = Vec::new();
    for (at, (event, endpoints)) in events.iter().zip(subscribers).enumerate() {
        for endpoint_id in endpoints {
            let payload = WebhookJob {
                endpoint_id,
                event_id: event.id,
            };
            jobs.push(notify_job(event, JobKind::NotifyWebhook, json!(payload)));
            owners.push(at);
        }
        for email in emails_for(conn, event)? {
            jobs.push(notify_job(event, JobKind::NotifyEmail, json!(email)));
            owners.push(at);
        }
    }
    let mut pendings: Vec<Pending> = events.iter().map(|_| Pending::default()).collect();
    let inserted = shomei_schema::Job::insert_all(conn, &jobs)?;
    for (at, job) in owners.into_iter().zip(inserted) {
        pendings[at].0.push(job);
    }
    Ok(pendings)
}

fn notify_job(event: &Event, kind: JobKind, payload: serde_json::Value) -> NewJob {
    NewJob {
        id: Uuid::now_v7(),
        tenant_id: event.tenant_id,
        kind: kind.as_str(),
        document_id: event.document_id,
        payload,
        idempotency_key: None,
        request_sha256: None,
        batch_id: None,
    }
}

/// Who gets an e-mail about an event: signers when it is their turn or their request ends,
/// the owner (the sender) when the contract is concluded or declined.
fn emails_for(conn: &mut PgConnection, event: &Event) -> QueryResult<Vec<EmailJob>> {
    let Some(request_id) = event.request_id else {
        return Ok(vec![]);
    };
    let signer = |key: &str| -> Option<Uuid> { event.data.get(key)?.as_str()?.parse().ok() };
    let email = |template, to| EmailJob {
        template,
        request_id,
        to,
    };
    Ok(match event.kind.as_str() {
        kind::REQUEST_SENT => signer("signer_id")
            .map(|id| vec![email(Template::Invitation, Recipient::Signer(id))])
            .unwrap_or_default(),
        kind::SIGNER_CODE_SENT => signer("signer_id")
            .map(|id| vec![email(Template::VerificationCode, Recipient::Signer(id))])
            .unwrap_or_default(),
        kind::REQUEST_DECLINED => signer("signer_id")
            .map(|id| {
                vec![email(
                    Template::Declined { signer_id: id },
                    Recipient::Owner,
                )]
            })
            .unwrap_or_default(),
        kind::REQUEST_CANCELLED => signer("notified_signer_id")
            .map(|id| vec![email(Template::Cancelled, Recipient::Signer(id))])
            .unwrap_or_default(),
        kind::DOCUMENT_COMPLETED => {
            let request = SignatureRequest::lock(conn, request_id)?;
            std::iter::once(Recipient::Owner)
                .chain(
                    request
                        .signers(conn)?
                        .iter()
                        .map(|s: &RequestSigner| Recipient::Signer(s.id)),
                )
                .map(|to| email(Template::Completed, to))
                .collect()
        }
        _ => vec![],
    })
}
