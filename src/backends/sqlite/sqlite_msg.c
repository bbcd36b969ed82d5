/*
 * sqlite_msg.c - the SQLite backend's schema, transactions, writes, reads
 * and producer marks: SQL on the statements of sqlite_sql.c.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "sqlite_int.h"

/* ---------------------------------------------------------------------------
 * Statement helpers used only here
 * ------------------------------------------------------------------------- */
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
 * Schema
 * ------------------------------------------------------------------------- */
/* Schema version of an mqstore database, 0 for an empty one, MQS_ECORRUPT
 * for anything else. Reads only. */
int sq_probe(mqs_be_conn *c, int *version)
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
            return sq_failf(c, MQS_ECORRUPT,
                            "sqlite: %s is not an mqstore database: file "
                            "is not a database (%s); it was left "
                            "untouched. Point the URI at a new file or an "
                            "mqstore database",
                            c->path, sqlite3_errmsg(c->db));
        if ((rc & 0xff) == SQLITE_CORRUPT)
            return sq_failf(c, MQS_ECORRUPT,
                            "sqlite: %s is corrupt: %s (%s); it was left "
                            "untouched. Restore it from a backup, or "
                            "point the URI at a new file",
                            c->path, sqlite3_errmsg(c->db),
                            sq_code_name(rc));
        return sq_fail(c, rc, "reading the schema (sqlite_master)");
    }
    if (strcmp((const char *)sqlite3_column_text(st, 1), "mqs_meta") != 0 ||
        strcmp((const char *)sqlite3_column_text(st, 0), "table") != 0) {
        rc = sq_failf(c, MQS_ECORRUPT,
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
        return sq_fail(c, rc, "reading mqs_meta.schema_version");
    }
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        char *end = NULL;
        long n = v ? strtol(v, &end, 10) : 0;
        if (!v || !*v || *end || n < 1 || n > INT_MAX) {
            rc = sq_failf(c, MQS_ECORRUPT,
                          "sqlite: %s: mqs_meta.schema_version is '%s', "
                          "not a positive version number; the database "
                          "is damaged: restore it from a backup",
                          c->path, v ? v : "NULL");
        } else {
            *version = (int)n;
            rc = 0;
        }
    } else if (rc == SQLITE_DONE) {
        rc = sq_failf(c, MQS_ECORRUPT,
                      "sqlite: %s: table mqs_meta has no schema_version "
                      "row; the database is damaged: restore it from a "
                      "backup",
                      c->path);
    } else {
        rc = sq_fail(c, rc, "reading mqs_meta.schema_version");
    }
    sqlite3_finalize(st);
    return rc;
}

int sq_schema_version(mqs_be_conn *c, int *version)
{
    return sq_probe(c, version);
}

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
            rc = sq_fail(c, rc, what);
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

