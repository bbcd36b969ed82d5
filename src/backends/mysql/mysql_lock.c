/*
 * mysql_lock.c - MySQL / MariaDB backend: the exclusive lock (ABI 2.0),
 * the fence and the session lock (crash detector)
 * (part of mqstore_mysql.so; see mysql.c for the design choices).
 */
#include "mysql_int.h"

/* ------------------------------------------------------------------------
 * Exclusive lock (ABI 2.0)
 * ---------------------------------------------------------------------- */

static int64_t my_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A name as a hex literal: no quoting or charset question can arise. */
static void my_sb_hex(my_sb *b, const char *s)
{
    my_sb_printf(b, "X'");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        my_sb_printf(b, "%02x", *p);
    my_sb_printf(b, "'");
}

/* The GET_LOCK name of a cluster's session lock: per database and
 * cluster, within the 64 characters MySQL allows. */
static void my_sb_session_name(my_sb *b, const char *cluster)
{
    my_sb_printf(b, "CONCAT('mqs-session-', MD5(CONCAT(DATABASE(), '/', ");
    my_sb_hex(b, cluster);
    my_sb_printf(b, ")))");
}

/* Lock statements on a database still at schema 1 fail with a message
 * that says what to do. */
static int my_lock_fail(mqs_be_conn *c, const char *what)
{
    if (mysql_errno(c->db) == MY_ER_NO_SUCH_TABLE)
        return my_errf(c, MQS_ESCHEMA,
                       "mysql: %s has no mqs_lock table: the exclusive lock needs "
                       "schema version 2 (002_lock.sql); run `mqstore migrate URI` "
                       "or open the store with migrate=auto",
                       c->uri);
    return my_fail_db(c, what, 0);
}

static int my_lock_exec(mqs_be_conn *c, const char *what, uint64_t *affected)
{
    if (c->sql.oom)
        return my_oom(c, what);
    MY_TXN_START(c);
    if (mysql_real_query(c->db, c->sql.p, (unsigned long)c->sql.len))
        return my_lock_fail(c, what);
    if (affected)
        *affected = (uint64_t)mysql_affected_rows(c->db);
    return 0;
}

/* The server instance, read once per connection: its start time (whole
 * seconds) in the high 32 bits and @@server_id in the low 32. The start
 * time alone cannot tell two servers started in the same second apart: a
 * primary and a replica set up together were one "instance" to the crash
 * detector, and after a switchover a standby took over on the new primary
 * at once, with the old master's lease still running
 * (tests/replication/test_mariadb_switchover.py). Replication requires
 * distinct server ids, so the id separates exactly those. Failing to read
 * it (no access to the status tables) only disarms the crash detector. */
static int my_epoch(mqs_be_conn *c)
{
    /* Integer arithmetic throughout: VARIABLE_VALUE is a string, and a
     * string in arithmetic makes a DOUBLE that drops the id's bits. */
    static const char maria[] =
        "SELECT ((UNIX_TIMESTAMP() - CAST(VARIABLE_VALUE AS SIGNED)) << 32) | "
        "@@server_id FROM information_schema.GLOBAL_STATUS "
        "WHERE VARIABLE_NAME = 'UPTIME'";
    static const char oracle[] =
        "SELECT ((UNIX_TIMESTAMP() - CAST(VARIABLE_VALUE AS SIGNED)) << 32) | "
        "@@server_id FROM performance_schema.global_status "
        "WHERE VARIABLE_NAME = 'Uptime'";
    int64_t v = 0;
    int found = 0;

    if (c->epoch_read)
        return 0;
    int rc = my_query_i64(c, "reading the server's uptime and id", c->is_mariadb ? maria : oracle,
                          &v, &found);
    if (rc && c->broken)
        return rc;
    c->epoch = !rc && found && v > 0 ? v : 0;
    c->epoch_read = 1;
    return 0;
}

/* Both recorded under the server instance this connection talks to: the
 * same server id, and start times (derived from whole seconds of uptime)
 * at most one apart. A value in the old form (start time only, before
 * the id was added) matches nothing: the detector then waits for the
 * lease, the safe side. */
