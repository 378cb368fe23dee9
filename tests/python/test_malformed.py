"""Malformed input closes only the offending connection; everyone else carries on."""

import pytest

import rawmqtt as raw
from helpers import connected, unique_id


@pytest.fixture
def bystander(shared_broker):
    """A client that publishes to itself: must keep working through every attack."""
    c = connected(shared_broker.port)
    topic = f"bystander/{c.client_id}"
    c.subscribe(topic, qos=1)

    def check(label):
        before = len(c.messages)
        payload = f"alive after {label}".encode()
        c.publish(topic, payload, qos=1)
        got = c.wait_messages(before + 1)
        assert got[-1].payload == payload, f"bystander broken after {label}"
        assert c.disconnects == [], f"bystander disconnected after {label}"

    check("setup")
    yield check
    c.disconnect()


GARBAGE_BEFORE_CONNECT = {
    "random-bytes": b"\x00\x00garbage\xff\xfe" * 4,
    "http-request": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad-protocol-name": raw.packet(raw.CONNECT, 0, raw.utf8("MQTX") + bytes([4, 2, 0, 60]) + raw.utf8("x")),
    "connect-reserved-flag": raw.packet(raw.CONNECT, 0, raw.utf8("MQTT") + bytes([4, 3, 0, 60]) + raw.utf8("x")),
    "overlong-remaining-length": b"\x10\xff\xff\xff\xff\x7f",
}


@pytest.mark.parametrize("data", GARBAGE_BEFORE_CONNECT.values(), ids=GARBAGE_BEFORE_CONNECT.keys())
def test_garbage_instead_of_connect_closes(shared_broker, bystander, data):
    with raw.RawClient(shared_broker.port) as c:
        c.send(data)
        _, seen = c.wait_closed(timeout_s=5)
        assert all(p.type != raw.CONNACK or p.body[1] != 0 for p in seen), "garbage was accepted"
    bystander("garbage before CONNECT")


def v311_bad_packets():
    return {
        "publish-qos3": raw.packet(raw.PUBLISH, 0x06, raw.utf8("t") + b"\x00\x01x"),
        "publish-wildcard-topic": raw.publish("a/+/b", b"x", qos=0),
        "publish-invalid-utf8-topic": raw.packet(raw.PUBLISH, 0, b"\x00\x02\xc3\x28x"),
        "subscribe-bad-flags": raw.packet(raw.SUBSCRIBE, 0x00, b"\x00\x01" + raw.utf8("t") + b"\x01"),
        "subscribe-no-filters": raw.packet(raw.SUBSCRIBE, 0x02, b"\x00\x01"),
        "subscribe-qos3": raw.packet(raw.SUBSCRIBE, 0x02, b"\x00\x01" + raw.utf8("t") + b"\x03"),
        "reserved-type-0": b"\x00\x00",
        "reserved-type-15": b"\xf0\x00",
        "second-connect": raw.connect("again"),
        "truncated-publish-body": raw.packet(raw.PUBLISH, 0x02, b"\x00\x05ab"),
        "garbage": b"\xff" * 32,
    }


@pytest.mark.parametrize("name", list(v311_bad_packets()))
def test_bad_packet_after_connect_closes_v311(shared_broker, bystander, name):
    with raw.RawClient(shared_broker.port) as c:
        assert c.connect(unique_id("bad"))["rc"] == 0
        c.send(v311_bad_packets()[name])
        _, seen = c.wait_closed(timeout_s=5)
        assert all(p.type not in (raw.SUBACK, raw.PUBACK) for p in seen), f"{name} was processed: {seen}"
    bystander(name)


def v5_bad_packets():
    return {
        "publish-qos3": raw.packet(raw.PUBLISH, 0x06, raw.utf8("t") + b"\x00\x01\x00x"),
        "publish-wildcard-topic": raw.publish("a/#", b"x", version=5),
        "subscribe-bad-flags": raw.packet(raw.SUBSCRIBE, 0x00, b"\x00\x01\x00" + raw.utf8("t") + b"\x01"),
        "subscribe-reserved-option-bits": raw.packet(raw.SUBSCRIBE, 0x02, b"\x00\x01\x00" + raw.utf8("t") + b"\xc1"),
        "unknown-property": raw.packet(raw.PUBLISH, 0, raw.utf8("t") + b"\x02\x7f\x00x"),
        "duplicate-property": raw.publish("t", b"x", version=5,
                                          properties=[(raw.P_MESSAGE_EXPIRY, 5), (raw.P_MESSAGE_EXPIRY, 6)]),
        "topic-alias-zero": raw.publish("t", b"x", version=5, properties=[(raw.P_TOPIC_ALIAS, 0)]),
        "unknown-topic-alias": raw.publish("", b"x", version=5, properties=[(raw.P_TOPIC_ALIAS, 9)]),
        "second-connect": raw.connect("again", version=5),
        "garbage": b"\xff" * 32,
    }


