/* be_call.c - the wrappers of be_call.h: every call from the core into a
 * backend module, with its return code checked, its message scrubbed of the
 * password, and its rows counted. Each wrapper's contract is in
 * be_call.h. */
#include <stdio.h>
#include <string.h>

#include "be_call.h"

/* The failure of the last wrapper call on this thread, kept for
 * mqs__bc_conn_errmsg: the message goes with the call that failed, and is
 * the wrapper's own when the wrapper changed the code. */
#define MSG_MAX 2048
static _Thread_local struct {
    const mqs_be_conn *conn;
    bool set;
    char msg[MSG_MAX];
} cap;
/* What mqs__bc_conn_errmsg returns when nothing was captured for c. */
static _Thread_local char live[MSG_MAX];

static void cap_clear(void)
{
    cap.set = false;
    cap.conn = NULL;
}

char *mqs__bc_scrub(char *dst, size_t dstlen, const char *src,
                    const char *const *secrets, size_t n)
{
    if (!dstlen)
        return dst;
    size_t o = 0;
    for (const char *p = src ? src : ""; *p;) {
        size_t best = 0;
        for (size_t i = 0; i < n; i++) {
            size_t l = secrets[i] ? strlen(secrets[i]) : 0;
            if (l > best && !strncmp(p, secrets[i], l))
                best = l;
        }
        /* A secret is never copied, not even cut short by dstlen. */
        const char *piece = best ? "***" : p;
        size_t plen = best ? 3 : 1;
        if (o + plen >= dstlen)
            break;
        memcpy(dst + o, piece, plen);
        o += plen;
        p += best ? best : 1;
    }
    dst[o] = '\0';
    return dst;
}

int mqs__bc_rc(int rc)
{
    switch (rc) {
    case 0:
#define MQS_BC_KNOWN_(name, val, msg) case (val):
        MQS_ERRNO_MAP(MQS_BC_KNOWN_)
#undef MQS_BC_KNOWN_
        return rc;
    default:
        return MQS_EIO;
    }
}

/* The one place a backend's text enters the core. */
static char *scrub(const mqs_bcx *b, char *dst, size_t dstlen,
                   const char *src)
{
    const char *secrets[3] = {b->pw, b->pw_raw, b->pw_opt};
    return mqs__bc_scrub(dst, dstlen, src, secrets, 3);
}

static const char *be_name(const mqs_bcx *b)
{
    return b->be->name ? b->be->name : "?";
}

/* After b->be-><member>(c, ...) returned rc: the code the core sees, with
 * the failure's message captured. */
static int finish(const mqs_bcx *b, mqs_be_conn *c, const char *member,
                  int rc)
{
    if (rc == 0)
        return 0;
    int n = mqs__bc_rc(rc);
    const char *said = c ? b->be->conn_errmsg(c) : NULL;
    char text[MSG_MAX - 256];
    scrub(b, text, sizeof text, said ? said : "");
    if (n != rc)
        snprintf(cap.msg, sizeof cap.msg, "backend %.64s returned %d from "
                 "%s%s%s", be_name(b), rc, member, text[0] ? ": " : "", text);
    else
        memcpy(cap.msg, text, sizeof text);
    cap.conn = c;
    cap.set = true;
    return n;
}

/* The wrapper's own failure (no backend text): code rc, message fmt. */
static int own(mqs_be_conn *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int own(mqs_be_conn *c, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cap.msg, sizeof cap.msg, fmt, ap);
    va_end(ap);
    cap.conn = c;
    cap.set = true;
    return rc;
}

static int absent(const mqs_bcx *b, mqs_be_conn *c, const char *member)
{
    return own(c, MQS_ENOTSUP, "the %.64s backend module (ABI %u.%u) has no "
               "%s", be_name(b), (unsigned)b->be->abi_major,
               (unsigned)b->be->abi_minor, member);
}

