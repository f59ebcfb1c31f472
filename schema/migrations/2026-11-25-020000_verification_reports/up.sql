-- What a bulk verify job found for each document (R-VERIFY-1): the report of the revision it
-- read, or why it could not read one (stored bytes no longer match their recorded SHA-256).
CREATE TABLE verification_reports (
    job_id       uuid NOT NULL REFERENCES jobs (id),
    document_id  uuid NOT NULL REFERENCES documents (id),
    revision     integer NOT NULL,
    valid        boolean NOT NULL,
    level        text,
    report       jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, document_id)
);
