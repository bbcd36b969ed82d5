/* transport.c - one connection to one broker: non-blocking TCP connect
 * bounded by connectTimeout, TLS for ssl:// (OpenSSL), STOMP
 * CONNECT/CONNECTED, heart-beats, and frame reading/writing with the
 * shared codec (src/stomp/frame.c).
 *
 * TLS: every use of a link's SSL object happens under c->mu (the I/O
 * thread services links with it held, callers write with it held), so one
 * session is never read and written from two threads at once. */
#include "internal.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* connectTimeout=0 means "the OS default", which can be minutes; the
 * library bounds it so a black-holed broker does not stall failover. */
enum { CONNECT_CAP_MS = 30000, READ_CHUNK = 65536 };

void mqc__put(buf *b, const char *name, const char *value)
{
    frame_put(b, STOMP_12, name, value);
}

void mqc__link_init(mqc_link *l)
{
    memset(l, 0, sizeof *l);
    l->fd = -1;
}

void mqc__link_close(mqc_link *l)
{
    if (l->ssl)
        SSL_free(l->ssl);
    if (l->tls_ctx)
        SSL_CTX_free(l->tls_ctx);
    l->ssl = NULL;
    l->tls_ctx = NULL;
    l->tls_want_write = false;
    free(l->tls_ca);
    free(l->tls_cert);
    free(l->tls_key);
    l->tls_ca = l->tls_cert = l->tls_key = NULL;
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    if (l->ai)
        freeaddrinfo(l->ai);
    l->ai = l->ai_cur = NULL;
    frame_parser_free(&l->parser);
    buf_free(&l->in);
    buf_free(&l->out);
    free(l->uri);
    free(l->host);
    l->uri = l->host = NULL;
    l->st = L_NONE;
}

static bool fail(mqc_link *l, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static bool fail(mqc_link *l, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->err, sizeof l->err, fmt, ap);
    va_end(ap);
    l->err_code = code;
    return false;
}

/* The first queued OpenSSL error as text, or errno's. */
static const char *tls_errtext(char *out, size_t n)
{
    unsigned long e = ERR_get_error();
    if (e)
        ERR_error_string_n(e, out, n);
    else
        snprintf(out, n, "%s", errno ? strerror(errno) : "connection closed");
    ERR_clear_error();
    return out;
}

bool mqc__link_flush(mqc_link *l)
{
    if (l->ssl && l->st != L_TLS) {
        while (buf_used(&l->out) > 0) {
            ERR_clear_error();
            size_t len = buf_used(&l->out);
            int n = SSL_write(l->ssl, buf_data(&l->out),
                              len > INT32_MAX ? INT32_MAX : (int)len);
            if (n > 0) {
                buf_consume(&l->out, (size_t)n);
                l->last_tx = mono_ms();
                continue;
            }
            int e = SSL_get_error(l->ssl, n);
            if (e == SSL_ERROR_WANT_WRITE) {
                l->tls_want_write = true;
                return true;
            }
            if (e == SSL_ERROR_WANT_READ)
                return true; /* POLLIN is always watched once connected */
            char t[200];
            return fail(l, MQC_ECONN, "TLS write to %s failed: %s", l->uri,
                        tls_errtext(t, sizeof t));
        }
        l->tls_want_write = false;
        return true;
    }
    if (l->st == L_TLS)
        return true; /* queued until the handshake is done */
    while (buf_used(&l->out) > 0) {
        ssize_t n = send(l->fd, buf_data(&l->out), buf_used(&l->out),
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return true;
            return fail(l, MQC_ECONN, "write to %s failed: %s", l->uri,
                        strerror(errno));
        }
        buf_consume(&l->out, (size_t)n);
        l->last_tx = mono_ms();
    }
    return true;
}

void mqc__write(mqc_conn *c, const void *p, size_t n)
{
    mqc_link *l = &c->primary;
    bool was_empty = buf_used(&l->out) == 0;
    buf_add(&l->out, p, n);
    /* Send now from the caller's thread (saves a wake-up); the I/O thread
     * writes the rest when the socket has room, and notices errors. */
    if (was_empty)
        mqc__link_flush(l);
    if (buf_used(&l->out) > 0 || l->err[0])
        mqc__wake(c);
}

