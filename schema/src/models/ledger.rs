//! The chained logs (R-LOG-1) as the ledger sees them: each log's rows reduced to one shape
//! (the chain columns, the row's time, and every other column in a fixed order), and the
//! queries of the sealer, the anchoring, the retention purge and the verifier. The chain rules
//! themselves (the canonical encoding, hashing, what a broken link means) are
//! `shomei_jobs::ledger`'s.
//!
//! Nothing here changes a sealed row: the only UPDATE fills the chain columns of rows that have
//! none, and the only DELETE removes the oldest sealed prefix of a chain (retention).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Bool, Bytea, Nullable, Text, Timestamptz};
use uuid::Uuid;

use crate::schema::log_anchors;

/// One of the three chained logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogName {
    /// The customer operation log, `events`.
    Events,
    /// `deletion_log`: evidence of every deleted object.
    Deletions,
    /// `operator_actions`: what operators and the system did.
    Operator,
}

impl LogName {
    pub const ALL: [LogName; 3] = [LogName::Events, LogName::Deletions, LogName::Operator];

    /// The name in `log_anchors.log`, purge records and the `log verify --log` option.
    pub fn as_str(self) -> &'static str {
        match self {
            LogName::Events => "events",
            LogName::Deletions => "deletions",
            LogName::Operator => "operator",
        }
    }

    pub fn table(self) -> &'static str {
        match self {
            LogName::Events => "events",
            LogName::Deletions => "deletion_log",
            LogName::Operator => "operator_actions",
        }
    }

    /// The column that says when a row was written (sealing order, retention).
    fn time_column(self) -> &'static str {
        match self {
            LogName::Deletions => "deleted_at",
            LogName::Events | LogName::Operator => "created_at",
        }
    }

    /// Every column but the chain columns, in the chain's fixed order (jsonb as its
    /// PostgreSQL text form), then the chain columns.
    fn select_list(self) -> &'static str {
        match self {
            LogName::Events => {
                "id, tenant_id, kind, document_id, request_id, actor, ip, data::text AS data, \
                 created_at, seq, prev_hash, entry_hash"
            }
            LogName::Deletions => {
                "id, tenant_id, document_id, object_kind, object_id, ciphertext_sha256, \
                 size_bytes, reason, actor, job_id, deleted_at, seq, prev_hash, entry_hash"
            }
            LogName::Operator => {
                "id, actor, action, target, detail::text AS detail, created_at, seq, prev_hash, \
                 entry_hash"
            }
        }
    }

    /// Key of the transaction-level advisory lock held by whoever extends or purges the chain
    /// (`"SHOMEILG"` and the log's number).
    pub fn lock_key(self) -> i64 {
        let base = i64::from_be_bytes(*b"SHOMEILG") & !0xff;
        base | match self {
            LogName::Events => 1,
            LogName::Deletions => 2,
            LogName::Operator => 3,
        }
    }
}

impl fmt::Display for LogName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LogName::ALL
            .into_iter()
            .find(|log| log.as_str() == s)
            .ok_or_else(|| format!("unknown log {s:?} (events, deletions or operator)"))
    }
}

/// One column value of a chained row, as the canonical encoding sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Null,
    Uuid(Uuid),
    Text(String),
    /// A jsonb value as PostgreSQL prints it (`::text`): keys sorted and deduplicated by
    /// PostgreSQL itself, so the same value always reads the same.
    Json(String),
    Time(DateTime<Utc>),
    Int(i64),
    Bytes(Vec<u8>),
}

impl Field {
    fn uuid(value: Option<Uuid>) -> Field {
        value.map_or(Field::Null, Field::Uuid)
    }

    fn text(value: Option<String>) -> Field {
        value.map_or(Field::Null, Field::Text)
    }
}

/// A row of a chained log: the chain columns (all `None` until sealed), its time, and its
/// content (every other column, in the log's fixed order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRow {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub seq: Option<i64>,
    pub prev_hash: Option<Vec<u8>>,
    pub entry_hash: Option<Vec<u8>>,
    pub content: Vec<Field>,
}

