/* broker.c - the event loop, master/slave life cycle and store recovery.
 *
 * Threads: the loop thread owns all broker state. The HA thread only waits
 * in mqs_lock_acquire(); store completions and lock events reach the loop
 * as `op`s through a mutex-protected list and an eventfd. */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bridge.h"
#include "broker.h"

broker B;

/* The HA thread waits for the lock in slices so a standby can still shut
 * down promptly (mqs_lock_acquire cannot be interrupted). */
#define HA_SLICE_MS 1000
#define TICK_MS 100

static int h_listen = H_LISTEN, h_signal = H_SIGNAL, h_queue = H_QUEUE;
static int sfd = -1, qfd = -1;

/* ------------------------------------------------------------------------
 * Hand-over from other threads
 * ---------------------------------------------------------------------- */

static pthread_mutex_t q_mu = PTHREAD_MUTEX_INITIALIZER;
static op *q_head, *q_tail;

void broker_post(op *o)
{
    o->next = NULL;
    pthread_mutex_lock(&q_mu);
    bool wake = !q_head;
    if (q_tail)
        q_tail->next = o;
    else
        q_head = o;
    q_tail = o;
    pthread_mutex_unlock(&q_mu);
    if (wake) {
        uint64_t one = 1;
        (void)!write(qfd, &one, sizeof one);
    }
}

op *op_new(op_type type, conn *c, ticket *t)
{
    op *o = xcalloc(1, sizeof *o);
    o->type = type;
    o->epoch = B.epoch;
    o->c = c;
    o->t = t;
    if (c)
        c->inflight++;
    return o;
}

void op_complete(op *o, int rc, const char *err)
{
    pthread_mutex_lock(&q_mu);
    if (rc && !o->rc) {
        o->rc = rc;
        o->err = xstrdup(err && *err ? err : mqs_strerror(rc));
    }
    bool last = --o->pending == 0;
    pthread_mutex_unlock(&q_mu);
    if (last)
        broker_post(o);
}

void op_done_cb(void *ud, int rc, int64_t id, const char *errmsg)
{
    op *o = ud;
    if ((o->type == OP_SEND || o->type == OP_SUBCREATE) && rc == 0)
        o->id = id; /* one completion for these: no race */
    op_complete(o, rc, errmsg);
}

void broker_log_store_failure(const char *what, int rc)
{
    log_msg(LOG_WARN, "store %s failed (%s): %s", what,
            rc < 0 ? mqs_errname(rc) : "?", mqs_errmsg(B.store));
}

/* ------------------------------------------------------------------------
 * HA thread
 * ---------------------------------------------------------------------- */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    bool started, want, stop;
    int64_t delay_ms;
    int64_t token; /* set by on_master, on the HA thread itself */
} ha = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static _Atomic int64_t lost_token = -1;

static void ha_on_master(void *ud, int64_t token) { ha.token = token; }

/* From a library thread: hand it to the loop. */
static void ha_on_lost(void *ud, int64_t token, const char *reason)
{
    atomic_store(&lost_token, token);
    op *o = xcalloc(1, sizeof *o);
    o->type = OP_LOST;
    o->token = token;
    o->reason = xstrdup(reason ? reason : "");
    broker_post(o);
}

static void ha_wait_ms(int64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    while (!ha.stop && pthread_cond_timedwait(&ha.cv, &ha.mu, &ts) == 0)
        ;
}

static void post_master(int64_t token)
{
    op *o = xcalloc(1, sizeof *o);
    o->type = OP_MASTER;
    o->token = token;
    broker_post(o);
}

