//! [`Prepared`]: a statement that diesel would send unprepared (parsed and planned by
//! PostgreSQL on every run), sent as a prepared statement kept per connection instead.
//!
//! diesel caches a statement only when its SQL is the same on every run, and assumes it is not
//! for every `UPDATE`, every multi-row `INSERT` and every `sql_query`. The hot statements of a
//! document's path (its event, its job's insert, claim and completion) are among them, and
//! parsing and planning them, with the inserts that sent `DEFAULT` for unset columns, was about
//! a quarter of PostgreSQL's CPU under load (README, Performance). Wrapped in [`Prepared`], such a statement
//! is kept in the connection's cache under its SQL text: statements whose SQL does vary (a
//! skipped optional column, a different number of rows) are kept once per variant, so only
//! statements with few variants may be wrapped.
//!
//! Run it with a loading method (`load`, `get_result`, `get_results`): diesel's `execute` asks
//! the statement by reference, which loses the wrapper's answer, so a statement run for its
//! count gets a `RETURNING` instead.
//!
//! [`PlannedEachRun`] is the other way round: a statement diesel would keep prepared, sent
//! unprepared, so that PostgreSQL plans it for its values on every run. After a prepared
//! statement's fifth run PostgreSQL may keep one plan for any values for the connection's life
//! (until the table is next analysed); made while a table held a few rows, that plan scans the
//! whole table, which then grows under it (README, Performance; `schema/README.md`).

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::{QueryResult, RunQueryDsl};

/// A statement whose caching diesel would decide, decided here instead: kept as a prepared
/// statement of the connection when `KEEP` ([`Prepared`]), planned for its values on every run
/// when not ([`PlannedEachRun`]). See the module doc.
#[derive(Debug, Clone, Copy)]
pub struct Cached<Q, const KEEP: bool>(pub Q);

/// A statement run as a prepared statement of the connection.
pub type Prepared<Q> = Cached<Q, true>;

/// A statement planned by PostgreSQL for its values on every run.
pub type PlannedEachRun<Q> = Cached<Q, false>;

/// `.prepared()` on any statement.
pub trait Prepare: Sized {
    fn prepared(self) -> Prepared<Self> {
        Cached(self)
    }
}

impl<Q: QueryFragment<Pg>> Prepare for Q {}

/// `.planned_each_run()` on any statement.
pub trait PlanEachRun: Sized {
    fn planned_each_run(self) -> PlannedEachRun<Self> {
        Cached(self)
    }
}

impl<Q: QueryFragment<Pg>> PlanEachRun for Q {}

impl<Q: QueryFragment<Pg>, const KEEP: bool> QueryFragment<Pg> for Cached<Q, KEEP> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(KEEP)
    }
}

/// Never keyed by its Rust type, since the same type may make different SQL: a [`Prepared`]
/// statement is kept in the cache under its SQL text, a [`PlannedEachRun`] one not at all.
impl<Q, const KEEP: bool> QueryId for Cached<Q, KEEP> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query, const KEEP: bool> Query for Cached<Q, KEEP> {
    type SqlType = Q::SqlType;
}

impl<Q, Conn, const KEEP: bool> RunQueryDsl<Conn> for Cached<Q, KEEP> {}

/// The `RETURNING … AS id` of a prepared `sql_query` run for its effect (see the module doc).
#[derive(diesel::QueryableByName)]
pub(crate) struct ReturnedId {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    #[allow(dead_code)] // returned to be loaded, not read
    pub id: uuid::Uuid,
}
