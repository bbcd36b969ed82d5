/* dest.c - destinations, the boxes their messages wait in, delivery to
 * subscriptions, and the in-memory side of ack/nack.
 *
 * A queue has one box shared round-robin by its consumers. A topic has one
 * box per subscription: a live one (freed with its subscriber) or a durable
 * one (kept while offline; mirrors a store subscription). A message is
 * shared by the entries of every box that holds it. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

#define QUEUE_PREFIX "/queue/"
#define TOPIC_PREFIX "/topic/"
#define PREFIX_LEN 7

/* Paging (see the section at the end). */
#define PAGE_ROWS 512 /* rows per read, at least */
#define PAGE_ROWS_MAX 4096 /* ... and at most (consumers' room) */
#define PAGE_LOW 256  /* read when fewer are pending in memory */
#define PAGE_RETRY_MS 1000
static void box_put(box *b, msg *m);
static void dest_trim(dest *d, size_t keep);
static size_t page_out_bytes(void);
static size_t box_pending_bytes(const box *b);
static bool dmark_covers(box *b, const entry *e);
static bool no_dmarks; /* the backend has no marks: per-delivery writes */

/* ------------------------------------------------------------------------
 * Messages
 * ---------------------------------------------------------------------- */

msg *msg_new(const void *hdrs, size_t hdrs_len, const void *body,
             size_t body_len)
{
    /* One allocation: the struct, then headers and body, NUL-terminated. */
    msg *m = xmalloc(sizeof *m + hdrs_len + body_len + 2);
    memset(m, 0, sizeof *m);
    m->refs = 1;
    m->hdrs = (char *)(m + 1);
    if (hdrs_len)
        memcpy(m->hdrs, hdrs, hdrs_len);
    m->hdrs[hdrs_len] = '\0';
    m->hdrs_len = hdrs_len;
    m->body = m->hdrs + hdrs_len + 1;
    if (body_len)
        memcpy(m->body, body, body_len);
    m->body[body_len] = '\0';
    m->body_len = body_len;
    m->size = sizeof *m + hdrs_len + body_len;
    m->priority = MQS_PRIORITY_DEFAULT;
    m->seq = ++B.seq;
    m->term = B.token;
    return m;
}

void msg_unref(msg *m)
{
    if (m && --m->refs == 0)
        free(m);
}

bool msg_hdrs_valid(const char *h, size_t n)
{
    if (n == 0)
        return true;
    if (h[n - 1] != '\0')
        return false;
    size_t nuls = 0;
    for (size_t i = 0; i < n; i++) {
        if (h[i] == '\0') {
            /* A name (even position) must not be empty. */
            if (nuls % 2 == 0 && (i == 0 || h[i - 1] == '\0'))
                return false;
            nuls++;
        }
    }
    return nuls % 2 == 0;
}

/* ------------------------------------------------------------------------
 * Destinations
 * ---------------------------------------------------------------------- */

const char *dest_check(const char *name, mqs_kind *kind)
{
    if (!strncmp(name, QUEUE_PREFIX, PREFIX_LEN))
        *kind = MQS_QUEUE;
    else if (!strncmp(name, TOPIC_PREFIX, PREFIX_LEN))
        *kind = MQS_TOPIC;
    else
        return "destinations are /queue/NAME or /topic/NAME";
    size_t n = strlen(name + PREFIX_LEN);
    if (n == 0)
        return "destination name is empty";
    if (n > 255)
        return "destination name is longer than 255 bytes";
    return NULL;
}

/* The destination table's hash: the same FNV-1a as idmap keys. */
static size_t hash_name(const char *s) { return (size_t)str_key(s); }

static void rehash(void)
{
    size_t cap = B.dcap ? B.dcap * 2 : 64;
    dest **t = xcalloc(cap, sizeof *t);
    for (size_t i = 0; i < B.dcap; i++) {
        for (dest *d = B.dtab[i], *next; d; d = next) {
            next = d->hnext;
            size_t k = hash_name(d->name) & (cap - 1);
            d->hnext = t[k];
            t[k] = d;
        }
    }
    free(B.dtab);
    B.dtab = t;
    B.dcap = cap;
}

static void box_init(box *b, dest *d, box_type type)
{
    memset(b, 0, sizeof *b);
    b->d = d;
    b->type = type;
    for (int i = 0; i < NPRIO; i++) {
        q_init(&b->pending[i]);
        q_init(&b->parked[i]);
    }
    q_init(&b->consumers);
    q_init(&b->dirty_link);
    q_init(&b->dlink);
    b->created_seq = ++B.seq;
    b->pg_prio = NPRIO;
}

static bool collectable(const dest *d)
{
    /* A count change still to be announced on /mq/demand holds it. */
    if (d->refs || d->bytes || !q_empty(&d->paused) || d->demand_dirty)
        return false;
    if (d->kind == MQS_QUEUE)
        return d->qbox.nentries == 0 && d->qbox.nconsumers == 0 &&
               !d->qbox.paged && !d->qbox.pg_reading;
    return q_empty(&d->boxes);
}

/* Empty, unused destinations are freed at the end of the loop turn, so no
 * caller ever holds a pointer to a freed one. */
static void gc_check(dest *d)
{
    if (!d->in_gc && collectable(d)) {
        d->in_gc = true;
        q_push_back(&B.gc_dests, &d->gc_link);
    }
}

void dest_gc_check(dest *d) { gc_check(d); }

dest *dest_get(const char *name, bool create)
{
    if (B.dcap) {
        for (dest *d = B.dtab[hash_name(name) & (B.dcap - 1)]; d;
             d = d->hnext)
            if (!strcmp(d->name, name))
                return d;
    }
    if (!create)
        return NULL;
    mqs_kind kind;
    if (dest_check(name, &kind))
        return NULL;
    if (B.ndests + 1 > B.dcap)
        rehash();
    dest *d = xcalloc(1, sizeof *d);
    d->name = xstrdup(name);
    d->store_name = d->name + PREFIX_LEN;
    d->kind = kind;
    box_init(&d->qbox, d, BOX_QUEUE);
    q_init(&d->boxes);
    q_init(&d->paused);
    q_init(&d->resume_link);
    q_init(&d->gc_link);
    q_init(&d->demand_link);
    size_t k = hash_name(name) & (B.dcap - 1);
    d->hnext = B.dtab[k];
    B.dtab[k] = d;
    B.ndests++;
    q_push_back(&B.dests, &d->link);
    gc_check(d);
    return d;
}