static void *ha_main(void *arg)
{
    char last_err[1536] = "";
    pthread_mutex_lock(&ha.mu);
    for (;;) {
        while (!ha.want && !ha.stop)
            pthread_cond_wait(&ha.cv, &ha.mu);
        if (ha.stop)
            break;
        if (ha.delay_ms) {
            ha_wait_ms(ha.delay_ms);
            ha.delay_ms = 0;
            if (ha.stop)
                break;
        }
        pthread_mutex_unlock(&ha.mu);
        mqs_lock_cbs cbs = {ha_on_master, ha_on_lost, NULL};
        int rc = mqs_lock_acquire(B.store, HA_SLICE_MS, &cbs);
        char err[1536]; /* a refusal's advice comes last: keep it whole */
        snprintf(err, sizeof err, "%s", rc ? mqs_errmsg(B.store) : "");
        pthread_mutex_lock(&ha.mu);
        if (rc == 0) {
            ha.want = false;
            last_err[0] = '\0';
            post_master(ha.token);
        } else if (rc == MQS_ENOTSUP) {
            /* Running as master without a lock would let a second broker
             * on the same store do the same: two masters. Refuse. */
            log_msg(LOG_ERROR, "the store has no HA lock (%s): refusing to "
                    "run, since another broker on this store could become "
                    "master too; use a backend module with lock support",
                    err);
            ha.want = false;
            post_master(-1); /* -1: fatal, see on_master */
        } else if (rc == MQS_EINVAL) {
            /* A store URI that cannot work for HA (e.g. crash_detect=on
             * through a transaction pooler): waiting will not fix it. */
            log_msg(LOG_ERROR, "cannot acquire the store lock: %s", err);
            ha.want = false;
            post_master(-1);
        } else if (rc != MQS_ETIMEDOUT && rc != MQS_EBUSY) {
            /* Database trouble: say it once, then keep trying. */
            log_msg(strcmp(err, last_err) ? LOG_ERROR : LOG_DEBUG,
                    "cannot acquire the store lock (%s): %s; retrying",
                    mqs_errname(rc), err);
            snprintf(last_err, sizeof last_err, "%s", err);
            ha.delay_ms = 1000;
        }
    }
    pthread_mutex_unlock(&ha.mu);
    return NULL;
}

static void ha_request(int64_t delay_ms)
{
    pthread_mutex_lock(&ha.mu);
    ha.want = true;
    ha.delay_ms = delay_ms;
    pthread_cond_broadcast(&ha.cv);
    pthread_mutex_unlock(&ha.mu);
}

static void ha_stop(void)
{
    if (!ha.started)
        return;
    pthread_mutex_lock(&ha.mu);
    ha.stop = true;
    pthread_cond_broadcast(&ha.cv);
    pthread_mutex_unlock(&ha.mu);
    pthread_join(ha.th, NULL);
    ha.started = false;
}

/* ------------------------------------------------------------------------
 * Listening socket
 * ---------------------------------------------------------------------- */

static int open_listener(char *err, size_t errlen)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    const char *host = B.cfg.listen_host;
    if (!*host || !strcmp(host, "*"))
        host = NULL;
    int gai = getaddrinfo(host, B.cfg.listen_port, &hints, &res);
    if (gai) {
        snprintf(err, errlen, "cannot resolve %s: %s", B.cfg.listen,
                 gai_strerror(gai));
        return -1;
    }
    int fd = -1, last = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family,
                    ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            last = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
            listen(fd, 511) == 0)
            break;
        last = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", B.cfg.listen,
                 strerror(last));
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &h_listen};
    if (epoll_ctl(B.ep, EPOLL_CTL_ADD, fd, &ev)) {
        snprintf(err, errlen, "epoll_ctl: %s", strerror(errno));
        close(fd);
        return -1;
    }
    B.lfd = fd;
    return 0;
}

#define ACCEPT_BACKOFF_MS 200

void listener_backoff(void)
{
    if (B.lfd < 0 || B.accept_paused)
        return;
    struct epoll_event ev = {.events = 0, .data.ptr = &h_listen};
    epoll_ctl(B.ep, EPOLL_CTL_MOD, B.lfd, &ev);
    B.accept_paused = true;
    B.accept_resume_ms = mono_ms() + ACCEPT_BACKOFF_MS;
}

