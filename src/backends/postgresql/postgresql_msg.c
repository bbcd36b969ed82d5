/*
 * postgresql_msg.c - the PostgreSQL backend's SQL for the schema,
 * transactions, destinations, subscriptions, inserts, acks, reads and
 * producer marks. See postgresql.c for the concurrency rules.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "postgresql_int.h"

/* ---------------------------------------------------------------------------
 * Schema
 * ------------------------------------------------------------------------- */
static const char SQL_SCHEMA_PROBE[] =
    "SELECT to_regclass('mqs_meta') IS NOT NULL, "
    "to_regclass('mqs_dest') IS NOT NULL OR to_regclass('mqs_sub') IS NOT NULL"
    " OR to_regclass('mqs_msg') IS NOT NULL"
    " OR to_regclass('mqs_pending') IS NOT NULL"
    " OR to_regclass('mqs_lock') IS NOT NULL";

static const char SQL_META_VERSION[] =
    "SELECT value FROM mqs_meta WHERE key = 'schema_version'";

static int pg_read_version(mqs_be_conn *c, const char *sql, int *version)
{
    const char *what = "reading schema_version from mqs_meta";
    PGresult *r;
    int rc = pg_run1(c, what, sql, 0, NULL, NULL, &r);
    if (rc) {
        /* mqs_meta is there but not ours (no key/value columns). */
        if (!strcmp(c->state, "42703")) {
            pg_set_err(c,
                       "postgresql %s: a table mqs_meta exists but has no "
                       "key/value columns: this database holds another "
                       "application's mqs_meta; use another database or "
                       "schema (search_path).",
                       c->masked);
            return MQS_ECORRUPT;
        }
        return rc;
    }
    const char *v = PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : NULL;
    char *end = NULL;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || end == v || *end || x < 1 || x > 1000000) {
        pg_set_err(c,
                   "postgresql %s: mqs_meta exists but holds no valid "
                   "schema_version (%s%s%s): not an mqstore database, or a "
                   "damaged one; it is left untouched.",
                   c->masked, v ? "value '" : "no row", v ? v : "",
                   v ? "'" : "");
        PQclear(r);
        return MQS_ECORRUPT;
    }
    PQclear(r);
    *version = (int)x;
    return 0;
}

int pg_schema_version(mqs_be_conn *c, int *version)
{
    const char *what = "probing for the mqs_* tables";
    *version = 0;
    PGresult *r;
    int rc = pg_run1(c, what, SQL_SCHEMA_PROBE, 0, NULL, NULL, &r);
    if (rc)
        return rc;
    int64_t meta = 0, other = 0;
    if (PQntuples(r) != 1 || pg_get_int(r, 0, 0, &meta) ||
        pg_get_int(r, 0, 1, &other)) {
        PQclear(r);
        return pg_bad_result(c, what);
    }
    PQclear(r);
    if (!meta && other) {
        pg_set_err(c,
                   "postgresql %s: tables named mqs_* exist but mqs_meta "
                   "does not: not created by mqstore (or damaged); it is "
                   "left untouched. Use another database or schema.",
                   c->masked);
        return MQS_ECORRUPT;
    }
    if (!meta)
        return 0;
    return pg_read_version(c, SQL_META_VERSION, version);
}

static int pg_exec_simple(mqs_be_conn *c, const char *sql, const char *what)
{
    PGresult *r = PQexec(c->pg, sql);
    int rc = pg_ok(r) ? 0 : pg_fail(c, r, what);
    PQclear(r);
    return rc;
}

static int pg_commit_now(mqs_be_conn *c, const char *what);
static void pg_txn_reset(mqs_be_conn *c);

