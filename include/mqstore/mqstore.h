/*
 * mqstore.h - durable message storage for broker cores.
 *
 * This is the only header a broker includes. It is also the manual: every
 * function states who owns what, which threads may call it, and what it
 * returns.
 *
 * Conventions (apply to every function unless its comment says otherwise):
 *  - Return: 0 on success or a negative MQS_E* code. mqs_strerror() names the
 *    code; mqs_errmsg() gives the detailed message of the calling thread's
 *    last failure on that store (what failed, where, how to fix).
 *  - Ownership: pointer arguments are borrowed for the duration of the call;
 *    the library copies what it keeps. Objects the library returns say who
 *    frees them and how. A failed constructor leaves *out == NULL and nothing
 *    allocated.
 *  - Threads: an mqs_store may be used by any number of threads at once.
 *    An mqs_txn or mqs_cursor belongs to one thread at a time.
 *  - Passwords never appear in messages, logs or stats: URIs are printed
 *    with the password masked.
 */
#ifndef MQSTORE_MQSTORE_H
#define MQSTORE_MQSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Static message for a code ("invalid argument"); never NULL. */
MQS_API const char *mqs_strerror(int code);
/* Static name of a code ("MQS_EINVAL"); never NULL. */
MQS_API const char *mqs_errname(int code);

/* ---------------------------------------------------------------------------
 * Types
 * ------------------------------------------------------------------------- */
typedef struct mqs_store mqs_store;   /* opaque; one per open store */
typedef struct mqs_txn mqs_txn;       /* opaque; a client transaction */
typedef struct mqs_cursor mqs_cursor; /* opaque; a recovery cursor */

/* A message handed to the store. All pointers are borrowed for the call. */
typedef struct mqs_msg {
    mqs_kind kind;
    const char *dest;    /* destination name, 1..255 bytes of UTF-8 */
    const void *headers; /* opaque bytes (the broker's encoding), may be NULL */
    size_t headers_len;
    const void *body; /* opaque bytes, may contain NUL, may be NULL if len 0 */
    size_t body_len;
    int priority;       /* 0..9; higher is delivered first */
    int64_t expires_ms; /* absolute Unix time in ms; 0 = never expires */
} mqs_msg;

/* A stored message as returned by a recovery cursor. Every pointer is owned
 * by the cursor and valid until the next mqs_cursor_next() or
 * mqs_cursor_close() on that cursor. */
typedef struct mqs_message {
    int64_t id; /* store-assigned, unique, increasing in commit order */
    mqs_kind kind;
    const char *dest;
    int64_t sub_id;       /* 0 for a queue message, else the subscription */
    const char *sub_name; /* NULL for a queue message */
    int priority;
    int64_t expires_ms;   /* 0 = never */
    int64_t enqueued_ms;  /* store's wall clock at enqueue */
    int32_t redeliveries; /* number of nacks so far */
    const void *headers;
    size_t headers_len;
    const void *body;
    size_t body_len;
} mqs_message;

/* Log levels for mqs_log_fn. */
typedef enum mqs_log_level {
    MQS_LOG_ERROR = 0,
    MQS_LOG_WARN = 1,
    MQS_LOG_INFO = 2,
    MQS_LOG_DEBUG = 3
} mqs_log_level;

/* Log sink. Called from any library thread; must be thread-safe. msg is
 * borrowed for the call and never contains a password. */
typedef void (*mqs_log_fn)(void *ud, mqs_log_level level, const char *msg);

/* Things that cannot be said in a URI. Every tunable is a URI option (see
 * mqs_option_foreach). Pass NULL for the defaults: log WARN and above to
 * stderr. */
typedef struct mqs_open_opts {
    mqs_log_fn log;          /* NULL = stderr */
    void *log_ud;            /* passed to log */
    mqs_log_level log_level; /* messages above this level are dropped */
} mqs_open_opts;

/* ---------------------------------------------------------------------------
 * Open / close
 * ------------------------------------------------------------------------- */

