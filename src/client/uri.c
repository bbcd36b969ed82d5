/* uri.c - libmqclient's URI model (see uri.h): failover: and tcp:// URIs
 * parsed into an mqc_config, the reconnect and redelivery back-off
 * schedules, and broker lists (updateURIsURL files, mq-brokers headers).
 *
 * Everything is table-driven: one row per option says where it may appear
 * (the failover query, the jms.* options of the outer URI, each broker
 * URI), how its value is parsed and which field it sets, so the defaults,
 * the parser and the error messages cannot drift apart. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "uri.h"

#define DEFAULT_PORT 61613
#define DEFAULT_HB_MS 10000
#define DEFAULT_MAX_FRAME ((size_t)64 << 20)
#define DEFAULT_DLQ_PREFIX "/queue/DLQ."
/* An updateURIsURL file is a list of URIs; anything bigger is a mistake. */
#define LIST_FILE_MAX (1 << 20)
/* Values quoted in error messages are cut here. */
#define SHOW_MAX 80

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static char *dupn(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static char *str_dup(const char *s) { return dupn(s, strlen(s)); }

/* A printable, bounded copy of s[0..n) for messages: control characters
 * become '?', long values are cut with "...". */
static const char *show(char *buf, size_t buflen, const char *s, size_t n)
{
    size_t j = 0;
    for (size_t i = 0; i < n && j + 4 < buflen; i++) {
        unsigned char c = (unsigned char)s[i];
        if (j >= SHOW_MAX) {
            memcpy(buf + j, "...", 3);
            j += 3;
            break;
        }
        buf[j++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    buf[j] = '\0';
    return buf;
}

/* As show(), for a URI: user information (user:password@) is replaced by
 * "***@" since it may hold a password. */
static const char *show_uri(char *buf, size_t buflen, const char *s, size_t n)
{
    size_t q = 0, at = n, start = 0;
    while (q < n && s[q] != '?')
        q++;
    for (size_t k = 0; k < q; k++)
        if (s[k] == '@')
            at = k;
    if (at == n)
        return show(buf, buflen, s, n);
    for (size_t k = 0; k + 2 < at; k++)
        if (s[k] == ':' && s[k + 1] == '/' && s[k + 2] == '/') {
            start = k + 3;
            break;
        }
    /* head, "***", then the rest from '@' (which ends with a NUL) */
    show(buf, buflen, s, start);
    size_t j = strlen(buf);
    if (j + 4 < buflen) {
        memcpy(buf + j, "***", 4);
        j += 3;
        show(buf + j, buflen - j, s + at, n - at);
    }
    return buf;
}

/* ---------------------------------------------------------------------------
 * Growable string
 * ------------------------------------------------------------------------- */
typedef struct sbuf {
    char *p;
    size_t n, cap;
    bool oom;
} sbuf;

static void sb_addn(sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

/* Append s percent-encoding what would change its meaning when the text
 * is parsed again as a query ('%', '&', '=') and control characters. */
static void sb_add_enc(sbuf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '%' || c == '&' || c == '=' || c < 0x20 || c == 0x7f) {
            char e[4];
            snprintf(e, sizeof e, "%%%02X", c);
            sb_addn(b, e, 3);
        } else {
            sb_addn(b, s, 1);
        }
    }
}

/* ---------------------------------------------------------------------------
 * The options
 * ------------------------------------------------------------------------- */
typedef enum opt_kind {
    K_BOOL,      /* bool: true | false */
    K_INT,       /* int in [lo, hi] */
    K_SIZE,      /* size_t in [lo, hi] */
    K_DOUBLE,    /* double >= dlo, finite */
    K_HEARTBEAT, /* two ints >= 0: hb_send_ms, hb_recv_ms */
    K_PATH,      /* char *: a file path or file:// URL */
    K_DEST       /* char *: a destination prefix starting with '/' */
} opt_kind;

typedef enum opt_scope {
    SC_FAILOVER = 1, /* the query of a failover: URI; sets mqc_config */
    SC_JMS = 2,      /* the outer URI, failover: or tcp://; sets mqc_config */
    SC_INNER = 4     /* each broker URI (and nested.*); sets mqc_server */
} opt_scope;

typedef struct opt {
    const char *name;
    opt_scope scope;
    opt_kind kind;
    long long lo, hi;   /* K_INT, K_SIZE */
    double dlo;         /* K_DOUBLE */
    size_t off;         /* field offset in mqc_config or mqc_server */
    const char *expect; /* what a good value looks like, for messages */
} opt;

#define CF(f) offsetof(mqc_config, f)
#define SV(f) offsetof(mqc_server, f)
#define RP "jms.redeliveryPolicy."
#define MS_GE0 "an integer >= 0, in ms"

static const opt opts[] = {
    {"initialReconnectDelay", SC_FAILOVER, K_INT, 0, INT_MAX, 0,
     CF(initial_reconnect_delay_ms), MS_GE0},
    {"maxReconnectDelay", SC_FAILOVER, K_INT, 0, INT_MAX, 0,
     CF(max_reconnect_delay_ms), MS_GE0},
    {"useExponentialBackOff", SC_FAILOVER, K_BOOL, 0, 0, 0,
     CF(use_exponential_backoff), NULL},
    {"reconnectDelayExponent", SC_FAILOVER, K_DOUBLE, 0, 0, 1.0,
     CF(reconnect_delay_exponent), "a number >= 1.0, e.g. 2.0"},
    {"maxReconnectAttempts", SC_FAILOVER, K_INT, -1, INT_MAX, 0,
     CF(max_reconnect_attempts),
     "an integer >= -1 (0 or -1 = retry forever)"},
    {"startupMaxReconnectAttempts", SC_FAILOVER, K_INT, -1, INT_MAX, 0,
     CF(startup_max_reconnect_attempts),
     "an integer >= -1 (0 = as maxReconnectAttempts, -1 = retry forever)"},
    {"randomize", SC_FAILOVER, K_BOOL, 0, 0, 0, CF(randomize), NULL},
    {"backup", SC_FAILOVER, K_BOOL, 0, 0, 0, CF(backup), NULL},
    {"backupPoolSize", SC_FAILOVER, K_INT, 0, 1000, 0, CF(backup_pool_size),
     "an integer from 0 to 1000"},
    {"timeout", SC_FAILOVER, K_INT, -1, INT_MAX, 0, CF(timeout_ms),
     "an integer in ms (-1 = wait forever)"},
    {"trackMessages", SC_FAILOVER, K_BOOL, 0, 0, 0, CF(track_messages), NULL},
    {"maxCacheSize", SC_FAILOVER, K_SIZE, 1, INT_MAX, 0, CF(max_cache_size),
     "an integer from 1 to 2147483647, in bytes"},
    {"updateURIsSupported", SC_FAILOVER, K_BOOL, 0, 0, 0,
     CF(update_uris_supported), NULL},
    {"updateURIsURL", SC_FAILOVER, K_PATH, 0, 0, 0, CF(update_uris_url),
     "a file path or a file:// URL"},
    {"warnAfterReconnectAttempts", SC_FAILOVER, K_INT, INT_MIN, INT_MAX, 0,
     CF(warn_after_reconnect_attempts),
     "an integer (0 or less disables the warning)"},
    {"reconnectSupported", SC_FAILOVER, K_BOOL, 0, 0, 0,
     CF(reconnect_supported), NULL},
    {"priorityBackup", SC_FAILOVER, K_BOOL, 0, 0, 0, CF(priority_backup),
     NULL},
    {"jms.useAsyncSend", SC_JMS, K_BOOL, 0, 0, 0, CF(use_async_send), NULL},
    {RP "maximumRedeliveries", SC_JMS, K_INT, -1, INT_MAX, 0,
     CF(redelivery.maximum_redeliveries),
     "an integer >= -1 (-1 = unlimited)"},
    {RP "initialRedeliveryDelay", SC_JMS, K_INT, 0, INT_MAX, 0,
     CF(redelivery.initial_redelivery_delay_ms), MS_GE0},
    {RP "redeliveryDelay", SC_JMS, K_INT, 0, INT_MAX, 0,
     CF(redelivery.redelivery_delay_ms), MS_GE0},
    {RP "useExponentialBackOff", SC_JMS, K_BOOL, 0, 0, 0,
     CF(redelivery.use_exponential_backoff), NULL},
    {RP "backOffMultiplier", SC_JMS, K_DOUBLE, 0, 0, 1.0,
     CF(redelivery.backoff_multiplier), "a number >= 1.0, e.g. 5"},
    {RP "maximumRedeliveryDelay", SC_JMS, K_INT, -1, INT_MAX, 0,
     CF(redelivery.maximum_redelivery_delay_ms),
     "an integer in ms (-1 = no cap)"},
    {RP "deadLetterPrefix", SC_JMS, K_DEST, 0, 0, 0,
     CF(redelivery.dlq_prefix),
     "a destination prefix starting with '/', e.g. /queue/DLQ."},
    {"connectTimeout", SC_INNER, K_INT, 0, INT_MAX, 0,
     SV(connect_timeout_ms), "an integer >= 0, in ms (0 = the OS default)"},
    {"heartbeat", SC_INNER, K_HEARTBEAT, 0, 0, 0, 0,
     "two integers in ms, send,receive, e.g. heartbeat=10000,10000 "
     "(0 disables that direction)"},
    {"maxFrameSize", SC_INNER, K_SIZE, 1, INT_MAX, 0, SV(max_frame_bytes),
     "an integer from 1 to 2147483647, in bytes"},
    {"sslCaFile", SC_INNER, K_PATH, 0, 0, 0, SV(tls_ca),
     "a PEM file of CA certificates (ssl:// only)"},
    {"sslCertFile", SC_INNER, K_PATH, 0, 0, 0, SV(tls_cert),
     "a PEM client certificate (ssl:// only)"},
    {"sslKeyFile", SC_INNER, K_PATH, 0, 0, 0, SV(tls_key),
     "the PEM private key of sslCertFile (ssl:// only)"},
    {"sslVerifyHost", SC_INNER, K_BOOL, 0, 0, 0, SV(tls_verify_host), NULL},
};
#define NOPTS (sizeof opts / sizeof opts[0])

static const opt *opt_find(const char *name)
{
    for (size_t i = 0; i < NOPTS; i++)
        if (strcmp(opts[i].name, name) == 0)
            return &opts[i];
    return NULL;
}

/* Levenshtein distance, ignoring case (so a wrong capital is distance 0).
 * Long strings are not compared: -1. */
static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return -1;
    int prev[64], cur[64];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int sub = prev[j - 1] + (tolower((unsigned char)a[i - 1]) !=
                                     tolower((unsigned char)b[j - 1]));
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            int m = sub < del ? sub : del;
            cur[j] = m < ins ? m : ins;
        }
        memcpy(prev, cur, sizeof(int) * (lb + 1));
    }
    return prev[lb];
}

