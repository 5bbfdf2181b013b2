-- Saved graders: an OpenAI grader object under a user-chosen name.
CREATE TABLE graders (
    name       TEXT COLLATE "C" PRIMARY KEY NOT NULL,  -- byte order, as SQLite sorts
    grader     TEXT NOT NULL,   -- JSON grader object, validated before it is saved
    created_at BIGINT NOT NULL
);
