/*
 * stomp-load - a STOMP 1.2 load generator for any broker.
 *
 * N producer threads send persistent messages and wait for a RECEIPT for
 * each (up to --window in flight); M consumer threads subscribe with
 * ack:client-individual and ACK every message (with or without a receipt).
 * It reports messages/s and latency percentiles for send-with-receipt,
 * for delivery (SEND written -> MESSAGE read) and for ack-with-receipt,
 * as a table and optionally as JSON. Every run is bounded by --timeout.
 *
 * Each message carries x-load-run (this run's id), x-load-seq
 * (producer:number) and x-load-ts (CLOCK_MONOTONIC ns at send); consumers
 * use them to count missing, duplicated and foreign messages, so only
 * producers and consumers of the same process are compared (no clock skew).
 *
 * Only libc and pthreads. Exit status: 0 ok, 1 failure (errors, missing or
 * duplicated messages), 2 usage error.
 */
#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADERS 64
#define MAX_FRAME (64u * 1024u * 1024u)

/* ------------------------------------------------------------------------
 * Options
 * ---------------------------------------------------------------------- */
static struct {
    char host[256];
    char port[16];
    const char *dest;
    int producers;
    int consumers;
    long messages; /* per producer; 0 with --duration */
    double duration; /* seconds; 0 with --messages */
    size_t size;
    int window;
    int persistent;
    int ack_receipt;
    long prefetch; /* -1: not sent */
    const char *login;
    const char *passcode;
    double drain_timeout;
    double timeout;
    const char *json;
    int quiet;
} opt = {
    .host = "127.0.0.1",
    .port = "61613",
    .dest = "/queue/stomp-load",
    .producers = 1,
    .consumers = 1,
    .messages = 1000,
    .size = 256,
    .window = 1,
    .persistent = 1,
    .prefetch = -1,
    .drain_timeout = 5.0,
    .timeout = 300.0,
};

static void usage(FILE *f)
{
    fprintf(f,
"Usage: stomp-load [OPTIONS]\n"
"Load generator for STOMP 1.2 brokers: producers send persistent messages\n"
"with receipts, consumers ACK (client-individual) every message; reports\n"
"msg/s and latency p50/p99 for send+receipt, delivery and ack+receipt.\n"
"\n"
"  --broker HOST:PORT    broker address (default 127.0.0.1:61613)\n"
"  --dest DEST           destination (default /queue/stomp-load); a /topic/\n"
"                        destination makes every consumer expect every message\n"
"  --producers N         producer threads, one connection each (default 1; 0 =\n"
"                        consume only, e.g. to drain a backlog: every message\n"
"                        counts, delivery latency is not measured)\n"
"  --consumers M         consumer threads, one connection each (default 1; 0 =\n"
"                        produce only)\n"
"  --messages N          messages per producer (default 1000)\n"
"  --duration SEC        produce for SEC seconds instead of a count\n"
"  --size BYTES          body size (default 256)\n"
"  --window W            sends per producer awaiting their RECEIPT (default 1:\n"
"                        each send waits for its receipt)\n"
"  --non-persistent      omit persistent:true\n"
"  --ack-receipt         consumers ask a RECEIPT for every ACK (default: none)\n"
"  --prefetch N          send activemq.prefetchSize:N on SUBSCRIBE\n"
"  --login USER          CONNECT login\n"
"  --passcode PW         CONNECT passcode\n"
"  --drain-timeout SEC   after the producers finish, consumers stop once no\n"
"                        message came for SEC seconds (default 5)\n"
"  --timeout SEC         hard limit for the whole run (default 300)\n"
"  --json FILE           also write the results as JSON to FILE ('-' = stdout)\n"
"  --quiet               no table on stdout\n"
"  --help                this text\n"
"\n"
"Exit status: 0 ok; 1 errors, missing or duplicated messages; 2 usage.\n");
}

/* ------------------------------------------------------------------------
 * Time, logging, shared state
 * ---------------------------------------------------------------------- */
static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t g_start_ns;
static uint64_t g_deadline_ns;
static atomic_int g_stop;           /* hard stop (timeout, fatal error) */
static atomic_int g_producers_left; /* producers still running */
static atomic_uint_fast64_t g_sent; /* sends confirmed by a receipt */
static atomic_uint_fast64_t g_received; /* own messages delivered, all consumers */
static atomic_int g_consumers_ready;
static atomic_uint_fast64_t g_producers_done_ns; /* when the last one ended */
static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static char g_run_id[40];

static void logmsg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    pthread_mutex_lock(&g_log_mu);
    fprintf(stderr, "stomp-load: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    pthread_mutex_unlock(&g_log_mu);
    va_end(ap);
}

static int time_up(void)
{
    if (atomic_load(&g_stop))
        return 1;
    if (now_ns() >= g_deadline_ns) {
        if (!atomic_exchange(&g_stop, 1))
            logmsg("--timeout of %.1f s reached: stopping", opt.timeout);
        return 1;
    }
    return 0;
}

/* Growable array of latency samples in ns. */
typedef struct {
    uint64_t *v;
    size_t n, cap;
} samples;

static void samples_add(samples *s, uint64_t x)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        uint64_t *v = realloc(s->v, cap * sizeof *v);
        if (!v)
            return; /* out of memory: drop the sample, not the run */
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = x;
}

