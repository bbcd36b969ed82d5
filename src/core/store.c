/* store.c - the public API: open/close, writes, transactions,
 * subscriptions, admin and stats. Writes become requests for writer.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "be_call.h"
#include "internal.h"

/* ------------------------------------------------------------------------
 * Open / close
 * ---------------------------------------------------------------------- */

static int schema_check(mqs_store *s, bool migrate)
{
    int v = 0, lib = (int)s->be->n_migrations;
    int rc = mqs__bc_schema_version(MQS_BCX(s), s->wconn, &v);
    if (rc)
        return mqs__err(NULL, rc, "cannot read the schema version of %s: %s",
                        s->uri.masked,
                        mqs__bc_conn_errmsg(MQS_BCX(s), s->wconn));
    s->stats.schema_version = v;
    if (v > lib && !migrate) {
        /* Tools may still look (status, stats); writes are refused. */
        s->schema_newer = true;
        return 0;
    }
    if (v > lib)
        return mqs__err(NULL, MQS_ESCHEMA,
                        "%s has schema version %d, newer than version %d "
                        "that this library (mqstore %d.%d.%d) knows: upgrade "
                        "mqstore on this node; nothing was changed",
                        s->uri.masked, v, lib, MQS_VERSION_MAJOR,
                        MQS_VERSION_MINOR, MQS_VERSION_PATCH);
    if (!migrate || v == lib)
        return 0;
    if (!s->uri.cfg.migrate_auto)
        return mqs__err(NULL, MQS_ESCHEMA,
                        "%s has schema version %d, this library needs %d: "
                        "run `mqstore migrate URI` (or open with "
                        "migrate=auto)",
                        s->uri.masked, v, lib);
    for (int i = v; i < lib; i++) {
        const mqs_be_migration *m = &s->be->migrations[i];
        mqs__log(s, MQS_LOG_INFO, "applying %s (schema %d -> %d) to %s",
                 m->name, i, m->version, s->uri.masked);
        rc = mqs__bc_schema_apply(MQS_BCX(s), s->wconn, m);
        if (rc)
            return mqs__err(NULL, rc,
                            "migration %s (schema %d -> %d) failed on %s: "
                            "%s; the database stays at version %d",
                            m->name, i, m->version, s->uri.masked,
                            mqs__bc_conn_errmsg(MQS_BCX(s), s->wconn), i);
        s->stats.schema_version = m->version;
    }
    return 0;
}

