/* config.c - command line and config file (see config.h, docs/broker.md). */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <mqstore/mqstore.h>

#include "util.h"

#ifndef MQBROKER_VERSION
#define MQBROKER_VERSION "unknown"
#endif

typedef enum otype {
    T_STR, T_LEVEL, T_SIZE, T_MS, T_HB, T_LISTEN, T_BOOL,
    T_LIST /* repeatable: appended with where it came from */
} otype;

typedef struct opt {
    const char *name;
    otype type;
    size_t off; /* field in config (T_HB and T_LISTEN set several) */
    const char *def;
    const char *arg;
    const char *doc;
    bool file_ok; /* may appear in a config file */
} opt;

#define F(field) offsetof(config, field)

static const opt opts[] = {
    {"store", T_STR, F(store), NULL, "URI",
     "store URI (required), e.g. 'sqlite:///var/lib/mq/b.db?cluster=prod'; "
     "its options set the HA cluster, node_id, lease_ms, ...", true},
    {"listen", T_LISTEN, F(listen), "127.0.0.1:61613", "HOST:PORT",
     "STOMP address, opened only while this broker is master; IPv6 as "
     "[::1]:61613", true},
    {"config", T_STR, F(config_file), NULL, "FILE",
     "read 'key = value' settings from FILE (the command line wins)", false},
    {"log-level", T_LEVEL, F(log_level), "info", "LEVEL",
     "error | warn | info | debug", true},
    {"max-body", T_SIZE, F(max_body), "4194304", "BYTES",
     "largest message body accepted (k/m/g suffixes allowed)", true},
    {"prefetch", T_SIZE, F(prefetch), "1000", "N",
     "unacknowledged messages per client-ack subscription (the SUBSCRIBE "
     "header activemq.prefetchSize or prefetch overrides)", true},
    {"max-connections", T_SIZE, F(max_connections), "1000", "N",
     "client connections at once; more are refused with an ERROR frame",
     true},
    {"heartbeat", T_HB, F(hb_send_ms), "10000,10000", "MS,MS",
     "heart-beats the broker can send, and wants to receive (0 = none)",
     true},
    {"max-header-bytes", T_SIZE, F(max_header_bytes), "65536", "BYTES",
     "largest command + header section of a frame", true},
    {"max-headers", T_SIZE, F(max_headers), "256", "N",
     "most headers in one frame", true},
    {"max-out-buffer", T_SIZE, F(max_out_buffer), "8m", "BYTES",
     "output buffered for one connection before dispatching to it stops",
     true},
    {"max-dest-bytes", T_SIZE, F(max_dest_bytes), "64m", "BYTES",
     "message bytes held in memory per destination: over half of it its "
     "stored messages go back to the store and are read in pages; at it "
     "producers are paused", true},
    {"slow-consumer-ms", T_MS, F(slow_consumer_ms), "30000", "MS",
     "disconnect a client whose full output buffer made no progress this "
     "long", true},
    {"connect-timeout-ms", T_MS, F(connect_timeout_ms), "10000", "MS",
     "close connections that send no CONNECT frame within this time", true},
    {"shutdown-timeout-ms", T_MS, F(shutdown_timeout_ms), "5000", "MS",
     "on SIGTERM, how long to wait for pending store writes and receipts",
     true},
    {"producer-audit", T_SIZE, F(producer_audit), "65536", "N",
     "producers remembered to drop replayed SENDs (mq-producer/mq-seq "
     "headers, sent by libmqclient); 0 = off", true},
    {"recover-audit-rows", T_SIZE, F(recover_audit_rows), "65536", "N",
     "at takeover, the newest N stored messages are read back into the "
     "duplicate audits (mq-producer/mq-seq, mq-origin); messages are "
     "otherwise read in pages as consumers need them", true},
    {"max-redeliveries", T_SIZE, F(max_redeliveries), "6", "N",
     "a message NACKed more than N times goes to its dead-letter queue "
     "(with its ack, in one store transaction); 0 = never", true},
    {"dlq-prefix", T_STR, F(dlq_prefix), "DLQ.", "PREFIX",
     "dead-letter queue of /queue/x or /topic/x: /queue/PREFIXx", true},
    {"max-memory", T_SIZE, F(max_memory), "0", "BYTES",
     "ceiling for everything held for clients (messages in memory, "
     "transactions, input and output buffers); producers are paused at "
     "it; 0 = a quarter of the machine's RAM", true},
    {"max-subscriptions", T_SIZE, F(max_subscriptions), "1000", "N",
     "subscriptions one connection may hold", true},
    {"max-connections-per-ip", T_SIZE, F(max_conns_per_ip), "200", "N",
     "connections from one client address at once", true},
    {"idle-timeout-ms", T_MS, F(idle_timeout_ms), "300000", "MS",
     "close a connection that negotiated no heart-beats and exchanged no "
     "frame this long (0 = never)", true},
    {"frame-timeout-ms", T_MS, F(frame_timeout_ms), "30000", "MS",
     "close a connection whose frame, once started, is not complete "
     "within this time (0 = never)", true},
    {"tls-cert", T_STR, F(tls_cert), NULL, "FILE",
     "serve STOMP over TLS with this PEM certificate (chain); needs "
     "--tls-key", true},
    {"tls-key", T_STR, F(tls_key), NULL, "FILE",
     "PEM private key of --tls-cert (must not be readable by others)", true},
    {"tls-ca", T_STR, F(tls_ca), NULL, "FILE",
     "require client certificates signed by these PEM CA certificates",
     true},
    {"users", T_STR, F(users), NULL, "FILE",
     "require login: 'name:hash' lines (hash from --hash-password); the "
     "file must not be readable by others", true},
    {"acl", T_STR, F(acl), NULL, "FILE",
     "access rules 'USER RIGHTS PATTERN' (see docs/broker.md); without it "
     "every user may do everything", true},
    {"allow-anonymous", T_BOOL, F(allow_anonymous), "false", "BOOL",
     "with --users: let clients without login in (as user 'anonymous'); "
     "without --users: allow listening on a non-loopback address", true},
    {"advertise", T_STR, F(advertise), NULL, "URIS",
     "broker list sent to clients in CONNECTED (mq-brokers header), e.g. "
     "'tcp://a:61613,tcp://b:61613': failover clients learn the cluster",
     true},
    {"broker-name", T_STR, F(broker_name), NULL, "NAME",
     "this broker's name in a network of brokers (1..64 of "
     "[A-Za-z0-9._:-]); default: the store's cluster option, else "
     "HOSTNAME:PORT", true},
    {"network-connector", T_LIST, F(net_connectors), NULL, "SPEC",
     "bridge to other brokers (repeatable): 'name=N;uri=static:(URI,...);"
     "duplex=false;networkTTL=1;prefetch=100;login=U;passcodeFile=F'",
     true},
    {"network-policy", T_LIST, F(net_policies), NULL, "SPEC",
     "network policy per destination pattern (repeatable, first match "
     "wins): 'queue=PATTERN;replayWhenNoConsumers=false;enableAudit=true' "
     "or 'topic=PATTERN;...'", true},
    {"network-audit", T_SIZE, F(network_audit), "65536", "N",
     "message origins remembered to drop messages a bridge forwards twice "
     "(mq-origin header); 0 = off", true},
};
#define NOPTS (sizeof opts / sizeof opts[0])

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: mqbroker --store URI [OPTION]...\n"
            "STOMP 1.2 broker with durable storage and master/slave HA on "
            "libmqstore.\n\n"
            "Brokers started on the same store (same cluster) elect one "
            "master; the others\nkeep their port closed until they take "
            "over.\n\nOptions:\n");
    for (size_t i = 0; i < NOPTS; i++) {
        char left[64];
        snprintf(left, sizeof left, "--%s %s", opts[i].name, opts[i].arg);
        fprintf(f, "  %-28s %s", left, opts[i].doc);
        if (opts[i].def)
            fprintf(f, " [%s]", opts[i].def);
        fputc('\n', f);
    }
    fprintf(f, "  %-28s %s\n  %-28s %s\n  %-28s %s\n", "--hash-password",
            "read a password from standard input, print its hash for "
            "--users", "--help", "show this help", "--version",
            "show versions");
    fprintf(f, "\nA config file has one 'key = value' per line with the long "
               "option names\n(store, listen, log-level, ...); '#' starts a "
               "comment at the start of a line\nor after a blank. Logs go to "
               "stderr. SIGTERM/SIGINT shut down cleanly.\n");
}

