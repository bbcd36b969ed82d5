/* send.c - SEND (sync with a receipt, async with a completion), the
 * pending-operation list that makes replay after a failover possible, and
 * transactions. */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Without trackMessages the async window is counted in frames. */
enum { ASYNC_MAX_FRAMES = 1000 };

mqc_op *mqc__op_new(mqc_conn *c, op_kind k)
{
    mqc_op *op = xcalloc(1, sizeof *op);
    q_init(&op->link);
    op->kind = k;
    op->receipt = c->next_receipt++;
    op->created = mono_ms();
    return op;
}

void mqc__op_free(mqc_op *op)
{
    if (!op)
        return;
    buf_free(&op->frame);
    free(op->errmsg);
    free(op);
}

static void op_write(mqc_conn *c, mqc_op *op)
{
    mqc__write(c, buf_data(&op->frame), buf_used(&op->frame));
    op->written_gen = c->gen;
    if (op->kind == OP_SEND)
        c->stats.sent++;
}

void mqc__op_submit(mqc_conn *c, mqc_op *op)
{
    q_push_back(&c->ops, &op->link);
    idmap_put(&c->op_by_receipt, op->receipt, op);
    if (op->async) {
        c->async_ops++;
        c->async_bytes += buf_used(&op->frame);
        c->async_cb_pending++;
    }
    if (c->state == C_CONNECTED && c->primary.st == L_READY)
        op_write(c, op);
}

void mqc__op_complete(mqc_conn *c, mqc_op *op, int status, const char *msg)
{
    q_remove(&op->link);
    idmap_del(&c->op_by_receipt, op->receipt);
    op->done = true;
    op->status = status;
    if (msg)
        op->errmsg = xstrdup(msg);
    if (!op->async) {
        pthread_cond_broadcast(&c->cv);
        return;
    }
    c->async_ops--;
    c->async_bytes -= buf_used(&op->frame);
    if (status && !op->cb)
        mqc__exception(c, status, "async send failed: %s",
                       msg ? msg : mqc_strerror(status));
    mqc_ev *e = mqc__ev_new(EV_SEND_DONE);
    e->cb = op->cb;
    e->ud = op->ud;
    e->code = status;
    e->text = msg ? xstrdup(msg) : NULL;
    mqc__emit(c, e);
    mqc__op_free(op);
    pthread_cond_broadcast(&c->cv);
}

void mqc__on_receipt(mqc_conn *c, const char *id, int status, const char *msg)
{
    char *end;
    unsigned long long r = strtoull(id, &end, 10);
    if (*end || !r)
        return; /* not one of ours */
    mqc_op *op = idmap_get(&c->op_by_receipt, (uint64_t)r);
    if (op)
        mqc__op_complete(c, op, status, msg);
}

int mqc__op_wait(mqc_conn *c, mqc_op *op, const char *what)
{
    int64_t disc_since = -1;
    for (;;) {
        if (op->done) {
            int st = op->status;
            if (st)
                mqc__err(c, st, "%s: %s", what,
                         op->errmsg ? op->errmsg : mqc_strerror(st));
            else
                mqc__err_clear(c);
            mqc__op_free(op);
            return st;
        }
        if (c->state == C_CONNECTED || c->cfg.timeout_ms < 0 || c->closing) {
            disc_since = -1;
            mqc__cv_wait(c, &c->cv, -1);
            continue;
        }
        if (disc_since < 0)
            disc_since = mono_ms();
        if (mqc__cv_wait(c, &c->cv, disc_since + c->cfg.timeout_ms) ||
            op->done || c->state == C_CONNECTED)
            continue;
        /* Timed out while no broker was connected. */
        bool was_written = op->written_gen != 0;
        q_remove(&op->link);
        idmap_del(&c->op_by_receipt, op->receipt);
        mqc__op_free(op);
        return mqc__err(c, MQC_ETIMEDOUT,
                        "%s: no broker connection within timeout=%d ms "
                        "(last error: %s)%s; the connection keeps trying",
                        what, c->cfg.timeout_ms,
                        c->last_err[0] ? c->last_err : "none",
                        was_written ? "; it had been written to the lost "
                                      "broker and may or may not have "
                                      "arrived" : "");
    }
}