/* The closest option name usable in `scopes` (with `prefix` before it, for
 * nested.*), when close enough to be a typo; NULL otherwise. */
static const char *suggest(const char *key, unsigned scopes,
                           const char *prefix, char *buf, size_t buflen)
{
    int best = INT_MAX;
    const char *found = NULL;
    for (size_t i = 0; i < NOPTS; i++) {
        if (!(opts[i].scope & scopes))
            continue;
        char cand[128];
        snprintf(cand, sizeof cand, "%s%s", prefix, opts[i].name);
        int d = edit_distance(key, cand);
        /* "small": 2 edits for short names, up to 4 for the long jms.*
         * ones (maxRedeliveries -> maximumRedeliveries) */
        int limit = 2 + (int)(strlen(cand) / 12);
        if (limit > 4)
            limit = 4;
        if (d >= 0 && d <= limit && d < best) {
            best = d;
            found = opts[i].name;
        }
    }
    if (!found)
        return NULL;
    snprintf(buf, buflen, "%s%s", prefix, found);
    return buf;
}

/* ---------------------------------------------------------------------------
 * Values
 * ------------------------------------------------------------------------- */

/* Percent-decode s[0..n): a new string, or NULL with err (bad escape, an
 * encoded NUL, out of memory). */
static char *pct_decode(const char *s, size_t n, const char *what,
                        const char *ctx, char *err, size_t errlen)
{
    char *d = malloc(n + 1);
    char sh[SHOW_MAX + 8];
    if (!d) {
        seterr(err, errlen, "out of memory parsing %s", ctx);
        return NULL;
    }
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '%') {
            d[j++] = s[i];
            continue;
        }
        if (i + 2 >= n || !isxdigit((unsigned char)s[i + 1]) ||
            !isxdigit((unsigned char)s[i + 2])) {
            seterr(err, errlen,
                   "bad percent-escape in %s '%s' %s: write %%XX with two "
                   "hex digits (%%25 for a literal %%)",
                   what, show(sh, sizeof sh, s, n), ctx);
            free(d);
            return NULL;
        }
        char hex[3] = {s[i + 1], s[i + 2], '\0'};
        long v = strtol(hex, NULL, 16);
        if (v == 0) {
            seterr(err, errlen, "%s '%s' %s contains %%00, which is not "
                   "allowed", what, show(sh, sizeof sh, s, n), ctx);
            free(d);
            return NULL;
        }
        d[j++] = (char)v;
        i += 2;
    }
    d[j] = '\0';
    return d;
}

