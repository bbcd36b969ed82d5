/*
 * t_sqlite.c - SQLite-only: files mqstore must refuse without touching,
 * URI forms and backend options. Uses the sqlite3 C API to make and inspect
 * files behind the library's back.
 */
#include "testutil.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void tmp_path(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", g_tmpdir, name);
    tu_unlink_db(buf);
}

static void sql_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open(path, &db);
    if (rc == SQLITE_OK)
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK)
        fail_msg("sqlite3 %s: %s: %s", path, sql, sqlite3_errmsg(db));
    assert_int_equal(sqlite3_close(db), SQLITE_OK);
}

static char *sql_text(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    char *out = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("%s: %s", sql, sqlite3_errmsg(db));
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        out = strdup((const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
}

/* Open must fail with code, name `needle`, and leave the file as it was. */
static void refused_unchanged(const char *path, int code, const char *needle1,
                              const char *needle2)
{
    size_t len0 = 0, len1 = 0;
    unsigned char *before = tu_read_file(path, &len0);
    assert_non_null(before);
    char uri[1024];
    snprintf(uri, sizeof uri, "sqlite://%s", path);
    for (int nomigrate = 0; nomigrate < 2; nomigrate++) {
        mqs_store *s = (mqs_store *)(uintptr_t)0x1;
        int rc = nomigrate ? mqs_open_nomigrate(uri, NULL, &s)
                           : mqs_open(uri, NULL, &s);
        if (nomigrate && rc == 0 && code == MQS_ESCHEMA) {
            /* a tool may open it to report; migrating must still refuse */
            int db = 0, lib = 0;
            TU_OK(mqs_schema_version(s, &db, &lib), s);
            assert_true(db > lib);
            assert_int_equal(mqs_migrate(s, NULL, NULL), MQS_ESCHEMA);
            mqs_close(s);
            continue;
        }
        if (rc == 0)
            mqs_close(s);
        const char *msg = mqs_errmsg(NULL);
        if (rc != code)
            fail_msg("open(%s)%s -> %s (%s), expected %s", path,
                     nomigrate ? " nomigrate" : "", mqs_errname(rc), msg,
                     mqs_errname(code));
        assert_null(s);
        if (needle1 && !strstr(msg, needle1))
            fail_msg("message \"%s\" does not name \"%s\"", msg, needle1);
        if (needle2 && !strstr(msg, needle2))
            fail_msg("message \"%s\" does not name \"%s\"", msg, needle2);
    }
    unsigned char *after = tu_read_file(path, &len1);
    assert_non_null(after);
    assert_int_equal(len1, len0);
    assert_memory_equal(after, before, len0);
    free(before);
    free(after);
}

static void test_corrupt_file(void **state)
{
    (void)state;
    if (!g_is_sqlite)
        skip();
    char path[512];
    tmp_path(path, sizeof path, "corrupt.db");
    unsigned char junk[8192];
    tu_fill(junk, sizeof junk, (uint64_t)tu_now_ms());
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(junk, 1, sizeof junk, f), sizeof junk);
    assert_int_equal(fclose(f), 0);
    refused_unchanged(path, MQS_ECORRUPT, "corrupt.db", NULL);
}

static void test_foreign_database(void **state)
{
    (void)state;
    if (!g_is_sqlite)
        skip();
    char path[512];
    tmp_path(path, sizeof path, "foreign.db");
    sql_exec(path, "CREATE TABLE foo (x INTEGER); INSERT INTO foo VALUES (42);");
    refused_unchanged(path, MQS_ECORRUPT, "foreign.db", NULL);
    /* and still the same database for its owner */
    char *v = sql_text(path, "SELECT x FROM foo");
    assert_non_null(v);
    assert_string_equal(v, "42");
    free(v);
    char *jm = sql_text(path, "PRAGMA journal_mode");
    assert_string_equal(jm, "delete"); /* not switched to WAL */
    free(jm);
}

static void test_newer_schema(void **state)
{
    (void)state;
    if (!g_is_sqlite)
        skip();
    char path[512], uri[1024];
    tmp_path(path, sizeof path, "newer.db");
    snprintf(uri, sizeof uri, "sqlite://%s", path);
    mqs_store *s = tu_open_uri(uri);
    int db = 0, lib = 0;
    TU_OK(mqs_schema_version(s, &db, &lib), s);
    assert_int_equal(db, lib);
    char q[128];
    tu_name(q, sizeof q, "newer");
    mqs_msg m = tu_msg(MQS_QUEUE, q, "keep", 4, 4);
    TU_OK(mqs_enqueue(s, &m, NULL), s);
    mqs_close(s);

    char *v = sql_text(path, "SELECT value FROM mqs_meta WHERE key='schema_version'");
    assert_non_null(v);
    assert_int_equal(atoi(v), lib);
    free(v);
    sql_exec(path, "UPDATE mqs_meta SET value='999' WHERE key='schema_version'");
    char libs[16];
    snprintf(libs, sizeof libs, "%d", lib);
    refused_unchanged(path, MQS_ESCHEMA, "999", libs);
    v = sql_text(path, "SELECT value FROM mqs_meta WHERE key='schema_version'");
    assert_string_equal(v, "999");
    free(v);
}

/* sqlite:relative/path.db is relative to the working directory. */
static void test_relative_path(void **state)
{
    (void)state;
    if (!g_is_sqlite)
        skip();
    char cwd[1024], path[512];
    assert_non_null(getcwd(cwd, sizeof cwd));
    tmp_path(path, sizeof path, "rel.db");
    assert_int_equal(chdir(g_tmpdir), 0);
    mqs_store *s = NULL;
    int rc = mqs_open("sqlite:rel.db", NULL, &s);
    char q[128];
    int64_t id = 0;
    if (rc == 0) {
        tu_name(q, sizeof q, "rel");
        mqs_msg m = tu_msg(MQS_QUEUE, q, "r", 1, 4);
        rc = mqs_enqueue(s, &m, &id);
        mqs_close(s);
    }
    assert_int_equal(chdir(cwd), 0);
    if (rc != 0)
        fail_msg("relative open/enqueue -> %s: %s", mqs_errname(rc),
                 mqs_errmsg(NULL));
    assert_int_equal(access(path, F_OK), 0);
    char uri[1024];
    snprintf(uri, sizeof uri, "sqlite://%s", path);
    s = tu_open_uri(uri);
    tu_list l = {0};
    tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
    assert_int_equal(l.n, 1);
    assert_int_equal(l.v[0].id, id);
    tu_list_free(&l);
    mqs_close(s);
}

/* Backend options take effect (checked in the file itself). */
static void test_sqlite_options(void **state)
{
    (void)state;
    if (!g_is_sqlite)
        skip();
    static const char *const opts[] = {
        "synchronous=off",  "synchronous=normal",
        "synchronous=full", "busy_timeout=10&journal_mode=wal",
        "journal_mode=delete",
    };
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        char path[512], uri[1024];
        char name[32];
        snprintf(name, sizeof name, "opt%zu.db", i);
        tmp_path(path, sizeof path, name);
        snprintf(uri, sizeof uri, "sqlite://%s?%s", path, opts[i]);
        mqs_store *s = tu_open_uri(uri);
        char q[128];
        tu_name(q, sizeof q, "opt");
        mqs_msg m = tu_msg(MQS_QUEUE, q, "o", 1, 4);
        int64_t id = 0;
        TU_OK(mqs_enqueue(s, &m, &id), s);
        tu_list l = {0};
        tu_recover(s, MQS_QUEUE, q, NULL, 0, &l);
        assert_int_equal(l.n, 1);
        tu_list_free(&l);
        mqs_close(s);
        char *jm = sql_text(path, "PRAGMA journal_mode");
        assert_non_null(jm);
        assert_string_equal(jm, strstr(opts[i], "delete") ? "delete" : "wal");
        free(jm);
    }
}