void mqc__ops_on_loss(mqc_conn *c, bool will_reconnect)
{
    qlink *n, *next;
    for (n = c->ops.next; n != &c->ops; n = next) {
        next = n->next;
        mqc_op *op = container_of(n, mqc_op, link);
        if (!will_reconnect) {
            mqc__op_complete(c, op, MQC_ECONN, "connection lost before the "
                             "broker's receipt");
            continue;
        }
        switch (op->kind) {
        case OP_SEND:
            if (op->async && op->written_gen && !c->cfg.track_messages)
                mqc__op_complete(c, op, MQC_ECONN,
                                 "the connection was lost before the broker "
                                 "confirmed this async send; it is not "
                                 "replayed (set trackMessages=true in the "
                                 "URI to replay unconfirmed sends)");
            break;
        case OP_SUBSCRIBE:
            break; /* the subscription list subscribes again */
        case OP_UNSUBSCRIBE:
        case OP_DISCONNECT:
            mqc__op_complete(c, op, 0, NULL);
            break;
        case OP_COMMIT:
            mqc__op_complete(c, op, MQC_EROLLEDBACK,
                             "the connection was lost before the COMMIT's "
                             "receipt: the broker rolls the transaction back "
                             "(it may have committed just before); redo the "
                             "work");
            break;
        }
    }
}

void mqc__ops_on_connect(mqc_conn *c)
{
    qlink *n;
    for (n = c->ops.next; n != &c->ops; n = n->next) {
        mqc_op *op = container_of(n, mqc_op, link);
        if (op->kind != OP_SEND)
            continue;
        if (op->written_gen)
            c->stats.replayed++;
        op_write(c, op);
    }
}

void mqc__ops_fail_all(mqc_conn *c, int code, const char *msg)
{
    while (!q_empty(&c->ops)) {
        mqc_op *op = container_of(c->ops.next, mqc_op, link);
        mqc__op_complete(c, op, code, msg);
    }
}

void mqc__ops_check_timeouts(mqc_conn *c, int64_t now)
{
    if (c->cfg.timeout_ms < 0)
        return;
    qlink *n, *next;
    for (n = c->ops.next; n != &c->ops; n = next) {
        next = n->next;
        mqc_op *op = container_of(n, mqc_op, link);
        if (!op->async)
            continue;
        int64_t since = op->created > c->lost_at ? op->created : c->lost_at;
        if (now - since >= c->cfg.timeout_ms)
            mqc__op_complete(c, op, MQC_ETIMEDOUT,
                             "no broker connection within the URI's timeout "
                             "for this async send");
    }
}

/* ---- SEND ---------------------------------------------------------------- */

static bool reserved_header(const char *name)
{
    static const char *const r[] = {"content-length", "receipt", "mq-producer",
                                    "mq-seq", "destination", "transaction"};
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
        if (!strcmp(name, r[i]))
            return true;
    return false;
}

static size_t max_frame(const mqc_conn *c)
{
    size_t m = 0;
    for (size_t i = 0; i < c->cfg.nservers; i++)
        if (!m || (c->cfg.servers[i].max_frame_bytes &&
                   c->cfg.servers[i].max_frame_bytes < m))
            m = c->cfg.servers[i].max_frame_bytes;
    return m ? m : 64u << 20;
}

static mqc_txn *txn_find(mqc_conn *c, const char *id)
{
    for (qlink *n = c->txns.next; n != &c->txns; n = n->next) {
        mqc_txn *t = container_of(n, mqc_txn, link);
        if (!strcmp(t->id, id))
            return t;
    }
    return NULL;
}

static int check_args(mqc_conn *c, const char *what, const char *dest,
                      const void *body, size_t len, const mqc_send_opts *o)
{
    if (!dest || !*dest)
        return mqc__err(c, MQC_EINVAL, "%s: no destination (e.g. "
                        "\"/queue/orders\")", what);
    if (!body && len)
        return mqc__err(c, MQC_EINVAL, "%s: body is NULL but len is %zu",
                        what, len);
    if (o && o->nheaders && !o->headers)
        return mqc__err(c, MQC_EINVAL, "%s: nheaders=%zu but headers is NULL",
                        what, o->nheaders);
    for (size_t i = 0; o && i < o->nheaders; i++)
        if (!o->headers[i].name || !*o->headers[i].name ||
            !o->headers[i].value)
            return mqc__err(c, MQC_EINVAL, "%s: header %zu has no name or "
                            "value", what, i);
    if (len > max_frame(c))
        return mqc__err(c, MQC_ETOOBIG, "%s: body of %zu bytes exceeds "
                        "maxFrameSize=%zu", what, len, max_frame(c));
    return 0;
}

