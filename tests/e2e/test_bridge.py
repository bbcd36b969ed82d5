#!/usr/bin/python3
"""Network bridges between brokers (issue 13, docs/broker.md "Network of
brokers"): real mqbroker processes, each broker (or master/slave pair) on a
store of its own, joined by --network-connector.

Scenarios (each < 60 s; `--only a,b` runs some of them):

  forward      producer on A, consumer on B (A has the connector): every
               message arrives at B exactly once, with mq-path A and an
               mq-origin of A; messages sent before B had a consumer wait on
               A; a topic reaches B's subscriber once; CONNECTED names the
               broker; /mq/demand shows B's consumer to a network connection
               and is refused to a plain one; a client's forged mq-path /
               mq-origin are dropped; the origin audit stores a network
               SEND's mq-origin once; /mq/bridges counters and `mqclient
               bridges` match
  replay_duplex  consumer moves from B to A with messages pending on B, replay
               on (queue=>;replayWhenNoConsumers=true;enableAudit=false on
               both), A's connector duplex: they come back to A, each once
  replay_two   the same with a connector on each side (not duplex)
  replay_off   the same with replay off: they stay on B, and a consumer back
               on B gets them, each once
  local_first  consumers on A and B, producer on A: A's consumer with room
               gets everything; A's consumer busy (prefetch 5, not acking):
               it gets 5, the bridge takes the other 45 to B
  durable      a durable topic subscriber on B that is offline: the topic
               messages published on A are stored for it on B
  auth         B with --users/--acl: A's bridge logs in as an admin user
               (passcodeFile) and forwards; one logging in as a user without
               the admin right is refused (not up, last error, no passcode
               shown); plain users get an ERROR for /mq/bridges, mq-bridge
  backlog      300 messages from A wait on B (replay off, A in their path):
               20 produced on B behind them still reach a consumer on A
               (duplex), the 300 stay
  kill_a       kill -9 of A while a producer on A streams to a consumer on B:
               A restarted; nothing lost, nothing twice, bridge resumes
  kill_b       kill -9 of B mid-flow (B restarted); nothing lost, nothing
               delivered again after its ack
  kill_pairs   A and B master/slave pairs, A's connector
               static:(failover:(tcp://b1,tcp://b2)): kill -9 of B's master,
               then of A's master, mid-flow; the same checks
  line         A -> B -> C: networkTTL 1 keeps a message on A, TTL 2 on A
               only moves it to B, TTL 2 on both reaches C (mq-path A,B)
  ring         A -> B -> C -> A with networkTTL 3: queue and topic counts stay
               exact, the forwarded counters stop moving (no loops)
  duplex       only A has a connector (duplex=true): traffic flows both ways;
               B has no bridge of its own
  bad_peer     peer down at start (state connecting/down, then works once it
               starts); a peer that answers garbage and a fake STOMP server
               without mq-broker-name (state down, last error says so, the
               broker keeps serving)
  bad_config   unknown connector or policy keys, bad values, a bad broker
               name, duplicate connector names: mqbroker exits non-zero
               naming FILE:LINE or --network-connector #k; the default
               broker name is the store's cluster; name and policy logged

Stores: --store-uri is broker A's; B's and C's are derived from it (SQLite:
store-b.db / store-c.db beside it; a server: the database name + "_b" /
"_c", which tests/db/postgres.sh creates), or given by --store-uri-b/-c.
Every scenario uses fresh cluster names (and SQLite files), so scenarios
never see each other's brokers or messages. A scenario that passed stops its
brokers with SIGTERM, bridges up: each must exit 0 within 15 s.
"""
import collections
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402

REPLAY_ON = "queue=>;replayWhenNoConsumers=true;enableAudit=false"
REPLAY_OFF = "queue=>;replayWhenNoConsumers=false;enableAudit=true"


# ---------------------------------------------------------------------------
# Stores, brokers and connectors of one scenario
# ---------------------------------------------------------------------------
def split_query(uri):
    i = uri.find("?")
    return (uri, "") if i < 0 else (uri[:i], uri[i:])


class Scenario:
    """The brokers and clients of one scenario; close() kills them all."""

    def __init__(self, env, name):
        self.env = env
        self.name = name
        self.brokers = []
        self.clients = []
        self.threads = []
        self.t0 = time.monotonic()

    def store(self, key):
        """Store URI (with a unique cluster) of broker group key 'a'/'b'/'c'."""
        env = self.env
        explicit = getattr(env.args, f"store_uri_{key}", None) if key != "a" else None
        if explicit:
            uri = explicit.replace("@TMP@", env.workdir)
            uri = re.sub(r"^sqlite:///+", "sqlite:///", uri)
        elif env.backend == "sqlite":
            path, q = split_query(env.base_uri)
            root, ext = os.path.splitext(path)
            uri = f"{root}-{self.name}-{key}{ext or '.db'}{q}"
        else:  # a server: a database of its own per group ("mqstore_e2e_b")
            path, q = split_query(env.base_uri)
            uri = path + q if key == "a" else f"{path}_{key}{q}"
        if env.backend != "sqlite" and "lease_ms=" not in uri:
            # Up to four masters renew their leases on one server here; on a
            # loaded machine a renewal late by more than a second deposes a
            # master (the fence: test_freeze.py's subject, not the bridge's).
            # kill -9 takeovers do not wait for the lease (crash_detect).
            uri = e.with_option(uri, "lease_ms", "5000")
        return e.with_option(uri, "cluster", self.cluster(key))

    def cluster(self, key):
        return f"{self.env.cluster}-{self.name}-{key}"

    def broker(self, label, key, bname, extra=(), port=None):
        """Broker process `label` on store group `key`, named `bname`."""
        args = ["--broker-name", bname] + list(extra)
        b = self.env.broker(f"{self.name}-{label}", args, store_uri=self.store(key),
                            cluster=self.cluster(key), port=port)
        self.brokers.append(b)
        return b

    def dest(self, kind, base):
        return self.env.dest(kind, f"{self.name}.{base}")

    def client(self, b, name, headers=None):
        c = e.connect_client(b.port, f"{self.name}-{name}", headers)
        self.clients.append(c)
        return c

    def consumer(self, brokers, dest, name, **kw):
        c = Consumer(self, brokers, dest, f"{self.name}-{name}", **kw)
        self.clients.append(c)
        return c

    def pending(self, key, dest):
        """Messages of dest pending in store group `key` (None without the CLI)."""
        return self.env.store_pending_dest(dest, self.store(key))

    def stop_clean(self):
        """SIGTERM every running broker, bridges still up: each must exit 0
        within 15 s (stopping a bridge must not wait on its own loop; under
        ASan this also checks leaks at exit)."""
        for c in self.clients:
            c.close()
        for b in self.brokers:
            if b.alive():
                b.terminate(timeout=15.0, expect_clean=True)

    def close(self):
        for c in self.clients:
            c.close()
        for t in self.threads:
            stop = getattr(t, "stop", None)
            if stop:
                stop()
        for b in self.brokers:
            b.cleanup()
            # Its log was printed if the scenario failed: not again at the end.
            if b in self.env.brokers:
                self.env.brokers.remove(b)


