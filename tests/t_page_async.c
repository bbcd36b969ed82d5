/* t_page_async.c - the reads of ABI 2.3: mqs_page_async (a page read on the
 * writer thread, ordered with the writes: the page sees exactly the writes
 * whose completions came before its own) and mqs_recent_headers (the
 * newest pending messages, highest id first). */
#include "testutil.h"

#include <poll.h>
#include <pthread.h>
#include <sqlite3.h>
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

/* ---- completions, numbered in the order they ran ---- */

typedef struct order {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    long seq;      /* completions so far (of every kind) */
    pthread_t loop; /* the thread expected to run them (completion fd) */
    int off_loop;  /* how many ran elsewhere */
} order;

static void order_init(order *o)
{
    memset(o, 0, sizeof *o);
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cv, NULL);
    o->loop = pthread_self();
}

static void order_free(order *o)
{
    pthread_mutex_destroy(&o->mu);
    pthread_cond_destroy(&o->cv);
}

/* Number a completion; called with o->mu held. */
static long order_next(order *o)
{
    if (!pthread_equal(pthread_self(), o->loop))
        o->off_loop++;
    pthread_cond_broadcast(&o->cv);
    return ++o->seq;
}

/* Wait until o counts n completions: run them from here when fd >= 0
 * (mqs_completion_fd), else wait for the writer thread. 20 s at most. */
static void settle(mqs_store *s, order *o, int fd, long n)
{
    int64_t end = mono_ms() + 20000;
    if (fd >= 0) {
        while (o->seq < n && mono_ms() < end) {
            struct pollfd p = {fd, POLLIN, 0};
            int pr = poll(&p, 1, 1000);
            assert_true(pr >= 0);
            if (pr > 0)
                assert_true(mqs_completions_run(s, 0) >= 0);
        }
    } else {
        pthread_mutex_lock(&o->mu);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 20;
        while (o->seq < n)
            if (pthread_cond_timedwait(&o->cv, &o->mu, &ts) != 0)
                break;
        pthread_mutex_unlock(&o->mu);
    }
    if (o->seq < n)
        fail_msg("%ld of %ld completions in 20 s", o->seq, n);
}

typedef struct wdone {
    order *o;
    long seq; /* 0 until it completed */
    int rc;
    int64_t id;
} wdone;

static void on_write(void *ud, int rc, int64_t id, const char *err)
{
    wdone *w = ud;
    if (rc)
        print_message("  write failed: %s: %s\n", mqs_errname(rc), err);
    pthread_mutex_lock(&w->o->mu);
    w->rc = rc;
    w->id = id;
    w->seq = order_next(w->o);
    pthread_mutex_unlock(&w->o->mu);
}

/* ---- a page, copied out of its callback ---- */

typedef struct prow {
    int64_t id;
    mqs_kind kind;
    char *dest; /* NULL when the row's dest was NULL */
    int64_t sub_id;
    int sub_name_set;
    int priority;
    int64_t expires_ms, enqueued_ms;
    int32_t redeliveries;
    unsigned char *headers, *body;
    size_t headers_len, body_len;
} prow;

typedef struct page {
    order *o;
    long seq;
    int calls;
    int rc, end;
    size_t n;
    prow *rows;
    char err[1024];
} page;

static unsigned char *dup_bytes(const void *p, size_t n)
{
    unsigned char *d = malloc(n ? n : 1);
    if (d && n)
        memcpy(d, p, n);
    return d;
}

static void on_page(void *ud, int rc, const mqs_message *m, size_t n, int end,
                    const char *err)
{
    page *p = ud;
    p->rc = rc;
    p->end = end;
    p->n = n;
    snprintf(p->err, sizeof p->err, "%s", err ? err : "(null)");
    p->rows = n ? calloc(n, sizeof *p->rows) : NULL;
    for (size_t i = 0; i < n && p->rows; i++) {
        prow *r = &p->rows[i];
        r->id = m[i].id;
        r->kind = m[i].kind;
        r->dest = m[i].dest ? strdup(m[i].dest) : NULL;
        r->sub_id = m[i].sub_id;
        r->sub_name_set = m[i].sub_name != NULL;
        r->priority = m[i].priority;
        r->expires_ms = m[i].expires_ms;
        r->enqueued_ms = m[i].enqueued_ms;
        r->redeliveries = m[i].redeliveries;
        r->headers = dup_bytes(m[i].headers, m[i].headers_len);
        r->headers_len = m[i].headers_len;
        r->body = dup_bytes(m[i].body, m[i].body_len);
        r->body_len = m[i].body_len;
    }
    pthread_mutex_lock(&p->o->mu);
    p->calls++;
    p->seq = order_next(p->o);
    pthread_mutex_unlock(&p->o->mu);
}

