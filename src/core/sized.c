/* sized.c - the _sz entry points of the structs that grow (mqstore.h,
 * "Structs that grow"): each copies what the caller's struct holds into
 * this version's struct (later fields zero, their defaults) or copies out
 * only what the caller's struct has room for, then calls the plain
 * function.
 *
 * When a field is appended to one of these structs, its FIRST_* size below
 * stays what it is, and the plain function must start treating its
 * argument as that first version (call the _sz form with FIRST_*), since
 * programs that call it by name were built with the first layout. */
#include <stddef.h>
#include <string.h>

#include "internal.h"

#define END_OF(type, member) (offsetof(type, member) + sizeof(((type *)0)->member))

/* The first version of each struct: where its last original member ends. */
#define FIRST_OPEN_OPTS END_OF(mqs_open_opts, log_level)
#define FIRST_CURSOR_OPTS END_OF(mqs_cursor_opts, page_rows)
#define FIRST_PAGE_REQ END_OF(mqs_page_req, max_bytes)
#define FIRST_LOCK_CBS END_OF(mqs_lock_cbs, ud)
#define FIRST_STATS END_OF(mqs_stats, schema_version)
#define FIRST_LOCK_INFO END_OF(mqs_lock_info, crash_detect)

/* Copy an input struct of the caller's size into *full (zeroed first). */
static int sized_in(void *full, size_t full_size, const void *in,
                    size_t in_size, size_t first, const char *what)
{
    memset(full, 0, full_size);
    if (in_size < first)
        return mqs__err(NULL, MQS_EINVAL,
                        "%s: the caller's struct has %zu bytes, less than "
                        "its first version (%zu): a program built against a "
                        "broken header?",
                        what, in_size, first);
    memcpy(full, in, in_size < full_size ? in_size : full_size);
    return 0;
}

/* After the plain call filled *full (rc 0): copy what the caller's struct
 * has room for. */
static int sized_out(int rc, void *out, size_t out_size, const void *full,
                     size_t full_size)
{
    if (rc == 0)
        memcpy(out, full, out_size < full_size ? out_size : full_size);
    return rc;
}

/* An output struct smaller than its first version: refused up front. */
static int sized_out_check(size_t out_size, size_t first, const char *what)
{
    if (out_size < first)
        return mqs__err(NULL, MQS_EINVAL,
                        "%s: the caller's struct has %zu bytes, less than "
                        "its first version (%zu)",
                        what, out_size, first);
    return 0;
}

static int open_sz(const char *uri, const mqs_open_opts *opts,
                   size_t opts_size, mqs_store **out, bool migrate)
{
    mqs_open_opts o;
    if (opts && sized_in(&o, sizeof o, opts, opts_size, FIRST_OPEN_OPTS,
                         migrate ? "mqs_open" : "mqs_open_nomigrate")) {
        if (out)
            *out = NULL;
        return MQS_EINVAL;
    }
    return migrate ? mqs_open(uri, opts ? &o : NULL, out)
                   : mqs_open_nomigrate(uri, opts ? &o : NULL, out);
}

int mqs_open_sz(const char *uri, const mqs_open_opts *opts, size_t opts_size,
                mqs_store **out)
{
    return open_sz(uri, opts, opts_size, out, true);
}

int mqs_open_nomigrate_sz(const char *uri, const mqs_open_opts *opts,
                          size_t opts_size, mqs_store **out)
{
    return open_sz(uri, opts, opts_size, out, false);
}

int mqs_cursor_open_sz(mqs_store *s, const mqs_cursor_opts *opts,
                       size_t opts_size, mqs_cursor **out)
{
    mqs_cursor_opts o;
    if (opts && sized_in(&o, sizeof o, opts, opts_size, FIRST_CURSOR_OPTS,
                         "mqs_cursor_open")) {
        if (out)
            *out = NULL;
        return MQS_EINVAL;
    }
    return mqs_cursor_open(s, opts ? &o : NULL, out);
}

int mqs_page_async_sz(mqs_store *s, const mqs_page_req *req, size_t req_size,
                      mqs_page_fn done, void *ud)
{
    mqs_page_req r;
    if (req && sized_in(&r, sizeof r, req, req_size, FIRST_PAGE_REQ,
                        "mqs_page_async"))
        return MQS_EINVAL;
    return mqs_page_async(s, req ? &r : NULL, done, ud);
}

int mqs_lock_acquire_sz(mqs_store *s, int64_t timeout_ms,
                        const mqs_lock_cbs *cbs, size_t cbs_size)
{
    mqs_lock_cbs c;
    if (cbs && sized_in(&c, sizeof c, cbs, cbs_size, FIRST_LOCK_CBS,
                        "mqs_lock_acquire"))
        return MQS_EINVAL;
    return mqs_lock_acquire(s, timeout_ms, cbs ? &c : NULL);
}

int mqs_stats_get_sz(mqs_store *s, mqs_stats *out, size_t out_size)
{
    mqs_stats full;
    if (out && sized_out_check(out_size, FIRST_STATS, "mqs_stats_get"))
        return MQS_EINVAL;
    return sized_out(mqs_stats_get(s, out ? &full : NULL), out, out_size,
                     &full, sizeof full);
}

int mqs_lock_status_sz(mqs_store *s, mqs_lock_info *out, size_t out_size)
{
    mqs_lock_info full;
    if (out && sized_out_check(out_size, FIRST_LOCK_INFO, "mqs_lock_status"))
        return MQS_EINVAL;
    return sized_out(mqs_lock_status(s, out ? &full : NULL), out, out_size,
                     &full, sizeof full);
}
