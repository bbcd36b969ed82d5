/* stomp.c - what each client frame does: CONNECT, SEND, SUBSCRIBE,
 * UNSUBSCRIBE, ACK, NACK, BEGIN, COMMIT, ABORT, DISCONNECT.
 *
 * Rules kept throughout: a handler never closes the connection itself (it
 * sends ERROR, which closes it after flushing), and a RECEIPT goes out only
 * once what the frame asked for is done, in the store when it involves
 * the store. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker.h"

#define MAX_TXNS_PER_CONN 64

static const char *receipt_of(const frame *f)
{
    return frame_get(f, "receipt");
}

/* Value of a required header, or NULL after sending the ERROR. */
static const char *need(conn *c, const frame *f, const char *name)
{
    const char *v = frame_get(f, name);
    if (!v || !*v) {
        conn_error(c, receipt_of(f), "missing header",
                   "%s frame needs the header '%s'", f->command, name);
        return NULL;
    }
    return v;
}

/* A receipt for a frame that needed no store write: still queued behind
 * earlier pending ones, so receipts keep frame order. */
static void receipt_now(conn *c, const frame *f)
{
    const char *r = receipt_of(f);
    if (r && c->state == CS_OPEN)
        ticket_done(c, ticket_add(c, r, stomp_cmd_name(f->cmd)), 0, NULL);
}

static bool parse_u64(const char *s, uint64_t *out)
{
    if (!s || *s < '0' || *s > '9')
        return false;
    uint64_t v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return *s == '\0';
}

/* ------------------------------------------------------------------------
 * CONNECT / STOMP
 * ---------------------------------------------------------------------- */

static int best_version(const char *list)
{
    int best = 0;
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ')
            e++;
        size_t n = (size_t)(e - p);
        int v = 0;
        if (n == 3 && !strncmp(p, "1.0", 3))
            v = STOMP_10;
        else if (n == 3 && !strncmp(p, "1.1", 3))
            v = STOMP_11;
        else if (n == 3 && !strncmp(p, "1.2", 3))
            v = STOMP_12;
        if (v > best)
            best = v;
        p = e;
    }
    return best;
}

static void connect_finish(conn *c);

static void on_connect(conn *c, const frame *f)
{
    const char *accept = frame_get(f, "accept-version");
    int version = accept ? best_version(accept) : STOMP_10;
    if (!version) {
        conn_error_hdr(c, "version", "1.0,1.1,1.2", "unsupported version",
                       "accept-version '%.64s' names no version this broker "
                       "speaks: 1.0, 1.1, 1.2", accept);
        return;
    }
    int64_t cx = 0, cy = 0;
    const char *hb = frame_get(f, "heart-beat");
    if (hb && version >= STOMP_11) {
        const char *comma = strchr(hb, ',');
        uint64_t a, b;
        char first[24];
        size_t n = comma ? (size_t)(comma - hb) : 0;
        if (!comma || n >= sizeof first)
            goto bad_hb;
        memcpy(first, hb, n);
        first[n] = '\0';
        if (!parse_u64(first, &a) || !parse_u64(comma + 1, &b) ||
            a > INT32_MAX || b > INT32_MAX)
            goto bad_hb;
        cx = (int64_t)a;
        cy = (int64_t)b;
    }
    c->version = version;
    c->parser.version = version;
    /* Each direction runs at the slower of what one side can do and the
     * other wants; 0 on either side turns it off. */
    c->hb_send_ms = B.cfg.hb_send_ms && cy
                        ? (B.cfg.hb_send_ms > cy ? B.cfg.hb_send_ms : cy)
                        : 0;
    c->hb_recv_ms = B.cfg.hb_recv_ms && cx
                        ? (B.cfg.hb_recv_ms > cx ? B.cfg.hb_recv_ms : cx)
                        : 0;
    const char *cid = frame_get(f, "client-id");
    if (cid && *cid)
        c->client_id = xstrdup(cid);
    c->connect_accept = accept != NULL;
    /* A network connection (another broker's bridge, or our own). */
    const char *peer = frame_get(f, "mq-bridge");
    if (peer) {
        if (!config_broker_name_ok(peer)) {
            conn_error(c, NULL, "invalid mq-bridge",
                       "mq-bridge '%.80s' is not a broker name (1 to 64 of "
                       "A-Z a-z 0-9 . _ : -)", peer);
            return;
        }
        c->bridge = xstrdup(peer);
    }
    const char *token = frame_get(f, "mq-bridge-token");
    if (token) {
        /* Compared in constant time; never logged. */
        unsigned char diff = strlen(token) != strlen(B.bridge_token);
        for (size_t i = 0; !diff && token[i]; i++)
            diff |= (unsigned char)(token[i] ^ B.bridge_token[i]);
        if (diff || !peer) {
            conn_error(c, NULL, "invalid mq-bridge-token",
                       "mq-bridge-token is only for this broker's own "
                       "bridges (with mq-bridge)");
            return;
        }
        c->bridge_internal = true; /* admin without a password */
        connect_finish(c);
        return;
    }
    const char *login = frame_get(f, "login");
    if (auth_enabled() && login && *login) {
        /* The slow hash runs on the verifier thread; nothing more is read
         * from this connection until it answers (stomp_connect_done). */
        op *o = op_new(OP_AUTH, c, NULL);
        const char *pass = frame_get(f, "passcode");
        if (auth_submit(login, pass ? pass : "", o)) {
            c->inflight--;
            free(o);
            conn_error(c, NULL, "server busy",
                       "too many logins are being checked right now; try "
                       "again in a moment");
            return;
        }
        c->user = xstrndup(login, 128);
        c->authenticating = true;
        return;
    }
    if (auth_enabled() && !B.cfg.allow_anonymous) {
        conn_error(c, NULL, "authentication required",
                   "this broker requires the login and passcode headers on "
                   "CONNECT");
        return;
    }
    connect_finish(c);
    return;
bad_hb:
    conn_error(c, NULL, "invalid heart-beat",
               "heart-beat '%.64s' is not two non-negative numbers 'cx,cy'",
               hb);
}

void stomp_connect_done(conn *c, int rc)
{
    c->authenticating = false;
    if (rc) {
        log_msg(LOG_WARN, "conn %" PRIu64 " (%s): login as '%s' refused%s",
                c->serial, c->peer, c->user,
                rc == MQS_ECLOSED ? " (shutting down)" : "");
        free(c->user);
        c->user = NULL;
        /* Unknown user or wrong passcode: the same answer for both. */
        conn_error(c, NULL, "authentication failed",
                   "wrong login or passcode");
        return;
    }
    connect_finish(c);
    conn_process_input(c); /* frames the client pipelined behind CONNECT */
}

