/* failover.c - the I/O thread: the reconnect loop (ActiveMQ's failover
 * transport: passes over the broker list with back-off, randomize, attempt
 * budgets, updateURIsURL, mq-brokers, mq-reconnect-to), the backup spare
 * connection, and what happens when a connection is made or lost. */
#include "internal.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

static void server_dup(mqc_server *dst, const mqc_server *src)
{
    *dst = *src;
    dst->uri = xstrdup(src->uri);
    dst->host = xstrdup(src->host);
    dst->tls_ca = src->tls_ca ? xstrdup(src->tls_ca) : NULL;
    dst->tls_cert = src->tls_cert ? xstrdup(src->tls_cert) : NULL;
    dst->tls_key = src->tls_key ? xstrdup(src->tls_key) : NULL;
}

static void order_free(mqc_conn *c)
{
    for (size_t i = 0; i < c->norder; i++)
        mqc__server_free(&c->order[i]);
    free(c->order);
    c->order = NULL;
    c->norder = c->pos = 0;
    c->in_pass = false;
}

static uint64_t rnd64(void)
{
    uint64_t r;
    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r = (uint64_t)mono_ms() * 0x9e3779b97f4a7c15ULL ^ (uint64_t)wall_ms();
    return r;
}

static void replace_servers(mqc_conn *c, mqc_server *list, size_t n)
{
    for (size_t i = 0; i < c->cfg.nservers; i++)
        mqc__server_free(&c->cfg.servers[i]);
    free(c->cfg.servers);
    c->cfg.servers = list;
    c->cfg.nservers = n;
}

static void list_text(const mqc_server *s, size_t n, char *out, size_t len)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && o + 1 < len; i++) {
        int k = snprintf(out + o, len - o, "%s%s", i ? "," : "", s[i].uri);
        if (k < 0)
            break;
        o += (size_t)k;
    }
}

/* Start a pass: re-read updateURIsURL, then order the brokers: a
 * reconnect-to target first, the rest shuffled (randomize) or in list
 * order with the broker just lost moved last. */
static void begin_pass(mqc_conn *c)
{
    order_free(c);
    if (c->cfg.failover && c->cfg.update_uris_url) {
        mqc_server *list = NULL;
        size_t n = 0;
        char err[512] = "";
        int rc = mqc__server_list_read(&c->cfg, &list, &n, err, sizeof err);
        if (rc == 0 && n > 0) {
            replace_servers(c, list, n);
            c->url_warned = false;
        } else {
            if (!c->url_warned)
                mqc__log(c, MQC_LOG_WARN, "updateURIsURL %s: %s (keeping "
                         "the current broker list)", c->cfg.update_uris_url,
                         rc ? err : "no broker in the file");
            c->url_warned = true;
            for (size_t i = 0; rc == 0 && i < n; i++)
                mqc__server_free(&list[i]);
            free(list);
        }
    }
    size_t cap = c->cfg.nservers + 1;
    c->order = xcalloc(cap, sizeof *c->order);
    if (c->reconnect_to) {
        char err[256];
        if (mqc__server_parse(&c->cfg, c->reconnect_to, &c->order[0], err,
                              sizeof err) == 0)
            c->norder = 1;
        else
            mqc__log(c, MQC_LOG_WARN, "ignoring mq-reconnect-to '%s': %s",
                     c->reconnect_to, err);
        free(c->reconnect_to);
        c->reconnect_to = NULL;
    }
    size_t first = c->norder;
    for (size_t i = 0; i < c->cfg.nservers; i++) {
        if (first && !strcmp(c->cfg.servers[i].uri, c->order[0].uri))
            continue;
        server_dup(&c->order[c->norder++], &c->cfg.servers[i]);
    }
    size_t n = c->norder - first;
    if (c->cfg.randomize && n > 1) {
        for (size_t i = n - 1; i > 0; i--) {
            size_t j = (size_t)(rnd64() % (i + 1));
            mqc_server t = c->order[first + i];
            c->order[first + i] = c->order[first + j];
            c->order[first + j] = t;
        }
    } else if (c->last_lost[0] && n > 1) {
        for (size_t i = first; i < c->norder - 1; i++) {
            if (!strcmp(c->order[i].uri, c->last_lost)) {
                mqc_server t = c->order[i];
                memmove(&c->order[i], &c->order[i + 1],
                        (c->norder - 1 - i) * sizeof *c->order);
                c->order[c->norder - 1] = t;
                break;
            }
        }
    }
    c->pos = 0;
    c->in_pass = true;
}

