//! Tamper-evident logs (R-LOG-1). The operation log (`events`), the deletion log and operator
//! actions are each a hash chain; this module owns the chain rules: the canonical encoding of
//! an entry, sealing, anchoring with RFC 3161 time-stamps, retention purges and the verifier.
//! It never adds work to the transactions that write log rows: those insert unsealed rows
//! (chain columns NULL) as before, and the workers seal them after the fact.
//!
//! # The chain
//!
//! Sealing gives unsealed rows, in `(time, id)` order, the next `seq`, the previous entry's
//! hash as `prev_hash`, and
//!
//! ```text
//! entry_hash = SHA-256( prev_hash                       32 bytes; 32 zero bytes before seq 1
//!                     || field("shomei-log-v1")         encoding and its version
//!                     || field(log)                     "events", "deletions" or "operator"
//!                     || field(c1) || ... || field(cn)) every other column, in table order
//! field(NULL)  = 0x00
//! field(value) = 0x01 || byte length (u32, big-endian) || bytes
//! ```
//!
//! where the bytes of a `uuid` are its 16 bytes, of `text` its UTF-8, of `jsonb` PostgreSQL's
//! text output of it (`::text`; PostgreSQL sorts and deduplicates keys, so one value always
//! reads the same), of `timestamptz` the microseconds since 1970-01-01 UTC and of `bigint` the
//! value, both as i64 big-endian, of `bytea` the bytes themselves. The columns, in order:
//!
//! - `events`: id, tenant_id, kind, document_id, request_id, actor, ip, data, created_at
//! - `deletion_log` (`deletions`): id, tenant_id, document_id, object_kind, object_id,
//!   ciphertext_sha256, size_bytes, reason, actor, job_id, deleted_at
//! - `operator_actions` (`operator`): id, actor, action, target, detail, created_at
//!
//! A column added to one of these tables is not covered until it is added here, under a new
//! encoding version (old entries keep the old one).
//!
//! Only whoever holds the log's advisory lock (`pg_try_advisory_xact_lock`) seals, so with any
//! number of workers there is one chain. A retention purge deletes the oldest sealed prefix and
//! records, as an operator action in the same transaction, the last purged entry (`seq`,
//! `entry_hash`): the chain then starts after that checkpoint.
//!
//! # What the verifier can and cannot see
//!
//! It walks the chain in `seq` order, recomputes every hash and checks each link, and names the
//! first entry that was edited, inserted or removed. A chain rewritten from some entry on with
//! every hash recomputed is consistent in itself; the anchors (time-stamps of past heads,
//! each also recorded as an operator action) then no longer match. Rows not sealed yet (a
//! second or so after their insert) and entries after the newest anchor are only as safe as the
//! database: someone who can write to it can add unsealed rows, or cut and rebuild the tail
//! together with the anchors and their records. Keeping copies of the anchor tokens elsewhere
//! (the worker logs each one) closes that.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use shomei_config::LogConfig;
use shomei_schema::models::Seal;
use shomei_schema::{
    ChainRow, DbError, Field, Ledger, LogAnchor, LogName, OperatorAction, ACTION_LOG_ANCHOR,
    ACTION_LOG_PURGE,
};
use shomei_signing::{Certificate, TimestampError, Timestamper, TokenExpectations};

/// Names the encoding (and its version) inside every entry hash.
pub const ENCODING: &str = "shomei-log-v1";
/// `prev_hash` of a chain's first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// Rows sealed per transaction.
const SEAL_BATCH: i64 = 1000;
/// Batches per log and sealing pass, so that one busy log cannot hold up the others for long.
const SEAL_BATCHES_PER_PASS: usize = 20;
/// Entries purged per transaction (each transaction records its own checkpoint).
const PURGE_BATCH: i64 = 100_000;
/// Rows read per query by the verifier.
const VERIFY_PAGE: i64 = 5000;
/// Accepted entries the verifier remembers, to tell an entry slipped in from one removed.
const RECENT: usize = 1024;

/// Who the workers' own operator actions are recorded as.
pub const SCHEDULER_ACTOR: &str = "scheduler";

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("time-stamping a chain head failed")]
    Timestamp(#[from] TimestampError),
    #[error("{0}")]
    Corrupt(String),
}

// ---------------------------------------------------------------------------------------------
// The encoding
// ---------------------------------------------------------------------------------------------

fn field(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(bytes) => {
            let len = u32::try_from(bytes.len()).expect("PostgreSQL values are under 1 GiB");
            out.push(1);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(bytes);
        }
    }
}