#[derive(QueryableByName)]
#[diesel(check_for_backend(Pg))]
struct EventRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    tenant_id: Uuid,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    document_id: Option<Uuid>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    request_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    actor: String,
    #[diesel(sql_type = Nullable<Text>)]
    ip: Option<String>,
    #[diesel(sql_type = Text)]
    data: String,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(embed)]
    chain: ChainColumns,
}

#[derive(QueryableByName)]
#[diesel(check_for_backend(Pg))]
struct DeletionRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    tenant_id: Uuid,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    document_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    object_kind: String,
    #[diesel(sql_type = Text)]
    object_id: String,
    #[diesel(sql_type = Nullable<Bytea>)]
    ciphertext_sha256: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<BigInt>)]
    size_bytes: Option<i64>,
    #[diesel(sql_type = Text)]
    reason: String,
    #[diesel(sql_type = Text)]
    actor: String,
    #[diesel(sql_type = Nullable<diesel::sql_types::Uuid>)]
    job_id: Option<Uuid>,
    #[diesel(sql_type = Timestamptz)]
    deleted_at: DateTime<Utc>,
    #[diesel(embed)]
    chain: ChainColumns,
}

#[derive(QueryableByName)]
#[diesel(check_for_backend(Pg))]
struct OperatorRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = Text)]
    actor: String,
    #[diesel(sql_type = Text)]
    action: String,
    #[diesel(sql_type = Text)]
    target: String,
    #[diesel(sql_type = Text)]
    detail: String,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(embed)]
    chain: ChainColumns,
}

#[derive(QueryableByName)]
#[diesel(check_for_backend(Pg))]
struct ChainColumns {
    #[diesel(sql_type = Nullable<BigInt>)]
    seq: Option<i64>,
    #[diesel(sql_type = Nullable<Bytea>)]
    prev_hash: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Bytea>)]
    entry_hash: Option<Vec<u8>>,
}

impl ChainColumns {
    fn into_row(self, id: Uuid, at: DateTime<Utc>, content: Vec<Field>) -> ChainRow {
        ChainRow {
            id,
            at,
            seq: self.seq,
            prev_hash: self.prev_hash,
            entry_hash: self.entry_hash,
            content,
        }
    }
}

impl From<EventRow> for ChainRow {
    fn from(r: EventRow) -> ChainRow {
        let content = vec![
            Field::Uuid(r.id),
            Field::Uuid(r.tenant_id),
            Field::Text(r.kind),
            Field::uuid(r.document_id),
            Field::uuid(r.request_id),
            Field::Text(r.actor),
            Field::text(r.ip),
            Field::Json(r.data),
            Field::Time(r.created_at),
        ];
        r.chain.into_row(r.id, r.created_at, content)
    }
}

impl From<DeletionRow> for ChainRow {
    fn from(r: DeletionRow) -> ChainRow {
        let content = vec![
            Field::Uuid(r.id),
            Field::Uuid(r.tenant_id),
            Field::uuid(r.document_id),
            Field::Text(r.object_kind),
            Field::Text(r.object_id),
            r.ciphertext_sha256.map_or(Field::Null, Field::Bytes),
            r.size_bytes.map_or(Field::Null, Field::Int),
            Field::Text(r.reason),
            Field::Text(r.actor),
            Field::uuid(r.job_id),
            Field::Time(r.deleted_at),
        ];
        r.chain.into_row(r.id, r.deleted_at, content)
    }
}

impl From<OperatorRow> for ChainRow {
    fn from(r: OperatorRow) -> ChainRow {
        let content = vec![
            Field::Uuid(r.id),
            Field::Text(r.actor),
            Field::Text(r.action),
            Field::Text(r.target),
            Field::Json(r.detail),
            Field::Time(r.created_at),
        ];
        r.chain.into_row(r.id, r.created_at, content)
    }
}

/// The chain columns the sealer gives one row.
#[derive(Debug, Clone)]
pub struct Seal {
    pub id: Uuid,
    pub seq: i64,
    pub prev_hash: Vec<u8>,
    pub entry_hash: Vec<u8>,
}

/// The newest sealed entry of a chain.
#[derive(Debug, Clone, PartialEq, Eq, QueryableByName)]
pub struct Head {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Bytea)]
    pub entry_hash: Vec<u8>,
}