dest *dest_get_store(mqs_kind kind, const char *store_name)
{
    size_t n = strlen(store_name);
    char *name = xmalloc(PREFIX_LEN + n + 1);
    memcpy(name, kind == MQS_QUEUE ? QUEUE_PREFIX : TOPIC_PREFIX, PREFIX_LEN);
    memcpy(name + PREFIX_LEN, store_name, n + 1);
    dest *d = dest_get(name, true);
    free(name);
    return d;
}

void dest_ref(dest *d) { d->refs++; }

void dest_unref(dest *d)
{
    d->refs--;
    gc_check(d);
}

void mem_add(size_t n)
{
    B.mem_used += n;
    if (!B.mem_over && B.mem_used >= B.cfg.max_memory) {
        B.mem_over = true;
        log_msg(LOG_WARN, "memory: %zu bytes held for clients, at "
                "--max-memory %zu: pausing producers until it drops",
                B.mem_used, B.cfg.max_memory);
    }
}

static void queue_resume(dest *d)
{
    if (!q_empty(&d->paused) && !d->in_resume) {
        d->in_resume = true;
        q_push_back(&B.resume_dests, &d->resume_link);
    }
}

void mem_sub(size_t n)
{
    B.mem_used -= n;
    /* Resume below 7/8 of the ceiling, so producers do not flap. */
    if (B.mem_over && B.mem_used < B.cfg.max_memory - B.cfg.max_memory / 8) {
        B.mem_over = false;
        log_msg(LOG_INFO, "memory: %zu bytes held for clients, below "
                "--max-memory again: producers resume", B.mem_used);
        for (qlink *l = B.dests.next; l != &B.dests; l = l->next)
            queue_resume(container_of(l, dest, link));
        conns_mem_resumed();
    }
}

bool mem_full(void) { return B.mem_over; }

void dest_reserve(dest *d, size_t n)
{
    d->bytes += n;
    mem_add(n);
}

void dest_release(dest *d, size_t n)
{
    d->bytes -= n;
    mem_sub(n);
    if (d->bytes < B.cfg.max_dest_bytes && !B.mem_over)
        queue_resume(d);
    gc_check(d);
}

void dest_pause(dest *d, conn *c)
{
    c->paused_on = d;
    q_push_back(&d->paused, &c->plink);
    log_msg(LOG_DEBUG, "conn %" PRIu64 ": paused: %s holds %zu bytes "
            "(max-dest-bytes %zu)", c->serial, d->name, d->bytes,
            B.cfg.max_dest_bytes);
}

void dest_unpause(conn *c)
{
    dest *d = c->paused_on;
    if (!d)
        return;
    q_remove(&c->plink);
    c->paused_on = NULL;
    gc_check(d);
}

size_t dests_resume(void)
{
    size_t n = 0;
    while (!q_empty(&B.resume_dests)) {
        dest *d = container_of(B.resume_dests.next, dest, resume_link);
        q_remove(&d->resume_link);
        d->in_resume = false;
        while (!q_empty(&d->paused) && d->bytes < B.cfg.max_dest_bytes &&
               !B.mem_over) {
            conn *c = container_of(d->paused.next, conn, plink);
            dest_unpause(c);
            conn_process_input(c); /* may pause it again */
            n++;
        }
    }
    return n;
}

static void box_unpark(box *b);

static void box_clear(box *b)
{
    box_unpark(b);
    for (int p = 0; p < NPRIO; p++) {
        while (!q_empty(&b->pending[p])) {
            entry *e = container_of(b->pending[p].next, entry, link);
            q_remove(&e->link);
            msg_unref(e->m);
            free(e);
        }
    }
    b->npending = b->nentries = 0;
}

static void dest_destroy(dest *d)
{
    dest **pp = &B.dtab[hash_name(d->name) & (B.dcap - 1)];
    while (*pp != d)
        pp = &(*pp)->hnext;
    *pp = d->hnext;
    B.ndests--;
    q_remove(&d->link);
    q_remove(&d->qbox.dirty_link);
    q_remove(&d->resume_link);
    q_remove(&d->gc_link);
    q_remove(&d->demand_link);
    free(d->name);
    free(d);
}

void dests_gc(void)
{
    while (!q_empty(&B.gc_dests)) {
        dest *d = container_of(B.gc_dests.next, dest, gc_link);
        q_remove(&d->gc_link);
        d->in_gc = false;
        if (collectable(d))
            dest_destroy(d);
    }
}

/* Drop everything (the store lock was lost, or shutdown). Connections are
 * gone already, so no subscription points into a box. */
void dests_free_all(void)
{
    while (!q_empty(&B.dests)) {
        dest *d = container_of(B.dests.next, dest, link);
        while (!q_empty(&d->boxes)) {
            box *b = container_of(d->boxes.next, box, dlink);
            q_remove(&b->dlink);
            box_clear(b);
            free(b->name);
            free(b);
        }
        box_clear(&d->qbox);
        q_remove(&d->link);
        free(d->name);
        free(d);
    }
    free(B.dtab);
    B.dtab = NULL;
    B.dcap = B.ndests = 0;
    q_init(&B.dirty_boxes);
    q_init(&B.resume_dests);
    q_init(&B.gc_dests);
    q_init(&B.demand_dests);
    q_init(&B.later_boxes);
    B.page_failed = 0;
}

/* ------------------------------------------------------------------------
 * Boxes
 * ---------------------------------------------------------------------- */

