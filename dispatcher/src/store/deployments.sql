-- Baton dispatcher schema: deployments (SPEC §12), a release in one
-- environment of its repository, host by host. Each host's steps are a
-- deploy task pinned to that host's runner (`tasks.host`) and pointing at
-- its deployment. Release records and the deploy tasks of repositories
-- without environments are untouched: their new columns stay NULL.
ALTER TABLE tasks ADD COLUMN host TEXT;
ALTER TABLE tasks ADD COLUMN deployment_id INTEGER;

CREATE TABLE deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repo TEXT NOT NULL,
    -- The release record deployed (for a rollback: the one returned to).
    release_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    commit_id TEXT NOT NULL,
    environment TEXT NOT NULL,
    -- waiting, canary, deploying, deployed, failed, rolled_back or rejected.
    state TEXT NOT NULL,
    -- release or rollback.
    kind TEXT NOT NULL,
    waiting_for TEXT,
    requested_by TEXT NOT NULL,
    approved_by TEXT,
    approved_at INTEGER,
    reason TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    -- Last change, for the file writer's catch-up after a crash.
    updated_at INTEGER NOT NULL
);
CREATE INDEX deployments_env ON deployments (repo, environment, id);
CREATE INDEX deployments_state ON deployments (state);
CREATE INDEX deployments_updated ON deployments (updated_at);

CREATE TABLE deployment_hosts (
    deployment_id INTEGER NOT NULL,
    host TEXT NOT NULL,
    -- Canaries first, then the others, each by name.
    position INTEGER NOT NULL,
    canary INTEGER NOT NULL,
    -- waiting, deploying, deployed, failed or skipped.
    state TEXT NOT NULL,
    task_id INTEGER,
    PRIMARY KEY (deployment_id, host)
);
