#!/usr/bin/python3
"""Two brokers on one store, kill -9 the master twice, lose nothing.

1. Broker A becomes master, broker B waits as standby with its port closed.
2. A producer sends 1,000 persistent messages to A, each with a receipt.
3. A consumer (prefetch 500) acks the first 300 (client-individual: each with
   a receipt; client: one cumulative ACK of the 300th) and reads some more
   without acking them.
4. kill -9 A. B takes over (the takeover time is measured). The consumer
   reconnects to B and must receive exactly the 700 unacked messages: none
   lost, none of the 300 acked again, no duplicates, and every message it
   had already been given by A flagged redelivered:true.
5. It acks 400 of them; a producer sends 100 more to B.
6. A is restarted: it must wait as standby with its port closed.
7. kill -9 B. A takes over and delivers exactly the 400 messages never
   acked (nothing acked, nothing twice); A then exits 0 on SIGTERM.
"""
import collections
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402

TOTAL = 1000
FIRST_ACKS = 300
SECOND_ACKS = 400
EXTRA = 100
PREFETCH = 500          # first consumer: 500 in flight, so some are never delivered
PREFETCH_AFTER = 2000   # after a failover: room for the whole backlog unacked


def consume_phase(env, port, name, dest, ack_mode, expect, delivered_before, label):
    """Connect, subscribe and receive until every expected seq arrived (or
    20 s), then 1 s more to catch extras. Checks the received set against
    `expect` and the redelivered flag against `delivered_before`. Returns
    (client, messages in arrival order)."""
    c = e.connect_retry(port, name)
    env.clients.append(c)
    c.subscribe(dest, "sub-1", ack=ack_mode,
                headers={"activemq.prefetchSize": str(PREFETCH_AFTER)})
    msgs = []
    seen = set()
    end = time.monotonic() + 20
    while time.monotonic() < end and not expect.issubset(seen):
        m = c.recv_message(timeout=max(end - time.monotonic(), 0.05))
        if m is None:
            break
        msgs.append(m)
        seen.add(e.seq_of(m))
    msgs += c.drain(quiet=1.0, max_total=5)
    seqs = [e.seq_of(m) for m in msgs]
    got = set(seqs)
    dups = sorted(s for s, n in collections.Counter(seqs).items() if n > 1)
    missing = expect - got
    extra = got - expect
    e.check(not missing, f"{label}: {len(missing)} unacked messages were not delivered "
                         f"(lost?): {e.summarize(missing)}; received {len(got)}")
    e.check(not extra, f"{label}: {len(extra)} messages delivered that were acked before "
                       f"the failover: {e.summarize(extra)}")
    e.check(not dups, f"{label}: {len(dups)} messages delivered twice on one connection: "
                      f"{e.summarize(dups)}")
    for m in msgs:
        s = e.seq_of(m)
        e.check(m.body == e.body_for(s, "m" if s <= TOTAL else "x"),
                f"{label}: seq {s} has body {m.body[:40]!r}, expected "
                f"{e.body_for(s, 'm' if s <= TOTAL else 'x')!r}")
        for h in ("message-id", "subscription", "ack", "destination"):
            e.check(h in m.headers, f"{label}: MESSAGE seq {s} lacks the {h} header: "
                                     f"{m.headers}")
    first_copy = {}
    for m in msgs:
        first_copy.setdefault(e.seq_of(m), m)
    unflagged = sorted(s for s in delivered_before
                       if s in first_copy and not first_copy[s].redelivered)
    e.check(not unflagged,
            f"{label}: {len(unflagged)} messages delivered before the failover and not "
            f"acked came back WITHOUT redelivered:true: {e.summarize(unflagged)}")
    flagged = sum(1 for m in msgs if m.redelivered)
    e.log(f"{label}: received {len(msgs)} messages as expected "
          f"({flagged} flagged redelivered, {len(delivered_before & got)} delivered before)")
    return c, msgs