/// An entry of a chain's oldest sealed prefix, as the retention purge needs it.
#[derive(Debug, Clone, QueryableByName)]
pub struct Sealed {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Timestamptz)]
    pub at: DateTime<Utc>,
    #[diesel(sql_type = Bytea)]
    pub entry_hash: Vec<u8>,
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Queries on one chained log. (The table names below come from [`LogName`], never from input.)
pub struct Ledger;

impl Ledger {
    /// Takes the log's chain lock for the rest of the transaction if no one holds it.
    pub fn try_lock(conn: &mut PgConnection, log: LogName) -> QueryResult<bool> {
        diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS locked")
            .bind::<BigInt, _>(log.lock_key())
            .get_result::<Locked>(conn)
            .map(|r| r.locked)
    }

    /// Takes the log's chain lock for the rest of the transaction, waiting for it.
    pub fn lock(conn: &mut PgConnection, log: LogName) -> QueryResult<()> {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<BigInt, _>(log.lock_key())
            .execute(conn)
            .map(drop)
    }

    /// The newest sealed entry, if any.
    pub fn head(conn: &mut PgConnection, log: LogName) -> QueryResult<Option<Head>> {
        diesel::sql_query(format!(
            "SELECT seq, entry_hash FROM {} WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1",
            log.table()
        ))
        .get_result(conn)
        .optional()
    }

    /// Up to `limit` unsealed rows in sealing order (time, then id).
    pub fn unsealed(
        conn: &mut PgConnection,
        log: LogName,
        limit: i64,
    ) -> QueryResult<Vec<ChainRow>> {
        let query = format!(
            "SELECT {} FROM {} WHERE seq IS NULL ORDER BY {}, id LIMIT $1",
            log.select_list(),
            log.table(),
            log.time_column()
        );
        load(
            conn,
            log,
            diesel::sql_query(query)
                .into_boxed()
                .bind::<BigInt, _>(limit),
        )
    }

    pub fn count_unsealed(conn: &mut PgConnection, log: LogName) -> QueryResult<i64> {
        diesel::sql_query(format!(
            "SELECT count(*) AS n FROM {} WHERE seq IS NULL",
            log.table()
        ))
        .get_result::<Count>(conn)
        .map(|c| c.n)
    }

    /// Up to `limit` sealed rows with `seq >= from`, in chain order (seq, then id: a
    /// duplicated seq, which the UNIQUE constraint forbids, still reads in a stable order).
    pub fn sealed_from(
        conn: &mut PgConnection,
        log: LogName,
        from: i64,
        limit: i64,
    ) -> QueryResult<Vec<ChainRow>> {
        let query = format!(
            "SELECT {} FROM {} WHERE seq >= $1 ORDER BY seq, id LIMIT $2",
            log.select_list(),
            log.table()
        );
        load(
            conn,
            log,
            diesel::sql_query(query)
                .into_boxed()
                .bind::<BigInt, _>(from)
                .bind::<BigInt, _>(limit),
        )
    }

    /// Fills the chain columns of still unsealed rows in one statement; returns how many.
    pub fn seal(conn: &mut PgConnection, log: LogName, seals: &[Seal]) -> QueryResult<usize> {
        let ids: Vec<Uuid> = seals.iter().map(|s| s.id).collect();
        let seqs: Vec<i64> = seals.iter().map(|s| s.seq).collect();
        let prevs: Vec<&[u8]> = seals.iter().map(|s| s.prev_hash.as_slice()).collect();
        let hashes: Vec<&[u8]> = seals.iter().map(|s| s.entry_hash.as_slice()).collect();
        diesel::sql_query(format!(
            "UPDATE {} AS t SET seq = v.seq, prev_hash = v.prev_hash, entry_hash = v.entry_hash \
             FROM unnest($1::uuid[], $2::bigint[], $3::bytea[], $4::bytea[]) \
                  AS v (id, seq, prev_hash, entry_hash) \
             WHERE t.id = v.id AND t.seq IS NULL",
            log.table()
        ))
        .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
        .bind::<Array<BigInt>, _>(seqs)
        .bind::<Array<Bytea>, _>(prevs)
        .bind::<Array<Bytea>, _>(hashes)
        .execute(conn)
    }

