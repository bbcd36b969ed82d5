/* t_topics.c - durable subscriptions and per-subscriber pending messages. */
#include "testutil.h"

#include <string.h>

static void test_sub_create_lookup(void **state)
{
    mqs_store *s = *state;
    char t1[128], t2[128];
    tu_name(t1, sizeof t1, "topic_a");
    tu_name(t2, sizeof t2, "topic_b");
    int64_t a = 0, a2 = 0, b = 0, other = 0, found = 0;
    TU_OK(mqs_sub_create(s, t1, "alpha", &a), s);
    assert_true(a > 0);
    TU_OK(mqs_sub_create(s, t1, "alpha", &a2), s); /* idempotent */
    assert_int_equal(a2, a);
    TU_OK(mqs_sub_create(s, t1, "beta", &b), s);
    assert_true(b > 0);
    assert_true(b != a);
    /* same subscription name on another topic is another subscription */
    TU_OK(mqs_sub_create(s, t2, "alpha", &other), s);
    assert_true(other != a && other != b);

    TU_OK(mqs_sub_lookup(s, t1, "alpha", &found), s);
    assert_int_equal(found, a);
    TU_OK(mqs_sub_lookup(s, t1, "beta", &found), s);
    assert_int_equal(found, b);
    TU_OK(mqs_sub_lookup(s, t2, "alpha", &found), s);
    assert_int_equal(found, other);
    assert_int_equal(mqs_sub_lookup(s, t1, "gamma", &found), MQS_ENOTFOUND);
    char none[128];
    tu_name(none, sizeof none, "topic_none");
    assert_int_equal(mqs_sub_lookup(s, none, "alpha", &found), MQS_ENOTFOUND);
    /* a queue of the same name is not the topic */
    mqs_msg m = tu_msg(MQS_QUEUE, none, "q", 1, 4);
    TU_OK(mqs_enqueue(s, &m, NULL), s);
    assert_int_equal(mqs_sub_lookup(s, none, "alpha", &found), MQS_ENOTFOUND);

    /* visible from another handle (it is in the database) */
    mqs_store *s2 = tu_open();
    TU_OK(mqs_sub_lookup(s2, t1, "beta", &found), s2);
    assert_int_equal(found, b);
    mqs_close(s2);

    /* bad names */
    assert_int_equal(mqs_sub_create(s, t1, "", &found), MQS_EINVAL);
    assert_int_equal(mqs_sub_create(s, "", "x", &found), MQS_EINVAL);
    assert_int_equal(mqs_sub_create(s, NULL, "x", &found), MQS_EINVAL);
    assert_int_equal(mqs_sub_create(s, t1, NULL, &found), MQS_EINVAL);
}

static void test_fanout_and_ack(void **state)
{
    mqs_store *s = *state;
    char t[128];
    tu_name(t, sizeof t, "fanout");
    int64_t a = 0, b = 0;
    TU_OK(mqs_sub_create(s, t, "a", &a), s);
    TU_OK(mqs_sub_create(s, t, "b", &b), s);
    int64_t ids[3];
    const char *bodies[3] = {"one", "two", "three"};
    for (int i = 0; i < 3; i++) {
        mqs_msg m = tu_msg(MQS_TOPIC, t, bodies[i], strlen(bodies[i]), 4);
        TU_OK(mqs_enqueue(s, &m, &ids[i]), s);
        assert_true(ids[i] > 0);
    }
    assert_int_equal(tu_pending(s, MQS_TOPIC, t, "a"), 3);
    assert_int_equal(tu_pending(s, MQS_TOPIC, t, "b"), 3);

    /* every message once per subscription, each subscription in order */
    tu_list l = {0};
    tu_recover(s, MQS_TOPIC, t, NULL, 0, &l);
    assert_int_equal(l.n, 6);
    for (int i = 0; i < 3; i++) {
        long ia = tu_list_find(&l, ids[i], a), ib = tu_list_find(&l, ids[i], b);
        assert_true(ia >= 0 && ib >= 0);
        assert_string_equal(l.v[ia].sub_name, "a");
        assert_string_equal(l.v[ib].sub_name, "b");
        assert_int_equal(l.v[ia].body_len, strlen(bodies[i]));
        assert_memory_equal(l.v[ia].body, bodies[i], strlen(bodies[i]));
        assert_memory_equal(l.v[ib].body, bodies[i], strlen(bodies[i]));
    }
    tu_list_free(&l);

    /* subscriber a acks message 0: gone for a, still pending for b */
    TU_OK(mqs_ack(s, ids[0], a), s);
    tu_recover(s, MQS_TOPIC, t, "a", 0, &l);
    assert_int_equal(l.n, 2);
    assert_int_equal(l.v[0].id, ids[1]);
    assert_int_equal(l.v[0].sub_id, a);
    assert_int_equal(l.v[1].id, ids[2]);
    tu_list_free(&l);
    tu_recover(s, MQS_TOPIC, t, "b", 0, &l);
    assert_int_equal(l.n, 3);
    assert_int_equal(l.v[0].id, ids[0]);
    assert_int_equal(l.v[0].sub_id, b);
    tu_list_free(&l);
    assert_int_equal(tu_pending(s, MQS_TOPIC, t, "a"), 2);
    assert_int_equal(tu_pending(s, MQS_TOPIC, t, "b"), 3);

    /* b acks it too: gone everywhere; a replayed ack is harmless */
    TU_OK(mqs_ack(s, ids[0], b), s);
    TU_OK(mqs_ack(s, ids[0], a), s);
    /* acking a topic message as if it were a queue message removes nothing */
    TU_OK(mqs_ack(s, ids[1], 0), s);
    tu_recover(s, MQS_TOPIC, t, NULL, 0, &l);
    assert_int_equal(l.n, 4);
    assert_int_equal(tu_list_find(&l, ids[0], -1), -1);
    assert_true(tu_list_find(&l, ids[1], a) >= 0);
    assert_true(tu_list_find(&l, ids[1], b) >= 0);
    tu_list_free(&l);

    /* nack is per subscription */
    TU_OK(mqs_nack(s, ids[2], b), s);
    tu_recover(s, MQS_TOPIC, t, NULL, 0, &l);
    assert_int_equal(l.v[tu_list_find(&l, ids[2], b)].redeliveries, 1);
    assert_int_equal(l.v[tu_list_find(&l, ids[2], a)].redeliveries, 0);
    tu_list_free(&l);
}

