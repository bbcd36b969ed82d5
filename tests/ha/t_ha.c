/*
 * t_ha.c - multi-process HA tests: real processes (mqs-ha-node), kill -9,
 * SIGSTOP/SIGCONT, skewed wall clocks, against every store URI given.
 *
 * usage: mqs_ha NODE-BINARY [URI...]   (URIs also from MQSTORE_TEST_URIS;
 *        default a temporary SQLite file)
 *
 * Every test uses its own cluster name and queue, so one database can host
 * them all. The nodes log with CLOCK_MONOTONIC, which is system-wide, so
 * their timelines can be merged.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <mqstore/mqstore.h>

static const char *g_node;   /* path of mqs-ha-node */
static const char *g_uri;    /* URI under test */
static char g_tmp[256];      /* scratch dir */
static int g_seq;

/* ---- small helpers ---- */

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* g_uri plus options (a '&'-joined string) */
static char *uri_with(const char *opts)
{
    size_t n = strlen(g_uri) + strlen(opts) + 2;
    char *u = malloc(n);
    assert_non_null(u);
    snprintf(u, n, "%s%c%s", g_uri, strchr(g_uri, '?') ? '&' : '?', opts);
    return u;
}

typedef struct node {
    pid_t pid;
    char log[320];
    int status; /* exit code once reaped, -1 before, 128+sig if killed */
} node;

/* Nodes started by the running test and not reaped yet: a test that fails
 * midway (a frozen node among them) leaves none behind holding ctest's
 * output until its timeout (reap_nodes, after every test). */
static pid_t g_live[32];

static void live_set(pid_t pid, bool add)
{
    for (size_t i = 0; i < sizeof g_live / sizeof g_live[0]; i++)
        if (add ? g_live[i] == 0 : g_live[i] == pid) {
            g_live[i] = add ? pid : 0;
            return;
        }
}

/* Start a node. faketime: NULL, or an offset like "+1h" for its wall clock
 * only (the monotonic clock stays real, as on a host whose clock is off). */
static void node_start(node *n, const char *uri, const char *faketime,
                       const char *const *args)
{
    snprintf(n->log, sizeof n->log, "%s/node%d.log", g_tmp, ++g_seq);
    unlink(n->log);
    n->status = -1;
    const char *argv[32];
    int k = 0;
    if (faketime) {
        argv[k++] = "faketime";
        argv[k++] = "-f";
        argv[k++] = faketime;
    }
    argv[k++] = g_node;
    argv[k++] = uri;
    argv[k++] = n->log;
    for (int i = 0; args && args[i] && k < 30; i++)
        argv[k++] = args[i];
    argv[k] = NULL;
    fflush(NULL);
    n->pid = fork();
    assert_true(n->pid >= 0);
    if (n->pid == 0) {
        if (faketime) {
            setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1", 1);
            /* libfaketime is preloaded before the ASan runtime */
            setenv("ASAN_OPTIONS", "verify_asan_link_order=0", 1);
        }
        execvp(argv[0], (char *const *)(uintptr_t)argv); /* not written by exec */
        _exit(127);
    }
    live_set(n->pid, true);
}

static int reap_nodes(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof g_live / sizeof g_live[0]; i++)
        if (g_live[i] > 0) {
            kill(g_live[i], SIGKILL);
            kill(g_live[i], SIGCONT); /* a stopped process dies on resume */
            waitpid(g_live[i], NULL, 0);
            g_live[i] = 0;
        }
    return 0;
}

static int node_wait(node *n, long timeout_ms)
{
    long long end = mono_ms() + timeout_ms;
    while (n->status < 0) {
        int st;
        pid_t r = waitpid(n->pid, &st, WNOHANG);
        if (r == n->pid) {
            n->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
            live_set(n->pid, false);
            break;
        }
        if (mono_ms() > end) {
            kill(n->pid, SIGKILL);
            kill(n->pid, SIGCONT);
            waitpid(n->pid, &st, 0);
            live_set(n->pid, false);
            n->status = 999;
            fail_msg("node %s did not finish within %ld ms", n->log,
                     timeout_ms);
        }
        sleep_ms(5);
    }
    return n->status;
}

/* ---- logs ---- */

typedef struct ev {
    char kind;
    long long a, b, t; /* meaning per kind, see ha_node.c */
} ev;

