#!/usr/bin/python3
"""STOMP transactions across a kill -9 failover.

The producer is python3-stomp (stomp.py, a STOMP frame to connect), so a
standard client library is exercised too; the consumer uses the raw client.

On broker A (B standby):
  - tx "abort":  SEND seq 1..5, ABORT          -> never delivered
  - tx "commit": SEND seq 11..15, COMMIT       -> delivered, survives failover
  - tx "open":   SEND seq 21..25, no COMMIT    -> never delivered (not before
                                                  the crash, not after it)
  - plain SEND seq 31 with a receipt           -> delivered
The consumer then acks 11 and 12 in a committed transaction, 13 in an
aborted one and 14 in one left open, and leaves 15 and 31 unacked.
kill -9 A: on B the consumer must get exactly 13, 14, 15, 31, all flagged
redelivered; finally a transaction that acks all four and sends seq 41 is
committed, and only 41 is left to receive.
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402


class ReceiptWaiter:
    """stomp.py listener: remembers receipts and errors."""

    def __init__(self):
        self.cv = threading.Condition()
        self.receipts = set()
        self.errors = []

    def on_receipt(self, frame):
        with self.cv:
            self.receipts.add(frame.headers.get("receipt-id"))
            self.cv.notify_all()

    def on_error(self, frame):
        with self.cv:
            self.errors.append(f"{frame.headers.get('message')}: {frame.body}")
            self.cv.notify_all()

    def wait(self, rid, what, timeout=10):
        end = time.monotonic() + timeout
        with self.cv:
            while rid not in self.receipts:
                e.check(not self.errors, f"stomp.py producer got ERROR during {what}: "
                                         f"{self.errors}")
                left = end - time.monotonic()
                e.check(left > 0, f"stomp.py producer: no RECEIPT for {what} within "
                                  f"{timeout} s")
                self.cv.wait(left)


def stomp_py_producer(port):
    try:
        import stomp
    except ImportError:
        e.fail("python3-stomp is not installed (apt-get install python3-stomp; "
               "scripts/install-deps.sh does it)")
    conn = stomp.Connection12([("127.0.0.1", port)], reconnect_attempts_max=1)
    w = ReceiptWaiter()
    conn.set_listener("w", w)
    conn.connect(wait=True)
    return conn, w


def main(env):
    dest = env.dest("queue", "tx")
    a = env.broker("broker-a")
    b = env.broker("broker-b")
    a.start()
    a.wait_master()
    b.start()
    b.wait_standby()

    cons = env.client(a.port, "consumer@a")
    cons.subscribe(dest, "sub-1", ack="client-individual")

    conn, w = stomp_py_producer(a.port)

    def tx_send(tx, seqs):
        conn.begin(transaction=tx)
        for s in seqs:
            conn.send(destination=dest, body=e.body_for(s).decode(), transaction=tx,
                      headers={"persistent": "true", "seq": str(s)})

    tx_send("tx-abort", range(1, 6))
    conn.abort(transaction="tx-abort", receipt="abort-done")
    w.wait("abort-done", "ABORT tx-abort")
    tx_send("tx-commit", range(11, 16))
    # Nothing of an uncommitted transaction may be visible yet.
    early = cons.drain(quiet=0.5, max_total=2)
    e.check(not early, f"messages of an uncommitted transaction were delivered before "
                       f"COMMIT: {e.summarize(e.seq_of(m) for m in early)}")
    conn.commit(transaction="tx-commit", receipt="commit-done")
    w.wait("commit-done", "COMMIT tx-commit")
    tx_send("tx-open", range(21, 26))
    conn.send(destination=dest, body=e.body_for(31).decode(),
              headers={"persistent": "true", "seq": "31", "receipt": "plain-done"})
    w.wait("plain-done", "SEND seq 31")
    e.log("producer (stomp.py): aborted 1..5, committed 11..15, left 21..25 open, sent 31")

    got = cons.drain(quiet=1.0, max_total=10)
    seqs = [e.seq_of(m) for m in got]
    e.check(sorted(seqs) == [11, 12, 13, 14, 15, 31],
            f"consumer@a: expected seq 11..15 and 31 (committed + plain), got {seqs} "
            f"(1..5 were aborted, 21..25 are in an open transaction)")
    by = {e.seq_of(m): m for m in got}
    e.check([e.seq_of(m) for m in got[:5]] == [11, 12, 13, 14, 15],
            f"consumer@a: a committed transaction's messages arrive out of order: {seqs}")

    cons.begin("ack-commit")
    cons.ack(by[11], receipt=False, tx="ack-commit")
    cons.ack(by[12], receipt=False, tx="ack-commit")
    cons.commit("ack-commit")
    cons.begin("ack-abort")
    cons.ack(by[13], receipt=False, tx="ack-abort")
    cons.abort("ack-abort")
    cons.begin("ack-open")
    cons.ack(by[14], receipt=True, tx="ack-open")  # processed, not committed
    env.expect_store_pending(dest, 4, "before the kill (13, 14, 15, 31)")
    e.log("consumer@a: acked 11+12 (committed tx), 13 (aborted tx), 14 (open tx)")

    t_kill = a.kill9()
    ib = b.wait_master()
    env.result("takeover_ms", round((ib["at"] - t_kill) * 1000))
    try:
        conn.disconnect()
    except Exception:
        pass

    cons_b = e.connect_retry(b.port, "consumer@b")
    env.clients.append(cons_b)
    cons_b.subscribe(dest, "sub-1", ack="client-individual")
    got = cons_b.drain(quiet=1.5, max_total=15)
    seqs = sorted(e.seq_of(m) for m in got)
    e.check(seqs == [13, 14, 15, 31],
            f"after failover: expected exactly seq 13 (ack aborted), 14 (ack tx open), 15, "
            f"31 (never acked); got {seqs}. 1..5 aborted, 21..25 never committed, 11+12 "
            f"acked in a committed transaction")
    unflagged = [e.seq_of(m) for m in got if not m.redelivered]
    e.check(not unflagged, f"after failover: messages delivered before the kill came back "
                           f"without redelivered:true: {unflagged}")
    by = {e.seq_of(m): m for m in got}

    # One transaction acks everything and sends a new message: atomic.
    cons_b.begin("final")
    for s in (13, 14, 15, 31):
        cons_b.ack(by[s], receipt=False, tx="final")
    cons_b.send(dest, e.body_for(41), headers={"seq": "41"}, receipt=False, tx="final")
    rest = cons_b.drain(quiet=0.5, max_total=2)
    e.check(not rest, f"a SEND inside an uncommitted transaction was delivered: "
                      f"{e.summarize(e.seq_of(m) for m in rest)}")
    cons_b.commit("final")
    m = cons_b.recv_message(timeout=10)
    e.check(m is not None and e.seq_of(m) == 41,
            f"after COMMIT of the final transaction, expected seq 41, got {m!r}")
    cons_b.ack(m)
    more = cons_b.drain(quiet=1.0, max_total=5)
    e.check(not more, f"after the final commit, unexpected deliveries: "
                      f"{e.summarize(e.seq_of(x) for x in more)}")
    cons_b.disconnect()
    env.expect_store_pending(dest, 0, "at the end")
    b.terminate()


if __name__ == "__main__":
    e.Env("transactions", __doc__).run(main)