/* Open the store named by uri, e.g.
 *   sqlite:///var/lib/mq/store.db?synchronous=full&commit=group
 *   sqlite:relative/store.db
 *   postgresql://user:pw@host/db?commit=group
 * The scheme picks the backend module (mqstore_<scheme>.so, searched in
 * $MQSTORE_MODULE_PATH, then next to libmqstore, then the install dir).
 * Query options are either mqstore's (see mqs_option_foreach) or the
 * backend's; anything else is refused with MQS_EINVAL naming the option.
 * With migrate=auto (default) an empty database is initialized and an older
 * schema migrated; a schema newer than this library fails with MQS_ESCHEMA
 * and changes nothing.
 * Ownership: uri and opts are borrowed; on success *out is owned by the
 * caller and released with mqs_close(). On failure *out == NULL and
 * mqs_errmsg(NULL) gives the message.
 * Threads: any thread. */
MQS_API int mqs_open(const char *uri, const mqs_open_opts *opts,
                     mqs_store **out);

/* Flush queued writes (waits for their commit), stop the writer and close
 * every connection. Pending async completions are called before it returns.
 * No other thread may use the store during or after the call. NULL is a
 * no-op. */
MQS_API void mqs_close(mqs_store *s);

/* The calling thread's last error message on s (or, with s == NULL, of its
 * last failed mqs_open or mqs_uri_* call). Never NULL; "" if none. Valid until
 * the same thread's next mqs_ call. */
MQS_API const char *mqs_errmsg(const mqs_store *s);

/* The store's URI with the password masked. Owned by s. */
MQS_API const char *mqs_uri(const mqs_store *s);

/* Largest headers_len + body_len the store accepts (the max_message_size
 * option, capped by what the backend can store). */
MQS_API size_t mqs_max_message_size(const mqs_store *s);

/* The max_pending_bytes option: message bytes queued for the writer past
 * which an async submit waits (or, with mqs_completion_fd, gets
 * MQS_EBUSY). A caller that keeps its own bytes in flight (submitted, not
 * completed) at or below it, or at zero, never waits. */
MQS_API size_t mqs_max_pending_bytes(const mqs_store *s);

/* Copy uri into buf with the password replaced by "***". Returns the length
 * the masked URI needs (like snprintf). Any thread. */
MQS_API size_t mqs_uri_mask(const char *uri, char *buf, size_t buflen);

/* The HA cluster name a store URI selects (its cluster= option,
 * percent-decoded; "default" when absent), read by the library's own URI
 * parser without opening anything: for callers that name themselves after
 * it before the store is open. Returns the length the name needs (like
 * snprintf), 0 when uri has no scheme. Any thread. */
MQS_API size_t mqs_uri_cluster(const char *uri, char *buf, size_t buflen);

/* ---------------------------------------------------------------------------
 * Messages. Each call below is its own atomic write: it returns only after
 * the write committed (durable per the backend's settings) or failed.
 * With commit=group, concurrent calls share one database transaction.
 * ------------------------------------------------------------------------- */

/* Store one message. On success *id (may be NULL) gets its id.
 * MQS_ETOOBIG if headers_len + body_len > mqs_max_message_size();
 * MQS_EINVAL for a bad priority, kind or destination name.
 * A message sent to a topic is kept only for the durable subscriptions
 * that exist when it commits; with none, it is not stored and *id is 0. */
MQS_API int mqs_enqueue(mqs_store *s, const mqs_msg *m, int64_t *id);

/* Store n messages in one transaction: all or none. ids (may be NULL) gets
 * n ids in order. */
MQS_API int mqs_enqueue_many(mqs_store *s, const mqs_msg *msgs, size_t n,
                             int64_t *ids);

/* Completion of an async write. rc is 0 or MQS_E*; id is the new message id
 * (0 on failure); errmsg is "" on success, else the detailed message; both
 * are borrowed for the call. Called exactly once, from a library thread
 * (never the caller's), in submission order per store. It must not call
 * mqs_close(). Synchronous writes (mqs_enqueue, mqs_ack, mqs_txn_commit...)
 * made from it return MQS_ESTATE at once (they would wait for the very
 * thread that runs the callback); the _async calls work there, and do not
 * block on back-pressure. */
typedef void (*mqs_done_fn)(void *ud, int rc, int64_t id, const char *errmsg);

/* Like mqs_enqueue but returns once the message is queued for the writer
 * (copied); done is called when it committed or failed. Blocks while more
 * than max_pending_bytes are queued (back-pressure). Validation errors are
 * returned at once and done is not called. */
MQS_API int mqs_enqueue_async(mqs_store *s, const mqs_msg *m, mqs_done_fn done,
                              void *ud);