static void give_up(mqc_conn *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void give_up(mqc_conn *c, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->fail_msg, sizeof c->fail_msg, fmt, ap);
    va_end(ap);
    c->state = C_FAILED;
    c->fail_code = code;
    c->current[0] = '\0';
    order_free(c);
    mqc__link_close(&c->spare);
    mqc__exception(c, code, "%s", c->fail_msg);
    mqc__ops_fail_all(c, code, c->fail_msg);
    mqc__txns_on_loss(c);
    pthread_cond_broadcast(&c->cv);
}

/* The primary link failed before CONNECTED. */
static void attempt_failed(mqc_conn *c, int64_t now)
{
    mqc_link *l = &c->primary;
    int code = l->err_code ? l->err_code : MQC_ECONN;
    snprintf(c->last_err, sizeof c->last_err, "%s", l->err);
    c->stats.reconnect_attempts++;
    mqc__log(c, MQC_LOG_DEBUG, "connect attempt failed: %s", l->err);
    mqc__link_close(l);
    if (!c->cfg.failover) {
        give_up(c, code, "%s (a plain tcp:// URI does not retry; use "
                "failover:(tcp://...) to reconnect)", c->last_err);
        return;
    }
    if (++c->pos < c->norder) {
        c->next_try = now; /* next broker of this pass at once */
        return;
    }
    c->failures++;
    char list[600];
    list_text(c->order, c->norder, list, sizeof list);
    order_free(c);
    int warn = c->cfg.warn_after_reconnect_attempts;
    if (warn > 0 && c->failures % warn == 0)
        mqc__log(c, MQC_LOG_WARN, "failed to connect to [%s] after %d "
                 "attempt(s), continuing to retry; last error: %s", list,
                 c->failures, c->last_err);
    int budget = mqc__attempt_budget(&c->cfg, c->ever_connected);
    if (budget >= 0 && c->failures >= budget) {
        give_up(c, MQC_EGAVEUP, "gave up connecting to [%s] after %d "
                "attempt(s) (%s=%d); last error: %s", list, c->failures,
                c->ever_connected || !c->cfg.startup_max_reconnect_attempts
                    ? "maxReconnectAttempts"
                    : "startupMaxReconnectAttempts",
                budget, c->last_err);
        return;
    }
    c->next_try = now + mqc__backoff_ms(&c->cfg, c->failures);
}

static void established(mqc_conn *c)
{
    int64_t now = mono_ms();
    c->gen++;
    c->state = C_CONNECTED;
    c->ever_connected = true;
    snprintf(c->current, sizeof c->current, "%s", c->primary.uri);
    c->stats.connects++;
    c->failures = 0;
    order_free(c);
    mqc__log(c, MQC_LOG_INFO, "connected to %s", c->current);
    mqc__subs_on_connect(c);
    mqc__ops_on_connect(c);
    if (c->interrupted) {
        c->interrupted = false;
        if (c->listener.resumed) {
            mqc_ev *e = mqc__ev_new(EV_RESUMED);
            e->text = xstrdup(c->current);
            mqc__emit(c, e);
        }
    }
    if (c->spare.st != L_NONE && c->spare.uri &&
        !strcmp(c->spare.uri, c->current))
        mqc__link_close(&c->spare);
    c->spare_next = now;
    pthread_cond_broadcast(&c->cv);
}

