/*
 * conformance.c - runs every test group against each store URI.
 *
 * Usage: mqs_conformance [URI...]
 * URIs come from the arguments, else from MQSTORE_TEST_URIS (space
 * separated), else a fresh SQLite file. "@TMP@" in a URI is replaced by a
 * private temporary directory removed at exit; such a database belongs to
 * this run, which enables the store-wide tests (purge of everything).
 * Environment: MQSTORE_TEST_QUICK=1 shrinks the workloads (valgrind);
 * MQSTORE_TEST_FILTER=pattern runs only the matching tests (cmocka).
 */
#include "testutil.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_URI "sqlite:///@TMP@/store.db"

static int rm_entry(const char *path, const struct stat *sb, int flag,
                    struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* uri with every "@TMP@" replaced by dir; malloc'd. */
static char *expand_tmp(const char *uri, const char *dir)
{
    size_t n = strlen(uri) + 1;
    for (const char *p = strstr(uri, "@TMP@"); p; p = strstr(p + 5, "@TMP@"))
        n += strlen(dir);
    char *out = malloc(n);
    if (!out)
        return NULL;
    char *o = out;
    const char *p = uri;
    for (const char *hit; (hit = strstr(p, "@TMP@")) != NULL; p = hit + 5) {
        memcpy(o, p, (size_t)(hit - p));
        o += hit - p;
        /* the URI has a leading '/' already: "sqlite:///@TMP@" */
        const char *d = dir[0] == '/' && o > out && o[-1] == '/' ? dir + 1 : dir;
        memcpy(o, d, strlen(d));
        o += strlen(d);
    }
    strcpy(o, p);
    return out;
}

/* Also on exit() from inside cmocka (a crashed test), not only at the end. */
static void remove_tmpdir(void)
{
    if (g_tmpdir)
        nftw(g_tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* t_page_async.c (ABI 2.3); declared here, next to its registration. */
extern const tu_group tu_group_page_async;

static const tu_group *const groups[] = {
    &tu_group_api,      &tu_group_messages,   &tu_group_topics,
    &tu_group_txn,      &tu_group_recovery,   &tu_group_concurrency,
    &tu_group_sqlite,   &tu_group_paging,     &tu_group_page_async,
};

int main(int argc, char **argv)
{
    static char tmpl[] = "/tmp/mqs_conf_XXXXXX"; /* outlives main: atexit */
    if (!mkdtemp(tmpl)) {
        perror("mkdtemp");
        return 1;
    }
    g_tmpdir = tmpl;
    atexit(remove_tmpdir);
    const char *q = getenv("MQSTORE_TEST_QUICK");
    g_quick = q && *q && strcmp(q, "0") != 0;
    const char *filter = getenv("MQSTORE_TEST_FILTER");
    if (filter && *filter)
        cmocka_set_test_filter(filter);

    /* Collect the URIs (copies, so the env string can be split). */
    char *env_copy = NULL;
    const char *uris[64];
    int nuris = 0;
    for (int i = 1; i < argc && nuris < 64; i++)
        uris[nuris++] = argv[i];
    const char *env = getenv("MQSTORE_TEST_URIS");
    if (nuris == 0 && env && *env) {
        env_copy = strdup(env);
        for (char *save = NULL, *tok = strtok_r(env_copy, " \t\n", &save);
             tok && nuris < 64; tok = strtok_r(NULL, " \t\n", &save))
            uris[nuris++] = tok;
    }
    if (nuris == 0)
        uris[nuris++] = DEFAULT_URI;

    int failed = 0;
    for (int u = 0; u < nuris; u++) {
        char *uri = expand_tmp(uris[u], g_tmpdir);
        if (!uri) {
            failed++;
            break;
        }
        g_uri = uri;
        g_owned = strstr(uris[u], "@TMP@") != NULL;
        tu_uri_scheme(uri, g_scheme, sizeof g_scheme);
        g_is_sqlite = strcmp(g_scheme, "sqlite") == 0;
        char masked[512];
        mqs_uri_mask(uri, masked, sizeof masked);
        printf("# store %s%s%s\n", masked, g_owned ? " (private)" : "",
               g_quick ? " (quick)" : "");
        fflush(stdout);
        for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
            printf("# group %s\n", groups[g]->name);
            fflush(stdout);
            char name[640];
            snprintf(name, sizeof name, "%s [%s]", groups[g]->name, masked);
            failed += _cmocka_run_group_tests(name, groups[g]->tests,
                                              groups[g]->n, NULL, NULL);
        }
        free(uri);
        g_uri = NULL;
    }
    free(env_copy);
    return failed ? 1 : 0;
}
