/*
 * mqstore-bench - what group commit buys, and what recovery costs.
 *
 * Throughput test (per commit mode, default group then each, each against
 * its own fresh queue names):
 *   enqueue phase: P producer threads store messages (mqs_enqueue, or
 *                  mqs_enqueue_async with a bounded in-flight window);
 *   ack phase:     C consumer threads read them back with a recovery cursor
 *                  and ack each one (mqs_ack / mqs_ack_async).
 * Per phase: msg/s and per-operation latency p50/p99/max.
 *
 * Recovery test: build a backlog of N (and N/10) messages, close, reopen and
 * time a full cursor scan, sampling RSS to show memory does not grow with N.
 *
 * Synchronous test (--sync): 1, 4 and 16 producers that each wait for their
 * own commit, repeated, beside the raw database (bench/raw's mqs-raw-insert,
 * run as a child on the same URI) doing one INSERT per transaction with as
 * many connections: msg/s median and spread, p50/p99, store/raw.
 *
 * Latencies go into arrays allocated before the clock starts and are sorted
 * after it stops, so measuring costs no allocation or locking per operation.
 */
#include <mqstore/mqstore.h>

#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef MQS_BENCH_VERSION
#define MQS_BENCH_VERSION "unknown"
#endif


/* Defaults (also printed by --help). */
#define DEF_PRODUCERS 8
#define DEF_CONSUMERS 1
#define DEF_QUEUES 1
#define DEF_MESSAGES 20000
#define DEF_SIZE 1024
#define DEF_WINDOW 256
#define DEF_MODES "group,each"
#define DEF_STALL 60.0
#define DURATION_CAP_MESSAGES 2000000 /* --duration without --messages */
#define QUICK_MESSAGES 5000
#define QUICK_DURATION 10.0
#define QUICK_RECOVERY 50000
#define MAX_DURATION 3600.0
#define PROGRESS_EVERY_NS (2 * 1000000000LL)

#define MAX_MODES 4
#define MAX_THREADS 256

typedef struct config {
    const char *uri;
    int producers, consumers, queues;
    long messages; /* total per mode; a cap when duration > 0 */
    double duration;
    size_t size;
    bool async;
    int window;
    const char *modes[MAX_MODES];
    int nmodes;
    char modes_buf[64];
    long recovery;
    bool throughput; /* run the throughput test */
    const char *json_path, *plot_path;
    bool quick, keep;
    size_t page_rows;
    double stall; /* abort after this long without progress; 0 = never */
    /* user-set flags, so --quick only fills in what was not given */
    bool set_messages, set_duration, set_recovery, set_modes;
} config;

typedef struct phase_result {
    char mode[16];
    const char *phase; /* "enqueue" or "ack" */
    uint64_t ops, errors, bad; /* bad: messages whose body did not match */
    double seconds, rate;
    double p50_ms, p99_ms, max_ms, mean_ms;
    uint64_t transactions; /* mqs_stats delta over the phase */
    uint64_t left;         /* ack phase: still pending when it ended */
    bool capped;           /* stopped by --duration */
    char first_error[256];
} phase_result;

typedef struct recovery_result {
    long backlog;
    double build_s, build_rate;
    double open_ms, scan_s, scan_rate;
    long scanned, bad;
    long rss_before_kb, rss_after_kb, rss_max_kb, hwm_kb;
    bool hwm_reset;
    double purge_s;
} recovery_result;

static config cfg;
static char prefix[64]; /* unique per run: destinations never collide */
static phase_result results[MAX_MODES * 2];
static int nresults;
static recovery_result recs[2];
static int nrecs;
static char uri_shown[1024];

/* ------------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------- */

static void die_oom(void)
{
    fprintf(stderr, "mqstore-bench: out of memory\n");
    exit(EXIT_FAIL);
}

/* VmRSS / VmHWM of this process in kB, -1 if unavailable. */
static long proc_status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t kl = strlen(key);
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, kl) == 0 && line[kl] == ':') {
            v = strtol(line + kl + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return v;
}

/* Resets VmHWM to the current RSS (Linux >= 4.0), so the peak read after
 * the scan is the scan's, not the backlog build's. */
static bool reset_hwm(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f)
        return false;
    bool ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok;
}

static const char *errmsg_or(const mqs_store *s, int rc)
{
    const char *m = mqs_errmsg(s);
    return m && *m ? m : mqs_strerror(rc);
}

static void copy_err(char *dst, size_t n, const char *msg)
{
    if (dst[0] == '\0')
        snprintf(dst, n, "%s", msg);
}

/* Does the URI already set `key` in its query string? */
static bool uri_has_option(const char *uri, const char *key, char *val,
                           size_t vlen)
{
    const char *q = strchr(uri, '?');
    size_t kl = strlen(key);
    while (q) {
        q++;
        if (strncmp(q, key, kl) == 0 && q[kl] == '=') {
            if (val) {
                size_t n = strcspn(q + kl + 1, "&");
                if (n >= vlen)
                    n = vlen - 1;
                memcpy(val, q + kl + 1, n);
                val[n] = '\0';
            }
            return true;
        }
        q = strchr(q, '&');
    }
    return false;
}

/* uri + commit=mode, joined with '?' or '&' as the URI needs. Caller frees. */
static char *uri_with_commit(const char *uri, const char *mode)
{
    if (uri_has_option(uri, "commit", NULL, 0))
        return strdup(uri); /* the URI's own choice (see parse_modes) */
    size_t n = strlen(uri) + strlen(mode) + 16;
    char *u = malloc(n);
    if (!u)
        die_oom();
    const char *q = strchr(uri, '?');
    const char *sep = !q ? "?" : (q[1] == '\0' || uri[strlen(uri) - 1] == '&') ? "" : "&";
    snprintf(u, n, "%s%scommit=%s", uri, sep, mode);
    return u;
}

/* Sorts the latencies of every thread together and fills r's columns. */
static void summarize(phase_result *r, uint64_t **lat, const uint64_t *n,
                      int nthreads)
{
    bench_lat l;
    bench_lat_summary(lat, n, nthreads, &l);
    r->p50_ms = l.p50_ms;
    r->p99_ms = l.p99_ms;
    r->max_ms = l.max_ms;
    r->mean_ms = l.mean_ms;
}

/* ------------------------------------------------------------------------
 * Progress on stderr, from the main thread while workers run.
 * ---------------------------------------------------------------------- */

static atomic_uint_fast64_t progress_count; /* ops done in this phase */
static atomic_int threads_running;

/* target 0: no known total; deadline_s > 0: the phase is bounded by time,
 * so progress is shown against the clock. */
static void wait_with_progress(const char *what, uint64_t target,
                               double deadline_s, int64_t start)
{
    int64_t last = start, next = start + PROGRESS_EVERY_NS;
    int64_t moved = start; /* last time the count changed */
    uint64_t last_n = 0, seen = 0;
    while (atomic_load(&threads_running) > 0) {
        sleep_ms(50);
        int64_t now = mono_ns();
        uint64_t n = atomic_load_explicit(&progress_count, memory_order_relaxed);
        if (n != seen) {
            seen = n;
            moved = now;
        } else if (cfg.stall > 0 && now - moved > (int64_t)(cfg.stall * 1e9)) {
            /* Workers are blocked inside the store: joining them would hang
             * the run forever, so report and leave without unwinding. */
            fprintf(stderr,
                    "mqstore-bench: %s no progress for %.0f s (%" PRIu64
                    " done): the store looks stuck; aborting\n",
                    what, cfg.stall, n);
            fflush(stdout);
            _exit(EXIT_FAIL);
        }
        if (now < next)
            continue;
        double rate = (double)(n - last_n) / ((double)(now - last) / 1e9);
        if (deadline_s > 0)
            fprintf(stderr, "%s %" PRIu64 " (%.0f/%.0f s), %.0f msg/s\n", what, n,
                    (double)(now - start) / 1e9, deadline_s, rate);
        else if (target)
            fprintf(stderr, "%s %" PRIu64 "/%" PRIu64 " (%.0f%%), %.0f msg/s\n",
                    what, n, target, 100.0 * (double)n / (double)target, rate);
        else
            fprintf(stderr, "%s %" PRIu64 ", %.0f msg/s\n", what, n, rate);
        last = now;
        last_n = n;
        next = now + PROGRESS_EVERY_NS;
    }
}

/* ------------------------------------------------------------------------
 * Async window: at most `window` operations of one thread in flight.
 * Completions arrive in submission order per store, hence per thread, so
 * the k-th completion belongs to the k-th submission: the latency slot
 * holds the submit time until its completion turns it into a duration.
 * ---------------------------------------------------------------------- */

typedef struct window {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t submitted, completed, errors;
    uint64_t *lat; /* lat[k]: submit time, then latency, of submission k */
    char first_error[256];
} window;

static void window_init(window *w, uint64_t *lat)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    w->lat = lat;
}

static void window_destroy(window *w)
{
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
}

