/*
 * mysql_msg.c - MySQL / MariaDB backend: schema, transactions,
 * destinations, subscriptions, inserts, acks, reads, marks
 * (part of mqstore_mysql.so; see mysql.c for the design choices).
 */
#include "mysql_int.h"

/* ------------------------------------------------------------------------
 * Schema
 * ---------------------------------------------------------------------- */

int my_schema_version(mqs_be_conn *c, int *version)
{
    static const char q[] =
        "SELECT TABLE_NAME FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN "
        "('mqs_meta', 'mqs_dest', 'mqs_sub', 'mqs_msg', 'mqs_pending', 'mqs_lock') "
        "ORDER BY TABLE_NAME";
    MYSQL_RES *res;
    MYSQL_ROW row;
    char found[160] = "";
    int has_meta = 0, n = 0, rc;
    int64_t v;

    *version = 0;
    MY_CHECK_CONN(c);
    rc = my_query(c, "reading the table list (schema version)", q, sizeof q - 1, &res);
    if (rc)
        return rc;
    while ((row = mysql_fetch_row(res))) {
        if (row[0] && strcmp(row[0], "mqs_meta") == 0)
            has_meta = 1;
        else if (row[0] && strlen(found) + strlen(row[0]) + 3 < sizeof found)
            snprintf(found + strlen(found), sizeof found - strlen(found), "%s%s",
                     n++ ? ", " : "", row[0]);
    }
    mysql_free_result(res);
    if (!has_meta) {
        if (n == 0)
            return 0; /* nothing of ours: an empty (or foreign) database */
        return my_errf(c, MQS_ECORRUPT,
                       "mysql: %s has tables %s but no mqs_meta: a migration "
                       "stopped halfway (MySQL DDL is not transactional) or the "
                       "tables belong to something else; if they hold nothing "
                       "you need, DROP them and open again",
                       c->uri, found);
    }
    int got;
    rc = my_query_i64(c, "reading mqs_meta",
                      "SELECT CAST(`value` AS SIGNED) FROM mqs_meta "
                      "WHERE `key` = 'schema_version' AND `value` REGEXP '^[0-9]+$'",
                      &v, &got);
    if (rc)
        return rc;
    if (!got || v < 1 || v > INT_MAX)
        return my_errf(c, MQS_ECORRUPT,
                       "mysql: %s: mqs_meta has no valid schema_version row: not "
                       "an mqstore database, or damaged",
                       c->uri);
    *version = (int)v;
    return 0;
}

/* Run a script of several statements; *failed_at gets the number of the
 * statement that failed. */
static int my_run_script(mqs_be_conn *c, const mqs_be_migration *m, int *failed_at)
{
    char what[160];
    int n = 1, rc = 0, status;

    if (mysql_set_server_option(c->db, MYSQL_OPTION_MULTI_STATEMENTS_ON))
        return my_fail_db(c, "enabling multi-statements for the migration", 0);
    snprintf(what, sizeof what, "migration %s, statement 1", m->name);
    if (mysql_real_query(c->db, m->sql, (unsigned long)strlen(m->sql))) {
        rc = my_fail_db(c, what, 0);
    } else {
        for (;;) {
            MYSQL_RES *r = mysql_store_result(c->db);
            mysql_free_result(r);
            status = mysql_next_result(c->db);
            if (status == -1)
                break;
            n++;
            if (status > 0) {
                snprintf(what, sizeof what, "migration %s, statement %d", m->name, n);
                rc = my_fail_db(c, what, 0);
                break;
            }
        }
    }
    *failed_at = n;
    /* Only migrations run several statements in one call. */
    if (!c->broken && mysql_set_server_option(c->db, MYSQL_OPTION_MULTI_STATEMENTS_OFF) &&
        !rc)
        rc = my_fail_db(c, "disabling multi-statements", 0);
    return rc;
}

int my_schema_apply(mqs_be_conn *c, const mqs_be_migration *m)
{
    char sql[256];
    int64_t got = 0;
    int found, rc, cur, failed_at = 0;
    /* The wait must end before read_timeout declares the connection dead. */
    unsigned wait_s = MY_MIGRATE_LOCK_S;
    if (c->read_timeout && c->read_timeout / 2 < wait_s)
        wait_s = c->read_timeout / 2 ? c->read_timeout / 2 : 1;

    MY_CHECK_CONN(c);
    /* Several nodes may start at once on an empty database: one migrates,
     * the others wait here and then find the work done. */
    snprintf(sql, sizeof sql,
             "SELECT GET_LOCK(CONCAT('mqstore-migrate-', MD5(DATABASE())), %u)", wait_s);
    rc = my_query_i64(c, "taking the migration lock (GET_LOCK)", sql, &got, &found);
    if (rc)
        return rc;
    if (!found || got != 1)
        return my_errf(c, MQS_EBUSY,
                       "mysql: %s: another process has held the migration lock "
                       "for %u s (GET_LOCK('mqstore-migrate-...')); is a migration "
                       "stuck? see SHOW PROCESSLIST",
                       c->uri, wait_s);

    rc = my_schema_version(c, &cur);
    if (!rc && cur >= m->version)
        goto unlock; /* another node did it meanwhile */
    if (!rc && cur != m->version - 1) {
        rc = my_errf(c, MQS_ESCHEMA,
                     "mysql: %s: cannot apply migration %d (%s) to schema version %d",
                     c->uri, m->version, m->name, cur);
        goto unlock;
    }
    if (!rc) {
        rc = my_run_script(c, m, &failed_at);
        if (rc && !c->broken) {
            size_t l = strlen(c->err);
            snprintf(c->err + l, sizeof c->err - l,
                     "; MySQL DDL is not transactional: statements before %d took "
                     "effect and must be undone (DROP the mqs_* tables it created) "
                     "before retrying",
                     failed_at);
        }
    }
    if (!rc) {
        snprintf(sql, sizeof sql,
                 "INSERT INTO mqs_meta (`key`, `value`) VALUES ('schema_version', '%d') "
                 "ON DUPLICATE KEY UPDATE `value` = '%d'",
                 m->version, m->version);
        rc = my_exec(c, "START TRANSACTION (schema version)", "START TRANSACTION", NULL);
        if (!rc)
            rc = my_exec(c, "recording the schema version in mqs_meta", sql, NULL);
        if (!rc)
            rc = my_exec_ex(c, "COMMIT (schema version)", "COMMIT", 6, NULL, 1);
        else if (!c->broken)
            mysql_real_query(c->db, "ROLLBACK", 8);
    }
unlock:
    if (!c->broken) {
        char keep[sizeof c->err];
        memcpy(keep, c->err, sizeof keep);
        int urc = my_exec(c, "releasing the migration lock",
                          "DO RELEASE_LOCK(CONCAT('mqstore-migrate-', MD5(DATABASE())))",
                          NULL);
        if (rc)
            memcpy(c->err, keep, sizeof keep);
        else
            rc = urc;
    }
    return rc;
}

