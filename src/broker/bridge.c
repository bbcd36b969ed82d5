/* bridge.c - network connectors: one store-and-forward bridge per peer URI
 * (see bridge.h and docs/broker.md "Network of brokers").
 *
 * Threads. Each bridge has one thread of its own for its whole life
 * (created by the first bridge_start_all, joined by bridge_free_all). The
 * thread runs "sessions": open both connections, subscribe to the demand
 * feeds, then keep the network subscriptions in line with the demand until
 * told to stop, then close both connections itself. The two libmqclient
 * connections call back on their dispatch threads: demand frames only
 * update a table under b->mu and wake the bridge thread (which does the
 * synchronous SUBSCRIBE/UNSUBSCRIBE), messages are forwarded right there
 * with mqc_send_async, and the completion acks the source message.
 *
 * Why the loop thread never waits here: the local connection is a TCP
 * client of this very broker, so anything that waits for the local
 * connection from the loop thread would wait for itself. bridge_stop_all
 * only sets a flag; the bridge thread notices within a second.
 *
 * The connection pointers b->peer / b->local are read by the callbacks of
 * the OTHER connection (a local message is sent on the peer), so they are
 * guarded by b->conn_lk: callbacks hold it shared while they use a
 * pointer, the bridge thread takes it exclusively to clear the pointers
 * before it closes the connections.
 *
 * No loss, no double: a source message is acked only after the other
 * side's RECEIPT. A subscription whose demand went away is drained first
 * (no new forward, the ones in flight acked) and only then unsubscribed,
 * so what the source broker takes back was not stored on the other side.
 * While the other side is down the subscriptions stay (trackMessages
 * replays the unconfirmed sends on reconnect; messages that got no verdict
 * are handed back by renewing the subscription afterwards); after
 * OUTAGE_RELEASE_MS the session closes both connections, which returns
 * everything held to the source broker. What is left is at-least-once,
 * and the receiving broker's mq-origin audit drops the copies. */
#include "bridge.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include <mqclient/mqclient.h>

#include "util.h"

/* How long a peer that is not an mqbroker (or is this broker) is left
 * alone before the next try. */
enum { NOT_BROKER_RETRY_MS = 30000 };
/* A failed SUBSCRIBE for one destination is tried again after this. */
enum { SUB_RETRY_MS = 5000 };
/* The bridge thread re-checks its flags at least this often. */
enum { TICK_MS = 1000 };
/* After a reconnect the demand feed sends its snapshot again; a
 * destination it does not name within this time has no demand any more
 * (the feed has no end-of-snapshot mark). */
enum { RESYNC_MS = 2000 };
/* A peer down this long: give the local broker back the messages our
 * subscriptions hold for it (its own consumers may take them). Before
 * that they wait, and the unconfirmed sends are replayed on reconnect. */
enum { OUTAGE_RELEASE_MS = 30000 };
/* Waiting for the forwards of a subscription about to end. */
enum { DRAIN_MS = 5000 };

/* Headers of a MESSAGE that are not copied into the forwarded SEND: the
 * delivery's own (id, subscription, ack, redelivered), the ones the SEND
 * states by itself (destination, content-length) and libmqclient's
 * producer audit pair (the forwarding connection adds its own). */
static const char *const skip_headers[] = {
    "message-id",  "subscription", "ack",    "destination",
    "content-length", "redelivered", "mq-producer", "mq-seq",
};

/* ---- per-destination demand ---------------------------------------------- */

/* One destination's demand as the last /mq/demand frame told it, and the
 * network subscription it led to. Entries are never removed during a
 * session (pointers stay valid for the callbacks); freed at its end. */
typedef struct dem {
    struct dir *d;
    char *dest;
    uint32_t n, m;    /* mq-consumers, mq-remote (under b->mu) */
    bool stale;       /* not confirmed since the feed reconnected (mu) */
    int64_t updated;  /* when a demand frame last set n, m (mu) */
    int64_t ended;    /* when our subscription last ended (mu) */
    mqc_sub *sub;     /* ours, or NULL; only the bridge thread touches it */
    int64_t retry_at; /* after a failed SUBSCRIBE */
    /* The subscription is ending: forward nothing more from it (what
     * arrives now goes back to the source broker with the UNSUBSCRIBE). */
    atomic_bool closing;
    /* Messages of the subscription left unacked without a verdict (the
     * other side was down, or the send's outcome is unknown): the broker
     * only gives them back when the subscription ends, so apply() ends
     * and renews it once the other side is back. */
    atomic_uint skipped;
} dem;

/* One direction: out = local -> peer (demand from the peer, subscriptions
 * on the local connection), in = peer -> local (duplex: demand from the
 * local broker, subscriptions on the peer). */
typedef struct dir {
    struct bridge *b;
    bool out;
    dem **v;
    size_t n, cap;
    /* the connection the demand comes from (under b->mu) */
    bool src_down;       /* lost, reconnecting */
    int64_t down_since;
    int64_t resync_at;   /* reconnected: sweep stale entries then; 0 no */
} dir;

typedef struct bridge {
    char name[80];
    char masked[256];
    char *peer_uri;   /* failover:(...) as opened */
    bool duplex;
    unsigned ttl, prefetch;
    char *login, *passcode; /* passcode wiped at free */

    pthread_t tid;
    bool thread_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool run, exit;  /* wanted state (under mu) */
    bool kick;       /* demand changed: re-evaluate (under mu) */

    pthread_rwlock_t conn_lk;
    mqc_conn *peer, *local;

    /* session state (under mu) */
    char peer_name[72];
    bool connected_seen; /* a CONNECTED with mq-broker-name arrived */
    bool not_broker;     /* CONNECTED without it (or our own name) */
    bool name_changed;   /* failover to a broker with another name */
    bool gave_up;        /* a connection gave up: start a new session */
    dir out, in;

    /* for bridge_snapshot (under mu; counters atomic) */
    char state[16];
    char last_error[256];
    atomic_uint_fast64_t fwd_out, fwd_in, inflight_out, inflight_in;
} bridge;

static struct {
    bridge **v;
    size_t n;
    char *self;
    char *local_uri;
    char *token;
} G;

/* ---- small helpers ------------------------------------------------------- */

static int64_t now_ms(void) { return mono_ms(); }

static void cv_wait_ms(pthread_cond_t *cv, pthread_mutex_t *mu, int ms)
{
    /* b->cv uses CLOCK_MONOTONIC (see bridge_new). */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(cv, mu, &ts);
}

static void wipe_free(char *s)
{
    if (!s)
        return;
    for (volatile char *v = s; *v; v++)
        *v = '\0';
    free(s);
}

/* Copy msg into a last_error buffer without trailing line breaks (ERROR
 * frame messages often end with one). */
static void put_error(char *dst, size_t len, const char *prefix,
                      const char *msg)
{
    snprintf(dst, len, "%s%s", prefix, msg);
    size_t n = strlen(dst);
    while (n > 0 && (dst[n - 1] == '\n' || dst[n - 1] == '\r' ||
                     dst[n - 1] == ' '))
        dst[--n] = '\0';
}

