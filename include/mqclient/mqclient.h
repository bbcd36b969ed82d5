/*
 * mqclient.h - libmqclient: a STOMP 1.2 client for C programs that survives
 * broker failover (ActiveMQ's failover: URI, a transport listener, async
 * send with replay, a redelivery policy and a connection pool).
 *
 * It speaks only the STOMP wire protocol: it works against mqbroker and
 * against any STOMP 1.2 broker (ActiveMQ's included) and does not link
 * libmqstore. This header is the manual.
 *
 * Conventions (apply to every function unless its comment says otherwise):
 *  - Return: 0 on success or a negative MQC_E* code. mqc_strerror() names
 *    the code; mqc_errmsg() gives the calling thread's last failure on a
 *    handle in words (what, where, how to fix).
 *  - Ownership: pointer arguments are borrowed for the duration of the
 *    call; the library copies what it keeps. What the library returns says
 *    who frees it. A failed constructor leaves *out == NULL.
 *  - Threads: an mqc_conn may be used by any number of threads at once
 *    (one mutex per connection; a synchronous call blocks only its caller).
 *    Each connection runs one I/O thread (socket, heart-beats, reconnects)
 *    and one dispatch thread, which calls every callback of that connection
 *    (message handlers, send completions, the transport listener, the log
 *    function) one at a time, in order. A callback may call any function of
 *    this header except mqc_close() of its own connection.
 *  - Secrets: the passcode is taken from mqc_conn_opts (or the CLI's
 *    environment / file), never from a URI, and never appears in logs,
 *    errors or frames passed to the listener.
 */
#ifndef MQCLIENT_MQCLIENT_H
#define MQCLIENT_MQCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MQC_API __attribute__((visibility("default")))
#else
#define MQC_API
#endif

/* ---------------------------------------------------------------------------
 * Errors. One table; codes are never renumbered, new ones are appended.
 * ------------------------------------------------------------------------- */
#define MQC_ERRNO_MAP(X)                                                       \
    X(EINVAL, -1, "invalid argument")                                          \
    X(ENOMEM, -2, "out of memory")                                             \
    X(ECONN, -3, "not connected to any broker")                                \
    X(ETIMEDOUT, -4, "timed out")                                              \
    X(EBROKER, -5, "the broker answered with an ERROR frame")                  \
    X(EPROTO, -6, "protocol error: the peer sent something that is not STOMP") \
    X(ECLOSED, -7, "connection or pool is closed")                             \
    X(EGAVEUP, -8, "gave up reconnecting (maxReconnectAttempts reached)")      \
    X(EBUSY, -9, "all pooled connections are busy")                            \
    X(ESTATE, -10, "object in the wrong state for this call")                  \
    X(EROLLEDBACK, -11, "transaction rolled back (connection lost before commit)") \
    X(ETOOBIG, -12, "frame larger than the configured maximum")

enum {
#define MQC_ERRNO_ENUM_(name, val, msg) MQC_##name = (val),
    MQC_ERRNO_MAP(MQC_ERRNO_ENUM_)
#undef MQC_ERRNO_ENUM_
};

/* Static message for a code; never NULL. */
MQC_API const char *mqc_strerror(int code);
/* Static name of a code ("MQC_EINVAL"); never NULL. */
MQC_API const char *mqc_errname(int code);

typedef struct mqc_conn mqc_conn; /* opaque: one failover connection */
typedef struct mqc_sub mqc_sub;   /* opaque: one subscription */
typedef struct mqc_msg mqc_msg;   /* opaque: one received message */
typedef struct mqc_pool mqc_pool; /* opaque: a pooled connection factory */

/* The calling thread's last failure on c, in words; c == NULL: its last
 * failed mqc_open(), mqc_uri_check(), mqc_pool_open() or
 * mqc_pool_borrow(). Never NULL ("" when none). Valid until the calling
 * thread's next call on the same handle. */
MQC_API const char *mqc_errmsg(const mqc_conn *c);

/* One header. Both strings NUL-terminated, unescaped. */
typedef struct mqc_header {
    const char *name, *value;
} mqc_header;

/* A frame as received, for the listener's `command` callback. Every pointer
 * is borrowed for the duration of the callback. */
typedef struct mqc_frame {
    const char *command; /* "MESSAGE", "RECEIPT", "ERROR", "CONNECTED" */
    const mqc_header *headers;
    size_t nheaders;
    const void *body;
    size_t body_len;
} mqc_frame;

typedef enum mqc_log_level {
    MQC_LOG_ERROR = 0,
    MQC_LOG_WARN = 1,
    MQC_LOG_INFO = 2,
    MQC_LOG_DEBUG = 3
} mqc_log_level;