box *box_new_sub(dest *d, box_type type, int64_t sub_id, const char *name)
{
    box *b = xmalloc(sizeof *b);
    box_init(b, d, type);
    b->sub_id = sub_id;
    b->name = name ? xstrdup(name) : NULL;
    q_push_back(&d->boxes, &b->dlink);
    if (type == BOX_DURABLE) {
        d->ndurable++;
        network_demand_changed(d); /* a durable box counts as a consumer */
    }
    return b;
}

box *dest_find_durable(dest *d, const char *name)
{
    for (qlink *l = d->boxes.next; l != &d->boxes; l = l->next) {
        box *b = container_of(l, box, dlink);
        if (b->type == BOX_DURABLE && !strcmp(b->name, name))
            return b;
    }
    return NULL;
}

box *dest_find_durable_id(dest *d, int64_t sub_id)
{
    for (qlink *l = d->boxes.next; l != &d->boxes; l = l->next) {
        box *b = container_of(l, box, dlink);
        if (b->type == BOX_DURABLE && b->sub_id == sub_id)
            return b;
    }
    return NULL;
}

void box_free(box *b)
{
    dest *d = b->d;
    box_unpark(b);
    for (int p = 0; p < NPRIO; p++) {
        while (!q_empty(&b->pending[p])) {
            entry *e = container_of(b->pending[p].next, entry, link);
            q_remove(&e->link);
            b->npending--;
            entry_free(e);
        }
    }
    q_remove(&b->dirty_link);
    q_remove(&b->dlink);
    if (b->pg_retry_ms)
        B.page_failed--;
    if (b->type == BOX_DURABLE) {
        d->ndurable--;
        network_demand_changed(d);
    }
    free(b->name);
    free(b);
    gc_check(d);
}

void box_kick(box *b)
{
    if (!b->dirty) {
        b->dirty = true;
        q_push_back(&B.dirty_boxes, &b->dirty_link);
    }
}

/* Parked entries back into their pending lists, merged by arrival (both
 * lists are in arrival order): linear. */
static void box_unpark(box *b)
{
    if (!b->nparked)
        return;
    for (int p = 0; p < NPRIO; p++) {
        qlink *h = &b->pending[p], *pos = h->next;
        while (!q_empty(&b->parked[p])) {
            entry *e = container_of(b->parked[p].next, entry, link);
            while (pos != h && container_of(pos, entry, link)->m->seq <
                                   e->m->seq)
                pos = pos->next;
            q_remove(&e->link);
            q_insert_before(pos, &e->link);
        }
    }
    b->nparked = 0;
}

static entry *box_head(box *b)
{
    for (int p = NPRIO - 1; p >= 0; p--)
        if (!q_empty(&b->pending[p]))
            return container_of(b->pending[p].next, entry, link);
    return NULL;
}

/* ------------------------------------------------------------------------
 * Entries
 * ---------------------------------------------------------------------- */

entry *entry_add(box *b, msg *m)
{
    entry *e = xcalloc(1, sizeof *e);
    e->m = m;
    m->refs++;
    e->b = b;
    q_push_back(&b->pending[m->priority], &e->link);
    b->npending++;
    b->nentries++;
    /* Each entry counts, so a topic fanned out to many subscriptions
     * weighs what it costs. */
    b->bytes += m->size + sizeof *e;
    dest_reserve(b->d, m->size + sizeof *e);
    box_kick(b);
    return e;
}

void entry_free(entry *e)
{
    box *b = e->b;
    b->nentries--;
    b->bytes -= e->m->size + sizeof *e;
    dest_release(b->d, e->m->size + sizeof *e);
    msg_unref(e->m);
    free(e);
}

bool entry_stored(const entry *e)
{
    return e->m->id != 0 && e->b->type != BOX_TOPIC;
}

int64_t entry_sub_id(const entry *e)
{
    return e->b->type == BOX_DURABLE ? e->b->sub_id : 0;
}

void entry_message_id(const entry *e, char *out, size_t n)
{
    if (entry_stored(e) && e->b->type == BOX_DURABLE)
        snprintf(out, n, "ID:%" PRId64 ":%" PRId64, e->m->id, e->b->sub_id);
    else if (e->m->id)
        snprintf(out, n, "ID:%" PRId64, e->m->id);
    else
        snprintf(out, n, "ID:T%" PRId64 "-%" PRIu64, e->m->term, e->m->seq);
}

/* Fire-and-forget store writes still report failures. From a library
 * thread: only logs. */
static void log_store_cb(void *ud, int rc, int64_t id, const char *errmsg)
{
    if (rc)
        log_msg(rc == MQS_EFENCED ? LOG_DEBUG : LOG_WARN,
                "store %s of message %" PRId64 " failed: %s",
                (const char *)ud, id, errmsg);
}

typedef int (*ref_async_fn)(mqs_store *, int64_t, int64_t, mqs_done_fn,
                            void *);

/* An ack or nack nobody waits for; failures are logged. */
static void submit_logged(ref_async_fn fn, const entry *e, const char *what)
{
    if (fn == mqs_ack_async)
        audit_mark(e->m); /* queued first: commits no later than the ack */
    int rc = fn(B.store, e->m->id, entry_sub_id(e), log_store_cb,
                (void *)(uintptr_t)what); /* read back as const */
    if (rc)
        broker_log_store_failure(what, rc);
}

static void entry_undeliver(entry *e)
{
    sub *s = e->s;
    e->b->dbytes -= e->m->size + sizeof *e;
    q_remove(&e->link);
    s->nunacked--;
    s->c->nunacked--;
    idmap_del(&s->c->acks, e->tag);
    if (idmap_get(&s->c->mids, e->mid_key) == e)
        idmap_del(&s->c->mids, e->mid_key);
    e->s = NULL;
    e->tag = 0;
}

void entry_consume(entry *e)
{
    box *b = e->b;
    if (e->s)
        entry_undeliver(e);
    entry_free(e);
    box_kick(b); /* a prefetch slot is free */
}

