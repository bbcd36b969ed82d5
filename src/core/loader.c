/* loader.c - find, load and validate backend modules. */
#include <dirent.h>
#include <dlfcn.h>
#include <stddef.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* Size of the table in ABI 3.0, the first of this major: every member up
 * to msg_recent. Members appended in 3.x come after it. */
#define MQS_BACKEND_SIZE_3_0                                                   \
    (offsetof(mqs_backend, msg_recent) +                                       \
     sizeof(((mqs_backend *)0)->msg_recent))

#ifndef MQS_MODULE_DIR
#define MQS_MODULE_DIR "/usr/local/lib/mqstore"
#endif

/* Loaded modules are kept for the life of the process: unloading code that
 * a closed store's threads might still be returning into buys nothing. A
 * module serves the schemes its table declares (aliases included): the
 * core knows no backend by name. */
static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER;
static struct loaded {
    char path[PATH_MAX];
    const mqs_backend *be;
} loaded[16];
static size_t n_loaded;

static bool serves(const mqs_backend *be, const char *scheme)
{
    for (const char *const *p = be->schemes; *p; p++)
        if (!strcmp(*p, scheme))
            return true;
    return false;
}

/* The folder libmqstore.so was loaded from: modules built beside it are found
 * without any environment variable, in the build tree as once installed. */
static void self_dir(char *buf, size_t len)
{
    Dl_info info;
    buf[0] = '\0';
    if (dladdr((void *)&mqs__load_backend, &info) && info.dli_fname) {
        const char *slash = strrchr(info.dli_fname, '/');
        if (slash && (size_t)(slash - info.dli_fname) < len) {
            memcpy(buf, info.dli_fname, (size_t)(slash - info.dli_fname));
            buf[slash - info.dli_fname] = '\0';
        }
    }
}

/* Check the table once, in release builds too; name what is wrong. */
static int validate(const mqs_backend *be, const char *path)
{
    if (!be)
        return mqs__err(NULL, MQS_ENOMODULE, "%s: %s() returned NULL", path,
                        MQS_BACKEND_ENTRY_NAME);
    if (be->magic != MQS_BACKEND_MAGIC)
        return mqs__err(NULL, MQS_ENOMODULE,
                        "%s is not an mqstore backend (bad magic)", path);
    if (be->abi_major != MQS_BACKEND_ABI_MAJOR)
        return mqs__err(NULL, MQS_ENOMODULE,
                        "%s was built for backend ABI %u.%u; this library "
                        "(mqstore %d.%d.%d) supports ABI %d.x: rebuild the "
                        "module against this mqstore",
                        path, be->abi_major, be->abi_minor, MQS_VERSION_MAJOR,
                        MQS_VERSION_MINOR, MQS_VERSION_PATCH,
                        MQS_BACKEND_ABI_MAJOR);
    /* Members are only appended within a major, so a 3.x table holds at
     * least the 3.0 members. */
    if (be->struct_size < MQS_BACKEND_SIZE_3_0)
        return mqs__err(NULL, MQS_ENOMODULE,
                        "%s: table size %u is smaller than ABI 3.0 needs "
                        "(%zu)",
                        path, be->struct_size, (size_t)MQS_BACKEND_SIZE_3_0);
    if (!be->name || !be->schemes)
        return mqs__err(NULL, MQS_ENOMODULE, "%s: table has no name/schemes",
                        path);
#define REQUIRE(member)                                                        \
    if (!be->member)                                                           \
        return mqs__err(NULL, MQS_ENOMODULE,                                   \
                        "%s (backend %s): required callback '" #member         \
                        "' is NULL",                                           \
                        path, be->name);
    REQUIRE(conn_open) REQUIRE(conn_close) REQUIRE(conn_errmsg)
    REQUIRE(schema_version) REQUIRE(schema_apply) REQUIRE(txn_begin)
    REQUIRE(txn_commit) REQUIRE(txn_rollback) REQUIRE(dest_resolve)
    REQUIRE(msg_insert) REQUIRE(msg_ack) REQUIRE(msg_nack) REQUIRE(sub_create)
    REQUIRE(sub_remove) REQUIRE(purge) REQUIRE(sub_lookup) REQUIRE(page_read)
    REQUIRE(dest_list)
#undef REQUIRE
    /* Groups are all or nothing, checked once here rather than at every
     * call: the lock (HA) and the crash detector's session pair. */
    int n_lock = !!be->lock_acquire + !!be->lock_renew + !!be->lock_release +
                 !!be->lock_read + !!be->lock_force + !!be->lock_fence;
    if (n_lock != 0 && n_lock != 6)
        return mqs__err(NULL, MQS_ENOMODULE,
                        "%s (backend %s): %d of the 6 lock_* callbacks are "
                        "set; a backend has all of them (HA) or none",
                        path, be->name, n_lock);
    int n_mark = MQS_BE_HAS(be, mark_put) + MQS_BE_HAS(be, mark_list) +
                 MQS_BE_HAS(be, mark_prune);
    if (n_mark != 0 && n_mark != 3)
        return mqs__err(NULL, MQS_ENOMODULE,
                        "%s (backend %s): %d of the 3 mark_* callbacks are "
                        "set; a backend has all of them or none",
                        path, be->name, n_mark);
    if (!be->session_lock != !be->session_unlock)
        return mqs__err(NULL, MQS_ENOMODULE,
                        "%s (backend %s): session_lock and session_unlock "
                        "come as a pair",
                        path, be->name);
    if (!be->migrations || be->n_migrations == 0)
        return mqs__err(NULL, MQS_ENOMODULE, "%s: no schema migrations", path);
    for (size_t i = 0; i < be->n_migrations; i++)
        if (be->migrations[i].version != (int)i + 1 || !be->migrations[i].sql)
            return mqs__err(NULL, MQS_ENOMODULE,
                            "%s: migration %zu is numbered %d; versions must "
                            "run 1, 2, 3... without gaps",
                            path, i + 1, be->migrations[i].version);
    return 0;
}

