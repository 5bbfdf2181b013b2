CREATE TABLE datasets (
    id           TEXT PRIMARY KEY,
    filename     TEXT NOT NULL,
    display_name TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    state        TEXT NOT NULL,
    bytes        BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    created_at   BIGINT NOT NULL, -- unix milliseconds
    metadata     TEXT NOT NULL,   -- JSON object of strings
    report       TEXT NOT NULL,   -- JSON ValidationReport
    stats        TEXT NOT NULL,   -- JSON DatasetStats
    lineage      TEXT             -- JSON DatasetLineage, for split outputs
);

CREATE INDEX datasets_by_created ON datasets (created_at DESC, id DESC);
CREATE INDEX datasets_by_purpose ON datasets (purpose, created_at DESC, id DESC);
CREATE INDEX datasets_by_sha256 ON datasets (sha256);
