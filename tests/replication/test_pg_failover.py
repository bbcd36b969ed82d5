#!/usr/bin/python3
"""mqbroker master + standby ride through a PostgreSQL failover.

The store is a PostgreSQL primary with a streaming standby
(tests/db/pg-replica.sh; synchronous replication unless --async), named by a
two-host URI with target_session_attrs=read-write. 4 producers send with
receipts, 2 consumers ACK (ack=client) with receipts. Mid-stream the primary
is killed with SIGKILL; after --promote-delay seconds (an HA manager's
detection time) the standby is promoted. Then:

- every message that got a RECEIPT is delivered (synchronous replication);
- no message is delivered after the RECEIPT of its ACK;
- exactly one broker is master at the end, and the lock row names its token;
  fencing tokens never repeat and the final one is the largest;
- with a promotion well inside the lease (--expect kept) the master keeps its
  role and the standby broker never takes over (the crash detector must not
  fire on a promoted standby, which has no advisory locks); with a promotion
  later than the lease (--expect lost) the master steps down with a log
  line that says why, and one broker is master again afterwards;
- the pause is measured: primary killed -> first RECEIPT after the promotion,
  and that minus the promotion delay.

--async runs the same against asynchronous replication and, instead of
failing, reports which receipted messages the failover lost and which
acked ones came back (with --stall-ms the primary's WAL sender is stopped
that long before the kill, so there is something to lose).

Needs MQSTORE_TEST_PG_REPLICA=1 (else exit 77; with MQSTORE_REQUIRE_SERVERS=1
exit 1): the test starts and stops its own pair on 127.0.0.1:55500-55501
(MQS_PGR_PORT moves it).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import replica as r  # noqa: E402
from replica import e  # noqa: E402

# Brokers renew every 500 ms with a 2,000 ms lease (the defaults; --lease-ms
# changes the lease), set on the URI so the checks below do not silently
# depend on the library's defaults.
LEASE_MS = 2000
RENEW_MS = 500


def main(env):
    a_ = env.args
    dest = env.dest("queue", "failover")
    a, b, ia, w, before = r.start_brokers_and_workload(env, dest, a_.before, "failover")

    if a_.stall_ms:
        # Consumers step away first: what is sent from now on lives only in
        # the primary's store (and the master broker's memory).
        w.consumers_away.set()
        time.sleep(0.3)
        pair.run("stall-standby")
        time.sleep(a_.stall_ms / 1000)
        e.log(f"standby stalled for {a_.stall_ms} ms; "
              f"{len(w.receipted) - before} more receipts meanwhile")
    wall = pair.run("kill-primary")
    # The script reports when it killed: on this process's monotonic clock.
    t_kill = time.monotonic() - (time.time() - float(wall))
    e.log("primary killed (SIGKILL)")
    if a_.kill_broker_too:
        # The master broker dies with the database (one site lost): the
        # standby broker must wait for the lease, since the crash detector
        # cannot tell a dead master from a promoted database.
        a.kill9()
    time.sleep(a_.promote_delay)
    t_promote = time.monotonic()
    pair.run("promote")
    t_promoted = time.monotonic()
    promotion_ms = (t_promoted - t_kill) * 1000
    e.log(f"standby promoted {promotion_ms:.0f} ms after the kill")
    w.consumers_away.clear()

    # The first RECEIPT for a write committed on the new primary: nothing
    # can commit anywhere between the kill and the promotion.
    end = t_promoted + 30
    first = None
    while time.monotonic() < end and first is None:
        after = w.receipts_between(t_promoted, float("inf"))
        first = after[0] if after else None
        time.sleep(0.01)
    e.check(first is not None, "no SEND was receipted within 30 s of the promotion: "
                               "the brokers did not ride through the failover")
    # 200 ms for RECEIPTs of commits made before the kill to arrive (a slow
    # CI host); the window still spans the whole gap to a promotion.
    limbo = w.receipts_between(t_kill + 0.2, t_promote)
    pause_ms = (first - t_kill) * 1000
    net_ms = (first - t_promoted) * 1000
    env.result("promotion_ms", round(promotion_ms))
    env.result("pause_ms", round(pause_ms))
    env.result("pause_minus_promotion_ms", round(net_ms))
    e.log(f"first RECEIPT {pause_ms:.0f} ms after the kill, {net_ms:.0f} ms after the "
          f"promotion")
    e.check(not limbo, f"{len(limbo)} RECEIPTs arrived between the kill (+200 ms) and "
                       f"the promotion, when no database could commit")

    time.sleep(a_.after)
    w.stop_producers()
    receipted = set(w.receipted)
    w.wait_delivered(receipted, 20 if not a_.asynchronous else 5)
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
    env.result("unconfirmed_sends", len(unknown))
    env.result("unconfirmed_delivered", len(unknown & delivered))
    env.result("deliveries", len(deliveries))
    env.result("redelivered_flagged", sum(1 for d in deliveries if d[2]))
    env.result("receipted_lost", len(lost))
    env.result("acked_delivered_again", len(again))
    env.result("send_errors", len(w.send_errors))
    e.log(f"sent {len(w.sent)}, receipted {len(receipted)}, {len(unknown)} unconfirmed "
          f"({len(unknown & delivered)} of them delivered), {len(deliveries)} deliveries, "
          f"{len(w.send_errors)} producer errors/disconnects")
    for t, msg in w.send_errors[:8]:
        e.log(f"  producer error at kill{(t - t_kill) * 1000:+.0f} ms: {msg[:200]}")
    # Messages still in the store: delivered, their ACK failed with the
    # primary (an ERROR frame: the COMMIT's outcome is unknown), and not
    # redelivered by the live master. Reported, not failed: nothing
    # receipted is lost (a later takeover delivers them), see the report.
    stranded = env.store_pending_dest(dest)
    env.result("store_pending_at_end", stranded)
    unacked = sorted(delivered - set(acked))
    env.result("delivered_ack_unconfirmed", len(unacked))
    if stranded:
        e.log(f"WARNING: {stranded} messages are still pending in the store after every "
              f"consumer went idle: delivered, ACK failed in the failover, never "
              f"redelivered (ACK unconfirmed: {e.summarize(unacked)})")
    e.check(not bad_body, f"{len(bad_body)} messages delivered with a wrong body: "
                          f"{e.summarize(bad_body)}")

    if a_.asynchronous:
        e.log(f"ASYNC: {len(lost)} receipted messages lost: {e.summarize(lost)}")
        e.log(f"ASYNC: {len(again)} messages delivered again after their ACK was "
              f"confirmed: {e.summarize(again)}")
    else:
        e.check(not lost, f"{len(lost)} messages that got a RECEIPT were never delivered "
                          f"(lost in the failover): {e.summarize(lost)}")
        e.check(not again, f"{len(again)} messages delivered again after the RECEIPT of "
                           f"their ACK: {e.summarize(again)}")

    # Exactly one master: one port open (a standby keeps its port closed),
    # both processes alive, and the lock row names the master's token.
    states = {x.name: e.port_state(x.port) for x in (a, b)}
    open_ = [n for n, s in states.items() if s == "open"]
    e.check((a.alive() or a_.kill_broker_too) and b.alive(),
            f"a broker died: a alive={a.alive()}, b alive={b.alive()}")
    e.check(len(open_) == 1, f"expected exactly one master, ports: {states}")
    master = a if open_ == ["broker-a"] else b
    if a_.kill_broker_too:
        e.check(master is b, "broker-a was killed, yet broker-b is not master")
        tb = r.master_tokens(b)
        e.log(f"broker-b took over after broker-a and the primary were killed "
              f"(token {tb[-1]})")
        # broker-a's lease ran at least lease - renew after the kill (its
        # last renewal started at most renew_ms before). A write committed
        # earlier would mean broker-b took over on the crash detector, which
        # must not fire across a database failover (the session it saw was
        # on another server instance).
        floor = LEASE_MS - RENEW_MS - 100
        e.check(a_.asynchronous or pause_ms >= floor,
                f"broker-b committed a write {pause_ms:.0f} ms after the kill, before "
                f"broker-a's lease could have ended (>= {floor} ms): a takeover on "
                f"the crash detector across a database failover")
    tok_a, tok_b = r.master_tokens(a), r.master_tokens(b)
    tokens = tok_a + tok_b
    e.check(len(set(tokens)) == len(tokens),
            f"a fencing token was handed out twice: broker-a {tok_a}, broker-b {tok_b}")
    ls = r.lock_status(env)
    final = r.master_tokens(master)[-1]
    e.check(ls["token"] == final == max(tokens),
            f"lock row token {ls['token']}, {master.name}'s last term {final}, all terms "
            f"{tokens}: the master's term must be the newest")
    env.result("master", master.name)
    env.result("tokens", tokens)
    lost_line = "lost the store lock"
    a_lost = lost_line in a.log_text(whole=True)
    if a_.expect == "kept":
        e.check(not a_lost and master is a and tok_a == [ia["token"]] and not tok_b,
                f"the promotion came {promotion_ms:.0f} ms after the kill, inside the "
                f"{LEASE_MS} ms lease, yet the master did not keep its role (broker-a "
                f"terms {tok_a}, lost line {'seen' if a_lost else 'absent'}; broker-b terms "
                f"{tok_b}): a false takeover or a stuck master")
        e.log("the master kept its role; the standby broker never took over")
        # Advisory locks do not replicate: the master must take its session
        # lock again on the new primary (the standby broker lets go of it),
        # so a later crash of the master is again detected at once.
        end = time.monotonic() + 3 * RENEW_MS / 1000 + 2
        while not ls["crash_detect"] and time.monotonic() < end:
            time.sleep(0.1)
            ls = r.lock_status(env)
        e.check(ls["crash_detect"], "the master did not re-arm the crash detector on the "
                                    "new primary (lock-status crash_detect false)")
    elif a_.expect == "lost":
        e.check(a_lost, f"the promotion came {promotion_ms:.0f} ms after the kill, past the "
                        f"{LEASE_MS} ms lease, yet broker-a never logged '{lost_line}'")
        line = [ln for ln in a.log_text(whole=True).splitlines() if lost_line in ln][0]
        e.log(f"broker-a stepped down: {line.strip()[:300]}")
        e.log(f"{master.name} is master now (token {final})")
    # What the live master left in the store: kill -9 it, the other broker
    # takes over and recovers the store; a consumer takes what it delivers.
    # Those must be messages whose SEND or ACK failed in the failover (an
    # outcome the clients were not told), never receipted-and-acked ones.
    other = b if master is a else a
    if not other.alive():  # --kill-broker-too: nobody left to sweep
        env.expect_store_pending(dest, stranded or 0, "at the end")
        master.terminate()
        return
    terms_before = len(r.master_tokens(other))
    t_k = master.kill9()
    io = r.wait_new_term(other, terms_before)
    env.result("takeover_after_ms", round((io["at"] - t_k) * 1000))
    c = env.client(other.port, "sweeper")
    c.subscribe(dest, "sweep", ack="client-individual",
                headers={"activemq.prefetchSize": "1000"})
    rest = c.drain(quiet=1.0, max_total=10)
    for m in rest:
        c.ack(m, receipt=True)
    rest_seqs = {e.seq_of(m) for m in rest}
    env.result("recovered_by_takeover", len(rest_seqs))
    bad = sorted(s for s in rest_seqs if s in acked)
    if a_.asynchronous:
        # An ACK committed only on the lost primary: its message is back.
        e.log(f"ASYNC: {len(bad)} messages came back at the next takeover whose ACK had "
              f"been confirmed: {e.summarize(bad)}")
        env.result("acked_back_after_takeover", len(bad))
        bad = []
    e.check(not bad, f"after a second takeover {len(bad)} messages came back whose ACK had "
                     f"been confirmed: {e.summarize(bad)}")
    e.log(f"{other.name} took over (token {io['token']}) and delivered {len(rest_seqs)} "
          f"left in the store: {len(rest_seqs & unknown)} unconfirmed SENDs, "
          f"{len(rest_seqs & set(unacked))} delivered with an unconfirmed ACK")
    env.expect_store_pending(dest, 0, "after the sweep")
    other.terminate()


if __name__ == "__main__":
    r.gate()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--async", dest="asynchronous", action="store_true")
    pre.add_argument("--lease-ms", type=int, default=LEASE_MS)
    known, _ = pre.parse_known_args()
    LEASE_MS = known.lease_ms
    pair = r.Pair(asynchronous=known.asynchronous)
    try:
        try:
            uri = pair.start()
        except Exception as ex:
            print(f"FAIL pg_failover: cannot start the PostgreSQL pair: {ex}",
                  file=sys.stderr)
            sys.exit(1)
        # Explicit lease and renewal: the --expect checks reason with them.
        uri = e.with_option(uri, "lease_ms", str(LEASE_MS))
        uri = e.with_option(uri, "renew_ms", str(RENEW_MS))
        sys.argv += ["--store-uri", uri]
        e.Env("pg_failover" + ("_async" if known.asynchronous else ""), __doc__,
              extra_args=[
                  (["--async"], {"dest": "asynchronous", "action": "store_true",
                                 "help": "asynchronous replication: report losses"}),
                  (["--promote-delay"], {"type": float, "default": 0.3,
                                         "help": "seconds between the kill and the "
                                                 "promotion (default %(default)s)"}),
                  (["--expect"], {"choices": ["kept", "lost", "any"], "default": "any",
                                  "help": "what the master must do: keep its role, "
                                          "lose it, or either (default %(default)s)"}),
                  (["--before"], {"type": float, "default": 2.0,
                                  "help": "seconds of traffic before the kill"}),
                  (["--after"], {"type": float, "default": 2.0,
                                 "help": "seconds of traffic after the first receipt"}),
                  (["--lease-ms"], {"type": int, "default": 2000,
                                    "help": "the brokers' lease (default %(default)s; "
                                            "renewal every 500 ms)"}),
                  (["--kill-broker-too"], {"action": "store_true",
                                           "help": "kill -9 the master broker right "
                                                   "after the primary"}),
                  (["--stall-ms"], {"type": int, "default": 0,
                                    "help": "stop the primary's WAL sender this long "
                                            "before the kill (for --async)"}),
              ]).run(main)
    finally:
        pair.stop()
