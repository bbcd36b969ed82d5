-- mqstore schema v3 for MySQL / MariaDB: producer marks. Per producer (a
-- client's mq-producer id) the highest sequence (mq-seq) of a message that
-- a broker acked, so a client's replay of it after a failover is
-- recognized even though the message row is gone. updated_ms (the
-- database server's clock, UNIX ms) lets old marks be pruned.
CREATE TABLE IF NOT EXISTS mqs_producer_mark (
    producer   VARBINARY(128) NOT NULL,
    seq        BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (producer),
    KEY mqs_producer_mark_updated (updated_ms)
) ENGINE = InnoDB ROW_FORMAT = DYNAMIC DEFAULT CHARSET = utf8mb4;
