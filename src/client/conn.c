/* conn.c - mqc_open/mqc_close, waiting for a connection, stats, and the
 * dispatch thread that runs every callback of a connection. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* How long mqc_close waits for the DISCONNECT receipt. */
enum { CLOSE_WAIT_MS = 2000 };

int64_t mqc__deadline(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
}

static void timed_wait(pthread_cond_t *cv, pthread_mutex_t *mu, int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int64_t ns = (int64_t)ts.tv_nsec + ms * 1000000;
    ts.tv_sec += (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    pthread_cond_timedwait(cv, mu, &ts);
}

bool mqc__cv_wait(mqc_conn *c, pthread_cond_t *cv, int64_t deadline)
{
    int64_t now = mono_ms();
    if (deadline >= 0 && now >= deadline)
        return false;
    c->waiters++;
    if (deadline < 0)
        pthread_cond_wait(cv, &c->mu);
    else
        timed_wait(cv, &c->mu, deadline - now);
    if (--c->waiters == 0 && c->closing)
        pthread_cond_broadcast(&c->cv); /* mqc_close waits for this */
    return deadline < 0 || mono_ms() < deadline;
}

static void cond_init_mono(pthread_cond_t *cv)
{
    pthread_condattr_t a;
    pthread_condattr_init(&a);
    pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    pthread_cond_init(cv, &a);
    pthread_condattr_destroy(&a);
}

void mqc__wake(mqc_conn *c)
{
    uint64_t one = 1;
    ssize_t n = write(c->wake_fd, &one, sizeof one);
    (void)n; /* a full counter still wakes the poller */
}

/* ---- events -------------------------------------------------------------- */

mqc_ev *mqc__ev_new(ev_type t)
{
    mqc_ev *e = xcalloc(1, sizeof *e);
    e->type = t;
    q_init(&e->link);
    return e;
}

void mqc__ev_free(mqc_ev *e)
{
    if (!e)
        return;
    free(e->text);
    if (e->msg)
        mqc_msg_free(e->msg);
    if (e->type == EV_COMMAND) {
        for (size_t i = 0; i < e->frame.nheaders; i++) {
            free((void *)(uintptr_t)e->frame.headers[i].name);
            free((void *)(uintptr_t)e->frame.headers[i].value);
        }
        free((void *)(uintptr_t)e->frame.headers);
        free((void *)(uintptr_t)e->frame.body);
        free((void *)(uintptr_t)e->frame.command);
    }
    free(e);
}

void mqc__emit(mqc_conn *c, mqc_ev *e)
{
    q_push_back(&c->events, &e->link);
    pthread_cond_signal(&c->disp_cv);
}

static void vlog(mqc_conn *c, mqc_log_level lvl, const char *fmt, va_list ap)
{
    if ((int)lvl > (int)c->log_level)
        return;
    char line[1024];
    vsnprintf(line, sizeof line, fmt, ap);
    mqc_ev *e = mqc__ev_new(EV_LOG);
    e->code = (int)lvl;
    e->text = xstrdup(line);
    mqc__emit(c, e);
}

void mqc__log(mqc_conn *c, mqc_log_level lvl, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(c, lvl, fmt, ap);
    va_end(ap);
}

void mqc__exception(mqc_conn *c, int code, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    mqc__log(c, MQC_LOG_ERROR, "%s", line);
    if (!c->listener.exception)
        return;
    mqc_ev *e = mqc__ev_new(EV_EXCEPTION);
    e->code = code;
    e->text = xstrdup(line);
    mqc__emit(c, e);
}

bool mqc__on_dispatch_thread(mqc_conn *c)
{
    return c->disp_started && pthread_equal(pthread_self(), c->disp_tid);
}

static void run_event(mqc_conn *c, mqc_ev *e)
{
    const mqc_listener *L = &c->listener;
    switch (e->type) {
    case EV_MSG:
        mqc__deliver(c, e);
        break;
    case EV_SEND_DONE:
        if (e->cb)
            e->cb(e->ud, e->code, e->code ? e->text : NULL);
        pthread_mutex_lock(&c->mu);
        c->async_cb_pending--;
        pthread_cond_broadcast(&c->cv);
        pthread_mutex_unlock(&c->mu);
        break;
    case EV_INTERRUPTED:
        if (L->interrupted)
            L->interrupted(L->ud, e->text);
        break;
    case EV_RESUMED:
        if (L->resumed)
            L->resumed(L->ud, e->text);
        break;
    case EV_EXCEPTION:
        if (L->exception)
            L->exception(L->ud, e->code, e->text);
        break;
    case EV_COMMAND:
        if (L->command)
            L->command(L->ud, &e->frame);
        break;
    case EV_LOG:
        if (c->log) {
            c->log(c->log_ud, (mqc_log_level)e->code, e->text);
        } else {
            static const char *const names[] = {"ERROR", "WARN", "INFO",
                                                "DEBUG"};
            char line[1200];
            int n = snprintf(line, sizeof line, "mqclient %s: %s\n",
                             names[e->code & 3], e->text);
            if (n > (int)sizeof line - 1)
                n = (int)sizeof line - 1;
            /* One write keeps lines whole between threads. */
            fwrite(line, 1, (size_t)n, stderr);
        }
        break;
    }
}

static void *disp_main(void *arg)
{
    mqc_conn *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        if (!q_empty(&c->events)) {
            mqc_ev *e = container_of(c->events.next, mqc_ev, link);
            q_remove(&e->link);
            if (c->disp_stop && e->type == EV_MSG) {
                /* Closing: undelivered messages are dropped, but every
                 * completion and event still reaches the application. */
                mqc__ev_free(e);
                continue;
            }
            pthread_mutex_unlock(&c->mu);
            run_event(c, e);
            mqc__ev_free(e);
            pthread_mutex_lock(&c->mu);
            continue;
        }
        if (c->disp_stop)
            break;
        int64_t due = -1;
        if (!q_empty(&c->timers)) {
            mqc_ev *t = container_of(c->timers.next, mqc_ev, link);
            if (t->due <= mono_ms()) {
                q_remove(&t->link);
                pthread_mutex_unlock(&c->mu);
                mqc__deliver(c, t);
                mqc__ev_free(t);
                pthread_mutex_lock(&c->mu);
                continue;
            }
            due = t->due;
        }
        /* Not mqc__cv_wait: the idle dispatch thread is no waiter that
         * mqc_close should wait for. */
        if (due < 0)
            pthread_cond_wait(&c->disp_cv, &c->mu);
        else if (due > mono_ms())
            timed_wait(&c->disp_cv, &c->mu, due - mono_ms());
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* ---- open ---------------------------------------------------------------- */

static void make_producer_id(char out[33])
{
    unsigned char r[16];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = getrandom(r + got, sizeof r - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* No entropy source: time and address still make it unique
             * enough per process run. */
            uint64_t t = (uint64_t)wall_ms() ^ ((uint64_t)mono_ms() << 20) ^
                         (uint64_t)(uintptr_t)out ^ (uint64_t)getpid() << 40;
            for (; got < sizeof r; got++, t = t * 6364136223846793005ULL + 1)
                r[got] = (unsigned char)(t >> 33);
            break;
        }
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof r; i++) {
        out[2 * i] = hex[r[i] >> 4];
        out[2 * i + 1] = hex[r[i] & 15];
    }
    out[32] = '\0';
}

static char *dup_or_null(const char *s) { return s ? xstrdup(s) : NULL; }

/* Headers send_connect() writes itself: a second copy would be ignored by
 * the broker (the first one counts) or, for login/passcode, bypass the
 * secrets handling. */
static const char *const reserved_connect[] = {
    "accept-version", "host", "heart-beat", "login", "passcode", "client-id",
};

int mqc__check_connect_headers(const mqc_conn_opts *opts, const char *what)
{
    if (!opts || opts->nconnect_headers == 0)
        return 0;
    if (!opts->connect_headers)
        return mqc__err(NULL, MQC_EINVAL, "%s: opts.nconnect_headers is %zu "
                        "but opts.connect_headers is NULL",
                        what, opts->nconnect_headers);
    for (size_t i = 0; i < opts->nconnect_headers; i++) {
        const mqc_header *h = &opts->connect_headers[i];
        if (!h->name || !*h->name || !h->value)
            return mqc__err(NULL, MQC_EINVAL, "%s: opts.connect_headers[%zu] "
                            "has a NULL or empty name or a NULL value",
                            what, i);
        /* CONNECT headers are not escaped (STOMP 1.2). */
        if (strpbrk(h->name, "\r\n:") || strpbrk(h->value, "\r\n"))
            return mqc__err(NULL, MQC_EINVAL, "%s: opts.connect_headers[%zu] "
                            "('%s'): a line break, or ':' in the name, cannot "
                            "be carried by STOMP's CONNECT frame",
                            what, i, strpbrk(h->name, "\r\n") ? "?" : h->name);
        for (size_t k = 0;
             k < sizeof reserved_connect / sizeof reserved_connect[0]; k++)
            if (!strcasecmp(h->name, reserved_connect[k]))
                return mqc__err(NULL, MQC_EINVAL, "%s: opts.connect_headers"
                                "[%zu]: '%s' is written by the library itself; "
                                "use the matching mqc_conn_opts member or URI "
                                "option",
                                what, i, h->name);
    }
    return 0;
}

static void wipe_free(char *s)
{
    if (!s)
        return;
    volatile char *v = s;
    while (*v)
        *v++ = '\0';
    free(s);
}

int mqc_open(const char *uri, const mqc_conn_opts *opts, mqc_conn **out)
{
    if (!out)
        return mqc__err(NULL, MQC_EINVAL, "mqc_open: out is NULL");
    *out = NULL;
    if (!uri || !*uri)
        return mqc__err(NULL, MQC_EINVAL,
                        "mqc_open: no URI given; pass e.g. "
                        "\"failover:(tcp://127.0.0.1:61613)\"");
    if (opts) {
        /* CONNECT headers are not escaped (STOMP 1.2): a line break would
         * split the frame. The value itself is never quoted back. */
        const char *f[] = {opts->login, opts->passcode, opts->vhost,
                           opts->client_id};
        const char *names[] = {"login", "passcode", "vhost", "client_id"};
        for (int i = 0; i < 4; i++)
            if (f[i] && strpbrk(f[i], "\r\n"))
                return mqc__err(NULL, MQC_EINVAL, "mqc_open: opts.%s contains "
                                "a line break, which STOMP's CONNECT frame "
                                "cannot carry", names[i]);
        int rc = mqc__check_connect_headers(opts, "mqc_open");
        if (rc)
            return rc;
    }
    mqc_config cfg;
    char err[512];
    if (mqc__uri_parse(uri, &cfg, err, sizeof err) != 0)
        return mqc__err(NULL, MQC_EINVAL, "mqc_open: %s (see docs/client.md "
                        "for the URI options)", err);
    if (cfg.nservers == 0) {
        mqc__config_free(&cfg);
        return mqc__err(NULL, MQC_EINVAL,
                        "mqc_open: the URI names no broker");
    }
    mqc_conn *c = xcalloc(1, sizeof *c);
    c->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (c->wake_fd < 0) {
        int e = errno;
        mqc__config_free(&cfg);
        free(c);
        return mqc__err(NULL, e == ENOMEM ? MQC_ENOMEM : MQC_ECONN,
                        "mqc_open: eventfd: %s", strerror(e));
    }
    c->cfg = cfg;
    atomic_init(&c->refs, 1);
    pthread_mutex_init(&c->mu, NULL);
    cond_init_mono(&c->cv);
    cond_init_mono(&c->disp_cv);
    q_init(&c->ops);
    q_init(&c->subs);
    q_init(&c->txns);
    q_init(&c->events);
    q_init(&c->timers);
    mqc__link_init(&c->primary);
    mqc__link_init(&c->spare);
    if (opts) {
        c->login = dup_or_null(opts->login);
        c->passcode = dup_or_null(opts->passcode);
        c->vhost = dup_or_null(opts->vhost);
        c->client_id = dup_or_null(opts->client_id);
        if (opts->nconnect_headers) {
            c->connect_headers =
                xcalloc(opts->nconnect_headers, sizeof *c->connect_headers);
            for (size_t i = 0; i < opts->nconnect_headers; i++) {
                c->connect_headers[i].name =
                    xstrdup(opts->connect_headers[i].name);
                c->connect_headers[i].value =
                    xstrdup(opts->connect_headers[i].value);
            }
            c->nconnect_headers = opts->nconnect_headers;
        }
        c->listener = opts->listener;
        c->log = opts->log;
        c->log_ud = opts->log_ud;
        c->log_level = opts->log_level;
    }
    if (c->log_level == MQC_LOG_ERROR)
        c->log_level = MQC_LOG_WARN; /* 0 = the default, WARN */
    make_producer_id(c->producer);
    c->next_seq = c->next_receipt = c->next_sub = c->next_txn = 1;
    c->state = C_CONNECTING;

    int rc = pthread_create(&c->disp_tid, NULL, disp_main, c);
    if (rc == 0) {
        c->disp_started = true;
        rc = pthread_create(&c->io_tid, NULL, mqc__io_main, c);
        if (rc == 0)
            c->io_started = true;
    }
    if (rc != 0) {
        mqc_close(c);
        return mqc__err(NULL, MQC_ENOMEM, "mqc_open: cannot start a thread: %s",
                        strerror(rc));
    }
    *out = c;
    mqc__err_clear(NULL);
    return 0;
}

int mqc_uri_check(const char *uri)
{
    if (!uri || !*uri)
        return mqc__err(NULL, MQC_EINVAL, "mqc_uri_check: no URI given");
    mqc_config cfg;
    char err[512];
    if (mqc__uri_parse(uri, &cfg, err, sizeof err) != 0)
        return mqc__err(NULL, MQC_EINVAL, "%s", err);
    size_t n = cfg.nservers;
    mqc__config_free(&cfg);
    if (n == 0)
        return mqc__err(NULL, MQC_EINVAL, "the URI names no broker");
    mqc__err_clear(NULL);
    return 0;
}

/* ---- waiting ------------------------------------------------------------- */

static int state_error(mqc_conn *c, const char *what)
{
    if (c->closing)
        return mqc__err(c, MQC_ECLOSED, "%s: the connection is closed", what);
    return mqc__err(c, c->fail_code ? c->fail_code : MQC_ECONN, "%s: %s", what,
                    c->fail_msg[0] ? c->fail_msg : "not connected");
}

static void broker_list(mqc_conn *c, char *out, size_t len)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < c->cfg.nservers && o + 1 < len; i++) {
        int n = snprintf(out + o, len - o, "%s%s", i ? "," : "",
                         c->cfg.servers[i].uri);
        if (n < 0)
            break;
        o += (size_t)n;
    }
}