int pg_schema_apply(mqs_be_conn *c, const mqs_be_migration *m)
{
    char what[300];
    snprintf(what, sizeof what, "applying migration %s (version %d)",
             m->name ? m->name : "?", m->version);
    int rc = pg_unusable(c, what);
    if (rc)
        return rc;
    if (c->in_txn) {
        pg_set_err(c, "postgresql %s: %s: called inside a write transaction",
                   c->masked, what);
        return MQS_ESTATE;
    }
    if ((rc = pg_exec_simple(c, "BEGIN", what)))
        return rc;
    if (m->version > 1) {
        /* Serialize migrators on the version row; one that finds the work
         * done steps back. */
        int cur = 0;
        rc = pg_read_version(c, "SELECT value FROM mqs_meta WHERE key = "
                                "'schema_version' FOR UPDATE",
                             &cur);
        if (!rc && cur >= m->version) {
            (void)pg_exec_simple(c, "ROLLBACK", what);
            return 0;
        }
        if (!rc && cur != m->version - 1) {
            pg_set_err(c,
                       "postgresql %s: %s: the database is at version %d, "
                       "expected %d",
                       c->masked, what, cur, m->version - 1);
            rc = MQS_ESTATE;
        }
    }
    /* Simple protocol: the file may hold several statements. */
    if (!rc)
        rc = pg_exec_simple(c, m->sql, what);
    if (!rc) {
        char v[16];
        snprintf(v, sizeof v, "%d", m->version);
        const char *vals[1] = {v};
        const Oid types[1] = {PG_OID_TEXT};
        rc = pg_run1(c, what,
                     "INSERT INTO mqs_meta (key, value) "
                     "VALUES ('schema_version', $1) ON CONFLICT (key) "
                     "DO UPDATE SET value = excluded.value",
                     1, types, vals, NULL);
    }
    if (!rc)
        return pg_commit_now(c, what);
    if (rc == MQS_ECONN)
        return rc;
    /* Another process may have applied it at the same time (then our
     * CREATE TABLE failed on its tables): that is success. */
    char saved[sizeof c->err];
    memcpy(saved, c->err, sizeof saved);
    int cur = 0;
    if (pg_exec_simple(c, "ROLLBACK", what) == 0 &&
        pg_schema_version(c, &cur) == 0 && cur >= m->version)
        return 0;
    memcpy(c->err, saved, sizeof saved);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Transactions
 * ------------------------------------------------------------------------- */
static void pg_txn_reset(mqs_be_conn *c)
{
    /* Ended without a COMMIT that succeeded (pg_flush settles that case):
     * a session setting made in it was undone. */
    if (c->idle_unsure) {
        c->idle_set = PG_IDLE_UNKNOWN;
        c->idle_unsure = 0;
    }
    c->in_txn = 0;
    c->begin_pending = 0;
    c->fence_on = c->fence_locked = 0;
    pg_defer_clear(c);
}

int pg_txn_begin(mqs_be_conn *c)
{
    int rc = pg_unusable(c, "BEGIN");
    if (rc)
        return rc;
    if (c->in_txn || PQtransactionStatus(c->pg) != PQTRANS_IDLE) {
        pg_set_err(c,
                   "postgresql %s: BEGIN: a transaction is already open on "
                   "this connection",
                   c->masked);
        return MQS_ESTATE;
    }
    /* Sent with the first statement that needs an answer, or with COMMIT:
     * a whole transaction in one round trip (see pg_flush). */
    pg_txn_reset(c);
    c->in_txn = 1;
    c->begin_pending = 1;
    return 0;
}

/* Did the server end this session (idle_in_transaction_session_timeout on
 * a frozen master, a restart)? It has closed its end: reading that now
 * tells a COMMIT never sent, so rolled back, from one whose outcome is
 * unknown. */
static int pg_session_ended(mqs_be_conn *c, const char *what)
{
    for (int i = 0; i < 4 && PQstatus(c->pg) != CONNECTION_BAD; i++) {
        struct pollfd p = {.fd = PQsocket(c->pg), .events = POLLIN};
        int more = poll(&p, 1, 0) > 0 && PQconsumeInput(c->pg);
        (void)PQisBusy(c->pg); /* parses what came: the FATAL notice */
        if (!more)
            break;
    }
    if (PQstatus(c->pg) != CONNECTION_BAD)
        return 0;
    /* Nothing sent: the server rolls the transaction back. */
    c->broken = 1;
    pg_set_err(c,
               "postgresql %s: %s: the connection was lost before COMMIT was "
               "sent%s%s; the transaction was rolled back.",
               c->masked, what, c->fatal[0] ? ": " : "", c->fatal);
    return MQS_ECONN;
}

/* COMMIT alone, with its outcome classified (migrations). */
static int pg_commit_now(mqs_be_conn *c, const char *what)
{
    int rc = pg_session_ended(c, what);
    if (rc)
        return rc;
    PGresult *r = PQexec(c->pg, "COMMIT");
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
        /* COMMIT of a failed transaction "succeeds" as ROLLBACK. */
        if (strcmp(PQcmdStatus(r), "COMMIT") != 0) {
            pg_set_err(c,
                       "postgresql %s: %s: COMMIT rolled back: a statement of "
                       "the transaction had failed.",
                       c->masked, what);
            rc = MQS_EIO;
        }
    } else {
        const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
        int lost = PQstatus(c->pg) == CONNECTION_BAD || !state ||
                   !strncmp(state, "08", 2) || !strncmp(state, "57P0", 4);
        char w[400];
        snprintf(w, sizeof w, "COMMIT (%s)", what);
        rc = pg_fail_code(c, r, w, lost ? MQS_EUNKNOWN : 0);
        if (lost)
            c->broken = 1;
    }
    PQclear(r);
    return rc;
}

/* The whole transaction, if nothing went ahead, in one round trip: BEGIN,
 * the fence's lock, the writes, the fence's guard, COMMIT. */
int pg_txn_commit(mqs_be_conn *c)
{
    if (!c->in_txn) {
        pg_set_err(c, "postgresql %s: COMMIT: no transaction is open",
                   c->masked);
        return MQS_ESTATE;
    }
    int rc = 0;
    if (!(c->begin_pending && c->ndq == 0)) { /* else nothing was written */
        rc = pg_unusable(c, "COMMIT");
        if (!rc)
            rc = pg_session_ended(c, "write transaction");
        if (!rc)
            rc = pg_flush(c, "write transaction", NULL, 0, NULL, 1);
    }
    int still_open = rc && c->pg && PQstatus(c->pg) != CONNECTION_BAD &&
                     PQtransactionStatus(c->pg) != PQTRANS_IDLE;
    pg_txn_reset(c);
    /* A failed statement leaves the transaction open (aborted) on the
     * server: txn_rollback ends it. */
    c->in_txn = still_open;
    return rc;
}

int pg_txn_rollback(mqs_be_conn *c)
{
    int begun = !c->begin_pending;
    pg_txn_reset(c);
    if (!begun)
        return 0;
    if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD) {
        c->broken = 1;
        pg_set_err(c,
                   "postgresql %s: ROLLBACK: the connection is lost (the "
                   "server rolls the transaction back by itself).",
                   c->masked);
        return MQS_ECONN;
    }
    if (c->broken) {
        pg_set_err(c, "postgresql %s: ROLLBACK: the connection is unusable "
                      "after an earlier failure; reconnect.",
                   c->masked);
        return MQS_ECONN;
    }
    if (PQtransactionStatus(c->pg) == PQTRANS_IDLE)
        return 0;
    return pg_exec_simple(c, "ROLLBACK", "ROLLBACK");
}

/* ---------------------------------------------------------------------------
 * Destinations and subscriptions
 * ------------------------------------------------------------------------- */
static const char SQL_DEST_GET[] =
    "SELECT id FROM mqs_dest WHERE kind = $1 AND name = $2";

/* Select first: the common case writes nothing and burns no identity. */
static const char SQL_DEST_ADD[] =
    "WITH f AS (SELECT id FROM mqs_dest WHERE kind = $1 AND name = $2), "
    "i AS (INSERT INTO mqs_dest (kind, name) SELECT $1, $2 "
    "WHERE NOT EXISTS (SELECT 1 FROM f) "
    "ON CONFLICT (kind, name) DO NOTHING RETURNING id) "
    "SELECT id FROM f UNION ALL SELECT id FROM i";

