/* t_txn.c - client transactions, batch enqueue, async enqueue. */
#include "testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Fixture shared by commit and rollback: a pending message on q3 that the
 * transaction acks, and a topic subscription. */
struct txn_fix {
    char q1[128], q2[128], q3[128], t[128];
    int64_t x, sub;
};

static void txn_prepare(mqs_store *s, struct txn_fix *f, mqs_txn **out)
{
    tu_name(f->q1, sizeof f->q1, "txn_q1");
    tu_name(f->q2, sizeof f->q2, "txn_q2");
    tu_name(f->q3, sizeof f->q3, "txn_q3");
    tu_name(f->t, sizeof f->t, "txn_t");
    mqs_msg m = tu_msg(MQS_QUEUE, f->q3, "to-ack", 6, 4);
    TU_OK(mqs_enqueue(s, &m, &f->x), s);
    TU_OK(mqs_sub_create(s, f->t, "s", &f->sub), s);

    mqs_txn *t = NULL;
    TU_OK(mqs_txn_begin(s, &t), s);
    assert_non_null(t);
    assert_int_equal(mqs_txn_size(t), 0);
    mqs_msg a = tu_msg(MQS_QUEUE, f->q1, "a1", 2, 4);
    TU_OK(mqs_txn_enqueue(t, &a), s);
    a.body = "a2";
    a.priority = 9;
    TU_OK(mqs_txn_enqueue(t, &a), s);
    mqs_msg b = tu_msg(MQS_QUEUE, f->q2, "b1", 2, 4);
    TU_OK(mqs_txn_enqueue(t, &b), s);
    mqs_msg c = tu_msg(MQS_TOPIC, f->t, "c1", 2, 4);
    TU_OK(mqs_txn_enqueue(t, &c), s);
    TU_OK(mqs_txn_ack(t, f->x, 0), s);
    /* a bad message is refused at once and not buffered */
    mqs_msg bad = tu_msg(MQS_QUEUE, f->q1, "bad", 3, 42);
    assert_int_equal(mqs_txn_enqueue(t, &bad), MQS_EINVAL);
    assert_int_equal(mqs_txn_size(t), 5);

    /* nothing reaches the database before commit, from any handle */
    mqs_store *s2 = tu_open();
    mqs_store *hs[2] = {s, s2};
    for (int i = 0; i < 2; i++) {
        assert_true(tu_pending(hs[i], MQS_QUEUE, f->q1, NULL) <= 0);
        assert_true(tu_pending(hs[i], MQS_QUEUE, f->q2, NULL) <= 0);
        assert_int_equal(tu_pending(hs[i], MQS_TOPIC, f->t, "s"), 0);
        assert_int_equal(tu_pending(hs[i], MQS_QUEUE, f->q3, NULL), 1);
    }
    mqs_close(s2);
    *out = t;
}

static void test_txn_commit(void **state)
{
    mqs_store *s = *state;
    struct txn_fix f;
    mqs_txn *t = NULL;
    txn_prepare(s, &f, &t);
    int64_t ids[4] = {0};
    TU_OK(mqs_txn_commit(t, ids), s);
    for (int i = 0; i < 4; i++)
        assert_true(ids[i] > 0);
    for (int i = 1; i < 4; i++)
        assert_true(ids[i] > ids[i - 1]);

    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, f.q1, NULL, 0, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.v[0].id, ids[1]); /* priority 9 first */
    assert_memory_equal(l.v[0].body, "a2", 2);
    assert_int_equal(l.v[1].id, ids[0]);
    tu_list_free(&l);
    tu_recover(s, MQS_QUEUE, f.q2, NULL, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].id, ids[2]);
    tu_list_free(&l);
    tu_recover(s, MQS_TOPIC, f.t, "s", 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].id, ids[3]);
    assert_int_equal(l.v[0].sub_id, f.sub);
    tu_list_free(&l);
    tu_recover(s, MQS_QUEUE, f.q3, NULL, 0, &l);
    assert_int_equal(l.n, 0); /* the ack was applied */
    tu_list_free(&l);
}

