"""Session promises that cross a connection's end: a v5 resume with Session Expiry 0,
retained messages queued for a persistent session, delayed wills across a crash and a
clean-start reconnect, and DUP after a crash (issue 7, defects 6, 8, 9, 10, 12)."""

import time

import rawmqtt as raw
from helpers import V5, connect_props, connected, props, settle, unique_id
from paho.mqtt.packettypes import PacketTypes

EXPIRY = connect_props(SessionExpiryInterval=300)


def persistent_v5(port, cid):
    return connected(port, cid, protocol=V5, clean_start=False, properties=EXPIRY)


def test_v5_resume_with_expiry_0_gets_the_queue_then_the_session_ends(broker):
    """[MQTT-3.1.2-5]: session present = 1 means the stored queue is delivered; with
    expiry 0 the session ends with that connection [MQTT-3.1.2-4], also across a
    restart."""
    cid, topic = unique_id("exp0"), "contract/exp0"
    sub = persistent_v5(broker.port, cid)
    assert sub.subscribe(topic, qos=1) == [1]
    sub.disconnect()
    pub = connected(broker.port)
    for i in range(5):
        pub.publish(topic, f"queued-{i}", qos=1)

    # Clean Start 0 and no Session Expiry property (= 0), as the Paho
    # interoperability client sends it.
    sub = connected(broker.port, cid, protocol=V5, clean_start=False)
    try:
        assert sub.session_present is True
        got = sub.wait_messages(5)
        assert [m.payload for m in got] == [f"queued-{i}".encode() for i in range(5)]
    finally:
        sub.disconnect()
    pub.publish(topic, b"after the end", qos=1)
    pub.stop()
    broker.restart()

    sub = persistent_v5(broker.port, cid)
    try:
        assert sub.session_present is False, "the session ended with its expiry-0 connection"
        settle(1.0)
        assert sub.payloads() == [], "nothing of the ended session comes back"
    finally:
        sub.disconnect()


def test_disconnect_session_expiry_is_capped_by_the_zone(broker_factory):
    b = broker_factory({"zone.external.session_expiry_interval": "2s"})
    cid = unique_id("cap")
    sub = persistent_v5(b.port, cid)
    assert sub.subscribe("contract/cap", qos=1) == [1]
    sub.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=3600))
    time.sleep(4)
    again = persistent_v5(b.port, cid)
    try:
        assert again.session_present is False, "DISCONNECT asked 3600 s; the zone allows 2 s"
    finally:
        again.disconnect()


def test_retained_qos1_sent_on_subscribe_is_kept_until_acked(broker):
    """A persistent session that leaves before acking a retained QoS 1 message it got
    on SUBSCRIBE gets it again, also after kill -9."""
    topic, cid = "contract/retained/q1", unique_id("retq1")
    pub = connected(broker.port)
    pub.publish(topic, b"kept", qos=1, retain=True)
    pub.stop()
    with raw.RawClient(broker.port) as c:
        assert c.connect(cid, clean=False)["rc"] == 0
        assert c.subscribe(1, [(topic, 1)]) == [1]
        first = raw.parse_publish(c.recv_type(raw.PUBLISH), 4)
        assert (first["payload"], first["retain"], first["qos"]) == (b"kept", True, 1)
        # Gone without PUBACK; the broker dies right after.
    broker.restart(crash=True)
    with raw.RawClient(broker.port) as c:
        ack = c.connect(cid, clean=False)
        assert ack["session_present"] is True
        again = raw.parse_publish(c.recv_type(raw.PUBLISH), 4)
        assert (again["payload"], again["retain"]) == (b"kept", True)
        assert again["dup"] is True, "sent before: DUP"
        c.send(raw.ack(raw.PUBACK, again["pid"]))
    with raw.RawClient(broker.port) as c:
        assert c.connect(cid, clean=False)["session_present"] is True
        try:
            p = c.recv(timeout_s=1.0)
            raise AssertionError(f"acked, yet sent again: {p}")
        except TimeoutError:
            pass


