/*
 * mqs-raw-insert - the raw-database baseline for mqstore-bench.
 *
 * N producer threads, each with its own connection, each committing ONE
 * INSERT of one --size byte bytea/blob row per transaction (autocommit, or
 * BEGIN + INSERT + COMMIT with --txn explicit) into a scratch table this
 * program creates and drops. No mqstore in between: this is what the
 * database does for one-transaction-per-message on its own, the figure
 * group commit has to beat.
 *
 * --rows R makes each INSERT carry R rows (one statement, one commit): the
 * database committing a batch the size of mqstore's group commit, with no
 * fence and no index of mqstore's. mqstore-bench --sync runs it with one
 * connection and R = producers beside P synchronous producers: how fast
 * the bare database could commit what they send, a ceiling for the store.
 *
 * Output mirrors mqstore-bench: msg/s, latency p50/p99/max (the INSERT call,
 * or BEGIN..COMMIT), a table on stdout and --json. Latencies go into arrays
 * allocated before the clock starts and are sorted afterwards.
 *
 * Backends: postgresql:// (libpq), mysql:// (MySQL/MariaDB client library)
 * and sqlite: (libsqlite3: one connection per thread on one file, WAL, the
 * URI's synchronous=, busy_timeout=, journal_mode= as mqstore reads them),
 * each compiled in when its library was found at build time.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#ifdef MQS_RAW_HAVE_PQ
#include <libpq-fe.h>
#endif
#ifdef MQS_RAW_HAVE_MYSQL
#include <mysql.h>
#endif
#ifdef MQS_RAW_HAVE_SQLITE
#include <sqlite3.h>
#endif

#include "common.h"

#ifndef MQS_BENCH_VERSION
#define MQS_BENCH_VERSION "unknown"
#endif


#define DEF_PRODUCERS 8
#define DEF_SIZE 1024
#define DEF_DURATION 10.0
#define DEF_STALL 60.0
#define DURATION_CAP_MESSAGES 2000000L
#define MAX_DURATION 3600.0
#define MAX_THREADS 256
#define MAX_ROWS 256
#define MAX_ERRORS_PER_THREAD 1000
#define PROGRESS_EVERY_NS (2 * 1000000000LL)

typedef struct config {
    const char *uri;
    int producers;
    size_t size;
    double duration; /* 0: none (then --messages bounds the run) */
    long messages;   /* total; a cap when duration > 0 */
    bool explicit_txn;
    int rows;        /* rows per INSERT (and per transaction) */
    double stall;
    const char *json_path;
    char table[64];
} config;

static config cfg;
static char uri_shown[1024];
static atomic_int stop_flag;
static atomic_uint_fast64_t progress_count;
static atomic_int threads_running;

/* ------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------- */

static void copy_err(char *dst, size_t n, const char *msg)
{
    if (dst[0] == '\0')
        snprintf(dst, n, "%s", msg && *msg ? msg : "unknown error");
}

/* Trailing newlines of client-library messages, gone. */
static void chomp(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' '))
        s[--n] = '\0';
}

/* The URI with the userinfo password and any password= option masked. */
static void mask_uri(const char *uri, char *out, size_t n)
{
    char buf[1024];
    snprintf(out, n, "%s", uri);
    char *auth = strstr(out, "://");
    if (auth) {
        auth += 3;
        size_t alen = strcspn(auth, "/?#");
        char *at = NULL;
        for (char *p = auth; p < auth + alen; p++)
            if (*p == '@')
                at = p; /* the last '@' of the authority ends the userinfo */
        char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
        if (colon) {
            snprintf(buf, sizeof buf, "%.*s:***%s", (int)(colon - out), out, at);
            snprintf(out, n, "%s", buf);
        }
    }
    char *q = strchr(out, '?');
    while (q) {
        q++;
        char *next = strchr(q, '&');
        if (strncmp(q, "password=", 9) == 0) {
            snprintf(buf, sizeof buf, "%.*spassword=***%s", (int)(q - out), out,
                     next ? next : "");
            snprintf(out, n, "%s", buf);
            next = strchr(q, '&');
        }
        q = next;
    }
}

/* %XX decoding in place (URI components). */
static void pct_decode(char *s)
{
    char *w = s;
    for (char *r = s; *r; r++) {
        if (r[0] == '%' && r[1] && r[2]) {
            char hex[3] = {r[1], r[2], 0};
            char *end;
            long v = strtol(hex, &end, 16);
            if (*end == '\0') {
                *w++ = (char)v;
                r += 2;
                continue;
            }
        }
        *w++ = *r;
    }
    *w = '\0';
}

/* mqstore's own (core) URI options: accepted, so the same URI serves both
 * tools, and ignored. */
static bool is_core_option(const char *key, size_t len)
{
    static const char *const core[] = {
        "commit", "batch_max", "batch_bytes", "max_message_size",
        "max_pending_bytes", "pool_size", "migrate", "reconnect_timeout_ms",
        "cluster", "node_id", "lease_ms", "renew_ms", "poll_ms", "crash_detect"};
    for (size_t i = 0; i < sizeof core / sizeof *core; i++)
        if (strlen(core[i]) == len && strncmp(core[i], key, len) == 0)
            return true;
    return false;
}

/* ------------------------------------------------------------------------
 * Backends: connect, create/drop the table, one-row-per-transaction insert
 * ---------------------------------------------------------------------- */

enum { INS_OK = 0, INS_ERR = -1, INS_DEAD = -2 };

/* "INSERT INTO t (body) VALUES (<p1>), (<p2>), ..." for cfg.rows rows: one
 * statement, so a batch costs what the database charges for it and no
 * round trip more. mark(i) is the driver's placeholder for row i. */
static int values_sql(char *out, size_t n, const char *(*mark)(int, char *, size_t))
{
    size_t len = (size_t)snprintf(out, n, "INSERT INTO %s (body) VALUES ", cfg.table);
    for (int i = 0; i < cfg.rows && len < n; i++) {
        char m[16];
        len += (size_t)snprintf(out + len, n - len, "%s(%s)", i ? ", " : "",
                                mark(i, m, sizeof m));
    }
    return len < n ? 0 : -1;
}

#if defined(MQS_RAW_HAVE_MYSQL) || defined(MQS_RAW_HAVE_SQLITE)
static const char *qmark(int i, char *m, size_t n)
{
    (void)i;
    snprintf(m, n, "?");
    return m;
}
#endif

