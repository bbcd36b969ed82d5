/* writer.c - the write path: requests, group commit, connection pool,
 * reconnects, destination cache. See docs/architecture.md "Write path". */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "be_call.h"
#include "internal.h"

/* ------------------------------------------------------------------------
 * Requests
 * ---------------------------------------------------------------------- */

mqs_request *mqs__req_new(void)
{
    mqs_request *r = calloc(1, sizeof *r);
    if (r && sem_init(&r->done, 0, 0) != 0) {
        free(r);
        return NULL;
    }
    return r;
}

void mqs__req_free(mqs_request *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_ops; i++) {
        free(r->ops[i].dest);
        free(r->ops[i].name);
        free(r->ops[i].data);
    }
    free(r->ops);
    free(r->errmsg);
    mqs__page_free(r->page);
    sem_destroy(&r->done);
    free(r);
}

mqs_op *mqs__req_add(mqs_request *r, op_kind kind)
{
    if (mqs__grow(&r->ops, &r->cap_ops, r->n_ops + 1, sizeof *r->ops, 1))
        return NULL;
    mqs_op *op = &r->ops[r->n_ops++];
    memset(op, 0, sizeof *op);
    op->kind = kind;
    return op;
}

int mqs__req_add_msg(mqs_store *s, mqs_request *r, const mqs_msg *m)
{
    if (!m)
        return mqs__err(s, MQS_EINVAL, "message is NULL");
    if (m->kind != MQS_QUEUE && m->kind != MQS_TOPIC)
        return mqs__err(s, MQS_EINVAL,
                        "message kind %d: expected MQS_QUEUE or MQS_TOPIC",
                        (int)m->kind);
    size_t dlen = m->dest ? strlen(m->dest) : 0;
    if (dlen == 0 || dlen > 255)
        return mqs__err(s, MQS_EINVAL,
                        "destination name must be 1 to 255 bytes (got %zu)",
                        dlen);
    if (m->priority < MQS_PRIORITY_MIN || m->priority > MQS_PRIORITY_MAX)
        return mqs__err(s, MQS_EINVAL,
                        "priority %d for '%s': expected 0 to 9", m->priority,
                        m->dest);
    if ((m->headers_len && !m->headers) || (m->body_len && !m->body))
        return mqs__err(s, MQS_EINVAL,
                        "message for '%s' has a length but no data", m->dest);
    if (m->expires_ms < 0)
        return mqs__err(s, MQS_EINVAL, "expires_ms %lld is negative",
                        (long long)m->expires_ms);
    size_t total = m->headers_len + m->body_len;
    if (total < m->headers_len || total > s->max_message) {
        if (s->max_message < s->uri.cfg.max_message_size)
            /* The database server is what limits: say so, the URI option
             * cannot help. */
            return mqs__err(s, MQS_ETOOBIG,
                            "message for '%s' is %zu bytes (headers %zu + "
                            "body %zu), over the %zu bytes the database "
                            "server accepts (the %s backend's limit, e.g. "
                            "MySQL's max_allowed_packet): raise that setting "
                            "on the server",
                            m->dest, total, m->headers_len, m->body_len,
                            s->max_message, s->be->name);
        return mqs__err(s, MQS_ETOOBIG,
                        "message for '%s' is %zu bytes (headers %zu + body "
                        "%zu), over max_message_size=%zu; raise "
                        "max_message_size in the store URI",
                        m->dest, total, m->headers_len, m->body_len,
                        s->max_message);
    }
    mqs_op *op = mqs__req_add(r, OP_ENQ);
    if (!op)
        return mqs__err(s, MQS_ENOMEM, "out of memory queuing a message");
    op->dkind = m->kind;
    op->dest = mqs__strdup(m->dest);
    op->data = malloc(total ? total : 1);
    if (!op->dest || !op->data) {
        free(op->dest);
        free(op->data);
        r->n_ops--;
        return mqs__err(s, MQS_ENOMEM, "out of memory copying a %zu-byte "
                        "message", total);
    }
    if (m->headers_len)
        memcpy(op->data, m->headers, m->headers_len);
    if (m->body_len)
        memcpy(op->data + m->headers_len, m->body, m->body_len);
    op->hlen = m->headers_len;
    op->blen = m->body_len;
    op->priority = m->priority;
    op->expires_ms = m->expires_ms;
    r->bytes += total;
    return 0;
}

/* ------------------------------------------------------------------------
 * Destination cache
 * ---------------------------------------------------------------------- */

