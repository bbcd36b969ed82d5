/*
 * sqlite.c - the SQLite backend module (mqstore_sqlite.so).
 *
 * SQL only: the core does batching, retries, caching, expiry and threads.
 * Every statement is prepared once per connection (persistent), then
 * bound, stepped, checked and reset on each use.
 *
 * URI forms (the path is percent-decoded; relative paths are relative to
 * the process's working directory):
 *   sqlite:///abs/path.db            absolute path
 *   sqlite://localhost/abs/path.db   absolute path (RFC 8089 style)
 *   sqlite:/abs/path.db              absolute path
 *   sqlite:relative/path.db          relative path
 * sqlite://relative.db is refused: "relative.db" sits where a host goes,
 * and silently reading it as a path would make sqlite://a/b.db mean
 * "a/b.db" to us and something else to every other URI parser.
 * In-memory databases are refused: every connection of a store would see
 * its own, empty database.
 *
 * Backend options: synchronous=full|normal|off, busy_timeout=ms,
 * journal_mode=wal|delete (see sqlite_options below).
 *
 * HA (ABI 2.0 lock, see "Exclusive lock" below) works between processes of
 * one host: the lease clock is the host's boot clock. A master's write
 * transactions are fenced by a read of the lock row under the file's write
 * lock (lock_fence); only lock_renew, in its own transaction, writes it.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include <mqstore/backend.h>

/* Generated from schema/sqlite/ by EmbedSchema.cmake (in the build dir):
 * mqs_schema_sqlite[] and MQS_SCHEMA_SQLITE_COUNT. */
#include "schema_sqlite.h"

#define SQLITE_MODULE_VERSION MQS_VERSION_STRING
/* Room left under SQLITE_LIMIT_LENGTH for the other columns of a message
 * row and the record header (they take well under 100 bytes). */
#define SQLITE_ROW_MARGIN 1024

/* ---------------------------------------------------------------------------
 * Statements, prepared lazily: most need the schema, which does not exist
 * before the first migration.
 * ------------------------------------------------------------------------- */
enum sqlite_stmt_id {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_META_SET,
    ST_DEST_GET,
    ST_DEST_ADD,
    ST_SUB_ANY,
    ST_MSG_INS,
    ST_PEND_INS,
    ST_ACK_Q,
    ST_ACK_P,
    ST_ACK_ORPHAN,
    ST_NACK_Q,
    ST_NACK_P,
    ST_SUB_GET,
    ST_SUB_ADD,
    ST_SUB_RM_ORPHANS,
    ST_SUB_RM_PEND,
    ST_SUB_RM,
    ST_PURGE_ALL_Q,
    ST_PURGE_ALL_P,
    ST_PURGE_ALL_M,
    ST_PURGE_Q,
    ST_PURGE_P,
    ST_PURGE_M,
    ST_SUB_LOOKUP,
    ST_PAGE_Q_EQ,
    ST_PAGE_Q_LT,
    ST_PAGE_S_EQ,
    ST_PAGE_S_LT,
    ST_DEST_LIST,
    ST_DEST_NAMES,
    ST_LOCK_INIT,
    ST_LOCK_GET,
    ST_LOCK_TAKE,
    ST_LOCK_RENEW,
    ST_LOCK_RELEASE,
    ST_LOCK_FORCE,
    ST_MARK_PUT,
    ST_MARK_LIST,
    ST_MARK_PRUNE,
    ST_MSG_RECENT,
    ST_COUNT
};

static const struct {
    const char *name; /* for error messages */
    const char *sql;
} sqlite_sql[ST_COUNT] = {
    /* IMMEDIATE takes the write lock up front: a deferred transaction that
     * read first could not upgrade while another writer holds the lock,
     * and would fail with SQLITE_BUSY without waiting. The fence relies on
     * it too: from BEGIN IMMEDIATE to COMMIT/ROLLBACK no other connection
     * can write the database, so the lock row read by lock_fence cannot
     * change before this transaction ends. */
    [ST_BEGIN] = {"BEGIN IMMEDIATE", "BEGIN IMMEDIATE"},
    [ST_COMMIT] = {"COMMIT", "COMMIT"},
    [ST_ROLLBACK] = {"ROLLBACK", "ROLLBACK"},
    [ST_MARK_PUT] = {"producer mark",
                     "INSERT INTO mqs_producer_mark (producer, seq, updated_ms) "
                     "VALUES (?1, ?2, ?3) ON CONFLICT (producer) DO UPDATE SET "
                     "seq = max(seq, excluded.seq), "
                     "updated_ms = excluded.updated_ms"},
    [ST_MARK_LIST] = {"producer mark list",
                      "SELECT producer, seq FROM mqs_producer_mark"},
    [ST_MARK_PRUNE] = {"producer mark prune",
                       "DELETE FROM mqs_producer_mark WHERE updated_ms < ?1"},
    [ST_META_SET] = {"recording the schema version in mqs_meta",
                     "INSERT INTO mqs_meta (key, value) "
                     "VALUES ('schema_version', ?1) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value"},
    [ST_DEST_GET] = {"destination lookup",
                     "SELECT id FROM mqs_dest WHERE kind = ?1 AND name = ?2"},
    [ST_DEST_ADD] = {"destination insert",
                     "INSERT INTO mqs_dest (kind, name) VALUES (?1, ?2)"},
    [ST_SUB_ANY] = {"subscription check",
                    "SELECT 1 FROM mqs_sub WHERE dest_id = ?1 LIMIT 1"},
    [ST_MSG_INS] = {"message insert",
                    "INSERT INTO mqs_msg (dest_id, kind, priority, expires_ms,"
                    " enqueued_ms, headers, body) "
                    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"},
    [ST_PEND_INS] = {"pending-entry insert",
                     "INSERT INTO mqs_pending (sub_id, msg_id, priority) "
                     "SELECT id, ?2, ?3 FROM mqs_sub WHERE dest_id = ?1"},
    [ST_ACK_Q] = {"queue ack",
                  "DELETE FROM mqs_msg WHERE id = ?1 AND kind = 0"},
    [ST_ACK_P] = {"subscription ack",
                  "DELETE FROM mqs_pending WHERE msg_id = ?1 AND sub_id = ?2"},
    [ST_ACK_ORPHAN] = {"acked topic message delete",
                       "DELETE FROM mqs_msg WHERE id = ?1 AND kind = 1 AND "
                       "NOT EXISTS "
                       "(SELECT 1 FROM mqs_pending WHERE msg_id = ?1)"},
    [ST_NACK_Q] = {"queue nack",
                   "UPDATE mqs_msg SET redeliveries = redeliveries + 1 "
                   "WHERE id = ?1 AND kind = 0"},
    [ST_NACK_P] = {"subscription nack",
                   "UPDATE mqs_pending SET redeliveries = redeliveries + 1 "
                   "WHERE msg_id = ?1 AND sub_id = ?2"},
    [ST_SUB_GET] = {"subscription lookup",
                    "SELECT id FROM mqs_sub WHERE dest_id = ?1 AND name = ?2"},
    /* Through mqs_dest so a missing topic (or a queue id) inserts nothing. */
    [ST_SUB_ADD] = {"subscription insert",
                    "INSERT INTO mqs_sub (dest_id, name, created_ms) "
                    "SELECT id, ?2, ?3 FROM mqs_dest "
                    "WHERE id = ?1 AND kind = 1"},
    /* Before the pending rows go: the messages only this subscription
     * still holds. */
    [ST_SUB_RM_ORPHANS] = {"subscription removal (orphaned messages)",
                           "DELETE FROM mqs_msg WHERE kind = 1 AND id IN "
                           "(SELECT msg_id FROM mqs_pending WHERE sub_id = ?1)"
                           " AND NOT EXISTS (SELECT 1 FROM mqs_pending p "
                           "WHERE p.msg_id = mqs_msg.id AND p.sub_id <> ?1)"},
    [ST_SUB_RM_PEND] = {"subscription removal (pending entries)",
                        "DELETE FROM mqs_pending WHERE sub_id = ?1"},
    [ST_SUB_RM] = {"subscription removal",
                   "DELETE FROM mqs_sub WHERE id = ?1"},
    [ST_PURGE_ALL_Q] = {"purge (queue messages)",
                        "DELETE FROM mqs_msg WHERE kind = 0"},
    [ST_PURGE_ALL_P] = {"purge (pending entries)", "DELETE FROM mqs_pending"},
    [ST_PURGE_ALL_M] = {"purge (topic messages)", "DELETE FROM mqs_msg"},
    [ST_PURGE_Q] = {"purge (queue messages)",
                    "DELETE FROM mqs_msg WHERE dest_id = ?1 AND kind = 0"},
    [ST_PURGE_P] = {"purge (pending entries)",
                    "DELETE FROM mqs_pending WHERE sub_id IN "
                    "(SELECT id FROM mqs_sub WHERE dest_id = ?1)"},
    [ST_PURGE_M] = {"purge (topic messages)",
                    "DELETE FROM mqs_msg WHERE dest_id = ?1 AND kind = 1"},
    [ST_SUB_LOOKUP] = {"subscription lookup",
                       "SELECT s.id FROM mqs_dest d "
                       "CROSS JOIN mqs_sub s ON s.dest_id = d.id "
                       "WHERE d.kind = 1 AND d.name = ?1 AND s.name = ?2"},
    /* A page is read in two index range scans (rest of the key's priority,
     * then the lower priorities): one query with
     * "priority < ? OR (priority = ? AND id > ?)" makes SQLite scan the
     * whole priority level from its start on every page, which turns a
     * recovery into O(n^2). */
    [ST_PAGE_Q_EQ] = {"queue page read",
                      "SELECT id, priority, expires_ms, enqueued_ms, "
                      "redeliveries, headers, body FROM mqs_msg "
                      "WHERE dest_id = ?1 AND priority = ?2 AND id > ?3 "
                      "AND kind = 0 ORDER BY id LIMIT ?4"},
    [ST_PAGE_Q_LT] = {"queue page read",
                      "SELECT id, priority, expires_ms, enqueued_ms, "
                      "redeliveries, headers, body FROM mqs_msg "
                      "WHERE dest_id = ?1 AND priority < ?2 AND kind = 0 "
                      "ORDER BY priority DESC, id LIMIT ?3"},
    /* CROSS JOIN pins the loop order (here and in ST_SUB_LOOKUP): pending
     * rows drive, messages are fetched by rowid. */
    [ST_PAGE_S_EQ] = {"subscription page read",
                      "SELECT p.msg_id, p.priority, m.expires_ms, "
                      "m.enqueued_ms, p.redeliveries, m.headers, m.body "
                      "FROM mqs_pending p CROSS JOIN mqs_msg m "
                      "ON m.id = p.msg_id "
                      "WHERE p.sub_id = ?1 AND p.priority = ?2 "
                      "AND p.msg_id > ?3 ORDER BY p.msg_id LIMIT ?4"},
    [ST_PAGE_S_LT] = {"subscription page read",
                      "SELECT p.msg_id, p.priority, m.expires_ms, "
                      "m.enqueued_ms, p.redeliveries, m.headers, m.body "
                      "FROM mqs_pending p CROSS JOIN mqs_msg m "
                      "ON m.id = p.msg_id "
                      "WHERE p.sub_id = ?1 AND p.priority < ?2 "
                      "ORDER BY p.priority DESC, p.msg_id LIMIT ?3"},
    /* Counts come from index-only scans; "oldest" is the enqueue time of
     * the lowest id (the first committed), one row lookup instead of
     * reading every row for min(enqueued_ms). A queue's messages all have
     * kind 0 (ids are unique across kinds), so no kind filter is needed.
     * min(+x), not min(x): the unary + turns off the min/max shortcut that
     * would walk the whole table (or msg_id index) in id order until it met
     * the destination's first row; this way it scans only that range. */
    [ST_DEST_LIST] =
        {"destination list",
         "SELECT d.id, 0, d.name, 0, NULL,"
         " (SELECT count(*) FROM mqs_msg m WHERE m.dest_id = d.id),"
         " (SELECT enqueued_ms FROM mqs_msg WHERE id ="
         "   (SELECT min(+m.id) FROM mqs_msg m WHERE m.dest_id = d.id))"
         " FROM mqs_dest d WHERE d.kind = 0 "
         "UNION ALL "
         "SELECT d.id, 1, d.name, s.id, s.name,"
         " (SELECT count(*) FROM mqs_pending p WHERE p.sub_id = s.id),"
         " (SELECT enqueued_ms FROM mqs_msg WHERE id ="
         "   (SELECT min(+p.msg_id) FROM mqs_pending p WHERE p.sub_id = s.id))"
         " FROM mqs_sub s CROSS JOIN mqs_dest d ON d.id = s.dest_id"
         " WHERE +d.kind = 1 " /* + : fetch d by rowid, not scan by kind */
         "UNION ALL "
         "SELECT d.id, 1, d.name, 0, NULL, 0, NULL FROM mqs_dest d"
         " WHERE d.kind = 1 AND NOT EXISTS"
         " (SELECT 1 FROM mqs_sub s WHERE s.dest_id = d.id) "
         "ORDER BY 1, 4"},
    /* The same rows without counting: two small tables only. */
    [ST_DEST_NAMES] =
        {"destination names",
         "SELECT d.id, d.kind, d.name, coalesce(s.id, 0), s.name, 0, 0"
         " FROM mqs_dest d LEFT JOIN mqs_sub s"
         " ON s.dest_id = d.id AND d.kind = 1 ORDER BY 1, 4"},
    /* The rowid B-tree read backwards: LIMIT rows, whatever the backlog. */
    [ST_MSG_RECENT] = {"newest messages",
                       "SELECT id, headers FROM mqs_msg "
                       "ORDER BY id DESC LIMIT ?1"},
    [ST_LOCK_INIT] = {"lock row insert",
                      "INSERT INTO mqs_lock (cluster) VALUES (?1) "
                      "ON CONFLICT (cluster) DO NOTHING"},
    [ST_LOCK_GET] = {"lock row read",
                     "SELECT holder, token, lease_until_ms, acquired_ms, "
                     "boot_id, session_id, session_epoch, session_pidns "
                     "FROM mqs_lock WHERE cluster = ?1"},
    [ST_LOCK_TAKE] = {"lock acquire",
                      "UPDATE mqs_lock SET holder = ?2, token = token + 1, "
                      "lease_until_ms = ?3, acquired_ms = ?4, boot_id = ?5, "
                      "session_id = ?6, session_epoch = ?7, "
                      "session_pidns = ?8 WHERE cluster = ?1"},
    /* The only write to the row while a master holds it: every renew_ms,
     * in its own transaction on the lease connection (never inside a write
     * transaction). RETURNING saves a second statement for held_ms. */
    [ST_LOCK_RENEW] = {"lock renewal",
                       "UPDATE mqs_lock SET lease_until_ms = ?4, "
                       "boot_id = ?5, session_id = ?6, session_epoch = ?7, "
                       "session_pidns = ?8 "
                       "WHERE cluster = ?1 AND holder = ?2 AND token = ?3 "
                       "RETURNING acquired_ms"},
    /* The token stays: the next holder's must be larger. */
    [ST_LOCK_RELEASE] = {"lock release",
                         "UPDATE mqs_lock SET holder = NULL, "
                         "lease_until_ms = NULL, acquired_ms = NULL, "
                         "session_id = NULL, session_epoch = NULL, "
                         "session_pidns = NULL "
                         "WHERE cluster = ?1 AND holder = ?2 AND token = ?3"},
    [ST_LOCK_FORCE] = {"forced lock release",
                       "UPDATE mqs_lock SET holder = NULL, "
                       "lease_until_ms = NULL, acquired_ms = NULL, "
                       "session_id = NULL, session_epoch = NULL, "
                       "session_pidns = NULL WHERE cluster = ?1"},
};

struct mqs_be_conn {
    sqlite3 *db;
    char *path; /* decoded file path, for messages */
    char role[16];
    int busy_ms;
    int64_t busy_start; /* monotonic ms of the first retry of a wait */
    /* A lock call's bound on its waits (sqlite_bound): while busy_until is
     * not 0 every wait ends at that monotonic ms instead of busy_ms after
     * its start. bound_ms is the bound, for messages. */
    int64_t busy_until;
    int64_t bound_ms;
    /* The fence of the write transaction in progress (lock_fence), checked
     * again by txn_commit; fence_on is cleared when the transaction ends. */
    int fence_on;
    char *fence_cluster;
    char *fence_node;
    int64_t fence_token;
    int64_t fence_margin;
    sqlite3_stmt *st[ST_COUNT];
    /* Session lock (crash detector): the side file, and the cluster whose
     * byte this connection holds (NULL: none). */
    int lock_fd; /* -1 until first used */
    char *lock_path;
    char *sess_cluster;
    off_t sess_off;
    char err[1024];
};

/* ---------------------------------------------------------------------------
 * Options
 * ------------------------------------------------------------------------- */
static const mqs_be_option sqlite_options[] = {
    {"synchronous", "full",
     "full|normal|off: full syncs the WAL on every commit (an acknowledged "
     "write survives power loss); normal may lose the last commits on power "
     "loss (never corrupts); off leaves syncing to the OS"},
    {"busy_timeout", "5000",
     "milliseconds to wait for a lock held by another connection or process "
     "before failing with MQS_EBUSY (0..2147483647)"},
    {"journal_mode", "wal",
     "wal|delete: wal lets readers (recovery cursors) run beside the writer; "
     "delete uses a rollback journal (for file systems without shared "
     "memory, e.g. NFS)"},
    {"create", "yes",
     "yes|no: yes creates a missing database file (mode 0600: it holds "
     "messages); no fails with MQS_ENOTFOUND instead (the mqstore CLI's "
     "inspecting commands use it, so a typo never leaves a new file)"},
};

struct sqlite_cfg {
    const char *synchronous; /* pragma value */
    int busy_ms;
    int wal;
    int create;
};

/* ---------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------- */
static const char *sqlite_code_name(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_ERROR: return "SQLITE_ERROR";
    case SQLITE_INTERNAL: return "SQLITE_INTERNAL";
    case SQLITE_PERM: return "SQLITE_PERM";
    case SQLITE_ABORT: return "SQLITE_ABORT";
    case SQLITE_BUSY: return "SQLITE_BUSY";
    case SQLITE_LOCKED: return "SQLITE_LOCKED";
    case SQLITE_NOMEM: return "SQLITE_NOMEM";
    case SQLITE_READONLY: return "SQLITE_READONLY";
    case SQLITE_INTERRUPT: return "SQLITE_INTERRUPT";
    case SQLITE_IOERR: return "SQLITE_IOERR";
    case SQLITE_CORRUPT: return "SQLITE_CORRUPT";
    case SQLITE_NOTFOUND: return "SQLITE_NOTFOUND";
    case SQLITE_FULL: return "SQLITE_FULL";
    case SQLITE_CANTOPEN: return "SQLITE_CANTOPEN";
    case SQLITE_PROTOCOL: return "SQLITE_PROTOCOL";
    case SQLITE_SCHEMA: return "SQLITE_SCHEMA";
    case SQLITE_TOOBIG: return "SQLITE_TOOBIG";
    case SQLITE_CONSTRAINT: return "SQLITE_CONSTRAINT";
    case SQLITE_MISMATCH: return "SQLITE_MISMATCH";
    case SQLITE_MISUSE: return "SQLITE_MISUSE";
    case SQLITE_AUTH: return "SQLITE_AUTH";
    case SQLITE_RANGE: return "SQLITE_RANGE";
    case SQLITE_NOTADB: return "SQLITE_NOTADB";
    default: return "SQLITE_?";
    }
}

