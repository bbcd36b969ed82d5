/*
 * postgresql_lock.c - the PostgreSQL backend's exclusive lock (ABI 1.1,
 * the fence of ABI 2.0) and session lock (crash detector).
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "postgresql_int.h"

/* ---------------------------------------------------------------------------
 * Exclusive lock (ABI 1.1)
 *
 * One row per cluster in mqs_lock (schema 002_lock.sql). Every time is the
 * server's clock_timestamp(); a node's clock is never used.
 *
 * Crash detector: a session-level advisory lock on the core's dedicated lock
 * connection, keyed by a 64-bit hash of the database and cluster names. The
 * row records the pid of the session holding it and the server instance
 * (epoch, see the schema file); whether a pid holds the lock is always
 * asked of the server (pg_locks), never assumed.
 *
 * A frozen master must not keep a standby out with row locks: every write
 * transaction sets idle_in_transaction_session_timeout = lease_ms (SET
 * LOCAL), so the server ends a session stuck inside one about a lease after
 * its last statement, and acquire waits at most PG_ACQUIRE_WAIT_MS for the
 * row lock.
 *
 * Behind a transaction pooler (pgbouncer pool_mode=transaction) an advisory
 * lock stays with whichever server connection ran the statement: it neither
 * follows the client nor ends with it. session_lock detects a pooler (the
 * backend pid libpq got at connect is not pg_backend_pid()) and refuses with
 * MQS_EINVAL: use crash_detect=off there (takeover after a crash then takes
 * up to a lease). Everything else here is pooler-safe. A session pooler
 * (pgbouncer pool_mode=session) pins one server session per client and
 * frees its advisory locks when the client goes (DISCARD ALL), so the
 * detector works there once the URI says pooler=session: the lock is taken
 * in the pinned session, and each statement checks it still runs there.
 * ------------------------------------------------------------------------- */

/* How long acquire waits behind a row lock on mqs_lock (a write of the
 * holder: milliseconds, or a frozen holder: until the server ends it). */
#define PG_ACQUIRE_WAIT_MS 200
/* A standby waiting on the session lock tries it this often (waits up to
 * PG_TRY_WAIT_MS_MAX; longer ones block in the server). */
#define PG_TRY_EVERY_MS 25
#define PG_TRY_WAIT_MS_MAX 10000
/* How long the alive check of a held session lock may go unanswered before
 * session_lock reports it unconfirmed for now (MQS_ETIMEDOUT: renewals stop
 * recording the session); the answer is collected on the next call, so a
 * slow path never drops a lock that may well still be held. */
#define PG_ALIVE_WAIT_MS 1000
/* How long a session lock statement may take beyond its lock wait before
 * the connection is given up as stalled (its outcome is unknown: only
 * closing the connection settles it). */
#define PG_REPLY_WAIT_MS 2000

/* The advisory lock key of cluster $1: per database and cluster. */
#define PG_LOCK_KEY                                                            \
    "pg_catalog.hashtextextended('mqstore:' || "                               \
    "pg_catalog.current_database() || ':' || $1::text, 0)"

/* Does backend `pid` hold the session lock of cluster $1 right now?
 * pg_advisory_lock(int8) splits the key into classid (high 32 bits) and
 * objid (low 32 bits), objsubid 1. */
#define PG_HOLDS(pid)                                                          \
    "EXISTS (SELECT 1 FROM pg_catalog.pg_locks l, (SELECT " PG_LOCK_KEY        \
    " AS k) h WHERE l.locktype = 'advisory' AND l.database = (SELECT d.oid "   \
    "FROM pg_catalog.pg_database d WHERE d.datname = "                         \
    "pg_catalog.current_database()) AND l.classid::int8 = (h.k >> 32) & "      \
    "4294967295 AND l.objid::int8 = h.k & 4294967295 AND l.objsubid = 1 AND "  \
    "l.granted AND l.pid = " pid ")"

/* The server instance (see 002_lock.sql). */
#define PG_EPOCH "pg_catalog.pg_postmaster_start_time()"
#define PG_RESET "pg_catalog.pg_stat_get_bgwriter_stat_reset_time()"
#define PG_SAME_EPOCH                                                          \
    "(m.session_epoch = " PG_EPOCH " AND m.session_reset IS NOT DISTINCT "     \
    "FROM " PG_RESET ")"

/* $5 = this node's session pid (or NULL): recorded, with the epoch, only
 * when the server confirms that session holds the lock now. */
#define PG_FROM_SESSION                                                        \
    " FROM (SELECT pg_catalog.clock_timestamp() AS now, CASE WHEN $5::int4 "   \
    "IS NULL THEN false ELSE " PG_HOLDS("$5") " END AS held) s "