/* Log sink, called on the dispatch thread. msg is borrowed for the call and
 * never contains a passcode. */
typedef void (*mqc_log_fn)(void *ud, mqc_log_level level, const char *msg);

/* ---------------------------------------------------------------------------
 * Transport listener (ActiveMQ's TransportListener). All members optional.
 * Called on the connection's dispatch thread; may call any function of this
 * header except mqc_close() on the same connection.
 * ------------------------------------------------------------------------- */
typedef struct mqc_listener {
    /* The connection to `broker` (its URI) was lost; failover starts.
     * Called once per loss, never twice without a `resumed` between. */
    void (*interrupted)(void *ud, const char *broker);
    /* Connected again, to `broker`; subscriptions were restored and, with
     * trackMessages, unconfirmed sends replayed. */
    void (*resumed)(void *ud, const char *broker);
    /* Something the application should know and no call returned: the
     * client gave up reconnecting (MQC_EGAVEUP, the connection is now
     * closed for good), an ERROR frame not tied to a call (MQC_EBROKER),
     * an async send whose callback is NULL failed. msg is the detail. */
    void (*exception)(void *ud, int code, const char *msg);
    /* Every frame received from the broker, before the library acts on it. */
    void (*command)(void *ud, const mqc_frame *f);
    void *ud;
} mqc_listener;

/* Things that are not said in the URI. Zero-initialize, then set. */
typedef struct mqc_conn_opts {
    const char *login;    /* STOMP login header; NULL = none */
    const char *passcode; /* NULL = none; copied, wiped on close */
    const char *vhost;    /* STOMP host header; NULL = the broker's host */
    const char *client_id; /* client-id header (durable topic subs) */
    mqc_listener listener;
    mqc_log_fn log; /* NULL = stderr */
    void *log_ud;
    mqc_log_level log_level; /* messages above it are dropped; 0 = WARN */
    /* Appended (issue 13): extra headers for every CONNECT frame, e.g.
     * mqbroker's mq-bridge. Copied by mqc_open(). Names the library writes
     * itself are refused with MQC_EINVAL (accept-version, host, heart-beat,
     * login, passcode, client-id), and so are names or values with a line
     * break or ':' in a name (CONNECT headers are not escaped). */
    const mqc_header *connect_headers;
    size_t nconnect_headers;
} mqc_conn_opts;

/* ---------------------------------------------------------------------------
 * Connection
 * ------------------------------------------------------------------------- */

/* Create a connection for uri and start connecting in the background:
 *   tcp://host:61613?connectTimeout=500&heartbeat=1000,1000
 *   failover:(tcp://a:61613,tcp://b:61613)?randomize=false&timeout=3000&backup=true
 *   failover:tcp://a:61613,tcp://b:61613   (parentheses optional)
 * Every failover option of ActiveMQ is accepted with its default; see
 * docs/client.md for the table. Unknown keys and bad values fail here with
 * MQC_EINVAL and a message naming them. A plain tcp:// URI does not
 * reconnect: a lost connection is reported through `exception` and later
 * calls fail with MQC_ECONN.
 * Returns at once, before any broker answered: operations wait for a
 * connection up to the URI's `timeout` (-1: until connected or gave up).
 * Use mqc_wait_connected() to wait explicitly.
 * Ownership: *out is the caller's, freed by mqc_close(). */
MQC_API int mqc_open(const char *uri, const mqc_conn_opts *opts,
                     mqc_conn **out);

/* Parse uri as mqc_open() would, without connecting or starting anything
 * (issue 13: mqbroker checks its connectors' URIs at start). 0, or
 * MQC_EINVAL with the problem in mqc_errmsg(NULL). */
MQC_API int mqc_uri_check(const char *uri);

/* Wait until connected: 0, MQC_ETIMEDOUT after timeout_ms (-1: no limit),
 * MQC_EGAVEUP, MQC_ECLOSED. */
MQC_API int mqc_wait_connected(mqc_conn *c, int timeout_ms);

/* Graceful close: DISCONNECT with a receipt (bounded wait), stop both
 * threads, free everything, including undelivered mqc_msg of this
 * connection's subscriptions (messages the application holds stay valid
 * until it frees them). Pending async sends complete with MQC_ECLOSED.
 * Not from a callback of c. c may be NULL. */
MQC_API void mqc_close(mqc_conn *c);

/* The broker URI currently connected ("tcp://host:port"), copied into buf;
 * "" when disconnected. Returns the length it needed. */