void entry_ack(entry *e, op *o)
{
    if (entry_stored(e)) {
        /* The caller counted this write in o->pending. */
        if (!o) {
            submit_logged(mqs_ack_async, e, "ack");
        } else {
            audit_mark(e->m);
            int rc = mqs_ack_async(B.store, e->m->id, entry_sub_id(e),
                                   op_done_cb, o);
            if (rc)
                op_complete(o, rc, mqs_errmsg(B.store));
        }
    }
    entry_consume(e);
}

/* Sorted back into its priority list by arrival, so redeliveries keep the
 * original order. */
void entry_requeue(entry *e)
{
    box *b = e->b;
    if (e->s)
        entry_undeliver(e);
    e->redelivered = true;
    qlink *h = &b->pending[e->m->priority], *pos = h->next;
    while (pos != h && container_of(pos, entry, link)->m->seq < e->m->seq)
        pos = pos->next;
    q_insert_before(pos, &e->link);
    b->npending++;
    box_kick(b);
}

/* ------------------------------------------------------------------------
 * Subscriptions and dispatch
 * ---------------------------------------------------------------------- */

void sub_attach(sub *s, box *b)
{
    box_unpark(b); /* what may go where changes with the consumers */
    s->b = b;
    q_push_back(&b->consumers, &s->blink);
    b->nconsumers++;
    if (s->net_peer)
        b->nnet++;
    network_demand_changed(b->d);
    box_kick(b);
}

void sub_detach(sub *s)
{
    box *b = s->b;
    box_unpark(b);
    q_remove(&s->blink);
    b->nconsumers--;
    if (s->net_peer)
        b->nnet--;
    network_demand_changed(b->d);
    /* Newest first: each then lands at the front of its list (pending
     * messages are usually newer), keeping this linear. */
    while (!q_empty(&s->unacked))
        entry_requeue(container_of(s->unacked.prev, entry, link));
    /* One consumer fewer may change what network subscriptions may take
     * (local first, replay). */
    if (b->nnet)
        box_kick(b);
    s->b = NULL;
    if (b->type == BOX_TOPIC)
        box_free(b);
    else
        gc_check(b->d);
}

static bool sub_ready(const sub *s)
{
    return conn_can_take(s->c) &&
           (s->ack == ACK_AUTO || s->nunacked < s->prefetch);
}

static void deliver(entry *e, sub *s)
{
    box *b = e->b;
    conn *c = s->c;
    q_remove(&e->link);
    b->npending--;
    if (entry_stored(e) && e->m->id > b->disp_max[e->m->priority])
        b->disp_max[e->m->priority] = e->m->id;
    if (s->ack == ACK_AUTO) {
        conn_write_message(c, s, e);
        /* Auto mode: delivered is consumed. */
        if (entry_stored(e))
            submit_logged(mqs_ack_async, e, "auto-ack");
        entry_free(e);
        return;
    }
    e->s = s;
    e->tag = ++c->next_tag;
    b->dbytes += e->m->size + sizeof *e;
    q_push_back(&s->unacked, &e->link);
    s->nunacked++;
    c->nunacked++;
    idmap_put(&c->acks, e->tag, e);
    char mid[96];
    entry_message_id(e, mid, sizeof mid);
    e->mid_key = str_key(mid); /* kept: undeliver needs no new string */
    idmap_put(&c->mids, e->mid_key, e); /* the newest, if one is twice */
    conn_write_message(c, s, e);
    if (no_dmarks && entry_stored(e) && !e->redelivered)
        submit_logged(mqs_nack_async, e, "delivery mark");
}

/* Expired: dropped from the box (and acked in the store). */
static bool drop_expired(box *b, entry *e, int64_t *now)
{
    if (!e->m->expires_ms)
        return false;
    if (!*now)
        *now = wall_ms();
    if (*now < e->m->expires_ms)
        return false;
    q_remove(&e->link);
    b->npending--;
    if (entry_stored(e))
        submit_logged(mqs_ack_async, e, "expiry");
    entry_free(e);
    return true;
}

/* A box with network subscriptions (docs/broker.md, "Network of
 * brokers"). Local first: a message goes to a network subscription only
 * while no local consumer is ready. A message a network subscription may
 * not have (its path or TTL) is looked past, not waited on; at most
 * NET_SCAN_MAX of those per pass keep the work per loop turn bounded.
 * With no local consumer, those no network subscription may take are
 * parked until the consumers change, and the scan goes on next round;
 * otherwise those further back wait for the next kick of the box. */
static void box_dispatch_net(box *b)
{
    int64_t now = 0;
    size_t skipped = 0, parked = 0;
    /* Replay to a broker in the path: only with no local consumer at all.
     * Then what no network subscription may take is parked. */
    bool no_local = b->nconsumers == b->nnet;
    bool replay_ok = b->type == BOX_QUEUE && no_local && network_replay(b->d);
    for (int p = NPRIO - 1; p >= 0; p--) {
        qlink *h = &b->pending[p];
        for (qlink *l = h->next; l != h;) {
            entry *e = container_of(l, entry, link);
            l = l->next; /* e leaves the list below */
            if (drop_expired(b, e, &now))
                continue;
            sub *s = NULL;
            bool net_ready = false;
            for (qlink *k = b->consumers.next; k != &b->consumers;
                 k = k->next) {
                sub *cand = container_of(k, sub, blink);
                if (!cand->net_peer && sub_ready(cand)) {
                    s = cand;
                    break;
                }
            }
            const char *path = s ? NULL : msg_hdr(e->m, NET_HDR_PATH);
            bool any = false; /* some network subscription may take it */
            for (qlink *k = b->consumers.next; !s && k != &b->consumers;
                 k = k->next) {
                sub *cand = container_of(k, sub, blink);
                if (!cand->net_peer)
                    continue;
                bool ready = sub_ready(cand);
                net_ready |= ready;
                if (!net_path_eligible(path, cand->net_peer, cand->net_ttl,
                                       replay_ok))
                    continue;
                any = true;
                if (ready)
                    s = cand;
            }
            if (!s) {
                if (!net_ready)
                    return; /* nobody can take anything */
                if (no_local && !any) {
                    q_remove(&e->link);
                    q_push_back(&b->parked[p], &e->link);
                    b->nparked++;
                    parked++;
                }
                if (++skipped >= NET_SCAN_MAX) {
                    /* Enough for this round; with some parked, the rest
                     * is looked at in the next one. */
                    if (parked && !b->dirty) {
                        b->dirty = true;
                        q_push_back(&B.later_boxes, &b->dirty_link);
                    }
                    return;
                }
                continue;
            }
            if (!dmark_covers(b, e))
                return; /* kicked again once its mark is stored */
            q_remove(&s->blink);
            q_push_back(&b->consumers, &s->blink);
            deliver(e, s);
        }
    }
}

