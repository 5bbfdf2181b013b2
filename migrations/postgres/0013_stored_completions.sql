-- Chat completions made with `store: true` (OpenAI's stored completions):
-- what was asked and answered, listed by model and metadata, made into
-- datasets.
CREATE TABLE stored_completions (
    id                TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    project_id        TEXT COLLATE "C" NOT NULL,
    model             TEXT NOT NULL,
    created_at        BIGINT NOT NULL, -- unix milliseconds
    metadata          TEXT NOT NULL,    -- JSON object of strings (also in stored_completion_tags)
    request           TEXT NOT NULL,    -- JSON: messages, tools and sampling as asked
    choices           TEXT NOT NULL,    -- JSON: OpenAI's choices
    prompt_tokens     BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL
);
CREATE INDEX stored_completions_by_project ON stored_completions (project_id, created_at, id);
CREATE INDEX stored_completions_by_model ON stored_completions (project_id, model, created_at, id);

-- A stored completion's metadata, one row per pair, so a listing filtered
-- by metadata is an index lookup rather than a scan of every completion.
CREATE TABLE stored_completion_tags (
    completion_id TEXT COLLATE "C" NOT NULL REFERENCES stored_completions (id),
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (completion_id, key)
);
CREATE INDEX stored_completion_tags_by_pair ON stored_completion_tags (key, value, completion_id);
