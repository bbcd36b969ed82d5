/* t_api.c - open/close, URIs and their errors, options, error names. */
#include "testutil.h"

#include <stdbool.h>
#include <sys/stat.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every code has a distinct name and a message; unknown codes too. */
static void test_error_names(void **state)
{
    (void)state;
    static const int codes[] = {
#define X_(name, val, msg) MQS_##name,
        MQS_ERRNO_MAP(X_)
#undef X_
    };
    static const char *const names[] = {
#define X_(name, val, msg) "MQS_" #name,
        MQS_ERRNO_MAP(X_)
#undef X_
    };
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        assert_true(codes[i] < 0);
        assert_string_equal(mqs_errname(codes[i]), names[i]);
        assert_non_null(mqs_strerror(codes[i]));
        assert_true(strlen(mqs_strerror(codes[i])) > 0);
    }
    assert_string_equal(mqs_strerror(MQS_EINVAL), "invalid argument");
    assert_non_null(mqs_errname(-9999));
    assert_non_null(mqs_strerror(-9999));
    assert_non_null(mqs_errname(0));
    assert_non_null(mqs_strerror(0));
}

static void test_open_close(void **state)
{
    (void)state;
    mqs_store *s = tu_open();
    const char *u = mqs_uri(s);
    assert_non_null(u);
    /* the handle reports its own URI, scheme first */
    assert_int_equal(strncmp(u, g_scheme, strlen(g_scheme)), 0);
    char masked[1024];
    mqs_uri_mask(g_uri, masked, sizeof masked);
    assert_string_equal(u, masked);
    assert_true(mqs_max_message_size(s) > 0);
    assert_true(mqs_max_message_size(s) <= 16777216u);
    int db = -1, lib = -1;
    TU_OK(mqs_schema_version(s, &db, &lib), s);
    assert_true(lib >= 1);
    assert_int_equal(db, lib);
    mqs_stats st = tu_stats(s);
    assert_int_equal(st.schema_version, db);
    assert_int_equal(st.queued, 0);
    mqs_close(s);
    mqs_close(NULL); /* documented no-op */

    /* Reopening the same store works and sees the same schema. */
    s = tu_open();
    int db2 = -1;
    TU_OK(mqs_schema_version(s, &db2, NULL), s);
    assert_int_equal(db2, db);
    mqs_close(s);
}

/* Open must fail with one of the codes, leave *out NULL, and explain itself
 * naming `needle`. Returns the code. */
static int open_fails(const char *uri, int code1, int code2,
                      const char *needle)
{
    mqs_store *s = (mqs_store *)(uintptr_t)0x1; /* must be reset to NULL */
    int rc = mqs_open(uri, NULL, &s);
    if (rc == 0)
        mqs_close(s);
    assert_true(rc < 0);
    assert_null(s);
    const char *msg = mqs_errmsg(NULL);
    assert_non_null(msg);
    if (rc != code1 && rc != code2)
        fail_msg("open(%s) -> %s (%s), expected %s", uri, mqs_errname(rc), msg,
                 mqs_errname(code1));
    if (needle && !strstr(msg, needle))
        fail_msg("open(%s): message \"%s\" does not name \"%s\"", uri, msg,
                 needle);
    return rc;
}

static void test_bad_scheme(void **state)
{
    (void)state;
    open_fails("nosuchdb://localhost/x", MQS_ENOMODULE, MQS_EINVAL, "nosuchdb");
    /* no scheme at all */
    open_fails("just-a-file.db", MQS_EINVAL, MQS_ENOMODULE, NULL);
    assert_true(strlen(mqs_errmsg(NULL)) > 0);
    open_fails("", MQS_EINVAL, MQS_ENOMODULE, NULL);
    /* a scheme that could escape the module directory */
    open_fails("../../etc/x://a", MQS_EINVAL, MQS_ENOMODULE, NULL);
}

static void test_unknown_option(void **state)
{
    (void)state;
    char *u = tu_uri_with(g_uri, "bogus_option_xyz=1");
    open_fails(u, MQS_EINVAL, MQS_EINVAL, "bogus_option_xyz");
    free(u);
}

