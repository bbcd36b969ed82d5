/* t_messages.c - queue messages: round trips, limits, order, expiry, acks. */
#include "testutil.h"

#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Slack for the store's clock vs ours (a database server may be elsewhere);
 * it still catches seconds-for-milliseconds and zero timestamps. */
#define CLOCK_SLACK_MS (10 * 60 * 1000)

static void test_roundtrip(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "roundtrip");
    const char hdr[] = "content-type:text/plain\nx-id:42\n";
    const char body[] = "hello, durable world";
    mqs_msg m = tu_msg(MQS_QUEUE, q, body, sizeof body - 1, 7);
    m.headers = hdr;
    m.headers_len = sizeof hdr - 1;
    int64_t t0 = tu_now_ms();
    m.expires_ms = t0 + 3600 * 1000;
    int64_t id = -1;
    TU_OK(mqs_enqueue(s, &m, &id), s);
    int64_t t1 = tu_now_ms();
    assert_true(id > 0);

    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 1);
    tu_rmsg *r = &l.v[0];
    assert_int_equal(r->id, id);
    assert_int_equal(r->kind, MQS_QUEUE);
    assert_string_equal(r->dest, q);
    assert_int_equal(r->sub_id, 0);
    assert_null(r->sub_name);
    assert_int_equal(r->priority, 7);
    assert_int_equal(r->expires_ms, m.expires_ms);
    assert_true(r->enqueued_ms >= t0 - CLOCK_SLACK_MS);
    assert_true(r->enqueued_ms <= t1 + CLOCK_SLACK_MS);
    assert_int_equal(r->redeliveries, 0);
    assert_int_equal(r->headers_len, m.headers_len);
    assert_memory_equal(r->headers, hdr, m.headers_len);
    assert_int_equal(r->body_len, m.body_len);
    assert_memory_equal(r->body, body, m.body_len);
    assert_int_equal(tu_pending(s, MQS_QUEUE, q, NULL), 1);
    tu_list_free(&l);
}

static void test_empty_and_binary(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "binary");
    unsigned char all[512];
    for (size_t i = 0; i < sizeof all; i++)
        all[i] = (unsigned char)(i * 7); /* every byte value, NULs included */
    const unsigned char nul_hdr[] = {0, 'a', 0, 0, 'b', 0};

    struct {
        const void *h;
        size_t hl;
        const void *b;
        size_t bl;
    } cases[] = {
        {NULL, 0, NULL, 0},                   /* nothing at all */
        {nul_hdr, sizeof nul_hdr, NULL, 0},   /* headers only */
        {NULL, 0, all, sizeof all},           /* binary body */
        {nul_hdr, sizeof nul_hdr, all, 1},    /* a single NUL byte body */
        {"", 0, "", 0},                       /* non-NULL empty buffers */
    };
    size_t n = sizeof cases / sizeof cases[0];
    int64_t ids[8];
    for (size_t i = 0; i < n; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q, cases[i].b, cases[i].bl, 4);
        m.headers = cases[i].h;
        m.headers_len = cases[i].hl;
        TU_OK(mqs_enqueue(s, &m, &ids[i]), s);
    }
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(l.v[i].id, ids[i]);
        assert_int_equal(l.v[i].headers_len, cases[i].hl);
        assert_int_equal(l.v[i].body_len, cases[i].bl);
        if (cases[i].hl)
            assert_memory_equal(l.v[i].headers, cases[i].h, cases[i].hl);
        if (cases[i].bl)
            assert_memory_equal(l.v[i].body, cases[i].b, cases[i].bl);
    }
    tu_list_free(&l);
}

static void test_large_body(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "large");
    size_t len = 1024 * 1024;
    unsigned char *body = malloc(len);
    assert_non_null(body);
    tu_fill(body, len, 1234);
    mqs_msg m = tu_msg(MQS_QUEUE, q, body, len, 4);
    int64_t id = 0;
    TU_OK(mqs_enqueue(s, &m, &id), s);
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].id, id);
    assert_int_equal(l.v[0].body_len, len);
    assert_memory_equal(l.v[0].body, body, len);
    tu_list_free(&l);
    free(body);
}

