use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::schema::exports;

/// A bulk download (R-DATA-5): what was asked for and how far its job has come.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = exports)]
pub struct Export {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub job_id: Uuid,
    pub filter: serde_json::Value,
    /// `queued`, `running`, `ready` or `failed`.
    pub status: String,
    pub total: i32,
    pub done: i32,
    /// `[{"part", "key", "documents", "size_bytes"}]`
    pub parts: serde_json::Value,
    /// When the download links stop working.
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Whose view of the tenant's folders the export selects from (an API key or a user).
    pub principal_id: Option<Uuid>,
}

impl Export {
    pub fn insert(&self, conn: &mut PgConnection) -> QueryResult<()> {
        diesel::insert_into(exports::table)
            .values(self)
            .execute(conn)
            .map(|_| ())
    }

    pub fn find(conn: &mut PgConnection, tenant_id: Uuid, id: Uuid) -> QueryResult<Option<Export>> {
        exports::table
            .filter(exports::id.eq(id))
            .filter(exports::tenant_id.eq(tenant_id))
            .select(Export::as_select())
            .first(conn)
            .optional()
    }

    pub fn by_job(conn: &mut PgConnection, job_id: Uuid) -> QueryResult<Export> {
        exports::table
            .filter(exports::job_id.eq(job_id))
            .select(Export::as_select())
            .first(conn)
    }

    pub fn get(conn: &mut PgConnection, id: Uuid) -> QueryResult<Export> {
        exports::table
            .find(id)
            .select(Export::as_select())
            .first(conn)
    }

    /// A run starts (again, after a crash: from the beginning).
    pub fn start(conn: &mut PgConnection, id: Uuid, total: i32) -> QueryResult<()> {
        diesel::update(exports::table.find(id))
            .set((
                exports::status.eq("running"),
                exports::total.eq(total),
                exports::done.eq(0),
                exports::parts.eq(serde_json::json!([])),
            ))
            .execute(conn)
            .map(|_| ())
    }

    pub fn progress(conn: &mut PgConnection, id: Uuid, done: i32) -> QueryResult<()> {
        diesel::update(exports::table.find(id))
            .set(exports::done.eq(done))
            .execute(conn)
            .map(|_| ())
    }

    pub fn finish(
        conn: &mut PgConnection,
        id: Uuid,
        done: i32,
        parts: &serde_json::Value,
        expires_at: DateTime<Utc>,
    ) -> QueryResult<()> {
        diesel::update(exports::table.find(id))
            .set((
                exports::status.eq("ready"),
                exports::done.eq(done),
                exports::parts.eq(parts),
                exports::expires_at.eq(expires_at),
                exports::finished_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .map(|_| ())
    }

    /// The tenant's ready exports whose download links have not expired.
    pub fn open_links(conn: &mut PgConnection, tenant_id: Uuid) -> QueryResult<Vec<Uuid>> {
        exports::table
            .filter(exports::tenant_id.eq(tenant_id))
            .filter(exports::status.eq("ready"))
            .filter(exports::expires_at.gt(diesel::dsl::now))
            .select(exports::id)
            .load(conn)
    }

    /// Its job was retried by hand after failing: the export waits for it again.
    pub fn requeue(conn: &mut PgConnection, job_id: Uuid) -> QueryResult<()> {
        diesel::update(exports::table.filter(exports::job_id.eq(job_id)))
            .set((
                exports::status.eq("queued"),
                exports::finished_at.eq(None::<chrono::DateTime<chrono::Utc>>),
            ))
            .execute(conn)
            .map(|_| ())
    }

    pub fn fail(conn: &mut PgConnection, job_id: Uuid) -> QueryResult<()> {
        diesel::update(exports::table.filter(exports::job_id.eq(job_id)))
            .set((
                exports::status.eq("failed"),
                exports::finished_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .map(|_| ())
    }
}
