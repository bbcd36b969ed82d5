/* harness.c - broker processes, fake STOMP servers and recorders for the
 * libmqclient end-to-end tests (see harness.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

mqh_config mqh_cfg = {.port_base = 61760, .reps = 2, .msgs = 10000};

/* ------------------------------------------------------------------------
 * time, names, temporary directory
 * ---------------------------------------------------------------------- */
int64_t mqh_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void mqh_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

void mqh_log(const char *fmt, ...)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "[%02d:%02d:%02d.%03ld] %s\n", tm.tm_hour, tm.tm_min,
            tm.tm_sec, ts.tv_nsec / 1000000, msg);
}

static char run_id[64];
static char tmpdir[256];
static unsigned run_counter;

const char *mqh_run_id(void)
{
    /* Unique per call, so each test (and repetition) has its own queues and
     * an ActiveMQ broker kept between runs never hands out old messages. */
    snprintf(run_id, sizeof run_id, "%ldx%lldx%u", (long)getpid(),
             (long long)(time(NULL) % 100000), ++run_counter);
    return run_id;
}

static void rm_tmpdir(void)
{
    const char *keep = getenv("MQH_KEEP");
    if (tmpdir[0] && !(keep && strcmp(keep, "1") == 0)) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
        if (system(cmd) != 0)
            fprintf(stderr, "harness: could not remove %s\n", tmpdir);
    }
}

static void cleanup_at_exit(void);

const char *mqh_tmpdir(void)
{
    if (!tmpdir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(tmpdir, sizeof tmpdir, "%s/mqc_e2e.XXXXXX",
                 base && *base ? base : "/tmp");
        if (!mkdtemp(tmpdir)) {
            perror("mkdtemp");
            exit(1);
        }
        atexit(cleanup_at_exit);
    }
    return tmpdir;
}

bool mqh_contains(const char *hay, const char *needle)
{
    return hay && needle && strcasestr(hay, needle) != NULL;
}

bool mqh_port_open(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return ok;
}

int mqh_count_established(int port)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    if (!f)
        return -1;
    char line[512];
    int n = 0;
    if (!fgets(line, sizeof line, f)) { /* header */
        fclose(f);
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        unsigned lport, rport, st;
        char laddr[16], raddr[16];
        if (sscanf(line, " %*d: %8[0-9A-F]:%x %8[0-9A-F]:%x %x", laddr, &lport,
                   raddr, &rport, &st) == 5 &&
            rport == (unsigned)port && st == 1)
            n++;
    }
    fclose(f);
    return n;
}

/* ------------------------------------------------------------------------
 * brokers
 * ---------------------------------------------------------------------- */
#define MAX_PROCS 64
static pid_t procs[MAX_PROCS];
static char amq_names[MAX_PROCS][32];
static int namq;
static pthread_mutex_t procs_mu = PTHREAD_MUTEX_INITIALIZER;

static void track_pid(pid_t pid, bool add)
{
    pthread_mutex_lock(&procs_mu);
    for (int i = 0; i < MAX_PROCS; i++) {
        if (add && procs[i] == 0) {
            procs[i] = pid;
            break;
        }
        if (!add && procs[i] == pid) {
            procs[i] = 0;
            break;
        }
    }
    pthread_mutex_unlock(&procs_mu);
}