static int my_same_epoch(const mqs_be_conn *c, int64_t e)
{
    if (c->epoch <= 0 || e <= 0)
        return 0;
    int64_t cs = c->epoch >> 32, es = e >> 32;
    return (c->epoch & 0xffffffff) == (e & 0xffffffff) && cs > 0 &&
           es >= cs - 1 && es <= cs + 1;
}

struct my_lock_row {
    int found;
    int held; /* holder is not NULL */
    char holder[256];
    int64_t token;
    int lease_valid;
    int64_t lease_until, acquired;
    int64_t session_id; /* 0: none recorded under this server instance */
    int64_t now;        /* database clock at the read */
    int64_t lock_user;  /* IS_USED_LOCK(session lock), 0 if free */
};

/* Read the row of cluster; for_update locks it (inside a transaction). */
static int my_lock_load(mqs_be_conn *c, const char *cluster, int for_update,
                        struct my_lock_row *r)
{
    MYSQL_RES *res;
    MYSQL_ROW row;

    memset(r, 0, sizeof *r);
    my_sb_reset(&c->sql);
    my_sb_printf(&c->sql, "SELECT holder, token, lease_until_ms, acquired_ms, session_id, "
                          "session_epoch, " MY_NOW_MS ", IS_USED_LOCK(");
    my_sb_session_name(&c->sql, cluster);
    my_sb_printf(&c->sql, ") FROM mqs_lock WHERE cluster = ");
    my_sb_hex(&c->sql, cluster);
    if (for_update)
        my_sb_printf(&c->sql, " FOR UPDATE");
    if (c->sql.oom)
        return my_oom(c, "reading the lock");
    MY_TXN_START(c);
    if (mysql_real_query(c->db, c->sql.p, (unsigned long)c->sql.len))
        return my_lock_fail(c, "reading the lock row from mqs_lock");
    res = mysql_store_result(c->db);
    if (!res)
        return my_lock_fail(c, "reading the lock row from mqs_lock");
    row = mysql_fetch_row(res);
    if (row) {
        r->found = 1;
        r->held = row[0] != NULL;
        if (row[0])
            snprintf(r->holder, sizeof r->holder, "%s", row[0]);
        r->token = my_i64(row[1]);
        r->lease_valid = row[2] && row[3];
        r->lease_until = my_i64(row[2]);
        r->acquired = my_i64(row[3]);
        if (row[4] && row[5] && my_same_epoch(c, my_i64(row[5])))
            r->session_id = my_i64(row[4]);
        r->now = my_i64(row[6]);
        r->lock_user = my_i64(row[7]);
    }
    mysql_free_result(res);
    return 0;
}

static void my_lock_fill(mqs_be_lock_state *st, const struct my_lock_row *r)
{
    memset(st, 0, sizeof *st);
    st->token = r->token;
    if (!r->held)
        return;
    snprintf(st->holder, sizeof st->holder, "%s", r->holder);
    if (r->lease_valid) {
        st->lease_left_ms = r->lease_until - r->now;
        st->held_ms = r->now - r->acquired;
    }
    st->session_armed = r->session_id > 0;
}

/* SET clause for the session columns: this node's session when the server
 * confirms that connection holds the session lock right now. */
static void my_sb_session_set(mqs_be_conn *c, const mqs_be_lock *l)
{
    if (l->session_id <= 0 || c->epoch <= 0) {
        my_sb_printf(&c->sql, "session_id = NULL, session_epoch = NULL");
        return;
    }
    for (int i = 0; i < 2; i++) {
        my_sb_printf(&c->sql, "%s = IF(IS_USED_LOCK(", i ? ", session_epoch" : "session_id");
        my_sb_session_name(&c->sql, l->cluster);
        my_sb_printf(&c->sql, ") = %" PRId64 ", %" PRId64 ", NULL)", l->session_id,
                     i ? c->epoch : l->session_id);
    }
}

