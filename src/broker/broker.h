/* broker.h - mqbroker internals shared by dest.c, conn.c, stomp.c and
 * broker.c. One broker per process: its state is the global B.
 *
 * Threads: everything here runs on the event-loop thread, except the
 * store's completion callbacks and the HA thread, which only ever hand an
 * `op` to the loop through broker_post(). */
#ifndef MQBROKER_BROKER_H
#define MQBROKER_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <mqstore/mqstore.h>

#include "config.h"
#include "frame.h"
#include "util.h"

#ifndef MQBROKER_VERSION
#define MQBROKER_VERSION "unknown"
#endif

#define NPRIO 10 /* STOMP priority header 0..9, like the store */

/* A non-zero 64-bit key for a string (FNV-1a), for idmap lookups by name;
 * callers compare the string itself to rule out collisions. */
static inline uint64_t str_key(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h ? h : 1;
}

typedef struct dest dest;
typedef struct box box;
typedef struct sub sub;
typedef struct conn conn;

/* A message body with its user headers; shared by every entry holding it. */
typedef struct msg {
    int refs;
    int64_t id;   /* store id; 0 when not stored */
    uint64_t seq; /* arrival order in this broker (for redelivery order) */
    int64_t term; /* fencing token of the term it arrived in */
    int priority;
    bool persistent;
    int64_t expires_ms; /* absolute Unix ms, 0 = never */
    size_t size;        /* bytes it accounts for */
    char *hdrs;         /* "name\0value\0" pairs (also the stored form) */
    size_t hdrs_len;
    char *body;
    size_t body_len;
} msg;

/* A message waiting in a box (pending) or delivered and not yet acked. */
typedef struct entry {
    qlink link; /* box->pending[prio] or sub->unacked */
    msg *m;
    box *b;
    sub *s;       /* set while delivered and unacked */
    uint64_t tag; /* its ack id on that connection */
    bool redelivered;
    uint64_t mid_key; /* str_key(message-id) in s->c->mids, while delivered */
    uint32_t nacks; /* NACKs so far (from the store's count at recovery) */
} entry;

typedef enum box_type {
    BOX_QUEUE,   /* the one box of a queue; any number of consumers */
    BOX_DURABLE, /* a durable topic subscription; 0 or 1 consumer */
    BOX_TOPIC    /* a live topic subscription; exactly its one consumer */
} box_type;

/* Messages waiting for a set of consumers. */
struct box {
    qlink dlink; /* dest->boxes, for topic boxes */
    dest *d;
    box_type type;
    int64_t sub_id; /* durable: the store's subscription id */
    char *name;     /* durable: "client-id:name" */
    uint64_t created_seq;
    qlink pending[NPRIO];
    size_t npending;
    size_t nentries;  /* pending + delivered */
    qlink consumers;  /* sub->blink; the front is served first */
    size_t nconsumers;
    size_t nnet;      /* of them network subscriptions (network.c) */
    /* Pending entries no network subscription of the box may take while
     * it has no local consumer (path/TTL): set aside, so they are not
     * looked at again until the consumers change. Counted in npending. */
    qlink parked[NPRIO];
    size_t nparked;
    bool dirty;
    bool removing; /* durable: its store removal is in flight */
    qlink dirty_link;
    /* Paging (dest.c, docs/broker.md "Paging"): a queue or durable box
     * keeps a window of its stored messages in memory. While `paged`, the
     * store holds pending messages of this box that memory does not: all
     * those strictly after (pg_prio, pg_id) in delivery order, and every
     * stored entry in memory lies at or before it. Page reads go through
     * the store's writer in order with the writes (mqs_page_async), which
     * is what makes the publish rule in dest_publish exact. */
    size_t bytes;     /* entries in memory (pending and delivered) */
    size_t dbytes;    /* of them delivered and unacked (bounded by prefetch:
                         never paged out, never a reason not to read) */
    bool paged;
    bool pg_reading;  /* a page read is in flight */
    int pg_prio;      /* NPRIO = before everything */
    int64_t pg_id;
    int64_t pg_retry_ms; /* a failed read is retried from then (mono) */
    /* Dispatch marks (dest.c "Dispatch marks"), per priority: the store
     * knows that no stored message above hmark was delivered; loaded: what
     * the previous master left (messages up to it may have been
     * delivered); disp_max: the highest id delivered in this term. */
    int64_t hmark[NPRIO], hloaded[NPRIO], disp_max[NPRIO];
    uint16_t hmark_busy; /* bit p: a mark for priority p is being stored */
};