/* Unsigned number with an optional binary k/m/g suffix. */
static int parse_size(const char *s, bool suffix, uint64_t *out)
{
    if (*s < '0' || *s > '9')
        return -1;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno)
        return -1;
    unsigned shift = 0;
    if (suffix && *end) {
        switch (*end) {
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        default: return -1;
        }
        end++;
        if (*end == 'i' || *end == 'I')
            end++;
        if (*end == 'b' || *end == 'B')
            end++;
    }
    if (*end || v > (UINT64_MAX >> shift))
        return -1;
    *out = (uint64_t)v << shift;
    return 0;
}

static int split_listen(config *c, const char *v, char *err, size_t errlen)
{
    const char *colon;
    char *host;
    if (v[0] == '[') {
        const char *rb = strchr(v, ']');
        if (!rb || rb[1] != ':') {
            snprintf(err, errlen, "expected [IPV6]:PORT");
            return -1;
        }
        host = xstrndup(v + 1, (size_t)(rb - v - 1));
        colon = rb + 1;
    } else {
        colon = strrchr(v, ':');
        if (!colon || colon == v) {
            snprintf(err, errlen, "expected HOST:PORT");
            return -1;
        }
        host = xstrndup(v, (size_t)(colon - v));
    }
    uint64_t port;
    if (parse_size(colon + 1, false, &port) || port == 0 || port > 65535) {
        snprintf(err, errlen, "bad port '%s' (1..65535)", colon + 1);
        free(host);
        return -1;
    }
    free(c->listen_host);
    free(c->listen_port);
    c->listen_host = host;
    c->listen_port = xstrdup(colon + 1);
    return 0;
}

