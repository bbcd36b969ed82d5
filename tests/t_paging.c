/* t_paging.c - the store API for paging brokers and event loops (ABI 2.2):
 * listing without counting, cursors resumed at a (priority, id) position,
 * completions run on the caller's thread through a descriptor, submits that
 * refuse instead of blocking, and asynchronous subscription changes. */
#include "testutil.h"

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- mqs_dest_names: the rows of mqs_dest_foreach, without counts ---- */

typedef struct drow {
    mqs_kind kind;
    char dest[128];
    int64_t sub_id;
    char sub_name[64];
    uint64_t pending;
} drow;

typedef struct drows {
    const char *const *want; /* the destinations looked at, NULL-ended */
    drow v[16];
    size_t n;
} drows;

static int take_drow(void *ud, const mqs_dest_info *d)
{
    drows *x = ud;
    int mine = 0;
    for (const char *const *w = x->want; *w; w++)
        mine |= strcmp(d->dest, *w) == 0;
    if (!mine)
        return 0;
    assert_true(x->n < 16);
    drow *r = &x->v[x->n++];
    r->kind = d->kind;
    snprintf(r->dest, sizeof r->dest, "%s", d->dest);
    r->sub_id = d->sub_id;
    snprintf(r->sub_name, sizeof r->sub_name, "%s",
             d->sub_name ? d->sub_name : "");
    r->pending = d->pending;
    return 0;
}

static void test_dest_names(void **state)
{
    mqs_store *s = *state;
    char q[128], t1[128], t2[128];
    tu_name(q, sizeof q, "names_q");
    tu_name(t1, sizeof t1, "names_t1");
    tu_name(t2, sizeof t2, "names_t2"); /* a topic without subscriptions */
    const char *const want[] = {q, t1, t2, NULL};
    int64_t s1, s2;
    TU_OK(mqs_sub_create(s, t1, "a", &s1), s);
    TU_OK(mqs_sub_create(s, t1, "b", &s2), s);
    for (int i = 0; i < 5; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q, "x", 1, 4);
        TU_OK(mqs_enqueue(s, &m, NULL), s);
    }
    mqs_msg tm = tu_msg(MQS_TOPIC, t1, "y", 1, 4);
    TU_OK(mqs_enqueue(s, &tm, NULL), s);
    mqs_msg t2m = tu_msg(MQS_TOPIC, t2, "z", 1, 4); /* creates t2, no rows */
    TU_OK(mqs_enqueue(s, &t2m, NULL), s);

    drows counted = {want, {{0}}, 0}, names = {want, {{0}}, 0};
    TU_OK(mqs_dest_foreach(s, take_drow, &counted), s);
    TU_OK(mqs_dest_names(s, take_drow, &names), s);
    /* Other tests add their own rows: only ours are kept. */
    size_t ours = 0;
    for (size_t i = 0; i < counted.n; i++) {
        const drow *c = &counted.v[i];
        ours++;
        int found = 0;
        for (size_t j = 0; j < names.n; j++) {
            const drow *n = &names.v[j];
            if (n->kind == c->kind && !strcmp(n->dest, c->dest) &&
                n->sub_id == c->sub_id && !strcmp(n->sub_name, c->sub_name)) {
                found = 1;
                assert_true(n->pending == MQS_PENDING_UNKNOWN);
            }
        }
        if (!found)
            fail_msg("mqs_dest_names lacks %s sub %lld", c->dest,
                     (long long)c->sub_id);
    }
    assert_int_equal(ours, 4); /* the queue, t1's two subs, t2 alone */
    /* the order is the counting list's: by destination, then subscription */
    size_t k = 0;
    for (size_t i = 0; i < counted.n && k < names.n; i++)
        if (counted.v[i].sub_id == names.v[k].sub_id &&
            !strcmp(counted.v[i].dest, names.v[k].dest))
            k++;
    assert_int_equal(k, names.n);
    assert_int_equal(names.n, counted.n);
}