static int run_script(const char *verb, const char *name, int port,
                      char *out, size_t outlen)
{
    char cmd[1024];
    if (port > 0) /* start: a fresh store, like a fresh mqbroker file */
        snprintf(cmd, sizeof cmd, "sh '%s' %s %s %d --fresh 2>&1",
                 mqh_cfg.activemq, verb, name, port);
    else
        snprintf(cmd, sizeof cmd, "sh '%s' %s %s 2>&1", mqh_cfg.activemq, verb,
                 name);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = 0;
    char tmp[512];
    if (out && outlen)
        out[0] = '\0';
    while (fgets(tmp, sizeof tmp, p)) {
        if (out && n + strlen(tmp) < outlen) {
            memcpy(out + n, tmp, strlen(tmp) + 1);
            n += strlen(tmp);
        }
    }
    int st = pclose(p);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static void cleanup_at_exit(void)
{
    for (int i = 0; i < MAX_PROCS; i++) {
        if (procs[i] > 0) {
            kill(-procs[i], SIGKILL);
            kill(procs[i], SIGKILL);
            waitpid(procs[i], NULL, 0);
            procs[i] = 0;
        }
    }
    for (int i = 0; i < namq; i++)
        if (amq_names[i][0])
            run_script("kill", amq_names[i], 0, NULL, 0);
    rm_tmpdir();
}

void mqh_broker_init(mqh_broker *b, const char *name, int port)
{
    memset(b, 0, sizeof *b);
    b->kind = mqh_cfg.activemq ? MQH_ACTIVEMQ : MQH_MQBROKER;
    snprintf(b->name, sizeof b->name, "%s", name);
    b->port = port;
    snprintf(b->store_uri, sizeof b->store_uri,
             "sqlite:///%s/%s.db?cluster=c%s%s", mqh_tmpdir(), name,
             mqh_run_id(), name);
    snprintf(b->log_path, sizeof b->log_path, "%s/%s.log", mqh_tmpdir(), name);
}

void mqh_broker_init_shared(mqh_broker *b, const char *name, int port,
                            const char *store_tag)
{
    mqh_broker_init(b, name, port);
    b->kind = MQH_MQBROKER; /* master/slave needs mqbroker's shared store */
    snprintf(b->store_uri, sizeof b->store_uri,
             "sqlite:///%s/%s.db?cluster=c%s", mqh_tmpdir(), store_tag,
             store_tag);
}

void mqh_broker_arg(mqh_broker *b, const char *arg)
{
    if (b->nextra < 4)
        snprintf(b->extra[b->nextra++], sizeof b->extra[0], "%s", arg);
}

const char *mqh_broker_uri(const mqh_broker *b, char *buf, size_t len)
{
    snprintf(buf, len, "tcp://127.0.0.1:%d", b->port);
    return buf;
}

bool mqh_broker_running(mqh_broker *b)
{
    if (b->kind == MQH_ACTIVEMQ)
        return b->pid != 0;
    if (b->pid <= 0)
        return false;
    int st;
    pid_t r = waitpid(b->pid, &st, WNOHANG);
    if (r == b->pid) {
        mqh_log("%s (pid %d) exited with status %d", b->name, (int)b->pid,
                WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
        track_pid(b->pid, false);
        b->pid = 0;
        return false;
    }
    return true;
}

int mqh_broker_spawn(mqh_broker *b)
{
    if (b->kind == MQH_ACTIVEMQ) {
        char out[2048];
        if (run_script("start", b->name, b->port, out, sizeof out) != 0 ||
            !strstr(out, "tcp://")) {
            mqh_log("activemq.sh start %s %d failed:\n%s", b->name, b->port,
                    out);
            return -1;
        }
        b->pid = 1;
        pthread_mutex_lock(&procs_mu);
        bool known = false;
        for (int i = 0; i < namq; i++)
            known |= strcmp(amq_names[i], b->name) == 0;
        if (!known && namq < MAX_PROCS)
            snprintf(amq_names[namq++], sizeof amq_names[0], "%s", b->name);
        pthread_mutex_unlock(&procs_mu);
        return 0;
    }
    if (!mqh_cfg.broker_path) {
        mqh_log("no --broker given");
        return -1;
    }
    char listen[64];
    snprintf(listen, sizeof listen, "127.0.0.1:%d", b->port);
    /* execv wants char *const[]: give it copies it may not write anyway. */
    char exe[512], opt_store[] = "--store", opt_listen[] = "--listen",
         opt_level[] = "--log-level", level[] = "info";
    snprintf(exe, sizeof exe, "%s", mqh_cfg.broker_path);
    char *argv[16] = {exe, opt_store, b->store_uri, opt_listen, listen,
                      opt_level, level};
    int argc = 7;
    for (int i = 0; i < b->nextra; i++)
        argv[argc++] = b->extra[i];
    /* MQH_BROKER_ARGS: extra arguments for every mqbroker, for experiments
     * (e.g. "--producer-audit 0" must make scenario e see duplicates). */
    char envargs[256];
    const char *ea = getenv("MQH_BROKER_ARGS");
    snprintf(envargs, sizeof envargs, "%s", ea ? ea : "");
    for (char *save = NULL, *tok = strtok_r(envargs, " ", &save);
         tok && argc < 15; tok = strtok_r(NULL, " ", &save))
        argv[argc++] = tok;
    argv[argc] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        setpgid(0, 0);
        int fd = open(b->log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
        int nul = open("/dev/null", O_RDONLY);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        if (nul >= 0)
            dup2(nul, 0);
        execv(argv[0], argv);
        _exit(127);
    }
    b->pid = pid;
    track_pid(pid, true);
    return 0;
}

static bool log_has(const mqh_broker *b, const char *what)
{
    FILE *f = fopen(b->log_path, "r");
    if (!f)
        return false;
    char line[1024];
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, what) != NULL;
    fclose(f);
    return found;
}

void mqh_broker_dump_log(const mqh_broker *b)
{
    if (b->kind == MQH_ACTIVEMQ)
        return;
    FILE *f = fopen(b->log_path, "r");
    if (!f)
        return;
    char lines[20][512];
    int n = 0;
    while (fgets(lines[n % 20], sizeof lines[0], f))
        n++;
    fclose(f);
    for (int i = n > 20 ? n - 20 : 0; i < n; i++)
        fprintf(stderr, "    %s| %s", b->name, lines[i % 20]);
}

int mqh_broker_wait_master(mqh_broker *b, int timeout_ms)
{
    int64_t end = mqh_now_ms() + timeout_ms;
    while (mqh_now_ms() < end) {
        if (!mqh_broker_running(b)) {
            mqh_log("%s died before becoming master", b->name);
            mqh_broker_dump_log(b);
            return -1;
        }
        if (mqh_port_open(b->port))
            return 0;
        mqh_sleep_ms(10);
    }
    mqh_log("%s: port %d not open within %d ms", b->name, b->port, timeout_ms);
    mqh_broker_dump_log(b);
    return -1;
}

int mqh_broker_start(mqh_broker *b, int timeout_ms)
{
    if (mqh_broker_spawn(b) != 0)
        return -1;
    if (b->kind == MQH_ACTIVEMQ)
        return 0; /* the script returns once the port is ready */
    return mqh_broker_wait_master(b, timeout_ms);
}

int mqh_broker_wait_standby(mqh_broker *b, int timeout_ms)
{
    int64_t end = mqh_now_ms() + timeout_ms;
    while (mqh_now_ms() < end) {
        if (!mqh_broker_running(b))
            return -1;
        if (log_has(b, "waiting for the store lock"))
            return 0;
        mqh_sleep_ms(20);
    }
    mqh_log("%s: never reported standby", b->name);
    mqh_broker_dump_log(b);
    return -1;
}

void mqh_broker_kill9(mqh_broker *b)
{
    if (b->kind == MQH_ACTIVEMQ) {
        run_script("kill", b->name, 0, NULL, 0);
        b->pid = 0;
        return;
    }
    if (b->pid > 0) {
        kill(b->pid, SIGKILL);
        waitpid(b->pid, NULL, 0);
        track_pid(b->pid, false);
        b->pid = 0;
    }
}

int mqh_broker_stop(mqh_broker *b)
{
    if (b->kind == MQH_ACTIVEMQ) {
        int rc = run_script("stop", b->name, 0, NULL, 0);
        b->pid = 0;
        return rc;
    }
    if (b->pid <= 0)
        return 0;
    kill(b->pid, SIGTERM);
    int64_t end = mqh_now_ms() + 15000;
    int st = 0;
    while (mqh_now_ms() < end) {
        pid_t r = waitpid(b->pid, &st, WNOHANG);
        if (r == b->pid) {
            track_pid(b->pid, false);
            b->pid = 0;
            return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
        }
        mqh_sleep_ms(10);
    }
    mqh_log("%s did not exit within 15 s of SIGTERM; killing it", b->name);
    mqh_broker_kill9(b);
    return -1;
}

/* ------------------------------------------------------------------------
 * recorders
 * ---------------------------------------------------------------------- */
void mqh_rec_init(mqh_rec *r, const char *tag)
{
    memset(r, 0, sizeof *r);
    pthread_mutex_init(&r->mu, NULL);
    r->tag = tag;
}

void mqh_rec_destroy(mqh_rec *r)
{
    pthread_mutex_destroy(&r->mu);
}

static void rec_log(void *ud, mqc_log_level level, const char *msg)
{
    mqh_rec *r = ud;
    pthread_mutex_lock(&r->mu);
    if (r->nlogs < MQH_MAX_EVENTS) {
        mqh_event *e = &r->logs[r->nlogs++];
        e->at_ms = mqh_now_ms();
        e->kind = (int)level;
        snprintf(e->text, sizeof e->text, "%s", msg ? msg : "(null)");
    }
    pthread_mutex_unlock(&r->mu);
    if (getenv("MQH_VERBOSE"))
        mqh_log("%s log[%d]: %s", r->tag, (int)level, msg);
}

static void rec_event(mqh_rec *r, int kind, int code, const char *text)
{
    pthread_mutex_lock(&r->mu);
    if (r->nevents < 256) {
        mqh_event *e = &r->events[r->nevents++];
        e->at_ms = mqh_now_ms();
        e->kind = kind;
        e->code = code;
        snprintf(e->text, sizeof e->text, "%s", text ? text : "(null)");
    }
    if (kind == MQH_EV_INTERRUPTED)
        r->interrupted++;
    else if (kind == MQH_EV_RESUMED)
        r->resumed++;
    else
        r->exceptions++;
    pthread_mutex_unlock(&r->mu);
    mqh_log("%s: %s %s%s%s", r->tag,
            kind == MQH_EV_INTERRUPTED ? "interrupted"
            : kind == MQH_EV_RESUMED   ? "resumed"
                                       : "exception",
            kind == MQH_EV_EXCEPTION ? mqc_errname(code) : "",
            kind == MQH_EV_EXCEPTION ? ": " : "", text ? text : "(null)");
}

static void rec_interrupted(void *ud, const char *broker)
{
    rec_event(ud, MQH_EV_INTERRUPTED, 0, broker);
}

static void rec_resumed(void *ud, const char *broker)
{
    rec_event(ud, MQH_EV_RESUMED, 0, broker);
}

static void rec_exception(void *ud, int code, const char *msg)
{
    rec_event(ud, MQH_EV_EXCEPTION, code, msg);
}

void mqh_rec_opts(mqh_rec *r, mqc_conn_opts *o, mqc_log_level level)
{
    o->listener.interrupted = rec_interrupted;
    o->listener.resumed = rec_resumed;
    o->listener.exception = rec_exception;
    o->listener.ud = r;
    o->log = rec_log;
    o->log_ud = r;
    o->log_level = level;
}

int mqh_rec_count_logs(mqh_rec *r, mqc_log_level level)
{
    pthread_mutex_lock(&r->mu);
    int n = 0;
    for (int i = 0; i < r->nlogs; i++)
        n += r->logs[i].kind == (int)level;
    pthread_mutex_unlock(&r->mu);
    return n;
}

int mqh_rec_count(mqh_rec *r, int kind)
{
    pthread_mutex_lock(&r->mu);
    int n = kind == MQH_EV_INTERRUPTED ? r->interrupted
            : kind == MQH_EV_RESUMED   ? r->resumed
                                       : r->exceptions;
    pthread_mutex_unlock(&r->mu);
    return n;
}

bool mqh_rec_wait(mqh_rec *r, int kind, int n, int timeout_ms)
{
    int64_t end = mqh_now_ms() + timeout_ms;
    while (mqh_rec_count(r, kind) < n) {
        if (mqh_now_ms() >= end)
            return false;
        mqh_sleep_ms(5);
    }
    return true;
}

bool mqh_rec_find_exception(mqh_rec *r, int code, char *text, size_t len)
{
    bool found = false;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->nevents && !found; i++) {
        if (r->events[i].kind == MQH_EV_EXCEPTION && r->events[i].code == code) {
            found = true;
            if (text)
                snprintf(text, len, "%s", r->events[i].text);
        }
    }
    pthread_mutex_unlock(&r->mu);
    return found;
}