static void box_read(box *b, size_t room);
static size_t box_window(const box *b);
static void box_dispatch_mem(box *b);

static void box_dispatch(box *b)
{
    box_dispatch_mem(b);
    /* The window runs low while consumers are there: the next page. The
     * window is what the consumers may hold (their prefetch), so a page
     * is read while they work through the one before. */
    if (b->paged && !b->pg_reading && !b->pg_retry_ms && b->nconsumers &&
        box_pending_bytes(b) < page_out_bytes() / 2) {
        size_t want = box_window(b);
        if (b->npending < want)
            box_read(b, want - b->npending + PAGE_LOW);
    }
}

/* Messages b keeps pending in memory while paged: its consumers' prefetch
 * (an auto-ack consumer counts a page), within PAGE_LOW..PAGE_ROWS_MAX. */
static size_t box_window(const box *b)
{
    size_t w = 0;
    for (qlink *k = b->consumers.next; k != &b->consumers; k = k->next) {
        const sub *s = container_of(k, sub, blink);
        w += 2 * (s->ack == ACK_AUTO ? PAGE_ROWS : s->prefetch);
        if (w >= PAGE_ROWS_MAX)
            return PAGE_ROWS_MAX;
    }
    return w < PAGE_ROWS ? PAGE_ROWS : w;
}

static void box_dispatch_mem(box *b)
{
    if (b->nnet) {
        box_dispatch_net(b);
        return;
    }
    int64_t now = 0;
    while (b->npending && b->nconsumers) {
        entry *e = box_head(b);
        if (drop_expired(b, e, &now))
            continue;
        if (!dmark_covers(b, e))
            break; /* its mark is being stored: the box is kicked then */
        sub *s = NULL;
        for (qlink *l = b->consumers.next; l != &b->consumers; l = l->next) {
            sub *cand = container_of(l, sub, blink);
            if (sub_ready(cand)) {
                s = cand;
                break;
            }
        }
        if (!s)
            break;
        /* Round-robin: the served consumer goes to the back. */
        q_remove(&s->blink);
        q_push_back(&b->consumers, &s->blink);
        deliver(e, s);
    }
}

size_t boxes_dispatch(void)
{
    size_t n = 0;
    /* Boxes that stopped at their scan limit go on now: at most a few
     * rounds per loop turn (broker_run), so the work stays bounded. */
    while (!q_empty(&B.later_boxes)) {
        qlink *l = B.later_boxes.next;
        q_remove(l);
        q_push_back(&B.dirty_boxes, l);
    }
    while (!q_empty(&B.dirty_boxes)) {
        box *b = container_of(B.dirty_boxes.next, box, dirty_link);
        q_remove(&b->dirty_link);
        b->dirty = false;
        box_dispatch(b);
        n++;
    }
    return n;
}

void dest_publish(dest *d, msg *m, uint64_t snapshot)
{
    /* Arrival order in memory is publish order: redeliveries sort by it,
     * and a message stored while a page was being read may reach the loop
     * after that page's (younger) entries. */
    m->seq = ++B.seq;
    if (d->kind == MQS_QUEUE) {
        box_put(&d->qbox, m);
        return;
    }
    for (qlink *l = d->boxes.next; l != &d->boxes; l = l->next) {
        box *b = container_of(l, box, dlink);
        /* A durable subscription created after the store write was
         * submitted did not get the message in the store either. */
        if (b->type == BOX_DURABLE && m->id && b->created_seq > snapshot)
            continue;
        /* A live network subscription never takes a message it may not
         * forward (it would wait there for nobody): topics do not
         * replay. */
        if (b->nnet && !network_eligible(container_of(b->consumers.next,
                                                      sub, blink),
                                         m, false))
            continue;
        box_put(b, m);
    }
}

/* ------------------------------------------------------------------------
 * Paging (docs/broker.md "Paging"; the argument is in docs/architecture.md
 * "Broker paging")
 *
 * A queue box or durable box holds a window of its stored messages; the
 * rest stays in the store and is read in pages, in delivery order, while
 * consumers need them. Positions are (priority, store id) in delivery
 * order: higher priority first, then lower id. While a box is paged,
 * (pg_prio, pg_id) splits the stored messages: at or before it they are in
 * memory (or delivered, or consumed), after it they are in the store only.
 *
 * Page reads run on the store's writer in order with the writes
 * (mqs_page_async), and completions reach this loop in that order. So when
 * a stored message's completion is handled here, every page read that can
 * have seen it has been applied already, and every read that has not seen
 * it starts later. That makes one rule enough (box_put): a stored message
 * after the split comes from the store, one before it goes to memory.
 * ---------------------------------------------------------------------- */


/* The page as the writer thread copied it (rows, then one arena). */
typedef struct prow {
    int64_t id, expires_ms;
    int priority;
    int32_t redeliveries;
    size_t off, hlen, blen;
} prow;
typedef struct page {
    char *dest; /* the destination's full name: looked up again */
    int64_t sub_id;
    prow *rows;
    size_t n;
    unsigned char *arena;
    bool end;
    int64_t t0; /* submitted (mono ms), for the debug log */
} page;

