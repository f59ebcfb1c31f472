#![doc = include_str!("../README.md")]

pub mod batches;
pub mod calendar;
pub mod context;
pub mod dead_letters;
pub mod deletion;
pub mod document_memory;
pub mod error;
pub mod events;
pub mod export;
pub mod group_commit;
pub mod ledger;
pub mod notify_email;
pub mod notify_webhook;
pub mod personal;
pub mod queue;
pub mod reconciler;
mod registry;
pub mod reports;
pub mod requests;
mod revisions;
pub mod runner;
pub mod scheduler;
pub mod sign;
mod submit;
pub mod timestamp;
pub mod verify;
pub mod wake;

pub use context::{trust_anchors, JobContext};
pub use error::JobError;
pub use events::Pending;
pub use queue::{JobMessage, Queue, QueueError};
pub use submit::{Intake, SubmitError};
