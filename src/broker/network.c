/* network.c - the accepting side of a network of brokers: what any
 * mqbroker does for a bridge that connects to it (docs/broker.md "Network
 * of brokers"). The bridges themselves (the connecting side) are bridge.c.
 *
 * - Policies per destination pattern (parsed in config.c), looked up once
 *   per destination.
 * - Path and TTL: which queued message may go to which peer.
 * - The demand feed (/mq/demand): consumer counts per destination, so a
 *   bridge subscribes here only where the peer has consumers. A count
 *   change marks the destination; one frame per marked destination goes
 *   out at the end of the loop turn. Nothing is marked while nobody holds
 *   /mq/demand.
 * - The origin audit: a message a bridge forwards again (after its
 *   connection broke before our RECEIPT) is recognized by its mq-origin
 *   and not stored twice. Bounded FIFO of origins, rebuilt at takeover
 *   from the stored messages' headers.
 * - The bridge status snapshot (/mq/bridges).
 *
 * Everything runs on the loop thread. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "bridge.h"
#include "broker.h"

/* ------------------------------------------------------------------------
 * Start
 * ---------------------------------------------------------------------- */

int network_init(char *err, size_t errlen)
{
    unsigned char raw[16];
    size_t got = 0;
    while (got < sizeof raw) {
        ssize_t n = getrandom(raw + got, sizeof raw - got, 0);
        if (n <= 0) {
            snprintf(err, errlen, "getrandom failed: cannot make the bridge "
                     "token");
            return -1;
        }
        got += (size_t)n;
    }
    for (size_t i = 0; i < sizeof raw; i++)
        snprintf(B.bridge_token + 2 * i, 3, "%02x", raw[i]);
    B.name = B.cfg.broker_name;
    q_init(&B.demand_conns);
    q_init(&B.demand_dests);
    log_msg(LOG_INFO, "broker name %s", B.name);
    for (size_t i = 0; i < B.cfg.n_net_policies; i++) {
        const net_policy *p = &B.cfg.net_policy_rules[i];
        log_msg(LOG_INFO, "network policy %s=%s replayWhenNoConsumers=%s "
                "enableAudit=%s", p->topic ? "topic" : "queue", p->pattern,
                p->replay ? "true" : "false", p->audit ? "true" : "false");
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * Headers, policies, paths
 * ---------------------------------------------------------------------- */

const char *msg_hdr(const msg *m, const char *name)
{
    for (size_t i = 0; i < m->hdrs_len;) {
        const char *n = m->hdrs + i;
        size_t nl = strlen(n);
        const char *v = n + nl + 1;
        if (!strcmp(n, name))
            return v;
        i += nl + strlen(v) + 2;
    }
    return NULL;
}

const net_policy *network_policy(dest *d)
{
    if (!d->policy_known) {
        d->policy = net_policy_find(B.cfg.net_policy_rules,
                                    B.cfg.n_net_policies, d->name);
        d->policy_known = true;
    }
    return d->policy;
}

bool network_replay(dest *d)
{
    const net_policy *p = network_policy(d);
    return d->kind == MQS_QUEUE && p && p->replay;
}

bool network_audit_on(dest *d)
{
    const net_policy *p = network_policy(d);
    return B.cfg.network_audit && (!p || p->audit);
}

bool network_eligible(const sub *s, const msg *m, bool replay_ok)
{
    return net_path_eligible(msg_hdr(m, NET_HDR_PATH), s->net_peer,
                             s->net_ttl, replay_ok);
}

bool network_header(const char *name)
{
    return !strcmp(name, NET_HDR_PATH) || !strcmp(name, NET_HDR_ORIGIN);
}

void network_put_headers(buf *b, int version, const msg *m)
{
    const char *path = msg_hdr(m, NET_HDR_PATH);
    buf p = {0};
    if (path && *path) {
        buf_adds(&p, path);
        buf_addc(&p, ',');
    }
    buf_adds(&p, B.name);
    frame_putn(b, version, NET_HDR_PATH, strlen(NET_HDR_PATH), p.p, p.len);
    buf_free(&p);
    const char *origin = msg_hdr(m, NET_HDR_ORIGIN);
    char tmp[160];
    if (!origin) {
        /* Store ids are never reused; an unstored message is named by its
         * term and arrival number, unique across restarts too. */
        if (m->id)
            snprintf(tmp, sizeof tmp, "%s/%" PRId64, B.name, m->id);
        else
            snprintf(tmp, sizeof tmp, "%s/s%" PRId64 "-%" PRIu64, B.name,
                     m->term, m->seq);
        origin = tmp;
    }
    frame_put(b, version, NET_HDR_ORIGIN, origin);
}

/* ------------------------------------------------------------------------
 * Demand feed
 * ---------------------------------------------------------------------- */

void network_demand_changed(dest *d)
{
    if (!B.ndemand || d->demand_dirty)
        return;
    d->demand_dirty = true;
    q_push_back(&B.demand_dests, &d->demand_link);
}

/* Local consumers (N), and network subscriptions for peers other than
 * `peer` (M); see docs/broker.md. */
static void demand_counts(dest *d, const char *peer, size_t *n, size_t *m)
{
    *n = *m = 0;
    if (d->kind == MQS_QUEUE) {
        box *b = &d->qbox;
        for (qlink *l = b->consumers.next; l != &b->consumers; l = l->next) {
            const sub *s = container_of(l, sub, blink);
            if (!s->net_peer)
                (*n)++;
            else if (strcmp(s->net_peer, peer))
                (*m)++;
        }
        return;
    }
    for (qlink *l = d->boxes.next; l != &d->boxes; l = l->next) {
        box *b = container_of(l, box, dlink);
        if (b->type == BOX_DURABLE) {
            /* Store and forward for offline durable subscribers too. */
            (*n)++;
            continue;
        }
        if (q_empty(&b->consumers))
            continue;
        const sub *s = container_of(b->consumers.next, sub, blink);
        if (!s->net_peer)
            (*n)++;
        else if (strcmp(s->net_peer, peer))
            (*m)++;
    }
}

/* What c was last told about d: the counts packed, +1 (0 = none or both
 * zero, so the map only holds destinations with demand). */
static uintptr_t demand_pack(size_t n, size_t m)
{
    if (!n && !m)
        return 0;
    if (n > 0xffffffffu)
        n = 0xffffffffu;
    if (m > 0xffffffffu)
        m = 0xffffffffu;
    return (uintptr_t)(((uint64_t)n << 32 | (uint64_t)m) + 1);
}

static void demand_frame(conn *c, const dest *d, size_t n, size_t m)
{
    /* Only a change is news: a peer's own subscription moves counts it
     * does not see. */
    uint64_t key = str_key(d->name);
    uintptr_t now = demand_pack(n, m);
    if ((uintptr_t)idmap_get(&c->demand_sent, key) == now)
        return;
    if (now)
        idmap_put(&c->demand_sent, key, (void *)now);
    else
        idmap_del(&c->demand_sent, key);
    buf *b = &c->out;
    int v = c->version;
    char tmp[48];
    frame_begin(b, "MESSAGE");
    frame_put(b, v, "destination", "/mq/demand");
    frame_put(b, v, "subscription", c->demand_id);
    snprintf(tmp, sizeof tmp, "ID:demand-%" PRIu64, ++B.demand_seq);
    frame_put(b, v, "message-id", tmp);
    frame_put(b, v, "mq-dest", d->name);
    snprintf(tmp, sizeof tmp, "%zu", n);
    frame_put(b, v, "mq-consumers", tmp);
    snprintf(tmp, sizeof tmp, "%zu", m);
    frame_put(b, v, "mq-remote", tmp);
    frame_end(b, NULL, 0, true);
}

size_t network_demand_flush(void)
{
    size_t k = 0;
    while (!q_empty(&B.demand_dests)) {
        dest *d = container_of(B.demand_dests.next, dest, demand_link);
        q_remove(&d->demand_link);
        d->demand_dirty = false;
        for (qlink *l = B.demand_conns.next; l != &B.demand_conns;
             l = l->next) {
            conn *c = container_of(l, conn, demand_link);
            if (c->state != CS_OPEN)
                continue;
            size_t n, m;
            demand_counts(d, c->bridge, &n, &m);
            /* Small and never repeated: written even past the output
             * limit, a lost count would leave a bridge subscribed. */
            demand_frame(c, d, n, m);
            conn_out_changed(c);
        }
        dest_gc_check(d); /* held while its count was to be announced */
        k++;
    }
    return k;
}

void network_demand_subscribe(conn *c, const char *id)
{
    c->demand_id = xstrdup(id);
    q_push_back(&B.demand_conns, &c->demand_link);
    B.ndemand++;
    /* The snapshot: every destination with consumers on either side. */
    size_t k = 0;
    for (qlink *l = B.dests.next; l != &B.dests; l = l->next) {
        dest *d = container_of(l, dest, link);
        size_t n, m;
        demand_counts(d, c->bridge, &n, &m);
        if (n || m) {
            demand_frame(c, d, n, m);
            k++;
        }
    }
    conn_out_changed(c);
    log_msg(c->bridge_internal ? LOG_DEBUG : LOG_INFO, "conn %" PRIu64
            " (%s): broker %s follows the demand here (%zu destinations "
            "with consumers now)", c->serial, c->peer, c->bridge, k);
}

void network_demand_unsubscribe(conn *c)
{
    if (!c->demand_id)
        return;
    q_remove(&c->demand_link);
    free(c->demand_id);
    c->demand_id = NULL;
    idmap_free(&c->demand_sent);
    if (--B.ndemand == 0) {
        /* Nobody listens: drop the marks (their destinations may go). */
        while (!q_empty(&B.demand_dests)) {
            dest *d = container_of(B.demand_dests.next, dest, demand_link);
            q_remove(&d->demand_link);
            d->demand_dirty = false;
            dest_gc_check(d);
        }
    }
}

void network_conn_teardown(conn *c)
{
    network_demand_unsubscribe(c);
}

/* ------------------------------------------------------------------------
 * Bridge status
 * ---------------------------------------------------------------------- */

static void json_str(buf *b, const char *s)
{
    buf_addc(b, '"');
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            buf_addc(b, '\\');
            buf_addc(b, (char)ch);
        } else if (ch < 0x20) {
            buf_addf(b, "\\u%04x", ch);
        } else {
            buf_addc(b, (char)ch);
        }
    }
    buf_addc(b, '"');
}

