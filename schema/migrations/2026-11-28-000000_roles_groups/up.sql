-- Access control (R-ACC-2): seven roles, and user groups that limit which folders a caller sees.

ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('owner', 'admin', 'document_manager', 'sender', 'member', 'viewer', 'auditor'));

-- A group names folders (each with its subfolders); its members are principals: API keys and
-- people who log in. A principal in no group sees every folder of its tenant; one in groups
-- sees only their folders.
CREATE TABLE groups (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name)
);
CREATE TABLE group_folders (
    group_id uuid NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    folder   text NOT NULL,
    PRIMARY KEY (group_id, folder)
);
CREATE TABLE group_members (
    group_id     uuid NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    principal_id uuid NOT NULL,
    PRIMARY KEY (group_id, principal_id)
);
CREATE INDEX group_members_principal ON group_members (principal_id);

-- Whether a principal ($1) may see a document in a folder ($2): the one rule every document
-- query uses. (Positional parameters: in an SQL function a column named `folder` would win
-- over a parameter of that name.)
CREATE FUNCTION folder_visible(uuid, text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT NOT EXISTS (SELECT 1 FROM group_members m WHERE m.principal_id = $1)
        OR EXISTS (
            SELECT 1
              FROM group_members m
              JOIN group_folders f ON f.group_id = m.group_id
             WHERE m.principal_id = $1
               AND (f.folder = '/' OR $2 = f.folder OR starts_with($2, f.folder || '/'))
        )
$$;

-- An export selects what its creator could see when it was asked for.
ALTER TABLE exports ADD COLUMN principal_id uuid;

-- IP allow-list (R-ACC-3): CIDRs (IPv4 and IPv6) API calls of the tenant must come from; NULL
-- allows any address.
ALTER TABLE tenants ADD COLUMN ip_allowlist text[];