int pg_dest_resolve(mqs_be_conn *c, mqs_kind kind, const char *name,
                    int create, int64_t *dest_id)
{
    const char *what = create ? "destination lookup/insert (mqs_dest)"
                              : "destination lookup (mqs_dest)";
    const Oid types[2] = {PG_OID_INT2, PG_OID_TEXT};
    const char *vals[2] = {kind == MQS_TOPIC ? "1" : "0", name};
    int found = 0;
    int rc = pg_run_id(c, what, create ? SQL_DEST_ADD : SQL_DEST_GET, 2,
                       types, vals, dest_id, &found);
    /* A concurrent creator won the race after our snapshot: read it now. */
    if (!rc && !found && create)
        rc = pg_run_id(c, what, SQL_DEST_GET, 2, types, vals, dest_id, &found);
    if (!rc && !found) {
        pg_set_err(c, "postgresql %s: %s '%s' does not exist", c->masked,
                   kind == MQS_TOPIC ? "topic" : "queue", name);
        rc = MQS_ENOTFOUND;
    }
    return rc;
}

static const char SQL_SUB_GET[] =
    "SELECT id FROM mqs_sub WHERE dest_id = $1 AND name = $2";

static const char SQL_SUB_ADD[] =
    "WITH f AS (SELECT id FROM mqs_sub WHERE dest_id = $1 AND name = $2), "
    "i AS (INSERT INTO mqs_sub (dest_id, name, created_ms) "
    "SELECT $1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::int8 "
    "WHERE NOT EXISTS (SELECT 1 FROM f) "
    "ON CONFLICT (dest_id, name) DO NOTHING RETURNING id) "
    "SELECT id FROM f UNION ALL SELECT id FROM i";

int pg_sub_create(mqs_be_conn *c, int64_t topic_id, const char *name,
                  int64_t *sub_id)
{
    const char *what = "subscription create (mqs_sub)";
    char t[24];
    snprintf(t, sizeof t, "%lld", (long long)topic_id);
    const Oid types[2] = {PG_OID_INT8, PG_OID_TEXT};
    const char *vals[2] = {t, name};
    int found = 0;
    int rc = pg_run_id(c, what, SQL_SUB_ADD, 2, types, vals, sub_id, &found);
    if (!rc && !found)
        rc = pg_run_id(c, what, SQL_SUB_GET, 2, types, vals, sub_id, &found);
    if (!rc && !found) {
        pg_set_err(c, "postgresql %s: %s: subscription '%s' vanished while "
                      "being created; retry",
                   c->masked, what, name);
        rc = MQS_EBUSY;
    }
    return rc;
}

int pg_sub_lookup(mqs_be_conn *c, const char *topic, const char *name,
                  int64_t *sub_id)
{
    const char *what = "subscription lookup (mqs_sub)";
    const Oid types[2] = {PG_OID_TEXT, PG_OID_TEXT};
    const char *vals[2] = {topic, name};
    int found = 0;
    int rc = pg_run_id(c, what,
                       "SELECT s.id FROM mqs_sub s JOIN mqs_dest d "
                       "ON d.id = s.dest_id WHERE d.kind = 1 AND d.name = $1 "
                       "AND s.name = $2",
                       2, types, vals, sub_id, &found);
    if (!rc && !found) {
        pg_set_err(c,
                   "postgresql %s: no subscription '%s' on topic '%s'",
                   c->masked, name, topic);
        rc = MQS_ENOTFOUND;
    }
    return rc;
}

/* The subscription row goes first: its lock makes concurrent inserts that
 * copied it finish, and the next statements see their pending rows. Then
 * the messages are locked (see the file comment) before the pending rows go
 * and the messages nobody else holds with them. */
int pg_sub_remove(mqs_be_conn *c, int64_t sub_id)
{
    char s[24];
    snprintf(s, sizeof s, "%lld", (long long)sub_id);
    const Oid types[1] = {PG_OID_INT8};
    const char *vals[1] = {s};
    const pg_stmt st[3] = {
        {"DELETE FROM mqs_sub WHERE id = $1", 1, types, vals, NULL, NULL},
        {"SELECT count(*) FROM (SELECT 1 FROM mqs_msg WHERE kind = 1 AND id IN "
         "(SELECT msg_id FROM mqs_pending WHERE sub_id = $1) "
         "ORDER BY id FOR NO KEY UPDATE) l",
         1, types, vals, NULL, NULL},
        {"WITH d AS (DELETE FROM mqs_pending WHERE sub_id = $1 "
         "RETURNING msg_id) "
         "DELETE FROM mqs_msg m WHERE m.kind = 1 "
         "AND m.id IN (SELECT msg_id FROM d) "
         "AND NOT EXISTS (SELECT 1 FROM mqs_pending p "
         "WHERE p.msg_id = m.id AND p.sub_id <> $1)",
         1, types, vals, NULL, NULL},
    };
    return pg_run(c, "subscription remove (mqs_sub, mqs_pending, mqs_msg)", st,
                  3, NULL);
}

int pg_purge(mqs_be_conn *c, int64_t dest_id, uint64_t *removed)
{
    const char *what = "purge (mqs_msg, mqs_pending)";
    char d[24];
    snprintf(d, sizeof d, "%lld", (long long)dest_id);
    const Oid types[1] = {PG_OID_INT8};
    const char *vals[1] = {d};
    /* A queue message counts once, a topic message once per pending row. */
    const char *sql =
        dest_id ? "WITH p AS (DELETE FROM mqs_pending WHERE sub_id IN "
                  "(SELECT id FROM mqs_sub WHERE dest_id = $1) RETURNING 1), "
                  "m AS (DELETE FROM mqs_msg WHERE dest_id = $1 "
                  "RETURNING kind) "
                  "SELECT (SELECT count(*) FROM p) + "
                  "(SELECT count(*) FROM m WHERE kind = 0)"
                : "WITH p AS (DELETE FROM mqs_pending RETURNING 1), "
                  "m AS (DELETE FROM mqs_msg RETURNING kind) "
                  "SELECT (SELECT count(*) FROM p) + "
                  "(SELECT count(*) FROM m WHERE kind = 0)";
    int64_t n = 0;
    int found = 0;
    int rc = pg_run_id(c, what, sql, dest_id ? 1 : 0, types, vals, &n, &found);
    if (!rc && removed)
        *removed = (uint64_t)n;
    return rc;
}

