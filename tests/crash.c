/*
 * crash.c - crash safety: kill -9 a writer at random moments, then check
 * that nothing it was told is durable went missing or came back.
 *
 * Usage: mqs_crash [URI]   (default: a fresh SQLite file; "@TMP@" in the
 * URI is replaced by a private temporary directory, removed at exit)
 * Environment: MQSTORE_CRASH_ITERATIONS (default 15, 5 with
 * MQSTORE_TEST_QUICK=1), MQSTORE_CRASH_SEED to replay a run.
 *
 * A child process opens the store itself (a handle never crosses fork) and
 * loops enqueue/ack with sync calls. Over a pipe it reports
 *   "R"                   once the store is open,
 *   "E <id> <sub> <sum>"  after an enqueue returned (durable),
 *   "a <id> <sub>"        before an ack (it may or may not land),
 *   "A <id> <sub>"        after the ack returned (durable).
 * Each message carries its seed, length and checksum in its headers and a
 * body derived from the seed, so a half-written row is detectable. After
 * each kill the parent opens the store and checks: every reported enqueue
 * without an ack attempt is there and intact, every reported ack stays
 * acked, every message present is intact.
 * The kill comes 10-300 ms after fork (even iterations: kills during open
 * and migration) or after "R" (odd iterations: kills mid-write even on a
 * slow machine).
 */
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mqstore/mqstore.h>

static int failures;
#define FAIL(...)                                                              \
    do {                                                                       \
        fprintf(stderr, "FAIL: " __VA_ARGS__);                                 \
        fputc('\n', stderr);                                                   \
        failures++;                                                            \
    } while (0)

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t rng(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void fill(unsigned char *p, size_t len, uint64_t seed)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ULL + 1;
    for (size_t i = 0; i < len; i++)
        p[i] = (unsigned char)(rng(&x) >> 24);
}

