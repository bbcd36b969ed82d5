#!/usr/bin/python3
"""STOMP over TLS (--tls-cert, --tls-key, --tls-ca).

Certificates are made by the test with the openssl tool (a throw-away CA,
a server and a client certificate). Then:

  - a key readable by others is refused at start; cert without key too;
  - Python's ssl module: CONNECT, SEND with receipt, a 1 MiB message both
    ways (many TLS records, partial writes), SUBSCRIBE, ACK;
  - python3-stomp (Connection12 with set_ssl) sends and receives;
  - `openssl s_client` gets CONNECTED for a CONNECT frame;
  - a plain-TCP client on the TLS port is closed and the broker logs why,
    while a TLS client keeps working;
  - with --tls-ca, a client without a certificate is refused and one with
    a certificate from that CA gets in.
"""
import os
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqe2e as e  # noqa: E402


def sh(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=60, **kw)
    e.check(r.returncode == 0, f"{args[0]} {args[1]}: {r.stderr.strip()[:300]}")
    return r


def make_certs(d):
    """CA, server (CN=localhost, SAN 127.0.0.1) and client certificates."""
    p = lambda n: os.path.join(d, n)  # noqa: E731
    sh(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=mqstore test CA", "-keyout", p("ca.key"), "-out", p("ca.pem")])
    ext = p("san.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", "client"):
        sh(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
            "-keyout", p(f"{who}.key"), "-out", p(f"{who}.csr")])
        sh(["openssl", "x509", "-req", "-in", p(f"{who}.csr"), "-CA", p("ca.pem"),
            "-CAkey", p("ca.key"), "-CAcreateserial", "-days", "2", "-extfile", ext,
            "-out", p(f"{who}.pem")])
        os.chmod(p(f"{who}.key"), 0o600)
    return p


class TlsStomp(e.StompClient):
    """mqe2e's client over an ssl socket."""

    def __init__(self, port, ctx, name):
        super().__init__(port, name=name)
        self.ctx = ctx

    def open(self):
        raw = socket.create_connection((self.host, self.port), timeout=5)
        self.sock = self.ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        return self


def client_ctx(p, cert=False):
    ctx = ssl.create_default_context(cafile=p("ca.pem"))
    if cert:
        ctx.load_cert_chain(p("client.pem"), p("client.key"))
    return ctx


def main(env):
    p = make_certs(env.workdir)
    os.chmod(p("server.key"), 0o644)
    r = subprocess.run([env.broker_path, "--store", env.store_uri, "--tls-cert",
                        p("server.pem"), "--tls-key", p("server.key"), "--listen",
                        "127.0.0.1:1"], capture_output=True, text=True, timeout=30)
    e.check(r.returncode != 0 and "chmod 600" in r.stderr,
            f"a world-readable TLS key was accepted: {r.stderr!r}")
    os.chmod(p("server.key"), 0o600)
    r = subprocess.run([env.broker_path, "--store", env.store_uri, "--tls-cert",
                        p("server.pem")], capture_output=True, text=True, timeout=30)
    e.check(r.returncode == 2 and "--tls-key" in r.stderr, f"cert alone: {r.stderr!r}")

    b = env.broker("tls", ["--tls-cert", p("server.pem"), "--tls-key", p("server.key"),
                           "--max-body", "2m"])
    b.start()
    b.wait_master()
    q = env.dest("queue", "tls")
    ctx = client_ctx(p)

    c = TlsStomp(b.port, ctx, "py-ssl").open()
    c.connect()
    big = os.urandom(1 << 20)
    c.send(q, b"small")
    c.send(q, big)
    c.subscribe(q, "s", ack="client-individual")
    m1, m2 = c.recv_message(10), c.recv_message(10)
    e.check(m1 is not None and m1.body == b"small", f"first message over TLS: {m1!r}")
    e.check(m2 is not None and m2.body == big, "the 1 MiB message came back damaged")
    c.ack(m1)
    c.ack(m2)
    e.log("python ssl: CONNECT, SEND, 1 MiB both ways, ACK")

    # A plain client on the TLS port: closed, logged; TLS clients unharmed.
    s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
    s.sendall(e.encode_frame("CONNECT", {"accept-version": "1.2", "host": "x"}))
    s.settimeout(5)
    try:
        data = s.recv(4096)
    except OSError:
        data = b""
    s.close()
    e.check(b"CONNECTED" not in data, "a plain-TCP client got CONNECTED on the TLS port")
    c.send(q, b"after-plain")
    time.sleep(0.3)
    e.check("TLS handshake failed" in b.log_text(), "the refused plain client is not logged")
    c.disconnect()

    import stomp  # python3-stomp

    got = []

    class L(stomp.ConnectionListener):
        def on_message(self, frame):
            got.append(frame.body)

    conn = stomp.Connection12([("127.0.0.1", b.port)])
    conn.set_ssl(for_hosts=[("127.0.0.1", b.port)], ca_certs=p("ca.pem"))
    conn.set_listener("l", L())
    conn.connect(wait=True)
    conn.subscribe(q, id="1", ack="auto")
    conn.send(q, "via-stomp.py")
    end = time.monotonic() + 10
    while time.monotonic() < end and "via-stomp.py" not in [str(x) for x in got]:
        time.sleep(0.05)
    conn.disconnect()
    e.check("via-stomp.py" in [str(x) for x in got], f"python3-stomp over TLS got {got}")
    e.log("python3-stomp over TLS: send and receive")

    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{b.port}",
                        "-CAfile", p("ca.pem"), "-quiet", "-verify_return_error"],
                       input="CONNECT\naccept-version:1.2\nhost:x\n\n\0DISCONNECT\n\n\0",
                       capture_output=True, text=True, timeout=30)
    e.check("CONNECTED" in r.stdout, f"openssl s_client: {r.stdout[:200]!r} {r.stderr[:300]!r}")
    e.log("openssl s_client: CONNECTED")
    b.terminate()

    b2 = env.broker("mtls", ["--tls-cert", p("server.pem"), "--tls-key", p("server.key"),
                             "--tls-ca", p("ca.pem")])
    b2.start()
    b2.wait_master()
    try:
        x = TlsStomp(b2.port, client_ctx(p), "no-cert").open()
        x.connect()
        e.fail("a client without a certificate got in with --tls-ca")
    except (ssl.SSLError, OSError, e.TestFailure, e.ConnectionClosed):
        pass
    y = TlsStomp(b2.port, client_ctx(p, cert=True), "with-cert").open()
    y.connect()
    y.send(q, b"mtls")
    y.disconnect()
    e.log("--tls-ca: without a client certificate refused, with one accepted")
    b2.terminate()


if __name__ == "__main__":
    e.Env("tls", __doc__).run(main)