    /// The oldest `limit` sealed entries, in chain order.
    pub fn oldest_sealed(
        conn: &mut PgConnection,
        log: LogName,
        limit: i64,
    ) -> QueryResult<Vec<Sealed>> {
        diesel::sql_query(format!(
            "SELECT seq, {} AS at, entry_hash FROM {} WHERE seq IS NOT NULL ORDER BY seq LIMIT $1",
            log.time_column(),
            log.table()
        ))
        .bind::<BigInt, _>(limit)
        .load(conn)
    }

    /// Deletes the sealed entries up to `through_seq` and their anchors; for the operation log
    /// also the webhook delivery attempts of those events (they reference them). Returns the
    /// entries and the attempts deleted.
    pub fn delete_through(
        conn: &mut PgConnection,
        log: LogName,
        through_seq: i64,
    ) -> QueryResult<(usize, usize)> {
        let attempts = if log == LogName::Events {
            diesel::sql_query(
                "DELETE FROM webhook_attempts WHERE event_id IN \
                 (SELECT id FROM events WHERE seq <= $1)",
            )
            .bind::<BigInt, _>(through_seq)
            .execute(conn)?
        } else {
            0
        };
        let entries = diesel::sql_query(format!("DELETE FROM {} WHERE seq <= $1", log.table()))
            .bind::<BigInt, _>(through_seq)
            .execute(conn)?;
        diesel::delete(
            log_anchors::table
                .filter(log_anchors::log.eq(log.as_str()))
                .filter(log_anchors::seq.le(through_seq)),
        )
        .execute(conn)?;
        Ok((entries, attempts))
    }
}

fn load<'a>(
    conn: &mut PgConnection,
    log: LogName,
    query: diesel::query_builder::BoxedSqlQuery<'a, Pg, diesel::query_builder::SqlQuery>,
) -> QueryResult<Vec<ChainRow>> {
    Ok(match log {
        LogName::Events => query
            .load::<EventRow>(conn)?
            .into_iter()
            .map(ChainRow::from)
            .collect(),
        LogName::Deletions => query
            .load::<DeletionRow>(conn)?
            .into_iter()
            .map(ChainRow::from)
            .collect(),
        LogName::Operator => query
            .load::<OperatorRow>(conn)?
            .into_iter()
            .map(ChainRow::from)
            .collect(),
    })
}

/// An RFC 3161 time-stamp of a chain's entry.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = log_anchors)]
pub struct LogAnchor {
    pub log: String,
    pub seq: i64,
    pub entry_hash: Vec<u8>,
    /// DER `TimeStampToken`; its message imprint is SHA-256 = `entry_hash`.
    pub token: Vec<u8>,
    pub created_at: DateTime<Utc>,
}

impl LogAnchor {
    /// Inserts the anchor unless the entry already has one; returns whether it was inserted.
    pub fn insert(&self, conn: &mut PgConnection) -> QueryResult<bool> {
        diesel::insert_into(log_anchors::table)
            .values(self)
            .on_conflict_do_nothing()
            .execute(conn)
            .map(|n| n > 0)
    }

    /// The seq of the log's newest anchor.
    pub fn newest_seq(conn: &mut PgConnection, log: LogName) -> QueryResult<Option<i64>> {
        log_anchors::table
            .filter(log_anchors::log.eq(log.as_str()))
            .select(diesel::dsl::max(log_anchors::seq))
            .first(conn)
    }

    /// Every anchor of the log: seq and the hash time-stamped (no tokens), in seq order.
    pub fn hashes(conn: &mut PgConnection, log: LogName) -> QueryResult<Vec<(i64, Vec<u8>)>> {
        log_anchors::table
            .filter(log_anchors::log.eq(log.as_str()))
            .order(log_anchors::seq.asc())
            .select((log_anchors::seq, log_anchors::entry_hash))
            .load(conn)
    }

    /// Up to `limit` anchors with `seq > after`, tokens included, in seq order.
    pub fn page(
        conn: &mut PgConnection,
        log: LogName,
        after: i64,
        limit: i64,
    ) -> QueryResult<Vec<LogAnchor>> {
        log_anchors::table
            .filter(log_anchors::log.eq(log.as_str()))
            .filter(log_anchors::seq.gt(after))
            .order(log_anchors::seq.asc())
            .limit(limit)
            .select(LogAnchor::as_select())
            .load(conn)
    }
}
