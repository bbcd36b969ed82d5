/*
 * postgresql.c - the PostgreSQL backend module (mqstore_postgresql.so).
 *
 * SQL only: the core does batching, retries, caching, expiry and threads.
 *
 * Pooler-safe (pgbouncer in transaction mode): every statement is an
 * unnamed extended-protocol statement (PQexecParams, or PQsendQueryParams in
 * pipeline mode), settings are only SET LOCAL (set_config(..., true)), no
 * temporary tables: no state survives a transaction. The one exception is
 * the HA crash detector, a session-level advisory lock on the core's
 * dedicated lock connection; it refuses to run behind a pooler (see
 * "Exclusive lock" below: use crash_detect=off there).
 *
 * Round trips: txn_begin sends nothing; BEGIN is pipelined with the
 * transaction's first statement. A batch insert is one statement (one array
 * per column, unnest()), an ack batch one pipeline. Arrays and bytea travel
 * in binary (no escaping); results come back binary.
 *
 * Concurrency (several connections may write, e.g. commit=each): a topic
 * message is deleted by whoever removes its last pending row. Deciding "last"
 * needs a snapshot taken after every other remover committed, so removers
 * first lock the message rows (FOR NO KEY UPDATE, in id order) in one
 * statement and look for remaining pending rows in the next one. Inserts
 * lock the subscriptions they copy (FOR KEY SHARE), so sub_remove, which
 * deletes the subscription row first, waits for them and then sees their
 * pending rows. Inserting transactions take turns on one row lock so ids
 * (drawn from a sequence at insert time) increase in commit order.
 *
 * URI: anything libpq takes (postgresql://user:pw@host1,host2/db?...); the
 * accepted query options are listed in pg_options. mqstore sets
 * fallback_application_name=mqstore-<role>, client_encoding=UTF8 and
 * connect/keepalive timeouts when the URI does not.
 */
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include <mqstore/backend.h>

/* Generated from schema/postgresql/ by EmbedSchema.cmake. */
#include "schema_postgresql.h" /* generated: mqs_schema_postgresql[] */

#define PG_MODULE_VERSION MQS_VERSION_STRING

/* A bytea, a protocol message and a result row are each limited to 1 GiB
 * (MaxAllocSize); a message row also carries ~60 bytes of other columns and
 * framing. 1 MiB of margin covers that with room to spare. */
#define PG_MAX_MESSAGE (((size_t)1 << 30) - ((size_t)1 << 20))
/* A batch insert is split so each bytea[] parameter stays far below the
 * 1 GiB limit (and the server's per-statement memory stays reasonable). */
#define PG_CHUNK_BYTES ((size_t)256 << 20)

/* Type OIDs (pg_type.dat; stable since PostgreSQL 7). */
#define PG_OID_BOOL 16
#define PG_OID_BYTEA 17
#define PG_OID_INT8 20
#define PG_OID_INT2 21
#define PG_OID_INT4 23
#define PG_OID_TEXT 25
#define PG_OID_BYTEA_ARR 1001
#define PG_OID_INT2_ARR 1005
#define PG_OID_INT8_ARR 1016

#define PG_MAX_SECRETS 8

struct mqs_be_conn {
    PGconn *pg;
    char *masked;                     /* URI with the password masked */
    char *secrets[PG_MAX_SECRETS];    /* password spellings to scrub */
    int in_txn;                       /* between txn_begin and commit/rollback */
    int begin_pending;                /* BEGIN not sent yet (lazy) */
    int order_locked;                 /* this txn holds the insert lock */
    /* Writes deferred to the next round trip (at the latest the COMMIT's),
     * so a whole transaction goes in one (see pg_flush). */
    struct pg_deferred *dq;
    size_t ndq, capdq;
    /* lock_fence of the open transaction (fence_on): the shared advisory
     * lock goes with BEGIN, the guard just before COMMIT. */
    int fence_on, fence_locked;
    char fence_cluster[128], fence_node[256];
    int64_t fence_token, fence_margin_ms;
    int idle_mode;                    /* idle-in-transaction timeout: 0 not
                                         set yet, 1 set for the session,
                                         -1 set in each transaction */
    int64_t idle_ms;
    int64_t idle_set;                 /* the value set for the session */
    /* Named prepared statements of this session (direct connections only:
     * idle_mode 1), keyed by the address of their static SQL text. */
    struct { const char *sql; unsigned id; } prep[24];
    int nprep;
    unsigned prep_seq;
    int broken;                       /* protocol state unknown: reconnect */
    char state[6];                    /* SQLSTATE of the last failure */
    char err[2048];
    /* Session lock (crash detector), on the core's lock connection only. */
    char *sess_cluster;               /* cluster whose lock it holds */
    int sess_pid;                     /* its pg_backend_pid() */
    int sess_pending;                 /* an alive check is still unanswered */
    int direct;                       /* 1 direct, -1 via a pooler, 0 unknown */
    int pooled_pid;                   /* server pid seen through the pooler */
    int session_pooler;               /* pooler=session: the URI goes through
                                         a pooler that pins one server
                                         session to this client */
    int pinned_pid;                   /* that session's pg_backend_pid(),
                                         once asked (0 before) */
    int inflight;                     /* an async statement is unanswered */
    PGresult *pend;                   /* its first result, once it came */
    char fatal[256];                  /* why the server ended the session */
};

/* ---------------------------------------------------------------------------
 * Options: libpq's URI parameters we pass through. Declared so the core
 * accepts them; libpq interprets them.
 * ------------------------------------------------------------------------- */
static const mqs_be_option pg_options[] = {
    {"host", "", "host name(s), IP address(es) or socket directory; "
                 "comma-separated for failover (libpq)"},
    {"hostaddr", "", "numeric IP address(es), skips DNS (libpq)"},
    {"port", "5432", "port(s), comma-separated to match host (libpq)"},
    {"dbname", "", "database name (libpq)"},
    {"user", "", "role name (libpq)"},
    {"password", "", "password (libpq); prefer the URI's userinfo or a "
                     "passfile. Always masked in messages"},
    {"passfile", "~/.pgpass", "password file (libpq)"},
    {"channel_binding", "prefer", "disable|prefer|require SCRAM channel "
                                  "binding (libpq)"},
    {"connect_timeout", "10",
     "seconds to wait for each host when connecting (libpq); mqstore's "
     "default is 10 instead of libpq's infinite wait"},
    {"client_encoding", "UTF8", "client encoding; destination names are "
                                "UTF-8, so leave it (libpq)"},
    {"options", "", "command-line options sent to the server, e.g. "
                    "-c statement_timeout=5000 (libpq; pgbouncer refuses it)"},
    {"application_name", "mqstore-<role>",
     "shown in pg_stat_activity; default mqstore-writer / mqstore-reader / "
     "mqstore-admin (libpq)"},
    {"fallback_application_name", "mqstore-<role>",
     "application_name when none is given (libpq)"},
    {"keepalives", "1", "TCP keepalives on/off (libpq)"},
    {"keepalives_idle", "30",
     "seconds idle before a TCP keepalive probe (libpq); mqstore's default "
     "30 notices a dead server or network in about a minute"},
    {"keepalives_interval", "10", "seconds between keepalive probes (libpq)"},
    {"keepalives_count", "3", "lost probes before the connection is "
                              "considered dead (libpq)"},
    {"tcp_user_timeout", "60000",
     "milliseconds transmitted data may stay unacknowledged before the "
     "connection is considered dead (libpq); mqstore's default 60000 bounds "
     "a write to a vanished server"},
    {"sslmode", "prefer", "disable|allow|prefer|require|verify-ca|"
                          "verify-full (libpq)"},
    {"sslcert", "", "client certificate file (libpq)"},
    {"sslkey", "", "client private key file (libpq)"},
    {"sslrootcert", "", "CA certificate(s) for verify-ca/verify-full (libpq)"},
    {"sslcrl", "", "certificate revocation list file (libpq)"},
    {"sslcrldir", "", "certificate revocation list directory (libpq)"},
    {"sslsni", "1", "send the host name as TLS SNI (libpq)"},
    {"ssl_min_protocol_version", "TLSv1.2", "minimum TLS version (libpq)"},
    {"ssl_max_protocol_version", "", "maximum TLS version (libpq)"},
    {"requirepeer", "", "required OS user of the server on a Unix socket "
                        "(libpq)"},
    {"gssencmode", "prefer", "disable|prefer|require GSSAPI encryption "
                             "(libpq)"},
    {"krbsrvname", "postgres", "Kerberos service name (libpq)"},
    {"service", "", "service name in pg_service.conf (libpq)"},
    {"target_session_attrs", "any",
     "any|read-write|primary|... ; with several hosts, read-write makes "
     "reconnects find the new primary after a failover (libpq)"},
    {"pooler", "none",
     "none|session (mqstore, not passed to libpq): session says the URI "
     "goes through a pooler that keeps each client on one server session "
     "while it is connected (pgbouncer pool_mode=session), so "
     "crash_detect=on can use that session; none: a pooler is detected and "
     "the crash detector turned off"},
};

/* Defaults mqstore applies when neither the URI nor the environment sets
 * them (libpq's own defaults wait forever on a dead server). */
static const struct {
    const char *key;
    const char *env; /* libpq's environment variable, or NULL */
    const char *value;
} pg_defaults[] = {
    {"connect_timeout", "PGCONNECT_TIMEOUT", "10"},
    {"client_encoding", "PGCLIENTENCODING", "UTF8"},
    {"keepalives_idle", NULL, "30"},
    {"keepalives_interval", NULL, "10"},
    {"keepalives_count", NULL, "3"},
    {"tcp_user_timeout", NULL, "60000"},
};
#define PG_N_DEFAULTS (sizeof pg_defaults / sizeof pg_defaults[0])

/* ---------------------------------------------------------------------------
 * Secrets: libpq can echo parts of the conninfo in its messages (e.g. a bad
 * percent-encoding inside the password), so every message is scrubbed of
 * every spelling of the password we know of.
 * ------------------------------------------------------------------------- */
static int pg_hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Kept longest first: a secret that contains another must be replaced
 * before the shorter one breaks it up. */
static void pg_secret_add(char **sec, const char *s, size_t n)
{
    if (n == 0 || sec[PG_MAX_SECRETS - 1])
        return;
    int i = 0;
    for (; i < PG_MAX_SECRETS && sec[i]; i++)
        if (strlen(sec[i]) == n && !memcmp(sec[i], s, n))
            return;
    char *d = strndup(s, n);
    if (!d)
        return;
    for (; i > 0 && strlen(sec[i - 1]) < n; i--)
        sec[i] = sec[i - 1];
    sec[i] = d;
}

/* The raw and the percent-decoded spelling. */
static void pg_secret_add2(char **sec, const char *s, size_t n)
{
    pg_secret_add(sec, s, n);
    char *d = malloc(n + 1);
    if (!d)
        return;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int h, l;
        if (s[i] == '%' && i + 2 < n &&
            (h = pg_hexval((unsigned char)s[i + 1])) >= 0 &&
            (l = pg_hexval((unsigned char)s[i + 2])) >= 0) {
            d[k++] = (char)(h * 16 + l);
            i += 2;
        } else {
            d[k++] = s[i];
        }
    }
    pg_secret_add(sec, d, k);
    free(d);
}

static void pg_secrets_from_uri(char **sec, const char *uri)
{
    const char *q = strchr(uri, '?');
    const char *auth = strstr(uri, "://");
    if (auth && (!q || auth < q)) {
        auth += 3;
        const char *end = auth;
        while (*end && *end != '/' && *end != '?' && *end != '#')
            end++;
        /* libpq ends the userinfo at the first '@', the core's masking at
         * the last: take both readings. */
        const char *first = memchr(auth, '@', (size_t)(end - auth));
        const char *last = NULL;
        for (const char *p = auth; p < end; p++)
            if (*p == '@')
                last = p;
        const char *ats[2] = {first, last};
        for (int k = 0; k < 2; k++) {
            if (!ats[k])
                continue;
            const char *colon = memchr(auth, ':', (size_t)(ats[k] - auth));
            if (colon)
                pg_secret_add2(sec, colon + 1, (size_t)(ats[k] - colon - 1));
        }
    }
    for (const char *p = q; p && *p;) {
        p++;
        size_t len = strcspn(p, "&");
        if (len > 9 && !strncmp(p, "password=", 9))
            pg_secret_add2(sec, p + 9, len - 9);
        p += len;
    }
}

static void pg_secrets_free(char **sec)
{
    for (int i = 0; i < PG_MAX_SECRETS; i++) {
        if (sec[i]) {
            explicit_bzero(sec[i], strlen(sec[i]));
            free(sec[i]);
            sec[i] = NULL;
        }
    }
}

/* Replace every secret in buf (NUL-terminated, capacity size) by "***".
 * A very short secret is replaced only where it stands alone (not inside a
 * word): a password "x" must not turn "expired" into "e***pired", and libpq
 * quotes what it echoes. */
static void pg_scrub(char *buf, size_t size, char *const *sec)
{
    for (int i = 0; i < PG_MAX_SECRETS && sec[i]; i++) {
        size_t sl = strlen(sec[i]);
        char *from = buf, *p;
        while ((p = strstr(from, sec[i])) != NULL) {
            if (sl < 4 && ((p > buf && isalnum((unsigned char)p[-1])) ||
                           isalnum((unsigned char)p[sl]))) {
                from = p + 1;
                continue;
            }
            size_t pos = (size_t)(p - buf);
            if (pos + 3 >= size) { /* no room even for the mask: cut */
                *p = '\0';
                break;
            }
            size_t tail = strlen(p + sl);
            if (pos + 3 + tail >= size)
                tail = size - 1 - pos - 3;
            memmove(p + 3, p + sl, tail);
            memcpy(p, "***", 3);
            p[3 + tail] = '\0';
            from = p + 3; /* never rescan the mask */
        }
    }
}

/* ---------------------------------------------------------------------------
 * Errors
 * ------------------------------------------------------------------------- */
static void pg_set_err(mqs_be_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void pg_set_err(mqs_be_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    pg_scrub(c->err, sizeof c->err, c->secrets);
}

/* Copy a libpq message without trailing newlines, inner newlines as "; ". */
static void pg_oneline(char *dst, size_t size, const char *src)
{
    size_t k = 0;
    if (!src)
        src = "";
    size_t n = strlen(src);
    while (n > 0 && (src[n - 1] == '\n' || src[n - 1] == ' '))
        n--;
    for (size_t i = 0; i < n && k + 3 < size; i++) {
        if (src[i] == '\n') {
            dst[k++] = ';';
            dst[k++] = ' ';
            while (i + 1 < n && (src[i + 1] == ' ' || src[i + 1] == '\t'))
                i++; /* libpq indents continuation lines */
        } else {
            dst[k++] = src[i];
        }
    }
    dst[k] = '\0';
}

static int pg_is(const char *state, const char *code)
{
    return state && !strcmp(state, code);
}

/* SQLSTATE (or its absence) -> MQS_E*. */
static int pg_code(mqs_be_conn *c, const char *state)
{
    if (c->pg && PQstatus(c->pg) == CONNECTION_BAD)
        return MQS_ECONN;
    if (!state || !*state)
        return MQS_EIO; /* client-side error on a live connection */
    if (!strncmp(state, "08", 2) || pg_is(state, "57P01") ||
        pg_is(state, "57P02") || pg_is(state, "57P03"))
        return MQS_ECONN;
    /* A read-only transaction: we reached a standby (after a failover);
     * reconnecting with target_session_attrs=read-write finds the primary. */
    if (pg_is(state, "25006"))
        return MQS_ECONN;
    if (pg_is(state, "40001") || pg_is(state, "40P01") || pg_is(state, "55P03"))
        return MQS_EBUSY;
    if (!strncmp(state, "28", 2) || pg_is(state, "42501"))
        return MQS_EAUTH;
    if (pg_is(state, "54000") || pg_is(state, "54001"))
        return MQS_ETOOBIG;
    if (pg_is(state, "57014"))
        return MQS_ETIMEDOUT; /* statement_timeout or a cancel */
    if (pg_is(state, "22021"))
        return MQS_EINVAL; /* name not valid in the database encoding */
    if (pg_is(state, "23503") || pg_is(state, "3D000"))
        return MQS_ENOTFOUND; /* sub_create on a missing destination */
    return MQS_EIO;
}

static const char *pg_advice(int rc)
{
    switch (rc) {
    case MQS_ECONN:
        return " The connection is lost or unusable; mqstore reconnects "
               "(check that the server is up and reachable).";
    case MQS_EAUTH:
        return " Grant the role privileges on the mqs_* tables, or use the "
               "role that created them.";
    case MQS_EBUSY:
        return " A concurrent transaction conflicted; retrying succeeds once "
               "it is gone.";
    case MQS_ETOOBIG:
        return " The value exceeds a PostgreSQL limit; lower "
               "max_message_size.";
    case MQS_ETIMEDOUT:
        return " The statement was cancelled (statement_timeout?).";
    case MQS_EUNKNOWN:
        return " The connection failed while committing: the transaction may "
               "or may not have committed.";
    default:
        return "";
    }
}

/* Record the failure of `what` (r may be NULL: use the connection's
 * message) and return its MQS_E* code. forced != 0 overrides the code. */
static int pg_fail_code(mqs_be_conn *c, const PGresult *r, const char *what,
                        int forced)
{
    const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY)
                            : NULL;
    const char *detail = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_DETAIL)
                           : NULL;
    const char *hint = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_HINT) : NULL;
    char msg[1024];
    if (primary)
        pg_oneline(msg, sizeof msg, primary);
    else if (r && *PQresultErrorMessage(r))
        pg_oneline(msg, sizeof msg, PQresultErrorMessage(r));
    else if (c->pg && *PQerrorMessage(c->pg))
        pg_oneline(msg, sizeof msg, PQerrorMessage(c->pg));
    else if (!r)
        snprintf(msg, sizeof msg, "out of memory or no connection");
    else
        snprintf(msg, sizeof msg, "unexpected result %s",
                 PQresStatus(PQresultStatus(r)));
    snprintf(c->state, sizeof c->state, "%s", state ? state : "");
    int rc = forced ? forced : pg_code(c, state);
    if (rc == MQS_ECONN)
        c->broken = 1;
    char st[40];
    if (state && *state)
        snprintf(st, sizeof st, " (SQLSTATE %s)", state);
    else
        snprintf(st, sizeof st, " (no SQLSTATE: client-side error)");
    pg_set_err(c, "postgresql %s: %s failed: %s%s%s%s%s%s.%s", c->masked,
               what, msg, st, detail ? "; DETAIL: " : "", detail ? detail : "",
               hint ? "; HINT: " : "", hint ? hint : "", pg_advice(rc));
    return rc;
}