int sq_schema_apply(mqs_be_conn *c, const mqs_be_migration *m)
{
    int rc = sq_exec_id(c, ST_BEGIN);
    if (rc)
        return rc;
    /* Re-read under the write lock: two processes opening a new file at
     * once both saw version 0; the second finds the work done. */
    int have;
    rc = sq_probe(c, &have);
    if (rc)
        goto fail;
    if (have >= m->version) {
        rc = sq_exec_id(c, ST_COMMIT);
        if (rc)
            goto fail;
        return 0;
    }
    if (have != m->version - 1) {
        rc = sq_failf(c, MQS_ESCHEMA,
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
    rc = sq_get(c, ST_META_SET, &st);
    if (rc)
        goto fail;
    sqlite3_bind_int(st, 1, m->version); /* stored as TEXT by affinity */
    rc = sq_run(c, st, ST_META_SET, NULL);
    if (rc)
        goto fail;
    rc = sq_exec_id(c, ST_COMMIT);
    if (rc)
        goto fail;
    return 0;
fail:;
    /* keep the first message: ROLLBACK must not overwrite it */
    char keep[sizeof c->err];
    memcpy(keep, c->err, sizeof keep);
    sq_txn_rollback(c);
    memcpy(c->err, keep, sizeof keep);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Write transactions
 * ------------------------------------------------------------------------- */

int sq_txn_begin(mqs_be_conn *c)
{
    c->fence_on = 0;
    return sq_exec_id(c, ST_BEGIN);
}

int sq_txn_commit(mqs_be_conn *c)
{
    /* A fenced transaction checks the row once more after its last write
     * (lock_fence checked it right after BEGIN): the row cannot have
     * changed since (we hold the write lock), but the lease may have run
     * short while the transaction ran. One primary-key read, no write. */
    if (c->fence_on) {
        c->fence_on = 0;
        int rc = sq_fence_check(c);
        if (rc)
            return sq_lock_abort(c, rc); /* rolled back */
    }
    return sq_exec_id(c, ST_COMMIT);
}

int sq_txn_rollback(mqs_be_conn *c)
{
    c->fence_on = 0;
    /* SQLite rolls back by itself on some errors (SQLITE_FULL, IOERR,
     * NOMEM); a ROLLBACK then would fail with "no transaction is active". */
    if (sqlite3_get_autocommit(c->db))
        return 0;
    return sq_exec_id(c, ST_ROLLBACK);
}

/* ---------------------------------------------------------------------------
 * Writes
 * ------------------------------------------------------------------------- */
int sq_dest_resolve(mqs_be_conn *c, mqs_kind kind, const char *name,
                    int create, int64_t *dest_id)
{
    if (kind != MQS_QUEUE && kind != MQS_TOPIC)
        return sq_failf(c, MQS_EINVAL,
                        "sqlite: destination kind %d is neither queue (0) "
                        "nor topic (1)",
                        (int)kind);
    sqlite3_stmt *st;
    int rc = sq_get(c, ST_DEST_GET, &st);
    if (rc)
        return rc;
    sqlite3_bind_int(st, 1, (int)kind);
    if ((rc = sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC)) != SQLITE_OK)
        return sq_bind_fail(c, st, ST_DEST_GET, rc);
    rc = sq_one_int(c, st, ST_DEST_GET, dest_id);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    if (!create)
        return sq_failf(c, MQS_ENOTFOUND, "sqlite: %s '%s' does not exist",
                        kind == MQS_QUEUE ? "queue" : "topic", name);
    if ((rc = sq_get(c, ST_DEST_ADD, &st)))
        return rc;
    sqlite3_bind_int(st, 1, (int)kind);
    if ((rc = sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC)) != SQLITE_OK)
        return sq_bind_fail(c, st, ST_DEST_ADD, rc);
    if ((rc = sq_run(c, st, ST_DEST_ADD, NULL)))
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
    int rc = sq_get(c, ST_SUB_ANY, &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, dest_id);
    rc = sq_one_int(c, st, ST_SUB_ANY, &one);
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
    if ((rc = sq_get(c, ST_MSG_INS, &st)))
        return rc;
    sqlite3_bind_int64(st, 1, m->dest_id);
    sqlite3_bind_int(st, 2, (int)m->kind);
    sqlite3_bind_int(st, 3, m->priority);
    sqlite3_bind_int64(st, 4, m->expires_ms);
    sqlite3_bind_int64(st, 5, m->enqueued_ms);
    if ((rc = sqlite_bind_bytes(st, 6, m->headers, m->headers_len)) ||
        (rc = sqlite_bind_bytes(st, 7, m->body, m->body_len)))
        return sq_bind_fail(c, st, ST_MSG_INS, rc);
    rc = sq_run(c, st, ST_MSG_INS, NULL);
    /* drop the borrowed blob pointers now that the row is written */
    sqlite3_clear_bindings(st);
    if (rc)
        return rc;
    int64_t id = sqlite3_last_insert_rowid(c->db);
    if (m->kind == MQS_TOPIC) {
        if ((rc = sq_get(c, ST_PEND_INS, &st)))
            return rc;
        sqlite3_bind_int64(st, 1, m->dest_id);
        sqlite3_bind_int64(st, 2, id);
        sqlite3_bind_int(st, 3, m->priority);
        if ((rc = sq_run(c, st, ST_PEND_INS, NULL)))
            return rc;
    }
    m->id = id;
    return 0;
}

int sq_msg_insert(mqs_be_conn *c, mqs_be_msg *m, size_t n)
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
        if ((rc = sq_get(c, ST_ACK_Q, &st)))
            return rc;
        sqlite3_bind_int64(st, 1, r->id);
        return sq_run(c, st, ST_ACK_Q, NULL);
    }
    if ((rc = sq_get(c, ST_ACK_P, &st)))
        return rc;
    sqlite3_bind_int64(st, 1, r->id);
    sqlite3_bind_int64(st, 2, r->sub_id);
    if ((rc = sq_run(c, st, ST_ACK_P, &changed)))
        return rc;
    if (changed == 0)
        return 0; /* replayed ack: the message was already handled */
    if ((rc = sq_get(c, ST_ACK_ORPHAN, &st)))
        return rc;
    sqlite3_bind_int64(st, 1, r->id);
    return sq_run(c, st, ST_ACK_ORPHAN, NULL);
}

