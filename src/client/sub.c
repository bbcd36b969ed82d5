/* sub.c - subscriptions, received messages, ACK/NACK, and the redelivery
 * policy (local redelivery with back-off, then the dead-letter queue). */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *mode_name(mqc_ack_mode m)
{
    switch (m) {
    case MQC_ACK_CLIENT: return "client";
    case MQC_ACK_CLIENT_INDIVIDUAL: return "client-individual";
    default: return "auto";
    }
}

static bool sub_reserved(const char *n)
{
    return !strcmp(n, "id") || !strcmp(n, "destination") ||
           !strcmp(n, "ack") || !strcmp(n, "receipt");
}

static void encode_subscribe(const mqc_sub *s, buf *b, uint64_t receipt)
{
    char v[32];
    frame_begin(b, "SUBSCRIBE");
    snprintf(v, sizeof v, "%" PRIu64, s->id);
    mqc__put(b, "id", v);
    mqc__put(b, "destination", s->dest);
    mqc__put(b, "ack", mode_name(s->mode));
    if (s->durable_name) {
        /* mqbroker's name and ActiveMQ's, so either broker understands. */
        mqc__put(b, "durable-subscription-name", s->durable_name);
        mqc__put(b, "activemq.subscriptionName", s->durable_name);
    }
    for (size_t i = 0; i < s->nheaders; i++)
        if (!sub_reserved(s->headers[i].name))
            mqc__put(b, s->headers[i].name, s->headers[i].value);
    if (receipt) {
        snprintf(v, sizeof v, "%" PRIu64, receipt);
        mqc__put(b, "receipt", v);
    }
    frame_end(b, NULL, 0, false);
}

static mqc_sub *sub_find(mqc_conn *c, uint64_t id)
{
    for (qlink *n = c->subs.next; n != &c->subs; n = n->next) {
        mqc_sub *s = container_of(n, mqc_sub, link);
        if (s->id == id)
            return s;
    }
    return NULL;
}

void mqc__subs_on_connect(mqc_conn *c)
{
    for (qlink *n = c->subs.next; n != &c->subs; n = n->next) {
        mqc_sub *s = container_of(n, mqc_sub, link);
        buf b = {0};
        uint64_t r = s->sub_receipt &&
                             idmap_get(&c->op_by_receipt, s->sub_receipt)
                         ? s->sub_receipt : 0;
        encode_subscribe(s, &b, r);
        mqc__write(c, buf_data(&b), buf_used(&b));
        buf_free(&b);
    }
}

static void free_headers(mqc_header *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free((void *)(uintptr_t)h[i].name);
        free((void *)(uintptr_t)h[i].value);
    }
    free(h);
}

static void sub_destroy(mqc_sub *s)
{
    while (!q_empty(&s->queue)) {
        mqc_msg *m = container_of(s->queue.next, mqc_msg, link);
        q_remove(&m->link);
        mqc_msg_free(m);
    }
    free_headers(s->headers, s->nheaders);
    free(s->dest);
    free(s->durable_name);
    pthread_cond_destroy(&s->cv);
    free(s);
}

void mqc__subs_free(mqc_conn *c)
{
    while (!q_empty(&c->subs)) {
        mqc_sub *s = container_of(c->subs.next, mqc_sub, link);
        q_remove(&s->link);
        sub_destroy(s);
    }
}

void mqc__subs_on_loss(mqc_conn *c)
{
    /* Like ActiveMQ clearing a consumer's prefetch on interruption: the
     * next broker redelivers these (they were never acked), and the old
     * copies could not be acked anyway. Auto-ack messages are the
     * application's already. */
    size_t dropped = 0;
    for (qlink *n = c->subs.next; n != &c->subs; n = n->next) {
        mqc_sub *s = container_of(n, mqc_sub, link);
        if (s->mode == MQC_ACK_AUTO)
            continue;
        while (!q_empty(&s->queue)) {
            mqc_msg *m = container_of(s->queue.next, mqc_msg, link);
            q_remove(&m->link);
            s->queued--;
            mqc_msg_free(m);
            dropped++;
        }
    }
    qlink *n, *next;
    for (n = c->events.next; n != &c->events; n = next) {
        next = n->next;
        mqc_ev *e = container_of(n, mqc_ev, link);
        if (e->type == EV_MSG && e->msg && e->msg->mode != MQC_ACK_AUTO) {
            q_remove(&e->link);
            mqc__ev_free(e);
            dropped++;
        }
    }
    if (dropped)
        mqc__log(c, MQC_LOG_DEBUG, "dropped %zu unacknowledged messages not "
                 "yet delivered: the next broker redelivers them", dropped);
}

