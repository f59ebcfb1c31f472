DROP INDEX documents_folder;
ALTER TABLE documents DROP COLUMN folder;