static void encode_send(mqc_conn *c, buf *b, const char *dest, const void *body,
                        size_t len, const mqc_send_opts *o, const char *txn,
                        uint64_t receipt)
{
    frame_begin(b, "SEND");
    mqc__put(b, "destination", dest);
    for (size_t i = 0; o && i < o->nheaders; i++)
        if (!reserved_header(o->headers[i].name))
            mqc__put(b, o->headers[i].name, o->headers[i].value);
    mqc__put(b, "mq-producer", c->producer);
    char v[32];
    snprintf(v, sizeof v, "%" PRIu64, c->next_seq++);
    mqc__put(b, "mq-seq", v);
    if (txn)
        mqc__put(b, "transaction", txn);
    if (receipt) {
        snprintf(v, sizeof v, "%" PRIu64, receipt);
        mqc__put(b, "receipt", v);
    }
    frame_end(b, body, len, true);
}

static int usable(mqc_conn *c, const char *what)
{
    if (c->closing)
        return mqc__err(c, MQC_ECLOSED, "%s: the connection is closed", what);
    if (c->state == C_FAILED)
        return mqc__err(c, c->fail_code, "%s: %s", what, c->fail_msg);
    return 0;
}

/* A SEND inside a transaction: no receipt (the COMMIT's confirms). */
int mqc__send_txn_locked(mqc_conn *c, const char *what, const char *dest,
                       const void *body, size_t len, const mqc_send_opts *o)
{
    mqc_txn *t = txn_find(c, o->txn);
    if (!t)
        return mqc__err(c, MQC_EINVAL, "%s: unknown transaction '%s' (not "
                        "from mqc_begin, or already committed/aborted)", what,
                        o->txn);
    if (t->lost || t->gen != c->gen || c->state != C_CONNECTED) {
        /* The broker already dropped the transaction; mqc_commit says so. */
        t->lost = true;
        return 0;
    }
    buf b = {0};
    encode_send(c, &b, dest, body, len, o, t->id, 0);
    mqc__write(c, buf_data(&b), buf_used(&b));
    c->stats.sent++;
    buf_free(&b);
    return 0;
}

