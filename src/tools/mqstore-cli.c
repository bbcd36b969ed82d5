/*
 * mqstore - administration CLI for mqstore stores.
 *
 *   mqstore init URI | migrate URI | status URI | stats URI [--json]
 *   mqstore purge URI (--queue NAME | --topic NAME | --all) [--yes]
 *   mqstore vacuum URI
 *   mqstore options [SCHEME] [--markdown]
 *   mqstore lock-status URI [--json] | lock-release URI --force
 *
 * Exit codes: 0 ok, 1 failure (message on stderr), 2 usage error.
 * URIs are only ever printed through mqs_uri_mask().
 */
#include <mqstore/mqstore.h>

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#ifndef MQS_CLI_VERSION
#define MQS_CLI_VERSION "unknown"
#endif

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

/* Parsed command line of one subcommand: positionals and --flags. */
#define MAX_ARGS 8
typedef struct cmdline {
    const char *cmd;
    const char *pos[MAX_ARGS];
    int npos;
    bool help, json, markdown, yes, all, force;
    const char *queue, *topic;
} cmdline;

typedef struct command {
    const char *name;
    const char *args;    /* usage line after the name */
    const char *summary; /* one line for the command list */
    const char *help;    /* details for `help CMD` */
    int (*run)(cmdline *cl);
} command;

/* ------------------------------------------------------------------------
 * Output helpers
 * ---------------------------------------------------------------------- */

static void usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "mqstore: %s%s", cmd ? cmd : "", cmd ? ": " : "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'mqstore %s%s--help'.\n", cmd ? cmd : "",
            cmd ? " " : "");
}

/* Reports a library failure; the detailed message is preferred because it
 * says what failed and how to fix it, the code's text is the fallback. */
static int fail(const char *cmd, const mqs_store *s, int rc)
{
    const char *msg = mqs_errmsg(s);
    if (!msg || !*msg)
        msg = mqs_strerror(rc);
    fprintf(stderr, "mqstore: %s: %s\n", cmd, msg);
    return EXIT_FAIL;
}

static int failf(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "mqstore: %s: ", cmd);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return EXIT_FAIL;
}

/* Names come from clients: a control byte must not reach the terminal
 * (the table shows '?'; --json escapes them exactly). buf may be s. */
static const char *printable(const char *s, char *buf, size_t n)
{
    size_t i = 0;
    for (; s[i] && i + 1 < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
    }
    buf[i] = '\0';
    return buf;
}

static void json_str(FILE *f, const char *s)
{
    if (!s) {
        fputs("null", f);
        return;
    }
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
    }
    fputc('"', f);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Compact age for a table cell: "850ms", "42s", "3m12s", "5h07m", "2d03h". */
static void fmt_age(char *buf, size_t n, int64_t ms)
{
    if (ms < 0)
        ms = 0; /* clock skew between the store's clock and ours */
    int64_t s = ms / 1000;
    if (ms < 1000)
        snprintf(buf, n, "%" PRId64 "ms", ms);
    else if (s < 60)
        snprintf(buf, n, "%" PRId64 "s", s);
    else if (s < 3600)
        snprintf(buf, n, "%" PRId64 "m%02" PRId64 "s", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, n, "%" PRId64 "h%02" PRId64 "m", s / 3600, s % 3600 / 60);
    else
        snprintf(buf, n, "%" PRId64 "d%02" PRId64 "h", s / 86400,
                 s % 86400 / 3600);
}

/* ------------------------------------------------------------------------
 * Opening: tools never migrate implicitly, so a read-only command cannot
 * change a schema behind an operator's back.
 * ---------------------------------------------------------------------- */

static const char *scheme_of(const char *uri, char *buf, size_t n)
{
    size_t len = strcspn(uri, ":");
    if (uri[len] != ':' || len == 0 || len >= n)
        return "?";
    memcpy(buf, uri, len);
    buf[len] = '\0';
    return buf;
}

/* Only init and migrate may bring a store into being. The others inspect
 * or change an existing one: on SQLite they open with create=no, so a
 * mistyped path is an error, not a new empty database file. Returns the
 * mqs_open_nomigrate() code. */
