/*
 * backend.h - the versioned interface a storage backend module implements.
 *
 * A backend is a shared object `mqstore_<name>.so` exporting one function,
 * MQS_BACKEND_ENTRY, that returns a pointer to a static const mqs_backend
 * table. The core validates the table once at load (magic, ABI major,
 * struct size, every required callback) and refuses the module with an
 * error naming what is missing.
 *
 * Backends do SQL and nothing else. Batching, retries, destination caching,
 * lease timing, expiry and callbacks live in the core.
 *
 * Conventions for every callback:
 *  - The connection handle (mqs_be_conn) is used by one thread at a time;
 *    the core never shares one across threads concurrently.
 *  - Return 0 or a negative MQS_E* code (from common.h). On failure the
 *    backend leaves a message in the handle (conn_errmsg), naming the
 *    statement or setting at fault and the driver's code/SQLSTATE. Map
 *    driver errors at this boundary: a lost/unreachable connection ->
 *    MQS_ECONN (the core reconnects), bad credentials/permissions ->
 *    MQS_EAUTH, lock/serialization conflicts -> MQS_EBUSY, value too large
 *    for the server -> MQS_ETOOBIG, COMMIT whose outcome is unknown ->
 *    MQS_EUNKNOWN, everything else -> MQS_EIO.
 *  - Pointer arguments are borrowed for the call.
 *  - Write callbacks are only called between txn_begin and
 *    txn_commit/txn_rollback. Read callbacks are called outside a write
 *    transaction.
 *  - A backend may defer writes to txn_commit, to send a whole transaction
 *    in one round trip (BEGIN, fence, writes, COMMIT). The core therefore
 *    keeps every array it passes to msg_insert/msg_ack (and the ids they
 *    fill) valid and untouched until txn_commit or txn_rollback returns;
 *    ids are set by txn_commit at the latest. A deferred write that fails
 *    is reported by txn_commit with its own code and message (the
 *    transaction was rolled back: MQS_EUNKNOWN only when the outcome of
 *    COMMIT is really unknown).
 *
 * Version history (members are only ever appended):
 *   1.0  first version.
 *   1.1  exclusive lock: lock_acquire, lock_renew, lock_release, lock_read,
 *        lock_force, session_lock, session_unlock.
 *   2.0  fence without writing: lock_fence makes a write transaction's
 *        COMMIT conditional on holding the lock (no row version, no wait
 *        on the lease keeper); lock_renew runs in its own transaction on
 *        the core's lease connection; lock_acquire polls without locks
 *        while the lease stands; msg_insert and msg_ack take n rows (the
 *        singular members are gone); mqs_be_lock.wait_ms. Modules built for
 *        1.x are refused (rebuild them).
 *   2.1  producer marks: mark_put, mark_list, mark_prune (optional, all
 *        three or none; schema migration 003).
 *   2.2  dest_names (listing without counting) and vacuum (optional).
 *   2.3  msg_recent: the newest message rows, by primary key (optional).
 *        dest_resolve with create == 0 may also be called outside a write
 *        transaction (the core's page reads, mqs_page_async).
 *   3.0  the URI is parsed once, by the core: conn_open gets it taken apart
 *        (mqs_be_open_args.parts: user, password, hosts, path, decoded
 *        options) instead of a string to parse again. Every call into a
 *        module goes through one wrapper per member in the core
 *        (src/core/be_call.h), which normalises return codes, scrubs the
 *        password from messages and bounds page row counts. The 3.0 table
 *        holds every member up to msg_recent; optional ones are NULL when
 *        absent. Modules built for 2.x are refused (rebuild them).
 */
#ifndef MQSTORE_BACKEND_H
#define MQSTORE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MQS_BACKEND_MAGIC 0x4d5153424b454e44ULL /* "MQSBKEND" */
#define MQS_BACKEND_ABI_MAJOR 3 /* bumped on incompatible change */
#define MQS_BACKEND_ABI_MINOR 0 /* bumped when members are appended */

