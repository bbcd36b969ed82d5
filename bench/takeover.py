#!/usr/bin/python3
"""Takeover bench: how long a standby needs to become master after the
master is killed (kill -9) or frozen (SIGSTOP), over many trials.

Each trial starts two mqs-ha-node processes on one store (a fresh cluster
name per trial), waits until A is master and writing and B is waiting, then
kills or freezes A and times B's "became master" line. Both nodes log with
CLOCK_MONOTONIC, the same clock this script reads, so the figure is exact
to a millisecond.

usage: bench/takeover.py --node build/bin/mqs-ha-node [--trials 20]
           [--mode kill,freeze] [--json FILE] [--opts 'lease_ms=2000'] URI...
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time


def mono_ms():
    return time.clock_gettime(time.CLOCK_MONOTONIC) * 1000.0


def events(path, kind):
    try:
        with open(path) as f:
            return [line.split() for line in f if line.startswith(kind + " ")]
    except FileNotFoundError:
        return []


def wait_event(path, kind, count, timeout_s, proc=None):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        ev = events(path, kind)
        if len(ev) >= count:
            return ev[count - 1]
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.001)
    xs = events(path, "X")
    raise RuntimeError("no %d '%s' event in %s within %ss%s" % (
        count, kind, path, timeout_s,
        (": " + " ".join(xs[0])) if xs else ""))


def with_opts(uri, opts):
    return uri + ("&" if "?" in uri else "?") + opts


def trial(node, uri, mode, n, tmp, extra, ui):
    cluster = "bench_%d_%d_%s_%d" % (os.getpid(), ui, mode, n)
    u = with_opts(uri, "cluster=" + cluster + ("&" + extra if extra else ""))
    queue = "q_" + cluster
    la, lb = os.path.join(tmp, cluster + ".a"), os.path.join(tmp, cluster + ".b")
    # A writes with a pause so a freeze lands between transactions (on SQLite
    # a process frozen inside one blocks the file for everyone).
    a = subprocess.Popen([node, u, la, "--queue", queue, "--gap-ms", "50",
                          "--max-ms", "60000"])
    b = None
    try:
        wait_event(la, "M", 1, 20, a)
        b = subprocess.Popen([node, u, lb, "--queue", queue, "--hold-ms", "50",
                              "--max-ms", "60000"])
        wait_event(lb, "W", 1, 20, b)
        wait_event(la, "E", 3, 20, a)
        time.sleep(0.2)  # B is blocked on the lock by now
        last = len(events(la, "E"))
        wait_event(la, "E", last + 1, 20, a)  # just committed: between writes
        t0 = mono_ms()
        if mode == "kill":
            a.kill()
        else:
            a.send_signal(signal.SIGSTOP)
        m = wait_event(lb, "M", 1, 30, b)
        took = float(m[2]) - t0
        b.wait(timeout=30)
        return took
    finally:
        for p in (a, b):
            if p is None:
                continue
            if mode == "freeze" and p is a and p.poll() is None:
                p.send_signal(signal.SIGCONT)
            if p.poll() is None:
                p.kill()
            p.wait()


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * len(xs) + 0.5)) - 1))
    return xs[k]


def mask(uri):
    # user:password@ -> user:***@
    if "://" in uri and "@" in uri:
        head, rest = uri.split("://", 1)
        auth, tail = rest.split("@", 1)
        if ":" in auth:
            auth = auth.split(":", 1)[0] + ":***"
        return head + "://" + auth + "@" + tail
    return uri


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--node", required=True, help="path of mqs-ha-node")
    ap.add_argument("--trials", type=int, default=20,
                    help="trials per mode and URI (default 20)")
    ap.add_argument("--mode", default="kill,freeze",
                    help="kill, freeze or both (default kill,freeze)")
    ap.add_argument("--opts", default="",
                    help="extra store URI options, e.g. lease_ms=3000")
    ap.add_argument("--json", help="write results as JSON to this file")
    ap.add_argument("uris", nargs="+", help="store URIs")
    args = ap.parse_args()
    modes = [m for m in args.mode.split(",") if m]
    results = []
    with tempfile.TemporaryDirectory(prefix="mqs-takeover.") as tmp:
        for ui, uri in enumerate(args.uris):
            scheme = uri.split(":", 1)[0]
            for mode in modes:
                xs = []
                for n in range(args.trials):
                    xs.append(trial(args.node, uri, mode, n, tmp, args.opts, ui))
                    print("\r%-10s %-6s trial %d/%d: %.0f ms   " % (
                        scheme, mode, n + 1, args.trials, xs[-1]),
                        end="", file=sys.stderr, flush=True)
                print(file=sys.stderr)
                results.append({"backend": scheme, "uri": mask(uri),
                                "mode": mode, "trials": len(xs),
                                "p50_ms": pct(xs, 50), "p99_ms": pct(xs, 99),
                                "max_ms": max(xs), "min_ms": min(xs),
                                "samples_ms": [round(x, 1) for x in xs]})
    print("| backend | after | trials | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print("| %s | %s | %d | %.0f | %.0f | %.0f |" % (
            r["backend"], "kill -9" if r["mode"] == "kill" else "SIGSTOP",
            r["trials"], r["p50_ms"], r["p99_ms"], r["max_ms"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"takeover": results, "options": args.opts}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