static void connect_finish(conn *c)
{
    /* Another broker's bridge reads and writes every destination it
     * forwards: with logins it needs the admin right. */
    if (c->bridge && !c->bridge_internal && auth_enabled() &&
        (!c->user || !auth_allowed(c->user, AUTH_ADMIN, ""))) {
        conn_error(c, NULL, "access denied",
                   "user '%.128s' has no admin right, which a network "
                   "connection (mq-bridge) needs (see --acl)",
                   c->user ? c->user : "anonymous");
        return;
    }
    c->state = CS_OPEN;
    int version = c->version;

    /* CONNECTED is never escaped (1.0 compatibility). */
    char tmp[64];
    frame_begin(&c->out, "CONNECTED");
    if (c->connect_accept) {
        snprintf(tmp, sizeof tmp, "1.%d", version - 10);
        frame_put(&c->out, STOMP_10, "version", tmp);
    }
    if (version >= STOMP_11) {
        snprintf(tmp, sizeof tmp, "%" PRId64 ",%" PRId64, B.cfg.hb_send_ms,
                 B.cfg.hb_recv_ms);
        frame_put(&c->out, STOMP_10, "heart-beat", tmp);
    }
    frame_put(&c->out, STOMP_10, "server", "mqbroker/" MQBROKER_VERSION);
    snprintf(tmp, sizeof tmp, "%" PRId64 "-%" PRIu64, B.token, c->serial);
    frame_put(&c->out, STOMP_10, "session", tmp);
    if (B.cfg.advertise) /* validated: nothing in it needs escaping */
        frame_put(&c->out, STOMP_10, "mq-brokers", B.cfg.advertise);
    frame_put(&c->out, STOMP_10, "mq-broker-name", B.name); /* validated */
    frame_end(&c->out, NULL, 0, false);
    conn_out_changed(c);
    log_msg(LOG_DEBUG, "conn %" PRIu64 " (%s): connected, STOMP 1.%d, "
            "user %s, client-id %s, heart-beat send %" PRId64 " ms / expect "
            "%" PRId64 " ms", c->serial, c->peer, version - 10,
            c->user ? c->user : "-", c->client_id ? c->client_id : "-",
            c->hb_send_ms, c->hb_recv_ms);
    if (c->bridge)
        log_msg(c->bridge_internal ? LOG_DEBUG : LOG_INFO, "conn %" PRIu64
                " (%s): network connection from broker %s%s", c->serial,
                c->peer, c->bridge, c->bridge_internal ? " (own bridge)" : "");
}

/* Rights: this broker's own bridges may do everything. */
static bool allowed(const conn *c, unsigned right, const char *dn)
{
    return c->bridge_internal || auth_allowed(c->user, right, dn);
}

/* ------------------------------------------------------------------------
 * SEND
 * ---------------------------------------------------------------------- */

/* Headers the broker sets itself on MESSAGE, or that only mean something
 * on the SEND frame. */
static bool reserved_header(const char *name)
{
    static const char *const names[] = {
        "destination", "receipt", "transaction", "content-length",
        "message-id", "subscription", "ack", "redelivered", "persistent"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i]))
            return true;
    return false;
}

/* mq-path and mq-origin are kept from network connections only: from a
 * client (say one re-sending a message it consumed) the message is a new
 * one, produced here. */
static void encode_user_headers(const conn *c, const frame *f, buf *out)
{
    for (size_t i = 0; i < f->nheaders; i++) {
        const frame_header *h = &f->headers[i];
        if (reserved_header(h->name) ||
            (!c->bridge && network_header(h->name)))
            continue;
        bool dup = false; /* the first of repeated headers counts */
        for (size_t j = 0; j < i && !dup; j++)
            dup = !strcmp(f->headers[j].name, h->name);
        if (dup)
            continue;
        buf_add(out, h->name, h->name_len + 1);
        buf_add(out, h->value, h->value_len + 1);
    }
}

static stx *find_txn(conn *c, const char *name)
{
    for (qlink *l = c->txns.next; l != &c->txns; l = l->next) {
        stx *x = container_of(l, stx, link);
        if (!strcmp(x->name, name))
            return x;
    }
    return NULL;
}

/* The frame's transaction, NULL if it has none; *bad after an ERROR. */
static stx *frame_txn(conn *c, const frame *f, bool *bad)
{
    *bad = false;
    const char *name = frame_get(f, "transaction");
    if (!name)
        return NULL;
    stx *x = find_txn(c, name);
    if (!x) {
        conn_error(c, receipt_of(f), "unknown transaction",
                   "%s names transaction '%.128s', which was not begun (or "
                   "already ended) on this connection", f->command, name);
        *bad = true;
    }
    return x;
}

/* Does c hold messages of d delivered and unacked? */
static bool consumes_from(conn *c, const dest *d)
{
    for (qlink *l = c->subs.next; l != &c->subs; l = l->next) {
        const sub *s = container_of(l, sub, clink);
        if (s->b && s->b->d == d && s->nunacked)
            return true;
    }
    return false;
}

bool stomp_audited(const frame *f)
{
    return f->cmd == CMD_SEND && !frame_get(f, "transaction") &&
           (frame_get(f, AUDIT_HDR_PRODUCER) || frame_get(f, NET_HDR_ORIGIN));
}

size_t stomp_store_need(conn *c, const frame *f)
{
    switch (f->cmd) {
    case CMD_SEND: /* buffered in memory inside a transaction */
        return frame_get(f, "transaction")
                   ? 0
                   : f->body_len + B.cfg.max_header_bytes;
    case CMD_COMMIT: {
        const char *name = frame_get(f, "transaction");
        stx *x = name ? find_txn(c, name) : NULL;
        return x ? x->bytes : 0;
    }
    case CMD_NACK: /* may move a message to its dead-letter queue */
        return B.cfg.max_body + B.cfg.max_header_bytes;
    default:
        return 0;
    }
}

/* Producer flow control: stop reading from a connection whose destination
 * holds too much. One that holds messages of that same destination
 * unacked is not paused (its ACKs, behind its SENDs, would never be read:
 * a deadlock); it may go on to twice the limit, then it is cut. */
void maybe_pause(conn *c, dest *d)
{
    if (c->state != CS_OPEN || c->paused_on ||
        (d->bytes < B.cfg.max_dest_bytes && !mem_full()))
        return;
    if (!consumes_from(c, d)) {
        dest_pause(d, c);
        return;
    }
    if (d->bytes >= 2 * B.cfg.max_dest_bytes)
        conn_error(c, NULL, "destination full",
                   "%.300s holds %zu bytes, twice max-dest-bytes, and this "
                   "connection keeps some of its messages unacked: ack them "
                   "before sending more", d->name, d->bytes);
    else if (B.mem_used >= B.cfg.max_memory + B.cfg.max_memory / 4)
        conn_error(c, NULL, "broker memory full",
                   "the broker holds %zu bytes for clients, over "
                   "max-memory, and this connection keeps messages of "
                   "%.300s unacked: ack them before sending more",
                   B.mem_used, d->name);
}

