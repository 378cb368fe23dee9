"""MQTT 5.0 features: aliases, subscription options, identifiers, expiry, properties, flow control."""

import time

import pytest
from paho.mqtt.packettypes import PacketTypes

import rawmqtt as raw
from helpers import (
    V5,
    connect_props,
    connected,
    props,
    publish_props,
    settle,
    sub_options,
    unique_id,
)


def v5(port, cid=None, **kwargs):
    return connected(port, cid, protocol=V5, **kwargs)


def persistent_v5(port, cid):
    return v5(port, cid, clean_start=False, properties=connect_props(SessionExpiryInterval=600))


def test_connack_advertises_limits(shared_broker):
    with raw.RawClient(shared_broker.port, version=5) as c:
        ack = c.connect(unique_id("caps"))
        assert ack["rc"] == 0
        p = ack["props"]
        assert p.get(raw.P_RECEIVE_MAXIMUM, 0) >= 1, f"no Receive Maximum in {p}"
        assert p.get(raw.P_TOPIC_ALIAS_MAXIMUM, 0) >= 1, f"no Topic Alias Maximum in {p}"
        assert p.get(raw.P_MAXIMUM_PACKET_SIZE, 0) >= 1024, f"no Maximum Packet Size in {p}"


def test_topic_alias_from_client(shared_broker):
    topic = f"alias/{unique_id('t')}"
    other = f"alias/{unique_id('o')}"
    sub = v5(shared_broker.port)
    try:
        sub.subscribe("alias/#", qos=1)
        with raw.RawClient(shared_broker.port, version=5) as pub:
            ack = pub.connect(unique_id("aliaser"))
            assert ack["props"].get(raw.P_TOPIC_ALIAS_MAXIMUM, 0) >= 1
            steps = [
                (topic, b"one"),  # sets alias 1
                ("", b"two"),  # uses alias 1
                (other, b"three"),  # rebinds alias 1
                ("", b"four"),
            ]
            for pid, (t, payload) in enumerate(steps, start=1):
                pub.send(raw.publish(t, payload, qos=1, pid=pid, version=5, properties=[(raw.P_TOPIC_ALIAS, 1)]))
                puback = pub.recv_type(raw.PUBACK)
                assert puback.body[:2] == pid.to_bytes(2, "big")
                assert len(puback.body) < 3 or puback.body[2] < 0x80, f"PUBACK failure {puback.body!r}"
        got = sub.wait_messages(4)
        assert [(m.topic, m.payload) for m in got] == [
            (topic, b"one"), (topic, b"two"), (other, b"three"), (other, b"four")
        ]
        assert all(m.prop("TopicAlias") is None for m in got), "alias leaked to a subscriber that allowed none"
    finally:
        sub.disconnect()


def test_no_local(shared_broker):
    topic = f"nolocal/{unique_id('t')}"
    me = v5(shared_broker.port)
    other = v5(shared_broker.port)
    try:
        me.subscribe(topic, options=sub_options(qos=1, no_local=True))
        me.publish(topic, b"mine", qos=1)
        other.publish(topic, b"theirs", qos=1)
        me.wait_messages(1)
        settle(0.7)
        assert me.payloads() == [b"theirs"]
    finally:
        me.disconnect()
        other.disconnect()


def test_retain_as_published(shared_broker):
    topic = f"rap/{unique_id('t')}"
    rap = v5(shared_broker.port)
    plain = v5(shared_broker.port)
    pub = v5(shared_broker.port)
    try:
        rap.subscribe(topic, options=sub_options(qos=1, retain_as_published=True))
        plain.subscribe(topic, options=sub_options(qos=1, retain_as_published=False))
        pub.publish(topic, b"retained live", qos=1, retain=True)
        pub.publish(topic, b"not retained", qos=1, retain=False)
        assert [(m.payload, m.retain) for m in rap.wait_messages(2)] == [(b"retained live", True), (b"not retained", False)]
        assert [(m.payload, m.retain) for m in plain.wait_messages(2)] == [(b"retained live", False), (b"not retained", False)]
    finally:
        pub.publish(topic, b"", qos=1, retain=True)
        for c in (rap, plain, pub):
            c.disconnect()


