#![doc = include_str!("../README.md")]

mod keyring;
mod sealed;
mod stream;

pub use keyring::{DataKey, Keyring, Purpose, Rotated};
pub use sealed::{plaintext_len, SEGMENT};
pub use stream::EncryptingWriter;

/// The vault's one error type.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Db(#[from] shomei_schema::DbError),
    #[error(transparent)]
    Hsm(#[from] shomei_signing::HsmError),
    #[error("data key {0} does not exist")]
    UnknownKey(uuid::Uuid),
    /// The key was destroyed (the tenant was deleted): what it encrypted is gone for good.
    #[error("data key {0} was destroyed; what it encrypted cannot be read any more")]
    Destroyed(uuid::Uuid),
    /// Not something we sealed, cut short, edited, or sealed for someone else.
    #[error("sealed data is not valid: {0}")]
    Corrupt(&'static str),
    #[error("reading a sealed object: {0}")]
    Storage(String),
    #[error("key task failed: {0}")]
    Task(String),
}

impl VaultError {
    /// Whether retrying can never help.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::UnknownKey(_) | Self::Destroyed(_) | Self::Corrupt(_) => true,
            Self::Hsm(e) => e.is_permanent(),
            Self::Db(_) | Self::Storage(_) | Self::Task(_) => false,
        }
    }
}
