//! Rows and the queries on them, one module per aggregate.

mod document;
mod job;
mod tenant;

pub use document::{Document, NewDocument, NewVerificationReport, Revision};
pub use job::{Job, JobKind, JobStatus, NewJob};
pub use tenant::{ApiKey, Tenant};