#define PG_SET_SESSION                                                         \
    "session_id = CASE WHEN s.held THEN $5::int4 END, "                        \
    "session_epoch = CASE WHEN s.held THEN " PG_EPOCH " END, "                 \
    "session_reset = CASE WHEN s.held THEN " PG_RESET " END"
#define PG_MS(iv) "pg_catalog.ceil(extract(epoch FROM " iv ") * 1000)::int8"
#define PG_MS_DOWN(iv)                                                         \
    "pg_catalog.floor(extract(epoch FROM " iv ") * 1000)::int8"

/* holder, token, lease left, held for, session armed. */
static const char SQL_LOCK_STATE[] =
    "SELECT m.holder, m.token, " PG_MS("m.lease_until - t.now") ", "
    PG_MS_DOWN("t.now - m.acquired") ", "
    "COALESCE(m.session_id IS NOT NULL AND " PG_SAME_EPOCH ", false) "
    "FROM mqs_lock m, (SELECT pg_catalog.clock_timestamp() AS now) t "
    "WHERE m.cluster = $1";

/* The lock is takeable (see lock_acquire in backend.h): free, expired, or
 * its recorded session gone under the same epoch ($4 = holder_gone). */
#define PG_TAKEABLE                                                            \
    "(m.holder IS NULL OR m.lease_until IS NULL OR m.lease_until <= s.now OR " \
    "($4::bool AND m.session_id IS NOT NULL AND " PG_SAME_EPOCH " AND NOT "    \
    PG_HOLDS("m.session_id") "))"

/* $1 cluster, $2 node, $3 lease ms, $4 holder_gone, $5 session pid. A wait
 * for the row lock re-checks the condition on the row as committed (READ
 * COMMITTED), against a `now` read before the wait: never late. */
static const char SQL_LOCK_TAKE[] =
    "UPDATE mqs_lock m SET holder = $2, token = m.token + 1, "
    "lease_until = s.now + $3::float8 * interval '1 millisecond', "
    "acquired = s.now, " PG_SET_SESSION PG_FROM_SESSION
    "WHERE m.cluster = $1 AND " PG_TAKEABLE " RETURNING m.token";

/* The fence's exclusive side, taken only when the lock is takeable: it
 * waits for the old holder's fenced transactions to end, and none of its
 * new ones can start its guard before this transaction commits. A standby
 * polling a live master takes nothing here, so waits for nothing and
 * leaves no "lock timeout" line in the server's log. */
static const char SQL_LOCK_TAKE_FENCE[] =
    "SELECT CASE WHEN EXISTS (SELECT 1 FROM mqs_lock m, (SELECT "
    "pg_catalog.clock_timestamp() AS now) s WHERE m.cluster = $1 AND "
    PG_TAKEABLE ") THEN (SELECT true FROM pg_catalog.pg_advisory_xact_lock("
    PG_FENCE_KEY ")) ELSE false END";

/* Creates the row only when it is missing: a poll writes nothing. */
static const char SQL_LOCK_CREATE[] =
    "INSERT INTO mqs_lock (cluster) SELECT $1 WHERE NOT EXISTS (SELECT 1 "
    "FROM mqs_lock WHERE cluster = $1) ON CONFLICT (cluster) DO NOTHING";

/* $1 cluster, $2 node, $3 lease ms, $4 token, $5 session pid. */
static const char SQL_LOCK_RENEW[] =
    "UPDATE mqs_lock m SET "
    "lease_until = s.now + $3::float8 * interval '1 millisecond', "
    PG_SET_SESSION PG_FROM_SESSION
    "WHERE m.cluster = $1 AND m.holder = $2 AND m.token = $4 "
    "RETURNING m.token, " PG_MS("m.lease_until - s.now") ", "
    PG_MS_DOWN("s.now - m.acquired") ", m.session_id IS NOT NULL";

static const char SQL_LOCK_CLEAR[] =
    "UPDATE mqs_lock SET holder = NULL, lease_until = NULL, acquired = NULL, "
    "session_id = NULL, session_epoch = NULL, session_reset = NULL "
    "WHERE cluster = $1";

/* Session lock statements; $1 cluster, $2 the backend pid libpq got at
 * connect: a pooler shows another one, and then nothing is locked. */
static const char SQL_SESSION_TRY[] =
    "SELECT pg_catalog.pg_backend_pid(), CASE WHEN "
    "pg_catalog.pg_backend_pid() = $2 THEN "
    "pg_catalog.pg_try_advisory_lock(" PG_LOCK_KEY ") END";
/* $3 = lock_timeout, set for this statement's implicit transaction only;
 * OFFSET 0 keeps the subquery (so the setting) ahead of the lock. */
static const char SQL_SESSION_WAIT[] =
    "SELECT pg_catalog.pg_backend_pid(), CASE WHEN "
    "pg_catalog.pg_backend_pid() = $2 THEN (SELECT true FROM "
    "pg_catalog.pg_advisory_lock(" PG_LOCK_KEY ")) END "
    "FROM (SELECT pg_catalog.set_config('lock_timeout', $3, true) "
    "OFFSET 0) s";