static void send_connect(mqc_conn *c, mqc_link *l)
{
    buf *b = &l->out;
    frame_begin(b, "CONNECT");
    /* CONNECT headers are not escaped (STOMP 1.2), so the values are
     * written as given; the URI parser rejects control characters. */
    frame_put(b, STOMP_10, "accept-version", "1.2");
    frame_put(b, STOMP_10, "host", c->vhost ? c->vhost : l->host);
    char hb[48];
    snprintf(hb, sizeof hb, "%d,%d", l->hb_send_ms, l->hb_recv_ms);
    frame_put(b, STOMP_10, "heart-beat", hb);
    if (c->login)
        frame_put(b, STOMP_10, "login", c->login);
    if (c->passcode)
        frame_put(b, STOMP_10, "passcode", c->passcode);
    if (c->client_id)
        frame_put(b, STOMP_10, "client-id", c->client_id);
    for (size_t i = 0; i < c->nconnect_headers; i++)
        frame_put(b, STOMP_10, c->connect_headers[i].name,
                  c->connect_headers[i].value);
    frame_end(b, NULL, 0, false);
}

/* The handshake, one step per socket event. Done: CONNECT goes out. */
static bool tls_step(mqc_conn *c, mqc_link *l)
{
    ERR_clear_error();
    int r = SSL_do_handshake(l->ssl);
    if (r == 1) {
        l->tls_want_write = false;
        l->st = L_STOMP;
        send_connect(c, l);
        return mqc__link_flush(l);
    }
    int e = SSL_get_error(l->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        l->tls_want_write = e == SSL_ERROR_WANT_WRITE;
        return true;
    }
    char t[256];
    tls_errtext(t, sizeof t);
    long v = SSL_get_verify_result(l->ssl);
    if (v != X509_V_OK)
        return fail(l, MQC_ECONN, "TLS handshake with %s failed: the "
                    "broker's certificate is not trusted (%s): set "
                    "sslCaFile to the CA that signed it%s", l->uri,
                    X509_verify_cert_error_string(v),
                    v == X509_V_ERR_HOSTNAME_MISMATCH ||
                            v == X509_V_ERR_IP_ADDRESS_MISMATCH
                        ? ", or connect by a name the certificate holds "
                          "(sslVerifyHost=false turns the check off)"
                        : "");
    return fail(l, MQC_ECONN, "TLS handshake with %s failed: %s%s", l->uri,
                t, strstr(t, "wrong version") || strstr(t, "packet length")
                       ? " (does the broker listen with TLS on that port?)"
                       : "");
}

