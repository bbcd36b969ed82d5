/* t_pg_session.c - PostgreSQL backend, through its vtable on a real server:
 * the session's idle-in-transaction timeout, which ends the session of a
 * master frozen inside a fenced transaction (so its fence lock is freed for
 * a takeover), must hold in every fenced transaction block, also after the
 * transaction that set it failed. A session setting made in a transaction
 * is undone when that transaction does not commit; the backend used to
 * record it as set anyway and never sent it again on that session.
 *
 *   t_pg_session MODULE.so URI     (tests/run-uri.sh gives the URI)
 *
 * The probe: a fenced transaction whose block is opened by a round trip of
 * its own (a destination created inside it), then left idle past the
 * timeout. If the timeout holds, the server ends the session and COMMIT
 * reports the connection lost (MQS_ECONN); if not, the session is alive and
 * COMMIT reaches the fence's guard, which fails (MQS_EFENCED: the test's
 * cluster has no lock row). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mqstore/backend.h"
#include "mqstore/mqstore.h"

enum { LEASE_MS = 1000 };

static int failures;

typedef struct parsed {
    char buf[1024];
    mqs_be_host host;
    mqs_be_uri parts;
} parsed;

/* postgresql://user:password@host:port/db, the form tests/db prints. */
static int parse(const char *uri, parsed *p)
{
    memset(p, 0, sizeof *p);
    const char *rest = strstr(uri, "://");
    if (!rest || strlen(uri) >= sizeof p->buf)
        return -1;
    snprintf(p->buf, sizeof p->buf, "%s", rest + 3);
    char *at = strrchr(p->buf, '@'), *slash, *colon;
    if (!at)
        return -1;
    *at = '\0';
    p->parts.user = p->buf;
    if ((colon = strchr(p->buf, ':'))) {
        *colon = '\0';
        p->parts.password = colon + 1;
    }
    char *hostpart = at + 1;
    if (!(slash = strchr(hostpart, '/')))
        return -1;
    char *q = strchr(slash, '?');
    if (q)
        *q = '\0'; /* no options needed here */
    p->parts.path = slash; /* "/db" */
    size_t hl = (size_t)(slash - hostpart);
    static char host[256];
    if (hl >= sizeof host)
        return -1;
    memcpy(host, hostpart, hl);
    host[hl] = '\0';
    if ((colon = strrchr(host, ':'))) {
        *colon = '\0';
        p->host.port = colon + 1;
    }
    p->host.host = host;
    p->parts.scheme = "postgresql";
    p->parts.has_authority = 1;
    p->parts.hosts = &p->host;
    p->parts.nhosts = 1;
    return 0;
}

static const mqs_backend *be;

static mqs_be_conn *open_conn(const parsed *p)
{
    mqs_be_open_args a = {.parts = &p->parts,
                          .uri_masked = "postgresql://(test)",
                          .role = "writer"};
    mqs_be_conn *c = NULL;
    char err[512] = "";
    if (be->conn_open(&a, &c, err, sizeof err) != 0) {
        fprintf(stderr, "conn_open: %s\n", err);
        exit(1);
    }
    int v = -1;
    if (be->schema_version(c, &v) != 0) {
        fprintf(stderr, "schema_version: %s\n", be->conn_errmsg(c));
        exit(1);
    }
    for (size_t i = (size_t)v; i < be->n_migrations; i++)
        if (be->schema_apply(c, &be->migrations[i]) != 0) {
            fprintf(stderr, "schema_apply: %s\n", be->conn_errmsg(c));
            exit(1);
        }
    return c;
}

static char cluster[64];

/* One fenced transaction on c that creates destination `name` (a round
 * trip of its own, so the block is open on the server), waits idle_ms,
 * then commits. Returns txn_commit's code (rolled back if it failed). */
static int fenced_txn(mqs_be_conn *c, const char *name, int idle_ms)
{
    mqs_be_fence f = {cluster, "t-pg-session", 1, 0, LEASE_MS};
    int64_t id = 0;
    int rc = be->txn_begin(c);
    if (!rc)
        rc = be->lock_fence(c, &f);
    if (!rc)
        rc = be->dest_resolve(c, MQS_QUEUE, name, 1, &id);
    if (rc) {
        fprintf(stderr, "fenced transaction: %s: %s\n", mqs_errname(rc),
                be->conn_errmsg(c));
        failures++;
        be->txn_rollback(c);
        return rc;
    }
    if (idle_ms > 0) {
        struct timespec ts = {idle_ms / 1000, (long)(idle_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    rc = be->txn_commit(c);
    if (rc)
        printf("  commit after %d ms idle: %s: %s\n", idle_ms,
               mqs_errname(rc), be->conn_errmsg(c));
    if (rc)
        be->txn_rollback(c);
    return rc;
}

#define EXPECT(cond, ...)                                                      \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "FAIL: " __VA_ARGS__);                             \
            fputc('\n', stderr);                                               \
            failures++;                                                        \
        }                                                                      \
    } while (0)

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: t_pg_session MODULE.so URI\n");
        return 2;
    }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", argv[1], dlerror());
        return 1;
    }
    const mqs_backend *(*entry)(void);
    *(void **)&entry = dlsym(h, MQS_BACKEND_ENTRY_NAME);
    if (!entry || !(be = entry())) {
        fprintf(stderr, "%s: no backend entry\n", argv[1]);
        return 1;
    }
    parsed p;
    if (parse(argv[2], &p)) {
        fprintf(stderr, "cannot parse %s\n", argv[2]);
        return 2;
    }
    snprintf(cluster, sizeof cluster, "t-pg-session-%d", (int)getpid());
    char d1[96], d2[96], d3[96];
    snprintf(d1, sizeof d1, "t-pg-session-%d-a", (int)getpid());
    snprintf(d2, sizeof d2, "t-pg-session-%d-b", (int)getpid());
    snprintf(d3, sizeof d3, "t-pg-session-%d-c", (int)getpid());
    int idle = LEASE_MS + 2000;

    /* The probe on a fresh session: the timeout, set with this very
     * transaction, ends the idle block. */
    mqs_be_conn *c = open_conn(&p);
    int rc = fenced_txn(c, d1, idle);
    EXPECT(rc == MQS_ECONN,
           "fresh session, block idle %d ms with idle timeout %d ms: commit "
           "returned %s, expected MQS_ECONN (the server ends the session)",
           idle, LEASE_MS, rc ? mqs_errname(rc) : "ok");
    be->conn_close(c);

    /* A session whose first fenced transaction failed (its guard: no lock
     * row for the cluster), with the timeout set inside it. */
    c = open_conn(&p);
    rc = fenced_txn(c, d2, 0);
    EXPECT(rc == MQS_EFENCED,
           "first fenced transaction returned %s, expected MQS_EFENCED",
           rc ? mqs_errname(rc) : "ok");
    rc = fenced_txn(c, d3, idle);
    EXPECT(rc == MQS_ECONN,
           "after a failed fenced transaction, block idle %d ms with idle "
           "timeout %d ms: commit returned %s, expected MQS_ECONN; "
           "MQS_EFENCED means the session was still alive: the timeout "
           "set in the failed transaction was undone and not set again",
           idle, LEASE_MS, rc ? mqs_errname(rc) : "ok");
    be->conn_close(c);
    if (!failures)
        printf("ok: the idle-in-transaction timeout holds on a fresh session "
               "and after a failed fenced transaction\n");
    return failures ? 1 : 0;
}