/* Acknowledge a message: for a queue (sub_id 0) the message is removed; for
 * a durable subscription the message is removed for that subscription (and
 * from the store once every subscription acked it). Acking an id that is
 * not pending (already acked, expired, purged) succeeds: acks may be
 * replayed after a failover. */
MQS_API int mqs_ack(mqs_store *s, int64_t id, int64_t sub_id);

/* Ack n (id, sub_id) pairs in one transaction. sub_ids may be NULL (all 0). */
MQS_API int mqs_ack_many(mqs_store *s, const int64_t *ids,
                         const int64_t *sub_ids, size_t n);

/* Async ack: returns once queued; done (may be NULL) gets the outcome. */
MQS_API int mqs_ack_async(mqs_store *s, int64_t id, int64_t sub_id,
                          mqs_done_fn done, void *ud);

/* Negative ack: the message stays pending and its redelivery count grows by
 * one (seen by the next recovery). Unknown ids succeed, like mqs_ack. */
MQS_API int mqs_nack(mqs_store *s, int64_t id, int64_t sub_id);
/* Async nack: returns once queued; done (may be NULL) gets the outcome. A
 * broker can call it when it first dispatches a message, so a message that
 * was delivered before a crash comes back with redeliveries >= 1. */
MQS_API int mqs_nack_async(mqs_store *s, int64_t id, int64_t sub_id,
                           mqs_done_fn done, void *ud);

/* ---------------------------------------------------------------------------
 * Producer marks: per producer (a client's id, 1..128 bytes, e.g. the
 * mq-producer header) the highest sequence number (mq-seq, >= 1) the store
 * knows it reached. A broker marks a message's producer when it acks it, so
 * that after a failover a client's replay of a message that was stored and
 * consumed is recognized. The mark only grows. MQS_ENOTSUP if the backend
 * has no marks.
 * ------------------------------------------------------------------------- */
/* Queue "mark(producer) = max(mark, seq)" with the writes; like
 * mqs_ack_async, it commits no later than the writes queued after it. */
MQS_API int mqs_mark_async(mqs_store *s, const char *producer, int64_t seq,
                           mqs_done_fn done, void *ud);
/* Every mark; a non-zero return from fn stops early (then 0 is returned).
 * producer is valid for the call. */
typedef int (*mqs_mark_fn)(void *ud, const char *producer, int64_t seq);
MQS_API int mqs_mark_foreach(mqs_store *s, mqs_mark_fn fn, void *ud);
/* Delete the marks not updated since older_than_ms (Unix ms). */
MQS_API int mqs_mark_prune(mqs_store *s, int64_t older_than_ms,
                           uint64_t *removed);

/* ---------------------------------------------------------------------------
 * Event loops: completions on the caller's thread, submits that never block.
 *
 * By default an async call's done callback runs on the store's writer
 * thread, and an async submit waits while more than max_pending_bytes are
 * queued. A single-threaded event loop wants neither: after
 * mqs_completion_fd() the store
 *  - queues every completion of an async call (enqueue, ack, nack, mark,
 *    txn commit, sub create/remove) instead of running it, and makes the
 *    returned descriptor readable (it is an eventfd: poll it for POLLIN);
 *  - runs them on the thread that calls mqs_completions_run(), in the order
 *    they completed (per store, the order of submission), so a callback may
 *    make any call, synchronous ones included;
 *  - refuses an async submit that would wait for room with MQS_EBUSY (the
 *    request is not queued, done is not called): retry after the descriptor
 *    fires again (every completed batch frees room).
 * Synchronous calls still block: an event loop must not make them (the
 * broker's rule). The lock callbacks (on_master, on_lost) stay on library
 * threads. Not reversible for the life of the handle.
 * ------------------------------------------------------------------------- */
/* Switch s to caller-run completions (idempotent) and return the
 * descriptor, or a negative MQS_E*. The descriptor is the store's: do not
 * close it (mqs_close does). Any thread. */
MQS_API int mqs_completion_fd(mqs_store *s);
/* Run up to max queued completions (0 = every one queued now) on this
 * thread; returns how many ran (>= 0) or a negative MQS_E*. The descriptor
 * is re-armed while some are left. One thread at a time per store. At
 * mqs_close the completions still queued are run by the closing thread. */
