"""MQTT 5 rules a client can break: Receive Maximum, Subscription Identifiers and Response
Topics in its PUBLISH, a will Response Topic, an Authentication Method we do not support.

Raw sockets throughout: each test asserts the exact reason code on the wire.
"""

import pytest

import rawmqtt as raw
from helpers import unique_id

RECEIVE_MAXIMUM_EXCEEDED, PROTOCOL_ERROR, BAD_AUTH_METHOD = 0x93, 0x82, 0x8C


def v5_client(port, prefix, **connect_kwargs):
    c = raw.RawClient(port, version=5)
    ack = c.connect(unique_id(prefix), **connect_kwargs)
    assert ack["rc"] == 0, ack
    return c, ack


def expect_disconnect(c, reason):
    """The broker sends DISCONNECT with `reason` and closes; nothing else on the way."""
    _, seen = c.wait_closed(timeout_s=5)
    kinds = [(p.type, raw.parse_disconnect(p) if p.type == raw.DISCONNECT else None) for p in seen]
    assert kinds == [(raw.DISCONNECT, reason)], f"expected DISCONNECT {reason:#x} then close, got {seen}"


def pubrec_reason(p):
    assert p.type == raw.PUBREC, p
    return p.body[2] if len(p.body) > 2 else 0


def qos2(topic, pid):
    return raw.publish(topic, b"x", qos=2, pid=pid, version=5)


# -- Receive Maximum -------------------------------------------------------------------


def test_paced_qos2_beyond_receive_maximum_gets_disconnect_0x93(shared_broker):
    """Each QoS 2 PUBLISH waits for its PUBREC before the next; none is released. The
    (Receive Maximum + 1)th is one more than the client may have unacknowledged."""
    topic = f"rm/{unique_id('t')}"
    c, ack = v5_client(shared_broker.port, "rm2")
    receive_max = ack["props"][raw.P_RECEIVE_MAXIMUM]
    assert receive_max == 32, "the zone's max_inflight"
    with c:
        for pid in range(1, receive_max + 1):
            c.send(qos2(topic, pid))
            p = c.recv()
            assert pubrec_reason(p) < 0x80, f"PUBREC {pid}: {p}"
        c.send(qos2(topic, receive_max + 1))
        expect_disconnect(c, RECEIVE_MAXIMUM_EXCEEDED)


@pytest.mark.parametrize("session_expiry", [0, 600], ids=["clean", "persistent"])
def test_a_qos2_slot_frees_when_pubcomp_is_sent(broker_factory, session_expiry):
    """Persistent: PUBCOMP waits for the id's deletion to be durable, and the slot with it."""
    broker = broker_factory({"zone.external.max_inflight": 3})
    topic = f"rm/{unique_id('t')}"
    c, ack = v5_client(broker.port, "rmfree", clean=False, properties=[(raw.P_SESSION_EXPIRY, session_expiry)])
    assert ack["props"][raw.P_RECEIVE_MAXIMUM] == 3
    with c:
        for pid in (1, 2, 3):
            c.send(qos2(topic, pid))
            assert pubrec_reason(c.recv()) == 0x10  # no subscriber, but accepted
        # PUBREL 2 -> PUBCOMP 2: one slot back, so one more PUBLISH is fine.
        c.send(raw.ack(raw.PUBREL, 2))
        p = c.recv()
        assert (p.type, p.body[:2]) == (raw.PUBCOMP, b"\x00\x02")
        c.send(qos2(topic, 4))
        assert pubrec_reason(c.recv()) < 0x80
        # A resent PUBLISH of a held id takes no new slot.
        c.send(raw.publish(topic, b"x", qos=2, pid=4, dup=True, version=5))
        assert pubrec_reason(c.recv()) == 0
        # A QoS 1 PUBLISH needs a slot as much as a QoS 2 one.
        c.send(raw.publish(topic, b"x", qos=1, pid=9, version=5))
        expect_disconnect(c, RECEIVE_MAXIMUM_EXCEEDED)


def test_v5_qos2_is_bounded_by_receive_maximum_not_max_awaiting_rel(broker_factory):
    """max_awaiting_rel = 2 is for v3; a v5 client may hold Receive Maximum (4) ids."""
    broker = broker_factory({"zone.external.max_inflight": 4, "zone.external.max_awaiting_rel": 2})
    topic = f"rm/{unique_id('t')}"
    c, _ = v5_client(broker.port, "rmrel")
    with c:
        for pid in (1, 2, 3, 4):
            c.send(qos2(topic, pid))
            assert pubrec_reason(c.recv()) < 0x80, f"PUBREC {pid}"
        c.send(qos2(topic, 5))
        expect_disconnect(c, RECEIVE_MAXIMUM_EXCEEDED)


