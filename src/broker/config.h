/* config.h - mqbroker settings from the command line and a config file
 * (same names; the command line wins). */
#ifndef MQBROKER_CONFIG_H
#define MQBROKER_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

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
} config;

enum { CONFIG_OK = 0, CONFIG_EXIT_OK = 1, CONFIG_ERROR = 2, CONFIG_HASH_PASSWORD = 3 };

/* Parse argv (and the config file it names). Returns CONFIG_OK,
 * CONFIG_EXIT_OK after printing --help or --version, or CONFIG_ERROR after
 * printing the problem to stderr. */
int config_load(config *c, int argc, char **argv);
void config_free(config *c);

/* The `cluster` option of a store URI ("default" if absent); caller frees. */
char *config_store_cluster(const char *uri);

#endif
