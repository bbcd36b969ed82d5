/* t_be_call.c - the core's backend wrappers (src/core/be_call.c): the
 * password scrub and the return-code normalisation, with the real SQLite
 * module. be_call.c is compiled into this program (its functions are hidden
 * in libmqstore); the module is dlopen'ed from the path in argv[1].
 *
 *   t_be_call MODULE.so TMPDIR
 *
 * A real backend never returns a code outside common.h, nor more rows than
 * a page's limit, so those two conversions are proven on mqs__bc_rc (the
 * function every wrapper uses) and not through a module. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "be_call.h"
#include "mqstore/mqstore.h"

static int failures;

#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                    \
            failures++;                                                        \
        }                                                                      \
    } while (0)

#define CHECK_STR(s, needle, want)                                             \
    do {                                                                       \
        const char *s_ = (s);                                                  \
        if ((strstr(s_, needle) != NULL) != (want)) {                          \
            fprintf(stderr, "%s:%d: '%s' %s '%s'\n", __FILE__, __LINE__, s_,   \
                    (want) ? "lacks" : "contains", needle);                    \
            failures++;                                                        \
        }                                                                      \
    } while (0)

static void test_scrub(void)
{
    char out[128];
    const char *sec[2] = {"pass-w0rd", "pa%73s-w0rd"};
    mqs__bc_scrub(out, sizeof out, "a pass-w0rd b pa%73s-w0rd c pass-w0rd",
                  sec, 2);
    CHECK(!strcmp(out, "a *** b *** c ***"));

    /* One secret inside the other: the longer wins, nothing is left. */
    const char *nest[2] = {"ab", "xaby"};
    mqs__bc_scrub(out, sizeof out, "xaby ab", nest, 2);
    CHECK(!strcmp(out, "*** ***"));

    /* Empty and absent secrets are skipped, not matched everywhere. */
    const char *none[2] = {"", NULL};
    mqs__bc_scrub(out, sizeof out, "nothing secret", none, 2);
    CHECK(!strcmp(out, "nothing secret"));
    mqs__bc_scrub(out, sizeof out, NULL, sec, 2);
    CHECK(!strcmp(out, ""));

    /* Cut to fit, never through a secret. */
    for (size_t n = 1; n < 16; n++) {
        mqs__bc_scrub(out, n, "pw=pass-w0rd!", sec, 2);
        CHECK(strlen(out) < n);
        CHECK_STR(out, "pass", false);
    }
}

static void test_rc(void)
{
    CHECK(mqs__bc_rc(0) == 0);
    for (int c = MQS_EINVAL; c >= MQS_ENOTSUP; c--)
        CHECK(mqs__bc_rc(c) == c); /* every known code stays */
    CHECK(mqs__bc_rc(1) == MQS_EIO);
    CHECK(mqs__bc_rc(42) == MQS_EIO);
    CHECK(mqs__bc_rc(MQS_ENOTSUP - 1) == MQS_EIO);
    CHECK(mqs__bc_rc(-1000) == MQS_EIO);
    CHECK(mqs__bc_rc(-2147483647 - 1) == MQS_EIO);
}

static int stop_at_7(void *ud, const char *producer, int64_t seq)
{
    (void)ud, (void)producer, (void)seq;
    return 7;
}

/* The wrappers on a real SQLite connection: conn_open's message and
 * conn_errmsg come back with both spellings of the password scrubbed. */
static void test_module(const char *so, const char *dir)
{
    void *h = dlopen(so, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "dlopen %s: %s\n", so, dlerror());
        failures++;
        return;
    }
    const mqs_backend *(*entry)(void);
    *(void **)&entry = dlsym(h, MQS_BACKEND_ENTRY_NAME);
    CHECK(entry != NULL);
    if (!entry)
        return;
    /* Secrets that the module's messages are sure to echo: a directory
     * name (decoded) and a destination name (as written). */
    const mqs_bcx b = {entry(), "s3cret-dir", "Q%2Fs3cret", NULL};

    char uri[512], err[512];
    snprintf(uri, sizeof uri, "sqlite://%s/s3cret-dir/none/x.db", dir);
    mqs_be_uri parts = {.scheme = "sqlite", .has_authority = 1, .path = uri + 9};
    mqs_be_open_args a = {.parts = &parts, .uri_masked = uri,
                          .role = "writer"};
    mqs_be_conn *c = (mqs_be_conn *)1;
    int rc = mqs__bc_conn_open(&b, &a, &c, err, sizeof err);
    CHECK(rc == MQS_EIO);
    CHECK(c == NULL);
    CHECK_STR(err, "s3cret", false);
    CHECK_STR(err, "/***/none/x.db", true);

    snprintf(uri, sizeof uri, "sqlite://%s/be_call.db", dir);
    parts.path = uri + 9;
    static const char *const sfx[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) { /* a fresh database on every run */
        char f[600];
        snprintf(f, sizeof f, "%s%s", uri + 9, sfx[i]);
        unlink(f);
    }
    rc = mqs__bc_conn_open(&b, &a, &c, err, sizeof err);
    CHECK(rc == 0);
    if (rc) {
        fprintf(stderr, "open %s: %s\n", uri, err);
        return;
    }
    int v = -1;
    CHECK(mqs__bc_schema_version(&b, c, &v) == 0 && v == 0);
    for (size_t i = 0; i < b.be->n_migrations; i++)
        CHECK(mqs__bc_schema_apply(&b, c, &b.be->migrations[i]) == 0);
    /* A failing read names what it could not find: the secret. */
    int64_t id = 0;
    rc = mqs__bc_dest_resolve(&b, c, MQS_QUEUE, "Q%2Fs3cret", 0, &id);
    CHECK(rc == MQS_ENOTFOUND);
    const char *m = mqs__bc_conn_errmsg(&b, c);
    CHECK_STR(m, "s3cret", false);
    CHECK_STR(m, "'***'", true);

    /* A positive value the module returns because the callback did (the
     * contract of mark_list) is the caller's, not turned into MQS_EIO. */
    if (mqs__bc_has_marks(b.be)) {
        CHECK(mqs__bc_txn_begin(&b, c) == 0);
        CHECK(mqs__bc_mark_put(&b, c, "p1", 5, 1000) == 0);
        CHECK(mqs__bc_txn_commit(&b, c) == 0);
        CHECK(mqs__bc_mark_list(&b, c, stop_at_7, NULL) == 7);
    }
    mqs__bc_conn_close(&b, c);
    dlclose(h);
}

/* Through the public API: a URI whose password the SQLite module echoes
 * (it quotes the authority as written) is reported with *** in its place,
 * both spellings of the password absent. */
static void test_open(const char *dir)
{
    char uri[512];
    snprintf(uri, sizeof uri, "sqlite://u:pa%%73s-w0rd@localhost%s/x.db",
             dir);
    mqs_store *s = NULL;
    int rc = mqs_open(uri, NULL, &s);
    CHECK(rc == MQS_EINVAL && s == NULL);
    const char *m = mqs_errmsg(NULL);
    CHECK_STR(m, "pa%73s-w0rd", false);
    CHECK_STR(m, "pass-w0rd", false);
    CHECK_STR(m, "('u:***@localhost')", true); /* the module's own quote */
    if (s)
        mqs_close(s);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODULE.so TMPDIR\n", argv[0]);
        return 2;
    }
    test_scrub();
    test_rc();
    test_module(argv[1], argv[2]);
    test_open(argv[2]);
    if (failures)
        fprintf(stderr, "%d check(s) failed\n", failures);
    else
        printf("t_be_call: all checks passed\n");
    return failures ? 1 : 0;
}