static size_t hash_name(mqs_kind kind, const char *name)
{
    size_t h = 1469598103934665603ULL ^ (size_t)kind;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

int64_t mqs__cache_get(mqs_store *s, mqs_kind kind, const char *name)
{
    int64_t id = 0;
    pthread_mutex_lock(&s->cache_mu);
    if (s->cache_cap) {
        dest_entry *e = s->cache[hash_name(kind, name) % s->cache_cap];
        for (; e; e = e->next)
            if (e->kind == kind && !strcmp(e->name, name)) {
                id = e->id;
                break;
            }
    }
    pthread_mutex_unlock(&s->cache_mu);
    return id;
}

void mqs__cache_put(mqs_store *s, mqs_kind kind, const char *name, int64_t id)
{
    pthread_mutex_lock(&s->cache_mu);
    if (s->cache_n >= s->cache_cap * 2) {
        /* grow: rehash into a table four times the size */
        size_t cap = s->cache_cap ? s->cache_cap * 4 : 64;
        dest_entry **t = calloc(cap, sizeof *t);
        if (t) {
            for (size_t i = 0; i < s->cache_cap; i++)
                for (dest_entry *e = s->cache[i], *n; e; e = n) {
                    n = e->next;
                    size_t b = hash_name(e->kind, e->name) % cap;
                    e->next = t[b];
                    t[b] = e;
                }
            free(s->cache);
            s->cache = t;
            s->cache_cap = cap;
        }
    }
    if (s->cache_cap) {
        size_t b = hash_name(kind, name) % s->cache_cap;
        for (dest_entry *e = s->cache[b]; e; e = e->next)
            if (e->kind == kind && !strcmp(e->name, name))
                goto out;
        size_t len = strlen(name) + 1;
        dest_entry *e = malloc(sizeof *e + len);
        if (e) { /* a cache miss later is harmless, so OOM is ignored */
            e->kind = kind;
            e->id = id;
            memcpy(e->name, name, len);
            e->next = s->cache[b];
            s->cache[b] = e;
            s->cache_n++;
        }
    }
out:
    pthread_mutex_unlock(&s->cache_mu);
}

void mqs__cache_free(mqs_store *s)
{
    for (size_t i = 0; i < s->cache_cap; i++)
        for (dest_entry *e = s->cache[i], *n; e; e = n) {
            n = e->next;
            free(e);
        }
    free(s->cache);
    s->cache = NULL;
    s->cache_cap = s->cache_n = 0;
}

/* ------------------------------------------------------------------------
 * Connections
 * ---------------------------------------------------------------------- */

int mqs__conn_open(mqs_store *s, const char *role, mqs_be_conn **out)
{
    char err[1024] = "";
    mqs_be_open_args a = {.parts = &s->uri.parts,
                          .uri_masked = s->uri.masked, .role = role};
    int rc = mqs__bc_conn_open(MQS_BCX(s), &a, out, err, sizeof err);
    if (rc) {
        *out = NULL;
        return mqs__err(s, rc, "%s", err[0] ? err : mqs_strerror(rc));
    }
    return 0;
}

int mqs__pool_get(mqs_store *s, bool open_now, mqs_be_conn ***slot)
{
    mqs_pool *p = &s->pool;
    pthread_mutex_lock(&p->mu);
    size_t i;
    for (;;) {
        for (i = 0; i < p->n && p->busy[i]; i++)
            ;
        if (i < p->n)
            break;
        pthread_cond_wait(&p->cv, &p->mu);
    }
    p->busy[i] = true;
    pthread_mutex_unlock(&p->mu);
    /* The slot is ours until put back, so it is opened without the lock. */
    if (open_now && !p->conns[i]) {
        int rc = mqs__conn_open(s, "reader", &p->conns[i]);
        if (rc) {
            mqs__pool_put(s, &p->conns[i], false);
            return rc;
        }
    }
    *slot = &p->conns[i];
    return 0;
}

void mqs__pool_put(mqs_store *s, mqs_be_conn **slot, bool broken)
{
    mqs_pool *p = &s->pool;
    if (broken && *slot) {
        mqs__bc_conn_close(MQS_BCX(s), *slot);
        *slot = NULL;
    }
    pthread_mutex_lock(&p->mu);
    p->busy[slot - p->conns] = false;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* Make *c usable: reconnect with capped exponential back-off until
 * reconnect_timeout_ms has passed. Credentials or a missing database are
 * not retried: waiting will not fix them, and retrying would storm. */
static int conn_ensure(mqs_store *s, mqs_be_conn **c, const char *role,
                       char *err, size_t errlen)
{
    if (*c)
        return 0;
    int64_t deadline = mqs__mono_ms() + s->uri.cfg.reconnect_timeout_ms;
    int64_t delay = 10;
    for (int attempt = 1;; attempt++) {
        int rc = mqs__conn_open(s, role, c);
        if (rc == 0) {
            pthread_mutex_lock(&s->stats_mu);
            s->stats.reconnects++;
            pthread_mutex_unlock(&s->stats_mu);
            if (attempt > 1)
                mqs__log(s, MQS_LOG_WARN,
                         "reconnected to %s after %d attempts",
                         s->uri.masked, attempt);
            return 0;
        }
        snprintf(err, errlen, "%s", mqs_errmsg(s));
        if (rc != MQS_ECONN || mqs__mono_ms() + delay > deadline)
            return rc;
        if (attempt == 1)
            mqs__log(s, MQS_LOG_WARN, "database unreachable, retrying for "
                     "up to %lld ms: %s",
                     (long long)s->uri.cfg.reconnect_timeout_ms, err);
        mqs__sleep_ms(delay);
        /* capped low: a master must get back within its lease */
        delay = delay * 2 > 250 ? 250 : delay * 2;
    }
}

/* ------------------------------------------------------------------------
 * Running requests in one transaction
 * ---------------------------------------------------------------------- */

typedef struct new_dest {
    mqs_kind kind;
    const char *name; /* borrowed from the op */
    int64_t id;
} new_dest;

typedef struct txn_ctx {
    mqs_store *s;
    mqs_be_conn *c;
    new_dest *nd; /* destinations created in this transaction */
    size_t n_nd, cap_nd;
    mqs_be_msg *msgs; /* one per ENQ op, in order (never reallocated) */
    size_t n_msgs;
    mqs_be_ref *refs; /* one per ACK op, in order (never reallocated) */
    size_t n_refs;
} txn_ctx;

static int resolve(txn_ctx *t, mqs_kind kind, const char *name, int create,
                   int64_t *id)
{
    *id = mqs__cache_get(t->s, kind, name);
    if (*id)
        return 0;
    for (size_t i = 0; i < t->n_nd; i++)
        if (t->nd[i].kind == kind && !strcmp(t->nd[i].name, name)) {
            *id = t->nd[i].id;
            return 0;
        }
    int rc = mqs__bc_dest_resolve(MQS_BCX(t->s), t->c, kind, name, create,
                                  id);
    if (rc)
        return rc;
    /* Cache only after commit: a rolled-back insert leaves no destination. */
    if (mqs__grow(&t->nd, &t->cap_nd, t->n_nd + 1, sizeof *t->nd, 8))
        return MQS_ENOMEM;
    t->nd[t->n_nd++] = (new_dest){kind, name, *id};
    return 0;
}

/* Run a run of consecutive ENQ ops natively batched. t->msgs holds one
 * slot per ENQ op of the transaction, allocated once: a backend may keep
 * the array until txn_commit (deferred writes), so it never moves. */
static int run_inserts(txn_ctx *t, mqs_op **ops, size_t n, int64_t now)
{
    mqs_be_msg *m = t->msgs + t->n_msgs;
    int rc;
    for (size_t i = 0; i < n; i++) {
        mqs_op *op = ops[i];
        if ((rc = resolve(t, op->dkind, op->dest, 1, &m[i].dest_id)))
            return rc;
        m[i].kind = op->dkind;
        m[i].priority = op->priority;
        m[i].expires_ms = op->expires_ms;
        m[i].enqueued_ms = now;
        m[i].headers = op->data;
        m[i].headers_len = op->hlen;
        m[i].body = op->data + op->hlen;
        m[i].body_len = op->blen;
        m[i].id = 0;
    }
    t->n_msgs += n;
    return mqs__bc_msg_insert(MQS_BCX(t->s), t->c, m, n);
}

/* Run a run of consecutive ACK ops natively batched (see run_inserts). */
static int run_acks(txn_ctx *t, mqs_op **ops, size_t n)
{
    mqs_be_ref *r = t->refs + t->n_refs;
    for (size_t i = 0; i < n; i++)
        r[i] = (mqs_be_ref){ops[i]->id, ops[i]->sub_id};
    t->n_refs += n;
    return mqs__bc_msg_ack(MQS_BCX(t->s), t->c, r, n);
}

static int run_one(txn_ctx *t, mqs_op *op)
{
    const mqs_bcx *b = MQS_BCX(t->s);
    int64_t dest_id = 0;
    int rc;
    switch (op->kind) {
    case OP_NACK: {
        mqs_be_ref r = {op->id, op->sub_id};
        return mqs__bc_msg_nack(b, t->c, &r);
    }
    case OP_SUB_CREATE:
        if ((rc = resolve(t, MQS_TOPIC, op->dest, 1, &dest_id)))
            return rc;
        return mqs__bc_sub_create(b, t->c, dest_id, op->name, &op->sub_id);
    case OP_SUB_REMOVE:
        return mqs__bc_sub_remove(b, t->c, op->sub_id);
    case OP_MARK: /* mqs_mark_async checked the module has marks */
        return mqs__bc_mark_put(b, t->c, op->name, op->id, mqs__now_ms());
    case OP_MARK_PRUNE:
        return mqs__bc_mark_prune(b, t->c, op->id, &op->count);
    case OP_PURGE:
        if (op->dest) {
            rc = resolve(t, op->dkind, op->dest, 0, &dest_id);
            if (rc == MQS_ENOTFOUND) { /* never used: nothing to purge */
                op->count = 0;
                return 0;
            }
            if (rc)
                return rc;
        }
        return mqs__bc_purge(b, t->c, dest_id, &op->count);
    default:
        return MQS_EINVAL;
    }
}

/* Run reqs[0..n) as one transaction on c. On failure the message is in
 * err. */
static int exec_txn(mqs_store *s, mqs_be_conn *c, mqs_request **reqs,
                    size_t n, char *err, size_t errlen)
{
    const mqs_bcx *b = MQS_BCX(s);
    txn_ctx t = {.s = s, .c = c};
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += reqs[i]->n_ops;
    mqs_op **ops = malloc((total ? total : 1) * sizeof *ops);
    if (!ops) {
        snprintf(err, errlen, "out of memory building a transaction");
        return MQS_ENOMEM;
    }
    size_t k = 0, n_enq = 0, n_ack = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < reqs[i]->n_ops; j++) {
            ops[k] = &reqs[i]->ops[j];
            n_enq += ops[k]->kind == OP_ENQ;
            n_ack += ops[k]->kind == OP_ACK;
            k++;
        }
    t.msgs = n_enq ? malloc(n_enq * sizeof *t.msgs) : NULL;
    t.refs = n_ack ? malloc(n_ack * sizeof *t.refs) : NULL;
    if ((n_enq && !t.msgs) || (n_ack && !t.refs)) {
        free(t.msgs);
        free(t.refs);
        free(ops);
        snprintf(err, errlen, "out of memory building a transaction");
        return MQS_ENOMEM;
    }

    int64_t now = mqs__now_ms();
    mqs_fence fence;
    int rc = mqs__fence_prepare(s, &fence, err, errlen);
    if (rc) {
        free(t.msgs);
        free(t.refs);
        free(ops);
        return rc;
    }
    rc = mqs__bc_txn_begin(b, c);
    /* Fencing: the COMMIT of this transaction is conditional on this node
     * still holding the lock (see lock_fence in backend.h), so a deposed
     * master's commit writes nothing. Nothing here writes the lock row:
     * only the lease agent renews. */
    if (rc == 0 && fence.active)
        rc = mqs__bc_lock_fence(b, c, &fence.f);
    /* Consecutive inserts and consecutive acks go to the backend as one
     * native batch; everything else runs in order. Order is kept, so a
     * transaction's semantics never depend on batching. */
    for (size_t i = 0; i < total && rc == 0;) {
        size_t j = i + 1;
        if (ops[i]->kind == OP_ENQ || ops[i]->kind == OP_ACK) {
            while (j < total && ops[j]->kind == ops[i]->kind)
                j++;
            rc = ops[i]->kind == OP_ENQ ? run_inserts(&t, ops + i, j - i, now)
                                        : run_acks(&t, ops + i, j - i);
        } else {
            rc = run_one(&t, ops[i]);
        }
        i = j;
    }
    /* The lock lost (or the local lease over) while this transaction was
     * built: roll back rather than commit after on_lost. */
    bool own_err = false;
    if (rc == 0 && (rc = mqs__fence_commit(s, &fence, err, errlen)))
        own_err = true;
    if (rc == 0)
        rc = mqs__bc_txn_commit(b, c);
    if (rc) {
        if (!own_err)
            snprintf(err, errlen, "%s",
                     rc == MQS_ENOMEM ? "out of memory"
                                      : mqs__bc_conn_errmsg(b, c));
        (void)mqs__bc_txn_rollback(b, c); /* the failure above counts */
    } else {
        for (size_t i = 0; i < t.n_nd; i++)
            mqs__cache_put(s, t.nd[i].kind, t.nd[i].name, t.nd[i].id);
        /* Ids are final only now: a backend may set them at commit. */
        size_t m = 0;
        for (size_t i = 0; i < total; i++)
            if (ops[i]->kind == OP_ENQ)
                ops[i]->id = t.msgs[m++].id;
    }
    mqs__fence_done(s, &fence, rc, err);
    free(t.nd);
    free(t.msgs);
    free(t.refs);
    free(ops);
    return rc;
}

static void count_success(mqs_store *s, mqs_request **reqs, size_t n)
{
    uint64_t enq = 0, ack = 0, nack = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < reqs[i]->n_ops; j++) {
            mqs_op *op = &reqs[i]->ops[j];
            enq += op->kind == OP_ENQ && op->id != 0;
            ack += op->kind == OP_ACK;
            nack += op->kind == OP_NACK;
        }
    pthread_mutex_lock(&s->stats_mu);
    s->stats.enqueued += enq;
    s->stats.acked += ack;
    s->stats.nacked += nack;
    s->stats.transactions++;
    if (n > s->stats.max_batch)
        s->stats.max_batch = n;
    pthread_mutex_unlock(&s->stats_mu);
}