static const char SQL_SESSION_ALIVE[] =
    "SELECT pg_catalog.pg_backend_pid() = $2 AND "
    PG_HOLDS("pg_catalog.pg_backend_pid()");
static const char SQL_SESSION_UNLOCK[] =
    "SELECT pg_catalog.pg_advisory_unlock(" PG_LOCK_KEY ")";

/* A lock callback may run on this connection now; what = for messages. */
static int pg_lock_ready(mqs_be_conn *c, const char *what, int want_txn)
{
    int rc = pg_unusable(c, what);
    if (rc)
        return rc;
    if (!!c->in_txn != want_txn) {
        pg_set_err(c, "postgresql %s: %s: called %s a write transaction",
                   c->masked, what, want_txn ? "outside" : "inside");
        return MQS_ESTATE;
    }
    if (PQserverVersion(c->pg) < 110000) {
        pg_set_err(c,
                   "postgresql %s: %s: the exclusive lock needs PostgreSQL "
                   "11 or newer (hashtextextended); the server is version "
                   "%d",
                   c->masked, what, PQserverVersion(c->pg));
        return MQS_ENOTSUP;
    }
    return 0;
}

/* A failed lock statement: a database without schema 2 gets a message
 * that says what to do. */
static int pg_lock_err(mqs_be_conn *c, int rc)
{
    if (pg_is(c->state, "42P01")) {
        pg_set_err(c,
                   "postgresql %s: there is no mqs_lock table: the exclusive "
                   "lock needs schema version 2 (002_lock.sql); run "
                   "`mqstore migrate URI` or open the store with "
                   "migrate=auto (SQLSTATE 42P01)",
                   c->masked);
        return MQS_ESCHEMA;
    }
    return rc;
}

/* Fill st from a SQL_LOCK_STATE result (no row: free, token 0). */
static int pg_lock_state(mqs_be_conn *c, const PGresult *r,
                         mqs_be_lock_state *st, const char *what)
{
    memset(st, 0, sizeof *st);
    if (PQntuples(r) == 0)
        return 0;
    int64_t armed = 0;
    if (PQnfields(r) != 5 || pg_get_int(r, 0, 1, &st->token) ||
        pg_get_int(r, 0, 2, &st->lease_left_ms) ||
        pg_get_int(r, 0, 3, &st->held_ms) || pg_get_int(r, 0, 4, &armed))
        return pg_bad_result(c, what);
    if (!PQgetisnull(r, 0, 0))
        snprintf(st->holder, sizeof st->holder, "%s", PQgetvalue(r, 0, 0));
    else
        st->lease_left_ms = st->held_ms = 0;
    st->session_armed = st->holder[0] && armed;
    return 0;
}

int pg_lock_read(mqs_be_conn *c, const char *cluster,
                 mqs_be_lock_state *st)
{
    const char *what = "reading the lock (mqs_lock)";
    memset(st, 0, sizeof *st);
    int rc = pg_lock_ready(c, what, 0);
    if (rc)
        return rc;
    const Oid types[1] = {PG_OID_TEXT};
    const char *vals[1] = {cluster};
    PGresult *r;
    if ((rc = pg_run1(c, what, SQL_LOCK_STATE, 1, types, vals, &r)))
        return pg_lock_err(c, rc);
    rc = pg_lock_state(c, r, st, what);
    PQclear(r);
    return rc;
}

