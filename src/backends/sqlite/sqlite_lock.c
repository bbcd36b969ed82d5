/*
 * sqlite_lock.c - the SQLite backend's exclusive lock (ABI 2.0: acquire,
 * renew, release, read, force, fence) and session lock (crash detector).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "sqlite_int.h"

/* ---------------------------------------------------------------------------
 * Exclusive lock (ABI 2.0)
 *
 * Fencing without writing. SQLite has one write lock per database file,
 * taken by BEGIN IMMEDIATE and held until COMMIT/ROLLBACK (WAL: the WAL
 * write lock; rollback journal: RESERVED, then EXCLUSIVE to commit). A
 * master's write transaction begins IMMEDIATE, and lock_fence then reads
 * the lock row: holder, token, and a lease with at least margin_ms left.
 * lock_acquire, lock_force and lock_renew change the row only inside
 * their own BEGIN IMMEDIATE, so none of them can write, let alone commit,
 * between that read and the end of the fenced transaction: the row read
 * is the row at COMMIT. txn_commit reads it once more after the last
 * write, for the lease margin (time has passed, the row cannot have
 * changed). Both reads are primary-key lookups in this process, usually
 * from the page cache: no row version, no journal/WAL page, no fsync.
 * The lease is extended only by lock_renew, in its own short transaction
 * on the lease connection, every renew_ms; it waits for a running write
 * transaction (at most wait_ms), never the other way round beyond that
 * transaction. Standbys poll lock_acquire with a plain read (a WAL read
 * lock, which no writer waits for) and take the write lock only when the
 * row says the lock can be taken.
 *
 * SQLite has no server, so the backend supplies what a server would:
 *  - The clock: CLOCK_BOOTTIME in ms. Every process on the host reads the
 *    same one and no wall-clock change moves it. Its values only mean
 *    something within one boot, so each lease carries the kernel boot id;
 *    a lease written under another boot id has ended (its holder died with
 *    the host).
 *  - The session (crash detector): an open-file-description lock on one
 *    byte of "<database>-mqslock" per cluster. The kernel drops it when the
 *    holder's process dies, which wakes a waiting standby at once. It
 *    belongs to the file description, not the process, so two stores of
 *    one process exclude each other too; a child forked (without exec)
 *    while it is held shares it, and it then lasts until the child exits
 *    too. The session id is the pid, so a crash is only recognized within
 *    one pid namespace (elsewhere the lease decides).
 * Processes on different hosts sharing one file (NFS) have different boot
 * ids and would each read the other's lease as ended: SQLite HA is for the
 * processes of one host.
 * ------------------------------------------------------------------------- */

/* Process-wide facts, read once. */
static struct {
    char boot_id[64]; /* "" if it could not be read */
    int boot_errno;
    int64_t pidns; /* inode of our pid namespace, 0 if unknown */
} sqlite_host;
static pthread_once_t sqlite_host_once = PTHREAD_ONCE_INIT;

static void sqlite_host_init(void)
{
    int fd = open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
    ssize_t n = -1;
    if (fd >= 0) {
        n = read(fd, sqlite_host.boot_id, sizeof sqlite_host.boot_id - 1);
        sqlite_host.boot_errno = n < 0 ? errno : EIO;
        close(fd);
    } else {
        sqlite_host.boot_errno = errno;
    }
    if (n < 0)
        n = 0;
    while (n > 0 && (sqlite_host.boot_id[n - 1] == '\n' ||
                     sqlite_host.boot_id[n - 1] == ' '))
        n--;
    sqlite_host.boot_id[n] = '\0';
    struct stat sb;
    if (stat("/proc/self/ns/pid", &sb) == 0)
        sqlite_host.pidns = (int64_t)sb.st_ino;
}

static int sqlite_host_check(mqs_be_conn *c)
{
    pthread_once(&sqlite_host_once, sqlite_host_init);
    if (sqlite_host.boot_id[0])
        return 0;
    return sq_failf(c, MQS_ENOTSUP,
                    "sqlite: cannot read the kernel boot id from "
                    "/proc/sys/kernel/random/boot_id (%s): the SQLite "
                    "lock needs it to tell a lease of this boot from one "
                    "written before a restart (Linux with /proc mounted)",
                    strerror(sqlite_host.boot_errno));
}

