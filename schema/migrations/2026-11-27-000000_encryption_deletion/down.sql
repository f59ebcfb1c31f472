DROP TABLE deletion_log;
DROP TABLE document_holds;
ALTER TABLE documents DROP COLUMN deleted_at, DROP COLUMN deleted_reason;
ALTER TABLE tenants DROP COLUMN cancelled_at, DROP COLUMN deletion_due_at, DROP COLUMN deleted_at;
DROP TABLE data_keys;