typedef struct evlist {
    ev *v;
    size_t n;
} evlist;

static evlist read_log(const char *path)
{
    evlist l = {NULL, 0};
    FILE *f = fopen(path, "r");
    if (!f)
        return l;
    char line[1300];
    size_t cap = 0;
    while (fgets(line, sizeof line, f)) {
        ev e = {line[0], 0, 0, 0};
        switch (e.kind) {
        case 'W': sscanf(line + 2, "%lld", &e.t); break;
        case 'M': case 'R': sscanf(line + 2, "%lld %lld", &e.a, &e.t); break;
        case 'L': case 'F': sscanf(line + 2, "%lld %lld", &e.a, &e.t); break;
        case 'E': sscanf(line + 2, "%lld %lld %lld", &e.a, &e.b, &e.t); break;
        case 'A': case 'P': sscanf(line + 2, "%lld %lld", &e.a, &e.t); break;
        case 'X': sscanf(line + 2, "%lld", &e.t);
                  print_message("node %s: %s", path, line); break;
        default: continue;
        }
        if (l.n == cap) {
            cap = cap ? cap * 2 : 64;
            l.v = realloc(l.v, cap * sizeof *l.v);
            assert_non_null(l.v);
        }
        l.v[l.n++] = e;
    }
    fclose(f);
    return l;
}

static const ev *find_ev(const evlist *l, char kind, size_t nth)
{
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].kind == kind && nth-- == 0)
            return &l->v[i];
    return NULL;
}

/* Wait until the node's log holds `count` events of kind; returns the time
 * of the last of them. */
static long long wait_ev(node *n, char kind, size_t count, long timeout_ms)
{
    long long end = mono_ms() + timeout_ms;
    for (;;) {
        evlist l = read_log(n->log);
        const ev *e = count ? find_ev(&l, kind, count - 1) : NULL;
        long long t = e ? e->t : -1;
        free(l.v);
        if (t >= 0)
            return t;
        if (mono_ms() > end)
            fail_msg("node %s: no %zu '%c' event within %ld ms", n->log,
                     count, kind, timeout_ms);
        int st;
        if (n->status < 0 && waitpid(n->pid, &st, WNOHANG) == n->pid)
            n->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (n->status >= 0 && kind != 'X') {
            l = read_log(n->log);
            e = count ? find_ev(&l, kind, count - 1) : NULL;
            t = e ? e->t : -1;
            free(l.v);
            if (t >= 0)
                return t;
            fail_msg("node %s exited (%d) before %zu '%c' events", n->log,
                     n->status, count, kind);
        }
        sleep_ms(1);
    }
}

/* ---- the store's view ---- */

typedef struct stored {
    int64_t *id, *tok;
    size_t n, cap;
} stored;

/* Every message of queue, in id order (= commit order), with its token. */
static stored read_queue(const char *queue)
{
    stored s = {0};
    mqs_store *st;
    int rc = mqs_open(g_uri, NULL, &st);
    if (rc)
        fail_msg("open %s: %s", g_uri, mqs_errmsg(NULL));
    mqs_cursor_opts o = {.kind = MQS_QUEUE, .dest = queue};
    mqs_cursor *c;
    assert_int_equal(mqs_cursor_open(st, &o, &c), 0);
    const mqs_message *m;
    while ((rc = mqs_cursor_next(c, &m)) == 1) {
        if (s.n == s.cap) {
            s.cap = s.cap ? s.cap * 2 : 256;
            s.id = realloc(s.id, s.cap * sizeof *s.id);
            s.tok = realloc(s.tok, s.cap * sizeof *s.tok);
        }
        char body[256];
        size_t len = m->body_len < sizeof body - 1 ? m->body_len
                                                   : sizeof body - 1;
        memcpy(body, m->body, len);
        body[len] = 0;
        long long tok = -1;
        sscanf(body, "tok=%lld", &tok);
        s.id[s.n] = m->id;
        s.tok[s.n] = tok;
        s.n++;
    }
    assert_int_equal(rc, 0);
    mqs_cursor_close(c);
    mqs_close(st);
    /* one priority, so delivery order is id order already */
    for (size_t i = 1; i < s.n; i++)
        assert_true(s.id[i] > s.id[i - 1]);
    return s;
}