static int pg_fail(mqs_be_conn *c, const PGresult *r, const char *what)
{
    return pg_fail_code(c, r, what, 0);
}

/* The connection cannot take a statement now. */
static int pg_unusable(mqs_be_conn *c, const char *what)
{
    if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD || c->broken) {
        c->broken = 1;
        pg_set_err(c,
                   "postgresql %s: %s: the connection was lost by an earlier "
                   "failure; reconnect.",
                   c->masked, what);
        return MQS_ECONN;
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Binary encoding (network byte order), for array parameters and results.
 * ------------------------------------------------------------------------- */
typedef struct pg_buf {
    char *p;
    size_t len, cap;
    int oom;
} pg_buf;

static int pg_buf_need(pg_buf *b, size_t n)
{
    if (b->oom)
        return -1;
    if (b->len + n <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void pg_put_u32(pg_buf *b, uint32_t v)
{
    if (pg_buf_need(b, 4))
        return;
    unsigned char *d = (unsigned char *)b->p + b->len;
    d[0] = (unsigned char)(v >> 24);
    d[1] = (unsigned char)(v >> 16);
    d[2] = (unsigned char)(v >> 8);
    d[3] = (unsigned char)v;
    b->len += 4;
}

static void pg_put_mem(pg_buf *b, const void *p, size_t n)
{
    if (n == 0 || pg_buf_need(b, n))
        return;
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* One-dimensional array header (array_recv format). */
static void pg_arr_begin(pg_buf *b, uint32_t elem_oid, size_t n, int has_null)
{
    pg_put_u32(b, n ? 1 : 0); /* ndim: an empty array has none */
    pg_put_u32(b, has_null ? 1 : 0);
    pg_put_u32(b, elem_oid);
    if (n) {
        pg_put_u32(b, (uint32_t)n);
        pg_put_u32(b, 1); /* lower bound */
    }
}

static void pg_arr_i64(pg_buf *b, int64_t v)
{
    uint64_t u = (uint64_t)v;
    pg_put_u32(b, 8);
    pg_put_u32(b, (uint32_t)(u >> 32));
    pg_put_u32(b, (uint32_t)u);
}

static void pg_arr_i16(pg_buf *b, int v)
{
    pg_put_u32(b, 2);
    if (pg_buf_need(b, 2))
        return;
    unsigned char *d = (unsigned char *)b->p + b->len;
    uint16_t u = (uint16_t)v;
    d[0] = (unsigned char)(u >> 8);
    d[1] = (unsigned char)u;
    b->len += 2;
}

static void pg_arr_bytes(pg_buf *b, const void *p, size_t n)
{
    if (n == 0) {
        pg_put_u32(b, 0xffffffffu); /* NULL: nothing to store */
        return;
    }
    pg_put_u32(b, (uint32_t)n);
    pg_put_mem(b, p, n);
}

/* Integer of a binary result column (int2, int4 or int8). */
static int pg_get_int(const PGresult *r, int row, int col, int64_t *out)
{
    if (PQgetisnull(r, row, col)) {
        *out = 0;
        return 0;
    }
    const unsigned char *d = (const unsigned char *)PQgetvalue(r, row, col);
    int len = PQgetlength(r, row, col);
    uint64_t u = 0;
    for (int i = 0; i < len; i++)
        u = (u << 8) | d[i];
    switch (len) {
    case 1: *out = (int8_t)u; return 0; /* bool */
    case 2: *out = (int16_t)u; return 0;
    case 4: *out = (int32_t)u; return 0;
    case 8: *out = (int64_t)u; return 0;
    default: return -1;
    }
}

static int pg_bad_result(mqs_be_conn *c, const char *what)
{
    pg_set_err(c,
               "postgresql %s: %s: the server returned columns of an "
               "unexpected type; was the schema altered by hand?",
               c->masked, what);
    return MQS_ECORRUPT;
}

/* ---------------------------------------------------------------------------
 * Statement execution
 * ------------------------------------------------------------------------- */
typedef struct pg_stmt {
    const char *sql;
    int n; /* parameters */
    const Oid *types;
    const char *const *vals;
    const int *lens; /* NULL: every parameter is text */
    const int *fmts; /* NULL: every parameter is text */
} pg_stmt;

static int pg_ok(const PGresult *r)
{
    if (!r)
        return 0;
    ExecStatusType s = PQresultStatus(r);
    return s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
}

/* A write deferred to the next round trip: its parameter buffers are
 * owned copies; done (may be NULL) reads its result once the round trip
 * succeeded (for a COMMIT's, once it committed). */
typedef int (*pg_done_fn)(mqs_be_conn *c, PGresult *r, void *ctx);
typedef struct pg_deferred {
    const char *sql, *what;
    int n;
    Oid types[8];
    char *vals[8];
    int lens[8], fmts[8];
    pg_done_fn done;
    void *ctx; /* freed with free() after done */
} pg_deferred;

static void pg_defer_clear(mqs_be_conn *c)
{
    for (size_t i = 0; i < c->ndq; i++) {
        for (int k = 0; k < c->dq[i].n; k++)
            free(c->dq[i].vals[k]);
        free(c->dq[i].ctx);
    }
    c->ndq = 0;
}

/* Queue st (parameters are copied) for the next round trip. Takes ctx
 * (freed later, also on failure). */
static int pg_defer(mqs_be_conn *c, const char *what, const pg_stmt *st,
                    pg_done_fn done, void *ctx)
{
    if (c->ndq == c->capdq) {
        size_t cap = c->capdq ? c->capdq * 2 : 8;
        pg_deferred *d = realloc(c->dq, cap * sizeof *d);
        if (!d)
            goto oom;
        c->dq = d;
        c->capdq = cap;
    }
    pg_deferred *d = &c->dq[c->ndq];
    memset(d, 0, sizeof *d);
    d->sql = st->sql;
    d->what = what;
    d->done = done;
    d->n = st->n;
    for (int k = 0; k < st->n; k++) {
        int bin = st->fmts && st->fmts[k];
        size_t len = !st->vals[k] ? 0
                     : bin        ? (size_t)st->lens[k]
                                  : strlen(st->vals[k]) + 1;
        d->types[k] = st->types[k];
        d->lens[k] = bin ? st->lens[k] : 0;
        d->fmts[k] = bin;
        if (!st->vals[k])
            continue;
        d->vals[k] = malloc(len ? len : 1);
        if (!d->vals[k]) {
            for (int j = 0; j < k; j++)
                free(d->vals[j]);
            goto oom;
        }
        memcpy(d->vals[k], st->vals[k], len);
    }
    d->ctx = ctx;
    c->ndq++;
    return 0;
oom:
    free(ctx);
    pg_set_err(c, "postgresql %s: %s: out of memory queuing a statement",
               c->masked, what);
    return MQS_ENOMEM;
}

/* The advisory lock key of the fence of cluster $1 (see pg_lock_fence):
 * per database and cluster, apart from the crash detector's key. */
#define PG_FENCE_KEY                                                           \
    "pg_catalog.hashtextextended('mqstore-fence:' || "                         \
    "pg_catalog.current_database() || ':' || $1::text, 0)"

static const char SQL_FENCE_LOCK[] =
    "SELECT 1 FROM pg_catalog.pg_advisory_xact_lock_shared(" PG_FENCE_KEY ")";

/* The guard, last before COMMIT: fails the transaction (SQLSTATE 22P02,
 * the message saying why) unless $2 holds the lock of $1 with token $3 and
 * at least $4 ms of lease left by the server's clock. The error comes from
 * a cast of a value built from the row, which the planner cannot fold. */
static const char SQL_FENCE_GUARD[] =
    "SELECT CASE WHEN f.ok THEN 0 ELSE ('mqstore fence: node ' || $2 || "
    "' (token ' || $3 || ') may not commit: the lock of cluster ''' || $1 || "
    "''' is held by ' || COALESCE(f.holder, 'nobody') || ' (token ' || "
    "COALESCE(f.token::text, 'none') || ', lease ' || "
    "COALESCE(f.left_ms::text, 'none') || ' ms left, ' || $4 || "
    "' ms needed)')::int4 END FROM (SELECT pg_catalog.bool_or(m.holder = $2 "
    "AND m.token = $3::int8 AND m.lease_until - pg_catalog.clock_timestamp() "
    ">= $4::float8 * interval '1 millisecond') AS ok, "
    "pg_catalog.max(m.holder) AS holder, pg_catalog.max(m.token) AS token, "
    "pg_catalog.max(pg_catalog.ceil(extract(epoch FROM m.lease_until - "
    "pg_catalog.clock_timestamp()) * 1000))::int8 AS left_ms "
    "FROM mqs_lock m WHERE m.cluster = $1) f";

/* The idle-in-transaction timeout of a writing connection: for the session
 * when it is this client's own ($1 = PQbackendPID), else (a pooler) for
 * each transaction. */
static const char SQL_IDLE_SESSION[] =
    "SELECT pg_catalog.pg_backend_pid() = $1::int4, CASE WHEN "
    "pg_catalog.pg_backend_pid() = $1::int4 THEN pg_catalog.set_config("
    "'idle_in_transaction_session_timeout', $2, false) END";
static const char SQL_IDLE_LOCAL[] =
    "SELECT pg_catalog.set_config('idle_in_transaction_session_timeout', $2, "
    "true)";

enum { PG_IT_BEGIN, PG_IT_IDLE, PG_IT_FENCE, PG_IT_DEFER, PG_IT_STMT,
       PG_IT_GUARD, PG_IT_COMMIT, PG_IT_PREP };

/* The name of sql's prepared statement on this session, 0 if it has none
 * yet. */
static unsigned pg_prep_find(const mqs_be_conn *c, const char *sql)
{
    for (int i = 0; i < c->nprep; i++)
        if (c->prep[i].sql == sql)
            return c->prep[i].id;
    return 0;
}

/* Send everything the open transaction has pending (BEGIN, its settings,
 * the fence's lock, deferred writes), then st[0..nst), then with commit
 * the fence's guard and COMMIT, all in one pipeline: one round trip. res
 * (may be NULL) gets the result of each st, to be PQclear()ed by the
 * caller; on failure nothing is returned. With commit, a loss of the
 * connection after COMMIT was sent is MQS_EUNKNOWN; a statement that
 * failed first makes the server skip COMMIT: its own code (the guard's:
 * MQS_EFENCED). */
static int pg_flush(mqs_be_conn *c, const char *what, const pg_stmt *st,
                    int nst, PGresult **res, int commit)
{
    int rc = pg_unusable(c, what);
    if (rc)
        return rc;
    if (c->inflight) {
        pg_set_err(c, "postgresql %s: %s: the session lock's check is still "
                      "in flight on this connection", c->masked, what);
        return MQS_ESTATE;
    }
    if (res)
        for (int i = 0; i < nst; i++)
            res[i] = NULL;
    int begin = c->begin_pending;
    int fence = c->fence_on && !c->fence_locked;
    /* The session's idle-in-transaction timeout, with the first statement
     * of a transaction block: the first one on a session also finds out
     * whether the session is this client's own (not a pooler's), which
     * also decides prepared statements. Direct: set for the session, once
     * (again only if a fence wants another value); pooled: in each fenced
     * transaction. 0 = the server's default (off). */
    int64_t idle_want = c->fence_on ? c->idle_ms : 0;
    int idle = c->in_txn && !c->fence_locked &&
               (c->idle_mode == 0 ||
                (c->fence_on && c->idle_mode == 1 && c->idle_set != idle_want) ||
                (c->fence_on && c->idle_mode < 0));
    int guard = commit && c->fence_on;
    size_t ndq = c->ndq;
    if (!begin && !fence && !ndq && !commit && nst == 1) {
        PGresult *r = PQexecParams(c->pg, st->sql, st->n, st->types, st->vals,
                                   st->lens, st->fmts, 1);
        if (!pg_ok(r)) {
            rc = pg_fail(c, r, what);
            PQclear(r);
            return rc;
        }
        if (res)
            res[0] = r;
        else
            PQclear(r);
        return 0;
    }

    /* The kind of each statement sent, in order. */
    size_t total = (size_t)begin + (size_t)idle + (size_t)fence + ndq +
                   (size_t)nst + (size_t)guard + (size_t)commit;
    /* each statement may be preceded by its Prepare */
    unsigned char *kind = malloc(total ? 2 * total : 1);
    PGresult **dres = ndq ? calloc(ndq, sizeof *dres) : NULL;
    if (!kind || (ndq && !dres)) {
        free(kind);
        free(dres);
        pg_set_err(c, "postgresql %s: %s: out of memory", c->masked, what);
        return MQS_ENOMEM;
    }
    char pid[16], idle_ms[24], token[24], margin[24];
    snprintf(pid, sizeof pid, "%d", PQbackendPID(c->pg));
    snprintf(idle_ms, sizeof idle_ms, "%lld", (long long)idle_want);
    snprintf(token, sizeof token, "%lld", (long long)c->fence_token);
    snprintf(margin, sizeof margin, "%lld", (long long)c->fence_margin_ms);
    const Oid t_txt[4] = {PG_OID_TEXT, PG_OID_TEXT, PG_OID_TEXT, PG_OID_TEXT};
    const char *v_idle[2] = {pid, idle_ms};
    const char *v_fence[1] = {c->fence_cluster};
    const char *v_guard[4] = {c->fence_cluster, c->fence_node, token, margin};

    c->begin_pending = 0; /* a failed BEGIN leaves nothing to roll back */
    if (!PQenterPipelineMode(c->pg)) {
        free(kind);
        free(dres);
        return pg_fail(c, NULL, what);
    }
    size_t k = 0;
    int ok = 1;
    /* Inside a transaction block every statement is followed by a Sync
     * (no round trip: nothing waits for it). The server reports
     * ReadyForQuery there and arms idle_in_transaction_session_timeout
     * before it reads on, so a path that stalls halfway through the
     * pipeline cannot keep the fence's or the insert turn's lock held
     * past about a lease (a standby's takeover waits for them). After a
     * failure the rest runs in the aborted block and fails too: COMMIT
     * then only ends it. Outside a block one Sync ends the implicit
     * transaction, as each Sync would. */
    int sync_each = c->in_txn;
    int nsync = 0;
    /* On a direct session the hot statements are prepared once (parsed and
     * planned once: a third of a small transaction's server time here);
     * through a pooler a named statement could land on another server
     * session, so they stay unnamed there. Statements prepared in this
     * pipeline count only once it succeeded; a failed one may leave a
     * named statement behind, which a fresh name never meets. */
    int use_prep = c->idle_mode == 1 && c->in_txn;
    const char *new_sql[24];
    unsigned new_id[24];
    int n_new = 0;
#define PG_SEND(kd, sql, n, types, vals, lens, fmts)                          \
    do {                                                                       \
        if (ok) {                                                              \
            /* static SQL texts only: a statement's address is its key */     \
            int p_ = use_prep && (kd) != PG_IT_STMT && (kd) != PG_IT_IDLE;     \
            unsigned id_ = p_ ? pg_prep_find(c, sql) : 0;                      \
            for (int j_ = 0; p_ && !id_ && j_ < n_new; j_++)                   \
                if (new_sql[j_] == (sql))                                      \
                    id_ = new_id[j_];                                          \
            char nm_[24];                                                      \
            if (p_ && !id_ && c->nprep + n_new < 24) {                         \
                id_ = ++c->prep_seq;                                           \
                snprintf(nm_, sizeof nm_, "mqs_%u", id_);                      \
                kind[k++] = PG_IT_PREP;                                        \
                ok = PQsendPrepare(c->pg, nm_, sql, n, types);                \
                new_sql[n_new] = (sql);                                        \
                new_id[n_new++] = id_;                                         \
            }                                                                  \
            kind[k++] = (kd);                                                  \
            if (ok && id_) {                                                   \
                snprintf(nm_, sizeof nm_, "mqs_%u", id_);                      \
                ok = PQsendQueryPrepared(c->pg, nm_, n, vals, lens, fmts, 1); \
            } else if (ok) {                                                   \
                ok = PQsendQueryParams(c->pg, sql, n, types, vals, lens, fmts, \
                                       1);                                     \
            }                                                                  \
            if (ok && sync_each) {                                             \
                ok = PQpipelineSync(c->pg);                                    \
                nsync++;                                                       \
            }                                                                  \
        }                                                                      \
    } while (0)
    if (begin)
        PG_SEND(PG_IT_BEGIN, "BEGIN", 0, NULL, NULL, NULL, NULL);
    if (idle)
        PG_SEND(PG_IT_IDLE, c->idle_mode >= 0 ? SQL_IDLE_SESSION
                                              : SQL_IDLE_LOCAL,
                2, t_txt, v_idle, NULL, NULL);
    if (fence)
        PG_SEND(PG_IT_FENCE, SQL_FENCE_LOCK, 1, t_txt, v_fence, NULL, NULL);
    for (size_t i = 0; i < ndq; i++) {
        pg_deferred *d = &c->dq[i];
        PG_SEND(PG_IT_DEFER, d->sql, d->n, d->types,
                (const char *const *)d->vals, d->lens, d->fmts);
    }
    for (int i = 0; i < nst; i++)
        PG_SEND(PG_IT_STMT, st[i].sql, st[i].n, st[i].types, st[i].vals,
                st[i].lens, st[i].fmts);
    if (guard)
        PG_SEND(PG_IT_GUARD, SQL_FENCE_GUARD, 4, t_txt, v_guard, NULL, NULL);
    if (commit)
        PG_SEND(PG_IT_COMMIT, "COMMIT", 0, NULL, NULL, NULL, NULL);
#undef PG_SEND
    total = k;
    if (ok && !sync_each) {
        ok = PQpipelineSync(c->pg);
        nsync++;
    }
    if (!ok) {
        /* Results of what was sent are still queued: drop the connection.
         * A COMMIT may have gone out with the rest. */
        free(kind);
        free(dres);
        pg_defer_clear(c);
        return pg_fail_code(c, NULL, what, commit ? MQS_EUNKNOWN : MQS_ECONN);
    }
    if (fence)
        c->fence_locked = 1;

    /* Each statement's results end with a NULL; the sync ends the lot. */
    size_t idx = 0, di = 0;
    int si = 0, synced = 0, committed = 0, commit_seen = 0, err_kd = -2;
    int answered = 0; /* the server sent anything for this pipeline */
    while (idx <= total) {
        PGresult *r = PQgetResult(c->pg);
        if (!r) {
            if (idx < total && kind[idx] == PG_IT_DEFER)
                di++;
            if (idx < total && kind[idx] == PG_IT_STMT)
                si++;
            idx++;
            if (PQstatus(c->pg) == CONNECTION_BAD)
                break;
            continue;
        }
        ExecStatusType es = PQresultStatus(r);
        /* a result the client made up for a lost connection has no
         * SQLSTATE and is no answer */
        if (es != PGRES_FATAL_ERROR ||
            PQresultErrorField(r, PG_DIAG_SQLSTATE) != NULL)
            answered = 1;
        if (es == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            if (--nsync > 0)
                continue; /* a statement's own Sync (sync_each) */
            synced = 1;
            break;
        }
        int kd = idx < total ? kind[idx] : -1;
        if (kd == PG_IT_COMMIT && es != PGRES_PIPELINE_ABORTED)
            commit_seen = 1;
        if (es == PGRES_PIPELINE_ABORTED) {
            PQclear(r); /* skipped after the first failure */
        } else if (!pg_ok(r)) {
            if (!rc) {
                const char *gm =
                    kd == PG_IT_GUARD
                        ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY)
                        : NULL;
                /* Only the guard's own cast error is a fence. Anything
                 * else at its position (the server shutting down, a
                 * cancel, a lost connection) is that error: it proves the
                 * COMMIT after it never ran, so the write is retried, and
                 * a master is not deposed by a database restart. */
                if (kd == PG_IT_GUARD && gm &&
                    strstr(gm, "mqstore fence:") != NULL) {
                    char why[700];
                    pg_oneline(why, sizeof why, gm);
                    /* The server wraps it: invalid input syntax for type
                     * integer: "mqstore fence: ...". Keep the inside. */
                    char *q = strchr(why, '"'), *e = strrchr(why, '"');
                    if (q && e > q + 1) {
                        *e = '\0';
                        memmove(why, q + 1, (size_t)(e - q));
                    }
                    snprintf(c->state, sizeof c->state, "22P02");
                    pg_set_err(c, "postgresql %s: %s", c->masked, why);
                    rc = MQS_EFENCED;
                } else if (kd == PG_IT_COMMIT) {
                    rc = pg_fail(c, r, "COMMIT (write transaction)");
                } else {
                    rc = pg_fail(c, r,
                                 kd == PG_IT_BEGIN   ? "BEGIN"
                                 : kd == PG_IT_GUARD ? "the fence's check "
                                                       "before COMMIT"
                                 : kd == PG_IT_DEFER ? c->dq[di].what
                                                     : what);
                }
                err_kd = kd;
            }
            PQclear(r);
        } else if (kd == PG_IT_COMMIT) {
            /* COMMIT of a failed transaction "succeeds" as ROLLBACK. */
            committed = !strcmp(PQcmdStatus(r), "COMMIT");
            PQclear(r);
        } else if (kd == PG_IT_IDLE && c->idle_mode >= 0) {
            /* first column: the session is this client's own */
            c->idle_mode = PQntuples(r) == 1 && PQgetlength(r, 0, 0) == 1 &&
                                   PQgetvalue(r, 0, 0)[0] == 1
                               ? 1
                               : -1;
            c->idle_set = c->idle_mode == 1 ? idle_want : -1;
            PQclear(r);
        } else if (kd == PG_IT_DEFER && !dres[di]) {
            dres[di] = r;
        } else if (kd == PG_IT_STMT && res && !res[si]) {
            res[si] = r;
        } else {
            PQclear(r);
        }
    }
    if (!synced || !PQexitPipelineMode(c->pg)) {
        if (!rc && !(commit && committed))
            rc = pg_fail_code(c, NULL, what,
                              commit && !commit_seen ? MQS_EUNKNOWN
                                                     : MQS_ECONN);
        c->broken = 1;
    }
    if (commit && committed) {
        rc = 0; /* its result came: an error after it (the session ended
                   right after) changes nothing */
    } else if (commit && sync_each && !answered &&
               (rc == MQS_ECONN || rc == MQS_EUNKNOWN)) {
        /* Not one answer, not even BEGIN's: inside a block every statement
         * is followed by a Sync, where the server flushes its answers
         * before it reads on, so it ran nothing (a session it ended, e.g.
         * a restart, before it read the pipeline). Safe to retry. */
        rc = MQS_ECONN;
        c->broken = 1;
    } else if (commit && (rc == MQS_ECONN || rc == MQS_EUNKNOWN) &&
               (!c->state[0] || err_kd == PG_IT_COMMIT || err_kd == -1)) {
        /* The connection went without the server saying which statement
         * stopped the transaction (or it failed at COMMIT itself): COMMIT
         * was sent, and the server may have run it before the results
         * were flushed. A server error at an earlier statement proves the
         * rest never ran (a session runs its statements in order). */
        char why[sizeof c->err];
        memcpy(why, c->err, sizeof why);
        pg_set_err(c, "%s The outcome of COMMIT is unknown: it was sent in "
                      "the same round trip.", why);
        rc = MQS_EUNKNOWN;
    }
    if (commit && rc == 0 && !committed) {
        pg_set_err(c,
                   "postgresql %s: COMMIT rolled back: a statement of the "
                   "transaction had failed.",
                   c->masked);
        rc = MQS_EIO;
    }
    /* Deferred writes read their results once the round trip (with
     * commit: the COMMIT) succeeded. */
    for (size_t i = 0; i < ndq && rc == 0; i++)
        if (c->dq[i].done && dres[i])
            rc = c->dq[i].done(c, dres[i], c->dq[i].ctx);
    for (size_t i = 0; i < ndq; i++)
        PQclear(dres[i]);
    for (int j = 0; rc == 0 && j < n_new && c->nprep < 24; j++) {
        c->prep[c->nprep].sql = new_sql[j];
        c->prep[c->nprep++].id = new_id[j];
    }
    free(dres);
    free(kind);
    pg_defer_clear(c);
    if (rc && res)
        for (int i = 0; i < nst; i++) {
            PQclear(res[i]);
            res[i] = NULL;
        }
    return rc;
}

/* Run nst statements in one round trip, with whatever the open
 * transaction has pending (see pg_flush). */
static int pg_run(mqs_be_conn *c, const char *what, const pg_stmt *st,
                  int nst, PGresult **res)
{
    return pg_flush(c, what, st, nst, res, 0);
}

/* One statement, text parameters, results discarded or returned. */
static int pg_run1(mqs_be_conn *c, const char *what, const char *sql, int n,
                   const Oid *types, const char *const *vals, PGresult **res)
{
    pg_stmt st = {sql, n, types, vals, NULL, NULL};
    return pg_run(c, what, &st, 1, res);
}

/* Single-column, single-row integer result (or none: *found = 0). */
static int pg_run_id(mqs_be_conn *c, const char *what, const char *sql, int n,
                     const Oid *types, const char *const *vals, int64_t *out,
                     int *found)
{
    PGresult *r;
    int rc = pg_run1(c, what, sql, n, types, vals, &r);
    if (rc)
        return rc;
    *found = PQntuples(r) > 0;
    *out = 0;
    if (*found && pg_get_int(r, 0, 0, out))
        rc = pg_bad_result(c, what);
    PQclear(r);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Connection
 * ------------------------------------------------------------------------- */
/* Notices are not for stderr ("there is no transaction in progress"), but
 * a server ending the session says why in one (FATAL, e.g. the
 * idle-in-transaction timeout): kept for the message of the failure that
 * follows. */
static void pg_notice(void *arg, const PGresult *r)
{
    mqs_be_conn *c = arg;
    const char *sev = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    if (!sev || (strcmp(sev, "FATAL") != 0 && strcmp(sev, "PANIC") != 0))
        return;
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    char m[200];
    pg_oneline(m, sizeof m, PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY));
    snprintf(c->fatal, sizeof c->fatal, "%s (SQLSTATE %s)", m,
             state ? state : "none");
}

static int pg_is_state(const char *s)
{
    for (int i = 0; i < 5; i++)
        if (!isdigit((unsigned char)s[i]) && !isupper((unsigned char)s[i]))
            return 0;
    return 1;
}

/* Find the SQLSTATE in a verbose connection error ("FATAL:  28P01: ...").
 * Several hosts may have failed: an authentication or missing-database code
 * wins, since it will not go away by itself. */
static void pg_conn_state(const char *msg, char state[6])
{
    state[0] = '\0';
    for (const char *p = msg; (p = strstr(p, ":  ")) != NULL; p++) {
        const char *s = p + 3;
        if (strlen(s) < 6 || !pg_is_state(s) || s[5] != ':')
            continue;
        int decisive = !strncmp(s, "28", 2) || !strncmp(s, "3D000", 5) ||
                       !strncmp(s, "42501", 5);
        if (!state[0] || decisive) {
            memcpy(state, s, 5);
            state[5] = '\0';
            if (decisive)
                return;
        }
    }
}

/* The verbose message without "XXXXX: " codes and LOCATION lines. */
static void pg_conn_clean(char *dst, size_t size, const char *msg)
{
    char tmp[1024];
    size_t k = 0;
    for (const char *p = msg; *p && k + 4 < sizeof tmp;) {
        if ((p == msg || p[-1] == '\n') && !strncmp(p, "LOCATION:", 9)) {
            p += strcspn(p, "\n");
            if (*p)
                p++;
            continue;
        }
        if (!strncmp(p, ":  ", 3) && strlen(p) >= 10 && pg_is_state(p + 3) &&
            p[8] == ':' && p[9] == ' ') {
            memcpy(tmp + k, ":  ", 3);
            k += 3;
            p += 10;
            continue;
        }
        tmp[k++] = *p++;
    }
    tmp[k] = '\0';
    pg_oneline(dst, size, tmp);
}

/* The URI without its pooler= parameter (mqstore's, unknown to libpq),
 * into *out (malloc'd); *session = 1 for pooler=session. A bad value:
 * MQS_EINVAL with the message in err. */
static int pg_take_pooler(const char *uri, const char *masked, char **out,
                          int *session, char *err, size_t errlen)
{
    *out = NULL;
    *session = 0;
    size_t n = strlen(uri);
    char *u = malloc(n + 1);
    if (!u) {
        snprintf(err, errlen, "postgresql: out of memory");
        return MQS_ENOMEM;
    }
    const char *q = strchr(uri, '?');
    size_t base = q ? (size_t)(q - uri) : n;
    memcpy(u, uri, base);
    size_t k = base;
    int first = 1;
    for (const char *p = q; p && *p;) {
        p++; /* past '?' or '&' */
        size_t len = strcspn(p, "&");
        if (len >= 7 && !strncmp(p, "pooler=", 7)) {
            if (len == 7 + 4 && !strncmp(p + 7, "none", 4)) {
                *session = 0;
            } else if (len == 7 + 7 && !strncmp(p + 7, "session", 7)) {
                *session = 1;
            } else {
                snprintf(err, errlen,
                         "postgresql %s: bad value '%.*s' for option "
                         "pooler: expected none or session",
                         masked, (int)(len - 7 < 64 ? len - 7 : 64), p + 7);
                free(u);
                return MQS_EINVAL;
            }
        } else if (len > 0) {
            u[k++] = first ? '?' : '&';
            memcpy(u + k, p, len);
            k += len;
            first = 0;
        }
        p += len;
    }
    u[k] = '\0';
    *out = u;
    return 0;
}

/* libpq copied it at connect; it holds the password. */
static void pg_uri_free(char *uri)
{
    if (uri) {
        explicit_bzero(uri, strlen(uri));
        free(uri);
    }
}

static int pg_conn_open(const mqs_be_open_args *a, mqs_be_conn **out,
                        char *err, size_t errlen)
{
    *out = NULL;
    if (!a || !a->uri) {
        snprintf(err, errlen, "postgresql: conn_open: no URI");
        return MQS_EINVAL;
    }
    mqs_be_conn *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "postgresql: out of memory");
        return MQS_ENOMEM;
    }
    c->masked = strdup(a->uri_masked ? a->uri_masked : "postgresql://***");
    if (!c->masked) {
        free(c);
        snprintf(err, errlen, "postgresql: out of memory");
        return MQS_ENOMEM;
    }
    pg_secrets_from_uri(c->secrets, a->uri);

    char *uri = NULL; /* a->uri without pooler= */
    int rc = pg_take_pooler(a->uri, c->masked, &uri, &c->session_pooler,
                            c->err, sizeof c->err);
    if (rc)
        goto fail;
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(uri, &perr);
    if (!opts) {
        char m[512];
        pg_oneline(m, sizeof m, perr ? perr : "out of memory");
        pg_set_err(c,
                   "postgresql %s: invalid connection URI: %s. Fix the URI "
                   "(see \"Connection URIs\" in the libpq manual).",
                   c->masked, m);
        PQfreemem(perr);
        rc = perr ? MQS_EINVAL : MQS_ENOMEM;
        goto fail;
    }
    const char *kw[2 + PG_N_DEFAULTS + 1];
    const char *val[2 + PG_N_DEFAULTS + 1];
    char app[64];
    snprintf(app, sizeof app, "mqstore-%s", a->role ? a->role : "client");
    int n = 0;
    kw[n] = "dbname"; /* expanded: the whole URI */
    val[n++] = uri;
    kw[n] = "fallback_application_name";
    val[n++] = app;
    for (size_t i = 0; i < PG_N_DEFAULTS; i++) {
        int set = pg_defaults[i].env && getenv(pg_defaults[i].env);
        for (PQconninfoOption *o = opts; o->keyword && !set; o++)
            if (!strcmp(o->keyword, pg_defaults[i].key) && o->val)
                set = 1;
        if (!set) {
            kw[n] = pg_defaults[i].key;
            val[n++] = pg_defaults[i].value;
        }
    }
    kw[n] = NULL;
    val[n] = NULL;
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (!strcmp(o->keyword, "password") && o->val)
            pg_secret_add(c->secrets, o->val, strlen(o->val));
    PQconninfoFree(opts);

    /* libpq reports the server's SQLSTATE of a failed connection only in
     * the verbose message text, and verbosity can only be set on an
     * existing PGconn: start one, set it, then let PQreset() connect for
     * real (keeping libpq's own per-host timeout and multi-host logic). */
    c->pg = PQconnectStartParams(kw, val, 1);
    if (!c->pg) {
        pg_set_err(c, "postgresql %s: out of memory connecting", c->masked);
        rc = MQS_ENOMEM;
        goto fail;
    }
    PQsetNoticeReceiver(c->pg, pg_notice, c);
    if (PQstatus(c->pg) == CONNECTION_BAD) {
        /* Refused before any network traffic: a bad option, or no host
         * could even be resolved. */
        char m[1024];
        pg_oneline(m, sizeof m, PQerrorMessage(c->pg));
        int bad_opt = !strncmp(m, "invalid ", 8) || strstr(m, "could not match");
        rc = bad_opt ? MQS_EINVAL : MQS_ECONN;
        pg_set_err(c, "postgresql %s: connect failed: %s (no SQLSTATE: %s). %s",
                   c->masked, m,
                   bad_opt ? "rejected by libpq" : "the server was not reached",
                   bad_opt ? "Fix the option in the URI."
                           : "Check the host name and that the server is "
                             "reachable.");
        goto fail;
    }
    PQsetErrorVerbosity(c->pg, PQERRORS_VERBOSE);
    PQreset(c->pg);
    if (PQstatus(c->pg) != CONNECTION_OK) {
        const char *raw = PQerrorMessage(c->pg);
        char state[6], m[1024];
        pg_conn_state(raw, state);
        pg_conn_clean(m, sizeof m, raw);
        const char *advice;
        if (!strncmp(state, "28", 2) || !strcmp(state, "42501")) {
            rc = MQS_EAUTH;
            advice = "Check the user name and password in the URI (or the "
                     "passfile) and pg_hba.conf on the server.";
        } else if (!strcmp(state, "3D000")) {
            rc = MQS_ENOTFOUND;
            advice = "Create the database (createdb) or fix its name in the "
                     "URI.";
        } else if (!strcmp(state, "08P01") &&
                   (strstr(m, "authentication failed") ||
                    strstr(m, "no such user"))) {
            rc = MQS_EAUTH; /* pgbouncer reports everything as 08P01 */
            advice = "Check the user name and password in the URI and "
                     "pgbouncer's auth_file / auth_query.";
        } else if (!strcmp(state, "08P01") && strstr(m, "no such database")) {
            rc = MQS_ENOTFOUND;
            advice = "Add the database to pgbouncer's [databases] or fix its "
                     "name in the URI.";
        } else if (!state[0] || !strncmp(state, "08", 2) ||
                   !strncmp(state, "57", 2) || !strncmp(state, "53", 2)) {
            rc = MQS_ECONN;
            advice = state[0] ? "The server refused the connection for now "
                                "(starting up, shutting down or too many "
                                "connections); mqstore retries."
                              : "Check the host and port and that the server "
                                "is running and reachable.";
        } else {
            rc = MQS_EIO;
            advice = "";
        }
        pg_set_err(c, "postgresql %s: connect failed: %s (%s%s). %s",
                   c->masked, m, state[0] ? "SQLSTATE " : "no SQLSTATE: ",
                   state[0] ? state : "the server was not reached", advice);
        goto fail;
    }
    PQsetErrorVerbosity(c->pg, PQERRORS_DEFAULT);
    if (PQpass(c->pg))
        pg_secret_add(c->secrets, PQpass(c->pg), strlen(PQpass(c->pg)));
    if (PQserverVersion(c->pg) < 100000) {
        pg_set_err(c,
                   "postgresql %s: server version %d is too old: mqstore "
                   "needs PostgreSQL 10 or newer (identity columns).",
                   c->masked, PQserverVersion(c->pg));
        rc = MQS_EIO;
        goto fail;
    }
    pg_uri_free(uri);
    *out = c;
    return 0;

fail:
    pg_uri_free(uri);
    snprintf(err, errlen, "%s", c->err);
    PQfinish(c->pg);
    pg_secrets_free(c->secrets);
    free(c->masked);
    free(c);
    return rc;
}

static void pg_conn_close(mqs_be_conn *c)
{
    if (!c)
        return;
    PQclear(c->pend);
    pg_defer_clear(c);
    free(c->dq);
    free(c->sess_cluster);
    PQfinish(c->pg); /* ends the session, and its advisory lock with it */
    pg_secrets_free(c->secrets);
    free(c->masked);
    free(c);
}

static const char *pg_conn_errmsg(mqs_be_conn *c)
{
    return c ? c->err : "postgresql: no connection";
}

static int pg_conn_max_message(mqs_be_conn *c, size_t *max)
{
    (void)c;
    *max = PG_MAX_MESSAGE;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Schema
 * ------------------------------------------------------------------------- */
static const char SQL_SCHEMA_PROBE[] =
    "SELECT to_regclass('mqs_meta') IS NOT NULL, "
    "to_regclass('mqs_dest') IS NOT NULL OR to_regclass('mqs_sub') IS NOT NULL"
    " OR to_regclass('mqs_msg') IS NOT NULL"
    " OR to_regclass('mqs_pending') IS NOT NULL"
    " OR to_regclass('mqs_lock') IS NOT NULL";

static const char SQL_META_VERSION[] =
    "SELECT value FROM mqs_meta WHERE key = 'schema_version'";

static int pg_read_version(mqs_be_conn *c, const char *sql, int *version)
{
    const char *what = "reading schema_version from mqs_meta";
    PGresult *r;
    int rc = pg_run1(c, what, sql, 0, NULL, NULL, &r);
    if (rc) {
        /* mqs_meta is there but not ours (no key/value columns). */
        if (!strcmp(c->state, "42703")) {
            pg_set_err(c,
                       "postgresql %s: a table mqs_meta exists but has no "
                       "key/value columns: this database holds another "
                       "application's mqs_meta; use another database or "
                       "schema (search_path).",
                       c->masked);
            return MQS_ECORRUPT;
        }
        return rc;
    }
    const char *v = PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : NULL;
    char *end = NULL;
    long x = v ? strtol(v, &end, 10) : 0;
    if (!v || end == v || *end || x < 1 || x > 1000000) {
        pg_set_err(c,
                   "postgresql %s: mqs_meta exists but holds no valid "
                   "schema_version (%s%s%s): not an mqstore database, or a "
                   "damaged one; it is left untouched.",
                   c->masked, v ? "value '" : "no row", v ? v : "",
                   v ? "'" : "");
        PQclear(r);
        return MQS_ECORRUPT;
    }
    PQclear(r);
    *version = (int)x;
    return 0;
}

static int pg_schema_version(mqs_be_conn *c, int *version)
{
    const char *what = "probing for the mqs_* tables";
    *version = 0;
    PGresult *r;
    int rc = pg_run1(c, what, SQL_SCHEMA_PROBE, 0, NULL, NULL, &r);
    if (rc)
        return rc;
    int64_t meta = 0, other = 0;
    if (PQntuples(r) != 1 || pg_get_int(r, 0, 0, &meta) ||
        pg_get_int(r, 0, 1, &other)) {
        PQclear(r);
        return pg_bad_result(c, what);
    }
    PQclear(r);
    if (!meta && other) {
        pg_set_err(c,
                   "postgresql %s: tables named mqs_* exist but mqs_meta "
                   "does not: not created by mqstore (or damaged); it is "
                   "left untouched. Use another database or schema.",
                   c->masked);
        return MQS_ECORRUPT;
    }
    if (!meta)
        return 0;
    return pg_read_version(c, SQL_META_VERSION, version);
}

static int pg_exec_simple(mqs_be_conn *c, const char *sql, const char *what)
{
    PGresult *r = PQexec(c->pg, sql);
    int rc = pg_ok(r) ? 0 : pg_fail(c, r, what);
    PQclear(r);
    return rc;
}

static int pg_commit_now(mqs_be_conn *c, const char *what);
static void pg_txn_reset(mqs_be_conn *c);

static int pg_schema_apply(mqs_be_conn *c, const mqs_be_migration *m)
{
    char what[300];
    snprintf(what, sizeof what, "applying migration %s (version %d)",
             m->name ? m->name : "?", m->version);
    int rc = pg_unusable(c, what);
    if (rc)
        return rc;
    if (c->in_txn) {
        pg_set_err(c, "postgresql %s: %s: called inside a write transaction",
                   c->masked, what);
        return MQS_ESTATE;
    }
    if ((rc = pg_exec_simple(c, "BEGIN", what)))
        return rc;
    if (m->version > 1) {
        /* Serialize migrators on the version row; one that finds the work
         * done steps back. */
        int cur = 0;
        rc = pg_read_version(c, "SELECT value FROM mqs_meta WHERE key = "
                                "'schema_version' FOR UPDATE",
                             &cur);
        if (!rc && cur >= m->version) {
            (void)pg_exec_simple(c, "ROLLBACK", what);
            return 0;
        }
        if (!rc && cur != m->version - 1) {
            pg_set_err(c,
                       "postgresql %s: %s: the database is at version %d, "
                       "expected %d",
                       c->masked, what, cur, m->version - 1);
            rc = MQS_ESTATE;
        }
    }
    /* Simple protocol: the file may hold several statements. */
    if (!rc)
        rc = pg_exec_simple(c, m->sql, what);
    if (!rc) {
        char v[16];
        snprintf(v, sizeof v, "%d", m->version);
        const char *vals[1] = {v};
        const Oid types[1] = {PG_OID_TEXT};
        rc = pg_run1(c, what,
                     "INSERT INTO mqs_meta (key, value) "
                     "VALUES ('schema_version', $1) ON CONFLICT (key) "
                     "DO UPDATE SET value = excluded.value",
                     1, types, vals, NULL);
    }
    if (!rc)
        return pg_commit_now(c, what);
    if (rc == MQS_ECONN)
        return rc;
    /* Another process may have applied it at the same time (then our
     * CREATE TABLE failed on its tables): that is success. */
    char saved[sizeof c->err];
    memcpy(saved, c->err, sizeof saved);
    int cur = 0;
    if (pg_exec_simple(c, "ROLLBACK", what) == 0 &&
        pg_schema_version(c, &cur) == 0 && cur >= m->version)
        return 0;
    memcpy(c->err, saved, sizeof saved);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Transactions
 * ------------------------------------------------------------------------- */
static void pg_txn_reset(mqs_be_conn *c)
{
    c->in_txn = 0;
    c->begin_pending = 0;
    c->order_locked = 0;
    c->fence_on = c->fence_locked = 0;
    pg_defer_clear(c);
}

static int pg_txn_begin(mqs_be_conn *c)
{
    int rc = pg_unusable(c, "BEGIN");
    if (rc)
        return rc;
    if (c->in_txn || PQtransactionStatus(c->pg) != PQTRANS_IDLE) {
        pg_set_err(c,
                   "postgresql %s: BEGIN: a transaction is already open on "
                   "this connection",
                   c->masked);
        return MQS_ESTATE;
    }
    /* Sent with the first statement that needs an answer, or with COMMIT:
     * a whole transaction in one round trip (see pg_flush). */
    pg_txn_reset(c);
    c->in_txn = 1;
    c->begin_pending = 1;
    return 0;
}

/* Did the server end this session (idle_in_transaction_session_timeout on
 * a frozen master, a restart)? It has closed its end: reading that now
 * tells a COMMIT never sent, so rolled back, from one whose outcome is
 * unknown. */
static int pg_session_ended(mqs_be_conn *c, const char *what)
{
    for (int i = 0; i < 4 && PQstatus(c->pg) != CONNECTION_BAD; i++) {
        struct pollfd p = {.fd = PQsocket(c->pg), .events = POLLIN};
        int more = poll(&p, 1, 0) > 0 && PQconsumeInput(c->pg);
        (void)PQisBusy(c->pg); /* parses what came: the FATAL notice */
        if (!more)
            break;
    }
    if (PQstatus(c->pg) != CONNECTION_BAD)
        return 0;
    /* Nothing sent: the server rolls the transaction back. */
    c->broken = 1;
    pg_set_err(c,
               "postgresql %s: %s: the connection was lost before COMMIT was "
               "sent%s%s; the transaction was rolled back.",
               c->masked, what, c->fatal[0] ? ": " : "", c->fatal);
    return MQS_ECONN;
}

/* COMMIT alone, with its outcome classified (migrations). */
static int pg_commit_now(mqs_be_conn *c, const char *what)
{
    int rc = pg_session_ended(c, what);
    if (rc)
        return rc;
    PGresult *r = PQexec(c->pg, "COMMIT");
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
        /* COMMIT of a failed transaction "succeeds" as ROLLBACK. */
        if (strcmp(PQcmdStatus(r), "COMMIT") != 0) {
            pg_set_err(c,
                       "postgresql %s: %s: COMMIT rolled back: a statement of "
                       "the transaction had failed.",
                       c->masked, what);
            rc = MQS_EIO;
        }
    } else {
        const char *state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
        int lost = PQstatus(c->pg) == CONNECTION_BAD || !state ||
                   !strncmp(state, "08", 2) || !strncmp(state, "57P0", 4);
        char w[400];
        snprintf(w, sizeof w, "COMMIT (%s)", what);
        rc = pg_fail_code(c, r, w, lost ? MQS_EUNKNOWN : 0);
        if (lost)
            c->broken = 1;
    }
    PQclear(r);
    return rc;
}

/* The whole transaction, if nothing went ahead, in one round trip: BEGIN,
 * the fence's lock, the writes, the fence's guard, COMMIT. */
static int pg_txn_commit(mqs_be_conn *c)
{
    if (!c->in_txn) {
        pg_set_err(c, "postgresql %s: COMMIT: no transaction is open",
                   c->masked);
        return MQS_ESTATE;
    }
    int rc = 0;
    if (!(c->begin_pending && c->ndq == 0)) { /* else nothing was written */
        rc = pg_unusable(c, "COMMIT");
        if (!rc)
            rc = pg_session_ended(c, "write transaction");
        if (!rc)
            rc = pg_flush(c, "write transaction", NULL, 0, NULL, 1);
    }
    int still_open = rc && c->pg && PQstatus(c->pg) != CONNECTION_BAD &&
                     PQtransactionStatus(c->pg) != PQTRANS_IDLE;
    pg_txn_reset(c);
    /* A failed statement leaves the transaction open (aborted) on the
     * server: txn_rollback ends it. */
    c->in_txn = still_open;
    return rc;
}

static int pg_txn_rollback(mqs_be_conn *c)
{
    int begun = !c->begin_pending;
    pg_txn_reset(c);
    if (!begun)
        return 0;
    if (!c->pg || PQstatus(c->pg) == CONNECTION_BAD) {
        c->broken = 1;
        pg_set_err(c,
                   "postgresql %s: ROLLBACK: the connection is lost (the "
                   "server rolls the transaction back by itself).",
                   c->masked);
        return MQS_ECONN;
    }
    if (c->broken) {
        pg_set_err(c, "postgresql %s: ROLLBACK: the connection is unusable "
                      "after an earlier failure; reconnect.",
                   c->masked);
        return MQS_ECONN;
    }
    if (PQtransactionStatus(c->pg) == PQTRANS_IDLE)
        return 0;
    return pg_exec_simple(c, "ROLLBACK", "ROLLBACK");
}

/* ---------------------------------------------------------------------------
 * Destinations and subscriptions
 * ------------------------------------------------------------------------- */
static const char SQL_DEST_GET[] =
    "SELECT id FROM mqs_dest WHERE kind = $1 AND name = $2";

/* Select first: the common case writes nothing and burns no identity. */
static const char SQL_DEST_ADD[] =
    "WITH f AS (SELECT id FROM mqs_dest WHERE kind = $1 AND name = $2), "
    "i AS (INSERT INTO mqs_dest (kind, name) SELECT $1, $2 "
    "WHERE NOT EXISTS (SELECT 1 FROM f) "
    "ON CONFLICT (kind, name) DO NOTHING RETURNING id) "
    "SELECT id FROM f UNION ALL SELECT id FROM i";

static int pg_dest_resolve(mqs_be_conn *c, mqs_kind kind, const char *name,
                           int create, int64_t *dest_id)
{
    const char *what = create ? "destination lookup/insert (mqs_dest)"
                              : "destination lookup (mqs_dest)";
    const Oid types[2] = {PG_OID_INT2, PG_OID_TEXT};
    const char *vals[2] = {kind == MQS_TOPIC ? "1" : "0", name};
    int found = 0;
    int rc = pg_run_id(c, what, create ? SQL_DEST_ADD : SQL_DEST_GET, 2,
                       types, vals, dest_id, &found);
    /* A concurrent creator won the race after our snapshot: read it now. */
    if (!rc && !found && create)
        rc = pg_run_id(c, what, SQL_DEST_GET, 2, types, vals, dest_id, &found);
    if (!rc && !found) {
        pg_set_err(c, "postgresql %s: %s '%s' does not exist", c->masked,
                   kind == MQS_TOPIC ? "topic" : "queue", name);
        rc = MQS_ENOTFOUND;
    }
    return rc;
}

static const char SQL_SUB_GET[] =
    "SELECT id FROM mqs_sub WHERE dest_id = $1 AND name = $2";

static const char SQL_SUB_ADD[] =
    "WITH f AS (SELECT id FROM mqs_sub WHERE dest_id = $1 AND name = $2), "
    "i AS (INSERT INTO mqs_sub (dest_id, name, created_ms) "
    "SELECT $1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::int8 "
    "WHERE NOT EXISTS (SELECT 1 FROM f) "
    "ON CONFLICT (dest_id, name) DO NOTHING RETURNING id) "
    "SELECT id FROM f UNION ALL SELECT id FROM i";

static int pg_sub_create(mqs_be_conn *c, int64_t topic_id, const char *name,
                         int64_t *sub_id)
{
    const char *what = "subscription create (mqs_sub)";
    char t[24];
    snprintf(t, sizeof t, "%lld", (long long)topic_id);
    const Oid types[2] = {PG_OID_INT8, PG_OID_TEXT};
    const char *vals[2] = {t, name};
    int found = 0;
    int rc = pg_run_id(c, what, SQL_SUB_ADD, 2, types, vals, sub_id, &found);
    if (!rc && !found)
        rc = pg_run_id(c, what, SQL_SUB_GET, 2, types, vals, sub_id, &found);
    if (!rc && !found) {
        pg_set_err(c, "postgresql %s: %s: subscription '%s' vanished while "
                      "being created; retry",
                   c->masked, what, name);
        rc = MQS_EBUSY;
    }
    return rc;
}

static int pg_sub_lookup(mqs_be_conn *c, const char *topic, const char *name,
                         int64_t *sub_id)
{
    const char *what = "subscription lookup (mqs_sub)";
    const Oid types[2] = {PG_OID_TEXT, PG_OID_TEXT};
    const char *vals[2] = {topic, name};
    int found = 0;
    int rc = pg_run_id(c, what,
                       "SELECT s.id FROM mqs_sub s JOIN mqs_dest d "
                       "ON d.id = s.dest_id WHERE d.kind = 1 AND d.name = $1 "
                       "AND s.name = $2",
                       2, types, vals, sub_id, &found);
    if (!rc && !found) {
        pg_set_err(c,
                   "postgresql %s: no subscription '%s' on topic '%s'",
                   c->masked, name, topic);
        rc = MQS_ENOTFOUND;
    }
    return rc;
}

/* The subscription row goes first: its lock makes concurrent inserts that
 * copied it finish, and the next statements see their pending rows. Then
 * the messages are locked (see the file comment) before the pending rows go
 * and the messages nobody else holds with them. */
static int pg_sub_remove(mqs_be_conn *c, int64_t sub_id)
{
    char s[24];
    snprintf(s, sizeof s, "%lld", (long long)sub_id);
    const Oid types[1] = {PG_OID_INT8};
    const char *vals[1] = {s};
    const pg_stmt st[3] = {
        {"DELETE FROM mqs_sub WHERE id = $1", 1, types, vals, NULL, NULL},
        {"SELECT count(*) FROM (SELECT 1 FROM mqs_msg WHERE kind = 1 AND id IN "
         "(SELECT msg_id FROM mqs_pending WHERE sub_id = $1) "
         "ORDER BY id FOR NO KEY UPDATE) l",
         1, types, vals, NULL, NULL},
        {"WITH d AS (DELETE FROM mqs_pending WHERE sub_id = $1 "
         "RETURNING msg_id) "
         "DELETE FROM mqs_msg m WHERE m.kind = 1 "
         "AND m.id IN (SELECT msg_id FROM d) "
         "AND NOT EXISTS (SELECT 1 FROM mqs_pending p "
         "WHERE p.msg_id = m.id AND p.sub_id <> $1)",
         1, types, vals, NULL, NULL},
    };
    return pg_run(c, "subscription remove (mqs_sub, mqs_pending, mqs_msg)", st,
                  3, NULL);
}

static int pg_purge(mqs_be_conn *c, int64_t dest_id, uint64_t *removed)
{
    const char *what = "purge (mqs_msg, mqs_pending)";
    char d[24];
    snprintf(d, sizeof d, "%lld", (long long)dest_id);
    const Oid types[1] = {PG_OID_INT8};
    const char *vals[1] = {d};
    /* A queue message counts once, a topic message once per pending row. */
    const char *sql =
        dest_id ? "WITH p AS (DELETE FROM mqs_pending WHERE sub_id IN "
                  "(SELECT id FROM mqs_sub WHERE dest_id = $1) RETURNING 1), "
                  "m AS (DELETE FROM mqs_msg WHERE dest_id = $1 "
                  "RETURNING kind) "
                  "SELECT (SELECT count(*) FROM p) + "
                  "(SELECT count(*) FROM m WHERE kind = 0)"
                : "WITH p AS (DELETE FROM mqs_pending RETURNING 1), "
                  "m AS (DELETE FROM mqs_msg RETURNING kind) "
                  "SELECT (SELECT count(*) FROM p) + "
                  "(SELECT count(*) FROM m WHERE kind = 0)";
    int64_t n = 0;
    int found = 0;
    int rc = pg_run_id(c, what, sql, dest_id ? 1 : 0, types, vals, &n, &found);
    if (!rc && removed)
        *removed = (uint64_t)n;
    return rc;
}

/* ---------------------------------------------------------------------------
 * Messages
 * ------------------------------------------------------------------------- */
/* Queue messages only: nothing to filter or copy. */
static const char SQL_INS_QUEUE[] =
    "INSERT INTO mqs_msg (dest_id, kind, priority, expires_ms, enqueued_ms, "
    "headers, body) "
    "SELECT * FROM unnest($1::int8[], $2::int2[], $3::int2[], $4::int8[], "
    "$5::int8[], $6::bytea[], $7::bytea[]) "
    "RETURNING id, dest_id, priority";

/* With topic messages: those whose topic has no subscription are not
 * stored; the others get one pending row per subscription. $8 = the batch's
 * topic ids. The filter stays a hashed subplan (an OR, no join), so rows are
 * inserted, and ids drawn, in input order. */
static const char SQL_INS_MIXED[] =
    "WITH s AS (SELECT id, dest_id FROM mqs_sub WHERE dest_id = ANY ($8) "
    "FOR KEY SHARE), "
    "m AS (INSERT INTO mqs_msg (dest_id, kind, priority, expires_ms, "
    "enqueued_ms, headers, body) "
    "SELECT u.* FROM unnest($1::int8[], $2::int2[], $3::int2[], $4::int8[], "
    "$5::int8[], $6::bytea[], $7::bytea[]) AS u(dest_id, kind, priority, "
    "expires_ms, enqueued_ms, headers, body) "
    "WHERE u.kind = 0 OR u.dest_id IN (SELECT s.dest_id FROM s) "
    "RETURNING id, dest_id, kind, priority), "
    "p AS (INSERT INTO mqs_pending (sub_id, msg_id, priority) "
    "SELECT s.id, m.id, m.priority FROM m JOIN s ON s.dest_id = m.dest_id "
    "WHERE m.kind = 1) "
    "SELECT id, dest_id, priority FROM m";

/* Ids come from a sequence, drawn when a row is inserted, not when it
 * commits: two writers could commit ids out of order, and a reader that
 * has seen id 11 would never look back for 10. Inserting transactions
 * therefore take turns on one transaction-level advisory lock (per
 * database and schema), held to commit; with one writer per store (group
 * commit) it is never contended. An advisory lock, not a row lock: it
 * writes no WAL and dirties no page. Every node of a cluster must use the
 * same kind (same ABI major). */
static const char SQL_ORDER_LOCK[] =
    "SELECT 1 FROM pg_catalog.pg_advisory_xact_lock("
    "pg_catalog.hashtextextended('mqstore-order:' || "
    "pg_catalog.current_database() || ':' || pg_catalog.current_schema(), 0))";

static int pg_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int pg_find_i64(const int64_t *v, size_t n, int64_t x)
{
    return n && bsearch(&x, v, n, sizeof *v, pg_cmp_i64) != NULL;
}

/* What an insert's result is checked against, once it came. */
typedef struct pg_ins_ctx {
    mqs_be_msg *m; /* the core keeps it until commit (backend.h) */
    size_t n, ntopics;
    int64_t topics[]; /* sorted, distinct */
} pg_ins_ctx;

/* Rows come back in insert order. A topic's messages are all stored or
 * all dropped (it has a subscription or not), so walking the input in
 * order pairs every row with its message; the checks catch a server that
 * reordered rows. */
static int pg_insert_done(mqs_be_conn *c, PGresult *r, void *ctx)
{
    const char *what = "message insert (mqs_msg, mqs_pending)";
    pg_ins_ctx *x = ctx;
    mqs_be_msg *m = x->m;
    const int64_t *topics = x->topics;
    size_t n = x->n, ntopics = x->ntopics;
    size_t nrows = (size_t)PQntuples(r);
    int64_t *stored = malloc((ntopics ? ntopics : 1) * sizeof *stored);
    size_t nstored = 0;
    int rc = 0;
    if (!stored) {
        pg_set_err(c, "postgresql %s: %s: out of memory reading the ids",
                   c->masked, what);
        return MQS_ENOMEM;
    }
    for (size_t j = 0; j < nrows; j++) {
        int64_t d = 0;
        if (pg_get_int(r, (int)j, 1, &d)) {
            free(stored);
            return pg_bad_result(c, what);
        }
        if (pg_find_i64(topics, ntopics, d) &&
            (nstored == 0 || stored[nstored - 1] != d) &&
            !pg_find_i64(stored, nstored, d)) {
            stored[nstored++] = d;
            qsort(stored, nstored, sizeof *stored, pg_cmp_i64);
        }
    }
    size_t j = 0;
    int64_t prev = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        int keep = m[i].kind != MQS_TOPIC ||
                   pg_find_i64(stored, nstored, m[i].dest_id);
        if (!keep) {
            m[i].id = 0;
            continue;
        }
        int64_t id = 0, d = 0, p = 0;
        if (j >= nrows || pg_get_int(r, (int)j, 0, &id) ||
            pg_get_int(r, (int)j, 1, &d) || pg_get_int(r, (int)j, 2, &p) ||
            d != m[i].dest_id || p != m[i].priority || id <= prev) {
            rc = -1;
            break;
        }
        m[i].id = prev = id;
        j++;
    }
    free(stored);
    if (rc || j != nrows) {
        pg_set_err(c,
                   "postgresql %s: %s: the rows returned do not match the "
                   "messages sent (order or count)",
                   c->masked, what);
        return MQS_EIO;
    }
    return 0;
}

/* Queue the insert of m[0..n) (one chunk) as one statement, for the
 * transaction's next round trip (normally its COMMIT's). */
static int pg_insert_chunk(mqs_be_conn *c, mqs_be_msg *m, size_t n)
{
    const char *what = "message insert (mqs_msg, mqs_pending)";
    pg_buf a[8] = {{0}};
    size_t ntopics = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++)
        if (m[i].kind == MQS_TOPIC)
            ntopics++;
    pg_ins_ctx *x = malloc(sizeof *x + (ntopics ? ntopics : 1) * sizeof(int64_t));
    if (!x)
        goto oom;
    x->m = m;
    x->n = n;
    if (ntopics) {
        int64_t *topics = x->topics;
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (m[i].kind == MQS_TOPIC)
                topics[k++] = m[i].dest_id;
        qsort(topics, ntopics, sizeof *topics, pg_cmp_i64);
        size_t u = 0;
        for (size_t i = 0; i < ntopics; i++)
            if (u == 0 || topics[u - 1] != topics[i])
                topics[u++] = topics[i];
        ntopics = u;
    }
    x->ntopics = ntopics;

    int hnull = 0, bnull = 0;
    for (size_t i = 0; i < n; i++) {
        hnull |= m[i].headers_len == 0;
        bnull |= m[i].body_len == 0;
    }
    pg_arr_begin(&a[0], PG_OID_INT8, n, 0);
    pg_arr_begin(&a[1], PG_OID_INT2, n, 0);
    pg_arr_begin(&a[2], PG_OID_INT2, n, 0);
    pg_arr_begin(&a[3], PG_OID_INT8, n, 0);
    pg_arr_begin(&a[4], PG_OID_INT8, n, 0);
    pg_arr_begin(&a[5], PG_OID_BYTEA, n, hnull);
    pg_arr_begin(&a[6], PG_OID_BYTEA, n, bnull);
    for (size_t i = 0; i < n; i++) {
        pg_arr_i64(&a[0], m[i].dest_id);
        pg_arr_i16(&a[1], m[i].kind == MQS_TOPIC ? 1 : 0);
        pg_arr_i16(&a[2], m[i].priority);
        pg_arr_i64(&a[3], m[i].expires_ms);
        pg_arr_i64(&a[4], m[i].enqueued_ms);
        pg_arr_bytes(&a[5], m[i].headers, m[i].headers_len);
        pg_arr_bytes(&a[6], m[i].body, m[i].body_len);
    }
    pg_arr_begin(&a[7], PG_OID_INT8, ntopics, 0);
    for (size_t i = 0; i < ntopics; i++)
        pg_arr_i64(&a[7], x->topics[i]);
    for (int k = 0; k < 8; k++)
        if (a[k].oom || a[k].len > INT32_MAX)
            goto oom;

    const Oid types[8] = {PG_OID_INT8_ARR, PG_OID_INT2_ARR, PG_OID_INT2_ARR,
                          PG_OID_INT8_ARR, PG_OID_INT8_ARR, PG_OID_BYTEA_ARR,
                          PG_OID_BYTEA_ARR, PG_OID_INT8_ARR};
    const char *vals[8];
    int lens[8], fmts[8];
    for (int k = 0; k < 8; k++) {
        vals[k] = a[k].p;
        lens[k] = (int)a[k].len;
        fmts[k] = 1;
    }
    if (!c->order_locked) {
        const pg_stmt lock = {SQL_ORDER_LOCK, 0, NULL, NULL, NULL, NULL};
        if ((rc = pg_defer(c, "taking the insert turn (mqs_meta)", &lock,
                           NULL, NULL)))
            goto done_x;
        c->order_locked = 1;
    }
    const pg_stmt ins = {ntopics ? SQL_INS_MIXED : SQL_INS_QUEUE,
                         ntopics ? 8 : 7, types, vals, lens, fmts};
    rc = pg_defer(c, what, &ins, pg_insert_done, x);
    x = NULL; /* owned by the queue now */
    goto done;

oom:
    pg_set_err(c, "postgresql %s: %s: out of memory encoding %zu messages",
               c->masked, what, n);
    rc = MQS_ENOMEM;
done_x:
    free(x);
done:
    for (int k = 0; k < 8; k++)
        free(a[k].p);
    return rc;
}