/* ------------------------------------------------------------------------
 * Transactions
 * ---------------------------------------------------------------------- */


/* Lazy: nothing is sent until the transaction's first statement (see
 * start_pending in mysql_int.h), so a lone insert can go autocommitted. */
int my_txn_begin(mqs_be_conn *c)
{
    c->held_failed = 0;
    c->fence_on = 0;
    c->held = NULL;
    c->held_n = 0;
    c->start_pending = 0;
    MY_CHECK_CONN(c);
    c->start_pending = 1;
    return 0;
}

static int my_insert_now(mqs_be_conn *c, mqs_be_msg *m, size_t n);

/* Ends the pending start and hands over the held insert (NULL if none),
 * with its count in *n: whoever runs it next owns it. */
static mqs_be_msg *my_take_held(mqs_be_conn *c, size_t *n)
{
    mqs_be_msg *m = c->held;
    *n = c->held_n;
    c->start_pending = 0;
    c->held = NULL;
    c->held_n = 0;
    return m;
}

int my_txn_start(mqs_be_conn *c)
{
    if (!c->start_pending)
        return 0;
    /* before the statements below, which check start_pending */
    size_t n;
    mqs_be_msg *m = my_take_held(c, &n);
    int rc = my_exec_ex(c, "START TRANSACTION", "START TRANSACTION", 17, NULL, 0);
    if (!rc && m)
        rc = my_insert_now(c, m, n);
    return rc;
}

static int my_insert_fenced(mqs_be_conn *c, mqs_be_msg *m);
static int my_autocommit_ready(mqs_be_conn *c, size_t n);

/* With a fence (lock_fence), the check is the last statement before
 * COMMIT: after every write, and the share lock it takes on the lock row
 * is held only for the COMMIT. A failed check leaves the transaction open
 * for the core's txn_rollback and keeps the fence, so a second txn_commit
 * fails the same way instead of committing.
 *
 * A transaction whose only statement is a held insert is that insert
 * autocommitted: the server commits it as it runs it, or rolls it back on
 * any error, as it would an explicit one; a connection lost during it
 * leaves the outcome unknown, as during COMMIT. With a fence (one message,
 * see my_msg_insert) the check is inside that INSERT (my_insert_fenced). */
int my_txn_commit(mqs_be_conn *c)
{
    int rc;

    MY_CHECK_CONN(c);
    if (c->held_failed)
        return my_errf(c, MQS_ESTATE,
                       "mysql: %s: COMMIT after this transaction's insert "
                       "failed: roll it back",
                       c->uri);
    if (c->start_pending && (!c->fence_on || c->held)) {
        size_t n;
        mqs_be_msg *m = my_take_held(c, &n);
        if (!m)
            return 0; /* nothing was written */
        /* A failure before the statement is sent is retryable, only one
         * during it is of unknown outcome: prepare it (its own round trip
         * on a new connection) and check the connection first. */
        rc = my_autocommit_ready(c, n);
        if (!rc) {
            c->in_autocommit_write = 1;
            rc = c->fence_on ? my_insert_fenced(c, m) : my_insert_now(c, m, n);
            c->in_autocommit_write = 0;
        }
        if (!rc)
            c->fence_on = 0;
        else
            c->held_failed = 1;
        return rc;
    }
    MY_TXN_START(c);
    if (c->fence_on && (rc = my_fence_check(c)))
        return rc;
    rc = my_exec_ex(c, "COMMIT", "COMMIT", 6, NULL, 1);
    if (!rc)
        c->fence_on = 0;
    return rc;
}

int my_txn_rollback(mqs_be_conn *c)
{
    c->fence_on = 0;
    c->held = NULL;
    c->held_n = 0;
    if (c->start_pending || c->held_failed) { /* nothing is open */
        c->start_pending = 0;
        c->held_failed = 0;
        return 0;
    }
    MY_CHECK_CONN(c);
    return my_exec_ex(c, "ROLLBACK", "ROLLBACK", 8, NULL, 0);
}

/* The lock's own transactions (acquire, release, force) and the renewal
 * must not run inside a write transaction: START TRANSACTION would commit
 * it, an autocommitted UPDATE would join it. No round trip: the server
 * reports its transaction state with every reply. */
int my_not_in_txn(mqs_be_conn *c, const char *what)
{
    if (c->start_pending || (c->db->server_status & SERVER_STATUS_IN_TRANS))
        return my_errf(c, MQS_EINVAL,
                       "mysql: %s called inside an open transaction on %s; it "
                       "runs in its own transaction",
                       what, c->uri);
    return 0;
}

/* ------------------------------------------------------------------------
 * Destinations and subscriptions
 * ---------------------------------------------------------------------- */

int my_dest_resolve(mqs_be_conn *c, mqs_kind kind, const char *name, int create,
                    int64_t *dest_id)
{
    MYSQL_BIND b[2];
    unsigned long len;
    int32_t k = (int32_t)kind;
    int found, rc;
    const char *kn = kind == MQS_TOPIC ? "topic" : "queue";

    MY_CHECK_CONN(c);
    *dest_id = 0;
    my_bind_i32(&b[0], &k);
    my_bind_str(&b[1], name, &len);
    /* A plain read first: the INSERT below would lock the row. */
    rc = my_st_run(c, MY_ST_DEST_GET, "looking up a destination in mqs_dest", b, dest_id,
                   &found, NULL);
    if (rc || found)
        return rc;
    if (!create)
        return my_errf(c, MQS_ENOTFOUND, "mysql: no %s named '%.255s' in %s", kn, name,
                       c->uri);
    return my_st_run(c, MY_ST_DEST_ADD, "creating a destination in mqs_dest", b, NULL,
                     NULL, dest_id);
}

