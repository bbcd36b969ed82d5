/* cursor.c - recovery: stream pending messages in delivery order, one
 * keyset page at a time, so memory is bounded by the page, not the backlog.
 * Each page borrows a pooled connection only while it is read: no long
 * transaction, nothing a pooler could break, writes go on meanwhile. */
#include <stdlib.h>
#include <string.h>

#include "be_call.h"
#include "internal.h"

#define PAGE_ROWS_DEFAULT 256
/* A page also stops at this many bytes (after its first row), so big
 * messages cannot make a page's memory explode. */
#define PAGE_BYTES_MAX (4u << 20)

typedef struct target {
    int64_t dest_id, sub_id;
    mqs_kind kind;
    char *name;
    char *sub_name;
} target;

struct mqs_cursor {
    mqs_store *s;
    target *t;
    size_t n_t, cap_t, cur;
    size_t page_rows;
    int after_priority;
    int64_t after_id;
    bool target_done;
    bool started; /* mqs_cursor_next was called */

    mqs_rowbuf b; /* the page being read */
    size_t pos;
    bool stopped_early;
    int oom;

    mqs_be_ref *expired;
    bool may_purge; /* expired rows are removed, not only skipped */
    size_t n_exp, cap_exp;
    int64_t now;

    mqs_message msg;
};

/* ---- targets ---- */

typedef struct list_ctx {
    mqs_cursor *c;
    const mqs_cursor_opts *o;
    int rc;
} list_ctx;

static int collect(void *ud, const mqs_be_dest *d)
{
    list_ctx *x = ud;
    mqs_cursor *c = x->c;
    const mqs_cursor_opts *o = x->o;
    /* A queue is read as a whole; a topic only through its subscriptions. */
    if (d->kind == MQS_TOPIC && d->sub_id == 0)
        return 0;
    if (o && o->dest) {
        if (d->kind != o->kind || strcmp(d->name, o->dest) != 0)
            return 0;
        if (o->kind == MQS_TOPIC && o->sub_name &&
            (!d->sub_name || strcmp(d->sub_name, o->sub_name) != 0))
            return 0;
    }
    if (mqs__grow(&c->t, &c->cap_t, c->n_t + 1, sizeof *c->t, 16))
        return x->rc = MQS_ENOMEM;
    target *t = &c->t[c->n_t];
    t->dest_id = d->dest_id;
    t->sub_id = d->sub_id;
    t->kind = d->kind;
    t->name = mqs__strdup(d->name);
    t->sub_name = d->sub_name ? mqs__strdup(d->sub_name) : NULL;
    if (!t->name || (d->sub_name && !t->sub_name)) {
        free(t->name);
        free(t->sub_name);
        return x->rc = MQS_ENOMEM;
    }
    c->n_t++;
    return 0;
}

/* Names only: counting every pending message first (dest_list) would make
 * opening a cursor cost as much as reading the whole backlog. */
static int do_list(mqs_store *s, mqs_be_conn *conn, void *arg)
{
    return mqs__bc_dest_names(MQS_BCX(s), conn, collect, arg);
}

/* ---- pages ---- */

/* Row callback: keep the row; past PAGE_BYTES_MAX the page stops after it
 * (unlike mqs_page_async's cap, which a page never passes). */
static int take_row(void *ud, const mqs_be_row *r)
{
    mqs_cursor *c = ud;
    if (mqs__rowbuf_add(&c->b, r)) {
        c->oom = 1;
        return 1;
    }
    if (c->b.n < c->page_rows && c->b.len >= PAGE_BYTES_MAX) {
        c->stopped_early = true;
        return 1;
    }
    return 0;
}

static int do_page(mqs_store *s, mqs_be_conn *conn, void *arg)
{
    mqs_cursor *c = arg;
    target *t = &c->t[c->cur];
    mqs_be_page p = {t->dest_id, t->sub_id, c->after_priority, c->after_id,
                     c->page_rows};
    /* The wrapper stops a backend at page_rows rows. */
    return mqs__bc_page_read(MQS_BCX(s), conn, &p, take_row, c);
}

/* Remove the expired messages seen so far, as one write. */
static int flush_expired(mqs_cursor *c)
{
    if (c->n_exp == 0)
        return 0;
    int64_t *ids = malloc(c->n_exp * sizeof *ids);
    int64_t *subs = malloc(c->n_exp * sizeof *subs);
    int rc = MQS_ENOMEM;
    if (ids && subs) {
        for (size_t i = 0; i < c->n_exp; i++) {
            ids[i] = c->expired[i].id;
            subs[i] = c->expired[i].sub_id;
        }
        rc = mqs_ack_many(c->s, ids, subs, c->n_exp);
    }
    free(ids);
    free(subs);
    if (rc == 0) {
        pthread_mutex_lock(&c->s->stats_mu);
        c->s->stats.acked -= c->n_exp;
        c->s->stats.expired += c->n_exp;
        pthread_mutex_unlock(&c->s->stats_mu);
        c->n_exp = 0;
    }
    return rc;
}

