#!/usr/bin/python3
"""Authentication and authorization (--users, --acl, --allow-anonymous).

  - `mqbroker --hash-password` makes a yescrypt hash from standard input;
  - a users file readable by others is refused at start (chmod 600 hint);
  - --acl without --users, and a non-loopback --listen without --users, are
    refused (exit 2) unless --allow-anonymous;
  - CONNECT without login: ERROR "authentication required"; a wrong
    passcode and an unknown user get the same "authentication failed";
  - rights follow the rules, with ActiveMQ wildcards ('*' one element, '>'
    the rest): SEND needs write, SUBSCRIBE needs read, ERROR names both;
  - frames pipelined behind CONNECT are handled once the login is checked;
  - a durable subscription belongs to its user: another user with the same
    client-id and name gets a subscription of its own;
  - 40 bad logins at once do not stall another client (the hash runs off
    the loop thread): its SEND round trips stay under --max-stall-ms;
  - no passcode appears in the broker's log.
"""
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402

PASS = {"alice": "alice-Pw-91", "bob": "bob-Pw-27", "carol": "carol-Pw-55"}
ACL = """# who   rights      pattern
alice   all         >
carol   all         >
bob     read        /queue/orders.>
bob     write       /topic/prices.*
anonymous read      /topic/public.>
"""


def hash_pw(env, pw):
    r = subprocess.run([env.broker_path, "--hash-password"], input=pw + "\n",
                       capture_output=True, text=True, timeout=30)
    e.check(r.returncode == 0 and r.stdout.startswith("$y$"),
            f"--hash-password: exit {r.returncode}, out {r.stdout!r}, err {r.stderr!r}")
    return r.stdout.strip()


def run_cfg(env, args):
    return subprocess.run([env.broker_path, "--store", env.store_uri] + args,
                          capture_output=True, text=True, timeout=30)


def expect_error(f, message, detail=None, what=""):
    e.check(f is not None and f.command == "ERROR" and f.headers.get("message") == message,
            f"{what}: expected ERROR '{message}', got {f!r}")
    if detail:
        e.check(detail in f.body.decode(errors="replace"),
                f"{what}: ERROR body {f.body!r} lacks {detail!r}")


def login(port, user, pw, name=None, extra=None):
    c = e.StompClient(port, name=name or user)
    c.open()
    h = {"login": user, "passcode": pw}
    h.update(extra or {})
    return c, c.connect(h, expect_ok=False)


