-- Projects scope every resource; API keys belong to a project; the audit log
-- records who changed what. What existed before belongs to 'default'.
CREATE TABLE projects (
    id         TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    created_at BIGINT NOT NULL
);
INSERT INTO projects (id, created_at) VALUES ('default', 0);

CREATE TABLE api_keys (
    id           TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    project_id   TEXT COLLATE "C" NOT NULL REFERENCES projects (id),
    name         TEXT NOT NULL,
    owner        TEXT NOT NULL,
    role         TEXT NOT NULL,          -- 'admin' | 'member'
    secret_hash  TEXT NOT NULL UNIQUE,   -- hex SHA-256 of the secret; the secret is never stored
    redacted     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX api_keys_by_project ON api_keys (project_id, id);

CREATE TABLE audit_events (
    seq        BIGSERIAL PRIMARY KEY,
    at         BIGINT NOT NULL,
    key_id     TEXT NOT NULL,
    project_id TEXT NOT NULL,
    method     TEXT NOT NULL,
    outcome    TEXT NOT NULL
);

ALTER TABLE datasets ADD COLUMN project_id TEXT COLLATE "C" NOT NULL DEFAULT 'default';
CREATE INDEX datasets_by_project ON datasets (project_id, created_at DESC, id DESC);
ALTER TABLE jobs ADD COLUMN project_id TEXT COLLATE "C" NOT NULL DEFAULT 'default';
CREATE INDEX jobs_by_project ON jobs (project_id, created_at DESC, id DESC);
-- NULL for base models, which every project shares.
ALTER TABLE models ADD COLUMN project_id TEXT COLLATE "C";
UPDATE models SET project_id = 'default' WHERE kind <> 'base';
ALTER TABLE evals ADD COLUMN project_id TEXT COLLATE "C" NOT NULL DEFAULT 'default';
ALTER TABLE eval_runs ADD COLUMN project_id TEXT COLLATE "C" NOT NULL DEFAULT 'default';

-- Grader names are unique within a project.
ALTER TABLE graders ADD COLUMN project_id TEXT COLLATE "C" NOT NULL DEFAULT 'default';
ALTER TABLE graders DROP CONSTRAINT graders_pkey;
ALTER TABLE graders ADD PRIMARY KEY (project_id, name);