static void page_free(page *p)
{
    for (size_t i = 0; i < p->n && p->rows; i++) {
        free(p->rows[i].dest);
        free(p->rows[i].headers);
        free(p->rows[i].body);
    }
    free(p->rows);
    p->rows = NULL;
    p->n = 0;
}

/* Read one page and wait for it (writer-thread completions). */
static void page_get(mqs_store *s, const mqs_page_req *req, page *p)
{
    static order o;
    order_init(&o);
    memset(p, 0, sizeof *p);
    p->o = &o;
    TU_OK(mqs_page_async(s, req, on_page, p), s);
    settle(s, &o, -1, 1);
    assert_int_equal(p->calls, 1);
    if (p->rc)
        fail_msg("page of %s: %s: %s", req->dest ? req->dest : "(topic)",
                 mqs_errname(p->rc), p->err);
    assert_true(p->rows || p->n == 0);
    order_free(&o);
}

static size_t row_bytes(const prow *r)
{
    return r->headers_len + r->body_len;
}

/* The page rows equal the cursor's messages want[k..k+n). */
static void same_rows(const page *p, const tu_list *want, size_t k,
                      mqs_kind kind, const char *dest, int64_t sub_id)
{
    assert_true(k + p->n <= want->n);
    for (size_t i = 0; i < p->n; i++) {
        const prow *r = &p->rows[i];
        const tu_rmsg *w = &want->v[k + i];
        if (r->id != w->id)
            fail_msg("row %zu of the page: id %lld, the cursor has %lld",
                     k + i, (long long)r->id, (long long)w->id);
        assert_int_equal(r->kind, kind);
        if (dest)
            assert_string_equal(r->dest, dest);
        else
            assert_null(r->dest);
        assert_int_equal(r->sub_id, sub_id);
        assert_false(r->sub_name_set);
        assert_int_equal(r->priority, w->priority);
        assert_int_equal(r->expires_ms, w->expires_ms);
        assert_int_equal(r->enqueued_ms, w->enqueued_ms);
        assert_int_equal(r->redeliveries, w->redeliveries);
        assert_int_equal(r->headers_len, w->headers_len);
        assert_int_equal(r->body_len, w->body_len);
        assert_memory_equal(r->headers, w->headers, w->headers_len);
        assert_memory_equal(r->body, w->body, w->body_len);
    }
}

/* Read a whole queue or subscription in pages of max_rows / max_bytes,
 * each request continuing after the last row of the one before, and check
 * it against want (the cursor's delivery order). Returns the page count. */
static size_t read_pages(mqs_store *s, mqs_kind kind, const char *dest,
                         int64_t sub_id, size_t max_rows, size_t max_bytes,
                         const tu_list *want)
{
    mqs_page_req req = {kind, dest, sub_id, MQS_PRIORITY_MAX + 1, 0,
                        max_rows, max_bytes};
    size_t rows = max_rows ? max_rows : 256;
    size_t k = 0, pages = 0;
    for (;;) {
        assert_true(pages <= want->n + 1);
        page p;
        page_get(s, &req, &p);
        pages++;
        same_rows(&p, want, k, kind, dest, sub_id);
        size_t bytes = 0;
        for (size_t i = 0; i < p.n; i++)
            bytes += row_bytes(&p.rows[i]);
        k += p.n;
        if (max_bytes) {
            if (p.n > 1) /* only a first row may go over */
                assert_true(bytes <= max_bytes);
            /* cut short only when the next row would not fit */
            if (!p.end && p.n < rows) {
                assert_true(k < want->n);
                assert_true(bytes + want->v[k].headers_len +
                                want->v[k].body_len > max_bytes);
            }
        }
        if (p.end) {
            assert_true(p.n < rows);
            page_free(&p);
            break;
        }
        /* not the end: either a full page or one cut by max_bytes */
        assert_true(p.n > 0);
        assert_true(p.n == rows || max_bytes);
        req.after_priority = p.rows[p.n - 1].priority;
        req.after_id = p.rows[p.n - 1].id;
        page_free(&p);
    }
    assert_int_equal(k, want->n);
    return pages;
}

