//! The **deletion** job (R-DEL-1 … R-DEL-4): a cancelled tenant's files once their deletion is
//! due, or one document's files on request.
//!
//! For every object it deletes it first records evidence in `deletion_log` (object, SHA-256
//! and size of the stored bytes, time, reason, actor), then removes the object; a run cut short
//! and run again records nothing twice and finishes the rest. Transaction records (documents,
//! signature requests, signers, events) are only marked deleted and stay (R-DEL-2).
//!
//! A document that something still holds (a hold: a counterparty's account or a legal hold; or
//! a signer's link that is still open), and an export whose download link is still open, are
//! skipped (R-DEL-3), and the job schedules itself again for a day later. Once nothing of the
//! tenant is left, its content data key is destroyed (its KEK in the HSM, then the wrapped
//! copy), so every backup of its documents becomes unreadable at once (R-DEL-4).
//!
//! Deletion dates are `run_after` on the job row: the reconciler pushes the job when it is due,
//! so the date survives restarts and Redis losing everything, and the job row is claimed by one
//! worker at a time.

use chrono::{Duration as ChronoDuration, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use shomei_schema::models::deletion::{self, DeletionRecord};
use shomei_schema::{interact, Export, Job, JobKind, NewJob, Tenant};
use shomei_storage::{ObjectFingerprint, Storage};
use shomei_vault::Purpose;

use crate::context::JobContext;
use crate::error::JobError;
use crate::events::{self, kind, NewEvent, Pending};

/// How long a deletion that found held documents waits before it looks again.
const RECHECK_AFTER_HOURS: i64 = 24;
const PAGE: i64 = 200;

/// The payload of a deletion job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum DeletionJob {
    /// Everything of a cancelled tenant, once its deletion is due.
    Tenant,
    /// One document, on the tenant's request.
    Document { document_id: Uuid },
}

impl DeletionJob {
    /// The job row (scheduled with [`Job::insert_scheduled`] or queued at once).
    pub fn new_job(&self, tenant_id: Uuid, idempotency_key: Option<String>) -> NewJob {
        let document_id = match self {
            DeletionJob::Tenant => None,
            DeletionJob::Document { document_id } => Some(*document_id),
        };
        NewJob {
            id: Uuid::now_v7(),
            tenant_id,
            kind: JobKind::Deletion.as_str(),
            document_id,
            payload: json!(self),
            idempotency_key,
            ..NewJob::default()
        }
    }
}

pub async fn run(ctx: &JobContext, job: &Job) -> Result<serde_json::Value, JobError> {
    let payload: DeletionJob = serde_json::from_value(job.payload.clone())
        .map_err(|e| JobError::permanent(format!("unreadable deletion payload: {e}")))?;
    match payload {
        DeletionJob::Tenant => delete_tenant(ctx, job).await,
        DeletionJob::Document { document_id } => {
            let reason = "deleted at the tenant's request";
            let deleted = delete_document(ctx, job, document_id, reason).await?;
            Ok(json!({"document_id": document_id, "objects_deleted": deleted}))
        }
    }
}

/// Records the evidence of one object, then removes it. `None`: it was gone already.
async fn delete_object(
    ctx: &JobContext,
    job: &Job,
    key: &str,
    object_kind: &'static str,
    document_id: Option<Uuid>,
    reason: &str,
) -> Result<Option<ObjectFingerprint>, JobError> {
    let Some(found) = ctx.storage.fingerprint(key).await? else {
        return Ok(None);
    };
    let record = DeletionRecord {
        id: Uuid::now_v7(),
        tenant_id: job.tenant_id,
        document_id,
        object_kind: object_kind.to_owned(),
        object_id: key.to_owned(),
        ciphertext_sha256: Some(found.sha256.to_vec()),
        size_bytes: Some(found.size as i64),
        reason: reason.to_owned(),
        actor: format!("job:{}", job.id),
        job_id: Some(job.id),
        deleted_at: Utc::now(),
    };
    interact(&ctx.db, move |conn| Ok(record.insert(conn)?)).await?;
    ctx.storage.remove(key).await?;
    Ok(Some(found))
}

/// Deletes every stored revision of a document and marks it deleted. Refused (permanently)
/// while something holds it.
async fn delete_document(
    ctx: &JobContext,
    job: &Job,
    document_id: Uuid,
    reason: &str,
) -> Result<usize, JobError> {
    let hold = interact(&ctx.db, move |conn| {
        Ok(deletion::hold_on(conn, document_id)?)
    })
    .await?;
    if let Some(hold) = hold {
        return Err(JobError::permanent(format!(
            "document {document_id} cannot be deleted yet: {hold}"
        )));
    }
    let prefix = Storage::document_prefix(job.tenant_id, document_id);
    let mut deleted = 0;
    for key in ctx.storage.list(&prefix).await? {
        let kind = "document_revision";
        if delete_object(ctx, job, &key, kind, Some(document_id), reason)
            .await?
            .is_some()
        {
            deleted += 1;
        }
    }
    let (reason, actor, tenant_id) = (reason.to_owned(), format!("job:{}", job.id), job.tenant_id);
    let pending = interact(&ctx.db, move |conn| {
        Ok(conn.transaction(|conn| {
            deletion::mark_document_deleted(conn, document_id, &reason)?;
            events::emit(
                conn,
                NewEvent {
                    tenant_id,
                    kind: kind::DOCUMENT_DELETED,
                    document_id: Some(document_id),
                    request_id: None,
                    actor,
                    ip: None,
                    data: json!({"reason": reason, "objects_deleted": deleted}),
                },
            )
        })?)
    })
    .await?;
    pending.push(&ctx.queue).await;
    Ok(deleted)
}

