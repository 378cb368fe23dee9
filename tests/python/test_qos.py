"""QoS 0/1/2 in both directions, QoS downgrade, wildcards, $SYS isolation, bad filters."""

import itertools
import struct

import pytest

import rawmqtt as raw
from helpers import V311, V5, connected, settle, unique_id


@pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5.0"])
@pytest.mark.parametrize("pub_qos,sub_qos", list(itertools.product([0, 1, 2], repeat=2)))
def test_delivered_at_min_of_publish_and_subscription_qos(shared_broker, protocol, pub_qos, sub_qos):
    topic = f"qos/{unique_id('t')}"
    sub = connected(shared_broker.port, protocol=protocol)
    pub = connected(shared_broker.port, protocol=protocol)
    try:
        assert sub.subscribe(topic, qos=sub_qos) == [sub_qos]
        sent = [f"m{i}".encode() for i in range(5)]
        for payload in sent:
            pub.publish(topic, payload, qos=pub_qos)
        got = sub.wait_messages(len(sent))
        assert [m.payload for m in got] == sent, "same publisher, same topic: order must be kept"
        assert {m.qos for m in got} == {min(pub_qos, sub_qos)}
        assert all(m.topic == topic and not m.retain for m in got)
    finally:
        sub.disconnect()
        pub.disconnect()


def test_qos2_publish_is_delivered_once_raw(shared_broker):
    """The publisher resends the same QoS2 PUBLISH (DUP) before PUBREL: one delivery only."""
    topic = f"qos2/once/{unique_id('t')}"
    sub = connected(shared_broker.port)
    try:
        sub.subscribe(topic, qos=2)
        with raw.RawClient(shared_broker.port) as p:
            assert p.connect(unique_id("q2raw"))["rc"] == 0
            p.send(raw.publish(topic, b"exactly-once", qos=2, pid=7))
            rec = p.recv_type(raw.PUBREC)
            assert rec.body[:2] == b"\x00\x07"
            p.send(raw.publish(topic, b"exactly-once", qos=2, pid=7, dup=True))
            rec2 = p.recv_type(raw.PUBREC)
            assert rec2.body[:2] == b"\x00\x07"
            p.send(raw.ack(raw.PUBREL, 7))
            comp = p.recv_type(raw.PUBCOMP)
            assert comp.body[:2] == b"\x00\x07"
        sub.wait_messages(1)
        settle(1.0)
        assert sub.payloads() == [b"exactly-once"]
    finally:
        sub.disconnect()


def test_wildcards_plus_and_hash(shared_broker):
    base = f"wc{unique_id('')}"
    sub_plus = connected(shared_broker.port)
    sub_hash = connected(shared_broker.port)
    pub = connected(shared_broker.port)
    try:
        sub_plus.subscribe(f"{base}/+/x", qos=1)
        sub_hash.subscribe(f"{base}/#", qos=1)
        topics = [f"{base}/a/x", f"{base}/a/b/x", f"{base}/a/x/y", base, f"{base}/b/x", f"{base}x/a/x"]
        for t in topics:
            pub.publish(t, t.encode(), qos=1)
        pub.publish(f"{base}/end", b"end", qos=1)
        sub_hash.wait_messages(6)
        settle(0.5)
        assert sorted(m.topic for m in sub_plus.messages) == sorted([f"{base}/a/x", f"{base}/b/x"])
        # "a/#" also matches the parent level "a" (MQTT 4.7.1.2).
        assert sorted(m.topic for m in sub_hash.messages) == sorted(
            [f"{base}/a/x", f"{base}/a/b/x", f"{base}/a/x/y", base, f"{base}/b/x", f"{base}/end"]
        )
    finally:
        for c in (sub_plus, sub_hash, pub):
            c.disconnect()


