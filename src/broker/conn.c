/* conn.c - client connections: non-blocking socket I/O, output buffering
 * and its flow control, ordered receipts, heart-beats and closing. STOMP
 * frames themselves are handled in stomp.c. */
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "broker.h"

#define READ_CHUNK 65536
#define CLOSING_GRACE_MS 5000 /* to flush an ERROR or a last RECEIPT */
#define LINGER_MS 1000

static void peer_name(const struct sockaddr_storage *ss, char *out, size_t n)
{
    char host[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof host);
        port = ntohs(a->sin_port);
        snprintf(out, n, "%s:%u", host, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof host);
        port = ntohs(a->sin6_port);
        snprintf(out, n, "[%s]:%u", host, port);
    } else {
        snprintf(out, n, "?");
    }
}

/* The address part of "host:port" / "[v6]:port". */
static void peer_host(const char *peer, char *out, size_t n)
{
    const char *colon = strrchr(peer, ':');
    size_t len = colon ? (size_t)(colon - peer) : strlen(peer);
    if (len >= n)
        len = n - 1;
    memcpy(out, peer, len);
    out[len] = '\0';
}

/* A warning that can repeat in a burst (a flood of refused connections,
 * accept failing): the first goes out, then at most one per 10 s with
 * the count of those left out. */
typedef struct rate_log {
    int64_t last_ms;
    size_t dropped;
} rate_log;
static rate_log accept_log, refuse_log;

static void log_limited(rate_log *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void log_limited(rate_log *r, const char *fmt, ...)
{
    int64_t now = mono_ms();
    if (r->last_ms && now - r->last_ms < 10000) {
        r->dropped++;
        return;
    }
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (r->dropped)
        log_msg(LOG_WARN, "%s (and %zu more like it in the last 10 s)", text,
                r->dropped);
    else
        log_msg(LOG_WARN, "%s", text);
    r->last_ms = now;
    r->dropped = 0;
}

static void refuse(int fd, const char *why)
{
    char text[512];
    int body = (int)strlen(why);
    int n = snprintf(text, sizeof text,
                     "ERROR\nmessage:%s\ncontent-type:text/plain\n"
                     "content-length:%d\n\n%s", why, body, why);
    if (n > 0 && (size_t)n < sizeof text - 1) {
        text[n] = '\0'; /* the frame's NUL */
        (void)!send(fd, text, (size_t)n + 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    close(fd);
}

void conn_accept(int lfd)
{
    /* A bounded batch per wake-up keeps other connections served. */
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &sl,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                errno == ENOMEM) {
                /* The pending connection stays queued and the listener
                 * readable: without a pause the loop would spin on it. */
                listener_backoff();
                log_limited(&accept_log, "cannot accept a connection: %s "
                            "(raise the open files limit or lower "
                            "--max-connections); pausing accept for a moment",
                            strerror(errno));
            } else if (errno != EAGAIN && errno != EWOULDBLOCK &&
                       errno != EINTR && errno != ECONNABORTED) {
                log_limited(&accept_log, "accept failed: %s",
                            strerror(errno));
            }
            return;
        }
        char peer[64], host[64];
        peer_name(&ss, peer, sizeof peer);
        peer_host(peer, host, sizeof host);
        uint64_t ipk = str_key(host);
        size_t from_ip = (size_t)(uintptr_t)idmap_get(&B.per_ip, ipk);
        if (B.nconns >= B.cfg.max_connections) {
            log_limited(&refuse_log, "refusing %s: %zu connections already "
                        "(max-connections)", peer, B.nconns);
            refuse(fd, "too many connections (max-connections)");
            continue;
        }
        if (from_ip >= B.cfg.max_conns_per_ip) {
            log_limited(&refuse_log, "refusing %s: %zu connections from %s "
                        "already (max-connections-per-ip)", peer, from_ip,
                        host);
            refuse(fd, "too many connections from your address "
                       "(max-connections-per-ip)");
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn *c = xcalloc(1, sizeof *c);
        c->htype = H_CONN;
        c->serial = ++B.next_serial;
        c->fd = fd;
        snprintf(c->peer, sizeof c->peer, "%s", peer);
        c->state = CS_CONNECTING;
        c->version = STOMP_10;
        c->ip_key = ipk;
        c->created_ms = c->last_rx_ms = c->last_tx_ms = mono_ms();
        frame_limits lim = {B.cfg.max_header_bytes, B.cfg.max_headers,
                            B.cfg.max_body};
        frame_parser_init(&c->parser, &lim);
        q_init(&c->flush_link);
        q_init(&c->plink);
        q_init(&c->subs);
        q_init(&c->txns);
        q_init(&c->tickets);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(B.ep, EPOLL_CTL_ADD, fd, &ev)) {
            log_msg(LOG_ERROR, "epoll_ctl(add) failed: %s", strerror(errno));
            frame_parser_free(&c->parser);
            free(c);
            close(fd);
            continue;
        }
        if (tls_enabled() && tls_attach(c)) {
            log_msg(LOG_ERROR, "TLS: cannot set up a session for %s", peer);
            epoll_ctl(B.ep, EPOLL_CTL_DEL, fd, NULL);
            frame_parser_free(&c->parser);
            free(c);
            close(fd);
            continue;
        }
        c->events = EPOLLIN;
        q_push_back(&B.conns, &c->link);
        B.nconns++;
        idmap_put(&B.per_ip, ipk, (void *)(uintptr_t)(from_ip + 1));
        log_msg(LOG_DEBUG, "conn %" PRIu64 ": accepted from %s", c->serial,
                peer);
    }
}

