/* lock.c - HA: exclusive lock with a lease (database clock), fencing in
 * every write transaction, a local monotonic lease count, and a crash
 * detector (session lock) so a standby takes over at once after a kill.
 * See docs/architecture.md "HA". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "be_call.h"
#include "internal.h"

/* The master stops believing in its lease this long before the database
 * would end it: its count starts before the renewing transaction, so it
 * already ends first; the margin also covers clock-rate drift. */
static int64_t margin(const mqs_store *s) { return s->uri.cfg.lease_ms / 10; }

static bool has_session(const mqs_store *s)
{
    return s->uri.cfg.crash_detect && !s->session_off &&
           mqs__bc_has_session(s->be);
}

/* How long the lease agent's renewal may wait for a row lock: it must end
 * well inside the lease, and a renewal is due again after renew_ms. */
static int64_t renew_wait(const mqs_store *s)
{
    int64_t w = s->uri.cfg.renew_ms;
    return w < s->uri.cfg.lease_ms / 4 ? w : s->uri.cfg.lease_ms / 4;
}

/* How long a takeover may wait for the old master's last fenced write
 * transaction (it holds the lock lock_fence took): normally microseconds;
 * a master frozen inside one is ended by the server after about a lease. */
static int64_t acquire_wait(const mqs_store *s)
{
    return s->uri.cfg.poll_ms < 1000 ? s->uri.cfg.poll_ms : 1000;
}

/* ------------------------------------------------------------------------
 * The lease agent: one thread per term that owns the master's lease
 * connection. On it, it renews the lease (lock_renew, its own transaction:
 * the only statement that writes the lock row while a master holds it)
 * and, with the crash detector, holds and re-checks the session lock.
 * Talking to the database can block for as long as the network says (a
 * frozen path), and nothing that counts the lease may wait on it: the
 * keeper only asks and reads results. The agent owns the connection and a
 * refcounted context, so it can outlive the store: a blocked call finishes
 * (or fails) later and the thread then closes the connection, which drops
 * the session lock, and frees the context.
 * ---------------------------------------------------------------------- */

typedef struct mqs_session {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;      /* the store's, the thread's, and s->sess_wait's */
    bool stop;     /* the store is done with it */
    bool want;     /* check / re-take the session lock now */
    bool want_renew; /* renew the lease now */
    bool use_session; /* crash detector on: hold the session lock */
    bool held;     /* the last check found the session lock held */
    bool done;     /* the thread has closed its connection */
    pthread_t tid; /* joined (or detached) through s->sess_wait */
    int64_t sid;   /* session id while held */
    /* renewals: the lease counts from the START of the last one that
     * committed, so a slow renewal shortens it, never lengthens it */
    mqs_be_lock l;         /* cluster/node point into the strings below */
    int64_t renew_ok_start; /* monotonic ms */
    int64_t renew_ok_rtt;   /* how long that renewal took, ms */
    int renew_rc;          /* of the last finished renewal */
    uint64_t renew_seq;    /* finished renewals */
    char renew_err[512];
    const mqs_backend *be;
    /* For the wrappers: be, and the secrets of pu to scrub from the
     * backend's messages. */
    mqs_bcx bcx;
    mqs_be_conn *conn; /* owned by the thread */
    char *masked;
    mqs_parsed_uri pu; /* its own copy: it may outlive the store */
    bool pu_ok;
    char cluster[128];
    char node[256];
} mqs_session;

static void session_unref(mqs_session *x)
{
    pthread_mutex_lock(&x->mu);
    bool last = --x->refs == 0;
    pthread_mutex_unlock(&x->mu);
    if (!last)
        return;
    if (x->conn)
        mqs__bc_conn_close(&x->bcx, x->conn);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cv);
    if (x->pu_ok)
        mqs__uri_free(&x->pu);
    free(x->masked);
    free(x);
}

/* The session-lock check, on the agent's thread. Caller does not hold mu. */
static void agent_check_session(mqs_session *x, int *rc_out, int64_t *sid_out)
{
    int rc = MQS_ECONN;
    int64_t sid = 0;
    if (x->conn) {
        rc = mqs__bc_session_lock(&x->bcx, x->conn, x->cluster, 0, &sid);
        if (rc == MQS_ECONN) { /* gone: reopen on the next round */
            mqs__bc_conn_close(&x->bcx, x->conn);
            x->conn = NULL;
        }
    }
    *rc_out = rc;
    *sid_out = sid;
}

