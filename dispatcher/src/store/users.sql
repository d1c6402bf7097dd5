-- Baton dispatcher schema, users (SPEC §12 "People"): who steered. A task
-- created by a client (submit, rerun) names who asked for it, and an abort
-- names who asked for that: the proven user, or without [[user]] tables the
-- client's handshake name. NULL for observer and deploy tasks.
ALTER TABLE tasks ADD COLUMN requested_by TEXT;
ALTER TABLE tasks ADD COLUMN aborted_by TEXT;
