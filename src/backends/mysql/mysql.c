/*
 * mysql.c - MySQL / MariaDB backend (mqstore_mysql.so).
 *
 * URI: mysql://user:password@host:port/database?option=value&...
 *      (scheme mariadb:// is the same). User, password, host and database
 * are percent-decoded. Options are listed in my_options below.
 *
 * Choices that matter for correctness:
 *  - autocommit stays on for the session; write transactions are explicit
 *    START TRANSACTION / COMMIT, reads are single autocommitted statements
 *    (no snapshot kept open between pages).
 *  - The client library's auto-reconnect is off: a silent reconnect would
 *    drop an open transaction and go on as if nothing happened. A lost
 *    connection is reported as MQS_ECONN (MQS_EUNKNOWN during COMMIT) and
 *    the core reconnects.
 *  - Message ids of a multi-row INSERT are taken as LAST_INSERT_ID() + i *
 *    auto_increment_increment. InnoDB guarantees that only with
 *    innodb_autoinc_lock_mode 0 or 1 (MariaDB's default is 1; MySQL 8
 *    defaults to 2, Galera requires 2). The mode is read at connect and with
 *    mode 2 every message gets its own single-row INSERT (still one
 *    transaction, one commit).
 *  - Blobs go through prepared statements (binary protocol), so a message
 *    needs max_allowed_packet plus a small margin, not twice its size.
 *  - Only integers and hex literals (X'...', for names) are ever formatted
 *    into SQL text; other strings and blobs are bound parameters.
 *  - HA lock (ABI 2.0): a row per cluster in mqs_lock, times by the server's
 *    clock; the crash detector is GET_LOCK() on a dedicated connection,
 *    which the server releases the moment that connection ends.
 *  - Fencing without writing (lock_fence): a write transaction never
 *    updates mqs_lock. txn_commit runs, as its last statement before
 *    COMMIT, a locking read of the lock row by primary key (LOCK IN SHARE
 *    MODE) and commits only if it shows this node, its token and at least
 *    margin_ms of lease by the server's clock. The S record lock conflicts
 *    with the X lock every takeover (lock_acquire, lock_force) takes before
 *    it changes the row, so none can commit between the check and our
 *    COMMIT; it lives in InnoDB's lock system only (no undo, no redo, no
 *    row version). lock_renew, one autocommitted UPDATE on the lease
 *    connection, is the only writer of the row while a master holds it.
 *    lock_acquire first reads the row without any lock and goes no
 *    further while a live holder's lease stands.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <strings.h>
#include <time.h>

#include <mysql.h>

#include <mqstore/backend.h>

/* Generated from schema/mysql/ by EmbedSchema.cmake. */
#include "schema_mysql.h" /* generated: mqs_schema_mysql[], its count */

#define MY_VERSION MQS_VERSION_STRING

/* MariaDB Connector/C and Oracle's libmysqlclient differ in the type of
 * boolean options and in how TLS is configured. */
#ifdef MARIADB_PACKAGE_VERSION
typedef my_bool my_flag_t;
#define MY_CLIENT_MARIADB 1
#else
typedef bool my_flag_t;
#define MY_CLIENT_MARIADB 0
#endif

/* Server and client error numbers we map (stable across versions). */
enum {
    MY_ER_TOO_MANY_CONNECTIONS = 1040,
    MY_ER_DBACCESS_DENIED = 1044,
    MY_ER_ACCESS_DENIED = 1045,
    MY_ER_BAD_DB = 1049,
    MY_ER_SERVER_SHUTDOWN = 1053,
    MY_ER_TABLEACCESS_DENIED = 1142,
    MY_ER_COLUMNACCESS_DENIED = 1143,
    MY_ER_NO_SUCH_TABLE = 1146,
    MY_ER_NET_PACKET_TOO_LARGE = 1153,
    MY_ER_TOO_MANY_USER_CONNECTIONS = 1203,
    MY_ER_LOCK_WAIT_TIMEOUT = 1205,
    MY_ER_LOCK_DEADLOCK = 1213,
    MY_ER_SPECIFIC_ACCESS_DENIED = 1227,
    MY_ER_OPTION_PREVENTS_STATEMENT = 1290, /* read_only */
    MY_ER_WARN_ALLOWED_PACKET_OVERFLOWED = 1301,
    MY_ER_TRUNCATED_WRONG_VALUE_FOR_FIELD = 1366,
    MY_ER_DATA_TOO_LONG = 1406,
    MY_ER_ACCESS_DENIED_NO_PASSWORD = 1698,
    MY_ER_CANT_EXECUTE_IN_READ_ONLY_TXN = 1792,
    MY_ER_MUST_CHANGE_PASSWORD = 1820,
    MY_ER_READ_ONLY_MODE = 1836,
    MY_ER_CONNECTION_KILLED = 1927, /* MariaDB */
    MY_ER_CLIENT_INTERACTION_TIMEOUT = 4031, /* MySQL 8 */
    MY_CR_CONNECTION_ERROR = 2002,
    MY_CR_CONN_HOST_ERROR = 2003,
    MY_CR_UNKNOWN_HOST = 2005,
    MY_CR_SERVER_GONE = 2006,
    MY_CR_SERVER_LOST = 2013,
    MY_CR_NET_PACKET_TOO_LARGE = 2020,
    MY_CR_SSL_CONNECTION_ERROR = 2026,
    MY_CR_SERVER_LOST_EXTENDED = 2055,
};

/* Multi-row INSERTs are prepared for 1, 2, 4 ... 512 rows: a batch of n
 * rows takes O(log n) statements and a connection holds at most 10. */
#define MY_INS_SHIFT_MAX 9
#define MY_INS_ROWS_MAX (1u << MY_INS_SHIFT_MAX)
#define MY_INS_COLS 7
/* Bytes of a COM_STMT_EXECUTE packet besides the rows' headers and body:
 * a fixed part, and a part per row (5 numbers, 2 length prefixes, types). */
#define MY_STMT_MARGIN 1024
#define MY_ROW_MARGIN 64
/* Ids per "IN (...)" list; each element takes at most this many bytes. */
#define MY_IN_MAX 1000
#define MY_IN_ELEM_BYTES 48
/* GET_LOCK wait while another process migrates the same database. */
#define MY_MIGRATE_LOCK_S 60

/* Prepared statements with string parameters (everything else is SQL text
 * with integers and hex literals only). */
enum {
    MY_ST_DEST_GET,
    MY_ST_DEST_ADD,
    MY_ST_SUB_GET,
    MY_ST_SUB_ADD,
    MY_ST_SUB_LOOKUP,
    MY_ST_COUNT
};
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
};

/* A growing SQL text buffer. */
typedef struct my_sb {
    char *p;
    size_t len, cap;
    int oom;
} my_sb;

struct mqs_be_conn {
    MYSQL *db;
    char *uri; /* masked, for messages */
    char err[1024];
    /* Set once the connection is unusable (lost, or closed by the server
     * after an oversize packet): every later call fails fast. */
    int broken;
    unsigned long max_packet; /* server's max_allowed_packet */
    long autoinc_mode;        /* innodb_autoinc_lock_mode */
    int64_t autoinc_step;     /* auto_increment_increment */
    unsigned ins_max;         /* rows per multi-row INSERT, power of two */
    size_t in_max;            /* elements per IN (...) list */
    unsigned read_timeout;    /* seconds, 0 = none */
    int is_mariadb;
    /* Server start time (UNIX s): identifies the server instance that
     * connection ids and GET_LOCK locks belong to. 0 = unknown (the crash
     * detector is then never armed: the lease alone decides). */
    int64_t epoch;
    int epoch_read;
    int idle_write_s;   /* idle_write_transaction_timeout (and
                           idle_transaction_timeout) set on this session by
                           lock_fence (MariaDB), -1 = not settable */
    int lock_wait_s;    /* innodb_lock_wait_timeout set on this session:
                           0 = never set (the server's default), -1 =
                           unknown (a SET failed) */
    int lock_conn;      /* opened with role "lock": the core's lease or
                           session-lock connection, which runs nothing but
                           lock statements */
    /* lock_fence of the open write transaction, checked by txn_commit.
     * Cleared by txn_begin, a successful COMMIT and txn_rollback; kept
     * when the check fails, so no later COMMIT can skip it. */
    int fence_on;
    char *fence_cluster, *fence_node;
    int64_t fence_token, fence_margin_ms;
    char *sess_cluster; /* cluster whose session lock this connection holds */
    int64_t sess_id;    /* its CONNECTION_ID() */
    MYSQL_STMT *ins[MY_INS_SHIFT_MAX + 1];
    MYSQL_STMT *st[MY_ST_COUNT];
    MYSQL_BIND *bind; /* MY_INS_COLS per row of the largest INSERT */
    unsigned long *lens;
    int32_t *ints;
    my_sb sql;
};

/* ------------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------- */

static void my_sb_reset(my_sb *b)
{
    b->len = 0;
    b->oom = 0;
    if (b->p)
        b->p[0] = '\0';
}