static void *session_main(void *arg)
{
    mqs_session *x = arg;
    pthread_mutex_lock(&x->mu);
    for (;;) {
        while (!x->stop && !x->want && !x->want_renew)
            pthread_cond_wait(&x->cv, &x->mu);
        if (x->stop)
            break;
        bool check = x->want && x->use_session;
        bool renew = x->want_renew;
        x->want = x->want_renew = false;
        mqs_be_lock l = x->l;
        pthread_mutex_unlock(&x->mu);
        if (!x->conn) {
            char err[512];
            mqs_be_open_args a = {.parts = &x->pu.parts,
                                  .uri_masked = x->masked, .role = "lock"};
            if (mqs__bc_conn_open(&x->bcx, &a, &x->conn, err, sizeof err)) {
                x->conn = NULL;
                pthread_mutex_lock(&x->mu);
                if (renew) {
                    x->renew_rc = MQS_ECONN;
                    snprintf(x->renew_err, sizeof x->renew_err, "%s", err);
                    x->renew_seq++;
                }
                x->held = false;
                x->sid = 0;
                continue;
            }
        }
        int src = 0;
        int64_t sid = 0;
        if (check)
            agent_check_session(x, &src, &sid);
        int rrc = 0;
        int64_t t0 = 0;
        char rerr[512] = "";
        if (renew) {
            /* Record the session only while this connection holds it. */
            l.session_id = check ? (src == 0 ? sid : 0)
                                 : (x->use_session && x->held ? x->sid : 0);
            t0 = mqs__mono_ms();
            if (!x->conn) {
                rrc = MQS_ECONN;
                snprintf(rerr, sizeof rerr, "the lease connection was lost");
            } else {
                mqs_be_lock_state st;
                rrc = mqs__bc_lock_renew(&x->bcx, x->conn, &l, &st);
                if (rrc)
                    snprintf(rerr, sizeof rerr, "%s",
                             mqs__bc_conn_errmsg(&x->bcx, x->conn));
                if (rrc == MQS_ECONN || rrc == MQS_EUNKNOWN) {
                    mqs__bc_conn_close(&x->bcx, x->conn);
                    x->conn = NULL;
                }
            }
        }
        pthread_mutex_lock(&x->mu);
        if (check) {
            x->held = src == 0;
            x->sid = src == 0 ? sid : 0;
        }
        if (renew) {
            x->renew_rc = rrc;
            if (rrc == 0) {
                x->renew_ok_start = t0;
                x->renew_ok_rtt = mqs__mono_ms() - t0;
            }
            memcpy(x->renew_err, rerr, sizeof rerr);
            x->renew_seq++;
        }
    }
    /* Closing the connection is what drops the session lock. */
    mqs_be_conn *c = x->conn;
    x->conn = NULL;
    pthread_mutex_unlock(&x->mu);
    if (c)
        mqs__bc_conn_close(&x->bcx, c);
    pthread_mutex_lock(&x->mu);
    x->done = true;
    pthread_cond_broadcast(&x->cv);
    pthread_mutex_unlock(&x->mu);
    session_unref(x);
    return NULL;
}

/* Join a stopped agent thread (normally done within milliseconds); one
 * stuck in the database gets a second, then is left to finish on its own,
 * holding only its own references. */
static void session_reap(mqs_session *x)
{
    if (!x)
        return;
    struct timespec ts;
    mqs__deadline(&ts, 1000);
    pthread_mutex_lock(&x->mu);
    while (!x->done &&
           pthread_cond_clockwait(&x->cv, &x->mu, CLOCK_MONOTONIC, &ts) == 0)
        ;
    bool done = x->done;
    pthread_mutex_unlock(&x->mu);
    if (done)
        pthread_join(x->tid, NULL); /* it is past its last use of x->mu */
    else
        pthread_detach(x->tid);
    session_unref(x);
}

/* Start the lease agent of a term with conn (holding the session lock, or
 * NULL: the agent opens its own). renewed_at: monotonic start of the
 * acquire, which set the first lease. */
static mqs_session *session_start(mqs_store *s, mqs_be_conn *conn, int64_t sid,
                                  int64_t token, int64_t renewed_at)
{
    mqs_session *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cv, NULL);
    x->refs = 3; /* the store's, the thread's, and s->sess_wait's */
    x->be = s->be;
    x->conn = conn;
    x->use_session = has_session(s);
    x->held = conn != NULL;
    x->sid = conn ? sid : 0;
    x->renew_ok_start = renewed_at;
    /* The backend's URI parses to the same parts as the store's. */
    x->pu_ok = mqs__uri_parse(s->uri.be_uri, s->be, &x->pu) == 0;
    x->bcx = (mqs_bcx){x->be, x->pu.password, x->pu.pw_raw, x->pu.pw_opt};
    x->masked = mqs__strdup(s->uri.masked);
    snprintf(x->cluster, sizeof x->cluster, "%s", s->uri.cfg.cluster);
    snprintf(x->node, sizeof x->node, "%s", s->uri.cfg.node_id);
    x->l = (mqs_be_lock){x->cluster, x->node, token, s->uri.cfg.lease_ms, 0, 0,
                         renew_wait(s)};
    if (!x->pu_ok || !x->masked ||
        pthread_create(&x->tid, NULL, session_main, x) != 0) {
        x->conn = NULL; /* the caller keeps and closes conn */
        x->refs = 1;
        session_unref(x);
        return NULL;
    }
    /* Kept so the next term or mqs_close can join the thread once it let
     * go of its connection. */
    session_reap(s->sess_wait);
    s->sess_wait = x;
    return x;
}

