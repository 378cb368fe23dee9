"""Hibernation: idle connections park without a task and wake on whatever concerns them.

A connection quiet for `zone.<zone>.hibernate_after` with nothing pending (no unacked
QoS 1/2 delivery, no QoS 2 id awaiting PUBREL, nothing buffered) is parked on a shared
epoll set. It wakes on a packet, EOF/reset, a broker event (delivery, takeover, kick),
its keepalive deadline or graceful shutdown. `emqx_ctl broker stats` reports how many
connections hibernate now (`connections.hibernated`).

Every test first proves, through that counter, that the connection under test is
hibernated, then checks one way of waking it. Each test has its own broker, so the
counter only counts the test's own clients.
"""

import socket
import struct
import time

import pytest

import rawmqtt as raw
from helpers import V311, V5, connect_props, connected, unique_id, wait_until

HIBERNATE_AFTER = "500ms"
STATS_WAIT_S = 10


# -- brokers and stats --------------------------------------------------------------


@pytest.fixture
def make_node(broker_factory):
    """`make_node(**overrides)`: a broker hibernating after 500 ms whose emqx_ctl answers."""

    def make(**overrides):
        settings = {"zone.external.hibernate_after": HIBERNATE_AFTER}
        settings.update({f"zone.external.{key}": value for key, value in overrides.items()})
        b = broker_factory(settings)
        assert wait_until(lambda: b.ctl("ping").returncode == 0, 10), "emqx_ctl cannot reach the node"
        return b

    return make


@pytest.fixture
def node(make_node):
    return make_node()


def stats(broker):
    """`emqx_ctl broker stats` as {name: int}."""
    r = broker.ctl("broker", "stats")
    assert r.returncode == 0, r.stdout + r.stderr
    out = {}
    for line in r.stdout.splitlines():
        name, _, value = line.partition(":")
        out[name.strip()] = int(value)
    return out


def hibernated(broker):
    return stats(broker)["connections.hibernated"]


def wait_stat(broker, name, expected, timeout_s=STATS_WAIT_S):
    """Poll `broker stats` until `name` equals `expected`; fail with the last value seen."""
    seen = []
    ok = wait_until(lambda: seen.append(stats(broker)[name]) or seen[-1] == expected, timeout_s)
    assert ok, f"{name} never reached {expected} within {timeout_s}s (last {seen[-1]}, seen {sorted(set(seen))})"


def wait_hibernated(broker, n, timeout_s=STATS_WAIT_S):
    wait_stat(broker, "connections.hibernated", n, timeout_s)


def assert_parks_and_wakes(broker, sub, topic):
    """`sub` (connected, subscribed to `topic` at QoS 1, the broker's only client) parks
    with its transport state; deliveries wake it, then it parks again; its own PUBLISH
    wakes it too. For any transport (TCP, TLS, WebSocket)."""
    for round_ in range(3):
        wait_hibernated(broker, 1)
        pub = connected(broker.port)
        pub.publish(topic, f"wake-{round_}".encode(), qos=1)
        pub.disconnect()
        sub.wait_messages(round_ + 1)
    assert [m.payload for m in sub.messages] == [b"wake-0", b"wake-1", b"wake-2"]
    wait_hibernated(broker, 1)
    sub.publish(topic, b"self", qos=1)
    sub.wait_messages(4)
    assert sub.disconnects == []


def assert_stays(broker, name, expected, seconds):
    """`name` equals `expected` at every reading for `seconds` (bounded by design)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = stats(broker)[name]
        assert value == expected, f"{name} became {value}, expected it to stay {expected}"
        time.sleep(0.1)


# -- clients --------------------------------------------------------------------------


V5_SESSION = [(raw.P_SESSION_EXPIRY, 300)]


def raw_client(broker, version=4, client_id=None, **connect_kwargs):
    """A raw client after a successful CONNACK; returns (client, client id)."""
    cid = client_id or unique_id("raw")
    c = raw.RawClient(broker.port, version=version)
    ack = c.connect(cid, **connect_kwargs)
    assert ack["rc"] == 0, ack
    return c, cid


def watcher(broker, topic):
    """A paho client subscribed to `topic` at QoS 1."""
    w = connected(broker.port)
    assert w.subscribe(topic, qos=1) == [1]
    return w


def reset(c):
    """Close a raw client's socket with a TCP RST instead of a FIN."""
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def assert_closed_with(c, version, reason, timeout_s=5):
    """The broker closes `c`; a v5 client gets exactly one DISCONNECT with `reason` first."""
    try:
        _, seen = c.wait_closed(timeout_s=timeout_s)
    except TimeoutError:
        pytest.fail(f"connection still open {timeout_s}s after it should have been closed")
    if version == 5:
        assert [p.type for p in seen] == [raw.DISCONNECT], f"packets before close: {seen}"
        got = raw.parse_disconnect(seen[0])
        assert got == reason, f"DISCONNECT reason {got:#x}, expected {reason:#x}"
    else:
        assert seen == [], f"packets before close: {seen}"


