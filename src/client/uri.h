/* uri.h - libmqclient's URI model: the failover: and tcp:// URIs parsed
 * into a configuration, the reconnect back-off schedule, and broker lists
 * (from updateURIsURL files and from brokers). Pure functions, no I/O
 * except mqc__uri_list_read(); unit-tested in tests/client/unit/t_uri.c.
 *
 * Why not liburiparser: a failover URI is not an RFC 3986 URI (a
 * parenthesized, comma-separated list of URIs before the query), and the
 * inner URIs are host:port plus a query; the grammar is a page of code. */
#ifndef MQCLIENT_URI_H
#define MQCLIENT_URI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One broker: tcp://host:port?inner-options (after nested.* merged in; an
 * option given on the inner URI itself wins over nested.*). */
typedef struct mqc_server {
    char *uri;  /* canonical "tcp://host:port" (no query), for logs/events */
    char *host; /* IPv6 literals without brackets */
    int port;   /* default 61613 */
    int connect_timeout_ms; /* connectTimeout, default 0 = OS default
                               (the library still caps at 30000) */
    int hb_send_ms, hb_recv_ms; /* heartbeat=cx,cy, default 10000,10000;
                                   0 disables that direction */
    size_t max_frame_bytes;     /* maxFrameSize, default 64 MiB */
    bool tls;                   /* ssl:// (or stomp+ssl://) */
    char *tls_ca;               /* sslCaFile: PEM CAs; NULL = the system's */
    char *tls_cert, *tls_key;   /* sslCertFile / sslKeyFile: client cert */
    bool tls_verify_host;       /* sslVerifyHost=true: name/IP must match */
} mqc_server;

typedef struct mqc_redelivery_policy {
    int maximum_redeliveries;        /* 6; -1 unlimited */
    int initial_redelivery_delay_ms; /* 1000 */
    int redelivery_delay_ms;         /* 1000 (delay when not exponential) */
    bool use_exponential_backoff;    /* false */
    double backoff_multiplier;       /* 5.0 */
    int maximum_redelivery_delay_ms; /* -1 = no cap */
    char *dlq_prefix;                /* "/queue/DLQ." */
} mqc_redelivery_policy;

typedef struct mqc_config {
    bool failover; /* scheme was failover: */
    mqc_server *servers;
    size_t nservers;
    /* failover options, ActiveMQ names and defaults */
    int initial_reconnect_delay_ms;    /* initialReconnectDelay=10 */
    int max_reconnect_delay_ms;        /* maxReconnectDelay=30000 */
    bool use_exponential_backoff;      /* useExponentialBackOff=true */
    double reconnect_delay_exponent;   /* reconnectDelayExponent=2.0 */
    int max_reconnect_attempts;        /* maxReconnectAttempts=0 (0 and -1
                                          unlimited) */
    int startup_max_reconnect_attempts; /* startupMaxReconnectAttempts=0 (0:
                                           use maxReconnectAttempts) */
    bool randomize;                    /* randomize=true */
    bool backup;                       /* backup=false */
    int backup_pool_size;              /* backupPoolSize=1 */
    int timeout_ms;                    /* timeout=-1 */
    bool track_messages;               /* trackMessages=false */
    size_t max_cache_size;             /* maxCacheSize=131072 */
    bool update_uris_supported;        /* updateURIsSupported=true */
    char *update_uris_url;             /* updateURIsURL, a file path or
                                          file:// URL; NULL = none */
    int warn_after_reconnect_attempts; /* warnAfterReconnectAttempts=10 */
    bool reconnect_supported;          /* reconnectSupported=true */
    bool priority_backup;              /* priorityBackup=false */
    /* jms.* options on the outer URI */
    bool use_async_send;               /* jms.useAsyncSend=false */
    mqc_redelivery_policy redelivery;  /* jms.redeliveryPolicy.* */
    /* nested.* as given, re-applied to URIs learned later
       ("k=v&k2=v2", NULL = none) */
    char *nested;
} mqc_config;

/* Parse uri into *cfg (zeroed first). 0, or -1 with err naming the
 * problem: the key or value and its position, e.g.
 *   "unknown option 'randomise' in failover URI (did you mean randomize?)"
 *   "bad value 'abc' for timeout: expected an integer in ms"
 * On failure *cfg holds nothing to free. */
int mqc__uri_parse(const char *uri, mqc_config *cfg, char *err, size_t errlen);
void mqc__config_free(mqc_config *cfg);

/* Parse one inner broker URI ("tcp://h:p?k=v" or "h:p"), applying
 * cfg->nested first. Used for pushed lists. 0 or -1 with err. */
int mqc__server_parse(const mqc_config *cfg, const char *uri, mqc_server *out,
                      char *err, size_t errlen);
void mqc__server_free(mqc_server *s);

/* A comma- (or whitespace-) separated list of broker URIs, as found in an
 * updateURIsURL file or a broker's mq-brokers header: *out is a new array
 * of *n servers (free each with mqc__server_free, then free()). */
int mqc__server_list_parse(const mqc_config *cfg, const char *list,
                           mqc_server **out, size_t *n, char *err,
                           size_t errlen);
/* Read cfg->update_uris_url and parse it (as above). */
int mqc__server_list_read(const mqc_config *cfg, mqc_server **out, size_t *n,
                          char *err, size_t errlen);

/* Delay before reconnect attempt number `attempt` (1 = the first retry
 * after a failure; attempt 0 -> 0, the first try is immediate), per
 * ActiveMQ: initialReconnectDelay, times reconnectDelayExponent^(attempt-1)
 * with useExponentialBackOff, capped by maxReconnectDelay. */
int64_t mqc__backoff_ms(const mqc_config *cfg, int attempt);

/* Delay before local redelivery number `n` (1 = first) of the redelivery
 * policy: initialRedeliveryDelay, then (exponential) times backOffMultiplier
 * each time, capped by maximumRedeliveryDelay; or redeliveryDelay. */
int64_t mqc__redelivery_delay_ms(const mqc_redelivery_policy *p, int n);

/* The attempt budget that applies: startup (never connected yet) or
 * regular. Returns -1 for unlimited, else the number of attempts. */
int mqc__attempt_budget(const mqc_config *cfg, bool ever_connected);

#endif
