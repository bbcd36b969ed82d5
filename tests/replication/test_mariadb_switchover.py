#!/usr/bin/python3
"""mqbroker master + standby through a planned MariaDB switchover.

The store is a MariaDB primary with a semi-synchronous GTID replica
(tests/db/mariadb-replica.sh, 127.0.0.1:53350 and 53351). 4 producers send
with receipts, 2 consumers ACK (ack=client) with receipts, against broker-a
(master) and broker-b (standby) on the primary. Mid-stream the operator's
switchover runs (the primary goes read_only, the replica executes
everything, leaves replication and becomes writable), and the brokers are
restarted on the replica's URI the way an operator repoints them: first the
standby, then the old master. Then:

- every message that got a RECEIPT is delivered;
- no message is delivered after the RECEIPT of its ACK;
- exactly one broker is master, and the lock row names its token; fencing
  tokens only increase (the new master's is the old one's + 1);
- no broker takes over on the new primary before the old master's lease
  (replicated with the lock row) could have ended: the crash detector must
  not fire on a server where the old master's GET_LOCK never existed;
- the pause is measured: switchover start -> first RECEIPT after it.

At the end the master is killed (-9) and the other broker takes over on the
new primary (the crash detector works there again) and delivers what is
left; nothing whose ACK was confirmed may come back.

Needs MQSTORE_TEST_MARIADB_REPLICA=1 (else exit 77; with
MQSTORE_REQUIRE_SERVERS=1 exit 1, also when the pair cannot start). The test
starts and stops its own pair (MQS_MARIADB_PRIMARY_PORT /
MQS_MARIADB_REPLICA_PORT move it).
"""
import datetime
import os
import re
import subprocess
import sys
import time
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import replica as r  # noqa: E402  (Workload, lock_status, master_tokens)
from replica import e  # noqa: E402

SCRIPT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "..", "db", "mariadb-replica.sh"))
# Set on the URI so the checks below do not depend on the library's defaults.
LEASE_MS = 2000
RENEW_MS = 500
# "2026-12-03T11:50:02.182Z INFO  master (token 1): ..."
STAMPED_MASTER_RE = re.compile(r"^(\S+Z) \S+\s+master \(token (\d+)\)", re.M)


def required():
    return bool(os.environ.get("MQSTORE_REQUIRE_SERVERS")) or os.environ.get("CI") == "true"


def gate():
    """Exit 77 (skip) unless MQSTORE_TEST_MARIADB_REPLICA=1; when server
    tests are required (MQSTORE_REQUIRE_SERVERS, CI=true) exit 1 instead."""
    if os.environ.get("MQSTORE_TEST_MARIADB_REPLICA") == "1":
        return
    if required():
        print("MQSTORE_TEST_MARIADB_REPLICA is not 1 but server tests are required "
              "(MQSTORE_REQUIRE_SERVERS/CI): set MQSTORE_TEST_MARIADB_REPLICA=1",
              file=sys.stderr)
        sys.exit(1)
    print("MQSTORE_TEST_MARIADB_REPLICA is not 1: skipping (the test starts its own "
          "MariaDB primary + replica on 127.0.0.1:53350-53351 with "
          "tests/db/mariadb-replica.sh)")
    sys.exit(77)


def pair(*args, timeout=120):
    p = subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"mariadb-replica.sh {' '.join(args)} failed "
                           f"({p.returncode}): {p.stderr.strip()[-2000:]}")
    return p.stdout.strip(), p.stderr.strip()


def pair_stop():
    try:
        pair("stop", timeout=150)
    except Exception as ex:  # cleanup: report, never mask the verdict
        print(f"warning: stopping the MariaDB pair: {ex}", file=sys.stderr)


def repoint(uri, new_server_uri):
    """uri (with its options) on the host:port of new_server_uri."""
    old, new = urlsplit(uri).netloc, urlsplit(new_server_uri).netloc
    return uri.replace(f"@{old.split('@')[-1]}/", f"@{new.split('@')[-1]}/", 1)


