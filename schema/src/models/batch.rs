use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::schema::{batches, jobs};

/// Many jobs submitted in one call (`POST /v1/batches`) and followed as one.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = batches)]
pub struct Batch {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// Items submitted (jobs a batch makes later, such as conclusions, come on top).
    pub total: i32,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl Batch {
    pub fn insert(&self, conn: &mut PgConnection) -> QueryResult<()> {
        diesel::insert_into(batches::table)
            .values(self)
            .execute(conn)
            .map(|_| ())
    }

    pub fn find(conn: &mut PgConnection, tenant_id: Uuid, id: Uuid) -> QueryResult<Option<Batch>> {
        batches::table
            .filter(batches::id.eq(id))
            .filter(batches::tenant_id.eq(tenant_id))
            .select(Batch::as_select())
            .first(conn)
            .optional()
    }

    /// The batch, locked until the transaction ends: its last jobs may finish at once.
    pub fn lock(conn: &mut PgConnection, id: Uuid) -> QueryResult<Batch> {
        batches::table
            .find(id)
            .for_update()
            .select(Batch::as_select())
            .first(conn)
    }

    /// Its jobs per (kind, status).
    pub fn counts(&self, conn: &mut PgConnection) -> QueryResult<Vec<(String, String, i64)>> {
        use diesel::dsl::count_star;
        jobs::table
            .filter(jobs::batch_id.eq(self.id))
            .group_by((jobs::kind, jobs::status))
            .select((jobs::kind, jobs::status, count_star()))
            .load(conn)
    }

    pub fn complete(&mut self, conn: &mut PgConnection) -> QueryResult<()> {
        let now = Utc::now();
        diesel::update(batches::table.find(self.id))
            .set(batches::completed_at.eq(now))
            .execute(conn)?;
        self.completed_at = Some(now);
        Ok(())
    }
}
