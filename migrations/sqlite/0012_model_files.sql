-- The files of base models kept in the blob store (uploaded or imported):
-- each row pins its blob, as checkpoint_files and upload_parts do. The
-- model's info keeps the same list as its manifest.
CREATE TABLE model_files (
    model_id TEXT NOT NULL REFERENCES models (id) ON DELETE CASCADE,
    name     TEXT NOT NULL,
    sha256   TEXT NOT NULL,
    bytes    INTEGER NOT NULL,
    PRIMARY KEY (model_id, name)
);
CREATE INDEX model_files_by_sha256 ON model_files (sha256);
