"""kill -9 right after the last acknowledgement: nothing acknowledged may be lost.

This is the product's promise: PUBACK/PUBREC go out only once the message is fsynced.
"""

import time

from helpers import V5, connect_props, connected, settle, unique_id

N = 200
ACK_TIMEOUT_S = 60
DELIVERY_TIMEOUT_S = 60


def publish_and_wait_all(port, topic, payloads, qos, retain=False):
    """Publish everything pipelined, then wait for every PUBACK (QoS1) / PUBCOMP (QoS2)."""
    pub = connected(port, unique_id("crashpub"))
    infos = [pub.publish(topic(i) if callable(topic) else topic, p, qos=qos, retain=retain, wait=False)
             for i, p in enumerate(payloads)]
    deadline = time.monotonic() + ACK_TIMEOUT_S
    for i, info in enumerate(infos):
        info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
        assert info.is_published(), f"message {i} not acknowledged within {ACK_TIMEOUT_S}s"
    return pub


def test_qos1_acknowledged_messages_survive_kill_9(broker):
    topic = "crash/qos1"
    cid = unique_id("crashsub1")
    sub = connected(broker.port, cid, clean=False)
    assert sub.subscribe(topic, qos=1) == [1]
    sub.disconnect()

    payloads = [f"q1-{i:04d}".encode() for i in range(N)]
    pub = publish_and_wait_all(broker.port, topic, payloads, qos=1)
    broker.kill()
    pub.stop()
    broker.start()

    sub = connected(broker.port, cid, clean=False)
    try:
        assert sub.session_present is True, "persistent session lost in the crash"
        sub.wait_messages(N, timeout_s=DELIVERY_TIMEOUT_S)
        got = set(sub.payloads())
        missing = sorted(set(payloads) - got)
        assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
        assert got <= set(payloads)
    finally:
        sub.disconnect()


def test_qos2_exactly_once_across_kill_9(broker):
    topic = "crash/qos2"
    cid = unique_id("crashsub2")
    sub = connected(broker.port, cid, protocol=V5, clean_start=False,
                    properties=connect_props(SessionExpiryInterval=3600))
    assert sub.subscribe(topic, qos=2) == [2]
    sub.disconnect()

    payloads = [f"q2-{i:04d}".encode() for i in range(N)]
    pub = publish_and_wait_all(broker.port, topic, payloads, qos=2)
    broker.kill()
    pub.stop()
    broker.start()

    sub = connected(broker.port, cid, protocol=V5, clean_start=False,
                    properties=connect_props(SessionExpiryInterval=3600))
    try:
        assert sub.session_present is True, "persistent session lost in the crash"
        sub.wait_messages(N, timeout_s=DELIVERY_TIMEOUT_S)
        settle(1.5)
        got = sub.payloads()
        missing = sorted(set(payloads) - set(got))
        dups = sorted({p for p in got if got.count(p) > 1})
        assert not missing, f"{len(missing)} completed QoS2 messages lost, e.g. {missing[:5]}"
        assert not dups, f"QoS2 delivered more than once: {dups[:5]}"
        assert len(got) == N
        assert got == payloads, "one publisher, one topic: order must be kept"
    finally:
        sub.disconnect()


def test_retained_survive_kill_9_right_after_last_puback(broker):
    count = 50
    payloads = [f"retained-{i:03d}".encode() for i in range(count)]
    pub = publish_and_wait_all(broker.port, lambda i: f"crashret/{i:03d}", payloads, qos=1, retain=True)
    broker.kill()
    pub.stop()
    broker.start()

    sub = connected(broker.port)
    try:
        sub.subscribe("#", qos=1)
        sub.wait_messages(count, timeout_s=DELIVERY_TIMEOUT_S)
        settle(0.5)
        got = {m.topic: (m.payload, m.retain) for m in sub.messages if m.topic.startswith("crashret/")}
        expected = {f"crashret/{i:03d}": (payloads[i], True) for i in range(count)}
        missing = sorted(set(expected) - set(got))
        assert not missing, f"{len(missing)} retained messages lost: {missing[:5]}"
        assert got == expected
    finally:
        sub.disconnect()


def test_crash_while_subscriber_is_draining(broker):
    """kill -9 after part of the queue was delivered and acked: the rest still arrives,
    and nothing acked by the subscriber is lost from the set it sees over both runs."""
    topic = "crash/drain"
    cid = unique_id("crashdrain")
    sub = connected(broker.port, cid, clean=False)
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    payloads = [f"d-{i:04d}".encode() for i in range(N)]
    publish_and_wait_all(broker.port, topic, payloads, qos=1).disconnect()

    first = connected(broker.port, cid, clean=False)
    first.wait_messages(N // 4, timeout_s=DELIVERY_TIMEOUT_S)
    broker.kill()
    first.stop()
    seen_before = set(first.payloads())
    broker.start()

    second = connected(broker.port, cid, clean=False)
    try:
        assert second.session_present is True
        remaining = set(payloads) - seen_before
        assert second._wait(lambda: remaining <= set(m.payload for m in second.messages), DELIVERY_TIMEOUT_S), (
            f"{len(remaining - set(second.payloads()))} undelivered messages lost in the crash"
        )
    finally:
        second.disconnect()