/* ---- (a) a queue, in pages ---- */

static void test_page_queue(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "pa_q");
    enum { N = 40 };
    int64_t ids[N];
    for (int i = 0; i < N; i++) {
        unsigned char body[160], hdr[16];
        size_t blen = 40 + (size_t)(i % 5) * 25; /* 40..140 bytes */
        tu_fill(body, blen, (uint64_t)i + 1);
        int hl = snprintf((char *)hdr, sizeof hdr, "h%d", i);
        hdr[1] = '\0'; /* headers are bytes, NUL included */
        mqs_msg m = tu_msg(MQS_QUEUE, q, body, blen, (i * 7) % 10);
        m.headers = hdr;
        m.headers_len = (size_t)hl;
        TU_OK(mqs_enqueue(s, &m, &ids[i]), s);
    }
    /* consumed and redelivered rows */
    TU_OK(mqs_ack(s, ids[3], 0), s);
    TU_OK(mqs_ack(s, ids[10], 0), s);
    TU_OK(mqs_nack(s, ids[4], 0), s);
    tu_list want = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &want);
    assert_int_equal(want.n, N - 2);

    /* 38 rows in pages of 7: five full pages, then 3 rows and the end */
    assert_int_equal(read_pages(s, MQS_QUEUE, q, 0, 7, 0, &want), 6);
    /* one page exactly as long as the queue: not the end (a full page
     * cannot know), the next one is empty and is */
    assert_int_equal(read_pages(s, MQS_QUEUE, q, 0, N - 2, 0, &want), 2);
    /* everything in one default page */
    assert_int_equal(read_pages(s, MQS_QUEUE, q, 0, 0, 0, &want), 1);
    /* max_bytes: pages of at most 300 bytes, cut only when needed */
    size_t pages = read_pages(s, MQS_QUEUE, q, 0, 0, 300, &want);
    assert_true(pages >= 8); /* 38 rows of 42..143 bytes */
    /* max_bytes below one message: one row a page, the last one says end */
    assert_int_equal(read_pages(s, MQS_QUEUE, q, 0, 0, 1, &want), N - 2);
    /* both limits */
    read_pages(s, MQS_QUEUE, q, 0, 3, 250, &want);

    /* a start in the middle: strictly after that (priority, id) */
    mqs_page_req mid = {MQS_QUEUE, q, 0, want.v[9].priority, want.v[9].id, 0,
                        0};
    page p;
    page_get(s, &mid, &p);
    assert_int_equal(p.n, want.n - 10);
    assert_true(p.end);
    same_rows(&p, &want, 10, MQS_QUEUE, q, 0);
    page_free(&p);
    tu_list_free(&want);
}

/* ---- (b) a durable subscription, in pages ---- */

static void test_page_sub(void **state)
{
    mqs_store *s = *state;
    char t[128];
    tu_name(t, sizeof t, "pa_t");
    int64_t sa, sb;
    TU_OK(mqs_sub_create(s, t, "a", &sa), s);
    TU_OK(mqs_sub_create(s, t, "b", &sb), s);
    enum { N = 25 };
    int64_t ids[N];
    for (int i = 0; i < N; i++) {
        char body[32];
        int bl = snprintf(body, sizeof body, "topic message %d", i);
        mqs_msg m = tu_msg(MQS_TOPIC, t, body, (size_t)bl, (i * 3) % 10);
        TU_OK(mqs_enqueue(s, &m, &ids[i]), s);
    }
    for (int i = 0; i < N; i += 4) /* a's consumed ones are not b's */
        TU_OK(mqs_ack(s, ids[i], sa), s);
    TU_OK(mqs_nack(s, ids[1], sb), s);
    TU_OK(mqs_nack(s, ids[1], sb), s);

    tu_list wa = {0}, wb = {0};
    tu_recover(s, MQS_TOPIC, t, "a", 0, &wa);
    tu_recover(s, MQS_TOPIC, t, "b", 0, &wb);
    assert_int_equal(wa.n, N - 7);
    assert_int_equal(wb.n, N);
    read_pages(s, MQS_TOPIC, t, sa, 4, 0, &wa);
    read_pages(s, MQS_TOPIC, t, sb, 4, 0, &wb);
    /* the topic's name is optional: rows then have no dest */
    read_pages(s, MQS_TOPIC, NULL, sb, 0, 0, &wb);
    long redelivered = tu_list_find(&wb, ids[1], sb);
    assert_true(redelivered >= 0);
    assert_int_equal(wb.v[redelivered].redeliveries, 2);

    /* a subscription that does not exist: an empty page, the end */
    mqs_page_req none = {MQS_TOPIC, t, sb + 1000000, MQS_PRIORITY_MAX + 1, 0,
                         0, 0};
    page p;
    page_get(s, &none, &p);
    assert_int_equal(p.n, 0);
    assert_true(p.end);
    page_free(&p);
    tu_list_free(&wa);
    tu_list_free(&wb);
}

