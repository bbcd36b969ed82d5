#!/usr/bin/python3
"""mqbroker failover demo (run by scripts/demo.sh).

Two brokers share one SQLite store (ports 61613 and 61614). A producer sends
persistent messages to /queue/demo at a steady rate, each confirmed by a
RECEIPT; a consumer acks every message with a receipt. Mid-stream the master
is killed with kill -9: the standby takes over, both clients reconnect to it,
and the old broker is restarted as the new standby. At the end it prints
sent, received, lost, duplicates (an acked message delivered again) and the
takeover time, and exits 1 if anything was lost or duplicated.
"""
import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402

TTY = sys.stdout.isatty()
COLORS = {"broker-a": "36", "broker-b": "35", "producer": "32", "consumer": "34",
          "demo": "1", "FAIL": "31"}
print_lock = threading.Lock()
T0 = time.monotonic()


def say(who, msg):
    tag = f"[{who}]"
    if TTY:
        tag = f"\033[{COLORS.get(who, '0')}m{tag}\033[0m"
    with print_lock:
        print(f"{time.monotonic() - T0:6.2f}s {tag} {msg}", flush=True)


class LogTail(threading.Thread):
    """Echo a broker's interesting log lines."""

    KEYS = ("master", "waiting for the store lock", "lost", "error", "ERROR", "fenced",
            "listening", "stopp", "recover")

    def __init__(self, broker, stop):
        super().__init__(daemon=True)
        self.broker, self.stop = broker, stop

    def run(self):
        pos = 0
        while not self.stop.is_set():
            try:
                with open(self.broker.log_path, "rb") as f:
                    f.seek(pos)
                    data = f.read()
            except FileNotFoundError:
                data = b""
            if data:
                keep = data.rfind(b"\n") + 1
                pos += keep
                for ln in data[:keep].decode("utf-8", "replace").splitlines():
                    if ln.startswith("==== e2e:"):
                        continue
                    if any(k in ln for k in self.KEYS):
                        say(self.broker.name, ln.strip()[:160])
            time.sleep(0.05)