static void listener_resume(int64_t now)
{
    if (!B.accept_paused || now < B.accept_resume_ms)
        return;
    B.accept_paused = false;
    if (B.lfd >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &h_listen};
        epoll_ctl(B.ep, EPOLL_CTL_MOD, B.lfd, &ev);
    }
}

/* Every connection is a descriptor; the store, epoll, signals and the log
 * need some more. Raise the soft limit as far as the hard one allows; if
 * that is still short, serve fewer connections than asked rather than
 * fail accept() under load. */
static void fit_open_files(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl))
        return;
    rlim_t need = (rlim_t)B.cfg.max_connections + 64;
    if (rl.rlim_cur < need) {
        rlim_t want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need
                          ? need
                          : rl.rlim_max;
        struct rlimit nl = {want, rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &nl) == 0)
            rl.rlim_cur = want;
    }
    if (rl.rlim_cur < need) {
        size_t fit = rl.rlim_cur > 128 ? (size_t)rl.rlim_cur - 64
                                       : (size_t)rl.rlim_cur / 2;
        log_msg(LOG_WARN, "open files limit is %llu, below --max-connections "
                "%zu + 64: serving at most %zu connections (raise 'ulimit "
                "-n' or LimitNOFILE= to allow more)",
                (unsigned long long)rl.rlim_cur, B.cfg.max_connections, fit);
        B.cfg.max_connections = fit;
    }
}

static void close_listener(void)
{
    if (B.lfd >= 0) {
        epoll_ctl(B.ep, EPOLL_CTL_DEL, B.lfd, NULL);
        close(B.lfd);
        B.lfd = -1;
    }
}

/* ------------------------------------------------------------------------
 * Recovery: rebuild queues and durable subscription backlogs.
 * ---------------------------------------------------------------------- */

/* Takeover: destinations and durable subscriptions from the store's
 * lists, each box paged from its start; messages are read in pages as
 * consumers need them (dest.c "Paging"), so taking over costs the same at
 * any backlog. */
typedef struct rctx {
    size_t queues, subs, skipped;
} rctx;

static int rec_dest(void *ud, const mqs_dest_info *di)
{
    rctx *r = ud;
    if (di->kind == MQS_QUEUE) {
        dest *d = dest_get_store(MQS_QUEUE, di->dest);
        if (!d) {
            r->skipped++;
            return 0;
        }
        box_set_paged(&d->qbox);
        r->queues++;
        return 0;
    }
    if (di->sub_id <= 0 || !di->sub_name)
        return 0; /* a topic without subscriptions keeps nothing */
    dest *d = dest_get_store(MQS_TOPIC, di->dest);
    if (!d) {
        log_msg(LOG_WARN, "recovery: skipping subscription '%s' of topic "
                "'%s': not a usable destination name", di->sub_name,
                di->dest);
        r->skipped++;
        return 0;
    }
    box *b = dest_find_durable_id(d, di->sub_id);
    if (!b)
        b = box_new_sub(d, BOX_DURABLE, di->sub_id, di->sub_name);
    box_set_paged(b);
    r->subs++;
    return 0;
}

static int recover(rctx *r)
{
    int rc = mqs_dest_names(B.store, rec_dest, r);
    if (r->skipped)
        log_msg(LOG_WARN, "recovery: skipped %zu destinations with unusable "
                "names", r->skipped);
    return rc;
}

/* The duplicate audits learn the newest stored messages' ids: a client
 * replays only what it sent without getting a RECEIPT, and a lost RECEIPT
 * belongs to one of the last commits before the crash (docs/broker.md,
 * "Duplicate detection"). Read by a thread while the port is already
 * open (65,536 rows take ~150 ms on PostgreSQL); until its OP_AUDIT is
 * applied, SENDs that carry ids wait unread (conn.c), nothing else does. */
static struct {
    pthread_t th;
    bool running;
} aud;

static int aud_row(void *ud, int64_t id, const void *h, size_t len)
{
    (void)id;
    op *o = ud;
    if (!msg_hdrs_valid(h, len))
        return 0;
    uint32_t n = (uint32_t)len;
    buf_add(&o->hdrs, &n, sizeof n);
    buf_add(&o->hdrs, h, len);
    o->n_hdrs++;
    return 0;
}

