-- Prompt optimisation runs: a search for better instructions and few-shot
-- demonstrations against an eval's graders, leased like eval runs; the
-- search's state is saved after each evaluation, so a resumed run goes on
-- from the last one.
CREATE TABLE prompt_optimizations (
    id               TEXT PRIMARY KEY NOT NULL,
    project_id       TEXT NOT NULL,
    eval_id          TEXT NOT NULL,
    spec             TEXT NOT NULL,    -- JSON OptimizationSpec
    state            TEXT NOT NULL,    -- queued | in_progress | completed | failed | canceled
    progress         TEXT NOT NULL,    -- JSON Search: candidates, scores, calls spent
    error            TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    next_seq         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX prompt_optimizations_queue ON prompt_optimizations (state, created_at, id);
CREATE INDEX prompt_optimizations_by_project ON prompt_optimizations (project_id, created_at, id);