static int open_impl(const char *uri, const mqs_open_opts *opts, bool migrate,
                     mqs_store **out)
{
    if (!out)
        return mqs__err(NULL, MQS_EINVAL, "mqs_open: out is NULL");
    *out = NULL;
    if (!uri || !*uri)
        return mqs__err(NULL, MQS_EINVAL, "mqs_open: the store URI is empty");
    char scheme[64];
    if (mqs__uri_scheme(uri, scheme, sizeof scheme)) {
        char masked[512];
        mqs_uri_mask(uri, masked, sizeof masked);
        return mqs__err(NULL, MQS_EINVAL,
                        "store URI '%s' has no scheme: expected "
                        "sqlite:///path/store.db, sqlite:relative.db, "
                        "postgresql://... or mysql://...",
                        masked);
    }
    const mqs_backend *be;
    int rc = mqs__load_backend(scheme, &be);
    if (rc)
        return rc;

    mqs_store *s = calloc(1, sizeof *s);
    if (!s)
        return mqs__err(NULL, MQS_ENOMEM, "out of memory opening a store");
    s->be = be;
    if (opts)
        s->opts = *opts;
    else
        s->opts.log_level = MQS_LOG_WARN;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv_work, NULL);
    pthread_cond_init(&s->cv_space, NULL);
    pthread_mutex_init(&s->cache_mu, NULL);
    pthread_mutex_init(&s->stats_mu, NULL);
    pthread_mutex_init(&s->pool.mu, NULL);
    pthread_cond_init(&s->pool.cv, NULL);
    pthread_mutex_init(&s->ha_mu, NULL);
    /* The keeper's and the writer's timed waits use
     * pthread_cond_clockwait(CLOCK_MONOTONIC): a wall-clock change must not
     * stretch or shrink a lease (nor does a wall-clock faker reach it). */
    pthread_cond_init(&s->ha_cv, NULL);

    if ((rc = mqs__uri_parse(uri, be, &s->uri)))
        goto fail;
    s->pool.n = s->uri.cfg.pool_size;
    s->pool.conns = calloc(s->pool.n, sizeof *s->pool.conns);
    s->pool.busy = calloc(s->pool.n, sizeof *s->pool.busy);
    if (!s->pool.conns || !s->pool.busy) {
        rc = mqs__err(NULL, MQS_ENOMEM, "out of memory opening a store");
        goto fail;
    }
    if ((rc = mqs__conn_open(s, "writer", &s->wconn))) {
        rc = mqs__err(NULL, rc, "%s", mqs_errmsg(s));
        goto fail;
    }
    if ((rc = schema_check(s, migrate)))
        goto fail;

    s->max_message = s->uri.cfg.max_message_size;
    size_t be_max = 0;
    if (mqs__bc_conn_max_message(MQS_BCX(s), s->wconn, &be_max) == 0 &&
        be_max && be_max < s->max_message)
        s->max_message = be_max;

    if ((rc = mqs__writer_start(s)))
        goto fail;
    mqs__log(s, MQS_LOG_INFO, "opened %s (backend %s %s, schema %d, commit=%s)",
             s->uri.masked, be->name, be->version ? be->version : "",
             s->stats.schema_version,
             s->uri.cfg.commit_each ? "each" : "group");
    *out = s;
    return 0;
fail:
    mqs_close(s);
    return rc;
}

int mqs_open(const char *uri, const mqs_open_opts *opts, mqs_store **out)
{
    return open_impl(uri, opts, true, out);
}

int mqs_open_nomigrate(const char *uri, const mqs_open_opts *opts,
                       mqs_store **out)
{
    return open_impl(uri, opts, false, out);
}

void mqs_close(mqs_store *s)
{
    if (!s)
        return;
    mqs__writer_stop(s); /* drains the queue first */
    mqs__completions_close(s);
    mqs__lock_shutdown(s); /* then hands the lock over, if held */
    if (s->wconn)
        mqs__bc_conn_close(MQS_BCX(s), s->wconn);
    for (size_t i = 0; i < s->pool.n; i++)
        if (s->pool.conns[i])
            mqs__bc_conn_close(MQS_BCX(s), s->pool.conns[i]);
    free(s->pool.conns);
    free(s->pool.busy);
    free(s->batch);
    mqs__cache_free(s);
    mqs__uri_free(&s->uri);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv_work);
    pthread_cond_destroy(&s->cv_space);
    pthread_mutex_destroy(&s->cache_mu);
    pthread_mutex_destroy(&s->stats_mu);
    pthread_mutex_destroy(&s->pool.mu);
    pthread_cond_destroy(&s->pool.cv);
    pthread_mutex_destroy(&s->ha_mu);
    pthread_cond_destroy(&s->ha_cv);
    free(s);
}

const char *mqs_uri(const mqs_store *s) { return s ? s->uri.masked : ""; }

size_t mqs_max_message_size(const mqs_store *s)
{
    return s ? s->max_message : 0;
}

size_t mqs_max_pending_bytes(const mqs_store *s)
{
    return s ? (size_t)s->uri.cfg.max_pending_bytes : 0;
}

/* ------------------------------------------------------------------------
 * Writes
 * ---------------------------------------------------------------------- */

#define CHECK_STORE(s)                                                         \
    do {                                                                       \
        if (!(s))                                                              \
            return mqs__err(NULL, MQS_EINVAL, "%s: store is NULL", __func__);  \
    } while (0)

static int oom(mqs_store *s)
{
    return mqs__err(s, MQS_ENOMEM, "out of memory");
}

