/*
 * faults_util.c - URI handling, log capture, the in-process TCP proxy, the
 * admin connection and the server restart of mqs_faults.
 */
#include "faults.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef FX_HAVE_LIBPQ
#include <libpq-fe.h>
#endif
#ifdef FX_HAVE_MYSQL
#include <mysql.h>
#endif
#ifdef FX_HAVE_SQLITE3
#include <sqlite3.h>
#endif

fx_server g_srv;
char g_tmp[256];

/* ------------------------------------------------------------------------
 * Time, names
 * ---------------------------------------------------------------------- */

int64_t fx_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void fx_sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

const char *fx_name(char *buf, size_t len, const char *what)
{
    static atomic_int seq;
    snprintf(buf, len, "fx%ld_%ld_%d_%s", (long)getpid(),
             (long)(time(NULL) % 100000), atomic_fetch_add(&seq, 1) + 1, what);
    return buf;
}

/* ------------------------------------------------------------------------
 * URIs
 * ---------------------------------------------------------------------- */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Percent-decode src[0..n) into dst (NUL-terminated); -1 if it does not
 * fit or is malformed. */
static int pct_decode(char *dst, size_t size, const char *src, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)src[i];
        if (c == '%') {
            if (i + 2 >= n)
                return -1;
            int h = hexval((unsigned char)src[i + 1]);
            int l = hexval((unsigned char)src[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            c = h * 16 + l;
            i += 2;
        }
        if (k + 1 >= size)
            return -1;
        dst[k++] = (char)c;
    }
    dst[k] = '\0';
    return 0;
}

static void pct_encode(char *dst, size_t size, const char *src)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t k = 0;
    for (const unsigned char *p = (const unsigned char *)src; *p; p++) {
        if (isalnum(*p) || strchr("-._~", *p)) {
            if (k + 1 >= size)
                break;
            dst[k++] = (char)*p;
        } else {
            if (k + 3 >= size)
                break;
            dst[k++] = '%';
            dst[k++] = hex[*p >> 4];
            dst[k++] = hex[*p & 15];
        }
    }
    dst[k] = '\0';
}

int fx_parse_uri(const char *uri, fx_server *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->uri = uri;
    if (!strncasecmp(uri, "sqlite:/", 8) && uri[8] != '/') {
        /* sqlite:/abs/path */
        out->kind = FX_SQLITE;
        snprintf(out->scheme, sizeof out->scheme, "sqlite");
        const char *p = uri + 7;
        const char *q = strchr(p, '?');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (pct_decode(out->db, sizeof out->db, p, n)) {
            snprintf(err, errlen, "bad path encoding in the URI");
            return -1;
        }
        if (q)
            snprintf(out->query, sizeof out->query, "%s", q + 1);
        return 0;
    }
    const char *sep = strstr(uri, "://");
    if (!sep || (size_t)(sep - uri) >= sizeof out->scheme) {
        snprintf(err, errlen, "no scheme:// in the URI");
        return -1;
    }
    for (size_t i = 0; uri + i < sep; i++)
        out->scheme[i] = (char)tolower((unsigned char)uri[i]);
    if (!strcmp(out->scheme, "postgresql") || !strcmp(out->scheme, "postgres")) {
        out->kind = FX_PG;
        out->port = 5432;
    } else if (!strcmp(out->scheme, "mysql") || !strcmp(out->scheme, "mariadb")) {
        out->kind = FX_MYSQL;
        out->port = 3306;
    } else if (!strcmp(out->scheme, "sqlite")) {
        /* sqlite:///abs/path (or sqlite://localhost/abs/path): a file, no
         * server. The path is what the admin opens with sqlite3. */
        out->kind = FX_SQLITE;
        const char *p = sep + 3;
        if (!strncmp(p, "localhost/", 10))
            p += 9;
        const char *q = strchr(p, '?');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (*p != '/' || n < 2 ||
            pct_decode(out->db, sizeof out->db, p, n)) {
            snprintf(err, errlen, "expected sqlite:///absolute/path.db");
            return -1;
        }
        if (q)
            snprintf(out->query, sizeof out->query, "%s", q + 1);
        return 0;
    } else {
        snprintf(err, errlen, "scheme '%s' has no database server to fault",
                 out->scheme);
        return 1;
    }
    const char *a = sep + 3;
    const char *q = strchr(a, '?');
    const char *end = q ? q : a + strlen(a);
    const char *slash = memchr(a, '/', (size_t)(end - a));
    const char *hostend = slash ? slash : end;
    const char *at = NULL;
    for (const char *p = a; p < hostend; p++)
        if (*p == '@')
            at = p;
    const char *h = a;
    if (at) {
        const char *colon = memchr(a, ':', (size_t)(at - a));
        const char *uend = colon ? colon : at;
        if (pct_decode(out->user, sizeof out->user, a, (size_t)(uend - a)) ||
            (colon && pct_decode(out->password, sizeof out->password,
                                 colon + 1, (size_t)(at - colon - 1)))) {
            snprintf(err, errlen, "bad user or password encoding in the URI");
            return -1;
        }
        h = at + 1;
    }
    const char *pc = NULL;
    for (const char *p = h; p < hostend; p++)
        if (*p == ':')
            pc = p;
    const char *hend = pc ? pc : hostend;
    if ((size_t)(hend - h) >= sizeof out->host || hend == h ||
        memchr(h, ',', (size_t)(hend - h))) {
        snprintf(err, errlen, "the URI needs exactly one host name");
        return -1;
    }
    memcpy(out->host, h, (size_t)(hend - h));
    if (pc)
        out->port = atoi(pc + 1);
    if (slash && pct_decode(out->db, sizeof out->db, slash + 1,
                            (size_t)(end - slash - 1))) {
        snprintf(err, errlen, "bad database name in the URI");
        return -1;
    }
    if (!out->db[0]) {
        snprintf(err, errlen, "the URI names no database");
        return -1;
    }
    if (q)
        snprintf(out->query, sizeof out->query, "%s", q + 1);
    return 0;
}