/* ---- (c) unknown queue; expired rows ---- */

static void test_page_unknown(void **state)
{
    mqs_store *s = *state;
    char q[128], t[128];
    tu_name(q, sizeof q, "pa_never");
    tu_name(t, sizeof t, "pa_topic_only");
    mqs_page_req req = {MQS_QUEUE, q, 0, MQS_PRIORITY_MAX + 1, 0, 0, 0};
    page p;
    page_get(s, &req, &p);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.n, 0);
    assert_true(p.end);
    assert_string_equal(p.err, "");
    page_free(&p);
    /* a topic of that name is not a queue */
    TU_OK(mqs_sub_create(s, t, "x", NULL), s);
    mqs_msg tm = tu_msg(MQS_TOPIC, t, "t", 1, 4);
    TU_OK(mqs_enqueue(s, &tm, NULL), s);
    req.dest = t;
    page_get(s, &req, &p);
    assert_int_equal(p.n, 0);
    assert_true(p.end);
    page_free(&p);

    /* expired messages are in the page: the caller acks them */
    char qe[128];
    tu_name(qe, sizeof qe, "pa_expired");
    int64_t past = tu_now_ms() - 60000, id;
    mqs_msg m = tu_msg(MQS_QUEUE, qe, "old", 3, 4);
    m.expires_ms = past;
    TU_OK(mqs_enqueue(s, &m, &id), s);
    req.dest = qe;
    page_get(s, &req, &p);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.rows[0].id, id);
    assert_int_equal(p.rows[0].expires_ms, past);
    assert_true(p.end);
    page_free(&p);
}

/* ---- (d) bad requests ---- */

static int bad_calls;
static void on_bad(void *ud, int rc, const mqs_message *m, size_t n, int end,
                   const char *err)
{
    (void)ud;
    (void)rc;
    (void)m;
    (void)n;
    (void)end;
    (void)err;
    bad_calls++;
}

static void expect_einval(mqs_store *s, const mqs_page_req *req,
                          mqs_page_fn fn, const char *needle)
{
    int rc = mqs_page_async(s, req, fn, NULL);
    if (rc != MQS_EINVAL)
        fail_msg("expected MQS_EINVAL (%s), got %s", needle,
                 mqs_errname(rc));
    if (!strstr(mqs_errmsg(s), needle))
        fail_msg("message '%s' does not say '%s'", mqs_errmsg(s), needle);
}

static void test_page_einval(void **state)
{
    mqs_store *s = *state;
    char q[128], t[128], longname[300];
    tu_name(q, sizeof q, "pa_bad");
    tu_name(t, sizeof t, "pa_bad_t");
    memset(longname, 'n', 256);
    longname[256] = '\0';
    bad_calls = 0;
    const int start = MQS_PRIORITY_MAX + 1;
    mqs_page_req ok = {MQS_QUEUE, q, 0, start, 0, 0, 0};
    assert_int_equal(mqs_page_async(NULL, &ok, on_bad, NULL), MQS_EINVAL);
    expect_einval(s, NULL, on_bad, "req is NULL");
    expect_einval(s, &ok, NULL, "done is NULL");
    mqs_page_req r = ok;
    r.kind = (mqs_kind)7;
    expect_einval(s, &r, on_bad, "kind 7");
    r = ok;
    r.dest = NULL;
    expect_einval(s, &r, on_bad, "queue name");
    r.dest = "";
    expect_einval(s, &r, on_bad, "queue name");
    r.dest = longname;
    expect_einval(s, &r, on_bad, "got 256");
    r = ok;
    r.sub_id = 5;
    expect_einval(s, &r, on_bad, "sub_id 5");
    mqs_page_req tr = {MQS_TOPIC, t, 0, start, 0, 0, 0};
    expect_einval(s, &tr, on_bad, "sub_id must be > 0");
    tr.sub_id = -3;
    expect_einval(s, &tr, on_bad, "got -3");
    tr.sub_id = 1;
    tr.dest = "";
    expect_einval(s, &tr, on_bad, "topic name");
    r = ok;
    r.after_priority = -1;
    expect_einval(s, &r, on_bad, "priority -1");
    r.after_priority = start + 1;
    expect_einval(s, &r, on_bad, "out of range");
    r = ok;
    r.after_id = -1;
    expect_einval(s, &r, on_bad, "id -1");
    /* none of them was queued: a good page behind them is the only call */
    page p;
    page_get(s, &ok, &p);
    page_free(&p);
    tu_sleep_ms(20);
    assert_int_equal(bad_calls, 0);
}