/* Ask the agent for a session check and, with renew, a renewal. */
/* wait_ms > 0: the longest lock wait of the renewal asked for. */
static void session_ask(mqs_session *x, bool renew, int64_t wait_ms)
{
    pthread_mutex_lock(&x->mu);
    if (wait_ms > 0)
        x->l.wait_ms = wait_ms;
    x->want = true;
    x->want_renew = x->want_renew || renew;
    pthread_cond_signal(&x->cv);
    pthread_mutex_unlock(&x->mu);
}


/* Hand the agent its stop; its thread drops the session lock as soon as it
 * is not blocked in the database. Caller holds ha_mu. */
static void session_drop_locked(mqs_store *s)
{
    mqs_session *x = s->sess;
    s->sess = NULL;
    if (!x)
        return;
    pthread_mutex_lock(&x->mu);
    x->stop = true;
    x->held = false;
    pthread_cond_signal(&x->cv);
    pthread_mutex_unlock(&x->mu);
    session_unref(x);
}

/* Call a pending on_lost, outside the lock. It runs on the keeper thread
 * (never the writer, so the callback may use the store's blocking calls).
 * A fenced write transaction still in flight gets until the hard end of
 * the lease (the local lease plus half its margin) to finish first: its
 * COMMIT is conditional on a lease with `margin` left by the database
 * clock (lock_fence), so once it is over no write of this term can commit,
 * and on_lost comes after the last one that did. Past that bound on_lost is
 * delivered anyway: a write stuck that long (a frozen path) is rolled back
 * by its fence or by the server ending the session. */
static void deliver_lost(mqs_store *s)
{
    pthread_mutex_lock(&s->ha_mu);
    if (!s->lost_pending) {
        pthread_mutex_unlock(&s->ha_mu);
        return;
    }
    if (s->commits_inflight > 0) {
        int64_t until = s->lease_until + margin(s) / 2;
        struct timespec ts;
        mqs__deadline(&ts, until - mqs__mono_ms());
        while (s->commits_inflight > 0 &&
               pthread_cond_clockwait(&s->ha_cv, &s->ha_mu, CLOCK_MONOTONIC,
                                      &ts) == 0)
            ;
    }
    if (!s->lost_pending) { /* delivered meanwhile by another thread */
        pthread_mutex_unlock(&s->ha_mu);
        return;
    }
    s->lost_pending = false;
    mqs_lock_cbs cbs = s->cbs;
    int64_t token = s->token;
    char reason[sizeof s->lost_reason];
    memcpy(reason, s->lost_reason, sizeof reason);
    pthread_mutex_unlock(&s->ha_mu);
    if (cbs.on_lost)
        cbs.on_lost(cbs.ud, token, reason);
}

/* MASTER -> LOST exactly once. Writes fail with MQS_EFENCED from here: no
 * new write transaction starts, and one in flight that has not sent its
 * COMMIT rolls back (mqs__fence_commit).
 * keep_session: a clean release frees the lock row first and drops the
 * session lock after it, so a standby woken by the session lock finds the
 * row already free. */
static void lose_ex(mqs_store *s, const char *reason, bool keep_session)
{
    pthread_mutex_lock(&s->ha_mu);
    if (s->ha_state != HA_MASTER) {
        pthread_mutex_unlock(&s->ha_mu);
        return;
    }
    s->ha_state = HA_LOST;
    int64_t token = s->token;
    if (!keep_session)
        session_drop_locked(s);
    snprintf(s->lost_reason, sizeof s->lost_reason, "%s", reason);
    s->lost_pending = true;
    bool direct = !s->keeper_running;
    pthread_cond_broadcast(&s->ha_cv);
    pthread_mutex_unlock(&s->ha_mu);
    mqs__log(s, keep_session ? MQS_LOG_INFO : MQS_LOG_WARN,
             "node %s lost the lock of cluster '%s' (token %lld): %s",
             s->uri.cfg.node_id, s->uri.cfg.cluster, (long long)token, reason);
    if (direct)
        deliver_lost(s);
}

static void lose(mqs_store *s, const char *reason)
{
    lose_ex(s, reason, false);
}

static int fenced_err(mqs_store *s, char *err, size_t errlen)
{
    snprintf(err, errlen,
             "node %s no longer holds the lock of cluster '%s' (its token was "
             "%lld): nothing was written; acquire the lock again before "
             "writing",
             s->uri.cfg.node_id, s->uri.cfg.cluster, (long long)s->token);
    return MQS_EFENCED;
}