static void window_done(void *ud, int rc, int64_t id, const char *errmsg)
{
    window *w = ud;
    int64_t now = mono_ns();
    (void)id;
    pthread_mutex_lock(&w->mu);
    uint64_t k = w->completed++;
    w->lat[k] = (uint64_t)now - w->lat[k];
    if (rc != 0) {
        w->lat[k] = UINT64_MAX; /* dropped by window_finish */
        w->errors++;
        copy_err(w->first_error, sizeof w->first_error,
                 errmsg && *errmsg ? errmsg : mqs_strerror(rc));
    }
    atomic_fetch_add_explicit(&progress_count, 1, memory_order_relaxed);
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Blocks until fewer than `limit` operations are in flight. */
static void window_wait(window *w, uint64_t limit)
{
    pthread_mutex_lock(&w->mu);
    while (w->submitted - w->completed >= limit && w->submitted > w->completed)
        pthread_cond_wait(&w->cv, &w->mu);
    pthread_mutex_unlock(&w->mu);
}

static void window_submitted(window *w)
{
    pthread_mutex_lock(&w->mu);
    w->submitted++;
    pthread_mutex_unlock(&w->mu);
}

/* Waits for every completion, then keeps the latencies of the successful
 * operations only; returns how many there are. */
static uint64_t window_finish(window *w, uint64_t *errors, char *first_error,
                              size_t errlen)
{
    window_wait(w, 1);
    uint64_t good = 0;
    for (uint64_t k = 0; k < w->completed; k++)
        if (w->lat[k] != UINT64_MAX)
            w->lat[good++] = w->lat[k];
    *errors += w->errors;
    copy_err(first_error, errlen, w->first_error);
    window_destroy(w);
    return good;
}

/* ------------------------------------------------------------------------
 * Throughput test
 * ---------------------------------------------------------------------- */

typedef struct worker {
    mqs_store *s;
    char **qnames;
    int idx;
    uint64_t quota; /* producer: messages to send; consumer: lat capacity */
    int64_t deadline; /* 0 = none */
    pthread_barrier_t *go;
    uint64_t *lat;
    uint64_t n; /* latencies recorded (successful ops) */
    uint64_t errors, bad;
    int64_t end_ns;
    bool capped;
    char first_error[256];
} worker;

static void *producer_main(void *arg)
{
    worker *w = arg;
    unsigned char *body = xcalloc(cfg.size, 1);
    fill_body(body, cfg.size, (uint64_t)w->idx * 1000003u);
    mqs_msg m = {.kind = MQS_QUEUE,
                 .body = body,
                 .body_len = cfg.size,
                 .priority = MQS_PRIORITY_DEFAULT};
    window win;
    if (cfg.async)
        window_init(&win, w->lat);

    pthread_barrier_wait(w->go);
    for (uint64_t i = 0; i < w->quota; i++) {
        int64_t t0 = mono_ns();
        if (w->deadline && t0 >= w->deadline) {
            w->capped = true;
            break;
        }
        /* Global sequence number round-robins the queues. */
        uint64_t seq = i * (uint64_t)cfg.producers + (uint64_t)w->idx;
        m.dest = w->qnames[seq % (uint64_t)cfg.queues];
        int rc;
        if (cfg.async) {
            window_wait(&win, (uint64_t)cfg.window);
            win.lat[win.submitted] = (uint64_t)mono_ns();
            rc = mqs_enqueue_async(w->s, &m, window_done, &win);
            if (rc == 0)
                window_submitted(&win);
        } else {
            int64_t id = 0;
            rc = mqs_enqueue(w->s, &m, &id);
            if (rc == 0) {
                w->lat[w->n++] = (uint64_t)(mono_ns() - t0);
                atomic_fetch_add_explicit(&progress_count, 1,
                                          memory_order_relaxed);
            }
        }
        if (rc != 0) {
            w->errors++;
            copy_err(w->first_error, sizeof w->first_error,
                     errmsg_or(w->s, rc));
        }
    }
    if (cfg.async)
        w->n = window_finish(&win, &w->errors, w->first_error,
                             sizeof w->first_error);
    w->end_ns = mono_ns();
    free(body);
    atomic_fetch_sub(&threads_running, 1);
    return NULL;
}

static bool grow_lat(worker *w)
{
    uint64_t cap = w->quota ? w->quota * 2 : 1024;
    uint64_t *p = realloc(w->lat, cap * sizeof *p);
    if (!p)
        return false;
    w->lat = p;
    w->quota = cap;
    return true;
}

/* Reads the queues with recovery cursors and acks. With at least as many
 * queues as consumers each consumer owns whole queues; otherwise every
 * consumer reads every queue and acks the ids that hash to it, so the
 * split is even and no id is acked twice. */
static void *consumer_main(void *arg)
{
    worker *w = arg;
    bool by_queue = cfg.queues >= cfg.consumers;
    window win;
    if (cfg.async)
        window_init(&win, w->lat);

    pthread_barrier_wait(w->go);
    for (int q = 0; q < cfg.queues && !w->capped; q++) {
        if (by_queue && q % cfg.consumers != w->idx)
            continue;
        mqs_cursor_opts co = {.kind = MQS_QUEUE,
                              .dest = w->qnames[q],
                              .page_rows = cfg.page_rows};
        mqs_cursor *c = NULL;
        int rc = mqs_cursor_open(w->s, &co, &c);
        if (rc != 0) {
            w->errors++;
            copy_err(w->first_error, sizeof w->first_error,
                     errmsg_or(w->s, rc));
            continue;
        }
        const mqs_message *m;
        while ((rc = mqs_cursor_next(c, &m)) == 1) {
            if (!by_queue &&
                splitmix64((uint64_t)m->id) % (uint64_t)cfg.consumers !=
                    (uint64_t)w->idx)
                continue;
            int64_t t0 = mono_ns();
            if (w->deadline && t0 >= w->deadline) {
                w->capped = true;
                break;
            }
            if (m->body_len != cfg.size)
                w->bad++;
            if (cfg.async) {
                window_wait(&win, (uint64_t)cfg.window);
                /* grow only with nothing in flight: callbacks index lat */
                if (win.submitted >= w->quota) {
                    window_wait(&win, 1);
                    if (!grow_lat(w))
                        die_oom();
                    pthread_mutex_lock(&win.mu);
                    win.lat = w->lat;
                    pthread_mutex_unlock(&win.mu);
                }
                win.lat[win.submitted] = (uint64_t)mono_ns();
                rc = mqs_ack_async(w->s, m->id, 0, window_done, &win);
                if (rc == 0)
                    window_submitted(&win);
            } else {
                rc = mqs_ack(w->s, m->id, 0);
                if (rc == 0) {
                    if (w->n == w->quota && !grow_lat(w))
                        die_oom();
                    w->lat[w->n++] = (uint64_t)(mono_ns() - t0);
                    atomic_fetch_add_explicit(&progress_count, 1,
                                              memory_order_relaxed);
                }
            }
            if (rc != 0) {
                w->errors++;
                copy_err(w->first_error, sizeof w->first_error,
                         errmsg_or(w->s, rc));
            }
        }
        if (rc < 0) {
            w->errors++;
            copy_err(w->first_error, sizeof w->first_error,
                     errmsg_or(w->s, rc));
        }
        mqs_cursor_close(c);
    }
    if (cfg.async)
        w->n = window_finish(&win, &w->errors, w->first_error,
                             sizeof w->first_error);
    w->end_ns = mono_ns();
    atomic_fetch_sub(&threads_running, 1);
    return NULL;
}

typedef struct pending_sum {
    const char *pfx;
    uint64_t pending;
} pending_sum;

static int sum_pending(void *ud, const mqs_dest_info *d)
{
    pending_sum *p = ud;
    if (d->kind == MQS_QUEUE && d->dest &&
        strncmp(d->dest, p->pfx, strlen(p->pfx)) == 0)
        p->pending += d->pending;
    return 0;
}

static uint64_t store_transactions(mqs_store *s)
{
    mqs_stats st;
    return mqs_stats_get(s, &st) == 0 ? st.transactions : 0;
}

/* Runs one phase with `nthreads` workers; fills r. */
static void run_phase(mqs_store *s, char **qnames, const char *mode,
                      const char *phase, int nthreads, uint64_t per_thread,
                      uint64_t total, phase_result *r)
{
    bool produce = strcmp(phase, "enqueue") == 0;
    worker *w = xcalloc((size_t)nthreads, sizeof *w);
    pthread_t *tid = xcalloc((size_t)nthreads, sizeof *tid);
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)nthreads + 1);

    memset(r, 0, sizeof *r);
    snprintf(r->mode, sizeof r->mode, "%s", mode);
    r->phase = phase;
    atomic_store(&progress_count, 0);
    atomic_store(&threads_running, nthreads);

    for (int i = 0; i < nthreads; i++) {
        w[i].s = s;
        w[i].qnames = qnames;
        w[i].idx = i;
        w[i].go = &go;
        /* Producers: their share (remainder to the first ones). Consumers:
         * expected share plus slack; they grow if the hash is uneven. */
        w[i].quota = produce ? per_thread + ((uint64_t)i < total % (uint64_t)nthreads)
                             : total / (uint64_t)nthreads + total / 8 + 1024;
        w[i].lat = xcalloc(w[i].quota, sizeof *w[i].lat);
        if (pthread_create(&tid[i], NULL, produce ? producer_main : consumer_main,
                           &w[i]) != 0) {
            fprintf(stderr, "mqstore-bench: cannot create thread %d\n", i);
            exit(EXIT_FAIL);
        }
    }
    uint64_t tx0 = store_transactions(s);
    int64_t start = mono_ns();
    int64_t deadline = cfg.duration > 0 ? start + (int64_t)(cfg.duration * 1e9) : 0;
    for (int i = 0; i < nthreads; i++)
        w[i].deadline = deadline; /* written before the barrier releases */
    pthread_barrier_wait(&go);

    char what[64];
    snprintf(what, sizeof what, "%s %s:", mode, phase);
    wait_with_progress(what, total, cfg.duration, start);

    int64_t end = start;
    uint64_t *counts = xcalloc((size_t)nthreads, sizeof *counts);
    uint64_t **lats = xcalloc((size_t)nthreads, sizeof *lats);
    for (int i = 0; i < nthreads; i++) {
        pthread_join(tid[i], NULL);
        end = w[i].end_ns > end ? w[i].end_ns : end;
        r->errors += w[i].errors;
        r->bad += w[i].bad;
        r->capped |= w[i].capped;
        copy_err(r->first_error, sizeof r->first_error, w[i].first_error);
        counts[i] = w[i].n;
        lats[i] = w[i].lat;
    }
    r->seconds = (double)(end - start) / 1e9;
    for (int i = 0; i < nthreads; i++)
        r->ops += counts[i];
    r->rate = r->seconds > 0 ? (double)r->ops / r->seconds : 0;
    r->transactions = store_transactions(s) - tx0;
    summarize(r, lats, counts, nthreads);

    for (int i = 0; i < nthreads; i++)
        free(w[i].lat);
    free(counts);
    free(lats);
    free(w);
    free(tid);
    pthread_barrier_destroy(&go);
}

