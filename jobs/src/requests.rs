//! Signature requests (R-SIGN-3, R-SIGN-6): a document goes round an ordered list of signers.
//! Every transition is a function here, run inside the caller's transaction with the request
//! row locked, and records its event ([`crate::events`]) in that same transaction.
//!
//! ```text
//! create ──► signer 1 invited ──(code or PIN checks out)──► signing ──(sign job)──► signed
//!                                                                                      │
//!            signer 2 invited ◄──────────────────────────────────────────────────────┘
//!            ...        last signer signed ──► timestamp job (conclusion) ──► completed
//! any invited signer may decline (request declined); the sender may cancel (cancelled)
//! ```
//!
//! Secrets: the link token (32 random bytes) and the 6-digit code are stored as SHA-256 only;
//! the access code and a certified signer's PIN, which people choose and remember, as Argon2id.

use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use rand::{Rng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use shomei_schema::{Job, JobKind, NewJob, RequestSigner, SignatureRequest};

use crate::events::{self, kind, NewEvent, Pending};

/// Wrong codes (or access codes) before a code is spent and a new one must be asked for.
pub const CODE_ATTEMPTS: i32 = 5;
/// Codes one signer can ask for; with [`CODE_ATTEMPTS`] it bounds the guesses at 50 in 10^6.
pub const MAX_CODES: i32 = 10;
/// Wrong PINs (or access codes) before a certified signer's identity is locked.
pub const PIN_ATTEMPTS: i32 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignerStatus {
    Waiting,
    Invited,
    Signing,
    Signed,
    Declined,
    Cancelled,
}

impl SignerStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            SignerStatus::Waiting => "waiting",
            SignerStatus::Invited => "invited",
            SignerStatus::Signing => "signing",
            SignerStatus::Signed => "signed",
            SignerStatus::Declined => "declined",
            SignerStatus::Cancelled => "cancelled",
        }
    }
}

/// The typed view of a signer's `status` column.
pub trait SignerState {
    fn status(&self) -> SignerStatus;
    fn set_status(&mut self, status: SignerStatus);
}

impl SignerState for RequestSigner {
    fn status(&self) -> SignerStatus {
        match self.status.as_str() {
            "invited" => SignerStatus::Invited,
            "signing" => SignerStatus::Signing,
            "signed" => SignerStatus::Signed,
            "declined" => SignerStatus::Declined,
            "cancelled" => SignerStatus::Cancelled,
            _ => SignerStatus::Waiting,
        }
    }

    fn set_status(&mut self, status: SignerStatus) {
        status.as_str().clone_into(&mut self.status);
    }
}

/// How a signer proves who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// A one-time code e-mailed to the signer's address; the service's key signs, as witness.
    Witness,
    /// The signer's own key in the HSM, released by the signer's PIN.
    Certified,
}

impl Method {
    pub const fn as_str(self) -> &'static str {
        match self {
            Method::Witness => "witness",
            Method::Certified => "certified",
        }
    }
}

/// What a sign job made for a request carries besides the signature fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestStep {
    pub request_id: Uuid,
    pub signer_id: Uuid,
    pub method: Method,
    /// The signer's own key (certified); `None`: the service's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

pub struct NewSigner {
    /// Sealed.
    pub name: Vec<u8>,
    /// Sealed.
    pub email: Vec<u8>,
    pub locale: String,
    pub method: Method,
    pub identity_id: Option<Uuid>,
    /// Argon2id hash of the access code, when the signer needs one.
    pub access_code_hash: Option<String>,
}

pub struct NewRequest {
    pub tenant_id: Uuid,
    pub document_id: Uuid,
    /// Sealed with the tenant's records key, like the signers' names and addresses.
    pub owner_name: Vec<u8>,
    pub owner_email: Vec<u8>,
    pub locale: String,
    pub message: Option<String>,
    pub signers: Vec<NewSigner>,
}