int my_sub_create(mqs_be_conn *c, int64_t topic_id, const char *name,
                  int64_t *sub_id)
{
    MYSQL_BIND b[2];
    unsigned long len;
    int found, rc;

    MY_CHECK_CONN(c);
    *sub_id = 0;
    my_bind_i64(&b[0], &topic_id);
    my_bind_str(&b[1], name, &len);
    rc = my_st_run(c, MY_ST_SUB_GET, "looking up a subscription in mqs_sub", b, sub_id,
                   &found, NULL);
    if (rc || found)
        return rc;
    return my_st_run(c, MY_ST_SUB_ADD, "creating a subscription in mqs_sub", b, NULL,
                     NULL, sub_id);
}

int my_sub_lookup(mqs_be_conn *c, const char *topic, const char *name,
                  int64_t *sub_id)
{
    MYSQL_BIND b[2];
    unsigned long l1, l2;
    int found, rc;

    MY_CHECK_CONN(c);
    *sub_id = 0;
    my_bind_str(&b[0], topic, &l1);
    my_bind_str(&b[1], name, &l2);
    rc = my_st_run(c, MY_ST_SUB_LOOKUP, "looking up a subscription", b, sub_id, &found,
                   NULL);
    if (rc)
        return rc;
    if (!found)
        return my_errf(c, MQS_ENOTFOUND,
                       "mysql: no subscription '%.255s' on topic '%.255s' in %s", name,
                       topic, c->uri);
    return 0;
}

/* ------------------------------------------------------------------------
 * Acks
 * ---------------------------------------------------------------------- */

/* Queue acks (sub_id 0) of r[0..n): DELETE ... IN (...) per chunk. */
static int my_ack_queue(mqs_be_conn *c, const mqs_be_ref *r, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t cnt = 0;
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "DELETE FROM mqs_msg WHERE kind = 0 AND id IN (");
        for (; i < n && cnt < c->in_max; i++)
            if (r[i].sub_id == 0)
                my_sb_printf(&c->sql, "%s%" PRId64, cnt++ ? "," : "", r[i].id);
        if (!cnt)
            break;
        my_sb_printf(&c->sql, ")");
        int rc = my_exec_sb(c, "deleting acked queue messages from mqs_msg", NULL);
        if (rc)
            return rc;
    }
    return 0;
}

/* Subscription acks (sub_id != 0) of r[0..n): delete the pending rows,
 * then the messages no subscription holds any more. *removed (may be
 * NULL) gets the number of pending rows deleted. */
static int my_ack_topic(mqs_be_conn *c, const mqs_be_ref *r, size_t n, uint64_t *removed)
{
    size_t i = 0;
    if (removed)
        *removed = 0;
    while (i < n) {
        size_t start = i, cnt = 0;
        uint64_t gone = 0;
        int rc;

        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "DELETE FROM mqs_pending WHERE (sub_id, msg_id) IN (");
        for (; i < n && cnt < c->in_max; i++)
            if (r[i].sub_id != 0)
                my_sb_printf(&c->sql, "%s(%" PRId64 ",%" PRId64 ")", cnt++ ? "," : "",
                             r[i].sub_id, r[i].id);
        if (!cnt)
            break;
        my_sb_printf(&c->sql, ")");
        rc = my_exec_sb(c, "deleting acked entries from mqs_pending", &gone);
        if (rc)
            return rc;
        if (removed)
            *removed += gone;
        if (!gone)
            continue;
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "DELETE FROM mqs_msg WHERE kind = 1 AND id IN (");
        cnt = 0;
        for (size_t j = start; j < i; j++)
            if (r[j].sub_id != 0)
                my_sb_printf(&c->sql, "%s%" PRId64, cnt++ ? "," : "", r[j].id);
        my_sb_printf(&c->sql, ") AND NOT EXISTS (SELECT 1 FROM mqs_pending p "
                              "WHERE p.msg_id = mqs_msg.id)");
        rc = my_exec_sb(c, "deleting fully acked topic messages from mqs_msg", NULL);
        if (rc)
            return rc;
    }
    return 0;
}

int my_msg_ack(mqs_be_conn *c, const mqs_be_ref *r, size_t n)
{
    int rc;
    MY_CHECK_CONN(c);
    rc = my_ack_queue(c, r, n);
    if (!rc)
        rc = my_ack_topic(c, r, n, NULL);
    return rc;
}

int my_msg_nack(mqs_be_conn *c, const mqs_be_ref *r)
{
    char sql[200];
    MY_CHECK_CONN(c);
    if (r->sub_id == 0)
        snprintf(sql, sizeof sql,
                 "UPDATE mqs_msg SET redeliveries = redeliveries + 1 "
                 "WHERE id = %" PRId64 " AND kind = 0",
                 r->id);
    else
        snprintf(sql, sizeof sql,
                 "UPDATE mqs_pending SET redeliveries = redeliveries + 1 "
                 "WHERE sub_id = %" PRId64 " AND msg_id = %" PRId64,
                 r->sub_id, r->id);
    return my_exec(c, "counting a redelivery (nack)", sql, NULL);
}

int my_sub_remove(mqs_be_conn *c, int64_t sub_id)
{
    char sql[200];
    mqs_be_ref *refs;
    int rc;

    MY_CHECK_CONN(c);
    /* The subscription row first: its X lock makes concurrent publishers
     * (which read mqs_sub with LOCK IN SHARE MODE) wait, so none can add a
     * pending row for it after the loop below. */
    snprintf(sql, sizeof sql, "DELETE FROM mqs_sub WHERE id = %" PRId64, sub_id);
    rc = my_exec(c, "deleting the subscription from mqs_sub", sql, NULL);
    if (rc)
        return rc;
    refs = malloc(c->in_max * sizeof *refs);
    if (!refs)
        return my_oom(c, "sub_remove");
    /* Its pending rows are acked chunk by chunk: bounded memory, and the
     * same index-friendly statements as acks. */
    snprintf(sql, sizeof sql,
             "SELECT msg_id FROM mqs_pending WHERE sub_id = %" PRId64
             " ORDER BY msg_id LIMIT %zu",
             sub_id, c->in_max);
    for (;;) {
        MYSQL_RES *res;
        MYSQL_ROW row;
        size_t n = 0;
        uint64_t gone;

        rc = my_query(c, "listing the subscription's pending messages", sql, strlen(sql),
                      &res);
        if (rc)
            break;
        while ((row = mysql_fetch_row(res)) && n < c->in_max) {
            refs[n].id = my_i64(row[0]);
            refs[n].sub_id = sub_id;
            n++;
        }
        mysql_free_result(res);
        if (n == 0)
            break;
        rc = my_ack_topic(c, refs, n, &gone);
        if (rc)
            break;
        if (gone == 0) { /* cannot happen; never loop forever */
            rc = my_errf(c, MQS_EIO,
                         "mysql: %s: pending rows of subscription %" PRId64
                         " listed but not deleted",
                         c->uri, sub_id);
            break;
        }
    }
    free(refs);
    return rc;
}

