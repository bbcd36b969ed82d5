/* errors.c - error codes, names and the per-thread, per-handle messages. */
#include "internal.h"

#include <stdio.h>
#include <string.h>

const char *mqc_strerror(int code)
{
    switch (code) {
    case 0: return "success";
#define MQC_STR_(name, val, msg) case val: return msg;
        MQC_ERRNO_MAP(MQC_STR_)
#undef MQC_STR_
    default: return "unknown error code";
    }
}

const char *mqc_errname(int code)
{
    switch (code) {
    case 0: return "MQC_OK";
#define MQC_NAME_(name, val, msg) case val: return "MQC_" #name;
        MQC_ERRNO_MAP(MQC_NAME_)
#undef MQC_NAME_
    default: return "MQC_E?";
    }
}

/* A few handles per thread: a thread rarely works on more connections at
 * once, and the oldest slot is reused (its message is then ""). */
enum { SLOTS = 8, MSGLEN = 1024 };
typedef struct errslot {
    const void *h;
    unsigned long used;
    bool set;
    char msg[MSGLEN];
} errslot;

static _Thread_local errslot tl_slots[SLOTS];
static _Thread_local unsigned long tl_clock;

static errslot *slot_for(const void *h, bool create)
{
    for (int i = 0; i < SLOTS; i++)
        if (tl_slots[i].set && tl_slots[i].h == h) {
            tl_slots[i].used = ++tl_clock;
            return &tl_slots[i];
        }
    if (!create)
        return NULL;
    errslot *victim = &tl_slots[0];
    for (int i = 0; i < SLOTS; i++) {
        if (!tl_slots[i].set) {
            victim = &tl_slots[i];
            break;
        }
        if (tl_slots[i].used < victim->used)
            victim = &tl_slots[i];
    }
    victim->h = h;
    victim->set = true;
    victim->used = ++tl_clock;
    victim->msg[0] = '\0';
    return victim;
}

int mqc__verr(const void *h, int code, const char *fmt, va_list ap)
{
    errslot *s = slot_for(h, true);
    vsnprintf(s->msg, sizeof s->msg, fmt, ap);
    return code;
}

int mqc__err(const void *h, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    mqc__verr(h, code, fmt, ap);
    va_end(ap);
    return code;
}

void mqc__err_clear(const void *h)
{
    errslot *s = slot_for(h, false);
    if (s)
        s->msg[0] = '\0';
}

const char *mqc_errmsg(const mqc_conn *c)
{
    errslot *s = slot_for(c, false);
    return s ? s->msg : "";
}