static int sqlite_map(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return MQS_EBUSY;
    case SQLITE_NOMEM: return MQS_ENOMEM;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB: return MQS_ECORRUPT;
    case SQLITE_TOOBIG: return MQS_ETOOBIG;
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH: return MQS_EINVAL;
    case SQLITE_PERM:
    case SQLITE_AUTH: return MQS_EAUTH;
    default: return MQS_EIO; /* IOERR, FULL, CANTOPEN, READONLY, ... */
    }
}

/* What to do about it, per code: the part of a message a user acts on. */
static void sqlite_hint(const mqs_be_conn *c, int rc, char *buf, size_t len)
{
    int sys = c->db ? sqlite3_system_errno(c->db) : 0;
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        if (c->busy_until) {
            snprintf(buf, len,
                     "; another connection or process held the database's "
                     "lock longer than the %lld ms this lock operation may "
                     "wait (a write transaction in progress, or one frozen "
                     "inside it); it is retried on the next round",
                     (long long)c->bound_ms);
            break;
        }
        snprintf(buf, len,
                 "; another connection or process held the lock longer than "
                 "busy_timeout=%d ms (raise busy_timeout in the URI, or find "
                 "the other writer)",
                 c->busy_ms);
        break;
    case SQLITE_FULL:
        snprintf(buf, len, "; the disk or quota is full: free space");
        break;
    case SQLITE_IOERR:
    case SQLITE_CANTOPEN:
        snprintf(buf, len, "; OS error: %s", sys ? strerror(sys) : "unknown");
        break;
    case SQLITE_READONLY:
        snprintf(buf, len,
                 "; the file or its directory is read-only: mqstore needs "
                 "write access to both (for the -wal/-shm files)");
        break;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        snprintf(buf, len,
                 "; the database file is damaged: restore it from a backup");
        break;
    case SQLITE_TOOBIG:
        snprintf(buf, len, "; this SQLite stores at most %d bytes per value",
                 c->db ? sqlite3_limit(c->db, SQLITE_LIMIT_LENGTH, -1) : 0);
        break;
    default:
        buf[0] = '\0';
    }
}

/* Record a failure of `what` and return its MQS_E* code. */
static int sqlite_fail(mqs_be_conn *c, int rc, const char *what)
{
    char hint[256];
    sqlite_hint(c, rc, hint, sizeof hint);
    snprintf(c->err, sizeof c->err,
             "sqlite: %s failed on %s: %s (%s, code %d)%s", what, c->path,
             c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc),
             sqlite_code_name(rc), rc, hint);
    return sqlite_map(rc);
}

static int sqlite_failf(mqs_be_conn *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int sqlite_failf(mqs_be_conn *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return code;
}

/* ---------------------------------------------------------------------------
 * Statement helpers
 * ------------------------------------------------------------------------- */
static int sqlite_get(mqs_be_conn *c, enum sqlite_stmt_id id,
                      sqlite3_stmt **out)
{
    *out = NULL;
    if (!c->st[id]) {
        int rc = sqlite3_prepare_v3(c->db, sqlite_sql[id].sql, -1,
                                    SQLITE_PREPARE_PERSISTENT, &c->st[id],
                                    NULL);
        if (rc != SQLITE_OK) {
            char what[160];
            snprintf(what, sizeof what, "preparing the %s statement",
                     sqlite_sql[id].name);
            sqlite3_finalize(c->st[id]);
            c->st[id] = NULL;
            return sqlite_fail(c, rc, what);
        }
    }
    *out = c->st[id];
    return 0;
}

/* A bind failed (SQLITE_TOOBIG for an oversized blob, in practice). */
static int sqlite_bind_fail(mqs_be_conn *c, sqlite3_stmt *st,
                            enum sqlite_stmt_id id, int rc)
{
    char what[160];
    snprintf(what, sizeof what, "binding a value of the %s",
             sqlite_sql[id].name);
    sqlite3_reset(st);
    return sqlite_fail(c, rc, what);
}

/* Step a statement that returns no rows, then reset it. *changes (may be
 * NULL) gets the number of rows it changed. */
static int sqlite_run(mqs_be_conn *c, sqlite3_stmt *st, enum sqlite_stmt_id id,
                      int64_t *changes)
{
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        int ret = sqlite_fail(c, rc, sqlite_sql[id].name);
        sqlite3_reset(st);
        return ret;
    }
    sqlite3_reset(st);
    if (changes)
        *changes = sqlite3_changes64(c->db);
    return 0;
}

/* Step a statement expected to return at most one row with one integer.
 * Returns 1 with *val set, 0 for no row, or a negative code. Resets. */
static int sqlite_one_int(mqs_be_conn *c, sqlite3_stmt *st,
                          enum sqlite_stmt_id id, int64_t *val)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *val = sqlite3_column_int64(st, 0);
        sqlite3_reset(st);
        return 1;
    }
    if (rc == SQLITE_DONE) {
        sqlite3_reset(st);
        return 0;
    }
    int ret = sqlite_fail(c, rc, sqlite_sql[id].name);
    sqlite3_reset(st);
    return ret;
}

static int sqlite_exec_id(mqs_be_conn *c, enum sqlite_stmt_id id)
{
    sqlite3_stmt *st;
    int rc = sqlite_get(c, id, &st);
    return rc ? rc : sqlite_run(c, st, id, NULL);
}

/* Bind an opaque byte string; an empty one is stored as a zero-length blob
 * (SQLite hands it back as NULL, 0, which the core accepts). */
static int sqlite_bind_bytes(sqlite3_stmt *st, int idx, const void *p,
                             size_t len)
{
    return sqlite3_bind_blob64(st, idx, len ? p : "", (sqlite3_uint64)len,
                               SQLITE_STATIC);
}

static int64_t sqlite_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------------------
 * URI
 * ------------------------------------------------------------------------- */
static int sqlite_hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Percent-decode s[0..n) into a new string. Returns NULL and sets *bad to
 * the offending offset for a malformed escape or an encoded NUL (which a
 * file name cannot hold); *bad = -1 means out of memory. */
static char *sqlite_pct_decode(const char *s, size_t n, long *bad)
{
    char *out = malloc(n + 1);
    if (!out) {
        *bad = -1;
        return NULL;
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            out[o++] = s[i];
            continue;
        }
        int hi = i + 2 < n ? sqlite_hexval(s[i + 1]) : -1;
        int lo = i + 2 < n ? sqlite_hexval(s[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(out);
            *bad = (long)i;
            return NULL;
        }
        out[o++] = (char)(hi * 16 + lo);
        i += 2;
    }
    out[o] = '\0';
    return out;
}

