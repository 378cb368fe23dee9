"""MQTT over WebSocket (`listener.ws.external`) and over WSS (`listener.wss.external`)
with real clients: paho with `transport="websockets"` (3.1.1 and 5.0) across
transports, a persistent session, large messages over many frames, hibernation;
raw sockets for what clients do not do on their own (two packets in one frame, one
packet over three frames, a text frame, plain HTTP, a wrong path, a silent client),
each closed, counted and noticed by nobody else.
"""

import socket
import time
from pathlib import Path

import pytest

import rawmqtt as mq
from conftest import HOST
from helpers import V5, V311, Client, connected, unique_id, wait_until
from rawws import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, RawWs, frame, upgrade_request
from test_flow_control import metric
from test_hibernate import assert_parks_and_wakes

REPO = Path(__file__).resolve().parents[2]
CA = REPO / "etc" / "certs" / "cacert.pem"


def ws_client(broker, secure=False, **kwargs):
    """A paho client over ws:// or wss:// (the development CA trusted)."""
    if secure:
        return Client(broker.wss_port, transport="websockets", tls={"ca_certs": str(CA)}, **kwargs)
    return Client(broker.ws_port, transport="websockets", **kwargs)


def raw_ws(broker, secure=False):
    return RawWs(broker.wss_port, tls_ca=CA) if secure else RawWs(broker.ws_port)


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
@pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5.0"])
def test_paho_over_websocket_publishes_and_subscribes_across_transports(broker, secure, protocol):
    ws_sub = ws_client(broker, secure, protocol=protocol)
    ws_sub.connect()
    ws_sub.subscribe("ws/to-ws", qos=1)
    tcp_sub = connected(broker.port, protocol=protocol)
    tcp_sub.subscribe("ws/to-tcp", qos=1)
    tcp_pub = connected(broker.port, protocol=protocol)
    ws_pub = ws_client(broker, secure, protocol=protocol)
    ws_pub.connect()
    try:
        # TCP -> WebSocket, WebSocket -> TCP, WebSocket -> WebSocket.
        tcp_pub.publish("ws/to-ws", b"from-tcp", qos=1)
        ws_pub.publish("ws/to-tcp", b"from-ws", qos=1)
        ws_pub.publish("ws/to-ws", b"ws-to-ws", qos=0)
        ws_sub.wait_messages(2)
        tcp_sub.wait_messages(1)
        assert sorted(m.payload for m in ws_sub.messages) == [b"from-tcp", b"ws-to-ws"]
        assert [m.payload for m in tcp_sub.messages] == [b"from-ws"]
    finally:
        for c in (ws_sub, tcp_sub, tcp_pub, ws_pub):
            c.disconnect()


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_large_messages_span_many_frames_both_ways(broker, secure):
    # 768 KiB (under the 1 MiB max_packet_size) goes out in 64 KiB frames; paho sends
    # its packet in frames of its own.
    big = bytes(range(256)) * 3072
    sub = ws_client(broker, secure, protocol=V5)
    sub.connect()
    sub.subscribe("ws/big", qos=1)
    pub = ws_client(broker, secure, protocol=V5)
    pub.connect()
    try:
        for i in range(3):
            pub.publish("ws/big", big[i:] + bytes([i]), qos=1)
        sub.wait_messages(3, timeout_s=30)
        assert [m.payload for m in sub.messages] == [big[i:] + bytes([i]) for i in range(3)]
    finally:
        sub.disconnect()
        pub.disconnect()


