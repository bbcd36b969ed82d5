/* harness.h - what libmqclient's end-to-end tests need around the library:
 * broker processes (mqbroker, or ActiveMQ through tests/db/activemq.sh),
 * fake STOMP servers on 127.0.0.1 that misbehave on purpose or count
 * connection attempts, recorders for the log and the transport listener,
 * and a private temporary directory per test.
 *
 * Everything is bounded in time; every process started is killed at exit
 * (atexit), so a failing assertion never leaves a broker behind. */
#ifndef MQC_TEST_HARNESS_H
#define MQC_TEST_HARNESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <mqclient/mqclient.h>

/* ---- global configuration (set by main from the command line) ---------- */
typedef struct mqh_config {
    const char *broker_path;   /* mqbroker binary */
    const char *activemq;      /* tests/db/activemq.sh, or NULL: mqbroker */
    int port_base;             /* first of this suite's fixed ports */
    int reps;                  /* repetitions of the kill-master test */
    int msgs;                  /* messages per repetition of it */
} mqh_config;
extern mqh_config mqh_cfg;

/* ---- time and small helpers ------------------------------------------- */
int64_t mqh_now_ms(void); /* CLOCK_MONOTONIC */
void mqh_sleep_ms(int ms);
/* A unique token for destination and cluster names ("<pid>x<n>"). */
const char *mqh_run_id(void);
/* A fresh private directory (removed at exit unless MQH_KEEP=1). */
const char *mqh_tmpdir(void);
/* Printf to stderr with a timestamp, so a failing test explains itself. */
void mqh_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Case-insensitive substring. */
bool mqh_contains(const char *hay, const char *needle);
/* TCP connection to 127.0.0.1:port succeeds now. */
bool mqh_port_open(int port);
/* ESTABLISHED TCP connections to 127.0.0.1:port from this host
 * (/proc/net/tcp), i.e. what the broker side sees. */
int mqh_count_established(int port);

/* ---- brokers ------------------------------------------------------------ */
typedef enum { MQH_MQBROKER, MQH_ACTIVEMQ } mqh_kind;

typedef struct mqh_broker {
    mqh_kind kind;
    char name[32];
    int port;
    char store_uri[512]; /* mqbroker only */
    char log_path[512];
    char extra[4][64];   /* extra mqbroker arguments */
    int nextra;
    pid_t pid;           /* mqbroker; 0 when not running */
} mqh_broker;

/* Independent broker: its own store (or its own ActiveMQ instance). */
void mqh_broker_init(mqh_broker *b, const char *name, int port);
/* Master/slave: both on the same SQLite store and cluster (mqbroker only). */
void mqh_broker_init_shared(mqh_broker *b, const char *name, int port,
                            const char *store_tag);
void mqh_broker_arg(mqh_broker *b, const char *arg);
/* Start and wait (up to timeout_ms) until it accepts STOMP connections.
 * 0 or -1 (the reason logged). */
int mqh_broker_start(mqh_broker *b, int timeout_ms);
/* Start without waiting (a standby). */
int mqh_broker_spawn(mqh_broker *b);
/* Standby: logged "waiting for the store lock" (mqbroker only). */
int mqh_broker_wait_standby(mqh_broker *b, int timeout_ms);
int mqh_broker_wait_master(mqh_broker *b, int timeout_ms);
void mqh_broker_kill9(mqh_broker *b);
/* SIGTERM (ActiveMQ: the script's stop); 0 when it exited cleanly. */
int mqh_broker_stop(mqh_broker *b);
bool mqh_broker_running(mqh_broker *b);
/* "tcp://127.0.0.1:PORT" */
const char *mqh_broker_uri(const mqh_broker *b, char *buf, size_t len);
/* Last lines of its log, to stderr. */
void mqh_broker_dump_log(const mqh_broker *b);

/* Stop every fake server still running and kill every broker still
 * running (used after each test). */
void mqh_cleanup_test(void);

/* ---- recorders ---------------------------------------------------------- */
#define MQH_MAX_EVENTS 4096
typedef struct mqh_event {
    int64_t at_ms;
    int kind;  /* log: level; listener: MQH_EV_* */
    int code;  /* exception code */
    char text[256];
} mqh_event;

enum { MQH_EV_INTERRUPTED = 1, MQH_EV_RESUMED, MQH_EV_EXCEPTION };

typedef struct mqh_rec {
    pthread_mutex_t mu;
    mqh_event logs[MQH_MAX_EVENTS];
    int nlogs;
    mqh_event events[256];
    int nevents;
    int interrupted, resumed, exceptions;
    const char *tag; /* printed with each event */
} mqh_rec;