/* ---- (e) the ordering contract ---- */

enum { ROUNDS = 3, K = 12, M = 9, P = 2 * ROUNDS };

typedef struct ord_run {
    order o;
    wdone pre_ack[ROUNDS], post_ack[ROUNDS];
    wdone e[ROUNDS][K], f[ROUNDS][M];
    page pg[ROUNDS];
} ord_run;

/* Did write w complete before page p (both completed)? */
static int before(const wdone *w, const page *p)
{
    return w->seq < p->seq;
}

static int page_has(const page *p, int64_t id)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->rows[i].id == id)
            return 1;
    return 0;
}

/* Per round: an ack, K enqueues, a page of the whole queue, M enqueues and
 * another ack, all submitted without waiting. Then: every write submitted
 * before a page completed before it, every one after it completed after
 * it, and the page holds exactly the messages of the enqueues that
 * completed before it, minus those of the acks that completed before it. */
static void run_order(mqs_store *s, int fd, const char *what)
{
    char q[128];
    tu_name(q, sizeof q, what);
    static ord_run x;
    memset(&x, 0, sizeof x);
    order_init(&x.o);
    int64_t pid[P];
    for (int i = 0; i < P; i++) { /* committed before everything below */
        mqs_msg m = tu_msg(MQS_QUEUE, q, "p", 1, 4);
        TU_OK(mqs_enqueue(s, &m, &pid[i]), s);
    }
    long total = 0;
    for (int r = 0; r < ROUNDS; r++) {
        x.pre_ack[r].o = x.post_ack[r].o = &x.o;
        TU_OK(mqs_ack_async(s, pid[2 * r], 0, on_write, &x.pre_ack[r]), s);
        for (int i = 0; i < K; i++) {
            x.e[r][i].o = &x.o;
            mqs_msg m = tu_msg(MQS_QUEUE, q, "e", 1, (r + i) % 10);
            TU_OK(mqs_enqueue_async(s, &m, on_write, &x.e[r][i]), s);
        }
        x.pg[r].o = &x.o;
        mqs_page_req req = {MQS_QUEUE, q, 0, MQS_PRIORITY_MAX + 1, 0, 1000,
                            0};
        TU_OK(mqs_page_async(s, &req, on_page, &x.pg[r]), s);
        for (int i = 0; i < M; i++) {
            x.f[r][i].o = &x.o;
            mqs_msg m = tu_msg(MQS_QUEUE, q, "f", 1, (r * 3 + i) % 10);
            TU_OK(mqs_enqueue_async(s, &m, on_write, &x.f[r][i]), s);
        }
        TU_OK(mqs_ack_async(s, pid[2 * r + 1], 0, on_write, &x.post_ack[r]),
              s);
        total += 1 + K + 1 + M + 1;
    }
    settle(s, &x.o, fd, total);
    if (fd >= 0)
        assert_int_equal(x.o.off_loop, 0); /* all on this thread */

    for (int r = 0; r < ROUNDS; r++) {
        const page *p = &x.pg[r];
        assert_int_equal(p->calls, 1);
        assert_int_equal(p->rc, 0);
        assert_true(p->end);
        /* completion order = submission order around the page */
        assert_true(before(&x.pre_ack[r], p));
        assert_false(before(&x.post_ack[r], p));
        for (int i = 0; i < K; i++) {
            assert_int_equal(x.e[r][i].rc, 0);
            if (!before(&x.e[r][i], p))
                fail_msg("round %d: enqueue E%d completed after the page", r,
                         i + 1);
        }
        for (int i = 0; i < M; i++)
            if (before(&x.f[r][i], p))
                fail_msg("round %d: enqueue F%d completed before the page", r,
                         i + 1);
        /* the page's content is what completed before it: nothing more,
         * nothing less */
        size_t want = 0;
        for (int i = 0; i < P; i++) {
            int acked = (i % 2 == 0 && before(&x.pre_ack[i / 2], p)) ||
                        (i % 2 == 1 && before(&x.post_ack[i / 2], p));
            want += !acked;
            if (page_has(p, pid[i]) == acked)
                fail_msg("round %d: message P%d (acked before the page: %s) "
                         "%s in the page", r, i + 1, acked ? "yes" : "no",
                         acked ? "is" : "is not");
        }
        for (int rr = 0; rr < ROUNDS; rr++) {
            for (int i = 0; i < K; i++) {
                int b = before(&x.e[rr][i], p);
                want += b;
                if (page_has(p, x.e[rr][i].id) != b)
                    fail_msg("round %d: E%d of round %d (completed %s the "
                             "page) %s in it", r, i + 1, rr,
                             b ? "before" : "after", b ? "is not" : "is");
            }
            for (int i = 0; i < M; i++) {
                int b = before(&x.f[rr][i], p);
                want += b;
                if (page_has(p, x.f[rr][i].id) != b)
                    fail_msg("round %d: F%d of round %d (completed %s the "
                             "page) %s in it", r, i + 1, rr,
                             b ? "before" : "after", b ? "is not" : "is");
            }
        }
        assert_int_equal(p->n, want);
        for (size_t i = 1; i < p->n; i++) /* delivery order */
            assert_true(p->rows[i - 1].priority > p->rows[i].priority ||
                        (p->rows[i - 1].priority == p->rows[i].priority &&
                         p->rows[i - 1].id < p->rows[i].id));
    }
    for (int r = 0; r < ROUNDS; r++)
        page_free(&x.pg[r]);
    TU_OK(mqs_purge(s, MQS_QUEUE, q, NULL), s);
    order_free(&x.o);
}

