/* Unit tests of mqbroker's STOMP frame parser and encoder, and of the
 * helpers and config loading they share (src/broker/frame.c, util.c,
 * config.c). No sockets: bytes in, frames out. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "frame.h"
#include "util.h"

static const frame_limits LIM = {4096, 16, 1024};

typedef struct parsed {
    int rc;
    size_t used;
    frame f;
    char err[256];
} parsed;

static parsed parse1(frame_parser *p, const char *data, size_t len)
{
    parsed r;
    memset(&r, 0, sizeof r);
    r.rc = frame_parse(p, data, len, &r.used, &r.f, r.err, sizeof r.err);
    return r;
}

/* Parse a whole buffer that must hold one frame. */
static parsed parse_one(int version, const char *data, size_t len,
                        frame_parser *p)
{
    frame_parser_init(p, &LIM);
    p->version = version;
    return parse1(p, data, len);
}

#define S(lit) lit, sizeof(lit) - 1

static void t_simple(void **state)
{
    frame_parser p;
    parsed r = parse_one(STOMP_12,
                         S("SEND\ndestination:/queue/a\nx:1\n\nhello\0"), &p);
    assert_int_equal(r.rc, FRAME_OK);
    assert_int_equal(r.f.cmd, CMD_SEND);
    assert_int_equal(r.f.nheaders, 2);
    assert_string_equal(frame_get(&r.f, "destination"), "/queue/a");
    assert_string_equal(frame_get(&r.f, "x"), "1");
    assert_null(frame_get(&r.f, "y"));
    assert_int_equal(r.f.body_len, 5);
    assert_memory_equal(r.f.body, "hello", 5);
    assert_int_equal(r.used, sizeof("SEND\ndestination:/queue/a\nx:1\n\nhello"));
    frame_parser_free(&p);
}

static void t_content_length_nuls(void **state)
{
    frame_parser p;
    parsed r = parse_one(
        STOMP_12, S("SEND\ncontent-length:5\n\na\0b\0c\0NEXT"), &p);
    assert_int_equal(r.rc, FRAME_OK);
    assert_int_equal(r.f.body_len, 5);
    assert_memory_equal(r.f.body, "a\0b\0c", 5);
    assert_int_equal(r.used, 29); /* NEXT stays */
    frame_parser_free(&p);
}

static void t_bytewise_equals_whole(void **state)
{
    static const char in[] =
        "\n\r\nSEND\r\ndestination:/queue/a\r\ncontent-length:3\r\n\r\nab\0"
        "\0\nMESSAGE\nk:v\n\nxyz\0";
    size_t len = sizeof in - 1;
    frame_parser p;
    frame_parser_init(&p, &LIM);
    p.version = STOMP_12;
    /* Feed one more byte each call, as a trickling socket would. */
    buf b = {0};
    size_t fed = 0;
    int frames = 0;
    while (fed < len) {
        buf_add(&b, in + fed++, 1);
        for (;;) {
            parsed r = parse1(&p, buf_data(&b), buf_used(&b));
            assert_int_not_equal(r.rc, FRAME_ERR);
            if (r.rc == FRAME_MORE) {
                buf_consume(&b, r.used);
                break;
            }
            if (frames == 0) {
                assert_int_equal(r.f.cmd, CMD_SEND);
                assert_int_equal(r.f.body_len, 3);
                assert_memory_equal(r.f.body, "ab\0", 3);
                assert_string_equal(frame_get(&r.f, "destination"),
                                    "/queue/a");
            } else {
                assert_int_equal(r.f.cmd, CMD_MESSAGE);
                assert_int_equal(r.f.body_len, 3);
                assert_string_equal(frame_get(&r.f, "k"), "v");
            }
            frames++;
            buf_consume(&b, r.used);
        }
    }
    assert_int_equal(frames, 2);
    buf_free(&b);
    frame_parser_free(&p);
}

static void t_heartbeats_only(void **state)
{
    frame_parser p;
    parsed r = parse_one(STOMP_12, S("\n\n\r\n\n"), &p);
    assert_int_equal(r.rc, FRAME_MORE);
    assert_int_equal(r.used, 5);
    /* A lone CR may be half of a CRLF: wait. */
    r = parse1(&p, S("\n\r"));
    assert_int_equal(r.rc, FRAME_MORE);
    assert_int_equal(r.used, 1);
    r = parse1(&p, S("\rX"));
    assert_int_equal(r.rc, FRAME_ERR);
    frame_parser_free(&p);
}

