/*
 * sqlite.c - the SQLite backend module (mqstore_sqlite.so).
 *
 * SQL only: the core does batching, retries, caching, expiry and threads.
 * Every statement is prepared once per connection (persistent), then
 * bound, stepped, checked and reset on each use. The files of the module
 * are listed in sqlite_int.h.
 *
 * URI forms (the core percent-decodes the path; relative paths are
 * relative to the process's working directory):
 *   sqlite:///abs/path.db            absolute path
 *   sqlite://localhost/abs/path.db   absolute path (RFC 8089 style)
 *   sqlite:/abs/path.db              absolute path
 *   sqlite:relative/path.db          relative path
 * sqlite://relative.db is refused: "relative.db" sits where a host goes,
 * and silently reading it as a path would make sqlite://a/b.db mean
 * "a/b.db" to us and something else to every other URI parser.
 * In-memory databases are refused: every connection of a store would see
 * its own, empty database.
 *
 * Backend options: synchronous=full|normal|off, busy_timeout=ms,
 * journal_mode=wal|delete (see sqlite_options below).
 *
 * HA (ABI 2.0 lock, see "Exclusive lock" in sqlite_lock.c) works between
 * processes of one host: the lease clock is the host's boot clock. A
 * master's write transactions are fenced by a read of the lock row under
 * the file's write lock (lock_fence); only lock_renew, in its own
 * transaction, writes it.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sqlite_int.h"

/* Generated from schema/sqlite/ by EmbedSchema.cmake (in the build dir):
 * mqs_schema_sqlite[] and MQS_SCHEMA_SQLITE_COUNT. */
#include "schema_sqlite.h"

#define SQLITE_MODULE_VERSION MQS_VERSION_STRING


/* ---------------------------------------------------------------------------
 * Options
 * ------------------------------------------------------------------------- */
static const mqs_be_option sqlite_options[] = {
    {"synchronous", "full",
     "full|normal|off: full syncs the WAL on every commit (an acknowledged "
     "write survives power loss); normal may lose the last commits on power "
     "loss (never corrupts); off leaves syncing to the OS"},
    {"busy_timeout", "5000",
     "milliseconds to wait for a lock held by another connection or process "
     "before failing with MQS_EBUSY (0..2147483647)"},
    {"journal_mode", "wal",
     "wal|delete: wal lets readers (recovery cursors) run beside the writer; "
     "delete uses a rollback journal (for file systems without shared "
     "memory, e.g. NFS)"},
    {"create", "yes",
     "yes|no: yes creates a missing database file (mode 0600: it holds "
     "messages); no fails with MQS_ENOTFOUND instead (the mqstore CLI's "
     "inspecting commands use it, so a typo never leaves a new file)"},
};

struct sqlite_cfg {
    const char *synchronous; /* pragma value */
    int busy_ms;
    int wal;
    int create;
};

/* ---------------------------------------------------------------------------
 * URI: the core parsed and percent-decoded it (args->parts) and kept only
 * the options declared above; what is left here is what only this backend
 * knows: which authorities and paths name a database file, and the values
 * of its options.
 * ------------------------------------------------------------------------- */
static int sqlite_bad_value(char *err, size_t errlen, const char *masked,
                            const char *name, const char *val,
                            const char *allowed)
{
    snprintf(err, errlen,
             "sqlite: option %s=%s in %s is not valid: allowed values are %s",
             name, val, masked, allowed);
    return MQS_EINVAL;
}

/* Apply one decoded option to cfg. */
static int sqlite_set_option(struct sqlite_cfg *cfg, const char *masked,
                             const char *key, const char *val, char *err,
                             size_t errlen)
{
    if (!strcmp(key, "synchronous")) {
        static const char *const vals[] = {"full", "normal", "off"};
        static const char *const pragma[] = {"FULL", "NORMAL", "OFF"};
        for (size_t i = 0; i < 3; i++)
            if (!strcasecmp(val, vals[i])) {
                cfg->synchronous = pragma[i];
                return 0;
            }
        return sqlite_bad_value(err, errlen, masked, key, val,
                                "full, normal, off");
    }
    if (!strcmp(key, "busy_timeout")) {
        char *end;
        errno = 0;
        long v = strtol(val, &end, 10);
        if (!*val || *end || errno || v < 0 || v > INT_MAX || *val == '+' ||
            *val == ' ')
            return sqlite_bad_value(err, errlen, masked, key, val,
                                    "a whole number of milliseconds from 0 "
                                    "to 2147483647");
        cfg->busy_ms = (int)v;
        return 0;
    }
    if (!strcmp(key, "create")) {
        if (!strcasecmp(val, "yes"))
            cfg->create = 1;
        else if (!strcasecmp(val, "no"))
            cfg->create = 0;
        else
            return sqlite_bad_value(err, errlen, masked, key, val, "yes, no");
        return 0;
    }
    if (!strcmp(key, "journal_mode")) {
        if (!strcasecmp(val, "wal"))
            cfg->wal = 1;
        else if (!strcasecmp(val, "delete"))
            cfg->wal = 0;
        else
            return sqlite_bad_value(err, errlen, masked, key, val,
                                    "wal, delete");
        return 0;
    }
    snprintf(err, errlen,
             "sqlite: unknown option '%s' in %s: the sqlite backend's options "
             "are synchronous, busy_timeout, journal_mode, create",
             key, masked);
    return MQS_EINVAL;
}