static int open_uri(const char *cmd, const char *uri, mqs_store **s)
{
    char buf[16];
    const char *scheme = scheme_of(uri, buf, sizeof buf);
    char *with = NULL;
    if (strcmp(cmd, "init") && strcmp(cmd, "migrate") &&
        !strcasecmp(scheme, "sqlite")) {
        size_t n = strlen(uri) + sizeof "&create=no";
        with = malloc(n);
        if (!with)
            return MQS_ENOMEM;
        snprintf(with, n, "%s%screate=no", uri, strchr(uri, '?') ? "&" : "?");
    }
    int rc = mqs_open_nomigrate(with ? with : uri, NULL, s);
    free(with);
    return rc;
}

static int open_store(const char *cmd, const char *uri, mqs_store **s)
{
    int rc = open_uri(cmd, uri, s);
    if (rc != 0)
        return fail(cmd, NULL, rc);
    return EXIT_OK;
}

/* For commands that read or write messages: the schema must be exactly the
 * library's, and the message says which command fixes it. */
static int require_current_schema(const char *cmd, mqs_store *s)
{
    int db = 0, lib = 0;
    int rc = mqs_schema_version(s, &db, &lib);
    if (rc != 0)
        return fail(cmd, s, rc);
    if (db == 0)
        return failf(cmd, "database is not initialized (run 'mqstore init URI')");
    if (db < lib)
        return failf(cmd,
                     "schema version %d is older than this library's (%d) "
                     "(run 'mqstore migrate URI')",
                     db, lib);
    if (db > lib)
        return failf(cmd,
                     "schema version %d is newer than this library's (%d) "
                     "(upgrade mqstore)",
                     db, lib);
    return EXIT_OK;
}

/* ------------------------------------------------------------------------
 * init / migrate
 * ---------------------------------------------------------------------- */

static void print_progress(void *ud, int from, int to, const char *name)
{
    (void)ud;
    size_t len = name ? strlen(name) : 0;
    bool has_ext = len >= 4 && strcmp(name + len - 4, ".sql") == 0;
    printf("applying %s%s (%d -> %d)\n", name ? name : "migration",
           has_ext ? "" : ".sql", from, to);
    fflush(stdout); /* a long migration should show where it is */
}

static int cmd_init(cmdline *cl)
{
    mqs_store *s = NULL;
    int db = 0, lib = 0, rc, ret = EXIT_OK;

    if ((ret = open_store(cl->cmd, cl->pos[0], &s)) != EXIT_OK)
        return ret;
    if ((rc = mqs_schema_version(s, &db, &lib)) != 0) {
        ret = fail(cl->cmd, s, rc);
    } else if (db == lib) {
        printf("already initialized: schema version %d (up to date)\n", db);
    } else if (db > lib) {
        ret = failf(cl->cmd,
                    "database has schema version %d, newer than this "
                    "library's (%d): upgrade mqstore",
                    db, lib);
    } else if (db > 0) {
        /* init only creates; upgrading is an explicit, separate step */
        ret = failf(cl->cmd,
                    "database is already initialized at schema version %d "
                    "(library %d): run 'mqstore migrate URI'",
                    db, lib);
    } else if ((rc = mqs_migrate(s, print_progress, NULL)) != 0) {
        ret = fail(cl->cmd, s, rc);
    } else if ((rc = mqs_schema_version(s, &db, &lib)) != 0) {
        ret = fail(cl->cmd, s, rc);
    } else {
        printf("initialized: schema version %d\n", db);
    }
    mqs_close(s);
    return ret;
}

static int cmd_migrate(cmdline *cl)
{
    mqs_store *s = NULL;
    int db = 0, lib = 0, after = 0, rc, ret = EXIT_OK;

    if ((ret = open_store(cl->cmd, cl->pos[0], &s)) != EXIT_OK)
        return ret;
    if ((rc = mqs_schema_version(s, &db, &lib)) != 0) {
        ret = fail(cl->cmd, s, rc);
    } else if (db > lib) {
        ret = failf(cl->cmd,
                    "database has schema version %d, newer than this "
                    "library's (%d): upgrade mqstore",
                    db, lib);
    } else if (db == lib) {
        printf("schema version %d: up to date, nothing to apply\n", db);
    } else if ((rc = mqs_migrate(s, print_progress, NULL)) != 0) {
        ret = fail(cl->cmd, s, rc);
    } else if ((rc = mqs_schema_version(s, &after, &lib)) != 0) {
        ret = fail(cl->cmd, s, rc);
    } else {
        printf("migrated: schema version %d -> %d\n", db, after);
    }
    mqs_close(s);
    return ret;
}

