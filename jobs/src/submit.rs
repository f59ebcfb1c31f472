//! Accepting a job: the row first, then the queue. Once the row is committed the job is
//! accepted, whatever Redis does next; if the push fails, the reconciler pushes it later.
//!
//! The rows of submissions arriving together are written as one statement (one round trip,
//! one commit: the API's side of the [group commit](crate::group_commit)); each is then pushed
//! by its own request. The documents that sign requests arriving together name are looked up
//! the same way, in one statement ([`Intake::find_document`]).

use std::collections::HashMap;

use diesel::PgConnection;
use uuid::Uuid;

use shomei_schema::{DbError, DbPool, Document, Job, NewJob};
use shomei_telemetry::metrics;

use crate::group_commit::{split, Coalescer, GroupFailure};
use crate::queue::Queue;

/// Why a job could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Group(#[from] GroupFailure),
}

/// Records and queues jobs: the API's intake.
pub struct Intake {
    queue: Queue,
    inserts: Coalescer<NewJob, (Job, bool), SubmitError>,
    documents: Coalescer<DocumentLookup, Option<(Document, String)>, SubmitError>,
}

/// A document a caller names ([`Intake::find_document`]).
struct DocumentLookup {
    tenant_id: Uuid,
    principal: Uuid,
    id: Uuid,
}

impl Intake {
    /// Spawns the task that writes the rows on the current runtime.
    pub fn spawn(db: DbPool, queue: Queue) -> Self {
        for step in ["submit", "document"] {
            metrics::GROUP_COMMIT_SPLITS
                .with_label_values(&[step])
                .inc_by(0);
        }
        Self {
            queue,
            inserts: Coalescer::spawn(db.clone(), "submit", insert_group),
            documents: Coalescer::spawn(db, "document", find_group),
        }
    }

    /// The tenant's document `id`, if `principal` may see its folder (as `Document::find`),
    /// with the tenant's default signature level: what a sign request needs before its job is
    /// recorded. Look-ups arriving together share one statement per principal.
    pub async fn find_document(
        &self,
        tenant_id: Uuid,
        principal: Uuid,
        id: Uuid,
    ) -> Result<Option<(Document, String)>, SubmitError> {
        self.documents
            .call(DocumentLookup {
                tenant_id,
                principal,
                id,
            })
            .await
    }

    /// Records the job (or finds the one made earlier with the same idempotency key) and
    /// queues it. Returns the job and whether it was created by this call.
    pub async fn submit(&self, new: NewJob) -> Result<(Job, bool), SubmitError> {
        let (job, created) = self.inserts.call(new).await?;
        if let (true, Some(kind)) = (created, job.kind()) {
            metrics::JOBS_SUBMITTED
                .with_label_values(&[kind.as_str()])
                .inc();
            if let Err(e) = self.queue.push(kind, job.id).await {
                // Accepted anyway: the row is the truth and the reconciler will push it.
                tracing::warn!(job.id = %job.id, error = %e, "queue push failed; left to the reconciler");
            }
        }
        Ok((job, created))
    }
}

/// The group's look-ups ([`found`]); when they fail, each member's again on its own, so an
/// error stays its own (as [`insert_group`]).
fn find_group(
    conn: &mut PgConnection,
    lookups: &mut [DocumentLookup],
) -> Vec<Result<Option<(Document, String)>, SubmitError>> {
    if lookups.len() > 1 {
        match found(conn, lookups) {
            Ok(answers) => return answers.into_iter().map(Ok).collect(),
            Err(e) => split("document", lookups.len(), &e),
        }
    }
    lookups
        .chunks(1)
        .map(|one| match found(conn, one) {
            Ok(mut answer) => Ok(answer.remove(0)),
            Err(e) => Err(DbError::from(e).into()),
        })
        .collect()
}

/// One statement per principal among `lookups` (most groups have one: a tenant's system signs
/// with one API key) and one answer per look-up, in order: `None` for a document that does not
/// exist, is another tenant's, or is in a folder the principal may not see.
fn found(
    conn: &mut PgConnection,
    lookups: &[DocumentLookup],
) -> diesel::QueryResult<Vec<Option<(Document, String)>>> {
    let mut principals: Vec<Uuid> = lookups.iter().map(|l| l.principal).collect();
    principals.sort_unstable();
    principals.dedup();
    let mut visible: HashMap<(Uuid, Uuid), (Document, String)> = HashMap::new();
    for principal in principals {
        let ids: Vec<Uuid> = lookups
            .iter()
            .filter(|l| l.principal == principal)
            .map(|l| l.id)
            .collect();
        let rows = Document::find_all_with_level(conn, principal, &ids)?;
        visible.extend(
            rows.into_iter()
                .filter(|(_, _, may_see)| *may_see)
                .map(|(doc, level, _)| ((principal, doc.id), (doc, level))),
        );
    }
    Ok(lookups
        .iter()
        .map(|l| {
            let found = visible.get(&(l.principal, l.id));
            found
                .filter(|(doc, _)| doc.tenant_id == l.tenant_id)
                .cloned()
        })
        .collect())
}

/// One statement for the group; when it fails (one job's payload refused, a deadlock with
/// another API process inserting the same keys), one per job, so an error stays its own.
fn insert_group(
    conn: &mut PgConnection,
    new: &mut [NewJob],
) -> Vec<Result<(Job, bool), SubmitError>> {
    if new.len() > 1 {
        match Job::insert_all_or_existing(conn, new) {
            Ok(jobs) => return jobs.into_iter().map(Ok).collect(),
            Err(e) => split("submit", new.len(), &e),
        }
    }
    new.iter()
        .map(|n| Job::insert_or_existing(conn, n).map_err(|e| DbError::from(e).into()))
        .collect()
}