/* Load and validate the module at path (once per process). 0, or
 * MQS_ENOMODULE with the message recorded. Caller holds load_mu. */
static int load_path(const char *path, const mqs_backend **out)
{
    for (size_t i = 0; i < n_loaded; i++)
        if (!strcmp(loaded[i].path, path)) {
            *out = loaded[i].be;
            return 0;
        }
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return mqs__err(NULL, MQS_ENOMODULE, "cannot load %s: %s", path,
                        dlerror());
    mqs_backend_entry_fn entry;
    *(void **)&entry = dlsym(h, MQS_BACKEND_ENTRY_NAME);
    if (!entry) {
        dlclose(h);
        return mqs__err(NULL, MQS_ENOMODULE,
                        "%s does not export %s(): not an mqstore backend",
                        path, MQS_BACKEND_ENTRY_NAME);
    }
    const mqs_backend *be = entry();
    int rc = validate(be, path);
    if (rc) {
        dlclose(h);
        return rc;
    }
    if (n_loaded < sizeof loaded / sizeof loaded[0]) {
        snprintf(loaded[n_loaded].path, sizeof loaded[0].path, "%s", path);
        loaded[n_loaded++].be = be;
    }
    *out = be;
    return 0;
}

/* Is word one of the ", "-separated words of list? */
static bool listed(const char *list, const char *word)
{
    size_t n = strlen(word);
    for (const char *p = list; (p = strstr(p, word)) != NULL; p += n)
        if ((p == list || p[-1] == ' ') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

static bool is_module_name(const char *f)
{
    size_t n = strlen(f);
    return n > strlen("mqstore_.so") && !strncmp(f, "mqstore_", 8) &&
           !strcmp(f + n - 3, ".so");
}

int mqs__load_backend(const char *scheme, const mqs_backend **out)
{
    *out = NULL;
    if (strlen(scheme) > 64 || strchr(scheme, '/'))
        return mqs__err(NULL, MQS_ENOMODULE,
                        "scheme '%s' is too long or has a '/'", scheme);

    pthread_mutex_lock(&load_mu);
    for (size_t i = 0; i < n_loaded; i++)
        if (serves(loaded[i].be, scheme)) {
            *out = loaded[i].be;
            pthread_mutex_unlock(&load_mu);
            return 0;
        }

    /* Search order: $MQSTORE_MODULE_PATH (colon-separated), next to
     * libmqstore, the install dir. In each folder mqstore_<scheme>.so is
     * tried first (no scan in the common case), then every mqstore_*.so,
     * for the schemes it declares. */
    char dirs[8192] = "";
    const char *env = getenv("MQSTORE_MODULE_PATH");
    char self[PATH_MAX];
    self_dir(self, sizeof self);
    int dn = snprintf(dirs, sizeof dirs, "%s%s%s%s%s", env && *env ? env : "",
                      env && *env ? ":" : "", self, *self ? ":" : "",
                      MQS_MODULE_DIR);
    if (dn < 0 || (size_t)dn >= sizeof dirs) {
        pthread_mutex_unlock(&load_mu);
        return mqs__err(NULL, MQS_ENOMODULE,
                        "MQSTORE_MODULE_PATH is too long (%zu bytes)",
                        strlen(env ? env : ""));
    }

    char tried[4096] = "", known[512] = "";
    size_t tried_len = 0, known_len = 0;
    int rc = MQS_ENOMODULE;
    char *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d;
         d = strtok_r(NULL, ":", &save)) {
        char path[PATH_MAX];
        if (tried_len < sizeof tried - 1)
            tried_len += (size_t)snprintf(tried + tried_len,
                                          sizeof tried - tried_len, "%s%s",
                                          tried_len ? ", " : "", d);
        const mqs_backend *be;
        snprintf(path, sizeof path, "%s/mqstore_%s.so", d, scheme);
        if (access(path, F_OK) == 0) {
            rc = load_path(path, &be);
            if (rc == 0 && serves(be, scheme)) {
                *out = be;
                goto out;
            }
            if (rc) /* named for this scheme and broken: say so */
                goto out;
        }
        DIR *dir = opendir(d);
        if (!dir)
            continue;
        for (struct dirent *e; (e = readdir(dir)) != NULL;) {
            if (!is_module_name(e->d_name))
                continue;
            snprintf(path, sizeof path, "%s/%s", d, e->d_name);
            if (load_path(path, &be) != 0)
                continue; /* not ours to judge here: named when asked for */
            for (const char *const *p = be->schemes; *p; p++)
                if (!listed(known, *p) && known_len < sizeof known - 80)
                    known_len += (size_t)snprintf(known + known_len,
                                                  sizeof known - known_len,
                                                  "%s%s", known_len ? ", " : "",
                                                  *p);
            if (serves(be, scheme)) {
                closedir(dir);
                *out = be;
                rc = 0;
                goto out;
            }
        }
        closedir(dir);
    }
    rc = mqs__err(NULL, MQS_ENOMODULE,
                  "no backend for URI scheme '%s': no module in %s declares "
                  "it (schemes found: %s; set MQSTORE_MODULE_PATH to the "
                  "folder that holds the module)",
                  scheme, tried, known_len ? known : "none");
out:
    pthread_mutex_unlock(&load_mu);
    return rc;
}