static void samples_merge(samples *dst, const samples *src)
{
    for (size_t i = 0; i < src->n; i++)
        samples_add(dst, src->v[i]);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* p in [0,1]; the nearest-rank percentile. Samples must be sorted. */
static double pct_ms(const samples *s, double p)
{
    if (!s->n)
        return 0.0;
    size_t k = (size_t)(p * (double)s->n + 0.999999);
    if (k < 1)
        k = 1;
    if (k > s->n)
        k = s->n;
    return (double)s->v[k - 1] / 1e6;
}

/* ------------------------------------------------------------------------
 * STOMP connection: blocking socket + read buffer + frame parser
 * ---------------------------------------------------------------------- */
typedef struct {
    char *command;
    int nh;
    char *name[MAX_HEADERS];
    char *value[MAX_HEADERS];
    char *body;
    size_t body_len;
    char *mem; /* owns everything above */
} frame;

typedef struct {
    int fd;
    char *buf;
    size_t off, len, cap; /* unparsed bytes are buf[off..len) */
    char *out; /* frame being written */
    size_t out_cap;
    int v12; /* server speaks 1.2 */
    char who[32];
} conn;

static const char *frame_get(const frame *f, const char *name)
{
    for (int i = 0; i < f->nh; i++) /* first occurrence wins (1.2) */
        if (!strcmp(f->name[i], name))
            return f->value[i];
    return NULL;
}

static void frame_free(frame *f)
{
    free(f->mem);
    memset(f, 0, sizeof *f);
}

static int conn_open(conn *c, const char *who)
{
    memset(c, 0, sizeof *c);
    c->fd = -1;
    snprintf(c->who, sizeof c->who, "%s", who);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(opt.host, opt.port, &hints, &res);
    if (rc) {
        logmsg("%s: cannot resolve %s:%s: %s", who, opt.host, opt.port,
               gai_strerror(rc));
        return -1;
    }
    int err = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            c->fd = fd;
            break;
        }
        err = errno;
        close(fd);
    }
    freeaddrinfo(res);
    if (c->fd < 0) {
        logmsg("%s: cannot connect to %s:%s: %s", who, opt.host, opt.port,
               strerror(err));
        return -1;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return 0;
}

static void conn_close(conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->buf);
    free(c->out);
    c->buf = c->out = NULL;
}

static int write_all(conn *c, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            logmsg("%s: write failed: %s", c->who, strerror(errno));
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Append s to the output buffer, escaping it as a 1.2 header value if esc. */
static int out_put(conn *c, size_t *len, const char *s, size_t n, int esc)
{
    size_t need = *len + 2 * n + 1;
    if (need > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 1024;
        while (cap < need)
            cap *= 2;
        char *o = realloc(c->out, cap);
        if (!o) {
            logmsg("%s: out of memory", c->who);
            return -1;
        }
        c->out = o;
        c->out_cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (esc && (ch == '\\' || ch == '\n' || ch == '\r' || ch == ':')) {
            c->out[(*len)++] = '\\';
            ch = ch == '\\' ? '\\' : ch == '\n' ? 'n' : ch == '\r' ? 'r' : 'c';
        }
        c->out[(*len)++] = ch;
    }
    return 0;
}

/* Write one frame. hdrs is a NULL-terminated name, value, name, value...
 * list. A content-length header is added when body != NULL. */
static int send_frame(conn *c, const char *cmd, const char *const *hdrs,
                      const void *body, size_t body_len)
{
    size_t len = 0;
    int esc = c->v12 && strcmp(cmd, "CONNECT") && strcmp(cmd, "STOMP");
    if (out_put(c, &len, cmd, strlen(cmd), 0) || out_put(c, &len, "\n", 1, 0))
        return -1;
    for (int i = 0; hdrs && hdrs[i]; i += 2) {
        if (out_put(c, &len, hdrs[i], strlen(hdrs[i]), esc) ||
            out_put(c, &len, ":", 1, 0) ||
            out_put(c, &len, hdrs[i + 1], strlen(hdrs[i + 1]), esc) ||
            out_put(c, &len, "\n", 1, 0))
            return -1;
    }
    if (body) {
        char cl[48];
        int n = snprintf(cl, sizeof cl, "content-length:%zu\n", body_len);
        if (out_put(c, &len, cl, (size_t)n, 0))
            return -1;
    }
    if (out_put(c, &len, "\n", 1, 0) ||
        (body_len && out_put(c, &len, body, body_len, 0)) ||
        out_put(c, &len, "\0", 1, 0))
        return -1;
    return write_all(c, c->out, len);
}

static void unescape(char *s)
{
    char *w = s;
    for (char *r = s; *r; r++) {
        if (*r == '\\' && r[1]) {
            r++;
            *w++ = *r == 'n' ? '\n' : *r == 'r' ? '\r' : *r == 'c' ? ':' : *r;
        } else {
            *w++ = *r;
        }
    }
    *w = 0;
}

/* Try to cut one complete frame off the read buffer (from c->off). Returns
 * 1 with *f filled, 0 if more bytes are needed, -1 on a protocol error. */
static int parse_frame(conn *c, frame *f)
{
    char *b = c->buf + c->off;
    size_t len = c->len - c->off;
    size_t i = 0;
    while (i < len && (b[i] == '\n' || b[i] == '\r'))
        i++; /* heart-beats */
    c->off += i;
    b += i;
    len -= i;
    if (!len)
        return 0;
    /* End of the header block: an empty line ("\n\n" or "\n\r\n"). */
    size_t hlen = 0, body_start = 0;
    long long clen = -1;
    for (size_t p = 0; p < len; p++) {
        if (b[p] != '\n')
            continue;
        size_t q = p + 1;
        if (q < len && b[q] == '\n') {
            hlen = p;
            body_start = q + 1;
            break;
        }
        if (q + 1 < len && b[q] == '\r' && b[q + 1] == '\n') {
            hlen = p;
            body_start = q + 2;
            break;
        }
        /* A header line starts at q: note content-length on the way. The
         * digits are read within len: the buffer has no NUL after the
         * bytes received (strtoll read past it once, under ASan). */
        if (clen < 0 && len - q > 15 && !memcmp(b + q, "content-length:", 15)) {
            clen = 0;
            for (size_t d = q + 15; d < len && b[d] >= '0' && b[d] <= '9' &&
                                    clen <= (long long)MAX_FRAME;
                 d++)
                clen = clen * 10 + (b[d] - '0');
        }
    }
    if (!body_start) {
        if (len > 1024 * 1024) {
            logmsg("%s: header block over 1 MiB: protocol error", c->who);
            return -1;
        }
        return 0;
    }
    size_t blen;
    if (clen >= 0) {
        if ((unsigned long long)clen > MAX_FRAME) {
            logmsg("%s: frame with content-length %lld: too big", c->who, clen);
            return -1;
        }
        if (body_start + (size_t)clen + 1 > len)
            return 0;
        blen = (size_t)clen;
        if (b[body_start + blen] != 0) {
            logmsg("%s: frame body not followed by NUL", c->who);
            return -1;
        }
    } else {
        char *nul = memchr(b + body_start, 0, len - body_start);
        if (!nul) {
            if (len > MAX_FRAME) {
                logmsg("%s: frame larger than %u bytes", c->who, MAX_FRAME);
                return -1;
            }
            return 0;
        }
        blen = (size_t)(nul - (b + body_start));
    }
    /* One allocation: the header block (parsed in place), then the body. */
    memset(f, 0, sizeof *f);
    char *mem = malloc(hlen + 1 + blen + 1);
    if (!mem) {
        logmsg("%s: out of memory for a %zu-byte frame", c->who, blen);
        return -1;
    }
    memcpy(mem, b, hlen);
    mem[hlen] = 0;
    memcpy(mem + hlen + 1, b + body_start, blen);
    mem[hlen + 1 + blen] = 0;
    f->mem = mem;
    f->body = mem + hlen + 1;
    f->body_len = blen;
    c->off += body_start + blen + 1;

    char *save = NULL;
    char *line = strtok_r(mem, "\n", &save);
    if (!line) {
        logmsg("%s: frame without a command", c->who);
        frame_free(f);
        return -1;
    }
    size_t ll = strlen(line);
    if (ll && line[ll - 1] == '\r')
        line[ll - 1] = 0;
    f->command = line;
    int raw = !strcmp(line, "CONNECTED") || !c->v12;
    while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
        ll = strlen(line);
        if (ll && line[ll - 1] == '\r')
            line[ll - 1] = 0;
        char *colon = strchr(line, ':');
        if (!colon || f->nh == MAX_HEADERS)
            continue;
        *colon = 0;
        if (!raw) {
            unescape(line);
            unescape(colon + 1);
        }
        f->name[f->nh] = line;
        f->value[f->nh] = colon + 1;
        f->nh++;
    }
    return 1;
}