/* Whether to read and handle frames from c now. Not while its output is
 * over max-out-buffer: every frame may add an answer (RECEIPT, ERROR),
 * and a client that does not read must not park them here without
 * bound; the slow-consumer cut ends it if it never reads again. */
/* A frame has begun and the broker is over --max-memory: reading more of
 * it would add to what is held, so it is not read until memory is back
 * (its frame deadline still runs). A connection without a partial frame
 * may start one: at most a read chunk each. */
static bool mem_stopped(const conn *c)
{
    return mem_full() && c->frame_since_ms && buf_used(&c->in);
}

static bool reading(const conn *c)
{
    return (c->state == CS_CONNECTING || c->state == CS_OPEN) &&
           !c->disconnecting && !c->paused_on && !c->authenticating &&
           !c->store_wait && !c->store_paused && !mem_stopped(c) &&
           buf_used(&c->out) < B.cfg.max_out_buffer;
}

static void set_events(conn *c)
{
    if (c->state == CS_DEAD)
        return;
    uint32_t ev = 0;
    if (reading(c) ||
        c->lingering)
        ev |= EPOLLIN;
    if (buf_used(&c->out) || c->tls_read_wants_write)
        ev |= EPOLLOUT;
    if (c->tls_write_wants_read)
        ev |= EPOLLIN;
    if (ev != c->events) {
        struct epoll_event e = {.events = ev, .data.ptr = c};
        if (epoll_ctl(B.ep, EPOLL_CTL_MOD, c->fd, &e) == 0)
            c->events = ev;
    }
}

/* Output a connection may hold before dispatching to it stops. At
 * --max-memory it shrinks to 256 KiB, so a thousand slow consumers cannot
 * hold max-out-buffer each. */
static size_t out_cap(void)
{
    size_t cap = B.cfg.max_out_buffer;
    return mem_full() && cap > 262144 ? 262144 : cap;
}

bool conn_can_take(const conn *c)
{
    return c->state == CS_OPEN && !c->disconnecting &&
           buf_used(&c->out) < out_cap();
}

void conn_mem_sync(conn *c)
{
    size_t in = c->state == CS_DEAD ? 0 : buf_used(&c->in);
    size_t out = c->state == CS_DEAD ? 0 : buf_used(&c->out);
    if (in >= c->in_acct)
        mem_add(in - c->in_acct);
    else
        mem_sub(c->in_acct - in);
    if (out >= c->out_acct)
        mem_add(out - c->out_acct);
    else
        mem_sub(c->out_acct - out);
    c->in_acct = in;
    c->out_acct = out;
}