static void test_txn_rollback(void **state)
{
    mqs_store *s = *state;
    struct txn_fix f;
    mqs_txn *t = NULL;
    txn_prepare(s, &f, &t);
    mqs_txn_rollback(t);
    mqs_txn_rollback(NULL);

    /* no trace: no message, not even the destinations, and no ack */
    assert_int_equal(tu_pending(s, MQS_QUEUE, f.q1, NULL), -1);
    assert_int_equal(tu_pending(s, MQS_QUEUE, f.q2, NULL), -1);
    assert_int_equal(tu_pending(s, MQS_TOPIC, f.t, "s"), 0);
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, f.q1, NULL, 0, &l);
    assert_int_equal(l.n, 0);
    tu_list_free(&l);
    tu_recover(s, MQS_QUEUE, f.q3, NULL, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].id, f.x);
    tu_list_free(&l);

    /* the store still works after a rollback; the same names are usable */
    mqs_msg m = tu_msg(MQS_QUEUE, f.q1, "later", 5, 4);
    int64_t id = 0;
    TU_OK(mqs_enqueue(s, &m, &id), s);
    tu_recover(s, MQS_QUEUE, f.q1, NULL, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].id, id);
    tu_list_free(&l);
}

static void test_txn_small(void **state)
{
    mqs_store *s = *state;
    mqs_txn *t = NULL;
    TU_OK(mqs_txn_begin(s, &t), s);
    TU_OK(mqs_txn_commit(t, NULL), s); /* empty commit */
    /* acks only */
    char q[128];
    tu_name(q, sizeof q, "txn_acks");
    int64_t ids[3];
    for (int i = 0; i < 3; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q, "k", 1, 4);
        TU_OK(mqs_enqueue(s, &m, &ids[i]), s);
    }
    TU_OK(mqs_txn_begin(s, &t), s);
    TU_OK(mqs_txn_ack(t, ids[0], 0), s);
    TU_OK(mqs_txn_ack(t, ids[2], 0), s);
    TU_OK(mqs_txn_ack(t, ids[2], 0), s); /* twice in one txn */
    assert_int_equal(mqs_txn_size(t), 3);
    TU_OK(mqs_txn_commit(t, NULL), s);
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].id, ids[1]);
    tu_list_free(&l);
    /* an enqueue and an ack of the same message in one transaction is
     * impossible (no id yet), but enqueue then ack across two is fine */
    TU_OK(mqs_txn_begin(s, &t), s);
    mqs_msg m = tu_msg(MQS_QUEUE, q, "z", 1, 4);
    TU_OK(mqs_txn_enqueue(t, &m), s);
    int64_t zid = 0;
    TU_OK(mqs_txn_commit(t, &zid), s);
    assert_true(zid > ids[2]);
    TU_OK(mqs_txn_begin(s, &t), s);
    TU_OK(mqs_txn_ack(t, zid, 0), s);
    TU_OK(mqs_txn_commit(t, NULL), s);
    assert_int_equal(tu_pending(s, MQS_QUEUE, q, NULL), 1);
}

static void test_enqueue_many(void **state)
{
    mqs_store *s = *state;
    char q[3][128];
    for (int i = 0; i < 3; i++)
        tu_name(q[i], sizeof q[i], "many");
    enum { N = 150 };
    mqs_msg msgs[N];
    int bodies[N];
    for (int i = 0; i < N; i++) {
        bodies[i] = i * 31;
        msgs[i] = tu_msg(MQS_QUEUE, q[i % 3], &bodies[i], sizeof bodies[i], 4);
    }
    int64_t ids[N];
    TU_OK(mqs_enqueue_many(s, msgs, N, ids), s);
    for (int i = 1; i < N; i++)
        assert_true(ids[i] > ids[i - 1]);
    for (int d = 0; d < 3; d++) {
        tu_list l = {0};
        tu_recover(s, MQS_QUEUE, q[d], NULL, 0, &l);
        assert_int_equal(l.n, N / 3);
        for (size_t k = 0; k < l.n; k++) {
            int i = (int)k * 3 + d;
            assert_int_equal(l.v[k].id, ids[i]);
            assert_int_equal(l.v[k].body_len, sizeof(int));
            assert_memory_equal(l.v[k].body, &bodies[i], sizeof(int));
        }
        tu_list_free(&l);
    }
    /* without an ids array */
    TU_OK(mqs_enqueue_many(s, msgs, 3, NULL), s);
    assert_int_equal(tu_pending(s, MQS_QUEUE, q[0], NULL), N / 3 + 1);
}

