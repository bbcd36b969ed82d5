/*
 * sqlite_stmt.c - SQLite driver errors and statement helpers: the one
 * place driver codes become MQS_E* codes and messages, and the prepare /
 * bind / step / reset plumbing every callback goes through.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "sqlite_int.h"

/* ---------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------- */
/* ---------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------- */
const char *sq_code_name(int rc)
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
int sq_fail(mqs_be_conn *c, int rc, const char *what)
{
    char hint[256];
    sqlite_hint(c, rc, hint, sizeof hint);
    snprintf(c->err, sizeof c->err,
             "sqlite: %s failed on %s: %s (%s, code %d)%s", what, c->path,
             c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc),
             sq_code_name(rc), rc, hint);
    return sqlite_map(rc);
}

int sq_failf(mqs_be_conn *c, int code, const char *fmt, ...)
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
int sq_get(mqs_be_conn *c, enum sqlite_stmt_id id,
           sqlite3_stmt **out)
{
    *out = NULL;
    if (!c->st[id]) {
        int rc = sqlite3_prepare_v3(c->db, sq_sql[id].sql, -1,
                                    SQLITE_PREPARE_PERSISTENT, &c->st[id],
                                    NULL);
        if (rc != SQLITE_OK) {
            char what[160];
            snprintf(what, sizeof what, "preparing the %s statement",
                     sq_sql[id].name);
            sqlite3_finalize(c->st[id]);
            c->st[id] = NULL;
            return sq_fail(c, rc, what);
        }
    }
    *out = c->st[id];
    return 0;
}

/* A bind failed (SQLITE_TOOBIG for an oversized blob, in practice). */
int sq_bind_fail(mqs_be_conn *c, sqlite3_stmt *st,
                 enum sqlite_stmt_id id, int rc)
{
    char what[160];
    snprintf(what, sizeof what, "binding a value of the %s",
             sq_sql[id].name);
    sqlite3_reset(st);
    return sq_fail(c, rc, what);
}

/* Step a statement that returns no rows, then reset it. *changes (may be
 * NULL) gets the number of rows it changed. */
int sq_run(mqs_be_conn *c, sqlite3_stmt *st, enum sqlite_stmt_id id,
           int64_t *changes)
{
    int rc = sqlite3_step(st);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) {
        int ret = sq_fail(c, rc, sq_sql[id].name);
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
int sq_one_int(mqs_be_conn *c, sqlite3_stmt *st,
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
    int ret = sq_fail(c, rc, sq_sql[id].name);
    sqlite3_reset(st);
    return ret;
}

int sq_exec_id(mqs_be_conn *c, enum sqlite_stmt_id id)
{
    sqlite3_stmt *st;
    int rc = sq_get(c, id, &st);
    return rc ? rc : sq_run(c, st, id, NULL);
}


int64_t sq_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
