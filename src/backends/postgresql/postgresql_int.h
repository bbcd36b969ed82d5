/*
 * postgresql_int.h - private to mqstore_postgresql.so (not installed): the
 * connection handle and what the backend's files share.
 *
 *   postgresql.c       the module: its design (file comment), the URI
 *                      options, the vtable and the entry point
 *   postgresql_conn.c  errors (SQLSTATE -> MQS_E*), connect and close
 *   postgresql_exec.c  binary encoding, statement execution (pipelines,
 *                      deferred writes, the fence's statements)
 *   postgresql_msg.c   schema, transactions, destinations, subscriptions,
 *                      inserts, acks, reads, producer marks
 *   postgresql_lock.c  the exclusive lock and the session lock (crash
 *                      detector)
 *
 * The module is built with hidden visibility: what is declared here stays
 * inside it; mqs_backend_entry is its only exported symbol.
 */
#ifndef MQS_POSTGRESQL_INT_H
#define MQS_POSTGRESQL_INT_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include <mqstore/backend.h>

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

struct mqs_be_conn {
    PGconn *pg;
    char *masked;                     /* URI with the password masked */
    int in_txn;                       /* between txn_begin and commit/rollback */
    int begin_pending;                /* BEGIN not sent yet (lazy) */
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
    /* idle_set came from a statement of the open transaction: a session
     * setting made in a transaction is undone if it does not commit, so
     * idle_set is void then (PG_IDLE_UNKNOWN: set again next time). */
    int idle_unsure;
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

/* The advisory lock key of the fence of cluster $1 (see pg_lock_fence):
 * per database and cluster, apart from the crash detector's key. */
/* idle_set when the session's value is not known. */
#define PG_IDLE_UNKNOWN INT64_MIN

#define PG_FENCE_KEY                                                           \
    "pg_catalog.hashtextextended('mqstore-fence:' || "                         \
    "pg_catalog.current_database() || ':' || $1::text, 0)"

/* Binary encoding (network byte order), for array parameters. */
typedef struct pg_buf {
    char *p;
    size_t len, cap;
    int oom;
} pg_buf;

/* One statement and its parameters. */
typedef struct pg_stmt {
    const char *sql;
    int n; /* parameters */
    const Oid *types;
    const char *const *vals;
    const int *lens; /* NULL: every parameter is text */
    const int *fmts; /* NULL: every parameter is text */
} pg_stmt;

/* Reads a deferred write's result (see pg_defer). */
typedef int (*pg_done_fn)(mqs_be_conn *c, PGresult *r, void *ctx);

/* ---- errors and connection (postgresql_conn.c) ---- */
void pg_set_err(mqs_be_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void pg_oneline(char *dst, size_t size, const char *src);
int pg_is(const char *state, const char *code);
int pg_fail_code(mqs_be_conn *c, const PGresult *r, const char *what,
                 int forced);
int pg_fail(mqs_be_conn *c, const PGresult *r, const char *what);
int pg_unusable(mqs_be_conn *c, const char *what);
int pg_conn_open(const mqs_be_open_args *a, mqs_be_conn **out,
                 char *err, size_t errlen);
void pg_conn_close(mqs_be_conn *c);
const char *pg_conn_errmsg(mqs_be_conn *c);
int pg_conn_max_message(mqs_be_conn *c, size_t *max);

/* ---- binary encoding, statement execution (postgresql_exec.c) ---- */
void pg_arr_begin(pg_buf *b, uint32_t elem_oid, size_t n, int has_null);
void pg_arr_i64(pg_buf *b, int64_t v);
void pg_arr_i16(pg_buf *b, int v);
void pg_arr_bytes(pg_buf *b, const void *p, size_t n);
int pg_get_int(const PGresult *r, int row, int col, int64_t *out);
int pg_bad_result(mqs_be_conn *c, const char *what);
int pg_ok(const PGresult *r);
void pg_defer_clear(mqs_be_conn *c);
int pg_defer(mqs_be_conn *c, const char *what, const pg_stmt *st,
             pg_done_fn done, void *ctx);
int pg_flush(mqs_be_conn *c, const char *what, const pg_stmt *st,
             int nst, PGresult **res, int commit);
int pg_run(mqs_be_conn *c, const char *what, const pg_stmt *st,
           int nst, PGresult **res);
int pg_run1(mqs_be_conn *c, const char *what, const char *sql, int n,
            const Oid *types, const char *const *vals, PGresult **res);
int pg_run_id(mqs_be_conn *c, const char *what, const char *sql, int n,
              const Oid *types, const char *const *vals, int64_t *out,
              int *found);

/* ---- vtable callbacks (postgresql_msg.c) ---- */
int pg_schema_version(mqs_be_conn *c, int *version);
int pg_schema_apply(mqs_be_conn *c, const mqs_be_migration *m);
int pg_txn_begin(mqs_be_conn *c);
int pg_txn_commit(mqs_be_conn *c);
int pg_txn_rollback(mqs_be_conn *c);
int pg_dest_resolve(mqs_be_conn *c, mqs_kind kind, const char *name,
                    int create, int64_t *dest_id);
int pg_sub_create(mqs_be_conn *c, int64_t topic_id, const char *name,
                  int64_t *sub_id);
int pg_sub_lookup(mqs_be_conn *c, const char *topic, const char *name,
                  int64_t *sub_id);
int pg_sub_remove(mqs_be_conn *c, int64_t sub_id);
int pg_purge(mqs_be_conn *c, int64_t dest_id, uint64_t *removed);
int pg_msg_insert(mqs_be_conn *c, mqs_be_msg *m, size_t n);
int pg_msg_ack(mqs_be_conn *c, const mqs_be_ref *r, size_t n);
int pg_msg_nack(mqs_be_conn *c, const mqs_be_ref *r);
int pg_page_read(mqs_be_conn *c, const mqs_be_page *p, mqs_be_row_cb cb,
                 void *ud);
int pg_msg_recent(mqs_be_conn *c, size_t limit, mqs_be_header_cb cb,
                  void *ud);
int pg_mark_put(mqs_be_conn *c, const char *producer, int64_t seq,
                int64_t now_ms);
int pg_mark_list(mqs_be_conn *c, mqs_be_mark_cb cb, void *ud);
int pg_mark_prune(mqs_be_conn *c, int64_t before_ms, uint64_t *removed);
int pg_dest_list(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud);
int pg_dest_names(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud);
int pg_vacuum(mqs_be_conn *c, char *msg, size_t msglen);

/* ---- vtable callbacks (postgresql_lock.c) ---- */
int pg_lock_read(mqs_be_conn *c, const char *cluster,
                 mqs_be_lock_state *st);
int pg_lock_acquire(mqs_be_conn *c, const mqs_be_lock *l,
                    mqs_be_lock_state *st);
int pg_lock_renew(mqs_be_conn *c, const mqs_be_lock *l,
                  mqs_be_lock_state *st);
int pg_lock_fence(mqs_be_conn *c, const mqs_be_fence *f);
int pg_lock_release(mqs_be_conn *c, const mqs_be_lock *l);
int pg_lock_force(mqs_be_conn *c, const char *cluster);
int pg_session_lock(mqs_be_conn *c, const char *cluster, int64_t wait_ms,
                    int64_t *session_id);
int pg_session_unlock(mqs_be_conn *c, const char *cluster);

#endif /* MQS_POSTGRESQL_INT_H */
