#!/usr/bin/python3
"""The broker's loop does not wait for the database on a durable SUBSCRIBE.

A client creates a durable subscription while another process holds the
SQLite store's write lock (as a stuck database would): the store cannot
write it for as long. Only that SUBSCRIBE waits (its RECEIPT comes once the
lock is gone, and the subscription then works). Everyone else is served
meanwhile: a new connection's CONNECT is answered at once, and a consumer
keeps getting messages that are already in memory.

Before the store write became asynchronous, the loop thread sat in
mqs_sub_create for the whole hold (3 s here): every client stalled.
"""
import os
import sqlite3
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402

HOLD_S = 3.0


def sqlite_path(uri):
    rest = uri.split("://", 1)[1]
    path = rest.split("?", 1)[0]
    return path if path.startswith("/") else "/" + path


def main(env):
    e.check(env.store_uri.startswith("sqlite:"), "this test holds a SQLite lock: sqlite only")
    a = env.broker("broker-a")
    a.start()
    a.wait_master()
    topic = env.dest("topic", "lb")
    queue = env.dest("queue", "lb")

    # Messages in memory for a consumer that will read during the hold.
    p = env.client(a.port, "producer")
    e.produce(p, queue, range(1, 21))
    cons = env.client(a.port, "consumer")
    cons.subscribe(queue, "q1", ack="client-individual",
                   headers={"activemq.prefetchSize": "1"})

    lock = sqlite3.connect(sqlite_path(env.store_uri), timeout=10, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # the write lock: the store's writer waits
    t_lock = time.monotonic()
    e.log("holding the store's write lock")
    try:
        d = env.client(a.port, "durable", headers={"client-id": "lb-client"})
        d.send_frame("SUBSCRIBE", {"destination": topic, "id": "d1", "ack": "auto",
                                   "durable-subscription-name": "s1", "receipt": "sub-1"})
        time.sleep(0.3)
        # Other clients are served: a new CONNECT, and deliveries from memory.
        t0 = time.monotonic()
        probe = e.connect_client(a.port, "probe", timeout=10)
        connect_ms = (time.monotonic() - t0) * 1000
        probe.disconnect()
        got = 0
        t1 = time.monotonic()
        while got < 5 and time.monotonic() - t_lock < HOLD_S - 0.2:
            m = cons.recv_message(timeout=0.5)
            if m is None:
                break
            cons.ack(m, receipt=False)  # its store write waits; the next delivery does not
            got += 1
        deliver_ms = (time.monotonic() - t1) * 1000
        early = d.recv(timeout=0.05)
        held_s = time.monotonic() - t_lock
        env.result("connect_during_hold_ms", round(connect_ms))
        e.log(f"during the {held_s:.1f} s hold: CONNECT answered in {connect_ms:.0f} ms, "
              f"{got} deliveries in {deliver_ms:.0f} ms, durable SUBSCRIBE answered: "
              f"{early.command if early else 'not yet'}")
        e.check(connect_ms < 1000, f"a CONNECT took {connect_ms:.0f} ms while a durable "
                                   f"SUBSCRIBE waited for the store: the loop was blocked")
        e.check(got >= 2, f"only {got} message(s) delivered from memory during the hold")
        e.check(early is None, f"the durable SUBSCRIBE was answered ({early.command if early else ''})"
                               f" while its store write could not have happened")
    finally:
        time.sleep(max(0.0, HOLD_S - (time.monotonic() - t_lock)))
        lock.execute("ROLLBACK")
        lock.close()
    r = d.recv(timeout=15)
    e.check(r is not None and r.command == "RECEIPT" and r.headers.get("receipt-id") == "sub-1",
            f"after the hold the durable SUBSCRIBE got {r.command if r else 'nothing'}")
    # It works: a message published now reaches it, and it is durable.
    p.send(topic, "after", receipt=True)
    m = d.recv_message(timeout=10)
    e.check(m is not None and m.body in (b"after", "after"),
            f"the new durable subscription got {m.body if m else 'nothing'}")
    pend = env.store_pending()
    if pend is not None:
        rows = [k for k in pend if k.endswith("#lb-client:s1")]
        e.check(len(rows) == 1, f"the store has {len(rows)} rows for the subscription, "
                                f"want 1: {pend}")
    d.disconnect()
    cons.disconnect()
    p.disconnect()
    a.terminate()


if __name__ == "__main__":
    env = e.Env("loop_block", __doc__)
    env.store_uri = e.with_option(env.store_uri, "lease_ms", "20000")
    env.store_uri = e.with_option(env.store_uri, "renew_ms", "2000")
    env.store_uri = e.with_option(env.store_uri, "busy_timeout", "30000")
    env.run(main)
