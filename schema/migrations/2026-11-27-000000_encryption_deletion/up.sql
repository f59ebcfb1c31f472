-- Encryption at rest (R-DATA-1, R-DEL-4) and deletion with evidence (R-DEL-1 … R-DEL-3).

-- Data keys: AES-256 keys that encrypt a tenant's documents ('content') and the personal
-- fields of its records ('records'). Each is stored only wrapped (AES-256-GCM, nonce first) by
-- its own key-encryption key, an AES key inside the HSM that never leaves it (`kek_label`).
-- Destroying a data key destroys that HSM key and clears `wrapped`, so every copy of the row
-- in a backup is useless at once. Rotation re-wraps under a new KEK (`kek_version` + 1).
CREATE TABLE data_keys (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    purpose      text NOT NULL CHECK (purpose IN ('content', 'records')),
    kek_label    text NOT NULL,
    kek_version  integer NOT NULL DEFAULT 1,
    wrapped      bytea,
    created_at   timestamptz NOT NULL DEFAULT now(),
    rotated_at   timestamptz,
    destroyed_at timestamptz,
    CHECK ((wrapped IS NULL) = (destroyed_at IS NOT NULL))
);
CREATE UNIQUE INDEX data_keys_live ON data_keys (tenant_id, purpose) WHERE destroyed_at IS NULL;

-- Cancellation and the deletion it schedules.
ALTER TABLE tenants
    ADD COLUMN cancelled_at    timestamptz,
    ADD COLUMN deletion_due_at timestamptz,
    ADD COLUMN deleted_at      timestamptz;

-- Transaction records stay (R-DEL-2); their files go.
ALTER TABLE documents
    ADD COLUMN deleted_at     timestamptz,
    ADD COLUMN deleted_reason text;

-- A document another party still holds (a counterparty's account, a legal hold) is not
-- deleted while the hold is live (R-DEL-3).
CREATE TABLE document_holds (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    document_id uuid NOT NULL REFERENCES documents (id),
    holder      text NOT NULL,
    reason      text,
    until       timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz
);
CREATE INDEX document_holds_live ON document_holds (document_id) WHERE released_at IS NULL;

-- Evidence: one row per deleted object (R-DEL-1). Append-only (rows are never updated or
-- deleted by the application).
CREATE TABLE deletion_log (
    id                uuid PRIMARY KEY,
    tenant_id         uuid NOT NULL,
    document_id       uuid,
    object_kind       text NOT NULL,
    object_id         text NOT NULL,
    ciphertext_sha256 bytea,
    size_bytes        bigint,
    reason            text NOT NULL,
    actor             text NOT NULL,
    job_id            uuid,
    deleted_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (object_kind, object_id)
);
CREATE INDEX deletion_log_tenant ON deletion_log (tenant_id, deleted_at);

-- Personal fields are sealed with the tenant's 'records' data key (shomei-vault): the plain
-- columns are replaced. A database that already holds plain personal data predates encryption
-- at rest (pre-release); it is refused rather than silently kept in the clear.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM signature_requests) OR EXISTS (SELECT 1 FROM signer_identities) THEN
        RAISE EXCEPTION 'this database holds personal data in plain text (from before encryption at rest); recreate it';
    END IF;
END $$;
ALTER TABLE signature_requests
    DROP COLUMN owner_name, DROP COLUMN owner_email,
    ADD COLUMN owner_name bytea NOT NULL, ADD COLUMN owner_email bytea NOT NULL;
ALTER TABLE request_signers
    DROP COLUMN name, DROP COLUMN email,
    ADD COLUMN name bytea NOT NULL, ADD COLUMN email bytea NOT NULL;
-- `email_index`: HMAC-SHA256 of the lower-cased address under a key derived from the tenant's
-- records key (a blind index: equality look-ups without the address).
ALTER TABLE signer_identities
    DROP COLUMN name, DROP COLUMN email,
    ADD COLUMN name bytea NOT NULL, ADD COLUMN email bytea NOT NULL,
    ADD COLUMN email_index bytea NOT NULL;
CREATE UNIQUE INDEX signer_identities_email ON signer_identities (tenant_id, email_index);