int my_purge(mqs_be_conn *c, int64_t dest_id, uint64_t *removed)
{
    char sql[3][200];
    uint64_t q = 0, p = 0;
    int rc;

    MY_CHECK_CONN(c);
    if (removed)
        *removed = 0;
    if (dest_id == 0) {
        snprintf(sql[0], sizeof sql[0], "DELETE FROM mqs_msg WHERE kind = 0");
        snprintf(sql[1], sizeof sql[1], "DELETE FROM mqs_pending");
        snprintf(sql[2], sizeof sql[2], "DELETE FROM mqs_msg WHERE kind = 1");
    } else {
        snprintf(sql[0], sizeof sql[0],
                 "DELETE FROM mqs_msg WHERE dest_id = %" PRId64 " AND kind = 0", dest_id);
        snprintf(sql[1], sizeof sql[1],
                 "DELETE p FROM mqs_pending p JOIN mqs_sub s ON s.id = p.sub_id "
                 "WHERE s.dest_id = %" PRId64,
                 dest_id);
        snprintf(sql[2], sizeof sql[2],
                 "DELETE FROM mqs_msg WHERE dest_id = %" PRId64 " AND kind = 1", dest_id);
    }
    rc = my_exec(c, "purging queue messages from mqs_msg", sql[0], &q);
    if (!rc)
        rc = my_exec(c, "purging subscription entries from mqs_pending", sql[1], &p);
    if (!rc)
        rc = my_exec(c, "purging topic messages from mqs_msg", sql[2], NULL);
    if (!rc && removed)
        *removed = q + p;
    return rc;
}

/* ------------------------------------------------------------------------
 * Inserts
 * ---------------------------------------------------------------------- */

static int my_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* The prepared INSERT of 2^shift rows. */
static int my_ins_stmt(mqs_be_conn *c, unsigned shift, MYSQL_STMT **out)
{
    if (!c->ins[shift]) {
        unsigned rows = 1u << shift;
        MYSQL_STMT *s;
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "INSERT INTO mqs_msg (dest_id, kind, priority, expires_ms, "
                              "enqueued_ms, headers, body) VALUES ");
        for (unsigned i = 0; i < rows; i++)
            my_sb_printf(&c->sql, "%s(?,?,?,?,?,?,?)", i ? "," : "");
        if (c->sql.oom)
            return my_oom(c, "preparing an INSERT");
        if (!(s = mysql_stmt_init(c->db)))
            return my_oom(c, "mysql_stmt_init");
        if (mysql_stmt_prepare(s, c->sql.p, (unsigned long)c->sql.len)) {
            int rc = my_fail_stmt(c, s, "preparing the multi-row INSERT into mqs_msg");
            mysql_stmt_close(s);
            return rc;
        }
        c->ins[shift] = s;
    }
    *out = c->ins[shift];
    return 0;
}

static void my_bind_blob(MYSQL_BIND *b, const void *p, size_t len, unsigned long *lp)
{
    memset(b, 0, sizeof *b);
    if (!p) {
        b->buffer_type = MYSQL_TYPE_NULL;
        return;
    }
    *lp = (unsigned long)len;
    b->buffer_type = MYSQL_TYPE_BLOB;
    b->buffer = (void *)(uintptr_t)p; /* only read: the API has no const */
    b->buffer_length = *lp;
    b->length = lp;
}

/* Insert m[idx[0..k)] (k a power of two) with one statement and set their
 * ids. */
static int my_insert_rows(mqs_be_conn *c, mqs_be_msg *m, const size_t *idx, unsigned shift)
{
    unsigned k = 1u << shift;
    MYSQL_STMT *s = NULL;
    int rc = my_ins_stmt(c, shift, &s);
    if (rc)
        return rc;
    for (unsigned j = 0; j < k; j++) {
        mqs_be_msg *x = &m[idx[j]];
        MYSQL_BIND *b = c->bind + (size_t)j * MY_INS_COLS;
        c->ints[2 * j] = (int32_t)x->kind;
        c->ints[2 * j + 1] = (int32_t)x->priority;
        my_bind_i64(&b[0], &x->dest_id);
        my_bind_i32(&b[1], &c->ints[2 * j]);
        my_bind_i32(&b[2], &c->ints[2 * j + 1]);
        my_bind_i64(&b[3], &x->expires_ms);
        my_bind_i64(&b[4], &x->enqueued_ms);
        my_bind_blob(&b[5], x->headers, x->headers_len, &c->lens[2 * j]);
        my_bind_blob(&b[6], x->body, x->body_len, &c->lens[2 * j + 1]);
    }
    if (mysql_stmt_bind_param(s, c->bind) || mysql_stmt_execute(s)) {
        char what[96];
        snprintf(what, sizeof what, "inserting %u message%s into mqs_msg", k,
                 k == 1 ? "" : "s");
        return my_fail_stmt(c, s, what);
    }
    /* One "simple insert" of k rows: with innodb_autoinc_lock_mode 0/1 its
     * ids are first, first + step, ... (checked at connect). */
    uint64_t affected = (uint64_t)mysql_stmt_affected_rows(s);
    int64_t first = (int64_t)mysql_stmt_insert_id(s);
    if (affected != k || first <= 0)
        return my_errf(c, MQS_EIO,
                       "mysql: %s: INSERT of %u messages reported %" PRIu64
                       " rows and first id %" PRId64,
                       c->uri, k, affected, first);
    for (unsigned j = 0; j < k; j++)
        m[idx[j]].id = first + (int64_t)j * c->autoinc_step;
    return 0;
}

/* The held insert's statement prepared, and the connection still open
 * (my_session_ended), before txn_commit runs it autocommitted. */
static int my_autocommit_ready(mqs_be_conn *c, size_t n)
{
    MYSQL_STMT *s = NULL;
    int rc = c->fence_on ? my_st_get(c, MY_ST_INS_FENCED, &s)
                         : my_ins_stmt(c, (unsigned)__builtin_ctzll(n), &s);
    if (!rc)
        rc = my_session_ended(c, "writing a message");
    return rc;
}