async fn delete_tenant(ctx: &JobContext, job: &Job) -> Result<serde_json::Value, JobError> {
    let tenant_id = job.tenant_id;
    let tenant = interact(&ctx.db, move |conn| Ok(Tenant::get(conn, tenant_id)?)).await?;
    if tenant.deleted_at.is_some() {
        return Ok(json!({"already_deleted": true}));
    }
    let (Some(cancelled_at), Some(due)) = (tenant.cancelled_at, tenant.deletion_due_at) else {
        return Err(JobError::permanent("the tenant has not cancelled"));
    };
    if let Ok(wait) = (due - Utc::now()).to_std() {
        return Err(JobError::later(format!("deletion is due at {due}"), wait));
    }
    let reason = format!(
        "the tenant cancelled on {}; its files are deleted at the end of the second month after",
        cancelled_at.to_rfc3339()
    );

    let mut documents_deleted = 0;
    let mut held: Vec<(Uuid, String)> = Vec::new();
    let mut after = None;
    loop {
        let page = interact(&ctx.db, move |conn| {
            Ok(deletion::undeleted_documents(conn, tenant_id, after, PAGE)?)
        })
        .await?;
        let Some(last) = page.last() else { break };
        after = Some(*last);
        for document_id in page {
            let hold = interact(&ctx.db, move |conn| {
                Ok(deletion::hold_on(conn, document_id)?)
            })
            .await?;
            if let Some(hold) = hold {
                held.push((document_id, hold));
                continue;
            }
            delete_document(ctx, job, document_id, &reason).await?;
            documents_deleted += 1;
        }
    }

    // Whatever else is stored for the tenant: export archives (unless their download link is
    // still open) and objects no revision records (a job that crashed before recording one).
    let open_exports = interact(&ctx.db, move |conn| {
        Ok(Export::open_links(conn, tenant_id)?)
    })
    .await?;
    let mut kept: Vec<String> = held
        .iter()
        .map(|(id, _)| Storage::document_prefix(tenant_id, *id) + "/")
        .collect();
    kept.extend(
        open_exports
            .iter()
            .map(|id| Storage::export_prefix(tenant_id, *id) + "/"),
    );
    let mut objects_deleted = 0;
    for key in ctx.storage.list(&Storage::tenant_prefix(tenant_id)).await? {
        if kept.iter().any(|prefix| key.starts_with(prefix)) {
            continue;
        }
        let kind = if key.contains("/exports/") {
            "export_part"
        } else {
            "object"
        };
        if delete_object(ctx, job, &key, kind, None, &reason)
            .await?
            .is_some()
        {
            objects_deleted += 1;
        }
    }

    if !held.is_empty() || !open_exports.is_empty() {
        // The content key must live while anything it sealed is kept: look again later.
        let retry = DeletionJob::Tenant.new_job(
            tenant_id,
            Some(format!("deletion:{}", Utc::now().format("%Y-%m-%dT%H"))),
        );
        let at = Utc::now() + ChronoDuration::hours(RECHECK_AFTER_HOURS);
        interact(&ctx.db, move |conn| {
            Ok(Job::insert_scheduled(conn, &retry, at)?)
        })
        .await?;
        return Ok(json!({
            "documents_deleted": documents_deleted,
            "objects_deleted": objects_deleted,
            "held": held.iter().map(|(id, why)| json!({"document_id": id, "reason": why})).collect::<Vec<_>>(),
            "open_exports": open_exports,
            "data_key_destroyed": false,
        }));
    }

    let destroyed = ctx.keys.destroy(tenant_id, Purpose::Content).await?;
    let actor = format!("job:{}", job.id);
    let job_id = job.id;
    let pending: Pending = interact(&ctx.db, move |conn| {
        Ok(conn.transaction(|conn| {
            if let Some(key_id) = destroyed {
                DeletionRecord {
                    id: Uuid::now_v7(),
                    tenant_id,
                    document_id: None,
                    object_kind: "data_key".into(),
                    object_id: key_id.to_string(),
                    ciphertext_sha256: None,
                    size_bytes: None,
                    reason: "crypto-shredding: every copy of what this key sealed, backups \
                             included, is unreadable"
                        .into(),
                    actor: actor.clone(),
                    job_id: Some(job_id),
                    deleted_at: Utc::now(),
                }
                .insert(conn)?;
            }
            Tenant::mark_deleted(conn, tenant_id)?;
            events::emit(
                conn,
                NewEvent {
                    tenant_id,
                    kind: kind::TENANT_DELETED,
                    document_id: None,
                    request_id: None,
                    actor,
                    ip: None,
                    data: json!({
                        "documents_deleted": documents_deleted,
                        "objects_deleted": objects_deleted,
                        "data_key_destroyed": destroyed,
                    }),
                },
            )
        })?)
    })
    .await?;
    pending.push(&ctx.queue).await;
    tracing::info!(%tenant_id, documents_deleted, objects_deleted, "tenant deleted");
    Ok(json!({
        "documents_deleted": documents_deleted,
        "objects_deleted": objects_deleted,
        "held": [],
        "data_key_destroyed": destroyed,
    }))
}
