-- PAdES level a tenant's signatures get unless a request says otherwise (R-SIGN-2).
-- B-T (signature time-stamp from a TSA) by default; B-B only when a tenant opts out.
ALTER TABLE tenants
    ADD COLUMN signature_level text NOT NULL DEFAULT 'B-T'
    CHECK (signature_level IN ('B-B', 'B-T'));