static void deny(conn *c, const char *receipt, unsigned right,
                 const char *dn)
{
    conn_error(c, receipt, "access denied",
               "user '%.128s' has no %s right on %.300s (see --acl)",
               c->user ? c->user : "anonymous", auth_right_name(right), dn);
}

static bool wants_store(const msg *m, const dest *d)
{
    return m->persistent && (d->kind == MQS_QUEUE || d->ndurable > 0);
}

static void on_send(conn *c, const frame *f)
{
    const char *receipt = receipt_of(f);
    const char *dn = need(c, f, "destination");
    if (!dn)
        return;
    mqs_kind kind;
    const char *why = dest_check(dn, &kind);
    if (why) {
        conn_error(c, receipt, "invalid destination", "'%.300s': %s", dn,
                   why);
        return;
    }
    if (!allowed(c, AUTH_WRITE, dn)) {
        deny(c, receipt, AUTH_WRITE, dn);
        return;
    }
    bool bad;
    stx *x = frame_txn(c, f, &bad);
    if (bad)
        return;
    const char *v = frame_get(f, "persistent");
    bool persistent = v && !strcmp(v, "true");
    int prio = MQS_PRIORITY_DEFAULT;
    uint64_t n;
    if ((v = frame_get(f, "priority"))) {
        if (!parse_u64(v, &n) || n > MQS_PRIORITY_MAX) {
            conn_error(c, receipt, "invalid priority",
                       "priority '%.32s' is not a number from 0 to 9", v);
            return;
        }
        prio = (int)n;
    }
    int64_t expires = 0;
    if ((v = frame_get(f, "expires"))) {
        if (!parse_u64(v, &n) || n > INT64_MAX) {
            conn_error(c, receipt, "invalid expires",
                       "expires '%.32s' is not a time in ms since the epoch "
                       "(0 = never)", v);
            return;
        }
        expires = (int64_t)n;
    }
    buf h = {0};
    encode_user_headers(c, f, &h);
    if (persistent && h.len + f->body_len > B.store_max) {
        conn_error(c, receipt, "message too large",
                   "headers + body are %zu bytes; the store takes at most "
                   "%zu", h.len + f->body_len, B.store_max);
        buf_free(&h);
        return;
    }
    msg *m = msg_new(h.p, h.len, f->body, f->body_len);
    buf_free(&h);
    m->persistent = persistent;
    m->priority = prio;
    m->expires_ms = expires;
    dest *d = dest_get(dn, true);

    if (x) {
        if (c->txn_bytes + m->size + sizeof(txitem) > B.cfg.max_dest_bytes) {
            msg_unref(m);
            conn_error(c, receipt, "transaction too large",
                       "the open transactions of this connection would hold "
                       "more than %zu bytes (max-dest-bytes)",
                       B.cfg.max_dest_bytes);
            return;
        }
        txitem *it = xcalloc(1, sizeof *it);
        it->kind = TX_SEND;
        it->m = m; /* takes our reference */
        it->d = d;
        dest_ref(d);
        x->bytes += m->size + sizeof *it;
        c->txn_bytes += m->size + sizeof *it;
        mem_add(m->size + sizeof *it);
        if (mem_full() && !c->paused_on)
            dest_pause(d, c); /* resumed when memory is back */
        q_push_back(&x->items, &it->link);
        receipt_now(c, f);
        return;
    }
    /* A message a bridge forwards again (its RECEIPT was lost): known
     * by mq-origin, answered, not kept twice (network.c). Checked before
     * the producer audit, which would otherwise take its sequence. */
    const char *origin = c->bridge && network_audit_on(d)
                             ? frame_get(f, NET_HDR_ORIGIN)
                             : NULL;
    if (origin && *origin) {
        op *orig = NULL;
        int a = origin_check(origin, &orig);
        if (a != AUDIT_NEW) {
            msg_unref(m);
            log_msg(LOG_DEBUG, "conn %" PRIu64 ": SEND of %s from broker %s "
                    "already held: not stored again", c->serial, origin,
                    c->bridge);
            if (a == AUDIT_DUP) {
                receipt_now(c, f);
            } else {
                op *dup = op_new(OP_DUP, c, ticket_add(c, receipt, "SEND"));
                dup->next_dup = orig->dups;
                orig->dups = dup;
            }
            return;
        }
    } else {
        origin = NULL;
    }
    if (!wants_store(m, d)) {
        if (origin)
            origin_add(origin, NULL);
        dest_publish(d, m, 0);
        msg_unref(m);
        receipt_now(c, f);
        maybe_pause(c, d);
        return;
    }
    /* A replay of a SEND this master already holds: answer, do not store
     * it again (audit.c). Only stored, non-transacted sends are audited:
     * a transaction is not replayed (its COMMIT fails over as rolled
     * back), a non-persistent message does not outlive a failover. */
    const char *producer = frame_get(f, AUDIT_HDR_PRODUCER);
    uint64_t pseq = 0;
    op *orig = NULL;
    if (audit_ids(producer, frame_get(f, AUDIT_HDR_SEQ), &pseq)) {
        int a = audit_check(producer, pseq, &orig);
        if (a != AUDIT_NEW) {
            msg_unref(m);
            log_msg(LOG_DEBUG, "conn %" PRIu64 ": SEND %s seq %" PRIu64
                    " already held: not stored again", c->serial, producer,
                    pseq);
            if (a == AUDIT_DUP) {
                receipt_now(c, f);
                return;
            }
            /* The original's write is still running: this receipt
             * follows its outcome. */
            op *dup = op_new(OP_DUP, c, ticket_add(c, receipt, "SEND"));
            dup->next_dup = orig->dups;
            orig->dups = dup;
            return;
        }
    } else {
        producer = NULL;
    }
    /* Delivered once stored: consumers then ack by its store id, and
     * never see a message the store refused. */
    op *o = op_new(OP_SEND, c, ticket_add(c, receipt, "SEND"));
    if (origin) {
        o->origin = xstrdup(origin);
        origin_add(origin, o);
    }
    if (producer) {
        o->producer = xstrdup(producer);
        o->pseq = pseq;
        audit_inflight(producer, o);
    }
    o->m = m;
    o->d = d;
    dest_ref(d);
    o->seq = ++B.seq;
    o->pending = 1;
    dest_reserve(d, m->size);
    o->store_bytes = m->hdrs_len + m->body_len;
    B.store_bytes += o->store_bytes;
    mqs_msg mm = {kind,    d->store_name, m->hdrs, m->hdrs_len,
                  m->body, m->body_len,   prio,    expires};
    int rc = mqs_enqueue_async(B.store, &mm, op_done_cb, o);
    if (rc)
        op_complete(o, rc, mqs_errmsg(B.store));
    maybe_pause(c, d);
}

