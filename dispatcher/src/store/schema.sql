-- Baton dispatcher schema, version 1. Times are milliseconds since the Unix epoch.
CREATE TABLE tasks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    repo        TEXT    NOT NULL,
    branch      TEXT    NOT NULL,
    commit_id   TEXT    NOT NULL,
    -- What created the task: observer, manual or rerun.
    trigger     TEXT    NOT NULL,
    state       TEXT    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    runner      TEXT,
    exit_code   INTEGER,
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    duration_ms INTEGER,
    passed      INTEGER,
    failed      INTEGER,
    skipped     INTEGER,
    reason      TEXT,
    -- Required runner labels, comma-separated (labels cannot contain commas).
    labels      TEXT    NOT NULL DEFAULT ''
);

-- One observer task per (repository, commit): duplicates are acknowledged, not queued.
CREATE UNIQUE INDEX tasks_observed ON tasks (repo, commit_id) WHERE trigger = 'observer';
CREATE INDEX tasks_commit ON tasks (commit_id);
CREATE INDEX tasks_state ON tasks (state, id);
CREATE INDEX tasks_repo ON tasks (repo, id);
