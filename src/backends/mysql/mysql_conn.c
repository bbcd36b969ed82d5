/*
 * mysql_conn.c - MySQL / MariaDB backend: generic helpers, error
 * mapping, statement execution, URI options and the connection
 * (part of mqstore_mysql.so; see mysql.c for the design choices).
 */
#include <poll.h>

#include "mysql_int.h"

/* Prepared statements with string parameters (everything else is SQL text
 * with integers and hex literals only). */
static const char *const my_st_sql[MY_ST_COUNT] = {
    [MY_ST_DEST_GET] = "SELECT id FROM mqs_dest WHERE kind = ? AND name = ?",
    /* LAST_INSERT_ID(id) makes a lost race return the winner's id. */
    [MY_ST_DEST_ADD] = "INSERT INTO mqs_dest (kind, name) VALUES (?, ?) "
                       "ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)",
    [MY_ST_SUB_GET] = "SELECT id FROM mqs_sub WHERE dest_id = ? AND name = ?",
    /* The database clock stamps the subscription (session time_zone is
     * UTC, so UNIX_TIMESTAMP has no DST ambiguity). */
    [MY_ST_SUB_ADD] = "INSERT INTO mqs_sub (dest_id, name, created_ms) "
                      "VALUES (?, ?, CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)) "
                      "ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)",
    [MY_ST_SUB_LOOKUP] = "SELECT s.id FROM mqs_sub s JOIN mqs_dest d ON d.id = s.dest_id "
                         "WHERE d.kind = 1 AND d.name = ? AND s.name = ?",
    /* One fenced message, autocommitted: inserted only if the lock row
     * names this node and token with enough lease left by the server's
     * clock, read with a share lock held to the statement's commit (see
     * my_txn_commit; docs/architecture.md, "The fence, per backend"). */
    [MY_ST_INS_FENCED] = "INSERT INTO mqs_msg (dest_id, kind, priority, expires_ms, "
                         "enqueued_ms, headers, body) SELECT ?, ?, ?, ?, ?, ?, ? "
                         "FROM mqs_lock WHERE cluster = ? AND holder = ? AND "
                         "token = ? AND lease_until_ms - " MY_NOW_MS " >= ? "
                         "LOCK IN SHARE MODE",
};

/* ------------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------- */

void my_sb_reset(my_sb *b)
{
    b->len = 0;
    b->oom = 0;
    if (b->p)
        b->p[0] = '\0';
}