/* ---- mqs_cursor_seek ---- */

/* Every message of one target, in delivery order. */
static void read_all(mqs_store *s, const mqs_cursor_opts *o, int seek,
                     int after_p, int64_t after_id, tu_list *out)
{
    mqs_cursor *c;
    TU_OK(mqs_cursor_open(s, o, &c), s);
    if (seek)
        TU_OK(mqs_cursor_seek(c, after_p, after_id), s);
    const mqs_message *m;
    int rc;
    while ((rc = mqs_cursor_next(c, &m)) == 1) {
        if (out->n == out->cap) {
            out->cap = out->cap ? out->cap * 2 : 64;
            out->v = realloc(out->v, out->cap * sizeof *out->v);
            assert_non_null(out->v);
        }
        tu_rmsg *r = &out->v[out->n++];
        memset(r, 0, sizeof *r);
        r->id = m->id;
        r->priority = m->priority;
        r->sub_id = m->sub_id;
    }
    assert_int_equal(rc, 0);
    mqs_cursor_close(c);
}

static void check_resume(mqs_store *s, const mqs_cursor_opts *o,
                         const tu_list *all)
{
    /* From every position (and from "before the start"): the rest, in
     * the same order. */
    for (size_t k = 0; k < all->n; k++) {
        tu_list rest = {0};
        read_all(s, o, 1, all->v[k].priority, all->v[k].id, &rest);
        if (rest.n != all->n - k - 1)
            fail_msg("after message %zu (priority %d, id %lld): %zu "
                     "messages, expected %zu",
                     k, all->v[k].priority, (long long)all->v[k].id, rest.n,
                     all->n - k - 1);
        for (size_t i = 0; i < rest.n; i++)
            assert_int_equal(rest.v[i].id, all->v[k + 1 + i].id);
        free(rest.v);
    }
    tu_list from0 = {0};
    read_all(s, o, 1, MQS_PRIORITY_MAX, 0, &from0);
    assert_int_equal(from0.n, all->n);
    free(from0.v);
}

static void test_cursor_seek(void **state)
{
    mqs_store *s = *state;
    char q[128], t[128];
    tu_name(q, sizeof q, "seek_q");
    tu_name(t, sizeof t, "seek_t");
    int64_t sub;
    TU_OK(mqs_sub_create(s, t, "pager", &sub), s);
    enum { N = 24 };
    int64_t ids[N];
    for (int i = 0; i < N; i++) {
        int prio = (i * 7) % (MQS_PRIORITY_MAX + 1); /* mixed priorities */
        mqs_msg m = tu_msg(MQS_QUEUE, q, "b", 1, prio);
        TU_OK(mqs_enqueue(s, &m, &ids[i]), s);
        mqs_msg tm = tu_msg(MQS_TOPIC, t, "b", 1, prio);
        TU_OK(mqs_enqueue(s, &tm, NULL), s);
    }
    /* consumed rows before a position must not matter */
    TU_OK(mqs_ack(s, ids[0], 0), s);
    TU_OK(mqs_ack(s, ids[5], 0), s);

    for (size_t rows = 3; rows <= 256; rows += 253) { /* page edges, one page */
        mqs_cursor_opts oq = {MQS_QUEUE, q, NULL, rows};
        tu_list all = {0};
        read_all(s, &oq, 0, 0, 0, &all);
        assert_int_equal(all.n, N - 2);
        for (size_t i = 1; i < all.n; i++) /* delivery order */
            assert_true(all.v[i - 1].priority > all.v[i].priority ||
                        (all.v[i - 1].priority == all.v[i].priority &&
                         all.v[i - 1].id < all.v[i].id));
        check_resume(s, &oq, &all);
        free(all.v);

        mqs_cursor_opts ot = {MQS_TOPIC, t, "pager", rows};
        tu_list tall = {0};
        read_all(s, &ot, 0, 0, 0, &tall);
        assert_int_equal(tall.n, N);
        assert_int_equal(tall.v[0].sub_id, sub);
        check_resume(s, &ot, &tall);
        free(tall.v);
    }

    /* misuse: precise errors */
    mqs_cursor *c;
    mqs_cursor_opts oq = {MQS_QUEUE, q, NULL, 0};
    TU_OK(mqs_cursor_open(s, &oq, &c), s);
    assert_int_equal(mqs_cursor_seek(c, MQS_PRIORITY_MAX + 1, 0), MQS_EINVAL);
    assert_int_equal(mqs_cursor_seek(c, 4, -1), MQS_EINVAL);
    const mqs_message *m;
    assert_int_equal(mqs_cursor_next(c, &m), 1);
    assert_int_equal(mqs_cursor_seek(c, 4, 0), MQS_ESTATE);
    assert_non_null(strstr(mqs_errmsg(s), "right after mqs_cursor_open"));
    mqs_cursor_close(c);
    char t2[128];
    tu_name(t2, sizeof t2, "seek_t2");
    TU_OK(mqs_sub_create(s, t2, "one", NULL), s);
    TU_OK(mqs_sub_create(s, t2, "two", NULL), s);
    mqs_cursor_opts both = {MQS_TOPIC, t2, NULL, 0}; /* two subscriptions */
    TU_OK(mqs_cursor_open(s, &both, &c), s);
    assert_int_equal(mqs_cursor_seek(c, 4, 0), MQS_EINVAL);
    assert_non_null(strstr(mqs_errmsg(s), "covers 2"));
    mqs_cursor_close(c);
}