/* Whether the authority names the local machine: empty or "localhost",
 * without userinfo or port (the file is local). Otherwise buf gets the
 * authority as written, the password as *** (for the message). */
static int sqlite_local_authority(const mqs_be_uri *u, char *buf, size_t len)
{
    if (!u->user && (u->nhosts == 0 ||
                     (u->nhosts == 1 && !u->hosts[0].port &&
                      !strcasecmp(u->hosts[0].host, "localhost"))))
        return 1;
    size_t o = 0;
    buf[0] = '\0';
    if (u->user)
        o += (size_t)snprintf(buf, len, "%s%s@", u->user,
                              u->password ? ":***" : "");
    for (size_t i = 0; i < u->nhosts && o < len; i++) {
        const mqs_be_host *h = &u->hosts[i];
        int v6 = strchr(h->host, ':') != NULL;
        o += (size_t)snprintf(buf + o, len - o, "%s%s%s%s%s%s",
                              i ? "," : "", v6 ? "[" : "", h->host,
                              v6 ? "]" : "", h->port ? ":" : "",
                              h->port ? h->port : "");
    }
    return 0;
}

/* The file path and options of the URI's parts. On failure the message
 * goes to err and *path is NULL. */
static int sqlite_parse_uri(const mqs_be_uri *u, const char *masked,
                            struct sqlite_cfg *cfg, char **path, char *err,
                            size_t errlen)
{
    *path = NULL;
    cfg->synchronous = "FULL";
    cfg->busy_ms = 5000;
    cfg->wal = 1;
    cfg->create = 1;
    if (!u) {
        snprintf(err, errlen, "sqlite: URI %s was not taken apart by the "
                 "core (a core older than the module)", masked);
        return MQS_EINVAL;
    }
    char auth[256];
    if (u->has_authority && !sqlite_local_authority(u, auth, sizeof auth)) {
        snprintf(err, errlen,
                 "sqlite: URI %s names a host ('%.64s'); an SQLite path "
                 "has none: use sqlite:relative/path.db for a relative "
                 "path or sqlite:///abs/path.db for an absolute one",
                 masked, auth);
        return MQS_EINVAL;
    }
    /* With an authority the path is absolute (it starts with '/') or
     * empty; without one it is taken as written, relative or absolute. */
    const char *p = u->path ? u->path : "";
    if (!*p) {
        snprintf(err, errlen,
                 "sqlite: URI %s has no file path: expected "
                 "sqlite:///abs/path.db or sqlite:relative/path.db",
                 masked);
        return MQS_EINVAL;
    }
    if (!strcmp(p, ":memory:") || p[strlen(p) - 1] == '/') {
        snprintf(err, errlen,
                 "sqlite: URI %s: '%s' is not a database file path%s", masked,
                 p,
                 p[0] == ':' ? " (in-memory databases are not supported: "
                               "each connection would see its own; use a "
                               "file, e.g. under /dev/shm)"
                             : " (it names a directory: add a file name)");
        return MQS_EINVAL;
    }

    int seen[4] = {0, 0, 0, 0};
    for (size_t i = 0; i < u->nopts; i++) {
        const char *key = u->opts[i].key, *val = u->opts[i].value;
        int rc;
        if (!val || !*val) {
            snprintf(err, errlen, "sqlite: option '%s' in %s has no value",
                     key, masked);
            return MQS_EINVAL;
        }
        rc = sqlite_set_option(cfg, masked, key, val, err, errlen);
        int k = !strcmp(key, "synchronous")    ? 0
                : !strcmp(key, "busy_timeout") ? 1
                : !strcmp(key, "create")       ? 3
                                               : 2;
        if (rc == 0 && seen[k]++) {
            snprintf(err, errlen, "sqlite: option '%s' given twice in %s",
                     key, masked);
            rc = MQS_EINVAL;
        }
        if (rc)
            return rc;
    }
    if (!(*path = strdup(p))) {
        snprintf(err, errlen, "sqlite: out of memory parsing %s", masked);
        return MQS_ENOMEM;
    }
    return 0;
}

