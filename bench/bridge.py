#!/usr/bin/python3
"""Bridge forwarding throughput: msg/s from a producer on broker A through a
network bridge to a consumer on broker B, against the same producer sending
directly to B, in the same run.

Two brokers, each on its own store (SQLite files in a temporary directory by
default; --store-uri-a/--store-uri-b for PostgreSQL or MariaDB, one database
each). A has `--network-connector name=toB;uri=static:(tcp://B)`. For each
repeat and each mode (the order alternates between repeats, so a drift of the
machine does not favour one mode):

  bridge  producer on A -> A's store -> bridge -> B's store -> consumer on B
  direct  producer on B -> B's store -> consumer on B

The consumer subscribes on B first (and a warm-up message has crossed the
bridge, so its subscription is in place); then the producer sends --messages
persistent messages of --size bytes, each with a RECEIPT, at most --window
receipts outstanding. Measured: `send` = the producer's msg/s (until the last
receipt), `deliver` = end-to-end msg/s (first send to the last message at
B's consumer). Every message must arrive exactly once. Prints a table
(median of the repeats, min..max) and writes everything to --json.

usage: bench/bridge.py [--broker build/bin/mqbroker] [--messages 10000]
           [--size 256] [--window 16] [--repeats 3] [--json FILE]
           [--store-uri-a URI --store-uri-b URI]
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import mqe2e as e  # noqa: E402


def start_broker(args, workdir, name, uri, cluster, port, extra):
    env = types.SimpleNamespace(broker_path=os.path.abspath(args.broker),
                                workdir=workdir, cluster=cluster, store_uri=uri)
    b = e.Broker(env, name, port, ["--broker-name", name] + extra)
    b.start()
    b.wait_master(timeout=60)
    return b


def one_run(args, a, b, mode, dest):
    """Send args.messages to dest on A (bridge) or B (direct); consume on B."""
    n = args.messages
    cons = e.connect_client(b.port, f"consumer-{mode}", timeout=30)
    cons.subscribe(dest, "s1", ack=args.consumer_ack)
    target = a if mode == "bridge" else b
    prod = e.connect_client(target.port, f"producer-{mode}", timeout=60)
    # Warm-up: one message end to end (the bridge subscribes on demand).
    prod.send(dest, b"warm", headers={"warm": "1"})
    m = cons.recv_message(timeout=30)
    if m is None:
        e.fail(f"{mode}: the warm-up message did not reach B within 30 s")
    if args.consumer_ack != "auto":
        cons.ack(m, receipt=False)

    body = os.urandom(args.size // 2 + 1).hex()[: args.size].encode()
    res = {}

    def producer():
        t = time.monotonic()
        try:
            outstanding = set()
            i = 0
            while i < n or outstanding:
                while i < n and len(outstanding) < args.window:
                    rid = prod.next_receipt_id("p")
                    prod.send_frame("SEND", {"destination": dest, "persistent": "true",
                                             "seq": str(i + 1), "receipt": rid}, body)
                    outstanding.add(rid)
                    i += 1
                f = prod._read_frame(60)
                if f is None:
                    raise e.TestFailure(f"{len(outstanding)} receipts missing after 60 s")
                if f.command == "RECEIPT":
                    outstanding.discard(f.headers.get("receipt-id"))
                elif f.command == "ERROR":
                    raise e.StompErrorFrame(f)
            res["send_s"] = time.monotonic() - t
        except Exception as ex:  # reported below
            res["error"] = ex

    seen = set()
    dups = 0
    t0 = time.monotonic()
    th = threading.Thread(target=producer, daemon=True)
    th.start()
    deadline = t0 + args.timeout
    while len(seen) < n and time.monotonic() < deadline:
        m = cons.recv_message(timeout=1.0)
        if m is None:
            if "error" in res:
                break
            continue
        s = int(m.headers.get("seq", "0"))
        if s in seen:
            dups += 1
        seen.add(s)
        if args.consumer_ack != "auto":
            cons.ack(m, receipt=False)
    deliver_s = time.monotonic() - t0
    th.join(timeout=60)
    prod.disconnect()
    cons.disconnect()
    if "error" in res:
        raise res["error"]
    if len(seen) < n:
        e.fail(f"{mode}: only {len(seen)} of {n} messages at B within {args.timeout} s")
    return {"mode": mode, "messages": n, "send_s": round(res["send_s"], 4),
            "deliver_s": round(deliver_s, 4),
            "send_msg_s": round(n / res["send_s"], 1),
            "deliver_msg_s": round(n / deliver_s, 1), "duplicates": dups}


def spread(xs):
    return {"median": round(statistics.median(xs), 1), "min": round(min(xs), 1),
            "max": round(max(xs), 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--broker", default=os.path.join(HERE, "..", "build", "bin", "mqbroker"))
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--size", type=int, default=256, help="body bytes")
    ap.add_argument("--window", type=int, default=16, help="receipts outstanding")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--consumer-ack", default="auto",
                    choices=["auto", "client-individual"])
    ap.add_argument("--prefetch", type=int, default=None,
                    help="the connector's prefetch (default: the bridge's)")
    ap.add_argument("--store-uri-a", default=None, help="A's store (default: SQLite)")
    ap.add_argument("--store-uri-b", default=None, help="B's store (default: SQLite)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per run")
    ap.add_argument("--json", default="bench-bridge.json")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    if (args.store_uri_a is None) != (args.store_uri_b is None):
        ap.error("give both --store-uri-a and --store-uri-b, or neither")
    if not os.access(args.broker, os.X_OK):
        ap.error(f"{args.broker} is not an executable mqbroker (build first)")

    workdir = tempfile.mkdtemp(prefix="mqs-bench-bridge-")
    tag = f"{os.getpid()}x{int(time.time())}"
    uri_a = args.store_uri_a or f"sqlite://{workdir}/a.db"
    uri_b = args.store_uri_b or f"sqlite://{workdir}/b.db"
    ca, cb = f"bench-bridge-{tag}-a", f"bench-bridge-{tag}-b"
    uri_a, uri_b = e.with_option(uri_a, "cluster", ca), e.with_option(uri_b, "cluster", cb)
    pa, pb = e.free_port(), e.free_port()
    while pb == pa:
        pb = e.free_port()
    spec = f"name=toB;uri=static:(tcp://127.0.0.1:{pb})"
    if args.prefetch:
        spec += f";prefetch={args.prefetch}"
    brokers = []
    runs = []
    ok = False
    try:
        b = start_broker(args, workdir, "B", uri_b, cb, pb, [])
        brokers.append(b)
        a = start_broker(args, workdir, "A", uri_a, ca, pa, ["--network-connector", spec])
        brokers.append(a)
        print(f"A {e.mask_uri(uri_a)} :{pa} --network-connector '{spec}'", flush=True)
        print(f"B {e.mask_uri(uri_b)} :{pb}", flush=True)
        for r in range(args.repeats):
            modes = ("bridge", "direct") if r % 2 == 0 else ("direct", "bridge")
            for mode in modes:
                dest = f"/queue/bench.bridge.{tag}.{mode}.{r}"
                x = one_run(args, a, b, mode, dest)
                x["repeat"] = r + 1
                runs.append(x)
                print(f"  repeat {r + 1} {mode:6}: send {x['send_msg_s']:9.1f} msg/s, "
                      f"deliver {x['deliver_msg_s']:9.1f} msg/s, duplicates "
                      f"{x['duplicates']}", flush=True)
        ok = True
    except (e.TestFailure, e.StompErrorFrame, e.ConnectionClosed) as ex:
        print(f"bench failed: {ex}", file=sys.stderr)
        for br in brokers:
            print(br.log_tail(20), file=sys.stderr)
    finally:
        for br in brokers:
            br.cleanup()
    if not ok:
        print(f"work dir kept: {workdir}", file=sys.stderr)
        return 1

    summary = {}
    for mode in ("bridge", "direct"):
        xs = [x for x in runs if x["mode"] == mode]
        summary[mode] = {"send_msg_s": spread([x["send_msg_s"] for x in xs]),
                         "deliver_msg_s": spread([x["deliver_msg_s"] for x in xs]),
                         "duplicates": sum(x["duplicates"] for x in xs)}
    ratio = summary["bridge"]["deliver_msg_s"]["median"] / \
        summary["direct"]["deliver_msg_s"]["median"]
    backend = uri_a.split(":", 1)[0]
    print(f"\n{args.messages} messages x {args.repeats} repeats, {args.size} B bodies, "
          f"window {args.window}, consumer ack {args.consumer_ack}, store {backend}")
    print("| mode | send msg/s (median, min..max) | delivered msg/s (median, min..max) "
          "| duplicates |")
    print("|---|---|---|---|")
    for mode in ("bridge", "direct"):
        s = summary[mode]
        print(f"| {'A -> bridge -> B' if mode == 'bridge' else 'direct to B'} "
              f"| {s['send_msg_s']['median']:.0f} ({s['send_msg_s']['min']:.0f}.."
              f"{s['send_msg_s']['max']:.0f}) "
              f"| {s['deliver_msg_s']['median']:.0f} ({s['deliver_msg_s']['min']:.0f}.."
              f"{s['deliver_msg_s']['max']:.0f}) | {s['duplicates']} |")
    print(f"bridge/direct delivered: {ratio:.2f}")
    out = {"config": {"messages": args.messages, "size": args.size, "window": args.window,
                      "repeats": args.repeats, "consumer_ack": args.consumer_ack,
                      "store_a": e.mask_uri(uri_a), "store_b": e.mask_uri(uri_b),
                      "connector": spec, "broker": os.path.abspath(args.broker),
                      "host": platform.node(), "cpus": os.cpu_count(),
                      "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
           "runs": runs, "summary": summary, "bridge_over_direct": round(ratio, 3)}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"JSON: {args.json}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(x["duplicates"] == 0 for x in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
