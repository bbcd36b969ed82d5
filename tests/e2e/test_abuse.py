#!/usr/bin/python3
"""Abuse cases that used to cost the broker (issue 14), each replayed:

  1. ACKs naming no message (non-numeric ids) while one consumer holds
     --unacked messages used to scan them all per ACK (2,000 of them
     stalled every client for seconds): a probe's round trip now stays
     under --max-stall-ms during the flood;
  2. --max-connections-per-ip: the next connection from that address gets
     ERROR and is closed; another one fits once a slot is free;
  3. --max-subscriptions per connection: ERROR names the limit;
  4. a frame begun and never finished is closed after --frame-timeout-ms;
     a connection without heart-beats and silent both ways after
     --idle-timeout-ms; an active one is left alone;
  5. a client that half-closes after a SEND with a receipt still gets the
     RECEIPT;
  6. a producer paused by flow control while heart-beating is not cut for
     "no heart-beat": it resumes once a consumer drains the queue;
  8. a destination name with terminal control bytes (ESC) reaches neither
     `mqstore stats` nor the broker log raw;
  7. started with an open-files limit below --max-connections, the broker
     serves fewer connections (warning at start) and refuses the rest with
     an ERROR instead of spinning on accept().
"""
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402


def closed_within(sock, seconds):
    """True when the broker closes sock within `seconds` (EOF or reset)."""
    sock.settimeout(0.2)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = sock.recv(65536)
            if not data:
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


def raw_connected(port, hb="0,0"):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(e.encode_frame("CONNECT", {"accept-version": "1.2", "host": "x",
                                         "heart-beat": hb}))
    data = s.recv(4096)
    e.check(data.startswith(b"CONNECTED"), f"raw CONNECT answered {data[:80]!r}")
    return s


def bogus_acks(env, port):
    n = env.args.unacked
    q = env.dest("queue", "acks")
    p = env.client(port, "producer")
    e.produce(p, q, range(1, n + 1), window=256)
    p.disconnect()
    cons = env.client(port, "holder")
    cons.subscribe(q, "s1", ack="client-individual",
                   headers={"activemq.prefetchSize": str(n)})
    got = cons.drain(quiet=1.0, max_total=60.0, limit=n)
    e.check(len(got) == n, f"holder received {len(got)} of {n}")
    probe = env.client(port, "probe")
    stop = threading.Event()

    def flood():
        frames = b"".join(e.encode_frame("ACK", {"id": f"ID:bogus-{i}",
                                                 "message-id": f"ID:bogus-{i}"})
                          for i in range(env.args.bogus))
        cons.send_raw(frames)
        stop.set()

    t = threading.Thread(target=flood)
    t.start()
    worst = 0.0
    end = time.monotonic() + 3
    while time.monotonic() < end:
        t0 = time.monotonic()
        probe.send(env.dest("queue", "probe"), b"p", persistent=False)
        worst = max(worst, time.monotonic() - t0)
    t.join(30)
    e.log(f"1. {env.args.bogus} bogus ACKs against {n} unacked: probe worst "
          f"{worst * 1000:.1f} ms")
    e.check(worst * 1000 < env.args.max_stall_ms,
            f"a probe stalled {worst * 1000:.0f} ms during {env.args.bogus} bogus ACKs")
    # The holder is still usable: a real ACK works.
    cons.ack(got[0])
    cons.close()
    probe.disconnect()


def per_ip(env, port):
    socks = [raw_connected(port) for _ in range(3)]
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    data = s.recv(4096)
    e.check(b"ERROR" in data and b"max-connections-per-ip" in data,
            f"4th connection from one address: {data[:200]!r}")
    s.close()
    socks.pop().close()
    time.sleep(0.3)
    socks.append(raw_connected(port))
    for x in socks:
        x.close()
    e.log("2. max-connections-per-ip 3: the 4th refused, a freed slot reused")