def ping(c, timeout_s=2):
    """PINGREQ (C0 00) answered by exactly PINGRESP (D0 00)."""
    c.send(raw.pingreq())
    p = c.recv(timeout_s=timeout_s)
    assert (p.type, p.flags, p.body, p.size) == (raw.PINGRESP, 0, b"", 2), p


VERSIONS = pytest.mark.parametrize("version", [4, 5], ids=["3.1.1", "5.0"])
PROTOCOLS = pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5.0"])


# -- 1. the counter -------------------------------------------------------------------


def test_idle_clients_hibernate_and_activity_wakes_them(node):
    clients = [connected(node.port, protocol=p) for p in (V311, V5, V311)]
    try:
        wait_hibernated(node, 3)
        assert stats(node)["connections.count"] == 3
        busy = clients[1]
        topic = f"hib/busy/{busy.client_id}"

        def busy_is_awake():
            busy.publish(topic, b"tick", qos=1)  # PUBACK waited for: the broker saw it
            return hibernated(node) == 2

        assert wait_until(busy_is_awake, timeout_s=5), "a publishing client still counted as hibernated"
        wait_hibernated(node, 3)  # quiet again: back to sleep
        s = stats(node)
        assert s["connections.count"] == 3
        assert s["connections.hibernated.max"] == 3, "the most hibernated at once"
        assert all(c.disconnects == [] for c in clients)
    finally:
        for c in clients:
            c.disconnect()


def test_hibernate_after_zero_disables_hibernation(make_node):
    node = make_node(hibernate_after="0s")
    clients = [connected(node.port, protocol=p) for p in (V311, V5, V311)]
    try:
        wait_stat(node, "connections.count", 3)
        assert_stays(node, "connections.hibernated", 0, seconds=3)
        assert all(c.disconnects == [] for c in clients)
    finally:
        for c in clients:
            c.disconnect()


# -- 2. deliveries --------------------------------------------------------------------


@PROTOCOLS
def test_hibernated_subscriber_receives_every_qos(node, protocol):
    topic = f"hib/deliver/{unique_id('t')}"
    sub = connected(node.port, protocol=protocol)
    pub = connected(node.port)
    try:
        assert sub.subscribe(topic, qos=2) == [2]
        wait_hibernated(node, 2)
        for qos in (0, 1, 2):
            pub.publish(topic, f"qos{qos}".encode(), qos=qos)  # QoS 1/2 wait for PUBACK/PUBCOMP
        got = sub.wait_messages(3)
        assert [(m.payload, m.qos) for m in got] == [(b"qos0", 0), (b"qos1", 1), (b"qos2", 2)]
        assert not any(m.dup for m in got), got
        # Only a subscriber that acknowledged everything may hibernate again.
        wait_hibernated(node, 2)
        assert sub.disconnects == [] and pub.disconnects == []
    finally:
        sub.disconnect()
        pub.disconnect()


@PROTOCOLS
def test_persistent_session_across_hibernation(node, protocol):
    cid = unique_id("persist")
    topic = f"hib/persist/{cid}"
    session = {"clean": False}
    if protocol == V5:
        session["properties"] = connect_props(SessionExpiryInterval=300)

    def publish(*payloads):
        pub = connected(node.port)
        for payload in payloads:
            pub.publish(topic, payload, qos=1)
        pub.disconnect()

    sub = connected(node.port, cid, protocol=protocol, **session)
    try:
        assert sub.subscribe(topic, qos=1) == [1]
        wait_hibernated(node, 1)
        publish(b"while hibernated")
        assert [m.payload for m in sub.wait_messages(1)] == [b"while hibernated"]
        wait_hibernated(node, 1)
        sub.disconnect()
        wait_stat(node, "connections.count", 0)
        publish(b"offline 1", b"offline 2")
    finally:
        sub.stop()

    again = connected(node.port, cid, protocol=protocol, **session)
    try:
        assert again.session_present is True
        got = again.wait_messages(2)
        assert [(m.payload, m.qos) for m in got] == [(b"offline 1", 1), (b"offline 2", 1)]
        wait_hibernated(node, 1)
    finally:
        again.disconnect()