static void update_full(conn *c, bool progress)
{
    bool full = buf_used(&c->out) >= out_cap();
    if (full && (!c->out_full || progress))
        c->full_since = mono_ms();
    bool was_full = c->out_full;
    c->out_full = full;
    if (!full && was_full) {
        /* Room again: its subscriptions may take messages. */
        for (qlink *l = c->subs.next; l != &c->subs; l = l->next)
            box_kick(container_of(l, sub, clink)->b);
    }
}

void conn_out_changed(conn *c)
{
    if (c->state == CS_DEAD)
        return;
    c->last_tx_ms = mono_ms();
    if (!c->flush_queued) {
        c->flush_queued = true;
        q_push_back(&B.flush_list, &c->flush_link);
    }
    update_full(c, false);
    conn_mem_sync(c);
}

/* Memory is below --max-memory again: connections stopped mid-frame
 * read on. (A TLS one whose bytes OpenSSL holds already, which no epoll
 * event announces, is read by conns_tick.) */
void conns_mem_resumed(void)
{
    for (qlink *l = B.conns.next; l != &B.conns; l = l->next) {
        conn *c = container_of(l, conn, link);
        if (c->frame_since_ms && c->state != CS_DEAD)
            set_events(c);
    }
}

void conn_process_input(conn *c)
{
    while (reading(c)) {
        frame f;
        size_t used;
        char err[256];
        int rc = frame_parse(&c->parser, buf_data(&c->in), buf_used(&c->in),
                             &used, &f, err, sizeof err);
        if (rc == FRAME_ERR) {
            conn_error(c, NULL, "malformed frame", "%s", err);
            break;
        }
        if (rc == FRAME_MORE) {
            buf_consume(&c->in, used); /* heart-beat EOLs */
            /* A frame has begun: it must end by frame-timeout-ms. */
            if (!buf_used(&c->in))
                c->frame_since_ms = 0;
            else if (!c->frame_since_ms)
                c->frame_since_ms = mono_ms();
            break;
        }
        c->frame_since_ms = 0;
        /* No room in the store's queue for what this frame would submit:
         * left unread (parsed again on resume) rather than waited for. */
        if (c->state == CS_OPEN) {
            size_t need = stomp_store_need(c, &f);
            /* Or the takeover's audit is not read yet and it has ids. */
            if ((need && !store_room(need)) ||
                (B.audit_loading && stomp_audited(&f))) {
                store_pause(c);
                break;
            }
        }
        /* f.body points into c->in: consume only after handling. */
        stomp_handle(c, &f);
        buf_consume(&c->in, used);
    }
    conn_mem_sync(c);
    set_events(c);
}

static int conn_read(conn *c)
{
    if (c->lingering) {
        /* Unread input at close() makes the kernel send RST, which can
         * destroy our ERROR before the client read it: drain until EOF. */
        char sink[4096];
        ssize_t n = recv(c->fd, sink, sizeof sink, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            conn_close(c, c->disconnecting ? "DISCONNECT" : "after ERROR");
            return -1;
        }
        return 0;
    }
    char why[160] = "";
    ssize_t n;
    if (c->ssl) {
        /* Drain the record OpenSSL holds: the socket may be empty while
         * decrypted bytes wait, and epoll would not wake us for them. */
        ssize_t got = 0;
        do {
            buf_reserve(&c->in, READ_CHUNK);
            n = tls_read(c, c->in.p + c->in.len, c->in.cap - c->in.len, why,
                         sizeof why);
            if (n > 0) {
                c->in.len += (size_t)n;
                got += n;
            }
            /* Bytes OpenSSL buffered (decrypted, or read ahead from the
             * socket) never wake epoll: take them now. Past 256 KiB the
             * rest may wait in the socket, which does wake it. */
        } while (n > 0 && (tls_pending(c) || got < 262144));
        if (got > 0) {
            c->last_rx_ms = mono_ms();
            conn_process_input(c);
            if (n < 0 && errno != EAGAIN)
                goto failed;
            return 0;
        }
    } else {
        buf_reserve(&c->in, READ_CHUNK);
        n = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
        if (n > 0) {
            c->in.len += (size_t)n;
            c->last_rx_ms = mono_ms();
            conn_process_input(c);
            return 0;
        }
    }
    if (n == 0) {
        /* A half-close after SEND/COMMIT with a receipt: the client still
         * reads. Answer what is pending, then close (conns_tick). */
        if (c->state == CS_OPEN && (c->inflight || !q_empty(&c->tickets) ||
                                    buf_used(&c->out))) {
            c->read_eof = true;
            c->disconnecting = true; /* nothing more to read */
            set_events(c);
            return 0;
        }
        conn_close(c, "closed by the client");
        return -1;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
        if (c->ssl)
            set_events(c); /* the handshake may want to write */
        return 0;
    }
failed:
    if (!why[0])
        snprintf(why, sizeof why, "read error: %s", strerror(errno));
    if (c->ssl)
        log_msg(LOG_INFO, "conn %" PRIu64 " (%s): %s", c->serial, c->peer,
                why);
    conn_close(c, why);
    return -1;
}

