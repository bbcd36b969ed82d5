-- mqstore schema v2 for SQLite: the exclusive lock of a cluster (HA).
-- SQLite runs inside each node's process, so "the database clock" is the
-- host's boot clock (CLOCK_BOOTTIME, ms), which every process on the host
-- shares and no wall-clock change moves. Its values only mean something
-- under the boot they were read in: boot_id is the kernel's boot id, and a
-- lease recorded under another one has ended (the host restarted, so its
-- holder is gone).
CREATE TABLE mqs_lock (
    cluster        TEXT PRIMARY KEY,
    holder         TEXT,                       -- node id, NULL when free
    token          INTEGER NOT NULL DEFAULT 0, -- +1 on every acquire
    lease_until_ms INTEGER,                    -- boot clock, under boot_id
    acquired_ms    INTEGER,                    -- boot clock, under boot_id
    boot_id        TEXT,
    -- The holder's session (crash detector): the pid of the process whose
    -- connection holds the session file lock, the boot it ran in, and its
    -- pid namespace (a pid is only meaningful inside that namespace).
    session_id     INTEGER,
    session_epoch  TEXT,
    session_pidns  INTEGER
) WITHOUT ROWID;