@pytest.mark.parametrize("name", list(v5_bad_packets()))
def test_bad_packet_after_connect_v5_gets_disconnect_reason(shared_broker, bystander, name):
    with raw.RawClient(shared_broker.port, version=5) as c:
        assert c.connect(unique_id("bad5"))["rc"] == 0
        c.send(v5_bad_packets()[name])
        _, seen = c.wait_closed(timeout_s=5)
        disconnects = [p for p in seen if p.type == raw.DISCONNECT]
        assert disconnects, f"{name}: connection closed without DISCONNECT; saw {seen}"
        reason = raw.parse_disconnect(disconnects[0])
        assert reason >= 0x80, f"{name}: DISCONNECT reason {reason:#x} is not an error"
        assert all(p.type not in (raw.SUBACK, raw.PUBACK) for p in seen), f"{name} was processed: {seen}"
    bystander(name)


def test_packet_larger_than_remaining_length_limit_closes(shared_broker, bystander):
    """A PUBLISH claiming 200 MB: the broker must not wait for or buffer it."""
    with raw.RawClient(shared_broker.port) as c:
        assert c.connect(unique_id("huge"))["rc"] == 0
        c.send(b"\x30" + raw.varint(200_000_000) + b"\x00\x01t" + b"x" * 1000)
        c.wait_closed(timeout_s=5)
    bystander("huge remaining length")


def test_garbage_before_connect_is_counted_each_time_and_logged_once_per_interval(broker_factory):
    """A scanner sending garbage to 1883 is closed and counted every time, but logged
    once per interval (with its peer and the reason): it must not fill the log."""
    from helpers import wait_until
    from test_flow_control import metric

    broker = broker_factory()
    assert wait_until(lambda: broker.ctl("ping").returncode == 0, 10), "emqx_ctl cannot reach the node"
    before = metric(broker, "packets.malformed")
    attempts = 20
    for _ in range(attempts):
        with raw.RawClient(broker.port) as c:
            c.send(GARBAGE_BEFORE_CONNECT["bad-protocol-name"])
            c.wait_closed(timeout_s=5)
    assert wait_until(lambda: metric(broker, "packets.malformed") >= before + attempts, 5)
    lines = [line for line in broker.console_log.read_text().splitlines() if "bad CONNECT" in line]
    assert len(lines) == 1, "\n".join(lines[:5]) + f"\n... {len(lines)} lines"
    assert "127.0.0.1" in lines[0] and "error=" in lines[0], lines[0]


def test_a_client_that_sends_no_connect_is_closed_after_idle_timeout_counted_and_logged_once(broker_factory):
    """Silent clients (a half-open scan, a stuck device) are closed after idle_timeout,
    each counted in client.connect.timeout, logged once per interval with the peer."""
    import socket
    import time

    from conftest import HOST
    from helpers import wait_until
    from test_flow_control import metric

    broker = broker_factory({"zone.external.idle_timeout": "1s"})
    silent = [socket.create_connection((HOST, broker.port), timeout=5) for _ in range(3)]
    started = time.monotonic()
    for s in silent:
        assert s.recv(1) == b"", "closed without a word"
        s.close()
    assert time.monotonic() - started < 4, "closed after idle_timeout, not later"
    assert wait_until(lambda: metric(broker, "client.connect.timeout") == 3, 5)
    lines = [l for l in broker.console_log.read_text().splitlines() if "no CONNECT within idle_timeout" in l]
    assert len(lines) == 1, lines
    assert "peer=127.0.0.1:" in lines[0] and "listener=mqtt:tcp:external" in lines[0], lines[0]
    # A client that connects and leaves at once is none of these.
    socket.create_connection((HOST, broker.port), timeout=5).close()
    c = connected(broker.port)
    c.disconnect()
    assert metric(broker, "client.connect.timeout") == 3
