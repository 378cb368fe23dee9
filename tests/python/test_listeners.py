"""Per-listener options with real clients: a real HAProxy in front of Quay sending the
PROXY protocol (v2 to the TCP and SSL listeners, v1 to the WebSocket one) and the
client's real address in `emqx_ctl clients show`; broken and missing headers closed and
counted; `access.N` rules by source address (clients bound to 127.0.0.x); a
`max_conn_rate` that paces a burst; mountpoints with paho clients; and
`emqx_ctl listeners` list / stop / restart.
"""

import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import HOST, free_port, port_accepts
from helpers import stop_process, V5, Client, unique_id, wait_until
from rawmqtt import CONNACK, Closed, RawClient, connect as raw_connect
from test_flow_control import metric
from test_tls import certs, ssl_overrides  # noqa: F401 (the certs fixture)

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class SourcedClient(RawClient):
    """A raw MQTT client whose socket is bound to a given loopback source address."""

    def __init__(self, port, source, version=4, timeout_s=5):
        self.version = version
        self.sock = socket.create_connection((HOST, port), timeout=timeout_s, source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()


def paho_from(source, port, **kwargs):
    """A paho client (helpers.Client) that connects from `source`."""
    c = Client(port, **kwargs)
    connect = c.c.connect
    c.c.connect = lambda host, port, keepalive=60, **kw: connect(host, port, keepalive, bind_address=source, **kw)
    return c


def ctl_ok(broker, *args):
    assert wait_until(lambda: broker.ctl("ping").returncode == 0, 10), "emqx_ctl cannot reach the node"
    r = broker.ctl(*args)
    assert r.returncode == 0, f"{args}: {r.stdout}{r.stderr}"
    return r.stdout


def peer_of(broker, client_id):
    out = ctl_ok(broker, "clients", "show", client_id)
    assert "peername=" in out, out
    return out.split("peername=")[1].split(",")[0]


class HAProxy:
    """A real haproxy (`mode tcp`) on loopback: one frontend per (name, target port,
    send-proxy option), written to a generated config, run in the foreground."""

    def __init__(self, routes):
        self.dir = Path(tempfile.mkdtemp(prefix="quay-haproxy-", dir="/tmp"))
        self.ports = {}
        lines = [
            "global",
            "  maxconn 256",
            "defaults",
            "  mode tcp",
            "  timeout connect 5s",
            "  timeout client 60s",
            "  timeout server 60s",
        ]
        for name, target, option in routes:
            port = free_port()
            self.ports[name] = port
            lines += [
                f"frontend fe_{name}",
                f"  bind {HOST}:{port}",
                f"  default_backend be_{name}",
                f"backend be_{name}",
                f"  server quay {HOST}:{target} {option}",
            ]
        self.config = self.dir / "haproxy.cfg"
        self.config.write_text("\n".join(lines) + "\n")
        self.log = open(self.dir / "haproxy.log", "wb")
        self.proc = subprocess.Popen(
            [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(self.config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        ok = wait_until(lambda: all(port_accepts(p) for p in self.ports.values()) or self.proc.poll() is not None, 10)
        assert ok and self.proc.poll() is None, f"haproxy did not start: {(self.dir / 'haproxy.log').read_text()}"

    def close(self):
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def haproxy():
    made = []

    def make(routes):
        h = HAProxy(routes)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_haproxy_v2_v1_real_client_address_over_tcp_ssl_and_ws(broker_factory, haproxy, certs):  # noqa: F811
    broker = broker_factory(
        {
            **ssl_overrides(certs),
            "listener.tcp.external.proxy_protocol": "on",
            "listener.ssl.external.proxy_protocol": "on",
            "listener.ws.external.proxy_protocol": "on",
        }
    )
    ha = haproxy(
        [
            ("tcp_v2", broker.port, "send-proxy-v2"),
            ("tcp_v1", broker.port, "send-proxy"),
            ("ssl_v2", broker.ssl_port, "send-proxy-v2"),
            ("ws_v1", broker.ws_port, "send-proxy"),
        ]
    )
    # A subscriber on the internal listener (no PROXY protocol) sees what they publish.
    watcher = Client(broker.internal_port)
    watcher.connect()
    watcher.subscribe("via/#", qos=1)

    clients = [
        ("127.0.0.5", paho_from("127.0.0.5", ha.ports["tcp_v2"], client_id=unique_id("v2"), protocol=V5)),
        ("127.0.0.6", paho_from("127.0.0.6", ha.ports["tcp_v1"], client_id=unique_id("v1"))),
        (
            "127.0.0.7",
            paho_from("127.0.0.7", ha.ports["ssl_v2"], client_id=unique_id("ssl"),
                      tls={"ca_certs": str(certs["good"] / "cacert.pem")}),
        ),
        ("127.0.0.8", paho_from("127.0.0.8", ha.ports["ws_v1"], client_id=unique_id("ws"), transport="websockets")),
    ]
    try:
        for source, c in clients:
            # The TLS certificate names localhost/127.0.0.1; haproxy is on 127.0.0.1.
            c.connect()
            peer = peer_of(broker, c.client_id)
            assert peer.startswith(source + ":"), f"{c.client_id}: peername {peer}, wanted {source}"
            assert peer.split(":")[1] != "0"
            c.publish(f"via/{c.client_id}", b"hello", qos=1)
        watcher.wait_messages(len(clients))
        assert sorted(m.topic for m in watcher.messages) == sorted(f"via/{c.client_id}" for _, c in clients)
    finally:
        for _, c in clients:
            c.stop()
        watcher.stop()


def tls_connect_behind_header(port, header, cafile, client_id, timeout_s=5):
    """TLS by hand (memory BIOs) so that the PROXY header and the ClientHello leave in
    one send: the broker must hand what it read after the header to the handshake.
    Returns (the CONNACK's return code, the socket, left open)."""
    ctx = ssl.create_default_context(cafile=cafile)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(inc, out, server_hostname="localhost")
    deadline = time.monotonic() + timeout_s
    sock = socket.create_connection((HOST, port), timeout=timeout_s)
    try:

        def pump():
            if out.pending:
                sock.sendall(out.read())
            assert time.monotonic() < deadline, "TLS exchange timed out"
            chunk = sock.recv(65536)
            if not chunk:
                raise Closed("EOF during TLS")
            inc.write(chunk)

        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        sock.sendall(header + out.read())
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pump()
        tls.write(raw_connect(client_id))
        sock.sendall(out.read())
        got = b""
        while len(got) < 4:
            try:
                got += tls.read(4 - len(got))
            except ssl.SSLWantReadError:
                pump()
        assert got[0] == 0x20, got
        return got[3], sock
    except BaseException:
        sock.close()
        raise


def test_bytes_behind_the_header_in_the_same_segment(broker_factory, certs):  # noqa: F811
    broker = broker_factory(
        {**ssl_overrides(certs), "listener.tcp.external.proxy_protocol": "on",
         "listener.ssl.external.proxy_protocol": "on"}
    )
    header = b"PROXY TCP4 10.9.8.7 127.0.0.1 1234 1883\r\n"
    # Plain: header and CONNECT in one send.
    with RawClient(broker.port) as c:
        cid = unique_id("seg")
        c.send(header + raw_connect(cid))
        assert c.recv(5).type == CONNACK
        assert peer_of(broker, cid) == "10.9.8.7:1234"
    # TLS: header and ClientHello in one send (a v2 header this time).
    v2 = V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([10, 9, 8, 6, 127, 0, 0, 1]) + struct.pack(">HH", 4321, 8883)
    tid = unique_id("seg-tls")
    rc, sock = tls_connect_behind_header(broker.ssl_port, v2, str(certs["good"] / "cacert.pem"), tid)
    try:
        assert rc == 0
        assert peer_of(broker, tid) == "10.9.8.6:4321"
    finally:
        sock.close()


def test_access_rules_apply_to_the_proxied_address(broker_factory, haproxy):
    broker = broker_factory(
        {
            "listener.tcp.external.proxy_protocol": "on",
            "listener.tcp.external.access.1": "deny 127.0.0.9",
            "listener.tcp.external.access.2": "allow all",
        }
    )
    ha = haproxy([("v2", broker.port, "send-proxy-v2")])
    before = metric(broker, "client.access_denied")
    # haproxy connects from 127.0.0.1; the rule sees the client behind it.
    with SourcedClient(ha.ports["v2"], "127.0.0.9") as denied:
        denied.send(raw_connect(unique_id("d")))
        with pytest.raises(Closed):
            denied.recv(5)
    with SourcedClient(ha.ports["v2"], "127.0.0.10") as allowed:
        assert allowed.connect(unique_id("a"))["rc"] == 0
    assert metric(broker, "client.access_denied") == before + 1


def test_a_bad_or_late_proxy_header_is_closed_counted_and_others_go_on(broker_factory):
    broker = broker_factory(
        {"listener.tcp.external.proxy_protocol": "on", "listener.tcp.external.proxy_protocol_timeout": "1s"}
    )
    ctl_ok(broker, "status")
    before = metric(broker, "client.proxy_protocol.failed")
    # A good v1 header by hand: the client behind it is 10.1.2.3.
    good = RawClient(broker.port)
    good.send(b"PROXY TCP4 10.1.2.3 127.0.0.1 4567 1883\r\n")
    cid = unique_id("good")
    assert good.connect(cid)["rc"] == 0
    assert peer_of(broker, cid) == "10.1.2.3:4567"

    # Plain MQTT without a header, and garbage: closed at once.
    for junk in [raw_connect(unique_id("bare")), b"GET / HTTP/1.1\r\n\r\n", V2_SIGNATURE + b"\x27\x11\x00\x00"]:
        with RawClient(broker.port) as bad:
            bad.send(junk)
            waited, seen = bad.wait_closed(3)
            assert waited < 0.9 and seen == [], (junk, waited, seen)
    # Nothing at all: closed after proxy_protocol_timeout.
    with RawClient(broker.port) as silent:
        waited, _ = silent.wait_closed(5)
        assert 0.8 <= waited <= 3, waited
    # A v2 LOCAL header (a proxy's own health check) keeps the socket's address.
    local = RawClient(broker.port)
    local.send(V2_SIGNATURE + b"\x20\x00\x00\x00")
    lid = unique_id("local")
    assert local.connect(lid)["rc"] == 0
    assert peer_of(broker, lid).startswith("127.0.0.1:")

    assert metric(broker, "client.proxy_protocol.failed") >= before + 4
    # The connections before went on working through all of it.
    good.send(b"\xc0\x00")  # PINGREQ
    assert good.recv(5).type == 13
    listing = ctl_ok(broker, "listeners")
    block = listing.split("mqtt:tcp:external\n")[1]
    assert "{proxy_protocol," in block.split("mqtt:")[0], listing
    good.close()
    local.close()


def test_access_rules_by_source_address(broker_factory):
    broker = broker_factory(
        {
            "listener.tcp.external.access.1": "deny 127.0.0.7",
            "listener.tcp.external.access.2": "allow 127.0.0.0/24",
            "listener.tcp.external.access.3": "deny all",
        }
    )
    ctl_ok(broker, "status")
    before = metric(broker, "client.access_denied")
    with SourcedClient(broker.port, "127.0.0.7") as denied:
        denied.send(raw_connect(unique_id("d")))
        waited, seen = denied.wait_closed(3)
        assert seen == [] and waited < 1
    with SourcedClient(broker.port, "127.0.1.7") as outside:  # only deny all matches
        outside.send(raw_connect(unique_id("o")))
        with pytest.raises(Closed):
            outside.recv(3)
    with SourcedClient(broker.port, "127.0.0.8") as ok:
        assert ok.connect(unique_id("ok"))["rc"] == 0
    c = paho_from("127.0.0.9", broker.port)
    c.connect()
    c.stop()
    assert metric(broker, "client.access_denied") == before + 2
    assert "{access_denied,2}" in ctl_ok(broker, "listeners")


def test_max_conn_rate_paces_a_burst(broker_factory):
    rate, burst = 5, 15
    broker = broker_factory({"listener.tcp.external.max_conn_rate": rate})
    ctl_ok(broker, "status")
    time.sleep(1.2)  # the start-up probe's token is back
    times, errors = [], []
    lock = threading.Lock()
    start = time.monotonic()

    def one(i):
        try:
            with RawClient(broker.port, timeout_s=10) as c:
                c.send(raw_connect(f"rate-{i}"))
                p = c.recv(10)
                assert p.type == CONNACK and p.body[1] == 0
                with lock:
                    times.append(time.monotonic() - start)
                time.sleep(0.2)
        except Exception as e:  # noqa: BLE001 (reported below)
            with lock:
                errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(burst)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors, errors
    times.sort()
    assert len(times) == burst
    # One second's worth at once, then `rate` per second: none refused, all paced.
    assert times[rate - 1] < 0.8, times
    assert times[-1] >= (burst - rate) / rate * 0.8, times


def test_mountpoints_for_publish_subscribe_retained_and_will(broker_factory):
    broker = broker_factory({"listener.tcp.external.mountpoint": "dev/%c/"})
    watcher = Client(broker.internal_port)  # no mountpoint
    watcher.connect()
    watcher.subscribe("dev/#", qos=1)

    alpha = Client(broker.port, client_id="alpha", protocol=V5)
    alpha.connect()
    alpha.subscribe("cmd/+", qos=1)
    alpha.publish("up/1", b"x", qos=1)
    watcher.wait_messages(1)
    assert watcher.messages[0].topic == "dev/alpha/up/1"
    # In through the mountpoint, out without it.
    watcher.publish("dev/alpha/cmd/go", b"go", qos=1)
    alpha.wait_messages(1)
    assert alpha.messages[0].topic == "cmd/go" and alpha.messages[0].payload == b"go"
    # Another client's mountpoint is another tree.
    watcher.publish("dev/beta/cmd/go", b"not-for-alpha", qos=1)
    assert ctl_ok(broker, "subscriptions", "show", "alpha").count("dev/alpha/cmd/+") == 1

    # Retained: stored under the mountpoint, delivered without it.
    alpha.publish("state", b"on", qos=1, retain=True)
    assert wait_until(lambda: "dev/alpha/state" in ctl_ok(broker, "retainer", "topics"))
    alpha.unsubscribe("cmd/+")
    alpha.subscribe("state", qos=1)
    assert alpha.wait_messages(2)
    assert [m.topic for m in alpha.messages] == ["cmd/go", "state"]
    alpha.stop()

    # Will: published under the mountpoint when the client is lost.
    with RawClient(broker.port) as gamma:
        gamma.send(raw_connect("gamma", will={"topic": "status", "payload": b"lost", "qos": 1}))
        assert gamma.recv(5).type == CONNACK
    assert wait_until(lambda: any(m.topic == "dev/gamma/status" for m in watcher.messages))
    assert not any(m.payload == b"not-for-alpha" for m in alpha.messages)
    watcher.stop()


def test_zone_mountpoint_and_a_listener_override(broker_factory):
    broker = broker_factory({"zone.external.mountpoint": "zone/", "listener.ws.external.mountpoint": "ws/%u/"})
    watcher = Client(broker.internal_port)
    watcher.connect()
    watcher.subscribe("#", qos=1)
    tcp = Client(broker.port)
    tcp.connect()
    tcp.publish("t", b"1", qos=1)
    ws = Client(broker.ws_port, transport="websockets", username="u1")
    ws.connect()
    ws.publish("t", b"2", qos=1)
    watcher.wait_messages(2)
    assert sorted(m.topic for m in watcher.messages) == ["ws/u1/t", "zone/t"]
    for c in (watcher, tcp, ws):
        c.stop()


def listener_blocks(text):
    blocks, current = {}, None
    for line in text.splitlines():
        if not line.startswith(" "):
            current = line.strip()
            blocks[current] = {}
        else:
            key, _, value = line.partition(":")
            blocks[current][key.strip()] = value.strip()
    return blocks


def test_listeners_list_stop_and_restart(broker_factory):
    broker = broker_factory({"listener.tcp.external.max_connections": 100})
    ctl_ok(broker, "status")
    sub = Client(broker.port)
    sub.connect()
    sub.subscribe("l/t", qos=1)

    blocks = listener_blocks(ctl_ok(broker, "listeners"))
    assert set(blocks) == {"mqtt:tcp:external", "mqtt:tcp:internal", "mqtt:ssl:external", "mqtt:ws:external",
                           "mqtt:wss:external"}, blocks
    ext = blocks["mqtt:tcp:external"]
    assert ext["listen_on"] == f"{HOST}:{broker.port}"
    assert ext["acceptors"] == "8" and ext["max_conns"] == "100"
    assert ext["current_conn"] == "1" and ext["shutdown_count"] == "[]"

    r = broker.ctl("listeners", "stop", "mqtt:tcp:nosuch")
    assert r.returncode != 0 and 'No such listener "mqtt:tcp:nosuch"' in r.stdout, r.stdout

    out = ctl_ok(broker, "listeners", "stop", "mqtt:tcp:external")
    assert out == f"Stop mqtt:tcp:external listener on {HOST}:{broker.port} successfully.\n"
    # New connections are refused; the one already connected works on.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, broker.port), timeout=2).close()
    pub = Client(broker.internal_port)
    pub.connect()
    pub.publish("l/t", b"while-stopped", qos=1)
    sub.wait_messages(1)
    r = broker.ctl("listeners", "stop", "mqtt:tcp:external")
    assert r.returncode != 0 and "already stopped" in r.stdout, r.stdout
    assert listener_blocks(ctl_ok(broker, "listeners"))["mqtt:tcp:external"]["running"] == "false"

    # Restart by the older address form; a real client connects again.
    out = ctl_ok(broker, "listeners", "restart", f"mqtt:tcp:{HOST}:{broker.port}")
    assert out == "Restarted mqtt:tcp:external listener successfully.\n"
    again = Client(broker.port)
    again.connect()
    again.publish("l/t", b"after-restart", qos=1)
    sub.wait_messages(2)
    assert [m.payload for m in sub.messages] == [b"while-stopped", b"after-restart"]
    blocks = listener_blocks(ctl_ok(broker, "listeners"))
    assert blocks["mqtt:tcp:external"]["current_conn"] == "2"
    # The port alone names it too (EMQX 4's `listeners restart mqtt:tcp 1883`).
    assert "Restarted" in ctl_ok(broker, "listeners", "restart", "mqtt:tcp", str(broker.port))
    for c in (sub, pub, again):
        c.stop()
