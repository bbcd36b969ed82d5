/* t_uri.c - libmqclient's URI model (src/client/uri.c): every option's
 * default and parsing, the errors for each kind of bad input, nested.*,
 * IPv6, broker lists and files, the back-off schedules, and a bounded
 * fuzz loop (run it under ASan: build with -DMQS_SANITIZE=ON). */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "uri.h"

static char err[1024];

static void parse_ok(const char *uri, mqc_config *c)
{
    err[0] = '\0';
    int rc = mqc__uri_parse(uri, c, err, sizeof err);
    if (rc != 0)
        fail_msg("parsing '%s' failed: %s", uri, err);
    assert_true(c->nservers >= 1);
    assert_non_null(c->servers);
}

/* Expect a failure whose message contains every string of the NULL-ended
 * list, and a config left with nothing to free. */
static void parse_bad_(const char *uri, ...)
{
    mqc_config c;
    memset(&c, 0x5a, sizeof c); /* must be zeroed by the parser */
    err[0] = '\0';
    int rc = mqc__uri_parse(uri, &c, err, sizeof err);
    if (rc != -1)
        fail_msg("parsing '%s' should fail (rc %d)", uri ? uri : "(null)",
                 rc);
    assert_null(c.servers);
    assert_int_equal(c.nservers, 0);
    assert_null(c.nested);
    assert_null(c.update_uris_url);
    assert_null(c.redelivery.dlq_prefix);
    va_list ap;
    va_start(ap, uri);
    const char *want;
    while ((want = va_arg(ap, const char *)) != NULL)
        if (!strstr(err, want))
            fail_msg("error for '%s' is \"%s\": lacks \"%s\"", uri, err, want);
    va_end(ap);
}
#define parse_bad(...) parse_bad_(__VA_ARGS__, (const char *)NULL)

static void check_server_defaults(const mqc_server *s)
{
    assert_int_equal(s->connect_timeout_ms, 0);
    assert_int_equal(s->hb_send_ms, 10000);
    assert_int_equal(s->hb_recv_ms, 10000);
    assert_true(s->max_frame_bytes == (size_t)64 * 1024 * 1024);
}

static void check_config_defaults(const mqc_config *c)
{
    assert_int_equal(c->initial_reconnect_delay_ms, 10);
    assert_int_equal(c->max_reconnect_delay_ms, 30000);
    assert_true(c->use_exponential_backoff);
    assert_true(c->reconnect_delay_exponent == 2.0);
    assert_int_equal(c->max_reconnect_attempts, 0);
    assert_int_equal(c->startup_max_reconnect_attempts, 0);
    assert_true(c->randomize);
    assert_false(c->backup);
    assert_int_equal(c->backup_pool_size, 1);
    assert_int_equal(c->timeout_ms, -1);
    assert_false(c->track_messages);
    assert_true(c->max_cache_size == 131072);
    assert_true(c->update_uris_supported);
    assert_null(c->update_uris_url);
    assert_int_equal(c->warn_after_reconnect_attempts, 10);
    assert_true(c->reconnect_supported);
    assert_false(c->priority_backup);
    assert_false(c->use_async_send);
    assert_int_equal(c->redelivery.maximum_redeliveries, 6);
    assert_int_equal(c->redelivery.initial_redelivery_delay_ms, 1000);
    assert_int_equal(c->redelivery.redelivery_delay_ms, 1000);
    assert_false(c->redelivery.use_exponential_backoff);
    assert_true(c->redelivery.backoff_multiplier == 5.0);
    assert_int_equal(c->redelivery.maximum_redelivery_delay_ms, -1);
    assert_string_equal(c->redelivery.dlq_prefix, "/queue/DLQ.");
    assert_null(c->nested);
}

/* ------------------------------------------------------------------------ */

static void test_plain_defaults(void **state)
{
    (void)state;
    mqc_config c;
    parse_ok("tcp://localhost", &c);
    assert_false(c.failover);
    assert_int_equal(c.nservers, 1);
    assert_string_equal(c.servers[0].host, "localhost");
    assert_int_equal(c.servers[0].port, 61613);
    assert_string_equal(c.servers[0].uri, "tcp://localhost:61613");
    check_server_defaults(&c.servers[0]);
    check_config_defaults(&c);
    mqc__config_free(&c);
    assert_null(c.servers);

    /* stomp:// is an alias; schemes are case-insensitive; a trailing '/'
     * and surrounding spaces are tolerated */
    parse_ok("  STOMP://Broker-1.example.org:61999/ ", &c);
    assert_string_equal(c.servers[0].uri, "tcp://Broker-1.example.org:61999");
    assert_int_equal(c.servers[0].port, 61999);
    mqc__config_free(&c);
    mqc__config_free(NULL);
}

static void test_failover_defaults(void **state)
{
    (void)state;
    mqc_config c;
    parse_ok("failover:(tcp://a:1,tcp://b:2)", &c);
    assert_true(c.failover);
    assert_int_equal(c.nservers, 2);
    assert_string_equal(c.servers[0].uri, "tcp://a:1");
    assert_string_equal(c.servers[1].uri, "tcp://b:2");
    check_server_defaults(&c.servers[0]);
    check_server_defaults(&c.servers[1]);
    check_config_defaults(&c);
    mqc__config_free(&c);

    /* failover://(...) and a single broker */
    parse_ok("failover://(tcp://a)", &c);
    assert_true(c.failover);
    assert_int_equal(c.nservers, 1);
    assert_string_equal(c.servers[0].uri, "tcp://a:61613");
    mqc__config_free(&c);

    /* spaces around list items; duplicates collapse */
    parse_ok("failover:( tcp://a:1 , tcp://b:2,tcp://a:1 )", &c);
    assert_int_equal(c.nservers, 2);
    mqc__config_free(&c);
}