static int async_called;
static void count_done(void *ud, int rc, int64_t id, const char *errmsg)
{
    (void)ud;
    (void)rc;
    (void)id;
    (void)errmsg;
    __atomic_add_fetch(&async_called, 1, __ATOMIC_SEQ_CST);
}

/* Exactly mqs_max_message_size() is stored; one byte more is refused by
 * every write path and stores nothing. */
static void test_max_size(void **state)
{
    mqs_store *s = *state;
    char q[128], qbig[128];
    tu_name(q, sizeof q, "maxsize");
    tu_name(qbig, sizeof qbig, "toobig");
    size_t max = mqs_max_message_size(s);
    assert_true(max > 64);
    unsigned char hdr[16];
    tu_fill(hdr, sizeof hdr, 1);
    size_t blen = max - sizeof hdr;
    unsigned char *body = malloc(blen + 1);
    assert_non_null(body);
    tu_fill(body, blen + 1, 99);

    mqs_msg m = tu_msg(MQS_QUEUE, q, body, blen, 4);
    m.headers = hdr;
    m.headers_len = sizeof hdr;
    int64_t id = 0;
    TU_OK(mqs_enqueue(s, &m, &id), s);
    assert_true(id > 0);

    mqs_msg big = m;
    big.dest = qbig;
    big.body_len = blen + 1;
    int64_t bid = 77;
    assert_int_equal(mqs_enqueue(s, &big, &bid), MQS_ETOOBIG);
    assert_true(strlen(mqs_errmsg(s)) > 0);
    /* the same through every other write path */
    mqs_msg pair[2] = {m, big};
    pair[0].dest = qbig;
    int64_t pids[2];
    assert_int_equal(mqs_enqueue_many(s, pair, 2, pids), MQS_ETOOBIG);
    mqs_txn *t = NULL;
    TU_OK(mqs_txn_begin(s, &t), s);
    assert_int_equal(mqs_txn_enqueue(t, &big), MQS_ETOOBIG);
    assert_int_equal(mqs_txn_size(t), 0);
    mqs_txn_rollback(t);
    async_called = 0;
    assert_int_equal(mqs_enqueue_async(s, &big, count_done, NULL), MQS_ETOOBIG);
    /* headers alone may exceed it too */
    mqs_msg hbig = tu_msg(MQS_QUEUE, qbig, NULL, 0, 4);
    hbig.headers = body;
    hbig.headers_len = max + 1;
    assert_int_equal(mqs_enqueue(s, &hbig, NULL), MQS_ETOOBIG);

    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].id, id);
    assert_int_equal(l.v[0].headers_len, sizeof hdr);
    assert_memory_equal(l.v[0].headers, hdr, sizeof hdr);
    assert_int_equal(l.v[0].body_len, blen);
    assert_memory_equal(l.v[0].body, body, blen);
    tu_list_free(&l);
    tu_recover(s, MQS_QUEUE, qbig, NULL, 0, &l);
    assert_int_equal(l.n, 0);
    tu_list_free(&l);
    int64_t p = tu_pending(s, MQS_QUEUE, qbig, NULL);
    assert_true(p <= 0);
    /* a validation error never reaches the completion callback */
    assert_int_equal(__atomic_load_n(&async_called, __ATOMIC_SEQ_CST), 0);
    free(body);
}

static void test_priority_order(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "prio");
    enum { N = 60 };
    int64_t ids[N];
    int prio[N];
    for (int i = 0; i < N; i++) {
        prio[i] = (i * 7 + 3) % 10; /* every priority, interleaved */
        char b[16];
        int bl = snprintf(b, sizeof b, "m%d", i);
        mqs_msg m = tu_msg(MQS_QUEUE, q, b, (size_t)bl, prio[i]);
        TU_OK(mqs_enqueue(s, &m, &ids[i]), s);
    }
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, N);
    for (size_t i = 0; i < l.n; i++) {
        /* find which enqueue this is and check it kept its priority/body */
        int k = -1;
        for (int j = 0; j < N; j++)
            if (ids[j] == l.v[i].id)
                k = j;
        assert_true(k >= 0);
        assert_int_equal(l.v[i].priority, prio[k]);
        char b[16];
        int bl = snprintf(b, sizeof b, "m%d", k);
        assert_int_equal(l.v[i].body_len, (size_t)bl);
        assert_memory_equal(l.v[i].body, b, (size_t)bl);
        if (i > 0) {
            const tu_rmsg *a = &l.v[i - 1], *b2 = &l.v[i];
            assert_true(a->priority > b2->priority ||
                        (a->priority == b2->priority && a->id < b2->id));
        }
    }
    assert_int_equal(l.v[0].priority, MQS_PRIORITY_MAX);
    assert_int_equal(l.v[N - 1].priority, MQS_PRIORITY_MIN);
    tu_list_free(&l);
}