/* The three fields of a repeatable option. */
static void list_fields(config *c, const opt *o, char ***list, char ***where,
                        size_t **n)
{
    if (o->off == F(net_connectors)) {
        *list = c->net_connectors;
        *where = c->net_connector_where;
        *n = &c->n_net_connectors;
    } else {
        *list = c->net_policies;
        *where = c->net_policy_where;
        *n = &c->n_net_policies;
    }
}

static void list_add(config *c, const opt *o, const char *v,
                     const char *where)
{
    char **list, **wh;
    size_t *n;
    list_fields(c, o, &list, &wh, &n);
    list = xrealloc(list, (*n + 1) * sizeof *list);
    wh = xrealloc(wh, (*n + 1) * sizeof *wh);
    list[*n] = xstrdup(v);
    wh[*n] = xstrdup(where);
    (*n)++;
    if (o->off == F(net_connectors)) {
        c->net_connectors = list;
        c->net_connector_where = wh;
    } else {
        c->net_policies = list;
        c->net_policy_where = wh;
    }
}

/* where: "FILE:LINE" or "--NAME #k", kept by repeatable options. */
static int set_opt(config *c, const opt *o, const char *v, const char *where,
                   char *err, size_t errlen)
{
    char *field = (char *)c + o->off;
    uint64_t n;
    switch (o->type) {
    case T_LIST:
        if (!*v) {
            snprintf(err, errlen, "empty value");
            return -1;
        }
        list_add(c, o, v, where);
        return 0;
    case T_STR:
    case T_LISTEN:
        if (!*v) {
            snprintf(err, errlen, "empty value");
            return -1;
        }
        if (o->type == T_LISTEN && split_listen(c, v, err, errlen))
            return -1;
        free(*(char **)field);
        *(char **)field = xstrdup(v);
        return 0;
    case T_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "yes") || !strcmp(v, "1"))
            *(bool *)field = true;
        else if (!strcmp(v, "false") || !strcmp(v, "no") || !strcmp(v, "0"))
            *(bool *)field = false;
        else {
            snprintf(err, errlen, "expected true or false");
            return -1;
        }
        return 0;
    case T_LEVEL: {
        int l = log_level_parse(v);
        if (l < 0) {
            snprintf(err, errlen, "expected error, warn, info or debug");
            return -1;
        }
        *(int *)field = l;
        return 0;
    }
    case T_SIZE:
        if (parse_size(v, true, &n) || n > SIZE_MAX) {
            snprintf(err, errlen, "expected a non-negative number");
            return -1;
        }
        *(size_t *)field = (size_t)n;
        return 0;
    case T_MS:
        if (parse_size(v, false, &n) || n > INT64_MAX / 2) {
            snprintf(err, errlen, "expected milliseconds");
            return -1;
        }
        *(int64_t *)field = (int64_t)n;
        return 0;
    case T_HB: {
        const char *comma = strchr(v, ',');
        uint64_t a, b;
        char first[32];
        if (!comma || (size_t)(comma - v) >= sizeof first) {
            snprintf(err, errlen, "expected MS,MS");
            return -1;
        }
        memcpy(first, v, (size_t)(comma - v));
        first[comma - v] = '\0';
        if (parse_size(first, false, &a) || parse_size(comma + 1, false, &b) ||
            a > INT64_MAX / 2 || b > INT64_MAX / 2) {
            snprintf(err, errlen, "expected MS,MS");
            return -1;
        }
        c->hb_send_ms = (int64_t)a;
        c->hb_recv_ms = (int64_t)b;
        return 0;
    }
    }
    return -1;
}