/* A whole decimal integer in [lo, hi]: no sign other than '-', no spaces,
 * no junk, no overflow. */
static bool parse_ll(const char *v, long long lo, long long hi,
                     long long *out)
{
    if (!(isdigit((unsigned char)v[0]) ||
          (v[0] == '-' && isdigit((unsigned char)v[1]))))
        return false;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *end || x < lo || x > hi)
        return false;
    *out = x;
    return true;
}

static bool parse_double(const char *v, double lo, double *out)
{
    /* Digits only: strtod would also take "nan", "inf", hex and spaces. */
    if (!(isdigit((unsigned char)v[0]) ||
          (v[0] == '.' && isdigit((unsigned char)v[1]))))
        return false;
    for (const char *p = v; *p; p++)
        if (!isdigit((unsigned char)*p) && *p != '.' && *p != 'e' &&
            *p != 'E' && *p != '-' && *p != '+')
            return false;
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (errno || *end || !(x >= lo) || x > 1e9)
        return false;
    *out = x;
    return true;
}

static int set_string(char **field, const char *v, const char *ctx,
                      char *err, size_t errlen)
{
    char *d = str_dup(v);
    if (!d) {
        seterr(err, errlen, "out of memory parsing %s", ctx);
        return -1;
    }
    free(*field);
    *field = d;
    return 0;
}

/* Parse value v of option o into base (an mqc_config or an mqc_server).
 * `shown` is the key as the user wrote it (e.g. "nested.heartbeat"). */
static int opt_apply(const opt *o, void *base, const char *shown,
                     const char *v, const char *ctx, char *err, size_t errlen)
{
    char *field = (char *)base + o->off;
    char sh[SHOW_MAX + 8];
    long long x;
    switch (o->kind) {
    case K_BOOL:
        /* true/false only: ActiveMQ reads anything else as false, which
         * turns a typo into a silent change of behavior. */
        if (strcmp(v, "true") == 0)
            *(bool *)(void *)field = true;
        else if (strcmp(v, "false") == 0)
            *(bool *)(void *)field = false;
        else
            goto bad;
        return 0;
    case K_INT:
        if (!parse_ll(v, o->lo, o->hi, &x))
            goto bad;
        *(int *)(void *)field = (int)x;
        return 0;
    case K_SIZE:
        if (!parse_ll(v, o->lo, o->hi, &x))
            goto bad;
        *(size_t *)(void *)field = (size_t)x;
        return 0;
    case K_DOUBLE: {
        double d;
        if (!parse_double(v, o->dlo, &d))
            goto bad;
        *(double *)(void *)field = d;
        return 0;
    }
    case K_HEARTBEAT: {
        const char *comma = strchr(v, ',');
        if (!comma)
            goto bad;
        char first[32];
        size_t n1 = (size_t)(comma - v);
        if (n1 == 0 || n1 >= sizeof first)
            goto bad;
        memcpy(first, v, n1);
        first[n1] = '\0';
        long long cx, cy;
        if (!parse_ll(first, 0, INT_MAX, &cx) ||
            !parse_ll(comma + 1, 0, INT_MAX, &cy))
            goto bad;
        mqc_server *s = base;
        s->hb_send_ms = (int)cx;
        s->hb_recv_ms = (int)cy;
        return 0;
    }
    case K_PATH: {
        if (!*v)
            goto bad;
        /* Only local files: fetching an http:// URL is a network call the
         * reconnect loop should not make. */
        const char *colon = strchr(v, ':');
        const char *slash = strchr(v, '/');
        if (colon && (!slash || colon < slash) &&
            strncasecmp(v, "file:", 5) != 0) {
            seterr(err, errlen,
                   "bad value '%s' for %s %s: only a file path or a file:// "
                   "URL is supported (e.g. %s=file:///etc/brokers.txt)",
                   show(sh, sizeof sh, v, strlen(v)), shown, ctx, shown);
            return -1;
        }
        if (strncasecmp(v, "file:", 5) == 0 && v[5] != '/')
            goto bad;
        return set_string((char **)(void *)field, v, ctx, err, errlen);
    }
    case K_DEST:
        if (v[0] != '/' || v[1] == '\0')
            goto bad;
        return set_string((char **)(void *)field, v, ctx, err, errlen);
    }
bad:
    seterr(err, errlen, "bad value '%s' for %s %s: expected %s",
           show(sh, sizeof sh, v, strlen(v)), shown, ctx,
           o->expect ? o->expect : "true or false");
    return -1;
}

/* ---------------------------------------------------------------------------
 * Queries
 * ------------------------------------------------------------------------- */

/* Where a query is being read, and what it may set. */
typedef struct qstate {
    unsigned scopes;   /* allowed scopes */
    mqc_config *cfg;   /* SC_FAILOVER, SC_JMS; and nested.* when failover */
    mqc_server *srv;   /* SC_INNER */
    sbuf *nested;      /* nested.* collected here (NULL: not allowed) */
    const char *ctx;   /* "in failover URI", "in broker URI 'tcp://a:1'" */
} qstate;

