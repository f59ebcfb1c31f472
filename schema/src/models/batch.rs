use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use super::job::UNFINISHED;
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

    /// Whether any of the batch's jobs is queued or running (one probe of the `jobs_batch`
    /// index).
    pub fn has_unfinished(conn: &mut PgConnection, id: Uuid) -> QueryResult<bool> {
        diesel::select(diesel::dsl::exists(unfinished_jobs(id))).get_result(conn)
    }

    /// Marks the batch complete if it is not yet and none of its jobs is queued or running;
    /// the batch if this call completed it. Ask after the finishing job's transaction has
    /// committed: of two last jobs asking at once, the second waits for the first's update and
    /// then finds the batch complete, so exactly one completes it. A batch that is not done is
    /// not locked (one probe of the `jobs_batch` index), so its jobs finish side by side.
    pub fn complete_if_done(conn: &mut PgConnection, id: Uuid) -> QueryResult<Option<Batch>> {
        diesel::update(batches::table.find(id))
            .filter(batches::completed_at.is_null())
            .filter(diesel::dsl::not(diesel::dsl::exists(unfinished_jobs(id))))
            .set(batches::completed_at.eq(Utc::now()))
            .returning(Batch::as_returning())
            .get_result(conn)
            .optional()
    }

    /// Batches not marked complete although none of their jobs is unfinished (their last job's
    /// worker stopped between the two steps), at most `limit`.
    pub fn done_but_open(conn: &mut PgConnection, limit: i64) -> QueryResult<Vec<Uuid>> {
        let unfinished = jobs::table
            .filter(jobs::batch_id.eq(batches::id.nullable()))
            .filter(jobs::status.eq_any(UNFINISHED));
        batches::table
            .filter(batches::completed_at.is_null())
            .filter(diesel::dsl::not(diesel::dsl::exists(unfinished)))
            .select(batches::id)
            .limit(limit)
            .load(conn)
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
}

/// The queued or running jobs of batch `id`.
fn unfinished_jobs(id: Uuid) -> jobs::BoxedQuery<'static, diesel::pg::Pg> {
    jobs::table
        .filter(jobs::batch_id.eq(id))
        .filter(jobs::status.eq_any(UNFINISHED))
        .into_boxed()
}