/* ---- async enqueue ---- */
enum { ASYNC_N = 300 };
struct async_rec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t main;
    int calls, bad, on_main;
    int order[ASYNC_N]; /* slot index in call order */
    int64_t id[ASYNC_N];
};
struct async_slot {
    struct async_rec *rec;
    int index;
};

static void async_done(void *ud, int rc, int64_t id, const char *errmsg)
{
    struct async_slot *sl = ud;
    struct async_rec *r = sl->rec;
    pthread_mutex_lock(&r->mu);
    if (pthread_equal(pthread_self(), r->main))
        r->on_main++;
    if (rc != 0 || !errmsg || errmsg[0] != '\0' || r->calls >= ASYNC_N)
        r->bad++;
    else {
        r->order[r->calls] = sl->index;
        r->id[sl->index] = id;
    }
    r->calls++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static int async_wait(struct async_rec *r, int n)
{
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < 2000 && r->calls < n; i++) { /* <= 20 s */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
    int calls = r->calls;
    pthread_mutex_unlock(&r->mu);
    return calls;
}

static void async_run(mqs_store *s, const char *q1, const char *q2, int n,
                      struct async_rec *rec, struct async_slot *slots,
                      int close_early)
{
    memset(rec, 0, sizeof *rec);
    pthread_mutex_init(&rec->mu, NULL);
    pthread_cond_init(&rec->cv, NULL);
    rec->main = pthread_self();
    for (int i = 0; i < n; i++) {
        slots[i].rec = rec;
        slots[i].index = i;
        char b[32];
        int bl = snprintf(b, sizeof b, "async-%d", i);
        mqs_msg m = tu_msg(MQS_QUEUE, i % 2 ? q2 : q1, b, (size_t)bl, i % 10);
        TU_OK(mqs_enqueue_async(s, &m, async_done, &slots[i]), s);
    }
    if (close_early) /* completions must all run before mqs_close returns */
        mqs_close(s);
}

/* Checks everything but the thread, which it returns: the caller fails on
 * it after closing its handles, so a failure leaks nothing. */
static int check_async(mqs_store *s, const char *q1, const char *q2, int n,
                       struct async_rec *rec)
{
    assert_int_equal(rec->bad, 0);
    assert_int_equal(rec->calls, n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(rec->order[i], i); /* submission order */
        assert_true(rec->id[i] > 0);
        if (i)
            assert_true(rec->id[i] > rec->id[i - 1]);
    }
    /* the ids the callbacks got are the ones recovery finds */
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q1, NULL, 0, &l);
    tu_recover(s, MQS_QUEUE, q2, NULL, 0, &l);
    assert_int_equal(l.n, (size_t)n);
    for (int i = 0; i < n; i++) {
        long k = tu_list_find(&l, rec->id[i], 0);
        assert_true(k >= 0);
        char b[32];
        int bl = snprintf(b, sizeof b, "async-%d", i);
        assert_int_equal(l.v[k].body_len, (size_t)bl);
        assert_memory_equal(l.v[k].body, b, (size_t)bl);
        assert_int_equal(l.v[k].priority, i % 10);
        assert_string_equal(l.v[k].dest, i % 2 ? q2 : q1);
    }
    tu_list_free(&l);
    pthread_mutex_destroy(&rec->mu);
    pthread_cond_destroy(&rec->cv);
    return rec->on_main;
}

/* "from a library thread (never the caller's)": a caller may hold its own
 * lock while submitting, and the callback may take it. */
