/* config.h - mqbroker settings from the command line and a config file
 * (same names; the command line wins). */
#ifndef MQBROKER_CONFIG_H
#define MQBROKER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A destination policy for the network of brokers (--network-policy),
 * parsed from "queue=PATTERN;key=value;..." by config_load. */
typedef struct net_policy {
    bool topic;      /* topic=PATTERN, else queue=PATTERN */
    char *pattern;   /* ActiveMQ wildcards on the name after the prefix */
    bool replay;     /* replayWhenNoConsumers (default false) */
    bool audit;      /* enableAudit (default true) */
} net_policy;

typedef struct config {
    char *store;       /* store URI (required) */
    char *listen;      /* HOST:PORT as given */
    char *listen_host; /* parsed */
    char *listen_port;
    char *config_file;
    int log_level;
    size_t max_body;
    size_t prefetch;
    size_t max_connections;
    int64_t hb_send_ms; /* how often we can send heart-beats (0 = never) */
    int64_t hb_recv_ms; /* how often we want them (0 = never) */
    size_t max_header_bytes;
    size_t max_headers;
    size_t max_out_buffer;
    size_t max_dest_bytes;
    int64_t slow_consumer_ms;
    int64_t connect_timeout_ms;
    int64_t shutdown_timeout_ms;
    size_t producer_audit; /* producers remembered for duplicate detection */
    size_t recover_audit_rows; /* newest stored messages read at takeover */
    char *advertise;       /* broker list for CONNECTED mq-brokers, or NULL */
    size_t max_redeliveries; /* NACKs before dead-lettering; 0 = never */
    char *dlq_prefix;        /* dead-letter queue: /queue/<prefix><name> */
    char *users;             /* users file, or NULL: no authentication */
    char *acl;               /* access rules file, or NULL */
    bool allow_anonymous;
    size_t max_subscriptions;   /* per connection */
    size_t max_conns_per_ip;    /* connections from one address */
    int64_t idle_timeout_ms;    /* no heart-beats and no traffic: close */
    int64_t frame_timeout_ms;   /* a started frame must end within this */
    char *tls_cert, *tls_key, *tls_ca; /* TLS on the listener when cert set */
    size_t max_memory; /* all client-held bytes; 0 in argv = a quarter of RAM */
    /* Network of brokers (docs/broker.md). Repeatable options: each value
     * with where it came from ("FILE:LINE" or "--network-connector #k");
     * values given on the command line replace those of the file. */
    char *broker_name;     /* always set after config_load (a default) */
    size_t network_audit;  /* origins remembered (--network-audit) */
    char **net_connectors; /* SPEC strings, parsed by bridge.c */
    char **net_connector_where;
    size_t n_net_connectors;
    char **net_policies;   /* SPEC strings, parsed into net_policy_rules */
    char **net_policy_where;
    size_t n_net_policies;
    net_policy *net_policy_rules; /* n_net_policies of them, in order */
} config;

enum { CONFIG_OK = 0, CONFIG_EXIT_OK = 1, CONFIG_ERROR = 2, CONFIG_HASH_PASSWORD = 3 };

/* Parse argv (and the config file it names). Returns CONFIG_OK,
 * CONFIG_EXIT_OK after printing --help or --version, or CONFIG_ERROR after
 * printing the problem to stderr. */
int config_load(config *c, int argc, char **argv);
void config_free(config *c);

/* The `cluster` option of a store URI ("default" if absent); caller frees. */
char *config_store_cluster(const char *uri);

/* --- Network of brokers: pure helpers, shared with the unit tests. --- */

/* A broker name: 1..64 of [A-Za-z0-9._:-]. */
bool config_broker_name_ok(const char *s);
/* Parse one --network-policy SPEC into *out (out->pattern allocated; free
 * with net_policy_free). -1 with a reason in err. */
int net_policy_parse(const char *spec, net_policy *out, char *err,
                     size_t errlen);
void net_policy_free(net_policy *p);
/* ActiveMQ wildcards over '.'-separated segments: '*' one segment, '>'
 * (last) any number of remaining segments, zero included. */
bool net_wild_match(const char *pattern, const char *name);
/* The first policy matching a destination ("/queue/x" or "/topic/x"), or
 * NULL (then: replay false, audit true). */
const net_policy *net_policy_find(const net_policy *rules, size_t n,
                                  const char *dest);
/* mq-path helpers: a comma-separated list of broker names (NULL or "" =
 * produced here). */
size_t net_path_hops(const char *path);
bool net_path_has(const char *path, const char *name);
/* May a message with this mq-path go to peer over a network subscription
 * with ttl? replay_ok: the destination is a queue whose policy has
 * replayWhenNoConsumers and whose box has no local consumer at all. */
bool net_path_eligible(const char *path, const char *peer, unsigned ttl,
                       bool replay_ok);

#endif