static int sqlite_bad_value(char *err, size_t errlen, const char *masked,
                            const char *name, const char *val,
                            const char *allowed)
{
    snprintf(err, errlen,
             "sqlite: option %s=%s in %s is not valid: allowed values are %s",
             name, val, masked, allowed);
    return MQS_EINVAL;
}

/* Apply one decoded option to cfg. */
static int sqlite_set_option(struct sqlite_cfg *cfg, const char *masked,
                             const char *key, const char *val, char *err,
                             size_t errlen)
{
    if (!strcmp(key, "synchronous")) {
        static const char *const vals[] = {"full", "normal", "off"};
        static const char *const pragma[] = {"FULL", "NORMAL", "OFF"};
        for (size_t i = 0; i < 3; i++)
            if (!strcasecmp(val, vals[i])) {
                cfg->synchronous = pragma[i];
                return 0;
            }
        return sqlite_bad_value(err, errlen, masked, key, val,
                                "full, normal, off");
    }
    if (!strcmp(key, "busy_timeout")) {
        char *end;
        errno = 0;
        long v = strtol(val, &end, 10);
        if (!*val || *end || errno || v < 0 || v > INT_MAX || *val == '+' ||
            *val == ' ')
            return sqlite_bad_value(err, errlen, masked, key, val,
                                    "a whole number of milliseconds from 0 "
                                    "to 2147483647");
        cfg->busy_ms = (int)v;
        return 0;
    }
    if (!strcmp(key, "create")) {
        if (!strcasecmp(val, "yes"))
            cfg->create = 1;
        else if (!strcasecmp(val, "no"))
            cfg->create = 0;
        else
            return sqlite_bad_value(err, errlen, masked, key, val, "yes, no");
        return 0;
    }
    if (!strcmp(key, "journal_mode")) {
        if (!strcasecmp(val, "wal"))
            cfg->wal = 1;
        else if (!strcasecmp(val, "delete"))
            cfg->wal = 0;
        else
            return sqlite_bad_value(err, errlen, masked, key, val,
                                    "wal, delete");
        return 0;
    }
    snprintf(err, errlen,
             "sqlite: unknown option '%s' in %s: the sqlite backend's options "
             "are synchronous, busy_timeout, journal_mode, create",
             key, masked);
    return MQS_EINVAL;
}

/* Split uri into a decoded file path and options. On failure the message
 * goes to err and *path is NULL. */
static int sqlite_parse_uri(const char *uri, const char *masked,
                            struct sqlite_cfg *cfg, char **path, char *err,
                            size_t errlen)
{
    *path = NULL;
    cfg->synchronous = "FULL";
    cfg->busy_ms = 5000;
    cfg->wal = 1;
    cfg->create = 1;
    if (strncasecmp(uri, "sqlite:", 7) != 0) {
        snprintf(err, errlen,
                 "sqlite: URI %s does not start with sqlite: (expected "
                 "sqlite:///abs/path.db or sqlite:relative/path.db)",
                 masked);
        return MQS_EINVAL;
    }
    const char *p = uri + 7;
    size_t plen = strcspn(p, "?#");
    if (p[plen] == '#') {
        snprintf(err, errlen,
                 "sqlite: URI %s has a '#' fragment; write a '#' in the path "
                 "as %%23",
                 masked);
        return MQS_EINVAL;
    }
    if (plen >= 2 && p[0] == '/' && p[1] == '/') {
        /* authority: only empty or localhost (the file is local) */
        const char *a = p + 2;
        size_t alen = strcspn(a, "/?");
        if (alen > plen - 2)
            alen = plen - 2;
        if (alen != 0 && !(alen == 9 && !strncasecmp(a, "localhost", 9))) {
            snprintf(err, errlen,
                     "sqlite: URI %s names a host ('%.*s'); an SQLite path "
                     "has none: use sqlite:relative/path.db for a relative "
                     "path or sqlite:///abs/path.db for an absolute one",
                     masked, (int)(alen > 64 ? 64 : alen), a);
            return MQS_EINVAL;
        }
        plen -= 2 + alen;
        p = a + alen;
    }
    if (plen == 0) {
        snprintf(err, errlen,
                 "sqlite: URI %s has no file path: expected "
                 "sqlite:///abs/path.db or sqlite:relative/path.db",
                 masked);
        return MQS_EINVAL;
    }
    long bad = 0;
    char *dec = sqlite_pct_decode(p, plen, &bad);
    if (!dec) {
        if (bad < 0) {
            snprintf(err, errlen, "sqlite: out of memory parsing %s", masked);
            return MQS_ENOMEM;
        }
        snprintf(err, errlen,
                 "sqlite: URI %s: bad percent-escape '%.3s' in the path (use "
                 "%%XX with two hex digits; %%00 is not allowed)",
                 masked, p + bad);
        return MQS_EINVAL;
    }
    if (!strcmp(dec, ":memory:") || dec[strlen(dec) - 1] == '/') {
        snprintf(err, errlen,
                 "sqlite: URI %s: '%s' is not a database file path%s", masked,
                 dec,
                 dec[0] == ':' ? " (in-memory databases are not supported: "
                                 "each connection would see its own; use a "
                                 "file, e.g. under /dev/shm)"
                               : " (it names a directory: add a file name)");
        free(dec);
        return MQS_EINVAL;
    }

    int seen[4] = {0, 0, 0, 0};
    const char *q = p[plen] == '?' ? p + plen + 1 : NULL;
    while (q && *q) {
        size_t len = strcspn(q, "&");
        if (len) {
            const char *eq = memchr(q, '=', len);
            size_t klen = eq ? (size_t)(eq - q) : len;
            long kb = 0, vb = 0;
            char *key = sqlite_pct_decode(q, klen, &kb);
            char *val = eq ? sqlite_pct_decode(eq + 1, len - klen - 1, &vb)
                           : NULL;
            int rc = 0;
            if (!key || (eq && !val)) {
                rc = (kb < 0 || vb < 0) ? MQS_ENOMEM : MQS_EINVAL;
                snprintf(err, errlen,
                         rc == MQS_ENOMEM
                             ? "sqlite: out of memory parsing %s"
                             : "sqlite: URI %s: bad percent-escape in an "
                               "option",
                         masked);
            } else if (!eq || !*val) {
                snprintf(err, errlen, "sqlite: option '%s' in %s has no value",
                         key, masked);
                rc = MQS_EINVAL;
            } else {
                rc = sqlite_set_option(cfg, masked, key, val, err, errlen);
                int k = !strcmp(key, "synchronous")    ? 0
                        : !strcmp(key, "busy_timeout") ? 1
                        : !strcmp(key, "create")       ? 3
                                                       : 2;
                if (rc == 0 && seen[k]++) {
                    snprintf(err, errlen,
                             "sqlite: option '%s' given twice in %s", key,
                             masked);
                    rc = MQS_EINVAL;
                }
            }
            free(key);
            free(val);
            if (rc) {
                free(dec);
                return rc;
            }
        }
        q += len;
        if (*q == '&')
            q++;
    }
    *path = dec;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Connection
 * ------------------------------------------------------------------------- */

/* Look at the path before SQLite opens it. stat() only: opening and
 * closing a descriptor of the database file would drop every POSIX lock
 * this process holds on it (the other connections' shared locks), and
 * another process closing the database would then think itself the last
 * user and delete the WAL under our feet. A missing file is fine (SQLite
 * creates it). */
static int sqlite_check_file(const char *path, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        if (errno == ENOENT)
            return 0; /* new file, or a missing directory SQLite reports */
        snprintf(err, errlen,
                 "sqlite: cannot open database file '%s': %s (check the path "
                 "and its permissions)",
                 path, strerror(errno));
        return MQS_EIO;
    }
    if (S_ISDIR(sb.st_mode)) {
        snprintf(err, errlen,
                 "sqlite: '%s' is a directory: name a database file inside "
                 "it, e.g. sqlite://%s%s/store.db",
                 path, path[0] == '/' ? "" : "/", path);
        return MQS_EIO;
    }
    if (!S_ISREG(sb.st_mode)) {
        snprintf(err, errlen,
                 "sqlite: '%s' is not a regular file: name a database file",
                 path);
        return MQS_EIO;
    }
    return 0;
}

/* A missing database file: with create, make it empty and 0600 (SQLite
 * would make it 0644, and its -wal and -shm files copy the database's
 * mode: they all hold messages). O_EXCL: of two processes starting on a
 * new store at once, one creates it and both open it. Without create, a
 * missing file is an error and nothing is made. */
static int sqlite_create_file(const char *path, int create, char *err,
                              size_t errlen)
{
    struct stat sb;
    if (stat(path, &sb) == 0)
        return 0;
    if (!create) {
        snprintf(err, errlen,
                 "sqlite: no database file '%s' (create=no: nothing was "
                 "created; check the path, or create the store with "
                 "'mqstore init URI')",
                 path);
        return MQS_ENOTFOUND;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                  0600);
    if (fd >= 0) {
        int ok = fchmod(fd, 0600) == 0; /* whatever the umask */
        close(fd);
        (void)ok;
    }
    /* EEXIST: created by a process starting beside us. Anything else
     * (a missing directory, no permission) is reported by SQLite's open
     * with its hints. */
    return 0;
}

/* Refuse a non-empty file without the SQLite header before anything (not
 * even SQLite's view of a file shorter than a page as empty) can write to
 * it. Read through SQLite's own file handle, for the reason given above. */
static int sqlite_check_header(mqs_be_conn *c, char *err, size_t errlen)
{
    sqlite3_file *f = NULL;
    sqlite3_int64 size = 0;
    if (sqlite3_file_control(c->db, "main", SQLITE_FCNTL_FILE_POINTER, &f) !=
            SQLITE_OK ||
        !f || !f->pMethods) {
        snprintf(err, errlen,
                 "sqlite: cannot check the header of '%s': SQLite did not "
                 "open the file",
                 c->path);
        return MQS_EIO;
    }
    int rc = f->pMethods->xFileSize(f, &size);
    if (rc != SQLITE_OK || size == 0) {
        if (rc != SQLITE_OK)
            snprintf(err, errlen, "sqlite: cannot read the size of '%s' (%s)",
                     c->path, sqlite_code_name(rc));
        return rc != SQLITE_OK ? MQS_EIO : 0;
    }
    static const char magic[16] = "SQLite format 3";
    char head[16];
    rc = f->pMethods->xRead(f, head, (int)sizeof head, 0);
    if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) {
        snprintf(err, errlen, "sqlite: cannot read '%s' (%s)", c->path,
                 sqlite_code_name(rc));
        return MQS_EIO;
    }
    if (rc == SQLITE_IOERR_SHORT_READ || memcmp(head, magic, sizeof magic)) {
        snprintf(err, errlen,
                 "sqlite: %s is not an mqstore database: file is not a "
                 "database (no SQLite header); it was left untouched. Point "
                 "the URI at a new file or an mqstore database",
                 c->path);
        return MQS_ECORRUPT;
    }
    return 0;
}

/* Schema version of an mqstore database, 0 for an empty one, MQS_ECORRUPT
 * for anything else. Reads only. */
static int sqlite_probe(mqs_be_conn *c, int *version)
{
    *version = 0;
    sqlite3_stmt *st = NULL;
    /* mqs_meta sorts first, so one row tells "mqstore" from "foreign". */
    int rc = sqlite3_prepare_v2(
        c->db,
        "SELECT type, name FROM sqlite_master "
        "WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
        "ORDER BY (name <> 'mqs_meta' OR type <> 'table'), name LIMIT 1",
        -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) {
            sqlite3_finalize(st);
            return 0; /* empty */
        }
    }
    if (rc != SQLITE_ROW) {
        sqlite3_finalize(st);
        if ((rc & 0xff) == SQLITE_NOTADB)
            return sqlite_failf(c, MQS_ECORRUPT,
                                "sqlite: %s is not an mqstore database: file "
                                "is not a database (%s); it was left "
                                "untouched. Point the URI at a new file or an "
                                "mqstore database",
                                c->path, sqlite3_errmsg(c->db));
        if ((rc & 0xff) == SQLITE_CORRUPT)
            return sqlite_failf(c, MQS_ECORRUPT,
                                "sqlite: %s is corrupt: %s (%s); it was left "
                                "untouched. Restore it from a backup, or "
                                "point the URI at a new file",
                                c->path, sqlite3_errmsg(c->db),
                                sqlite_code_name(rc));
        return sqlite_fail(c, rc, "reading the schema (sqlite_master)");
    }
    if (strcmp((const char *)sqlite3_column_text(st, 1), "mqs_meta") != 0 ||
        strcmp((const char *)sqlite3_column_text(st, 0), "table") != 0) {
        rc = sqlite_failf(c, MQS_ECORRUPT,
                          "sqlite: %s is not an mqstore database (found %s "
                          "'%s' and no mqs_meta table); it was left "
                          "untouched. Point the URI at a new file or an "
                          "mqstore database",
                          c->path, sqlite3_column_text(st, 0),
                          sqlite3_column_text(st, 1));
        sqlite3_finalize(st);
        return rc;
    }
    sqlite3_finalize(st);

    rc = sqlite3_prepare_v2(
        c->db, "SELECT value FROM mqs_meta WHERE key = 'schema_version'", -1,
        &st, NULL);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(st);
        return sqlite_fail(c, rc, "reading mqs_meta.schema_version");
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        char *end = NULL;
        long n = v ? strtol(v, &end, 10) : 0;
        if (!v || !*v || *end || n < 1 || n > INT_MAX) {
            rc = sqlite_failf(c, MQS_ECORRUPT,
                              "sqlite: %s: mqs_meta.schema_version is '%s', "
                              "not a positive version number; the database "
                              "is damaged: restore it from a backup",
                              c->path, v ? v : "NULL");
        } else {
            *version = (int)n;
            rc = 0;
        }
    } else if (rc == SQLITE_DONE) {
        rc = sqlite_failf(c, MQS_ECORRUPT,
                          "sqlite: %s: table mqs_meta has no schema_version "
                          "row; the database is damaged: restore it from a "
                          "backup",
                          c->path);
    } else {
        rc = sqlite_fail(c, rc, "reading mqs_meta.schema_version");
    }
    sqlite3_finalize(st);
    return rc;
}

