//! Administration of tenants from the command line (`shomei-api tenant create NAME`).

use shomei_jobs::sign::SignatureLevel;
use shomei_schema::{ApiKey, DbError, DbPool, Tenant};

use crate::auth::generate_key;

pub struct CreatedTenant {
    pub tenant: Tenant,
    /// Shown once to whoever ran the command; only its hash is stored.
    pub api_key: String,
}

pub fn create(
    db: &DbPool,
    name: &str,
    signature_level: SignatureLevel,
    access_codes: bool,
) -> Result<CreatedTenant, DbError> {
    use diesel::Connection;
    let mut conn = db.get()?;
    let key = generate_key();
    let tenant = conn.transaction(|conn| {
        let tenant = Tenant::create(conn, name, signature_level.as_str(), access_codes)?;
        ApiKey::create(conn, tenant.id, &key.prefix, &key.sha256)?;
        Ok::<_, diesel::result::Error>(tenant)
    })?;
    Ok(CreatedTenant {
        tenant,
        api_key: key.secret,
    })
}