/* Is (p, id) after (cp, cid) in delivery order? */
static bool pos_after(int p, int64_t id, int cp, int64_t cid)
{
    return p < cp || (p == cp && id > cid);
}

/* Memory held per box before its stored tail goes back to the store, and
 * what is kept after. Half of max-dest-bytes leaves the other half to
 * what must stay in memory (delivered, non-persistent, being stored). */
static size_t page_out_bytes(void) { return B.cfg.max_dest_bytes / 2; }

/* What paging is about: bytes waiting in memory, not those delivered. */
static size_t box_pending_bytes(const box *b) { return b->bytes - b->dbytes; }

void box_set_paged(box *b)
{
    b->paged = true;
    b->pg_prio = NPRIO;
    b->pg_id = 0;
}

/* The stored tail of b (lowest priority, newest first) leaves memory until
 * b holds `keep` bytes: it stays in the store and is read back in pages.
 * Stops at a delivered entry's position: every stored message at or before
 * the split must be in memory, and delivered ones cannot leave. */
static void box_trim(box *b, size_t keep)
{
    if (b->type == BOX_TOPIC || b->pg_reading || box_pending_bytes(b) <= keep)
        return;
    box_unpark(b);
    /* The latest delivered stored entry bounds the split from below. */
    int dp = NPRIO;
    int64_t did = 0;
    for (qlink *k = b->consumers.next; k != &b->consumers; k = k->next) {
        sub *s = container_of(k, sub, blink);
        for (qlink *l = s->unacked.next; l != &s->unacked; l = l->next) {
            entry *e = container_of(l, entry, link);
            if (entry_stored(e) && pos_after(e->m->priority, e->m->id, dp, did)) {
                dp = e->m->priority;
                did = e->m->id;
            }
        }
    }
    size_t evicted = 0;
    int sp = -1;
    int64_t sid = 0;
    for (int p = 0; p < NPRIO && box_pending_bytes(b) > keep; p++) {
        qlink *h = &b->pending[p];
        for (qlink *l = h->prev; l != h && box_pending_bytes(b) > keep;) {
            entry *e = container_of(l, entry, link);
            l = l->prev;
            if (!entry_stored(e))
                continue; /* not in the store: it stays */
            if (!pos_after(e->m->priority, e->m->id, dp, did))
                goto done;
            q_remove(&e->link);
            b->npending--;
            sp = e->m->priority;
            sid = e->m->id;
            entry_free(e);
            evicted++;
        }
    }
done:
    if (!evicted)
        return;
    /* Just before the earliest evicted one: ids are integers. */
    if (!b->paged || pos_after(b->pg_prio, b->pg_id, sp, sid - 1)) {
        b->pg_prio = sp;
        b->pg_id = sid - 1;
    }
    if (!b->paged)
        log_msg(LOG_INFO, "paging: %s%s%s holds more than %zu bytes in "
                "memory: %zu stored messages left to the store, read back "
                "in pages", b->d->name, b->name ? " subscription " : "",
                b->name ? b->name : "", page_out_bytes(), evicted);
    b->paged = true;
}

/* Every durable box of topic d down to keep pending bytes. */
static void dest_trim(dest *d, size_t keep)
{
    for (qlink *l = d->boxes.next; l != &d->boxes; l = l->next) {
        box *b = container_of(l, box, dlink);
        if (b->type == BOX_DURABLE)
            box_trim(b, keep);
    }
}

/* A message for b, once stored (or not persistent): to memory, unless b
 * is paged and it comes after the split (the store gives it back). */
static void box_put(box *b, msg *m)
{
    if (b->paged && m->id && b->type != BOX_TOPIC &&
        pos_after(m->priority, m->id, b->pg_prio, b->pg_id))
        return;
    entry_add(b, m);
    /* Over --max-memory every box gives back all the store holds (and
     * pages_tick trims the others): consumers read it again in pages. */
    if (mem_full())
        box_trim(b, 0);
    else if (box_pending_bytes(b) > page_out_bytes())
        box_trim(b, page_out_bytes() / 2);
    /* Producers pause on the destination's total: a topic's durable
     * subscriptions share it, so they give back their share. */
    if (b->d->bytes > page_out_bytes() && b->d->ndurable > 1)
        dest_trim(b->d, page_out_bytes() / 2 / b->d->ndurable);
}

/* Writer thread: copy the page for the loop (msgs are valid only now). */
static void page_cb(void *ud, int rc, const mqs_message *msgs, size_t n,
                    int end, const char *errmsg)
{
    op *o = ud;
    page *pg = o->pg;
    if (!rc && n) {
        size_t total = 0;
        for (size_t i = 0; i < n; i++)
            total += msgs[i].headers_len + msgs[i].body_len;
        pg->rows = xmalloc(n * sizeof *pg->rows);
        pg->arena = xmalloc(total ? total : 1);
        size_t off = 0;
        for (size_t i = 0; i < n; i++) {
            const mqs_message *m = &msgs[i];
            pg->rows[i] = (prow){m->id, m->expires_ms, m->priority,
                                 m->redeliveries, off, m->headers_len,
                                 m->body_len};
            if (m->headers_len)
                memcpy(pg->arena + off, m->headers, m->headers_len);
            off += m->headers_len;
            if (m->body_len)
                memcpy(pg->arena + off, m->body, m->body_len);
            off += m->body_len;
        }
        pg->n = n;
    }
    pg->end = end != 0;
    op_complete(o, rc, errmsg);
}

/* A store request about b (a page read, a dispatch mark) that completes
 * on the loop: it names b by destination and subscription, looked up
 * again then (page_box), since b may be gone by that time. */
static op *box_op(box *b, op_type type)
{
    op *o = op_new(type, NULL, NULL);
    o->pg = xcalloc(1, sizeof *o->pg);
    o->pg->dest = xstrdup(b->d->name);
    o->pg->sub_id = b->type == BOX_DURABLE ? b->sub_id : 0;
    o->pending = 1;
    return o;
}

