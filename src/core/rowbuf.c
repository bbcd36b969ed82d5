/* rowbuf.c - the rows of one page, copied out of the backend's callback
 * (internal.h, "page rows"): one copier for the recovery cursor and for
 * mqs_page_async. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

int mqs__rowbuf_add(mqs_rowbuf *b, const mqs_be_row *r)
{
    size_t len = r->headers_len + r->body_len;
    if (mqs__grow(&b->rows, &b->cap, b->n + 1, sizeof *b->rows, 16) ||
        mqs__grow(&b->arena, &b->arena_cap, b->len + len, 1, 65536))
        return MQS_ENOMEM;
    mqs_rowbuf_row *w = &b->rows[b->n++];
    w->r = *r;
    w->off = b->len;
    if (r->headers_len)
        memcpy(b->arena + b->len, r->headers, r->headers_len);
    if (r->body_len)
        memcpy(b->arena + b->len + r->headers_len, r->body, r->body_len);
    b->len += len;
    return 0;
}

void mqs__rowbuf_msg(const mqs_rowbuf *b, size_t i, mqs_message *m,
                     mqs_kind kind, const char *dest, int64_t sub_id,
                     const char *sub_name)
{
    const mqs_rowbuf_row *w = &b->rows[i];
    const unsigned char *at = b->arena ? b->arena + w->off : NULL;
    *m = (mqs_message){
        .id = w->r.id,
        .kind = kind,
        .dest = dest,
        .sub_id = sub_id,
        .sub_name = sub_name,
        .priority = w->r.priority,
        .expires_ms = w->r.expires_ms,
        .enqueued_ms = w->r.enqueued_ms,
        .redeliveries = w->r.redeliveries,
        .headers = at,
        .headers_len = w->r.headers_len,
        .body = at ? at + w->r.headers_len : NULL,
        .body_len = w->r.body_len,
    };
}

void mqs__rowbuf_free(mqs_rowbuf *b)
{
    free(b->rows);
    free(b->arena);
    memset(b, 0, sizeof *b);
}