/* Roll back the lock's own transaction, keeping the failure's message. */
static int my_lock_abort(mqs_be_conn *c, int rc)
{
    if (!c->broken) {
        char keep[sizeof c->err];
        memcpy(keep, c->err, sizeof keep);
        (void)my_exec(c, "ROLLBACK", "ROLLBACK", NULL);
        memcpy(c->err, keep, sizeof keep);
    }
    return rc;
}

/* innodb_lock_wait_timeout, in seconds, for a wait of at most wait_ms (0:
 * about a second): whole seconds, at least 1 (MySQL's minimum), and short
 * of read_timeout, which would otherwise declare the connection lost. */
static int my_wait_s(const mqs_be_conn *c, int64_t wait_ms)
{
    int64_t s = wait_ms > 0 ? wait_ms / 1000 + (wait_ms % 1000 != 0) : 1;
    if (c->read_timeout && s > (int64_t)c->read_timeout / 2)
        s = (int64_t)c->read_timeout / 2;
    if (s > 86400)
        s = 86400;
    return s < 1 ? 1 : (int)s;
}

/* Set this session's innodb_lock_wait_timeout to s seconds (0: back to the
 * server's default), unless the cache says it already is. */
static int my_lock_wait_set(mqs_be_conn *c, int s)
{
    char q[80];
    int rc;

    if (c->lock_wait_s == s)
        return 0;
    if (s > 0)
        snprintf(q, sizeof q, "SET SESSION innodb_lock_wait_timeout = %d", s);
    else
        snprintf(q, sizeof q, "SET SESSION innodb_lock_wait_timeout = DEFAULT");
    c->lock_wait_s = -1; /* unknown until the SET succeeded */
    rc = my_exec(c, "setting innodb_lock_wait_timeout", q, NULL);
    if (!rc)
        c->lock_wait_s = s;
    return rc;
}

/* Bound the row-lock waits of the lock statements that follow by wait_ms.
 * A "lock" connection serves nothing else, so the setting stays (set once
 * per connection, then cached). A pooled connection also serves writes,
 * which need the server's default: *prev says what my_wait_end puts back,
 * and only when this call changed it. */
static int my_wait_begin(mqs_be_conn *c, int64_t wait_ms, int *prev)
{
    int want = my_wait_s(c, wait_ms);
    *prev = c->lock_conn ? want : c->lock_wait_s;
    return my_lock_wait_set(c, want);
}

static void my_wait_end(mqs_be_conn *c, int prev)
{
    if (c->broken || prev == c->lock_wait_s)
        return;
    /* A failed restore leaves lock_wait_s unknown (-1), so the next lock
     * statement sets it again; it does not undo what committed. */
    char keep[sizeof c->err];
    memcpy(keep, c->err, sizeof keep);
    (void)my_lock_wait_set(c, prev > 0 ? prev : 0);
    memcpy(c->err, keep, sizeof keep);
}

/* The lock may be taken: no row yet, free, lease expired by the database
 * clock, or the caller holds the session lock now (holder_gone) and the
 * server says the holder's recorded connection does not. */
static int my_lock_takeable(const struct my_lock_row *r, const mqs_be_lock *l)
{
    return !r->found || !r->held || !r->lease_valid || r->lease_until <= r->now ||
           (l->holder_gone && r->session_id > 0 && r->lock_user != r->session_id);
}

static int my_lock_busy(mqs_be_conn *c, const mqs_be_lock *l, mqs_be_lock_state *st,
                        const struct my_lock_row *r)
{
    my_lock_fill(st, r);
    return my_errf(c, MQS_EBUSY,
                   "mysql: the lock of cluster '%s' in %s is held by node %s "
                   "(token %" PRId64 ", lease %" PRId64 " ms left, held for %" PRId64
                   " ms, crash detector %s)",
                   l->cluster, c->uri, st->holder, st->token, st->lease_left_ms,
                   st->held_ms, st->session_armed ? "armed" : "not armed");
}

/* The locking part of an acquire, in its own transaction: create the row
 * if the poll found none, lock it (X: waits for the share lock of any
 * fence check in flight, so the old holder's last commit ends first),
 * check again, take it. */