static const opt *find_opt(const char *name, size_t n)
{
    for (size_t i = 0; i < NOPTS; i++)
        if (strlen(opts[i].name) == n && !memcmp(opts[i].name, name, n))
            return &opts[i];
    return NULL;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' ||
                 s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

static int load_file(config *c, const char *path, const bool *given)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "mqbroker: cannot open config file %s: %s\n", path,
                strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    int lineno = 0, rc = 0;
    while (getline(&line, &cap, f) >= 0) {
        lineno++;
        /* '#' at the start or after a blank: a URI may contain '#'. */
        for (char *h = strchr(line, '#'); h; h = strchr(h + 1, '#'))
            if (h == line || h[-1] == ' ' || h[-1] == '\t') {
                *h = '\0';
                break;
            }
        char *s = trim(line);
        if (!*s)
            continue;
        char *eq = strchr(s, '=');
        if (!eq) {
            fprintf(stderr, "mqbroker: %s:%d: expected 'key = value'\n",
                    path, lineno);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *key = trim(s), *val = trim(eq + 1);
        const opt *o = find_opt(key, strlen(key));
        if (!o || !o->file_ok) {
            fprintf(stderr, "mqbroker: %s:%d: unknown setting '%s' (see "
                    "mqbroker --help)\n", path, lineno, key);
            rc = -1;
            break;
        }
        if (given[o - opts])
            continue; /* the command line wins */
        char err[256], where[300];
        snprintf(where, sizeof where, "%s:%d", path, lineno);
        if (set_opt(c, o, val, where, err, sizeof err)) {
            fprintf(stderr, "mqbroker: %s:%d: %s = %s: %s\n", path, lineno,
                    key, val, err);
            rc = -1;
            break;
        }
    }
    free(line);
    fclose(f);
    return rc;
}

/* tcp://host:port[,tcp://host:port...]: it goes into a header verbatim,
 * so nothing that needs escaping. */
static bool advertise_ok(const char *s)
{
    if (strlen(s) > 2000)
        return false;
    while (*s) {
        if (strncmp(s, "tcp://", 6))
            return false;
        s += 6;
        const char *end = strchr(s, ',');
        size_t n = end ? (size_t)(end - s) : strlen(s);
        const char *colon = NULL;
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = (unsigned char)s[i];
            if (ch <= ' ' || ch == '\\' || ch >= 0x7f)
                return false;
            if (ch == ':')
                colon = s + i;
        }
        if (!colon || colon == s || colon + 1 == s + n)
            return false;
        for (const char *p = colon + 1; p < s + n; p++)
            if (*p < '0' || *p > '9')
                return false;
        s += n;
        if (*s == ',' && !*++s)
            return false;
    }
    return true;
}

/* The default broker name: the store's cluster (a master/slave pair
 * shares it) unless that is the library's "default", else HOSTNAME:PORT;
 * characters a name may not hold become '_' (an existing cluster name must
 * not stop a broker starting). */
static char *default_broker_name(const config *c)
{
    char *s = config_store_cluster(c->store);
    if (!strcmp(s, "default")) {
        free(s);
        char host[256];
        if (gethostname(host, sizeof host))
            snprintf(host, sizeof host, "localhost");
        host[sizeof host - 1] = '\0';
        size_t n = strlen(host) + strlen(c->listen_port) + 2;
        s = xmalloc(n);
        snprintf(s, n, "%s:%s", host, c->listen_port);
    }
    if (strlen(s) > 64)
        s[64] = '\0';
    for (char *p = s; *p; p++)
        if (!config_broker_name_ok((char[]){*p, '\0'}))
            *p = '_';
    return s;
}