static void stored_free(stored *s)
{
    free(s->id);
    free(s->tok);
}

static bool stored_has(const stored *s, int64_t id)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->id[i] == id)
            return true;
    return false;
}

/* In commit order, tokens never go back: no write of a deposed master after
 * its successor's first write. */
static void assert_tokens_ordered(const stored *s)
{
    for (size_t i = 1; i < s->n; i++)
        if (s->tok[i] < s->tok[i - 1])
            fail_msg("message %lld (token %lld) committed after message %lld "
                     "(token %lld): a deposed master wrote",
                     (long long)s->id[i], (long long)s->tok[i],
                     (long long)s->id[i - 1], (long long)s->tok[i - 1]);
}

static void names(char *cluster, size_t cl, char *queue, size_t ql,
                  const char *what)
{
    snprintf(cluster, cl, "c%ld_%d_%s", (long)getpid(), ++g_seq, what);
    snprintf(queue, ql, "q%ld_%d_%s", (long)getpid(), g_seq, what);
}

/* The usual opening: A becomes master and has made `writes` durable, B
 * has started and waits for the lock. */
static void start_master_standby(node *a, node *b, const char *uri,
                                 const char *const *a_args,
                                 const char *const *b_args, size_t writes)
{
    node_start(a, uri, NULL, a_args);
    wait_ev(a, 'M', 1, 10000);
    node_start(b, uri, NULL, b_args);
    wait_ev(b, 'W', 1, 10000);
    wait_ev(a, 'E', writes, 10000);
}

/* ---- tests ---- */

typedef struct interval {
    long long tok, t0, t1;
} interval;

static int cmp_iv(const void *a, const void *b)
{
    const interval *x = a, *y = b;
    return x->t0 < y->t0 ? -1 : x->t0 > y->t0;
}

/* Several nodes take turns; with skew, some see a wall clock hours off. */
static void race(int nodes, const char *const *skews)
{
    static char *uri; /* freed on the next call if a failure skipped it */
    free(uri);
    uri = NULL;
    char cluster[96], queue[96], opts[256];
    names(cluster, sizeof cluster, queue, sizeof queue, "race");
    snprintf(opts, sizeof opts, "cluster=%s&lease_ms=1500&renew_ms=300&"
             "poll_ms=20", cluster);
    uri = uri_with(opts);
    const char *args[] = {"--rounds", "4", "--hold-ms", "60", "--queue", queue,
                          "--max-ms", "40000", "--gap-ms", "3", NULL};
    node n[4];
    for (int i = 0; i < nodes; i++)
        node_start(&n[i], uri, skews ? skews[i] : NULL, args);
    for (int i = 0; i < nodes; i++)
        assert_int_equal(node_wait(&n[i], 60000), 0);

    interval iv[64];
    size_t k = 0;
    for (int i = 0; i < nodes; i++) {
        evlist l = read_log(n[i].log);
        for (size_t j = 0; j < l.n; j++)
            if (l.v[j].kind == 'M') {
                assert_true(k < 64);
                iv[k].tok = l.v[j].a;
                iv[k].t0 = l.v[j].t;
                iv[k].t1 = -1;
                for (size_t m = j + 1; m < l.n; m++)
                    if (l.v[m].kind == 'R') {
                        iv[k].t1 = l.v[m].t;
                        break;
                    }
                assert_true(iv[k].t1 >= iv[k].t0);
                k++;
            }
        free(l.v);
    }
    assert_int_equal(k, (size_t)nodes * 4);
    qsort(iv, k, sizeof iv[0], cmp_iv);
    for (size_t i = 1; i < k; i++) {
        if (iv[i].t0 < iv[i - 1].t1)
            fail_msg("two masters: token %lld [%lld, %lld] overlaps token "
                     "%lld [%lld, %lld]",
                     iv[i - 1].tok, iv[i - 1].t0, iv[i - 1].t1, iv[i].tok,
                     iv[i].t0, iv[i].t1);
        assert_true(iv[i].tok > iv[i - 1].tok);
    }
    stored s = read_queue(queue);
    assert_true(s.n > 0);
    assert_tokens_ordered(&s);
    stored_free(&s);
    free(uri);
    uri = NULL;
}

static void test_race_two(void **state)
{
    (void)state;
    race(2, NULL);
}