static int pg_msg_insert(mqs_be_conn *c, mqs_be_msg *m, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t hb = 0, bb = 0, k = i;
        /* At least one message per chunk; bytea[] parameters stay small. */
        do {
            hb += m[k].headers_len;
            bb += m[k].body_len;
            k++;
        } while (k < n && hb + m[k].headers_len <= PG_CHUNK_BYTES &&
                 bb + m[k].body_len <= PG_CHUNK_BYTES &&
                 k - i < (1u << 20));
        int rc = pg_insert_chunk(c, m + i, k - i);
        if (rc)
            return rc;
        i = k;
    }
    return 0;
}

/* Lock the topic messages ($2), remove the pending rows ($1,$2), remove the
 * messages left without one (see the file comment). */
static const char SQL_ACK_LOCK[] =
    "SELECT count(*) FROM (SELECT 1 FROM mqs_msg WHERE id = ANY ($1) "
    "AND kind = 1 ORDER BY id FOR NO KEY UPDATE) l";
static const char SQL_ACK_SUB[] =
    "WITH u AS (SELECT * FROM unnest($1::int8[], $2::int8[]) AS u(sub_id, "
    "msg_id)), "
    "d AS (DELETE FROM mqs_pending p USING u WHERE p.sub_id = u.sub_id "
    "AND p.msg_id = u.msg_id RETURNING p.msg_id) "
    "DELETE FROM mqs_msg m WHERE m.kind = 1 "
    "AND m.id IN (SELECT msg_id FROM d) "
    "AND NOT EXISTS (SELECT 1 FROM mqs_pending p WHERE p.msg_id = m.id "
    "AND NOT EXISTS (SELECT 1 FROM u WHERE u.sub_id = p.sub_id "
    "AND u.msg_id = p.msg_id))";
