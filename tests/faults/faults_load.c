/*
 * faults_load.c - producers that keep writing through a fault, and the
 * check of what the database holds afterwards against what every call
 * returned.
 *
 * The contract checked (docs/architecture.md, "Write path"):
 *  - a call that returned 0 is durable: its message is stored exactly once,
 *    under the id returned, with its exact body;
 *  - a call fails only with MQS_ECONN (the database stayed away longer than
 *    reconnect_timeout_ms: nothing was written) or MQS_EUNKNOWN (the
 *    connection was lost during COMMIT: it may or may not be stored);
 *  - so a failed call's message may be present only after MQS_EUNKNOWN, and
 *    no message is ever present twice (a lost COMMIT is never retried).
 */
#include "faults.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bounds of every load loop: calls per producer, and wall time. */
#define FX_MAX_CALLS 40000
#define FX_MAX_RUN_MS 90000
#define FX_BODY_MAX 256

typedef struct producer {
    struct fx_load *l;
    int idx;
    fx_rec *recs;
    size_t n;
    char first_err[1024]; /* first failure's message */
    pthread_t th;
} producer;

struct fx_load {
    mqs_store *s;
    char dest[256];
    atomic_int stop;
    int64_t t_start;
    producer p[FX_PRODUCERS];
};

/* Body of (producer, seq): a parseable prefix, then deterministic filler of
 * a length that varies with seq. Returns the length. */
static size_t make_body(int p, size_t seq, unsigned char *buf)
{
    int k = snprintf((char *)buf, FX_BODY_MAX, "P%02d-S%07zu-", p, seq);
    size_t len = (size_t)k + (seq * 37 + (size_t)p * 11) % 180;
    uint64_t x = ((uint64_t)p << 40) ^ (seq * 0x9E3779B97F4A7C15ULL);
    for (size_t i = (size_t)k; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf[i] = (unsigned char)x; /* any byte, NUL included */
    }
    return len;
}

static int parse_body(const void *body, size_t len, int *p, size_t *seq)
{
    char head[16];
    if (len < 13)
        return -1;
    memcpy(head, body, 13);
    head[13] = '\0';
    unsigned pp;
    unsigned long ss;
    if (sscanf(head, "P%2u-S%7lu-", &pp, &ss) != 2)
        return -1;
    *p = (int)pp;
    *seq = ss;
    return 0;
}

static void *producer_main(void *arg)
{
    producer *pr = arg;
    fx_load *l = pr->l;
    unsigned char body[FX_BODY_MAX];
    for (size_t seq = 0; seq < FX_MAX_CALLS && !atomic_load(&l->stop) &&
                         fx_mono_ms() - l->t_start < FX_MAX_RUN_MS;
         seq++) {
        size_t len = make_body(pr->idx, seq, body);
        mqs_msg m = {MQS_QUEUE, l->dest, NULL, 0, body, len,
                     MQS_PRIORITY_DEFAULT, 0};
        fx_rec *r = &pr->recs[seq];
        r->t0 = fx_mono_ms();
        r->rc = mqs_enqueue(l->s, &m, &r->id);
        r->t1 = fx_mono_ms();
        if (r->rc && !pr->first_err[0])
            snprintf(pr->first_err, sizeof pr->first_err, "%s: %s",
                     mqs_errname(r->rc), mqs_errmsg(l->s));
        pr->n = seq + 1;
    }
    return NULL;
}

fx_load *fx_load_start(mqs_store *s, const char *dest)
{
    fx_load *l = calloc(1, sizeof *l);
    assert_non_null(l);
    l->s = s;
    snprintf(l->dest, sizeof l->dest, "%s", dest);
    l->t_start = fx_mono_ms();
    for (int i = 0; i < FX_PRODUCERS; i++) {
        l->p[i].l = l;
        l->p[i].idx = i;
        l->p[i].recs = calloc(FX_MAX_CALLS, sizeof *l->p[i].recs);
        assert_non_null(l->p[i].recs);
    }
    for (int i = 0; i < FX_PRODUCERS; i++)
        if (pthread_create(&l->p[i].th, NULL, producer_main, &l->p[i]) != 0)
            fail_msg("cannot start producer thread %d", i);
    return l;
}

void fx_load_stop(fx_load *l)
{
    atomic_store(&l->stop, 1);
    for (int i = 0; i < FX_PRODUCERS; i++)
        pthread_join(l->p[i].th, NULL);
}

static void load_free(fx_load *l)
{
    for (int i = 0; i < FX_PRODUCERS; i++)
        free(l->p[i].recs);
    free(l);
}