int mqc_send_async(mqc_conn *c, const char *dest, const void *body, size_t len,
                   const mqc_send_opts *opts, mqc_send_cb cb, void *ud)
{
    if (!c)
        return mqc__err(NULL, MQC_EINVAL, "mqc_send_async: c is NULL");
    pthread_mutex_lock(&c->mu);
    int rc = check_args(c, "mqc_send_async", dest, body, len, opts);
    if (!rc)
        rc = usable(c, "mqc_send_async");
    if (rc)
        goto out;
    if (opts && opts->txn) {
        rc = mqc__send_txn_locked(c, "mqc_send_async", dest, body, len, opts);
        if (!rc) {
            /* Report the completion like any async send. */
            c->async_cb_pending++;
            mqc_ev *e = mqc__ev_new(EV_SEND_DONE);
            e->cb = cb;
            e->ud = ud;
            mqc__emit(c, e);
        }
        goto out;
    }
    /* Bounded window: wait for room, up to the URI's timeout. */
    int64_t deadline = mqc__deadline(c->cfg.timeout_ms);
    for (;;) {
        bool full = c->cfg.track_messages
                        ? c->async_ops > 0 &&
                              c->async_bytes + len > c->cfg.max_cache_size
                        : c->async_ops >= ASYNC_MAX_FRAMES;
        if (!full)
            break;
        if ((rc = usable(c, "mqc_send_async")))
            goto out;
        if (!mqc__cv_wait(c, &c->cv, deadline)) {
            rc = mqc__err(c, MQC_ETIMEDOUT,
                          "mqc_send_async: %zu async sends (%zu bytes) "
                          "still unconfirmed and no room freed within "
                          "timeout=%d ms (limit: %s)", c->async_ops,
                          c->async_bytes, c->cfg.timeout_ms,
                          c->cfg.track_messages ? "maxCacheSize bytes"
                                                : "1000 frames");
            goto out;
        }
    }
    mqc_op *op = mqc__op_new(c, OP_SEND);
    op->async = true;
    op->resend = true;
    op->cb = cb;
    op->ud = ud;
    encode_send(c, &op->frame, dest, body, len, opts, NULL, op->receipt);
    mqc__op_submit(c, op);
    mqc__err_clear(c);
out:
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int mqc_send(mqc_conn *c, const char *dest, const void *body, size_t len,
             const mqc_send_opts *opts)
{
    if (!c)
        return mqc__err(NULL, MQC_EINVAL, "mqc_send: c is NULL");
    if (c->cfg.use_async_send && !(opts && opts->txn))
        return mqc_send_async(c, dest, body, len, opts, NULL, NULL);
    pthread_mutex_lock(&c->mu);
    int rc = check_args(c, "mqc_send", dest, body, len, opts);
    if (!rc)
        rc = usable(c, "mqc_send");
    if (rc)
        goto out;
    if (opts && opts->txn) {
        rc = mqc__send_txn_locked(c, "mqc_send", dest, body, len, opts);
        goto out;
    }
    mqc_op *op = mqc__op_new(c, OP_SEND);
    op->resend = true;
    encode_send(c, &op->frame, dest, body, len, opts, NULL, op->receipt);
    mqc__op_submit(c, op);
    rc = mqc__op_wait(c, op, "mqc_send");
out:
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int mqc_flush(mqc_conn *c, int timeout_ms)
{
    if (!c)
        return mqc__err(NULL, MQC_EINVAL, "mqc_flush: c is NULL");
    pthread_mutex_lock(&c->mu);
    /* From a callback, completions queued behind it cannot run yet: wait
     * for the broker's answers only. */
    bool disp = mqc__on_dispatch_thread(c);
    int64_t deadline = mqc__deadline(timeout_ms);
    int rc = 0;
    while (c->async_ops > 0 || (!disp && c->async_cb_pending > 0)) {
        if (!mqc__cv_wait(c, &c->cv, deadline) &&
            (c->async_ops > 0 || (!disp && c->async_cb_pending > 0))) {
            rc = mqc__err(c, MQC_ETIMEDOUT,
                          "mqc_flush: %zu async sends still unconfirmed "
                          "after %d ms%s", c->async_ops, timeout_ms,
                          c->state == C_CONNECTED ? ""
                                                  : " (no broker connected)");
            break;
        }
    }
    if (!rc)
        mqc__err_clear(c);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

/* ---- transactions ---------------------------------------------------------- */

void mqc__txns_on_loss(mqc_conn *c)
{
    for (qlink *n = c->txns.next; n != &c->txns; n = n->next)
        container_of(n, mqc_txn, link)->lost = true;
}

void mqc__txns_free(mqc_conn *c)
{
    while (!q_empty(&c->txns)) {
        mqc_txn *t = container_of(c->txns.next, mqc_txn, link);
        q_remove(&t->link);
        free(t);
    }
}

int mqc__begin_locked(mqc_conn *c, char id[64])
{
    snprintf(id, 64, "tx-%.12s-%" PRIu64, c->producer, c->next_txn++);
    mqc_txn *t = xcalloc(1, sizeof *t);
    snprintf(t->id, sizeof t->id, "%s", id);
    t->gen = c->gen;
    q_push_back(&c->txns, &t->link);
    buf b = {0};
    frame_begin(&b, "BEGIN");
    mqc__put(&b, "transaction", id);
    frame_end(&b, NULL, 0, false);
    mqc__write(c, buf_data(&b), buf_used(&b));
    buf_free(&b);
    return 0;
}

int mqc__txn_check(mqc_conn *c, const char *txid, const char *what)
{
    mqc_txn *t = txn_find(c, txid);
    if (!t)
        return mqc__err(c, MQC_EINVAL, "%s: unknown transaction '%s' (not "
                        "from mqc_begin, or already committed/aborted)", what,
                        txid);
    if (t->lost || t->gen != c->gen || c->state != C_CONNECTED) {
        t->lost = true;
        return 1;
    }
    return 0;
}

int mqc_begin(mqc_conn *c, char *txid, size_t txid_len)
{
    if (!c)
        return mqc__err(NULL, MQC_EINVAL, "mqc_begin: c is NULL");
    pthread_mutex_lock(&c->mu);
    int rc = 0;
    char id[64];
    /* Ids are at most 37 bytes with the NUL ("tx-" + 12 + "-" + 20). */
    if (!txid || txid_len < 40) {
        rc = mqc__err(c, MQC_EINVAL, "mqc_begin: txid needs a buffer of at "
                      "least 40 bytes, 64 recommended (got %zu)",
                      txid ? txid_len : 0);
        goto out;
    }
    if ((rc = usable(c, "mqc_begin")) || (rc = mqc__wait_ready(c, "mqc_begin")))
        goto out;
    mqc__begin_locked(c, id);
    memcpy(txid, id, strlen(id) + 1);
    mqc__err_clear(c);
out:
    pthread_mutex_unlock(&c->mu);
    return rc;
}

/* Take transaction txid off the connection for COMMIT or ABORT; *lost
 * when the broker no longer has it (a failover since BEGIN). NULL (and the
 * error recorded) when the id is unknown. */
static mqc_txn *txn_take(mqc_conn *c, const char *txid, const char *what,
                         bool *lost)
{
    mqc_txn *t = txn_find(c, txid);
    if (!t) {
        mqc__err(c, MQC_EINVAL, "%s: unknown transaction '%s' (not from "
                 "mqc_begin, or already committed/aborted)", what, txid);
        return NULL;
    }
    *lost = t->lost || t->gen != c->gen || c->state != C_CONNECTED;
    q_remove(&t->link);
    return t;
}

int mqc__commit_locked(mqc_conn *c, const char *txid, const char *what)
{
    bool lost;
    mqc_txn *t = txn_take(c, txid, what, &lost);
    if (!t)
        return MQC_EINVAL;
    if (lost) {
        int rc = mqc__err(c, MQC_EROLLEDBACK,
                          "%s: transaction %s was lost: the connection failed "
                          "over after BEGIN and the broker rolled it back; "
                          "redo the work in a new transaction", what, t->id);
        free(t);
        return rc;
    }
    mqc_op *op = mqc__op_new(c, OP_COMMIT);
    frame_begin(&op->frame, "COMMIT");
    mqc__put(&op->frame, "transaction", t->id);
    char r[32];
    snprintf(r, sizeof r, "%" PRIu64, op->receipt);
    mqc__put(&op->frame, "receipt", r);
    frame_end(&op->frame, NULL, 0, false);
    free(t);
    mqc__op_submit(c, op);
    return mqc__op_wait(c, op, what);
}

int mqc_commit(mqc_conn *c, const char *txid)
{
    if (!c || !txid)
        return mqc__err(c, MQC_EINVAL, "mqc_commit: c or txid is NULL");
    pthread_mutex_lock(&c->mu);
    int rc = usable(c, "mqc_commit");
    if (!rc)
        rc = mqc__commit_locked(c, txid, "mqc_commit");
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int mqc__abort_locked(mqc_conn *c, const char *txid, const char *what)
{
    bool lost;
    mqc_txn *t = txn_take(c, txid, what, &lost);
    if (!t)
        return MQC_EINVAL;
    if (!lost) {
        buf b = {0};
        frame_begin(&b, "ABORT");
        mqc__put(&b, "transaction", t->id);
        frame_end(&b, NULL, 0, false);
        mqc__write(c, buf_data(&b), buf_used(&b));
        buf_free(&b);
    }
    free(t);
    mqc__err_clear(c);
    return 0;
}

int mqc_abort(mqc_conn *c, const char *txid)
{
    if (!c || !txid)
        return mqc__err(c, MQC_EINVAL, "mqc_abort: c or txid is NULL");
    pthread_mutex_lock(&c->mu);
    int rc = usable(c, "mqc_abort");
    if (!rc)
        rc = mqc__abort_locked(c, txid, "mqc_abort");
    pthread_mutex_unlock(&c->mu);
    return rc;
}
