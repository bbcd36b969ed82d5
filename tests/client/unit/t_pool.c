/* t_pool.c - the pooled connection factory without a broker: limits,
 * borrow timeouts, reuse, idle reaping, broken connections replaced,
 * close with connections still borrowed, and many threads at once.
 *
 * No broker is needed: connections point at a 127.0.0.1 port this test
 * binds without listening on, so every connect is refused at once. A
 * failover: connection then keeps retrying (healthy for the pool); a plain
 * tcp:// one fails for good (broken). The broker-backed pool test (200
 * threads on 100 connections) lives with the end-to-end tests. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include <mqclient/mqclient.h>

static int g_port;
static char g_failover[128], g_plain[128];

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static mqc_pool *open_pool(const char *uri, int max, int idle, int borrow)
{
    mqc_pool_opts o = {0};
    o.max_connections = max;
    o.idle_timeout_ms = idle;
    o.borrow_timeout_ms = borrow;
    o.conn.login = "guest";
    o.conn.passcode = "guest";
    o.conn.log_level = MQC_LOG_ERROR;
    mqc_pool *p = NULL;
    int rc = mqc_pool_open(uri, &o, &p);
    if (rc)
        fail_msg("mqc_pool_open(%s): %s: %s", uri, mqc_errname(rc),
                 mqc_errmsg(NULL));
    assert_non_null(p);
    return p;
}

static void counts(mqc_pool *p, int want_open, int want_borrowed)
{
    int o = -1, b = -1;
    mqc_pool_counts(p, &o, &b);
    if (o != want_open || b != want_borrowed)
        fail_msg("counts: open %d borrowed %d, want %d %d", o, b, want_open,
                 want_borrowed);
}

static void test_bad_args(void **state)
{
    (void)state;
    mqc_pool *p = (mqc_pool *)&p;
    mqc_pool_opts o = {0};
    assert_int_equal(mqc_pool_open("failover:(tcp://a)?randomise=false", &o,
                                   &p),
                     MQC_EINVAL);
    assert_null(p);
    assert_non_null(strstr(mqc_errmsg(NULL), "randomise"));
    assert_int_equal(mqc_pool_open(NULL, &o, &p), MQC_EINVAL);
    o.max_connections = -1;
    assert_int_equal(mqc_pool_open(g_failover, &o, &p), MQC_EINVAL);
    assert_non_null(strstr(mqc_errmsg(NULL), "max_connections"));
    o.max_connections = 1;
    o.borrow_timeout_ms = -2;
    assert_int_equal(mqc_pool_open(g_failover, &o, &p), MQC_EINVAL);
    assert_non_null(strstr(mqc_errmsg(NULL), "borrow_timeout_ms"));
    o.borrow_timeout_ms = 0;
    o.idle_timeout_ms = -5;
    assert_int_equal(mqc_pool_open(g_failover, &o, &p), MQC_EINVAL);
    assert_int_equal(mqc_pool_open(g_failover, &o, NULL), MQC_EINVAL);
    mqc_conn *c = (mqc_conn *)&c;
    assert_int_equal(mqc_pool_borrow(NULL, &c), MQC_EINVAL);
    assert_null(c);
    mqc_pool_close(NULL);
    mqc_pool_return(NULL, NULL);
    int on = 7, bn = 7;
    mqc_pool_counts(NULL, &on, &bn);
    assert_int_equal(on, 0);
    assert_int_equal(bn, 0);
}

static void test_limits_and_reuse(void **state)
{
    (void)state;
    /* max 0 means 1 */
    mqc_pool *p = open_pool(g_failover, 0, 0, 0);
    counts(p, 0, 0); /* lazily opened */
    mqc_conn *a, *b;
    assert_int_equal(mqc_pool_borrow(p, &a), 0);
    counts(p, 1, 1);
    assert_int_equal(mqc_pool_borrow(p, &b), MQC_EBUSY);
    assert_null(b);
    assert_non_null(strstr(mqc_errmsg(NULL), "borrowed"));
    mqc_pool_return(p, a);
    counts(p, 1, 0);
    assert_int_equal(mqc_pool_borrow(p, &b), 0);
    assert_ptr_equal(a, b); /* the idle one is reused */
    mqc_pool_return(p, b);
    /* returning twice is ignored */
    mqc_pool_return(p, b);
    counts(p, 1, 0);
    mqc_pool_close(p);

    p = open_pool(g_failover, 3, 0, 0);
    mqc_conn *c[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(mqc_pool_borrow(p, &c[i]), 0);
    assert_ptr_not_equal(c[0], c[1]);
    assert_ptr_not_equal(c[1], c[2]);
    counts(p, 3, 3);
    assert_int_equal(mqc_pool_borrow(p, &a), MQC_EBUSY);
    for (int i = 0; i < 3; i++)
        mqc_pool_return(p, c[i]);
    counts(p, 3, 0);
    /* the most recently returned comes back first */
    assert_int_equal(mqc_pool_borrow(p, &a), 0);
    assert_ptr_equal(a, c[2]);
    mqc_pool_return(p, a);
    mqc_pool_close(p);
}

