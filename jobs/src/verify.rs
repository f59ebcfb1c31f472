//! The **verify** job (R-VERIFY-1): checks every document of a tenant, one after the other, and
//! records a verification report per document in `verification_reports`. A document whose
//! stored bytes no longer match the SHA-256 recorded when they were written is reported as
//! changed, not skipped. Idempotent: a re-run replaces the reports the job wrote before.

use serde_json::json;

use shomei_schema::models::NewVerificationReport;
use shomei_schema::{interact, Document, Job};
use shomei_storage::StorageError;

use crate::context::JobContext;
use crate::error::JobError;

/// Documents read from PostgreSQL at a time.
const PAGE: i64 = 100;

pub async fn run(ctx: &JobContext, job: &Job) -> Result<serde_json::Value, JobError> {
    let (tenant_id, job_id) = (job.tenant_id, job.id);
    let (mut documents, mut valid, mut changed) = (0u64, 0u64, 0u64);
    let mut invalid = Vec::new();
    let mut after = None;
    loop {
        let page = interact(&ctx.db, move |conn| {
            Ok(Document::page_with_latest(conn, tenant_id, after, PAGE)?)
        })
        .await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.id);
        for (doc, latest) in page {
            let (ok, level, report) = match ctx
                .storage
                .get_verified(&latest.storage_key, &latest.sha256)
                .await
            {
                Ok(pdf) => {
                    let anchors = ctx.trust_anchors.clone();
                    let report = tokio::task::spawn_blocking(move || {
                        shomei_signing::verify_pdf(&pdf, &anchors)
                    })
                    .await
                    .map_err(|e| JobError::transient(format!("verification task failed: {e}")))?;
                    match report {
                        Ok(report) => (
                            report.valid,
                            report.level.clone(),
                            serde_json::to_value(&report)
                                .map_err(|e| JobError::permanent(e.to_string()))?,
                        ),
                        Err(e) => (
                            false,
                            None,
                            json!({"error": format!("not a readable PDF: {e}")}),
                        ),
                    }
                }
                Err(e @ (StorageError::Corrupt { .. } | StorageError::Sealed { .. }))
                    if e.is_permanent() =>
                {
                    changed += 1;
                    let error = format!(
                        "the stored bytes changed since they were recorded (they fail their \
                         authentication tag or SHA-256): {e}"
                    );
                    (false, None, json!({ "error": error }))
                }
                Err(e) => return Err(e.into()),
            };
            documents += 1;
            if ok {
                valid += 1;
            } else {
                invalid.push(doc.id);
            }
            let row = NewVerificationReport {
                job_id,
                document_id: doc.id,
                revision: latest.revision,
                valid: ok,
                level,
                report,
            };
            interact(&ctx.db, move |conn| Ok(row.upsert(conn)?)).await?;
        }
    }
    Ok(json!({
        "documents": documents,
        "valid": valid,
        "invalid": documents - valid,
        "changed_since_stored": changed,
        "invalid_documents": invalid,
    }))
}