int mqs_enqueue(mqs_store *s, const mqs_msg *m, int64_t *id)
{
    return mqs_enqueue_many(s, m, 1, id);
}

int mqs_enqueue_many(mqs_store *s, const mqs_msg *msgs, size_t n, int64_t *ids)
{
    CHECK_STORE(s);
    if (n == 0)
        return 0;
    if (!msgs)
        return mqs__err(s, MQS_EINVAL, "mqs_enqueue_many: msgs is NULL");
    mqs_request *r = mqs__req_new();
    if (!r)
        return oom(s);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = mqs__req_add_msg(s, r, &msgs[i]);
    if (rc == 0)
        rc = mqs__submit_wait(s, r);
    if (ids)
        for (size_t i = 0; i < n; i++)
            ids[i] = rc == 0 ? r->ops[i].id : 0;
    mqs__req_free(r);
    return rc;
}

int mqs_enqueue_async(mqs_store *s, const mqs_msg *m, mqs_done_fn done,
                      void *ud)
{
    CHECK_STORE(s);
    mqs_request *r = mqs__req_new();
    if (!r)
        return oom(s);
    int rc = mqs__req_add_msg(s, r, m);
    if (rc) {
        mqs__req_free(r);
        return rc;
    }
    r->cb = done;
    r->ud = ud;
    return mqs__submit_async(s, r);
}

static int add_refs(mqs_store *s, mqs_request *r, op_kind kind,
                    const int64_t *ids, const int64_t *subs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (ids[i] <= 0 || (subs && subs[i] < 0))
            return mqs__err(s, MQS_EINVAL,
                            "message id %lld / subscription %lld: ids are "
                            "positive (subscription 0 means a queue)",
                            (long long)ids[i], (long long)(subs ? subs[i] : 0));
        mqs_op *op = mqs__req_add(r, kind);
        if (!op)
            return oom(s);
        op->id = ids[i];
        op->sub_id = subs ? subs[i] : 0;
    }
    return 0;
}

static int refs_sync(mqs_store *s, op_kind kind, const int64_t *ids,
                     const int64_t *subs, size_t n)
{
    CHECK_STORE(s);
    if (n == 0)
        return 0;
    if (!ids)
        return mqs__err(s, MQS_EINVAL, "message ids are NULL");
    mqs_request *r = mqs__req_new();
    if (!r)
        return oom(s);
    int rc = add_refs(s, r, kind, ids, subs, n);
    if (rc == 0)
        rc = mqs__submit_wait(s, r);
    mqs__req_free(r);
    return rc;
}

int mqs_ack(mqs_store *s, int64_t id, int64_t sub_id)
{
    return refs_sync(s, OP_ACK, &id, &sub_id, 1);
}

int mqs_ack_many(mqs_store *s, const int64_t *ids, const int64_t *sub_ids,
                 size_t n)
{
    return refs_sync(s, OP_ACK, ids, sub_ids, n);
}

int mqs_nack(mqs_store *s, int64_t id, int64_t sub_id)
{
    return refs_sync(s, OP_NACK, &id, &sub_id, 1);
}

static int ref_async(mqs_store *s, op_kind kind, int64_t id, int64_t sub_id,
                     mqs_done_fn done, void *ud)
{
    CHECK_STORE(s);
    mqs_request *r = mqs__req_new();
    if (!r)
        return oom(s);
    int rc = add_refs(s, r, kind, &id, &sub_id, 1);
    if (rc) {
        mqs__req_free(r);
        return rc;
    }
    r->cb = done;
    r->ud = ud;
    return mqs__submit_async(s, r);
}

int mqs_ack_async(mqs_store *s, int64_t id, int64_t sub_id, mqs_done_fn done,
                  void *ud)
{
    return ref_async(s, OP_ACK, id, sub_id, done, ud);
}

int mqs_nack_async(mqs_store *s, int64_t id, int64_t sub_id, mqs_done_fn done,
                   void *ud)
{
    return ref_async(s, OP_NACK, id, sub_id, done, ud);
}