static void my_sb_printf(my_sb *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void my_sb_printf(my_sb *b, const char *fmt, ...)
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

static int64_t my_i64(const char *s)
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
        h = in_commit ? "the connection was lost during COMMIT, so whether "
                        "the transaction committed is unknown"
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

static int my_fail_db(mqs_be_conn *c, const char *what, int in_commit)
{
    return my_fail(c, what, mysql_errno(c->db), mysql_sqlstate(c->db),
                   mysql_error(c->db), in_commit);
}

static int my_fail_stmt(mqs_be_conn *c, MYSQL_STMT *s, const char *what)
{
    return my_fail(c, what, mysql_stmt_errno(s), mysql_stmt_sqlstate(s),
                   mysql_stmt_error(s), 0);
}

static int my_errf(mqs_be_conn *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int my_errf(mqs_be_conn *c, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err, sizeof c->err, fmt, ap);
    va_end(ap);
    return rc;
}

static int my_oom(mqs_be_conn *c, const char *what)
{
    return my_errf(c, MQS_ENOMEM, "mysql: out of memory in %s on %s", what,
                   c->uri);
}

/* Every callback starts here: a broken connection fails fast and keeps the
 * message of the failure that broke it. */
#define MY_CHECK_CONN(c)                                                     \
    do {                                                                     \
        if ((c)->broken)                                                     \
            return MQS_ECONN;                                                \
    } while (0)

/* ------------------------------------------------------------------------
 * Statement helpers
 * ---------------------------------------------------------------------- */

/* Run a statement that returns no rows; *affected (may be NULL) gets the
 * affected row count. */
static int my_exec_ex(mqs_be_conn *c, const char *what, const char *sql,
                      size_t len, uint64_t *affected, int in_commit)
{
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

static int my_exec(mqs_be_conn *c, const char *what, const char *sql,
                   uint64_t *affected)
{
    return my_exec_ex(c, what, sql, strlen(sql), affected, 0);
}

static int my_exec_sb(mqs_be_conn *c, const char *what, uint64_t *affected)
{
    if (c->sql.oom)
        return my_oom(c, what);
    return my_exec_ex(c, what, c->sql.p, c->sql.len, affected, 0);
}

/* Run a query and buffer its (small) result; the caller frees *res. */
static int my_query(mqs_be_conn *c, const char *what, const char *sql,
                    size_t len, MYSQL_RES **res)
{
    *res = NULL;
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
static int my_query_i64(mqs_be_conn *c, const char *what, const char *sql,
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

static int my_st_get(mqs_be_conn *c, int id, MYSQL_STMT **out)
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

static void my_bind_i64(MYSQL_BIND *b, int64_t *v)
{
    memset(b, 0, sizeof *b);
    b->buffer_type = MYSQL_TYPE_LONGLONG;
    b->buffer = v;
}

static void my_bind_i32(MYSQL_BIND *b, int32_t *v)
{
    memset(b, 0, sizeof *b);
    b->buffer_type = MYSQL_TYPE_LONG;
    b->buffer = v;
}

static void my_bind_str(MYSQL_BIND *b, const char *s, unsigned long *len)
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
static int my_st_run(mqs_be_conn *c, int id, const char *what, MYSQL_BIND *params,
                     int64_t *out, int *found, int64_t *insert_id)
{
    MYSQL_STMT *s = NULL;
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
 * URI
 * ---------------------------------------------------------------------- */

enum { MY_TLS_DISABLED, MY_TLS_PREFERRED, MY_TLS_REQUIRED, MY_TLS_VERIFY_CA,
       MY_TLS_VERIFY_IDENTITY };
static const char *const my_tls_names[] = {"disabled", "preferred", "required",
                                           "verify_ca", "verify_identity"};

static const mqs_be_option my_options[] = {
    {"socket", "",
     "Unix socket of the server; used when the URI host is empty or "
     "localhost (default: the client library's, e.g. /run/mysqld/mysqld.sock)"},
    {"connect_timeout", "10",
     "seconds allowed for the TCP connect and handshake (1-3600)"},
    {"read_timeout", "120",
     "seconds to wait for a server reply before the connection is treated "
     "as lost (0 = no limit); keep it above innodb_lock_wait_timeout and the "
     "longest purge"},
    {"write_timeout", "120",
     "seconds a network write may block before the connection is treated as "
     "lost (0 = no limit)"},
    {"tls", "preferred",
     "disabled | preferred (TLS when the server offers it) | required (TLS, "
     "certificate not checked) | verify_ca (certificate checked against "
     "tls_ca) | verify_identity (verify_ca plus host name check; with "
     "MariaDB Connector/C verify_ca checks the host name too)"},
    {"tls_ca", "", "CA certificate file (PEM) for verify_ca / verify_identity"},
    {"tls_cert", "", "client certificate file (PEM), for servers requiring one"},
    {"tls_key", "", "private key file (PEM) of tls_cert"},
    {"option_file", "",
     "a MySQL option file (my.cnf syntax) read before connecting: keeps the "
     "password out of the URI, e.g. '[client]' then 'password=...' (mode "
     "0600)"},
    {"option_group", "client", "the group of option_file to read"},
};
#define MY_N_OPTIONS (sizeof my_options / sizeof my_options[0])

typedef struct my_uri {
    char *user, *password, *host, *db, *socket, *tls_ca, *tls_cert, *tls_key;
    char *option_file, *option_group;
    unsigned port;
    unsigned connect_timeout, read_timeout, write_timeout;
    int tls;
} my_uri;

static void my_uri_free(my_uri *u)
{
    free(u->user);
    free(u->password);
    free(u->host);
    free(u->db);
    free(u->socket);
    free(u->tls_ca);
    free(u->tls_cert);
    free(u->tls_key);
    free(u->option_file);
    free(u->option_group);
}

static int my_hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Percent-decode s[0..n) into a new string. Returns MQS_EINVAL for a bad
 * escape or an encoded NUL, MQS_ENOMEM. */
static int my_decode(const char *s, size_t n, char **out)
{
    char *o = malloc(n + 1);
    size_t j = 0;

    *out = NULL;
    if (!o)
        return MQS_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            o[j++] = s[i];
            continue;
        }
        int hi = i + 2 < n ? my_hexval(s[i + 1]) : -1;
        int lo = i + 2 < n ? my_hexval(s[i + 2]) : -1;
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(o);
            return MQS_EINVAL;
        }
        o[j++] = (char)(hi * 16 + lo);
        i += 2;
    }
    o[j] = '\0';
    *out = o;
    return 0;
}

static int my_uint_opt(const char *name, const char *v, unsigned lo, unsigned hi,
                       unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long x = strtoul(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi || v[0] == '-')
        return MQS_EINVAL;
    (void)name;
    *out = (unsigned)x;
    return 0;
}

#define MY_URI_ERR(...) (snprintf(err, errlen, __VA_ARGS__), MQS_EINVAL)

/* Parse scheme://[user[:password]@][host][:port]/database[?k=v&...]. */
static int my_uri_parse(const char *uri, const char *masked, my_uri *u,
                        char *err, size_t errlen)
{
    const char *p, *end, *at, *slash, *q, *hp, *hend, *pe;
    int rc;

    memset(u, 0, sizeof *u);
    u->port = 3306;
    u->connect_timeout = 10;
    u->read_timeout = 120;
    u->write_timeout = 120;
    u->tls = MY_TLS_PREFERRED;

    p = strstr(uri, "://");
    if (!p || !((p - uri == 5 && strncasecmp(uri, "mysql", 5) == 0) ||
                (p - uri == 7 && strncasecmp(uri, "mariadb", 7) == 0)))
        return MY_URI_ERR("mysql: URI %s: expected mysql://user:password@host:port/database",
                          masked);
    p += 3;
    end = p + strcspn(p, "/?#");
    /* The last '@' ends the user info: a password may hold an unencoded @. */
    at = NULL;
    for (const char *x = p; x < end; x++)
        if (*x == '@')
            at = x;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        const char *uend = colon ? colon : at;
        if ((rc = my_decode(p, (size_t)(uend - p), &u->user)) ||
            (colon && (rc = my_decode(colon + 1, (size_t)(at - colon - 1), &u->password))))
            return rc == MQS_ENOMEM
                       ? rc
                       : MY_URI_ERR("mysql: URI %s: bad percent-encoding in the user "
                                    "or password",
                                    masked);
        hp = at + 1;
    } else {
        hp = p;
    }
    /* host, [ipv6] or empty, then :port */
    hend = end;
    pe = NULL;
    if (*hp == '[') {
        const char *rb = memchr(hp, ']', (size_t)(end - hp));
        if (!rb)
            return MY_URI_ERR("mysql: URI %s: unterminated [IPv6 address]", masked);
        if (rb + 1 < end && rb[1] != ':')
            return MY_URI_ERR("mysql: URI %s: unexpected text after ]", masked);
        pe = rb + 1 < end ? rb + 1 : NULL;
        rc = my_decode(hp + 1, (size_t)(rb - hp - 1), &u->host);
    } else {
        for (const char *x = hp; x < end; x++)
            if (*x == ':')
                pe = x;
        hend = pe ? pe : end;
        rc = my_decode(hp, (size_t)(hend - hp), &u->host);
    }
    if (rc)
        return rc == MQS_ENOMEM ? rc
                                : MY_URI_ERR("mysql: URI %s: bad percent-encoding in the host",
                                             masked);
    if (pe) {
        char port[8];
        size_t n = (size_t)(end - pe - 1);
        if (n == 0 || n >= sizeof port)
            return MY_URI_ERR("mysql: URI %s: bad port (1-65535)", masked);
        memcpy(port, pe + 1, n);
        port[n] = '\0';
        if (my_uint_opt("port", port, 1, 65535, &u->port))
            return MY_URI_ERR("mysql: URI %s: bad port '%s' (1-65535)", masked, port);
    }
    /* /database */
    slash = *end == '/' ? end + 1 : NULL;
    q = strchr(end, '?');
    if (strchr(end, '#'))
        return MY_URI_ERR("mysql: URI %s: '#' is not allowed; percent-encode it as %%23",
                          masked);
    if (slash) {
        const char *dend = q ? q : slash + strlen(slash);
        if ((rc = my_decode(slash, (size_t)(dend - slash), &u->db)))
            return rc == MQS_ENOMEM
                       ? rc
                       : MY_URI_ERR("mysql: URI %s: bad percent-encoding in the database name",
                                    masked);
    }
    if (!u->db || !*u->db || strchr(u->db, '/'))
        return MY_URI_ERR("mysql: URI %s names no database: use "
                          "mysql://user:password@host:port/database",
                          masked);
    /* ?k=v&k=v */
    for (const char *o = q ? q + 1 : NULL; o && *o;) {
        const char *oend = o + strcspn(o, "&");
        const char *eq = memchr(o, '=', (size_t)(oend - o));
        char *k = NULL, *v = NULL;
        if (oend == o) {
            o = *oend ? oend + 1 : oend;
            continue;
        }
        if (!eq)
            return MY_URI_ERR("mysql: URI %s: option '%.*s' needs a value (name=value)",
                              masked, (int)(oend - o), o);
        if ((rc = my_decode(o, (size_t)(eq - o), &k)) ||
            (rc = my_decode(eq + 1, (size_t)(oend - eq - 1), &v))) {
            free(k);
            return rc == MQS_ENOMEM ? rc
                                    : MY_URI_ERR("mysql: URI %s: bad percent-encoding in "
                                                 "option '%.*s'",
                                                 masked, (int)(oend - o), o);
        }
        rc = 0;
        if (strcmp(k, "socket") == 0) {
            free(u->socket);
            u->socket = v;
            v = NULL;
        } else if (strcmp(k, "tls_ca") == 0) {
            free(u->tls_ca);
            u->tls_ca = v;
            v = NULL;
        } else if (strcmp(k, "tls_cert") == 0) {
            free(u->tls_cert);
            u->tls_cert = v;
            v = NULL;
        } else if (strcmp(k, "tls_key") == 0) {
            free(u->tls_key);
            u->tls_key = v;
            v = NULL;
        } else if (strcmp(k, "option_file") == 0) {
            free(u->option_file);
            u->option_file = v;
            v = NULL;
        } else if (strcmp(k, "option_group") == 0) {
            free(u->option_group);
            u->option_group = v;
            v = NULL;
        } else if (strcmp(k, "connect_timeout") == 0) {
            if (my_uint_opt(k, v, 1, 3600, &u->connect_timeout))
                rc = MY_URI_ERR("mysql: URI %s: connect_timeout=%s: expected "
                                "seconds, 1-3600",
                                masked, v);
        } else if (strcmp(k, "read_timeout") == 0 || strcmp(k, "write_timeout") == 0) {
            if (my_uint_opt(k, v, 0, 86400,
                            k[0] == 'r' ? &u->read_timeout : &u->write_timeout))
                rc = MY_URI_ERR("mysql: URI %s: %s=%s: expected seconds, 0-86400 "
                                "(0 = no limit)",
                                masked, k, v);
        } else if (strcmp(k, "tls") == 0) {
            size_t i;
            for (i = 0; i < sizeof my_tls_names / sizeof my_tls_names[0]; i++)
                if (strcmp(v, my_tls_names[i]) == 0)
                    break;
            if (i == sizeof my_tls_names / sizeof my_tls_names[0])
                rc = MY_URI_ERR("mysql: URI %s: tls=%s: expected disabled, preferred, "
                                "required, verify_ca or verify_identity",
                                masked, v);
            u->tls = (int)i;
        } else {
            rc = MY_URI_ERR("mysql: URI %s: unknown option '%s' (mysql options: "
                            "socket, connect_timeout, read_timeout, write_timeout, "
                            "tls, tls_ca, tls_cert, tls_key, option_file, "
                            "option_group)",
                            masked, k);
        }
        free(k);
        free(v);
        if (rc)
            return rc;
        o = *oend ? oend + 1 : oend;
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

static int my_conn_open(const mqs_be_open_args *args, mqs_be_conn **out, char *err,
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
    rc = my_uri_parse(args->uri, masked, &u, err, errlen);
    if (rc) {
        if (rc == MQS_ENOMEM)
            snprintf(err, errlen, "mysql: out of memory parsing the URI");
        my_uri_free(&u);
        return rc;
    }
    c = calloc(1, sizeof *c);
    if (!c || !(c->uri = strdup(masked)) || !(c->db = mysql_init(NULL))) {
        snprintf(err, errlen, "mysql: out of memory opening %s", masked);
        my_close(c);
        my_uri_free(&u);
        return MQS_ENOMEM;
    }
    c->read_timeout = u.read_timeout;
    c->lock_conn = args->role && strcmp(args->role, "lock") == 0;
    if (my_set_options(c->db, &u, args->role)) {
        snprintf(err, errlen, "mysql: %s: the client library refused an option "
                 "(%s)", masked, mysql_error(c->db));
        my_close(c);
        my_uri_free(&u);
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
        my_uri_free(&u);
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
        my_uri_free(&u);
        return MQS_EAUTH;
    }
    my_uri_free(&u);
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

static void my_conn_close(mqs_be_conn *c)
{
    my_close(c);
}

static const char *my_conn_errmsg(mqs_be_conn *c)
{
    return c ? c->err : "";
}

/* Largest headers + body one INSERT packet can carry. */
static size_t my_max_message(const mqs_be_conn *c)
{
    return c->max_packet > MY_STMT_MARGIN + MY_ROW_MARGIN
               ? c->max_packet - MY_STMT_MARGIN - MY_ROW_MARGIN
               : 0;
}

static int my_conn_max_message(mqs_be_conn *c, size_t *max)
{
    *max = my_max_message(c);
    return 0;
}

/* ------------------------------------------------------------------------
 * Schema
 * ---------------------------------------------------------------------- */

static int my_schema_version(mqs_be_conn *c, int *version)
{
    static const char q[] =
        "SELECT TABLE_NAME FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN "
        "('mqs_meta', 'mqs_dest', 'mqs_sub', 'mqs_msg', 'mqs_pending', 'mqs_lock') "
        "ORDER BY TABLE_NAME";
    MYSQL_RES *res;
    MYSQL_ROW row;
    char found[160] = "";
    int has_meta = 0, n = 0, rc;
    int64_t v;

    *version = 0;
    MY_CHECK_CONN(c);
    rc = my_query(c, "reading the table list (schema version)", q, sizeof q - 1, &res);
    if (rc)
        return rc;
    while ((row = mysql_fetch_row(res))) {
        if (row[0] && strcmp(row[0], "mqs_meta") == 0)
            has_meta = 1;
        else if (row[0] && strlen(found) + strlen(row[0]) + 3 < sizeof found)
            snprintf(found + strlen(found), sizeof found - strlen(found), "%s%s",
                     n++ ? ", " : "", row[0]);
    }
    mysql_free_result(res);
    if (!has_meta) {
        if (n == 0)
            return 0; /* nothing of ours: an empty (or foreign) database */
        return my_errf(c, MQS_ECORRUPT,
                       "mysql: %s has tables %s but no mqs_meta: a migration "
                       "stopped halfway (MySQL DDL is not transactional) or the "
                       "tables belong to something else; if they hold nothing "
                       "you need, DROP them and open again",
                       c->uri, found);
    }
    int got;
    rc = my_query_i64(c, "reading mqs_meta",
                      "SELECT CAST(`value` AS SIGNED) FROM mqs_meta "
                      "WHERE `key` = 'schema_version' AND `value` REGEXP '^[0-9]+$'",
                      &v, &got);
    if (rc)
        return rc;
    if (!got || v < 1 || v > INT_MAX)
        return my_errf(c, MQS_ECORRUPT,
                       "mysql: %s: mqs_meta has no valid schema_version row: not "
                       "an mqstore database, or damaged",
                       c->uri);
    *version = (int)v;
    return 0;
}

/* Run a script of several statements; *failed_at gets the number of the
 * statement that failed. */
static int my_run_script(mqs_be_conn *c, const mqs_be_migration *m, int *failed_at)
{
    char what[160];
    int n = 1, rc = 0, status;

    if (mysql_set_server_option(c->db, MYSQL_OPTION_MULTI_STATEMENTS_ON))
        return my_fail_db(c, "enabling multi-statements for the migration", 0);
    snprintf(what, sizeof what, "migration %s, statement 1", m->name);
    if (mysql_real_query(c->db, m->sql, (unsigned long)strlen(m->sql))) {
        rc = my_fail_db(c, what, 0);
    } else {
        for (;;) {
            MYSQL_RES *r = mysql_store_result(c->db);
            mysql_free_result(r);
            status = mysql_next_result(c->db);
            if (status == -1)
                break;
            n++;
            if (status > 0) {
                snprintf(what, sizeof what, "migration %s, statement %d", m->name, n);
                rc = my_fail_db(c, what, 0);
                break;
            }
        }
    }
    *failed_at = n;
    /* Only migrations run several statements in one call. */
    if (!c->broken && mysql_set_server_option(c->db, MYSQL_OPTION_MULTI_STATEMENTS_OFF) &&
        !rc)
        rc = my_fail_db(c, "disabling multi-statements", 0);
    return rc;
}

static int my_schema_apply(mqs_be_conn *c, const mqs_be_migration *m)
{
    char sql[256];
    int64_t got = 0;
    int found, rc, cur, failed_at = 0;
    /* The wait must end before read_timeout declares the connection dead. */
    unsigned wait_s = MY_MIGRATE_LOCK_S;
    if (c->read_timeout && c->read_timeout / 2 < wait_s)
        wait_s = c->read_timeout / 2 ? c->read_timeout / 2 : 1;

    MY_CHECK_CONN(c);
    /* Several nodes may start at once on an empty database: one migrates,
     * the others wait here and then find the work done. */
    snprintf(sql, sizeof sql,
             "SELECT GET_LOCK(CONCAT('mqstore-migrate-', MD5(DATABASE())), %u)", wait_s);
    rc = my_query_i64(c, "taking the migration lock (GET_LOCK)", sql, &got, &found);
    if (rc)
        return rc;
    if (!found || got != 1)
        return my_errf(c, MQS_EBUSY,
                       "mysql: %s: another process has held the migration lock "
                       "for %u s (GET_LOCK('mqstore-migrate-...')); is a migration "
                       "stuck? see SHOW PROCESSLIST",
                       c->uri, wait_s);

    rc = my_schema_version(c, &cur);
    if (!rc && cur >= m->version)
        goto unlock; /* another node did it meanwhile */
    if (!rc && cur != m->version - 1) {
        rc = my_errf(c, MQS_ESCHEMA,
                     "mysql: %s: cannot apply migration %d (%s) to schema version %d",
                     c->uri, m->version, m->name, cur);
        goto unlock;
    }
    if (!rc) {
        rc = my_run_script(c, m, &failed_at);
        if (rc && !c->broken) {
            size_t l = strlen(c->err);
            snprintf(c->err + l, sizeof c->err - l,
                     "; MySQL DDL is not transactional: statements before %d took "
                     "effect and must be undone (DROP the mqs_* tables it created) "
                     "before retrying",
                     failed_at);
        }
    }
    if (!rc) {
        snprintf(sql, sizeof sql,
                 "INSERT INTO mqs_meta (`key`, `value`) VALUES ('schema_version', '%d') "
                 "ON DUPLICATE KEY UPDATE `value` = '%d'",
                 m->version, m->version);
        rc = my_exec(c, "START TRANSACTION (schema version)", "START TRANSACTION", NULL);
        if (!rc)
            rc = my_exec(c, "recording the schema version in mqs_meta", sql, NULL);
        if (!rc)
            rc = my_exec_ex(c, "COMMIT (schema version)", "COMMIT", 6, NULL, 1);
        else if (!c->broken)
            mysql_real_query(c->db, "ROLLBACK", 8);
    }
unlock:
    if (!c->broken) {
        char keep[sizeof c->err];
        memcpy(keep, c->err, sizeof keep);
        int urc = my_exec(c, "releasing the migration lock",
                          "DO RELEASE_LOCK(CONCAT('mqstore-migrate-', MD5(DATABASE())))",
                          NULL);
        if (rc)
            memcpy(c->err, keep, sizeof keep);
        else
            rc = urc;
    }
    return rc;
}

/* ------------------------------------------------------------------------
 * Transactions
 * ---------------------------------------------------------------------- */

static int my_fence_check(mqs_be_conn *c);

static int my_txn_begin(mqs_be_conn *c)
{
    c->fence_on = 0;
    MY_CHECK_CONN(c);
    return my_exec_ex(c, "START TRANSACTION", "START TRANSACTION", 17, NULL, 0);
}

/* With a fence (lock_fence), the check is the last statement before
 * COMMIT: after every write, and the share lock it takes on the lock row
 * is held only for the COMMIT. A failed check leaves the transaction open
 * for the core's txn_rollback and keeps the fence, so a second txn_commit
 * fails the same way instead of committing. */
static int my_txn_commit(mqs_be_conn *c)
{
    int rc;

    MY_CHECK_CONN(c);
    if (c->fence_on && (rc = my_fence_check(c)))
        return rc;
    rc = my_exec_ex(c, "COMMIT", "COMMIT", 6, NULL, 1);
    if (!rc)
        c->fence_on = 0;
    return rc;
}

static int my_txn_rollback(mqs_be_conn *c)
{
    c->fence_on = 0;
    MY_CHECK_CONN(c);
    return my_exec_ex(c, "ROLLBACK", "ROLLBACK", 8, NULL, 0);
}

/* The lock's own transactions (acquire, release, force) and the renewal
 * must not run inside a write transaction: START TRANSACTION would commit
 * it, an autocommitted UPDATE would join it. No round trip: the server
 * reports its transaction state with every reply. */
static int my_not_in_txn(mqs_be_conn *c, const char *what)
{
    if (c->db->server_status & SERVER_STATUS_IN_TRANS)
        return my_errf(c, MQS_EINVAL,
                       "mysql: %s called inside an open transaction on %s; it "
                       "runs in its own transaction",
                       what, c->uri);
    return 0;
}

/* ------------------------------------------------------------------------
 * Destinations and subscriptions
 * ---------------------------------------------------------------------- */

static int my_dest_resolve(mqs_be_conn *c, mqs_kind kind, const char *name, int create,
                           int64_t *dest_id)
{
    MYSQL_BIND b[2];
    unsigned long len;
    int32_t k = (int32_t)kind;
    int found, rc;
    const char *kn = kind == MQS_TOPIC ? "topic" : "queue";

    MY_CHECK_CONN(c);
    *dest_id = 0;
    my_bind_i32(&b[0], &k);
    my_bind_str(&b[1], name, &len);
    /* A plain read first: the INSERT below would lock the row. */
    rc = my_st_run(c, MY_ST_DEST_GET, "looking up a destination in mqs_dest", b, dest_id,
                   &found, NULL);
    if (rc || found)
        return rc;
    if (!create)
        return my_errf(c, MQS_ENOTFOUND, "mysql: no %s named '%.255s' in %s", kn, name,
                       c->uri);
    return my_st_run(c, MY_ST_DEST_ADD, "creating a destination in mqs_dest", b, NULL,
                     NULL, dest_id);
}

static int my_sub_create(mqs_be_conn *c, int64_t topic_id, const char *name,
                         int64_t *sub_id)
{
    MYSQL_BIND b[2];
    unsigned long len;
    int found, rc;

    MY_CHECK_CONN(c);
    *sub_id = 0;
    my_bind_i64(&b[0], &topic_id);
    my_bind_str(&b[1], name, &len);
    rc = my_st_run(c, MY_ST_SUB_GET, "looking up a subscription in mqs_sub", b, sub_id,
                   &found, NULL);
    if (rc || found)
        return rc;
    return my_st_run(c, MY_ST_SUB_ADD, "creating a subscription in mqs_sub", b, NULL,
                     NULL, sub_id);
}

static int my_sub_lookup(mqs_be_conn *c, const char *topic, const char *name,
                         int64_t *sub_id)
{
    MYSQL_BIND b[2];
    unsigned long l1, l2;
    int found, rc;

    MY_CHECK_CONN(c);
    *sub_id = 0;
    my_bind_str(&b[0], topic, &l1);
    my_bind_str(&b[1], name, &l2);
    rc = my_st_run(c, MY_ST_SUB_LOOKUP, "looking up a subscription", b, sub_id, &found,
                   NULL);
    if (rc)
        return rc;
    if (!found)
        return my_errf(c, MQS_ENOTFOUND,
                       "mysql: no subscription '%.255s' on topic '%.255s' in %s", name,
                       topic, c->uri);
    return 0;
}

/* ------------------------------------------------------------------------
 * Acks
 * ---------------------------------------------------------------------- */

/* Queue acks (sub_id 0) of r[0..n): DELETE ... IN (...) per chunk. */
static int my_ack_queue(mqs_be_conn *c, const mqs_be_ref *r, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t cnt = 0;
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "DELETE FROM mqs_msg WHERE kind = 0 AND id IN (");
        for (; i < n && cnt < c->in_max; i++)
            if (r[i].sub_id == 0)
                my_sb_printf(&c->sql, "%s%" PRId64, cnt++ ? "," : "", r[i].id);
        if (!cnt)
            break;
        my_sb_printf(&c->sql, ")");
        int rc = my_exec_sb(c, "deleting acked queue messages from mqs_msg", NULL);
        if (rc)
            return rc;
    }
    return 0;
}

/* Subscription acks (sub_id != 0) of r[0..n): delete the pending rows,
 * then the messages no subscription holds any more. *removed (may be
 * NULL) gets the number of pending rows deleted. */
static int my_ack_topic(mqs_be_conn *c, const mqs_be_ref *r, size_t n, uint64_t *removed)
{
    size_t i = 0;
    if (removed)
        *removed = 0;
    while (i < n) {
        size_t start = i, cnt = 0;
        uint64_t gone = 0;
        int rc;

        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "DELETE FROM mqs_pending WHERE (sub_id, msg_id) IN (");
        for (; i < n && cnt < c->in_max; i++)
            if (r[i].sub_id != 0)
                my_sb_printf(&c->sql, "%s(%" PRId64 ",%" PRId64 ")", cnt++ ? "," : "",
                             r[i].sub_id, r[i].id);
        if (!cnt)
            break;
        my_sb_printf(&c->sql, ")");
        rc = my_exec_sb(c, "deleting acked entries from mqs_pending", &gone);
        if (rc)
            return rc;
        if (removed)
            *removed += gone;
        if (!gone)
            continue;
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "DELETE FROM mqs_msg WHERE kind = 1 AND id IN (");
        cnt = 0;
        for (size_t j = start; j < i; j++)
            if (r[j].sub_id != 0)
                my_sb_printf(&c->sql, "%s%" PRId64, cnt++ ? "," : "", r[j].id);
        my_sb_printf(&c->sql, ") AND NOT EXISTS (SELECT 1 FROM mqs_pending p "
                              "WHERE p.msg_id = mqs_msg.id)");
        rc = my_exec_sb(c, "deleting fully acked topic messages from mqs_msg", NULL);
        if (rc)
            return rc;
    }
    return 0;
}

