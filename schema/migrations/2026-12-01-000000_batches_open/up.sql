-- A batch is completed once its last job has finished, by a step after that job's commit
-- (jobs/src/batches.rs); the reconciler looks for batches a stopped worker left open, among
-- the open ones only.
CREATE INDEX batches_open ON batches (id) WHERE completed_at IS NULL;
