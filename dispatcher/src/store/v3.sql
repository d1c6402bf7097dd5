-- Baton dispatcher schema, version 3: an outbox row names its notifier
-- instead of giving its position in the configuration, so reordering the
-- notifiers sends no queued event to the wrong one.
CREATE TABLE outbox_v3 (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The notifier's name in the dispatcher's configuration. Rows queued by
    -- version 2 hold '#' and their position until the dispatcher names them
    -- at start-up (a name never starts with '#').
    notifier   TEXT    NOT NULL,
    event      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    INTEGER NOT NULL,
    last_error TEXT
);
INSERT INTO outbox_v3 (id, notifier, event, created_at, attempts, next_at, last_error)
    SELECT id, '#' || notifier, event, created_at, attempts, next_at, last_error FROM outbox;
DROP TABLE outbox;
ALTER TABLE outbox_v3 RENAME TO outbox;
CREATE INDEX outbox_notifier ON outbox (notifier, id);
