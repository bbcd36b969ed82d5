/*
 * ha_node.c - one HA node for the multi-process tests (t_ha.c) and the
 * takeover bench: acquire the store lock, write while master, log every
 * event with the system-wide monotonic clock so the parent can line the
 * nodes up.
 *
 * usage: mqs-ha-node URI LOGFILE [options]
 *   --rounds N      become master N times (default 1)
 *   --hold-ms MS    per round, write for this long, then release (default
 *                   0: write until --max-ms, fenced or killed)
 *   --max-ms MS     hard stop for the whole run (default 20000)
 *   --queue NAME    destination (default ha)
 *   --ack-every K   ack every K-th own message (default 0: none)
 *   --gap-ms MS     pause between writes (default 2)
 *
 * Log lines (one write() each, O_APPEND, so concurrent nodes never mix):
 *   W <mono>                       waiting for the lock
 *   M <token> <mono>               became master
 *   E <id> <token> <mono>          message id durable
 *   P <id> <mono>                  about to ack (the ack may commit even
 *                                  if the node dies before its A line)
 *   A <id> <mono>                  ack durable
 *   R <token> <mono>               about to release (stops believing)
 *   L <token> <mono> <reason>      on_lost
 *   F <token> <mono> <rc>          a write failed with MQS_EFENCED
 *   U <mono> <rc>                  a write's outcome is unknown (the
 *                                  database went away during COMMIT); the
 *                                  node goes on writing
 *   X <mono> <rc> <message>        any other failure
 * Exit: 0 done, 3 fenced, 4 other failure.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mqstore/mqstore.h>

static int logfd = -1;

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void logf_(const char *fmt, ...)
{
    char buf[1200];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    ssize_t w = write(logfd, buf, (size_t)n);
    (void)w;
}

static void on_master(void *ud, int64_t token)
{
    (void)ud;
    (void)token; /* logged by the main loop after acquire returns */
}

static void on_lost(void *ud, int64_t token, const char *reason)
{
    (void)ud;
    logf_("L %lld %lld %s", (long long)token, mono_ms(), reason);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s URI LOGFILE [--rounds N] [--hold-ms MS] "
                "[--max-ms MS] [--queue NAME] [--ack-every K] [--gap-ms MS]\n",
                argv[0]);
        return 2;
    }
    const char *uri = argv[1];
    long rounds = 1, hold = 0, max_ms = 20000, ack_every = 0, gap = 2;
    const char *queue = "ha";
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rounds"))
            rounds = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--hold-ms"))
            hold = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--max-ms"))
            max_ms = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--queue"))
            queue = argv[i + 1];
        else if (!strcmp(argv[i], "--ack-every"))
            ack_every = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--gap-ms"))
            gap = atol(argv[i + 1]);
        else {
            fprintf(stderr, "ha_node: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    logfd = open(argv[2], O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (logfd < 0) {
        perror(argv[2]);
        return 2;
    }
    long long deadline = mono_ms() + max_ms;
    mqs_open_opts oo = {.log = NULL, .log_level = MQS_LOG_WARN};
    mqs_store *s;
    int rc = mqs_open(uri, &oo, &s);
    if (rc) {
        logf_("X %lld %d %s", mono_ms(), rc, mqs_errmsg(NULL));
        return 4;
    }
    mqs_lock_cbs cbs = {on_master, on_lost, NULL};
    int status = 0;
    long seq = 0;
    for (long r = 0; r < rounds && status == 0; r++) {
        logf_("W %lld", mono_ms());
        long long left = deadline - mono_ms();
        if (left <= 0)
            break;
        rc = mqs_lock_acquire(s, left, &cbs);
        if (rc) {
            logf_("X %lld %d %s", mono_ms(), rc, mqs_errmsg(s));
            status = 4;
            break;
        }
        mqs_lock_info li;
        int64_t token = mqs_lock_status(s, &li) == 0 ? li.token : -1;
        logf_("M %lld %lld", (long long)token, mono_ms());
        long long round_end = hold > 0 ? mono_ms() + hold : deadline;
        if (round_end > deadline)
            round_end = deadline;
        while (mono_ms() < round_end) {
            char body[200];
            int n = snprintf(body, sizeof body, "tok=%lld seq=%ld pid=%ld",
                             (long long)token, seq++, (long)getpid());
            mqs_msg m = {.kind = MQS_QUEUE, .dest = queue, .body = body,
                         .body_len = (size_t)n,
                         .priority = MQS_PRIORITY_DEFAULT};
            int64_t id = 0;
            rc = mqs_enqueue(s, &m, &id);
            if (rc == MQS_EUNKNOWN) {
                /* The database went away during COMMIT (a restart): the
                 * message may or may not be stored. A real producer
                 * resends; the node notes it and goes on, as the master
                 * it still is. */
                logf_("U %lld %d", mono_ms(), rc);
                continue;
            }
            if (rc == MQS_EFENCED) {
                logf_("F %lld %lld %d", (long long)token, mono_ms(), rc);
                status = 3;
                break;
            }
            if (rc) {
                logf_("X %lld %d %s", mono_ms(), rc, mqs_errmsg(s));
                status = 4;
                break;
            }
            logf_("E %lld %lld %lld", (long long)id, (long long)token,
                  mono_ms());
            if (ack_every > 0 && seq % ack_every == 0) {
                logf_("P %lld %lld", (long long)id, mono_ms());
                rc = mqs_ack(s, id, 0);
                if (rc == MQS_EUNKNOWN) { /* as above: acks are idempotent */
                    logf_("U %lld %d", mono_ms(), rc);
                    continue;
                }
                if (rc == MQS_EFENCED) {
                    logf_("F %lld %lld %d", (long long)token, mono_ms(), rc);
                    status = 3;
                    break;
                }
                if (rc) {
                    logf_("X %lld %d %s", mono_ms(), rc, mqs_errmsg(s));
                    status = 4;
                    break;
                }
                logf_("A %lld %lld", (long long)id, mono_ms());
            }
            if (gap > 0)
                sleep_ms(gap);
        }
        if (status == 0) {
            logf_("R %lld %lld", (long long)token, mono_ms());
            mqs_lock_release(s);
            sleep_ms(5 + (getpid() + r) % 20); /* let the others in */
        }
    }
    mqs_close(s);
    close(logfd);
    return status;
}