static void test_page_order(void **state)
{
    run_order(*state, -1, "pa_order");
}

/* The same with completions run by the caller (mqs_completion_fd). */
static void test_page_order_cfd(void **state)
{
    (void)state;
    mqs_store *s = tu_open();
    int fd = mqs_completion_fd(s);
    assert_true(fd >= 0);
    run_order(s, fd, "pa_order_cfd");
    mqs_close(s);
}

/* A page asked for from a completion callback (the writer thread) sees
 * the write that completed: it was committed before the callback ran. */
typedef struct chain {
    mqs_store *s;
    const char *q;
    int64_t id;
    int submit_rc;
    page pg;
} chain;

static void on_chain(void *ud, int rc, int64_t id, const char *err)
{
    (void)err;
    chain *c = ud;
    c->id = rc ? -1 : id;
    mqs_page_req req = {MQS_QUEUE, c->q, 0, MQS_PRIORITY_MAX + 1, 0, 0, 0};
    c->submit_rc = mqs_page_async(c->s, &req, on_page, &c->pg);
}

static void test_page_from_callback(void **state)
{
    mqs_store *s = *state;
    char q[128];
    tu_name(q, sizeof q, "pa_chain");
    static order o;
    order_init(&o);
    static chain c;
    memset(&c, 0, sizeof c);
    c.s = s;
    c.q = q;
    c.pg.o = &o;
    mqs_msg m = tu_msg(MQS_QUEUE, q, "c", 1, 4);
    TU_OK(mqs_enqueue_async(s, &m, on_chain, &c), s);
    settle(s, &o, -1, 1);
    assert_int_equal(c.submit_rc, 0);
    assert_true(c.id > 0);
    assert_int_equal(c.pg.rc, 0);
    assert_int_equal(c.pg.n, 1);
    assert_int_equal(c.pg.rows[0].id, c.id);
    page_free(&c.pg);
    order_free(&o);
}

