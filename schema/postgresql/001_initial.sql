-- mqstore schema v1 for PostgreSQL (same data model as schema/sqlite).
-- A queue message is one row of mqs_msg (its pending entry is the row itself).
-- A topic message is one row of mqs_msg plus one mqs_pending row per durable
-- subscription; the message row goes when its last pending row goes.
-- Tables are created in the first schema of the connection's search_path;
-- the database may hold other applications' tables too.
CREATE TABLE mqs_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE mqs_dest (
    id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind SMALLINT NOT NULL CHECK (kind IN (0, 1)),   -- 0 queue, 1 topic
    name TEXT NOT NULL,
    UNIQUE (kind, name)
);

CREATE TABLE mqs_sub (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dest_id    BIGINT NOT NULL REFERENCES mqs_dest (id),
    name       TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    UNIQUE (dest_id, name)
);

-- Identity columns come from a sequence: ids are never reused.
-- Queue tables churn (every row is inserted, then deleted soon after), so
-- autovacuum starts at 2 % dead rows instead of the default 20 %: dead index
-- entries would otherwise slow down the keyset scans of recovery.
-- (PostgreSQL 10 or newer: identity columns.)
CREATE TABLE mqs_msg (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dest_id      BIGINT NOT NULL,
    kind         SMALLINT NOT NULL,
    priority     SMALLINT NOT NULL CHECK (priority BETWEEN 0 AND 9),
    expires_ms   BIGINT NOT NULL DEFAULT 0,
    enqueued_ms  BIGINT NOT NULL,
    redeliveries INTEGER NOT NULL DEFAULT 0,
    headers      BYTEA,
    body         BYTEA
) WITH (autovacuum_vacuum_scale_factor = 0.02);
-- Delivery order of a queue: priority high to low, then id.
CREATE INDEX mqs_msg_order ON mqs_msg (dest_id, priority DESC, id);

CREATE TABLE mqs_pending (
    sub_id       BIGINT NOT NULL,
    msg_id       BIGINT NOT NULL,
    priority     SMALLINT NOT NULL,
    redeliveries INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sub_id, msg_id)
) WITH (autovacuum_vacuum_scale_factor = 0.02);
-- Delivery order of a subscription; priority is copied so no join is needed.
CREATE INDEX mqs_pending_order ON mqs_pending (sub_id, priority DESC, msg_id);
-- "Is any subscription still holding this message?"
CREATE INDEX mqs_pending_msg ON mqs_pending (msg_id);