/* The held message of a fenced transaction, autocommitted, in one round
 * trip: INSERT ... SELECT from the lock row WHERE it names this node and
 * token with at least the margin of lease left by the server's clock,
 * LOCK IN SHARE MODE. The locking read sees the row's latest committed
 * version whatever the isolation level, and its share lock is held until
 * the statement commits, so a takeover (an UPDATE of that row, which needs
 * the exclusive lock) commits either before the read, and the INSERT then
 * writes nothing, or after this commit: the same argument as the check
 * before an explicit COMMIT, with nothing between check and commit. The
 * whole statement is one packet, so a frozen client cannot hold the share
 * lock. No row inserted means fenced: the check's own query then says
 * why. */
static int my_insert_fenced(mqs_be_conn *c, mqs_be_msg *m)
{
    static const char what[] = "inserting a message into mqs_msg (fenced)";
    MYSQL_STMT *s = NULL;
    MYSQL_BIND b[11];
    int32_t kind = (int32_t)m->kind, prio = (int32_t)m->priority;
    unsigned long lh, lb, lc, ln;
    int64_t token = c->fence_token, margin = c->fence_margin_ms;

    m->id = 0;
    int rc = my_st_get(c, MY_ST_INS_FENCED, &s);
    if (rc)
        return rc;
    my_bind_i64(&b[0], &m->dest_id);
    my_bind_i32(&b[1], &kind);
    my_bind_i32(&b[2], &prio);
    my_bind_i64(&b[3], &m->expires_ms);
    my_bind_i64(&b[4], &m->enqueued_ms);
    my_bind_blob(&b[5], m->headers, m->headers_len, &lh);
    my_bind_blob(&b[6], m->body, m->body_len, &lb);
    my_bind_blob(&b[7], c->fence_cluster, strlen(c->fence_cluster), &lc);
    my_bind_blob(&b[8], c->fence_node, strlen(c->fence_node), &ln);
    my_bind_i64(&b[9], &token);
    my_bind_i64(&b[10], &margin);
    if (mysql_stmt_bind_param(s, b) || mysql_stmt_execute(s))
        return my_fail_stmt(c, s, what);
    uint64_t affected = (uint64_t)mysql_stmt_affected_rows(s);
    if (affected == 1) {
        int64_t id = (int64_t)mysql_stmt_insert_id(s);
        if (id <= 0)
            return my_errf(c, MQS_EIO,
                           "mysql: %s: the fenced INSERT reported id %" PRId64,
                           c->uri, id);
        m->id = id;
        return 0;
    }
    /* Nothing was written, and nothing is open. The check, alone, tells
     * who holds the lock now; if it passes by now (the lease renewed
     * meanwhile), the insert still did not happen. */
    c->in_autocommit_write = 0;
    if ((rc = my_fence_check(c)))
        return rc;
    return my_errf(c, MQS_EFENCED,
                   "mysql: node %s (token %" PRId64 ") could not commit on %s: "
                   "when its insert ran, the lock of cluster '%s' was held by "
                   "another node or token or had less than %" PRId64
                   " ms of lease left; fenced, nothing was written",
                   c->fence_node, c->fence_token, c->uri, c->fence_cluster,
                   c->fence_margin_ms);
}

/* Subscription counts of the topics among m[0..n): sorted topic ids in
 * *tids with counts in *tcnt (caller frees both). The rows are read with
 * LOCK IN SHARE MODE so no subscription disappears before the pending rows
 * are written. */
static int my_topic_subs(mqs_be_conn *c, const mqs_be_msg *m, size_t n, int64_t **tids,
                         int64_t **tcnt, size_t *nt)
{
    size_t t = 0;
    int64_t *ids, *cnt;

    *tids = *tcnt = NULL;
    *nt = 0;
    for (size_t i = 0; i < n; i++)
        t += m[i].kind == MQS_TOPIC;
    if (!t)
        return 0;
    ids = malloc(t * sizeof *ids);
    cnt = calloc(t, sizeof *cnt);
    if (!ids || !cnt) {
        free(ids);
        free(cnt);
        return my_oom(c, "msg_insert");
    }
    t = 0;
    for (size_t i = 0; i < n; i++)
        if (m[i].kind == MQS_TOPIC)
            ids[t++] = m[i].dest_id;
    qsort(ids, t, sizeof *ids, my_cmp_i64);
    size_t u = 0;
    for (size_t i = 0; i < t; i++)
        if (u == 0 || ids[u - 1] != ids[i])
            ids[u++] = ids[i];
    *tids = ids;
    *tcnt = cnt;
    *nt = u;

    for (size_t i = 0; i < u;) {
        MYSQL_RES *res;
        MYSQL_ROW row;
        size_t k = 0;
        int rc;
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "SELECT dest_id, COUNT(*) FROM mqs_sub WHERE dest_id IN (");
        for (; i < u && k < c->in_max; i++, k++)
            my_sb_printf(&c->sql, "%s%" PRId64, k ? "," : "", ids[i]);
        my_sb_printf(&c->sql, ") GROUP BY dest_id LOCK IN SHARE MODE");
        if (c->sql.oom)
            return my_oom(c, "msg_insert");
        rc = my_query(c, "counting the subscriptions of topics", c->sql.p, c->sql.len,
                      &res);
        if (rc)
            return rc;
        while ((row = mysql_fetch_row(res))) {
            int64_t d = my_i64(row[0]);
            int64_t *hit = bsearch(&d, ids, u, sizeof *ids, my_cmp_i64);
            if (hit)
                cnt[hit - ids] = my_i64(row[1]);
        }
        mysql_free_result(res);
    }
    return 0;
}

/* Pending rows for the topic messages among m[idx[0..k)], one per
 * subscription. *rows gets how many were written. */
static int my_insert_pending(mqs_be_conn *c, const mqs_be_msg *m, const size_t *idx,
                             size_t k, uint64_t *rows)
{
    *rows = 0;
    for (size_t i = 0; i < k;) {
        size_t cnt = 0;
        uint64_t got;
        int rc;
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "INSERT INTO mqs_pending (sub_id, msg_id, priority) "
                              "SELECT s.id, m.id, m.priority FROM mqs_msg m "
                              "JOIN mqs_sub s ON s.dest_id = m.dest_id "
                              "WHERE m.kind = 1 AND m.id IN (");
        for (; i < k && cnt < c->in_max; i++)
            if (m[idx[i]].kind == MQS_TOPIC)
                my_sb_printf(&c->sql, "%s%" PRId64, cnt++ ? "," : "", m[idx[i]].id);
        if (!cnt)
            break;
        my_sb_printf(&c->sql, ")");
        rc = my_exec_sb(c, "creating subscription entries in mqs_pending", &got);
        if (rc)
            return rc;
        *rows += got;
    }
    return 0;
}