MQS_API int mqs_completions_run(mqs_store *s, size_t max);

/* ---------------------------------------------------------------------------
 * Transactions: a client transaction buffers enqueues and acks in memory
 * (nothing reaches the database before commit) and commits them atomically
 * across destinations. Rollback leaves no trace.
 * ------------------------------------------------------------------------- */

/* Start a transaction. *out is owned by the caller until mqs_txn_commit()
 * or mqs_txn_rollback() frees it. One thread at a time. */
MQS_API int mqs_txn_begin(mqs_store *s, mqs_txn **out);
/* Add a message (copied; validated now: MQS_ETOOBIG, MQS_EINVAL). */
MQS_API int mqs_txn_enqueue(mqs_txn *t, const mqs_msg *m);
/* Add an ack (sub_id 0 for a queue). */
MQS_API int mqs_txn_ack(mqs_txn *t, int64_t id, int64_t sub_id);
/* Commit atomically and free t (also on failure). ids (may be NULL) gets one
 * id per mqs_txn_enqueue, in order. */
MQS_API int mqs_txn_commit(mqs_txn *t, int64_t *ids);
/* Completion of an async commit: ids (borrowed for the call) holds one id
 * per mqs_txn_enqueue, in order (all 0 on failure). From a library thread,
 * like mqs_done_fn. */
typedef void (*mqs_txn_done_fn)(void *ud, int rc, const int64_t *ids,
                                size_t n_ids, const char *errmsg);
/* Commit without waiting: t is handed over (freed by the library, also on
 * failure); done (may be NULL) gets the outcome. For event-loop brokers.
 * One exception: MQS_EBUSY (mqs_completion_fd, queue full) leaves t with
 * the caller, unchanged: commit it again later, or roll it back. */
MQS_API int mqs_txn_commit_async(mqs_txn *t, mqs_txn_done_fn done, void *ud);
/* Discard and free t. NULL is a no-op. */
MQS_API void mqs_txn_rollback(mqs_txn *t);
/* Number of operations buffered in t. */
MQS_API size_t mqs_txn_size(const mqs_txn *t);

/* ---------------------------------------------------------------------------
 * Durable topic subscriptions
 * ------------------------------------------------------------------------- */

/* Create (or find, if it exists) the durable subscription `name` on topic
 * `topic`; *sub_id gets its id. Messages published to the topic from now on
 * are kept for it until it acks them. */
MQS_API int mqs_sub_create(mqs_store *s, const char *topic, const char *name,
                           int64_t *sub_id);
/* Find an existing subscription: MQS_ENOTFOUND if there is none. */
MQS_API int mqs_sub_lookup(mqs_store *s, const char *topic, const char *name,
                           int64_t *sub_id);
/* Remove a subscription and everything pending for it. */
MQS_API int mqs_sub_remove(mqs_store *s, int64_t sub_id);
/* Async create: returns once queued; done (may be NULL) gets the outcome
 * with the subscription's id as its id argument. Name errors are returned at
 * once (done is not called). With mqs_completion_fd: MQS_EBUSY, never a
 * wait. */
MQS_API int mqs_sub_create_async(mqs_store *s, const char *topic,
                                 const char *name, mqs_done_fn done,
                                 void *ud);
/* Async remove: done (may be NULL) gets the outcome (id argument 0). */
MQS_API int mqs_sub_remove_async(mqs_store *s, int64_t sub_id,
                                 mqs_done_fn done, void *ud);

/* ---------------------------------------------------------------------------
 * Recovery: stream the unconsumed messages in delivery order (priority
 * high to low, then id) with memory bounded by the page size, whatever the
 * backlog. Expired messages are skipped, counted in mqs_stats.expired, and
 * removed from the store.
 * ------------------------------------------------------------------------- */

typedef struct mqs_cursor_opts {
    mqs_kind kind;        /* used when dest != NULL */
    const char *dest;     /* NULL = every queue and every subscription */
    const char *sub_name; /* topic only: NULL = every subscription */
    size_t page_rows;     /* 0 = default (256) */
} mqs_cursor_opts;

/* Open a cursor. opts may be NULL (everything). Destinations are visited in
 * id order; within one, delivery order. *out is owned by the caller and
 * freed with mqs_cursor_close(). One thread at a time; it uses its own
 * database connection, so writes may go on meanwhile. */