/* One commit mode: fresh queues, enqueue phase, ack phase, cleanup. */
static int run_mode(const char *mode)
{
    char *uri = uri_with_commit(cfg.uri, mode);
    mqs_store *s = NULL;
    int rc = mqs_open(uri, NULL, &s);
    free(uri);
    if (rc != 0) {
        fprintf(stderr, "mqstore-bench: open (%s): %s\n", mode,
                errmsg_or(NULL, rc));
        return EXIT_FAIL;
    }

    char pfx[96];
    snprintf(pfx, sizeof pfx, "%s-%s-", prefix, mode);
    char **qnames = xcalloc((size_t)cfg.queues, sizeof *qnames);
    for (int q = 0; q < cfg.queues; q++) {
        qnames[q] = xcalloc(128, 1);
        snprintf(qnames[q], 128, "%sq%d", pfx, q);
    }

    uint64_t total = (uint64_t)cfg.messages;
    phase_result *enq = &results[nresults++];
    run_phase(s, qnames, mode, "enqueue", cfg.producers,
              total / (uint64_t)cfg.producers, total, enq);

    phase_result *ack = &results[nresults++];
    run_phase(s, qnames, mode, "ack", cfg.consumers, 0, enq->ops, ack);

    pending_sum ps = {pfx, 0};
    rc = mqs_dest_foreach(s, sum_pending, &ps);
    if (rc != 0)
        fprintf(stderr, "mqstore-bench: %s: counting pending: %s\n", mode,
                errmsg_or(s, rc));
    ack->left = ps.pending;
    if (ps.pending && !cfg.keep) {
        /* --duration stopped the consumers: leave no backlog behind */
        for (int q = 0; q < cfg.queues; q++)
            if ((rc = mqs_purge(s, MQS_QUEUE, qnames[q], NULL)) != 0)
                fprintf(stderr, "mqstore-bench: purge %s: %s\n", qnames[q],
                        errmsg_or(s, rc));
    }
    for (int q = 0; q < cfg.queues; q++)
        free(qnames[q]);
    free(qnames);
    mqs_close(s);

    int ret = EXIT_OK;
    for (phase_result *r = enq; r <= ack; r++) {
        if (r->errors)
            fprintf(stderr, "mqstore-bench: %s %s: %" PRIu64 " errors, first: %s\n",
                    r->mode, r->phase, r->errors, r->first_error);
        if (r->bad)
            fprintf(stderr, "mqstore-bench: %s %s: %" PRIu64
                    " messages came back with the wrong size\n",
                    r->mode, r->phase, r->bad);
        if (r->errors || r->bad)
            ret = EXIT_FAIL;
    }
    if (!ack->capped && ack->left) {
        fprintf(stderr, "mqstore-bench: %s: %" PRIu64
                " messages still pending after a full drain\n", mode, ack->left);
        ret = EXIT_FAIL;
    }
    return ret;
}

/* ------------------------------------------------------------------------
 * Recovery test
 * ---------------------------------------------------------------------- */

typedef struct builder {
    mqs_store *s;
    const char *queue;
    long count;
    int idx;
    int errors;
    char first_error[256];
} builder;

static void *builder_main(void *arg)
{
    builder *b = arg;
    /* Big batches: one request, one transaction each, merged further by the
     * writer when several builders commit at once. */
    size_t batch = (4u << 20) / (cfg.size ? cfg.size : 1);
    batch = batch < 16 ? 16 : batch > 512 ? 512 : batch;
    unsigned char *body = xcalloc(cfg.size, 1);
    mqs_msg *msgs = xcalloc(batch, sizeof *msgs);
    fill_body(body, cfg.size, (uint64_t)b->idx + 77);
    for (size_t i = 0; i < batch; i++)
        msgs[i] = (mqs_msg){.kind = MQS_QUEUE,
                            .dest = b->queue,
                            .body = body,
                            .body_len = cfg.size,
                            .priority = MQS_PRIORITY_DEFAULT};
    for (long done = 0; done < b->count;) {
        size_t n = (size_t)(b->count - done) < batch ? (size_t)(b->count - done)
                                                     : batch;
        int rc = mqs_enqueue_many(b->s, msgs, n, NULL);
        if (rc != 0) {
            b->errors++;
            copy_err(b->first_error, sizeof b->first_error, errmsg_or(b->s, rc));
            break; /* a failing backlog build is not worth hammering */
        }
        done += (long)n;
        atomic_fetch_add_explicit(&progress_count, n, memory_order_relaxed);
    }
    free(msgs);
    free(body);
    atomic_fetch_sub(&threads_running, 1);
    return NULL;
}

static int run_recovery(long backlog, recovery_result *r)
{
    const char *mode = "group";
    bool have_group = false;
    for (int i = 0; i < cfg.nmodes; i++)
        have_group |= strcmp(cfg.modes[i], "group") == 0;
    if (!have_group)
        mode = cfg.modes[0];
    char *uri = uri_with_commit(cfg.uri, mode);
    char queue[128];
    snprintf(queue, sizeof queue, "%s-recovery-%ld", prefix, backlog);
    memset(r, 0, sizeof *r);
    r->backlog = backlog;

    /* 1. build the backlog */
    mqs_store *s = NULL;
    int rc = mqs_open(uri, NULL, &s);
    if (rc != 0) {
        fprintf(stderr, "mqstore-bench: recovery: open: %s\n", errmsg_or(NULL, rc));
        free(uri);
        return EXIT_FAIL;
    }
    int nb = cfg.producers < 4 ? cfg.producers : 4;
    builder *b = xcalloc((size_t)nb, sizeof *b);
    pthread_t *tid = xcalloc((size_t)nb, sizeof *tid);
    atomic_store(&progress_count, 0);
    atomic_store(&threads_running, nb);
    int64_t t0 = mono_ns();
    for (int i = 0; i < nb; i++) {
        b[i] = (builder){.s = s, .queue = queue, .idx = i,
                         .count = backlog / nb + (i < backlog % nb)};
        if (pthread_create(&tid[i], NULL, builder_main, &b[i]) != 0) {
            fprintf(stderr, "mqstore-bench: cannot create thread\n");
            exit(EXIT_FAIL);
        }
    }
    wait_with_progress("backlog", (uint64_t)backlog, 0, t0);
    int errors = 0;
    for (int i = 0; i < nb; i++) {
        pthread_join(tid[i], NULL);
        if (b[i].errors && !errors)
            fprintf(stderr, "mqstore-bench: backlog: %s\n", b[i].first_error);
        errors += b[i].errors;
    }
    r->build_s = (double)(mono_ns() - t0) / 1e9;
    r->build_rate = (double)backlog / r->build_s;
    free(b);
    free(tid);
    mqs_close(s); /* recovery starts from a cold open, as after a restart */
    s = NULL;
    if (errors) {
        free(uri);
        return EXIT_FAIL;
    }

    /* 2. reopen and scan, watching memory */
    r->hwm_reset = reset_hwm();
    r->rss_before_kb = proc_status_kb("VmRSS");
    r->rss_max_kb = r->rss_before_kb;
    t0 = mono_ns();
    rc = mqs_open(uri, NULL, &s);
    free(uri);
    if (rc != 0) {
        fprintf(stderr, "mqstore-bench: recovery: reopen: %s\n", errmsg_or(NULL, rc));
        return EXIT_FAIL;
    }
    int64_t t1 = mono_ns();
    r->open_ms = (double)(t1 - t0) / 1e6;

    mqs_cursor_opts co = {.kind = MQS_QUEUE, .dest = queue, .page_rows = cfg.page_rows};
    mqs_cursor *c = NULL;
    int ret = EXIT_OK;
    if ((rc = mqs_cursor_open(s, &co, &c)) != 0) {
        fprintf(stderr, "mqstore-bench: recovery: cursor: %s\n", errmsg_or(s, rc));
        mqs_close(s);
        return EXIT_FAIL;
    }
    const mqs_message *m;
    int64_t next_progress = t1 + PROGRESS_EVERY_NS;
    unsigned sum = 0;
    while ((rc = mqs_cursor_next(c, &m)) == 1) {
        r->scanned++;
        if (m->body_len != cfg.size)
            r->bad++;
        else if (cfg.size)
            sum += ((const unsigned char *)m->body)[cfg.size - 1]; /* touch it */
        if ((r->scanned & 4095) == 0) {
            long rss = proc_status_kb("VmRSS");
            if (rss > r->rss_max_kb)
                r->rss_max_kb = rss;
            int64_t now = mono_ns();
            if (now >= next_progress) {
                fprintf(stderr, "scan %ld/%ld (%.0f%%), %.0f msg/s\n", r->scanned,
                        backlog, 100.0 * (double)r->scanned / (double)backlog,
                        (double)r->scanned / ((double)(now - t1) / 1e9));
                next_progress = now + PROGRESS_EVERY_NS;
            }
        }
    }
    int64_t t2 = mono_ns();
    (void)sum;
    if (rc < 0) {
        fprintf(stderr, "mqstore-bench: recovery: scan: %s\n", errmsg_or(s, rc));
        ret = EXIT_FAIL;
    }
    r->scan_s = (double)(t2 - t1) / 1e9;
    r->scan_rate = r->scan_s > 0 ? (double)r->scanned / r->scan_s : 0;
    long rss = proc_status_kb("VmRSS");
    r->rss_max_kb = rss > r->rss_max_kb ? rss : r->rss_max_kb;
    r->hwm_kb = proc_status_kb("VmHWM");
    mqs_cursor_close(c);
    r->rss_after_kb = proc_status_kb("VmRSS");
    if (r->scanned != backlog || r->bad) {
        fprintf(stderr, "mqstore-bench: recovery: scanned %ld of %ld messages (%ld bad)\n",
                r->scanned, backlog, r->bad);
        ret = EXIT_FAIL;
    }

    /* 3. clean up */
    if (!cfg.keep) {
        int64_t p0 = mono_ns();
        if ((rc = mqs_purge(s, MQS_QUEUE, queue, NULL)) != 0)
            fprintf(stderr, "mqstore-bench: recovery: purge: %s\n", errmsg_or(s, rc));
        r->purge_s = (double)(mono_ns() - p0) / 1e9;
    }
    mqs_close(s);
    return ret;
}

/* ------------------------------------------------------------------------
 * Reports
 * ---------------------------------------------------------------------- */

static const phase_result *find_result(const char *mode, const char *phase)
{
    for (int i = 0; i < nresults; i++)
        if (strcmp(results[i].mode, mode) == 0 &&
            strcmp(results[i].phase, phase) == 0)
            return &results[i];
    return NULL;
}

static double ratio(const char *phase)
{
    const phase_result *g = find_result("group", phase),
                       *e = find_result("each", phase);
    if (!g || !e || e->rate <= 0)
        return 0.0 / 0.0; /* NaN: not measured */
    return g->rate / e->rate;
}

static void print_header(FILE *f)
{
    fprintf(f, "mqstore-bench %s  %s\n", MQS_BENCH_VERSION, uri_shown);
    if (cfg.throughput) {
        fprintf(f, "producers %d, consumers %d, queues %d, %zu B messages, %s",
                cfg.producers, cfg.consumers, cfg.queues, cfg.size,
                cfg.async ? "async" : "sync");
        if (cfg.async)
            fprintf(f, " (window %d)", cfg.window);
        fprintf(f, ", %ld messages per mode", cfg.messages);
        if (cfg.duration > 0)
            fprintf(f, " or %.0f s per phase", cfg.duration);
        fprintf(f, "\n");
    }
    if (cfg.recovery > 0)
        fprintf(f, "recovery: backlogs of %ld and %ld messages of %zu B\n",
                cfg.recovery / 10, cfg.recovery, cfg.size);
}