def test_a_persistent_websocket_session_survives_a_reconnect(broker):
    cid = unique_id("ws-persist")
    sub = ws_client(broker, client_id=cid, clean=False)
    sub.connect()
    sub.subscribe("ws/q", qos=1)
    sub.disconnect()
    pub = connected(broker.port)
    for i in range(50):
        pub.publish("ws/q", f"m{i}".encode(), qos=1)
    pub.disconnect()
    again = ws_client(broker, client_id=cid, clean=False)
    again.connect()
    try:
        assert again.session_present
        again.wait_messages(50)
        assert [m.payload for m in again.messages] == [f"m{i}".encode() for i in range(50)]
    finally:
        again.disconnect()


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_an_idle_websocket_connection_hibernates_and_wakes_with_its_session(broker_factory, secure):
    broker = broker_factory({"zone.external.hibernate_after": "500ms"})
    sub = ws_client(broker, secure, protocol=V5)
    sub.connect()
    sub.subscribe("hib/ws", qos=1)
    try:
        assert_parks_and_wakes(broker, sub, "hib/ws")
    finally:
        sub.disconnect()


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_packets_are_independent_of_frames(broker, secure):
    watcher = connected(broker.port)
    watcher.subscribe("raw/#", qos=0)
    with raw_ws(broker, secure) as ws:
        head = ws.upgrade()
        assert head.startswith("HTTP/1.1 101 "), head
        assert "Sec-WebSocket-Protocol: mqtt" in head
        # Two packets in one frame: CONNECT and SUBSCRIBE.
        ws.send_frame(BINARY, mq.connect("raw-ws") + mq.subscribe(1, [("raw/#", 0)]))
        connack = ws.recv_packet()
        assert connack.type == mq.CONNACK and mq.parse_connack(connack, 4)["rc"] == 0
        suback = ws.recv_packet()
        assert suback.type == mq.SUBACK and mq.parse_suback(suback, 4)["codes"] == [0]
        # One PUBLISH over three binary frames,
        publish = mq.publish("raw/split", b"x" * 300)
        for part in (publish[:1], publish[1:150], publish[150:]):
            ws.send_frame(BINARY, part)
        # and one as a fragmented message (first, continuation, last) with a ping inside.
        second = mq.publish("raw/fragmented", b"y" * 100)
        ws.send_frame(BINARY, second[:5], fin=False)
        ws.send_frame(PING, b"still-there")
        ws.send_frame(CONTINUATION, second[5:50], fin=False)
        ws.send_frame(CONTINUATION, second[50:], fin=True)
        assert ws.recv_frame() == (PONG, b"still-there")
        got = [mq.parse_publish(ws.recv_packet(), 4) for _ in range(2)]
        assert [(p["topic"], p["payload"]) for p in got] == [
            ("raw/split", b"x" * 300),
            ("raw/fragmented", b"y" * 100),
        ]
        # A Close frame is answered with a Close frame, then the broker closes.
        ws.send_frame(CLOSE, (1000).to_bytes(2, "big"))
        assert ws.recv_frame() == (CLOSE, (1000).to_bytes(2, "big"))
        ws.read_until_closed()
    watcher.wait_messages(2)
    assert sorted(m.topic for m in watcher.messages) == ["raw/fragmented", "raw/split"]
    watcher.disconnect()


def test_a_text_frame_is_closed_with_1003_and_nobody_else_notices(broker):
    """After CONNECT too, a frame the WebSocket layer refuses closes the connection,
    counted in client.transport.refused each time and logged once per interval."""
    healthy = ws_client(broker)
    healthy.connect()
    healthy.subscribe("text/#", qos=1)
    for i in range(3):
        with raw_ws(broker) as ws:
            ws.upgrade()
            ws.send_frame(BINARY, mq.connect(f"texter-{i}"))
            assert ws.recv_packet().type == mq.CONNACK
            ws.send_frame(TEXT, b'{"not": "mqtt"}')
            opcode, payload = ws.recv_frame()
            assert (opcode, payload[:2]) == (CLOSE, (1003).to_bytes(2, "big"))
            ws.read_until_closed()
    assert wait_until(lambda: metric(broker, "client.transport.refused") == 3, 5)
    lines = [l for l in broker.console_log.read_text().splitlines() if "the transport refused" in l]
    assert len(lines) == 1 and "client_id=texter-0" in lines[0], lines
    # (An unmasked client frame: test_a_bad_frame_before_connect_is_counted_...)
    pub = connected(broker.port)
    pub.publish("text/ok", b"still here", qos=1)
    healthy.wait_messages(1)
    assert healthy.disconnects == []
    pub.disconnect()
    healthy.disconnect()


def test_a_bad_frame_before_connect_is_counted_and_logged_once_per_interval(broker):
    """Frames the WebSocket layer refuses before CONNECT (unmasked, a protocol error)
    close the connection with 1002, are counted in client.transport.refused each time and logged
    once per interval with the listener and the peer."""
    before = metric(broker, "client.transport.refused")
    for _ in range(3):
        with raw_ws(broker) as ws:
            ws.upgrade()
            ws.send(bytes([0x82, 0x02, 0xC0, 0x00]))
            opcode, payload = ws.recv_frame()
            assert (opcode, payload[:2]) == (CLOSE, (1002).to_bytes(2, "big"))
            ws.read_until_closed()
    assert wait_until(lambda: metric(broker, "client.transport.refused") == before + 3, 5)
    lines = [l for l in broker.console_log.read_text().splitlines() if "closed before CONNECT" in l]
    assert len(lines) == 1, lines
    assert "listener=mqtt:ws:external" in lines[0] and "peer=127.0.0.1:" in lines[0], lines[0]


def http_exchange(port, request, timeout_s=5):
    """Send `request`, return all the broker answers before it closes."""
    with socket.create_connection((HOST, port), timeout=timeout_s) as s:
        s.sendall(request)
        data = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                return data
            data += chunk
        raise AssertionError(f"not closed within {timeout_s}s; got {data!r}")