/* ------------------------------------------------------------------------
 * status
 * ---------------------------------------------------------------------- */

static int cmd_status(cmdline *cl)
{
    mqs_store *s = NULL;
    int db = 0, lib = 0, rc, ret;
    char scheme[64];

    rc = open_uri(cl->cmd, cl->pos[0], &s);
    if (rc == MQS_ESCHEMA) {
        /* The core refuses to open a schema it does not know, even without
         * migrating: say what can be said, then why. */
        char uri[1024];
        mqs_uri_mask(cl->pos[0], uri, sizeof uri);
        printf("uri:               %s\n", uri);
        printf("backend:           %s\n", scheme_of(cl->pos[0], scheme, sizeof scheme));
        printf("state:             schema not supported by this library "
               "(see below)\n");
        fflush(stdout);
        return fail(cl->cmd, NULL, rc);
    }
    if (rc != 0)
        return fail(cl->cmd, NULL, rc);
    if ((rc = mqs_schema_version(s, &db, &lib)) != 0) {
        ret = fail(cl->cmd, s, rc);
        mqs_close(s);
        return ret;
    }
    size_t max = mqs_max_message_size(s);
    const char *state = db == 0    ? "not initialized (run 'mqstore init')"
                        : db < lib ? "needs migrate (run 'mqstore migrate')"
                        : db > lib ? "newer than this library (upgrade mqstore)"
                                   : "up to date";
    printf("uri:               %s\n", mqs_uri(s));
    printf("backend:           %s\n", scheme_of(cl->pos[0], scheme, sizeof scheme));
    printf("schema version:    %d (database), %d (library)\n", db, lib);
    printf("max message size:  %zu bytes (%.1f MiB)\n", max,
           (double)max / (1024.0 * 1024.0));
    printf("state:             %s\n", state);
    mqs_close(s);
    return EXIT_OK;
}

/* ------------------------------------------------------------------------
 * stats
 * ---------------------------------------------------------------------- */

typedef struct dest_row {
    mqs_kind kind;
    char *dest;
    int64_t sub_id;
    char *sub_name;
    uint64_t pending;
    int64_t oldest_ms;
} dest_row;

typedef struct dest_rows {
    dest_row *v;
    size_t n, cap;
    bool oom;
} dest_rows;

/* Room in *pp (an array of elem-byte items with *cap of them) for one more
 * after n: doubled from 32. False when out of memory (the array is kept). */
static bool room_for_one(void *pp, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap)
        return true;
    size_t want = *cap ? *cap * 2 : 32;
    void *old;
    memcpy(&old, pp, sizeof old);
    void *v = realloc(old, want * elem);
    if (!v)
        return false;
    memcpy(pp, &v, sizeof v);
    *cap = want;
    return true;
}

/* Rows are copied because the strings are only borrowed for the callback,
 * and the table needs every row before it knows its column widths. */
static int collect_dest(void *ud, const mqs_dest_info *d)
{
    dest_rows *r = ud;
    if (!room_for_one(&r->v, &r->cap, r->n, sizeof *r->v)) {
        r->oom = true;
        return 1;
    }
    dest_row *row = &r->v[r->n];
    row->kind = d->kind;
    row->dest = strdup(d->dest ? d->dest : "");
    row->sub_id = d->sub_id;
    row->sub_name = d->sub_name ? strdup(d->sub_name) : NULL;
    row->pending = d->pending;
    row->oldest_ms = d->oldest_ms;
    if (!row->dest || (d->sub_name && !row->sub_name)) {
        free(row->dest);
        free(row->sub_name);
        r->oom = true;
        return 1;
    }
    r->n++;
    return 0;
}

static void free_rows(dest_rows *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free(r->v[i].dest);
        free(r->v[i].sub_name);
    }
    free(r->v);
}

static void stats_json(const char *uri, int version, const dest_rows *r,
                       int64_t now)
{
    uint64_t total = 0;
    printf("{\n  \"uri\": ");
    json_str(stdout, uri);
    printf(",\n  \"schema_version\": %d,\n  \"now_ms\": %" PRId64
           ",\n  \"destinations\": [",
           version, now);
    for (size_t i = 0; i < r->n; i++) {
        const dest_row *d = &r->v[i];
        total += d->pending;
        printf("%s\n    {\"kind\": \"%s\", \"dest\": ", i ? "," : "",
               d->kind == MQS_TOPIC ? "topic" : "queue");
        json_str(stdout, d->dest);
        printf(", \"sub_id\": %" PRId64 ", \"sub_name\": ", d->sub_id);
        json_str(stdout, d->sub_name);
        printf(", \"pending\": %" PRIu64 ", \"oldest_ms\": %" PRId64
               ", \"oldest_age_ms\": ",
               d->pending, d->oldest_ms);
        if (d->oldest_ms > 0)
            printf("%" PRId64 "}", now > d->oldest_ms ? now - d->oldest_ms : 0);
        else
            printf("null}");
    }
    printf("%s],\n  \"total_pending\": %" PRIu64 "\n}\n", r->n ? "\n  " : "",
           total);
}