/// The canonical encoding of an entry's content (see the module documentation).
pub fn canonical(log: LogName, content: &[Field]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    field(&mut out, Some(ENCODING.as_bytes()));
    field(&mut out, Some(log.as_str().as_bytes()));
    for value in content {
        match value {
            Field::Null => field(&mut out, None),
            Field::Uuid(id) => field(&mut out, Some(id.as_bytes())),
            Field::Text(text) | Field::Json(text) => field(&mut out, Some(text.as_bytes())),
            Field::Time(at) => field(&mut out, Some(&at.timestamp_micros().to_be_bytes())),
            Field::Int(n) => field(&mut out, Some(&n.to_be_bytes())),
            Field::Bytes(bytes) => field(&mut out, Some(bytes)),
        }
    }
    out
}

/// `SHA-256(prev_hash || canonical(log, content))`.
pub fn entry_hash(log: LogName, prev_hash: &[u8], content: &[Field]) -> [u8; 32] {
    Sha256::new()
        .chain_update(prev_hash)
        .chain_update(canonical(log, content))
        .finalize()
        .into()
}

fn serialize_hex<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// Where a purged chain starts again: the last entry a recorded purge removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub through_seq: i64,
    #[serde(serialize_with = "serialize_hex")]
    pub entry_hash: Vec<u8>,
}

impl Checkpoint {
    fn from_detail(detail: &serde_json::Value) -> Option<Checkpoint> {
        Some(Checkpoint {
            through_seq: detail.get("through_seq")?.as_i64()?,
            entry_hash: hex::decode(detail.get("entry_hash")?.as_str()?).ok()?,
        })
    }
}

/// The newest recorded purge of `log`, if any.
pub fn checkpoint(conn: &mut PgConnection, log: LogName) -> QueryResult<Option<Checkpoint>> {
    Ok(OperatorAction::of(conn, ACTION_LOG_PURGE, log.as_str())?
        .iter()
        .filter_map(|action| Checkpoint::from_detail(&action.detail))
        .max_by_key(|c| c.through_seq))
}

// ---------------------------------------------------------------------------------------------
// Sealing
// ---------------------------------------------------------------------------------------------

/// Seals up to one batch of the log's unsealed rows in one transaction. `None`: another
/// worker holds the log's lock (and is sealing).
pub fn seal_batch(conn: &mut PgConnection, log: LogName) -> QueryResult<Option<usize>> {
    conn.transaction(|conn| {
        if !Ledger::try_lock(conn, log)? {
            return Ok(None);
        }
        let rows = Ledger::unsealed(conn, log, SEAL_BATCH)?;
        if rows.is_empty() {
            return Ok(Some(0));
        }
        let (mut seq, mut prev) = match Ledger::head(conn, log)? {
            Some(head) => (head.seq, head.entry_hash),
            None => match checkpoint(conn, log)? {
                Some(start) => (start.through_seq, start.entry_hash),
                None => (0, GENESIS.to_vec()),
            },
        };
        let mut seals = Vec::with_capacity(rows.len());
        for row in rows {
            seq += 1;
            let hash = entry_hash(log, &prev, &row.content).to_vec();
            seals.push(Seal {
                id: row.id,
                seq,
                prev_hash: std::mem::replace(&mut prev, hash.clone()),
                entry_hash: hash,
            });
        }
        let sealed = Ledger::seal(conn, log, &seals)?;
        if sealed != seals.len() {
            // A row went between the read and the update (deleted by hand?): sealing the rest
            // would link to a hash no row has. Try again on the next pass.
            tracing::error!(ledger.log = %log, expected = seals.len(), sealed, "rows changed while sealing; rolled back");
            return Err(diesel::result::Error::RollbackTransaction);
        }
        Ok(Some(sealed))
    })
}