/* Read one frame, waiting at most timeout_ms (-1: until the global
 * deadline). Returns 1 frame, 0 timeout, -1 error or connection closed. */
static int read_frame(conn *c, frame *f, int timeout_ms)
{
    uint64_t until = timeout_ms < 0 ? g_deadline_ns
                                    : now_ns() + (uint64_t)timeout_ms * 1000000u;
    for (;;) {
        int r = parse_frame(c, f);
        if (r)
            return r;
        uint64_t t = now_ns();
        if (t >= until || atomic_load(&g_stop))
            return 0;
        uint64_t left_ms = (until - t) / 1000000u + 1;
        if (left_ms > 100)
            left_ms = 100; /* re-check g_stop regularly */
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        int pr = poll(&p, 1, (int)left_ms);
        if (pr < 0 && errno != EINTR) {
            logmsg("%s: poll: %s", c->who, strerror(errno));
            return -1;
        }
        if (pr <= 0)
            continue;
        if (c->off) { /* compact: drop the frames already parsed */
            memmove(c->buf, c->buf + c->off, c->len - c->off);
            c->len -= c->off;
            c->off = 0;
        }
        if (c->cap - c->len < 65536) {
            size_t cap = c->cap ? c->cap * 2 : 131072;
            if (cap > 2 * (size_t)MAX_FRAME) {
                logmsg("%s: frame larger than %u bytes", c->who, MAX_FRAME);
                return -1;
            }
            char *b = realloc(c->buf, cap);
            if (!b)
                return -1;
            c->buf = b;
            c->cap = cap;
        }
        ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
        if (n == 0) {
            logmsg("%s: connection closed by the broker", c->who);
            return -1;
        }
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            logmsg("%s: read failed: %s", c->who, strerror(errno));
            return -1;
        }
        c->len += (size_t)n;
    }
}

static void report_error_frame(conn *c, const frame *f)
{
    const char *m = frame_get(f, "message");
    logmsg("%s: ERROR from broker: %s%s%.*s", c->who, m ? m : "(no message)",
           f->body_len ? " - " : "", (int)(f->body_len > 300 ? 300 : f->body_len),
           f->body);
}

static int stomp_connect(conn *c, const char *who)
{
    if (conn_open(c, who))
        return -1;
    const char *h[16];
    int k = 0;
    h[k++] = "accept-version";
    h[k++] = "1.2";
    h[k++] = "host";
    h[k++] = opt.host;
    h[k++] = "heart-beat";
    h[k++] = "0,0";
    if (opt.login) {
        h[k++] = "login";
        h[k++] = opt.login;
    }
    if (opt.passcode) {
        h[k++] = "passcode";
        h[k++] = opt.passcode;
    }
    h[k] = NULL;
    if (send_frame(c, "CONNECT", h, NULL, 0))
        return -1;
    frame f;
    int r = read_frame(c, &f, 10000);
    if (r <= 0) {
        logmsg("%s: no CONNECTED frame within 10 s", who);
        return -1;
    }
    if (strcmp(f.command, "CONNECTED")) {
        if (!strcmp(f.command, "ERROR"))
            report_error_frame(c, &f);
        else
            logmsg("%s: expected CONNECTED, got %s", who, f.command);
        frame_free(&f);
        return -1;
    }
    const char *v = frame_get(&f, "version");
    c->v12 = v && !strcmp(v, "1.2");
    if (!c->v12)
        logmsg("%s: broker answered version %s, not 1.2: using 1.1 ACKs", who,
               v ? v : "(none: 1.0)");
    frame_free(&f);
    return 0;
}

/* Polite DISCONNECT: waits for its receipt so every frame sent before was
 * processed. */
