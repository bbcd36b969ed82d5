/*
 * mysql_int.h - private to mqstore_mysql.so (not installed): the connection
 * struct and what the files of the backend share. Only the entry point
 * (mysql.c) is exported; everything here has hidden visibility.
 */
#ifndef MQS_MYSQL_INT_H
#define MQS_MYSQL_INT_H

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
#include <time.h>

#include <mysql.h>

#include <mqstore/backend.h>

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

/* The database clock in Unix ms (session time_zone is UTC): leases and
 * the fence are judged by it, never by a node's own clock. */
#define MY_NOW_MS "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)"

/* Prepared statements with string parameters (everything else is SQL text
 * with integers and hex literals only). */
enum {
    MY_ST_DEST_GET,
    MY_ST_DEST_ADD,
    MY_ST_SUB_GET,
    MY_ST_SUB_ADD,
    MY_ST_SUB_LOOKUP,
    MY_ST_INS_FENCED,
    MY_ST_COUNT
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
    /* A write transaction begins lazily (txn_begin sends nothing):
     * start_pending until its first statement, which my_txn_start
     * precedes with START TRANSACTION. A lone insert of queue messages
     * that fits one statement is held (held, held_n: the core's array,
     * valid until commit) instead: if nothing else comes, txn_commit runs
     * it autocommitted, one round trip instead of three (with a fence and
     * one message: the fence's locking read inside the INSERT, instead of
     * four). in_autocommit_write makes a lost connection during it
     * MQS_EUNKNOWN, as during COMMIT. */
    int start_pending;
    mqs_be_msg *held;
    size_t held_n;
    int in_autocommit_write;
    /* The held insert ran autocommitted (txn_commit) and failed: nothing
     * is open on the server, and a second txn_commit must fail as well,
     * not commit an empty transaction. Cleared by txn_begin/rollback. */
    int held_failed;
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

/* Before any statement that may belong to a write transaction: what a
 * lazily begun one owes first (START TRANSACTION, the held insert). */
int my_txn_start(mqs_be_conn *c);
#define MY_TXN_START(c)                                                      \
    do {                                                                     \
        if ((c)->start_pending) {                                            \
            int rc_ = my_txn_start(c);                                       \
            if (rc_)                                                         \
                return rc_;                                                  \
        }                                                                    \
    } while (0)

/* Every callback starts here: a broken connection fails fast and keeps the
 * message of the failure that broke it. */
#define MY_CHECK_CONN(c)                                                     \
    do {                                                                     \
        if ((c)->broken)                                                     \
            return MQS_ECONN;                                                \
    } while (0)

enum { MY_TLS_DISABLED, MY_TLS_PREFERRED, MY_TLS_REQUIRED, MY_TLS_VERIFY_CA,
       MY_TLS_VERIFY_IDENTITY };

/* ---- mysql_conn.c: helpers, errors, statements, connection ---- */

void my_sb_reset(my_sb *b);
void my_sb_printf(my_sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int64_t my_i64(const char *s);
int my_fail_db(mqs_be_conn *c, const char *what, int in_commit);
int my_fail_stmt(mqs_be_conn *c, MYSQL_STMT *s, const char *what);
int my_errf(mqs_be_conn *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int my_oom(mqs_be_conn *c, const char *what);
int my_exec_ex(mqs_be_conn *c, const char *what, const char *sql, size_t len,
               uint64_t *affected, int in_commit);
int my_exec(mqs_be_conn *c, const char *what, const char *sql, uint64_t *affected);
int my_exec_sb(mqs_be_conn *c, const char *what, uint64_t *affected);
int my_query(mqs_be_conn *c, const char *what, const char *sql, size_t len,
             MYSQL_RES **res);
int my_query_i64(mqs_be_conn *c, const char *what, const char *sql, int64_t *out,
                 int *found);
void my_bind_i64(MYSQL_BIND *b, int64_t *v);
void my_bind_i32(MYSQL_BIND *b, int32_t *v);
void my_bind_str(MYSQL_BIND *b, const char *s, unsigned long *len);
int my_session_ended(mqs_be_conn *c, const char *what);
/* Prepared statement id of this connection (prepared on first use). */
int my_st_get(mqs_be_conn *c, int id, MYSQL_STMT **out);
int my_st_run(mqs_be_conn *c, int id, const char *what, MYSQL_BIND *params,
              int64_t *out, int *found, int64_t *insert_id);
size_t my_max_message(const mqs_be_conn *c);

int my_conn_open(const mqs_be_open_args *args, mqs_be_conn **out, char *err,
                 size_t errlen);
void my_conn_close(mqs_be_conn *c);
const char *my_conn_errmsg(mqs_be_conn *c);
int my_conn_max_message(mqs_be_conn *c, size_t *max);

/* ---- mysql_msg.c: schema, transactions, destinations, messages ---- */

int my_schema_version(mqs_be_conn *c, int *version);
int my_schema_apply(mqs_be_conn *c, const mqs_be_migration *m);
int my_txn_begin(mqs_be_conn *c);
int my_txn_commit(mqs_be_conn *c);
int my_txn_rollback(mqs_be_conn *c);
int my_not_in_txn(mqs_be_conn *c, const char *what);
int my_dest_resolve(mqs_be_conn *c, mqs_kind kind, const char *name, int create,
                    int64_t *dest_id);
int my_sub_create(mqs_be_conn *c, int64_t topic_id, const char *name, int64_t *sub_id);
int my_sub_lookup(mqs_be_conn *c, const char *topic, const char *name, int64_t *sub_id);
int my_msg_ack(mqs_be_conn *c, const mqs_be_ref *r, size_t n);
int my_msg_nack(mqs_be_conn *c, const mqs_be_ref *r);
int my_sub_remove(mqs_be_conn *c, int64_t sub_id);
int my_purge(mqs_be_conn *c, int64_t dest_id, uint64_t *removed);
int my_msg_insert(mqs_be_conn *c, mqs_be_msg *m, size_t n);
int my_page_read(mqs_be_conn *c, const mqs_be_page *p, mqs_be_row_cb cb, void *ud);
int my_msg_recent(mqs_be_conn *c, size_t limit, mqs_be_header_cb cb, void *ud);
int my_mark_put(mqs_be_conn *c, const char *producer, int64_t seq, int64_t now_ms);
int my_mark_list(mqs_be_conn *c, mqs_be_mark_cb cb, void *ud);
int my_mark_prune(mqs_be_conn *c, int64_t before_ms, uint64_t *removed);
int my_dest_names(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud);
int my_dest_list(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud);

/* ---- mysql_lock.c: exclusive lock, fence, session lock ---- */

int my_lock_acquire(mqs_be_conn *c, const mqs_be_lock *l, mqs_be_lock_state *st);
int my_lock_renew(mqs_be_conn *c, const mqs_be_lock *l, mqs_be_lock_state *st);
int my_lock_fence(mqs_be_conn *c, const mqs_be_fence *f);
/* The fence check of the open write transaction, run by txn_commit. */
int my_fence_check(mqs_be_conn *c);
int my_lock_release(mqs_be_conn *c, const mqs_be_lock *l);
int my_lock_force(mqs_be_conn *c, const char *cluster);
int my_lock_read(mqs_be_conn *c, const char *cluster, mqs_be_lock_state *st);
int my_session_lock(mqs_be_conn *c, const char *cluster, int64_t wait_ms,
                    int64_t *session_id);
int my_session_unlock(mqs_be_conn *c, const char *cluster);

#endif /* MQS_MYSQL_INT_H */
