-- Documents live in folders: a path such as /sales/2026 ("/" is the tenant's root). Exports and
-- reports select a folder with its subfolders; access by folder builds on it.
ALTER TABLE documents ADD COLUMN folder text NOT NULL DEFAULT '/';
CREATE INDEX documents_folder ON documents (tenant_id, folder);