/// Seals what is unsealed in every log (up to a bound per pass); returns how many rows.
pub fn seal_all(conn: &mut PgConnection) -> QueryResult<usize> {
    let mut total = 0;
    for log in LogName::ALL {
        for _ in 0..SEAL_BATCHES_PER_PASS {
            match seal_batch(conn, log)? {
                Some(n) => {
                    total += n;
                    if (n as i64) < SEAL_BATCH {
                        break;
                    }
                }
                None => break,
            }
        }
    }
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// Anchoring
// ---------------------------------------------------------------------------------------------

/// Time-stamps the log's newest entry unless it is already anchored (for the operator log:
/// unless only anchor records came after the last anchor), stores the token and records the
/// anchor as an operator action. Returns the seq anchored. Blocking (the TSA is asked over
/// HTTP while no transaction is open).
pub fn anchor(
    conn: &mut PgConnection,
    log: LogName,
    timestamper: &dyn Timestamper,
) -> Result<Option<i64>, LedgerError> {
    let Some(head) = Ledger::head(conn, log)? else {
        return Ok(None);
    };
    let newest = LogAnchor::newest_seq(conn, log)?;
    if newest.is_some_and(|seq| seq >= head.seq) {
        return Ok(None);
    }
    if let (LogName::Operator, Some(seq)) = (log, newest) {
        if !OperatorAction::any_sealed_after_except(conn, seq, ACTION_LOG_ANCHOR)? {
            return Ok(None);
        }
    }
    let digest: [u8; 32] = head.entry_hash.as_slice().try_into().map_err(|_| {
        LedgerError::Corrupt(format!(
            "{log} entry {} has a hash of {} bytes",
            head.seq,
            head.entry_hash.len()
        ))
    })?;
    let token = timestamper.timestamp(&digest)?;
    let anchored = conn.transaction(|conn| {
        let anchor = LogAnchor {
            log: log.as_str().to_owned(),
            seq: head.seq,
            entry_hash: head.entry_hash.clone(),
            token,
            created_at: Utc::now(),
        };
        if !anchor.insert(conn)? {
            return Ok::<_, diesel::result::Error>(None);
        }
        OperatorAction::record(
            conn,
            SCHEDULER_ACTOR,
            ACTION_LOG_ANCHOR,
            log.as_str(),
            json!({"seq": head.seq, "entry_hash": hex::encode(&head.entry_hash)}),
        )?;
        Ok(Some(head.seq))
    })?;
    if anchored.is_some() {
        // A copy outside the database: what an attacker who rewrote the database cannot undo.
        // (Fields are `ledger.*`: the fmt layer drops `log.*` ones, which are tracing-log's.)
        tracing::info!(ledger.log = %log, ledger.seq = head.seq, ledger.entry_hash = %hex::encode(&head.entry_hash), "chain head time-stamped");
    }
    Ok(anchored)
}

/// Anchors every log's head; stops at the first failure (the TSA is down for all of them).
pub fn anchor_all(
    conn: &mut PgConnection,
    timestamper: &dyn Timestamper,
) -> Result<Vec<(LogName, i64)>, LedgerError> {
    let mut anchored = Vec::new();
    for log in LogName::ALL {
        if let Some(seq) = anchor(conn, log, timestamper)? {
            anchored.push((log, seq));
        }
    }
    Ok(anchored)
}

// ---------------------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------------------

/// One purge transaction: entries `..=through_seq` of `log` deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Purge {
    pub log: LogName,
    pub through_seq: i64,
    pub entries: usize,
    pub webhook_attempts: usize,
}

/// Deletes the log's oldest sealed entries written before `retention` ago, as far as they
/// form a prefix of the chain, recording each transaction's checkpoint as a `log.purge`
/// operator action. The operator log keeps the newest purge record of every log. Idempotent:
/// a second run finds nothing to do.
pub fn purge(
    conn: &mut PgConnection,
    log: LogName,
    retention: Duration,
    actor: &str,
) -> QueryResult<Vec<Purge>> {
    let cutoff =
        Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut purges = Vec::new();
    loop {
        let step = conn.transaction(|conn| {
            // Waits for a sealing pass to end: the sealer must not extend a chain from a head
            // this transaction deletes.
            Ledger::lock(conn, log)?;
            let prefix = Ledger::oldest_sealed(conn, log, PURGE_BATCH)?;
            let keep_from = match log {
                LogName::Operator => OperatorAction::oldest_needed_purge_record(conn)?,
                _ => None,
            };
            let expired = prefix
                .iter()
                .take_while(|e| e.at < cutoff && keep_from.is_none_or(|keep| e.seq < keep))
                .count();
            let Some(last) = expired.checked_sub(1).map(|i| &prefix[i]) else {
                return Ok::<_, diesel::result::Error>(None);
            };
            let (entries, webhook_attempts) = Ledger::delete_through(conn, log, last.seq)?;
            OperatorAction::record(
                conn,
                actor,
                ACTION_LOG_PURGE,
                log.as_str(),
                json!({
                    "through_seq": last.seq,
                    "entry_hash": hex::encode(&last.entry_hash),
                    "entries": entries,
                    "webhook_attempts": webhook_attempts,
                    "older_than": cutoff,
                    "retention_days": retention.as_secs() / 86_400,
                }),
            )?;
            let more = prefix.len() as i64 == PURGE_BATCH && expired == prefix.len();
            Ok(Some((
                Purge {
                    log,
                    through_seq: last.seq,
                    entries,
                    webhook_attempts,
                },
                more,
            )))
        })?;
        match step {
            Some((done, more)) => {
                tracing::info!(ledger.log = %log, ledger.through_seq = done.through_seq, entries = done.entries, "log entries past retention purged");
                purges.push(done);
                if !more {
                    break;
                }
            }
            None => break,
        }
    }
    Ok(purges)
}