static void print_tables(void)
{
    if (nresults) {
        printf("\n%-6s %-8s %9s %7s %8s %10s %8s %8s %8s %8s %6s\n", "mode",
               "phase", "messages", "errors", "seconds", "msg/s", "p50 ms",
               "p99 ms", "max ms", "msg/txn", "left");
        for (int i = 0; i < nresults; i++) {
            const phase_result *r = &results[i];
            char per_tx[16] = "-";
            if (r->transactions)
                snprintf(per_tx, sizeof per_tx, "%.1f",
                         (double)r->ops / (double)r->transactions);
            printf("%-6s %-8s %9" PRIu64 " %7" PRIu64 " %8.2f %10.0f %8.2f %8.2f "
                   "%8.2f %8s %6" PRIu64 "%s\n",
                   r->mode, r->phase, r->ops, r->errors, r->seconds, r->rate,
                   r->p50_ms, r->p99_ms, r->max_ms, per_tx, r->left,
                   r->capped ? "  (stopped by --duration)" : "");
        }
        double re = ratio("enqueue"), ra = ratio("ack");
        if (re == re)
            printf("\ngroup/each msg/s: enqueue %.2fx, ack %.2fx\n", re, ra);
    }
    if (nrecs) {
        printf("\n%-9s %8s %10s %8s %8s %10s %11s %10s %11s %10s %10s\n",
               "backlog", "build s", "build m/s", "open ms", "scan s",
               "scan m/s", "RSS before", "RSS after", "RSS max", "scan delta",
               "VmHWM");
        for (int i = 0; i < nrecs; i++) {
            const recovery_result *r = &recs[i];
            printf("%-9ld %8.2f %10.0f %8.1f %8.2f %10.0f %8ld kB %7ld kB %8ld kB "
                   "%7ld kB %7ld kB\n",
                   r->backlog, r->build_s, r->build_rate, r->open_ms, r->scan_s,
                   r->scan_rate, r->rss_before_kb, r->rss_after_kb, r->rss_max_kb,
                   r->rss_max_kb - r->rss_before_kb, r->hwm_kb);
        }
        if (!recs[0].hwm_reset)
            printf("(VmHWM could not be reset: it is the process peak, "
                   "including the backlog build)\n");
        else
            printf("(VmHWM reset before each reopen: it is the peak of "
                   "reopen + scan)\n");
        if (nrecs == 2)
            printf("backlog x%.0f: scan time x%.1f, scan RSS delta %+ld kB -> "
                   "%+ld kB\n",
                   (double)recs[1].backlog / (double)recs[0].backlog,
                   recs[1].scan_s / (recs[0].scan_s > 0 ? recs[0].scan_s : 1),
                   recs[0].rss_max_kb - recs[0].rss_before_kb,
                   recs[1].rss_max_kb - recs[1].rss_before_kb);
    }
    printf("process peak RSS (VmHWM): %ld kB\n", proc_status_kb("VmHWM"));
}

static int write_json(const char *path)
{
    FILE *f = bench_json_open(path);
    if (!f)
        return EXIT_FAIL;
    struct utsname u;
    bool have_uname = uname(&u) == 0;
    fprintf(f, "{\n  \"tool\": \"mqstore-bench\",\n  \"version\": \"%s\",\n",
            MQS_BENCH_VERSION);
    fprintf(f, "  \"uri\": ");
    json_str(f, uri_shown);
    fprintf(f, ",\n  \"unix_time\": %lld,\n", (long long)time(NULL));
    fprintf(f, "  \"host\": {\"cpus\": %ld, \"kernel\": ", sysconf(_SC_NPROCESSORS_ONLN));
    json_str(f, have_uname ? u.release : NULL);
    fprintf(f, ", \"machine\": ");
    json_str(f, have_uname ? u.machine : NULL);
    fprintf(f, "},\n  \"config\": {\"producers\": %d, \"consumers\": %d, "
               "\"queues\": %d, \"messages\": %ld, \"duration_s\": ",
            cfg.producers, cfg.consumers, cfg.queues, cfg.messages);
    json_num(f, cfg.duration);
    fprintf(f, ", \"size\": %zu, \"async\": %s, \"window\": %d, \"modes\": [",
            cfg.size, cfg.async ? "true" : "false", cfg.window);
    for (int i = 0; i < cfg.nmodes; i++) {
        fprintf(f, "%s", i ? ", " : "");
        json_str(f, cfg.modes[i]);
    }
    fprintf(f, "], \"recovery\": %ld, \"page_rows\": %zu, \"quick\": %s},\n",
            cfg.recovery, cfg.page_rows, cfg.quick ? "true" : "false");

    fprintf(f, "  \"throughput\": [");
    for (int i = 0; i < nresults; i++) {
        const phase_result *r = &results[i];
        fprintf(f, "%s\n    {\"mode\": ", i ? "," : "");
        json_str(f, r->mode);
        fprintf(f, ", \"phase\": ");
        json_str(f, r->phase);
        fprintf(f, ", \"messages\": %" PRIu64 ", \"errors\": %" PRIu64
                   ", \"seconds\": ", r->ops, r->errors);
        json_num(f, r->seconds);
        fprintf(f, ", \"msg_per_s\": ");
        json_num(f, r->rate);
        fprintf(f, ", \"latency_ms\": {\"p50\": ");
        json_num(f, r->p50_ms);
        fprintf(f, ", \"p99\": ");
        json_num(f, r->p99_ms);
        fprintf(f, ", \"max\": ");
        json_num(f, r->max_ms);
        fprintf(f, ", \"mean\": ");
        json_num(f, r->mean_ms);
        fprintf(f, "}, \"transactions\": %" PRIu64 ", \"left\": %" PRIu64
                   ", \"stopped_by_duration\": %s, \"first_error\": ",
                r->transactions, r->left, r->capped ? "true" : "false");
        json_str(f, r->first_error[0] ? r->first_error : NULL);
        fprintf(f, "}");
    }
    fprintf(f, "%s],\n  \"ratio_group_each\": {\"enqueue\": ", nresults ? "\n  " : "");
    json_num(f, ratio("enqueue"));
    fprintf(f, ", \"ack\": ");
    json_num(f, ratio("ack"));
    fprintf(f, "},\n  \"recovery\": [");
    for (int i = 0; i < nrecs; i++) {
        const recovery_result *r = &recs[i];
        fprintf(f, "%s\n    {\"backlog\": %ld, \"scanned\": %ld, \"build_s\": ",
                i ? "," : "", r->backlog, r->scanned);
        json_num(f, r->build_s);
        fprintf(f, ", \"build_msg_per_s\": ");
        json_num(f, r->build_rate);
        fprintf(f, ", \"open_ms\": ");
        json_num(f, r->open_ms);
        fprintf(f, ", \"scan_s\": ");
        json_num(f, r->scan_s);
        fprintf(f, ", \"scan_msg_per_s\": ");
        json_num(f, r->scan_rate);
        fprintf(f, ", \"rss_before_kb\": %ld, \"rss_after_kb\": %ld, "
                   "\"rss_max_kb\": %ld, \"rss_scan_delta_kb\": %ld, "
                   "\"vm_hwm_kb\": %ld, \"hwm_reset\": %s, \"purge_s\": ",
                r->rss_before_kb, r->rss_after_kb, r->rss_max_kb,
                r->rss_max_kb - r->rss_before_kb, r->hwm_kb,
                r->hwm_reset ? "true" : "false");
        json_num(f, r->purge_s);
        fprintf(f, "}");
    }
    /* baseline: raw-database numbers for the same inserts (no mqstore),
     * filled in by the backends' own benches; null until then. */
    fprintf(f, "%s],\n  \"peak_rss_kb\": %ld,\n  \"baseline\": null\n}\n",
            nrecs ? "\n  " : "", proc_status_kb("VmHWM"));
    return bench_json_close(f, path);
}

/* Writes a gnuplot script to gnuplot's stdin: inline data blocks, one panel
 * per result kind, PNG out. */
static int write_plot(const char *path)
{
    int panels = (nresults ? 2 : 0) + (nrecs ? 1 : 0);
    if (panels == 0)
        panels = 1;
    int width = 440 * panels + 80, status;
    FILE *g = bench_plot_open(path, width < 640 ? 640 : width, 520, &status);
    if (!g)
        return status;
    fprintf(g, "set multiplot layout 1,%d title 'mqstore-bench: %s, %d producers, "
               "%zu B, %s'\n",
            panels, uri_shown, cfg.producers, cfg.size, cfg.async ? "async" : "sync");
    fprintf(g, "set style data histograms\nset style histogram clustered gap 1\n"
               "set style fill solid 0.8 border -1\nset boxwidth 0.9\n"
               "set grid ytics\nset key top right\nset yrange [0:*]\n"
               "set offsets 0, 0, graph 0.1, 0\n"); /* room for the labels */
    if (nresults) {
        /* One row per phase, one column per mode. No header line: it would
         * shift $0 of the label plots by one. */
        const char *phases[] = {"enqueue", "ack"};
        int nm = cfg.nmodes;
        for (int panel = 0; panel < 2; panel++) {
            fprintf(g, "$d%d << EOD\n", panel);
            for (int p = 0; p < 2; p++) {
                fprintf(g, "%s", phases[p]);
                for (int mi = 0; mi < nm; mi++) {
                    const phase_result *r = find_result(cfg.modes[mi], phases[p]);
                    fprintf(g, " %g", !r ? 0 : panel == 0 ? r->rate : r->p99_ms);
                }
                fprintf(g, "\n");
            }
            fprintf(g, "EOD\n");
            fprintf(g, "set title '%s'\nset ylabel '%s'\nplot ",
                    panel == 0 ? "throughput (higher is better)"
                               : "p99 latency (lower is better)",
                    panel == 0 ? "messages/s" : "ms");
            for (int mi = 0; mi < nm; mi++)
                fprintf(g, "%s$d%d using %d%s title '%s'", mi ? ", " : "",
                        panel, mi + 2, mi ? "" : ":xtic(1)", cfg.modes[mi]);
            /* Bar k of n in a cluster (gap 1) is centred at
             * $0 + (k - (n-1)/2) / (n+1). */
            for (int mi = 0; mi < nm; mi++)
                fprintf(g, ", $d%d using ($0+(%d-(%d-1)/2.0)/%d.0):%d:"
                           "(sprintf('%s', $%d)) with labels offset 0,0.7 notitle",
                        panel, mi, nm, nm + 1, mi + 2,
                        panel == 0 ? "%.0f" : "%.2f", mi + 2);
            fprintf(g, "\n");
        }
    }
    if (nrecs) {
        fprintf(g, "$r << EOD\n");
        for (int i = 0; i < nrecs; i++)
            fprintf(g, "\"%ld msgs\\nscan %.2f s\" %g %g\n", recs[i].backlog,
                    recs[i].scan_s, (double)recs[i].rss_before_kb / 1024.0,
                    (double)recs[i].rss_max_kb / 1024.0);
        fprintf(g, "EOD\n");
        fprintf(g, "set bmargin 4\n" /* two-line tick labels */
                   "set title 'recovery: RSS does not grow with the backlog'\n"
                   "set ylabel 'MiB'\n"
                   "plot $r using 2:xtic(1) title 'RSS before reopen', "
                   "'' using 3 title 'RSS peak during scan', "
                   "'' using ($0-1/6.0):2:(sprintf('%%.1f', $2)) with labels offset 0,0.7 notitle, "
                   "'' using ($0+1/6.0):3:(sprintf('%%.1f', $3)) with labels offset 0,0.7 notitle\n");
    }
    return bench_plot_close(g, path);
}

