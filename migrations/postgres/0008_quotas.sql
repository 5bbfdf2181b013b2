-- Per-project quotas, set by admins; NULL is no limit.
ALTER TABLE projects ADD COLUMN max_running_jobs BIGINT;
ALTER TABLE projects ADD COLUMN max_queued_jobs BIGINT;
ALTER TABLE projects ADD COLUMN max_dataset_bytes BIGINT;
ALTER TABLE projects ADD COLUMN requests_per_second DOUBLE PRECISION;
-- Claims count a project's running work; quotas count its queued jobs.
CREATE INDEX jobs_by_project_state ON jobs (project_id, state);
CREATE INDEX eval_runs_by_project_state ON eval_runs (project_id, state);