/* ---------------------------------------------------------------------------
 * Connection
 * ------------------------------------------------------------------------- */

/* Look at the path before SQLite opens it. stat() only: opening and
 * closing a descriptor of the database file would drop every POSIX lock
 * this process holds on it (the other connections' shared locks), and
 * another process closing the database would then think itself the last
 * user and delete the WAL under our feet. A missing file is fine (SQLite
 * creates it). */
static int sqlite_check_file(const char *path, char *err, size_t errlen)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        if (errno == ENOENT)
            return 0; /* new file, or a missing directory SQLite reports */
        snprintf(err, errlen,
                 "sqlite: cannot open database file '%s': %s (check the path "
                 "and its permissions)",
                 path, strerror(errno));
        return MQS_EIO;
    }
    if (S_ISDIR(sb.st_mode)) {
        snprintf(err, errlen,
                 "sqlite: '%s' is a directory: name a database file inside "
                 "it, e.g. sqlite://%s%s/store.db",
                 path, path[0] == '/' ? "" : "/", path);
        return MQS_EIO;
    }
    if (!S_ISREG(sb.st_mode)) {
        snprintf(err, errlen,
                 "sqlite: '%s' is not a regular file: name a database file",
                 path);
        return MQS_EIO;
    }
    return 0;
}

/* A missing database file: with create, make it empty and 0600 (SQLite
 * would make it 0644, and its -wal and -shm files copy the database's
 * mode: they all hold messages). O_EXCL: of two processes starting on a
 * new store at once, one creates it and both open it. Without create, a
 * missing file is an error and nothing is made. */
static int sqlite_create_file(const char *path, int create, char *err,
                              size_t errlen)
{
    struct stat sb;
    if (stat(path, &sb) == 0)
        return 0;
    if (!create) {
        snprintf(err, errlen,
                 "sqlite: no database file '%s' (create=no: nothing was "
                 "created; check the path, or create the store with "
                 "'mqstore init URI')",
                 path);
        return MQS_ENOTFOUND;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                  0600);
    if (fd >= 0) {
        int ok = fchmod(fd, 0600) == 0; /* whatever the umask */
        close(fd);
        (void)ok;
    }
    /* EEXIST: created by a process starting beside us. Anything else
     * (a missing directory, no permission) is reported by SQLite's open
     * with its hints. */
    return 0;
}

/* Refuse a non-empty file without the SQLite header before anything (not
 * even SQLite's view of a file shorter than a page as empty) can write to
 * it. Read through SQLite's own file handle, for the reason given above. */
static int sqlite_check_header(mqs_be_conn *c, char *err, size_t errlen)
{
    sqlite3_file *f = NULL;
    sqlite3_int64 size = 0;
    if (sqlite3_file_control(c->db, "main", SQLITE_FCNTL_FILE_POINTER, &f) !=
            SQLITE_OK ||
        !f || !f->pMethods) {
        snprintf(err, errlen,
                 "sqlite: cannot check the header of '%s': SQLite did not "
                 "open the file",
                 c->path);
        return MQS_EIO;
    }
    int rc = f->pMethods->xFileSize(f, &size);
    if (rc != SQLITE_OK || size == 0) {
        if (rc != SQLITE_OK)
            snprintf(err, errlen, "sqlite: cannot read the size of '%s' (%s)",
                     c->path, sq_code_name(rc));
        return rc != SQLITE_OK ? MQS_EIO : 0;
    }
    static const char magic[16] = "SQLite format 3";
    char head[16];
    rc = f->pMethods->xRead(f, head, (int)sizeof head, 0);
    if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) {
        snprintf(err, errlen, "sqlite: cannot read '%s' (%s)", c->path,
                 sq_code_name(rc));
        return MQS_EIO;
    }
    if (rc == SQLITE_IOERR_SHORT_READ || memcmp(head, magic, sizeof magic)) {
        snprintf(err, errlen,
                 "sqlite: %s is not an mqstore database: file is not a "
                 "database (no SQLite header); it was left untouched. Point "
                 "the URI at a new file or an mqstore database",
                 c->path);
        return MQS_ECORRUPT;
    }
    return 0;
}


/* Busy handler: retry every 1..4 ms until busy_timeout. SQLite's own backs
 * off to 100 ms sleeps, so with several writers (commit=each) a waiter
 * keeps missing the short windows between other commits and can starve
 * for seconds; short sleeps keep the wait close to the real queueing. */