static bool should_run(bridge *b)
{
    pthread_mutex_lock(&b->mu);
    bool r = b->run && !b->exit;
    pthread_mutex_unlock(&b->mu);
    return r;
}

/* Under b->mu. Logs the change (INFO). */
static void set_state_locked(bridge *b, const char *st)
{
    if (strcmp(b->state, st)) {
        log_msg(LOG_INFO, "bridge %s: %s -> %s (peer %s%s%s)", b->name,
                b->state, st, b->masked, b->peer_name[0] ? ", " : "",
                b->peer_name);
        snprintf(b->state, sizeof b->state, "%s", st);
        /* last_error says why it is not up; once up it is history (the
         * log keeps it) */
        if (!strcmp(st, "up"))
            b->last_error[0] = '\0';
    }
}

/* Record an error for /mq/bridges; logged (WARN) only when it changed, so
 * a peer that stays down does not fill the log. */
static void set_error(bridge *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_error(bridge *b, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&b->mu);
    char clean[256];
    put_error(clean, sizeof clean, "", msg);
    bool changed = strcmp(b->last_error, clean) != 0;
    if (changed)
        snprintf(b->last_error, sizeof b->last_error, "%s", clean);
    pthread_mutex_unlock(&b->mu);
    if (changed)
        log_msg(LOG_WARN, "bridge %s: %s", b->name, clean);
}

/* ---- the SPEC ------------------------------------------------------------ */

static const char *const spec_keys[] = {
    "name", "uri", "duplex", "networkTTL", "prefetch", "login", "passcodeFile",
};
enum { NKEYS = sizeof spec_keys / sizeof spec_keys[0] };

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 40 || lb > 40)
        return 99;
    size_t d[41][41];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            size_t c = d[i - 1][j - 1] +
                       ((a[i - 1] | 32) == (b[j - 1] | 32) ? 0 : 1);
            size_t x = d[i - 1][j] + 1, y = d[i][j - 1] + 1;
            d[i][j] = c < x ? (c < y ? c : y) : (x < y ? x : y);
        }
    return d[la][lb];
}

static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 64)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '.' || *s == '_' ||
              *s == ':' || *s == '-'))
            return false;
    return true;
}

static int parse_uint(const char *v, unsigned lo, unsigned hi, unsigned *out)
{
    if (!*v)
        return -1;
    unsigned long x = 0;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        x = x * 10 + (unsigned long)(*p - '0');
        if (x > hi)
            return -1;
    }
    if (x < lo)
        return -1;
    *out = (unsigned)x;
    return 0;
}

/* "static:(a,b)" (also "static://(a,b)"): the URIs, split on commas
 * outside parentheses (a failover:(x,y) URI is one item). */
static int parse_static(const char *v, bridge_conf *c, char *err,
                        size_t errlen)
{
    const char *p;
    if (!strncmp(v, "static:(", 8))
        p = v + 8;
    else if (!strncmp(v, "static://(", 10))
        p = v + 10;
    else {
        snprintf(err, errlen, "uri '%s': expected static:(URI,URI,...)", v);
        return -1;
    }
    size_t len = strlen(p);
    if (len == 0 || p[len - 1] != ')') {
        snprintf(err, errlen, "uri: missing ')' at the end of the static:( "
                 "list");
        return -1;
    }
    len--; /* without the closing ')' */
    c->uris = calloc(BRIDGE_MAX_URIS, sizeof *c->uris);
    if (!c->uris) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int depth = 0;
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        char ch = i < len ? p[i] : ',';
        if (ch == '(')
            depth++;
        else if (ch == ')' && --depth < 0) {
            snprintf(err, errlen, "uri: unbalanced ')' in the static:( list");
            return -1;
        }
        if (ch != ',' || depth > 0)
            continue;
        size_t a = start, z = i;
        while (a < z && (p[a] == ' ' || p[a] == '\t'))
            a++;
        while (z > a && (p[z - 1] == ' ' || p[z - 1] == '\t'))
            z--;
        start = i + 1;
        if (a == z) {
            if (len == 0)
                break; /* static:() */
            snprintf(err, errlen, "uri: empty item in the static:( list");
            return -1;
        }
        if (c->nuris == BRIDGE_MAX_URIS) {
            snprintf(err, errlen, "uri: more than %d URIs in the static:( "
                     "list", BRIDGE_MAX_URIS);
            return -1;
        }
        c->uris[c->nuris++] = xstrndup(p + a, z - a);
    }
    if (depth != 0) {
        snprintf(err, errlen, "uri: unbalanced '(' in the static:( list");
        return -1;
    }
    if (c->nuris == 0) {
        snprintf(err, errlen, "uri: the static:() list is empty; name at "
                 "least one peer broker");
        return -1;
    }
    for (size_t i = 0; i < c->nuris; i++) {
        char m[256];
        bridge_mask_uri(c->uris[i], m, sizeof m);
        if (strchr(c->uris[i], '@')) {
            snprintf(err, errlen, "uri '%s': credentials never go in a URI; "
                     "use login= and passcodeFile=", m);
            return -1;
        }
        if (mqc_uri_check(c->uris[i]) != 0) {
            snprintf(err, errlen, "uri '%s': %s", m, mqc_errmsg(NULL));
            return -1;
        }
    }
    return 0;
}

void bridge_conf_free(bridge_conf *c)
{
    if (!c)
        return;
    free(c->name);
    for (size_t i = 0; i < c->nuris; i++)
        free(c->uris[i]);
    free(c->uris);
    free(c->login);
    free(c->passcode_file);
    memset(c, 0, sizeof *c);
}

