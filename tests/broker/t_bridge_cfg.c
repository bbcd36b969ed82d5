/* t_bridge_cfg.c - the --network-connector SPEC (bridge.c): parsing,
 * errors with the place they come from, passcode files, the URIs a bridge
 * opens and the masking of logged URIs. No network. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "bridge.h"

static int parse_err(const char *spec, char *err, size_t len)
{
    bridge_conf c;
    int rc = bridge_conf_parse(spec, &c, err, len);
    if (rc == 0)
        bridge_conf_free(&c);
    return rc;
}

static void t_full(void **state)
{
    (void)state;
    bridge_conf c;
    char err[512];
    int rc = bridge_conf_parse(
        "name=to-b;uri=static:(tcp://b1:61613, failover:(tcp://c1:1,tcp://c2:2)"
        "?randomize=false);duplex=true;networkTTL=3;prefetch=50;login=bridge;"
        "passcodeFile=/nonexistent",
        &c, err, sizeof err);
    assert_int_equal(rc, 0);
    assert_string_equal(c.name, "to-b");
    assert_int_equal(c.nuris, 2);
    assert_string_equal(c.uris[0], "tcp://b1:61613");
    assert_string_equal(c.uris[1],
                        "failover:(tcp://c1:1,tcp://c2:2)?randomize=false");
    assert_true(c.duplex);
    assert_int_equal(c.ttl, 3);
    assert_int_equal(c.prefetch, 50);
    assert_string_equal(c.login, "bridge");
    assert_string_equal(c.passcode_file, "/nonexistent");
    bridge_conf_free(&c);

    rc = bridge_conf_parse("name=x;uri=static:(tcp://b:61613)", &c, err,
                           sizeof err);
    assert_int_equal(rc, 0);
    assert_false(c.duplex);
    assert_int_equal(c.ttl, 1);
    assert_int_equal(c.prefetch, 100);
    assert_null(c.login);
    bridge_conf_free(&c);
}

static void t_errors(void **state)
{
    (void)state;
    char err[512];
    static const struct {
        const char *spec, *want;
    } cases[] = {
        {"name=x;uri=static:(tcp://b:1);duplx=true",
         "unknown key 'duplx' (did you mean 'duplex'?)"},
        {"name=x;uri=static:(tcp://b:1);color=red", "unknown key 'color'"},
        {"name=x;uri=static:(tcp://b:1);duplex=yes", "for duplex"},
        {"name=x;uri=static:(tcp://b:1);networkTTL=0", "for networkTTL"},
        {"name=x;uri=static:(tcp://b:1);networkTTL=256", "for networkTTL"},
        {"name=x;uri=static:(tcp://b:1);networkTTL=2x", "for networkTTL"},
        {"name=x;uri=static:(tcp://b:1);prefetch=0", "for prefetch"},
        {"name=x;name=y;uri=static:(tcp://b:1)", "'name' given twice"},
        {"name=x;uri=static:()", "empty"},
        {"name=x;uri=tcp://b:1", "static:(URI,URI,...)"},
        {"name=x;uri=static:(tcp://b:1", "missing ')'"},
        {"uri=static:(tcp://b:1)", "name= is required"},
        {"name=x", "uri= is required"},
        {"name=a b;uri=static:(tcp://b:1)", "for name"},
        {"name=x;uri=static:(tcp://b:1);passcodeFile=/p",
         "passcodeFile= without login="},
        {"name=x;uri=static:(tcp://b:1?bogus=1)", "bogus"},
        {"name=x;uri=static:(tcp://u:secret@b:1)", "credentials"},
        {"name=x;uri=static:(tcp://b:1,,tcp://c:1)", "empty item"},
        {"name=x;duplex", "not KEY=VALUE"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        int rc = parse_err(cases[i].spec, err, sizeof err);
        if (rc != -1 || !strstr(err, cases[i].want))
            fail_msg("spec '%s': rc %d, err '%s', want '%s'", cases[i].spec,
                     rc, err, cases[i].want);
        assert_null(strstr(err, "secret"));
    }
    /* 16 URIs is the limit. */
    for (int n = 16; n <= 17; n++) {
        char spec[1024] = "name=x;uri=static:(";
        for (int i = 0; i < n; i++)
            snprintf(spec + strlen(spec), sizeof spec - strlen(spec),
                     "%stcp://h%d:1", i ? "," : "", i);
        strcat(spec, ")");
        int rc = parse_err(spec, err, sizeof err);
        assert_int_equal(rc, n == 16 ? 0 : -1);
        if (rc)
            assert_non_null(strstr(err, "more than 16"));
    }
}