static int sqlite_busy(void *ud, int count)
{
    mqs_be_conn *c = ud;
    int64_t now = sq_mono_ms();
    if (count == 0)
        c->busy_start = now;
    if (c->busy_until ? now >= c->busy_until
                      : now - c->busy_start >= c->busy_ms)
        return 0;
    struct timespec ts = {0, (count < 8 ? 1 : 4) * 1000000L};
    nanosleep(&ts, NULL);
    return 1;
}

static void sqlite_conn_close(mqs_be_conn *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(c->st[i]);
    /* All statements are finalized, so this cannot be deferred; SQLite
     * checkpoints the WAL and removes it when the last connection closes. */
    sqlite3_close(c->db);
    /* Closing the file description drops its session lock, if any. */
    if (c->lock_fd >= 0)
        close(c->lock_fd);
    free(c->lock_path);
    free(c->sess_cluster);
    free(c->fence_cluster);
    free(c->fence_node);
    free(c->path);
    free(c);
}

static int sqlite_conn_open(const mqs_be_open_args *args, mqs_be_conn **out,
                            char *err, size_t errlen)
{
    *out = NULL;
    if (errlen)
        err[0] = '\0';
    const char *masked = args->uri_masked ? args->uri_masked : "(uri)";
    struct sqlite_cfg cfg;
    char *path = NULL;
    int rc = sqlite_parse_uri(args->parts, masked, &cfg, &path, err,
                              errlen);
    if (rc)
        return rc;
    rc = sqlite_check_file(path, err, errlen);
    if (rc == 0)
        rc = sqlite_create_file(path, cfg.create, err, errlen);
    if (rc) {
        free(path);
        return rc;
    }

    mqs_be_conn *c = calloc(1, sizeof *c);
    if (!c) {
        free(path);
        snprintf(err, errlen, "sqlite: out of memory opening %s", masked);
        return MQS_ENOMEM;
    }
    c->path = path;
    c->lock_fd = -1;
    c->busy_ms = cfg.busy_ms;
    snprintf(c->role, sizeof c->role, "%s", args->role ? args->role : "?");

    /* NOMUTEX: the core uses a connection from one thread at a time. */
    int src = sqlite3_open_v2(path, &c->db,
                              SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                                  SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
                              NULL);
    if (src != SQLITE_OK) {
        int sys = c->db ? sqlite3_system_errno(c->db) : 0;
        snprintf(err, errlen,
                 "sqlite: cannot open database file '%s' (%s connection): "
                 "%s (%s)%s%s",
                 path, c->role, c->db ? sqlite3_errmsg(c->db) : "out of memory",
                 sys ? strerror(sys) : sq_code_name(src),
                 sys == ENOENT ? "; does its directory exist?" : "",
                 sys == EACCES || sys == EPERM || sys == EROFS
                     ? "; mqstore needs write access to the file and its "
                       "directory"
                     : "");
        rc = (src & 0xff) == SQLITE_NOMEM ? MQS_ENOMEM : MQS_EIO;
        goto fail;
    }
    /* Until we know the file is ours, closing must not checkpoint a WAL
     * into it: a foreign database is left byte for byte as found. */
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
    sqlite3_busy_handler(c->db, sqlite_busy, c);
    if (sqlite3_db_readonly(c->db, "main") == 1) {
        snprintf(err, errlen,
                 "sqlite: database file '%s' could only be opened read-only; "
                 "mqstore needs write access to the file and its directory "
                 "(check permissions and mount options)",
                 path);
        rc = MQS_EIO;
        goto fail;
    }

    /* Every check before any write: journal_mode=WAL rewrites the header. */
    if ((rc = sqlite_check_header(c, err, errlen)))
        goto fail;
    int version;
    rc = sq_probe(c, &version);
    if (rc) {
        snprintf(err, errlen, "%s", c->err);
        goto fail;
    }

    sqlite3_stmt *st = NULL;
    const char *mode_sql =
        cfg.wal ? "PRAGMA journal_mode=WAL" : "PRAGMA journal_mode=DELETE";
    src = sqlite3_prepare_v2(c->db, mode_sql, -1, &st, NULL);
    if (src == SQLITE_OK)
        src = sqlite3_step(st);
    /* Two processes opening a new store at once both switch it to WAL:
     * SQLite answers BUSY at once rather than wait (waiting while holding
     * its read lock could deadlock), so retry, with the lock dropped,
     * for up to busy_timeout. */
    int64_t until = sq_mono_ms() + cfg.busy_ms;
    while (((src & 0xff) == SQLITE_BUSY || (src & 0xff) == SQLITE_LOCKED) &&
           sq_mono_ms() < until) {
        sqlite3_reset(st);
        struct timespec pause = {0, 5 * 1000000L};
        nanosleep(&pause, NULL);
        src = sqlite3_step(st);
    }
    if (src != SQLITE_ROW) {
        rc = sq_fail(c, src, cfg.wal ? "setting journal_mode=wal"
                                     : "setting journal_mode=delete");
        sqlite3_finalize(st);
        snprintf(err, errlen, "%s", c->err);
        goto fail;
    }
    const char *got = (const char *)sqlite3_column_text(st, 0);
    const char *want = cfg.wal ? "wal" : "delete";
    if (!got || strcasecmp(got, want) != 0) {
        snprintf(err, errlen,
                 "sqlite: cannot set journal_mode=%s on %s: SQLite kept "
                 "journal_mode=%s%s",
                 want, path, got ? got : "?",
                 cfg.wal ? " (the file system may lack shared-memory "
                           "support; use journal_mode=delete)"
                         : " (leaving WAL needs every other connection to "
                           "the database closed)");
        sqlite3_finalize(st);
        rc = MQS_EIO;
        goto fail;
    }
    sqlite3_finalize(st);

    char sync_sql[40];
    snprintf(sync_sql, sizeof sync_sql, "PRAGMA synchronous=%s",
             cfg.synchronous);
    src = sqlite3_exec(c->db, sync_sql, NULL, NULL, NULL);
    if (src != SQLITE_OK) {
        rc = sq_fail(c, src, "setting synchronous");
        snprintf(err, errlen, "%s", c->err);
        goto fail;
    }
    sqlite3_db_config(c->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, NULL);
    *out = c;
    return 0;

fail:
    sqlite_conn_close(c);
    return rc;
}