/* ------------------------------------------------------------------------
 * SUBSCRIBE / UNSUBSCRIBE
 * ---------------------------------------------------------------------- */

/* By id in constant time; the list walk only when two ids share a key. */
static sub *find_sub(conn *c, const char *id)
{
    sub *s = idmap_get(&c->sub_ids, str_key(id));
    if (!s || !strcmp(s->id, id))
        return s;
    for (qlink *l = c->subs.next; l != &c->subs; l = l->next) {
        s = container_of(l, sub, clink);
        if (!strcmp(s->id, id))
            return s;
    }
    return NULL;
}

static void sub_forget(conn *c, sub *s)
{
    if (idmap_get(&c->sub_ids, str_key(s->id)) == s)
        idmap_del(&c->sub_ids, str_key(s->id));
}

static const char *durable_name(const frame *f)
{
    const char *n = frame_get(f, "durable-subscription-name");
    if (!n)
        n = frame_get(f, "activemq.subscriptionName");
    return n && *n ? n : NULL;
}

/* client-id:name, and with logins user/client-id:name: a durable
 * subscription belongs to the user that made it, so another user reusing
 * the client-id gets a subscription of their own, never this one. */
static char *full_durable_name(const conn *c, const char *name)
{
    buf b = {0};
    if (c->user) {
        buf_adds(&b, c->user);
        buf_addc(&b, '/');
    }
    buf_adds(&b, c->client_id);
    buf_addc(&b, ':');
    buf_adds(&b, name);
    buf_addc(&b, '\0');
    return b.p;
}

/* SUBSCRIBE /mq/demand or /mq/bridges (network.c). True when handled. */
static bool subscribe_special(conn *c, const frame *f, const char *dn)
{
    const char *receipt = receipt_of(f);
    bool demand = !strcmp(dn, "/mq/demand");
    if (!demand && strcmp(dn, "/mq/bridges"))
        return false;
    const char *id = frame_get(f, "id");
    if (!id || !*id) {
        need(c, f, "id");
        return true;
    }
    if (find_sub(c, id) || (c->demand_id && !strcmp(c->demand_id, id))) {
        conn_error(c, receipt, "duplicate subscription id",
                   "subscription id '%.128s' is already in use on this "
                   "connection", id);
        return true;
    }
    if (demand) {
        if (!c->bridge) {
            conn_error(c, receipt, "network connection required",
                       "destination /mq/demand is only for network "
                       "connections (CONNECT with mq-bridge)");
        } else if (c->demand_id) {
            conn_error(c, receipt, "duplicate /mq/demand",
                       "this connection already holds a /mq/demand "
                       "subscription ('%.128s')", c->demand_id);
        } else {
            network_demand_subscribe(c, id);
            receipt_now(c, f);
        }
        return true;
    }
    if (auth_enabled() && !c->bridge_internal &&
        (!c->user || !auth_allowed(c->user, AUTH_ADMIN, ""))) {
        deny(c, receipt, AUTH_ADMIN, dn);
        return true;
    }
    network_bridges_snapshot(c, id); /* a snapshot: nothing stays */
    receipt_now(c, f);
    return true;
}

/* A durable SUBSCRIBE or UNSUBSCRIBE waiting for the store (OP_SUBCREATE,
 * OP_SUBREMOVE): what to do with the answer. The connection reads nothing
 * meanwhile (c->store_wait): its next frames may name this subscription. */
typedef struct subreq {
    char *full;    /* the durable box's name, client-id:name */
    char *sub_id;  /* the SUBSCRIBE's id */
    char *receipt; /* the frame's receipt, or NULL */
    int ack;
    size_t prefetch;
    box *b;        /* OP_SUBREMOVE: the box whose store row goes */
    bool last;     /* OP_SUBREMOVE: the frame's last removal answers it */
} subreq;

static void subreq_free(subreq *r)
{
    if (!r)
        return;
    free(r->full);
    free(r->sub_id);
    free(r->receipt);
    free(r);
}

static void receipt_str(conn *c, const char *r, const char *what)
{
    if (r && c->state == CS_OPEN)
        ticket_done(c, ticket_add(c, r, what), 0, NULL);
}

/* A new subscription of c on box b (its checks done), attached. */
static void sub_open(conn *c, box *b, const char *id, int ack,
                     size_t prefetch, const char *peer, unsigned ttl)
{
    sub *s = xcalloc(1, sizeof *s);
    s->c = c;
    s->id = xstrdup(id);
    s->ack = ack;
    s->prefetch = prefetch;
    s->net_peer = peer ? xstrdup(peer) : NULL;
    s->net_ttl = ttl;
    q_init(&s->unacked);
    q_push_back(&c->subs, &s->clink);
    c->nsubs++;
    if (!idmap_get(&c->sub_ids, str_key(s->id)))
        idmap_put(&c->sub_ids, str_key(s->id), s);
    sub_attach(s, b);
}

void stomp_sub_created(op *o, bool live)
{
    conn *c = o->c;
    subreq *r = o->sr;
    c->store_wait = false;
    bool open = c->state == CS_OPEN;
    if (live) {
        dest *d = o->d;
        if (o->rc == 0) {
            /* The box exists from the store's commit on, whether or not
             * the client is still there: messages published since are
             * the subscription's in the store too. Those submitted after
             * the create (seq above o->seq) committed after it, so they
             * are its in memory as well; earlier ones are not. */
            box *b = dest_find_durable(d, r->full);
            if (!b) {
                b = box_new_sub(d, BOX_DURABLE, o->id, r->full);
                b->created_seq = o->seq;
                log_msg(LOG_INFO, "durable subscription '%s' on %s created "
                        "(id %" PRId64 ")", r->full, d->name, o->id);
            }
            if (open && (b->nconsumers || b->removing)) {
                conn_error(c, r->receipt, "durable subscription in use",
                           "durable subscription '%.200s' on %.300s already "
                           "has an active subscriber", r->full, d->name);
                open = false;
            } else if (open) {
                sub_open(c, b, r->sub_id, r->ack, r->prefetch, NULL, 1);
                receipt_str(c, r->receipt, "SUBSCRIBE");
            }
        } else if (open) {
            conn_error(c, r->receipt, "cannot create durable subscription",
                       "'%.200s' on %.300s: %s", r->full, d->name,
                       o->err ? o->err : mqs_strerror(o->rc));
            open = false;
        }
        dest_unref(d);
    }
    subreq_free(r);
    o->sr = NULL;
    o->rc = 0; /* answered above */
    if (open)
        conn_process_input(c); /* the frames that waited */
}