typedef struct backend {
    const char *name;
    void *(*connect)(char *err, size_t n);
    int (*exec)(void *c, const char *sql, char *err, size_t n);
    int (*prepare)(void *c, char *err, size_t n);
    /* cfg.rows rows of len bytes each, one after the other in body */
    int (*insert)(void *c, const unsigned char *body, size_t len, char *err,
                  size_t n);
    void (*server_info)(void *c, char *out, size_t n, char *settings, size_t sn);
    void (*close)(void *c);
    const char *create_fmt; /* %s = table */
} backend;

#ifdef MQS_RAW_HAVE_PQ
/* ---- PostgreSQL (libpq) ---- */

static char pq_conninfo[2048]; /* the URI without mqstore's own options */

static void pq_quiet(void *arg, const char *message)
{
    (void)arg;
    (void)message; /* NOTICEs of DROP ... IF EXISTS and the like */
}

/* libpq refuses unknown URI parameters: keep only the ones it knows. */
static int pq_build_conninfo(const char *uri)
{
    const char *q = strchr(uri, '?');
    size_t base = q ? (size_t)(q - uri) : strlen(uri);
    if (base >= sizeof pq_conninfo)
        return -1;
    memcpy(pq_conninfo, uri, base);
    pq_conninfo[base] = '\0';
    if (!q)
        return 0;
    PQconninfoOption *defs = PQconndefaults();
    char sep = '?';
    for (const char *p = q + 1; *p;) {
        size_t len = strcspn(p, "&");
        size_t klen = strcspn(p, "=&");
        bool known = false;
        for (PQconninfoOption *d = defs; d && d->keyword; d++)
            if (strlen(d->keyword) == klen && strncmp(d->keyword, p, klen) == 0)
                known = true;
        if (known) {
            size_t o = strlen(pq_conninfo);
            if (o + len + 2 >= sizeof pq_conninfo) {
                PQconninfoFree(defs);
                return -1;
            }
            pq_conninfo[o] = sep;
            memcpy(pq_conninfo + o + 1, p, len);
            pq_conninfo[o + 1 + len] = '\0';
            sep = '&';
        } else if (!is_core_option(p, klen)) {
            fprintf(stderr, "mqs-raw-insert: ignoring URI option '%.*s' (not libpq's)\n",
                    (int)klen, p);
        }
        p += len;
        if (*p == '&')
            p++;
    }
    PQconninfoFree(defs);
    return 0;
}

static void *pq_connect(char *err, size_t n)
{
    /* Keywords before dbname are defaults the URI may override. */
    const char *const kw[] = {"connect_timeout", "application_name", "dbname", NULL};
    const char *const val[] = {"10", "mqs-raw-insert", pq_conninfo, NULL};
    PGconn *c = PQconnectdbParams(kw, val, 1);
    if (!c) {
        snprintf(err, n, "out of memory");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        snprintf(err, n, "%s", PQerrorMessage(c));
        chomp(err);
        PQfinish(c);
        return NULL;
    }
    PQsetNoticeProcessor(c, pq_quiet, NULL);
    return c;
}

static int pq_check(PGconn *c, PGresult *r, char *err, size_t n)
{
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    int rc = INS_OK;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        copy_err(err, n, r ? PQresultErrorMessage(r) : PQerrorMessage(c));
        chomp(err);
        rc = PQstatus(c) == CONNECTION_BAD ? INS_DEAD : INS_ERR;
    }
    PQclear(r);
    return rc;
}

static int pq_exec(void *c, const char *sql, char *err, size_t n)
{
    return pq_check(c, PQexec(c, sql), err, n);
}

static const char *pq_mark(int i, char *m, size_t n)
{
    snprintf(m, n, "$%d", i + 1);
    return m;
}

static int pq_prepare(void *c, char *err, size_t n)
{
    char sql[4096];
    Oid types[MAX_ROWS];
    for (int i = 0; i < cfg.rows; i++)
        types[i] = 17; /* bytea */
    if (values_sql(sql, sizeof sql, pq_mark) != 0) {
        copy_err(err, n, "INSERT statement too long");
        return INS_ERR;
    }
    return pq_check(c, PQprepare(c, "ins", sql, cfg.rows, types), err, n);
}

static int pq_insert(void *c, const unsigned char *body, size_t len, char *err,
                     size_t n)
{
    const char *vals[MAX_ROWS];
    int lens[MAX_ROWS], fmts[MAX_ROWS];
    for (int i = 0; i < cfg.rows; i++) {
        vals[i] = (const char *)body + (size_t)i * len;
        lens[i] = (int)len;
        fmts[i] = 1;
    }
    int rc;
    if (cfg.explicit_txn && (rc = pq_exec(c, "BEGIN", err, n)) != INS_OK)
        return rc;
    rc = pq_check(c, PQexecPrepared(c, "ins", cfg.rows, vals, lens, fmts, 0), err, n);
    if (rc != INS_OK) {
        if (cfg.explicit_txn && rc != INS_DEAD) {
            char ignore[8] = "";
            pq_exec(c, "ROLLBACK", ignore, sizeof ignore);
        }
        return rc;
    }
    if (cfg.explicit_txn)
        rc = pq_exec(c, "COMMIT", err, n);
    return rc;
}

static void pq_server_info(void *c, char *out, size_t n, char *settings, size_t sn)
{
    PGresult *r = PQexec(c, "SELECT current_setting('server_version'), "
                            "'synchronous_commit=' || current_setting('synchronous_commit') || "
                            "' fsync=' || current_setting('fsync') || "
                            "' wal_sync_method=' || current_setting('wal_sync_method') || "
                            "' commit_delay=' || current_setting('commit_delay') || "
                            "' full_page_writes=' || current_setting('full_page_writes') || "
                            "' ssl=' || CASE WHEN EXISTS (SELECT 1 FROM pg_stat_ssl "
                            "WHERE pid = pg_backend_pid() AND ssl) THEN 'on' ELSE 'off' END");
    if (r && PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        snprintf(out, n, "PostgreSQL %s", PQgetvalue(r, 0, 0));
        snprintf(settings, sn, "%s", PQgetvalue(r, 0, 1));
    }
    PQclear(r);
}

static void pq_close(void *c)
{
    PQfinish(c);
}

static const backend pq_backend = {
    "postgresql", pq_connect, pq_exec, pq_prepare, pq_insert, pq_server_info,
    pq_close,
    "CREATE TABLE %s (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
    "body bytea NOT NULL)"};
#endif /* MQS_RAW_HAVE_PQ */

#ifdef MQS_RAW_HAVE_MYSQL
/* ---- MySQL / MariaDB ---- */

static struct {
    char *user, *password, *host, *db, *socket;
    unsigned port;
    unsigned connect_timeout, read_timeout, write_timeout;
    bool tls_required;
} my_uri;