static int my_lock_acquire_txn(mqs_be_conn *c, const mqs_be_lock *l,
                               mqs_be_lock_state *st, int found)
{
    struct my_lock_row r;
    uint64_t changed = 0;
    int rc;
    if ((rc = my_txn_begin(c)))
        return rc;
    if (!found) {
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "INSERT INTO mqs_lock (cluster) VALUES (");
        my_sb_hex(&c->sql, l->cluster);
        my_sb_printf(&c->sql, ") ON DUPLICATE KEY UPDATE cluster = cluster");
        if ((rc = my_lock_exec(c, "creating the lock row in mqs_lock", NULL)))
            return my_lock_abort(c, rc);
    }
    if ((rc = my_lock_load(c, l->cluster, 1, &r)))
        return my_lock_abort(c, rc);
    if (!r.found)
        return my_lock_abort(c, my_errf(c, MQS_EIO,
                                        "mysql: the lock row of cluster '%s' vanished "
                                        "from %s while it was being acquired",
                                        l->cluster, c->uri));
    /* The row is locked from here to COMMIT. */
    if (!my_lock_takeable(&r, l)) {
        rc = my_lock_busy(c, l, st, &r);
        return my_lock_abort(c, rc);
    }
    my_sb_reset(&c->sql);
    my_sb_printf(&c->sql, "UPDATE mqs_lock SET holder = ");
    my_sb_hex(&c->sql, l->node);
    my_sb_printf(&c->sql,
                 ", token = token + 1, lease_until_ms = " MY_NOW_MS " + %" PRId64
                 ", acquired_ms = " MY_NOW_MS ", ",
                 l->lease_ms);
    my_sb_session_set(c, l);
    my_sb_printf(&c->sql, " WHERE cluster = ");
    my_sb_hex(&c->sql, l->cluster);
    if ((rc = my_lock_exec(c, "taking the lock in mqs_lock", &changed)))
        return my_lock_abort(c, rc);
    if (changed != 1)
        return my_lock_abort(c, my_errf(c, MQS_EIO,
                                        "mysql: the lock row of cluster '%s' vanished "
                                        "from %s inside the acquiring transaction",
                                        l->cluster, c->uri));
    if ((rc = my_txn_commit(c)))
        return rc;
    snprintf(st->holder, sizeof st->holder, "%s", l->node);
    st->token = r.token + 1;
    st->lease_left_ms = l->lease_ms;
    st->held_ms = 0;
    st->session_armed = l->session_id > 0 && c->epoch > 0 && r.lock_user == l->session_id;
    return 0;
}

/* Standbys call this every poll_ms. While a live holder's lease stands it
 * is one plain read (a consistent read: no lock, no wait, no write,
 * nothing in the server's log). Only a takeable lock gets the locking
 * transaction, its row-lock wait bounded by l->wait_ms (see
 * my_wait_begin). */
int my_lock_acquire(mqs_be_conn *c, const mqs_be_lock *l, mqs_be_lock_state *st)
{
    struct my_lock_row r;
    int rc;

    memset(st, 0, sizeof *st);
    MY_CHECK_CONN(c);
    if ((rc = my_not_in_txn(c, "lock_acquire")) || (rc = my_epoch(c)) ||
        (rc = my_lock_load(c, l->cluster, 0, &r)))
        return rc;
    if (!my_lock_takeable(&r, l))
        return my_lock_busy(c, l, st, &r);
    int prev;
    if (!(rc = my_wait_begin(c, l->wait_ms, &prev)))
        rc = my_lock_acquire_txn(c, l, st, r.found);
    my_wait_end(c, prev);
    return rc;
}

/* A renewal or fence check did not match: say who holds the lock now (r:
 * the row as read after the failure). margin_ms >= 0 for a fence check,
 * whose row may still name this node and token with too little lease. */
