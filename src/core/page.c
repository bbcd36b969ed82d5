/* page.c - mqs_page_async: a page of one queue or subscription read on the
 * writer thread, between two write transactions, so a caller knows from
 * the order of completions which writes the page saw (docs/architecture.md
 * "A page read ordered with writes"). writer.c queues it, never batches it,
 * runs mqs__page_read with the writer's connection and completes it in
 * order with the writes. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "be_call.h"
#include "internal.h"

#define PAGE_ROWS_DEFAULT 256
#define PAGE_BYTES_DEFAULT ((size_t)4 << 20)

struct mqs_page {
    size_t max_rows, max_bytes;
    mqs_page_fn cb;
    /* The result, written by the writer thread, read by whoever runs the
     * completion (handed over through the store's queue, under its lock). */
    mqs_rowbuf b;
    mqs_message *msgs; /* b.n of them, built once the arena stops moving */
    bool cut;          /* stopped by max_bytes: more may follow */
    bool oom;
    bool end;
};

void mqs__page_free(mqs_page *p)
{
    if (!p)
        return;
    mqs__rowbuf_free(&p->b);
    free(p->msgs);
    free(p);
}

static int check_name(mqs_store *s, const char *what, const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 255)
        return mqs__err(s, MQS_EINVAL, "mqs_page_async: %s name must be 1 "
                        "to 255 bytes (got %zu)", what, n);
    return 0;
}

static int check_req(mqs_store *s, const mqs_page_req *q, mqs_page_fn done)
{
    if (!q)
        return mqs__err(s, MQS_EINVAL, "mqs_page_async: req is NULL");
    if (!done)
        return mqs__err(s, MQS_EINVAL, "mqs_page_async: done is NULL (the "
                        "page is handed to it and nowhere else)");
    int rc;
    if (q->kind == MQS_QUEUE) {
        if ((rc = check_name(s, "queue", q->dest)))
            return rc;
        if (q->sub_id != 0)
            return mqs__err(s, MQS_EINVAL, "mqs_page_async: sub_id %lld "
                            "for queue '%s': a queue page has sub_id 0",
                            (long long)q->sub_id, q->dest);
    } else if (q->kind == MQS_TOPIC) {
        if (q->sub_id <= 0)
            return mqs__err(s, MQS_EINVAL, "mqs_page_async: a topic page "
                            "reads one durable subscription: sub_id must be "
                            "> 0 (got %lld)", (long long)q->sub_id);
        if (q->dest && (rc = check_name(s, "topic", q->dest)))
            return rc;
    } else {
        return mqs__err(s, MQS_EINVAL, "mqs_page_async: kind %d: expected "
                        "MQS_QUEUE or MQS_TOPIC", (int)q->kind);
    }
    if (q->after_priority < 0 || q->after_priority > MQS_PRIORITY_MAX + 1 ||
        q->after_id < 0)
        return mqs__err(s, MQS_EINVAL, "mqs_page_async: position (priority "
                        "%d, id %lld) is out of range (priority 0..%d, or "
                        "%d for the start; id >= 0)", q->after_priority,
                        (long long)q->after_id, MQS_PRIORITY_MAX,
                        MQS_PRIORITY_MAX + 1);
    return 0;
}

int mqs_page_async(mqs_store *s, const mqs_page_req *req, mqs_page_fn done,
                   void *ud)
{
    if (!s)
        return mqs__err(NULL, MQS_EINVAL, "mqs_page_async: store is NULL");
    int rc = check_req(s, req, done);
    if (rc)
        return rc;
    mqs_request *r = mqs__req_new();
    mqs_op *op = r ? mqs__req_add(r, OP_PAGE) : NULL;
    mqs_page *p = op ? calloc(1, sizeof *p) : NULL;
    if (p)
        r->page = p;
    if (!p || (req->dest && !(op->dest = mqs__strdup(req->dest)))) {
        mqs__req_free(r);
        return mqs__err(s, MQS_ENOMEM, "out of memory queuing a page read");
    }
    op->dkind = req->kind;
    op->sub_id = req->sub_id;
    op->priority = req->after_priority;
    op->id = req->after_id;
    p->max_rows = req->max_rows ? req->max_rows : PAGE_ROWS_DEFAULT;
    p->max_bytes = req->max_bytes ? req->max_bytes : PAGE_BYTES_DEFAULT;
    p->cb = done;
    r->ud = ud;
    /* r->bytes stays 0: a read holds no message bytes while it waits, so
     * it neither fills a batch nor counts against max_pending_bytes (it
     * still waits, or gets MQS_EBUSY, while the queue is over it). */
    return mqs__submit_async(s, r);
}