static void connection_lost(mqc_conn *c, int code, const char *why_in)
{
    int64_t now = mono_ms();
    char why[512]; /* why_in is the link's; the link is closed below */
    snprintf(why, sizeof why, "%s", why_in);
    if (c->disconnecting) {
        /* mqc_close's DISCONNECT: the broker closing is the answer. */
        mqc__link_close(&c->primary);
        c->state = C_FAILED;
        c->fail_code = MQC_ECLOSED;
        snprintf(c->fail_msg, sizeof c->fail_msg, "the connection is closed");
        mqc__ops_fail_all(c, MQC_ECLOSED, c->fail_msg);
        pthread_cond_broadcast(&c->cv);
        return;
    }
    char lost[sizeof c->current];
    snprintf(lost, sizeof lost, "%s", c->current);
    snprintf(c->last_err, sizeof c->last_err, "%s", why);
    snprintf(c->last_lost, sizeof c->last_lost, "%s", lost);
    mqc__link_close(&c->primary);
    c->state = C_CONNECTING;
    c->lost_at = now;
    c->current[0] = '\0';
    mqc__txns_on_loss(c);
    if (!c->cfg.failover) {
        c->state = C_FAILED;
        c->fail_code = MQC_ECONN;
        snprintf(c->fail_msg, sizeof c->fail_msg,
                 "connection to %s lost: %s (a plain tcp:// URI does not "
                 "reconnect; use failover:(tcp://...) for that)", lost, why);
        mqc__exception(c, code == MQC_EPROTO || code == MQC_ETOOBIG
                              ? code : MQC_ECONN, "%s", c->fail_msg);
        mqc__ops_fail_all(c, MQC_ECONN, c->fail_msg);
        pthread_cond_broadcast(&c->cv);
        return;
    }
    /* A move the broker asked for is no trouble: INFO, not WARN. */
    mqc__log(c, c->reconnect_to ? MQC_LOG_INFO : MQC_LOG_WARN,
             "connection to %s lost: %s; failing over", lost, why);
    if (!c->interrupted) {
        c->interrupted = true;
        if (c->listener.interrupted) {
            mqc_ev *e = mqc__ev_new(EV_INTERRUPTED);
            e->text = xstrdup(lost);
            mqc__emit(c, e);
        }
    }
    mqc__ops_on_loss(c, true);
    mqc__subs_on_loss(c);
    c->failures = 0;
    order_free(c);
    c->next_try = now;
    if (c->spare.st == L_READY && !c->reconnect_to) {
        /* backup=true: switch to the spare without a connect round trip. */
        mqc__log(c, MQC_LOG_INFO, "switching to the backup connection %s",
                 c->spare.uri);
        c->primary = c->spare;
        mqc__link_init(&c->spare);
        established(c);
        return;
    }
    pthread_cond_broadcast(&c->cv);
}

/* ---- frames on a READY link ------------------------------------------------ */

static void emit_command(mqc_conn *c, const frame *f)
{
    mqc_ev *e = mqc__ev_new(EV_COMMAND);
    e->frame.command = xstrdup(f->command);
    mqc_header *h = xcalloc(f->nheaders ? f->nheaders : 1, sizeof *h);
    for (size_t i = 0; i < f->nheaders; i++) {
        h[i].name = xstrdup(f->headers[i].name);
        /* The listener never sees a passcode (STOMP brokers do not echo
         * one, but a misbehaving one could). */
        h[i].value = xstrdup(strcmp(f->headers[i].name, "passcode")
                                 ? f->headers[i].value : "********");
    }
    e->frame.headers = h;
    e->frame.nheaders = f->nheaders;
    char *body = xmalloc(f->body_len + 1);
    memcpy(body, f->body, f->body_len);
    body[f->body_len] = '\0';
    e->frame.body = body;
    e->frame.body_len = f->body_len;
    mqc__emit(c, e);
}

static void on_connected_headers(mqc_conn *c, const frame *f)
{
    const char *brokers = frame_get(f, "mq-brokers");
    if (!brokers || !c->cfg.failover || !c->cfg.update_uris_supported)
        return;
    mqc_server *list = NULL;
    size_t n = 0;
    char err[512];
    if (mqc__server_list_parse(&c->cfg, brokers, &list, &n, err, sizeof err) ||
        n == 0) {
        mqc__log(c, MQC_LOG_WARN, "ignoring mq-brokers '%s' from %s: %s",
                 brokers, c->primary.uri, n == 0 ? "empty list" : err);
        free(list);
        return;
    }
    char text[600];
    list_text(list, n, text, sizeof text);
    mqc__log(c, MQC_LOG_INFO, "broker list updated by %s: %s",
             c->primary.uri, text);
    replace_servers(c, list, n);
}

