/* t_recovery.c - recovery over a backlog, purge, stats, dest_foreach. */
#include "testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- a backlog across destinations ---- */
enum { NQ = 4, NSUB = 2, NDEST = NQ + 1 /* the topic */ };

struct expect {
    int64_t id;
    int dest;     /* 0..NQ-1 queues, NQ the topic */
    int priority;
    uint64_t seed; /* body = tu_fill(len, seed) */
    size_t len;
    int acked[NSUB]; /* queue messages use acked[0] */
};

struct backlog {
    char name[NDEST][128];
    int64_t sub[NSUB];
    struct expect *e;
    size_t n;
};

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void backlog_build(mqs_store *s, struct backlog *b, size_t n)
{
    memset(b, 0, sizeof *b);
    /* Creation order fixes destination ids: topic first, then the queues,
     * each by one sync write, so the visit order is known. */
    tu_name(b->name[NQ], sizeof b->name[NQ], "bl_topic");
    TU_OK(mqs_sub_create(s, b->name[NQ], "s0", &b->sub[0]), s);
    TU_OK(mqs_sub_create(s, b->name[NQ], "s1", &b->sub[1]), s);
    b->e = calloc(n, sizeof *b->e);
    assert_non_null(b->e);
    uint64_t rng = 0x1234567;
    for (int d = 0; d < NQ; d++) {
        char what[16];
        snprintf(what, sizeof what, "bl_q%d", d);
        tu_name(b->name[d], sizeof b->name[d], what);
        struct expect *e = &b->e[b->n++];
        e->dest = d;
        e->priority = 4;
        e->seed = 1000 + (uint64_t)d;
        e->len = 10;
        unsigned char body[10];
        tu_fill(body, sizeof body, e->seed);
        mqs_msg m = tu_msg(MQS_QUEUE, b->name[d], body, sizeof body, 4);
        TU_OK(mqs_enqueue(s, &m, &e->id), s);
    }
    /* The rest in batches of up to 100 with random destinations,
     * priorities and sizes. */
    enum { CHUNK = 100 };
    mqs_msg batch[CHUNK];
    unsigned char *bodies[CHUNK];
    while (b->n < n) {
        size_t k = n - b->n < CHUNK ? n - b->n : CHUNK;
        for (size_t i = 0; i < k; i++) {
            struct expect *e = &b->e[b->n + i];
            e->dest = (int)(rng_next(&rng) % NDEST);
            e->priority = (int)(rng_next(&rng) % 10);
            e->seed = b->n + i + 1;
            e->len = (size_t)(rng_next(&rng) % 200);
            bodies[i] = malloc(e->len + 1);
            assert_non_null(bodies[i]);
            tu_fill(bodies[i], e->len, e->seed);
            batch[i] = tu_msg(e->dest == NQ ? MQS_TOPIC : MQS_QUEUE,
                              b->name[e->dest], bodies[i], e->len, e->priority);
            /* the seed rides in the headers to tell messages apart */
            batch[i].headers = &e->seed;
            batch[i].headers_len = sizeof e->seed;
        }
        int64_t ids[CHUNK];
        TU_OK(mqs_enqueue_many(s, batch, k, ids), s);
        for (size_t i = 0; i < k; i++) {
            b->e[b->n + i].id = ids[i];
            free(bodies[i]);
        }
        b->n += k;
    }
    /* Ack about one in eight, per subscription for the topic. */
    int64_t *aid = malloc(n * NSUB * sizeof *aid);
    int64_t *asub = malloc(n * NSUB * sizeof *asub);
    assert_non_null(aid);
    assert_non_null(asub);
    size_t na = 0;
    for (size_t i = 0; i < b->n; i++) {
        struct expect *e = &b->e[i];
        int nsub = e->dest == NQ ? NSUB : 1;
        for (int j = 0; j < nsub; j++) {
            if (rng_next(&rng) % 8 != 0)
                continue;
            e->acked[j] = 1;
            aid[na] = e->id;
            asub[na] = e->dest == NQ ? b->sub[j] : 0;
            na++;
        }
    }
    for (size_t off = 0; off < na; off += 50)
        TU_OK(mqs_ack_many(s, aid + off, asub + off, na - off < 50 ? na - off : 50),
              s);
    free(aid);
    free(asub);
}

