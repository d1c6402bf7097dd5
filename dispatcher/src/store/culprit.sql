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