static int validate_network(config *c)
{
    if (!c->broker_name) {
        c->broker_name = default_broker_name(c);
    } else if (!config_broker_name_ok(c->broker_name)) {
        fprintf(stderr, "mqbroker: --broker-name '%s': expected 1 to 64 "
                "of A-Z a-z 0-9 . _ : -\n", c->broker_name);
        return -1;
    }
    c->net_policy_rules = xcalloc(c->n_net_policies + 1,
                                  sizeof *c->net_policy_rules);
    for (size_t i = 0; i < c->n_net_policies; i++) {
        char err[256];
        if (net_policy_parse(c->net_policies[i], &c->net_policy_rules[i],
                             err, sizeof err)) {
            fprintf(stderr, "mqbroker: %s: network-policy '%s': %s\n",
                    c->net_policy_where[i], c->net_policies[i], err);
            return -1;
        }
    }
    return 0;
}

static int validate(config *c)
{
    if (c->max_memory == 0) {
        /* A quarter of the RAM: room for the store's caches, the OS and
         * the database if it shares the machine. */
        long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        uint64_t ram = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz
                                            : (uint64_t)4 << 30;
        uint64_t q = ram / 4;
        if (q < (uint64_t)256 << 20)
            q = (uint64_t)256 << 20;
        if (q < c->max_dest_bytes)
            q = c->max_dest_bytes;
        c->max_memory = q > SIZE_MAX ? SIZE_MAX : (size_t)q;
    }
    const char *bad = NULL;
    if (!c->store)
        bad = "--store URI is required";
    else if (c->prefetch == 0)
        bad = "--prefetch must be at least 1";
    else if (c->max_headers == 0 || c->max_header_bytes < 64)
        bad = "--max-headers must be >= 1 and --max-header-bytes >= 64";
    else if (c->max_out_buffer < 4096)
        bad = "--max-out-buffer must be at least 4096";
    else if (c->max_dest_bytes < c->max_body)
        bad = "--max-dest-bytes must be at least --max-body";
    else if (c->max_connections == 0)
        bad = "--max-connections must be at least 1";
    else if (c->max_memory && c->max_memory < c->max_dest_bytes)
        bad = "--max-memory must be at least --max-dest-bytes";
    else if (c->max_subscriptions == 0 || c->max_conns_per_ip == 0)
        bad = "--max-subscriptions and --max-connections-per-ip must be at "
              "least 1";
    else if (!c->tls_cert != !c->tls_key)
        bad = "--tls-cert and --tls-key go together";
    else if (c->tls_ca && !c->tls_cert)
        bad = "--tls-ca needs --tls-cert and --tls-key";
    else if (c->acl && !c->users)
        bad = "--acl needs --users (its rules name users)";
    else if (!c->users && !c->allow_anonymous &&
             strcmp(c->listen_host, "localhost") &&
             strncmp(c->listen_host, "127.", 4) &&
             strcmp(c->listen_host, "::1"))
        bad = "--listen on a non-loopback address needs --users FILE (or "
              "--allow-anonymous): otherwise anyone on the network may read "
              "and write every destination";
    else if (!*c->dlq_prefix || strlen(c->dlq_prefix) > 64 ||
             strchr(c->dlq_prefix, '/'))
        bad = "--dlq-prefix must be 1 to 64 bytes without '/'";
    else if (c->advertise && !advertise_ok(c->advertise))
        bad = "--advertise must be a comma-separated list of "
              "tcp://HOST:PORT (at most 2000 bytes, no spaces)";
    if (bad) {
        fprintf(stderr, "mqbroker: %s\nTry 'mqbroker --help'.\n", bad);
        return -1;
    }
    return validate_network(c);
}