void network_bridges_snapshot(conn *c, const char *id)
{
    size_t max = bridge_count();
    bridge_stat *st = max ? xcalloc(max, sizeof *st) : NULL;
    size_t n = max ? bridge_snapshot(st, max) : 0;
    int v = c->version;
    for (size_t i = 0; i < n; i++) {
        bridge_stat *s = &st[i];
        /* Strings from another thread: make sure they end. */
        s->name[sizeof s->name - 1] = s->peer[sizeof s->peer - 1] = '\0';
        s->peer_name[sizeof s->peer_name - 1] = '\0';
        s->state[sizeof s->state - 1] = '\0';
        s->last_error[sizeof s->last_error - 1] = '\0';
        char nums[4][24], tmp[48];
        snprintf(nums[0], sizeof nums[0], "%" PRIu64, s->fwd_out);
        snprintf(nums[1], sizeof nums[1], "%" PRIu64, s->fwd_in);
        snprintf(nums[2], sizeof nums[2], "%" PRIu64, s->inflight_out);
        snprintf(nums[3], sizeof nums[3], "%" PRIu64, s->inflight_in);
        buf body = {0};
        buf_adds(&body, "{\"name\":");
        json_str(&body, s->name);
        buf_adds(&body, ",\"peer\":");
        json_str(&body, s->peer);
        buf_adds(&body, ",\"peer_name\":");
        json_str(&body, s->peer_name);
        buf_adds(&body, ",\"state\":");
        json_str(&body, s->state);
        buf_addf(&body, ",\"forwarded_out\":%s,\"forwarded_in\":%s,"
                 "\"inflight_out\":%s,\"inflight_in\":%s,\"duplex\":%s,"
                 "\"last_error\":", nums[0], nums[1], nums[2], nums[3],
                 s->duplex ? "true" : "false");
        json_str(&body, s->last_error);
        buf_adds(&body, "}\n");
        buf *b = &c->out;
        frame_begin(b, "MESSAGE");
        frame_put(b, v, "destination", "/mq/bridges");
        frame_put(b, v, "subscription", id);
        snprintf(tmp, sizeof tmp, "ID:bridge-%" PRIu64, ++B.demand_seq);
        frame_put(b, v, "message-id", tmp);
        frame_put(b, v, "content-type", "application/json");
        frame_put(b, v, "mq-bridge-name", s->name);
        frame_put(b, v, "mq-peer", s->peer);
        frame_put(b, v, "mq-peer-name", s->peer_name);
        frame_put(b, v, "mq-state", s->state);
        frame_put(b, v, "mq-forwarded-out", nums[0]);
        frame_put(b, v, "mq-forwarded-in", nums[1]);
        frame_put(b, v, "mq-inflight-out", nums[2]);
        frame_put(b, v, "mq-inflight-in", nums[3]);
        frame_put(b, v, "mq-duplex", s->duplex ? "true" : "false");
        frame_put(b, v, "mq-last-error", s->last_error);
        frame_end(b, body.p, body.len, true);
        buf_free(&body);
    }
    free(st);
    conn_out_changed(c);
}