/* ---------------------------------------------------------------------------
 * Messages
 * ------------------------------------------------------------------------- */
/* Ids come from a sequence, drawn when a row is inserted, not when it
 * commits: two writers could commit ids out of order, and a reader that
 * has seen id 11 would never look back for 10. Inserting transactions
 * therefore take turns on one transaction-level advisory lock (per
 * database and schema), held to commit; with one writer per store (group
 * commit) it is never contended. An advisory lock, not a row lock: it
 * writes no WAL and dirties no page. It is taken inside each insert
 * statement, as an uncorrelated subquery in its WHERE: the planner makes
 * that a one-time filter, evaluated before the first row is read, so
 * before the first id is drawn (EXPLAIN: "One-Time Filter" above the
 * unnest), and no statement of its own is sent for it. Every node of a
 * cluster must use the same key (same ABI major). */
#define PG_ORDER_TURN                                                        \
    "(SELECT true FROM pg_catalog.pg_advisory_xact_lock("                    \
    "pg_catalog.hashtextextended('mqstore-order:' || "                       \
    "pg_catalog.current_database() || ':' || pg_catalog.current_schema(), "  \
    "0)))"

/* Queue messages only: nothing to filter or copy. */
static const char SQL_INS_QUEUE[] =
    "INSERT INTO mqs_msg (dest_id, kind, priority, expires_ms, enqueued_ms, "
    "headers, body) "
    "SELECT * FROM unnest($1::int8[], $2::int2[], $3::int2[], $4::int8[], "
    "$5::int8[], $6::bytea[], $7::bytea[]) WHERE " PG_ORDER_TURN " "
    "RETURNING id, dest_id, priority";

/* With topic messages: those whose topic has no subscription are not
 * stored; the others get one pending row per subscription. $8 = the batch's
 * topic ids. The filter stays a hashed subplan (an OR, no join), so rows are
 * inserted, and ids drawn, in input order. */
static const char SQL_INS_MIXED[] =
    "WITH s AS (SELECT id, dest_id FROM mqs_sub WHERE dest_id = ANY ($8) "
    "FOR KEY SHARE), "
    "m AS (INSERT INTO mqs_msg (dest_id, kind, priority, expires_ms, "
    "enqueued_ms, headers, body) "
    "SELECT u.* FROM unnest($1::int8[], $2::int2[], $3::int2[], $4::int8[], "
    "$5::int8[], $6::bytea[], $7::bytea[]) AS u(dest_id, kind, priority, "
    "expires_ms, enqueued_ms, headers, body) "
    "WHERE (u.kind = 0 OR u.dest_id IN (SELECT s.dest_id FROM s)) AND "
    PG_ORDER_TURN " RETURNING id, dest_id, kind, priority), "
    "p AS (INSERT INTO mqs_pending (sub_id, msg_id, priority) "
    "SELECT s.id, m.id, m.priority FROM m JOIN s ON s.dest_id = m.dest_id "
    "WHERE m.kind = 1) "
    "SELECT id, dest_id, priority FROM m";

static int pg_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int pg_find_i64(const int64_t *v, size_t n, int64_t x)
{
    return n && bsearch(&x, v, n, sizeof *v, pg_cmp_i64) != NULL;
}

/* What an insert's result is checked against, once it came. */
typedef struct pg_ins_ctx {
    mqs_be_msg *m; /* the core keeps it until commit (backend.h) */
    size_t n, ntopics;
    int64_t topics[]; /* sorted, distinct */
} pg_ins_ctx;

/* Rows come back in insert order. A topic's messages are all stored or
 * all dropped (it has a subscription or not), so walking the input in
 * order pairs every row with its message; the checks catch a server that
 * reordered rows. */
static int pg_insert_done(mqs_be_conn *c, PGresult *r, void *ctx)
{
    const char *what = "message insert (mqs_msg, mqs_pending)";
    pg_ins_ctx *x = ctx;
    mqs_be_msg *m = x->m;
    const int64_t *topics = x->topics;
    size_t n = x->n, ntopics = x->ntopics;
    size_t nrows = (size_t)PQntuples(r);
    int64_t *stored = malloc((ntopics ? ntopics : 1) * sizeof *stored);
    size_t nstored = 0;
    int rc = 0;
    if (!stored) {
        pg_set_err(c, "postgresql %s: %s: out of memory reading the ids",
                   c->masked, what);
        return MQS_ENOMEM;
    }
    for (size_t j = 0; j < nrows; j++) {
        int64_t d = 0;
        if (pg_get_int(r, (int)j, 1, &d)) {
            free(stored);
            return pg_bad_result(c, what);
        }
        if (pg_find_i64(topics, ntopics, d) &&
            (nstored == 0 || stored[nstored - 1] != d) &&
            !pg_find_i64(stored, nstored, d)) {
            stored[nstored++] = d;
            qsort(stored, nstored, sizeof *stored, pg_cmp_i64);
        }
    }
    size_t j = 0;
    int64_t prev = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        int keep = m[i].kind != MQS_TOPIC ||
                   pg_find_i64(stored, nstored, m[i].dest_id);
        if (!keep) {
            m[i].id = 0;
            continue;
        }
        int64_t id = 0, d = 0, p = 0;
        if (j >= nrows || pg_get_int(r, (int)j, 0, &id) ||
            pg_get_int(r, (int)j, 1, &d) || pg_get_int(r, (int)j, 2, &p) ||
            d != m[i].dest_id || p != m[i].priority || id <= prev) {
            rc = -1;
            break;
        }
        m[i].id = prev = id;
        j++;
    }
    free(stored);
    if (rc || j != nrows) {
        pg_set_err(c,
                   "postgresql %s: %s: the rows returned do not match the "
                   "messages sent (order or count)",
                   c->masked, what);
        return MQS_EIO;
    }
    return 0;
}