int bridge_conf_parse(const char *spec, bridge_conf *out, char *err,
                      size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->ttl = 1;
    out->prefetch = 100;
    bool seen[NKEYS] = {0};
    /* Split on ';' outside parentheses (a URI never holds one, but keep
     * the list intact whatever it holds). */
    const char *s = spec ? spec : "";
    size_t n = strlen(s), start = 0;
    int depth = 0;
    for (size_t i = 0; i <= n; i++) {
        char ch = i < n ? s[i] : ';';
        if (ch == '(')
            depth++;
        else if (ch == ')')
            depth--;
        if (ch != ';' || depth > 0)
            continue;
        size_t a = start, z = i;
        start = i + 1;
        while (a < z && (s[a] == ' ' || s[a] == '\t'))
            a++;
        while (z > a && (s[z - 1] == ' ' || s[z - 1] == '\t'))
            z--;
        if (a == z)
            continue; /* "a=1;;b=2" or a trailing ';' */
        char *item = xstrndup(s + a, z - a);
        char *eq = strchr(item, '=');
        if (!eq) {
            snprintf(err, errlen, "'%s' is not KEY=VALUE", item);
            free(item);
            goto fail;
        }
        *eq = '\0';
        const char *k = item, *v = eq + 1;
        int ki = -1;
        for (int j = 0; j < (int)NKEYS; j++)
            if (!strcmp(k, spec_keys[j]))
                ki = j;
        if (ki < 0) {
            int best = -1;
            size_t bd = 3;
            for (int j = 0; j < (int)NKEYS; j++) {
                size_t d = edit_distance(k, spec_keys[j]);
                if (d < bd) {
                    bd = d;
                    best = j;
                }
            }
            if (best >= 0)
                snprintf(err, errlen, "unknown key '%s' (did you mean '%s'?)",
                         k, spec_keys[best]);
            else
                snprintf(err, errlen, "unknown key '%s' (known: name, uri, "
                         "duplex, networkTTL, prefetch, login, passcodeFile)",
                         k);
            free(item);
            goto fail;
        }
        if (seen[ki]) {
            snprintf(err, errlen, "key '%s' given twice", k);
            free(item);
            goto fail;
        }
        seen[ki] = true;
        int bad = 0;
        const char *expect = "";
        switch (ki) {
        case 0:
            if (!name_ok(v)) {
                bad = 1;
                expect = "1 to 64 of A-Z a-z 0-9 . _ : -";
            } else
                out->name = xstrdup(v);
            break;
        case 1:
            if (parse_static(v, out, err, errlen)) {
                free(item);
                goto fail;
            }
            break;
        case 2:
            if (!strcmp(v, "true"))
                out->duplex = true;
            else if (!strcmp(v, "false"))
                out->duplex = false;
            else {
                bad = 1;
                expect = "true or false";
            }
            break;
        case 3:
            if (parse_uint(v, 1, 255, &out->ttl)) {
                bad = 1;
                expect = "a number from 1 to 255";
            }
            break;
        case 4:
            if (parse_uint(v, 1, 1000000, &out->prefetch)) {
                bad = 1;
                expect = "a number from 1 to 1000000";
            }
            break;
        case 5:
            if (!*v || strpbrk(v, "\r\n")) {
                bad = 1;
                expect = "a user name";
            } else
                out->login = xstrdup(v);
            break;
        case 6:
            if (!*v) {
                bad = 1;
                expect = "a file path";
            } else
                out->passcode_file = xstrdup(v);
            break;
        }
        if (bad) {
            snprintf(err, errlen, "bad value '%s' for %s: expected %s", v, k,
                     expect);
            free(item);
            goto fail;
        }
        free(item);
    }
    if (depth != 0) {
        snprintf(err, errlen, "unbalanced parentheses (a missing ')'?)");
        goto fail;
    }
    if (!out->name) {
        snprintf(err, errlen, "name= is required (e.g. name=to-b;"
                 "uri=static:(tcp://b:61613))");
        goto fail;
    }
    if (!out->nuris) {
        snprintf(err, errlen, "uri= is required (e.g. "
                 "uri=static:(tcp://b:61613))");
        goto fail;
    }
    if (out->passcode_file && !out->login) {
        snprintf(err, errlen, "passcodeFile= without login=");
        goto fail;
    }
    return 0;
fail:
    bridge_conf_free(out);
    out->ttl = 1;
    out->prefetch = 100;
    return -1;
}

int bridge_read_passcode(const char *path, char **out, char *err,
                         size_t errlen)
{
    *out = NULL;
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "passcodeFile %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || (st.st_mode & 0077)) {
        snprintf(err, errlen, "passcodeFile %s is readable or writable by "
                 "other users (mode %03o): run 'chmod 600 %s'", path,
                 (unsigned)(st.st_mode & 0777), path);
        fclose(f);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, f);
    fclose(f);
    if (n <= 0) {
        free(line);
        snprintf(err, errlen, "passcodeFile %s is empty", path);
        return -1;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    *out = line;
    return 0;
}

/* ---- URIs ---------------------------------------------------------------- */

void bridge_mask_uri(const char *uri, char *out, size_t outlen)
{
    /* Any "scheme://user:secret@" part, wherever it is in a nested URI. */
    size_t o = 0;
    const char *p = uri;
    while (*p && o + 1 < outlen) {
        const char *ss = strstr(p, "://");
        if (!ss) {
            break;
        }
        const char *h = ss + 3;
        size_t hl = strcspn(h, "/?,()@");
        size_t upto = (size_t)(h - p);
        if (h[hl] == '@') {
            o += (size_t)snprintf(out + o, outlen - o, "%.*s***@", (int)upto,
                                  p);
            p = h + hl + 1;
        } else {
            o += (size_t)snprintf(out + o, outlen - o, "%.*s", (int)upto, p);
            p = h;
        }
        if (o >= outlen)
            o = outlen - 1;
    }
    if (o + 1 < outlen)
        snprintf(out + o, outlen - o, "%s", p);
    out[outlen - 1] = '\0';
}

/* Does the query q (without '?') set key? */
static bool query_has(const char *q, const char *key)
{
    size_t kl = strlen(key);
    for (const char *p = q; p && *p;) {
        if (!strncasecmp(p, key, kl) && p[kl] == '=')
            return true;
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return false;
}

char *bridge_peer_uri(const char *uri)
{
    static const char *const add[][2] = {
        {"maxReconnectAttempts", "-1"},
        {"initialReconnectDelay", "100"},
        {"maxReconnectDelay", "5000"},
        /* bounds every synchronous call of the bridge thread, so a stop
         * request is seen even while the peer is down */
        {"timeout", "10000"},
        /* a forward in flight when the connection drops is sent again on
         * the next one (its source message is acked only then); the
         * window holds every subscription's prefetch of ordinary sizes */
        {"trackMessages", "true"},
        {"maxCacheSize", "16777216"},
    };
    size_t cap = strlen(uri) + 256;
    char *r = xmalloc(cap);
    const char *q = NULL; /* the failover query, if any */
    if (!strncasecmp(uri, "failover:", 9)) {
        const char *rest = uri + 9;
        if (!strncmp(rest, "//", 2))
            rest += 2;
        if (*rest == '(') {
            int depth = 0;
            const char *k = rest;
            for (; *k; k++) {
                if (*k == '(')
                    depth++;
                else if (*k == ')' && --depth == 0)
                    break;
            }
            if (*k == ')' && k[1] == '?')
                q = k + 2;
        } else {
            /* failover:tcp://a,tcp://b?opts: the query after the last
             * URI is the failover's (libmqclient, as ActiveMQ). */
            const char *last = strrchr(rest, ',');
            q = strchr(last ? last : rest, '?');
            if (q)
                q++;
        }
        snprintf(r, cap, "%s", uri);
    } else {
        snprintf(r, cap, "failover:(%s)", uri);
    }
    size_t used = strlen(r);
    bool have_q = q != NULL;
    for (size_t i = 0; i < sizeof add / sizeof add[0]; i++) {
        if (q && query_has(q, add[i][0]))
            continue;
        used += (size_t)snprintf(r + used, cap - used, "%c%s=%s",
                                 have_q ? '&' : '?', add[i][0], add[i][1]);
        have_q = true;
    }
    return r;
}

/* ---- demand tables ------------------------------------------------------- */

/* Under b->mu. */
static dem *dem_get(dir *d, const char *dest)
{
    for (size_t i = 0; i < d->n; i++)
        if (!strcmp(d->v[i]->dest, dest))
            return d->v[i];
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 16;
        d->v = xrealloc(d->v, d->cap * sizeof *d->v);
    }
    dem *e = xcalloc(1, sizeof *e);
    e->d = d;
    e->dest = xstrdup(dest);
    atomic_init(&e->closing, false);
    atomic_init(&e->skipped, 0);
    d->v[d->n++] = e;
    return e;
}

