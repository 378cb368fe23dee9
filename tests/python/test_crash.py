"""kill -9 right after the last acknowledgement: nothing acknowledged may be lost.

This is the product's promise: PUBACK/PUBREC go out only once the message is fsynced.
"""

import threading
import time

import rawmqtt as raw
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


def test_concurrent_publishers_survive_kill_9(broker):
    """Several connections publishing at once land in shared group-commit batches."""
    topic = "crash/many"
    cid = unique_id("crashmany")
    sub = connected(broker.port, cid, clean=False)
    sub.subscribe(topic, qos=1)
    sub.disconnect()

    publishers, per_publisher = 4, 100
    expected = {f"p{p}-{i:03d}".encode() for p in range(publishers) for i in range(per_publisher)}
    results, errors = [], []

    def run(p):
        try:
            payloads = [f"p{p}-{i:03d}".encode() for i in range(per_publisher)]
            results.append(publish_and_wait_all(broker.port, topic, payloads, qos=1))
        except AssertionError as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(p,)) for p in range(publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=ACK_TIMEOUT_S + 10)
    assert not errors, errors
    assert len(results) == publishers
    broker.kill()
    for pub in results:
        pub.stop()
    broker.start()

    sub = connected(broker.port, cid, clean=False)
    try:
        assert sub.session_present is True
        sub.wait_messages(len(expected), timeout_s=DELIVERY_TIMEOUT_S)
        missing = expected - set(sub.payloads())
        assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:5]}"
    finally:
        sub.disconnect()


def test_crash_again_during_recovery(broker):
    """kill -9, restart, kill -9 again before any client connects, restart: nothing lost."""
    topic = "crash/twice"
    cid = unique_id("crashtwice")
    sub = connected(broker.port, cid, clean=False)
    sub.subscribe(topic, qos=1)
    sub.disconnect()
    payloads = [f"t-{i:03d}".encode() for i in range(100)]
    pub = publish_and_wait_all(broker.port, topic, payloads, qos=1)
    broker.kill()
    pub.stop()
    broker.start()
    broker.kill()
    broker.start()

    sub = connected(broker.port, cid, clean=False)
    try:
        assert sub.session_present is True
        sub.wait_messages(len(payloads), timeout_s=DELIVERY_TIMEOUT_S)
        missing = set(payloads) - set(sub.payloads())
        assert not missing, f"{len(missing)} messages lost across two crashes"
    finally:
        sub.disconnect()


def test_qos2_crash_between_pubrec_and_pubrel(broker):
    """PUBREC means the broker owns the message: after kill -9 the publisher's PUBREL is
    completed and the subscriber gets the message exactly once."""
    topic = "crash/pubrel"
    sub_id, pub_id = unique_id("relsub"), unique_id("relpub")
    sub = connected(broker.port, sub_id, clean=False)
    sub.subscribe(topic, qos=2)
    sub.disconnect()

    with raw.RawClient(broker.port) as p:
        assert p.connect(pub_id, clean=False)["rc"] == 0
        p.send(raw.publish(topic, b"owned by the broker", qos=2, pid=9))
        assert p.recv_type(raw.PUBREC).body[:2] == b"\x00\x09"
        broker.kill()
    broker.start()

    with raw.RawClient(broker.port) as p:
        ack = p.connect(pub_id, clean=False)
        assert ack["session_present"] is True, "publisher's persistent session lost in the crash"
        p.send(raw.ack(raw.PUBREL, 9))
        assert p.recv_type(raw.PUBCOMP).body[:2] == b"\x00\x09"
        p.send(raw.disconnect())

    sub = connected(broker.port, sub_id, clean=False)
    try:
        sub.wait_messages(1, timeout_s=10)
        settle(1.5)
        assert sub.payloads() == [b"owned by the broker"]
    finally:
        sub.disconnect()