static void test_bad_option_value(void **state)
{
    (void)state;
    static const struct {
        const char *opt, *needle;
    } cases[] = {
        {"commit=sometimes", "commit"},
        {"batch_max=abc", "batch_max"},
        {"batch_max=", "batch_max"},
        {"max_message_size=-5", "max_message_size"},
        {"pool_size=12x", "pool_size"},
        {"migrate=maybe", "migrate"},
        {"reconnect_timeout_ms=soon", "reconnect_timeout_ms"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *u = tu_uri_with(g_uri, cases[i].opt);
        open_fails(u, MQS_EINVAL, MQS_EINVAL, cases[i].needle);
        free(u);
    }
    if (g_is_sqlite) {
        char *u = tu_uri_with(g_uri, "synchronous=maybe");
        open_fails(u, MQS_EINVAL, MQS_EINVAL, "synchronous");
        free(u);
        u = tu_uri_with(g_uri, "journal_mode=sideways");
        open_fails(u, MQS_EINVAL, MQS_EINVAL, "journal_mode");
        free(u);
        u = tu_uri_with(g_uri, "busy_timeout=never");
        open_fails(u, MQS_EINVAL, MQS_EINVAL, "busy_timeout");
        free(u);
    }
}

static void test_unopenable_path(void **state)
{
    (void)state;
    if (!g_is_sqlite)
        skip();
    open_fails("sqlite:///nonexistent/dir/x.db", MQS_EIO, MQS_EIO,
               "/nonexistent/dir/x.db");
}

#define SECRET "Pa55w0rdS3cret"

/* A password is masked in every message, whatever fails. */
static void test_password_never_shown(void **state)
{
    (void)state;
    char own[1024];
    const char *const uris[] = {
        "postgresql://alice:" SECRET "@127.0.0.1:1/nodb?bogus_opt=1",
        "postgresql://alice:" SECRET "@127.0.0.1:1/nodb?commit=bad",
        "mysql://bob:" SECRET "@127.0.0.1:1/nodb?bogus_opt=1",
        "nosuchdb://carol:" SECRET "@host/db?bogus_opt=1",
        own,
    };
    /* The scheme under test with credentials added to its authority part. */
    snprintf(own, sizeof own, "%s://dave:" SECRET "@127.0.0.1:1/x?bogus_opt=1",
             g_scheme);
    for (size_t i = 0; i < sizeof uris / sizeof uris[0]; i++) {
        mqs_store *s = NULL;
        int rc = mqs_open(uris[i], NULL, &s);
        if (rc == 0)
            mqs_close(s);
        assert_true(rc < 0);
        const char *msg = mqs_errmsg(NULL);
        if (strstr(msg, SECRET))
            fail_msg("password shown in message for uri #%zu: %s", i, msg);
        assert_true(strlen(msg) > 0);
    }
}

/* The core takes every URI apart once, before any backend sees it: a bad
 * port, a fragment, a broken percent-escape or an empty host in a list is
 * refused with the part named, the password never shown. */
static void test_uri_parts_refused(void **state)
{
    (void)state;
    char u[512];
    static const struct {
        const char *tail, *needle;
    } cases[] = {
        {"@127.0.0.1:99999/db", "port of host 1"},
        {"@127.0.0.1:54x/db", "port of host 1"},
        {"@127.0.0.1:/db", "port of host 1"},
        {"@h1:5432,,h3/db", "host 2 is empty"},
        {"@[::1/db", "']'"},
        {"@h/d%zzb", "bad percent-escape in the path"},
        {"@h/db#frag", "fragment"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        snprintf(u, sizeof u, "%s://eve:" SECRET "%s", g_scheme,
                 cases[i].tail);
        open_fails(u, MQS_EINVAL, MQS_EINVAL, cases[i].needle);
        if (strstr(mqs_errmsg(NULL), SECRET))
            fail_msg("password shown for %s: %s", cases[i].tail,
                     mqs_errmsg(NULL));
    }
    /* A broken escape in the password itself: named, not shown. */
    snprintf(u, sizeof u, "%s://eve:" SECRET "%%4@h/db", g_scheme);
    open_fails(u, MQS_EINVAL, MQS_EINVAL, "bad percent-escape in the password");
    if (strstr(mqs_errmsg(NULL), SECRET))
        fail_msg("password shown: %s", mqs_errmsg(NULL));
}

/* Structs that grow travel with their size (mqstore.h): the library reads
 * and writes only what the caller's struct has, and refuses a size below
 * the struct's first version. */
static void test_sized_structs(void **state)
{
    (void)state;
    mqs_store *s = tu_open();
    /* An output struct from a newer header: bigger than the library's. The
     * library fills its own part and leaves the rest alone. */
    struct {
        mqs_stats st;
        unsigned char newer[32];
    } big;
    memset(&big, 0xAB, sizeof big);
    TU_OK(mqs_stats_get_sz(s, &big.st, sizeof big), s);
    for (size_t i = 0; i < sizeof big.newer; i++)
        assert_int_equal(big.newer[i], 0xAB);
    assert_true(big.st.schema_version > 0);
    /* Smaller than the first version: refused, nothing written. */
    mqs_stats small;
    memset(&small, 0xCD, sizeof small);
    assert_int_equal(mqs_stats_get_sz(s, &small, 8), MQS_EINVAL);
    assert_int_equal(((unsigned char *)&small)[0], 0xCD);
    assert_non_null(strstr(mqs_errmsg(NULL), "first version"));
    /* The macro passes the caller's sizeof: same result as the plain call. */
    mqs_stats a, b;
    TU_OK(mqs_stats_get(s, &a), s);
    TU_OK(mqs_stats_get_sz(s, &b, sizeof b), s);
    assert_int_equal(a.schema_version, b.schema_version);
    mqs_close(s);

    /* An input struct from a newer header: fields the library does not
     * know are ignored, the known ones used. */
    struct {
        mqs_open_opts o;
        unsigned char newer[32];
    } in;
    memset(&in, 0x5A, sizeof in);
    in.o.log = NULL;
    in.o.log_ud = NULL;
    in.o.log_level = MQS_LOG_ERROR;
    mqs_store *t = NULL;
    TU_OK(mqs_open_sz(g_uri, &in.o, sizeof in, &t), NULL);
    mqs_close(t);
    t = (mqs_store *)(uintptr_t)0x1;
    assert_int_equal(mqs_open_sz(g_uri, &in.o, 4, &t), MQS_EINVAL);
    assert_null(t);
}

static void check_mask(const char *uri, const char *want)
{
    char buf[512];
    size_t n = mqs_uri_mask(uri, buf, sizeof buf);
    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));
}