MQC_API size_t mqc_current_broker(mqc_conn *c, char *buf, size_t len);

/* Counters since open, for tests and monitoring. */
typedef struct mqc_stats {
    uint64_t connects;          /* successful (re)connections */
    uint64_t reconnect_attempts; /* failed attempts, all brokers */
    uint64_t sent, receipts;    /* SEND frames written, receipts received */
    uint64_t replayed;          /* sends replayed after a failover */
    uint64_t received, acked;   /* MESSAGE frames, acks sent */
    uint64_t redelivered_local; /* redelivery-policy redeliveries */
    uint64_t dead_lettered;     /* messages moved to a DLQ */
} mqc_stats;
MQC_API void mqc_get_stats(mqc_conn *c, mqc_stats *out);

/* ---------------------------------------------------------------------------
 * Sending. Every SEND carries two headers the client adds: mq-producer
 * (an id unique to this mqc_conn) and mq-seq (1, 2, ... per connection).
 * A replay after a failover keeps both, so a broker that remembers them
 * (mqbroker does, in its store) drops the copy and still sends the RECEIPT.
 * ------------------------------------------------------------------------- */
typedef struct mqc_send_opts {
    const mqc_header *headers; /* extra headers: content-type, priority,
                                  expires, persistent, reply-to, ... */
    size_t nheaders;
    const char *txn; /* a transaction from mqc_begin(), or NULL */
} mqc_send_opts;

/* Send body[0..len) to dest ("/queue/x", "/topic/y") and wait for the
 * broker's RECEIPT. During a reconnect it waits up to the URI's `timeout`
 * (MQC_ETIMEDOUT; the connection stays usable). With trackMessages a send
 * interrupted by a failover is replayed on the new broker and this call
 * returns its receipt. An ERROR frame answering it: MQC_EBROKER with the
 * broker's message in mqc_errmsg(). In a transaction no receipt is awaited
 * (the COMMIT's receipt confirms). With the URI option
 * jms.useAsyncSend=true this behaves as mqc_send_async() with cb == NULL. */
MQC_API int mqc_send(mqc_conn *c, const char *dest, const void *body,
                     size_t len, const mqc_send_opts *opts);

/* Completion of an async send: status 0 (receipt came) or MQC_E*; msg is
 * the error detail (NULL on success). Called once, on the dispatch thread. */
typedef void (*mqc_send_cb)(void *ud, int status, const char *msg);

/* Queue the SEND and return at once (0, or an argument error). cb reports
 * the outcome (cb NULL: failures go to the listener's `exception`). The
 * outstanding async sends of a connection are bounded by the URI's
 * maxCacheSize bytes (with trackMessages) or 1000 frames: past that the
 * call waits for room, up to `timeout`. */
MQC_API int mqc_send_async(mqc_conn *c, const char *dest, const void *body,
                           size_t len, const mqc_send_opts *opts,
                           mqc_send_cb cb, void *ud);

/* Wait until every async send so far has completed (or timeout_ms). */
MQC_API int mqc_flush(mqc_conn *c, int timeout_ms);

/* ---------------------------------------------------------------------------
 * Transactions (STOMP BEGIN/COMMIT/ABORT). A failover between BEGIN and
 * COMMIT loses the transaction at the broker: mqc_commit() then returns
 * MQC_EROLLEDBACK and the application redoes the work.
 * ------------------------------------------------------------------------- */
/* Start a transaction; its id (NUL-terminated, < 64 bytes) goes to txid. */
MQC_API int mqc_begin(mqc_conn *c, char *txid, size_t txid_len);
MQC_API int mqc_commit(mqc_conn *c, const char *txid); /* waits for receipt */
MQC_API int mqc_abort(mqc_conn *c, const char *txid);

/* ---------------------------------------------------------------------------
 * Receiving
 * ------------------------------------------------------------------------- */
typedef enum mqc_ack_mode {
    MQC_ACK_AUTO = 0,     /* the broker forgets a message once sent */
    MQC_ACK_CLIENT,       /* cumulative ack (STOMP "client") */
    MQC_ACK_CLIENT_INDIVIDUAL
} mqc_ack_mode;

/* Message handler, on the dispatch thread. m is the handler's: it must
 * mqc_msg_free() it (after mqc_ack()/mqc_nack()/mqc_reject() if wanted). */
typedef void (*mqc_msg_cb)(void *ud, mqc_msg *m);

typedef struct mqc_sub_opts {
    const mqc_header *headers; /* extra SUBSCRIBE headers: selector,
                                  activemq.prefetchSize, ... */
    size_t nheaders;
    const char *durable_name; /* durable topic subscription name, or NULL */
    mqc_msg_cb on_message;    /* NULL: pull with mqc_receive() */
    void *ud;
} mqc_sub_opts;

