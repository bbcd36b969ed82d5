-- mqstore schema v1 for SQLite.
-- A queue message is one row of mqs_msg (its pending entry is the row itself).
-- A topic message is one row of mqs_msg plus one mqs_pending row per durable
-- subscription; the message row goes when its last pending row goes.
CREATE TABLE mqs_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE mqs_dest (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    kind INTEGER NOT NULL CHECK (kind IN (0, 1)),   -- 0 queue, 1 topic
    name TEXT NOT NULL,
    UNIQUE (kind, name)
);

CREATE TABLE mqs_sub (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    dest_id    INTEGER NOT NULL REFERENCES mqs_dest (id),
    name       TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    UNIQUE (dest_id, name)
);

-- AUTOINCREMENT: ids are never reused, even after the newest row is acked.
CREATE TABLE mqs_msg (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    dest_id      INTEGER NOT NULL,
    kind         INTEGER NOT NULL,
    priority     INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 9),
    expires_ms   INTEGER NOT NULL DEFAULT 0,
    enqueued_ms  INTEGER NOT NULL,
    redeliveries INTEGER NOT NULL DEFAULT 0,
    headers      BLOB,
    body         BLOB
);
-- Delivery order of a queue: priority high to low, then id.
CREATE INDEX mqs_msg_order ON mqs_msg (dest_id, priority DESC, id);

-- The primary key is the delivery order of a subscription (priority is
-- copied from the message), so recovery pages are range scans of the table
-- itself and each pending row costs two B-trees (table + mqs_pending_msg),
-- not three. Ack/nack find the row by (msg_id, sub_id) through
-- mqs_pending_msg: a message has one row per subscription, a short scan.
CREATE TABLE mqs_pending (
    sub_id       INTEGER NOT NULL,
    msg_id       INTEGER NOT NULL,
    priority     INTEGER NOT NULL,
    redeliveries INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sub_id, priority DESC, msg_id)
) WITHOUT ROWID;
-- "Is any subscription still holding this message?" and ack by id.
CREATE INDEX mqs_pending_msg ON mqs_pending (msg_id);
