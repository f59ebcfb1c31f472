use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::schema::{api_keys, tenants};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = tenants)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub created_at: DateTime<Utc>,
    /// `B-B` or `B-T`: the PAdES level of signatures whose request does not name one.
    pub signature_level: String,
    /// Every signer of this tenant's requests must also give an access code.
    pub access_codes: bool,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// When its documents are deleted (R-DEL-1); set with `cancelled_at`.
    pub deletion_due_at: Option<DateTime<Utc>>,
    /// When the deletion finished.
    pub deleted_at: Option<DateTime<Utc>>,
    /// CIDRs its API calls must come from; `None`: anywhere.
    pub ip_allowlist: Option<Vec<String>>,
}

impl Tenant {
    pub fn create(
        conn: &mut PgConnection,
        name: &str,
        signature_level: &str,
        access_codes: bool,
    ) -> QueryResult<Tenant> {
        diesel::insert_into(tenants::table)
            .values((
                tenants::id.eq(Uuid::now_v7()),
                tenants::name.eq(name),
                tenants::signature_level.eq(signature_level),
                tenants::access_codes.eq(access_codes),
            ))
            .returning(Tenant::as_returning())
            .get_result(conn)
    }

    pub fn get(conn: &mut PgConnection, id: Uuid) -> QueryResult<Tenant> {
        tenants::table
            .find(id)
            .select(Tenant::as_select())
            .first(conn)
    }

    /// The tenant, locked for the rest of the transaction.
    pub fn lock(conn: &mut PgConnection, id: Uuid) -> QueryResult<Tenant> {
        tenants::table
            .find(id)
            .for_update()
            .select(Tenant::as_select())
            .first(conn)
    }

    /// Records a cancellation and when it takes effect.
    pub fn cancel(
        conn: &mut PgConnection,
        id: Uuid,
        at: DateTime<Utc>,
        deletion_due_at: DateTime<Utc>,
    ) -> QueryResult<Tenant> {
        diesel::update(tenants::table.find(id))
            .set((
                tenants::cancelled_at.eq(at),
                tenants::deletion_due_at.eq(deletion_due_at),
            ))
            .returning(Tenant::as_returning())
            .get_result(conn)
    }

    /// Sets (or with `None` clears) the IP allow-list.
    pub fn set_ip_allowlist(
        conn: &mut PgConnection,
        id: Uuid,
        cidrs: Option<&[String]>,
    ) -> QueryResult<()> {
        diesel::update(tenants::table.find(id))
            .set(tenants::ip_allowlist.eq(cidrs))
            .execute(conn)
            .map(|_| ())
    }

    /// Marks the deletion done and revokes every API key: nothing of the tenant can be acted
    /// on any more, though its records stay (R-DEL-2).
    pub fn mark_deleted(conn: &mut PgConnection, id: Uuid) -> QueryResult<()> {
        diesel::update(
            tenants::table
                .find(id)
                .filter(tenants::deleted_at.is_null()),
        )
        .set(tenants::deleted_at.eq(diesel::dsl::now))
        .execute(conn)?;
        diesel::update(
            api_keys::table
                .filter(api_keys::tenant_id.eq(id))
                .filter(api_keys::revoked_at.is_null()),
        )
        .set(api_keys::revoked_at.eq(diesel::dsl::now))
        .execute(conn)
        .map(|_| ())
    }
}

/// Only the SHA-256 of a key is stored; the key itself is shown once, when it is made.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
pub struct ApiKey {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// `owner`, `admin`, `member` or `viewer`.
    pub role: String,
    pub name: Option<String>,
}

impl ApiKey {
    pub fn create(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        prefix: &str,
        key_sha256: &[u8],
        role: &str,
        name: Option<&str>,
    ) -> QueryResult<ApiKey> {
        diesel::insert_into(api_keys::table)
            .values((
                api_keys::id.eq(Uuid::now_v7()),
                api_keys::tenant_id.eq(tenant_id),
                api_keys::prefix.eq(prefix),
                api_keys::key_sha256.eq(key_sha256),
                api_keys::role.eq(role),
                api_keys::name.eq(name),
            ))
            .returning(ApiKey::as_returning())
            .get_result(conn)
    }

    /// Every key of the tenant, revoked ones too, oldest first.
    pub fn list(conn: &mut PgConnection, tenant_id: Uuid) -> QueryResult<Vec<ApiKey>> {
        api_keys::table
            .filter(api_keys::tenant_id.eq(tenant_id))
            .order(api_keys::created_at.asc())
            .select(ApiKey::as_select())
            .load(conn)
    }

    /// The live (not revoked) key with this hash.
    /// The live key with this hash, and its tenant's IP allow-list.
    pub fn find_by_hash(
        conn: &mut PgConnection,
        key_sha256: &[u8],
    ) -> QueryResult<Option<(ApiKey, Option<Vec<String>>)>> {
        api_keys::table
            .inner_join(tenants::table)
            .filter(api_keys::key_sha256.eq(key_sha256))
            .filter(api_keys::revoked_at.is_null())
            .select((ApiKey::as_select(), tenants::ip_allowlist))
            .first(conn)
            .optional()
    }
}
