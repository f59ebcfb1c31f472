DROP TRIGGER tenants_notify_auth ON tenants;
DROP FUNCTION shomei_tenant_access_changed();
DROP TRIGGER api_keys_notify_auth ON api_keys;
DROP FUNCTION shomei_api_key_changed();