int pg_lock_acquire(mqs_be_conn *c, const mqs_be_lock *l,
                    mqs_be_lock_state *st)
{
    const char *what = "taking the lock (mqs_lock)";
    memset(st, 0, sizeof *st);
    int rc = pg_lock_ready(c, what, 0);
    if (rc)
        return rc;
    char lease[24], sid[16], wait[24];
    snprintf(lease, sizeof lease, "%lld", (long long)l->lease_ms);
    snprintf(sid, sizeof sid, "%lld", (long long)l->session_id);
    snprintf(wait, sizeof wait, "%lld",
             (long long)(l->wait_ms > 0 ? l->wait_ms : PG_ACQUIRE_WAIT_MS));
    const Oid t_wait[1] = {PG_OID_TEXT};
    const char *v_wait[1] = {wait};
    const Oid t_cl[1] = {PG_OID_TEXT};
    const char *v_cl[1] = {l->cluster};
    const Oid t_take[5] = {PG_OID_TEXT, PG_OID_TEXT, PG_OID_INT8, PG_OID_BOOL,
                           PG_OID_INT4};
    const char *v_take[5] = {l->cluster, l->node, lease,
                             l->holder_gone ? "t" : "f",
                             l->session_id > 0 ? sid : NULL};
    /* One round trip, one implicit transaction (the pipeline's). While a
     * live holder's lease stands nothing here locks, waits or writes. */
    const pg_stmt sts[5] = {
        {"SELECT pg_catalog.set_config('lock_timeout', $1, true)", 1, t_wait,
         v_wait, NULL, NULL},
        {SQL_LOCK_CREATE, 1, t_cl, v_cl, NULL, NULL},
        {SQL_LOCK_TAKE_FENCE, 5, t_take, v_take, NULL, NULL},
        {SQL_LOCK_TAKE, 5, t_take, v_take, NULL, NULL},
        {SQL_LOCK_STATE, 1, t_cl, v_cl, NULL, NULL},
    };
    PGresult *res[5];
    rc = pg_run(c, what, sts, 5, res);
    if (rc == MQS_EBUSY && pg_is(c->state, "55P03")) {
        /* The holder has a transaction open on the row: writing now, or
         * frozen inside it until the server ends its session. */
        if (pg_lock_read(c, l->cluster, st) != 0)
            memset(st, 0, sizeof *st);
        pg_set_err(c,
                   "postgresql %s: the lock of cluster '%s' is held by node "
                   "%s (token %lld): a write transaction of the old holder "
                   "was still open after %s ms (a holder frozen inside one "
                   "is ended by the server about lease_ms after its last "
                   "statement)",
                   c->masked, l->cluster, st->holder[0] ? st->holder : "?",
                   (long long)st->token, wait);
        return MQS_EBUSY;
    }
    if (rc)
        return pg_lock_err(c, rc);
    int taken = PQntuples(res[3]) == 1;
    rc = pg_lock_state(c, res[4], st, what);
    for (int i = 0; i < 5; i++)
        PQclear(res[i]);
    if (rc)
        return rc;
    if (!taken) {
        pg_set_err(c,
                   "postgresql %s: the lock of cluster '%s' is held by node "
                   "%s (token %lld, lease %lld ms left, held for %lld ms, "
                   "crash detector %s)",
                   c->masked, l->cluster, st->holder, (long long)st->token,
                   (long long)st->lease_left_ms, (long long)st->held_ms,
                   st->session_armed ? "armed" : "not armed");
        return MQS_EBUSY;
    }
    return 0;
}

/* The renewal matched no row: say who holds the lock now. */
static int pg_lock_fenced(mqs_be_conn *c, const mqs_be_lock *l)
{
    const Oid types[1] = {PG_OID_TEXT};
    const char *vals[1] = {l->cluster};
    PGresult *r = NULL;
    mqs_be_lock_state st;
    if (pg_run1(c, "reading the lock (mqs_lock)", SQL_LOCK_STATE, 1, types,
                vals, &r) != 0 ||
        pg_lock_state(c, r, &st, "reading the lock (mqs_lock)") != 0) {
        char why[sizeof c->err];
        memcpy(why, c->err, sizeof why);
        PQclear(r);
        pg_set_err(c,
                   "postgresql %s: node %s (token %lld) no longer holds the "
                   "lock of cluster '%s' and was fenced (the current holder "
                   "could not be read: %s)",
                   c->masked, l->node, (long long)l->token, l->cluster, why);
        return MQS_EFENCED;
    }
    int found = PQntuples(r) == 1;
    PQclear(r);
    if (!found)
        pg_set_err(c,
                   "postgresql %s: the lock of cluster '%s' has no row any "
                   "more; node %s (token %lld) was fenced",
                   c->masked, l->cluster, l->node, (long long)l->token);
    else if (!st.holder[0])
        pg_set_err(c,
                   "postgresql %s: the lock of cluster '%s' is now free "
                   "(token %lld); node %s (token %lld) was fenced",
                   c->masked, l->cluster, (long long)st.token, l->node,
                   (long long)l->token);
    else
        pg_set_err(c,
                   "postgresql %s: the lock of cluster '%s' is now held by "
                   "%s (token %lld); node %s (token %lld) was fenced",
                   c->masked, l->cluster, st.holder, (long long)st.token,
                   l->node, (long long)l->token);
    return MQS_EFENCED;
}