char *fx_uri(const char *password, int port, const char *db, const char *opts)
{
    char u[400], pw[800], d[400];
    pct_encode(u, sizeof u, g_srv.user);
    pct_encode(pw, sizeof pw, password ? password : g_srv.password);
    pct_encode(d, sizeof d, db ? db : g_srv.db);
    size_t n = 2048 + strlen(g_srv.query) + (opts ? strlen(opts) : 0);
    char *out = malloc(n);
    assert_non_null(out);
    int k;
    if (g_srv.kind == FX_SQLITE) {
        /* a file: password, port and db do not apply */
        char path[1600];
        size_t j = 0;
        for (const unsigned char *p = (const unsigned char *)g_srv.db;
             *p && j + 4 < sizeof path; p++) {
            if (isalnum(*p) || strchr("-._~/", *p)) {
                path[j++] = (char)*p;
            } else {
                snprintf(path + j, sizeof path - j, "%%%02X", *p);
                j += 3;
            }
        }
        path[j] = '\0';
        k = snprintf(out, n, "sqlite://%s", path);
    } else {
        k = snprintf(out, n, "%s://%s%s%s%s%s:%d/%s", g_srv.scheme, u,
                     pw[0] ? ":" : "", pw, u[0] || pw[0] ? "@" : "",
                     g_srv.host, port ? port : g_srv.port, d);
    }
    const char *join = "?";
    if (g_srv.query[0]) {
        k += snprintf(out + k, n - (size_t)k, "?%s", g_srv.query);
        join = "&";
    }
    if (opts && *opts)
        snprintf(out + k, n - (size_t)k, "%s%s", join, opts);
    return out;
}

/* ------------------------------------------------------------------------
 * Secrets and log capture
 * ---------------------------------------------------------------------- */

int fx_has_secret(const char *s, const char *extra)
{
    if (!s)
        return 0;
    if (g_srv.password[0] && strstr(s, g_srv.password))
        return 1;
    return extra && *extra && strstr(s, extra) != NULL;
}

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static size_t log_n, log_secret, log_printed;