static void test_race_three(void **state)
{
    (void)state;
    race(3, NULL);
}

/* Node wall clocks that disagree by hours change nothing: leases are on
 * the database's clock and the local monotonic clock. */
static void test_clock_skew(void **state)
{
    (void)state;
#if defined(__SANITIZE_ADDRESS__)
    /* libfaketime preloaded in front of the ASan runtime breaks glibc's
     * timed waits ("The futex facility returned an unexpected error
     * code"): the plain build runs this test. */
    print_message("faketime cannot be preloaded into an ASan build: "
                  "skipped here, run by the plain build\n");
    skip();
#endif
    if (access("/usr/bin/faketime", X_OK) != 0) {
        if (getenv("MQSTORE_REQUIRE_SERVERS") || getenv("CI"))
            fail_msg("faketime is missing (apt-get install faketime)");
        skip();
    }
    const char *skews[] = {NULL, "+3h", "-2h"};
    race(3, skews);
}

/* kill -9 the master while it writes and acks: a standby takes over at once
 * and the store holds every durable unacked message and no acked one. */
static void test_kill9(void **state)
{
    (void)state;
    char cluster[96], queue[96], opts[256];
    names(cluster, sizeof cluster, queue, sizeof queue, "kill");
    snprintf(opts, sizeof opts, "cluster=%s", cluster); /* defaults */
    char *uri = uri_with(opts);
    const char *a_args[] = {"--queue", queue, "--ack-every", "3", "--max-ms",
                            "20000", NULL};
    const char *b_args[] = {"--queue", queue, "--hold-ms", "300", "--max-ms",
                            "20000", NULL};
    node a, b;
    start_master_standby(&a, &b, uri, a_args, b_args, 60);
    sleep_ms(150); /* b is blocked on the session lock by now */
    long long t_kill = mono_ms();
    kill(a.pid, SIGKILL);
    assert_int_equal(node_wait(&a, 5000), 128 + SIGKILL);
    long long t_m = wait_ev(&b, 'M', 1, 10000);
    /* With the crash detector the standby learns of the death at once
     * (target 500 ms p99: see the bench); without it (crash_detect=off,
     * e.g. through a transaction pooler) only when the lease (default
     * 2000 ms) runs out, plus a poll. */
    long long limit = strstr(g_uri, "crash_detect=off") ? 3500 : 1500;
    print_message("takeover after kill -9: %lld ms (limit %lld)\n",
                  t_m - t_kill, limit);
    assert_true(t_m - t_kill < limit);
    assert_int_equal(node_wait(&b, 20000), 0);

    evlist l = read_log(a.log);
    stored s = read_queue(queue);
    size_t durable = 0, acked = 0;
    for (size_t i = 0; i < l.n; i++) {
        if (l.v[i].kind == 'E') {
            /* An ack that was started may have committed even though the
             * node died before logging it: such a message may be gone. */
            bool was_acked = false;
            for (size_t j = i + 1; j < l.n; j++)
                if ((l.v[j].kind == 'A' || l.v[j].kind == 'P') &&
                    l.v[j].a == l.v[i].a)
                    was_acked = true;
            if (!was_acked) {
                if (!stored_has(&s, l.v[i].a))
                    fail_msg("durable message %lld lost", l.v[i].a);
                durable++;
            }
        } else if (l.v[i].kind == 'A') {
            if (stored_has(&s, l.v[i].a))
                fail_msg("acked message %lld came back", l.v[i].a);
            acked++;
        }
    }
    assert_true(durable > 0 && acked > 0);
    assert_tokens_ordered(&s);
    stored_free(&s);
    free(l.v);
    free(uri);
}

/* SIGSTOP the master past its lease: a standby takes over; the old master,
 * resumed, is fenced, told on_lost, and left nothing after the takeover. */