/* The lease clock. A raw system call, not clock_gettime(): LD_PRELOAD
 * clock fakers (libfaketime) shift the monotonic clocks along with the
 * wall clock, and the lease must be measured on the one clock all nodes
 * share. Where the kernel's timespec may differ from the C library's
 * (32-bit ABIs), the library call is used. */
static int64_t sqlite_boot_ms(void)
{
    struct timespec ts;
#if defined(SYS_clock_gettime) && !defined(SYS_clock_gettime64)
    if (syscall(SYS_clock_gettime, CLOCK_BOOTTIME, &ts) != 0)
#endif
        clock_gettime(CLOCK_BOOTTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* sq_get for the lock statements: a database still at schema 1 gets
 * an error that says what to do instead of "no such table". */
static int sqlite_lock_stmt(mqs_be_conn *c, enum sqlite_stmt_id id,
                            sqlite3_stmt **st)
{
    int rc = sq_get(c, id, st);
    int v = 0;
    if (rc && sq_probe(c, &v) == 0 && v < 2)
        return sq_failf(c, MQS_ESCHEMA,
                        "sqlite: %s is at schema version %d, without the "
                        "mqs_lock table: the exclusive lock needs schema "
                        "version 2 (002_lock.sql); run `mqstore migrate "
                        "URI` or open the store with migrate=auto",
                        c->path, v);
    return rc;
}

static int sqlite_bind_str(mqs_be_conn *c, sqlite3_stmt *st,
                           enum sqlite_stmt_id id, int idx, const char *s)
{
    int rc = sqlite3_bind_text(st, idx, s, -1, SQLITE_STATIC);
    return rc == SQLITE_OK ? 0 : sq_bind_fail(c, st, id, rc);
}

/* Bind the three session columns from idx: this process's session when the
 * core says it holds one, else NULL. For SQLite the session is a file lock
 * held by another connection of this process, and the core stops passing
 * its id as soon as it closes that connection, so the pid is the check
 * left to make. Returns whether a session was recorded. */
static int sqlite_bind_session(sqlite3_stmt *st, int idx,
                               const mqs_be_lock *l)
{
    pid_t me = getpid();
    if (l->session_id == 0 || l->session_id != (int64_t)me) {
        sqlite3_bind_null(st, idx);
        sqlite3_bind_null(st, idx + 1);
        sqlite3_bind_null(st, idx + 2);
        return 0;
    }
    sqlite3_bind_int64(st, idx, (int64_t)me);
    sqlite3_bind_text(st, idx + 1, sqlite_host.boot_id, -1, SQLITE_STATIC);
    if (sqlite_host.pidns)
        sqlite3_bind_int64(st, idx + 2, sqlite_host.pidns);
    else
        sqlite3_bind_null(st, idx + 2);
    return 1;
}

/* One row of mqs_lock, with its boot-clock values judged against ours. */
struct sqlite_lock_row {
    int found;
    int held; /* holder is not NULL */
    char holder[256];
    int64_t token;
    int lease_valid; /* lease and acquired were recorded in this boot */
    int64_t lease_until;
    int64_t acquired;
    int64_t session_id; /* 0: none recorded under this boot */
    int64_t session_pidns;
};

/* Read the row of cluster (in or outside a transaction). */
static int sqlite_lock_load(mqs_be_conn *c, const char *cluster,
                            struct sqlite_lock_row *r)
{
    memset(r, 0, sizeof *r);
    sqlite3_stmt *st;
    int rc = sqlite_lock_stmt(c, ST_LOCK_GET, &st);
    if (rc || (rc = sqlite_bind_str(c, st, ST_LOCK_GET, 1, cluster)))
        return rc;
    rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) {
        sqlite3_reset(st);
        return 0;
    }
    if (rc != SQLITE_ROW) {
        int ret = sq_fail(c, rc, sq_sql[ST_LOCK_GET].name);
        sqlite3_reset(st);
        return ret;
    }
    r->found = 1;
    const char *holder = (const char *)sqlite3_column_text(st, 0);
    const char *boot = (const char *)sqlite3_column_text(st, 4);
    const char *epoch = (const char *)sqlite3_column_text(st, 6);
    r->held = holder != NULL;
    if (holder)
        snprintf(r->holder, sizeof r->holder, "%s", holder);
    r->token = sqlite3_column_int64(st, 1);
    r->lease_valid = boot && !strcmp(boot, sqlite_host.boot_id) &&
                     sqlite3_column_type(st, 2) != SQLITE_NULL &&
                     sqlite3_column_type(st, 3) != SQLITE_NULL;
    r->lease_until = sqlite3_column_int64(st, 2);
    r->acquired = sqlite3_column_int64(st, 3);
    if (epoch && !strcmp(epoch, sqlite_host.boot_id)) {
        r->session_id = sqlite3_column_int64(st, 5);
        r->session_pidns = sqlite3_column_int64(st, 7);
    }
    sqlite3_reset(st);
    return 0;
}

static void sqlite_lock_fill(mqs_be_lock_state *st,
                             const struct sqlite_lock_row *r, int64_t now)
{
    memset(st, 0, sizeof *st);
    st->token = r->token;
    if (!r->held)
        return;
    snprintf(st->holder, sizeof st->holder, "%s", r->holder);
    /* A lease of another boot has ended: 0 left, age unknown. */
    if (r->lease_valid) {
        st->lease_left_ms = r->lease_until - now;
        st->held_ms = now - r->acquired;
    }
    st->session_armed = r->session_id > 0;
}

/* Whether the process of a recorded session is gone. Asked only by a node
 * that holds the session byte now (holder_gone), so no connection holds it
 * for the recorded session any more; what is left to rule out is a live
 * holder whose file lock went some other way (its lock file deleted or
 * reached by another path): its process must be gone as well. */
static int sqlite_session_gone(int64_t pid, int64_t pidns)
{
    /* A pid of another pid namespace names nothing we can see. */
    if (!sqlite_host.pidns || pidns != sqlite_host.pidns)
        return 0;
    /* Our own pid cannot tell this process's stores apart; the byte we
     * hold is the proof that the recorded session's connection let go. */
    if (pid == (int64_t)getpid())
        return 1;
    if (pid <= 0 || pid > INT_MAX)
        return 0;
    if (kill((pid_t)pid, 0) != 0 && errno == ESRCH)
        return 1;
    /* A dying process still answers kill(): its files (and so its file
     * lock) are closed while it exits, before its parent reaps it. The
     * kernel's PF_EXITING flag is set from the start of the exit, and a
     * zombie shows state Z. Otherwise the standby would find the holder
     * "alive" and wait out the lease. */
    char path[64];
    snprintf(path, sizeof path, "/proc/%lld/stat", (long long)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT;
    char buf[512];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    /* "pid (comm) state ppid pgrp session tty tpgid flags ...": comm may
     * hold ')', so parse from the last one. */
    const char *p = strrchr(buf, ')');
    char state = 0;
    unsigned flags = 0;
    if (!p || sscanf(p + 1, " %c %*d %*d %*d %*d %*d %u", &state, &flags) != 2)
        return 0;
    return state == 'Z' || state == 'X' || (flags & 0x4u /* PF_EXITING */);
}

/* Roll back the lock's own transaction, keeping the failure's message. */
int sq_lock_abort(mqs_be_conn *c, int rc)
{
    char keep[sizeof c->err];
    memcpy(keep, c->err, sizeof keep);
    (void)sq_txn_rollback(c);
    memcpy(c->err, keep, sizeof keep);
    return rc;
}

/* Bound every wait of this connection (busy handler) to wait_ms from now,
 * until sqlite_unbound. */
static void sqlite_bound(mqs_be_conn *c, int64_t wait_ms)
{
    c->bound_ms = wait_ms > 0 ? wait_ms : 0;
    c->busy_until = sq_mono_ms() + c->bound_ms;
    if (c->busy_until == 0)
        c->busy_until = 1;
}

static void sqlite_unbound(mqs_be_conn *c)
{
    c->busy_until = 0;
}

/* Whether the row lets l take the lock (now: boot clock). */
static int sqlite_lock_takeable(const struct sqlite_lock_row *r,
                                const mqs_be_lock *l, int64_t now)
{
    return !r->found || !r->held || !r->lease_valid ||
           r->lease_until <= now ||
           (l->holder_gone && r->session_id > 0 &&
            sqlite_session_gone(r->session_id, r->session_pidns));
}

static int sqlite_lock_busy(mqs_be_conn *c, const mqs_be_lock *l,
                            const struct sqlite_lock_row *r, int64_t now,
                            mqs_be_lock_state *st)
{
    sqlite_lock_fill(st, r, now);
    return sq_failf(
        c, MQS_EBUSY,
        "sqlite: the lock of cluster '%s' in %s is held by node %s "
        "(token %lld, lease %lld ms left, held for %lld ms, crash "
        "detector %s)",
        l->cluster, c->path, st->holder, (long long)st->token,
        (long long)st->lease_left_ms, (long long)st->held_ms,
        st->session_armed ? "armed" : "not armed");
}

int sq_lock_acquire(mqs_be_conn *c, const mqs_be_lock *l,
                    mqs_be_lock_state *st)
{
    memset(st, 0, sizeof *st);
    sqlite3_stmt *ins, *take;
    int rc;
    if ((rc = sqlite_host_check(c)) ||
        (rc = sqlite_lock_stmt(c, ST_LOCK_INIT, &ins)) ||
        (rc = sqlite_lock_stmt(c, ST_LOCK_TAKE, &take)))
        return rc;
    /* A standby must not sit out busy_timeout behind a master frozen
     * inside a write transaction: give up after wait_ms (100 ms when the
     * core leaves it to us) with MQS_EBUSY and let the core poll again. */
    int64_t wait = l->wait_ms > 0 ? l->wait_ms
                                  : (c->busy_ms < 100 ? c->busy_ms : 100);

    /* First a plain read, outside any transaction: while a live holder's
     * lease stands (what a standby finds on almost every poll) this takes
     * no write lock, writes nothing and does not wait for the master's
     * write transactions (a WAL reader never does). */
    struct sqlite_lock_row r;
    sqlite_bound(c, wait);
    rc = sqlite_lock_load(c, l->cluster, &r);
    sqlite_unbound(c);
    if (rc)
        return rc;
    int64_t now = sqlite_boot_ms();
    if (!sqlite_lock_takeable(&r, l, now))
        return sqlite_lock_busy(c, l, &r, now, st);

    /* Takeable (or no row yet): take the write lock, which waits for the
     * holder's fenced transaction in progress, if any, then decide again
     * on the row as it is now. */
    sqlite_bound(c, wait);
    if ((rc = sq_exec_id(c, ST_BEGIN))) {
        sqlite_unbound(c);
        return rc;
    }
    if ((rc = sqlite_bind_str(c, ins, ST_LOCK_INIT, 1, l->cluster)) ||
        (rc = sq_run(c, ins, ST_LOCK_INIT, NULL)) ||
        (rc = sqlite_lock_load(c, l->cluster, &r)))
        goto abort;
    /* Read after BEGIN IMMEDIATE: no one can change the row from here. */
    now = sqlite_boot_ms();
    if (!sqlite_lock_takeable(&r, l, now)) {
        /* renewed (or taken by another standby) since the first read */
        sqlite_unbound(c);
        if ((rc = sq_txn_rollback(c)))
            return rc;
        return sqlite_lock_busy(c, l, &r, now, st);
    }
    int64_t changed = 0;
    if ((rc = sqlite_bind_str(c, take, ST_LOCK_TAKE, 1, l->cluster)) ||
        (rc = sqlite_bind_str(c, take, ST_LOCK_TAKE, 2, l->node)))
        goto abort;
    sqlite3_bind_int64(take, 3, now + l->lease_ms);
    sqlite3_bind_int64(take, 4, now);
    sqlite3_bind_text(take, 5, sqlite_host.boot_id, -1, SQLITE_STATIC);
    int armed = sqlite_bind_session(take, 6, l);
    if ((rc = sq_run(c, take, ST_LOCK_TAKE, &changed)))
        goto abort;
    if (changed != 1) {
        rc = sq_failf(c, MQS_EIO,
                      "sqlite: the lock row of cluster '%s' vanished "
                      "from %s inside the acquiring transaction",
                      l->cluster, c->path);
        goto abort;
    }
    if ((rc = sq_exec_id(c, ST_COMMIT)))
        goto abort;
    sqlite_unbound(c);
    snprintf(st->holder, sizeof st->holder, "%s", l->node);
    st->token = r.token + 1;
    st->lease_left_ms = l->lease_ms;
    st->held_ms = 0;
    st->session_armed = armed;
    return 0;
abort:
    sqlite_unbound(c);
    return sq_lock_abort(c, rc);
}

/* The row (r, or read now when r is NULL) shows no lock of node/token:
 * say who has it. Returns MQS_EFENCED. */
static int sqlite_lock_fenced(mqs_be_conn *c, const char *cluster,
                              const char *node, int64_t token,
                              const struct sqlite_lock_row *r)
{
    struct sqlite_lock_row rr;
    if (!r) {
        if (sqlite_lock_load(c, cluster, &rr) != 0)
            return sq_failf(c, MQS_EFENCED,
                            "sqlite: node %s (token %lld) no longer "
                            "holds the lock of cluster '%s' and was "
                            "fenced (the current holder could not be "
                            "read)",
                            node, (long long)token, cluster);
        r = &rr;
    }
    if (!r->found)
        return sq_failf(c, MQS_EFENCED,
                        "sqlite: the lock of cluster '%s' has no row in "
                        "%s any more; node %s (token %lld) was fenced",
                        cluster, c->path, node, (long long)token);
    if (!r->held)
        return sq_failf(c, MQS_EFENCED,
                        "sqlite: the lock of cluster '%s' is now free "
                        "(token %lld); node %s (token %lld) was fenced",
                        cluster, (long long)r->token, node,
                        (long long)token);
    return sq_failf(c, MQS_EFENCED,
                    "sqlite: the lock of cluster '%s' is now held by %s "
                    "(token %lld); node %s (token %lld) was fenced",
                    cluster, r->holder, (long long)r->token, node,
                    (long long)token);
}

int sq_lock_renew(mqs_be_conn *c, const mqs_be_lock *l,
                  mqs_be_lock_state *st)
{
    memset(st, 0, sizeof *st);
    sqlite3_stmt *up;
    int rc;
    if ((rc = sqlite_host_check(c)) ||
        (rc = sqlite_lock_stmt(c, ST_LOCK_RENEW, &up)))
        return rc;
    if (!sqlite3_get_autocommit(c->db))
        return sq_failf(c, MQS_EINVAL,
                        "sqlite: lock_renew called inside a transaction "
                        "on %s (ABI 2.0 renews in its own transaction, on "
                        "the lease connection)",
                        c->path);
    /* Its own transaction: the write lock orders it against every acquire
     * and every fenced write transaction; it waits for the one in
     * progress, if any, at most wait_ms. */
    sqlite_bound(c, l->wait_ms > 0 ? l->wait_ms : 1000);
    if ((rc = sq_exec_id(c, ST_BEGIN))) {
        sqlite_unbound(c);
        return rc;
    }
    if ((rc = sqlite_bind_str(c, up, ST_LOCK_RENEW, 1, l->cluster)) ||
        (rc = sqlite_bind_str(c, up, ST_LOCK_RENEW, 2, l->node)))
        goto abort;
    /* read under the write lock: the lease starts no earlier than now */
    int64_t now = sqlite_boot_ms();
    sqlite3_bind_int64(up, 3, l->token);
    sqlite3_bind_int64(up, 4, now + l->lease_ms);
    sqlite3_bind_text(up, 5, sqlite_host.boot_id, -1, SQLITE_STATIC);
    int armed = sqlite_bind_session(up, 6, l);
    int matched = 0;
    int64_t acquired = now;
    int src = sqlite3_step(up);
    if (src == SQLITE_ROW) {
        matched = 1;
        acquired = sqlite3_column_int64(up, 0);
        src = sqlite3_step(up);
    }
    if (src != SQLITE_DONE) {
        rc = sq_fail(c, src, sq_sql[ST_LOCK_RENEW].name);
        sqlite3_reset(up);
        goto abort;
    }
    sqlite3_reset(up);
    if (!matched) {
        rc = sqlite_lock_fenced(c, l->cluster, l->node, l->token, NULL);
        goto abort;
    }
    if ((rc = sq_exec_id(c, ST_COMMIT)))
        goto abort;
    sqlite_unbound(c);
    snprintf(st->holder, sizeof st->holder, "%s", l->node);
    st->token = l->token;
    st->lease_left_ms = l->lease_ms;
    st->held_ms = now - acquired;
    st->session_armed = armed;
    return 0;
abort:
    sqlite_unbound(c);
    return sq_lock_abort(c, rc);
}

/* Check the fence recorded by lock_fence against the row as this
 * transaction sees it (under the write lock: as every other connection
 * will see it until this transaction ends). */
int sq_fence_check(mqs_be_conn *c)
{
    struct sqlite_lock_row r;
    int rc = sqlite_lock_load(c, c->fence_cluster, &r);
    if (rc)
        return rc;
    if (!r.found || !r.held || strcmp(r.holder, c->fence_node) != 0 ||
        r.token != c->fence_token)
        return sqlite_lock_fenced(c, c->fence_cluster, c->fence_node,
                                  c->fence_token, &r);
    int64_t now = sqlite_boot_ms();
    if (!r.lease_valid)
        return sq_failf(c, MQS_EFENCED,
                        "sqlite: node %s (token %lld) holds the lock of "
                        "cluster '%s' under a lease of another boot of "
                        "this host, which has ended; fenced",
                        c->fence_node, (long long)c->fence_token,
                        c->fence_cluster);
    if (r.lease_until - now < c->fence_margin)
        return sq_failf(c, MQS_EFENCED,
                        "sqlite: node %s (token %lld) holds the lock of "
                        "cluster '%s' but its lease has %lld ms left, "
                        "less than the %lld ms a write transaction needs "
                        "(the lease was not renewed in time); fenced",
                        c->fence_node, (long long)c->fence_token,
                        c->fence_cluster,
                        (long long)(r.lease_until - now),
                        (long long)c->fence_margin);
    return 0;
}

/* Keep a copy of s in *dst (reused while equal: the same every call). */
static int sqlite_keep_str(char **dst, const char *s)
{
    if (*dst && !strcmp(*dst, s))
        return 0;
    char *p = strdup(s);
    if (!p)
        return -1;
    free(*dst);
    *dst = p;
    return 0;
}

int sq_lock_fence(mqs_be_conn *c, const mqs_be_fence *f)
{
    c->fence_on = 0;
    int rc = sqlite_host_check(c);
    if (rc)
        return rc;
    if (sqlite3_get_autocommit(c->db))
        return sq_failf(c, MQS_EINVAL,
                        "sqlite: lock_fence called outside a write "
                        "transaction on %s",
                        c->path);
    if (sqlite_keep_str(&c->fence_cluster, f->cluster) ||
        sqlite_keep_str(&c->fence_node, f->node))
        return sq_failf(c, MQS_ENOMEM,
                        "sqlite: out of memory fencing a transaction of "
                        "cluster '%s'",
                        f->cluster);
    c->fence_token = f->token;
    c->fence_margin = f->margin_ms;
    /* txn_begin's BEGIN IMMEDIATE holds the write lock already: check now
     * (a deposed master fails before it writes anything), and again in
     * txn_commit after the last write. */
    if ((rc = sq_fence_check(c)))
        return rc;
    c->fence_on = 1;
    return 0;
}

/* Release or force free (node NULL), each in its own transaction. */
static int sqlite_lock_clear(mqs_be_conn *c, enum sqlite_stmt_id id,
                             const char *cluster, const char *node,
                             int64_t token)
{
    sqlite3_stmt *st;
    int rc;
    if ((rc = sqlite_lock_stmt(c, id, &st)) ||
        (rc = sq_exec_id(c, ST_BEGIN)))
        return rc;
    if ((rc = sqlite_bind_str(c, st, id, 1, cluster)) ||
        (node && (rc = sqlite_bind_str(c, st, id, 2, node))))
        return sq_lock_abort(c, rc);
    if (node)
        sqlite3_bind_int64(st, 3, token);
    if ((rc = sq_run(c, st, id, NULL)) ||
        (rc = sq_exec_id(c, ST_COMMIT)))
        return sq_lock_abort(c, rc);
    return 0;
}

int sq_lock_release(mqs_be_conn *c, const mqs_be_lock *l)
{
    return sqlite_lock_clear(c, ST_LOCK_RELEASE, l->cluster, l->node,
                             l->token);
}

int sq_lock_force(mqs_be_conn *c, const char *cluster)
{
    return sqlite_lock_clear(c, ST_LOCK_FORCE, cluster, NULL, 0);
}

int sq_lock_read(mqs_be_conn *c, const char *cluster,
                 mqs_be_lock_state *st)
{
    memset(st, 0, sizeof *st);
    struct sqlite_lock_row r;
    int rc;
    if ((rc = sqlite_host_check(c)) ||
        (rc = sqlite_lock_load(c, cluster, &r)))
        return rc;
    sqlite_lock_fill(st, &r, sqlite_boot_ms());
    return 0;
}

/* ---- session lock (crash detector) ---- */

/* The cluster's byte in the lock file: FNV-1a, below 2^31 for any off_t.
 * Two clusters on one byte can only cost a wake-up or an unarmed detector,
 * never a takeover: holding the byte proves no one else holds it. */
static off_t sqlite_session_byte(const char *cluster)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)cluster; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return (off_t)(h & 0x7fffffffu);
}