static void t_passcode(void **state)
{
    (void)state;
    char path[] = "/tmp/t_bridge_cfg_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "s3cret\nignored\n", 15), 15);
    close(fd);
    char *pw = NULL, err[512];
    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(bridge_read_passcode(path, &pw, err, sizeof err), 0);
    assert_string_equal(pw, "s3cret");
    free(pw);
    assert_int_equal(chmod(path, 0640), 0);
    assert_int_equal(bridge_read_passcode(path, &pw, err, sizeof err), -1);
    assert_non_null(strstr(err, "chmod 600"));
    assert_null(strstr(err, "s3cret"));
    unlink(path);
    assert_int_equal(bridge_read_passcode(path, &pw, err, sizeof err), -1);
}

static void t_uris(void **state)
{
    (void)state;
    char *u = bridge_peer_uri("tcp://b:61613");
    assert_string_equal(u, "failover:(tcp://b:61613)?maxReconnectAttempts=-1"
                           "&initialReconnectDelay=100&maxReconnectDelay=5000"
                           "&timeout=10000&trackMessages=true"
                           "&maxCacheSize=16777216");
    free(u);
    u = bridge_peer_uri(
        "failover:(tcp://a:1,tcp://b:2)?maxReconnectDelay=1000");
    assert_string_equal(u, "failover:(tcp://a:1,tcp://b:2)?maxReconnectDelay="
                           "1000&maxReconnectAttempts=-1&initialReconnectDelay="
                           "100&timeout=10000&trackMessages=true&maxCacheSize="
                           "16777216");
    free(u);
    u = bridge_peer_uri("failover:(tcp://a:1?connectTimeout=5)");
    assert_string_equal(u, "failover:(tcp://a:1?connectTimeout=5)?"
                           "maxReconnectAttempts=-1&initialReconnectDelay=100"
                           "&maxReconnectDelay=5000&timeout=10000"
                           "&trackMessages=true&maxCacheSize=16777216");
    free(u);
    char m[256];
    bridge_mask_uri("failover:(tcp://u:pw@a:1,tcp://b:2)", m, sizeof m);
    assert_string_equal(m, "failover:(tcp://***@a:1,tcp://b:2)");
    bridge_mask_uri("tcp://b:61613", m, sizeof m);
    assert_string_equal(m, "tcp://b:61613");
}

static void t_init(void **state)
{
    (void)state;
    char *specs[] = {"name=a;uri=static:(tcp://b:1,tcp://c:1)",
                     "name=a;uri=static:(tcp://d:1)"};
    char *where[] = {"mqbroker.conf:3", "mqbroker.conf:4"};
    config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.net_connectors = specs;
    cfg.net_connector_where = where;
    cfg.n_net_connectors = 1;
    char err[512] = "";
    assert_int_equal(bridge_init(&cfg, "A", 61613, "tok", err, sizeof err), 0);
    assert_int_equal(bridge_count(), 2);
    bridge_stat st[4];
    assert_int_equal(bridge_snapshot(st, 4), 2);
    assert_string_equal(st[0].name, "a#1");
    assert_string_equal(st[1].name, "a#2");
    assert_string_equal(st[1].peer, "tcp://c:1");
    assert_string_equal(st[0].state, "stopped");
    bridge_free_all();
    assert_int_equal(bridge_count(), 0);

    cfg.n_net_connectors = 2;
    assert_int_equal(bridge_init(&cfg, "A", 61613, "tok", err, sizeof err), -1);
    assert_string_equal(err, "mqbroker.conf:4: network-connector: name 'a' is "
                             "already used by another connector");
    assert_int_equal(bridge_count(), 0);

    specs[1] = "name=b;uri=static:(tcp://d:1);duplx=true";
    assert_int_equal(bridge_init(&cfg, "A", 61613, "tok", err, sizeof err), -1);
    assert_string_equal(err, "mqbroker.conf:4: network-connector: unknown key "
                             "'duplx' (did you mean 'duplex'?)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_full),     cmocka_unit_test(t_errors),
        cmocka_unit_test(t_passcode), cmocka_unit_test(t_uris),
        cmocka_unit_test(t_init),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
