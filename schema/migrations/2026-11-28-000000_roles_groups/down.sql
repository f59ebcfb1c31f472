ALTER TABLE tenants DROP COLUMN ip_allowlist;
ALTER TABLE exports DROP COLUMN principal_id;
DROP FUNCTION folder_visible(uuid, text);
DROP TABLE group_members;
DROP TABLE group_folders;
DROP TABLE groups;
ALTER TABLE api_keys DROP CONSTRAINT api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check
    CHECK (role IN ('owner', 'admin', 'member', 'viewer'));