/* ------------------------------------------------------------------------
 * fake STOMP server: one thread, poll() over the listener and clients
 * ---------------------------------------------------------------------- */
static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
        listen(fd, 128) != 0) {
        mqh_log("fake server: cannot listen on 127.0.0.1:%d: %s", port,
                strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

static void send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0) {
            if (w < 0 && errno == EINTR)
                continue;
            return; /* the client went away or stopped reading: fine */
        }
        c += w;
        n -= (size_t)w;
    }
}

static void fake_close_conn(mqh_fake *f, int i)
{
    close(f->conns[i]);
    f->conns[i] = -1;
    free(f->inbuf[i]);
    f->inbuf[i] = NULL;
    f->inlen[i] = 0;
    f->concurrent--;
}

/* One complete frame at the start of buf? Returns its length (incl. NUL),
 * 0 if incomplete. */
static size_t frame_len(const char *buf, size_t len, size_t *hdr_end)
{
    const char *e = memmem(buf, len, "\n\n", 2);
    if (!e)
        return 0;
    size_t body = (size_t)(e - buf) + 2;
    *hdr_end = body;
    const char *cl = NULL;
    for (const char *p = buf; p < e; p++)
        if ((p == buf || p[-1] == '\n') && strncmp(p, "content-length:", 15) == 0) {
            cl = p + 15;
            break;
        }
    if (cl) {
        size_t n = strtoul(cl, NULL, 10);
        return len >= body + n + 1 ? body + n + 1 : 0;
    }
    const char *z = memchr(buf + body, '\0', len - body);
    return z ? (size_t)(z - buf) + 1 : 0;
}