int sq_msg_ack(mqs_be_conn *c, const mqs_be_ref *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int rc = sqlite_msg_ack_one(c, &r[i]);
        if (rc)
            return rc;
    }
    return 0;
}

int sq_msg_nack(mqs_be_conn *c, const mqs_be_ref *r)
{
    sqlite3_stmt *st;
    enum sqlite_stmt_id id = r->sub_id ? ST_NACK_P : ST_NACK_Q;
    int rc = sq_get(c, id, &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, r->id);
    if (r->sub_id)
        sqlite3_bind_int64(st, 2, r->sub_id);
    return sq_run(c, st, id, NULL);
}

int sq_sub_create(mqs_be_conn *c, int64_t topic_id,
                  const char *name, int64_t *sub_id)
{
    sqlite3_stmt *st;
    int rc = sq_get(c, ST_SUB_GET, &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, topic_id);
    if ((rc = sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC)) != SQLITE_OK)
        return sq_bind_fail(c, st, ST_SUB_GET, rc);
    rc = sq_one_int(c, st, ST_SUB_GET, sub_id);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    if ((rc = sq_get(c, ST_SUB_ADD, &st)))
        return rc;
    sqlite3_bind_int64(st, 1, topic_id);
    if ((rc = sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC)) != SQLITE_OK)
        return sq_bind_fail(c, st, ST_SUB_ADD, rc);
    sqlite3_bind_int64(st, 3, sqlite_now_ms());
    int64_t changed = 0;
    if ((rc = sq_run(c, st, ST_SUB_ADD, &changed)))
        return rc;
    if (changed == 0)
        return sq_failf(c, MQS_ENOTFOUND,
                        "sqlite: cannot create subscription '%s': topic "
                        "id %lld does not exist in %s (or is a queue)",
                        name, (long long)topic_id, c->path);
    *sub_id = sqlite3_last_insert_rowid(c->db);
    return 0;
}

int sq_sub_remove(mqs_be_conn *c, int64_t sub_id)
{
    static const enum sqlite_stmt_id steps[] = {ST_SUB_RM_ORPHANS,
                                                ST_SUB_RM_PEND, ST_SUB_RM};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        sqlite3_stmt *st;
        int rc = sq_get(c, steps[i], &st);
        if (rc)
            return rc;
        sqlite3_bind_int64(st, 1, sub_id);
        if ((rc = sq_run(c, st, steps[i], NULL)))
            return rc;
    }
    return 0;
}

