/* frame.c - STOMP 1.0-1.2 frame parser and encoder (see frame.h). */
#include "frame.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const cmd_names[] = {
    [CMD_UNKNOWN] = "UNKNOWN",       [CMD_CONNECT] = "CONNECT",
    [CMD_STOMP] = "STOMP",           [CMD_SEND] = "SEND",
    [CMD_SUBSCRIBE] = "SUBSCRIBE",   [CMD_UNSUBSCRIBE] = "UNSUBSCRIBE",
    [CMD_ACK] = "ACK",               [CMD_NACK] = "NACK",
    [CMD_BEGIN] = "BEGIN",           [CMD_COMMIT] = "COMMIT",
    [CMD_ABORT] = "ABORT",           [CMD_DISCONNECT] = "DISCONNECT",
    [CMD_CONNECTED] = "CONNECTED",   [CMD_MESSAGE] = "MESSAGE",
    [CMD_RECEIPT] = "RECEIPT",       [CMD_ERROR] = "ERROR",
};

stomp_cmd stomp_cmd_of(const char *s, size_t n)
{
    for (size_t i = 1; i < sizeof cmd_names / sizeof cmd_names[0]; i++)
        if (strlen(cmd_names[i]) == n && !memcmp(cmd_names[i], s, n))
            return (stomp_cmd)i;
    return CMD_UNKNOWN;
}

const char *stomp_cmd_name(stomp_cmd c)
{
    return (size_t)c < sizeof cmd_names / sizeof cmd_names[0] ? cmd_names[c]
                                                               : "UNKNOWN";
}

void frame_parser_init(frame_parser *p, const frame_limits *lim)
{
    memset(p, 0, sizeof *p);
    p->lim = *lim;
    p->version = STOMP_10;
}

void frame_parser_free(frame_parser *p)
{
    free(p->arena);
    free(p->hdrs);
    memset(p, 0, sizeof *p);
}

const char *frame_get(const frame *f, const char *name)
{
    /* STOMP 1.2: with repeated headers the first one counts. */
    for (size_t i = 0; i < f->nheaders; i++)
        if (!strcmp(f->headers[i].name, name))
            return f->headers[i].value;
    return NULL;
}

#define FAIL(...)                                                              \
    do {                                                                       \
        snprintf(err, errlen, __VA_ARGS__);                                    \
        return FRAME_ERR;                                                      \
    } while (0)

/* Unescape src[0..n) into dst (which has room for n + 1 bytes); returns the
 * length or -1 with the bad sequence in err. */
static long unescape(const char *src, size_t n, char *dst, bool escapes,
                     char *err, size_t errlen)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        if (c != '\\' || !escapes) {
            dst[o++] = c;
            continue;
        }
        if (i + 1 == n) {
            snprintf(err, errlen, "header ends in a lone backslash");
            return -1;
        }
        switch (src[++i]) {
        case 'n': dst[o++] = '\n'; break;
        case 'r': dst[o++] = '\r'; break;
        case 'c': dst[o++] = ':'; break;
        case '\\': dst[o++] = '\\'; break;
        default:
            if ((unsigned char)src[i] >= 0x20 && (unsigned char)src[i] < 0x7f)
                snprintf(err, errlen,
                         "undefined escape sequence \\%c in a header", src[i]);
            else
                snprintf(err, errlen,
                         "undefined escape sequence (backslash + byte 0x%02x) "
                         "in a header", (unsigned char)src[i]);
            return -1;
        }
    }
    dst[o] = '\0';
    return (long)o;
}

/* The header section [0..hlen) is complete: split it into the command and
 * headers, unescaped into the arena. */