void my_sb_printf(my_sb *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (b->oom)
        return;
    for (;;) {
        size_t room = b->cap - b->len;
        va_start(ap, fmt);
        n = vsnprintf(b->p ? b->p + b->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)n < room) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->len + (size_t)n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

int64_t my_i64(const char *s)
{
    return s ? strtoll(s, NULL, 10) : 0;
}

/* ------------------------------------------------------------------------
 * Errors: one message per connection, mapped to MQS_E* here.
 * ---------------------------------------------------------------------- */

/* in_commit: the statement was a COMMIT, so a lost connection leaves its
 * outcome unknown. */
static int my_code(unsigned int e, int in_commit)
{
    switch (e) {
    case MY_ER_DBACCESS_DENIED:
    case MY_ER_ACCESS_DENIED:
    case MY_ER_TABLEACCESS_DENIED:
    case MY_ER_COLUMNACCESS_DENIED:
    case MY_ER_SPECIFIC_ACCESS_DENIED:
    case MY_ER_ACCESS_DENIED_NO_PASSWORD:
    case MY_ER_MUST_CHANGE_PASSWORD:
        return MQS_EAUTH;
    case MY_ER_BAD_DB:
        return MQS_ENOTFOUND;
    case MY_ER_LOCK_WAIT_TIMEOUT:
    case MY_ER_LOCK_DEADLOCK:
        return MQS_EBUSY;
    case MY_ER_NET_PACKET_TOO_LARGE:
    case MY_ER_WARN_ALLOWED_PACKET_OVERFLOWED:
    case MY_CR_NET_PACKET_TOO_LARGE:
        return MQS_ETOOBIG;
    case MY_ER_DATA_TOO_LONG:
    case MY_ER_TRUNCATED_WRONG_VALUE_FOR_FIELD:
        return MQS_EINVAL;
    /* A read-only server is a replica or a demoted primary: reconnecting
     * (through a proxy or DNS that follows the primary) is the cure. */
    case MY_ER_OPTION_PREVENTS_STATEMENT:
    case MY_ER_CANT_EXECUTE_IN_READ_ONLY_TXN:
    case MY_ER_READ_ONLY_MODE:
    case MY_ER_TOO_MANY_CONNECTIONS:
    case MY_ER_TOO_MANY_USER_CONNECTIONS:
    case MY_ER_SERVER_SHUTDOWN:
    case MY_CR_CONNECTION_ERROR:
    case MY_CR_CONN_HOST_ERROR:
    case MY_CR_UNKNOWN_HOST:
        return MQS_ECONN;
    case MY_CR_SERVER_GONE:
    case MY_CR_SERVER_LOST:
    case MY_CR_SERVER_LOST_EXTENDED:
    case MY_ER_CONNECTION_KILLED:
    case MY_ER_CLIENT_INTERACTION_TIMEOUT:
        return in_commit ? MQS_EUNKNOWN : MQS_ECONN;
    default:
        return MQS_EIO;
    }
}

/* How to fix it, for the errors where we can say. */
static void my_hint(unsigned int e, int in_commit, unsigned long max_packet,
                    char *buf, size_t len)
{
    const char *h = NULL;

    buf[0] = '\0';
    switch (e) {
    case MY_ER_ACCESS_DENIED:
    case MY_ER_ACCESS_DENIED_NO_PASSWORD:
        h = "check the user name and password in the URI (percent-encode "
            "special characters) and that the user may connect from this host";
        break;
    case MY_ER_DBACCESS_DENIED:
    case MY_ER_TABLEACCESS_DENIED:
    case MY_ER_COLUMNACCESS_DENIED:
    case MY_ER_SPECIFIC_ACCESS_DENIED:
        h = "grant the user ALL PRIVILEGES on the database "
            "(GRANT ALL ON db.* TO user)";
        break;
    case MY_ER_MUST_CHANGE_PASSWORD:
        h = "the password has expired: set a new one (ALTER USER)";
        break;
    case MY_ER_BAD_DB:
        h = "create it (CREATE DATABASE name CHARACTER SET utf8mb4) or fix "
            "the database name in the URI path";
        break;
    case MY_ER_NO_SUCH_TABLE:
        h = "the mqstore schema is missing or incomplete: run the migration "
            "(mqstore migrate, or open with migrate=auto)";
        break;
    case MY_ER_LOCK_WAIT_TIMEOUT:
        h = "another transaction held the rows longer than "
            "innodb_lock_wait_timeout; retry the transaction";
        break;
    case MY_ER_LOCK_DEADLOCK:
        h = "the server rolled the transaction back to break a deadlock; "
            "retry it";
        break;
    case MY_ER_OPTION_PREVENTS_STATEMENT:
    case MY_ER_CANT_EXECUTE_IN_READ_ONLY_TXN:
    case MY_ER_READ_ONLY_MODE:
        h = "the server is read-only (a replica?): point the URI at the "
            "primary";
        break;
    case MY_ER_TOO_MANY_CONNECTIONS:
    case MY_ER_TOO_MANY_USER_CONNECTIONS:
        h = "raise max_connections / max_user_connections on the server or "
            "lower pool_size";
        break;
    case MY_CR_CONNECTION_ERROR:
    case MY_CR_CONN_HOST_ERROR:
    case MY_CR_UNKNOWN_HOST:
        h = "is the server running and listening on that host and port "
            "(or socket)?";
        break;
    case MY_CR_SERVER_GONE:
    case MY_CR_SERVER_LOST:
    case MY_CR_SERVER_LOST_EXTENDED:
    case MY_ER_CONNECTION_KILLED:
    case MY_ER_CLIENT_INTERACTION_TIMEOUT:
        h = in_commit ? "the connection was lost during COMMIT (or an "
                        "autocommitted insert), so whether the transaction "
                        "committed is unknown"
                      : "the connection was lost; it will be reopened";
        break;
    case MY_CR_SSL_CONNECTION_ERROR:
        h = "check the tls option and tls_ca / tls_cert / tls_key, and "
            "that the server has TLS enabled (SHOW VARIABLES LIKE 'have_ssl')";
        break;
    case MY_ER_NET_PACKET_TOO_LARGE:
    case MY_ER_WARN_ALLOWED_PACKET_OVERFLOWED:
    case MY_CR_NET_PACKET_TOO_LARGE:
        snprintf(buf, len,
                 "the server's max_allowed_packet (%lu bytes) is too small: "
                 "raise it (SET GLOBAL max_allowed_packet = ...; and "
                 "max_allowed_packet in the [mysqld] section of my.cnf)",
                 max_packet);
        return;
    default:
        return;
    }
    snprintf(buf, len, "%s", h);
}

static int my_fail(mqs_be_conn *c, const char *what, unsigned int e,
                   const char *sqlstate, const char *msg, int in_commit)
{
    char hint[320];
    int rc = my_code(e, in_commit);

    my_hint(e, in_commit, c->max_packet, hint, sizeof hint);
    snprintf(c->err, sizeof c->err,
             "mysql: %s failed on %s: %s (MySQL error %u, SQLSTATE %s)%s%s",
             what, c->uri, msg && *msg ? msg : "unknown error", e,
             sqlstate && *sqlstate ? sqlstate : "HY000", hint[0] ? "; " : "",
             hint);
    /* The server closes the connection after an oversize packet. */
    if (rc == MQS_ECONN || rc == MQS_EUNKNOWN || e == MY_ER_NET_PACKET_TOO_LARGE ||
        e == MY_CR_NET_PACKET_TOO_LARGE)
        c->broken = 1;
    return rc;
}

int my_fail_db(mqs_be_conn *c, const char *what, int in_commit)
{
    return my_fail(c, what, mysql_errno(c->db), mysql_sqlstate(c->db),
                   mysql_error(c->db), in_commit);
}

int my_fail_stmt(mqs_be_conn *c, MYSQL_STMT *s, const char *what)
{
    return my_fail(c, what, mysql_stmt_errno(s), mysql_stmt_sqlstate(s),
                   mysql_stmt_error(s), c->in_autocommit_write);
}

/* Before a write whose lost answer would be MQS_EUNKNOWN (an autocommitted
 * statement): has the server already closed this idle connection (its
 * wait_timeout, a restart, KILL)? Then it sent, or will send, nothing for
 * a statement not yet sent: MQS_ECONN, nothing was written, the core
 * retries on a new connection. An idle connection has nothing to read. */
int my_session_ended(mqs_be_conn *c, const char *what)
{
    struct pollfd p = {.fd = (int)mysql_get_socket(c->db),
                       .events = POLLIN | POLLRDHUP};
    if (p.fd < 0 || poll(&p, 1, 0) <= 0)
        return 0;
    c->broken = 1;
    return my_errf(c, MQS_ECONN,
                   "mysql: %s: %s: the server closed the connection before "
                   "the statement was sent (wait_timeout, a restart or KILL); "
                   "nothing was written",
                   c->uri, what);
}

int my_errf(mqs_be_conn *c, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return rc;
}

int my_oom(mqs_be_conn *c, const char *what)
{
    return my_errf(c, MQS_ENOMEM, "mysql: out of memory in %s on %s", what,
                   c->uri);
}
/* ------------------------------------------------------------------------
 * Statement helpers
 * ---------------------------------------------------------------------- */

/* Run a statement that returns no rows; *affected (may be NULL) gets the
 * affected row count. */
int my_exec_ex(mqs_be_conn *c, const char *what, const char *sql,
               size_t len, uint64_t *affected, int in_commit)
{
    MY_TXN_START(c);
    if (mysql_real_query(c->db, sql, (unsigned long)len))
        return my_fail_db(c, what, in_commit);
    if (mysql_field_count(c->db) != 0) {
        /* Not expected; drain it so the connection stays usable. */
        MYSQL_RES *r = mysql_store_result(c->db);
        mysql_free_result(r);
    }
    if (affected)
        *affected = (uint64_t)mysql_affected_rows(c->db);
    return 0;
}

int my_exec(mqs_be_conn *c, const char *what, const char *sql,
            uint64_t *affected)
{
    return my_exec_ex(c, what, sql, strlen(sql), affected, 0);
}

int my_exec_sb(mqs_be_conn *c, const char *what, uint64_t *affected)
{
    if (c->sql.oom)
        return my_oom(c, what);
    return my_exec_ex(c, what, c->sql.p, c->sql.len, affected, 0);
}

/* Run a query and buffer its (small) result; the caller frees *res. */
int my_query(mqs_be_conn *c, const char *what, const char *sql,
             size_t len, MYSQL_RES **res)
{
    *res = NULL;
    MY_TXN_START(c);
    if (mysql_real_query(c->db, sql, (unsigned long)len))
        return my_fail_db(c, what, 0);
    *res = mysql_store_result(c->db);
    if (!*res)
        return mysql_errno(c->db) ? my_fail_db(c, what, 0)
                                  : my_errf(c, MQS_EIO,
                                            "mysql: %s on %s returned no result set",
                                            what, c->uri);
    return 0;
}

/* First column of the first row as an integer: *found = 0 if no row or
 * NULL. */
int my_query_i64(mqs_be_conn *c, const char *what, const char *sql,
                 int64_t *out, int *found)
{
    MYSQL_RES *res;
    int rc = my_query(c, what, sql, strlen(sql), &res);
    if (rc)
        return rc;
    MYSQL_ROW row = mysql_fetch_row(res);
    *found = row && row[0];
    *out = *found ? my_i64(row[0]) : 0;
    mysql_free_result(res);
    return 0;
}

int my_st_get(mqs_be_conn *c, int id, MYSQL_STMT **out)
{
    if (!c->st[id]) {
        MYSQL_STMT *s = mysql_stmt_init(c->db);
        if (!s)
            return my_oom(c, "mysql_stmt_init");
        if (mysql_stmt_prepare(s, my_st_sql[id], (unsigned long)strlen(my_st_sql[id]))) {
            char what[160];
            snprintf(what, sizeof what, "preparing \"%.120s\"", my_st_sql[id]);
            int rc = my_fail_stmt(c, s, what);
            mysql_stmt_close(s);
            return rc;
        }
        c->st[id] = s;
    }
    *out = c->st[id];
    return 0;
}

void my_bind_i64(MYSQL_BIND *b, int64_t *v)
{
    memset(b, 0, sizeof *b);
    b->buffer_type = MYSQL_TYPE_LONGLONG;
    b->buffer = v;
}

void my_bind_i32(MYSQL_BIND *b, int32_t *v)
{
    memset(b, 0, sizeof *b);
    b->buffer_type = MYSQL_TYPE_LONG;
    b->buffer = v;
}

void my_bind_str(MYSQL_BIND *b, const char *s, unsigned long *len)
{
    memset(b, 0, sizeof *b);
    *len = (unsigned long)strlen(s);
    b->buffer_type = MYSQL_TYPE_STRING;
    b->buffer = (void *)(uintptr_t)s; /* only read: the API has no const */
    b->buffer_length = *len;
    b->length = len;
}

/* Run prepared statement id with params. With out != NULL it reads one
 * integer column of the first row (*found = 0 if none); with insert_id
 * != NULL it returns LAST_INSERT_ID(). */
int my_st_run(mqs_be_conn *c, int id, const char *what, MYSQL_BIND *params,
              int64_t *out, int *found, int64_t *insert_id)
{
    MYSQL_STMT *s = NULL;
    MY_TXN_START(c);
    int rc = my_st_get(c, id, &s);
    if (rc)
        return rc;
    if (mysql_stmt_bind_param(s, params) || mysql_stmt_execute(s))
        return my_fail_stmt(c, s, what);
    if (insert_id)
        *insert_id = (int64_t)mysql_stmt_insert_id(s);
    if (out) {
        MYSQL_BIND r;
        my_bind_i64(&r, out);
        *found = 0;
        if (mysql_stmt_bind_result(s, &r)) {
            rc = my_fail_stmt(c, s, what);
        } else {
            int f = mysql_stmt_fetch(s);
            if (f == 0)
                *found = 1;
            else if (f == 1)
                rc = my_fail_stmt(c, s, what);
        }
        /* Discards any row left, so the connection is free again. */
        mysql_stmt_free_result(s);
    }
    return rc;
}

/* ------------------------------------------------------------------------
 * URI: the core takes it apart and percent-decodes it (args->parts); here
 * only what MySQL itself needs: one host, the database, this module's
 * options.
 * ---------------------------------------------------------------------- */

static const char *const my_tls_names[] = {"disabled", "preferred", "required",
                                           "verify_ca", "verify_identity"};

/* The connection parameters, borrowed from args->parts for conn_open. */
typedef struct my_uri {
    const char *user, *password, *host, *db, *socket, *tls_ca, *tls_cert, *tls_key;
    const char *option_file, *option_group;
    unsigned port;
    unsigned connect_timeout, read_timeout, write_timeout;
    int tls;
} my_uri;

static int my_uint_opt(const char *v, unsigned lo, unsigned hi, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long x = strtoul(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi || v[0] == '-')
        return MQS_EINVAL;
    *out = (unsigned)x;
    return 0;
}

#define MY_URI_ERR(...) (snprintf(err, errlen, __VA_ARGS__), MQS_EINVAL)

/* mysql://[user[:password]@][host][:port]/database[?k=v&...], taken apart
 * by the core: check what only MySQL knows and fill u. */
static int my_uri_parse(const mqs_be_uri *p, const char *masked, my_uri *u,
                        char *err, size_t errlen)
{
    memset(u, 0, sizeof *u);
    u->port = 3306;
    u->connect_timeout = 10;
    u->read_timeout = 120;
    u->write_timeout = 120;
    u->tls = MY_TLS_PREFERRED;

    if (!p->has_authority)
        return MY_URI_ERR("mysql: URI %s: expected mysql://user:password@host:port/database",
                          masked);
    u->user = p->user;
    u->password = p->password;
    /* The client library connects to one server: failover between several
     * is a proxy's job (MaxScale, ProxySQL, a virtual IP). */
    if (p->nhosts > 1)
        return MY_URI_ERR("mysql: URI %s names %zu hosts: MySQL/MariaDB connects to "
                          "one server; give one host (put a proxy such as MaxScale or "
                          "ProxySQL in front of several)",
                          masked, p->nhosts);
    if (p->nhosts == 1) {
        u->host = p->hosts[0].host;
        if (p->hosts[0].port) /* digits, 1-65535: checked by the core */
            u->port = (unsigned)strtoul(p->hosts[0].port, NULL, 10);
    }
    /* /database */
    u->db = p->path[0] == '/' ? p->path + 1 : NULL;
    if (!u->db || !*u->db || strchr(u->db, '/'))
        return MY_URI_ERR("mysql: URI %s names no database: use "
                          "mysql://user:password@host:port/database",
                          masked);
    /* ?k=v&k=v: only the keys of my_options reach here; the last one wins. */
    for (size_t i = 0; i < p->nopts; i++) {
        const char *k = p->opts[i].key, *v = p->opts[i].value;
        int rc = 0;
        if (strcmp(k, "socket") == 0) {
            u->socket = v;
        } else if (strcmp(k, "tls_ca") == 0) {
            u->tls_ca = v;
        } else if (strcmp(k, "tls_cert") == 0) {
            u->tls_cert = v;
        } else if (strcmp(k, "tls_key") == 0) {
            u->tls_key = v;
        } else if (strcmp(k, "option_file") == 0) {
            u->option_file = v;
        } else if (strcmp(k, "option_group") == 0) {
            u->option_group = v;
        } else if (strcmp(k, "connect_timeout") == 0) {
            if (my_uint_opt(v, 1, 3600, &u->connect_timeout))
                rc = MY_URI_ERR("mysql: URI %s: connect_timeout=%s: expected "
                                "seconds, 1-3600",
                                masked, v);
        } else if (strcmp(k, "read_timeout") == 0 || strcmp(k, "write_timeout") == 0) {
            if (my_uint_opt(v, 0, 86400,
                            k[0] == 'r' ? &u->read_timeout : &u->write_timeout))
                rc = MY_URI_ERR("mysql: URI %s: %s=%s: expected seconds, 0-86400 "
                                "(0 = no limit)",
                                masked, k, v);
        } else if (strcmp(k, "tls") == 0) {
            size_t t;
            for (t = 0; t < sizeof my_tls_names / sizeof my_tls_names[0]; t++)
                if (strcmp(v, my_tls_names[t]) == 0)
                    break;
            if (t == sizeof my_tls_names / sizeof my_tls_names[0])
                rc = MY_URI_ERR("mysql: URI %s: tls=%s: expected disabled, preferred, "
                                "required, verify_ca or verify_identity",
                                masked, v);
            u->tls = (int)t;
        } else {
            rc = MY_URI_ERR("mysql: URI %s: unknown option '%s'", masked, k);
        }
        if (rc)
            return rc;
    }
    /* The client library skips an unreadable option file in silence: the
     * password would then just be missing. Say why instead. */
    if (u->option_file && access(u->option_file, R_OK) != 0)
        return MY_URI_ERR("mysql: URI %s: option_file '%s': %s", masked,
                          u->option_file, strerror(errno));
    if (u->tls == MY_TLS_VERIFY_CA && !(u->tls_ca && *u->tls_ca))
        return MY_URI_ERR("mysql: URI %s: tls=verify_ca needs tls_ca=/path/to/ca.pem",
                          masked);
    if (u->tls == MY_TLS_DISABLED && ((u->tls_ca && *u->tls_ca) ||
                                      (u->tls_cert && *u->tls_cert)))
        return MY_URI_ERR("mysql: URI %s: tls=disabled contradicts tls_ca/tls_cert",
                          masked);
    return 0;
}

/* ------------------------------------------------------------------------
 * Connection
 * ---------------------------------------------------------------------- */

static pthread_once_t my_lib_once = PTHREAD_ONCE_INIT;
static int my_lib_rc;

/* The client library's global init is not thread-safe: run it once. */
static void my_lib_init(void)
{
    my_lib_rc = mysql_library_init(0, NULL, NULL);
}

static const char *my_nz(const char *s)
{
    return s && *s ? s : NULL;
}

static int my_set_options(MYSQL *db, const my_uri *u, const char *role)
{
    unsigned int t, zero = 0;
    unsigned long packet = 1024UL * 1024 * 1024; /* the protocol maximum */
    my_flag_t off = 0, on = 1;
    int bad = 0;

    /* First: what the URI says below overrides the file. */
    if (my_nz(u->option_file)) {
        bad |= mysql_options(db, MYSQL_READ_DEFAULT_FILE, u->option_file);
        bad |= mysql_options(db, MYSQL_READ_DEFAULT_GROUP,
                             my_nz(u->option_group) ? u->option_group
                                                    : "client");
    }
    t = u->connect_timeout;
    bad |= mysql_options(db, MYSQL_OPT_CONNECT_TIMEOUT, &t);
    if (u->read_timeout) {
        t = u->read_timeout;
        bad |= mysql_options(db, MYSQL_OPT_READ_TIMEOUT, &t);
    }
    if (u->write_timeout) {
        t = u->write_timeout;
        bad |= mysql_options(db, MYSQL_OPT_WRITE_TIMEOUT, &t);
    }
    bad |= mysql_options(db, MYSQL_SET_CHARSET_NAME, "utf8mb4");
#if MY_CLIENT_MARIADB
    /* Never reconnect behind our back (see the top of the file). Oracle's
     * library has it off by default and warns on stderr when it is set. */
    bad |= mysql_options(db, MYSQL_OPT_RECONNECT, &off);
#else
    (void)off;
#endif
    bad |= mysql_options(db, MYSQL_OPT_LOCAL_INFILE, &zero);
    /* The client side limit must not be the smaller one: reading a
     * message as large as the server allows must work. */
    bad |= mysql_options(db, MYSQL_OPT_MAX_ALLOWED_PACKET, &packet);
    /* Shows up in performance_schema.session_connect_attrs. */
    mysql_options4(db, MYSQL_OPT_CONNECT_ATTR_ADD, "program_name", "mqstore");
    mysql_options4(db, MYSQL_OPT_CONNECT_ATTR_ADD, "mqstore_role", role ? role : "");

#if MY_CLIENT_MARIADB
    if (u->tls != MY_TLS_DISABLED) {
        /* Enables TLS when the server offers it ("preferred"). */
        bad |= mysql_ssl_set(db, my_nz(u->tls_key), my_nz(u->tls_cert),
                             my_nz(u->tls_ca), NULL, NULL);
        if (u->tls >= MY_TLS_REQUIRED)
            bad |= mysql_options(db, MYSQL_OPT_SSL_ENFORCE, &on);
        /* Connector/C checks chain and host name together; said explicitly
         * either way, since newer versions verify by default. */
        bad |= mysql_options(db, MYSQL_OPT_SSL_VERIFY_SERVER_CERT,
                             u->tls >= MY_TLS_VERIFY_CA ? &on : &off);
    }
#else
    {
        static const unsigned int modes[] = {SSL_MODE_DISABLED, SSL_MODE_PREFERRED,
                                             SSL_MODE_REQUIRED, SSL_MODE_VERIFY_CA,
                                             SSL_MODE_VERIFY_IDENTITY};
        unsigned int mode = modes[u->tls];
        (void)on;
        bad |= mysql_options(db, MYSQL_OPT_SSL_MODE, &mode);
        if (my_nz(u->tls_ca))
            bad |= mysql_options(db, MYSQL_OPT_SSL_CA, u->tls_ca);
        if (my_nz(u->tls_cert))
            bad |= mysql_options(db, MYSQL_OPT_SSL_CERT, u->tls_cert);
        if (my_nz(u->tls_key))
            bad |= mysql_options(db, MYSQL_OPT_SSL_KEY, u->tls_key);
    }
#endif
    return bad ? -1 : 0;
}

static void my_close(mqs_be_conn *c)
{
    if (!c)
        return;
    for (size_t i = 0; i <= MY_INS_SHIFT_MAX; i++)
        if (c->ins[i])
            mysql_stmt_close(c->ins[i]);
    for (size_t i = 0; i < MY_ST_COUNT; i++)
        if (c->st[i])
            mysql_stmt_close(c->st[i]);
    if (c->db)
        mysql_close(c->db);
    free(c->bind);
    free(c->lens);
    free(c->ints);
    free(c->sql.p);
    free(c->sess_cluster);
    free(c->fence_cluster);
    free(c->fence_node);
    free(c->uri);
    free(c);
}

/* Session settings and the server facts the module depends on. */
static int my_session_setup(mqs_be_conn *c)
{
    MYSQL_RES *res;
    MYSQL_ROW row;
    int rc;

    /* autocommit=1: reads are single statements; the server default may be
     * 0, which would keep a snapshot open forever. NO_ENGINE_SUBSTITUTION:
     * never create the tables silently as MyISAM. UTC: created_ms.
     * innodb_snapshot_isolation=OFF (MariaDB 10.6.18+, ON by default from
     * 11.6): ON, a locking read (LOCK IN SHARE MODE, FOR UPDATE) of a row
     * changed after the transaction's read view was opened fails with
     * "Record has changed since last read" (error 1020) instead of reading
     * the newest committed version. The fence check (see lock_fence) and
     * the subscription reads of msg_insert rely on the newest version, as
     * on MySQL: a renewal committing after a write transaction's first
     * plain read would otherwise fail its commit. Older servers do not
     * know the variable (error 1193): set the rest alone. */
    static const char setup[] = "SET SESSION autocommit = 1, time_zone = '+00:00', "
                                "sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'";
    static const char snap_off[] = ", innodb_snapshot_isolation = OFF";
    char qs[sizeof setup + sizeof snap_off];
    snprintf(qs, sizeof qs, "%s%s", setup, c->is_mariadb ? snap_off : "");
    if (mysql_real_query(c->db, qs, (unsigned long)strlen(qs)) != 0) {
        if (!c->is_mariadb || mysql_errno(c->db) != 1193) /* unknown variable */
            return my_fail_db(c, "session setup", 0);
        if ((rc = my_exec(c, "session setup", setup, NULL)))
            return rc;
    }
    static const char q[] = "SELECT @@max_allowed_packet, @@innodb_autoinc_lock_mode, "
                            "@@auto_increment_increment";
    rc = my_query(c, "reading server settings", q, sizeof q - 1, &res);
    if (rc)
        return rc;
    row = mysql_fetch_row(res);
    if (!row || !row[0] || !row[1] || !row[2]) {
        mysql_free_result(res);
        return my_errf(c, MQS_EIO,
                       "mysql: %s: cannot read max_allowed_packet / "
                       "innodb_autoinc_lock_mode (is InnoDB enabled?)",
                       c->uri);
    }
    c->max_packet = (unsigned long)my_i64(row[0]);
    c->autoinc_mode = (long)my_i64(row[1]);
    c->autoinc_step = my_i64(row[2]);
    mysql_free_result(res);
    if (c->autoinc_step < 1)
        c->autoinc_step = 1;
    if (c->max_packet < 1024)
        c->max_packet = 1024;

    /* Ids of a multi-row INSERT are consecutive only in lock modes 0 and 1;
     * otherwise one row per INSERT. The prepared text (16 bytes a row) must
     * fit a packet too. */
    c->ins_max = 1;
    if (c->autoinc_mode == 0 || c->autoinc_mode == 1)
        while (c->ins_max < MY_INS_ROWS_MAX &&
               (size_t)c->ins_max * 2 * 16 + 256 < c->max_packet)
            c->ins_max *= 2;
    c->in_max = (c->max_packet - 256) / MY_IN_ELEM_BYTES;
    if (c->in_max > MY_IN_MAX)
        c->in_max = MY_IN_MAX;
    if (c->in_max < 1)
        c->in_max = 1;
    return 0;
}

int my_conn_open(const mqs_be_open_args *args, mqs_be_conn **out, char *err,
                 size_t errlen)
{
    my_uri u;
    mqs_be_conn *c;
    const char *masked = args->uri_masked ? args->uri_masked : "mysql://";
    int rc;

    *out = NULL;
    pthread_once(&my_lib_once, my_lib_init);
    if (my_lib_rc) {
        snprintf(err, errlen, "mysql: mysql_library_init failed");
        return MQS_EIO;
    }
    if (!args->parts) {
        snprintf(err, errlen, "mysql: URI %s: the core passed no URI parts", masked);
        return MQS_EINVAL;
    }
    rc = my_uri_parse(args->parts, masked, &u, err, errlen);
    if (rc)
        return rc;
    c = calloc(1, sizeof *c);
    if (!c || !(c->uri = strdup(masked)) || !(c->db = mysql_init(NULL))) {
        snprintf(err, errlen, "mysql: out of memory opening %s", masked);
        my_close(c);
        return MQS_ENOMEM;
    }
    c->read_timeout = u.read_timeout;
    c->lock_conn = args->role && strcmp(args->role, "lock") == 0;
    if (my_set_options(c->db, &u, args->role)) {
        snprintf(err, errlen, "mysql: %s: the client library refused an option "
                 "(%s)", masked, mysql_error(c->db));
        my_close(c);
        return MQS_EINVAL;
    }
    /* An empty host means the local socket. */
    const char *host = my_nz(u.host) ? u.host : "localhost";
    /* CLIENT_FOUND_ROWS: an UPDATE reports the rows it matched, so a lease
     * renewal that writes the same values still counts as a match. */
    if (!mysql_real_connect(c->db, host, u.user ? u.user : "", u.password, u.db,
                            u.port, my_nz(u.socket), CLIENT_FOUND_ROWS)) {
        unsigned int e = mysql_errno(c->db);
        rc = my_fail_db(c, "connect", 0);
        if (e == MY_ER_BAD_DB)
            snprintf(c->err, sizeof c->err,
                     "mysql: connect to %s: unknown database '%s' (MySQL error %u); "
                     "create it (CREATE DATABASE `%s` CHARACTER SET utf8mb4) or "
                     "fix the database name in the URI path",
                     masked, u.db, e, u.db);
        snprintf(err, errlen, "%s", c->err);
        my_close(c);
        return rc;
    }
    /* Connector/C 3.3 with MYSQL_OPT_SSL_ENFORCE but no certificate check
     * silently connects in clear text to a server without TLS. */
    if (u.tls >= MY_TLS_REQUIRED && !mysql_get_ssl_cipher(c->db)) {
        snprintf(err, errlen,
                 "mysql: connect to %s: tls=%s but the server did not use TLS "
                 "(SHOW VARIABLES LIKE 'have_ssl' on the server); configure TLS "
                 "on the server (ssl_cert, ssl_key) or lower the tls option",
                 masked, my_tls_names[u.tls]);
        my_close(c);
        return MQS_EAUTH;
    }
    c->is_mariadb = strstr(mysql_get_server_info(c->db), "MariaDB") != NULL;

    rc = my_session_setup(c);
    if (!rc) {
        size_t rows = c->ins_max;
        c->bind = calloc(rows * MY_INS_COLS, sizeof *c->bind);
        c->lens = calloc(rows * 2, sizeof *c->lens);
        c->ints = calloc(rows * 2, sizeof *c->ints);
        if (!c->bind || !c->lens || !c->ints)
            rc = my_oom(c, "connect");
    }
    if (rc) {
        snprintf(err, errlen, "%s", c->err);
        my_close(c);
        return rc;
    }
    c->err[0] = '\0';
    *out = c;
    return 0;
}

void my_conn_close(mqs_be_conn *c)
{
    my_close(c);
}

const char *my_conn_errmsg(mqs_be_conn *c)
{
    return c ? c->err : "";
}

/* Largest headers + body one INSERT packet can carry. */
size_t my_max_message(const mqs_be_conn *c)
{
    return c->max_packet > MY_STMT_MARGIN + MY_ROW_MARGIN
               ? c->max_packet - MY_STMT_MARGIN - MY_ROW_MARGIN
               : 0;
}

int my_conn_max_message(mqs_be_conn *c, size_t *max)
{
    *max = my_max_message(c);
    return 0;
}
