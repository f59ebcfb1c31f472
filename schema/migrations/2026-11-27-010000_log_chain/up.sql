-- Tamper-evident logs (R-LOG-1): the operation log (`events`), the deletion log and operator
-- actions are hash-chained after the fact by a sealer in the workers (shomei-jobs `ledger`),
-- never in the transaction that writes a row: inserts stay as cheap as before. A row is
-- "unsealed" (chain columns NULL) until the sealer gives it the next `seq`, the previous
-- entry's hash and its own hash; from then on the application never changes it.
--   entry_hash = SHA-256(prev_hash || canonical encoding of every other column)
-- (the encoding is documented in jobs/src/ledger.rs). The first entry's prev_hash is 32 zero
-- bytes, or the hash of the last entry a recorded purge removed.

-- seq is unique through a partial index rather than a UNIQUE constraint: inserts (seq NULL)
-- never touch it, and the sealer's UPDATE does not take the row lock that would make it wait for
-- transactions inserting rows that reference the event (webhook_attempts), since PostgreSQL
-- only counts full unique indexes as possible foreign-key targets.
ALTER TABLE events
    ADD COLUMN seq        bigint,
    ADD COLUMN prev_hash  bytea,
    ADD COLUMN entry_hash bytea,
    ADD CONSTRAINT events_sealed CHECK ((seq IS NULL) = (entry_hash IS NULL) AND (seq IS NULL) = (prev_hash IS NULL));
CREATE UNIQUE INDEX events_seq ON events (seq) WHERE seq IS NOT NULL;
-- The sealer's queue: small, since rows leave it within seconds.
CREATE INDEX events_unsealed ON events (created_at, id) WHERE seq IS NULL;

ALTER TABLE deletion_log
    ADD COLUMN seq        bigint,
    ADD COLUMN prev_hash  bytea,
    ADD COLUMN entry_hash bytea,
    ADD CONSTRAINT deletion_log_sealed CHECK ((seq IS NULL) = (entry_hash IS NULL) AND (seq IS NULL) = (prev_hash IS NULL));
CREATE UNIQUE INDEX deletion_log_seq ON deletion_log (seq) WHERE seq IS NOT NULL;
CREATE INDEX deletion_log_unsealed ON deletion_log (deleted_at, id) WHERE seq IS NULL;

-- What operators and the system itself did to the service: CLI commands (tenant create,
-- key create), log anchors and purges. Append-only, chained like the others.
CREATE TABLE operator_actions (
    id         uuid PRIMARY KEY,
    -- `cli:<operator>`, `scheduler`.
    actor      text NOT NULL,
    -- `tenant.create`, `key.create`, `log.anchor`, `log.purge`, ...
    action     text NOT NULL,
    -- What it acted on: a tenant id, a key id, a log name.
    target     text NOT NULL,
    detail     jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    seq        bigint,
    prev_hash  bytea,
    entry_hash bytea,
    CONSTRAINT operator_actions_sealed CHECK ((seq IS NULL) = (entry_hash IS NULL) AND (seq IS NULL) = (prev_hash IS NULL))
);
CREATE UNIQUE INDEX operator_actions_seq ON operator_actions (seq) WHERE seq IS NOT NULL;
CREATE INDEX operator_actions_unsealed ON operator_actions (created_at, id) WHERE seq IS NULL;
-- The verifier and the purge look up the newest purge and anchor records of a log.
CREATE INDEX operator_actions_log ON operator_actions (action, target, seq) WHERE action LIKE 'log.%';

-- RFC 3161 time-stamps of a chain's newest entry, taken every SHOMEI_LOG_ANCHOR_SECS: a chain
-- rewritten with every hash recomputed no longer matches them.
CREATE TABLE log_anchors (
    log        text NOT NULL CHECK (log IN ('events', 'deletions', 'operator')),
    seq        bigint NOT NULL,
    entry_hash bytea NOT NULL,
    -- DER TimeStampToken (CMS ContentInfo) whose message imprint is SHA-256 = entry_hash.
    token      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (log, seq)
);

-- Periodic tasks of the workers (anchoring, retention purges). A worker runs a task only after
-- claiming its due run with one atomic UPDATE, so a run happens once however many workers are
-- up, and the schedule outlives every process.
CREATE TABLE scheduled_tasks (
    name             text PRIMARY KEY,
    next_run_at      timestamptz NOT NULL,
    runs             bigint NOT NULL DEFAULT 0,
    last_started_at  timestamptz,
    last_finished_at timestamptz,
    last_error       text
);