static void test_bad_arguments(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "badargs");
    mqs_msg m = tu_msg(MQS_QUEUE, q, "x", 1, -1);
    assert_int_equal(mqs_enqueue(s, &m, NULL), MQS_EINVAL);
    assert_non_null(strstr(mqs_errmsg(s), "priority"));
    m.priority = 10;
    assert_int_equal(mqs_enqueue(s, &m, NULL), MQS_EINVAL);
    assert_non_null(strstr(mqs_errmsg(s), "priority"));
    assert_int_equal(mqs_enqueue_async(s, &m, NULL, NULL), MQS_EINVAL);
    m.priority = 4;
    m.kind = (mqs_kind)5;
    assert_int_equal(mqs_enqueue(s, &m, NULL), MQS_EINVAL);
    m.kind = MQS_QUEUE;
    m.dest = NULL;
    assert_int_equal(mqs_enqueue(s, &m, NULL), MQS_EINVAL);
    m.dest = "";
    assert_int_equal(mqs_enqueue(s, &m, NULL), MQS_EINVAL);
    char longname[300];
    memset(longname, 'n', sizeof longname);
    longname[256] = '\0'; /* 256 bytes: one too many */
    m.dest = longname;
    assert_int_equal(mqs_enqueue(s, &m, NULL), MQS_EINVAL);
    /* a bad message in a batch fails the whole batch */
    mqs_msg pair[2] = {tu_msg(MQS_QUEUE, q, "ok", 2, 4),
                       tu_msg(MQS_QUEUE, q, "bad", 3, 11)};
    assert_int_equal(mqs_enqueue_many(s, pair, 2, NULL), MQS_EINVAL);
    assert_true(tu_pending(s, MQS_QUEUE, q, NULL) <= 0);

    /* 255 bytes is allowed and round-trips */
    size_t plen = strlen(q);
    memcpy(longname, q, plen);
    memset(longname + plen, 'x', 255 - plen);
    longname[255] = '\0';
    m = tu_msg(MQS_QUEUE, longname, "y", 1, 4);
    int64_t id = 0;
    TU_OK(mqs_enqueue(s, &m, &id), s);
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, longname, NULL, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].id, id);
    tu_list_free(&l);
}

static void test_ids_increasing(void **state)
{
    mqs_store *s = *state;
    char q1[128], q2[128];
    tu_name(q1, sizeof q1, "ids_a");
    tu_name(q2, sizeof q2, "ids_b");
    int64_t last = 0;
    for (int i = 0; i < 50; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, i % 2 ? q1 : q2, "i", 1, i % 10);
        int64_t id = 0;
        TU_OK(mqs_enqueue(s, &m, &id), s);
        assert_true(id > last);
        last = id;
    }
    /* an acked id is never handed out again */
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q1, NULL, 0, &l);
    for (size_t i = 0; i < l.n; i++)
        TU_OK(mqs_ack(s, l.v[i].id, 0), s);
    tu_list_free(&l);
    mqs_msg m = tu_msg(MQS_QUEUE, q1, "j", 1, 4);
    int64_t id = 0;
    TU_OK(mqs_enqueue(s, &m, &id), s);
    assert_true(id > last);
}

