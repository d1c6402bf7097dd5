-- Baton dispatcher schema (issue 16, retention): when `--keep-logs` removed a
-- task's log, so `baton log` can say it was pruned rather than empty; and an
-- index to find old logs by end time among tasks whose log is still there.
ALTER TABLE tasks ADD COLUMN log_pruned_at INTEGER;
CREATE INDEX tasks_log_kept ON tasks (finished_at) WHERE log_pruned_at IS NULL;