static void fail(mqs_store *s, mqs_request *r, int rc, const char *msg)
{
    r->rc = rc;
    free(r->errmsg);
    r->errmsg = mqs__strdup(msg);
    for (size_t j = 0; j < r->n_ops; j++)
        r->ops[j].id = r->ops[j].kind == OP_ENQ ? 0 : r->ops[j].id;
    pthread_mutex_lock(&s->stats_mu);
    s->stats.failed++;
    pthread_mutex_unlock(&s->stats_mu);
}

/* Commit reqs as one transaction on *c, reconnecting as needed; sets each
 * request's rc. A transaction that failed before COMMIT on a lost
 * connection wrote nothing, so it is retried on a new connection until
 * reconnect_timeout_ms; a lost COMMIT is reported as MQS_EUNKNOWN (it may
 * have committed: retrying could store messages twice). Any other failure
 * of a group is retried one request per transaction, so one bad request
 * cannot fail its neighbours. */
static void run_batch(mqs_store *s, mqs_be_conn **c, const char *role,
                      mqs_request **reqs, size_t n)
{
    char err[1536] = "";
    int64_t deadline = mqs__mono_ms() + s->uri.cfg.reconnect_timeout_ms;
    int rc;
    for (;;) {
        rc = conn_ensure(s, c, role, err, sizeof err);
        if (rc)
            break;
        rc = exec_txn(s, *c, reqs, n, err, sizeof err);
        if (rc == MQS_ECONN || rc == MQS_EUNKNOWN) {
            mqs__bc_conn_close(MQS_BCX(s), *c);
            *c = NULL;
        }
        if (rc != MQS_ECONN || mqs__mono_ms() > deadline)
            break;
        mqs__log(s, MQS_LOG_WARN, "connection lost before commit, retrying "
                 "the transaction: %s", err);
        pthread_mutex_lock(&s->stats_mu);
        s->stats.retries++;
        pthread_mutex_unlock(&s->stats_mu);
    }
    if (rc == 0) {
        count_success(s, reqs, n);
        for (size_t i = 0; i < n; i++)
            reqs[i]->rc = 0;
        return;
    }
    /* A lock timeout (MQS_EBUSY) is not one bad request: retried one by
     * one, every request would wait the timeout again while the whole store
     * stalls. Those fail together; the callers may retry. */
    if (n > 1 && rc != MQS_EUNKNOWN && rc != MQS_ECONN &&
        rc != MQS_EFENCED && rc != MQS_EBUSY) {
        pthread_mutex_lock(&s->stats_mu);
        s->stats.retries++;
        pthread_mutex_unlock(&s->stats_mu);
        for (size_t i = 0; i < n; i++)
            run_batch(s, c, role, &reqs[i], 1);
        return;
    }
    for (size_t i = 0; i < n; i++)
        fail(s, reqs[i], rc, err);
}

