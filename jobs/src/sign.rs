//! The **sign** job: adds one PAdES signature, made in the HSM, to the latest revision of a
//! document, as a new revision: B-B, or B-T with a signature time-stamp from the configured
//! TSAs. Idempotent through `crate::revisions`; records `document.signed`.
//!
//! A job made for a signature request (its payload has a [`RequestStep`]) signs with the
//! service's key as witness, or with the signer's own key (certified) once the API has checked
//! the signer's PIN, and then moves the request on ([`crate::requests::signed`]).

use serde::{Deserialize, Serialize};

use serde_json::json;
use shomei_schema::{interact, Job, JobKind, NewJob, RequestSigner, Revision};
use shomei_signing::SignatureRequest;
use shomei_vault::{DataKey, Keyring};

use crate::context::JobContext;
use crate::error::JobError;
use crate::events::{kind, NewEvent, Pending};
use crate::personal;
use crate::registry::Done;
use crate::requests::{self, RequestStep, SignerState, SignerStatus};
use crate::revisions::{self, Start};

/// The PAdES baseline level of one signature (ETSI EN 319 142-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignatureLevel {
    /// The signature alone.
    #[serde(rename = "B-B")]
    Basic,
    /// With a signature time-stamp from a TSA proving when it was made (R-SIGN-2).
    #[serde(rename = "B-T")]
    Timestamped,
}

impl SignatureLevel {
    pub const fn as_str(self) -> &'static str {
        match self {
            SignatureLevel::Basic => "B-B",
            SignatureLevel::Timestamped => "B-T",
        }
    }
}

impl std::str::FromStr for SignatureLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "B-B" => Ok(SignatureLevel::Basic),
            "B-T" => Ok(SignatureLevel::Timestamped),
            other => Err(format!("unknown signature level {other:?} (B-B or B-T)")),
        }
    }
}

/// What a caller asks for in `POST /v1/documents/{id}/sign`; stored as the job's payload
/// ([`SignRequest::to_payload`], personal parts sealed), with `level` resolved (the tenant's
/// default when the request names none). Deliberately not `Serialize`: it holds personal data
/// in the clear.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    pub signer: Signer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<SignatureLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Conclude the contract once this signature is recorded: a timestamp job (validation data
    /// and a document time-stamp, B-LTA) is queued in the same transaction.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub conclude: bool,
    /// Set only by the signature-request flow; the sign route refuses it from callers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<RequestStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signer {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// The personal parts of a sign request: who signs, why and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Personal {
    signer: Signer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    location: Option<String>,
}

/// The signer's name in a sealed `Personal` (a stored payload's `personal`).
pub async fn signer_name(keys: &Keyring, sealed: &str) -> Result<String, shomei_vault::VaultError> {
    let personal: Personal = serde_json::from_str(&personal::open_text(keys, sealed).await?)
        .map_err(|_| {
            shomei_vault::VaultError::Corrupt("a sign payload's personal part is not JSON")
        })?;
    Ok(personal.signer.name)
}

/// A sign job's stored payload: the request with its personal parts sealed with the tenant's
/// records key ([`crate::personal`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    /// [`Personal`] as JSON, sealed.
    personal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    level: Option<SignatureLevel>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    conclude: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    step: Option<RequestStep>,
}

impl SignRequest {
    /// The job payload, with the personal parts sealed.
    pub fn to_payload(&self, key: &DataKey) -> serde_json::Value {
        let personal = Personal {
            signer: self.signer.clone(),
            reason: self.reason.clone(),
            location: self.location.clone(),
        };
        let personal = serde_json::to_string(&personal).expect("serializable");
        json!(Payload {
            personal: personal::seal_text(key, &personal),
            level: self.level,
            conclude: self.conclude,
            step: self.step.clone(),
        })
    }

    /// The request as JSON, for idempotency fingerprints (never stored).
    pub fn fingerprint(&self) -> serde_json::Value {
        json!({
            "personal": Personal {
                signer: self.signer.clone(),
                reason: self.reason.clone(),
                location: self.location.clone(),
            },
            "level": self.level,
            "conclude": self.conclude,
        })
    }

    /// Reads a job payload back, opening its personal parts.
    pub async fn from_payload(
        keys: &Keyring,
        payload: &serde_json::Value,
    ) -> Result<SignRequest, JobError> {
        let stored: Payload = serde_json::from_value(payload.clone())
            .map_err(|e| JobError::permanent(format!("unreadable sign payload: {e}")))?;
        let personal: Personal =
            serde_json::from_str(&personal::open_text(keys, &stored.personal).await?)
                .map_err(|e| JobError::permanent(format!("unreadable sign payload: {e}")))?;
        Ok(SignRequest {
            signer: personal.signer,
            level: stored.level,
            reason: personal.reason,
            location: personal.location,
            conclude: stored.conclude,
            step: stored.step,
        })
    }