MQS_API int mqs_cursor_open(mqs_store *s, const mqs_cursor_opts *opts,
                            mqs_cursor **out);
/* Next message: returns 1 and sets *m (owned by the cursor, valid until the
 * next call), 0 at the end, or a negative MQS_E*. */
MQS_API int mqs_cursor_next(mqs_cursor *c, const mqs_message **m);
/* Position a cursor that covers exactly one queue or one subscription
 * (opts->dest set; for a topic opts->sub_name too) strictly after
 * (after_priority, after_id) in delivery order: the next mqs_cursor_next()
 * returns the first message with a lower priority, or the same priority
 * and a higher id. For reading a destination in pages across separate
 * cursors: remember the last message's (priority, id), open, seek, read.
 * after_priority 0..MQS_PRIORITY_MAX, after_id >= 0. Before the first
 * mqs_cursor_next() only; MQS_EINVAL on a cursor over several targets,
 * MQS_ESTATE once reading started. The page query starts at that key in
 * the index, so rows before it (consumed ones too) are never visited. */
MQS_API int mqs_cursor_seek(mqs_cursor *c, int after_priority,
                            int64_t after_id);
/* Free the cursor. NULL is a no-op. */
MQS_API void mqs_cursor_close(mqs_cursor *c);

/* ---------------------------------------------------------------------------
 * Paging for event-loop brokers (ABI 2.3): a page read ordered with writes.
 *
 * A broker that keeps only a window of each destination in memory reads
 * the rest in pages while producers go on storing. mqs_page_async runs the
 * read on the writer thread, in submission order with the writes:
 *  - every write submitted before it has committed, and its completion has
 *    run (or, with mqs_completion_fd, been queued), before the read starts;
 *  - no write submitted after it has committed when the read starts, and
 *    its completion runs (or is queued) after the page's.
 * So a caller that sees a write's completion before the page's knows the
 * page read saw that write; one that sees it after knows it did not. That
 * lets a broker decide, without a second lookup, whether a new message
 * will come from the store or must be held in memory (docs/broker.md,
 * "Paging").
 * ------------------------------------------------------------------------- */
typedef struct mqs_page_req {
    mqs_kind kind;
    const char *dest;  /* queue: its name; topic: its name (or NULL) */
    int64_t sub_id;    /* topic: the durable subscription; queue: 0 */
    int after_priority; /* MQS_PRIORITY_MAX + 1 (and after_id 0) = start */
    int64_t after_id;
    size_t max_rows;   /* 0 = 256 */
    size_t max_bytes;  /* headers + bodies; 0 = 4 MiB; the first row always */
} mqs_page_req;

/* The page: msgs[0..n) in delivery order, strictly after the request's
 * position; every pointer (msgs, their strings, headers, bodies) is owned
 * by the library and valid only during the call. Each row has the
 * request's kind, dest (NULL for a topic request without one) and sub_id
 * (0 for a queue); sub_name is NULL. A row is added while the page stays
 * within max_bytes; the first row always goes, so a page is never empty
 * while something is pending after the position. end != 0: nothing
 * pending came after the last row when the page was read (n < max_rows
 * and not cut by max_bytes); a full page says 0 even when it was the
 * last, and the next one is then empty with end set. Expired messages are
 * returned like the rest (their expires_ms says so): the caller acks
 * them. rc != 0: nothing read, n = 0, end = 0, errmsg says why (a lost
 * connection is read again on a new one until reconnect_timeout_ms).
 * MQS_ENOTFOUND is not an error: an unknown queue, like an unknown
 * subscription, is an empty page with end set (rc 0). Runs on the writer
 * thread, or with mqs_completion_fd on the thread that calls
 * mqs_completions_run. */
typedef void (*mqs_page_fn)(void *ud, int rc, const mqs_message *msgs,
                            size_t n, int end, const char *errmsg);