static int my_lock_fenced_msg(mqs_be_conn *c, const char *cluster, const char *node,
                              int64_t token, int64_t margin_ms,
                              const struct my_lock_row *r)
{
    if (!r->found)
        return my_errf(c, MQS_EFENCED,
                       "mysql: the lock of cluster '%s' has no row in %s any more; node "
                       "%s (token %" PRId64 ") was fenced",
                       cluster, c->uri, node, token);
    if (!r->held)
        return my_errf(c, MQS_EFENCED,
                       "mysql: the lock of cluster '%s' is now free (token %" PRId64
                       "); node %s (token %" PRId64 ") was fenced",
                       cluster, r->token, node, token);
    if (margin_ms >= 0 && r->token == token && strcmp(r->holder, node) == 0)
        return my_errf(c, MQS_EFENCED,
                       "mysql: node %s still holds the lock of cluster '%s' (token "
                       "%" PRId64 ") but its lease has %" PRId64 " ms left by the "
                       "database clock, less than the %" PRId64 " ms a commit needs; "
                       "fenced, the transaction was not committed",
                       node, cluster, token,
                       r->lease_valid ? r->lease_until - r->now : 0, margin_ms);
    return my_errf(c, MQS_EFENCED,
                   "mysql: the lock of cluster '%s' is now held by %s (token %" PRId64
                   "); node %s (token %" PRId64 ") was fenced",
                   cluster, r->holder, r->token, node, token);
}

/* The renewal matched no row with our holder and token: say who has it. */
static int my_lock_fenced(mqs_be_conn *c, const mqs_be_lock *l)
{
    struct my_lock_row r;
    if (my_lock_load(c, l->cluster, 0, &r) != 0)
        return my_errf(c, MQS_EFENCED,
                       "mysql: node %s (token %" PRId64 ") no longer holds the lock of "
                       "cluster '%s' and was fenced (the current holder could not be "
                       "read: %s)",
                       l->node, l->token, l->cluster, c->err);
    return my_lock_fenced_msg(c, l->cluster, l->node, l->token, -1, &r);
}

static int my_lock_renew_run(mqs_be_conn *c, const mqs_be_lock *l,
                             mqs_be_lock_state *st)
{
    struct my_lock_row r;
    uint64_t matched = 0;
    int rc;

    my_sb_reset(&c->sql);
    my_sb_printf(&c->sql,
                 "UPDATE mqs_lock SET lease_until_ms = " MY_NOW_MS " + %" PRId64 ", ",
                 l->lease_ms);
    my_sb_session_set(c, l);
    my_sb_printf(&c->sql, " WHERE cluster = ");
    my_sb_hex(&c->sql, l->cluster);
    my_sb_printf(&c->sql, " AND holder = ");
    my_sb_hex(&c->sql, l->node);
    my_sb_printf(&c->sql, " AND token = %" PRId64, l->token);
    if ((rc = my_lock_exec(c, "renewing the lease in mqs_lock", &matched)))
        return rc;
    if (matched != 1)
        return my_lock_fenced(c, l);
    if ((rc = my_lock_load(c, l->cluster, 0, &r)))
        return rc;
    my_lock_fill(st, &r);
    return 0;
}

/* Runs on the lease connection, outside any write transaction. One
 * autocommitted UPDATE is its own transaction: the row's X lock is held
 * only while the server executes and commits it, never across a round trip
 * (a fence check waiting behind it waits for no client). Its wait for the
 * row lock (a commit's fence check: one COMMIT; a takeover: a few round
 * trips) is bounded by innodb_lock_wait_timeout (see my_wait_begin: set
 * once on the lease connection); a timeout is MQS_EBUSY. */
int my_lock_renew(mqs_be_conn *c, const mqs_be_lock *l, mqs_be_lock_state *st)
{
    int prev, rc;

    memset(st, 0, sizeof *st);
    MY_CHECK_CONN(c);
    if ((rc = my_not_in_txn(c, "lock_renew")) || (rc = my_epoch(c)))
        return rc;
    if (!(rc = my_wait_begin(c, l->wait_ms, &prev)))
        rc = my_lock_renew_run(c, l, st);
    my_wait_end(c, prev);
    return rc;
}