def test_retain_handling(shared_broker):
    topic = f"rh/{unique_id('t')}"
    pub = v5(shared_broker.port)
    pub.publish(topic, b"stored", qos=1, retain=True)
    clients = {rh: v5(shared_broker.port) for rh in (0, 1, 2)}
    try:
        for rh, c in clients.items():
            c.subscribe(topic, options=sub_options(qos=1, retain_handling=rh))
        clients[0].wait_messages(1)
        clients[1].wait_messages(1)
        settle(0.5)
        # Subscribe again to the same filter: rh=0 sends again, rh=1 only for new subscriptions.
        for rh, c in clients.items():
            c.subscribe(topic, options=sub_options(qos=1, retain_handling=rh))
        clients[0].wait_messages(2)
        settle(0.7)
        counts = {rh: [(m.payload, m.retain) for m in c.messages] for rh, c in clients.items()}
        assert counts == {
            0: [(b"stored", True), (b"stored", True)],
            1: [(b"stored", True)],
            2: [],
        }
    finally:
        pub.publish(topic, b"", qos=1, retain=True)
        pub.disconnect()
        for c in clients.values():
            c.disconnect()


def test_subscription_identifier_returned(shared_broker):
    base = f"sid/{unique_id('t')}"
    sub = v5(shared_broker.port)
    pub = v5(shared_broker.port)
    try:
        sub.subscribe(f"{base}/a/#", qos=1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42))
        sub.subscribe(f"{base}/b", qos=1)
        pub.publish(f"{base}/a/x", b"with id", qos=1)
        pub.publish(f"{base}/b", b"without id", qos=1)
        got = {m.payload: m.prop("SubscriptionIdentifier") for m in sub.wait_messages(2)}
        assert got == {b"with id": [42], b"without id": None}
    finally:
        sub.disconnect()
        pub.disconnect()


def test_overlapping_subscriptions_carry_each_identifier(shared_broker):
    base = f"sid2/{unique_id('t')}"
    sub = v5(shared_broker.port)
    pub = v5(shared_broker.port)
    try:
        sub.subscribe(f"{base}/#", qos=1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=7))
        sub.subscribe(f"{base}/+", qos=1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=300))
        pub.publish(f"{base}/x", b"both", qos=1)
        sub.wait_messages(1)
        settle(0.5)
        ids = sorted(i for m in sub.messages for i in (m.prop("SubscriptionIdentifier") or []))
        assert ids == [7, 300], "one copy with both ids, or one copy per subscription with its id"
    finally:
        sub.disconnect()
        pub.disconnect()


def test_properties_passed_through(shared_broker):
    topic = f"props/{unique_id('t')}"
    sub = v5(shared_broker.port)
    pub = v5(shared_broker.port)
    try:
        sub.subscribe(topic, qos=1)
        user = [("a", "1"), ("b", "2"), ("a", "3")]
        pub.publish(
            topic,
            b'{"k": 1}',
            qos=1,
            properties=publish_props(
                UserProperty=user,
                ContentType="application/json",
                ResponseTopic="reply/to/me",
                CorrelationData=b"\x00\x01corr\xff",
                PayloadFormatIndicator=1,
            ),
        )
        (m,) = sub.wait_messages(1)
        assert m.payload == b'{"k": 1}'
        assert m.prop("UserProperty") == user, "user properties must keep their order"
        assert m.prop("ContentType") == "application/json"
        assert m.prop("ResponseTopic") == "reply/to/me"
        assert m.prop("CorrelationData") == b"\x00\x01corr\xff"
        assert m.prop("PayloadFormatIndicator") == 1
    finally:
        sub.disconnect()
        pub.disconnect()


def test_message_expiry_for_queued_messages(shared_broker):
    topic = f"expiry/{unique_id('t')}"
    cid = unique_id("expirer")
    c = persistent_v5(shared_broker.port, cid)
    c.subscribe(topic, qos=1)
    c.disconnect()
    pub = v5(shared_broker.port)
    pub.publish(topic, b"short", qos=1, properties=publish_props(MessageExpiryInterval=1))
    pub.publish(topic, b"long", qos=1, properties=publish_props(MessageExpiryInterval=60))
    pub.publish(topic, b"forever", qos=1)
    pub.disconnect()
    time.sleep(3.2)
    c = persistent_v5(shared_broker.port, cid)
    try:
        assert c.session_present is True
        c.wait_messages(2)
        settle(0.7)
        got = {m.payload: m.prop("MessageExpiryInterval") for m in c.messages}
        assert set(got) == {b"long", b"forever"}, f"expired message delivered or live one lost: {got}"
        assert got[b"forever"] is None
        assert got[b"long"] is not None and 50 <= got[b"long"] <= 58, (
            f"remaining expiry {got[b'long']} should be ~57 (60 minus the 3 s spent queued)"
        )
    finally:
        c.disconnect()


