-- Batches (R-OPS-1): many sign jobs accepted in one call and followed as one.
CREATE TABLE batches (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id),
    total         integer NOT NULL,
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz
);

ALTER TABLE jobs ADD COLUMN batch_id uuid REFERENCES batches (id);
CREATE INDEX jobs_batch ON jobs (batch_id, status) WHERE batch_id IS NOT NULL;