struct dest {
    qlink link;   /* B.dests */
    dest *hnext;  /* hash chain */
    char *name;   /* "/queue/x" or "/topic/x" */
    const char *store_name; /* name without its prefix */
    mqs_kind kind;
    box qbox;     /* queues only */
    qlink boxes;  /* topics: subscription boxes */
    size_t ndurable;
    size_t bytes; /* message bytes held in memory (producer flow control) */
    size_t refs;  /* in-flight store writes and transaction items */
    qlink paused; /* conn->plink: producers waiting for bytes to drop */
    bool in_resume, in_gc;
    qlink resume_link, gc_link;
    /* Network of brokers: consumer counts changed, /mq/demand subscribers
     * hear of it at the end of the loop turn (B.demand_dests). */
    bool demand_dirty;
    qlink demand_link;
    const net_policy *policy; /* its --network-policy, once looked up */
    bool policy_known;
};

enum ack_mode { ACK_AUTO, ACK_CLIENT, ACK_INDIVIDUAL };

struct sub {
    qlink clink; /* conn->subs */
    qlink blink; /* box->consumers */
    conn *c;
    box *b;
    char *id;
    int ack;
    size_t prefetch;
    qlink unacked; /* entries in delivery order */
    size_t nunacked;
    char *net_peer;   /* network subscription: the broker it feeds */
    unsigned net_ttl; /* its mq-network-ttl */
};

/* Ordered reply slot: RECEIPTs (and the ERROR of a failed store write) go
 * out in frame order, each once its store write committed. */
typedef struct ticket {
    qlink link;
    bool done;
    bool disconnect; /* DISCONNECT: close after this receipt */
    int rc;
    char *receipt;
    char *error;
    const char *what; /* command, for the error */
} ticket;

/* A STOMP transaction. */
typedef enum txkind { TX_SEND, TX_ACK, TX_NACK } txkind;
typedef struct txitem {
    qlink link;
    txkind kind;
    msg *m;      /* SEND */
    dest *d;     /* SEND (holds a ref) */
    bool stored; /* SEND went into the mqs_txn */
    uint64_t tag; /* ACK/NACK */
} txitem;
typedef struct stx {
    qlink link; /* conn->txns */
    char *name;
    qlink items;
    size_t bytes;
} stx;

enum conn_state {
    CS_CONNECTING, /* waiting for CONNECT */
    CS_OPEN,
    CS_CLOSING,    /* ERROR or DISCONNECT sent: flush, then close */
    CS_DEAD        /* socket closed; waits for its store writes to finish */
};

/* Tags telling epoll handles apart (first member of each handle). */
enum { H_CONN = 1, H_LISTEN, H_SIGNAL, H_QUEUE };