static void fake_handle(mqh_fake *f, int i)
{
    for (;;) {
        /* skip heart-beat EOLs */
        size_t skip = 0;
        while (skip < f->inlen[i] &&
               (f->inbuf[i][skip] == '\n' || f->inbuf[i][skip] == '\r'))
            skip++;
        if (skip) {
            memmove(f->inbuf[i], f->inbuf[i] + skip, f->inlen[i] - skip);
            f->inlen[i] -= skip;
        }
        size_t hdr_end = 0;
        size_t n = frame_len(f->inbuf[i], f->inlen[i], &hdr_end);
        if (n == 0)
            return;
        char hdr[2048];
        size_t hl = hdr_end < sizeof hdr - 1 ? hdr_end : sizeof hdr - 1;
        memcpy(hdr, f->inbuf[i], hl);
        hdr[hl] = '\0';
        memmove(f->inbuf[i], f->inbuf[i] + n, f->inlen[i] - n);
        f->inlen[i] -= n;
        f->frames_in++;
        char receipt[256];
        mqh_header_value(hdr, "receipt", receipt, sizeof receipt);
        int fd = f->conns[i];
        if (strncmp(hdr, "CONNECT\n", 8) == 0 || strncmp(hdr, "STOMP\n", 6) == 0) {
            snprintf(f->connect_frames[f->nconnects % 8], sizeof f->connect_frames[0],
                     "%s", hdr);
            f->nconnects++;
            if (f->mode == MQH_FAKE_RAW && !f->raw_after_connected) {
                send_all(fd, f->raw, f->raw_len);
            } else {
                char out[2048];
                int m = snprintf(out, sizeof out,
                                 "CONNECTED\nversion:1.2\nheart-beat:0,0\n"
                                 "server:mqh-fake/1\nsession:s%d\n%s\n",
                                 f->nconnects, f->connected_extra);
                send_all(fd, out, (size_t)m + 1); /* + NUL */
                if (f->mode == MQH_FAKE_RAW) {
                    size_t rep = f->raw_repeat ? f->raw_repeat : 1;
                    for (size_t k = 0; k < rep; k++)
                        send_all(fd, f->raw, f->raw_len);
                }
            }
            if (f->mode == MQH_FAKE_RAW && f->raw_close) {
                fake_close_conn(f, i);
                return;
            }
        } else if (receipt[0]) {
            char out[512];
            int m = snprintf(out, sizeof out, "RECEIPT\nreceipt-id:%s\n\n", receipt);
            send_all(fd, out, (size_t)m + 1);
        }
        if (strncmp(hdr, "DISCONNECT\n", 11) == 0) {
            fake_close_conn(f, i);
            return;
        }
    }
}

