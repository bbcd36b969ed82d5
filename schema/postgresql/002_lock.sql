-- mqstore schema v2 for PostgreSQL: the exclusive lock of a cluster (HA).
-- Times are the server's clock_timestamp(), never a node's clock.
-- The session columns say which session holds the cluster's session lock
-- (a session-level advisory lock, the crash detector): its pg_backend_pid()
-- and the server instance it lives in. A pid and an advisory lock only mean
-- something until the instance restarts, so the instance is recorded too:
-- pg_postmaster_start_time(), and the bgwriter statistics reset time, which
-- also changes on a crash restart (a backend crash makes the postmaster end
-- every session without restarting itself). pg_stat_reset_shared() changes
-- it as well; that only disarms the detector until the next renewal.
-- Every write transaction of the master updates its row (HOT updates: no
-- indexed column changes).
CREATE TABLE mqs_lock (
    cluster       TEXT PRIMARY KEY,
    holder        TEXT,                      -- node id, NULL when free
    token         BIGINT NOT NULL DEFAULT 0, -- +1 on every acquire, never reset
    lease_until   TIMESTAMPTZ,
    acquired      TIMESTAMPTZ,
    session_id    INTEGER,                   -- pg_backend_pid()
    session_epoch TIMESTAMPTZ,               -- pg_postmaster_start_time()
    session_reset TIMESTAMPTZ                -- bgwriter stats_reset
);
