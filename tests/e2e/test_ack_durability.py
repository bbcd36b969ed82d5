#!/usr/bin/python3
"""How durable is an ACK sent without a receipt when the master dies?

A consumer with activemq.prefetchSize 1000 acks messages one by one WITHOUT
receipts (client-individual, one ACK every --ack-interval-ms) while the
master is killed with kill -9 after --kill-after acks. It reconnects to the
new master and receives everything that is still pending. Then:

  - nothing is lost: every message not acked comes back;
  - no message whose ACK was sent more than --max-age-ms (100) before the
    kill is redelivered (an ACK that old must have been committed);
  - no message is delivered twice by the new master.

It reports how many acked messages were redelivered and the oldest such ACK
(for comparison: a database-lock broker redelivered ~490 of 510 here).
"""
import collections
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402


def main(env):
    args = env.args
    total = args.messages
    dest = env.dest("queue", "acks")
    a = env.broker("broker-a")
    b = env.broker("broker-b")
    a.start()
    a.wait_master()
    b.start()
    b.wait_standby()

    prod = env.client(a.port, "producer")
    e.produce(prod, dest, range(1, total + 1))
    prod.disconnect()
    e.log(f"{total} messages stored (receipts received)")

    cons = env.client(a.port, "consumer@a")
    cons.subscribe(dest, "sub-1", ack="client-individual",
                   headers={"activemq.prefetchSize": "1000"})
    acks = {}  # seq -> monotonic time the ACK was written to the socket
    delivered = []
    reached = threading.Event()
    stop = threading.Event()
    outcome = {}

    def consume():
        interval = args.ack_interval_ms / 1000.0
        try:
            while not stop.is_set():
                m = cons.recv_message(timeout=5)
                if m is None:
                    outcome["end"] = "no message for 5 s"
                    break
                s = e.seq_of(m)
                delivered.append(s)
                time.sleep(interval)  # "processing"
                cons.send_frame("ACK", {"id": m.headers["ack"]})
                acks[s] = time.monotonic()
                if len(acks) == args.kill_after:
                    reached.set()
        except (e.ConnectionClosed, OSError) as ex:
            outcome["end"] = f"connection lost: {ex}"
        except Exception as ex:  # reported by the main thread
            outcome["error"] = repr(ex)
        finally:
            reached.set()

    th = threading.Thread(target=consume, daemon=True)
    th.start()
    e.check(reached.wait(60), "the consumer did not reach the kill point within 60 s")
    e.check("error" not in outcome, f"consumer thread failed: {outcome.get('error')}")
    e.check(len(acks) >= args.kill_after,
            f"the consumer stopped after {len(acks)} acks ({outcome.get('end')}), before "
            f"the kill point {args.kill_after}")
    t_kill = a.kill9()
    th.join(15)
    stop.set()
    e.check(not th.is_alive(), "the consumer thread still runs 15 s after the kill")
    acked_before = {s: t for s, t in acks.items() if t <= t_kill}
    e.log(f"kill -9 after {len(acked_before)} ACKs without receipt "
          f"({len(acks) - len(acked_before)} more written while it died); "
          f"{len(delivered)} delivered")

    ib = b.wait_master()
    env.result("takeover_ms", round((ib["at"] - t_kill) * 1000))
    cons_b = e.connect_retry(b.port, "consumer@b")
    env.clients.append(cons_b)
    cons_b.subscribe(dest, "sub-1", ack="client-individual",
                     headers={"activemq.prefetchSize": "1000"})
    got = []
    end = time.monotonic() + 30
    while time.monotonic() < end:
        m = cons_b.recv_message(timeout=1.5)
        if m is None:
            break
        got.append(m)
        cons_b.send_frame("ACK", {"id": m.headers["ack"]})
    seqs = [e.seq_of(m) for m in got]
    counts = collections.Counter(seqs)
    dups = sorted(s for s, n in counts.items() if n > 1)
    again = set(seqs) & set(acks)
    lost = set(range(1, total + 1)) - set(acks) - set(seqs)
    ages = {s: (t_kill - acks[s]) * 1000 for s in again}
    old = sorted(s for s, age in ages.items() if age > args.max_age_ms)
    first_copy = {}
    for m in got:
        first_copy.setdefault(e.seq_of(m), m)
    unflagged = sorted(s for s in set(delivered) if s in first_copy and
                       not first_copy[s].redelivered)

    env.result("acks_sent_before_kill", len(acked_before))
    if len(acked_before) > 1:
        span = max(acked_before.values()) - min(acked_before.values())
        env.result("ack_rate_per_s", round((len(acked_before) - 1) / span) if span else None)
    env.result("acked_redelivered", len(again))
    env.result(f"acked_redelivered_older_than_{args.max_age_ms}ms", len(old))
    env.result("oldest_redelivered_ack_ms", round(max(ages.values()), 1) if ages else None)
    env.result("received_after_failover", len(seqs))
    print(f"ack-without-receipt durability: {len(acked_before)} ACKs sent before kill -9, "
          f"{len(again)} of the acked messages redelivered by the new master "
          f"(oldest ACK among them {max(ages.values()) if ages else 0:.1f} ms before the "
          f"kill); {len(old)} older than {args.max_age_ms} ms", flush=True)

    e.check(not lost, f"{len(lost)} messages never acked were not redelivered (lost): "
                      f"{e.summarize(lost)}")
    e.check(not dups, f"the new master delivered {len(dups)} messages twice: "
                      f"{e.summarize(dups)}")
    e.check(not old, f"{len(old)} messages whose ACK was sent more than "
                     f"{args.max_age_ms} ms before the kill were redelivered (ages ms: "
                     f"{sorted(round(ages[s]) for s in old)[:10]}): the broker did not "
                     f"commit those ACKs promptly")
    e.check(not unflagged, f"{len(unflagged)} messages delivered before the kill came back "
                           f"without redelivered:true: {e.summarize(unflagged)}")
    cons_b.disconnect()
    env.expect_store_pending(dest, 0, "after acking every message")
    b.terminate()


if __name__ == "__main__":
    e.Env("ack_durability", __doc__, extra_args=[
        (["--messages"], {"type": int, "default": 3000,
                          "help": "messages stored first (default %(default)s)"}),
        (["--kill-after"], {"type": int, "default": 510,
                            "help": "kill the master after this many ACKs (default "
                                    "%(default)s)"}),
        (["--ack-interval-ms"], {"type": float, "default": 1.0,
                                 "help": "pause before each ACK (default %(default)s)"}),
        (["--max-age-ms"], {"type": float, "default": 100.0,
                            "help": "an ACK sent this long before the kill must not be "
                                    "redelivered (default %(default)s)"}),
    ]).run(main)
