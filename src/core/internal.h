/* internal.h - what the core's files share. Never installed. */
#ifndef MQS_CORE_INTERNAL_H
#define MQS_CORE_INTERNAL_H

#include <pthread.h>
#include <semaphore.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* The library defines the plain functions that mqstore.h maps to their
 * _sz variants for callers (see "Structs that grow" there). */
#define MQS_BUILDING_LIBRARY 1
#include "mqstore/backend.h"
#include "mqstore/mqstore.h"

#define MQS_INTERNAL __attribute__((visibility("hidden")))

/* ---- core options: name, the mqs_config field it sets, how its value is
 * parsed, default, doc (one table feeds the parser, the CLI's `options`
 * listing and the README). How a value is parsed (expanded by uri.c into
 * its option table):
 *   MQS_OPT_FLAG(yes, no): a bool field, true for the word yes, false for no
 *   MQS_OPT_SIZE(lo, hi):  a size_t field, a whole number from lo to hi
 *   MQS_OPT_MS(lo, hi):    an int64_t field, milliseconds from lo to hi
 *   MQS_OPT_TEXT:          a char array, 1 byte to its size - 1;
 *                          "<hostname>:<pid>" is expanded
 * Cross-option limits (renew_ms at most lease_ms/3) are checked in
 * mqs__uri_parse once every option is known. ---- */
typedef enum mqs_opt_kind {
    MQS_OPT_K_FLAG,
    MQS_OPT_K_SIZE,
    MQS_OPT_K_MS,
    MQS_OPT_K_TEXT
} mqs_opt_kind;
#define MQS_OPT_FLAG(y, n) .kind = MQS_OPT_K_FLAG, .yes = (y), .no = (n)
#define MQS_OPT_SIZE(l, h) .kind = MQS_OPT_K_SIZE, .lo = (l), .hi = (h)
#define MQS_OPT_MS(l, h) .kind = MQS_OPT_K_MS, .lo = (l), .hi = (h)
#define MQS_OPT_TEXT .kind = MQS_OPT_K_TEXT

#define MQS_CORE_OPTIONS(X)                                                    \
    X(commit, commit_each, MQS_OPT_FLAG("each", "group"), "group",             \
      "group: concurrent writes share one transaction; each: one "             \
      "transaction per write on the caller's thread (the baseline)")           \
    X(batch_max, batch_max, MQS_OPT_SIZE(1, 1000000), "1024",                  \
      "most writes committed in one group transaction")                        \
    X(batch_bytes, batch_bytes, MQS_OPT_SIZE(1, 1LL << 40), "8388608",         \
      "most message bytes in one group transaction (a bigger single write "    \
      "still goes, alone)")                                                    \
    X(max_message_size, max_message_size, MQS_OPT_SIZE(1, 1LL << 40),          \
      "16777216",                                                              \
      "largest headers + body accepted, in bytes (capped by the backend)")     \
    X(max_pending_bytes, max_pending_bytes, MQS_OPT_SIZE(1, 1LL << 50),        \
      "67108864",                                                              \
      "bytes of async writes that may wait for the writer before "             \
      "mqs_enqueue_async blocks")                                              \
    X(pool_size, pool_size, MQS_OPT_SIZE(1, 256), "4",                         \
      "database connections for cursors, stats and commit=each callers")      \
    X(migrate, migrate_auto, MQS_OPT_FLAG("auto", "off"), "auto",              \
      "auto: create or upgrade the schema on open; off: refuse to open "       \
      "unless the schema is current")                                          \
    X(reconnect_timeout_ms, reconnect_timeout_ms, MQS_OPT_MS(0, 86400000LL),   \
      "30000",                                                                 \
      "how long a write waits for a lost database to come back before it "     \
      "fails with MQS_ECONN")                                                  \
    X(cluster, cluster, MQS_OPT_TEXT, "default",                               \
      "HA: name of the lock; brokers sharing a database and a cluster name "   \
      "form one master/slave group")                                           \
    X(node_id, node_id, MQS_OPT_TEXT, "<hostname>:<pid>",                      \
      "HA: this node's name in the lock row")                                  \
    X(lease_ms, lease_ms, MQS_OPT_MS(100, 3600000LL), "2000",                  \
      "HA: lease length; a frozen master is replaced after it expires")        \
    X(renew_ms, renew_ms, MQS_OPT_MS(10, 3600000LL), "500",                    \
      "HA: lease renewal interval (a library thread on its own connection; "  \
      "writes never renew); at most lease_ms/3")                               \
    X(poll_ms, poll_ms, MQS_OPT_MS(1, 3600000LL), "200",                       \
      "HA: how often a standby retries the lock")                              \
    X(crash_detect, crash_detect, MQS_OPT_FLAG("on", "off"), "on",             \
      "HA: on: a session-level lock lets a standby take over at once when "    \
      "the master's process dies; off: lease only (behind a transaction "     \
      "pooler)")

