-- The sweeper looks for runs that started long ago and never finished; the dead-letter list
-- pages through a tenant's failed jobs by id.
CREATE INDEX jobs_running_started ON jobs (started_at) WHERE status = 'running';
CREATE INDEX jobs_dead_letters ON jobs (tenant_id, id) WHERE status = 'failed';
