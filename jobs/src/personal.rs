//! Personal data in transaction records (names, e-mail addresses, a signature's reason): sealed
//! with the tenant's `records` key (`shomei-vault`) before it is written, opened only where it
//! is shown or sent. The records key outlives a tenant's deletion (R-DEL-2); the content key
//! does not.

use std::sync::Arc;

use base64::Engine;
use uuid::Uuid;

use shomei_vault::{DataKey, Keyring, Purpose, VaultError};

/// The tenant's records key (made on first use).
pub async fn records_key(keys: &Keyring, tenant_id: Uuid) -> Result<Arc<DataKey>, VaultError> {
    keys.current(tenant_id, Purpose::Records).await
}

/// Opens a sealed column inside a database closure. A value that does not open is reported as
/// a column that does not deserialize, which is what it is.
pub fn open(key: &DataKey, sealed: &[u8]) -> diesel::QueryResult<String> {
    key.open_field(sealed)
        .map_err(|e| diesel::result::Error::DeserializationError(Box::new(e)))
}

/// A sealed field as text, for JSON payloads.
pub fn seal_text(key: &DataKey, text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.seal_field(text))
}

/// Opens what [`seal_text`] made.
pub async fn open_text(keys: &Keyring, sealed: &str) -> Result<String, VaultError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(sealed)
        .map_err(|_| VaultError::Corrupt("sealed text is not base64"))?;
    keys.open_field(&bytes).await
}

/// Normalises an address for its blind index: look-ups ignore case.
pub fn email_index(key: &DataKey, email: &str) -> Vec<u8> {
    key.blind_index(&email.trim().to_lowercase())
}