int pg_lock_renew(mqs_be_conn *c, const mqs_be_lock *l,
                  mqs_be_lock_state *st)
{
    const char *what = "renewing the lease (mqs_lock)";
    memset(st, 0, sizeof *st);
    /* Its own (implicit) transaction on the lease connection: the one
     * statement that writes the row while a master holds it, once per
     * renew_ms. Fenced writes take no row lock, so it waits for none of
     * them; lock_timeout bounds a wait behind anything else. */
    int rc = pg_lock_ready(c, what, 0);
    if (rc)
        return rc;
    char wait[24], lease[24], token[24], sid[16];
    snprintf(wait, sizeof wait, "%lld",
             (long long)(l->wait_ms > 0 ? l->wait_ms : 1000));
    snprintf(lease, sizeof lease, "%lld", (long long)l->lease_ms);
    snprintf(token, sizeof token, "%lld", (long long)l->token);
    snprintf(sid, sizeof sid, "%lld", (long long)l->session_id);
    const Oid t_wait[1] = {PG_OID_TEXT};
    const char *v_wait[1] = {wait};
    const Oid t_renew[5] = {PG_OID_TEXT, PG_OID_TEXT, PG_OID_INT8,
                            PG_OID_INT8, PG_OID_INT4};
    const char *v_renew[5] = {l->cluster, l->node, lease, token,
                              l->session_id > 0 ? sid : NULL};
    const pg_stmt sts[2] = {
        {"SELECT pg_catalog.set_config('lock_timeout', $1, true)", 1, t_wait,
         v_wait, NULL, NULL},
        {SQL_LOCK_RENEW, 5, t_renew, v_renew, NULL, NULL},
    };
    PGresult *res[2];
    if ((rc = pg_run(c, what, sts, 2, res)))
        return pg_lock_err(c, rc);
    PQclear(res[0]);
    PGresult *r = res[1];
    if (PQntuples(r) != 1) {
        PQclear(r);
        return pg_lock_fenced(c, l);
    }
    int64_t armed = 0;
    if (PQnfields(r) != 4 || pg_get_int(r, 0, 0, &st->token) ||
        pg_get_int(r, 0, 1, &st->lease_left_ms) ||
        pg_get_int(r, 0, 2, &st->held_ms) || pg_get_int(r, 0, 3, &armed)) {
        PQclear(r);
        return pg_bad_result(c, what);
    }
    PQclear(r);
    snprintf(st->holder, sizeof st->holder, "%s", l->node);
    st->session_armed = (int)armed;
    return 0;
}

/* Free the lock in its own (implicit) transaction; node != NULL: only where
 * holder and token match. The token stays. */
static int pg_lock_clear(mqs_be_conn *c, const char *cluster, const char *node,
                         int64_t token)
{
    const char *what = node ? "releasing the lock (mqs_lock)"
                            : "forcing the lock free (mqs_lock)";
    int rc = pg_lock_ready(c, what, 0);
    if (rc)
        return rc;
    char tok[24];
    snprintf(tok, sizeof tok, "%lld", (long long)token);
    const Oid types[3] = {PG_OID_TEXT, PG_OID_TEXT, PG_OID_INT8};
    const char *vals[3] = {cluster, node, tok};
    char sql[sizeof SQL_LOCK_CLEAR + 64];
    snprintf(sql, sizeof sql, "%s%s", SQL_LOCK_CLEAR,
             node ? " AND holder = $2 AND token = $3" : "");
    if (node) { /* the holder itself: its writes have stopped */
        rc = pg_run1(c, what, sql, 3, types, vals, NULL);
        return rc ? pg_lock_err(c, rc) : 0;
    }
    /* Forcing: like a takeover, wait (bounded) for the holder's fenced
     * write transactions, so none commits after the row is cleared. */
    const pg_stmt sts[3] = {
        {"SELECT pg_catalog.set_config('lock_timeout', '5000', true)", 0,
         NULL, NULL, NULL, NULL},
        {"SELECT 1 FROM pg_catalog.pg_advisory_xact_lock(" PG_FENCE_KEY ")",
         1, types, vals, NULL, NULL},
        {sql, 1, types, vals, NULL, NULL},
    };
    rc = pg_run(c, what, sts, 3, NULL);
    return rc ? pg_lock_err(c, rc) : 0;
}

/* Fence without writing. The transaction takes a SHARED transaction-level
 * advisory lock on the cluster's fence key with its BEGIN, and just before
 * its COMMIT a guard statement checks the row (holder, token, lease left
 * by the server's clock); a failed guard aborts the transaction, so the
 * COMMIT sent behind it in the same pipeline rolls back. A takeover (and
 * lock_force) takes the same key EXCLUSIVELY before it updates the row,
 * in the same transaction. See docs/architecture.md for why no takeover
 * can commit between the guard and this COMMIT. Nothing is written: an
 * advisory lock lives in the server's shared memory only. */
int pg_lock_fence(mqs_be_conn *c, const mqs_be_fence *f)
{
    const char *what = "fencing the write transaction";
    int rc = pg_lock_ready(c, what, 1);
    if (rc)
        return rc;
    if (strlen(f->cluster) >= sizeof c->fence_cluster ||
        strlen(f->node) >= sizeof c->fence_node) {
        pg_set_err(c, "postgresql %s: %s: cluster or node name too long",
                   c->masked, what);
        return MQS_EINVAL;
    }
    snprintf(c->fence_cluster, sizeof c->fence_cluster, "%s", f->cluster);
    snprintf(c->fence_node, sizeof c->fence_node, "%s", f->node);
    c->fence_token = f->token;
    c->fence_margin_ms = f->margin_ms;
    /* The server ends a session idle inside a transaction for about a
     * lease (a master frozen mid-transaction), freeing its fence lock for
     * a standby. */
    int64_t idle = f->lease_ms;
    c->idle_ms = idle < 1 ? 1 : idle > INT32_MAX ? INT32_MAX : idle;
    c->fence_on = 1;
    c->fence_locked = 0;
    return 0;
}