/* ------------------------------------------------------------------------
 * Producer marks
 * ---------------------------------------------------------------------- */

static int run_op(mqs_store *s, const mqs_op *tmpl, const char *dest,
                  const char *name, mqs_op *res);

static int marks_supported(mqs_store *s)
{
    if (mqs__bc_has_marks(s->be))
        return 0;
    return mqs__err(s, MQS_ENOTSUP, "the %s backend keeps no producer marks",
                    s->be->name);
}

int mqs_mark_async(mqs_store *s, const char *producer, int64_t seq,
                   mqs_done_fn done, void *ud)
{
    CHECK_STORE(s);
    int rc;
    if ((rc = marks_supported(s)))
        return rc;
    size_t n = producer ? strlen(producer) : 0;
    if (n == 0 || n > 128 || seq < 1)
        return mqs__err(s, MQS_EINVAL, "mqs_mark_async: producer must be 1 "
                        "to 128 bytes and seq >= 1 (got %zu bytes, seq %lld)",
                        n, (long long)seq);
    mqs_request *r = mqs__req_new();
    mqs_op *op = r ? mqs__req_add(r, OP_MARK) : NULL;
    if (!op || !(op->name = mqs__strdup(producer))) {
        mqs__req_free(r);
        return oom(s);
    }
    op->id = seq;
    r->cb = done;
    r->ud = ud;
    return mqs__submit_async(s, r);
}

typedef struct mark_ctx {
    mqs_mark_fn fn;
    void *ud;
    int stopped;
} mark_ctx;

static int mark_adapter(void *ud, const char *producer, int64_t seq)
{
    mark_ctx *x = ud;
    if (x->fn(x->ud, producer, seq)) {
        x->stopped = 1;
        return 1;
    }
    return 0;
}

static int do_mark_list(mqs_store *s, mqs_be_conn *c, void *arg)
{
    int rc = mqs__bc_mark_list(MQS_BCX(s), c, mark_adapter, arg);
    return ((mark_ctx *)arg)->stopped ? 0 : rc;
}

int mqs_mark_foreach(mqs_store *s, mqs_mark_fn fn, void *ud)
{
    CHECK_STORE(s);
    int rc;
    if ((rc = marks_supported(s)))
        return rc;
    if (!fn)
        return mqs__err(s, MQS_EINVAL, "mqs_mark_foreach: fn is NULL");
    mark_ctx x = {fn, ud, 0};
    return mqs__with_reader(s, do_mark_list, &x);
}

int mqs_mark_prune(mqs_store *s, int64_t older_than_ms, uint64_t *removed)
{
    CHECK_STORE(s);
    int rc;
    if (removed)
        *removed = 0;
    if ((rc = marks_supported(s)))
        return rc;
    mqs_op op = {.kind = OP_MARK_PRUNE, .id = older_than_ms}, res = {0};
    rc = run_op(s, &op, NULL, NULL, &res);
    if (removed && rc == 0)
        *removed = res.count;
    return rc;
}

/* ------------------------------------------------------------------------
 * Transactions: a request built up in memory and submitted at commit.
 * ---------------------------------------------------------------------- */

struct mqs_txn {
    mqs_store *s;
    mqs_request *r;
};

int mqs_txn_begin(mqs_store *s, mqs_txn **out)
{
    if (!out)
        return mqs__err(s, MQS_EINVAL, "mqs_txn_begin: out is NULL");
    *out = NULL;
    CHECK_STORE(s);
    mqs_txn *t = calloc(1, sizeof *t);
    if (!t || !(t->r = mqs__req_new())) {
        free(t);
        return oom(s);
    }
    t->s = s;
    *out = t;
    return 0;
}

int mqs_txn_enqueue(mqs_txn *t, const mqs_msg *m)
{
    if (!t)
        return mqs__err(NULL, MQS_EINVAL, "mqs_txn_enqueue: txn is NULL");
    return mqs__req_add_msg(t->s, t->r, m);
}