/* Expected pending of dest d (sub j for the topic), in delivery order. */
static size_t expected(const struct backlog *b, int d, int j,
                       const struct expect **out)
{
    size_t k = 0;
    for (size_t i = 0; i < b->n; i++)
        if (b->e[i].dest == d && !b->e[i].acked[j])
            out[k++] = &b->e[i];
    /* insertion sort by (priority desc, id asc); ids are distinct */
    for (size_t i = 1; i < k; i++) {
        const struct expect *x = out[i];
        size_t p = i;
        while (p > 0 && (out[p - 1]->priority < x->priority ||
                         (out[p - 1]->priority == x->priority &&
                          out[p - 1]->id > x->id))) {
            out[p] = out[p - 1];
            p--;
        }
        out[p] = x;
    }
    return k;
}

/* l[from..from+n) must be exactly want[0..n) with intact bodies. */
static void match_run(const tu_list *l, size_t from, const struct expect **want,
                      size_t n, int64_t sub_id)
{
    assert_true(from + n <= l->n);
    for (size_t i = 0; i < n; i++) {
        const tu_rmsg *r = &l->v[from + i];
        if (r->id != want[i]->id)
            fail_msg("position %zu: got id %lld (prio %d), want %lld (prio %d)",
                     i, (long long)r->id, r->priority, (long long)want[i]->id,
                     want[i]->priority);
        assert_int_equal(r->sub_id, sub_id);
        assert_int_equal(r->priority, want[i]->priority);
        assert_int_equal(r->body_len, want[i]->len);
        unsigned char *body = malloc(want[i]->len + 1);
        assert_non_null(body);
        tu_fill(body, want[i]->len, want[i]->seed);
        if (want[i]->len)
            assert_memory_equal(r->body, body, want[i]->len);
        free(body);
    }
}