typedef struct mqs_config {
    bool commit_each;
    size_t batch_max;
    size_t batch_bytes;
    size_t max_message_size;
    size_t max_pending_bytes;
    size_t pool_size;
    bool migrate_auto;
    int64_t reconnect_timeout_ms;
    char cluster[128];
    char node_id[256];
    int64_t lease_ms, renew_ms, poll_ms;
    bool crash_detect;
} mqs_config;

/* A parsed URI. All strings owned by the struct (mqs_uri_free). */
typedef struct mqs_parsed_uri {
    char *scheme;     /* as written, lower-cased */
    char *be_uri;     /* URI minus core options (lock.c parses it again) */
    char *masked;     /* full URI with the password masked */
    mqs_config cfg;
    /* The URI taken apart for the backend (conn_open's args->parts); its
     * strings point into the allocations below. */
    mqs_be_uri parts;
    char *user, *password, *path; /* decoded; NULL when absent */
    char *pw_raw;                 /* the password as written; NULL */
    char *pw_opt; /* the first secret option's value (password=...), decoded */
    mqs_be_host *hosts;           /* host and port strings malloc'd */
    mqs_be_kv *opts;              /* key and value strings malloc'd */
} mqs_parsed_uri;

/* ---- errors (errors.c) ---- */
/* Record msg as the calling thread's last error on s (s may be NULL) and
 * return code, so callers can `return mqs__err(...)`. */
