/* mqbroker - STOMP 1.2 broker with durable storage and master/slave HA on
 * libmqstore. See docs/broker.md. Exit codes: 0 clean stop, 1 failure,
 * 2 usage error. */
#include "broker.h"
#include "config.h"

int main(int argc, char **argv)
{
    config cfg;
    int rc = config_load(&cfg, argc, argv);
    if (rc == CONFIG_HASH_PASSWORD) {
        config_free(&cfg);
        return auth_hash_password();
    }
    if (rc != CONFIG_OK) {
        config_free(&cfg);
        return rc == CONFIG_EXIT_OK ? 0 : 2;
    }
    g_log_level = cfg.log_level;
    int ex = broker_run(&cfg);
    config_free(&cfg);
    return ex;
}