/// The daily purge of every log, each with its retention.
pub fn purge_all(conn: &mut PgConnection, config: &LogConfig) -> QueryResult<Vec<Purge>> {
    let mut purges = Vec::new();
    for log in LogName::ALL {
        let retention = match log {
            LogName::Events => config.events_retention,
            LogName::Deletions | LogName::Operator => config.system_retention,
        };
        purges.extend(purge(conn, log, retention, SCHEDULER_ACTOR)?);
    }
    Ok(purges)
}

// ---------------------------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------------------------

/// What went wrong with an entry (or an anchor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The entry's content (or its seq) is not what was sealed.
    Edited,
    /// The entry was not in the chain as sealed.
    Inserted,
    /// An entry of the chain as sealed is missing.
    Removed,
    /// The chain is consistent in itself but not with what was time-stamped: it was rebuilt.
    Rewritten,
    /// An anchor is missing or its time-stamp does not verify.
    BadAnchor,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Edited => "edited",
            ProblemKind::Inserted => "inserted",
            ProblemKind::Removed => "removed",
            ProblemKind::Rewritten => "rewritten",
            ProblemKind::BadAnchor => "bad anchor",
        }
    }
}

/// The first thing wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The entry's seq (for a removed entry: where it was).
    pub seq: i64,
    /// The entry's id (`None` for a removed entry).
    pub id: Option<Uuid>,
    pub detail: String,
}

/// The newest anchor that verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnchorSummary {
    pub seq: i64,
    /// The time-stamp's genTime.
    pub time: DateTime<Utc>,
}

/// What [`verify`] found.
#[derive(Debug, Clone, Serialize)]
pub struct ChainReport {
    pub log: LogName,
    pub ok: bool,
    /// Sealed entries that checked out (up to the problem, if any).
    pub entries: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    /// The recorded purge the chain starts after.
    pub starts_after: Option<Checkpoint>,
    /// Rows not sealed yet (not covered by the chain).
    pub unsealed: i64,
    /// Anchors whose time-stamp verified.
    pub anchors: u64,
    pub newest_anchor: Option<AnchorSummary>,
    pub problem: Option<Problem>,
}

/// What the anchors' time-stamps are checked against.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Certificates a TSA certificate must chain to (`SHOMEI_TSA_TRUST_ANCHORS`).
    pub trust_anchors: Vec<Certificate>,
    /// A policy every token must carry (`SHOMEI_TSA_REQUIRED_POLICY`).
    pub policy: Option<String>,
}

/// Verifies one chain in a read-only snapshot: every hash and link, the start (genesis or a
/// recorded purge), every anchor (against the chain, its time-stamp, and its operator record).
pub fn verify(
    conn: &mut PgConnection,
    log: LogName,
    options: &VerifyOptions,
) -> Result<ChainReport, LedgerError> {
    conn.build_transaction()
        .read_only()
        .repeatable_read()
        .run(|conn| verify_snapshot(conn, log, options))
}

fn verify_snapshot(
    conn: &mut PgConnection,
    log: LogName,
    options: &VerifyOptions,
) -> Result<ChainReport, LedgerError> {
    let start = checkpoint(conn, log)?;
    let anchored: BTreeMap<i64, Vec<u8>> = LogAnchor::hashes(conn, log)?.into_iter().collect();
    let mut walk = Walk::new(log, start.as_ref(), anchored.clone());
    let mut rows = SealedRows::new(log);
    let mut current = rows.next(conn)?;
    while let Some(row) = current.take() {
        let next = rows.next(conn)?;
        walk.step(&row, next.as_ref());
        if walk.problem.is_some() {
            break;
        }
        current = next;
    }
    walk.finish();

    let mut anchors = 0;
    let mut newest_anchor = None;
    if walk.problem.is_none() {
        let mut after = i64::MIN;
        'pages: loop {
            let page = LogAnchor::page(conn, log, after, 200)?;
            if page.is_empty() {
                break;
            }
            for anchor in page {
                after = anchor.seq;
                if start.as_ref().is_some_and(|c| anchor.seq <= c.through_seq) {
                    continue;
                }
                match check_token(&anchor, options) {
                    Ok(time) => {
                        anchors += 1;
                        newest_anchor = Some(AnchorSummary {
                            seq: anchor.seq,
                            time,
                        });
                    }
                    Err(reason) => {
                        walk.problem = Some(Problem {
                            kind: ProblemKind::BadAnchor,
                            seq: anchor.seq,
                            id: None,
                            detail: format!(
                                "the time-stamp of entry {} does not verify: {reason}",
                                anchor.seq
                            ),
                        });
                        break 'pages;
                    }
                }
            }
        }
    }
    if walk.problem.is_none() {
        walk.problem = check_anchor_records(conn, log, start.as_ref(), &anchored)?;
    }
    let unsealed = Ledger::count_unsealed(conn, log)?;
    Ok(ChainReport {
        log,
        ok: walk.problem.is_none(),
        entries: walk.entries,
        first_seq: walk.first_seq,
        last_seq: walk.last_seq,
        starts_after: start,
        unsealed,
        anchors,
        newest_anchor,
        problem: walk.problem,
    })
}