static uint64_t fnv(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* ---- what the parent knows, by (id, sub) ---- */
typedef struct rec {
    int64_t id, sub;
    uint64_t sum;
    unsigned enq : 1, ack_try : 1, ack_done : 1, found : 1;
} rec;

static rec *tab;
static size_t tab_cap, tab_n;

static size_t slot_of(int64_t id, int64_t sub)
{
    uint64_t h = ((uint64_t)id * 0x9e3779b97f4a7c15ULL) ^ (uint64_t)sub;
    return (size_t)(h & (tab_cap - 1));
}

static rec *lookup(int64_t id, int64_t sub, int create)
{
    if (create && (tab_n + 1) * 2 > tab_cap) {
        size_t old_cap = tab_cap;
        rec *old = tab;
        tab_cap = tab_cap ? tab_cap * 2 : 1024;
        tab = calloc(tab_cap, sizeof *tab);
        if (!tab) {
            perror("calloc");
            exit(2);
        }
        for (size_t i = 0; i < old_cap; i++) {
            if (!old[i].id)
                continue;
            size_t j = slot_of(old[i].id, old[i].sub);
            while (tab[j].id)
                j = (j + 1) & (tab_cap - 1);
            tab[j] = old[i];
        }
        free(old);
    }
    if (!tab_cap)
        return NULL;
    size_t j = slot_of(id, sub);
    while (tab[j].id) {
        if (tab[j].id == id && tab[j].sub == sub)
            return &tab[j];
        j = (j + 1) & (tab_cap - 1);
    }
    if (!create)
        return NULL;
    tab[j].id = id;
    tab[j].sub = sub;
    tab_n++;
    return &tab[j];
}

/* ---- the child ---- */
static void say(int fd, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void say(int fd, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof buf)
        _exit(4);
    /* one write per line: atomic on a pipe, so no torn lines */
    ssize_t w;
    do
        w = write(fd, buf, (size_t)n);
    while (w < 0 && errno == EINTR);
    if (w != n)
        _exit(4);
}

static size_t pick_size(uint64_t *x)
{
    uint64_t r = rng(x) % 64;
    if (r == 0)
        return 1024 * 1024 - (size_t)(rng(x) % 1000);
    if (r < 8)
        return 4096 + (size_t)(rng(x) % 60000);
    return (size_t)(rng(x) % 512);
}

static void child(const char *uri, const char *queue, const char *topic,
                  int64_t sub, int fd, uint64_t seed)
{
    mqs_store *s = NULL;
    int rc = mqs_open(uri, NULL, &s);
    if (rc != 0) {
        say(fd, "X open: %s: %.150s\n", mqs_errname(rc), mqs_errmsg(NULL));
        _exit(3);
    }
    say(fd, "R\n");
    uint64_t x = seed | 1;
    unsigned char *body = malloc(1024 * 1024 + 1);
    if (!body)
        _exit(5);
    int64_t open_ids[64], open_subs[64];
    size_t nopen = 0;
    /* Bounded: the parent kills us long before this ends. */
    for (uint64_t k = 0; k < 1000000; k++) {
        uint64_t mseed = seed ^ (k * 0x100000001b3ULL);
        size_t len = pick_size(&x);
        fill(body, len, mseed);
        uint64_t sum = fnv(body, len);
        char hdr[96];
        int hl = snprintf(hdr, sizeof hdr, "seed=%016" PRIx64 ";len=%zu;sum=%016" PRIx64,
                          mseed, len, sum);
        int to_topic = rng(&x) % 3 == 0;
        mqs_msg m;
        memset(&m, 0, sizeof m);
        m.kind = to_topic ? MQS_TOPIC : MQS_QUEUE;
        m.dest = to_topic ? topic : queue;
        m.headers = hdr;
        m.headers_len = (size_t)hl;
        m.body = body;
        m.body_len = len;
        m.priority = (int)(rng(&x) % 10);
        int64_t id = 0;
        rc = mqs_enqueue(s, &m, &id);
        if (rc != 0) {
            say(fd, "X enqueue: %s: %.150s\n", mqs_errname(rc), mqs_errmsg(s));
            _exit(3);
        }
        int64_t msub = to_topic ? sub : 0;
        say(fd, "E %" PRId64 " %" PRId64 " %016" PRIx64 "\n", id, msub, sum);
        if (nopen < 64) {
            open_ids[nopen] = id;
            open_subs[nopen++] = msub;
        }
        /* ack a random earlier message about every other round */
        if (nopen && rng(&x) % 2 == 0) {
            size_t i = (size_t)(rng(&x) % nopen);
            int64_t aid = open_ids[i], asub = open_subs[i];
            open_ids[i] = open_ids[--nopen];
            open_subs[i] = open_subs[nopen];
            say(fd, "a %" PRId64 " %" PRId64 "\n", aid, asub);
            rc = mqs_ack(s, aid, asub);
            if (rc != 0) {
                say(fd, "X ack: %s: %.150s\n", mqs_errname(rc), mqs_errmsg(s));
                _exit(3);
            }
            say(fd, "A %" PRId64 " %" PRId64 "\n", aid, asub);
        }
    }
    mqs_close(s);
    free(body);
    _exit(0);
}

/* ---- the parent ---- */
static uint64_t reported, acks_done, acks_tried;
static int child_ready;

static void parse_line(char *line)
{
    int64_t id = 0, sub = 0;
    uint64_t sum = 0;
    if (line[0] == 'R') {
        child_ready = 1;
        return;
    }
    if (line[0] == 'X') {
        FAIL("child: %s", line + 2);
        return;
    }
    if (line[0] == 'E' &&
        sscanf(line + 2, "%" SCNd64 " %" SCNd64 " %" SCNx64, &id, &sub, &sum) == 3) {
        rec *r = lookup(id, sub, 1);
        if (r->enq)
            FAIL("id %" PRId64 " reported twice by enqueue", id);
        r->enq = 1;
        r->sum = sum;
        reported++;
        return;
    }
    if ((line[0] == 'a' || line[0] == 'A') &&
        sscanf(line + 2, "%" SCNd64 " %" SCNd64, &id, &sub) == 2) {
        rec *r = lookup(id, sub, 1);
        if (line[0] == 'a') {
            r->ack_try = 1;
            acks_tried++;
        } else {
            r->ack_done = 1;
            acks_done++;
        }
        return;
    }
    FAIL("bad line from child: %s", line);
}

/* Feed complete lines of buf[0..*len) to parse_line; keep the rest. */
static void consume(char *buf, size_t *len)
{
    size_t start = 0;
    for (size_t i = 0; i < *len; i++) {
        if (buf[i] != '\n')
            continue;
        buf[i] = '\0';
        parse_line(buf + start);
        start = i + 1;
    }
    memmove(buf, buf + start, *len - start);
    *len -= start;
}

/* Is this recovered message intact (headers say what the body must be)? */
static int intact(const mqs_message *m, uint64_t *sum_out)
{
    char hdr[128];
    if (m->headers_len == 0 || m->headers_len >= sizeof hdr)
        return 0;
    memcpy(hdr, m->headers, m->headers_len);
    hdr[m->headers_len] = '\0';
    uint64_t seed = 0, sum = 0;
    size_t len = 0;
    if (sscanf(hdr, "seed=%" SCNx64 ";len=%zu;sum=%" SCNx64, &seed, &len, &sum) != 3)
        return 0;
    if (m->body_len != len || (len && !m->body))
        return 0;
    if (fnv(m->body, len) != sum)
        return 0;
    unsigned char *want = malloc(len + 1);
    if (!want)
        return 0;
    fill(want, len, seed);
    int ok = len == 0 || memcmp(want, m->body, len) == 0;
    free(want);
    *sum_out = sum;
    return ok;
}

static uint64_t present_unreported;

/* Open the store and check everything known so far. */
static void verify(const char *uri, const char *queue, const char *topic,
                   int iter)
{
    mqs_store *s = NULL;
    int rc = mqs_open(uri, NULL, &s);
    if (rc != 0) {
        FAIL("iteration %d: reopen after kill: %s: %s", iter, mqs_errname(rc),
             mqs_errmsg(NULL));
        return;
    }
    for (size_t i = 0; i < tab_cap; i++)
        tab[i].found = 0;
    present_unreported = 0;
    for (int pass = 0; pass < 2; pass++) {
        mqs_cursor_opts o;
        memset(&o, 0, sizeof o);
        o.kind = pass ? MQS_TOPIC : MQS_QUEUE;
        o.dest = pass ? topic : queue;
        o.page_rows = 64;
        mqs_cursor *c = NULL;
        rc = mqs_cursor_open(s, &o, &c);
        if (rc != 0) {
            FAIL("iteration %d: cursor_open: %s: %s", iter, mqs_errname(rc),
                 mqs_errmsg(s));
            continue;
        }
        for (long guard = 0; guard < 1000000L; guard++) {
            const mqs_message *m = NULL;
            rc = mqs_cursor_next(c, &m);
            if (rc < 0)
                FAIL("iteration %d: cursor_next: %s: %s", iter,
                     mqs_errname(rc), mqs_errmsg(s));
            if (rc <= 0)
                break;
            uint64_t sum = 0;
            if (!intact(m, &sum)) {
                FAIL("iteration %d: message %" PRId64 " is damaged (%zu header "
                     "bytes, %zu body bytes)",
                     iter, m->id, m->headers_len, m->body_len);
                continue;
            }
            rec *r = lookup(m->id, m->sub_id, 0);
            if (!r || !r->enq) {
                /* enqueued but killed before it could say so: allowed */
                present_unreported++;
                if (r)
                    r->found = 1;
                continue;
            }
            if (r->found)
                FAIL("iteration %d: message %" PRId64 " recovered twice", iter,
                     m->id);
            r->found = 1;
            if (r->sum != sum)
                FAIL("iteration %d: message %" PRId64 " has another body", iter,
                     m->id);
            if (r->ack_done)
                FAIL("iteration %d: message %" PRId64 " (sub %" PRId64
                     ") was acked durably but came back",
                     iter, m->id, m->sub_id);
        }
        mqs_cursor_close(c);
    }
    for (size_t i = 0; i < tab_cap; i++) {
        rec *r = &tab[i];
        if (r->id && r->enq && !r->ack_try && !r->found)
            FAIL("iteration %d: durable message %" PRId64 " (sub %" PRId64
                 ") lost",
                 iter, r->id, r->sub);
    }
    mqs_close(s);
}

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

int main(int argc, char **argv)
{
    char tmpdir[] = "/tmp/mqs_crash_XXXXXX";
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    const char *arg = argc > 1 ? argv[1] : "sqlite:///@TMP@/crash.db";
    /* "@TMP@" -> the temp dir (its leading '/' comes from the URI) */
    char uri[2048];
    const char *hit = strstr(arg, "@TMP@");
    if (hit)
        snprintf(uri, sizeof uri, "%.*s%s%s", (int)(hit - arg), arg,
                 hit > arg && hit[-1] == '/' ? tmpdir + 1 : tmpdir, hit + 5);
    else
        snprintf(uri, sizeof uri, "%s", arg);
    char masked[2048];
    mqs_uri_mask(uri, masked, sizeof masked);

    const char *q = getenv("MQSTORE_TEST_QUICK");
    int quick = q && *q && strcmp(q, "0") != 0;
    int iterations = quick ? 5 : 15;
    const char *it = getenv("MQSTORE_CRASH_ITERATIONS");
    if (it && atoi(it) > 0 && atoi(it) <= 1000)
        iterations = atoi(it);
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
    const char *se = getenv("MQSTORE_CRASH_SEED");
    if (se && *se)
        seed = strtoull(se, NULL, 0);
    if (!seed)
        seed = 1;
    printf("crash: store %s, %d iterations, MQSTORE_CRASH_SEED=%" PRIu64 "\n",
           masked, iterations, seed);
    fflush(stdout);

    /* Names unique to this run: the database may be shared. */
    char queue[128], topic[128];
    snprintf(queue, sizeof queue, "c%ld_%" PRIx64 "_crash_q", (long)getpid(),
             seed & 0xffffff);
    snprintf(topic, sizeof topic, "c%ld_%" PRIx64 "_crash_t", (long)getpid(),
             seed & 0xffffff);

    /* The subscription exists before any child runs; the parent's handle is
     * closed (threads joined) before the first fork. */
    int64_t sub = 0;
    {
        mqs_store *s = NULL;
        int rc = mqs_open(uri, NULL, &s);
        if (rc == 0)
            rc = mqs_sub_create(s, topic, "crash_sub", &sub);
        if (rc != 0) {
            fprintf(stderr, "FAIL: setup: %s: %s\n", mqs_errname(rc),
                    s ? mqs_errmsg(s) : mqs_errmsg(NULL));
            mqs_close(s);
            nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
            return 1;
        }
        mqs_close(s);
    }

    uint64_t x = seed;
    int killed = 0;
    for (int iter = 0; iter < iterations && failures == 0; iter++) {
        int fds[2];
        if (pipe(fds) != 0) {
            perror("pipe");
            return 2;
        }
        fflush(NULL);
        uint64_t child_seed = rng(&x);
        int64_t delay = 10 + (int64_t)(rng(&x) % 291);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 2;
        }
        if (pid == 0) {
            close(fds[0]);
            child(uri, queue, topic, sub, fds[1], child_seed);
        }
        close(fds[1]);
        char buf[65536];
        size_t len = 0;
        /* Even iterations count the delay from fork, so some kills land
         * while the store opens (and migrates); odd ones from the child's
         * "R" (opened), so a slow machine still gets kills mid-write. */
        int from_ready = iter % 2 == 1;
        child_ready = 0;
        int64_t deadline = now_ms() + (from_ready ? 10000 : delay);
        int eof = 0;
        /* Read while the child works, so it never blocks on a full pipe. */
        for (int64_t left; !eof && (left = deadline - now_ms()) > 0;) {
            struct pollfd p = {fds[0], POLLIN, 0};
            if (poll(&p, 1, (int)left) <= 0)
                continue;
            ssize_t n = read(fds[0], buf + len, sizeof buf - len - 1);
            if (n <= 0) {
                eof = 1;
                break;
            }
            len += (size_t)n;
            consume(buf, &len);
            if (from_ready && child_ready) {
                from_ready = 0;
                deadline = now_ms() + delay;
            }
        }
        kill(pid, SIGKILL);
        int status = 0;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        /* drain what it said before it died */
        for (int guard = 0; guard < 100000; guard++) {
            ssize_t n = read(fds[0], buf + len, sizeof buf - len - 1);
            if (n <= 0)
                break;
            len += (size_t)n;
            consume(buf, &len);
        }
        close(fds[0]);
        if (len)
            FAIL("iteration %d: torn line from child", iter);
        if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
            killed++;
        else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            FAIL("iteration %d: child ended with status 0x%x", iter, status);
        verify(uri, queue, topic, iter);
        printf("iteration %2d: killed %3" PRId64 " ms after %s; so far %" PRIu64
               " durable enqueues, %" PRIu64 " acks tried, %" PRIu64
               " durable acks, %" PRIu64 " present but unreported\n",
               iter, delay, iter % 2 ? "open" : "fork", reported, acks_tried, acks_done, present_unreported);
        fflush(stdout);
    }
    if (failures == 0 && reported == 0)
        FAIL("no child ever reported a durable enqueue: nothing was tested");
    if (failures == 0 && killed == 0)
        FAIL("no child was killed while working");

    /* The store still works after all this. */
    if (failures == 0) {
        mqs_store *s = NULL;
        int rc = mqs_open(uri, NULL, &s);
        int64_t id = 0;
        mqs_msg m;
        memset(&m, 0, sizeof m);
        m.kind = MQS_QUEUE;
        m.dest = queue;
        m.priority = 4;
        if (rc == 0)
            rc = mqs_enqueue(s, &m, &id);
        if (rc == 0)
            rc = mqs_ack(s, id, 0);
        if (rc != 0)
            FAIL("after the crashes: %s: %s", mqs_errname(rc),
                 s ? mqs_errmsg(s) : mqs_errmsg(NULL));
        /* leave a shared database as we found it */
        if (s) {
            mqs_purge(s, MQS_QUEUE, queue, NULL);
            mqs_sub_remove(s, sub);
        }
        mqs_close(s);
    }
    free(tab);
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (failures) {
        fprintf(stderr, "crash: %d failure(s); replay with MQSTORE_CRASH_SEED=%" PRIu64
                "\n", failures, seed);
        return 1;
    }
    printf("crash: OK\n");
    return 0;
}