int mqs__fence_prepare(mqs_store *s, mqs_fence *f, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    pthread_mutex_lock(&s->ha_mu);
    int rc = 0;
    if (s->ha_state == HA_LOST) {
        rc = fenced_err(s, err, errlen);
    } else if (s->ha_state == HA_MASTER) {
        f->active = true;
        f->f.cluster = s->uri.cfg.cluster;
        f->f.node = s->uri.cfg.node_id;
        f->f.token = s->token;
        /* The database's lease began at most renew_rtt after the local
         * count started: a guard that leaves margin + renew_rtt therefore
         * runs before the local lease ends, so before on_lost. */
        f->f.margin_ms = margin(s) + s->renew_rtt;
        f->f.lease_ms = s->uri.cfg.lease_ms;
        s->commits_inflight++;
    }
    pthread_mutex_unlock(&s->ha_mu);
    return rc;
}

int mqs__fence_commit(mqs_store *s, const mqs_fence *f, char *err,
                      size_t errlen)
{
    if (!f->active)
        return 0;
    pthread_mutex_lock(&s->ha_mu);
    int rc = 0;
    if (s->ha_state != HA_MASTER || s->token != f->f.token ||
        mqs__mono_ms() >= s->lease_until)
        rc = fenced_err(s, err, errlen);
    pthread_mutex_unlock(&s->ha_mu);
    return rc;
}

void mqs__fence_done(mqs_store *s, const mqs_fence *f, int rc,
                     const char *err)
{
    if (!f->active)
        return;
    pthread_mutex_lock(&s->ha_mu);
    s->commits_inflight--;
    /* Only deliver_lost waits for commits to drain, and only while on_lost
     * is pending (it checks both under ha_mu before it waits). Waking ha_cv
     * on every commit woke the keeper too, a thread switch per write
     * transaction on the hot path for nothing. */
    if (s->commits_inflight == 0 && s->lost_pending)
        pthread_cond_broadcast(&s->ha_cv);
    pthread_mutex_unlock(&s->ha_mu);
    if (rc == MQS_EFENCED)
        lose(s, err);
}

bool mqs__may_write_unasked(mqs_store *s)
{
    if (s->schema_newer)
        return false;
    pthread_mutex_lock(&s->ha_mu);
    bool ok = s->ha_state == HA_MASTER || (s->ha_state == HA_NONE && !s->ha_used);
    pthread_mutex_unlock(&s->ha_mu);
    return ok;
}

/* ------------------------------------------------------------------------
 * Keeper: asks the lease agent to renew every renew_ms, reads its results,
 * and steps down on the local clock. It waits only on the clock: never on
 * the database, the writer or the agent.
 * ---------------------------------------------------------------------- */

static void *keeper_main(void *arg)
{
    mqs_store *s = arg;
    const int64_t renew = s->uri.cfg.renew_ms;
    uint64_t seen = 0;
    int64_t asked = 0; /* when the pending renewal was asked for, or 0 */
    for (;;) {
        pthread_mutex_lock(&s->ha_mu);
        int64_t now = mqs__mono_ms();
        int64_t wake = now + (renew / 4 > 10 ? renew / 4 : 10);
        if (s->lease_until < wake)
            wake = s->lease_until;
        struct timespec ts;
        mqs__deadline(&ts, wake - now);
        while (!s->keeper_stop && s->ha_state == HA_MASTER &&
               pthread_cond_clockwait(&s->ha_cv, &s->ha_mu, CLOCK_MONOTONIC,
                                      &ts) == 0)
            ;
        if (s->keeper_stop || s->ha_state != HA_MASTER) {
            pthread_mutex_unlock(&s->ha_mu);
            break;
        }
        mqs_session *x = s->sess;
        int64_t token = s->token;
        pthread_mutex_unlock(&s->ha_mu);

        /* Results of the agent's renewals. */
        int rrc = 0;
        int64_t ok_start = 0, ok_rtt = 0;
        uint64_t seq = 0;
        char rerr[512] = "";
        if (x) {
            pthread_mutex_lock(&x->mu);
            seq = x->renew_seq;
            rrc = x->renew_rc;
            ok_start = x->renew_ok_start;
            ok_rtt = x->renew_ok_rtt;
            memcpy(rerr, x->renew_err, sizeof rerr);
            pthread_mutex_unlock(&x->mu);
        }
        if (seq != seen) {
            seen = seq;
            asked = 0;
            if (rrc == MQS_EFENCED) {
                lose(s, rerr);
                break;
            }
            if (rrc)
                mqs__log(s, MQS_LOG_WARN, "lease renewal failed: %s", rerr);
        }
        pthread_mutex_lock(&s->ha_mu);
        if (s->ha_state == HA_MASTER && s->token == token) {
            int64_t until = ok_start + s->uri.cfg.lease_ms - margin(s);
            if (until > s->lease_until)
                s->lease_until = until;
            if (ok_start > s->last_renew) {
                s->last_renew = ok_start;
                s->renew_rtt = ok_rtt;
            }
        }
        now = mqs__mono_ms();
        bool expired = now >= s->lease_until;
        int64_t lease_end = s->lease_until;
        int64_t since = now - s->last_renew;
        pthread_mutex_unlock(&s->ha_mu);

        if (expired) {
            char why[256];
            snprintf(why, sizeof why,
                     "lease expired on the local clock: no renewal "
                     "committed for %lld ms (database unreachable or too "
                     "slow); stepping down before another node may take "
                     "over", (long long)since);
            lose(s, why);
            break;
        }
        /* Due: renew_ms since the start of the last committed renewal, and
         * none asked for in the last renew_ms (one stuck in the database
         * is not asked again on top of itself). The session lock is
         * re-checked with it: after a database restart it is gone and must
         * be taken again; renewals record it only while held. */
        bool due = since >= renew && (asked == 0 || now - asked >= renew);
        /* A renewal may wait for the row lock only until shortly before
         * the local lease ends: one still waiting at on_lost could be
         * granted and commit after it (a blocker that lets go right
         * then), extending the database's lease so that a write already
         * in flight passes its guard after on_lost. Ended margin/2 before
         * the local end, its wait cannot outlast on_lost; none is asked
         * for once less than that is left (docs/architecture.md). */
        int64_t left = lease_end - now - margin(s) / 2;
        int64_t wait = renew_wait(s) < left ? renew_wait(s) : left;
        if (x && due && wait >= 10) {
            asked = now;
            session_ask(x, true, wait);
        }
    }
    deliver_lost(s);
    return NULL;
}