/* Store files hold messages: the database and its -wal/-shm files are
 * 0600 whatever the umask. create=no opens an existing store and refuses
 * (creating nothing) a missing one. */
static void test_file_modes_and_create(void **state)
{
    (void)state;
    if (!g_is_sqlite)
        skip();
    char path[512], uri[1024], side[600];
    tmp_path(path, sizeof path, "modes.db");
    snprintf(uri, sizeof uri, "sqlite://%s?create=no", path);
    mqs_store *s = (mqs_store *)1;
    assert_int_equal(mqs_open(uri, NULL, &s), MQS_ENOTFOUND);
    assert_null(s);
    assert_non_null(strstr(mqs_errmsg(NULL), "no database file"));
    struct stat sb;
    assert_int_not_equal(stat(path, &sb), 0); /* nothing created */

    mode_t old = umask(022);
    snprintf(uri, sizeof uri, "sqlite://%s", path);
    s = tu_open_uri(uri);
    char q[128];
    tu_name(q, sizeof q, "modes");
    mqs_msg m = tu_msg(MQS_QUEUE, q, "secret body", 11, 4);
    int64_t id = 0;
    TU_OK(mqs_enqueue(s, &m, &id), s);
    static const char *const sfx[] = {"", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(side, sizeof side, "%s%s", path, sfx[i]);
        if (stat(side, &sb) != 0)
            fail_msg("%s missing", side);
        if ((sb.st_mode & 0777) != 0600)
            fail_msg("%s has mode %03o, want 600", side,
                     (unsigned)(sb.st_mode & 0777));
    }
    mqs_close(s);
    umask(old);
    snprintf(uri, sizeof uri, "sqlite://%s?create=no", path);
    s = tu_open_uri(uri); /* existing: fine */
    mqs_close(s);
    snprintf(uri, sizeof uri, "sqlite://%s?create=maybe", path);
    s = (mqs_store *)1;
    assert_int_equal(mqs_open(uri, NULL, &s), MQS_EINVAL);
    assert_non_null(strstr(mqs_errmsg(NULL), "yes, no"));
}

