/* loader.c - find, load and validate backend modules. */
#include <dlfcn.h>
#include <stddef.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

/* Size of the table in ABI 2.0, the first of this major: every member up
 * to session_unlock. Members appended in 2.x come after it. */
#define MQS_BACKEND_SIZE_2_0                                                   \
    (offsetof(mqs_backend, session_unlock) +                                   \
     sizeof(((mqs_backend *)0)->session_unlock))

#ifndef MQS_MODULE_DIR
#define MQS_MODULE_DIR "/usr/local/lib/mqstore"
#endif

/* Scheme aliases: several URI schemes map to one module. */
static const struct {
    const char *scheme, *module;
} aliases[] = {
    {"postgres", "postgresql"},
    {"mariadb", "mysql"},
};

/* Loaded modules are kept for the life of the process: unloading code that
 * a closed store's threads might still be returning into buys nothing. */
static pthread_mutex_t load_mu = PTHREAD_MUTEX_INITIALIZER;
static struct loaded {
    char name[64];
    const mqs_backend *be;
} loaded[16];
static size_t n_loaded;

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
    /* Members are only appended within a major, so a 2.x table holds at
     * least the 2.0 members. */
    if (be->struct_size < MQS_BACKEND_SIZE_2_0)
        return mqs__err(NULL, MQS_ENOMODULE,
                        "%s: table size %u is smaller than ABI 2.0 needs "
                        "(%zu)",
                        path, be->struct_size, (size_t)MQS_BACKEND_SIZE_2_0);
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

int mqs__load_backend(const char *scheme, const mqs_backend **out)
{
    *out = NULL;
    const char *module = scheme;
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (!strcmp(aliases[i].scheme, scheme))
            module = aliases[i].module;
    if (strlen(module) >= sizeof loaded[0].name)
        return mqs__err(NULL, MQS_ENOMODULE, "scheme '%s' is too long",
                        scheme);

    pthread_mutex_lock(&load_mu);
    for (size_t i = 0; i < n_loaded; i++)
        if (!strcmp(loaded[i].name, module)) {
            *out = loaded[i].be;
            pthread_mutex_unlock(&load_mu);
            return 0;
        }

    /* Search order: $MQSTORE_MODULE_PATH (colon-separated), next to
     * libmqstore, the install dir. */
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

    char tried[4096] = "";
    size_t tried_len = 0;
    int rc = MQS_ENOMODULE;
    char *save = NULL;
    for (char *d = strtok_r(dirs, ":", &save); d;
         d = strtok_r(NULL, ":", &save)) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/mqstore_%s.so", d, module);
        if (tried_len < sizeof tried - 1)
            tried_len += (size_t)snprintf(tried + tried_len,
                                          sizeof tried - tried_len, "%s%s",
                                          tried_len ? ", " : "", d);
        if (access(path, F_OK) != 0)
            continue;
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            rc = mqs__err(NULL, MQS_ENOMODULE, "cannot load %s: %s", path,
                          dlerror());
            goto out;
        }
        mqs_backend_entry_fn entry;
        *(void **)&entry = dlsym(h, MQS_BACKEND_ENTRY_NAME);
        if (!entry) {
            rc = mqs__err(NULL, MQS_ENOMODULE,
                          "%s does not export %s(): not an mqstore backend",
                          path, MQS_BACKEND_ENTRY_NAME);
            dlclose(h);
            goto out;
        }
        const mqs_backend *be = entry();
        rc = validate(be, path);
        if (rc) {
            dlclose(h);
            goto out;
        }
        if (n_loaded < sizeof loaded / sizeof loaded[0]) {
            snprintf(loaded[n_loaded].name, sizeof loaded[0].name, "%s",
                     module);
            loaded[n_loaded++].be = be;
        }
        *out = be;
        rc = 0;
        goto out;
    }
    rc = mqs__err(NULL, MQS_ENOMODULE,
                  "no backend for URI scheme '%s': mqstore_%s.so not found "
                  "in %s (known schemes: sqlite, postgresql/postgres, "
                  "mysql/mariadb; set MQSTORE_MODULE_PATH to the folder that "
                  "holds the module)",
                  scheme, module, tried);
out:
    pthread_mutex_unlock(&load_mu);
    return rc;
}