static void keeper_stop(mqs_store *s)
{
    pthread_mutex_lock(&s->ha_mu);
    bool running = s->keeper_running;
    s->keeper_stop = true;
    pthread_cond_broadcast(&s->ha_cv);
    pthread_mutex_unlock(&s->ha_mu);
    if (running)
        pthread_join(s->keeper, NULL);
    pthread_mutex_lock(&s->ha_mu);
    s->keeper_running = false;
    s->keeper_stop = false;
    pthread_mutex_unlock(&s->ha_mu);
}

/* ------------------------------------------------------------------------
 * Public API
 * ---------------------------------------------------------------------- */

typedef struct acq_arg {
    mqs_be_lock l;
    mqs_be_lock_state st;
} acq_arg;

static int do_acquire(mqs_store *s, mqs_be_conn *c, void *arg)
{
    acq_arg *a = arg;
    return mqs__bc_lock_acquire(MQS_BCX(s), c, &a->l, &a->st);
}

static int do_renew(mqs_store *s, mqs_be_conn *c, void *arg)
{
    acq_arg *a = arg;
    return mqs__bc_lock_renew(MQS_BCX(s), c, &a->l, &a->st);
}

static int do_release(mqs_store *s, mqs_be_conn *c, void *arg)
{
    return mqs__bc_lock_release(MQS_BCX(s), c, arg);
}

static int do_read(mqs_store *s, mqs_be_conn *c, void *arg)
{
    acq_arg *a = arg;
    return mqs__bc_lock_read(MQS_BCX(s), c, a->l.cluster, &a->st);
}

static int do_force(mqs_store *s, mqs_be_conn *c, void *arg)
{
    return mqs__bc_lock_force(MQS_BCX(s), c, arg);
}

static int no_lock(mqs_store *s)
{
    return mqs__err(s, MQS_ENOTSUP,
                    "the %s backend (module ABI %u.%u) has no exclusive "
                    "lock support; HA needs the lock_* callbacks",
                    s->be->name, s->be->abi_major, s->be->abi_minor);
}

/* Standby side of the session lock: a private connection, kept across
 * polls so waiting on the lock costs no reconnects. */
static int standby_session(mqs_store *s, mqs_be_conn **c, int64_t wait_ms,
                           int64_t *sid)
{
    if (!*c && mqs__conn_open(s, "lock", c) != 0)
        return MQS_ECONN;
    const mqs_bcx *b = MQS_BCX(s);
    int rc = mqs__bc_session_lock(b, *c, s->uri.cfg.cluster, wait_ms, sid);
    if (rc == MQS_EINVAL) {
        /* The configuration cannot work, e.g. crash_detect=on through a
         * transaction pooler (where a session lock proves nothing): the
         * backend's message says how to fix the URI. Refused, not worked
         * around: the operator asked for a crash detector and would
         * otherwise get takeovers a lease slower without knowing. */
        mqs__err(s, rc, "%s", mqs__bc_conn_errmsg(b, *c));
    } else if (rc && rc != MQS_EBUSY && rc != MQS_ECONN &&
               rc != MQS_ETIMEDOUT) {
        /* Anything else the detector cannot get past: say so once and
         * fall back to the lease alone, instead of opening a connection
         * on every poll. */
        mqs__log(s, MQS_LOG_WARN, "crash detector disabled for this store, "
                 "the lease alone decides: %s", mqs__bc_conn_errmsg(b, *c));
        pthread_mutex_lock(&s->ha_mu);
        s->session_off = true;
        pthread_mutex_unlock(&s->ha_mu);
    }
    if (rc == MQS_ECONN || (rc && rc != MQS_EBUSY)) {
        mqs__bc_conn_close(b, *c);
        *c = NULL;
    }
    return rc;
}

