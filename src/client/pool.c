/* pool.c - the pooled connection factory (ActiveMQ's
 * PooledConnectionFactory): up to max_connections mqc_conn, opened lazily,
 * handed to one borrower at a time, kept open while idle for
 * idle_timeout_ms, and closed when they failed for good.
 *
 * Locking: one mutex (p->mu) guards the whole pool and one condvar
 * (p->cv) tells waiting borrowers that a slot or a connection came free.
 * mqc_open() and mqc_close() are never called under p->mu: they create
 * and join threads and close waits (bounded) for the broker's receipt.
 * Lock order: p->mu, then a connection's own mutex (mqc__conn_broken()).
 *
 * Accounting: `open` counts every connection the pool owns, idle or
 * borrowed, plus the slots reserved by borrowers that are inside
 * mqc_open() at the moment; so borrowed <= open <= max at all times.
 *
 * A small reaper thread closes idle connections once idle_timeout_ms has
 * passed (and idle ones that broke meanwhile); borrow and return do the same
 * lazily, so a pool without traffic still shrinks. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#define DEFAULT_IDLE_MS 30000
/* A sanity bound: far above any real pool, low enough that the slot
 * arrays stay small. */
#define MAX_POOL 100000
/* The reaper also looks for idle connections that broke at least this
 * often while some are idle. */
#define REAP_POLL_MS 1000

typedef struct idle_conn {
    mqc_conn *c;
    int64_t since; /* monotonic ms when it was returned */
} idle_conn;

struct mqc_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;        /* a slot or an idle connection came free */
    pthread_cond_t reaper_cv; /* the idle set changed, or closing */
    char *uri;
    mqc_conn_opts conn; /* strings below are the pool's copies */
    char *login, *passcode, *vhost, *client_id;
    mqc_header *connect_headers; /* copies; strings owned */
    int max, idle_ms, borrow_timeout_ms;

    idle_conn *idle; /* a stack: the most recently returned on top, so the
                        rest age out when traffic drops */
    int nidle;
    mqc_conn **out; /* borrowed, not yet returned */
    int nout;
    int open;    /* idle + borrowed + opening */
    int opening; /* borrowers inside mqc_open() now */
    int waiting; /* borrowers waiting on cv or closing stale ones */

    bool closing;  /* mqc_pool_close() started */
    bool orphaned; /* closed with borrowed connections: the last
                      mqc_pool_return() frees the pool */
    pthread_t reaper;
    bool reaper_started;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void deadline_ts(int64_t deadline_ms, struct timespec *ts)
{
    ts->tv_sec = (time_t)(deadline_ms / 1000);
    ts->tv_nsec = (long)(deadline_ms % 1000) * 1000000;
}

static char *dup_or_null(const char *s, bool *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    if (!d)
        *oom = true;
    return d;
}

static void wipe_free(char *s)
{
    if (!s)
        return;
    /* volatile so the compiler cannot drop the wipe before free() */
    for (volatile char *v = s; *v; v++)
        *v = '\0';
    free(s);
}

static void free_connect_headers(mqc_header *h, size_t n)
{
    for (size_t i = 0; h && i < n; i++) {
        free((void *)(uintptr_t)h[i].name);
        free((void *)(uintptr_t)h[i].value);
    }
    free(h);
}

/* The pool opens connections long after mqc_pool_open() returned, so it
 * keeps its own copy of opts.connect_headers. NULL on no headers or OOM. */
static mqc_header *copy_connect_headers(const mqc_header *src, size_t n,
                                        bool *oom)
{
    if (n == 0)
        return NULL;
    mqc_header *h = calloc(n, sizeof *h);
    if (!h) {
        *oom = true;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        h[i].name = dup_or_null(src[i].name, oom);
        h[i].value = dup_or_null(src[i].value, oom);
    }
    return h;
}

static void pool_free(mqc_pool *p)
{
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    pthread_cond_destroy(&p->reaper_cv);
    free(p->uri);
    free(p->login);
    wipe_free(p->passcode);
    free(p->vhost);
    free(p->client_id);
    free_connect_headers(p->connect_headers, p->conn.nconnect_headers);
    free(p->idle);
    free(p->out);
    free(p);
}

static void close_all(mqc_conn **v, int n)
{
    for (int i = 0; i < n; i++)
        mqc_close(v[i]);
}

/* Under p->mu: move up to cap idle connections that expired (or, with
 * all, every idle one) or broke into v and give up their slots. Returns
 * how many; the caller closes them after unlocking. */
