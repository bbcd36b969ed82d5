"""replica - mqbroker on a PostgreSQL primary + streaming standby, through a
database failover (kill -9 the primary, promote the standby).

Shared by test_pg_failover.py (the ctest entry, synchronous replication)
and pg_async_loss.py (by hand, asynchronous replication: what a failover
loses). The pair comes from tests/db/pg-replica.sh; brokers and STOMP
clients from tests/e2e/mqe2e.py.

Workload: 4 producers send persistent messages with a receipt each (a small
window outstanding, paced), 2 consumers subscribe with ack=client and ACK
every message with a receipt. Producers and consumers behave like failover
clients: on an ERROR frame or a closed connection they reconnect to
whichever broker accepts, and carry on. Every event is time-stamped on one
monotonic clock, so the checks can say "delivered after its ACK was
confirmed" and the pause can be measured.
"""

import collections
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
import mqe2e as e  # noqa: E402

SCRIPT = os.path.normpath(os.path.join(HERE, "..", "db", "pg-replica.sh"))
PRODUCERS = 4
CONSUMERS = 2
WINDOW = 4           # receipts outstanding per producer
PACE_S = 0.004       # between SENDs of one producer: ~1,000 msg/s in all
PREFETCH = 200


def gate():
    """Exit 77 (skip) unless MQSTORE_TEST_PG_REPLICA=1; with
    MQSTORE_REQUIRE_SERVERS=1 (or CI=true) a skip is a failure."""
    if os.environ.get("MQSTORE_TEST_PG_REPLICA") == "1":
        return
    if os.environ.get("MQSTORE_REQUIRE_SERVERS") or os.environ.get("CI") == "true":
        print("MQSTORE_TEST_PG_REPLICA is not 1 but server tests are required "
              "(MQSTORE_REQUIRE_SERVERS/CI): set MQSTORE_TEST_PG_REPLICA=1",
              file=sys.stderr)
        sys.exit(1)
    print("MQSTORE_TEST_PG_REPLICA is not 1: skipping (the test starts its own "
          "PostgreSQL primary + standby on 127.0.0.1:55500-55501 with "
          "tests/db/pg-replica.sh)")
    sys.exit(77)


class Pair:
    """The primary + standby, driven through pg-replica.sh."""

    def __init__(self, asynchronous=False):
        self.asynchronous = asynchronous
        self.uri = None

    def run(self, *args, timeout=90):
        r = subprocess.run([SCRIPT, *args], capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"pg-replica.sh {' '.join(args)} failed "
                               f"({r.returncode}): {r.stderr.strip()[-2000:]}")
        return r.stdout.strip()

    def start(self):
        # A pair left over from a killed run is replaced, not reused: the
        # test needs a primary on node a and a streaming standby.
        self.run("stop")
        self.uri = self.run("start", *(["--async"] if self.asynchronous else []))
        return self.uri

    def stop(self):
        try:
            self.run("stop", timeout=60)
        except Exception as ex:  # cleanup: report, never mask the verdict
            print(f"warning: stopping the pair: {ex}", file=sys.stderr)