/* One mqs_lock_acquire call: what its polls share. */
typedef struct acq_run {
    mqs_store *s;
    const mqs_config *cfg;
    int64_t timeout_ms;
    int64_t start;   /* monotonic ms when the wait began */
    mqs_be_conn *sc; /* standby's session-lock connection, kept across polls */
    bool logged_wait, logged_db; /* each said once per call, not per poll */
    /* the last poll */
    bool got;    /* it held the session lock (the crash detector is armed) */
    int64_t sid; /* that session's id */
    int64_t t0;  /* monotonic start of what set the lease: the local lease
                    counts from before the database set it */
    acq_arg a;
} acq_run;

static void acq_close_session(acq_run *r)
{
    if (r->sc)
        mqs__bc_conn_close(MQS_BCX(r->s), r->sc);
}

/* One attempt at the lock row. With the crash detector the standby first
 * tries the session lock without waiting: holding it proves the old
 * master's session is gone, which the acquire records in the row. */
static int acq_poll(acq_run *r)
{
    mqs_store *s = r->s;
    const mqs_config *cfg = r->cfg;
    r->sid = 0;
    r->got = false;
    if (has_session(s)) {
        int src = standby_session(s, &r->sc, 0, &r->sid);
        if (src == MQS_EINVAL)
            return src; /* acq_decide gives up with its message */
        r->got = src == 0;
    }
    r->a = (acq_arg){{cfg->cluster, cfg->node_id, 0, cfg->lease_ms, r->got,
                      r->got ? r->sid : 0, acquire_wait(s)},
                     {{0}, 0, 0, 0, 0}};
    r->t0 = mqs__mono_ms();
    return mqs__with_reader(s, do_acquire, &r->a);
}

/* After a won poll: if the acquire was slow (a busy database), the local
 * lease, counted from before it, is mostly spent. Renew now so the new
 * master does not step down at once; a node that fails this first renewal
 * never was master: it lets go of the session lock (so the lease alone
 * decides for the next poll) and waits a poll. Returns false then. */
static bool acq_lease_fresh(acq_run *r)
{
    mqs_store *s = r->s;
    if (mqs__mono_ms() - r->t0 <= r->cfg->renew_ms)
        return true;
    acq_arg rn = r->a;
    rn.l.token = r->a.st.token;
    rn.l.wait_ms = renew_wait(s);
    int64_t t1 = mqs__mono_ms();
    int rrc = mqs__with_reader(s, do_renew, &rn);
    if (rrc) {
        mqs__log(s, MQS_LOG_WARN, "renewal right after a slow "
                 "acquire failed (%s): waiting again: %s",
                 mqs_errname(rrc), mqs_errmsg(s));
        if (r->got)
            mqs__bc_session_unlock(MQS_BCX(s), r->sc, r->cfg->cluster);
        mqs__sleep_ms(r->cfg->poll_ms);
        return false;
    }
    r->t0 = t1; /* the lease now counts from the renewal */
    return true;
}

/* The keeper counts the local lease and steps down on time; without it
 * this node must not call itself master. */
static bool acq_start_keeper(mqs_store *s)
{
    pthread_mutex_lock(&s->ha_mu);
    s->keeper_stop = false;
    s->keeper_running = pthread_create(&s->keeper, NULL, keeper_main, s) == 0;
    bool ok = s->keeper_running;
    pthread_mutex_unlock(&s->ha_mu);
    return ok;
}

/* The poll won: enter the term under ha_mu (the fence reads these fields),
 * start its lease agent and keeper, then tell on_master, outside the lock
 * so the callback may call into the store. */
static int acq_become_master(acq_run *r)
{
    mqs_store *s = r->s;
    const mqs_config *cfg = r->cfg;
    pthread_mutex_lock(&s->ha_mu);
    s->ha_state = HA_MASTER;
    s->ha_used = true;
    s->token = r->a.st.token;
    s->lease_until = r->t0 + cfg->lease_ms - margin(s);
    s->last_renew = r->t0;
    s->renew_rtt = mqs__mono_ms() - r->t0; /* the acquire's, at most */
    s->commits_inflight = 0;
    /* The lease agent renews on its own connection: the one that holds
     * the session lock, when there is one. */
    s->sess = session_start(s, r->got ? r->sc : NULL, r->sid, s->token, r->t0);
    if (s->sess && r->got)
        r->sc = NULL; /* handed over; else closed below */
    mqs_lock_cbs c = s->cbs;
    int64_t token = s->token;
    bool agent = s->sess != NULL;
    pthread_mutex_unlock(&s->ha_mu);
    acq_close_session(r);
    if (!agent) {
        pthread_mutex_lock(&s->ha_mu);
        s->cbs = (mqs_lock_cbs){0}; /* never was master */
        pthread_mutex_unlock(&s->ha_mu);
        lose(s, "cannot start the lease agent thread");
        return mqs__err(s, MQS_ENOMEM, "cannot start the lease agent thread");
    }
    if (!acq_start_keeper(s)) {
        lose(s, "cannot start the lease keeper thread");
        return mqs__err(s, MQS_ENOMEM, "cannot start the lease keeper thread");
    }
    mqs__log(s, MQS_LOG_INFO,
             "node %s is master of cluster '%s' (token %lld, "
             "waited %lld ms, crash detector %s)",
             cfg->node_id, cfg->cluster, (long long)token,
             (long long)(mqs__mono_ms() - r->start),
             r->got ? "armed" : "not armed yet");
    if (c.on_master)
        c.on_master(c.ud, token);
    return 0;
}

