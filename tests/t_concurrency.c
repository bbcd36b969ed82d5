/* t_concurrency.c - many threads writing one store handle at once. */
#include "testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { NTHREADS = 8 };

struct worker {
    mqs_store *s;
    int index, n;
    const char *shared_q;
    char own_q[128];
    int64_t *ids;   /* n ids in enqueue order */
    char *acked;    /* acked[i]: ids[i] was acked */
    char err[512];  /* first failure; cmocka asserts only on the main thread */
};

static void wfail(struct worker *w, const char *what, int rc)
{
    if (!w->err[0])
        snprintf(w->err, sizeof w->err, "thread %d: %s -> %s: %s", w->index,
                 what, mqs_errname(rc), mqs_errmsg(w->s));
}

/* Enqueue n messages alternating between the shared queue and our own,
 * and ack every other one: some at once, some batched, some in client
 * transactions, depending on the thread. */
static void *worker_main(void *arg)
{
    struct worker *w = arg;
    int64_t pend[25];
    size_t npend = 0;
    for (int i = 0; i < w->n && !w->err[0]; i++) {
        char body[64];
        int bl = snprintf(body, sizeof body, "w%d-%d", w->index, i);
        mqs_msg m = tu_msg(MQS_QUEUE, i % 2 ? w->own_q : w->shared_q, body,
                           (size_t)bl, (w->index + i) % 10);
        int rc;
        if (w->index % 4 == 3) {
            mqs_txn *t = NULL;
            rc = mqs_txn_begin(w->s, &t);
            if (rc == 0)
                rc = mqs_txn_enqueue(t, &m);
            if (rc == 0 && i >= 2 && (i - 2) % 2 == 0) {
                /* ack the one from two steps back in the same txn */
                rc = mqs_txn_ack(t, w->ids[i - 2], 0);
                if (rc == 0)
                    w->acked[i - 2] = 1;
            }
            if (rc == 0)
                rc = mqs_txn_commit(t, &w->ids[i]);
            else
                mqs_txn_rollback(t);
        } else {
            rc = mqs_enqueue(w->s, &m, &w->ids[i]);
        }
        if (rc != 0) {
            wfail(w, "enqueue", rc);
            break;
        }
        if (i > 0 && w->ids[i] <= w->ids[i - 1]) {
            snprintf(w->err, sizeof w->err, "thread %d: id %lld after %lld",
                     w->index, (long long)w->ids[i], (long long)w->ids[i - 1]);
            break;
        }
        if (i % 2 != 0 || w->index % 4 == 3)
            continue;
        if (w->index % 2 == 0) {
            rc = mqs_ack(w->s, w->ids[i], 0);
            if (rc != 0)
                wfail(w, "ack", rc);
            w->acked[i] = 1;
        } else {
            pend[npend++] = w->ids[i];
            w->acked[i] = 1;
            if (npend == sizeof pend / sizeof pend[0]) {
                rc = mqs_ack_many(w->s, pend, NULL, npend);
                if (rc != 0)
                    wfail(w, "ack_many", rc);
                npend = 0;
            }
        }
    }
    if (npend && !w->err[0]) {
        int rc = mqs_ack_many(w->s, pend, NULL, npend);
        if (rc != 0)
            wfail(w, "ack_many", rc);
    }
    return NULL;
}

struct reader {
    mqs_store *s;
    const char *q;
    volatile int stop;
    int rounds;
    char err[512];
};

/* Recover the shared queue over and over while it changes: every scan must
 * succeed and be in delivery order without duplicates. */