int config_load(config *c, int argc, char **argv)
{
    memset(c, 0, sizeof *c);
    char err[256];
    for (size_t i = 0; i < NOPTS; i++)
        if (opts[i].def &&
            set_opt(c, &opts[i], opts[i].def, "default", err, sizeof err))
            abort(); /* a broken default is a programming error */
    bool given[NOPTS] = {0};
    size_t times[NOPTS] = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return CONFIG_EXIT_OK;
        }
        if (!strcmp(a, "--hash-password"))
            return CONFIG_HASH_PASSWORD;
        if (!strcmp(a, "--version")) {
            printf("mqbroker %s (libmqstore %d.%d.%d, STOMP 1.0-1.2)\n",
                   MQBROKER_VERSION, MQS_VERSION_MAJOR, MQS_VERSION_MINOR,
                   MQS_VERSION_PATCH);
            return CONFIG_EXIT_OK;
        }
        if (strncmp(a, "--", 2)) {
            fprintf(stderr, "mqbroker: unexpected argument '%s'\nTry "
                    "'mqbroker --help'.\n", a);
            return CONFIG_ERROR;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t n = eq ? (size_t)(eq - name) : strlen(name);
        const opt *o = find_opt(name, n);
        if (!o) {
            fprintf(stderr, "mqbroker: unknown option '%s'\nTry 'mqbroker "
                    "--help'.\n", a);
            return CONFIG_ERROR;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v && o->type == T_BOOL) {
            v = "true"; /* --allow-anonymous alone */
        } else if (!v) {
            if (i + 1 >= argc) {
                fprintf(stderr, "mqbroker: option --%s needs a value (%s)\n",
                        o->name, o->arg);
                return CONFIG_ERROR;
            }
            v = argv[++i];
        }
        char where[64];
        snprintf(where, sizeof where, "--%s #%zu", o->name,
                 ++times[o - opts]);
        if (set_opt(c, o, v, where, err, sizeof err)) {
            fprintf(stderr, "mqbroker: --%s %s: %s\n", o->name, v, err);
            return CONFIG_ERROR;
        }
        given[o - opts] = true;
    }
    if (c->config_file && load_file(c, c->config_file, given))
        return CONFIG_ERROR;
    return validate(c) ? CONFIG_ERROR : CONFIG_OK;
}

void config_free(config *c)
{
    free(c->store);
    free(c->listen);
    free(c->listen_host);
    free(c->listen_port);
    free(c->config_file);
    free(c->advertise);
    free(c->dlq_prefix);
    free(c->users);
    free(c->acl);
    free(c->tls_cert);
    free(c->tls_key);
    free(c->tls_ca);
    free(c->broker_name);
    for (size_t i = 0; i < c->n_net_connectors; i++) {
        free(c->net_connectors[i]);
        free(c->net_connector_where[i]);
    }
    free(c->net_connectors);
    free(c->net_connector_where);
    for (size_t i = 0; i < c->n_net_policies; i++) {
        free(c->net_policies[i]);
        free(c->net_policy_where[i]);
        if (c->net_policy_rules)
            net_policy_free(&c->net_policy_rules[i]);
    }
    free(c->net_policies);
    free(c->net_policy_where);
    free(c->net_policy_rules);
    memset(c, 0, sizeof *c);
}

/* The store's own parser names the cluster (mqs_uri_cluster). */
char *config_store_cluster(const char *uri)
{
    size_t n = mqs_uri_cluster(uri, NULL, 0);
    if (n == 0) /* no scheme: refused when the store opens */
        return xstrdup("default");
    char *s = xmalloc(n + 1);
    mqs_uri_cluster(uri, s, n + 1);
    return s;
}

/* ------------------------------------------------------------------------
 * Network of brokers: names, policies, paths
 * ---------------------------------------------------------------------- */

bool config_broker_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 64)
        return false;
    for (; *s; s++) {
        char ch = *s;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' ||
              ch == ':' || ch == '-'))
            return false;
    }
    return true;
}

bool net_wild_match(const char *pat, const char *name)
{
    for (;;) {
        const char *pe = strchr(pat, '.'), *ne = strchr(name, '.');
        size_t pl = pe ? (size_t)(pe - pat) : strlen(pat);
        size_t nl = ne ? (size_t)(ne - name) : strlen(name);
        if (pl == 1 && pat[0] == '>' && !pe)
            return true; /* the rest, however many segments */
        if (!(pl == 1 && pat[0] == '*') &&
            (pl != nl || memcmp(pat, name, pl)))
            return false;
        if (!pe && !ne)
            return true;
        if (!ne) /* "a.>" also matches "a": '>' may stand for nothing */
            return !strcmp(pe + 1, ">");
        if (!pe)
            return false;
        pat = pe + 1;
        name = ne + 1;
    }
}