/* The TCP connection is up: ssl:// starts TLS, tcp:// sends CONNECT. */
static bool tcp_up(mqc_conn *c, mqc_link *l)
{
    if (!l->tls) {
        l->st = L_STOMP;
        send_connect(c, l);
        return mqc__link_flush(l);
    }
    char t[256];
    l->tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!l->tls_ctx)
        return fail(l, MQC_ECONN, "TLS for %s: %s", l->uri,
                    tls_errtext(t, sizeof t));
    SSL_CTX_set_min_proto_version(l->tls_ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(l->tls_ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_mode(l->tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                                     SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_verify(l->tls_ctx, SSL_VERIFY_PEER, NULL);
    if (l->tls_ca ? SSL_CTX_load_verify_locations(l->tls_ctx, l->tls_ca,
                                                  NULL) != 1
                  : SSL_CTX_set_default_verify_paths(l->tls_ctx) != 1)
        return fail(l, MQC_ECONN, "TLS for %s: cannot load the CA "
                    "certificates%s%s: %s", l->uri, l->tls_ca ? " from " : "",
                    l->tls_ca ? l->tls_ca : "", tls_errtext(t, sizeof t));
    if (l->tls_cert || l->tls_key) {
        if (!l->tls_cert || !l->tls_key)
            return fail(l, MQC_ECONN, "TLS for %s: sslCertFile and "
                        "sslKeyFile go together", l->uri);
        if (SSL_CTX_use_certificate_chain_file(l->tls_ctx, l->tls_cert) != 1 ||
            SSL_CTX_use_PrivateKey_file(l->tls_ctx, l->tls_key,
                                        SSL_FILETYPE_PEM) != 1)
            return fail(l, MQC_ECONN, "TLS for %s: client certificate %s / "
                        "key %s: %s", l->uri, l->tls_cert, l->tls_key,
                        tls_errtext(t, sizeof t));
    }
    l->ssl = SSL_new(l->tls_ctx);
    if (!l->ssl || SSL_set_fd(l->ssl, l->fd) != 1)
        return fail(l, MQC_ECONN, "TLS for %s: %s", l->uri,
                    tls_errtext(t, sizeof t));
    SSL_set_connect_state(l->ssl);
    unsigned char ip[16];
    bool literal = inet_pton(AF_INET, l->host, ip) == 1 ||
                   inet_pton(AF_INET6, l->host, ip) == 1;
    if (!literal) /* SNI: a name, never an address (RFC 6066) */
        SSL_set_tlsext_host_name(l->ssl, l->host);
    if (l->tls_verify_host &&
        (literal ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(l->ssl),
                                                 l->host)
                 : SSL_set1_host(l->ssl, l->host)) != 1)
        return fail(l, MQC_ECONN, "TLS for %s: cannot check the host name",
                    l->uri);
    l->st = L_TLS;
    return tls_step(c, l);
}

/* Try the addresses from l->ai_cur on. */
static bool try_connect(mqc_conn *c, mqc_link *l)
{
    int last = 0;
    for (; l->ai_cur; l->ai_cur = l->ai_cur->ai_next) {
        struct addrinfo *a = l->ai_cur;
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK |
                        SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            l->fd = fd;
            return tcp_up(c, l);
        }
        if (errno == EINPROGRESS) {
            l->fd = fd;
            l->st = L_TCP;
            return true;
        }
        last = errno;
        close(fd);
    }
    return fail(l, MQC_ECONN, "cannot connect to %s: %s", l->uri,
                last ? strerror(last) : "no address");
}

bool mqc__link_start(mqc_conn *c, mqc_link *l, const mqc_server *s)
{
    mqc__link_close(l);
    l->err[0] = '\0';
    l->err_code = 0;
    l->uri = xstrdup(s->uri);
    l->host = xstrdup(s->host);
    l->port = s->port;
    l->tls = s->tls;
    l->tls_ca = s->tls_ca ? xstrdup(s->tls_ca) : NULL;
    l->tls_cert = s->tls_cert ? xstrdup(s->tls_cert) : NULL;
    l->tls_key = s->tls_key ? xstrdup(s->tls_key) : NULL;
    l->tls_verify_host = s->tls_verify_host;
    l->connect_timeout_ms = s->connect_timeout_ms;
    l->hb_send_ms = s->hb_send_ms;
    l->hb_recv_ms = s->hb_recv_ms;
    l->max_frame = s->max_frame_bytes ? s->max_frame_bytes : 64u << 20;
    frame_limits lim = {
        .max_header_bytes = l->max_frame < (1u << 20) ? l->max_frame
                                                       : (1u << 20),
        .max_headers = 1024,
        .max_body = l->max_frame,
    };
    frame_parser_init(&l->parser, &lim);
    l->parser.version = STOMP_12;
    l->hb_in = l->hb_out = 0;
    int64_t now = mono_ms();
    int to = l->connect_timeout_ms > 0 && l->connect_timeout_ms < CONNECT_CAP_MS
                 ? l->connect_timeout_ms
                 : CONNECT_CAP_MS;
    l->connect_timeout_ms = to; /* the bound in force, for messages */
    l->deadline = now + to;
    l->last_rx = l->last_tx = now;

    struct addrinfo hints = {0};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    char port[16];
    snprintf(port, sizeof port, "%d", l->port);
    /* Blocking (bounded by the resolver's own timeouts), so without the
     * lock: a slow DNS must not stall the application's calls. Only the I/O
     * thread touches links and the broker list, so nothing moves meanwhile.
     * Literal addresses and /etc/hosts names answer at once. */
    pthread_mutex_unlock(&c->mu);
    int rc = getaddrinfo(l->host, port, &hints, &l->ai);
    pthread_mutex_lock(&c->mu);
    if (rc != 0) {
        l->ai = NULL;
        return fail(l, MQC_ECONN, "cannot resolve the host of %s: %s", l->uri,
                    gai_strerror(rc));
    }
    l->ai_cur = l->ai;
    return try_connect(c, l);
}

