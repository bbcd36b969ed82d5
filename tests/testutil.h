/*
 * testutil.h - shared helpers of the conformance suite.
 *
 * The suite runs against whatever store URI it is given, possibly a database
 * shared with other runs, so every test names its destinations with
 * tu_name() (unique to this process run) and only looks at those.
 */
#ifndef MQS_TESTUTIL_H
#define MQS_TESTUTIL_H

/* cmocka.h needs these first */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <mqstore/mqstore.h>

/* ---- the URI under test (set by the runner before each group) ---- */
extern const char *g_uri;    /* URI under test; may hold a password */
extern char g_scheme[32];    /* its scheme, lower-cased */
extern int g_is_sqlite;      /* scheme is sqlite */
extern int g_owned;          /* the suite created this database itself, so
                                store-wide operations (purge all) are safe */
extern const char *g_tmpdir; /* private scratch directory of this process */
extern int g_quick;          /* MQSTORE_TEST_QUICK: smaller workloads */

/* Scheme of uri, lower-cased, into buf ("" if none). */
void tu_uri_scheme(const char *uri, char *buf, size_t len);
/* uri with "opt" appended as a query option ('?' or '&'). malloc'd. */
char *tu_uri_with(const char *uri, const char *opt);
/* Name unique to this run and call: "t<run>_<n>_<what>", into buf. */
const char *tu_name(char *buf, size_t len, const char *what);
/* Prefix every tu_name() of this run starts with. */
const char *tu_run_prefix(void);
/* Wall clock in ms. */
int64_t tu_now_ms(void);
void tu_sleep_ms(int ms);

/* Fail the test with the store's message when rc != 0. */
#define TU_OK(expr, store)                                                     \
    do {                                                                       \
        int tu_rc_ = (expr);                                                   \
        if (tu_rc_ != 0)                                                       \
            fail_msg("%s -> %d %s: %s", #expr, tu_rc_, mqs_errname(tu_rc_),   \
                     mqs_errmsg(store));                                       \
    } while (0)

/* Open g_uri (or uri) and fail the test, with the message, if it fails. */
mqs_store *tu_open(void);
mqs_store *tu_open_uri(const char *uri);

/* cmocka setup/teardown opening g_uri into *state. */
int tu_setup_store(void **state);
int tu_teardown_store(void **state);

/* A message literal. */
mqs_msg tu_msg(mqs_kind kind, const char *dest, const void *body, size_t len,
               int priority);

/* Deterministic pseudo-random bytes from seed. */
void tu_fill(void *buf, size_t len, uint64_t seed);
/* FNV-1a 64. */
uint64_t tu_fnv(const void *buf, size_t len, uint64_t h);
#define TU_FNV_INIT 0xcbf29ce484222325ULL

/* ---- recovery, copied out of the cursor ---- */
typedef struct tu_rmsg {
    int64_t id;
    mqs_kind kind;
    char *dest;
    int64_t sub_id;
    char *sub_name; /* NULL for a queue message */
    int priority;
    int64_t expires_ms;
    int64_t enqueued_ms;
    int32_t redeliveries;
    unsigned char *headers;
    size_t headers_len;
    unsigned char *body;
    size_t body_len;
} tu_rmsg;

typedef struct tu_list {
    tu_rmsg *v;
    size_t n, cap;
} tu_list;

/* Run a cursor with opts (may be NULL) to the end; keep messages whose dest
 * starts with prefix (NULL = all). Returns the first cursor error, else 0. */
int tu_collect(mqs_store *s, const mqs_cursor_opts *opts, const char *prefix,
               tu_list *out);
/* tu_collect of one destination (sub_name NULL = every subscription),
 * appended to out, failing the test on an error or a message of another
 * destination. */
void tu_recover(mqs_store *s, mqs_kind kind, const char *dest,
                const char *sub_name, size_t page_rows, tu_list *out);
void tu_list_free(tu_list *l);
/* Index of id in l, or -1. With sub_id >= 0 it must match too. */
long tu_list_find(const tu_list *l, int64_t id, int64_t sub_id);

/* Pending count of one queue (sub_name NULL) or subscription, through
 * mqs_dest_foreach: -1 if no such row. */
int64_t tu_pending(mqs_store *s, mqs_kind kind, const char *dest,
                   const char *sub_name);

/* mqs_stats_get, failing the test on error. */
mqs_stats tu_stats(mqs_store *s);

/* Contents of a file (malloc'd, *len set), NULL if unreadable. */
unsigned char *tu_read_file(const char *path, size_t *len);
/* Remove path and its -wal, -shm, -journal companions. */
void tu_unlink_db(const char *path);

/* ---- the groups (one file each) ---- */
typedef struct tu_group {
    const char *name;
    const struct CMUnitTest *tests;
    size_t n;
} tu_group;

extern const tu_group tu_group_api;
extern const tu_group tu_group_messages;
extern const tu_group tu_group_topics;
extern const tu_group tu_group_txn;
extern const tu_group tu_group_recovery;
extern const tu_group tu_group_concurrency;
extern const tu_group tu_group_sqlite;
extern const tu_group tu_group_paging;

#define TU_GROUP(var, label, arr)                                              \
    const tu_group var = {label, arr, sizeof(arr) / sizeof((arr)[0])}

#endif /* MQS_TESTUTIL_H */
