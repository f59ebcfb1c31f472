//! The **notify_email** job: one e-mail to one recipient of a signature request (the owner or
//! a signer), rendered in the recipient's language when it is sent.
//!
//! An invitation carries the signer's link token and a verification-code e-mail its one-time
//! code. Neither exists anywhere but in the e-mail: the job makes it, stores only its SHA-256
//! and sends it. A retry makes a new one (the earlier one, never delivered or not, stops
//! working), so a repeated e-mail never leaves two good tokens.

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use shomei_notify::mail::{Email, MailError};
use shomei_notify::templates::{self, Locale, Message};
use shomei_schema::models::user::{LoginChallenge, User};
use shomei_schema::{interact, Document, Job, RequestSigner, SignatureRequest, Tenant};
use shomei_vault::DataKey;

use crate::context::JobContext;
use crate::error::JobError;
use crate::personal;
use crate::requests::{self, SignerState, SignerStatus};

/// The payload of a notify_email job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmailJob {
    pub template: Template,
    pub request_id: Uuid,
    pub to: Recipient,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Template {
    Invitation,
    VerificationCode,
    Completed,
    Declined { signer_id: Uuid },
    Cancelled,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recipient {
    Owner,
    Signer(Uuid),
}

/// The payload of a notify_email job that sends a person the code of a login
/// (`POST /v1/auth/challenges/{id}/email`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginCodeJob {
    pub login_challenge: Uuid,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Payload {
    Request(EmailJob),
    Login(LoginCodeJob),
}

pub async fn run(ctx: &JobContext, job: &Job) -> Result<serde_json::Value, JobError> {
    let payload: Payload = serde_json::from_value(job.payload.clone())
        .map_err(|e| JobError::permanent(format!("unreadable notify_email payload: {e}")))?;
    let link_ttl = ctx.link_ttl;
    let code_ttl = ctx.code_ttl;
    let public_url = ctx.public_url.clone();
    // A message that carries a fresh link token or code is a new message each time it is
    // made; the others are the same message however often the job runs (one Message-ID).
    let same_every_time = matches!(
        &payload,
        Payload::Request(EmailJob {
            template: Template::Completed | Template::Declined { .. } | Template::Cancelled,
            ..
        })
    );
    let template = match &payload {
        Payload::Request(email) => template_name(&email.template),
        Payload::Login(_) => "login_code",
    };
    let key = personal::records_key(&ctx.keys, job.tenant_id).await?;
    let prepared = interact(&ctx.db, move |conn| {
        Ok(conn.transaction(|conn| match &payload {
            Payload::Request(email) => prepare(conn, &key, email, &public_url, link_ttl, code_ttl),
            Payload::Login(login) => prepare_login_code(conn, &key, login, code_ttl),
        })?)
    })
    .await?;
    let Some((email, locale)) = prepared else {
        return Ok(serde_json::json!({"skipped": "the request moved on; nothing to send"}));
    };
    let rendered = templates::render(&email.1, locale);
    let message = Email {
        to_name: email.0.name,
        to_address: email.0.address,
        subject: rendered.subject,
        text: rendered.text,
        html: rendered.html,
        id: same_every_time.then_some(job.id),
    };
    let sent = ctx
        .mailer
        .send(&message)
        .await
        .map_err(|e| mail_error(ctx, job, e));
    let outcome = match &sent {
        Ok(()) => "sent",
        Err(JobError::Later { .. }) => "retry",
        Err(_) => "failed",
    };
    shomei_telemetry::metrics::EMAILS
        .with_label_values(&[outcome])
        .inc();
    sent?;
    Ok(serde_json::json!({"sent": template}))
}

struct To {
    name: String,
    address: String,
}

fn template_name(t: &Template) -> &'static str {
    match t {
        Template::Invitation => "invitation",
        Template::VerificationCode => "verification_code",
        Template::Completed => "completed",
        Template::Declined { .. } => "declined",
        Template::Cancelled => "cancelled",
    }
}

