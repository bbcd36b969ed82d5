/* be_call.h - the core's only way into a backend's vtable: one wrapper per
 * member of mqs_backend (after PostgreSQL's tableam.h). Nothing else in the
 * core calls `be->member(...)`.
 *
 * Every wrapper:
 *  - returns 0, or a known negative MQS_E* code; anything else the backend
 *    returns (a positive value, an unknown negative one) becomes MQS_EIO
 *    with the message "backend <name> returned <n> from <member>";
 *  - on failure captures the backend's message (conn_errmsg, conn_open's
 *    err) with the store's password, decoded and as written in the URI,
 *    replaced by "***" (mqs__bc_scrub); mqs__bc_conn_errmsg returns it;
 *  - for an optional member the module lacks, does what the core always
 *    did without it (MQS_ENOTSUP, unless said otherwise);
 *  - for rows of a page with a limit, refuses a backend that delivers more
 *    rows than the limit (MQS_EIO) before the extra row reaches the caller.
 *
 * The conventions of backend.h hold for all of them: a connection is used
 * by one thread at a time; pointer arguments are borrowed for the call;
 * write members run only between txn_begin and txn_commit/txn_rollback,
 * read members outside a write transaction.
 */
#ifndef MQS_CORE_BE_CALL_H
#define MQS_CORE_BE_CALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "internal.h"

/* What a wrapper needs besides the connection: the module, and the secrets
 * to scrub from what it says (NULL or "" when the URI has none). The lease
 * agent (lock.c) has its own copy of the strings, as it may outlive the
 * store. */
typedef struct mqs_bcx {
    const mqs_backend *be;
    const char *pw;     /* the password, percent-decoded */
    const char *pw_raw; /* the password as written in the URI */
    const char *pw_opt; /* a secret option's value (password=...), decoded */
} mqs_bcx;

/* The wrapper context of store s, for one call (a compound literal: valid
 * in the enclosing block). */
#define MQS_BCX(s)                                                             \
    (&(const mqs_bcx){(s)->be, (s)->uri.password, (s)->uri.pw_raw,          \
                      (s)->uri.pw_opt})

/* ---- helpers (be_call.c), also used by tests/t_be_call.c ---- */

/* Copy src into dst (dstlen > 0; always terminated, truncated to fit) with
 * every occurrence of a non-empty secrets[i] replaced by "***"; where two
 * secrets match at one place the longer wins. Returns dst. */
MQS_INTERNAL char *mqs__bc_scrub(char *dst, size_t dstlen, const char *src,
                                 const char *const *secrets, size_t n);
/* rc as the core accepts it: 0 and the MQS_E* codes of common.h stay,
 * anything else is MQS_EIO. */
MQS_INTERNAL int mqs__bc_rc(int rc);

/* ---- optional members: whether the module has them ---- */
/* The six lock_* members (all or none, ABI 1.1/2.0). */
MQS_INTERNAL bool mqs__bc_has_lock(const mqs_backend *be);
/* session_lock and session_unlock (the loader checked they come as a pair). */
MQS_INTERNAL bool mqs__bc_has_session(const mqs_backend *be);
/* mark_put, mark_list and mark_prune (ABI 2.1, all three or none). */
MQS_INTERNAL bool mqs__bc_has_marks(const mqs_backend *be);
MQS_INTERNAL bool mqs__bc_has_vacuum(const mqs_backend *be);     /* 2.2 */
MQS_INTERNAL bool mqs__bc_has_msg_recent(const mqs_backend *be); /* 2.3 */

/* ---- connection ---- */

/* Any thread; the new connection then belongs to the caller. On failure
 * *out is NULL and err holds the backend's message, scrubbed (a module
 * that reports success without a connection fails with MQS_EIO). */
MQS_INTERNAL int mqs__bc_conn_open(const mqs_bcx *b,
                                   const mqs_be_open_args *a,
                                   mqs_be_conn **out, char *err,
                                   size_t errlen);
/* By the connection's owner, outside any call on it; also after a failed
 * transaction (a broken connection is closed, not rolled back). NULL is a
 * no-op. */