/* Under b->mu. The demand feed's connection was lost: keep what it said
 * (our subscriptions and the sends in flight survive a short outage). */
static void dem_src_down_locked(dir *d)
{
    if (!d->src_down) {
        d->src_down = true;
        d->down_since = mono_ms();
    }
    d->resync_at = 0;
    d->b->kick = true;
}

/* Under b->mu, on the dispatch thread of the feed's connection, so after
 * every frame of the old connection and before the new snapshot: what
 * the snapshot does not confirm by resync_at is gone. */
static void dem_src_up_locked(dir *d)
{
    d->src_down = false;
    for (size_t i = 0; i < d->n; i++)
        d->v[i]->stale = true;
    d->resync_at = mono_ms() + RESYNC_MS;
    d->b->kick = true;
}

/* After both connections are closed (their subscriptions went with them). */
static void dem_free(dir *d)
{
    for (size_t i = 0; i < d->n; i++) {
        free(d->v[i]->dest);
        free(d->v[i]);
    }
    free(d->v);
    d->v = NULL;
    d->n = d->cap = 0;
}

static uint32_t hdr_u32(const mqc_msg *m, const char *name)
{
    const char *v = mqc_msg_header(m, name);
    if (!v)
        return 0;
    char *end;
    unsigned long x = strtoul(v, &end, 10);
    return (*end || x > UINT32_MAX) ? 0 : (uint32_t)x;
}

/* A /mq/demand frame (dispatch thread of the connection it came on). */
static void on_demand(void *ud, mqc_msg *m)
{
    dir *d = ud;
    bridge *b = d->b;
    const char *dest = mqc_msg_header(m, "mq-dest");
    if (dest &&
        (!strncmp(dest, "/queue/", 7) || !strncmp(dest, "/topic/", 7))) {
        pthread_mutex_lock(&b->mu);
        dem *e = dem_get(d, dest);
        e->n = hdr_u32(m, "mq-consumers");
        e->m = hdr_u32(m, "mq-remote");
        e->stale = false;
        e->updated = mono_ms();
        b->kick = true;
        pthread_cond_signal(&b->cv);
        pthread_mutex_unlock(&b->mu);
        log_msg(LOG_DEBUG, "bridge %s: %s demand %s consumers=%u remote=%u",
                b->name, d->out ? "peer" : "local", dest, e->n, e->m);
    }
    mqc_msg_free(m);
}

/* ---- forwarding ---------------------------------------------------------- */

typedef struct fwd {
    bridge *b;
    dem *e;     /* valid: connections close before the table is freed */
    mqc_msg *m; /* the source message, acked on the receipt */
    bool out;
} fwd;

static bool skip_header(const char *n)
{
    for (size_t i = 0; i < sizeof skip_headers / sizeof skip_headers[0]; i++)
        if (!strcmp(n, skip_headers[i]))
            return true;
    return false;
}

/* The other side answered the SEND (dispatch thread of the destination
 * connection). */
static void on_forwarded(void *ud, int status, const char *msg)
{
    fwd *f = ud;
    bridge *b = f->b;
    if (status == 0) {
        /* Stored there: the source copy may go. A failed ack (the source
         * connection failed over meanwhile) means a redelivery, which the
         * other side drops by its mq-origin audit. */
        mqc_ack(f->m, NULL);
        atomic_fetch_add(f->out ? &b->fwd_out : &b->fwd_in, 1);
    } else if (status == MQC_EBROKER) {
        /* Refused (ERROR): a NACK so the source broker's redelivery limit
         * and dead-letter queue apply to a message nobody can take. */
        set_error(b, "%s refused %s: %s", f->out ? "peer" : "local broker",
                  mqc_msg_dest(f->m), msg ? msg : "ERROR");
        mqc_nack(f->m, NULL);
    } else if (status != MQC_ECLOSED) {
        /* No verdict (the connection stayed down past `timeout`, or was
         * lost without trackMessages): neither ack nor nack (a NACK would
         * count towards the dead-letter queue); the subscription is
         * renewed once the other side is back. Closed: the session ends,
         * and so does the subscription. */
        atomic_fetch_add(&f->e->skipped, 1);
    }
    atomic_fetch_sub(f->out ? &b->inflight_out : &b->inflight_in, 1);
    mqc_msg_free(f->m);
    free(f);
}

/* A message on one of our network subscriptions: send it to the other
 * side (dispatch thread of the source connection). */
static void on_net_message(void *ud, mqc_msg *m)
{
    dem *e = ud;
    dir *d = e->d;
    bridge *b = d->b;
    size_t nh = 0;
    const mqc_header *h = mqc_msg_headers(m, &nh);
    mqc_header *keep = xcalloc(nh ? nh : 1, sizeof *keep);
    size_t nk = 0;
    for (size_t i = 0; i < nh; i++)
        if (!skip_header(h[i].name))
            keep[nk++] = h[i];
    mqc_send_opts so = {.headers = keep, .nheaders = nk};
    size_t len = 0;
    const void *body = mqc_msg_body(m, &len);
    const char *dest = mqc_msg_dest(m);
    fwd *f = xcalloc(1, sizeof *f);
    f->b = b;
    f->e = e;
    f->m = m;
    f->out = d->out;
    atomic_uint_fast64_t *inflight = d->out ? &b->inflight_out
                                            : &b->inflight_in;
    atomic_fetch_add(inflight, 1);
    /* Shared: the bridge thread takes it exclusively after setting
     * e->closing, so once it has, no send of this subscription starts. */
    pthread_mutex_lock(&b->mu);
    bool down = d->src_down; /* where it goes is where the demand came */
    pthread_mutex_unlock(&b->mu);
    pthread_rwlock_rdlock(&b->conn_lk);
    mqc_conn *to = d->out ? b->peer : b->local;
    int rc = atomic_load(&e->closing) ? MQC_ECLOSED
             : down                   ? MQC_ECONN
             : to && dest ? mqc_send_async(to, dest, body, len, &so,
                                           on_forwarded, f)
                          : MQC_ECLOSED;
    char why[256] = "";
    if (rc && to)
        snprintf(why, sizeof why, "%s", mqc_errmsg(to));
    pthread_rwlock_unlock(&b->conn_lk);
    free(keep);
    if (rc) {
        atomic_fetch_sub(inflight, 1);
        if (rc == MQC_ECONN || rc == MQC_ETIMEDOUT) {
            atomic_fetch_add(&e->skipped, 1); /* see dem.skipped */
        } else if (rc != MQC_ECLOSED) {
            set_error(b, "forwarding %s: %s", dest ? dest : "?", why);
            mqc_nack(m, NULL);
        }
        mqc_msg_free(m);
        free(f);
    }
}