static const char SQL_ACK_QUEUE[] =
    "DELETE FROM mqs_msg WHERE id = ANY ($1) AND kind = 0";

/* Queued for the transaction's next round trip (normally its COMMIT's). */
static int pg_msg_ack(mqs_be_conn *c, const mqs_be_ref *r, size_t n)
{
    const char *what = "ack (mqs_msg, mqs_pending)";
    pg_buf q = {0}, ps = {0}, pm = {0};
    size_t nq = 0, np = 0;
    for (size_t i = 0; i < n; i++) {
        if (r[i].sub_id)
            np++;
        else
            nq++;
    }
    pg_arr_begin(&q, PG_OID_INT8, nq, 0);
    pg_arr_begin(&ps, PG_OID_INT8, np, 0);
    pg_arr_begin(&pm, PG_OID_INT8, np, 0);
    for (size_t i = 0; i < n; i++) {
        if (r[i].sub_id) {
            pg_arr_i64(&ps, r[i].sub_id);
            pg_arr_i64(&pm, r[i].id);
        } else {
            pg_arr_i64(&q, r[i].id);
        }
    }
    int rc;
    if (q.oom || ps.oom || pm.oom) {
        pg_set_err(c, "postgresql %s: %s: out of memory", c->masked, what);
        rc = MQS_ENOMEM;
    } else {
        const Oid t1[1] = {PG_OID_INT8_ARR};
        const Oid t2[2] = {PG_OID_INT8_ARR, PG_OID_INT8_ARR};
        const char *vq[1] = {q.p};
        const char *vm[1] = {pm.p};
        const char *vp[2] = {ps.p, pm.p};
        const int lq[1] = {(int)q.len}, lm[1] = {(int)pm.len};
        const int lp[2] = {(int)ps.len, (int)pm.len};
        const int f[2] = {1, 1};
        pg_stmt st[3];
        int k = 0;
        if (nq)
            st[k++] = (pg_stmt){SQL_ACK_QUEUE, 1, t1, vq, lq, f};
        if (np) {
            st[k++] = (pg_stmt){SQL_ACK_LOCK, 1, t1, vm, lm, f};
            st[k++] = (pg_stmt){SQL_ACK_SUB, 2, t2, vp, lp, f};
        }
        rc = 0;
        for (int i = 0; i < k && !rc; i++)
            rc = pg_defer(c, what, &st[i], NULL, NULL);
    }
    free(q.p);
    free(ps.p);
    free(pm.p);
    return rc;
}