/* ---- mqs_completion_fd / mqs_completions_run ---- */

typedef struct cdone {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    mqs_store *s;
    pthread_t loop;
    int n, fails, off_thread;
    int64_t last_id, ids[64];
    int out_of_order;
    int sync_rc; /* a synchronous call made from the callback */
} cdone;

static void cdone_init(cdone *d, mqs_store *s)
{
    memset(d, 0, sizeof *d);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    d->s = s;
    d->loop = pthread_self();
}

static void cdone_free(cdone *d)
{
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
}

static void on_done(void *ud, int rc, int64_t id, const char *err)
{
    (void)err;
    cdone *d = ud;
    pthread_mutex_lock(&d->mu);
    if (!pthread_equal(pthread_self(), d->loop))
        d->off_thread++;
    if (rc)
        d->fails++;
    if (id <= d->last_id)
        d->out_of_order++;
    d->last_id = id;
    if (d->n < 64)
        d->ids[d->n] = id;
    d->n++;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

/* Poll fd and run completions until d->n reaches n (or 20 s). */
static void loop_until(mqs_store *s, int fd, cdone *d, int n)
{
    int64_t end = mono_ms() + 20000;
    while (d->n < n && mono_ms() < end) {
        struct pollfd p = {fd, POLLIN, 0};
        int pr = poll(&p, 1, 1000);
        assert_true(pr >= 0);
        if (pr > 0) {
            int ran = mqs_completions_run(s, 0);
            assert_true(ran >= 0);
        }
    }
    if (d->n < n)
        fail_msg("%d of %d completions in 20 s", d->n, n);
}

static void test_completion_fd(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "cfd_q");
    /* before the switch: refused with the reason */
    assert_int_equal(mqs_completions_run(s, 0), MQS_ESTATE);
    int fd = mqs_completion_fd(s);
    assert_true(fd >= 0);
    assert_int_equal(mqs_completion_fd(s), fd); /* idempotent */
    static cdone d;
    cdone_init(&d, s);
    enum { N = 20 };
    for (int i = 0; i < N; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q, "c", 1, 4);
        TU_OK(mqs_enqueue_async(s, &m, on_done, &d), s);
    }
    /* Nothing runs until this thread asks: wait for the writer to finish
     * (the descriptor becomes readable), then check no callback ran. */
    int64_t end = mono_ms() + 20000;
    struct pollfd p = {fd, POLLIN, 0};
    while (mono_ms() < end) {
        if (tu_pending(s, MQS_QUEUE, q, NULL) == N)
            break;
        tu_sleep_ms(20);
    }
    assert_int_equal(tu_pending(s, MQS_QUEUE, q, NULL), N);
    assert_int_equal(poll(&p, 1, 5000), 1);
    assert_int_equal(d.n, 0);
    /* max = 1: one runs, the descriptor stays readable for the rest */
    assert_int_equal(mqs_completions_run(s, 1), 1);
    assert_int_equal(d.n, 1);
    assert_int_equal(poll(&p, 1, 0), 1);
    loop_until(s, fd, &d, N);
    assert_int_equal(d.n, N);
    assert_int_equal(d.fails, 0);
    assert_int_equal(d.off_thread, 0); /* all on this thread */
    assert_int_equal(d.out_of_order, 0); /* submission order */
    /* On this thread a callback may make synchronous calls: ack them all
     * from here (the writer is free). */
    for (int i = 0; i < N; i++)
        TU_OK(mqs_ack(s, d.ids[i], 0), s);
    assert_int_equal(tu_pending(s, MQS_QUEUE, q, NULL), 0);
    /* nothing left: run returns 0 */
    assert_int_equal(mqs_completions_run(s, 0), 0);
    cdone_free(&d);
}