/* Two processes started at the same moment on a new store both open it
 * (one used to fail "setting journal_mode=wal: database is locked"). */
static void test_concurrent_create(void **state)
{
    (void)state;
    if (!g_is_sqlite)
        skip();
    for (int round = 0; round < 10; round++) {
        char path[512], uri[1024], name[32];
        snprintf(name, sizeof name, "race%d.db", round);
        tmp_path(path, sizeof path, name);
        snprintf(uri, sizeof uri, "sqlite://%s", path);
        int go[2];
        assert_int_equal(pipe(go), 0);
        pid_t kids[2];
        for (int k = 0; k < 2; k++) {
            kids[k] = fork();
            assert_true(kids[k] >= 0);
            if (kids[k] == 0) {
                char b;
                close(go[1]);
                (void)!read(go[0], &b, 1); /* both start together */
                mqs_store *st = NULL;
                int rc = mqs_open(uri, NULL, &st);
                if (rc)
                    fprintf(stderr, "round %d child %d: %s\n", round, k,
                            mqs_errmsg(NULL));
                mqs_close(st);
                _exit(rc ? 1 : 0);
            }
        }
        close(go[0]);
        close(go[1]); /* EOF releases both */
        for (int k = 0; k < 2; k++) {
            int status = 0;
            assert_int_equal(waitpid(kids[k], &status, 0), kids[k]);
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                fail_msg("round %d: a process could not open the new store",
                         round);
        }
    }
}

/* An empty file is initialized by mqs_migrate, with progress reports;
 * migrate=off refuses it. */
static void test_migrate_fresh(void **state)
{
    (void)state;
    if (!g_is_sqlite)
        skip();
    char path[512], uri[1024];
    tmp_path(path, sizeof path, "fresh.db");
    snprintf(uri, sizeof uri, "sqlite://%s?migrate=off", path);
    mqs_store *s = NULL;
    int rc = mqs_open(uri, NULL, &s);
    if (rc == 0)
        mqs_close(s);
    assert_int_equal(rc, MQS_ESCHEMA);

    snprintf(uri, sizeof uri, "sqlite://%s", path);
    tu_unlink_db(path);
    rc = mqs_open_nomigrate(uri, NULL, &s);
    if (rc)
        fail_msg("open_nomigrate: %s: %s", mqs_errname(rc), mqs_errmsg(NULL));
    int db = -1, lib = -1;
    TU_OK(mqs_schema_version(s, &db, &lib), s);
    assert_int_equal(db, 0);
    assert_true(lib >= 1);
    TU_OK(mqs_migrate(s, NULL, NULL), s);
    TU_OK(mqs_schema_version(s, &db, NULL), s);
    assert_int_equal(db, lib);
    mqs_close(s);
}

static int progress_calls, progress_last_to, progress_bad;
static void progress(void *ud, int from, int to, const char *name)
{
    (void)ud;
    if (from != progress_last_to || to != from + 1 || !name || !name[0])
        progress_bad++;
    progress_last_to = to;
    progress_calls++;
}

static void test_migrate_progress(void **state)
{
    (void)state;
    if (!g_is_sqlite)
        skip();
    char path[512], uri[1024];
    tmp_path(path, sizeof path, "fresh2.db");
    snprintf(uri, sizeof uri, "sqlite://%s", path);
    mqs_store *s = NULL;
    int rc = mqs_open_nomigrate(uri, NULL, &s);
    if (rc)
        fail_msg("open_nomigrate: %s: %s", mqs_errname(rc), mqs_errmsg(NULL));
    int lib = 0;
    TU_OK(mqs_schema_version(s, NULL, &lib), s);
    progress_calls = progress_last_to = progress_bad = 0;
    TU_OK(mqs_migrate(s, progress, NULL), s);
    assert_int_equal(progress_calls, lib);
    assert_int_equal(progress_last_to, lib);
    assert_int_equal(progress_bad, 0);
    TU_OK(mqs_migrate(s, progress, NULL), s); /* nothing left to do */
    assert_int_equal(progress_calls, lib);
    mqs_close(s);
    /* usable afterwards with migrate=off */
    snprintf(uri, sizeof uri, "sqlite://%s?migrate=off", path);
    s = tu_open_uri(uri);
    mqs_close(s);
}

static const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_corrupt_file),
    cmocka_unit_test(test_foreign_database),
    cmocka_unit_test(test_newer_schema),
    cmocka_unit_test(test_relative_path),
    cmocka_unit_test(test_sqlite_options),
    cmocka_unit_test(test_file_modes_and_create),
    cmocka_unit_test(test_concurrent_create),
    cmocka_unit_test(test_migrate_fresh),
    cmocka_unit_test(test_migrate_progress),
};
TU_GROUP(tu_group_sqlite, "sqlite", tests);