def test_non_websocket_requests_get_http_errors_are_counted_and_nobody_else_notices(broker_factory):
    broker = broker_factory({"zone.external.idle_timeout": "1s"})
    healthy = ws_client(broker)
    healthy.connect()
    healthy.subscribe("bad/#", qos=1)
    before = metric(broker, "client.ws.handshake_failed")
    cases = [
        # A plain HTTP GET (no upgrade).
        (b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 426 "),
        # An upgrade on another path.
        (upgrade_request(path="/other"), b"HTTP/1.1 404 "),
        # MQTT spoken straight to the WebSocket port.
        (mq.connect("confused"), b"HTTP/1.1 400 "),
        # An upgrade offering no MQTT subprotocol (EMQX 4: refused).
        (upgrade_request(protocol="chat"), b"HTTP/1.1 400 "),
        (upgrade_request(protocol=None), b"HTTP/1.1 400 "),
    ]
    for request, status in cases:
        answer = http_exchange(broker.ws_port, request)
        assert answer.startswith(status), (request, answer)
        assert b"\x20\x02" not in answer
    # A client that never finishes its request: closed after idle_timeout.
    with socket.create_connection((HOST, broker.ws_port), timeout=5) as s:
        s.sendall(b"GET /mqtt HTTP/1.1\r\n")
        s.settimeout(5)
        started = time.monotonic()
        assert s.recv(1) == b""
        assert time.monotonic() - started < 4
    assert wait_until(lambda: metric(broker, "client.ws.handshake_failed") >= before + len(cases) + 1, 5)
    # Logged (at most once per interval) with the listener id, peer and reason.
    log = broker.console_log.read_text()
    assert "WebSocket upgrade refused" in log and "mqtt:ws:external" in log, log[-3000:]
    pub = ws_client(broker)
    pub.connect()
    pub.publish("bad/ok", b"still here", qos=1)
    healthy.wait_messages(1)
    assert healthy.disconnects == []
    pub.disconnect()
    healthy.disconnect()


def test_a_client_offering_no_subprotocol_is_accepted_when_configured(broker_factory):
    broker = broker_factory({"listener.ws.external.fail_if_no_subprotocol": "false",
                             "listener.ws.external.mqtt_path": "/custom"})
    with raw_ws(broker) as ws:
        head = ws.upgrade(upgrade_request(path="/custom", protocol=None))
        assert head.startswith("HTTP/1.1 101 "), head
        assert "Sec-WebSocket-Protocol" not in head
        ws.send_frame(BINARY, mq.connect("no-subprotocol"))
        assert ws.recv_packet().type == mq.CONNACK
    with raw_ws(broker) as ws:
        assert ws.upgrade(upgrade_request(path="/mqtt")).startswith("HTTP/1.1 404 ")


def test_the_listeners_are_named_as_emqx_names_them(broker):
    log = broker.console_log.read_text()
    for listener_id in ("mqtt:ws:external", "mqtt:wss:external"):
        assert listener_id in log, log[-3000:]


def rss_kib(broker):
    for line in Path(f"/proc/{broker.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
@pytest.mark.parametrize("connected_first", [False, True], ids=["before-connect", "after-connect"])
def test_a_ping_flood_from_a_client_that_never_reads_is_held_back(broker, connected_first, secure):
    """Every Ping gets its Pong, but a client that sends Pings and never reads the
    Pongs must be held back by the socket (the broker stops reading it), not grow
    the broker's memory by a Pong per Ping: before CONNECT nothing is written at all."""
    healthy = ws_client(broker)
    healthy.connect()
    healthy.subscribe("flood/#", qos=1)
    with raw_ws(broker, secure) as ws:
        # Small kernel buffers on our side: what the broker cannot write stays with it.
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ws.upgrade()
        if connected_first:
            ws.send_frame(BINARY, mq.connect("pinger", keepalive=60))
            assert ws.recv_packet().type == mq.CONNACK
        before = rss_kib(broker)
        ping = frame(PING, b"p" * 125)
        burst = ping * 512  # 67 KB
        sent = 0
        ws.sock.settimeout(2)
        try:
            while sent < 256 * 1024 * 1024:
                ws.sock.sendall(burst)
                sent += len(burst)
        except (TimeoutError, OSError):
            pass
        grown = rss_kib(broker) - before
        # Kernel buffers on both sides hold a few MB at most; the broker must not
        # have taken the rest.
        assert sent < 64 * 1024 * 1024, f"the broker read {sent >> 20} MB of Pings"
        assert grown < 32 * 1024, f"the broker grew by {grown >> 10} MB"
    pub = connected(broker.port)
    pub.publish("flood/ok", b"still here", qos=1)
    healthy.wait_messages(1)
    assert healthy.disconnects == []
    pub.disconnect()
    healthy.disconnect()