/* Queued completions still run at mqs_close (on the closing thread). */
static void test_completion_fd_close(void **state)
{
    (void)state;
    mqs_store *s = tu_open();
    char q[128];
    tu_name(q, sizeof q, "cfd_close");
    assert_true(mqs_completion_fd(s) >= 0);
    static cdone d;
    cdone_init(&d, s);
    for (int i = 0; i < 5; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q, "c", 1, 4);
        TU_OK(mqs_enqueue_async(s, &m, on_done, &d), s);
    }
    mqs_close(s);
    assert_int_equal(d.n, 5);
    assert_int_equal(d.fails, 0);
    assert_int_equal(d.off_thread, 0);
    cdone_free(&d);
    s = tu_open();
    mqs_purge(s, MQS_QUEUE, q, NULL);
    mqs_close(s);
}

/* With the descriptor, a full queue refuses at once (MQS_EBUSY) instead of
 * blocking the caller; everything accepted is stored, nothing else. */
static void test_submit_ebusy(void **state)
{
    (void)state;
    char *uri = tu_uri_with(g_uri, "max_pending_bytes=131072");
    mqs_store *s = tu_open_uri(uri);
    free(uri);
    char q[128];
    tu_name(q, sizeof q, "ebusy_q");
    int fd = mqs_completion_fd(s);
    assert_true(fd >= 0);
    static cdone d;
    cdone_init(&d, s);
    enum { BODY = 32768, WANT = 300 };
    unsigned char *body = malloc(BODY);
    assert_non_null(body);
    memset(body, 'e', BODY);
    int accepted = 0, busy = 0;
    int64_t worst = 0;
    int64_t end = mono_ms() + 60000;
    while (accepted < WANT && mono_ms() < end) {
        mqs_msg m = tu_msg(MQS_QUEUE, q, body, BODY, 4);
        int64_t t0 = mono_ms();
        int rc = mqs_enqueue_async(s, &m, on_done, &d);
        int64_t took = mono_ms() - t0;
        if (took > worst)
            worst = took;
        if (rc == 0) {
            accepted++;
            continue;
        }
        assert_int_equal(rc, MQS_EBUSY);
        if (busy++ == 0)
            assert_non_null(strstr(mqs_errmsg(s), "max_pending_bytes"));
        /* what an event loop does: wait for the descriptor, run, retry */
        struct pollfd p = {fd, POLLIN, 0};
        assert_true(poll(&p, 1, 5000) >= 0);
        assert_true(mqs_completions_run(s, 0) >= 0);
    }
    loop_until(s, fd, &d, accepted);
    print_message("  %d accepted, %d refused with MQS_EBUSY, slowest submit "
                  "%lld ms\n", accepted, busy, (long long)worst);
    assert_int_equal(accepted, WANT);
    assert_true(busy > 0);  /* 300 x 32 KiB against a 128 KiB queue */
    assert_true(worst < 1000); /* never waited for the writer */
    assert_int_equal(d.fails, 0);
    assert_int_equal(tu_pending(s, MQS_QUEUE, q, NULL), WANT);
    TU_OK(mqs_purge(s, MQS_QUEUE, q, NULL), s);
    free(body);
    mqs_close(s);
    cdone_free(&d);
}

