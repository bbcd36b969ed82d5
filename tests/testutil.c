/* testutil.c - helpers shared by the conformance suite's groups. */
#include "testutil.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *g_uri;
char g_scheme[32];
int g_is_sqlite;
int g_owned;
const char *g_tmpdir;
int g_quick;

void tu_uri_scheme(const char *uri, char *buf, size_t len)
{
    size_t i = 0;
    const char *colon = strchr(uri, ':');
    buf[0] = '\0';
    if (!colon || len == 0)
        return;
    for (const char *p = uri; p < colon && i + 1 < len; p++)
        buf[i++] = (char)tolower((unsigned char)*p);
    buf[i] = '\0';
}

char *tu_uri_with(const char *uri, const char *opt)
{
    size_t n = strlen(uri) + strlen(opt) + 2;
    char *out = malloc(n);
    if (!out)
        return NULL;
    snprintf(out, n, "%s%c%s", uri, strchr(uri, '?') ? '&' : '?', opt);
    return out;
}

/* A random tag per process run keeps names unique in a shared database
 * even when a pid is reused by a later run. */
static char run_prefix[40];

const char *tu_run_prefix(void)
{
    if (!run_prefix[0]) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        unsigned long tag = (unsigned long)ts.tv_nsec ^
                            ((unsigned long)ts.tv_sec << 20) ^
                            ((unsigned long)getpid() << 8);
        snprintf(run_prefix, sizeof run_prefix, "t%ld%05lx_", (long)getpid(),
                 tag & 0xfffff);
    }
    return run_prefix;
}

const char *tu_name(char *buf, size_t len, const char *what)
{
    static unsigned counter; /* only the main thread names things */
    snprintf(buf, len, "%s%u_%s", tu_run_prefix(), ++counter, what);
    return buf;
}

int64_t tu_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void tu_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

mqs_store *tu_open_uri(const char *uri)
{
    mqs_store *s = NULL;
    int rc = mqs_open(uri, NULL, &s);
    if (rc != 0) {
        char masked[1024];
        mqs_uri_mask(uri, masked, sizeof masked);
        fail_msg("mqs_open(%s) -> %s: %s", masked, mqs_errname(rc),
                 mqs_errmsg(NULL));
    }
    assert_non_null(s);
    return s;
}

mqs_store *tu_open(void) { return tu_open_uri(g_uri); }

int tu_setup_store(void **state)
{
    mqs_store *s = NULL;
    int rc = mqs_open(g_uri, NULL, &s);
    if (rc != 0) {
        fprintf(stderr, "setup: mqs_open -> %s: %s\n", mqs_errname(rc),
                mqs_errmsg(NULL));
        return -1;
    }
    *state = s;
    return 0;
}

int tu_teardown_store(void **state)
{
    mqs_close(*state);
    *state = NULL;
    return 0;
}

mqs_msg tu_msg(mqs_kind kind, const char *dest, const void *body, size_t len,
               int priority)
{
    mqs_msg m;
    memset(&m, 0, sizeof m);
    m.kind = kind;
    m.dest = dest;
    m.body = body;
    m.body_len = len;
    m.priority = priority;
    return m;
}

void tu_fill(void *buf, size_t len, uint64_t seed)
{
    unsigned char *p = buf;
    uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL;
    for (size_t i = 0; i < len; i++) {
        /* xorshift64: cheap, and every byte depends on the seed */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)(x >> 24);
    }
}

uint64_t tu_fnv(const void *buf, size_t len, uint64_t h)
{
    const unsigned char *p = buf;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static char *dup_or_null(const char *s)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    assert_non_null(d);
    return d;
}

static unsigned char *dup_bytes(const void *p, size_t n)
{
    /* Always allocate, so a NULL pointer with n == 0 still compares. */
    unsigned char *d = malloc(n ? n : 1);
    assert_non_null(d);
    if (n) {
        assert_non_null(p);
        memcpy(d, p, n);
    }
    return d;
}

#define TU_CURSOR_MAX 200000L
#define TU_CURSOR_MAX_BYTES (256u << 20)
#define TU_CURSOR_MAX_SEEN 50000000L

