#!/usr/bin/python3
"""The broker's loop does not wait for the database: not on a durable
SUBSCRIBE, not when producers fill the store's write queue during an outage.

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
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402

HOLD_S = 3.0
OUTAGE_S = 10.0
# The target is 100 ms; a shared CI machine needs some slack. The
# figures are reported (outage_probe_max_ms, outage_probe_p99_ms).
MAX_STALL_MS = 300


def sqlite_path(uri):
    rest = uri.split("://", 1)[1]
    path = rest.split("?", 1)[0]
    return path if path.startswith("/") else "/" + path


def main(env):
    e.check(env.store_uri.startswith("sqlite:"), "this test holds a SQLite lock: sqlite only")
    a = env.broker("broker-a", ["--heartbeat", "500,10000"])
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
    # The first delivery stores the queue's dispatch mark (docs/broker.md,
    # "Redelivered flag"), which covers the next 1,024 ids: it must be in
    # before the hold, or the deliveries below would wait for it.
    first = cons.recv_message(timeout=10)
    e.check(first is not None, "the consumer got no message before the hold")
    cons.ack(first, receipt=False)

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
    outage(env, a)
    a.terminate()


def outage(env, a):
    """The store stops writing for OUTAGE_S while producers keep sending: the
    write queue fills (max_pending_bytes is 1 MiB here) and the producers
    wait, unread, instead of the loop waiting in a submit. 100 idle clients
    keep getting heart-beats; a probe connects and gets an ERROR every 50 ms
    without a stall."""
    queue = env.dest("queue", "outage")
    idle = [e.raw_connect(a.port, "idle", "0,500") for _ in range(100)]
    for s in idle:
        s.setblocking(False)
    stop = threading.Event()
    sent = {}
    receipts = {}

    def producer(k):
        c = e.connect_client(a.port, f"producer-{k}", timeout=60)
        c.sock.settimeout(60)  # paused: the broker reads none of it meanwhile
        env.clients.append(c)
        body = b"x" * 8192
        n = 0
        while not stop.is_set() and n < 400:
            n += 1
            c.send_frame("SEND", {"destination": queue, "persistent": "true",
                                  "seq": str(k * 100000 + n), "receipt": f"r{n}"}, body)
        sent[k] = n
        got = 0
        end = time.monotonic() + 60
        while got < n and time.monotonic() < end:
            f = c.recv(timeout=max(end - time.monotonic(), 0.1))
            if f is None:
                break
            got += f.command == "RECEIPT"
        receipts[k] = got

    lock = sqlite3.connect(sqlite_path(env.store_uri), timeout=10, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    t_lock = time.monotonic()
    e.log(f"holding the store's write lock for {OUTAGE_S:.0f} s while 4 producers send "
          f"8 KiB messages")
    threads = [threading.Thread(target=producer, args=(k,), daemon=True) for k in range(4)]
    for t in threads:
        t.start()
    worst = []
    try:
        while time.monotonic() - t_lock < OUTAGE_S:
            ms, reply = e.probe_round_trip(a.port, timeout=5)
            worst.append(ms)
            e.check(b"ERROR" in reply, f"probe: a SEND without destination got "
                                       f"{reply[:60]!r}, not an ERROR")
            time.sleep(0.05)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    beats = []
    for s in idle:
        n = 0
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                n += chunk.count(b"\n")
        except BlockingIOError:
            pass
        beats.append(n)
        s.close()
    stop.set()
    for t in threads:
        t.join(timeout=90)
    worst.sort()
    p99 = worst[int(len(worst) * 0.99) - 1] if worst else 0
    env.result("outage_probe_count", len(worst))
    env.result("outage_probe_max_ms", round(worst[-1]))
    env.result("outage_probe_p99_ms", round(p99))
    env.result("outage_idle_min_heartbeats", min(beats))
    e.log(f"during the {OUTAGE_S:.0f} s outage: {len(worst)} probes (CONNECT + ERROR), "
          f"median {worst[len(worst) // 2]:.1f} ms, p99 {p99:.1f} ms, max {worst[-1]:.1f} ms; "
          f"idle clients got {min(beats)}..{max(beats)} heart-beats; producers sent "
          f"{sum(sent.values())}, receipted {sum(receipts.values())}")
    e.check(worst[-1] < MAX_STALL_MS,
            f"a probe CONNECT + ERROR took {worst[-1]:.0f} ms during the outage (limit "
            f"{MAX_STALL_MS} ms): the loop stalled")
    e.check(min(beats) >= OUTAGE_S, f"an idle client got only {min(beats)} heart-beats in "
                                    f"{OUTAGE_S:.0f} s (500 ms asked)")
    e.check(sum(receipts.values()) == sum(sent.values()),
            f"after the outage {sum(receipts.values())} of {sum(sent.values())} SENDs were "
            f"receipted")
    cons = env.client(a.port, "outage-consumer")
    cons.subscribe(queue, "o1", ack="auto", headers={"activemq.prefetchSize": "1000"})
    got = cons.drain(quiet=1.5, max_total=60)
    seqs = sorted(e.seq_of(m) for m in got)
    e.check(len(seqs) == len(set(seqs)) == sum(sent.values()),
            f"after the outage the queue held {len(seqs)} messages ({len(set(seqs))} "
            f"distinct), {sum(sent.values())} were sent")


if __name__ == "__main__":
    env = e.Env("loop_block", __doc__)
    env.store_uri = e.with_option(env.store_uri, "lease_ms", "20000")
    env.store_uri = e.with_option(env.store_uri, "renew_ms", "2000")
    env.store_uri = e.with_option(env.store_uri, "busy_timeout", "30000")
    env.store_uri = e.with_option(env.store_uri, "max_pending_bytes", "1048576")
    env.run(main)
