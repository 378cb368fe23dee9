"""Shared subscriptions ($share/<group>/<filter>, as in EMQX 4 and MQTT 5.0 4.8.2)."""

from collections import Counter

from helpers import V311, V5, connected, settle, unique_id


def test_shared_group_delivers_each_message_once(shared_broker):
    topic = f"shared/{unique_id('t')}"
    members = [connected(shared_broker.port, protocol=p) for p in (V311, V5, V311)]
    plain = connected(shared_broker.port)
    pub = connected(shared_broker.port)
    try:
        for m in members:
            assert m.subscribe(f"$share/g1/{topic}", qos=1) == [1]
        plain.subscribe(topic, qos=1)
        sent = [f"s{i:02d}".encode() for i in range(30)]
        for p in sent:
            pub.publish(topic, p, qos=1)
        plain.wait_messages(len(sent))
        settle(1.0)
        counts = Counter(p for m in members for p in m.payloads())
        assert counts == Counter(sent), "each message goes to exactly one member of the group"
        assert all(msg.topic == topic for m in members for msg in m.messages), "topic must not carry $share"
        assert sorted(plain.payloads()) == sorted(sent), "a plain subscriber still gets everything"
    finally:
        for c in members + [plain, pub]:
            c.disconnect()


def test_two_groups_each_get_every_message(shared_broker):
    topic = f"shared/{unique_id('g')}"
    a = [connected(shared_broker.port) for _ in range(2)]
    b = [connected(shared_broker.port) for _ in range(2)]
    pub = connected(shared_broker.port)
    try:
        for c in a:
            c.subscribe(f"$share/ga/{topic}", qos=1)
        for c in b:
            c.subscribe(f"$share/gb/{topic}", qos=1)
        sent = [f"x{i:02d}".encode() for i in range(10)]
        for p in sent:
            pub.publish(topic, p, qos=1)
        settle(1.5)
        assert Counter(p for c in a for p in c.payloads()) == Counter(sent)
        assert Counter(p for c in b for p in c.payloads()) == Counter(sent)
    finally:
        for c in a + b + [pub]:
            c.disconnect()