int sq_purge(mqs_be_conn *c, int64_t dest_id, uint64_t *removed)
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
        int rc = sq_get(c, steps[i], &st);
        if (rc)
            return rc;
        if (dest_id)
            sqlite3_bind_int64(st, 1, dest_id);
        if ((rc = sq_run(c, st, steps[i], &changed)))
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
int sq_sub_lookup(mqs_be_conn *c, const char *topic,
                  const char *name, int64_t *sub_id)
{
    sqlite3_stmt *st;
    int rc = sq_get(c, ST_SUB_LOOKUP, &st);
    if (rc)
        return rc;
    if ((rc = sqlite3_bind_text(st, 1, topic, -1, SQLITE_STATIC)) ||
        (rc = sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC)))
        return sq_bind_fail(c, st, ST_SUB_LOOKUP, rc);
    rc = sq_one_int(c, st, ST_SUB_LOOKUP, sub_id);
    if (rc == 0)
        return sq_failf(c, MQS_ENOTFOUND,
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
            return sq_failf(c, MQS_ENOMEM,
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
        int ret = sq_fail(c, rc, sq_sql[id].name);
        sqlite3_reset(st);
        return ret;
    }
    sqlite3_reset(st);
    return 0;
}

int sq_page_read(mqs_be_conn *c, const mqs_be_page *p,
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
    int rc = sq_get(c, id, &st);
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
    if ((rc = sq_get(c, id, &st)))
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
    int rc = sq_get(c, id, &st);
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
        int ret = sq_fail(c, rc, sq_sql[id].name);
        sqlite3_reset(st);
        return ret;
    }
    sqlite3_reset(st);
    return 0;
}

int sq_dest_list(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud)
{
    return sqlite_dest_rows(c, ST_DEST_LIST, cb, ud);
}

int sq_dest_names(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud)
{
    return sqlite_dest_rows(c, ST_DEST_NAMES, cb, ud);
}

/* The newest rows of mqs_msg, for the producer audit (ABI 2.3). */
int sq_msg_recent(mqs_be_conn *c, size_t limit, mqs_be_header_cb cb,
                  void *ud)
{
    sqlite3_stmt *st;
    int rc = sq_get(c, ST_MSG_RECENT, &st);
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
            return sq_failf(c, MQS_ENOMEM, "sqlite: out of memory reading "
                            "the headers of message %lld", (long long)id);
        }
        if (cb(ud, id, h, hlen) != 0)
            break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        int ret = sq_fail(c, rc, sq_sql[ST_MSG_RECENT].name);
        sqlite3_reset(st);
        return ret;
    }
    sqlite3_reset(st);
    return 0;
}

/* ---------------------------------------------------------------------------
 * Producer marks (ABI 2.1)
 * ------------------------------------------------------------------------- */
int sq_mark_put(mqs_be_conn *c, const char *producer, int64_t seq,
                int64_t now_ms)
{
    sqlite3_stmt *st;
    int rc = sq_get(c, ST_MARK_PUT, &st);
    if (rc)
        return rc;
    sqlite3_bind_text(st, 1, producer, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, seq);
    sqlite3_bind_int64(st, 3, now_ms);
    return sq_run(c, st, ST_MARK_PUT, NULL);
}

int sq_mark_list(mqs_be_conn *c, mqs_be_mark_cb cb, void *ud)
{
    sqlite3_stmt *st;
    int rc = sq_get(c, ST_MARK_LIST, &st);
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
        int ret = sq_fail(c, rc, sq_sql[ST_MARK_LIST].name);
        sqlite3_reset(st);
        return ret;
    }
    sqlite3_reset(st);
    return stop;
}

int sq_mark_prune(mqs_be_conn *c, int64_t before_ms,
                  uint64_t *removed)
{
    sqlite3_stmt *st;
    int64_t n = 0;
    int rc = sq_get(c, ST_MARK_PRUNE, &st);
    if (rc)
        return rc;
    sqlite3_bind_int64(st, 1, before_ms);
    rc = sq_run(c, st, ST_MARK_PRUNE, &n);
    if (removed)
        *removed = rc ? 0 : (uint64_t)n;
    return rc;
}