/* ------------------------------------------------------------------------
 * Origin audit
 * ---------------------------------------------------------------------- */

#define ORIGIN_MAX 256 /* longer mq-origin values are not audited */

typedef struct origin_rec {
    qlink link; /* O.fifo, oldest first */
    uint64_t key;
    op *inflight; /* its store write, until it completes */
    char name[];
} origin_rec;

static struct {
    idmap map; /* str_key(origin) -> origin_rec */
    qlink fifo;
    size_t n;
    bool init;
} O;

static void origin_init(void)
{
    if (!O.init) {
        q_init(&O.fifo);
        O.init = true;
    }
}

static void origin_drop(origin_rec *r)
{
    idmap_del(&O.map, r->key);
    q_remove(&r->link);
    free(r);
    O.n--;
}

void origin_clear(void)
{
    origin_init();
    while (!q_empty(&O.fifo))
        origin_drop(container_of(O.fifo.next, origin_rec, link));
    idmap_free(&O.map);
}

size_t origin_count(void) { return O.n; }

static origin_rec *origin_find(const char *origin)
{
    origin_rec *r = idmap_get(&O.map, str_key(origin));
    return r && !strcmp(r->name, origin) ? r : NULL;
}

int origin_check(const char *origin, op **inflight)
{
    if (strlen(origin) > ORIGIN_MAX)
        return AUDIT_NEW;
    origin_rec *r = origin_find(origin);
    if (!r)
        return AUDIT_NEW;
    *inflight = r->inflight;
    return r->inflight ? AUDIT_DUP_WAIT : AUDIT_DUP;
}