int mqs_txn_ack(mqs_txn *t, int64_t id, int64_t sub_id)
{
    if (!t)
        return mqs__err(NULL, MQS_EINVAL, "mqs_txn_ack: txn is NULL");
    return add_refs(t->s, t->r, OP_ACK, &id, &sub_id, 1);
}

int mqs_txn_commit(mqs_txn *t, int64_t *ids)
{
    if (!t)
        return mqs__err(NULL, MQS_EINVAL, "mqs_txn_commit: txn is NULL");
    int rc = t->r->n_ops ? mqs__submit_wait(t->s, t->r) : 0;
    if (ids) {
        size_t k = 0;
        for (size_t i = 0; i < t->r->n_ops; i++)
            if (t->r->ops[i].kind == OP_ENQ)
                ids[k++] = rc == 0 ? t->r->ops[i].id : 0;
    }
    mqs__req_free(t->r);
    free(t);
    return rc;
}

int mqs_txn_commit_async(mqs_txn *t, mqs_txn_done_fn done, void *ud)
{
    if (!t)
        return mqs__err(NULL, MQS_EINVAL, "mqs_txn_commit_async: txn is NULL");
    mqs_store *s = t->s;
    mqs_request *r = t->r;
    r->tcb = done;
    r->ud = ud;
    /* MQS_EBUSY (caller-run completions, queue full) leaves t with the
     * caller, whole: it may retry the commit later or roll back. */
    int rc = mqs__submit_async_keep(s, r);
    if (rc == MQS_EBUSY) {
        r->tcb = NULL;
        r->ud = NULL;
        return rc;
    }
    free(t);
    return rc;
}

void mqs_txn_rollback(mqs_txn *t)
{
    if (!t)
        return;
    mqs__req_free(t->r);
    free(t);
}

size_t mqs_txn_size(const mqs_txn *t) { return t ? t->r->n_ops : 0; }

/* ------------------------------------------------------------------------
 * Subscriptions
 * ---------------------------------------------------------------------- */

static int check_name(mqs_store *s, const char *what, const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 255)
        return mqs__err(s, MQS_EINVAL, "%s name must be 1 to 255 bytes "
                        "(got %zu)", what, n);
    return 0;
}

/* A request of one op like tmpl, with dest and name copied (either may be
 * NULL: the caller's strings stay const); NULL when out of memory. */
static mqs_request *op_request(const mqs_op *tmpl, const char *dest,
                               const char *name)
{
    mqs_request *r = mqs__req_new();
    mqs_op *op = r ? mqs__req_add(r, tmpl->kind) : NULL;
    if (!op) {
        mqs__req_free(r);
        return NULL;
    }
    *op = *tmpl;
    op->dest = mqs__strdup(dest);
    op->name = mqs__strdup(name);
    if ((dest && !op->dest) || (name && !op->name)) {
        mqs__req_free(r);
        return NULL;
    }
    return r;
}

/* One-op request, run and freed; returns the op's result via *res. */
static int run_op(mqs_store *s, const mqs_op *tmpl, const char *dest,
                  const char *name, mqs_op *res)
{
    mqs_request *r = op_request(tmpl, dest, name);
    if (!r)
        return oom(s);
    mqs_op *op = &r->ops[0];
    int rc = mqs__submit_wait(s, r);
    if (res) {
        res->sub_id = op->sub_id;
        res->count = op->count;
    }
    mqs__req_free(r);
    return rc;
}

int mqs_sub_create(mqs_store *s, const char *topic, const char *name,
                   int64_t *sub_id)
{
    CHECK_STORE(s);
    int rc;
    if ((rc = check_name(s, "topic", topic)) ||
        (rc = check_name(s, "subscription", name)))
        return rc;
    mqs_op op = {.kind = OP_SUB_CREATE}, res = {0};
    rc = run_op(s, &op, topic, name, &res);
    if (sub_id)
        *sub_id = rc == 0 ? res.sub_id : 0;
    return rc;
}