static void test_borrow_timeout(void **state)
{
    (void)state;
    mqc_pool *p = open_pool(g_failover, 1, 0, 300);
    mqc_conn *a, *b;
    assert_int_equal(mqc_pool_borrow(p, &a), 0);
    int64_t t0 = now_ms();
    assert_int_equal(mqc_pool_borrow(p, &b), MQC_EBUSY);
    int64_t took = now_ms() - t0;
    assert_true(took >= 280);
    assert_true(took < 3000);
    assert_non_null(strstr(mqc_errmsg(NULL), "borrow_timeout_ms"));
    mqc_pool_return(p, a);
    mqc_pool_close(p);
}

typedef struct waiter {
    mqc_pool *p;
    int rc;
    mqc_conn *got;
    int64_t done_at;
} waiter;

static void *borrow_thread(void *arg)
{
    waiter *w = arg;
    w->rc = mqc_pool_borrow(w->p, &w->got);
    w->done_at = now_ms();
    return NULL;
}

static void test_wait_forever(void **state)
{
    (void)state;
    mqc_pool *p = open_pool(g_failover, 1, 0, -1);
    mqc_conn *a;
    assert_int_equal(mqc_pool_borrow(p, &a), 0);
    waiter w = {.p = p, .rc = 99};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, borrow_thread, &w), 0);
    sleep_ms(200);
    int64_t returned_at = now_ms();
    mqc_pool_return(p, a);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(w.rc, 0);
    assert_ptr_equal(w.got, a);
    assert_true(w.done_at >= returned_at);
    counts(p, 1, 1);
    mqc_pool_return(p, w.got);
    mqc_pool_close(p);
}

static void test_idle_reaped(void **state)
{
    (void)state;
    mqc_pool *p = open_pool(g_failover, 4, 200, 0);
    mqc_conn *c[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(mqc_pool_borrow(p, &c[i]), 0);
    for (int i = 0; i < 3; i++)
        mqc_pool_return(p, c[i]);
    counts(p, 3, 0);
    /* the reaper closes them with no pool call made */
    int o = 3;
    for (int i = 0; i < 100 && o; i++) {
        sleep_ms(50);
        mqc_pool_counts(p, &o, NULL);
    }
    counts(p, 0, 0);
    /* a borrowed connection is never reaped */
    mqc_conn *a;
    assert_int_equal(mqc_pool_borrow(p, &a), 0);
    sleep_ms(500);
    counts(p, 1, 1);
    mqc_pool_return(p, a);
    mqc_pool_close(p);
}

static void test_broken_replaced(void **state)
{
    (void)state;
    /* plain tcp:// to a refusing port: fails for good */
    mqc_pool *p = open_pool(g_plain, 2, 0, 0);
    mqc_conn *a, *b;
    assert_int_equal(mqc_pool_borrow(p, &a), 0);
    int rc = mqc_wait_connected(a, 5000);
    assert_true(rc != 0 && rc != MQC_ETIMEDOUT);
    mqc_pool_return(p, a); /* closed, not kept */
    counts(p, 0, 0);
    assert_int_equal(mqc_pool_borrow(p, &b), 0); /* a new one */
    counts(p, 1, 1);
    rc = mqc_wait_connected(b, 5000);
    assert_true(rc != 0 && rc != MQC_ETIMEDOUT);
    mqc_pool_return(p, b);
    counts(p, 0, 0);
    mqc_pool_close(p);
}

static void test_close_with_borrowed(void **state)
{
    (void)state;
    mqc_pool *p = open_pool(g_failover, 1, 0, -1);
    mqc_conn *a, *b = NULL;
    assert_int_equal(mqc_pool_borrow(p, &a), 0);
    /* a borrower waiting forever is woken by the close */
    waiter w = {.p = p, .rc = 99};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, borrow_thread, &w), 0);
    sleep_ms(100);
    mqc_pool_close(p);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(w.rc, MQC_ECLOSED);
    assert_null(w.got);
    /* a is still usable by its borrower until it is returned */
    char buf[64];
    (void)mqc_current_broker(a, buf, sizeof buf);
    assert_int_equal(mqc_pool_borrow(p, &b), MQC_ECLOSED);
    counts(p, 1, 1);
    mqc_pool_return(p, a); /* closes a and frees the pool (ASan: no leak) */
}

