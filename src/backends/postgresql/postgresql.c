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
 * pending rows. Inserting transactions take turns on one advisory lock
 * (taken by each insert statement) so ids, drawn from a sequence at insert
 * time, increase in commit order.
 *
 * URI: postgresql://user:pw@host1:port1,host2/db?... . The core takes it
 * apart (args->parts); conn_open gives libpq the parts as keywords
 * (PQconnectdbParams: host and port lists, user, password, dbname, then
 * each query option, which can only be one of pg_options). mqstore sets
 * fallback_application_name=mqstore-<role>, client_encoding=UTF8 and
 * connect/keepalive timeouts when the URI does not.
 */
#include "postgresql_int.h"

/* Generated from schema/postgresql/ by EmbedSchema.cmake. */
#include "schema_postgresql.h" /* generated: mqs_schema_postgresql[] */

#define PG_MODULE_VERSION MQS_VERSION_STRING

/* ---------------------------------------------------------------------------
 * Options: libpq's connection keywords we pass through (and pooler,
 * mqstore's own). Declared so the core accepts them: no other option
 * reaches conn_open. libpq interprets them.
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
