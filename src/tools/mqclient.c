/*
 * mqclient - command-line STOMP client on libmqclient.
 *
 *   mqclient send  URI DEST [options]   send messages, wait for receipts
 *   mqclient recv  URI DEST [options]   subscribe and print messages
 *   mqclient bench URI DEST [options]   async send throughput
 *
 * URI is any libmqclient URI, e.g.
 *   'failover:(tcp://a:61613,tcp://b:61613)?randomize=false&timeout=3000'
 * Transport events (interrupted / resumed / exception) go to stderr with a
 * UTC timestamp, so a failover is visible next to the output.
 *
 * The passcode is never taken from argv (other users see it in ps): it
 * comes from $MQCLIENT_PASSCODE or --passcode-file, a file that must not be
 * world-readable. It is wiped from our memory once the library copied it.
 */
#include <mqclient/mqclient.h>

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MQC_CLI_VERSION
#define MQC_CLI_VERSION "unknown"
#endif

/* Exit codes; kept in sync with EXIT_CODES_HELP. */
enum {
    EXIT_OK = 0,
    EXIT_FAIL = 1,    /* some sends unconfirmed, a broker error, ... */
    EXIT_USAGE = 2,   /* bad option or URI */
    EXIT_CONNECT = 3, /* no broker reached, or reconnecting gave up */
    EXIT_SHORT = 4,   /* recv: --count not reached */
    EXIT_INTR = 130   /* send/bench stopped by SIGINT/SIGTERM */
};

#define EXIT_CODES_HELP                                                        \
    "Exit status: 0 ok; 1 failure (unconfirmed sends, a broker ERROR, ...);\n" \
    "2 usage error (bad option or URI); 3 no broker reachable within\n"        \
    "--connect-timeout, or reconnecting gave up; 4 recv ended before --count\n" \
    "messages; 130 send/bench interrupted by SIGINT/SIGTERM before --count\n" \
    "(send --count 0 ends that way normally: 0).\n"                            \
    "A first SIGINT/SIGTERM stops after the current call and prints the\n"    \
    "summary; a second one exits at once (130).\n"

#define MAX_BODY_STDIN (64u * 1024 * 1024)
#define MAX_HEADERS 64

static volatile sig_atomic_t g_stop;
static char g_cmd[32] = "mqclient"; /* "mqclient send", for messages */

/* ------------------------------------------------------------------------
 * Small helpers
 * ---------------------------------------------------------------------- */

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Wall clock, so other processes (demo, bench) can line up our events with
 * theirs (a kill -9, a broker's log line). */
static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* "2026-12-03T08:20:01.123Z" */
static void fmt_ts(char *buf, size_t len, double t)
{
    time_t secs = (time_t)t;
    struct tm tm;
    gmtime_r(&secs, &tm);
    unsigned ms = (unsigned)((t - (double)secs) * 1000.0) % 1000u;
    char base[24];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, len, "%.20s.%03uZ", base, ms);
}

static pthread_mutex_t g_err_mu = PTHREAD_MUTEX_INITIALIZER;

/* One timestamped line on stderr; callbacks (dispatch thread) and the main
 * thread both print, the lock keeps lines whole. */
static void event(const char *fmt, ...)
{
    char ts[40];
    fmt_ts(ts, sizeof ts, wall_now());
    va_list ap;
    pthread_mutex_lock(&g_err_mu);
    fprintf(stderr, "%s %s: ", ts, g_cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    pthread_mutex_unlock(&g_err_mu);
}

static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", g_cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help'.\n", g_cmd);
    return EXIT_USAGE;
}

/* JSON string body: escapes quotes, backslashes and control bytes; other
 * bytes are copied (a non-UTF-8 body gives non-UTF-8 JSON). */
static void json_str(FILE *f, const void *data, size_t len)
{
    const unsigned char *p = data;
    fputc('"', f);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = p[i];
        switch (ch) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (ch < 0x20 || ch == 0x7f)
                fprintf(f, "\\u%04x", ch);
            else
                fputc(ch, f);
        }
    }
    fputc('"', f);
}

static void json_cstr(FILE *f, const char *s)
{
    if (!s)
        fputs("null", f);
    else
        json_str(f, s, strlen(s));
}

/* Strict integer parsing: the whole string, within [lo, hi]. */
static bool parse_ll(const char *opt, const char *s, long long lo,
                     long long hi, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        usage_error("bad value '%s' for %s: expected an integer from %lld "
                    "to %lld", s, opt, lo, hi);
        return false;
    }
    *out = v;
    return true;
}

static bool parse_int(const char *opt, const char *s, int lo, int hi, int *out)
{
    long long v;
    if (!parse_ll(opt, s, lo, hi, &v))
        return false;
    *out = (int)v;
    return true;
}

static bool parse_pos_double(const char *opt, const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v > 0) || v > 1e9) {
        usage_error("bad value '%s' for %s: expected a number > 0", s, opt);
        return false;
    }
    *out = v;
    return true;
}

/* Sleep until monotonic time `due`, in short slices so a signal stops us. */
static void sleep_until(double due)
{
    for (;;) {
        double left = due - mono_now();
        if (left <= 0 || g_stop)
            return;
        if (left > 0.1)
            left = 0.1;
        struct timespec ts = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

/* First SIGINT/SIGTERM: stop after the current call and print the summary.
 * A second one exits at once: a call may block up to the URI's timeout
 * (forever with the default timeout=-1 while no broker is reachable). */
static void on_signal(int sig)
{
    (void)sig;
    if (g_stop) {
        static const char msg[] = "mqclient: second signal, exiting now\n";
        ssize_t r = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)r;
        _exit(EXIT_INTR);
    }
    g_stop = 1;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

/* Expand %n (the 1-based message number) and %% in a template. Returns a
 * malloc'ed string of *len bytes (NUL-terminated), or NULL on ENOMEM. */
static char *expand(const char *tmpl, size_t tlen, uint64_t n, size_t *len)
{
    char num[24];
    int nlen = snprintf(num, sizeof num, "%" PRIu64, n);
    size_t cap = tlen + 1, out = 0;
    for (size_t i = 0; i + 1 < tlen; i++)
        if (tmpl[i] == '%' && tmpl[i + 1] == 'n')
            cap += (size_t)nlen;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    for (size_t i = 0; i < tlen; i++) {
        if (tmpl[i] == '%' && i + 1 < tlen && tmpl[i + 1] == 'n') {
            memcpy(buf + out, num, (size_t)nlen);
            out += (size_t)nlen;
            i++;
        } else if (tmpl[i] == '%' && i + 1 < tlen && tmpl[i + 1] == '%') {
            buf[out++] = '%';
            i++;
        } else {
            buf[out++] = tmpl[i];
        }
    }
    buf[out] = '\0';
    *len = out;
    return buf;
}

static bool has_template(const char *s, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++)
        if (s[i] == '%' && (s[i + 1] == 'n' || s[i + 1] == '%'))
            return true;
    return false;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Percentile of a sorted array (nearest rank). */
static double pct(const double *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p / 100.0 * (double)n);
    if (i >= n)
        i = n - 1;
    return v[i];
}

/* ------------------------------------------------------------------------
 * Options shared by every command
 * ---------------------------------------------------------------------- */

enum {
    OPT_LOGIN = 256, OPT_PASSCODE_FILE, OPT_PASSCODE, OPT_CLIENT_ID, OPT_VHOST,
    OPT_CONNECT_TIMEOUT, OPT_LOG_LEVEL, OPT_JSON, OPT_SIZE, OPT_ASYNC,
    OPT_PERSISTENT, OPT_NON_PERSISTENT, OPT_PRIORITY, OPT_RATE,
    OPT_FLUSH_TIMEOUT, OPT_ACK, OPT_DURABLE, OPT_PREFETCH, OPT_SELECTOR,
    OPT_SECONDS, OPT_SYNC_ACK
};

#define COMMON_LONGOPTS                                                        \
    {"login", required_argument, NULL, OPT_LOGIN},                             \
    {"passcode-file", required_argument, NULL, OPT_PASSCODE_FILE},             \
    {"passcode", required_argument, NULL, OPT_PASSCODE},                       \
    {"client-id", required_argument, NULL, OPT_CLIENT_ID},                     \
    {"vhost", required_argument, NULL, OPT_VHOST},                             \
    {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},         \
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},                     \
    {"header", required_argument, NULL, 'H'},                                  \
    {"json", no_argument, NULL, OPT_JSON},                                     \
    {"verbose", no_argument, NULL, 'v'},                                       \
    {"help", no_argument, NULL, 'h'}