static void test_seed_uri(void **state)
{
    (void)state;
    mqc_config c;
    parse_ok("failover:(tcp://192.168.249.200:61616,tcp://192.168.249.201:"
             "61616)?randomize=false&timeout=3000&backup=true&"
             "warnAfterReconnectAttempts=1",
             &c);
    assert_true(c.failover);
    assert_int_equal(c.nservers, 2);
    assert_string_equal(c.servers[0].host, "192.168.249.200");
    assert_int_equal(c.servers[0].port, 61616);
    assert_string_equal(c.servers[0].uri, "tcp://192.168.249.200:61616");
    assert_string_equal(c.servers[1].uri, "tcp://192.168.249.201:61616");
    assert_false(c.randomize);
    assert_int_equal(c.timeout_ms, 3000);
    assert_true(c.backup);
    assert_int_equal(c.warn_after_reconnect_attempts, 1);
    /* the rest stays at its default */
    assert_int_equal(c.initial_reconnect_delay_ms, 10);
    assert_int_equal(c.backup_pool_size, 1);
    assert_int_equal(c.max_reconnect_attempts, 0);
    check_server_defaults(&c.servers[1]);
    mqc__config_free(&c);
}

/* Every option set away from its default, in one URI. */
static void test_every_option(void **state)
{
    (void)state;
    mqc_config c;
    parse_ok("failover:(tcp://a:1?connectTimeout=250&heartbeat=0,5000&"
             "maxFrameSize=1048576,tcp://b)?"
             "initialReconnectDelay=100&maxReconnectDelay=5000&"
             "useExponentialBackOff=false&reconnectDelayExponent=1.5&"
             "maxReconnectAttempts=7&startupMaxReconnectAttempts=3&"
             "randomize=false&backup=true&backupPoolSize=2&timeout=0&"
             "trackMessages=true&maxCacheSize=4096&"
             "updateURIsSupported=false&updateURIsURL=file:///tmp/b.txt&"
             "warnAfterReconnectAttempts=0&reconnectSupported=false&"
             "priorityBackup=true&jms.useAsyncSend=true&"
             "jms.redeliveryPolicy.maximumRedeliveries=-1&"
             "jms.redeliveryPolicy.initialRedeliveryDelay=500&"
             "jms.redeliveryPolicy.redeliveryDelay=700&"
             "jms.redeliveryPolicy.useExponentialBackOff=true&"
             "jms.redeliveryPolicy.backOffMultiplier=2&"
             "jms.redeliveryPolicy.maximumRedeliveryDelay=60000&"
             "jms.redeliveryPolicy.deadLetterPrefix=/queue/DEAD.",
             &c);
    assert_int_equal(c.initial_reconnect_delay_ms, 100);
    assert_int_equal(c.max_reconnect_delay_ms, 5000);
    assert_false(c.use_exponential_backoff);
    assert_true(c.reconnect_delay_exponent == 1.5);
    assert_int_equal(c.max_reconnect_attempts, 7);
    assert_int_equal(c.startup_max_reconnect_attempts, 3);
    assert_false(c.randomize);
    assert_true(c.backup);
    assert_int_equal(c.backup_pool_size, 2);
    assert_int_equal(c.timeout_ms, 0);
    assert_true(c.track_messages);
    assert_true(c.max_cache_size == 4096);
    assert_false(c.update_uris_supported);
    assert_string_equal(c.update_uris_url, "file:///tmp/b.txt");
    assert_int_equal(c.warn_after_reconnect_attempts, 0);
    assert_false(c.reconnect_supported);
    assert_true(c.priority_backup);
    assert_true(c.use_async_send);
    assert_int_equal(c.redelivery.maximum_redeliveries, -1);
    assert_int_equal(c.redelivery.initial_redelivery_delay_ms, 500);
    assert_int_equal(c.redelivery.redelivery_delay_ms, 700);
    assert_true(c.redelivery.use_exponential_backoff);
    assert_true(c.redelivery.backoff_multiplier == 2.0);
    assert_int_equal(c.redelivery.maximum_redelivery_delay_ms, 60000);
    assert_string_equal(c.redelivery.dlq_prefix, "/queue/DEAD.");
    assert_null(c.nested);
    assert_int_equal(c.nservers, 2);
    assert_int_equal(c.servers[0].connect_timeout_ms, 250);
    assert_int_equal(c.servers[0].hb_send_ms, 0);
    assert_int_equal(c.servers[0].hb_recv_ms, 5000);
    assert_true(c.servers[0].max_frame_bytes == 1048576);
    check_server_defaults(&c.servers[1]);
    mqc__config_free(&c);

    /* a later repeat of a key wins; negative counts where they mean
     * something; jms.* on a plain tcp:// URI */
    parse_ok("failover:(tcp://a)?timeout=5&timeout=6&maxReconnectAttempts=-1&"
             "warnAfterReconnectAttempts=-3&"
             "startupMaxReconnectAttempts=-1",
             &c);
    assert_int_equal(c.timeout_ms, 6);
    assert_int_equal(c.max_reconnect_attempts, -1);
    assert_int_equal(c.startup_max_reconnect_attempts, -1);
    assert_int_equal(c.warn_after_reconnect_attempts, -3);
    mqc__config_free(&c);

    parse_ok("tcp://h:2?connectTimeout=10&jms.useAsyncSend=true&"
             "jms.redeliveryPolicy.maximumRedeliveries=0&heartbeat=1,2",
             &c);
    assert_false(c.failover);
    assert_true(c.use_async_send);
    assert_int_equal(c.redelivery.maximum_redeliveries, 0);
    assert_int_equal(c.servers[0].connect_timeout_ms, 10);
    assert_int_equal(c.servers[0].hb_send_ms, 1);
    assert_int_equal(c.servers[0].hb_recv_ms, 2);
    mqc__config_free(&c);
}