/* Queue a page read (req is copied). 0 once queued (done is then called
 * exactly once), or a negative MQS_E* without calling done: MQS_EINVAL
 * (req or done NULL; kind neither queue nor topic; a queue without a
 * 1..255-byte name or with sub_id != 0; a topic with sub_id <= 0 or an
 * empty name; after_priority outside 0..MQS_PRIORITY_MAX + 1; after_id <
 * 0), MQS_ECLOSED, MQS_EBUSY (mqs_completion_fd and the write queue is
 * over max_pending_bytes: retry after the descriptor fires). Without the
 * descriptor it waits for room like the _async writes (never on the
 * writer thread); the read itself counts no bytes against the limit. It
 * runs on the writer's connection outside any write transaction, so it
 * works on a store opened read-only (newer schema) too. A topic request's
 * sub_id is not checked against dest. Any thread, a completion callback
 * included; with commit=each too (async work still runs on the writer
 * thread, in order). */
MQS_API int mqs_page_async(mqs_store *s, const mqs_page_req *req,
                           mqs_page_fn done, void *ud);

/* Producer audit after a takeover: the headers of the newest pending
 * messages, highest id first, at most max_rows of them (queues and topics
 * alike; a topic message once however many subscriptions hold it; expired
 * ones too). headers is borrowed for the call (NULL with headers_len 0
 * for a message without). fn returns non-zero to stop (mqs_recent_headers
 * then returns 0). max_rows 0 lists nothing. Its cost grows with max_rows,
 * never with the backlog (the primary key, read backwards). A synchronous
 * read on a reader connection: not from an event loop's hot path. fn NULL:
 * MQS_EINVAL. Backends before ABI 2.3: MQS_ENOTSUP. */
typedef int (*mqs_headers_fn)(void *ud, int64_t id, const void *headers,
                              size_t headers_len);
MQS_API int mqs_recent_headers(mqs_store *s, size_t max_rows,
                               mqs_headers_fn fn, void *ud);

/* ---------------------------------------------------------------------------
 * Admin and stats
 * ------------------------------------------------------------------------- */

/* Remove every pending message of one destination (dest != NULL) or of the
 * whole store (dest == NULL). Subscriptions stay. *removed (may be NULL)
 * gets the count. */
MQS_API int mqs_purge(mqs_store *s, mqs_kind kind, const char *dest,
                      uint64_t *removed);

/* Counters since mqs_open, for this handle. */
typedef struct mqs_stats {
    uint64_t enqueued;       /* messages committed */
    uint64_t acked;          /* acks committed */
    uint64_t nacked;         /* nacks committed */
    uint64_t expired;        /* expired messages skipped and removed */
    uint64_t transactions;   /* database transactions committed */
    uint64_t failed;         /* requests that failed (any reason) */
    uint64_t max_batch;      /* most requests in one transaction */
    uint64_t reconnects;     /* database reconnections */
    uint64_t retries;        /* batch retries (after isolating a failure) */
    uint64_t queued;         /* requests waiting for the writer now */
    uint64_t queued_bytes;   /* their bytes */
    int schema_version;      /* schema version of the database */
} mqs_stats;

MQS_API int mqs_stats_get(mqs_store *s, mqs_stats *out);

/* Per destination (one row per queue and per durable subscription),
 * read from the database. Strings are borrowed for the callback. */
typedef struct mqs_dest_info {
    mqs_kind kind;
    const char *dest;
    int64_t sub_id;       /* 0 for a queue */
    const char *sub_name; /* NULL for a queue */
    uint64_t pending;     /* unconsumed messages */
    int64_t oldest_ms;    /* enqueue time of the oldest, 0 if none */
} mqs_dest_info;
/* Return non-zero from the callback to stop early (mqs_dest_foreach then
 * returns 0). */
typedef int (*mqs_dest_fn)(void *ud, const mqs_dest_info *d);
MQS_API int mqs_dest_foreach(mqs_store *s, mqs_dest_fn fn, void *ud);
/* Like mqs_dest_foreach, without counting: the same rows (every queue and
 * durable subscription, and each topic without one), with pending =
 * MQS_PENDING_UNKNOWN and oldest_ms = 0. Its cost depends on the number of
 * destinations and subscriptions only, never on the backlog (backends
 * before ABI 2.2 fall back to the counting list). mqs_cursor_open lists
 * its targets this way. */
#define MQS_PENDING_UNKNOWN UINT64_MAX
MQS_API int mqs_dest_names(mqs_store *s, mqs_dest_fn fn, void *ud);

