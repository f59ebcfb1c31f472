//! The explicit list of job kinds and their handlers. A new kind gets a file of its own and
//! one line here; its name (`JobKind::as_str`) must be unique for the whole application.

use shomei_schema::{Job, JobKind};

use crate::context::JobContext;
use crate::error::JobError;
use crate::{sign, timestamp, verify};

/// Runs the handler of `kind`; its `Ok` value is stored as the job's `result`.
pub(crate) async fn dispatch(
    kind: JobKind,
    ctx: &JobContext,
    job: &Job,
) -> Result<serde_json::Value, JobError> {
    match kind {
        JobKind::Sign => sign::run(ctx, job).await,
        JobKind::Timestamp => timestamp::run(ctx, job).await,
        JobKind::Verify => verify::run(ctx, job).await,
    }
}