static void fx_log(void *ud, mqs_log_level level, const char *msg)
{
    (void)ud;
    static const char *const names[] = {"ERROR", "WARN", "INFO", "DEBUG"};
    pthread_mutex_lock(&log_mu);
    log_n++;
    if (fx_has_secret(msg, NULL))
        log_secret++;
    /* The first lines tell what the store went through; then only count. */
    if (level <= MQS_LOG_WARN && log_printed < 40) {
        log_printed++;
        fprintf(stderr, "    [store %s] %s\n",
                names[level <= MQS_LOG_DEBUG ? level : 0], msg);
    }
    pthread_mutex_unlock(&log_mu);
}

const mqs_open_opts g_log_opts = {fx_log, NULL, MQS_LOG_INFO};

void fx_log_counts(size_t *n, size_t *with_password)
{
    pthread_mutex_lock(&log_mu);
    *n = log_n;
    *with_password = log_secret;
    pthread_mutex_unlock(&log_mu);
}

/* ------------------------------------------------------------------------
 * The proxy
 * ---------------------------------------------------------------------- */

#define PROXY_MAX 32

struct fx_proxy {
    int lfd, port, target, silent;
    atomic_int stop, accepted, talked, cut_commit;
    pthread_t th;
    int cfd[PROXY_MAX], sfd[PROXY_MAX]; /* client side, server side (-1) */
    int heard[PROXY_MAX];               /* client sent something */
    int n;
};

static int connect_local(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void proxy_drop(fx_proxy *p, int i)
{
    close(p->cfd[i]);
    if (p->sfd[i] >= 0)
        close(p->sfd[i]);
    p->n--;
    p->cfd[i] = p->cfd[p->n];
    p->sfd[i] = p->sfd[p->n];
    p->heard[i] = p->heard[p->n];
}

static int write_all(int fd, const char *b, ssize_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, b, (size_t)n);
        if (w <= 0)
            return -1;
        b += w;
        n -= w;
    }
    return 0;
}

/* CommandComplete 'C', length 11, "COMMIT\0": the answer to a COMMIT that
 * committed (one that ended a failed block says ROLLBACK). */
static int has_commit_tag(const char *b, size_t n)
{
    static const char tag[] = {'C', 0, 0, 0, 11, 'C', 'O', 'M', 'M', 'I', 'T', 0};
    for (size_t i = 0; i + sizeof tag <= n; i++)
        if (memcmp(b + i, tag, sizeof tag) == 0)
            return 1;
    return 0;
}

static void *proxy_main(void *arg)
{
    fx_proxy *p = arg;
    char buf[16384];
    while (!atomic_load(&p->stop)) {
        struct pollfd f[1 + 2 * PROXY_MAX];
        int k = 0;
        f[k++] = (struct pollfd){p->lfd, POLLIN, 0};
        for (int i = 0; i < p->n; i++) {
            f[k++] = (struct pollfd){p->cfd[i], POLLIN, 0};
            f[k++] = (struct pollfd){p->sfd[i], p->sfd[i] >= 0 ? POLLIN : 0, 0};
        }
        if (poll(f, (nfds_t)k, 20) < 0)
            continue;
        /* connections first: the indexes below are this poll's */
        for (int i = p->n - 1; i >= 0; i--) {
            struct pollfd *c = &f[1 + 2 * i], *s = &f[2 + 2 * i];
            int dead = 0;
            if (c->revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t r = read(p->cfd[i], buf, sizeof buf);
                if (r <= 0) {
                    dead = 1;
                } else {
                    if (!p->heard[i]) {
                        p->heard[i] = 1;
                        atomic_fetch_add(&p->talked, 1);
                    }
                    /* silent: swallow it, never answer */
                    if (p->sfd[i] >= 0 && write_all(p->sfd[i], buf, r))
                        dead = 1;
                }
            }
            if (!dead && p->sfd[i] >= 0 &&
                (s->revents & (POLLIN | POLLHUP | POLLERR))) {
                ssize_t r = read(p->sfd[i], buf, sizeof buf);
                if (r > 0 && atomic_load(&p->cut_commit) &&
                    has_commit_tag(buf, (size_t)r)) {
                    atomic_store(&p->cut_commit, 0);
                    dead = 1; /* the answer never reaches the client */
                } else if (r <= 0 || write_all(p->cfd[i], buf, r)) {
                    dead = 1;
                }
            }
            if (dead)
                proxy_drop(p, i);
        }
        if (f[0].revents & POLLIN) {
            int c = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
            if (c >= 0) {
                atomic_fetch_add(&p->accepted, 1);
                int s = p->silent ? -1 : connect_local(p->target);
                if (p->n == PROXY_MAX || (!p->silent && s < 0)) {
                    close(c);
                    if (s >= 0)
                        close(s);
                } else {
                    p->cfd[p->n] = c;
                    p->sfd[p->n] = s;
                    p->heard[p->n] = 0;
                    p->n++;
                }
            }
        }
    }
    while (p->n > 0)
        proxy_drop(p, p->n - 1);
    return NULL;
}

