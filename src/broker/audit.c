/* audit.c - the producer audit: which (mq-producer, mq-seq) SENDs this
 * master already accepted, so that a client replaying its unconfirmed
 * sends after a failover or a reconnect (libmqclient with trackMessages,
 * or a synchronous send retried on the new connection) does not store a
 * message twice. The duplicate is dropped and still answered with its
 * RECEIPT, after the original's store write when that is still running.
 *
 * What it remembers, per producer: the highest sequence accepted. A
 * client sends its sequence numbers in order on one connection and the
 * store commits this broker's writes in submission order, so "at or below
 * the high-water mark" means "already held". The marks live in memory
 * and are rebuilt at takeover from the stored messages' own headers
 * (mq-producer and mq-seq travel with the message), which covers every
 * message still in the store. Not covered (docs/broker.md says so): a
 * message that was stored, delivered and acked before the crash while its
 * RECEIPT was lost, then replayed to the new master.
 *
 * Bounded: at most cfg.producer_audit producers; past that the ones idle
 * longest are forgotten (their replays are then stored again: at-least-
 * once, never a loss). All of it runs on the loop thread. */
#include "broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct paudit {
    char *name;
    uint64_t hwm;      /* highest sequence accepted (stored or in flight) */
    op *inflight;      /* the newest of its store writes not completed */
    int64_t used_ms;   /* last SEND, for eviction */
} paudit;

static struct {
    idmap map; /* fnv1a(name) -> paudit */
    size_t n;
} A;

static void paudit_free(paudit *p)
{
    free(p->name);
    free(p);
}

void audit_clear(void)
{
    for (size_t i = 0; i < A.map.cap; i++)
        if (A.map.keys[i])
            paudit_free(A.map.vals[i]);
    idmap_free(&A.map);
    memset(&A, 0, sizeof A);
}

/* Forget the idle eighth of the producers (none with a write in flight:
 * its completion looks the entry up). */
static void evict(void)
{
    size_t want = A.n / 8 + 1, k = 0;
    int64_t *ages = xmalloc(A.n * sizeof *ages);
    for (size_t i = 0; i < A.map.cap; i++)
        if (A.map.keys[i])
            ages[k++] = ((paudit *)A.map.vals[i])->used_ms;
    /* The want-th oldest time as the cut: a partial selection would do,
     * but this runs once per n/8 new producers. */
    int64_t cut = INT64_MAX;
    for (size_t r = 0; r < want && r < k; r++) {
        size_t best = r;
        for (size_t j = r + 1; j < k; j++)
            if (ages[j] < ages[best])
                best = j;
        int64_t t = ages[r];
        ages[r] = ages[best];
        ages[best] = t;
        cut = ages[r];
    }
    free(ages);
    for (size_t i = 0; i < A.map.cap && want; i++) {
        if (!A.map.keys[i])
            continue;
        paudit *p = A.map.vals[i];
        if (p->inflight || p->used_ms > cut)
            continue;
        idmap_del(&A.map, A.map.keys[i]);
        paudit_free(p);
        A.n--;
        want--;
        i--; /* idmap_del may move another key into slot i */
    }
}

/* The entry for name, created when create is set and room is made. NULL
 * when absent, or when another producer's name hashes to the same key (so
 * rare that not deduplicating it is the simple answer). */
static paudit *lookup(const char *name, bool create)
{
    uint64_t key = str_key(name);
    paudit *p = idmap_get(&A.map, key);
    if (p)
        return strcmp(p->name, name) ? NULL : p;
    if (!create || B.cfg.producer_audit == 0)
        return NULL;
    if (A.n >= B.cfg.producer_audit)
        evict();
    p = xcalloc(1, sizeof *p);
    p->name = xstrdup(name);
    idmap_put(&A.map, key, p);
    A.n++;
    return p;
}