static int my_parse_uri(const char *uri)
{
    static char buf[2048];
    snprintf(buf, sizeof buf, "%s", uri + strlen("mysql://"));
    my_uri.connect_timeout = 10;
    my_uri.read_timeout = 120;
    my_uri.write_timeout = 120;
    char *query = strchr(buf, '?');
    if (query)
        *query++ = '\0';
    char *path = strchr(buf, '/');
    if (path) {
        *path++ = '\0';
        pct_decode(path);
        if (*path)
            my_uri.db = path;
    }
    char *hostport = buf, *at = strrchr(buf, '@');
    if (at) {
        *at = '\0';
        hostport = at + 1;
        char *colon = strchr(buf, ':');
        if (colon) {
            *colon = '\0';
            pct_decode(colon + 1);
            my_uri.password = colon + 1;
        }
        pct_decode(buf);
        my_uri.user = buf;
    }
    char *port = NULL;
    if (*hostport == '[') {
        char *end = strchr(hostport, ']');
        if (!end)
            return -1;
        *end = '\0';
        hostport++;
        if (end[1] == ':')
            port = end + 2;
    } else if ((port = strchr(hostport, ':')) != NULL) {
        *port++ = '\0';
    }
    if (port && *port) {
        char *end;
        long p = strtol(port, &end, 10);
        if (*end || p < 1 || p > 65535)
            return -1;
        my_uri.port = (unsigned)p;
    }
    pct_decode(hostport);
    if (*hostport)
        my_uri.host = hostport;
    for (char *save = NULL, *t = query ? strtok_r(query, "&", &save) : NULL; t;
         t = strtok_r(NULL, "&", &save)) {
        char *v = strchr(t, '=');
        if (v)
            *v++ = '\0';
        else
            v = "";
        pct_decode(v);
        long num = strtol(v, NULL, 10);
        if (!strcmp(t, "socket"))
            my_uri.socket = v;
        else if (!strcmp(t, "connect_timeout"))
            my_uri.connect_timeout = (unsigned)num;
        else if (!strcmp(t, "read_timeout"))
            my_uri.read_timeout = (unsigned)num;
        else if (!strcmp(t, "write_timeout"))
            my_uri.write_timeout = (unsigned)num;
        else if (!strcmp(t, "tls"))
            my_uri.tls_required = strcmp(v, "disabled") != 0 && strcmp(v, "preferred") != 0;
        else if (!is_core_option(t, strlen(t)))
            fprintf(stderr, "mqs-raw-insert: ignoring URI option '%s'\n", t);
    }
    return 0;
}

static void *my_connect(char *err, size_t n)
{
    MYSQL *db = mysql_init(NULL);
    if (!db) {
        snprintf(err, n, "mysql_init: out of memory");
        return NULL;
    }
    mysql_options(db, MYSQL_OPT_CONNECT_TIMEOUT, &my_uri.connect_timeout);
    if (my_uri.read_timeout)
        mysql_options(db, MYSQL_OPT_READ_TIMEOUT, &my_uri.read_timeout);
    if (my_uri.write_timeout)
        mysql_options(db, MYSQL_OPT_WRITE_TIMEOUT, &my_uri.write_timeout);
    mysql_options(db, MYSQL_SET_CHARSET_NAME, "utf8mb4");
#ifdef MARIADB_BASE_VERSION
    if (my_uri.tls_required) {
        my_bool on = 1;
        mysql_options(db, MYSQL_OPT_SSL_ENFORCE, &on);
    }
#else
    if (my_uri.tls_required) {
        unsigned mode = SSL_MODE_REQUIRED;
        mysql_options(db, MYSQL_OPT_SSL_MODE, &mode);
    }
#endif
    const char *host = my_uri.host;
    if (host && !strcmp(host, "localhost") && !my_uri.socket)
        host = "localhost";
    if (!mysql_real_connect(db, host, my_uri.user ? my_uri.user : "",
                            my_uri.password, my_uri.db, my_uri.port,
                            my_uri.socket, 0)) {
        snprintf(err, n, "%s", mysql_error(db));
        mysql_close(db);
        return NULL;
    }
    if (mysql_autocommit(db, 1) != 0) {
        snprintf(err, n, "autocommit: %s", mysql_error(db));
        mysql_close(db);
        return NULL;
    }
    return db;
}

typedef struct my_conn {
    MYSQL *db;
    MYSQL_STMT *st;
} my_conn;

static int my_fail(MYSQL *db, const char *what, const char *msg,
                   unsigned errnum, char *err, size_t n)
{
    if (err[0] == '\0')
        snprintf(err, n, "%s: %s", what, msg);
    /* CR_SERVER_GONE_ERROR, CR_SERVER_LOST, CR_SERVER_LOST_EXTENDED */
    (void)db;
    return errnum == 2006 || errnum == 2013 || errnum == 2055 ? INS_DEAD : INS_ERR;
}

static void *my_connect_wrap(char *err, size_t n)
{
    MYSQL *db = my_connect(err, n);
    if (!db)
        return NULL;
    my_conn *c = xcalloc(1, sizeof *c);
    c->db = db;
    return c;
}

static int my_exec(void *cv, const char *sql, char *err, size_t n)
{
    my_conn *c = cv;
    if (mysql_query(c->db, sql) != 0)
        return my_fail(c->db, sql, mysql_error(c->db), mysql_errno(c->db), err, n);
    MYSQL_RES *r = mysql_store_result(c->db);
    if (r)
        mysql_free_result(r);
    return INS_OK;
}

static int my_prepare(void *cv, char *err, size_t n)
{
    my_conn *c = cv;
    char sql[4096];
    if (values_sql(sql, sizeof sql, qmark) != 0) {
        copy_err(err, n, "INSERT statement too long");
        return INS_ERR;
    }
    c->st = mysql_stmt_init(c->db);
    if (!c->st)
        return my_fail(c->db, "stmt_init", mysql_error(c->db), mysql_errno(c->db), err, n);
    if (mysql_stmt_prepare(c->st, sql, strlen(sql)) != 0)
        return my_fail(c->db, "prepare", mysql_stmt_error(c->st),
                       mysql_stmt_errno(c->st), err, n);
    return INS_OK;
}

