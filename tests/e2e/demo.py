#!/usr/bin/python3
"""mqbroker failover demo (run by scripts/demo.sh).

Two brokers share one SQLite store (ports 61613 and 61614). The producer is
`mqclient send` and the consumer `mqclient recv` (the libmqclient CLI), both
on the URI

  failover:(tcp://127.0.0.1:A,tcp://127.0.0.1:B)?randomize=false&timeout=3000
           &backup=true&trackMessages=true

The producer sends persistent messages to /queue/demo at a steady rate, each
confirmed by a RECEIPT; the consumer acks every message (client-individual,
--sync-ack: each ACK confirmed by the broker before it counts as acked).
Mid-stream the master is killed with kill -9: the standby takes over, the
clients' failover transport reconnects to it (their stderr shows "transport
interrupted" / "transport resumed"; the producer replays sends that had no
receipt), and the old broker is restarted as the new standby. At the end it
prints sent, received, lost, duplicates (an acked message delivered again),
the takeover time and the producer's pause, and exits 1 if anything was lost
or an acked message was delivered again.
"""
import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
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


def uri_for(ports, backup):
    """The failover URI both clients use: ordered list, 3 s operation
    timeout, replay of unconfirmed sends (trackMessages)."""
    brokers = ",".join(f"tcp://127.0.0.1:{p}" for p in ports)
    return (f"failover:({brokers})?randomize=false&timeout=3000"
            f"&backup={'true' if backup else 'false'}&trackMessages=true")