static int take_stale(mqc_pool *p, int64_t now, bool all, mqc_conn **v,
                      int cap)
{
    int n = 0, keep = 0;
    for (int i = 0; i < p->nidle; i++) {
        idle_conn ic = p->idle[i];
        if (n < cap && (all || now - ic.since >= p->idle_ms ||
                        mqc__conn_broken(ic.c)))
            v[n++] = ic.c;
        else
            p->idle[keep++] = ic;
    }
    p->nidle = keep;
    if (n) {
        p->open -= n;
        pthread_cond_broadcast(&p->cv); /* free slots */
    }
    return n;
}

static void *reaper_main(void *arg)
{
    mqc_pool *p = arg;
    mqc_conn **v = NULL;
    pthread_mutex_lock(&p->mu);
    v = malloc(sizeof *v * (size_t)p->max);
    while (!p->closing) {
        int64_t now = now_ms();
        int n = v ? take_stale(p, now, false, v, p->max) : 0;
        if (n) {
            pthread_mutex_unlock(&p->mu);
            close_all(v, n);
            pthread_mutex_lock(&p->mu);
            continue;
        }
        if (p->nidle == 0) {
            pthread_cond_wait(&p->reaper_cv, &p->mu);
            continue;
        }
        int64_t next = INT64_MAX;
        for (int i = 0; i < p->nidle; i++)
            if (p->idle[i].since + p->idle_ms < next)
                next = p->idle[i].since + p->idle_ms;
        if (next > now + REAP_POLL_MS)
            next = now + REAP_POLL_MS;
        struct timespec ts;
        deadline_ts(next, &ts);
        pthread_cond_timedwait(&p->reaper_cv, &p->mu, &ts);
    }
    pthread_mutex_unlock(&p->mu);
    free(v);
    return NULL;
}

int mqc_pool_open(const char *uri, const mqc_pool_opts *opts, mqc_pool **out)
{
    if (!out)
        return mqc__err(NULL, MQC_EINVAL, "mqc_pool_open: out is NULL");
    *out = NULL;
    if (!uri || !*uri)
        return mqc__err(NULL, MQC_EINVAL,
                        "mqc_pool_open: no URI given; pass e.g. "
                        "\"failover:(tcp://127.0.0.1:61613)\"");
    mqc_pool_opts o = {0};
    if (opts)
        o = *opts;
    if (o.max_connections < 0 || o.max_connections > MAX_POOL)
        return mqc__err(NULL, MQC_EINVAL,
                        "mqc_pool_open: max_connections %d: expected 0 "
                        "(= 1) to %d",
                        o.max_connections, MAX_POOL);
    if (o.idle_timeout_ms < 0)
        return mqc__err(NULL, MQC_EINVAL,
                        "mqc_pool_open: idle_timeout_ms %d: expected 0 "
                        "(= 30000) or more",
                        o.idle_timeout_ms);
    if (o.borrow_timeout_ms < -1)
        return mqc__err(NULL, MQC_EINVAL,
                        "mqc_pool_open: borrow_timeout_ms %d: expected -1 "
                        "(wait forever), 0 (fail at once) or more",
                        o.borrow_timeout_ms);
    int hrc = mqc__check_connect_headers(&o.conn, "mqc_pool_open");
    if (hrc)
        return hrc;
    /* A bad URI fails here, not at the first borrow. */
    mqc_config cfg;
    char err[512];
    if (mqc__uri_parse(uri, &cfg, err, sizeof err) != 0)
        return mqc__err(NULL, MQC_EINVAL,
                        "mqc_pool_open: %s (see docs/client.md for the URI "
                        "options)",
                        err);
    mqc__config_free(&cfg);

    mqc_pool *p = calloc(1, sizeof *p);
    if (!p)
        return mqc__err(NULL, MQC_ENOMEM, "mqc_pool_open: out of memory");
    p->max = o.max_connections ? o.max_connections : 1;
    p->idle_ms = o.idle_timeout_ms ? o.idle_timeout_ms : DEFAULT_IDLE_MS;
    p->borrow_timeout_ms = o.borrow_timeout_ms;
    bool oom = false;
    p->uri = dup_or_null(uri, &oom);
    p->conn = o.conn;
    p->login = dup_or_null(o.conn.login, &oom);
    p->passcode = dup_or_null(o.conn.passcode, &oom);
    p->vhost = dup_or_null(o.conn.vhost, &oom);
    p->client_id = dup_or_null(o.conn.client_id, &oom);
    p->conn.login = p->login;
    p->conn.passcode = p->passcode;
    p->conn.vhost = p->vhost;
    p->conn.client_id = p->client_id;
    p->connect_headers = copy_connect_headers(o.conn.connect_headers,
                                              o.conn.nconnect_headers, &oom);
    p->conn.connect_headers = p->connect_headers;
    p->idle = calloc((size_t)p->max, sizeof *p->idle);
    p->out = calloc((size_t)p->max, sizeof *p->out);
    if (oom || !p->idle || !p->out) {
        /* the mutex and condvars are not initialized yet */
        free(p->uri);
        free(p->login);
        wipe_free(p->passcode);
        free(p->vhost);
        free(p->client_id);
        free_connect_headers(p->connect_headers, o.conn.nconnect_headers);
        free(p->idle);
        free(p->out);
        free(p);
        return mqc__err(NULL, MQC_ENOMEM, "mqc_pool_open: out of memory");
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, &ca);
    pthread_cond_init(&p->reaper_cv, &ca);
    pthread_condattr_destroy(&ca);
    int e = pthread_create(&p->reaper, NULL, reaper_main, p);
    if (e) {
        pool_free(p);
        return mqc__err(NULL, MQC_ENOMEM,
                        "mqc_pool_open: cannot start the idle reaper "
                        "thread: %s",
                        strerror(e));
    }
    p->reaper_started = true;
    mqc__err_clear(NULL);
    *out = p;
    return 0;
}