static void stomp_disconnect(conn *c)
{
    if (c->fd < 0)
        return;
    const char *h[] = {"receipt", "bye", NULL};
    if (send_frame(c, "DISCONNECT", h, NULL, 0) == 0) {
        frame f;
        uint64_t until = now_ns() + 5000000000u;
        while (now_ns() < until) {
            int r = read_frame(c, &f, 500);
            if (r < 0)
                break;
            if (r == 0)
                continue;
            int done = !strcmp(f.command, "RECEIPT");
            frame_free(&f);
            if (done)
                break;
        }
    }
    conn_close(c);
}

/* ------------------------------------------------------------------------
 * Producer
 * ---------------------------------------------------------------------- */
typedef struct {
    int idx;
    pthread_t th;
    uint64_t sent;    /* confirmed by receipt */
    uint64_t errors;
    uint64_t first_ns, last_ns;
    samples lat; /* send -> receipt */
} producer;

static char *g_body;

static int producer_wait_receipt(conn *c, producer *p, uint64_t *ts,
                                  uint64_t base, uint64_t *acked)
{
    frame f;
    int r = read_frame(c, &f, -1);
    if (r <= 0) {
        if (r == 0 && !atomic_load(&g_stop))
            logmsg("%s: no RECEIPT before the deadline", c->who);
        return -1;
    }
    int rc = 0;
    if (!strcmp(f.command, "RECEIPT")) {
        const char *id = frame_get(&f, "receipt-id");
        unsigned long long n = id && id[0] == 's' ? strtoull(id + 1, NULL, 10) : 0;
        if (!n || n <= base || n > base + (uint64_t)opt.window) {
            logmsg("%s: unexpected receipt-id %s", c->who, id ? id : "(none)");
            rc = -1;
        } else {
            uint64_t t = now_ns();
            samples_add(&p->lat, t - ts[(n - 1) % (uint64_t)opt.window]);
            ts[(n - 1) % (uint64_t)opt.window] = 0;
            p->sent++;
            p->last_ns = t;
            atomic_fetch_add(&g_sent, 1);
            (*acked)++;
        }
    } else if (!strcmp(f.command, "ERROR")) {
        report_error_frame(c, &f);
        rc = -1;
    } else {
        logmsg("%s: unexpected %s frame", c->who, f.command);
    }
    frame_free(&f);
    return rc;
}

static void *producer_main(void *arg)
{
    producer *p = arg;
    conn c = {.fd = -1};
    char who[32];
    snprintf(who, sizeof who, "producer %d", p->idx);
    uint64_t *ts = calloc((size_t)opt.window, sizeof *ts);
    if (!ts || stomp_connect(&c, who)) {
        p->errors++;
        atomic_store(&g_stop, 1);
        conn_close(&c);
        goto out;
    }
    uint64_t end_ns = opt.duration > 0
                          ? now_ns() + (uint64_t)(opt.duration * 1e9)
                          : UINT64_MAX;
    uint64_t n_sent = 0, n_conf = 0;
    char seq[48], tsb[32], rid[32], size[24];
    snprintf(size, sizeof size, "%zu", opt.size);
    p->first_ns = now_ns();
    for (;;) {
        int more = !time_up() &&
                   (opt.duration > 0 ? now_ns() < end_ns
                                     : n_sent < (uint64_t)opt.messages);
        if (more && n_sent - n_conf < (uint64_t)opt.window) {
            n_sent++;
            uint64_t t = now_ns();
            snprintf(seq, sizeof seq, "%d:%" PRIu64, p->idx, n_sent);
            snprintf(tsb, sizeof tsb, "%" PRIu64, t);
            snprintf(rid, sizeof rid, "s%" PRIu64, n_sent);
            const char *h[20];
            int k = 0;
            h[k++] = "destination";
            h[k++] = opt.dest;
            if (opt.persistent) {
                h[k++] = "persistent";
                h[k++] = "true";
            }
            h[k++] = "receipt";
            h[k++] = rid;
            h[k++] = "x-load-run";
            h[k++] = g_run_id;
            h[k++] = "x-load-seq";
            h[k++] = seq;
            h[k++] = "x-load-ts";
            h[k++] = tsb;
            h[k++] = "content-type";
            h[k++] = "application/octet-stream";
            h[k] = NULL;
            ts[(n_sent - 1) % (uint64_t)opt.window] = t;
            if (send_frame(&c, "SEND", h, g_body, opt.size)) {
                p->errors++;
                break;
            }
            continue;
        }
        if (n_conf == n_sent)
            break;
        uint64_t base = n_conf;
        if (producer_wait_receipt(&c, p, ts, base, &n_conf)) {
            if (!atomic_load(&g_stop))
                p->errors++;
            break;
        }
    }
    if (n_conf != n_sent && !p->errors)
        p->errors++; /* stopped by the deadline with sends unconfirmed */
    if (p->errors)
        conn_close(&c); /* the connection is broken or in doubt */
    else
        stomp_disconnect(&c);
out:
    free(ts);
    if (atomic_fetch_sub(&g_producers_left, 1) == 1)
        atomic_store(&g_producers_done_ns, now_ns());
    return NULL;
}

/* ------------------------------------------------------------------------
 * Consumer
 * ---------------------------------------------------------------------- */
typedef struct {
    uint32_t producer;
    uint64_t seq;
} msg_key;

typedef struct {
    int idx;
    pthread_t th;
    uint64_t received; /* own run's messages */
    uint64_t foreign;  /* messages of another run (acked, not counted) */
    uint64_t redelivered;
    uint64_t errors;
    uint64_t first_ns, last_ns;
    samples lat;     /* send -> delivery */
    samples ack_lat; /* ack -> receipt */
    msg_key *keys;
    size_t nkeys, capkeys;
} consumer;