static void t_escapes(void **state)
{
    frame_parser p;
    parsed r = parse_one(STOMP_12,
                         S("SEND\nk\\cx:a\\nb\\\\c\\rd:e\n\n\0"), &p);
    assert_int_equal(r.rc, FRAME_OK);
    assert_string_equal(r.f.headers[0].name, "k:x");
    assert_string_equal(r.f.headers[0].value, "a\nb\\c\rd:e");
    frame_parser_free(&p);

    /* CONNECT is never unescaped; 1.0 has no escapes at all. */
    r = parse_one(STOMP_12, S("CONNECT\npasscode:a\\cb\n\n\0"), &p);
    assert_int_equal(r.rc, FRAME_OK);
    assert_string_equal(frame_get(&r.f, "passcode"), "a\\cb");
    frame_parser_free(&p);
    r = parse_one(STOMP_10, S("SEND\nk:a\\tb\n\n\0"), &p);
    assert_int_equal(r.rc, FRAME_OK);
    assert_string_equal(frame_get(&r.f, "k"), "a\\tb");
    frame_parser_free(&p);

    r = parse_one(STOMP_12, S("SEND\nk:a\\tb\n\n\0"), &p);
    assert_int_equal(r.rc, FRAME_ERR);
    assert_non_null(strstr(r.err, "\\t"));
    frame_parser_free(&p);
    r = parse_one(STOMP_11, S("SEND\nk:ab\\\n\n\0"), &p);
    assert_int_equal(r.rc, FRAME_ERR);
    frame_parser_free(&p);
}

static void t_repeated_header_first_wins(void **state)
{
    frame_parser p;
    parsed r = parse_one(STOMP_12, S("SEND\nk:1\nk:2\n\n\0"), &p);
    assert_int_equal(r.rc, FRAME_OK);
    assert_string_equal(frame_get(&r.f, "k"), "1");
    assert_int_equal(r.f.nheaders, 2);
    frame_parser_free(&p);
}

static void expect_err(int version, const char *data, size_t len,
                       const char *needle)
{
    frame_parser p;
    parsed r = parse_one(version, data, len, &p);
    assert_int_equal(r.rc, FRAME_ERR);
    if (!strstr(r.err, needle))
        fail_msg("error '%s' does not mention '%s'", r.err, needle);
    frame_parser_free(&p);
}

static void t_malformed(void **state)
{
    expect_err(STOMP_12, S("SEND\nnocolon\n\n\0"), "colon");
    expect_err(STOMP_12, S("SEND\n:v\n\n\0"), "empty name");
    expect_err(STOMP_12, S("SEND\nk:\xff\n\n\0"), "UTF-8");
    expect_err(STOMP_12, S("SE\xc0\xafND\n\n\0"), "UTF-8"); /* overlong */
    expect_err(STOMP_12, S("SEND\nk:v\0\n\n"), "NUL");
    expect_err(STOMP_12, S("SEND\ncontent-length:abc\n\n\0"), "not a number");
    expect_err(STOMP_12, S("SEND\ncontent-length:\n\n\0"), "empty");
    expect_err(STOMP_12, S("SEND\ncontent-length:2\n\nabc\0"), "NUL");
    expect_err(STOMP_12, S("SEND\ncontent-length:99999999999999999999999\n\n"),
               "too large");
}