/* Why `key` is not accepted here, when it is an option elsewhere. */
static void misplaced(const qstate *q, const char *key, const opt *o,
                      char *err, size_t errlen)
{
    if (o->scope == SC_INNER)
        seterr(err, errlen,
               "option '%s' %s belongs to each broker URI: write "
               "tcp://host:port?%s=... inside the failover list, or "
               "nested.%s=... after it to apply it to every broker",
               key, q->ctx, key, key);
    else if (q->cfg && (q->scopes & SC_JMS))
        /* a plain tcp:// URI: the option needs failover: */
        seterr(err, errlen,
               "option '%s' %s is a failover option: use "
               "failover:(tcp://host:port)?%s=...",
               key, q->ctx, key);
    else
        seterr(err, errlen,
               "option '%s' %s belongs to the failover URI, not to one "
               "broker: write failover:(tcp://...)?%s=...",
               key, q->ctx, key);
}

static int unknown_key(const qstate *q, const char *key, char *err,
                       size_t errlen)
{
    char sh[SHOW_MAX + 8], sug[160];
    const char *shown = show(sh, sizeof sh, key, strlen(key));
    if (strcasecmp(key, "passcode") == 0 || strcasecmp(key, "password") == 0 ||
        strcasecmp(key, "login") == 0 || strcasecmp(key, "user") == 0 ||
        strcasecmp(key, "username") == 0) {
        seterr(err, errlen,
               "option '%s' %s is not accepted: credentials never go in a "
               "URI; set login/passcode in mqc_conn_opts",
               shown, q->ctx);
        return -1;
    }
    const char *s = NULL;
    if (strncmp(key, "nested.", 7) == 0 && q->nested)
        s = suggest(key, SC_INNER, "nested.", sug, sizeof sug);
    if (!s)
        s = suggest(key, q->scopes, "", sug, sizeof sug);
    if (s)
        seterr(err, errlen, "unknown option '%s' %s (did you mean %s?)",
               shown, q->ctx, s);
    else
        seterr(err, errlen,
               "unknown option '%s' %s: see docs/client.md for the options "
               "(option names are case-sensitive)",
               shown, q->ctx);
    return -1;
}

static int handle_kv(qstate *q, const char *key, const char *val, char *err,
                     size_t errlen)
{
    if (q->nested && strncmp(key, "nested.", 7) == 0) {
        const opt *o = opt_find(key + 7);
        if (!o || o->scope != SC_INNER)
            return unknown_key(q, key, err, errlen);
        /* Validate now, so a bad nested value fails at open and not at
         * the first reconnect; keep the raw text for later URIs. */
        mqc_server scratch = {0};
        int bad = opt_apply(o, &scratch, key, val, q->ctx, err, errlen);
        mqc__server_free(&scratch); /* string options (sslCaFile, ...) */
        if (bad)
            return -1;
        if (q->nested->n)
            sb_addn(q->nested, "&", 1);
        sb_add_enc(q->nested, key + 7);
        sb_addn(q->nested, "=", 1);
        sb_add_enc(q->nested, val);
        if (q->nested->oom) {
            seterr(err, errlen, "out of memory parsing %s", q->ctx);
            return -1;
        }
        return 0;
    }
    const opt *o = opt_find(key);
    if (!o)
        return unknown_key(q, key, err, errlen);
    if (!(o->scope & q->scopes)) {
        misplaced(q, key, o, err, errlen);
        return -1;
    }
    void *base = o->scope == SC_INNER ? (void *)q->srv : (void *)q->cfg;
    return opt_apply(o, base, key, val, q->ctx, err, errlen);
}

/* Walk "k=v&k2=v2" (q[0..n)): decode each pair and apply it. Empty pairs
 * ("a=1&&b=2", a trailing '&') are skipped. */