static int64_t sqlite_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Busy handler: retry every 1..4 ms until busy_timeout. SQLite's own backs
 * off to 100 ms sleeps, so with several writers (commit=each) a waiter
 * keeps missing the short windows between other commits and can starve
 * for seconds; short sleeps keep the wait close to the real queueing. */
static int sqlite_busy(void *ud, int count)
{
    mqs_be_conn *c = ud;
    int64_t now = sqlite_mono_ms();
    if (count == 0)
        c->busy_start = now;
    if (c->busy_until ? now >= c->busy_until
                      : now - c->busy_start >= c->busy_ms)
        return 0;
    struct timespec ts = {0, (count < 8 ? 1 : 4) * 1000000L};
    nanosleep(&ts, NULL);
    return 1;
}

static void sqlite_conn_close(mqs_be_conn *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(c->st[i]);
    /* All statements are finalized, so this cannot be deferred; SQLite
     * checkpoints the WAL and removes it when the last connection closes. */
    sqlite3_close(c->db);
    /* Closing the file description drops its session lock, if any. */
    if (c->lock_fd >= 0)
        close(c->lock_fd);
    free(c->lock_path);
    free(c->sess_cluster);
    free(c->fence_cluster);
    free(c->fence_node);
    free(c->path);
    free(c);
}

static int sqlite_conn_open(const mqs_be_open_args *args, mqs_be_conn **out,
                            char *err, size_t errlen)
{
    *out = NULL;
    if (errlen)
        err[0] = '\0';
    const char *masked = args->uri_masked ? args->uri_masked : "(uri)";
    struct sqlite_cfg cfg;
    char *path = NULL;
    int rc = sqlite_parse_uri(args->uri, masked, &cfg, &path, err, errlen);
    if (rc)
        return rc;
    rc = sqlite_check_file(path, err, errlen);
    if (rc == 0)
        rc = sqlite_create_file(path, cfg.create, err, errlen);
    if (rc) {
        free(path);
        return rc;
    }

    mqs_be_conn *c = calloc(1, sizeof *c);
    if (!c) {
        free(path);
        snprintf(err, errlen, "sqlite: out of memory opening %s", masked);
        return MQS_ENOMEM;
    }
    c->path = path;
    c->lock_fd = -1;
    c->busy_ms = cfg.busy_ms;
    snprintf(c->role, sizeof c->role, "%s", args->role ? args->role : "?");

    /* NOMUTEX: the core uses a connection from one thread at a time. */
    int src = sqlite3_open_v2(path, &c->db,
                              SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                  SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
                              NULL);
    if (src != SQLITE_OK) {
        int sys = c->db ? sqlite3_system_errno(c->db) : 0;
        snprintf(err, errlen,
                 "sqlite: cannot open database file '%s' (%s connection): "
                 "%s (%s)%s%s",
                 path, c->role, c->db ? sqlite3_errmsg(c->db) : "out of memory",
                 sys ? strerror(sys) : sqlite_code_name(src),
                 sys == ENOENT ? "; does its directory exist?" : "",
                 sys == EACCES || sys == EPERM || sys == EROFS
                     ? "; mqstore needs write access to the file and its "
                       "directory"
                     : "");
        rc = (src & 0xff) == SQLITE_NOMEM ? MQS_ENOMEM : MQS_EIO;
        goto fail;
    }
    /* Until we know the file is ours, closing must not checkpoint a WAL
     * into it: a foreign database is left byte for byte as found. */
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
    sqlite3_busy_handler(c->db, sqlite_busy, c);
    if (sqlite3_db_readonly(c->db, "main") == 1) {
        snprintf(err, errlen,
                 "sqlite: database file '%s' could only be opened read-only; "
                 "mqstore needs write access to the file and its directory "
                 "(check permissions and mount options)",
                 path);
        rc = MQS_EIO;
        goto fail;
    }

    /* Every check before any write: journal_mode=WAL rewrites the header. */
    if ((rc = sqlite_check_header(c, err, errlen)))
        goto fail;
    int version;
    rc = sqlite_probe(c, &version);
    if (rc) {
        snprintf(err, errlen, "%s", c->err);
        goto fail;
    }

    sqlite3_stmt *st = NULL;
    const char *mode_sql =
        cfg.wal ? "PRAGMA journal_mode=WAL" : "PRAGMA journal_mode=DELETE";
    src = sqlite3_prepare_v2(c->db, mode_sql, -1, &st, NULL);
    if (src == SQLITE_OK)
        src = sqlite3_step(st);
    /* Two processes opening a new store at once both switch it to WAL:
     * SQLite answers BUSY at once rather than wait (waiting while holding
     * its read lock could deadlock), so retry, with the lock dropped,
     * for up to busy_timeout. */
    int64_t until = sqlite_mono_ms() + cfg.busy_ms;
    while (((src & 0xff) == SQLITE_BUSY || (src & 0xff) == SQLITE_LOCKED) &&
           sqlite_mono_ms() < until) {
        sqlite3_reset(st);
        struct timespec pause = {0, 5 * 1000000L};
        nanosleep(&pause, NULL);
        src = sqlite3_step(st);
    }
    if (src != SQLITE_ROW) {
        rc = sqlite_fail(c, src, cfg.wal ? "setting journal_mode=wal"
                                         : "setting journal_mode=delete");
        sqlite3_finalize(st);
        snprintf(err, errlen, "%s", c->err);
        goto fail;
    }
    const char *got = (const char *)sqlite3_column_text(st, 0);
    const char *want = cfg.wal ? "wal" : "delete";
    if (!got || strcasecmp(got, want) != 0) {
        snprintf(err, errlen,
                 "sqlite: cannot set journal_mode=%s on %s: SQLite kept "
                 "journal_mode=%s%s",
                 want, path, got ? got : "?",
                 cfg.wal ? " (the file system may lack shared-memory "
                           "support; use journal_mode=delete)"
                         : " (leaving WAL needs every other connection to "
                           "the database closed)");
        sqlite3_finalize(st);
        rc = MQS_EIO;
        goto fail;
    }
    sqlite3_finalize(st);

    char sync_sql[40];
    snprintf(sync_sql, sizeof sync_sql, "PRAGMA synchronous=%s",
             cfg.synchronous);
    src = sqlite3_exec(c->db, sync_sql, NULL, NULL, NULL);
    if (src != SQLITE_OK) {
        rc = sqlite_fail(c, src, "setting synchronous");
        snprintf(err, errlen, "%s", c->err);
        goto fail;
    }
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, NULL);
    *out = c;
    return 0;

fail:
    sqlite_conn_close(c);
    return rc;
}

static const char *sqlite_conn_errmsg(mqs_be_conn *c)
{
    return c ? c->err : "";
}

static int sqlite_conn_max_message(mqs_be_conn *c, size_t *max)
{
    int lim = sqlite3_limit(c->db, SQLITE_LIMIT_LENGTH, -1);
    *max = lim > SQLITE_ROW_MARGIN ? (size_t)(lim - SQLITE_ROW_MARGIN) : 0;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Schema
 * ------------------------------------------------------------------------- */
static int sqlite_schema_version(mqs_be_conn *c, int *version)
{
    return sqlite_probe(c, version);
}

static int sqlite_txn_rollback(mqs_be_conn *c);

/* Run every statement of a migration script; on failure name the line. */
static int sqlite_run_script(mqs_be_conn *c, const mqs_be_migration *m)
{
    const char *sql = m->sql;
    while (*sql) {
        sqlite3_stmt *st = NULL;
        const char *tail = NULL;
        int rc = sqlite3_prepare_v2(c->db, sql, -1, &st, &tail);
        if (rc == SQLITE_OK && st) {
            do
                rc = sqlite3_step(st);
            while (rc == SQLITE_ROW);
            if (rc == SQLITE_DONE)
                rc = SQLITE_OK;
        }
        if (rc != SQLITE_OK) {
            /* the statement starts at the first non-blank after sql */
            const char *at = sql + strspn(sql, " \t\r\n");
            int line = 1;
            for (const char *s = m->sql; s < at; s++)
                line += *s == '\n';
            char what[200];
            snprintf(what, sizeof what, "migration %s (statement at line %d)",
                     m->name ? m->name : "?", line);
            rc = sqlite_fail(c, rc, what);
            sqlite3_finalize(st);
            return rc;
        }
        sqlite3_finalize(st);
        if (!tail || tail == sql)
            break;
        sql = tail;
    }
    return 0;
}

static int sqlite_schema_apply(mqs_be_conn *c, const mqs_be_migration *m)
{
    int rc = sqlite_exec_id(c, ST_BEGIN);
    if (rc)
        return rc;
    /* Re-read under the write lock: two processes opening a new file at
     * once both saw version 0; the second finds the work done. */
    int have;
    rc = sqlite_probe(c, &have);
    if (rc)
        goto fail;
    if (have >= m->version) {
        rc = sqlite_exec_id(c, ST_COMMIT);
        if (rc)
            goto fail;
        return 0;
    }
    if (have != m->version - 1) {
        rc = sqlite_failf(c, MQS_ESCHEMA,
                          "sqlite: cannot apply migration %d (%s) to %s: the "
                          "database is at schema version %d, not %d",
                          m->version, m->name ? m->name : "?", c->path, have,
                          m->version - 1);
        goto fail;
    }
    rc = sqlite_run_script(c, m);
    if (rc)
        goto fail;
    sqlite3_stmt *st;
    rc = sqlite_get(c, ST_META_SET, &st);
    if (rc)
        goto fail;
    sqlite3_bind_int(st, 1, m->version); /* stored as TEXT by affinity */
    rc = sqlite_run(c, st, ST_META_SET, NULL);
    if (rc)
        goto fail;
    rc = sqlite_exec_id(c, ST_COMMIT);
    if (rc)
        goto fail;
    return 0;
fail:;
    /* keep the first message: ROLLBACK must not overwrite it */
    char keep[sizeof c->err];
    memcpy(keep, c->err, sizeof keep);
    sqlite_txn_rollback(c);
    memcpy(c->err, keep, sizeof keep);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Write transactions
 * ------------------------------------------------------------------------- */
static int sqlite_fence_check(mqs_be_conn *c);
static int sqlite_lock_abort(mqs_be_conn *c, int rc);

static int sqlite_txn_begin(mqs_be_conn *c)
{
    c->fence_on = 0;
    return sqlite_exec_id(c, ST_BEGIN);
}

static int sqlite_txn_commit(mqs_be_conn *c)
{
    /* A fenced transaction checks the row once more after its last write
     * (lock_fence checked it right after BEGIN): the row cannot have
     * changed since (we hold the write lock), but the lease may have run
     * short while the transaction ran. One primary-key read, no write. */
    if (c->fence_on) {
        c->fence_on = 0;
        int rc = sqlite_fence_check(c);
        if (rc)
            return sqlite_lock_abort(c, rc); /* rolled back */
    }
    return sqlite_exec_id(c, ST_COMMIT);
}

static int sqlite_txn_rollback(mqs_be_conn *c)
{
    c->fence_on = 0;
    /* SQLite rolls back by itself on some errors (SQLITE_FULL, IOERR,
     * NOMEM); a ROLLBACK then would fail with "no transaction is active". */
    if (sqlite3_get_autocommit(c->db))
        return 0;
    return sqlite_exec_id(c, ST_ROLLBACK);
}

/* ---------------------------------------------------------------------------
 * Writes
 * ------------------------------------------------------------------------- */
static int sqlite_dest_resolve(mqs_be_conn *c, mqs_kind kind, const char *name,
                               int create, int64_t *dest_id)
{
    if (kind != MQS_QUEUE && kind != MQS_TOPIC)
        return sqlite_failf(c, MQS_EINVAL,
                            "sqlite: destination kind %d is neither queue (0) "
                            "nor topic (1)",
                            (int)kind);
    sqlite3_stmt *st;
    int rc = sqlite_get(c, ST_DEST_GET, &st);
    if (rc)
        return rc;
    sqlite3_bind_int(st, 1, (int)kind);
    if ((rc = sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC)) != SQLITE_OK)
        return sqlite_bind_fail(c, st, ST_DEST_GET, rc);
    rc = sqlite_one_int(c, st, ST_DEST_GET, dest_id);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    if (!create)
        return sqlite_failf(c, MQS_ENOTFOUND, "sqlite: %s '%s' does not exist",
                            kind == MQS_QUEUE ? "queue" : "topic", name);
    if ((rc = sqlite_get(c, ST_DEST_ADD, &st)))
        return rc;
    sqlite3_bind_int(st, 1, (int)kind);
    if ((rc = sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC)) != SQLITE_OK)
        return sqlite_bind_fail(c, st, ST_DEST_ADD, rc);
    if ((rc = sqlite_run(c, st, ST_DEST_ADD, NULL)))
        return rc;
    *dest_id = sqlite3_last_insert_rowid(c->db);
    return 0;
}

