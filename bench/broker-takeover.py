#!/usr/bin/python3
"""Broker takeover against backlog size: how long a standby mqbroker needs,
after the master is killed with SIGKILL, to answer a STOMP CONNECT and to
deliver the first message of a backlog of N messages, how long it then takes
to drain the backlog, and how much memory the new master uses meanwhile.

For each store backend (a fresh SQLite file per trial, plus every URI given),
backlog size (--sizes), repeat (--repeats) and build (--build, the order of
the builds alternating between repeats), one trial:

  1. a master and a standby mqbroker of that build on one store and a fresh
     cluster name (127.0.0.1 ports; the master answers CONNECT, the standby
     logged "waiting for the store lock");
  2. fill: N persistent messages of --size bytes on a fresh queue through the
     master, pipelined on one connection with a RECEIPT every
     --receipt-every messages and at most --fill-window messages unconfirmed;
     each body starts with its sequence number ("seq=0000000042;"), priority 4
     (--mixed-priorities: one message in ten gets a random priority 0..9);
     the store's pending count is then checked with `mqstore stats`;
  3. kill -9 of the master at t0 (CLOCK_MONOTONIC). Then, from t0:
       takeover  until the standby answers a CONNECT with CONNECTED (a TCP
                 connect retried every --poll-ms while refused);
       first     until the first MESSAGE after a SUBSCRIBE sent right after
                 CONNECTED (--ack mode, activemq.prefetchSize --prefetch);
       drain     SUBSCRIBE written -> the last of the N messages read, every
                 message acked (client-individual: one ACK per message, the
                 last with a receipt); msg/s = N / drain;
     every body is checked: lost = N - distinct sequence numbers received,
     duplicates = messages received beyond the first copy of each (including
     any that arrive within --linger s after the last one); left = pending
     count of the queue in the store after the drain (should be 0);
  4. the new master's /proc/PID/status is sampled every --rss-ms: VmRSS right
     after CONNECTED, the largest VmRSS seen and VmHWM (peak RSS of the
     process: the standby held nothing before the takeover, so it is the
     peak of takeover + drain).

Output: progress on stderr; a markdown table (median and min..max over the
repeats per backend, build and size) on stdout and OUT/results.md;
OUT/results.json (every trial); OUT/results.png (gnuplot: takeover and
first delivery against backlog, log x, one line per build x backend; plus
peak RSS). Exit status 0 if every trial ran and nothing was lost or
duplicated, 1 otherwise, 2 on a usage error.
"""
import argparse
import json
import os
import platform
import random
import re
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

# Before paging: "recovered M messages in T ms"; since: "recovered Q queues
# and S durable subscriptions in T ms" (messages are then read in pages).
MASTER_RE = re.compile(r"master \(token (\d+)\): recovered (\d+) (?:messages?|queues? and "
                       r"\d+ durable subscriptions?) in (\d+) ms")
WAITING_RE = re.compile(r"waiting for the store lock")

PROCS = []          # every broker started; killed in main()'s finally


class BenchError(Exception):
    """A trial could not be completed; the message says why."""


def now():
    return time.monotonic()


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mask(uri):
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", uri)


def with_option(uri, key, value):
    pat = re.compile(rf"([?&]){re.escape(key)}=[^&]*")
    if pat.search(uri):
        return pat.sub(lambda m: f"{m.group(1)}{key}={value}", uri, count=1)
    return f"{uri}{'&' if '?' in uri else '?'}{key}={value}"


def free_port(taken):
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p not in taken:
            taken.add(p)
            return p
    raise BenchError("no free TCP port found")