MQS_INTERNAL int mqs__err(const mqs_store *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
MQS_INTERNAL void mqs__log(mqs_store *s, mqs_log_level lvl, const char *fmt,
                           ...) __attribute__((format(printf, 3, 4)));
MQS_INTERNAL char *mqs__strdup(const char *s);
/* Growable arrays: make the array *pp (pp is the address of a T *, elem is
 * sizeof(T)) hold at least need elements. Its capacity *cap starts at first
 * and doubles, so appending is amortized O(1). 0, or MQS_ENOMEM leaving *pp
 * and *cap as they were. */
MQS_INTERNAL int mqs__grow(void *pp, size_t *cap, size_t need, size_t elem,
                           size_t first);
MQS_INTERNAL int64_t mqs__now_ms(void);      /* wall clock */
MQS_INTERNAL int64_t mqs__mono_ms(void);     /* monotonic clock */
MQS_INTERNAL int64_t mqs__mono_us(void);     /* monotonic, microseconds */
/* *ts = CLOCK_MONOTONIC now + ms (ms <= 0: now), for clockwait. */
MQS_INTERNAL void mqs__deadline(struct timespec *ts, int64_t ms);
/* The same, in microseconds (short waits such as the writer's linger). */
MQS_INTERNAL void mqs__deadline_us(struct timespec *ts, int64_t us);
MQS_INTERNAL void mqs__sleep_ms(int64_t ms);

/* ---- page rows (rowbuf.c): the backend's rows of one page, copied ----
 * A backend's row pointers live only during its callback: the cursor and
 * mqs_page_async copy each row's headers and body into one arena, and turn
 * a kept row into an mqs_message once the page is complete (the arena no
 * longer moves then). */
typedef struct mqs_rowbuf_row {
    mqs_be_row r; /* its pointers are the backend's: only off is used */
    size_t off;   /* headers then body, in the arena */
} mqs_rowbuf_row;
typedef struct mqs_rowbuf {
    mqs_rowbuf_row *rows;
    size_t n, cap;
    unsigned char *arena;
    size_t len, arena_cap;
} mqs_rowbuf;
/* Append a copy of r; MQS_ENOMEM leaves b as it was. */
MQS_INTERNAL int mqs__rowbuf_add(mqs_rowbuf *b, const mqs_be_row *r);
/* Row i as a message of (kind, dest, sub_id, sub_name): pointers into b,
 * valid until b changes. */
MQS_INTERNAL void mqs__rowbuf_msg(const mqs_rowbuf *b, size_t i,
                                  mqs_message *m, mqs_kind kind,
                                  const char *dest, int64_t sub_id,
                                  const char *sub_name);
MQS_INTERNAL void mqs__rowbuf_free(mqs_rowbuf *b);

/* ---- module loader (loader.c) ---- */
/* Find, load and validate the module for scheme. On failure the message is
 * recorded for s == NULL. The module stays loaded for the process. */
MQS_INTERNAL int mqs__load_backend(const char *scheme, const mqs_backend **out);

/* ---- URIs (uri.c) ---- */
/* True when a password may be cut short by an unencoded / ? or # (see
 * uri.c): such a URI is refused, and masked generously. */
MQS_INTERNAL bool mqs__uri_ambiguous_password(const char *uri);
MQS_INTERNAL int mqs__uri_parse(const char *uri, const mqs_backend *be,
                                mqs_parsed_uri *out);
MQS_INTERNAL void mqs__uri_free(mqs_parsed_uri *u);
/* Scheme of uri into buf (lower-cased); MQS_EINVAL if there is none. */
MQS_INTERNAL int mqs__uri_scheme(const char *uri, char *buf, size_t buflen);


/* ---- write requests (writer.c) ---- */
typedef enum op_kind {
    OP_ENQ,
    OP_ACK,
    OP_NACK,
    OP_SUB_CREATE,
    OP_SUB_REMOVE,
    OP_PURGE,
    OP_MARK,       /* name = producer, id = seq */
    OP_MARK_PRUNE, /* id = before_ms; count = removed */
    OP_PAGE        /* a read (page.c), the only op of its request: dkind,
                      dest (NULL for a topic without one), sub_id,
                      priority = after_priority, id = after_id */
} op_kind;

typedef struct mqs_op {
    op_kind kind;
    mqs_kind dkind;
    char *dest;          /* ENQ, SUB_CREATE, PURGE (NULL = all) */
    char *name;          /* SUB_CREATE */
    unsigned char *data; /* ENQ: headers then body, one allocation */
    size_t hlen, blen;
    int priority;
    int64_t expires_ms;
    int64_t id;     /* ENQ: out; ACK/NACK: in */
    int64_t sub_id; /* ACK/NACK/SUB_REMOVE: in; SUB_CREATE: out */
    uint64_t count; /* PURGE: out */
} mqs_op;

typedef struct mqs_page mqs_page; /* page.c */

typedef struct mqs_request {
    struct mqs_request *next;
    mqs_op *ops;
    size_t n_ops, cap_ops;
    size_t bytes; /* message bytes, for batch and back-pressure limits */
    int rc;
    char *errmsg;      /* set on failure (owned) */
    bool async;
    mqs_done_fn cb;
    mqs_txn_done_fn tcb; /* async transaction commit */
    mqs_page *page;      /* OP_PAGE: limits, callback and result; a
                            request with one is a read, never batched */
    void *ud;
    /* A synchronous request's waiter sleeps on this, not on the store's
     * mutex: the writer posts it once, after releasing mu, when it is done
     * with the request (writer.c complete()). */
    sem_t done;
} mqs_request;

/* A small pool of backend connections, opened lazily. */
typedef struct mqs_pool {
    mqs_be_conn **conns;
    bool *busy;
    size_t n;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} mqs_pool;

/* Destination id cache: (kind, name) -> id. Ids never change once
 * committed (nothing deletes a destination), so entries never go stale. */
typedef struct dest_entry {
    struct dest_entry *next;
    mqs_kind kind;
    int64_t id;
    char name[];
} dest_entry;

struct mqs_store {
    const mqs_backend *be;
    mqs_parsed_uri uri;
    mqs_open_opts opts;
    size_t max_message; /* effective limit */
    bool schema_newer;  /* opened without migrating a newer schema: no
                           writes */

    /* writer thread and its queue (commit=group) */
    pthread_mutex_t mu;
    pthread_cond_t cv_work;  /* writer: something queued, or stop */
    pthread_cond_t cv_space; /* async producers: queue drained */
    mqs_request *q_head, *q_tail;
    size_t q_count, q_bytes;
    bool stop;
    bool writer_running;
    pthread_t writer;
    mqs_request **batch; /* the writer's batch array, batch_max long */
    /* wconn in use (under mu): by the writer for a batch, or by a
     * synchronous caller running its own request (writer.c, "caller
     * runs"). Whoever sets it is the only user of wconn until it clears
     * it and broadcasts cv_work. */
    bool wbusy;
    /* Synchronous requests in the last batch (under mu): how loaded the
     * store is. The writer lingers for that many; at most one lets a
     * caller run its own request. */
    size_t last_sync_n;
    /* The writer is waiting on cv_work until q_count reaches this (under
     * mu): 1 when idle, last_sync_n while it lingers, 0 when it is not
     * waiting. A submitter signals only when its request reaches it. */
    size_t w_want;
    /* Caller-run completions (mqs_completion_fd): once cfd_on, finished
     * async requests wait in done_head..done_tail (under mu) and cfd (an
     * eventfd) is made readable; async submits refuse instead of waiting. */
    bool cfd_on;
    int cfd;
    mqs_request *done_head, *done_tail;
    mqs_be_conn *wconn; /* once the writer started: used only by whoever
                           set wbusy */

    mqs_pool pool;

    pthread_mutex_t cache_mu;
    dest_entry **cache;
    size_t cache_cap, cache_n;

    pthread_mutex_t stats_mu;
    mqs_stats stats;

    /* HA (lock.c). ha_mu guards the fields below. */
    pthread_mutex_t ha_mu;
    pthread_cond_t ha_cv;
    int ha_state;           /* HA_NONE, HA_MASTER, HA_LOST */
    int64_t token;
    int64_t lease_until;    /* local monotonic ms; step down after this */
    int64_t last_renew;     /* monotonic ms of the last committed renewal */
    int64_t renew_rtt;      /* how long that renewal took, ms */
    struct mqs_session *sess; /* the master's session-lock keeper */
    struct mqs_session *sess_wait; /* the latest one, waited for at close */
    bool session_off;         /* the backend refused session locks here */
    mqs_lock_cbs cbs;
    bool keeper_running, keeper_stop;
    bool ha_used;            /* mqs_lock_acquire was called on this store */
    int commits_inflight;    /* fenced write transactions under way */
    bool lost_pending;       /* on_lost not yet delivered */
    char lost_reason[1024];
    pthread_t keeper;
};

enum { HA_NONE = 0, HA_MASTER = 1, HA_LOST = 2 };

/* ---- HA hooks for the write path (lock.c) ---- */
typedef struct mqs_fence {
    bool active;      /* this store holds the lock: fence the writes */
    mqs_be_fence f;   /* for lock_fence */
} mqs_fence;
/* Before a write transaction: MQS_EFENCED if the lock was lost, else fill f
 * (f->active false when the store never acquired the lock). An active
 * fence counts as a commit in flight until mqs__fence_done. */
MQS_INTERNAL int mqs__fence_prepare(mqs_store *s, mqs_fence *f, char *err,
                                    size_t errlen);
/* Right before txn_commit: MQS_EFENCED (message in err) if the lock was
 * lost or the local lease ran out meanwhile: roll back instead. */
MQS_INTERNAL int mqs__fence_commit(mqs_store *s, const mqs_fence *f,
                                   char *err, size_t errlen);
/* Whether the store may write what nobody asked for (purging expired
 * rows): not on a read-only store, nor on an HA node that is not master. */
MQS_INTERNAL bool mqs__may_write_unasked(mqs_store *s);
/* After the transaction: rc is its outcome. */
MQS_INTERNAL void mqs__fence_done(mqs_store *s, const mqs_fence *f, int rc,
                                  const char *err);
MQS_INTERNAL void mqs__lock_shutdown(mqs_store *s);

/* Borrow a pool slot (with open_now, opened if needed); *slot points at the connection,
 * which the borrower may close and NULL (it is reopened on next use).
 * broken: close the connection (it failed with MQS_ECONN/EUNKNOWN). */
MQS_INTERNAL int mqs__pool_get(mqs_store *s, bool open_now,
                               mqs_be_conn ***slot);
MQS_INTERNAL void mqs__pool_put(mqs_store *s, mqs_be_conn **slot, bool broken);
/* Open a backend connection for role, recording errors for s. */
MQS_INTERNAL int mqs__conn_open(mqs_store *s, const char *role,
                                mqs_be_conn **out);

/* Run fn on a borrowed pool connection; a failure's message is recorded for
 * the calling thread and a broken connection is dropped. */
typedef int (*mqs_reader_fn)(mqs_store *s, mqs_be_conn *c, void *arg);
MQS_INTERNAL int mqs__with_reader(mqs_store *s, mqs_reader_fn fn, void *arg);

MQS_INTERNAL mqs_request *mqs__req_new(void);
MQS_INTERNAL void mqs__req_free(mqs_request *r);
MQS_INTERNAL mqs_op *mqs__req_add(mqs_request *r, op_kind kind);
/* Validate and copy a message into a new ENQ op of r. */
MQS_INTERNAL int mqs__req_add_msg(mqs_store *s, mqs_request *r,
                                  const mqs_msg *m);
/* Run r (group: via the writer; each: on this thread) and wait. Returns
 * r->rc and records the message for the calling thread. Does not free r. */
MQS_INTERNAL int mqs__submit_wait(mqs_store *s, mqs_request *r);
/* Queue r for the writer; r is freed after its callback, or at once when
 * it cannot be queued (MQS_EBUSY with caller-run completions). */
MQS_INTERNAL int mqs__submit_async(mqs_store *s, mqs_request *r);
/* The same, but MQS_EBUSY leaves r with the caller (a transaction that
 * may be committed again). */
MQS_INTERNAL int mqs__submit_async_keep(mqs_store *s, mqs_request *r);
MQS_INTERNAL int mqs__writer_start(mqs_store *s);
MQS_INTERNAL void mqs__writer_stop(mqs_store *s);
/* mqs_close, after the writer stopped: run the completions still queued
 * for the caller (mqs_completion_fd) and close the descriptor. */
MQS_INTERNAL void mqs__completions_close(mqs_store *s);

/* ---- page reads ordered with writes (page.c) ---- */
/* Read r's page (r->page != NULL) on c, the writer's connection, outside
 * any transaction; the result stays in r->page for mqs__page_complete.
 * Starts over on every call (a retry after a lost connection). On
 * failure the message is in err and the result is empty. */
MQS_INTERNAL int mqs__page_read(mqs_store *s, mqs_be_conn *c, mqs_request *r,
                                char *err, size_t errlen);
/* Call r's page callback with its outcome (r->rc, r->errmsg). */
MQS_INTERNAL void mqs__page_complete(mqs_request *r);
/* Free r->page (NULL is a no-op). */
MQS_INTERNAL void mqs__page_free(mqs_page *p);

MQS_INTERNAL int64_t mqs__cache_get(mqs_store *s, mqs_kind kind,
                                    const char *name);
MQS_INTERNAL void mqs__cache_put(mqs_store *s, mqs_kind kind,
                                 const char *name, int64_t id);
MQS_INTERNAL void mqs__cache_free(mqs_store *s);

#endif