static void *fake_main(void *arg)
{
    mqh_fake *f = arg;
    for (;;) {
        pthread_mutex_lock(&f->mu);
        if (f->want_listen && f->lfd < 0)
            f->lfd = listen_on(f->port);
        else if (!f->want_listen && f->lfd >= 0) {
            close(f->lfd);
            f->lfd = -1;
        }
        if (f->drop_all) {
            for (int i = 0; i < MQH_FAKE_MAX_CONNS; i++)
                if (f->conns[i] >= 0)
                    fake_close_conn(f, i);
            f->drop_all = false;
        }
        struct pollfd pf[MQH_FAKE_MAX_CONNS + 2];
        int idx[MQH_FAKE_MAX_CONNS + 2];
        int n = 0;
        pf[n] = (struct pollfd){.fd = f->stop_pipe[0], .events = POLLIN};
        idx[n++] = -2;
        if (f->lfd >= 0) {
            pf[n] = (struct pollfd){.fd = f->lfd, .events = POLLIN};
            idx[n++] = -1;
        }
        for (int i = 0; i < MQH_FAKE_MAX_CONNS; i++)
            if (f->conns[i] >= 0) {
                pf[n] = (struct pollfd){.fd = f->conns[i], .events = POLLIN};
                idx[n++] = i;
            }
        pthread_mutex_unlock(&f->mu);

        if (poll(pf, (nfds_t)n, 20) < 0 && errno != EINTR)
            break;
        if (pf[0].revents)
            break; /* stop */

        pthread_mutex_lock(&f->mu);
        for (int k = 1; k < n; k++) {
            if (!pf[k].revents)
                continue;
            if (idx[k] == -1) {
                int c = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
                if (c < 0)
                    continue;
                if (f->naccepts < MQH_FAKE_MAX_ACCEPTS)
                    f->accepts[f->naccepts] = mqh_now_ms();
                f->naccepts++;
                int slot = -1;
                for (int i = 0; i < MQH_FAKE_MAX_CONNS; i++)
                    if (f->conns[i] < 0) {
                        slot = i;
                        break;
                    }
                if (f->mode == MQH_FAKE_ACCEPT_CLOSE || slot < 0) {
                    close(c);
                    continue;
                }
                struct timeval tv = {2, 0};
                setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
                f->conns[slot] = c;
                f->concurrent++;
                if (f->concurrent > f->max_concurrent)
                    f->max_concurrent = f->concurrent;
                continue;
            }
            int i = idx[k];
            if (f->conns[i] < 0)
                continue;
            char buf[65536];
            ssize_t r = recv(f->conns[i], buf, sizeof buf, MSG_DONTWAIT);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR))
                    continue;
                fake_close_conn(f, i);
                continue;
            }
            char *nb = realloc(f->inbuf[i], f->inlen[i] + (size_t)r);
            if (!nb) {
                fake_close_conn(f, i);
                continue;
            }
            f->inbuf[i] = nb;
            memcpy(nb + f->inlen[i], buf, (size_t)r);
            f->inlen[i] += (size_t)r;
            fake_handle(f, i);
        }
        pthread_mutex_unlock(&f->mu);
    }
    return NULL;
}