/* Session settings of a connection that runs fenced write transactions,
 * once per connection (MariaDB only; MySQL has neither). MariaDB closes the
 * connection of a transaction idle longer than idle_write_transaction_timeout,
 * which frees the row locks of a master frozen mid-transaction, and the
 * share lock of a fence check frozen before its COMMIT, which would hold
 * off every takeover. Write transactions are short (the core sends their
 * statements back to back), so about one lease is right:
 *     max(1, ceil(lease_ms / 1000)) seconds.
 * idle_transaction_timeout gets the same value: a transaction whose writes
 * changed no row counts as read-only for MariaDB, yet its fence check holds
 * the share lock until COMMIT. */
static int my_fence_session(mqs_be_conn *c, int64_t lease_ms)
{
    int64_t m = lease_ms < 0 ? 0 : lease_ms > 31536000000LL ? 31536000000LL : lease_ms;
    int want = (int)((m + 999) / 1000);
    char q[160];

    if (want < 1)
        want = 1;
    if (!c->is_mariadb || c->idle_write_s == want || c->idle_write_s == -1)
        return 0;
    snprintf(q, sizeof q,
             "SET SESSION idle_write_transaction_timeout = %d, "
             "idle_transaction_timeout = %d",
             want, want);
    MY_TXN_START(c);
    if (mysql_real_query(c->db, q, (unsigned long)strlen(q)) == 0)
        c->idle_write_s = want;
    else if (mysql_errno(c->db) == 1193) /* unknown variable: before 10.3 */
        c->idle_write_s = -1;
    else
        return my_fail_db(c, "setting idle_write_transaction_timeout", 0);
    return 0;
}

/* Called right after txn_begin. Only records the fence (and sets up the
 * session once): the check itself runs in txn_commit, after the last
 * write, so the share lock it takes is held for the COMMIT only and
 * lock_renew never waits longer than that. */
int my_lock_fence(mqs_be_conn *c, const mqs_be_fence *f)
{
    int rc;

    MY_CHECK_CONN(c);
    if (!f || !f->cluster || !f->node)
        return my_errf(c, MQS_EINVAL, "mysql: lock_fence without cluster or node");
    if ((rc = my_fence_session(c, f->lease_ms)))
        return rc;
    if (!c->fence_cluster || strcmp(c->fence_cluster, f->cluster) != 0) {
        char *x = strdup(f->cluster);
        if (!x)
            return my_oom(c, "lock_fence");
        free(c->fence_cluster);
        c->fence_cluster = x;
    }
    if (!c->fence_node || strcmp(c->fence_node, f->node) != 0) {
        char *x = strdup(f->node);
        if (!x)
            return my_oom(c, "lock_fence");
        free(c->fence_node);
        c->fence_node = x;
    }
    c->fence_token = f->token;
    c->fence_margin_ms = f->margin_ms > 0 ? f->margin_ms : 0;
    c->fence_on = 1;
    return 0;
}

/* The fence check, txn_commit's last statement before COMMIT: a locking
 * read (S record lock) of the lock row by primary key. A locking read
 * reads the newest committed version, not the transaction's snapshot, and
 * waits for an X lock held by a takeover or renewal in flight. The match is
 * computed by the server (bytes of holder, token, lease left by its
 * clock); the row comes back too, for the message. */
