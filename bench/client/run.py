#!/usr/bin/python3
"""bench/client/run.py - libmqclient bench: throughput and failover pause.

In one run, on a master + standby pair of mqbroker on a SQLite store (and on
PostgreSQL too when MQSTORE_TEST_PG_E2E_URI is set):

 (a) async send throughput: `mqclient bench` (mqc_send_async + mqc_flush)
     against `stomp-load` (1 producer, --window W, no consumer) through the
     same broker, same body size, persistent, each repeated --repeats times
     in alternating order; median and spread (min..max) of msg/s. Each
     trial uses a fresh queue that is drained afterwards.
 (b) client-observed failover pause: `mqclient send --rate R` on a failover:
     URI (trackMessages=true); kill -9 of the master; pause = time from the
     last RECEIPT before the kill to the first RECEIPT after it, with
     backup=false and backup=true, --trials times each. The killed broker
     is restarted as the standby before the next trial.

Output into --out DIR: a table on stdout, client-bench.json, *.dat and
client-bench.png (gnuplot). Run by hand (not in CI); every wait is bounded.
"""
import argparse
import datetime
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
import mqe2e as e  # noqa: E402  (Broker: start, wait_master, kill9, ...)


def note(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def spread(values):
    """median, min, max and (max-min)/median in %."""
    if not values:
        return {"n": 0, "median": None, "min": None, "max": None, "spread_pct": None}
    med = statistics.median(values)
    return {"n": len(values), "median": med, "min": min(values), "max": max(values),
            "spread_pct": (max(values) - min(values)) / med * 100 if med else None}


class Pair:
    """A master + standby on one store; knows which one is master."""

    def __init__(self, args, name, cluster, store_uri, workdir):
        env = types.SimpleNamespace(broker_path=args.mqbroker, workdir=workdir,
                                    cluster=cluster, store_uri=store_uri)
        extra = ["--max-dest-bytes", "2g"]  # no flow control within a trial
        self.brokers = [e.Broker(env, f"{name}-a", args.ports[0], extra),
                        e.Broker(env, f"{name}-b", args.ports[1], extra)]
        self.master, self.standby = self.brokers
        self.master_changes = 0  # step-downs seen by master_port()

    def start(self):
        self.master.start()
        self.master.wait_master(timeout=60)
        self.standby.start()
        self.standby.wait_standby(hold=0.3, timeout=60)

    def kill_master(self):
        """kill -9 the master, wait for the takeover, restart the victim as
        standby. Returns (wall time of the kill, takeover wall time)."""
        t_kill = time.time()
        m0 = self.master.kill9()
        info = self.standby.wait_master(timeout=60)
        self.last_takeover = info  # token, recovered, recover_ms
        t_over = t_kill + (info["at"] - m0)
        victim = self.master
        self.master, self.standby = self.standby, victim
        victim.start()
        victim.wait_standby(hold=0.2, timeout=60)
        return t_kill, t_over

    def master_port(self, timeout=60):
        """The port of the broker accepting clients now. A master can step
        down under load (its lease renewal too slow on a busy machine): the
        other one takes over, and the one that stepped down (or died) is
        brought back as standby. Counted in self.master_changes."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for b in self.brokers:
                if not b.alive():
                    note(f"{b.name} exited (status {b.proc.returncode}): restarting it")
                    b.start()
            for b in self.brokers:
                if e.port_state(b.port, timeout=0.2) == "open":
                    if b is not self.master:
                        note(f"{b.name} is master now (the other stepped down)")
                        self.master_changes += 1
                        self.master, self.standby = b, self.master
                    return b.port
            time.sleep(0.1)
        raise e.TestFailure(f"no broker accepts clients within {timeout:.0f} s; logs in "
                            f"{self.brokers[0].log_path} and {self.brokers[1].log_path}")

    def stop(self):
        for b in self.brokers:
            try:
                b.terminate(expect_clean=False)
            except e.TestFailure:
                pass
            b.cleanup()


def run(argv, timeout, what):
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise e.TestFailure(f"{what}: no result within {timeout:.0f} s: {' '.join(argv)}")
    return p


def failover_uri(ports, **opts):
    q = "&".join(f"{k}={v}" for k, v in opts.items())
    return f"failover:(tcp://127.0.0.1:{ports[0]},tcp://127.0.0.1:{ports[1]})?{q}"


def drain(args, pair, dest):
    """Consume everything left in dest (acks with receipts), until a pass
    finds nothing: a store shared with other runs (PostgreSQL) must not
    keep this run's messages, every broker on it would recover them."""
    out = os.path.join(args.tmp, "drain.json")
    total = 0
    for _ in range(5):
        run([args.stomp_load, "--broker", f"127.0.0.1:{pair.master_port()}", "--producers",
             "0", "--consumers", "1", "--dest", dest, "--drain-timeout", "2",
             "--ack-receipt", "--timeout", "300", "--json", out, "--quiet"], 330,
            f"draining {dest}")
        with open(out) as f:
            got = json.load(f)["received"]
        total += got
        if got == 0:
            return total
    raise e.TestFailure(f"{dest} still not empty after 5 drain passes ({total} consumed)")


def throughput(args, pair, tag):
    """(a): msg/s of mqclient bench and stomp-load, alternating."""
    res = {"mqclient": [], "stomp-load": []}
    uri = failover_uri(args.ports, randomize="false")
    for rep in range(args.repeats):
        order = ["mqclient", "stomp-load"] if rep % 2 == 0 else ["stomp-load", "mqclient"]
        for tool in order:
            dest = f"/queue/bench-{tag}-{tool}-{rep}-{random.randrange(1 << 30)}"
            changes = pair.master_changes
            pair.master_port()
            if tool == "mqclient":
                p = run([args.mqclient, "bench", uri, dest, "--seconds", str(args.seconds),
                         "--size", str(args.size), "--json"], args.seconds + 120,
                        "mqclient bench")
                # Exit 1 (some sends unconfirmed, e.g. across a step-down)
                # still has its JSON: the trial counts, with its errors.
                lines = p.stdout.decode().strip().splitlines()
                if p.returncode not in (0, 1) or not lines:
                    raise e.TestFailure(f"mqclient bench exited {p.returncode}: "
                                        f"{p.stderr.decode()[-800:]}")
                j = json.loads(lines[-1])
                rate, p50 = j["msg_per_s"], j["p50_ms"]
                errors = j["errors"]
                raw = j
            else:
                out = os.path.join(args.tmp, "stomp-load.json")
                if os.path.exists(out):
                    os.unlink(out)
                p = run([args.stomp_load, "--broker", f"127.0.0.1:{pair.master_port()}",
                         "--dest", dest, "--producers", "1", "--consumers", "0",
                         "--duration", str(args.seconds), "--size", str(args.size),
                         "--window", str(args.window), "--json", out, "--quiet",
                         "--timeout", str(int(args.seconds) + 120)],
                        args.seconds + 150, "stomp-load")
                if p.returncode not in (0, 1) or not os.path.exists(out):
                    raise e.TestFailure(f"stomp-load exited {p.returncode}: "
                                        f"{p.stderr.decode()[-800:]}")
                with open(out) as f:
                    j = json.load(f)
                r = j["results"]["send+receipt"]
                rate, p50, errors = r["msgs_per_s"], r["p50_ms"], j["errors"]
                raw = r
            note(f"{tag} (a) rep {rep + 1}/{args.repeats} {tool}: {rate:,.0f} msg/s "
                 f"(receipt p50 {p50} ms, errors {errors})")
            drain(args, pair, dest)
            stepped = pair.master_changes > changes
            res[tool].append({"msg_per_s": rate, "p50_ms": p50, "errors": errors,
                              "master_stepped_down": stepped, "raw": raw})
            if stepped:
                note(f"{tag} (a) the master stepped down during this trial: its number "
                     f"includes a failover")
            # Deleting the drained rows keeps the database busy for a while
            # (seconds on PostgreSQL); a trial started at once measured that.
            time.sleep(args.settle)
    return res


# "2026-12-03T08:20:01.123Z mqclient send: transport resumed: ..."
EVENT_RE = re.compile(r"^(\S+Z) mqclient send: transport (interrupted|resumed)")


class Sender:
    """mqclient send --verbose --json in the background: receipt times."""

    def __init__(self, args, uri, dest):
        self.receipts = []  # wall times of confirmed receipts, in order
        self.events = []    # ("interrupted" | "resumed", wall time) from stderr
        self.errors = 0
        self.summary = None
        self.stderr = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [args.mqclient, "send", uri, dest, "--count", "0", "--rate", str(args.rate),
             "--persistent", "--size", str(args.size), "--verbose", "--json"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True)
        self.th = [threading.Thread(target=self._out, daemon=True),
                   threading.Thread(target=self._err, daemon=True)]
        for t in self.th:
            t.start()

    def _out(self):
        for raw in self.proc.stdout:
            try:
                o = json.loads(raw)
            except ValueError:
                continue
            with self.lock:
                if o.get("event") == "receipt":
                    if o["ok"]:
                        self.receipts.append(o["t"])
                    else:
                        self.errors += 1
                elif o.get("event") == "summary":
                    self.summary = o

    def _err(self):
        for raw in self.proc.stderr:
            ln = raw.decode("utf-8", "replace").rstrip()
            m = EVENT_RE.match(ln)
            with self.lock:
                self.stderr.append(ln)
                if m:
                    t = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ")
                    t = t.replace(tzinfo=datetime.timezone.utc).timestamp()
                    self.events.append((m.group(2), t))

    def wait_for(self, cond, timeout, what):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if cond(self.receipts):
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        with self.lock:
            tail = "\n".join(self.stderr[-10:])
        raise e.TestFailure(f"mqclient send: {what} within {timeout:.0f} s "
                            f"(exit {self.proc.poll()}); stderr:\n{tail}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for t in self.th:
            t.join(5)


# (label, failover options besides randomize=false, timeout=10000 and
# trackMessages=true). The reconnect back-off (initialReconnectDelay=10,
# doubling) puts attempts at about 10, 30, 70, 150, 310, 630, 1270 ms after
# the loss, so the client resumes at the first of those after the takeover;
# a small maxReconnectDelay shows what capping it gains.
FAILOVER_SETTINGS = [
    ("backup=false", {"backup": "false"}),
    ("backup=true", {"backup": "true"}),
    ("maxReconnectDelay=50", {"backup": "false", "maxReconnectDelay": "50"}),
]


def pause_window(receipts, t_kill):
    """(last receipt before the kill, first receipt after it). A receipt the
    dying broker wrote just before SIGKILL landed can be read a moment after
    our clock said "kill", so "before/after t_kill" alone can pick two normal
    neighbours; the pause is the largest gap between consecutive receipts
    that ends after the kill (the sender's steady rate makes every other gap
    1/rate)."""
    best = None
    for a, b in zip(receipts, receipts[1:]):
        if b > t_kill and a > t_kill - 5 and (best is None or b - a > best[1] - best[0]):
            best = (a, b)
    if best is None:
        raise e.TestFailure("no receipts around the kill")
    return best


def failover(args, pair, tag):
    """(b): client-observed pause, backup=false and backup=true."""
    res = {}
    for label, extra in FAILOVER_SETTINGS:
        trials = []
        uri = failover_uri(args.ports, randomize="false", timeout="10000",
                           trackMessages="true", **extra)
        for i in range(args.trials):
            dest = f"/queue/failover-{tag}-{i}-{random.randrange(1 << 30)}"
            pair.master_port()
            s = Sender(args, uri, dest)
            try:
                warm = max(20, int(args.rate))  # about one second of receipts
                s.wait_for(lambda r: len(r) >= warm, 30, f"{warm} receipts before the kill")
                t_kill, t_over = pair.kill_master()
                s.wait_for(lambda r: r and r[-1] > t_over + 0.2, 60,
                           "receipts from the new master")
            finally:
                s.stop()
            # Left in the store, they would add to the next takeover's recovery.
            drain(args, pair, dest)
            last_before, first_after = pause_window(s.receipts, t_kill)
            pause = (first_after - last_before) * 1000
            resumed = [t for ev, t in s.events if ev == "resumed" and t > t_kill]
            trial = {"pause_ms": pause, "takeover_ms": (t_over - t_kill) * 1000,
                     "takeover_to_receipt_ms": (first_after - t_over) * 1000,
                     "kill_to_resumed_ms": (resumed[0] - t_kill) * 1000 if resumed else None,
                     "broker_recover_ms": pair.last_takeover["recover_ms"],
                     "broker_recovered": pair.last_takeover["recovered"],
                     "receipts": len(s.receipts), "errors": s.errors,
                     "replayed": (s.summary or {}).get("replayed"),
                     "client_rc": s.proc.returncode}
            rs = trial["kill_to_resumed_ms"]
            note(f"{tag} (b) {label} trial {i + 1}/{args.trials}: pause "
                 f"{pause:.0f} ms (takeover {trial['takeover_ms']:.0f} ms, client resumed "
                 f"{'?' if rs is None else f'{rs:.0f}'} ms after the kill, first receipt "
                 f"{trial['takeover_to_receipt_ms']:.0f} ms after the takeover; send errors "
                 f"{s.errors}, replayed {trial['replayed']})")
            trials.append(trial)
        res[label] = trials
    return res


def backends(args):
    """(name, store URI, cluster): a unique cluster so a shared PostgreSQL
    database never mixes this run's HA lock with another's."""
    cluster = f"clientbench{os.getpid()}x{random.randrange(1 << 20)}"
    yield "sqlite", f"sqlite:///{args.tmp}/client-bench.db?cluster={cluster}", cluster
    pg = os.environ.get("MQSTORE_TEST_PG_E2E_URI")
    if pg:
        yield "postgresql", e.with_option(pg, "cluster", cluster + "pg"), cluster + "pg"


def table(results, args):
    lines = [f"libmqclient bench: {args.size}-byte persistent bodies, {args.seconds:g} s per "
             f"throughput trial x {args.repeats}, failover pause x {args.trials} "
             f"(sender --rate {args.rate:g}/s)", ""]
    lines.append(f"{'backend':<11} {'(a) async send':<26} {'median msg/s':>13} "
                 f"{'min..max':>19} {'spread':>7}")
    for be, r in results.items():
        for tool, label in (("mqclient", "mqclient bench"),
                            ("stomp-load", f"stomp-load --window {args.window}")):
            s = r["throughput"][tool + "_summary"]
            lines.append(f"{be:<11} {label:<26} {s['median']:>13,.0f} "
                         f"{s['min']:>9,.0f}..{s['max']:<9,.0f} {s['spread_pct']:>6.1f}%")
        lines.append(f"{be:<11} {'mqclient / stomp-load':<26} "
                     f"{r['throughput']['ratio_of_medians']:>13.2f}")
    lines.append("")
    lines.append(f"{'backend':<11} {'(b) failover pause (kill -9)':<26} {'median ms':>13} "
                 f"{'min..max':>19} {'takeover ms':>12} {'resumed ms':>11} "
                 f"{'pause-takeover':>15} {'send errors':>12}")
    for be, r in results.items():
        for key, trials in r["failover"].items():
            if key.endswith("_summary"):
                continue
            s = r["failover"][key + "_summary"]
            tk = statistics.median(t["takeover_ms"] for t in trials)
            rs = [t["kill_to_resumed_ms"] for t in trials if t["kill_to_resumed_ms"] is not None]
            rs = f"{statistics.median(rs):.0f}" if rs else "?"
            errs = sum(t["errors"] for t in trials)
            # The client's share: what the pause adds to the broker's takeover.
            share = statistics.median(t["pause_ms"] - t["takeover_ms"] for t in trials)
            lines.append(f"{be:<11} {key:<26} {s['median']:>13.0f} "
                         f"{s['min']:>9.0f}..{s['max']:<9.0f} {tk:>12.0f} {rs:>11} "
                         f"{share:>15.0f} {errs:>12}")
    return "\n".join(lines)


def plot(results, args):
    """Two panels: msg/s per trial per tool; pause per trial per backup."""
    gp = shutil.which("gnuplot")
    if not gp:
        note("gnuplot not found: no PNG (apt-get install gnuplot-nox)")
        return None
    tp = os.path.join(args.out, "throughput.dat")
    fp = os.path.join(args.out, "failover.dat")
    with open(tp, "w") as f:
        f.write("# backend tool trial msg_per_s\n")
        for be, r in results.items():
            for tool in ("mqclient", "stomp-load"):
                for i, t in enumerate(r["throughput"][tool]):
                    f.write(f"{be} {tool} {i + 1} {t['msg_per_s']:.1f}\n")
    with open(fp, "w") as f:
        f.write("# backend backup trial pause_ms takeover_ms\n")
        for be, r in results.items():
            for key, trials in r["failover"].items():
                if key.endswith("_summary"):
                    continue
                for i, t in enumerate(trials):
                    f.write(f"{be} {key} {i + 1} {t['pause_ms']:.1f} {t['takeover_ms']:.1f}\n")
    png = os.path.join(args.out, "client-bench.png")
    series_t, series_f = [], []
    x = 0
    xt = []
    for be in results:
        for tool in ("mqclient", "stomp-load"):
            x += 1
            xt.append(f'"{be}\\n{tool}" {x}')
            series_t.append(f"'{tp}' using ({x}):(strcol(1) eq '{be}' && strcol(2) eq "
                            f"'{tool}' ? $4 : 1/0) with points pt 7 ps 1.5 notitle")
    xf = 0
    xft = []
    for be, r in results.items():
        for key in r["failover"]:
            if key.endswith("_summary"):
                continue
            xf += 1
            xft.append(f'"{be}\\n{key}" {xf}')
            series_f.append(f"'{fp}' using ({xf}):(strcol(1) eq '{be}' && strcol(2) eq "
                            f"'{key}' ? $4 : 1/0) with points pt 7 ps 1.5 notitle")
    script = f"""
set terminal pngcairo size 1200,520 noenhanced
set output '{png}'
set multiplot layout 1,2 title 'libmqclient: {args.size}-byte persistent messages, mqbroker master+standby'
set title '(a) async send throughput, each trial'
set ylabel 'msg/s'
set yrange [0:*]
set xrange [0.5:{x + 0.5}]
set xtics ({", ".join(xt)})
set grid ytics
set bmargin 5
plot {", ".join(series_t)}
set title '(b) client pause across kill -9 of the master'
set ylabel 'ms (last receipt before -> first after), log scale'
set logscale y
set yrange [1:*]
set xrange [0.5:{xf + 0.5}]
set xtics ({", ".join(xft)})
plot {", ".join(series_f)}
unset multiplot
"""
    gpath = os.path.join(args.out, "client-bench.gnuplot")
    with open(gpath, "w") as f:
        f.write(script)
    p = subprocess.run([gp, gpath], capture_output=True, timeout=60)
    if p.returncode != 0:
        note(f"gnuplot failed: {p.stderr.decode()[-500:]}")
        return None
    return png


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="output directory (created); required unless --table")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"),
                    help="build dir whose bin/ has mqbroker, mqclient, stomp-load "
                         "(default %(default)s)")
    ap.add_argument("--mqbroker", help="path to mqbroker (default BUILD/bin/mqbroker)")
    ap.add_argument("--mqclient", help="path to mqclient (default BUILD/bin/mqclient)")
    ap.add_argument("--stomp-load", help="path to stomp-load (default BUILD/bin/stomp-load)")
    ap.add_argument("--ports", default="61713,61714",
                    help="the two brokers' ports on 127.0.0.1 (default %(default)s)")
    ap.add_argument("--size", type=int, default=256, help="body bytes (default %(default)s)")
    ap.add_argument("--seconds", type=float, default=3.0,
                    help="seconds per throughput trial (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="throughput trials per tool (default %(default)s, at least 3)")
    ap.add_argument("--window", type=int, default=1000,
                    help="stomp-load --window: sends awaiting their receipt; 1000 is "
                         "libmqclient's bound on outstanding async sends (default "
                         "%(default)s)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds to wait after draining a throughput trial's queue "
                         "before the next trial (default %(default)s)")
    ap.add_argument("--trials", type=int, default=3,
                    help="failover trials per backup setting (default %(default)s, at "
                         "least 3)")
    ap.add_argument("--rate", type=float, default=500.0,
                    help="messages/s of the sender during failover trials; 1/rate is "
                         "the pause's resolution (default %(default)s)")
    ap.add_argument("--skip-throughput", action="store_true", help="only (b)")
    ap.add_argument("--skip-failover", action="store_true", help="only (a)")
    ap.add_argument("--table", metavar="JSON", help="print the table of an earlier run's "
                    "client-bench.json and exit")
    args = ap.parse_args()
    if args.table:
        with open(args.table) as f:
            doc = json.load(f)
        for k, v in doc["config"].items():
            setattr(args, k, v)
        print(table(doc["results"], args))
        return 0
    if args.repeats < 3 or args.trials < 3:
        ap.error("--repeats and --trials must be at least 3 (median and spread)")
    if not args.out:
        ap.error("--out DIR is required")
    args.ports = [int(p) for p in args.ports.split(",")]
    if len(args.ports) != 2:
        ap.error("--ports wants two ports: A,B")
    bindir = os.path.join(args.build, "bin")
    for tool in ("mqbroker", "mqclient", "stomp_load"):
        path = getattr(args, tool) or os.path.join(bindir, tool.replace("_", "-"))
        if not os.access(path, os.X_OK):
            print(f"run.py: {path} is not an executable; build first "
                  f"(scripts/build.sh) or pass --build DIR / --{tool.replace('_', '-')}",
                  file=sys.stderr)
            return 2
        setattr(args, tool, os.path.abspath(path))
    for p in args.ports:
        if e.port_state(p) != "refused":
            print(f"run.py: port {p} is in use on 127.0.0.1; pass --ports A,B",
                  file=sys.stderr)
            return 2
    os.makedirs(args.out, exist_ok=True)
    args.out = os.path.abspath(args.out)
    args.tmp = tempfile.mkdtemp(prefix="client-bench-")
    e.log = lambda msg: None  # broker start/stop chatter
    results = {}
    rc = 0
    try:
        for be, uri, cluster in backends(args):
            note(f"{be}: {e.mask_uri(uri)}")
            pair = Pair(args, be, cluster, uri, args.tmp)
            try:
                pair.start()
                r = {}
                # (b) first: (a) leaves hundreds of thousands of deleted rows
                # behind, which slows a PostgreSQL takeover (recovery scan).
                if not args.skip_failover:
                    f = failover(args, pair, be)
                    for key in list(f):
                        f[key + "_summary"] = spread([x["pause_ms"] for x in f[key]])
                    r["failover"] = f
                if not args.skip_throughput:
                    t = throughput(args, pair, be)
                    for tool in ("mqclient", "stomp-load"):
                        t[tool + "_summary"] = spread([x["msg_per_s"] for x in t[tool]])
                    t["ratio_of_medians"] = (t["mqclient_summary"]["median"]
                                             / t["stomp-load_summary"]["median"])
                    r["throughput"] = t
                results[be] = r
            finally:
                pair.stop()
    except e.TestFailure as ex:
        print(f"run.py: FAILED: {ex}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        print("run.py: interrupted", file=sys.stderr)
        rc = 130
    finally:
        if rc == 0:
            shutil.rmtree(args.tmp, ignore_errors=True)
        else:
            print(f"run.py: broker logs and stores kept in {args.tmp}", file=sys.stderr)
    if results and not args.skip_throughput and not args.skip_failover:
        doc = {"tool": "bench/client/run.py", "time": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                    time.gmtime()),
               "config": {k: getattr(args, k) for k in ("size", "seconds", "repeats",
                                                         "window", "trials", "rate",
                                                         "settle")},
               "results": results}
        jpath = os.path.join(args.out, "client-bench.json")
        with open(jpath, "w") as f:
            json.dump(doc, f, indent=2)
        print(table(results, args))
        png = plot(results, args)
        print(f"\nJSON: {jpath}" + (f"\nPNG:  {png}" if png else ""))
    elif results:
        with open(os.path.join(args.out, "client-bench.json"), "w") as f:
            json.dump({"results": results}, f, indent=2)
        print(json.dumps(results, indent=2))
    return rc


if __name__ == "__main__":
    sys.exit(main())