class FailoverClient:
    """Connects to whichever port accepts, like a failover:(a,b) URL."""

    def __init__(self, name, ports, stop, on_connect=None):
        self.name, self.ports, self.stop, self.on_connect = name, ports, stop, on_connect
        self.c = None
        self.reconnects = -1

    def ensure(self):
        while self.c is None and not self.stop.is_set():
            for p in self.ports:
                c = e.StompClient(p, name=self.name, timeout=5)
                try:
                    c.open()
                    c.connect()
                    if self.on_connect:
                        self.on_connect(c)
                except (OSError, e.ConnectionClosed, e.StompErrorFrame, e.TestFailure):
                    c.close()
                    continue
                self.c = c
                self.reconnects += 1
                say(self.name, f"connected to port {p}"
                    + (" (reconnected after failover)" if self.reconnects else ""))
                return self.c
            time.sleep(0.1)
        return self.c

    def lost(self, why):
        if self.c:
            say(self.name, f"connection lost ({why}); reconnecting")
            self.c.close()
        self.c = None


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", required=True, help="path to mqbroker")
    ap.add_argument("--ports", default="61613,61614", help="the two brokers' ports "
                    "(default %(default)s)")
    ap.add_argument("--rate", type=float, default=50.0, help="messages per second "
                    "(default %(default)s)")
    ap.add_argument("--consume-rate", type=float, default=40.0,
                    help="messages the consumer handles per second; below --rate a "
                         "backlog builds up for the new master to recover (default "
                         "%(default)s)")
    ap.add_argument("--produce-seconds", type=float, default=16.0,
                    help="how long the producer sends (default %(default)s)")
    ap.add_argument("--kill-at", type=float, default=6.0,
                    help="seconds into the stream to kill -9 the master (default "
                         "%(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (store, logs)")
    args = ap.parse_args()
    e.log = lambda msg: say("demo", msg)  # one output format
    ports = [int(p) for p in args.ports.split(",")]
    if len(ports) != 2:
        ap.error("--ports wants two ports")
    for p in ports:
        if e.port_state(p) != "refused":
            print(f"demo: port {p} is already in use on 127.0.0.1; stop what listens there "
                  f"or pass --ports A,B", file=sys.stderr)
            return 2

    workdir = tempfile.mkdtemp(prefix="mqbroker-demo-")
    env = types.SimpleNamespace(
        broker_path=os.path.abspath(args.broker), workdir=workdir, cluster="demo",
        store_uri=f"sqlite://{workdir}/demo.db?cluster=demo")
    stop_all = threading.Event()
    brokers = [e.Broker(env, "broker-a", ports[0]), e.Broker(env, "broker-b", ports[1])]
    queue = "/queue/demo"
    rc = 1

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        say("demo", f"store {env.store_uri}")
        for b in brokers:
            LogTail(b, stop_all).start()
        brokers[0].start()
        brokers[0].wait_master()
        brokers[1].start()
        brokers[1].wait_standby(hold=0.3)
        say("demo", f"broker-a (:{ports[0]}) is master; broker-b (:{ports[1]}) is standby "
                    f"with its port closed")

        # -- producer ------------------------------------------------------
        stop_prod = threading.Event()
        confirmed = set()      # (seq, attempt) with a RECEIPT
        sent_attempts = {}     # seq -> attempts
        prod = FailoverClient("producer", ports, stop_all)

        def producer():
            seq = 0
            interval = 1.0 / args.rate
            nxt = time.monotonic()
            pending = None  # (seq, attempt) sent, receipt not yet seen
            while not stop_prod.is_set():
                c = prod.ensure()
                if c is None:
                    return
                if pending is None:
                    seq += 1
                    pending = (seq, 1)
                s, att = pending
                sent_attempts[s] = att
                try:
                    c.send(queue, f"demo message {s}",
                           headers={"seq": str(s), "attempt": str(att)})
                    confirmed.add(pending)
                    pending = None
                except (e.ConnectionClosed, e.StompErrorFrame, e.TestFailure, OSError) as ex:
                    prod.lost(ex)
                    pending = (s, att + 1)  # not confirmed: send it again
                    continue
                nxt += interval
                time.sleep(max(0.0, nxt - time.monotonic()))
            if prod.c:
                prod.c.disconnect()

        # -- consumer ------------------------------------------------------
        stop_cons = threading.Event()
        acked = set()            # (seq, attempt) whose ACK got its RECEIPT
        received = set()
        stats = {"deliveries": 0, "duplicates": 0, "redelivered": 0}
        dup_list = []

        def subscribe(c):
            c.subscribe(queue, "demo-sub", ack="client-individual",
                        headers={"activemq.prefetchSize": "100"})

        cons = FailoverClient("consumer", ports, stop_all, on_connect=subscribe)

        def consumer():
            pace = 1.0 / args.consume_rate
            while not stop_cons.is_set():
                c = cons.ensure()
                if c is None:
                    return
                try:
                    m = c.recv_message(timeout=0.2)
                    if m is None:
                        continue
                    key = (int(m.headers["seq"]), int(m.headers.get("attempt", "1")))
                    stats["deliveries"] += 1
                    if key in acked:
                        stats["duplicates"] += 1
                        dup_list.append(key)
                        say("consumer", f"DUPLICATE: message {key[0]} was acked before")
                    if m.redelivered:
                        stats["redelivered"] += 1
                    received.add(key)
                    time.sleep(pace)  # "processing"
                    c.ack(m)
                    acked.add(key)
                except (e.ConnectionClosed, e.StompErrorFrame, e.TestFailure, OSError) as ex:
                    cons.lost(ex)
            if cons.c:
                cons.c.disconnect()

        tp = threading.Thread(target=producer, daemon=True)
        tc = threading.Thread(target=consumer, daemon=True)
        tc.start()
        tp.start()
        t_start = time.monotonic()

        def status():
            say("demo", f"sent {len(confirmed)}, received {len(received)}, acked "
                        f"{len(acked)}")

        master, standby = brokers
        takeover_ms = None
        recovered = None
        killed = False
        while time.monotonic() - t_start < args.produce_seconds:
            time.sleep(1.0)
            status()
            if not killed and time.monotonic() - t_start >= args.kill_at:
                say("demo", f"kill -9 {master.name} (the master, pid {master.proc.pid}) "
                            f"mid-stream")
                t_kill = master.kill9()
                info = standby.wait_master(timeout=30)
                takeover_ms = round((info["at"] - t_kill) * 1000)
                recovered = info
                say("demo", f"{standby.name} took over in {takeover_ms} ms (token "
                            f"{info['token']}, recovered {info['recovered']} messages in "
                            f"{info['recover_ms']} ms)")
                killed = True
                master.start()  # the old master comes back as the standby
                master.wait_standby(hold=0.2)
                say("demo", f"{master.name} restarted: waits as standby, port closed")
                master, standby = standby, master
        stop_prod.set()
        tp.join(15)
        say("demo", f"producer done; the consumer works off its backlog of "
                    f"{len(confirmed) - len(received)}")
        end = time.monotonic() + 12
        while time.monotonic() < end and not confirmed <= received:
            time.sleep(0.2)
        time.sleep(1.0)  # any late duplicate would show now
        stop_cons.set()
        tc.join(10)
        status()

        lost = {k for k in confirmed if k not in received}
        sent_seqs = {s for s, _ in confirmed}
        recv_seqs = {s for s, _ in received}
        resent = sum(1 for s, n in sent_attempts.items() if n > 1)
        both = sum(1 for s in recv_seqs if sum(1 for k in received if k[0] == s) > 1)
        print()
        print("=" * 60)
        print(f"sent (receipt received):           {len(sent_seqs)}")
        print(f"received:                          {len(recv_seqs)}")
        print(f"lost:                              {len(lost)}")
        print(f"duplicates (acked, then again):    {stats['duplicates']}")
        print(f"redelivered after the failover:    {stats['redelivered']} (dispatched "
              f"before the kill, not acked: flagged redelivered)")
        if resent:
            print(f"producer resends:                  {resent} (no receipt before the kill;"
                  f" {both} of them had been stored and arrived twice)")
        if takeover_ms is not None:
            print(f"takeover time:                     {takeover_ms} ms (kill -9 -> "
                  f"standby accepting connections; it recovered {recovered['recovered']} "
                  f"messages in {recovered['recover_ms']} ms)")
        else:
            print("takeover time:                     (no kill happened: run was too short)")
        print("=" * 60)
        ok = not lost and stats["duplicates"] == 0 and takeover_ms is not None and \
            len(sent_seqs) > 0
        if lost:
            print(f"LOST: {e.summarize(k[0] for k in lost)}")
        print("demo: OK - nothing lost, nothing acked delivered twice" if ok
              else "demo: FAILED")
        rc = 0 if ok else 1
        standby_alive = [b for b in brokers if b.alive()]
        for b in standby_alive:
            b.terminate(expect_clean=False)
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        rc = 130
    except e.TestFailure as ex:
        say("FAIL", str(ex))
        rc = 1
    finally:
        stop_all.set()
        for b in brokers:
            b.cleanup()
        if args.keep or rc not in (0, 130):
            print(f"demo: logs and store kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