def max_subs(env, port):
    c = env.client(port, "subs")
    for i in range(5):
        c.subscribe(env.dest("queue", f"s{i}"), f"id{i}")
    try:
        c.subscribe(env.dest("queue", "s5"), "id5")
        e.fail("the 6th subscription was accepted with --max-subscriptions 5")
    except e.StompErrorFrame as ex:
        e.check("max-subscriptions" in ex.frame.body.decode(),
                f"ERROR does not name the limit: {ex.frame!r}")
    c.close()
    e.log("3. max-subscriptions 5: the 6th refused")


def timeouts(env, port):
    half = socket.create_connection(("127.0.0.1", port), timeout=5)
    half.sendall(b"CONNECT\naccept-version:1.2\nhost:x\n")  # never finished
    idle = raw_connected(port)
    busy = env.client(port, "busy")
    t0 = time.monotonic()
    half_closed = idle_closed = None
    while time.monotonic() - t0 < 4 and (half_closed is None or idle_closed is None):
        busy.send(env.dest("queue", "busy"), b"x", persistent=False)
        if half_closed is None and closed_within(half, 0.1):
            half_closed = time.monotonic() - t0
        if idle_closed is None and closed_within(idle, 0.1):
            idle_closed = time.monotonic() - t0
    e.check(half_closed is not None and half_closed < 2.5,
            f"an unfinished frame was not cut after --frame-timeout-ms 500 ({half_closed})")
    e.check(idle_closed is not None and idle_closed < 3.0,
            f"an idle connection was not closed after --idle-timeout-ms 800 ({idle_closed})")
    busy.send(env.dest("queue", "busy"), b"still-open", persistent=False)
    busy.close()
    e.log(f"4. unfinished frame cut after {half_closed:.2f} s, idle connection after "
          f"{idle_closed:.2f} s, the active one kept")


def half_close(env, port):
    s = raw_connected(port)
    s.sendall(e.encode_frame("SEND", {"destination": env.dest("queue", "half"),
                                      "persistent": "true", "receipt": "r-half"}, b"x"))
    s.shutdown(socket.SHUT_WR)
    data = e.read_until(s, b"r-half")
    s.close()
    e.check(b"RECEIPT" in data and b"r-half" in data,
            f"half-closed client got {data[:200]!r}, no RECEIPT")
    e.log("5. half-close after SEND: RECEIPT delivered")


def paused_producer(env):
    b = env.broker("flow", ["--heartbeat", "200,200", "--max-body", "16k",
                            "--max-dest-bytes", "32k"])
    b.start()
    b.wait_master()
    q = env.dest("queue", "flow")
    s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
    s.sendall(e.encode_frame("CONNECT", {"accept-version": "1.2", "host": "x",
                                         "heart-beat": "100,0"}))
    e.check(s.recv(4096).startswith(b"CONNECTED"), "flow producer not connected")
    body = b"x" * 8000
    stop = threading.Event()

    def beat():  # the client's heart-beats, every 100 ms
        while not stop.is_set():
            try:
                s.sendall(b"\n")
            except OSError:
                return
            time.sleep(0.1)

    # 20 x 8 KB non-persistent: far over 32k, so the broker pauses us.
    s.sendall(b"".join(e.encode_frame("SEND", {"destination": q}, body)
                       for _ in range(20)) +
              e.encode_frame("SEND", {"destination": q, "receipt": "last"}, b"end"))
    t = threading.Thread(target=beat)
    t.start()
    time.sleep(2.0)  # ten heart-beat periods while paused
    cons = env.client(b.port, "drain")
    cons.subscribe(q, "d", ack="auto")
    msgs = cons.drain(quiet=1.0, max_total=20.0)
    stop.set()
    t.join(5)
    data = e.read_until(s, b"receipt-id:last")
    s.close()
    cons.close()
    e.check(b"receipt-id:last" in data,
            f"the paused producer lost its connection: got {data[:200]!r}; broker log:\n"
            f"{b.log_tail()}")
    e.check(len(msgs) == 21, f"consumer got {len(msgs)} of 21 messages")
    b.terminate()
    e.log("6. paused producer with heart-beats kept for 2 s, resumed, all 21 delivered")