static void test_freeze(void **state)
{
    (void)state;
    char cluster[96], queue[96], opts[256];
    names(cluster, sizeof cluster, queue, sizeof queue, "freeze");
    snprintf(opts, sizeof opts,
             "cluster=%s&lease_ms=1000&renew_ms=300&poll_ms=50", cluster);
    char *uri = uri_with(opts);
    /* A long gap: the stop lands between writes, outside any transaction
     * (on SQLite a process frozen inside one blocks the whole file). */
    const char *a_args[] = {"--queue", queue, "--gap-ms", "150", "--max-ms",
                            "20000", NULL};
    const char *b_args[] = {"--queue", queue, "--hold-ms", "600", "--max-ms",
                            "20000", NULL};
    node a, b;
    node_start(&a, uri, NULL, a_args);
    wait_ev(&a, 'M', 1, 10000);
    node_start(&b, uri, NULL, b_args);
    wait_ev(&b, 'W', 1, 10000);
    wait_ev(&a, 'E', 3, 10000);
    long long t_e = wait_ev(&a, 'E', 4, 10000); /* just committed */
    kill(a.pid, SIGSTOP);
    long long t_stop = mono_ms();
    long long t_m = wait_ev(&b, 'M', 1, 10000);
    print_message("takeover after freeze: %lld ms after SIGSTOP (lease "
                  "1000 ms, stop %lld ms after a write)\n", t_m - t_stop,
                  t_stop - t_e);
    /* not before the lease could have ended, not long after it */
    assert_true(t_m - t_e >= 1000 - 300);
    assert_true(t_m - t_stop < 1000 + 1000);
    wait_ev(&b, 'E', 5, 10000);
    kill(a.pid, SIGCONT);
    int st = node_wait(&a, 10000);
    assert_int_equal(st, 3); /* fenced */
    evlist la = read_log(a.log);
    assert_non_null(find_ev(&la, 'F', 0));
    assert_non_null(find_ev(&la, 'L', 0));
    assert_int_equal(node_wait(&b, 20000), 0);
    stored s = read_queue(queue);
    assert_tokens_ordered(&s);
    /* and every write a reported durable is there */
    for (size_t i = 0; i < la.n; i++)
        if (la.v[i].kind == 'E' && !stored_has(&s, la.v[i].a))
            fail_msg("durable message %lld of the frozen node lost",
                     la.v[i].a);
    stored_free(&s);
    free(la.v);
    free(uri);
}

/* A clean release hands over within one poll. */
static void test_release(void **state)
{
    (void)state;
    char cluster[96], queue[96], opts[256];
    names(cluster, sizeof cluster, queue, sizeof queue, "release");
    snprintf(opts, sizeof opts, "cluster=%s&poll_ms=200", cluster);
    char *uri = uri_with(opts);
    const char *a_args[] = {"--queue", queue, "--hold-ms", "400", NULL};
    const char *b_args[] = {"--queue", queue, "--hold-ms", "100", NULL};
    node a, b;
    node_start(&a, uri, NULL, a_args);
    wait_ev(&a, 'M', 1, 10000);
    node_start(&b, uri, NULL, b_args);
    long long t_r = wait_ev(&a, 'R', 1, 10000);
    long long t_m = wait_ev(&b, 'M', 1, 10000);
    print_message("takeover after release: %lld ms\n", t_m - t_r);
    assert_true(t_m - t_r < 200 + 150);
    assert_int_equal(node_wait(&a, 10000), 0);
    assert_int_equal(node_wait(&b, 10000), 0);
    free(uri);
}

/* Options that cannot work together are refused at open. */
static void test_bad_lease_options(void **state)
{
    (void)state;
    char *uri = uri_with("lease_ms=1000&renew_ms=500");
    mqs_store *s = NULL;
    assert_int_equal(mqs_open(uri, NULL, &s), MQS_EINVAL);
    assert_null(s);
    assert_non_null(strstr(mqs_errmsg(NULL), "renew_ms"));
    free(uri);
}