/* Safety net when the pending rows written differ from the subscription
 * count read before: a topic message left without any pending row is
 * deleted and reported as not stored (id 0), as the contract says. */
static int my_drop_orphans(mqs_be_conn *c, mqs_be_msg *m, const size_t *idx, size_t k)
{
    for (size_t i = 0; i < k;) {
        MYSQL_RES *res;
        MYSQL_ROW row;
        size_t cnt = 0;
        int rc;
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "SELECT m.id FROM mqs_msg m WHERE m.kind = 1 AND m.id IN (");
        size_t start = i;
        for (; i < k && cnt < c->in_max; i++)
            if (m[idx[i]].kind == MQS_TOPIC)
                my_sb_printf(&c->sql, "%s%" PRId64, cnt++ ? "," : "", m[idx[i]].id);
        if (!cnt)
            break;
        my_sb_printf(&c->sql, ") AND NOT EXISTS (SELECT 1 FROM mqs_pending p "
                              "WHERE p.msg_id = m.id)");
        if (c->sql.oom)
            return my_oom(c, "msg_insert");
        rc = my_query(c, "finding topic messages without subscription", c->sql.p,
                      c->sql.len, &res);
        if (rc)
            return rc;
        while ((row = mysql_fetch_row(res))) {
            int64_t id = my_i64(row[0]);
            for (size_t j = start; j < i; j++)
                if (m[idx[j]].id == id)
                    m[idx[j]].id = 0;
            char sql[96];
            snprintf(sql, sizeof sql, "DELETE FROM mqs_msg WHERE id = %" PRId64, id);
            rc = my_exec(c, "deleting a topic message without subscription", sql, NULL);
            if (rc) {
                mysql_free_result(res);
                return rc;
            }
        }
        mysql_free_result(res);
    }
    return 0;
}

/* Bytes of rows one multi-row INSERT may carry: the server's
 * max_allowed_packet less the statement's own. */
static size_t my_ins_budget(const mqs_be_conn *c)
{
    return c->max_packet > MY_STMT_MARGIN ? c->max_packet - MY_STMT_MARGIN : 0;
}

/* Can m[0..n) be held for an autocommitted insert: queue messages only
 * (no pending rows to write: one statement), as one multi-row INSERT (n a
 * power of two within ins_max, one packet, each message within the
 * server's limit)? */
static int my_hold_ok(const mqs_be_conn *c, const mqs_be_msg *m, size_t n)
{
    size_t limit = my_max_message(c);
    size_t budget = my_ins_budget(c);
    size_t bytes = 0;
    if (n == 0 || n > c->ins_max || (n & (n - 1)))
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (m[i].kind != MQS_QUEUE || m[i].headers_len > limit ||
            m[i].body_len > limit - m[i].headers_len)
            return 0;
        bytes += m[i].headers_len + m[i].body_len + MY_ROW_MARGIN;
    }
    return bytes <= budget;
}

int my_msg_insert(mqs_be_conn *c, mqs_be_msg *m, size_t n)
{
    MY_CHECK_CONN(c);
    /* The first statement of a transaction, without a fence or of one
     * message: held (ids are set when it runs, at the latest in
     * txn_commit, which the core allows). */
    if (c->start_pending && !c->held && (!c->fence_on || n == 1) &&
        my_hold_ok(c, m, n)) {
        for (size_t i = 0; i < n; i++)
            m[i].id = 0;
        c->held = m;
        c->held_n = n;
        return 0;
    }
    return my_insert_now(c, m, n);
}

/* The insert itself; every statement it sends belongs to the transaction,
 * so a pending start goes first (a no-op from txn_start and from the
 * autocommitted path, which cleared it). */
static int my_insert_now(mqs_be_conn *c, mqs_be_msg *m, size_t n)
{
    size_t limit = my_max_message(c);
    size_t budget = my_ins_budget(c);
    int64_t *tids = NULL, *tcnt = NULL;
    size_t nt = 0, k = 0, *idx = NULL;
    uint64_t expect = 0, got = 0;
    int rc;

    MY_CHECK_CONN(c);
    MY_TXN_START(c);
    if (n == 0)
        return 0;
    /* Refuse here what the server would refuse by closing the connection. */
    for (size_t i = 0; i < n; i++) {
        m[i].id = 0;
        if (m[i].headers_len > limit || m[i].body_len > limit - m[i].headers_len)
            return my_errf(c, MQS_ETOOBIG,
                           "mysql: message %zu of %zu has %zu bytes of headers + "
                           "body, more than the %zu that fit the server's "
                           "max_allowed_packet of %lu bytes on %s; raise "
                           "max_allowed_packet (SET GLOBAL max_allowed_packet = ...; "
                           "and in the [mysqld] section of my.cnf) or send smaller "
                           "messages",
                           i + 1, n, m[i].headers_len + m[i].body_len, limit,
                           c->max_packet, c->uri);
    }
    rc = my_topic_subs(c, m, n, &tids, &tcnt, &nt);
    if (rc)
        goto out;
    idx = malloc(n * sizeof *idx);
    if (!idx) {
        rc = my_oom(c, "msg_insert");
        goto out;
    }
    /* A topic message with no subscription is not stored (id 0). */
    for (size_t i = 0; i < n; i++) {
        if (m[i].kind == MQS_TOPIC) {
            int64_t *hit = bsearch(&m[i].dest_id, tids, nt, sizeof *tids, my_cmp_i64);
            int64_t subs = hit ? tcnt[hit - tids] : 0;
            if (subs == 0)
                continue;
            expect += (uint64_t)subs;
        }
        idx[k++] = i;
    }
    /* Greedy chunks within ins_max rows and one packet, each sent as the
     * largest power of two that fits. */
    for (size_t i = 0; i < k && !rc;) {
        size_t rows = 0, bytes = 0;
        while (i + rows < k && rows < c->ins_max) {
            const mqs_be_msg *x = &m[idx[i + rows]];
            size_t b = x->headers_len + x->body_len + MY_ROW_MARGIN;
            if (rows > 0 && bytes + b > budget)
                break;
            bytes += b;
            rows++;
        }
        unsigned shift = 0;
        while ((2u << shift) <= rows)
            shift++;
        rc = my_insert_rows(c, m, idx + i, shift);
        i += (size_t)1 << shift;
    }
    if (!rc && expect)
        rc = my_insert_pending(c, m, idx, k, &got);
    if (!rc && got != expect)
        rc = my_drop_orphans(c, m, idx, k);
out:
    free(tids);
    free(tcnt);
    free(idx);
    return rc;
}