static void test_without_parentheses(void **state)
{
    (void)state;
    mqc_config c;
    /* the query after the last URI is the failover's */
    parse_ok("failover:tcp://a:1,tcp://b:2?randomize=false&timeout=100", &c);
    assert_true(c.failover);
    assert_int_equal(c.nservers, 2);
    assert_string_equal(c.servers[1].uri, "tcp://b:2");
    assert_false(c.randomize);
    assert_int_equal(c.timeout_ms, 100);
    mqc__config_free(&c);

    /* ... while a query on an earlier URI stays that broker's */
    parse_ok("failover:tcp://a:1?connectTimeout=5,tcp://b:2?"
             "nested.heartbeat=3,4&maxReconnectAttempts=2",
             &c);
    assert_int_equal(c.nservers, 2);
    assert_int_equal(c.servers[0].connect_timeout_ms, 5);
    assert_int_equal(c.servers[1].connect_timeout_ms, 0);
    assert_int_equal(c.servers[0].hb_send_ms, 3);
    assert_int_equal(c.servers[1].hb_recv_ms, 4);
    assert_int_equal(c.max_reconnect_attempts, 2);
    mqc__config_free(&c);

    parse_ok("failover:tcp://only", &c);
    assert_int_equal(c.nservers, 1);
    check_config_defaults(&c);
    mqc__config_free(&c);

    /* the options of the failover URI are not parsed as a broker's */
    parse_bad("failover:tcp://a,tcp://b?connectTimeout=5",
              "connectTimeout", "belongs to each broker URI");
}

static void test_heartbeat_comma_in_list(void **state)
{
    (void)state;
    mqc_config c;
    parse_ok("failover:(tcp://a?heartbeat=1000,2000,tcp://b?heartbeat=0,0)",
             &c);
    assert_int_equal(c.nservers, 2);
    assert_int_equal(c.servers[0].hb_send_ms, 1000);
    assert_int_equal(c.servers[0].hb_recv_ms, 2000);
    assert_int_equal(c.servers[1].hb_send_ms, 0);
    assert_int_equal(c.servers[1].hb_recv_ms, 0);
    mqc__config_free(&c);

    /* %2C works as well */
    parse_ok("tcp://a?heartbeat=7%2C8", &c);
    assert_int_equal(c.servers[0].hb_send_ms, 7);
    assert_int_equal(c.servers[0].hb_recv_ms, 8);
    mqc__config_free(&c);
}

static void test_ipv6(void **state)
{
    (void)state;
    mqc_config c;
    parse_ok("tcp://[::1]:61613", &c);
    assert_string_equal(c.servers[0].host, "::1");
    assert_int_equal(c.servers[0].port, 61613);
    assert_string_equal(c.servers[0].uri, "tcp://[::1]:61613");
    mqc__config_free(&c);

    parse_ok("failover:(tcp://[fe80::1%25eth0]:1,tcp://[2001:db8::7],"
             "tcp://[::ffff:10.0.0.1]:9?connectTimeout=3)",
             &c);
    assert_int_equal(c.nservers, 3);
    assert_string_equal(c.servers[0].host, "fe80::1%eth0");
    assert_string_equal(c.servers[0].uri, "tcp://[fe80::1%25eth0]:1");
    assert_string_equal(c.servers[1].host, "2001:db8::7");
    assert_int_equal(c.servers[1].port, 61613);
    assert_string_equal(c.servers[1].uri, "tcp://[2001:db8::7]:61613");
    assert_string_equal(c.servers[2].host, "::ffff:10.0.0.1");
    assert_int_equal(c.servers[2].connect_timeout_ms, 3);
    mqc__config_free(&c);

    parse_bad("tcp://::1:61613", "in brackets");
    parse_bad("tcp://[::1", "missing ']'");
    parse_bad("tcp://[]:1", "bad IPv6 address");
    parse_bad("tcp://[zz::1]:1", "bad IPv6 address");
    parse_bad("tcp://[::1]x", "expected ':port'");
}