/* ------------------------------------------------------------------------
 * Synchronous-producer test (--sync): the figure users see when every
 * producer waits for its RECEIPT. For each producer count P (1, 4, 16) and
 * each repeat: P threads each call mqs_enqueue and wait for their own commit
 * before sending the next message, for --duration seconds, on a fresh
 * queue; then (or first, on odd repeats, so drift hits both alike)
 * mqs-raw-insert does one INSERT per transaction from P connections on the
 * same URI for as long. Per point: msg/s median (min..max) over the
 * repeats, the median of the runs' p50/p99, and store/raw.
 *
 * At P > 1 a third series, "batch": mqs-raw-insert --rows P from ONE
 * connection, the bare database committing batches of the size P waiting
 * producers hand the writer (no fence, no delivery-order index). The store
 * does that work and more, so store/batch says how close it comes to what
 * the database itself can do, and when store/raw is low whether anything
 * could be: raw's P connections share the server's WAL flushes as well.
 * ---------------------------------------------------------------------- */

#define MAX_SYNC_POINTS 16
#define MAX_REPEATS 20
#define DEF_SYNC_PRODUCERS "1,4,16"
#define DEF_SYNC_REPEATS 3
#define DEF_SYNC_DURATION 6.0

typedef struct sync_run {
    bool ran;
    uint64_t ops, errors, transactions;
    double seconds, rate, p50_ms, p99_ms, max_ms;
    char first_error[256];
} sync_run;

typedef struct sync_point {
    int producers;
    sync_run store[MAX_MODES][MAX_REPEATS];
    sync_run raw[MAX_REPEATS];
    sync_run batch[MAX_REPEATS]; /* at 1 producer: raw's runs */
} sync_point;

static struct {
    bool on;
    int producers[MAX_SYNC_POINTS];
    int npoints;
    int repeats;
    char raw_path[4096]; /* "" = no raw baseline */
    bool raw_explicit, no_raw;
    char server[400];  /* from the raw runs' JSON */
} sync_cfg;

static sync_point sync_points[MAX_SYNC_POINTS];

/* mqs-raw-insert beside this binary (build/bin/), when --raw is not given. */
static void sync_default_raw(void)
{
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash)
        return;
    *slash = '\0';
    char path[sizeof sync_cfg.raw_path];
    if ((size_t)snprintf(path, sizeof path, "%s/mqs-raw-insert", self) < sizeof path &&
        access(path, X_OK) == 0)
        snprintf(sync_cfg.raw_path, sizeof sync_cfg.raw_path, "%s", path);
}

static void sync_store_run(const char *mode, int producers, int rep, sync_run *out)
{
    memset(out, 0, sizeof *out);
    char *uri = uri_with_commit(cfg.uri, mode);
    mqs_store *s = NULL;
    int rc = mqs_open(uri, NULL, &s);
    free(uri);
    if (rc != 0) {
        out->ran = true;
        out->errors = 1;
        snprintf(out->first_error, sizeof out->first_error, "open: %s",
                 errmsg_or(NULL, rc));
        return;
    }
    char **qnames = xcalloc((size_t)cfg.queues, sizeof *qnames);
    for (int q = 0; q < cfg.queues; q++) {
        qnames[q] = xcalloc(128, 1);
        snprintf(qnames[q], 128, "%s-sync-%s-p%d-r%d-q%d", prefix, mode, producers,
                 rep, q);
    }
    cfg.producers = producers; /* producer_main round-robins with it */
    uint64_t total = (uint64_t)cfg.messages;
    phase_result r;
    run_phase(s, qnames, mode, "enqueue", producers, total / (uint64_t)producers,
              total, &r);
    /* the stored messages go, outside the measured time */
    for (int q = 0; q < cfg.queues; q++) {
        if (!cfg.keep && (rc = mqs_purge(s, MQS_QUEUE, qnames[q], NULL)) != 0)
            fprintf(stderr, "mqstore-bench: purge %s: %s\n", qnames[q], errmsg_or(s, rc));
        free(qnames[q]);
    }
    free(qnames);
    mqs_close(s);
    *out = (sync_run){.ran = true, .ops = r.ops, .errors = r.errors,
                      .transactions = r.transactions, .seconds = r.seconds,
                      .rate = r.rate, .p50_ms = r.p50_ms, .p99_ms = r.p99_ms,
                      .max_ms = r.max_ms};
    snprintf(out->first_error, sizeof out->first_error, "%s", r.first_error);
}

/* "key": "value" -> value (no escapes expected: a server version). */
static void json_find_str(const char *text, const char *key, char *out, size_t n)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": \"", key);
    const char *p = text ? strstr(text, pat) : NULL;
    if (!p)
        return;
    p += strlen(pat);
    size_t len = strcspn(p, "\"");
    if (len >= n)
        len = n - 1;
    memcpy(out, p, len);
    out[len] = '\0';
}