#define COMMON_HELP                                                            \
    "Connection options:\n"                                                    \
    "  --login USER          STOMP login (default: none)\n"                    \
    "  --passcode-file PATH  read the passcode from the first line of PATH;\n" \
    "                        the file must not be readable by others (chmod\n" \
    "                        600). Default: $MQCLIENT_PASSCODE if set, else\n" \
    "                        none. A passcode is never taken from the\n"       \
    "                        command line.\n"                                  \
    "  --client-id ID        STOMP client-id header (default: none; recv\n"    \
    "                        --durable uses the durable name)\n"               \
    "  --vhost HOST          STOMP host header (default: the broker's host)\n" \
    "  --connect-timeout MS  wait this long for the first connection; -1 =\n" \
    "                        no limit (default 10000)\n"                       \
    "  --log-level LEVEL     library log: error|warn|info|debug (default\n"    \
    "                        warn), to stderr with timestamps\n"              \
    "  -v, --verbose         more output, see above (default: off)\n"         \
    "  --json                machine-readable output: one JSON object per\n"   \
    "                        line on stdout (default: off, text)\n"           \
    "  -h, --help            this text\n"

typedef struct common {
    const char *uri, *dest;
    const char *login, *passcode_file, *client_id, *vhost;
    int connect_timeout_ms;
    mqc_log_level log_level;
    bool verbose, json;
    mqc_header headers[MAX_HEADERS];
    size_t nheaders;
    bool headers_template; /* some header value contains %n */
    /* listener state */
    volatile sig_atomic_t gave_up;
    volatile sig_atomic_t connected; /* connect_to() succeeded */
} common;

static void common_init(common *co)
{
    memset(co, 0, sizeof *co);
    co->connect_timeout_ms = 10000;
    co->log_level = MQC_LOG_WARN;
}

/* Handles an option every command has. 1 handled, 0 not ours, -1 error. */
static int common_opt(common *co, int ch, char *arg)
{
    switch (ch) {
    case OPT_LOGIN: co->login = arg; return 1;
    case OPT_PASSCODE_FILE: co->passcode_file = arg; return 1;
    case OPT_PASSCODE:
        /* Wipe it from argv at least; it may already be in ps output. */
        memset(arg, 'x', strlen(arg));
        usage_error("--passcode is not accepted: a passcode on the command "
                    "line is visible to every user (ps). Put it in "
                    "$MQCLIENT_PASSCODE or in a file readable only by you "
                    "and pass --passcode-file PATH");
        return -1;
    case OPT_CLIENT_ID: co->client_id = arg; return 1;
    case OPT_VHOST: co->vhost = arg; return 1;
    case OPT_CONNECT_TIMEOUT:
        return parse_int("--connect-timeout", arg, -1, INT_MAX,
                         &co->connect_timeout_ms) ? 1 : -1;
    case OPT_LOG_LEVEL:
        if (!strcmp(arg, "error")) co->log_level = MQC_LOG_ERROR;
        else if (!strcmp(arg, "warn")) co->log_level = MQC_LOG_WARN;
        else if (!strcmp(arg, "info")) co->log_level = MQC_LOG_INFO;
        else if (!strcmp(arg, "debug")) co->log_level = MQC_LOG_DEBUG;
        else {
            usage_error("bad value '%s' for --log-level: expected error, "
                        "warn, info or debug", arg);
            return -1;
        }
        return 1;
    case 'H': {
        char *colon = strchr(arg, ':');
        if (!colon || colon == arg) {
            usage_error("bad value '%s' for --header: expected NAME:VALUE "
                        "(e.g. --header content-type:text/plain)", arg);
            return -1;
        }
        if (co->nheaders == MAX_HEADERS) {
            usage_error("too many --header options (at most %d)", MAX_HEADERS);
            return -1;
        }
        *colon = '\0'; /* argv is ours to split */
        co->headers[co->nheaders].name = arg;
        co->headers[co->nheaders].value = colon + 1;
        co->nheaders++;
        if (has_template(colon + 1, strlen(colon + 1)))
            co->headers_template = true;
        return 1;
    }
    case OPT_JSON: co->json = true; return 1;
    case 'v': co->verbose = true; return 1;
    default: return 0;
    }
}

/* getopt_long loop shared by the commands: unknown options and missing
 * arguments get a precise message. `own` handles command options. */
typedef int (*own_opt_fn)(void *ctx, int ch, char *arg);
/* Set by a command that takes a URI and no DEST (bridges): the destination
 * parse_args puts in common.dest. */
static const char *g_uri_only;

static int parse_args(int argc, char **argv, const char *shortopts,
                      const struct option *longopts, common *co,
                      own_opt_fn own, void *ctx, const char *help)
{
    opterr = 0;
    optind = 1;
    int ch;
    while ((ch = getopt_long(argc, argv, shortopts, longopts, NULL)) != -1) {
        if (ch == 'h') {
            fputs(help, stdout);
            return -2;
        }
        if (ch == '?') {
            const char *bad = argv[optind - 1];
            if (bad[0] == '-' && bad[1] == '-') {
                const char *eq = strchr(bad, '=');
                if (eq && optopt) /* known, but it takes no value */
                    return usage_error("option '%.*s' takes no value",
                                       (int)(eq - bad), bad), -1;
                return usage_error("unknown option '%s'", bad), -1;
            }
            if (optopt > 0 && optopt < 256)
                return usage_error("unknown option '-%c'", optopt), -1;
            return usage_error("unknown option '%s'", bad), -1;
        }
        if (ch == ':') {
            const char *bad = argv[optind - 1];
            if (optopt && optopt < 256 && !(bad[0] == '-' && bad[1] == '-'))
                return usage_error("option '-%c' needs a value", optopt), -1;
            return usage_error("option '%s' needs a value", bad), -1;
        }
        int r = common_opt(co, ch, optarg);
        if (r < 0)
            return -1;
        if (r == 0 && own(ctx, ch, optarg) < 0)
            return -1;
    }
    int npos = argc - optind;
    if (g_uri_only) {
        if (npos == 0)
            return usage_error("missing URI: usage is %s URI [options]",
                               g_cmd), -1;
        if (npos > 1)
            return usage_error("unexpected argument '%s' after URI (%s takes "
                               "no DEST; quote a URI containing '&' or '(')",
                               argv[optind + 1], g_cmd), -1;
        co->uri = argv[optind];
        co->dest = g_uri_only;
        return 0;
    }
    if (npos < 2)
        return usage_error("missing %s: usage is %s URI DEST [options]",
                           npos == 0 ? "URI and DEST" : "DEST", g_cmd), -1;
    if (npos > 2)
        return usage_error("unexpected argument '%s' after URI and DEST "
                           "(quote a URI containing '&' or '(')",
                           argv[optind + 2]), -1;
    co->uri = argv[optind];
    co->dest = argv[optind + 1];
    if (co->dest[0] != '/')
        return usage_error("DEST '%s' should start with / (e.g. /queue/x or "
                           "/topic/y)", co->dest), -1;
    return 0;
}

/* ------------------------------------------------------------------------
 * Connection: passcode, listener, log
 * ---------------------------------------------------------------------- */

/* The passcode from --passcode-file or $MQCLIENT_PASSCODE into buf ("" when
 * none). The file must be a regular file not readable by others. */