/* mqs_close runs what is queued: the page too, after the writes. */
static void test_page_close(void **state)
{
    (void)state;
    mqs_store *s = tu_open();
    char q[128];
    tu_name(q, sizeof q, "pa_close");
    static order o;
    order_init(&o);
    static wdone w[3];
    static page p;
    memset(&p, 0, sizeof p);
    p.o = &o;
    for (int i = 0; i < 3; i++) {
        w[i] = (wdone){.o = &o};
        mqs_msg m = tu_msg(MQS_QUEUE, q, "x", 1, 4);
        TU_OK(mqs_enqueue_async(s, &m, on_write, &w[i]), s);
    }
    mqs_page_req req = {MQS_QUEUE, q, 0, MQS_PRIORITY_MAX + 1, 0, 0, 0};
    TU_OK(mqs_page_async(s, &req, on_page, &p), s);
    mqs_close(s);
    assert_int_equal(p.calls, 1);
    assert_int_equal(p.rc, 0);
    assert_int_equal(p.n, 3);
    assert_int_equal(p.seq, 4);
    page_free(&p);
    s = tu_open();
    TU_OK(mqs_purge(s, MQS_QUEUE, q, NULL), s);
    mqs_close(s);
    order_free(&o);
}

/* A store with a newer schema takes no writes, but pages read there. */
static void test_page_readonly(void **state)
{
    (void)state;
    if (!g_is_sqlite)
        skip();
    char path[512], uri[1024];
    snprintf(path, sizeof path, "%s/page_ro.db", g_tmpdir);
    tu_unlink_db(path);
    snprintf(uri, sizeof uri, "sqlite://%s", path);
    mqs_store *s = tu_open_uri(uri);
    int64_t id;
    mqs_msg m = tu_msg(MQS_QUEUE, "ro_q", "ro", 2, 4);
    TU_OK(mqs_enqueue(s, &m, &id), s);
    mqs_close(s);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE mqs_meta SET value = '999' "
                                  "WHERE key = 'schema_version'",
                                  NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
    int rc = mqs_open_nomigrate(uri, NULL, &s);
    if (rc)
        fail_msg("open_nomigrate: %s: %s", mqs_errname(rc), mqs_errmsg(NULL));
    assert_int_equal(mqs_enqueue_async(s, &m, NULL, NULL), MQS_ESCHEMA);
    mqs_page_req req = {MQS_QUEUE, "ro_q", 0, MQS_PRIORITY_MAX + 1, 0, 0, 0};
    page p;
    page_get(s, &req, &p);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.rows[0].id, id);
    page_free(&p);
    mqs_close(s);
    tu_unlink_db(path);
}

/* ---- (f) mqs_recent_headers ---- */

typedef struct hrow {
    int64_t id;
    unsigned char h[64];
    size_t hlen;
} hrow;

typedef struct hlist {
    hrow v[64];
    size_t n;
    int stop_after; /* 0 = never */
    int calls;
} hlist;

static int take_header(void *ud, int64_t id, const void *h, size_t hlen)
{
    hlist *l = ud;
    l->calls++;
    if (l->n < 64) {
        hrow *r = &l->v[l->n++];
        r->id = id;
        r->hlen = hlen;
        if (hlen)
            memcpy(r->h, h, hlen < sizeof r->h ? hlen : sizeof r->h);
    }
    return l->stop_after && l->calls >= l->stop_after;
}

typedef struct mine {
    int64_t id;
    unsigned char h[32];
    size_t hlen;
    int pending;
} mine;

/* Check l (from max_rows): highest id first, at most max_rows, and every
 * pending message of ours at least as new as the oldest row listed is
 * there, with its headers; none of the others. Returns how many of ours. */
static size_t check_recent(const hlist *l, size_t max_rows, const mine *m,
                           size_t nm)
{
    assert_true(l->n <= max_rows);
    for (size_t i = 1; i < l->n; i++)
        assert_true(l->v[i - 1].id > l->v[i].id);
    int64_t oldest = l->n == max_rows ? l->v[l->n - 1].id : 0;
    size_t ours = 0;
    for (size_t j = 0; j < nm; j++) {
        long at = -1;
        for (size_t i = 0; i < l->n; i++)
            if (l->v[i].id == m[j].id)
                at = (long)i;
        int want = m[j].pending && m[j].id >= oldest;
        if ((at >= 0) != want)
            fail_msg("message %lld (pending: %d) %s listed",
                     (long long)m[j].id, m[j].pending,
                     at >= 0 ? "is" : "is not");
        if (at >= 0) {
            ours++;
            assert_int_equal(l->v[at].hlen, m[j].hlen);
            assert_memory_equal(l->v[at].h, m[j].h, m[j].hlen);
        }
    }
    return ours;
}