int mqc_subscribe(mqc_conn *c, const char *dest, mqc_ack_mode mode,
                  const mqc_sub_opts *opts, mqc_sub **out)
{
    if (out)
        *out = NULL;
    if (!c || !out)
        return mqc__err(c, MQC_EINVAL, "mqc_subscribe: c or out is NULL");
    if (!dest || !*dest)
        return mqc__err(c, MQC_EINVAL, "mqc_subscribe: no destination (e.g. "
                        "\"/queue/orders\")");
    if (mode != MQC_ACK_AUTO && mode != MQC_ACK_CLIENT &&
        mode != MQC_ACK_CLIENT_INDIVIDUAL)
        return mqc__err(c, MQC_EINVAL, "mqc_subscribe: bad ack mode %d",
                        (int)mode);
    if (opts && opts->nheaders && !opts->headers)
        return mqc__err(c, MQC_EINVAL, "mqc_subscribe: nheaders=%zu but "
                        "headers is NULL", opts->nheaders);
    for (size_t i = 0; opts && i < opts->nheaders; i++)
        if (!opts->headers[i].name || !*opts->headers[i].name ||
            !opts->headers[i].value)
            return mqc__err(c, MQC_EINVAL, "mqc_subscribe: header %zu has no "
                            "name or value", i);
    pthread_mutex_lock(&c->mu);
    int rc = 0;
    if (c->closing || c->state == C_FAILED) {
        rc = c->closing ? mqc__err(c, MQC_ECLOSED, "mqc_subscribe: the "
                                   "connection is closed")
                        : mqc__err(c, c->fail_code, "mqc_subscribe: %s",
                                   c->fail_msg);
        goto out;
    }
    mqc_sub *s = xcalloc(1, sizeof *s);
    s->conn = c;
    s->id = c->next_sub++;
    s->dest = xstrdup(dest);
    s->mode = mode;
    q_init(&s->queue);
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cv, &a);
    pthread_condattr_destroy(&a);
    if (opts) {
        s->on_message = opts->on_message;
        s->ud = opts->ud;
        if (opts->durable_name)
            s->durable_name = xstrdup(opts->durable_name);
        if (opts->nheaders) {
            s->headers = xcalloc(opts->nheaders, sizeof *s->headers);
            for (size_t i = 0; i < opts->nheaders; i++) {
                s->headers[i].name = xstrdup(opts->headers[i].name);
                s->headers[i].value = xstrdup(opts->headers[i].value);
            }
            s->nheaders = opts->nheaders;
        }
    }
    q_push_back(&c->subs, &s->link);
    mqc_op *op = mqc__op_new(c, OP_SUBSCRIBE);
    s->sub_receipt = op->receipt;
    encode_subscribe(s, &op->frame, op->receipt);
    mqc__op_submit(c, op);
    rc = mqc__op_wait(c, op, "mqc_subscribe");
    s->sub_receipt = 0;
    if (rc) {
        q_remove(&s->link);
        sub_destroy(s);
        goto out;
    }
    *out = s;