def start_master(*brokers):
    for b in brokers:
        b.start()
    for b in brokers:
        b.wait_master()


def tcp(b):
    return f"tcp://127.0.0.1:{b.port}"


def connector(name, uris, duplex=None, ttl=None, prefetch=None):
    spec = f"name={name};uri=static:({','.join(uris)})"
    if duplex is not None:
        spec += f";duplex={'true' if duplex else 'false'}"
    if ttl is not None:
        spec += f";networkTTL={ttl}"
    if prefetch is not None:
        spec += f";prefetch={prefetch}"
    return ["--network-connector", spec]


def policy(spec):
    return ["--network-policy", spec]


# ---------------------------------------------------------------------------
# /mq/bridges
# ---------------------------------------------------------------------------
def bridges(port, timeout=3.0):
    """{bridge name: headers} from one /mq/bridges snapshot of the broker."""
    c = e.StompClient(port, name="bridges", timeout=10)
    try:
        c.open()
        c.connect()
        c.subscribe("/mq/bridges", "b", ack="auto")
        msgs = c.drain(quiet=0.4, max_total=timeout)
    finally:
        c.close()
    out = {}
    for m in msgs:
        h = dict(m.headers)
        name = h.get("mq-bridge-name")
        e.check(name, f"/mq/bridges MESSAGE without mq-bridge-name: {m!r}")
        try:
            body = json.loads(m.body.decode() or "null")
        except ValueError:
            e.fail(f"/mq/bridges body is not JSON: {m.body[:200]!r}")
        e.check(isinstance(body, dict), f"/mq/bridges body is not a JSON object: {body!r}")
        h["_json"] = body
        out[name] = h
    return out


def num(stat, key):
    return int(stat.get(key) or 0)


def brief(stat):
    keys = ("mq-state", "mq-peer-name", "mq-forwarded-out", "mq-forwarded-in",
            "mq-inflight-out", "mq-inflight-in", "mq-duplex", "mq-last-error")
    return {k[3:]: stat.get(k) for k in keys}


def wait_bridge(b, name, pred, what, timeout=20.0):
    """Poll b's /mq/bridges until bridge `name` satisfies pred; its headers."""
    end = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = bridges(b.port).get(name)
        except (OSError, e.ConnectionClosed) as ex:
            last = {"error": str(ex)}
        if last and "error" not in last and pred(last):
            return last
        if time.monotonic() > end:
            e.fail(f"{b.name}: bridge {name}: want {what}, not reached within "
                   f"{timeout:.0f} s; last /mq/bridges: "
                   f"{brief(last) if last and 'error' not in last else last}")
        time.sleep(0.2)


def wait_up(b, name, peer_name=None, timeout=20.0):
    return wait_bridge(
        b, name, lambda s: s.get("mq-state") == "up"
        and (peer_name is None or s.get("mq-peer-name") == peer_name),
        f"up (peer {peer_name})", timeout)


# ---------------------------------------------------------------------------
# Consumers and producers that survive a broker's death
# ---------------------------------------------------------------------------
class Consumer:
    """A STOMP consumer on a broker (or the first open one of a master/slave
    pair), recording every delivery. Client acks are sent with a receipt: a
    seq counts as acked only once the broker confirmed it, and any delivery
    of an acked seq is recorded in after_ack."""

    def __init__(self, sc, brokers, dest, name, ack="client-individual", prefetch=None,
                 connect_headers=None, sub_headers=None):
        self.brokers = brokers if isinstance(brokers, (list, tuple)) else [brokers]
        self.dest, self.name, self.ack, self.prefetch = dest, name, ack, prefetch
        self.connect_headers, self.sub_headers = connect_headers, sub_headers or {}
        self.got, self.frames = [], []
        self.acked, self.after_ack = set(), []
        self.warm = 0
        self.reconnects = 0
        self.c = None
        self.lock = threading.Lock()
        self.connect(timeout=20)

    def connect(self, timeout=30.0):
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            for b in self.brokers:
                c = e.StompClient(b.port, name=self.name)
                try:
                    c.open()
                    c.connect(self.connect_headers)
                    h = dict(self.sub_headers)
                    if self.prefetch:
                        h["activemq.prefetchSize"] = str(self.prefetch)
                    c.subscribe(self.dest, "s1", ack=self.ack, headers=h)
                    self.c = c
                    return
                except (OSError, e.ConnectionClosed, e.TestFailure) as ex:
                    last = ex
                    c.close()
            time.sleep(0.1)
        e.fail(f"{self.name}: cannot subscribe on ports "
               f"{[b.port for b in self.brokers]} within {timeout:.0f} s: {last}")

    def close(self):
        if self.c:
            self.c.close()

    def distinct(self):
        return set(self.got)

    def _handle(self, m):
        if m.headers.get("warm"):
            self.warm += 1
            if self.ack != "auto":
                self.c.ack(m, receipt=False)
            return
        s = e.seq_of(m)
        with self.lock:
            if s in self.acked:
                self.after_ack.append(s)
            self.got.append(s)
            self.frames.append(m)
        if self.ack != "auto":
            self.c.ack(m, receipt=True)
            with self.lock:
                self.acked.add(s)

    def collect(self, want=None, timeout=20.0, quiet=None, reconnect=False, limit=None):
        """Receive until `want` distinct seqs were seen, `limit` deliveries
        were handled in this call, no message came for `quiet` s, or
        `timeout` s passed. Returns the number of deliveries handled."""
        end = time.monotonic() + timeout
        last = time.monotonic()
        n = 0
        while time.monotonic() < end:
            if want is not None and len(self.distinct()) >= want:
                break
            if limit is not None and n >= limit:
                break
            if quiet is not None and time.monotonic() - last >= quiet:
                break
            try:
                m = self.c.recv_message(min(0.3, max(end - time.monotonic(), 0.01)))
                if m is None:
                    continue
                self._handle(m)
                n += 1
                last = time.monotonic()
            except (e.ConnectionClosed, OSError) as ex:
                if not reconnect:
                    raise
                e.log(f"{self.name}: connection lost ({ex}); reconnecting")
                self.c.close()
                self.reconnects += 1
                self.connect()
        return n

    def expect_nothing(self, seconds, why):
        before = len(self.got)
        self.collect(timeout=seconds)
        e.check(len(self.got) == before,
                f"{self.name}: got {len(self.got) - before} messages {why} "
                f"(seq {e.summarize(self.got[before:])})")