static void *aud_main(void *arg)
{
    op *o = arg;
    int rc = mqs_recent_headers(B.store, B.cfg.recover_audit_rows, aud_row, o);
    if (rc) {
        o->rc = rc;
        o->err = xstrdup(mqs_errmsg(B.store));
    }
    broker_post(o);
    return NULL;
}

static void audit_join(void);

static void audit_start(void)
{
    if (!B.cfg.recover_audit_rows)
        return;
    audit_join(); /* one of a term lost meanwhile (rare: waits for it) */
    op *o = op_new(OP_AUDIT, NULL, NULL);
    o->id = mono_ms();
    B.audit_loading = true;
    if (pthread_create(&aud.th, NULL, aud_main, o) != 0) {
        log_msg(LOG_WARN, "recovery: cannot start the audit reader thread: "
                "SENDs replayed after this takeover are recognized only once "
                "their originals are read");
        B.audit_loading = false;
        free(o);
        return;
    }
    aud.running = true;
}

/* The reader uses the store: it must be gone before mqs_close. */
static void audit_join(void)
{
    if (aud.running) {
        pthread_join(aud.th, NULL);
        aud.running = false;
    }
}

static void audit_apply(op *o, bool live)
{
    audit_join(); /* it posted this and returned */
    if (live) {
        B.audit_loading = false;
        if (o->rc == MQS_ENOTSUP)
            log_msg(LOG_WARN, "recovery: the store's backend cannot list its "
                    "newest messages (ABI before 2.3): SENDs replayed after "
                    "this takeover are recognized only once their originals "
                    "are read: %s", o->err ? o->err : "");
        else if (o->rc)
            log_msg(LOG_WARN, "recovery: reading the newest messages' ids "
                    "failed (%s): %s; replays of them may be stored twice",
                    mqs_errname(o->rc), o->err ? o->err : "");
        size_t off = 0;
        for (size_t i = 0; i < o->n_hdrs; i++) {
            uint32_t n;
            memcpy(&n, o->hdrs.p + off, sizeof n);
            off += sizeof n;
            audit_note_hdrs(o->hdrs.p + off, n);
            origin_note_hdrs(o->hdrs.p + off, n);
            off += n;
        }
        log_msg(LOG_INFO, "recovery: the newest %zu stored messages' ids read "
                "into the duplicate audits in %" PRId64 " ms", o->n_hdrs,
                mono_ms() - o->id);
        store_resume();
    }
    o->rc = 0;
    buf_free(&o->hdrs);
}

/* ------------------------------------------------------------------------
 * Master / standby transitions
 * ---------------------------------------------------------------------- */

static int exit_code;
static bool stop_now;
static int64_t stop_deadline;

static void log_waiting(void)
{
    log_msg(LOG_INFO, "waiting for the store lock (cluster %s)", B.cluster);
}

static void drop_state(void)
{
    bridge_stop_all(); /* they reconnect to whoever is master next */
    close_listener();
    conns_close_all("the broker is no longer master");
    dests_free_all();
    audit_clear(); /* the next term rebuilds it from the store */
    origin_clear();
    B.audit_loading = false; /* its OP_AUDIT, of the old term, is ignored */
    /* Connections and destinations are gone; writes of the old term in
     * flight release nothing (op_finish), so the account starts over. */
    B.mem_used = 0;
    B.mem_over = false;
    B.master = false;
    B.epoch++; /* ops still in flight belong to the old term */
}