/* Whether topic dest_id has a subscription, remembered for the rest of one
 * msg_insert call (*last_dest, *last_has): a batch usually goes to few
 * topics, and subscriptions cannot change within the call. */
static int sqlite_topic_has_sub(mqs_be_conn *c, int64_t dest_id,
                                int64_t *last_dest, int *last_has)
{
    if (*last_dest == dest_id && *last_has >= 0)
        return *last_has;
    sqlite3_stmt *st;
    int64_t one;
    int rc = sqlite_get(c, ST_SUB_ANY, &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, dest_id);
    rc = sqlite_one_int(c, st, ST_SUB_ANY, &one);
    if (rc < 0)
        return rc;
    *last_dest = dest_id;
    *last_has = rc;
    return rc;
}

static int sqlite_msg_insert_one(mqs_be_conn *c, mqs_be_msg *m,
                                 int64_t *last_dest, int *last_has)
{
    sqlite3_stmt *st;
    int rc;
    m->id = 0;
    if (m->kind == MQS_TOPIC) {
        /* No subscription: nothing is stored (checked first so the
         * message row is not written only to be deleted). */
        rc = sqlite_topic_has_sub(c, m->dest_id, last_dest, last_has);
        if (rc <= 0)
            return rc;
    }
    if ((rc = sqlite_get(c, ST_MSG_INS, &st)))
        return rc;
    sqlite3_bind_int64(st, 1, m->dest_id);
    sqlite3_bind_int(st, 2, (int)m->kind);
    sqlite3_bind_int(st, 3, m->priority);
    sqlite3_bind_int64(st, 4, m->expires_ms);
    sqlite3_bind_int64(st, 5, m->enqueued_ms);
    if ((rc = sqlite_bind_bytes(st, 6, m->headers, m->headers_len)) ||
        (rc = sqlite_bind_bytes(st, 7, m->body, m->body_len)))
        return sqlite_bind_fail(c, st, ST_MSG_INS, rc);
    rc = sqlite_run(c, st, ST_MSG_INS, NULL);
    /* drop the borrowed blob pointers now that the row is written */
    sqlite3_clear_bindings(st);
    if (rc)
        return rc;
    int64_t id = sqlite3_last_insert_rowid(c->db);
    if (m->kind == MQS_TOPIC) {
        if ((rc = sqlite_get(c, ST_PEND_INS, &st)))
            return rc;
        sqlite3_bind_int64(st, 1, m->dest_id);
        sqlite3_bind_int64(st, 2, id);
        sqlite3_bind_int(st, 3, m->priority);
        if ((rc = sqlite_run(c, st, ST_PEND_INS, NULL)))
            return rc;
    }
    m->id = id;
    return 0;
}

static int sqlite_msg_insert(mqs_be_conn *c, mqs_be_msg *m, size_t n)
{
    /* One transaction, cached statements: SQLite has no faster bulk path
     * than a prepared INSERT stepped per row (no round trips to save). */
    int64_t last_dest = 0;
    int last_has = -1;
    for (size_t i = 0; i < n; i++) {
        int rc = sqlite_msg_insert_one(c, &m[i], &last_dest, &last_has);
        if (rc)
            return rc;
    }
    return 0;
}

static int sqlite_msg_ack_one(mqs_be_conn *c, const mqs_be_ref *r)
{
    sqlite3_stmt *st;
    int rc;
    int64_t changed = 0;
    if (r->sub_id == 0) {
        if ((rc = sqlite_get(c, ST_ACK_Q, &st)))
            return rc;
        sqlite3_bind_int64(st, 1, r->id);
        return sqlite_run(c, st, ST_ACK_Q, NULL);
    }
    if ((rc = sqlite_get(c, ST_ACK_P, &st)))
        return rc;
    sqlite3_bind_int64(st, 1, r->id);
    sqlite3_bind_int64(st, 2, r->sub_id);
    if ((rc = sqlite_run(c, st, ST_ACK_P, &changed)))
        return rc;
    if (changed == 0)
        return 0; /* replayed ack: the message was already handled */
    if ((rc = sqlite_get(c, ST_ACK_ORPHAN, &st)))
        return rc;
    sqlite3_bind_int64(st, 1, r->id);
    return sqlite_run(c, st, ST_ACK_ORPHAN, NULL);
}

static int sqlite_msg_ack(mqs_be_conn *c, const mqs_be_ref *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = sqlite_msg_ack_one(c, &r[i]);
        if (rc)
            return rc;
    }
    return 0;
}

static int sqlite_msg_nack(mqs_be_conn *c, const mqs_be_ref *r)
{
    sqlite3_stmt *st;
    enum sqlite_stmt_id id = r->sub_id ? ST_NACK_P : ST_NACK_Q;
    int rc = sqlite_get(c, id, &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, r->id);
    if (r->sub_id)
        sqlite3_bind_int64(st, 2, r->sub_id);
    return sqlite_run(c, st, id, NULL);
}

static int sqlite_sub_create(mqs_be_conn *c, int64_t topic_id,
                             const char *name, int64_t *sub_id)
{
    sqlite3_stmt *st;
    int rc = sqlite_get(c, ST_SUB_GET, &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, topic_id);
    if ((rc = sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC)) != SQLITE_OK)
        return sqlite_bind_fail(c, st, ST_SUB_GET, rc);
    rc = sqlite_one_int(c, st, ST_SUB_GET, sub_id);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    if ((rc = sqlite_get(c, ST_SUB_ADD, &st)))
        return rc;
    sqlite3_bind_int64(st, 1, topic_id);
    if ((rc = sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC)) != SQLITE_OK)
        return sqlite_bind_fail(c, st, ST_SUB_ADD, rc);
    sqlite3_bind_int64(st, 3, sqlite_now_ms());
    int64_t changed = 0;
    if ((rc = sqlite_run(c, st, ST_SUB_ADD, &changed)))
        return rc;
    if (changed == 0)
        return sqlite_failf(c, MQS_ENOTFOUND,
                            "sqlite: cannot create subscription '%s': topic "
                            "id %lld does not exist in %s (or is a queue)",
                            name, (long long)topic_id, c->path);
    *sub_id = sqlite3_last_insert_rowid(c->db);
    return 0;
}

static int sqlite_sub_remove(mqs_be_conn *c, int64_t sub_id)
{
    static const enum sqlite_stmt_id steps[] = {ST_SUB_RM_ORPHANS,
                                                ST_SUB_RM_PEND, ST_SUB_RM};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        sqlite3_stmt *st;
        int rc = sqlite_get(c, steps[i], &st);
        if (rc)
            return rc;
        sqlite3_bind_int64(st, 1, sub_id);
        if ((rc = sqlite_run(c, st, steps[i], NULL)))
            return rc;
    }
    return 0;
}

static int sqlite_purge(mqs_be_conn *c, int64_t dest_id, uint64_t *removed)
{
    /* queue messages (counted), pending entries (counted, one per
     * subscription), then the topic messages they referred to */
    static const enum sqlite_stmt_id all[] = {ST_PURGE_ALL_Q, ST_PURGE_ALL_P,
                                              ST_PURGE_ALL_M};
    static const enum sqlite_stmt_id one[] = {ST_PURGE_Q, ST_PURGE_P,
                                              ST_PURGE_M};
    const enum sqlite_stmt_id *steps = dest_id ? one : all;
    uint64_t total = 0;
    for (size_t i = 0; i < 3; i++) {
        sqlite3_stmt *st;
        int64_t changed = 0;
        int rc = sqlite_get(c, steps[i], &st);
        if (rc)
            return rc;
        if (dest_id)
            sqlite3_bind_int64(st, 1, dest_id);
        if ((rc = sqlite_run(c, st, steps[i], &changed)))
            return rc;
        if (i < 2)
            total += (uint64_t)changed;
    }
    if (removed)
        *removed = total;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Reads
 * ------------------------------------------------------------------------- */
static int sqlite_sub_lookup(mqs_be_conn *c, const char *topic,
                             const char *name, int64_t *sub_id)
{
    sqlite3_stmt *st;
    int rc = sqlite_get(c, ST_SUB_LOOKUP, &st);
    if (rc)
        return rc;
    if ((rc = sqlite3_bind_text(st, 1, topic, -1, SQLITE_STATIC)) ||
        (rc = sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC)))
        return sqlite_bind_fail(c, st, ST_SUB_LOOKUP, rc);
    rc = sqlite_one_int(c, st, ST_SUB_LOOKUP, sub_id);
    if (rc == 0)
        return sqlite_failf(c, MQS_ENOTFOUND,
                            "sqlite: no subscription '%s' on topic '%s'", name,
                            topic);
    return rc < 0 ? rc : 0;
}

/* Stream the rows of a bound page statement. *rows counts them; *stop is
 * set when the callback asked to stop. Resets st. */
static int sqlite_stream(mqs_be_conn *c, sqlite3_stmt *st,
                         enum sqlite_stmt_id id, mqs_be_row_cb cb, void *ud,
                         size_t *rows, int *stop)
{
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        mqs_be_row r;
        r.id = sqlite3_column_int64(st, 0);
        r.priority = sqlite3_column_int(st, 1);
        r.expires_ms = sqlite3_column_int64(st, 2);
        r.enqueued_ms = sqlite3_column_int64(st, 3);
        r.redeliveries = (int32_t)sqlite3_column_int(st, 4);
        /* pointer first, then its length (the documented safe order) */
        r.headers = sqlite3_column_blob(st, 5);
        r.headers_len = (size_t)sqlite3_column_bytes(st, 5);
        r.body = sqlite3_column_blob(st, 6);
        r.body_len = (size_t)sqlite3_column_bytes(st, 6);
        if ((r.headers_len && !r.headers) || (r.body_len && !r.body)) {
            sqlite3_reset(st);
            return sqlite_failf(c, MQS_ENOMEM,
                                "sqlite: out of memory reading message %lld",
                                (long long)r.id);
        }
        (*rows)++;
        if (cb(ud, &r) != 0) {
            *stop = 1;
            sqlite3_reset(st);
            return 0;
        }
    }
    if (rc != SQLITE_DONE) {
        int ret = sqlite_fail(c, rc, sqlite_sql[id].name);
        sqlite3_reset(st);
        return ret;
    }
    sqlite3_reset(st);
    return 0;
}

static int sqlite_page_read(mqs_be_conn *c, const mqs_be_page *p,
                            mqs_be_row_cb cb, void *ud)
{
    int sub = p->sub_id != 0;
    int64_t key = sub ? p->sub_id : p->dest_id;
    int64_t limit =
        p->limit > (size_t)INT64_MAX ? INT64_MAX : (int64_t)p->limit;
    if (limit == 0)
        return 0;
    size_t rows = 0;
    int stop = 0;

    /* the rest of the key's priority level */
    enum sqlite_stmt_id id = sub ? ST_PAGE_S_EQ : ST_PAGE_Q_EQ;
    sqlite3_stmt *st;
    int rc = sqlite_get(c, id, &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, key);
    sqlite3_bind_int(st, 2, p->after_priority);
    sqlite3_bind_int64(st, 3, p->after_id);
    sqlite3_bind_int64(st, 4, limit);
    rc = sqlite_stream(c, st, id, cb, ud, &rows, &stop);
    if (rc || stop || (int64_t)rows >= limit)
        return rc;

    /* then the lower priorities */
    id = sub ? ST_PAGE_S_LT : ST_PAGE_Q_LT;
    if ((rc = sqlite_get(c, id, &st)))
        return rc;
    sqlite3_bind_int64(st, 1, key);
    sqlite3_bind_int(st, 2, p->after_priority);
    sqlite3_bind_int64(st, 3, limit - (int64_t)rows);
    return sqlite_stream(c, st, id, cb, ud, &rows, &stop);
}