/* ---- listeners ----------------------------------------------------------- */

static void peer_command(void *ud, const mqc_frame *f)
{
    bridge *b = ud;
    if (strcmp(f->command, "CONNECTED"))
        return;
    const char *name = NULL;
    for (size_t i = 0; i < f->nheaders; i++)
        if (!strcmp(f->headers[i].name, "mq-broker-name")) {
            name = f->headers[i].value;
            break;
        }
    pthread_mutex_lock(&b->mu);
    if (!name || !*name || !strcmp(name, G.self)) {
        b->not_broker = true;
        snprintf(b->last_error, sizeof b->last_error,
                 !name || !*name
                     ? "peer %s is not an mqbroker (no mq-broker-name in "
                       "CONNECTED)"
                     : "peer %s is this broker (mq-broker-name is our own "
                       "name): check the connector's URI",
                 b->masked);
    } else {
        if (b->peer_name[0] && strcmp(b->peer_name, name))
            b->name_changed = true;
        snprintf(b->peer_name, sizeof b->peer_name, "%s", name);
        b->connected_seen = true;
    }
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void peer_interrupted(void *ud, const char *broker)
{
    bridge *b = ud;
    pthread_mutex_lock(&b->mu);
    dem_src_down_locked(&b->out);
    set_state_locked(b, "down");
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    set_error(b, "lost the peer %s; reconnecting", broker);
}

static void peer_resumed(void *ud, const char *broker)
{
    bridge *b = ud;
    pthread_mutex_lock(&b->mu);
    dem_src_up_locked(&b->out);
    if (!b->not_broker)
        set_state_locked(b, "up");
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

static void local_interrupted(void *ud, const char *broker)
{
    bridge *b = ud;
    pthread_mutex_lock(&b->mu);
    dem_src_down_locked(&b->in);
    /* Expected while this broker stops (or lost its lock). */
    bool stopping = !b->run || b->exit;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    log_msg(stopping ? LOG_DEBUG : LOG_WARN, "bridge %s: lost the local "
            "connection (%s); reconnecting", b->name, broker);
}

static void local_resumed(void *ud, const char *broker)
{
    bridge *b = ud;
    pthread_mutex_lock(&b->mu);
    dem_src_up_locked(&b->in);
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    log_msg(LOG_INFO, "bridge %s: local connection back (%s)", b->name,
            broker);
}

static void on_exception(bridge *b, bool peer, int code, const char *msg)
{
    set_error(b, "%s: %s", peer ? "peer" : "local connection", msg);
    if (code == MQC_EGAVEUP) {
        pthread_mutex_lock(&b->mu);
        b->gave_up = true;
        pthread_cond_signal(&b->cv);
        pthread_mutex_unlock(&b->mu);
    }
}

static void peer_exception(void *ud, int code, const char *msg)
{
    on_exception(ud, true, code, msg);
}

static void local_exception(void *ud, int code, const char *msg)
{
    on_exception(ud, false, code, msg);
}

/* libmqclient's log lines, prefixed with the bridge. Failed connection
 * attempts also become last_error, so /mq/bridges says why it is down. */
static void peer_log(void *ud, mqc_log_level lvl, const char *msg)
{
    bridge *b = ud;
    static const char attempt[] = "connect attempt failed: ";
    bool failed = !strncmp(msg, attempt, sizeof attempt - 1);
    if (lvl <= MQC_LOG_WARN || failed) {
        if (failed)
            msg += sizeof attempt - 1;
        pthread_mutex_lock(&b->mu);
        put_error(b->last_error, sizeof b->last_error, "", msg);
        pthread_mutex_unlock(&b->mu);
    }
    if (log_enabled((int)lvl))
        log_msg((int)lvl, "bridge %s: peer: %s%s", b->name,
                failed ? attempt : "", msg);
}

static void local_log(void *ud, mqc_log_level lvl, const char *msg)
{
    bridge *b = ud;
    static const char attempt[] = "connect attempt failed: ";
    bool failed = !strncmp(msg, attempt, sizeof attempt - 1);
    pthread_mutex_lock(&b->mu);
    bool stopping = !b->run || b->exit;
    if (!stopping && (failed || lvl <= MQC_LOG_WARN))
        put_error(b->last_error, sizeof b->last_error, "local connection: ",
                  failed ? msg + sizeof attempt - 1 : msg);
    pthread_mutex_unlock(&b->mu);
    int level = stopping && lvl == MQC_LOG_WARN ? LOG_DEBUG : (int)lvl;
    if (log_enabled(level))
        log_msg(level, "bridge %s: local: %s", b->name, msg);
}

/* ---- the bridge thread --------------------------------------------------- */

/* Wait up to ms, or until stopped. true: still running. */
static bool pause_ms(bridge *b, int ms)
{
    int64_t end = now_ms() + ms;
    pthread_mutex_lock(&b->mu);
    while (b->run && !b->exit && now_ms() < end)
        cv_wait_ms(&b->cv, &b->mu, (int)(end - now_ms()) + 1);
    bool r = b->run && !b->exit;
    pthread_mutex_unlock(&b->mu);
    return r;
}

static bool want_sub(bridge *b, const dir *d, const dem *e)
{
    uint32_t m = e->m;
    if (!d->out) {
        /* The local feed counts our own forward subscription for this
         * destination as remote demand (its mq-bridge is the peer, not
         * us): discount it, or the two directions would feed each other. */
        for (size_t i = 0; i < b->out.n; i++) {
            const dem *o = b->out.v[i];
            /* ... also for a moment after it ended, until the feed says
             * so (no pull on a count that still holds it); bounded, so a
             * frame that crossed the UNSUBSCRIBE cannot hide real demand
             * for long (apply runs every TICK_MS) */
            bool just_ended = o->ended && o->ended >= e->updated &&
                              mono_ms() - o->ended < TICK_MS;
            if ((o->sub || just_ended) && !strcmp(o->dest, e->dest)) {
                m = m > 0 ? m - 1 : 0;
                break;
            }
        }
    }
    /* Consumers there, or (multi-hop) network consumers there that a
     * message may still reach within the TTL. */
    return e->n > 0 || (m > 0 && b->ttl > 1);
}

static mqc_sub *net_subscribe(bridge *b, dir *d, dem *e)
{
    const char *dest = e->dest;
    char ttl[16], pf[16], peer_name[72];
    snprintf(ttl, sizeof ttl, "%u", b->ttl);
    snprintf(pf, sizeof pf, "%u", b->prefetch);
    pthread_mutex_lock(&b->mu);
    snprintf(peer_name, sizeof peer_name, "%s", b->peer_name);
    pthread_mutex_unlock(&b->mu);
    /* mq-bridge names the broker the messages go to. */
    mqc_header h[] = {
        {"mq-bridge", d->out ? peer_name : G.self},
        {"mq-network-ttl", ttl},
        {"activemq.prefetchSize", pf},
    };
    mqc_sub_opts so = {.headers = h, .nheaders = 3, .on_message =
                           on_net_message, .ud = e};
    mqc_conn *c = d->out ? b->local : b->peer;
    mqc_sub *s = NULL;
    int rc = mqc_subscribe(c, dest, MQC_ACK_CLIENT_INDIVIDUAL, &so, &s);
    if (rc) {
        set_error(b, "network subscription to %s on the %s: %s", dest,
                  d->out ? "local broker" : "peer", mqc_errmsg(c));
        return NULL;
    }
    log_msg(LOG_INFO, "bridge %s: %s %s (%s demand)", b->name,
            d->out ? "forwarding" : "pulling", dest,
            d->out ? "peer" : "local");
    return s;
}

/* End e's subscription without losing or doubling a message: first no
 * new forward starts, then the forwards in flight get their RECEIPT and
 * their ACK is written (mqc_flush waits for the completions), then the
 * UNSUBSCRIBE goes out behind those ACKs and the source broker takes back
 * what is left. Skipped drain: the other side is unreachable anyway. */
static void end_sub(bridge *b, dir *d, dem *e, bool drain)
{
    mqc_sub *s = e->sub;
    e->sub = NULL;
    atomic_store(&e->closing, true);
    pthread_rwlock_wrlock(&b->conn_lk); /* waits out a send starting now */
    mqc_conn *to = d->out ? b->peer : b->local;
    pthread_rwlock_unlock(&b->conn_lk);
    if (drain && to)
        mqc_flush(to, DRAIN_MS); /* to stays open: only we close it */
    int rc = mqc_unsubscribe(s);
    atomic_store(&e->closing, false);
    pthread_mutex_lock(&b->mu);
    e->ended = mono_ms();
    pthread_mutex_unlock(&b->mu);
    log_msg(LOG_INFO, "bridge %s: %s %s%s%s", b->name,
            d->out ? "stopped forwarding" : "stopped pulling", e->dest,
            rc ? ": " : "", rc ? mqc_strerror(rc) : "");
}

/* Make the subscriptions of d match the demand. Only this thread touches
 * dem.sub; the table itself may grow under b->mu meanwhile. */
static void apply(bridge *b, dir *d, bool drop_all)
{
    int64_t now = now_ms();
    pthread_mutex_lock(&b->mu);
    if (d->resync_at && now >= d->resync_at) {
        d->resync_at = 0;
        for (size_t i = 0; i < d->n; i++)
            if (d->v[i]->stale) {
                d->v[i]->stale = false;
                d->v[i]->n = d->v[i]->m = 0;
            }
    }
    /* The demand's source is also where the messages go: while it is
     * down keep everything as it is (session() starts over after
     * OUTAGE_RELEASE_MS). */
    bool down = d->src_down;
    /* Our subscriptions live on the other connection (the other
     * direction's demand source): while it is down a SUBSCRIBE would only
     * wait; its `resumed` kicks us again. */
    bool subs_down = d->out ? b->in.src_down : b->out.src_down;
    pthread_mutex_unlock(&b->mu);
    if (down && !drop_all)
        return;
    for (size_t i = 0;; i++) {
        pthread_mutex_lock(&b->mu);
        if (i >= d->n || !b->run || b->exit || (d->src_down && !drop_all)) {
            pthread_mutex_unlock(&b->mu);
            return;
        }
        dem *e = d->v[i];
        bool want = !drop_all && want_sub(b, d, e);
        pthread_mutex_unlock(&b->mu);
        if (want && !e->sub && !subs_down && now_ms() >= e->retry_at) {
            atomic_store(&e->skipped, 0); /* those went back already */
            e->sub = net_subscribe(b, d, e);
            if (!e->sub)
                e->retry_at = now_ms() + SUB_RETRY_MS;
        } else if (!want && e->sub) {
            end_sub(b, d, e, !down);
        } else if (want && e->sub && atomic_load(&e->skipped) > 0) {
            unsigned k = atomic_exchange(&e->skipped, 0);
            log_msg(LOG_INFO, "bridge %s: %u message(s) of %s left without "
                    "a verdict: renewing the subscription", b->name, k,
                    e->dest);
            end_sub(b, d, e, true);
            e->sub = net_subscribe(b, d, e);
            if (!e->sub)
                e->retry_at = now_ms() + SUB_RETRY_MS;
        }
    }
}

static mqc_conn *open_conn(bridge *b, bool peer)
{
    mqc_header peer_h[] = {{"mq-bridge", G.self}};
    mqc_header local_h[] = {{"mq-bridge", G.self},
                            {"mq-bridge-token", G.token}};
    mqc_conn_opts o = {0};
    if (peer) {
        o.login = b->login;
        o.passcode = b->passcode;
        o.connect_headers = peer_h;
        o.nconnect_headers = 1;
        o.listener.command = peer_command;
        o.listener.interrupted = peer_interrupted;
        o.listener.resumed = peer_resumed;
        o.listener.exception = peer_exception;
        o.log = peer_log;
    } else {
        o.connect_headers = local_h;
        o.nconnect_headers = 2;
        o.listener.interrupted = local_interrupted;
        o.listener.resumed = local_resumed;
        o.listener.exception = local_exception;
        o.log = local_log;
    }
    o.listener.ud = b;
    o.log_ud = b;
    /* Failed attempts are DEBUG lines: peer_log/local_log keep the latest
     * as last_error (the broker log shows them only at debug). */
    o.log_level = MQC_LOG_DEBUG;
    mqc_conn *c = NULL;
    if (mqc_open(peer ? b->peer_uri : G.local_uri, &o, &c) != 0)
        set_error(b, "cannot open the %s connection: %s",
                  peer ? "peer" : "local", mqc_errmsg(NULL));
    return c;
}

static void close_conns(bridge *b)
{
    pthread_rwlock_wrlock(&b->conn_lk);
    mqc_conn *p = b->peer, *l = b->local;
    b->peer = b->local = NULL;
    pthread_rwlock_unlock(&b->conn_lk);
    /* Peer first: its pending sends complete (ECLOSED) while the local
     * connection can still take their outcome; then the local broker
     * gets back every message we did not ack. */
    mqc_close(p);
    mqc_close(l);
    pthread_mutex_lock(&b->mu);
    for (size_t i = 0; i < b->out.n; i++)
        b->out.v[i]->sub = NULL; /* freed by mqc_close */
    for (size_t i = 0; i < b->in.n; i++)
        b->in.v[i]->sub = NULL;
    dem_free(&b->out);
    dem_free(&b->in);
    b->out.src_down = b->in.src_down = false;
    b->out.resync_at = b->in.resync_at = 0;
    b->connected_seen = b->not_broker = b->name_changed = b->gave_up = false;
    pthread_mutex_unlock(&b->mu);
}

/* One session: connect, follow the demand, until stopped or a reason to
 * start over. Returns the ms to wait before the next session. */
static int session(bridge *b)
{
    int delay = 1000;
    mqc_sub *demand_peer = NULL, *demand_local = NULL; /* freed by close */
    pthread_mutex_lock(&b->mu);
    b->peer_name[0] = '\0';
    set_state_locked(b, "connecting");
    pthread_mutex_unlock(&b->mu);

    mqc_conn *local = open_conn(b, false);
    mqc_conn *peer = local ? open_conn(b, true) : NULL;
    pthread_rwlock_wrlock(&b->conn_lk);
    b->local = local;
    b->peer = peer;
    pthread_rwlock_unlock(&b->conn_lk);
    if (!peer)
        goto out;

    /* Wait for the peer's CONNECTED and its verdict. */
    pthread_mutex_lock(&b->mu);
    while (b->run && !b->exit && !b->connected_seen && !b->not_broker &&
           !b->gave_up)
        cv_wait_ms(&b->cv, &b->mu, TICK_MS);
    bool ok = b->run && !b->exit && b->connected_seen && !b->not_broker &&
              !b->gave_up;
    bool not_broker = b->not_broker;
    pthread_mutex_unlock(&b->mu);
    if (not_broker) {
        pthread_mutex_lock(&b->mu);
        set_state_locked(b, "down");
        char e[256];
        snprintf(e, sizeof e, "%s", b->last_error);
        pthread_mutex_unlock(&b->mu);
        log_msg(LOG_WARN, "bridge %s: %s; next try in %d s", b->name, e,
                NOT_BROKER_RETRY_MS / 1000);
        delay = NOT_BROKER_RETRY_MS;
        goto out;
    }
    if (!ok)
        goto out;

    mqc_sub_opts dso = {.on_message = on_demand, .ud = &b->out};
    if (mqc_subscribe(peer, "/mq/demand", MQC_ACK_AUTO, &dso, &demand_peer)) {
        set_error(b, "subscribing to the peer's /mq/demand: %s",
                  mqc_errmsg(peer));
        delay = SUB_RETRY_MS; /* e.g. refused: not every second */
        goto out;
    }
    /* The local connection is needed from the first forwarded message on. */
    while (should_run(b) && mqc_wait_connected(local, TICK_MS) == MQC_ETIMEDOUT)
        ;
    if (!should_run(b))
        goto out; /* not into a call that waits up to `timeout` */
    if (b->duplex) {
        dso.ud = &b->in;
        if (mqc_subscribe(local, "/mq/demand", MQC_ACK_AUTO, &dso,
                          &demand_local)) {
            set_error(b, "subscribing to the local /mq/demand: %s",
                      mqc_errmsg(local));
            delay = SUB_RETRY_MS;
            goto out;
        }
    }
    pthread_mutex_lock(&b->mu);
    set_state_locked(b, "up");
    pthread_mutex_unlock(&b->mu);

    for (;;) {
        pthread_mutex_lock(&b->mu);
        if (!b->kick && b->run && !b->exit && !b->not_broker && !b->gave_up &&
            !b->name_changed)
            cv_wait_ms(&b->cv, &b->mu, TICK_MS);
        b->kick = false;
        bool run = b->run && !b->exit;
        bool again = b->not_broker || b->gave_up;
        bool renamed = b->name_changed;
        b->name_changed = false;
        pthread_mutex_unlock(&b->mu);
        if (!run)
            break;
        if (again) {
            /* Failed over to something that is not an mqbroker, or a
             * connection gave up (a user URI with maxReconnectAttempts):
             * start over with fresh connections, slowly. */
            pthread_mutex_lock(&b->mu);
            set_state_locked(b, "down");
            pthread_mutex_unlock(&b->mu);
            delay = NOT_BROKER_RETRY_MS;
            break;
        }
        pthread_mutex_lock(&b->mu);
        dir *gone = b->out.src_down ? &b->out
                    : b->duplex && b->in.src_down ? &b->in : NULL;
        bool release = gone && now_ms() - gone->down_since >=
                                   OUTAGE_RELEASE_MS;
        pthread_mutex_unlock(&b->mu);
        if (release) {
            /* Closing both connections gives the source brokers back what
             * our subscriptions hold (their own consumers may take it) and
             * drops the unconfirmed sends instead of replaying them later
             * (the copy may be consumed at the source by then). */
            log_msg(LOG_WARN, "bridge %s: %s down for %d s: giving back the "
                    "messages held for it and starting over", b->name,
                    gone == &b->out ? "peer" : "local connection",
                    OUTAGE_RELEASE_MS / 1000);
            delay = 100; /* at once, but never a busy loop */
            break;
        }
        if (renamed) {
            /* The mq-bridge of our local subscriptions names the old
             * peer: drop them all; the next pass subscribes again. */
            pthread_mutex_lock(&b->mu);
            log_msg(LOG_INFO, "bridge %s: the peer is now %s", b->name,
                    b->peer_name);
            pthread_mutex_unlock(&b->mu);
            apply(b, &b->out, true);
        }
        apply(b, &b->out, false);
        if (b->duplex)
            apply(b, &b->in, false);
    }
out:
    close_conns(b);
    pthread_mutex_lock(&b->mu);
    set_state_locked(b, b->run && !b->exit ? "down" : "stopped");
    pthread_mutex_unlock(&b->mu);
    return delay;
}

static void *bridge_main(void *arg)
{
    bridge *b = arg;
    for (;;) {
        pthread_mutex_lock(&b->mu);
        while (!b->run && !b->exit)
            pthread_cond_wait(&b->cv, &b->mu);
        bool exit_now = b->exit;
        pthread_mutex_unlock(&b->mu);
        if (exit_now)
            break;
        int delay = session(b);
        if (should_run(b))
            pause_ms(b, delay);
    }
    return NULL;
}

/* ---- public API ---------------------------------------------------------- */

static bridge *bridge_new(const bridge_conf *c, size_t k, const char *passcode)
{
    bridge *b = xcalloc(1, sizeof *b);
    if (c->nuris > 1)
        snprintf(b->name, sizeof b->name, "%s#%zu", c->name, k + 1);
    else
        snprintf(b->name, sizeof b->name, "%s", c->name);
    bridge_mask_uri(c->uris[k], b->masked, sizeof b->masked);
    b->peer_uri = bridge_peer_uri(c->uris[k]);
    b->duplex = c->duplex;
    b->ttl = c->ttl;
    b->prefetch = c->prefetch;
    b->login = c->login ? xstrdup(c->login) : NULL;
    b->passcode = passcode ? xstrdup(passcode) : NULL;
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_rwlock_init(&b->conn_lk, NULL);
    b->out.b = b->in.b = b;
    b->out.out = true;
    snprintf(b->state, sizeof b->state, "stopped");
    return b;
}

static void bridge_destroy(bridge *b)
{
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    pthread_rwlock_destroy(&b->conn_lk);
    free(b->peer_uri);
    free(b->login);
    wipe_free(b->passcode);
    free(b);
}

/* The local connection's URI: the listen address (loopback for a wildcard
 * one), ssl:// when the listener is TLS. */
static char *local_uri(const config *cfg, int port)
{
    const char *h = cfg->listen_host;
    if (!h || !*h || !strcmp(h, "0.0.0.0") || !strcmp(h, "*"))
        h = "127.0.0.1";
    else if (!strcmp(h, "::") || !strcmp(h, "[::]"))
        h = "::1";
    bool v6 = strchr(h, ':') && h[0] != '[';
    char inner[3072];
    if (cfg->tls_cert)
        /* Our own certificate file is the trust anchor (a self-signed one,
         * or a chain that ends with its root); with --tls-ca the listener
         * wants a client certificate: ours again (the token is what
         * authenticates the bridge). */
        snprintf(inner, sizeof inner,
                 "ssl://%s%s%s:%d?sslVerifyHost=false&sslCaFile=%s%s%s%s%s",
                 v6 ? "[" : "", h, v6 ? "]" : "", port, cfg->tls_cert,
                 cfg->tls_ca ? "&sslCertFile=" : "",
                 cfg->tls_ca ? cfg->tls_cert : "",
                 cfg->tls_ca && cfg->tls_key ? "&sslKeyFile=" : "",
                 cfg->tls_ca && cfg->tls_key ? cfg->tls_key : "");
    else
        snprintf(inner, sizeof inner, "tcp://%s%s%s:%d", v6 ? "[" : "", h,
                 v6 ? "]" : "", port);
    return bridge_peer_uri(inner);
}

int bridge_init(const config *cfg, const char *self, int local_port,
                const char *token, char *err, size_t errlen)
{
    bridge_free_all();
    bridge_conf *confs = xcalloc(cfg->n_net_connectors + 1, sizeof *confs);
    char **pass = xcalloc(cfg->n_net_connectors + 1, sizeof *pass);
    size_t nc = 0, total = 0;
    int rc = -1;
    for (size_t i = 0; i < cfg->n_net_connectors; i++) {
        const char *where = cfg->net_connector_where
                                ? cfg->net_connector_where[i] : "?";
        char e[512];
        if (bridge_conf_parse(cfg->net_connectors[i], &confs[nc], e,
                              sizeof e)) {
            snprintf(err, errlen, "%s: network-connector: %s", where, e);
            goto done;
        }
        nc++;
        for (size_t j = 0; j + 1 < nc; j++)
            if (!strcmp(confs[j].name, confs[nc - 1].name)) {
                snprintf(err, errlen, "%s: network-connector: name '%s' is "
                         "already used by another connector", where,
                         confs[nc - 1].name);
                goto done;
            }
        if (confs[nc - 1].passcode_file &&
            bridge_read_passcode(confs[nc - 1].passcode_file, &pass[nc - 1], e,
                                 sizeof e)) {
            snprintf(err, errlen, "%s: network-connector: %s", where, e);
            goto done;
        }
        total += confs[nc - 1].nuris;
    }
    rc = 0;
    if (total == 0)
        goto done;
    G.self = xstrdup(self);
    G.token = xstrdup(token ? token : "");
    G.local_uri = local_uri(cfg, local_port);
    G.v = xcalloc(total, sizeof *G.v);
    for (size_t i = 0; i < nc; i++)
        for (size_t k = 0; k < confs[i].nuris; k++) {
            bridge *b = bridge_new(&confs[i], k, pass[i]);
            G.v[G.n++] = b;
            log_msg(LOG_INFO, "network connector %s: peer %s, duplex=%s, "
                    "networkTTL=%u, prefetch=%u%s%s", b->name, b->masked,
                    b->duplex ? "true" : "false", b->ttl, b->prefetch,
                    b->login ? ", login=" : "", b->login ? b->login : "");
        }
done:
    for (size_t i = 0; i < nc; i++) {
        bridge_conf_free(&confs[i]);
        wipe_free(pass[i]);
    }
    free(confs);
    free(pass);
    return rc;
}

void bridge_start_all(void)
{
    for (size_t i = 0; i < G.n; i++) {
        bridge *b = G.v[i];
        pthread_mutex_lock(&b->mu);
        b->run = true;
        pthread_cond_signal(&b->cv);
        pthread_mutex_unlock(&b->mu);
        if (!b->thread_started) {
            int rc = pthread_create(&b->tid, NULL, bridge_main, b);
            if (rc == 0)
                b->thread_started = true;
            else
                set_error(b, "cannot start its thread: %s", strerror(rc));
        }
    }
}

void bridge_stop_all(void)
{
    for (size_t i = 0; i < G.n; i++) {
        bridge *b = G.v[i];
        pthread_mutex_lock(&b->mu);
        b->run = false;
        pthread_cond_signal(&b->cv);
        pthread_mutex_unlock(&b->mu);
    }
}

void bridge_free_all(void)
{
    for (size_t i = 0; i < G.n; i++) {
        bridge *b = G.v[i];
        pthread_mutex_lock(&b->mu);
        b->run = false;
        b->exit = true;
        pthread_cond_signal(&b->cv);
        pthread_mutex_unlock(&b->mu);
    }
    for (size_t i = 0; i < G.n; i++) {
        bridge *b = G.v[i];
        if (b->thread_started)
            pthread_join(b->tid, NULL);
        bridge_destroy(b);
    }
    free(G.v);
    free(G.self);
    wipe_free(G.token);
    free(G.local_uri);
    memset(&G, 0, sizeof G);
}

size_t bridge_count(void) { return G.n; }

size_t bridge_snapshot(bridge_stat *out, size_t max)
{
    size_t n = G.n < max ? G.n : max;
    for (size_t i = 0; i < n; i++) {
        bridge *b = G.v[i];
        bridge_stat *s = &out[i];
        memset(s, 0, sizeof *s);
        snprintf(s->name, sizeof s->name, "%s", b->name);
        snprintf(s->peer, sizeof s->peer, "%s", b->masked);
        s->duplex = b->duplex;
        pthread_mutex_lock(&b->mu);
        snprintf(s->peer_name, sizeof s->peer_name, "%s", b->peer_name);
        snprintf(s->state, sizeof s->state, "%s", b->state);
        snprintf(s->last_error, sizeof s->last_error, "%s", b->last_error);
        pthread_mutex_unlock(&b->mu);
        s->fwd_out = atomic_load(&b->fwd_out);
        s->fwd_in = atomic_load(&b->fwd_in);
        s->inflight_out = atomic_load(&b->inflight_out);
        s->inflight_in = atomic_load(&b->inflight_in);
    }
    return n;
}