static void stats_table(const char *uri, const dest_rows *r, int64_t now)
{
    int wd = (int)strlen("DESTINATION"), ws = (int)strlen("SUBSCRIPTION");
    uint64_t total = 0;
    char sub[320];

    for (size_t i = 0; i < r->n; i++) {
        int l = (int)strlen(r->v[i].dest);
        if (l > wd)
            wd = l;
        if (r->v[i].sub_name) {
            l = snprintf(sub, sizeof sub, "%s (#%" PRId64 ")",
                         r->v[i].sub_name, r->v[i].sub_id);
            if (l > ws)
                ws = l;
        }
    }
    printf("store: %s\n", uri);
    if (r->n == 0) {
        printf("no destinations\n");
        return;
    }
    printf("%-5s  %-*s  %-*s  %12s  %8s\n", "KIND", wd, "DESTINATION", ws,
           "SUBSCRIPTION", "PENDING", "OLDEST");
    for (size_t i = 0; i < r->n; i++) {
        const dest_row *d = &r->v[i];
        char age[32] = "-";
        if (d->sub_name)
            snprintf(sub, sizeof sub, "%s (#%" PRId64 ")", d->sub_name,
                     d->sub_id);
        else
            snprintf(sub, sizeof sub, "-");
        if (d->pending > 0 && d->oldest_ms > 0)
            fmt_age(age, sizeof age, now - d->oldest_ms);
        char dn[600];
        printf("%-5s  %-*s  %-*s  %12" PRIu64 "  %8s\n",
               d->kind == MQS_TOPIC ? "topic" : "queue", wd,
               printable(d->dest, dn, sizeof dn), ws,
               printable(sub, sub, sizeof sub), d->pending, age);
        total += d->pending;
    }
    printf("%-5s  %-*s  %-*s  %12" PRIu64 "\n", "", wd, "total", ws, "", total);
}

static int cmd_stats(cmdline *cl)
{
    mqs_store *s = NULL;
    dest_rows rows = {0};
    int db = 0, lib = 0, rc, ret;

    if ((ret = open_store(cl->cmd, cl->pos[0], &s)) != EXIT_OK)
        return ret;
    if ((ret = require_current_schema(cl->cmd, s)) != EXIT_OK)
        goto out;
    if ((rc = mqs_dest_foreach(s, collect_dest, &rows)) != 0) {
        ret = fail(cl->cmd, s, rc);
        goto out;
    }
    if (rows.oom) {
        ret = failf(cl->cmd, "%s", mqs_strerror(MQS_ENOMEM));
        goto out;
    }
    /* Sampled after the read, so a fresh message never shows a negative age */
    int64_t now = now_ms();
    (void)mqs_schema_version(s, &db, &lib);
    if (cl->json)
        stats_json(mqs_uri(s), db, &rows, now);
    else
        stats_table(mqs_uri(s), &rows, now);
out:
    free_rows(&rows);
    mqs_close(s);
    return ret;
}

/* ------------------------------------------------------------------------
 * purge
 * ---------------------------------------------------------------------- */

/* Past this many removed rows, purge vacuums (see mqs_vacuum). */
#define PURGE_VACUUM_ROWS 10000