def main(env):
    users = os.path.join(env.workdir, "users")
    with open(users, "w") as f:
        for u, pw in PASS.items():
            f.write(f"{u}:{hash_pw(env, pw)}\n")
    acl = os.path.join(env.workdir, "acl")
    with open(acl, "w") as f:
        f.write(ACL)

    os.chmod(users, 0o644)
    r = run_cfg(env, ["--users", users, "--listen", "127.0.0.1:1"])
    e.check(r.returncode != 0 and "chmod 600" in r.stderr,
            f"a world-readable users file was accepted: {r.returncode} {r.stderr!r}")
    os.chmod(users, 0o600)
    r = run_cfg(env, ["--acl", acl])
    e.check(r.returncode == 2 and "--acl needs --users" in r.stderr, f"--acl alone: {r.stderr!r}")
    r = run_cfg(env, ["--listen", "0.0.0.0:1"])
    e.check(r.returncode == 2 and "non-loopback" in r.stderr,
            f"0.0.0.0 without --users: {r.returncode} {r.stderr!r}")

    b = env.broker("broker", ["--users", users, "--acl", acl])
    b.start()
    b.wait_master()
    port = b.port

    c = e.StompClient(port, name="nologin")
    c.open()
    expect_error(c.connect(expect_ok=False), "authentication required", what="no login")
    c.close()
    c, f = login(port, "alice", "wrong")
    expect_error(f, "authentication failed", "wrong login or passcode", "wrong passcode")
    body_wrong = f.body
    c.close()
    c, f = login(port, "mallory", "x")
    expect_error(f, "authentication failed", what="unknown user")
    e.check(f.body == body_wrong, "unknown user and wrong passcode get different answers")
    c.close()

    # bob: read on /queue/orders.>, write on /topic/prices.*
    bob, f = login(port, "bob", PASS["bob"])
    e.check(f.command == "CONNECTED", f"bob: {f!r}")
    bob.subscribe("/queue/orders.eu.fr", "s1")
    try:
        bob.subscribe("/queue/other", "s2")
        e.fail("bob subscribed to /queue/other without read right")
    except e.StompErrorFrame as ex:
        expect_error(ex.frame, "access denied", "no read right on /queue/other", "bob read")
    bob.close()
    bob, f = login(port, "bob", PASS["bob"], "bob-2")
    bob.send("/topic/prices.eu", b"ok")
    for dest in ("/topic/prices.eu.fr", "/queue/orders.eu"):
        try:
            bob.send(dest, b"no")
            e.fail(f"bob sent to {dest} without write right")
        except e.StompErrorFrame as ex:
            expect_error(ex.frame, "access denied", f"no write right on {dest}", "bob write")
        bob.close()
        bob, f = login(port, "bob", PASS["bob"], "bob-3")
    bob.close()

    # Frames pipelined behind CONNECT wait for the login, then run.
    c = e.StompClient(port, name="pipelined")
    c.open()
    c.send_raw(e.encode_frame("CONNECT", {"accept-version": "1.2", "host": "x",
                                          "login": "alice", "passcode": PASS["alice"]}) +
               e.encode_frame("SEND", {"destination": "/queue/auth.p", "receipt": "r1",
                                       "persistent": "true"}, b"x"))
    f1, f2 = c.recv(10), c.recv(10)
    e.check(f1 is not None and f1.command == "CONNECTED" and f2 is not None and
            f2.command == "RECEIPT", f"pipelined CONNECT+SEND: {f1!r}, {f2!r}")
    c.close()

    # Durable subscriptions belong to their user.
    topic = "/topic/auth.dur"
    dur = {"client-id": "shared-id"}
    a, _ = login(port, "alice", PASS["alice"], extra=dur)
    a.subscribe(topic, "d", ack="client-individual",
                headers={"activemq.subscriptionName": "sub1"})
    a.disconnect()
    p, _ = login(port, "alice", PASS["alice"], "producer")
    p.send(topic, b"for-alice")
    p.disconnect()
    cc, _ = login(port, "carol", PASS["carol"], extra=dur)
    cc.subscribe(topic, "d", ack="client-individual",
                 headers={"activemq.subscriptionName": "sub1"})
    m = cc.recv_message(timeout=1.5)
    e.check(m is None, f"carol got alice's durable message {m!r}")
    cc.disconnect()
    a, _ = login(port, "alice", PASS["alice"], "alice-again", extra=dur)
    a.subscribe(topic, "d", ack="client-individual",
                headers={"activemq.subscriptionName": "sub1"})
    m = a.recv_message(timeout=10)
    e.check(m is not None and m.body == b"for-alice", f"alice's durable message: {m!r}")
    a.ack(m)
    a.disconnect()

    # Bad logins flood the verifier, not the loop.
    probe, _ = login(port, "alice", PASS["alice"], "probe")
    stop = threading.Event()

    def flood():
        end = time.monotonic() + 20
        n = 0
        while not stop.is_set() and time.monotonic() < end and n < 40:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(e.encode_frame("CONNECT", {"accept-version": "1.2",
                                                     "login": "alice", "passcode": "bad"}))
                s.recv(4096)
                s.close()
            except OSError:
                pass
            n += 1

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for t in threads:
        t.start()
    worst = 0.0
    t_end = time.monotonic() + 3
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        probe.send("/queue/auth.probe", b"p", persistent=False)
        worst = max(worst, time.monotonic() - t0)
    stop.set()
    for t in threads:
        t.join(30)
    probe.disconnect()
    e.log(f"probe SEND round trip while bad logins flood: worst {worst * 1000:.1f} ms")
    e.check(worst * 1000 < env.args.max_stall_ms,
            f"a client stalled {worst * 1000:.0f} ms while others failed to log in")

    b.terminate()
    text = b.log_text(whole=True)
    for u, pw in PASS.items():
        e.check(pw not in text, f"{u}'s passcode appears in the broker log")
    e.check("login as 'alice' refused" in text, "refused logins are not logged")


if __name__ == "__main__":
    e.Env("auth", __doc__, extra_args=[
        (["--max-stall-ms"], {"type": float, "default": 200.0,
                              "help": "worst SEND round trip allowed for another client "
                                      "during a bad-login flood (default %(default)s)"}),
    ]).run(main)