/* CONNECTED arrived: agree on heart-beats (STOMP 1.2 section "Heart-
 * beating": each side uses the larger of what one offers and the other
 * wants, 0 on either side disables). */
static void negotiate(mqc_link *l, const frame *f)
{
    long sx = 0, sy = 0;
    const char *hb = frame_get(f, "heart-beat");
    if (hb && sscanf(hb, "%ld,%ld", &sx, &sy) != 2)
        sx = sy = 0;
    if (sx < 0)
        sx = 0;
    if (sy < 0)
        sy = 0;
    l->hb_out = (l->hb_send_ms > 0 && sy > 0)
                    ? (l->hb_send_ms > sy ? l->hb_send_ms : sy) : 0;
    l->hb_in = (l->hb_recv_ms > 0 && sx > 0)
                   ? (l->hb_recv_ms > sx ? l->hb_recv_ms : sx) : 0;
}

static bool on_link_frame(mqc_conn *c, mqc_link *l, const frame *f)
{
    if (l->st == L_STOMP) {
        if (f->cmd == CMD_CONNECTED) {
            negotiate(l, f);
            l->st = L_READY;
            return mqc__on_frame(c, l, f);
        }
        if (f->cmd == CMD_ERROR) {
            const char *m = frame_get(f, "message");
            return fail(l, MQC_EBROKER, "%s refused the connection: %s%s%.*s",
                        l->uri, m ? m : "(no message)",
                        f->body_len ? ": " : "",
                        (int)(f->body_len > 200 ? 200 : f->body_len), f->body);
        }
        return fail(l, MQC_EPROTO, "%s answered CONNECT with %s instead of "
                    "CONNECTED: is it a STOMP broker?", l->uri, f->command);
    }
    return mqc__on_frame(c, l, f);
}

