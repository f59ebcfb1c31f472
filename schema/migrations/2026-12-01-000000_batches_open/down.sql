DROP INDEX batches_open;