    /// Checks what serde cannot; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        check_name("signer.name", &self.signer.name)?;
        if let Some(email) = &self.signer.email {
            check_email("signer.email", email)?;
        }
        for (field, value) in [("reason", &self.reason), ("location", &self.location)] {
            if value.as_ref().is_some_and(|v| v.chars().count() > 500) {
                return Err(format!("{field} is longer than 500 characters"));
            }
        }
        Ok(())
    }
}

/// A person's name: 1 to 200 characters once trimmed; the error names `field`.
pub fn check_name(field: &str, name: &str) -> Result<(), String> {
    let n = name.trim().chars().count();
    if n == 0 || n > 200 {
        return Err(format!("{field} must be 1 to 200 characters"));
    }
    Ok(())
}

/// A plausible e-mail address (the mail server has the last word); the error names `field`.
pub fn check_email(field: &str, email: &str) -> Result<(), String> {
    let (local, domain) = email.split_once('@').unwrap_or(("", ""));
    if local.is_empty()
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || email.len() > 254
        || email.contains(char::is_whitespace)
        || email.matches('@').count() != 1
    {
        return Err(format!("{field} {email:?} is not an e-mail address"));
    }
    Ok(())
}

/// `starting`: the revision the job starts from, read when it was claimed.
pub(crate) async fn run(
    ctx: &JobContext,
    job: &Job,
    starting: Option<Revision>,
) -> Result<Done, JobError> {
    let request = SignRequest::from_payload(&ctx.keys, &job.payload).await?;
    let timestamper = match request.level.unwrap_or(SignatureLevel::Timestamped) {
        SignatureLevel::Basic => None,
        SignatureLevel::Timestamped => Some(ctx.timestamper()?),
    };
    let base = match revisions::begin(ctx, job, starting).await? {
        Start::AlreadyDone(result) => return Ok(Done::Result(result)),
        Start::Work(base) => base,
    };
    if let Some(step) = &request.step {
        still_signing(ctx, job, step).await?;
    }

    let key_label = request
        .step
        .as_ref()
        .and_then(|s| s.key_label.clone())
        .unwrap_or_else(|| ctx.key_label.clone());
    // The signer's name and address stay out of the event (they are in the signed file).
    let mut data = json!({
        "level": request.level.map(SignatureLevel::as_str),
    });
    if let Some(step) = &request.step {
        data["signer_id"] = json!(step.signer_id);
        data["method"] = json!(step.method);
    }
    let event = NewEvent {
        tenant_id: job.tenant_id,
        kind: kind::DOCUMENT_SIGNED,
        document_id: Some(base.revision.document_id),
        request_id: request.step.as_ref().map(|s| s.request_id),
        actor: format!("job:{}", job.id),
        ip: request.step.as_ref().and_then(|s| s.ip.clone()),
        data,
    };
    let signature = SignatureRequest {
        key_label,
        signer_name: request.signer.name,
        signer_email: request.signer.email,
        reason: request.reason,
        location: request.location,
        signing_time: chrono::Utc::now(),
    };
    let hsm = ctx.hsm.clone();
    let signed = revisions::make(ctx, job, &base, move |pdf, hashed| {
        shomei_signing::sign_pdf_hashed(&hsm, pdf, hashed, &signature, timestamper.as_deref())
    })
    .await?;

    let level = request.level.unwrap_or(SignatureLevel::Timestamped);
    let then_conclude = request.conclude;
    let step = request.step;
    let conclude = ctx.concludes_with_timestamp();
    let done = job.clone();
    let done = revisions::record(ctx, job, &base, signed, Some(event), move |conn| {
        if let Some(step) = &step {
            return requests::signed(conn, &done, step, conclude);
        }
        if !then_conclude {
            return Ok(Pending::default());
        }
        let timestamp = NewJob {
            id: uuid::Uuid::now_v7(),
            tenant_id: done.tenant_id,
            kind: JobKind::Timestamp.as_str(),
            document_id: done.document_id,
            payload: json!({}),
            batch_id: done.batch_id,
            ..NewJob::default()
        };
        Ok(Pending::jobs(Job::insert_all(conn, &[timestamp])?))
    })
    .await?;
    shomei_telemetry::metrics::DOCUMENTS_SIGNED
        .with_label_values(&[level.as_str()])
        .inc();
    Ok(done)
}

/// The request step of a sign job, if it was made for a signature request.
pub(crate) fn step_of(job: &Job) -> Option<RequestStep> {
    let step = job.payload.get("step")?;
    serde_json::from_value(step.clone()).ok()
}

/// A request's signer may have been cancelled (or the request declined) since the job was
/// queued: then the document is not signed for them.
async fn still_signing(ctx: &JobContext, job: &Job, step: &RequestStep) -> Result<(), JobError> {
    let signer_id = step.signer_id;
    let signer = interact(&ctx.db, move |conn| {
        Ok(RequestSigner::get(conn, signer_id)?)
    })
    .await?;
    if signer.status() != SignerStatus::Signing || signer.sign_job_id != Some(job.id) {
        return Err(JobError::permanent(format!(
            "the signer is no longer waiting for this signature (status {})",
            signer.status
        )));
    }
    Ok(())
}