int pg_lock_release(mqs_be_conn *c, const mqs_be_lock *l)
{
    return pg_lock_clear(c, l->cluster, l->node, l->token);
}

int pg_lock_force(mqs_be_conn *c, const char *cluster)
{
    return pg_lock_clear(c, cluster, NULL, 0);
}

/* ---- session lock (crash detector) ---- */

static int64_t pg_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Send one statement without waiting for its answer (c->inflight). */
static int pg_send(mqs_be_conn *c, const char *what, const char *sql, int n,
                   const Oid *types, const char *const *vals)
{
    if (!PQsendQueryParams(c->pg, sql, n, types, vals, NULL, NULL, 1))
        return pg_fail_code(c, NULL, what, MQS_ECONN);
    c->inflight = 1;
    return 0;
}

/* Wait up to wait_ms (< 0: no limit) for the answer to the statement in
 * flight. 0: *res is its result, to PQclear(). 1: no answer yet, it stays
 * in flight. Negative: the connection failed. */
static int pg_await(mqs_be_conn *c, const char *what, int64_t wait_ms,
                    PGresult **res)
{
    *res = NULL;
    int64_t end = wait_ms < 0 ? INT64_MAX : pg_mono_ms() + wait_ms;
    for (;;) {
        if (!PQconsumeInput(c->pg)) {
            c->inflight = 0;
            return pg_fail_code(c, NULL, what, MQS_ECONN);
        }
        while (!PQisBusy(c->pg)) {
            PGresult *r = PQgetResult(c->pg);
            if (!r) { /* all of it came */
                c->inflight = 0;
                *res = c->pend;
                c->pend = NULL;
                if (!*res)
                    return pg_fail_code(c, NULL, what, MQS_ECONN);
                return 0;
            }
            if (!c->pend)
                c->pend = r;
            else
                PQclear(r);
        }
        int64_t left = end == INT64_MAX ? 1000 : end - pg_mono_ms();
        if (left <= 0)
            return 1;
        struct pollfd p = {.fd = PQsocket(c->pg), .events = POLLIN};
        if (poll(&p, 1, (int)(left > 1000 ? 1000 : left)) < 0 &&
            errno != EINTR) {
            c->broken = 1;
            pg_set_err(c, "postgresql %s: %s: poll: %s", c->masked, what,
                       strerror(errno));
            return MQS_ECONN;
        }
    }
}

/* Send, then wait up to wait_ms; a statement unanswered by then leaves the
 * connection unusable (its outcome is unknown): MQS_ECONN. The caller
 * PQclear()s *res, which may be an error result. */
static int pg_ask(mqs_be_conn *c, const char *what, const char *sql, int n,
                  const Oid *types, const char *const *vals, int64_t wait_ms,
                  PGresult **res)
{
    *res = NULL;
    int rc = pg_send(c, what, sql, n, types, vals);
    if (!rc)
        rc = pg_await(c, what, wait_ms, res);
    if (rc == 1) {
        c->broken = 1;
        pg_set_err(c,
                   "postgresql %s: %s: no answer from the server within "
                   "%lld ms (a stalled server or network path); the "
                   "connection is given up.",
                   c->masked, what, (long long)wait_ms);
        return MQS_ECONN;
    }
    return rc;
}

static void pg_session_forget(mqs_be_conn *c)
{
    free(c->sess_cluster);
    c->sess_cluster = NULL;
    c->sess_pid = 0;
    c->sess_pending = 0;
}

static int pg_pooled(mqs_be_conn *c)
{
    if (c->session_pooler) {
        pg_set_err(c,
                   "postgresql %s: pooler=session, but this connection's "
                   "statements ran in server session %d and then in %d: the "
                   "pooler does not keep a client on one server session "
                   "(pgbouncer pool_mode=transaction or statement?), so a "
                   "session-level advisory lock cannot tell that a node "
                   "died. Use pool_mode=session, or drop pooler=session and "
                   "add crash_detect=off to the URI.",
                   c->masked, c->pinned_pid, c->pooled_pid);
        return MQS_EINVAL;
    }
    /* The fix first: long messages get cut in logs. */
    pg_set_err(c,
               "postgresql %s: crash_detect=on needs a direct connection to "
               "PostgreSQL: add crash_detect=off to the URI (a standby then "
               "takes over when the lease ends, up to lease_ms after a "
               "crash), or connect directly. This connection goes through a "
               "pooler or proxy (libpq was given backend pid %d at connect, "
               "statements run in backend %d); behind a transaction pooler "
               "(pgbouncer pool_mode=transaction) a session-level advisory "
               "lock stays with a pooled server connection instead of this "
               "client, so it cannot tell that a node died.",
               c->masked, PQbackendPID(c->pg), c->pooled_pid);
    return MQS_EINVAL;
}

