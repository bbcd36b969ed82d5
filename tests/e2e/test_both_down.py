#!/usr/bin/python3
"""Both brokers down, then back: nothing lost, clients refused meanwhile.

1. A master, B standby; 100 persistent messages sent with receipts; a
   consumer acks 30 (with receipts) and holds the rest unacked.
2. kill -9 B (the standby), then kill -9 A: both ports refuse connections,
   so clients get "connection refused" (not a hang).
3. B starts alone and becomes master (on a fresh SQLite store it must
   report "recovered 1 queues"); the consumer gets exactly 31..100, all
   it had seen flagged redelivered; 50 more are sent and received; all acked.
4. A starts and waits as standby; B is stopped with SIGTERM (exit 0) and A
   takes over at once from the released lock, with nothing to deliver.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402


def main(env):
    dest = env.dest("queue", "orders")
    a = env.broker("broker-a")
    b = env.broker("broker-b")
    a.start()
    a.wait_master()
    b.start()
    b.wait_standby()

    prod = env.client(a.port, "producer")
    e.produce(prod, dest, range(1, 101))
    cons = env.client(a.port, "consumer@a")
    cons.subscribe(dest, "sub-1", headers={"activemq.prefetchSize": "1000"})
    got = cons.drain(quiet=1.0, max_total=10, limit=100)
    e.check([e.seq_of(m) for m in got] == list(range(1, 101)),
            f"consumer@a: expected seq 1..100 in order, got "
            f"{e.summarize(e.seq_of(m) for m in got)}")
    for m in got[:30]:
        cons.ack(m)
    e.log("100 sent, 30 acked, 70 delivered and unacked")

    b.kill9()
    a.kill9()
    for br in (a, b):
        e.wait_port_refused(br.port, br.name)
        c = e.StompClient(br.port, name=f"client@{br.name}")
        try:
            c.open()
            c.close()
            e.fail(f"a client could connect to {br.name} (port {br.port}) while it is down")
        except ConnectionRefusedError:
            pass
    e.log("both brokers down: clients get connection refused on both ports")
    time.sleep(1.0)

    b.start()
    ib = b.wait_master()
    env.result("recovered_after_both_down", ib["recovered"])
    env.result("restart_to_master_ms", round((ib["at"] - b.started_at) * 1000))
    if env.backend == "sqlite" and "@TMP@" in env.args.store_uri:
        e.check(ib["queues"] == 1,
                f"broker-b reports 'recovered {ib['queues']} queues', expected 1 (its "
                f"messages are read in pages when the consumer subscribes)")
    cons_b = e.connect_retry(b.port, "consumer@b")
    env.clients.append(cons_b)
    cons_b.subscribe(dest, "sub-1", headers={"activemq.prefetchSize": "1000"})
    got = cons_b.drain(quiet=1.5, max_total=15)
    seqs = [e.seq_of(m) for m in got]
    e.check(sorted(seqs) == list(range(31, 101)),
            f"after both brokers were down: expected exactly seq 31..100, got "
            f"{len(seqs)}: missing {e.summarize(set(range(31, 101)) - set(seqs))}, "
            f"unexpected {e.summarize(set(seqs) - set(range(31, 101)))}")
    unflagged = [e.seq_of(m) for m in got if not m.redelivered]
    e.check(not unflagged, f"messages delivered before the outage came back without "
                           f"redelivered:true: {e.summarize(unflagged)}")
    prod_b = e.connect_retry(b.port, "producer@b")
    env.clients.append(prod_b)
    e.produce(prod_b, dest, range(101, 151))
    new = cons_b.drain(quiet=1.0, max_total=10, limit=50)
    e.check([e.seq_of(m) for m in new] == list(range(101, 151)),
            f"messages sent after the restart: expected 101..150, got "
            f"{e.summarize(e.seq_of(m) for m in new)}")
    for m in got + new:
        cons_b.ack(m)
    cons_b.disconnect()
    prod_b.disconnect()

    a.start()
    a.wait_standby()
    t_stop = time.monotonic()
    b.terminate()
    ia = a.wait_master()
    handover = round((ia["at"] - t_stop) * 1000)
    env.result("sigterm_handover_ms", handover)
    e.log(f"broker-b stopped with SIGTERM; broker-a master after {handover} ms")
    cons_a = e.connect_retry(a.port, "consumer@a2")
    env.clients.append(cons_a)
    cons_a.subscribe(dest, "sub-1")
    rest = cons_a.drain(quiet=1.0, max_total=5)
    e.check(not rest, f"broker-a delivered {len(rest)} messages that were all acked: "
                      f"{e.summarize(e.seq_of(m) for m in rest)}")
    cons_a.disconnect()
    env.expect_store_pending(dest, 0, "at the end")
    a.terminate()


if __name__ == "__main__":
    e.Env("both_down", __doc__).run(main)
