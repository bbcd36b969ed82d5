/* frame.h - STOMP frames: an incremental parser with limits, and an
 * encoder. No sockets here, so the unit tests drive it with bytes. Shared
 * by mqbroker and libmqclient (the stomp_proto library). */
#ifndef STOMP_FRAME_H
#define STOMP_FRAME_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

typedef enum stomp_cmd {
    CMD_UNKNOWN = 0,
    CMD_CONNECT,
    CMD_STOMP,
    CMD_SEND,
    CMD_SUBSCRIBE,
    CMD_UNSUBSCRIBE,
    CMD_ACK,
    CMD_NACK,
    CMD_BEGIN,
    CMD_COMMIT,
    CMD_ABORT,
    CMD_DISCONNECT,
    CMD_CONNECTED,
    CMD_MESSAGE,
    CMD_RECEIPT,
    CMD_ERROR
} stomp_cmd;

/* Protocol versions as numbers: 10, 11, 12. */
enum { STOMP_10 = 10, STOMP_11 = 11, STOMP_12 = 12 };

typedef struct frame_header {
    const char *name, *value; /* NUL-terminated, unescaped */
    size_t name_len, value_len;
} frame_header;

typedef struct frame {
    stomp_cmd cmd;
    const char *command; /* the command line as sent */
    frame_header *headers;
    size_t nheaders;
    const char *body; /* points into the caller's input */
    size_t body_len;
} frame;

typedef struct frame_limits {
    size_t max_header_bytes; /* command line + headers + blank line */
    size_t max_headers;
    size_t max_body;
} frame_limits;

typedef struct frame_parser {
    frame_limits lim;
    int version; /* decides header unescaping (1.1+) */
    /* Progress through the frame at the front of the input, as offsets
     * from its start so the caller may move its buffer between calls. */
    size_t scan;
    bool have_headers;
    size_t body_start;
    bool has_length;
    size_t length;
    char *arena; /* unescaped command and headers */
    size_t arena_cap;
    frame_header *hdrs;
    size_t hdrs_cap;
    frame f;
} frame_parser;

enum { FRAME_MORE = 0, FRAME_OK = 1, FRAME_ERR = -1 };

void frame_parser_init(frame_parser *p, const frame_limits *lim);
void frame_parser_free(frame_parser *p);

/* Parse the frame at the front of data[0..len). Returns
 *  FRAME_OK:   *out is the frame (valid until the next call, body pointing
 *              into data); *used bytes of data belong to it (with any
 *              heart-beat EOLs before it).
 *  FRAME_MORE: no complete frame yet; *used heart-beat bytes may be dropped.
 *  FRAME_ERR:  malformed or over a limit; err says why. The stream cannot
 *              be resynchronized: close it.
 */
int frame_parse(frame_parser *p, const char *data, size_t len, size_t *used,
                frame *out, char *err, size_t errlen);

/* First value of header `name`, or NULL. */
const char *frame_get(const frame *f, const char *name);

stomp_cmd stomp_cmd_of(const char *s, size_t n);
const char *stomp_cmd_name(stomp_cmd c);

/* Encoder: frame_begin, frame_put* for each header, frame_end. `version`
 * picks the escaping (none for 1.0 and for CONNECT/CONNECTED). */
void frame_begin(buf *b, const char *command);
void frame_put(buf *b, int version, const char *name, const char *value);
void frame_putn(buf *b, int version, const char *name, size_t nlen,
                const char *value, size_t vlen);
/* Adds content-length (when body_len > 0 or always_len), the blank line,
 * the body and the NUL. */
void frame_end(buf *b, const void *body, size_t body_len, bool always_len);

#endif
