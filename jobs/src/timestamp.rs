//! The **timestamp** job: concludes a contract. As one new revision it adds the validation
//! data of every signature and time-stamp already in the file (a DSS dictionary with their
//! certificates and CRLs: PAdES B-LT) and then a document time-stamp over everything
//! (`/DocTimeStamp`, `ETSI.RFC3161`: B-LTA), so the file can be validated long after its
//! certificates expire. Idempotent through `crate::revisions`. The time-stamp that concludes
//! a signature request also completes it (`document.completed`).

use shomei_schema::{Job, Revision};
use shomei_signing::ValidationData;

use crate::context::JobContext;
use crate::error::JobError;
use crate::events::Pending;
use crate::registry::Done;
use crate::requests;
use crate::revisions::{self, Start};

/// `starting`: the revision the job starts from, read when it was claimed.
pub(crate) async fn run(
    ctx: &JobContext,
    job: &Job,
    starting: Option<Revision>,
) -> Result<Done, JobError> {
    let timestamper = ctx.timestamper()?;
    let base = match revisions::begin(ctx, job, starting).await? {
        Start::AlreadyDone(result) => return Ok(Done::Result(result)),
        Start::Work(base) => base,
    };
    let stamped = revisions::make(ctx, job, &base, move |pdf, hashed| {
        let material = shomei_signing::validation_material(pdf)?;
        let validation = ValidationData {
            crls: shomei_signing::fetch_crls(&material.crl_urls)?,
            certificates: material.certificates,
        };
        shomei_signing::timestamp_pdf_hashed(pdf, hashed, timestamper.as_ref(), Some(&validation))
    })
    .await?;
    let concludes = concluded_request(job);
    let concluding = job.clone();
    revisions::record(
        ctx,
        job,
        &base,
        stamped,
        None,
        move |conn| match concludes {
            Some(request_id) => requests::concluded(conn, &concluding, request_id),
            None => Ok(Pending::default()),
        },
    )
    .await
}

/// The signature request this time-stamp concludes, when it was made for one.
fn concluded_request(job: &Job) -> Option<uuid::Uuid> {
    job.payload.get("concludes_request")?.as_str()?.parse().ok()
}