/* Queue the insert of m[0..n) (one chunk) as one statement, for the
 * transaction's next round trip (normally its COMMIT's). */
static int pg_insert_chunk(mqs_be_conn *c, mqs_be_msg *m, size_t n)
{
    const char *what = "message insert (mqs_msg, mqs_pending)";
    pg_buf a[8] = {{0}};
    size_t ntopics = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++)
        if (m[i].kind == MQS_TOPIC)
            ntopics++;
    pg_ins_ctx *x = malloc(sizeof *x + (ntopics ? ntopics : 1) * sizeof(int64_t));
    if (!x)
        goto oom;
    x->m = m;
    x->n = n;
    if (ntopics) {
        int64_t *topics = x->topics;
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (m[i].kind == MQS_TOPIC)
                topics[k++] = m[i].dest_id;
        qsort(topics, ntopics, sizeof *topics, pg_cmp_i64);
        size_t u = 0;
        for (size_t i = 0; i < ntopics; i++)
            if (u == 0 || topics[u - 1] != topics[i])
                topics[u++] = topics[i];
        ntopics = u;
    }
    x->ntopics = ntopics;

    int hnull = 0, bnull = 0;
    for (size_t i = 0; i < n; i++) {
        hnull |= m[i].headers_len == 0;
        bnull |= m[i].body_len == 0;
    }
    pg_arr_begin(&a[0], PG_OID_INT8, n, 0);
    pg_arr_begin(&a[1], PG_OID_INT2, n, 0);
    pg_arr_begin(&a[2], PG_OID_INT2, n, 0);
    pg_arr_begin(&a[3], PG_OID_INT8, n, 0);
    pg_arr_begin(&a[4], PG_OID_INT8, n, 0);
    pg_arr_begin(&a[5], PG_OID_BYTEA, n, hnull);
    pg_arr_begin(&a[6], PG_OID_BYTEA, n, bnull);
    for (size_t i = 0; i < n; i++) {
        pg_arr_i64(&a[0], m[i].dest_id);
        pg_arr_i16(&a[1], m[i].kind == MQS_TOPIC ? 1 : 0);
        pg_arr_i16(&a[2], m[i].priority);
        pg_arr_i64(&a[3], m[i].expires_ms);
        pg_arr_i64(&a[4], m[i].enqueued_ms);
        pg_arr_bytes(&a[5], m[i].headers, m[i].headers_len);
        pg_arr_bytes(&a[6], m[i].body, m[i].body_len);
    }
    pg_arr_begin(&a[7], PG_OID_INT8, ntopics, 0);
    for (size_t i = 0; i < ntopics; i++)
        pg_arr_i64(&a[7], x->topics[i]);
    for (int k = 0; k < 8; k++)
        if (a[k].oom || a[k].len > INT32_MAX)
            goto oom;

    const Oid types[8] = {PG_OID_INT8_ARR, PG_OID_INT2_ARR, PG_OID_INT2_ARR,
                          PG_OID_INT8_ARR, PG_OID_INT8_ARR, PG_OID_BYTEA_ARR,
                          PG_OID_BYTEA_ARR, PG_OID_INT8_ARR};
    const char *vals[8];
    int lens[8], fmts[8];
    for (int k = 0; k < 8; k++) {
        vals[k] = a[k].p;
        lens[k] = (int)a[k].len;
        fmts[k] = 1;
    }
    const pg_stmt ins = {ntopics ? SQL_INS_MIXED : SQL_INS_QUEUE,
                         ntopics ? 8 : 7, types, vals, lens, fmts};
    rc = pg_defer(c, what, &ins, pg_insert_done, x);
    x = NULL; /* owned by the queue now */
    goto done;

oom:
    pg_set_err(c, "postgresql %s: %s: out of memory encoding %zu messages",
               c->masked, what, n);
    rc = MQS_ENOMEM;
    free(x);
done:
    for (int k = 0; k < 8; k++)
        free(a[k].p);
    return rc;
}

int pg_msg_insert(mqs_be_conn *c, mqs_be_msg *m, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t hb = 0, bb = 0, k = i;
        /* At least one message per chunk; bytea[] parameters stay small. */
        do {
            hb += m[k].headers_len;
            bb += m[k].body_len;
            k++;
        } while (k < n && hb + m[k].headers_len <= PG_CHUNK_BYTES &&
                 bb + m[k].body_len <= PG_CHUNK_BYTES &&
                 k - i < (1u << 20));
        int rc = pg_insert_chunk(c, m + i, k - i);
        if (rc)
            return rc;
        i = k;
    }
    return 0;
}

/* Lock the topic messages ($2), remove the pending rows ($1,$2), remove the
 * messages left without one (see the file comment). */
static const char SQL_ACK_LOCK[] =
    "SELECT count(*) FROM (SELECT 1 FROM mqs_msg WHERE id = ANY ($1) "
    "AND kind = 1 ORDER BY id FOR NO KEY UPDATE) l";
static const char SQL_ACK_SUB[] =
    "WITH u AS (SELECT * FROM unnest($1::int8[], $2::int8[]) AS u(sub_id, "
    "msg_id)), "
    "d AS (DELETE FROM mqs_pending p USING u WHERE p.sub_id = u.sub_id "
    "AND p.msg_id = u.msg_id RETURNING p.msg_id) "
    "DELETE FROM mqs_msg m WHERE m.kind = 1 "
    "AND m.id IN (SELECT msg_id FROM d) "
    "AND NOT EXISTS (SELECT 1 FROM mqs_pending p WHERE p.msg_id = m.id "
    "AND NOT EXISTS (SELECT 1 FROM u WHERE u.sub_id = p.sub_id "
    "AND u.msg_id = p.msg_id))";
static const char SQL_ACK_QUEUE[] =
    "DELETE FROM mqs_msg WHERE id = ANY ($1) AND kind = 0";

