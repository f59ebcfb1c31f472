//! Rows and the queries on them, one module per aggregate.

pub mod access;
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
pub mod user;

pub use batch::Batch;

/// Whether `principal` may see (and so put) documents in `folder`.
pub fn may_see_folder(
    conn: &mut diesel::PgConnection,
    principal: uuid::Uuid,
    folder: &str,
) -> diesel::QueryResult<bool> {
    use diesel::RunQueryDsl;
    diesel::select(folder_visible(principal, folder)).get_result(conn)
}

diesel::define_sql_function! {
    /// Whether a principal (an API key or a user) may see documents in a folder: not in any
    /// group, or in a group naming the folder or one above it (migration `roles_groups`).
    fn folder_visible(principal: diesel::sql_types::Uuid, folder: diesel::sql_types::Text) -> diesel::sql_types::Bool;
}
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
