#!/usr/bin/python3
"""mqbroker master + standby through pgbouncer (run by with-pgbouncer.sh,
which appends the pgbouncer URI after --store-uri).

Transaction pooling, crash_detect=on: the crash detector cannot work (a
session-level advisory lock stays with a pooled server connection): the
configuration is refused. The broker exits with status 1 at start, its log
saying why and naming the fix (crash_detect=off), and it never listens.
crash_detect=off: nothing is said, the standby takes over only once the
master's lease can have ended (no takeover on a session lock that proves
nothing here), and within a bound.

Session pooling with pooler=session (crash_detect=on): the detector works
through the pooler's pinned server session: no warning, and the standby
takes over well before the lease could end.

Always: a producer's receipted messages survive kill -9 of the master, and a
consumer then gets every one of them exactly once.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import mqe2e as e  # noqa: E402

LEASE_MS = 2000
RENEW_MS = 500
TOTAL = 300
WARN = "crash detector disabled for this store"
REFUSAL = "crash_detect=on needs a direct connection"


def refused(env):
    """crash_detect=on through a transaction pooler: exit 1, a clear line."""
    a = env.broker("broker-a")
    a.start()
    deadline = time.monotonic() + 20
    while a.alive() and time.monotonic() < deadline:
        time.sleep(0.1)
    e.check(not a.alive(), f"broker-a still runs 20 s after start with crash_detect=on "
                           f"through a transaction pooler:\n{a.log_tail()}")
    e.check(a.proc.returncode == 1, f"broker-a exited with {a.proc.returncode}, want 1")
    text = a.log_text(whole=True)
    lines = [ln for ln in text.splitlines() if REFUSAL in ln]
    e.check(len(lines) == 1, f"want exactly one '{REFUSAL}' line, got {len(lines)}:\n"
                             f"{a.log_tail()}")
    e.check("crash_detect=off" in lines[0] and "mqs-secret" not in text,
            f"the refusal does not name the fix, or leaks the password: {lines[0][:500]}")
    e.check("listening" not in text, "broker-a listened before refusing")
    e.log(f"refused at start, exit 1: {lines[0][:200]}...")


def main(env):
    crash_on = "crash_detect=off" not in env.store_uri
    pinned = "pooler=session" in env.store_uri
    if crash_on and not pinned:
        refused(env)
        return
    dest = env.dest("queue", "pgb")
    a = env.broker("broker-a")
    b = env.broker("broker-b")
    a.start()
    ia = a.wait_master()
    b.start()
    b.wait_standby()
    p = env.client(a.port, "producer")
    e.produce(p, dest, range(1, TOTAL + 1))
    p.disconnect()
    e.log(f"{TOTAL} receipted by broker-a (token {ia['token']})")

    for x in (a, b):
        e.check(WARN not in x.log_text(whole=True),
                f"{x.name}: the crash detector should be "
                f"{'on' if pinned else 'off, quietly'}, yet it warns: {x.log_tail()}")

    t_kill = a.kill9()
    ib = b.wait_master(timeout=LEASE_MS / 1000 + 10)
    took = (ib["at"] - t_kill) * 1000
    env.result("takeover_ms", round(took))
    e.log(f"broker-b took over {took:.0f} ms after kill -9 (token {ib['token']})")
    if pinned:
        # The pooler ends the dead master's server session (DISCARD ALL
        # frees its advisory lock): the crash detector fires.
        e.check(took < LEASE_MS - RENEW_MS - 100,
                f"broker-b took over {took:.0f} ms after the kill: the lease decided, "
                f"the crash detector did not fire through pooler=session")
    # Else the lease alone decides: the master's last renewal started at
    # most renew_ms before the kill, so its lease ran >= lease - renew.
    e.check(pinned or took >= LEASE_MS - RENEW_MS - 100,
            f"broker-b took over {took:.0f} ms after the kill, before the lease could end: "
            f"a takeover on a session lock behind a pooler")
    e.check(took <= LEASE_MS + 3000, f"takeover took {took:.0f} ms (lease {LEASE_MS} ms)")
    e.check(ib["token"] > ia["token"], "the fencing token did not increase")

    c = env.client(b.port, "consumer")
    c.subscribe(dest, "s1", ack="client-individual",
                headers={"activemq.prefetchSize": str(TOTAL + 10)})
    msgs = c.drain(quiet=1.0, max_total=15)
    seqs = [e.seq_of(m) for m in msgs]
    e.check(sorted(seqs) == list(range(1, TOTAL + 1)),
            f"after the takeover the consumer got {len(seqs)} messages, {len(set(seqs))} "
            f"distinct; want exactly 1..{TOTAL}")
    for m in msgs:
        c.ack(m, receipt=True)
    c.disconnect()
    env.expect_store_pending(dest, 0, "at the end")
    b.terminate()


if __name__ == "__main__":
    env = e.Env("pgbouncer", __doc__)
    env.store_uri = e.with_option(env.store_uri, "lease_ms", str(LEASE_MS))
    env.store_uri = e.with_option(env.store_uri, "renew_ms", str(RENEW_MS))
    env.run(main)