static int read_passcode(const common *co, char *buf, size_t len)
{
    buf[0] = '\0';
    if (co->passcode_file) {
        int fd = open(co->passcode_file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0)
            return usage_error("cannot open --passcode-file '%s': %s",
                               co->passcode_file, strerror(errno));
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
            close(fd);
            return usage_error("--passcode-file '%s' is not a regular file",
                               co->passcode_file);
        }
        if (st.st_mode & (S_IROTH | S_IWOTH)) {
            close(fd);
            return usage_error("--passcode-file '%s' is readable or writable "
                               "by every user (mode %03o): refusing to use "
                               "it; run chmod 600 '%s'", co->passcode_file,
                               (unsigned)(st.st_mode & 0777),
                               co->passcode_file);
        }
        ssize_t n = read(fd, buf, len - 1);
        int err = errno;
        close(fd);
        if (n < 0)
            return usage_error("cannot read --passcode-file '%s': %s",
                               co->passcode_file, strerror(err));
        buf[n] = '\0';
        buf[strcspn(buf, "\r\n")] = '\0'; /* first line only */
        return 0;
    }
    const char *env = getenv("MQCLIENT_PASSCODE");
    if (env) {
        if (strlen(env) >= len)
            return usage_error("$MQCLIENT_PASSCODE is longer than %zu bytes",
                               len - 1);
        strcpy(buf, env);
    }
    return 0;
}

static void on_interrupted(void *ud, const char *broker)
{
    (void)ud;
    event("transport interrupted: lost %s, failing over", broker);
}

static void on_resumed(void *ud, const char *broker)
{
    (void)ud;
    event("transport resumed: connected to %s", broker);
}

static void on_exception(void *ud, int code, const char *msg)
{
    common *co = ud;
    if (code == MQC_EGAVEUP || code == MQC_ECLOSED)
        co->gave_up = 1;
    /* Before the first connection connect_to() reports the failure. */
    if (!co->connected)
        return;
    event("transport exception: %s: %s", mqc_errname(code), msg ? msg : "");
}

static void on_log(void *ud, mqc_log_level level, const char *msg)
{
    const common *co = ud;
    static const char *const names[] = {"error", "warn", "info", "debug"};
    /* opts.log_level cannot say "errors only" (0 means WARN), so filter. */
    if ((int)level > (int)co->log_level)
        return;
    event("[%s] %s", (unsigned)level < 4 ? names[level] : "?", msg);
}

/* Open the connection and wait for the first broker. Returns an exit code
 * (EXIT_OK with *out set). */
static int connect_to(common *co, mqc_conn **out)
{
    char pass[1024];
    int rc = read_passcode(co, pass, sizeof pass);
    if (rc != 0)
        return rc;
    mqc_conn_opts o;
    memset(&o, 0, sizeof o);
    o.login = co->login;
    o.passcode = pass[0] ? pass : NULL;
    o.vhost = co->vhost;
    o.client_id = co->client_id;
    o.listener.interrupted = on_interrupted;
    o.listener.resumed = on_resumed;
    o.listener.exception = on_exception;
    o.listener.ud = co;
    o.log = on_log;
    o.log_ud = co;
    o.log_level = co->log_level == MQC_LOG_ERROR ? MQC_LOG_WARN : co->log_level;
    rc = mqc_open(co->uri, &o, out);
    /* The library copied it; ours goes now. */
    explicit_bzero(pass, sizeof pass);
    if (rc != 0) {
        const char *m = mqc_errmsg(NULL);
        fprintf(stderr, "%s: cannot open '%s': %s\n", g_cmd, co->uri,
                m && *m ? m : mqc_strerror(rc));
        return rc == MQC_EINVAL ? EXIT_USAGE : EXIT_FAIL;
    }
    rc = mqc_wait_connected(*out, co->connect_timeout_ms);
    if (rc != 0) {
        const char *m = mqc_errmsg(*out);
        if (rc == MQC_ETIMEDOUT)
            fprintf(stderr, "%s: no broker of '%s' accepted a STOMP "
                    "connection within %d ms (--connect-timeout); is a "
                    "broker (the master) listening there?%s%s\n", g_cmd,
                    co->uri, co->connect_timeout_ms, m && *m ? " Last error: " : "",
                    m && *m ? m : "");
        else
            fprintf(stderr, "%s: cannot connect to '%s': %s\n", g_cmd,
                    co->uri, m && *m ? m : mqc_strerror(rc));
        mqc_close(*out);
        *out = NULL;
        return EXIT_CONNECT;
    }
    co->connected = 1;
    if (co->verbose) {
        char b[256];
        mqc_current_broker(*out, b, sizeof b);
        event("connected to %s", b);
    }
    return EXIT_OK;
}

/* Per-message headers: the --header list with %n expanded. vals holds the
 * malloc'ed expansions; free_headers() releases them. */
static bool build_headers(const common *co, uint64_t n, mqc_header *out,
                          char **vals)
{
    for (size_t i = 0; i < co->nheaders; i++) {
        out[i].name = co->headers[i].name;
        vals[i] = NULL;
        const char *v = co->headers[i].value;
        if (co->headers_template && has_template(v, strlen(v))) {
            size_t l;
            vals[i] = expand(v, strlen(v), n, &l);
            if (!vals[i])
                return false;
            out[i].value = vals[i];
        } else {
            out[i].value = v;
        }
    }
    return true;
}

static void free_headers(char **vals, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(vals[i]);
        vals[i] = NULL;
    }
}

/* ------------------------------------------------------------------------
 * Send completions: shared by send and bench
 * ---------------------------------------------------------------------- */

typedef struct tracker {
    pthread_mutex_t mu;
    bool verbose, json;
    double *t_sent; /* monotonic send time of message n at [n-1] */
    size_t cap;
    double *lat;    /* receipt latencies in ms, completion order */
    size_t nlat;
    uint64_t sent, confirmed, errors;
} tracker;

static void tracker_init(tracker *t, const common *co)
{
    memset(t, 0, sizeof *t);
    pthread_mutex_init(&t->mu, NULL);
    t->verbose = co->verbose;
    t->json = co->json;
}

static void tracker_free(tracker *t)
{
    free(t->t_sent);
    free(t->lat);
    pthread_mutex_destroy(&t->mu);
}

/* Note message n as sent now. false on ENOMEM. */
static bool tracker_sent(tracker *t, uint64_t n)
{
    bool ok = true;
    pthread_mutex_lock(&t->mu);
    if (n > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 4096;
        while (cap < n)
            cap *= 2;
        double *a = realloc(t->t_sent, cap * sizeof *a);
        double *b = a ? realloc(t->lat, cap * sizeof *b) : NULL;
        if (a)
            t->t_sent = a;
        if (b)
            t->lat = b;
        if (a && b)
            t->cap = cap;
        else
            ok = false;
    }
    if (ok) {
        t->t_sent[n - 1] = mono_now();
        t->sent++;
    }
    pthread_mutex_unlock(&t->mu);
    return ok;
}

/* Message n completed with status (0 = receipt). */
static void tracker_done(tracker *t, uint64_t n, int status, const char *msg)
{
    double now = mono_now(), wall = wall_now();
    pthread_mutex_lock(&t->mu);
    double ms = n >= 1 && n <= t->cap ? (now - t->t_sent[n - 1]) * 1000.0 : 0;
    if (status == 0) {
        t->confirmed++;
        if (t->nlat < t->cap)
            t->lat[t->nlat++] = ms;
    } else {
        t->errors++;
    }
    if (t->verbose) {
        if (t->json) {
            printf("{\"event\":\"receipt\",\"n\":%" PRIu64 ",\"ok\":%s,"
                   "\"t\":%.6f,\"ms\":%.3f", n, status ? "false" : "true",
                   wall, ms);
            if (status) {
                printf(",\"error\":\"%s\",\"detail\":", mqc_errname(status));
                json_cstr(stdout, msg ? msg : mqc_strerror(status));
            }
            fputs("}\n", stdout);
        } else {
            char ts[40];
            fmt_ts(ts, sizeof ts, wall);
            if (status == 0)
                printf("%s receipt #%" PRIu64 " ok %.3f ms\n", ts, n, ms);
            else
                printf("%s receipt #%" PRIu64 " FAILED %s: %s\n", ts, n,
                       mqc_errname(status), msg ? msg : mqc_strerror(status));
        }
        fflush(stdout);
    } else if (status != 0) {
        event("message #%" PRIu64 " not confirmed: %s: %s", n,
              mqc_errname(status), msg ? msg : mqc_strerror(status));
    }
    pthread_mutex_unlock(&t->mu);
}