static void test_nested(void **state)
{
    (void)state;
    mqc_config c;
    parse_ok("failover:(tcp://a?connectTimeout=7,tcp://b)?"
             "nested.connectTimeout=500&nested.heartbeat=0,0&randomize=false",
             &c);
    assert_int_equal(c.nservers, 2);
    /* an option on the inner URI wins over nested.* */
    assert_int_equal(c.servers[0].connect_timeout_ms, 7);
    assert_int_equal(c.servers[1].connect_timeout_ms, 500);
    assert_int_equal(c.servers[0].hb_send_ms, 0);
    assert_int_equal(c.servers[1].hb_recv_ms, 0);
    assert_false(c.randomize);
    assert_string_equal(c.nested, "connectTimeout=500&heartbeat=0,0");

    /* re-applied to URIs learned later */
    mqc_server s;
    assert_int_equal(mqc__server_parse(&c, "tcp://c:3", &s, err, sizeof err),
                     0);
    assert_int_equal(s.connect_timeout_ms, 500);
    assert_int_equal(s.hb_send_ms, 0);
    mqc__server_free(&s);
    assert_int_equal(
        mqc__server_parse(&c, "c:4?connectTimeout=9", &s, err, sizeof err), 0);
    assert_string_equal(s.uri, "tcp://c:4");
    assert_int_equal(s.connect_timeout_ms, 9);
    assert_int_equal(s.hb_recv_ms, 0);
    mqc__server_free(&s);
    /* without a config: plain defaults */
    assert_int_equal(mqc__server_parse(NULL, "d", &s, err, sizeof err), 0);
    assert_string_equal(s.uri, "tcp://d:61613");
    check_server_defaults(&s);
    mqc__server_free(&s);
    mqc__server_free(NULL);

    mqc_server *list;
    size_t n;
    assert_int_equal(mqc__server_list_parse(&c, "tcp://x:1,tcp://y:2?"
                                                "connectTimeout=1",
                                            &list, &n, err, sizeof err),
                     0);
    assert_int_equal(n, 2);
    assert_int_equal(list[0].connect_timeout_ms, 500);
    assert_int_equal(list[1].connect_timeout_ms, 1);
    for (size_t i = 0; i < n; i++)
        mqc__server_free(&list[i]);
    free(list);
    mqc__config_free(&c);

    /* nested.* is stored decoded, re-encoded where needed */
    parse_ok("failover:(tcp://a)?%6Eested.heartbeat=1%2C2", &c);
    assert_string_equal(c.nested, "heartbeat=1,2");
    assert_int_equal(c.servers[0].hb_send_ms, 1);
    assert_int_equal(c.servers[0].hb_recv_ms, 2);
    mqc__config_free(&c);

    parse_bad("failover:(tcp://a)?nested.foo=1",
              "unknown option 'nested.foo'");
    parse_bad("failover:(tcp://a)?nested.conectTimeout=1",
              "'nested.conectTimeout'", "did you mean nested.connectTimeout?");
    parse_bad("failover:(tcp://a)?nested.connectTimeout=x",
              "bad value 'x' for nested.connectTimeout");
    parse_bad("failover:(tcp://a)?nested.randomize=true",
              "unknown option 'nested.randomize'");
    parse_bad("tcp://a?nested.connectTimeout=1",
              "unknown option 'nested.connectTimeout'");
}

static void test_percent_decoding(void **state)
{
    (void)state;
    mqc_config c;
    parse_ok("failover:(tcp://a)?updateURIsURL=%2Ftmp%2Fa%20b.txt&"
             "jms.redeliveryPolicy.deadLetterPrefix=%2Fqueue%2FDEAD%2e&"
             "%74imeout=42",
             &c);
    assert_string_equal(c.update_uris_url, "/tmp/a b.txt");
    assert_string_equal(c.redelivery.dlq_prefix, "/queue/DEAD.");
    assert_int_equal(c.timeout_ms, 42);
    mqc__config_free(&c);

    /* empty pairs are skipped */
    parse_ok("failover:(tcp://a)?&randomize=false&&", &c);
    assert_false(c.randomize);
    mqc__config_free(&c);
    parse_ok("failover:(tcp://a)?", &c);
    check_config_defaults(&c);
    mqc__config_free(&c);

    parse_bad("failover:(tcp://a)?timeout=%zz",
              "bad percent-escape in the value of timeout '%zz'");
    parse_bad("failover:(tcp://a)?timeout=5%", "bad percent-escape");
    parse_bad("failover:(tcp://a)?timeout=5%0", "bad percent-escape");
    parse_bad("failover:(tcp://a)?timeout=5%00", "%00");
    /* a decoded space is junk in an integer */
    parse_bad("failover:(tcp://a)?timeout=%205", "bad value ' 5' for timeout");
}

