-- API processes keep the API keys they have checked (api/src/key_cache.rs). Whatever changes
-- what such a check found (a key revoked, re-roled or removed, a tenant's IP allow-list) tells
-- them on channel `shomei_auth`, with the tenant's id, from whichever process or psql session
-- made the change; PostgreSQL delivers it when the change commits.
CREATE FUNCTION shomei_api_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('shomei_auth', OLD.tenant_id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_notify_auth
    AFTER UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION shomei_api_key_changed();

CREATE FUNCTION shomei_tenant_access_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('shomei_auth', OLD.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_notify_auth
    AFTER UPDATE OF ip_allowlist OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION shomei_tenant_access_changed();