static const char *sqlite_conn_errmsg(mqs_be_conn *c)
{
    return c ? c->err : "";
}

static int sqlite_conn_max_message(mqs_be_conn *c, size_t *max)
{
    int lim = sqlite3_limit(c->db, SQLITE_LIMIT_LENGTH, -1);
    *max = lim > SQLITE_ROW_MARGIN ? (size_t)(lim - SQLITE_ROW_MARGIN) : 0;
    return 0;
}

/* ---------------------------------------------------------------------------
 * The table
 * ------------------------------------------------------------------------- */
static const char *const sqlite_schemes[] = {"sqlite", NULL};

static const mqs_backend sqlite_backend = {
    .magic = MQS_BACKEND_MAGIC,
    .abi_major = MQS_BACKEND_ABI_MAJOR,
    .abi_minor = MQS_BACKEND_ABI_MINOR,
    .struct_size = sizeof(mqs_backend),
    .name = "sqlite",
    .version = SQLITE_MODULE_VERSION,
    .schemes = sqlite_schemes,
    .migrations = mqs_schema_sqlite,
    .n_migrations = MQS_SCHEMA_SQLITE_COUNT,
    .options = sqlite_options,
    .n_options = sizeof sqlite_options / sizeof sqlite_options[0],
    .conn_open = sqlite_conn_open,
    .conn_close = sqlite_conn_close,
    .conn_errmsg = sqlite_conn_errmsg,
    .conn_max_message = sqlite_conn_max_message,
    .schema_version = sq_schema_version,
    .schema_apply = sq_schema_apply,
    .txn_begin = sq_txn_begin,
    .txn_commit = sq_txn_commit,
    .txn_rollback = sq_txn_rollback,
    .dest_resolve = sq_dest_resolve,
    .msg_insert = sq_msg_insert,
    .msg_ack = sq_msg_ack,
    .msg_nack = sq_msg_nack,
    .sub_create = sq_sub_create,
    .sub_remove = sq_sub_remove,
    .purge = sq_purge,
    .sub_lookup = sq_sub_lookup,
    .page_read = sq_page_read,
    .dest_list = sq_dest_list,
    .dest_names = sq_dest_names,
    .lock_acquire = sq_lock_acquire,
    .lock_renew = sq_lock_renew,
    .lock_release = sq_lock_release,
    .lock_read = sq_lock_read,
    .lock_force = sq_lock_force,
    .lock_fence = sq_lock_fence,
    .session_lock = sq_session_lock,
    .session_unlock = sq_session_unlock,
    .mark_put = sq_mark_put,
    .mark_list = sq_mark_list,
    .mark_prune = sq_mark_prune,
    .msg_recent = sq_msg_recent,
};

MQS_BACKEND_EXPORT const mqs_backend *
mqs_backend_entry(void)
{
    return &sqlite_backend;
}