/// Checks an anchor's token: a valid time-stamp (signature, TSA certificate chaining to the
/// trust anchors) whose message imprint is the anchored hash. Returns its genTime.
fn check_token(anchor: &LogAnchor, options: &VerifyOptions) -> Result<DateTime<Utc>, String> {
    let digest: [u8; 32] = anchor
        .entry_hash
        .as_slice()
        .try_into()
        .map_err(|_| "the anchored hash is not 32 bytes".to_owned())?;
    let verified = shomei_signing::verify_token(
        &anchor.token,
        &TokenExpectations {
            sha256_digest: &digest,
            nonce: None,
            policy: None,
            trust_anchors: &options.trust_anchors,
        },
    )
    .map_err(|e| e.to_string())?;
    if let Some(policy) = &options.policy {
        if verified.tst_info.policy.to_string() != *policy {
            return Err(format!(
                "policy {} is not the required {policy}",
                verified.tst_info.policy
            ));
        }
    }
    Ok(verified.tst_info.gen_time.to_date_time())
}

/// Every anchor the operator log says was taken must still be there, with the same hash.
fn check_anchor_records(
    conn: &mut PgConnection,
    log: LogName,
    start: Option<&Checkpoint>,
    anchored: &BTreeMap<i64, Vec<u8>>,
) -> QueryResult<Option<Problem>> {
    for record in OperatorAction::of(conn, ACTION_LOG_ANCHOR, log.as_str())? {
        let (Some(seq), Some(hash)) = (
            record.detail.get("seq").and_then(|s| s.as_i64()),
            record
                .detail
                .get("entry_hash")
                .and_then(|h| h.as_str())
                .and_then(|h| hex::decode(h).ok()),
        ) else {
            continue;
        };
        if start.is_some_and(|c| seq <= c.through_seq) {
            continue;
        }
        let problem = match anchored.get(&seq) {
            Some(kept) if *kept == hash => continue,
            Some(_) => format!(
                "the anchor of entry {seq} does not hold the hash operator action {} recorded for it",
                record.id
            ),
            None => format!(
                "the anchor of entry {seq} that operator action {} recorded is gone",
                record.id
            ),
        };
        return Ok(Some(Problem {
            kind: ProblemKind::BadAnchor,
            seq,
            id: None,
            detail: problem,
        }));
    }
    Ok(None)
}

/// The sealed rows of a log in chain order, read a page at a time.
struct SealedRows {
    log: LogName,
    buffer: VecDeque<ChainRow>,
    /// The next page is read from this seq on.
    from: i64,
    /// (seq, id) of the last row read: rows up to it are skipped when read again.
    last_read: Option<(i64, Uuid)>,
    done: bool,
}

impl SealedRows {
    fn new(log: LogName) -> Self {
        Self {
            log,
            buffer: VecDeque::new(),
            from: i64::MIN,
            last_read: None,
            done: false,
        }
    }

    fn next(&mut self, conn: &mut PgConnection) -> QueryResult<Option<ChainRow>> {
        while self.buffer.is_empty() && !self.done {
            // Reading from the last seq again (`seq >= from`) and skipping what was read keeps
            // a duplicated seq (possible only with the UNIQUE constraint dropped) from falling
            // between two pages.
            let page = Ledger::sealed_from(conn, self.log, self.from, VERIFY_PAGE)?;
            self.done = (page.len() as i64) < VERIFY_PAGE;
            for row in page {
                let key = (row.seq.unwrap_or(i64::MIN), row.id);
                if self.last_read.is_some_and(|last| key <= last) {
                    continue;
                }
                self.last_read = Some(key);
                self.buffer.push_back(row);
            }
            self.from = match self.last_read {
                Some((seq, _)) if !self.buffer.is_empty() => seq,
                // A whole page of one seq, all read already: step past it.
                _ => self.from.saturating_add(1),
            };
        }
        Ok(self.buffer.pop_front())
    }
}

/// The verifier's walk along a chain, entry by entry (no database: unit-testable).
struct Walk {
    log: LogName,
    start_seq: i64,
    expected_seq: i64,
    expected_prev: Vec<u8>,
    /// The last accepted entries (seq, id, entry_hash), the start checkpoint first.
    recent: VecDeque<(i64, Option<Uuid>, Vec<u8>)>,
    /// seq → hash time-stamped for it.
    anchored: BTreeMap<i64, Vec<u8>>,
    last_good_anchor: Option<i64>,
    entries: u64,
    first_seq: Option<i64>,
    last_seq: Option<i64>,
    problem: Option<Problem>,
}