static int cmd_purge(cmdline *cl)
{
    int selectors = (cl->queue != NULL) + (cl->topic != NULL) + cl->all;
    if (selectors != 1) {
        usage_error(cl->cmd, "give exactly one of --queue NAME, --topic NAME, --all");
        return EXIT_USAGE;
    }
    if (cl->all && !cl->yes) {
        usage_error(cl->cmd,
                    "--all removes every pending message of every destination; "
                    "add --yes to confirm");
        return EXIT_USAGE;
    }

    mqs_store *s = NULL;
    uint64_t removed = 0;
    int rc, ret;
    if ((ret = open_store(cl->cmd, cl->pos[0], &s)) != EXIT_OK)
        return ret;
    if ((ret = require_current_schema(cl->cmd, s)) != EXIT_OK)
        goto out;

    mqs_kind kind = cl->topic ? MQS_TOPIC : MQS_QUEUE;
    const char *dest = cl->queue ? cl->queue : cl->topic; /* NULL: --all */
    if ((rc = mqs_purge(s, kind, dest, &removed)) != 0) {
        ret = fail(cl->cmd, s, rc);
        goto out;
    }
    if (dest)
        printf("purged %" PRIu64 " message%s from %s %s\n", removed,
               removed == 1 ? "" : "s", cl->topic ? "topic" : "queue", dest);
    else
        printf("purged %" PRIu64 " message%s from every destination\n",
               removed, removed == 1 ? "" : "s");
    /* Deleted rows slow the next scan of a destination's start until the
     * database reclaims them (PostgreSQL: VACUUM): do it now after a big
     * purge, rather than on the next takeover's clock. */
    if (removed >= PURGE_VACUUM_ROWS) {
        char what[256];
        fprintf(stderr, "vacuuming after %" PRIu64 " removed rows...\n",
                removed);
        if ((rc = mqs_vacuum(s, what, sizeof what)) != 0)
            fprintf(stderr, "mqstore purge: the purge is done, but the "
                    "vacuum after it failed: %s: %s (run 'mqstore vacuum' "
                    "later)\n", mqs_errname(rc), mqs_errmsg(s));
        else
            printf("%s\n", what);
    }
out:
    mqs_close(s);
    return ret;
}

/* ------------------------------------------------------------------------
 * vacuum
 * ---------------------------------------------------------------------- */

static int cmd_vacuum(cmdline *cl)
{
    mqs_store *s = NULL;
    int rc, ret;
    if ((ret = open_store(cl->cmd, cl->pos[0], &s)) != EXIT_OK)
        return ret;
    char what[256];
    if ((rc = mqs_vacuum(s, what, sizeof what)) != 0)
        ret = fail(cl->cmd, s, rc);
    else
        printf("%s\n", what);
    mqs_close(s);
    return ret;
}

/* ------------------------------------------------------------------------
 * lock-status / lock-release: the HA lock of the URI's cluster
 * ---------------------------------------------------------------------- */

static int cmd_lock_status(cmdline *cl)
{
    mqs_store *s = NULL;
    mqs_lock_info li;
    int rc, ret;
    if ((ret = open_store(cl->cmd, cl->pos[0], &s)) != EXIT_OK)
        return ret;
    if ((ret = require_current_schema(cl->cmd, s)) != EXIT_OK)
        goto out;
    if ((rc = mqs_lock_status(s, &li)) != 0) {
        ret = fail(cl->cmd, s, rc);
        goto out;
    }
    bool held = li.holder[0] && li.lease_left_ms > 0;
    if (cl->json) {
        printf("{\"cluster\":");
        json_str(stdout, li.cluster);
        printf(",\"holder\":");
        json_str(stdout, li.holder[0] ? li.holder : NULL);
        printf(",\"token\":%" PRId64 ",\"lease_left_ms\":%" PRId64
               ",\"held_ms\":%" PRId64 ",\"held\":%s,\"crash_detect\":%s}\n",
               li.token, li.lease_left_ms, li.held_ms, held ? "true" : "false",
               li.crash_detect ? "true" : "false");
    } else {
        printf("cluster:        %s\n", li.cluster);
        if (!li.holder[0]) {
            printf("holder:         (free)\n");
        } else {
            char age[32];
            fmt_age(age, sizeof age, li.held_ms);
            printf("holder:         %s%s\n", li.holder,
                   held ? "" : " (lease expired: the next standby takes it)");
            printf("held for:       %s\n", age);
            printf("lease left:     %" PRId64 " ms\n", li.lease_left_ms);
            printf("crash detector: %s\n", li.crash_detect ? "armed" : "not armed");
        }
        printf("fencing token:  %" PRId64 "\n", li.token);
    }
out:
    mqs_close(s);
    return ret;
}