int mqs_cursor_open(mqs_store *s, const mqs_cursor_opts *opts,
                    mqs_cursor **out)
{
    if (!out)
        return mqs__err(s, MQS_EINVAL, "mqs_cursor_open: out is NULL");
    *out = NULL;
    if (!s)
        return mqs__err(NULL, MQS_EINVAL, "mqs_cursor_open: store is NULL");
    if (opts && opts->dest && opts->kind != MQS_QUEUE &&
        opts->kind != MQS_TOPIC)
        return mqs__err(s, MQS_EINVAL, "cursor kind %d: expected MQS_QUEUE "
                        "or MQS_TOPIC", (int)opts->kind);
    mqs_cursor *c = calloc(1, sizeof *c);
    if (!c)
        return mqs__err(s, MQS_ENOMEM, "out of memory opening a cursor");
    c->s = s;
    c->page_rows = opts && opts->page_rows ? opts->page_rows
                                           : PAGE_ROWS_DEFAULT;
    /* Room for a whole page up front: a page_rows too big fails here. */
    if (mqs__grow(&c->b.rows, &c->b.cap, c->page_rows, sizeof *c->b.rows,
                  c->page_rows)) {
        mqs_cursor_close(c);
        return mqs__err(s, MQS_ENOMEM, "out of memory for a %zu-row page",
                        c->page_rows);
    }
    list_ctx x = {c, opts, 0};
    int rc = mqs__with_reader(s, do_list, &x);
    if (rc == 0 && x.rc)
        rc = mqs__err(s, x.rc, "out of memory listing destinations");
    if (rc) {
        mqs_cursor_close(c);
        return rc;
    }
    c->after_priority = MQS_PRIORITY_MAX + 1;
    c->now = mqs__now_ms();
    c->may_purge = mqs__may_write_unasked(s);
    *out = c;
    return 0;
}

int mqs_cursor_next(mqs_cursor *c, const mqs_message **m)
{
    if (!c || !m)
        return mqs__err(c ? c->s : NULL, MQS_EINVAL,
                        "mqs_cursor_next: NULL argument");
    c->started = true;
    for (;;) {
        while (c->pos < c->b.n) {
            const mqs_be_row *w = &c->b.rows[c->pos++].r;
            target *t = &c->t[c->cur];
            if (w->expires_ms != 0 && w->expires_ms <= c->now) {
                /* Skipped always; removed only by a store that may write
                 * unasked: never on a read-only store (newer schema) or an
                 * HA node that does not hold the lock (unfenced). */
                if (!c->may_purge)
                    continue;
                if (mqs__grow(&c->expired, &c->cap_exp, c->n_exp + 1,
                              sizeof *c->expired, 64))
                    return mqs__err(c->s, MQS_ENOMEM, "out of memory");
                c->expired[c->n_exp++] = (mqs_be_ref){w->id, t->sub_id};
                continue;
            }
            mqs__rowbuf_msg(&c->b, c->pos - 1, &c->msg, t->kind, t->name,
                            t->sub_id, t->sub_name);
            *m = &c->msg;
            return 1;
        }
        /* Page consumed: expired ones go before the next read, so a
         * bounded batch never grows with the backlog. */
        int rc = flush_expired(c);
        if (rc)
            return rc;
        if (c->cur < c->n_t && c->target_done) {
            c->cur++;
            c->target_done = false;
            c->after_priority = MQS_PRIORITY_MAX + 1;
            c->after_id = 0;
        }
        if (c->cur >= c->n_t)
            return 0;
        c->b.n = c->b.len = c->pos = 0;
        c->stopped_early = false;
        c->oom = 0;
        rc = mqs__with_reader(c->s, do_page, c);
        if (rc == 0 && c->oom)
            rc = mqs__err(c->s, MQS_ENOMEM, "out of memory reading a page");
        if (rc) {
            c->b.n = 0; /* the same page is read again on retry */
            return rc;
        }
        if (c->b.n < c->page_rows && !c->stopped_early)
            c->target_done = true;
        if (c->b.n) {
            c->after_priority = c->b.rows[c->b.n - 1].r.priority;
            c->after_id = c->b.rows[c->b.n - 1].r.id;
        }
    }
}

int mqs_cursor_seek(mqs_cursor *c, int after_priority, int64_t after_id)
{
    if (!c)
        return mqs__err(NULL, MQS_EINVAL, "mqs_cursor_seek: cursor is NULL");
    if (c->started)
        return mqs__err(c->s, MQS_ESTATE, "mqs_cursor_seek: the cursor was "
                        "read already; seek right after mqs_cursor_open");
    if (c->n_t > 1)
        return mqs__err(c->s, MQS_EINVAL, "mqs_cursor_seek: the cursor "
                        "covers %zu queues or subscriptions; open it on one "
                        "(opts->dest, and opts->sub_name for a topic)",
                        c->n_t);
    if (after_priority < 0 || after_priority > MQS_PRIORITY_MAX ||
        after_id < 0)
        return mqs__err(c->s, MQS_EINVAL, "mqs_cursor_seek: position "
                        "(priority %d, id %lld) is out of range (priority "
                        "0..%d, id >= 0)", after_priority,
                        (long long)after_id, MQS_PRIORITY_MAX);
    /* The keyset page condition does the rest: the first page starts at
     * this key in the (priority, id) order. */
    c->after_priority = after_priority;
    c->after_id = after_id;
    return 0;
}

void mqs_cursor_close(mqs_cursor *c)
{
    if (!c)
        return;
    (void)flush_expired(c); /* best effort: they are skipped again later */
    for (size_t i = 0; i < c->n_t; i++) {
        free(c->t[i].name);
        free(c->t[i].sub_name);
    }
    free(c->t);
    mqs__rowbuf_free(&c->b);
    free(c->expired);
    free(c);
}