void stomp_sub_removed(op *o, bool live)
{
    conn *c = o->c;
    subreq *r = o->sr;
    bool open = c->state == CS_OPEN, last = r->last;
    if (last)
        c->store_wait = false;
    if (live) {
        box *b = r->b;
        dest *d = o->d;
        b->removing = false;
        if (o->rc == 0 || o->rc == MQS_ENOTFOUND) {
            log_msg(LOG_INFO, "durable subscription '%s' on %s removed",
                    b->name, d->name);
            box_free(b);
            if (open && last)
                receipt_str(c, r->receipt, "UNSUBSCRIBE");
        } else if (open) {
            conn_error(c, r->receipt, "cannot remove durable subscription",
                       "'%.200s': %s", b->name,
                       o->err ? o->err : mqs_strerror(o->rc));
            open = false;
        }
        dest_unref(d);
    }
    subreq_free(r);
    o->sr = NULL;
    o->rc = 0;
    if (open && last)
        conn_process_input(c);
}

static void on_subscribe(conn *c, const frame *f)
{
    const char *receipt = receipt_of(f);
    const char *dn = need(c, f, "destination");
    if (!dn)
        return;
    if (!strncmp(dn, "/mq/", 4) && subscribe_special(c, f, dn))
        return;
    mqs_kind kind;
    const char *why = dest_check(dn, &kind);
    if (why) {
        conn_error(c, receipt, "invalid destination", "'%.300s': %s", dn,
                   why);
        return;
    }
    if (!allowed(c, AUTH_READ, dn)) {
        deny(c, receipt, AUTH_READ, dn);
        return;
    }
    const char *id = frame_get(f, "id");
    if (!id || !*id) {
        if (c->version >= STOMP_11) {
            need(c, f, "id");
            return;
        }
        id = dn; /* STOMP 1.0: id is optional */
    }
    if (c->nsubs >= B.cfg.max_subscriptions) {
        conn_error(c, receipt, "too many subscriptions",
                   "this connection already holds %zu subscriptions "
                   "(max-subscriptions)", c->nsubs);
        return;
    }
    if (find_sub(c, id) || (c->demand_id && !strcmp(c->demand_id, id))) {
        conn_error(c, receipt, "duplicate subscription id",
                   "subscription id '%.128s' is already in use on this "
                   "connection", id);
        return;
    }
    const char *a = frame_get(f, "ack");
    int ack;
    if (!a || !strcmp(a, "auto"))
        ack = ACK_AUTO;
    else if (!strcmp(a, "client"))
        ack = ACK_CLIENT;
    else if (!strcmp(a, "client-individual"))
        ack = ACK_INDIVIDUAL;
    else {
        conn_error(c, receipt, "invalid ack mode",
                   "ack '%.64s' is not auto, client or client-individual", a);
        return;
    }
    if (frame_get(f, "selector")) {
        conn_error(c, receipt, "selectors not supported",
                   "this broker does not filter messages; subscribe "
                   "without a selector header");
        return;
    }
    size_t prefetch = B.cfg.prefetch;
    const char *pf = frame_get(f, "activemq.prefetchSize");
    if (!pf)
        pf = frame_get(f, "prefetch");
    if (pf) {
        uint64_t n;
        if (!parse_u64(pf, &n) || n == 0 || n > 1000000) {
            conn_error(c, receipt, "invalid prefetch",
                       "prefetch '%.32s' must be a number from 1 to 1000000",
                       pf);
            return;
        }
        prefetch = (size_t)n;
    }
    /* A network subscription: messages for broker `peer` (network.c). */
    const char *peer = frame_get(f, "mq-bridge");
    unsigned ttl = 1;
    if (peer) {
        const char *t = frame_get(f, "mq-network-ttl");
        uint64_t n = 1;
        if (!c->bridge) {
            conn_error(c, receipt, "network connection required",
                       "the SUBSCRIBE header mq-bridge is only for network "
                       "connections (CONNECT with mq-bridge)");
            return;
        }
        if (!config_broker_name_ok(peer)) {
            conn_error(c, receipt, "invalid mq-bridge",
                       "mq-bridge '%.80s' is not a broker name", peer);
            return;
        }
        if (t && (!parse_u64(t, &n) || n < 1 || n > 255)) {
            conn_error(c, receipt, "invalid mq-network-ttl",
                       "mq-network-ttl '%.32s' must be a number from 1 to "
                       "255", t);
            return;
        }
        if (durable_name(f)) {
            conn_error(c, receipt, "invalid network subscription",
                       "a network subscription (mq-bridge) is not durable");
            return;
        }
        ttl = (unsigned)n;
    }
    dest *d = dest_get(dn, true);
    box *b;
    const char *dname = durable_name(f);
    if (kind == MQS_QUEUE) {
        b = &d->qbox;
    } else if (dname) {
        if (!c->client_id) {
            conn_error(c, receipt, "client-id required",
                       "durable subscription '%.128s' needs a client-id "
                       "header in the CONNECT frame", dname);
            return;
        }
        char *full = full_durable_name(c, dname);
        b = dest_find_durable(d, full);
        if (b && b->nconsumers) {
            conn_error(c, receipt, "durable subscription in use",
                       "durable subscription '%.200s' on %.300s already has "
                       "an active subscriber", full, dn);
            free(full);
            return;
        }
        if (b && b->removing) {
            conn_error(c, receipt, "durable subscription in use",
                       "durable subscription '%.200s' on %.300s is being "
                       "removed; subscribe again once that is answered",
                       full, dn);
            free(full);
            return;
        }
        if (!b) {
            /* Created in the store without blocking the loop: the rest of
             * the SUBSCRIBE (and this connection's next frames) waits for
             * the answer (stomp_sub_created). */
            op *o = op_new(OP_SUBCREATE, c, NULL);
            o->pending = 1;
            o->d = d;
            dest_ref(d);
            o->seq = ++B.seq;
            subreq *r = xcalloc(1, sizeof *r);
            r->full = full;
            r->sub_id = xstrdup(id);
            r->receipt = receipt ? xstrdup(receipt) : NULL;
            r->ack = ack;
            r->prefetch = prefetch;
            o->sr = r;
            int rc = mqs_sub_create_async(B.store, d->store_name, full,
                                          op_done_cb, o);
            if (rc) {
                conn_error(c, receipt, "cannot create durable subscription",
                           "'%.200s' on %.300s: %s", full, dn,
                           mqs_errmsg(B.store));
                c->inflight--;
                dest_unref(d);
                subreq_free(r);
                free(o);
                return;
            }
            c->store_wait = true;
            return;
        }
        free(full);
    } else {
        b = box_new_sub(d, BOX_TOPIC, 0, NULL);
    }
    sub_open(c, b, id, ack, prefetch, peer, ttl);
    receipt_now(c, f);
}