fx_proxy *fx_proxy_start(int target_port, int silent)
{
    fx_proxy *p = calloc(1, sizeof *p);
    assert_non_null(p);
    p->target = target_port;
    p->silent = silent;
    p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(p->lfd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(p->lfd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(p->lfd, 16) != 0 ||
        getsockname(p->lfd, (struct sockaddr *)&a, &al) != 0)
        fail_msg("proxy: cannot listen on 127.0.0.1: %s", strerror(errno));
    p->port = ntohs(a.sin_port);
    if (pthread_create(&p->th, NULL, proxy_main, p) != 0)
        fail_msg("proxy: cannot start its thread");
    return p;
}

int fx_proxy_port(const fx_proxy *p) { return p->port; }

void fx_proxy_counts(fx_proxy *p, int *accepted, int *talked)
{
    *accepted = atomic_load(&p->accepted);
    *talked = atomic_load(&p->talked);
}

void fx_proxy_cut_at_commit(fx_proxy *p) { atomic_store(&p->cut_commit, 1); }

void fx_proxy_stop(fx_proxy *p)
{
    if (!p)
        return;
    atomic_store(&p->stop, 1);
    pthread_join(p->th, NULL);
    close(p->lfd);
    free(p);
}

int fx_closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    close(fd); /* never listened: connecting is refused */
    return ntohs(a.sin_port);
}

/* ------------------------------------------------------------------------
 * Admin connection
 * ---------------------------------------------------------------------- */

struct fx_admin {
#ifdef FX_HAVE_LIBPQ
    PGconn *pg;
#endif
#ifdef FX_HAVE_MYSQL
    MYSQL *my;
#endif
#ifdef FX_HAVE_SQLITE3
    sqlite3 *lt;
#endif
    int dummy;
};

static void oneline(char *dst, size_t size, const char *src)
{
    size_t k = 0;
    for (; src && *src && k + 1 < size; src++)
        dst[k++] = *src == '\n' ? ' ' : *src;
    while (k > 0 && dst[k - 1] == ' ')
        k--;
    dst[k] = '\0';
}

fx_admin *fx_admin_open(void)
{
    fx_admin *a = calloc(1, sizeof *a);
    assert_non_null(a);
    char port[16];
    snprintf(port, sizeof port, "%d", g_srv.port);
    if (g_srv.kind == FX_SQLITE) {
#ifdef FX_HAVE_SQLITE3
        /* The file exists (a store created it): never create one here. */
        int rc = sqlite3_open_v2(g_srv.db, &a->lt, SQLITE_OPEN_READWRITE,
                                 NULL);
        if (rc != SQLITE_OK)
            fail_msg("admin: cannot open %s with sqlite3: %s", g_srv.db,
                     a->lt ? sqlite3_errmsg(a->lt) : sqlite3_errstr(rc));
        sqlite3_busy_timeout(a->lt, 10000);
        return a;
#endif
    } else if (g_srv.kind == FX_PG) {
#ifdef FX_HAVE_LIBPQ
        const char *kw[] = {"host", "port", "user", "password", "dbname",
                            "application_name", "connect_timeout", NULL};
        const char *val[] = {g_srv.host, port, g_srv.user, g_srv.password,
                             g_srv.db, "mqs-faults-admin", "5", NULL};
        a->pg = PQconnectdbParams(kw, val, 0);
        if (!a->pg || PQstatus(a->pg) != CONNECTION_OK) {
            char m[512];
            oneline(m, sizeof m, a->pg ? PQerrorMessage(a->pg) : "no memory");
            fail_msg("admin connection to %s:%d failed: %s", g_srv.host,
                     g_srv.port, m);
        }
        return a;
#endif
    } else {
#ifdef FX_HAVE_MYSQL
        a->my = mysql_init(NULL);
        assert_non_null(a->my);
        unsigned int t = 5, rt = 120;
        mysql_options(a->my, MYSQL_OPT_CONNECT_TIMEOUT, &t);
        mysql_options(a->my, MYSQL_OPT_READ_TIMEOUT, &rt);
        if (!mysql_real_connect(a->my, g_srv.host, g_srv.user, g_srv.password,
                                g_srv.db, (unsigned)g_srv.port, NULL, 0))
            fail_msg("admin connection to %s:%d failed: %s", g_srv.host,
                     g_srv.port, mysql_error(a->my));
        return a;
#endif
    }
    fail_msg("this test binary was built without the %s client library",
             g_srv.scheme);
    return NULL;
}