static void test_recovery_backlog(void **state)
{
    mqs_store *s = *state;
    struct backlog b;
    backlog_build(s, &b, g_quick ? 600 : 3000);
    const struct expect **want = malloc(b.n * sizeof *want);
    assert_non_null(want);

    /* One cursor over everything: each (destination, subscription) is one
     * contiguous run, destinations in creation order, nothing twice.
     * Earlier tests' destinations share the run prefix: drop them. */
    tu_list all = {0};
    TU_OK(tu_collect(s, NULL, tu_run_prefix(), &all), s);
    size_t keep = 0;
    for (size_t i = 0; i < all.n; i++) {
        int ours = 0;
        for (int k = 0; k < NDEST; k++)
            ours |= strcmp(all.v[i].dest, b.name[k]) == 0;
        if (ours) {
            tu_rmsg tmp = all.v[keep];
            all.v[keep++] = all.v[i];
            all.v[i] = tmp;
        }
    }
    size_t total = 0;
    for (int d = 0; d < NDEST; d++)
        for (int j = 0; j < (d == NQ ? NSUB : 1); j++)
            total += expected(&b, d, j, want);
    assert_int_equal(keep, total);
    size_t pos = 0;
    int last_dest = -1;
    int seen_sub[NSUB] = {0};
    /* the topic was created first: its subscriptions come first */
    for (int run = 0; run < NSUB + NQ && pos < keep; run++) {
        const tu_rmsg *r = &all.v[pos];
        int d = -1;
        for (int k = 0; k < NDEST; k++)
            if (strcmp(r->dest, b.name[k]) == 0)
                d = k;
        assert_true(d >= 0);
        int j = 0;
        if (d == NQ) {
            j = r->sub_id == b.sub[0] ? 0 : 1;
            assert_int_equal(r->sub_id, b.sub[j]);
            assert_int_equal(seen_sub[j], 0);
            seen_sub[j] = 1;
            assert_int_equal(last_dest, run > 0 ? NQ : -1);
        } else {
            /* queues follow the topic, in creation order */
            assert_int_equal(d, last_dest == NQ ? 0 : last_dest + 1);
        }
        size_t n = expected(&b, d, j, want);
        match_run(&all, pos, want, n, d == NQ ? b.sub[j] : 0);
        pos += n;
        last_dest = d;
    }
    assert_int_equal(pos, keep);
    assert_int_equal(last_dest, NQ - 1);
    assert_int_equal(seen_sub[0] + seen_sub[1], 2);
    tu_list_free(&all);

    /* Per destination, with tiny and default pages. */
    static const size_t pages[] = {7, 1, 0};
    for (size_t p = 0; p < sizeof pages / sizeof pages[0]; p++) {
        for (int d = 0; d < NDEST; d++) {
            for (int j = 0; j < (d == NQ ? NSUB : 1); j++) {
                tu_list l = {0};
                const char *subn = d == NQ ? (j ? "s1" : "s0") : NULL;
                tu_recover(s, d == NQ ? MQS_TOPIC : MQS_QUEUE, b.name[d], subn,
                           pages[p], &l);
                size_t n = expected(&b, d, j, want);
                assert_int_equal(l.n, n);
                match_run(&l, 0, want, n, d == NQ ? b.sub[j] : 0);
                tu_list_free(&l);
                assert_int_equal(tu_pending(s, d == NQ ? MQS_TOPIC : MQS_QUEUE,
                                            b.name[d], subn),
                                 (int64_t)n);
            }
        }
    }
    /* The topic without a subscription name: both subscriptions. */
    tu_list l = {0};
    tu_recover(s, MQS_TOPIC, b.name[NQ], NULL, 7, &l);
    size_t n0 = expected(&b, NQ, 0, want);
    size_t n1 = expected(&b, NQ, 1, want);
    assert_int_equal(l.n, n0 + n1);
    tu_list_free(&l);
    free(want);
    free(b.e);
    /* leave a shared database small */
    for (int d = 0; d < NDEST; d++)
        TU_OK(mqs_purge(s, d == NQ ? MQS_TOPIC : MQS_QUEUE, b.name[d], NULL), s);
}

/* A cursor keeps going while writes go on (its own connection). */
static void test_cursor_with_writes(void **state)
{
    mqs_store *s = *state;
    char q[128], q2[128];
    tu_name(q, sizeof q, "cw");
    tu_name(q2, sizeof q2, "cw_other");
    int64_t ids[40];
    for (int i = 0; i < 40; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q, &i, sizeof i, 4);
        TU_OK(mqs_enqueue(s, &m, &ids[i]), s);
    }
    mqs_cursor_opts o;
    memset(&o, 0, sizeof o);
    o.kind = MQS_QUEUE;
    o.dest = q;
    o.page_rows = 5;
    mqs_cursor *c = NULL;
    TU_OK(mqs_cursor_open(s, &o, &c), s);
    int got = 0;
    for (int i = 0; i < 100; i++) {
        const mqs_message *m = NULL;
        int rc = mqs_cursor_next(c, &m);
        assert_true(rc >= 0);
        if (rc == 0)
            break;
        assert_int_equal(m->id, ids[got]);
        int64_t id = m->id;
        got++;
        /* what a broker does while recovering: ack what it read, and write
         * elsewhere; neither may disturb the cursor's pages */
        if (got % 3 == 0)
            TU_OK(mqs_ack(s, id, 0), s);
        mqs_msg w = tu_msg(MQS_QUEUE, q2, "w", 1, 4);
        TU_OK(mqs_enqueue(s, &w, NULL), s);
    }
    assert_int_equal(got, 40);
    assert_int_equal(tu_pending(s, MQS_QUEUE, q, NULL), 40 - 40 / 3);
    const mqs_message *m = NULL;
    assert_int_equal(mqs_cursor_next(c, &m), 0); /* stays at the end */
    mqs_cursor_close(c);
    mqs_cursor_close(NULL);

    /* an empty or unknown destination yields nothing */
    char none[128];
    tu_name(none, sizeof none, "cw_none");
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, none, NULL, 0, &l);
    assert_int_equal(l.n, 0);
    tu_recover(s, MQS_TOPIC, none, "x", 0, &l);
    assert_int_equal(l.n, 0);
    tu_list_free(&l);
}