static int query_parse(qstate *q, const char *s, size_t n, char *err,
                       size_t errlen)
{
    size_t i = 0;
    char sh[SHOW_MAX + 8];
    while (i < n) {
        size_t j = i;
        while (j < n && s[j] != '&')
            j++;
        if (j > i) {
            const char *eq = memchr(s + i, '=', j - i);
            if (!eq) {
                seterr(err, errlen,
                       "option '%s' %s has no value: write key=value",
                       show(sh, sizeof sh, s + i, j - i), q->ctx);
                return -1;
            }
            size_t klen = (size_t)(eq - (s + i));
            if (klen == 0) {
                seterr(err, errlen,
                       "empty option name in '%s' %s: write key=value",
                       show(sh, sizeof sh, s + i, j - i), q->ctx);
                return -1;
            }
            char *key = pct_decode(s + i, klen, "option name", q->ctx, err,
                                   errlen);
            if (!key)
                return -1;
            char what[SHOW_MAX + 24];
            snprintf(what, sizeof what, "the value of %s",
                     show(sh, sizeof sh, key, strlen(key)));
            char *val = pct_decode(eq + 1, j - i - klen - 1, what, q->ctx, err,
                                   errlen);
            if (!val) {
                free(key);
                return -1;
            }
            int rc = handle_kv(q, key, val, err, errlen);
            free(key);
            free(val);
            if (rc)
                return -1;
        }
        i = j + 1;
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Lists of broker URIs
 * ------------------------------------------------------------------------- */

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' ||
           c == '\v';
}

/* Is the ',' at s[i] inside a heartbeat=cx,cy value (so not a list
 * separator)? True when the option text since the last '?' or '&' of the
 * current item is "heartbeat=<digits>" or "nested.heartbeat=<digits>". */
static bool comma_in_heartbeat(const char *s, size_t item_start, size_t i)
{
    size_t k = i;
    while (k > item_start && s[k - 1] != '?' && s[k - 1] != '&')
        k--;
    if (k == item_start)
        return false; /* no query in this item */
    const char *p = s + k;
    size_t len = i - k;
    static const char *const names[] = {"heartbeat=", "nested.heartbeat="};
    for (size_t n = 0; n < 2; n++) {
        size_t nl = strlen(names[n]);
        if (len > nl && strncmp(p, names[n], nl) == 0) {
            for (size_t m = nl; m < len; m++)
                if (!isdigit((unsigned char)p[m]))
                    return false;
            return true;
        }
    }
    return false;
}

/* The end of the item starting at s[start] (< n): the next ',' that is
 * not part of a heartbeat value, or (with ws) whitespace, or n. */
static size_t item_end(const char *s, size_t n, size_t start, bool ws)
{
    for (size_t i = start; i < n; i++) {
        if (s[i] == ',' && !comma_in_heartbeat(s, start, i))
            return i;
        if (ws && is_space(s[i]))
            return i;
    }
    return n;
}

/* ---------------------------------------------------------------------------
 * One broker URI
 * ------------------------------------------------------------------------- */

static void server_defaults(mqc_server *s)
{
    memset(s, 0, sizeof *s);
    s->port = DEFAULT_PORT;
    s->connect_timeout_ms = 0;
    s->hb_send_ms = DEFAULT_HB_MS;
    s->hb_recv_ms = DEFAULT_HB_MS;
    s->max_frame_bytes = DEFAULT_MAX_FRAME;
    s->tls_verify_host = true;
}

void mqc__server_free(mqc_server *s)
{
    if (!s)
        return;
    free(s->uri);
    free(s->host);
    free(s->tls_ca);
    free(s->tls_cert);
    free(s->tls_key);
    memset(s, 0, sizeof *s);
}

static bool host_char(char c)
{
    return isalnum((unsigned char)c) || c == '-' || c == '.' || c == '_';
}

/* Parse u[0..n) (trimmed) into *out. nested: cfg->nested or NULL. jms:
 * the config that takes jms.* options (a top-level tcp:// URI), or NULL.
 * On failure *out holds nothing. */
static int server_parse_n(const char *nested, mqc_config *jms, const char *u,
                          size_t n, mqc_server *out, char *err,
                          size_t errlen)
{
    char sh[SHOW_MAX + 8], ctx[SHOW_MAX + 40];
    server_defaults(out);
    while (n && is_space(*u))
        u++, n--;
    while (n && is_space(u[n - 1]))
        n--;
    const char *shown = show_uri(sh, sizeof sh, u, n);
    if (n == 0) {
        seterr(err, errlen, "empty broker URI: write tcp://host:port");
        return -1;
    }
    size_t i = 0;
    /* scheme, optional: "host:port" is accepted for pushed lists */
    const char *sep = NULL;
    for (size_t k = 0; k + 2 < n; k++) {
        if (u[k] == ':' && u[k + 1] == '/' && u[k + 2] == '/') {
            sep = u + k;
            break;
        }
        if (!isalnum((unsigned char)u[k]) && u[k] != '+' && u[k] != '-' &&
            u[k] != '.')
            break; /* not a scheme: "host:port" */
    }
    if (sep) {
        size_t sl = (size_t)(sep - u);
        char scheme[32];
        if (sl == 0 || sl >= sizeof scheme) {
            seterr(err, errlen, "bad scheme in broker URI '%s': write "
                   "tcp://host:port", shown);
            return -1;
        }
        for (size_t k = 0; k < sl; k++)
            scheme[k] = (char)tolower((unsigned char)u[k]);
        scheme[sl] = '\0';
        if (!strcmp(scheme, "ssl") || !strcmp(scheme, "stomp+ssl"))
            out->tls = true;
        if (strcmp(scheme, "failover") == 0) {
            seterr(err, errlen, "broker URI '%s': a failover URI cannot be "
                   "nested in another; list the tcp:// URIs directly",
                   shown);
            return -1;
        }
        if (strcmp(scheme, "tcp") != 0 && strcmp(scheme, "stomp") != 0 &&
            !out->tls) {
            seterr(err, errlen,
                   "broker URI '%s': unsupported scheme '%s'; use tcp:// "
                   "(or its alias stomp://), or ssl:// for TLS",
                   shown, show(ctx, sizeof ctx, u, sl));
            return -1;
        }
        i = sl + 3;
    } else if (n >= 9 && strncasecmp(u, "failover:", 9) == 0) {
        seterr(err, errlen, "broker URI '%s': a failover URI cannot be "
               "nested in another; list the tcp:// URIs directly", shown);
        return -1;
    }
    /* authority: up to '/', '?' or the end */
    size_t a = i;
    while (i < n && u[i] != '/' && u[i] != '?')
        i++;
    size_t aend = i;
    if (memchr(u + a, '@', aend - a)) {
        /* Not echoed: the text before '@' may hold a password. */
        seterr(err, errlen,
               "a broker URI contains user information (user@host): "
               "credentials never go in a URI; set login/passcode in "
               "mqc_conn_opts");
        return -1;
    }
    size_t h0, h1, p0;
    if (a < aend && u[a] == '[') {
        const char *rb = memchr(u + a, ']', aend - a);
        if (!rb) {
            seterr(err, errlen, "broker URI '%s': missing ']' after the "
                   "IPv6 address", shown);
            return -1;
        }
        h0 = a + 1;
        h1 = (size_t)(rb - u);
        bool colon = false;
        for (size_t k = h0; k < h1; k++) {
            char c = u[k];
            if (c == '%' && k > h0) /* zone id: fe80::1%eth0 */
                break;
            if (c == ':')
                colon = true;
            else if (!isxdigit((unsigned char)c) && c != '.')
                colon = false, k = h1; /* force the error below */
        }
        if (!colon || h1 == h0) {
            seterr(err, errlen, "broker URI '%s': bad IPv6 address between "
                   "'[' and ']'", shown);
            return -1;
        }
        p0 = h1 + 1;
        if (p0 < aend && u[p0] != ':') {
            seterr(err, errlen, "broker URI '%s': expected ':port' after "
                   "']'", shown);
            return -1;
        }
    } else {
        h0 = a;
        h1 = a;
        while (h1 < aend && u[h1] != ':')
            h1++;
        p0 = h1;
        if (p0 < aend && memchr(u + p0 + 1, ':', aend - p0 - 1)) {
            seterr(err, errlen, "broker URI '%s': an IPv6 address must be "
                   "in brackets, e.g. tcp://[::1]:61613", shown);
            return -1;
        }
        if (h1 == h0) {
            seterr(err, errlen, "broker URI '%s': missing host; write "
                   "tcp://host:port", shown);
            return -1;
        }
        for (size_t k = h0; k < h1; k++)
            if (!host_char(u[k])) {
                seterr(err, errlen, "broker URI '%s': bad character '%c' in "
                       "host name", shown,
                       isprint((unsigned char)u[k]) ? u[k] : '?');
                return -1;
            }
    }
    if (p0 < aend) { /* u[p0] == ':' */
        char port[16];
        size_t pl = aend - p0 - 1;
        long long pv = 0;
        if (pl == 0 || pl >= sizeof port) {
            seterr(err, errlen, "broker URI '%s': %s port; write "
                   "host:port with a port from 1 to 65535 (or no ':' for "
                   "61613)", shown, pl ? "bad" : "empty");
            return -1;
        }
        memcpy(port, u + p0 + 1, pl);
        port[pl] = '\0';
        if (!parse_ll(port, 1, 65535, &pv)) {
            seterr(err, errlen, "broker URI '%s': bad port '%s': expected "
                   "an integer from 1 to 65535", shown, port);
            return -1;
        }
        out->port = (int)pv;
    }
    /* an empty path is tolerated: tcp://host:61613/ */
    if (i < n && u[i] == '/') {
        i++;
        if (i < n && u[i] != '?') {
            seterr(err, errlen, "broker URI '%s': unexpected path after the "
                   "port; write tcp://host:port?options", shown);
            return -1;
        }
    }
    bool v6 = memchr(u + h0, ':', h1 - h0) != NULL;
    size_t ulen = (h1 - h0) + 32;
    out->uri = malloc(ulen);
    out->host = dupn(u + h0, h1 - h0);
    if (!out->host || !out->uri) {
        seterr(err, errlen, "out of memory parsing broker URI");
        mqc__server_free(out);
        return -1;
    }
    /* the canonical URI keeps the zone id encoded (RFC 6874:
     * [fe80::1%25eth0]); the host is what getaddrinfo() takes */
    snprintf(out->uri, ulen, v6 ? "%s://[%s]:%d" : "%s://%s:%d",
             out->tls ? "ssl" : "tcp", out->host, out->port);
    char *pct = v6 ? strstr(out->host, "%25") : NULL;
    if (pct)
        memmove(pct + 1, pct + 3, strlen(pct + 3) + 1);
    snprintf(ctx, sizeof ctx, "in broker URI '%s'", out->uri);
    qstate q = {.scopes = SC_INNER | (jms ? SC_JMS : 0u), .cfg = jms,
                .srv = out, .ctx = ctx};
    /* nested.* first, then the URI's own options, which win */
    if (nested && *nested) {
        char nctx[SHOW_MAX + 60];
        snprintf(nctx, sizeof nctx, "(nested.*) in broker URI '%s'", out->uri);
        qstate nq = q;
        nq.scopes = SC_INNER;
        nq.ctx = nctx;
        if (query_parse(&nq, nested, strlen(nested), err, errlen)) {
            mqc__server_free(out);
            return -1;
        }
    }
    if (i < n && u[i] == '?') {
        if (query_parse(&q, u + i + 1, n - i - 1, err, errlen)) {
            mqc__server_free(out);
            return -1;
        }
    } else if (i < n) {
        seterr(err, errlen, "broker URI '%s': unexpected text after the "
               "port", shown);
        mqc__server_free(out);
        return -1;
    }
    return 0;
}

int mqc__server_parse(const mqc_config *cfg, const char *uri, mqc_server *out,
                      char *err, size_t errlen)
{
    if (!out)
        return -1;
    if (!uri) {
        server_defaults(out);
        out->port = 0;
        seterr(err, errlen, "broker URI is NULL");
        return -1;
    }
    int rc = server_parse_n(cfg ? cfg->nested : NULL, NULL, uri, strlen(uri),
                            out, err, errlen);
    if (rc)
        memset(out, 0, sizeof *out);
    return rc;
}

/* Append the servers of list s[0..n) to *arr and *cnt, skipping duplicates
 * (same canonical URI: the first keeps its options). ws: whitespace also
 * separates. Empty items are skipped. */
static int list_append(const char *nested, const char *s, size_t n, bool ws,
                       mqc_server **arr, size_t *cnt, char *err,
                       size_t errlen)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (s[i] == ',' || is_space(s[i])))
            i++;
        if (i >= n)
            break;
        size_t j = item_end(s, n, i, ws);
        mqc_server sv;
        if (server_parse_n(nested, NULL, s + i, j - i, &sv, err, errlen)) {
            memset(&sv, 0, sizeof sv);
            return -1;
        }
        bool dupl = false;
        for (size_t k = 0; k < *cnt; k++)
            if (strcmp((*arr)[k].uri, sv.uri) == 0)
                dupl = true;
        if (dupl) {
            mqc__server_free(&sv);
        } else {
            mqc_server *na = realloc(*arr, (*cnt + 1) * sizeof **arr);
            if (!na) {
                mqc__server_free(&sv);
                seterr(err, errlen, "out of memory parsing a broker list");
                return -1;
            }
            *arr = na;
            (*arr)[(*cnt)++] = sv;
        }
        i = j;
    }
    return 0;
}