void fx_admin_close(fx_admin *a)
{
    if (!a)
        return;
#ifdef FX_HAVE_LIBPQ
    if (a->pg)
        PQfinish(a->pg);
#endif
#ifdef FX_HAVE_MYSQL
    if (a->my)
        mysql_close(a->my);
#endif
#ifdef FX_HAVE_SQLITE3
    if (a->lt)
        sqlite3_close_v2(a->lt);
#endif
    free(a);
}

/* Run sql; with out != NULL, the first column of the first row. */
static int admin_run(fx_admin *a, const char *sql, int64_t *out, char *err,
                     size_t errlen)
{
    err[0] = '\0';
#ifdef FX_HAVE_LIBPQ
    if (a->pg) {
        PGresult *r = PQexec(a->pg, sql);
        ExecStatusType st = PQresultStatus(r);
        int rc = 0;
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
            oneline(err, errlen, PQresultErrorMessage(r));
            rc = -1;
        } else if (out) {
            if (PQntuples(r) < 1 || PQnfields(r) < 1 || PQgetisnull(r, 0, 0)) {
                snprintf(err, errlen, "no value returned by: %s", sql);
                rc = -1;
            } else {
                *out = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
            }
        }
        PQclear(r);
        return rc;
    }
#endif
#ifdef FX_HAVE_MYSQL
    if (a->my) {
        if (mysql_query(a->my, sql) != 0) {
            snprintf(err, errlen, "%s (MySQL error %u)", mysql_error(a->my),
                     mysql_errno(a->my));
            return -1;
        }
        MYSQL_RES *res = mysql_store_result(a->my);
        int rc = 0;
        if (out) {
            MYSQL_ROW row = res ? mysql_fetch_row(res) : NULL;
            if (!row || !row[0]) {
                snprintf(err, errlen, "no value returned by: %s", sql);
                rc = -1;
            } else {
                *out = strtoll(row[0], NULL, 10);
            }
        }
        if (res)
            mysql_free_result(res);
        return rc;
    }
#endif
#ifdef FX_HAVE_SQLITE3
    if (a->lt) {
        /* Every statement of sql in turn; out gets the first column of the
         * first row any of them returns. */
        const char *tail = sql;
        int got = 0;
        while (tail && *tail) {
            sqlite3_stmt *st = NULL;
            int rc = sqlite3_prepare_v2(a->lt, tail, -1, &st, &tail);
            if (rc != SQLITE_OK) {
                snprintf(err, errlen, "%s (SQLite %d)", sqlite3_errmsg(a->lt),
                         rc);
                sqlite3_finalize(st);
                return -1;
            }
            if (!st) /* whitespace or a comment */
                continue;
            while ((rc = sqlite3_step(st)) == SQLITE_ROW)
                if (out && !got &&
                    sqlite3_column_type(st, 0) != SQLITE_NULL) {
                    *out = sqlite3_column_int64(st, 0);
                    got = 1;
                }
            if (rc != SQLITE_DONE) {
                snprintf(err, errlen, "%s (SQLite %d)", sqlite3_errmsg(a->lt),
                         rc);
                sqlite3_finalize(st);
                return -1;
            }
            sqlite3_finalize(st);
        }
        if (out && !got) {
            snprintf(err, errlen, "no value returned by: %s", sql);
            return -1;
        }
        return 0;
    }