/* The one symbol a module exports. */
#define MQS_BACKEND_ENTRY mqs_backend_entry
#define MQS_BACKEND_ENTRY_NAME "mqs_backend_entry"

typedef struct mqs_be_conn mqs_be_conn; /* backend-defined connection */

/* One embedded schema migration. sql may hold several statements. */
typedef struct mqs_be_migration {
    int version;      /* 1, 2, 3 ... without gaps */
    const char *name; /* file name, e.g. "001_initial.sql" */
    const char *sql;
} mqs_be_migration;

/* A backend-specific URI option, for validation and docs. */
typedef struct mqs_be_option {
    const char *name;
    const char *default_value;
    const char *doc;
} mqs_be_option;

/* One host of a URI's authority, percent-decoded, IPv6 brackets removed.
 * port is NULL when the URI gives none (checked: digits, 1..65535). */
typedef struct mqs_be_host {
    const char *host;
    const char *port;
} mqs_be_host;

/* One query option of a URI for the backend (mqstore's core options are
 * removed), key and value percent-decoded, in the order written. Only keys
 * the backend declares in `options` reach it. */
typedef struct mqs_be_kv {
    const char *key;
    const char *value;
} mqs_be_kv;

/* A store URI taken apart once, by the core: RFC 3986's generic syntax
 * (scheme ":" ["//" authority] path ["?" query]), with libpq's and
 * JDBC's list of hosts in the authority ("h1:5432,h2:5433"). A fragment
 * ('#') is refused by the core. Every string is percent-decoded and
 * valid for the call only; the backend copies what it keeps. */
typedef struct mqs_be_uri {
    const char *scheme;   /* lower-cased, as written: "postgres", "mariadb" */
    int has_authority;    /* "//" follows the scheme */
    const char *user;     /* NULL when the URI has no userinfo */
    const char *password; /* NULL when the userinfo has no ':' */
    const mqs_be_host *hosts; /* nhosts entries; 0 when the host is empty */
    size_t nhosts;
    const char *path;     /* after the authority, leading '/' kept; "" */
    const mqs_be_kv *opts;
    size_t nopts;
} mqs_be_uri;

/* What conn_open gets. */
typedef struct mqs_be_open_args {
    /* The URI taken apart (see mqs_be_uri). Holds the password. */
    const mqs_be_uri *parts;
    /* The URI with the password and every secret option masked: the only
     * spelling of the URI a message may contain. */
    const char *uri_masked;
    /* Purpose of the connection, for logs/application_name. */
    const char *role; /* "writer", "reader", "admin" */
} mqs_be_open_args;

/* A message to insert. dest_id comes from dest_resolve. On success the
 * backend sets id (store-assigned, unique, never reused, increasing in
 * commit order). For a topic destination it also creates one pending entry
 * per subscription of that topic; if there is none it stores nothing and
 * sets id = 0. */
typedef struct mqs_be_msg {
    int64_t dest_id;
    mqs_kind kind;
    int priority;
    int64_t expires_ms;
    int64_t enqueued_ms;
    const void *headers;
    size_t headers_len;
    const void *body;
    size_t body_len;
    int64_t id; /* out */
} mqs_be_msg;

/* A reference to one pending message: a queue message (sub_id 0) or one
 * subscription's entry for a topic message. */
typedef struct mqs_be_ref {
    int64_t id;
    int64_t sub_id;
} mqs_be_ref;

/* A page of a recovery scan: the pending messages of one queue (sub_id 0,
 * dest_id set) or of one subscription (sub_id set), in delivery order
 * (priority DESC, id ASC), strictly after the key (after_priority,
 * after_id), at most `limit` rows. The first page uses after_priority = 10,
 * after_id = 0. Keyset condition:
 *   priority < after_priority OR (priority = after_priority AND id > after_id)
 */
typedef struct mqs_be_page {
    int64_t dest_id;
    int64_t sub_id;
    int after_priority;
    int64_t after_id;
    size_t limit;
} mqs_be_page;