static void test_expiry(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "expiry");
    int64_t now = tu_now_ms();
    mqs_stats st0 = tu_stats(s);
    mqs_msg past = tu_msg(MQS_QUEUE, q, "past", 4, 9);
    past.expires_ms = now - 60 * 1000;
    mqs_msg soon = tu_msg(MQS_QUEUE, q, "soon", 4, 5);
    soon.expires_ms = now + 300;
    mqs_msg future = tu_msg(MQS_QUEUE, q, "future", 6, 4);
    future.expires_ms = now + 3600 * 1000;
    mqs_msg never = tu_msg(MQS_QUEUE, q, "never", 5, 0);
    int64_t id_past = 0, id_soon = 0, id_future = 0, id_never = 0;
    TU_OK(mqs_enqueue(s, &past, &id_past), s);
    TU_OK(mqs_enqueue(s, &soon, &id_soon), s);
    TU_OK(mqs_enqueue(s, &future, &id_future), s);
    TU_OK(mqs_enqueue(s, &never, &id_never), s);
    tu_sleep_ms(600); /* let "soon" expire */

    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.v[0].id, id_future);
    assert_int_equal(l.v[0].expires_ms, future.expires_ms);
    assert_int_equal(l.v[1].id, id_never);
    assert_int_equal(l.v[1].expires_ms, 0);
    tu_list_free(&l);
    mqs_stats st1 = tu_stats(s);
    assert_true(st1.expired >= st0.expired + 2);
    /* expired messages are removed, perhaps through the writer: poll */
    int64_t p = -1;
    for (int i = 0; i < 100; i++) {
        p = tu_pending(s, MQS_QUEUE, q, NULL);
        if (p == 2)
            break;
        tu_sleep_ms(20);
    }
    assert_int_equal(p, 2);
    /* once removed they are not found (nor counted) again */
    tu_recover(s, MQS_QUEUE, q, NULL, 3, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.v[0].id, id_future);
    assert_int_equal(l.v[1].id, id_never);
    tu_list_free(&l);
    mqs_stats st2 = tu_stats(s);
    assert_int_equal(st2.expired, st1.expired);

    /* the same for a subscription's copy of a topic message */
    char t[128];
    tu_name(t, sizeof t, "expiry_t");
    int64_t sub = 0, tid_past = 0, tid_future = 0;
    TU_OK(mqs_sub_create(s, t, "s", &sub), s);
    mqs_msg tp = tu_msg(MQS_TOPIC, t, "past", 4, 4);
    tp.expires_ms = tu_now_ms() - 1000;
    TU_OK(mqs_enqueue(s, &tp, &tid_past), s);
    tp.expires_ms = tu_now_ms() + 3600 * 1000;
    TU_OK(mqs_enqueue(s, &tp, &tid_future), s);
    tu_recover(s, MQS_TOPIC, t, "s", 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].id, tid_future);
    tu_list_free(&l);
    assert_true(tu_stats(s).expired >= st2.expired + 1);
    (void)id_past;
    (void)id_soon;
}

/* Names are bytes: quotes, wildcards, case and trailing spaces all make
 * distinct destinations (a broker's names are case-sensitive). */
static void test_dest_names(void **state)
{
    mqs_store *s = *state;
    char base[128];
    tu_name(base, sizeof base, "nm");
    static const char *const suffix[] = {
        "abc",          "ABC",           "Abc",       "abc ",
        "a_c",          "a%c",           "q'uote",    "dq\"uote",
        "semi;colon",   "back\\slash",   "sp ace",    "\xc3\xbc" "n" "\xc3\xaf" "c" "\xc3\xb6" "de",
        "\xe5\x90\x8d\xe5\x89\x8d", "tab\tname", "x'); DROP TABLE mqs_msg; --",
    };
    enum { N = sizeof suffix / sizeof suffix[0] };
    char names[N][200];
    int64_t ids[N];
    for (size_t i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "%s%s", base, suffix[i]);
        mqs_msg m = tu_msg(MQS_QUEUE, names[i], suffix[i], strlen(suffix[i]), 4);
        TU_OK(mqs_enqueue(s, &m, &ids[i]), s);
    }
    for (size_t i = 0; i < N; i++) {
        tu_list l = {0};
        tu_recover(s, MQS_QUEUE, names[i], NULL, 0, &l);
        if (l.n != 1)
            fail_msg("destination \"%s\" holds %zu messages, expected 1",
                     names[i], l.n);
        assert_int_equal(l.v[0].id, ids[i]);
        assert_memory_equal(l.v[0].body, suffix[i], strlen(suffix[i]));
        tu_list_free(&l);
        assert_int_equal(tu_pending(s, MQS_QUEUE, names[i], NULL), 1);
    }
    /* subscription names too */
    int64_t a = 0, b = 0, c = 0;
    TU_OK(mqs_sub_create(s, names[0], "Sub", &a), s);
    TU_OK(mqs_sub_create(s, names[0], "sub", &b), s);
    TU_OK(mqs_sub_create(s, names[0], "sub ", &c), s);
    assert_true(a != b && b != c && a != c);
}