# -- 3. packets and keepalive --------------------------------------------------------


def broker_metrics(broker):
    out = broker.ctl("broker", "metrics").stdout
    return {k.strip(): int(v) for k, _, v in (l.partition(":") for l in out.splitlines()) if v.strip()}


@VERSIONS
def test_pingreq_is_answered_without_waking_a_plain_connection(node, version):
    """The poller answers PINGREQs of a hibernated plain connection in place: the
    connection never leaves hibernation, the pings count as packets, and they restart
    its keepalive. Anything else (a PINGREQ split over two writes, a SUBSCRIBE behind
    a PINGREQ) wakes it as before."""
    c, _ = raw_client(node, version, keepalive=2)  # closed after 3 s of silence
    with c:
        wait_hibernated(node, 1)
        before = broker_metrics(node)
        started = time.monotonic()
        for i in range(1, 6):  # a ping a second for 5 s: past the keepalive
            time.sleep(max(0.0, started + i - time.monotonic()))
            ping(c)
            assert hibernated(node) == 1, "a PINGREQ woke the connection"
        c.send(raw.pingreq() + raw.pingreq())
        for _ in range(2):
            assert c.recv(timeout_s=2).type == raw.PINGRESP
        assert hibernated(node) == 1
        after = broker_metrics(node)
        assert after["packets/pingreq"] - before["packets/pingreq"] == 7
        assert after["packets/pingresp"] - before["packets/pingresp"] == 7
        # Half a PINGREQ wakes it; the other half completes it on the woken task.
        c.send(raw.pingreq()[:1])
        wait_until(lambda: hibernated(node) == 0, 5)
        c.send(raw.pingreq()[1:])
        assert c.recv(timeout_s=2).type == raw.PINGRESP
        wait_hibernated(node, 1)
        # A SUBSCRIBE behind a PINGREQ: both answered, in order, by the woken task.
        topic = f"hib/ping/{unique_id('t')}"
        c.send(raw.pingreq() + raw.subscribe(1, [(topic, 1)], version=version))
        assert c.recv(timeout_s=2).type == raw.PINGRESP
        assert c.recv(timeout_s=2).type == raw.SUBACK



def test_many_hibernated_clients_pinging_at_once_are_all_answered(node):
    """A woken connection is past its hibernate deadline: it must read the PINGREQ that
    woke it before it may park again. It used to re-park before tokio reported the
    socket readable and spin (park, wake, park): with 1,000 clients pinging at once a
    round took over 10 s and some PINGREQs waited longer still."""
    n = 1000
    clients = [raw_client(node, keepalive=60)[0] for _ in range(n)]
    try:
        for _ in range(2):
            wait_hibernated(node, n, timeout_s=20)
            started = time.monotonic()
            for c in clients:
                c.send(raw.pingreq())
            for i, c in enumerate(clients):
                left = max(0.1, started + 3 - time.monotonic())
                assert c.recv(timeout_s=left).type == raw.PINGRESP, f"client {i}"
    finally:
        for c in clients:
            c.close()


@VERSIONS
def test_keepalive_expires_while_hibernated(node, version):
    topic = f"hib/will/{unique_id('ka')}"
    w = watcher(node, topic)
    try:
        will = {"topic": topic, "payload": b"timed out", "qos": 1}
        c, _ = raw_client(node, version, keepalive=2, will=will)
        connected_at = time.monotonic()
        with c:
            wait_hibernated(node, 2)  # watcher and the silent client
            assert_closed_with(c, version, 0x8D, timeout_s=8)
            waited = time.monotonic() - connected_at
        assert 2.5 <= waited <= 4.5, f"closed {waited:.2f}s after CONNACK, expected ~3 s (1.5 x keepalive 2)"
        got = w.wait_messages(1, timeout_s=5)
        assert [(m.topic, m.payload) for m in got] == [(topic, b"timed out")]
        wait_stat(node, "connections.count", 1)
    finally:
        w.disconnect()


def test_pinging_client_survives_keepalive_while_hibernating(node):
    c, _ = raw_client(node, keepalive=2)  # closed after 3 s of silence
    with c:
        started = time.monotonic()
        for i in range(1, 7):  # a ping a second for 6 s, hibernated between pings
            wait_hibernated(node, 1, timeout_s=2)
            time.sleep(max(0.0, started + i - time.monotonic()))
            ping(c)
        wait_hibernated(node, 1, timeout_s=2)
        assert stats(node)["connections.count"] == 1


# -- 4. broker events: takeover, kick, shutdown ---------------------------------------