/* Queued for the transaction's next round trip (normally its COMMIT's). */
int pg_msg_ack(mqs_be_conn *c, const mqs_be_ref *r, size_t n)
{
    const char *what = "ack (mqs_msg, mqs_pending)";
    pg_buf q = {0}, ps = {0}, pm = {0};
    size_t nq = 0, np = 0;
    for (size_t i = 0; i < n; i++) {
        if (r[i].sub_id)
            np++;
        else
            nq++;
    }
    pg_arr_begin(&q, PG_OID_INT8, nq, 0);
    pg_arr_begin(&ps, PG_OID_INT8, np, 0);
    pg_arr_begin(&pm, PG_OID_INT8, np, 0);
    for (size_t i = 0; i < n; i++) {
        if (r[i].sub_id) {
            pg_arr_i64(&ps, r[i].sub_id);
            pg_arr_i64(&pm, r[i].id);
        } else {
            pg_arr_i64(&q, r[i].id);
        }
    }
    int rc;
    if (q.oom || ps.oom || pm.oom) {
        pg_set_err(c, "postgresql %s: %s: out of memory", c->masked, what);
        rc = MQS_ENOMEM;
    } else {
        const Oid t1[1] = {PG_OID_INT8_ARR};
        const Oid t2[2] = {PG_OID_INT8_ARR, PG_OID_INT8_ARR};
        const char *vq[1] = {q.p};
        const char *vm[1] = {pm.p};
        const char *vp[2] = {ps.p, pm.p};
        const int lq[1] = {(int)q.len}, lm[1] = {(int)pm.len};
        const int lp[2] = {(int)ps.len, (int)pm.len};
        const int f[2] = {1, 1};
        pg_stmt st[3];
        int k = 0;
        if (nq)
            st[k++] = (pg_stmt){SQL_ACK_QUEUE, 1, t1, vq, lq, f};
        if (np) {
            st[k++] = (pg_stmt){SQL_ACK_LOCK, 1, t1, vm, lm, f};
            st[k++] = (pg_stmt){SQL_ACK_SUB, 2, t2, vp, lp, f};
        }
        rc = 0;
        for (int i = 0; i < k && !rc; i++)
            rc = pg_defer(c, what, &st[i], NULL, NULL);
    }
    free(q.p);
    free(ps.p);
    free(pm.p);
    return rc;
}

int pg_msg_nack(mqs_be_conn *c, const mqs_be_ref *r)
{
    char id[24], sub[24];
    snprintf(id, sizeof id, "%lld", (long long)r->id);
    snprintf(sub, sizeof sub, "%lld", (long long)r->sub_id);
    const Oid types[2] = {PG_OID_INT8, PG_OID_INT8};
    const char *vals[2] = {id, sub};
    const pg_stmt q = {"UPDATE mqs_msg SET redeliveries = redeliveries + 1 "
                       "WHERE id = $1 AND kind = 0",
                       1, types, vals, NULL, NULL};
    const pg_stmt p = {"UPDATE mqs_pending SET redeliveries = redeliveries + "
                       "1 WHERE msg_id = $1 AND sub_id = $2",
                       2, types, vals, NULL, NULL};
    /* Queued for the transaction's next round trip. */
    return r->sub_id ? pg_defer(c, "nack (mqs_pending)", &p, NULL, NULL)
                     : pg_defer(c, "nack (mqs_msg)", &q, NULL, NULL);
}

/* ---------------------------------------------------------------------------
 * Reads
 * ------------------------------------------------------------------------- */
/* Keyset page in two index range scans: the rest of the current priority,
 * then the lower priorities. A single OR condition could not use the index
 * as a range and would rescan every row already read, page after page. */
static const char SQL_PAGE_QUEUE[] =
    "SELECT id, priority, expires_ms, enqueued_ms, redeliveries, headers, "
    "body FROM ("
    "(SELECT * FROM mqs_msg WHERE dest_id = $1 AND priority = $2 "
    "AND id > $3 AND kind = 0 ORDER BY priority DESC, id LIMIT $4) "
    "UNION ALL "
    "(SELECT * FROM mqs_msg WHERE dest_id = $1 AND priority < $2 "
    "AND kind = 0 ORDER BY priority DESC, id LIMIT $4)) x "
    "ORDER BY priority DESC, id LIMIT $4";

static const char SQL_PAGE_SUB[] =
    "SELECT p.msg_id, p.priority, m.expires_ms, m.enqueued_ms, "
    "p.redeliveries, m.headers, m.body FROM ("
    "SELECT * FROM ("
    "(SELECT msg_id, priority, redeliveries FROM mqs_pending WHERE sub_id = $1"
    " AND priority = $2 AND msg_id > $3 ORDER BY priority DESC, msg_id LIMIT $4) "
    "UNION ALL "
    "(SELECT msg_id, priority, redeliveries FROM mqs_pending WHERE sub_id = $1"
    " AND priority < $2 ORDER BY priority DESC, msg_id LIMIT $4)) k "
    "ORDER BY priority DESC, msg_id LIMIT $4) p "
    "JOIN mqs_msg m ON m.id = p.msg_id "
    "ORDER BY p.priority DESC, p.msg_id";

static int pg_row_fill(const PGresult *r, int i, mqs_be_row *row)
{
    int64_t v[5];
    for (int k = 0; k < 5; k++)
        if (pg_get_int(r, i, k, &v[k]))
            return -1;
    row->id = v[0];
    row->priority = (int)v[1];
    row->expires_ms = v[2];
    row->enqueued_ms = v[3];
    row->redeliveries = (int32_t)v[4];
    row->headers = PQgetisnull(r, i, 5) ? NULL : PQgetvalue(r, i, 5);
    row->headers_len = (size_t)PQgetlength(r, i, 5);
    row->body = PQgetisnull(r, i, 6) ? NULL : PQgetvalue(r, i, 6);
    row->body_len = (size_t)PQgetlength(r, i, 6);
    return 0;
}

static int pg_page_query(mqs_be_conn *c, const mqs_be_page *p,
                         const Oid *types, const char *const *vals,
                         mqs_be_row_cb cb, void *ud, const char *what);