static int pg_msg_nack(mqs_be_conn *c, const mqs_be_ref *r)
{
    char id[24], sub[24];
    snprintf(id, sizeof id, "%lld", (long long)r->id);
    snprintf(sub, sizeof sub, "%lld", (long long)r->sub_id);
    const Oid types[2] = {PG_OID_INT8, PG_OID_INT8};
    const char *vals[2] = {id, sub};
    const pg_stmt q = {"UPDATE mqs_msg SET redeliveries = redeliveries + 1 "
                       "WHERE id = $1 AND kind = 0",
                       1, types, vals, NULL, NULL};
    const pg_stmt p = {"UPDATE mqs_pending SET redeliveries = redeliveries + "
                       "1 WHERE msg_id = $1 AND sub_id = $2",
                       2, types, vals, NULL, NULL};
    /* Queued for the transaction's next round trip. */
    return r->sub_id ? pg_defer(c, "nack (mqs_pending)", &p, NULL, NULL)
                     : pg_defer(c, "nack (mqs_msg)", &q, NULL, NULL);
}

/* ---------------------------------------------------------------------------
 * Reads
 * ------------------------------------------------------------------------- */
/* Keyset page in two index range scans: the rest of the current priority,
 * then the lower priorities. A single OR condition could not use the index
 * as a range and would rescan every row already read, page after page. */
static const char SQL_PAGE_QUEUE[] =
    "SELECT id, priority, expires_ms, enqueued_ms, redeliveries, headers, "
    "body FROM ("
    "(SELECT * FROM mqs_msg WHERE dest_id = $1 AND priority = $2 "
    "AND id > $3 AND kind = 0 ORDER BY priority DESC, id LIMIT $4) "
    "UNION ALL "
    "(SELECT * FROM mqs_msg WHERE dest_id = $1 AND priority < $2 "
    "AND kind = 0 ORDER BY priority DESC, id LIMIT $4)) x "
    "ORDER BY priority DESC, id LIMIT $4";