static int sqlite_lockfile_open(mqs_be_conn *c)
{
    if (c->lock_fd >= 0)
        return 0;
    /* SQLite's own name for the file (symlinks resolved), so every path to
     * one database names one lock file. */
    const char *db = sqlite3_db_filename(c->db, "main");
    if (!db || !*db)
        db = c->path;
    size_t len = strlen(db) + sizeof "-mqslock";
    char *path = malloc(len);
    if (!path)
        return sq_failf(c, MQS_ENOMEM,
                        "sqlite: out of memory opening the session lock "
                        "file of %s",
                        c->path);
    snprintf(path, len, "%s-mqslock", db);
    /* Whoever may write the database may take the lock: the database's
     * permissions and owner, as SQLite does for its -wal and -shm files. */
    struct stat dbst;
    int have_db = stat(db, &dbst) == 0;
    mode_t mode = have_db ? (dbst.st_mode & 0666) : 0600;
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                  mode);
    if (fd >= 0) {
        /* Best effort (past the umask; root's file to the database's
         * owner): a failure only narrows who else may take the lock. */
        int ok = fchmod(fd, mode) == 0;
        if (ok && have_db && geteuid() == 0)
            ok = fchown(fd, dbst.st_uid, dbst.st_gid) == 0;
        (void)ok;
    } else if (errno == EEXIST) {
        fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
    }
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        int e = fd < 0 ? errno : 0;
        int rc = sq_failf(
            c, MQS_EIO,
            "sqlite: cannot use '%s' as the session lock file: %s%s", path,
            e ? strerror(e) : "not a regular file",
            e == EACCES || e == EPERM || e == EROFS
                ? " (mqstore needs write access to the database's directory "
                  "and this file)"
                : "");
        if (fd >= 0)
            close(fd);
        free(path);
        return rc;
    }
    c->lock_fd = fd;
    c->lock_path = path;
    return 0;
}