static int my_msg_ack(mqs_be_conn *c, const mqs_be_ref *r, size_t n)
{
    int rc;
    MY_CHECK_CONN(c);
    rc = my_ack_queue(c, r, n);
    if (!rc)
        rc = my_ack_topic(c, r, n, NULL);
    return rc;
}

static int my_msg_nack(mqs_be_conn *c, const mqs_be_ref *r)
{
    char sql[200];
    MY_CHECK_CONN(c);
    if (r->sub_id == 0)
        snprintf(sql, sizeof sql,
                 "UPDATE mqs_msg SET redeliveries = redeliveries + 1 "
                 "WHERE id = %" PRId64 " AND kind = 0",
                 r->id);
    else
        snprintf(sql, sizeof sql,
                 "UPDATE mqs_pending SET redeliveries = redeliveries + 1 "
                 "WHERE sub_id = %" PRId64 " AND msg_id = %" PRId64,
                 r->sub_id, r->id);
    return my_exec(c, "counting a redelivery (nack)", sql, NULL);
}

static int my_sub_remove(mqs_be_conn *c, int64_t sub_id)
{
    char sql[200];
    mqs_be_ref *refs;
    int rc;

    MY_CHECK_CONN(c);
    /* The subscription row first: its X lock makes concurrent publishers
     * (which read mqs_sub with LOCK IN SHARE MODE) wait, so none can add a
     * pending row for it after the loop below. */
    snprintf(sql, sizeof sql, "DELETE FROM mqs_sub WHERE id = %" PRId64, sub_id);
    rc = my_exec(c, "deleting the subscription from mqs_sub", sql, NULL);
    if (rc)
        return rc;
    refs = malloc(c->in_max * sizeof *refs);
    if (!refs)
        return my_oom(c, "sub_remove");
    /* Its pending rows are acked chunk by chunk: bounded memory, and the
     * same index-friendly statements as acks. */
    snprintf(sql, sizeof sql,
             "SELECT msg_id FROM mqs_pending WHERE sub_id = %" PRId64
             " ORDER BY msg_id LIMIT %zu",
             sub_id, c->in_max);
    for (;;) {
        MYSQL_RES *res;
        MYSQL_ROW row;
        size_t n = 0;
        uint64_t gone;

        rc = my_query(c, "listing the subscription's pending messages", sql, strlen(sql),
                      &res);
        if (rc)
            break;
        while ((row = mysql_fetch_row(res)) && n < c->in_max) {
            refs[n].id = my_i64(row[0]);
            refs[n].sub_id = sub_id;
            n++;
        }
        mysql_free_result(res);
        if (n == 0)
            break;
        rc = my_ack_topic(c, refs, n, &gone);
        if (rc)
            break;
        if (gone == 0) { /* cannot happen; never loop forever */
            rc = my_errf(c, MQS_EIO,
                         "mysql: %s: pending rows of subscription %" PRId64
                         " listed but not deleted",
                         c->uri, sub_id);
            break;
        }
    }
    free(refs);
    return rc;
}