/* The body of a plain wrapper: call member on c, check what it returned. */
#define CALL(member, ...)                                                      \
    do {                                                                       \
        cap_clear();                                                           \
        int rc_ = b->be->member(c, __VA_ARGS__);                               \
        return finish(b, c, #member, rc_);                                     \
    } while (0)
/* The same for an optional member: MQS_ENOTSUP when the module lacks it. */
#define CALL_OPT(member, ...)                                                  \
    do {                                                                       \
        cap_clear();                                                           \
        if (!MQS_BE_HAS(b->be, member))                                        \
            return absent(b, c, #member);                                      \
        int rc_ = b->be->member(c, __VA_ARGS__);                               \
        return finish(b, c, #member, rc_);                                     \
    } while (0)

/* ---- optional members ---- */

bool mqs__bc_has_lock(const mqs_backend *be)
{
    return MQS_BE_HAS(be, lock_acquire) && MQS_BE_HAS(be, lock_renew) &&
           MQS_BE_HAS(be, lock_release) && MQS_BE_HAS(be, lock_read) &&
           MQS_BE_HAS(be, lock_force) && MQS_BE_HAS(be, lock_fence);
}

bool mqs__bc_has_session(const mqs_backend *be)
{
    return MQS_BE_HAS(be, session_lock) && MQS_BE_HAS(be, session_unlock);
}

bool mqs__bc_has_marks(const mqs_backend *be)
{
    return MQS_BE_HAS(be, mark_put) && MQS_BE_HAS(be, mark_list) &&
           MQS_BE_HAS(be, mark_prune);
}

bool mqs__bc_has_vacuum(const mqs_backend *be)
{
    return MQS_BE_HAS(be, vacuum);
}

bool mqs__bc_has_msg_recent(const mqs_backend *be)
{
    return MQS_BE_HAS(be, msg_recent);
}

/* ---- connection ---- */

int mqs__bc_conn_open(const mqs_bcx *b, const mqs_be_open_args *a,
                      mqs_be_conn **out, char *err, size_t errlen)
{
    cap_clear();
    /* Larger than any caller's err: the password is scrubbed before the
     * message is cut to fit, so no piece of it survives the cut. */
    char raw[4096] = "";
    mqs_be_conn *c = NULL;
    int rc = b->be->conn_open(a, &c, raw, sizeof raw);
    raw[sizeof raw - 1] = '\0';
    int n = mqs__bc_rc(rc);
    if (n == 0 && !c) {
        *out = NULL;
        if (errlen)
            snprintf(err, errlen, "backend %.64s returned 0 from conn_open "
                     "without a connection", be_name(b));
        return MQS_EIO;
    }
    *out = n == 0 ? c : NULL;
    if (!errlen)
        return n;
    if (n == 0) {
        err[0] = '\0';
        return 0;
    }
    char text[sizeof raw];
    scrub(b, text, sizeof text, raw);
    if (n != rc)
        snprintf(err, errlen, "backend %.64s returned %d from conn_open%s%.*s",
                 be_name(b), rc, text[0] ? ": " : "", (int)(sizeof text - 1),
                 text);
    else
        snprintf(err, errlen, "%.*s", (int)(sizeof text - 1), text);
    return n;
}

void mqs__bc_conn_close(const mqs_bcx *b, mqs_be_conn *c)
{
    if (cap.conn == c)
        cap_clear(); /* its address may be reused by the next one */
    if (c)
        b->be->conn_close(c);
}

const char *mqs__bc_conn_errmsg(const mqs_bcx *b, mqs_be_conn *c)
{
    if (cap.set && cap.conn == c)
        return cap.msg;
    const char *said = c ? b->be->conn_errmsg(c) : NULL;
    return scrub(b, live, sizeof live, said ? said : "");
}

int mqs__bc_conn_max_message(const mqs_bcx *b, mqs_be_conn *c, size_t *max)
{
    CALL_OPT(conn_max_message, max);
}

/* ---- schema ---- */

int mqs__bc_schema_version(const mqs_bcx *b, mqs_be_conn *c, int *version)
{
    CALL(schema_version, version);
}

int mqs__bc_schema_apply(const mqs_bcx *b, mqs_be_conn *c,
                         const mqs_be_migration *m)
{
    CALL(schema_apply, m);
}

/* ---- write transactions (no arguments but the connection) ---- */

#define CALL0(member)                                                          \
    do {                                                                       \
        cap_clear();                                                           \
        int rc_ = b->be->member(c);                                            \
        return finish(b, c, #member, rc_);                                     \
    } while (0)

int mqs__bc_txn_begin(const mqs_bcx *b, mqs_be_conn *c) { CALL0(txn_begin); }
int mqs__bc_txn_commit(const mqs_bcx *b, mqs_be_conn *c) { CALL0(txn_commit); }
int mqs__bc_txn_rollback(const mqs_bcx *b, mqs_be_conn *c)
{
    CALL0(txn_rollback);
}

/* ---- writes ---- */

int mqs__bc_dest_resolve(const mqs_bcx *b, mqs_be_conn *c, mqs_kind kind,
                         const char *name, int create, int64_t *dest_id)
{
    CALL(dest_resolve, kind, name, create, dest_id);
}

int mqs__bc_msg_insert(const mqs_bcx *b, mqs_be_conn *c, mqs_be_msg *m,
                       size_t n)
{
    CALL(msg_insert, m, n);
}

int mqs__bc_msg_ack(const mqs_bcx *b, mqs_be_conn *c, const mqs_be_ref *r,
                    size_t n)
{
    CALL(msg_ack, r, n);
}

int mqs__bc_msg_nack(const mqs_bcx *b, mqs_be_conn *c, const mqs_be_ref *r)
{
    CALL(msg_nack, r);
}

int mqs__bc_sub_create(const mqs_bcx *b, mqs_be_conn *c, int64_t topic_id,
                       const char *name, int64_t *sub_id)
{
    CALL(sub_create, topic_id, name, sub_id);
}

int mqs__bc_sub_remove(const mqs_bcx *b, mqs_be_conn *c, int64_t sub_id)
{
    CALL(sub_remove, sub_id);
}

int mqs__bc_purge(const mqs_bcx *b, mqs_be_conn *c, int64_t dest_id,
                  uint64_t *removed)
{
    CALL(purge, dest_id, removed);
}

int mqs__bc_mark_put(const mqs_bcx *b, mqs_be_conn *c, const char *producer,
                     int64_t seq, int64_t now_ms)
{
    CALL_OPT(mark_put, producer, seq, now_ms);
}

int mqs__bc_mark_prune(const mqs_bcx *b, mqs_be_conn *c, int64_t before_ms,
                       uint64_t *removed)
{
    CALL_OPT(mark_prune, before_ms, removed);
}

int mqs__bc_lock_fence(const mqs_bcx *b, mqs_be_conn *c,
                       const mqs_be_fence *f)
{
    CALL_OPT(lock_fence, f);
}

/* ---- reads ---- */

int mqs__bc_sub_lookup(const mqs_bcx *b, mqs_be_conn *c, const char *topic,
                       const char *name, int64_t *sub_id)
{
    CALL(sub_lookup, topic, name, sub_id);
}

/* Rows counted on their way to the caller's callback: the caller sized its
 * page for `limit` rows and no more. After the callback stopped the walk,
 * nothing more reaches it. */
typedef struct row_guard {
    mqs_be_row_cb cb;
    mqs_be_header_cb hcb;
    void *ud;
    size_t limit, n;
    bool over, stopped;
} row_guard;

static bool guard_admit(row_guard *g)
{
    if (g->stopped)
        return false;
    if (g->n >= g->limit) {
        g->over = true;
        return false;
    }
    g->n++;
    return true;
}

static int guard_row(void *ud, const mqs_be_row *r)
{
    row_guard *g = ud;
    if (!guard_admit(g))
        return 1;
    int stop = g->cb(g->ud, r);
    g->stopped = stop != 0;
    return stop;
}

static int guard_header(void *ud, int64_t id, const void *h, size_t hlen)
{
    row_guard *g = ud;
    if (!guard_admit(g))
        return 1;
    int stop = g->hcb(g->ud, id, h, hlen);
    g->stopped = stop != 0;
    return stop;
}

int mqs__bc_page_read(const mqs_bcx *b, mqs_be_conn *c, const mqs_be_page *p,
                      mqs_be_row_cb cb, void *ud)
{
    cap_clear();
    row_guard g = {.cb = cb, .ud = ud, .limit = p->limit};
    int rc = b->be->page_read(c, p, guard_row, &g);
    if (g.over)
        return own(c, MQS_EIO, "backend %.64s delivered more than %zu rows "
                   "from page_read (a page of dest %lld, sub %lld after "
                   "(priority %d, id %lld) has at most limit = %zu rows)",
                   be_name(b), p->limit, (long long)p->dest_id,
                   (long long)p->sub_id, p->after_priority,
                   (long long)p->after_id, p->limit);
    return finish(b, c, "page_read", rc);
}

int mqs__bc_dest_list(const mqs_bcx *b, mqs_be_conn *c, mqs_be_dest_cb cb,
                      void *ud)
{
    CALL(dest_list, cb, ud);
}

int mqs__bc_dest_names(const mqs_bcx *b, mqs_be_conn *c, mqs_be_dest_cb cb,
                       void *ud)
{
    if (!MQS_BE_HAS(b->be, dest_names))
        return mqs__bc_dest_list(b, c, cb, ud); /* a module before 2.2 */
    CALL(dest_names, cb, ud);
}

typedef struct mark_guard {
    mqs_be_mark_cb cb;
    void *ud;
    int stop; /* what cb returned to stop the walk */
} mark_guard;

static int guard_mark(void *ud, const char *producer, int64_t seq)
{
    mark_guard *g = ud;
    return g->stop = g->cb(g->ud, producer, seq);
}

int mqs__bc_mark_list(const mqs_bcx *b, mqs_be_conn *c, mqs_be_mark_cb cb,
                      void *ud)
{
    cap_clear();
    if (!MQS_BE_HAS(b->be, mark_list))
        return absent(b, c, "mark_list");
    mark_guard g = {cb, ud, 0};
    int rc = b->be->mark_list(c, guard_mark, &g);
    if (g.stop && rc == g.stop)
        return rc; /* the caller's own value, handed back */
    return finish(b, c, "mark_list", rc);
}

int mqs__bc_vacuum(const mqs_bcx *b, mqs_be_conn *c, char *msg,
                   size_t msglen)
{
    cap_clear();
    if (!MQS_BE_HAS(b->be, vacuum)) {
        if (msglen)
            snprintf(msg, msglen, "nothing to do on %s: consumed rows leave "
                     "its indexes by themselves", be_name(b));
        return 0;
    }
    int rc = b->be->vacuum(c, msg, msglen);
    if (msglen) { /* what was done, for the operator: the backend's text */
        char text[MSG_MAX];
        msg[msglen - 1] = '\0';
        scrub(b, text, sizeof text, msg);
        snprintf(msg, msglen, "%s", text);
    }
    return finish(b, c, "vacuum", rc);
}

int mqs__bc_msg_recent(const mqs_bcx *b, mqs_be_conn *c, size_t limit,
                       mqs_be_header_cb cb, void *ud)
{
    cap_clear();
    if (!MQS_BE_HAS(b->be, msg_recent))
        return absent(b, c, "msg_recent");
    row_guard g = {.hcb = cb, .ud = ud, .limit = limit};
    int rc = b->be->msg_recent(c, limit, guard_header, &g);
    if (g.over)
        return own(c, MQS_EIO, "backend %.64s delivered more than %zu rows "
                   "from msg_recent (limit = %zu)", be_name(b), limit, limit);
    return finish(b, c, "msg_recent", rc);
}

/* ---- exclusive lock ---- */

int mqs__bc_lock_acquire(const mqs_bcx *b, mqs_be_conn *c,
                         const mqs_be_lock *l, mqs_be_lock_state *st)
{
    CALL_OPT(lock_acquire, l, st);
}

int mqs__bc_lock_renew(const mqs_bcx *b, mqs_be_conn *c, const mqs_be_lock *l,
                       mqs_be_lock_state *st)
{
    CALL_OPT(lock_renew, l, st);
}

int mqs__bc_lock_release(const mqs_bcx *b, mqs_be_conn *c,
                         const mqs_be_lock *l)
{
    CALL_OPT(lock_release, l);
}

int mqs__bc_lock_read(const mqs_bcx *b, mqs_be_conn *c, const char *cluster,
                      mqs_be_lock_state *st)
{
    CALL_OPT(lock_read, cluster, st);
}

int mqs__bc_lock_force(const mqs_bcx *b, mqs_be_conn *c, const char *cluster)
{
    CALL_OPT(lock_force, cluster);
}

/* ---- crash detector ---- */

int mqs__bc_session_lock(const mqs_bcx *b, mqs_be_conn *c,
                         const char *cluster, int64_t wait_ms,
                         int64_t *session_id)
{
    CALL_OPT(session_lock, cluster, wait_ms, session_id);
}

int mqs__bc_session_unlock(const mqs_bcx *b, mqs_be_conn *c,
                           const char *cluster)
{
    CALL_OPT(session_unlock, cluster);
}
