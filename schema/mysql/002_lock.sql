-- mqstore schema v2 for MySQL / MariaDB: the exclusive lock of a cluster (HA).
-- Times are the database server's clock, UNIX ms (the backend computes
-- them in SQL, never on a node). The session columns say which connection
-- holds the cluster's session lock (GET_LOCK): its CONNECTION_ID() and the
-- server instance it lives in (start time in UNIX seconds, from Uptime),
-- since connection ids and GET_LOCK locks only mean something until the
-- server restarts.
-- One statement, IF NOT EXISTS: re-running it after a failure to record
-- the version is harmless (MySQL DDL is not transactional).
CREATE TABLE IF NOT EXISTS mqs_lock (
    cluster        VARBINARY(255) NOT NULL,
    holder         VARBINARY(255) NULL,       -- node id, NULL when free
    token          BIGINT NOT NULL DEFAULT 0, -- +1 on every acquire
    lease_until_ms BIGINT NULL,
    acquired_ms    BIGINT NULL,
    session_id     BIGINT NULL,
    session_epoch  BIGINT NULL,
    PRIMARY KEY (cluster)
) ENGINE = InnoDB ROW_FORMAT = DYNAMIC DEFAULT CHARSET = utf8mb4;
