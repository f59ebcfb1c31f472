DROP TABLE webhook_attempts;
DROP TABLE webhook_endpoints;
DROP TABLE events;
DROP TABLE request_signers;
DROP TABLE signature_requests;
DROP TABLE signer_identities;
ALTER TABLE jobs DROP COLUMN run_after;
ALTER TABLE tenants DROP COLUMN access_codes;
