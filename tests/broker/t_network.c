/* Unit tests of the network-of-brokers helpers in config.c: policy
 * parsing and wildcard matching, broker names, mq-path eligibility, and
 * the collection of repeatable options with where they came from. */
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

static void t_wildcards(void **state)
{
    (void)state;
    assert_true(net_wild_match(">", "a"));
    assert_true(net_wild_match(">", "a.b.c"));
    assert_true(net_wild_match("a.>", "a.b"));
    assert_true(net_wild_match("a.>", "a.b.c"));
    assert_true(net_wild_match("a.>", "a")); /* '>' may be nothing */
    assert_false(net_wild_match("a.>", "ab"));
    assert_false(net_wild_match("a.>", "b.a"));
    assert_true(net_wild_match("a.*", "a.b"));
    assert_false(net_wild_match("a.*", "a.b.c"));
    assert_false(net_wild_match("a.*", "a"));
    assert_true(net_wild_match("*.b", "x.b"));
    assert_true(net_wild_match("a.*.c", "a.x.c"));
    assert_false(net_wild_match("a.*.c", "a.x.d"));
    assert_true(net_wild_match("orders", "orders"));
    assert_false(net_wild_match("orders", "orders.eu"));
    assert_false(net_wild_match("orders.eu", "orders"));
    assert_true(net_wild_match("*.>", "a.b.c"));
}

static void t_policy_parse(void **state)
{
    (void)state;
    net_policy p;
    char err[256];
    assert_int_equal(net_policy_parse("queue=>", &p, err, sizeof err), 0);
    assert_false(p.topic);
    assert_string_equal(p.pattern, ">");
    assert_false(p.replay);
    assert_true(p.audit); /* ActiveMQ's defaults */
    net_policy_free(&p);
    assert_int_equal(net_policy_parse("topic=a.*;enableAudit=false;"
                                      "replayWhenNoConsumers=true",
                                      &p, err, sizeof err), 0);
    assert_true(p.topic);
    assert_true(p.replay);
    assert_false(p.audit);
    net_policy_free(&p);
    assert_int_equal(net_policy_parse("queue = x ; enableAudit = false", &p,
                                      err, sizeof err), 0);
    assert_string_equal(p.pattern, "x");
    net_policy_free(&p);
    /* Refused: unknown key, bad value, no pattern first, bad pattern. */
    assert_int_equal(net_policy_parse("queue=>;replay=true", &p, err,
                                      sizeof err), -1);
    assert_non_null(strstr(err, "unknown key 'replay'"));
    assert_int_equal(net_policy_parse("queue=>;enableAudit=yes", &p, err,
                                      sizeof err), -1);
    assert_int_equal(net_policy_parse("enableAudit=true;queue=>", &p, err,
                                      sizeof err), -1);
    assert_int_equal(net_policy_parse("queue=a.>.b", &p, err, sizeof err),
                     -1);
    assert_int_equal(net_policy_parse("queue=a..b", &p, err, sizeof err), -1);
    assert_int_equal(net_policy_parse("queue=a*", &p, err, sizeof err), -1);
    assert_int_equal(net_policy_parse("", &p, err, sizeof err), -1);
    assert_int_equal(net_policy_parse("queue", &p, err, sizeof err), -1);
}

static void t_policy_find(void **state)
{
    (void)state;
    net_policy r[3];
    char err[256];
    assert_int_equal(net_policy_parse("queue=orders.>;"
                                      "replayWhenNoConsumers=true", &r[0],
                                      err, sizeof err), 0);
    assert_int_equal(net_policy_parse("queue=>;enableAudit=false", &r[1],
                                      err, sizeof err), 0);
    assert_int_equal(net_policy_parse("topic=prices.*", &r[2], err,
                                      sizeof err), 0);
    assert_ptr_equal(net_policy_find(r, 3, "/queue/orders.eu"), &r[0]);
    assert_ptr_equal(net_policy_find(r, 3, "/queue/other"), &r[1]);
    assert_ptr_equal(net_policy_find(r, 3, "/topic/prices.x"), &r[2]);
    assert_null(net_policy_find(r, 3, "/topic/prices.x.y"));
    assert_null(net_policy_find(r, 3, "/mq/demand"));
    assert_ptr_equal(net_policy_find(r, 1, "/queue/orders"), &r[0]);
    for (int i = 0; i < 3; i++)
        net_policy_free(&r[i]);
}

