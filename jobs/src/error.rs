//! The job layer's one error type. Every failure is either *permanent* (the job can never
//! succeed: bad payload, unreadable PDF, unknown key; it fails once, with its reason) or
//! *transient* (database, storage, Redis or HSM trouble; the job is retried with backoff).
//! A transient failure may also name its own wait ([`JobError::Later`]: a webhook's or an
//! e-mail's retry schedule, a `Retry-After`).

use shomei_schema::DbError;
use shomei_signing::SignError;
use shomei_storage::StorageError;
use shomei_vault::VaultError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Permanent(String),
    #[error("{0}")]
    Transient(String),
    /// Transient, and the next attempt must wait `after`.
    #[error("{reason}")]
    Later {
        reason: String,
        after: std::time::Duration,
    },
}

impl JobError {
    pub fn permanent(msg: impl Into<String>) -> Self {
        JobError::Permanent(msg.into())
    }

    pub fn transient(msg: impl Into<String>) -> Self {
        JobError::Transient(msg.into())
    }

    pub fn later(msg: impl Into<String>, after: std::time::Duration) -> Self {
        JobError::Later {
            reason: msg.into(),
            after,
        }
    }
}

/// Renders an error with its causes, the way it is stored in `jobs.error`.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

impl From<DbError> for JobError {
    fn from(e: DbError) -> Self {
        // A query that is wrong stays wrong, but a schema or data bug is ours to fix, not the
        // caller's: retrying it a few times costs little and survives a concurrent migration.
        JobError::Transient(chain(&e))
    }
}

impl From<StorageError> for JobError {
    fn from(e: StorageError) -> Self {
        if e.is_permanent() {
            JobError::Permanent(chain(&e))
        } else {
            JobError::Transient(chain(&e))
        }
    }
}

impl From<SignError> for JobError {
    fn from(e: SignError) -> Self {
        if e.is_permanent() {
            JobError::Permanent(chain(&e))
        } else {
            JobError::Transient(chain(&e))
        }
    }
}

impl From<VaultError> for JobError {
    fn from(e: VaultError) -> Self {
        if e.is_permanent() {
            JobError::Permanent(chain(&e))
        } else {
            JobError::Transient(chain(&e))
        }
    }
}
