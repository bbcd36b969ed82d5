/*
 * mqs-scan-bench - does reading a queue cost more when dead rows lie ahead
 * of its live messages?
 *
 * For each dead count D (--dead, default 0,10000,100000), on a fresh queue:
 * enqueue D + N (--live) messages, ack the first D in delivery order (so
 * the acked rows sit before the live ones in the (dest, priority, id)
 * index, as after a mass ack or a purge), then time:
 *   dest_foreach  mqs_dest_foreach over the whole store (counts pending);
 *   dest_names    mqs_dest_names (lists without counting);
 *   first_page    mqs_cursor_open on the queue + its first page (256 rows);
 *   seek_page     the same with mqs_cursor_seek to the first live message.
 * The first run of each right after the acks ("cold": PostgreSQL marks
 * dead index entries on the first scan that meets them) is kept apart from
 * the --repeat runs (median, min, max). With --vacuum-cmd, a shell command
 * (e.g. psql -c 'VACUUM mqs_msg') is then run and everything measured
 * again ("vacuumed"). Each figure is also given as a ratio to D = 0 of the
 * same set. The queue is purged after its point.
 */
#include <mqstore/mqstore.h>

#include "common.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
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


#define DEF_LIVE 1000
#define DEF_DEAD "0,10000,100000"
#define DEF_REPEAT 3
#define DEF_SIZE 1024
#define DEF_COLD_ORDER "seek,page,foreach,names"
#define MAX_POINTS 16
#define MAX_REPEAT 50
#define MAX_DEAD 10000000L
#define MAX_LIVE 1000000L
#define PAGE_ROWS 256
#define ENQ_BATCH 256  /* messages per mqs_enqueue_many (one transaction) */
#define ACK_BATCH 1000 /* ids per mqs_ack_many */
#define BUILD_THREADS 2
#define PROGRESS_EVERY_NS (2 * 1000000000LL)

enum { OP_FOREACH, OP_NAMES, OP_PAGE, OP_SEEK, NOPS };
static const char *const op_name[NOPS] = {"dest_foreach", "dest_names",
                                          "first_page", "seek_page"};
/* Short names, for --cold-order. */
static const char *const op_short[NOPS] = {"foreach", "names", "page", "seek"};
enum { SET_ACKED, SET_VACUUMED, NSETS };
static const char *const set_name[NSETS] = {"acked", "vacuumed"};

typedef struct op_result {
    double cold_ms;            /* first run after the acks (or the vacuum) */
    double runs_ms[MAX_REPEAT]; /* the repeats, NaN when failed */
    bench_spread s;            /* over runs_ms */
} op_result;

typedef struct set_result {
    bool ran;
    double vacuum_s; /* the --vacuum-cmd run, vacuumed set only */
    op_result op[NOPS];
    uint64_t dests, pending; /* what the last dest_foreach saw, store-wide */
} set_result;

typedef struct point {
    long dead;
    char queue[128];
    double enqueue_s, ack_s, purge_s;
    int64_t first_live; /* id of the first live message in delivery order */
    set_result set[NSETS];
} point;

static struct {
    const char *uri;
    long live;
    long dead[MAX_POINTS];
    int npoints;
    int repeat;
    size_t size;
    const char *json_path, *plot_path, *vacuum_cmd;
    int cold_order[NOPS];
} cfg;

static point points[MAX_POINTS];
static char uri_shown[1024];
static char prefix[64];
static uint64_t failures; /* failed calls or wrong pages: exit 1 */
static char first_error[512];

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

static void fail(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "mqs-scan-bench: %s\n", buf);
    if (!first_error[0])
        snprintf(first_error, sizeof first_error, "%s", buf);
    failures++;
}

static const char *errmsg_or(const mqs_store *s, int rc)
{
    const char *m = mqs_errmsg(s);
    return m && *m ? m : mqs_strerror(rc);
}

static double ms_since(int64_t t0)
{
    return (double)(mono_ns() - t0) / 1e6;
}

/* ------------------------------------------------------------------------
 * Build: enqueue D + N messages, ack the first D. BUILD_THREADS threads
 * take batches from a shared counter; the enqueue ids land in the batch's
 * slots and are sorted afterwards (one priority: delivery order is id
 * order).
 * ---------------------------------------------------------------------- */

