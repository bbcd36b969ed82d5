#!/usr/bin/python3
"""One client cannot grow the broker's memory without bound (issue 14).

The broker runs with --max-dest-bytes 8m, --max-out-buffer 1m. Each abuse
below used to cost hundreds of MB; after each, the broker's peak RSS
(VmHWM) must stay under its value after start-up plus --max-growth-mb:

  a. a connection holding ONE unacked message floods another queue
     (flow control used to be off for any connection with unacked
     messages);
  b. a topic with 500 client-ack subscriptions on the producing
     connection, small SENDs (each fans out to 500 entries);
  c. transactions: 64 open at once, each trying to hold 8 MB;
  d. cumulative ACKs inside a transaction (each adds one item per
     message it covers);
  e. a client that never reads, sending SENDs with 2 KiB receipt ids
     (RECEIPTs used to pile up past --max-out-buffer);
  f. --max-memory 24m: 8 producers flood 8 queues (8 MB each would be
     allowed per queue, 64 MB in all): the broker holds at most about
     24 MB (peak RSS under --max-global-mb), and once consumers drain the
     queues every producer resumes and gets its last RECEIPT;
  g. a persistent flood to a topic whose one durable subscriber is
     offline: 48 MB get through (the subscription pages to the store)
     where it used to pause at --max-dest-bytes;
  h. --max-memory 24m: 100 connections each start a 1 MB SEND and write
     900 KB of it: a connection in the middle of a frame is not read
     while the broker is over --max-memory.

Every flood is bounded (bytes and seconds); a client the broker stops
reading simply blocks until the flood's time runs out.
"""
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402


def hwm_mb(pid):
    return e.proc_mem_mb(pid)[1]


def pump(sock, frames, seconds, total_bytes):
    """Write frames (a generator) until total_bytes, seconds, or the broker
    stops reading / closes; returns bytes written."""
    sock.settimeout(0.5)
    sent = 0
    end = time.monotonic() + seconds
    pending = b""
    while sent < total_bytes and time.monotonic() < end:
        if not pending:
            pending = next(frames)
        try:
            n = sock.send(pending)
        except socket.timeout:
            continue
        except OSError:
            break
        pending = pending[n:]
        sent += n
    return sent


def frames_of(dest, body, extra=None):
    i = 0
    while True:
        i += 1
        h = {"destination": dest}
        if extra:
            h.update(extra(i))
        yield e.encode_frame("SEND", h, body)