class Producer(threading.Thread):
    """Sends seqs to dest with a receipt each (up to `window` outstanding),
    at most `rate` per second, on the first open broker of `brokers`. On a
    lost connection it reconnects and resends what had no receipt with the
    same mq-producer/mq-seq, so the broker drops copies: every seq ends up
    stored once (confirmed)."""

    def __init__(self, brokers, dest, seqs, name, rate=None, window=8):
        super().__init__(daemon=True)
        self.brokers, self.dest, self.seqs, self.name = brokers, dest, list(seqs), name
        self.rate, self.window = rate, window
        self.pid = f"{name}-{os.getpid()}-{random.randrange(16**8):08x}"
        self.confirmed = set()
        self.sent = 0
        self.reconnects = 0
        self.error = None
        self.c = None
        self._halt = threading.Event()

    def stop(self):
        self._halt.set()

    def _connect(self):
        end = time.monotonic() + 40
        last = None
        while time.monotonic() < end and not self._halt.is_set():
            for b in self.brokers:
                c = e.StompClient(b.port, name=self.name)
                try:
                    c.open()
                    c.connect()
                    return c
                except (OSError, e.ConnectionClosed, e.TestFailure) as ex:
                    last = ex
                    c.close()
            time.sleep(0.1)
        raise e.TestFailure(f"{self.name}: no broker to reconnect to within 40 s: {last}")

    def _send(self, s, outstanding):
        rid = self.c.next_receipt_id("p")
        self.c.send_frame("SEND", {
            "destination": self.dest, "persistent": "true", "seq": str(s),
            "mq-producer": self.pid, "mq-seq": str(s), "receipt": rid}, e.body_for(s))
        outstanding[rid] = s

    def run(self):
        try:
            self._run()
        except Exception as ex:  # reported by the test through self.error
            self.error = ex

    def _run(self):
        self.c = self._connect()
        outstanding = {}
        i = 0
        t0 = progress = time.monotonic()
        while (i < len(self.seqs) or outstanding) and not self._halt.is_set():
            try:
                while i < len(self.seqs) and len(outstanding) < self.window:
                    if self.rate:
                        wait = t0 + i / self.rate - time.monotonic()
                        if wait > 0:
                            if outstanding:
                                break
                            time.sleep(min(wait, 0.5))
                            continue
                    self._send(self.seqs[i], outstanding)
                    i += 1
                    self.sent += 1
                if not outstanding:
                    continue
                f = self.c._read_frame(0.05)
                if f is None:
                    if time.monotonic() - progress > 30:
                        raise e.TestFailure(f"{self.name}: {len(outstanding)} receipts "
                                            f"missing for 30 s")
                    continue
                if f.command == "RECEIPT":
                    s = outstanding.pop(f.headers.get("receipt-id"), None)
                    if s is not None:
                        self.confirmed.add(s)
                        progress = time.monotonic()
                elif f.command == "ERROR":
                    raise e.StompErrorFrame(f)
            except (e.ConnectionClosed, OSError) as ex:
                e.log(f"{self.name}: connection lost ({ex}); {len(outstanding)} sends "
                      f"without receipt will be resent")
                self.c.close()
                self.reconnects += 1
                self.c = self._connect()
                progress = time.monotonic()
                again = sorted(outstanding.values())
                outstanding = {}
                for s in again:
                    self._send(s, outstanding)
        self.c.close()


def check_exact(what, lists, want):
    """Every seq of `want` delivered exactly once over all lists."""
    cnt = collections.Counter()
    for g in lists:
        cnt.update(g)
    want = set(want)
    missing = sorted(want - set(cnt))
    extra = sorted(set(cnt) - want)
    dups = sorted(s for s, n in cnt.items() if n > 1)
    e.check(not missing and not extra and not dups,
            f"{what}: missing {e.summarize(missing)}, unexpected {e.summarize(extra)}, "
            f"delivered more than once {e.summarize(dups)}")


def check_pending(sc, key, dest, want, when, timeout=5.0):
    """Store group `key` holds `want` messages of dest (when the CLI is there)."""
    if sc.env.mqstore_path:
        sc.env.expect_store_pending(dest, want, f"in store {key} {when}", timeout,
                                    uri=sc.store(key))


def produce(sc, b, dest, seqs, name="producer", headers=None):
    c = sc.client(b, name)
    e.produce(c, dest, seqs, headers=headers)
    c.disconnect()