static void on_txn_done(void *ud, int rc, const int64_t *ids, size_t n,
                        const char *err)
{
    (void)ids;
    (void)n;
    on_done(ud, rc, 0, err);
}

/* A transaction commit refused with MQS_EBUSY stays the caller's, whole:
 * committed again later, every message of it is stored once. */
static void test_txn_ebusy(void **state)
{
    (void)state;
    char *uri = tu_uri_with(g_uri, "max_pending_bytes=65536");
    mqs_store *s = tu_open_uri(uri);
    free(uri);
    char q[128];
    tu_name(q, sizeof q, "txnbusy_q");
    int fd = mqs_completion_fd(s);
    assert_true(fd >= 0);
    static cdone d;
    cdone_init(&d, s);
    enum { BODY = 32768 };
    unsigned char *body = malloc(BODY);
    assert_non_null(body);
    memset(body, 't', BODY);
    int queued = 0, busy_txn = 0, committed = 0;
    for (int round = 0; round < 50 && !busy_txn; round++) {
        /* fill the queue until it refuses */
        int rc;
        do {
            mqs_msg m = tu_msg(MQS_QUEUE, q, body, BODY, 4);
            rc = mqs_enqueue_async(s, &m, on_done, &d);
            queued += rc == 0;
        } while (rc == 0);
        assert_int_equal(rc, MQS_EBUSY);
        mqs_txn *t;
        TU_OK(mqs_txn_begin(s, &t), s);
        for (int i = 0; i < 2; i++) {
            mqs_msg m = tu_msg(MQS_QUEUE, q, body, BODY, 4);
            TU_OK(mqs_txn_enqueue(t, &m), s);
        }
        rc = mqs_txn_commit_async(t, on_txn_done, &d);
        if (rc == 0) {
            committed++;
            continue;
        }
        assert_int_equal(rc, MQS_EBUSY);
        busy_txn = 1;
        assert_int_equal(mqs_txn_size(t), 2); /* still ours, whole */
        int64_t end = mono_ms() + 20000;
        while ((rc = mqs_txn_commit_async(t, on_txn_done, &d)) == MQS_EBUSY &&
               mono_ms() < end) {
            struct pollfd p = {fd, POLLIN, 0};
            assert_true(poll(&p, 1, 1000) >= 0);
            assert_true(mqs_completions_run(s, 0) >= 0);
        }
        assert_int_equal(rc, 0);
        committed++;
    }
    loop_until(s, fd, &d, queued + committed);
    print_message("  %d enqueues, %d transactions; a commit was refused: "
                  "%s\n", queued, committed, busy_txn ? "yes" : "no");
    assert_true(busy_txn);
    assert_int_equal(d.fails, 0);
    assert_int_equal(tu_pending(s, MQS_QUEUE, q, NULL), queued + 2 * committed);
    TU_OK(mqs_purge(s, MQS_QUEUE, q, NULL), s);
    free(body);
    mqs_close(s);
    cdone_free(&d);
}

/* ---- asynchronous subscription create / remove ---- */

