-- Tenants and their API keys. Keys are random 256-bit secrets, so a plain SHA-256 is a sound
-- way to store them (a slow hash protects low-entropy passwords, not random keys).
CREATE TABLE tenants (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    prefix      text NOT NULL UNIQUE,
    key_sha256  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

CREATE TABLE documents (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    title       text,
    pages       integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX documents_tenant ON documents (tenant_id, created_at);

-- Every version of a document's bytes. Revision 0 is the upload; each signature adds one.
-- `job_id` is unique so that a sign job delivered twice can only ever add one revision.
CREATE TABLE document_revisions (
    document_id  uuid NOT NULL REFERENCES documents (id),
    revision     integer NOT NULL,
    sha256       bytea NOT NULL,
    size_bytes   bigint NOT NULL,
    storage_key  text NOT NULL,
    job_id       uuid UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (document_id, revision)
);

-- The source of truth for every job; Redis only carries job ids to workers.
CREATE TABLE jobs (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id),
    kind             text NOT NULL,
    document_id      uuid REFERENCES documents (id),
    payload          jsonb NOT NULL,
    status           text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    error            text,
    result           jsonb,
    idempotency_key  text,
    request_sha256   bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Last time the job was pushed to Redis or seen there by the reconciler.
    enqueued_at      timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX jobs_unfinished ON jobs (enqueued_at) WHERE status IN ('queued', 'running');
