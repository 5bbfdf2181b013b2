-- OpenAI's Uploads API: a file sent in parts, each part's bytes a blob,
-- assembled into a dataset when the upload is completed.
CREATE TABLE uploads (
    id         TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    project_id TEXT COLLATE "C" NOT NULL,
    filename   TEXT NOT NULL,
    purpose    TEXT NOT NULL,   -- a dataset purpose, or 'fine-tune' (told by the first row)
    bytes      BIGINT NOT NULL, -- announced; the completed parts add up to it
    mime_type  TEXT NOT NULL,
    state      TEXT NOT NULL,   -- 'pending' | 'completed' | 'cancelled' | 'expired'
    created_at BIGINT NOT NULL, -- unix milliseconds
    expires_at BIGINT NOT NULL, -- unix milliseconds
    dataset_id TEXT COLLATE "C" -- what a completed upload became
);
CREATE INDEX uploads_by_state_expiry ON uploads (state, expires_at);

CREATE TABLE upload_parts (
    id         TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    upload_id  TEXT COLLATE "C" NOT NULL REFERENCES uploads (id),
    bytes      BIGINT NOT NULL,
    sha256     TEXT NOT NULL,   -- the part's blob
    created_at BIGINT NOT NULL
);
CREATE INDEX upload_parts_by_upload ON upload_parts (upload_id, created_at, id);
CREATE INDEX upload_parts_by_sha256 ON upload_parts (sha256);