struct conn {
    int htype; /* H_CONN */
    qlink link; /* B.conns or B.zombies */
    uint64_t serial;
    int fd;
    char peer[64];
    int state;
    bool disconnecting; /* DISCONNECT read: no more frames */
    bool lingering;     /* closing: our side shut down, draining input */
    int version;
    char *client_id;
    int64_t created_ms, last_rx_ms, last_tx_ms, closing_ms;
    int64_t hb_send_ms, hb_recv_ms; /* negotiated; 0 = off */
    buf in, out;
    frame_parser parser;
    uint32_t events; /* epoll mask armed */
    bool flush_queued;
    qlink flush_link;
    bool out_full;
    int64_t full_since;
    dest *paused_on;
    qlink plink;
    qlink subs;
    size_t nsubs;
    size_t nunacked;
    idmap acks; /* tag -> entry */
    idmap mids; /* str_key(message-id) -> entry, for ACKs by message-id */
    idmap sub_ids; /* str_key(subscription id) -> sub */
    uint64_t next_tag;
    qlink txns;
    size_t ntxns;
    qlink tickets;
    size_t inflight; /* store writes not completed yet */
    char *user;         /* logged-in user; NULL = anonymous */
    bool authenticating; /* CONNECT waits for the verifier: read nothing */
    bool store_wait; /* a SUBSCRIBE/UNSUBSCRIBE waits for the store: read
                        nothing (its frames depend on the answer) */
    /* Its next frame would queue more for the store's writer than there
     * is room for (B.store_bytes): not read until writes complete, so the
     * loop never waits in a submit (stomp.c store_room). */
    bool store_paused;
    qlink slink; /* B.store_paused */
    bool connect_accept; /* CONNECT had accept-version (CONNECTED says it) */
    uint64_t ip_key;     /* its entry in B.per_ip */
    int64_t frame_since_ms; /* a partial frame is buffered since; 0 = none */
    bool read_eof;       /* the client half-closed: answer, then close */
    size_t txn_bytes;    /* held by all its open transactions */
    struct ssl_st *ssl;  /* TLS session, or NULL on a plain listener */
    size_t in_acct, out_acct; /* buffer bytes counted in B.mem_used */
    bool tls_read_wants_write; /* OpenSSL must send before we can read */
    bool tls_write_wants_read; /* ... must receive before we can write */
    /* Network of brokers: a CONNECT with mq-bridge names the connecting
     * broker; the broker's own bridges also prove mq-bridge-token. */
    char *bridge;         /* peer broker name, NULL = ordinary client */
    bool bridge_internal; /* this broker's own bridge: admin, no login */
    char *demand_id;      /* its /mq/demand subscription id, or NULL */
    qlink demand_link;    /* B.demand_conns while demand_id is set */
    idmap demand_sent;    /* str_key(dest name) -> counts last announced */
};

/* Work handed to the loop thread (store completions, HA events). */
typedef enum op_type {
    OP_SEND,
    OP_ACK,
    OP_TXN,
    OP_MASTER,
    OP_LOST,
    OP_DUP, /* a replayed SEND answered when the original's write completes */
    OP_AUTH, /* the password verifier's answer (rc 0 or MQS_EAUTH) */
    /* A durable subscription created or removed in the store (the
     * SUBSCRIBE / UNSUBSCRIBE that asked waits, reading nothing). */
    OP_SUBCREATE,
    OP_SUBREMOVE,
    OP_PAGE, /* a page of a paged box read from the store (dest.c) */
    OP_AUDIT, /* takeover: the newest stored messages' headers (broker.c) */
    OP_DMARK  /* a box's dispatch mark stored (dest.c) */
} op_type;
typedef struct op {
    struct op *next;
    op_type type;
    uint64_t epoch; /* B.epoch when submitted: stale ops only free */
    conn *c;        /* may be a zombie by completion time */
    ticket *t;
    msg *m;       /* OP_SEND */
    dest *d;      /* OP_SEND (holds a ref) */
    uint64_t seq; /* snapshot: durable subs created before it get it */
    stx *x;       /* OP_TXN */
    int pending;  /* completions still to come (under the queue mutex) */
    int rc;
    int64_t id;
    char *err;
    int64_t *ids;
    size_t n_ids;
    int64_t token; /* OP_MASTER, OP_LOST */
    char *reason;
    /* OP_SEND with a producer id: its audit entry, and the duplicates of
     * it (or of earlier sequences) that answer when it completes. */
    char *producer;
    uint64_t pseq;
    struct op *dups, *next_dup;
    char *origin; /* OP_SEND of a network connection: its mq-origin */
    struct subreq *sr; /* OP_SUBCREATE, OP_SUBREMOVE (stomp.c) */
    struct page *pg;   /* OP_PAGE (dest.c) */
    size_t store_bytes; /* OP_SEND, OP_TXN: counted in B.store_bytes */
    buf hdrs;           /* OP_AUDIT: header blobs, each after its length */
    size_t n_hdrs;
} op;