#endif
    (void)sql;
    (void)out;
    snprintf(err, errlen, "no admin connection");
    return -1;
}

int fx_admin_exec(fx_admin *a, const char *sql, char *err, size_t errlen)
{
    return admin_run(a, sql, NULL, err, errlen);
}

int fx_admin_i64(fx_admin *a, const char *sql, int64_t *out, char *err,
                 size_t errlen)
{
    *out = -1;
    return admin_run(a, sql, out, err, errlen);
}

void fx_admin_must(fx_admin *a, const char *sql)
{
    char err[512];
    if (fx_admin_exec(a, sql, err, sizeof err))
        fail_msg("admin: %s: %s", sql, err);
}

int64_t fx_admin_must_i64(fx_admin *a, const char *sql)
{
    char err[512];
    int64_t v;
    if (fx_admin_i64(a, sql, &v, err, sizeof err))
        fail_msg("admin: %s: %s", sql, err);
    return v;
}

/* ------------------------------------------------------------------------
 * Killing the store's connections
 * ---------------------------------------------------------------------- */

static void check_app_name(const char *app)
{
    if (!app || !*app)
        fail_msg("no application_name to find the store's connections by");
    for (const char *p = app; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-')
            fail_msg("application_name '%s' has characters unsafe for SQL",
                     app);
}

#ifdef FX_HAVE_MYSQL
/* Local ports of this process's established TCP connections to the
 * server's port, from /proc/self/fd (socket inodes) and
 * /proc/self/net/tcp (inode -> ports). */
static int own_client_ports(int *ports, int max)
{
    unsigned long inodes[512];
    int ni = 0;
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d)) != NULL && ni < 512;) {
        char path[300], link[64];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n <= 0)
            continue;
        link[n] = '\0';
        unsigned long ino;
        if (sscanf(link, "socket:[%lu]", &ino) == 1)
            inodes[ni++] = ino;
    }
    closedir(d);
    int np = 0;
    const char *files[] = {"/proc/self/net/tcp", "/proc/self/net/tcp6"};
    for (int f = 0; f < 2; f++) {
        FILE *fp = fopen(files[f], "r");
        if (!fp)
            continue;
        char line[512];
        if (!fgets(line, sizeof line, fp)) { /* header */
            fclose(fp);
            continue;
        }
        while (fgets(line, sizeof line, fp) && np < max) {
            char local[64], remote[64];
            unsigned st;
            unsigned long ino;
            /* sl local rem st tx:rx tr:when retr uid timeout inode */
            if (sscanf(line, " %*s %63s %63s %x %*s %*s %*s %*s %*s %lu",
                       local, remote, &st, &ino) != 4 || st != 1)
                continue;
            const char *lc = strrchr(local, ':'), *rc = strrchr(remote, ':');
            if (!lc || !rc || (int)strtol(rc + 1, NULL, 16) != g_srv.port)
                continue;
            for (int i = 0; i < ni; i++)
                if (inodes[i] == ino) {
                    ports[np++] = (int)strtol(lc + 1, NULL, 16);
                    break;
                }
        }
        fclose(fp);
    }
    return np;
}

/* Ids of the server sessions behind this process's store connections. */
static int mysql_own_ids(fx_admin *a, unsigned long *ids, int max)
{
    int ports[256];
    int np = own_client_ports(ports, 256);
    if (mysql_query(a->my, "SELECT ID, HOST FROM information_schema.PROCESSLIST "
                           "WHERE USER = SUBSTRING_INDEX(USER(), '@', 1)") != 0)
        fail_msg("admin: reading PROCESSLIST: %s", mysql_error(a->my));
    MYSQL_RES *res = mysql_store_result(a->my);
    assert_non_null(res);
    unsigned long self = mysql_thread_id(a->my);
    int n = 0;
    for (MYSQL_ROW row; (row = mysql_fetch_row(res)) != NULL && n < max;) {
        unsigned long id = strtoul(row[0], NULL, 10);
        const char *colon = row[1] ? strrchr(row[1], ':') : NULL;
        if (id == self || !colon)
            continue;
        int port = atoi(colon + 1);
        for (int i = 0; i < np; i++)
            if (ports[i] == port) {
                ids[n++] = id;
                break;
            }
    }
    mysql_free_result(res);
    return n;
}
#endif