/* One bad input of each kind: the message names the key or value. */
static void test_errors(void **state)
{
    (void)state;
    /* unknown keys, with a suggestion when close */
    parse_bad("failover:(tcp://a)?randomise=false",
              "unknown option 'randomise' in failover URI",
              "(did you mean randomize?)");
    parse_bad("failover:(tcp://a)?Randomize=false", "'Randomize'",
              "did you mean randomize?");
    parse_bad("failover:(tcp://a)?useExponentialBackoff=true",
              "did you mean useExponentialBackOff?");
    parse_bad("failover:(tcp://a)?jms.redeliveryPolicy.maxRedeliveries=3",
              "did you mean jms.redeliveryPolicy.maximumRedeliveries?");
    parse_bad("failover:(tcp://a)?frobnicate=1",
              "unknown option 'frobnicate'", "docs/client.md");
    parse_bad("tcp://a?conectTimeout=5", "unknown option 'conectTimeout'",
              "in broker URI 'tcp://a:61613'",
              "did you mean connectTimeout?");

    /* options in the wrong place */
    parse_bad("failover:(tcp://a)?connectTimeout=5", "'connectTimeout'",
              "belongs to each broker URI", "nested.connectTimeout");
    parse_bad("tcp://a?randomize=false", "'randomize'",
              "is a failover option", "failover:(tcp://host:port)");
    parse_bad("failover:(tcp://a?timeout=5)", "'timeout'",
              "belongs to the failover URI");
    parse_bad("failover:(tcp://a?jms.useAsyncSend=true)",
              "'jms.useAsyncSend'", "belongs to the failover URI");

    /* booleans: true/false only */
    parse_bad("failover:(tcp://a)?randomize=yes",
              "bad value 'yes' for randomize", "true or false");
    parse_bad("failover:(tcp://a)?backup=TRUE", "'TRUE' for backup");
    parse_bad("failover:(tcp://a)?trackMessages=", "'' for trackMessages");
    parse_bad("failover:(tcp://a)?jms.useAsyncSend=1",
              "for jms.useAsyncSend");

    /* integers: junk, overflow, negatives where meaningless */
    parse_bad("failover:(tcp://a)?timeout=abc",
              "bad value 'abc' for timeout", "expected an integer in ms");
    parse_bad("failover:(tcp://a)?timeout=10ms", "'10ms' for timeout");
    parse_bad("failover:(tcp://a)?timeout=+5", "'+5' for timeout");
    parse_bad("failover:(tcp://a)?timeout=-2", "'-2' for timeout");
    parse_bad("failover:(tcp://a)?timeout=99999999999999999999",
              "for timeout");
    parse_bad("failover:(tcp://a)?timeout=2147483648", "for timeout");
    parse_bad("failover:(tcp://a)?initialReconnectDelay=-5",
              "'-5' for initialReconnectDelay", ">= 0");
    parse_bad("failover:(tcp://a)?maxReconnectDelay=-1",
              "for maxReconnectDelay");
    parse_bad("failover:(tcp://a)?maxReconnectAttempts=-2",
              "for maxReconnectAttempts");
    parse_bad("failover:(tcp://a)?startupMaxReconnectAttempts=x",
              "for startupMaxReconnectAttempts");
    parse_bad("failover:(tcp://a)?backupPoolSize=-1", "for backupPoolSize");
    parse_bad("failover:(tcp://a)?maxCacheSize=0", "for maxCacheSize");
    parse_bad("failover:(tcp://a)?warnAfterReconnectAttempts=1.5",
              "for warnAfterReconnectAttempts");
    parse_bad("tcp://a?connectTimeout=-1", "'-1' for connectTimeout");
    parse_bad("tcp://a?maxFrameSize=0", "'0' for maxFrameSize");
    parse_bad("tcp://a?heartbeat=1000", "'1000' for heartbeat",
              "heartbeat=10000,10000");
    parse_bad("tcp://a?heartbeat=1,x", "for heartbeat");
    parse_bad("tcp://a?heartbeat=,1", "for heartbeat");
    parse_bad("tcp://a?heartbeat=-1,1", "for heartbeat");
    parse_bad("failover:(tcp://a)?jms.redeliveryPolicy.maximumRedeliveries=-2",
              "for jms.redeliveryPolicy.maximumRedeliveries");
    parse_bad("failover:(tcp://a)?"
              "jms.redeliveryPolicy.maximumRedeliveryDelay=-5",
              "for jms.redeliveryPolicy.maximumRedeliveryDelay");

    /* doubles */
    parse_bad("failover:(tcp://a)?reconnectDelayExponent=nan",
              "'nan' for reconnectDelayExponent");
    parse_bad("failover:(tcp://a)?reconnectDelayExponent=0.5",
              "for reconnectDelayExponent", ">= 1.0");
    parse_bad("failover:(tcp://a)?reconnectDelayExponent=2x",
              "for reconnectDelayExponent");
    parse_bad("failover:(tcp://a)?jms.redeliveryPolicy.backOffMultiplier=inf",
              "for jms.redeliveryPolicy.backOffMultiplier");

    /* strings */
    parse_bad("failover:(tcp://a)?updateURIsURL=http://x/brokers",
              "for updateURIsURL", "only a file path or a file:// URL");
    parse_bad("failover:(tcp://a)?updateURIsURL=", "for updateURIsURL");
    parse_bad("failover:(tcp://a)?jms.redeliveryPolicy.deadLetterPrefix=DLQ",
              "'DLQ' for jms.redeliveryPolicy.deadLetterPrefix");

    /* query syntax */
    parse_bad("failover:(tcp://a)?randomize", "'randomize'", "has no value");
    parse_bad("failover:(tcp://a)?=5", "empty option name");

    /* failover syntax */
    parse_bad("failover:(tcp://a", "missing ')'");
    parse_bad("failover:(tcp://a)x", "unexpected text 'x' after ')'");
    parse_bad("failover:()", "lists no broker");
    parse_bad("failover:", "lists no broker");
    parse_bad("failover:(,,)", "lists no broker");
    parse_bad("failover:(failover:(tcp://a))", "cannot be nested");
    parse_bad("failvoer:(tcp://a)", "unknown scheme 'failvoer'",
              "did you mean failover:?");

    /* broker URIs */
    parse_bad("tcp://a:0", "bad port '0'");
    parse_bad("tcp://a:65536", "bad port '65536'");
    parse_bad("tcp://a:x1", "bad port 'x1'");
    parse_bad("tcp://a:", "empty port");
    parse_bad("tcp://", "missing host");
    parse_bad("tcp://:61613", "missing host");
    parse_bad("tcp://a b:1", "bad character ' ' in host");
    parse_bad("tcp://a:1/queue", "unexpected path");
    parse_bad("http://a", "unsupported scheme 'http'", "tcp://");
    parse_bad("failover:(tcp://a,udp://b)", "unsupported scheme 'udp'");
    parse_bad("localhost:61613", "is not a broker URI", "tcp://host:61613");
    parse_bad("", "URI is empty");
    parse_bad("   ", "URI is empty");
    parse_bad(NULL, "URI is NULL");

    /* TLS: ssl:// and stomp+ssl:// with their options */
    mqc_config t;
    parse_ok("failover:(tcp://a,ssl://b:61617?sslCaFile=/etc/ca.pem&"
             "sslVerifyHost=false,stomp+ssl://c)?nested.sslCertFile=/c.pem&"
             "nested.sslKeyFile=/k.pem", &t);
    assert_int_equal(t.nservers, 3);
    assert_false(t.servers[0].tls);
    assert_true(t.servers[1].tls);
    assert_true(t.servers[2].tls);
    assert_string_equal(t.servers[1].uri, "ssl://b:61617");
    assert_string_equal(t.servers[1].tls_ca, "/etc/ca.pem");
    assert_false(t.servers[1].tls_verify_host);
    assert_true(t.servers[2].tls_verify_host); /* the default */
    assert_null(t.servers[2].tls_ca);          /* the system's CAs */
    assert_string_equal(t.servers[2].tls_cert, "/c.pem");
    assert_string_equal(t.servers[2].tls_key, "/k.pem");
    mqc__config_free(&t);
    parse_bad("ssl://a?sslVerifyHost=maybe", "sslVerifyHost");
    parse_bad("tls://a:61617", "unsupported scheme 'tls'");
}