@VERSIONS
def test_takeover_of_hibernated_connection(node, version):
    cid = unique_id("takeover")
    topic = f"hib/takeover/{cid}"
    first, _ = raw_client(node, version, client_id=cid, clean=False,
                          properties=V5_SESSION if version == 5 else ())
    with first:
        assert first.subscribe(1, [(topic, 1)]) == [1]
        wait_hibernated(node, 1)
        protocol = V5 if version == 5 else V311
        props = connect_props(SessionExpiryInterval=300) if version == 5 else None
        second = connected(node.port, cid, protocol=protocol, clean=False, properties=props)
        try:
            assert second.session_present is True, "the hibernated connection's session was lost"
            assert_closed_with(first, version, 0x8E)
            second.publish(topic, b"to the new owner", qos=1)  # subscribed through the old session
            assert [m.payload for m in second.wait_messages(1)] == [b"to the new owner"]
            wait_hibernated(node, 1)  # the new connection, in its turn
            assert stats(node)["connections.count"] == 1
            assert second.disconnects == []
        finally:
            second.disconnect()


@VERSIONS
def test_ctl_kick_hibernated_client(node, version):
    c, cid = raw_client(node, version)
    with c:
        wait_hibernated(node, 1)
        r = node.ctl("clients", "kick", cid)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.strip() == "ok"
        assert_closed_with(c, version, 0x98)
    wait_stat(node, "connections.count", 0)
    assert hibernated(node) == 0


def test_hibernated_connections_hold_their_listener_slot_until_they_close(broker_factory):
    """A hibernated connection counts against its listener's `max_connections` and in
    `emqx_ctl listeners` like an awake one, and gives its slot back when it closes while
    parked (the connection's drop returns it, wherever the connection is)."""
    from test_listeners import listener_blocks

    b = broker_factory({"zone.external.hibernate_after": HIBERNATE_AFTER,
                        "listener.tcp.external.max_connections": 2})
    assert wait_until(lambda: b.ctl("ping").returncode == 0, 10), "emqx_ctl cannot reach the node"

    def current():
        return listener_blocks(b.ctl("listeners").stdout)["mqtt:tcp:external"]["current_conn"]

    # The start-up probe's connection (no CONNECT) gives its slot back too.
    assert wait_until(lambda: current() == "0", 10), current()
    first, _ = raw_client(b)
    second, _ = raw_client(b, 5)
    wait_hibernated(b, 2)
    assert current() == "2"
    over = raw.RawClient(b.port, version=5)
    try:
        assert over.connect(unique_id("over"), keepalive=0)["rc"] == 0x97, "a third client got in"
    finally:
        over.close()
    first.close()
    wait_stat(b, "connections.count", 1)
    assert wait_until(lambda: current() == "1", 10), current()
    third, _ = raw_client(b, 5)
    wait_hibernated(b, 2)
    for c in (second, third):
        c.close()
    wait_stat(b, "connections.count", 0)
    assert wait_until(lambda: current() == "0", 10), current()


def test_graceful_stop_with_hibernated_clients(node):
    clients = [raw_client(node, 5)[0] for _ in range(3)] + [raw_client(node, 4)[0]]
    try:
        wait_hibernated(node, 4)
        started = time.monotonic()
        code = node.stop()
        took = time.monotonic() - started
        assert code == 0, f"broker exited with {code}"
        assert took < 5, f"graceful stop took {took:.1f}s with hibernated clients"
        for c in clients:
            assert_closed_with(c, c.version, 0x8B)
    finally:
        for c in clients:
            c.close()


# -- 5. the client goes away ----------------------------------------------------------


@pytest.mark.parametrize("close", [raw.RawClient.close, reset], ids=["eof", "reset"])
@VERSIONS
def test_socket_closed_while_hibernated_publishes_will(node, version, close):
    topic = f"hib/gone/{unique_id('eof')}"
    w = watcher(node, topic)
    try:
        will = {"topic": topic, "payload": b"vanished", "qos": 1}
        c, _ = raw_client(node, version, will=will)
        wait_hibernated(node, 2)
        assert stats(node)["connections.count"] == 2
        close(c)  # no DISCONNECT
        got = w.wait_messages(1, timeout_s=5)
        assert [(m.topic, m.payload) for m in got] == [(topic, b"vanished")]
        wait_stat(node, "connections.count", 1)
        wait_hibernated(node, 1)  # the watcher, woken by the will, sleeps again
    finally:
        w.disconnect()


# -- 6. pending work keeps a connection awake -----------------------------------------