static void test_recent_headers(void **state)
{
    mqs_store *s = *state;
    char q[128], t[128];
    tu_name(q, sizeof q, "rh_q");
    tu_name(t, sizeof t, "rh_t");
    int64_t sa, sb;
    TU_OK(mqs_sub_create(s, t, "a", &sa), s);
    TU_OK(mqs_sub_create(s, t, "b", &sb), s);
    enum { N = 12, TOPIC_AT = 5, BARE_AT = 7 };
    static mine m[N];
    for (int i = 0; i < N; i++) {
        mine *w = &m[i];
        w->hlen = i == BARE_AT ? 0
                               : (size_t)snprintf((char *)w->h, sizeof w->h,
                                                  "seq:%d", i) + 1;
        /* high priorities last: the order is by id, not priority */
        mqs_msg msg = tu_msg(i == TOPIC_AT ? MQS_TOPIC : MQS_QUEUE,
                             i == TOPIC_AT ? t : q, "b", 1, i % 10);
        msg.headers = w->hlen ? w->h : NULL;
        msg.headers_len = w->hlen;
        TU_OK(mqs_enqueue(s, &msg, &w->id), s);
        w->pending = 1;
    }
    TU_OK(mqs_ack(s, m[2].id, 0), s);
    TU_OK(mqs_ack(s, m[9].id, 0), s);
    m[2].pending = m[9].pending = 0;

    static hlist l;
    memset(&l, 0, sizeof l);
    TU_OK(mqs_recent_headers(s, N + 5, take_header, &l), s);
    /* ours are the newest: all ten pending ones (the topic message once,
     * for its two subscriptions) */
    assert_int_equal(check_recent(&l, N + 5, m, N), N - 2);
    assert_int_equal(l.v[0].id, m[N - 1].id);

    /* at most max_rows, the newest */
    memset(&l, 0, sizeof l);
    TU_OK(mqs_recent_headers(s, 3, take_header, &l), s);
    assert_int_equal(l.n, 3);
    check_recent(&l, 3, m, N);

    /* the topic message stays while a subscription holds it */
    TU_OK(mqs_ack(s, m[TOPIC_AT].id, sa), s);
    memset(&l, 0, sizeof l);
    TU_OK(mqs_recent_headers(s, N + 5, take_header, &l), s);
    check_recent(&l, N + 5, m, N);
    TU_OK(mqs_ack(s, m[TOPIC_AT].id, sb), s);
    m[TOPIC_AT].pending = 0;
    memset(&l, 0, sizeof l);
    TU_OK(mqs_recent_headers(s, N + 5, take_header, &l), s);
    assert_int_equal(check_recent(&l, N + 5, m, N), N - 3);

    /* fn stops the walk: 0, no further call */
    memset(&l, 0, sizeof l);
    l.stop_after = 2;
    TU_OK(mqs_recent_headers(s, N + 5, take_header, &l), s);
    assert_int_equal(l.calls, 2);
    assert_int_equal(l.v[0].id, m[N - 1].id);

    /* nothing asked, nothing listed; fn is required */
    memset(&l, 0, sizeof l);
    TU_OK(mqs_recent_headers(s, 0, take_header, &l), s);
    assert_int_equal(l.calls, 0);
    assert_int_equal(mqs_recent_headers(s, 5, NULL, NULL), MQS_EINVAL);
    assert_int_equal(mqs_recent_headers(NULL, 5, take_header, &l),
                     MQS_EINVAL);
}

#define T(f) cmocka_unit_test_setup_teardown(f, tu_setup_store, tu_teardown_store)
static const struct CMUnitTest tests[] = {
    T(test_page_queue),
    T(test_page_sub),
    T(test_page_unknown),
    T(test_page_einval),
    T(test_page_order),
    cmocka_unit_test(test_page_order_cfd),
    T(test_page_from_callback),
    cmocka_unit_test(test_page_close),
    cmocka_unit_test(test_page_readonly),
    T(test_recent_headers),
};
TU_GROUP(tu_group_page_async, "page_async", tests);
