/* quickstart.c - the smallest useful mqstore program: store messages,
 * "crash", recover what was not acked. Usage: mqstore-quickstart URI */
#include <stdio.h>
#include <string.h>

#include <mqstore/mqstore.h>

static int fail(const char *what, int rc, mqs_store *s)
{
    fprintf(stderr, "quickstart: %s: %s (%s)\n", what, mqs_errmsg(s),
            mqs_errname(rc));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 2 || !strcmp(argv[1], "--help")) {
        fprintf(stderr, "usage: %s STORE-URI   e.g. sqlite:///tmp/demo.db\n",
                argv[0]);
        return 2;
    }
    mqs_store *s;
    int rc = mqs_open(argv[1], NULL, &s);
    if (rc)
        return fail("open", rc, NULL);
    printf("opened %s\n", mqs_uri(s));

    /* A producer stores three orders; each call returns once durable. */
    const char *orders[] = {"order 1: 2 apples", "order 2: 1 pear",
                            "order 3: URGENT 5 plums"};
    int64_t ids[3];
    for (int i = 0; i < 3; i++) {
        mqs_msg m = {.kind = MQS_QUEUE, .dest = "orders",
                     .headers = "content-type:text/plain", .headers_len = 23,
                     .body = orders[i], .body_len = strlen(orders[i]),
                     .priority = i == 2 ? 9 : MQS_PRIORITY_DEFAULT};
        if ((rc = mqs_enqueue(s, &m, &ids[i])))
            return fail("enqueue", rc, s);
        printf("stored id %lld: %s\n", (long long)ids[i], orders[i]);
    }
    /* The consumer handled order 1 and acks it. */
    if ((rc = mqs_ack(s, ids[0], 0)))
        return fail("ack", rc, s);
    printf("acked id %lld\n", (long long)ids[0]);
    mqs_close(s); /* as if the broker stopped here */

    /* A broker taking over recovers every unacked message, urgent first. */
    if ((rc = mqs_open(argv[1], NULL, &s)))
        return fail("reopen", rc, NULL);
    mqs_cursor_opts o = {.kind = MQS_QUEUE, .dest = "orders"};
    mqs_cursor *c;
    if ((rc = mqs_cursor_open(s, &o, &c)))
        return fail("cursor", rc, s);
    const mqs_message *m;
    int n = 0;
    while ((rc = mqs_cursor_next(c, &m)) == 1) {
        printf("recovered id %lld prio %d: %.*s\n", (long long)m->id,
               m->priority, (int)m->body_len, (const char *)m->body);
        mqs_ack(s, m->id, 0); /* handled now */
        n++;
    }
    mqs_cursor_close(c);
    if (rc < 0)
        return fail("recover", rc, s);
    printf("recovered %d message(s); the acked one was not among them\n", n);
    mqs_close(s);
    return 0;
}