/* Try-acquire against a live holder reports who holds it. */
static void test_try_busy(void **state)
{
    (void)state;
    char cluster[96], queue[96], opts[256];
    names(cluster, sizeof cluster, queue, sizeof queue, "try");
    snprintf(opts, sizeof opts, "cluster=%s&node_id=first", cluster);
    char *u1 = uri_with(opts);
    snprintf(opts, sizeof opts, "cluster=%s&node_id=second", cluster);
    char *u2 = uri_with(opts);
    mqs_store *s1, *s2;
    assert_int_equal(mqs_open(u1, NULL, &s1), 0);
    assert_int_equal(mqs_open(u2, NULL, &s2), 0);
    assert_int_equal(mqs_lock_acquire(s1, 0, NULL), 0);
    assert_int_equal(mqs_lock_acquire(s2, 0, NULL), MQS_EBUSY);
    assert_non_null(strstr(mqs_errmsg(s2), "first"));
    mqs_lock_info li;
    assert_int_equal(mqs_lock_status(s2, &li), 0);
    assert_string_equal(li.holder, "first");
    assert_false(li.held_by_me);
    assert_true(li.lease_left_ms > 0);
    assert_int_equal(mqs_lock_status(s1, &li), 0);
    assert_true(li.held_by_me);
    int64_t t1 = li.token;
    /* s2 cannot fence s1 without the lock; after a release it can */
    assert_int_equal(mqs_lock_release(s1), 0);
    assert_int_equal(mqs_lock_acquire(s2, 2000, NULL), 0);
    assert_int_equal(mqs_lock_status(s2, &li), 0);
    assert_true(li.token > t1);
    /* the released node's writes are refused and leave nothing */
    mqs_msg m = {.kind = MQS_QUEUE, .dest = queue, .body = "x", .body_len = 1,
                 .priority = 4};
    assert_int_equal(mqs_enqueue(s1, &m, NULL), MQS_EFENCED);
    stored s = read_queue(queue);
    assert_int_equal(s.n, 0);
    stored_free(&s);
    mqs_close(s1);
    mqs_close(s2);
    free(u1);
    free(u2);
}

/* ---- database-level faults: need MQSTORE_TEST_DB_SCRIPT (a tests/db script
 * with a `restart` that honours MQS_RESTART_PAUSE_MS) ---- */

static const char *db_script(void)
{
    const char *p = getenv("MQSTORE_TEST_DB_SCRIPT");
    if (p && *p)
        return p;
    if (strncmp(g_uri, "sqlite:", 7) == 0) {
        print_message("no database server behind a SQLite store: skipped\n");
        skip();
    }
    if (getenv("MQSTORE_REQUIRE_SERVERS") || getenv("CI"))
        fail_msg("MQSTORE_TEST_DB_SCRIPT is not set: cannot restart the "
                 "server behind %s", g_uri);
    skip();
    return NULL;
}

static void db_restart(long pause_ms)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "MQS_RESTART_PAUSE_MS=%ld bash %s restart "
             ">/dev/null", pause_ms, db_script());
    long long t0 = mono_ms();
    int rc = system(cmd);
    assert_int_equal(rc, 0);
    print_message("database restart (down >= %ld ms) took %lld ms\n",
                  pause_ms, mono_ms() - t0);
}

static bool has_ev_after(const char *log, char kind, long long t)
{
    evlist l = read_log(log);
    bool found = false;
    for (size_t i = 0; i < l.n; i++)
        if (l.v[i].kind == kind && l.v[i].t > t)
            found = true;
    free(l.v);
    return found;
}

/* The database restarts while the master's lease is valid: every session
 * ends, the master's too, but that is not a crash: no takeover, and the
 * master keeps writing once the database is back. */
static void test_db_restart_within_lease(void **state)
{
    (void)state;
    db_script();
    char cluster[96], queue[96], opts[256];
    names(cluster, sizeof cluster, queue, sizeof queue, "dbshort");
    snprintf(opts, sizeof opts,
             "cluster=%s&lease_ms=20000&renew_ms=2000&poll_ms=100", cluster);
    char *uri = uri_with(opts);
    const char *a_args[] = {"--queue", queue, "--gap-ms", "20", "--max-ms",
                            "60000", NULL};
    const char *b_args[] = {"--queue", queue, "--hold-ms", "100", "--max-ms",
                            "60000", NULL};
    node a, b;
    start_master_standby(&a, &b, uri, a_args, b_args, 10);
    db_restart(0);
    long long t_back = mono_ms();
    sleep_ms(2000); /* the standby has had many polls by now */
    evlist lb = read_log(b.log);
    assert_null(find_ev(&lb, 'M', 0));
    free(lb.v);
    evlist la = read_log(a.log);
    assert_null(find_ev(&la, 'L', 0));
    free(la.v);
    assert_true(has_ev_after(a.log, 'E', t_back)); /* writing again */
    kill(a.pid, SIGKILL);
    node_wait(&a, 5000);
    wait_ev(&b, 'M', 1, 25000); /* and the standby still works */
    assert_int_equal(node_wait(&b, 20000), 0);
    stored s = read_queue(queue);
    assert_tokens_ordered(&s);
    stored_free(&s);
    free(uri);
}