/* ------------------------------------------------------------------------
 * Reads
 * ---------------------------------------------------------------------- */

/* Stream the rows of sql to cb. *delivered counts the rows passed to cb,
 * *stopped is set if cb asked to stop. */
static int my_stream_page(mqs_be_conn *c, const char *sql, mqs_be_row_cb cb, void *ud,
                          size_t *delivered, int *stopped)
{
    MYSQL_RES *res;
    MYSQL_ROW row;

    MY_TXN_START(c);
    if (mysql_real_query(c->db, sql, (unsigned long)strlen(sql)))
        return my_fail_db(c, "reading a page of pending messages", 0);
    /* Unbuffered: memory stays at one row, whatever the page size. */
    res = mysql_use_result(c->db);
    if (!res)
        return my_fail_db(c, "reading a page of pending messages", 0);
    while (!*stopped && (row = mysql_fetch_row(res))) {
        unsigned long *len = mysql_fetch_lengths(res);
        mqs_be_row r = {
            .id = my_i64(row[0]),
            .priority = (int)my_i64(row[1]),
            .expires_ms = my_i64(row[2]),
            .enqueued_ms = my_i64(row[3]),
            .redeliveries = (int32_t)my_i64(row[4]),
            .headers = row[5],
            .headers_len = row[5] ? len[5] : 0,
            .body = row[6],
            .body_len = row[6] ? len[6] : 0,
        };
        ++*delivered;
        if (cb(ud, &r))
            *stopped = 1;
    }
    if (!*stopped && mysql_errno(c->db)) {
        int rc = my_fail_db(c, "reading a page of pending messages", 0);
        mysql_free_result(res);
        return rc;
    }
    /* Reads and drops whatever the callback left. */
    mysql_free_result(res);
    if (mysql_errno(c->db))
        return my_fail_db(c, "reading a page of pending messages", 0);
    return 0;
}

/* A page is read one priority at a time, each as an index range
 * (dest_id|sub_id, priority, id > x) ORDER BY id: the OR form of the keyset
 * condition makes MariaDB scan the destination's index from its start on
 * every page, which turns a recovery quadratic. The index is forced: with
 * many deleted rows (after a mass ack, before or even after purge) the
 * optimizer sometimes picks the primary key for the ORDER BY id and reads
 * every older row of every destination (bench/scan.c: 1M dead rows, 145 ms
 * a page instead of 0.7 ms). */
int my_page_read(mqs_be_conn *c, const mqs_be_page *p, mqs_be_row_cb cb, void *ud)
{
    char sql[512];
    size_t done = 0;
    int stopped = 0, rc = 0;
    int prio = p->after_priority;
    int64_t after = p->after_id;
    int read_now = prio <= MQS_PRIORITY_MAX;

    MY_CHECK_CONN(c);
    if (prio > MQS_PRIORITY_MAX + 1)
        prio = MQS_PRIORITY_MAX + 1;
    /* Bounded: prio strictly decreases every round. */
    while (done < p->limit && !stopped && prio >= 0) {
        if (read_now) {
            size_t left = p->limit - done;
            if (p->sub_id)
                snprintf(sql, sizeof sql,
                         "SELECT p.msg_id, p.priority, m.expires_ms, m.enqueued_ms, "
                         "p.redeliveries, m.headers, m.body FROM mqs_pending p "
                         "FORCE INDEX (mqs_pending_order) "
                         "JOIN mqs_msg m ON m.id = p.msg_id WHERE p.sub_id = %" PRId64
                         " AND p.priority = %d AND p.msg_id > %" PRId64
                         " ORDER BY p.msg_id LIMIT %zu",
                         p->sub_id, prio, after, left);
            else
                snprintf(sql, sizeof sql,
                         "SELECT id, priority, expires_ms, enqueued_ms, redeliveries, "
                         "headers, body FROM mqs_msg FORCE INDEX (mqs_msg_order) "
                         "WHERE dest_id = %" PRId64 " AND priority = %d AND id > %" PRId64
                         " AND kind = 0 ORDER BY id LIMIT %zu",
                         p->dest_id, prio, after, left);
            rc = my_stream_page(c, sql, cb, ud, &done, &stopped);
            if (rc || stopped || done >= p->limit)
                break;
        }
        /* The next lower priority that has rows: one index dive. */
        int64_t next;
        int found;
        if (p->sub_id)
            snprintf(sql, sizeof sql,
                     "SELECT priority FROM mqs_pending FORCE INDEX (mqs_pending_order) "
                     "WHERE sub_id = %" PRId64
                     " AND priority < %d ORDER BY priority DESC LIMIT 1",
                     p->sub_id, prio);
        else
            snprintf(sql, sizeof sql,
                     "SELECT priority FROM mqs_msg FORCE INDEX (mqs_msg_order) "
                     "WHERE dest_id = %" PRId64 " AND priority < %d "
                     "ORDER BY priority DESC LIMIT 1",
                     p->dest_id, prio);
        rc = my_query_i64(c, "finding the next priority with pending messages", sql, &next,
                          &found);
        if (rc || !found)
            break;
        prio = (int)next;
        after = 0;
        read_now = 1;
    }
    return rc;
}

/* The newest rows of mqs_msg, for the producer audit (ABI 2.3): the
 * clustered primary key read backwards, limit rows however deep the
 * backlog. */