/* One row of a page. Pointers are valid only during the callback. */
typedef struct mqs_be_row {
    int64_t id;
    int priority;
    int64_t expires_ms;
    int64_t enqueued_ms;
    int32_t redeliveries;
    const void *headers;
    size_t headers_len;
    const void *body;
    size_t body_len;
} mqs_be_row;

/* Row callback: return 0 to continue, non-zero to stop the page early (the
 * backend then discards the rest and returns 0). */
typedef int (*mqs_be_row_cb)(void *ud, const mqs_be_row *row);

/* One destination or subscription, for dest_list. Strings valid only during
 * the callback. A topic with no subscription yields one row with sub_id 0. */
typedef struct mqs_be_dest {
    int64_t dest_id;
    mqs_kind kind;
    const char *name;
    int64_t sub_id;
    const char *sub_name;
    uint64_t pending;
    int64_t oldest_ms;
} mqs_be_dest;
typedef int (*mqs_be_dest_cb)(void *ud, const mqs_be_dest *d);

/* One producer mark for mark_list; producer is valid for the call. A
 * nonzero return stops the walk and is returned by mark_list. */
typedef int (*mqs_be_mark_cb)(void *ud, const char *producer, int64_t seq);

/* One message row for msg_recent (ABI 2.3): its id and headers (NULL with
 * headers_len 0 when it has none), valid only during the callback. A
 * non-zero return stops the walk (msg_recent then returns 0). */
typedef int (*mqs_be_header_cb)(void *ud, int64_t id, const void *headers,
                                size_t headers_len);

/* The exclusive lock of one cluster (ABI 1.1). One row per cluster name:
 * holder node id, fencing token (+1 on every acquire, never reset), lease
 * end by the DATABASE clock, when acquired, and the holder's session: the
 * id of its session-lock connection and the epoch (identity of the
 * database instance, e.g. the server start time) both recorded only while
 * that session really holds the session lock (checked by the database:
 * pg_locks, IS_USED_LOCK(), a file lock), else NULL. */
typedef struct mqs_be_lock {
    const char *cluster;
    const char *node;
    int64_t token;     /* renew/release: the token this node holds */
    int64_t lease_ms;  /* acquire/renew: lease = database now + lease_ms */
    int holder_gone;   /* acquire: the session lock was free, so the
                          holder's session ended */
    int64_t session_id; /* acquire/renew: id of this node's session-lock
                           connection (from session_lock), 0 if none */
    int64_t wait_ms;    /* acquire/renew (2.0): longest wait for a row or
                           table lock before MQS_EBUSY; the call must
                           return within about this plus one round trip */
} mqs_be_lock;

/* What lock_fence gets (ABI 2.0). */
typedef struct mqs_be_fence {
    const char *cluster;
    const char *node;
    int64_t token;     /* the token this node holds */
    int64_t margin_ms; /* the lease must have at least this much left, by
                          the database clock, when the fence is checked */
    int64_t lease_ms;  /* the lease length, e.g. for a server-side timeout
                          that ends a session idle inside a transaction */
} mqs_be_fence;

typedef struct mqs_be_lock_state {
    char holder[256];      /* "" when free */
    int64_t token;
    int64_t lease_left_ms; /* lease end - database now (<= 0: expired) */
    int64_t held_ms;       /* database now - acquired */
    int session_armed;     /* a session is recorded, under the current epoch */
} mqs_be_lock_state;