static void servers_free(mqc_server *arr, size_t n)
{
    for (size_t k = 0; k < n; k++)
        mqc__server_free(&arr[k]);
    free(arr);
}

int mqc__server_list_parse(const mqc_config *cfg, const char *list,
                           mqc_server **out, size_t *n, char *err,
                           size_t errlen)
{
    if (out)
        *out = NULL;
    if (n)
        *n = 0;
    if (!out || !n || !list) {
        seterr(err, errlen, "mqc__server_list_parse: NULL argument");
        return -1;
    }
    mqc_server *arr = NULL;
    size_t cnt = 0;
    if (list_append(cfg ? cfg->nested : NULL, list, strlen(list), true, &arr,
                    &cnt, err, errlen)) {
        servers_free(arr, cnt);
        return -1;
    }
    if (cnt == 0) {
        seterr(err, errlen, "empty broker list: expected tcp://host:port "
               "URIs separated by commas or whitespace");
        return -1;
    }
    *out = arr;
    *n = cnt;
    return 0;
}

int mqc__server_list_read(const mqc_config *cfg, mqc_server **out, size_t *n,
                          char *err, size_t errlen)
{
    if (out)
        *out = NULL;
    if (n)
        *n = 0;
    if (!cfg || !out || !n) {
        seterr(err, errlen, "mqc__server_list_read: NULL argument");
        return -1;
    }
    if (!cfg->update_uris_url || !*cfg->update_uris_url) {
        seterr(err, errlen, "no updateURIsURL in the failover URI");
        return -1;
    }
    const char *path = cfg->update_uris_url;
    if (strncasecmp(path, "file://", 7) == 0) {
        path += 7;
        /* file://localhost/path is the same file as file:///path */
        if (strncasecmp(path, "localhost/", 10) == 0)
            path += 9;
        if (*path != '/') {
            seterr(err, errlen, "updateURIsURL '%s': a file:// URL needs an "
                   "absolute path, e.g. file:///etc/brokers.txt",
                   cfg->update_uris_url);
            return -1;
        }
    } else if (strncasecmp(path, "file:", 5) == 0) {
        path += 5;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        seterr(err, errlen, "cannot open updateURIsURL file '%s': %s", path,
               strerror(errno));
        return -1;
    }
    char *buf = malloc(LIST_FILE_MAX + 1);
    if (!buf) {
        fclose(f);
        seterr(err, errlen, "out of memory reading '%s'", path);
        return -1;
    }
    size_t len = fread(buf, 1, LIST_FILE_MAX + 1, f);
    int rerr = ferror(f) ? errno : 0;
    fclose(f);
    if (rerr) {
        seterr(err, errlen, "cannot read updateURIsURL file '%s': %s", path,
               strerror(rerr));
        free(buf);
        return -1;
    }
    if (len > LIST_FILE_MAX) {
        seterr(err, errlen, "updateURIsURL file '%s' is larger than %d "
               "bytes: it should only list broker URIs", path, LIST_FILE_MAX);
        free(buf);
        return -1;
    }
    buf[len] = '\0';
    if (memchr(buf, '\0', len)) {
        seterr(err, errlen, "updateURIsURL file '%s' is not text (contains "
               "a NUL byte)", path);
        free(buf);
        return -1;
    }
    /* '#' starts a comment to the end of the line */
    for (size_t i = 0; i < len; i++)
        if (buf[i] == '#')
            while (i < len && buf[i] != '\n')
                buf[i++] = ' ';
    char e2[512];
    mqc_server *arr = NULL;
    size_t cnt = 0;
    if (list_append(cfg->nested, buf, len, true, &arr, &cnt, e2,
                    sizeof e2)) {
        seterr(err, errlen, "updateURIsURL file '%s': %s", path, e2);
        servers_free(arr, cnt);
        free(buf);
        return -1;
    }
    free(buf);
    if (cnt == 0) {
        seterr(err, errlen, "updateURIsURL file '%s' lists no broker: "
               "expected tcp://host:port URIs separated by commas or "
               "whitespace", path);
        return -1;
    }
    *out = arr;
    *n = cnt;
    return 0;
}