/* Read a page (page.c) on the writer's connection, outside any
 * transaction, between the batch before it and the one after. A read
 * changes nothing, so one that lost its connection is read again on a new
 * connection until reconnect_timeout_ms, whatever stage it reached. */
static void run_page(mqs_store *s, mqs_request *r)
{
    char err[1536] = "";
    int64_t deadline = mqs__mono_ms() + s->uri.cfg.reconnect_timeout_ms;
    int rc;
    for (;;) {
        rc = conn_ensure(s, &s->wconn, "writer", err, sizeof err);
        if (rc)
            break;
        rc = mqs__page_read(s, s->wconn, r, err, sizeof err);
        if (rc == MQS_ECONN || rc == MQS_EUNKNOWN) {
            mqs__bc_conn_close(MQS_BCX(s), s->wconn);
            s->wconn = NULL;
        }
        if (rc != MQS_ECONN || mqs__mono_ms() > deadline)
            break;
        mqs__log(s, MQS_LOG_WARN, "connection lost during a page read, "
                 "reading it again: %s", err);
    }
    if (rc)
        fail(s, r, rc, err);
    else
        r->rc = 0;
}

/* ------------------------------------------------------------------------
 * The writer thread (commit=group)
 * ---------------------------------------------------------------------- */

static void txn_complete(mqs_request *r)
{
    size_t n = 0;
    for (size_t i = 0; i < r->n_ops; i++)
        n += r->ops[i].kind == OP_ENQ;
    int64_t one, *ids = n > 1 ? malloc(n * sizeof *ids) : &one;
    int rc = r->rc;
    const char *msg = rc ? r->errmsg : "";
    if (!ids) { /* report the commit's outcome even without the id list */
        r->tcb(r->ud, rc ? rc : MQS_ENOMEM, NULL, 0,
               rc ? msg : "committed, but out of memory listing the ids");
        return;
    }
    size_t k = 0;
    for (size_t i = 0; i < r->n_ops; i++)
        if (r->ops[i].kind == OP_ENQ)
            ids[k++] = rc ? 0 : r->ops[i].id;
    r->tcb(r->ud, rc, ids, n, msg ? msg : "");
    if (ids != &one)
        free(ids);
}

