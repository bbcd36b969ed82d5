/*
 * faults.h - shared parts of mqs_faults, the fault tests against real
 * database servers (tests/faults/).
 *
 * One binary, `mqs_faults URI`, runs the PostgreSQL or the MySQL/MariaDB
 * cases according to the URI's scheme. Admin actions (killing the store's
 * connections, holding row locks, reading server settings) go through the
 * client library directly (libpq / libmysqlclient) with the URI's own
 * credentials; a server restart goes through MQSTORE_TEST_DB_SCRIPT (a
 * tests/db/ script with a `restart` command honouring MQS_RESTART_PAUSE_MS).
 */
#ifndef MQS_FAULTS_H
#define MQS_FAULTS_H

/* cmocka.h needs these first */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <mqstore/mqstore.h>

/* ---- the server under test (parsed from the URI argument) ---- */
typedef enum fx_kind { FX_PG, FX_MYSQL, FX_SQLITE } fx_kind;

typedef struct fx_server {
    const char *uri; /* as given; holds the password */
    fx_kind kind;
    char scheme[32];
    char user[128];
    char password[256];
    char host[256];
    int port;
    char db[512];    /* FX_SQLITE: the database file's path */
    char query[512]; /* the URI's own query options, "" if none */
} fx_server;

extern fx_server g_srv;
extern char g_tmp[256]; /* private scratch directory */

/* Parse uri into *out; 0 or -1 with a message in err. sqlite:///abs/path
 * and sqlite:/abs/path give FX_SQLITE (db = the path): mqs_faults skips
 * it (no server to fault), mqs_fence runs on it. */
int fx_parse_uri(const char *uri, fx_server *out, char *err, size_t errlen);
/* A store URI for the server with some parts replaced: password/db NULL =
 * the server's; port 0 = the server's; opts (may be NULL) is a '&'-joined
 * list of query options, appended after the URI's own. malloc'd. */
char *fx_uri(const char *password, int port, const char *db, const char *opts);
/* Destination / database name unique to this run: "fx<pid>_<n>_<what>". */
const char *fx_name(char *buf, size_t len, const char *what);

int64_t fx_mono_ms(void);
void fx_sleep_ms(int64_t ms);

/* ---- log capture: every store of the tests logs here ---- */
extern const mqs_open_opts g_log_opts;
/* Messages logged so far (and how many contained the password). */
void fx_log_counts(size_t *n, size_t *with_password);

/* True if s contains the server's password, or `extra` when non-NULL. */
int fx_has_secret(const char *s, const char *extra);

/* ---- an in-process TCP proxy on 127.0.0.1 (random port) ---- */
typedef struct fx_proxy fx_proxy;
/* silent = accept connections but never forward or answer (a host that
 * takes the TCP connection and then says nothing); else forward to
 * 127.0.0.1:target_port. */
fx_proxy *fx_proxy_start(int target_port, int silent);
int fx_proxy_port(const fx_proxy *p);
/* Connections accepted, and how many of them carried client bytes. */
void fx_proxy_counts(fx_proxy *p, int *accepted, int *talked);
/* Arms the proxy once: the next answer from the server that carries
 * PostgreSQL's COMMIT command tag is dropped and its connection closed on
 * both sides, as if the server committed and was lost before its answer
 * left. */
void fx_proxy_cut_at_commit(fx_proxy *p);
void fx_proxy_stop(fx_proxy *p);
/* A 127.0.0.1 port nobody listens on (bound, then closed). */
int fx_closed_port(void);

/* ---- admin connection to the server (libpq or libmysqlclient), or to
 * the database file (sqlite3, with a 10 s busy timeout) ---- */
typedef struct fx_admin fx_admin;
/* Connect with the server's credentials; fails the test on error. */
fx_admin *fx_admin_open(void);
void fx_admin_close(fx_admin *a);
/* Run sql; 0, or -1 with the server's message in err. */
int fx_admin_exec(fx_admin *a, const char *sql, char *err, size_t errlen);
/* First column of the first row as an integer (missing/NULL: -1 and an
 * error message). */
int fx_admin_i64(fx_admin *a, const char *sql, int64_t *out, char *err,
                 size_t errlen);
/* fx_admin_exec that fails the test on error. */
void fx_admin_must(fx_admin *a, const char *sql);
int64_t fx_admin_must_i64(fx_admin *a, const char *sql);

/* Kill the store connections of this process: PostgreSQL by
 * application_name (exact), MySQL by the client ports this process holds
 * towards the server (from /proc), the admin connection excluded. Returns
 * how many were killed; fails the test on an admin error. */
int fx_kill_own(fx_admin *a, const char *pg_app_name);
/* How many such connections exist now. */
int fx_count_own(fx_admin *a, const char *pg_app_name);

/* ---- the server restart (MQSTORE_TEST_DB_SCRIPT) ---- */
/* Skips the test (or fails it when a server run is required) if the
 * script is not set. */
const char *fx_db_script(void);
/* Restart the server, keeping its data, down for at least pause_ms.
 * Returns how long the restart command took. */
int64_t fx_db_restart(long pause_ms);

/* ---- producers and the durability check ---- */
#define FX_PRODUCERS 4

typedef struct fx_rec {
    int rc;        /* mqs_enqueue's result */
    int64_t id;    /* id it returned (0 on failure) */
    int64_t t0, t1; /* monotonic ms: call and return */
} fx_rec;

typedef struct fx_load fx_load;
/* Start FX_PRODUCERS threads, each calling mqs_enqueue on queue dest in a
 * loop (bounded in count and in time) with a body unique to (producer,
 * seq). */
fx_load *fx_load_start(mqs_store *s, const char *dest);
/* Stop the producers and wait for them. */
void fx_load_stop(fx_load *l);
/* After stop: verify the database against the recorded results (see
 * faults_load.c) through a fresh store on store_uri, print a summary
 * labelled `what`, and fail the test on any violation. t_back is the
 * monotonic time the fault ended: every producer must have had a success
 * that started after it. min_stall_ms > 0: some successful call must have
 * waited at least that long (it rode out the outage). Frees l. */
void fx_load_check(fx_load *l, const char *store_uri, const char *what,
                   int64_t t_back, int64_t min_stall_ms);

/* Pending count of a queue (sub_name NULL) or subscription via
 * mqs_dest_foreach; -1 if there is no such row. */
int64_t fx_pending(mqs_store *s, mqs_kind kind, const char *dest,
                   const char *sub_name);

#define FX_OK(expr, store)                                                     \
    do {                                                                       \
        int fx_rc_ = (expr);                                                   \
        if (fx_rc_ != 0)                                                       \
            fail_msg("%s -> %d %s: %s", #expr, fx_rc_, mqs_errname(fx_rc_),   \
                     mqs_errmsg(store));                                       \
    } while (0)

#endif /* MQS_FAULTS_H */
