/*
 * sqlite_int.h - what the files of the SQLite backend share (not installed).
 *
 *   sqlite.c       URI, options, connection, the vtable and the entry point
 *   sqlite_stmt.c  errors (the one driver-code mapping) and statement helpers
 *   sqlite_sql.c   the SQL of every statement
 *   sqlite_msg.c   schema, transactions, writes, reads, producer marks
 *   sqlite_lock.c  the exclusive lock and the session lock (crash detector)
 *
 * Everything here has hidden visibility (the module is built with
 * C_VISIBILITY_PRESET hidden): the module exports only mqs_backend_entry.
 */
#ifndef MQS_SQLITE_INT_H
#define MQS_SQLITE_INT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <sqlite3.h>

#include <mqstore/backend.h>

/* Room left under SQLITE_LIMIT_LENGTH for the other columns of a message
 * row and the record header (they take well under 100 bytes). */
#define SQLITE_ROW_MARGIN 1024

/* ---------------------------------------------------------------------------
 * Statements, prepared lazily: most need the schema, which does not exist
 * before the first migration.
 * ------------------------------------------------------------------------- */
enum sqlite_stmt_id {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_META_SET,
    ST_DEST_GET,
    ST_DEST_ADD,
    ST_SUB_ANY,
    ST_MSG_INS,
    ST_PEND_INS,
    ST_ACK_Q,
    ST_ACK_P,
    ST_ACK_ORPHAN,
    ST_NACK_Q,
    ST_NACK_P,
    ST_SUB_GET,
    ST_SUB_ADD,
    ST_SUB_RM_ORPHANS,
    ST_SUB_RM_PEND,
    ST_SUB_RM,
    ST_PURGE_ALL_Q,
    ST_PURGE_ALL_P,
    ST_PURGE_ALL_M,
    ST_PURGE_Q,
    ST_PURGE_P,
    ST_PURGE_M,
    ST_SUB_LOOKUP,
    ST_PAGE_Q_EQ,
    ST_PAGE_Q_LT,
    ST_PAGE_S_EQ,
    ST_PAGE_S_LT,
    ST_DEST_LIST,
    ST_DEST_NAMES,
    ST_LOCK_INIT,
    ST_LOCK_GET,
    ST_LOCK_TAKE,
    ST_LOCK_RENEW,
    ST_LOCK_RELEASE,
    ST_LOCK_FORCE,
    ST_MARK_PUT,
    ST_MARK_LIST,
    ST_MARK_PRUNE,
    ST_MSG_RECENT,
    ST_COUNT
};


/* sq_sql[id]: the statement's text, and its name for error messages. */
struct sq_stmt_def {
    const char *name; /* for error messages */
    const char *sql;
};
extern const struct sq_stmt_def sq_sql[ST_COUNT];

struct mqs_be_conn {
    sqlite3 *db;
    char *path; /* decoded file path, for messages */
    char role[16];
    int busy_ms;
    int64_t busy_start; /* monotonic ms of the first retry of a wait */
    /* A lock call's bound on its waits (sqlite_bound): while busy_until is
     * not 0 every wait ends at that monotonic ms instead of busy_ms after
     * its start. bound_ms is the bound, for messages. */
    int64_t busy_until;
    int64_t bound_ms;
    /* The fence of the write transaction in progress (lock_fence), checked
     * again by txn_commit; fence_on is cleared when the transaction ends. */
    int fence_on;
    char *fence_cluster;
    char *fence_node;
    int64_t fence_token;
    int64_t fence_margin;
    sqlite3_stmt *st[ST_COUNT];
    /* Session lock (crash detector): the side file, and the cluster whose
     * byte this connection holds (NULL: none). */
    int lock_fd; /* -1 until first used */
    char *lock_path;
    char *sess_cluster;
    off_t sess_off;
    char err[1024];
};