static void test_ack_removes(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "ack");
    int64_t ids[6];
    mqs_stats st0 = tu_stats(s);
    for (int i = 0; i < 6; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q, &i, sizeof i, 4);
        TU_OK(mqs_enqueue(s, &m, &ids[i]), s);
    }
    assert_int_equal(tu_pending(s, MQS_QUEUE, q, NULL), 6);
    TU_OK(mqs_ack(s, ids[1], 0), s);
    TU_OK(mqs_ack(s, ids[4], 0), s);
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 4);
    const int keep[] = {0, 2, 3, 5};
    for (size_t i = 0; i < 4; i++)
        assert_int_equal(l.v[i].id, ids[keep[i]]);
    tu_list_free(&l);
    assert_int_equal(tu_pending(s, MQS_QUEUE, q, NULL), 4);
    mqs_stats st1 = tu_stats(s);
    assert_true(st1.enqueued >= st0.enqueued + 6);
    assert_true(st1.acked >= st0.acked + 2);
    assert_true(st1.transactions > st0.transactions);
}

static void test_ack_idempotent(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "ack2");
    int64_t a = 0, b = 0;
    mqs_msg m = tu_msg(MQS_QUEUE, q, "a", 1, 4);
    TU_OK(mqs_enqueue(s, &m, &a), s);
    TU_OK(mqs_enqueue(s, &m, &b), s);
    TU_OK(mqs_ack(s, a, 0), s);
    TU_OK(mqs_ack(s, a, 0), s);                    /* replayed */
    TU_OK(mqs_ack(s, (int64_t)1 << 60, 0), s);     /* never existed */
    TU_OK(mqs_nack(s, (int64_t)1 << 60, 0), s);
    TU_OK(mqs_nack(s, a, 0), s);                   /* acked: no effect */
    int64_t dup[3] = {a, a, b};
    TU_OK(mqs_ack_many(s, dup, NULL, 2), s);
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].id, b);
    assert_int_equal(l.v[0].redeliveries, 0);
    tu_list_free(&l);
}

static void test_ack_many(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "ackmany");
    int64_t ids[10];
    for (int i = 0; i < 10; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q, &i, sizeof i, 4);
        TU_OK(mqs_enqueue(s, &m, &ids[i]), s);
    }
    int64_t even[5], zero[5] = {0};
    for (int i = 0; i < 5; i++)
        even[i] = ids[2 * i];
    TU_OK(mqs_ack_many(s, even, NULL, 3), s);
    TU_OK(mqs_ack_many(s, even + 3, zero, 2), s);
    TU_OK(mqs_ack_many(s, even, NULL, 0), s);
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(l.v[i].id, ids[2 * i + 1]);
    tu_list_free(&l);
}

static void test_nack(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "nack");
    int64_t a = 0, b = 0;
    mqs_msg m = tu_msg(MQS_QUEUE, q, "n", 1, 4);
    TU_OK(mqs_enqueue(s, &m, &a), s);
    TU_OK(mqs_enqueue(s, &m, &b), s);
    mqs_stats st0 = tu_stats(s);
    TU_OK(mqs_nack(s, a, 0), s);
    TU_OK(mqs_nack(s, a, 0), s);
    TU_OK(mqs_nack(s, b, 0), s);
    mqs_stats st1 = tu_stats(s);
    assert_true(st1.nacked >= st0.nacked + 3);
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 2); /* nacked messages stay pending, in order */
    assert_int_equal(l.v[0].id, a);
    assert_int_equal(l.v[0].redeliveries, 2);
    assert_int_equal(l.v[1].id, b);
    assert_int_equal(l.v[1].redeliveries, 1);
    tu_list_free(&l);
    /* the count survives a reopen */
    mqs_store *s2 = tu_open();
    tu_recover(s2, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.v[0].redeliveries, 2);
    tu_list_free(&l);
    mqs_close(s2);
}

struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done, failed;
};

static void waiter_done(void *ud, int rc, int64_t id, const char *errmsg)
{
    struct waiter *w = ud;
    /* no cmocka asserts here: this is a library thread */
    pthread_mutex_lock(&w->mu);
    w->done++;
    if (rc != 0 || !errmsg || errmsg[0] != '\0')
        w->failed++;
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Wait (up to 10 s) for n completions; returns how many came, *failed
 * how many of them failed. */
static int waiter_wait(struct waiter *w, int n, int *failed)
{
    pthread_mutex_lock(&w->mu);
    for (int i = 0; i < 1000 && w->done < n; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&w->cv, &w->mu, &ts);
    }
    int done = w->done;
    *failed = w->failed;
    pthread_mutex_unlock(&w->mu);
    return done;
}

static void test_ack_async(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "ackasync");
    int64_t ids[4];
    for (int i = 0; i < 4; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q, "a", 1, 4);
        TU_OK(mqs_enqueue(s, &m, &ids[i]), s);
    }
    struct waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0,
                       0};
    TU_OK(mqs_ack_async(s, ids[0], 0, waiter_done, &w), s);
    TU_OK(mqs_ack_async(s, ids[2], 0, waiter_done, &w), s);
    TU_OK(mqs_ack_async(s, ids[3], 0, NULL, NULL), s);
    int failed = 0, done = waiter_wait(&w, 2, &failed);
    assert_int_equal(done, 2);
    assert_int_equal(failed, 0);
    /* the un-awaited ack lands soon after */
    int64_t p = -1;
    for (int i = 0; i < 100; i++) {
        p = tu_pending(s, MQS_QUEUE, q, NULL);
        if (p == 1)
            break;
        tu_sleep_ms(20);
    }
    assert_int_equal(p, 1);
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].id, ids[1]);
    tu_list_free(&l);
}

/* Async nack: counted like a sync one, in order with other writes. */
static void test_nack_async(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "nackasync");
    int64_t a = 0, b = 0;
    mqs_msg m = tu_msg(MQS_QUEUE, q, "n", 1, 4);
    TU_OK(mqs_enqueue(s, &m, &a), s);
    TU_OK(mqs_enqueue(s, &m, &b), s);
    struct waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0,
                       0};
    TU_OK(mqs_nack_async(s, a, 0, waiter_done, &w), s);
    TU_OK(mqs_nack_async(s, a, 0, NULL, NULL), s);
    TU_OK(mqs_nack_async(s, b, 0, waiter_done, &w), s);
    TU_OK(mqs_nack_async(s, (int64_t)1 << 60, 0, waiter_done, &w), s);
    int failed = 0, done = waiter_wait(&w, 3, &failed);
    assert_int_equal(done, 3);
    assert_int_equal(failed, 0);
    /* the un-awaited nack was submitted before the last awaited one, and
     * completions come in submission order: it is committed too */
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.v[0].id, a);
    assert_int_equal(l.v[0].redeliveries, 2);
    assert_int_equal(l.v[1].redeliveries, 1);
    tu_list_free(&l);
}

/* Producer marks: per producer the highest sequence ever marked, kept
 * across sessions, listed, pruned by age; bad arguments refused. */
struct marks_seen {
    char p1[64], p2[64];
    int64_t s1, s2;
    int n, stop_after;
};

static int collect_marks(void *ud, const char *producer, int64_t seq)
{
    struct marks_seen *m = ud;
    m->n++;
    if (!strcmp(producer, m->p1))
        m->s1 = seq;
    else if (!strcmp(producer, m->p2))
        m->s2 = seq;
    return m->stop_after && m->n >= m->stop_after;
}