typedef struct mqs_backend {
    /* ---- identity (never moves) ---- */
    uint64_t magic;        /* MQS_BACKEND_MAGIC */
    uint16_t abi_major;    /* MQS_BACKEND_ABI_MAJOR the module was built with */
    uint16_t abi_minor;    /* MQS_BACKEND_ABI_MINOR the module was built with */
    uint32_t struct_size;  /* sizeof(mqs_backend) in the module */
    const char *name;      /* "sqlite", "postgresql", "mysql" */
    const char *version;   /* module version string */
    const char *const *schemes; /* NULL-terminated URI schemes it serves */

    /* ---- schema ---- */
    const mqs_be_migration *migrations; /* required, ordered by version */
    size_t n_migrations;
    const mqs_be_option *options; /* backend URI options; may be NULL */
    size_t n_options;

    /* ---- connection ---- */
    /* Connect. On failure return the code, set *out = NULL and write the
     * message (with the masked URI, never the password) into err. */
    int (*conn_open)(const mqs_be_open_args *args, mqs_be_conn **out,
                     char *err, size_t errlen);
    /* Close and free. NULL is a no-op. Required. */
    void (*conn_close)(mqs_be_conn *c);
    /* Message of the last failure on c. Never NULL. Required. */
    const char *(*conn_errmsg)(mqs_be_conn *c);
    /* Largest headers_len + body_len this connection can store (e.g. from
     * the server's max_allowed_packet). Optional: NULL means no limit
     * beyond the core's max_message_size. */
    int (*conn_max_message)(mqs_be_conn *c, size_t *max);

    /* ---- schema ---- */
    /* Schema version in the database: 0 for an empty database (nothing of
     * mqstore's there), MQS_ECORRUPT if it is not an mqstore database (or
     * damaged) so it must not be touched. Required. */
    int (*schema_version)(mqs_be_conn *c, int *version);
    /* Apply one migration and record m->version, in its own transaction
     * (the core calls it outside txn_begin). Required. */
    int (*schema_apply)(mqs_be_conn *c, const mqs_be_migration *m);

    /* ---- write transactions ---- */
    int (*txn_begin)(mqs_be_conn *c);    /* required */
    int (*txn_commit)(mqs_be_conn *c);   /* required */
    int (*txn_rollback)(mqs_be_conn *c); /* required; must not fail on a
                                            broken connection (return the
                                            code, core discards the conn) */

    /* ---- writes (inside a transaction) ---- */
    /* Find the destination (kind, name); with create != 0 insert it if
     * missing. MQS_ENOTFOUND if missing and create == 0. (2.3) With
     * create == 0 it is a plain read, which the core also calls outside
     * any transaction (before a page read on the writer's connection).
     * Required. */
    int (*dest_resolve)(mqs_be_conn *c, mqs_kind kind, const char *name,
                        int create, int64_t *dest_id);
    /* Insert m[0..n) (n >= 1, see mqs_be_msg), natively batched where the
     * driver allows (multi-row INSERT, arrays...). Ids are assigned in
     * array order. May be deferred to txn_commit (see above). Required. */
    int (*msg_insert)(mqs_be_conn *c, mqs_be_msg *m, size_t n);
    /* Remove the pending entries r[0..n) (n >= 1); a topic message with no
     * pending entry left is deleted. Missing entries are not an error. May
     * be deferred to txn_commit. Required. */
    int (*msg_ack)(mqs_be_conn *c, const mqs_be_ref *r, size_t n);
    /* Add one to the redelivery count of a pending entry. Missing entries
     * are not an error. Required. */
    int (*msg_nack)(mqs_be_conn *c, const mqs_be_ref *r);
    /* Create the subscription (topic_id, name) or find it; sets *sub_id.
     * Required. */
    int (*sub_create)(mqs_be_conn *c, int64_t topic_id, const char *name,
                      int64_t *sub_id);
    /* Remove a subscription, its pending entries, and topic messages left
     * with no pending entry. Missing is not an error. Required. */
    int (*sub_remove)(mqs_be_conn *c, int64_t sub_id);
    /* Remove every pending message of dest_id (0 = of every destination);
     * subscriptions stay. *removed gets the count of messages (a topic
     * message counts once per subscription entry). Required. */
    int (*purge)(mqs_be_conn *c, int64_t dest_id, uint64_t *removed);

    /* ---- reads (outside a write transaction) ---- */
    /* Find a subscription by topic name and subscription name.
     * MQS_ENOTFOUND if none. Required. */
    int (*sub_lookup)(mqs_be_conn *c, const char *topic, const char *name,
                      int64_t *sub_id);
    /* Stream one page (see mqs_be_page) to cb. Required. */
    int (*page_read)(mqs_be_conn *c, const mqs_be_page *p, mqs_be_row_cb cb,
                     void *ud);
    /* Every destination and subscription with counts, ordered by dest_id
     * then sub_id. Required. */
    int (*dest_list)(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud);

    /* ---- exclusive lock (ABI 1.1; all six lock_* (2.0) or none) ---- */
    /* In its own transaction: create the cluster's row if missing, then take
     * the lock if it is free, or its lease has expired by the database
     * clock, or (l->holder_gone, a session is recorded under the current
     * epoch, and that session no longer holds the session lock: the
     * holder's process died and the database did not restart). On success
     * set holder, token+1, lease, acquired, session (as for lock_renew) and
     * fill *st. Otherwise MQS_EBUSY with *st describing the holder.
     * (2.0) Before it changes the row it takes the lock that conflicts with
     * lock_fence, so it commits only after every fenced write transaction
     * of the old holder has ended (waiting at most l->wait_ms). While the
     * lock is not takeable (a live holder's lease stands) it takes no lock,
     * waits for nothing, writes nothing and leaves no line in the server's
     * log: standbys poll it every poll_ms. */
    int (*lock_acquire)(mqs_be_conn *c, const mqs_be_lock *l,
                        mqs_be_lock_state *st);
    /* (2.0) In its own transaction, on the core's lease connection (the
     * one session_lock uses, when there is one; never a writer's): extend
     * the lease and record the session (l->session_id and the current
     * epoch if that session holds the session lock now, else NULL), only
     * where holder and token match. Waits for row locks at most
     * l->wait_ms. No match -> MQS_EFENCED, message naming the current
     * holder and token. Fills *st. This is the ONLY statement that writes
     * the lock row while a master holds it: one row version per renew_ms,
     * never one per write. */
    int (*lock_renew)(mqs_be_conn *c, const mqs_be_lock *l,
                      mqs_be_lock_state *st);
    /* In its own transaction: free the lock where holder and token match
     * (token kept). Not holding it is not an error. */
    int (*lock_release)(mqs_be_conn *c, const mqs_be_lock *l);
    /* Read the row (no transaction needed). A missing row reads as free
     * with token 0. */
    int (*lock_read)(mqs_be_conn *c, const char *cluster,
                     mqs_be_lock_state *st);
    /* In its own transaction: free the lock whoever holds it (operators).
     * (2.0) Takes the lock that conflicts with lock_fence first, as
     * lock_acquire does. */
    int (*lock_force)(mqs_be_conn *c, const char *cluster);

    /* (2.0) Inside the caller's write transaction (the core calls it right
     * after txn_begin): make the transaction's COMMIT conditional on this
     * node holding the lock. The transaction may commit only if, at a
     * check made after its last write and before its COMMIT, the row
     * shows holder f->node, token f->token and a lease with at least
     * f->margin_ms left by the database clock, AND no lock_acquire or
     * lock_force can commit between that check and the end of this
     * transaction (the backend holds a lock they must wait for: a share
     * lock on the row, a shared advisory lock, the file's write lock).
     * It creates no row version, and lock_renew never waits for it longer
     * than the transaction lasts. Failing the check: MQS_EFENCED from the
     * call that ran it (lock_fence, a write, or txn_commit), with a message
     * naming the current holder and token; the core then rolls back. The
     * argument for each backend is in docs/architecture.md. Part of the
     * lock group: all six lock_* members or none. */
    int (*lock_fence)(mqs_be_conn *c, const mqs_be_fence *f);

    /* ---- crash detector (ABI 1.1; optional pair: NULL -> lease only) ----
     * A session-level lock (advisory lock, GET_LOCK, file lock) held on a
     * dedicated connection for as long as the session lives. */
    /* Take the session lock of cluster, waiting up to wait_ms (0 = try).
     * 0 when held, with *session_id set to this connection's session id
     * (backend pid, connection id, process id). If this connection already
     * holds it, check the session is still alive (one round trip) and
     * return 0, or MQS_ECONN if it is gone. MQS_EBUSY if still held
     * elsewhere after wait_ms. (2.0) A standby calls this every poll_ms
     * while it waits: a wait that ends without the lock must leave no line
     * in the server's log and open no new connection. */
    int (*session_lock)(mqs_be_conn *c, const char *cluster, int64_t wait_ms,
                        int64_t *session_id);
    /* Give it up. Not holding it is not an error. */
    int (*session_unlock)(mqs_be_conn *c, const char *cluster);

    /* ---- producer marks (2.1; optional: all three or none; NULL: the
     * core answers MQS_ENOTSUP) ----
     * The highest sequence number (a client's mq-seq) the store knows a
     * producer (mq-producer, 1..128 bytes) reached, kept so that a broker
     * taking over can drop a replay of a message that was stored and
     * already consumed. One row per producer, schema migration 003. */
    /* Inside the caller's write transaction: the mark of producer becomes
     * max(seq, its mark) and updated_ms = now_ms. May be deferred to
     * txn_commit; producer stays valid until then. */
    int (*mark_put)(mqs_be_conn *c, const char *producer, int64_t seq,
                    int64_t now_ms);
    /* Every mark, in any order (a read; autocommit or a snapshot). */
    int (*mark_list)(mqs_be_conn *c, mqs_be_mark_cb cb, void *ud);
    /* Inside the caller's write transaction: delete the marks whose
     * updated_ms is below before_ms; *removed counts them. */
    int (*mark_prune)(mqs_be_conn *c, int64_t before_ms, uint64_t *removed);

    /* ---- listing without counting (ABI 2.2; optional) ---- */
    /* The rows of dest_list, same order, with pending = 0 and oldest_ms =
     * 0, read from the destination and subscription tables only: its cost
     * must not depend on the number of messages. Absent: the core uses
     * dest_list. */
    int (*dest_names)(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud);
    /* Outside any transaction: reclaim what consumed messages left behind
     * (PostgreSQL: VACUUM of the message tables) so page scans from a
     * destination's start stop paying for them. Slow; called only on an
     * operator's request (mqs_vacuum). Writes into msg (up to msglen) what
     * was done, for the operator. NULL: nothing to do on this backend. */
    int (*vacuum)(mqs_be_conn *c, char *msg, size_t msglen);

    /* ---- producer audit (ABI 2.3; optional) ---- */
    /* A read, outside any transaction: the newest `limit` (>= 1) rows of
     * the message table (queue and topic messages alike: a topic message
     * is one row however many subscriptions hold it), highest id first,
     * each as (id, headers) to cb. It walks the primary key backwards
     * (ORDER BY id DESC LIMIT limit): its cost must grow with limit, never
     * with the backlog. Expired rows are listed like the rest. NULL: the
     * core answers mqs_recent_headers with MQS_ENOTSUP. */
    int (*msg_recent)(mqs_be_conn *c, size_t limit, mqs_be_header_cb cb,
                      void *ud);
} mqs_backend;

/* Whether table be has an optional member that a later 3.x minor may have
 * appended: it lies inside the module's struct_size and is set. The core
 * reads no member past struct_size without this check. */
#define MQS_BE_HAS(be, member)                                                 \
    (offsetof(mqs_backend, member) + sizeof((be)->member) <=                   \
         (be)->struct_size &&                                                  \
     (be)->member != NULL)

/* The entry point every module exports, declared here so its signature is
 * checked where a module defines it:
 *     MQS_BACKEND_EXPORT const mqs_backend *mqs_backend_entry(void)
 *     { return &my_table; }                                             */
#if defined(__GNUC__)
#define MQS_BACKEND_EXPORT __attribute__((visibility("default")))
#else
#define MQS_BACKEND_EXPORT
#endif
MQS_BACKEND_EXPORT const mqs_backend *MQS_BACKEND_ENTRY(void);
typedef const mqs_backend *(*mqs_backend_entry_fn)(void);

#ifdef __cplusplus
}
#endif
#endif /* MQSTORE_BACKEND_H */