static void consumer_key(consumer *cs, const char *seq)
{
    if (!seq)
        return;
    char *end;
    unsigned long pr = strtoul(seq, &end, 10);
    if (*end != ':')
        return;
    unsigned long long n = strtoull(end + 1, NULL, 10);
    if (cs->nkeys == cs->capkeys) {
        size_t cap = cs->capkeys ? cs->capkeys * 2 : 4096;
        msg_key *k = realloc(cs->keys, cap * sizeof *k);
        if (!k)
            return;
        cs->keys = k;
        cs->capkeys = cap;
    }
    cs->keys[cs->nkeys++] = (msg_key){(uint32_t)pr, (uint64_t)n};
}

static int g_is_topic;

/* The number of messages every consumer (topic) or all consumers together
 * (queue) should get, known once the producers are done. */
static int consumer_should_stop(consumer *cs, uint64_t last_msg_ns)
{
    if (time_up())
        return 1;
    if (atomic_load(&g_producers_left) > 0)
        return 0;
    uint64_t sent = atomic_load(&g_sent);
    if (opt.producers > 0) {
        if (g_is_topic ? cs->received >= sent
                       : atomic_load(&g_received) >= sent)
            return 1;
    }
    uint64_t done_ns = atomic_load(&g_producers_done_ns);
    uint64_t quiet_since = last_msg_ns > done_ns ? last_msg_ns : done_ns;
    return now_ns() - quiet_since >= (uint64_t)(opt.drain_timeout * 1e9);
}

static void *consumer_main(void *arg)
{
    consumer *cs = arg;
    conn c;
    char who[32], subid[32], pf[24];
    snprintf(who, sizeof who, "consumer %d", cs->idx);
    snprintf(subid, sizeof subid, "load-%d", cs->idx);
    if (stomp_connect(&c, who)) {
        cs->errors++;
        atomic_store(&g_stop, 1);
        atomic_fetch_add(&g_consumers_ready, 1);
        conn_close(&c);
        return NULL;
    }
    const char *h[16];
    int k = 0;
    h[k++] = "destination";
    h[k++] = opt.dest;
    h[k++] = "id";
    h[k++] = subid;
    h[k++] = "ack";
    h[k++] = "client-individual";
    h[k++] = "receipt";
    h[k++] = "sub";
    if (opt.prefetch >= 0) {
        snprintf(pf, sizeof pf, "%ld", opt.prefetch);
        h[k++] = "activemq.prefetchSize";
        h[k++] = pf;
    }
    h[k] = NULL;
    uint64_t *ack_ts = NULL;
    size_t ack_cap = 0;
    uint64_t acks_sent = 0, ack_receipts = 0;
    int subscribed = 0;
    uint64_t last_msg_ns = 0;
    if (send_frame(&c, "SUBSCRIBE", h, NULL, 0)) {
        cs->errors++;
        goto done;
    }
    for (;;) {
        if (subscribed && consumer_should_stop(cs, last_msg_ns))
            break;
        if (!subscribed && time_up())
            break;
        frame f;
        int r = read_frame(&c, &f, 100);
        if (r < 0) {
            cs->errors++;
            break;
        }
        if (r == 0)
            continue;
        if (!strcmp(f.command, "MESSAGE")) {
            uint64_t t = now_ns();
            last_msg_ns = t;
            const char *run = frame_get(&f, "x-load-run");
            const char *red = frame_get(&f, "redelivered");
            int own = run && !strcmp(run, g_run_id);
            if (own || opt.producers == 0) { /* consume-only: count all */
                const char *tsv = frame_get(&f, "x-load-ts");
                uint64_t sent = tsv ? strtoull(tsv, NULL, 10) : 0;
                if (own && sent && sent <= t)
                    samples_add(&cs->lat, t - sent);
                /* Consume-only: keys of one filling run are unique too,
                 * so duplicates are still counted (missing cannot be). */
                consumer_key(cs, frame_get(&f, "x-load-seq"));
                if (!cs->received)
                    cs->first_ns = t;
                cs->received++;
                cs->last_ns = t;
                atomic_fetch_add(&g_received, 1);
                if (red && !strcmp(red, "true"))
                    cs->redelivered++;
            } else {
                cs->foreign++;
            }
            const char *ah[8];
            int j = 0;
            char rid[32];
            if (c.v12) {
                const char *ack = frame_get(&f, "ack");
                if (!ack) {
                    logmsg("%s: MESSAGE without an ack header", who);
                    cs->errors++;
                    frame_free(&f);
                    break;
                }
                ah[j++] = "id";
                ah[j++] = ack;
            } else {
                const char *mid = frame_get(&f, "message-id");
                ah[j++] = "message-id";
                ah[j++] = mid ? mid : "";
                ah[j++] = "subscription";
                ah[j++] = subid;
            }
            if (opt.ack_receipt) {
                acks_sent++;
                snprintf(rid, sizeof rid, "a%" PRIu64, acks_sent);
                if (acks_sent > ack_cap) {
                    size_t cap = ack_cap ? ack_cap * 2 : 4096;
                    uint64_t *a = realloc(ack_ts, cap * sizeof *a);
                    if (!a) {
                        cs->errors++;
                        frame_free(&f);
                        break;
                    }
                    ack_ts = a;
                    ack_cap = cap;
                }
                ack_ts[acks_sent - 1] = now_ns();
                ah[j++] = "receipt";
                ah[j++] = rid;
            }
            ah[j] = NULL;
            int w = send_frame(&c, "ACK", ah, NULL, 0);
            frame_free(&f);
            if (w) {
                cs->errors++;
                break;
            }
        } else if (!strcmp(f.command, "RECEIPT")) {
            const char *id = frame_get(&f, "receipt-id");
            if (id && !strcmp(id, "sub")) {
                subscribed = 1;
                atomic_fetch_add(&g_consumers_ready, 1);
            } else if (id && id[0] == 'a') {
                unsigned long long n = strtoull(id + 1, NULL, 10);
                if (n >= 1 && n <= acks_sent) {
                    samples_add(&cs->ack_lat, now_ns() - ack_ts[n - 1]);
                    ack_receipts++;
                }
            }
            frame_free(&f);
        } else if (!strcmp(f.command, "ERROR")) {
            report_error_frame(&c, &f);
            cs->errors++;
            frame_free(&f);
            break;
        } else {
            logmsg("%s: unexpected %s frame", who, f.command);
            frame_free(&f);
        }
    }
    /* Collect the receipts of the last ACKs. */
    if (!cs->errors && opt.ack_receipt) {
        uint64_t until = now_ns() + (uint64_t)(opt.drain_timeout * 1e9);
        while (ack_receipts < acks_sent && now_ns() < until && !time_up()) {
            frame f;
            int r = read_frame(&c, &f, 100);
            if (r < 0)
                break;
            if (r == 0)
                continue;
            if (!strcmp(f.command, "RECEIPT")) {
                const char *id = frame_get(&f, "receipt-id");
                unsigned long long n =
                    id && id[0] == 'a' ? strtoull(id + 1, NULL, 10) : 0;
                if (n >= 1 && n <= acks_sent) {
                    samples_add(&cs->ack_lat, now_ns() - ack_ts[n - 1]);
                    ack_receipts++;
                }
            }
            /* A MESSAGE now is one too many for a topic or was prefetched
             * for a queue: left unacked, the broker redelivers it. */
            frame_free(&f);
        }
        if (ack_receipts < acks_sent) {
            logmsg("%s: %" PRIu64 " of %" PRIu64 " ACK receipts missing", who,
                   acks_sent - ack_receipts, acks_sent);
            cs->errors++;
        }
    }
done:
    if (!subscribed)
        atomic_fetch_add(&g_consumers_ready, 1);
    free(ack_ts);
    if (cs->errors)
        conn_close(&c);
    else
        stomp_disconnect(&c);
    return NULL;
}