static tracker *g_tracker; /* the async callback's target */

static void on_sent(void *ud, int status, const char *msg)
{
    tracker_done(g_tracker, (uint64_t)(uintptr_t)ud, status, msg);
}

/* End of send and bench: close (which completes anything pending, so no
 * callback runs after it), free, and the exit code: the first error, a
 * give-up, an unconfirmed send, an interrupt, in that order. */
static int send_finish(mqc_conn *c, tracker *t, char *body, const common *co,
                       int exit_rc, uint64_t conf, uint64_t sent,
                       bool interrupted)
{
    mqc_close(c);
    g_tracker = NULL;
    tracker_free(t);
    free(body);
    if (exit_rc != EXIT_OK)
        return exit_rc;
    if (co->gave_up)
        return EXIT_CONNECT;
    if (conf != sent)
        return EXIT_FAIL;
    return interrupted ? EXIT_INTR : EXIT_OK;
}

/* ------------------------------------------------------------------------
 * send
 * ---------------------------------------------------------------------- */

static const char SEND_HELP[] =
    "Usage: mqclient send URI DEST [options]\n"
    "Send messages to DEST (/queue/NAME or /topic/NAME) and wait for each\n"
    "broker RECEIPT. The body comes from --body, --size or stdin (read once,\n"
    "whole, up to 64 MiB). In --body and --header values, %n becomes the\n"
    "message number (1, 2, ...) and %% a literal %.\n"
    "\n"
    "Send options:\n"
    "  -n, --count N         messages to send; 0 = until SIGINT (default 1)\n"
    "  -b, --body TEXT       message body (default: stdin)\n"
    "  --size BYTES          generated body of BYTES bytes instead of --body\n"
    "                        or stdin (default: none)\n"
    "  --async               mqc_send_async() + mqc_flush() instead of\n"
    "                        waiting for each receipt (default: off)\n"
    "  --flush-timeout MS    --async: wait this long for the last receipts\n"
    "                        (default 60000)\n"
    "  --persistent          add persistent:true (default: off)\n"
    "  --priority N          add priority:N, 0-9 (default: none)\n"
    "  -H, --header K:V      add a header; repeatable (default: none)\n"
    "  --rate N              at most N messages per second (default: no\n"
    "                        limit)\n"
    "\n"
    "Output: a summary line (sent, confirmed, errors, seconds, msg/s) on\n"
    "stdout; with --verbose also one line per receipt (time, number,\n"
    "latency); with --json both are JSON objects. A send that failed is\n"
    "reported on stderr.\n"
    "\n" COMMON_HELP "\n" EXIT_CODES_HELP;

typedef struct send_args {
    long long count;
    const char *body;
    long long size;
    bool async, persistent;
    int priority; /* -1 none */
    double rate;  /* 0 none */
    int flush_timeout_ms;
} send_args;

static int send_opt(void *ctx, int ch, char *arg)
{
    send_args *a = ctx;
    switch (ch) {
    case 'n': return parse_ll("--count", arg, 0, LLONG_MAX, &a->count) ? 0 : -1;
    case 'b': a->body = arg; return 0;
    case OPT_SIZE:
        return parse_ll("--size", arg, 0, 1LL << 30, &a->size) ? 0 : -1;
    case OPT_ASYNC: a->async = true; return 0;
    case OPT_PERSISTENT: a->persistent = true; return 0;
    case OPT_PRIORITY:
        return parse_int("--priority", arg, 0, 9, &a->priority) ? 0 : -1;
    case OPT_RATE: return parse_pos_double("--rate", arg, &a->rate) ? 0 : -1;
    case OPT_FLUSH_TIMEOUT:
        return parse_int("--flush-timeout", arg, -1, INT_MAX,
                         &a->flush_timeout_ms) ? 0 : -1;
    default: return -1; /* unreachable: getopt only returns known ones */
    }
}