static void on_master(int64_t token)
{
    if (B.stopping)
        return; /* mqs_close releases it */
    if (token < 0) { /* the HA thread found no usable lock */
        exit_code = 1;
        stop_now = true;
        B.stopping = true;
        return;
    }
    B.token = token;
    B.master = true;
    int64_t t0 = mono_ms();
    rctx r = {0, 0, 0};
    int rc = recover(&r);
    if (!rc) {
        dmarks_load();      /* before the prune below may drop idle ones */
        audit_load_marks(); /* consumed messages' ids; audit_start adds more */
        dmarks_refresh();
    }
    if (rc) {
        log_msg(LOG_ERROR, "recovery from the store failed (%s): %s; "
                "releasing the lock and retrying", mqs_errname(rc),
                mqs_errmsg(B.store));
        drop_state();
        mqs_lock_release(B.store);
        ha_request(1000);
        return;
    }
    if (atomic_load(&lost_token) == token)
        return; /* lost during recovery; its OP_LOST cleans up */
    char err[256];
    if (open_listener(err, sizeof err)) {
        log_msg(LOG_ERROR, "%s; releasing the store lock and exiting", err);
        drop_state();
        exit_code = 1;
        stop_now = true;
        B.stopping = true;
        return;
    }
    audit_start();
    log_msg(LOG_INFO, "master (token %" PRId64 "): recovered %zu queues "
            "and %zu durable subscriptions in %" PRId64 " ms (messages are "
            "read in pages), listening on %s", token, r.queues, r.subs,
            mono_ms() - t0, B.cfg.listen);
    if (origin_count())
        log_msg(LOG_INFO, "recovery: %zu message origins (mq-origin) "
                "remembered for the network audit", origin_count());
    bridge_start_all(); /* their local connection needs the listener */
}

static void on_lost(int64_t token, const char *reason)
{
    if (!B.master || token != B.token)
        return; /* a term already handled, or a release at shutdown */
    size_t n = B.nconns;
    drop_state();
    log_msg(LOG_WARN, "lost the store lock (token %" PRId64 "): %s; closed "
            "%zu connections and dropped in-memory state", token, reason, n);
    if (!B.stopping) {
        log_waiting();
        ha_request(0);
    }
}

static void txn_free_stale(stx *x)
{
    /* Its destinations belong to a dropped term: touch only messages. */
    while (!q_empty(&x->items)) {
        txitem *it = container_of(x->items.next, txitem, link);
        q_remove(&it->link);
        if (it->kind == TX_SEND)
            msg_unref(it->m);
        free(it);
    }
    free(x->name);
    free(x);
}

/* ------------------------------------------------------------------------
 * Room in the store's write queue
 *
 * An async submit waits while the store's queue holds more than
 * max_pending_bytes (and more than nothing). The loop keeps its own
 * submitted-and-not-completed bytes (B.store_bytes, an upper bound of what
 * is queued) so that the next submit always fits: a frame that would not
 * fit is left unread and its connection waits here, while every other
 * connection is served. That covers a database outage: producers wait,
 * CONNECT, heart-beats, ACKs and ERRORs go on.
 * ---------------------------------------------------------------------- */

bool store_room(size_t need)
{
    return B.store_bytes == 0 || B.store_bytes + need <= B.store_pending_max;
}

void store_pause(conn *c)
{
    if (c->store_paused)
        return;
    c->store_paused = true;
    q_push_back(&B.store_paused, &c->slink);
    log_msg(LOG_DEBUG, "conn %" PRIu64 ": paused: %zu bytes queued for the "
            "store (max_pending_bytes %zu)", c->serial, B.store_bytes,
            B.store_pending_max);
}

void store_unpause(conn *c)
{
    if (!c->store_paused)
        return;
    q_remove(&c->slink);
    c->store_paused = false;
}

void store_done(size_t n)
{
    B.store_bytes -= n;
}

/* After completions: with a quarter of the room free (or none in flight)
 * every waiting connection reads on; one whose frame still does not fit
 * waits again. */
void store_resume(void)
{
    if (q_empty(&B.store_paused) || B.audit_loading ||
        (B.store_bytes &&
         B.store_bytes > B.store_pending_max - B.store_pending_max / 4))
        return;
    qlink list;
    q_init(&list);
    while (!q_empty(&B.store_paused)) {
        qlink *l = B.store_paused.next;
        q_remove(l);
        q_push_back(&list, l);
    }
    while (!q_empty(&list)) {
        conn *c = container_of(list.next, conn, slink);
        q_remove(&c->slink);
        c->store_paused = false;
        conn_process_input(c); /* may pause it again */
    }
}

