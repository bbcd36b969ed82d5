/* fuzz_client_uri.c - libFuzzer target for libmqclient's URI parser
 * (failover: lists, nested options, broker lists pushed by a broker). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "uri.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    mqc_config cfg;
    char err[512];
    if (mqc__uri_parse(s, &cfg, err, sizeof err) == 0) {
        for (int a = 0; a < 40; a++)
            if (mqc__backoff_ms(&cfg, a) < 0)
                abort();
        mqc_server *list = NULL;
        size_t n = 0;
        if (mqc__server_list_parse(&cfg, s, &list, &n, err, sizeof err) == 0) {
            for (size_t i = 0; i < n; i++)
                mqc__server_free(&list[i]);
            free(list);
        }
        mqc__config_free(&cfg);
    } else if (!err[0]) {
        abort(); /* a refusal always says why */
    }
    free(s);
    return 0;
}