/// Creates the request and invites its first signer. A document already in an open request
/// violates `signature_requests_open`, which the caller reports as a conflict.
pub fn create(
    conn: &mut PgConnection,
    new: NewRequest,
    actor: String,
    ip: Option<String>,
) -> QueryResult<(SignatureRequest, Vec<RequestSigner>, Pending)> {
    let request = SignatureRequest {
        id: Uuid::now_v7(),
        tenant_id: new.tenant_id,
        document_id: new.document_id,
        status: "in_progress".into(),
        owner_name: new.owner_name,
        owner_email: new.owner_email,
        locale: new.locale,
        message: new.message,
        created_at: Utc::now(),
        finished_at: None,
    };
    diesel::insert_into(shomei_schema::schema::signature_requests::table)
        .values(&request)
        .execute(conn)?;
    let signers: Vec<RequestSigner> = new
        .signers
        .into_iter()
        .enumerate()
        .map(|(i, s)| RequestSigner {
            id: Uuid::now_v7(),
            request_id: request.id,
            position: i as i32 + 1,
            name: s.name,
            email: s.email,
            locale: s.locale,
            method: s.method.as_str().into(),
            identity_id: s.identity_id,
            access_code_hash: s.access_code_hash,
            status: if i == 0 { "invited" } else { "waiting" }.into(),
            link_sha256: None,
            link_expires_at: None,
            otp_sha256: None,
            otp_expires_at: None,
            otp_failures: 0,
            codes_sent: 0,
            sign_job_id: None,
            signed_ip: None,
            signed_at: None,
            decline_reason: None,
        })
        .collect();
    diesel::insert_into(shomei_schema::schema::request_signers::table)
        .values(&signers)
        .execute(conn)?;
    let event = |kind, data| NewEvent {
        tenant_id: request.tenant_id,
        kind,
        document_id: Some(request.document_id),
        request_id: Some(request.id),
        actor: actor.clone(),
        ip: ip.clone(),
        data,
    };
    let mut pending = events::emit(
        conn,
        event(kind::REQUEST_CREATED, json!({"signers": signers.len()})),
    )?;
    pending.add(events::emit(
        conn,
        event(kind::REQUEST_SENT, signer_data(&signers[0])),
    )?);
    Ok((request, signers, pending))
}

fn signer_data(signer: &RequestSigner) -> serde_json::Value {
    json!({
        "signer_id": signer.id.to_string(),
        "position": signer.position,
        "method": signer.method,
    })
}

/// The signer checked out (code or PIN): marks it signing and records the sign job made for it.
pub fn start_signing(
    conn: &mut PgConnection,
    request: &SignatureRequest,
    signer: &mut RequestSigner,
    job: NewJob,
    ip: Option<String>,
) -> QueryResult<Pending> {
    let job_id = job.id;
    let mut pending = Pending::jobs(Job::insert_all(conn, std::slice::from_ref(&job))?);
    signer.set_status(SignerStatus::Signing);
    signer.otp_sha256 = None;
    signer.otp_expires_at = None;
    signer.sign_job_id = Some(job_id);
    signer.signed_ip = ip.clone();
    signer.save(conn)?;
    let mut data = signer_data(signer);
    data["sign_job_id"] = json!(job_id);
    pending.add(events::emit(
        conn,
        NewEvent {
            tenant_id: request.tenant_id,
            kind: kind::SIGNER_AUTHENTICATED,
            document_id: Some(request.document_id),
            request_id: Some(request.id),
            actor: format!("signer:{}", signer.id),
            ip,
            data,
        },
    )?);
    Ok(pending)
}

/// The sign job of `step` has recorded its revision: the signer has signed, and the request
/// moves to the next signer or, after the last, to its conclusion. Runs in the transaction
/// that records the revision, so it happens exactly once.
pub fn signed(
    conn: &mut PgConnection,
    job: &Job,
    step: &RequestStep,
    conclude: bool,
) -> QueryResult<Pending> {
    let mut request = SignatureRequest::lock(conn, step.request_id)?;
    let signers = request.signers(conn)?;
    let Some(mut signer) = signers.iter().find(|s| s.id == step.signer_id).cloned() else {
        return Ok(Pending::default());
    };
    signer.set_status(SignerStatus::Signed);
    signer.signed_at = Some(Utc::now());
    signer.save(conn)?;
    let (tenant_id, document_id, request_id) = (request.tenant_id, request.document_id, request.id);
    let event = |kind, data| NewEvent {
        tenant_id,
        kind,
        document_id: Some(document_id),
        request_id: Some(request_id),
        actor: format!("job:{}", job.id),
        ip: None,
        data,
    };
    if let Some(next) = signers
        .iter()
        .find(|s| s.position > signer.position && s.status() == SignerStatus::Waiting)
    {
        let mut next = next.clone();
        next.set_status(SignerStatus::Invited);
        next.save(conn)?;
        return events::emit(conn, event(kind::REQUEST_SENT, signer_data(&next)));
    }
    request.finish(conn, "completed")?;
    if !conclude {
        return events::emit(conn, event(kind::DOCUMENT_COMPLETED, json!({})));
    }
    // The contract is concluded by a document time-stamp; `document.completed` follows it.
    let timestamp = NewJob {
        id: Uuid::now_v7(),
        tenant_id: request.tenant_id,
        kind: JobKind::Timestamp.as_str(),
        document_id: Some(request.document_id),
        payload: json!({"concludes_request": request.id}),
        idempotency_key: None,
        request_sha256: None,
        batch_id: None,
    };
    Ok(Pending::jobs(Job::insert_all(conn, &[timestamp])?))
}