out:
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int mqc_unsubscribe(mqc_sub *s)
{
    if (!s)
        return mqc__err(NULL, MQC_EINVAL, "mqc_unsubscribe: s is NULL");
    mqc_conn *c = s->conn;
    pthread_mutex_lock(&c->mu);
    int rc = 0;
    q_remove(&s->link);
    s->gone = true;
    pthread_cond_broadcast(&s->cv);
    if (!c->closing && c->state == C_CONNECTED) {
        mqc_op *op = mqc__op_new(c, OP_UNSUBSCRIBE);
        char v[32];
        frame_begin(&op->frame, "UNSUBSCRIBE");
        snprintf(v, sizeof v, "%" PRIu64, s->id);
        mqc__put(&op->frame, "id", v);
        snprintf(v, sizeof v, "%" PRIu64, op->receipt);
        mqc__put(&op->frame, "receipt", v);
        frame_end(&op->frame, NULL, 0, false);
        mqc__op_submit(c, op);
        rc = mqc__op_wait(c, op, "mqc_unsubscribe");
    }
    /* Not connected: the next broker never hears of it. */
    sub_destroy(s);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

/* ---- messages -------------------------------------------------------------- */

static mqc_msg *msg_new(mqc_conn *c, size_t nheaders)
{
    mqc_msg *m = xcalloc(1, sizeof *m);
    q_init(&m->link);
    m->conn = c;
    atomic_fetch_add(&c->refs, 1);
    m->headers = xcalloc(nheaders ? nheaders : 1, sizeof *m->headers);
    m->nheaders = nheaders;
    return m;
}

static void msg_index(mqc_msg *m)
{
    m->dest = mqc_msg_header(m, "destination");
    m->id = mqc_msg_header(m, "message-id");
    m->ack = mqc_msg_header(m, "ack");
    if (!m->ack)
        m->ack = m->id; /* STOMP 1.1 brokers ack by message-id */
    const char *r = mqc_msg_header(m, "redelivered");
    m->broker_redelivered = r && !strcmp(r, "true");
}

static mqc_msg *msg_clone(const mqc_msg *o)
{
    mqc_msg *m = msg_new(o->conn, o->nheaders);
    for (size_t i = 0; i < o->nheaders; i++) {
        m->headers[i].name = xstrdup(o->headers[i].name);
        m->headers[i].value = xstrdup(o->headers[i].value);
    }
    m->body = xmalloc(o->body_len + 1);
    memcpy(m->body, o->body, o->body_len);
    m->body[o->body_len] = '\0';
    m->body_len = o->body_len;
    m->sub_id = o->sub_id;
    m->gen = o->gen;
    m->mode = o->mode;
    m->redeliveries = o->redeliveries;
    msg_index(m);
    return m;
}

void mqc__on_message(mqc_conn *c, const frame *f)
{
    c->stats.received++;
    const char *sid = frame_get(f, "subscription");
    char *end = NULL;
    uint64_t id = sid ? strtoull(sid, &end, 10) : 0;
    mqc_sub *s = (sid && end && !*end) ? sub_find(c, id) : NULL;
    if (!s) {
        mqc__log(c, MQC_LOG_DEBUG, "MESSAGE for unknown subscription '%s' "
                 "dropped", sid ? sid : "(none)");
        return;
    }
    mqc_msg *m = msg_new(c, f->nheaders);
    for (size_t i = 0; i < f->nheaders; i++) {
        m->headers[i].name = xstrdup(f->headers[i].name);
        m->headers[i].value = xstrdup(f->headers[i].value);
    }
    m->body = xmalloc(f->body_len + 1);
    memcpy(m->body, f->body, f->body_len);
    m->body[f->body_len] = '\0'; /* convenience for text bodies */
    m->body_len = f->body_len;
    m->sub_id = s->id;
    m->gen = c->gen;
    m->mode = s->mode;
    msg_index(m);
    if (s->on_message) {
        mqc_ev *e = mqc__ev_new(EV_MSG);
        e->msg = m;
        e->sub_id = s->id;
        mqc__emit(c, e);
    } else {
        q_push_back(&s->queue, &m->link);
        s->queued++;
        pthread_cond_signal(&s->cv);
    }
}

void mqc__deliver(mqc_conn *c, mqc_ev *e)
{
    pthread_mutex_lock(&c->mu);
    mqc_sub *s = sub_find(c, e->sub_id);
    if (!s || s->gone || !e->msg || c->closing) {
        pthread_mutex_unlock(&c->mu);
        return; /* the event's free drops the message */
    }
    if (e->due && e->msg->gen != c->gen) {
        /* A failover came between: the broker redelivers it itself. */
        pthread_mutex_unlock(&c->mu);
        return;
    }
    mqc_msg *m = e->msg;
    e->msg = NULL;
    if (s->on_message) {
        mqc_msg_cb cb = s->on_message;
        void *ud = s->ud;
        pthread_mutex_unlock(&c->mu);
        cb(ud, m);
        return;
    }
    q_push_back(&s->queue, &m->link);
    s->queued++;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&c->mu);
}

int mqc_receive(mqc_sub *s, int timeout_ms, mqc_msg **out)
{
    if (out)
        *out = NULL;
    if (!s || !out)
        return mqc__err(NULL, MQC_EINVAL, "mqc_receive: s or out is NULL");
    mqc_conn *c = s->conn;
    pthread_mutex_lock(&c->mu);
    int rc = 0;
    if (s->on_message) {
        rc = mqc__err(c, MQC_EINVAL, "mqc_receive: subscription to %s has an "
                      "on_message handler; messages go there", s->dest);
        goto out;
    }
    int64_t deadline = mqc__deadline(timeout_ms);
    for (;;) {
        if (!q_empty(&s->queue)) {
            mqc_msg *m = container_of(s->queue.next, mqc_msg, link);
            q_remove(&m->link);
            s->queued--;
            *out = m;
            mqc__err_clear(c);
            goto out;
        }
        if (s->gone || c->closing) {
            rc = mqc__err(c, MQC_ECLOSED, "mqc_receive: the subscription or "
                          "connection is closed");
            goto out;
        }
        if (c->state == C_FAILED) {
            rc = mqc__err(c, c->fail_code, "mqc_receive: %s", c->fail_msg);
            goto out;
        }
        /* Wake now and then to notice a connection that failed for good. */
        int64_t now = mono_ms();
        int64_t slice = now + 500;
        if (deadline >= 0 && deadline < slice)
            slice = deadline;
        if (deadline >= 0 && now >= deadline) {
            rc = mqc__err(c, MQC_ETIMEDOUT, "mqc_receive: no message on %s "
                          "within %d ms", s->dest, timeout_ms);
            goto out;
        }
        mqc__cv_wait(c, &s->cv, slice);
    }
out:
    pthread_mutex_unlock(&c->mu);
    return rc;
}