int my_msg_recent(mqs_be_conn *c, size_t limit, mqs_be_header_cb cb, void *ud)
{
    const char *what = "reading the newest messages of mqs_msg";
    char sql[96];
    MY_CHECK_CONN(c);
    snprintf(sql, sizeof sql, "SELECT id, headers FROM mqs_msg ORDER BY id DESC LIMIT %zu",
             limit);
    MY_TXN_START(c);
    if (mysql_real_query(c->db, sql, (unsigned long)strlen(sql)))
        return my_fail_db(c, what, 0);
    /* Unbuffered: one row in memory at a time. */
    MYSQL_RES *res = mysql_use_result(c->db);
    if (!res)
        return my_fail_db(c, what, 0);
    MYSQL_ROW row;
    int stopped = 0;
    while (!stopped && (row = mysql_fetch_row(res))) {
        unsigned long *len = mysql_fetch_lengths(res);
        stopped = cb(ud, my_i64(row[0]), row[1], row[1] ? len[1] : 0) != 0;
    }
    int rc = 0;
    if (!stopped && mysql_errno(c->db))
        rc = my_fail_db(c, what, 0);
    /* Reads and drops whatever the callback left. */
    mysql_free_result(res);
    if (!rc && mysql_errno(c->db))
        rc = my_fail_db(c, what, 0);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Producer marks (ABI 2.1). The producer goes in as a hex literal: no
 * quoting to get wrong, whatever bytes it holds.
 * ------------------------------------------------------------------------- */
static void my_hex(char *out, const char *s)
{
    static const char hx[] = "0123456789abcdef";
    for (; *s; s++) {
        *out++ = hx[(unsigned char)*s >> 4];
        *out++ = hx[(unsigned char)*s & 15];
    }
    *out = '\0';
}

int my_mark_put(mqs_be_conn *c, const char *producer, int64_t seq,
                int64_t now_ms)
{
    char hex[2 * 128 + 1], sql[512];
    MY_CHECK_CONN(c);
    if (strlen(producer) > 128)
        return MQS_EINVAL;
    my_hex(hex, producer);
    snprintf(sql, sizeof sql,
             "INSERT INTO mqs_producer_mark (producer, seq, updated_ms) "
             "VALUES (X'%s', %" PRId64 ", %" PRId64 ") ON DUPLICATE KEY "
             "UPDATE seq = GREATEST(seq, VALUES(seq)), "
             "updated_ms = VALUES(updated_ms)",
             hex, seq, now_ms);
    return my_exec(c, "recording a producer mark", sql, NULL);
}

int my_mark_list(mqs_be_conn *c, mqs_be_mark_cb cb, void *ud)
{
    static const char q[] = "SELECT producer, seq FROM mqs_producer_mark";
    MY_CHECK_CONN(c);
    MY_TXN_START(c);
    if (mysql_real_query(c->db, q, sizeof q - 1))
        return my_fail_db(c, "listing producer marks", 0);
    MYSQL_RES *res = mysql_use_result(c->db);
    if (!res)
        return my_fail_db(c, "listing producer marks", 0);
    MYSQL_ROW row;
    int stopped = 0;
    while (!stopped && (row = mysql_fetch_row(res))) {
        unsigned long *len = mysql_fetch_lengths(res);
        char p[129];
        size_t n = len && len[0] < sizeof p ? len[0] : 0;
        memcpy(p, row[0] ? row[0] : "", n);
        p[n] = '\0';
        stopped = cb(ud, p, my_i64(row[1]));
    }
    int rc = 0;
    if (!stopped && mysql_errno(c->db))
        rc = my_fail_db(c, "listing producer marks", 0);
    mysql_free_result(res);
    return rc ? rc : stopped;
}

int my_mark_prune(mqs_be_conn *c, int64_t before_ms, uint64_t *removed)
{
    char sql[128];
    MY_CHECK_CONN(c);
    snprintf(sql, sizeof sql,
             "DELETE FROM mqs_producer_mark WHERE updated_ms < %" PRId64,
             before_ms);
    return my_exec(c, "pruning producer marks", sql, removed);
}

/* The same rows without counting (dest_names): two small tables. */
static const char MY_DEST_NAMES[] =
    "SELECT d.id, d.kind, d.name, COALESCE(s.id, 0), s.name, 0, 0 "
    "FROM mqs_dest d LEFT JOIN mqs_sub s ON s.dest_id = d.id AND d.kind = 1 "
    "ORDER BY 1, 4";

/* Rows of q (dest_list's columns) to cb. */
static int my_dest_rows(mqs_be_conn *c, const char *q, size_t qlen,
                        mqs_be_dest_cb cb, void *ud);

int my_dest_names(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud)
{
    return my_dest_rows(c, MY_DEST_NAMES, sizeof MY_DEST_NAMES - 1, cb, ud);
}

int my_dest_list(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud)
{
    static const char q[] =
        "SELECT d.id, d.kind, d.name, 0 AS sub_id, NULL AS sub_name, "
        "  (SELECT COUNT(*) FROM mqs_msg m WHERE m.dest_id = d.id AND m.kind = 0), "
        "  (SELECT COALESCE(MIN(m.enqueued_ms), 0) FROM mqs_msg m "
        "   WHERE m.dest_id = d.id AND m.kind = 0) "
        "FROM mqs_dest d WHERE d.kind = 0 "
        "UNION ALL "
        "SELECT d.id, d.kind, d.name, s.id, s.name, "
        "  (SELECT COUNT(*) FROM mqs_pending p WHERE p.sub_id = s.id), "
        "  (SELECT COALESCE(MIN(m.enqueued_ms), 0) FROM mqs_pending p "
        "   JOIN mqs_msg m ON m.id = p.msg_id WHERE p.sub_id = s.id) "
        "FROM mqs_dest d JOIN mqs_sub s ON s.dest_id = d.id WHERE d.kind = 1 "
        "UNION ALL "
        "SELECT d.id, d.kind, d.name, 0, NULL, 0, 0 FROM mqs_dest d "
        "WHERE d.kind = 1 AND NOT EXISTS (SELECT 1 FROM mqs_sub s WHERE s.dest_id = d.id) "
        "ORDER BY 1, 4";
    return my_dest_rows(c, q, sizeof q - 1, cb, ud);
}

static int my_dest_rows(mqs_be_conn *c, const char *q, size_t qlen,
                        mqs_be_dest_cb cb, void *ud)
{
    MYSQL_RES *res;
    MYSQL_ROW row;
    int stopped = 0;

    MY_CHECK_CONN(c);
    MY_TXN_START(c);
    if (mysql_real_query(c->db, q, qlen))
        return my_fail_db(c, "listing destinations", 0);
    res = mysql_use_result(c->db);
    if (!res)
        return my_fail_db(c, "listing destinations", 0);
    while (!stopped && (row = mysql_fetch_row(res))) {
        mqs_be_dest d = {
            .dest_id = my_i64(row[0]),
            .kind = my_i64(row[1]) ? MQS_TOPIC : MQS_QUEUE,
            .name = row[2] ? row[2] : "",
            .sub_id = my_i64(row[3]),
            .sub_name = row[4],
            .pending = (uint64_t)my_i64(row[5]),
            .oldest_ms = my_i64(row[6]),
        };
        if (cb(ud, &d))
            stopped = 1;
    }
    int rc = 0;
    if (!stopped && mysql_errno(c->db))
        rc = my_fail_db(c, "listing destinations", 0);
    mysql_free_result(res);
    if (!rc && mysql_errno(c->db))
        rc = my_fail_db(c, "listing destinations", 0);
    return rc;
}
