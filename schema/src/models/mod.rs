//! Rows and the queries on them, one module per aggregate.

mod batch;
mod data_key;
pub mod deletion;
mod document;
mod event;
mod export;
mod job;
mod ledger;
mod listing;
mod operator;
mod request;
mod schedule;
mod tenant;

pub use batch::Batch;
pub use data_key::DataKeyRow;
pub use document::{normalise_folder, Document, NewDocument, NewVerificationReport, Revision};
pub use event::{Event, WebhookAttempt, WebhookEndpoint};
pub use export::Export;
pub use job::{Job, JobKind, JobStatus, NewJob, QueueDepth};
pub use ledger::{ChainRow, Field, Head, Ledger, LogAnchor, LogName, Seal, Sealed};
pub use listing::{DocumentFilter, DocumentRow, STATUSES as DOCUMENT_STATUSES};
pub use operator::{OperatorAction, ACTION_LOG_ANCHOR, ACTION_LOG_PURGE};
pub use request::{RequestSigner, SignatureRequest, SignerIdentity};
pub use schedule::ScheduledTask;
pub use tenant::{ApiKey, Tenant};