/* Reclaim what consumed messages leave behind, where the database needs
 * to be asked: PostgreSQL keeps deleted rows until VACUUM, and the first
 * scan of a destination after a mass ack or purge pays about 1.5 us for
 * each (1.7 s at a million, bench/scan.c); this runs VACUUM (ANALYZE) on
 * the message tables. MariaDB's purge thread and SQLite need nothing: it
 * returns 0 at once. Seconds at millions of rows; never on a hot path:
 * after a mass purge (`mqstore purge` does it past 10,000 rows) or from an
 * operator's schedule. what (may be NULL) gets what was done. */
MQS_API int mqs_vacuum(mqs_store *s, char *what, size_t what_len);

/* Schema version this library writes, and the one in the database. */
MQS_API int mqs_schema_version(mqs_store *s, int *db_version,
                               int *lib_version);

/* Migration control for tools (mqstore init/migrate/status). Opens without
 * touching the schema (even with migrate=auto); see mqs_migrate. A schema
 * newer than the library opens too, for reading only: every write then
 * fails with MQS_ESCHEMA. */
MQS_API int mqs_open_nomigrate(const char *uri, const mqs_open_opts *opts,
                               mqs_store **out);
/* Bring the schema up to date; progress (may be NULL) is called before each
 * migration with (from, to, name). */
typedef void (*mqs_migrate_fn)(void *ud, int from, int to, const char *name);
MQS_API int mqs_migrate(mqs_store *s, mqs_migrate_fn progress, void *ud);

/* ---------------------------------------------------------------------------
 * HA: an exclusive lock with a lease and fencing. Several nodes (brokers)
 * open the same store with the same `cluster` option; exactly one holds the
 * lock and is master. The others wait in mqs_lock_acquire().
 *
 * URI options (defaults): cluster=default, node_id=<hostname>:<pid>,
 * lease_ms=2000, renew_ms=500 (must be at most lease_ms/3),
 * poll_ms=200 (standby retry interval), crash_detect=on (a session-level
 * lock on a dedicated connection lets a standby take over at once when the
 * master's process dies; turn off behind a transaction pooler).
 *
 * Once a node holds the lock, every write transaction is fenced: its COMMIT
 * is conditional on this node still holding the lock with its token and
 * lease (checked by the database inside that transaction, without writing
 * anything). A node that lost the lock gets MQS_EFENCED and its write
 * leaves nothing behind. The lease is renewed every renew_ms by a library
 * thread on its own connection, whatever the writes do. The master also
 * counts its lease on its own monotonic clock and steps down (on_lost)
 * before the database could give the lock to another node.
 * ------------------------------------------------------------------------- */

typedef struct mqs_lock_cbs {
    /* Called once the lock is held, with its fencing token, before
     * mqs_lock_acquire returns. */
    void (*on_master)(void *ud, int64_t token);
    /* Called once when the lock is lost (fenced, lease not renewed in
     * time, database unreachable too long) or released; reason is a
     * borrowed message. From a library thread (never the one that runs
     * completion callbacks, so it may make synchronous calls). Writes
     * fail with MQS_EFENCED from then on until the lock is acquired
     * again, and nothing of this term commits after it: a write in flight
     * gets until the hard end of the lease to finish (its COMMIT is
     * conditional on a lease with lease_ms/10 left by the database clock)
     * before on_lost is called. */
    void (*on_lost)(void *ud, int64_t token, const char *reason);
    void *ud;
} mqs_lock_cbs;

/* Become master. timeout_ms: 0 = try once (MQS_EBUSY if held elsewhere),
 * -1 = wait forever, else wait at most that long (MQS_ETIMEDOUT). cbs may be
 * NULL; it is copied. MQS_ENOTSUP if the backend has no lock support.
 * Returns 0 when held. Any thread; one acquire at a time per store. */
MQS_API int mqs_lock_acquire(mqs_store *s, int64_t timeout_ms,
                             const mqs_lock_cbs *cbs);

/* Give the lock up at once (a standby can take over within one poll).
 * on_lost is called with reason "released". No-op if not held. */
MQS_API int mqs_lock_release(mqs_store *s);

typedef struct mqs_lock_info {
    char cluster[128];
    char holder[256];     /* node id of the holder, "" if free */
    int64_t token;        /* fencing token (grows on every takeover) */
    int64_t lease_left_ms; /* by the database clock; <= 0: expired */
    int64_t held_ms;      /* how long the holder has held it */
    int held_by_me;       /* this handle holds it */
    int crash_detect;     /* the holder's session lock is armed */
} mqs_lock_info;