typedef struct broker {
    config cfg;
    mqs_store *store;
    size_t store_max; /* mqs_max_message_size */
    char *cluster;
    int ep;   /* epoll */
    int lfd;  /* listening socket; -1 unless master */
    bool master;
    int64_t token;
    uint64_t epoch;
    uint64_t seq; /* arrival order of messages, creation of boxes */
    uint64_t next_serial;
    qlink conns, zombies;
    size_t nconns;
    /* Deferred work, done once per loop turn. */
    qlink flush_list, dirty_boxes, resume_dests, gc_dests;
    /* Destinations. */
    qlink dests;
    dest **dtab;
    size_t dcap, ndests;
    bool stopping;
    /* accept() ran out of file descriptors: the listener is disarmed
     * until accept_resume_ms instead of waking the loop in a spin. */
    bool accept_paused;
    int64_t accept_resume_ms;
    idmap per_ip; /* str_key(client address) -> connections, as uintptr */
    /* Bytes held for clients (see mem_add): destinations, transactions,
     * connection buffers. At cfg.max_memory producers are paused. */
    size_t mem_used;
    bool mem_over;
    /* Network of brokers (network.c). */
    const char *name;       /* broker name (B.cfg.broker_name) */
    char bridge_token[33];  /* proves a connection is one of our bridges */
    qlink demand_conns;     /* conns with a /mq/demand subscription */
    size_t ndemand;
    qlink demand_dests;     /* dest->demand_link: counts to announce */
    qlink later_boxes;      /* box->dirty_link: dispatch on the next round */
    uint64_t demand_seq;    /* message-ids of demand frames */
    size_t page_failed;     /* boxes waiting to retry a failed page read */
    /* Message bytes submitted to the store and not completed, against
     * mqs_max_pending_bytes: the loop never submits past it, so no async
     * submit waits (docs/broker.md, "Limits"). */
    size_t store_bytes, store_pending_max;
    qlink store_paused; /* conn->slink */
    /* Takeover: the newest messages' ids are being read into the
     * duplicate audits (a thread; OP_AUDIT): SENDs that carry ids wait. */
    bool audit_loading;
} broker;

extern broker B;

/* broker.c */
/* Run until SIGTERM/SIGINT; returns the process exit code. */
int broker_run(const config *cfg);
void broker_post(op *o); /* any thread */
op *op_new(op_type type, conn *c, ticket *t);
/* Called by the store's callbacks: one of o->pending completions. */
void op_complete(op *o, int rc, const char *err);
/* mqs_done_fn for ops: ud is the op. */
void op_done_cb(void *ud, int rc, int64_t id, const char *errmsg);
void broker_log_store_failure(const char *what, int rc);

/* dest.c */
msg *msg_new(const void *hdrs, size_t hdrs_len, const void *body,
             size_t body_len);
void msg_unref(msg *m);
bool msg_hdrs_valid(const char *h, size_t n);
/* Validate a STOMP destination; NULL if fine, else why not. */
const char *dest_check(const char *name, mqs_kind *kind);
dest *dest_get(const char *name, bool create);
dest *dest_get_store(mqs_kind kind, const char *store_name);
void dest_ref(dest *d);
void dest_unref(dest *d);
/* The global account (B.mem_used): +n / -n bytes held for clients. */
void mem_add(size_t n);
void mem_sub(size_t n);
/* Over --max-memory (with 1/8 hysteresis once over). */
bool mem_full(void);
void dest_reserve(dest *d, size_t n);
void dest_release(dest *d, size_t n);
void dest_pause(dest *d, conn *c);
void dest_unpause(conn *c);
void dest_publish(dest *d, msg *m, uint64_t snapshot);
size_t dests_resume(void);
void dests_gc(void);
void dests_free_all(void);
box *box_new_sub(dest *d, box_type type, int64_t sub_id, const char *name);
box *dest_find_durable(dest *d, const char *name);
box *dest_find_durable_id(dest *d, int64_t sub_id);
void box_free(box *b);
void box_kick(box *b);
size_t boxes_dispatch(void);
/* Paging (dest.c). A box whose messages are all in the store, none in
 * memory yet (takeover): the first read starts at the beginning. */
void box_set_paged(box *b);
/* OP_PAGE reached the loop (live: of the current term). */
void page_apply(op *o, bool live);
void page_op_free(op *o);
/* Retry page reads that failed (every tick). */
void pages_tick(int64_t now);
/* Dispatch marks: OP_DMARK reached the loop; at takeover, load them (after
 * the boxes exist) and keep them from the producer-mark prune. */