static void wait_n(cdone *d, int n)
{
    pthread_mutex_lock(&d->mu);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 20;
    while (d->n < n)
        if (pthread_cond_timedwait(&d->cv, &d->mu, &ts) != 0)
            break;
    int got = d->n;
    pthread_mutex_unlock(&d->mu);
    if (got < n)
        fail_msg("%d of %d completions in 20 s", got, n);
}

static void test_sub_async(void **state)
{
    mqs_store *s = *state;
    char t[128];
    tu_name(t, sizeof t, "subasync");
    static cdone d;
    cdone_init(&d, s);
    d.loop = pthread_self(); /* off_thread counts writer-thread callbacks */
    TU_OK(mqs_sub_create_async(s, t, "a", on_done, &d), s);
    wait_n(&d, 1);
    assert_int_equal(d.fails, 0);
    int64_t id = d.ids[0], found = 0;
    assert_true(id > 0);
    TU_OK(mqs_sub_lookup(s, t, "a", &found), s);
    assert_int_equal(found, id);
    /* creating it again finds it: the same id */
    TU_OK(mqs_sub_create_async(s, t, "a", on_done, &d), s);
    wait_n(&d, 2);
    assert_int_equal(d.ids[1], id);
    mqs_msg m = tu_msg(MQS_TOPIC, t, "p", 1, 4);
    TU_OK(mqs_enqueue(s, &m, NULL), s);
    assert_int_equal(tu_pending(s, MQS_TOPIC, t, "a"), 1);
    d.last_id = -1; /* remove reports id 0 */
    TU_OK(mqs_sub_remove_async(s, id, on_done, &d), s);
    wait_n(&d, 3);
    assert_int_equal(d.fails, 0);
    assert_int_equal(d.ids[2], 0);
    assert_int_equal(mqs_sub_lookup(s, t, "a", &found), MQS_ENOTFOUND);
    /* argument errors at once, no callback */
    assert_int_equal(mqs_sub_create_async(s, t, "", on_done, &d), MQS_EINVAL);
    assert_int_equal(mqs_sub_remove_async(s, 0, on_done, &d), MQS_EINVAL);
    tu_sleep_ms(50);
    assert_int_equal(d.n, 3);
    cdone_free(&d);
}

/* ---- mqs_vacuum ---- */

static void test_vacuum(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "vacuum_q");
    int64_t ids[50];
    for (int i = 0; i < 50; i++) {
        mqs_msg m = tu_msg(MQS_QUEUE, q, "v", 1, 4);
        TU_OK(mqs_enqueue(s, &m, &ids[i]), s);
    }
    TU_OK(mqs_ack_many(s, ids, NULL, 40), s);
    char what[256] = "unset";
    TU_OK(mqs_vacuum(s, what, sizeof what), s);
    print_message("  mqs_vacuum: %s\n", what);
    if (!strcmp(g_scheme, "postgresql") || !strcmp(g_scheme, "postgres"))
        assert_non_null(strstr(what, "VACUUM"));
    else
        assert_non_null(strstr(what, "nothing to do"));
    assert_int_equal(mqs_vacuum(s, NULL, 0), 0); /* what is optional */
    /* nothing lost, nothing back */
    assert_int_equal(tu_pending(s, MQS_QUEUE, q, NULL), 10);
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 10);
    assert_int_equal(l.v[0].id, ids[40]);
    tu_list_free(&l);
}

#define T(f) cmocka_unit_test_setup_teardown(f, tu_setup_store, tu_teardown_store)
static const struct CMUnitTest tests[] = {
    T(test_dest_names),
    T(test_cursor_seek),
    T(test_completion_fd),
    cmocka_unit_test(test_completion_fd_close),
    cmocka_unit_test(test_submit_ebusy),
    cmocka_unit_test(test_txn_ebusy),
    T(test_sub_async),
    T(test_vacuum),
};
TU_GROUP(tu_group_paging, "paging", tests);
