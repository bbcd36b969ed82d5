/* errors.c - error codes, per-thread error messages, logging, clocks. */
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

static int64_t clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t mqs__now_ms(void) { return clock_ms(CLOCK_REALTIME); }
int64_t mqs__mono_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

void mqs__sleep_ms(int64_t ms)
{
    if (ms <= 0)
        return;
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ; /* interrupted: sleep the rest */
}

void mqs__deadline(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    if (ms <= 0)
        return;
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}