/* pooler=session: the server session this client is pinned to. libpq's
 * BackendKeyData pid is the pooler's own, so ask the server. */
static int pg_pinned(mqs_be_conn *c, const char *what)
{
    PGresult *r;
    int rc = pg_ask(c, what, "SELECT pg_catalog.pg_backend_pid()", 0, NULL,
                    NULL, PG_REPLY_WAIT_MS, &r);
    if (rc)
        return rc;
    int64_t pid = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        rc = pg_fail(c, r, what);
    else if (PQntuples(r) != 1 || pg_get_int(r, 0, 0, &pid) || pid <= 0 ||
             pid > INT32_MAX)
        rc = pg_bad_result(c, what);
    PQclear(r);
    if (!rc)
        c->pinned_pid = (int)pid;
    return rc;
}

/* This session holds the lock: is it still alive and holding it? */
static int pg_session_check(mqs_be_conn *c, int64_t wait_ms,
                            int64_t *session_id)
{
    const char *what = "checking the session lock (pg_locks)";
    int rc;
    if (!c->sess_pending) {
        char pid[16];
        snprintf(pid, sizeof pid, "%d", c->sess_pid);
        const Oid types[2] = {PG_OID_TEXT, PG_OID_INT4};
        const char *vals[2] = {c->sess_cluster, pid};
        if ((rc = pg_send(c, what, SQL_SESSION_ALIVE, 2, types, vals))) {
            pg_session_forget(c);
            return rc;
        }
        c->sess_pending = 1;
    }
    PGresult *r;
    int64_t wait = wait_ms > 0 ? wait_ms : PG_ALIVE_WAIT_MS;
    rc = pg_await(c, what, wait, &r);
    if (rc == 1) {
        /* Slow, not known dead: keep the session (and the lock) and ask
         * for the answer again next time. */
        pg_set_err(c,
                   "postgresql %s: %s: no answer within %lld ms (a slow "
                   "server or a stalled network path); the lock stays held "
                   "as far as this node knows, the answer is collected on "
                   "the next call",
                   c->masked, what, (long long)wait);
        return MQS_ETIMEDOUT;
    }
    c->sess_pending = 0;
    if (rc) {
        pg_session_forget(c);
        return rc;
    }
    int64_t ok = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        rc = pg_fail(c, r, what);
    } else if (PQntuples(r) != 1 || pg_get_int(r, 0, 0, &ok)) {
        rc = pg_bad_result(c, what);
    } else if (!ok) {
        pg_set_err(c,
                   "postgresql %s: the session lock of cluster '%s' is no "
                   "longer held by this session (backend %d)",
                   c->masked, c->sess_cluster, c->sess_pid);
        rc = MQS_ECONN;
    }
    PQclear(r);
    if (rc) {
        pg_session_forget(c);
        return rc;
    }
    *session_id = c->sess_pid;
    return 0;
}