static void t_paths(void **state)
{
    (void)state;
    assert_int_equal(net_path_hops(NULL), 0);
    assert_int_equal(net_path_hops(""), 0);
    assert_int_equal(net_path_hops("A"), 1);
    assert_int_equal(net_path_hops("A,B,C"), 3);
    assert_true(net_path_has("A,B,C", "B"));
    assert_true(net_path_has("A,B,C", "C"));
    assert_false(net_path_has("A,BB,C", "B"));
    assert_false(net_path_has("AB", "A"));
    assert_false(net_path_has(NULL, "A"));
    /* Produced here: to any peer within TTL 1. */
    assert_true(net_path_eligible(NULL, "B", 1, false));
    /* One hop already: TTL 1 stops it, TTL 2 lets it on. */
    assert_false(net_path_eligible("A", "C", 1, false));
    assert_true(net_path_eligible("A", "C", 2, false));
    /* Back to a broker it passed: only by replay, TTL aside. */
    assert_false(net_path_eligible("A", "A", 5, false));
    assert_true(net_path_eligible("A", "A", 1, true));
    assert_true(net_path_eligible("A,B,C", "B", 1, true));
    assert_false(net_path_eligible("A,B,C", "D", 3, false));
    assert_true(net_path_eligible("A,B,C", "D", 4, false));
}

static void t_names(void **state)
{
    (void)state;
    assert_true(config_broker_name_ok("A"));
    assert_true(config_broker_name_ok("host-1.example.com:61613"));
    assert_true(config_broker_name_ok("a_b"));
    assert_false(config_broker_name_ok(""));
    assert_false(config_broker_name_ok("a,b"));
    assert_false(config_broker_name_ok("a/b"));
    assert_false(config_broker_name_ok("a b"));
    char big[66];
    memset(big, 'x', 65);
    big[65] = '\0';
    assert_false(config_broker_name_ok(big));
    big[64] = '\0';
    assert_true(config_broker_name_ok(big));
}

static char *write_tmp(const char *text)
{
    char *path = strdup("/tmp/mqbroker-net-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void t_config_lists(void **state)
{
    (void)state;
    char *path = write_tmp("store = sqlite:///tmp/x.db?cluster=prod\n"
                           "network-connector = name=a;uri=static:(tcp://h:1)\n"
                           "network-policy = queue=>;enableAudit=false\n"
                           "network-policy = topic=t.*\n");
    char *argv[] = {"mqbroker", "--config", path, NULL};
    config c;
    assert_int_equal(config_load(&c, 3, argv), CONFIG_OK);
    assert_string_equal(c.broker_name, "prod"); /* the cluster */
    assert_int_equal(c.network_audit, 65536);
    assert_int_equal(c.n_net_connectors, 1);
    assert_string_equal(c.net_connectors[0], "name=a;uri=static:(tcp://h:1)");
    char want[300];
    snprintf(want, sizeof want, "%s:2", path);
    assert_string_equal(c.net_connector_where[0], want);
    assert_int_equal(c.n_net_policies, 2);
    snprintf(want, sizeof want, "%s:4", path);
    assert_string_equal(c.net_policy_where[1], want);
    assert_false(c.net_policy_rules[0].audit);
    assert_true(c.net_policy_rules[1].topic);
    config_free(&c);

    /* The command line replaces the file's list. */
    char *argv2[] = {"mqbroker", "--config", path, "--network-policy",
                     "queue=a", "--network-policy=queue=b",
                     "--broker-name", "B-1", NULL};
    assert_int_equal(config_load(&c, 8, argv2), CONFIG_OK);
    assert_int_equal(c.n_net_policies, 2);
    assert_string_equal(c.net_policy_where[1], "--network-policy #2");
    assert_string_equal(c.net_policy_rules[1].pattern, "b");
    assert_int_equal(c.n_net_connectors, 1); /* from the file */
    assert_string_equal(c.broker_name, "B-1");
    config_free(&c);

    /* Refused at start. */
    char *bad1[] = {"mqbroker", "--store", "s", "--network-policy",
                    "queue=>;bogus=1", NULL};
    assert_int_equal(config_load(&c, 5, bad1), CONFIG_ERROR);
    config_free(&c);
    char *bad2[] = {"mqbroker", "--store", "s", "--broker-name", "a b",
                    NULL};
    assert_int_equal(config_load(&c, 5, bad2), CONFIG_ERROR);
    config_free(&c);
    unlink(path);
    free(path);

    /* Default name without a cluster: HOSTNAME:PORT; a cluster with
     * characters a name may not hold is made fit, not refused. */
    char *argv3[] = {"mqbroker", "--store", "sqlite:///tmp/x.db", "--listen",
                     "127.0.0.1:7001", NULL};
    assert_int_equal(config_load(&c, 5, argv3), CONFIG_OK);
    assert_non_null(strstr(c.broker_name, ":7001"));
    assert_true(config_broker_name_ok(c.broker_name));
    config_free(&c);
    char *argv4[] = {"mqbroker", "--store", "sqlite:///tmp/x.db?cluster=c%2F1",
                     NULL};
    assert_int_equal(config_load(&c, 3, argv4), CONFIG_OK);
    assert_string_equal(c.broker_name, "c_1");
    config_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_wildcards),
        cmocka_unit_test(t_policy_parse),
        cmocka_unit_test(t_policy_find),
        cmocka_unit_test(t_paths),
        cmocka_unit_test(t_names),
        cmocka_unit_test(t_config_lists),
    };
    return cmocka_run_group_tests_name("mqbroker network", tests, NULL, NULL);
}