MQS_INTERNAL void mqs__bc_conn_close(const mqs_bcx *b, mqs_be_conn *c);
/* Right after a failed call on c, on the same thread: that failure's
 * message (the wrapper's own, when it changed the code), else what the
 * backend says now; scrubbed either way. The text lives in a per-thread
 * buffer until the next wrapper call on this thread. */
MQS_INTERNAL const char *mqs__bc_conn_errmsg(const mqs_bcx *b,
                                             mqs_be_conn *c);
/* Optional: the connection's largest message. Absent: MQS_ENOTSUP (the
 * core's max_message_size alone applies). Outside a transaction. */
MQS_INTERNAL int mqs__bc_conn_max_message(const mqs_bcx *b, mqs_be_conn *c,
                                          size_t *max);

/* ---- schema: outside any write transaction ---- */
MQS_INTERNAL int mqs__bc_schema_version(const mqs_bcx *b, mqs_be_conn *c,
                                        int *version);
/* Runs the migration in its own transaction. */
MQS_INTERNAL int mqs__bc_schema_apply(const mqs_bcx *b, mqs_be_conn *c,
                                      const mqs_be_migration *m);

/* ---- write transactions: one per connection at a time ---- */
MQS_INTERNAL int mqs__bc_txn_begin(const mqs_bcx *b, mqs_be_conn *c);
/* The arrays passed to msg_insert/msg_ack since txn_begin must stay valid
 * until it returns: the backend may write them only now. */
MQS_INTERNAL int mqs__bc_txn_commit(const mqs_bcx *b, mqs_be_conn *c);
/* After any failure inside the transaction; its code matters only to say
 * the connection is broken. */
MQS_INTERNAL int mqs__bc_txn_rollback(const mqs_bcx *b, mqs_be_conn *c);

/* ---- writes: inside a write transaction ---- */
/* Also outside one with create == 0 (a plain read, ABI 2.3: page reads). */
MQS_INTERNAL int mqs__bc_dest_resolve(const mqs_bcx *b, mqs_be_conn *c,
                                      mqs_kind kind, const char *name,
                                      int create, int64_t *dest_id);
/* m[0..n) stays untouched until txn_commit/txn_rollback returns (ids are
 * set by txn_commit at the latest). */
MQS_INTERNAL int mqs__bc_msg_insert(const mqs_bcx *b, mqs_be_conn *c,
                                    mqs_be_msg *m, size_t n);
/* r[0..n) stays untouched until txn_commit/txn_rollback returns. */
MQS_INTERNAL int mqs__bc_msg_ack(const mqs_bcx *b, mqs_be_conn *c,
                                 const mqs_be_ref *r, size_t n);
MQS_INTERNAL int mqs__bc_msg_nack(const mqs_bcx *b, mqs_be_conn *c,
                                  const mqs_be_ref *r);
MQS_INTERNAL int mqs__bc_sub_create(const mqs_bcx *b, mqs_be_conn *c,
                                    int64_t topic_id, const char *name,
                                    int64_t *sub_id);
MQS_INTERNAL int mqs__bc_sub_remove(const mqs_bcx *b, mqs_be_conn *c,
                                    int64_t sub_id);
MQS_INTERNAL int mqs__bc_purge(const mqs_bcx *b, mqs_be_conn *c,
                               int64_t dest_id, uint64_t *removed);
/* Optional (marks): absent -> MQS_ENOTSUP. producer stays valid until
 * txn_commit (the backend may defer the write). */
MQS_INTERNAL int mqs__bc_mark_put(const mqs_bcx *b, mqs_be_conn *c,
                                  const char *producer, int64_t seq,
                                  int64_t now_ms);
MQS_INTERNAL int mqs__bc_mark_prune(const mqs_bcx *b, mqs_be_conn *c,
                                    int64_t before_ms, uint64_t *removed);
/* Right after txn_begin, when this store holds the lock: COMMIT becomes
 * conditional on still holding it. Absent (no lock group): MQS_ENOTSUP. */