static void test_producer_marks(void **state)
{
    mqs_store *s = *state;
    struct marks_seen m = {0};
    tu_name(m.p1, sizeof m.p1, "prodA");
    tu_name(m.p2, sizeof m.p2, "prodB");
    struct waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0,
                       0};
    TU_OK(mqs_mark_async(s, m.p1, 5, waiter_done, &w), s);
    TU_OK(mqs_mark_async(s, m.p1, 3, waiter_done, &w), s); /* never down */
    TU_OK(mqs_mark_async(s, m.p2, 7, waiter_done, &w), s);
    TU_OK(mqs_mark_async(s, m.p2, 9, NULL, NULL), s);
    /* An async ack queued after them commits no earlier than they do. */
    char q[128];
    tu_name(q, sizeof q, "marks");
    mqs_msg msg = tu_msg(MQS_QUEUE, q, "x", 1, 4);
    int64_t id = 0;
    TU_OK(mqs_enqueue(s, &msg, &id), s);
    TU_OK(mqs_ack_async(s, id, 0, waiter_done, &w), s);
    int failed = 0, done = waiter_wait(&w, 4, &failed);
    assert_int_equal(done, 4);
    assert_int_equal(failed, 0);
    TU_OK(mqs_mark_foreach(s, collect_marks, &m), s);
    assert_int_equal(m.s1, 5);
    assert_int_equal(m.s2, 9);
    assert_true(m.n >= 2);

    /* Kept by the database: a new store handle sees them. */
    mqs_store *s2 = tu_open();
    struct marks_seen m2 = {0};
    memcpy(m2.p1, m.p1, sizeof m.p1);
    memcpy(m2.p2, m.p2, sizeof m.p2);
    TU_OK(mqs_mark_foreach(s2, collect_marks, &m2), s2);
    assert_int_equal(m2.s1, 5);
    assert_int_equal(m2.s2, 9);
    /* A non-zero return stops the walk, and is not an error. */
    struct marks_seen one = {.stop_after = 1};
    TU_OK(mqs_mark_foreach(s2, collect_marks, &one), s2);
    assert_int_equal(one.n, 1);
    mqs_close(s2);

    assert_int_equal(mqs_mark_async(s, "", 1, NULL, NULL), MQS_EINVAL);
    assert_int_equal(mqs_mark_async(s, m.p1, 0, NULL, NULL), MQS_EINVAL);
    assert_int_equal(mqs_mark_async(s, NULL, 1, NULL, NULL), MQS_EINVAL);
    char longp[200];
    memset(longp, 'p', 129);
    longp[129] = '\0';
    assert_int_equal(mqs_mark_async(s, longp, 1, NULL, NULL), MQS_EINVAL);
    assert_int_equal(mqs_mark_foreach(s, NULL, NULL), MQS_EINVAL);

    /* Pruning: nothing is older than a minute ago; everything is older
     * than a minute from now. */
    uint64_t removed = 99;
    TU_OK(mqs_mark_prune(s, tu_now_ms() - 60000, &removed), s);
    struct marks_seen m3 = {0};
    memcpy(m3.p1, m.p1, sizeof m.p1);
    memcpy(m3.p2, m.p2, sizeof m.p2);
    TU_OK(mqs_mark_foreach(s, collect_marks, &m3), s);
    assert_int_equal(m3.s1, 5);
    TU_OK(mqs_mark_prune(s, tu_now_ms() + 60000, &removed), s);
    assert_true(removed >= 2);
    struct marks_seen m4 = {0};
    memcpy(m4.p1, m.p1, sizeof m.p1);
    TU_OK(mqs_mark_foreach(s, collect_marks, &m4), s);
    assert_int_equal(m4.s1, 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, tu_setup_store, tu_teardown_store)
static const struct CMUnitTest tests[] = {
    T(test_roundtrip),    T(test_empty_and_binary), T(test_large_body),
    T(test_max_size),     T(test_priority_order),   T(test_bad_arguments),
    T(test_ids_increasing), T(test_expiry),         T(test_dest_names),
    T(test_ack_removes),
    T(test_ack_idempotent), T(test_ack_many),       T(test_nack),
    T(test_ack_async),      T(test_nack_async),     T(test_producer_marks),
};
TU_GROUP(tu_group_messages, "messages", tests);