def master_terms(broker):
    """[(monotonic time, token)] of every 'master (token N)' line of the
    broker's whole log; the log's wall-clock stamps are mapped onto this
    process's monotonic clock (same host)."""
    off = time.monotonic() - time.time()
    out = []
    for m in STAMPED_MASTER_RE.finditer(broker.log_text(whole=True)):
        wall = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        out.append((wall + off, int(m.group(2))))
    return out


def set_store(env, broker, uri):
    # Both places: mqe2e's Broker reads its own store_uri where it has one,
    # env.store_uri otherwise; lock_status and stats read env.store_uri.
    env.store_uri = uri
    broker.store_uri = uri


def main(env, replica_uri):
    a_ = env.args
    dest = env.dest("queue", "switchover")
    a, b, ia, w, before = r.start_brokers_and_workload(env, dest, a_.before, "switchover",
                                                       ", on the primary")

    t_sw = time.monotonic()
    new_uri, out = pair("switchover", timeout=60)
    t_switched = time.monotonic()
    e.check(urlsplit(new_uri).port == urlsplit(replica_uri).port,
            f"switchover printed {new_uri}, expected the replica node's URI {replica_uri}")
    for line in out.splitlines():
        e.log(f"  {line}")
    m = re.search(r"semi-sync (\w+), (\d+) commits acknowledged by the replica, (\d+) not", out)
    if m:
        env.result("semisync_at_switchover", m.group(1))
        env.result("semisync_acked_commits", int(m.group(2)))
        env.result("semisync_unacked_commits", int(m.group(3)))
    e.log(f"switchover took {(t_switched - t_sw) * 1000:.0f} ms")
    env.result("switchover_ms", round((t_switched - t_sw) * 1000))

    # The operator repoints the brokers at the new primary: the standby
    # first, then the old master. Why this is safe: the lock row reached the
    # replica like every other commit, naming broker-a, its token and its
    # lease end (by the old primary's clock; both run on this host).
    # GET_LOCK is not replicated and the new server's start time (the
    # session epoch) differs, so the crash detector cannot hand the lock
    # over: only the lease can, once it ended by the new primary's clock,
    # and that takeover makes the token +1. Meanwhile the old master commits
    # nothing (its server is read-only) and steps down when its local lease
    # ends; had it reached the new primary before that, each of its writes
    # would still fail the fence there (holder and token checked in the
    # transaction that commits).
    new_store = repoint(env.store_uri, new_uri)
    t_r0 = time.monotonic()
    b.terminate()
    set_store(env, b, new_store)
    b.start()
    rc_a = a.terminate(timeout=20, expect_clean=False)
    set_store(env, a, new_store)
    a.start()
    env.result("old_master_exit_status", rc_a)
    e.log(f"brokers restarted on {e.mask_uri(new_store)} in "
          f"{(time.monotonic() - t_r0) * 1000:.0f} ms (broker-a exited with {rc_a})")

    # Wait for traffic on the new primary: a RECEIPT after the switchover.
    end = t_switched + 30
    while time.monotonic() < end and not w.receipts_between(t_switched, float("inf")):
        time.sleep(0.01)
    e.check(w.receipts_between(t_switched, float("inf")),
            "no SEND was receipted within 30 s of the switchover: the brokers did not "
            "come back on the new primary")

    # Who became master on the new primary, and when (its log line's stamp).
    new_terms = []
    end = time.monotonic() + 10
    while not new_terms and time.monotonic() < end:
        new_terms = [(t, tok, x) for x in (a, b) for t, tok in master_terms(x) if t > t_r0]
        time.sleep(0.05)
    e.check(new_terms, "a RECEIPT came after the switchover, yet no broker logged "
                       "'master (token N)' after the restart")
    t_master, tok_new, new_master = min(new_terms, key=lambda x: x[0])
    env.result("new_master_after_ms", round((t_master - t_sw) * 1000))
    e.log(f"{new_master.name} master on the new primary (token {tok_new}) "
          f"{(t_master - t_sw) * 1000:.0f} ms after the switchover started")
    # The pause: the first RECEIPT of a commit on the new primary, i.e. in
    # the new term (50 ms slack for the log stamp, in ms, against this
    # clock). Nothing can commit anywhere between read_only and that term
    # (200 ms for RECEIPTs of commits made before read_only to arrive).
    t_new = max(t_switched, t_master - 0.05)
    first = w.receipts_between(t_new, float("inf"))[0]
    pause_ms = (first - t_sw) * 1000
    env.result("pause_ms", round(pause_ms))
    e.log(f"first RECEIPT on the new primary {pause_ms:.0f} ms after the switchover started")
    limbo = w.receipts_between(t_switched + 0.2, t_new)
    e.check(not limbo, f"{len(limbo)} RECEIPTs arrived between the switchover and the new "
                       f"master's term, when no server could commit")
    e.check(tok_new == ia["token"] + 1,
            f"the new master's token is {tok_new}, broker-a's term was {ia['token']}: "
            f"a takeover must add exactly 1 to the replicated token")
    # broker-a's last renewal started at most renew_ms before read_only, so
    # its lease ran at least lease - renew after the switchover's start. A
    # term earlier than that is a takeover on the crash detector.
    floor = LEASE_MS - RENEW_MS - 100
    e.check((t_master - t_sw) * 1000 >= floor,
            f"{new_master.name} became master {(t_master - t_sw) * 1000:.0f} ms after the "
            f"switchover started, before broker-a's lease could have ended (>= {floor} ms): "
            f"a takeover on the crash detector on the new primary")

    time.sleep(a_.after)
    w.stop_producers()
    receipted = set(w.receipted)
    w.wait_delivered(receipted, 20)
    time.sleep(1.0)  # late redeliveries, if any, show up now
    w.stop_consumers()
    w.check_threads()

    with w.mu:
        deliveries = list(w.deliveries)
        acked = dict(w.acked)
    delivered = {seq for _, seq, _, _, _ in deliveries}
    bad_body = sorted({seq for _, seq, _, _, ok in deliveries if not ok})
    again = sorted({seq for t, seq, _, _, _ in deliveries if seq in acked and t > acked[seq]})
    lost = sorted(receipted - delivered)
    unknown = set(w.sent) - receipted
    env.result("sent", len(w.sent))
    env.result("receipted", len(receipted))
    env.result("receipted_before_switchover", before)
    env.result("unconfirmed_sends", len(unknown))
    env.result("unconfirmed_delivered", len(unknown & delivered))
    env.result("deliveries", len(deliveries))
    env.result("acked", len(acked))
    env.result("redelivered_flagged", sum(1 for d in deliveries if d[2]))
    env.result("receipted_lost", len(lost))
    env.result("acked_delivered_again", len(again))
    env.result("send_errors", len(w.send_errors))
    e.log(f"sent {len(w.sent)}, receipted {len(receipted)}, {len(unknown)} unconfirmed "
          f"({len(unknown & delivered)} of them delivered), {len(deliveries)} deliveries, "
          f"{len(acked)} ACKs confirmed, {len(w.send_errors)} producer errors/disconnects")
    for t, msg in w.send_errors[:6]:
        e.log(f"  producer error at switchover{(t - t_sw) * 1000:+.0f} ms: {msg[:200]}")
    e.check(not bad_body, f"{len(bad_body)} messages delivered with a wrong body: "
                          f"{e.summarize(bad_body)}")
    e.check(not lost, f"{len(lost)} messages that got a RECEIPT were never delivered "
                      f"(lost in the switchover): {e.summarize(lost)}")
    e.check(not again, f"{len(again)} messages delivered again after the RECEIPT of "
                       f"their ACK: {e.summarize(again)}")

    # Exactly one master: one port open (a standby keeps its port closed),
    # both processes alive, the lock row names the master's token.
    states = {x.name: e.port_state(x.port) for x in (a, b)}
    open_ = [n for n, s in states.items() if s == "open"]
    e.check(a.alive() and b.alive(), f"a broker died: a alive={a.alive()}, "
                                      f"b alive={b.alive()}")
    e.check(len(open_) == 1, f"expected exactly one master, ports: {states}")
    master = a if open_ == ["broker-a"] else b
    e.check(master is new_master, f"{master.name} is master but {new_master.name} took "
                                  f"over after the switchover")
    # Tokens in the order they were handed out, over both brokers' logs.
    terms = sorted(master_terms(a) + master_terms(b))
    tokens = [tok for _, tok in terms]
    e.check(all(x < y for x, y in zip(tokens, tokens[1:])),
            f"fencing tokens did not only increase: {terms}")
    ls = r.lock_status(env)
    e.check(ls["token"] == tokens[-1] == r.master_tokens(master)[-1],
            f"lock row on the new primary: token {ls['token']}, terms {tokens}, "
            f"{master.name}'s last {r.master_tokens(master)[-1]}: the master's term must be "
            f"the newest")
    env.result("master", master.name)
    env.result("tokens", tokens)

    # Sweep: kill -9 the master; the other broker takes over at once (the
    # crash detector, armed on the new primary by the new term) and delivers
    # what the store still holds. Nothing whose ACK was confirmed may be there.
    other = b if master is a else a
    terms_before = len(r.master_tokens(other))
    t_k = master.kill9()
    io = r.wait_new_term(other, terms_before)
    env.result("takeover_after_kill_ms", round((io["at"] - t_k) * 1000))
    c = env.client(other.port, "sweeper")
    c.subscribe(dest, "sweep", ack="client-individual",
                headers={"activemq.prefetchSize": "1000"})
    rest = c.drain(quiet=1.0, max_total=10)
    for m in rest:
        c.ack(m, receipt=True)
    rest_seqs = {e.seq_of(m) for m in rest}
    env.result("recovered_by_sweep", len(rest_seqs))
    bad = sorted(s for s in rest_seqs if s in acked)
    e.check(not bad, f"after the takeover {len(bad)} messages came back whose ACK had "
                     f"been confirmed: {e.summarize(bad)}")
    e.log(f"{other.name} took over in {(io['at'] - t_k) * 1000:.0f} ms after kill -9 "
          f"(token {io['token']}) and delivered {len(rest_seqs)} left in the store "
          f"({len(rest_seqs & unknown)} unconfirmed SENDs, "
          f"{len(rest_seqs & (delivered - set(acked)))} delivered with an unconfirmed ACK)")
    env.expect_store_pending(dest, 0, "after the sweep")
    other.terminate()


if __name__ == "__main__":
    gate()
    try:
        pair_stop()  # a pair left over by a killed run is replaced
        try:
            uri, _ = pair("start")
            replica_uri, _ = pair("uri-replica")
        except Exception as ex:
            print(f"{'FAIL' if required() else 'SKIP'} mariadb_switchover: cannot start "
                  f"the MariaDB primary + replica: {ex}", file=sys.stderr)
            sys.exit(1 if required() else 77)
        uri = e.with_option(uri, "lease_ms", str(LEASE_MS))
        uri = e.with_option(uri, "renew_ms", str(RENEW_MS))
        sys.argv += ["--store-uri", uri]
        env = e.Env("mariadb_switchover", __doc__, extra_args=[
            (["--before"], {"type": float, "default": 2.0,
                            "help": "seconds of traffic before the switchover"}),
            (["--after"], {"type": float, "default": 2.0,
                           "help": "seconds of traffic after the first receipt"}),
        ])
        env.run(lambda env_: main(env_, replica_uri))
    finally:
        pair_stop()