/* A passcode never shows in a message, whichever way it was written. */
static void test_no_secrets_in_errors(void **state)
{
    (void)state;
    parse_bad("tcp://user:s3cr3t@host:61613", "credentials", "mqc_conn_opts");
    assert_null(strstr(err, "s3cr3t"));
    parse_bad("failover:(tcp://u:s3cr3t@a)", "credentials");
    assert_null(strstr(err, "s3cr3t"));
    parse_bad("failover:(tcp://a)?passcode=s3cr3t", "'passcode'",
              "credentials");
    assert_null(strstr(err, "s3cr3t"));
    parse_bad("tcp://a?password=s3cr3t", "credentials");
    assert_null(strstr(err, "s3cr3t"));
}

static void test_backoff(void **state)
{
    (void)state;
    mqc_config c;
    parse_ok("failover:(tcp://a)", &c);
    assert_int_equal(mqc__backoff_ms(&c, 0), 0);
    assert_int_equal(mqc__backoff_ms(&c, -3), 0);
    int64_t want = 10;
    for (int n = 1; n <= 40; n++) {
        int64_t exp = want < 30000 ? want : 30000;
        if (mqc__backoff_ms(&c, n) != exp)
            fail_msg("attempt %d: %lld, want %lld", n,
                     (long long)mqc__backoff_ms(&c, n), (long long)exp);
        if (want < 30000)
            want *= 2;
    }
    assert_int_equal(mqc__backoff_ms(&c, 1), 10);
    assert_int_equal(mqc__backoff_ms(&c, 2), 20);
    assert_int_equal(mqc__backoff_ms(&c, 3), 40);
    assert_int_equal(mqc__backoff_ms(&c, 12), 20480);
    assert_int_equal(mqc__backoff_ms(&c, 13), 30000);
    assert_int_equal(mqc__backoff_ms(&c, 10000), 30000);
    assert_int_equal(mqc__backoff_ms(&c, INT_MAX), 30000);
    mqc__config_free(&c);

    parse_ok("failover:(tcp://a)?useExponentialBackOff=false&"
             "initialReconnectDelay=250",
             &c);
    for (int n = 1; n <= 100; n++)
        assert_int_equal(mqc__backoff_ms(&c, n), 250);
    assert_int_equal(mqc__backoff_ms(&c, 10000), 250);
    mqc__config_free(&c);

    parse_ok("failover:(tcp://a)?initialReconnectDelay=100&"
             "reconnectDelayExponent=1.5&maxReconnectDelay=1000",
             &c);
    assert_int_equal(mqc__backoff_ms(&c, 1), 100);
    assert_int_equal(mqc__backoff_ms(&c, 2), 150);
    assert_int_equal(mqc__backoff_ms(&c, 3), 225);
    assert_int_equal(mqc__backoff_ms(&c, 7), 1000);
    assert_int_equal(mqc__backoff_ms(&c, 10000), 1000);
    mqc__config_free(&c);

    parse_ok("failover:(tcp://a)?initialReconnectDelay=0", &c);
    assert_int_equal(mqc__backoff_ms(&c, 10000), 0);
    mqc__config_free(&c);
    assert_int_equal(mqc__backoff_ms(NULL, 3), 0);
}