int my_fence_check(mqs_be_conn *c)
{
    static const char what[] = "checking the fence (locking read of the mqs_lock row)";
    struct my_lock_row r;
    MYSQL_RES *res;
    MYSQL_ROW row;
    int ok = 0;

    my_sb_reset(&c->sql);
    my_sb_printf(&c->sql, "SELECT holder, token, lease_until_ms, " MY_NOW_MS ", holder = ");
    my_sb_hex(&c->sql, c->fence_node);
    my_sb_printf(&c->sql,
                 " AND token = %" PRId64 " AND lease_until_ms - " MY_NOW_MS " >= %" PRId64
                 " FROM mqs_lock WHERE cluster = ",
                 c->fence_token, c->fence_margin_ms);
    my_sb_hex(&c->sql, c->fence_cluster);
    my_sb_printf(&c->sql, " LOCK IN SHARE MODE");
    if (c->sql.oom)
        return my_oom(c, what);
    MY_TXN_START(c);
    if (mysql_real_query(c->db, c->sql.p, (unsigned long)c->sql.len))
        return my_lock_fail(c, what);
    if (!(res = mysql_store_result(c->db)))
        return my_lock_fail(c, what);
    memset(&r, 0, sizeof r);
    if ((row = mysql_fetch_row(res))) {
        r.found = 1;
        r.held = row[0] != NULL;
        if (row[0])
            snprintf(r.holder, sizeof r.holder, "%s", row[0]);
        r.token = my_i64(row[1]);
        r.lease_valid = row[2] != NULL;
        r.lease_until = my_i64(row[2]);
        r.now = my_i64(row[3]);
        ok = row[4] && my_i64(row[4]) == 1;
    }
    mysql_free_result(res);
    if (ok)
        return 0;
    return my_lock_fenced_msg(c, c->fence_cluster, c->fence_node, c->fence_token,
                              c->fence_margin_ms, &r);
}

/* Release (node != NULL: only where holder and token match) or force the
 * lock free, in its own transaction. The token stays. The UPDATE takes the
 * row's X lock, so a force, like an acquire, commits only after the fence
 * check of any commit in flight. */
static int my_lock_clear(mqs_be_conn *c, const char *cluster, const char *node,
                         int64_t token)
{
    int rc;

    MY_CHECK_CONN(c);
    if ((rc = my_not_in_txn(c, node ? "lock_release" : "lock_force")) ||
        (rc = my_txn_begin(c)))
        return rc;
    my_sb_reset(&c->sql);
    my_sb_printf(&c->sql, "UPDATE mqs_lock SET holder = NULL, lease_until_ms = NULL, "
                          "acquired_ms = NULL, session_id = NULL, session_epoch = NULL "
                          "WHERE cluster = ");
    my_sb_hex(&c->sql, cluster);
    if (node) {
        my_sb_printf(&c->sql, " AND holder = ");
        my_sb_hex(&c->sql, node);
        my_sb_printf(&c->sql, " AND token = %" PRId64, token);
    }
    if ((rc = my_lock_exec(c, node ? "releasing the lock in mqs_lock"
                                   : "forcing the lock free in mqs_lock",
                           NULL)))
        return my_lock_abort(c, rc);
    return my_txn_commit(c);
}

int my_lock_release(mqs_be_conn *c, const mqs_be_lock *l)
{
    return my_lock_clear(c, l->cluster, l->node, l->token);
}

int my_lock_force(mqs_be_conn *c, const char *cluster)
{
    return my_lock_clear(c, cluster, NULL, 0);
}

int my_lock_read(mqs_be_conn *c, const char *cluster, mqs_be_lock_state *st)
{
    struct my_lock_row r;
    int rc;

    memset(st, 0, sizeof *st);
    MY_CHECK_CONN(c);
    if ((rc = my_epoch(c)) || (rc = my_lock_load(c, cluster, 0, &r)))
        return rc;
    my_lock_fill(st, &r);
    return 0;
}

/* ---- session lock (crash detector) ---- */