def warm_topic(sc, b, dest, consumers, timeout=20.0):
    """Publish 'warm' messages to topic dest on b until every consumer got
    one (the bridges' topic subscriptions are then in place), then let the
    stragglers arrive; only messages without the warm header count later."""
    p = sc.client(b, "warm")
    left = list(consumers)
    end = time.monotonic() + timeout
    while left:
        e.check(time.monotonic() < end,
                f"topic {dest}: {[c.name for c in left]} got no warm-up message within "
                f"{timeout:.0f} s (topic demand not forwarded)")
        p.send(dest, b"warm", headers={"warm": "1"}, persistent=False)
        for c in list(left):
            c.collect(timeout=0.25)
            if c.warm:
                left.remove(c)
    p.disconnect()
    for c in consumers:
        c.collect(quiet=1.0, timeout=5)
        e.check(not c.got, f"{c.name}: real messages during the warm-up: {c.got}")


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------
def sc_forward(sc):
    b = sc.broker("B", "b", "B")
    a = sc.broker("A", "a", "A", connector("toB", [tcp(b)]))
    start_master(b, a)
    st = wait_up(a, "toB", "B")
    e.check(st.get("mq-duplex") in ("false", "0"), f"toB: mq-duplex {st.get('mq-duplex')!r}")
    e.check("127.0.0.1" in (st.get("mq-peer") or ""), f"toB: mq-peer {st.get('mq-peer')!r}")

    # CONNECTED names the broker.
    raw = e.StompClient(b.port, name="raw")
    raw.open()
    f = raw.connect()
    e.check(f.headers.get("mq-broker-name") == "B",
            f"CONNECTED mq-broker-name {f.headers.get('mq-broker-name')!r}, want 'B'")
    # /mq/demand is for network connections only.
    raw.send_frame("SUBSCRIBE", {"destination": "/mq/demand", "id": "d", "ack": "auto",
                                 "receipt": "rd"})
    frames = []
    end = time.monotonic() + 5
    try:
        while time.monotonic() < end and not any(x.command == "ERROR" for x in frames):
            x = raw.recv(0.5)
            if x:
                frames.append(x)
    except e.ConnectionClosed:
        pass
    raw.close()
    errs = [x for x in frames if x.command == "ERROR"]
    text = (errs[0].headers.get("message", "") + errs[0].body.decode("utf-8", "replace")
            if errs else "")
    e.check(any(w in text for w in ("mq-bridge", "/mq/demand", "network")),
            f"/mq/demand from a plain connection: want an ERROR naming mq-bridge or "
            f"/mq/demand, got {frames}")

    q = sc.dest("queue", "q")
    # Sent before B has a consumer: the messages wait on A.
    produce(sc, a, q, range(1, 101))
    time.sleep(1.0)
    check_pending(sc, "a", q, 100, "before B has a consumer")
    cons = sc.consumer(b, q, "consumer-B")
    cons.collect(want=100, timeout=20)
    produce(sc, a, q, range(101, 201))
    cons.collect(want=200, timeout=20)
    cons.collect(quiet=1.5, timeout=5)
    check_exact("queue A -> B", [cons.got], range(1, 201))
    # (the forged one below is seq 201)
    e.check(not cons.after_ack, f"delivered again after ack: {cons.after_ack}")
    m = cons.frames[0]
    e.check(m.headers.get("mq-path") == "A",
            f"message at B: mq-path {m.headers.get('mq-path')!r}, want 'A'")
    e.check((m.headers.get("mq-origin") or "").startswith("A/"),
            f"message at B: mq-origin {m.headers.get('mq-origin')!r}, want 'A/...'")

    # A client cannot set mq-path / mq-origin: a forged path naming B would
    # keep the message from B; it is dropped, and the message reaches B.
    p = sc.client(a, "forger")
    p.send(q, b"forged", headers={"seq": "201", "mq-path": "B", "mq-origin": "B/1"})
    p.disconnect()
    cons.collect(want=201, timeout=15)
    m = cons.frames[-1]
    e.check(e.seq_of(m) == 201 and m.headers.get("mq-path") == "A"
            and (m.headers.get("mq-origin") or "").startswith("A/"),
            f"a SEND with a forged mq-path/mq-origin: at B {m!r}")

    # The origin audit (enableAudit defaults to true): a network connection
    # sending the same mq-origin twice stores it once (RECEIPT both times).
    q2 = sc.dest("queue", "audit")
    net = e.StompClient(b.port, name="net-sender")
    net.open()
    net.connect({"mq-bridge": "probe"})
    for _ in range(2):
        net.send(q2, b"once", headers={"seq": "1", "mq-origin": "probe/42", "mq-path": "probe"})
    net.send(q2, b"other", headers={"seq": "2", "mq-origin": "probe/43", "mq-path": "probe"})
    net.close()
    c2 = sc.consumer(b, q2, "consumer-audit")
    c2.collect(want=2, timeout=10)
    c2.collect(quiet=1.0, timeout=3)
    check_exact("the same mq-origin sent twice over a network connection", [c2.got], [1, 2])
    c2.close()

    check_pending(sc, "a", q, 0, "after B consumed everything")
    check_pending(sc, "b", q, 0, "after B consumed everything")

    # The demand feed, seen by a network connection: B's consumer.
    net = e.StompClient(b.port, name="net-probe")
    net.open()
    net.connect({"mq-bridge": "probe"})
    net.subscribe("/mq/demand", "d", ack="auto")
    seen = {}
    for f in net.drain(quiet=0.5, max_total=5):
        seen[f.headers.get("mq-dest")] = f.headers
    net.close()
    e.check(q in seen and seen[q].get("mq-consumers") == "1",
            f"/mq/demand snapshot on B: {q} not with mq-consumers:1: {seen}")

    # A topic reaches B's subscriber once.
    t = sc.dest("topic", "t")
    sub = sc.consumer(b, t, "topic-B", ack="auto")
    warm_topic(sc, a, t, [sub])
    produce(sc, a, t, range(1, 21))
    sub.collect(want=20, timeout=15)
    sub.collect(quiet=1.5, timeout=5)
    check_exact("topic A -> B", [sub.got], range(1, 21))

    # 201 queue + 20 topic messages (+ the topic's warm-up ones).
    st = wait_bridge(a, "toB", lambda s: num(s, "mq-inflight-out") == 0
                     and num(s, "mq-forwarded-out") >= 221,
                     "done (forwarded-out >= 221, inflight-out 0)", 10)
    e.check(num(st, "mq-forwarded-in") == 0, f"toB forwarded-in {st.get('mq-forwarded-in')}")
    sc.env.result("forward_fwd_out", num(st, "mq-forwarded-out"))

    # `mqclient bridges` (the CLI next to the broker, when built) shows it.
    cli = os.path.join(os.path.dirname(sc.env.broker_path), "mqclient")
    if os.access(cli, os.X_OK):
        r = subprocess.run([cli, "bridges", tcp(a)], capture_output=True, text=True,
                           timeout=30)
        rows = [ln.split() for ln in r.stdout.splitlines()]
        e.check(r.returncode == 0 and len(rows) == 2 and rows[1][:3] == ["toB", "up", "B"]
                and rows[1][3] == st.get("mq-forwarded-out"),
                f"mqclient bridges: exit {r.returncode}, stdout {r.stdout!r}, "
                f"stderr {r.stderr!r}")


def replay(sc, duplex, replay_on):
    pol = policy(REPLAY_ON if replay_on else REPLAY_OFF)
    b_port = sc.env.port()
    a = sc.broker("A", "a", "A", connector("toB", [f"tcp://127.0.0.1:{b_port}"],
                                            duplex=duplex) + pol)
    b_extra = pol if duplex else pol + connector("toA", [tcp(a)])
    b = sc.broker("B", "b", "B", b_extra, port=b_port)
    start_master(b, a)
    wait_up(a, "toB", "B")
    if not duplex:
        wait_up(b, "toA", "A")

    q = sc.dest("queue", "q")
    c1 = sc.consumer(b, q, "consumer-B", prefetch=10)
    produce(sc, a, q, range(1, 101))
    c1.collect(want=30, timeout=20)
    # Everything on B before the consumer moves (the bridge forwarded all).
    wait_bridge(a, "toB", lambda s: num(s, "mq-forwarded-out") >= 100
                and num(s, "mq-inflight-out") == 0, "done forwarding 100", 20)
    acked1 = set(c1.acked)
    c1.close()
    left = 100 - len(acked1)
    check_pending(sc, "b", q, left, "after the consumer on B left")
    check_pending(sc, "a", q, 0, "after the consumer on B left")

    c2 = sc.consumer(a, q, "consumer-A")
    if replay_on:
        c2.collect(want=left, timeout=25)
        c2.collect(quiet=1.5, timeout=5)
        e.check(not set(c2.got) & acked1,
                f"acked on B, delivered again on A: {e.summarize(set(c2.got) & acked1)}")
        check_exact("replayed to A", [c2.got], set(range(1, 101)) - acked1)
        check_pending(sc, "b", q, 0, "after the replay")
        st = bridges(a.port)["toB"] if duplex else bridges(b.port)["toA"]
        sc.env.result(f"{sc.name}_bridge", brief(st))
        key = "mq-forwarded-in" if duplex else "mq-forwarded-out"
        e.check(num(st, key) >= left, f"bridge {key} {st.get(key)}, want >= {left}")
    else:
        c2.expect_nothing(4.0, "on A with replay off (they must wait on B)")
        check_pending(sc, "b", q, left, "with replay off")
        c2.close()
        c3 = sc.consumer(b, q, "consumer-B-again")
        c3.collect(want=left, timeout=20)
        c3.collect(quiet=1.5, timeout=5)
        e.check(not set(c3.got) & acked1,
                f"acked on B, delivered again: {e.summarize(set(c3.got) & acked1)}")
        check_exact("waited on B", [c3.got], set(range(1, 101)) - acked1)


def sc_replay_duplex(sc):
    replay(sc, duplex=True, replay_on=True)


def sc_replay_two(sc):
    replay(sc, duplex=False, replay_on=True)


def sc_replay_off(sc):
    replay(sc, duplex=False, replay_on=False)