static int cmd_lock_release(cmdline *cl)
{
    if (!cl->force) {
        usage_error(cl->cmd,
                    "this frees the lock whoever holds it; a live master is "
                    "fenced on its next write and a standby takes over. Add "
                    "--force to do it");
        return EXIT_USAGE;
    }
    mqs_store *s = NULL;
    mqs_lock_info li;
    int rc, ret;
    if ((ret = open_store(cl->cmd, cl->pos[0], &s)) != EXIT_OK)
        return ret;
    if ((ret = require_current_schema(cl->cmd, s)) != EXIT_OK)
        goto out;
    if ((rc = mqs_lock_status(s, &li)) != 0) {
        ret = fail(cl->cmd, s, rc);
        goto out;
    }
    if (li.holder[0] && li.lease_left_ms > 0)
        fprintf(stderr,
                "mqstore: warning: node %s holds the lock of cluster '%s' "
                "with %" PRId64 " ms of lease left; if it is alive it will be "
                "fenced and step down\n",
                li.holder, li.cluster, li.lease_left_ms);
    if ((rc = mqs_lock_force_release(s)) != 0) {
        ret = fail(cl->cmd, s, rc);
        goto out;
    }
    printf("released the lock of cluster '%s' (was %s, token %" PRId64 ")\n",
           li.cluster, li.holder[0] ? li.holder : "free", li.token);
out:
    mqs_close(s);
    return ret;
}

/* ------------------------------------------------------------------------
 * options
 * ---------------------------------------------------------------------- */

typedef struct opt_list {
    mqs_option_info *v;
    size_t n, cap;
    bool oom;
} opt_list;

static void collect_option(void *ud, const mqs_option_info *o)
{
    opt_list *l = ud;
    if (l->oom)
        return;
    if (!room_for_one(&l->v, &l->cap, l->n, sizeof *l->v)) {
        l->oom = true;
        return;
    }
    l->v[l->n++] = *o; /* the strings are static */
}

static const char *nz(const char *s) { return s ? s : ""; }

/* A markdown table cell: '|' would end the cell early. */
static void md_cell(const char *s)
{
    for (; *s; s++) {
        if (*s == '|')
            fputs("\\|", stdout);
        else if (*s == '\n')
            fputc(' ', stdout);
        else
            fputc(*s, stdout);
    }
}

static int cmd_options(cmdline *cl)
{
    opt_list l = {0};
    char scheme[64];
    const char *sch = NULL;

    /* Accept a whole URI too, so `mqstore options "$URI"` works. */
    if (cl->npos > 0) {
        const char *arg = cl->pos[0];
        if (strchr(arg, ':'))
            sch = scheme_of(arg, scheme, sizeof scheme);
        else
            sch = arg;
    }
    int rc = mqs_option_foreach(sch, collect_option, &l);
    if (rc != 0) {
        free(l.v);
        return fail(cl->cmd, NULL, rc);
    }
    if (l.oom) {
        free(l.v);
        return failf(cl->cmd, "%s", mqs_strerror(MQS_ENOMEM));
    }

    if (cl->markdown) {
        printf("| option | default | scope | description |\n");
        printf("|---|---|---|---|\n");
        for (size_t i = 0; i < l.n; i++) {
            printf("| `");
            md_cell(nz(l.v[i].name));
            printf("` | `");
            md_cell(nz(l.v[i].default_value));
            printf("` | ");
            md_cell(nz(l.v[i].scope));
            printf(" | ");
            md_cell(nz(l.v[i].doc));
            printf(" |\n");
        }
    } else {
        int wn = 6, wd = 7, wsc = 5;
        for (size_t i = 0; i < l.n; i++) {
            int a = (int)strlen(nz(l.v[i].name)),
                b = (int)strlen(nz(l.v[i].default_value)),
                c = (int)strlen(nz(l.v[i].scope));
            wn = a > wn ? a : wn;
            wd = b > wd ? b : wd;
            wsc = c > wsc ? c : wsc;
        }
        printf("%-*s  %-*s  %-*s  %s\n", wn, "OPTION", wd, "DEFAULT", wsc,
               "SCOPE", "DESCRIPTION");
        for (size_t i = 0; i < l.n; i++)
            printf("%-*s  %-*s  %-*s  %s\n", wn, nz(l.v[i].name), wd,
                   nz(l.v[i].default_value), wsc, nz(l.v[i].scope),
                   nz(l.v[i].doc));
        if (!sch)
            printf("\nBackend options: mqstore options SCHEME (e.g. sqlite)\n");
    }
    free(l.v);
    return EXIT_OK;
}

/* ------------------------------------------------------------------------
 * Command table and argument parsing
 * ---------------------------------------------------------------------- */