bool audit_ids(const char *producer, const char *seq, uint64_t *out)
{
    /* The broker's own dispatch marks share the store's mark table: a
     * client cannot write one by naming its producer like them. */
    if (!producer || !seq || !*producer || strlen(producer) > AUDIT_MAX_ID ||
        dmark_name(producer))
        return false;
    uint64_t v = 0;
    for (const char *s = seq; *s; s++) {
        if (*s < '0' || *s > '9' || v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    if (v == 0)
        return false;
    *out = v;
    return true;
}

int audit_check(const char *producer, uint64_t seq, op **inflight)
{
    paudit *p = lookup(producer, true);
    if (!p)
        return AUDIT_NEW;
    p->used_ms = mono_ms();
    if (seq <= p->hwm) {
        *inflight = p->inflight;
        return p->inflight ? AUDIT_DUP_WAIT : AUDIT_DUP;
    }
    p->hwm = seq;
    return AUDIT_NEW;
}

void audit_inflight(const char *producer, op *o)
{
    paudit *p = lookup(producer, false);
    if (p)
        p->inflight = o;
}

void audit_done(const char *producer, uint64_t seq, op *o, int rc)
{
    paudit *p = lookup(producer, false);
    if (!p)
        return;
    if (p->inflight == o)
        p->inflight = NULL;
    /* Not stored: a replay must be able to store it. Later sequences that
     * did get stored may then be stored twice: a duplicate, not a loss. */
    if (rc && p->hwm >= seq)
        p->hwm = seq - 1;
}

/* The ids in a stored header blob ("name\0value\0"...), if valid. */
static const char *hdr_ids(const char *h, size_t n, uint64_t *seq)
{
    const char *producer = NULL, *sq = NULL;
    for (size_t i = 0; i < n;) {
        const char *name = h + i;
        size_t nl = strlen(name);
        const char *val = name + nl + 1;
        if (!strcmp(name, AUDIT_HDR_PRODUCER))
            producer = val;
        else if (!strcmp(name, AUDIT_HDR_SEQ))
            sq = val;
        i += nl + strlen(val) + 2;
    }
    return audit_ids(producer, sq, seq) ? producer : NULL;
}

static void note(const char *producer, uint64_t v)
{
    paudit *p = lookup(producer, true);
    if (p && v > p->hwm)
        p->hwm = v;
}

void audit_note_hdrs(const char *h, size_t n)
{
    uint64_t v;
    const char *producer = hdr_ids(h, n, &v);
    if (producer)
        note(producer, v);
}

static void mark_logged(void *ud, int rc, int64_t id, const char *errmsg)
{
    if (rc && rc != MQS_EFENCED)
        log_msg(LOG_WARN, "store: producer mark failed (%s): %s",
                mqs_errname(rc), errmsg ? errmsg : "");
}

/* Marks are written when a message is acked, not when it is stored: a
 * replay of a message still in the store is recognized by its own
 * headers at takeover; only a consumed one needs the mark. Queued before
 * the ack, the mark commits in the same group or earlier, never after. */
void audit_mark(const msg *m)
{
    if (B.cfg.producer_audit == 0) /* off: no header scan per ack */
        return;
    uint64_t v;
    const char *producer = hdr_ids(m->hdrs, m->hdrs_len, &v);
    if (!producer || v > INT64_MAX)
        return;
    int rc = mqs_mark_async(B.store, producer, (int64_t)v, mark_logged, NULL);
    if (rc && rc != MQS_ENOTSUP)
        broker_log_store_failure("producer mark", rc);
}

static int load_mark(void *ud, const char *producer, int64_t seq)
{
    size_t *n = ud;
    uint64_t v;
    char sq[24];
    snprintf(sq, sizeof sq, "%lld", (long long)seq);
    if (audit_ids(producer, sq, &v)) {
        note(producer, v);
        (*n)++;
    }
    return 0;
}

#define MARK_KEEP_MS (7LL * 24 * 3600 * 1000)

void audit_load_marks(void)
{
    if (B.cfg.producer_audit == 0)
        return;
    uint64_t pruned = 0;
    int rc = mqs_mark_prune(B.store, wall_ms() - MARK_KEEP_MS, &pruned);
    if (rc && rc != MQS_ENOTSUP)
        broker_log_store_failure("producer mark prune", rc);
    size_t n = 0;
    rc = mqs_mark_foreach(B.store, load_mark, &n);
    if (rc && rc != MQS_ENOTSUP)
        broker_log_store_failure("producer mark load", rc);
    if (n || pruned)
        log_msg(LOG_INFO, "recovery: %zu producer marks loaded, %llu older "
                "than 7 days pruned", n, (unsigned long long)pruned);
}

size_t audit_count(void) { return A.n; }
