DROP INDEX jobs_dead_letters;
DROP INDEX jobs_running_started;