def sc_local_first(sc):
    b = sc.broker("B", "b", "B")
    a = sc.broker("A", "a", "A", connector("toB", [tcp(b)]))
    start_master(b, a)
    wait_up(a, "toB", "B")
    q = sc.dest("queue", "q")
    cb = sc.consumer(b, q, "consumer-B")
    # A's own consumer has room: everything stays on A.
    ca = sc.consumer(a, q, "consumer-A")
    produce(sc, a, q, range(1, 51))
    ca.collect(want=50, timeout=15)
    cb.expect_nothing(2.0, "on B while A's consumer had room (local first)")
    check_exact("local first", [ca.got], range(1, 51))
    ca.close()
    # A's consumer busy (prefetch 5, not acking): the rest goes to B.
    busy = sc.consumer(a, q, "busy-A", prefetch=5)
    got = []
    produce(sc, a, q, range(51, 101))
    cb.collect(want=45, timeout=20)
    end = time.monotonic() + 3
    while time.monotonic() < end:
        m = busy.c.recv_message(0.3)
        if m is not None:
            got.append(e.seq_of(m))
    cb.collect(quiet=1.5, timeout=5)
    e.check(len(got) == 5, f"the busy consumer on A got {len(got)} messages, want its "
                           f"prefetch (5): {got}")
    check_exact("busy A: prefetch on A, the rest to B", [got, cb.got], range(51, 101))
    st = bridges(a.port)["toB"]
    e.check(num(st, "mq-forwarded-out") == 45, f"toB forwarded-out {st.get('mq-forwarded-out')}"
                                              f", want 45")


def sc_durable(sc):
    b = sc.broker("B", "b", "B")
    a = sc.broker("A", "a", "A", connector("toB", [tcp(b)]))
    start_master(b, a)
    wait_up(a, "toB", "B")
    t = sc.dest("topic", "t")
    dur = {"connect_headers": {"client-id": f"cid-{sc.env.run_id}"},
           "sub_headers": {"durable-subscription-name": "D"}}
    d = sc.consumer(b, t, "durable-B", **dur)
    d.close()  # offline: its box on B still counts as demand
    # The bridge subscribes on A once B's demand arrives: publish warm-up
    # messages until one was forwarded.
    p = sc.client(a, "warm")
    end = time.monotonic() + 15
    while num(bridges(a.port)["toB"], "mq-forwarded-out") < 1:
        e.check(time.monotonic() < end, "no topic message forwarded for B's offline durable "
                                        "subscriber within 15 s")
        p.send(t, b"warm", headers={"warm": "1"})
        time.sleep(0.3)
    p.disconnect()
    produce(sc, a, t, range(1, 21))
    wait_bridge(a, "toB", lambda s: num(s, "mq-inflight-out") == 0, "done (inflight-out 0)")
    d2 = sc.consumer(b, t, "durable-B-again", **dur)
    d2.collect(want=20, timeout=15)
    d2.collect(quiet=1.5, timeout=5)
    check_exact("offline durable subscriber on B", [d2.got], range(1, 21))


def sc_auth(sc):
    env = sc.env
    pw = {"admin": "adm-" + env.run_id, "bob": "bob-" + env.run_id}
    users = os.path.join(env.workdir, "auth-users")
    with open(users, "w") as f:
        for u, p in pw.items():
            r = subprocess.run([env.broker_path, "--hash-password"], input=p + "\n",
                               capture_output=True, text=True, timeout=30)
            e.check(r.returncode == 0, f"--hash-password: {r.stderr!r}")
            f.write(f"{u}:{r.stdout.strip()}\n")
    os.chmod(users, 0o600)
    acl = os.path.join(env.workdir, "auth-acl")
    with open(acl, "w") as f:
        f.write("admin all >\nbob read,write >\n")
    pfiles = {}
    for u, p in pw.items():
        pfiles[u] = os.path.join(env.workdir, f"auth-{u}.pass")
        with open(pfiles[u], "w") as f:
            f.write(p + "\n")
        os.chmod(pfiles[u], 0o600)
    b = sc.broker("B", "b", "B", ["--users", users, "--acl", acl])
    a = sc.broker("A", "a", "A",
                  connector("toB", [tcp(b)]) + [
                      "--network-connector",
                      f"name=asBob;uri=static:({tcp(b)});login=bob;"
                      f"passcodeFile={pfiles['bob']}"])
    a.extra_args[a.extra_args.index("--network-connector") + 1] += \
        f";login=admin;passcodeFile={pfiles['admin']}"
    start_master(b, a)
    wait_up(a, "toB", "B")
    st = wait_bridge(a, "asBob", lambda s: s.get("mq-state") != "up"
                     and (s.get("mq-last-error") or "") != "",
                     "refused (not up, with a last error)", 15)
    sc.env.result("auth_bob_bridge", brief(st))
    e.check(pw["bob"] not in json.dumps(st) and pw["admin"] not in a.log_text(),
            "a passcode shows in /mq/bridges or A's log")

    q = sc.dest("queue", "q")
    cons = sc.consumer(b, q, "consumer-B",
                       connect_headers={"login": "bob", "passcode": pw["bob"]})
    produce(sc, a, q, range(1, 21))
    cons.collect(want=20, timeout=20)
    cons.collect(quiet=1.0, timeout=5)
    check_exact("with --users on B", [cons.got], range(1, 21))

    # Plain users: no network headers, no /mq/bridges without the admin right.
    def refused(frame_headers, what):
        c = e.StompClient(b.port, name=what)
        c.open()
        c.connect({"login": "bob", "passcode": pw["bob"]})
        c.send_frame("SUBSCRIBE", frame_headers)
        got = None
        try:
            end = time.monotonic() + 5
            while got is None and time.monotonic() < end:
                f = c.recv(0.5)
                if f is not None and f.command in ("ERROR", "MESSAGE"):
                    got = f
        except e.ConnectionClosed:
            pass
        c.close()
        e.check(got is not None and got.command == "ERROR", f"{what}: want an ERROR, got {got!r}")
    refused({"destination": "/mq/bridges", "id": "x", "ack": "auto"}, "bob /mq/bridges")
    refused({"destination": q, "id": "x", "ack": "auto", "mq-bridge": "Z"},
            "bob SUBSCRIBE with mq-bridge")
    c = e.StompClient(b.port, name="bob-network")
    c.open()
    f = c.connect({"login": "bob", "passcode": pw["bob"], "mq-bridge": "Z"}, expect_ok=False)
    c.close()
    e.check(f is not None and f.command == "ERROR",
            f"a network connection without the admin right: want ERROR, got {f!r}")


def sc_backlog(sc):
    b = sc.broker("B", "b", "B")
    a = sc.broker("A", "a", "A", connector("toB", [tcp(b)], duplex=True))
    start_master(b, a)
    wait_up(a, "toB", "B")
    q = sc.dest("queue", "q")
    # 300 messages from A end up on B with no consumer there: with replay
    # off none may go back to A (A is in their path).
    cb = sc.consumer(b, q, "consumer-B", prefetch=1)
    produce(sc, a, q, range(1, 301))
    wait_bridge(a, "toB", lambda s: num(s, "mq-forwarded-out") >= 300
                and num(s, "mq-inflight-out") == 0, "done forwarding 300", 30)
    cb.close()
    check_pending(sc, "b", q, 300, "after B's consumer left")
    # Newer messages produced on B, behind that backlog (more than the 256
    # a dispatch round looks at), still reach A's consumer.
    produce(sc, b, q, range(1001, 1021), name="producer-B")
    ca = sc.consumer(a, q, "consumer-A")
    ca.collect(want=20, timeout=20)
    ca.collect(quiet=2.0, timeout=5)
    check_exact("B's own messages behind a backlog that may not move", [ca.got],
                range(1001, 1021))
    check_pending(sc, "b", q, 300, "at the end (the backlog waits)")