static void t_limits(void **state)
{
    /* Body over max-body, announced and not. */
    expect_err(STOMP_12, S("SEND\ncontent-length:1025\n\n"), "max-body");
    char big[2048];
    memcpy(big, "SEND\n\n", 6);
    memset(big + 6, 'a', sizeof big - 6);
    expect_err(STOMP_12, big, sizeof big, "max-body");
    /* Exactly max-body is fine. */
    char ok[6 + 1024 + 1];
    memcpy(ok, "SEND\n\n", 6);
    memset(ok + 6, 'a', 1024);
    ok[sizeof ok - 1] = '\0';
    frame_parser p;
    parsed r = parse_one(STOMP_12, ok, sizeof ok, &p);
    assert_int_equal(r.rc, FRAME_OK);
    assert_int_equal(r.f.body_len, 1024);
    frame_parser_free(&p);

    /* Too many headers. */
    buf b = {0};
    buf_adds(&b, "SEND\n");
    for (int i = 0; i < 17; i++)
        buf_addf(&b, "h%d:v\n", i);
    buf_adds(&b, "\n");
    buf_addc(&b, '\0');
    expect_err(STOMP_12, buf_data(&b), buf_used(&b), "max-headers");
    buf_free(&b);

    /* Header section over max-header-bytes, complete or still growing. */
    char hdr[5000];
    memcpy(hdr, "SEND\nk:", 7);
    memset(hdr + 7, 'x', sizeof hdr - 7);
    expect_err(STOMP_12, hdr, sizeof hdr, "max-header-bytes");
    r = parse_one(STOMP_12, hdr, 4000, &p);
    assert_int_equal(r.rc, FRAME_MORE);
    frame_parser_free(&p);
}

static void t_commands(void **state)
{
    assert_int_equal(stomp_cmd_of(S("SEND")), CMD_SEND);
    assert_int_equal(stomp_cmd_of(S("DISCONNECT")), CMD_DISCONNECT);
    assert_int_equal(stomp_cmd_of(S("send")), CMD_UNKNOWN);
    assert_int_equal(stomp_cmd_of(S("SENDX")), CMD_UNKNOWN);
    assert_string_equal(stomp_cmd_name(CMD_NACK), "NACK");
    frame_parser p;
    parsed r = parse_one(STOMP_12, S("BOGUS\n\n\0"), &p);
    assert_int_equal(r.rc, FRAME_OK);
    assert_int_equal(r.f.cmd, CMD_UNKNOWN);
    assert_string_equal(r.f.command, "BOGUS");
    frame_parser_free(&p);
}

static void t_encode_roundtrip(void **state)
{
    static const char val[] = "a:b\nc\\d\re";
    for (int v = STOMP_11; v <= STOMP_12; v++) {
        buf b = {0};
        frame_begin(&b, "MESSAGE");
        frame_put(&b, v, "we:ird", val);
        frame_end(&b, "x\0y", 3, true);
        frame_parser p;
        parsed r = parse_one(v, buf_data(&b), buf_used(&b), &p);
        assert_int_equal(r.rc, FRAME_OK);
        assert_int_equal(r.used, buf_used(&b));
        assert_string_equal(r.f.headers[0].name, "we:ird");
        /* 1.1 has no \r escape: a CR is sent as a blank there. */
        assert_string_equal(r.f.headers[0].value,
                            v == STOMP_12 ? val : "a:b\nc\\d e");
        assert_int_equal(r.f.body_len, 3);
        assert_memory_equal(r.f.body, "x\0y", 3);
        frame_parser_free(&p);
        buf_free(&b);
    }
    /* 1.0: no escapes, but the frame stays well-formed. */
    buf b = {0};
    frame_begin(&b, "MESSAGE");
    frame_put(&b, STOMP_10, "k", "a\nb");
    frame_end(&b, NULL, 0, false);
    assert_int_equal(buf_used(&b), strlen("MESSAGE\nk:a b\n\n") + 1);
    buf_free(&b);
}

static void t_utf8(void **state)
{
    assert_true(utf8_valid(S("plain")));
    assert_true(utf8_valid(S("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80")));
    assert_false(utf8_valid(S("\xc3")));             /* truncated */
    assert_false(utf8_valid(S("\xe0\x80\x80")));     /* overlong */
    assert_false(utf8_valid(S("\xed\xa0\x80")));     /* surrogate */
    assert_false(utf8_valid(S("\xf4\x90\x80\x80"))); /* > U+10FFFF */
    assert_false(utf8_valid("a\0b", 3));
}

static void t_idmap(void **state)
{
    idmap m = {0};
    enum { N = 5000 };
    static char vals[N];
    for (uint64_t i = 1; i <= N; i++)
        idmap_put(&m, i * 7919, &vals[i - 1]);
    assert_int_equal(m.n, N);
    /* Delete every other key, then check all: backward shifting must keep
     * the survivors reachable. */
    for (uint64_t i = 1; i <= N; i += 2)
        idmap_del(&m, i * 7919);
    for (uint64_t i = 1; i <= N; i++) {
        void *v = idmap_get(&m, i * 7919);
        if (i % 2)
            assert_null(v);
        else
            assert_ptr_equal(v, &vals[i - 1]);
    }
    assert_null(idmap_get(&m, 0));
    idmap_del(&m, 12345); /* absent: no-op */
    assert_int_equal(m.n, N / 2);
    idmap_free(&m);
}

