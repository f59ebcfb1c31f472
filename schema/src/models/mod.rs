//! Rows and the queries on them, one module per aggregate.

mod batch;
mod data_key;
pub mod deletion;
mod document;
mod event;
mod export;
mod job;
mod listing;
mod request;
mod tenant;

pub use batch::Batch;
pub use data_key::DataKeyRow;
pub use document::{normalise_folder, Document, NewDocument, NewVerificationReport, Revision};
pub use event::{Event, WebhookAttempt, WebhookEndpoint};
pub use export::Export;
pub use job::{Job, JobKind, JobStatus, NewJob, QueueDepth};
pub use listing::{DocumentFilter, DocumentRow, STATUSES as DOCUMENT_STATUSES};
pub use request::{RequestSigner, SignatureRequest, SignerIdentity};
pub use tenant::{ApiKey, Tenant};