const void *mqc_msg_body(const mqc_msg *m, size_t *len)
{
    if (len)
        *len = m ? m->body_len : 0;
    return m ? m->body : NULL;
}

const char *mqc_msg_header(const mqc_msg *m, const char *name)
{
    if (!m || !name)
        return NULL;
    for (size_t i = 0; i < m->nheaders; i++)
        if (!strcmp(m->headers[i].name, name))
            return m->headers[i].value;
    return NULL;
}

const mqc_header *mqc_msg_headers(const mqc_msg *m, size_t *n)
{
    if (n)
        *n = m ? m->nheaders : 0;
    return m ? m->headers : NULL;
}

const char *mqc_msg_dest(const mqc_msg *m) { return m ? m->dest : NULL; }
const char *mqc_msg_id(const mqc_msg *m) { return m ? m->id : NULL; }

bool mqc_msg_redelivered(const mqc_msg *m)
{
    return m && (m->broker_redelivered || m->redeliveries > 0);
}

int mqc_msg_redelivery_count(const mqc_msg *m)
{
    return m ? m->redeliveries : 0;
}

void mqc_msg_free(mqc_msg *m)
{
    if (!m)
        return;
    mqc_conn *c = m->conn;
    free_headers(m->headers, m->nheaders);
    free(m->body);
    free(m);
    mqc__conn_unref(c);
}

/* ---- ACK / NACK ------------------------------------------------------------ */

static int ack_check(mqc_conn *c, const mqc_msg *m, const char *what)
{
    if (c->closing || c->closed)
        return mqc__err(c, MQC_ECLOSED, "%s: the connection is closed", what);
    if (m->mode == MQC_ACK_AUTO)
        return mqc__err(c, MQC_ESTATE, "%s: message %s came from an "
                        "auto-ack subscription (nothing to acknowledge)", what,
                        m->id ? m->id : "?");
    if (m->gen != c->gen || c->state != C_CONNECTED)
        return mqc__err(c, MQC_ESTATE, "%s: message %s was received on an "
                        "earlier connection (a failover happened since); the "
                        "broker redelivers it, handle that copy", what,
                        m->id ? m->id : "?");
    if (!m->ack)
        return mqc__err(c, MQC_EPROTO, "%s: the broker sent no ack nor "
                        "message-id header with this message", what);
    return 0;
}

static void write_ack(mqc_conn *c, const char *cmd, const mqc_msg *m,
                      const char *txn)
{
    buf b = {0};
    frame_begin(&b, cmd);
    mqc__put(&b, "id", m->ack);
    if (!mqc_msg_header(m, "ack")) {
        /* A STOMP 1.1 broker (no ack header): it wants these instead. */
        const char *sub = mqc_msg_header(m, "subscription");
        mqc__put(&b, "message-id", m->ack);
        if (sub)
            mqc__put(&b, "subscription", sub);
    }
    if (txn)
        mqc__put(&b, "transaction", txn);
    frame_end(&b, NULL, 0, false);
    mqc__write(c, buf_data(&b), buf_used(&b));
    buf_free(&b);
}