static int my_purge(mqs_be_conn *c, int64_t dest_id, uint64_t *removed)
{
    char sql[3][200];
    uint64_t q = 0, p = 0;
    int rc;

    MY_CHECK_CONN(c);
    if (removed)
        *removed = 0;
    if (dest_id == 0) {
        snprintf(sql[0], sizeof sql[0], "DELETE FROM mqs_msg WHERE kind = 0");
        snprintf(sql[1], sizeof sql[1], "DELETE FROM mqs_pending");
        snprintf(sql[2], sizeof sql[2], "DELETE FROM mqs_msg WHERE kind = 1");
    } else {
        snprintf(sql[0], sizeof sql[0],
                 "DELETE FROM mqs_msg WHERE dest_id = %" PRId64 " AND kind = 0", dest_id);
        snprintf(sql[1], sizeof sql[1],
                 "DELETE p FROM mqs_pending p JOIN mqs_sub s ON s.id = p.sub_id "
                 "WHERE s.dest_id = %" PRId64,
                 dest_id);
        snprintf(sql[2], sizeof sql[2],
                 "DELETE FROM mqs_msg WHERE dest_id = %" PRId64 " AND kind = 1", dest_id);
    }
    rc = my_exec(c, "purging queue messages from mqs_msg", sql[0], &q);
    if (!rc)
        rc = my_exec(c, "purging subscription entries from mqs_pending", sql[1], &p);
    if (!rc)
        rc = my_exec(c, "purging topic messages from mqs_msg", sql[2], NULL);
    if (!rc && removed)
        *removed = q + p;
    return rc;
}

/* ------------------------------------------------------------------------
 * Inserts
 * ---------------------------------------------------------------------- */

static int my_cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* The prepared INSERT of 2^shift rows. */
static int my_ins_stmt(mqs_be_conn *c, unsigned shift, MYSQL_STMT **out)
{
    if (!c->ins[shift]) {
        unsigned rows = 1u << shift;
        MYSQL_STMT *s;
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "INSERT INTO mqs_msg (dest_id, kind, priority, expires_ms, "
                              "enqueued_ms, headers, body) VALUES ");
        for (unsigned i = 0; i < rows; i++)
            my_sb_printf(&c->sql, "%s(?,?,?,?,?,?,?)", i ? "," : "");
        if (c->sql.oom)
            return my_oom(c, "preparing an INSERT");
        if (!(s = mysql_stmt_init(c->db)))
            return my_oom(c, "mysql_stmt_init");
        if (mysql_stmt_prepare(s, c->sql.p, (unsigned long)c->sql.len)) {
            int rc = my_fail_stmt(c, s, "preparing the multi-row INSERT into mqs_msg");
            mysql_stmt_close(s);
            return rc;
        }
        c->ins[shift] = s;
    }
    *out = c->ins[shift];
    return 0;
}

static void my_bind_blob(MYSQL_BIND *b, const void *p, size_t len, unsigned long *lp)
{
    memset(b, 0, sizeof *b);
    if (!p) {
        b->buffer_type = MYSQL_TYPE_NULL;
        return;
    }
    *lp = (unsigned long)len;
    b->buffer_type = MYSQL_TYPE_BLOB;
    b->buffer = (void *)(uintptr_t)p; /* only read: the API has no const */
    b->buffer_length = *lp;
    b->length = lp;
}

/* Insert m[idx[0..k)] (k a power of two) with one statement and set their
 * ids. */
static int my_insert_rows(mqs_be_conn *c, mqs_be_msg *m, const size_t *idx, unsigned shift)
{
    unsigned k = 1u << shift;
    MYSQL_STMT *s = NULL;
    int rc = my_ins_stmt(c, shift, &s);
    if (rc)
        return rc;
    for (unsigned j = 0; j < k; j++) {
        mqs_be_msg *x = &m[idx[j]];
        MYSQL_BIND *b = c->bind + (size_t)j * MY_INS_COLS;
        c->ints[2 * j] = (int32_t)x->kind;
        c->ints[2 * j + 1] = (int32_t)x->priority;
        my_bind_i64(&b[0], &x->dest_id);
        my_bind_i32(&b[1], &c->ints[2 * j]);
        my_bind_i32(&b[2], &c->ints[2 * j + 1]);
        my_bind_i64(&b[3], &x->expires_ms);
        my_bind_i64(&b[4], &x->enqueued_ms);
        my_bind_blob(&b[5], x->headers, x->headers_len, &c->lens[2 * j]);
        my_bind_blob(&b[6], x->body, x->body_len, &c->lens[2 * j + 1]);
    }
    if (mysql_stmt_bind_param(s, c->bind) || mysql_stmt_execute(s)) {
        char what[96];
        snprintf(what, sizeof what, "inserting %u message%s into mqs_msg", k,
                 k == 1 ? "" : "s");
        return my_fail_stmt(c, s, what);
    }
    /* One "simple insert" of k rows: with innodb_autoinc_lock_mode 0/1 its
     * ids are first, first + step, ... (checked at connect). */
    uint64_t affected = (uint64_t)mysql_stmt_affected_rows(s);
    int64_t first = (int64_t)mysql_stmt_insert_id(s);
    if (affected != k || first <= 0)
        return my_errf(c, MQS_EIO,
                       "mysql: %s: INSERT of %u messages reported %" PRIu64
                       " rows and first id %" PRId64,
                       c->uri, k, affected, first);
    for (unsigned j = 0; j < k; j++)
        m[idx[j]].id = first + (int64_t)j * c->autoinc_step;
    return 0;
}

/* Subscription counts of the topics among m[0..n): sorted topic ids in
 * *tids with counts in *tcnt (caller frees both). The rows are read with
 * LOCK IN SHARE MODE so no subscription disappears before the pending rows
 * are written. */
static int my_topic_subs(mqs_be_conn *c, const mqs_be_msg *m, size_t n, int64_t **tids,
                         int64_t **tcnt, size_t *nt)
{
    size_t t = 0;
    int64_t *ids, *cnt;

    *tids = *tcnt = NULL;
    *nt = 0;
    for (size_t i = 0; i < n; i++)
        t += m[i].kind == MQS_TOPIC;
    if (!t)
        return 0;
    ids = malloc(t * sizeof *ids);
    cnt = calloc(t, sizeof *cnt);
    if (!ids || !cnt) {
        free(ids);
        free(cnt);
        return my_oom(c, "msg_insert");
    }
    t = 0;
    for (size_t i = 0; i < n; i++)
        if (m[i].kind == MQS_TOPIC)
            ids[t++] = m[i].dest_id;
    qsort(ids, t, sizeof *ids, my_cmp_i64);
    size_t u = 0;
    for (size_t i = 0; i < t; i++)
        if (u == 0 || ids[u - 1] != ids[i])
            ids[u++] = ids[i];
    *tids = ids;
    *tcnt = cnt;
    *nt = u;

    for (size_t i = 0; i < u;) {
        MYSQL_RES *res;
        MYSQL_ROW row;
        size_t k = 0;
        int rc;
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "SELECT dest_id, COUNT(*) FROM mqs_sub WHERE dest_id IN (");
        for (; i < u && k < c->in_max; i++, k++)
            my_sb_printf(&c->sql, "%s%" PRId64, k ? "," : "", ids[i]);
        my_sb_printf(&c->sql, ") GROUP BY dest_id LOCK IN SHARE MODE");
        if (c->sql.oom)
            return my_oom(c, "msg_insert");
        rc = my_query(c, "counting the subscriptions of topics", c->sql.p, c->sql.len,
                      &res);
        if (rc)
            return rc;
        while ((row = mysql_fetch_row(res))) {
            int64_t d = my_i64(row[0]);
            int64_t *hit = bsearch(&d, ids, u, sizeof *ids, my_cmp_i64);
            if (hit)
                cnt[hit - ids] = my_i64(row[1]);
        }
        mysql_free_result(res);
    }
    return 0;
}

/* Pending rows for the topic messages among m[idx[0..k)], one per
 * subscription. *rows gets how many were written. */
static int my_insert_pending(mqs_be_conn *c, const mqs_be_msg *m, const size_t *idx,
                             size_t k, uint64_t *rows)
{
    *rows = 0;
    for (size_t i = 0; i < k;) {
        size_t cnt = 0;
        uint64_t got;
        int rc;
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "INSERT INTO mqs_pending (sub_id, msg_id, priority) "
                              "SELECT s.id, m.id, m.priority FROM mqs_msg m "
                              "JOIN mqs_sub s ON s.dest_id = m.dest_id "
                              "WHERE m.kind = 1 AND m.id IN (");
        for (; i < k && cnt < c->in_max; i++)
            if (m[idx[i]].kind == MQS_TOPIC)
                my_sb_printf(&c->sql, "%s%" PRId64, cnt++ ? "," : "", m[idx[i]].id);
        if (!cnt)
            break;
        my_sb_printf(&c->sql, ")");
        rc = my_exec_sb(c, "creating subscription entries in mqs_pending", &got);
        if (rc)
            return rc;
        *rows += got;
    }
    return 0;
}

/* Safety net when the pending rows written differ from the subscription
 * count read before: a topic message left without any pending row is
 * deleted and reported as not stored (id 0), as the contract says. */