static char *write_tmp(const char *text)
{
    char *path = strdup("/tmp/mqbroker-conf-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void t_config(void **state)
{
    char *path = write_tmp("# comment\n"
                           "store = sqlite:///tmp/x.db?cluster=c%2F1#x\n"
                           "listen = 127.0.0.1:7000   # trailing\n"
                           "prefetch = 7\n"
                           "max-out-buffer = 1m\n"
                           "heartbeat = 100,200\n");
    char *argv[] = {"mqbroker", "--config", path, "--prefetch=9",
                    "--log-level", "debug", NULL};
    config c;
    assert_int_equal(config_load(&c, 6, argv), CONFIG_OK);
    assert_string_equal(c.store, "sqlite:///tmp/x.db?cluster=c%2F1#x");
    assert_string_equal(c.listen_host, "127.0.0.1");
    assert_string_equal(c.listen_port, "7000");
    assert_int_equal(c.prefetch, 9); /* command line wins */
    assert_int_equal(c.max_out_buffer, 1 << 20);
    assert_int_equal(c.hb_send_ms, 100);
    assert_int_equal(c.hb_recv_ms, 200);
    assert_int_equal(c.log_level, LOG_DEBUG);
    assert_int_equal(c.max_body, 4194304); /* default */
    char *cl = config_store_cluster(c.store);
    assert_string_equal(cl, "c/1#x");
    free(cl);
    config_free(&c);
    unlink(path);
    free(path);

    cl = config_store_cluster("sqlite:///a.db");
    assert_string_equal(cl, "default");
    free(cl);
    /* The key decoded as the store decodes it when it opens. */
    cl = config_store_cluster("sqlite:///a.db?synchronous=full&clus%74er=c2");
    assert_string_equal(cl, "c2");
    free(cl);

    char *bad1[] = {"mqbroker", "--store", "s", "--listen", "nohost", NULL};
    assert_int_equal(config_load(&c, 5, bad1), CONFIG_ERROR);
    config_free(&c);
    char *bad2[] = {"mqbroker", "--prefetch", "5", NULL}; /* no store */
    assert_int_equal(config_load(&c, 3, bad2), CONFIG_ERROR);
    config_free(&c);
    char *bad3[] = {"mqbroker", "--store", "s", "--bogus", "1", NULL};
    assert_int_equal(config_load(&c, 5, bad3), CONFIG_ERROR);
    config_free(&c);
    char *bad4[] = {"mqbroker", "--store", "s", "--heartbeat", "10", NULL};
    assert_int_equal(config_load(&c, 5, bad4), CONFIG_ERROR);
    config_free(&c);
    char *v6[] = {"mqbroker", "--store", "s", "--listen", "[::1]:61613",
                  NULL};
    assert_int_equal(config_load(&c, 5, v6), CONFIG_OK);
    assert_string_equal(c.listen_host, "::1");
    config_free(&c);

    path = write_tmp("store = s\nnot-an-option = 1\n");
    char *argv2[] = {"mqbroker", "--config", path, NULL};
    assert_int_equal(config_load(&c, 3, argv2), CONFIG_ERROR);
    config_free(&c);
    unlink(path);
    free(path);
}

int main(void)
{
    g_log_level = LOG_ERROR;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_simple),
        cmocka_unit_test(t_content_length_nuls),
        cmocka_unit_test(t_bytewise_equals_whole),
        cmocka_unit_test(t_heartbeats_only),
        cmocka_unit_test(t_escapes),
        cmocka_unit_test(t_repeated_header_first_wins),
        cmocka_unit_test(t_malformed),
        cmocka_unit_test(t_limits),
        cmocka_unit_test(t_commands),
        cmocka_unit_test(t_encode_roundtrip),
        cmocka_unit_test(t_utf8),
        cmocka_unit_test(t_idmap),
        cmocka_unit_test(t_config),
    };
    return cmocka_run_group_tests_name("mqbroker", tests, NULL, NULL);
}
