/* internal.h - libmqclient's private structures, shared by its .c files.
 *
 * Threads and locking: one mutex per connection (c->mu) guards everything
 * in mqc_conn. The I/O thread holds it except while in poll(); application
 * threads hold it for the duration of a call except while waiting on c->cv.
 * Socket writes are non-blocking, so whoever holds the lock may flush.
 * Callbacks never run under the lock: they are queued as events for the
 * dispatch thread. */
#ifndef MQCLIENT_INTERNAL_H
#define MQCLIENT_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <netdb.h>

#include <mqclient/mqclient.h>

#include "frame.h"
#include "uri.h"
#include "util.h"

/* ---- errors (errors.c) --------------------------------------------------- */

/* Record the calling thread's message for handle h (a conn, or NULL for
 * mqc_open) and return code. */
int mqc__err(const void *h, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int mqc__verr(const void *h, int code, const char *fmt, va_list ap);
void mqc__err_clear(const void *h);

/* ---- one TCP + STOMP connection to one broker (transport.c) ------------- */

typedef enum link_state {
    L_NONE = 0, /* no socket */
    L_TCP,      /* non-blocking connect() in progress */
    L_TLS,      /* ssl://: TLS handshake in progress */
    L_STOMP,    /* CONNECT sent, waiting for CONNECTED */
    L_READY     /* CONNECTED received */
} link_state;

typedef struct mqc_link {
    link_state st;
    int fd;
    char *uri; /* "tcp://h:p" */
    char *host;
    int port;
    int connect_timeout_ms;
    int hb_send_ms, hb_recv_ms; /* wanted (from the URI) */
    size_t max_frame;
    struct addrinfo *ai, *ai_cur;
    int64_t deadline;          /* connect + CONNECTED must finish by then */
    int64_t hb_out, hb_in;     /* negotiated intervals, 0 = none */
    int64_t last_rx, last_tx;
    frame_parser parser;
    buf in, out;
    char err[512]; /* why it failed */
    int err_code;  /* MQC_ECONN / MQC_EPROTO / MQC_EBROKER / MQC_ETOOBIG */
    /* ssl:// */
    bool tls;
    char *tls_ca, *tls_cert, *tls_key;
    bool tls_verify_host;
    struct ssl_ctx_st *tls_ctx;
    struct ssl_st *ssl;
    bool tls_want_write; /* OpenSSL waits for the socket to take bytes */
} mqc_link;

/* ---- pending operations (send.c) ----------------------------------------- */

typedef enum op_kind {
    OP_SEND = 1,
    OP_SUBSCRIBE,
    OP_UNSUBSCRIBE,
    OP_COMMIT,
    OP_DISCONNECT
} op_kind;

/* A frame waiting for its RECEIPT. Kept in c->ops (creation order) and in
 * c->op_by_receipt. A sync op is freed by its waiter, an async one by the
 * code that completes it. */
typedef struct mqc_op {
    qlink link;
    op_kind kind;
    uint64_t receipt;
    buf frame;      /* the encoded frame, for (re)sending */
    bool async;
    bool resend;    /* write again on a new connection (not SUBSCRIBE: the
                       subscription list re-subscribes) */
    uint64_t written_gen; /* connection generation it was written on, 0 no */
    bool done;
    int status;
    char *errmsg;
    int64_t created;
    mqc_send_cb cb;
    void *ud;
} mqc_op;

/* ---- subscriptions, messages (sub.c) ------------------------------------- */

struct mqc_msg {
    qlink link;      /* in a subscription's pull queue */
    mqc_conn *conn;  /* holds a reference: see mqc__conn_unref */
    uint64_t sub_id;
    uint64_t gen;    /* connection generation it arrived on */
    mqc_ack_mode mode;
    mqc_header *headers;
    size_t nheaders;
    char *body;
    size_t body_len;
    const char *dest, *id, *ack; /* point into headers */
    bool broker_redelivered;
    int redeliveries;
};

struct mqc_sub {
    qlink link; /* c->subs */
    mqc_conn *conn;
    uint64_t id;
    char *dest;
    mqc_ack_mode mode;
    mqc_header *headers; /* extra headers, copied */
    size_t nheaders;
    char *durable_name;
    mqc_msg_cb on_message;
    void *ud;
    uint64_t sub_receipt; /* receipt of its SUBSCRIBE while pending, else 0 */
    qlink queue;          /* pulled messages */
    size_t queued;
    pthread_cond_t cv;    /* a message arrived (pull) */
    bool gone;            /* unsubscribed: receivers leave */
};

/* ---- dispatch events (conn.c) -------------------------------------------- */

typedef enum ev_type {
    EV_MSG = 1,      /* deliver msg to sub_id's on_message */
    EV_SEND_DONE,    /* async send completion */
    EV_INTERRUPTED,
    EV_RESUMED,
    EV_EXCEPTION,
    EV_COMMAND,
    EV_LOG
} ev_type;

typedef struct mqc_ev {
    qlink link;
    ev_type type;
    int code;
    char *text; /* broker URI, message, log line */
    mqc_msg *msg;
    uint64_t sub_id;
    mqc_send_cb cb;
    void *ud;
    mqc_frame frame; /* EV_COMMAND: a copy (headers and body owned) */
    int64_t due;     /* redelivery timers: when */
} mqc_ev;

typedef struct mqc_txn {
    qlink link;
    char id[64];
    uint64_t gen;
    bool lost;
} mqc_txn;

typedef enum conn_state {
    C_CONNECTING = 0,
    C_CONNECTED,
    C_FAILED, /* gave up / tcp:// lost: for good */
} conn_state;

struct mqc_conn {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* any state change: op done, connected, room */
    atomic_int refs;   /* 1 for the application + 1 per live mqc_msg */

    mqc_config cfg;
    char *login, *passcode, *vhost, *client_id;
    mqc_header *connect_headers; /* opts.connect_headers, copied */
    size_t nconnect_headers;
    mqc_listener listener;
    mqc_log_fn log;
    void *log_ud;
    mqc_log_level log_level;

    char producer[33];
    uint64_t next_seq, next_receipt, next_sub, next_txn;

    conn_state state;
    int fail_code;      /* C_FAILED: MQC_EGAVEUP / MQC_ECONN / ... */
    char fail_msg[1024];
    bool closing;       /* mqc_close started */
    bool disconnecting; /* DISCONNECT sent: a closed socket is expected */
    int waiters;        /* threads blocked in mqc__cv_wait: mqc_close lets
                           them leave before it frees anything */
    bool closed;        /* resources freed (only refs keep the struct) */
    bool ever_connected;
    bool interrupted;   /* `interrupted` sent, `resumed` owed */
    uint64_t gen;       /* +1 per established connection */
    char current[300];  /* broker connected to, "" if none */
    char last_lost[300]; /* the broker just lost: tried last */
    char *reconnect_to; /* asked by ERROR mq-reconnect-to: tried first */

    /* I/O thread */
    pthread_t io_tid;
    bool io_started, io_stop;
    int wake_fd;        /* eventfd */
    mqc_link primary, spare;
    int64_t spare_next;  /* next time to try a spare */
    size_t spare_rr;     /* round robin over spare candidates */
    /* reconnect loop */
    mqc_server *order;    /* brokers of the pass being tried (copies) */
    size_t norder, pos;
    bool in_pass;
    int failures;        /* failed passes since the last success */
    int64_t next_try;    /* when the next pass may start */
    int64_t lost_at;     /* when the last connection was lost (or open) */
    bool url_warned;     /* updateURIsURL failure logged (once per streak) */
    char last_err[512];

    /* operations */
    qlink ops;
    idmap op_by_receipt;
    size_t async_ops, async_bytes; /* outstanding async sends */
    size_t async_cb_pending;       /* completions not yet run */
    qlink subs;
    qlink txns;

    /* dispatch thread */
    pthread_t disp_tid;
    bool disp_started, disp_stop;
    pthread_cond_t disp_cv;
    qlink events;
    qlink timers; /* redeliveries, sorted by due */

    mqc_stats stats;
};

/* conn.c */
void mqc__wake(mqc_conn *c);
void mqc__emit(mqc_conn *c, mqc_ev *e); /* under c->mu */
mqc_ev *mqc__ev_new(ev_type t);
void mqc__ev_free(mqc_ev *e);
void mqc__log(mqc_conn *c, mqc_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void mqc__exception(mqc_conn *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void mqc__conn_unref(mqc_conn *c);
bool mqc__on_dispatch_thread(mqc_conn *c);
/* Wait on c->cv until deadline (ms, CLOCK_MONOTONIC; -1 = none). false on
 * timeout. */
bool mqc__cv_wait(mqc_conn *c, pthread_cond_t *cv, int64_t deadline);
int64_t mqc__deadline(int timeout_ms); /* -1 stays -1 */

/* Check opts->connect_headers (what names the caller for the message):
 * 0 or MQC_EINVAL with the thread's message set. */
int mqc__check_connect_headers(const mqc_conn_opts *opts, const char *what);

/* For the pool (pool.c): c failed for good (gave up reconnecting, a plain
 * tcp:// connection lost, or closed). */
bool mqc__conn_broken(mqc_conn *c);

/* Wait (under c->mu) until connected, up to the URI's timeout. 0 or an
 * MQC_E* code with the message set. what names the caller's operation. */
int mqc__wait_ready(mqc_conn *c, const char *what);

/* transport.c */
void mqc__link_init(mqc_link *l);
/* Start connecting l to server s (non-blocking). false: failed at once
 * (l->err says why). */
bool mqc__link_start(mqc_conn *c, mqc_link *l, const mqc_server *s);
void mqc__link_close(mqc_link *l);
/* Write what can be written now; false if the socket failed. */
bool mqc__link_flush(mqc_link *l);
/* Append bytes to the primary link's output and try to send them. */
void mqc__write(mqc_conn *c, const void *p, size_t n);
/* Handle readable/writable/timeouts for l. Returns false when l failed
 * (l->err set). Calls mqc__on_frame for READY links. */
bool mqc__link_service(mqc_conn *c, mqc_link *l, short revents, int64_t now);
/* Encode frame helpers. */
void mqc__put(buf *b, const char *name, const char *value);

/* failover.c */
void *mqc__io_main(void *arg);
/* A frame arrived on the primary link (READY): act on it. false: the link
 * must be dropped (l->err set). */
bool mqc__on_frame(mqc_conn *c, mqc_link *l, const frame *f);

/* send.c */
mqc_op *mqc__op_new(mqc_conn *c, op_kind k);
/* Register op and write it if connected. */
void mqc__op_submit(mqc_conn *c, mqc_op *op);
void mqc__op_complete(mqc_conn *c, mqc_op *op, int status, const char *msg);
void mqc__op_free(mqc_op *op);
/* Wait for a sync op; handles the timeout while disconnected. Frees op.
 * Returns its status (message set for c). */
int mqc__op_wait(mqc_conn *c, mqc_op *op, const char *what);
/* Connection lost: decide each op's fate. */
void mqc__ops_on_loss(mqc_conn *c, bool will_reconnect);
/* New connection: write the ops that must go again. */
void mqc__ops_on_connect(mqc_conn *c);
void mqc__ops_fail_all(mqc_conn *c, int code, const char *msg);
void mqc__ops_check_timeouts(mqc_conn *c, int64_t now);
void mqc__txns_on_loss(mqc_conn *c);
void mqc__txns_free(mqc_conn *c);
void mqc__on_receipt(mqc_conn *c, const char *id, int status,
                     const char *msg);
/* Transactions with c->mu held (the DLQ move uses them). */
int mqc__begin_locked(mqc_conn *c, char id[64]);
int mqc__commit_locked(mqc_conn *c, const char *txid, const char *what);
int mqc__abort_locked(mqc_conn *c, const char *txid, const char *what);
/* 0: txid is live; 1: lost in a failover (skip quietly); <0: unknown. */
int mqc__txn_check(mqc_conn *c, const char *txid, const char *what);
/* A SEND inside transaction o->txn, no receipt. */
int mqc__send_txn_locked(mqc_conn *c, const char *what, const char *dest,
                         const void *body, size_t len, const mqc_send_opts *o);

/* sub.c */
void mqc__subs_on_connect(mqc_conn *c);
void mqc__on_message(mqc_conn *c, const frame *f);
void mqc__subs_free(mqc_conn *c);
/* Connection lost: drop client-ack messages not yet handed over. */
void mqc__subs_on_loss(mqc_conn *c);
/* The dispatch thread: deliver an EV_MSG or a due redelivery. */
void mqc__deliver(mqc_conn *c, mqc_ev *e);

#endif
