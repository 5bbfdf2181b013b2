-- Saved graders: an OpenAI grader object under a user-chosen name.
CREATE TABLE graders (
    name       TEXT PRIMARY KEY NOT NULL,
    grader     TEXT NOT NULL,   -- JSON grader object, validated before it is saved
    created_at INTEGER NOT NULL
);
