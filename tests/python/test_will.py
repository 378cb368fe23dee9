"""Will messages: sent on abnormal disconnect only; v5 Will Delay Interval."""

import time

import rawmqtt as raw
from helpers import connected, settle, unique_id


def watcher(port, topic):
    w = connected(port)
    assert w.subscribe(topic, qos=1) == [1]
    return w


def will_client(port, cid, topic, payload, version=4, clean=True, properties=(), will_properties=(), retain=False):
    c = raw.RawClient(port, version=version)
    will = {"topic": topic, "payload": payload, "qos": 1, "retain": retain, "properties": will_properties}
    ack = c.connect(cid, clean=clean, will=will, properties=properties)
    assert ack["rc"] == 0
    return c, ack


def test_will_published_on_abnormal_disconnect(shared_broker):
    topic = f"will/{unique_id('abn')}"
    w = watcher(shared_broker.port, topic)
    try:
        c, _ = will_client(shared_broker.port, unique_id("willer"), topic, b"gone away")
        c.close()  # no DISCONNECT
        got = w.wait_messages(1, timeout_s=5)
        assert [(m.topic, m.payload) for m in got] == [(topic, b"gone away")]
    finally:
        w.disconnect()


def test_will_not_published_on_normal_disconnect(shared_broker):
    topic = f"will/{unique_id('norm')}"
    w = watcher(shared_broker.port, topic)
    try:
        c, _ = will_client(shared_broker.port, unique_id("willer"), topic, b"must not appear")
        c.send(raw.disconnect())
        c.wait_closed(timeout_s=5)
        c.close()
        # A sentinel published after the disconnect: once it is here, a will would be too.
        pub = connected(shared_broker.port)
        pub.publish(topic, b"sentinel", qos=1)
        pub.disconnect()
        w.wait_messages(1)
        settle(1.0)
        assert w.payloads() == [b"sentinel"]
    finally:
        w.disconnect()


def test_will_with_retain_is_stored_as_retained(shared_broker):
    topic = f"will/{unique_id('ret')}"
    w = watcher(shared_broker.port, topic)
    late = None
    try:
        c, _ = will_client(shared_broker.port, unique_id("willer"), topic, b"last words", retain=True)
        c.close()
        assert [m.payload for m in w.wait_messages(1, timeout_s=5)] == [b"last words"]
        late = connected(shared_broker.port)
        late.subscribe(topic, qos=1)
        got = late.wait_messages(1)
        assert [(m.payload, m.retain) for m in got] == [(b"last words", True)]
    finally:
        w.disconnect()
        if late is not None:
            late.disconnect()
        cleaner = connected(shared_broker.port)
        cleaner.publish(topic, b"", qos=1, retain=True)
        cleaner.disconnect()


V5_SESSION = [(raw.P_SESSION_EXPIRY, 60)]


def test_v5_will_delay_cancelled_by_reconnect(shared_broker):
    topic = f"will/{unique_id('delay')}"
    cid = unique_id("delayer")
    w = watcher(shared_broker.port, topic)
    try:
        c, _ = will_client(shared_broker.port, cid, topic, b"delayed", version=5, properties=V5_SESSION,
                           will_properties=[(raw.P_WILL_DELAY, 3)])
        c.close()
        time.sleep(1.0)
        with raw.RawClient(shared_broker.port, version=5) as again:
            ack = again.connect(cid, clean=False, properties=V5_SESSION)
            assert ack["rc"] == 0 and ack["session_present"] is True
            settle(4.0)  # past the 3 s delay
            assert w.payloads() == [], "will published although the client came back within the delay"
            again.send(raw.disconnect(version=5))
    finally:
        w.disconnect()


def test_v5_will_delay_elapses_then_published(shared_broker):
    topic = f"will/{unique_id('late')}"
    w = watcher(shared_broker.port, topic)
    try:
        c, _ = will_client(shared_broker.port, unique_id("delayer"), topic, b"delayed", version=5,
                           properties=V5_SESSION, will_properties=[(raw.P_WILL_DELAY, 3)])
        dropped_at = time.monotonic()
        c.close()
        got = w.wait_messages(1, timeout_s=10)
        assert [m.payload for m in got] == [b"delayed"], "will not published after its delay"
        waited = got[0].at - dropped_at
        assert waited >= 2.5, f"will published after {waited:.2f}s, before its 3 s delay"
    finally:
        w.disconnect()


def test_v5_will_published_when_session_ends_before_delay(shared_broker):
    """Will delay 30 s but session expiry 1 s: the will goes when the session ends."""
    topic = f"will/{unique_id('sess')}"
    w = watcher(shared_broker.port, topic)
    try:
        c, _ = will_client(shared_broker.port, unique_id("delayer"), topic, b"session over", version=5,
                           properties=[(raw.P_SESSION_EXPIRY, 1)], will_properties=[(raw.P_WILL_DELAY, 30)])
        c.close()
        got = w.wait_messages(1, timeout_s=8)
        assert [m.payload for m in got] == [b"session over"]
    finally:
        w.disconnect()


def test_v5_disconnect_with_will_message_reason_publishes_will(shared_broker):
    """DISCONNECT with reason 0x04 (Disconnect with Will Message) still sends the will."""
    topic = f"will/{unique_id('dww')}"
    w = watcher(shared_broker.port, topic)
    try:
        c, _ = will_client(shared_broker.port, unique_id("dww"), topic, b"asked for it", version=5)
        c.send(raw.disconnect(version=5, reason=0x04))
        c.close()
        got = w.wait_messages(1, timeout_s=5)
        assert [m.payload for m in got] == [b"asked for it"]
    finally:
        w.disconnect()
