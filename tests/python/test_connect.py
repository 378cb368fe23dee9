"""CONNECT/CONNACK for MQTT 3.1, 3.1.1 and 5.0: versions, session present, client ids."""

import pytest

import rawmqtt as raw
from helpers import V31, V311, V5, Client, connect_props, connected, unique_id


def test_mqtt31_connack_is_accepted_bytes(shared_broker):
    with raw.RawClient(shared_broker.port, version=3) as c:
        c.send(raw.connect(unique_id("v31"), version=3))
        p = c.recv()
        assert (p.type, p.body) == (raw.CONNACK, b"\x00\x00")


@pytest.mark.parametrize("protocol", [V31, V311, V5], ids=["3.1", "3.1.1", "5.0"])
def test_connect_and_round_trip_each_version(shared_broker, protocol):
    c = connected(shared_broker.port, protocol=protocol)
    try:
        rc, present, _ = c.connack
        assert rc == 0
        assert present is False
        topic = f"connect/{c.client_id}"
        assert c.subscribe(topic, qos=1) == [1]
        c.publish(topic, b"hello", qos=1)
        got = c.wait_messages(1)
        assert [(m.topic, m.payload, m.qos) for m in got] == [(topic, b"hello", 1)]
    finally:
        c.disconnect()


def test_session_present_v311(shared_broker):
    cid = unique_id("sp311")
    first = connected(shared_broker.port, cid, clean=False)
    assert first.session_present is False
    first.disconnect()
    second = connected(shared_broker.port, cid, clean=False)
    assert second.session_present is True
    second.disconnect()
    third = connected(shared_broker.port, cid, clean=True)
    assert third.session_present is False, "clean session must discard the stored session"
    third.disconnect()
    fourth = connected(shared_broker.port, cid, clean=False)
    assert fourth.session_present is False, "the clean session above must have removed the session"
    fourth.disconnect()


def test_session_present_v5(shared_broker):
    cid = unique_id("sp5")
    expiry = connect_props(SessionExpiryInterval=300)
    first = connected(shared_broker.port, cid, protocol=V5, clean_start=False, properties=expiry)
    assert first.session_present is False
    first.disconnect()
    second = connected(shared_broker.port, cid, protocol=V5, clean_start=False, properties=expiry)
    assert second.session_present is True
    second.disconnect()
    third = connected(shared_broker.port, cid, protocol=V5, clean_start=True, properties=expiry)
    assert third.session_present is False
    third.disconnect()


def test_session_present_raw_byte_v311(shared_broker):
    cid = unique_id("spraw")
    with raw.RawClient(shared_broker.port) as c:
        assert c.connect(cid, clean=False) == {"session_present": False, "rc": 0, "props": {}}
        c.send(raw.disconnect())
    with raw.RawClient(shared_broker.port) as c:
        c.send(raw.connect(cid, clean=False))
        p = c.recv()
        assert (p.type, p.body) == (raw.CONNACK, b"\x01\x00")


def test_empty_client_id_v311_clean_is_accepted(shared_broker):
    with raw.RawClient(shared_broker.port) as c:
        ack = c.connect("", clean=True)
        assert ack["rc"] == 0
        assert ack["session_present"] is False
        # The connection is usable: subscribe and get a SUBACK.
        assert c.subscribe(1, [("empty/id/t", 1)]) == [1]


def test_empty_client_id_v311_not_clean_is_refused(shared_broker):
    with raw.RawClient(shared_broker.port) as c:
        ack = c.connect("", clean=False)
        assert ack["rc"] == 2, "identifier rejected"
        assert ack["session_present"] is False
        waited, _ = c.wait_closed(timeout_s=5)
        assert waited < 5


def test_empty_client_id_v5_gets_assigned_identifier(shared_broker):
    with raw.RawClient(shared_broker.port, version=5) as c:
        ack = c.connect("", clean=True)
        assert ack["rc"] == 0
        assigned = ack["props"].get(raw.P_ASSIGNED_CLIENT_ID)
        assert assigned, f"no Assigned Client Identifier in CONNACK properties {ack['props']}"
    with raw.RawClient(shared_broker.port, version=5) as other:
        other_assigned = other.connect("")["props"].get(raw.P_ASSIGNED_CLIENT_ID)
        assert other_assigned and other_assigned != assigned, "assigned ids must be unique"


def test_empty_client_id_v5_with_paho(shared_broker):
    c = Client(shared_broker.port, client_id="", protocol=V5)
    try:
        _, _, properties = c.connect()
        assert getattr(properties, "AssignedClientIdentifier", ""), "paho saw no Assigned Client Identifier"
    finally:
        c.disconnect()


def test_first_packet_must_be_connect(shared_broker):
    with raw.RawClient(shared_broker.port) as c:
        c.send(raw.subscribe(1, [("x", 0)]))
        _, seen = c.wait_closed(timeout_s=5)
        assert all(p.type != raw.SUBACK for p in seen)
