/* util.h - small building blocks of mqbroker and libmqclient: intrusive
 * lists, byte buffers, an integer map, clocks, UTF-8 validation, logging. */
#ifndef STOMP_UTIL_H
#define STOMP_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define container_of(ptr, type, member)                                        \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/* Circular doubly-linked list; a head is a qlink linked to itself. */
typedef struct qlink {
    struct qlink *prev, *next;
} qlink;

static inline void q_init(qlink *h) { h->prev = h->next = h; }
static inline bool q_empty(const qlink *h) { return h->next == h; }
/* Link n just before pos (at the tail when pos is the head). */
static inline void q_insert_before(qlink *pos, qlink *n)
{
    n->prev = pos->prev;
    n->next = pos;
    pos->prev->next = n;
    pos->prev = n;
}
static inline void q_push_back(qlink *h, qlink *n) { q_insert_before(h, n); }
static inline void q_remove(qlink *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

/* Allocation failure is fatal: the broker bounds its memory by flow
 * control, so running out means the host is out, not a client. (libmqclient
 * inherits this: its allocations are bounded by its windows and limits.) */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Growable bytes; the live data is p[off..len). */
typedef struct buf {
    char *p;
    size_t off, len, cap;
} buf;

static inline size_t buf_used(const buf *b) { return b->len - b->off; }
static inline const char *buf_data(const buf *b) { return b->p + b->off; }
void buf_reserve(buf *b, size_t extra);
void buf_add(buf *b, const void *data, size_t n);
void buf_adds(buf *b, const char *s);
void buf_addc(buf *b, char c);
void buf_addf(buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Drop n bytes from the front; memory is compacted lazily. */
void buf_consume(buf *b, size_t n);
void buf_free(buf *b);

/* Open-addressing map from non-zero 64-bit keys to pointers. */
typedef struct idmap {
    uint64_t *keys;
    void **vals;
    size_t cap, n;
} idmap;

void *idmap_get(const idmap *m, uint64_t key);
void idmap_put(idmap *m, uint64_t key, void *val);
void idmap_del(idmap *m, uint64_t key);
void idmap_free(idmap *m);

int64_t mono_ms(void);
int64_t wall_ms(void);

/* Strict UTF-8 (no overlongs, surrogates or NUL). */
bool utf8_valid(const char *s, size_t n);

/* Logging to stderr, one line per event: time, level, message. */
enum { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };
extern int g_log_level;
#define log_enabled(lvl) ((lvl) <= g_log_level)
void log_msg(int level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int log_level_parse(const char *s); /* -1 if unknown */

#endif
