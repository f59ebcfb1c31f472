//! The **sign** job: adds one PAdES signature, made with the service's key in the HSM, to the
//! latest revision of a document, as a new revision.
//!
//! Idempotent by construction: the revision it adds carries the job id (unique in
//! `document_revisions`), so a job that runs again after a crash (even one that died after
//! recording the revision but before the job was marked done) finds its revision and stops.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use shomei_schema::{interact, Job, Revision};
use shomei_signing::SignatureRequest;

use crate::context::JobContext;
use crate::error::JobError;

/// What a caller asks for in `POST /v1/documents/{id}/sign`; stored as the job's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    pub signer: Signer,
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
    let document_id = job
        .document_id
        .ok_or_else(|| JobError::permanent("sign job without a document"))?;
    let request: SignRequest = serde_json::from_value(job.payload.clone())
        .map_err(|e| JobError::permanent(format!("unreadable sign payload: {e}")))?;

    let job_id = job.id;
    let (done, latest) = interact(&ctx.db, move |conn| {
        Ok((
            Revision::made_by_job(conn, job_id)?,
            Revision::latest(conn, document_id)?,
        ))
    })
    .await?;
    if let Some(revision) = done {
        // A re-delivery after the work was recorded: report the same result again.
        return Ok(result(&revision));
    }

    let original = ctx
        .storage
        .get_verified(&latest.storage_key, &latest.sha256)
        .await?;
    let signature = SignatureRequest {
        key_label: ctx.key_label.clone(),
        signer_name: request.signer.name,
        signer_email: request.signer.email,
        reason: request.reason,
        location: request.location,
        signing_time: chrono::Utc::now(),
    };
    let hsm = ctx.hsm.clone();
    let signed =
        tokio::task::spawn_blocking(move || shomei_signing::sign_pdf(&hsm, &original, &signature))
            .await
            .map_err(|e| JobError::transient(format!("signing task failed: {e}")))??;

    let stored = ctx
        .storage
        .put_pdf(job.tenant_id, document_id, Bytes::from(signed))
        .await?;
    let revision = Revision {
        document_id,
        revision: latest.revision + 1,
        sha256: stored.sha256.to_vec(),
        size_bytes: stored.size as i64,
        storage_key: stored.key,
        job_id: Some(job_id),
        created_at: chrono::Utc::now(),
    };
    let outcome = result(&revision);
    // Another signature landing on the same revision first makes this insert conflict on
    // (document_id, revision): a transient error, and the retry signs on top of it.
    interact(&ctx.db, move |conn| Ok(revision.insert(conn)?)).await?;
    Ok(outcome)
}

fn result(revision: &Revision) -> serde_json::Value {
    json!({
        "document_id": revision.document_id,
        "revision": revision.revision,
        "sha256": hex::encode(&revision.sha256),
    })
}