typedef struct job {
    mqs_store *s;
    const char *queue;
    bool ack;       /* false: enqueue batches, true: ack batches */
    int64_t *ids;   /* enqueue: filled; ack: the ids to ack */
    long total;     /* messages (enqueue) or ids (ack) */
    long batch;
    atomic_long next;  /* next batch index */
    atomic_long done;  /* messages or ids done */
    atomic_int running;
    atomic_bool failed;
} job;

static void *job_main(void *arg)
{
    job *j = arg;
    unsigned char *body = NULL;
    mqs_msg *msgs = NULL;
    if (!j->ack) {
        body = xcalloc((size_t)j->batch, cfg.size);
        msgs = xcalloc((size_t)j->batch, sizeof *msgs);
    }
    for (;;) {
        if (atomic_load(&j->failed))
            break;
        long k = atomic_fetch_add(&j->next, 1);
        long from = k * j->batch;
        if (from >= j->total)
            break;
        long n = j->total - from < j->batch ? j->total - from : j->batch;
        int rc;
        if (j->ack) {
            rc = mqs_ack_many(j->s, j->ids + from, NULL, (size_t)n);
        } else {
            for (long i = 0; i < n; i++) {
                unsigned char *b = body + (size_t)i * cfg.size;
                fill_body(b, cfg.size, (uint64_t)(from + i) * 7919u);
                msgs[i] = (mqs_msg){.kind = MQS_QUEUE,
                                    .dest = j->queue,
                                    .body = b,
                                    .body_len = cfg.size,
                                    .priority = MQS_PRIORITY_DEFAULT};
            }
            rc = mqs_enqueue_many(j->s, msgs, (size_t)n, j->ids + from);
        }
        if (rc != 0) {
            fail("%s %s: %s", j->ack ? "mqs_ack_many" : "mqs_enqueue_many",
                 j->queue, errmsg_or(j->s, rc));
            atomic_store(&j->failed, true);
            break;
        }
        atomic_fetch_add(&j->done, n);
    }
    free(msgs);
    free(body);
    atomic_fetch_sub(&j->running, 1);
    return NULL;
}

/* Runs the job on BUILD_THREADS threads with progress on stderr; returns
 * the seconds taken, or NaN on failure. */