/* Many cursors open at once on one thread (more than pool_size), read in
 * turns: each keeps its own position. */
static void test_many_cursors(void **state)
{
    (void)state;
    char *u = tu_uri_with(g_uri, "pool_size=2");
    mqs_store *s = tu_open_uri(u);
    free(u);
    enum { NC = 6, PER = 12 };
    char q[NC][128];
    int64_t ids[NC][PER];
    for (int c = 0; c < NC; c++) {
        tu_name(q[c], sizeof q[c], "mc");
        for (int i = 0; i < PER; i++) {
            mqs_msg m = tu_msg(MQS_QUEUE, q[c], &i, sizeof i, 4);
            TU_OK(mqs_enqueue(s, &m, &ids[c][i]), s);
        }
    }
    mqs_cursor *cur[NC];
    for (int c = 0; c < NC; c++) {
        mqs_cursor_opts o;
        memset(&o, 0, sizeof o);
        o.kind = MQS_QUEUE;
        o.dest = q[c];
        o.page_rows = 5;
        TU_OK(mqs_cursor_open(s, &o, &cur[c]), s);
    }
    for (int i = 0; i <= PER; i++) {
        for (int c = 0; c < NC; c++) {
            const mqs_message *m = NULL;
            int rc = mqs_cursor_next(cur[c], &m);
            if (i == PER) {
                assert_int_equal(rc, 0);
                continue;
            }
            assert_int_equal(rc, 1);
            assert_int_equal(m->id, ids[c][i]);
            assert_string_equal(m->dest, q[c]);
        }
    }
    for (int c = 0; c < NC; c++)
        mqs_cursor_close(cur[c]);
    mqs_close(s);
}

static void test_purge(void **state)
{
    mqs_store *s = *state;
    char q1[128], q2[128], t[128];
    tu_name(q1, sizeof q1, "purge1");
    tu_name(q2, sizeof q2, "purge2");
    tu_name(t, sizeof t, "purge_t");
    int64_t a = 0, b = 0;
    TU_OK(mqs_sub_create(s, t, "a", &a), s);
    TU_OK(mqs_sub_create(s, t, "b", &b), s);
    for (int i = 0; i < 7; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q1, "1", 1, i % 10);
        TU_OK(mqs_enqueue(s, &m, NULL), s);
    }
    for (int i = 0; i < 3; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q2, "2", 1, 4);
        TU_OK(mqs_enqueue(s, &m, NULL), s);
        m.kind = MQS_TOPIC;
        m.dest = t;
        TU_OK(mqs_enqueue(s, &m, NULL), s);
    }
    int64_t first = 0;
    TU_OK(mqs_sub_lookup(s, t, "a", &first), s);
    uint64_t removed = 999;
    TU_OK(mqs_purge(s, MQS_QUEUE, q1, &removed), s);
    assert_int_equal(removed, 7);
    assert_int_equal(tu_pending(s, MQS_QUEUE, q1, NULL), 0);
    assert_int_equal(tu_pending(s, MQS_QUEUE, q2, NULL), 3);
    assert_int_equal(tu_pending(s, MQS_TOPIC, t, "a"), 3);
    TU_OK(mqs_purge(s, MQS_QUEUE, q1, &removed), s);
    assert_int_equal(removed, 0);
    /* a topic counts once per subscription entry; subscriptions stay */
    TU_OK(mqs_purge(s, MQS_TOPIC, t, &removed), s);
    assert_int_equal(removed, 6);
    int64_t again = 0;
    TU_OK(mqs_sub_lookup(s, t, "a", &again), s);
    assert_int_equal(again, a);
    assert_int_equal(tu_pending(s, MQS_TOPIC, t, "b"), 0);
    assert_int_equal(tu_pending(s, MQS_QUEUE, q2, NULL), 3);
    /* still subscribed: new messages are kept */
    mqs_msg m = tu_msg(MQS_TOPIC, t, "x", 1, 4);
    int64_t id = 0;
    TU_OK(mqs_enqueue(s, &m, &id), s);
    assert_true(id > 0);
    assert_int_equal(tu_pending(s, MQS_TOPIC, t, "a"), 1);
    TU_OK(mqs_purge(s, MQS_QUEUE, q2, NULL), s);
    assert_int_equal(tu_pending(s, MQS_QUEUE, q2, NULL), 0);

    /* purge of everything only where this run owns the database */
    if (g_owned) {
        TU_OK(mqs_enqueue(s, &m, NULL), s);
        m.kind = MQS_QUEUE;
        TU_OK(mqs_enqueue(s, &m, NULL), s);
        TU_OK(mqs_purge(s, MQS_QUEUE, NULL, &removed), s);
        assert_true(removed >= 3);
        tu_list l = {0};
        TU_OK(tu_collect(s, NULL, NULL, &l), s);
        assert_int_equal(l.n, 0);
        tu_list_free(&l);
        TU_OK(mqs_sub_lookup(s, t, "b", &again), s);
    }
}

