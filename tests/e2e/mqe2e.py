"""mqe2e - helpers for mqbroker end-to-end tests.

Each test script is run as

    /usr/bin/python3 tests/e2e/test_x.py --broker PATH --store-uri URI

and exits 0 (pass), 1 (fail, with the reason on stderr) or 2 (bad usage).
The helpers here start and kill brokers as subprocesses with their own ports
and log files, wait for them to become master or standby, and speak STOMP
1.2 over a plain socket (StompClient) so a test controls every frame, every
receipt and every timestamp. Python 3.11 stdlib only.

Brokers log at --log-level info; set MQE2E_LOG_LEVEL=debug to change it.

Store URIs: "@TMP@" in the URI is replaced by the test's private temporary
directory (so "sqlite:///@TMP@/store.db" is a fresh file per test), and a
unique "cluster=" option is appended so tests sharing one PostgreSQL or
MariaDB database never share an HA lock. Destination names carry the same
unique run id, so tests never see each other's messages.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

DEFAULT_TIMEOUT = 20.0


class TestFailure(Exception):
    """An assertion of the test failed; the message says what and why."""


def fail(msg):
    raise TestFailure(msg)


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_state(port, host="127.0.0.1", timeout=0.5):
    """'open', 'refused' or 'timeout' (SYN not answered)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except (socket.timeout, TimeoutError):
        return "timeout"
    except OSError as e:
        return f"error: {e}"


def with_option(uri, key, value):
    """uri with ?key=value (or &key=value) set, replacing an existing one."""
    pat = re.compile(rf"([?&]){re.escape(key)}=[^&]*")
    if pat.search(uri):
        return pat.sub(lambda m: f"{m.group(1)}{key}={value}", uri, count=1)
    sep = "&" if "?" in uri else "?"
    return f"{uri}{sep}{key}={value}"


def mask_uri(uri):
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", uri)


# ---------------------------------------------------------------------------
# STOMP 1.2 over a socket
# ---------------------------------------------------------------------------
class ConnectionClosed(Exception):
    """The broker closed the connection (or it was reset)."""


class StompErrorFrame(Exception):
    """The broker answered with an ERROR frame."""

    def __init__(self, frame):
        self.frame = frame
        super().__init__(
            f"ERROR frame: message={frame.headers.get('message')!r} "
            f"body={frame.body[:200]!r}"
        )


class Frame:
    def __init__(self, command, headers, body=b""):
        self.command = command
        self.headers = headers
        self.body = body

    def __repr__(self):
        return f"<{self.command} {self.headers} {self.body[:60]!r}>"

    @property
    def redelivered(self):
        return self.headers.get("redelivered") == "true"


def _escape(s):
    return (
        s.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace(":", "\\c")
    )


def _unescape(s):
    out = []
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            out.append({"n": "\n", "r": "\r", "c": ":", "\\": "\\"}.get(nxt, nxt))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def encode_frame(command, headers=None, body=b"", content_length=True):
    if isinstance(body, str):
        body = body.encode()
    esc = command not in ("CONNECT", "STOMP")
    lines = [command]
    for k, v in (headers or {}).items():
        k, v = str(k), str(v)
        lines.append(f"{_escape(k)}:{_escape(v)}" if esc else f"{k}:{v}")
    if content_length and body is not None:
        lines.append(f"content-length:{len(body)}")
    return ("\n".join(lines) + "\n\n").encode() + body + b"\0"


def broker_env():
    """The environment for a broker. Under AddressSanitizer freed memory is
    held in a quarantine (256 MB by default) that counts in RSS: the tests
    that bound the broker's RSS (memory, paging) would measure ASan. A small
    quarantine keeps use-after-free detection for recent frees; a build
    without ASan ignores the variable."""
    env = dict(os.environ)
    opts = env.get("ASAN_OPTIONS", "")
    if "quarantine_size_mb" not in opts:
        env["ASAN_OPTIONS"] = (opts + ":" if opts else "") + \
            "quarantine_size_mb=16:thread_local_quarantine_size_kb=256"
    return env