/* ------------------------------------------------------------------------
 * Results
 * ---------------------------------------------------------------------- */
static int cmp_key(const void *a, const void *b)
{
    const msg_key *x = a, *y = b;
    if (x->producer != y->producer)
        return x->producer < y->producer ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Unique keys and duplicates in one consumer's (or all consumers') set. */
static void count_keys(msg_key *k, size_t n, uint64_t *unique, uint64_t *dups)
{
    if (n)
        qsort(k, n, sizeof *k, cmp_key);
    *unique = *dups = 0;
    for (size_t i = 0; i < n; i++) {
        if (i && !cmp_key(&k[i], &k[i - 1]))
            (*dups)++;
        else
            (*unique)++;
    }
}

typedef struct {
    const char *name;
    samples *s;
    uint64_t count;
    double secs;
} row;

static void print_row(FILE *f, const row *r)
{
    double rate = r->secs > 0 ? (double)r->count / r->secs : 0.0;
    fprintf(f, "%-16s %10" PRIu64 " %10.1f", r->name, r->count, rate);
    if (r->s->n)
        fprintf(f, " %9.3f %9.3f %9.3f\n", pct_ms(r->s, 0.50), pct_ms(r->s, 0.99),
                (double)r->s->v[r->s->n - 1] / 1e6);
    else /* e.g. consume-only: no send timestamps of our own */
        fprintf(f, " %9s %9s %9s\n", "-", "-", "-");
}