/* Run an async request's callback and free it. The id handed to done:
 * the message's for an enqueue, the subscription's for a create. */
static void run_completion(mqs_request *r)
{
    if (r->cb) {
        int64_t id = 0;
        if (r->n_ops && r->ops[0].kind == OP_ENQ)
            id = r->ops[0].id;
        else if (r->n_ops && r->ops[0].kind == OP_SUB_CREATE)
            id = r->rc ? 0 : r->ops[0].sub_id;
        r->cb(r->ud, r->rc, id, r->rc ? r->errmsg : "");
    }
    if (r->tcb)
        txn_complete(r);
    if (r->page)
        mqs__page_complete(r);
    mqs__req_free(r);
}

static void cfd_signal(mqs_store *s)
{
    uint64_t one = 1;
    /* EAGAIN only at a counter near 2^64: readable anyway. */
    if (write(s->cfd, &one, sizeof one) < 0 && errno != EAGAIN)
        mqs__log(s, MQS_LOG_ERROR, "completion descriptor: write failed: %s",
                 strerror(errno));
}

static void complete(mqs_store *s, mqs_request **reqs, size_t n)
{
    /* Async callbacks run outside the lock, in submission order; their
     * requests are freed here, so the slots are cleared for the loop below.
     * With caller-run completions they are queued instead (below). cfd_on
     * is read under mu: it is set under mu by mqs_completion_fd. */
    pthread_mutex_lock(&s->mu);
    bool defer = s->cfd_on;
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < n && !defer; i++) {
        if (reqs[i]->async) {
            run_completion(reqs[i]);
            reqs[i] = NULL;
        }
    }
    bool queued = false;
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < n; i++) {
        mqs_request *r = reqs[i];
        if (r && r->async) {
            r->next = NULL;
            if (s->done_tail)
                s->done_tail->next = r;
            else
                s->done_head = r;
            s->done_tail = r;
            reqs[i] = NULL; /* the event loop's from here on */
            queued = true;
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (queued)
        cfd_signal(s);
    /* What is left is synchronous. Each is woken by its own semaphore,
     * after mu is released: woken under mu (a condition variable on mu, as
     * before), N callers of one batch each blocked on mu at once and
     * passed it on one by one, a wake-up each, the writer lingering
     * meanwhile for them (16 synchronous producers: +27% msg/s, see
     * docs/architecture.md "Waking"). A request belongs to its waiting
     * caller, which frees it as soon as sem_wait returns: touch nothing
     * after the post (glibc's sem_post may be followed at once by
     * sem_destroy, POSIX's rule, kept since glibc 2.21). */
    for (size_t i = 0; i < n; i++)
        if (reqs[i])
            sem_post(&reqs[i]->done);
}

int mqs_completion_fd(mqs_store *s)
{
    if (!s)
        return mqs__err(NULL, MQS_EINVAL, "mqs_completion_fd: store is NULL");
    pthread_mutex_lock(&s->mu);
    if (!s->cfd_on) {
        int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            pthread_mutex_unlock(&s->mu);
            return mqs__err(s, MQS_EIO, "mqs_completion_fd: eventfd: %s",
                            strerror(e));
        }
        s->cfd = fd;
        s->cfd_on = true;
        /* Submitters waiting for room now get MQS_EBUSY instead. */
        pthread_cond_broadcast(&s->cv_space);
    }
    int fd = s->cfd;
    pthread_mutex_unlock(&s->mu);
    return fd;
}