void origin_add(const char *origin, op *o)
{
    size_t len = strlen(origin);
    if (len > ORIGIN_MAX || B.cfg.network_audit == 0)
        return;
    origin_init();
    uint64_t key = str_key(origin);
    if (idmap_get(&O.map, key))
        return; /* a colliding key: this one is simply not audited */
    /* FIFO: the oldest goes first. One still being written is kept out of
     * the way of its completion by looking it up by name there. */
    while (O.n >= B.cfg.network_audit && !q_empty(&O.fifo))
        origin_drop(container_of(O.fifo.next, origin_rec, link));
    origin_rec *r = xmalloc(sizeof *r + len + 1);
    memcpy(r->name, origin, len + 1);
    r->key = key;
    r->inflight = o;
    idmap_put(&O.map, key, r);
    q_push_back(&O.fifo, &r->link);
    O.n++;
}

void origin_done(const char *origin, op *o, int rc)
{
    origin_rec *r = origin_find(origin);
    if (!r || r->inflight != o)
        return;
    r->inflight = NULL;
    /* Not stored: the bridge's retry must be able to store it. */
    if (rc)
        origin_drop(r);
}

void origin_note_hdrs(const char *h, size_t n)
{
    for (size_t i = 0; i < n;) {
        const char *name = h + i;
        size_t nl = strlen(name);
        const char *val = name + nl + 1;
        if (!strcmp(name, NET_HDR_ORIGIN)) {
            if (!origin_find(val))
                origin_add(val, NULL);
            return;
        }
        i += nl + strlen(val) + 2;
    }
}