/// The conclusion time-stamp of a request is recorded: the contract is complete.
pub fn concluded(conn: &mut PgConnection, job: &Job, request_id: Uuid) -> QueryResult<Pending> {
    let request = SignatureRequest::lock(conn, request_id)?;
    events::emit(
        conn,
        NewEvent {
            tenant_id: request.tenant_id,
            kind: kind::DOCUMENT_COMPLETED,
            document_id: Some(request.document_id),
            request_id: Some(request.id),
            actor: format!("job:{}", job.id),
            ip: None,
            data: json!({}),
        },
    )
}

/// A sign job for a request failed for good: the signer may try again.
pub fn sign_failed(conn: &mut PgConnection, step: &RequestStep) -> QueryResult<()> {
    let _request = SignatureRequest::lock(conn, step.request_id)?;
    let mut signer = RequestSigner::get(conn, step.signer_id)?;
    if signer.status() == SignerStatus::Signing {
        signer.set_status(SignerStatus::Invited);
        signer.save(conn)?;
    }
    Ok(())
}

/// The invited signer declines: the request ends and its owner is told.
pub fn decline(
    conn: &mut PgConnection,
    request: &mut SignatureRequest,
    signer: &mut RequestSigner,
    reason: Option<String>,
    ip: Option<String>,
) -> QueryResult<Pending> {
    signer.set_status(SignerStatus::Declined);
    signer.decline_reason = reason.clone();
    signer.save(conn)?;
    request.finish(conn, "declined")?;
    events::emit(
        conn,
        NewEvent {
            tenant_id: request.tenant_id,
            kind: kind::REQUEST_DECLINED,
            document_id: Some(request.document_id),
            request_id: Some(request.id),
            actor: format!("signer:{}", signer.id),
            ip,
            data: json!({"signer_id": signer.id.to_string(), "reason": reason}),
        },
    )
}

/// The sender cancels: links stop working (they answer that the request was cancelled) and
/// the signer whose turn it was is told.
pub fn cancel(
    conn: &mut PgConnection,
    request: &mut SignatureRequest,
    actor: String,
    ip: Option<String>,
) -> QueryResult<Pending> {
    let mut notified = None;
    for mut signer in request.signers(conn)? {
        if matches!(
            signer.status(),
            SignerStatus::Invited | SignerStatus::Waiting
        ) {
            if signer.status() == SignerStatus::Invited {
                notified = Some(signer.id.to_string());
            }
            signer.set_status(SignerStatus::Cancelled);
            signer.save(conn)?;
        }
    }
    request.finish(conn, "cancelled")?;
    events::emit(
        conn,
        NewEvent {
            tenant_id: request.tenant_id,
            kind: kind::REQUEST_CANCELLED,
            document_id: Some(request.document_id),
            request_id: Some(request.id),
            actor,
            ip,
            data: json!({"notified_signer_id": notified}),
        },
    )
}

/// A new link token for the signer (the previous one stops working). Returns the token, to
/// e-mail, and when it expires; only its hash goes to the row.
pub fn issue_link(signer: &mut RequestSigner, ttl: Duration) -> (String, DateTime<Utc>) {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let token = hex::encode(raw);
    let expires_at = Utc::now() + ttl;
    signer.link_sha256 = Some(token_hash(&token));
    signer.link_expires_at = Some(expires_at);
    (token, expires_at)
}

/// A new 6-digit one-time code (the previous one stops working); only its hash is kept.
/// A fresh 6-digit one-time code.
pub fn random_code() -> String {
    format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000))
}

pub fn issue_code(signer: &mut RequestSigner, ttl: Duration) -> String {
    let code = random_code();
    signer.otp_sha256 = Some(code_hash(signer.id, &code));
    signer.otp_expires_at = Some(Utc::now() + ttl);
    signer.otp_failures = 0;
    code
}

pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Bound to the signer, so one code's hash says nothing about another signer's.
/// How a one-time code is stored: SHA-256 over the id it was made for (a signer, a login) and
/// the code.
pub fn code_hash(owner_id: Uuid, code: &str) -> Vec<u8> {
    Sha256::new()
        .chain_update(owner_id.as_bytes())
        .chain_update(code.as_bytes())
        .finalize()
        .to_vec()
}

/// Argon2id (the crate's defaults: 19 MiB, 2 passes) of a PIN or access code. Slow by
/// design: call it off the async executor.
pub fn hash_secret(secret: &str) -> String {
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .expect("Argon2 with default parameters hashes any input")
        .to_string()
}

/// Whether `secret` matches an Argon2 hash made by [`hash_secret`]. Slow by design.
pub fn verify_secret(hash: &str, secret: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}