static void test_uri_mask(void **state)
{
    (void)state;
    check_mask("postgresql://user:" SECRET "@db.example:5432/mq?commit=each",
               "postgresql://user:***@db.example:5432/mq?commit=each");
    check_mask("mysql://root:" SECRET "@localhost/mq",
               "mysql://root:***@localhost/mq");
    /* nothing to mask */
    check_mask("sqlite:///var/lib/mq/store.db?synchronous=full",
               "sqlite:///var/lib/mq/store.db?synchronous=full");
    check_mask("sqlite:relative/store.db", "sqlite:relative/store.db");
    check_mask("mysql://root@localhost/mq", "mysql://root@localhost/mq");
    /* an '@' in the path or query is not a password separator */
    check_mask("postgresql://u:" SECRET "@h/db?application_name=a@b",
               "postgresql://u:***@h/db?application_name=a@b");

    /* snprintf semantics: the needed length, a truncated NUL-terminated
     * copy, and nothing written with buflen 0. */
    const char *u = "postgresql://user:" SECRET "@h/db";
    const char *want = "postgresql://user:***@h/db";
    assert_int_equal(mqs_uri_mask(u, NULL, 0), strlen(want));
    char small[12];
    memset(small, 'Z', sizeof small);
    size_t n = mqs_uri_mask(u, small, sizeof small);
    assert_int_equal(n, strlen(want));
    assert_int_equal(small[sizeof small - 1], '\0');
    assert_int_equal(strncmp(small, want, sizeof small - 1), 0);
    char tiny[1] = {'Z'};
    mqs_uri_mask(u, tiny, 1);
    assert_int_equal(tiny[0], '\0');
    /* a truncated copy never leaks a prefix of the password */
    for (size_t len = 1; len <= strlen(want) + 1; len++) {
        char b[64];
        mqs_uri_mask(u, b, len);
        assert_null(strstr(b, "Pa5"));
    }
}