static void test_stats(void **state)
{
    (void)state;
    mqs_store *s = tu_open(); /* counters are per handle, from open */
    mqs_stats st = tu_stats(s);
    assert_int_equal(st.enqueued, 0);
    assert_int_equal(st.acked, 0);
    assert_int_equal(st.nacked, 0);
    assert_int_equal(st.failed, 0);
    assert_int_equal(st.queued, 0);
    assert_int_equal(st.queued_bytes, 0);
    assert_true(st.schema_version >= 1);
    char q[128];
    tu_name(q, sizeof q, "stats");
    int64_t ids[5];
    for (int i = 0; i < 5; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q, "s", 1, 4);
        TU_OK(mqs_enqueue(s, &m, &ids[i]), s);
    }
    TU_OK(mqs_ack(s, ids[0], 0), s);
    TU_OK(mqs_ack(s, ids[1], 0), s);
    TU_OK(mqs_nack(s, ids[2], 0), s);
    st = tu_stats(s);
    assert_int_equal(st.enqueued, 5);
    assert_int_equal(st.acked, 2);
    assert_int_equal(st.nacked, 1);
    assert_true(st.transactions >= 3);
    assert_true(st.max_batch >= 1);
    assert_int_equal(st.queued, 0);
    mqs_msg many[4];
    for (int i = 0; i < 4; i++)
        many[i] = tu_msg(MQS_QUEUE, q, "m", 1, 4);
    TU_OK(mqs_enqueue_many(s, many, 4, NULL), s);
    mqs_stats st2 = tu_stats(s);
    assert_int_equal(st2.enqueued, 9);
    assert_true(st2.transactions > st.transactions);
    assert_int_equal(st2.failed, 0);
    /* another handle counts for itself */
    mqs_store *s2 = tu_open();
    assert_int_equal(tu_stats(s2).enqueued, 0);
    mqs_close(s2);
    mqs_close(s);
}

struct fe {
    int calls;
};
static int fe_stop_cb(void *ud, const mqs_dest_info *d)
{
    struct fe *f = ud;
    (void)d;
    f->calls++;
    return 1;
}

