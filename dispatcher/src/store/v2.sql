-- Baton dispatcher schema, version 2: release records, deploy tasks and the
-- notification outbox.
ALTER TABLE tasks ADD COLUMN kind TEXT NOT NULL DEFAULT 'test';
-- For a deploy task: the release it deploys.
ALTER TABLE tasks ADD COLUMN release_id INTEGER;

CREATE TABLE releases (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    repo           TEXT    NOT NULL,
    -- r1, r2, ... per repository.
    version        INTEGER NOT NULL,
    tag            TEXT,
    branch         TEXT    NOT NULL,
    commit_id      TEXT    NOT NULL,
    task_id        INTEGER,
    deploy_task_id INTEGER,
    created_at     INTEGER NOT NULL,
    previous       INTEGER,
    -- release or rollback.
    kind           TEXT    NOT NULL,
    rollback_to    INTEGER,
    -- recorded, deploying, deployed, failed or rolled_back.
    state          TEXT    NOT NULL,
    trigger        TEXT    NOT NULL,
    UNIQUE (repo, version)
);

-- Notifications not yet delivered; a row is deleted once its notifier took it.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    -- Index of the notifier in the dispatcher's configuration.
    notifier   INTEGER NOT NULL,
    event      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    INTEGER NOT NULL,
    last_error TEXT
);
CREATE INDEX outbox_notifier ON outbox (notifier, id);
CREATE INDEX tasks_repo_branch ON tasks (repo, branch, id);
CREATE INDEX tasks_finished ON tasks (finished_at);