def flow_with_kills(sc, a_list, b_list, kills, n=1500, rate=400):
    """Producer on A, consumer on B, `kills` = [(after k distinct at B,
    broker to kill, broker to restart or None, brokers to wait master)]."""
    q = sc.dest("queue", "q")
    cons = sc.consumer(b_list, q, "consumer-B")
    prod = Producer(a_list, q, range(1, n + 1), f"{sc.name}-producer", rate=rate)
    sc.threads.append(prod)
    prod.start()
    for after, victim, restart, masters in kills:
        # Killed while the producer is still sending (it is rate-limited),
        # so A stores, forwards and B receives around the kill.
        end = time.monotonic() + 30
        while len(prod.confirmed) < after:
            if prod.error:
                raise prod.error
            e.check(time.monotonic() < end and prod.is_alive(),
                    f"the producer confirmed only {len(prod.confirmed)} sends in 30 s "
                    f"(want {after} before killing {victim.name})")
            cons.collect(timeout=0.1, reconnect=True)
        e.log(f"killing {victim.name}: {len(prod.confirmed)} sends confirmed on A, "
              f"{len(cons.distinct())} received on B")
        victim.kill9()
        if restart:
            restart.start()
        for m in masters:
            m.wait_master(timeout=30)
    cons.collect(want=n, timeout=50, reconnect=True)
    prod.join(timeout=30)
    e.check(not prod.is_alive(), "the producer did not finish")
    if prod.error:
        raise prod.error
    e.check(prod.confirmed == set(range(1, n + 1)),
            f"producer: {n - len(prod.confirmed)} sends never confirmed")
    cons.collect(quiet=2.0, timeout=6, reconnect=True)
    a_kills = sum(1 for k in kills if k[1] in a_list)
    b_kills = len(kills) - a_kills
    e.check(prod.reconnects >= a_kills and cons.reconnects >= b_kills,
            f"a kill was not mid-flow: producer reconnected {prod.reconnects} times "
            f"({a_kills} kills of A), consumer {cons.reconnects} ({b_kills} of B)")
    d = collections.Counter(cons.got)
    missing = sorted(set(range(1, n + 1)) - set(d))
    e.check(not missing, f"lost: {e.summarize(missing)} (B got {len(d)} distinct)")
    e.check(not cons.after_ack,
            f"delivered again after the ack was confirmed: {e.summarize(cons.after_ack)}")
    again = sorted(s for s, k in d.items() if k > 1)
    sc.env.result(f"{sc.name}_redelivered_unacked", len(again))
    sc.env.result(f"{sc.name}_reconnects", {"producer": prod.reconnects,
                                             "consumer": cons.reconnects})
    return q, again


def sc_kill_a(sc):
    b = sc.broker("B", "b", "B")
    a = sc.broker("A", "a", "A", connector("toB", [tcp(b)]))
    start_master(b, a)
    wait_up(a, "toB", "B")
    q, again = flow_with_kills(sc, [a], [b], [(500, a, a, [a])])
    # B's origin audit drops what A forwards again after its restart.
    e.check(not again, f"delivered twice at B after A's restart: {e.summarize(again)}")
    st = wait_up(a, "toB", "B")
    sc.env.result("kill_a_bridge", brief(st))
    check_pending(sc, "a", q, 0, "at the end")
    check_pending(sc, "b", q, 0, "at the end")


def sc_kill_b(sc):
    b = sc.broker("B", "b", "B")
    a = sc.broker("A", "a", "A", connector("toB", [tcp(b)]))
    start_master(b, a)
    wait_up(a, "toB", "B")
    q, _ = flow_with_kills(sc, [a], [b], [(500, b, b, [b])])
    st = wait_up(a, "toB", "B")
    sc.env.result("kill_b_bridge", brief(st))
    check_pending(sc, "a", q, 0, "at the end")
    check_pending(sc, "b", q, 0, "at the end")


def sc_kill_pairs(sc):
    b1 = sc.broker("B1", "b", "B")
    b2 = sc.broker("B2", "b", "B")
    peer = f"failover:({tcp(b1)},{tcp(b2)})?randomize=false"
    conn = connector("toB", [peer])
    a1 = sc.broker("A1", "a", "A", conn)
    a2 = sc.broker("A2", "a", "A", conn)
    start_master(b1, a1)
    b2.start()
    a2.start()
    b2.wait_standby(hold=0.3)
    a2.wait_standby(hold=0.3)
    wait_up(a1, "toB", "B")
    q, _ = flow_with_kills(sc, [a1, a2], [b1, b2],
                           [(400, b1, None, [b2]), (1000, a1, None, [a2])])
    st = wait_up(a2, "toB", "B")
    sc.env.result("kill_pairs_bridge", brief(st))
    check_pending(sc, "a", q, 0, "at the end")
    check_pending(sc, "b", q, 0, "at the end")


def set_ttl(b, ttl):
    """Replace networkTTL in b's --network-connector argument."""
    i = b.extra_args.index("--network-connector") + 1
    b.extra_args[i] = re.sub(r";networkTTL=\d+", f";networkTTL={ttl}", b.extra_args[i])


def sc_line(sc):
    c = sc.broker("C", "c", "C")
    b = sc.broker("B", "b", "B", connector("toC", [tcp(c)], ttl=1))
    a = sc.broker("A", "a", "A", connector("toB", [tcp(b)], ttl=1))
    start_master(c, b, a)
    wait_up(a, "toB", "B")
    wait_up(b, "toC", "C")
    q = sc.dest("queue", "q")
    cons = sc.consumer(c, q, "consumer-C")
    produce(sc, a, q, range(1, 21))
    cons.expect_nothing(3.0, "at C with networkTTL 1 (two hops away)")
    check_pending(sc, "a", q, 20, "with networkTTL 1")

    # TTL 2 on A only: the messages move to B and wait there (B's TTL 1).
    a.terminate()
    set_ttl(a, 2)
    a.start()
    a.wait_master()
    wait_bridge(a, "toB", lambda s: num(s, "mq-forwarded-out") >= 20
                and num(s, "mq-inflight-out") == 0, "done forwarding 20 to B", 20)
    cons.expect_nothing(3.0, "at C with networkTTL 1 on B")
    check_pending(sc, "a", q, 0, "with networkTTL 2 on A")
    check_pending(sc, "b", q, 20, "with networkTTL 1 on B")

    # TTL 2 on B too: they reach C, each once, through A and B.
    b.terminate()
    set_ttl(b, 2)
    b.start()
    b.wait_master()
    cons.collect(want=20, timeout=25)
    cons.collect(quiet=1.5, timeout=5)
    check_exact("A -> B -> C", [cons.got], range(1, 21))
    path = cons.frames[0].headers.get("mq-path")
    e.check(path == "A,B", f"message at C: mq-path {path!r}, want 'A,B'")
    check_pending(sc, "b", q, 0, "at the end")