static void test_dest_foreach(void **state)
{
    mqs_store *s = *state;
    char q[128], empty[128], t[128];
    tu_name(q, sizeof q, "fe_q");
    tu_name(empty, sizeof empty, "fe_empty");
    tu_name(t, sizeof t, "fe_t");
    int64_t a = 0, b = 0, id = 0;
    TU_OK(mqs_sub_create(s, t, "a", &a), s);
    TU_OK(mqs_sub_create(s, t, "b", &b), s);
    for (int i = 0; i < 3; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q, "q", 1, 4);
        TU_OK(mqs_enqueue(s, &m, NULL), s);
    }
    mqs_msg m = tu_msg(MQS_QUEUE, empty, "e", 1, 4);
    TU_OK(mqs_enqueue(s, &m, &id), s);
    TU_OK(mqs_ack(s, id, 0), s);
    m = tu_msg(MQS_TOPIC, t, "t", 1, 4);
    TU_OK(mqs_enqueue(s, &m, &id), s);
    TU_OK(mqs_enqueue(s, &m, NULL), s);
    TU_OK(mqs_ack(s, id, b), s);
    assert_int_equal(tu_pending(s, MQS_QUEUE, q, NULL), 3);
    assert_int_equal(tu_pending(s, MQS_QUEUE, empty, NULL), 0);
    assert_int_equal(tu_pending(s, MQS_TOPIC, t, "a"), 2);
    assert_int_equal(tu_pending(s, MQS_TOPIC, t, "b"), 1);
    /* a queue is not a topic of the same name */
    assert_int_equal(tu_pending(s, MQS_TOPIC, q, NULL), -1);

    /* early stop */
    struct fe f = {0};
    TU_OK(mqs_dest_foreach(s, fe_stop_cb, &f), s);
    assert_int_equal(f.calls, 1);
}

/* The per-row fields of dest_foreach, checked row by row. */
struct fe_rows {
    const char *q, *empty, *t;
    int64_t a, b, t0;
    int seen_q, seen_empty, seen_a, seen_b, bad;
};
static int fe_rows_cb(void *ud, const mqs_dest_info *d)
{
    struct fe_rows *f = ud;
    if (!d->dest)
        return 0;
    int64_t lo = f->t0 - 10 * 60 * 1000, hi = f->t0 + 10 * 60 * 1000;
    if (d->kind == MQS_QUEUE && !strcmp(d->dest, f->q)) {
        f->seen_q++;
        if (d->sub_id != 0 || d->sub_name || d->pending != 3 ||
            d->oldest_ms < lo || d->oldest_ms > hi)
            f->bad++;
    } else if (d->kind == MQS_QUEUE && !strcmp(d->dest, f->empty)) {
        f->seen_empty++;
        if (d->pending != 0 || d->oldest_ms != 0)
            f->bad++;
    } else if (d->kind == MQS_TOPIC && !strcmp(d->dest, f->t)) {
        if (d->sub_id == f->a) {
            f->seen_a++;
            if (!d->sub_name || strcmp(d->sub_name, "a") || d->pending != 1)
                f->bad++;
        } else if (d->sub_id == f->b) {
            f->seen_b++;
            if (!d->sub_name || strcmp(d->sub_name, "b") || d->pending != 0 ||
                d->oldest_ms != 0)
                f->bad++;
        } else {
            f->bad++;
        }
    }
    return 0;
}

static void test_dest_foreach_rows(void **state)
{
    mqs_store *s = *state;
    char q[128], empty[128], t[128];
    struct fe_rows f;
    memset(&f, 0, sizeof f);
    f.q = tu_name(q, sizeof q, "fr_q");
    f.empty = tu_name(empty, sizeof empty, "fr_empty");
    f.t = tu_name(t, sizeof t, "fr_t");
    f.t0 = tu_now_ms();
    TU_OK(mqs_sub_create(s, t, "a", &f.a), s);
    TU_OK(mqs_sub_create(s, t, "b", &f.b), s);
    int64_t id = 0;
    for (int i = 0; i < 3; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q, "q", 1, 4);
        TU_OK(mqs_enqueue(s, &m, NULL), s);
    }
    mqs_msg m = tu_msg(MQS_QUEUE, empty, "e", 1, 4);
    TU_OK(mqs_enqueue(s, &m, &id), s);
    TU_OK(mqs_ack(s, id, 0), s);
    m = tu_msg(MQS_TOPIC, t, "t", 1, 4);
    TU_OK(mqs_enqueue(s, &m, &id), s);
    TU_OK(mqs_ack(s, id, f.b), s);
    TU_OK(mqs_dest_foreach(s, fe_rows_cb, &f), s);
    assert_int_equal(f.seen_q, 1);
    assert_int_equal(f.seen_empty, 1);
    assert_int_equal(f.seen_a, 1);
    assert_int_equal(f.seen_b, 1);
    assert_int_equal(f.bad, 0);
}