/* ---------------------------------------------------------------------------
 * The whole URI
 * ------------------------------------------------------------------------- */

static void config_defaults(mqc_config *c)
{
    memset(c, 0, sizeof *c);
    c->initial_reconnect_delay_ms = 10;
    c->max_reconnect_delay_ms = 30000;
    c->use_exponential_backoff = true;
    c->reconnect_delay_exponent = 2.0;
    c->max_reconnect_attempts = 0;
    c->startup_max_reconnect_attempts = 0;
    c->randomize = true;
    c->backup = false;
    c->backup_pool_size = 1;
    c->timeout_ms = -1;
    c->track_messages = false;
    c->max_cache_size = 131072;
    c->update_uris_supported = true;
    c->update_uris_url = NULL;
    c->warn_after_reconnect_attempts = 10;
    c->reconnect_supported = true;
    c->priority_backup = false;
    c->use_async_send = false;
    c->redelivery.maximum_redeliveries = 6;
    c->redelivery.initial_redelivery_delay_ms = 1000;
    c->redelivery.redelivery_delay_ms = 1000;
    c->redelivery.use_exponential_backoff = false;
    c->redelivery.backoff_multiplier = 5.0;
    c->redelivery.maximum_redelivery_delay_ms = -1;
    c->redelivery.dlq_prefix = NULL; /* set by the caller (may fail) */
}

void mqc__config_free(mqc_config *cfg)
{
    if (!cfg)
        return;
    servers_free(cfg->servers, cfg->nservers);
    free(cfg->update_uris_url);
    free(cfg->nested);
    free(cfg->redelivery.dlq_prefix);
    memset(cfg, 0, sizeof *cfg);
}

/* The failover: URI after "failover:" (and an optional "//"): s[0..n). */
static int failover_parse(mqc_config *c, const char *s, size_t n, char *err,
                          size_t errlen)
{
    char sh[SHOW_MAX + 8];
    size_t list0, list1, q0 = n; /* the list, the query start (n: none) */
    if (n && s[0] == '(') {
        int depth = 0;
        size_t k;
        for (k = 0; k < n; k++) {
            if (s[k] == '(')
                depth++;
            else if (s[k] == ')' && --depth == 0)
                break;
        }
        if (k == n) {
            seterr(err, errlen, "failover URI: missing ')' after the broker "
                   "list; write failover:(tcp://a:61613,tcp://b:61613)"
                   "?options");
            return -1;
        }
        list0 = 1;
        list1 = k;
        if (k + 1 < n) {
            if (s[k + 1] != '?') {
                seterr(err, errlen, "failover URI: unexpected text '%s' "
                       "after ')'; options start with '?'",
                       show_uri(sh, sizeof sh, s + k + 1, n - k - 1));
                return -1;
            }
            q0 = k + 2;
        }
    } else {
        /* failover:tcp://a,tcp://b?opts - the query after the last URI is
         * the failover's (as in ActiveMQ). */
        list0 = 0;
        size_t start = 0, last = 0;
        while (start < n) {
            last = start;
            size_t j = item_end(s, n, start, false);
            start = j < n ? j + 1 : n;
        }
        const char *qm = memchr(s + last, '?', n - last);
        list1 = qm ? (size_t)(qm - s) : n;
        if (qm)
            q0 = list1 + 1;
    }
    if (q0 < n || (q0 == n && q0 > 0 && s[q0 - 1] == '?')) {
        sbuf nested = {0};
        qstate q = {.scopes = SC_FAILOVER | SC_JMS, .cfg = c,
                    .nested = &nested, .ctx = "in failover URI"};
        int rc = query_parse(&q, s + q0, n - q0, err, errlen);
        if (rc) {
            free(nested.p);
            return -1;
        }
        c->nested = nested.p; /* NULL when none */
    }
    if (list_append(c->nested, s + list0, list1 - list0, false, &c->servers,
                    &c->nservers, err, errlen))
        return -1;
    if (c->nservers == 0) {
        seterr(err, errlen, "failover URI lists no broker: write "
               "failover:(tcp://host:61613,tcp://host2:61613)");
        return -1;
    }
    return 0;
}