/* Returns false when the connection was closed. */
static bool conn_flush(conn *c)
{
    bool progress = false;
    char why[160] = "";
    while (buf_used(&c->out)) {
        ssize_t n = c->ssl ? tls_write(c, buf_data(&c->out), buf_used(&c->out),
                                       why, sizeof why)
                           : send(c->fd, buf_data(&c->out), buf_used(&c->out),
                                  MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            buf_consume(&c->out, (size_t)n);
            progress = true;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (!why[0])
            snprintf(why, sizeof why, "write error: %s",
                     n < 0 ? strerror(errno) : "nothing written");
        conn_close(c, why);
        return false;
    }
    update_full(c, progress);
    conn_mem_sync(c);
    /* Frames left in the input while the output was over the limit. */
    if (progress && buf_used(&c->in) && reading(c))
        conn_process_input(c);
    if (c->state == CS_CLOSING && !buf_used(&c->out) && !c->lingering) {
        /* All sent: close our side, let the client close its own. */
        tls_close_notify(c);
        shutdown(c->fd, SHUT_WR);
        c->lingering = true;
        c->closing_ms = mono_ms();
    }
    set_events(c);
    return true;
}

size_t conns_flush(void)
{
    size_t n = 0;
    while (!q_empty(&B.flush_list)) {
        conn *c = container_of(B.flush_list.next, conn, flush_link);
        q_remove(&c->flush_link);
        c->flush_queued = false;
        conn_flush(c);
        n++;
    }
    return n;
}

void conn_event(conn *c, uint32_t events)
{
    if (events & EPOLLERR) {
        int err = 0;
        socklen_t sl = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
        char why[128];
        snprintf(why, sizeof why, "socket error: %s",
                 err ? strerror(err) : "unknown");
        conn_close(c, why);
        return;
    }
    /* TLS: a write waiting for the peer's bytes, or a read (the
     * handshake) waiting to send, continues on the other event. */
    if ((events & EPOLLIN) && c->tls_write_wants_read && !conn_flush(c))
        return;
    if ((events & EPOLLOUT) && c->tls_read_wants_write && conn_read(c))
        return;
    if ((events & EPOLLIN) && conn_read(c))
        return;
    if ((events & EPOLLOUT) && !conn_flush(c))
        return;
    /* Hang-up while we are not reading (closing or paused). */
    if ((events & EPOLLHUP) && !(c->events & EPOLLIN))
        conn_close(c, "hang-up");
    else if ((events & EPOLLHUP) && c->lingering)
        conn_close(c, c->disconnecting ? "DISCONNECT" : "after ERROR");
}

/* Everything a connection holds in the broker: subscriptions (unacked
 * messages go back to their boxes), transactions, producer pause. */
void conn_teardown(conn *c)
{
    dest_unpause(c);
    store_unpause(c);
    network_conn_teardown(c);
    while (!q_empty(&c->subs)) {
        sub *s = container_of(c->subs.next, sub, clink);
        q_remove(&s->clink);
        sub_detach(s);
        free(s->id);
        free(s->net_peer);
        free(s);
    }
    c->nsubs = 0;
    while (!q_empty(&c->txns)) {
        stx *x = container_of(c->txns.next, stx, link);
        q_remove(&x->link);
        txn_free(x);
    }
    c->ntxns = 0;
    mem_sub(c->txn_bytes);
    c->txn_bytes = 0;
    idmap_free(&c->acks);
    idmap_free(&c->mids);
    idmap_free(&c->sub_ids);
}

static void ticket_free(ticket *t)
{
    free(t->receipt);
    free(t->error);
    free(t);
}

void conn_free_zombie(conn *c)
{
    while (!q_empty(&c->tickets)) {
        ticket *t = container_of(c->tickets.next, ticket, link);
        q_remove(&t->link);
        ticket_free(t);
    }
    q_remove(&c->link);
    free(c);
}

void conn_close(conn *c, const char *why)
{
    if (c->state == CS_DEAD)
        return;
    log_msg(LOG_DEBUG, "conn %" PRIu64 " (%s): closed: %s", c->serial,
            c->peer, why);
    conn_teardown(c);
    epoll_ctl(B.ep, EPOLL_CTL_DEL, c->fd, NULL);
    tls_detach(c);
    close(c->fd);
    c->fd = -1;
    if (c->flush_queued) {
        q_remove(&c->flush_link);
        c->flush_queued = false;
    }
    c->state = CS_DEAD; /* (set again below) buffers leave the account */
    conn_mem_sync(c);
    buf_free(&c->in);
    buf_free(&c->out);
    frame_parser_free(&c->parser);
    free(c->client_id);
    c->client_id = NULL;
    free(c->user);
    c->user = NULL;
    free(c->bridge);
    c->bridge = NULL;
    q_remove(&c->link);
    B.nconns--;
    size_t from_ip = (size_t)(uintptr_t)idmap_get(&B.per_ip, c->ip_key);
    if (from_ip <= 1)
        idmap_del(&B.per_ip, c->ip_key);
    else
        idmap_put(&B.per_ip, c->ip_key, (void *)(uintptr_t)(from_ip - 1));
    c->state = CS_DEAD;
    /* Replies nobody will read; pending ones wait for their store write. */
    for (qlink *l = c->tickets.next; l != &c->tickets;) {
        ticket *t = container_of(l, ticket, link);
        l = l->next;
        if (t->done) {
            q_remove(&t->link);
            ticket_free(t);
        }
    }
    if (c->inflight == 0)
        conn_free_zombie(c);
    else
        q_push_back(&B.zombies, &c->link);
}

void conns_close_all(const char *why)
{
    while (!q_empty(&B.conns))
        conn_close(container_of(B.conns.next, conn, link), why);
}

static void error_v(conn *c, const char *receipt, const char *xname,
                    const char *xval, const char *message, const char *fmt,
                    va_list ap)
{
    if (c->state == CS_CLOSING || c->state == CS_DEAD)
        return;
    char detail[1024];
    vsnprintf(detail, sizeof detail - 1, fmt, ap);
    log_msg(LOG_INFO, "conn %" PRIu64 " (%s): ERROR %s: %s", c->serial,
            c->peer, message, detail);
    buf *b = &c->out;
    frame_begin(b, "ERROR");
    frame_put(b, c->version, "message", message);
    if (receipt)
        frame_put(b, c->version, "receipt-id", receipt);
    if (xname)
        frame_put(b, c->version, xname, xval);
    frame_put(b, c->version, "content-type", "text/plain");
    size_t n = strlen(detail);
    detail[n++] = '\n';
    frame_end(b, detail, n, true);
    /* STOMP: the connection closes after an ERROR frame. */
    c->state = CS_CLOSING;
    c->closing_ms = mono_ms();
    conn_teardown(c);
    conn_out_changed(c);
}

void conn_error(conn *c, const char *receipt, const char *message,
                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_v(c, receipt, NULL, NULL, message, fmt, ap);
    va_end(ap);
}

void conn_error_hdr(conn *c, const char *xname, const char *xval,
                    const char *message, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    error_v(c, NULL, xname, xval, message, fmt, ap);
    va_end(ap);
}

void conn_write_message(conn *c, sub *s, const entry *e)
{
    buf *b = &c->out;
    int v = c->version;
    char tmp[96];
    frame_begin(b, "MESSAGE");
    frame_put(b, v, "subscription", s->id);
    entry_message_id(e, tmp, sizeof tmp);
    frame_put(b, v, "message-id", tmp);
    frame_put(b, v, "destination", e->b->d->name);
    if (s->ack != ACK_AUTO) {
        snprintf(tmp, sizeof tmp, "%" PRIu64, e->tag);
        frame_put(b, v, "ack", tmp);
    }
    if (e->redelivered)
        frame_put(b, v, "redelivered", "true");
    if (e->m->persistent)
        frame_put(b, v, "persistent", "true");
    const msg *m = e->m;
    /* To another broker: this one joins the path (network.c). */
    bool net = s->net_peer != NULL;
    if (net)
        network_put_headers(b, v, m);
    for (size_t i = 0; i < m->hdrs_len;) {
        const char *name = m->hdrs + i;
        size_t nl = strlen(name);
        const char *val = name + nl + 1;
        size_t vl = strlen(val);
        if (!net || !network_header(name))
            frame_putn(b, v, name, nl, val, vl);
        i += nl + vl + 2;
    }
    frame_end(b, m->body, m->body_len, true);
    conn_out_changed(c);
}

/* ------------------------------------------------------------------------
 * Tickets
 * ---------------------------------------------------------------------- */

ticket *ticket_add(conn *c, const char *receipt, const char *what)
{
    ticket *t = xcalloc(1, sizeof *t);
    t->receipt = receipt ? xstrdup(receipt) : NULL;
    t->what = what;
    q_push_back(&c->tickets, &t->link);
    return t;
}

static void flush_tickets(conn *c)
{
    while (!q_empty(&c->tickets)) {
        ticket *t = container_of(c->tickets.next, ticket, link);
        if (!t->done)
            break;
        q_remove(&t->link);
        if (c->state == CS_OPEN) {
            if (t->rc == MQS_EUNKNOWN) {
                /* The commit's outcome is unknown: saying "not stored"
                 * would invite a resend of what may be stored. */
                conn_error(c, t->receipt, "store write outcome unknown",
                           "%s may or may not have been stored (the "
                           "database connection was lost during its "
                           "commit): %s", t->what, t->error);
            } else if (t->rc) {
                conn_error(c, t->receipt, "store write failed",
                           "%s was not stored: %s", t->what, t->error);
            } else {
                if (t->receipt) {
                    frame_begin(&c->out, "RECEIPT");
                    frame_put(&c->out, c->version, "receipt-id", t->receipt);
                    frame_end(&c->out, NULL, 0, false);
                    conn_out_changed(c);
                }
                if (t->disconnect) {
                    c->state = CS_CLOSING;
                    c->closing_ms = mono_ms();
                    conn_out_changed(c);
                }
            }
        }
        ticket_free(t);
    }
}

void ticket_done(conn *c, ticket *t, int rc, const char *err)
{
    t->done = true;
    t->rc = rc;
    if (rc)
        t->error = xstrdup(err && *err ? err : mqs_strerror(rc));
    if (c->state == CS_DEAD) {
        q_remove(&t->link);
        ticket_free(t);
        return;
    }
    flush_tickets(c);
}

/* ------------------------------------------------------------------------
 * Timers
 * ---------------------------------------------------------------------- */

void conns_tick(int64_t now)
{
    for (qlink *l = B.conns.next; l != &B.conns;) {
        conn *c = container_of(l, conn, link);
        l = l->next; /* c may close */
        char why[160];
        if (c->state == CS_CONNECTING &&
            now - c->created_ms > B.cfg.connect_timeout_ms) {
            snprintf(why, sizeof why, "no CONNECT frame within %" PRId64
                     " ms (connect-timeout-ms)", B.cfg.connect_timeout_ms);
            log_msg(LOG_INFO, "conn %" PRIu64 " (%s): %s", c->serial,
                    c->peer, why);
            conn_close(c, why);
            continue;
        }
        if (c->read_eof && !c->inflight && q_empty(&c->tickets) &&
            !buf_used(&c->out)) {
            conn_close(c, "closed by the client (after its receipts)");
            continue;
        }
        if (c->frame_since_ms && B.cfg.frame_timeout_ms &&
            now - c->frame_since_ms > B.cfg.frame_timeout_ms) {
            snprintf(why, sizeof why, "a frame begun %" PRId64 " ms ago is "
                     "still incomplete (frame-timeout-ms)",
                     now - c->frame_since_ms);
            log_msg(LOG_INFO, "conn %" PRIu64 " (%s): closed: %s", c->serial,
                    c->peer, why);
            conn_close(c, why);
            continue;
        }
        if (c->lingering && now - c->closing_ms > LINGER_MS) {
            conn_close(c, c->disconnecting ? "DISCONNECT" : "after ERROR");
            continue;
        }
        if (c->state == CS_CLOSING && now - c->closing_ms > CLOSING_GRACE_MS) {
            conn_close(c, "the client did not read its last frames");
            continue;
        }
        if (c->out_full && now - c->full_since >= B.cfg.slow_consumer_ms) {
            snprintf(why, sizeof why, "slow consumer: %zu bytes unread for "
                     "%" PRId64 " ms (slow-consumer-ms)", buf_used(&c->out),
                     now - c->full_since);
            log_msg(LOG_WARN, "conn %" PRIu64 " (%s): disconnected: %s",
                    c->serial, c->peer, why);
            conn_close(c, why);
            continue;
        }
        if (c->state != CS_OPEN)
            continue;
        if (c->ssl && reading(c) && tls_pending(c)) {
            conn_event(c, EPOLLIN); /* decrypted bytes left while stopped */
            if (c->state != CS_OPEN)
                continue;
        }
        /* Not read while paused (flow control) or waiting for its login:
         * its heart-beats sit unread in the socket, so it counts as
         * heard from. */
        if (c->paused_on || c->authenticating || c->store_wait ||
            c->store_paused || mem_stopped(c) || c->out_full)
            c->last_rx_ms = now;
        /* Without heart-beats a dead peer is never noticed: a connection
         * silent both ways this long gives its slot back. A paused
         * producer is not silent by choice, so it is spared. */
        int64_t last = c->last_rx_ms > c->last_tx_ms ? c->last_rx_ms
                                                     : c->last_tx_ms;
        if (!c->hb_recv_ms && B.cfg.idle_timeout_ms && !c->paused_on &&
            !c->store_paused &&
            now - last > B.cfg.idle_timeout_ms) {
            snprintf(why, sizeof why, "idle for %" PRId64 " ms without "
                     "heart-beats (idle-timeout-ms)", now - last);
            log_msg(LOG_INFO, "conn %" PRIu64 " (%s): closed: %s", c->serial,
                    c->peer, why);
            conn_close(c, why);
            continue;
        }
        /* Spec: be tolerant; twice the interval allows for network delay. */
        if (c->hb_recv_ms && now - c->last_rx_ms > 2 * c->hb_recv_ms) {
            snprintf(why, sizeof why, "no data or heart-beat from the client "
                     "for %" PRId64 " ms (negotiated %" PRId64 " ms)",
                     now - c->last_rx_ms, c->hb_recv_ms);
            log_msg(LOG_INFO, "conn %" PRIu64 " (%s): closed: %s", c->serial,
                    c->peer, why);
            conn_close(c, why);
            continue;
        }
        if (c->hb_send_ms && now - c->last_tx_ms >= c->hb_send_ms) {
            buf_addc(&c->out, '\n');
            conn_out_changed(c);
        }
    }
}
