#![doc = include_str!("../README.md")]

pub mod context;
pub mod error;
pub mod queue;
pub mod reconciler;
mod registry;
pub mod runner;
pub mod sign;
mod submit;
pub mod telemetry;

pub use context::{hsm_settings, JobContext};
pub use error::JobError;
pub use queue::{JobMessage, Queue, QueueError};
pub use submit::{submit, SubmitError};
