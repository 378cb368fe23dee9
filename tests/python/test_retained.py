"""Retained messages: delivery on subscribe, replace, delete, and durability."""

import pytest

from helpers import V5, connected, settle, unique_id


def set_retained(port, topic, payload, qos=1, protocol=None):
    kwargs = {} if protocol is None else {"protocol": protocol}
    pub = connected(port, **kwargs)
    try:
        pub.publish(topic, payload, qos=qos, retain=True)
    finally:
        pub.disconnect()


def test_retained_delivered_on_subscribe_with_retain_flag(shared_broker):
    topic = f"ret/{unique_id('t')}"
    set_retained(shared_broker.port, topic, b"kept")
    sub = connected(shared_broker.port)
    try:
        sub.subscribe(topic, qos=1)
        got = sub.wait_messages(1)
        assert [(m.topic, m.payload, m.retain, m.qos) for m in got] == [(topic, b"kept", True, 1)]
    finally:
        sub.disconnect()


def test_retained_qos_is_min_of_message_and_subscription(shared_broker):
    topic = f"ret/{unique_id('q')}"
    set_retained(shared_broker.port, topic, b"q2", qos=2)
    sub = connected(shared_broker.port)
    try:
        sub.subscribe(topic, qos=1)
        got = sub.wait_messages(1)
        assert [(m.payload, m.qos, m.retain) for m in got] == [(b"q2", 1, True)]
    finally:
        sub.disconnect()


def test_live_delivery_of_retained_publish_has_retain_flag_clear_v311(shared_broker):
    """MQTT-3.3.1-9: to an established subscription the RETAIN flag is 0."""
    topic = f"ret/{unique_id('live')}"
    sub = connected(shared_broker.port)
    try:
        sub.subscribe(topic, qos=1)
        set_retained(shared_broker.port, topic, b"live")
        got = sub.wait_messages(1)
        assert [(m.payload, m.retain) for m in got] == [(b"live", False)]
    finally:
        sub.disconnect()
        set_retained(shared_broker.port, topic, b"")


def test_wildcard_subscribe_gets_every_matching_retained(shared_broker):
    base = f"retw/{unique_id('w')}"
    topics = [f"{base}/a", f"{base}/b/c", f"{base}/d"]
    for t in topics:
        set_retained(shared_broker.port, t, t.encode())
    sub = connected(shared_broker.port)
    try:
        sub.subscribe(f"{base}/#", qos=1)
        sub.wait_messages(3)
        settle(0.3)
        assert sorted((m.topic, m.payload, m.retain) for m in sub.messages) == sorted(
            (t, t.encode(), True) for t in topics
        )
    finally:
        sub.disconnect()


def test_new_retained_replaces_old(shared_broker):
    topic = f"ret/{unique_id('rep')}"
    set_retained(shared_broker.port, topic, b"old")
    set_retained(shared_broker.port, topic, b"new")
    sub = connected(shared_broker.port)
    try:
        sub.subscribe(topic, qos=1)
        sub.wait_messages(1)
        settle(0.5)
        assert sub.payloads() == [b"new"]
    finally:
        sub.disconnect()


def test_empty_retained_payload_deletes(shared_broker):
    base = f"retd/{unique_id('d')}"
    set_retained(shared_broker.port, f"{base}/gone", b"x")
    set_retained(shared_broker.port, f"{base}/keep", b"k")
    set_retained(shared_broker.port, f"{base}/gone", b"")
    sub = connected(shared_broker.port)
    try:
        sub.subscribe(f"{base}/#", qos=1)
        sub.wait_messages(1)
        settle(0.7)
        assert [(m.topic, m.payload) for m in sub.messages] == [(f"{base}/keep", b"k")]
    finally:
        sub.disconnect()


@pytest.mark.parametrize("crash", [False, True], ids=["graceful", "kill-9"])
def test_retained_survives_restart(broker, crash):
    topics = {f"durable/{i}": f"retained-{i}".encode() for i in range(5)}
    for t, payload in topics.items():
        set_retained(broker.port, t, payload)
    set_retained(broker.port, "durable/deleted", b"soon gone")
    set_retained(broker.port, "durable/deleted", b"")
    v5_topic = "durable/v5"
    set_retained(broker.port, v5_topic, b"five", protocol=V5)
    topics[v5_topic] = b"five"

    broker.restart(crash=crash)

    sub = connected(broker.port)
    try:
        sub.subscribe("durable/#", qos=1)
        sub.wait_messages(len(topics))
        settle(0.5)
        assert sorted((m.topic, m.payload, m.retain) for m in sub.messages) == sorted(
            (t, p, True) for t, p in topics.items()
        ), "retained set after restart differs (a deleted one came back, or one was lost)"
    finally:
        sub.disconnect()