#define MAX_FAKES 32
static mqh_fake *fakes[MAX_FAKES];

int mqh_fake_start(mqh_fake *f, int port, mqh_fake_mode mode)
{
    if (f->running) /* left over by a failed test */
        mqh_fake_stop(f);
    memset(f, 0, sizeof *f);
    pthread_mutex_lock(&procs_mu);
    bool known = false;
    for (int i = 0; i < MAX_FAKES; i++)
        known |= fakes[i] == f;
    for (int i = 0; i < MAX_FAKES && !known; i++)
        if (!fakes[i]) {
            fakes[i] = f;
            known = true;
        }
    pthread_mutex_unlock(&procs_mu);
    f->port = port;
    f->mode = mode;
    f->lfd = listen_on(port);
    if (f->lfd < 0)
        return -1;
    f->want_listen = true;
    for (int i = 0; i < MQH_FAKE_MAX_CONNS; i++)
        f->conns[i] = -1;
    if (pipe2(f->stop_pipe, O_CLOEXEC) != 0) {
        close(f->lfd);
        return -1;
    }
    pthread_mutex_init(&f->mu, NULL);
    if (pthread_create(&f->thr, NULL, fake_main, f) != 0) {
        close(f->lfd);
        close(f->stop_pipe[0]);
        close(f->stop_pipe[1]);
        pthread_mutex_destroy(&f->mu);
        return -1;
    }
    f->running = true;
    return 0;
}

void mqh_cleanup_test(void)
{
    mqh_cleanup_proxies();
    for (int i = 0; i < MAX_FAKES; i++)
        if (fakes[i] && fakes[i]->running)
            mqh_fake_stop(fakes[i]);
    for (int i = 0; i < MAX_PROCS; i++) {
        pid_t pid;
        pthread_mutex_lock(&procs_mu);
        pid = procs[i];
        procs[i] = 0;
        pthread_mutex_unlock(&procs_mu);
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, NULL, 0);
        }
    }
    for (int i = 0; i < namq; i++)
        if (amq_names[i][0])
            run_script("kill", amq_names[i], 0, NULL, 0);
}