static int parse_bool(const char *v, bool *out)
{
    if (!strcmp(v, "true"))
        *out = true;
    else if (!strcmp(v, "false"))
        *out = false;
    else
        return -1;
    return 0;
}

/* A pattern: non-empty segments; '>' only as the last one. */
static bool pattern_ok(const char *p)
{
    if (!*p || strlen(p) > 255)
        return false;
    for (const char *s = p;;) {
        const char *dot = strchr(s, '.');
        size_t n = dot ? (size_t)(dot - s) : strlen(s);
        if (n == 0)
            return false;
        if (memchr(s, '>', n) && (n != 1 || dot))
            return false;
        if (memchr(s, '*', n) && n != 1)
            return false;
        if (!dot)
            return true;
        s = dot + 1;
    }
}

void net_policy_free(net_policy *p)
{
    free(p->pattern);
    p->pattern = NULL;
}

int net_policy_parse(const char *spec, net_policy *out, char *err,
                     size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->audit = true;
    char *copy = xstrdup(spec), *save = NULL;
    int rc = 0;
    bool first = true;
    for (char *item = strtok_r(copy, ";", &save); item;
         item = strtok_r(NULL, ";", &save), first = false) {
        char *eq = strchr(item, '=');
        if (!eq) {
            snprintf(err, errlen, "'%s' is not key=value", item);
            rc = -1;
            break;
        }
        *eq = '\0';
        char *k = trim(item), *v = trim(eq + 1);
        if (first) {
            if (strcmp(k, "queue") && strcmp(k, "topic")) {
                snprintf(err, errlen, "must start with queue=PATTERN or "
                         "topic=PATTERN, not '%s'", k);
                rc = -1;
                break;
            }
            if (!pattern_ok(v)) {
                snprintf(err, errlen, "bad pattern '%s' (segments separated "
                         "by '.', '*' one segment, '>' only last)", v);
                rc = -1;
                break;
            }
            out->topic = !strcmp(k, "topic");
            out->pattern = xstrdup(v);
        } else if (!strcmp(k, "replayWhenNoConsumers")) {
            if (parse_bool(v, &out->replay)) {
                snprintf(err, errlen, "replayWhenNoConsumers: expected true "
                         "or false, not '%s'", v);
                rc = -1;
                break;
            }
        } else if (!strcmp(k, "enableAudit")) {
            if (parse_bool(v, &out->audit)) {
                snprintf(err, errlen, "enableAudit: expected true or false, "
                         "not '%s'", v);
                rc = -1;
                break;
            }
        } else {
            snprintf(err, errlen, "unknown key '%s' (known: "
                     "replayWhenNoConsumers, enableAudit)", k);
            rc = -1;
            break;
        }
    }
    if (!rc && !out->pattern) {
        snprintf(err, errlen, "must start with queue=PATTERN or "
                 "topic=PATTERN");
        rc = -1;
    }
    free(copy);
    if (rc)
        net_policy_free(out);
    return rc;
}

const net_policy *net_policy_find(const net_policy *rules, size_t n,
                                  const char *dest)
{
    bool topic = !strncmp(dest, "/topic/", 7);
    if (!topic && strncmp(dest, "/queue/", 7))
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (rules[i].topic == topic && net_wild_match(rules[i].pattern,
                                                      dest + 7))
            return &rules[i];
    return NULL;
}

size_t net_path_hops(const char *path)
{
    if (!path || !*path)
        return 0;
    size_t n = 1;
    for (; *path; path++)
        n += *path == ',';
    return n;
}

bool net_path_has(const char *path, const char *name)
{
    if (!path)
        return false;
    size_t nl = strlen(name);
    for (const char *p = path; *p;) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == nl && !memcmp(p, name, n))
            return true;
        if (!end)
            break;
        p = end + 1;
    }
    return false;
}

bool net_path_eligible(const char *path, const char *peer, unsigned ttl,
                       bool replay_ok)
{
    if (net_path_has(path, peer))
        return replay_ok;
    return net_path_hops(path) < ttl;
}