/* A read or mark of b failed: pages_tick kicks b again in a while. */
static void box_retry_later(box *b)
{
    if (!b->pg_retry_ms)
        B.page_failed++;
    b->pg_retry_ms = mono_ms() + PAGE_RETRY_MS;
}

static void box_read(box *b, size_t room)
{
    dest *d = b->d;
    op *o = box_op(b, OP_PAGE);
    o->pg->t0 = mono_ms();
    size_t bytes = B.cfg.max_dest_bytes / 8;
    size_t rows = room < PAGE_ROWS ? PAGE_ROWS
                  : room > PAGE_ROWS_MAX ? PAGE_ROWS_MAX : room;
    mqs_page_req req = {d->kind, d->store_name, o->pg->sub_id, b->pg_prio,
                        b->pg_id, rows,
                        bytes < (4u << 20) ? bytes : (4u << 20)};
    int rc = mqs_page_async(B.store, &req, page_cb, o);
    if (rc) {
        broker_log_store_failure("page read", rc);
        page_op_free(o);
        free(o);
        box_retry_later(b);
        return;
    }
    b->pg_reading = true;
}

void page_op_free(op *o)
{
    if (!o->pg)
        return;
    free(o->pg->dest);
    free(o->pg->rows);
    free(o->pg->arena);
    free(o->pg);
    o->pg = NULL;
}

static box *page_box(const page *pg)
{
    dest *d = dest_get(pg->dest, false);
    if (!d)
        return NULL;
    return pg->sub_id ? dest_find_durable_id(d, pg->sub_id) : &d->qbox;
}

void page_apply(op *o, bool live)
{
    page *pg = o->pg;
    box *b = live ? page_box(pg) : NULL;
    if (!b || !b->pg_reading) {
        page_op_free(o);
        return;
    }
    b->pg_reading = false;
    if (o->rc) {
        log_msg(LOG_WARN, "paging: reading %s%s%s from the store failed: "
                "%s; retrying in %d ms", b->d->name,
                b->name ? " subscription " : "", b->name ? b->name : "",
                o->err ? o->err : mqs_strerror(o->rc), PAGE_RETRY_MS);
        box_retry_later(b);
        o->rc = 0;
        page_op_free(o);
        return;
    }
    for (size_t i = 0; i < pg->n; i++) {
        const prow *r = &pg->rows[i];
        const char *h = (const char *)pg->arena + r->off;
        bool ok = msg_hdrs_valid(h, r->hlen);
        if (!ok)
            log_msg(LOG_WARN, "paging: message %" PRId64 " has headers in "
                    "an unknown encoding; delivering it without them",
                    r->id);
        msg *m = msg_new(ok ? h : NULL, ok ? r->hlen : 0, h + r->hlen,
                         r->blen);
        /* Not noted in the duplicate audits: a drain of old messages
         * from many producers would push live ones out of them. The
         * newest messages were read into them at takeover. */
        m->id = r->id;
        m->persistent = true;
        m->priority = r->priority < 0 ? 0
                      : r->priority >= NPRIO ? NPRIO - 1 : r->priority;
        m->expires_ms = r->expires_ms;
        entry *e = entry_add(b, m);
        msg_unref(m);
        /* Delivered before: nacked (the store counts NACKs), covered by
         * the previous master's dispatch mark, or by this term's. */
        int p = m->priority;
        if (r->redeliveries > 0 || r->id <= b->hloaded[p] ||
            r->id <= b->disp_max[p])
            e->redelivered = true;
        /* Without dispatch marks the store also counts first deliveries. */
        e->nacks = (uint32_t)r->redeliveries -
                   (no_dmarks && r->redeliveries > 0 ? 1 : 0);
    }
    log_msg(LOG_DEBUG, "paging: %s%s%s: %zu messages read in %" PRId64
            " ms%s", b->d->name, b->name ? " subscription " : "",
            b->name ? b->name : "", pg->n, mono_ms() - pg->t0,
            pg->end ? " (the rest of it)" : "");
    if (pg->n) {
        b->pg_prio = pg->rows[pg->n - 1].priority;
        b->pg_id = pg->rows[pg->n - 1].id;
    }
    if (pg->end)
        b->paged = false; /* from now on every new message comes here */
    page_op_free(o);
    box_kick(b);
    if (box_pending_bytes(b) > page_out_bytes())
        box_trim(b, page_out_bytes() / 2);
    gc_check(b->d);
}

static void page_retry(box *b, void *ud)
{
    int64_t now = *(const int64_t *)ud;
    if (b->pg_retry_ms && now >= b->pg_retry_ms) {
        b->pg_retry_ms = 0;
        B.page_failed--;
        box_kick(b);
    }
}

static void trim_all(box *b, void *ud)
{
    (void)ud;
    box_trim(b, 0);
}

static void boxes_each(void (*fn)(box *, void *), void *ud);

void pages_tick(int64_t now)
{
    /* Over --max-memory with producers paused, no box_put trims: what the
     * store holds leaves memory here, every box, so they can resume. */
    if (B.mem_over)
        boxes_each(trim_all, NULL);
    if (B.page_failed)
        boxes_each(page_retry, &now);
}

/* ------------------------------------------------------------------------
 * Dispatch marks (docs/broker.md "Redelivered flag")
 *
 * A message must come back flagged redelivered after a failover if it was
 * delivered before. Writing that per delivery is a row write per message
 * (the third, beside insert and delete). Instead each box keeps, per
 * priority, a mark in the store: "no stored message above this id was
 * delivered". A stored message is written to a consumer only once the
 * mark covers it; when it does not, the mark is raised to its id plus
 * DMARK_AHEAD (one store write for the next DMARK_AHEAD ids of that
 * priority) and the box waits for that commit. Within a priority a box
 * delivers in id order, so after a crash every message at or below the
 * mark may have been delivered: the new master flags those. The flag is
 * never missing; it may be set on a message that was not delivered yet,
 * at most DMARK_AHEAD ids past the last delivered one (JMS allows it:
 * redelivered means "may have been delivered").
 *
 * The marks live in the store's producer-mark table (mark = max(mark, v))
 * under names no client can use: "mq-dispatch:<hash of the box>:<prio>".
 * ---------------------------------------------------------------------- */