def test_unacked_qos1_delivery_blocks_hibernation(make_node):
    node = make_node(retry_interval="1s")
    topic = f"hib/inflight/{unique_id('t')}"
    sub, _ = raw_client(node)
    with sub:
        assert sub.subscribe(1, [(topic, 1)]) == [1]
        wait_hibernated(node, 1)
        pub = connected(node.port)
        pub.publish(topic, b"ack me", qos=1)
        pub.disconnect()
        first = raw.parse_publish(sub.recv_type(raw.PUBLISH), 4)
        assert (first["payload"], first["qos"], first["dup"]) == (b"ack me", 1, False)
        wait_stat(node, "connections.count", 1)  # the publisher is gone
        assert_stays(node, "connections.hibernated", 0, seconds=2.5)  # 5 x hibernate_after
        retry = raw.parse_publish(sub.recv_type(raw.PUBLISH, timeout_s=3), 4)
        assert (retry["payload"], retry["qos"], retry["pid"]) == (b"ack me", 1, first["pid"])
        assert retry["dup"] is True, "redelivery without DUP"
        sub.send(raw.ack(raw.PUBACK, first["pid"]))
        wait_hibernated(node, 1)  # nothing in flight any more


def test_qos2_awaiting_pubrel_blocks_hibernation(node):
    topic = f"hib/rel/{unique_id('t')}"
    pub, _ = raw_client(node)
    with pub:
        wait_hibernated(node, 1)
        pub.send(raw.publish(topic, b"exactly once", qos=2, pid=7))
        rec = pub.recv_type(raw.PUBREC)
        assert struct.unpack(">H", rec.body[:2]) == (7,)
        assert_stays(node, "connections.hibernated", 0, seconds=2.5)  # 5 x hibernate_after
        pub.send(raw.ack(raw.PUBREL, 7))
        comp = pub.recv_type(raw.PUBCOMP)
        assert struct.unpack(">H", comp.body[:2]) == (7,)
        wait_hibernated(node, 1)  # the id is released


def test_a_hibernated_session_taken_over_over_tcp_and_websocket_at_once(node):
    """The owner of a session is parked; two new connections with its client id, one
    over TCP and one over WebSocket, CONNECT at the same moment. Both get in, one
    after the other: the parked one and the first of the two are taken over (0x8E),
    the last keeps the session and its subscription, and every slot is given back."""
    from rawws import RawWs
    from test_listeners import listener_blocks

    cid = unique_id("race")
    topic = f"hib/race/{cid}"
    parked, _ = raw_client(node, 5, client_id=cid, clean=False, properties=V5_SESSION)
    with parked:
        assert parked.subscribe(1, [(topic, 1)]) == [1]
        wait_hibernated(node, 1)
        tcp = raw.RawClient(node.port, version=5)
        ws = RawWs(node.ws_port)
        ws.upgrade()
        hello = raw.connect(cid, version=5, clean=False, properties=V5_SESSION)
        tcp.send(hello)
        ws.send_frame(0x2, hello)
        acks = [raw.parse_connack(tcp.recv(), 5), raw.parse_connack(ws.recv_packet(), 5)]
        assert [a["rc"] for a in acks] == [0, 0], acks
        assert all(a["session_present"] for a in acks), acks
        assert_closed_with(parked, 5, 0x8E)

        def taken_over(recv):
            try:
                p = recv()
            except (TimeoutError, OSError, raw.Closed):
                return None
            return raw.parse_disconnect(p) if p.type == raw.DISCONNECT else p

        lost = {"tcp": taken_over(lambda: tcp.recv(timeout_s=2)),
                "ws": taken_over(lambda: ws.recv_packet(timeout_s=2))}
        assert sorted(lost.values(), key=str) == [0x8E, None], lost
        winner = "tcp" if lost["tcp"] is None else "ws"
        pub = connected(node.port)
        pub.publish(topic, b"to the winner", qos=1)
        pub.disconnect()
        if winner == "tcp":
            p = tcp.recv_type(raw.PUBLISH)
        else:
            p = ws.recv_packet()
        assert raw.parse_publish(p, 5)["payload"] == b"to the winner"
        wait_stat(node, "connections.count", 1)
        tcp.close()
        ws.close()
    wait_stat(node, "connections.count", 0)

    def current():
        blocks = listener_blocks(node.ctl("listeners").stdout)
        return blocks["mqtt:tcp:external"]["current_conn"], blocks["mqtt:ws:external"]["current_conn"]

    assert wait_until(lambda: current() == ("0", "0"), 10), current()