/* MQS_ECONN if the lock file was removed or replaced under us: a lock on
 * the old file excludes no one who opens the new one. Drops the old file
 * and, with it, the session. */
static int sqlite_lockfile_check(mqs_be_conn *c)
{
    struct stat fd_st, path_st;
    if (fstat(c->lock_fd, &fd_st) == 0 && fd_st.st_nlink > 0 &&
        stat(c->lock_path, &path_st) == 0 && fd_st.st_dev == path_st.st_dev &&
        fd_st.st_ino == path_st.st_ino)
        return 0;
    sq_failf(c, MQS_ECONN,
             "sqlite: the session lock file '%s' was removed or replaced "
             "while this connection held the session lock of cluster "
             "'%s': that session ended",
             c->lock_path, c->sess_cluster ? c->sess_cluster : "?");
    close(c->lock_fd);
    c->lock_fd = -1;
    free(c->lock_path);
    c->lock_path = NULL;
    free(c->sess_cluster);
    c->sess_cluster = NULL;
    return MQS_ECONN;
}

int sq_session_lock(mqs_be_conn *c, const char *cluster,
                    int64_t wait_ms, int64_t *session_id)
{
    *session_id = 0;
    if (c->sess_cluster) {
        if (strcmp(c->sess_cluster, cluster) != 0)
            return sq_failf(c, MQS_EINVAL,
                            "sqlite: this connection holds the session "
                            "lock of cluster '%s'; it cannot also take "
                            "that of '%s' (one cluster per connection)",
                            c->sess_cluster, cluster);
        /* A file lock lasts as long as its process and descriptor: the one
         * way to lose it alive is the file going away. */
        int rc = sqlite_lockfile_check(c);
        if (rc)
            return rc;
        *session_id = (int64_t)getpid();
        return 0;
    }
    int rc = sqlite_lockfile_open(c);
    if (rc)
        return rc;
    off_t off = sqlite_session_byte(cluster);
    int64_t deadline =
        wait_ms < 0 ? INT64_MAX : sq_mono_ms() + wait_ms;
    for (;;) {
        struct flock fl = {.l_type = F_WRLCK,
                           .l_whence = SEEK_SET,
                           .l_start = off,
                           .l_len = 1};
        if (fcntl(c->lock_fd, F_OFD_SETLK, &fl) == 0)
            break;
        int e = errno;
        if (e == EINTR)
            continue;
        if (e != EAGAIN && e != EACCES)
            return sq_failf(
                c, e == EINVAL ? MQS_ENOTSUP : MQS_EIO,
                "sqlite: cannot lock byte %lld of the session lock file "
                "'%s': %s%s",
                (long long)off, c->lock_path, strerror(e),
                e == EINVAL ? " (open file description locks need Linux "
                              "3.15 or later)"
                            : "");
        int64_t left = deadline - sq_mono_ms();
        if (left <= 0)
            return sq_failf(c, MQS_EBUSY,
                            "sqlite: the session lock of cluster '%s' "
                            "(byte %lld of '%s') is held by another "
                            "connection (waited %lld ms)",
                            cluster, (long long)off, c->lock_path,
                            (long long)(wait_ms > 0 ? wait_ms : 0));
        /* F_OFD_SETLKW can be neither timed out nor interrupted, so poll:
         * 2 ms is all a standby adds to noticing the holder's death. */
        struct timespec ts = {0, (left < 2 ? left : 2) * 1000000L};
        nanosleep(&ts, NULL);
    }
    c->sess_cluster = strdup(cluster);
    if (!c->sess_cluster) {
        struct flock fl = {.l_type = F_UNLCK,
                           .l_whence = SEEK_SET,
                           .l_start = off,
                           .l_len = 1};
        if (fcntl(c->lock_fd, F_OFD_SETLK, &fl) != 0) {
            close(c->lock_fd); /* drops the lock for sure */
            c->lock_fd = -1;
        }
        return sq_failf(c, MQS_ENOMEM,
                        "sqlite: out of memory taking the session lock "
                        "of cluster '%s'",
                        cluster);
    }
    c->sess_off = off;
    *session_id = (int64_t)getpid();
    return 0;
}

int sq_session_unlock(mqs_be_conn *c, const char *cluster)
{
    if (!c->sess_cluster || strcmp(c->sess_cluster, cluster) != 0)
        return 0;
    struct flock fl = {.l_type = F_UNLCK,
                       .l_whence = SEEK_SET,
                       .l_start = c->sess_off,
                       .l_len = 1};
    if (fcntl(c->lock_fd, F_OFD_SETLK, &fl) != 0) {
        close(c->lock_fd); /* drops the lock for sure */
        c->lock_fd = -1;
    }
    free(c->sess_cluster);
    c->sess_cluster = NULL;
    return 0;
}