/* Remove durable box b in the store without blocking the loop; the box
 * goes when the store answers (stomp_sub_removed), and with last that
 * answer carries the frame's RECEIPT and lets c read again. false (and an
 * ERROR sent) if it could not even be queued. */
static bool remove_durable(conn *c, const frame *f, box *b, bool last)
{
    op *o = op_new(OP_SUBREMOVE, c, NULL);
    o->pending = 1;
    o->d = b->d;
    dest_ref(o->d);
    subreq *r = xcalloc(1, sizeof *r);
    r->b = b;
    r->last = last;
    const char *receipt = receipt_of(f);
    r->receipt = receipt ? xstrdup(receipt) : NULL;
    o->sr = r;
    b->removing = true;
    int rc = mqs_sub_remove_async(B.store, b->sub_id, op_done_cb, o);
    if (rc) {
        b->removing = false;
        conn_error(c, receipt, "cannot remove durable subscription",
                   "'%.200s': %s", b->name, mqs_errmsg(B.store));
        c->inflight--;
        dest_unref(o->d);
        subreq_free(r);
        free(o);
        return false;
    }
    c->store_wait = true;
    return true;
}

static void on_unsubscribe(conn *c, const frame *f)
{
    const char *id = frame_get(f, "id");
    if ((!id || !*id) && c->version < STOMP_11)
        id = frame_get(f, "destination");
    if (!id || !*id) {
        need(c, f, "id");
        return;
    }
    const char *dname = durable_name(f);
    if (c->demand_id && !strcmp(c->demand_id, id)) {
        network_demand_unsubscribe(c);
        receipt_now(c, f);
        return;
    }
    sub *s = find_sub(c, id);
    if (s) {
        box *b = s->b;
        /* Read before detaching: a live topic box dies with its sub. */
        bool durable = b->type == BOX_DURABLE;
        q_remove(&s->clink);
        sub_forget(c, s);
        c->nsubs--;
        sub_detach(s);
        free(s->id);
        free(s->net_peer);
        free(s);
        /* A plain UNSUBSCRIBE keeps a durable subscription. Removing
         * one answers when the store did. */
        if (dname && durable) {
            remove_durable(c, f, b, true);
            return;
        }
    } else if (dname && c->client_id) {
        /* Removing an inactive durable subscription by name (on every
         * topic without a destination header): the RECEIPT comes with the
         * store's last answer (answers come in submission order). */
        char *full = full_durable_name(c, dname);
        const char *dn = frame_get(f, "destination");
        box *found[64];
        size_t n = 0;
        for (qlink *l = B.dests.next; l != &B.dests && n < 64;) {
            dest *d = container_of(l, dest, link);
            l = l->next;
            if (d->kind != MQS_TOPIC || (dn && strcmp(dn, d->name)))
                continue;
            box *b = dest_find_durable(d, full);
            if (b && !b->nconsumers && !b->removing)
                found[n++] = b;
        }
        free(full);
        for (size_t i = 0; i < n; i++)
            if (!remove_durable(c, f, found[i], i + 1 == n))
                return;
        if (n)
            return;
    } else {
        log_msg(LOG_DEBUG, "conn %" PRIu64 ": UNSUBSCRIBE of unknown "
                "subscription '%s'", c->serial, id);
    }
    receipt_now(c, f);
}

/* ------------------------------------------------------------------------
 * ACK / NACK
 * ---------------------------------------------------------------------- */

/* The delivered message an ACK/NACK names, in constant time: by the
 * numeric `id` (the MESSAGE's ack header), else by message-id through
 * c->mids. Only when the same message-id was delivered to two
 * subscriptions of this connection and the frame names the other one is
 * that subscription's unacked list (at most its prefetch) walked. */
static entry *find_entry(conn *c, const frame *f)
{
    const char *id = frame_get(f, "id");
    uint64_t tag;
    if (id && parse_u64(id, &tag)) {
        entry *e = idmap_get(&c->acks, tag);
        if (e)
            return e;
    }
    /* STOMP 1.0/1.1 name the message by message-id (and subscription);
     * some 1.2 clients put the message-id in `id`. */
    const char *mid = frame_get(f, "message-id");
    if (!mid)
        mid = id;
    if (!mid)
        return NULL;
    const char *sid = frame_get(f, "subscription");
    char idbuf[96];
    entry *e = idmap_get(&c->mids, str_key(mid));
    if (!e)
        return NULL;
    entry_message_id(e, idbuf, sizeof idbuf);
    if (strcmp(idbuf, mid))
        return NULL;
    if (!sid || !strcmp(e->s->id, sid))
        return e;
    sub *s = find_sub(c, sid);
    if (!s)
        return NULL;
    for (qlink *k = s->unacked.next; k != &s->unacked; k = k->next) {
        e = container_of(k, entry, link);
        entry_message_id(e, idbuf, sizeof idbuf);
        if (!strcmp(idbuf, mid))
            return e;
    }
    return NULL;
}

static bool dead_letter(conn *c, entry *e, const char *receipt);

static void txn_add_ref(stx *x, txkind kind, const entry *e)
{
    txitem *it = xcalloc(1, sizeof *it);
    it->kind = kind;
    it->tag = e->tag;
    q_push_back(&x->items, &it->link);
    x->bytes += sizeof *it;
}

/* ACK/NACK items count against the connection's transaction bytes too
 * (a cumulative ACK adds one per message it covers). */
static bool txn_room(conn *c, size_t items, const char *receipt)
{
    if (c->txn_bytes + items * sizeof(txitem) <= B.cfg.max_dest_bytes)
        return true;
    conn_error(c, receipt, "transaction too large",
               "the open transactions of this connection would hold more "
               "than %zu bytes (max-dest-bytes)", B.cfg.max_dest_bytes);
    return false;
}