def main(env):
    ack_mode = env.args.ack_mode
    dest = env.dest("queue", "orders")
    a = env.broker("broker-a")
    b = env.broker("broker-b")

    # 1. A master, B standby.
    a.start()
    ia = a.wait_master()
    e.log(f"broker-a is master (token {ia['token']}, recovered {ia['recovered']} in "
          f"{ia['recover_ms']} ms)")
    b.start()
    b.wait_standby()
    e.log("broker-b waits as standby with its port closed")

    # 2. 1,000 persistent messages with receipts.
    prod = env.client(a.port, "producer")
    t0 = time.monotonic()
    e.produce(prod, dest, range(1, TOTAL + 1))
    env.result("send_1000_with_receipts_ms", round((time.monotonic() - t0) * 1000))
    prod.disconnect()
    e.log(f"producer: {TOTAL} receipts received")

    # 3. Ack the first 300.
    cons = env.client(a.port, "consumer@a")
    cons.subscribe(dest, "sub-1", ack=ack_mode,
                   headers={"activemq.prefetchSize": str(PREFETCH)})
    first = []
    while len(first) < FIRST_ACKS:
        m = cons.recv_message(timeout=10)
        e.check(m is not None, f"consumer@a: only {len(first)} messages delivered within "
                               f"10 s, expected at least {FIRST_ACKS}")
        first.append(m)
    got = [e.seq_of(m) for m in first]
    e.check(got == list(range(1, FIRST_ACKS + 1)),
            f"consumer@a: the first {FIRST_ACKS} messages are not seq 1..{FIRST_ACKS} in "
            f"order (queue order broken): {got[:20]}...")
    if ack_mode == "client-individual":
        for m in first:
            cons.ack(m, receipt=True)
    else:  # client: one cumulative ACK covers every earlier message
        cons.ack(first[-1], receipt=True)
    acked = set(range(1, FIRST_ACKS + 1))
    more = cons.drain(quiet=0.5, max_total=3)  # delivered, never acked
    delivered_a = {e.seq_of(m) for m in more}
    e.check(not (delivered_a & acked),
            f"consumer@a: acked messages delivered again on the same connection: "
            f"{e.summarize(delivered_a & acked)}")
    e.log(f"consumer@a: acked {FIRST_ACKS}, holds {len(delivered_a)} more unacked")
    env.expect_store_pending(dest, TOTAL - FIRST_ACKS, f"after {FIRST_ACKS} ACKs with "
                             f"receipts", timeout=0)

    # 4. kill -9 A; B takes over; exactly the 700 come back.
    t_kill = a.kill9()
    ib = b.wait_master()
    takeover = round((ib["at"] - t_kill) * 1000)
    env.result("takeover_1_ms", takeover)
    env.result("takeover_1_recovered", ib["recovered"])
    env.result("takeover_1_recover_ms", ib["recover_ms"])
    e.log(f"broker-b took over in {takeover} ms (token {ib['token']}, recovered "
          f"{ib['recovered']} destinations in {ib['recover_ms']} ms)")
    e.check(ib["token"] > ia["token"],
            f"broker-b's fencing token {ib['token']} is not above broker-a's {ia['token']}")
    try:
        f = cons.recv(timeout=5)
        e.fail(f"consumer@a: connection to the killed broker still delivers: {f!r}")
    except e.ConnectionClosed:
        pass
    e.check(e.port_state(a.port) == "refused", "broker-a's port is open after kill -9")

    expect = set(range(1, TOTAL + 1)) - acked
    cons_b, msgs_b = consume_phase(env, b.port, "consumer@b", dest, ack_mode, expect,
                                   delivered_a, "after failover 1")
    env.result("redelivered_flagged_1", sum(1 for m in msgs_b if m.redelivered))

    # 5. Ack 400 of them; 100 more messages go to B.
    ack_now = msgs_b[:SECOND_ACKS]
    if ack_mode == "client-individual":
        for m in ack_now:
            cons_b.ack(m, receipt=True)
    else:
        cons_b.ack(ack_now[-1], receipt=True)
    acked |= {e.seq_of(m) for m in ack_now}
    prod_b = env.client(b.port, "producer@b")
    e.produce(prod_b, dest, range(TOTAL + 1, TOTAL + EXTRA + 1), tag="x")
    prod_b.disconnect()
    late = cons_b.drain(quiet=1.0, max_total=5)
    delivered_b = {e.seq_of(m) for m in msgs_b[SECOND_ACKS:]} | {e.seq_of(m) for m in late}
    e.check(not (delivered_b & acked),
            f"consumer@b: acked messages delivered again: {e.summarize(delivered_b & acked)}")
    env.expect_store_pending(dest, TOTAL + EXTRA - len(acked), "after the second acks "
                             "(with receipts)", timeout=0)

    # 6. Restart A: standby.
    a.start()
    a.wait_standby()
    e.log("broker-a restarted and waits as standby with its port closed")

    # 7. kill -9 B; A takes over and delivers exactly what was never acked.
    t_kill = b.kill9()
    ia2 = a.wait_master()
    takeover = round((ia2["at"] - t_kill) * 1000)
    env.result("takeover_2_ms", takeover)
    env.result("takeover_2_recovered", ia2["recovered"])
    e.log(f"broker-a took over again in {takeover} ms (token {ia2['token']})")
    e.check(ia2["token"] > ib["token"],
            f"broker-a's new token {ia2['token']} is not above broker-b's {ib['token']}")
    expect = set(range(1, TOTAL + EXTRA + 1)) - acked
    cons_a2, msgs_a2 = consume_phase(env, a.port, "consumer@a2", dest, ack_mode, expect,
                                     delivered_b, "after failover 2")
    env.result("redelivered_flagged_2", sum(1 for m in msgs_a2 if m.redelivered))
    if ack_mode == "client-individual":
        for m in msgs_a2:
            cons_a2.ack(m, receipt=True)
    else:
        cons_a2.ack(msgs_a2[-1], receipt=True)
    cons_a2.disconnect()

    # Nothing left: a fresh consumer gets nothing, the store has nothing.
    last = env.client(a.port, "consumer@a3")
    last.subscribe(dest, "sub-1", ack="client-individual")
    rest = last.drain(quiet=1.0, max_total=5)
    e.check(not rest, f"after every message was acked, {len(rest)} were delivered again: "
                      f"{e.summarize(e.seq_of(m) for m in rest)}")
    last.disconnect()
    env.expect_store_pending(dest, 0, "at the end")
    a.terminate()
    e.log(f"{TOTAL + EXTRA} sent, {len(acked) + len(msgs_a2)} acked in total across two "
          f"kill -9 failovers: none lost, none acked twice")


if __name__ == "__main__":
    e.Env("failover", __doc__, extra_args=[
        (["--ack-mode"], {"choices": ["client-individual", "client"],
                          "default": "client-individual",
                          "help": "STOMP ack mode of the consumer (default %(default)s)"}),
    ]).run(main)