int pg_page_read(mqs_be_conn *c, const mqs_be_page *p, mqs_be_row_cb cb,
                 void *ud)
{
    const char *what = p->sub_id ? "page read (mqs_pending, mqs_msg)"
                                 : "page read (mqs_msg)";
    int rc = pg_unusable(c, what);
    if (rc)
        return rc;
    char a[24], b[8], d[24], l[24];
    snprintf(a, sizeof a, "%lld",
             (long long)(p->sub_id ? p->sub_id : p->dest_id));
    snprintf(b, sizeof b, "%d", p->after_priority);
    snprintf(d, sizeof d, "%lld", (long long)p->after_id);
    snprintf(l, sizeof l, "%llu", (unsigned long long)p->limit);
    const Oid types[4] = {PG_OID_INT8, PG_OID_INT2, PG_OID_INT8, PG_OID_INT8};
    const char *vals[4] = {a, b, d, l};
    /* Statistics taken while the table was empty (an ANALYZE after a
     * drain: reltuples 0) make the planner expect one row and pick a
     * bitmap scan of every id after the key plus a sort: the whole rest of
     * the destination per page, 130 ms a page at 150k messages, quadratic
     * over a drain. The keyset index scan is right at any size, so the
     * read runs in a transaction of its own with bitmap scans off (LOCAL:
     * nothing leaks, through a transaction pooler too). */
    int own_txn = PQtransactionStatus(c->pg) == PQTRANS_IDLE;
    PGresult *pre = PQexec(c->pg, own_txn ? "BEGIN; SET LOCAL enable_bitmapscan = off"
                                          : "SET LOCAL enable_bitmapscan = off");
    if (PQresultStatus(pre) != PGRES_COMMAND_OK) {
        rc = pg_fail(c, pre, what);
        PQclear(pre);
        return rc;
    }
    PQclear(pre);
    rc = pg_page_query(c, p, types, vals, cb, ud, what);
    if (own_txn && PQstatus(c->pg) == CONNECTION_OK) {
        PGresult *end = PQexec(c->pg, rc ? "ROLLBACK" : "COMMIT");
        if (PQresultStatus(end) != PGRES_COMMAND_OK && !rc)
            rc = pg_fail(c, end, what);
        PQclear(end);
    }
    return rc;
}

static int pg_page_query(mqs_be_conn *c, const mqs_be_page *p,
                         const Oid *types, const char *const *vals,
                         mqs_be_row_cb cb, void *ud, const char *what)
{
    int rc = 0;
    /* In a pipeline of its own: libpq (before 17) leaves single-row mode
     * set after the last query of a connection outside a pipeline, and the
     * first statement of the next pipeline then came back as
     * PGRES_SINGLE_TUPLE, failing a lock acquire that had committed. A
     * pipeline's Sync resets it. */
    if (!PQenterPipelineMode(c->pg))
        return pg_fail(c, NULL, what);
    if (!PQsendQueryParams(c->pg, p->sub_id ? SQL_PAGE_SUB : SQL_PAGE_QUEUE, 4,
                           types, vals, NULL, NULL, 1))
        return pg_fail_code(c, NULL, what, MQS_ECONN);
    /* One row in memory at a time, whatever the message sizes. */
    (void)PQsetSingleRowMode(c->pg);
    if (!PQpipelineSync(c->pg))
        return pg_fail_code(c, NULL, what, MQS_ECONN);
    int stop = 0;
    PGresult *r;
    while ((r = PQgetResult(c->pg)) != NULL) {
        ExecStatusType s = PQresultStatus(r);
        if (s == PGRES_SINGLE_TUPLE || s == PGRES_TUPLES_OK) {
            for (int i = 0; i < PQntuples(r) && !stop && !rc; i++) {
                mqs_be_row row;
                if (pg_row_fill(r, i, &row))
                    rc = pg_bad_result(c, what);
                else if (cb(ud, &row))
                    stop = 1; /* the rest is drained below */
            }
        } else if (!rc) {
            rc = pg_fail(c, r, what);
        }
        PQclear(r);
    }
    r = PQgetResult(c->pg);
    int synced = r && PQresultStatus(r) == PGRES_PIPELINE_SYNC;
    PQclear(r);
    if (!synced || !PQexitPipelineMode(c->pg)) {
        c->broken = 1;
        if (!rc)
            rc = pg_fail_code(c, NULL, what, MQS_ECONN);
    }
    if (!rc && PQstatus(c->pg) == CONNECTION_BAD)
        rc = pg_fail(c, NULL, what);
    return rc;
}

static const char SQL_DEST_LIST[] =
    "SELECT d.id, d.kind, d.name, COALESCE(s.id, 0), s.name, "
    "CASE WHEN d.kind = 0 THEN q.n ELSE COALESCE(t.n, 0) END, "
    "CASE WHEN d.kind = 0 THEN q.oldest ELSE COALESCE(t.oldest, 0) END "
    "FROM mqs_dest d "
    "LEFT JOIN mqs_sub s ON s.dest_id = d.id AND d.kind = 1 "
    "LEFT JOIN LATERAL (SELECT count(*) AS n, "
    "COALESCE(min(m.enqueued_ms), 0) AS oldest FROM mqs_msg m "
    "WHERE d.kind = 0 AND m.dest_id = d.id AND m.kind = 0) q ON true "
    "LEFT JOIN LATERAL (SELECT count(*) AS n, "
    "COALESCE(min(m.enqueued_ms), 0) AS oldest FROM mqs_pending p "
    "JOIN mqs_msg m ON m.id = p.msg_id WHERE p.sub_id = s.id) t "
    "ON s.id IS NOT NULL "
    "ORDER BY d.id, COALESCE(s.id, 0)";

/* The same rows without counting (dest_names): two small tables. */
static const char SQL_DEST_NAMES[] =
    "SELECT d.id, d.kind, d.name, COALESCE(s.id, 0), s.name, 0, 0 "
    "FROM mqs_dest d LEFT JOIN mqs_sub s ON s.dest_id = d.id AND d.kind = 1 "
    "ORDER BY d.id, COALESCE(s.id, 0)";