int tu_collect(mqs_store *s, const mqs_cursor_opts *opts, const char *prefix,
               tu_list *out)
{
    mqs_cursor *c = NULL;
    size_t plen = prefix ? strlen(prefix) : 0;
    int rc = mqs_cursor_open(s, opts, &c);
    if (rc != 0)
        return rc;
    assert_non_null(c);
    /* Bounds far above any test's backlog: they only stop a cursor that
     * never ends before it eats the machine's memory. Messages of other
     * runs (a shared database) are only counted. */
    long guard = 0, seen = 0;
    size_t bytes = 0;
    for (; guard < TU_CURSOR_MAX && seen < TU_CURSOR_MAX_SEEN; seen++) {
        const mqs_message *m = NULL;
        rc = mqs_cursor_next(c, &m);
        if (rc <= 0)
            break;
        assert_non_null(m);
        assert_non_null(m->dest);
        if (prefix && strncmp(m->dest, prefix, plen) != 0)
            continue;
        guard++;
        bytes += m->headers_len + m->body_len;
        if (bytes > TU_CURSOR_MAX_BYTES) {
            mqs_cursor_close(c);
            fail_msg("cursor returned over %zu bytes after %ld messages: it "
                     "does not end",
                     (size_t)TU_CURSOR_MAX_BYTES, guard);
        }
        if (out->n == out->cap) {
            out->cap = out->cap ? out->cap * 2 : 64;
            out->v = realloc(out->v, out->cap * sizeof *out->v);
            assert_non_null(out->v);
        }
        tu_rmsg *r = &out->v[out->n++];
        r->id = m->id;
        r->kind = m->kind;
        r->dest = dup_or_null(m->dest);
        r->sub_id = m->sub_id;
        r->sub_name = dup_or_null(m->sub_name);
        r->priority = m->priority;
        r->expires_ms = m->expires_ms;
        r->enqueued_ms = m->enqueued_ms;
        r->redeliveries = m->redeliveries;
        r->headers = dup_bytes(m->headers, m->headers_len);
        r->headers_len = m->headers_len;
        r->body = dup_bytes(m->body, m->body_len);
        r->body_len = m->body_len;
    }
    mqs_cursor_close(c);
    if (guard == TU_CURSOR_MAX || seen == TU_CURSOR_MAX_SEEN)
        fail_msg("cursor returned %ld messages (%ld of ours) and did not end",
                 seen, guard);
    return rc < 0 ? rc : 0;
}

void tu_recover(mqs_store *s, mqs_kind kind, const char *dest,
                const char *sub_name, size_t page_rows, tu_list *out)
{
    mqs_cursor_opts o;
    memset(&o, 0, sizeof o);
    o.kind = kind;
    o.dest = dest;
    o.sub_name = sub_name;
    o.page_rows = page_rows;
    size_t start = out->n;
    TU_OK(tu_collect(s, &o, NULL, out), s);
    /* A cursor on one destination must stay on it. */
    for (size_t i = start; i < out->n; i++) {
        assert_string_equal(out->v[i].dest, dest);
        assert_int_equal(out->v[i].kind, kind);
        if (kind == MQS_QUEUE) {
            assert_int_equal(out->v[i].sub_id, 0);
            assert_null(out->v[i].sub_name);
        } else {
            assert_true(out->v[i].sub_id > 0);
            assert_non_null(out->v[i].sub_name);
            if (sub_name)
                assert_string_equal(out->v[i].sub_name, sub_name);
        }
    }
}

void tu_list_free(tu_list *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].dest);
        free(l->v[i].sub_name);
        free(l->v[i].headers);
        free(l->v[i].body);
    }
    free(l->v);
    memset(l, 0, sizeof *l);
}

long tu_list_find(const tu_list *l, int64_t id, int64_t sub_id)
{
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i].id == id && (sub_id < 0 || l->v[i].sub_id == sub_id))
            return (long)i;
    return -1;
}

struct pending_q {
    mqs_kind kind;
    const char *dest;
    const char *sub_name;
    int64_t found;
};

static int pending_cb(void *ud, const mqs_dest_info *d)
{
    struct pending_q *q = ud;
    if (d->kind != q->kind || !d->dest || strcmp(d->dest, q->dest) != 0)
        return 0;
    if (q->sub_name) {
        if (!d->sub_name || strcmp(d->sub_name, q->sub_name) != 0)
            return 0;
    } else if (d->sub_id != 0) {
        return 0;
    }
    q->found = (int64_t)d->pending;
    return 1;
}

int64_t tu_pending(mqs_store *s, mqs_kind kind, const char *dest,
                   const char *sub_name)
{
    struct pending_q q = {kind, dest, sub_name, -1};
    TU_OK(mqs_dest_foreach(s, pending_cb, &q), s);
    return q.found;
}

mqs_stats tu_stats(mqs_store *s)
{
    mqs_stats st;
    memset(&st, 0, sizeof st);
    TU_OK(mqs_stats_get(s, &st), s);
    return st;
}

unsigned char *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    unsigned char *buf = NULL;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (size >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)size + 1);
        if (buf && fread(buf, 1, (size_t)size, f) != (size_t)size) {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    if (buf)
        *len = (size_t)size;
    return buf;
}

void tu_unlink_db(const char *path)
{
    static const char *const suffix[] = {"", "-wal", "-shm", "-journal"};
    char p[1024];
    for (size_t i = 0; i < sizeof suffix / sizeof suffix[0]; i++) {
        snprintf(p, sizeof p, "%s%s", path, suffix[i]);
        unlink(p);
    }
}