static void test_redelivery_delay(void **state)
{
    (void)state;
    mqc_config c;
    parse_ok("tcp://a", &c);
    /* defaults: not exponential, 1000 then redeliveryDelay 1000 */
    assert_int_equal(mqc__redelivery_delay_ms(&c.redelivery, 0), 0);
    assert_int_equal(mqc__redelivery_delay_ms(&c.redelivery, 1), 1000);
    assert_int_equal(mqc__redelivery_delay_ms(&c.redelivery, 2), 1000);
    assert_int_equal(mqc__redelivery_delay_ms(&c.redelivery, 6), 1000);
    mqc__config_free(&c);

    parse_ok("tcp://a?jms.redeliveryPolicy.initialRedeliveryDelay=1000&"
             "jms.redeliveryPolicy.backOffMultiplier=2&"
             "jms.redeliveryPolicy.useExponentialBackOff=true",
             &c);
    assert_int_equal(mqc__redelivery_delay_ms(&c.redelivery, 1), 1000);
    assert_int_equal(mqc__redelivery_delay_ms(&c.redelivery, 2), 2000);
    assert_int_equal(mqc__redelivery_delay_ms(&c.redelivery, 3), 4000);
    assert_int_equal(mqc__redelivery_delay_ms(&c.redelivery, 4), 8000);
    /* no cap: grows, saturates, never wraps */
    assert_true(mqc__redelivery_delay_ms(&c.redelivery, 10000) > 8000);
    assert_true(mqc__redelivery_delay_ms(&c.redelivery, INT_MAX) > 8000);
    c.redelivery.maximum_redelivery_delay_ms = 3000;
    assert_int_equal(mqc__redelivery_delay_ms(&c.redelivery, 2), 2000);
    assert_int_equal(mqc__redelivery_delay_ms(&c.redelivery, 3), 3000);
    assert_int_equal(mqc__redelivery_delay_ms(&c.redelivery, 10000), 3000);
    mqc__config_free(&c);

    parse_ok("tcp://a?jms.redeliveryPolicy.initialRedeliveryDelay=10&"
             "jms.redeliveryPolicy.redeliveryDelay=300",
             &c);
    assert_int_equal(mqc__redelivery_delay_ms(&c.redelivery, 1), 10);
    assert_int_equal(mqc__redelivery_delay_ms(&c.redelivery, 2), 300);
    assert_int_equal(mqc__redelivery_delay_ms(&c.redelivery, 50), 300);
    mqc__config_free(&c);
    assert_int_equal(mqc__redelivery_delay_ms(NULL, 1), 0);
}

static void test_attempt_budget(void **state)
{
    (void)state;
    mqc_config c;
    parse_ok("failover:(tcp://a)", &c);
    assert_int_equal(mqc__attempt_budget(&c, false), -1);
    assert_int_equal(mqc__attempt_budget(&c, true), -1);
    mqc__config_free(&c);

    parse_ok("failover:(tcp://a)?maxReconnectAttempts=-1", &c);
    assert_int_equal(mqc__attempt_budget(&c, true), -1);
    mqc__config_free(&c);

    parse_ok("failover:(tcp://a)?maxReconnectAttempts=5", &c);
    assert_int_equal(mqc__attempt_budget(&c, false), 5); /* startup 0 */
    assert_int_equal(mqc__attempt_budget(&c, true), 5);
    mqc__config_free(&c);

    parse_ok("failover:(tcp://a)?maxReconnectAttempts=5&"
             "startupMaxReconnectAttempts=2",
             &c);
    assert_int_equal(mqc__attempt_budget(&c, false), 2);
    assert_int_equal(mqc__attempt_budget(&c, true), 5);
    mqc__config_free(&c);

    parse_ok("failover:(tcp://a)?maxReconnectAttempts=5&"
             "startupMaxReconnectAttempts=-1",
             &c);
    assert_int_equal(mqc__attempt_budget(&c, false), -1);
    assert_int_equal(mqc__attempt_budget(&c, true), 5);
    mqc__config_free(&c);
}

static void free_list(mqc_server *l, size_t n)
{
    for (size_t i = 0; i < n; i++)
        mqc__server_free(&l[i]);
    free(l);
}