/* Runs mqs-raw-insert as a child, bounded in time, and reads its --json. */
static void sync_raw_run(int producers, int rows, int rep, sync_run *out)
{
    memset(out, 0, sizeof *out);
    if (!sync_cfg.raw_path[0])
        return;
    out->ran = true;
    const char *tmp = getenv("TMPDIR");
    char json[4096], p[16], rw[16], sz[32], dur[32], msgs[32];
    snprintf(json, sizeof json, "%s/mqstore-bench-raw-%ld-p%d-x%d-r%d.json",
             tmp && *tmp ? tmp : "/tmp", (long)getpid(), producers, rows, rep);
    snprintf(p, sizeof p, "%d", producers);
    snprintf(rw, sizeof rw, "%d", rows);
    snprintf(sz, sizeof sz, "%zu", cfg.size);
    snprintf(dur, sizeof dur, "%g", cfg.duration);
    snprintf(msgs, sizeof msgs, "%ld", cfg.messages);
    char *const argv[] = {sync_cfg.raw_path, "--producers", p, "--rows", rw, "--size", sz,
                          "--duration", dur, "--messages", msgs, "--json", json,
                          (char *)(uintptr_t)cfg.uri, NULL}; /* exec does not write */
    unlink(json);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        out->errors = 1;
        snprintf(out->first_error, sizeof out->first_error, "fork: %s", strerror(errno));
        return;
    }
    if (pid == 0) {
        /* its table would interleave with ours: the JSON has it all */
        int fd = open("/dev/null", O_WRONLY);
        if (fd >= 0)
            dup2(fd, STDOUT_FILENO);
        execv(sync_cfg.raw_path, argv);
        fprintf(stderr, "mqstore-bench: cannot run %s: %s\n", sync_cfg.raw_path,
                strerror(errno));
        _exit(127);
    }
    /* The run, its connecting and its table drop: past that it is stuck. */
    int64_t limit = mono_ns() + (int64_t)((cfg.duration * 2 + 90) * 1e9);
    int st = 0;
    for (;;) {
        pid_t w = waitpid(pid, &st, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR) {
            st = -1;
            break;
        }
        if (mono_ns() > limit) {
            fprintf(stderr, "mqstore-bench: %s overran its time, killed\n",
                    sync_cfg.raw_path);
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            st = -1;
            break;
        }
        sleep_ms(50);
    }
    char *text = bench_read_file(json);
    unlink(json);
    const char *t = text ? strstr(text, "\"throughput\"") : NULL;
    if (!t) {
        out->errors = 1;
        snprintf(out->first_error, sizeof out->first_error,
                 "mqs-raw-insert exited with status %d and wrote no result",
                 st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
        free(text);
        return;
    }
    if (!sync_cfg.server[0]) {
        char ver[128] = "", set[256] = "";
        const char *srv = strstr(text, "\"server\"");
        json_find_str(srv, "version", ver, sizeof ver);
        json_find_str(srv, "settings", set, sizeof set);
        if (ver[0])
            snprintf(sync_cfg.server, sizeof sync_cfg.server, "%s%s%s", ver,
                     set[0] ? ", " : "", set);
    }
    double v = json_find_num(t, "messages");
    out->ops = v == v ? (uint64_t)v : 0;
    v = json_find_num(t, "errors");
    out->errors = v == v ? (uint64_t)v : 0;
    v = json_find_num(t, "transactions");
    out->transactions = v == v ? (uint64_t)v : out->ops;
    out->seconds = json_find_num(t, "seconds");
    out->rate = json_find_num(t, "msg_per_s");
    out->p50_ms = json_find_num(t, "p50");
    out->p99_ms = json_find_num(t, "p99");
    out->max_ms = json_find_num(t, "max");
    json_find_str(t, "first_error", out->first_error, sizeof out->first_error);
    if (st != 0 && !out->errors) {
        out->errors = 1;
        snprintf(out->first_error, sizeof out->first_error,
                 "mqs-raw-insert exited with status %d",
                 st == -1 ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    }
    free(text);
}

/* Per-point figures over the repeats of one series. */
typedef struct sync_stat {
    bench_spread rate;
    double p50_ms, p99_ms, msg_per_txn;
    uint64_t errors;
    int runs;
} sync_stat;

static sync_stat sync_stat_of(const sync_run *runs)
{
    double rate[MAX_REPEATS] = {0}, p50[MAX_REPEATS] = {0}, p99[MAX_REPEATS] = {0};
    sync_stat s = {.msg_per_txn = 0.0 / 0.0};
    uint64_t ops = 0, txns = 0;
    for (int r = 0; r < sync_cfg.repeats; r++) {
        const sync_run *x = &runs[r];
        rate[r] = p50[r] = p99[r] = 0.0 / 0.0;
        if (!x->ran)
            continue;
        s.errors += x->errors;
        if (x->ops == 0)
            continue;
        rate[r] = x->rate;
        p50[r] = x->p50_ms;
        p99[r] = x->p99_ms;
        ops += x->ops;
        txns += x->transactions;
        s.runs++;
    }
    s.rate = bench_spread_of(rate, sync_cfg.repeats);
    s.p50_ms = bench_spread_of(p50, sync_cfg.repeats).median;
    s.p99_ms = bench_spread_of(p99, sync_cfg.repeats).median;
    if (txns)
        s.msg_per_txn = (double)ops / (double)txns;
    return s;
}

static void sync_print_run(const char *what, int producers, int rep, const sync_run *r)
{
    if (!r->ran)
        return;
    fprintf(stderr, "== p%d repeat %d/%d %-6s %9.0f msg/s  p50 %.3f ms  p99 %.3f ms"
                    "  (%" PRIu64 " msgs%s%s)\n",
            producers, rep + 1, sync_cfg.repeats, what, r->rate, r->p50_ms, r->p99_ms,
            r->ops, r->errors ? ", errors: " : "", r->errors ? r->first_error : "");
}

static void fmt_rate(char *out, size_t n, bench_spread s)
{
    if (s.median != s.median)
        snprintf(out, n, "-");
    else
        snprintf(out, n, "%.0f (%.0f..%.0f)", s.median, s.min, s.max);
}

static void fmt_num(char *out, size_t n, const char *spec, double v)
{
    if (v != v)
        snprintf(out, n, "-");
    else
        snprintf(out, n, spec, v);
}

static void sync_print_table(void)
{
    printf("\nsynchronous producers (each waits for its own commit), %zu B, %g s per run,"
           " %d repeat%s: msg/s median (min..max); p50/p99: median of the runs'\n",
           cfg.size, cfg.duration, sync_cfg.repeats, sync_cfg.repeats == 1 ? "" : "s");
    printf("raw: %s\n", sync_cfg.raw_path[0]
                            ? "mqs-raw-insert, one INSERT per transaction, one connection "
                              "per producer, same URI, same run"
                            : "not run (no mqs-raw-insert: --raw PATH)");
    if (sync_cfg.server[0])
        printf("server: %s\n", sync_cfg.server);
    printf("\n%9s %-6s %24s %8s %8s %7s | %24s %8s %8s | %9s %9s\n", "producers", "mode",
           "store msg/s", "p50 ms", "p99 ms", "msg/txn", "raw msg/s", "p50 ms", "p99 ms",
           "store/raw", "p50 ratio");
    for (int i = 0; i < sync_cfg.npoints; i++) {
        const sync_point *pt = &sync_points[i];
        sync_stat raw = sync_stat_of(pt->raw);
        for (int m = 0; m < cfg.nmodes; m++) {
            sync_stat st = sync_stat_of(pt->store[m]);
            char a[48], b[48], c[16], d[16], e[16], f[16], g[16], h[16], k[16];
            fmt_rate(a, sizeof a, st.rate);
            fmt_rate(b, sizeof b, raw.rate);
            fmt_num(c, sizeof c, "%.3f", st.p50_ms);
            fmt_num(d, sizeof d, "%.3f", st.p99_ms);
            fmt_num(e, sizeof e, "%.1f", st.msg_per_txn);
            fmt_num(f, sizeof f, "%.3f", raw.p50_ms);
            fmt_num(g, sizeof g, "%.3f", raw.p99_ms);
            fmt_num(h, sizeof h, "%.2fx", st.rate.median / raw.rate.median);
            fmt_num(k, sizeof k, "%.2fx", st.p50_ms / raw.p50_ms);
            printf("%9d %-6s %24s %8s %8s %7s | %24s %8s %8s | %9s %9s%s\n",
                   pt->producers, cfg.modes[m], a, c, d, e, b, f, g, h, k,
                   st.errors || raw.errors ? "  (errors)" : "");
        }
    }
    printf("store/raw: median msg/s over median msg/s; p50 ratio: store p50 / raw p50"
           " (lower is better)\n");
    if (!sync_cfg.raw_path[0])
        return;
    printf("\nbatch: the bare database committing the batches P producers make: "
           "mqs-raw-insert, ONE connection,\none INSERT of P rows per transaction "
           "(at P = 1: the raw runs above); a ceiling for the store\n");
    printf("\n%9s %-6s %24s | %24s %8s %8s %7s | %11s\n", "producers", "mode",
           "store msg/s", "batch msg/s", "p50 ms", "p99 ms", "msg/txn", "store/batch");
    for (int i = 0; i < sync_cfg.npoints; i++) {
        const sync_point *pt = &sync_points[i];
        sync_stat bt = sync_stat_of(pt->batch);
        for (int m = 0; m < cfg.nmodes; m++) {
            sync_stat st = sync_stat_of(pt->store[m]);
            char a[48], b[48], c[16], d[16], e[16], h[16];
            fmt_rate(a, sizeof a, st.rate);
            fmt_rate(b, sizeof b, bt.rate);
            fmt_num(c, sizeof c, "%.3f", bt.p50_ms);
            fmt_num(d, sizeof d, "%.3f", bt.p99_ms);
            fmt_num(e, sizeof e, "%.1f", bt.msg_per_txn);
            fmt_num(h, sizeof h, "%.2fx", st.rate.median / bt.rate.median);
            printf("%9d %-6s %24s | %24s %8s %8s %7s | %11s%s\n", pt->producers,
                   cfg.modes[m], a, b, c, d, e, h,
                   st.errors || bt.errors ? "  (errors)" : "");
        }
    }
}

static void sync_json_series(FILE *f, const sync_run *runs, sync_stat st)
{
    fprintf(f, "{\"msg_per_s\": {\"median\": ");
    json_num(f, st.rate.median);
    fprintf(f, ", \"min\": ");
    json_num(f, st.rate.min);
    fprintf(f, ", \"max\": ");
    json_num(f, st.rate.max);
    fprintf(f, "}, \"p50_ms\": ");
    json_num(f, st.p50_ms);
    fprintf(f, ", \"p99_ms\": ");
    json_num(f, st.p99_ms);
    fprintf(f, ", \"msg_per_txn\": ");
    json_num(f, st.msg_per_txn);
    fprintf(f, ", \"errors\": %" PRIu64 ", \"runs\": [", st.errors);
    for (int r = 0, first = 1; r < sync_cfg.repeats; r++) {
        const sync_run *x = &runs[r];
        if (!x->ran)
            continue;
        fprintf(f, "%s\n          {\"messages\": %" PRIu64 ", \"errors\": %" PRIu64
                   ", \"transactions\": %" PRIu64 ", \"seconds\": ",
                first ? "" : ",", x->ops, x->errors, x->transactions);
        first = 0;
        json_num(f, x->seconds);
        fprintf(f, ", \"msg_per_s\": ");
        json_num(f, x->rate);
        fprintf(f, ", \"p50_ms\": ");
        json_num(f, x->p50_ms);
        fprintf(f, ", \"p99_ms\": ");
        json_num(f, x->p99_ms);
        fprintf(f, ", \"max_ms\": ");
        json_num(f, x->max_ms);
        fprintf(f, ", \"first_error\": ");
        json_str(f, x->first_error[0] ? x->first_error : NULL);
        fprintf(f, "}");
    }
    fprintf(f, "]}");
}

/* ,"key": {"<mode>": {"msg_per_s": store/base[, "p50": store/base]}, ...} */
static void sync_json_ratios(FILE *f, const char *key, const sync_point *pt,
                             sync_stat base, bool with_p50)
{
    fprintf(f, ",\n      \"%s\": {", key);
    for (int m = 0; m < cfg.nmodes; m++) {
        sync_stat st = sync_stat_of(pt->store[m]);
        fprintf(f, "%s", m ? ", " : "");
        json_str(f, cfg.modes[m]);
        fprintf(f, ": {\"msg_per_s\": ");
        json_num(f, st.rate.median / base.rate.median);
        if (with_p50) {
            fprintf(f, ", \"p50\": ");
            json_num(f, st.p50_ms / base.p50_ms);
        }
        fprintf(f, "}");
    }
    fprintf(f, "}");
}

static int sync_write_json(const char *path)
{
    FILE *f = bench_json_open(path);
    if (!f)
        return EXIT_FAIL;
    struct utsname u;
    bool have_uname = uname(&u) == 0;
    fprintf(f, "{\n  \"tool\": \"mqstore-bench\",\n  \"test\": \"sync\",\n"
               "  \"version\": \"%s\",\n  \"uri\": ", MQS_BENCH_VERSION);
    json_str(f, uri_shown);
    fprintf(f, ",\n  \"server\": ");
    json_str(f, sync_cfg.server[0] ? sync_cfg.server : NULL);
    fprintf(f, ",\n  \"unix_time\": %lld,\n", (long long)time(NULL));
    fprintf(f, "  \"host\": {\"cpus\": %ld, \"kernel\": ", sysconf(_SC_NPROCESSORS_ONLN));
    json_str(f, have_uname ? u.release : NULL);
    fprintf(f, ", \"machine\": ");
    json_str(f, have_uname ? u.machine : NULL);
    fprintf(f, "},\n  \"config\": {\"producers\": [");
    for (int i = 0; i < sync_cfg.npoints; i++)
        fprintf(f, "%s%d", i ? ", " : "", sync_cfg.producers[i]);
    fprintf(f, "], \"repeats\": %d, \"duration_s\": ", sync_cfg.repeats);
    json_num(f, cfg.duration);
    fprintf(f, ", \"messages_cap\": %ld, \"size\": %zu, \"queues\": %d, \"modes\": [",
            cfg.messages, cfg.size, cfg.queues);
    for (int m = 0; m < cfg.nmodes; m++) {
        fprintf(f, "%s", m ? ", " : "");
        json_str(f, cfg.modes[m]);
    }
    fprintf(f, "], \"raw\": ");
    json_str(f, sync_cfg.raw_path[0] ? sync_cfg.raw_path : NULL);
    fprintf(f, ", \"batch\": \"the raw binary with ONE connection and --rows "
               "producers (at 1 producer: the raw runs)\"");
    fprintf(f, ", \"latency\": \"median over the repeats of each run's p50/p99\"},\n"
               "  \"points\": [");
    for (int i = 0; i < sync_cfg.npoints; i++) {
        const sync_point *pt = &sync_points[i];
        sync_stat raw = sync_stat_of(pt->raw);
        fprintf(f, "%s\n    {\"producers\": %d,\n      \"store\": {", i ? "," : "",
                pt->producers);
        for (int m = 0; m < cfg.nmodes; m++) {
            fprintf(f, "%s\n        ", m ? "," : "");
            json_str(f, cfg.modes[m]);
            fprintf(f, ": ");
            sync_json_series(f, pt->store[m], sync_stat_of(pt->store[m]));
        }
        fprintf(f, "},\n      \"raw\": ");
        if (sync_cfg.raw_path[0])
            sync_json_series(f, pt->raw, raw);
        else
            fprintf(f, "null");
        fprintf(f, ",\n      \"batch\": ");
        if (sync_cfg.raw_path[0])
            sync_json_series(f, pt->batch, sync_stat_of(pt->batch));
        else
            fprintf(f, "null");
        sync_json_ratios(f, "ratio_store_batch", pt, sync_stat_of(pt->batch), false);
        sync_json_ratios(f, "ratio_store_raw", pt, raw, true);
        fprintf(f, "}");
    }
    fprintf(f, "\n  ]\n}\n");
    return bench_json_close(f, path);
}

/* Two panels against producers: msg/s (median, min..max bars) and p50. */
static int sync_write_plot(const char *path)
{
    int status;
    FILE *g = bench_plot_open(path, 1120, 520, &status);
    if (!g)
        return status;
    fprintf(g, "set multiplot layout 1,2 title 'mqstore-bench --sync: %s, %zu B, "
               "%g s x %d per point'\n",
            uri_shown, cfg.size, cfg.duration, sync_cfg.repeats);
    fprintf(g, "set logscale x 2\nset grid xtics ytics\nset key top left\n"
               "set xlabel 'producers (each waits for its commit)'\n"
               "set xrange [%g:%g]\nset xtics (",
            sync_cfg.producers[0] * 0.7, sync_cfg.producers[sync_cfg.npoints - 1] * 1.4);
    for (int i = 0; i < sync_cfg.npoints; i++)
        fprintf(g, "%s%d", i ? ", " : "", sync_cfg.producers[i]);
    fprintf(g, ")\n");
    /* columns: producers, then per series (modes..., raw, batch): median min
     * max p50 */
    int ns = cfg.nmodes + (sync_cfg.raw_path[0] ? 2 : 0);
    fprintf(g, "$d << EOD\n");
    for (int i = 0; i < sync_cfg.npoints; i++) {
        const sync_point *pt = &sync_points[i];
        fprintf(g, "%d", pt->producers);
        for (int k = 0; k < ns; k++) {
            sync_stat st = sync_stat_of(k < cfg.nmodes    ? pt->store[k]
                                        : k == cfg.nmodes ? pt->raw
                                                          : pt->batch);
            fprintf(g, " %g %g %g %g", st.rate.median, st.rate.min, st.rate.max,
                    st.p50_ms);
        }
        fprintf(g, "\n");
    }
    fprintf(g, "EOD\n");
    for (int panel = 0; panel < 2; panel++) {
        fprintf(g, "set title '%s'\nset ylabel '%s'\nset yrange [0:*]\nplot ",
                panel == 0 ? "throughput, median and min..max (higher is better)"
                           : "p50 latency per message (lower is better)",
                panel == 0 ? "messages/s" : "ms");
        for (int k = 0; k < ns; k++) {
            char title[64];
            if (k < cfg.nmodes)
                snprintf(title, sizeof title, "mqstore commit=%s", cfg.modes[k]);
            else if (k == cfg.nmodes)
                snprintf(title, sizeof title, "raw: 1 INSERT per transaction");
            else
                snprintf(title, sizeof title, "batch: 1 connection, P rows per INSERT");
            int c = 2 + 4 * k;
            if (panel == 0)
                fprintf(g, "%s$d using 1:%d:%d:%d with yerrorlines lw 2 pt %d%s title '%s', "
                           "$d using 1:%d:(sprintf('%%.0f', $%d)) with labels offset 0,1 notitle",
                        k ? ", " : "", c, c + 1, c + 2, 7 + 2 * k,
                        k >= cfg.nmodes ? " dt 2" : "", title, c, c);
            else
                fprintf(g, "%s$d using 1:%d with linespoints lw 2 pt %d%s title '%s', "
                           "$d using 1:%d:(sprintf('%%.2f', $%d)) with labels offset 0,1 notitle",
                        k ? ", " : "", c + 3, 7 + 2 * k, k >= cfg.nmodes ? " dt 2" : "",
                        title, c + 3, c + 3);
        }
        fprintf(g, "\n");
    }
    return bench_plot_close(g, path);
}

static int run_sync(void)
{
    printf("synchronous producers: %d point%s x %d repeat%s x %g s, %zu B, commit mode%s",
           sync_cfg.npoints, sync_cfg.npoints == 1 ? "" : "s", sync_cfg.repeats,
           sync_cfg.repeats == 1 ? "" : "s", cfg.duration, cfg.size,
           cfg.nmodes == 1 ? "" : "s");
    for (int m = 0; m < cfg.nmodes; m++)
        printf("%s%s", m ? "," : " ", cfg.modes[m]);
    printf("; raw baseline: %s\n", sync_cfg.raw_path[0] ? sync_cfg.raw_path : "none");
    fflush(stdout);
    int ret = EXIT_OK;
    for (int i = 0; i < sync_cfg.npoints; i++) {
        sync_point *pt = &sync_points[i];
        pt->producers = sync_cfg.producers[i];
        for (int rep = 0; rep < sync_cfg.repeats; rep++) {
            /* raw first on odd repeats: a drifting machine hits both alike */
            bool raw_first = rep % 2 == 1;
            if (raw_first) {
                sync_raw_run(pt->producers, 1, rep, &pt->raw[rep]);
                sync_print_run("raw", pt->producers, rep, &pt->raw[rep]);
            }
            for (int m = 0; m < cfg.nmodes; m++) {
                sync_store_run(cfg.modes[m], pt->producers, rep, &pt->store[m][rep]);
                sync_print_run(cfg.modes[m], pt->producers, rep, &pt->store[m][rep]);
                if (pt->store[m][rep].errors)
                    ret = EXIT_FAIL;
            }
            if (!raw_first) {
                sync_raw_run(pt->producers, 1, rep, &pt->raw[rep]);
                sync_print_run("raw", pt->producers, rep, &pt->raw[rep]);
            }
            if (pt->raw[rep].errors) {
                fprintf(stderr, "mqstore-bench: raw p%d: %s\n", pt->producers,
                        pt->raw[rep].first_error);
                ret = EXIT_FAIL;
            }
            /* One connection, P rows per INSERT; at P = 1 that is raw. */
            if (pt->producers == 1) {
                pt->batch[rep] = pt->raw[rep];
            } else {
                sync_raw_run(1, pt->producers, rep, &pt->batch[rep]);
                sync_print_run("batch", pt->producers, rep, &pt->batch[rep]);
                if (pt->batch[rep].errors) {
                    fprintf(stderr, "mqstore-bench: batch p%d: %s\n", pt->producers,
                            pt->batch[rep].first_error);
                    ret = EXIT_FAIL;
                }
            }
        }
    }
    sync_print_table();
    if (cfg.json_path && sync_write_json(cfg.json_path) != EXIT_OK)
        ret = EXIT_FAIL;
    if (cfg.plot_path && sync_write_plot(cfg.plot_path) != EXIT_OK)
        ret = EXIT_FAIL;
    return ret;
}

static int parse_int_list(const char *s, int *out, int max, int *n, int lo, int hi)
{
    *n = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        char *end;
        errno = 0;
        long v = strtol(t, &end, 10);
        if (errno || end == t || *end || v < lo || v > hi || *n == max)
            return -1;
        if (*n && v <= out[*n - 1])
            return -1; /* ascending, for the plot's axis */
        out[(*n)++] = (int)v;
    }
    return *n ? 0 : -1;
}