/* Rows of statement id (dest_list's columns) to cb. */
static int sqlite_dest_rows(mqs_be_conn *c, enum sqlite_stmt_id id,
                            mqs_be_dest_cb cb, void *ud)
{
    sqlite3_stmt *st;
    int rc = sqlite_get(c, id, &st);
    if (rc)
        return rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        mqs_be_dest d;
        d.dest_id = sqlite3_column_int64(st, 0);
        d.kind = sqlite3_column_int(st, 1) ? MQS_TOPIC : MQS_QUEUE;
        d.name = (const char *)sqlite3_column_text(st, 2);
        d.sub_id = sqlite3_column_int64(st, 3);
        d.sub_name = (const char *)sqlite3_column_text(st, 4);
        d.pending = (uint64_t)sqlite3_column_int64(st, 5);
        d.oldest_ms = sqlite3_column_int64(st, 6); /* NULL -> 0 */
        if (cb(ud, &d) != 0)
            break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        int ret = sqlite_fail(c, rc, sqlite_sql[id].name);
        sqlite3_reset(st);
        return ret;
    }
    sqlite3_reset(st);
    return 0;
}

static int sqlite_dest_list(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud)
{
    return sqlite_dest_rows(c, ST_DEST_LIST, cb, ud);
}

static int sqlite_dest_names(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud)
{
    return sqlite_dest_rows(c, ST_DEST_NAMES, cb, ud);
}

/* The newest rows of mqs_msg, for the producer audit (ABI 2.3). */
static int sqlite_msg_recent(mqs_be_conn *c, size_t limit, mqs_be_header_cb cb,
                             void *ud)
{
    sqlite3_stmt *st;
    int rc = sqlite_get(c, ST_MSG_RECENT, &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, limit > INT64_MAX ? INT64_MAX : (int64_t)limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        /* pointer first, then its length (the documented safe order) */
        const void *h = sqlite3_column_blob(st, 1);
        size_t hlen = (size_t)sqlite3_column_bytes(st, 1);
        int64_t id = sqlite3_column_int64(st, 0);
        if (hlen && !h) {
            sqlite3_reset(st);
            return sqlite_failf(c, MQS_ENOMEM, "sqlite: out of memory reading "
                                "the headers of message %lld", (long long)id);
        }
        if (cb(ud, id, h, hlen) != 0)
            break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        int ret = sqlite_fail(c, rc, sqlite_sql[ST_MSG_RECENT].name);
        sqlite3_reset(st);
        return ret;
    }
    sqlite3_reset(st);
    return 0;
}

/* ---------------------------------------------------------------------------
 * Producer marks (ABI 2.1)
 * ------------------------------------------------------------------------- */
static int sqlite_mark_put(mqs_be_conn *c, const char *producer, int64_t seq,
                           int64_t now_ms)
{
    sqlite3_stmt *st;
    int rc = sqlite_get(c, ST_MARK_PUT, &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, producer, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, seq);
    sqlite3_bind_int64(st, 3, now_ms);
    return sqlite_run(c, st, ST_MARK_PUT, NULL);
}

static int sqlite_mark_list(mqs_be_conn *c, mqs_be_mark_cb cb, void *ud)
{
    sqlite3_stmt *st;
    int rc = sqlite_get(c, ST_MARK_LIST, &st);
    if (rc)
        return rc;
    int stop = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        stop = cb(ud, (const char *)sqlite3_column_text(st, 0),
                  sqlite3_column_int64(st, 1));
        if (stop)
            break;
    }
    if (!stop && rc != SQLITE_DONE) {
        int ret = sqlite_fail(c, rc, sqlite_sql[ST_MARK_LIST].name);
        sqlite3_reset(st);
        return ret;
    }
    sqlite3_reset(st);
    return stop;
}

static int sqlite_mark_prune(mqs_be_conn *c, int64_t before_ms,
                             uint64_t *removed)
{
    sqlite3_stmt *st;
    int64_t n = 0;
    int rc = sqlite_get(c, ST_MARK_PRUNE, &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, before_ms);
    rc = sqlite_run(c, st, ST_MARK_PRUNE, &n);
    if (removed)
        *removed = rc ? 0 : (uint64_t)n;
    return rc;
}

/* ---------------------------------------------------------------------------
 * Exclusive lock (ABI 2.0)
 *
 * Fencing without writing. SQLite has one write lock per database file,
 * taken by BEGIN IMMEDIATE and held until COMMIT/ROLLBACK (WAL: the WAL
 * write lock; rollback journal: RESERVED, then EXCLUSIVE to commit). A
 * master's write transaction begins IMMEDIATE, and lock_fence then reads
 * the lock row: holder, token, and a lease with at least margin_ms left.
 * lock_acquire, lock_force and lock_renew change the row only inside
 * their own BEGIN IMMEDIATE, so none of them can write, let alone commit,
 * between that read and the end of the fenced transaction: the row read
 * is the row at COMMIT. txn_commit reads it once more after the last
 * write, for the lease margin (time has passed, the row cannot have
 * changed). Both reads are primary-key lookups in this process, usually
 * from the page cache: no row version, no journal/WAL page, no fsync.
 * The lease is extended only by lock_renew, in its own short transaction
 * on the lease connection, every renew_ms; it waits for a running write
 * transaction (at most wait_ms), never the other way round beyond that
 * transaction. Standbys poll lock_acquire with a plain read (a WAL read
 * lock, which no writer waits for) and take the write lock only when the
 * row says the lock can be taken.
 *
 * SQLite has no server, so the backend supplies what a server would:
 *  - The clock: CLOCK_BOOTTIME in ms. Every process on the host reads the
 *    same one and no wall-clock change moves it. Its values only mean
 *    something within one boot, so each lease carries the kernel boot id;
 *    a lease written under another boot id has ended (its holder died with
 *    the host).
 *  - The session (crash detector): an open-file-description lock on one
 *    byte of "<database>-mqslock" per cluster. The kernel drops it when the
 *    holder's process dies, which wakes a waiting standby at once. It
 *    belongs to the file description, not the process, so two stores of
 *    one process exclude each other too; a child forked (without exec)
 *    while it is held shares it, and it then lasts until the child exits
 *    too. The session id is the pid, so a crash is only recognized within
 *    one pid namespace (elsewhere the lease decides).
 * Processes on different hosts sharing one file (NFS) have different boot
 * ids and would each read the other's lease as ended: SQLite HA is for the
 * processes of one host.
 * ------------------------------------------------------------------------- */

/* Process-wide facts, read once. */
static struct {
    char boot_id[64]; /* "" if it could not be read */
    int boot_errno;
    int64_t pidns; /* inode of our pid namespace, 0 if unknown */
} sqlite_host;
static pthread_once_t sqlite_host_once = PTHREAD_ONCE_INIT;

static void sqlite_host_init(void)
{
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    ssize_t n = -1;
    if (fd >= 0) {
        n = read(fd, sqlite_host.boot_id, sizeof sqlite_host.boot_id - 1);
        sqlite_host.boot_errno = n < 0 ? errno : EIO;
        close(fd);
    } else {
        sqlite_host.boot_errno = errno;
    }
    if (n < 0)
        n = 0;
    while (n > 0 && (sqlite_host.boot_id[n - 1] == '\n' ||
                     sqlite_host.boot_id[n - 1] == ' '))
        n--;
    sqlite_host.boot_id[n] = '\0';
    struct stat sb;
    if (stat("/proc/self/ns/pid", &sb) == 0)
        sqlite_host.pidns = (int64_t)sb.st_ino;
}

static int sqlite_host_check(mqs_be_conn *c)
{
    pthread_once(&sqlite_host_once, sqlite_host_init);
    if (sqlite_host.boot_id[0])
        return 0;
    return sqlite_failf(c, MQS_ENOTSUP,
                        "sqlite: cannot read the kernel boot id from "
                        "/proc/sys/kernel/random/boot_id (%s): the SQLite "
                        "lock needs it to tell a lease of this boot from one "
                        "written before a restart (Linux with /proc mounted)",
                        strerror(sqlite_host.boot_errno));
}

/* The lease clock. A raw system call, not clock_gettime(): LD_PRELOAD
 * clock fakers (libfaketime) shift the monotonic clocks along with the
 * wall clock, and the lease must be measured on the one clock all nodes
 * share. Where the kernel's timespec may differ from the C library's
 * (32-bit ABIs), the library call is used. */