int mqs_sub_remove(mqs_store *s, int64_t sub_id)
{
    CHECK_STORE(s);
    if (sub_id <= 0)
        return mqs__err(s, MQS_EINVAL, "subscription id %lld is not valid",
                        (long long)sub_id);
    mqs_op op = {.kind = OP_SUB_REMOVE, .sub_id = sub_id};
    return run_op(s, &op, NULL, NULL, NULL);
}

/* An async request of one op (names copied); done gets its outcome. */
static int submit_op_async(mqs_store *s, const mqs_op *tmpl,
                           const char *dest, const char *name,
                           mqs_done_fn done, void *ud)
{
    mqs_request *r = op_request(tmpl, dest, name);
    if (!r)
        return oom(s);
    r->cb = done;
    r->ud = ud;
    return mqs__submit_async(s, r);
}

int mqs_sub_create_async(mqs_store *s, const char *topic, const char *name,
                         mqs_done_fn done, void *ud)
{
    CHECK_STORE(s);
    int rc;
    if ((rc = check_name(s, "topic", topic)) ||
        (rc = check_name(s, "subscription", name)))
        return rc;
    mqs_op op = {.kind = OP_SUB_CREATE};
    return submit_op_async(s, &op, topic, name, done, ud);
}

int mqs_sub_remove_async(mqs_store *s, int64_t sub_id, mqs_done_fn done,
                         void *ud)
{
    CHECK_STORE(s);
    if (sub_id <= 0)
        return mqs__err(s, MQS_EINVAL, "subscription id %lld is not valid",
                        (long long)sub_id);
    mqs_op op = {.kind = OP_SUB_REMOVE, .sub_id = sub_id};
    return submit_op_async(s, &op, NULL, NULL, done, ud);
}

int mqs_purge(mqs_store *s, mqs_kind kind, const char *dest,
              uint64_t *removed)
{
    CHECK_STORE(s);
    int rc;
    if (dest && (rc = check_name(s, "destination", dest)))
        return rc;
    mqs_op op = {.kind = OP_PURGE, .dkind = kind}, res = {0};
    rc = run_op(s, &op, dest, NULL, &res);
    if (removed)
        *removed = rc == 0 ? res.count : 0;
    if (rc == 0)
        mqs__log(s, MQS_LOG_INFO, "purged %llu messages from %s",
                 (unsigned long long)res.count, dest ? dest : "every "
                 "destination");
    return rc;
}

/* ------------------------------------------------------------------------
 * Reads on a pooled connection
 * ---------------------------------------------------------------------- */

int mqs__with_reader(mqs_store *s, mqs_reader_fn fn, void *arg)
{
    int rc = 0;
    /* A pooled connection may have died while idle (database restart):
     * MQS_ECONN means nothing happened, so one retry on a fresh connection
     * is safe. */
    for (int attempt = 0; attempt < 2; attempt++) {
        mqs_be_conn **slot;
        rc = mqs__pool_get(s, true, &slot);
        if (rc)
            return rc;
        rc = fn(s, *slot, arg);
        if (rc)
            mqs__err(s, rc, "%s", mqs__bc_conn_errmsg(MQS_BCX(s), *slot));
        /* A connection the backend calls broken is dropped, and reopened
         * by the next borrower. */
        mqs__pool_put(s, slot, rc == MQS_ECONN || rc == MQS_EUNKNOWN);
        if (rc != MQS_ECONN)
            break;
    }
    return rc;
}

typedef struct lookup_arg {
    const char *topic, *name;
    int64_t id;
} lookup_arg;

static int do_lookup(mqs_store *s, mqs_be_conn *c, void *arg)
{
    lookup_arg *a = arg;
    return mqs__bc_sub_lookup(MQS_BCX(s), c, a->topic, a->name, &a->id);
}