static const char SQL_PAGE_SUB[] =
    "SELECT p.msg_id, p.priority, m.expires_ms, m.enqueued_ms, "
    "p.redeliveries, m.headers, m.body FROM ("
    "SELECT * FROM ("
    "(SELECT msg_id, priority, redeliveries FROM mqs_pending WHERE sub_id = $1"
    " AND priority = $2 AND msg_id > $3 ORDER BY priority DESC, msg_id LIMIT $4) "
    "UNION ALL "
    "(SELECT msg_id, priority, redeliveries FROM mqs_pending WHERE sub_id = $1"
    " AND priority < $2 ORDER BY priority DESC, msg_id LIMIT $4)) k "
    "ORDER BY priority DESC, msg_id LIMIT $4) p "
    "JOIN mqs_msg m ON m.id = p.msg_id "
    "ORDER BY p.priority DESC, p.msg_id";

static int pg_row_fill(const PGresult *r, int i, mqs_be_row *row)
{
    int64_t v[5];
    for (int k = 0; k < 5; k++)
        if (pg_get_int(r, i, k, &v[k]))
            return -1;
    row->id = v[0];
    row->priority = (int)v[1];
    row->expires_ms = v[2];
    row->enqueued_ms = v[3];
    row->redeliveries = (int32_t)v[4];
    row->headers = PQgetisnull(r, i, 5) ? NULL : PQgetvalue(r, i, 5);
    row->headers_len = (size_t)PQgetlength(r, i, 5);
    row->body = PQgetisnull(r, i, 6) ? NULL : PQgetvalue(r, i, 6);
    row->body_len = (size_t)PQgetlength(r, i, 6);
    return 0;
}

static int pg_page_query(mqs_be_conn *c, const mqs_be_page *p,
                         const Oid *types, const char *const *vals,
                         mqs_be_row_cb cb, void *ud, const char *what);

static int pg_page_read(mqs_be_conn *c, const mqs_be_page *p, mqs_be_row_cb cb,
                        void *ud)
{
    const char *what = p->sub_id ? "page read (mqs_pending, mqs_msg)"
                                 : "page read (mqs_msg)";
    int rc = pg_unusable(c, what);
    if (rc)
        return rc;
    char a[24], b[8], d[24], l[24];
    snprintf(a, sizeof a, "%lld",
             (long long)(p->sub_id ? p->sub_id : p->dest_id));
    snprintf(b, sizeof b, "%d", p->after_priority);
    snprintf(d, sizeof d, "%lld", (long long)p->after_id);
    snprintf(l, sizeof l, "%llu", (unsigned long long)p->limit);
    const Oid types[4] = {PG_OID_INT8, PG_OID_INT2, PG_OID_INT8, PG_OID_INT8};
    const char *vals[4] = {a, b, d, l};
    /* Statistics taken while the table was empty (an ANALYZE after a
     * drain: reltuples 0) make the planner expect one row and pick a
     * bitmap scan of every id after the key plus a sort: the whole rest of
     * the destination per page, 130 ms a page at 150k messages, quadratic
     * over a drain. The keyset index scan is right at any size, so the
     * read runs in a transaction of its own with bitmap scans off (LOCAL:
     * nothing leaks, through a transaction pooler too). */
    int own_txn = PQtransactionStatus(c->pg) == PQTRANS_IDLE;
    PGresult *pre = PQexec(c->pg, own_txn ? "BEGIN; SET LOCAL enable_bitmapscan = off"
                                          : "SET LOCAL enable_bitmapscan = off");
    if (PQresultStatus(pre) != PGRES_COMMAND_OK) {
        rc = pg_fail(c, pre, what);
        PQclear(pre);
        return rc;
    }
    PQclear(pre);
    rc = pg_page_query(c, p, types, vals, cb, ud, what);
    if (own_txn && PQstatus(c->pg) == CONNECTION_OK) {
        PGresult *end = PQexec(c->pg, rc ? "ROLLBACK" : "COMMIT");
        if (PQresultStatus(end) != PGRES_COMMAND_OK && !rc)
            rc = pg_fail(c, end, what);
        PQclear(end);
    }
    return rc;
}

static int pg_page_query(mqs_be_conn *c, const mqs_be_page *p,
                         const Oid *types, const char *const *vals,
                         mqs_be_row_cb cb, void *ud, const char *what)
{
    int rc = 0;
    /* In a pipeline of its own: libpq (before 17) leaves single-row mode
     * set after the last query of a connection outside a pipeline, and the
     * first statement of the next pipeline then came back as
     * PGRES_SINGLE_TUPLE, failing a lock acquire that had committed. A
     * pipeline's Sync resets it. */
    if (!PQenterPipelineMode(c->pg))
        return pg_fail(c, NULL, what);
    if (!PQsendQueryParams(c->pg, p->sub_id ? SQL_PAGE_SUB : SQL_PAGE_QUEUE, 4,
                           types, vals, NULL, NULL, 1))
        return pg_fail_code(c, NULL, what, MQS_ECONN);
    /* One row in memory at a time, whatever the message sizes. */
    (void)PQsetSingleRowMode(c->pg);
    if (!PQpipelineSync(c->pg))
        return pg_fail_code(c, NULL, what, MQS_ECONN);
    int stop = 0;
    PGresult *r;
    while ((r = PQgetResult(c->pg)) != NULL) {
        ExecStatusType s = PQresultStatus(r);
        if (s == PGRES_SINGLE_TUPLE || s == PGRES_TUPLES_OK) {
            for (int i = 0; i < PQntuples(r) && !stop && !rc; i++) {
                mqs_be_row row;
                if (pg_row_fill(r, i, &row))
                    rc = pg_bad_result(c, what);
                else if (cb(ud, &row))
                    stop = 1; /* the rest is drained below */
            }
        } else if (!rc) {
            rc = pg_fail(c, r, what);
        }
        PQclear(r);
    }
    r = PQgetResult(c->pg);
    int synced = r && PQresultStatus(r) == PGRES_PIPELINE_SYNC;
    PQclear(r);
    if (!synced || !PQexitPipelineMode(c->pg)) {
        c->broken = 1;
        if (!rc)
            rc = pg_fail_code(c, NULL, what, MQS_ECONN);
    }
    if (!rc && PQstatus(c->pg) == CONNECTION_BAD)
        rc = pg_fail(c, NULL, what);
    return rc;
}

static const char SQL_DEST_LIST[] =
    "SELECT d.id, d.kind, d.name, COALESCE(s.id, 0), s.name, "
    "CASE WHEN d.kind = 0 THEN q.n ELSE COALESCE(t.n, 0) END, "
    "CASE WHEN d.kind = 0 THEN q.oldest ELSE COALESCE(t.oldest, 0) END "
    "FROM mqs_dest d "
    "LEFT JOIN mqs_sub s ON s.dest_id = d.id AND d.kind = 1 "
    "LEFT JOIN LATERAL (SELECT count(*) AS n, "
    "COALESCE(min(m.enqueued_ms), 0) AS oldest FROM mqs_msg m "
    "WHERE d.kind = 0 AND m.dest_id = d.id AND m.kind = 0) q ON true "
    "LEFT JOIN LATERAL (SELECT count(*) AS n, "
    "COALESCE(min(m.enqueued_ms), 0) AS oldest FROM mqs_pending p "
    "JOIN mqs_msg m ON m.id = p.msg_id WHERE p.sub_id = s.id) t "
    "ON s.id IS NOT NULL "
    "ORDER BY d.id, COALESCE(s.id, 0)";

/* The same rows without counting (dest_names): two small tables. */
static const char SQL_DEST_NAMES[] =
    "SELECT d.id, d.kind, d.name, COALESCE(s.id, 0), s.name, 0, 0 "
    "FROM mqs_dest d LEFT JOIN mqs_sub s ON s.dest_id = d.id AND d.kind = 1 "
    "ORDER BY d.id, COALESCE(s.id, 0)";

/* The newest rows of mqs_msg, for the producer audit (ABI 2.3): a
 * backward scan of the primary key, limit rows however deep the backlog. */
static int pg_msg_recent(mqs_be_conn *c, size_t limit, mqs_be_header_cb cb,
                         void *ud)
{
    const char *what = "newest messages (mqs_msg)";
    char l[24];
    snprintf(l, sizeof l, "%llu", (unsigned long long)
             (limit > (size_t)INT64_MAX ? (size_t)INT64_MAX : limit));
    const Oid types[1] = {PG_OID_INT8};
    const char *vals[1] = {l};
    PGresult *r;
    int rc = pg_run1(c, what, "SELECT id, headers FROM mqs_msg "
                     "ORDER BY id DESC LIMIT $1", 1, types, vals, &r);
    if (rc)
        return rc;
    int n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        int64_t id;
        if (pg_get_int(r, i, 0, &id)) {
            rc = pg_bad_result(c, what);
            break;
        }
        const void *h = PQgetisnull(r, i, 1) ? NULL : PQgetvalue(r, i, 1);
        if (cb(ud, id, h, h ? (size_t)PQgetlength(r, i, 1) : 0))
            break;
    }
    PQclear(r);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Producer marks (ABI 2.1)
 * ------------------------------------------------------------------------- */
static int pg_mark_put(mqs_be_conn *c, const char *producer, int64_t seq,
                       int64_t now_ms)
{
    char sq[24], now[24];
    snprintf(sq, sizeof sq, "%lld", (long long)seq);
    snprintf(now, sizeof now, "%lld", (long long)now_ms);
    const Oid types[3] = {PG_OID_TEXT, PG_OID_INT8, PG_OID_INT8};
    const char *vals[3] = {producer, sq, now};
    const pg_stmt st = {"INSERT INTO mqs_producer_mark (producer, seq, "
                        "updated_ms) VALUES ($1, $2, $3) ON CONFLICT "
                        "(producer) DO UPDATE SET seq = GREATEST("
                        "mqs_producer_mark.seq, EXCLUDED.seq), "
                        "updated_ms = EXCLUDED.updated_ms",
                        3, types, vals, NULL, NULL};
    /* Queued for the transaction's next round trip, like the acks. */
    return pg_defer(c, "producer mark (mqs_producer_mark)", &st, NULL, NULL);
}

static int pg_mark_list(mqs_be_conn *c, mqs_be_mark_cb cb, void *ud)
{
    const char *what = "producer mark list (mqs_producer_mark)";
    PGresult *r;
    int rc = pg_run1(c, what, "SELECT producer, seq FROM mqs_producer_mark",
                     0, NULL, NULL, &r);
    if (rc)
        return rc;
    int n = PQntuples(r), stop = 0;
    for (int i = 0; i < n && !stop; i++) {
        int64_t seq;
        if (pg_get_int(r, i, 1, &seq)) {
            rc = pg_bad_result(c, what);
            break;
        }
        stop = cb(ud, PQgetvalue(r, i, 0), seq);
    }
    PQclear(r);
    return rc ? rc : stop;
}

static int pg_mark_prune(mqs_be_conn *c, int64_t before_ms, uint64_t *removed)
{
    char b[24];
    snprintf(b, sizeof b, "%lld", (long long)before_ms);
    const Oid types[1] = {PG_OID_INT8};
    const char *vals[1] = {b};
    PGresult *r;
    int rc = pg_run1(c, "producer mark prune (mqs_producer_mark)",
                     "DELETE FROM mqs_producer_mark WHERE updated_ms < $1", 1,
                     types, vals, &r);
    if (rc)
        return rc;
    if (removed)
        *removed = (uint64_t)strtoull(PQcmdTuples(r), NULL, 10);
    PQclear(r);
    return 0;
}

/* Rows of SQL_DEST_LIST or SQL_DEST_NAMES (same columns) to cb. */
static int pg_dest_rows(mqs_be_conn *c, const char *sql, mqs_be_dest_cb cb,
                        void *ud)
{
    const char *what = "destination list (mqs_dest, mqs_sub)";
    PGresult *r;
    int rc = pg_run1(c, what, sql, 0, NULL, NULL, &r);
    if (rc)
        return rc;
    int n = PQntuples(r);
    for (int i = 0; i < n; i++) {
        int64_t id, kind, sub, pending, oldest;
        if (pg_get_int(r, i, 0, &id) || pg_get_int(r, i, 1, &kind) ||
            pg_get_int(r, i, 3, &sub) || pg_get_int(r, i, 5, &pending) ||
            pg_get_int(r, i, 6, &oldest)) {
            rc = pg_bad_result(c, what);
            break;
        }
        /* Binary text values are NUL-terminated by libpq. */
        mqs_be_dest dd = {
            .dest_id = id,
            .kind = kind ? MQS_TOPIC : MQS_QUEUE,
            .name = PQgetvalue(r, i, 2),
            .sub_id = sub,
            .sub_name = PQgetisnull(r, i, 4) ? NULL : PQgetvalue(r, i, 4),
            .pending = (uint64_t)pending,
            .oldest_ms = oldest,
        };
        if (cb(ud, &dd))
            break;
    }
    PQclear(r);
    return rc;
}

static int pg_dest_list(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud)
{
    return pg_dest_rows(c, SQL_DEST_LIST, cb, ud);
}

static int pg_dest_names(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud)
{
    return pg_dest_rows(c, SQL_DEST_NAMES, cb, ud);
}

/* VACUUM cannot run in a transaction block or a pipeline: a plain simple-
 * protocol statement of its own. A table this role does not own is
 * skipped by the server with a WARNING, not an error. */