/* ------------------------------------------------------------------------
 * Command line
 * ---------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
"Usage: mqstore-bench [OPTIONS] URI\n"
"\n"
"Benchmarks an mqstore store: commit=group against commit=each (throughput\n"
"and latency of enqueue and of cursor read + ack), and recovery over a\n"
"large backlog (scan time and memory). Every run uses fresh destination\n"
"names, and removes its messages afterwards unless --keep.\n"
"\n"
"Example:\n"
"  mqstore-bench --quick sqlite:///tmp/bench.db\n"
"  mqstore-bench --duration 15 'sqlite:///tmp/bench.db?synchronous=full'\n"
"  mqstore-bench --recovery 1000000 sqlite:///tmp/bench.db\n"
"  mqstore-bench --sync --json s.json --plot s.png postgresql://u:pw@host/db\n"
"\n"
"Throughput test (runs unless only --recovery is given):\n"
"  --producers N     producer threads (default %d)\n"
"  --consumers N     consumer threads in the ack phase (default %d)\n"
"  --messages N      messages per mode, in total (default %d; with\n"
"                    --duration, a cap: default %d)\n"
"  --duration S      stop each phase after S seconds (default: none; max %.0f)\n"
"  --size B          body bytes per message (default %d)\n"
"  --queues K        spread messages over K queues (default %d)\n"
"  --async           mqs_enqueue_async / mqs_ack_async with a bounded window\n"
"  --window N        in-flight operations per thread with --async (default %d)\n"
"  --modes LIST      commit modes to compare, in order (default %s);\n"
"                    a URI that sets commit= itself runs only that mode\n"
"  --page-rows N     recovery cursor page size (default 0: library default)\n"
"  --throughput      run the throughput test even with --recovery\n"
"\n"
"Synchronous-producer test (--sync; alone, not with --recovery/--async):\n"
"  --sync            for each producer count, each repeat: producers each wait\n"
"                    for their own commit (mqs_enqueue) for --duration s\n"
"                    (default %.0f here) on a fresh queue, and mqs-raw-insert\n"
"                    does one INSERT per transaction from as many connections\n"
"                    on the same URI, then (P > 1) one INSERT of P rows per\n"
"                    transaction from one connection (\"batch\": the bare\n"
"                    database's ceiling); --modes defaults to group here\n"
"  --sync-producers LIST  ascending producer counts (default %s)\n"
"  --repeats N       runs per point and series (default %d, max %d); the\n"
"                    table gives msg/s median (min..max), median p50/p99\n"
"  --raw PATH        the mqs-raw-insert binary (default: beside this one)\n"
"  --no-raw          no raw baseline (e.g. a backend it was built without)\n"
"\n"
"Recovery test:\n"
"  --recovery N      build backlogs of N/10 and N messages (--size bytes),\n"
"                    reopen, time a full cursor scan and sample RSS\n"
"\n"
"Run and output:\n"
"  --quick           small run, under 2 minutes on SQLite: --messages %d,\n"
"                    --duration %.0f, --recovery %d (explicit options win)\n"
"  --keep            leave the benchmark's messages in the store\n"
"  --stall S         abort (exit 1) when a phase makes no progress for S\n"
"                    seconds, e.g. a hung store (default %.0f; 0: never)\n"
"  --json FILE       write every result as JSON to FILE\n"
"  --plot FILE.png   draw msg/s and p99 per mode (and recovery) with gnuplot;\n"
"                    with --sync: msg/s and p50 against producers, store, raw\n"
"                    and batch\n"
"  --help            this text\n"
"  --version         print the version\n"
"\n"
"Progress goes to stderr every 2 s; the result tables to stdout.\n"
"Exit status: 0 ok, 1 a failure or error during the run, 2 usage error.\n",
            DEF_PRODUCERS, DEF_CONSUMERS, DEF_MESSAGES, DURATION_CAP_MESSAGES,
            MAX_DURATION, DEF_SIZE, DEF_QUEUES, DEF_WINDOW, DEF_MODES,
            DEF_SYNC_DURATION, DEF_SYNC_PRODUCERS, DEF_SYNC_REPEATS, MAX_REPEATS,
            QUICK_MESSAGES, QUICK_DURATION, QUICK_RECOVERY, DEF_STALL);
}

static int parse_modes(const char *list)
{
    snprintf(cfg.modes_buf, sizeof cfg.modes_buf, "%s", list);
    cfg.nmodes = 0;
    for (char *save = NULL, *t = strtok_r(cfg.modes_buf, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        if (strcmp(t, "group") != 0 && strcmp(t, "each") != 0)
            return bad_usage("--modes: unknown mode '%s' (group, each)", t);
        for (int i = 0; i < cfg.nmodes; i++)
            if (strcmp(cfg.modes[i], t) == 0)
                return bad_usage("--modes: '%s' given twice", t);
        if (cfg.nmodes == MAX_MODES)
            return bad_usage("--modes: too many modes");
        cfg.modes[cfg.nmodes++] = t;
    }
    if (cfg.nmodes == 0)
        return bad_usage("--modes: empty list");
    return EXIT_OK;
}

static int parse_args(int argc, char **argv)
{
    bool recovery_only = false, force_throughput = false;
    cfg = (config){.producers = DEF_PRODUCERS,
                   .consumers = DEF_CONSUMERS,
                   .queues = DEF_QUEUES,
                   .messages = DEF_MESSAGES,
                   .size = DEF_SIZE,
                   .window = DEF_WINDOW,
                   .stall = DEF_STALL};
    const char *modes = DEF_MODES;
    const char *sync_list = DEF_SYNC_PRODUCERS;
    memset(&sync_cfg, 0, sizeof sync_cfg);
    sync_cfg.repeats = DEF_SYNC_REPEATS;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == '\0') {
            if (cfg.uri)
                return bad_usage("more than one URI ('%s')", a);
            cfg.uri = a;
            continue;
        }
        /* --opt=value and --opt value */
        static const char *const with_value[] = {
            "--producers", "--consumers", "--messages", "--duration", "--size",
            "--queues", "--window", "--modes", "--page-rows", "--recovery",
            "--json", "--plot", "--stall", "--sync-producers", "--repeats",
            "--raw",
            NULL};
        char name[32];
        const char *val;
        int urc = bench_opt(argc, argv, &i, with_value, name, sizeof name, &val);
        if (urc)
            return urc;
        long v;
        if (bench_std_opt(name, usage, MQS_BENCH_VERSION)) {
        } else if (!strcmp(name, "--producers")) {
            if (!parse_long(val, 1, MAX_THREADS, &v))
                return bad_usage("--producers: 1..%d", MAX_THREADS);
            cfg.producers = (int)v;
        } else if (!strcmp(name, "--consumers")) {
            if (!parse_long(val, 1, MAX_THREADS, &v))
                return bad_usage("--consumers: 1..%d", MAX_THREADS);
            cfg.consumers = (int)v;
        } else if (!strcmp(name, "--messages")) {
            if (!parse_long(val, 1, 100000000L, &v))
                return bad_usage("--messages: 1..100000000");
            cfg.messages = v;
            cfg.set_messages = true;
        } else if (!strcmp(name, "--duration")) {
            char *end;
            double d = strtod(val, &end);
            if (end == val || *end || !(d > 0) || d > MAX_DURATION)
                return bad_usage("--duration: seconds, >0 and <= %.0f", MAX_DURATION);
            cfg.duration = d;
            cfg.set_duration = true;
        } else if (!strcmp(name, "--stall")) {
            char *end;
            double d = strtod(val, &end);
            if (end == val || *end || !(d >= 0) || d > MAX_DURATION)
                return bad_usage("--stall: seconds, 0..%.0f (0: never)", MAX_DURATION);
            cfg.stall = d;
        } else if (!strcmp(name, "--size")) {
            if (!parse_long(val, 0, 1L << 30, &v))
                return bad_usage("--size: 0..%ld bytes", 1L << 30);
            cfg.size = (size_t)v;
        } else if (!strcmp(name, "--queues")) {
            if (!parse_long(val, 1, 100000, &v))
                return bad_usage("--queues: 1..100000");
            cfg.queues = (int)v;
        } else if (!strcmp(name, "--window")) {
            if (!parse_long(val, 1, 1000000, &v))
                return bad_usage("--window: 1..1000000");
            cfg.window = (int)v;
        } else if (!strcmp(name, "--modes")) {
            modes = val;
            cfg.set_modes = true;
        } else if (!strcmp(name, "--page-rows")) {
            if (!parse_long(val, 0, 1000000, &v))
                return bad_usage("--page-rows: 0..1000000");
            cfg.page_rows = (size_t)v;
        } else if (!strcmp(name, "--recovery")) {
            if (!parse_long(val, 10, 1000000000L, &v))
                return bad_usage("--recovery: 10..1000000000");
            cfg.recovery = v;
            cfg.set_recovery = true;
            recovery_only = true;
        } else if (!strcmp(name, "--json")) {
            if (bench_json_path_problem(val))
                return bad_usage("%s", bench_json_path_problem(val));
            cfg.json_path = val;
        } else if (!strcmp(name, "--plot")) {
            cfg.plot_path = val;
        } else if (!strcmp(name, "--async")) {
            cfg.async = true;
        } else if (!strcmp(name, "--quick")) {
            cfg.quick = true;
        } else if (!strcmp(name, "--keep")) {
            cfg.keep = true;
        } else if (!strcmp(name, "--throughput")) {
            force_throughput = true;
        } else if (!strcmp(name, "--sync")) {
            sync_cfg.on = true;
        } else if (!strcmp(name, "--sync-producers")) {
            sync_list = val;
        } else if (!strcmp(name, "--repeats")) {
            if (!parse_long(val, 1, MAX_REPEATS, &v))
                return bad_usage("--repeats: 1..%d", MAX_REPEATS);
            sync_cfg.repeats = (int)v;
        } else if (!strcmp(name, "--raw")) {
            if (strlen(val) >= sizeof sync_cfg.raw_path || access(val, X_OK) != 0)
                return bad_usage("--raw %s: not an executable", val);
            snprintf(sync_cfg.raw_path, sizeof sync_cfg.raw_path, "%s", val);
            sync_cfg.raw_explicit = true;
        } else if (!strcmp(name, "--no-raw")) {
            sync_cfg.no_raw = true;
        } else {
            return bad_usage("unknown option '%s'", a);
        }
    }
    if (!cfg.uri)
        return bad_usage("missing URI (e.g. sqlite:///tmp/bench.db)");

    if (sync_cfg.on) {
        if (cfg.async || cfg.recovery || cfg.quick || force_throughput)
            return bad_usage("--sync runs alone (no --async, --recovery, --quick, "
                             "--throughput)");
        if (parse_int_list(sync_list, sync_cfg.producers, MAX_SYNC_POINTS,
                           &sync_cfg.npoints, 1, MAX_THREADS) != 0)
            return bad_usage("--sync-producers: ascending counts 1..%d, comma-separated, "
                             "at most %d", MAX_THREADS, MAX_SYNC_POINTS);
        if (sync_cfg.no_raw)
            sync_cfg.raw_path[0] = '\0';
        else if (!sync_cfg.raw_explicit)
            sync_default_raw();
        if (!cfg.set_duration)
            cfg.duration = DEF_SYNC_DURATION;
        if (!cfg.set_messages)
            cfg.messages = DURATION_CAP_MESSAGES;
        if (!cfg.set_modes)
            modes = "group";
        cfg.producers = sync_cfg.producers[sync_cfg.npoints - 1];
        cfg.throughput = false;
    }

    if (cfg.quick) {
        if (!cfg.set_messages)
            cfg.messages = QUICK_MESSAGES;
        if (!cfg.set_duration)
            cfg.duration = QUICK_DURATION;
        if (!cfg.set_recovery)
            cfg.recovery = QUICK_RECOVERY;
        recovery_only = false;
    } else if (cfg.set_duration && !cfg.set_messages) {
        cfg.messages = DURATION_CAP_MESSAGES;
    }
    if (!sync_cfg.on)
        cfg.throughput = !recovery_only || force_throughput;
    if (cfg.messages < cfg.producers)
        return bad_usage("--messages (%ld) must be at least --producers (%d)",
                         cfg.messages, cfg.producers);

    /* A URI that picks its commit mode pins the run to that mode: appending
     * another commit= would be refused as a duplicate, or silently win. */
    char fixed[16];
    if (uri_has_option(cfg.uri, "commit", fixed, sizeof fixed)) {
        if (cfg.set_modes)
            return bad_usage("the URI sets commit=%s; drop it to use --modes", fixed);
        if (strcmp(fixed, "group") != 0 && strcmp(fixed, "each") != 0)
            return bad_usage("the URI sets an unknown commit=%s", fixed);
        modes = strcmp(fixed, "group") == 0 ? "group" : "each";
    }
    return parse_modes(modes);
}

