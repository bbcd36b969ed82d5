#!/usr/bin/python3
"""A frozen master (SIGSTOP) is replaced once its lease expires, and when it
wakes up (SIGCONT) it is fenced: it confirms nothing, closes its clients and
goes back to standby with its port closed.

1. A master, B standby. A producer and a consumer are connected to A; the
   consumer holds seq 1..20 unacked.
2. SIGSTOP A: with --freeze-while idle (default) after 0.6 s without client
   traffic, so A is most likely between two of its (lease renewal) writes;
   with --freeze-while busy right after the deliveries, while A is still
   writing their "delivered" marks. A process frozen inside a write
   transaction keeps its database locks (SQLite's file lock, the lock row's
   row lock on PostgreSQL/MariaDB): see the report in the run's output. B must take over within lease_ms + 3 s (the lease decides:
   A's process is alive, so the crash detector cannot).
3. While A is frozen, the producer writes seq 21 to A's socket (the kernel
   takes it; nobody reads it), and another producer sends seq 101..110 to B.
4. SIGCONT A. A must close the producer's and the consumer's connections
   and must NOT confirm seq 21 unless it really was stored; its port must
   close and it must log "waiting for the store lock" again.
5. On B a consumer gets exactly seq 1..20 (redelivered), 101..110, plus
   seq 21 if and only if A sent its RECEIPT.
"""
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402


def main(env):
    m = re.search(r"[?&]lease_ms=(\d+)", env.store_uri)
    lease_ms = int(m.group(1)) if m else 2000
    dest = env.dest("queue", "freeze")
    a = env.broker("broker-a")
    b = env.broker("broker-b")
    a.start()
    ia = a.wait_master()
    b.start()
    b.wait_standby()

    prod = env.client(a.port, "producer@a")
    e.produce(prod, dest, range(1, 21))
    cons = env.client(a.port, "consumer@a")
    cons.subscribe(dest, "sub-1", headers={"activemq.prefetchSize": "100"})
    held = cons.drain(quiet=0.5, max_total=5, limit=20)
    e.check([e.seq_of(x) for x in held] == list(range(1, 21)),
            f"consumer@a: expected seq 1..20, got {[e.seq_of(x) for x in held]}")
    if env.args.freeze_while == "idle":
        time.sleep(0.6)

    os.kill(a.proc.pid, signal.SIGSTOP)
    t_stop = time.monotonic()
    e.log("broker-a frozen with SIGSTOP")
    try:
        ib = b.wait_master(timeout=lease_ms / 1000 + 10)
        takeover = round((ib["at"] - t_stop) * 1000)
        env.result("freeze_takeover_ms", takeover)
        e.log(f"broker-b took over {takeover} ms after the freeze (lease_ms {lease_ms})")
        e.check(takeover <= lease_ms + 3000,
                f"broker-b took {takeover} ms to replace a frozen master; the lease "
                f"({lease_ms} ms) should decide within lease_ms + 3000 ms")
        e.check(ib["token"] > ia["token"], f"token did not grow: {ia['token']} -> "
                                           f"{ib['token']}")
        # Written to the frozen master's socket; nobody reads it yet.
        prod.send_frame("SEND", {"destination": dest, "persistent": "true", "seq": "21",
                                 "receipt": "late-21"}, e.body_for(21))
        prod_b = e.connect_retry(b.port, "producer@b")
        env.clients.append(prod_b)
        e.produce(prod_b, dest, range(101, 111))
        prod_b.disconnect()
        time.sleep(0.5)
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    t_cont = time.monotonic()
    e.log("broker-a resumed with SIGCONT")

    # The woken master must hang up on its clients, confirming nothing new.
    got_receipt = False
    for c in (prod, cons):
        try:
            frames = c.wait_closed(timeout=10)
        except e.TestFailure:
            e.fail(f"{c.name}: broker-a did not close the connection within 10 s after "
                   f"waking up without the lock")
        for f in frames:
            if f.command == "RECEIPT" and f.headers.get("receipt-id") == "late-21":
                got_receipt = True
            e.check(f.command != "MESSAGE" or c is not cons,
                    f"consumer@a got a MESSAGE from the fenced broker-a: {f!r}")
    env.result("fenced_master_confirmed_late_send", got_receipt)
    end = time.monotonic() + 10
    while e.port_state(a.port) != "refused":
        e.check(time.monotonic() < end, f"broker-a's port {a.port} is still open 10 s after "
                                        f"it woke up without the lock")
        time.sleep(0.05)
    env.result("fenced_port_closed_ms", round((time.monotonic() - t_cont) * 1000))
    e.check(a.alive(), f"broker-a exited after losing the lock (it should go back to "
                       f"standby); log:\n{a.log_tail()}")
    end = time.monotonic() + 10
    while len(e.WAITING_RE.findall(a.log_text())) < 2:
        e.check(time.monotonic() < end,
                f"broker-a did not log 'waiting for the store lock' again after losing it; "
                f"log:\n{a.log_tail()}")
        time.sleep(0.05)
    e.log("broker-a stepped down: clients closed, port closed, waiting for the lock")

    cons_b = e.connect_retry(b.port, "consumer@b")
    env.clients.append(cons_b)
    cons_b.subscribe(dest, "sub-1", headers={"activemq.prefetchSize": "100"})
    got = cons_b.drain(quiet=1.5, max_total=15)
    seqs = sorted(e.seq_of(x) for x in got)
    want = list(range(1, 21)) + list(range(101, 111))
    if got_receipt:
        want = sorted(want + [21])
    e.check(seqs == want,
            f"after the freeze: expected {e.summarize(want)} (seq 21 "
            f"{'confirmed' if got_receipt else 'not confirmed'} by the fenced master), got "
            f"{e.summarize(seqs)}")
    unflagged = [e.seq_of(x) for x in got if e.seq_of(x) <= 20 and not x.redelivered]
    e.check(not unflagged, f"seq delivered before the freeze came back without "
                           f"redelivered:true: {unflagged}")
    for x in got:
        cons_b.ack(x)
    cons_b.disconnect()
    env.expect_store_pending(dest, 0, "at the end")
    b.terminate()
    a.terminate()


if __name__ == "__main__":
    e.Env("freeze", __doc__, extra_args=[
        (["--freeze-while"], {"choices": ["idle", "busy"], "default": "idle",
                              "help": "when to SIGSTOP the master (default %(default)s)"}),
    ]).run(main)
