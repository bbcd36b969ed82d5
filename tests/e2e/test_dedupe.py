#!/usr/bin/python3
"""Replayed SENDs are not stored twice (mq-producer / mq-seq).

A failover client that did not get a RECEIPT sends the message again with
the same mq-producer and mq-seq headers. The broker must:

  - answer the copy with a RECEIPT and not store it (same connection, a
    new connection, and a pipelined burst of copies);
  - still drop it after kill -9 of the master: the standby rebuilds what
    it holds from the stored messages' headers;
  - drop, after kill -9, a replay of a message that was stored, delivered
    and acked (its row is gone): acking wrote the producer's mark to the
    store, which the new master loads;
  - store a SEND whose mq-seq is new, and one without the headers;
  - treat malformed ids (mq-seq 0, junk, over 128-byte producer) as no ids:
    stored, never an error;
  - advertise the broker list in CONNECTED (mq-brokers) when --advertise
    is set, and send ERROR mq-reconnect-to:<the others> on a clean stop.
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402


def send(c, dest, body, producer, seq):
    h = {}
    if producer is not None:
        h["mq-producer"] = producer
    if seq is not None:
        h["mq-seq"] = str(seq)
    c.send(dest, body.encode(), headers=h)


def bodies(env, port, dest, name, expect_min):
    c = env.client(port, name)
    c.subscribe(dest, "s1", ack="auto")
    got = [m.body.decode() for m in c.drain(quiet=1.0, max_total=20.0)]
    c.disconnect()
    e.check(len(got) >= expect_min, f"{name}: only {len(got)} messages: {got}")
    return got


def bad_advertise(env):
    for bad in ("tcp://a", "http://a:1", "tcp://a:1,", "tcp://a b:1", "tcp://:1"):
        r = subprocess.run([env.broker_path, "--store", env.store_uri, "--advertise", bad],
                           capture_output=True, text=True, timeout=30)
        e.check(r.returncode == 2 and "--advertise" in r.stderr,
                f"--advertise {bad!r}: exit {r.returncode}, stderr {r.stderr.strip()!r}")


def main(env):
    bad_advertise(env)
    dest = env.dest("queue", "dedupe")
    advert = "tcp://127.0.0.1:1,tcp://127.0.0.1:2"
    a = env.broker("broker-a", ["--advertise", advert])
    b = env.broker("broker-b", ["--advertise", advert])
    a.start()
    a.wait_master()
    b.start()
    b.wait_standby()

    p = env.client(a.port, "producer")
    # The CONNECTED frame of connect_client is not kept: look at a raw one.
    raw = e.StompClient(a.port, name="raw")
    raw.open()
    f = raw.connect()
    e.check(f.headers.get("mq-brokers") == advert,
            f"CONNECTED mq-brokers is {f.headers.get('mq-brokers')!r}, want {advert!r}")
    raw.disconnect()

    prod = "p-" + env.run_id
    for i in range(1, 6):
        send(p, dest, f"m{i}", prod, i)
    send(p, dest, "m3-copy", prod, 3)  # a replay: receipt, not stored
    send(p, dest, "m5-copy", prod, 5)
    p2 = env.client(a.port, "producer-2")  # a replay from a new connection
    send(p2, dest, "m4-copy", prod, 4)
    # A burst of copies pipelined behind a new message: each gets its receipt.
    rids = []
    for body, seq in (("m6", 6), ("m6-copy", 6), ("m2-copy", 2), ("m6-copy2", 6)):
        rid = p2.next_receipt_id()
        p2.send_frame("SEND", {"destination": dest, "persistent": "true",
                               "mq-producer": prod, "mq-seq": str(seq),
                               "receipt": rid}, body.encode())
        rids.append(rid)
    for rid in rids:
        p2.wait_receipt(rid, "SEND")
    # Malformed ids: stored like any message.
    send(p2, dest, "bad-seq-0", prod, 0)
    send(p2, dest, "bad-seq-junk", prod, "12x")
    send(p2, dest, "long-producer", "x" * 129, 1)
    send(p2, dest, "long-producer-again", "x" * 129, 1)
    send(p2, dest, "no-ids", None, None)
    p2.disconnect()

    want_a = ["m1", "m2", "m3", "m4", "m5", "m6", "bad-seq-0", "bad-seq-junk",
              "long-producer", "long-producer-again", "no-ids"]
    env.expect_store_pending(dest, len(want_a), "after the copies")

    # Stored, delivered and acked before the kill: only the mark is left.
    consumed = env.dest("queue", "consumed")
    prod_c = "pc-" + env.run_id
    pc = env.client(a.port, "producer-c")
    for i in range(1, 4):
        send(pc, consumed, f"c{i}", prod_c, i)
    pc.disconnect()
    cc = env.client(a.port, "consumer-c")
    cc.subscribe(consumed, "s1", ack="client-individual")
    for i in range(1, 4):
        m = cc.recv_message(timeout=10)
        e.check(m is not None, f"consumed message c{i} not delivered")
        cc.ack(m)  # with a receipt: the ack (and the mark) committed
    cc.disconnect()
    env.expect_store_pending(consumed, 0, "after acking c1..c3")

    # Kill the master: the standby must know seq 1..6 are held.
    a.kill9()
    b.wait_master()
    p3 = env.client(b.port, "producer@b")
    for i in range(1, 7):
        send(p3, dest, f"m{i}-replay", prod, i)
    send(p3, dest, "m7", prod, 7)
    for i in range(1, 4):  # replays of consumed messages
        send(p3, consumed, f"c{i}-replay", prod_c, i)
    send(p3, consumed, "c4", prod_c, 4)
    p3.disconnect()
    got_c = bodies(env, b.port, consumed, "consumer-c@b", 1)
    e.check(got_c == ["c4"], f"after failover the consumed queue got {got_c}: replays of "
                             f"acked messages were stored again (want only c4)")
    got = bodies(env, b.port, dest, "consumer@b", len(want_a) + 1)
    want = want_a + ["m7"]
    e.check(sorted(got) == sorted(want),
            f"messages after failover: {sorted(got)}, want {sorted(want)}")
    e.log(f"{len(got)} messages, no copies stored (before and after kill -9)")
    # A clean stop sends each client ERROR mq-reconnect-to (the advertised
    # brokers other than itself).
    w = e.StompClient(b.port, name="watcher")
    w.open()
    w.connect()
    b.terminate()
    f = w.recv(timeout=10)
    e.check(f is not None and f.command == "ERROR" and
            f.headers.get("mq-reconnect-to") == advert,
            f"on SIGTERM the client got {f!r}, want ERROR with mq-reconnect-to:{advert}")


if __name__ == "__main__":
    e.Env("dedupe", __doc__).run(main)