/// Builds the message, making (and storing the hash of) a link token or code when it carries
/// one. `None` when the e-mail no longer makes sense (the signer signed or the request ended).
fn prepare(
    conn: &mut PgConnection,
    key: &DataKey,
    job: &EmailJob,
    public_url: &str,
    link_ttl: std::time::Duration,
    code_ttl: std::time::Duration,
) -> QueryResult<Option<((To, Message), Locale)>> {
    let request = SignatureRequest::lock(conn, job.request_id)?;
    let document = Document::get(conn, request.document_id)?;
    let title = document
        .title
        .clone()
        .unwrap_or_else(|| document.id.to_string());
    let (to, locale, mut signer) = match job.to {
        Recipient::Owner => (
            To {
                name: personal::open(key, &request.owner_name)?,
                address: personal::open(key, &request.owner_email)?,
            },
            request.locale.clone(),
            None,
        ),
        Recipient::Signer(id) => {
            let signer = RequestSigner::get(conn, id)?;
            (
                To {
                    name: personal::open(key, &signer.name)?,
                    address: personal::open(key, &signer.email)?,
                },
                signer.locale.clone(),
                Some(signer),
            )
        }
    };
    let locale: Locale = locale.parse().unwrap_or_default();
    let message = match &job.template {
        Template::Invitation | Template::VerificationCode => {
            let Some(signer) = signer.as_mut() else {
                return Ok(None);
            };
            if request.status != "in_progress" || signer.status() != SignerStatus::Invited {
                return Ok(None);
            }
            if matches!(job.template, Template::Invitation) {
                let tenant = Tenant::get(conn, request.tenant_id)?;
                let (token, expires_at) = requests::issue_link(signer, link_ttl);
                signer.save(conn)?;
                Message::Invitation {
                    signer_name: to.name.clone(),
                    document_title: title,
                    sender_name: format!(
                        "{} ({})",
                        personal::open(key, &request.owner_name)?,
                        tenant.name
                    ),
                    link: format!("{public_url}/v1/signing/{token}"),
                    expires_at,
                    access_code_required: signer.access_code_hash.is_some(),
                }
            } else {
                let code = requests::issue_code(signer, code_ttl);
                signer.save(conn)?;
                Message::VerificationCode {
                    signer_name: to.name.clone(),
                    document_title: title,
                    code,
                    valid_minutes: (code_ttl.as_secs() / 60).max(1) as u32,
                }
            }
        }
        Template::Completed => Message::Completed {
            recipient_name: to.name.clone(),
            document_title: title,
        },
        Template::Declined { signer_id } => {
            let decliner = RequestSigner::get(conn, *signer_id)?;
            Message::Declined {
                recipient_name: to.name.clone(),
                document_title: title,
                signer_name: personal::open(key, &decliner.name)?,
                reason: decliner.decline_reason,
            }
        }
        Template::Cancelled => Message::Cancelled {
            recipient_name: to.name.clone(),
            document_title: title,
        },
    };
    Ok(Some(((to, message), locale)))
}

/// A login's code: made here, stored as SHA-256 bound to the login, e-mailed. `None` when the
/// login is over (completed, expired) or has had its ten codes.
fn prepare_login_code(
    conn: &mut PgConnection,
    key: &DataKey,
    job: &LoginCodeJob,
    code_ttl: std::time::Duration,
) -> QueryResult<Option<((To, Message), Locale)>> {
    let Some(challenge) = LoginChallenge::lock(conn, job.login_challenge)? else {
        return Ok(None);
    };
    if challenge.completed_at.is_some()
        || challenge.expires_at <= chrono::Utc::now()
        || challenge.codes_sent >= requests::MAX_CODES
    {
        return Ok(None);
    }
    let user = User::get(conn, challenge.user_id)?;
    let code = requests::random_code();
    let expires_at = chrono::Utc::now()
        + chrono::Duration::from_std(code_ttl).unwrap_or(chrono::Duration::minutes(10));
    LoginChallenge::set_code(
        conn,
        challenge.id,
        &requests::code_hash(challenge.id, &code),
        expires_at,
    )?;
    let name = personal::open(key, &user.name)?;
    let message = Message::LoginCode {
        name: name.clone(),
        code,
        valid_minutes: (code_ttl.as_secs() / 60).max(1) as u32,
    };
    let to = To {
        name,
        address: personal::open(key, &user.email)?,
    };
    Ok(Some(((to, message), Locale::default())))
}

/// A refused address or a 5xx reply fails the job once; anything else waits and tries again
/// on the e-mail schedule.
fn mail_error(ctx: &JobContext, job: &Job, e: MailError) -> JobError {
    if e.is_permanent() {
        return JobError::permanent(format!("the mail server refused the message: {e}"));
    }
    match shomei_notify::webhook::next_delay(&ctx.mail_schedule, job.attempts as u32, None) {
        Some(after) => JobError::later(format!("sending the e-mail failed: {e}"), after),
        None => JobError::permanent(format!(
            "gave up after {} attempts; last error: {e}",
            job.attempts
        )),
    }
}
