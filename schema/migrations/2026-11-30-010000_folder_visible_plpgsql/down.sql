CREATE OR REPLACE FUNCTION folder_visible(uuid, text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT NOT EXISTS (SELECT 1 FROM group_members m WHERE m.principal_id = $1)
        OR EXISTS (
            SELECT 1
              FROM group_members m
              JOIN group_folders f ON f.group_id = m.group_id
             WHERE m.principal_id = $1
               AND (f.folder = '/' OR $2 = f.folder OR starts_with($2, f.folder || '/'))
        )
$$;
