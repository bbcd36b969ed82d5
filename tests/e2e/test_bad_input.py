#!/usr/bin/python3
"""Bad input: each bad frame gets an ERROR and a closed connection, while
another client keeps working and nothing stored is lost.

The broker runs with --max-body 4096. 50 persistent messages are stored
first; a well-behaved client stays connected throughout and does a SEND with
receipt + receive + ACK round trip after every bad case. Each bad case uses
a fresh connection and must get an ERROR frame (with a message header) and
then see the broker close the connection within 5 s:

  content-length shorter than the body (no NUL after it), a header line
  without a colon, a non-numeric content-length, an unknown command, binary
  garbage, SEND / SUBSCRIBE without destination, a frame before CONNECT,
  a body over --max-body (with and without content-length), an announced
  2 GB content-length, and a header block that never ends (1 MiB).

Finally the broker is still master, the 50 messages come back intact, and
nothing sent by a bad frame was stored or delivered.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402

MAX_BODY = 4096


def bad_cases(bad_dest):
    d = bad_dest.encode()
    return [
        ("content-length shorter than the body",
         b"SEND\ndestination:" + d + b"\ncontent-length:3\n\nabcdef\0", True),
        ("header line without a colon",
         b"SEND\ndestination:" + d + b"\nthis-is-not-a-header\n\nbody\0", True),
        ("non-numeric content-length",
         b"SEND\ndestination:" + d + b"\ncontent-length:abc\n\nbody\0", True),
        ("unknown command", b"FROBNICATE\nfoo:bar\n\n\0", True),
        ("binary garbage", b"\x01\x02\xff\xfe\x7fgarbage\x80\n\n\0", True),
        ("SEND without destination", b"SEND\npersistent:true\n\nlost body\0", True),
        ("SUBSCRIBE without destination", b"SUBSCRIBE\nid:1\nack:auto\n\n\0", True),
        ("SEND before CONNECT",
         b"SEND\ndestination:" + d + b"\npersistent:true\n\nsneaky\0", False),
        (f"body of {2 * MAX_BODY} bytes over --max-body {MAX_BODY} (content-length)",
         b"SEND\ndestination:" + d + b"\npersistent:true\ncontent-length:"
         + str(2 * MAX_BODY).encode() + b"\n\n" + b"x" * (2 * MAX_BODY) + b"\0", True),
        (f"body of {2 * MAX_BODY} bytes over --max-body {MAX_BODY} (no content-length)",
         b"SEND\ndestination:" + d + b"\npersistent:true\n\n" + b"y" * (2 * MAX_BODY)
         + b"\0", True),
        ("content-length of 2 GB announced",
         b"SEND\ndestination:" + d + b"\ncontent-length:2147483648\n\nabc", True),
        ("header block that never ends (1 MiB)",
         b"SEND\ndestination:" + d + b"\n" + (b"x-filler:" + b"f" * 1000 + b"\n") * 1024,
         True),
    ]


def round_trip(good, dest, n):
    """SEND with receipt on the good client and receive + ACK it."""
    good.send(dest, f"ping {n}", headers={"seq": str(n)})
    m = good.recv_message(timeout=10)
    e.check(m is not None, f"good client: ping {n} not delivered within 10 s")
    e.check(e.seq_of(m) == n and m.body == f"ping {n}".encode(),
            f"good client: expected ping {n}, got {m!r}")
    good.ack(m)


def main(env):
    keep = env.dest("queue", "keep")
    ping = env.dest("queue", "ping")
    bad = env.dest("queue", "bad")
    a = env.broker("broker-a", extra_args=["--max-body", str(MAX_BODY)])
    a.start()
    a.wait_master()

    prod = env.client(a.port, "producer")
    e.produce(prod, keep, range(1, 51))
    prod.disconnect()
    good = env.client(a.port, "good")
    good.subscribe(ping, "ping-sub", ack="client-individual")
    round_trip(good, ping, 0)

    problems = []
    for n, (label, data, connect_first) in enumerate(bad_cases(bad), start=1):
        c = e.StompClient(a.port, name=f"bad client ({label})", timeout=10)
        env.clients.append(c)
        c.open()
        if connect_first:
            c.connect()
        t0 = time.monotonic()
        try:
            c.send_raw(data)
        except e.ConnectionClosed:
            pass  # the broker may close while we still write; frames read below
        try:
            frames = c.wait_closed(timeout=5)
        except e.TestFailure as ex:
            problems.append(f"{label}: {ex}")
            c.close()
            round_trip(good, ping, n)
            continue
        errs = [f for f in frames if f.command == "ERROR"]
        others = [f.command for f in frames if f.command != "ERROR"]
        if not errs:
            problems.append(f"{label}: connection closed without an ERROR frame "
                            f"(frames: {others})")
        elif "message" not in errs[0].headers:
            problems.append(f"{label}: ERROR frame without a message header: {errs[0]!r}")
        if others:
            problems.append(f"{label}: unexpected frames besides the ERROR: {others}")
        ms = round((time.monotonic() - t0) * 1000)
        e.log(f"{label}: {'ERROR ' + repr(errs[0].headers.get('message')) if errs else 'no ERROR'}"
              f", closed after {ms} ms")
        c.close()
        e.check(a.alive(), f"the broker died after '{label}'")
        round_trip(good, ping, n)

    e.check(not problems, "bad input not handled as required:\n  " + "\n  ".join(problems))
    e.check(a.wait_master(timeout=2), "broker is no longer master")

    checker = env.client(a.port, "checker")
    checker.subscribe(bad, "bad-sub", ack="auto")
    leaked = checker.drain(quiet=1.0, max_total=3)
    e.check(not leaked, f"{len(leaked)} messages from bad frames were stored and delivered: "
                        f"{[m.body[:30] for m in leaked]}")
    checker.subscribe(keep, "keep-sub", ack="client-individual")
    kept = checker.drain(quiet=1.0, max_total=10)
    seqs = [e.seq_of(m) for m in kept]
    e.check(seqs == list(range(1, 51)),
            f"stored messages damaged by the bad clients: expected seq 1..50, got "
            f"{e.summarize(seqs)}")
    for m in kept:
        e.check(m.body == e.body_for(e.seq_of(m)), f"message {e.seq_of(m)} has body {m.body!r}")
        checker.ack(m)
    checker.disconnect()
    good.disconnect()
    env.expect_store_pending(keep, 0, "after acking the 50 kept messages")
    env.expect_store_pending(bad, 0, "(bad frames must store nothing)")
    a.terminate()


if __name__ == "__main__":
    e.Env("bad_input", __doc__).run(main)