int mqc__wait_ready(mqc_conn *c, const char *what)
{
    int64_t deadline = mqc__deadline(c->cfg.timeout_ms);
    for (;;) {
        if (c->closing || c->state == C_FAILED)
            return state_error(c, what);
        if (c->state == C_CONNECTED)
            return 0;
        if (!mqc__cv_wait(c, &c->cv, deadline)) {
            if (c->state == C_CONNECTED)
                return 0;
            char list[600];
            broker_list(c, list, sizeof list);
            return mqc__err(c, MQC_ETIMEDOUT,
                            "%s: no broker connection within timeout=%d ms "
                            "(brokers %s; last error: %s); the connection "
                            "keeps trying, retry later or raise timeout",
                            what, c->cfg.timeout_ms, list,
                            c->last_err[0] ? c->last_err : "none yet");
        }
    }
}

int mqc_wait_connected(mqc_conn *c, int timeout_ms)
{
    if (!c)
        return mqc__err(NULL, MQC_EINVAL, "mqc_wait_connected: c is NULL");
    pthread_mutex_lock(&c->mu);
    int64_t deadline = mqc__deadline(timeout_ms);
    int rc;
    for (;;) {
        if (c->closing || c->state == C_FAILED) {
            rc = state_error(c, "mqc_wait_connected");
            break;
        }
        if (c->state == C_CONNECTED) {
            rc = 0;
            break;
        }
        if (!mqc__cv_wait(c, &c->cv, deadline) && c->state != C_CONNECTED) {
            char list[600];
            broker_list(c, list, sizeof list);
            rc = mqc__err(c, MQC_ETIMEDOUT,
                          "mqc_wait_connected: not connected after %d ms "
                          "(brokers %s; last error: %s)",
                          timeout_ms, list,
                          c->last_err[0] ? c->last_err : "none yet");
            break;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

bool mqc__conn_broken(mqc_conn *c)
{
    if (!c)
        return true;
    pthread_mutex_lock(&c->mu);
    bool b = c->closing || c->state == C_FAILED;
    pthread_mutex_unlock(&c->mu);
    return b;
}

size_t mqc_current_broker(mqc_conn *c, char *out, size_t len)
{
    if (!c) {
        if (out && len)
            out[0] = '\0';
        return 0;
    }
    pthread_mutex_lock(&c->mu);
    const char *s = c->state == C_CONNECTED ? c->current : "";
    size_t n = strlen(s);
    if (out && len) {
        size_t k = n < len - 1 ? n : len - 1;
        memcpy(out, s, k);
        out[k] = '\0';
    }
    pthread_mutex_unlock(&c->mu);
    return n;
}

void mqc_get_stats(mqc_conn *c, mqc_stats *out)
{
    if (!out)
        return;
    memset(out, 0, sizeof *out);
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    *out = c->stats;
    pthread_mutex_unlock(&c->mu);
}

/* ---- close --------------------------------------------------------------- */

void mqc__conn_unref(mqc_conn *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    pthread_cond_destroy(&c->disp_cv);
    free(c);
}

void mqc_close(mqc_conn *c)
{
    if (!c)
        return;
    if (mqc__on_dispatch_thread(c)) {
        /* Joining the dispatch thread from itself would deadlock. */
        pthread_mutex_lock(&c->mu);
        mqc__log(c, MQC_LOG_ERROR,
                 "mqc_close called from a callback of the same connection: "
                 "ignored (close it from another thread)");
        pthread_mutex_unlock(&c->mu);
        return;
    }
    pthread_mutex_lock(&c->mu);
    if (c->closing) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (c->state == C_CONNECTED && c->primary.st == L_READY) {
        c->disconnecting = true;
        mqc_op *op = mqc__op_new(c, OP_DISCONNECT);
        frame_begin(&op->frame, "DISCONNECT");
        char r[32];
        snprintf(r, sizeof r, "%llu", (unsigned long long)op->receipt);
        mqc__put(&op->frame, "receipt", r);
        frame_end(&op->frame, NULL, 0, false);
        mqc__op_submit(c, op);
        int64_t deadline = mono_ms() + CLOSE_WAIT_MS;
        while (!op->done && c->state == C_CONNECTED &&
               mqc__cv_wait(c, &c->cv, deadline))
            ;
        if (!op->done) {
            q_remove(&op->link);
            idmap_del(&c->op_by_receipt, op->receipt);
        }
        mqc__op_free(op);
    }
    c->closing = true;
    c->io_stop = true;
    mqc__wake(c);
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->io_started)
        pthread_join(c->io_tid, NULL);

    pthread_mutex_lock(&c->mu);
    mqc__link_close(&c->primary);
    mqc__link_close(&c->spare);
    if (c->state != C_FAILED) {
        c->state = C_FAILED;
        c->fail_code = MQC_ECLOSED;
        snprintf(c->fail_msg, sizeof c->fail_msg, "the connection is closed");
    }
    mqc__ops_fail_all(c, MQC_ECLOSED, "the connection was closed (mqc_close) "
                      "before the broker confirmed this send");
    /* Threads still blocked in calls on c (and callbacks blocked in sync
     * calls) see `closing` and leave before anything is freed. */
    pthread_cond_broadcast(&c->cv);
    for (qlink *n = c->subs.next; n != &c->subs; n = n->next)
        pthread_cond_broadcast(&container_of(n, mqc_sub, link)->cv);
    for (int i = 0; c->waiters > 0 && i < 100; i++)
        timed_wait(&c->cv, &c->mu, 100);
    mqc__subs_free(c);
    c->disp_stop = true;
    pthread_cond_signal(&c->disp_cv);
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (c->disp_started)
        pthread_join(c->disp_tid, NULL);

    /* Nothing runs any more: free. */
    while (!q_empty(&c->events)) {
        mqc_ev *e = container_of(c->events.next, mqc_ev, link);
        q_remove(&e->link);
        mqc__ev_free(e);
    }
    while (!q_empty(&c->timers)) {
        mqc_ev *e = container_of(c->timers.next, mqc_ev, link);
        q_remove(&e->link);
        mqc__ev_free(e);
    }
    mqc__txns_free(c);
    idmap_free(&c->op_by_receipt);
    for (size_t i = 0; i < c->norder; i++)
        mqc__server_free(&c->order[i]);
    free(c->order);
    free(c->reconnect_to);
    mqc__config_free(&c->cfg);
    free(c->login);
    wipe_free(c->passcode);
    c->passcode = NULL;
    free(c->vhost);
    free(c->client_id);
    for (size_t i = 0; i < c->nconnect_headers; i++) {
        free((void *)(uintptr_t)c->connect_headers[i].name);
        free((void *)(uintptr_t)c->connect_headers[i].value);
    }
    free(c->connect_headers);
    close(c->wake_fd);
    c->closed = true;
    mqc__conn_unref(c);
}