/* Row callback: copy the row, unless it would take the page past
 * max_bytes (the first row always goes, so a page is never empty while a
 * row is pending). Stopping leaves the row for the next page. */
static int take_row(void *ud, const mqs_be_row *r)
{
    mqs_page *p = ud;
    size_t len = r->headers_len + r->body_len;
    if (p->b.n > 0 &&
        (p->b.len >= p->max_bytes || len > p->max_bytes - p->b.len)) {
        p->cut = true;
        return 1;
    }
    if (mqs__rowbuf_add(&p->b, r)) {
        p->oom = true;
        return 1;
    }
    return 0;
}

int mqs__page_read(mqs_store *s, mqs_be_conn *c, mqs_request *r, char *err,
                   size_t errlen)
{
    mqs_page *p = r->page;
    const mqs_op *op = &r->ops[0];
    p->b.n = p->b.len = 0;
    p->cut = p->oom = p->end = false;
    free(p->msgs);
    p->msgs = NULL;

    int64_t dest_id = 0;
    int rc;
    if (op->dkind == MQS_QUEUE &&
        !(dest_id = mqs__cache_get(s, MQS_QUEUE, op->dest))) {
        rc = mqs__bc_dest_resolve(MQS_BCX(s), c, MQS_QUEUE, op->dest, 0,
                                  &dest_id);
        if (rc == MQS_ENOTFOUND) { /* never written to: nothing pending */
            p->end = true;
            return 0;
        }
        if (rc) {
            snprintf(err, errlen, "%s", mqs__bc_conn_errmsg(MQS_BCX(s), c));
            return rc;
        }
        /* Read outside any transaction, so committed: ids never change. */
        mqs__cache_put(s, MQS_QUEUE, op->dest, dest_id);
    }
    mqs_be_page q = {dest_id, op->dkind == MQS_TOPIC ? op->sub_id : 0,
                     op->priority, op->id, p->max_rows};
    rc = mqs__bc_page_read(MQS_BCX(s), c, &q, take_row, p);
    if (rc == 0 && p->oom)
        rc = MQS_ENOMEM;
    if (rc == 0 && p->b.n &&
        !(p->msgs = malloc(p->b.n * sizeof *p->msgs)))
        rc = MQS_ENOMEM;
    if (rc) {
        if (rc == MQS_ENOMEM)
            snprintf(err, errlen, "out of memory reading a page of %s '%s' "
                     "(%zu rows, %zu bytes so far)",
                     op->dkind == MQS_QUEUE ? "queue" : "topic",
                     op->dest ? op->dest : "?", p->b.n, p->b.len);
        else
            snprintf(err, errlen, "%s", mqs__bc_conn_errmsg(MQS_BCX(s), c));
        p->b.n = p->b.len = 0;
        return rc;
    }
    p->end = p->b.n < p->max_rows && !p->cut;
    /* Every row's pointers go into the arena, which no longer moves. */
    for (size_t i = 0; i < p->b.n; i++)
        mqs__rowbuf_msg(&p->b, i, &p->msgs[i], op->dkind, op->dest,
                        op->dkind == MQS_TOPIC ? op->sub_id : 0, NULL);
    return 0;
}

void mqs__page_complete(mqs_request *r)
{
    mqs_page *p = r->page;
    if (r->rc)
        p->cb(r->ud, r->rc, NULL, 0, 0, r->errmsg ? r->errmsg : "");
    else
        p->cb(r->ud, 0, p->msgs, p->b.n, p->end, "");
}
