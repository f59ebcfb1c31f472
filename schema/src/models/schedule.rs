//! Periodic tasks of the workers (log anchoring, retention purges): when each is next due.
//!
//! Every worker ticks through the tasks; a run happens only for the worker whose [`claim`]
//! moved `next_run_at` forward, an atomic UPDATE, so one run per period however many workers
//! are up. The schedule lives here, not in a process, so restarts neither reset nor skip it.
//!
//! [`claim`]: ScheduledTask::claim

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{Double, Nullable, Text};

pub struct ScheduledTask;

#[derive(QueryableByName)]
struct Claimed {
    #[diesel(sql_type = Text)]
    #[allow(dead_code)]
    name: String,
}

impl ScheduledTask {
    /// Claims the task's run if it is due (or has never run): moves `next_run_at` to `every`
    /// from now and counts the run. Returns whether this caller won the run.
    pub fn claim(conn: &mut PgConnection, name: &str, every: Duration) -> QueryResult<bool> {
        // A concurrent claim of the same row waits for this one, then re-checks the condition
        // against the new `next_run_at` and finds the task not due.
        diesel::sql_query(
            "INSERT INTO scheduled_tasks (name, next_run_at, runs, last_started_at) \
             VALUES ($1, now() + make_interval(secs => $2), 1, now()) \
             ON CONFLICT (name) DO UPDATE \
               SET next_run_at = EXCLUDED.next_run_at, runs = scheduled_tasks.runs + 1, \
                   last_started_at = now() \
               WHERE scheduled_tasks.next_run_at <= now() \
             RETURNING name",
        )
        .bind::<Text, _>(name)
        .bind::<Double, _>(every.as_secs_f64())
        .get_result::<Claimed>(conn)
        .optional()
        .map(|claimed| claimed.is_some())
    }

    /// Records the end of a run: `error` is `None` on success. A failed run is due again
    /// after `retry` (when that is sooner than its period).
    pub fn finished(
        conn: &mut PgConnection,
        name: &str,
        error: Option<&str>,
        retry: Duration,
    ) -> QueryResult<()> {
        diesel::sql_query(
            "UPDATE scheduled_tasks SET last_finished_at = now(), last_error = $2, \
               next_run_at = CASE WHEN $2 IS NULL THEN next_run_at \
                 ELSE least(next_run_at, now() + make_interval(secs => $3)) END \
             WHERE name = $1",
        )
        .bind::<Text, _>(name)
        .bind::<Nullable<Text>, _>(error)
        .bind::<Double, _>(retry.as_secs_f64())
        .execute(conn)
        .map(drop)
    }
}
