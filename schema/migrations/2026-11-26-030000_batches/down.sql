DROP INDEX jobs_batch;
ALTER TABLE jobs DROP COLUMN batch_id;
DROP TABLE batches;