static void test_late_subscriber(void **state)
{
    mqs_store *s = *state;
    char t[128];
    tu_name(t, sizeof t, "late");
    int64_t a = 0, b = 0, id1 = 0, id2 = 0;
    TU_OK(mqs_sub_create(s, t, "early", &a), s);
    mqs_msg m = tu_msg(MQS_TOPIC, t, "before", 6, 4);
    TU_OK(mqs_enqueue(s, &m, &id1), s);
    TU_OK(mqs_sub_create(s, t, "late", &b), s);
    m.body = "after";
    m.body_len = 5;
    TU_OK(mqs_enqueue(s, &m, &id2), s);
    tu_list l = {0};
    tu_recover(s, MQS_TOPIC, t, "late", 0, &l);
    assert_int_equal(l.n, 1); /* only what was published after it existed */
    assert_int_equal(l.v[0].id, id2);
    tu_list_free(&l);
    tu_recover(s, MQS_TOPIC, t, "early", 0, &l);
    assert_int_equal(l.n, 2);
    tu_list_free(&l);
}

static void test_sub_remove(void **state)
{
    mqs_store *s = *state;
    char t[128];
    tu_name(t, sizeof t, "subrm");
    int64_t a = 0, b = 0, id = 0, found = 0;
    TU_OK(mqs_sub_create(s, t, "a", &a), s);
    TU_OK(mqs_sub_create(s, t, "b", &b), s);
    for (int i = 0; i < 3; i++) {
        mqs_msg m = tu_msg(MQS_TOPIC, t, "x", 1, i);
        TU_OK(mqs_enqueue(s, &m, &id), s);
    }
    TU_OK(mqs_sub_remove(s, a), s);
    assert_int_equal(mqs_sub_lookup(s, t, "a", &found), MQS_ENOTFOUND);
    assert_true(tu_pending(s, MQS_TOPIC, t, "a") <= 0);
    assert_int_equal(tu_pending(s, MQS_TOPIC, t, "b"), 3);
    tu_list l = {0};
    tu_recover(s, MQS_TOPIC, t, NULL, 0, &l);
    assert_int_equal(l.n, 3);
    for (size_t i = 0; i < l.n; i++)
        assert_int_equal(l.v[i].sub_id, b);
    tu_list_free(&l);
    TU_OK(mqs_sub_remove(s, a), s); /* already gone */
    TU_OK(mqs_sub_remove(s, b), s);
    tu_recover(s, MQS_TOPIC, t, NULL, 0, &l);
    assert_int_equal(l.n, 0);
    tu_list_free(&l);
    /* a new subscription of the same name starts empty */
    int64_t a2 = 0;
    TU_OK(mqs_sub_create(s, t, "a", &a2), s);
    assert_true(a2 > 0);
    tu_recover(s, MQS_TOPIC, t, "a", 0, &l);
    assert_int_equal(l.n, 0);
    tu_list_free(&l);
}

static void test_publish_no_subscriber(void **state)
{
    mqs_store *s = *state;
    char t[128];
    tu_name(t, sizeof t, "nosub");
    mqs_msg m = tu_msg(MQS_TOPIC, t, "lost", 4, 4);
    int64_t id = -1;
    TU_OK(mqs_enqueue(s, &m, &id), s);
    assert_int_equal(id, 0);
    int64_t ids[2] = {-1, -1};
    mqs_msg two[2] = {m, m};
    TU_OK(mqs_enqueue_many(s, two, 2, ids), s);
    assert_int_equal(ids[0], 0);
    assert_int_equal(ids[1], 0);
    /* a subscription created now does not see them */
    int64_t sub = 0;
    TU_OK(mqs_sub_create(s, t, "after", &sub), s);
    tu_list l = {0};
    tu_recover(s, MQS_TOPIC, t, NULL, 0, &l);
    assert_int_equal(l.n, 0);
    tu_list_free(&l);
    assert_int_equal(tu_pending(s, MQS_TOPIC, t, "after"), 0);
}

#define T(f) cmocka_unit_test_setup_teardown(f, tu_setup_store, tu_teardown_store)
static const struct CMUnitTest tests[] = {
    T(test_sub_create_lookup), T(test_fanout_and_ack), T(test_late_subscriber),
    T(test_sub_remove),        T(test_publish_no_subscriber),
};
TU_GROUP(tu_group_topics, "topics", tests);