impl Walk {
    fn new(log: LogName, start: Option<&Checkpoint>, anchored: BTreeMap<i64, Vec<u8>>) -> Self {
        let (through, hash) = start.map_or((0, GENESIS.to_vec()), |c| {
            (c.through_seq, c.entry_hash.clone())
        });
        Self {
            log,
            start_seq: through + 1,
            expected_seq: through + 1,
            expected_prev: hash.clone(),
            recent: VecDeque::from([(through, None, hash)]),
            anchored,
            last_good_anchor: None,
            entries: 0,
            first_seq: None,
            last_seq: None,
            problem: None,
        }
    }

    fn fail(&mut self, kind: ProblemKind, seq: i64, id: Option<Uuid>, detail: String) {
        self.problem = Some(Problem {
            kind,
            seq,
            id,
            detail,
        });
    }

    fn step(&mut self, row: &ChainRow, next: Option<&ChainRow>) {
        let id = Some(row.id);
        let Some(seq) = row.seq else { return };
        let (Some(prev), Some(stored)) = (&row.prev_hash, &row.entry_hash) else {
            return self.fail(
                ProblemKind::Edited,
                seq,
                id,
                format!("entry {seq} lost its chain hashes"),
            );
        };
        if seq < self.expected_seq {
            let detail = if seq < self.start_seq {
                format!(
                    "entry {seq} lies before the start of the chain (seq {})",
                    self.start_seq
                )
            } else {
                format!("seq {seq} is taken twice")
            };
            return self.fail(ProblemKind::Inserted, seq, id, detail);
        }
        let self_ok = entry_hash(self.log, prev, &row.content).as_slice() == stored.as_slice();
        let links = *prev == self.expected_prev;
        if self_ok && links && seq == self.expected_seq {
            return self.accept(seq, row.id, stored);
        }
        let previous = self.expected_seq - 1;
        if !(self_ok && links)
            && next.is_some_and(|n| n.prev_hash.as_deref() == Some(self.expected_prev.as_slice()))
        {
            return self.fail(
                ProblemKind::Inserted,
                seq,
                id,
                format!(
                    "entry {seq} does not belong: the entry after it links straight to entry {previous}"
                ),
            );
        }
        if self_ok && links {
            return self.fail(
                ProblemKind::Edited,
                seq,
                id,
                format!(
                    "its seq was changed: it follows entry {previous} directly, so it is entry {}",
                    self.expected_seq
                ),
            );
        }
        if seq > self.expected_seq {
            let next_present = format!("the next entry present is {seq} ({})", row.id);
            let detail = if seq == self.expected_seq + 1 {
                format!("entry {} is missing; {next_present}", self.expected_seq)
            } else {
                format!(
                    "entries {} to {} are missing; {next_present}",
                    self.expected_seq,
                    seq - 1
                )
            };
            return self.fail(ProblemKind::Removed, self.expected_seq, None, detail);
        }
        if !self_ok {
            return self.fail(
                ProblemKind::Edited,
                seq,
                id,
                format!("entry {seq} no longer matches its hash"),
            );
        }
        // Sound in itself, right seq, but it links to something else than its predecessor.
        if let Some(pos) = self.recent.iter().position(|(_, _, hash)| hash == prev) {
            if let Some((first, first_id, _)) = self.recent.get(pos + 1).cloned() {
                let linked = self.recent[pos].0;
                return self.fail(
                    ProblemKind::Inserted,
                    first,
                    first_id,
                    format!(
                        "entry {first} does not belong: entry {seq} links to entry {linked}, so the entries from {first} to {previous} were slipped in"
                    ),
                );
            }
        }
        self.fail(
            ProblemKind::Removed,
            seq,
            None,
            format!(
                "the entry before {seq} ({}) is missing (or was replaced, hash and all): {seq} links to a hash no entry has",
                row.id
            ),
        )
    }