bool mqc__on_frame(mqc_conn *c, mqc_link *l, const frame *f)
{
    if (l == &c->spare) {
        if (f->cmd == CMD_CONNECTED)
            mqc__log(c, MQC_LOG_DEBUG, "backup connection to %s ready",
                     l->uri);
        if (f->cmd == CMD_ERROR) {
            const char *m = frame_get(f, "message");
            snprintf(l->err, sizeof l->err, "backup %s sent ERROR: %s", l->uri,
                     m ? m : "(no message)");
            l->err_code = MQC_EBROKER;
            return false;
        }
        return true;
    }
    if (c->listener.command)
        emit_command(c, f);
    switch (f->cmd) {
    case CMD_CONNECTED:
        on_connected_headers(c, f);
        established(c);
        return true;
    case CMD_MESSAGE:
        mqc__on_message(c, f);
        return true;
    case CMD_RECEIPT: {
        const char *id = frame_get(f, "receipt-id");
        c->stats.receipts++;
        if (id)
            mqc__on_receipt(c, id, 0, NULL);
        return true;
    }
    case CMD_ERROR: {
        const char *m = frame_get(f, "message");
        const char *rt = frame_get(f, "mq-reconnect-to");
        const char *rid = frame_get(f, "receipt-id");
        char text[700];
        snprintf(text, sizeof text, "%s sent ERROR: %s%s%.*s", l->uri,
                 m ? m : "(no message)", f->body_len ? ": " : "",
                 (int)(f->body_len > 300 ? 300 : f->body_len), f->body);
        for (char *p = text; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
        if (rt && c->cfg.failover && c->cfg.reconnect_supported) {
            free(c->reconnect_to);
            c->reconnect_to = xstrdup(rt);
            mqc__log(c, MQC_LOG_INFO, "%s asks to reconnect to %s", l->uri,
                     rt);
            if (rid)
                mqc__on_receipt(c, rid, MQC_EBROKER, text);
            snprintf(l->err, sizeof l->err, "%s asked the client to move to "
                     "%s", l->uri, rt);
            l->err_code = MQC_ECONN;
            return false;
        }
        if (rid)
            mqc__on_receipt(c, rid, MQC_EBROKER, text);
        else
            mqc__exception(c, MQC_EBROKER, "%s", text);
        /* STOMP: the broker closes the connection after an ERROR. */
        snprintf(l->err, sizeof l->err, "%.500s", text);
        l->err_code = MQC_EBROKER;
        return false;
    }
    default:
        mqc__log(c, MQC_LOG_DEBUG, "ignoring %s frame from %s", f->command,
                 l->uri);
        return true;
    }
}

/* ---- backup spare ---------------------------------------------------------- */

static void spare_maybe_start(mqc_conn *c, int64_t now)
{
    if (!c->cfg.failover || !c->cfg.backup || c->state != C_CONNECTED ||
        c->spare.st != L_NONE || now < c->spare_next || c->cfg.nservers < 2)
        return;
    /* The broker after the current one in the list. */
    size_t n = c->cfg.nservers, cur = 0;
    for (size_t i = 0; i < n; i++)
        if (!strcmp(c->cfg.servers[i].uri, c->current))
            cur = i;
    for (size_t k = 1; k < n; k++) {
        const mqc_server *s = &c->cfg.servers[(cur + k + c->spare_rr) % n];
        if (!strcmp(s->uri, c->current))
            continue;
        if (!mqc__link_start(c, &c->spare, s)) {
            mqc__log(c, MQC_LOG_DEBUG, "backup: %s", c->spare.err);
            mqc__link_close(&c->spare);
            c->spare_rr++;
            c->spare_next = now + 1000;
        }
        return;
    }
}

static void spare_failed(mqc_conn *c, int64_t now)
{
    mqc__log(c, MQC_LOG_DEBUG, "backup connection: %s", c->spare.err);
    mqc__link_close(&c->spare);
    c->spare_rr++;
    int d = c->cfg.initial_reconnect_delay_ms;
    c->spare_next = now + (d > 1000 ? d : 1000);
}

/* ---- the loop -------------------------------------------------------------- */

static void link_timeout(const mqc_link *l, int64_t *t)
{
    if (l->st == L_NONE)
        return;
    int64_t d;
    if (l->st != L_READY) {
        d = l->deadline;
    } else {
        d = INT64_MAX;
        /* With output pending, POLLOUT wakes us; the beat is not due. */
        if (l->hb_out && buf_used(&l->out) == 0)
            d = l->last_tx + l->hb_out;
        if (l->hb_in && l->last_rx + 2 * l->hb_in + 1 < d)
            d = l->last_rx + 2 * l->hb_in + 1;
    }
    if (d < *t)
        *t = d;
}

static short link_events(const mqc_link *l)
{
    if (l->st == L_TCP)
        return POLLOUT;
    if (l->st == L_TLS) /* the handshake says which way it waits */
        return l->tls_want_write ? POLLOUT : POLLIN;
    return (short)(POLLIN | (buf_used(&l->out) || l->tls_want_write
                                 ? POLLOUT
                                 : 0));
}

static void try_connect_next(mqc_conn *c, int64_t now)
{
    if (!c->in_pass)
        begin_pass(c);
    if (c->norder == 0) {
        give_up(c, MQC_EGAVEUP, "no broker to connect to (empty list)");
        return;
    }
    const mqc_server *s = &c->order[c->pos];
    mqc__log(c, MQC_LOG_DEBUG, "connecting to %s", s->uri);
    if (!mqc__link_start(c, &c->primary, s))
        attempt_failed(c, now);
}

void *mqc__io_main(void *arg)
{
    mqc_conn *c = arg;
    pthread_mutex_lock(&c->mu);
    c->next_try = c->lost_at = mono_ms();
    while (!c->io_stop) {
        int64_t now = mono_ms();
        if (c->state == C_CONNECTING && c->primary.st == L_NONE &&
            now >= c->next_try)
            try_connect_next(c, now);
        spare_maybe_start(c, now);

        struct pollfd pf[3];
        mqc_link *who[3] = {NULL, NULL, NULL};
        int n = 0;
        pf[n].fd = c->wake_fd;
        pf[n].events = POLLIN;
        pf[n++].revents = 0;
        mqc_link *links[2] = {&c->primary, &c->spare};
        for (int i = 0; i < 2; i++) {
            if (links[i]->st == L_NONE || links[i]->fd < 0)
                continue;
            pf[n].fd = links[i]->fd;
            pf[n].events = link_events(links[i]);
            pf[n].revents = 0;
            who[n++] = links[i];
        }
        int64_t t = now + 1000;
        if (c->state == C_CONNECTING && c->primary.st == L_NONE &&
            c->next_try < t)
            t = c->next_try;
        link_timeout(&c->primary, &t);
        link_timeout(&c->spare, &t);
        if (c->cfg.backup && c->state == C_CONNECTED &&
            c->spare.st == L_NONE && c->spare_next < t)
            t = c->spare_next;
        int wait = t > now ? (int)(t - now) : 0;
        if (c->state == C_FAILED && !c->io_stop)
            wait = 1000; /* nothing to do but wait for close */

        pthread_mutex_unlock(&c->mu);
        int rc = poll(pf, (nfds_t)n, wait);
        pthread_mutex_lock(&c->mu);
        if (rc < 0 && errno != EINTR) {
            /* Cannot happen with valid fds; avoid spinning if it does. */
            pthread_mutex_unlock(&c->mu);
            usleep(10000);
            pthread_mutex_lock(&c->mu);
        }
        if (pf[0].revents & POLLIN) {
            uint64_t v;
            ssize_t k = read(c->wake_fd, &v, sizeof v);
            (void)k;
        }
        if (c->io_stop)
            break;
        now = mono_ms();
        for (int i = 1; i < n; i++) {
            mqc_link *l = who[i];
            /* A link may have been closed or swapped by the one before. */
            if (l->fd != pf[i].fd)
                continue;
            if (mqc__link_service(c, l, pf[i].revents, now))
                continue;
            if (l == &c->spare) {
                spare_failed(c, now);
            } else if (c->state == C_CONNECTED) {
                connection_lost(c, l->err_code, l->err);
            } else {
                attempt_failed(c, now);
            }
        }
        /* Links not polled (no revents) still need their timers. */
        for (int i = 0; i < 2; i++) {
            mqc_link *l = links[i];
            bool polled = false;
            for (int k = 1; k < n; k++)
                if (who[k] == l && l->fd == pf[k].fd)
                    polled = true;
            if (polled || l->st == L_NONE)
                continue;
            if (mqc__link_service(c, l, 0, now))
                continue;
            if (l == &c->spare)
                spare_failed(c, now);
            else if (c->state == C_CONNECTED)
                connection_lost(c, l->err_code, l->err);
            else
                attempt_failed(c, now);
        }
        if (c->state != C_CONNECTED)
            mqc__ops_check_timeouts(c, now);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}
