DROP TABLE scheduled_tasks;
DROP TABLE log_anchors;
DROP TABLE operator_actions;
DROP INDEX deletion_log_unsealed;
DROP INDEX deletion_log_seq;
ALTER TABLE deletion_log DROP CONSTRAINT deletion_log_sealed,
    DROP COLUMN seq, DROP COLUMN prev_hash, DROP COLUMN entry_hash;
DROP INDEX events_unsealed;
DROP INDEX events_seq;
ALTER TABLE events DROP CONSTRAINT events_sealed,
    DROP COLUMN seq, DROP COLUMN prev_hash, DROP COLUMN entry_hash;
