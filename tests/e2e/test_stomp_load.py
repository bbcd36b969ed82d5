#!/usr/bin/python3
"""stomp-load against mqbroker: a short queue run and a short topic run.

Queue: 2 producers x 300 messages (persistent, receipts, window 8), 2
consumers acking without receipts: every message delivered exactly once.
Topic: 1 producer x 200 messages, 2 consumers acking with receipts: each
consumer gets all 200. The JSON report must say ok with nothing missing or
duplicated, and give latency percentiles.
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402


def run_load(env, port, label, args, expect_sent, expect_received):
    out = os.path.join(env.workdir, f"{label}.json")
    argv = [env.args.stomp_load, "--broker", f"127.0.0.1:{port}", "--timeout", "60",
            "--drain-timeout", "5", "--json", out] + args
    e.log(f"{label}: {' '.join(argv)}")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    print(r.stdout, end="", flush=True)
    e.check(r.returncode == 0, f"{label}: stomp-load exited {r.returncode}:\n{r.stdout}"
                               f"{r.stderr}")
    with open(out) as f:
        res = json.load(f)
    e.check(res["ok"] is True, f"{label}: report says not ok: {res}")
    e.check(res["sent"] == expect_sent, f"{label}: sent {res['sent']}, expected {expect_sent}")
    e.check(res["received"] == expect_received,
            f"{label}: received {res['received']}, expected {expect_received}")
    e.check(res["missing"] == 0 and res["duplicates"] == 0 and res["errors"] == 0,
            f"{label}: missing {res['missing']}, duplicates {res['duplicates']}, errors "
            f"{res['errors']}")
    send = res["results"]["send+receipt"]
    e.check(send["samples"] == expect_sent and 0 < send["p50_ms"] <= send["p99_ms"],
            f"{label}: implausible send latency figures: {send}")
    env.result(f"{label}_send_msgs_per_s", send["msgs_per_s"])
    env.result(f"{label}_send_p50_ms", send["p50_ms"])
    env.result(f"{label}_send_p99_ms", send["p99_ms"])
    env.result(f"{label}_delivery_p99_ms", res["results"]["delivery"]["p99_ms"])
    return res


def main(env):
    e.check(env.args.stomp_load and os.access(env.args.stomp_load, os.X_OK),
            f"--stomp-load {env.args.stomp_load!r} is not an executable")
    a = env.broker("broker-a")
    a.start()
    a.wait_master()
    run_load(env, a.port, "queue",
             ["--dest", env.dest("queue", "load"), "--producers", "2", "--consumers", "2",
              "--messages", "300", "--window", "8", "--size", "512"], 600, 600)
    res = run_load(env, a.port, "topic",
                   ["--dest", env.dest("topic", "load"), "--producers", "1",
                    "--consumers", "2", "--messages", "200", "--ack-receipt"], 200, 400)
    acks = res["results"].get("ack+receipt", {})
    e.check(acks.get("samples") == 400, f"topic: expected 400 ACK receipts, got {acks}")
    r = subprocess.run([env.args.stomp_load, "--help"], capture_output=True, text=True)
    e.check(r.returncode == 0 and "--producers" in r.stdout, "stomp-load --help is broken")
    a.terminate()


if __name__ == "__main__":
    e.Env("stomp_load", __doc__, extra_args=[
        (["--stomp-load"], {"required": True, "help": "path to the stomp-load binary"}),
    ]).run(main)