static void op_finish(op *o)
{
    bool live = o->epoch == B.epoch;
    if (o->store_bytes) {
        store_done(o->store_bytes);
        o->store_bytes = 0;
    }
    switch (o->type) {
    case OP_SEND:
        if (live && o->producer)
            audit_done(o->producer, o->pseq, o, o->rc);
        if (live && o->origin)
            origin_done(o->origin, o, o->rc);
        /* Replays of it answer as it did. */
        for (op *d = o->dups, *next; d; d = next) {
            next = d->next_dup;
            if (o->rc) {
                d->rc = o->rc;
                d->err = xstrdup(o->err ? o->err : mqs_strerror(o->rc));
            }
            op_finish(d);
        }
        if (live) {
            dest_release(o->d, o->m->size);
            if (!o->rc) {
                o->m->id = o->id;
                dest_publish(o->d, o->m, o->seq);
            }
            dest_unref(o->d);
        }
        msg_unref(o->m);
        break;
    case OP_ACK:
    case OP_DUP:
        break;
    case OP_AUTH:
        if (o->c && o->c->state != CS_DEAD)
            stomp_connect_done(o->c, o->rc);
        o->rc = 0; /* its answer went out as CONNECTED or ERROR */
        break;
    case OP_TXN:
        if (live && !o->rc)
            txn_apply(o->c, o->x, o->ids, o->n_ids, o->seq);
        if (live)
            txn_free(o->x);
        else
            txn_free_stale(o->x);
        break;
    case OP_SUBCREATE:
        stomp_sub_created(o, live);
        break;
    case OP_SUBREMOVE:
        stomp_sub_removed(o, live);
        break;
    case OP_PAGE:
        page_apply(o, live);
        break;
    case OP_AUDIT:
        audit_apply(o, live);
        break;
    case OP_DMARK:
        dmark_apply(o, live);
        break;
    case OP_MASTER:
        on_master(o->token);
        break;
    case OP_LOST:
        on_lost(o->token, o->reason);
        break;
    }
    if (o->c) {
        conn *c = o->c;
        c->inflight--;
        if (o->t)
            ticket_done(c, o->t, o->rc, o->err);
        if (c->state == CS_DEAD && c->inflight == 0)
            conn_free_zombie(c);
    }
    free(o->err);
    free(o->ids);
    free(o->reason);
    free(o->producer);
    free(o->origin);
    page_op_free(o);
    free(o);
}

static void drain_ops(void)
{
    uint64_t v;
    (void)!read(qfd, &v, sizeof v);
    for (;;) {
        pthread_mutex_lock(&q_mu);
        op *list = q_head;
        q_head = q_tail = NULL;
        pthread_mutex_unlock(&q_mu);
        if (!list)
            return;
        while (list) {
            op *o = list;
            list = o->next;
            op_finish(o);
        }
    }
}

/* ------------------------------------------------------------------------
 * Loop
 * ---------------------------------------------------------------------- */

static void begin_stop(const char *why)
{
    if (B.stopping) {
        log_msg(LOG_WARN, "%s again: stopping now", why);
        stop_now = true;
        return;
    }
    B.stopping = true;
    log_msg(LOG_INFO, "%s: shutting down (no new connections, finishing "
            "store writes)", why);
    bridge_stop_all();
    close_listener();
    stop_deadline = mono_ms() + B.cfg.shutdown_timeout_ms;
    /* Read no more frames; receipts of writes in flight still go out. */
    for (qlink *l = B.conns.next; l != &B.conns;) {
        conn *c = container_of(l, conn, link);
        l = l->next;
        if (c->state == CS_CONNECTING) {
            conn_close(c, "broker shutting down");
            continue;
        }
        c->disconnecting = true;
        conn_process_input(c); /* only updates its epoll mask now */
    }
}