static void on_ack(conn *c, const frame *f, bool nack)
{
    const char *receipt = receipt_of(f);
    if (c->version >= STOMP_12) {
        if (!need(c, f, "id"))
            return;
    } else if (!frame_get(f, "message-id") && !frame_get(f, "id")) {
        need(c, f, "message-id");
        return;
    }
    bool bad;
    stx *x = frame_txn(c, f, &bad);
    if (bad)
        return;
    entry *e = find_entry(c, f);
    if (!e) {
        /* Already acked (e.g. by a cumulative ACK) or never ours. */
        log_msg(LOG_DEBUG, "conn %" PRIu64 ": %s of an unknown or settled "
                "message", c->serial, f->command);
        receipt_now(c, f);
        return;
    }
    sub *s = e->s;
    /* client mode: an ACK covers every earlier message of that
     * subscription too. */
    bool cumulative = !nack && s->ack == ACK_CLIENT;
    if (x) {
        size_t before = x->bytes, n = 1;
        if (cumulative) {
            n = 0;
            for (qlink *l = s->unacked.next; l != &s->unacked; l = l->next) {
                n++;
                if (container_of(l, entry, link) == e)
                    break;
            }
        }
        if (!txn_room(c, n, receipt))
            return;
        if (cumulative) {
            for (qlink *l = s->unacked.next; l != &s->unacked; l = l->next) {
                entry *k = container_of(l, entry, link);
                txn_add_ref(x, TX_ACK, k);
                if (k == e)
                    break;
            }
        } else {
            txn_add_ref(x, nack ? TX_NACK : TX_ACK, e);
        }
        c->txn_bytes += x->bytes - before;
        mem_add(x->bytes - before);
        receipt_now(c, f);
        return;
    }
    if (nack) {
        if (++e->nacks > B.cfg.max_redeliveries && B.cfg.max_redeliveries &&
            dead_letter(c, e, receipt))
            return;
        if (entry_stored(e)) {
            op *o = op_new(OP_ACK, c, ticket_add(c, receipt, "NACK"));
            o->pending = 1;
            int rc = mqs_nack_async(B.store, e->m->id, entry_sub_id(e),
                                    op_done_cb, o);
            if (rc)
                op_complete(o, rc, mqs_errmsg(B.store));
        } else {
            receipt_now(c, f);
        }
        entry_requeue(e);
        return;
    }
    int stored = 0;
    qlink *first = cumulative ? s->unacked.next : &e->link;
    for (qlink *l = first;; l = l->next) {
        entry *k = container_of(l, entry, link);
        stored += entry_stored(k);
        if (k == e)
            break;
    }
    op *o = NULL;
    if (stored) {
        o = op_new(OP_ACK, c, ticket_add(c, receipt, "ACK"));
        o->pending = stored;
    }
    for (qlink *l = first;;) {
        entry *k = container_of(l, entry, link);
        l = l->next;
        entry_ack(k, o);
        if (k == e)
            break;
    }
    if (!stored)
        receipt_now(c, f);
}

/* ------------------------------------------------------------------------
 * Transactions
 * ---------------------------------------------------------------------- */

void txn_free(stx *x)
{
    while (!q_empty(&x->items)) {
        txitem *it = container_of(x->items.next, txitem, link);
        q_remove(&it->link);
        if (it->kind == TX_SEND) {
            msg_unref(it->m);
            dest_unref(it->d);
        }
        free(it);
    }
    free(x->name);
    free(x);
}

/* Only called in the term the transaction was made in. */
void txn_apply(conn *c, stx *x, const int64_t *ids, size_t n_ids,
               uint64_t snapshot)
{
    size_t k = 0;
    bool live = c->state != CS_DEAD;
    for (qlink *l = x->items.next; l != &x->items; l = l->next) {
        txitem *it = container_of(l, txitem, link);
        if (it->kind == TX_SEND) {
            if (it->stored)
                it->m->id = k < n_ids ? ids[k++] : 0;
            dest_publish(it->d, it->m, snapshot);
            if (live) /* a COMMIT fills destinations like SENDs do */
                maybe_pause(c, it->d);
            continue;
        }
        /* The connection's deliveries died with it (back in their boxes). */
        entry *e = live ? idmap_get(&c->acks, it->tag) : NULL;
        if (!e)
            continue;
        if (it->kind == TX_ACK) {
            entry_consume(e); /* its store ack committed with the txn */
        } else if (++e->nacks > B.cfg.max_redeliveries &&
                   B.cfg.max_redeliveries && dead_letter(c, e, NULL)) {
            continue;
        } else {
            int rc = entry_stored(e) ? mqs_nack_async(B.store, e->m->id,
                                                      entry_sub_id(e), NULL,
                                                      NULL)
                                     : 0;
            if (rc)
                broker_log_store_failure("nack", rc);
            entry_requeue(e);
        }
    }
}

static void on_begin(conn *c, const frame *f)
{
    const char *name = need(c, f, "transaction");
    if (!name)
        return;
    if (find_txn(c, name)) {
        conn_error(c, receipt_of(f), "transaction exists",
                   "transaction '%.128s' is already open on this "
                   "connection", name);
        return;
    }
    if (c->ntxns >= MAX_TXNS_PER_CONN) {
        conn_error(c, receipt_of(f), "too many transactions",
                   "at most %d transactions may be open per connection",
                   MAX_TXNS_PER_CONN);
        return;
    }
    stx *x = xcalloc(1, sizeof *x);
    x->name = xstrdup(name);
    q_init(&x->items);
    q_push_back(&c->txns, &x->link);
    c->ntxns++;
    receipt_now(c, f);
}

static void txn_done_cb(void *ud, int rc, const int64_t *ids, size_t n_ids,
                        const char *errmsg)
{
    op *o = ud;
    if (rc == 0 && n_ids) {
        o->ids = xmalloc(n_ids * sizeof *ids);
        memcpy(o->ids, ids, n_ids * sizeof *ids);
        o->n_ids = n_ids;
    }
    op_complete(o, rc, errmsg);
}

/* Build the store transaction of x and commit it; its receipt (or ERROR)
 * goes out once the store answered. Takes x. */
static void txn_commit(conn *c, stx *x, const char *receipt)
{
    /* The store transaction is built now, so which topics have durable
     * subscriptions is decided at the same moment as the snapshot. */
    mqs_txn *t = NULL;
    int rc = 0;
    size_t sbytes = 0;
    for (qlink *l = x->items.next; l != &x->items && !rc; l = l->next) {
        txitem *it = container_of(l, txitem, link);
        if (it->kind == TX_SEND) {
            it->stored = wants_store(it->m, it->d);
            if (!it->stored)
                continue;
            sbytes += it->m->hdrs_len + it->m->body_len;
            if (!t && (rc = mqs_txn_begin(B.store, &t)))
                break;
            const msg *m = it->m;
            mqs_msg mm = {it->d->kind, it->d->store_name, m->hdrs,
                          m->hdrs_len, m->body, m->body_len, m->priority,
                          m->expires_ms};
            rc = mqs_txn_enqueue(t, &mm);
        } else if (it->kind == TX_ACK) {
            entry *e = idmap_get(&c->acks, it->tag);
            if (!e || !entry_stored(e))
                continue;
            if (!t && (rc = mqs_txn_begin(B.store, &t)))
                break;
            audit_mark(e->m); /* commits before (or with) the txn */
            rc = mqs_txn_ack(t, e->m->id, entry_sub_id(e));
        }
    }
    if (rc) {
        conn_error(c, receipt, "transaction failed",
                   "COMMIT of '%.128s': %s", x->name, mqs_errmsg(B.store));
        mqs_txn_rollback(t);
        txn_free(x);
        return;
    }
    if (!t) {
        txn_apply(c, x, NULL, 0, 0);
        txn_free(x);
        if (receipt && c->state == CS_OPEN)
            ticket_done(c, ticket_add(c, receipt, "COMMIT"), 0, NULL);
        return;
    }
    op *o = op_new(OP_TXN, c, ticket_add(c, receipt, "COMMIT"));
    o->x = x;
    o->seq = ++B.seq;
    o->pending = 1;
    o->store_bytes = sbytes;
    B.store_bytes += sbytes;
    rc = mqs_txn_commit_async(t, txn_done_cb, o);
    if (rc)
        op_complete(o, rc, mqs_errmsg(B.store));
}

