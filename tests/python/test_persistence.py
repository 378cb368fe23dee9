"""Persistent sessions: offline queueing, resume, and the same across a broker restart."""

import pytest

import rawmqtt as raw
from helpers import V311, V5, connect_props, connected, settle, unique_id


def offline_subscriber(port, topic, qos=1, protocol=V311):
    """Connect a persistent session, subscribe, disconnect cleanly. Returns its client id."""
    cid = unique_id("pers")
    kwargs = {"protocol": protocol}
    if protocol == V5:
        kwargs.update(clean_start=False, properties=connect_props(SessionExpiryInterval=600))
    else:
        kwargs["clean"] = False
    c = connected(port, cid, **kwargs)
    assert c.subscribe(topic, qos=qos) == [qos]
    c.disconnect()
    return cid, kwargs


def resume_and_receive(port, cid, kwargs, n):
    """Reconnect the persistent session `cid`, check it was present, and return every
    message that arrived once `n` did and a moment passed (to catch extras)."""
    c = connected(port, cid, **kwargs)
    try:
        assert c.session_present is True
        c.wait_messages(n)
        settle(0.5)
        return list(c.messages)
    finally:
        c.disconnect()


def publish_all(port, topic, payloads, qos=1):
    pub = connected(port)
    try:
        for p in payloads:
            pub.publish(topic, p, qos=qos)
    finally:
        pub.disconnect()


@pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5.0"])
def test_offline_messages_delivered_on_resume(shared_broker, protocol):
    topic = f"pers/{unique_id('t')}"
    cid, kwargs = offline_subscriber(shared_broker.port, topic, protocol=protocol)
    sent = [f"offline-{i}".encode() for i in range(10)]
    publish_all(shared_broker.port, topic, sent)
    got = resume_and_receive(shared_broker.port, cid, kwargs, len(sent))
    assert [m.payload for m in got] == sent
    assert all(m.qos == 1 for m in got)


def test_qos0_queued_too_as_mqueue_store_qos0_defaults_true(shared_broker):
    """zone.<zone>.mqueue_store_qos0 defaults to true (as in EMQX 4): offline QoS0 is queued."""
    topic = f"pers/{unique_id('q0')}"
    cid, kwargs = offline_subscriber(shared_broker.port, topic, qos=1)
    publish_all(shared_broker.port, topic, [b"zero"], qos=0)
    publish_all(shared_broker.port, topic, [b"one"], qos=1)
    c = connected(shared_broker.port, cid, **kwargs)
    try:
        got = c.wait_messages(2)
        assert [(m.payload, m.qos) for m in got] == [(b"zero", 0), (b"one", 1)]
    finally:
        c.disconnect()


def test_clean_session_discards_queue(shared_broker):
    topic = f"pers/{unique_id('clean')}"
    cid, kwargs = offline_subscriber(shared_broker.port, topic)
    publish_all(shared_broker.port, topic, [b"lost on purpose"])
    c = connected(shared_broker.port, cid, clean=True)
    try:
        assert c.session_present is False
        settle(1.0)
        assert c.messages == []
    finally:
        c.disconnect()


@pytest.mark.parametrize("crash", [False, True], ids=["graceful", "kill-9"])
@pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5.0"])
def test_session_and_queue_survive_restart(broker, protocol, crash):
    topic = "pers/restart"
    cid, kwargs = offline_subscriber(broker.port, topic, qos=2, protocol=protocol)
    sent = [f"before-restart-{i}".encode() for i in range(10)]
    publish_all(broker.port, topic, sent[:5], qos=1)
    publish_all(broker.port, topic, sent[5:], qos=2)

    broker.restart(crash=crash)

    got = resume_and_receive(broker.port, cid, kwargs, len(sent))
    assert [m.payload for m in got] == sent
    assert [m.qos for m in got] == [1] * 5 + [2] * 5


def test_subscription_survives_restart_for_messages_published_after(broker):
    topic = "pers/after/restart"
    cid, kwargs = offline_subscriber(broker.port, "pers/after/+", qos=1)
    broker.restart()
    publish_all(broker.port, topic, [b"published after restart"])
    c = connected(broker.port, cid, **kwargs)
    try:
        assert c.session_present is True
        got = c.wait_messages(1)
        assert [(m.topic, m.payload) for m in got] == [(topic, b"published after restart")]
    finally:
        c.disconnect()


@pytest.mark.parametrize("version", [4, 5], ids=["3.1.1", "5.0"])
def test_unacked_inflight_redelivered_with_dup_on_reconnect(shared_broker, version):
    """MQTT-3.3.1-1 / 5.0 4.4: a resent PUBLISH has DUP=1 and its original packet id."""
    topic = f"pers/{unique_id('dup')}"
    cid = unique_id("inflight")
    session = [(raw.P_SESSION_EXPIRY, 600)]
    with raw.RawClient(shared_broker.port, version=version) as c:
        assert c.connect(cid, clean=False, properties=session)["rc"] == 0
        assert c.subscribe(1, [(topic, 1)]) == [1]
        publish_all(shared_broker.port, topic, [b"ack me later"])
        first = raw.parse_publish(c.recv_type(raw.PUBLISH), version)
        assert first["payload"] == b"ack me later" and first["dup"] is False
        # Close without PUBACK.
    with raw.RawClient(shared_broker.port, version=version) as c:
        ack = c.connect(cid, clean=False, properties=session)
        assert ack["session_present"] is True
        again = raw.parse_publish(c.recv_type(raw.PUBLISH), version)
        assert (again["payload"], again["qos"], again["pid"]) == (b"ack me later", 1, first["pid"])
        assert again["dup"] is True, "redelivered PUBLISH without the DUP flag"
        c.send(raw.ack(raw.PUBACK, again["pid"]))
        c.send(raw.disconnect(version=version))
    with raw.RawClient(shared_broker.port, version=version) as c:
        assert c.connect(cid, clean=False, properties=session)["session_present"] is True
        with pytest.raises(TimeoutError):
            p = c.recv_type(raw.PUBLISH, timeout_s=1.0)
            pytest.fail(f"acked message redelivered: {p}")


@pytest.mark.parametrize("crash", [False, True], ids=["graceful", "kill-9"])
def test_recovered_session_keeps_the_queue_limit_of_its_zone(broker_factory, crash):
    """A session made through the internal listener keeps zone internal's queue bound
    after a restart, not the default zone's, while its client is still away."""
    b = broker_factory({"zone.external.max_mqueue_len": 5, "zone.internal.max_mqueue_len": 50})
    topic = "pers/zone/limit"
    cid, kwargs = offline_subscriber(b.internal_port, topic)
    b.restart(crash=crash)
    sent = [f"queued-{i}".encode() for i in range(20)]
    publish_all(b.port, topic, sent)
    got = resume_and_receive(b.internal_port, cid, kwargs, len(sent))
    assert [m.payload for m in got] == sent, f"{len(got)} of {len(sent)} delivered"
