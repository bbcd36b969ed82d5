#!/usr/bin/python3
"""Paging edge cases: a queue (or durable subscription) whose stored backlog
is bigger than its window is read back from the store in pages while it is
consumed; every consumer path must still deliver each message exactly once,
in order where order is defined.

Every scenario runs its own broker with a small --max-dest-bytes (256k: over
128 KiB a box gives its stored tail back to the store), fills a fresh queue
with ~1 KiB messages so the broker logs "paging: <dest> holds more than ...",
checks that line, then drains it along one path:

  nack           NACK every 7th message once (redelivered, then acked)
  client_ack     ack:client, cumulative ACK of every 20th message, prefetch 50
  client_batch   ack:client with a batch ACK every 100 messages (prefetch 200):
                 what the consumer holds unacked must not stop the page reads
  slow_holder    one consumer holds its messages unacked, another drains: the
                 busy one must get the rest of the backlog
  txn            SENDs and ACKs in transactions (some aborted) on the paged queue
  dlq            --max-redeliveries 1, every 10th message always NACKed, while
                 higher-priority sends make the box give back its tail
  expiry         half the backlog expires while it is in the store
  durable_unsub  durable subscribers removed while their first page is read;
                 another subscriber of the topic gets everything in order
  durable_offline  three offline durable subscribers of one topic: the
                 producer must not be paused (each box pages), each drains in order
  memory_many    --max-memory reached by eight queues with backlogs and no
                 consumer: the producer must not be paused for good
  disconnect     a consumer closes its socket holding unacked paged messages
  many           12 consumers with prefetch 1 while a producer adds more
  auto           three ack:auto consumers
  nonpersistent  non-persistent sends mixed with persistent ones during a drain
  priorities     a priority backlog, then sends of random priority during the drain
  max_memory     --max-memory small: four queues drained at once
  network_drain  a paged backlog on A drained through A's bridge by a consumer on B
  network_backlog  1500 messages from A wait (paged) on B, where A's duplex
                 bridge may not take them back; 20 sent on B behind them must
                 reach a consumer on A. KNOWN GAP, not run in CI: the parked
                 backlog holds the box's window, so nothing behind it is read
                 (docs/broker.md, "Limits")
  db_restart     (with --db-restart-cmd) the database restarts mid-drain
  sigterm        SIGTERM of the master in the middle of a drain; the standby
                 takes over and the consumer finishes there
  kill9          kill -9 of the master during a drain with a producer running

Usage: test_paging_edges.py --broker B [--store-uri URI] [--only a,b,...]
       [--keep-going] [--store-uri-b URI] [--db-restart-cmd CMD]
"""
import os
import random
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402

MAX_DEST = "256k"
PAD = b"." * 1000  # ~1 KiB messages: ~110 of them fill half of MAX_DEST
FILL = 2000


def body(s, tag="m"):
    return e.body_for(s, tag) + PAD


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------
def start_master(env, name, extra=(), standby=False):
    args = ["--max-dest-bytes", MAX_DEST, "--max-body", "64k"] + list(extra)
    a = env.broker(name, args)
    a.start()
    a.wait_master()
    if not standby:
        return a
    b = env.broker(name + "-standby", args)
    b.start()
    b.wait_standby()
    return a, b


def stop(env, *brokers):
    for c in env.clients:
        c.close()
    env.clients.clear()
    for b in brokers:
        if b.alive():
            b.terminate()


def send_many(c, dest, seqs, hdrs=None, persistent=True, window=64, tx=None, tag="m"):
    """mqe2e.produce with this file's ~1 KiB bodies; hdrs(seq) -> extra
    headers. Returns when every receipt came back."""
    e.produce(c, dest, seqs, tag=tag, window=window, headers=hdrs,
              persistent=persistent, tx=tx, body=body)


def expect_paged(b, dest, timeout=5.0):
    """The broker logged that dest left messages to the store."""
    needle = f"paging: {dest} "
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if needle in b.log_text(whole=True):
            return
        time.sleep(0.05)
    e.fail(f"{b.name} never logged '{needle}holds more than ...': the scenario did not "
           f"page (log {b.log_path})")


def fill_paged(env, b, dest, n=FILL, hdrs=None, name="filler"):
    p = env.client(b.port, name)
    send_many(p, dest, range(1, n + 1), hdrs=hdrs)
    expect_paged(b, dest)
    return p


def exactly_once(seqs, want, label):
    seqs = list(seqs)
    want = list(want)
    dup = sorted({s for s in seqs if seqs.count(s) > 1}) if len(seqs) < 20000 else []
    if len(seqs) != len(want) or set(seqs) != set(want) or dup:
        e.fail(f"{label}: got {len(seqs)} (distinct {len(set(seqs))}), want {len(want)}; "
               f"missing {e.summarize(set(want) - set(seqs))}, unexpected "
               f"{e.summarize(set(seqs) - set(want))}, duplicated {e.summarize(dup)}")


def in_order(seqs, label):
    seqs = list(seqs)
    for i in range(1, len(seqs)):
        if seqs[i] <= seqs[i - 1]:
            e.fail(f"{label}: out of order at index {i}: ... {seqs[max(i - 4, 0):i + 4]} ...")


def drain(c, want_n, on_msg, label, timeout=60.0, quiet=1.5):
    """Receive until want_n messages were handled by on_msg(m) (which acks
    as it likes) and then `quiet` seconds pass with none; returns the
    messages seen."""
    seen = []
    end = time.monotonic() + timeout
    last = time.monotonic()
    while time.monotonic() < end:
        m = c.recv_message(timeout=0.25)
        if m is None:
            if len(seen) >= want_n and time.monotonic() - last >= quiet:
                break
            if time.monotonic() - last > 15 and len(seen) < want_n:
                e.fail(f"{label}: stuck: {len(seen)} of {want_n} messages, nothing for "
                       f"{time.monotonic() - last:.0f} s")
            continue
        last = time.monotonic()
        seen.append(m)
        on_msg(m)
    return seen