/* Many threads on few connections: never more than max open, never one
 * connection in two hands. */
enum { THREADS = 16, ROUNDS = 150, POOL_MAX = 4 };
static pthread_mutex_t held_mu = PTHREAD_MUTEX_INITIALIZER;
static mqc_conn *held[THREADS];
static int violations;

static void *churn_thread(void *arg)
{
    mqc_pool *p = arg;
    int64_t end = now_ms() + 20000; /* bound */
    for (int r = 0; r < ROUNDS && now_ms() < end; r++) {
        mqc_conn *c;
        if (mqc_pool_borrow(p, &c) != 0) {
            __atomic_add_fetch(&violations, 1, __ATOMIC_RELAXED);
            continue;
        }
        int o, b;
        mqc_pool_counts(p, &o, &b);
        pthread_mutex_lock(&held_mu);
        if (o > POOL_MAX || b > o || b < 1)
            violations++;
        int slot = -1;
        for (int i = 0; i < THREADS; i++) {
            if (held[i] == c)
                violations++;
            if (!held[i] && slot < 0)
                slot = i;
        }
        held[slot] = c;
        pthread_mutex_unlock(&held_mu);
        if (r % 7 == 0)
            sleep_ms(1);
        pthread_mutex_lock(&held_mu);
        held[slot] = NULL;
        pthread_mutex_unlock(&held_mu);
        mqc_pool_return(p, c);
    }
    return NULL;
}

static void test_many_threads(void **state)
{
    (void)state;
    mqc_pool *p = open_pool(g_failover, POOL_MAX, 0, -1);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, churn_thread, p), 0);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(violations, 0);
    int o, b;
    mqc_pool_counts(p, &o, &b);
    assert_int_equal(b, 0);
    assert_true(o >= 1 && o <= POOL_MAX);
    mqc_pool_close(p);
}

int main(void)
{
    /* A port that refuses: bound, never listening, held for the run. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof sa;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) ||
        getsockname(fd, (struct sockaddr *)&sa, &sl)) {
        perror("t_pool: bind 127.0.0.1:0");
        return 1;
    }
    g_port = ntohs(sa.sin_port);
    snprintf(g_failover, sizeof g_failover,
             "failover:(tcp://127.0.0.1:%d)?initialReconnectDelay=50&"
             "maxReconnectDelay=200",
             g_port);
    snprintf(g_plain, sizeof g_plain, "tcp://127.0.0.1:%d?connectTimeout=1000",
             g_port);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_args),
        cmocka_unit_test(test_limits_and_reuse),
        cmocka_unit_test(test_borrow_timeout),
        cmocka_unit_test(test_wait_forever),
        cmocka_unit_test(test_idle_reaped),
        cmocka_unit_test(test_broken_replaced),
        cmocka_unit_test(test_close_with_borrowed),
        cmocka_unit_test(test_many_threads),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    close(fd);
    return rc;
}