static int my_insert(void *cv, const unsigned char *body, size_t len, char *err,
                     size_t n)
{
    my_conn *c = cv;
    unsigned long blen = (unsigned long)len;
    MYSQL_BIND b[MAX_ROWS];
    memset(b, 0, sizeof b[0] * (size_t)cfg.rows);
    for (int i = 0; i < cfg.rows; i++) {
        b[i].buffer_type = MYSQL_TYPE_BLOB;
        /* only read: the API has no const */
        b[i].buffer = (void *)(uintptr_t)(body + (size_t)i * len);
        b[i].buffer_length = blen;
        b[i].length = &blen;
    }
    int rc;
    if (cfg.explicit_txn && (rc = my_exec(c, "START TRANSACTION", err, n)) != INS_OK)
        return rc;
    if (mysql_stmt_bind_param(c->st, b) != 0 || mysql_stmt_execute(c->st) != 0) {
        rc = my_fail(c->db, "insert", mysql_stmt_error(c->st),
                     mysql_stmt_errno(c->st), err, n);
        if (cfg.explicit_txn && rc != INS_DEAD) {
            char ignore[8] = "";
            my_exec(c, "ROLLBACK", ignore, sizeof ignore);
        }
        return rc;
    }
    if (cfg.explicit_txn)
        return my_exec(c, "COMMIT", err, n);
    return INS_OK;
}

static void my_server_info(void *cv, char *out, size_t n, char *settings, size_t sn)
{
    my_conn *c = cv;
    if (mysql_query(c->db,
                    "SELECT @@version, CONCAT('innodb_flush_log_at_trx_commit=', "
                    "@@innodb_flush_log_at_trx_commit, ' sync_binlog=', @@sync_binlog, "
                    "' log_bin=', @@log_bin, ' innodb_flush_method=', "
                    "@@innodb_flush_method)") != 0)
        return;
    MYSQL_RES *r = mysql_store_result(c->db);
    MYSQL_ROW row = r ? mysql_fetch_row(r) : NULL;
    if (row) {
        snprintf(out, n, "MySQL/MariaDB %s", row[0] ? row[0] : "?");
        snprintf(settings, sn, "%s", row[1] ? row[1] : "");
    }
    if (r)
        mysql_free_result(r);
}

static void my_close(void *cv)
{
    my_conn *c = cv;
    if (c->st)
        mysql_stmt_close(c->st);
    mysql_close(c->db);
    free(c);
}

static const backend my_backend = {
    "mysql", my_connect_wrap, my_exec, my_prepare, my_insert, my_server_info,
    my_close,
    "CREATE TABLE %s (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, "
    "body LONGBLOB NOT NULL) ENGINE=InnoDB"};
#endif /* MQS_RAW_HAVE_MYSQL */

#ifdef MQS_RAW_HAVE_SQLITE
/* ---- SQLite ---- */

static struct {
    char path[1024];
    char synchronous[16]; /* full | normal | off (mqstore's default: full) */
    char journal_mode[16]; /* wal | delete (default wal) */
    long busy_timeout;     /* ms (default 5000) */
} sl_uri;

/* sqlite:///abs/path.db or sqlite:rel/path.db, then ?options. */
static int sl_parse_uri(const char *uri)
{
    const char *p = uri + strlen("sqlite:");
    if (strncmp(p, "//", 2) == 0)
        p += 2; /* sqlite:///abs -> /abs */
    size_t len = strcspn(p, "?#");
    if (len == 0 || len >= sizeof sl_uri.path)
        return -1;
    memcpy(sl_uri.path, p, len);
    sl_uri.path[len] = '\0';
    pct_decode(sl_uri.path);
    snprintf(sl_uri.synchronous, sizeof sl_uri.synchronous, "full");
    snprintf(sl_uri.journal_mode, sizeof sl_uri.journal_mode, "wal");
    sl_uri.busy_timeout = 5000;
    const char *q = strchr(p, '?');
    for (q = q ? q + 1 : NULL; q && *q;) {
        size_t n = strcspn(q, "&"), k = strcspn(q, "=&");
        char val[64] = "";
        if (k < n && n - k - 1 < sizeof val)
            memcpy(val, q + k + 1, n - k - 1);
        if (k == 11 && !strncmp(q, "synchronous", k)) {
            if (strcmp(val, "full") && strcmp(val, "normal") && strcmp(val, "off"))
                return -1;
            snprintf(sl_uri.synchronous, sizeof sl_uri.synchronous, "%.15s", val); /* checked above */
        } else if (k == 12 && !strncmp(q, "journal_mode", k)) {
            if (strcmp(val, "wal") && strcmp(val, "delete"))
                return -1;
            snprintf(sl_uri.journal_mode, sizeof sl_uri.journal_mode, "%.15s", val); /* checked above */
        } else if (k == 12 && !strncmp(q, "busy_timeout", k)) {
            sl_uri.busy_timeout = strtol(val, NULL, 10);
        } else if (!is_core_option(q, k)) {
            fprintf(stderr, "mqs-raw-insert: ignoring URI option '%.*s'\n", (int)k, q);
        }
        q += n;
        if (*q == '&')
            q++;
    }
    return 0;
}

typedef struct sl_conn {
    sqlite3 *db;
    sqlite3_stmt *ins;
} sl_conn;