def ack_all(c):
    return lambda m: c.ack(m, receipt=False)


def acked_store_empty(env, dest, when="at the end", timeout=10.0):
    env.expect_store_pending(dest, 0, when, timeout=timeout)


# ---------------------------------------------------------------------------
# scenarios
# ---------------------------------------------------------------------------
def scn_nack(env):
    b = start_master(env, "nack")
    q = env.dest("queue", "nack")
    fill_paged(env, b, q)
    c = env.client(b.port, "consumer")
    c.subscribe(q, "s", ack="client-individual", headers={"activemq.prefetchSize": "30"})
    acked, nacked, first = [], set(), []

    def on(m):
        s = e.seq_of(m)
        if not m.redelivered:
            first.append(s)
        if s % 7 == 0 and s not in nacked:
            e.check(not m.redelivered, f"seq {s} flagged redelivered before its NACK")
            nacked.add(s)
            c.nack(m, receipt=False)
            return
        if s in nacked:
            e.check(m.redelivered, f"seq {s} came back after its NACK without "
                                   f"redelivered:true")
        acked.append(s)
        c.ack(m, receipt=False)
    drain(c, FILL + FILL // 7, on, "nack")
    exactly_once(acked, range(1, FILL + 1), "nack: acked")
    exactly_once(first, range(1, FILL + 1), "nack: first deliveries")
    in_order(first, "nack: first deliveries")
    acked_store_empty(env, q)
    stop(env, b)


def scn_client_ack(env):
    b = start_master(env, "cack")
    q = env.dest("queue", "cack")
    fill_paged(env, b, q)
    c = env.client(b.port, "consumer")
    c.subscribe(q, "s", ack="client", headers={"activemq.prefetchSize": "50"})
    got = []

    def on(m):
        got.append(e.seq_of(m))
        if len(got) % 20 == 0 or len(got) == FILL:
            c.ack(m, receipt=False)
    drain(c, FILL, on, "client_ack")
    seqs = got
    exactly_once(seqs, range(1, FILL + 1), "client_ack")
    in_order(seqs, "client_ack")
    acked_store_empty(env, q)
    stop(env, b)


def scn_client_batch(env):
    """A consumer that acks (cumulatively) every 100 messages with prefetch
    200: it holds up to 100 x 1 KiB unacked, more than a quarter of
    --max-dest-bytes. Paging must not wait for those acks."""
    b = start_master(env, "cbatch")
    q = env.dest("queue", "cbatch")
    fill_paged(env, b, q)
    c = env.client(b.port, "consumer")
    c.subscribe(q, "s", ack="client", headers={"activemq.prefetchSize": "200"})
    got = []

    def on(m):
        got.append(e.seq_of(m))
        if len(got) % 100 == 0 or len(got) == FILL:
            c.ack(m, receipt=False)
    seen = drain(c, FILL, on, "client_batch (ACK every 100 messages, prefetch 200)",
                 timeout=40)
    del seen
    exactly_once(got, range(1, FILL + 1), "client_batch")
    in_order(got, "client_batch")
    acked_store_empty(env, q)
    stop(env, b)


def scn_slow_holder(env):
    """Consumer H takes what it is given and never acks; consumer F acks
    everything. F must drain the backlog except what H holds."""
    b = start_master(env, "holder")
    q = env.dest("queue", "holder")
    fill_paged(env, b, q)
    h = env.client(b.port, "holder")
    h.subscribe(q, "h", ack="client-individual", headers={"activemq.prefetchSize": "200"})
    held = [e.seq_of(m) for m in h.drain(quiet=1.0, max_total=5)]
    e.log(f"slow_holder: H holds {len(held)} unacked")
    f = env.client(b.port, "fast")
    f.subscribe(q, "f", ack="client-individual", headers={"activemq.prefetchSize": "10"})
    got = []

    def on(m):
        got.append(e.seq_of(m))
        f.ack(m, receipt=False)
    want = FILL - len(held)
    try:
        drain(f, want, on, f"slow_holder: F while H holds {len(held)} unacked",
              timeout=40)
    except e.TestFailure:
        more = [e.seq_of(m) for m in h.drain(quiet=0.5, max_total=2)]
        e.log(f"slow_holder: F got {len(got)}, H holds {len(held)} (+{len(more)} since)")
        raise
    held += [e.seq_of(m) for m in h.drain(quiet=0.5, max_total=2)]
    exactly_once(got + held, range(1, FILL + 1), "slow_holder: F's and H's")
    h.close()  # H's go back
    rest = drain(f, len(held), on, "slow_holder: H's messages after H left", timeout=20)
    e.check(all(m.redelivered for m in rest), "slow_holder: H's messages came back "
                                              "without redelivered:true")
    exactly_once(got, range(1, FILL + 1), "slow_holder: F in the end")
    acked_store_empty(env, q)
    stop(env, b)


def scn_txn(env):
    b = start_master(env, "txn")
    q = env.dest("queue", "txn")
    fill_paged(env, b, q, n=1500)
    # More in transactions while paged: batches of 50, every third aborted.
    p = env.client(b.port, "tx-producer")
    committed = list(range(1, 1501))
    seq = 1500
    for k in range(12):
        tx = f"ptx{k}"
        p.begin(tx)
        batch = list(range(seq + 1, seq + 51))
        seq += 50
        send_many(p, q, batch, tx=tx)
        if k % 3 == 2:
            p.abort(tx)
        else:
            p.commit(tx)
            committed += batch
    c = env.client(b.port, "tx-consumer")
    c.subscribe(q, "s", ack="client-individual", headers={"activemq.prefetchSize": "40"})
    acked, window, ntx = [], [], [0]

    def flush(abort_first):
        ntx[0] += 1
        tx = f"ctx{ntx[0]}"
        c.begin(tx, receipt=False)
        for m in window:
            c.ack(m, receipt=False, tx=tx)
        if abort_first:
            c.abort(tx, receipt=False)
            ntx[0] += 1
            tx = f"ctx{ntx[0]}"
            c.begin(tx, receipt=False)
            for m in window:  # still delivered to us: ack them again
                c.ack(m, receipt=False, tx=tx)
        c.commit(tx, receipt=False)
        acked.extend(e.seq_of(m) for m in window)
        window.clear()

    seen = []

    def on(m):
        seen.append(e.seq_of(m))
        window.append(m)
        if len(window) == 20:
            flush(ntx[0] % 4 == 3)
    drain(c, len(committed), on, "txn")
    if window:
        flush(False)
    exactly_once(seen, committed, "txn: delivered")
    in_order(seen, "txn: delivered")
    exactly_once(acked, committed, "txn: acked")
    acked_store_empty(env, q)
    stop(env, b)


def scn_dlq(env):
    b = start_master(env, "dlq", ["--max-redeliveries", "1"])
    q = env.dest("queue", "dlq")
    dlq = "/queue/DLQ." + q[len("/queue/"):]
    fill_paged(env, b, q, n=1500)
    c = env.client(b.port, "consumer")
    c.subscribe(q, "s", ack="client-individual", headers={"activemq.prefetchSize": "20"})
    p = env.client(b.port, "hi-producer")
    acked, nacks = [], {}
    hi = iter(range(100001, 100301))

    def on(m):
        s = e.seq_of(m)
        if s % 10 == 0 and s <= 1500:
            nacks[s] = nacks.get(s, 0) + 1
            c.nack(m, receipt=False)
        else:
            acked.append(s)
            c.ack(m, receipt=False)
        # Higher-priority sends go to memory and push the stored tail out.
        if len(acked) % 5 == 0:
            x = next(hi, None)
            if x is not None:
                send_many(p, q, [x], hdrs=lambda s: {"priority": "9"})
    want_poison = [s for s in range(1, 1501) if s % 10 == 0]
    want_ok = [s for s in range(1, 1501) if s % 10] + list(range(100001, 100301))
    drain(c, len(want_ok) + 2 * len(want_poison), on, "dlq")
    exactly_once(acked, want_ok, "dlq: acked from the queue")
    bad = {s: n for s, n in nacks.items() if n != 2}
    e.check(not bad, f"dlq: poison messages NACKed other than twice (max-redeliveries 1): "
                     f"{dict(list(bad.items())[:10])}")
    d = env.client(b.port, "dlq-reader")
    d.subscribe(dlq, "d", ack="client-individual")
    dl = []
    drain(d, len(want_poison), lambda m: (dl.append(e.seq_of(m)), d.ack(m, receipt=False)),
          "dlq: the dead-letter queue")
    exactly_once(dl, want_poison, "dlq: dead-lettered")
    in_order(dl, "dlq: dead-letter queue order")
    acked_store_empty(env, q)
    acked_store_empty(env, dlq)
    stop(env, b)


def scn_expiry(env):
    b = start_master(env, "expiry")
    # The odd messages must all be stored (and paged out) before they expire,
    # or the scenario tests the send path instead of the paged one. A fill
    # slower than the deadline (a loaded CI machine: 2,000 sends once took
    # over 4 s) is started again on a fresh queue with a longer deadline; the
    # deadline is not what is under test.
    for n, life_ms in enumerate((4000, 10000, 25000)):
        q = env.dest("queue", f"expiry{n}")
        t_exp = int(time.time() * 1000) + life_ms
        fill_paged(env, b, q, hdrs=lambda s: {"expires": str(t_exp)} if s % 2 else {},
                   name=f"filler{n}")
        wait = t_exp / 1000.0 + 0.5 - time.time()
        if wait > 0:
            break
        e.log(f"expiry: the fill took longer than the expiry ({life_ms} ms); again "
              "on a fresh queue with a longer one")
    e.check(wait > 0, "expiry: every fill took longer than its expiry (last 25 s)")
    time.sleep(wait)
    c = env.client(b.port, "consumer")
    c.subscribe(q, "s", ack="client-individual", headers={"activemq.prefetchSize": "50"})
    got = []
    drain(c, FILL // 2, lambda m: (got.append(e.seq_of(m)), c.ack(m, receipt=False)),
          "expiry")
    want = [s for s in range(1, FILL + 1) if s % 2 == 0]
    exactly_once(got, want, "expiry: delivered")
    in_order(got, "expiry")
    acked_store_empty(env, q, "after the drain (expired ones acked at dispatch)")
    stop(env, b)


def scn_durable_unsub(env):
    """KEEP stays subscribed; doomed durable subscriptions, one at a time,
    get a paged backlog and are removed while their first page is read."""
    b = start_master(env, "dunsub")
    t = env.dest("topic", "dunsub")
    k = env.client(b.port, "KEEP", headers={"client-id": "CKEEP"})
    k.subscribe(t, "d", headers={"durable-subscription-name": "KEEP",
                                 "activemq.prefetchSize": "30"})
    got = []
    lock = threading.Lock()
    kstop = threading.Event()

    def keep():
        while not kstop.is_set():
            m = k.recv_message(timeout=0.2)
            if m is not None:
                with lock:
                    got.append(e.seq_of(m))
                k.ack(m, receipt=False)
    th = threading.Thread(target=keep, daemon=True)
    th.start()
    p = env.client(b.port, "producer")
    seq = 0
    for i in range(6):
        nm = f"U{i}"
        c = env.client(b.port, f"{nm}-create", headers={"client-id": f"C{nm}"})
        c.subscribe(t, "d", headers={"durable-subscription-name": nm})
        c.disconnect()
        send_many(p, t, range(seq + 1, seq + 301))
        seq += 300
        expect_paged(b, f"{t} subscription C{nm}:{nm}")
        c = env.client(b.port, f"{nm}", headers={"client-id": f"C{nm}"})
        c.send_frame("SUBSCRIBE", {"destination": t, "id": "d", "ack": "client-individual",
                                   "durable-subscription-name": nm,
                                   "activemq.prefetchSize": "5"})
        if i % 2:
            c.send_frame("UNSUBSCRIBE", {"id": "d", "durable-subscription-name": nm,
                                         "receipt": "gone"})
            c.wait_receipt("gone", "UNSUBSCRIBE (removal)")
        else:  # from another connection, by name
            c.close()
            r = env.client(b.port, f"{nm}-remover", headers={"client-id": f"C{nm}"})
            r.unsubscribe("x", headers={"durable-subscription-name": nm})
            r.close()
    end = time.monotonic() + 30
    while time.monotonic() < end and len(got) < seq:
        time.sleep(0.1)
    time.sleep(1.0)
    kstop.set()
    th.join(timeout=5)
    exactly_once(got, range(1, seq + 1), "durable_unsub: KEEP")
    in_order(got, "durable_unsub: KEEP")
    for i in range(6):  # a removed one starts empty
        nm = f"U{i}"
        u = env.client(b.port, f"{nm}-again", headers={"client-id": f"C{nm}"})
        u.subscribe(t, "d", headers={"durable-subscription-name": nm})
        stale = u.drain(quiet=0.3, max_total=3)
        e.check(not stale, f"durable_unsub: re-created {nm} got {len(stale)} old messages")
        u.unsubscribe("d", headers={"durable-subscription-name": nm})
    acked_store_empty(env, t)
    e.check(b.alive(), "durable_unsub: the broker died")
    stop(env, b)


def scn_durable_offline(env):
    """Three offline durable subscribers: the topic's producer must not be
    paused (each box gives its tail back to the store), and each drains in
    order afterwards."""
    b = start_master(env, "doff")
    t = env.dest("topic", "doff")
    names = ["D1", "D2", "D3"]
    for nm in names:
        c = env.client(b.port, f"{nm}-create", headers={"client-id": f"C{nm}"})
        c.subscribe(t, "d", headers={"durable-subscription-name": nm})
        c.disconnect()
    p = env.client(b.port, "producer")
    n = 1200
    try:
        send_many(p, t, range(1, n + 1))
    except e.TestFailure as x:
        e.fail(f"durable_offline: the producer of a topic with {len(names)} offline "
               f"durable subscribers stalled: {x}; paging lines in the log: "
               f"{b.log_text(whole=True).count('paging: ')}")
    for nm in names:
        expect_paged(b, f"{t} subscription C{nm}:{nm}")
    for nm in names:
        c = env.client(b.port, nm, headers={"client-id": f"C{nm}"})
        c.subscribe(t, "d", headers={"durable-subscription-name": nm,
                                     "activemq.prefetchSize": "30"})
        got = []
        drain(c, n, lambda m: (got.append(e.seq_of(m)), c.ack(m, receipt=False)),
              f"durable_offline: {nm}")
        exactly_once(got, range(1, n + 1), f"durable_offline: {nm}")
        in_order(got, f"durable_offline: {nm}")
        c.unsubscribe("d", headers={"durable-subscription-name": nm})
    acked_store_empty(env, t)
    stop(env, b)


def scn_memory_many(env):
    """--max-memory reached by many queues with small backlogs and no
    consumer: what is stored must go back to the store, not pause every
    producer for good."""
    b = env.broker("memmany", ["--max-dest-bytes", "1m", "--max-memory", "2m",
                               "--max-body", "64k"])
    b.start()
    b.wait_master()
    qs = [env.dest("queue", f"mem{i}") for i in range(8)]
    p = env.client(b.port, "producer")
    n = 500
    for i, qq in enumerate(qs):
        try:
            send_many(p, qq, range(1, n + 1))
        except e.TestFailure as x:
            e.fail(f"memory_many: the producer stalled filling queue {i} of {len(qs)} "
                   f"({n} x 1 KiB each, --max-memory 2m): {x}")
    for qq in qs:
        c = env.client(b.port, "consumer")
        c.subscribe(qq, "s", ack="client-individual", headers={"activemq.prefetchSize": "30"})
        got = []
        drain(c, n, lambda m: (got.append(e.seq_of(m)), c.ack(m, receipt=False)),
              f"memory_many: {qq}")
        exactly_once(got, range(1, n + 1), f"memory_many: {qq}")
        in_order(got, f"memory_many: {qq}")
        c.disconnect()
        acked_store_empty(env, qq)
    stop(env, b)


def scn_disconnect(env):
    b = start_master(env, "disc")
    q = env.dest("queue", "disc")
    fill_paged(env, b, q)
    acked, delivered = [], set()

    def check_flag(m, who):
        s = e.seq_of(m)
        e.check(m.redelivered == (s in delivered),
                f"disconnect: {who} got seq {s} with redelivered={m.redelivered}, "
                f"delivered before: {s in delivered}")
    # Three consumers in turn take a window, ack half of it and vanish.
    for k in range(3):
        c = env.client(b.port, f"quitter{k}")
        c.subscribe(q, "s", ack="client-individual",
                    headers={"activemq.prefetchSize": "40"})
        got = c.drain(quiet=0.7, max_total=5, limit=40)
        e.check(len(got) == 40, f"disconnect: quitter{k} got {len(got)} of its 40")
        for m in got:
            check_flag(m, f"quitter{k}")
        for m in got[:20]:
            c.ack(m, receipt=False)
            acked.append(e.seq_of(m))
        c.request("NACK", {"id": "no-such-ack"}, what="flush")  # the acks are in
        # The acks made room: 20 more came (the prefetch is full again).
        more = c.drain(quiet=0.7, max_total=5)
        e.check(len(more) == 20, f"disconnect: quitter{k} got {len(more)} after its "
                                 f"acks, want 20")
        for m in more:
            check_flag(m, f"quitter{k}")
        c.sock.shutdown(socket.SHUT_RDWR)
        c.close()
        delivered.update(e.seq_of(m) for m in got[20:] + more)
    f = env.client(b.port, "finisher")
    f.subscribe(q, "s", ack="client-individual", headers={"activemq.prefetchSize": "25"})
    rest = []

    def on(m):
        check_flag(m, "finisher")
        rest.append(e.seq_of(m))
        f.ack(m, receipt=False)
    drain(f, FILL - len(acked), on, "disconnect: finisher")
    exactly_once(acked + rest, range(1, FILL + 1), "disconnect: all acks")
    acked_store_empty(env, q)
    stop(env, b)


def scn_many(env):
    b = start_master(env, "many")
    q = env.dest("queue", "many")
    fill_paged(env, b, q)
    extra = 600
    total = FILL + extra
    lock = threading.Lock()
    got = []
    errors = []
    stop_ev = threading.Event()

    def consumer(i):
        try:
            c = e.connect_client(b.port, f"c{i}")
            c.subscribe(q, "s", ack="client-individual" if i % 3 else "client",
                        headers={"activemq.prefetchSize": "1"})
            idle = time.monotonic()
            while not stop_ev.is_set():
                m = c.recv_message(timeout=0.2)
                if m is None:
                    if time.monotonic() - idle > 20:
                        break
                    continue
                idle = time.monotonic()
                with lock:
                    got.append(e.seq_of(m))
                c.ack(m, receipt=False)
            c.disconnect()
        except Exception as x:  # noqa: BLE001
            errors.append(f"c{i}: {x!r}")
    ths = [threading.Thread(target=consumer, args=(i,), daemon=True) for i in range(12)]
    for th in ths:
        th.start()
    p = env.client(b.port, "late-producer")
    send_many(p, q, range(FILL + 1, total + 1))
    end = time.monotonic() + 60
    last, last_t = -1, time.monotonic()
    while time.monotonic() < end:
        with lock:
            n = len(got)
        if n >= total:
            break
        if n != last:
            last, last_t = n, time.monotonic()
        elif time.monotonic() - last_t > 15:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    stop_ev.set()
    for th in ths:
        th.join(timeout=10)
    e.check(not errors, f"many: consumer errors {errors[:3]}")
    exactly_once(got, range(1, total + 1), "many (12 consumers, prefetch 1)")
    acked_store_empty(env, q)
    stop(env, b)


def scn_auto(env):
    b = start_master(env, "auto")
    q = env.dest("queue", "auto")
    fill_paged(env, b, q)
    cs = [env.client(b.port, f"auto{i}") for i in range(3)]
    for c in cs:
        c.subscribe(q, "s", ack="auto")
    got = {i: [] for i in range(3)}
    end = time.monotonic() + 60
    quiet_since = time.monotonic()
    while time.monotonic() < end:
        any_ = False
        for i, c in enumerate(cs):
            for m in c.drain(quiet=0.05, max_total=0.3):
                got[i].append(e.seq_of(m))
                any_ = True
        n = sum(len(v) for v in got.values())
        if any_:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > (1.5 if n >= FILL else 15):
            break
    allg = [s for v in got.values() for s in v]
    exactly_once(allg, range(1, FILL + 1), "auto: three consumers together")
    for i in range(3):
        in_order(got[i], f"auto: consumer {i}")
    acked_store_empty(env, q)
    stop(env, b)


def scn_nonpersistent(env):
    b = start_master(env, "nonp")
    q = env.dest("queue", "nonp")
    fill_paged(env, b, q, n=1500)
    c = env.client(b.port, "consumer")
    c.subscribe(q, "s", ack="client-individual", headers={"activemq.prefetchSize": "20"})
    p = env.client(b.port, "mixed-producer")
    got = []
    sent = [0]
    nxt = iter(range(1501, 2501))

    def on(m):
        got.append((e.seq_of(m), m.headers.get("persistent") == "true"))
        c.ack(m, receipt=False)
        if len(got) % 2 == 0:
            for s in [next(nxt, None) for _ in range(2)]:
                if s is None:
                    continue
                send_many(p, q, [s], persistent=(s % 3 != 0))
                sent[0] += 1
    drain(c, 2500, on, "nonpersistent")
    pers = [s for s, pp in got if pp]
    nonp = [s for s, pp in got if not pp]
    e.check(sent[0] == 1000, f"nonpersistent: sent {sent[0]} of 1000 during the drain")
    want_np = [s for s in range(1501, 2501) if s % 3 == 0]
    exactly_once(nonp, want_np, "nonpersistent: non-persistent ones")
    exactly_once(pers, [s for s in range(1, 2501) if s not in set(want_np)],
                 "nonpersistent: persistent ones")
    in_order(pers, "nonpersistent: persistent ones")
    in_order(nonp, "nonpersistent: non-persistent ones")
    acked_store_empty(env, q)
    stop(env, b)


def scn_priorities(env):
    b = start_master(env, "prio")
    q = env.dest("queue", "prio")
    fill_paged(env, b, q, hdrs=lambda s: {"priority": str(s % 10)})
    c = env.client(b.port, "consumer")
    c.subscribe(q, "s", ack="client-individual", headers={"activemq.prefetchSize": "10"})
    rng = random.Random(7)
    p = env.client(b.port, "producer")
    extra = iter(range(FILL + 1, FILL + 801))
    prio_of = {s: s % 10 for s in range(1, FILL + 1)}
    got = []

    def on(m):
        s = e.seq_of(m)
        got.append(s)
        e.check(int(m.headers.get("priority", "4")) == prio_of.get(s, -1),
                f"priorities: seq {s} has priority {m.headers.get('priority')}")
        c.ack(m, receipt=False)
        if len(got) % 3 == 0:
            x = next(extra, None)
            if x is not None:
                prio_of[x] = rng.randrange(10)
                send_many(p, q, [x], hdrs=lambda s: {"priority": str(prio_of[s])})
    drain(c, FILL + 800, on, "priorities")
    exactly_once(got, range(1, FILL + 801), "priorities")
    for pr in range(10):
        in_order([s for s in got if prio_of[s] == pr], f"priorities: priority {pr}")
    # The backlog alone, before any extra message: priority 9 first.
    head = [s for s in got[:150]]
    e.check(all(prio_of[s] == 9 for s in head if s <= FILL),
            f"priorities: the first deliveries are not the 9s: {head[:20]}")
    acked_store_empty(env, q)
    stop(env, b)


def scn_max_memory(env):
    # Boxes could hold 2 MiB each; four of them go over --max-memory first.
    b = env.broker("maxmem", ["--max-dest-bytes", "4m", "--max-memory", "4m",
                              "--max-body", "64k"])
    b.start()
    b.wait_master()
    qs = [env.dest("queue", f"mm{i}") for i in range(4)]
    n = 1500
    ths, errors = [], []

    def fill(qq, i):
        try:
            p = e.connect_client(b.port, f"filler{i}")
            send_many(p, qq, range(1, n + 1))
            p.disconnect()
        except Exception as x:  # noqa: BLE001
            errors.append(repr(x))
    for i, qq in enumerate(qs):
        ths.append(threading.Thread(target=fill, args=(qq, i), daemon=True))
        ths[-1].start()
    for th in ths:
        th.join(timeout=60)
    e.check(not errors, f"max_memory: fill errors {errors[:2]}")
    e.check("paging: " in b.log_text(whole=True), "max_memory: no queue paged")
    res = {}

    def cons(qq, i):
        try:
            c = e.connect_client(b.port, f"cons{i}")
            c.subscribe(qq, "s", ack="client-individual",
                        headers={"activemq.prefetchSize": "100"})
            out = []
            drain(c, n, lambda m: (out.append(e.seq_of(m)), c.ack(m, receipt=False)),
                  f"max_memory: {qq}")
            res[qq] = out
            c.disconnect()
        except Exception as x:  # noqa: BLE001
            errors.append(repr(x))
    ths = [threading.Thread(target=cons, args=(qq, i), daemon=True)
           for i, qq in enumerate(qs)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(timeout=90)
    e.check(not errors, f"max_memory: {errors[:2]}")
    for qq in qs:
        exactly_once(res.get(qq, []), range(1, n + 1), f"max_memory: {qq}")
        in_order(res[qq], f"max_memory: {qq}")
        acked_store_empty(env, qq)
    stop(env, b)


def second_store(env, label):
    """Broker B's store: --store-uri-b, else (SQLite) a file beside the
    test's, else (a server) the database name + "_b", which
    tests/db/postgres.sh creates for the bridge tests. None: no such store."""
    if env.args.store_uri_b:
        uri = env.args.store_uri_b.replace("@TMP@", env.workdir)
    elif env.backend == "sqlite":
        uri = env.base_uri
        q = ""
        if "?" in uri:
            uri, q = uri.split("?", 1)
            q = "?" + q
        root, ext = os.path.splitext(uri)
        uri = f"{root}-{label}{ext or '.db'}{q}"
    elif env.backend.startswith("postgres"):
        uri = env.base_uri
        q = ""
        if "?" in uri:
            uri, q = uri.split("?", 1)
            q = "?" + q
        uri = f"{uri}_b{q}"
    else:
        return None
    return e.with_option(uri, "cluster", f"{env.cluster}-{label}")


def pending_in(env, uri, dest):
    return env.store_pending_dest(dest, uri)


def wait_pending(env, uri, dest, want, what, timeout=30.0):
    end = time.monotonic() + timeout
    got = None
    while time.monotonic() < end:
        got = pending_in(env, uri, dest)
        if got is None or got == want:
            return
        time.sleep(0.2)
    e.fail(f"{what}: {got} pending for {dest}, want {want}")


def net_pair(env, label, duplex):
    small = ["--max-dest-bytes", MAX_DEST, "--max-body", "64k"]
    b_port = env.port()
    ub = second_store(env, f"{label}b")
    if ub is None:
        return None
    ua = e.with_option(env.base_uri, "cluster", f"{env.cluster}-{label}a")
    bb = env.broker(f"{label}-B", ["--broker-name", "B"] + small, store_uri=ub,
                    cluster=f"{env.cluster}-{label}b", port=b_port)
    spec = f"name=toB;uri=static:(tcp://127.0.0.1:{b_port})"
    if duplex:
        spec += ";duplex=true"
    a = env.broker(f"{label}-A", ["--broker-name", "A", "--network-connector", spec] + small,
                   store_uri=ua, cluster=f"{env.cluster}-{label}a")
    bb.start()
    bb.wait_master()
    a.start()
    a.wait_master()
    end = time.monotonic() + 20
    while "toB" not in a.log_text(whole=True) or time.monotonic() < a.started_at + 1.0:
        if time.monotonic() > end:
            break
        time.sleep(0.1)
    return a, bb, ua, ub


def scn_network_drain(env):
    """A paged backlog on A drained by a consumer on B through A's bridge
    (a network subscription on A's paged queue)."""
    pair = net_pair(env, "netd", duplex=False)
    if pair is None:
        e.log("network_drain: skipped (no store for broker B: --store-uri-b)")
        return "skipped"
    a, bb, ua, ub = pair
    q = env.dest("queue", "netd")
    fill_paged(env, a, q, n=1500)
    c = env.client(bb.port, "consumer@B")
    c.subscribe(q, "s", ack="client-individual", headers={"activemq.prefetchSize": "20"})
    got = []
    drain(c, 1500, lambda m: (got.append(e.seq_of(m)), c.ack(m, receipt=False)),
          "network_drain: consumer on B", timeout=60)
    exactly_once(got, range(1, 1501), "network_drain")
    in_order(got, "network_drain")
    wait_pending(env, ua, q, 0, "network_drain: A at the end")
    wait_pending(env, ub, q, 0, "network_drain: B at the end")
    stop(env, a, bb)


def scn_network_backlog(env):
    """1500 messages from A wait on B (paged there; A is in their path, so
    the duplex bridge may not take them back). 20 produced on B behind them
    must still reach a consumer on A."""
    pair = net_pair(env, "netb", duplex=True)
    if pair is None:
        e.log("network_backlog: skipped (no store for broker B: --store-uri-b)")
        return "skipped"
    a, bb, ua, ub = pair
    q = env.dest("queue", "netb")
    hold = env.client(bb.port, "holder@B")
    hold.subscribe(q, "s", ack="client-individual", headers={"activemq.prefetchSize": "1"})
    time.sleep(1.0)  # B's demand reaches A
    p = env.client(a.port, "producer@A")
    send_many(p, q, range(1, 1501))
    wait_pending(env, ua, q, 0, "network_backlog: A after forwarding")
    wait_pending(env, ub, q, 1500, "network_backlog: B after forwarding")
    expect_paged(bb, q)
    hold.close()
    pb = env.client(bb.port, "producer@B")
    send_many(pb, q, range(10001, 10021))
    ca = env.client(a.port, "consumer@A")
    ca.subscribe(q, "s", ack="client-individual", headers={"activemq.prefetchSize": "10"})
    got = []
    try:
        drain(ca, 20, lambda m: (got.append(e.seq_of(m)), ca.ack(m, receipt=False)),
              "network_backlog: B's own messages on A", timeout=30, quiet=2.0)
    except e.TestFailure as x:
        e.fail(f"{x} (A got {got}; B pending {pending_in(env, ub, q)})")
    exactly_once(got, range(10001, 10021), "network_backlog: on A")
    ca.close()
    cb = env.client(bb.port, "consumer@B")
    cb.subscribe(q, "s", ack="client-individual", headers={"activemq.prefetchSize": "20"})
    rest = []
    drain(cb, 1500, lambda m: (rest.append(e.seq_of(m)), cb.ack(m, receipt=False)),
          "network_backlog: the backlog on B")
    exactly_once(rest, range(1, 1501), "network_backlog: on B")
    in_order(rest, "network_backlog: on B")
    stop(env, a, bb)


def scn_db_restart(env):
    """The database goes away in the middle of a drain (only with
    --db-restart-cmd, e.g. "MQS_PG_PORT=55470 MQS_RESTART_PAUSE_MS=3000
    tests/db/postgres.sh restart"): page reads fail and are retried, or the
    broker loses its lease with reads in flight and takes over again; the
    consumer reconnects as needed. Every message is acked (confirmed by a
    RECEIPT) exactly once and none comes back after its confirmed ACK."""
    cmd = env.args.db_restart_cmd
    if not cmd:
        e.log("db_restart: skipped (no --db-restart-cmd)")
        return "skipped"
    b = start_master(env, "dbr")
    q = env.dest("queue", "dbr")
    fill_paged(env, b, q)
    confirmed, after, errs = [], [], []
    th = None
    reconnects = 0
    end = time.monotonic() + 120
    c = None
    while len(confirmed) < FILL and time.monotonic() < end:
        try:
            if c is None:
                c = e.connect_retry(b.port, "consumer", timeout=60)
                c.subscribe(q, "s", ack="client-individual",
                            headers={"activemq.prefetchSize": "20"})
            m = c.recv_message(timeout=20)
            if m is None:
                e.fail(f"db_restart: nothing for 20 s at {len(confirmed)} of {FILL} "
                       f"confirmed ({reconnects} reconnects)")
            s_ = e.seq_of(m)
            if s_ in set(confirmed[-FILL:]):
                after.append(s_)
            if th is None and len(confirmed) >= 300:
                def restart():
                    r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True,
                                       timeout=120)
                    if r.returncode:
                        errs.append(f"exit {r.returncode}: {r.stderr[-300:]}")
                th = threading.Thread(target=restart, daemon=True)
                th.start()
            c.ack(m, receipt=True)
            confirmed.append(s_)
        except (e.ConnectionClosed, e.StompErrorFrame, OSError) as x:
            e.log(f"db_restart: consumer reconnects after {x!r:.200}")
            reconnects += 1
            if c:
                c.close()
            c = None
    if c:
        c.close()
    if th:
        th.join(timeout=120)
    e.check(not errs, f"db_restart: {cmd}: {errs}")
    e.check(not after, f"db_restart: delivered again after a confirmed ACK: "
                       f"{e.summarize(after)}")
    exactly_once(confirmed, range(1, FILL + 1), "db_restart: confirmed acks")
    env.result("db_restart_reconnects", reconnects)
    acked_store_empty(env, q)
    stop(env, b)


def failover_drain(env, how):
    a, bb = start_master(env, how, standby=True)
    q = env.dest("queue", how)
    fill_paged(env, a, q)
    c = env.client(a.port, "consumer@a")
    c.subscribe(q, "s", ack="client-individual", headers={"activemq.prefetchSize": "40"})
    confirmed, delivered = [], []
    prod_stop = threading.Event()
    produced = []
    extra_err = []

    def producer():
        # Keeps sending while the master goes; a SEND without its RECEIPT is
        # resent to the new master with the same mq-producer/mq-seq (a
        # failover client's replay), so each seq is stored once.
        s = FILL
        pid = f"P-{env.run_id}-{how}"  # marks are kept in the store
        port = a.port
        p = None
        try:
            while not prod_stop.is_set():
                if p is None:
                    p = e.connect_retry(port, "producer", timeout=30)
                s += 1
                try:
                    send_many(p, q, [s], hdrs=lambda x: {"mq-producer": pid,
                                                          "mq-seq": str(x)})
                    produced.append(s)
                except (e.ConnectionClosed, e.TestFailure, e.StompErrorFrame, OSError):
                    p.close()
                    p = None
                    port = bb.port
                    s -= 1  # resend it
                time.sleep(0.005)
        except Exception as x:  # noqa: BLE001
            extra_err.append(repr(x))
        if p:
            p.disconnect()
    th = None
    if how == "kill9":
        th = threading.Thread(target=producer, daemon=True)
        th.start()
    # Ack with receipts: what was confirmed must never come back.
    while len(confirmed) < 700:
        m = c.recv_message(timeout=10)
        e.check(m is not None, f"{how}: stalled at {len(confirmed)} before the failover")
        delivered.append(e.seq_of(m))
        c.ack(m, receipt=True)
        confirmed.append(e.seq_of(m))
    if how == "sigterm":
        a.terminate()
    else:
        a.kill9()
    bb.wait_master()
    c.close()
    c2 = e.connect_retry(bb.port, "consumer@b")
    env.clients.append(c2)
    c2.subscribe(q, "s", ack="client-individual", headers={"activemq.prefetchSize": "40"})
    if th:
        time.sleep(1.0)
        prod_stop.set()
        th.join(timeout=30)
        e.check(not extra_err, f"{how}: producer {extra_err}")
    want = list(range(1, FILL + 1)) + produced
    rest = []

    def on(m):
        s = e.seq_of(m)
        e.check(s not in confirmed_set, f"{how}: seq {s} came back after its ACK was "
                                        f"confirmed by a RECEIPT")
        rest.append(s)
        c2.ack(m, receipt=False)
    confirmed_set = set(confirmed)
    drain(c2, len(want) - len(confirmed), on, f"{how}: on the new master")
    exactly_once(confirmed + rest, want, f"{how}: acked on both masters")
    in_order([s for s in rest if s <= FILL], f"{how}: the backlog on the new master")
    acked_store_empty(env, q)
    stop(env, a, bb)


def scn_sigterm(env):
    failover_drain(env, "sigterm")


def scn_kill9(env):
    failover_drain(env, "kill9")


SCENARIOS = [
    ("nack", scn_nack),
    ("client_ack", scn_client_ack),
    ("client_batch", scn_client_batch),
    ("slow_holder", scn_slow_holder),
    ("txn", scn_txn),
    ("dlq", scn_dlq),
    ("expiry", scn_expiry),
    ("durable_unsub", scn_durable_unsub),
    ("durable_offline", scn_durable_offline),
    ("memory_many", scn_memory_many),
    ("disconnect", scn_disconnect),
    ("many", scn_many),
    ("auto", scn_auto),
    ("nonpersistent", scn_nonpersistent),
    ("priorities", scn_priorities),
    ("max_memory", scn_max_memory),
    ("network_drain", scn_network_drain),
    ("network_backlog", scn_network_backlog),
    ("db_restart", scn_db_restart),
    ("sigterm", scn_sigterm),
    ("kill9", scn_kill9),
]


def main(env):
    env.lengthen_lease()
    only = [x for x in (env.args.only or "").split(",") if x]
    skip = [x for x in (env.args.skip or "").split(",") if x]
    unknown = set(only + skip) - {n for n, _ in SCENARIOS}
    e.check(not unknown, f"unknown scenarios {sorted(unknown)}")
    failed = []
    for name, fn in SCENARIOS:
        if (only and name not in only) or name in skip:
            env.result(name, "not run")
            continue
        t0 = time.monotonic()
        e.log(f"--- {name}")
        try:
            r = fn(env)
            env.result(name, r or f"ok {time.monotonic() - t0:.1f}s")
        except (e.TestFailure, e.StompErrorFrame, e.ConnectionClosed) as x:
            env.result(name, f"FAIL {time.monotonic() - t0:.1f}s")
            failed.append(f"{name}: {x}")
            e.log(f"{name} FAILED: {x}")
            if not env.args.keep_going:
                raise
            for c in env.clients:
                c.close()
            env.clients.clear()
            for br in env.brokers:
                br.cleanup()
    if failed:
        e.fail("; ".join(failed))


if __name__ == "__main__":
    e.Env("paging_edges", __doc__, extra_args=[
        (["--only"], {"default": "", "help": "comma-separated scenario names"}),
        (["--skip"], {"default": "", "help": "comma-separated scenario names not to run "
                                             "(CI: network_backlog, a known gap)"}),
        (["--store-uri-b"], {"default": "",
                             "help": "store of the second broker of the network "
                                     "scenarios (default: SQLite a file beside the "
                                     "test's, PostgreSQL the database + '_b'; "
                                     "MariaDB: skipped without it)"}),
        (["--db-restart-cmd"], {"default": "",
                                "help": "shell command that stops and restarts the "
                                        "database (db_restart runs only with it)"}),
        (["--keep-going"], {"action": "store_true",
                            "help": "run every scenario even after one failed"}),
    ]).run(main)
