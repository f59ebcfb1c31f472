DROP TABLE jobs;
DROP TABLE document_revisions;
DROP TABLE documents;
DROP TABLE api_keys;
DROP TABLE tenants;