static int pg_vacuum(mqs_be_conn *c, char *msg, size_t msglen)
{
    static const char sql[] = "VACUUM (ANALYZE) mqs_msg, mqs_pending";
    int rc = pg_unusable(c, "VACUUM");
    if (rc)
        return rc;
    PGresult *r = PQexec(c->pg, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        rc = pg_fail(c, r, sql);
    else
        snprintf(msg, msglen, "postgresql: %s", sql);
    PQclear(r);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Exclusive lock (ABI 1.1)
 *
 * One row per cluster in mqs_lock (schema 002_lock.sql). Every time is the
 * server's clock_timestamp(); a node's clock is never used.
 *
 * Crash detector: a session-level advisory lock on the core's dedicated lock
 * connection, keyed by a 64-bit hash of the database and cluster names. The
 * row records the pid of the session holding it and the server instance
 * (epoch, see the schema file); whether a pid holds the lock is always
 * asked of the server (pg_locks), never assumed.
 *
 * A frozen master must not keep a standby out with row locks: every write
 * transaction sets idle_in_transaction_session_timeout = lease_ms (SET
 * LOCAL), so the server ends a session stuck inside one about a lease after
 * its last statement, and acquire waits at most PG_ACQUIRE_WAIT_MS for the
 * row lock.
 *
 * Behind a transaction pooler (pgbouncer pool_mode=transaction) an advisory
 * lock stays with whichever server connection ran the statement: it neither
 * follows the client nor ends with it. session_lock detects a pooler (the
 * backend pid libpq got at connect is not pg_backend_pid()) and refuses with
 * MQS_EINVAL: use crash_detect=off there (takeover after a crash then takes
 * up to a lease). Everything else here is pooler-safe. A session pooler
 * (pgbouncer pool_mode=session) pins one server session per client and
 * frees its advisory locks when the client goes (DISCARD ALL), so the
 * detector works there once the URI says pooler=session: the lock is taken
 * in the pinned session, and each statement checks it still runs there.
 * ------------------------------------------------------------------------- */

/* How long acquire waits behind a row lock on mqs_lock (a write of the
 * holder: milliseconds, or a frozen holder: until the server ends it). */
#define PG_ACQUIRE_WAIT_MS 200
/* A standby waiting on the session lock tries it this often (waits up to
 * PG_TRY_WAIT_MS_MAX; longer ones block in the server). */
#define PG_TRY_EVERY_MS 25
#define PG_TRY_WAIT_MS_MAX 10000
/* How long the alive check of a held session lock may go unanswered before
 * session_lock reports it unconfirmed for now (MQS_ETIMEDOUT: renewals stop
 * recording the session); the answer is collected on the next call, so a
 * slow path never drops a lock that may well still be held. */
#define PG_ALIVE_WAIT_MS 1000
/* How long a session lock statement may take beyond its lock wait before
 * the connection is given up as stalled (its outcome is unknown: only
 * closing the connection settles it). */
#define PG_REPLY_WAIT_MS 2000

/* The advisory lock key of cluster $1: per database and cluster. */
#define PG_LOCK_KEY                                                            \
    "pg_catalog.hashtextextended('mqstore:' || "                               \
    "pg_catalog.current_database() || ':' || $1::text, 0)"

/* Does backend `pid` hold the session lock of cluster $1 right now?
 * pg_advisory_lock(int8) splits the key into classid (high 32 bits) and
 * objid (low 32 bits), objsubid 1. */
#define PG_HOLDS(pid)                                                          \
    "EXISTS (SELECT 1 FROM pg_catalog.pg_locks l, (SELECT " PG_LOCK_KEY        \
    " AS k) h WHERE l.locktype = 'advisory' AND l.database = (SELECT d.oid "   \
    "FROM pg_catalog.pg_database d WHERE d.datname = "                         \
    "pg_catalog.current_database()) AND l.classid::int8 = (h.k >> 32) & "      \
    "4294967295 AND l.objid::int8 = h.k & 4294967295 AND l.objsubid = 1 AND "  \
    "l.granted AND l.pid = " pid ")"

/* The server instance (see 002_lock.sql). */
#define PG_EPOCH "pg_catalog.pg_postmaster_start_time()"
#define PG_RESET "pg_catalog.pg_stat_get_bgwriter_stat_reset_time()"
#define PG_SAME_EPOCH                                                          \
    "(m.session_epoch = " PG_EPOCH " AND m.session_reset IS NOT DISTINCT "     \
    "FROM " PG_RESET ")"

/* $5 = this node's session pid (or NULL): recorded, with the epoch, only
 * when the server confirms that session holds the lock now. */
#define PG_FROM_SESSION                                                        \
    " FROM (SELECT pg_catalog.clock_timestamp() AS now, CASE WHEN $5::int4 "   \
    "IS NULL THEN false ELSE " PG_HOLDS("$5") " END AS held) s "
#define PG_SET_SESSION                                                         \
    "session_id = CASE WHEN s.held THEN $5::int4 END, "                        \
    "session_epoch = CASE WHEN s.held THEN " PG_EPOCH " END, "                 \
    "session_reset = CASE WHEN s.held THEN " PG_RESET " END"
#define PG_MS(iv) "pg_catalog.ceil(extract(epoch FROM " iv ") * 1000)::int8"
#define PG_MS_DOWN(iv)                                                         \
    "pg_catalog.floor(extract(epoch FROM " iv ") * 1000)::int8"

/* holder, token, lease left, held for, session armed. */
static const char SQL_LOCK_STATE[] =
    "SELECT m.holder, m.token, " PG_MS("m.lease_until - t.now") ", "
    PG_MS_DOWN("t.now - m.acquired") ", "
    "COALESCE(m.session_id IS NOT NULL AND " PG_SAME_EPOCH ", false) "
    "FROM mqs_lock m, (SELECT pg_catalog.clock_timestamp() AS now) t "
    "WHERE m.cluster = $1";

/* The lock is takeable (see lock_acquire in backend.h): free, expired, or
 * its recorded session gone under the same epoch ($4 = holder_gone). */
#define PG_TAKEABLE                                                            \
    "(m.holder IS NULL OR m.lease_until IS NULL OR m.lease_until <= s.now OR " \
    "($4::bool AND m.session_id IS NOT NULL AND " PG_SAME_EPOCH " AND NOT "    \
    PG_HOLDS("m.session_id") "))"

/* $1 cluster, $2 node, $3 lease ms, $4 holder_gone, $5 session pid. A wait
 * for the row lock re-checks the condition on the row as committed (READ
 * COMMITTED), against a `now` read before the wait: never late. */
static const char SQL_LOCK_TAKE[] =
    "UPDATE mqs_lock m SET holder = $2, token = m.token + 1, "
    "lease_until = s.now + $3::float8 * interval '1 millisecond', "
    "acquired = s.now, " PG_SET_SESSION PG_FROM_SESSION
    "WHERE m.cluster = $1 AND " PG_TAKEABLE " RETURNING m.token";

/* The fence's exclusive side, taken only when the lock is takeable: it
 * waits for the old holder's fenced transactions to end, and none of its
 * new ones can start its guard before this transaction commits. A standby
 * polling a live master takes nothing here, so waits for nothing and
 * leaves no "lock timeout" line in the server's log. */
static const char SQL_LOCK_TAKE_FENCE[] =
    "SELECT CASE WHEN EXISTS (SELECT 1 FROM mqs_lock m, (SELECT "
    "pg_catalog.clock_timestamp() AS now) s WHERE m.cluster = $1 AND "
    PG_TAKEABLE ") THEN (SELECT true FROM pg_catalog.pg_advisory_xact_lock("
    PG_FENCE_KEY ")) ELSE false END";

/* Creates the row only when it is missing: a poll writes nothing. */
static const char SQL_LOCK_CREATE[] =
    "INSERT INTO mqs_lock (cluster) SELECT $1 WHERE NOT EXISTS (SELECT 1 "
    "FROM mqs_lock WHERE cluster = $1) ON CONFLICT (cluster) DO NOTHING";

/* $1 cluster, $2 node, $3 lease ms, $4 token, $5 session pid. */
static const char SQL_LOCK_RENEW[] =
    "UPDATE mqs_lock m SET "
    "lease_until = s.now + $3::float8 * interval '1 millisecond', "
    PG_SET_SESSION PG_FROM_SESSION
    "WHERE m.cluster = $1 AND m.holder = $2 AND m.token = $4 "
    "RETURNING m.token, " PG_MS("m.lease_until - s.now") ", "
    PG_MS_DOWN("s.now - m.acquired") ", m.session_id IS NOT NULL";

static const char SQL_LOCK_CLEAR[] =
    "UPDATE mqs_lock SET holder = NULL, lease_until = NULL, acquired = NULL, "
    "session_id = NULL, session_epoch = NULL, session_reset = NULL "
    "WHERE cluster = $1";

/* Session lock statements; $1 cluster, $2 the backend pid libpq got at
 * connect: a pooler shows another one, and then nothing is locked. */
static const char SQL_SESSION_TRY[] =
    "SELECT pg_catalog.pg_backend_pid(), CASE WHEN "
    "pg_catalog.pg_backend_pid() = $2 THEN "
    "pg_catalog.pg_try_advisory_lock(" PG_LOCK_KEY ") END";
/* $3 = lock_timeout, set for this statement's implicit transaction only;
 * OFFSET 0 keeps the subquery (so the setting) ahead of the lock. */
static const char SQL_SESSION_WAIT[] =
    "SELECT pg_catalog.pg_backend_pid(), CASE WHEN "
    "pg_catalog.pg_backend_pid() = $2 THEN (SELECT true FROM "
    "pg_catalog.pg_advisory_lock(" PG_LOCK_KEY ")) END "
    "FROM (SELECT pg_catalog.set_config('lock_timeout', $3, true) "
    "OFFSET 0) s";
static const char SQL_SESSION_ALIVE[] =
    "SELECT pg_catalog.pg_backend_pid() = $2 AND "
    PG_HOLDS("pg_catalog.pg_backend_pid()");
static const char SQL_SESSION_UNLOCK[] =
    "SELECT pg_catalog.pg_advisory_unlock(" PG_LOCK_KEY ")";

/* A lock callback may run on this connection now; what = for messages. */
static int pg_lock_ready(mqs_be_conn *c, const char *what, int want_txn)
{
    int rc = pg_unusable(c, what);
    if (rc)
        return rc;
    if (!!c->in_txn != want_txn) {
        pg_set_err(c, "postgresql %s: %s: called %s a write transaction",
                   c->masked, what, want_txn ? "outside" : "inside");
        return MQS_ESTATE;
    }
    if (PQserverVersion(c->pg) < 110000) {
        pg_set_err(c,
                   "postgresql %s: %s: the exclusive lock needs PostgreSQL "
                   "11 or newer (hashtextextended); the server is version "
                   "%d",
                   c->masked, what, PQserverVersion(c->pg));
        return MQS_ENOTSUP;
    }
    return 0;
}

/* A failed lock statement: a database without schema 2 gets a message
 * that says what to do. */
static int pg_lock_err(mqs_be_conn *c, int rc)
{
    if (pg_is(c->state, "42P01")) {
        pg_set_err(c,
                   "postgresql %s: there is no mqs_lock table: the exclusive "
                   "lock needs schema version 2 (002_lock.sql); run "
                   "`mqstore migrate URI` or open the store with "
                   "migrate=auto (SQLSTATE 42P01)",
                   c->masked);
        return MQS_ESCHEMA;
    }
    return rc;
}

/* Fill st from a SQL_LOCK_STATE result (no row: free, token 0). */
static int pg_lock_state(mqs_be_conn *c, const PGresult *r,
                         mqs_be_lock_state *st, const char *what)
{
    memset(st, 0, sizeof *st);
    if (PQntuples(r) == 0)
        return 0;
    int64_t armed = 0;
    if (PQnfields(r) != 5 || pg_get_int(r, 0, 1, &st->token) ||
        pg_get_int(r, 0, 2, &st->lease_left_ms) ||
        pg_get_int(r, 0, 3, &st->held_ms) || pg_get_int(r, 0, 4, &armed))
        return pg_bad_result(c, what);
    if (!PQgetisnull(r, 0, 0))
        snprintf(st->holder, sizeof st->holder, "%s", PQgetvalue(r, 0, 0));
    else
        st->lease_left_ms = st->held_ms = 0;
    st->session_armed = st->holder[0] && armed;
    return 0;
}

static int pg_lock_read(mqs_be_conn *c, const char *cluster,
                        mqs_be_lock_state *st)
{
    const char *what = "reading the lock (mqs_lock)";
    memset(st, 0, sizeof *st);
    int rc = pg_lock_ready(c, what, 0);
    if (rc)
        return rc;
    const Oid types[1] = {PG_OID_TEXT};
    const char *vals[1] = {cluster};
    PGresult *r;
    if ((rc = pg_run1(c, what, SQL_LOCK_STATE, 1, types, vals, &r)))
        return pg_lock_err(c, rc);
    rc = pg_lock_state(c, r, st, what);
    PQclear(r);
    return rc;
}

static int pg_lock_acquire(mqs_be_conn *c, const mqs_be_lock *l,
                           mqs_be_lock_state *st)
{
    const char *what = "taking the lock (mqs_lock)";
    memset(st, 0, sizeof *st);
    int rc = pg_lock_ready(c, what, 0);
    if (rc)
        return rc;
    char lease[24], sid[16], wait[24];
    snprintf(lease, sizeof lease, "%lld", (long long)l->lease_ms);
    snprintf(sid, sizeof sid, "%lld", (long long)l->session_id);
    snprintf(wait, sizeof wait, "%lld",
             (long long)(l->wait_ms > 0 ? l->wait_ms : PG_ACQUIRE_WAIT_MS));
    const Oid t_wait[1] = {PG_OID_TEXT};
    const char *v_wait[1] = {wait};
    const Oid t_cl[1] = {PG_OID_TEXT};
    const char *v_cl[1] = {l->cluster};
    const Oid t_take[5] = {PG_OID_TEXT, PG_OID_TEXT, PG_OID_INT8, PG_OID_BOOL,
                           PG_OID_INT4};
    const char *v_take[5] = {l->cluster, l->node, lease,
                             l->holder_gone ? "t" : "f",
                             l->session_id > 0 ? sid : NULL};
    /* One round trip, one implicit transaction (the pipeline's). While a
     * live holder's lease stands nothing here locks, waits or writes. */
    const pg_stmt sts[5] = {
        {"SELECT pg_catalog.set_config('lock_timeout', $1, true)", 1, t_wait,
         v_wait, NULL, NULL},
        {SQL_LOCK_CREATE, 1, t_cl, v_cl, NULL, NULL},
        {SQL_LOCK_TAKE_FENCE, 5, t_take, v_take, NULL, NULL},
        {SQL_LOCK_TAKE, 5, t_take, v_take, NULL, NULL},
        {SQL_LOCK_STATE, 1, t_cl, v_cl, NULL, NULL},
    };
    PGresult *res[5];
    rc = pg_run(c, what, sts, 5, res);
    if (rc == MQS_EBUSY && pg_is(c->state, "55P03")) {
        /* The holder has a transaction open on the row: writing now, or
         * frozen inside it until the server ends its session. */
        if (pg_lock_read(c, l->cluster, st) != 0)
            memset(st, 0, sizeof *st);
        pg_set_err(c,
                   "postgresql %s: the lock of cluster '%s' is held by node "
                   "%s (token %lld): a write transaction of the old holder "
                   "was still open after %s ms (a holder frozen inside one "
                   "is ended by the server about lease_ms after its last "
                   "statement)",
                   c->masked, l->cluster, st->holder[0] ? st->holder : "?",
                   (long long)st->token, wait);
        return MQS_EBUSY;
    }
    if (rc)
        return pg_lock_err(c, rc);
    int taken = PQntuples(res[3]) == 1;
    rc = pg_lock_state(c, res[4], st, what);
    for (int i = 0; i < 5; i++)
        PQclear(res[i]);
    if (rc)
        return rc;
    if (!taken) {
        pg_set_err(c,
                   "postgresql %s: the lock of cluster '%s' is held by node "
                   "%s (token %lld, lease %lld ms left, held for %lld ms, "
                   "crash detector %s)",
                   c->masked, l->cluster, st->holder, (long long)st->token,
                   (long long)st->lease_left_ms, (long long)st->held_ms,
                   st->session_armed ? "armed" : "not armed");
        return MQS_EBUSY;
    }
    return 0;
}

/* The renewal matched no row: say who holds the lock now. */
static int pg_lock_fenced(mqs_be_conn *c, const mqs_be_lock *l)
{
    const Oid types[1] = {PG_OID_TEXT};
    const char *vals[1] = {l->cluster};
    PGresult *r = NULL;
    mqs_be_lock_state st;
    if (pg_run1(c, "reading the lock (mqs_lock)", SQL_LOCK_STATE, 1, types,
                vals, &r) != 0 ||
        pg_lock_state(c, r, &st, "reading the lock (mqs_lock)") != 0) {
        char why[sizeof c->err];
        memcpy(why, c->err, sizeof why);
        PQclear(r);
        pg_set_err(c,
                   "postgresql %s: node %s (token %lld) no longer holds the "
                   "lock of cluster '%s' and was fenced (the current holder "
                   "could not be read: %s)",
                   c->masked, l->node, (long long)l->token, l->cluster, why);
        return MQS_EFENCED;
    }
    int found = PQntuples(r) == 1;
    PQclear(r);
    if (!found)
        pg_set_err(c,
                   "postgresql %s: the lock of cluster '%s' has no row any "
                   "more; node %s (token %lld) was fenced",
                   c->masked, l->cluster, l->node, (long long)l->token);
    else if (!st.holder[0])
        pg_set_err(c,
                   "postgresql %s: the lock of cluster '%s' is now free "
                   "(token %lld); node %s (token %lld) was fenced",
                   c->masked, l->cluster, (long long)st.token, l->node,
                   (long long)l->token);
    else
        pg_set_err(c,
                   "postgresql %s: the lock of cluster '%s' is now held by "
                   "%s (token %lld); node %s (token %lld) was fenced",
                   c->masked, l->cluster, st.holder, (long long)st.token,
                   l->node, (long long)l->token);
    return MQS_EFENCED;
}

static int pg_lock_renew(mqs_be_conn *c, const mqs_be_lock *l,
                         mqs_be_lock_state *st)
{
    const char *what = "renewing the lease (mqs_lock)";
    memset(st, 0, sizeof *st);
    /* Its own (implicit) transaction on the lease connection: the one
     * statement that writes the row while a master holds it, once per
     * renew_ms. Fenced writes take no row lock, so it waits for none of
     * them; lock_timeout bounds a wait behind anything else. */
    int rc = pg_lock_ready(c, what, 0);
    if (rc)
        return rc;
    char wait[24], lease[24], token[24], sid[16];
    snprintf(wait, sizeof wait, "%lld",
             (long long)(l->wait_ms > 0 ? l->wait_ms : 1000));
    snprintf(lease, sizeof lease, "%lld", (long long)l->lease_ms);
    snprintf(token, sizeof token, "%lld", (long long)l->token);
    snprintf(sid, sizeof sid, "%lld", (long long)l->session_id);
    const Oid t_wait[1] = {PG_OID_TEXT};
    const char *v_wait[1] = {wait};
    const Oid t_renew[5] = {PG_OID_TEXT, PG_OID_TEXT, PG_OID_INT8,
                            PG_OID_INT8, PG_OID_INT4};
    const char *v_renew[5] = {l->cluster, l->node, lease, token,
                              l->session_id > 0 ? sid : NULL};
    const pg_stmt sts[2] = {
        {"SELECT pg_catalog.set_config('lock_timeout', $1, true)", 1, t_wait,
         v_wait, NULL, NULL},
        {SQL_LOCK_RENEW, 5, t_renew, v_renew, NULL, NULL},
    };
    PGresult *res[2];
    if ((rc = pg_run(c, what, sts, 2, res)))
        return pg_lock_err(c, rc);
    PQclear(res[0]);
    PGresult *r = res[1];
    if (PQntuples(r) != 1) {
        PQclear(r);
        return pg_lock_fenced(c, l);
    }
    int64_t armed = 0;
    if (PQnfields(r) != 4 || pg_get_int(r, 0, 0, &st->token) ||
        pg_get_int(r, 0, 1, &st->lease_left_ms) ||
        pg_get_int(r, 0, 2, &st->held_ms) || pg_get_int(r, 0, 3, &armed)) {
        PQclear(r);
        return pg_bad_result(c, what);
    }
    PQclear(r);
    snprintf(st->holder, sizeof st->holder, "%s", l->node);
    st->session_armed = (int)armed;
    return 0;
}

/* Free the lock in its own (implicit) transaction; node != NULL: only where
 * holder and token match. The token stays. */
static int pg_lock_clear(mqs_be_conn *c, const char *cluster, const char *node,
                         int64_t token)
{
    const char *what = node ? "releasing the lock (mqs_lock)"
                            : "forcing the lock free (mqs_lock)";
    int rc = pg_lock_ready(c, what, 0);
    if (rc)
        return rc;
    char tok[24];
    snprintf(tok, sizeof tok, "%lld", (long long)token);
    const Oid types[3] = {PG_OID_TEXT, PG_OID_TEXT, PG_OID_INT8};
    const char *vals[3] = {cluster, node, tok};
    char sql[sizeof SQL_LOCK_CLEAR + 64];
    snprintf(sql, sizeof sql, "%s%s", SQL_LOCK_CLEAR,
             node ? " AND holder = $2 AND token = $3" : "");
    if (node) { /* the holder itself: its writes have stopped */
        rc = pg_run1(c, what, sql, 3, types, vals, NULL);
        return rc ? pg_lock_err(c, rc) : 0;
    }
    /* Forcing: like a takeover, wait (bounded) for the holder's fenced
     * write transactions, so none commits after the row is cleared. */
    const pg_stmt sts[3] = {
        {"SELECT pg_catalog.set_config('lock_timeout', '5000', true)", 0,
         NULL, NULL, NULL, NULL},
        {"SELECT 1 FROM pg_catalog.pg_advisory_xact_lock(" PG_FENCE_KEY ")",
         1, types, vals, NULL, NULL},
        {sql, 1, types, vals, NULL, NULL},
    };
    rc = pg_run(c, what, sts, 3, NULL);
    return rc ? pg_lock_err(c, rc) : 0;
}

/* Fence without writing. The transaction takes a SHARED transaction-level
 * advisory lock on the cluster's fence key with its BEGIN, and just before
 * its COMMIT a guard statement checks the row (holder, token, lease left
 * by the server's clock); a failed guard aborts the transaction, so the
 * COMMIT sent behind it in the same pipeline rolls back. A takeover (and
 * lock_force) takes the same key EXCLUSIVELY before it updates the row,
 * in the same transaction. See docs/architecture.md for why no takeover
 * can commit between the guard and this COMMIT. Nothing is written: an
 * advisory lock lives in the server's shared memory only. */
static int pg_lock_fence(mqs_be_conn *c, const mqs_be_fence *f)
{
    const char *what = "fencing the write transaction";
    int rc = pg_lock_ready(c, what, 1);
    if (rc)
        return rc;
    if (strlen(f->cluster) >= sizeof c->fence_cluster ||
        strlen(f->node) >= sizeof c->fence_node) {
        pg_set_err(c, "postgresql %s: %s: cluster or node name too long",
                   c->masked, what);
        return MQS_EINVAL;
    }
    snprintf(c->fence_cluster, sizeof c->fence_cluster, "%s", f->cluster);
    snprintf(c->fence_node, sizeof c->fence_node, "%s", f->node);
    c->fence_token = f->token;
    c->fence_margin_ms = f->margin_ms;
    /* The server ends a session idle inside a transaction for about a
     * lease (a master frozen mid-transaction), freeing its fence lock for
     * a standby. */
    int64_t idle = f->lease_ms;
    c->idle_ms = idle < 1 ? 1 : idle > INT32_MAX ? INT32_MAX : idle;
    c->fence_on = 1;
    c->fence_locked = 0;
    return 0;
}

static int pg_lock_release(mqs_be_conn *c, const mqs_be_lock *l)
{
    return pg_lock_clear(c, l->cluster, l->node, l->token);
}

static int pg_lock_force(mqs_be_conn *c, const char *cluster)
{
    return pg_lock_clear(c, cluster, NULL, 0);
}

/* ---- session lock (crash detector) ---- */

static int64_t pg_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Send one statement without waiting for its answer (c->inflight). */
static int pg_send(mqs_be_conn *c, const char *what, const char *sql, int n,
                   const Oid *types, const char *const *vals)
{
    if (!PQsendQueryParams(c->pg, sql, n, types, vals, NULL, NULL, 1))
        return pg_fail_code(c, NULL, what, MQS_ECONN);
    c->inflight = 1;
    return 0;
}

/* Wait up to wait_ms (< 0: no limit) for the answer to the statement in
 * flight. 0: *res is its result, to PQclear(). 1: no answer yet, it stays
 * in flight. Negative: the connection failed. */
static int pg_await(mqs_be_conn *c, const char *what, int64_t wait_ms,
                    PGresult **res)
{
    *res = NULL;
    int64_t end = wait_ms < 0 ? INT64_MAX : pg_mono_ms() + wait_ms;
    for (;;) {
        if (!PQconsumeInput(c->pg)) {
            c->inflight = 0;
            return pg_fail_code(c, NULL, what, MQS_ECONN);
        }
        while (!PQisBusy(c->pg)) {
            PGresult *r = PQgetResult(c->pg);
            if (!r) { /* all of it came */
                c->inflight = 0;
                *res = c->pend;
                c->pend = NULL;
                if (!*res)
                    return pg_fail_code(c, NULL, what, MQS_ECONN);
                return 0;
            }
            if (!c->pend)
                c->pend = r;
            else
                PQclear(r);
        }
        int64_t left = end == INT64_MAX ? 1000 : end - pg_mono_ms();
        if (left <= 0)
            return 1;
        struct pollfd p = {.fd = PQsocket(c->pg), .events = POLLIN};
        if (poll(&p, 1, (int)(left > 1000 ? 1000 : left)) < 0 &&
            errno != EINTR) {
            c->broken = 1;
            pg_set_err(c, "postgresql %s: %s: poll: %s", c->masked, what,
                       strerror(errno));
            return MQS_ECONN;
        }
    }
}

/* Send, then wait up to wait_ms; a statement unanswered by then leaves the
 * connection unusable (its outcome is unknown): MQS_ECONN. The caller
 * PQclear()s *res, which may be an error result. */
static int pg_ask(mqs_be_conn *c, const char *what, const char *sql, int n,
                  const Oid *types, const char *const *vals, int64_t wait_ms,
                  PGresult **res)
{
    *res = NULL;
    int rc = pg_send(c, what, sql, n, types, vals);
    if (!rc)
        rc = pg_await(c, what, wait_ms, res);
    if (rc == 1) {
        c->broken = 1;
        pg_set_err(c,
                   "postgresql %s: %s: no answer from the server within "
                   "%lld ms (a stalled server or network path); the "
                   "connection is given up.",
                   c->masked, what, (long long)wait_ms);
        return MQS_ECONN;
    }
    return rc;
}

static void pg_session_forget(mqs_be_conn *c)
{
    free(c->sess_cluster);
    c->sess_cluster = NULL;
    c->sess_pid = 0;
    c->sess_pending = 0;
}

static int pg_pooled(mqs_be_conn *c)
{
    if (c->session_pooler) {
        pg_set_err(c,
                   "postgresql %s: pooler=session, but this connection's "
                   "statements ran in server session %d and then in %d: the "
                   "pooler does not keep a client on one server session "
                   "(pgbouncer pool_mode=transaction or statement?), so a "
                   "session-level advisory lock cannot tell that a node "
                   "died. Use pool_mode=session, or drop pooler=session and "
                   "add crash_detect=off to the URI.",
                   c->masked, c->pinned_pid, c->pooled_pid);
        return MQS_EINVAL;
    }
    /* The fix first: long messages get cut in logs. */
    pg_set_err(c,
               "postgresql %s: crash_detect=on needs a direct connection to "
               "PostgreSQL: add crash_detect=off to the URI (a standby then "
               "takes over when the lease ends, up to lease_ms after a "
               "crash), or connect directly. This connection goes through a "
               "pooler or proxy (libpq was given backend pid %d at connect, "
               "statements run in backend %d); behind a transaction pooler "
               "(pgbouncer pool_mode=transaction) a session-level advisory "
               "lock stays with a pooled server connection instead of this "
               "client, so it cannot tell that a node died.",
               c->masked, PQbackendPID(c->pg), c->pooled_pid);
    return MQS_EINVAL;
}

/* pooler=session: the server session this client is pinned to. libpq's
 * BackendKeyData pid is the pooler's own, so ask the server. */
static int pg_pinned(mqs_be_conn *c, const char *what)
{
    PGresult *r;
    int rc = pg_ask(c, what, "SELECT pg_catalog.pg_backend_pid()", 0, NULL,
                    NULL, PG_REPLY_WAIT_MS, &r);
    if (rc)
        return rc;
    int64_t pid = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        rc = pg_fail(c, r, what);
    else if (PQntuples(r) != 1 || pg_get_int(r, 0, 0, &pid) || pid <= 0 ||
             pid > INT32_MAX)
        rc = pg_bad_result(c, what);
    PQclear(r);
    if (!rc)
        c->pinned_pid = (int)pid;
    return rc;
}

/* This session holds the lock: is it still alive and holding it? */
static int pg_session_check(mqs_be_conn *c, int64_t wait_ms,
                            int64_t *session_id)
{
    const char *what = "checking the session lock (pg_locks)";
    int rc;
    if (!c->sess_pending) {
        char pid[16];
        snprintf(pid, sizeof pid, "%d", c->sess_pid);
        const Oid types[2] = {PG_OID_TEXT, PG_OID_INT4};
        const char *vals[2] = {c->sess_cluster, pid};
        if ((rc = pg_send(c, what, SQL_SESSION_ALIVE, 2, types, vals))) {
            pg_session_forget(c);
            return rc;
        }
        c->sess_pending = 1;
    }
    PGresult *r;
    int64_t wait = wait_ms > 0 ? wait_ms : PG_ALIVE_WAIT_MS;
    rc = pg_await(c, what, wait, &r);
    if (rc == 1) {
        /* Slow, not known dead: keep the session (and the lock) and ask
         * for the answer again next time. */
        pg_set_err(c,
                   "postgresql %s: %s: no answer within %lld ms (a slow "
                   "server or a stalled network path); the lock stays held "
                   "as far as this node knows, the answer is collected on "
                   "the next call",
                   c->masked, what, (long long)wait);
        return MQS_ETIMEDOUT;
    }
    c->sess_pending = 0;
    if (rc) {
        pg_session_forget(c);
        return rc;
    }
    int64_t ok = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        rc = pg_fail(c, r, what);
    } else if (PQntuples(r) != 1 || pg_get_int(r, 0, 0, &ok)) {
        rc = pg_bad_result(c, what);
    } else if (!ok) {
        pg_set_err(c,
                   "postgresql %s: the session lock of cluster '%s' is no "
                   "longer held by this session (backend %d)",
                   c->masked, c->sess_cluster, c->sess_pid);
        rc = MQS_ECONN;
    }
    PQclear(r);
    if (rc) {
        pg_session_forget(c);
        return rc;
    }
    *session_id = c->sess_pid;
    return 0;
}

static int pg_session_lock(mqs_be_conn *c, const char *cluster, int64_t wait_ms,
                           int64_t *session_id)
{
    const char *what = wait_ms ? "taking the session lock (pg_advisory_lock)"
                               : "taking the session lock "
                                 "(pg_try_advisory_lock)";
    *session_id = 0;
    int rc = pg_unusable(c, what);
    if (rc) {
        pg_session_forget(c);
        return rc;
    }
    if (c->sess_cluster) {
        if (strcmp(c->sess_cluster, cluster) != 0) {
            pg_set_err(c,
                       "postgresql %s: this connection holds the session "
                       "lock of cluster '%s'; it cannot also take that of "
                       "'%s' (one cluster per connection)",
                       c->masked, c->sess_cluster, cluster);
            return MQS_EINVAL;
        }
        return pg_session_check(c, wait_ms, session_id);
    }
    if (c->direct < 0)
        return pg_pooled(c);
    if ((rc = pg_lock_ready(c, what, 0)))
        return rc;
    /* The session the lock must be taken in: this client's own, or with
     * pooler=session the server session the pooler pinned it to. Every
     * statement below checks it still runs there, so a pooler that moves
     * the client between sessions is caught, not trusted. */
    int own = PQbackendPID(c->pg);
    if (c->session_pooler) {
        if (!c->pinned_pid && (rc = pg_pinned(c, what)))
            return rc;
        own = c->pinned_pid;
    }

    char pid[16], timeout[24];
    snprintf(pid, sizeof pid, "%d", own);
    /* lock_timeout 0 = no limit; INT32_MAX ms is its largest value. */
    snprintf(timeout, sizeof timeout, "%lld",
             (long long)(wait_ms < 0 ? 0 : wait_ms > INT32_MAX ? INT32_MAX
                                                             : wait_ms));
    const Oid types[3] = {PG_OID_TEXT, PG_OID_INT4, PG_OID_TEXT};
    const char *vals[3] = {cluster, pid, timeout};
    PGresult *r;
    if (wait_ms > 0 && wait_ms <= PG_TRY_WAIT_MS_MAX) {
        /* A standby's poll: try every PG_TRY_EVERY_MS until wait_ms is
         * over. A lock_timeout would leave an ERROR line in the server's
         * log per poll, and one statement waiting on the lock would hold a
         * snapshot that keeps vacuum from the master's dead rows. */
        int64_t end = pg_mono_ms() + wait_ms;
        for (;;) {
            rc = pg_ask(c, what, SQL_SESSION_TRY, 2, types, vals,
                        PG_REPLY_WAIT_MS, &r);
            if (rc)
                return rc;
            int64_t srv = 0, got = 0;
            int done = PQresultStatus(r) != PGRES_TUPLES_OK ||
                       PQntuples(r) != 1 || pg_get_int(r, 0, 0, &srv) ||
                       pg_get_int(r, 0, 1, &got) || got || srv != own;
            int64_t left = end - pg_mono_ms();
            if (done || left <= 0)
                break; /* r is read below */
            PQclear(r);
            struct timespec ts = {0, (long)(left < PG_TRY_EVERY_MS
                                                ? left
                                                : PG_TRY_EVERY_MS) *
                                         1000000L};
            nanosleep(&ts, NULL);
        }
    } else {
        rc = pg_ask(c, what, wait_ms ? SQL_SESSION_WAIT : SQL_SESSION_TRY,
                    wait_ms ? 3 : 2, types, vals,
                    wait_ms < 0 ? -1 : wait_ms + PG_REPLY_WAIT_MS, &r);
        if (rc)
            return rc;
    }
    int64_t srv = 0, got = 0;
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        rc = pg_fail(c, r, what);
        if (pg_is(c->state, "55P03")) {
            pg_set_err(c,
                       "postgresql %s: the session lock of cluster '%s' is "
                       "held by another session (waited %lld ms)",
                       c->masked, cluster, (long long)wait_ms);
            rc = MQS_EBUSY;
        }
    } else if (PQntuples(r) != 1 || pg_get_int(r, 0, 0, &srv) ||
               pg_get_int(r, 0, 1, &got)) {
        rc = pg_bad_result(c, what);
    } else if (srv != own) {
        c->direct = -1;
        c->pooled_pid = (int)srv;
        rc = pg_pooled(c);
    } else if (!got) {
        c->direct = 1;
        pg_set_err(c,
                   "postgresql %s: the session lock of cluster '%s' is held "
                   "by another session",
                   c->masked, cluster);
        rc = MQS_EBUSY;
    }
    PQclear(r);
    if (rc)
        return rc;
    c->direct = 1;
    c->sess_cluster = strdup(cluster);
    if (!c->sess_cluster) {
        /* Cannot remember it: give the session (and the lock) up. */
        c->broken = 1;
        pg_set_err(c, "postgresql %s: %s: out of memory", c->masked, what);
        return MQS_ENOMEM;
    }
    c->sess_pid = (int)srv;
    *session_id = srv;
    return 0;
}