int mqs_sub_lookup(mqs_store *s, const char *topic, const char *name,
                   int64_t *sub_id)
{
    CHECK_STORE(s);
    int rc;
    if ((rc = check_name(s, "topic", topic)) ||
        (rc = check_name(s, "subscription", name)))
        return rc;
    lookup_arg a = {topic, name, 0};
    rc = mqs__with_reader(s, do_lookup, &a);
    if (rc == MQS_ENOTFOUND)
        mqs__err(s, rc, "no durable subscription '%s' on topic '%s'", name,
                 topic);
    if (sub_id)
        *sub_id = rc == 0 ? a.id : 0;
    return rc;
}

typedef struct recent_ctx {
    mqs_headers_fn fn;
    void *ud;
    size_t limit, n; /* rows wanted, rows handed to fn */
    int64_t last_id; /* the last one handed to fn */
    int stopped;
} recent_ctx;

static int recent_adapter(void *ud, int64_t id, const void *h, size_t hlen)
{
    recent_ctx *x = ud;
    /* mqs__with_reader reads again after a lost connection: what fn has
     * seen already is not handed to it twice. */
    if (x->n && id >= x->last_id)
        return 0;
    x->n++;
    x->last_id = id;
    if (x->fn(x->ud, id, h, hlen) || x->n >= x->limit) {
        x->stopped = 1;
        return 1;
    }
    return 0;
}

static int do_recent(mqs_store *s, mqs_be_conn *c, void *arg)
{
    recent_ctx *x = arg;
    if (x->stopped)
        return 0;
    return mqs__bc_msg_recent(MQS_BCX(s), c, x->limit, recent_adapter, x);
}

int mqs_recent_headers(mqs_store *s, size_t max_rows, mqs_headers_fn fn,
                       void *ud)
{
    CHECK_STORE(s);
    if (!fn)
        return mqs__err(s, MQS_EINVAL, "mqs_recent_headers: fn is NULL");
    if (!mqs__bc_has_msg_recent(s->be))
        return mqs__err(s, MQS_ENOTSUP, "mqs_recent_headers: the %s backend "
                        "module (ABI %u.%u) cannot list the newest messages; "
                        "that needs ABI 2.3: install the module that came "
                        "with this libmqstore", s->be->name,
                        (unsigned)s->be->abi_major,
                        (unsigned)s->be->abi_minor);
    if (max_rows == 0)
        return 0;
    recent_ctx x = {fn, ud, max_rows, 0, 0, 0};
    return mqs__with_reader(s, do_recent, &x);
}

