-- Signature requests (R-SIGN-3, R-SIGN-6), events and their delivery (e-mail, webhooks).

-- "The tenant asks for it": every signer of this tenant's requests also needs an access code
-- that the sender shares by other means (phone, letter).
ALTER TABLE tenants ADD COLUMN access_codes boolean NOT NULL DEFAULT false;

-- A retry that waits for its time (webhook and e-mail back-off). The reconciler pushes a job
-- only once it is due, so a delay survives Redis losing everything.
ALTER TABLE jobs ADD COLUMN run_after timestamptz;

-- A person with an own key and certificate in the HSM (certified signatures). The PIN is an
-- Argon2id PHC string; repeated failures lock the identity until an operator unlocks it.
CREATE TABLE signer_identities (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    name          text NOT NULL,
    email         text NOT NULL,
    key_label     text NOT NULL,
    pin_hash      text NOT NULL,
    pin_failures  integer NOT NULL DEFAULT 0,
    locked_at     timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, email)
);

CREATE TABLE signature_requests (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    document_id  uuid NOT NULL REFERENCES documents (id),
    status       text NOT NULL DEFAULT 'in_progress'
                 CHECK (status IN ('in_progress', 'completed', 'declined', 'cancelled')),
    owner_name   text NOT NULL,
    owner_email  text NOT NULL,
    locale       text NOT NULL,
    message      text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
-- A document is in at most one open request at a time.
CREATE UNIQUE INDEX signature_requests_open ON signature_requests (document_id)
    WHERE status = 'in_progress';

-- The signers of a request, in order. Only hashes of the link token, the one-time code and
-- the access code are stored; the token and code exist in clear only in the e-mail.
CREATE TABLE request_signers (
    id                  uuid PRIMARY KEY,
    request_id          uuid NOT NULL REFERENCES signature_requests (id),
    position            integer NOT NULL,
    name                text NOT NULL,
    email               text NOT NULL,
    locale              text NOT NULL,
    method              text NOT NULL CHECK (method IN ('witness', 'certified')),
    identity_id         uuid REFERENCES signer_identities (id),
    access_code_hash    text,
    status              text NOT NULL DEFAULT 'waiting'
                        CHECK (status IN ('waiting', 'invited', 'signing', 'signed', 'declined', 'cancelled')),
    link_sha256         bytea UNIQUE,
    link_expires_at     timestamptz,
    otp_sha256          bytea,
    otp_expires_at      timestamptz,
    otp_failures        integer NOT NULL DEFAULT 0,
    codes_sent          integer NOT NULL DEFAULT 0,
    sign_job_id         uuid REFERENCES jobs (id),
    signed_ip           text,
    signed_at           timestamptz,
    decline_reason      text,
    UNIQUE (request_id, position),
    CHECK ((method = 'certified') = (identity_id IS NOT NULL))
);

-- Every state change, written in the transaction that makes it: the audit trail and the
-- source of notifications. Never updated.
CREATE TABLE events (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    kind         text NOT NULL,
    document_id  uuid REFERENCES documents (id),
    request_id   uuid REFERENCES signature_requests (id),
    actor        text NOT NULL,
    ip           text,
    data         jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_tenant ON events (tenant_id, created_at);

-- Webhook endpoints, per tenant. The secret signs deliveries, so it is kept (not a hash).
CREATE TABLE webhook_endpoints (
    id              uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id),
    url             text NOT NULL,
    description     text,
    secret          text NOT NULL,
    -- NULL: every event kind.
    event_kinds     text[],
    enabled         boolean NOT NULL DEFAULT true,
    disabled_reason text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id) WHERE deleted_at IS NULL;

-- The delivery log: one row per HTTP attempt.
CREATE TABLE webhook_attempts (
    id                uuid PRIMARY KEY,
    endpoint_id       uuid NOT NULL REFERENCES webhook_endpoints (id),
    event_id          uuid NOT NULL REFERENCES events (id),
    job_id            uuid NOT NULL REFERENCES jobs (id),
    attempt           integer NOT NULL,
    outcome           text NOT NULL,
    status_code       integer,
    error             text,
    response_excerpt  text,
    duration_ms       integer NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, created_at);
