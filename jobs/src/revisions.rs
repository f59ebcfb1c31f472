//! What every job that adds a document revision shares: where it starts from, and how its
//! result is recorded so that running it again is a no-op.
//!
//! The revision a job adds carries the job id (unique in `document_revisions`). A job that runs
//! again after a crash (even one that died after recording the revision but before the job was
//! marked done) finds its revision and reports it instead of adding another. Two jobs racing on
//! one document collide on `(document_id, revision)`; the loser's insert fails, a transient
//! error, and its retry works on top of the winner's revision.

use serde_json::json;

use diesel::{PgConnection, QueryResult};

use sha2::Sha256;
use shomei_schema::{Job, Revision};
use shomei_signing::{SignError, SignedRevision};
use shomei_storage::StoredObject;

use crate::context::JobContext;
use crate::document_memory::DocumentShare;
use crate::error::JobError;
use crate::events::{NewEvent, Pending};
use crate::group_commit::Record;
use crate::registry::Done;

pub(crate) enum Start {
    /// The job already made its revision; this is its result.
    AlreadyDone(serde_json::Value),
    /// The latest revision, to build on.
    Work(Base),
}

/// The revision a job builds on. Holds the job's share of the worker's PDF budget
/// ([`crate::document_memory`]) until the job is done with it.
pub(crate) struct Base {
    pub revision: Revision,
    _share: DocumentShare,
}

/// Where `job` starts from: `starting`, the revision read when it was claimed
/// ([`crate::group_commit::Claimed`]).
pub(crate) async fn begin(
    ctx: &JobContext,
    job: &Job,
    starting: Option<Revision>,
) -> Result<Start, JobError> {
    if job.document_id.is_none() {
        return Err(JobError::permanent(format!(
            "{} job without a document",
            job.kind
        )));
    }
    let latest = starting.ok_or_else(|| {
        JobError::from(shomei_schema::DbError::from(
            diesel::result::Error::NotFound,
        ))
    })?;
    if latest.job_id == Some(job.id) {
        return Ok(Start::AlreadyDone(result(&latest)));
    }
    let share = ctx
        .document_memory
        .hold(u64::try_from(latest.size_bytes).unwrap_or(0))
        .await?;
    Ok(Start::Work(Base {
        revision: latest,
        _share: share,
    }))
}

/// The job's work on its base, on one blocking thread: reads the base from storage (checked
/// against its recorded SHA-256, see `BlockingStorage::get_verified_hashing`), gives its bytes
/// and the SHA-256 state after them to `make`, which appends a revision (an incremental update)
/// and returns what it appends with the new file's SHA-256, hashed on from that state; then
/// stores the new revision, only what it appends (`BlockingStorage::put_pdf_revision`). One
/// hand-off to a blocking thread per job, where a read, the PDF work and a write would take one
/// each.
pub(crate) async fn make<F>(
    ctx: &JobContext,
    job: &Job,
    base: &Base,
    make: F,
) -> Result<StoredObject, JobError>
where
    F: FnOnce(&[u8], &Sha256) -> Result<SignedRevision, SignError> + Send + 'static,
{
    let (storage, latest, tenant_id) = (ctx.storage.clone(), base.revision.clone(), job.tenant_id);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let storage = storage.blocking(&runtime);
        let (bytes, hashed) = storage.get_verified_hashing(&latest.storage_key, &latest.sha256)?;
        let made = make(&bytes, &hashed)?;
        let stored_base = StoredObject {
            key: latest.storage_key.clone(),
            sha256: latest.sha256.as_slice().try_into().map_err(|_| {
                JobError::permanent("a revision's recorded SHA-256 is not 32 bytes")
            })?,
            size: bytes.len() as u64,
        };
        let stored = storage.put_pdf_revision(
            tenant_id,
            latest.document_id,
            &stored_base,
            &bytes,
            &made.appended,
            made.sha256,
        )?;
        Ok(stored)
    })
    .await
    .map_err(|e| JobError::transient(format!("{} task failed: {e}", job.kind)))?
}

/// Records `stored`, the revision `job` made on `base` ([`make`]), as the revision after it,
/// with `event` (its data given the new revision's number as `revision`), and marks the job
/// succeeded. `then` runs in the transaction that records the revision (the state changes and
/// further events the revision brings), so it happens exactly once however often the job runs;
/// the job's success is recorded in that transaction too. The transaction is one of a group
/// ([`crate::group_commit`]): `then` only touches the database, and may run twice.
pub(crate) async fn record<F>(
    ctx: &JobContext,
    job: &Job,
    base: &Base,
    stored: StoredObject,
    mut event: Option<NewEvent>,
    then: F,
) -> Result<Done, JobError>
where
    F: FnMut(&mut PgConnection) -> QueryResult<Pending> + Send + 'static,
{
    let latest = &base.revision;
    let revision = Revision {
        document_id: latest.document_id,
        revision: latest.revision + 1,
        sha256: stored.sha256.to_vec(),
        size_bytes: stored.size as i64,
        storage_key: stored.key,
        job_id: Some(job.id),
        created_at: chrono::Utc::now(),
    };
    let succeeded = Some((job.id, result(&revision)));
    if let Some(event) = &mut event {
        event.data["revision"] = json!(revision.revision);
    }
    let pending = ctx
        .group_commit
        .record(Record {
            revision: Some(revision),
            event,
            work: Box::new(then),
            succeeded,
        })
        .await?;
    pending.push(&ctx.queue).await;
    Ok(Done::Recorded)
}

fn result(revision: &Revision) -> serde_json::Value {
    json!({
        "document_id": revision.document_id,
        "revision": revision.revision,
        "sha256": hex::encode(&revision.sha256),
    })
}