static int my_drop_orphans(mqs_be_conn *c, mqs_be_msg *m, const size_t *idx, size_t k)
{
    for (size_t i = 0; i < k;) {
        MYSQL_RES *res;
        MYSQL_ROW row;
        size_t cnt = 0;
        int rc;
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "SELECT m.id FROM mqs_msg m WHERE m.kind = 1 AND m.id IN (");
        size_t start = i;
        for (; i < k && cnt < c->in_max; i++)
            if (m[idx[i]].kind == MQS_TOPIC)
                my_sb_printf(&c->sql, "%s%" PRId64, cnt++ ? "," : "", m[idx[i]].id);
        if (!cnt)
            break;
        my_sb_printf(&c->sql, ") AND NOT EXISTS (SELECT 1 FROM mqs_pending p "
                              "WHERE p.msg_id = m.id)");
        if (c->sql.oom)
            return my_oom(c, "msg_insert");
        rc = my_query(c, "finding topic messages without subscription", c->sql.p,
                      c->sql.len, &res);
        if (rc)
            return rc;
        while ((row = mysql_fetch_row(res))) {
            int64_t id = my_i64(row[0]);
            for (size_t j = start; j < i; j++)
                if (m[idx[j]].id == id)
                    m[idx[j]].id = 0;
            char sql[96];
            snprintf(sql, sizeof sql, "DELETE FROM mqs_msg WHERE id = %" PRId64, id);
            rc = my_exec(c, "deleting a topic message without subscription", sql, NULL);
            if (rc) {
                mysql_free_result(res);
                return rc;
            }
        }
        mysql_free_result(res);
    }
    return 0;
}

static int my_msg_insert(mqs_be_conn *c, mqs_be_msg *m, size_t n)
{
    size_t limit = my_max_message(c);
    size_t budget = c->max_packet > MY_STMT_MARGIN ? c->max_packet - MY_STMT_MARGIN : 0;
    int64_t *tids = NULL, *tcnt = NULL;
    size_t nt = 0, k = 0, *idx = NULL;
    uint64_t expect = 0, got = 0;
    int rc;

    MY_CHECK_CONN(c);
    if (n == 0)
        return 0;
    /* Refuse here what the server would refuse by closing the connection. */
    for (size_t i = 0; i < n; i++) {
        m[i].id = 0;
        if (m[i].headers_len > limit || m[i].body_len > limit - m[i].headers_len)
            return my_errf(c, MQS_ETOOBIG,
                           "mysql: message %zu of %zu has %zu bytes of headers + "
                           "body, more than the %zu that fit the server's "
                           "max_allowed_packet of %lu bytes on %s; raise "
                           "max_allowed_packet (SET GLOBAL max_allowed_packet = ...; "
                           "and in the [mysqld] section of my.cnf) or send smaller "
                           "messages",
                           i + 1, n, m[i].headers_len + m[i].body_len, limit,
                           c->max_packet, c->uri);
    }
    rc = my_topic_subs(c, m, n, &tids, &tcnt, &nt);
    if (rc)
        goto out;
    idx = malloc(n * sizeof *idx);
    if (!idx) {
        rc = my_oom(c, "msg_insert");
        goto out;
    }
    /* A topic message with no subscription is not stored (id 0). */
    for (size_t i = 0; i < n; i++) {
        if (m[i].kind == MQS_TOPIC) {
            int64_t *hit = bsearch(&m[i].dest_id, tids, nt, sizeof *tids, my_cmp_i64);
            int64_t subs = hit ? tcnt[hit - tids] : 0;
            if (subs == 0)
                continue;
            expect += (uint64_t)subs;
        }
        idx[k++] = i;
    }
    /* Greedy chunks within ins_max rows and one packet, each sent as the
     * largest power of two that fits. */
    for (size_t i = 0; i < k && !rc;) {
        size_t rows = 0, bytes = 0;
        while (i + rows < k && rows < c->ins_max) {
            const mqs_be_msg *x = &m[idx[i + rows]];
            size_t b = x->headers_len + x->body_len + MY_ROW_MARGIN;
            if (rows > 0 && bytes + b > budget)
                break;
            bytes += b;
            rows++;
        }
        unsigned shift = 0;
        while ((2u << shift) <= rows)
            shift++;
        rc = my_insert_rows(c, m, idx + i, shift);
        i += (size_t)1 << shift;
    }
    if (!rc && expect)
        rc = my_insert_pending(c, m, idx, k, &got);
    if (!rc && got != expect)
        rc = my_drop_orphans(c, m, idx, k);
out:
    free(tids);
    free(tcnt);
    free(idx);
    return rc;
}

/* ------------------------------------------------------------------------
 * Reads
 * ---------------------------------------------------------------------- */

/* Stream the rows of sql to cb. *delivered counts the rows passed to cb,
 * *stopped is set if cb asked to stop. */
static int my_stream_page(mqs_be_conn *c, const char *sql, mqs_be_row_cb cb, void *ud,
                          size_t *delivered, int *stopped)
{
    MYSQL_RES *res;
    MYSQL_ROW row;

    if (mysql_real_query(c->db, sql, (unsigned long)strlen(sql)))
        return my_fail_db(c, "reading a page of pending messages", 0);
    /* Unbuffered: memory stays at one row, whatever the page size. */
    res = mysql_use_result(c->db);
    if (!res)
        return my_fail_db(c, "reading a page of pending messages", 0);
    while (!*stopped && (row = mysql_fetch_row(res))) {
        unsigned long *len = mysql_fetch_lengths(res);
        mqs_be_row r = {
            .id = my_i64(row[0]),
            .priority = (int)my_i64(row[1]),
            .expires_ms = my_i64(row[2]),
            .enqueued_ms = my_i64(row[3]),
            .redeliveries = (int32_t)my_i64(row[4]),
            .headers = row[5],
            .headers_len = row[5] ? len[5] : 0,
            .body = row[6],
            .body_len = row[6] ? len[6] : 0,
        };
        ++*delivered;
        if (cb(ud, &r))
            *stopped = 1;
    }
    if (!*stopped && mysql_errno(c->db)) {
        int rc = my_fail_db(c, "reading a page of pending messages", 0);
        mysql_free_result(res);
        return rc;
    }
    /* Reads and drops whatever the callback left. */
    mysql_free_result(res);
    if (mysql_errno(c->db))
        return my_fail_db(c, "reading a page of pending messages", 0);
    return 0;
}

/* A page is read one priority at a time, each as an index range
 * (dest_id|sub_id, priority, id > x) ORDER BY id: the OR form of the keyset
 * condition makes MariaDB scan the destination's index from its start on
 * every page, which turns a recovery quadratic. The index is forced: with
 * many deleted rows (after a mass ack, before or even after purge) the
 * optimizer sometimes picks the primary key for the ORDER BY id and reads
 * every older row of every destination (bench/scan.c: 1M dead rows, 145 ms
 * a page instead of 0.7 ms). */
static int my_page_read(mqs_be_conn *c, const mqs_be_page *p, mqs_be_row_cb cb, void *ud)
{
    char sql[512];
    size_t done = 0;
    int stopped = 0, rc = 0;
    int prio = p->after_priority;
    int64_t after = p->after_id;
    int read_now = prio <= MQS_PRIORITY_MAX;

    MY_CHECK_CONN(c);
    if (prio > MQS_PRIORITY_MAX + 1)
        prio = MQS_PRIORITY_MAX + 1;
    /* Bounded: prio strictly decreases every round. */
    while (done < p->limit && !stopped && prio >= 0) {
        if (read_now) {
            size_t left = p->limit - done;
            if (p->sub_id)
                snprintf(sql, sizeof sql,
                         "SELECT p.msg_id, p.priority, m.expires_ms, m.enqueued_ms, "
                         "p.redeliveries, m.headers, m.body FROM mqs_pending p "
                         "FORCE INDEX (mqs_pending_order) "
                         "JOIN mqs_msg m ON m.id = p.msg_id WHERE p.sub_id = %" PRId64
                         " AND p.priority = %d AND p.msg_id > %" PRId64
                         " ORDER BY p.msg_id LIMIT %zu",
                         p->sub_id, prio, after, left);
            else
                snprintf(sql, sizeof sql,
                         "SELECT id, priority, expires_ms, enqueued_ms, redeliveries, "
                         "headers, body FROM mqs_msg FORCE INDEX (mqs_msg_order) "
                         "WHERE dest_id = %" PRId64 " AND priority = %d AND id > %" PRId64
                         " AND kind = 0 ORDER BY id LIMIT %zu",
                         p->dest_id, prio, after, left);
            rc = my_stream_page(c, sql, cb, ud, &done, &stopped);
            if (rc || stopped || done >= p->limit)
                break;
        }
        /* The next lower priority that has rows: one index dive. */
        int64_t next;
        int found;
        if (p->sub_id)
            snprintf(sql, sizeof sql,
                     "SELECT priority FROM mqs_pending FORCE INDEX (mqs_pending_order) "
                     "WHERE sub_id = %" PRId64
                     " AND priority < %d ORDER BY priority DESC LIMIT 1",
                     p->sub_id, prio);
        else
            snprintf(sql, sizeof sql,
                     "SELECT priority FROM mqs_msg FORCE INDEX (mqs_msg_order) "
                     "WHERE dest_id = %" PRId64 " AND priority < %d "
                     "ORDER BY priority DESC LIMIT 1",
                     p->dest_id, prio);
        rc = my_query_i64(c, "finding the next priority with pending messages", sql, &next,
                          &found);
        if (rc || !found)
            break;
        prio = (int)next;
        after = 0;
        read_now = 1;
    }
    return rc;
}

/* The newest rows of mqs_msg, for the producer audit (ABI 2.3): the
 * clustered primary key read backwards, limit rows however deep the
 * backlog. */
