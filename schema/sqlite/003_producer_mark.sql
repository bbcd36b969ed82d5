-- mqstore schema v3 for SQLite: producer marks. Per producer (a client's
-- mq-producer id) the highest sequence (mq-seq) of a message that a broker
-- acked, so a client's replay of it after a failover is recognized even
-- though the message row is gone. updated_ms lets old marks be pruned.
CREATE TABLE mqs_producer_mark (
    producer   TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX mqs_producer_mark_updated ON mqs_producer_mark (updated_ms);
