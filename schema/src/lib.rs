#![doc = include_str!("../README.md")]

pub mod models;
pub mod prepared;
pub mod schema;

use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, ManageConnection, Pool, PooledConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

pub use models::{
    ApiKey, Batch, ChainRow, DataKeyRow, Document, DocumentFilter, DocumentRow, Event, Export,
    Field, Job, JobKind, JobStatus, Ledger, LogAnchor, LogName, NewJob, OperatorAction,
    RequestSigner, Revision, ScheduledTask, SignatureRequest, SignerIdentity, Tenant,
    WebhookAttempt, WebhookEndpoint, ACTION_LOG_ANCHOR, ACTION_LOG_PURGE,
};

pub type DbPool = Pool<Manager>;
pub type DbConn = PooledConnection<Manager>;

/// A connection that has worked within this long is handed out without a test.
const TRUSTED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// A pooled connection, with the last time it was known to work.
pub struct Connection {
    conn: PgConnection,
    worked_at: std::time::Instant,
}

impl std::ops::Deref for Connection {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for Connection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// diesel's connection manager, testing a connection on checkout (`SELECT 1`) only when it
/// has not worked for `TRUSTED_FOR`. Under load connections go back and forth all the
/// time and are not tested (the test was a third of all the statements a signed document
/// cost, profiled with the load test); after an outage (PostgreSQL restarted, say) every idle
/// connection is tested and a dead one replaced before a request or a job gets it.
pub struct Manager(ConnectionManager<PgConnection>);

impl ManageConnection for Manager {
    type Connection = Connection;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<Connection, Self::Error> {
        Ok(Connection {
            conn: self.0.connect()?,
            worked_at: std::time::Instant::now(),
        })
    }

    fn is_valid(&self, conn: &mut Connection) -> Result<(), Self::Error> {
        if conn.worked_at.elapsed() >= TRUSTED_FOR {
            self.0.is_valid(&mut conn.conn)?;
            conn.worked_at = std::time::Instant::now();
        }
        Ok(())
    }

    /// Called when a connection comes back to the pool: one diesel did not see break has
    /// just worked.
    fn has_broken(&self, conn: &mut Connection) -> bool {
        let broken = self.0.has_broken(&mut conn.conn);
        if !broken {
            conn.worked_at = std::time::Instant::now();
        }
        broken
    }
}

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Unavailable(#[from] diesel::r2d2::PoolError),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database migration failed: {0}")]
    Migration(String),
}

impl DbError {
    /// The database could not be reached, or the connection broke during the work (PostgreSQL
    /// restarted, say): worth trying again shortly, unlike a query that was refused.
    pub fn is_unavailable(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match self {
            DbError::Unavailable(_) => true,
            DbError::Query(Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            )) => true,
            // Shutdown and start-up are reported by the server itself (SQLSTATE 57P01, 57P03),
            // which diesel does not classify.
            DbError::Query(Error::DatabaseError(_, info)) => [
                "terminating connection",
                "server closed the connection",
                "no connection to the server",
                "the database system is",
            ]
            .iter()
            .any(|m| info.message().contains(m)),
            DbError::Query(_) | DbError::Migration(_) => false,
        }
    }
}

/// Opens a pool without waiting for a first connection, so a process can start (and report
/// itself not ready) while PostgreSQL is still down. Connections idle for a second or more
/// are tested when checked out ([`Manager`]); one that breaks under a query anyway is
/// [`DbError::is_unavailable`] (a `503`, a retried job) and replaced.
pub fn connect(database_url: &str, size: u32) -> DbPool {
    Pool::builder()
        .max_size(size)
        .min_idle(Some(1))
        .connection_timeout(std::time::Duration::from_secs(5))
        .test_on_check_out(true)
        .build_unchecked(Manager(ConnectionManager::new(database_url)))
}

/// A pool for a short command (`migrate`, `tenant create`): it opens connections only when
/// asked. A connection still being opened in r2d2's background thread when the process exits
/// can crash it in libpq's TLS teardown (seen as a segfault of `shomei-api key create`).
pub fn connect_for_command(database_url: &str) -> DbPool {
    Pool::builder()
        .max_size(1)
        .min_idle(Some(0))
        .connection_timeout(std::time::Duration::from_secs(5))
        .build_unchecked(Manager(ConnectionManager::new(database_url)))
}

pub fn run_migrations(pool: &DbPool) -> Result<(), DbError> {
    let mut conn = pool.get()?;
    conn.run_pending_migrations(MIGRATIONS)
        .map(|_| ())
        .map_err(|e| DbError::Migration(e.to_string()))
}

/// `SELECT 1`, for readiness probes.
pub fn ping(conn: &mut PgConnection) -> Result<(), DbError> {
    use diesel::RunQueryDsl;
    diesel::sql_query("SELECT 1").execute(conn)?;
    Ok(())
}

/// Runs blocking diesel work on tokio's blocking pool with a pooled connection, keeping the
/// caller's tracing span. This is how async code (API handlers, jobs) reaches the database.
pub async fn interact<T, F>(pool: &DbPool, f: F) -> Result<T, DbError>
where
    T: Send + 'static,
    F: FnOnce(&mut PgConnection) -> Result<T, DbError> + Send + 'static,
{
    let pool = pool.clone();
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let mut conn = pool.get()?;
        f(&mut conn)
    })
    .await
    .expect("database task panicked")
}