static void test_server_list(void **state)
{
    (void)state;
    mqc_server *l;
    size_t n;
    assert_int_equal(mqc__server_list_parse(NULL,
                                            " tcp://a:1, tcp://b:2\n"
                                            "\ttcp://c:3?heartbeat=1,2 d:4,,"
                                            "tcp://a:1",
                                            &l, &n, err, sizeof err),
                     0);
    assert_int_equal(n, 4); /* the repeated tcp://a:1 is dropped */
    assert_string_equal(l[0].uri, "tcp://a:1");
    assert_string_equal(l[1].uri, "tcp://b:2");
    assert_string_equal(l[2].uri, "tcp://c:3");
    assert_int_equal(l[2].hb_recv_ms, 2);
    assert_string_equal(l[3].uri, "tcp://d:4");
    free_list(l, n);

    assert_int_equal(mqc__server_list_parse(NULL, " , \n", &l, &n, err,
                                            sizeof err),
                     -1);
    assert_null(l);
    assert_int_equal(n, 0);
    assert_non_null(strstr(err, "empty broker list"));

    assert_int_equal(mqc__server_list_parse(NULL, "tcp://a:1,tcp://b:99999",
                                            &l, &n, err, sizeof err),
                     -1);
    assert_null(l);
    assert_non_null(strstr(err, "bad port '99999'"));

    assert_int_equal(mqc__server_list_parse(NULL, "tcp://a?bogus=1", &l, &n,
                                            err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "unknown option 'bogus'"));

    mqc_server s;
    assert_int_equal(mqc__server_parse(NULL, "udp://x", &s, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "unsupported scheme"));
    assert_null(s.uri);
    assert_null(s.host);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static void test_server_list_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/t_uri.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256], uri[512];
    snprintf(path, sizeof path, "%s/brokers.txt", dir);
    write_file(path, "# the brokers\ntcp://a:1  # master\ntcp://b:2\n");

    mqc_config c;
    snprintf(uri, sizeof uri,
             "failover:(tcp://seed)?updateURIsURL=%s&nested.connectTimeout=9",
             path);
    parse_ok(uri, &c);
    mqc_server *l;
    size_t n;
    assert_int_equal(mqc__server_list_read(&c, &l, &n, err, sizeof err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(l[0].uri, "tcp://a:1");
    assert_string_equal(l[1].uri, "tcp://b:2");
    assert_int_equal(l[1].connect_timeout_ms, 9); /* nested.* applied */
    free_list(l, n);

    /* re-read on each call */
    write_file(path, "tcp://c:3,tcp://d:4,tcp://e:5");
    assert_int_equal(mqc__server_list_read(&c, &l, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(l[2].uri, "tcp://e:5");
    free_list(l, n);

    /* errors name the file */
    write_file(path, "tcp://c:3,tcp://d:x");
    assert_int_equal(mqc__server_list_read(&c, &l, &n, err, sizeof err), -1);
    assert_null(l);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "bad port 'x'"));

    write_file(path, "# nothing yet\n");
    assert_int_equal(mqc__server_list_read(&c, &l, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "lists no broker"));
    mqc__config_free(&c);

    /* file:// form */
    write_file(path, "tcp://f:6");
    snprintf(uri, sizeof uri, "failover:(tcp://seed)?updateURIsURL=file://%s",
             path);
    parse_ok(uri, &c);
    assert_int_equal(mqc__server_list_read(&c, &l, &n, err, sizeof err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(l[0].uri, "tcp://f:6");
    free_list(l, n);
    mqc__config_free(&c);

    assert_int_equal(unlink(path), 0);
    snprintf(uri, sizeof uri, "failover:(tcp://seed)?updateURIsURL=%s", path);
    parse_ok(uri, &c);
    assert_int_equal(mqc__server_list_read(&c, &l, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "No such file"));
    mqc__config_free(&c);

    parse_ok("failover:(tcp://seed)", &c);
    assert_int_equal(mqc__server_list_read(&c, &l, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "no updateURIsURL"));
    mqc__config_free(&c);
    assert_int_equal(rmdir(dir), 0);
}

/* Random and truncated URIs: any result, but no crash, no leak, no
 * out-of-bounds access (ASan/UBSan builds catch those). Bounded: a fixed
 * number of iterations with a fixed seed. */
static void test_fuzz(void **state)
{
    (void)state;
    static const char *const seeds[] = {
        "failover:(tcp://192.168.249.200:61616,tcp://192.168.249.201:61616)"
        "?randomize=false&timeout=3000&backup=true&"
        "warnAfterReconnectAttempts=1",
        "failover:tcp://a:1?heartbeat=1,2,tcp://[::1]:2?nested.heartbeat=3,4"
        "&jms.redeliveryPolicy.backOffMultiplier=2.5",
        "tcp://[fe80::1%25eth0]:61613/?connectTimeout=5&maxFrameSize=1024",
        "failover://(stomp://h,tcp://u:p@h)?updateURIsURL=file:///x%20y",
    };
    static const char alphabet[] = "failovertcp:/()[],?&=%.0123456789-+ "
                                   "heartbeatnested.jms\t\x01\xff";
    unsigned seed = 12345;
    char buf[256];
    for (int it = 0; it < 20000; it++) {
        seed = seed * 1103515245u + 12345u;
        size_t len;
        if (it % 2 == 0) {
            const char *s = seeds[(seed >> 8) % 4];
            len = (seed >> 4) % (strlen(s) + 1);
            memcpy(buf, s, len);
            /* and mutate one byte now and then */
            if (len && it % 6 == 0)
                buf[(seed >> 12) % len] =
                    alphabet[(seed >> 20) % (sizeof alphabet - 1)];
        } else {
            len = (seed >> 4) % 64;
            for (size_t i = 0; i < len; i++) {
                seed = seed * 1103515245u + 12345u;
                buf[i] = alphabet[(seed >> 16) % (sizeof alphabet - 1)];
            }
        }
        buf[len] = '\0';
        mqc_config c;
        if (mqc__uri_parse(buf, &c, err, sizeof err) == 0) {
            assert_true(c.nservers >= 1);
            for (size_t i = 0; i < c.nservers; i++)
                assert_non_null(c.servers[i].uri);
            mqc_server *l;
            size_t n;
            if (mqc__server_list_parse(&c, buf, &l, &n, err, sizeof err) == 0)
                free_list(l, n);
            (void)mqc__backoff_ms(&c, (int)(seed % 100000));
            mqc__config_free(&c);
        } else {
            assert_true(err[0] != '\0');
        }
        /* no error buffer at all is fine */
        if (mqc__uri_parse(buf, &c, NULL, 0) == 0)
            mqc__config_free(&c);
        /* a tiny error buffer truncates, never overflows */
        char small[8];
        if (mqc__uri_parse(buf, &c, small, sizeof small) == 0)
            mqc__config_free(&c);
        else
            assert_true(strlen(small) < sizeof small);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_defaults),
        cmocka_unit_test(test_failover_defaults),
        cmocka_unit_test(test_seed_uri),
        cmocka_unit_test(test_every_option),
        cmocka_unit_test(test_without_parentheses),
        cmocka_unit_test(test_heartbeat_comma_in_list),
        cmocka_unit_test(test_ipv6),
        cmocka_unit_test(test_nested),
        cmocka_unit_test(test_percent_decoding),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_no_secrets_in_errors),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_redelivery_delay),
        cmocka_unit_test(test_attempt_budget),
        cmocka_unit_test(test_server_list),
        cmocka_unit_test(test_server_list_file),
        cmocka_unit_test(test_fuzz),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