/* 31 ways to write a secret into a store URI. None may show in the masked
 * URI; those whose password holds an unencoded / ? # are refused by
 * mqs_open with a message that shows neither half of it. */
static void test_uri_mask_spellings(void **state)
{
    (void)state;
    static const struct {
        const char *uri;
        int ambiguous;
    } cases[] = {
        {"postgresql://u:Xq7Zr9@h/db", 0},
        {"postgres://u:Xq7Zr9@h:5432/db", 0},
        {"postgresql://u:Xq7/Zr9@h/db", 1},
        {"postgresql://u:Xq7?Zr9@h/db", 1},
        {"postgresql://u:Xq7#Zr9@h/db", 1},
        {"postgresql://u:Xq7@Zr9@h/db", 0},
        {"postgresql://u:Xq7%2FZr9@h/db", 0},
        {"postgresql://u:Xq7:Zr9@h/db", 0},
        {"postgresql://h/db?password=Xq7Zr9", 0},
        {"postgresql://h/db?user=u&password=Xq7Zr9&commit=each", 0},
        {"postgresql://h/db?PASSWORD=Xq7Zr9", 0},
        {"postgresql://h/db?pass%77ord=Xq7Zr9", 0},
        {"postgresql://h/db?sslpassword=Xq7Zr9", 0},
        {"postgresql://u:Xq7Zr9@h1:5432,h2:5433/db?target_session_attrs=any",
         0},
        {"postgresql://u:Xq7Zr9@[::1]:5432/db", 0},
        {"postgresql://u:Xq7Zr9@/db?host=/var/run/postgresql", 0},
        {"postgresql://u:Xq7/Zr9@h:5432/db?commit=each", 1},
        {"mysql://root:Xq7Zr9@localhost/mq", 0},
        {"mysql://root:Xq7/Zr9@localhost/mq", 1},
        {"mariadb://root:Xq7?Zr9@127.0.0.1:3306/mq", 1},
        {"mysql://root:Xq7Zr9@localhost/mq?password=Xq7Zr9", 0},
        {"mysql://root:Xq7@Zr9@localhost/mq", 0},
        {"mysql://h/mq?passwd=Xq7Zr9", 0},
        {"sqlite://u:Xq7Zr9@/tmp/x.db", 0},
        {"sqlite://u:Xq7/Zr9@/tmp/x.db", 1},
        {"sqlite:///tmp/x.db?secret=Xq7Zr9", 0},
        {"postgresql://u:Xq7Zr9@h/db?token=Xq7Zr9", 0},
        {"POSTGRESQL://u:Xq7Zr9@h/db", 0},
        {"postgresql://u%40corp:Xq7Zr9@h/db", 0},
        {"postgresql://u:Xq7Zr9@h/db#frag", 0},
        {"postgresql://:Xq7Zr9@h/db", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char m[512];
        mqs_uri_mask(cases[i].uri, m, sizeof m);
        if (strstr(m, "Xq7") || strstr(m, "Zr9"))
            fail_msg("case %zu: the masked URI shows the secret: %s", i, m);
        if (!cases[i].ambiguous)
            continue;
        mqs_store *st = (mqs_store *)1;
        int rc = mqs_open(cases[i].uri, NULL, &st);
        assert_int_equal(rc, MQS_EINVAL);
        assert_null(st);
        const char *msg = mqs_errmsg(NULL);
        if (strstr(msg, "Xq7") || strstr(msg, "Zr9") || !strstr(msg, "%2F"))
            fail_msg("case %zu: mqs_open said: %s", i, msg);
    }
}

/* The password can stay out of the URI (and so out of argv and config
 * files that are not private): PostgreSQL reads it from a pgpass file
 * (PGPASSFILE), MySQL/MariaDB from an option file (option_file=). The URI
 * under test minus its password must open that way. */
static void test_password_from_file(void **state)
{
    (void)state;
    if (g_is_sqlite)
        skip();
    const char *a = strstr(g_uri, "://");
    const char *at = a ? strchr(a + 3, '@') : NULL;
    const char *colon = a && at ? memchr(a + 3, ':', (size_t)(at - a - 3))
                                : NULL;
    if (!colon)
        skip(); /* no password in the URI: nothing to move */
    char pw[256], bare[1024], file[512];
    size_t pl = (size_t)(at - colon - 1);
    assert_true(pl < sizeof pw);
    memcpy(pw, colon + 1, pl);
    pw[pl] = '\0';
    snprintf(bare, sizeof bare, "%.*s%s", (int)(colon - g_uri), g_uri, at);
    bool pg = !strncmp(g_uri, "postgres", 8);
    snprintf(file, sizeof file, "%s/%s", g_tmpdir, pg ? "pgpass" : "my.cnf");
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    if (pg)
        fprintf(f, "*:*:*:*:%s\n", pw); /* test passwords hold no ':' */
    else
        fprintf(f, "[client]\npassword=%s\n", pw);
    fclose(f);
    assert_int_equal(chmod(file, 0600), 0);
    char uri[2048];
    if (pg) {
        setenv("PGPASSFILE", file, 1);
        snprintf(uri, sizeof uri, "%s", bare);
    } else {
        snprintf(uri, sizeof uri, "%s%coption_file=%s", bare,
                 strchr(bare, '?') ? '&' : '?', file);
    }
    mqs_store *s = tu_open_uri(uri);
    char q[128];
    tu_name(q, sizeof q, "pwfile");
    mqs_msg m = tu_msg(MQS_QUEUE, q, "x", 1, 4);
    int64_t id = 0;
    TU_OK(mqs_enqueue(s, &m, &id), s);
    mqs_close(s);
    if (pg)
        unsetenv("PGPASSFILE");
    else {
        /* A missing option file is an error that names it. */
        snprintf(uri, sizeof uri, "%s%coption_file=%s/nope.cnf", bare,
                 strchr(bare, '?') ? '&' : '?', g_tmpdir);
        s = (mqs_store *)1;
        assert_int_equal(mqs_open(uri, NULL, &s), MQS_EINVAL);
        assert_non_null(strstr(mqs_errmsg(NULL), "nope.cnf"));
    }
}

struct opt_seen {
    int commit, batch_max, batch_bytes, max_message_size, max_pending_bytes,
        pool_size, migrate, reconnect_timeout_ms;
    int synchronous, busy_timeout, journal_mode;
    int backend_rows;
    const char *scheme;
};

static void opt_cb(void *ud, const mqs_option_info *o)
{
    struct opt_seen *s = ud;
    assert_non_null(o->name);
    assert_non_null(o->default_value);
    assert_non_null(o->doc);
    assert_non_null(o->scope);
    assert_true(strlen(o->doc) > 0);
    if (strcmp(o->scope, "core") != 0) {
        s->backend_rows++;
        if (!strcmp(o->name, "synchronous")) {
            s->synchronous++;
            assert_string_equal(o->default_value, "full");
        } else if (!strcmp(o->name, "busy_timeout")) {
            s->busy_timeout++;
            assert_string_equal(o->default_value, "5000");
        } else if (!strcmp(o->name, "journal_mode")) {
            s->journal_mode++;
        }
        return;
    }
#define CORE_(n, d)                                                            \
    if (!strcmp(o->name, #n)) {                                                \
        s->n++;                                                                \
        assert_string_equal(o->default_value, d);                              \
        return;                                                                \
    }
    CORE_(commit, "group")
    CORE_(batch_max, "1024")
    CORE_(batch_bytes, "8388608")
    CORE_(max_message_size, "16777216")
    CORE_(max_pending_bytes, "67108864")
    CORE_(pool_size, "4")
    CORE_(migrate, "auto")
    CORE_(reconnect_timeout_ms, "30000")
#undef CORE_
}

static void test_option_foreach(void **state)
{
    (void)state;
    struct opt_seen s;
    memset(&s, 0, sizeof s);
    TU_OK(mqs_option_foreach(NULL, opt_cb, &s), NULL);
    assert_int_equal(s.commit, 1);
    assert_int_equal(s.batch_max, 1);
    assert_int_equal(s.batch_bytes, 1);
    assert_int_equal(s.max_message_size, 1);
    assert_int_equal(s.max_pending_bytes, 1);
    assert_int_equal(s.pool_size, 1);
    assert_int_equal(s.migrate, 1);
    assert_int_equal(s.reconnect_timeout_ms, 1);
    assert_int_equal(s.backend_rows, 0);

    memset(&s, 0, sizeof s);
    TU_OK(mqs_option_foreach(g_scheme, opt_cb, &s), NULL);
    assert_int_equal(s.commit, 1);
    if (g_is_sqlite) {
        assert_int_equal(s.synchronous, 1);
        assert_int_equal(s.busy_timeout, 1);
        assert_int_equal(s.journal_mode, 1);
    }
    int rc = mqs_option_foreach("nosuchdb", opt_cb, &s);
    assert_true(rc == MQS_ENOMODULE || rc == MQS_EINVAL);
}

/* Valid options are accepted and max_message_size takes effect. */
static void test_options_accepted(void **state)
{
    (void)state;
    char *u = tu_uri_with(g_uri, "max_message_size=1000&batch_max=16&pool_size=2"
                                 "&batch_bytes=65536&reconnect_timeout_ms=1000");
    mqs_store *s = tu_open_uri(u);
    free(u);
    assert_int_equal(mqs_max_message_size(s), 1000);
    char q[128];
    tu_name(q, sizeof q, "maxopt");
    static unsigned char buf[1001];
    unsigned char hdr[10] = "hdr-bytes";
    mqs_msg m = tu_msg(MQS_QUEUE, q, buf, 1000 - sizeof hdr, 4);
    m.headers = hdr;
    m.headers_len = sizeof hdr;
    int64_t id = 0;
    TU_OK(mqs_enqueue(s, &m, &id), s);
    assert_true(id > 0);
    m.body_len++;
    assert_int_equal(mqs_enqueue(s, &m, &id), MQS_ETOOBIG);
    assert_int_equal(tu_pending(s, MQS_QUEUE, q, NULL), 1);
    mqs_close(s);

    if (g_is_sqlite) {
        u = tu_uri_with(g_uri, "synchronous=normal&busy_timeout=100");
        s = tu_open_uri(u);
        free(u);
        TU_OK(mqs_enqueue(s, &m, NULL), s); /* within 16 MiB here */
        mqs_close(s);
    }
}

static int progress_calls;
static void progress_cb(void *ud, int from, int to, const char *name)
{
    (void)ud;
    assert_true(to > from);
    assert_non_null(name);
    progress_calls++;
}

/* A current store needs no migration; mqs_migrate is then a no-op. */
static void test_nomigrate(void **state)
{
    (void)state;
    mqs_store *s = NULL;
    int rc = mqs_open_nomigrate(g_uri, NULL, &s);
    if (rc)
        fail_msg("open_nomigrate: %s: %s", mqs_errname(rc), mqs_errmsg(NULL));
    int db = -1, lib = -1;
    TU_OK(mqs_schema_version(s, &db, &lib), s);
    assert_int_equal(db, lib);
    progress_calls = 0;
    TU_OK(mqs_migrate(s, progress_cb, NULL), s);
    assert_int_equal(progress_calls, 0);
    mqs_close(s);

    /* migrate=off opens a current store */
    char *u = tu_uri_with(g_uri, "migrate=off");
    s = tu_open_uri(u);
    free(u);
    mqs_close(s);
}

/* g_uri with its "user:password@host:port" authority rewritten; NULL if the
 * URI has no password. malloc'd. */
static char *with_authority(const char *pw, const char *hostport)
{
    const char *auth = strstr(g_uri, "://");
    if (!auth)
        return NULL;
    auth += 3;
    const char *end = auth + strcspn(auth, "/?");
    const char *at = memchr(auth, '@', (size_t)(end - auth));
    const char *colon = memchr(auth, ':', (size_t)((at ? at : end) - auth));
    if (!at || !colon)
        return NULL;
    size_t n = strlen(g_uri) + strlen(pw) + (hostport ? strlen(hostport) : 0) + 64;
    char *out = malloc(n);
    assert_non_null(out);
    snprintf(out, n, "%.*s%s@%.*s%s", (int)(colon + 1 - g_uri), g_uri, pw,
             hostport ? (int)strlen(hostport) : (int)(end - at - 1),
             hostport ? hostport : at + 1, end);
    char *withopt = tu_uri_with(out, "reconnect_timeout_ms=1000");
    free(out);
    return withopt;
}

/* The real password of g_uri, into buf ("" if none). */
static void real_password(char *buf, size_t len)
{
    buf[0] = '\0';
    const char *auth = strstr(g_uri, "://");
    if (!auth)
        return;
    auth += 3;
    const char *end = auth + strcspn(auth, "/?");
    const char *at = memchr(auth, '@', (size_t)(end - auth));
    const char *colon = memchr(auth, ':', (size_t)((at ? at : end) - auth));
    if (at && colon)
        snprintf(buf, len, "%.*s", (int)(at - colon - 1), colon + 1);
}

/* Servers only: a wrong password is MQS_EAUTH, an unreachable server
 * MQS_ECONN, both quickly and without showing any password. */
static void test_server_errors(void **state)
{
    (void)state;
    char *bad = with_authority("Wr0ngPa55word", NULL);
    if (!bad)
        skip(); /* no password in this URI (e.g. SQLite) */
    char pw[256];
    real_password(pw, sizeof pw);
    int64_t t0 = tu_now_ms();
    mqs_store *s = NULL;
    int rc = mqs_open(bad, NULL, &s);
    if (rc == 0)
        mqs_close(s);
    const char *msg = mqs_errmsg(NULL);
    if (rc != MQS_EAUTH)
        fail_msg("wrong password -> %s (%s), expected MQS_EAUTH",
                 mqs_errname(rc), msg);
    assert_null(strstr(msg, "Wr0ngPa55word"));
    if (pw[0])
        assert_null(strstr(msg, pw));
    free(bad);

    char *down = with_authority("Wr0ngPa55word", "127.0.0.1:1");
    rc = mqs_open(down, NULL, &s);
    if (rc == 0)
        mqs_close(s);
    msg = mqs_errmsg(NULL);
    if (rc != MQS_ECONN)
        fail_msg("unreachable server -> %s (%s), expected MQS_ECONN",
                 mqs_errname(rc), msg);
    assert_null(strstr(msg, "Wr0ngPa55word"));
    assert_non_null(strstr(msg, "127.0.0.1"));
    free(down);
    /* a failed open does not wait out the reconnect loop for ever */
    assert_true(tu_now_ms() - t0 < 20000);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_error_names),
    cmocka_unit_test(test_open_close),
    cmocka_unit_test(test_bad_scheme),
    cmocka_unit_test(test_unknown_option),
    cmocka_unit_test(test_bad_option_value),
    cmocka_unit_test(test_unopenable_path),
    cmocka_unit_test(test_password_never_shown),
    cmocka_unit_test(test_uri_parts_refused),
    cmocka_unit_test(test_sized_structs),
    cmocka_unit_test(test_uri_mask),
    cmocka_unit_test(test_uri_mask_spellings),
    cmocka_unit_test(test_password_from_file),
    cmocka_unit_test(test_option_foreach),
    cmocka_unit_test(test_options_accepted),
    cmocka_unit_test(test_nomigrate),
    cmocka_unit_test(test_server_errors),
};
TU_GROUP(tu_group_api, "api", tests);