class Workload:
    """Producers and consumers in threads, against whichever broker is
    master (the test's brokers' ports, tried in turn)."""

    def __init__(self, env, dest, ports):
        self.env = env
        self.dest = dest
        self.ports = list(ports)
        self.mu = threading.Lock()
        self.stop_producing = threading.Event()
        self.stop_consuming = threading.Event()
        # Set: consumers disconnect and wait (so messages stay in the store
        # only, e.g. while the async test lets the standby fall behind).
        self.consumers_away = threading.Event()
        self.sent = {}        # seq -> monotonic time the SEND went out
        self.receipted = {}   # seq -> time its RECEIPT arrived
        self.send_errors = []  # (time, text) of ERROR frames / disconnects
        self.deliveries = []  # (time, seq, redelivered, consumer, body_ok)
        self.acked = {}       # seq -> time the RECEIPT of its own ACK arrived
        self.reconnects = collections.Counter()
        self.threads = []
        self.failures = []    # exceptions in threads: the test fails

    def _connect(self, name, deadline):
        """Connect to a broker that accepts (the master), like a failover
        client: round-robin over the ports, bounded by deadline."""
        i = 0
        last = None
        while time.monotonic() < deadline:
            port = self.ports[i % len(self.ports)]
            i += 1
            c = e.StompClient(port, name=name, timeout=10)
            try:
                c.open()
                c.connect()
                return c
            except (OSError, e.ConnectionClosed, e.TestFailure, e.StompErrorFrame) as ex:
                last = ex
                c.close()
                time.sleep(0.02)
        raise e.TestFailure(f"{name}: no broker accepted a connection for 60 s: {last}")

    # -- producers --------------------------------------------------------
    def _producer(self, k):
        name = f"producer{k}"
        n = 0
        while not self.stop_producing.is_set():
            c = self._connect(name, time.monotonic() + 60)
            out = {}  # receipt id -> seq
            try:
                while True:
                    now = time.monotonic()
                    if not self.stop_producing.is_set() and len(out) < WINDOW:
                        n += 1
                        seq = k * 1_000_000 + n
                        rid = c.next_receipt_id("p")
                        with self.mu:
                            self.sent[seq] = time.monotonic()
                        c.send_frame("SEND", {"destination": self.dest,
                                              "persistent": "true",
                                              "seq": str(seq), "receipt": rid},
                                     e.body_for(seq))
                        out[rid] = seq
                    elif self.stop_producing.is_set() and not out:
                        return
                    f = c._read_frame(PACE_S if len(out) < WINDOW else 0.5)
                    if f is None:
                        if self.stop_producing.is_set() and now > self.stop_at + 20:
                            return  # receipts still missing: they stay unknown
                        continue
                    if f.command == "RECEIPT":
                        seq = out.pop(f.headers.get("receipt-id"), None)
                        if seq is not None:
                            with self.mu:
                                self.receipted[seq] = time.monotonic()
                    elif f.command == "ERROR":
                        # A SEND the store could not confirm (the COMMIT's
                        # outcome is unknown when the primary died under
                        # it): the broker closes the connection. Its
                        # outstanding SENDs stay unconfirmed.
                        with self.mu:
                            self.send_errors.append(
                                (time.monotonic(), f"{name}: {f.headers.get('message')}"))
                        break
            except (e.ConnectionClosed, OSError) as ex:
                with self.mu:
                    self.send_errors.append((time.monotonic(), f"{name}: {ex}"))
            finally:
                c.close()
            self.reconnects[name] += 1

    # -- consumers --------------------------------------------------------
    def _consumer(self, k):
        name = f"consumer{k}"
        while not self.stop_consuming.is_set():
            if self.consumers_away.is_set():
                time.sleep(0.05)
                continue
            c = self._connect(name, time.monotonic() + 60)
            out = {}  # ACK receipt id -> seq
            try:
                c.subscribe(self.dest, f"sub-{k}", ack="client",
                            headers={"activemq.prefetchSize": str(PREFETCH)})
                while not self.stop_consuming.is_set() and not self.consumers_away.is_set():
                    f = c.recv(0.1)
                    if f is None:
                        continue
                    t = time.monotonic()
                    if f.command == "MESSAGE":
                        seq = e.seq_of(f)
                        with self.mu:
                            self.deliveries.append(
                                (t, seq, f.redelivered, name, f.body == e.body_for(seq)))
                        # client mode: this ACK also covers every earlier
                        # message of the subscription, all acked already.
                        rid = c.next_receipt_id("a")
                        c.send_frame("ACK", {"id": f.headers["ack"], "receipt": rid})
                        out[rid] = seq
                    elif f.command == "RECEIPT":
                        seq = out.pop(f.headers.get("receipt-id"), None)
                        if seq is not None:
                            with self.mu:
                                self.acked.setdefault(seq, t)
                    elif f.command == "ERROR":
                        break
            except (e.ConnectionClosed, OSError, e.StompErrorFrame):
                pass
            finally:
                c.close()
            self.reconnects[name] += 1

    def _guard(self, fn, k):
        try:
            fn(k)
        except Exception as ex:  # reported by check_threads
            with self.mu:
                self.failures.append(f"{fn.__name__}{k}: {ex!r}")

    def start(self):
        self.stop_at = float("inf")
        for k in range(CONSUMERS):
            t = threading.Thread(target=self._guard, args=(self._consumer, k), daemon=True)
            t.start()
            self.threads.append(t)
        for k in range(PRODUCERS):
            t = threading.Thread(target=self._guard, args=(self._producer, k + 1),
                                 daemon=True)
            t.start()
            self.threads.append(t)

    def stop_producers(self):
        self.stop_at = time.monotonic()
        self.stop_producing.set()
        for t in self.threads[CONSUMERS:]:
            t.join(timeout=30)
        e.check(not any(t.is_alive() for t in self.threads[CONSUMERS:]),
                "a producer thread did not stop within 30 s")

    def stop_consumers(self):
        self.stop_consuming.set()
        for t in self.threads[:CONSUMERS]:
            t.join(timeout=30)

    def check_threads(self):
        e.check(not self.failures, f"workload threads failed: {self.failures}")

    def receipts_between(self, t0, t1):
        with self.mu:
            return sorted(t for t in self.receipted.values() if t0 <= t < t1)

    def wait_delivered(self, want, timeout):
        """Wait until every seq in want was delivered (or timeout); return
        the ones still missing."""
        end = time.monotonic() + timeout
        while True:
            with self.mu:
                missing = want - {d[1] for d in self.deliveries}
            if not missing or time.monotonic() > end:
                return missing
            time.sleep(0.1)


