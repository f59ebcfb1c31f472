DROP INDEX signature_requests_document;
DROP INDEX jobs_document;
DROP TABLE exports;
ALTER TABLE api_keys DROP COLUMN name;
ALTER TABLE api_keys DROP COLUMN role;