class StompClient:
    """A synchronous STOMP 1.2 client: every call blocks with a timeout.

    Frames that arrive while waiting for a RECEIPT (e.g. MESSAGEs) are kept
    in order and returned by recv()."""

    def __init__(self, port, host="127.0.0.1", timeout=DEFAULT_TIMEOUT, name="client"):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.name = name
        self.sock = None
        self.buf = b""
        self.pending = []
        self.receipt_n = 0
        self.closed = False

    # -- transport --------------------------------------------------------
    def open(self):
        self.sock = socket.create_connection((self.host, self.port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    def close(self):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.closed = True

    def send_raw(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ConnectionClosed(f"{self.name}: write failed: {e}") from e

    def send_frame(self, command, headers=None, body=b""):
        self.send_raw(encode_frame(command, headers, body))

    def _parse(self):
        """Cut one frame off self.buf, or return None if incomplete."""
        buf = self.buf.lstrip(b"\r\n")  # heart-beats
        self.buf = buf
        m = re.search(rb"\r?\n\r?\n", buf)
        if not m:
            return None
        head = buf[: m.start()].decode("utf-8", "replace")
        lines = [ln.rstrip("\r") for ln in head.split("\n")]
        command = lines[0]
        headers = {}
        for ln in lines[1:]:
            k, sep, v = ln.partition(":")
            if not sep:
                continue
            if command != "CONNECTED":
                k, v = _unescape(k), _unescape(v)
            headers.setdefault(k, v)  # 1.2: the first occurrence wins
        start = m.end()
        if "content-length" in headers:
            n = int(headers["content-length"])
            if len(buf) < start + n + 1:
                return None
            body = buf[start : start + n]
            if buf[start + n : start + n + 1] != b"\0":
                raise ConnectionClosed(f"{self.name}: frame body not NUL-terminated")
            self.buf = buf[start + n + 1 :]
        else:
            j = buf.find(b"\0", start)
            if j < 0:
                return None
            body = buf[start:j]
            self.buf = buf[j + 1 :]
        return Frame(command, headers, body)

    def _read_frame(self, timeout):
        """Next frame from the socket; None on timeout; ConnectionClosed."""
        deadline = time.monotonic() + timeout
        while True:
            f = self._parse()
            if f:
                return f
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            if self.sock is None:
                raise ConnectionClosed(f"{self.name}: not connected")
            self.sock.settimeout(min(left, 1.0))
            try:
                data = self.sock.recv(262144)
            except (socket.timeout, TimeoutError):
                continue
            except (ConnectionResetError, ConnectionAbortedError) as e:
                self.closed = True
                raise ConnectionClosed(f"{self.name}: connection reset: {e}") from e
            if not data:
                self.closed = True
                raise ConnectionClosed(f"{self.name}: connection closed by the broker")
            self.buf += data

    def recv(self, timeout=None):
        """Next frame (a buffered one first); None on timeout."""
        if self.pending:
            return self.pending.pop(0)
        return self._read_frame(self.timeout if timeout is None else timeout)

    def wait_closed(self, timeout=5.0):
        """Read until the broker closes; return the frames seen. Fails if the
        connection is still open after timeout."""
        frames = list(self.pending)
        self.pending = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                fail(f"{self.name}: the broker did not close the connection within "
                     f"{timeout:.0f} s (frames seen: {[f.command for f in frames]})")
            try:
                f = self._read_frame(left)
            except ConnectionClosed:
                return frames
            if f:
                frames.append(f)

    # -- STOMP -------------------------------------------------------------
    def connect(self, headers=None, expect_ok=True):
        if self.sock is None:
            self.open()
        h = {"accept-version": "1.2", "host": "localhost", "heart-beat": "0,0"}
        h.update(headers or {})
        self.send_frame("CONNECT", h)
        f = self._read_frame(self.timeout)
        if f is None:
            fail(f"{self.name}: no answer to CONNECT within {self.timeout:.0f} s "
                 f"(port {self.port})")
        if expect_ok:
            if f.command == "ERROR":
                raise StompErrorFrame(f)
            check(f.command == "CONNECTED",
                  f"{self.name}: expected CONNECTED, got {f!r}")
            check(f.headers.get("version") == "1.2",
                  f"{self.name}: CONNECTED has version {f.headers.get('version')!r}, "
                  f"wanted 1.2")
        return f

    def next_receipt_id(self, prefix="r"):
        self.receipt_n += 1
        return f"{prefix}{self.receipt_n}"

    def wait_receipt(self, rid, what, timeout=None):
        """Wait for RECEIPT receipt-id:rid; other frames are kept for recv().
        An ERROR frame raises StompErrorFrame."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                fail(f"{self.name}: no RECEIPT for {what} (receipt {rid}) within "
                     f"{timeout:.0f} s")
            f = self._read_frame(left)
            if f is None:
                continue
            if f.command == "RECEIPT" and f.headers.get("receipt-id") == rid:
                return f
            if f.command == "ERROR":
                raise StompErrorFrame(f)
            self.pending.append(f)

    def request(self, command, headers, body=b"", what=None, receipt=True, timeout=None):
        headers = dict(headers)
        if receipt:
            rid = self.next_receipt_id()
            headers["receipt"] = rid
        self.send_frame(command, headers, body)
        if receipt:
            return self.wait_receipt(rid, what or command, timeout)
        return None

    def send(self, dest, body, headers=None, receipt=True, persistent=True, tx=None,
             timeout=None):
        h = {"destination": dest}
        if persistent:
            h["persistent"] = "true"
        if tx:
            h["transaction"] = tx
        h.update(headers or {})
        return self.request("SEND", h, body, f"SEND to {dest}", receipt, timeout)

    def subscribe(self, dest, sub_id="s1", ack="client-individual", headers=None,
                  receipt=True):
        h = {"destination": dest, "id": sub_id, "ack": ack}
        h.update(headers or {})
        return self.request("SUBSCRIBE", h, what=f"SUBSCRIBE to {dest}", receipt=receipt)

    def unsubscribe(self, sub_id="s1", headers=None, receipt=True):
        h = {"id": sub_id}
        h.update(headers or {})
        return self.request("UNSUBSCRIBE", h, what="UNSUBSCRIBE", receipt=receipt)

    def ack(self, msg, receipt=True, tx=None, command="ACK"):
        ack_id = msg.headers.get("ack")
        check(ack_id is not None, f"{self.name}: MESSAGE without an ack header: {msg!r}")
        h = {"id": ack_id}
        if tx:
            h["transaction"] = tx
        return self.request(command, h, what=f"{command} {ack_id}", receipt=receipt)

    def nack(self, msg, receipt=True, tx=None):
        return self.ack(msg, receipt, tx, command="NACK")

    def begin(self, tx, receipt=True):
        return self.request("BEGIN", {"transaction": tx}, what=f"BEGIN {tx}", receipt=receipt)

    def commit(self, tx, receipt=True):
        return self.request("COMMIT", {"transaction": tx}, what=f"COMMIT {tx}",
                            receipt=receipt)

    def abort(self, tx, receipt=True):
        return self.request("ABORT", {"transaction": tx}, what=f"ABORT {tx}", receipt=receipt)

    def disconnect(self):
        """Polite DISCONNECT with receipt, then close. Errors are ignored."""
        try:
            if self.sock is not None and not self.closed:
                self.request("DISCONNECT", {}, what="DISCONNECT", timeout=5)
        except (TestFailure, ConnectionClosed, StompErrorFrame, OSError):
            pass
        self.close()

    def recv_message(self, timeout=None):
        """Next MESSAGE (None on timeout). An ERROR raises StompErrorFrame;
        stray RECEIPTs are skipped."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 and not self.pending:
                return None
            f = self.recv(max(left, 0))
            if f is None:
                return None
            if f.command == "MESSAGE":
                return f
            if f.command == "ERROR":
                raise StompErrorFrame(f)

    def drain(self, quiet=1.0, max_total=30.0, limit=None):
        """Collect MESSAGEs until none arrives for `quiet` seconds, `limit`
        were collected, or `max_total` seconds passed."""
        out = []
        end = time.monotonic() + max_total
        while time.monotonic() < end and (limit is None or len(out) < limit):
            m = self.recv_message(min(quiet, max(end - time.monotonic(), 0.01)))
            if m is None:
                break
            out.append(m)
        return out


def read_until(sock, needle, timeout=5.0):
    """Bytes read from a raw socket until needle appears, EOF, an error or
    timeout seconds; returns what was read."""
    sock.settimeout(timeout)
    data, end = b"", time.monotonic() + timeout
    try:
        while needle not in data and time.monotonic() < end:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def raw_connect(port, name="raw", heartbeat="0,0", timeout=5.0):
    """A bare socket after its CONNECTED: for many idle clients, abuse that
    a client object would not send, and probes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(encode_frame("CONNECT", {"accept-version": "1.2", "host": "localhost",
                                       "heart-beat": heartbeat}))
    d = read_until(s, b"\0", timeout=timeout)
    check(d.startswith(b"CONNECTED"), f"{name}: {d[:100]!r}")
    return s


def probe_round_trip(port, timeout=10.0):
    """A new connection, its CONNECT, and a SEND without destination: the ms
    until that SEND's ERROR came, and the reply. Measures how long the
    broker's loop keeps a client waiting."""
    t0 = time.monotonic()
    s = raw_connect(port, "probe", timeout=timeout)
    try:
        s.sendall(encode_frame("SEND", {"persistent": "true"}, b"no destination"))
        reply = read_until(s, b"\0", timeout=timeout)
    finally:
        s.close()
    return (time.monotonic() - t0) * 1000, reply


def proc_mem_mb(pid):
    """(VmRSS, VmHWM) of a process in MB."""
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                vals[k] = int(v.split()[0]) / 1024.0
    return vals.get("VmRSS", 0.0), vals.get("VmHWM", 0.0)


def collect(c, n, label, timeout=20.0, ack=False, quiet=1.0):
    """Exactly n messages (then `quiet` s of silence); with ack each of the
    n is acked without a receipt."""
    out = []
    end = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        m = c.recv_message(timeout=max(end - time.monotonic(), 0.05))
        if m is None:
            break
        out.append(m)
        if ack:
            c.ack(m, receipt=False)
    out += c.drain(quiet=quiet, max_total=5)
    check(len(out) == n, f"{label}: received {len(out)} messages, expected {n}")
    return out


def connect_client(port, name, headers=None, timeout=DEFAULT_TIMEOUT):
    c = StompClient(port, name=name, timeout=timeout)
    try:
        c.open()
    except OSError as e:
        fail(f"{name}: cannot connect to 127.0.0.1:{port}: {e}")
    c.connect(headers)
    return c


# ---------------------------------------------------------------------------
# Brokers as subprocesses
# ---------------------------------------------------------------------------
# "recovered Q queues and S durable subscriptions in T ms (...)": messages
# are paged from the store, so the count is of destinations.
MASTER_RE = re.compile(
    r"master \(token (\d+)\): recovered (\d+) queues? and (\d+) durable "
    r"subscriptions? in (\d+) ms .*?listening on (\S+)"
)
WAITING_RE = re.compile(r"waiting for the store lock \(cluster ([^)]*)\)")


class Broker:
    """One mqbroker process. Its stdout and stderr go to a log file; each
    (re)start appends to it, and waits only look at the text of the current
    run."""

    def __init__(self, env, name, port, extra_args=(), store_uri=None, cluster=None):
        self.env = env
        self.name = name
        self.port = port
        self.extra_args = list(extra_args)
        # A broker of its own store (bridge tests run several stores at once);
        # default: the test's store, shared by a master/standby pair.
        self.store_uri = store_uri or env.store_uri
        self.cluster = cluster or env.cluster
        self.log_path = os.path.join(env.workdir, f"{name}.log")
        self.proc = None
        self.log_offset = 0
        self.starts = 0

    def argv(self):
        return [
            self.env.broker_path,
            "--store", self.store_uri,
            "--listen", f"127.0.0.1:{self.port}",
            "--log-level", os.environ.get("MQE2E_LOG_LEVEL", "info"),
        ] + self.extra_args

    def start(self):
        check(self.proc is None or self.proc.poll() is not None,
              f"{self.name}: start() while it is still running")
        self.starts += 1
        with open(self.log_path, "ab") as lf:
            self.log_offset = lf.tell()
            lf.write(f"==== e2e: start #{self.starts} of {self.name} on port {self.port}"
                     f" ====\n".encode())
            # Flushed before the child writes to the same file: else the
            # marker lands after the broker's first lines and log_offset
            # (counted as if it were written) skips them.
            lf.flush()
            self.log_offset = lf.tell()
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                start_new_session=True, env=broker_env(),
            )
        self.started_at = time.monotonic()
        log(f"{self.name}: started pid {self.proc.pid} on port {self.port}")
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, whole=False):
        try:
            with open(self.log_path, "rb") as f:
                if not whole:
                    f.seek(self.log_offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=25):
        lines = self.log_text(whole=True).splitlines()
        return "\n".join(f"    {self.name}| {ln}" for ln in lines[-n:])

    def _died(self, what):
        fail(f"{self.name} exited with status {self.proc.returncode} while {what}; "
             f"log {self.log_path}:\n{self.log_tail()}")

    def wait_master(self, timeout=DEFAULT_TIMEOUT):
        """Wait for the "master (token N): recovered Q queues and S durable
        subscriptions in T ms (...), listening on ..." line and an open port.
        Returns a dict with token, recovered (Q + S), queues, subs,
        recover_ms and at (monotonic time the port was seen open)."""
        deadline = time.monotonic() + timeout
        info = None
        while time.monotonic() < deadline:
            if not self.alive():
                self._died("waiting for it to become master")
            if info is None:
                m = MASTER_RE.search(self.log_text())
                if m:
                    info = {"token": int(m.group(1)),
                            "recovered": int(m.group(2)) + int(m.group(3)),
                            "queues": int(m.group(2)), "subs": int(m.group(3)),
                            "recover_ms": int(m.group(4)), "listen": m.group(5)}
            st = port_state(self.port, timeout=0.2)
            if info and st == "open":
                info["at"] = time.monotonic()
                return info
            time.sleep(0.01)
        st = port_state(self.port)
        fail(f"{self.name} did not become master within {timeout:.0f} s "
             f"(log line 'master (token N): recovered Q queues and S durable "
             f"subscriptions in T ms (...), listening on ...' {'seen' if info else 'NOT seen'}; port {self.port} {st}); log:\n"
             f"{self.log_tail()}")

    def wait_standby(self, timeout=DEFAULT_TIMEOUT, hold=1.0):
        """Wait for "waiting for the store lock (cluster C)" with the test's
        cluster, then check the port stays closed for `hold` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                self._died("waiting for it to report standby")
            m = WAITING_RE.search(self.log_text())
            if m:
                check(m.group(1) == self.cluster,
                      f"{self.name}: waits for cluster {m.group(1)!r}, expected "
                      f"{self.cluster!r}")
                break
            if time.monotonic() > deadline:
                fail(f"{self.name} did not log 'waiting for the store lock (cluster "
                     f"{self.cluster})' within {timeout:.0f} s; log:\n{self.log_tail()}")
            time.sleep(0.02)
        end = time.monotonic() + hold
        while time.monotonic() < end:
            st = port_state(self.port, timeout=0.2)
            check(st == "refused",
                  f"{self.name} is a standby but its port {self.port} is {st} (a standby "
                  f"must keep its port closed so clients find the master)")
            check(self.alive(), f"{self.name} died while standby; log:\n{self.log_tail()}")
            time.sleep(0.05)
        check(not MASTER_RE.search(self.log_text()),
              f"{self.name} logged 'master' while another broker holds the lock:\n"
              f"{self.log_tail()}")

    def kill9(self):
        check(self.alive(), f"{self.name}: kill -9 requested but it is not running")
        os.kill(self.proc.pid, signal.SIGKILL)
        t = time.monotonic()
        self.proc.wait(timeout=10)
        log(f"{self.name}: killed with SIGKILL")
        return t

    def terminate(self, timeout=15.0, expect_clean=True):
        """SIGTERM; the broker must exit 0 within timeout."""
        if not self.alive():
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            fail(f"{self.name} did not exit within {timeout:.0f} s of SIGTERM; log:\n"
                 f"{self.log_tail()}")
        if expect_clean:
            check(rc == 0, f"{self.name} exited with status {rc} on SIGTERM (want 0); "
                           f"log:\n{self.log_tail()}")
        log(f"{self.name}: stopped by SIGTERM (status {rc})")
        return rc

    def cleanup(self):
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


# ---------------------------------------------------------------------------
# Test environment
# ---------------------------------------------------------------------------
class Env:
    """Arguments, a private work dir, unique cluster and destination names,
    and the brokers of one test run."""

    def __init__(self, name, description, extra_args=None):
        self.name = name
        p = argparse.ArgumentParser(prog=os.path.basename(sys.argv[0]),
                                    description=description)
        p.add_argument("--broker", required=True, help="path to the mqbroker binary")
        p.add_argument("--store-uri", default="sqlite:///@TMP@/store.db",
                       help="store URI; @TMP@ is replaced by a fresh temporary directory "
                            "and a unique cluster= option is appended "
                            "(default: %(default)s)")
        p.add_argument("--mqstore", default=None,
                       help="path to the mqstore CLI (default: next to the broker) for "
                            "store-level checks")
        p.add_argument("--keep", action="store_true",
                       help="keep the work directory (logs, SQLite file) even on success")
        for a in extra_args or []:
            p.add_argument(*a[0], **a[1])
        self.args = p.parse_args()
        self.broker_path = os.path.abspath(self.args.broker)
        self.run_id = f"{os.getpid()}x{random.randrange(16**6):06x}"
        self.cluster = f"e2e-{name}-{self.run_id}"
        self.workdir = tempfile.mkdtemp(prefix=f"mqs-e2e-{name}-")
        uri = self.args.store_uri.replace("@TMP@", self.workdir)
        uri = re.sub(r"^sqlite:///+", "sqlite:///", uri)  # "///" + "/tmp/..."
        self.base_uri = uri
        self.store_uri = with_option(uri, "cluster", self.cluster)
        self.brokers = []
        self.ports = set()
        self.clients = []
        self.results = {}
        mq = self.args.mqstore or os.path.join(os.path.dirname(self.broker_path), "mqstore")
        self.mqstore_path = mq if os.path.exists(mq) else None

    @property
    def backend(self):
        return self.base_uri.split(":", 1)[0]

    def lengthen_lease(self, lease_ms=6000):
        """A lease of lease_ms for this test's brokers unless the URI sets one.
        Two fills at once on a 2-core CI machine once stalled fsync for ~2 s
        and deposed both masters (default lease 2000 ms): right, but not
        what a paging or bridge test is about (test_freeze's subject is).
        kill -9 takeovers do not wait for the lease: the crash detector
        sees the dead session at once."""
        if "lease_ms=" not in self.store_uri:
            self.store_uri = with_option(self.store_uri, "lease_ms", str(lease_ms))

    def dest(self, kind, base):
        return f"/{kind}/e2e.{self.name}.{self.run_id}.{base}"

    def port(self):
        """A free port not handed out before in this run (a broker binds
        its port only once master, so the kernel may offer it twice)."""
        for _ in range(100):
            p = free_port()
            if p not in self.ports:
                self.ports.add(p)
                return p
        fail("no free TCP port found")

    def broker(self, name, extra_args=(), store_uri=None, cluster=None, port=None):
        """A Broker (not started). store_uri/cluster: a store of its own
        (default: the test's); port: a port chosen before (default: a new one)."""
        b = Broker(self, name, port or self.port(), extra_args, store_uri, cluster)
        self.brokers.append(b)
        return b

    def client(self, port, name, headers=None):
        c = connect_client(port, name, headers)
        self.clients.append(c)
        return c

    def store_pending(self, uri=None):
        """{destination name: pending} for this run's destinations, read from
        the store (default: the test's; `uri` another one) with `mqstore stats
        --json` (independent of the broker)."""
        if not self.mqstore_path:
            return None
        r = subprocess.run([self.mqstore_path, "stats", uri or self.store_uri, "--json"],
                           capture_output=True, text=True, timeout=60)
        check(r.returncode == 0, f"mqstore stats failed ({r.returncode}): {r.stderr.strip()}")
        data = json.loads(r.stdout)
        out = {}
        for d in data.get("destinations", []):
            if self.run_id in d.get("dest", ""):
                key = d["dest"] + (f"#{d['sub_name']}" if d.get("sub_name") else "")
                out[key] = d["pending"]
        return out

    def store_pending_dest(self, dest, uri=None):
        """Pending messages of one STOMP destination (all its durable
        subscriptions for a topic) in the store, or None without the CLI."""
        pend = self.store_pending(uri)
        if pend is None:
            return None
        name = dest.split("/", 2)[2] if dest.count("/") >= 2 else dest
        return sum(v for k, v in pend.items() if k.split("#")[0] in (name, dest))

    def expect_store_pending(self, dest, want, when, timeout=3.0, uri=None):
        """The store (default: the test's; `uri` another one) must hold `want`
        pending messages for dest (polled for up to `timeout` s: ACKs without
        a receipt commit asynchronously)."""
        end = time.monotonic() + timeout
        while True:
            got = self.store_pending_dest(dest, uri)
            if got is None or got == want:
                return
            if time.monotonic() > end:
                fail(f"store: {got} messages pending for {dest} {when}, expected {want}")
            time.sleep(0.1)

    def result(self, key, value):
        self.results[key] = value

    def run(self, body):
        """Run body(env); print PASS/FAIL and exit with 0/1."""
        log(f"{self.name}: broker {self.broker_path}")
        log(f"{self.name}: store {mask_uri(self.store_uri)}; work dir {self.workdir}")
        ok = False
        try:
            if not os.access(self.broker_path, os.X_OK):
                fail(f"broker binary {self.broker_path} does not exist or is not executable")
            body(self)
            ok = True
        except TestFailure as e:
            print(f"\nFAIL {self.name}: {e}", file=sys.stderr, flush=True)
        except StompErrorFrame as e:
            print(f"\nFAIL {self.name}: unexpected {e}", file=sys.stderr, flush=True)
            traceback.print_exc()
        except ConnectionClosed as e:
            print(f"\nFAIL {self.name}: unexpected disconnect: {e}", file=sys.stderr,
                  flush=True)
            traceback.print_exc()
        except Exception:  # a bug in the test or an unexpected broker answer
            print(f"\nFAIL {self.name}: exception", file=sys.stderr, flush=True)
            traceback.print_exc()
        finally:
            for c in self.clients:
                c.close()
            for b in self.brokers:
                b.cleanup()
        if self.results:
            print("results: " + json.dumps(self.results, sort_keys=True), flush=True)
        if ok:
            print(f"PASS {self.name}", flush=True)
            if not self.args.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                print(f"work dir kept: {self.workdir}")
            sys.exit(0)
        for b in self.brokers:
            if os.path.exists(b.log_path):
                print(f"--- {b.name} log ({b.log_path}), last lines:\n{b.log_tail(40)}",
                      file=sys.stderr)
        print(f"work dir kept for inspection: {self.workdir}", file=sys.stderr)
        sys.exit(1)


# ---------------------------------------------------------------------------
# Scenario helpers
# ---------------------------------------------------------------------------
def seq_of(msg):
    s = msg.headers.get("seq")
    check(s is not None, f"MESSAGE without the seq header the test set: {msg!r}")
    return int(s)


def body_for(seq, tag="m"):
    return f"{tag}-{seq:06d}".encode()


def produce(client, dest, seqs, tag="m", window=64, headers=None, persistent=True,
            tx=None, body=body_for):
    """Send messages (persistent unless told) with a receipt each, up to
    `window` receipts outstanding; returns when every receipt came back. Each
    message carries header seq:<n> and body body(n, tag) (<tag>-<n>);
    `headers` is a dict, or a function of n giving one; `tx` a transaction."""
    outstanding = {}
    it = iter(seqs)
    done = False
    while True:
        while not done and len(outstanding) < window:
            try:
                s = next(it)
            except StopIteration:
                done = True
                break
            rid = client.next_receipt_id("p")
            h = {"destination": dest, "seq": str(s), "receipt": rid}
            if persistent:
                h["persistent"] = "true"
            if tx:
                h["transaction"] = tx
            h.update((headers(s) if callable(headers) else headers) or {})
            client.send_frame("SEND", h, body(s, tag))
            outstanding[rid] = s
        if not outstanding:
            return
        f = client._read_frame(client.timeout)
        if f is None:
            fail(f"{client.name}: {len(outstanding)} SEND receipts missing after "
                 f"{client.timeout:.0f} s (e.g. seq {sorted(outstanding.values())[:5]})")
        if f.command == "RECEIPT":
            rid = f.headers.get("receipt-id")
            check(rid in outstanding, f"{client.name}: unexpected receipt-id {rid!r}")
            del outstanding[rid]
        elif f.command == "ERROR":
            raise StompErrorFrame(f)
        else:
            client.pending.append(f)


def wait_port_refused(port, name, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if port_state(port) == "refused":
            return
        time.sleep(0.05)
    fail(f"{name}: port {port} still accepts connections {timeout:.0f} s after the kill")


def connect_retry(port, name, headers=None, timeout=DEFAULT_TIMEOUT):
    """Connect like a failover client: retry refused connections."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        c = StompClient(port, name=name)
        try:
            c.open()
            c.connect(headers)
            return c
        except (OSError, ConnectionClosed) as e:
            last = e
            c.close()
            time.sleep(0.05)
    fail(f"{name}: could not connect to port {port} within {timeout:.0f} s: {last}")


def summarize(nums, limit=10):
    nums = sorted(nums)
    head = ", ".join(str(n) for n in nums[:limit])
    return f"{len(nums)} [{head}{', ...' if len(nums) > limit else ''}]"
