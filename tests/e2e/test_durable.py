#!/usr/bin/python3
"""Durable topic subscriptions across a kill -9 failover.

On broker A (B standby):
  - seq 1..5 are published before any durable subscription exists: kept for
    nobody.
  - S1: client-id C1, durable-subscription-name S1, online, acks 101..200.
  - S2: client-id C2, activemq.subscriptionName S2 (ActiveMQ's header),
    subscribes then disconnects: offline while everything is published.
  - N: a non-durable subscriber (auto ack).
  - seq 101..300 are published (persistent, receipts).
kill -9 A. On B:
  - S1 reconnects (same client-id and name): exactly 201..300, in order, all
    flagged redelivered (S1 had them all).
  - S2 reconnects: exactly 101..300, in order.
  - N (non-durable) gets none of the old messages.
  - seq 301..310 published on B reach S1, S2 and N.
Finally everything is acked and the store holds nothing for the topic.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402


def durable(env, port, name, client_id, sub_name, topic, header):
    c = e.connect_retry(port, name, headers={"client-id": client_id})
    env.clients.append(c)
    c.subscribe(topic, f"sub-{sub_name}", ack="client-individual",
                headers={header: sub_name, "activemq.prefetchSize": "1000"})
    return c


def expect_seqs(msgs, want, label, ordered=True):
    seqs = [e.seq_of(m) for m in msgs]
    if ordered:
        e.check(seqs == want, f"{label}: expected seq {want[0]}..{want[-1]} ({len(want)}) "
                              f"in order, got {len(seqs)}: missing "
                              f"{e.summarize(set(want) - set(seqs))}, unexpected "
                              f"{e.summarize(set(seqs) - set(want))}, first {seqs[:8]}")
    else:
        e.check(sorted(seqs) == sorted(want), f"{label}: expected {e.summarize(want)}, got "
                                              f"{e.summarize(seqs)}")


def main(env):
    topic = env.dest("topic", "prices")
    a = env.broker("broker-a")
    b = env.broker("broker-b")
    a.start()
    a.wait_master()
    b.start()
    b.wait_standby()

    prod = env.client(a.port, "producer")
    e.produce(prod, topic, range(1, 6))  # no durable subscription yet

    s1 = durable(env, a.port, "S1@a", "C1", "S1", topic, "durable-subscription-name")
    s2 = durable(env, a.port, "S2@a", "C2", "S2", topic, "activemq.subscriptionName")
    s2.disconnect()
    n = env.client(a.port, "N@a")
    n.subscribe(topic, "sub-n", ack="auto")

    e.produce(prod, topic, range(101, 301))
    got1 = e.collect(s1, 200, "S1 on broker-a")
    expect_seqs(got1, list(range(101, 301)), "S1 on broker-a")
    for m in got1[:100]:
        s1.ack(m)
    gotn = e.collect(n, 200, "N on broker-a")
    expect_seqs(gotn, list(range(101, 301)), "N (non-durable) on broker-a")
    e.log("S1 acked 101..200; S2 offline; N got 101..300")
    env.expect_store_pending(topic, 300, "before the kill (S1: 100, S2: 200)")

    t_kill = a.kill9()
    ib = b.wait_master()
    env.result("takeover_ms", round((ib["at"] - t_kill) * 1000))
    env.result("recovered", ib["recovered"])

    s1b = durable(env, b.port, "S1@b", "C1", "S1", topic, "durable-subscription-name")
    got = e.collect(s1b, 100, "S1 on broker-b")
    expect_seqs(got, list(range(201, 301)), "S1 on broker-b (acked 101..200 before the kill)")
    unflagged = [e.seq_of(m) for m in got if not m.redelivered]
    e.check(not unflagged, f"S1 on broker-b: {len(unflagged)} messages S1 had received "
                           f"before the kill lack redelivered:true: {e.summarize(unflagged)}")
    s2b = durable(env, b.port, "S2@b", "C2", "S2", topic, "activemq.subscriptionName")
    got2 = e.collect(s2b, 200, "S2 on broker-b")
    expect_seqs(got2, list(range(101, 301)), "S2 on broker-b (offline durable subscriber)")
    env.result("s2_flagged_redelivered", sum(1 for m in got2 if m.redelivered))
    nb = e.connect_retry(b.port, "N@b")
    env.clients.append(nb)
    nb.subscribe(topic, "sub-n", ack="auto")
    old = nb.drain(quiet=1.0, max_total=3)
    e.check(not old, f"a non-durable subscriber received {len(old)} messages published "
                     f"before it subscribed: {e.summarize(e.seq_of(m) for m in old)}")

    prod_b = e.connect_retry(b.port, "producer@b")
    env.clients.append(prod_b)
    e.produce(prod_b, topic, range(301, 311))
    for c, label in ((s1b, "S1"), (s2b, "S2"), (nb, "N")):
        got_new = e.collect(c, 10, f"{label} on broker-b, new messages")
        expect_seqs(got_new, list(range(301, 311)), f"{label} on broker-b, new messages")
        if c is not nb:
            for m in got_new:
                c.ack(m)
    for m in got:
        s1b.ack(m)
    for m in got2:
        s2b.ack(m)
    for c in (s1b, s2b, nb, prod_b):
        c.disconnect()
    env.expect_store_pending(topic, 0, "at the end")
    b.terminate()


if __name__ == "__main__":
    e.Env("durable", __doc__).run(main)