/* The database stays down longer than the lease: the master steps down on
 * its own clock (on_lost) before anyone could take over; after the restart
 * a standby is master and the old one is fenced. */
static void test_db_down_past_lease(void **state)
{
    (void)state;
    db_script();
    char cluster[96], queue[96], opts[256];
    names(cluster, sizeof cluster, queue, sizeof queue, "dblong");
    snprintf(opts, sizeof opts,
             "cluster=%s&lease_ms=2000&renew_ms=500&poll_ms=100", cluster);
    char *uri = uri_with(opts);
    const char *a_args[] = {"--queue", queue, "--gap-ms", "20", "--max-ms",
                            "60000", NULL};
    const char *b_args[] = {"--queue", queue, "--hold-ms", "300", "--max-ms",
                            "60000", NULL};
    node a, b;
    start_master_standby(&a, &b, uri, a_args, b_args, 10);
    long long t0 = mono_ms();
    db_restart(4500);
    long long t_l = wait_ev(&a, 'L', 1, 10000);
    long long t_m = wait_ev(&b, 'M', 1, 30000);
    print_message("master stepped down %lld ms into the outage; standby "
                  "master %lld ms after it\n", t_l - t0, t_m - t_l);
    assert_true(t_l < t_m);
    assert_true(t_l - t0 < 2000 + 1000);
    int st = node_wait(&a, 30000);
    assert_true(st == 3 || st == 4); /* fenced, or its write failed */
    assert_int_equal(node_wait(&b, 30000), 0);
    stored s = read_queue(queue);
    assert_tokens_ordered(&s);
    stored_free(&s);
    free(uri);
}

/* The master's path to the database freezes (a proxy stops forwarding, the
 * connections stay open): the standby takes over after the lease, the old
 * master steps down on its own clock, and once the path thaws its writes
 * are fenced. */