def _drain_with_slow_acks(c, expected, receive_max, quiet_s=0.4, timeout_s=30):
    """Receive `expected` PUBLISHes, acking one only after `quiet_s` of silence.

    Asserts the broker never has more than `receive_max` unacknowledged PUBLISHes out."""
    unacked, received, peak = [], [], 0
    deadline = time.monotonic() + timeout_s
    while len(received) < expected:
        assert time.monotonic() < deadline, f"only {len(received)}/{expected} received in {timeout_s}s"
        try:
            p = c.recv(timeout_s=quiet_s)
        except TimeoutError:
            assert unacked, f"stalled with nothing in flight after {len(received)} messages"
            c.send(raw.ack(raw.PUBACK, unacked.pop(0)))
            continue
        if p.type != raw.PUBLISH:
            continue
        msg = raw.parse_publish(p, 5)
        assert msg["qos"] == 1
        received.append(msg["payload"])
        unacked.append(msg["pid"])
        peak = max(peak, len(unacked))
        assert len(unacked) <= receive_max, f"{len(unacked)} unacked PUBLISHes, Receive Maximum is {receive_max}"
    for pid in unacked:
        c.send(raw.ack(raw.PUBACK, pid))
    return received, peak


@pytest.mark.parametrize("mode", ["queued", "live"])
def test_receive_maximum_limits_inflight(shared_broker, mode):
    topic = f"rmax/{unique_id('t')}"
    cid = unique_id("rmax")
    session = [(raw.P_SESSION_EXPIRY, 600), (raw.P_RECEIVE_MAXIMUM, 2)]
    sent = [f"m{i:02d}".encode() for i in range(10)]
    c = raw.RawClient(shared_broker.port, version=5)
    try:
        assert c.connect(cid, clean=True, properties=session)["rc"] == 0
        assert c.subscribe(1, [(topic, 1)]) == [1]
        if mode == "queued":
            c.send(raw.disconnect(version=5))
            c.close()
        pub = v5(shared_broker.port)
        infos = [pub.publish(topic, p, qos=1, wait=False) for p in sent]
        for info in infos:
            info.wait_for_publish(timeout=10)
            assert info.is_published()
        pub.disconnect()
        if mode == "queued":
            c = raw.RawClient(shared_broker.port, version=5)
            assert c.connect(cid, clean=False, properties=session)["session_present"] is True
        received, peak = _drain_with_slow_acks(c, len(sent), receive_max=2)
        assert received == sent
        assert peak == 2, "the broker should fill the window it is given"
    finally:
        c.close()


def test_maximum_packet_size_from_client(shared_broker):
    topic = f"mps/{unique_id('t')}"
    limit = 256
    with raw.RawClient(shared_broker.port, version=5) as c:
        assert c.connect(unique_id("mps"), properties=[(raw.P_MAXIMUM_PACKET_SIZE, limit)])["rc"] == 0
        assert c.subscribe(1, [(f"{topic}/#", 1)]) == [1]
        pub = v5(shared_broker.port)
        pub.publish(f"{topic}/big", b"B" * 1000, qos=1)
        pub.publish(f"{topic}/small", b"s" * 10, qos=1)
        pub.disconnect()
        seen = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                p = c.recv(timeout_s=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                break
            assert p.size <= limit, f"broker sent a {p.size}-byte packet to a client allowing {limit}"
            if p.type == raw.PUBLISH:
                msg = raw.parse_publish(p, 5)
                seen.append(msg["topic"])
                c.send(raw.ack(raw.PUBACK, msg["pid"]))
        assert seen == [f"{topic}/small"]
        # Still connected and usable.
        c.send(raw.pingreq())
        assert c.recv_type(raw.PINGRESP).type == raw.PINGRESP


def test_retained_message_expires(shared_broker):
    base = f"retexp/{unique_id('t')}"
    pub = v5(shared_broker.port)
    sub = None
    try:
        pub.publish(f"{base}/short", b"short", qos=1, retain=True, properties=publish_props(MessageExpiryInterval=1))
        pub.publish(f"{base}/long", b"long", qos=1, retain=True, properties=publish_props(MessageExpiryInterval=60))
        time.sleep(2.5)
        sub = v5(shared_broker.port)
        sub.subscribe(f"{base}/#", qos=1)
        sub.wait_messages(1)
        settle(0.7)
        got = {m.topic: m.prop("MessageExpiryInterval") for m in sub.messages}
        assert set(got) == {f"{base}/long"}, f"expired retained message delivered: {got}"
        assert 50 <= got[f"{base}/long"] <= 58, f"retained expiry not decremented: {got}"
    finally:
        pub.publish(f"{base}/long", b"", qos=1, retain=True)
        pub.disconnect()
        if sub is not None:
            sub.disconnect()