static double run_job(job *j, const char *what, long dead)
{
    pthread_t tid[BUILD_THREADS];
    int started = 0;
    atomic_store(&j->running, BUILD_THREADS);
    int64_t t0 = mono_ns(), last = t0;
    for (int i = 0; i < BUILD_THREADS; i++) {
        if (pthread_create(&tid[i], NULL, job_main, j) != 0) {
            atomic_fetch_sub(&j->running, 1);
            fail("cannot create a thread");
            continue;
        }
        started++;
    }
    long last_done = 0;
    while (atomic_load(&j->running) > 0) {
        sleep_ms(50);
        int64_t now = mono_ns();
        if (now - last >= PROGRESS_EVERY_NS) {
            long d = atomic_load(&j->done);
            fprintf(stderr, "dead %ld: %s %ld/%ld (%.0f%%), %.0f/s\n", dead, what,
                    d, j->total, 100.0 * (double)d / (double)j->total,
                    (double)(d - last_done) * 1e9 / (double)(now - last));
            last = now;
            last_done = d;
        }
    }
    for (int i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    double s = (double)(mono_ns() - t0) / 1e9;
    if (started == 0 || atomic_load(&j->failed) || atomic_load(&j->done) != j->total)
        return NAN;
    return s;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int build(mqs_store *s, point *p)
{
    long total = p->dead + cfg.live;
    int64_t *ids = xcalloc((size_t)total, sizeof *ids);
    job e = {.s = s, .queue = p->queue, .ids = ids, .total = total,
             .batch = ENQ_BATCH};
    p->enqueue_s = run_job(&e, "enqueue", p->dead);
    if (isnan(p->enqueue_s)) {
        free(ids);
        return EXIT_FAIL;
    }
    fprintf(stderr, "dead %ld: enqueued %ld in %.1f s (%.0f msg/s)\n", p->dead,
            total, p->enqueue_s, (double)total / p->enqueue_s);
    qsort(ids, (size_t)total, sizeof *ids, cmp_i64);
    p->first_live = ids[p->dead];
    if (p->dead > 0) {
        job a = {.s = s, .queue = p->queue, .ack = true, .ids = ids,
                 .total = p->dead, .batch = ACK_BATCH};
        p->ack_s = run_job(&a, "ack", p->dead);
        if (isnan(p->ack_s)) {
            free(ids);
            return EXIT_FAIL;
        }
        fprintf(stderr, "dead %ld: acked the first %ld in %.1f s\n", p->dead,
                p->dead, p->ack_s);
    }
    free(ids);
    return EXIT_OK;
}

/* ------------------------------------------------------------------------
 * The timed operations. Each returns its time in ms, NaN on failure.
 * ---------------------------------------------------------------------- */

typedef struct dest_count {
    uint64_t dests, pending;
} dest_count;

static int count_dest(void *ud, const mqs_dest_info *d)
{
    dest_count *c = ud;
    c->dests++;
    if (d->pending != MQS_PENDING_UNKNOWN)
        c->pending += d->pending;
    return 0;
}

static double time_list(mqs_store *s, bool names, set_result *r)
{
    dest_count c = {0, 0};
    int64_t t0 = mono_ns();
    int rc = names ? mqs_dest_names(s, count_dest, &c)
                   : mqs_dest_foreach(s, count_dest, &c);
    double ms = ms_since(t0);
    if (rc != 0) {
        fail("%s: %s", names ? "mqs_dest_names" : "mqs_dest_foreach",
             errmsg_or(s, rc));
        return NAN;
    }
    if (!names) {
        r->dests = c.dests;
        r->pending = c.pending;
    }
    return ms;
}

/* Open a cursor on the queue (seeking to the first live message if seek)
 * and read its first page; the page must start at the first live message
 * and hold min(256, live) rows. The close is not timed. */
static double time_page(mqs_store *s, const point *p, bool seek)
{
    mqs_cursor_opts o = {.kind = MQS_QUEUE, .dest = p->queue,
                         .page_rows = PAGE_ROWS};
    mqs_cursor *c = NULL;
    long want = cfg.live < PAGE_ROWS ? cfg.live : PAGE_ROWS, got = 0;
    int64_t first = 0;
    int64_t t0 = mono_ns();
    int rc = mqs_cursor_open(s, &o, &c);
    if (rc == 0 && seek)
        /* strictly after (priority, first_live - 1): no live id lies
         * between the last acked one and first_live */
        rc = mqs_cursor_seek(c, MQS_PRIORITY_DEFAULT, p->first_live - 1);
    while (rc == 0 && got < want) {
        const mqs_message *m;
        int n = mqs_cursor_next(c, &m);
        if (n < 0)
            rc = n;
        else if (n == 0)
            break;
        else if (got++ == 0)
            first = m->id;
    }
    double ms = ms_since(t0);
    if (rc != 0) {
        fail("%s %s: %s", seek ? "seek page" : "first page", p->queue,
             errmsg_or(s, rc));
        mqs_cursor_close(c);
        return NAN;
    }
    mqs_cursor_close(c);
    if (got != want || first != p->first_live) {
        fail("%s %s: %ld rows from id %" PRId64 ", expected %ld from id %" PRId64,
             seek ? "seek page" : "first page", p->queue, got, first, want,
             p->first_live);
        return NAN;
    }
    return ms;
}

static double time_op(mqs_store *s, const point *p, set_result *r, int op)
{
    switch (op) {
    case OP_FOREACH: return time_list(s, false, r);
    case OP_NAMES: return time_list(s, true, r);
    case OP_PAGE: return time_page(s, p, false);
    default: return time_page(s, p, true);
    }
}

/* Cold runs in --cold-order; by default one where none warms the next:
 * the seek never visits the acked rows, the first page walks them in the
 * queue's index range (and on PostgreSQL marks them dead there), then
 * dest_foreach counts, and dest_names touches no message rows. Then the
 * repeats, each a round of the four. */
static void measure(mqs_store *s, point *p, int set)
{
    set_result *r = &p->set[set];
    r->ran = true;
    for (int i = 0; i < NOPS; i++) {
        int op = cfg.cold_order[i];
        r->op[op].cold_ms = time_op(s, p, r, op);
    }
    fprintf(stderr, "dead %ld %s: cold seek %.1f ms, page %.1f ms, foreach %.1f ms, "
                    "names %.1f ms\n", p->dead, set_name[set],
            r->op[OP_SEEK].cold_ms, r->op[OP_PAGE].cold_ms,
            r->op[OP_FOREACH].cold_ms, r->op[OP_NAMES].cold_ms);
    int64_t last = mono_ns();
    for (int k = 0; k < cfg.repeat; k++) {
        for (int op = 0; op < NOPS; op++)
            r->op[op].runs_ms[k] = time_op(s, p, r, op);
        if (mono_ns() - last >= PROGRESS_EVERY_NS) {
            fprintf(stderr, "dead %ld %s: repeat %d/%d\n", p->dead, set_name[set],
                    k + 1, cfg.repeat);
            last = mono_ns();
        }
    }
    for (int op = 0; op < NOPS; op++)
        r->op[op].s = bench_spread_of(r->op[op].runs_ms, cfg.repeat);
}

/* Runs the --vacuum-cmd through the shell, its output to stderr, with
 * MQS_SCAN_QUEUE and MQS_SCAN_DEAD set (so it can EXPLAIN the queue's
 * queries). */
static double run_vacuum(const point *p)
{
    long dead = p->dead;
    char num[24];
    snprintf(num, sizeof num, "%ld", dead);
    if (setenv("MQS_SCAN_QUEUE", p->queue, 1) != 0 ||
        setenv("MQS_SCAN_DEAD", num, 1) != 0) {
        fail("setenv: %s", strerror(errno));
        return NAN;
    }
    fprintf(stderr, "dead %ld: running --vacuum-cmd\n", dead);
    /* grouped, so every command of a list goes to stderr */
    char *cmd = xcalloc(strlen(cfg.vacuum_cmd) + 16, 1);
    sprintf(cmd, "{ %s\n} 1>&2", cfg.vacuum_cmd);
    int64_t t0 = mono_ns();
    int st = system(cmd);
    double s = (double)(mono_ns() - t0) / 1e9;
    free(cmd);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fail("--vacuum-cmd failed (status %d)", st);
        return NAN;
    }
    fprintf(stderr, "dead %ld: --vacuum-cmd took %.2f s\n", dead, s);
    return s;
}

static int run_point(mqs_store *s, point *p)
{
    fprintf(stderr, "dead %ld: queue %s, %ld + %ld messages of %zu B\n", p->dead,
            p->queue, p->dead, cfg.live, cfg.size);
    int ret = build(s, p);
    if (ret == EXIT_OK) {
        measure(s, p, SET_ACKED);
        if (cfg.vacuum_cmd) {
            p->set[SET_VACUUMED].vacuum_s = run_vacuum(p);
            if (!isnan(p->set[SET_VACUUMED].vacuum_s))
                measure(s, p, SET_VACUUMED);
        }
    }
    /* Our queue only; also after a failed build. */
    uint64_t removed = 0;
    int64_t t0 = mono_ns();
    int rc = mqs_purge(s, MQS_QUEUE, p->queue, &removed);
    p->purge_s = (double)(mono_ns() - t0) / 1e9;
    if (rc != 0) {
        fail("mqs_purge %s: %s", p->queue, errmsg_or(s, rc));
        ret = EXIT_FAIL;
    } else {
        fprintf(stderr, "dead %ld: purged %" PRIu64 " messages in %.1f s\n",
                p->dead, removed, p->purge_s);
    }
    return ret;
}

/* ------------------------------------------------------------------------
 * Output
 * ---------------------------------------------------------------------- */

/* The same set's D = 0 point, or NULL. */
static const set_result *base_of(int set)
{
    for (int i = 0; i < cfg.npoints; i++)
        if (points[i].dead == 0 && points[i].set[set].ran)
            return &points[i].set[set];
    return NULL;
}

static double ratio(double v, double base)
{
    return base > 0 ? v / base : NAN;
}

static void print_tables(void)
{
    printf("\nlive %ld messages of %zu B, first page %d rows, %d repeats "
           "(median, min..max in ms); x0 = ratio to dead 0 of the same set; "
           "cold order",
           cfg.live, cfg.size, PAGE_ROWS, cfg.repeat);
    for (int i = 0; i < NOPS; i++)
        printf("%s%s", i ? "," : " ", op_short[cfg.cold_order[i]]);
    printf("\n");
    for (int set = 0; set < NSETS; set++) {
        const set_result *b = base_of(set);
        bool any = false;
        for (int i = 0; i < cfg.npoints; i++)
            any |= points[i].set[set].ran;
        if (!any)
            continue;
        printf("\n%s%s\n", set_name[set],
               set == SET_ACKED ? " (measured right after the acks)"
                                : " (measured after --vacuum-cmd)");
        printf("%-8s %-13s %9s %6s %9s %-21s %6s\n", "dead", "op", "cold", "x0",
               "median", "(min..max)", "x0");
        for (int i = 0; i < cfg.npoints; i++) {
            const set_result *r = &points[i].set[set];
            if (!r->ran)
                continue;
            for (int op = 0; op < NOPS; op++) {
                const op_result *o = &r->op[op];
                char mm[48];
                snprintf(mm, sizeof mm, "(%.2f..%.2f)", o->s.min, o->s.max);
                printf("%-8ld %-13s %9.2f %6.2f %9.2f %-21s %6.2f\n",
                       points[i].dead, op_name[op], o->cold_ms,
                       b ? ratio(o->cold_ms, b->op[op].cold_ms) : NAN,
                       o->s.median, mm,
                       b ? ratio(o->s.median, b->op[op].s.median) : NAN);
            }
        }
    }
    printf("\n%-8s %10s %10s %10s %10s %10s %12s\n", "dead", "enqueue s",
           "msg/s", "ack s", "vacuum s", "purge s", "store dests");
    for (int i = 0; i < cfg.npoints; i++) {
        const point *p = &points[i];
        long total = p->dead + cfg.live;
        printf("%-8ld %10.2f %10.0f %10.2f %10.2f %10.2f %12" PRIu64 "\n", p->dead,
               p->enqueue_s, (double)total / p->enqueue_s, p->ack_s,
               p->set[SET_VACUUMED].vacuum_s, p->purge_s,
               p->set[SET_ACKED].dests);
    }
}

static void json_ops(FILE *f, const set_result *r, const set_result *b)
{
    fprintf(f, "{");
    for (int op = 0; op < NOPS; op++) {
        const op_result *o = &r->op[op];
        fprintf(f, "%s\n          ", op ? "," : "");
        json_str(f, op_name[op]);
        fprintf(f, ": {\"cold_ms\": ");
        json_num(f, o->cold_ms);
        fprintf(f, ", \"median_ms\": ");
        json_num(f, o->s.median);
        fprintf(f, ", \"min_ms\": ");
        json_num(f, o->s.min);
        fprintf(f, ", \"max_ms\": ");
        json_num(f, o->s.max);
        fprintf(f, ", \"runs_ms\": [");
        for (int k = 0; k < cfg.repeat; k++) {
            fprintf(f, "%s", k ? ", " : "");
            json_num(f, o->runs_ms[k]);
        }
        fprintf(f, "], \"cold_x0\": ");
        json_num(f, b ? ratio(o->cold_ms, b->op[op].cold_ms) : NAN);
        fprintf(f, ", \"median_x0\": ");
        json_num(f, b ? ratio(o->s.median, b->op[op].s.median) : NAN);
        fprintf(f, "}");
    }
    fprintf(f, "}");
}

static int write_json(const char *path)
{
    FILE *f = bench_json_open(path);
    if (!f)
        return EXIT_FAIL;
    struct utsname u;
    bool have_uname = uname(&u) == 0;
    fprintf(f, "{\n  \"tool\": \"mqs-scan-bench\",\n  \"version\": \"%s\",\n",
            MQS_BENCH_VERSION);
    fprintf(f, "  \"uri\": ");
    json_str(f, uri_shown);
    fprintf(f, ",\n  \"unix_time\": %lld,\n", (long long)time(NULL));
    fprintf(f, "  \"host\": {\"cpus\": %ld, \"kernel\": ",
            sysconf(_SC_NPROCESSORS_ONLN));
    json_str(f, have_uname ? u.release : NULL);
    fprintf(f, ", \"machine\": ");
    json_str(f, have_uname ? u.machine : NULL);
    fprintf(f, "},\n  \"config\": {\"live\": %ld, \"size\": %zu, \"repeat\": %d, "
               "\"page_rows\": %d, \"vacuum_cmd\": ",
            cfg.live, cfg.size, cfg.repeat, PAGE_ROWS);
    json_str(f, cfg.vacuum_cmd);
    fprintf(f, ", \"cold_order\": [");
    for (int i = 0; i < NOPS; i++) {
        fprintf(f, "%s", i ? ", " : "");
        json_str(f, op_name[cfg.cold_order[i]]);
    }
    fprintf(f, "], \"dead\": [");
    for (int i = 0; i < cfg.npoints; i++)
        fprintf(f, "%s%ld", i ? ", " : "", cfg.dead[i]);
    fprintf(f, "]},\n  \"points\": [");
    for (int i = 0; i < cfg.npoints; i++) {
        const point *p = &points[i];
        fprintf(f, "%s\n    {\"dead\": %ld, \"queue\": ", i ? "," : "", p->dead);
        json_str(f, p->queue);
        fprintf(f, ", \"first_live_id\": %" PRId64 ", \"enqueue_s\": ", p->first_live);
        json_num(f, p->enqueue_s);
        fprintf(f, ", \"ack_s\": ");
        json_num(f, p->ack_s);
        fprintf(f, ", \"purge_s\": ");
        json_num(f, p->purge_s);
        for (int set = 0; set < NSETS; set++) {
            const set_result *r = &p->set[set];
            fprintf(f, ",\n      ");
            json_str(f, set_name[set]);
            if (!r->ran) {
                fprintf(f, ": null");
                continue;
            }
            fprintf(f, ": {\"store_dests\": %" PRIu64 ", \"store_pending\": %" PRIu64,
                    r->dests, r->pending);
            if (set == SET_VACUUMED) {
                fprintf(f, ", \"vacuum_s\": ");
                json_num(f, r->vacuum_s);
            }
            fprintf(f, ",\n        \"ops\": ");
            json_ops(f, r, base_of(set));
            fprintf(f, "}");
        }
        fprintf(f, "}");
    }
    fprintf(f, "%s],\n  \"failures\": %" PRIu64 ", \"first_error\": ",
            cfg.npoints ? "\n  " : "", failures);
    json_str(f, first_error[0] ? first_error : NULL);
    fprintf(f, "\n}\n");
    if (bench_json_close(f, path) != EXIT_OK)
        return EXIT_FAIL;
    fprintf(stderr, "JSON written to %s\n", path);
    return EXIT_OK;
}

/* Four panels (one per operation), ms against the dead count: median with
 * min..max bars and the cold run, per set. */
static int write_plot(const char *path)
{
    int status;
    FILE *g = bench_plot_open(path, 1100, 820, &status);
    if (!g)
        return status;
    fprintf(g, "set multiplot layout 2,2 title 'mqs-scan-bench: %s, %ld live "
               "messages of %zu B behind the dead (acked) rows, %d repeats'\n",
            uri_shown, cfg.live, cfg.size, cfg.repeat);
    fprintf(g, "set grid ytics\nset key top left\nset logscale y\n"
               "set xlabel 'dead rows ahead of the live ones'\nset ylabel 'ms'\n"
               "set offsets 0.3, 0.3, graph 0.15, 0\n");
    /* columns: label, then per set: median min max cold */
    fprintf(g, "$d << EOD\n");
    for (int i = 0; i < cfg.npoints; i++) {
        for (int op = 0; op < NOPS; op++) {
            fprintf(g, "%ld", points[i].dead);
            for (int set = 0; set < NSETS; set++) {
                const op_result *o = &points[i].set[set].op[op];
                if (points[i].set[set].ran)
                    fprintf(g, " %g %g %g %g", o->s.median, o->s.min, o->s.max,
                            o->cold_ms);
                else
                    fprintf(g, " NaN NaN NaN NaN");
            }
            fprintf(g, "\n");
        }
    }
    fprintf(g, "EOD\n");
    bool vac = cfg.vacuum_cmd != NULL;
    for (int op = 0; op < NOPS; op++) {
        /* rows op, op + NOPS, ...: every NOPS-th line from line op */
        fprintf(g, "set title '%s'\nplot ", op_name[op]);
        for (int set = 0; set < (vac ? NSETS : 1); set++) {
            int c = 2 + 4 * set;
            fprintf(g, "%s$d every %d::%d using 0:%d:%d:%d:xtic(1) with yerrorlines "
                       "lw 2 pt 7 title '%s median (min..max)', "
                       "$d every %d::%d using 0:%d with points pt %d ps 1.5 "
                       "title '%s cold', "
                       "$d every %d::%d using 0:%d:(sprintf('%%.3g', $%d)) with labels "
                       "offset 0,%d notitle",
                    set ? ", " : "", NOPS, op, c, c + 1, c + 2, set_name[set], NOPS,
                    op, c + 3, set ? 8 : 6, set_name[set], NOPS, op, c, c,
                    set ? -1 : 1); /* acked labels above, vacuumed below */
        }
        fprintf(g, "\n");
    }
    return bench_plot_close(g, path);
}

/* ------------------------------------------------------------------------
 * Arguments
 * ---------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
"Usage: mqs-scan-bench [OPTIONS] URI\n"
"\n"
"Does reading a queue cost more when acked (dead) rows lie ahead of its\n"
"live messages? For each dead count D: a fresh queue gets D + N messages,\n"
"the first D are acked, then are timed: mqs_dest_foreach (counts, whole\n"
"store), mqs_dest_names, a cursor's first page on the queue, and a cursor\n"
"seeked to the first live message and its first page. The first run after\n"
"the acks (cold) is reported apart from the repeats. The queue is purged\n"
"afterwards.\n"
"\n"
"Example:\n"
"  mqs-scan-bench sqlite:///tmp/scan.db\n"
"  mqs-scan-bench --vacuum-cmd \"psql -h HOST -U mqs -d mqstore -c 'VACUUM mqs_msg'\" \\\n"
"                 --json scan.json --plot scan.png postgresql://mqs:pw@HOST/mqstore\n"
"\n"
"Options:\n"
"  --live N          live messages behind the dead ones (default %d)\n"
"  --dead LIST       dead (acked) counts, comma-separated (default %s);\n"
"                    ratios are against the 0 entry of the same set\n"
"  --repeat R        timed runs after the cold one (default %d, max %d)\n"
"  --size B          body bytes per message (default %d)\n"
"  --cold-order LIST the order of the cold runs (default %s):\n"
"                    the first run after the acks that meets the dead rows\n"
"                    pays for them (e.g. foreach,seek,page,names)\n"
"  --vacuum-cmd CMD  after the first set, run CMD with /bin/sh (its output\n"
"                    to stderr; MQS_SCAN_QUEUE and MQS_SCAN_DEAD in its\n"
"                    environment) and measure again (set 'vacuumed')\n"
"  --json FILE       write every run as JSON to FILE\n"
"  --plot FILE.png   draw ms against dead rows per operation with gnuplot\n"
"  --help            this text\n"
"  --version         print the version\n"
"\n"
"Progress goes to stderr, the tables to stdout.\n"
"Exit status: 0 ok, 1 a failed call or a page that did not start at the\n"
"first live message, 2 usage error.\n",
            DEF_LIVE, DEF_DEAD, DEF_REPEAT, MAX_REPEAT, DEF_SIZE, DEF_COLD_ORDER);
}

static int parse_dead(const char *list)
{
    char buf[256];
    if (strlen(list) >= sizeof buf)
        return bad_usage("--dead: list too long");
    snprintf(buf, sizeof buf, "%s", list);
    cfg.npoints = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        if (cfg.npoints == MAX_POINTS)
            return bad_usage("--dead: at most %d counts", MAX_POINTS);
        if (!parse_long(t, 0, MAX_DEAD, &cfg.dead[cfg.npoints]))
            return bad_usage("--dead: '%s' is not a count 0..%ld", t, MAX_DEAD);
        cfg.npoints++;
    }
    if (cfg.npoints == 0)
        return bad_usage("--dead: empty list");
    return EXIT_OK;
}

static int parse_cold_order(const char *list)
{
    char buf[128];
    if (strlen(list) >= sizeof buf)
        return bad_usage("--cold-order: list too long");
    snprintf(buf, sizeof buf, "%s", list);
    bool seen[NOPS] = {false};
    int n = 0;
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        int op = -1;
        for (int k = 0; k < NOPS; k++)
            if (strcmp(t, op_short[k]) == 0 || strcmp(t, op_name[k]) == 0)
                op = k;
        if (op < 0)
            return bad_usage("--cold-order: unknown operation '%s' "
                             "(foreach, names, page, seek)", t);
        if (seen[op])
            return bad_usage("--cold-order: '%s' given twice", t);
        seen[op] = true;
        cfg.cold_order[n++] = op;
    }
    if (n != NOPS)
        return bad_usage("--cold-order: name all four of foreach, names, "
                         "page, seek");
    return EXIT_OK;
}

static int parse_args(int argc, char **argv)
{
    cfg.live = DEF_LIVE;
    cfg.repeat = DEF_REPEAT;
    cfg.size = DEF_SIZE;
    const char *dead = DEF_DEAD, *cold_order = DEF_COLD_ORDER;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == '\0') {
            if (cfg.uri)
                return bad_usage("more than one URI ('%s')", a);
            cfg.uri = a;
            continue;
        }
        bench_std_opt(a, usage, MQS_BENCH_VERSION); /* exits if it is one */
        if (i + 1 >= argc)
            return bad_usage("%s needs a value", a);
        const char *v = argv[++i];
        long n;
        if (strcmp(a, "--live") == 0) {
            if (!parse_long(v, 1, MAX_LIVE, &cfg.live))
                return bad_usage("--live: expected 1..%ld", MAX_LIVE);
        } else if (strcmp(a, "--dead") == 0) {
            dead = v;
        } else if (strcmp(a, "--repeat") == 0) {
            if (!parse_long(v, 1, MAX_REPEAT, &n))
                return bad_usage("--repeat: expected 1..%d", MAX_REPEAT);
            cfg.repeat = (int)n;
        } else if (strcmp(a, "--size") == 0) {
            if (!parse_long(v, 0, 1 << 20, &n))
                return bad_usage("--size: expected 0..%d", 1 << 20);
            cfg.size = (size_t)n;
        } else if (strcmp(a, "--cold-order") == 0) {
            cold_order = v;
        } else if (strcmp(a, "--vacuum-cmd") == 0) {
            cfg.vacuum_cmd = v;
        } else if (strcmp(a, "--json") == 0) {
            if (bench_json_path_problem(v))
                return bad_usage("%s", bench_json_path_problem(v));
            cfg.json_path = v;
        } else if (strcmp(a, "--plot") == 0) {
            cfg.plot_path = v;
        } else {
            return bad_usage("unknown option '%s'", a);
        }
    }
    if (!cfg.uri)
        return bad_usage("a store URI is required");
    if (parse_cold_order(cold_order) != EXIT_OK)
        return EXIT_USAGE;
    return parse_dead(dead);
}