def test_dollar_topics_not_matched_by_leading_wildcards(shared_broker):
    """MQTT 4.7.2: '#' and '+/..' never match topics starting with '$' ($SYS included)."""
    marker = unique_id("sys").encode()
    everything = connected(shared_broker.port)
    plus = connected(shared_broker.port)
    dollar_sub = connected(shared_broker.port)
    pub = connected(shared_broker.port)
    try:
        everything.subscribe("#", qos=1)
        plus.subscribe("+/x", qos=1)
        dollar_sub.subscribe("$app/#", qos=1)
        pub.publish("$SYS/x", marker, qos=1)
        pub.publish("$app/x", marker, qos=1)
        pub.publish("normal/x", marker, qos=1)
        # Positive controls: the $ topic is routed, and the wildcard subscribers work.
        assert [(m.topic, m.payload) for m in dollar_sub.wait_messages(1)] == [("$app/x", marker)]
        assert plus._wait(lambda: any(m.topic == "normal/x" and m.payload == marker for m in plus.messages), 5)
        assert everything._wait(
            lambda: any(m.topic == "normal/x" and m.payload == marker for m in everything.messages), 5
        )
        settle(0.5)
        assert not [m.topic for m in everything.messages if m.topic.startswith("$")], "# matched a $ topic"
        assert not [m.topic for m in plus.messages if m.topic.startswith("$")], "+/x matched a $ topic"
    finally:
        for c in (everything, plus, dollar_sub, pub):
            c.disconnect()


BAD_FILTERS = ["bad/#/x", "bad+", "bad/#x", "a/b#"]


@pytest.mark.parametrize("version,failure", [(4, 0x80), (5, 0x8F)], ids=["3.1.1", "5.0"])
def test_invalid_topic_filter_gets_failure_code(shared_broker, version, failure):
    with raw.RawClient(shared_broker.port, version=version) as c:
        assert c.connect(unique_id("badf"))["rc"] == 0
        codes = c.subscribe(3, [(f, 1) for f in BAD_FILTERS] + [("good/+/filter", 1)])
        assert codes == [failure] * len(BAD_FILTERS) + [1]
        # The connection stays usable.
        assert c.subscribe(4, [("still/ok", 2)]) == [2]


def test_unsubscribe_stops_delivery(shared_broker):
    topic = f"unsub/{unique_id('t')}"
    sub = connected(shared_broker.port)
    pub = connected(shared_broker.port)
    try:
        sub.subscribe(topic, qos=1)
        pub.publish(topic, b"before", qos=1)
        sub.wait_messages(1)
        sub.unsubscribe(topic)
        pub.publish(topic, b"after", qos=1)
        settle(0.7)
        assert sub.payloads() == [b"before"]
    finally:
        sub.disconnect()
        pub.disconnect()


@pytest.mark.parametrize("qos", [1, 2])
def test_large_payload_round_trip(shared_broker, qos):
    """900 KB: under the default 1 MB mqtt.max_packet_size, stored and delivered intact."""
    topic = f"large/{unique_id('t')}"
    payload = bytes(range(256)) * (900_000 // 256)
    sub = connected(shared_broker.port)
    pub = connected(shared_broker.port)
    try:
        sub.subscribe(topic, qos=2)
        pub.publish(topic, payload, qos=qos)
        (m,) = sub.wait_messages(1)
        assert m.payload == payload and m.qos == qos
    finally:
        sub.disconnect()
        pub.disconnect()


def test_pubrec_of_a_resent_qos2_publish_waits_for_earlier_ones(shared_broker):
    """Acks go out in PUBLISH order [MQTT-4.6.0-2], also when one of them needs nothing
    stored: a resent QoS 2 PUBLISH (id already held) arriving right behind a new one
    whose id is still being stored is answered after it, not before."""
    with raw.RawClient(shared_broker.port) as c:
        c.connect(unique_id("pubrec-order"), clean=False)
        c.send(raw.publish("order/a", b"1", qos=2, pid=1))
        first = c.recv_type(raw.PUBREC)
        assert struct.unpack(">H", first.body[:2])[0] == 1
        # One write: a new id (its QoS 2 state goes to the store), then id 1 again.
        c.send(raw.publish("order/a", b"2", qos=2, pid=2) + raw.publish("order/a", b"1", qos=2, pid=1, dup=True))
        ids = [struct.unpack(">H", c.recv_type(raw.PUBREC).body[:2])[0] for _ in range(2)]
        assert ids == [2, 1], f"PUBRECs out of PUBLISH order: {ids}"
