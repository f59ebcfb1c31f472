//! The **sign** job: adds one PAdES signature, made with the service's key in the HSM, to the
//! latest revision of a document, as a new revision: B-B, or B-T with a signature time-stamp
//! from the configured TSAs. Idempotent through [`crate::revisions`].

use serde::{Deserialize, Serialize};

use shomei_schema::Job;
use shomei_signing::SignatureRequest;

use crate::context::JobContext;
use crate::error::JobError;
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

/// What a caller asks for in `POST /v1/documents/{id}/sign`; stored as the job's payload, with
/// `level` resolved (the tenant's default when the request names none).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    pub signer: Signer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<SignatureLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signer {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

impl SignRequest {
    /// Checks what serde cannot; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let name = self.signer.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err("signer.name must be 1 to 200 characters".into());
        }
        if let Some(email) = &self.signer.email {
            let (local, domain) = email.split_once('@').unwrap_or(("", ""));
            if local.is_empty()
                || !domain.contains('.')
                || email.len() > 254
                || email.contains(char::is_whitespace)
            {
                return Err(format!("signer.email {email:?} is not an e-mail address"));
            }
        }
        for (field, value) in [("reason", &self.reason), ("location", &self.location)] {
            if value.as_ref().is_some_and(|v| v.chars().count() > 500) {
                return Err(format!("{field} is longer than 500 characters"));
            }
        }
        Ok(())
    }
}

pub async fn run(ctx: &JobContext, job: &Job) -> Result<serde_json::Value, JobError> {
    let request: SignRequest = serde_json::from_value(job.payload.clone())
        .map_err(|e| JobError::permanent(format!("unreadable sign payload: {e}")))?;
    let timestamper = match request.level.unwrap_or(SignatureLevel::Timestamped) {
        SignatureLevel::Basic => None,
        SignatureLevel::Timestamped => Some(ctx.timestamper()?),
    };
    let (latest, bytes) = match revisions::begin(ctx, job).await? {
        Start::AlreadyDone(result) => return Ok(result),
        Start::Work { latest, bytes } => (latest, bytes),
    };

    let signature = SignatureRequest {
        key_label: ctx.key_label.clone(),
        signer_name: request.signer.name,
        signer_email: request.signer.email,
        reason: request.reason,
        location: request.location,
        signing_time: chrono::Utc::now(),
    };
    let hsm = ctx.hsm.clone();
    let signed = tokio::task::spawn_blocking(move || {
        shomei_signing::sign_pdf(&hsm, &bytes, &signature, timestamper.as_deref())
    })
    .await
    .map_err(|e| JobError::transient(format!("signing task failed: {e}")))??;
    revisions::record(ctx, job, &latest, signed).await
}