/* The newest rows of mqs_msg, for the producer audit (ABI 2.3): a
 * backward scan of the primary key, limit rows however deep the backlog. */
int pg_msg_recent(mqs_be_conn *c, size_t limit, mqs_be_header_cb cb,
                  void *ud)
{
    const char *what = "newest messages (mqs_msg)";
    char l[24];
    snprintf(l, sizeof l, "%llu", (unsigned long long)
             (limit > (size_t)INT64_MAX ? (size_t)INT64_MAX : limit));
    const Oid types[1] = {PG_OID_INT8};
    const char *vals[1] = {l};
    PGresult *r;
    int rc = pg_run1(c, what, "SELECT id, headers FROM mqs_msg "
                     "ORDER BY id DESC LIMIT $1", 1, types, vals, &r);
    if (rc)
        return rc;
    int n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        int64_t id;
        if (pg_get_int(r, i, 0, &id)) {
            rc = pg_bad_result(c, what);
            break;
        }
        const void *h = PQgetisnull(r, i, 1) ? NULL : PQgetvalue(r, i, 1);
        if (cb(ud, id, h, h ? (size_t)PQgetlength(r, i, 1) : 0))
            break;
    }
    PQclear(r);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Producer marks (ABI 2.1)
 * ------------------------------------------------------------------------- */
int pg_mark_put(mqs_be_conn *c, const char *producer, int64_t seq,
                int64_t now_ms)
{
    char sq[24], now[24];
    snprintf(sq, sizeof sq, "%lld", (long long)seq);
    snprintf(now, sizeof now, "%lld", (long long)now_ms);
    const Oid types[3] = {PG_OID_TEXT, PG_OID_INT8, PG_OID_INT8};
    const char *vals[3] = {producer, sq, now};
    const pg_stmt st = {"INSERT INTO mqs_producer_mark (producer, seq, "
                        "updated_ms) VALUES ($1, $2, $3) ON CONFLICT "
                        "(producer) DO UPDATE SET seq = GREATEST("
                        "mqs_producer_mark.seq, EXCLUDED.seq), "
                        "updated_ms = EXCLUDED.updated_ms",
                        3, types, vals, NULL, NULL};
    /* Queued for the transaction's next round trip, like the acks. */
    return pg_defer(c, "producer mark (mqs_producer_mark)", &st, NULL, NULL);
}

int pg_mark_list(mqs_be_conn *c, mqs_be_mark_cb cb, void *ud)
{
    const char *what = "producer mark list (mqs_producer_mark)";
    PGresult *r;
    int rc = pg_run1(c, what, "SELECT producer, seq FROM mqs_producer_mark",
                     0, NULL, NULL, &r);
    if (rc)
        return rc;
    int n = PQntuples(r), stop = 0;
    for (int i = 0; i < n && !stop; i++) {
        int64_t seq;
        if (pg_get_int(r, i, 1, &seq)) {
            rc = pg_bad_result(c, what);
            break;
        }
        stop = cb(ud, PQgetvalue(r, i, 0), seq);
    }
    PQclear(r);
    return rc ? rc : stop;
}

int pg_mark_prune(mqs_be_conn *c, int64_t before_ms, uint64_t *removed)
{
    char b[24];
    snprintf(b, sizeof b, "%lld", (long long)before_ms);
    const Oid types[1] = {PG_OID_INT8};
    const char *vals[1] = {b};
    PGresult *r;
    int rc = pg_run1(c, "producer mark prune (mqs_producer_mark)",
                     "DELETE FROM mqs_producer_mark WHERE updated_ms < $1", 1,
                     types, vals, &r);
    if (rc)
        return rc;
    if (removed)
        *removed = (uint64_t)strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return 0;
}

/* Rows of SQL_DEST_LIST or SQL_DEST_NAMES (same columns) to cb. */
static int pg_dest_rows(mqs_be_conn *c, const char *sql, mqs_be_dest_cb cb,
                        void *ud)
{
    const char *what = "destination list (mqs_dest, mqs_sub)";
    PGresult *r;
    int rc = pg_run1(c, what, sql, 0, NULL, NULL, &r);
    if (rc)
        return rc;
    int n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        int64_t id, kind, sub, pending, oldest;
        if (pg_get_int(r, i, 0, &id) || pg_get_int(r, i, 1, &kind) ||
            pg_get_int(r, i, 3, &sub) || pg_get_int(r, i, 5, &pending) ||
            pg_get_int(r, i, 6, &oldest)) {
            rc = pg_bad_result(c, what);
            break;
        }
        /* Binary text values are NUL-terminated by libpq. */
        mqs_be_dest dd = {
            .dest_id = id,
            .kind = kind ? MQS_TOPIC : MQS_QUEUE,
            .name = PQgetvalue(r, i, 2),
            .sub_id = sub,
            .sub_name = PQgetisnull(r, i, 4) ? NULL : PQgetvalue(r, i, 4),
            .pending = (uint64_t)pending,
            .oldest_ms = oldest,
        };
        if (cb(ud, &dd))
            break;
    }
    PQclear(r);
    return rc;
}

int pg_dest_list(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud)
{
    return pg_dest_rows(c, SQL_DEST_LIST, cb, ud);
}

int pg_dest_names(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud)
{
    return pg_dest_rows(c, SQL_DEST_NAMES, cb, ud);
}

/* VACUUM cannot run in a transaction block or a pipeline: a plain simple-
 * protocol statement of its own. A table this role does not own is
 * skipped by the server with a WARNING, not an error. */
int pg_vacuum(mqs_be_conn *c, char *msg, size_t msglen)
{
    static const char sql[] = "VACUUM (ANALYZE) mqs_msg, mqs_pending";
    int rc = pg_unusable(c, "VACUUM");
    if (rc)
        return rc;
    PGresult *r = PQexec(c->pg, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        rc = pg_fail(c, r, sql);
    else
        snprintf(msg, msglen, "postgresql: %s", sql);
    PQclear(r);
    return rc;
}