/* ---- 1,000 destinations ---- */
enum { MANY = 1000 };
struct many_fe {
    const char *prefix;
    size_t plen;
    int hits[MANY];
    int other;
};
static int many_cb(void *ud, const mqs_dest_info *d)
{
    struct many_fe *f = ud;
    if (!d->dest || strncmp(d->dest, f->prefix, f->plen) != 0)
        return 0;
    int k = atoi(d->dest + f->plen);
    if (k < 0 || k >= MANY || d->kind != MQS_QUEUE || d->pending != 1)
        f->other++;
    else
        f->hits[k]++;
    return 0;
}

struct many_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, failed;
};
static void many_done(void *ud, int rc, int64_t id, const char *errmsg)
{
    struct many_wait *w = ud;
    (void)errmsg;
    pthread_mutex_lock(&w->mu);
    w->done++;
    if (rc != 0 || id <= 0)
        w->failed++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void test_many_destinations(void **state)
{
    mqs_store *s = *state;
    char prefix[128];
    tu_name(prefix, sizeof prefix, "many_");
    char (*names)[160] = malloc(MANY * sizeof *names);
    assert_non_null(names);
    for (int i = 0; i < MANY; i++)
        snprintf(names[i], sizeof names[i], "%s%d", prefix, i);
    /* Half async (destinations created across many writer batches), half
     * in one enqueue_many transaction. */
    struct many_wait w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
                          0, 0};
    for (int i = 0; i < MANY / 2; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, names[i], names[i], strlen(names[i]), 4);
        TU_OK(mqs_enqueue_async(s, &m, many_done, &w), s);
    }
    mqs_msg *msgs = malloc((MANY / 2) * sizeof *msgs);
    assert_non_null(msgs);
    for (int i = MANY / 2; i < MANY; i++)
        msgs[i - MANY / 2] =
            tu_msg(MQS_QUEUE, names[i], names[i], strlen(names[i]), 4);
    TU_OK(mqs_enqueue_many(s, msgs, MANY / 2, NULL), s);
    free(msgs);
    pthread_mutex_lock(&w.mu);
    for (int i = 0; i < 2000 && w.done < MANY / 2; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&w.cv, &w.mu, &ts);
    }
    int done = w.done, failed = w.failed;
    pthread_mutex_unlock(&w.mu);
    assert_int_equal(done, MANY / 2);
    assert_int_equal(failed, 0);

    struct many_fe *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->prefix = prefix;
    f->plen = strlen(prefix);
    TU_OK(mqs_dest_foreach(s, many_cb, f), s);
    assert_int_equal(f->other, 0);
    for (int i = 0; i < MANY; i++)
        if (f->hits[i] != 1)
            fail_msg("destination %s seen %d times", names[i], f->hits[i]);
    free(f);

    /* One cursor over everything finds each message in its destination. */
    tu_list l = {0};
    TU_OK(tu_collect(s, NULL, prefix, &l), s);
    assert_int_equal(l.n, MANY);
    int *seen = calloc(MANY, sizeof *seen);
    assert_non_null(seen);
    for (size_t i = 0; i < l.n; i++) {
        int k = atoi(l.v[i].dest + strlen(prefix));
        assert_true(k >= 0 && k < MANY);
        assert_int_equal(l.v[i].body_len, strlen(names[k]));
        assert_memory_equal(l.v[i].body, names[k], strlen(names[k]));
        seen[k]++;
    }
    for (int i = 0; i < MANY; i++)
        assert_int_equal(seen[i], 1);
    free(seen);
    tu_list_free(&l);
    free(names);
}

#define T(f) cmocka_unit_test_setup_teardown(f, tu_setup_store, tu_teardown_store)
static const struct CMUnitTest tests[] = {
    T(test_recovery_backlog),  T(test_cursor_with_writes),
    cmocka_unit_test(test_many_cursors),
    T(test_purge),             cmocka_unit_test(test_stats),
    T(test_dest_foreach),      T(test_dest_foreach_rows),
    T(test_many_destinations),
};
TU_GROUP(tu_group_recovery, "recovery", tests);