/* One stored message, by (producer, seq). */
typedef struct seen {
    int64_t id; /* 0 = not stored */
} seen;

void fx_load_check(fx_load *l, const char *store_uri, const char *what,
                   int64_t t_back, int64_t min_stall_ms)
{
    seen *found[FX_PRODUCERS];
    for (int i = 0; i < FX_PRODUCERS; i++) {
        found[i] = calloc(l->p[i].n ? l->p[i].n : 1, sizeof *found[i]);
        assert_non_null(found[i]);
    }

    /* What the database holds, read back through a fresh store. */
    mqs_store *r = NULL;
    if (mqs_open(store_uri, &g_log_opts, &r) != 0)
        fail_msg("%s: reopening the store to check it: %s", what,
                 mqs_errmsg(NULL));
    mqs_cursor_opts co = {MQS_QUEUE, l->dest, NULL, 0};
    mqs_cursor *c = NULL;
    FX_OK(mqs_cursor_open(r, &co, &c), r);
    const mqs_message *m;
    int rc;
    size_t stored = 0;
    unsigned char want[FX_BODY_MAX];
    while ((rc = mqs_cursor_next(c, &m)) == 1) {
        int p = -1; /* set by parse_body; fail_msg does not return */
        size_t seq = 0;
        stored++;
        if (strcmp(m->dest, l->dest) != 0)
            fail_msg("%s: the cursor of '%s' returned a message of '%s'", what,
                     l->dest, m->dest);
        if (parse_body(m->body, m->body_len, &p, &seq) || p < 0 ||
            p >= FX_PRODUCERS || seq >= l->p[p].n)
            fail_msg("%s: message id %lld has a body no producer sent "
                     "(%zu bytes)",
                     what, (long long)m->id, m->body_len);
        size_t len = make_body(p, seq, want);
        if (m->body_len != len || memcmp(m->body, want, len) != 0 ||
            m->headers_len != 0)
            fail_msg("%s: message id %lld (producer %d seq %zu) is stored "
                     "with a different body (%zu bytes, sent %zu) or headers "
                     "(%zu bytes)",
                     what, (long long)m->id, p, seq, m->body_len, len,
                     m->headers_len);
        if (found[p][seq].id)
            fail_msg("%s: producer %d seq %zu is stored twice: ids %lld and "
                     "%lld (result of its call: %s, id %lld)",
                     what, p, seq, (long long)found[p][seq].id,
                     (long long)m->id, mqs_errname(l->p[p].recs[seq].rc),
                     (long long)l->p[p].recs[seq].id);
        found[p][seq].id = m->id;
    }
    if (rc != 0)
        fail_msg("%s: reading '%s' back: %s: %s", what, l->dest,
                 mqs_errname(rc), mqs_errmsg(r));
    mqs_cursor_close(c);

    /* Every call's result against the database. */
    size_t calls = 0, ok = 0, econn = 0, unk_in = 0, unk_out = 0;
    int64_t max_ok_ms = 0, max_ms = 0;
    for (int p = 0; p < FX_PRODUCERS; p++) {
        producer *pr = &l->p[p];
        size_t ok_after = 0;
        for (size_t i = 0; i < pr->n; i++) {
            fx_rec *x = &pr->recs[i];
            int64_t ms = x->t1 - x->t0;
            calls++;
            if (ms > max_ms)
                max_ms = ms;
            if (x->rc == 0) {
                ok++;
                if (ms > max_ok_ms)
                    max_ok_ms = ms;
                if (x->t0 >= t_back)
                    ok_after++;
                if (!found[p][i].id)
                    fail_msg("%s: producer %d seq %zu: mqs_enqueue returned "
                             "0 (id %lld) after %lld ms but the message is "
                             "not in the database: a durable write was lost",
                             what, p, i, (long long)x->id, (long long)ms);
                if (found[p][i].id != x->id)
                    fail_msg("%s: producer %d seq %zu: mqs_enqueue returned "
                             "id %lld but the message is stored as id %lld",
                             what, p, i, (long long)x->id,
                             (long long)found[p][i].id);
            } else if (x->rc == MQS_EUNKNOWN) {
                if (x->id != 0)
                    fail_msg("%s: producer %d seq %zu failed with "
                             "MQS_EUNKNOWN but set id %lld",
                             what, p, i, (long long)x->id);
                if (found[p][i].id)
                    unk_in++;
                else
                    unk_out++;
            } else if (x->rc == MQS_ECONN) {
                econn++;
                if (found[p][i].id)
                    fail_msg("%s: producer %d seq %zu failed with MQS_ECONN "
                             "(\"nothing written\") but is stored as id %lld",
                             what, p, i, (long long)found[p][i].id);
            } else {
                fail_msg("%s: producer %d seq %zu failed with %s (%d) after "
                         "%lld ms: only MQS_ECONN or MQS_EUNKNOWN may come "
                         "out of a lost connection; first failure of this "
                         "producer: %s",
                         what, p, i, mqs_errname(x->rc), x->rc,
                         (long long)ms, pr->first_err);
            }
        }
        if (pr->first_err[0] && fx_has_secret(pr->first_err, NULL))
            fail_msg("%s: an error message contains the password",
                     what);
        if (pr->first_err[0])
            print_message("  %s: producer %d first failure: %s\n", what, p,
                          pr->first_err);
        if (ok_after == 0)
            fail_msg("%s: producer %d had no successful write started after "
                     "the fault ended (%zu calls, last rc %s): writes did not "
                     "resume on the same store",
                     what, p, pr->n,
                     pr->n ? mqs_errname(pr->recs[pr->n - 1].rc) : "none");
    }
    if (stored != ok + unk_in)
        fail_msg("%s: %zu messages stored but %zu calls succeeded and %zu "
                 "with MQS_EUNKNOWN are present",
                 what, stored, ok, unk_in);

    mqs_stats st;
    FX_OK(mqs_stats_get(l->s, &st), l->s);
    print_message("  %s: %zu calls: %zu ok, %zu MQS_ECONN, %zu MQS_EUNKNOWN "
                  "(%zu of them committed); slowest ok call %lld ms, slowest "
                  "call %lld ms; stats: reconnects %llu retries %llu failed "
                  "%llu enqueued %llu transactions %llu\n",
                  what, calls, ok, econn, unk_in + unk_out, unk_in,
                  (long long)max_ok_ms, (long long)max_ms,
                  (unsigned long long)st.reconnects,
                  (unsigned long long)st.retries,
                  (unsigned long long)st.failed,
                  (unsigned long long)st.enqueued,
                  (unsigned long long)st.transactions);
    if (st.reconnects == 0)
        fail_msg("%s: mqs_stats.reconnects is 0: the store never noticed "
                 "the fault",
                 what);
    if (st.enqueued != ok)
        fail_msg("%s: mqs_stats.enqueued = %llu but %zu enqueues returned 0",
                 what, (unsigned long long)st.enqueued, ok);
    if (st.failed != econn + unk_in + unk_out)
        fail_msg("%s: mqs_stats.failed = %llu but %zu enqueues failed", what,
                 (unsigned long long)st.failed, econn + unk_in + unk_out);
    if (min_stall_ms > 0 && max_ok_ms < min_stall_ms)
        fail_msg("%s: no successful call waited %lld ms or more (slowest "
                 "%lld ms): no write rode out the outage",
                 what, (long long)min_stall_ms, (long long)max_ok_ms);

    /* The store under fault still writes, without reopening. */
    unsigned char b[FX_BODY_MAX];
    size_t len = make_body(FX_PRODUCERS + 1, 0, b);
    mqs_msg one = {MQS_QUEUE, l->dest, NULL, 0, b, len, 1, 0};
    int64_t id = 0;
    FX_OK(mqs_enqueue(l->s, &one, &id), l->s);
    assert_true(id > 0);

    uint64_t purged = 0;
    FX_OK(mqs_purge(r, MQS_QUEUE, l->dest, &purged), r);
    if (purged != stored + 1)
        fail_msg("%s: purge removed %llu messages, expected %zu", what,
                 (unsigned long long)purged, stored + 1);
    mqs_close(r);
    for (int i = 0; i < FX_PRODUCERS; i++)
        free(found[i]);
    load_free(l);
}

typedef struct pend_find {
    mqs_kind kind;
    const char *dest, *sub;
    int64_t n;
} pend_find;

static int pend_cb(void *ud, const mqs_dest_info *d)
{
    pend_find *f = ud;
    if (d->kind != f->kind || strcmp(d->dest, f->dest) != 0)
        return 0;
    if ((f->sub == NULL) != (d->sub_name == NULL))
        return 0;
    if (f->sub && strcmp(f->sub, d->sub_name) != 0)
        return 0;
    f->n = (int64_t)d->pending;
    return 1;
}

int64_t fx_pending(mqs_store *s, mqs_kind kind, const char *dest,
                   const char *sub_name)
{
    pend_find f = {kind, dest, sub_name, -1};
    FX_OK(mqs_dest_foreach(s, pend_cb, &f), s);
    return f.n;
}