/* Say once per call why the standby waits: the holder, or the database.
 * A standby can wait for hours; a line per poll would flood the log. */
static void acq_log_wait(acq_run *r, int rc, const char *msg)
{
    mqs_store *s = r->s;
    if (rc == MQS_EBUSY && !r->logged_wait) {
        mqs__log(s, MQS_LOG_INFO, "node %s waits for the lock of cluster "
                 "'%s' held by %s (token %lld)", r->cfg->node_id,
                 r->cfg->cluster, r->a.st.holder, (long long)r->a.st.token);
        r->logged_wait = true;
    } else if (rc != MQS_EBUSY && !r->logged_db) {
        mqs__log(s, MQS_LOG_WARN, "standby cannot reach the database, "
                 "still waiting: %s", msg);
        r->logged_db = true;
    }
}

/* The poll lost with rc: give up (returns the error to hand back) or go on
 * waiting (returns 0, *left = ms until the timeout, INT64_MAX for none).
 * Busy, a lost connection and I/O errors are worth waiting through (the
 * database may come back); anything else will not change by waiting. */
static int acq_decide(acq_run *r, int rc, int64_t *left)
{
    mqs_store *s = r->s;
    const mqs_config *cfg = r->cfg;
    const mqs_be_lock_state *st = &r->a.st;
    char msg[1024]; /* copied: the next mqs__err overwrites mqs_errmsg */
    snprintf(msg, sizeof msg, "%s", mqs_errmsg(s));
    if (rc != MQS_EBUSY && rc != MQS_ECONN && rc != MQS_EIO) {
        acq_close_session(r);
        return mqs__err(s, rc, "cannot acquire the lock of cluster "
                        "'%s': %s", cfg->cluster, msg);
    }
    if (rc == MQS_EBUSY && r->timeout_ms == 0) {
        acq_close_session(r);
        if (!st->holder[0]) /* the database itself was busy */
            return mqs__err(s, MQS_EBUSY, "cannot acquire the lock of "
                            "cluster '%s' now: %s", cfg->cluster, msg);
        return mqs__err(s, MQS_EBUSY,
                        "the lock of cluster '%s' is held by node %s "
                        "(token %lld, lease %lld ms left)",
                        cfg->cluster, st->holder, (long long)st->token,
                        (long long)st->lease_left_ms);
    }
    acq_log_wait(r, rc, msg);
    *left = INT64_MAX;
    if (r->timeout_ms > 0) {
        *left = r->start + r->timeout_ms - mqs__mono_ms();
        if (*left <= 0) {
            acq_close_session(r);
            return mqs__err(s, MQS_ETIMEDOUT,
                            "the lock of cluster '%s' is still held by "
                            "node %s after %lld ms",
                            cfg->cluster, st->holder,
                            (long long)r->timeout_ms);
        }
    }
    return 0;
}

/* Wait before the next poll, at most left ms. */
static void acq_wait(acq_run *r, int64_t left)
{
    mqs_store *s = r->s;
    const mqs_config *cfg = r->cfg;
    int64_t wait = cfg->poll_ms < left ? cfg->poll_ms : left;
    if (r->got) {
        /* We hold the session lock but the holder's lease stands (the
         * database restarted, or it is re-arming): let go for a while
         * so the master can take it back. */
        mqs__bc_session_unlock(MQS_BCX(s), r->sc, cfg->cluster);
        int64_t pause = cfg->renew_ms + cfg->poll_ms;
        mqs__sleep_ms(pause < left ? pause : left);
    } else if (has_session(s) && r->sc) {
        /* Block on the session lock: it frees the moment the master's
         * session ends, so a crash is seen at once. */
        (void)standby_session(s, &r->sc, wait, &r->sid);
    } else {
        mqs__sleep_ms(wait);
    }
}