static void check_thread(int on_main, int n)
{
    if (on_main)
        fail_msg("%d of %d completions ran on the submitting thread", on_main,
                 n);
}

static void test_enqueue_async(void **state)
{
    mqs_store *s = *state;
    static struct async_rec rec;
    static struct async_slot slots[ASYNC_N];
    char q1[128], q2[128];
    tu_name(q1, sizeof q1, "async1");
    tu_name(q2, sizeof q2, "async2");
    async_run(s, q1, q2, ASYNC_N, &rec, slots, 0);
    assert_int_equal(async_wait(&rec, ASYNC_N), ASYNC_N);
    check_thread(check_async(s, q1, q2, ASYNC_N, &rec), ASYNC_N);
}

/* mqs_close runs every pending completion before it returns. */
static void test_async_close(void **state)
{
    (void)state;
    static struct async_rec rec;
    static struct async_slot slots[ASYNC_N];
    char q1[128], q2[128];
    tu_name(q1, sizeof q1, "asyncc1");
    tu_name(q2, sizeof q2, "asyncc2");
    async_run(tu_open(), q1, q2, 100, &rec, slots, 1);
    pthread_mutex_lock(&rec.mu);
    int calls = rec.calls;
    pthread_mutex_unlock(&rec.mu);
    assert_int_equal(calls, 100);
    mqs_store *s = tu_open();
    int on_main = check_async(s, q1, q2, 100, &rec);
    mqs_close(s);
    check_thread(on_main, 100);
}

/* A tiny max_pending_bytes blocks producers instead of failing or
 * deadlocking. */
static void test_async_backpressure(void **state)
{
    (void)state;
    static struct async_rec rec;
    static struct async_slot slots[ASYNC_N];
    char q1[128], q2[128];
    tu_name(q1, sizeof q1, "asyncbp1");
    tu_name(q2, sizeof q2, "asyncbp2");
    char *u = tu_uri_with(g_uri, "max_pending_bytes=256");
    mqs_store *s = tu_open_uri(u);
    free(u);
    async_run(s, q1, q2, 200, &rec, slots, 0);
    assert_int_equal(async_wait(&rec, 200), 200);
    int on_main = check_async(s, q1, q2, 200, &rec);
    mqs_close(s);
    check_thread(on_main, 200);
}

/* ---- async commit ---- */
struct tc_rec {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t main;
    int calls, bad, on_main, order[4];
    size_t n_ids[4];
    int64_t ids[4][4];
};
struct tc_slot {
    struct tc_rec *rec;
    int index;
};