int mqc_pool_borrow(mqc_pool *p, mqc_conn **out)
{
    if (!out)
        return mqc__err(NULL, MQC_EINVAL, "mqc_pool_borrow: out is NULL");
    *out = NULL;
    if (!p)
        return mqc__err(NULL, MQC_EINVAL, "mqc_pool_borrow: pool is NULL");
    mqc_conn *stale[32]; /* closed a batch at a time */
    pthread_mutex_lock(&p->mu);
    int64_t start = now_ms();
    int64_t deadline =
        p->borrow_timeout_ms > 0 ? start + p->borrow_timeout_ms : -1;
    for (;;) {
        if (p->closing) {
            pthread_mutex_unlock(&p->mu);
            return mqc__err(NULL, MQC_ECLOSED,
                            "mqc_pool_borrow: the pool is being closed");
        }
        /* Drop expired and broken idle connections first, so a broken
         * one is replaced rather than handed out. */
        int nstale = take_stale(p, now_ms(), false, stale, 32);
        if (nstale) {
            /* counted as waiting: mqc_pool_close must not free p while
             * this borrower is outside the lock */
            p->waiting++;
            pthread_mutex_unlock(&p->mu);
            close_all(stale, nstale);
            pthread_mutex_lock(&p->mu);
            if (--p->waiting == 0 && p->closing)
                pthread_cond_broadcast(&p->cv);
            continue; /* the pool changed meanwhile: look again */
        }
        if (p->nidle) {
            mqc_conn *c = p->idle[--p->nidle].c;
            p->out[p->nout++] = c;
            pthread_mutex_unlock(&p->mu);
            *out = c;
            return 0;
        }
        if (p->open < p->max) {
            p->open++; /* reserve the slot while opening */
            p->opening++;
            pthread_mutex_unlock(&p->mu);
            mqc_conn *c = NULL, *late = NULL;
            int rc = mqc_open(p->uri, &p->conn, &c); /* message set */
            pthread_mutex_lock(&p->mu);
            p->opening--;
            if (rc == 0 && p->closing) {
                late = c;
                c = NULL;
                rc = MQC_ECLOSED;
            } else if (rc == 0) {
                p->out[p->nout++] = c;
            }
            if (rc)
                p->open--;
            if (rc || p->closing)
                pthread_cond_broadcast(&p->cv); /* a slot, close's wait */
            pthread_mutex_unlock(&p->mu);
            if (late) {
                mqc_close(late);
                return mqc__err(NULL, MQC_ECLOSED,
                                "mqc_pool_borrow: the pool was closed "
                                "while a connection was being opened");
            }
            if (rc == 0)
                *out = c;
            return rc;
        }
        if (p->borrow_timeout_ms == 0) {
            int n = p->max;
            pthread_mutex_unlock(&p->mu);
            return mqc__err(NULL, MQC_EBUSY,
                            "mqc_pool_borrow: all %d connections of the "
                            "pool are borrowed (borrow_timeout_ms=0: no "
                            "wait); return some with mqc_pool_return() or "
                            "raise max_connections",
                            n);
        }
        if (deadline >= 0 && now_ms() >= deadline) {
            int n = p->max, waited = (int)(now_ms() - start);
            pthread_mutex_unlock(&p->mu);
            return mqc__err(NULL, MQC_EBUSY,
                            "mqc_pool_borrow: all %d connections of the "
                            "pool stayed borrowed for %d ms "
                            "(borrow_timeout_ms); return them sooner or "
                            "raise max_connections",
                            n, waited);
        }
        p->waiting++;
        if (deadline < 0) {
            pthread_cond_wait(&p->cv, &p->mu);
        } else {
            struct timespec ts;
            deadline_ts(deadline, &ts);
            pthread_cond_timedwait(&p->cv, &p->mu, &ts);
        }
        p->waiting--;
        if (p->closing && p->waiting == 0)
            pthread_cond_broadcast(&p->cv); /* mqc_pool_close waits */
    }
}

