CREATE TABLE jobs (
    id                         TEXT PRIMARY KEY NOT NULL,
    spec                       TEXT NOT NULL,   -- JSON JobSpec
    state                      TEXT NOT NULL,
    base_model                 TEXT NOT NULL,
    training_dataset_id        TEXT NOT NULL,
    validation_dataset_id      TEXT,
    priority                   INTEGER NOT NULL,
    metadata                   TEXT NOT NULL,   -- JSON object of strings
    idempotency_key            TEXT UNIQUE,
    created_at                 INTEGER NOT NULL,
    started_at                 INTEGER,
    finished_at                INTEGER,
    fine_tuned_model           TEXT,
    fine_tuned_checkpoint_step INTEGER,
    stop_reason                TEXT,
    error                      TEXT,            -- JSON JobError
    trained_tokens             INTEGER NOT NULL DEFAULT 0,
    attempts                   INTEGER NOT NULL DEFAULT 0,
    lease_owner                TEXT,
    lease_expires_at           INTEGER,
    next_seq                   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_created ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_queue ON jobs (state, priority DESC, created_at, id);
CREATE INDEX jobs_by_training ON jobs (training_dataset_id);
CREATE INDEX jobs_by_validation ON jobs (validation_dataset_id);

CREATE TABLE job_events (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    level      TEXT NOT NULL,
    message    TEXT NOT NULL,
    data       TEXT NOT NULL,                   -- JSON EventData
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE checkpoints (
    id         TEXT PRIMARY KEY NOT NULL,
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step       INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    metrics    TEXT NOT NULL,                   -- JSON Metrics
    UNIQUE (job_id, step)
);

CREATE TABLE checkpoint_files (
    checkpoint_id TEXT NOT NULL REFERENCES checkpoints (id) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    sha256        TEXT NOT NULL,
    bytes         INTEGER NOT NULL,
    PRIMARY KEY (checkpoint_id, name)
);
CREATE INDEX checkpoint_files_by_sha256 ON checkpoint_files (sha256);

CREATE TABLE models (
    id              TEXT PRIMARY KEY NOT NULL,
    kind            TEXT NOT NULL,
    base_model      TEXT NOT NULL,
    job_id          TEXT,
    checkpoint_step INTEGER,
    created_at      INTEGER NOT NULL
);
