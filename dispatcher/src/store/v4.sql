-- Baton dispatcher schema, version 4: finding whether a commit is already a
-- release (a rerun records no second one) is an index lookup, not a scan of
-- the repository's releases for every passed task.
CREATE INDEX releases_commit ON releases (repo, commit_id);