static bool drained(void)
{
    for (qlink *l = B.conns.next; l != &B.conns; l = l->next) {
        conn *c = container_of(l, conn, link);
        if (c->inflight || buf_used(&c->out))
            return false;
    }
    return true;
}

static bool work_pending(void)
{
    return !q_empty(&B.flush_list) || !q_empty(&B.dirty_boxes) ||
           !q_empty(&B.resume_dests) || !q_empty(&B.demand_dests) ||
           !q_empty(&B.later_boxes);
}

/* Library log lines: the same line repeated (a standby retrying an
 * unreachable database) drops to debug after the first. */
static void store_log(void *ud, mqs_log_level level, const char *text)
{
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static char last[512];
    static int64_t last_ms;
    int lvl = (int)level;
    int64_t now = mono_ms();
    pthread_mutex_lock(&mu);
    if (!strncmp(last, text, sizeof last - 1) && now - last_ms < 60000)
        lvl = LOG_DEBUG;
    else {
        snprintf(last, sizeof last, "%s", text);
        last_ms = now;
    }
    pthread_mutex_unlock(&mu);
    log_msg(lvl, "store: %s", text);
}

static int setup(const config *cfg)
{
    memset(&B, 0, sizeof B);
    B.cfg = *cfg;
    B.lfd = -1;
    B.ep = -1;
    B.epoch = 1;
    q_init(&B.conns);
    q_init(&B.zombies);
    q_init(&B.flush_list);
    q_init(&B.dirty_boxes);
    q_init(&B.resume_dests);
    q_init(&B.gc_dests);
    q_init(&B.store_paused);
    q_init(&B.dests);
    B.cluster = config_store_cluster(cfg->store);
    q_init(&B.demand_conns);
    q_init(&B.demand_dests);
    q_init(&B.later_boxes);

    /* Signals arrive through signalfd; block them before any thread
     * (the store's included) starts, so they inherit the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    fit_open_files();
    char aerr[512];
    if (auth_init(cfg, aerr, sizeof aerr) || tls_init(cfg, aerr, sizeof aerr) ||
        network_init(aerr, sizeof aerr) ||
        bridge_init(cfg, B.name, atoi(cfg->listen_port), B.bridge_token, aerr,
                    sizeof aerr)) {
        log_msg(LOG_ERROR, "%s", aerr);
        return -1;
    }

    B.ep = epoll_create1(EPOLL_CLOEXEC);
    sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    qfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (B.ep < 0 || sfd < 0 || qfd < 0) {
        log_msg(LOG_ERROR, "cannot set up the event loop: %s",
                strerror(errno));
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &h_signal};
    epoll_ctl(B.ep, EPOLL_CTL_ADD, sfd, &ev);
    ev.data.ptr = &h_queue;
    epoll_ctl(B.ep, EPOLL_CTL_ADD, qfd, &ev);

    mqs_open_opts oo = {store_log, NULL,
                        g_log_level >= LOG_DEBUG ? MQS_LOG_DEBUG
                                                 : MQS_LOG_WARN};
    int rc = mqs_open(cfg->store, &oo, &B.store);
    if (rc) {
        log_msg(LOG_ERROR, "cannot open the store: %s", mqs_errmsg(NULL));
        return -1;
    }
    B.store_max = mqs_max_message_size(B.store);
    B.store_pending_max = mqs_max_pending_bytes(B.store);
    log_msg(LOG_INFO, "mqbroker %s: store %s, STOMP on %s when master",
            MQBROKER_VERSION, mqs_uri(B.store), cfg->listen);
    if (pthread_create(&ha.th, NULL, ha_main, NULL)) {
        log_msg(LOG_ERROR, "cannot start the HA thread");
        return -1;
    }
    ha.started = true;
    log_waiting();
    ha_request(0);
    return 0;
}

/* A clean stop tells each client where to go (ERROR mq-reconnect-to:
 * the advertised brokers other than this one), so a failover client
 * moves at once instead of finding out by its own list. */
static void send_reconnect_to(void)
{
    if (!B.cfg.advertise || stop_now)
        return;
    buf to = {0};
    char self[300];
    snprintf(self, sizeof self, "tcp://%s", B.cfg.listen);
    for (const char *p = B.cfg.advertise; *p;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n != strlen(self) || strncmp(p, self, n)) {
            if (to.len)
                buf_addc(&to, ',');
            buf_add(&to, p, n);
        }
        p += n + (end != NULL);
    }
    buf_addc(&to, '\0');
    if (to.len > 1)
        for (qlink *l = B.conns.next; l != &B.conns; l = l->next) {
            conn *c = container_of(l, conn, link);
            if (c->state == CS_OPEN)
                conn_error_hdr(c, "mq-reconnect-to", to.p,
                               "broker shutting down",
                               "this broker is stopping; reconnect to %s",
                               to.p);
        }
    buf_free(&to);
    conns_flush();
}

