//! Rows and the queries on them, one module per aggregate.

mod document;
mod event;
mod job;
mod request;
mod tenant;

pub use document::{Document, NewDocument, NewVerificationReport, Revision};
pub use event::{Event, WebhookAttempt, WebhookEndpoint};
pub use job::{Job, JobKind, JobStatus, NewJob};
pub use request::{RequestSigner, SignatureRequest, SignerIdentity};
pub use tenant::{ApiKey, Tenant};