static int my_msg_recent(mqs_be_conn *c, size_t limit, mqs_be_header_cb cb, void *ud)
{
    const char *what = "reading the newest messages of mqs_msg";
    char sql[96];
    MY_CHECK_CONN(c);
    snprintf(sql, sizeof sql, "SELECT id, headers FROM mqs_msg ORDER BY id DESC LIMIT %zu",
             limit);
    if (mysql_real_query(c->db, sql, (unsigned long)strlen(sql)))
        return my_fail_db(c, what, 0);
    /* Unbuffered: one row in memory at a time. */
    MYSQL_RES *res = mysql_use_result(c->db);
    if (!res)
        return my_fail_db(c, what, 0);
    MYSQL_ROW row;
    int stopped = 0;
    while (!stopped && (row = mysql_fetch_row(res))) {
        unsigned long *len = mysql_fetch_lengths(res);
        stopped = cb(ud, my_i64(row[0]), row[1], row[1] ? len[1] : 0) != 0;
    }
    int rc = 0;
    if (!stopped && mysql_errno(c->db))
        rc = my_fail_db(c, what, 0);
    /* Reads and drops whatever the callback left. */
    mysql_free_result(res);
    if (!rc && mysql_errno(c->db))
        rc = my_fail_db(c, what, 0);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Producer marks (ABI 2.1). The producer goes in as a hex literal: no
 * quoting to get wrong, whatever bytes it holds.
 * ------------------------------------------------------------------------- */
static void my_hex(char *out, const char *s)
{
    static const char hx[] = "0123456789abcdef";
    for (; *s; s++) {
        *out++ = hx[(unsigned char)*s >> 4];
        *out++ = hx[(unsigned char)*s & 15];
    }
    *out = '\0';
}

static int my_mark_put(mqs_be_conn *c, const char *producer, int64_t seq,
                       int64_t now_ms)
{
    char hex[2 * 128 + 1], sql[512];
    MY_CHECK_CONN(c);
    if (strlen(producer) > 128)
        return MQS_EINVAL;
    my_hex(hex, producer);
    snprintf(sql, sizeof sql,
             "INSERT INTO mqs_producer_mark (producer, seq, updated_ms) "
             "VALUES (X'%s', %" PRId64 ", %" PRId64 ") ON DUPLICATE KEY "
             "UPDATE seq = GREATEST(seq, VALUES(seq)), "
             "updated_ms = VALUES(updated_ms)",
             hex, seq, now_ms);
    return my_exec(c, "recording a producer mark", sql, NULL);
}

static int my_mark_list(mqs_be_conn *c, mqs_be_mark_cb cb, void *ud)
{
    static const char q[] = "SELECT producer, seq FROM mqs_producer_mark";
    MY_CHECK_CONN(c);
    if (mysql_real_query(c->db, q, sizeof q - 1))
        return my_fail_db(c, "listing producer marks", 0);
    MYSQL_RES *res = mysql_use_result(c->db);
    if (!res)
        return my_fail_db(c, "listing producer marks", 0);
    MYSQL_ROW row;
    int stopped = 0;
    while (!stopped && (row = mysql_fetch_row(res))) {
        unsigned long *len = mysql_fetch_lengths(res);
        char p[129];
        size_t n = len && len[0] < sizeof p ? len[0] : 0;
        memcpy(p, row[0] ? row[0] : "", n);
        p[n] = '\0';
        stopped = cb(ud, p, my_i64(row[1]));
    }
    int rc = 0;
    if (!stopped && mysql_errno(c->db))
        rc = my_fail_db(c, "listing producer marks", 0);
    mysql_free_result(res);
    return rc ? rc : stopped;
}

static int my_mark_prune(mqs_be_conn *c, int64_t before_ms, uint64_t *removed)
{
    char sql[128];
    MY_CHECK_CONN(c);
    snprintf(sql, sizeof sql,
             "DELETE FROM mqs_producer_mark WHERE updated_ms < %" PRId64,
             before_ms);
    return my_exec(c, "pruning producer marks", sql, removed);
}

/* The same rows without counting (dest_names): two small tables. */
static const char MY_DEST_NAMES[] =
    "SELECT d.id, d.kind, d.name, COALESCE(s.id, 0), s.name, 0, 0 "
    "FROM mqs_dest d LEFT JOIN mqs_sub s ON s.dest_id = d.id AND d.kind = 1 "
    "ORDER BY 1, 4";

/* Rows of q (dest_list's columns) to cb. */
static int my_dest_rows(mqs_be_conn *c, const char *q, size_t qlen,
                        mqs_be_dest_cb cb, void *ud);

static int my_dest_names(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud)
{
    return my_dest_rows(c, MY_DEST_NAMES, sizeof MY_DEST_NAMES - 1, cb, ud);
}

static int my_dest_list(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud)
{
    static const char q[] =
        "SELECT d.id, d.kind, d.name, 0 AS sub_id, NULL AS sub_name, "
        "  (SELECT COUNT(*) FROM mqs_msg m WHERE m.dest_id = d.id AND m.kind = 0), "
        "  (SELECT COALESCE(MIN(m.enqueued_ms), 0) FROM mqs_msg m "
        "   WHERE m.dest_id = d.id AND m.kind = 0) "
        "FROM mqs_dest d WHERE d.kind = 0 "
        "UNION ALL "
        "SELECT d.id, d.kind, d.name, s.id, s.name, "
        "  (SELECT COUNT(*) FROM mqs_pending p WHERE p.sub_id = s.id), "
        "  (SELECT COALESCE(MIN(m.enqueued_ms), 0) FROM mqs_pending p "
        "   JOIN mqs_msg m ON m.id = p.msg_id WHERE p.sub_id = s.id) "
        "FROM mqs_dest d JOIN mqs_sub s ON s.dest_id = d.id WHERE d.kind = 1 "
        "UNION ALL "
        "SELECT d.id, d.kind, d.name, 0, NULL, 0, 0 FROM mqs_dest d "
        "WHERE d.kind = 1 AND NOT EXISTS (SELECT 1 FROM mqs_sub s WHERE s.dest_id = d.id) "
        "ORDER BY 1, 4";
    return my_dest_rows(c, q, sizeof q - 1, cb, ud);
}

static int my_dest_rows(mqs_be_conn *c, const char *q, size_t qlen,
                        mqs_be_dest_cb cb, void *ud)
{
    MYSQL_RES *res;
    MYSQL_ROW row;
    int stopped = 0;

    MY_CHECK_CONN(c);
    if (mysql_real_query(c->db, q, qlen))
        return my_fail_db(c, "listing destinations", 0);
    res = mysql_use_result(c->db);
    if (!res)
        return my_fail_db(c, "listing destinations", 0);
    while (!stopped && (row = mysql_fetch_row(res))) {
        mqs_be_dest d = {
            .dest_id = my_i64(row[0]),
            .kind = my_i64(row[1]) ? MQS_TOPIC : MQS_QUEUE,
            .name = row[2] ? row[2] : "",
            .sub_id = my_i64(row[3]),
            .sub_name = row[4],
            .pending = (uint64_t)my_i64(row[5]),
            .oldest_ms = my_i64(row[6]),
        };
        if (cb(ud, &d))
            stopped = 1;
    }
    int rc = 0;
    if (!stopped && mysql_errno(c->db))
        rc = my_fail_db(c, "listing destinations", 0);
    mysql_free_result(res);
    if (!rc && mysql_errno(c->db))
        rc = my_fail_db(c, "listing destinations", 0);
    return rc;
}

/* ------------------------------------------------------------------------
 * Exclusive lock (ABI 2.0)
 * ---------------------------------------------------------------------- */

/* The database clock, UNIX ms (session time_zone is UTC). */
#define MY_NOW_MS "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)"

static int64_t my_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A name as a hex literal: no quoting or charset question can arise. */
static void my_sb_hex(my_sb *b, const char *s)
{
    my_sb_printf(b, "X'");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        my_sb_printf(b, "%02x", *p);
    my_sb_printf(b, "'");
}

/* The GET_LOCK name of a cluster's session lock: per database and
 * cluster, within the 64 characters MySQL allows. */
static void my_sb_session_name(my_sb *b, const char *cluster)
{
    my_sb_printf(b, "CONCAT('mqs-session-', MD5(CONCAT(DATABASE(), '/', ");
    my_sb_hex(b, cluster);
    my_sb_printf(b, ")))");
}

/* Lock statements on a database still at schema 1 fail with a message
 * that says what to do. */
static int my_lock_fail(mqs_be_conn *c, const char *what)
{
    if (mysql_errno(c->db) == MY_ER_NO_SUCH_TABLE)
        return my_errf(c, MQS_ESCHEMA,
                       "mysql: %s has no mqs_lock table: the exclusive lock needs "
                       "schema version 2 (002_lock.sql); run `mqstore migrate URI` "
                       "or open the store with migrate=auto",
                       c->uri);
    return my_fail_db(c, what, 0);
}

static int my_lock_exec(mqs_be_conn *c, const char *what, uint64_t *affected)
{
    if (c->sql.oom)
        return my_oom(c, what);
    if (mysql_real_query(c->db, c->sql.p, (unsigned long)c->sql.len))
        return my_lock_fail(c, what);
    if (affected)
        *affected = (uint64_t)mysql_affected_rows(c->db);
    return 0;
}

/* The server instance, read once per connection: its start time (whole
 * seconds) in the high 32 bits and @@server_id in the low 32. The start
 * time alone cannot tell two servers started in the same second apart: a
 * primary and a replica set up together were one "instance" to the crash
 * detector, and after a switchover a standby took over on the new primary
 * at once, with the old master's lease still running
 * (tests/replication/test_mariadb_switchover.py). Replication requires
 * distinct server ids, so the id separates exactly those. Failing to read
 * it (no access to the status tables) only disarms the crash detector. */
static int my_epoch(mqs_be_conn *c)
{
    /* Integer arithmetic throughout: VARIABLE_VALUE is a string, and a
     * string in arithmetic makes a DOUBLE that drops the id's bits. */
    static const char maria[] =
        "SELECT ((UNIX_TIMESTAMP() - CAST(VARIABLE_VALUE AS SIGNED)) << 32) | "
        "@@server_id FROM information_schema.GLOBAL_STATUS "
        "WHERE VARIABLE_NAME = 'UPTIME'";
    static const char oracle[] =
        "SELECT ((UNIX_TIMESTAMP() - CAST(VARIABLE_VALUE AS SIGNED)) << 32) | "
        "@@server_id FROM performance_schema.global_status "
        "WHERE VARIABLE_NAME = 'Uptime'";
    int64_t v = 0;
    int found = 0;

    if (c->epoch_read)
        return 0;
    int rc = my_query_i64(c, "reading the server's uptime and id", c->is_mariadb ? maria : oracle,
                          &v, &found);
    if (rc && c->broken)
        return rc;
    c->epoch = !rc && found && v > 0 ? v : 0;
    c->epoch_read = 1;
    return 0;
}

/* Both recorded under the server instance this connection talks to: the
 * same server id, and start times (derived from whole seconds of uptime)
 * at most one apart. A value in the old form (start time only, before
 * the id was added) matches nothing: the detector then waits for the
 * lease, the safe side. */
static int my_same_epoch(const mqs_be_conn *c, int64_t e)
{
    if (c->epoch <= 0 || e <= 0)
        return 0;
    int64_t cs = c->epoch >> 32, es = e >> 32;
    return (c->epoch & 0xffffffff) == (e & 0xffffffff) && cs > 0 &&
           es >= cs - 1 && es <= cs + 1;
}

struct my_lock_row {
    int found;
    int held; /* holder is not NULL */
    char holder[256];
    int64_t token;
    int lease_valid;
    int64_t lease_until, acquired;
    int64_t session_id; /* 0: none recorded under this server instance */
    int64_t now;        /* database clock at the read */
    int64_t lock_user;  /* IS_USED_LOCK(session lock), 0 if free */
};

/* Read the row of cluster; for_update locks it (inside a transaction). */
static int my_lock_load(mqs_be_conn *c, const char *cluster, int for_update,
                        struct my_lock_row *r)
{
    MYSQL_RES *res;
    MYSQL_ROW row;

    memset(r, 0, sizeof *r);
    my_sb_reset(&c->sql);
    my_sb_printf(&c->sql, "SELECT holder, token, lease_until_ms, acquired_ms, session_id, "
                          "session_epoch, " MY_NOW_MS ", IS_USED_LOCK(");
    my_sb_session_name(&c->sql, cluster);
    my_sb_printf(&c->sql, ") FROM mqs_lock WHERE cluster = ");
    my_sb_hex(&c->sql, cluster);
    if (for_update)
        my_sb_printf(&c->sql, " FOR UPDATE");
    if (c->sql.oom)
        return my_oom(c, "reading the lock");
    if (mysql_real_query(c->db, c->sql.p, (unsigned long)c->sql.len))
        return my_lock_fail(c, "reading the lock row from mqs_lock");
    res = mysql_store_result(c->db);
    if (!res)
        return my_lock_fail(c, "reading the lock row from mqs_lock");
    row = mysql_fetch_row(res);
    if (row) {
        r->found = 1;
        r->held = row[0] != NULL;
        if (row[0])
            snprintf(r->holder, sizeof r->holder, "%s", row[0]);
        r->token = my_i64(row[1]);
        r->lease_valid = row[2] && row[3];
        r->lease_until = my_i64(row[2]);
        r->acquired = my_i64(row[3]);
        if (row[4] && row[5] && my_same_epoch(c, my_i64(row[5])))
            r->session_id = my_i64(row[4]);
        r->now = my_i64(row[6]);
        r->lock_user = my_i64(row[7]);
    }
    mysql_free_result(res);
    return 0;
}

static void my_lock_fill(mqs_be_lock_state *st, const struct my_lock_row *r)
{
    memset(st, 0, sizeof *st);
    st->token = r->token;
    if (!r->held)
        return;
    snprintf(st->holder, sizeof st->holder, "%s", r->holder);
    if (r->lease_valid) {
        st->lease_left_ms = r->lease_until - r->now;
        st->held_ms = r->now - r->acquired;
    }
    st->session_armed = r->session_id > 0;
}

/* SET clause for the session columns: this node's session when the server
 * confirms that connection holds the session lock right now. */
static void my_sb_session_set(mqs_be_conn *c, const mqs_be_lock *l)
{
    if (l->session_id <= 0 || c->epoch <= 0) {
        my_sb_printf(&c->sql, "session_id = NULL, session_epoch = NULL");
        return;
    }
    for (int i = 0; i < 2; i++) {
        my_sb_printf(&c->sql, "%s = IF(IS_USED_LOCK(", i ? ", session_epoch" : "session_id");
        my_sb_session_name(&c->sql, l->cluster);
        my_sb_printf(&c->sql, ") = %" PRId64 ", %" PRId64 ", NULL)", l->session_id,
                     i ? c->epoch : l->session_id);
    }
}

/* Roll back the lock's own transaction, keeping the failure's message. */
static int my_lock_abort(mqs_be_conn *c, int rc)
{
    if (!c->broken) {
        char keep[sizeof c->err];
        memcpy(keep, c->err, sizeof keep);
        (void)my_exec(c, "ROLLBACK", "ROLLBACK", NULL);
        memcpy(c->err, keep, sizeof keep);
    }
    return rc;
}

/* innodb_lock_wait_timeout, in seconds, for a wait of at most wait_ms (0:
 * about a second): whole seconds, at least 1 (MySQL's minimum), and short
 * of read_timeout, which would otherwise declare the connection lost. */
static int my_wait_s(const mqs_be_conn *c, int64_t wait_ms)
{
    int64_t s = wait_ms > 0 ? wait_ms / 1000 + (wait_ms % 1000 != 0) : 1;
    if (c->read_timeout && s > (int64_t)c->read_timeout / 2)
        s = (int64_t)c->read_timeout / 2;
    if (s > 86400)
        s = 86400;
    return s < 1 ? 1 : (int)s;
}

/* Set this session's innodb_lock_wait_timeout to s seconds (0: back to the
 * server's default), unless the cache says it already is. */
static int my_lock_wait_set(mqs_be_conn *c, int s)
{
    char q[80];
    int rc;

    if (c->lock_wait_s == s)
        return 0;
    if (s > 0)
        snprintf(q, sizeof q, "SET SESSION innodb_lock_wait_timeout = %d", s);
    else
        snprintf(q, sizeof q, "SET SESSION innodb_lock_wait_timeout = DEFAULT");
    c->lock_wait_s = -1; /* unknown until the SET succeeded */
    rc = my_exec(c, "setting innodb_lock_wait_timeout", q, NULL);
    if (!rc)
        c->lock_wait_s = s;
    return rc;
}

/* Bound the row-lock waits of the lock statements that follow by wait_ms.
 * A "lock" connection serves nothing else, so the setting stays (set once
 * per connection, then cached). A pooled connection also serves writes,
 * which need the server's default: *prev says what my_wait_end puts back,
 * and only when this call changed it. */
static int my_wait_begin(mqs_be_conn *c, int64_t wait_ms, int *prev)
{
    int want = my_wait_s(c, wait_ms);
    *prev = c->lock_conn ? want : c->lock_wait_s;
    return my_lock_wait_set(c, want);
}

static void my_wait_end(mqs_be_conn *c, int prev)
{
    if (c->broken || prev == c->lock_wait_s)
        return;
    /* A failed restore leaves lock_wait_s unknown (-1), so the next lock
     * statement sets it again; it does not undo what committed. */
    char keep[sizeof c->err];
    memcpy(keep, c->err, sizeof keep);
    (void)my_lock_wait_set(c, prev > 0 ? prev : 0);
    memcpy(c->err, keep, sizeof keep);
}

/* The lock may be taken: no row yet, free, lease expired by the database
 * clock, or the caller holds the session lock now (holder_gone) and the
 * server says the holder's recorded connection does not. */
static int my_lock_takeable(const struct my_lock_row *r, const mqs_be_lock *l)
{
    return !r->found || !r->held || !r->lease_valid || r->lease_until <= r->now ||
           (l->holder_gone && r->session_id > 0 && r->lock_user != r->session_id);
}

static int my_lock_busy(mqs_be_conn *c, const mqs_be_lock *l, mqs_be_lock_state *st,
                        const struct my_lock_row *r)
{
    my_lock_fill(st, r);
    return my_errf(c, MQS_EBUSY,
                   "mysql: the lock of cluster '%s' in %s is held by node %s "
                   "(token %" PRId64 ", lease %" PRId64 " ms left, held for %" PRId64
                   " ms, crash detector %s)",
                   l->cluster, c->uri, st->holder, st->token, st->lease_left_ms,
                   st->held_ms, st->session_armed ? "armed" : "not armed");
}

/* The locking part of an acquire, in its own transaction: create the row
 * if the poll found none, lock it (X: waits for the share lock of any
 * fence check in flight, so the old holder's last commit ends first),
 * check again, take it. */
static int my_lock_acquire_txn(mqs_be_conn *c, const mqs_be_lock *l,
                               mqs_be_lock_state *st, int found)
{
    struct my_lock_row r;
    uint64_t changed = 0;
    int rc;
    if ((rc = my_txn_begin(c)))
        return rc;
    if (!found) {
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "INSERT INTO mqs_lock (cluster) VALUES (");
        my_sb_hex(&c->sql, l->cluster);
        my_sb_printf(&c->sql, ") ON DUPLICATE KEY UPDATE cluster = cluster");
        if ((rc = my_lock_exec(c, "creating the lock row in mqs_lock", NULL)))
            return my_lock_abort(c, rc);
    }
    if ((rc = my_lock_load(c, l->cluster, 1, &r)))
        return my_lock_abort(c, rc);
    if (!r.found)
        return my_lock_abort(c, my_errf(c, MQS_EIO,
                                        "mysql: the lock row of cluster '%s' vanished "
                                        "from %s while it was being acquired",
                                        l->cluster, c->uri));
    /* The row is locked from here to COMMIT. */
    if (!my_lock_takeable(&r, l)) {
        rc = my_lock_busy(c, l, st, &r);
        return my_lock_abort(c, rc);
    }
    my_sb_reset(&c->sql);
    my_sb_printf(&c->sql, "UPDATE mqs_lock SET holder = ");
    my_sb_hex(&c->sql, l->node);
    my_sb_printf(&c->sql,
                 ", token = token + 1, lease_until_ms = " MY_NOW_MS " + %" PRId64
                 ", acquired_ms = " MY_NOW_MS ", ",
                 l->lease_ms);
    my_sb_session_set(c, l);
    my_sb_printf(&c->sql, " WHERE cluster = ");
    my_sb_hex(&c->sql, l->cluster);
    if ((rc = my_lock_exec(c, "taking the lock in mqs_lock", &changed)))
        return my_lock_abort(c, rc);
    if (changed != 1)
        return my_lock_abort(c, my_errf(c, MQS_EIO,
                                        "mysql: the lock row of cluster '%s' vanished "
                                        "from %s inside the acquiring transaction",
                                        l->cluster, c->uri));
    if ((rc = my_txn_commit(c)))
        return rc;
    snprintf(st->holder, sizeof st->holder, "%s", l->node);
    st->token = r.token + 1;
    st->lease_left_ms = l->lease_ms;
    st->held_ms = 0;
    st->session_armed = l->session_id > 0 && c->epoch > 0 && r.lock_user == l->session_id;
    return 0;
}