void mqc_pool_return(mqc_pool *p, mqc_conn *c)
{
    if (!p || !c)
        return;
    pthread_mutex_lock(&p->mu);
    int i;
    for (i = 0; i < p->nout; i++)
        if (p->out[i] == c)
            break;
    if (i == p->nout) {
        /* Not ours (or returned twice): touching it could close a
         * connection someone else owns. */
        pthread_mutex_unlock(&p->mu);
        mqc__err(NULL, MQC_EINVAL,
                 "mqc_pool_return: this connection is not borrowed from "
                 "this pool (returned twice?); ignored");
        return;
    }
    p->out[i] = p->out[--p->nout];
    mqc_conn *to_close = NULL;
    bool free_pool = false;
    if (p->closing || mqc__conn_broken(c)) {
        /* broken: replaced by a fresh one at the next borrow */
        to_close = c;
        p->open--;
        free_pool = p->orphaned && p->nout == 0;
    } else {
        p->idle[p->nidle].c = c;
        p->idle[p->nidle].since = now_ms();
        p->nidle++;
        pthread_cond_signal(&p->reaper_cv);
    }
    /* One connection or one slot came free: one borrower is enough (a
     * woken borrower looks at idle ones and free slots before its
     * deadline, so the wake-up is never lost). */
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    if (to_close)
        mqc_close(to_close);
    if (free_pool)
        pool_free(p);
}

void mqc_pool_counts(mqc_pool *p, int *open, int *borrowed)
{
    int o = 0, b = 0;
    if (p) {
        pthread_mutex_lock(&p->mu);
        o = p->open;
        b = p->nout;
        pthread_mutex_unlock(&p->mu);
    }
    if (open)
        *open = o;
    if (borrowed)
        *borrowed = b;
}

/* Borrowed-but-not-returned connections at close: they are NOT closed
 * under their borrower (another thread may be using them). The pool is
 * marked closed and stays allocated; each such connection is closed when
 * it is returned, and the last return frees the pool. Until then borrow
 * fails with MQC_ECLOSED. A connection never returned leaks, with the
 * pool. */
void mqc_pool_close(mqc_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    if (p->closing) {
        pthread_mutex_unlock(&p->mu);
        return;
    }
    p->closing = true;
    pthread_cond_broadcast(&p->cv);
    pthread_cond_signal(&p->reaper_cv);
    pthread_mutex_unlock(&p->mu);
    if (p->reaper_started)
        pthread_join(p->reaper, NULL);

    pthread_mutex_lock(&p->mu);
    /* Borrowers still in mqc_pool_borrow() hold p: let them leave. Both
     * waits are short: waiters wake at once, mqc_open() does not block on
     * the network. */
    while (p->waiting > 0 || p->opening > 0)
        pthread_cond_wait(&p->cv, &p->mu);
    mqc_conn **v = malloc(sizeof *v * (size_t)(p->nidle ? p->nidle : 1));
    int n = 0;
    if (v) {
        n = take_stale(p, 0, true, v, p->nidle);
    } else {
        /* out of memory: close them one at a time */
        while (p->nidle) {
            mqc_conn *c = p->idle[--p->nidle].c;
            p->open--;
            pthread_mutex_unlock(&p->mu);
            mqc_close(c);
            pthread_mutex_lock(&p->mu);
        }
    }
    bool free_now = p->nout == 0;
    if (!free_now)
        p->orphaned = true;
    pthread_mutex_unlock(&p->mu);
    close_all(v, n);
    free(v);
    if (free_now)
        pool_free(p);
}
