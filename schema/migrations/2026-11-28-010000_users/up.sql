-- People who log in (R-ACC-4): tenant administrators and staff, with a password (Argon2id, 8+
-- characters of 2+ kinds), a second factor (TOTP, or a code e-mailed per login) and lock-out.
-- Name and address are sealed with the tenant's records key, like every personal field.
CREATE TABLE users (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    name          bytea NOT NULL,
    email         bytea NOT NULL,
    email_index   bytea NOT NULL,
    role          text NOT NULL
                  CHECK (role IN ('owner', 'admin', 'document_manager', 'sender', 'member', 'viewer', 'auditor')),
    password_hash text NOT NULL,
    -- The TOTP secret, sealed; enabled once a code from it was confirmed.
    totp_secret   bytea,
    totp_enabled  boolean NOT NULL DEFAULT false,
    failed_logins integer NOT NULL DEFAULT 0,
    locked_until  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, email_index)
);

-- A login between a good password and a good second factor.
CREATE TABLE login_challenges (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id),
    code_sha256     bytea,
    code_expires_at timestamptz,
    codes_sent      integer NOT NULL DEFAULT 0,
    failures        integer NOT NULL DEFAULT 0,
    expires_at      timestamptz NOT NULL,
    completed_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- A logged-in session: its bearer token is stored as SHA-256 only.
CREATE TABLE sessions (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id),
    token_sha256 bytea NOT NULL UNIQUE,
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