/* ---- sqlite_stmt.c: errors and statement helpers ---- */
const char *sq_code_name(int rc);
/* Record a failure of `what` and return its MQS_E* code. */
int sq_fail(mqs_be_conn *c, int rc, const char *what);
int sq_failf(mqs_be_conn *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int sq_get(mqs_be_conn *c, enum sqlite_stmt_id id, sqlite3_stmt **out);
/* A bind failed (SQLITE_TOOBIG for an oversized blob, in practice). */
int sq_bind_fail(mqs_be_conn *c, sqlite3_stmt *st, enum sqlite_stmt_id id,
                 int rc);
/* Step a statement that returns no rows, then reset it. *changes (may be
 * NULL) gets the number of rows it changed. */
int sq_run(mqs_be_conn *c, sqlite3_stmt *st, enum sqlite_stmt_id id,
           int64_t *changes);
/* At most one row with one integer: 1 with *val set, 0 for no row, or a
 * negative code. Resets. */
int sq_one_int(mqs_be_conn *c, sqlite3_stmt *st, enum sqlite_stmt_id id,
               int64_t *val);
int sq_exec_id(mqs_be_conn *c, enum sqlite_stmt_id id);
int64_t sq_mono_ms(void);

/* ---- sqlite_msg.c: schema, transactions, writes, reads, marks ---- */
/* Schema version of an mqstore database, 0 for an empty one, MQS_ECORRUPT
 * for anything else. Reads only. */
int sq_probe(mqs_be_conn *c, int *version);
int sq_schema_version(mqs_be_conn *c, int *version);
int sq_schema_apply(mqs_be_conn *c, const mqs_be_migration *m);
int sq_txn_begin(mqs_be_conn *c);
int sq_txn_commit(mqs_be_conn *c);
int sq_txn_rollback(mqs_be_conn *c);
int sq_dest_resolve(mqs_be_conn *c, mqs_kind kind, const char *name,
                    int create, int64_t *dest_id);
int sq_msg_insert(mqs_be_conn *c, mqs_be_msg *m, size_t n);
int sq_msg_ack(mqs_be_conn *c, const mqs_be_ref *r, size_t n);
int sq_msg_nack(mqs_be_conn *c, const mqs_be_ref *r);
int sq_sub_create(mqs_be_conn *c, int64_t topic_id, const char *name,
                  int64_t *sub_id);
int sq_sub_remove(mqs_be_conn *c, int64_t sub_id);
int sq_purge(mqs_be_conn *c, int64_t dest_id, uint64_t *removed);
int sq_sub_lookup(mqs_be_conn *c, const char *topic, const char *name,
                  int64_t *sub_id);
int sq_page_read(mqs_be_conn *c, const mqs_be_page *p, mqs_be_row_cb cb,
                 void *ud);
int sq_dest_list(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud);
int sq_dest_names(mqs_be_conn *c, mqs_be_dest_cb cb, void *ud);
int sq_msg_recent(mqs_be_conn *c, size_t limit, mqs_be_header_cb cb,
                  void *ud);
int sq_mark_put(mqs_be_conn *c, const char *producer, int64_t seq,
                int64_t now_ms);
int sq_mark_list(mqs_be_conn *c, mqs_be_mark_cb cb, void *ud);
int sq_mark_prune(mqs_be_conn *c, int64_t before_ms, uint64_t *removed);

/* ---- sqlite_lock.c: exclusive lock, session lock ---- */
/* Check the fence recorded by lock_fence (txn_commit). */
int sq_fence_check(mqs_be_conn *c);
/* Roll back the lock's own transaction, keeping the failure's message. */
int sq_lock_abort(mqs_be_conn *c, int rc);
int sq_lock_acquire(mqs_be_conn *c, const mqs_be_lock *l,
                    mqs_be_lock_state *st);
int sq_lock_renew(mqs_be_conn *c, const mqs_be_lock *l,
                  mqs_be_lock_state *st);
int sq_lock_release(mqs_be_conn *c, const mqs_be_lock *l);
int sq_lock_read(mqs_be_conn *c, const char *cluster, mqs_be_lock_state *st);
int sq_lock_force(mqs_be_conn *c, const char *cluster);
int sq_lock_fence(mqs_be_conn *c, const mqs_be_fence *f);
int sq_session_lock(mqs_be_conn *c, const char *cluster, int64_t wait_ms,
                    int64_t *session_id);
int sq_session_unlock(mqs_be_conn *c, const char *cluster);

#endif /* MQS_SQLITE_INT_H */