def proc_status(pid):
    """{'VmRSS': kB, 'VmHWM': kB} of a live process, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            out = {}
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
            return out
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None


class RssSampler(threading.Thread):
    """Samples VmRSS / VmHWM of one process every `period` s until stopped."""

    def __init__(self, pid, period):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.max_rss = 0
        self.hwm = 0
        self.stop_ev = threading.Event()

    def sample(self):
        st = proc_status(self.pid)
        if st:
            self.max_rss = max(self.max_rss, st.get("VmRSS", 0))
            self.hwm = max(self.hwm, st.get("VmHWM", 0))
        return st

    def run(self):
        while not self.stop_ev.is_set():
            self.sample()
            self.stop_ev.wait(self.period)

    def stop(self):
        self.sample()
        self.stop_ev.set()
        self.join(timeout=5)


# ---------------------------------------------------------------------------
# A minimal, fast STOMP 1.2 connection (stdlib only)
# ---------------------------------------------------------------------------
class Frame:
    __slots__ = ("command", "headers", "body")

    def __init__(self, command, headers, body):
        self.command, self.headers, self.body = command, headers, body


class Stomp:
    def __init__(self, sock, name):
        self.sock = sock
        self.name = name
        self.buf = bytearray()
        self.pos = 0
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    @classmethod
    def connect(cls, port, name, timeout):
        """Open, CONNECT, wait for CONNECTED; raises OSError/BenchError."""
        s = socket.create_connection(("127.0.0.1", port), timeout=min(timeout, 5))
        c = cls(s, name)
        try:
            c.send(frame_bytes("CONNECT", {"accept-version": "1.2", "host": "localhost",
                                           "heart-beat": "0,0"}, None))
            f = c.read_frame(now() + timeout)
            if f is None:
                raise BenchError(f"{name}: no answer to CONNECT within {timeout:.0f} s")
            if f.command != "CONNECTED":
                raise BenchError(f"{name}: CONNECT answered with {f.command} "
                                 f"{f.headers.get('message', '')}")
        except BaseException:
            c.close()
            raise
        return c

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.settimeout(60)
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise BenchError(f"{self.name}: write failed: {e}") from e

    def _fill(self, deadline):
        """Read what the socket has (waiting until deadline); False on timeout."""
        left = deadline - now()
        if left <= 0:
            return False
        self.sock.settimeout(min(left, 1.0))
        try:
            data = self.sock.recv(1 << 20)
        except (socket.timeout, TimeoutError):
            return True
        except OSError as e:
            raise BenchError(f"{self.name}: connection lost: {e}") from e
        if not data:
            raise BenchError(f"{self.name}: connection closed by the broker")
        if self.pos > (1 << 20):
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += data
        return True

    def parse(self):
        """One frame cut from the buffer, or None when it is incomplete."""
        buf, pos, n = self.buf, self.pos, len(self.buf)
        while pos < n and buf[pos] in (10, 13):   # heart-beats
            pos += 1
        self.pos = pos
        end = buf.find(b"\n\n", pos)
        if end < 0:
            return None
        head = bytes(buf[pos:end]).replace(b"\r", b"").decode("utf-8", "replace")
        lines = head.split("\n")
        headers = {}
        for ln in lines[1:]:
            k, sep, v = ln.partition(":")
            if sep and k not in headers:
                headers[k] = v
        start = end + 2
        cl = headers.get("content-length")
        if cl is not None:
            stop = start + int(cl)
            if n < stop + 1:
                return None
        else:
            stop = buf.find(b"\0", start)
            if stop < 0:
                return None
        body = bytes(buf[start:stop])
        self.pos = stop + 1
        return Frame(lines[0], headers, body)

    def read_frame(self, deadline):
        while True:
            f = self.parse()
            if f is not None:
                return f
            if not self._fill(deadline):
                return None


def _esc(s):
    return s.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace(":", "\\c")


def frame_bytes(command, headers, body):
    raw = command in ("CONNECT", "STOMP")
    out = [command]
    for k, v in headers.items():
        out.append(f"{k}:{v}" if raw else f"{_esc(k)}:{_esc(str(v))}")
    if body is not None:
        out.append(f"content-length:{len(body)}")
    return ("\n".join(out) + "\n\n").encode() + (body or b"") + b"\0"


# ---------------------------------------------------------------------------
# Brokers
# ---------------------------------------------------------------------------
class Broker:
    def __init__(self, path, name, uri, port, extra, logdir):
        self.name, self.port = name, port
        self.log_path = os.path.join(logdir, name + ".log")
        self.argv = [path, "--store", uri, "--listen", f"127.0.0.1:{port}",
                     "--log-level", "info"] + extra
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as lf:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=lf,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        PROCS.append(self.proc)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def tail(self, n=15):
        return "\n".join("    | " + ln for ln in self.log_text().splitlines()[-n:])

    def died(self, what):
        raise BenchError(f"{self.name} exited with status {self.proc.returncode} {what}; "
                         f"log {self.log_path}:\n{self.tail()}")

    def wait_connect(self, timeout):
        """CONNECTED from this broker (retrying refused connects); the Stomp."""
        end = now() + timeout
        last = None
        while now() < end:
            if not self.alive():
                self.died("before answering CONNECT")
            try:
                return Stomp.connect(self.port, self.name, max(end - now(), 0.1))
            except (OSError, BenchError) as e:
                last = e
                time.sleep(0.02)
        raise BenchError(f"{self.name}: no CONNECTED on port {self.port} within "
                         f"{timeout:.0f} s ({last}); log:\n{self.tail()}")

    def wait_standby(self, timeout):
        end = now() + timeout
        while not WAITING_RE.search(self.log_text()):
            if not self.alive():
                self.died("while starting as standby")
            if now() > end:
                raise BenchError(f"{self.name} did not log 'waiting for the store lock' "
                                 f"within {timeout:.0f} s; log:\n{self.tail()}")
            time.sleep(0.02)
        # A standby keeps its port closed; make sure it does not answer.
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            raise BenchError(f"{self.name} is standby but its port {self.port} accepts")
        except (ConnectionRefusedError, socket.timeout, TimeoutError):
            pass

    def kill(self):
        if self.alive():
            self.proc.kill()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass


# ---------------------------------------------------------------------------
# One trial
# ---------------------------------------------------------------------------
def body_for(seq, size):
    head = b"seq=%010d;" % seq
    return head + b"x" * max(size - len(head), 0)


def fill(args, stomp, dest, n, label):
    """N persistent SENDs, a receipt every K, at most W unconfirmed."""
    rnd = random.Random(n)
    k = max(1, args.receipt_every)
    max_out = max(1, args.fill_window // k)
    pad = b"x" * max(args.size - 15, 0)
    prefix = f"SEND\ndestination:{_esc(dest)}\npersistent:true\n".encode()
    clh = b"content-length:%d\n" % (15 + len(pad))
    outstanding = 0
    sent = 0
    confirmed = 0
    t0 = last_log = now()
    deadline = t0 + args.fill_timeout
    while confirmed < n:
        while sent < n and outstanding < max_out:
            batch = []
            stop = min(n, sent + k)
            for i in range(sent, stop):
                prio = 4
                if args.mixed_priorities and rnd.random() < 0.1:
                    prio = rnd.randrange(10)
                hdr = prefix + b"priority:%d\n" % prio
                if i == stop - 1:
                    hdr += b"receipt:f%d\n" % stop
                batch.append(hdr + clh + b"\n" + (b"seq=%010d;" % i) + pad + b"\0")
            stomp.send(b"".join(batch))
            sent = stop
            outstanding += 1
        f = stomp.read_frame(deadline)
        if f is None:
            raise BenchError(f"fill: {confirmed}/{n} confirmed after {args.fill_timeout} s "
                             f"(producer paused? see --broker-args)")
        if f.command == "RECEIPT":
            confirmed = int(f.headers.get("receipt-id", "f0")[1:])
            outstanding -= 1
        elif f.command == "ERROR":
            raise BenchError(f"fill: ERROR {f.headers.get('message')}: {f.body[:200]!r}")
        t = now()
        if t - last_log >= 2:
            last_log = t
            log(f"{label}: fill {confirmed}/{n} ({100 * confirmed // n}%), "
                f"{confirmed / (t - t0):.0f} msg/s")
    return now() - t0


def store_pending(args, mqstore, uri, qname):
    """Pending count of queue qname in the store (mqstore stats --json), or None."""
    if not mqstore:
        return None
    try:
        r = subprocess.run([mqstore, "stats", uri, "--json"], capture_output=True,
                           text=True, timeout=args.cli_timeout)
    except subprocess.TimeoutExpired:
        log(f"mqstore stats timed out after {args.cli_timeout} s")
        return None
    if r.returncode != 0:
        log(f"mqstore stats failed ({r.returncode}): {r.stderr.strip()[:200]}")
        return None
    total = 0
    for d in json.loads(r.stdout).get("destinations", []):
        if d.get("dest") in (qname, "/queue/" + qname):
            total += int(d.get("pending", 0))
    return total


def takeover_and_drain(args, standby, n, dest, t0, sampler):
    """From the kill at t0: CONNECT polling, SUBSCRIBE, drain. Returns a dict."""
    r = {}
    poll = args.poll_ms / 1000.0
    end = t0 + args.takeover_timeout
    attempts = 0
    stomp = None
    while stomp is None:
        if not standby.alive():
            standby.died("during the takeover")
        if now() > end:
            raise BenchError(f"no CONNECTED from the standby within {args.takeover_timeout} s"
                             f" of the kill; log:\n{standby.tail()}")
        attempts += 1
        try:
            s = socket.create_connection(("127.0.0.1", standby.port), timeout=1)
        except (ConnectionRefusedError, socket.timeout, TimeoutError):
            time.sleep(poll)
            continue
        r.setdefault("port_open_ms", (now() - t0) * 1000)
        c = Stomp(s, standby.name)
        try:
            c.send(frame_bytes("CONNECT", {"accept-version": "1.2", "host": "localhost",
                                           "heart-beat": "0,0"}, None))
            f = c.read_frame(end)
        except BenchError:
            c.close()
            time.sleep(poll)
            continue
        if f is not None and f.command == "CONNECTED":
            stomp = c
            break
        c.close()
        if f is None:
            continue
        time.sleep(poll)
    t_conn = now()
    r["takeover_ms"] = (t_conn - t0) * 1000
    r["connect_attempts"] = attempts
    st = sampler.sample()
    r["rss_connected_kb"] = st.get("VmRSS") if st else None
    try:
        hdr = {"destination": dest, "id": "s1", "ack": args.ack}
        if args.prefetch:
            hdr["activemq.prefetchSize"] = str(args.prefetch)
        stomp.send(frame_bytes("SUBSCRIBE", hdr, None))
        t_sub = now()
        seen = bytearray(n)
        distinct = dups = foreign = redelivered = 0
        first = last = None
        acks = []
        stall = args.drain_timeout
        last_log = t_sub
        while distinct < n:
            f = stomp.read_frame(now() + stall)
            if f is None:
                break
            if f.command == "ERROR":
                raise BenchError(f"drain: ERROR {f.headers.get('message')}: {f.body[:200]!r}")
            if f.command != "MESSAGE":
                continue
            t = now()
            if first is None:
                first = t
            seq = parse_seq(f.body)
            if seq is None or seq >= n:
                foreign += 1
            elif seen[seq]:
                dups += 1
            else:
                seen[seq] = 1
                distinct += 1
                last = t
            if f.headers.get("redelivered") == "true":
                redelivered += 1
            if args.ack != "auto":
                acks.append(f"ACK\nid:{f.headers.get('ack', '')}\n\n\0")
                if len(acks) >= 64 or stomp.pos >= len(stomp.buf):
                    stomp.send("".join(acks).encode())
                    acks = []
            if t - last_log >= 2:
                last_log = t
                log(f"    drain {distinct}/{n}, {distinct / (t - t_sub):.0f} msg/s")
        if acks:
            stomp.send("".join(acks).encode())
        # Late copies (duplicates) for a moment, then a receipt that follows
        # the ACKs so the store count below sees them.
        lend = now() + args.linger
        while n and distinct == n:
            f = stomp.read_frame(lend)
            if f is None:
                break
            if f.command == "MESSAGE":
                seq = parse_seq(f.body)
                if seq is None or seq >= n:
                    foreign += 1
                else:
                    dups += 1
        stomp.send(frame_bytes("UNSUBSCRIBE", {"id": "s1", "receipt": "unsub"}, None))
        rend = now() + args.cli_timeout
        while True:
            f = stomp.read_frame(rend)
            if f is None or (f.command == "RECEIPT" and f.headers.get("receipt-id") == "unsub"):
                break
    finally:
        stomp.close()
    r["first_msg_ms"] = (first - t0) * 1000 if first is not None else None
    r["drain_s"] = (last - t_sub) if last is not None else None
    r["msg_per_s"] = n / r["drain_s"] if n and r["drain_s"] else None
    r["received"] = distinct
    r["lost"] = n - distinct
    r["duplicates"] = dups
    r["foreign"] = foreign
    r["redelivered"] = redelivered
    return r


def parse_seq(body):
    if body[:4] != b"seq=":
        return None
    try:
        return int(body[4:14])
    except ValueError:
        return None


def trial(args, build, backend, n, rep, workdir, ports, counter):
    tag = f"{os.getpid()}-{counter}"
    cluster = f"bench-takeover-{tag}"
    qname = f"bench.takeover.{tag}"
    dest = "/queue/" + qname
    label = f"{backend['name']} {build['name']} N={n} #{rep + 1}"
    tdir = os.path.join(workdir, tag)
    os.makedirs(tdir)
    if backend["name"] == "sqlite":
        uri = f"sqlite://{tdir}/store.db" + (f"?{args.sqlite_opts}" if args.sqlite_opts else "")
    else:
        uri = backend["uri"]
    if args.uri_opts:
        for kv in args.uri_opts.split("&"):
            k, _, v = kv.partition("=")
            uri = with_option(uri, k, v)
    uri = with_option(uri, "cluster", cluster)
    extra = shlex.split(args.broker_args)
    res = {"backend": backend["name"], "build": build["name"], "size": n, "repeat": rep + 1,
           "cluster": cluster, "queue": dest, "uri": mask(uri), "error": None}
    master = Broker(build["broker"], "master", uri, free_port(ports), extra, tdir)
    standby = Broker(build["broker"], "standby", uri, free_port(ports), extra, tdir)
    sampler = None
    db = backend["name"] != "sqlite"
    try:
        if db and args.analyze != "none":
            res["vacuum_before_s"] = vacuum(args, build["mqstore"], uri)
        master.start()
        c = master.wait_connect(args.start_timeout)
        standby.start()
        standby.wait_standby(args.start_timeout)
        if n:
            res["fill_s"] = fill(args, c, dest, n, label)
            log(f"{label}: filled {n} in {res['fill_s']:.1f} s "
                f"({n / res['fill_s']:.0f} msg/s)")
        c.close()
        if db and n and args.analyze == "after-fill":
            res["vacuum_after_s"] = vacuum(args, build["mqstore"], uri)
        res["stored"] = store_pending(args, build["mqstore"], uri, qname) if n else 0
        if res["stored"] is not None and res["stored"] != n:
            raise BenchError(f"the store holds {res['stored']} messages of {dest} after the "
                             f"fill, expected {n}")
        st = proc_status(master.pid) or {}
        res["master_rss_kb"] = st.get("VmRSS")
        res["master_hwm_kb"] = st.get("VmHWM")
        time.sleep(args.settle)
        sampler = RssSampler(standby.pid, args.rss_ms / 1000.0)
        sampler.start()
        t0 = now()
        os.kill(master.pid, signal.SIGKILL)
        master.proc.wait(timeout=30)
        res.update(takeover_and_drain(args, standby, n, dest, t0, sampler))
        sampler.stop()
        res["peak_rss_kb"] = sampler.hwm
        res["max_rss_sampled_kb"] = sampler.max_rss
        m = MASTER_RE.search(standby.log_text())
        if m:
            res["log_recovered"] = int(m.group(2))
            res["log_recover_ms"] = int(m.group(3))
        left = store_pending(args, build["mqstore"], uri, qname)
        if args.ack != "auto" and left:
            # ACKs commit asynchronously; give them a moment.
            end = now() + 5
            while left and now() < end:
                time.sleep(0.2)
                left = store_pending(args, build["mqstore"], uri, qname)
        res["left"] = left
        log(f"{label}: takeover {fmt(res['takeover_ms'], 1)} ms, first message "
            f"{fmt(res['first_msg_ms'], 1)} ms, drain {fmt(res['drain_s'], 2)} s "
            f"({fmt(res['msg_per_s'], 0)} msg/s), peak RSS {res['peak_rss_kb'] / 1024:.1f} MB, "
            f"lost {res['lost']}, duplicates {res['duplicates']}, left {left}")
    except BenchError as e:
        res["error"] = str(e)
        log(f"{label}: FAILED: {e}")
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        master.kill()
        standby.kill()
        if db:
            cleanup_pg(args, build["mqstore"], uri, qname, res)
        if not args.keep:
            shutil.rmtree(tdir, ignore_errors=True)
    return res


def vacuum(args, mqstore, uri):
    """`mqstore vacuum URI`; its duration in s, or None if it failed."""
    if not mqstore:
        return None
    t = now()
    try:
        r = subprocess.run([mqstore, "vacuum", uri], capture_output=True, text=True,
                           timeout=args.cli_timeout)
    except subprocess.TimeoutExpired:
        log(f"mqstore vacuum timed out after {args.cli_timeout} s")
        return None
    if r.returncode:
        log(f"mqstore vacuum failed: {r.stderr.strip()[:200]}")
        return None
    return now() - t


def cleanup_pg(args, mqstore, uri, qname, res):
    """Purge what a failed trial left in a shared database."""
    if not mqstore:
        return
    cmds = []
    if res.get("error") or res.get("left"):
        cmds.append([mqstore, "purge", uri, "--queue", qname, "--yes"])
    for cmd in cmds:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.cli_timeout)
            if r.returncode:
                log(f"{cmd[1]} failed: {r.stderr.strip()[:200]}")
        except subprocess.TimeoutExpired:
            log(f"mqstore {cmd[1]} timed out after {args.cli_timeout} s")


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------
def fmt(x, d):
    return "-" if x is None else f"{x:.{d}f}"


def stat(vals, d, scale=1.0):
    vals = [v * scale for v in vals if v is not None]
    if not vals:
        return "-", None
    med = statistics.median(vals)
    if len(vals) == 1:
        return fmt(med, d), med
    return f"{fmt(med, d)} ({fmt(min(vals), d)}..{fmt(max(vals), d)})", med


def summarize(results, backends, builds, sizes):
    rows = []
    for be in backends:
        for b in builds:
            for n in sizes:
                rs = [r for r in results if r["backend"] == be["name"] and
                      r["build"] == b["name"] and r["size"] == n]
                if not rs:
                    continue
                ok = [r for r in rs if not r["error"]]
                row = {"backend": be["name"], "build": b["name"], "size": n,
                       "trials": len(rs), "failed": len(rs) - len(ok)}
                cells = {}
                for key, col, d, scale in (
                        ("takeover_ms", "takeover ms", 1, 1),
                        ("first_msg_ms", "first msg ms", 1, 1),
                        ("drain_s", "drain s", 2, 1),
                        ("msg_per_s", "msg/s", 0, 1),
                        ("peak_rss_kb", "peak RSS MB", 1, 1 / 1024),
                        ("rss_connected_kb", "RSS at CONNECTED MB", 1, 1 / 1024)):
                    cells[col], row[key + "_median"] = stat([r.get(key) for r in ok], d, scale)
                    vals = [r.get(key) for r in ok if r.get(key) is not None]
                    row[key + "_min"] = min(vals) * scale if vals else None
                    row[key + "_max"] = max(vals) * scale if vals else None
                for key in ("lost", "duplicates", "left"):
                    vals = [r.get(key) for r in ok]
                    row[key] = None if None in vals else sum(vals)
                row["cells"] = cells
                rows.append(row)
    return rows


COLS = ["takeover ms", "first msg ms", "drain s", "msg/s", "peak RSS MB",
        "RSS at CONNECTED MB"]


def dash(x):
    return "-" if x is None else str(x)


def table(rows, args):
    out = [f"Broker takeover (kill -9 of the master), {args.size}-byte messages, "
           f"median (min..max) of {args.repeats} repeat(s); ack {args.ack}, prefetch "
           f"{args.prefetch}{', mixed priorities' if args.mixed_priorities else ''}"
           f"{'; database backends: --analyze ' + args.analyze if any(b['uri'] for b in args.backends) else ''}"
           ".", "",
           "| backend | build | backlog | " + " | ".join(COLS) +
           " | lost | dup | left | failed |",
           "|---|---|---:|" + "---:|" * len(COLS) + "---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['backend']} | {r['build']} | {r['size']:,} | " +
                   " | ".join(r["cells"][c] for c in COLS) +
                   f" | {dash(r['lost'])} | {dash(r['duplicates'])} | {dash(r['left'])} | "
                   f"{r['failed']}/{r['trials']} |")
    return "\n".join(out) + "\n"


def plot(rows, out_dir):
    if not shutil.which("gnuplot"):
        log("gnuplot not found: no results.png")
        return
    series = []
    for key in sorted({(r["build"], r["backend"]) for r in rows}):
        pts = sorted((r for r in rows if (r["build"], r["backend"]) == key),
                     key=lambda r: r["size"])
        fn = os.path.join(out_dir, f"plot-{key[0]}-{key[1]}.dat".replace("/", "_"))
        with open(fn, "w") as f:
            f.write("# x size takeover_med min max first_med min max peakrss_med min max\n")
            for r in pts:
                vals = []
                for k in ("takeover_ms", "first_msg_ms", "peak_rss_kb"):
                    vals += [r[k + "_median"], r[k + "_min"], r[k + "_max"]]
                f.write(f"{max(r['size'], 1)} {r['size']} " +
                        " ".join("NaN" if v is None else f"{v:.3f}" for v in vals) + "\n")
        series.append((f"{key[0]} {key[1]}", fn))
    sizes = sorted({r["size"] for r in rows})
    tics = ", ".join(f'"{s:,}" {max(s, 1)}' for s in sizes)
    panels = [("takeover: kill -9 -> CONNECTED (ms, log)", 3, True),
              ("first delivery: kill -9 -> first MESSAGE (ms, log)", 6, True),
              ("peak RSS (VmHWM) of the new master (MB)", 9, False)]
    g = [f'set terminal pngcairo size 1500,480 font "sans,9"',
         f'set output "{os.path.join(out_dir, "results.png")}"',
         "set multiplot layout 1,3", "set logscale x", f"set xtics ({tics})",
         "set grid", "set key top left", 'set xlabel "backlog (messages)"',
         "set offsets graph 0.05, graph 0.05, 0, 0"]
    for title, col, logy in panels:
        g.append(f'set title "{title}"')
        g.append("set logscale y" if logy else "unset logscale y")
        g.append("set yrange [*:*]" if logy else "set yrange [0:*]")
        parts = []
        for i, (name, fn) in enumerate(series):
            c = i + 1
            parts.append(f'"{fn}" using 1:{col}:{col + 1}:{col + 2} with yerrorbars '
                         f'lc {c} pt 7 notitle')
            parts.append(f'"{fn}" using 1:{col} with lines lc {c} lw 2 title "{name}"')
        g.append("plot " + ", ".join(parts))
    g.append("unset multiplot")
    r = subprocess.run(["gnuplot"], input="\n".join(g) + "\n", text=True,
                       capture_output=True, timeout=60)
    if r.returncode:
        log(f"gnuplot failed: {r.stderr.strip()[:300]}")


# ---------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="broker-takeover.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__,
        epilog="example:\n  /usr/bin/python3 bench/broker-takeover.py "
               "--build before=/tmp/wt-before/build --build after=build \\\n"
               "      --sizes 0,10000,100000 --repeats 3 "
               "postgresql://mqs:mqs-secret@127.0.0.1:55460/mqstore")
    p.add_argument("uris", nargs="*", metavar="URI",
                   help="more store backends (postgresql://, mysql://), each trial on a "
                        "fresh cluster name and queue of that database (SQLite always runs "
                        "on a fresh file per trial unless --no-sqlite)")
    p.add_argument("--build", action="append", metavar="NAME=DIR",
                   help="a build tree with bin/mqbroker and bin/mqstore, repeatable "
                        "(default: build=build)")
    p.add_argument("--no-sqlite", action="store_true", help="skip the SQLite backend")
    p.add_argument("--sqlite-opts", default="",
                   help="query options of the SQLite URI, e.g. synchronous=normal "
                        "(default: none)")
    p.add_argument("--uri-opts", default="",
                   help="store options added to every URI, e.g. lease_ms=3000&poll_ms=100 "
                        "(default: none)")
    p.add_argument("--sizes", default="0,10000,100000",
                   help="backlog sizes, comma-separated (default %(default)s)")
    p.add_argument("--size", type=int, default=1024,
                   help="message body bytes (default %(default)s; at least 15)")
    p.add_argument("--repeats", type=int, default=3, help="trials per point (default 3)")
    p.add_argument("--mixed-priorities", action="store_true",
                   help="one message in ten gets a random priority 0..9 (default: all 4)")
    p.add_argument("--ack", choices=["client-individual", "client", "auto"],
                   default="client-individual",
                   help="ack mode of the draining subscription (default %(default)s; "
                        "client acks each message by its own ack id too)")
    p.add_argument("--prefetch", type=int, default=1000,
                   help="activemq.prefetchSize of the subscription (0: leave it out, "
                        "the broker's --prefetch) (default %(default)s)")
    p.add_argument("--receipt-every", type=int, default=100,
                   help="fill: a RECEIPT every K messages (default %(default)s)")
    p.add_argument("--fill-window", type=int, default=2000,
                   help="fill: messages sent but not yet confirmed, at most "
                        "(default %(default)s)")
    p.add_argument("--broker-args", default="--max-dest-bytes 8g --max-memory 8g",
                   help="extra mqbroker arguments for both brokers; the default lets a "
                        "1M x 1 KiB backlog sit in one queue without pausing the filler "
                        "(default: %(default)s)")
    p.add_argument("--poll-ms", type=float, default=5,
                   help="CONNECT retry interval while the standby's port is closed "
                        "(default %(default)s)")
    p.add_argument("--rss-ms", type=float, default=20,
                   help="RSS sampling interval of the new master (default %(default)s)")
    p.add_argument("--settle", type=float, default=0.5,
                   help="seconds between the end of the fill and the kill (default "
                        "%(default)s)")
    p.add_argument("--linger", type=float, default=0.5,
                   help="seconds to wait for duplicates after the last message "
                        "(default %(default)s)")
    p.add_argument("--start-timeout", type=float, default=60,
                   help="seconds for a broker to start as master or standby (default "
                        "%(default)s)")
    p.add_argument("--fill-timeout", type=float, default=1800,
                   help="seconds for one fill (default %(default)s)")
    p.add_argument("--takeover-timeout", type=float, default=600,
                   help="seconds from the kill to CONNECTED (default %(default)s)")
    p.add_argument("--drain-timeout", type=float, default=120,
                   help="seconds without a message before the drain gives up, also the "
                        "wait for the first one (default %(default)s)")
    p.add_argument("--cli-timeout", type=float, default=300,
                   help="seconds for an mqstore stats/purge/vacuum call (default "
                        "%(default)s)")
    p.add_argument("--analyze", choices=["after-fill", "before-fill", "none"],
                   default="after-fill",
                   help="database backends: when each trial runs `mqstore vacuum` (VACUUM "
                        "ANALYZE on PostgreSQL; not timed): before-fill = on the store "
                        "without the backlog (no dead rows of earlier trials; the "
                        "planner's statistics know nothing of the backlog), after-fill = "
                        "before the fill and again once the backlog is stored (the "
                        "statistics describe it), none = never (statistics from "
                        "autovacuum, whenever it ran) (default %(default)s)")
    p.add_argument("--out", help="output directory (default /tmp/mqstore-takeover-"
                                 "DATE-PID)")
    p.add_argument("--tmp", default=None,
                   help="parent of the temporary work dir (SQLite files, broker logs) "
                        "(default $TMPDIR or /tmp)")
    p.add_argument("--keep", action="store_true",
                   help="keep every trial's work dir (logs, SQLite file)")
    args = p.parse_args(argv)

    def bad(msg):
        p.error(msg)

    try:
        args.sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        bad(f"--sizes: not a list of numbers: {args.sizes!r}")
    if not args.sizes or any(s < 0 for s in args.sizes):
        bad("--sizes: want non-negative numbers")
    if args.size < 15:
        bad("--size must be at least 15 (the sequence number prefix)")
    if args.repeats < 1:
        bad("--repeats must be at least 1")
    builds = []
    for spec in args.build or ["build=build"]:
        name, sep, d = spec.partition("=")
        if not sep:
            name, d = os.path.basename(os.path.normpath(spec)), spec
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            bad(f"--build {spec!r}: NAME may hold letters, digits, . _ -")
        if name in [b["name"] for b in builds]:
            bad(f"--build: name {name!r} given twice")
        d = os.path.abspath(d)
        broker = next((x for x in (os.path.join(d, "bin", "mqbroker"),
                                   os.path.join(d, "mqbroker")) if os.access(x, os.X_OK)),
                      None)
        if not broker:
            bad(f"--build {spec!r}: no executable bin/mqbroker in {d}")
        mq = os.path.join(os.path.dirname(broker), "mqstore")
        builds.append({"name": name, "dir": d, "broker": broker,
                       "mqstore": mq if os.access(mq, os.X_OK) else None})
    args.builds = builds
    backends = [] if args.no_sqlite else [{"name": "sqlite", "uri": None}]
    for u in args.uris:
        scheme = u.split(":", 1)[0]
        if scheme == "sqlite":
            bad("SQLite runs on a fresh file per trial: use --sqlite-opts, not a URI")
        name = {"postgres": "postgresql", "mariadb": "mysql"}.get(scheme, scheme)
        k = 2
        base = name
        while name in [b["name"] for b in backends]:
            name, k = f"{base}{k}", k + 1
        backends.append({"name": name, "uri": u})
    if not backends:
        bad("no backend: give a URI or drop --no-sqlite")
    args.backends = backends
    return args


def main(argv):
    args = parse_args(argv)
    out = args.out or os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                   time.strftime("mqstore-takeover-%Y%m%d-%H%M%S-")
                                   + str(os.getpid()))
    os.makedirs(out, exist_ok=True)
    out = os.path.abspath(out)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    workdir = tempfile.mkdtemp(prefix="mqs-broker-takeover.", dir=args.tmp)
    results = []
    ports = set()
    started = time.time()
    total = len(args.backends) * len(args.sizes) * args.repeats * len(args.builds)
    log(f"{total} trials; builds "
        + ", ".join(f"{b['name']}={b['dir']}" for b in args.builds)
        + "; backends " + ", ".join(b["name"] if not b["uri"] else f"{b['name']} "
                                    f"({mask(b['uri'])})" for b in args.backends)
        + f"; work dir {workdir}; output {out}")
    for b in args.builds:
        if not b["mqstore"]:
            log(f"warning: no mqstore CLI beside {b['broker']}: store counts not checked")
    interrupted = False
    try:
        k = 0
        for be in args.backends:
            for n in args.sizes:
                for rep in range(args.repeats):
                    order = args.builds if rep % 2 == 0 else list(reversed(args.builds))
                    for b in order:
                        k += 1
                        log(f"trial {k}/{total}: {be['name']} {b['name']} backlog {n} "
                            f"repeat {rep + 1}")
                        results.append(trial(args, b, be, n, rep, workdir, ports, k))
    except KeyboardInterrupt as e:
        interrupted = True
        log(f"interrupted ({e or 'SIGINT'}): reporting what ran")
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"work dir kept: {workdir}")
    rows = summarize(results, args.backends, args.builds, args.sizes)
    md = table(rows, args)
    errors = [f"- {r['backend']} {r['build']} N={r['size']} #{r['repeat']}: "
              f"{r['error'].splitlines()[0]}" for r in results if r["error"]]
    if errors:
        md += "\nFailed trials:\n" + "\n".join(errors) + "\n"
    print(md, flush=True)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"config": {k: v for k, v in vars(args).items()
                              if k not in ("uris", "build", "backends")} |
                   {"backends": [{"name": b["name"], "uri": mask(b["uri"] or "sqlite:fresh")}
                                 for b in args.backends]},
                   "host": {"node": platform.node(), "cpus": os.cpu_count(),
                            "kernel": platform.release()},
                   "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                   "seconds": round(time.time() - started, 1),
                   "interrupted": interrupted,
                   "summary": [{k: v for k, v in r.items() if k != "cells"} for r in rows],
                   "trials": results}, f, indent=2)
    if rows:
        plot(rows, out)
    log(f"results: {out}/results.md, results.json, results.png")
    bad = interrupted or any(r["error"] or r.get("lost") or r.get("duplicates")
                             for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
