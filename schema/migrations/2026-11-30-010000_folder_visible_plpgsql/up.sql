-- folder_visible as PL/pgSQL, same rule. As an SQL function with subqueries it could not be
-- inlined, and PostgreSQL parsed and planned its body again on every query that called it: under
-- load that was about 40 % of the database's CPU (every status poll, sign request and upload).
-- PL/pgSQL keeps its plans for the session, and a principal in no group (most API keys) is
-- answered by the first, index-only lookup.
CREATE OR REPLACE FUNCTION folder_visible(uuid, text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM group_members m WHERE m.principal_id = $1) THEN
        RETURN true;
    END IF;
    RETURN EXISTS (
        SELECT 1
          FROM group_members m
          JOIN group_folders f ON f.group_id = m.group_id
         WHERE m.principal_id = $1
           AND (f.folder = '/' OR $2 = f.folder OR starts_with($2, f.folder || '/'))
    );
END
$$;
