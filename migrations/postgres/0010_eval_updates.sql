-- Evals can be renamed and their metadata replaced; listings sort on when
-- (OpenAI's order_by=updated_at). Until an update it is the creation time.
ALTER TABLE evals ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;
UPDATE evals SET updated_at = created_at;
-- A project's evals by creation or update time, either way.
CREATE INDEX evals_by_project ON evals (project_id, created_at, id);
CREATE INDEX evals_by_project_updated ON evals (project_id, updated_at, id);
-- An eval's runs of one state.
CREATE INDEX eval_runs_by_eval_state ON eval_runs (eval_id, state, created_at, id);