static void json_row(FILE *f, const row *r, int last)
{
    double rate = r->secs > 0 ? (double)r->count / r->secs : 0.0;
    fprintf(f,
            "    \"%s\": {\"count\": %" PRIu64 ", \"seconds\": %.3f, "
            "\"msgs_per_s\": %.1f, \"samples\": %zu, ",
            r->name, r->count, r->secs, rate, r->s->n);
    if (r->s->n)
        fprintf(f, "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f}%s\n",
                pct_ms(r->s, 0.50), pct_ms(r->s, 0.99),
                (double)r->s->v[r->s->n - 1] / 1e6, last ? "" : ",");
    else
        fprintf(f, "\"p50_ms\": null, \"p99_ms\": null, \"max_ms\": null}%s\n",
                last ? "" : ",");
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", *s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

/* ------------------------------------------------------------------------
 * Main
 * ---------------------------------------------------------------------- */
static int parse_long(const char *name, const char *v, long lo, long hi,
                      long *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (errno || *end || end == v || x < lo || x > hi) {
        fprintf(stderr, "stomp-load: %s wants an integer in [%ld, %ld], got '%s'\n",
                name, lo, hi, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_secs(const char *name, const char *v, double *out)
{
    char *end;
    double x = strtod(v, &end);
    if (*end || end == v || !(x > 0) || x > 86400) {
        fprintf(stderr, "stomp-load: %s wants seconds in (0, 86400], got '%s'\n",
                name, v);
        return -1;
    }
    *out = x;
    return 0;
}

static int parse_args(int argc, char **argv)
{
    int have_messages = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(a, "--non-persistent")) {
            opt.persistent = 0;
            continue;
        }
        if (!strcmp(a, "--ack-receipt")) {
            opt.ack_receipt = 1;
            continue;
        }
        if (!strcmp(a, "--quiet")) {
            opt.quiet = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "stomp-load: unknown option or missing value: %s "
                            "(see --help)\n", a);
            return -1;
        }
        const char *v = argv[++i];
        long x;
        if (!strcmp(a, "--broker")) {
            const char *colon = strrchr(v, ':');
            if (!colon || colon == v || !colon[1] ||
                (size_t)(colon - v) >= sizeof opt.host ||
                strlen(colon + 1) >= sizeof opt.port) {
                fprintf(stderr, "stomp-load: --broker wants HOST:PORT, got '%s'\n", v);
                return -1;
            }
            memcpy(opt.host, v, (size_t)(colon - v));
            opt.host[colon - v] = 0;
            snprintf(opt.port, sizeof opt.port, "%s", colon + 1);
        } else if (!strcmp(a, "--dest")) {
            if (!*v) {
                fprintf(stderr, "stomp-load: --dest must not be empty\n");
                return -1;
            }
            opt.dest = v;
        } else if (!strcmp(a, "--producers")) {
            if (parse_long(a, v, 0, 1000, &x))
                return -1;
            opt.producers = (int)x;
        } else if (!strcmp(a, "--consumers")) {
            if (parse_long(a, v, 0, 1000, &x))
                return -1;
            opt.consumers = (int)x;
        } else if (!strcmp(a, "--messages")) {
            if (parse_long(a, v, 1, 100000000L, &x))
                return -1;
            opt.messages = x;
            have_messages = 1;
        } else if (!strcmp(a, "--duration")) {
            if (parse_secs(a, v, &opt.duration))
                return -1;
        } else if (!strcmp(a, "--size")) {
            if (parse_long(a, v, 0, 16L * 1024 * 1024, &x))
                return -1;
            opt.size = (size_t)x;
        } else if (!strcmp(a, "--window")) {
            if (parse_long(a, v, 1, 100000, &x))
                return -1;
            opt.window = (int)x;
        } else if (!strcmp(a, "--prefetch")) {
            if (parse_long(a, v, 0, 100000000L, &x))
                return -1;
            opt.prefetch = x;
        } else if (!strcmp(a, "--login")) {
            opt.login = v;
        } else if (!strcmp(a, "--passcode")) {
            opt.passcode = v;
        } else if (!strcmp(a, "--drain-timeout")) {
            if (parse_secs(a, v, &opt.drain_timeout))
                return -1;
        } else if (!strcmp(a, "--timeout")) {
            if (parse_secs(a, v, &opt.timeout))
                return -1;
        } else if (!strcmp(a, "--json")) {
            opt.json = v;
        } else {
            fprintf(stderr, "stomp-load: unknown option %s (see --help)\n", a);
            return -1;
        }
    }
    if (have_messages && opt.duration > 0) {
        fprintf(stderr, "stomp-load: give --messages or --duration, not both\n");
        return -1;
    }
    if (opt.duration > 0)
        opt.messages = 0;
    if (!opt.producers && !opt.consumers) {
        fprintf(stderr, "stomp-load: nothing to do: no producer and no consumer\n");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (parse_args(argc, argv))
        return 2;
    signal(SIGPIPE, SIG_IGN);
    g_is_topic = !strncmp(opt.dest, "/topic/", 7);
    g_start_ns = now_ns();
    g_deadline_ns = g_start_ns + (uint64_t)(opt.timeout * 1e9);
    {
        struct timespec rt;
        clock_gettime(CLOCK_REALTIME, &rt);
        snprintf(g_run_id, sizeof g_run_id, "%ld-%ld-%ld", (long)getpid(),
                 (long)rt.tv_sec, rt.tv_nsec / 1000);
    }
    g_body = malloc(opt.size + 1);
    if (!g_body) {
        fprintf(stderr, "stomp-load: out of memory for a %zu-byte body\n", opt.size);
        return 1;
    }
    for (size_t i = 0; i < opt.size; i++)
        g_body[i] = (char)('a' + i % 26);

    producer *ps = calloc((size_t)opt.producers + 1, sizeof *ps);
    consumer *cs = calloc((size_t)opt.consumers + 1, sizeof *cs);
    if (!ps || !cs) {
        fprintf(stderr, "stomp-load: out of memory\n");
        return 1;
    }
    atomic_store(&g_producers_left, opt.producers);
    if (!opt.producers)
        atomic_store(&g_producers_done_ns, now_ns());

    /* Consumers first, and wait until each SUBSCRIBE is confirmed so no
     * topic message is published before its subscribers exist. */
    int nc = 0, np = 0;
    for (; nc < opt.consumers; nc++) {
        cs[nc].idx = nc;
        if (pthread_create(&cs[nc].th, NULL, consumer_main, &cs[nc])) {
            fprintf(stderr, "stomp-load: cannot start consumer thread %d\n", nc);
            atomic_store(&g_stop, 1);
            break;
        }
    }
    while (atomic_load(&g_consumers_ready) < nc && !time_up())
        usleep(2000);
    uint64_t t_prod0 = now_ns();
    if (!atomic_load(&g_stop)) {
        for (; np < opt.producers; np++) {
            ps[np].idx = np;
            if (pthread_create(&ps[np].th, NULL, producer_main, &ps[np])) {
                fprintf(stderr, "stomp-load: cannot start producer thread %d\n", np);
                atomic_store(&g_stop, 1);
                break;
            }
        }
    }
    /* Producers that never started count as done. */
    for (int i = np; i < opt.producers; i++)
        if (atomic_fetch_sub(&g_producers_left, 1) == 1)
            atomic_store(&g_producers_done_ns, now_ns());
    for (int i = 0; i < np; i++)
        pthread_join(ps[i].th, NULL);
    uint64_t t_prod1 = now_ns();
    for (int i = 0; i < nc; i++)
        pthread_join(cs[i].th, NULL);

    /* Aggregate. */
    samples send_lat = {0}, del_lat = {0}, ack_lat = {0};
    uint64_t sent = 0, perr = 0, received = 0, foreign = 0, redelivered = 0,
             cerr = 0, missing = 0, dups = 0;
    uint64_t c_first = UINT64_MAX, c_last = 0;
    for (int i = 0; i < np; i++) {
        sent += ps[i].sent;
        perr += ps[i].errors;
        samples_merge(&send_lat, &ps[i].lat);
    }
    size_t all_n = 0;
    for (int i = 0; i < nc; i++) {
        received += cs[i].received;
        foreign += cs[i].foreign;
        redelivered += cs[i].redelivered;
        cerr += cs[i].errors;
        samples_merge(&del_lat, &cs[i].lat);
        samples_merge(&ack_lat, &cs[i].ack_lat);
        if (cs[i].received) {
            if (cs[i].first_ns < c_first)
                c_first = cs[i].first_ns;
            if (cs[i].last_ns > c_last)
                c_last = cs[i].last_ns;
        }
        all_n += cs[i].nkeys;
    }
    if (nc) {
        if (g_is_topic) {
            for (int i = 0; i < nc; i++) {
                uint64_t u, d;
                count_keys(cs[i].keys, cs[i].nkeys, &u, &d);
                dups += d;
                if (u < sent)
                    missing += sent - u;
            }
        } else {
            msg_key *all = malloc((all_n + 1) * sizeof *all);
            if (all) {
                size_t k = 0;
                for (int i = 0; i < nc; i++) {
                    if (cs[i].nkeys)
                        memcpy(all + k, cs[i].keys, cs[i].nkeys * sizeof *all);
                    k += cs[i].nkeys;
                }
                uint64_t u;
                count_keys(all, k, &u, &dups);
                missing = u < sent ? sent - u : 0;
                free(all);
            }
        }
    }
    samples *all_lat[] = {&send_lat, &del_lat, &ack_lat};
    for (size_t i = 0; i < 3; i++)
        if (all_lat[i]->n)
            qsort(all_lat[i]->v, all_lat[i]->n, sizeof(uint64_t), cmp_u64);

    double prod_secs = np ? (double)(t_prod1 - t_prod0) / 1e9 : 0.0;
    double cons_secs = c_last > c_first ? (double)(c_last - c_first) / 1e9 : 0.0;
    row rows[3] = {
        {"send+receipt", &send_lat, sent, prod_secs},
        {"delivery", &del_lat, received, cons_secs},
        {"ack+receipt", &ack_lat, ack_lat.n, cons_secs},
    };
    int nrows = opt.ack_receipt ? 3 : 2;
    int ok = !perr && !cerr && !missing && !dups && !atomic_load(&g_stop);
    char cfg[600], amount[64], pf[48];
    if (opt.duration > 0)
        snprintf(amount, sizeof amount, "%.1f s", opt.duration);
    else
        snprintf(amount, sizeof amount, "%ld msgs", opt.messages);
    if (opt.prefetch >= 0)
        snprintf(pf, sizeof pf, "%ld", opt.prefetch);
    else
        snprintf(pf, sizeof pf, "broker default");
    snprintf(cfg, sizeof cfg,
             "%s:%s %s; %d producer(s) x %s of %zu B (%s, receipts, window %d); "
             "%d consumer(s) (client-individual, ack receipts %s, prefetch %s)",
             opt.host, opt.port, opt.dest, opt.producers, amount, opt.size,
             opt.persistent ? "persistent" : "non-persistent", opt.window,
             opt.consumers, opt.ack_receipt ? "on" : "off", pf);
    if (!opt.quiet) {
        printf("stomp-load: %s\n", cfg);
        printf("%-16s %10s %10s %9s %9s %9s\n", "", "count", "msg/s", "p50 ms",
               "p99 ms", "max ms");
        for (int i = 0; i < nrows; i++)
            if ((i == 0 && np) || (i > 0 && nc))
                print_row(stdout, &rows[i]);
        printf("sent %" PRIu64 ", received %" PRIu64 ", missing %" PRIu64
               ", duplicates %" PRIu64 ", redelivered %" PRIu64
               ", foreign %" PRIu64 ", errors %" PRIu64 "%s\n",
               sent, received, missing, dups, redelivered, foreign, perr + cerr,
               atomic_load(&g_stop) ? " (stopped early)" : "");
        printf("result: %s\n", ok ? "ok" : "FAILED");
    }
    if (opt.json) {
        FILE *f = strcmp(opt.json, "-") ? fopen(opt.json, "w") : stdout;
        if (!f) {
            fprintf(stderr, "stomp-load: cannot write %s: %s\n", opt.json,
                    strerror(errno));
            ok = 0;
        } else {
            fprintf(f, "{\n  \"tool\": \"stomp-load\",\n  \"broker\": ");
            char hp[300];
            snprintf(hp, sizeof hp, "%s:%s", opt.host, opt.port);
            json_str(f, hp);
            fprintf(f, ",\n  \"dest\": ");
            json_str(f, opt.dest);
            fprintf(f,
                    ",\n  \"config\": {\"producers\": %d, \"consumers\": %d, "
                    "\"messages_per_producer\": %ld, \"duration_s\": %.3f, "
                    "\"size\": %zu, \"window\": %d, \"persistent\": %s, "
                    "\"ack_receipt\": %s, \"prefetch\": %ld},\n",
                    opt.producers, opt.consumers, opt.messages, opt.duration,
                    opt.size, opt.window, opt.persistent ? "true" : "false",
                    opt.ack_receipt ? "true" : "false", opt.prefetch);
            fprintf(f, "  \"results\": {\n");
            for (int i = 0; i < nrows; i++)
                json_row(f, &rows[i], i == nrows - 1);
            fprintf(f,
                    "  },\n  \"sent\": %" PRIu64 ", \"received\": %" PRIu64
                    ", \"missing\": %" PRIu64 ", \"duplicates\": %" PRIu64
                    ", \"redelivered\": %" PRIu64 ", \"foreign\": %" PRIu64
                    ", \"errors\": %" PRIu64 ", \"stopped_early\": %s, "
                    "\"ok\": %s\n}\n",
                    sent, received, missing, dups, redelivered, foreign,
                    perr + cerr, atomic_load(&g_stop) ? "true" : "false",
                    ok ? "true" : "false");
            if (f != stdout && fclose(f)) {
                fprintf(stderr, "stomp-load: writing %s failed: %s\n", opt.json,
                        strerror(errno));
                ok = 0;
            }
        }
    }
    for (int i = 0; i < np; i++)
        free(ps[i].lat.v);
    for (int i = 0; i < nc; i++) {
        free(cs[i].lat.v);
        free(cs[i].ack_lat.v);
        free(cs[i].keys);
    }
    free(ps);
    free(cs);
    free(send_lat.v);
    free(del_lat.v);
    free(ack_lat.v);
    free(g_body);
    return ok ? 0 : 1;
}