static int ack_or_nack(mqc_msg *m, const char *txn, bool ack)
{
    const char *what = ack ? "mqc_ack" : "mqc_nack";
    if (!m)
        return mqc__err(NULL, MQC_EINVAL, "%s: m is NULL", what);
    mqc_conn *c = m->conn;
    pthread_mutex_lock(&c->mu);
    int rc = ack_check(c, m, what);
    if (!rc && txn) {
        rc = mqc__txn_check(c, txn, what);
        if (rc == 1) { /* lost with its transaction; commit reports it */
            rc = 0;
            goto out;
        }
    }
    if (rc)
        goto out;
    write_ack(c, ack ? "ACK" : "NACK", m, txn);
    if (ack)
        c->stats.acked++;
    mqc__err_clear(c);
out:
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int mqc_ack(mqc_msg *m, const char *txn) { return ack_or_nack(m, txn, true); }
int mqc_nack(mqc_msg *m, const char *txn) { return ack_or_nack(m, txn, false); }

/* ---- redelivery policy ------------------------------------------------------ */

static bool dlq_skip_header(const char *n)
{
    static const char *const r[] = {
        "message-id", "destination", "subscription", "ack", "redelivered",
        "content-length", "receipt", "transaction", "mq-producer", "mq-seq",
        "mq-original-destination", "mq-dlq-reason", "expires"};
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
        if (!strcmp(n, r[i]))
            return true;
    return false;
}

/* Move m to the dead-letter queue: BEGIN, SEND the copy, ACK m, COMMIT
 * (with receipt), so the broker does both or neither. c->mu held. */
static int dead_letter(mqc_conn *c, mqc_msg *m, int count)
{
    const mqc_redelivery_policy *p = &c->cfg.redelivery;
    const char *dest = m->dest ? m->dest : "/queue/unknown";
    const char *name = dest;
    if (!strncmp(dest, "/queue/", 7) || !strncmp(dest, "/topic/", 7))
        name = dest + 7;
    else
        while (*name == '/')
            name++;
    const char *prefix = p->dlq_prefix ? p->dlq_prefix : "/queue/DLQ.";
    size_t dl = strlen(prefix) + strlen(name) + 1;
    char *dlq = xmalloc(dl);
    snprintf(dlq, dl, "%s%s", prefix, name);

    mqc_header *h = xcalloc(m->nheaders + 3, sizeof *h);
    size_t n = 0;
    for (size_t i = 0; i < m->nheaders; i++)
        if (!dlq_skip_header(m->headers[i].name))
            h[n++] = m->headers[i];
    char reason[160];
    snprintf(reason, sizeof reason, "rejected %d times, more than "
             "maximumRedeliveries=%d", count, p->maximum_redeliveries);
    h[n].name = "mq-original-destination";
    h[n++].value = dest;
    h[n].name = "mq-dlq-reason";
    h[n++].value = reason;
    if (m->id) {
        h[n].name = "mq-original-message-id";
        h[n++].value = m->id;
    }
    char tx[64];
    mqc__begin_locked(c, tx);
    mqc_send_opts o = {.headers = h, .nheaders = n, .txn = tx};
    int rc = mqc__send_txn_locked(c, "mqc_reject", dlq, m->body, m->body_len,
                                  &o);
    if (!rc)
        write_ack(c, "ACK", m, tx);
    if (!rc)
        rc = mqc__commit_locked(c, tx, "mqc_reject (moving to the DLQ)");
    else
        mqc__abort_locked(c, tx, "mqc_reject");
    if (!rc) {
        c->stats.dead_lettered++;
        c->stats.acked++;
        mqc__log(c, MQC_LOG_INFO, "message %s moved from %s to %s (%s)",
                 m->id ? m->id : "?", dest, dlq, reason);
    }
    free(h);
    free(dlq);
    return rc;
}

int mqc_reject(mqc_msg *m)
{
    if (!m)
        return mqc__err(NULL, MQC_EINVAL, "mqc_reject: m is NULL");
    mqc_conn *c = m->conn;
    pthread_mutex_lock(&c->mu);
    int rc = ack_check(c, m, "mqc_reject");
    if (rc)
        goto out;
    const mqc_redelivery_policy *p = &c->cfg.redelivery;
    int next = m->redeliveries + 1;
    if (p->maximum_redeliveries >= 0 && next > p->maximum_redeliveries) {
        rc = dead_letter(c, m, next);
        goto out;
    }
    mqc_ev *e = mqc__ev_new(EV_MSG);
    e->msg = msg_clone(m);
    e->msg->redeliveries = next;
    e->sub_id = m->sub_id;
    e->due = mono_ms() + mqc__redelivery_delay_ms(p, next);
    if (e->due == 0)
        e->due = 1; /* 0 means "not a timer" */
    /* Timers sorted by due time, FIFO among equals. */
    qlink *pos = &c->timers;
    for (qlink *n = c->timers.prev; n != &c->timers; n = n->prev) {
        if (container_of(n, mqc_ev, link)->due <= e->due)
            break;
        pos = n;
    }
    q_insert_before(pos, &e->link);
    c->stats.redelivered_local++;
    pthread_cond_signal(&c->disp_cv);
    mqc__err_clear(c);
out:
    pthread_mutex_unlock(&c->mu);
    return rc;
}