int main(int argc, char **argv)
{
    bench_prog = "mqs-scan-bench";
    int ret = parse_args(argc, argv);
    if (ret != EXIT_OK)
        return ret;
    mqs_uri_mask(cfg.uri, uri_shown, sizeof uri_shown);
    snprintf(prefix, sizeof prefix, "scan-%lld-%ld", (long long)time(NULL),
             (long)getpid());
    printf("mqs-scan-bench %s  %s\n", MQS_BENCH_VERSION, uri_shown);
    fflush(stdout);

    mqs_store *s = NULL;
    int rc = mqs_open(cfg.uri, NULL, &s);
    if (rc != 0) {
        fprintf(stderr, "mqs-scan-bench: open %s: %s\n", uri_shown,
                errmsg_or(NULL, rc));
        return EXIT_FAIL;
    }
    /* Warm-up, untimed: the first call of a handle connects its readers,
     * which is no part of what dead rows cost. */
    dest_count warm = {0, 0};
    for (int i = 0; i < 3 && rc == 0; i++)
        rc = mqs_dest_names(s, count_dest, &warm);
    if (rc != 0) {
        fprintf(stderr, "mqs-scan-bench: mqs_dest_names: %s\n", errmsg_or(s, rc));
        mqs_close(s);
        return EXIT_FAIL;
    }
    for (int i = 0; i < cfg.npoints; i++) {
        point *p = &points[i];
        p->dead = cfg.dead[i];
        p->enqueue_s = p->ack_s = p->purge_s = NAN;
        p->set[SET_VACUUMED].vacuum_s = NAN;
        if (p->dead == 0)
            p->ack_s = 0;
        snprintf(p->queue, sizeof p->queue, "%s-d%ld-%d", prefix, p->dead, i);
        if (run_point(s, p) != EXIT_OK)
            ret = EXIT_FAIL;
    }
    mqs_close(s);

    print_tables();
    if (cfg.json_path && write_json(cfg.json_path) != EXIT_OK)
        ret = EXIT_FAIL;
    if (cfg.plot_path && write_plot(cfg.plot_path) != EXIT_OK)
        ret = EXIT_FAIL;
    return failures ? EXIT_FAIL : ret;
}
