DROP TABLE deletion_log;
DROP TABLE document_holds;
ALTER TABLE documents DROP COLUMN deleted_at, DROP COLUMN deleted_reason;
ALTER TABLE tenants DROP COLUMN cancelled_at, DROP COLUMN deletion_due_at, DROP COLUMN deleted_at;
DROP TABLE data_keys;
DROP INDEX signer_identities_email;
ALTER TABLE signer_identities DROP COLUMN name, DROP COLUMN email, DROP COLUMN email_index,
    ADD COLUMN name text NOT NULL, ADD COLUMN email text NOT NULL;
ALTER TABLE request_signers DROP COLUMN name, DROP COLUMN email,
    ADD COLUMN name text NOT NULL, ADD COLUMN email text NOT NULL;
ALTER TABLE signature_requests DROP COLUMN owner_name, DROP COLUMN owner_email,
    ADD COLUMN owner_name text NOT NULL, ADD COLUMN owner_email text NOT NULL;