#define DMARK_AHEAD 1024
#define DMARK_PREFIX "mq-dispatch:"


bool dmark_name(const char *producer)
{
    return !strncmp(producer, DMARK_PREFIX, sizeof DMARK_PREFIX - 1);
}

static uint64_t box_key(const box *b)
{
    char k[300]; /* kind, subscription id, name of at most 255 bytes */
    snprintf(k, sizeof k, "%c%" PRId64 ":%s", b->d->kind == MQS_QUEUE ? 'q' : 't',
             b->type == BOX_DURABLE ? b->sub_id : 0, b->d->store_name);
    return str_key(k);
}

static void dmark_format(const box *b, int p, char *out, size_t n)
{
    snprintf(out, n, DMARK_PREFIX "%016" PRIx64 ":%d", box_key(b), p);
}

static void dmark_cb(void *ud, int rc, int64_t id, const char *errmsg)
{
    (void)id;
    op_complete(ud, rc, errmsg);
}

static void dmark_submit(box *b, int p, int64_t v)
{
    char name[64];
    dmark_format(b, p, name, sizeof name);
    op *o = box_op(b, OP_DMARK);
    o->id = v;
    o->pseq = (uint64_t)p;
    int rc = mqs_mark_async(B.store, name, v, dmark_cb, o);
    if (rc) {
        page_op_free(o);
        free(o);
        if (rc == MQS_ENOTSUP) {
            /* A backend module without marks (ABI before 2.1): each first
             * delivery is counted in the store instead (deliver). */
            log_msg(LOG_WARN, "the store cannot keep dispatch marks (%s): "
                    "every first delivery is written to the store instead",
                    mqs_errmsg(B.store));
            no_dmarks = true;
            box_kick(b);
            return;
        }
        broker_log_store_failure("dispatch mark", rc);
        box_retry_later(b);
        return;
    }
    b->hmark_busy |= (uint16_t)(1u << p);
}

/* May e be written to a consumer now? A stored message needs its box's
 * mark to cover it; if not, one is stored first (and false until then). */
static bool dmark_covers(box *b, const entry *e)
{
    if (!entry_stored(e) || no_dmarks)
        return true;
    int p = e->m->priority;
    if (e->m->id <= b->hmark[p])
        return true;
    if (!(b->hmark_busy & (1u << p)) && !b->pg_retry_ms)
        dmark_submit(b, p, e->m->id + DMARK_AHEAD);
    return false;
}

void dmark_apply(op *o, bool live)
{
    box *b = live ? page_box(o->pg) : NULL;
    int p = (int)o->pseq;
    if (b) {
        b->hmark_busy &= (uint16_t)~(1u << p);
        if (o->rc) {
            log_msg(LOG_WARN, "dispatch mark of %s%s%s failed: %s; its "
                    "deliveries wait, retrying in %d ms", b->d->name,
                    b->name ? " subscription " : "", b->name ? b->name : "",
                    o->err ? o->err : mqs_strerror(o->rc), PAGE_RETRY_MS);
            box_retry_later(b);
        } else {
            if (o->id > b->hmark[p])
                b->hmark[p] = o->id;
            box_kick(b);
        }
    }
    o->rc = 0;
    page_op_free(o);
}

/* Takeover: boxes by key, then every mark of ours. */
typedef struct dmload {
    idmap boxes; /* box_key -> box */
    size_t n;
} dmload;

static int dmark_load_one(void *ud, const char *producer, int64_t v)
{
    dmload *x = ud;
    if (!dmark_name(producer))
        return 0;
    const char *k = producer + sizeof DMARK_PREFIX - 1;
    char *end;
    uint64_t key = strtoull(k, &end, 16);
    if (*end != ':')
        return 0;
    long p = strtol(end + 1, &end, 10);
    if (*end || p < 0 || p >= NPRIO)
        return 0;
    box *b = idmap_get(&x->boxes, key);
    if (!b)
        return 0; /* a box gone (removed subscription): the prune takes it */
    b->hloaded[p] = b->hmark[p] = v;
    x->n++;
    return 0;
}

static void boxes_each(void (*fn)(box *, void *), void *ud)
{
    for (qlink *l = B.dests.next; l != &B.dests; l = l->next) {
        dest *d = container_of(l, dest, link);
        if (d->kind == MQS_QUEUE)
            fn(&d->qbox, ud);
        for (qlink *k = d->boxes.next; k != &d->boxes; k = k->next) {
            box *b = container_of(k, box, dlink);
            if (b->type == BOX_DURABLE)
                fn(b, ud);
        }
    }
}

static void key_box(box *b, void *ud)
{
    idmap_put(&((dmload *)ud)->boxes, box_key(b), b);
}

void dmarks_load(void)
{
    dmload x = {{0}, 0};
    boxes_each(key_box, &x);
    int rc = mqs_mark_foreach(B.store, dmark_load_one, &x);
    if (rc && rc != MQS_ENOTSUP)
        broker_log_store_failure("dispatch mark load", rc);
    idmap_free(&x.boxes);
    if (x.n)
        log_msg(LOG_INFO, "recovery: %zu dispatch marks loaded (messages at "
                "or below them come back flagged redelivered)", x.n);
}

/* Marks a week idle are pruned with the producers' (audit.c): the loaded
 * ones are written again, so a box that delivered nothing for a week keeps
 * its flags. */
static void refresh_box(box *b, void *ud)
{
    (void)ud;
    for (int p = 0; p < NPRIO; p++)
        if (b->hloaded[p] && !(b->hmark_busy & (1u << p)))
            dmark_submit(b, p, b->hloaded[p]);
}

void dmarks_refresh(void) { boxes_each(refresh_box, NULL); }