static void test_frozen_connection(void **state)
{
    (void)state;
    db_script();
    const char *hostport = strstr(g_uri, "@127.0.0.1:");
    if (!hostport)
        fail_msg("cannot find @127.0.0.1:PORT in %s to put a proxy in front",
                 g_uri);
    int dbport = atoi(hostport + 11);
    char proxy_bin[400];
    snprintf(proxy_bin, sizeof proxy_bin, "%s", g_node);
    char *slash = strrchr(proxy_bin, '/');
    snprintf(slash ? slash + 1 : proxy_bin,
             sizeof proxy_bin - (size_t)(slash ? slash + 1 - proxy_bin : 0),
             "mqs-freeze-proxy");
    /* A port below the ephemeral range (32768+), tried again elsewhere
     * when taken (two suites run at once in CI). */
    int pport = 0, out[2] = {-1, -1};
    pid_t proxy = -1;
    for (int attempt = 0; attempt < 20; attempt++) {
        int port = 20000 + (int)((getpid() * 7 + attempt * 997) % 12000);
        char lp[16], tp[16];
        snprintf(lp, sizeof lp, "%d", port);
        snprintf(tp, sizeof tp, "%d", dbport);
        assert_int_equal(pipe(out), 0);
        proxy = fork();
        if (proxy == 0) {
            dup2(out[1], 1);
            execl(proxy_bin, proxy_bin, lp, tp, (char *)NULL);
            _exit(127);
        }
        close(out[1]);
        char ready[16] = "";
        if (read(out[0], ready, sizeof ready - 1) > 0) {
            pport = port;
            break;
        }
        close(out[0]);
        out[0] = -1;
        waitpid(proxy, NULL, 0); /* it could not listen there */
        proxy = -1;
    }
    assert_true(pport > 0);
    close(out[0]);

    char cluster[96], queue[96], opts[256];
    names(cluster, sizeof cluster, queue, sizeof queue, "proxy");
    snprintf(opts, sizeof opts,
             "cluster=%s&lease_ms=2000&renew_ms=500&poll_ms=100", cluster);
    char *uri_b = uri_with(opts);
    /* A talks to the database through the proxy */
    size_t ulen = strlen(uri_b) + 16;
    char *uri_a = malloc(ulen);
    assert_non_null(uri_a);
    const char *hp = strstr(uri_b, "@127.0.0.1:");
    const char *rest = hp + 11;
    while (*rest >= '0' && *rest <= '9')
        rest++;
    snprintf(uri_a, ulen, "%.*s@127.0.0.1:%d%s", (int)(hp - uri_b), uri_b,
             pport, rest);
    const char *a_args[] = {"--queue", queue, "--gap-ms", "150", "--max-ms",
                            "60000", NULL};
    const char *b_args[] = {"--queue", queue, "--hold-ms", "600", "--max-ms",
                            "60000", NULL};
    node a, b;
    node_start(&a, uri_a, NULL, a_args);
    wait_ev(&a, 'M', 1, 10000);
    node_start(&b, uri_b, NULL, b_args);
    wait_ev(&b, 'W', 1, 10000);
    wait_ev(&a, 'E', 3, 10000);
    wait_ev(&a, 'E', 4, 10000); /* freeze between two writes */
    kill(proxy, SIGUSR1);
    long long t_f = mono_ms();
    long long t_l = wait_ev(&a, 'L', 1, 10000);
    long long t_m = wait_ev(&b, 'M', 1, 10000);
    print_message("frozen path: master stepped down after %lld ms, standby "
                  "master after %lld ms\n", t_l - t_f, t_m - t_f);
    assert_true(t_l <= t_m);
    assert_true(t_m - t_f < 2000 + 1500);
    wait_ev(&b, 'E', 3, 10000);
    kill(proxy, SIGUSR2);
    int st = node_wait(&a, 20000);
    assert_int_equal(st, 3); /* fenced */
    assert_int_equal(node_wait(&b, 20000), 0);
    kill(proxy, SIGTERM);
    waitpid(proxy, NULL, 0);
    stored s = read_queue(queue);
    assert_tokens_ordered(&s);
    stored_free(&s);
    free(uri_a);
    free(uri_b);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s NODE-BINARY [URI...]\n", argv[0]);
        return 2;
    }
    g_node = argv[1];
    snprintf(g_tmp, sizeof g_tmp, "/tmp/mqs-ha.XXXXXX");
    if (!mkdtemp(g_tmp)) {
        perror("mkdtemp");
        return 2;
    }
    char deflt[400];
    snprintf(deflt, sizeof deflt, "sqlite://%s/ha.db", g_tmp);
    const char *uris[16];
    int n = 0;
    for (int i = 2; i < argc && n < 16; i++)
        uris[n++] = argv[i];
    char *envcopy = NULL;
    if (n == 0 && getenv("MQSTORE_TEST_URIS")) {
        envcopy = strdup(getenv("MQSTORE_TEST_URIS"));
        for (char *t = strtok(envcopy, " "); t && n < 16; t = strtok(NULL, " "))
            uris[n++] = t;
    }
    if (n == 0)
        uris[n++] = deflt;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_bad_lease_options, reap_nodes),
        cmocka_unit_test_teardown(test_try_busy, reap_nodes),
        cmocka_unit_test_teardown(test_release, reap_nodes),
        cmocka_unit_test_teardown(test_race_two, reap_nodes),
        cmocka_unit_test_teardown(test_race_three, reap_nodes),
        cmocka_unit_test_teardown(test_clock_skew, reap_nodes),
        cmocka_unit_test_teardown(test_kill9, reap_nodes),
        cmocka_unit_test_teardown(test_freeze, reap_nodes),
        cmocka_unit_test_teardown(test_frozen_connection, reap_nodes),
        cmocka_unit_test_teardown(test_db_restart_within_lease, reap_nodes),
        cmocka_unit_test_teardown(test_db_down_past_lease, reap_nodes),
    };
    int failed = 0;
    for (int i = 0; i < n; i++) {
        g_uri = uris[i];
        char masked[512], name[600];
        mqs_uri_mask(g_uri, masked, sizeof masked);
        snprintf(name, sizeof name, "ha %s", masked);
        failed += cmocka_run_group_tests_name(name, tests, NULL, NULL);
    }
    free(envcopy);
    if (!getenv("MQSTORE_KEEP_TMP")) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", g_tmp);
    }
    return failed ? 1 : 0;
}