static int sl_exec(void *cv, const char *sql, char *err, size_t n)
{
    sl_conn *c = cv;
    char *msg = NULL;
    if (sqlite3_exec(c->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        copy_err(err, n, msg ? msg : sqlite3_errmsg(c->db));
        sqlite3_free(msg);
        return INS_ERR;
    }
    return INS_OK;
}

static void sl_close(void *cv)
{
    sl_conn *c = cv;
    sqlite3_finalize(c->ins);
    sqlite3_close(c->db);
    free(c);
}

static void *sl_connect(char *err, size_t n)
{
    sl_conn *c = xcalloc(1, sizeof *c);
    if (sqlite3_open_v2(sl_uri.path, &c->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        snprintf(err, n, "%s: %s", sl_uri.path,
                 c->db ? sqlite3_errmsg(c->db) : "out of memory");
        sl_close(c);
        return NULL;
    }
    sqlite3_busy_timeout(c->db, (int)sl_uri.busy_timeout);
    char sql[160];
    snprintf(sql, sizeof sql, "PRAGMA journal_mode=%s; PRAGMA synchronous=%s",
             sl_uri.journal_mode, sl_uri.synchronous);
    if (sl_exec(c, sql, err, n) != INS_OK) {
        sl_close(c);
        return NULL;
    }
    return c;
}

static int sl_prepare(void *cv, char *err, size_t n)
{
    sl_conn *c = cv;
    char sql[4096];
    if (values_sql(sql, sizeof sql, qmark) != 0) {
        copy_err(err, n, "INSERT statement too long");
        return INS_ERR;
    }
    if (sqlite3_prepare_v2(c->db, sql, -1, &c->ins, NULL) != SQLITE_OK) {
        copy_err(err, n, sqlite3_errmsg(c->db));
        return INS_ERR;
    }
    return INS_OK;
}

static int sl_insert(void *cv, const unsigned char *body, size_t len, char *err,
                     size_t n)
{
    sl_conn *c = cv;
    /* Always BEGIN IMMEDIATE (no round trips in SQLite, so it costs next to
     * nothing): a bare autocommit INSERT in WAL mode starts as a reader and
     * fails at once with SQLITE_BUSY_SNAPSHOT when another connection
     * committed meanwhile, without waiting in the busy handler; taking the
     * write lock first makes it wait (busy_timeout), as a writer must.
     * SQLite's busy handler is not fair: with many writers one can wait out
     * the whole busy_timeout; it then waits again (the row is not given up,
     * its latency includes the wait), for at most a minute. */
    int64_t give_up = mono_ns() + 60 * 1000000000LL;
    int brc;
    while ((brc = sqlite3_exec(c->db, "BEGIN IMMEDIATE", NULL, NULL, NULL)) == SQLITE_BUSY &&
           mono_ns() < give_up && !atomic_load(&stop_flag)) {
    }
    if (brc != SQLITE_OK) {
        copy_err(err, n, sqlite3_errmsg(c->db));
        return INS_ERR;
    }
    for (int i = 0; i < cfg.rows; i++)
        sqlite3_bind_blob(c->ins, i + 1, body + (size_t)i * len, (int)len, SQLITE_STATIC);
    int rc = sqlite3_step(c->ins);
    sqlite3_reset(c->ins);
    sqlite3_clear_bindings(c->ins);
    if (rc != SQLITE_DONE) {
        copy_err(err, n, sqlite3_errmsg(c->db));
        char ignore[8] = "";
        sl_exec(c, "ROLLBACK", ignore, sizeof ignore);
        return INS_ERR;
    }
    return sl_exec(c, "COMMIT", err, n);
}

static void sl_server_info(void *cv, char *out, size_t n, char *settings, size_t sn)
{
    (void)cv;
    snprintf(out, n, "SQLite %s", sqlite3_libversion());
    snprintf(settings, sn, "journal_mode=%s synchronous=%s busy_timeout=%ld",
             sl_uri.journal_mode, sl_uri.synchronous, sl_uri.busy_timeout);
}

static const backend sl_backend = {
    "sqlite", sl_connect, sl_exec, sl_prepare, sl_insert, sl_server_info,
    sl_close,
    "CREATE TABLE %s (id INTEGER PRIMARY KEY AUTOINCREMENT, body BLOB NOT NULL)"};
#endif /* MQS_RAW_HAVE_SQLITE */

static const backend *be;

/* ------------------------------------------------------------------------
 * Producers
 * ---------------------------------------------------------------------- */

typedef struct worker {
    int idx;
    void *conn;
    uint64_t quota;
    int64_t deadline;
    pthread_barrier_t *go;
    uint64_t *lat;
    uint64_t n, errors;
    int64_t end_ns;
    bool capped, dead;
    char first_error[512];
} worker;

static void *producer_main(void *arg)
{
    worker *w = arg;
    size_t rows = (size_t)cfg.rows;
    unsigned char *body = xcalloc(cfg.size, rows);
    pthread_barrier_wait(w->go);
    for (uint64_t i = 0; i < w->quota; i++) {
        int64_t t0 = mono_ns();
        if ((w->deadline && t0 >= w->deadline) || atomic_load(&stop_flag)) {
            w->capped = true;
            break;
        }
        /* a fresh body per row, outside the timed call */
        for (size_t k = 0; k < rows; k++)
            fill_body(body + k * cfg.size, cfg.size,
                      ((uint64_t)w->idx << 40) ^ (i * rows + k));
        t0 = mono_ns();
        char err[512] = "";
        int rc = be->insert(w->conn, body, cfg.size, err, sizeof err);
        if (rc == INS_OK) {
            w->lat[w->n++] = (uint64_t)(mono_ns() - t0);
            atomic_fetch_add_explicit(&progress_count, rows, memory_order_relaxed);
            continue;
        }
        w->errors++;
        copy_err(w->first_error, sizeof w->first_error, err);
        if (rc == INS_DEAD) {
            w->dead = true;
            break;
        }
        if (w->errors >= MAX_ERRORS_PER_THREAD)
            break;
    }
    w->end_ns = mono_ns();
    free(body);
    atomic_fetch_sub(&threads_running, 1);
    return NULL;
}

static void on_signal(int sig)
{
    (void)sig;
    atomic_store(&stop_flag, 1);
}

/* ------------------------------------------------------------------------
 * Command line
 * ---------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
"Usage: mqs-raw-insert [OPTIONS] URI\n"
"\n"
"The raw-database baseline for mqstore-bench: N threads, each with its own\n"
"connection, each committing ONE INSERT of one row (--rows: of R rows) per\n"
"transaction into a scratch table (created at the start, dropped at the\n"
"end). No mqstore.\n"
"\n"
"URI: postgresql://user:pw@host:port/db[?libpq options]   (%s)\n"
"     mysql://user:pw@host:port/db[?socket=&connect_timeout=&tls=]   (%s)\n"
"     sqlite:///abs/path.db[?synchronous=full|normal|off&busy_timeout=MS&\n"
"       journal_mode=wal|delete]   (%s; one connection per thread, WAL and\n"
"       synchronous=full unless the URI says otherwise, as mqstore; each row\n"
"       is BEGIN IMMEDIATE + INSERT + COMMIT so writers wait for the lock)\n"
"mqstore's own options (commit=, pool_size=, ...) are accepted and ignored,\n"
"so the URI given to mqstore-bench works here too.\n"
"\n"
"Example:\n"
"  mqs-raw-insert --producers 16 --duration 10 postgresql://mqs:pw@127.0.0.1/mqstore\n"
"\n"
"Options:\n"
"  --producers N     threads, one connection each (default %d, max %d)\n"
"  --size B          bytes per row, random (default %d)\n"
"  --duration S      stop after S seconds (default %.0f unless --messages is\n"
"                    given; max %.0f)\n"
"  --messages N      rows in total (with --duration: a cap, default %ld)\n"
"  --rows R          rows per transaction, in ONE multi-row INSERT (default\n"
"                    1, max %d): the batched baseline; msg/s counts rows,\n"
"                    latency is per transaction\n"
"  --txn MODE        autocommit: the INSERT is the transaction (default);\n"
"                    explicit: BEGIN + INSERT + COMMIT (3 round trips)\n"
"  --table NAME      scratch table (default mqs_raw_bench_<pid>_<time>);\n"
"                    dropped at the end, so never name a real table\n"
"  --stall S         abort (exit 1) after S seconds without progress\n"
"                    (default %.0f; 0: never)\n"
"  --json FILE       write the result as JSON (mqstore-bench's layout, plus a\n"
"                    \"baseline\" object for mqstore-bench's baseline hook)\n"
"  --help, --version\n"
"\n"
"Progress goes to stderr every 2 s; the table to stdout.\n"
"Exit status: 0 ok, 1 a failure or error during the run, 2 usage error.\n",
#ifdef MQS_RAW_HAVE_PQ
            "built in",
#else
            "not built: libpq missing",
#endif
#ifdef MQS_RAW_HAVE_MYSQL
            "built in",
#else
            "not built: client library missing",
#endif
#ifdef MQS_RAW_HAVE_SQLITE
            "built in",
#else
            "not built: libsqlite3 missing",
#endif
            DEF_PRODUCERS, MAX_THREADS, DEF_SIZE, DEF_DURATION, MAX_DURATION,
            DURATION_CAP_MESSAGES, MAX_ROWS, DEF_STALL);
}

static bool parse_secs(const char *s, double min_excl, double max, double *out,
                       bool allow_zero)
{
    char *end;
    double d = strtod(s, &end);
    if (end == s || *end || d != d || d > max)
        return false;
    if (!(d > min_excl) && !(allow_zero && d == 0))
        return false;
    *out = d;
    return true;
}

static int parse_args(int argc, char **argv)
{
    bool set_duration = false, set_messages = false;
    cfg = (config){.producers = DEF_PRODUCERS, .size = DEF_SIZE, .rows = 1,
                   .stall = DEF_STALL};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == '\0') {
            if (cfg.uri)
                return bad_usage("more than one URI ('%s')", a);
            cfg.uri = a;
            continue;
        }
        static const char *const with_value[] = {"--producers", "--size",
                                                 "--duration", "--messages",
                                                 "--txn", "--table", "--stall",
                                                 "--json", "--rows",
                                                 NULL};
        char name[32];
        const char *val;
        int urc = bench_opt(argc, argv, &i, with_value, name, sizeof name, &val);
        if (urc)
            return urc;
        long v;
        if (bench_std_opt(name, usage, MQS_BENCH_VERSION)) {
        } else if (!strcmp(name, "--producers")) {
            if (!parse_long(val, 1, MAX_THREADS, &v))
                return bad_usage("--producers: 1..%d", MAX_THREADS);
            cfg.producers = (int)v;
        } else if (!strcmp(name, "--size")) {
            if (!parse_long(val, 1, 64L << 20, &v))
                return bad_usage("--size: 1..%ld bytes", 64L << 20);
            cfg.size = (size_t)v;
        } else if (!strcmp(name, "--duration")) {
            if (!parse_secs(val, 0, MAX_DURATION, &cfg.duration, false))
                return bad_usage("--duration: seconds, >0 and <= %.0f", MAX_DURATION);
            set_duration = true;
        } else if (!strcmp(name, "--messages")) {
            if (!parse_long(val, 1, 100000000L, &v))
                return bad_usage("--messages: 1..100000000");
            cfg.messages = v;
            set_messages = true;
        } else if (!strcmp(name, "--rows")) {
            if (!parse_long(val, 1, MAX_ROWS, &v))
                return bad_usage("--rows: 1..%d rows per INSERT", MAX_ROWS);
            cfg.rows = (int)v;
        } else if (!strcmp(name, "--txn")) {
            if (!strcmp(val, "autocommit"))
                cfg.explicit_txn = false;
            else if (!strcmp(val, "explicit"))
                cfg.explicit_txn = true;
            else
                return bad_usage("--txn: autocommit or explicit");
        } else if (!strcmp(name, "--table")) {
            size_t len = strlen(val);
            if (len == 0 || len >= sizeof cfg.table ||
                strspn(val, "abcdefghijklmnopqrstuvwxyz0123456789_") != len ||
                (val[0] >= '0' && val[0] <= '9'))
                return bad_usage("--table: lower-case letters, digits and _, "
                                 "at most %zu", sizeof cfg.table - 1);
            snprintf(cfg.table, sizeof cfg.table, "%s", val);
        } else if (!strcmp(name, "--stall")) {
            if (!parse_secs(val, 0, MAX_DURATION, &cfg.stall, true))
                return bad_usage("--stall: seconds, 0..%.0f", MAX_DURATION);
        } else if (!strcmp(name, "--json")) {
            if (bench_json_path_problem(val))
                return bad_usage("%s", bench_json_path_problem(val));
            cfg.json_path = val;
        } else {
            return bad_usage("unknown option '%s'", a);
        }
    }
    if (!cfg.uri)
        return bad_usage("missing URI (postgresql://..., mysql://... or sqlite:...)");
    if (!set_duration && !set_messages)
        cfg.duration = DEF_DURATION;
    if (!set_messages)
        cfg.messages = cfg.duration > 0 ? DURATION_CAP_MESSAGES : 0;
    if (cfg.messages < (long)cfg.producers * cfg.rows)
        return bad_usage("--messages (%ld) must be at least --producers x --rows (%ld)",
                         cfg.messages, (long)cfg.producers * cfg.rows);
    if (!cfg.table[0])
        snprintf(cfg.table, sizeof cfg.table, "mqs_raw_bench_%ld_%lld",
                 (long)getpid(), (long long)time(NULL));

    if (!strncmp(cfg.uri, "postgresql://", 13) || !strncmp(cfg.uri, "postgres://", 11)) {
#ifdef MQS_RAW_HAVE_PQ
        if (pq_build_conninfo(cfg.uri) != 0)
            return bad_usage("URI too long");
        be = &pq_backend;
#else
        return bad_usage("built without libpq: no postgresql:// support");
#endif
    } else if (!strncmp(cfg.uri, "mysql://", 8)) {
#ifdef MQS_RAW_HAVE_MYSQL
        if (my_parse_uri(cfg.uri) != 0)
            return bad_usage("cannot parse the mysql:// URI");
        be = &my_backend;
#else
        return bad_usage("built without a MySQL client library: no mysql:// support");
#endif
    } else if (!strncmp(cfg.uri, "sqlite:", 7)) {
#ifdef MQS_RAW_HAVE_SQLITE
        if (sl_parse_uri(cfg.uri) != 0)
            return bad_usage("cannot parse the sqlite: URI (or a bad option value)");
        be = &sl_backend;
#else
        return bad_usage("built without libsqlite3: no sqlite: support");
#endif
    } else {
        return bad_usage("unsupported URI scheme (postgresql://, mysql:// or sqlite:)");
    }
    return EXIT_OK;
}

/* ------------------------------------------------------------------------
 * Main
 * ---------------------------------------------------------------------- */

typedef struct result {
    uint64_t ops, errors, transactions; /* ops: rows */
    double seconds, rate, p50_ms, p99_ms, max_ms, mean_ms, cpu_s;
    bool capped;
    char first_error[512];
} result;

static void write_json(const char *path, const result *r, const char *server,
                       const char *settings, int *ret)
{
    FILE *f = bench_json_open(path);
    if (!f) {
        *ret = EXIT_FAIL;
        return;
    }
    struct utsname u;
    bool have_uname = uname(&u) == 0;
    const char *txn = cfg.explicit_txn ? "explicit" : "autocommit";
    fprintf(f, "{\n  \"tool\": \"mqs-raw-insert\",\n  \"version\": \"%s\",\n  \"uri\": ",
            MQS_BENCH_VERSION);
    json_str(f, uri_shown);
    fprintf(f, ",\n  \"backend\": ");
    json_str(f, be->name);
    fprintf(f, ",\n  \"server\": {\"version\": ");
    json_str(f, server[0] ? server : NULL);
    fprintf(f, ", \"settings\": ");
    json_str(f, settings[0] ? settings : NULL);
    fprintf(f, "},\n  \"unix_time\": %lld,\n", (long long)time(NULL));
    fprintf(f, "  \"host\": {\"cpus\": %ld, \"kernel\": ", sysconf(_SC_NPROCESSORS_ONLN));
    json_str(f, have_uname ? u.release : NULL);
    fprintf(f, ", \"machine\": ");
    json_str(f, have_uname ? u.machine : NULL);
    fprintf(f, "},\n  \"config\": {\"producers\": %d, \"size\": %zu, \"messages\": %ld, "
               "\"duration_s\": ", cfg.producers, cfg.size, cfg.messages);
    json_num(f, cfg.duration);
    fprintf(f, ", \"txn\": \"%s\", \"rows_per_txn\": %d, \"table\": ", txn, cfg.rows);
    json_str(f, cfg.table);
    fprintf(f, "},\n  \"throughput\": [\n    {\"mode\": \"raw\", \"phase\": \"insert\", "
               "\"messages\": %" PRIu64 ", \"errors\": %" PRIu64 ", \"seconds\": ",
            r->ops, r->errors);
    json_num(f, r->seconds);
    fprintf(f, ", \"msg_per_s\": ");
    json_num(f, r->rate);
    fprintf(f, ", \"latency_ms\": {\"p50\": ");
    json_num(f, r->p50_ms);
    fprintf(f, ", \"p99\": ");
    json_num(f, r->p99_ms);
    fprintf(f, ", \"max\": ");
    json_num(f, r->max_ms);
    fprintf(f, ", \"mean\": ");
    json_num(f, r->mean_ms);
    fprintf(f, "}, \"transactions\": %" PRIu64 ", \"stopped_by_duration\": %s, "
               "\"first_error\": ", r->transactions, r->capped ? "true" : "false");
    json_str(f, r->first_error[0] ? r->first_error : NULL);
    fprintf(f, "}\n  ],\n  \"client_cpu_s\": ");
    json_num(f, r->cpu_s);
    /* Ready to drop into mqstore-bench's "baseline": null hook. */
    fprintf(f, ",\n  \"baseline\": {\"enqueue_msg_per_s\": ");
    json_num(f, r->rate);
    fprintf(f, ", \"p99_ms\": ");
    json_num(f, r->p99_ms);
    fprintf(f, ", \"producers\": %d, \"source\": \"mqs-raw-insert: %d connections, "
               "one INSERT of %d x %zu B per transaction (%s)\"}\n}\n",
            cfg.producers, cfg.producers, cfg.rows, cfg.size, txn);
    if (bench_json_close(f, path) != EXIT_OK)
        *ret = EXIT_FAIL;
}

static int drop_table(void *c, bool quiet)
{
    char sql[128], err[512] = "";
    snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS %s", cfg.table);
    int rc = be->exec(c, sql, err, sizeof err);
    if (rc != INS_OK && !quiet)
        fprintf(stderr, "mqs-raw-insert: %s: %s\n", sql, err);
    return rc;
}

/* The final drop: on a fresh connection if the admin one died meanwhile
 * (a server restart), so no scratch table is left behind. */
static void drop_table_final(void *admin)
{
    if (drop_table(admin, true) == INS_OK)
        return;
    char err[512] = "";
    void *c = be->connect(err, sizeof err);
    if (!c) {
        fprintf(stderr, "mqs-raw-insert: cannot reconnect to drop table %s (%s): "
                        "DROP TABLE %s by hand\n", cfg.table, err, cfg.table);
        return;
    }
    drop_table(c, false);
    be->close(c);
}

int main(int argc, char **argv)
{
    bench_prog = "mqs-raw-insert";
    int ret = parse_args(argc, argv);
    if (ret != EXIT_OK)
        return ret;
    mask_uri(cfg.uri, uri_shown, sizeof uri_shown);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    /* Admin connection: creates and drops the table, stays idle between. */
    char err[512] = "";
    void *admin = be->connect(err, sizeof err);
    if (!admin) {
        fprintf(stderr, "mqs-raw-insert: connect %s: %s\n", uri_shown, err);
        return EXIT_FAIL;
    }
    char server[256] = "", settings[512] = "", sql[512];
    be->server_info(admin, server, sizeof server, settings, sizeof settings);
    drop_table(admin, false);
    snprintf(sql, sizeof sql, be->create_fmt, cfg.table);
    if (be->exec(admin, sql, err, sizeof err) != INS_OK) {
        fprintf(stderr, "mqs-raw-insert: %s: %s\n", sql, err);
        be->close(admin);
        return EXIT_FAIL;
    }

    printf("mqs-raw-insert %s  %s\n", MQS_BENCH_VERSION, uri_shown);
    printf("%s%s%s\n", server[0] ? server : be->name, settings[0] ? ", " : "", settings);
    printf("producers %d (one connection each), %zu B rows, one INSERT of %d "
           "row%s per transaction (%s)", cfg.producers, cfg.size, cfg.rows,
           cfg.rows == 1 ? "" : "s",
           cfg.explicit_txn ? "BEGIN + INSERT + COMMIT" : "autocommit");
    if (cfg.duration > 0)
        printf(", %.0f s (cap %ld rows)\n", cfg.duration, cfg.messages);
    else
        printf(", %ld rows\n", cfg.messages);
    fflush(stdout);

    /* Connect and prepare every producer before the clock starts. */
    int np = cfg.producers;
    worker *w = xcalloc((size_t)np, sizeof *w);
    pthread_t *tid = xcalloc((size_t)np, sizeof *tid);
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, (unsigned)np + 1);
    /* in transactions; rows = transactions x --rows */
    uint64_t total = (uint64_t)cfg.messages / (uint64_t)cfg.rows;
    uint64_t total_rows = total * (uint64_t)cfg.rows;
    for (int i = 0; i < np; i++) {
        w[i].idx = i;
        w[i].go = &go;
        w[i].quota = total / (uint64_t)np + ((uint64_t)i < total % (uint64_t)np);
        w[i].lat = xcalloc(w[i].quota, sizeof *w[i].lat);
        err[0] = '\0';
        w[i].conn = be->connect(err, sizeof err);
        if (w[i].conn && be->prepare(w[i].conn, err, sizeof err) != INS_OK) {
            be->close(w[i].conn);
            w[i].conn = NULL;
        }
        if (!w[i].conn) {
            fprintf(stderr, "mqs-raw-insert: producer %d: %s\n", i, err);
            for (int k = 0; k < i; k++)
                be->close(w[k].conn);
            drop_table_final(admin);
            be->close(admin);
            return EXIT_FAIL;
        }
    }
    atomic_store(&threads_running, np);
    for (int i = 0; i < np; i++)
        if (pthread_create(&tid[i], NULL, producer_main, &w[i]) != 0) {
            fprintf(stderr, "mqs-raw-insert: cannot create thread %d\n", i);
            exit(EXIT_FAIL);
        }

    double cpu0 = cpu_seconds();
    int64_t start = mono_ns();
    int64_t deadline = cfg.duration > 0 ? start + (int64_t)(cfg.duration * 1e9) : 0;
    for (int i = 0; i < np; i++)
        w[i].deadline = deadline;
    pthread_barrier_wait(&go);

    /* Progress and the stall watchdog. */
    int64_t last = start, next = start + PROGRESS_EVERY_NS, moved = start;
    uint64_t last_n = 0, seen = 0;
    while (atomic_load(&threads_running) > 0) {
        sleep_ms(50);
        int64_t now = mono_ns();
        uint64_t n = atomic_load_explicit(&progress_count, memory_order_relaxed);
        if (n != seen) {
            seen = n;
            moved = now;
        } else if (cfg.stall > 0 && now - moved > (int64_t)(cfg.stall * 1e9)) {
            fprintf(stderr, "mqs-raw-insert: no progress for %.0f s (%" PRIu64
                    " done): the database looks stuck; aborting, leaving table "
                    "%s behind (DROP TABLE %s)\n", cfg.stall, n, cfg.table, cfg.table);
            fflush(stdout);
            _exit(EXIT_FAIL);
        }
        if (now < next)
            continue;
        double rate = (double)(n - last_n) / ((double)(now - last) / 1e9);
        if (deadline)
            fprintf(stderr, "raw insert: %" PRIu64 " (%.0f/%.0f s), %.0f msg/s\n", n,
                    (double)(now - start) / 1e9, cfg.duration, rate);
        else
            fprintf(stderr, "raw insert: %" PRIu64 "/%" PRIu64 " (%.0f%%), %.0f msg/s\n",
                    n, total_rows, 100.0 * (double)n / (double)total_rows, rate);
        last = now;
        last_n = n;
        next = now + PROGRESS_EVERY_NS;
    }

    result r;
    memset(&r, 0, sizeof r);
    int64_t end = start;
    for (int i = 0; i < np; i++) {
        pthread_join(tid[i], NULL);
        end = w[i].end_ns > end ? w[i].end_ns : end;
        r.transactions += w[i].n;
        r.ops += w[i].n * (uint64_t)cfg.rows;
        r.errors += w[i].errors;
        r.capped |= w[i].capped;
        if (w[i].first_error[0])
            copy_err(r.first_error, sizeof r.first_error, w[i].first_error);
    }
    r.cpu_s = cpu_seconds() - cpu0;
    r.seconds = (double)(end - start) / 1e9;
    r.rate = r.seconds > 0 ? (double)r.ops / r.seconds : 0;
    {
        uint64_t **lats = xcalloc((size_t)np, sizeof *lats);
        uint64_t *counts = xcalloc((size_t)np, sizeof *counts);
        for (int i = 0; i < np; i++) {
            lats[i] = w[i].lat;
            counts[i] = w[i].n;
        }
        bench_lat lat;
        bench_lat_summary(lats, counts, np, &lat);
        r.p50_ms = lat.p50_ms;
        r.p99_ms = lat.p99_ms;
        r.max_ms = lat.max_ms;
        r.mean_ms = lat.mean_ms;
        free(lats);
        free(counts);
    }

    for (int i = 0; i < np; i++) {
        be->close(w[i].conn);
        free(w[i].lat);
    }
    drop_table_final(admin);
    be->close(admin);

    printf("\n%-6s %-8s %9s %7s %8s %10s %8s %8s %8s %8s\n", "mode", "phase",
           "messages", "errors", "seconds", "msg/s", "p50 ms", "p99 ms", "max ms",
           "msg/txn");
    printf("%-6s %-8s %9" PRIu64 " %7" PRIu64 " %8.2f %10.0f %8.2f %8.2f %8.2f %8d%s\n",
           "raw", "insert", r.ops, r.errors, r.seconds, r.rate, r.p50_ms, r.p99_ms,
           r.max_ms, cfg.rows, r.capped ? "  (stopped by --duration)" : "");
    printf("client CPU %.2f s (%.1f us per row)\n", r.cpu_s,
           r.ops ? r.cpu_s * 1e6 / (double)r.ops : 0.0);
    if (r.errors) {
        fprintf(stderr, "mqs-raw-insert: %" PRIu64 " errors, first: %s\n", r.errors,
                r.first_error);
        ret = EXIT_FAIL;
    }
    for (int i = 0; i < np; i++)
        if (w[i].dead) {
            fprintf(stderr, "mqs-raw-insert: producer %d lost its connection\n", i);
            ret = EXIT_FAIL;
            break;
        }
    if (cfg.json_path)
        write_json(cfg.json_path, &r, server, settings, &ret);
    if (atomic_load(&stop_flag))
        ret = EXIT_FAIL;
    pthread_barrier_destroy(&go);
    free(w);
    free(tid);
    return ret;
}