int my_session_lock(mqs_be_conn *c, const char *cluster, int64_t wait_ms,
                    int64_t *session_id)
{
    int64_t deadline, got, found;
    int rc;

    *session_id = 0;
    MY_CHECK_CONN(c);
    if (c->sess_cluster) {
        if (strcmp(c->sess_cluster, cluster) != 0)
            return my_errf(c, MQS_EINVAL,
                           "mysql: this connection holds the session lock of cluster "
                           "'%s'; it cannot also take that of '%s' (one cluster per "
                           "connection)",
                           c->sess_cluster, cluster);
        /* Alive check: one round trip that also proves we still hold it. */
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "SELECT IS_USED_LOCK(");
        my_sb_session_name(&c->sql, cluster);
        my_sb_printf(&c->sql, ") = CONNECTION_ID()");
        int f;
        if (c->sql.oom)
            return my_oom(c, "session_lock");
        rc = my_query_i64(c, "checking the session lock", c->sql.p, &got, &f);
        if (rc)
            return rc;
        if (!f || got != 1) {
            free(c->sess_cluster);
            c->sess_cluster = NULL;
            return my_errf(c, MQS_ECONN,
                           "mysql: the session lock of cluster '%s' on %s is no longer "
                           "held by this connection",
                           cluster, c->uri);
        }
        *session_id = c->sess_id;
        return 0;
    }
    /* A GET_LOCK wait must end before read_timeout declares the connection
     * dead; longer waits are cut in slices. */
    int64_t slice = 10000;
    if (c->read_timeout && (int64_t)c->read_timeout * 1000 / 2 < slice)
        slice = (int64_t)c->read_timeout * 1000 / 2;
    deadline = wait_ms < 0 ? INT64_MAX : my_mono_ms() + wait_ms;
    for (;;) {
        int64_t left = deadline == INT64_MAX ? slice : deadline - my_mono_ms();
        if (left < 0)
            left = 0;
        if (left > slice)
            left = slice;
        /* MySQL rounds the timeout to whole seconds; MariaDB takes ms. */
        if (!c->is_mariadb)
            left = left / 1000 * 1000;
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "SELECT GET_LOCK(");
        my_sb_session_name(&c->sql, cluster);
        my_sb_printf(&c->sql, ", %" PRId64 ".%03d), CONNECTION_ID()", left / 1000,
                     (int)(left % 1000));
        if (c->sql.oom)
            return my_oom(c, "session_lock");
        MYSQL_RES *res;
        if ((rc = my_query(c, "taking the session lock (GET_LOCK)", c->sql.p, c->sql.len,
                           &res)))
            return rc;
        MYSQL_ROW row = mysql_fetch_row(res);
        found = row && row[0];
        got = found ? my_i64(row[0]) : -1;
        int64_t id = row && row[1] ? my_i64(row[1]) : 0;
        mysql_free_result(res);
        if (!found)
            return my_errf(c, MQS_EIO,
                           "mysql: GET_LOCK for the session lock of cluster '%s' on %s "
                           "returned NULL (killed or out of memory)",
                           cluster, c->uri);
        if (got == 1) {
            c->sess_cluster = strdup(cluster);
            if (!c->sess_cluster) {
                my_sb_reset(&c->sql);
                my_sb_printf(&c->sql, "DO RELEASE_LOCK(");
                my_sb_session_name(&c->sql, cluster);
                my_sb_printf(&c->sql, ")");
                if (!c->sql.oom)
                    (void)my_exec_sb(c, "releasing the session lock", NULL);
                return my_oom(c, "session_lock");
            }
            c->sess_id = id;
            *session_id = id;
            return 0;
        }
        int64_t rest = deadline == INT64_MAX ? slice : deadline - my_mono_ms();
        if (rest <= 0)
            return my_errf(c, MQS_EBUSY,
                           "mysql: the session lock of cluster '%s' on %s is held by "
                           "another connection (waited %" PRId64 " ms)",
                           cluster, c->uri, wait_ms > 0 ? wait_ms : 0);
        if (rest < 1000 && !c->is_mariadb) {
            /* Sub-second rest on MySQL: sleep it, then try once more. */
            struct timespec ts = {0, (long)rest * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
}

int my_session_unlock(mqs_be_conn *c, const char *cluster)
{
    if (!c->sess_cluster || strcmp(c->sess_cluster, cluster) != 0)
        return 0;
    free(c->sess_cluster);
    c->sess_cluster = NULL;
    c->sess_id = 0;
    MY_CHECK_CONN(c); /* a lost connection released it already */
    my_sb_reset(&c->sql);
    my_sb_printf(&c->sql, "DO RELEASE_LOCK(");
    my_sb_session_name(&c->sql, cluster);
    my_sb_printf(&c->sql, ")");
    return my_exec_sb(c, "releasing the session lock (RELEASE_LOCK)", NULL);
}