static int64_t sqlite_boot_ms(void)
{
    struct timespec ts;
#if defined(SYS_clock_gettime) && !defined(SYS_clock_gettime64)
    if (syscall(SYS_clock_gettime, CLOCK_BOOTTIME, &ts) != 0)
#endif
        clock_gettime(CLOCK_BOOTTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* sqlite_get for the lock statements: a database still at schema 1 gets
 * an error that says what to do instead of "no such table". */
static int sqlite_lock_stmt(mqs_be_conn *c, enum sqlite_stmt_id id,
                            sqlite3_stmt **st)
{
    int rc = sqlite_get(c, id, st);
    int v = 0;
    if (rc && sqlite_probe(c, &v) == 0 && v < 2)
        return sqlite_failf(c, MQS_ESCHEMA,
                            "sqlite: %s is at schema version %d, without the "
                            "mqs_lock table: the exclusive lock needs schema "
                            "version 2 (002_lock.sql); run `mqstore migrate "
                            "URI` or open the store with migrate=auto",
                            c->path, v);
    return rc;
}

static int sqlite_bind_str(mqs_be_conn *c, sqlite3_stmt *st,
                           enum sqlite_stmt_id id, int idx, const char *s)
{
    int rc = sqlite3_bind_text(st, idx, s, -1, SQLITE_STATIC);
    return rc == SQLITE_OK ? 0 : sqlite_bind_fail(c, st, id, rc);
}

/* Bind the three session columns from idx: this process's session when the
 * core says it holds one, else NULL. For SQLite the session is a file lock
 * held by another connection of this process, and the core stops passing
 * its id as soon as it closes that connection, so the pid is the check
 * left to make. Returns whether a session was recorded. */
static int sqlite_bind_session(sqlite3_stmt *st, int idx,
                               const mqs_be_lock *l)
{
    pid_t me = getpid();
    if (l->session_id == 0 || l->session_id != (int64_t)me) {
        sqlite3_bind_null(st, idx);
        sqlite3_bind_null(st, idx + 1);
        sqlite3_bind_null(st, idx + 2);
        return 0;
    }
    sqlite3_bind_int64(st, idx, (int64_t)me);
    sqlite3_bind_text(st, idx + 1, sqlite_host.boot_id, -1, SQLITE_STATIC);
    if (sqlite_host.pidns)
        sqlite3_bind_int64(st, idx + 2, sqlite_host.pidns);
    else
        sqlite3_bind_null(st, idx + 2);
    return 1;
}

/* One row of mqs_lock, with its boot-clock values judged against ours. */
struct sqlite_lock_row {
    int found;
    int held; /* holder is not NULL */
    char holder[256];
    int64_t token;
    int lease_valid; /* lease and acquired were recorded in this boot */
    int64_t lease_until;
    int64_t acquired;
    int64_t session_id; /* 0: none recorded under this boot */
    int64_t session_pidns;
};

/* Read the row of cluster (in or outside a transaction). */
static int sqlite_lock_load(mqs_be_conn *c, const char *cluster,
                            struct sqlite_lock_row *r)
{
    memset(r, 0, sizeof *r);
    sqlite3_stmt *st;
    int rc = sqlite_lock_stmt(c, ST_LOCK_GET, &st);
    if (rc || (rc = sqlite_bind_str(c, st, ST_LOCK_GET, 1, cluster)))
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        sqlite3_reset(st);
        return 0;
    }
    if (rc != SQLITE_ROW) {
        int ret = sqlite_fail(c, rc, sqlite_sql[ST_LOCK_GET].name);
        sqlite3_reset(st);
        return ret;
    }
    r->found = 1;
    const char *holder = (const char *)sqlite3_column_text(st, 0);
    const char *boot = (const char *)sqlite3_column_text(st, 4);
    const char *epoch = (const char *)sqlite3_column_text(st, 6);
    r->held = holder != NULL;
    if (holder)
        snprintf(r->holder, sizeof r->holder, "%s", holder);
    r->token = sqlite3_column_int64(st, 1);
    r->lease_valid = boot && !strcmp(boot, sqlite_host.boot_id) &&
                     sqlite3_column_type(st, 2) != SQLITE_NULL &&
                     sqlite3_column_type(st, 3) != SQLITE_NULL;
    r->lease_until = sqlite3_column_int64(st, 2);
    r->acquired = sqlite3_column_int64(st, 3);
    if (epoch && !strcmp(epoch, sqlite_host.boot_id)) {
        r->session_id = sqlite3_column_int64(st, 5);
        r->session_pidns = sqlite3_column_int64(st, 7);
    }
    sqlite3_reset(st);
    return 0;
}

static void sqlite_lock_fill(mqs_be_lock_state *st,
                             const struct sqlite_lock_row *r, int64_t now)
{
    memset(st, 0, sizeof *st);
    st->token = r->token;
    if (!r->held)
        return;
    snprintf(st->holder, sizeof st->holder, "%s", r->holder);
    /* A lease of another boot has ended: 0 left, age unknown. */
    if (r->lease_valid) {
        st->lease_left_ms = r->lease_until - now;
        st->held_ms = now - r->acquired;
    }
    st->session_armed = r->session_id > 0;
}

/* Whether the process of a recorded session is gone. Asked only by a node
 * that holds the session byte now (holder_gone), so no connection holds it
 * for the recorded session any more; what is left to rule out is a live
 * holder whose file lock went some other way (its lock file deleted or
 * reached by another path): its process must be gone as well. */
static int sqlite_session_gone(int64_t pid, int64_t pidns)
{
    /* A pid of another pid namespace names nothing we can see. */
    if (!sqlite_host.pidns || pidns != sqlite_host.pidns)
        return 0;
    /* Our own pid cannot tell this process's stores apart; the byte we
     * hold is the proof that the recorded session's connection let go. */
    if (pid == (int64_t)getpid())
        return 1;
    if (pid <= 0 || pid > INT_MAX)
        return 0;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return 1;
    /* A dying process still answers kill(): its files (and so its file
     * lock) are closed while it exits, before its parent reaps it. The
     * kernel's PF_EXITING flag is set from the start of the exit, and a
     * zombie shows state Z. Otherwise the standby would find the holder
     * "alive" and wait out the lease. */
    char path[64];
    snprintf(path, sizeof path, "/proc/%lld/stat", (long long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT;
    char buf[512];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* "pid (comm) state ppid pgrp session tty tpgid flags ...": comm may
     * hold ')', so parse from the last one. */
    const char *p = strrchr(buf, ')');
    char state = 0;
    unsigned flags = 0;
    if (!p || sscanf(p + 1, " %c %*d %*d %*d %*d %*d %u", &state, &flags) != 2)
        return 0;
    return state == 'Z' || state == 'X' || (flags & 0x4u /* PF_EXITING */);
}

/* Roll back the lock's own transaction, keeping the failure's message. */
static int sqlite_lock_abort(mqs_be_conn *c, int rc)
{
    char keep[sizeof c->err];
    memcpy(keep, c->err, sizeof keep);
    (void)sqlite_txn_rollback(c);
    memcpy(c->err, keep, sizeof keep);
    return rc;
}

/* Bound every wait of this connection (busy handler) to wait_ms from now,
 * until sqlite_unbound. */
static void sqlite_bound(mqs_be_conn *c, int64_t wait_ms)
{
    c->bound_ms = wait_ms > 0 ? wait_ms : 0;
    c->busy_until = sqlite_mono_ms() + c->bound_ms;
    if (c->busy_until == 0)
        c->busy_until = 1;
}

static void sqlite_unbound(mqs_be_conn *c)
{
    c->busy_until = 0;
}

/* Whether the row lets l take the lock (now: boot clock). */
static int sqlite_lock_takeable(const struct sqlite_lock_row *r,
                                const mqs_be_lock *l, int64_t now)
{
    return !r->found || !r->held || !r->lease_valid ||
           r->lease_until <= now ||
           (l->holder_gone && r->session_id > 0 &&
            sqlite_session_gone(r->session_id, r->session_pidns));
}

static int sqlite_lock_busy(mqs_be_conn *c, const mqs_be_lock *l,
                            const struct sqlite_lock_row *r, int64_t now,
                            mqs_be_lock_state *st)
{
    sqlite_lock_fill(st, r, now);
    return sqlite_failf(
        c, MQS_EBUSY,
        "sqlite: the lock of cluster '%s' in %s is held by node %s "
        "(token %lld, lease %lld ms left, held for %lld ms, crash "
        "detector %s)",
        l->cluster, c->path, st->holder, (long long)st->token,
        (long long)st->lease_left_ms, (long long)st->held_ms,
        st->session_armed ? "armed" : "not armed");
}

static int sqlite_lock_acquire(mqs_be_conn *c, const mqs_be_lock *l,
                               mqs_be_lock_state *st)
{
    memset(st, 0, sizeof *st);
    sqlite3_stmt *ins, *take;
    int rc;
    if ((rc = sqlite_host_check(c)) ||
        (rc = sqlite_lock_stmt(c, ST_LOCK_INIT, &ins)) ||
        (rc = sqlite_lock_stmt(c, ST_LOCK_TAKE, &take)))
        return rc;
    /* A standby must not sit out busy_timeout behind a master frozen
     * inside a write transaction: give up after wait_ms (100 ms when the
     * core leaves it to us) with MQS_EBUSY and let the core poll again. */
    int64_t wait = l->wait_ms > 0 ? l->wait_ms
                                  : (c->busy_ms < 100 ? c->busy_ms : 100);

    /* First a plain read, outside any transaction: while a live holder's
     * lease stands (what a standby finds on almost every poll) this takes
     * no write lock, writes nothing and does not wait for the master's
     * write transactions (a WAL reader never does). */
    struct sqlite_lock_row r;
    sqlite_bound(c, wait);
    rc = sqlite_lock_load(c, l->cluster, &r);
    sqlite_unbound(c);
    if (rc)
        return rc;
    int64_t now = sqlite_boot_ms();
    if (!sqlite_lock_takeable(&r, l, now))
        return sqlite_lock_busy(c, l, &r, now, st);

    /* Takeable (or no row yet): take the write lock, which waits for the
     * holder's fenced transaction in progress, if any, then decide again
     * on the row as it is now. */
    sqlite_bound(c, wait);
    if ((rc = sqlite_exec_id(c, ST_BEGIN))) {
        sqlite_unbound(c);
        return rc;
    }
    if ((rc = sqlite_bind_str(c, ins, ST_LOCK_INIT, 1, l->cluster)) ||
        (rc = sqlite_run(c, ins, ST_LOCK_INIT, NULL)) ||
        (rc = sqlite_lock_load(c, l->cluster, &r)))
        goto abort;
    /* Read after BEGIN IMMEDIATE: no one can change the row from here. */
    now = sqlite_boot_ms();
    if (!sqlite_lock_takeable(&r, l, now)) {
        /* renewed (or taken by another standby) since the first read */
        sqlite_unbound(c);
        if ((rc = sqlite_txn_rollback(c)))
            return rc;
        return sqlite_lock_busy(c, l, &r, now, st);
    }
    int64_t changed = 0;
    if ((rc = sqlite_bind_str(c, take, ST_LOCK_TAKE, 1, l->cluster)) ||
        (rc = sqlite_bind_str(c, take, ST_LOCK_TAKE, 2, l->node)))
        goto abort;
    sqlite3_bind_int64(take, 3, now + l->lease_ms);
    sqlite3_bind_int64(take, 4, now);
    sqlite3_bind_text(take, 5, sqlite_host.boot_id, -1, SQLITE_STATIC);
    int armed = sqlite_bind_session(take, 6, l);
    if ((rc = sqlite_run(c, take, ST_LOCK_TAKE, &changed)))
        goto abort;
    if (changed != 1) {
        rc = sqlite_failf(c, MQS_EIO,
                          "sqlite: the lock row of cluster '%s' vanished "
                          "from %s inside the acquiring transaction",
                          l->cluster, c->path);
        goto abort;
    }
    if ((rc = sqlite_exec_id(c, ST_COMMIT)))
        goto abort;
    sqlite_unbound(c);
    snprintf(st->holder, sizeof st->holder, "%s", l->node);
    st->token = r.token + 1;
    st->lease_left_ms = l->lease_ms;
    st->held_ms = 0;
    st->session_armed = armed;
    return 0;
abort:
    sqlite_unbound(c);
    return sqlite_lock_abort(c, rc);
}

/* The row (r, or read now when r is NULL) shows no lock of node/token:
 * say who has it. Returns MQS_EFENCED. */
static int sqlite_lock_fenced(mqs_be_conn *c, const char *cluster,
                              const char *node, int64_t token,
                              const struct sqlite_lock_row *r)
{
    struct sqlite_lock_row rr;
    if (!r) {
        if (sqlite_lock_load(c, cluster, &rr) != 0)
            return sqlite_failf(c, MQS_EFENCED,
                                "sqlite: node %s (token %lld) no longer "
                                "holds the lock of cluster '%s' and was "
                                "fenced (the current holder could not be "
                                "read)",
                                node, (long long)token, cluster);
        r = &rr;
    }
    if (!r->found)
        return sqlite_failf(c, MQS_EFENCED,
                            "sqlite: the lock of cluster '%s' has no row in "
                            "%s any more; node %s (token %lld) was fenced",
                            cluster, c->path, node, (long long)token);
    if (!r->held)
        return sqlite_failf(c, MQS_EFENCED,
                            "sqlite: the lock of cluster '%s' is now free "
                            "(token %lld); node %s (token %lld) was fenced",
                            cluster, (long long)r->token, node,
                            (long long)token);
    return sqlite_failf(c, MQS_EFENCED,
                        "sqlite: the lock of cluster '%s' is now held by %s "
                        "(token %lld); node %s (token %lld) was fenced",
                        cluster, r->holder, (long long)r->token, node,
                        (long long)token);
}

static int sqlite_lock_renew(mqs_be_conn *c, const mqs_be_lock *l,
                             mqs_be_lock_state *st)
{
    memset(st, 0, sizeof *st);
    sqlite3_stmt *up;
    int rc;
    if ((rc = sqlite_host_check(c)) ||
        (rc = sqlite_lock_stmt(c, ST_LOCK_RENEW, &up)))
        return rc;
    if (!sqlite3_get_autocommit(c->db))
        return sqlite_failf(c, MQS_EINVAL,
                            "sqlite: lock_renew called inside a transaction "
                            "on %s (ABI 2.0 renews in its own transaction, on "
                            "the lease connection)",
                            c->path);
    /* Its own transaction: the write lock orders it against every acquire
     * and every fenced write transaction; it waits for the one in
     * progress, if any, at most wait_ms. */
    sqlite_bound(c, l->wait_ms > 0 ? l->wait_ms : 1000);
    if ((rc = sqlite_exec_id(c, ST_BEGIN))) {
        sqlite_unbound(c);
        return rc;
    }
    if ((rc = sqlite_bind_str(c, up, ST_LOCK_RENEW, 1, l->cluster)) ||
        (rc = sqlite_bind_str(c, up, ST_LOCK_RENEW, 2, l->node)))
        goto abort;
    /* read under the write lock: the lease starts no earlier than now */
    int64_t now = sqlite_boot_ms();
    sqlite3_bind_int64(up, 3, l->token);
    sqlite3_bind_int64(up, 4, now + l->lease_ms);
    sqlite3_bind_text(up, 5, sqlite_host.boot_id, -1, SQLITE_STATIC);
    int armed = sqlite_bind_session(up, 6, l);
    int matched = 0;
    int64_t acquired = now;
    int src = sqlite3_step(up);
    if (src == SQLITE_ROW) {
        matched = 1;
        acquired = sqlite3_column_int64(up, 0);
        src = sqlite3_step(up);
    }
    if (src != SQLITE_DONE) {
        rc = sqlite_fail(c, src, sqlite_sql[ST_LOCK_RENEW].name);
        sqlite3_reset(up);
        goto abort;
    }
    sqlite3_reset(up);
    if (!matched) {
        rc = sqlite_lock_fenced(c, l->cluster, l->node, l->token, NULL);
        goto abort;
    }
    if ((rc = sqlite_exec_id(c, ST_COMMIT)))
        goto abort;
    sqlite_unbound(c);
    snprintf(st->holder, sizeof st->holder, "%s", l->node);
    st->token = l->token;
    st->lease_left_ms = l->lease_ms;
    st->held_ms = now - acquired;
    st->session_armed = armed;
    return 0;
abort:
    sqlite_unbound(c);
    return sqlite_lock_abort(c, rc);
}

/* Check the fence recorded by lock_fence against the row as this
 * transaction sees it (under the write lock: as every other connection
 * will see it until this transaction ends). */
static int sqlite_fence_check(mqs_be_conn *c)
{
    struct sqlite_lock_row r;
    int rc = sqlite_lock_load(c, c->fence_cluster, &r);
    if (rc)
        return rc;
    if (!r.found || !r.held || strcmp(r.holder, c->fence_node) != 0 ||
        r.token != c->fence_token)
        return sqlite_lock_fenced(c, c->fence_cluster, c->fence_node,
                                  c->fence_token, &r);
    int64_t now = sqlite_boot_ms();
    if (!r.lease_valid)
        return sqlite_failf(c, MQS_EFENCED,
                            "sqlite: node %s (token %lld) holds the lock of "
                            "cluster '%s' under a lease of another boot of "
                            "this host, which has ended; fenced",
                            c->fence_node, (long long)c->fence_token,
                            c->fence_cluster);
    if (r.lease_until - now < c->fence_margin)
        return sqlite_failf(c, MQS_EFENCED,
                            "sqlite: node %s (token %lld) holds the lock of "
                            "cluster '%s' but its lease has %lld ms left, "
                            "less than the %lld ms a write transaction needs "
                            "(the lease was not renewed in time); fenced",
                            c->fence_node, (long long)c->fence_token,
                            c->fence_cluster,
                            (long long)(r.lease_until - now),
                            (long long)c->fence_margin);
    return 0;
}

/* Keep a copy of s in *dst (reused while equal: the same every call). */
static int sqlite_keep_str(char **dst, const char *s)
{
    if (*dst && !strcmp(*dst, s))
        return 0;
    char *p = strdup(s);
    if (!p)
        return -1;
    free(*dst);
    *dst = p;
    return 0;
}

static int sqlite_lock_fence(mqs_be_conn *c, const mqs_be_fence *f)
{
    c->fence_on = 0;
    int rc = sqlite_host_check(c);
    if (rc)
        return rc;
    if (sqlite3_get_autocommit(c->db))
        return sqlite_failf(c, MQS_EINVAL,
                            "sqlite: lock_fence called outside a write "
                            "transaction on %s",
                            c->path);
    if (sqlite_keep_str(&c->fence_cluster, f->cluster) ||
        sqlite_keep_str(&c->fence_node, f->node))
        return sqlite_failf(c, MQS_ENOMEM,
                            "sqlite: out of memory fencing a transaction of "
                            "cluster '%s'",
                            f->cluster);
    c->fence_token = f->token;
    c->fence_margin = f->margin_ms;
    /* txn_begin's BEGIN IMMEDIATE holds the write lock already: check now
     * (a deposed master fails before it writes anything), and again in
     * txn_commit after the last write. */
    if ((rc = sqlite_fence_check(c)))
        return rc;
    c->fence_on = 1;
    return 0;
}

/* Release or force free (node NULL), each in its own transaction. */
static int sqlite_lock_clear(mqs_be_conn *c, enum sqlite_stmt_id id,
                             const char *cluster, const char *node,
                             int64_t token)
{
    sqlite3_stmt *st;
    int rc;
    if ((rc = sqlite_lock_stmt(c, id, &st)) ||
        (rc = sqlite_exec_id(c, ST_BEGIN)))
        return rc;
    if ((rc = sqlite_bind_str(c, st, id, 1, cluster)) ||
        (node && (rc = sqlite_bind_str(c, st, id, 2, node))))
        return sqlite_lock_abort(c, rc);
    if (node)
        sqlite3_bind_int64(st, 3, token);
    if ((rc = sqlite_run(c, st, id, NULL)) ||
        (rc = sqlite_exec_id(c, ST_COMMIT)))
        return sqlite_lock_abort(c, rc);
    return 0;
}

static int sqlite_lock_release(mqs_be_conn *c, const mqs_be_lock *l)
{
    return sqlite_lock_clear(c, ST_LOCK_RELEASE, l->cluster, l->node,
                             l->token);
}

static int sqlite_lock_force(mqs_be_conn *c, const char *cluster)
{
    return sqlite_lock_clear(c, ST_LOCK_FORCE, cluster, NULL, 0);
}

static int sqlite_lock_read(mqs_be_conn *c, const char *cluster,
                            mqs_be_lock_state *st)
{
    memset(st, 0, sizeof *st);
    struct sqlite_lock_row r;
    int rc;
    if ((rc = sqlite_host_check(c)) ||
        (rc = sqlite_lock_load(c, cluster, &r)))
        return rc;
    sqlite_lock_fill(st, &r, sqlite_boot_ms());
    return 0;
}

/* ---- session lock (crash detector) ---- */

/* The cluster's byte in the lock file: FNV-1a, below 2^31 for any off_t.
 * Two clusters on one byte can only cost a wake-up or an unarmed detector,
 * never a takeover: holding the byte proves no one else holds it. */
static off_t sqlite_session_byte(const char *cluster)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)cluster; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return (off_t)(h & 0x7fffffffu);
}

static int sqlite_lockfile_open(mqs_be_conn *c)
{
    if (c->lock_fd >= 0)
        return 0;
    /* SQLite's own name for the file (symlinks resolved), so every path to
     * one database names one lock file. */
    const char *db = sqlite3_db_filename(c->db, "main");
    if (!db || !*db)
        db = c->path;
    size_t len = strlen(db) + sizeof "-mqslock";
    char *path = malloc(len);
    if (!path)
        return sqlite_failf(c, MQS_ENOMEM,
                            "sqlite: out of memory opening the session lock "
                            "file of %s",
                            c->path);
    snprintf(path, len, "%s-mqslock", db);
    /* Whoever may write the database may take the lock: the database's
     * permissions and owner, as SQLite does for its -wal and -shm files. */
    struct stat dbst;
    int have_db = stat(db, &dbst) == 0;
    mode_t mode = have_db ? (dbst.st_mode & 0666) : 0600;
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                  mode);
    if (fd >= 0) {
        /* Best effort (past the umask; root's file to the database's
         * owner): a failure only narrows who else may take the lock. */
        int ok = fchmod(fd, mode) == 0;
        if (ok && have_db && geteuid() == 0)
            ok = fchown(fd, dbst.st_uid, dbst.st_gid) == 0;
        (void)ok;
    } else if (errno == EEXIST) {
        fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
    }
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        int e = fd < 0 ? errno : 0;
        int rc = sqlite_failf(
            c, MQS_EIO,
            "sqlite: cannot use '%s' as the session lock file: %s%s", path,
            e ? strerror(e) : "not a regular file",
            e == EACCES || e == EPERM || e == EROFS
                ? " (mqstore needs write access to the database's directory "
                  "and this file)"
                : "");
        if (fd >= 0)
            close(fd);
        free(path);
        return rc;
    }
    c->lock_fd = fd;
    c->lock_path = path;
    return 0;
}