int fx_count_own(fx_admin *a, const char *pg_app_name)
{
#ifdef FX_HAVE_LIBPQ
    if (a->pg) {
        check_app_name(pg_app_name);
        char sql[512];
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM pg_stat_activity WHERE "
                 "application_name = '%s' AND datname = current_database() "
                 "AND pid <> pg_backend_pid()",
                 pg_app_name);
        return (int)fx_admin_must_i64(a, sql);
    }
#endif
#ifdef FX_HAVE_MYSQL
    if (a->my) {
        unsigned long ids[64];
        (void)pg_app_name;
        return mysql_own_ids(a, ids, 64);
    }
#endif
    (void)pg_app_name;
    fail_msg("no admin connection");
    return 0;
}

int fx_kill_own(fx_admin *a, const char *pg_app_name)
{
#ifdef FX_HAVE_LIBPQ
    if (a->pg) {
        check_app_name(pg_app_name);
        char sql[512];
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                 "FROM pg_stat_activity WHERE application_name = '%s' AND "
                 "datname = current_database() AND pid <> pg_backend_pid()",
                 pg_app_name);
        return (int)fx_admin_must_i64(a, sql);
    }
#endif
#ifdef FX_HAVE_MYSQL
    if (a->my) {
        unsigned long ids[64];
        (void)pg_app_name;
        int n = mysql_own_ids(a, ids, 64), killed = 0;
        for (int i = 0; i < n; i++) {
            char sql[64];
            snprintf(sql, sizeof sql, "KILL CONNECTION %lu", ids[i]);
            if (mysql_query(a->my, sql) == 0)
                killed++;
            else if (mysql_errno(a->my) != 1094) /* gone meanwhile */
                fail_msg("admin: %s: %s", sql, mysql_error(a->my));
        }
        return killed;
    }
#endif
    (void)pg_app_name;
    fail_msg("no admin connection");
    return 0;
}

/* ------------------------------------------------------------------------
 * Restart
 * ---------------------------------------------------------------------- */

const char *fx_db_script(void)
{
    const char *p = getenv("MQSTORE_TEST_DB_SCRIPT");
    if (p && *p)
        return p;
    if (getenv("MQSTORE_REQUIRE_SERVERS") ||
        (getenv("CI") && !strcmp(getenv("CI"), "true")))
        fail_msg("MQSTORE_TEST_DB_SCRIPT is not set: cannot restart the "
                 "server on %s:%d", g_srv.host, g_srv.port);
    print_message("MQSTORE_TEST_DB_SCRIPT is not set: no way to restart the "
                  "server, skipped\n");
    skip();
    return NULL;
}

int64_t fx_db_restart(long pause_ms)
{
    const char *script = fx_db_script();
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "MQS_RESTART_PAUSE_MS=%ld bash '%s' restart >%s/restart.out "
             "2>&1",
             pause_ms, script, g_tmp);
    int64_t t0 = fx_mono_ms();
    int rc = system(cmd);
    int64_t took = fx_mono_ms() - t0;
    if (rc != 0) {
        char path[320];
        snprintf(path, sizeof path, "%s/restart.out", g_tmp);
        FILE *f = fopen(path, "r");
        char out[2048] = "";
        if (f) {
            size_t n = fread(out, 1, sizeof out - 1, f);
            out[n] = '\0';
            fclose(f);
        }
        fail_msg("restarting the server with %s failed (status %d): %s",
                 script, rc, out);
    }
    print_message("  server restarted (down >= %ld ms): the restart took "
                  "%lld ms\n", pause_ms, (long long)took);
    return took;
}
