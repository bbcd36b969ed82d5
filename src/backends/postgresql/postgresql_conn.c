/*
 * postgresql_conn.c - the PostgreSQL backend's errors (libpq results and
 * SQLSTATEs -> MQS_E*) and its connections (conn_open, conn_close). See
 * postgresql.c for the module's design.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "postgresql_int.h"

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
 * Errors
 * ------------------------------------------------------------------------- */
void pg_set_err(mqs_be_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
}

/* Copy a libpq message without trailing newlines, inner newlines as "; ". */
void pg_oneline(char *dst, size_t size, const char *src)
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

int pg_is(const char *state, const char *code)
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
int pg_fail_code(mqs_be_conn *c, const PGresult *r, const char *what,
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

int pg_fail(mqs_be_conn *c, const PGresult *r, const char *what)
{
    return pg_fail_code(c, r, what, 0);
}

/* The connection cannot take a statement now. */
int pg_unusable(mqs_be_conn *c, const char *what)
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

/* pooler=none|session: mqstore's option, not given to libpq. A bad value:
 * MQS_EINVAL with the message in c. */
static int pg_pooler(mqs_be_conn *c, const char *v)
{
    if (!strcmp(v, "none")) {
        c->session_pooler = 0;
    } else if (!strcmp(v, "session")) {
        c->session_pooler = 1;
    } else {
        size_t len = strlen(v);
        pg_set_err(c,
                   "postgresql %s: bad value '%.*s' for option pooler: "
                   "expected none or session",
                   c->masked, (int)(len < 64 ? len : 64), v);
        return MQS_EINVAL;
    }
    return 0;
}

/* The hosts of u, or with ports != 0 their ports ("" where a host has
 * none), separated by ',' (malloc'd; NULL: out of memory). */
static char *pg_join(const mqs_be_uri *u, int ports)
{
    size_t len = 1;
    for (size_t i = 0; i < u->nhosts; i++) {
        const char *s = ports ? u->hosts[i].port : u->hosts[i].host;
        len += (s ? strlen(s) : 0) + 1;
    }
    char *d = malloc(len);
    size_t k = 0;
    for (size_t i = 0; d && i < u->nhosts; i++) {
        const char *s = ports ? u->hosts[i].port : u->hosts[i].host;
        size_t l = s ? strlen(s) : 0;
        if (i)
            d[k++] = ',';
        memcpy(d + k, s ? s : "", l);
        k += l;
    }
    if (d)
        d[k] = '\0';
    return d;
}

int pg_conn_open(const mqs_be_open_args *a, mqs_be_conn **out,
                 char *err, size_t errlen)
{
    *out = NULL;
    if (!a || !a->parts) {
        snprintf(err, errlen, "postgresql: conn_open: no URI");
        return MQS_EINVAL;
    }
    const mqs_be_uri *u = a->parts;
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
    int rc = 0;
    const char **kw = NULL, **val = NULL;
    char *hosts = NULL, *ports = NULL;
    if (!u->has_authority) {
        pg_set_err(c,
                   "postgresql %s: invalid connection URI: expected "
                   "postgresql://[user[:password]@][host][:port][,...]"
                   "[/dbname][?param=value&...]. Fix the URI (see "
                   "\"Connection URIs\" in the libpq manual).",
                   c->masked);
        rc = MQS_EINVAL;
        goto fail;
    }
    /* The parts as libpq reads a URI: the hosts, and their ports with an
     * empty entry where a host has none (libpq's default port); an empty
     * value (no host: libpq's default socket) is not given. Then each
     * option as its own keyword: a later one overrides an earlier one. */
    size_t cap = 5 + u->nopts + 1 + PG_N_DEFAULTS + 1;
    kw = calloc(cap, sizeof *kw);
    val = calloc(cap, sizeof *val);
    hosts = pg_join(u, 0);
    ports = pg_join(u, 1);
    if (!kw || !val || !hosts || !ports) {
        pg_set_err(c, "postgresql %s: out of memory connecting", c->masked);
        rc = MQS_ENOMEM;
        goto fail;
    }
    char app[64];
    snprintf(app, sizeof app, "mqstore-%s", a->role ? a->role : "client");
    int n = 0;
    kw[n] = "host";
    val[n++] = hosts;
    kw[n] = "port";
    val[n++] = ports;
    kw[n] = "user";
    val[n++] = u->user;
    kw[n] = "password";
    val[n++] = u->password;
    kw[n] = "dbname";
    val[n++] = u->path[0] == '/' ? u->path + 1 : u->path;
    for (size_t i = 0; i < u->nopts; i++) {
        if (!strcmp(u->opts[i].key, "pooler")) {
            if ((rc = pg_pooler(c, u->opts[i].value)))
                goto fail;
        } else {
            kw[n] = u->opts[i].key;
            val[n++] = u->opts[i].value;
        }
    }
    kw[n] = "fallback_application_name";
    val[n++] = app;
    for (size_t i = 0; i < PG_N_DEFAULTS; i++) {
        int set = pg_defaults[i].env && getenv(pg_defaults[i].env);
        for (int j = 0; j < n && !set; j++)
            if (!strcmp(kw[j], pg_defaults[i].key) && val[j] && *val[j])
                set = 1;
        if (!set) {
            kw[n] = pg_defaults[i].key;
            val[n++] = pg_defaults[i].value;
        }
    }
    kw[n] = NULL;
    val[n] = NULL;

    /* libpq reports the server's SQLSTATE of a failed connection only in
     * the verbose message text, and verbosity can only be set on an
     * existing PGconn: start one, set it, then let PQreset() connect for
     * real (keeping libpq's own per-host timeout and multi-host logic). */
    c->pg = PQconnectStartParams(kw, val, 0);
    free(kw);
    free(val);
    free(hosts);
    free(ports);
    kw = val = NULL;
    hosts = ports = NULL;
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
    if (PQserverVersion(c->pg) < 100000) {
        pg_set_err(c,
                   "postgresql %s: server version %d is too old: mqstore "
                   "needs PostgreSQL 10 or newer (identity columns).",
                   c->masked, PQserverVersion(c->pg));
        rc = MQS_EIO;
        goto fail;
    }
    *out = c;
    return 0;

fail:
    free(kw);
    free(val);
    free(hosts);
    free(ports);
    snprintf(err, errlen, "%s", c->err);
    PQfinish(c->pg);
    free(c->masked);
    free(c);
    return rc;
}

void pg_conn_close(mqs_be_conn *c)
{
    if (!c)
        return;
    PQclear(c->pend);
    pg_defer_clear(c);
    free(c->dq);
    free(c->sess_cluster);
    PQfinish(c->pg); /* ends the session, and its advisory lock with it */
    free(c->masked);
    free(c);
}

const char *pg_conn_errmsg(mqs_be_conn *c)
{
    return c ? c->err : "postgresql: no connection";
}

int pg_conn_max_message(mqs_be_conn *c, size_t *max)
{
    (void)c;
    *max = PG_MAX_MESSAGE;
    return 0;
}