void dmark_apply(op *o, bool live);
void dmarks_load(void);
void dmarks_refresh(void);
bool dmark_name(const char *producer); /* one of ours, not a producer's */
entry *entry_add(box *b, msg *m); /* pending, at the tail */
void entry_free(entry *e);        /* unlinked by the caller */
bool entry_stored(const entry *e);
int64_t entry_sub_id(const entry *e);
void entry_message_id(const entry *e, char *out, size_t n);
/* Ack one delivered entry: store ack (if stored; counted in o->pending
 * when o is not NULL), then entry_consume. */
void entry_ack(entry *e, op *o);
/* Drop a delivered entry from memory only (its store ack is done). */
void entry_consume(entry *e);
/* NACK / connection loss: back to pending, redelivered. */
void entry_requeue(entry *e);
void sub_attach(sub *s, box *b);
void sub_detach(sub *s); /* requeues unacked, frees a live topic box */

/* audit.c: duplicate detection by (mq-producer, mq-seq); see there. */
#define AUDIT_HDR_PRODUCER "mq-producer"
#define AUDIT_HDR_SEQ "mq-seq"
#define AUDIT_MAX_ID 128
enum { AUDIT_NEW = 0, AUDIT_DUP, AUDIT_DUP_WAIT };
/* The frame's ids: false when absent or malformed (then no dedupe). */
bool audit_ids(const char *producer, const char *seq, uint64_t *out);
/* AUDIT_NEW (recorded as accepted), AUDIT_DUP (already held),
 * AUDIT_DUP_WAIT (held by the write *inflight, which has not completed:
 * answer when it does). */
int audit_check(const char *producer, uint64_t seq, op **inflight);
/* o is the store write of the producer's newest accepted SEND. */
void audit_inflight(const char *producer, op *o);
/* The store write o of (producer, seq) completed with rc. */
void audit_done(const char *producer, uint64_t seq, op *o, int rc);
/* Recovery: a stored message's header blob ("name\0value\0"...). */
void audit_note_hdrs(const char *hdrs, size_t len);
void audit_clear(void); /* a new term starts from the store */
/* m (stored, being acked) carries ids: queue the store's producer mark,
 * so its replay is recognized after a failover though its row is gone. */
void audit_mark(const msg *m);
/* Takeover: load the store's marks (and prune those idle for a week). */
void audit_load_marks(void);
size_t audit_count(void);

/* auth.c: users, passwords (verified off the loop thread) and rights. */
enum { AUTH_READ = 1, AUTH_WRITE = 2, AUTH_ADMIN = 4 };
int auth_init(const config *cfg, char *err, size_t errlen);
void auth_free(void);
bool auth_enabled(void);
/* Queue a password check; its answer comes back as op o (OP_AUTH) with
 * o->rc. -1 when the verifier's queue is full (refuse the CONNECT). */
int auth_submit(const char *login, const char *passcode, op *o);
bool auth_allowed(const char *user, unsigned right, const char *dest);
const char *auth_right_name(unsigned right);
int auth_hash_password(void); /* mqbroker --hash-password */
/* stomp.c: flow control after c added to d. */
void maybe_pause(conn *c, dest *d);
/* stomp.c: bytes frame f would queue for the store's writer (an upper
 * bound; 0 for frames that queue none). */
size_t stomp_store_need(conn *c, const frame *f);
/* Does f carry ids a duplicate audit checks (mq-producer, mq-origin)? */
bool stomp_audited(const frame *f);
/* Room in the store's queue for need more bytes (none in flight: always). */
bool store_room(size_t need);
/* broker.c: store bytes completed; paused connections resume. */
void store_done(size_t n);
void store_pause(conn *c);
void store_unpause(conn *c);
void store_resume(void);
/* stomp.c: the second half of CONNECT, once the password was checked. */
void stomp_connect_done(conn *c, int rc);
/* stomp.c: the second half of a durable SUBSCRIBE / UNSUBSCRIBE, once the
 * store answered (live: o is of the current term); frees o->sr. */