def sc_ring(sc):
    pa, pb, pc = sc.env.port(), sc.env.port(), sc.env.port()
    url = {k: f"tcp://127.0.0.1:{p}" for k, p in (("a", pa), ("b", pb), ("c", pc))}
    a = sc.broker("A", "a", "A", connector("toB", [url["b"]], ttl=3), port=pa)
    b = sc.broker("B", "b", "B", connector("toC", [url["c"]], ttl=3), port=pb)
    c = sc.broker("C", "c", "C", connector("toA", [url["a"]], ttl=3), port=pc)
    start_master(a, b, c)
    wait_up(a, "toB", "B")
    wait_up(b, "toC", "C")
    wait_up(c, "toA", "A")

    q = sc.dest("queue", "q")
    cons = sc.consumer(c, q, "consumer-C")
    produce(sc, a, q, range(1, 51), name="producer-A")
    produce(sc, b, q, range(51, 101), name="producer-B")
    cons.collect(want=100, timeout=25)

    t = sc.dest("topic", "t")
    subs = [sc.consumer(x, t, f"topic-{x.name[-1]}", ack="auto") for x in (a, b, c)]
    warm_topic(sc, a, t, subs)
    produce(sc, a, t, range(1, 31), name="publisher-A")
    for s in subs:
        s.collect(want=30, timeout=15)
    cons.collect(quiet=2.0, timeout=5)
    for s in subs:
        s.collect(quiet=0.5, timeout=3)
    check_exact("ring queue -> C", [cons.got], range(1, 101))
    for s in subs:
        check_exact(f"ring topic -> {s.name}", [s.got], range(1, 31))

    def counters():
        out = {}
        for x, n in ((a, "toB"), (b, "toC"), (c, "toA")):
            st = bridges(x.port)[n]
            out[n] = (num(st, "mq-forwarded-out"), num(st, "mq-forwarded-in"))
        return out
    before = counters()
    time.sleep(2.0)
    after = counters()
    e.check(before == after, f"forwarded counters still moving (a loop?): {before} -> {after}")
    sc.env.result("ring_counters", after)
    for x in (a, b, c):
        check_pending(sc, x.name[-1].lower(), q, 0, "at the end")


def sc_duplex(sc):
    b = sc.broker("B", "b", "B")
    a = sc.broker("A", "a", "A", connector("toB", [tcp(b)], duplex=True))
    start_master(b, a)
    st = wait_up(a, "toB", "B")
    e.check(st.get("mq-duplex") in ("true", "1"), f"toB: mq-duplex {st.get('mq-duplex')!r}")
    e.check(bridges(b.port) == {}, f"B has bridges of its own: {bridges(b.port)}")
    qab, qba = sc.dest("queue", "ab"), sc.dest("queue", "ba")
    cb = sc.consumer(b, qab, "consumer-B")
    ca = sc.consumer(a, qba, "consumer-A")
    produce(sc, a, qab, range(1, 51), name="producer-A")
    produce(sc, b, qba, range(1, 51), name="producer-B")
    cb.collect(want=50, timeout=20)
    ca.collect(want=50, timeout=20)
    cb.collect(quiet=1.5, timeout=5)
    ca.collect(quiet=0.5, timeout=5)
    check_exact("duplex A -> B", [cb.got], range(1, 51))
    check_exact("duplex B -> A", [ca.got], range(1, 51))
    path = ca.frames[0].headers.get("mq-path")
    e.check(path == "B", f"message at A from B: mq-path {path!r}, want 'B'")
    st = wait_bridge(a, "toB", lambda s: num(s, "mq-forwarded-out") >= 50
                     and num(s, "mq-forwarded-in") >= 50, "counting both ways", 10)
    sc.env.result("duplex_bridge", brief(st))
    check_pending(sc, "a", qba, 0, "at the end")
    check_pending(sc, "b", qab, 0, "at the end")


class FakeServer(threading.Thread):
    """A TCP server on 127.0.0.1 that is not an mqbroker: 'garbage' answers
    any connection with non-STOMP bytes and closes it; 'stomp' answers
    CONNECT with a CONNECTED that has no mq-broker-name and ignores the rest."""

    def __init__(self, mode):
        super().__init__(daemon=True)
        self.mode = mode
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._halt = threading.Event()

    def stop(self):
        self._halt.set()

    def run(self):
        conns = []
        try:
            while not self._halt.is_set():
                try:
                    s, _ = self.sock.accept()
                except (socket.timeout, TimeoutError):
                    continue
                self.connections += 1
                if self.mode == "garbage":
                    try:
                        s.sendall(b"SSH-2.0-not-a-broker\r\n\x00\x01garbage\n\n\x00")
                    except OSError:
                        pass
                    s.close()
                    continue
                s.settimeout(2)
                data = e.read_until(s, b"\0", timeout=2)
                if data.startswith((b"CONNECT", b"STOMP")):
                    try:
                        s.sendall(b"CONNECTED\nversion:1.2\nheart-beat:0,0\n"
                                  b"server:fake/1.0\n\n\0")
                    except OSError:
                        pass
                conns.append(s)  # kept open, never answered again
                conns = conns[-32:]
        finally:
            for s in conns:
                s.close()
            self.sock.close()


def sc_bad_peer(sc):
    # The peer is down at start: the broker serves, the bridge waits.
    b_port = sc.env.port()
    a = sc.broker("A", "a", "A", connector("toB", [f"tcp://127.0.0.1:{b_port}"]))
    a.start()
    a.wait_master()
    st = wait_bridge(a, "toB", lambda s: s.get("mq-state") in ("connecting", "down"),
                     "connecting/down", 10)
    e.check(st.get("mq-state") != "up", f"toB is up with no peer: {brief(st)}")
    q = sc.dest("queue", "q")
    produce(sc, a, q, range(1, 11))
    b = sc.broker("B", "b", "B", port=b_port)
    b.start()
    b.wait_master()
    cons = sc.consumer(b, q, "consumer-B")
    cons.collect(want=10, timeout=20)
    cons.collect(quiet=1.0, timeout=5)
    check_exact("after the peer started", [cons.got], range(1, 11))
    wait_up(a, "toB", "B")

    # Peers that are not mqbrokers.
    garbage, fake = FakeServer("garbage"), FakeServer("stomp")
    for s in (garbage, fake):
        sc.threads.append(s)
        s.start()
    x = sc.broker("X", "c", "X",
                  connector("toGarbage", [f"tcp://127.0.0.1:{garbage.port}"])
                  + connector("toFake", [f"tcp://127.0.0.1:{fake.port}"]))
    x.start()
    x.wait_master()
    st = wait_bridge(x, "toFake", lambda s: s.get("mq-state") == "down"
                     and "mq-broker-name" in (s.get("mq-last-error") or ""),
                     "down with a last error about mq-broker-name", 15)
    sc.env.result("bad_peer_fake", brief(st))
    try:
        st = wait_bridge(x, "toGarbage", lambda s: s.get("mq-state") != "up"
                         and (s.get("mq-last-error") or "") != "",
                         "not up, with a last error", 15)
    except e.TestFailure as ex:
        e.fail(f"{ex} (the garbage server had {garbage.connections} connections)")
    sc.env.result("bad_peer_garbage", brief(st))
    e.check(garbage.connections >= 1 and fake.connections >= 1,
            f"the bridges never tried the fake peers ({garbage.connections}, "
            f"{fake.connections} connections)")
    # The broker keeps serving its own clients.
    lq = sc.dest("queue", "local")
    produce(sc, x, lq, range(1, 6))
    lc = sc.consumer(x, lq, "consumer-X")
    lc.collect(want=5, timeout=10)
    check_exact("local traffic on X", [lc.got], range(1, 6))
    e.check(x.alive(), "X died next to a peer that is not a broker")