def test_v311_keeps_max_awaiting_rel_and_has_no_receive_maximum(broker_factory):
    broker = broker_factory({"zone.external.max_inflight": 2, "zone.external.max_awaiting_rel": 4})
    topic = f"rm/{unique_id('t')}"
    with raw.RawClient(broker.port, version=4) as c:
        assert c.connect(unique_id("rm311"))["rc"] == 0
        for pid in (1, 2, 3, 4):  # past max_inflight: v3 has no Receive Maximum
            c.send(raw.publish(topic, b"x", qos=2, pid=pid))
            p = c.recv()
            assert (p.type, p.body) == (raw.PUBREC, pid.to_bytes(2, "big"))
        c.send(raw.publish(topic, b"x", qos=2, pid=5))
        _, seen = c.wait_closed(timeout_s=5)
        assert seen == [], f"v3 has no DISCONNECT from the server: {seen}"


# -- what a client PUBLISH may carry ---------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1])
def test_publish_with_subscription_identifier_is_a_protocol_error(shared_broker, qos):
    c, _ = v5_client(shared_broker.port, "subid")
    with c:
        props = [(raw.P_SUBSCRIPTION_ID, 7)]
        c.send(raw.publish(f"sid/{unique_id('t')}", b"x", qos=qos, pid=1 if qos else None, version=5, properties=props))
        expect_disconnect(c, PROTOCOL_ERROR)


@pytest.mark.parametrize("response_topic", ["reply/+", "reply/#", "+", ""])
def test_publish_with_invalid_response_topic_is_a_protocol_error(shared_broker, response_topic):
    c, _ = v5_client(shared_broker.port, "rtwild")
    with c:
        props = [(raw.P_RESPONSE_TOPIC, response_topic)]
        c.send(raw.publish(f"rt/{unique_id('t')}", b"x", qos=1, pid=1, version=5, properties=props))
        expect_disconnect(c, PROTOCOL_ERROR)


def test_publish_with_a_valid_response_topic_is_delivered_with_it(shared_broker):
    topic = f"rt/{unique_id('t')}"
    sub, _ = v5_client(shared_broker.port, "rtsub")
    pub, _ = v5_client(shared_broker.port, "rtpub")
    with sub, pub:
        assert sub.subscribe(1, [(topic, 1)]) == [1]
        pub.send(raw.publish(topic, b"x", qos=1, pid=1, version=5, properties=[(raw.P_RESPONSE_TOPIC, "reply/me")]))
        assert pub.recv_type(raw.PUBACK).body[:2] == b"\x00\x01"
        msg = raw.parse_publish(sub.recv_type(raw.PUBLISH), 5)
        assert msg["props"][raw.P_RESPONSE_TOPIC] == "reply/me"


# -- CONNECT ---------------------------------------------------------------------------


def refused_connack(port, version=5, **connect_kwargs):
    """CONNECT, expect a CONNACK and then the close; returns the CONNACK."""
    with raw.RawClient(port, version=version) as c:
        c.send(raw.connect(unique_id("refused"), version=version, **connect_kwargs))
        p = c.recv()
        assert p.type == raw.CONNACK, p
        _, after = c.wait_closed(timeout_s=5)
        assert after == [], f"packets after a refusing CONNACK: {after}"
        return p, raw.parse_connack(p, version)


@pytest.mark.parametrize("response_topic", ["reply/#", "a/+/b"])
def test_will_with_wildcard_response_topic_is_refused_with_0x82(shared_broker, response_topic):
    will = {"topic": "will/t", "payload": "gone", "properties": [(raw.P_RESPONSE_TOPIC, response_topic)]}
    _, ack = refused_connack(shared_broker.port, will=will)
    assert (ack["rc"], ack["session_present"]) == (PROTOCOL_ERROR, False)


def test_will_with_a_valid_response_topic_is_accepted(shared_broker):
    will = {"topic": "will/t", "payload": "gone", "properties": [(raw.P_RESPONSE_TOPIC, "reply/will")]}
    c, _ = v5_client(shared_broker.port, "rtwill", will=will)
    c.close()


def test_unsupported_authentication_method_gets_connack_0x8c(shared_broker):
    p, ack = refused_connack(shared_broker.port, properties=[(raw.P_AUTH_METHOD, "SCRAM-SHA-256"), (raw.P_AUTH_DATA, b"n,,n=user")])
    assert (ack["rc"], ack["session_present"]) == (BAD_AUTH_METHOD, False)
    assert ack["props"].get(raw.P_REASON_STRING) == "bad authentication method"
    assert raw.P_AUTH_METHOD not in ack["props"]
