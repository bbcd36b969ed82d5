/* bridge.h - network connectors: store-and-forward bridges to other
 * brokers (docs/broker.md "Network of brokers"). All bridge logic lives in
 * the connecting broker; see network.c for the accepting side.
 *
 * One bridge per URI of a connector's static:(...) list. Each bridge runs
 * in its own thread with two libmqclient connections: the peer (CONNECT
 * mq-bridge:<self>) and this broker itself over TCP (mq-bridge +
 * mq-bridge-token). Local messages go to the peer while the peer's
 * /mq/demand feed says it has consumers; with duplex the peer's messages
 * come here while the local /mq/demand feed says so. A source message is
 * acked only after the other side's RECEIPT (it stored the copy).
 *
 * Threads: bridge_init, bridge_start_all, bridge_stop_all and
 * bridge_free_all run on the loop thread; bridge_snapshot on any. */
#ifndef MQBROKER_BRIDGE_H
#define MQBROKER_BRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct bridge_stat {
    char name[80], peer[256] /* masked */, peer_name[72], state[16],
        last_error[256];
    bool duplex;
    uint64_t fwd_out, fwd_in, inflight_out, inflight_in;
} bridge_stat;

/* At start, before the loop: parse and validate cfg->net_connectors. 0 or
 * -1 with err ("FILE:LINE: ..."). local_port = the broker's listen port
 * (the bridge's local connection goes to 127.0.0.1:local_port, or to the
 * listen address when it is not a wildcard; with --tls-cert it uses
 * ssl:// with the broker's CA if given, no host check), token =
 * B.bridge_token, self = broker name. Nothing runs until
 * bridge_start_all(). Calling it again replaces the previous set (after
 * bridge_free_all). */
int bridge_init(const config *cfg, const char *self, int local_port,
                const char *token, char *err, size_t errlen);
/* Loop thread: became master, listener open. Starts (or restarts) every
 * bridge; returns at once. */
void bridge_start_all(void);
/* Loop thread: lost the lock / stopping. Only sets flags: each bridge
 * thread closes its own connections (the local one talks to the loop
 * thread, which must not wait for it). Returns at once. */
void bridge_stop_all(void);
/* At exit, after bridge_stop_all: joins the bridge threads (each needs at
 * most a few seconds to close its connections) and frees everything. */
void bridge_free_all(void);
size_t bridge_count(void);
size_t bridge_snapshot(bridge_stat *out, size_t max); /* any thread */

/* ---- the connector SPEC, exposed for the unit tests ---------------------- */

enum { BRIDGE_MAX_URIS = 16 };

typedef struct bridge_conf {
    char *name;
    char **uris; /* the static:(...) list as written */
    size_t nuris;
    bool duplex;          /* default false */
    unsigned ttl;         /* networkTTL 1..255, default 1 */
    unsigned prefetch;    /* 1..1000000, default 100 */
    char *login;          /* NULL = none */
    char *passcode_file;  /* NULL = none */
} bridge_conf;

/* Parse one --network-connector SPEC (without the where prefix in err).
 * 0, or -1 with err naming the key or value. Checks every URI with
 * mqc_uri_check() but reads no file. *out is zeroed first; free it with
 * bridge_conf_free() on success (nothing to free on failure). */
int bridge_conf_parse(const char *spec, bridge_conf *out, char *err,
                      size_t errlen);
void bridge_conf_free(bridge_conf *c);
/* Read a passcode file: its first line without the line break. Refused
 * when group or others may read or write it (as --users). *out is
 * malloc'd (wipe before free). 0 or -1 with err. */
int bridge_read_passcode(const char *path, char **out, char *err,
                         size_t errlen);
/* The URI a bridge opens: a failover: URI, with maxReconnectAttempts=-1,
 * initialReconnectDelay=100, maxReconnectDelay=5000, timeout=10000,
 * trackMessages=true and maxCacheSize=16777216 added unless given. Caller
 * frees. */
char *bridge_peer_uri(const char *uri);
/* uri for logs and /mq/bridges: user:password@ parts replaced by "***@". */
void bridge_mask_uri(const char *uri, char *out, size_t outlen);

#endif