static void tc_done(void *ud, int rc, const int64_t *ids, size_t n_ids,
                    const char *errmsg)
{
    struct tc_slot *sl = ud;
    struct tc_rec *r = sl->rec;
    pthread_mutex_lock(&r->mu);
    if (pthread_equal(pthread_self(), r->main))
        r->on_main++;
    if (rc != 0 || !errmsg || errmsg[0] || n_ids > 4 || (n_ids && !ids) ||
        r->calls >= 4) {
        r->bad++;
    } else {
        r->order[r->calls] = sl->index;
        r->n_ids[sl->index] = n_ids;
        for (size_t i = 0; i < n_ids; i++)
            r->ids[sl->index][i] = ids[i];
    }
    r->calls++;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void test_txn_commit_async(void **state)
{
    mqs_store *s = *state;
    char q1[128], q2[128];
    tu_name(q1, sizeof q1, "tca1");
    tu_name(q2, sizeof q2, "tca2");
    int64_t x = 0;
    mqs_msg pre = tu_msg(MQS_QUEUE, q2, "pre", 3, 4);
    TU_OK(mqs_enqueue(s, &pre, &x), s);

    struct tc_rec rec;
    memset(&rec, 0, sizeof rec);
    pthread_mutex_init(&rec.mu, NULL);
    pthread_cond_init(&rec.cv, NULL);
    rec.main = pthread_self();
    struct tc_slot slots[3] = {{&rec, 0}, {&rec, 1}, {&rec, 2}};

    /* txn 0: three enqueues over two queues and an ack */
    mqs_txn *t = NULL;
    TU_OK(mqs_txn_begin(s, &t), s);
    const char *b[3] = {"t0a", "t0b", "t0c"};
    for (int i = 0; i < 3; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, i == 1 ? q2 : q1, b[i], 3, 4);
        TU_OK(mqs_txn_enqueue(t, &m), s);
    }
    TU_OK(mqs_txn_ack(t, x, 0), s);
    TU_OK(mqs_txn_commit_async(t, tc_done, &slots[0]), s);
    /* txn 1: acks only (no ids); txn 2: one enqueue */
    TU_OK(mqs_txn_begin(s, &t), s);
    TU_OK(mqs_txn_ack(t, (int64_t)1 << 60, 0), s);
    TU_OK(mqs_txn_commit_async(t, tc_done, &slots[1]), s);
    TU_OK(mqs_txn_begin(s, &t), s);
    mqs_msg m = tu_msg(MQS_QUEUE, q1, "t2", 2, 4);
    TU_OK(mqs_txn_enqueue(t, &m), s);
    TU_OK(mqs_txn_commit_async(t, tc_done, &slots[2]), s);
    /* and one nobody waits for: visible after close (close flushes) */
    TU_OK(mqs_txn_begin(s, &t), s);
    m.body = "t3";
    TU_OK(mqs_txn_enqueue(t, &m), s);
    TU_OK(mqs_txn_commit_async(t, NULL, NULL), s);

    pthread_mutex_lock(&rec.mu);
    for (int i = 0; i < 2000 && rec.calls < 3; i++) { /* <= 20 s */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&rec.cv, &rec.mu, &ts);
    }
    pthread_mutex_unlock(&rec.mu);
    assert_int_equal(rec.calls, 3);
    assert_int_equal(rec.bad, 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(rec.order[i], i); /* submission order */
    assert_int_equal(rec.n_ids[0], 3);
    assert_int_equal(rec.n_ids[1], 0);
    assert_int_equal(rec.n_ids[2], 1);
    assert_true(rec.ids[0][0] > x);
    assert_true(rec.ids[0][1] > rec.ids[0][0]);
    assert_true(rec.ids[0][2] > rec.ids[0][1]);
    assert_true(rec.ids[2][0] > rec.ids[0][2]);

    mqs_store *s2 = tu_open();
    mqs_close(s); /* flushes the last commit */
    *state = NULL;
    tu_list l = {0};
    tu_recover(s2, MQS_QUEUE, q1, NULL, 0, &l);
    assert_int_equal(l.n, 4);
    assert_int_equal(l.v[0].id, rec.ids[0][0]);
    assert_memory_equal(l.v[0].body, "t0a", 3);
    assert_int_equal(l.v[1].id, rec.ids[0][2]);
    assert_int_equal(l.v[2].id, rec.ids[2][0]);
    assert_memory_equal(l.v[3].body, "t3", 2);
    tu_list_free(&l);
    tu_recover(s2, MQS_QUEUE, q2, NULL, 0, &l);
    assert_int_equal(l.n, 1); /* "pre" was acked by txn 0 */
    assert_int_equal(l.v[0].id, rec.ids[0][1]);
    tu_list_free(&l);
    mqs_close(s2);
    pthread_mutex_destroy(&rec.mu);
    pthread_cond_destroy(&rec.cv);
    if (rec.on_main)
        fail_msg("%d commit completions ran on the submitting thread",
                 rec.on_main);
}

#define T(f) cmocka_unit_test_setup_teardown(f, tu_setup_store, tu_teardown_store)
static const struct CMUnitTest tests[] = {
    T(test_txn_commit),   T(test_txn_rollback),  T(test_txn_small),
    T(test_enqueue_many), T(test_enqueue_async), cmocka_unit_test(test_async_close),
    cmocka_unit_test(test_async_backpressure),
    T(test_txn_commit_async),
};
TU_GROUP(tu_group_txn, "txn", tests);