int mqs_completions_run(mqs_store *s, size_t max)
{
    if (!s)
        return mqs__err(NULL, MQS_EINVAL,
                        "mqs_completions_run: store is NULL");
    pthread_mutex_lock(&s->mu);
    bool on = s->cfd_on;
    pthread_mutex_unlock(&s->mu);
    if (!on)
        return mqs__err(s, MQS_ESTATE, "mqs_completions_run: completions "
                        "run on the writer thread; call mqs_completion_fd() "
                        "first");
    /* Reset the counter first: a completion queued from here on makes the
     * descriptor readable again, so none is left without a wake-up. */
    uint64_t v;
    if (read(s->cfd, &v, sizeof v) < 0 && errno != EAGAIN)
        return mqs__err(s, MQS_EIO, "completion descriptor: read failed: %s",
                        strerror(errno));
    int ran = 0;
    for (;;) {
        if (max && (size_t)ran >= max)
            break;
        pthread_mutex_lock(&s->mu);
        mqs_request *r = s->done_head;
        if (r) {
            s->done_head = r->next;
            if (!s->done_head)
                s->done_tail = NULL;
        }
        pthread_mutex_unlock(&s->mu);
        if (!r)
            break;
        run_completion(r);
        if (ran < INT32_MAX)
            ran++;
    }
    pthread_mutex_lock(&s->mu);
    bool left = s->done_head != NULL;
    pthread_mutex_unlock(&s->mu);
    if (left)
        cfd_signal(s); /* stopped at max: come back */
    return ran;
}