void stomp_sub_created(op *o, bool live);
void stomp_sub_removed(op *o, bool live);

/* network.c: the accepting side of the network of brokers (docs/broker.md
 * "Network of brokers"). Loop thread only. */
#define NET_HDR_PATH "mq-path"
#define NET_HDR_ORIGIN "mq-origin"
#define NET_SCAN_MAX 256 /* pending entries skipped per box per pass */
/* At start: the bridge token, the policies logged. */
int network_init(char *err, size_t errlen);
/* Value of header name in a message's stored headers, or NULL. */
const char *msg_hdr(const msg *m, const char *name);
/* d's policy (first matching --network-policy), or NULL = defaults. */
const net_policy *network_policy(dest *d);
/* May network subscription s get m? (path and TTL; replay_ok: the box
 * is a queue with no local consumer and the policy replays). */
bool network_eligible(const sub *s, const msg *m, bool replay_ok);
bool network_replay(dest *d);
bool network_audit_on(dest *d);
/* MESSAGE to a network subscription: mq-path with this broker appended,
 * mq-origin kept or made. The caller skips the stored ones. */
void network_put_headers(buf *b, int version, const msg *m);
bool network_header(const char *name); /* mq-path or mq-origin */
/* Consumer counts of d changed: free unless someone holds /mq/demand. */
void network_demand_changed(dest *d);
/* End of loop turn: one demand frame per changed destination. */
size_t network_demand_flush(void);
void network_demand_subscribe(conn *c, const char *id);
void network_demand_unsubscribe(conn *c);
void network_bridges_snapshot(conn *c, const char *id);
void network_conn_teardown(conn *c);
/* Origin audit: like audit_check, keyed by mq-origin. */
int origin_check(const char *origin, op **inflight);
void origin_add(const char *origin, op *o); /* o NULL: not stored */
void origin_done(const char *origin, op *o, int rc);
void origin_note_hdrs(const char *hdrs, size_t len); /* recovery */
void origin_clear(void);
size_t origin_count(void);

/* dest.c: a destination whose demand was announced may be collectable. */
void dest_gc_check(dest *d);

/* tls.c: TLS on the listener (OpenSSL); recv()/send()-like I/O. */
int tls_init(const config *cfg, char *err, size_t errlen);
void tls_free_ctx(void);
bool tls_enabled(void);
int tls_attach(conn *c);
void tls_detach(conn *c);
ssize_t tls_read(conn *c, void *buf, size_t n, char *why, size_t whylen);
ssize_t tls_write(conn *c, const void *buf, size_t n, char *why,
                  size_t whylen);
size_t tls_pending(conn *c);
void tls_close_notify(conn *c);

/* broker.c: accept ran out of descriptors: stop accepting for a while. */
void listener_backoff(void);

/* conn.c */
void conn_accept(int lfd);
void conn_event(conn *c, uint32_t events);
void conn_process_input(conn *c);
void conns_mem_resumed(void); /* below --max-memory again */
void conn_out_changed(conn *c);
/* Bring c's buffer bytes into B.mem_used (after they changed). */
void conn_mem_sync(conn *c);
size_t conns_flush(void);
void conn_close(conn *c, const char *why);
void conn_free_zombie(conn *c);
void conn_teardown(conn *c);
bool conn_can_take(const conn *c);
void conn_error(conn *c, const char *receipt, const char *message,
                const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* ERROR with one more header (CONNECT's version mismatch). */
void conn_error_hdr(conn *c, const char *xname, const char *xval,
                    const char *message, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void conn_write_message(conn *c, sub *s, const entry *e);
ticket *ticket_add(conn *c, const char *receipt, const char *what);
void ticket_done(conn *c, ticket *t, int rc, const char *err);
void conns_tick(int64_t now);
void conns_close_all(const char *why);

/* stomp.c */
void stomp_handle(conn *c, const frame *f);
void txn_free(stx *x);
/* A committed transaction reaches memory: publish its messages (ids from
 * the store, snapshot as for dest_publish), apply its acks and nacks. */
void txn_apply(conn *c, stx *x, const int64_t *ids, size_t n_ids,
               uint64_t snapshot);

#endif
