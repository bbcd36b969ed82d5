/* tls.c - TLS on the STOMP listener, with OpenSSL (Debian's libssl3).
 *
 * Why OpenSSL: it is the TLS library every Debian host already has and
 * patches, and its non-blocking API maps onto the loop as it is: each
 * connection gets an SSL object over its socket, reads and writes go
 * through tls_read()/tls_write(), which behave like recv()/send() on a
 * non-blocking socket. The handshake happens inside the first reads and
 * writes (SSL_set_accept_state). When OpenSSL needs the other direction
 * (a handshake message to send while we read, or to read while we write)
 * the connection records it and conn.c arms that epoll event.
 *
 * Everything here runs on the loop thread. */
#include "broker.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

static SSL_CTX *ctx;

bool tls_enabled(void) { return ctx != NULL; }

static void ssl_error_text(char *out, size_t n)
{
    unsigned long e = ERR_get_error();
    if (!e) {
        snprintf(out, n, "%s", errno ? strerror(errno) : "unknown error");
        return;
    }
    ERR_error_string_n(e, out, n);
    ERR_clear_error();
}

int tls_init(const config *cfg, char *err, size_t errlen)
{
    if (!cfg->tls_cert)
        return 0;
    struct stat st;
    if (stat(cfg->tls_key, &st) == 0 && (st.st_mode & 0077)) {
        snprintf(err, errlen, "--tls-key %s is readable or writable by other "
                 "users (mode %03o): run 'chmod 600 %s'", cfg->tls_key,
                 (unsigned)(st.st_mode & 0777), cfg->tls_key);
        return -1;
    }
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, errlen, "TLS: cannot create a context");
        return -1;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* A client that closes without close_notify has closed, not failed. */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* No TLS 1.3 session tickets: clients reconnect seldom, and a ticket
     * arriving after the handshake trips clients that read and write one
     * TLS session from two threads (python3-stomp hung 1 time in 10). */
    SSL_CTX_set_num_tickets(ctx, 0);
    /* Writes come from c->out, which may move between retries. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    char e[256];
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
        ssl_error_text(e, sizeof e);
        snprintf(err, errlen, "--tls-cert %s: %s (expected a PEM certificate, "
                 "optionally followed by its chain)", cfg->tls_cert, e);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1) {
        ssl_error_text(e, sizeof e);
        snprintf(err, errlen, "--tls-key %s: %s (expected a PEM private key)",
                 cfg->tls_key, e);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errlen, "--tls-key %s does not belong to --tls-cert %s",
                 cfg->tls_key, cfg->tls_cert);
        goto fail;
    }
    if (cfg->tls_ca) {
        if (SSL_CTX_load_verify_locations(ctx, cfg->tls_ca, NULL) != 1) {
            ssl_error_text(e, sizeof e);
            snprintf(err, errlen, "--tls-ca %s: %s", cfg->tls_ca, e);
            goto fail;
        }
        /* A client certificate signed by that CA is then required. */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER |
                                    SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    log_msg(LOG_INFO, "TLS on the listener: certificate %s%s%s",
            cfg->tls_cert, cfg->tls_ca ? ", client certificates from " : "",
            cfg->tls_ca ? cfg->tls_ca : "");
    return 0;
fail:
    SSL_CTX_free(ctx);
    ctx = NULL;
    return -1;
}

void tls_free_ctx(void)
{
    SSL_CTX_free(ctx);
    ctx = NULL;
}

int tls_attach(conn *c)
{
    c->ssl = SSL_new(ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
        SSL_free(c->ssl);
        c->ssl = NULL;
        return -1;
    }
    SSL_set_accept_state(c->ssl);
    return 0;
}

void tls_detach(conn *c)
{
    if (!c->ssl)
        return;
    SSL_free(c->ssl);
    c->ssl = NULL;
}

/* Map an OpenSSL result to recv()/send() conventions: -1 with EAGAIN
 * when it must wait (and which way), 0 for a clean end, -1 with EIO and a
 * reason otherwise. */
static ssize_t io_result(conn *c, int n, bool reading, char *why,
                         size_t whylen)
{
    if (n > 0)
        return n;
    int e = SSL_get_error(c->ssl, n);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        if (!reading)
            c->tls_write_wants_read = true;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        if (reading)
            c->tls_read_wants_write = true;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (n == 0 || errno == 0) {
            ERR_clear_error();
            return 0; /* closed without close_notify: an EOF all the same */
        }
        snprintf(why, whylen, "TLS: %s", strerror(errno));
        ERR_clear_error();
        errno = EIO;
        return -1;
    default: {
        char t[200];
        ssl_error_text(t, sizeof t);
        snprintf(why, whylen, "TLS %s failed: %s",
                 SSL_is_init_finished(c->ssl) ? "session" : "handshake", t);
        errno = EIO;
        return -1;
    }
    }
}

ssize_t tls_read(conn *c, void *dst, size_t n, char *why, size_t whylen)
{
    c->tls_read_wants_write = false;
    ERR_clear_error();
    int r = SSL_read(c->ssl, dst, n > INT32_MAX ? INT32_MAX : (int)n);
    return io_result(c, r, true, why, whylen);
}

ssize_t tls_write(conn *c, const void *src, size_t n, char *why,
                  size_t whylen)
{
    c->tls_write_wants_read = false;
    ERR_clear_error();
    int r = SSL_write(c->ssl, src, n > INT32_MAX ? INT32_MAX : (int)n);
    return io_result(c, r, false, why, whylen);
}

/* Data OpenSSL holds that epoll cannot see: decrypted bytes not yet read,
 * or raw bytes it read ahead from the socket. */
size_t tls_pending(conn *c)
{
    return c->ssl && SSL_has_pending(c->ssl) ? 1 : 0;
}

void tls_close_notify(conn *c)
{
    if (c->ssl && SSL_is_init_finished(c->ssl)) {
        ERR_clear_error();
        (void)SSL_shutdown(c->ssl); /* best effort: one try, no waiting */
        ERR_clear_error();
    }
}
