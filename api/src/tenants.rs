//! Administration of tenants and their API keys from the command line
//! (`shomei-api tenant create NAME`, `shomei-api key create --tenant ID --role ROLE`).

use shomei_jobs::sign::SignatureLevel;
use shomei_schema::{ApiKey, DbError, DbPool, Tenant};

use uuid::Uuid;

use crate::auth::{generate_key, Role};

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
        ApiKey::create(
            conn,
            tenant.id,
            &key.prefix,
            &key.sha256,
            Role::Owner.as_str(),
            Some("owner"),
        )?;
        Ok::<_, diesel::result::Error>(tenant)
    })?;
    Ok(CreatedTenant {
        tenant,
        api_key: key.secret,
    })
}

/// A further API key for an existing tenant; the secret is returned once.
pub fn create_key(
    db: &DbPool,
    tenant_id: Uuid,
    role: Role,
    name: Option<&str>,
) -> Result<(ApiKey, String), DbError> {
    let mut conn = db.get()?;
    Tenant::get(&mut conn, tenant_id)?;
    let key = generate_key();
    let created = ApiKey::create(
        &mut conn,
        tenant_id,
        &key.prefix,
        &key.sha256,
        role.as_str(),
        name,
    )?;
    Ok((created, key.secret))
}