#define URI_HELP                                                               \
    "URI names the store, e.g. sqlite:///var/lib/mq/store.db or\n"             \
    "postgresql://user:pw@host/db. If URI is omitted, $MQSTORE_URI is used\n"  \
    "(keeps a password out of the process list). Passwords are never\n"        \
    "printed.\n"

static const command commands[] = {
    {"init", "URI", "create the schema in an empty database",
     "Creates the schema in an empty database and prints its version.\n"
     "An already initialized database at the library's version is left as\n"
     "it is (exit 0); an older one is refused: use 'mqstore migrate'.\n" URI_HELP,
     cmd_init},
    {"migrate", "URI", "apply pending schema migrations",
     "Applies every pending migration in order, printing one line per\n"
     "migration: \"applying 002_x.sql (1 -> 2)\". A schema newer than this\n"
     "library is refused and left untouched.\n" URI_HELP,
     cmd_migrate},
    {"status", "URI", "show backend, schema version and state",
     "Prints the masked URI, the backend, the schema version of the database\n"
     "and of this library, the maximum message size, and whether the schema\n"
     "is up to date, needs migrate, or is newer than this library.\n"
     "Never changes the database.\n" URI_HELP,
     cmd_status},
    {"stats", "URI [--json]", "pending messages per queue and subscription",
     "Lists every queue and durable subscription with its pending count and\n"
     "the age of its oldest pending message.\n"
     "  --json   machine-readable output on stdout\n" URI_HELP,
     cmd_stats},
    {"purge", "URI (--queue NAME | --topic NAME | --all) [--yes]",
     "remove pending messages",
     "Removes every pending message of one queue, of one topic (all its\n"
     "subscriptions), or of the whole store. Subscriptions stay.\n"
     "  --queue NAME   purge one queue\n"
     "  --topic NAME   purge one topic\n"
     "  --all          purge every destination (requires --yes)\n"
     "  --yes          confirm --all\n" URI_HELP,
     cmd_purge},
    {"vacuum", "URI", "reclaim what consumed messages left behind",
     "PostgreSQL: VACUUM (ANALYZE) of the message tables. Until it runs,\n"
     "the first scan of a destination after many acks or a purge visits\n"
     "every deleted row (about 1.5 us each: 1.7 s at a million), e.g. the\n"
     "next takeover. Autovacuum does it too, later. 'purge' runs it by\n"
     "itself past 10,000 removed rows. MariaDB and SQLite need nothing\n"
     "(it says so and exits 0).\n" URI_HELP,
     cmd_vacuum},
    {"options", "[SCHEME] [--markdown]", "list every URI option and default",
     "Lists mqstore's URI options with their default and description, then,\n"
     "with SCHEME (e.g. sqlite, postgresql, or a whole URI), that backend's.\n"
     "  --markdown   a markdown table (for the README)\n",
     cmd_options},
    {"lock-status", "URI [--json]", "who holds the HA lock of the cluster",
     "Shows the HA lock of the URI's cluster (option cluster=, default\n"
     "'default'): holder node, fencing token, lease left by the database\n"
     "clock, how long it has been held, whether the crash detector is armed.\n"
     "  --json   machine-readable output\n" URI_HELP,
     cmd_lock_status},
    {"lock-release", "URI --force", "free the HA lock (operators only)",
     "Frees the HA lock of the URI's cluster whoever holds it. A live master\n"
     "is fenced on its next write (nothing it writes after that is kept) and\n"
     "steps down; a standby takes over. For a holder that is gone for good\n"
     "and whose lease you do not want to wait out.\n"
     "  --force  required\n" URI_HELP,
     cmd_lock_release},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static const command *find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static void print_usage(FILE *f)
{
    fprintf(f,
            "Usage: mqstore COMMAND [ARGS]\n"
            "       mqstore help COMMAND | --help | --version\n\n"
            "Administer an mqstore message store.\n\nCommands:\n");
    for (size_t i = 0; i < NCOMMANDS; i++) {
        const command *c = &commands[i];
        if (strlen(c->args) <= 26) /* long usage: summary on its own line */
            fprintf(f, "  %-12s %-26s %s\n", c->name, c->args, c->summary);
        else
            fprintf(f, "  %-12s %s\n  %-12s %-26s %s\n", c->name, c->args, "",
                    "", c->summary);
    }
    fprintf(f, "\nExit status: 0 ok, 1 failure, 2 usage error.\n"
               "URI options: mqstore options [SCHEME]\n");
}

static void print_command_help(const command *c)
{
    printf("Usage: mqstore %s %s\n\n%s", c->name, c->args, c->help);
}

/* Each flag is accepted only by the commands that use it, so a typo is a
 * usage error instead of being silently ignored. */
static int parse_args(const command *c, int argc, char **argv, cmdline *cl)
{
    bool want_name = strcmp(c->name, "purge") == 0;
    bool want_json = strcmp(c->name, "stats") == 0 ||
                     strcmp(c->name, "lock-status") == 0;
    bool want_force = strcmp(c->name, "lock-release") == 0;
    bool want_md = strcmp(c->name, "options") == 0;
    bool opts_done = false;

    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (opts_done || a[0] != '-' || a[1] == '\0') {
            if (cl->npos == MAX_ARGS) {
                usage_error(c->name, "too many arguments");
                return EXIT_USAGE;
            }
            cl->pos[cl->npos++] = a;
            continue;
        }
        const char *val = NULL;
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
#define IS(opt) (nlen == strlen(opt) && strncmp(a, opt, nlen) == 0)
        if (strcmp(a, "--") == 0) {
            opts_done = true;
        } else if (IS("--help") || IS("-h")) {
            cl->help = true;
        } else if (want_json && IS("--json")) {
            cl->json = true;
        } else if (want_force && IS("--force")) {
            cl->force = true;
        } else if (want_md && IS("--markdown")) {
            cl->markdown = true;
        } else if (want_name && (IS("--yes") || IS("-y"))) {
            cl->yes = true;
        } else if (want_name && IS("--all")) {
            cl->all = true;
        } else if (want_name && (IS("--queue") || IS("--topic"))) {
            if (eq) {
                val = eq + 1;
            } else if (i + 1 < argc) {
                val = argv[++i];
            } else {
                usage_error(c->name, "%.*s needs a NAME", (int)nlen, a);
                return EXIT_USAGE;
            }
            if (!*val) {
                usage_error(c->name, "%.*s needs a non-empty NAME", (int)nlen, a);
                return EXIT_USAGE;
            }
            if (IS("--queue"))
                cl->queue = val;
            else
                cl->topic = val;
        } else {
            usage_error(c->name, "unknown option '%s'", a);
            return EXIT_USAGE;
        }
        if (eq && !val && !IS("--queue") && !IS("--topic")) {
            usage_error(c->name, "option '%.*s' takes no value", (int)nlen, a);
            return EXIT_USAGE;
        }
#undef IS
    }
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_usage(stderr);
        return EXIT_USAGE;
    }
    const char *name = argv[1];
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
        print_usage(stdout);
        return EXIT_OK;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0) {
        printf("mqstore %s (library API %d.%d.%d)\n", MQS_CLI_VERSION,
               MQS_VERSION_MAJOR, MQS_VERSION_MINOR, MQS_VERSION_PATCH);
        return EXIT_OK;
    }
    if (strcmp(name, "help") == 0) {
        if (argc < 3) {
            print_usage(stdout);
            return EXIT_OK;
        }
        const command *c = find_command(argv[2]);
        if (!c) {
            usage_error(NULL, "unknown command '%s'", argv[2]);
            return EXIT_USAGE;
        }
        print_command_help(c);
        return EXIT_OK;
    }

    const command *c = find_command(name);
    if (!c) {
        usage_error(NULL, "unknown command '%s'", name);
        return EXIT_USAGE;
    }
    cmdline cl = {.cmd = c->name};
    int ret = parse_args(c, argc - 2, argv + 2, &cl);
    if (ret != EXIT_OK)
        return ret;
    if (cl.help) {
        print_command_help(c);
        return EXIT_OK;
    }

    /* Every command but `options` takes exactly one URI. */
    bool takes_uri = c->run != cmd_options;
    if (takes_uri) {
        if (cl.npos == 0) {
            const char *env = getenv("MQSTORE_URI");
            if (env && *env)
                cl.pos[cl.npos++] = env;
        }
        if (cl.npos != 1) {
            usage_error(c->name, cl.npos ? "expected one URI" : "missing URI");
            return EXIT_USAGE;
        }
    } else if (cl.npos > 1) {
        usage_error(c->name, "expected at most one SCHEME");
        return EXIT_USAGE;
    }
    return c->run(&cl);
}