    fn accept(&mut self, seq: i64, id: Uuid, hash: &[u8]) {
        if let Some(anchored) = self.anchored.get(&seq) {
            if anchored.as_slice() != hash {
                let after = self.last_good_anchor.unwrap_or(self.start_seq - 1);
                return self.fail(
                    ProblemKind::Rewritten,
                    seq,
                    Some(id),
                    format!(
                        "entry {seq} is not the entry that was time-stamped: the chain was rebuilt from an entry after {after} on"
                    ),
                );
            }
            self.last_good_anchor = Some(seq);
        }
        self.entries += 1;
        self.first_seq.get_or_insert(seq);
        self.last_seq = Some(seq);
        self.expected_seq = seq + 1;
        self.expected_prev = hash.to_vec();
        self.recent.push_back((seq, Some(id), hash.to_vec()));
        if self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    /// After the last entry: an anchor beyond it means the end of the chain was cut off.
    fn finish(&mut self) {
        if self.problem.is_some() {
            return;
        }
        if let Some((&anchored, _)) = self.anchored.range(self.expected_seq..).next() {
            let from = self.expected_seq;
            self.fail(
                ProblemKind::Removed,
                from,
                None,
                format!("the chain ends at entry {} but entry {anchored} was time-stamped: entries from {from} on were removed", from - 1),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const LOG: LogName = LogName::Operator;

    fn content(id: Uuid, target: &str) -> Vec<Field> {
        vec![
            Field::Uuid(id),
            Field::Text("cli:ops".into()),
            Field::Text("tenant.create".into()),
            Field::Text(target.into()),
            Field::Json("{}".into()),
            Field::Time(Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0).unwrap()),
        ]
    }

    fn row(seq: i64, prev: &[u8], target: &str) -> ChainRow {
        let id = Uuid::from_u128(0x1000 + seq as u128 + target.len() as u128 * 0x10000);
        let content = content(id, target);
        ChainRow {
            id,
            at: Utc::now(),
            seq: Some(seq),
            prev_hash: Some(prev.to_vec()),
            entry_hash: Some(entry_hash(LOG, prev, &content).to_vec()),
            content,
        }
    }

    /// A sound chain of `n` entries starting after `start` (seq, hash).
    fn chain(n: i64, start: (i64, Vec<u8>)) -> Vec<ChainRow> {
        let mut rows = Vec::new();
        let mut prev = start.1;
        for seq in start.0 + 1..=start.0 + n {
            let r = row(seq, &prev, "t");
            prev = r.entry_hash.clone().unwrap();
            rows.push(r);
        }
        rows
    }

    fn walk_with(
        rows: &[ChainRow],
        start: Option<&Checkpoint>,
        anchored: BTreeMap<i64, Vec<u8>>,
    ) -> Option<Problem> {
        let mut walk = Walk::new(LOG, start, anchored);
        for (i, r) in rows.iter().enumerate() {
            walk.step(r, rows.get(i + 1));
            if walk.problem.is_some() {
                break;
            }
        }
        walk.finish();
        walk.problem
    }

    fn walk(rows: &[ChainRow]) -> Option<Problem> {
        walk_with(rows, None, BTreeMap::new())
    }

    fn renumber(rows: &mut [ChainRow]) {
        for (i, r) in rows.iter_mut().enumerate() {
            r.seq = Some(i as i64 + 1);
        }
    }

    #[test]
    fn the_encoding_is_the_documented_one() {
        // Computed independently (Python hashlib, from the module documentation).
        let id = Uuid::parse_str("0192f1a0-0000-7000-8000-000000000001").unwrap();
        let content = vec![
            Field::Uuid(id),
            Field::Text("cli:ops".into()),
            Field::Text("tenant.create".into()),
            Field::Null,
            Field::Json(r#"{"a": 1}"#.into()),
            Field::Time(Utc.timestamp_micros(1_795_000_000_123_456).unwrap()),
        ];
        assert_eq!(
            hex::encode(entry_hash(LOG, &GENESIS, &content)),
            "b5f665e91ef3fc0d07dbea9d167aeeadfbe362dd1e85ec5e021ea1115fc1376a"
        );
    }

    #[test]
    fn a_sound_chain_passes() {
        assert_eq!(walk(&chain(5, (0, GENESIS.to_vec()))), None);
    }

    #[test]
    fn an_edited_entry_is_named() {
        let mut rows = chain(5, (0, GENESIS.to_vec()));
        rows[2].content[3] = Field::Text("forged".into());
        let p = walk(&rows).unwrap();
        assert_eq!(
            (p.kind, p.seq, p.id),
            (ProblemKind::Edited, 3, Some(rows[2].id))
        );
    }

    #[test]
    fn a_removed_entry_is_named_with_or_without_renumbering() {
        let mut rows = chain(5, (0, GENESIS.to_vec()));
        rows.remove(2);
        let p = walk(&rows).unwrap();
        assert_eq!(
            (p.kind, p.seq, p.id),
            (ProblemKind::Removed, 3, None),
            "{p:?}"
        );
        renumber(&mut rows);
        let p = walk(&rows).unwrap();
        assert_eq!(
            (p.kind, p.seq, p.id),
            (ProblemKind::Removed, 3, None),
            "{p:?}"
        );
    }

    #[test]
    fn an_inserted_entry_is_named_whether_its_hash_is_sound_or_not() {
        let rows = chain(5, (0, GENESIS.to_vec()));
        // Sound: it links to entry 2 and hashes right; the rest moved up one.
        let forged = row(3, rows[1].entry_hash.as_ref().unwrap(), "forged");
        let mut sound = rows.clone();
        sound.insert(2, forged.clone());
        renumber(&mut sound);
        let p = walk(&sound).unwrap();
        assert_eq!(
            (p.kind, p.seq, p.id),
            (ProblemKind::Inserted, 3, Some(forged.id)),
            "{p:?}"
        );
        // Unsound: a copy of entry 3 with another id.
        let mut copy = rows[2].clone();
        copy.id = Uuid::from_u128(7);
        copy.content[0] = Field::Uuid(copy.id);
        let mut unsound = rows.clone();
        unsound.insert(2, copy.clone());
        renumber(&mut unsound);
        let p = walk(&unsound).unwrap();
        assert_eq!(
            (p.kind, p.seq, p.id),
            (ProblemKind::Inserted, 3, Some(copy.id)),
            "{p:?}"
        );
        // At the very start.
        let first = row(1, &GENESIS, "forged");
        let mut at_start = rows.clone();
        at_start.insert(0, first.clone());
        renumber(&mut at_start);
        let p = walk(&at_start).unwrap();
        assert_eq!(
            (p.kind, p.seq, p.id),
            (ProblemKind::Inserted, 1, Some(first.id)),
            "{p:?}"
        );
    }

    #[test]
    fn a_duplicated_seq_is_an_insertion() {
        // Possible only with the UNIQUE constraint on seq dropped.
        let rows = chain(4, (0, GENESIS.to_vec()));
        let mut twice = rows.clone();
        let mut copy = row(2, rows[0].entry_hash.as_ref().unwrap(), "forged");
        copy.seq = Some(2);
        twice.insert(2, copy.clone());
        let p = walk(&twice).unwrap();
        assert_eq!(
            (p.kind, p.seq, p.id),
            (ProblemKind::Inserted, 2, Some(copy.id)),
            "{p:?}"
        );
    }

    #[test]
    fn a_changed_seq_is_an_edit() {
        let mut rows = chain(5, (0, GENESIS.to_vec()));
        for r in &mut rows[3..] {
            r.seq = Some(r.seq.unwrap() + 10);
        }
        let p = walk(&rows).unwrap();
        assert_eq!((p.kind, p.seq), (ProblemKind::Edited, 14), "{p:?}");
    }

    #[test]
    fn a_chain_starts_after_its_recorded_purge_and_nowhere_else() {
        let rows = chain(6, (0, GENESIS.to_vec()));
        let tail = &rows[3..];
        let checkpoint = Checkpoint {
            through_seq: 3,
            entry_hash: rows[2].entry_hash.clone().unwrap(),
        };
        assert_eq!(walk_with(tail, Some(&checkpoint), BTreeMap::new()), None);
        let p = walk(tail).unwrap();
        assert_eq!((p.kind, p.seq), (ProblemKind::Removed, 1), "{p:?}");
        let p = walk_with(&rows[2..], Some(&checkpoint), BTreeMap::new()).unwrap();
        assert_eq!((p.kind, p.seq), (ProblemKind::Inserted, 3), "{p:?}");
    }

    #[test]
    fn a_rebuilt_chain_is_caught_by_its_anchors() {
        let rows = chain(6, (0, GENESIS.to_vec()));
        let anchored = BTreeMap::from([
            (2, rows[1].entry_hash.clone().unwrap()),
            (5, rows[4].entry_hash.clone().unwrap()),
        ]);
        assert_eq!(walk_with(&rows, None, anchored.clone()), None);
        // Entry 4 edited, and every hash from there on recomputed.
        let mut rebuilt = rows[..3].to_vec();
        let mut prev = rows[2].entry_hash.clone().unwrap();
        for seq in 4..=6 {
            let r = row(seq, &prev, if seq == 4 { "forged" } else { "t" });
            prev = r.entry_hash.clone().unwrap();
            rebuilt.push(r);
        }
        assert_eq!(walk(&rebuilt), None, "sound in itself");
        let p = walk_with(&rebuilt, None, anchored.clone()).unwrap();
        assert_eq!((p.kind, p.seq), (ProblemKind::Rewritten, 5), "{p:?}");
        assert!(p.detail.contains("after 2"), "{}", p.detail);
        // The end cut off behind the last anchor.
        let p = walk_with(&rows[..3], None, anchored).unwrap();
        assert_eq!((p.kind, p.seq), (ProblemKind::Removed, 4), "{p:?}");
    }
}