int mqs_lock_acquire(mqs_store *s, int64_t timeout_ms, const mqs_lock_cbs *cbs)
{
    if (!s)
        return mqs__err(NULL, MQS_EINVAL, "mqs_lock_acquire: store is NULL");
    if (!mqs__bc_has_lock(s->be))
        return no_lock(s);
    pthread_mutex_lock(&s->ha_mu);
    if (s->ha_state == HA_MASTER) {
        pthread_mutex_unlock(&s->ha_mu);
        return 0;
    }
    s->cbs = cbs ? *cbs : (mqs_lock_cbs){0};
    /* From now on this store takes part in HA: it writes nothing it was
     * not asked to (expired rows) unless it is master. */
    s->ha_used = true;
    pthread_mutex_unlock(&s->ha_mu);
    keeper_stop(s); /* a previous term's keeper, if any */

    acq_run r = {.s = s, .cfg = &s->uri.cfg, .timeout_ms = timeout_ms,
                 .start = mqs__mono_ms()};
    for (;;) {
        int rc = acq_poll(&r);
        if (rc == 0 && !acq_lease_fresh(&r))
            continue; /* lost the new lease at once; it waited a poll */
        if (rc == 0)
            return acq_become_master(&r);
        int64_t left = INT64_MAX;
        if ((rc = acq_decide(&r, rc, &left)) != 0)
            return rc;
        acq_wait(&r, left);
    }
}

int mqs_lock_release(mqs_store *s)
{
    if (!s)
        return mqs__err(NULL, MQS_EINVAL, "mqs_lock_release: store is NULL");
    if (!mqs__bc_has_lock(s->be))
        return no_lock(s);
    pthread_mutex_lock(&s->ha_mu);
    if (s->ha_state != HA_MASTER) {
        pthread_mutex_unlock(&s->ha_mu);
        return 0;
    }
    mqs_be_lock l = {s->uri.cfg.cluster, s->uri.cfg.node_id, s->token,
                     s->uri.cfg.lease_ms, 0, 0, renew_wait(s)};
    pthread_mutex_unlock(&s->ha_mu);
    /* Stop believing first, then free the row (no write can slip in
     * between as master), then drop the session lock that wakes a
     * standby. */
    lose_ex(s, "released", true);
    keeper_stop(s);
    int rc = mqs__with_reader(s, do_release, &l);
    pthread_mutex_lock(&s->ha_mu);
    session_drop_locked(s);
    pthread_mutex_unlock(&s->ha_mu);
    if (rc == 0)
        mqs__log(s, MQS_LOG_INFO, "node %s released the lock of cluster '%s'",
                 s->uri.cfg.node_id, s->uri.cfg.cluster);
    return rc;
}

int mqs_lock_status(mqs_store *s, mqs_lock_info *out)
{
    if (!s || !out)
        return mqs__err(s, MQS_EINVAL, "mqs_lock_status: NULL argument");
    if (!mqs__bc_has_lock(s->be))
        return no_lock(s);
    acq_arg a = {{s->uri.cfg.cluster, NULL, 0, 0, 0, 0, 0}, {{0}, 0, 0, 0, 0}};
    int rc = mqs__with_reader(s, do_read, &a);
    if (rc)
        return rc;
    memset(out, 0, sizeof *out);
    snprintf(out->cluster, sizeof out->cluster, "%s", s->uri.cfg.cluster);
    snprintf(out->holder, sizeof out->holder, "%s", a.st.holder);
    out->token = a.st.token;
    out->lease_left_ms = a.st.lease_left_ms;
    out->held_ms = a.st.held_ms;
    out->crash_detect = a.st.session_armed;
    pthread_mutex_lock(&s->ha_mu);
    out->held_by_me = s->ha_state == HA_MASTER && s->token == a.st.token &&
                      !strcmp(a.st.holder, s->uri.cfg.node_id);
    pthread_mutex_unlock(&s->ha_mu);
    return 0;
}

int mqs_lock_force_release(mqs_store *s)
{
    if (!s)
        return mqs__err(NULL, MQS_EINVAL, "store is NULL");
    if (!mqs__bc_has_lock(s->be))
        return no_lock(s);
    mqs__log(s, MQS_LOG_WARN, "forcing the lock of cluster '%s' free: a live "
             "holder will be fenced on its next write",
             s->uri.cfg.cluster);
    return mqs__with_reader(s, do_force, s->uri.cfg.cluster);
}

void mqs__lock_shutdown(mqs_store *s)
{
    pthread_mutex_lock(&s->ha_mu);
    bool master = s->ha_state == HA_MASTER;
    pthread_mutex_unlock(&s->ha_mu);
    if (master)
        (void)mqs_lock_release(s); /* a clean stop hands over at once */
    keeper_stop(s);
    pthread_mutex_lock(&s->ha_mu);
    session_drop_locked(s);
    mqs_session *x = s->sess_wait;
    s->sess_wait = NULL;
    pthread_mutex_unlock(&s->ha_mu);
    /* The session thread closes its connection before we return. */
    session_reap(x);
}