/* MQS_ECONN if the lock file was removed or replaced under us: a lock on
 * the old file excludes no one who opens the new one. Drops the old file
 * and, with it, the session. */
static int sqlite_lockfile_check(mqs_be_conn *c)
{
    struct stat fd_st, path_st;
    if (fstat(c->lock_fd, &fd_st) == 0 && fd_st.st_nlink > 0 &&
        stat(c->lock_path, &path_st) == 0 && fd_st.st_dev == path_st.st_dev &&
        fd_st.st_ino == path_st.st_ino)
        return 0;
    sqlite_failf(c, MQS_ECONN,
                 "sqlite: the session lock file '%s' was removed or replaced "
                 "while this connection held the session lock of cluster "
                 "'%s': that session ended",
                 c->lock_path, c->sess_cluster ? c->sess_cluster : "?");
    close(c->lock_fd);
    c->lock_fd = -1;
    free(c->lock_path);
    c->lock_path = NULL;
    free(c->sess_cluster);
    c->sess_cluster = NULL;
    return MQS_ECONN;
}

static int sqlite_session_lock(mqs_be_conn *c, const char *cluster,
                               int64_t wait_ms, int64_t *session_id)
{
    *session_id = 0;
    if (c->sess_cluster) {
        if (strcmp(c->sess_cluster, cluster) != 0)
            return sqlite_failf(c, MQS_EINVAL,
                                "sqlite: this connection holds the session "
                                "lock of cluster '%s'; it cannot also take "
                                "that of '%s' (one cluster per connection)",
                                c->sess_cluster, cluster);
        /* A file lock lasts as long as its process and descriptor: the one
         * way to lose it alive is the file going away. */
        int rc = sqlite_lockfile_check(c);
        if (rc)
            return rc;
        *session_id = (int64_t)getpid();
        return 0;
    }
    int rc = sqlite_lockfile_open(c);
    if (rc)
        return rc;
    off_t off = sqlite_session_byte(cluster);
    int64_t deadline =
        wait_ms < 0 ? INT64_MAX : sqlite_mono_ms() + wait_ms;
    for (;;) {
        struct flock fl = {.l_type = F_WRLCK,
                           .l_whence = SEEK_SET,
                           .l_start = off,
                           .l_len = 1};
        if (fcntl(c->lock_fd, F_OFD_SETLK, &fl) == 0)
            break;
        int e = errno;
        if (e == EINTR)
            continue;
        if (e != EAGAIN && e != EACCES)
            return sqlite_failf(
                c, e == EINVAL ? MQS_ENOTSUP : MQS_EIO,
                "sqlite: cannot lock byte %lld of the session lock file "
                "'%s': %s%s",
                (long long)off, c->lock_path, strerror(e),
                e == EINVAL ? " (open file description locks need Linux "
                              "3.15 or later)"
                            : "");
        int64_t left = deadline - sqlite_mono_ms();
        if (left <= 0)
            return sqlite_failf(c, MQS_EBUSY,
                                "sqlite: the session lock of cluster '%s' "
                                "(byte %lld of '%s') is held by another "
                                "connection (waited %lld ms)",
                                cluster, (long long)off, c->lock_path,
                                (long long)(wait_ms > 0 ? wait_ms : 0));
        /* F_OFD_SETLKW can be neither timed out nor interrupted, so poll:
         * 2 ms is all a standby adds to noticing the holder's death. */
        struct timespec ts = {0, (left < 2 ? left : 2) * 1000000L};
        nanosleep(&ts, NULL);
    }
    c->sess_cluster = strdup(cluster);
    if (!c->sess_cluster) {
        struct flock fl = {.l_type = F_UNLCK,
                           .l_whence = SEEK_SET,
                           .l_start = off,
                           .l_len = 1};
        if (fcntl(c->lock_fd, F_OFD_SETLK, &fl) != 0) {
            close(c->lock_fd); /* drops the lock for sure */
            c->lock_fd = -1;
        }
        return sqlite_failf(c, MQS_ENOMEM,
                            "sqlite: out of memory taking the session lock "
                            "of cluster '%s'",
                            cluster);
    }
    c->sess_off = off;
    *session_id = (int64_t)getpid();
    return 0;
}

static int sqlite_session_unlock(mqs_be_conn *c, const char *cluster)
{
    if (!c->sess_cluster || strcmp(c->sess_cluster, cluster) != 0)
        return 0;
    struct flock fl = {.l_type = F_UNLCK,
                       .l_whence = SEEK_SET,
                       .l_start = c->sess_off,
                       .l_len = 1};
    if (fcntl(c->lock_fd, F_OFD_SETLK, &fl) != 0) {
        close(c->lock_fd); /* drops the lock for sure */
        c->lock_fd = -1;
    }
    free(c->sess_cluster);
    c->sess_cluster = NULL;
    return 0;
}

/* ---------------------------------------------------------------------------
 * The table
 * ------------------------------------------------------------------------- */
static const char *const sqlite_schemes[] = {"sqlite", NULL};

static const mqs_backend sqlite_backend = {
    .magic = MQS_BACKEND_MAGIC,
    .abi_major = MQS_BACKEND_ABI_MAJOR,
    .abi_minor = MQS_BACKEND_ABI_MINOR,
    .struct_size = sizeof(mqs_backend),
    .name = "sqlite",
    .version = SQLITE_MODULE_VERSION,
    .schemes = sqlite_schemes,
    .migrations = mqs_schema_sqlite,
    .n_migrations = MQS_SCHEMA_SQLITE_COUNT,
    .options = sqlite_options,
    .n_options = sizeof sqlite_options / sizeof sqlite_options[0],
    .conn_open = sqlite_conn_open,
    .conn_close = sqlite_conn_close,
    .conn_errmsg = sqlite_conn_errmsg,
    .conn_max_message = sqlite_conn_max_message,
    .schema_version = sqlite_schema_version,
    .schema_apply = sqlite_schema_apply,
    .txn_begin = sqlite_txn_begin,
    .txn_commit = sqlite_txn_commit,
    .txn_rollback = sqlite_txn_rollback,
    .dest_resolve = sqlite_dest_resolve,
    .msg_insert = sqlite_msg_insert,
    .msg_ack = sqlite_msg_ack,
    .msg_nack = sqlite_msg_nack,
    .sub_create = sqlite_sub_create,
    .sub_remove = sqlite_sub_remove,
    .purge = sqlite_purge,
    .sub_lookup = sqlite_sub_lookup,
    .page_read = sqlite_page_read,
    .dest_list = sqlite_dest_list,
    .dest_names = sqlite_dest_names,
    .lock_acquire = sqlite_lock_acquire,
    .lock_renew = sqlite_lock_renew,
    .lock_release = sqlite_lock_release,
    .lock_read = sqlite_lock_read,
    .lock_force = sqlite_lock_force,
    .lock_fence = sqlite_lock_fence,
    .session_lock = sqlite_session_lock,
    .session_unlock = sqlite_session_unlock,
    .mark_put = sqlite_mark_put,
    .mark_list = sqlite_mark_list,
    .mark_prune = sqlite_mark_prune,
    .msg_recent = sqlite_msg_recent,
};

MQS_BACKEND_EXPORT const mqs_backend *
mqs_backend_entry(void)
{
    return &sqlite_backend;
}
