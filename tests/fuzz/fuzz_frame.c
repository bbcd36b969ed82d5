/* fuzz_frame.c - libFuzzer target for the STOMP frame parser shared by
 * mqbroker and libmqclient (src/stomp/frame.c).
 *
 * The input is fed the way a socket delivers it: in chunks whose sizes
 * come from the input's first byte, parsing after each chunk and dropping
 * consumed bytes, so incremental states (a header split across reads, a
 * body arriving late) are explored as well as whole frames. Every parsed
 * frame is checked against the parser's contract and re-encoded. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_frame(const frame *f)
{
    if (!f->command)
        abort();
    for (size_t i = 0; i < f->nheaders; i++)
        if (!f->headers[i].name || !f->headers[i].value ||
            strlen(f->headers[i].name) != f->headers[i].name_len)
            abort();
    /* Encoding what was parsed must not crash either. */
    buf b = {0};
    frame_begin(&b, f->command);
    for (size_t i = 0; i < f->nheaders; i++)
        frame_putn(&b, STOMP_12, f->headers[i].name, f->headers[i].name_len,
                   f->headers[i].value, f->headers[i].value_len);
    frame_end(&b, f->body, f->body_len, false);
    buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t chunk = (size_t)data[0] % 64 + 1;
    int version = data[1] % 3 == 0 ? STOMP_10 : data[1] % 3 == 1 ? STOMP_11
                                                                 : STOMP_12;
    data += 2;
    size -= 2;
    frame_limits lim = {4096, 64, 65536};
    frame_parser p;
    frame_parser_init(&p, &lim);
    p.version = version;
    buf in = {0};
    size_t off = 0;
    while (off < size) {
        size_t n = size - off < chunk ? size - off : chunk;
        buf_add(&in, data + off, n);
        off += n;
        for (;;) {
            frame f;
            size_t used = 0;
            char err[256];
            int rc = frame_parse(&p, buf_data(&in), buf_used(&in), &used, &f,
                                 err, sizeof err);
            if (used > buf_used(&in))
                abort();
            if (rc == FRAME_ERR) {
                if (!err[0])
                    abort(); /* an error always says why */
                goto done;
            }
            if (rc == FRAME_MORE) {
                buf_consume(&in, used);
                break;
            }
            check_frame(&f);
            buf_consume(&in, used);
        }
    }
done:
    buf_free(&in);
    frame_parser_free(&p);
    return 0;
}
