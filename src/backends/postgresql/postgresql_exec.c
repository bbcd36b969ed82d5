/*
 * postgresql_exec.c - the PostgreSQL backend's statement execution:
 * binary parameters, deferred writes and the one-round-trip pipeline
 * (pg_flush) that carries BEGIN, the fence, the writes and COMMIT.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "postgresql_int.h"

/* ---------------------------------------------------------------------------
 * Binary encoding (network byte order), for array parameters and results.
 * ------------------------------------------------------------------------- */
static int pg_buf_need(pg_buf *b, size_t n)
{
    if (b->oom)
        return -1;
    if (b->len + n <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void pg_put_u32(pg_buf *b, uint32_t v)
{
    if (pg_buf_need(b, 4))
        return;
    unsigned char *d = (unsigned char *)b->p + b->len;
    d[0] = (unsigned char)(v >> 24);
    d[1] = (unsigned char)(v >> 16);
    d[2] = (unsigned char)(v >> 8);
    d[3] = (unsigned char)v;
    b->len += 4;
}

static void pg_put_mem(pg_buf *b, const void *p, size_t n)
{
    if (n == 0 || pg_buf_need(b, n))
        return;
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* One-dimensional array header (array_recv format). */
void pg_arr_begin(pg_buf *b, uint32_t elem_oid, size_t n, int has_null)
{
    pg_put_u32(b, n ? 1 : 0); /* ndim: an empty array has none */
    pg_put_u32(b, has_null ? 1 : 0);
    pg_put_u32(b, elem_oid);
    if (n) {
        pg_put_u32(b, (uint32_t)n);
        pg_put_u32(b, 1); /* lower bound */
    }
}

void pg_arr_i64(pg_buf *b, int64_t v)
{
    uint64_t u = (uint64_t)v;
    pg_put_u32(b, 8);
    pg_put_u32(b, (uint32_t)(u >> 32));
    pg_put_u32(b, (uint32_t)u);
}

void pg_arr_i16(pg_buf *b, int v)
{
    pg_put_u32(b, 2);
    if (pg_buf_need(b, 2))
        return;
    unsigned char *d = (unsigned char *)b->p + b->len;
    uint16_t u = (uint16_t)v;
    d[0] = (unsigned char)(u >> 8);
    d[1] = (unsigned char)u;
    b->len += 2;
}

void pg_arr_bytes(pg_buf *b, const void *p, size_t n)
{
    if (n == 0) {
        pg_put_u32(b, 0xffffffffu); /* NULL: nothing to store */
        return;
    }
    pg_put_u32(b, (uint32_t)n);
    pg_put_mem(b, p, n);
}

/* Integer of a binary result column (int2, int4 or int8). */
int pg_get_int(const PGresult *r, int row, int col, int64_t *out)
{
    if (PQgetisnull(r, row, col)) {
        *out = 0;
        return 0;
    }
    const unsigned char *d = (const unsigned char *)PQgetvalue(r, row, col);
    int len = PQgetlength(r, row, col);
    uint64_t u = 0;
    for (int i = 0; i < len; i++)
        u = (u << 8) | d[i];
    switch (len) {
    case 1: *out = (int8_t)u; return 0; /* bool */
    case 2: *out = (int16_t)u; return 0;
    case 4: *out = (int32_t)u; return 0;
    case 8: *out = (int64_t)u; return 0;
    default: return -1;
    }
}

int pg_bad_result(mqs_be_conn *c, const char *what)
{
    pg_set_err(c,
               "postgresql %s: %s: the server returned columns of an "
               "unexpected type; was the schema altered by hand?",
               c->masked, what);
    return MQS_ECORRUPT;
}

/* ---------------------------------------------------------------------------
 * Statement execution
 * ------------------------------------------------------------------------- */
int pg_ok(const PGresult *r)
{
    if (!r)
        return 0;
    ExecStatusType s = PQresultStatus(r);
    return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
}

/* A write deferred to the next round trip: its parameter buffers are
 * owned copies; done (may be NULL) reads its result once the round trip
 * succeeded (for a COMMIT's, once it committed). */
typedef struct pg_deferred {
    const char *sql, *what;
    int n;
    Oid types[8];
    char *vals[8];
    int lens[8], fmts[8];
    pg_done_fn done;
    void *ctx; /* freed with free() after done */
} pg_deferred;

void pg_defer_clear(mqs_be_conn *c)
{
    for (size_t i = 0; i < c->ndq; i++) {
        for (int k = 0; k < c->dq[i].n; k++)
            free(c->dq[i].vals[k]);
        free(c->dq[i].ctx);
    }
    c->ndq = 0;
}

/* Queue st (parameters are copied) for the next round trip. Takes ctx
 * (freed later, also on failure). */
int pg_defer(mqs_be_conn *c, const char *what, const pg_stmt *st,
             pg_done_fn done, void *ctx)
{
    if (c->ndq == c->capdq) {
        size_t cap = c->capdq ? c->capdq * 2 : 8;
        pg_deferred *d = realloc(c->dq, cap * sizeof *d);
        if (!d)
            goto oom;
        c->dq = d;
        c->capdq = cap;
    }
    pg_deferred *d = &c->dq[c->ndq];
    memset(d, 0, sizeof *d);
    d->sql = st->sql;
    d->what = what;
    d->done = done;
    d->n = st->n;
    for (int k = 0; k < st->n; k++) {
        int bin = st->fmts && st->fmts[k];
        size_t len = !st->vals[k] ? 0
                     : bin        ? (size_t)st->lens[k]
                                  : strlen(st->vals[k]) + 1;
        d->types[k] = st->types[k];
        d->lens[k] = bin ? st->lens[k] : 0;
        d->fmts[k] = bin;
        if (!st->vals[k])
            continue;
        d->vals[k] = malloc(len ? len : 1);
        if (!d->vals[k]) {
            for (int j = 0; j < k; j++)
                free(d->vals[j]);
            goto oom;
        }
        memcpy(d->vals[k], st->vals[k], len);
    }
    d->ctx = ctx;
    c->ndq++;
    return 0;
oom:
    free(ctx);
    pg_set_err(c, "postgresql %s: %s: out of memory queuing a statement",
               c->masked, what);
    return MQS_ENOMEM;
}

static const char SQL_FENCE_LOCK[] =
    "SELECT 1 FROM pg_catalog.pg_advisory_xact_lock_shared(" PG_FENCE_KEY ")";

/* The guard, last before COMMIT: fails the transaction (SQLSTATE 22P02,
 * the message saying why) unless $2 holds the lock of $1 with token $3 and
 * at least $4 ms of lease left by the server's clock. The error comes from
 * a cast of a value built from the row, which the planner cannot fold. */
static const char SQL_FENCE_GUARD[] =
    "SELECT CASE WHEN f.ok THEN 0 ELSE ('mqstore fence: node ' || $2 || "
    "' (token ' || $3 || ') may not commit: the lock of cluster ''' || $1 || "
    "''' is held by ' || COALESCE(f.holder, 'nobody') || ' (token ' || "
    "COALESCE(f.token::text, 'none') || ', lease ' || "
    "COALESCE(f.left_ms::text, 'none') || ' ms left, ' || $4 || "
    "' ms needed)')::int4 END FROM (SELECT pg_catalog.bool_or(m.holder = $2 "
    "AND m.token = $3::int8 AND m.lease_until - pg_catalog.clock_timestamp() "
    ">= $4::float8 * interval '1 millisecond') AS ok, "
    "pg_catalog.max(m.holder) AS holder, pg_catalog.max(m.token) AS token, "
    "pg_catalog.max(pg_catalog.ceil(extract(epoch FROM m.lease_until - "
    "pg_catalog.clock_timestamp()) * 1000))::int8 AS left_ms "
    "FROM mqs_lock m WHERE m.cluster = $1) f";

/* The idle-in-transaction timeout of a writing connection: for the session
 * when it is this client's own ($1 = PQbackendPID), else (a pooler) for
 * each transaction. */
static const char SQL_IDLE_SESSION[] =
    "SELECT pg_catalog.pg_backend_pid() = $1::int4, CASE WHEN "
    "pg_catalog.pg_backend_pid() = $1::int4 THEN pg_catalog.set_config("
    "'idle_in_transaction_session_timeout', $2, false) END";
static const char SQL_IDLE_LOCAL[] =
    "SELECT pg_catalog.set_config('idle_in_transaction_session_timeout', $2, "
    "true)";

enum { PG_IT_BEGIN, PG_IT_IDLE, PG_IT_FENCE, PG_IT_DEFER, PG_IT_STMT,
       PG_IT_GUARD, PG_IT_COMMIT, PG_IT_PREP };

/* The name of sql's prepared statement on this session, 0 if it has none
 * yet. */
static unsigned pg_prep_find(const mqs_be_conn *c, const char *sql)
{
    for (int i = 0; i < c->nprep; i++)
        if (c->prep[i].sql == sql)
            return c->prep[i].id;
    return 0;
}

/* Send everything the open transaction has pending (BEGIN, its settings,
 * the fence's lock, deferred writes), then st[0..nst), then with commit
 * the fence's guard and COMMIT, all in one pipeline: one round trip. res
 * (may be NULL) gets the result of each st, to be PQclear()ed by the
 * caller; on failure nothing is returned. With commit, a loss of the
 * connection after COMMIT was sent is MQS_EUNKNOWN; a statement that
 * failed first makes the server skip COMMIT: its own code (the guard's:
 * MQS_EFENCED). */
int pg_flush(mqs_be_conn *c, const char *what, const pg_stmt *st,
             int nst, PGresult **res, int commit)
{
    int rc = pg_unusable(c, what);
    if (rc)
        return rc;
    if (c->inflight) {
        pg_set_err(c, "postgresql %s: %s: the session lock's check is still "
                      "in flight on this connection", c->masked, what);
        return MQS_ESTATE;
    }
    if (res)
        for (int i = 0; i < nst; i++)
            res[i] = NULL;
    int begin = c->begin_pending;
    /* The whole transaction is in this pipeline (nothing of it went
     * before): it runs as the pipeline's implicit transaction, which the
     * server commits at the Sync that ends it, with no BEGIN or COMMIT
     * statement (each costs a statement's work on both sides); a failed
     * statement makes the server skip the rest and roll back at that
     * Sync. What the explicit block's groups are for does not arise: the
     * server reports ReadyForQuery only at the end, so it is never idle
     * inside this transaction, and a pipeline below 8 KiB reaches it in
     * one write. */
    int implicit = commit && begin;
    int fence = c->fence_on && !c->fence_locked;
    /* The session's idle-in-transaction timeout, with the first statement
     * of a transaction block: the first one on a session also finds out
     * whether the session is this client's own (not a pooler's), which
     * also decides prepared statements. Direct: set for the session, once
     * (again only if a fence wants another value); pooled: in each fenced
     * transaction. 0 = the server's default (off). */
    int64_t idle_want = c->fence_on ? c->idle_ms : 0;
    int idle = c->in_txn && !c->fence_locked &&
               (c->idle_mode == 0 ||
                (c->fence_on && c->idle_mode == 1 && c->idle_set != idle_want) ||
                (c->fence_on && c->idle_mode < 0 && !implicit));
    int guard = commit && c->fence_on;
    size_t ndq = c->ndq;
    if (!begin && !fence && !ndq && !commit && nst == 1) {
        PGresult *r = PQexecParams(c->pg, st->sql, st->n, st->types, st->vals,
                                   st->lens, st->fmts, 1);
        if (!pg_ok(r)) {
            rc = pg_fail(c, r, what);
            PQclear(r);
            return rc;
        }
        if (res)
            res[0] = r;
        else
            PQclear(r);
        return 0;
    }

    /* The kind of each statement sent, in order. */
    size_t total = (size_t)begin + (size_t)idle + (size_t)fence + ndq +
                   (size_t)nst + (size_t)guard + (size_t)commit;
    /* each statement may be preceded by its Prepare */
    unsigned char *kind = malloc(total ? 2 * total : 1);
    PGresult **dres = ndq ? calloc(ndq, sizeof *dres) : NULL;
    if (!kind || (ndq && !dres)) {
        free(kind);
        free(dres);
        pg_set_err(c, "postgresql %s: %s: out of memory", c->masked, what);
        return MQS_ENOMEM;
    }
    char pid[16], idle_ms[24], token[24], margin[24];
    snprintf(pid, sizeof pid, "%d", PQbackendPID(c->pg));
    snprintf(idle_ms, sizeof idle_ms, "%lld", (long long)idle_want);
    snprintf(token, sizeof token, "%lld", (long long)c->fence_token);
    snprintf(margin, sizeof margin, "%lld", (long long)c->fence_margin_ms);
    const Oid t_txt[4] = {PG_OID_TEXT, PG_OID_TEXT, PG_OID_TEXT, PG_OID_TEXT};
    const char *v_idle[2] = {pid, idle_ms};
    const char *v_fence[1] = {c->fence_cluster};
    const char *v_guard[4] = {c->fence_cluster, c->fence_node, token, margin};

    c->begin_pending = 0; /* a failed BEGIN leaves nothing to roll back */
    if (!PQenterPipelineMode(c->pg)) {
        free(kind);
        free(dres);
        return pg_fail(c, NULL, what);
    }
    size_t k = 0;
    int ok = 1;
    /* Inside a transaction block the pipeline goes in up to three groups,
     * each ended by a Sync (no round trip: nothing waits for it): BEGIN
     * and the session settings; the fence's lock, the writes and the
     * guard; COMMIT. libpq writes to the socket at each Sync (and only
     * there below 8 KiB), so every write the server receives ends at a
     * Sync: it reports ReadyForQuery there and arms
     * idle_in_transaction_session_timeout before it reads on, and a path
     * that stalls between two writes cannot keep the fence's or the
     * insert turn's lock held past about a lease (a standby's takeover
     * waits for them). A write group larger than libpq's 8 KiB chunks is
     * written in pieces; a stall inside one leaves the server waiting in
     * the middle of a group, as it always could inside one big statement.
     * After a failure in the writes the server skips the rest of that
     * group; COMMIT, after its Sync, then runs in the aborted block and
     * only ends it. A Sync before COMMIT also makes "no answer at all"
     * mean "COMMIT did not run" (see below). Fewer Syncs than one per statement:
     * each costs the server a flush and the client a packet (measured in
     * docs/architecture.md, "Write path"). Outside a block one Sync ends
     * the implicit transaction. */
    int sync_each = c->in_txn && !implicit;
    int nsync = 0;
    size_t k_synced = 0; /* statements sent up to the last Sync */
    /* On a direct session the hot statements are prepared once (parsed and
     * planned once: a third of a small transaction's server time here);
     * through a pooler a named statement could land on another server
     * session, so they stay unnamed there. Statements prepared in this
     * pipeline count only once it succeeded; a failed one may leave a
     * named statement behind, which a fresh name never meets. */
    int use_prep = c->idle_mode == 1 && c->in_txn;
    const char *new_sql[24];
    unsigned new_id[24];
    int n_new = 0;
#define PG_SEND(kd, sql, n, types, vals, lens, fmts)                          \
    do {                                                                       \
        if (ok) {                                                              \
            /* static SQL texts only: a statement's address is its key */     \
            int p_ = use_prep && (kd) != PG_IT_STMT && (kd) != PG_IT_IDLE;     \
            unsigned id_ = p_ ? pg_prep_find(c, sql) : 0;                      \
            for (int j_ = 0; p_ && !id_ && j_ < n_new; j_++)                   \
                if (new_sql[j_] == (sql))                                      \
                    id_ = new_id[j_];                                          \
            char nm_[24];                                                      \
            if (p_ && !id_ && c->nprep + n_new < 24) {                         \
                id_ = ++c->prep_seq;                                           \
                snprintf(nm_, sizeof nm_, "mqs_%u", id_);                      \
                kind[k++] = PG_IT_PREP;                                        \
                ok = PQsendPrepare(c->pg, nm_, sql, n, types);                \
                new_sql[n_new] = (sql);                                        \
                new_id[n_new++] = id_;                                         \
            }                                                                  \
            kind[k++] = (kd);                                                  \
            if (ok && id_) {                                                   \
                snprintf(nm_, sizeof nm_, "mqs_%u", id_);                      \
                ok = PQsendQueryPrepared(c->pg, nm_, n, vals, lens, fmts, 1); \
            } else if (ok) {                                                   \
                ok = PQsendQueryParams(c->pg, sql, n, types, vals, lens, fmts, \
                                       1);                                     \
            }                                                                  \
        }                                                                      \
    } while (0)
    /* Ends a group: a Sync after what was sent since the last one. */
#define PG_GROUP_END()                                                         \
    do {                                                                       \
        if (ok && sync_each && k > k_synced) {                                 \
            ok = PQpipelineSync(c->pg);                                        \
            nsync++;                                                           \
            k_synced = k;                                                      \
        }                                                                      \
    } while (0)
    if (begin && !implicit)
        PG_SEND(PG_IT_BEGIN, "BEGIN", 0, NULL, NULL, NULL, NULL);
    if (idle)
        PG_SEND(PG_IT_IDLE, c->idle_mode >= 0 ? SQL_IDLE_SESSION
                                              : SQL_IDLE_LOCAL,
                2, t_txt, v_idle, NULL, NULL);
    PG_GROUP_END();
    if (fence)
        PG_SEND(PG_IT_FENCE, SQL_FENCE_LOCK, 1, t_txt, v_fence, NULL, NULL);
    for (size_t i = 0; i < ndq; i++) {
        pg_deferred *d = &c->dq[i];
        PG_SEND(PG_IT_DEFER, d->sql, d->n, d->types,
                (const char *const *)d->vals, d->lens, d->fmts);
    }
    for (int i = 0; i < nst; i++)
        PG_SEND(PG_IT_STMT, st[i].sql, st[i].n, st[i].types, st[i].vals,
                st[i].lens, st[i].fmts);
    if (guard)
        PG_SEND(PG_IT_GUARD, SQL_FENCE_GUARD, 4, t_txt, v_guard, NULL, NULL);
    PG_GROUP_END();
    /* Did a Sync go before COMMIT? Only then does no answer at all prove
     * that COMMIT did not run (below). */
    int sync_before_commit = nsync > 0;
    if (commit && !implicit)
        PG_SEND(PG_IT_COMMIT, "COMMIT", 0, NULL, NULL, NULL, NULL);
    PG_GROUP_END();
#undef PG_GROUP_END
#undef PG_SEND
    total = k;
    if (ok && !sync_each) {
        ok = PQpipelineSync(c->pg);
        nsync++;
    }
    if (!ok) {
        /* Results of what was sent are still queued: drop the connection.
         * A COMMIT may have gone out with the rest. */
        free(kind);
        free(dres);
        pg_defer_clear(c);
        return pg_fail_code(c, NULL, what, commit ? MQS_EUNKNOWN : MQS_ECONN);
    }
    if (fence)
        c->fence_locked = 1;

    /* Each statement's results end with a NULL; the sync ends the lot. */
    size_t idx = 0, di = 0;
    int si = 0, synced = 0, committed = 0, commit_seen = 0, err_kd = -2;
    int answered = 0; /* the server sent anything for this pipeline */
    while (idx <= total) {
        PGresult *r = PQgetResult(c->pg);
        if (!r) {
            if (idx < total && kind[idx] == PG_IT_DEFER)
                di++;
            if (idx < total && kind[idx] == PG_IT_STMT)
                si++;
            idx++;
            if (PQstatus(c->pg) == CONNECTION_BAD)
                break;
            continue;
        }
        ExecStatusType es = PQresultStatus(r);
        /* a result the client made up for a lost connection has no
         * SQLSTATE and is no answer */
        if (es != PGRES_FATAL_ERROR ||
            PQresultErrorField(r, PG_DIAG_SQLSTATE) != NULL)
            answered = 1;
        if (es == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            if (--nsync > 0)
                continue; /* a group's Sync (sync_each) */
            synced = 1;
            break;
        }
        int kd = idx < total ? kind[idx] : -1;
        if (kd == PG_IT_COMMIT && es != PGRES_PIPELINE_ABORTED)
            commit_seen = 1;
        if (es == PGRES_PIPELINE_ABORTED) {
            PQclear(r); /* skipped after the first failure */
        } else if (!pg_ok(r)) {
            if (!rc) {
                const char *gm =
                    kd == PG_IT_GUARD
                        ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY)
                        : NULL;
                /* Only the guard's own cast error is a fence. Anything
                 * else at its position (the server shutting down, a
                 * cancel, a lost connection) is that error: it proves the
                 * COMMIT after it never ran, so the write is retried, and
                 * a master is not deposed by a database restart. */
                if (kd == PG_IT_GUARD && gm &&
                    strstr(gm, "mqstore fence:") != NULL) {
                    char why[700];
                    pg_oneline(why, sizeof why, gm);
                    /* The server wraps it: invalid input syntax for type
                     * integer: "mqstore fence: ...". Keep the inside. */
                    char *q = strchr(why, '"'), *e = strrchr(why, '"');
                    if (q && e > q + 1) {
                        *e = '\0';
                        memmove(why, q + 1, (size_t)(e - q));
                    }
                    snprintf(c->state, sizeof c->state, "22P02");
                    pg_set_err(c, "postgresql %s: %s", c->masked, why);
                    rc = MQS_EFENCED;
                } else if (kd == PG_IT_COMMIT) {
                    rc = pg_fail(c, r, "COMMIT (write transaction)");
                } else {
                    rc = pg_fail(c, r,
                                 kd == PG_IT_BEGIN   ? "BEGIN"
                                 : kd == PG_IT_GUARD ? "the fence's check "
                                                       "before COMMIT"
                                 : kd == PG_IT_DEFER ? c->dq[di].what
                                                     : what);
                }
                err_kd = kd;
            }
            PQclear(r);
        } else if (kd == PG_IT_COMMIT) {
            /* COMMIT of a failed transaction "succeeds" as ROLLBACK. */
            committed = !strcmp(PQcmdStatus(r), "COMMIT");
            PQclear(r);
        } else if (kd == PG_IT_IDLE && c->idle_mode >= 0) {
            /* first column: the session is this client's own */
            c->idle_mode = PQntuples(r) == 1 && PQgetlength(r, 0, 0) == 1 &&
                                   PQgetvalue(r, 0, 0)[0] == 1
                               ? 1
                               : -1;
            c->idle_set = c->idle_mode == 1 ? idle_want : -1;
            c->idle_unsure = c->idle_mode == 1;
            PQclear(r);
        } else if (kd == PG_IT_DEFER && !dres[di]) {
            dres[di] = r;
        } else if (kd == PG_IT_STMT && res && !res[si]) {
            res[si] = r;
        } else {
            PQclear(r);
        }
    }
    /* The implicit transaction committed at the Sync: every statement
     * succeeded and the server then reported no transaction open. */
    if (implicit && synced && !rc &&
        PQtransactionStatus(c->pg) == PQTRANS_IDLE)
        committed = 1;
    if (!synced || !PQexitPipelineMode(c->pg)) {
        if (!rc && !(commit && committed))
            rc = pg_fail_code(c, NULL, what,
                              commit && !commit_seen ? MQS_EUNKNOWN
                                                     : MQS_ECONN);
        c->broken = 1;
    }
    if (commit && committed) {
        rc = 0; /* its result came: an error after it (the session ended
                   right after) changes nothing */
    } else if (commit && sync_each && sync_before_commit && !answered &&
               (rc == MQS_ECONN || rc == MQS_EUNKNOWN)) {
        /* Not one answer: a group ended at a Sync before COMMIT, where the
         * server flushes its answers before it reads on, so it did not run
         * COMMIT (a session it ended, e.g. a restart, before it read the
         * pipeline). Safe to retry. A pipeline that is COMMIT alone (the
         * writes went in an earlier round trip, no fence) proves nothing
         * by silence: the server may have committed and been lost before
         * its answer left, so that stays MQS_EUNKNOWN below. */
        rc = MQS_ECONN;
        c->broken = 1;
    } else if (commit && (rc == MQS_ECONN || rc == MQS_EUNKNOWN) &&
               (!c->state[0] || err_kd == PG_IT_COMMIT || err_kd == -1)) {
        /* The connection went without the server saying which statement
         * stopped the transaction (or it failed at COMMIT itself): COMMIT
         * was sent, and the server may have run it before the results
         * were flushed. A server error at an earlier statement proves the
         * rest never ran (a session runs its statements in order). */
        char why[sizeof c->err];
        memcpy(why, c->err, sizeof why);
        pg_set_err(c, "%s The outcome of COMMIT is unknown: it was sent in "
                      "the same round trip.", why);
        rc = MQS_EUNKNOWN;
    }
    /* The session's idle timeout, if set in this transaction, holds only
     * if it committed (see idle_unsure). */
    if (commit && c->idle_unsure) {
        if (!committed)
            c->idle_set = PG_IDLE_UNKNOWN;
        c->idle_unsure = 0;
    }
    if (commit && rc == 0 && !committed) {
        pg_set_err(c,
                   "postgresql %s: COMMIT rolled back: a statement of the "
                   "transaction had failed.",
                   c->masked);
        rc = MQS_EIO;
    }
    /* Deferred writes read their results once the round trip (with
     * commit: the COMMIT) succeeded. */
    for (size_t i = 0; i < ndq && rc == 0; i++)
        if (c->dq[i].done && dres[i])
            rc = c->dq[i].done(c, dres[i], c->dq[i].ctx);
    for (size_t i = 0; i < ndq; i++)
        PQclear(dres[i]);
    for (int j = 0; rc == 0 && j < n_new && c->nprep < 24; j++) {
        c->prep[c->nprep].sql = new_sql[j];
        c->prep[c->nprep++].id = new_id[j];
    }
    free(dres);
    free(kind);
    pg_defer_clear(c);
    if (rc && res)
        for (int i = 0; i < nst; i++) {
            PQclear(res[i]);
            res[i] = NULL;
        }
    return rc;
}

/* Run nst statements in one round trip, with whatever the open
 * transaction has pending (see pg_flush). */
int pg_run(mqs_be_conn *c, const char *what, const pg_stmt *st,
           int nst, PGresult **res)
{
    return pg_flush(c, what, st, nst, res, 0);
}

/* One statement, text parameters, results discarded or returned. */
int pg_run1(mqs_be_conn *c, const char *what, const char *sql, int n,
            const Oid *types, const char *const *vals, PGresult **res)
{
    pg_stmt st = {sql, n, types, vals, NULL, NULL};
    return pg_run(c, what, &st, 1, res);
}

/* Single-column, single-row integer result (or none: *found = 0). */
int pg_run_id(mqs_be_conn *c, const char *what, const char *sql, int n,
              const Oid *types, const char *const *vals, int64_t *out,
              int *found)
{
    PGresult *r;
    int rc = pg_run1(c, what, sql, n, types, vals, &r);
    if (rc)
        return rc;
    *found = PQntuples(r) > 0;
    *out = 0;
    if (*found && pg_get_int(r, 0, 0, out))
        rc = pg_bad_result(c, what);
    PQclear(r);
    return rc;
}