def fd_limit(env):
    b = env.broker("nofile", [])
    argv = b.argv()
    b.argv = lambda: ["prlimit", "--nofile=48:48"] + argv
    b.start()
    b.wait_master()
    socks, refused = [], 0
    for _ in range(60):
        try:
            x = socket.create_connection(("127.0.0.1", b.port), timeout=5)
        except OSError:
            refused += 1
            continue
        socks.append(x)
    time.sleep(0.5)
    with open(f"/proc/{b.proc.pid}/stat") as f:
        f0 = f.read().split()
    t_cpu0 = int(f0[13]) + int(f0[14])
    time.sleep(2.0)
    with open(f"/proc/{b.proc.pid}/stat") as f:
        f1 = f.read().split()
    cpu = (int(f1[13]) + int(f1[14]) - t_cpu0) / os.sysconf("SC_CLK_TCK") / 2.0
    errors = 0
    for x in socks:
        x.settimeout(0.2)
        try:
            if b"max-connections" in x.recv(4096):
                errors += 1
        except OSError:
            pass
        x.close()
    text = b.log_text()
    b.terminate()
    e.check("open files limit is 48" in text, "no warning about the open files limit")
    e.check(cpu < 0.3, f"broker used {cpu * 100:.0f}% CPU with connections over its fd limit")
    e.check(errors > 0, "no connection over the limit got an ERROR")
    lines = text.count("\n")
    e.check(lines < 200, f"{lines} log lines in 2.5 s over the fd limit")
    e.log(f"7. fd limit 48: {errors} refused with ERROR, CPU {cpu * 100:.1f}%, "
          f"{lines} log lines")


def control_chars(env, b):
    dest = "/queue/e2e.abuse." + env.run_id + ".\x1b[31mred\x07"
    c = env.client(b.port, "ctl")
    c.send(dest, b"x")
    c.send("/queue/\x1b]0;title\x07", b"y", persistent=False)
    c.disconnect()
    if env.mqstore_path:
        r = subprocess.run([env.mqstore_path, "stats", env.store_uri], capture_output=True,
                           timeout=60)
        e.check(r.returncode == 0, f"mqstore stats failed: {r.stderr!r}")
        e.check(b"\x1b" not in r.stdout and b"\x07" not in r.stdout,
                "mqstore stats printed a raw control byte")
        e.check(b"[31mred" in r.stdout, "the destination is missing from mqstore stats")
    log = b.log_text(whole=True)
    e.check("\x1b" not in log and "\x07" not in log, "the broker log holds a raw control byte")
    e.log("8. control bytes in destination names: not printed raw")


def main(env):
    a = env.broker("broker", ["--max-connections-per-ip", "3", "--max-subscriptions", "5",
                              "--frame-timeout-ms", "500", "--idle-timeout-ms", "800",
                              "--log-level", "debug"])
    a.start()
    a.wait_master()
    per_ip(env, a.port)
    max_subs(env, a.port)
    timeouts(env, a.port)
    half_close(env, a.port)
    control_chars(env, a)
    a.terminate()
    b = env.broker("acks", ["--prefetch", str(env.args.unacked)])
    b.start()
    b.wait_master()
    bogus_acks(env, b.port)
    b.terminate()
    paused_producer(env)
    fd_limit(env)


if __name__ == "__main__":
    e.Env("abuse", __doc__, extra_args=[
        (["--unacked"], {"type": int, "default": 10000,
                         "help": "messages the holder keeps unacked (default %(default)s)"}),
        (["--bogus"], {"type": int, "default": 2000,
                       "help": "ACKs naming no message (default %(default)s)"}),
        (["--max-stall-ms"], {"type": float, "default": 200.0,
                              "help": "worst probe round trip allowed (default %(default)s)"}),
    ]).run(main)
