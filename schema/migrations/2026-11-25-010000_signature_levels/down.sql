ALTER TABLE tenants DROP COLUMN signature_level;
