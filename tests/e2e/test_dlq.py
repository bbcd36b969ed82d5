#!/usr/bin/python3
"""Broker-side maximum redeliveries: a poison message goes to its DLQ.

With --max-redeliveries 2 a message NACKed a third time is moved, with its
ack, in one store transaction, to /queue/DLQ.<name>:

  - after 2 NACKs it is still redelivered (redelivered:true); the third
    moves it: the queue is then empty (in the broker and in the store) and
    the DLQ holds it once, with mq-original-destination and mq-dlq-reason;
  - a NACK inside a transaction counts too (applied at COMMIT);
  - the count survives kill -9 of the master (it is kept in the store):
    two NACKs on the master, one on the new master, and it is dead-lettered;
  - a message that is acked after NACKs never reaches the DLQ.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402


def nack_n(c, n, sub_id, tx=None):
    """Receive and NACK the same message n times; return the last one."""
    m = None
    for i in range(n):
        m = c.recv_message(timeout=10)
        e.check(m is not None, f"no delivery #{i + 1} to NACK")
        if i:
            e.check(m.redelivered, f"delivery #{i + 1} lacks redelivered:true")
        if tx:
            c.begin(tx + str(i))
            c.nack(m, tx=tx + str(i))
            c.commit(tx + str(i))
        else:
            c.nack(m)
    return m


def dlq_bodies(env, port, dlq):
    c = env.client(port, "dlq-reader")
    c.subscribe(dlq, "d1", ack="auto")
    msgs = c.drain(quiet=1.0, max_total=15.0)
    c.disconnect()
    return msgs


def main(env):
    q = env.dest("queue", "poison")
    dlq = "/queue/DLQ." + q[len("/queue/"):]
    args = ["--max-redeliveries", "2"]
    a = env.broker("broker-a", args)
    b = env.broker("broker-b", args)
    a.start()
    a.wait_master()
    b.start()
    b.wait_standby()

    p = env.client(a.port, "producer")
    p.send(q, b"poison-1")
    c = env.client(a.port, "consumer")
    c.subscribe(q, "s1", ack="client-individual")
    nack_n(c, 3, "s1")
    e.check(c.recv_message(timeout=1.5) is None, "the message came back after its 3rd NACK")
    env.expect_store_pending(q, 0, "after the 3rd NACK")
    got = dlq_bodies(env, a.port, dlq)
    e.check([m.body for m in got] == [b"poison-1"], f"DLQ holds {[m.body for m in got]}")
    h = got[0].headers
    e.check(h.get("mq-original-destination") == q,
            f"mq-original-destination is {h.get('mq-original-destination')!r}")
    e.check("NACKed 3 times" in h.get("mq-dlq-reason", ""),
            f"mq-dlq-reason is {h.get('mq-dlq-reason')!r}")

    # NACKs in transactions count as well.
    p.send(q, b"poison-2")
    nack_n(c, 3, "s1", tx="t")
    e.check(c.recv_message(timeout=1.5) is None, "transacted: came back after 3 NACKs")

    # Acked after two NACKs: consumed, not dead-lettered.
    p.send(q, b"good")
    m = nack_n(c, 2, "s1")
    m = c.recv_message(timeout=10)
    e.check(m is not None and m.body == b"good", f"third delivery of 'good': {m!r}")
    c.ack(m)
    got = dlq_bodies(env, a.port, dlq)
    e.check([x.body for x in got] == [b"poison-2"], f"DLQ after the transacted and the "
            f"acked cases holds {[x.body for x in got]}, want [b'poison-2']")

    # The count survives a failover.
    p.send(q, b"poison-3")
    nack_n(c, 2, "s1")
    e.check(c.recv_message(timeout=10) is not None, "no redelivery before the kill")
    a.kill9()
    b.wait_master()
    c2 = env.client(b.port, "consumer@b")
    c2.subscribe(q, "s1", ack="client-individual")
    m = c2.recv_message(timeout=10)
    e.check(m is not None and m.body == b"poison-3" and m.redelivered,
            f"after failover: {m!r}")
    c2.nack(m)
    e.check(c2.recv_message(timeout=1.5) is None,
            "after failover the 3rd NACK did not dead-letter the message")
    got = dlq_bodies(env, b.port, dlq)
    e.check(sorted(x.body for x in got) == [b"poison-3"],
            f"DLQ on the new master holds {[x.body for x in got]}")
    env.expect_store_pending(q, 0, "at the end")
    c2.disconnect()
    b.terminate()


if __name__ == "__main__":
    e.Env("dlq", __doc__).run(main)