void mqh_rec_init(mqh_rec *r, const char *tag);
void mqh_rec_destroy(mqh_rec *r);
/* Fill o's listener and log with r; log_level DEBUG so WARNs are seen. */
void mqh_rec_opts(mqh_rec *r, mqc_conn_opts *o, mqc_log_level level);
int mqh_rec_count_logs(mqh_rec *r, mqc_log_level level);
int mqh_rec_count(mqh_rec *r, int kind);
/* Wait until count(kind) >= n, up to timeout_ms. */
bool mqh_rec_wait(mqh_rec *r, int kind, int n, int timeout_ms);
/* First exception with this code; copies its text. */
bool mqh_rec_find_exception(mqh_rec *r, int code, char *text, size_t len);

/* ---- fake STOMP server ------------------------------------------------- */
typedef enum {
    MQH_FAKE_ACCEPT_CLOSE, /* accept, record, close: a failed attempt */
    MQH_FAKE_STOMP,        /* CONNECTED (+extra headers), RECEIPTs */
    MQH_FAKE_RAW,          /* answer CONNECT with `raw` instead */
} mqh_fake_mode;

#define MQH_FAKE_MAX_ACCEPTS 512
#define MQH_FAKE_MAX_CONNS 16

typedef struct mqh_fake {
    int port;
    pthread_t thr;
    bool running;
    int stop_pipe[2];
    pthread_mutex_t mu;
    int lfd;                       /* listening socket or -1 (refusing) */
    bool want_listen;
    bool drop_all;                 /* close every client connection */
    mqh_fake_mode mode;
    char connected_extra[1024];    /* "k:v\n" lines added to CONNECTED */
    /* MQH_FAKE_RAW: bytes sent after CONNECT (raw_after_connected: after
     * a normal CONNECTED), then the connection is closed if raw_close. */
    const void *raw;
    size_t raw_len;
    size_t raw_repeat;             /* send raw this many times */
    bool raw_after_connected;
    bool raw_close;
    int64_t accepts[MQH_FAKE_MAX_ACCEPTS];
    int naccepts;
    char connect_frames[8][2048];  /* last CONNECT frames, header text */
    int nconnects;
    int conns[MQH_FAKE_MAX_CONNS];
    char *inbuf[MQH_FAKE_MAX_CONNS];
    size_t inlen[MQH_FAKE_MAX_CONNS];
    int max_concurrent, concurrent;
    uint64_t frames_in;
} mqh_fake;

/* Start listening on port in `mode`. 0 or -1. */
int mqh_fake_start(mqh_fake *f, int port, mqh_fake_mode mode);
void mqh_fake_stop(mqh_fake *f);
void mqh_fake_set_mode(mqh_fake *f, mqh_fake_mode mode);
/* Close every client connection now (the client sees the broker vanish). */
void mqh_fake_drop(mqh_fake *f);
/* Stop listening (connections refused) / listen again. */
void mqh_fake_listen(mqh_fake *f, bool on);
int mqh_fake_accepts(mqh_fake *f, int64_t *times, int max);
int mqh_fake_connects(mqh_fake *f);
/* The header section of CONNECT frame number i (0-based); "" if none. */
void mqh_fake_connect_frame(mqh_fake *f, int i, char *buf, size_t len);
/* Value of header `name` in that text, or "" */
void mqh_header_value(const char *frame, const char *name, char *buf,
                      size_t len);

/* ---- TCP proxy ----------------------------------------------------------
 * 127.0.0.1:port -> 127.0.0.1:upstream, byte for byte. hold = true drops
 * the broker's bytes instead of passing them to the client (read and
 * discarded, so the broker's close still gets through), so a test can make
 * the broker commit sends whose receipts the client never sees. When either side closes, both are closed; a client
 * whose upstream cannot be reached is closed at once (a failed attempt). */
#define MQH_PROXY_MAX 8
typedef struct mqh_proxy {
    int port, upstream;
    pthread_t thr;
    bool running;
    int stop_pipe[2];
    int lfd;
    pthread_mutex_t mu;
    bool hold;
    int down[MQH_PROXY_MAX], up[MQH_PROXY_MAX];
} mqh_proxy;

int mqh_proxy_start(mqh_proxy *p, int port, int upstream);
void mqh_proxy_hold(mqh_proxy *p, bool hold);
void mqh_proxy_stop(mqh_proxy *p);
void mqh_cleanup_proxies(void); /* stop every proxy still running */

#endif