def global_ceiling(env, results):
    """f. the global ceiling, on a broker of its own: 8 producers, 8 queues."""
    args = env.args
    b = env.broker("global", ["--max-dest-bytes", "8m", "--max-body", "1m",
                              "--max-out-buffer", "1m", "--max-memory", "24m"])
    b.start()
    b.wait_master()
    pid = b.proc.pid
    base = hwm_mb(pid)
    qs = [env.dest("queue", f"glob{i}") for i in range(8)]
    prods = [e.raw_connect(b.port, f"f{i}") for i in range(8)]
    body = b"g" * 65536
    threads, sent_f = [], [0] * 8

    def flood(i):
        sent_f[i] = pump(prods[i], frames_of(qs[i], body), args.seconds / 2, 12e6)

    for i in range(8):
        t = threading.Thread(target=flood, args=(i,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join(60)
    peak = hwm_mb(pid)
    e.log(f"f. 8 producers x 8 queues: {sum(sent_f) / 1e6:.0f} MB written, broker peak "
          f"{peak:.1f} MB (--max-memory 24m)")
    results.append(("f. --max-memory 24m, 8 queues", sum(sent_f), peak))
    e.check(peak < base + args.max_global_mb,
            f"f: peak RSS {peak:.1f} MB over {base + args.max_global_mb:.1f} MB: "
            f"--max-memory did not hold")
    # Drain everything; then each producer's last SEND gets its RECEIPT.
    cons = env.client(b.port, "drain-f")
    for i, q in enumerate(qs):
        cons.subscribe(q, f"d{i}", ack="auto")
    drained = cons.drain(quiet=2.0, max_total=60.0)
    for i, s_ in enumerate(prods):
        s_.settimeout(20)
        s_.sendall(e.encode_frame("SEND", {"destination": qs[i], "receipt": f"last{i}"},
                                  b"last"))
        data = e.read_until(s_, f"receipt-id:last{i}".encode(), 20)
        e.check(f"receipt-id:last{i}".encode() in data,
                f"f: producer {i} never resumed (no RECEIPT after the drain)")
        s_.close()
    cons.close()
    e.log(f"f. drained {len(drained)} messages; all 8 producers resumed")

    # h. 100 connections each start a 1 MB frame and send 900 KB of it: input
    # buffers count in --max-memory, and past it a connection in the middle
    # of a frame is not read further (it used to hold 90 MB here).
    base_h = hwm_mb(pid)
    socks = [e.raw_connect(b.port, f"h{i}") for i in range(100)]
    head = (f"SEND\ndestination:{env.dest('queue', 'partial')}\n"
            f"content-length:1000000\n\n").encode()
    todo = {i: head + b"h" * 900000 for i in range(100)}
    for s_ in socks:
        s_.setblocking(False)
    end = time.monotonic() + args.seconds
    written = 0
    while todo and time.monotonic() < end:
        progress = False
        for i in list(todo):
            try:
                n = socks[i].send(todo[i][:262144])
            except BlockingIOError:
                continue
            except OSError:
                del todo[i]
                continue
            written += n
            progress = True
            todo[i] = todo[i][n:]
            if not todo[i]:
                del todo[i]
        if not progress:
            time.sleep(0.05)
    time.sleep(0.5)
    peak = hwm_mb(pid)
    e.log(f"h. 100 partial 1 MB frames: {written / 1e6:.0f} MB written, broker peak "
          f"{peak:.1f} MB (--max-memory 24m)")
    results.append(("h. 100 partial 1 MB frames, --max-memory 24m", written, peak))
    e.check(peak < base_h + args.max_global_mb,
            f"h: peak RSS {peak:.1f} MB over {base_h + args.max_global_mb:.1f} MB: partial "
            f"input frames escaped --max-memory")
    probe = env.client(b.port, "probe-h")
    t0 = time.monotonic()
    probe.send(env.dest("queue", "probe-h"), b"p")
    ms = (time.monotonic() - t0) * 1000
    e.log(f"h. a SEND with receipt from another client meanwhile: {ms:.1f} ms")
    e.check(ms < 1000, f"h: another client's SEND took {ms:.0f} ms")
    probe.close()
    for s_ in socks:
        s_.close()

    b.terminate()


def main(env):
    args = env.args
    b = env.broker("broker", ["--max-dest-bytes", "8m", "--max-body", "1m",
                              "--max-out-buffer", "1m", "--prefetch", "100000",
                              "--slow-consumer-ms", "60000"])
    b.start()
    b.wait_master()
    pid = b.proc.pid
    base = hwm_mb(pid)
    limit = base + args.max_growth_mb
    e.log(f"broker peak RSS after start: {base:.1f} MB; allowed: {limit:.1f} MB")
    results = []

    def checkpoint(name, sent):
        peak = hwm_mb(pid)
        results.append((name, sent, peak))
        e.log(f"{name}: {sent / 1e6:.0f} MB written by the client, broker peak {peak:.1f} MB")
        e.check(peak < limit, f"{name}: broker peak RSS {peak:.1f} MB > {limit:.1f} MB")

    # a. one unacked message, then flood another queue.
    q1, q2 = env.dest("queue", "held"), env.dest("queue", "flood")
    p = env.client(b.port, "seed")
    p.send(q1, b"hold-me")
    p.disconnect()
    s = e.raw_connect(b.port, "a")
    s.sendall(e.encode_frame("SUBSCRIBE", {"destination": q1, "id": "1",
                                           "ack": "client-individual"}))
    time.sleep(0.3)
    sent = pump(s, frames_of(q2, b"x" * 65536), args.seconds, args.flood_mb * 1e6)
    checkpoint("a. flood while holding 1 unacked", sent)
    s.close()

    # b. topic fan-out to 500 client-ack subscriptions of the producer.
    topic = env.dest("topic", "fan")
    s = e.raw_connect(b.port, "b")
    s.sendall(b"".join(e.encode_frame("SUBSCRIBE", {"destination": topic, "id": str(i),
                                                    "ack": "client"})
                       for i in range(500)))
    time.sleep(0.5)
    sent = pump(s, frames_of(topic, b"y" * 16), args.seconds, args.flood_mb * 1e6)
    checkpoint("b. topic fan-out x500", sent)
    s.close()

    # c. 64 transactions, each trying to hold 8 MB.
    q3 = env.dest("queue", "txn")
    s = e.raw_connect(b.port, "c")

    def txn_frames():
        for t in range(64):
            yield e.encode_frame("BEGIN", {"transaction": f"t{t}"})
            for _ in range(128):
                yield e.encode_frame("SEND", {"destination": q3, "transaction": f"t{t}"},
                                     b"z" * 65536)
        while True:
            yield b"\n"

    sent = pump(s, txn_frames(), args.seconds, args.flood_mb * 1e6)
    checkpoint("c. 64 transactions x 8 MB", sent)
    s.close()

    # d. cumulative ACKs in a transaction.
    q4 = env.dest("queue", "cum")
    p = env.client(b.port, "seed-d")
    e.produce(p, q4, range(1, 5001), window=256)
    p.disconnect()
    c = env.client(b.port, "d")
    c.subscribe(q4, "s", ack="client", headers={"activemq.prefetchSize": "5000"})
    msgs = c.drain(quiet=1.0, max_total=30, limit=5000)
    e.check(len(msgs) == 5000, f"d: got {len(msgs)} of 5000")
    last = msgs[-1].headers["ack"]

    def acks():
        yield e.encode_frame("BEGIN", {"transaction": "T"})
        while True:
            yield e.encode_frame("ACK", {"id": last, "transaction": "T"})

    sent = pump(c.sock, acks(), args.seconds, args.flood_mb * 1e6 / 20)
    checkpoint("d. cumulative ACKs in a transaction", sent)
    c.close()

    # e. a client that never reads: receipts must not pile up.
    q5 = env.dest("queue", "noread")
    s = e.raw_connect(b.port, "e")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rid = "r" * 2048
    sent = pump(s, frames_of(q5, b"", lambda i: {"receipt": f"{rid}{i}"}), args.seconds,
                args.flood_mb * 1e6)
    checkpoint("e. never-reading client with 2 KiB receipts", sent)
    s.close()

    # g. an abandoned durable subscription: the topic's producers are not
    # paused at --max-dest-bytes any more (its messages page to the store).
    topic_g = env.dest("topic", "abandoned")
    dc = env.client(b.port, "durable-g", headers={"client-id": "G"})
    dc.subscribe(topic_g, "g", ack="client-individual",
                 headers={"durable-subscription-name": "G1"})
    dc.disconnect()
    s = e.raw_connect(b.port, "g")
    sent = pump(s, frames_of(topic_g, b"w" * 65536, lambda i: {"persistent": "true"}),
                args.seconds * 2, 48e6)
    checkpoint("g. persistent flood to a topic with an offline durable subscriber", sent)
    e.check(sent >= 40e6, f"g: the producer got only {sent / 1e6:.1f} of 48 MB through in "
                          f"{args.seconds * 2:.0f} s: an offline durable subscriber paused "
                          f"the topic (--max-dest-bytes 8m)")
    s.close()

    # The broker still serves others.
    probe = env.client(b.port, "probe")
    t0 = time.monotonic()
    probe.send(env.dest("queue", "probe"), b"p")
    e.log(f"probe round trip afterwards: {(time.monotonic() - t0) * 1000:.1f} ms")
    probe.disconnect()
    b.terminate()
    global_ceiling(env, results)
    env.result("table", results)


if __name__ == "__main__":
    e.Env("memory", __doc__, extra_args=[
        (["--flood-mb"], {"type": float, "default": 300.0,
                          "help": "bytes each flood tries to write, MB (default %(default)s)"}),
        (["--seconds"], {"type": float, "default": 6.0,
                         "help": "longest time per flood (default %(default)s)"}),
        (["--max-global-mb"], {"type": float, "default": 55.0,
                               "help": "allowed peak RSS growth with 8 queues under "
                                       "--max-memory 24m (default %(default)s)"}),
        (["--max-growth-mb"], {"type": float, "default": 120.0,
                               "help": "allowed peak RSS growth over start-up "
                                       "(default %(default)s)"}),
    ]).run(main)