MQS_INTERNAL int mqs__bc_lock_fence(const mqs_bcx *b, mqs_be_conn *c,
                                    const mqs_be_fence *f);

/* ---- reads: outside a write transaction ---- */
MQS_INTERNAL int mqs__bc_sub_lookup(const mqs_bcx *b, mqs_be_conn *c,
                                    const char *topic, const char *name,
                                    int64_t *sub_id);
/* At most p->limit rows reach cb; one more is MQS_EIO ("backend X
 * delivered more than N rows from page_read"), before it reaches cb. A
 * non-zero return of cb stops the page (0 is returned). */
MQS_INTERNAL int mqs__bc_page_read(const mqs_bcx *b, mqs_be_conn *c,
                                   const mqs_be_page *p, mqs_be_row_cb cb,
                                   void *ud);
/* cb's non-zero return stops the walk (the backend then returns 0). */
MQS_INTERNAL int mqs__bc_dest_list(const mqs_bcx *b, mqs_be_conn *c,
                                   mqs_be_dest_cb cb, void *ud);
/* dest_names (ABI 2.2); a module without it: dest_list (counts and all). */
MQS_INTERNAL int mqs__bc_dest_names(const mqs_bcx *b, mqs_be_conn *c,
                                    mqs_be_dest_cb cb, void *ud);
/* Optional (marks): absent -> MQS_ENOTSUP. A non-zero return of cb stops
 * the walk and is returned as it is. */
MQS_INTERNAL int mqs__bc_mark_list(const mqs_bcx *b, mqs_be_conn *c,
                                   mqs_be_mark_cb cb, void *ud);
/* Optional (2.2), on an operator's request, outside any transaction.
 * Absent: msg says there is nothing to do, and 0. */
MQS_INTERNAL int mqs__bc_vacuum(const mqs_bcx *b, mqs_be_conn *c, char *msg,
                                size_t msglen);
/* Optional (2.3): absent -> MQS_ENOTSUP. At most limit rows reach cb (as
 * page_read); cb's non-zero return stops the walk (0 is returned). */
MQS_INTERNAL int mqs__bc_msg_recent(const mqs_bcx *b, mqs_be_conn *c,
                                    size_t limit, mqs_be_header_cb cb,
                                    void *ud);

/* ---- exclusive lock (absent lock group: MQS_ENOTSUP) ---- */
/* Each in its own transaction, never inside the caller's write
 * transaction; on a pooled connection (acquire, release, read, force) or
 * the lease agent's (renew). MQS_EBUSY: held elsewhere (*st says by whom). */
MQS_INTERNAL int mqs__bc_lock_acquire(const mqs_bcx *b, mqs_be_conn *c,
                                      const mqs_be_lock *l,
                                      mqs_be_lock_state *st);
/* MQS_EFENCED: this node no longer holds the lock. */
MQS_INTERNAL int mqs__bc_lock_renew(const mqs_bcx *b, mqs_be_conn *c,
                                    const mqs_be_lock *l,
                                    mqs_be_lock_state *st);
MQS_INTERNAL int mqs__bc_lock_release(const mqs_bcx *b, mqs_be_conn *c,
                                      const mqs_be_lock *l);
MQS_INTERNAL int mqs__bc_lock_read(const mqs_bcx *b, mqs_be_conn *c,
                                   const char *cluster,
                                   mqs_be_lock_state *st);
MQS_INTERNAL int mqs__bc_lock_force(const mqs_bcx *b, mqs_be_conn *c,
                                    const char *cluster);

/* ---- crash detector (optional pair: absent -> MQS_ENOTSUP) ---- */
/* On a connection kept for it (a standby's, or the lease agent's), never a
 * writer's or a pooled one: the lock lives as long as the session. */
MQS_INTERNAL int mqs__bc_session_lock(const mqs_bcx *b, mqs_be_conn *c,
                                      const char *cluster, int64_t wait_ms,
                                      int64_t *session_id);
MQS_INTERNAL int mqs__bc_session_unlock(const mqs_bcx *b, mqs_be_conn *c,
                                        const char *cluster);

#endif