void mqh_fake_stop(mqh_fake *f)
{
    if (!f->running)
        return;
    if (write(f->stop_pipe[1], "s", 1) != 1)
        mqh_log("fake server: stop pipe write failed");
    pthread_join(f->thr, NULL);
    for (int i = 0; i < MQH_FAKE_MAX_CONNS; i++)
        if (f->conns[i] >= 0)
            fake_close_conn(f, i);
    if (f->lfd >= 0)
        close(f->lfd);
    close(f->stop_pipe[0]);
    close(f->stop_pipe[1]);
    pthread_mutex_destroy(&f->mu);
    f->running = false;
}

void mqh_fake_set_mode(mqh_fake *f, mqh_fake_mode mode)
{
    pthread_mutex_lock(&f->mu);
    f->mode = mode;
    pthread_mutex_unlock(&f->mu);
}

void mqh_fake_drop(mqh_fake *f)
{
    pthread_mutex_lock(&f->mu);
    f->drop_all = true;
    pthread_mutex_unlock(&f->mu);
    for (int i = 0; i < 200; i++) {
        pthread_mutex_lock(&f->mu);
        bool done = !f->drop_all;
        pthread_mutex_unlock(&f->mu);
        if (done)
            return;
        mqh_sleep_ms(5);
    }
}

void mqh_fake_listen(mqh_fake *f, bool on)
{
    pthread_mutex_lock(&f->mu);
    f->want_listen = on;
    pthread_mutex_unlock(&f->mu);
    for (int i = 0; i < 400; i++) {
        pthread_mutex_lock(&f->mu);
        bool done = (f->lfd >= 0) == on;
        pthread_mutex_unlock(&f->mu);
        if (done)
            return;
        mqh_sleep_ms(5);
    }
    mqh_log("fake server %d: listen(%d) not applied", f->port, (int)on);
}

int mqh_fake_accepts(mqh_fake *f, int64_t *times, int max)
{
    pthread_mutex_lock(&f->mu);
    int n = f->naccepts;
    for (int i = 0; times && i < n && i < max && i < MQH_FAKE_MAX_ACCEPTS; i++)
        times[i] = f->accepts[i];
    pthread_mutex_unlock(&f->mu);
    return n;
}

int mqh_fake_connects(mqh_fake *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->nconnects;
    pthread_mutex_unlock(&f->mu);
    return n;
}

void mqh_fake_connect_frame(mqh_fake *f, int i, char *buf, size_t len)
{
    pthread_mutex_lock(&f->mu);
    if (i < f->nconnects && i >= f->nconnects - 8)
        snprintf(buf, len, "%s", f->connect_frames[i % 8]);
    else
        snprintf(buf, len, "%s", "");
    pthread_mutex_unlock(&f->mu);
}

void mqh_header_value(const char *frame, const char *name, char *buf,
                      size_t len)
{
    size_t nl = strlen(name);
    buf[0] = '\0';
    for (const char *p = frame; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : p) {
        if (strncmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            size_t vl = strcspn(v, "\r\n");
            if (vl >= len)
                vl = len - 1;
            memcpy(buf, v, vl);
            buf[vl] = '\0';
            return;
        }
    }
}

/* ------------------------------------------------------------------------
 * TCP proxy
 * ---------------------------------------------------------------------- */
#define MAX_PROXIES 8
static mqh_proxy *proxies[MAX_PROXIES];

