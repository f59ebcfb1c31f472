-- Roles of API keys (R-ACC-2; issue "access control" refines them) and bulk exports (R-DATA-5).

-- owner and admin may do everything, exports included; member works with documents;
-- viewer only reads. Keys made before roles existed were the tenant's own: owner.
ALTER TABLE api_keys ADD COLUMN role text NOT NULL DEFAULT 'owner'
    CHECK (role IN ('owner', 'admin', 'member', 'viewer'));
ALTER TABLE api_keys ADD COLUMN name text;

-- A bulk download: the filter it was asked with, its progress, and the archive parts it wrote.
CREATE TABLE exports (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    job_id        uuid NOT NULL UNIQUE REFERENCES jobs (id),
    filter        jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'queued'
                  CHECK (status IN ('queued', 'running', 'ready', 'failed')),
    total         integer NOT NULL DEFAULT 0,
    done          integer NOT NULL DEFAULT 0,
    -- [{"part": 1, "key": "...", "documents": n, "size_bytes": n}]
    parts         jsonb NOT NULL DEFAULT '[]',
    expires_at    timestamptz,
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX exports_tenant ON exports (tenant_id, created_at);

-- Reports look documents' jobs and requests up by document (parties, status).
CREATE INDEX jobs_document ON jobs (document_id, kind) WHERE document_id IS NOT NULL;
CREATE INDEX signature_requests_document ON signature_requests (document_id, created_at);