static bool do_read(mqc_conn *c, mqc_link *l)
{
    for (int round = 0; round < 4 || (l->ssl && SSL_has_pending(l->ssl));
         round++) {
        buf_reserve(&l->in, READ_CHUNK);
        ssize_t n;
        if (l->ssl) {
            /* Bytes OpenSSL already holds never wake poll(): the loop runs
             * on while it has any. */
            ERR_clear_error();
            size_t room = l->in.cap - l->in.len;
            int r = SSL_read(l->ssl, l->in.p + l->in.len,
                             room > INT32_MAX ? INT32_MAX : (int)room);
            if (r > 0) {
                n = r;
            } else {
                int e = SSL_get_error(l->ssl, r);
                if (e == SSL_ERROR_WANT_READ)
                    return true;
                if (e == SSL_ERROR_WANT_WRITE) {
                    l->tls_want_write = true;
                    return true;
                }
                if (e != SSL_ERROR_ZERO_RETURN &&
                    !(e == SSL_ERROR_SYSCALL && errno == 0)) {
                    char t[200];
                    return fail(l, MQC_ECONN, "TLS read from %s failed: %s",
                                l->uri, tls_errtext(t, sizeof t));
                }
                n = 0;
            }
        } else {
            n = recv(l->fd, l->in.p + l->in.len, l->in.cap - l->in.len,
                     MSG_DONTWAIT);
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return true;
            return fail(l, MQC_ECONN, "read from %s failed: %s", l->uri,
                        strerror(errno));
        }
        if (n == 0) {
            if (l->st == L_STOMP && buf_used(&l->in) > 0) {
                char head[41];
                size_t k = buf_used(&l->in) < 40 ? buf_used(&l->in) : 40;
                for (size_t i = 0; i < k; i++) {
                    unsigned char ch = (unsigned char)buf_data(&l->in)[i];
                    head[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '.';
                }
                head[k] = '\0';
                return fail(l, MQC_EPROTO,
                            "%s answered CONNECT with %zu bytes that are not "
                            "a STOMP frame (\"%s\"), then closed: is it a "
                            "STOMP port?", l->uri, buf_used(&l->in), head);
            }
            if (buf_used(&l->in) > 0 || l->parser.have_headers)
                return fail(l, MQC_EPROTO,
                            "%s closed the connection in the middle of a "
                            "frame (%zu bytes of it received)", l->uri,
                            buf_used(&l->in));
            if (l->st == L_STOMP)
                return fail(l, MQC_ECONN, "%s closed the connection before "
                            "answering CONNECT (a standby broker, or not "
                            "STOMP?)", l->uri);
            return fail(l, MQC_ECONN, "%s closed the connection", l->uri);
        }
        l->in.len += (size_t)n;
        l->last_rx = mono_ms();
        for (;;) {
            frame f;
            size_t used = 0;
            char err[256];
            int rc = frame_parse(&l->parser, buf_data(&l->in), buf_used(&l->in),
                                 &used, &f, err, sizeof err);
            if (rc == FRAME_ERR) {
                bool big = strstr(err, "limit") || strstr(err, "exceed");
                return fail(l, big ? MQC_ETOOBIG : MQC_EPROTO,
                            "%s sent a malformed or oversized frame: %s%s",
                            l->uri, err,
                            big ? " (raise maxFrameSize in the URI if the "
                                  "broker's frames are legitimately this "
                                  "large)" : "");
            }
            if (rc == FRAME_MORE) {
                buf_consume(&l->in, used);
                break;
            }
            bool ok = on_link_frame(c, l, &f);
            buf_consume(&l->in, used);
            if (!ok)
                return false;
        }
        if ((size_t)n < READ_CHUNK / 2)
            return true;
    }
    return true;
}

bool mqc__link_service(mqc_conn *c, mqc_link *l, short revents, int64_t now)
{
    if (l->st == L_NONE)
        return true;
    if (l->st == L_TCP) {
        if (revents & (POLLOUT | POLLERR | POLLHUP)) {
            int err = 0;
            socklen_t len = sizeof err;
            if (getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
            if (err) {
                close(l->fd);
                l->fd = -1;
                l->ai_cur = l->ai_cur ? l->ai_cur->ai_next : NULL;
                if (!l->ai_cur)
                    return fail(l, MQC_ECONN, "cannot connect to %s: %s",
                                l->uri, strerror(err));
                return try_connect(c, l);
            }
            if (!tcp_up(c, l))
                return false;
        }
    } else if (l->st == L_TLS) {
        if ((revents & (POLLIN | POLLOUT | POLLERR | POLLHUP)) &&
            !tls_step(c, l))
            return false;
    } else {
        /* TLS: a read that had to write first goes on now. */
        bool read_waits = l->ssl && l->tls_want_write && !buf_used(&l->out);
        if ((revents & POLLOUT) && !mqc__link_flush(l))
            return false;
        if ((revents & POLLOUT) && read_waits) {
            l->tls_want_write = false;
            if (!do_read(c, l))
                return false;
        }
        if (revents & (POLLIN | POLLHUP | POLLERR)) {
            if (!do_read(c, l))
                return false;
            now = mono_ms();
        }
        if (l->err[0]) /* a write from another thread failed */
            return false;
    }
    if (l->st != L_READY && now >= l->deadline)
        return fail(l, MQC_ECONN, "connecting to %s timed out after %lld ms "
                    "(connectTimeout; CONNECTED not received)", l->uri,
                    (long long)l->connect_timeout_ms);
    if (l->st == L_READY) {
        /* Two intervals of silence (the spec asks for some tolerance). */
        if (l->hb_in && now - l->last_rx > 2 * l->hb_in)
            return fail(l, MQC_ECONN, "no data nor heart-beat from %s for "
                        "%lld ms (expected every %lld ms): connection dead",
                        l->uri, (long long)(now - l->last_rx),
                        (long long)l->hb_in);
        if (l->hb_out && now - l->last_tx >= l->hb_out &&
            buf_used(&l->out) == 0) {
            buf_addc(&l->out, '\n');
            if (!mqc__link_flush(l))
                return false;
        }
    }
    return true;
}