static int connect_local(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void proxy_close_pair(mqh_proxy *p, int i)
{
    close(p->down[i]);
    close(p->up[i]);
    p->down[i] = p->up[i] = -1;
}

/* Move what is readable on `from` to `to`; false when the pair is over. */
static bool proxy_pump(int from, int to)
{
    char buf[65536];
    ssize_t r = recv(from, buf, sizeof buf, MSG_DONTWAIT);
    if (r == 0)
        return false;
    if (r < 0)
        return errno == EAGAIN || errno == EINTR;
    if (to < 0)
        return true; /* held: the bytes are dropped */
    const char *c = buf;
    size_t n = (size_t)r;
    while (n > 0) { /* blocking send: the peers are local and reading */
        ssize_t w = send(to, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        c += w;
        n -= (size_t)w;
    }
    return true;
}

static void *proxy_main(void *arg)
{
    mqh_proxy *p = arg;
    for (;;) {
        struct pollfd pf[2 + 2 * MQH_PROXY_MAX];
        int who[2 + 2 * MQH_PROXY_MAX];
        int n = 0;
        pthread_mutex_lock(&p->mu);
        pf[n] = (struct pollfd){.fd = p->stop_pipe[0], .events = POLLIN};
        who[n++] = -2;
        pf[n] = (struct pollfd){.fd = p->lfd, .events = POLLIN};
        who[n++] = -1;
        for (int i = 0; i < MQH_PROXY_MAX; i++) {
            if (p->down[i] < 0)
                continue;
            pf[n] = (struct pollfd){.fd = p->down[i], .events = POLLIN};
            who[n++] = 2 * i;
            pf[n] = (struct pollfd){.fd = p->up[i], .events = POLLIN};
            who[n++] = 2 * i + 1;
        }
        pthread_mutex_unlock(&p->mu);
        if (poll(pf, (nfds_t)n, 20) < 0 && errno != EINTR)
            break;
        if (pf[0].revents)
            break;
        pthread_mutex_lock(&p->mu);
        for (int k = 1; k < n; k++) {
            if (!pf[k].revents)
                continue;
            if (who[k] == -1) {
                int c = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
                if (c < 0)
                    continue;
                int u = connect_local(p->upstream);
                int slot = -1;
                for (int i = 0; i < MQH_PROXY_MAX && slot < 0; i++)
                    if (p->down[i] < 0)
                        slot = i;
                if (u < 0 || slot < 0) {
                    close(c); /* upstream down: a failed attempt */
                    if (u >= 0)
                        close(u);
                    continue;
                }
                int one = 1;
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                p->down[slot] = c;
                p->up[slot] = u;
                continue;
            }
            int i = who[k] / 2;
            if (p->down[i] < 0)
                continue;
            bool from_up = who[k] % 2 == 1;
            bool ok;
            if (from_up && p->hold)
                ok = proxy_pump(p->up[i], -1);
            else if (from_up)
                ok = proxy_pump(p->up[i], p->down[i]);
            else
                ok = proxy_pump(p->down[i], p->up[i]);
            if (!ok)
                proxy_close_pair(p, i);
        }
        pthread_mutex_unlock(&p->mu);
    }
    return NULL;
}

int mqh_proxy_start(mqh_proxy *p, int port, int upstream)
{
    if (p->running)
        mqh_proxy_stop(p);
    memset(p, 0, sizeof *p);
    p->port = port;
    p->upstream = upstream;
    for (int i = 0; i < MQH_PROXY_MAX; i++)
        p->down[i] = p->up[i] = -1;
    p->lfd = listen_on(port);
    if (p->lfd < 0)
        return -1;
    if (pipe2(p->stop_pipe, O_CLOEXEC) != 0) {
        close(p->lfd);
        return -1;
    }
    pthread_mutex_init(&p->mu, NULL);
    if (pthread_create(&p->thr, NULL, proxy_main, p) != 0) {
        close(p->lfd);
        close(p->stop_pipe[0]);
        close(p->stop_pipe[1]);
        pthread_mutex_destroy(&p->mu);
        return -1;
    }
    p->running = true;
    pthread_mutex_lock(&procs_mu);
    bool known = false;
    for (int i = 0; i < MAX_PROXIES; i++)
        known |= proxies[i] == p;
    for (int i = 0; i < MAX_PROXIES && !known; i++)
        if (!proxies[i]) {
            proxies[i] = p;
            known = true;
        }
    pthread_mutex_unlock(&procs_mu);
    return 0;
}

void mqh_proxy_hold(mqh_proxy *p, bool hold)
{
    pthread_mutex_lock(&p->mu);
    p->hold = hold;
    pthread_mutex_unlock(&p->mu);
}

void mqh_proxy_stop(mqh_proxy *p)
{
    if (!p->running)
        return;
    if (write(p->stop_pipe[1], "s", 1) != 1)
        mqh_log("proxy: stop pipe write failed");
    pthread_join(p->thr, NULL);
    for (int i = 0; i < MQH_PROXY_MAX; i++)
        if (p->down[i] >= 0)
            proxy_close_pair(p, i);
    close(p->lfd);
    close(p->stop_pipe[0]);
    close(p->stop_pipe[1]);
    pthread_mutex_destroy(&p->mu);
    p->running = false;
}

void mqh_cleanup_proxies(void)
{
    for (int i = 0; i < MAX_PROXIES; i++)
        if (proxies[i] && proxies[i]->running)
            mqh_proxy_stop(proxies[i]);
}
