"""Configured limits (mqtt.*, zone.external.*), each on its own broker via EMQX_* overrides."""

import time

import pytest

import rawmqtt as raw
from helpers import V5, connect_props, connected, settle, unique_id


@pytest.mark.parametrize("version,failure", [(4, 0x80), (5, 0x8F)], ids=["3.1.1", "5.0"])
def test_max_topic_levels(broker_factory, version, failure):
    b = broker_factory({"mqtt.max_topic_levels": 3})
    with raw.RawClient(b.port, version=version) as c:
        assert c.connect(unique_id("levels"))["rc"] == 0
        codes = c.subscribe(1, [("a/b/c/d", 1), ("a/b/c", 1), ("a/+/c/#", 1), ("a/+/#", 1)])
        assert codes[1] == 1 and codes[3] == 1, f"3-level filters rejected: {codes}"
        assert codes[0] >= 0x80 and codes[2] >= 0x80, f"4-level filters accepted: {codes}"
        assert codes[0] == failure


@pytest.mark.parametrize("version,failure", [(4, 0x80), (5, 0xA2)], ids=["3.1.1", "5.0"])
def test_wildcard_subscription_disabled(broker_factory, version, failure):
    b = broker_factory({"mqtt.wildcard_subscription": "false"})
    with raw.RawClient(b.port, version=version) as c:
        ack = c.connect(unique_id("nowild"))
        assert ack["rc"] == 0
        if version == 5:
            # Wildcard Subscription Available = 0 must be announced.
            assert ack["props"].get(0x28) == 0, f"CONNACK does not announce it: {ack['props']}"
        codes = c.subscribe(1, [("w/+", 1), ("w/#", 1), ("#", 0), ("w/x", 1)])
        assert codes == [failure, failure, failure, 1]


def test_max_mqueue_len_caps_offline_queue(broker_factory):
    b = broker_factory({"zone.external.max_mqueue_len": 5})
    cid = unique_id("mqueue")
    topic = "mqueue/t"
    c = connected(b.port, cid, clean=False)
    c.subscribe(topic, qos=1)
    c.disconnect()
    pub = connected(b.port)
    sent = [f"q{i:02d}".encode() for i in range(20)]
    for p in sent:
        pub.publish(topic, p, qos=1)
    pub.disconnect()
    c = connected(b.port, cid, clean=False)
    try:
        assert c.session_present is True
        c.wait_messages(5)
        settle(1.5)
        got = c.payloads()
        assert len(got) == 5, f"expected exactly 5 queued messages, got {len(got)}: {got}"
        assert len(set(got)) == 5 and set(got) <= set(sent)
    finally:
        c.disconnect()


def test_each_listener_applies_its_own_zone(broker_factory):
    """A session follows the zone of the listener its client connected through:
    zone.internal.mqueue_store_qos0 = false keeps QoS 0 out of its offline queue while
    zone.external (true) would store them."""
    b = broker_factory({"zone.external.mqueue_store_qos0": "true", "zone.internal.mqueue_store_qos0": "false"})
    topic = "zone/t"
    sessions = {}
    for name, port in (("ext", b.port), ("int", b.internal_port)):
        cid = unique_id(f"zone-{name}")
        c = connected(port, cid, clean=False)
        c.subscribe(topic, qos=1)
        c.disconnect()
        sessions[name] = (cid, port)
    pub = connected(b.port)
    sent = [f"z{i:02d}".encode() for i in range(5)]
    for p in sent:
        pub.publish(topic, p, qos=0)
    pub.publish(topic, b"qos1", qos=1)
    pub.disconnect()
    got = {}
    for name, (cid, port) in sessions.items():
        c = connected(port, cid, clean=False)
        try:
            assert c.session_present is True
            c.wait_messages(1)
            settle(1.5)
            got[name] = sorted(c.payloads())
        finally:
            c.disconnect()
    assert got["ext"] == sorted(sent + [b"qos1"]), got
    assert got["int"] == [b"qos1"], f"internal zone stored QoS 0 while offline: {got}"