int pg_session_lock(mqs_be_conn *c, const char *cluster, int64_t wait_ms,
                    int64_t *session_id)
{
    const char *what = wait_ms ? "taking the session lock (pg_advisory_lock)"
                               : "taking the session lock "
                                 "(pg_try_advisory_lock)";
    *session_id = 0;
    int rc = pg_unusable(c, what);
    if (rc) {
        pg_session_forget(c);
        return rc;
    }
    if (c->sess_cluster) {
        if (strcmp(c->sess_cluster, cluster) != 0) {
            pg_set_err(c,
                       "postgresql %s: this connection holds the session "
                       "lock of cluster '%s'; it cannot also take that of "
                       "'%s' (one cluster per connection)",
                       c->masked, c->sess_cluster, cluster);
            return MQS_EINVAL;
        }
        return pg_session_check(c, wait_ms, session_id);
    }
    if (c->direct < 0)
        return pg_pooled(c);
    if ((rc = pg_lock_ready(c, what, 0)))
        return rc;
    /* The session the lock must be taken in: this client's own, or with
     * pooler=session the server session the pooler pinned it to. Every
     * statement below checks it still runs there, so a pooler that moves
     * the client between sessions is caught, not trusted. */
    int own = PQbackendPID(c->pg);
    if (c->session_pooler) {
        if (!c->pinned_pid && (rc = pg_pinned(c, what)))
            return rc;
        own = c->pinned_pid;
    }

    char pid[16], timeout[24];
    snprintf(pid, sizeof pid, "%d", own);
    /* lock_timeout 0 = no limit; INT32_MAX ms is its largest value. */
    snprintf(timeout, sizeof timeout, "%lld",
             (long long)(wait_ms < 0 ? 0 : wait_ms > INT32_MAX ? INT32_MAX
                                                             : wait_ms));
    const Oid types[3] = {PG_OID_TEXT, PG_OID_INT4, PG_OID_TEXT};
    const char *vals[3] = {cluster, pid, timeout};
    PGresult *r;
    if (wait_ms > 0 && wait_ms <= PG_TRY_WAIT_MS_MAX) {
        /* A standby's poll: try every PG_TRY_EVERY_MS until wait_ms is
         * over. A lock_timeout would leave an ERROR line in the server's
         * log per poll, and one statement waiting on the lock would hold a
         * snapshot that keeps vacuum from the master's dead rows. */
        int64_t end = pg_mono_ms() + wait_ms;
        for (;;) {
            rc = pg_ask(c, what, SQL_SESSION_TRY, 2, types, vals,
                        PG_REPLY_WAIT_MS, &r);
            if (rc)
                return rc;
            int64_t srv = 0, got = 0;
            int done = PQresultStatus(r) != PGRES_TUPLES_OK ||
                       PQntuples(r) != 1 || pg_get_int(r, 0, 0, &srv) ||
                       pg_get_int(r, 0, 1, &got) || got || srv != own;
            int64_t left = end - pg_mono_ms();
            if (done || left <= 0)
                break; /* r is read below */
            PQclear(r);
            struct timespec ts = {0, (long)(left < PG_TRY_EVERY_MS
                                                ? left
                                                : PG_TRY_EVERY_MS) *
                                         1000000L};
            nanosleep(&ts, NULL);
        }
    } else {
        rc = pg_ask(c, what, wait_ms ? SQL_SESSION_WAIT : SQL_SESSION_TRY,
                    wait_ms ? 3 : 2, types, vals,
                    wait_ms < 0 ? -1 : wait_ms + PG_REPLY_WAIT_MS, &r);
        if (rc)
            return rc;
    }
    int64_t srv = 0, got = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        rc = pg_fail(c, r, what);
        if (pg_is(c->state, "55P03")) {
            pg_set_err(c,
                       "postgresql %s: the session lock of cluster '%s' is "
                       "held by another session (waited %lld ms)",
                       c->masked, cluster, (long long)wait_ms);
            rc = MQS_EBUSY;
        }
    } else if (PQntuples(r) != 1 || pg_get_int(r, 0, 0, &srv) ||
               pg_get_int(r, 0, 1, &got)) {
        rc = pg_bad_result(c, what);
    } else if (srv != own) {
        c->direct = -1;
        c->pooled_pid = (int)srv;
        rc = pg_pooled(c);
    } else if (!got) {
        c->direct = 1;
        pg_set_err(c,
                   "postgresql %s: the session lock of cluster '%s' is held "
                   "by another session",
                   c->masked, cluster);
        rc = MQS_EBUSY;
    }
    PQclear(r);
    if (rc)
        return rc;
    c->direct = 1;
    c->sess_cluster = strdup(cluster);
    if (!c->sess_cluster) {
        /* Cannot remember it: give the session (and the lock) up. */
        c->broken = 1;
        pg_set_err(c, "postgresql %s: %s: out of memory", c->masked, what);
        return MQS_ENOMEM;
    }
    c->sess_pid = (int)srv;
    *session_id = srv;
    return 0;
}

int pg_session_unlock(mqs_be_conn *c, const char *cluster)
{
    const char *what = "releasing the session lock (pg_advisory_unlock)";
    if (!c->sess_cluster || strcmp(c->sess_cluster, cluster) != 0)
        return 0;
    int pending = c->sess_pending;
    pg_session_forget(c);
    int rc = pg_unusable(c, what);
    if (rc)
        return rc; /* the server ends the session, and the lock with it */
    PGresult *r = NULL;
    if (pending) {
        rc = pg_await(c, what, PG_REPLY_WAIT_MS, &r);
        PQclear(r);
        if (rc == 1) {
            /* Never answered: only closing the connection frees it. */
            c->broken = 1;
            pg_set_err(c,
                       "postgresql %s: %s: an earlier check is still "
                       "unanswered; close the connection to release it",
                       c->masked, what);
            return MQS_ECONN;
        }
        if (rc)
            return rc;
    }
    const Oid types[1] = {PG_OID_TEXT};
    const char *vals[1] = {cluster};
    if ((rc = pg_ask(c, what, SQL_SESSION_UNLOCK, 1, types, vals,
                     PG_REPLY_WAIT_MS, &r)))
        return rc;
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        rc = pg_fail(c, r, what);
    PQclear(r);
    return rc;
}