static int parse_headers(frame_parser *p, const char *data, size_t hlen,
                         char *err, size_t errlen)
{
    if (hlen + 1 > p->arena_cap) {
        p->arena_cap = hlen + 1 > 256 ? hlen + 1 : 256;
        free(p->arena);
        p->arena = xmalloc(p->arena_cap);
    }
    char *arena = p->arena;
    size_t ao = 0, nh = 0;
    size_t pos = 0;
    bool first = true, escapes = false;
    while (pos < hlen) {
        const char *nl = memchr(data + pos, '\n', hlen - pos);
        size_t end = nl ? (size_t)(nl - data) : hlen;
        size_t next = nl ? end + 1 : hlen;
        if (end > pos && data[end - 1] == '\r')
            end--; /* CRLF line end */
        const char *line = data + pos;
        size_t llen = end - pos;
        pos = next;
        if (first) {
            first = false;
            if (!llen)
                FAIL("empty command line");
            if (!utf8_valid(line, llen))
                FAIL("command is not valid UTF-8");
            memcpy(arena, line, llen);
            arena[llen] = '\0';
            p->f.command = arena;
            p->f.cmd = stomp_cmd_of(line, llen);
            ao = llen + 1;
            /* CONNECT and CONNECTED stay unescaped for 1.0 compatibility. */
            escapes = p->version >= STOMP_11 && p->f.cmd != CMD_CONNECT &&
                      p->f.cmd != CMD_STOMP && p->f.cmd != CMD_CONNECTED;
            continue;
        }
        if (!llen)
            break; /* the blank line */
        const char *colon = memchr(line, ':', llen);
        if (!colon)
            FAIL("header line without a colon");
        size_t klen = (size_t)(colon - line);
        if (!klen)
            FAIL("header with an empty name");
        if (nh == p->lim.max_headers)
            FAIL("more than %zu headers (max-headers)", p->lim.max_headers);
        if (nh == p->hdrs_cap) {
            p->hdrs_cap = p->hdrs_cap ? p->hdrs_cap * 2 : 16;
            p->hdrs = xrealloc(p->hdrs, p->hdrs_cap * sizeof *p->hdrs);
        }
        frame_header *h = &p->hdrs[nh];
        long n = unescape(line, klen, arena + ao, escapes, err, errlen);
        if (n < 0)
            return FRAME_ERR;
        h->name = arena + ao;
        h->name_len = (size_t)n;
        ao += (size_t)n + 1;
        n = unescape(colon + 1, llen - klen - 1, arena + ao, escapes, err,
                     errlen);
        if (n < 0)
            return FRAME_ERR;
        h->value = arena + ao;
        h->value_len = (size_t)n;
        ao += (size_t)n + 1;
        if (!utf8_valid(h->name, h->name_len) ||
            !utf8_valid(h->value, h->value_len))
            FAIL("header '%.64s' is not valid UTF-8 (or contains NUL)",
                 utf8_valid(h->name, h->name_len) ? h->name : "?");
        nh++;
    }
    p->f.headers = p->hdrs;
    p->f.nheaders = nh;
    return FRAME_OK;
}

/* Offset just after the blank line ending the headers, 0 if not found in
 * data[from..len). */
static size_t find_header_end(const char *data, size_t from, size_t len)
{
    for (size_t i = from; i < len;) {
        const char *nl = memchr(data + i, '\n', len - i);
        if (!nl)
            return 0;
        size_t k = (size_t)(nl - data);
        if (k + 1 < len && data[k + 1] == '\n')
            return k + 2;
        if (k + 2 < len && data[k + 1] == '\r' && data[k + 2] == '\n')
            return k + 3;
        i = k + 1;
    }
    return 0;
}