/* Read the lock row of this store's cluster from the database. */
MQS_API int mqs_lock_status(mqs_store *s, mqs_lock_info *out);

/* Operators only: clear the lock of this store's cluster whoever holds it.
 * The holder, if alive, is fenced on its next write. */
MQS_API int mqs_lock_force_release(mqs_store *s);

/* ---------------------------------------------------------------------------
 * Options: every tunable, its default and doc line (mqstore's and the
 * backend's). For --help, docs and the README table. Strings are static.
 * ------------------------------------------------------------------------- */
typedef struct mqs_option_info {
    const char *name;
    const char *default_value;
    const char *doc;
    const char *scope; /* "core" or the backend name */
} mqs_option_info;
typedef void (*mqs_option_fn)(void *ud, const mqs_option_info *o);
/* Core options, then, if scheme != NULL, that backend's (loads its module). */
MQS_API int mqs_option_foreach(const char *scheme, mqs_option_fn fn, void *ud);

/* ---------------------------------------------------------------------------
 * Structs that grow
 *
 * mqs_open_opts, mqs_cursor_opts, mqs_page_req and mqs_lock_cbs (given to
 * the library) and mqs_stats and mqs_lock_info (filled by it) may get new
 * fields, only ever at the end. Each travels with its size: the names of
 * the functions that take one are macros that pass sizeof the struct as
 * the caller compiled it to the _sz function. A program built against an
 * older header passes the older, smaller size: the library reads only that
 * much of what it is given (a newer field takes its default, as if 0) and
 * writes only that much of what it fills. So a field can be added without
 * an ABI break, under the same soname. A size smaller than the struct's
 * first version is refused with MQS_EINVAL. The plain functions stay
 * exported (and keep meaning the first version) for programs that call
 * them by name or through a pointer. Callers write nothing different:
 * mqs_stats_get(s, &st) expands to mqs_stats_get_sz(s, &st, sizeof st).
 * ------------------------------------------------------------------------- */
MQS_API int mqs_open_sz(const char *uri, const mqs_open_opts *opts,
                        size_t opts_size, mqs_store **out);
MQS_API int mqs_open_nomigrate_sz(const char *uri, const mqs_open_opts *opts,
                                  size_t opts_size, mqs_store **out);
MQS_API int mqs_cursor_open_sz(mqs_store *s, const mqs_cursor_opts *opts,
                               size_t opts_size, mqs_cursor **out);
MQS_API int mqs_page_async_sz(mqs_store *s, const mqs_page_req *req,
                              size_t req_size, mqs_page_fn done, void *ud);
MQS_API int mqs_lock_acquire_sz(mqs_store *s, int64_t timeout_ms,
                                const mqs_lock_cbs *cbs, size_t cbs_size);
MQS_API int mqs_stats_get_sz(mqs_store *s, mqs_stats *out, size_t out_size);
MQS_API int mqs_lock_status_sz(mqs_store *s, mqs_lock_info *out,
                               size_t out_size);

#ifndef MQS_BUILDING_LIBRARY
#define mqs_open(uri, opts, out)                                               \
    mqs_open_sz((uri), (opts), sizeof(mqs_open_opts), (out))
#define mqs_open_nomigrate(uri, opts, out)                                     \
    mqs_open_nomigrate_sz((uri), (opts), sizeof(mqs_open_opts), (out))
#define mqs_cursor_open(s, opts, out)                                          \
    mqs_cursor_open_sz((s), (opts), sizeof(mqs_cursor_opts), (out))
#define mqs_page_async(s, req, done, ud)                                       \
    mqs_page_async_sz((s), (req), sizeof(mqs_page_req), (done), (ud))
#define mqs_lock_acquire(s, timeout_ms, cbs)                                   \
    mqs_lock_acquire_sz((s), (timeout_ms), (cbs), sizeof(mqs_lock_cbs))
#define mqs_stats_get(s, out) mqs_stats_get_sz((s), (out), sizeof(mqs_stats))
#define mqs_lock_status(s, out)                                                \
    mqs_lock_status_sz((s), (out), sizeof(mqs_lock_info))
#endif

#ifdef __cplusplus
}
#endif
#endif /* MQSTORE_MQSTORE_H */