def start_brokers_and_workload(env, dest, before_s, event, where=""):
    """broker-a master, broker-b standby, a Workload on both ports; after
    before_s seconds at least 100 SENDs must have been receipted. Returns
    (a, b, a's master info, workload, receipts before the event)."""
    a = env.broker("broker-a")
    b = env.broker("broker-b")
    a.start()
    ia = a.wait_master()
    b.start()
    b.wait_standby()
    e.log(f"broker-a master (token {ia['token']}), broker-b standby{where}")
    w = Workload(env, dest, [a.port, b.port])
    w.start()
    time.sleep(before_s)
    before = len(w.receipted)
    e.check(before >= 100, f"only {before} receipts in {before_s} s before the "
                           f"{event}: the workload does not run")
    e.log(f"{before} SENDs receipted before the {event}; {len(w.acked)} ACKs confirmed")
    return a, b, ia, w, before


def lock_status(env):
    r = subprocess.run([env.mqstore_path, "lock-status", env.store_uri, "--json"],
                       capture_output=True, text=True, timeout=30)
    e.check(r.returncode == 0, f"mqstore lock-status failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def master_tokens(broker):
    """Every 'master (token N)' line of the broker's whole log, in order."""
    return [int(m.group(1)) for m in e.MASTER_RE.finditer(broker.log_text(whole=True))]


def wait_new_term(broker, terms_before, timeout=20.0):
    """Wait until the broker logged one more 'master (token N)' line than
    terms_before and its port is open (wait_master would find the line of
    an earlier term in the same run). Returns {'token', 'at'}."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        e.check(broker.alive(), f"{broker.name} died; log:\n{broker.log_tail()}")
        toks = master_tokens(broker)
        if len(toks) > terms_before and e.port_state(broker.port, timeout=0.2) == "open":
            return {"token": toks[-1], "at": time.monotonic()}
        time.sleep(0.01)
    e.fail(f"{broker.name} did not become master again within {timeout:.0f} s; log:\n"
           f"{broker.log_tail()}")