int main(int argc, char **argv)
{
    bench_prog = "mqstore-bench";
    int ret = parse_args(argc, argv);
    if (ret != EXIT_OK)
        return ret;

    mqs_uri_mask(cfg.uri, uri_shown, sizeof uri_shown);
    snprintf(prefix, sizeof prefix, "bench-%lld-%ld", (long long)time(NULL),
             (long)getpid());
    if (sync_cfg.on) {
        printf("mqstore-bench %s  %s\n", MQS_BENCH_VERSION, uri_shown);
        if (!sync_cfg.raw_path[0] && !sync_cfg.no_raw)
            fprintf(stderr, "mqstore-bench: no mqs-raw-insert beside this binary: "
                            "no raw baseline (--raw PATH)\n");
        return run_sync();
    }
    print_header(stdout);
    fflush(stdout);

    if (cfg.throughput)
        for (int i = 0; i < cfg.nmodes; i++)
            if (run_mode(cfg.modes[i]) != EXIT_OK)
                ret = EXIT_FAIL;
    if (cfg.recovery > 0) {
        long sizes[2] = {cfg.recovery / 10, cfg.recovery};
        for (int i = 0; i < 2; i++) {
            if (run_recovery(sizes[i], &recs[nrecs]) != EXIT_OK)
                ret = EXIT_FAIL;
            nrecs++;
        }
    }
    print_tables();
    if (cfg.json_path && write_json(cfg.json_path) != EXIT_OK)
        ret = EXIT_FAIL;
    if (cfg.plot_path && write_plot(cfg.plot_path) != EXIT_OK)
        ret = EXIT_FAIL;
    return ret;
}