static int pg_session_unlock(mqs_be_conn *c, const char *cluster)
{
    const char *what = "releasing the session lock (pg_advisory_unlock)";
    if (!c->sess_cluster || strcmp(c->sess_cluster, cluster) != 0)
        return 0;
    int pending = c->sess_pending;
    pg_session_forget(c);
    int rc = pg_unusable(c, what);
    if (rc)
        return rc; /* the server ends the session, and the lock with it */
    PGresult *r = NULL;
    if (pending) {
        rc = pg_await(c, what, PG_REPLY_WAIT_MS, &r);
        PQclear(r);
        if (rc == 1) {
            /* Never answered: only closing the connection frees it. */
            c->broken = 1;
            pg_set_err(c,
                       "postgresql %s: %s: an earlier check is still "
                       "unanswered; close the connection to release it",
                       c->masked, what);
            return MQS_ECONN;
        }
        if (rc)
            return rc;
    }
    const Oid types[1] = {PG_OID_TEXT};
    const char *vals[1] = {cluster};
    if ((rc = pg_ask(c, what, SQL_SESSION_UNLOCK, 1, types, vals,
                     PG_REPLY_WAIT_MS, &r)))
        return rc;
    if (PQresultStatus(r) != PGRES_TUPLES_OK)
        rc = pg_fail(c, r, what);
    PQclear(r);
    return rc;
}

/* ---------------------------------------------------------------------------
 * The table
 * ------------------------------------------------------------------------- */
static const char *const pg_schemes[] = {"postgresql", "postgres", NULL};

static const mqs_backend pg_backend = {
    .magic = MQS_BACKEND_MAGIC,
    .abi_major = MQS_BACKEND_ABI_MAJOR,
    .abi_minor = MQS_BACKEND_ABI_MINOR,
    .struct_size = sizeof(mqs_backend),
    .name = "postgresql",
    .version = PG_MODULE_VERSION,
    .schemes = pg_schemes,
    .migrations = mqs_schema_postgresql,
    .n_migrations = MQS_SCHEMA_POSTGRESQL_COUNT,
    .options = pg_options,
    .n_options = sizeof pg_options / sizeof pg_options[0],
    .conn_open = pg_conn_open,
    .conn_close = pg_conn_close,
    .conn_errmsg = pg_conn_errmsg,
    .conn_max_message = pg_conn_max_message,
    .schema_version = pg_schema_version,
    .schema_apply = pg_schema_apply,
    .txn_begin = pg_txn_begin,
    .txn_commit = pg_txn_commit,
    .txn_rollback = pg_txn_rollback,
    .dest_resolve = pg_dest_resolve,
    .msg_insert = pg_msg_insert,
    .msg_ack = pg_msg_ack,
    .msg_nack = pg_msg_nack,
    .sub_create = pg_sub_create,
    .sub_remove = pg_sub_remove,
    .purge = pg_purge,
    .sub_lookup = pg_sub_lookup,
    .page_read = pg_page_read,
    .dest_list = pg_dest_list,
    .dest_names = pg_dest_names,
    .vacuum = pg_vacuum,
    .lock_acquire = pg_lock_acquire,
    .lock_renew = pg_lock_renew,
    .lock_release = pg_lock_release,
    .lock_read = pg_lock_read,
    .lock_force = pg_lock_force,
    .lock_fence = pg_lock_fence,
    .session_lock = pg_session_lock,
    .session_unlock = pg_session_unlock,
    .mark_put = pg_mark_put,
    .mark_list = pg_mark_list,
    .mark_prune = pg_mark_prune,
    .msg_recent = pg_msg_recent,
};

MQS_BACKEND_EXPORT const mqs_backend *
mqs_backend_entry(void)
{
    return &pg_backend;
}
