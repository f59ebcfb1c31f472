use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::schema::data_keys;

/// A tenant's data key as stored: only wrapped by its KEK in the HSM (see `shomei-vault`).
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = data_keys)]
pub struct DataKeyRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// `content` (documents) or `records` (personal fields of transaction records).
    pub purpose: String,
    pub kek_label: String,
    pub kek_version: i32,
    pub wrapped: Option<Vec<u8>>,
    pub created_at: DateTime<Utc>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub destroyed_at: Option<DateTime<Utc>>,
}

impl DataKeyRow {
    /// The tenant's live key for `purpose`, if it has one.
    pub fn live(
        conn: &mut PgConnection,
        tenant_id: Uuid,
        purpose: &str,
    ) -> QueryResult<Option<DataKeyRow>> {
        data_keys::table
            .filter(data_keys::tenant_id.eq(tenant_id))
            .filter(data_keys::purpose.eq(purpose))
            .filter(data_keys::destroyed_at.is_null())
            .select(DataKeyRow::as_select())
            .first(conn)
            .optional()
    }

    pub fn get(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<DataKeyRow>> {
        data_keys::table
            .find(id)
            .select(DataKeyRow::as_select())
            .first(conn)
            .optional()
    }

    /// Inserts a new live key; `false` when another process made the tenant's key first.
    pub fn insert(&self, conn: &mut PgConnection) -> QueryResult<bool> {
        diesel::insert_into(data_keys::table)
            .values(self)
            .on_conflict_do_nothing()
            .execute(conn)
            .map(|n| n == 1)
    }

    /// Live keys, a tenant's or every tenant's, oldest first (for rotation).
    pub fn all_live(conn: &mut PgConnection, tenant_id: Option<Uuid>) -> QueryResult<Vec<Self>> {
        let mut query = data_keys::table
            .filter(data_keys::destroyed_at.is_null())
            .order(data_keys::created_at.asc())
            .select(DataKeyRow::as_select())
            .into_boxed();
        if let Some(tenant_id) = tenant_id {
            query = query.filter(data_keys::tenant_id.eq(tenant_id));
        }
        query.load(conn)
    }

    /// Records a re-wrap under a new KEK version, unless someone else rotated it meanwhile.
    pub fn rewrap(
        conn: &mut PgConnection,
        id: Uuid,
        from_version: i32,
        kek_label: &str,
        wrapped: &[u8],
    ) -> QueryResult<bool> {
        diesel::update(
            data_keys::table
                .find(id)
                .filter(data_keys::kek_version.eq(from_version))
                .filter(data_keys::destroyed_at.is_null()),
        )
        .set((
            data_keys::kek_label.eq(kek_label),
            data_keys::kek_version.eq(from_version + 1),
            data_keys::wrapped.eq(wrapped),
            data_keys::rotated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .map(|n| n == 1)
    }

    /// Forgets the wrapped key (its KEK is destroyed in the HSM by the caller).
    pub fn destroy(conn: &mut PgConnection, id: Uuid) -> QueryResult<()> {
        diesel::update(
            data_keys::table
                .find(id)
                .filter(data_keys::destroyed_at.is_null()),
        )
        .set((
            data_keys::wrapped.eq(None::<Vec<u8>>),
            data_keys::destroyed_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .map(|_| ())
    }
}