static void on_commit(conn *c, const frame *f)
{
    const char *receipt = receipt_of(f);
    const char *name = need(c, f, "transaction");
    if (!name)
        return;
    stx *x = find_txn(c, name);
    if (!x) {
        conn_error(c, receipt, "unknown transaction",
                   "COMMIT of transaction '%.128s', which was not begun on "
                   "this connection", name);
        return;
    }
    q_remove(&x->link);
    c->ntxns--;
    c->txn_bytes -= x->bytes;
    mem_sub(x->bytes);
    txn_commit(c, x, receipt);
}

/* A delivered message NACKed more than --max-redeliveries times: a copy
 * goes to /queue/<dlq-prefix><name> and the original is acked, in one
 * store transaction (both or neither), like a client's transaction. The
 * copy keeps the headers and adds mq-original-destination and
 * mq-dlq-reason. A message that cannot be dead-lettered (a name too long
 * for the DLQ) is redelivered as before, with a warning. */
static bool dead_letter(conn *c, entry *e, const char *receipt)
{
    dest *src = e->b->d;
    const char *base = src->store_name;
    char name[512];
    int n = snprintf(name, sizeof name, "/queue/%s%s", B.cfg.dlq_prefix,
                     base);
    mqs_kind kind;
    if (n < 0 || (size_t)n >= sizeof name || dest_check(name, &kind)) {
        log_msg(LOG_WARN, "conn %" PRIu64 ": message from %s NACKed %u "
                "times, but its dead-letter queue name is not valid; "
                "redelivering it", c->serial, src->name, e->nacks);
        return false;
    }
    buf h = {0};
    buf_add(&h, e->m->hdrs, e->m->hdrs_len);
    static const char k1[] = "mq-original-destination", k2[] = "mq-dlq-reason";
    char reason[96];
    snprintf(reason, sizeof reason, "NACKed %u times (max-redeliveries %zu)",
             e->nacks, B.cfg.max_redeliveries);
    buf_add(&h, k1, sizeof k1);
    buf_add(&h, src->name, strlen(src->name) + 1);
    buf_add(&h, k2, sizeof k2);
    buf_add(&h, reason, strlen(reason) + 1);
    msg *m = msg_new(h.p, h.len, e->m->body, e->m->body_len);
    buf_free(&h);
    m->persistent = e->m->persistent;
    m->priority = e->m->priority;
    m->expires_ms = e->m->expires_ms;
    stx *x = xcalloc(1, sizeof *x);
    x->name = xstrdup("(dead-letter)");
    q_init(&x->items);
    txitem *it = xcalloc(1, sizeof *it);
    it->kind = TX_SEND;
    it->m = m;
    it->d = dest_get(name, true);
    dest_ref(it->d);
    q_push_back(&x->items, &it->link);
    txn_add_ref(x, TX_ACK, e);
    log_msg(LOG_INFO, "conn %" PRIu64 ": message from %s %s; moving it to %s",
            c->serial, src->name, reason, name);
    txn_commit(c, x, receipt);
    return true;
}

static void on_abort(conn *c, const frame *f)
{
    const char *name = need(c, f, "transaction");
    if (!name)
        return;
    stx *x = find_txn(c, name);
    if (!x) {
        conn_error(c, receipt_of(f), "unknown transaction",
                   "ABORT of transaction '%.128s', which was not begun on "
                   "this connection", name);
        return;
    }
    q_remove(&x->link);
    c->ntxns--;
    c->txn_bytes -= x->bytes;
    mem_sub(x->bytes);
    txn_free(x);
    receipt_now(c, f);
}

/* ------------------------------------------------------------------------
 * DISCONNECT and dispatch
 * ---------------------------------------------------------------------- */

static void on_disconnect(conn *c, const frame *f)
{
    c->disconnecting = true;
    /* Unacked messages go back to their destinations now. */
    conn_teardown(c);
    ticket *t = ticket_add(c, receipt_of(f), "DISCONNECT");
    t->disconnect = true;
    ticket_done(c, t, 0, NULL); /* after every earlier receipt */
}

void stomp_handle(conn *c, const frame *f)
{
    if (log_enabled(LOG_DEBUG))
        log_msg(LOG_DEBUG, "conn %" PRIu64 ": %s (%zu headers, %zu-byte "
                "body)", c->serial, f->command, f->nheaders, f->body_len);
    if (c->state == CS_CONNECTING) {
        if (f->cmd == CMD_CONNECT || f->cmd == CMD_STOMP)
            on_connect(c, f);
        else
            conn_error(c, NULL, "not connected",
                       "the first frame must be CONNECT or STOMP, not "
                       "'%.64s'", f->command);
        return;
    }
    switch (f->cmd) {
    case CMD_SEND: on_send(c, f); break;
    case CMD_SUBSCRIBE: on_subscribe(c, f); break;
    case CMD_UNSUBSCRIBE: on_unsubscribe(c, f); break;
    case CMD_ACK: on_ack(c, f, false); break;
    case CMD_NACK: on_ack(c, f, true); break;
    case CMD_BEGIN: on_begin(c, f); break;
    case CMD_COMMIT: on_commit(c, f); break;
    case CMD_ABORT: on_abort(c, f); break;
    case CMD_DISCONNECT: on_disconnect(c, f); break;
    case CMD_CONNECT:
    case CMD_STOMP:
        conn_error(c, receipt_of(f), "already connected",
                   "%s sent on a connection that is already connected",
                   f->command);
        break;
    default:
        conn_error(c, receipt_of(f), "unknown command",
                   "'%.64s' is not a STOMP client command", f->command);
        break;
    }
}
