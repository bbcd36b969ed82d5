-- mqstore schema v3 for PostgreSQL: producer marks. Per producer (a
-- client's mq-producer id) the highest sequence (mq-seq) of a message that
-- a broker acked, so a client's replay of it after a failover is
-- recognized even though the message row is gone. updated_ms (the
-- server's clock, UNIX ms) lets old marks be pruned.
CREATE TABLE mqs_producer_mark (
    producer   text PRIMARY KEY,
    seq        bigint NOT NULL,
    updated_ms bigint NOT NULL
);
CREATE INDEX mqs_producer_mark_updated ON mqs_producer_mark (updated_ms);