static void *reader_main(void *arg)
{
    struct reader *r = arg;
    for (int round = 0; round < 10000 && !__atomic_load_n(&r->stop, __ATOMIC_SEQ_CST);
         round++) {
        mqs_cursor_opts o;
        memset(&o, 0, sizeof o);
        o.kind = MQS_QUEUE;
        o.dest = r->q;
        o.page_rows = 16;
        mqs_cursor *c = NULL;
        int rc = mqs_cursor_open(r->s, &o, &c);
        if (rc != 0) {
            snprintf(r->err, sizeof r->err, "cursor_open -> %s: %s",
                     mqs_errname(rc), mqs_errmsg(r->s));
            return NULL;
        }
        int last_prio = 10;
        int64_t last_id = 0;
        int k = 0;
        for (; k < 100000; k++) { /* far above the queue's size */
            const mqs_message *m = NULL;
            rc = mqs_cursor_next(c, &m);
            if (rc <= 0)
                break;
            if (m->priority > last_prio ||
                (m->priority == last_prio && m->id <= last_id)) {
                snprintf(r->err, sizeof r->err,
                         "out of order: prio %d id %lld after prio %d id %lld",
                         m->priority, (long long)m->id, last_prio,
                         (long long)last_id);
                rc = 0;
                break;
            }
            last_prio = m->priority;
            last_id = m->id;
        }
        mqs_cursor_close(c);
        if (k == 100000 && !r->err[0])
            snprintf(r->err, sizeof r->err, "the cursor did not end");
        if (rc < 0 && !r->err[0])
            snprintf(r->err, sizeof r->err, "cursor_next -> %s",
                     mqs_errname(rc));
        if (r->err[0])
            return NULL;
        r->rounds++;
    }
    return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* NTHREADS workers (odd ones on s2 when given) and a reader on s. */
static void run_threads(mqs_store *s, mqs_store *s2, int n)
{
    char shared[128];
    tu_name(shared, sizeof shared, "mt_shared");
    struct worker w[NTHREADS];
    pthread_t th[NTHREADS], rth;
    struct reader rd;
    memset(&rd, 0, sizeof rd);
    rd.s = s;
    rd.q = shared;
    for (int i = 0; i < NTHREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].s = s2 && i % 2 ? s2 : s;
        w[i].index = i;
        w[i].n = n;
        w[i].shared_q = shared;
        char what[32];
        snprintf(what, sizeof what, "mt_own%d", i);
        tu_name(w[i].own_q, sizeof w[i].own_q, what);
        w[i].ids = calloc((size_t)n, sizeof *w[i].ids);
        w[i].acked = calloc((size_t)n, 1);
        assert_non_null(w[i].ids);
        assert_non_null(w[i].acked);
    }
    assert_int_equal(pthread_create(&rth, NULL, reader_main, &rd), 0);
    for (int i = 0; i < NTHREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    __atomic_store_n(&rd.stop, 1, __ATOMIC_SEQ_CST);
    pthread_join(rth, NULL);
    for (int i = 0; i < NTHREADS; i++)
        if (w[i].err[0])
            fail_msg("%s", w[i].err);
    if (rd.err[0])
        fail_msg("reader: %s", rd.err);
    assert_true(rd.rounds > 0);

    /* No duplicate ids across threads. */
    size_t total = (size_t)NTHREADS * (size_t)n;
    int64_t *all = malloc(total * sizeof *all);
    assert_non_null(all);
    size_t k = 0;
    for (int i = 0; i < NTHREADS; i++)
        for (int j = 0; j < n; j++)
            all[k++] = w[i].ids[j];
    qsort(all, total, sizeof *all, cmp_i64);
    for (size_t i = 1; i < total; i++)
        if (all[i] == all[i - 1])
            fail_msg("id %lld handed out twice", (long long)all[i]);
    assert_true(all[0] > 0);
    free(all);

    /* Recovery returns exactly the unacked messages, intact. */
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, shared, NULL, 0, &l);
    for (int i = 0; i < NTHREADS; i++)
        tu_recover(s, MQS_QUEUE, w[i].own_q, NULL, 0, &l);
    size_t want = 0;
    for (int i = 0; i < NTHREADS; i++) {
        for (int j = 0; j < n; j++) {
            long at = tu_list_find(&l, w[i].ids[j], 0);
            if (w[i].acked[j]) {
                if (at >= 0)
                    fail_msg("acked id %lld recovered", (long long)w[i].ids[j]);
                continue;
            }
            want++;
            if (at < 0)
                fail_msg("thread %d message %d (id %lld) lost", i, j,
                         (long long)w[i].ids[j]);
            char body[64];
            int bl = snprintf(body, sizeof body, "w%d-%d", i, j);
            assert_int_equal(l.v[at].body_len, (size_t)bl);
            assert_memory_equal(l.v[at].body, body, (size_t)bl);
            assert_string_equal(l.v[at].dest, j % 2 ? w[i].own_q : shared);
        }
    }
    assert_int_equal(l.n, want);
    tu_list_free(&l);
    for (int i = 0; i < NTHREADS; i++) {
        free(w[i].ids);
        free(w[i].acked);
    }
}

static void test_threads(void **state)
{
    run_threads(*state, NULL, g_quick ? 100 : 500);
}

/* Two handles (as two processes would) writing the same queues at once:
 * the database's own locking must not surface as errors. */
