//! Administration of tenants and their API keys from the command line
//! (`shomei-api tenant create NAME`, `shomei-api key create --tenant ID --role ROLE`). Each
//! command is recorded as an operator action in the transaction that does it.

use serde_json::json;
use shomei_jobs::sign::SignatureLevel;
use shomei_schema::{ApiKey, DbError, DbPool, OperatorAction, Tenant};

use uuid::Uuid;

use crate::auth::{generate_key, Role};

pub struct CreatedTenant {
    pub tenant: Tenant,
    /// Shown once to whoever ran the command; only its hash is stored.
    pub api_key: String,
}

/// `actor`: who ran the command (`cli:<operator>`), for the operator log.
pub fn create(
    db: &DbPool,
    actor: &str,
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
        OperatorAction::record(
            conn,
            actor,
            "tenant.create",
            &tenant.id.to_string(),
            json!({
                "name": name,
                "signature_level": signature_level.as_str(),
                "access_codes": access_codes,
                "owner_key_prefix": key.prefix,
            }),
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
    actor: &str,
    tenant_id: Uuid,
    role: Role,
    name: Option<&str>,
) -> Result<(ApiKey, String), DbError> {
    use diesel::Connection;
    let mut conn = db.get()?;
    let key = generate_key();
    let created = conn.transaction(|conn| {
        Tenant::get(conn, tenant_id)?;
        let created = ApiKey::create(
            conn,
            tenant_id,
            &key.prefix,
            &key.sha256,
            role.as_str(),
            name,
        )?;
        OperatorAction::record(
            conn,
            actor,
            "key.create",
            &created.id.to_string(),
            json!({
                "tenant_id": tenant_id,
                "role": role.as_str(),
                "name": name,
                "prefix": key.prefix,
            }),
        )?;
        Ok::<_, diesel::result::Error>(created)
    })?;
    Ok((created, key.secret))
}
