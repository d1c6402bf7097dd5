-- Baton dispatcher schema: finding the culprit (SPEC §14, issue 17).
-- Each test's outcome per attempt, for `baton show --tests` and `baton flaky`;
-- repo and commit are copied from the task so that the flaky report reads one table.
CREATE TABLE test_outcomes (
    task_id     INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    repo        TEXT    NOT NULL,
    commit_id   TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    -- passed, failed or skipped.
    outcome     TEXT    NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX test_outcomes_task ON test_outcomes (task_id, attempt);
CREATE INDEX test_outcomes_test ON test_outcomes (repo, name, commit_id);
-- Failed runs retried by --retry-failed (they do not count against --max-attempts).
ALTER TABLE tasks ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
-- A task that passed on a retry: the tests that failed before, one per line ('' when none
-- were named); NULL for a task that is not flaky.
ALTER TABLE tasks ADD COLUMN flaky_tests TEXT;
-- A bisection of a branch's untested commits between a passed and a failed test task.
CREATE TABLE bisections (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    repo        TEXT    NOT NULL,
    branch      TEXT    NOT NULL,
    -- The last passing commit before the range.
    good_commit TEXT    NOT NULL,
    -- The failed test task whose first failing commit is sought.
    bad_task_id INTEGER NOT NULL,
    -- First-parent history after good_commit, oldest first, one id per line; the last is the bad task's.
    commits     TEXT    NOT NULL,
    -- running, found or cancelled.
    state       TEXT    NOT NULL,
    culprit     TEXT,
    -- Bisect tasks that gave an answer (passed, failed or error).
    steps       INTEGER NOT NULL DEFAULT 0,
    -- Bisect tasks run, space-separated.
    tasks       TEXT    NOT NULL DEFAULT '',
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
);
CREATE INDEX bisections_bad_task ON bisections (bad_task_id);
CREATE INDEX bisections_state ON bisections (state);
-- The bisection a task of kind 'bisect' tests a commit for.
ALTER TABLE tasks ADD COLUMN bisection_id INTEGER;