int mqc__uri_parse(const char *uri, mqc_config *cfg, char *err, size_t errlen)
{
    if (!cfg) {
        seterr(err, errlen, "mqc__uri_parse: cfg is NULL");
        return -1;
    }
    mqc_config c;
    config_defaults(&c);
    memset(cfg, 0, sizeof *cfg);
    if (!uri) {
        seterr(err, errlen, "URI is NULL: write tcp://host:61613 or "
               "failover:(tcp://a:61613,tcp://b:61613)");
        return -1;
    }
    size_t n = strlen(uri);
    while (n && is_space(*uri))
        uri++, n--;
    while (n && is_space(uri[n - 1]))
        n--;
    if (n == 0) {
        seterr(err, errlen, "URI is empty: write tcp://host:61613 or "
               "failover:(tcp://a:61613,tcp://b:61613)");
        return -1;
    }
    c.redelivery.dlq_prefix = str_dup(DEFAULT_DLQ_PREFIX);
    if (!c.redelivery.dlq_prefix) {
        seterr(err, errlen, "out of memory parsing the URI");
        return -1;
    }
    int rc;
    size_t sl = 0;
    while (sl < n && (isalnum((unsigned char)uri[sl]) || uri[sl] == '+' ||
                      uri[sl] == '-' || uri[sl] == '.'))
        sl++;
    char sh[SHOW_MAX + 8];
    if (sl == 8 && sl < n && uri[sl] == ':' &&
        strncasecmp(uri, "failover", 8) == 0) {
        size_t k = 9;
        if (k + 1 < n && uri[k] == '/' && uri[k + 1] == '/')
            k += 2; /* failover://(...) as ActiveMQ also accepts */
        c.failover = true;
        rc = failover_parse(&c, uri + k, n - k, err, errlen);
    } else if (sl > 0 && sl <= 20 && sl < n && uri[sl] == ':' &&
               strncasecmp(uri, "tcp:", 4) != 0 &&
               edit_distance(show(sh, sizeof sh, uri, sl), "failover") >= 0 &&
               edit_distance(show(sh, sizeof sh, uri, sl), "failover") <= 2) {
        seterr(err, errlen, "unknown scheme '%s' (did you mean failover:?)",
               show(sh, sizeof sh, uri, sl));
        rc = -1;
    } else if (sl > 0 && sl + 2 < n && uri[sl] == ':' && uri[sl + 1] == '/' &&
               uri[sl + 2] == '/') {
        /* one broker: its query takes the broker options and jms.* */
        c.servers = calloc(1, sizeof *c.servers);
        if (!c.servers) {
            seterr(err, errlen, "out of memory parsing the URI");
            rc = -1;
        } else {
            rc = server_parse_n(NULL, &c, uri, n, &c.servers[0], err, errlen);
            if (rc == 0)
                c.nservers = 1;
        }
    } else {
        seterr(err, errlen, "'%s' is not a broker URI: write "
               "tcp://host:61613 or failover:(tcp://a:61613,tcp://b:61613)",
               show_uri(sh, sizeof sh, uri, n));
        rc = -1;
    }
    if (rc) {
        mqc__config_free(&c);
        return -1;
    }
    *cfg = c;
    return 0;
}

/* ---------------------------------------------------------------------------
 * Schedules
 * ------------------------------------------------------------------------- */

/* base * mult^k, capped at cap, without overflow and without libm: binary
 * powering in double saturates to infinity, which the cap absorbs. */
static int64_t grow_capped(double base, double mult, int k, int64_t cap)
{
    if (base <= 0)
        return 0;
    double f = 1.0, b = mult;
    unsigned e = (unsigned)k;
    while (e) {
        if (e & 1u)
            f *= b;
        b *= b;
        e >>= 1;
    }
    double d = base * f;
    if (cap >= 0 && !(d < (double)cap))
        return cap;
    if (!(d < 9.0e18))
        return INT64_MAX;
    return (int64_t)d;
}

int64_t mqc__backoff_ms(const mqc_config *cfg, int attempt)
{
    if (!cfg || attempt <= 0)
        return 0;
    int64_t cap = cfg->max_reconnect_delay_ms;
    if (!cfg->use_exponential_backoff) {
        int64_t d = cfg->initial_reconnect_delay_ms;
        return d < cap ? d : cap;
    }
    return grow_capped(cfg->initial_reconnect_delay_ms,
                       cfg->reconnect_delay_exponent, attempt - 1, cap);
}

int64_t mqc__redelivery_delay_ms(const mqc_redelivery_policy *p, int n)
{
    if (!p || n <= 0)
        return 0;
    /* As ActiveMQ: the first redelivery waits initialRedeliveryDelay; the
     * later ones redeliveryDelay, or the previous delay times the
     * multiplier when exponential, capped by maximumRedeliveryDelay. */
    if (n == 1)
        return p->initial_redelivery_delay_ms;
    if (!p->use_exponential_backoff)
        return p->redelivery_delay_ms;
    int64_t cap = p->maximum_redelivery_delay_ms; /* -1: none */
    return grow_capped(p->initial_redelivery_delay_ms, p->backoff_multiplier,
                       n - 1, cap);
}

int mqc__attempt_budget(const mqc_config *cfg, bool ever_connected)
{
    if (!cfg)
        return -1;
    if (!ever_connected && cfg->startup_max_reconnect_attempts != 0)
        return cfg->startup_max_reconnect_attempts < 0
                   ? -1
                   : cfg->startup_max_reconnect_attempts;
    return cfg->max_reconnect_attempts <= 0 ? -1
                                            : cfg->max_reconnect_attempts;
}