def test_max_inflight_window_v311(broker_factory):
    b = broker_factory({"zone.external.max_inflight": 3})
    cid = unique_id("inflight")
    topic = "inflight/t"
    sent = [f"i{i:02d}".encode() for i in range(10)]
    with raw.RawClient(b.port) as c:
        assert c.connect(cid)["rc"] == 0
        assert c.subscribe(1, [(topic, 1)]) == [1]
        pub = connected(b.port)
        for p in sent:
            pub.publish(topic, p, qos=1)
        pub.disconnect()
        unacked, received = [], []
        deadline = time.monotonic() + 20
        while len(received) < len(sent):
            assert time.monotonic() < deadline, f"only {len(received)} received"
            try:
                p = c.recv(timeout_s=0.4)
            except TimeoutError:
                assert unacked, "stalled with nothing in flight"
                c.send(raw.ack(raw.PUBACK, unacked.pop(0)))
                continue
            if p.type == raw.PUBLISH:
                msg = raw.parse_publish(p, 4)
                received.append(msg["payload"])
                unacked.append(msg["pid"])
                assert len(unacked) <= 3, f"{len(unacked)} unacked with max_inflight 3"
        assert received == sent


@pytest.mark.parametrize("version", [4, 5], ids=["3.1.1", "5.0"])
def test_max_packet_size_closes_offender(broker_factory, version):
    b = broker_factory({"mqtt.max_packet_size": "1KB"})
    topic = "mps/t"
    sub = connected(b.port)
    try:
        sub.subscribe(topic, qos=1)
        with raw.RawClient(b.port, version=version) as c:
            ack = c.connect(unique_id("mps"))
            assert ack["rc"] == 0
            if version == 5:
                assert ack["props"].get(raw.P_MAXIMUM_PACKET_SIZE) == 1024
            c.send(raw.publish(topic, b"s" * 500, qos=1, pid=1, version=version))
            assert c.recv_type(raw.PUBACK).body[:2] == b"\x00\x01"
            c.send(raw.publish(topic, b"B" * 2048, qos=1, pid=2, version=version))
            _, seen = c.wait_closed(timeout_s=5)
            assert all(p.type != raw.PUBACK for p in seen), "oversized publish acknowledged"
            if version == 5:
                disconnects = [p for p in seen if p.type == raw.DISCONNECT]
                assert disconnects and raw.parse_disconnect(disconnects[0]) == 0x95, (
                    f"expected DISCONNECT Packet too large (0x95), saw {seen}"
                )
        sub.wait_messages(1)
        settle(0.5)
        assert [len(p) for p in sub.payloads()] == [500]
        assert sub.disconnects == []
    finally:
        sub.disconnect()


@pytest.mark.parametrize("protocol", ["3.1.1", "5.0"])
def test_zone_session_expiry_caps_requested_interval(broker_factory, protocol):
    b = broker_factory({"zone.external.session_expiry_interval": "3s"})
    cid = unique_id("cap")
    if protocol == "5.0":
        kwargs = dict(protocol=V5, clean_start=False, properties=connect_props(SessionExpiryInterval=3600))
    else:
        kwargs = dict(clean=False)
    c = connected(b.port, cid, **kwargs)
    c.subscribe("cap/t", qos=1)
    c.disconnect()
    time.sleep(5.5)  # 3 s cap + the 1 s expiry sweep + margin
    c = connected(b.port, cid, **kwargs)
    try:
        assert c.session_present is False, "session outlived zone.external.session_expiry_interval"
    finally:
        c.disconnect()


def test_retry_interval_redelivers_unacked_qos1_v311(broker_factory):
    b = broker_factory({"zone.external.retry_interval": "2s"})
    topic = "retry/t"
    with raw.RawClient(b.port) as c:
        assert c.connect(unique_id("retry"))["rc"] == 0
        assert c.subscribe(1, [(topic, 1)]) == [1]
        pub = connected(b.port)
        pub.publish(topic, b"ack me", qos=1)
        pub.disconnect()
        first = raw.parse_publish(c.recv_type(raw.PUBLISH), 4)
        sent_at = time.monotonic()
        assert first["dup"] is False
        again = raw.parse_publish(c.recv_type(raw.PUBLISH, timeout_s=6), 4)
        waited = time.monotonic() - sent_at
        assert (again["payload"], again["pid"], again["dup"]) == (b"ack me", first["pid"], True)
        assert 1.5 <= waited <= 5.0, f"redelivered after {waited:.2f}s with retry_interval 2s"
        c.send(raw.ack(raw.PUBACK, again["pid"]))
        with pytest.raises(TimeoutError):
            p = c.recv_type(raw.PUBLISH, timeout_s=3)
            pytest.fail(f"redelivered after PUBACK: {p}")