/* Standbys call this every poll_ms. While a live holder's lease stands it
 * is one plain read (a consistent read: no lock, no wait, no write,
 * nothing in the server's log). Only a takeable lock gets the locking
 * transaction, its row-lock wait bounded by l->wait_ms (see
 * my_wait_begin). */
static int my_lock_acquire(mqs_be_conn *c, const mqs_be_lock *l, mqs_be_lock_state *st)
{
    struct my_lock_row r;
    int rc;

    memset(st, 0, sizeof *st);
    MY_CHECK_CONN(c);
    if ((rc = my_not_in_txn(c, "lock_acquire")) || (rc = my_epoch(c)) ||
        (rc = my_lock_load(c, l->cluster, 0, &r)))
        return rc;
    if (!my_lock_takeable(&r, l))
        return my_lock_busy(c, l, st, &r);
    int prev;
    if (!(rc = my_wait_begin(c, l->wait_ms, &prev)))
        rc = my_lock_acquire_txn(c, l, st, r.found);
    my_wait_end(c, prev);
    return rc;
}

/* A renewal or fence check did not match: say who holds the lock now (r:
 * the row as read after the failure). margin_ms >= 0 for a fence check,
 * whose row may still name this node and token with too little lease. */
static int my_lock_fenced_msg(mqs_be_conn *c, const char *cluster, const char *node,
                              int64_t token, int64_t margin_ms,
                              const struct my_lock_row *r)
{
    if (!r->found)
        return my_errf(c, MQS_EFENCED,
                       "mysql: the lock of cluster '%s' has no row in %s any more; node "
                       "%s (token %" PRId64 ") was fenced",
                       cluster, c->uri, node, token);
    if (!r->held)
        return my_errf(c, MQS_EFENCED,
                       "mysql: the lock of cluster '%s' is now free (token %" PRId64
                       "); node %s (token %" PRId64 ") was fenced",
                       cluster, r->token, node, token);
    if (margin_ms >= 0 && r->token == token && strcmp(r->holder, node) == 0)
        return my_errf(c, MQS_EFENCED,
                       "mysql: node %s still holds the lock of cluster '%s' (token "
                       "%" PRId64 ") but its lease has %" PRId64 " ms left by the "
                       "database clock, less than the %" PRId64 " ms a commit needs; "
                       "fenced, the transaction was not committed",
                       node, cluster, token,
                       r->lease_valid ? r->lease_until - r->now : 0, margin_ms);
    return my_errf(c, MQS_EFENCED,
                   "mysql: the lock of cluster '%s' is now held by %s (token %" PRId64
                   "); node %s (token %" PRId64 ") was fenced",
                   cluster, r->holder, r->token, node, token);
}

/* The renewal matched no row with our holder and token: say who has it. */
static int my_lock_fenced(mqs_be_conn *c, const mqs_be_lock *l)
{
    struct my_lock_row r;
    if (my_lock_load(c, l->cluster, 0, &r) != 0)
        return my_errf(c, MQS_EFENCED,
                       "mysql: node %s (token %" PRId64 ") no longer holds the lock of "
                       "cluster '%s' and was fenced (the current holder could not be "
                       "read: %s)",
                       l->node, l->token, l->cluster, c->err);
    return my_lock_fenced_msg(c, l->cluster, l->node, l->token, -1, &r);
}

static int my_lock_renew_run(mqs_be_conn *c, const mqs_be_lock *l,
                             mqs_be_lock_state *st)
{
    struct my_lock_row r;
    uint64_t matched = 0;
    int rc;

    my_sb_reset(&c->sql);
    my_sb_printf(&c->sql,
                 "UPDATE mqs_lock SET lease_until_ms = " MY_NOW_MS " + %" PRId64 ", ",
                 l->lease_ms);
    my_sb_session_set(c, l);
    my_sb_printf(&c->sql, " WHERE cluster = ");
    my_sb_hex(&c->sql, l->cluster);
    my_sb_printf(&c->sql, " AND holder = ");
    my_sb_hex(&c->sql, l->node);
    my_sb_printf(&c->sql, " AND token = %" PRId64, l->token);
    if ((rc = my_lock_exec(c, "renewing the lease in mqs_lock", &matched)))
        return rc;
    if (matched != 1)
        return my_lock_fenced(c, l);
    if ((rc = my_lock_load(c, l->cluster, 0, &r)))
        return rc;
    my_lock_fill(st, &r);
    return 0;
}

/* Runs on the lease connection, outside any write transaction. One
 * autocommitted UPDATE is its own transaction: the row's X lock is held
 * only while the server executes and commits it, never across a round trip
 * (a fence check waiting behind it waits for no client). Its wait for the
 * row lock (a commit's fence check: one COMMIT; a takeover: a few round
 * trips) is bounded by innodb_lock_wait_timeout (see my_wait_begin: set
 * once on the lease connection); a timeout is MQS_EBUSY. */
static int my_lock_renew(mqs_be_conn *c, const mqs_be_lock *l, mqs_be_lock_state *st)
{
    int prev, rc;

    memset(st, 0, sizeof *st);
    MY_CHECK_CONN(c);
    if ((rc = my_not_in_txn(c, "lock_renew")) || (rc = my_epoch(c)))
        return rc;
    if (!(rc = my_wait_begin(c, l->wait_ms, &prev)))
        rc = my_lock_renew_run(c, l, st);
    my_wait_end(c, prev);
    return rc;
}

/* Session settings of a connection that runs fenced write transactions,
 * once per connection (MariaDB only; MySQL has neither). MariaDB closes the
 * connection of a transaction idle longer than idle_write_transaction_timeout,
 * which frees the row locks of a master frozen mid-transaction, and the
 * share lock of a fence check frozen before its COMMIT, which would hold
 * off every takeover. Write transactions are short (the core sends their
 * statements back to back), so about one lease is right:
 *     max(1, ceil(lease_ms / 1000)) seconds.
 * idle_transaction_timeout gets the same value: a transaction whose writes
 * changed no row counts as read-only for MariaDB, yet its fence check holds
 * the share lock until COMMIT. */
static int my_fence_session(mqs_be_conn *c, int64_t lease_ms)
{
    int64_t m = lease_ms < 0 ? 0 : lease_ms > 31536000000LL ? 31536000000LL : lease_ms;
    int want = (int)((m + 999) / 1000);
    char q[160];

    if (want < 1)
        want = 1;
    if (!c->is_mariadb || c->idle_write_s == want || c->idle_write_s == -1)
        return 0;
    snprintf(q, sizeof q,
             "SET SESSION idle_write_transaction_timeout = %d, "
             "idle_transaction_timeout = %d",
             want, want);
    if (mysql_real_query(c->db, q, (unsigned long)strlen(q)) == 0)
        c->idle_write_s = want;
    else if (mysql_errno(c->db) == 1193) /* unknown variable: before 10.3 */
        c->idle_write_s = -1;
    else
        return my_fail_db(c, "setting idle_write_transaction_timeout", 0);
    return 0;
}