int frame_parse(frame_parser *p, const char *data, size_t len, size_t *used,
                frame *out, char *err, size_t errlen)
{
    size_t start = 0;
    *used = 0;
    if (!p->have_headers && p->scan == 0) {
        /* EOLs between frames are heart-beats. */
        while (start < len) {
            if (data[start] == '\n') {
                start++;
            } else if (data[start] == '\r') {
                if (start + 1 == len)
                    break;
                if (data[start + 1] != '\n')
                    FAIL("carriage return without line feed between frames");
                start += 2;
            } else {
                break;
            }
        }
        *used = start;
        if (start == len)
            return FRAME_MORE;
        data += start;
        len -= start;
    }

    if (!p->have_headers) {
        size_t lim = p->lim.max_header_bytes;
        size_t upto = len < lim ? len : lim;
        size_t end = find_header_end(data, p->scan, upto);
        size_t nul_scan = end ? end : upto;
        if (memchr(data + p->scan, '\0', nul_scan - p->scan))
            FAIL("frame ended (NUL) before the blank line after its headers");
        if (!end) {
            if (len >= lim)
                FAIL("frame headers exceed %zu bytes (max-header-bytes)", lim);
            /* Resume a little early: an EOL pair may straddle reads. */
            p->scan = upto > 2 ? upto - 2 : 0;
            return FRAME_MORE;
        }
        int rc = parse_headers(p, data, end, err, errlen);
        if (rc != FRAME_OK)
            return rc;
        p->body_start = end;
        p->has_length = false;
        const char *cl = frame_get(&p->f, "content-length");
        if (cl) {
            size_t n = 0;
            const char *s = cl;
            /* Tolerate surrounding blanks some clients send. */
            while (*s == ' ')
                s++;
            if (!*s)
                FAIL("content-length is empty");
            for (; *s >= '0' && *s <= '9'; s++) {
                if (n > (SIZE_MAX - 9) / 10)
                    FAIL("content-length %.32s is too large", cl);
                n = n * 10 + (size_t)(*s - '0');
            }
            while (*s == ' ')
                s++;
            if (*s)
                FAIL("content-length '%.32s' is not a number", cl);
            if (n > p->lim.max_body)
                FAIL("body of %zu bytes exceeds the %zu-byte limit (max-body)",
                     n, p->lim.max_body);
            p->has_length = true;
            p->length = n;
        }
        p->have_headers = true;
        p->scan = end;
    }

    size_t body_len, frame_len;
    if (p->has_length) {
        size_t need = p->body_start + p->length + 1;
        if (len < need)
            return FRAME_MORE;
        if (data[need - 1] != '\0')
            FAIL("frame body is not followed by NUL after content-length "
                 "%zu bytes", p->length);
        body_len = p->length;
        frame_len = need;
    } else {
        const char *z = memchr(data + p->scan, '\0', len - p->scan);
        if (!z) {
            if (len - p->body_start > p->lim.max_body)
                FAIL("body exceeds the %zu-byte limit (max-body) and has no "
                     "NUL yet", p->lim.max_body);
            p->scan = len;
            return FRAME_MORE;
        }
        body_len = (size_t)(z - data) - p->body_start;
        if (body_len > p->lim.max_body)
            FAIL("body of %zu bytes exceeds the %zu-byte limit (max-body)",
                 body_len, p->lim.max_body);
        frame_len = (size_t)(z - data) + 1;
    }
    p->f.body = data + p->body_start;
    p->f.body_len = body_len;
    *out = p->f;
    *used = start + frame_len;
    p->have_headers = false;
    p->scan = 0;
    return FRAME_OK;
}

/* ------------------------------------------------------------------------
 * Encoder
 * ---------------------------------------------------------------------- */

void frame_begin(buf *b, const char *command)
{
    buf_adds(b, command);
    buf_addc(b, '\n');
}

static void put_escaped(buf *b, int version, const char *s, size_t n)
{
    buf_reserve(b, n * 2);
    char *o = b->p + b->len;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (version < STOMP_11) {
            /* 1.0 has no escapes: keep the frame well-formed at least. */
            *o++ = (c == '\n' || c == '\r') ? ' ' : c;
            continue;
        }
        switch (c) {
        case '\\': *o++ = '\\'; *o++ = '\\'; break;
        case '\n': *o++ = '\\'; *o++ = 'n'; break;
        case ':': *o++ = '\\'; *o++ = 'c'; break;
        case '\r':
            if (version >= STOMP_12) {
                *o++ = '\\';
                *o++ = 'r';
            } else {
                *o++ = ' ';
            }
            break;
        default: *o++ = c; break;
        }
    }
    b->len = (size_t)(o - b->p);
}

void frame_putn(buf *b, int version, const char *name, size_t nlen,
                const char *value, size_t vlen)
{
    put_escaped(b, version, name, nlen);
    buf_addc(b, ':');
    put_escaped(b, version, value, vlen);
    buf_addc(b, '\n');
}

void frame_put(buf *b, int version, const char *name, const char *value)
{
    frame_putn(b, version, name, strlen(name), value, strlen(value));
}

void frame_end(buf *b, const void *body, size_t body_len, bool always_len)
{
    if (body_len || always_len)
        buf_addf(b, "content-length:%zu\n", body_len);
    buf_addc(b, '\n');
    buf_add(b, body, body_len);
    buf_addc(b, '\0');
}
