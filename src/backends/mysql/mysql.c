/*
 * mysql.c - MySQL / MariaDB backend (mqstore_mysql.so).
 *
 * URI: mysql://user:password@host:port/database?option=value&...
 *      (scheme mariadb:// is the same). The core takes it apart and
 * percent-decodes it (args->parts); one host only. Options are listed in
 * my_options below.
 *
 * Choices that matter for correctness:
 *  - autocommit stays on for the session; write transactions are explicit
 *    START TRANSACTION / COMMIT, sent lazily with their first statement,
 *    except one that is a single insert of queue messages with no fence,
 *    which runs autocommitted (one round trip; see my_txn_commit); reads
 *    are single autocommitted statements (no snapshot kept open between
 *    pages).
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
#include "mysql_int.h"

/* Generated from schema/mysql/ by EmbedSchema.cmake. */
#include "schema_mysql.h" /* generated: mqs_schema_mysql[], its count */

/* ------------------------------------------------------------------------
 * Options and the table
 * ---------------------------------------------------------------------- */

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