static void *writer_main(void *arg)
{
    mqs_store *s = arg;
    /* commit=each: async writes still complete on this thread (the API
     * promises a library thread), but one per transaction. */
    size_t cap = s->uri.cfg.commit_each ? 1 : s->uri.cfg.batch_max;
    int64_t commit_us = 0;  /* average time of a batch, in us */
    pthread_mutex_lock(&s->mu);
    for (;;) {
        /* A caller running its own request has wconn (see
         * mqs__submit_wait): wait for it, also at stop, so wconn is never
         * closed under it. */
        while ((!s->q_head && !s->stop) || s->wbusy) {
            s->w_want = 1;
            pthread_cond_wait(&s->cv_work, &s->mu);
        }
        s->w_want = 0;
        if (!s->q_head && s->stop)
            break;
        size_t last_n = s->last_sync_n;
        /* Take what is queued now. A lone writer never waits: it pays one
         * commit of latency. But when the last batch had more requests
         * than are queued now, its writers are most likely on their way
         * back (woken, building the next message): wait for them a little,
         * at most a fraction of what a commit costs, as PostgreSQL's
         * commit_delay does. Without this, N synchronous producers split
         * into ever smaller batches. */
        if (!s->uri.cfg.commit_each && !s->stop && s->q_count < last_n &&
            commit_us > 0) {
            int64_t linger_us = commit_us / 2 < 2000 ? commit_us / 2 : 2000;
            struct timespec ts;
            mqs__deadline_us(&ts, linger_us);
            /* Signalled only by the request that completes the count (or
             * at stop), not by every one on its way. */
            s->w_want = last_n;
            while (!s->stop && s->q_count < last_n &&
                   pthread_cond_clockwait(&s->cv_work, &s->mu, CLOCK_MONOTONIC, &ts) == 0)
                ;
            s->w_want = 0;
            /* Callers do not run their own while the last batch had
             * more than one (last_sync_n > 1), so wconn is still free. */
        }
        /* A page read is taken alone: it runs after the batch before it
         * committed and before the batch after it begins, which is the
         * whole point of running it here (see mqs_page_async). Inside a
         * write transaction it would see writes that may still roll back,
         * or be read twice when a failed batch is retried one by one. */
        size_t n = 0, bytes = 0;
        while (s->q_head && n < cap && !(n > 0 && s->q_head->page) &&
               (n == 0 || bytes + s->q_head->bytes <= s->uri.cfg.batch_bytes)) {
            mqs_request *r = s->q_head;
            s->q_head = r->next;
            if (!s->q_head)
                s->q_tail = NULL;
            r->next = NULL;
            bytes += r->bytes;
            s->q_count--;
            s->q_bytes -= r->bytes;
            s->batch[n++] = r;
            if (r->page)
                break;
        }
        if (n == 0)
            continue;
        s->wbusy = true;
        pthread_cond_broadcast(&s->cv_space);
        pthread_mutex_unlock(&s->mu);
        size_t n_sync = 0; /* read now: complete() frees async requests */
        for (size_t i = 0; i < n; i++)
            n_sync += !s->batch[i]->async;
        if (s->batch[0]->page) {
            /* Not a commit: the linger budget and batch size stay the
             * writes'. */
            run_page(s, s->batch[0]);
        } else {
            int64_t t0 = mqs__mono_us();
            run_batch(s, &s->wconn, "writer", s->batch, n);
            /* moving average of the commit time: the linger budget */
            int64_t took = mqs__mono_us() - t0;
            commit_us = commit_us ? (commit_us * 7 + took) / 8 : took;
            /* Only synchronous writers come back for another turn. */
            last_n = n_sync;
        }
        /* A batch of synchronous requests only frees wconn before its
         * callers are woken: one that comes straight back may run its next
         * request itself. With async requests in it, only after their
         * completions ran (or were queued): a synchronous call returns
         * after the completions of what was committed before it, as when
         * every request went through this thread. */
        bool any_async = n_sync < n;
        pthread_mutex_lock(&s->mu);
        s->last_sync_n = last_n;
        if (!any_async)
            s->wbusy = false;
        pthread_mutex_unlock(&s->mu);
        complete(s, s->batch, n);
        pthread_mutex_lock(&s->mu);
        /* Only a claim still ours: without async requests, a caller may
         * hold wconn by now. */
        if (any_async)
            s->wbusy = false;
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

int mqs__writer_start(mqs_store *s)
{
    s->batch = malloc(s->uri.cfg.batch_max * sizeof *s->batch);
    if (!s->batch)
        return mqs__err(NULL, MQS_ENOMEM, "out of memory for the writer");
    if (pthread_create(&s->writer, NULL, writer_main, s) != 0)
        return mqs__err(NULL, MQS_ENOMEM, "cannot start the writer thread");
    s->writer_running = true;
    return 0;
}

void mqs__writer_stop(mqs_store *s)
{
    if (!s->writer_running)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->cv_work);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->writer, NULL);
    s->writer_running = false;
}

void mqs__completions_close(mqs_store *s)
{
    if (!s->cfd_on)
        return;
    /* The writer is gone: what it completed is still owed to callers. */
    while (mqs_completions_run(s, 0) > 0)
        ;
    close(s->cfd);
    s->cfd_on = false;
}

/* Queues r; true when the writer waits for it (see w_want): then call
 * wake_writer once mu is released. A writer that is not waiting looks at
 * the queue, under mu, before it waits again, so nothing is missed. */
static bool enqueue_locked(mqs_store *s, mqs_request *r)
{
    r->next = NULL;
    if (s->q_tail)
        s->q_tail->next = r;
    else
        s->q_head = r;
    s->q_tail = r;
    s->q_count++;
    s->q_bytes += r->bytes;
    return s->w_want && s->q_count >= s->w_want;
}

/* Wakes the writer for what enqueue_locked queued. Called after mu is
 * released: a writer woken while the submitter still holds mu would block
 * on mu at once and need a second wake-up when it is released (two futex
 * round trips per request instead of one, seen with `perf trace` on
 * mqbroker). The queue is checked under mu, so the wake-up is not lost. */
static void wake_writer(mqs_store *s)
{
    pthread_cond_signal(&s->cv_work);
}

static int refuse_newer(mqs_store *s)
{
    return mqs__err(s, MQS_ESCHEMA,
                    "%s has a schema newer than this library (version %d > "
                    "%d): it is open for reading only; upgrade mqstore to "
                    "write",
                    s->uri.masked, s->stats.schema_version,
                    (int)s->be->n_migrations);
}

