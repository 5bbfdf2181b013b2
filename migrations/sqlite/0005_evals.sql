-- Evals: testing criteria over items; runs sample and grade a dataset.
CREATE TABLE evals (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    spec       TEXT NOT NULL,   -- JSON EvalSpec (criteria with resolved graders, schema, metadata)
    created_at INTEGER NOT NULL
);

CREATE TABLE eval_runs (
    id               TEXT PRIMARY KEY NOT NULL,
    eval_id          TEXT NOT NULL REFERENCES evals (id) ON DELETE CASCADE,
    spec             TEXT NOT NULL,   -- JSON RunSpec
    dataset_id       TEXT NOT NULL,   -- also in spec; a column so dataset deletes can check it
    state            TEXT NOT NULL,
    total            INTEGER NOT NULL,
    progress         TEXT NOT NULL,   -- JSON Progress: the tallies of the items recorded so far
    error            TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    next_seq         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX eval_runs_by_eval ON eval_runs (eval_id, created_at DESC, id DESC);
CREATE INDEX eval_runs_queue ON eval_runs (state, created_at, id);
CREATE INDEX eval_runs_by_dataset ON eval_runs (dataset_id);

-- One row per finished item; seq numbers a run's progress events 1, 2, 3, ...
CREATE TABLE eval_output_items (
    run_id     TEXT NOT NULL REFERENCES eval_runs (id) ON DELETE CASCADE,
    item_index INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    status     TEXT NOT NULL,
    detail     TEXT NOT NULL,   -- JSON ItemDetail
    progress   TEXT NOT NULL,   -- JSON Progress including this item
    created_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, item_index),
    UNIQUE (run_id, seq)
);
CREATE INDEX eval_output_items_by_status ON eval_output_items (run_id, status, item_index);