class CliProcess:
    """One `mqclient send|recv ... --json` process. Its stdout (one JSON
    object per line) goes to on_json; its stderr (transport events with
    timestamps, library warnings) is echoed under its name, so the failover
    shows in the demo's output as the client saw it."""

    def __init__(self, name, argv, on_json):
        self.name, self.argv, self.on_json = name, argv, on_json
        self.summary = None
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.t_out = threading.Thread(target=self._read_out, daemon=True)
        self.t_err = threading.Thread(target=self._read_err, daemon=True)
        self.t_out.start()
        self.t_err.start()
        say(name, f"started: {' '.join(shlex.quote(a) for a in argv[1:])}")

    def _read_out(self):
        for raw in self.proc.stdout:
            try:
                obj = json.loads(raw)
            except ValueError:
                say(self.name, f"(not JSON) {raw.decode('utf-8', 'replace').rstrip()}")
                continue
            if obj.get("event") == "summary":
                self.summary = obj
            self.on_json(obj)

    def _read_err(self):
        for raw in self.proc.stderr:
            ln = raw.decode("utf-8", "replace").rstrip()
            # "2026-12-03T08:20:01.123Z mqclient send: transport ..." -> the event
            m = re.match(r"^\S+Z mqclient \w+: (.*)$", ln)
            say(self.name, m.group(1) if m else ln)

    def stop(self, timeout=10.0):
        """SIGTERM (the CLI stops, prints its summary and closes cleanly);
        SIGKILL if that takes longer than timeout. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout):
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            say("FAIL", f"{self.name} did not exit within {timeout:.0f} s: SIGKILL")
            os.killpg(self.proc.pid, signal.SIGKILL)
            rc = self.proc.wait()
        self.t_out.join(5)
        self.t_err.join(5)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()


def default_client(broker_path):
    """mqclient is built next to mqbroker (build/bin/)."""
    return os.path.join(os.path.dirname(os.path.abspath(broker_path)), "mqclient")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", required=True, help="path to mqbroker")
    ap.add_argument("--client", help="path to the mqclient CLI (default: mqclient next "
                    "to --broker)")
    ap.add_argument("--ports", default="61613,61614", help="the two brokers' ports "
                    "(default %(default)s)")
    ap.add_argument("--rate", type=float, default=50.0, help="messages per second "
                    "(default %(default)s)")
    ap.add_argument("--consume-rate", type=float, default=40.0,
                    help="messages the consumer handles per second; below --rate a "
                         "backlog builds up for the new master to recover (default "
                         "%(default)s)")
    ap.add_argument("--produce-seconds", type=float, default=16.0,
                    help="how long the producer sends: it sends rate x seconds "
                         "messages (default %(default)s)")
    ap.add_argument("--kill-at", type=float, default=6.0,
                    help="seconds into the stream to kill -9 the master (default "
                         "%(default)s)")
    ap.add_argument("--no-backup", action="store_true",
                    help="backup=false in the clients' URI (default: backup=true, a "
                         "warm connection attempt to the other broker)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (store, logs)")
    args = ap.parse_args()
    e.log = lambda msg: say("demo", msg)  # one output format
    client = os.path.abspath(args.client or default_client(args.broker))
    if not os.access(client, os.X_OK):
        print(f"demo: the mqclient CLI is not at {client}: build it (scripts/build.sh "
              f"builds build/bin/mqclient) or pass --client PATH", file=sys.stderr)
        return 2
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
    uri = uri_for(ports, backup=not args.no_backup)
    count = max(1, int(args.rate * args.produce_seconds))
    clients = []
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
        say("demo", f"both clients use {uri}")

        lock = threading.Lock()
        # -- producer: mqclient send, one receipt line per message ----------
        confirmed = set()     # message numbers with a RECEIPT
        failed = set()        # sends that returned an error (not confirmed)
        receipt_times = []    # wall-clock time of each receipt, in order

        def on_producer(obj):
            if obj.get("event") != "receipt":
                return
            with lock:
                if obj["ok"]:
                    confirmed.add(obj["n"])
                    receipt_times.append(obj["t"])
                else:
                    failed.add(obj["n"])

        # -- consumer: mqclient recv, one line per message ------------------
        deliveries = {}       # seq -> times delivered
        acked = set()         # seqs acked
        stats = {"deliveries": 0, "duplicates": 0, "redelivered": 0, "not_acked": 0}

        def on_consumer(obj):
            if obj.get("event") != "message":
                return
            m = re.match(r"demo message (\d+)$", obj.get("body", ""))
            if not m:
                say("consumer", f"unexpected body {obj.get('body')!r}")
                return
            seq = int(m.group(1))
            with lock:
                stats["deliveries"] += 1
                if seq in acked:
                    stats["duplicates"] += 1
                    say("consumer", f"DUPLICATE: message {seq} was acked before")
                deliveries[seq] = deliveries.get(seq, 0) + 1
                if obj.get("redelivered"):
                    stats["redelivered"] += 1
                if obj.get("acked"):
                    acked.add(seq)
                else:
                    stats["not_acked"] += 1

        consumer = CliProcess("consumer", [
            client, "recv", uri, queue, "--ack", "client-individual", "--sync-ack", "--prefetch", "100",
            "--rate", str(args.consume_rate), "--json"], on_consumer)
        clients.append(consumer)
        producer = CliProcess("producer", [
            client, "send", uri, queue, "--count", str(count), "--rate", str(args.rate),
            "--persistent", "--body", "demo message %n", "--header", "seq:%n",
            "--verbose", "--json"], on_producer)
        clients.append(producer)
        t_start = time.monotonic()

        def status():
            with lock:
                say("demo", f"sent {len(confirmed)}, received {len(deliveries)}, acked "
                            f"{len(acked)}")

        master, standby = brokers
        takeover_ms = None
        recovered = None
        t_kill_wall = None
        while time.monotonic() - t_start < args.produce_seconds:
            time.sleep(1.0)
            status()
            if producer.proc.poll() is not None:
                break
            if t_kill_wall is None and time.monotonic() - t_start >= args.kill_at:
                say("demo", f"kill -9 {master.name} (the master, pid {master.proc.pid}) "
                            f"mid-stream")
                t_kill_wall = time.time()
                t_kill = master.kill9()
                info = standby.wait_master(timeout=30)
                takeover_ms = round((info["at"] - t_kill) * 1000)
                recovered = info
                say("demo", f"{standby.name} took over in {takeover_ms} ms (token "
                            f"{info['token']}, recovered {info['recovered']} destinations in "
                            f"{info['recover_ms']} ms)")
                master.start()  # the old master comes back as the standby
                master.wait_standby(hold=0.2)
                say("demo", f"{master.name} restarted: waits as standby, port closed")
                master, standby = standby, master
        # The producer ends by itself after --count messages; a failover
        # pause makes it late by at most the URI's timeout per message.
        prod_rc = producer.wait(timeout=args.produce_seconds + 30)
        with lock:
            backlog = len(confirmed) - len(deliveries)
        say("demo", f"producer done (exit {prod_rc}); the consumer works off its backlog "
                    f"of {backlog}")
        end = time.monotonic() + 12 + max(0, backlog) / args.consume_rate
        while time.monotonic() < end:
            with lock:
                if confirmed <= set(deliveries):
                    break
            time.sleep(0.2)
        time.sleep(1.0)  # any late duplicate would show now
        cons_rc = consumer.stop()
        status()

        with lock:
            lost = sorted(s for s in confirmed if s not in deliveries)
            twice = sorted(s for s, n in deliveries.items() if n > 1)
            unconfirmed_arrived = sorted(s for s in failed if s in deliveries)
        pause_ms = None
        if t_kill_wall is not None:
            # The largest gap between consecutive receipts that ends after the
            # kill: a receipt the dying broker wrote just before SIGKILL can be
            # read a moment after our clock said "kill".
            gaps = [(b - a) for a, b in zip(receipt_times, receipt_times[1:])
                    if b > t_kill_wall and a > t_kill_wall - 5]
            if gaps:
                pause_ms = round(max(gaps) * 1000)
        psum = producer.summary or {}
        csum = consumer.summary or {}
        print()
        print("=" * 60)
        print(f"sent (receipt received):           {len(confirmed)} of {count}")
        if failed:
            print(f"send failed (no receipt):          {len(failed)} ({len(unconfirmed_arrived)}"
                  f" of them arrived anyway)")
        print(f"received:                          {len(deliveries)}")
        print(f"lost:                              {len(lost)}")
        print(f"duplicates (acked, then again):    {stats['duplicates']}")
        print(f"delivered more than once:          {len(twice)} (incl. redeliveries of "
              f"unacked messages)")
        print(f"redelivered after the failover:    {stats['redelivered']} (dispatched "
              f"before the kill, not acked: flagged redelivered)")
        print(f"producer replays (trackMessages):  {psum.get('replayed', '?')} after "
              f"{psum.get('reconnects', '?')} reconnect(s)")
        if stats["not_acked"]:
            print(f"acks refused after the failover:   {stats['not_acked']} (redelivered "
                  f"by the new master)")
        if takeover_ms is not None:
            print(f"takeover time:                     {takeover_ms} ms (kill -9 -> "
                  f"standby accepting connections; it listed {recovered['recovered']} "
                  f"destinations in {recovered['recover_ms']} ms and reads their "
                  f"messages in pages)")
            print("producer pause:                    "
                  + (f"{pause_ms} ms (last receipt before the failover -> first after)"
                     if pause_ms is not None else "(no receipt on one side of the kill)"))
        else:
            print("takeover time:                     (no kill happened: run was too short)")
        print(f"client exit status:                producer {prod_rc}, consumer {cons_rc}"
              f" (consumer saw {csum.get('reconnects', '?')} reconnect(s))")
        print("=" * 60)
        ok = not lost and stats["duplicates"] == 0 and takeover_ms is not None and \
            len(confirmed) > 0
        if lost:
            print(f"LOST: {e.summarize(lost)}")
        if stats["duplicates"]:
            print("DUPLICATES: acked messages delivered again (a replayed send the broker "
                  "stored twice, or an ACK lost in the failover)")
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
        for cl in clients:
            cl.kill()
        for b in brokers:
            b.cleanup()
        if args.keep or rc not in (0, 130):
            print(f"demo: logs and store kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