/* The body: --body text, --size generated bytes, or all of stdin. */
static int load_body(const send_args *a, char **body, size_t *len)
{
    if (a->body && a->size >= 0)
        return usage_error("--body and --size exclude each other");
    if (a->body) {
        *len = strlen(a->body);
        *body = strdup(a->body);
        return *body ? 0 : EXIT_FAIL;
    }
    if (a->size >= 0) {
        /* Printable, so --verbose consumers show something readable. */
        static const char pat[] = "mqclient-payload ";
        *len = (size_t)a->size;
        *body = malloc(*len + 1);
        if (!*body)
            return EXIT_FAIL;
        for (size_t i = 0; i < *len; i++)
            (*body)[i] = pat[i % (sizeof pat - 1)];
        (*body)[*len] = '\0';
        return 0;
    }
    if (isatty(STDIN_FILENO))
        fprintf(stderr, "%s: reading the body from stdin (end with Ctrl-D; "
                "or pass --body/--size)\n", g_cmd);
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return EXIT_FAIL;
    for (;;) {
        if (n + 1 >= cap) {
            if (cap >= MAX_BODY_STDIN) {
                free(buf);
                return usage_error("the body on stdin is larger than %u "
                                   "bytes", MAX_BODY_STDIN);
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                return EXIT_FAIL;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, stdin);
        n += r;
        if (r == 0) {
            if (ferror(stdin)) {
                free(buf);
                fprintf(stderr, "%s: reading stdin: %s\n", g_cmd,
                        strerror(errno));
                return EXIT_FAIL;
            }
            break;
        }
    }
    buf[n] = '\0';
    *body = buf;
    *len = n;
    return 0;
}

static void print_conn_stats(mqc_conn *c, bool json)
{
    mqc_stats st;
    mqc_get_stats(c, &st);
    uint64_t reconnects = st.connects > 0 ? st.connects - 1 : 0;
    if (json)
        printf(",\"reconnects\":%" PRIu64 ",\"replayed\":%" PRIu64, reconnects,
               st.replayed);
    else if (reconnects || st.replayed)
        printf(", %" PRIu64 " reconnect(s), %" PRIu64 " replayed", reconnects,
               st.replayed);
}

static int cmd_send(int argc, char **argv)
{
    static const struct option lo[] = {
        COMMON_LONGOPTS,
        {"count", required_argument, NULL, 'n'},
        {"body", required_argument, NULL, 'b'},
        {"size", required_argument, NULL, OPT_SIZE},
        {"async", no_argument, NULL, OPT_ASYNC},
        {"flush-timeout", required_argument, NULL, OPT_FLUSH_TIMEOUT},
        {"persistent", no_argument, NULL, OPT_PERSISTENT},
        {"priority", required_argument, NULL, OPT_PRIORITY},
        {"rate", required_argument, NULL, OPT_RATE},
        {NULL, 0, NULL, 0}};
    common co;
    common_init(&co);
    send_args a = {.count = 1, .size = -1, .priority = -1,
                   .flush_timeout_ms = 60000};
    int rc = parse_args(argc, argv, ":hvH:n:b:", lo, &co, send_opt, &a,
                        SEND_HELP);
    if (rc == -2)
        return EXIT_OK;
    if (rc < 0)
        return EXIT_USAGE;
    if ((size_t)co.nheaders + 2 > MAX_HEADERS)
        return usage_error("too many headers");

    char *body = NULL;
    size_t blen = 0;
    rc = load_body(&a, &body, &blen);
    if (rc != 0)
        return rc;
    bool body_tmpl = a.body && has_template(body, blen);

    mqc_conn *c = NULL;
    rc = connect_to(&co, &c);
    if (rc != EXIT_OK) {
        free(body);
        return rc;
    }
    tracker t;
    tracker_init(&t, &co);
    g_tracker = &t;

    /* Headers: --header list, then the shortcuts. */
    mqc_header hs[MAX_HEADERS];
    char *vals[MAX_HEADERS] = {0};
    char prio[16];
    size_t nfixed = co.nheaders;
    size_t nh = nfixed;
    mqc_header extra[2];
    size_t nextra = 0;
    if (a.persistent)
        extra[nextra++] = (mqc_header){"persistent", "true"};
    if (a.priority >= 0) {
        snprintf(prio, sizeof prio, "%d", a.priority);
        extra[nextra++] = (mqc_header){"priority", prio};
    }

    int exit_rc = EXIT_OK;
    double t0 = mono_now();
    uint64_t n;
    for (n = 1; a.count == 0 || n <= (uint64_t)a.count; n++) {
        if (g_stop || co.gave_up)
            break;
        if (a.rate > 0)
            sleep_until(t0 + (double)(n - 1) / a.rate);
        if (g_stop)
            break;
        if (!build_headers(&co, n, hs, vals)) {
            exit_rc = EXIT_FAIL;
            break;
        }
        for (size_t i = 0; i < nextra; i++)
            hs[nfixed + i] = extra[i];
        nh = nfixed + nextra;
        mqc_send_opts so = {.headers = hs, .nheaders = nh, .txn = NULL};
        char *b = body;
        size_t bl = blen;
        char *exp = NULL;
        if (body_tmpl) {
            exp = expand(body, blen, n, &bl);
            if (!exp) {
                free_headers(vals, co.nheaders);
                exit_rc = EXIT_FAIL;
                break;
            }
            b = exp;
        }
        if (!tracker_sent(&t, n)) {
            free(exp);
            free_headers(vals, co.nheaders);
            exit_rc = EXIT_FAIL;
            break;
        }
        int src;
        if (a.async) {
            src = mqc_send_async(c, co.dest, b, bl, &so, on_sent,
                                 (void *)(uintptr_t)n);
            if (src != 0) /* refused: the callback will not come */
                tracker_done(&t, n, src, mqc_errmsg(c));
        } else {
            src = mqc_send(c, co.dest, b, bl, &so);
            tracker_done(&t, n, src, src ? mqc_errmsg(c) : NULL);
        }
        free(exp);
        free_headers(vals, co.nheaders);
        /* Lost for good (gave up, or a plain tcp:// URI that does not
         * reconnect): every further send would fail the same way. */
        if (src == MQC_EGAVEUP || src == MQC_ECLOSED || src == MQC_ECONN) {
            co.gave_up = 1;
            break;
        }
        if (src == MQC_EINVAL) {
            exit_rc = EXIT_USAGE;
            break;
        }
    }
    /* --count 0 means "until interrupted": then a signal is the normal end. */
    bool interrupted = g_stop && a.count > 0 && n <= (uint64_t)a.count;
    if (a.async) {
        int frc = mqc_flush(c, a.flush_timeout_ms);
        if (frc != 0)
            event("flush: %s: %s (--flush-timeout %d ms)", mqc_errname(frc),
                  mqc_errmsg(c), a.flush_timeout_ms);
    }
    double secs = mono_now() - t0;

    pthread_mutex_lock(&t.mu);
    uint64_t sent = t.sent, conf = t.confirmed, errs = t.errors;
    pthread_mutex_unlock(&t.mu);
    double rate = secs > 0 ? (double)conf / secs : 0;
    if (co.json) {
        printf("{\"event\":\"summary\",\"sent\":%" PRIu64 ",\"confirmed\":%"
               PRIu64 ",\"errors\":%" PRIu64 ",\"unconfirmed\":%" PRIu64
               ",\"seconds\":%.3f,\"msg_per_s\":%.1f", sent, conf, errs,
               sent - conf - errs, secs, rate);
        print_conn_stats(c, true);
        printf(",\"interrupted\":%s}\n", interrupted ? "true" : "false");
    } else {
        printf("sent %" PRIu64 ", confirmed %" PRIu64 ", errors %" PRIu64
               " in %.3f s (%.1f msg/s)", sent, conf, errs, secs, rate);
        print_conn_stats(c, false);
        if (sent - conf - errs)
            printf(", %" PRIu64 " unconfirmed", sent - conf - errs);
        printf("%s\n", interrupted ? " (interrupted)" : "");
    }
    fflush(stdout);
    return send_finish(c, &t, body, &co, exit_rc, conf, sent, interrupted);
}

/* ------------------------------------------------------------------------
 * recv
 * ---------------------------------------------------------------------- */

static const char RECV_HELP[] =
    "Usage: mqclient recv URI DEST [options]\n"
    "Subscribe to DEST and print each message body on stdout, one per line.\n"
    "Stops after --count messages, after --timeout ms without a message, or\n"
    "on SIGINT/SIGTERM; then prints a summary (on stderr, or on stdout with\n"
    "--quiet or --json).\n"
    "\n"
    "Receive options:\n"
    "  -n, --count N         stop after N messages; 0 = no limit (default 0)\n"
    "  -t, --timeout MS      stop when no message came for MS ms; -1 = never\n"
    "                        (default -1)\n"
    "  --ack MODE            auto | client | client-individual (default\n"
    "                        auto); in client modes each message is acked\n"
    "                        when received, before its output line (which\n"
    "                        says whether the ack worked)\n"
    "  --sync-ack            wait until the broker confirmed each ack (the ACK\n"
    "                        in a transaction whose COMMIT has a receipt);\n"
    "                        default: the ACK frame is written and not\n"
    "                        confirmed, so a broker crash can lose it and the\n"
    "                        message comes again\n"
    "  --durable NAME        durable topic subscription NAME (the client-id\n"
    "                        defaults to NAME)\n"
    "  --prefetch N          activemq.prefetchSize:N on SUBSCRIBE (default:\n"
    "                        the broker's)\n"
    "  --selector EXPR       selector header on SUBSCRIBE (default: none)\n"
    "  -H, --header K:V      extra SUBSCRIBE header; repeatable (default:\n"
    "                        none)\n"
    "  --rate N              handle at most N messages per second, e.g. to\n"
    "                        play a slow consumer (default: no limit)\n"
    "  -q, --quiet           no per-message output, only the summary\n"
    "                        (default: off)\n"
    "\n"
    "Output: bodies as they are, each followed by a newline; --verbose adds\n"
    "a line per message before its body (time, number, message-id,\n"
    "redelivered); --json prints one object per message (n, t, id, dest,\n"
    "redelivered, acked, body) and a final summary object.\n"
    "\n" COMMON_HELP "\n" EXIT_CODES_HELP;

typedef struct recv_args {
    long long count;
    int timeout_ms;
    mqc_ack_mode ack;
    const char *durable, *prefetch, *selector;
    double rate;
    bool quiet, sync_ack;
} recv_args;

static int recv_opt(void *ctx, int ch, char *arg)
{
    recv_args *a = ctx;
    long long v;
    switch (ch) {
    case 'n': return parse_ll("--count", arg, 0, LLONG_MAX, &a->count) ? 0 : -1;
    case 't':
        return parse_int("--timeout", arg, -1, INT_MAX, &a->timeout_ms) ? 0 : -1;
    case OPT_ACK:
        if (!strcmp(arg, "auto")) a->ack = MQC_ACK_AUTO;
        else if (!strcmp(arg, "client")) a->ack = MQC_ACK_CLIENT;
        else if (!strcmp(arg, "client-individual"))
            a->ack = MQC_ACK_CLIENT_INDIVIDUAL;
        else
            return usage_error("bad value '%s' for --ack: expected auto, "
                               "client or client-individual", arg), -1;
        return 0;
    case OPT_DURABLE:
        if (!*arg)
            return usage_error("--durable needs a non-empty name"), -1;
        a->durable = arg;
        return 0;
    case OPT_PREFETCH:
        if (!parse_ll("--prefetch", arg, 1, INT_MAX, &v))
            return -1;
        a->prefetch = arg;
        return 0;
    case OPT_SELECTOR: a->selector = arg; return 0;
    case OPT_RATE: return parse_pos_double("--rate", arg, &a->rate) ? 0 : -1;
    case 'q': a->quiet = true; return 0;
    case OPT_SYNC_ACK: a->sync_ack = true; return 0;
    default: return -1;
    }
}

/* ACK m and wait until the broker confirmed it: the ACK goes inside a
 * transaction whose COMMIT carries a receipt (mqc_ack() alone only writes
 * the frame, which a broker crash can lose: the message then comes again). */
static int ack_confirmed(mqc_conn *c, mqc_msg *m)
{
    char tx[64];
    int rc = mqc_begin(c, tx, sizeof tx);
    if (rc != 0)
        return rc;
    rc = mqc_ack(m, tx);
    if (rc != 0) {
        (void)mqc_abort(c, tx); /* nothing to undo if it fails too */
        return rc;
    }
    return mqc_commit(c, tx);
}

static int cmd_recv(int argc, char **argv)
{
    static const struct option lo[] = {
        COMMON_LONGOPTS,
        {"count", required_argument, NULL, 'n'},
        {"timeout", required_argument, NULL, 't'},
        {"ack", required_argument, NULL, OPT_ACK},
        {"durable", required_argument, NULL, OPT_DURABLE},
        {"prefetch", required_argument, NULL, OPT_PREFETCH},
        {"selector", required_argument, NULL, OPT_SELECTOR},
        {"rate", required_argument, NULL, OPT_RATE},
        {"quiet", no_argument, NULL, 'q'},
        {"sync-ack", no_argument, NULL, OPT_SYNC_ACK},
        {NULL, 0, NULL, 0}};
    common co;
    common_init(&co);
    recv_args a = {.count = 0, .timeout_ms = -1, .ack = MQC_ACK_AUTO};
    int rc = parse_args(argc, argv, ":hvH:n:t:q", lo, &co, recv_opt, &a,
                        RECV_HELP);
    if (rc == -2)
        return EXIT_OK;
    if (rc < 0)
        return EXIT_USAGE;
    if (co.nheaders + 2 > MAX_HEADERS)
        return usage_error("too many headers");
    if (a.sync_ack && a.ack == MQC_ACK_AUTO)
        return usage_error("--sync-ack needs --ack client or client-individual "
                           "(with auto the broker forgets a message when it "
                           "sends it)");
    if (a.durable && !co.client_id)
        co.client_id = a.durable;

    mqc_conn *c = NULL;
    rc = connect_to(&co, &c);
    if (rc != EXIT_OK)
        return rc;

    mqc_header hs[MAX_HEADERS];
    size_t nh = 0;
    for (size_t i = 0; i < co.nheaders; i++)
        hs[nh++] = co.headers[i];
    if (a.prefetch)
        hs[nh++] = (mqc_header){"activemq.prefetchSize", a.prefetch};
    if (a.selector)
        hs[nh++] = (mqc_header){"selector", a.selector};
    mqc_sub_opts so = {.headers = hs, .nheaders = nh,
                       .durable_name = a.durable};
    mqc_sub *sub = NULL;
    rc = mqc_subscribe(c, co.dest, a.ack, &so, &sub);
    if (rc != 0) {
        fprintf(stderr, "%s: subscribe to %s failed: %s\n", g_cmd, co.dest,
                mqc_errmsg(c));
        mqc_close(c);
        return rc == MQC_EGAVEUP ? EXIT_CONNECT
               : rc == MQC_EINVAL ? EXIT_USAGE : EXIT_FAIL;
    }

    uint64_t got = 0, acked = 0, ack_errors = 0, redelivered = 0;
    uint64_t stale_run = 0; /* consecutive MQC_ESTATE acks */
    int exit_rc = EXIT_OK;
    double t0 = mono_now(), last = t0, first = 0;
    const char *why = "interrupted";
    for (;;) {
        if (a.count > 0 && got >= (uint64_t)a.count) {
            why = "count reached";
            break;
        }
        if (g_stop)
            break;
        if (co.gave_up) {
            why = "gave up reconnecting";
            exit_rc = EXIT_CONNECT;
            break;
        }
        double now = mono_now();
        int slice = 200;
        if (a.timeout_ms >= 0) {
            double left = last + a.timeout_ms / 1000.0 - now;
            if (left <= 0) {
                why = "timeout";
                break;
            }
            if (left * 1000 < slice)
                slice = (int)(left * 1000) + 1;
        }
        mqc_msg *m = NULL;
        rc = mqc_receive(sub, slice, &m);
        if (rc == MQC_ETIMEDOUT)
            continue;
        if (rc != 0) {
            event("receive: %s: %s", mqc_errname(rc), mqc_errmsg(c));
            why = "receive failed";
            exit_rc = rc == MQC_EGAVEUP || rc == MQC_ECONN || rc == MQC_ECLOSED
                          ? EXIT_CONNECT : EXIT_FAIL;
            break;
        }
        got++;
        last = mono_now();
        if (got == 1)
            first = last;
        bool redel = mqc_msg_redelivered(m);
        redelivered += redel;
        bool ok_ack = a.ack == MQC_ACK_AUTO;
        if (a.ack != MQC_ACK_AUTO) {
            int arc = a.sync_ack ? ack_confirmed(c, m) : mqc_ack(m, NULL);
            if (arc == 0) {
                ok_ack = true;
                acked++;
            } else {
                ack_errors++;
                /* After a failover every message prefetched from the old
                 * broker fails so (the new one redelivers it): say it once
                 * per run of them, not once per message. */
                if (arc != MQC_ESTATE || stale_run++ == 0)
                    event("ack of message %s failed: %s: %s", mqc_msg_id(m),
                          mqc_errname(arc), mqc_errmsg(c));
            }
            if (arc != MQC_ESTATE && stale_run > 1) {
                event("... and %" PRIu64 " more message(s) received before "
                      "the failover could not be acked (the broker "
                      "redelivers them)", stale_run - 1);
            }
            if (arc != MQC_ESTATE)
                stale_run = 0;
        }
        size_t bl;
        const void *body = mqc_msg_body(m, &bl);
        if (!a.quiet) {
            double wall = wall_now();
            if (co.json) {
                printf("{\"event\":\"message\",\"n\":%" PRIu64 ",\"t\":%.6f,"
                       "\"id\":", got, wall);
                json_cstr(stdout, mqc_msg_id(m));
                fputs(",\"dest\":", stdout);
                json_cstr(stdout, mqc_msg_dest(m));
                printf(",\"redelivered\":%s,\"acked\":%s,\"body\":",
                       redel ? "true" : "false", ok_ack ? "true" : "false");
                json_str(stdout, body, bl);
                fputs("}\n", stdout);
            } else {
                if (co.verbose) {
                    char ts[40];
                    fmt_ts(ts, sizeof ts, wall);
                    printf("--- %s #%" PRIu64 " message-id:%s%s%s\n", ts, got,
                           mqc_msg_id(m) ? mqc_msg_id(m) : "",
                           redel ? " redelivered" : "",
                           ok_ack ? "" : " NOT-ACKED");
                }
                fwrite(body, 1, bl, stdout);
                fputc('\n', stdout);
            }
            fflush(stdout);
        }
        mqc_msg_free(m);
        if (a.rate > 0)
            sleep_until(first + (double)got / a.rate);
    }
    double secs = (got ? last : mono_now()) - t0;
    double rate = got && last > first ? (double)(got - 1) / (last - first) : 0;
    bool reached = a.count == 0 || got >= (uint64_t)a.count;
    if (co.json) {
        printf("{\"event\":\"summary\",\"received\":%" PRIu64 ",\"acked\":%"
               PRIu64 ",\"ack_errors\":%" PRIu64 ",\"redelivered\":%" PRIu64
               ",\"seconds\":%.3f,\"msg_per_s\":%.1f,\"count_reached\":%s,"
               "\"stopped\":\"%s\"", got, acked, ack_errors, redelivered, secs,
               rate, reached ? "true" : "false", why);
        print_conn_stats(c, true);
        fputs("}\n", stdout);
    } else {
        FILE *out = a.quiet ? stdout : stderr;
        fprintf(out, "received %" PRIu64 " message(s) in %.3f s (%.1f msg/s)"
                ", acked %" PRIu64 ", ack errors %" PRIu64 ", redelivered %"
                PRIu64 "; stopped: %s\n", got, secs, rate, acked, ack_errors,
                redelivered, why);
    }
    fflush(stdout);
    if (mqc_unsubscribe(sub) != 0 && co.verbose)
        event("unsubscribe: %s", mqc_errmsg(c));
    mqc_close(c);
    if (exit_rc != EXIT_OK)
        return exit_rc;
    return reached ? EXIT_OK : EXIT_SHORT;
}

/* ------------------------------------------------------------------------
 * bench
 * ---------------------------------------------------------------------- */

static const char BENCH_HELP[] =
    "Usage: mqclient bench URI DEST [options]\n"
    "Async send throughput: mqc_send_async() as fast as the library takes\n"
    "messages (its outstanding-send bound applies), then mqc_flush(). Reports\n"
    "confirmed msg/s over first send -> last receipt, and receipt latency\n"
    "(send call -> RECEIPT) percentiles. Nothing consumes: use a fresh DEST\n"
    "or drain it afterwards.\n"
    "\n"
    "Bench options:\n"
    "  --seconds S           send for S seconds (default 10, unless --count)\n"
    "  -n, --count N         send N messages instead (default: none)\n"
    "  --size BYTES          body size (default 256)\n"
    "  --non-persistent      omit persistent:true (default: persistent, like\n"
    "                        stomp-load)\n"
    "  -H, --header K:V      extra header; repeatable (default: none)\n"
    "  --flush-timeout MS    wait this long for the last receipts (default\n"
    "                        60000)\n"
    "\n"
    "Output: a table on stdout, or with --json one object (messages,\n"
    "confirmed, errors, seconds, msg_per_s, p50_ms, p99_ms, max_ms, size).\n"
    "\n" COMMON_HELP "\n" EXIT_CODES_HELP;

typedef struct bench_args {
    double seconds;
    long long count;
    long long size;
    bool non_persistent;
    int flush_timeout_ms;
} bench_args;

static int bench_opt(void *ctx, int ch, char *arg)
{
    bench_args *a = ctx;
    switch (ch) {
    case OPT_SECONDS:
        return parse_pos_double("--seconds", arg, &a->seconds) ? 0 : -1;
    case 'n': return parse_ll("--count", arg, 1, LLONG_MAX, &a->count) ? 0 : -1;
    case OPT_SIZE: return parse_ll("--size", arg, 0, 1LL << 30, &a->size) ? 0 : -1;
    case OPT_NON_PERSISTENT: a->non_persistent = true; return 0;
    case OPT_FLUSH_TIMEOUT:
        return parse_int("--flush-timeout", arg, -1, INT_MAX,
                         &a->flush_timeout_ms) ? 0 : -1;
    default: return -1;
    }
}

static int cmd_bench(int argc, char **argv)
{
    static const struct option lo[] = {
        COMMON_LONGOPTS,
        {"seconds", required_argument, NULL, OPT_SECONDS},
        {"count", required_argument, NULL, 'n'},
        {"size", required_argument, NULL, OPT_SIZE},
        {"non-persistent", no_argument, NULL, OPT_NON_PERSISTENT},
        {"flush-timeout", required_argument, NULL, OPT_FLUSH_TIMEOUT},
        {NULL, 0, NULL, 0}};
    common co;
    common_init(&co);
    bench_args a = {.seconds = 0, .count = 0, .size = 256,
                    .flush_timeout_ms = 60000};
    int rc = parse_args(argc, argv, ":hvH:n:", lo, &co, bench_opt, &a,
                        BENCH_HELP);
    if (rc == -2)
        return EXIT_OK;
    if (rc < 0)
        return EXIT_USAGE;
    if (a.seconds > 0 && a.count > 0)
        return usage_error("--seconds and --count exclude each other");
    if (a.seconds == 0 && a.count == 0)
        a.seconds = 10;
    if (co.nheaders + 1 > MAX_HEADERS)
        return usage_error("too many headers");

    char *body = malloc((size_t)a.size + 1);
    if (!body)
        return EXIT_FAIL;
    for (long long i = 0; i < a.size; i++)
        body[i] = (char)('a' + i % 26);
    body[a.size] = '\0';

    mqc_conn *c = NULL;
    rc = connect_to(&co, &c);
    if (rc != EXIT_OK) {
        free(body);
        return rc;
    }
    tracker t;
    tracker_init(&t, &co);
    t.verbose = false; /* a line per receipt would measure the terminal */
    g_tracker = &t;

    mqc_header hs[MAX_HEADERS];
    size_t nh = 0;
    for (size_t i = 0; i < co.nheaders; i++)
        hs[nh++] = co.headers[i];
    if (!a.non_persistent)
        hs[nh++] = (mqc_header){"persistent", "true"};
    mqc_send_opts so = {.headers = hs, .nheaders = nh, .txn = NULL};

    int exit_rc = EXIT_OK;
    double t0 = mono_now(), end = t0 + a.seconds;
    uint64_t n = 0;
    for (;;) {
        if (g_stop || co.gave_up)
            break;
        if (a.count > 0 ? n >= (uint64_t)a.count : mono_now() >= end)
            break;
        n++;
        if (!tracker_sent(&t, n)) {
            exit_rc = EXIT_FAIL;
            break;
        }
        int src = mqc_send_async(c, co.dest, body, (size_t)a.size, &so,
                                 on_sent, (void *)(uintptr_t)n);
        if (src != 0) {
            tracker_done(&t, n, src, mqc_errmsg(c));
            if (src == MQC_EGAVEUP || src == MQC_ECLOSED || src == MQC_ECONN) {
                co.gave_up = 1;
                break;
            }
            if (src == MQC_EINVAL) {
                exit_rc = EXIT_USAGE;
                break;
            }
        }
    }
    bool interrupted = g_stop != 0;
    double t_sent = mono_now() - t0;
    int frc = mqc_flush(c, a.flush_timeout_ms);
    if (frc != 0)
        event("flush: %s: %s (--flush-timeout %d ms)", mqc_errname(frc),
              mqc_errmsg(c), a.flush_timeout_ms);
    double secs = mono_now() - t0;

    pthread_mutex_lock(&t.mu);
    uint64_t sent = t.sent, conf = t.confirmed, errs = t.errors;
    size_t nl = t.nlat;
    double *lat = malloc((nl ? nl : 1) * sizeof *lat);
    if (lat && nl)
        memcpy(lat, t.lat, nl * sizeof *lat);
    pthread_mutex_unlock(&t.mu);
    if (!lat)
        nl = 0;
    qsort(lat, nl, sizeof *lat, cmp_double);
    double rate = secs > 0 ? (double)conf / secs : 0;
    double p50 = pct(lat, nl, 50), p99 = pct(lat, nl, 99),
           mx = nl ? lat[nl - 1] : 0;
    char broker[256];
    mqc_current_broker(c, broker, sizeof broker);
    if (co.json) {
        printf("{\"event\":\"bench\",\"messages\":%" PRIu64 ",\"confirmed\":%"
               PRIu64 ",\"errors\":%" PRIu64 ",\"seconds\":%.3f,"
               "\"send_seconds\":%.3f,\"msg_per_s\":%.1f,\"p50_ms\":%.3f,"
               "\"p99_ms\":%.3f,\"max_ms\":%.3f,\"size\":%lld,"
               "\"persistent\":%s", sent, conf, errs, secs, t_sent, rate, p50,
               p99, mx, a.size, a.non_persistent ? "false" : "true");
        print_conn_stats(c, true);
        fputs(",\"broker\":", stdout);
        json_cstr(stdout, broker);
        printf(",\"interrupted\":%s}\n", interrupted ? "true" : "false");
    } else {
        printf("mqclient bench: %s %s, %lld-byte bodies, %s, async\n",
               broker[0] ? broker : co.uri, co.dest, a.size,
               a.non_persistent ? "non-persistent" : "persistent");
        printf("%10s %10s %7s %9s %10s %12s %12s %12s\n", "messages",
               "confirmed", "errors", "seconds", "msg/s", "receipt p50",
               "p99 ms", "max ms");
        printf("%10" PRIu64 " %10" PRIu64 " %7" PRIu64 " %9.3f %10.1f "
               "%9.3f ms %12.3f %12.3f\n", sent, conf, errs, secs, rate, p50,
               p99, mx);
        if (interrupted)
            printf("(interrupted)\n");
    }
    fflush(stdout);
    free(lat);
    return send_finish(c, &t, body, &co, exit_rc, conf, sent, interrupted);
}

/* ------------------------------------------------------------------------
 * main
 * ---------------------------------------------------------------------- */

/* ------------------------------------------------------------------------
 * bridges: mqbroker's /mq/bridges snapshot as a table
 * ---------------------------------------------------------------------- */

static const char BRIDGES_HELP[] =
    "Usage: mqclient bridges URI [options]\n"
    "Show the network bridges of an mqbroker: one row per bridge its\n"
    "network connectors made (state, peer, messages forwarded each way and\n"
    "in flight, last error). mqbroker sends one message per bridge to a\n"
    "subscription to /mq/bridges (with --users it needs the admin right);\n"
    "the snapshot ends when no message came for --timeout ms.\n"
    "\n"
    "Bridges options:\n"
    "  -t, --timeout MS      end of the snapshot: no message for MS ms\n"
    "                        (default 1000)\n"
    "\n"
    "Output: a table (no bridges: a line saying so); --json prints each\n"
    "bridge as the broker's JSON object, one per line.\n"
    "\n" COMMON_HELP "\n" EXIT_CODES_HELP;

typedef struct bridges_args {
    int timeout_ms;
} bridges_args;

static int bridges_opt(void *ctx, int ch, char *arg)
{
    bridges_args *a = ctx;
    if (ch == 't')
        return parse_int("--timeout", arg, 1, 600000, &a->timeout_ms) ? 0 : -1;
    return usage_error("unexpected option"), -1;
}

/* A header of m, or dflt when it is absent or empty (keeps the columns). */
static const char *hdr_or(const mqc_msg *m, const char *name, const char *dflt)
{
    const char *v = mqc_msg_header(m, name);
    return v && *v ? v : dflt;
}

static int cmd_bridges(int argc, char **argv)
{
    static const struct option lo[] = {
        COMMON_LONGOPTS,
        {"timeout", required_argument, NULL, 't'},
        {NULL, 0, NULL, 0}};
    common co;
    common_init(&co);
    bridges_args a = {.timeout_ms = 1000};
    g_uri_only = "/mq/bridges";
    int rc = parse_args(argc, argv, ":hvH:t:", lo, &co, bridges_opt, &a,
                        BRIDGES_HELP);
    if (rc == -2)
        return EXIT_OK;
    if (rc < 0)
        return EXIT_USAGE;

    mqc_conn *c = NULL;
    rc = connect_to(&co, &c);
    if (rc != EXIT_OK)
        return rc;
    mqc_sub_opts so = {.headers = co.headers, .nheaders = co.nheaders};
    mqc_sub *sub = NULL;
    rc = mqc_subscribe(c, co.dest, MQC_ACK_AUTO, &so, &sub);
    if (rc != 0) {
        fprintf(stderr, "%s: subscribe to /mq/bridges failed: %s\n", g_cmd,
                mqc_errmsg(c));
        mqc_close(c);
        return rc == MQC_EGAVEUP ? EXIT_CONNECT
               : rc == MQC_EINVAL ? EXIT_USAGE : EXIT_FAIL;
    }
    static const char fmt[] = "%-16s %-10s %-16s %10s %10s %8s %8s %-6s %s%s%s\n";
    int n = 0, exit_rc = EXIT_OK;
    while (!g_stop) {
        mqc_msg *m = NULL;
        rc = mqc_receive(sub, a.timeout_ms, &m);
        if (rc == MQC_ETIMEDOUT)
            break;
        if (rc != 0) {
            event("receive: %s: %s", mqc_errname(rc), mqc_errmsg(c));
            exit_rc = rc == MQC_EGAVEUP || rc == MQC_ECONN || rc == MQC_ECLOSED
                          ? EXIT_CONNECT : EXIT_FAIL;
            break;
        }
        if (co.json) {
            size_t bl;
            const char *body = mqc_msg_body(m, &bl);
            while (bl && (body[bl - 1] == '\n' || body[bl - 1] == '\r'))
                bl--;
            fwrite(body, 1, bl, stdout);
            fputc('\n', stdout);
        } else {
            if (n == 0)
                printf(fmt, "BRIDGE", "STATE", "PEER-NAME", "OUT", "IN",
                       "INFL-OUT", "INFL-IN", "DUPLEX", "PEER", "", "");
            const char *err = hdr_or(m, "mq-last-error", "");
            printf(fmt, hdr_or(m, "mq-bridge-name", "?"),
                   hdr_or(m, "mq-state", "?"), hdr_or(m, "mq-peer-name", "-"),
                   hdr_or(m, "mq-forwarded-out", "0"),
                   hdr_or(m, "mq-forwarded-in", "0"),
                   hdr_or(m, "mq-inflight-out", "0"),
                   hdr_or(m, "mq-inflight-in", "0"),
                   hdr_or(m, "mq-duplex", "-"), hdr_or(m, "mq-peer", "?"),
                   *err ? "  last error: " : "", err);
        }
        fflush(stdout);
        mqc_msg_free(m);
        n++;
    }
    if (n == 0 && exit_rc == EXIT_OK && !co.json)
        printf("no bridges (the broker has no --network-connector)\n");
    if (mqc_unsubscribe(sub) != 0 && co.verbose)
        event("unsubscribe: %s", mqc_errmsg(c));
    mqc_close(c);
    return exit_rc;
}

static const char MAIN_HELP[] =
    "Usage: mqclient COMMAND URI DEST [options]\n"
    "STOMP 1.2 client on libmqclient, with ActiveMQ-style failover URIs.\n"
    "\n"
    "Commands:\n"
    "  send    send messages and wait for their receipts\n"
    "  recv    subscribe and print messages\n"
    "  bench   async send throughput and receipt latency\n"
    "  bridges show an mqbroker's network bridges (URI only, no DEST)\n"
    "\n"
    "'mqclient COMMAND --help' lists a command's options and defaults.\n"
    "\n"
    "URI: tcp://HOST:PORT[?options] or\n"
    "  'failover:(tcp://a:61613,tcp://b:61613)?randomize=false&timeout=3000'\n"
    "(quote it: the shell treats '&' and '(' specially). Options are\n"
    "ActiveMQ's (see docs/client.md). Transport events (interrupted,\n"
    "resumed, exception) are printed on stderr with a UTC timestamp.\n"
    "\n"
    "Passcode: from $MQCLIENT_PASSCODE or --passcode-file PATH (a file not\n"
    "readable by others); never from the command line.\n"
    "\n"
    "Examples:\n"
    "  mqclient send tcp://127.0.0.1:61613 /queue/a --body 'hello %n' -n 10\n"
    "  mqclient recv tcp://127.0.0.1:61613 /queue/a --count 10 --ack client\n"
    "  mqclient bench tcp://127.0.0.1:61613 /queue/b --seconds 5 --size 1024\n"
    "  mqclient bridges tcp://127.0.0.1:61613\n"
    "\n" EXIT_CODES_HELP;

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage_error("missing COMMAND (send, recv, bench or bridges)");
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        fputs(MAIN_HELP, stdout);
        return EXIT_OK;
    }
    if (!strcmp(cmd, "--version")) {
        printf("mqclient %s\n", MQC_CLI_VERSION);
        return EXIT_OK;
    }
    int (*run)(int, char **) = NULL;
    if (!strcmp(cmd, "send"))
        run = cmd_send;
    else if (!strcmp(cmd, "recv"))
        run = cmd_recv;
    else if (!strcmp(cmd, "bench"))
        run = cmd_bench;
    else if (!strcmp(cmd, "bridges"))
        run = cmd_bridges;
    else
        return usage_error("unknown command '%s' (expected send, recv, "
                           "bench or bridges)", cmd);
    snprintf(g_cmd, sizeof g_cmd, "mqclient %s", cmd);
    install_signals();
    /* Line-buffered so a reader of a pipe (demo, bench) sees each line as
     * it happens. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    return run(argc - 1, argv + 1);
}