static void teardown(void)
{
    B.stopping = true; /* an OP_MASTER still queued must not recover */
    bridge_stop_all();
    close_listener();
    send_reconnect_to();
    conns_close_all("broker shutting down");
    ha_stop();
    /* Their local connections are closed now: nothing waits on us. */
    bridge_free_all();
    auth_free(); /* its last answers are drained below */
    dests_free_all();
    B.master = false;
    B.epoch++;
    /* Finishes queued writes, then releases the lock. Completions still
     * arrive through the op list, drained below. */
    audit_join();
    if (B.store) {
        mqs_close(B.store);
        B.store = NULL;
    }
    if (qfd >= 0)
        drain_ops();
    while (!q_empty(&B.zombies))
        conn_free_zombie(container_of(B.zombies.next, conn, link));
    dests_free_all();
    audit_clear();
    origin_clear();
    idmap_free(&B.per_ip);
    tls_free_ctx();
    if (B.ep >= 0)
        close(B.ep);
    if (sfd >= 0)
        close(sfd);
    if (qfd >= 0)
        close(qfd);
    free(B.cluster);
}

int broker_run(const config *cfg)
{
    if (setup(cfg)) {
        teardown();
        return 1;
    }
    int64_t last_tick = mono_ms();
    struct epoll_event evs[64];
    while (!stop_now) {
        int timeout = work_pending() ? 0
                      : (B.nconns || B.stopping || B.accept_paused) ? TICK_MS
                                                                    : -1;
        int n = epoll_wait(B.ep, evs, 64, timeout);
        if (n < 0 && errno != EINTR) {
            log_msg(LOG_ERROR, "epoll_wait: %s", strerror(errno));
            exit_code = 1;
            break;
        }
        bool ops = false, sig = false;
        for (int i = 0; i < n; i++) {
            int type = *(int *)evs[i].data.ptr;
            if (type == H_CONN)
                conn_event(evs[i].data.ptr, evs[i].events);
            else if (type == H_LISTEN && B.lfd >= 0)
                conn_accept(B.lfd);
            else if (type == H_QUEUE)
                ops = true;
            else if (type == H_SIGNAL)
                sig = true;
        }
        /* After the batch: these may close any connection. */
        if (ops) {
            drain_ops();
            store_resume();
        }
        if (sig) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
                begin_stop(si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
        }
        /* Deferred work; flushing may make room for more dispatch. */
        for (int round = 0; round < 4; round++) {
            size_t w = dests_resume();
            w += boxes_dispatch();
            w += network_demand_flush(); /* counts of this turn, once */
            w += conns_flush();
            if (!w)
                break;
        }
        dests_gc();
        int64_t now = mono_ms();
        listener_resume(now);
        if (now - last_tick >= TICK_MS) {
            conns_tick(now);
            pages_tick(now);
            last_tick = now;
        }
        if (B.stopping && (drained() || now >= stop_deadline))
            break;
    }
    teardown();
    log_msg(LOG_INFO, "stopped");
    return exit_code;
}