/* Subscribe and wait for the broker's receipt (up to `timeout`). After a
 * failover the library subscribes again by itself. */
MQC_API int mqc_subscribe(mqc_conn *c, const char *dest, mqc_ack_mode mode,
                          const mqc_sub_opts *opts, mqc_sub **out);

/* Pull the next message: 0 and *out (the caller's, mqc_msg_free()), or
 * MQC_ETIMEDOUT after timeout_ms (-1: no limit, 0: poll). Only for a
 * subscription without on_message. One thread at a time per mqc_sub. */
MQC_API int mqc_receive(mqc_sub *s, int timeout_ms, mqc_msg **out);

/* UNSUBSCRIBE (waits for the receipt) and free s. Messages already
 * received stay valid. */
MQC_API int mqc_unsubscribe(mqc_sub *s);

/* Message accessors. Pointers are owned by m, valid until mqc_msg_free(). */
MQC_API const void *mqc_msg_body(const mqc_msg *m, size_t *len);
MQC_API const char *mqc_msg_header(const mqc_msg *m, const char *name);
/* Every header of m in the order received (repeated names included:
 * STOMP says the first one counts, as mqc_msg_header() does); *n gets the
 * count. The array is owned by m. m NULL: NULL and *n = 0. */
MQC_API const mqc_header *mqc_msg_headers(const mqc_msg *m, size_t *n);
MQC_API const char *mqc_msg_dest(const mqc_msg *m);
MQC_API const char *mqc_msg_id(const mqc_msg *m);
/* True when the broker says so (redelivered:true) or the redelivery policy
 * redelivered it; count is the number of local redeliveries so far. */
MQC_API bool mqc_msg_redelivered(const mqc_msg *m);
MQC_API int mqc_msg_redelivery_count(const mqc_msg *m);

/* ACK (client: everything up to m on its subscription) / NACK. txn may be
 * NULL. A message received before a failover cannot be acked on the new
 * broker (it will be redelivered there): MQC_ESTATE. */
MQC_API int mqc_ack(mqc_msg *m, const char *txn);
MQC_API int mqc_nack(mqc_msg *m, const char *txn);

/* The application could not process m: apply the redelivery policy. The
 * message is handed to the application again after the policy's delay
 * (without going back to the broker), and once maximumRedeliveries is
 * exceeded it is sent to the dead-letter queue and acked in one STOMP
 * transaction (atomic at the broker). Client ack modes only. */
MQC_API int mqc_reject(mqc_msg *m);

MQC_API void mqc_msg_free(mqc_msg *m); /* m may be NULL */

/* ---------------------------------------------------------------------------
 * Pooled connection factory (ActiveMQ's PooledConnectionFactory).
 * ------------------------------------------------------------------------- */
typedef struct mqc_pool_opts {
    int max_connections;   /* 0 = 1 (ActiveMQ's default); 100 is common */
    int idle_timeout_ms;   /* close a connection idle this long; 0 = 30000 */
    int borrow_timeout_ms; /* all busy: wait this long (-1 forever, 0 = fail
                              at once with MQC_EBUSY) */
    mqc_conn_opts conn;    /* for every connection of the pool */
} mqc_pool_opts;

/* Thread-safe: any number of threads borrow and return at once. */
MQC_API int mqc_pool_open(const char *uri, const mqc_pool_opts *opts,
                          mqc_pool **out);
/* Borrow a connection (the most recently returned idle one, or a new one
 * when fewer than max_connections exist). All busy: waits up to
 * borrow_timeout_ms, then MQC_EBUSY. The borrower owns it until
 * mqc_pool_return(). */
MQC_API int mqc_pool_borrow(mqc_pool *p, mqc_conn **out);
/* Give c back. A connection that failed for good (gave up, closed by the
 * broker) is closed, never handed to the next borrower. */
MQC_API void mqc_pool_return(mqc_pool *p, mqc_conn *c);
/* Connections open and borrowed now. */
MQC_API void mqc_pool_counts(mqc_pool *p, int *open, int *borrowed);
/* Close the idle connections and mark the pool closed: borrowers waiting
 * and later borrows get MQC_ECLOSED. Connections still borrowed are not
 * closed under their users: each is closed when returned, and the last
 * return frees the pool. No call on p may start after this one. */
MQC_API void mqc_pool_close(mqc_pool *p);

#ifdef __cplusplus
}
#endif
#endif /* MQCLIENT_MQCLIENT_H */