def sc_bad_config(sc):
    env = sc.env
    store = sc.store("a")
    port = env.port()

    def run(args, cfg_lines=None):
        argv = [env.broker_path]
        path = None
        if cfg_lines is not None:
            path = os.path.join(env.workdir, f"bad-{random.randrange(16**6):06x}.conf")
            with open(path, "w") as f:
                f.write("\n".join([f"store = {store}", f"listen = 127.0.0.1:{port}"]
                                  + cfg_lines) + "\n")
            argv += ["--config", path]
        else:
            argv += ["--store", store, "--listen", f"127.0.0.1:{port}"]
        argv += args
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            e.fail(f"mqbroker {args} {cfg_lines}: still running after 20 s (should refuse)")
        return r, path

    ok = "name=x;uri=static:(tcp://127.0.0.1:1)"
    cases = [  # (config lines, what stderr must name besides FILE:LINE)
        ([f"network-connector = {ok};bogus=1"], "bogus"),
        (["# a comment", f"network-connector = {ok};duplex=maybe"], "duplex"),
        ([f"network-connector = {ok};networkTTL=0"], "networkTTL"),
        ([f"network-connector = {ok}", f"network-connector = {ok}"], "x"),
        (["network-connector = name=y;uri=tcp://127.0.0.1:1"], "uri"),
        (["network-policy = queue=>;replayWhenNoConsumers=maybe"], "replayWhenNoConsumers"),
        (["network-policy = queue=>;colour=blue"], "colour"),
    ]
    for lines, word in cases:
        r, path = run([], lines)
        line = len(lines) + 2  # store and listen come first
        e.check(r.returncode != 0, f"config {lines}: mqbroker exited 0")
        e.check(f"{path}:{line}" in r.stderr and word in r.stderr,
                f"config {lines}: exit {r.returncode}, stderr does not name "
                f"{path}:{line} and {word!r}: {r.stderr.strip()[-400:]!r}")
    r, _ = run(["--network-connector", f"{ok};foo=bar"])
    e.check(r.returncode != 0 and "--network-connector #1" in r.stderr and "foo" in r.stderr,
            f"--network-connector with foo=bar: exit {r.returncode}, stderr "
            f"{r.stderr.strip()[-400:]!r}")
    r, _ = run(["--network-policy", "queue=>;enableAudit=sometimes"])
    e.check(r.returncode != 0 and "--network-policy #1" in r.stderr,
            f"--network-policy with a bad value: exit {r.returncode}, stderr "
            f"{r.stderr.strip()[-400:]!r}")
    r, _ = run(["--broker-name", "bad name!"])
    e.check(r.returncode != 0 and "broker-name" in r.stderr,
            f"--broker-name 'bad name!': exit {r.returncode}, stderr {r.stderr.strip()[-400:]!r}")
    # Without --broker-name the name is the store's cluster option.
    d = env.broker(f"{sc.name}-noname", store_uri=sc.store("b"), cluster=sc.cluster("b"))
    sc.brokers.append(d)
    d.start()
    d.wait_master()
    raw = e.StompClient(d.port, name="raw")
    raw.open()
    f = raw.connect()
    raw.close()
    e.check(f.headers.get("mq-broker-name") == sc.cluster("b"),
            f"default broker name {f.headers.get('mq-broker-name')!r}, want the cluster "
            f"{sc.cluster('b')!r}")
    # A valid setup starts and logs its name and policy.
    b = sc.broker("ok", "a", "Good.Name-1:x", policy(REPLAY_ON) + connector(
        "toNowhere", [f"tcp://127.0.0.1:{env.port()}"]), port=port)
    b.start()
    b.wait_master()
    text = b.log_text()
    e.check("Good.Name-1:x" in text, "the broker name is not logged at start")
    e.check(re.search(r"network policy queue=>.*replayWhenNoConsumers=true", text),
            "the network policy is not logged at start")


SCENARIOS = [
    ("forward", sc_forward), ("replay_duplex", sc_replay_duplex),
    ("replay_two", sc_replay_two), ("replay_off", sc_replay_off),
    ("local_first", sc_local_first), ("durable", sc_durable), ("auth", sc_auth),
    ("backlog", sc_backlog),
    ("kill_a", sc_kill_a), ("kill_b", sc_kill_b), ("kill_pairs", sc_kill_pairs),
    ("line", sc_line), ("ring", sc_ring), ("duplex", sc_duplex),
    ("bad_peer", sc_bad_peer), ("bad_config", sc_bad_config),
]


def main(env):
    only = [s for s in (env.args.only or "").split(",") if s]
    names = [n for n, _ in SCENARIOS]
    for s in only:
        e.check(s in names, f"--only: no scenario {s!r} (have {', '.join(names)})")
    failed, timings = [], {}
    for name, fn in SCENARIOS:
        if only and name not in only:
            continue
        e.log(f"==== scenario {name}")
        sc = Scenario(env, name)
        try:
            fn(sc)
            sc.stop_clean()
            e.log(f"==== scenario {name}: PASS ({time.monotonic() - sc.t0:.1f} s)")
        except (e.TestFailure, e.StompErrorFrame, e.ConnectionClosed, Exception) as ex:
            failed.append(name)
            print(f"\nFAIL scenario {name}: {ex}", file=sys.stderr, flush=True)
            if not isinstance(ex, e.TestFailure):
                import traceback
                traceback.print_exc()
            for b in sc.brokers:
                print(f"--- {b.name} log ({b.log_path}), last lines:\n{b.log_tail(30)}",
                      file=sys.stderr, flush=True)
        finally:
            sc.close()
            timings[name] = round(time.monotonic() - sc.t0, 1)
    env.result("seconds", timings)
    e.check(not failed, f"scenarios failed: {', '.join(failed)}")


if __name__ == "__main__":
    e.Env("bridge", __doc__.split("\n")[0], extra_args=[
        (["--store-uri-b"], {"default": None,
                             "help": "broker B's store (default: derived from --store-uri)"}),
        (["--store-uri-c"], {"default": None,
                             "help": "broker C's store (default: derived from --store-uri)"}),
        (["--only"], {"default": None, "help": "comma-separated scenarios to run"}),
    ]).run(main)