def will_client(port, cid, delay_s, topic):
    will = {
        "topic": topic,
        "payload": b"gone",
        "qos": 1,
        "properties": [(raw.P_WILL_DELAY, delay_s)],
    }
    c = raw.RawClient(port, version=5)
    ack = c.connect(cid, clean=False, properties=[(raw.P_SESSION_EXPIRY, 300)], will=will)
    assert ack["rc"] == 0
    return c


def test_a_delayed_will_survives_kill_9(broker):
    topic = "contract/will/crash"
    watcher_id = unique_id("willw")
    watcher = persistent_v5(broker.port, watcher_id)
    assert watcher.subscribe(topic, qos=1) == [1]
    watcher.disconnect()
    c = will_client(broker.port, unique_id("willc"), 3, topic)
    c.close()  # lost, no DISCONNECT: the will waits 3 s
    time.sleep(0.5)
    broker.restart(crash=True)
    watcher = persistent_v5(broker.port, watcher_id)
    try:
        got = watcher.wait_messages(1, timeout_s=10)
        assert [m.payload for m in got] == [b"gone"], "the delayed will was lost in the crash"
        settle(1.0)
        assert len(watcher.messages) == 1, "published once"
    finally:
        watcher.disconnect()


def test_a_clean_start_reconnect_publishes_the_waiting_will_at_once(shared_broker):
    topic, cid = f"contract/will/clean/{unique_id('t')}", unique_id("willcs")
    watcher = connected(shared_broker.port)
    assert watcher.subscribe(topic, qos=1) == [1]
    c = will_client(shared_broker.port, cid, 60, topic)
    c.close()
    settle(1.0)
    assert watcher.payloads() == [], "the will waits for its delay"
    start = time.monotonic()
    with raw.RawClient(shared_broker.port, version=5) as again:
        assert again.connect(cid, clean=True)["session_present"] is False
        got = watcher.wait_messages(1, timeout_s=10)
    try:
        assert [m.payload for m in got] == [b"gone"]
        assert time.monotonic() - start < 5, "published when the old session ended, not after 60 s"
    finally:
        watcher.disconnect()


def test_a_reconnect_within_the_delay_cancels_the_will_also_after_a_restart(broker):
    topic, cid = "contract/will/cancel", unique_id("willcc")
    c = will_client(broker.port, cid, 4, topic)
    c.close()
    time.sleep(0.5)
    broker.restart(crash=True)
    watcher = connected(broker.port)
    assert watcher.subscribe(topic, qos=1) == [1]
    with raw.RawClient(broker.port, version=5) as again:
        ack = again.connect(cid, clean=False, properties=[(raw.P_SESSION_EXPIRY, 300)])
        assert ack["session_present"] is True
        settle(6.0)
    try:
        assert watcher.payloads() == [], "the client came back within the delay"
    finally:
        watcher.disconnect()


def test_messages_stored_after_a_crash_go_out_without_dup(broker):
    """A session online when the broker died resends what was stored before with DUP,
    and sends what is stored after the restart without it [MQTT-3.3.1-1]."""
    topic, cid = "contract/dup", unique_id("dupc")
    with raw.RawClient(broker.port) as c:
        assert c.connect(cid, clean=False)["rc"] == 0
        assert c.subscribe(1, [(topic, 1)]) == [1]
        pub = connected(broker.port)
        pub.publish(topic, b"before", qos=1)
        pub.stop()
        first = raw.parse_publish(c.recv_type(raw.PUBLISH), 4)
        assert first["payload"] == b"before"
        broker.restart(crash=True)  # while online, before acking
    with raw.RawClient(broker.port) as c:
        assert c.connect(cid, clean=False)["session_present"] is True
        again = raw.parse_publish(c.recv_type(raw.PUBLISH), 4)
        assert (again["payload"], again["dup"]) == (b"before", True)
        c.send(raw.ack(raw.PUBACK, again["pid"]))
        pub = connected(broker.port)
        pub.publish(topic, b"after", qos=1)
        pub.stop()
        new = raw.parse_publish(c.recv_type(raw.PUBLISH), 4)
        assert (new["payload"], new["dup"]) == (b"after", False), "first send of a new message"