static void test_threads_two_handles(void **state)
{
    /* Two SQLite handles are two writers taking turns on one file lock;
     * under valgrind (~30x slower) a turn can outlast the default 5 s
     * busy_timeout, which is not what this test is about. */
    char *uri = NULL;
    mqs_store *s1 = *state, *own = NULL;
    if (g_is_sqlite && !strstr(g_uri, "busy_timeout=")) {
        uri = tu_uri_with(g_uri, "busy_timeout=120000");
        own = s1 = tu_open_uri(uri);
    }
    mqs_store *s2 = uri ? tu_open_uri(uri) : tu_open();
    run_threads(s1, s2, g_quick ? 50 : 200);
    mqs_close(s2);
    mqs_close(own);
    free(uri);
}

/* Several handles on one database at once (e.g. two processes' worth). */
static void test_two_handles(void **state)
{
    mqs_store *s = *state;
    mqs_store *s2 = tu_open();
    char q[128];
    tu_name(q, sizeof q, "twoh");
    int64_t a = 0, b = 0;
    mqs_msg m = tu_msg(MQS_QUEUE, q, "1", 1, 4);
    TU_OK(mqs_enqueue(s, &m, &a), s);
    TU_OK(mqs_enqueue(s2, &m, &b), s2);
    assert_true(a != b && a > 0 && b > 0);
    TU_OK(mqs_ack(s2, a, 0), s2); /* the other handle's message */
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].id, b);
    tu_list_free(&l);
    mqs_close(s2);
}

struct async_log {
    pthread_mutex_t mu;
    int done, failed;
    int64_t max_id;
    int slow; /* callbacks take 30 ms: the writer is still in them */
};

static void async_logged(void *ud, int rc, int64_t id, const char *errmsg)
{
    (void)errmsg;
    struct async_log *l = ud;
    pthread_mutex_lock(&l->mu);
    int slow = l->slow;
    pthread_mutex_unlock(&l->mu);
    if (slow)
        nanosleep(&(struct timespec){0, 30 * 1000 * 1000}, NULL);
    pthread_mutex_lock(&l->mu);
    l->done++;
    l->failed += rc != 0;
    if (id > l->max_id)
        l->max_id = id;
    pthread_mutex_unlock(&l->mu);
}

/* A synchronous write may run on the calling thread (writer.c, "caller
 * runs"), but never ahead of what the same thread queued before it: async
 * enqueues first, then a synchronous one, several rounds (the first
 * synchronous one of a round finds an idle store, the writer busy with
 * the async ones or not). Every async one must have committed, with a
 * smaller id, by the time the synchronous one returns. */
static void test_sync_after_async(void **state)
{
    mqs_store *s = *state;
    /* commit=each promises no order between a thread's async writes (the
     * writer thread, one per transaction) and its synchronous ones (its
     * own pooled connection). */
    if (strstr(g_uri, "commit=each"))
        skip();
    char q[128];
    tu_name(q, sizeof q, "syncafter");
    struct async_log l = {.mu = PTHREAD_MUTEX_INITIALIZER};
    int sent = 0;
    for (int round = 0; round < 20; round++) {
        int64_t id = 0;
        mqs_msg m = tu_msg(MQS_QUEUE, q, "s", 1, 4);
        /* one alone: a lone synchronous producer, which runs its own */
        TU_OK(mqs_enqueue(s, &m, &id), s);
        /* Odd rounds: the async one has committed and its (slow)
         * callback is running when the synchronous one comes, the moment
         * the writer's connection is free but its completions are not
         * done. */
        int slow = round % 2;
        pthread_mutex_lock(&l.mu);
        l.slow = slow;
        pthread_mutex_unlock(&l.mu);
        for (int i = 0; i < (slow ? 1 : 1 + round % 7); i++) {
            mqs_msg a = tu_msg(MQS_QUEUE, q, "a", 1, 4);
            TU_OK(mqs_enqueue_async(s, &a, async_logged, &l), s);
            sent++;
        }
        if (slow)
            nanosleep(&(struct timespec){0, 15 * 1000 * 1000}, NULL);
        TU_OK(mqs_enqueue(s, &m, &id), s);
        pthread_mutex_lock(&l.mu);
        int done = l.done, failed = l.failed;
        int64_t max_id = l.max_id;
        pthread_mutex_unlock(&l.mu);
        assert_int_equal(failed, 0);
        if (done != sent || max_id >= id)
            fail_msg("round %d: the synchronous enqueue (id %lld) returned "
                     "with %d of %d earlier async enqueues done (largest id "
                     "%lld)",
                     round, (long long)id, done, sent, (long long)max_id);
    }
    assert_int_equal(mqs_purge(s, MQS_QUEUE, q, NULL), 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, tu_setup_store, tu_teardown_store)
static const struct CMUnitTest tests[] = {
    T(test_threads),
    T(test_threads_two_handles),
    T(test_two_handles),
    T(test_sync_after_async),
};
TU_GROUP(tu_group_concurrency, "concurrency", tests);