int mqs_stats_get(mqs_store *s, mqs_stats *out)
{
    CHECK_STORE(s);
    if (!out)
        return mqs__err(s, MQS_EINVAL, "mqs_stats_get: out is NULL");
    pthread_mutex_lock(&s->stats_mu);
    *out = s->stats;
    pthread_mutex_unlock(&s->stats_mu);
    pthread_mutex_lock(&s->mu);
    out->queued = s->q_count;
    out->queued_bytes = s->q_bytes;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

typedef struct dest_ctx {
    mqs_dest_fn fn;
    void *ud;
} dest_ctx;

static int dest_adapter(void *ud, const mqs_be_dest *d);

static int do_dest_list(mqs_store *s, mqs_be_conn *c, void *arg)
{
    return mqs__bc_dest_list(MQS_BCX(s), c, dest_adapter, arg);
}

static int do_schema_version(mqs_store *s, mqs_be_conn *c, void *arg)
{
    return mqs__bc_schema_version(MQS_BCX(s), c, arg);
}

/* arg: a const mqs_be_migration ** (the migration table is const). */
static int do_schema_apply(mqs_store *s, mqs_be_conn *c, void *arg)
{
    const mqs_be_migration *const *m = arg;
    return mqs__bc_schema_apply(MQS_BCX(s), c, *m);
}

static int dest_adapter(void *ud, const mqs_be_dest *d)
{
    dest_ctx *x = ud;
    mqs_dest_info i = {d->kind, d->name, d->sub_id, d->sub_name, d->pending,
                       d->oldest_ms};
    return x->fn(x->ud, &i);
}

int mqs_dest_foreach(mqs_store *s, mqs_dest_fn fn, void *ud)
{
    CHECK_STORE(s);
    if (!fn)
        return mqs__err(s, MQS_EINVAL, "mqs_dest_foreach: fn is NULL");
    dest_ctx x = {fn, ud};
    return mqs__with_reader(s, do_dest_list, &x);
}

static int names_adapter(void *ud, const mqs_be_dest *d)
{
    dest_ctx *x = ud;
    mqs_dest_info i = {d->kind, d->name, d->sub_id, d->sub_name,
                       MQS_PENDING_UNKNOWN, 0};
    return x->fn(x->ud, &i);
}

static int do_dest_names(mqs_store *s, mqs_be_conn *c, void *arg)
{
    return mqs__bc_dest_names(MQS_BCX(s), c, names_adapter, arg);
}

int mqs_dest_names(mqs_store *s, mqs_dest_fn fn, void *ud)
{
    CHECK_STORE(s);
    if (!fn)
        return mqs__err(s, MQS_EINVAL, "mqs_dest_names: fn is NULL");
    dest_ctx x = {fn, ud};
    return mqs__with_reader(s, do_dest_names, &x);
}

typedef struct vacuum_ctx {
    char *what;
    size_t len;
} vacuum_ctx;

static int do_vacuum(mqs_store *s, mqs_be_conn *c, void *arg)
{
    vacuum_ctx *v = arg;
    return mqs__bc_vacuum(MQS_BCX(s), c, v->what, v->len);
}

int mqs_vacuum(mqs_store *s, char *what, size_t what_len)
{
    CHECK_STORE(s);
    char buf[256] = "";
    vacuum_ctx v = {what && what_len ? what : buf,
                    what && what_len ? what_len : sizeof buf};
    v.what[0] = '\0';
    if (!mqs__bc_has_vacuum(s->be)) /* says so in v.what; no connection */
        return mqs__bc_vacuum(MQS_BCX(s), NULL, v.what, v.len);
    if (s->schema_newer)
        return mqs__err(s, MQS_ESCHEMA, "the schema is newer than this "
                        "library: not vacuuming");
    int64_t t0 = mqs__mono_ms();
    int rc = mqs__with_reader(s, do_vacuum, &v);
    if (rc == 0)
        mqs__log(s, MQS_LOG_INFO, "%s in %lld ms", v.what,
                 (long long)(mqs__mono_ms() - t0));
    return rc;
}

int mqs_schema_version(mqs_store *s, int *db_version, int *lib_version)
{
    CHECK_STORE(s);
    int v = 0;
    int rc = mqs__with_reader(s, do_schema_version, &v);
    if (db_version)
        *db_version = v;
    if (lib_version)
        *lib_version = (int)s->be->n_migrations;
    return rc;
}

int mqs_migrate(mqs_store *s, mqs_migrate_fn progress, void *ud)
{
    CHECK_STORE(s);
    int v = 0, lib = (int)s->be->n_migrations;
    int rc = mqs_schema_version(s, &v, NULL);
    if (rc)
        return rc;
    if (v > lib)
        return mqs__err(s, MQS_ESCHEMA,
                        "%s has schema version %d, newer than version %d "
                        "that this library knows: upgrade mqstore; nothing "
                        "was changed",
                        s->uri.masked, v, lib);
    for (int i = v; i < lib && rc == 0; i++) {
        const mqs_be_migration *m = &s->be->migrations[i];
        if (progress)
            progress(ud, i, m->version, m->name);
        rc = mqs__with_reader(s, do_schema_apply, &m);
        if (rc)
            return mqs__err(s, rc,
                            "migration %s (schema %d -> %d) failed: %s; the "
                            "database stays at version %d",
                            m->name, i, m->version, mqs_errmsg(s), i);
        pthread_mutex_lock(&s->stats_mu);
        s->stats.schema_version = m->version;
        pthread_mutex_unlock(&s->stats_mu);
    }
    return rc;
}