/* Completion callbacks run on the writer thread: a synchronous call from
 * one would wait for the writer, which waits for the callback. */
static bool on_writer(mqs_store *s)
{
    return s->writer_running && pthread_equal(pthread_self(), s->writer);
}

static int refuse_on_writer(mqs_store *s)
{
    return mqs__err(s, MQS_ESTATE,
                    "a synchronous mqstore call was made from a completion "
                    "callback (the store's writer thread), where it would "
                    "wait for itself forever: use the _async variant there, "
                    "or hand the work to another thread");
}

/* Caller runs: a synchronous request may run on the calling thread, on the
 * writer's connection, instead of going through the writer thread. A lone
 * synchronous producer then pays no thread hand-off per commit (two
 * wake-ups: to the writer and back, about a tenth of a small commit's
 * latency on a local database). Only when that cannot change what group
 * commit does or the order of anything: nothing queued (so nothing
 * submitted before this request, by this thread or any other, commits
 * after it), wconn free (the writer is waiting for work, or between
 * batches), and the last batch held at most one synchronous request (a
 * store that is batching keeps batching: with several producers waiting,
 * the writer takes them together). Under mu. */
static bool caller_may_run(const mqs_store *s)
{
    return !s->q_head && !s->wbusy && s->last_sync_n <= 1;
}

int mqs__submit_wait(mqs_store *s, mqs_request *r)
{
    if (s->schema_newer)
        return refuse_newer(s);
    if (on_writer(s))
        return refuse_on_writer(s);
    if (s->uri.cfg.commit_each) {
        /* The baseline: this thread, its own connection, its own
         * transaction. run_batch closes and NULLs a broken connection; the
         * slot reopens it next time. */
        mqs_be_conn **slot;
        int rc = mqs__pool_get(s, false, &slot);
        if (rc)
            return rc;
        mqs_request *one[1] = {r};
        run_batch(s, slot, "reader", one, 1);
        mqs__pool_put(s, slot, false);
    } else {
        pthread_mutex_lock(&s->mu);
        if (s->stop) {
            pthread_mutex_unlock(&s->mu);
            return mqs__err(s, MQS_ECLOSED, "store is closing");
        }
        if (caller_may_run(s)) {
            s->wbusy = true;
            pthread_mutex_unlock(&s->mu);
            mqs_request *one[1] = {r};
            run_batch(s, &s->wconn, "writer", one, 1);
            pthread_mutex_lock(&s->mu);
            s->wbusy = false;
            s->last_sync_n = 1;
            /* The writer waits for wconn only when work was queued
             * meanwhile or the store is closing; waking it otherwise
             * costs a thread switch per commit. */
            if (s->q_head || s->stop)
                pthread_cond_broadcast(&s->cv_work);
            pthread_mutex_unlock(&s->mu);
        } else {
            bool wake = enqueue_locked(s, r);
            pthread_mutex_unlock(&s->mu);
            if (wake)
                wake_writer(s);
            /* EINTR only (a signal handler ran): the post is still owed */
            while (sem_wait(&r->done) != 0)
                ;
        }
    }
    if (r->rc)
        return mqs__err(s, r->rc, "%s", r->errmsg ? r->errmsg : "");
    return 0;
}

static int submit_async(mqs_store *s, mqs_request *r, bool keep_on_busy);

int mqs__submit_async(mqs_store *s, mqs_request *r)
{
    return submit_async(s, r, false);
}

int mqs__submit_async_keep(mqs_store *s, mqs_request *r)
{
    return submit_async(s, r, true);
}

static int submit_async(mqs_store *s, mqs_request *r, bool keep_on_busy)
{
    r->async = true;
    if (s->schema_newer && !r->page) { /* reads are fine there */
        mqs__req_free(r);
        return refuse_newer(s);
    }
    /* Back-pressure waits for the writer to drain the queue, so never on
     * the writer itself (a callback submitting more work), and never for
     * an event loop (caller-run completions): it gets MQS_EBUSY. */
    bool wait = !on_writer(s);
    pthread_mutex_lock(&s->mu);
    while (wait && !s->stop && s->q_bytes > 0 &&
           s->q_bytes + r->bytes > s->uri.cfg.max_pending_bytes) {
        if (s->cfd_on) {
            size_t q = s->q_bytes;
            pthread_mutex_unlock(&s->mu);
            size_t need = r->bytes;
            if (keep_on_busy)
                r->async = false;
            else
                mqs__req_free(r);
            return mqs__err(s, MQS_EBUSY,
                            "the write queue holds %zu bytes and this "
                            "request %zu more, over max_pending_bytes=%llu: "
                            "not queued; retry once the completion "
                            "descriptor fires again",
                            q, need,
                            (unsigned long long)s->uri.cfg.max_pending_bytes);
        }
        pthread_cond_wait(&s->cv_space, &s->mu);
    }
    if (s->stop) {
        pthread_mutex_unlock(&s->mu);
        mqs__req_free(r);
        return mqs__err(s, MQS_ECLOSED, "store is closing");
    }
    bool wake = enqueue_locked(s, r);
    pthread_mutex_unlock(&s->mu);
    if (wake)
        wake_writer(s);
    return 0;
}
