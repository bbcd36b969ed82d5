/* errors.c - error codes, per-thread error messages, logging, clocks, and
 * the small helpers the core's files share (strings, growable arrays). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

const char *mqs_strerror(int code)
{
    switch (code) {
    case 0: return "success";
#define MQS_ERRNO_STR_(name, val, msg) case (val): return msg;
    MQS_ERRNO_MAP(MQS_ERRNO_STR_)
#undef MQS_ERRNO_STR_
    default: return "unknown error code";
    }
}

const char *mqs_errname(int code)
{
    switch (code) {
    case 0: return "0";
#define MQS_ERRNO_NAME_(name, val, msg) case (val): return "MQS_" #name;
    MQS_ERRNO_MAP(MQS_ERRNO_NAME_)
#undef MQS_ERRNO_NAME_
    default: return "MQS_E?";
    }
}

/* The message lives per thread: a store is shared by many threads, and a
 * per-handle buffer would let one thread's failure overwrite another's. */
static _Thread_local struct {
    const mqs_store *store;
    char msg[2048];
} tls_err;

int mqs__err(const mqs_store *s, int code, const char *fmt, ...)
{
    /* Format aside first: callers often pass mqs_errmsg() itself as an
     * argument, to re-attribute or extend the previous message. */
    char buf[sizeof tls_err.msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    memcpy(tls_err.msg, buf, sizeof buf);
    tls_err.store = s;
    return code;
}

const char *mqs_errmsg(const mqs_store *s)
{
    return tls_err.store == s ? tls_err.msg : "";
}

static const char *level_name(mqs_log_level l)
{
    switch (l) {
    case MQS_LOG_ERROR: return "error";
    case MQS_LOG_WARN: return "warn";
    case MQS_LOG_INFO: return "info";
    default: return "debug";
    }
}

void mqs__log(mqs_store *s, mqs_log_level lvl, const char *fmt, ...)
{
    if (lvl > s->opts.log_level)
        return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (s->opts.log)
        s->opts.log(s->opts.log_ud, lvl, buf);
    else
        fprintf(stderr, "mqstore %s: %s\n", level_name(lvl), buf);
}

char *mqs__strdup(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

int mqs__grow(void *pp, size_t *cap, size_t need, size_t elem, size_t first)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : first ? first : 1;
    while (n < need) {
        if (n > SIZE_MAX / 2)
            return MQS_ENOMEM;
        n *= 2;
    }
    if (elem && n > SIZE_MAX / elem)
        return MQS_ENOMEM;
    /* *pp is some T *: read and written as bytes, so no T * object is
     * accessed through a void * lvalue. */
    void *p;
    memcpy(&p, pp, sizeof p);
    p = realloc(p, n * elem);
    if (!p)
        return MQS_ENOMEM;
    memcpy(pp, &p, sizeof p);
    *cap = n;
    return 0;
}

static int64_t clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mqs__now_ms(void) { return clock_ms(CLOCK_REALTIME); }
int64_t mqs__mono_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

int64_t mqs__mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void mqs__sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ; /* interrupted: sleep the rest */
}

/* *ts = CLOCK_MONOTONIC now + sec s + nsec ns (nsec < 1 s). */
static void deadline(struct timespec *ts, int64_t sec, long nsec)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)sec;
    ts->tv_nsec += nsec;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

void mqs__deadline(struct timespec *ts, int64_t ms)
{
    if (ms <= 0)
        ms = 0;
    deadline(ts, ms / 1000, (long)(ms % 1000) * 1000000L);
}

void mqs__deadline_us(struct timespec *ts, int64_t us)
{
    if (us <= 0)
        us = 0;
    deadline(ts, us / 1000000, (long)(us % 1000000) * 1000L);
}