/* Called right after txn_begin. Only records the fence (and sets up the
 * session once): the check itself runs in txn_commit, after the last
 * write, so the share lock it takes is held for the COMMIT only and
 * lock_renew never waits longer than that. */
static int my_lock_fence(mqs_be_conn *c, const mqs_be_fence *f)
{
    int rc;

    MY_CHECK_CONN(c);
    if (!f || !f->cluster || !f->node)
        return my_errf(c, MQS_EINVAL, "mysql: lock_fence without cluster or node");
    if ((rc = my_fence_session(c, f->lease_ms)))
        return rc;
    if (!c->fence_cluster || strcmp(c->fence_cluster, f->cluster) != 0) {
        char *x = strdup(f->cluster);
        if (!x)
            return my_oom(c, "lock_fence");
        free(c->fence_cluster);
        c->fence_cluster = x;
    }
    if (!c->fence_node || strcmp(c->fence_node, f->node) != 0) {
        char *x = strdup(f->node);
        if (!x)
            return my_oom(c, "lock_fence");
        free(c->fence_node);
        c->fence_node = x;
    }
    c->fence_token = f->token;
    c->fence_margin_ms = f->margin_ms > 0 ? f->margin_ms : 0;
    c->fence_on = 1;
    return 0;
}

/* The fence check, txn_commit's last statement before COMMIT: a locking
 * read (S record lock) of the lock row by primary key. A locking read
 * reads the newest committed version, not the transaction's snapshot, and
 * waits for an X lock held by a takeover or renewal in flight. The match is
 * computed by the server (bytes of holder, token, lease left by its
 * clock); the row comes back too, for the message. */
static int my_fence_check(mqs_be_conn *c)
{
    static const char what[] = "checking the fence (locking read of the mqs_lock row)";
    struct my_lock_row r;
    MYSQL_RES *res;
    MYSQL_ROW row;
    int ok = 0;

    my_sb_reset(&c->sql);
    my_sb_printf(&c->sql, "SELECT holder, token, lease_until_ms, " MY_NOW_MS ", holder = ");
    my_sb_hex(&c->sql, c->fence_node);
    my_sb_printf(&c->sql,
                 " AND token = %" PRId64 " AND lease_until_ms - " MY_NOW_MS " >= %" PRId64
                 " FROM mqs_lock WHERE cluster = ",
                 c->fence_token, c->fence_margin_ms);
    my_sb_hex(&c->sql, c->fence_cluster);
    my_sb_printf(&c->sql, " LOCK IN SHARE MODE");
    if (c->sql.oom)
        return my_oom(c, what);
    if (mysql_real_query(c->db, c->sql.p, (unsigned long)c->sql.len))
        return my_lock_fail(c, what);
    if (!(res = mysql_store_result(c->db)))
        return my_lock_fail(c, what);
    memset(&r, 0, sizeof r);
    if ((row = mysql_fetch_row(res))) {
        r.found = 1;
        r.held = row[0] != NULL;
        if (row[0])
            snprintf(r.holder, sizeof r.holder, "%s", row[0]);
        r.token = my_i64(row[1]);
        r.lease_valid = row[2] != NULL;
        r.lease_until = my_i64(row[2]);
        r.now = my_i64(row[3]);
        ok = row[4] && my_i64(row[4]) == 1;
    }
    mysql_free_result(res);
    if (ok)
        return 0;
    return my_lock_fenced_msg(c, c->fence_cluster, c->fence_node, c->fence_token,
                              c->fence_margin_ms, &r);
}

/* Release (node != NULL: only where holder and token match) or force the
 * lock free, in its own transaction. The token stays. The UPDATE takes the
 * row's X lock, so a force, like an acquire, commits only after the fence
 * check of any commit in flight. */
static int my_lock_clear(mqs_be_conn *c, const char *cluster, const char *node,
                         int64_t token)
{
    int rc;

    MY_CHECK_CONN(c);
    if ((rc = my_not_in_txn(c, node ? "lock_release" : "lock_force")) ||
        (rc = my_txn_begin(c)))
        return rc;
    my_sb_reset(&c->sql);
    my_sb_printf(&c->sql, "UPDATE mqs_lock SET holder = NULL, lease_until_ms = NULL, "
                          "acquired_ms = NULL, session_id = NULL, session_epoch = NULL "
                          "WHERE cluster = ");
    my_sb_hex(&c->sql, cluster);
    if (node) {
        my_sb_printf(&c->sql, " AND holder = ");
        my_sb_hex(&c->sql, node);
        my_sb_printf(&c->sql, " AND token = %" PRId64, token);
    }
    if ((rc = my_lock_exec(c, node ? "releasing the lock in mqs_lock"
                                   : "forcing the lock free in mqs_lock",
                           NULL)))
        return my_lock_abort(c, rc);
    return my_txn_commit(c);
}

static int my_lock_release(mqs_be_conn *c, const mqs_be_lock *l)
{
    return my_lock_clear(c, l->cluster, l->node, l->token);
}

static int my_lock_force(mqs_be_conn *c, const char *cluster)
{
    return my_lock_clear(c, cluster, NULL, 0);
}

static int my_lock_read(mqs_be_conn *c, const char *cluster, mqs_be_lock_state *st)
{
    struct my_lock_row r;
    int rc;

    memset(st, 0, sizeof *st);
    MY_CHECK_CONN(c);
    if ((rc = my_epoch(c)) || (rc = my_lock_load(c, cluster, 0, &r)))
        return rc;
    my_lock_fill(st, &r);
    return 0;
}

/* ---- session lock (crash detector) ---- */

static int my_session_lock(mqs_be_conn *c, const char *cluster, int64_t wait_ms,
                           int64_t *session_id)
{
    int64_t deadline, got, found;
    int rc;

    *session_id = 0;
    MY_CHECK_CONN(c);
    if (c->sess_cluster) {
        if (strcmp(c->sess_cluster, cluster) != 0)
            return my_errf(c, MQS_EINVAL,
                           "mysql: this connection holds the session lock of cluster "
                           "'%s'; it cannot also take that of '%s' (one cluster per "
                           "connection)",
                           c->sess_cluster, cluster);
        /* Alive check: one round trip that also proves we still hold it. */
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "SELECT IS_USED_LOCK(");
        my_sb_session_name(&c->sql, cluster);
        my_sb_printf(&c->sql, ") = CONNECTION_ID()");
        int f;
        if (c->sql.oom)
            return my_oom(c, "session_lock");
        rc = my_query_i64(c, "checking the session lock", c->sql.p, &got, &f);
        if (rc)
            return rc;
        if (!f || got != 1) {
            free(c->sess_cluster);
            c->sess_cluster = NULL;
            return my_errf(c, MQS_ECONN,
                           "mysql: the session lock of cluster '%s' on %s is no longer "
                           "held by this connection",
                           cluster, c->uri);
        }
        *session_id = c->sess_id;
        return 0;
    }
    /* A GET_LOCK wait must end before read_timeout declares the connection
     * dead; longer waits are cut in slices. */
    int64_t slice = 10000;
    if (c->read_timeout && (int64_t)c->read_timeout * 1000 / 2 < slice)
        slice = (int64_t)c->read_timeout * 1000 / 2;
    deadline = wait_ms < 0 ? INT64_MAX : my_mono_ms() + wait_ms;
    for (;;) {
        int64_t left = deadline == INT64_MAX ? slice : deadline - my_mono_ms();
        if (left < 0)
            left = 0;
        if (left > slice)
            left = slice;
        /* MySQL rounds the timeout to whole seconds; MariaDB takes ms. */
        if (!c->is_mariadb)
            left = left / 1000 * 1000;
        my_sb_reset(&c->sql);
        my_sb_printf(&c->sql, "SELECT GET_LOCK(");
        my_sb_session_name(&c->sql, cluster);
        my_sb_printf(&c->sql, ", %" PRId64 ".%03d), CONNECTION_ID()", left / 1000,
                     (int)(left % 1000));
        if (c->sql.oom)
            return my_oom(c, "session_lock");
        MYSQL_RES *res;
        if ((rc = my_query(c, "taking the session lock (GET_LOCK)", c->sql.p, c->sql.len,
                           &res)))
            return rc;
        MYSQL_ROW row = mysql_fetch_row(res);
        found = row && row[0];
        got = found ? my_i64(row[0]) : -1;
        int64_t id = row && row[1] ? my_i64(row[1]) : 0;
        mysql_free_result(res);
        if (!found)
            return my_errf(c, MQS_EIO,
                           "mysql: GET_LOCK for the session lock of cluster '%s' on %s "
                           "returned NULL (killed or out of memory)",
                           cluster, c->uri);
        if (got == 1) {
            c->sess_cluster = strdup(cluster);
            if (!c->sess_cluster) {
                my_sb_reset(&c->sql);
                my_sb_printf(&c->sql, "DO RELEASE_LOCK(");
                my_sb_session_name(&c->sql, cluster);
                my_sb_printf(&c->sql, ")");
                if (!c->sql.oom)
                    (void)my_exec_sb(c, "releasing the session lock", NULL);
                return my_oom(c, "session_lock");
            }
            c->sess_id = id;
            *session_id = id;
            return 0;
        }
        int64_t rest = deadline == INT64_MAX ? slice : deadline - my_mono_ms();
        if (rest <= 0)
            return my_errf(c, MQS_EBUSY,
                           "mysql: the session lock of cluster '%s' on %s is held by "
                           "another connection (waited %" PRId64 " ms)",
                           cluster, c->uri, wait_ms > 0 ? wait_ms : 0);
        if (rest < 1000 && !c->is_mariadb) {
            /* Sub-second rest on MySQL: sleep it, then try once more. */
            struct timespec ts = {0, (long)rest * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
}

static int my_session_unlock(mqs_be_conn *c, const char *cluster)
{
    if (!c->sess_cluster || strcmp(c->sess_cluster, cluster) != 0)
        return 0;
    free(c->sess_cluster);
    c->sess_cluster = NULL;
    c->sess_id = 0;
    MY_CHECK_CONN(c); /* a lost connection released it already */
    my_sb_reset(&c->sql);
    my_sb_printf(&c->sql, "DO RELEASE_LOCK(");
    my_sb_session_name(&c->sql, cluster);
    my_sb_printf(&c->sql, ")");
    return my_exec_sb(c, "releasing the session lock (RELEASE_LOCK)", NULL);
}

/* ------------------------------------------------------------------------
 * The table
 * ---------------------------------------------------------------------- */

static const char *const my_schemes[] = {"mysql", "mariadb", NULL};

static const mqs_backend my_backend = {
    .magic = MQS_BACKEND_MAGIC,
    .abi_major = MQS_BACKEND_ABI_MAJOR,
    .abi_minor = MQS_BACKEND_ABI_MINOR,
    .struct_size = sizeof(mqs_backend),
    .name = "mysql",
    .version = MY_VERSION,
    .schemes = my_schemes,
    .migrations = mqs_schema_mysql,
    .n_migrations = MQS_SCHEMA_MYSQL_COUNT,
    .options = my_options,
    .n_options = MY_N_OPTIONS,
    .conn_open = my_conn_open,
    .conn_close = my_conn_close,
    .conn_errmsg = my_conn_errmsg,
    .conn_max_message = my_conn_max_message,
    .schema_version = my_schema_version,
    .schema_apply = my_schema_apply,
    .txn_begin = my_txn_begin,
    .txn_commit = my_txn_commit,
    .txn_rollback = my_txn_rollback,
    .dest_resolve = my_dest_resolve,
    .msg_insert = my_msg_insert,
    .msg_ack = my_msg_ack,
    .msg_nack = my_msg_nack,
    .sub_create = my_sub_create,
    .sub_remove = my_sub_remove,
    .purge = my_purge,
    .sub_lookup = my_sub_lookup,
    .page_read = my_page_read,
    .dest_list = my_dest_list,
    .dest_names = my_dest_names,
    .lock_acquire = my_lock_acquire,
    .lock_renew = my_lock_renew,
    .lock_release = my_lock_release,
    .lock_read = my_lock_read,
    .lock_force = my_lock_force,
    .lock_fence = my_lock_fence,
    .session_lock = my_session_lock,
    .session_unlock = my_session_unlock,
    .mark_put = my_mark_put,
    .mark_list = my_mark_list,
    .mark_prune = my_mark_prune,
    .msg_recent = my_msg_recent,
};

MQS_BACKEND_EXPORT const mqs_backend *MQS_BACKEND_ENTRY(void)
{
    return &my_backend;
}
