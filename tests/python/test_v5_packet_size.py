"""CONNACK and DISCONNECT within the client's Maximum Packet Size [MQTT-3.1.2-24].

On its defaults the broker's CONNACK is 20 bytes: Receive Maximum (3), Maximum Packet
Size (5), Topic Alias Maximum (3), Subscription Identifier Available (2), Shared
Subscription Available (2), property length, flags, reason, fixed header. Properties are
dropped in the documented order (README, "Maximum Packet Size") until it fits.
"""

import pytest

import rawmqtt as raw
from helpers import unique_id

# The default CONNACK's properties, in the order they are dropped.
DROP_ORDER = [
    raw.P_SUB_ID_AVAILABLE,
    raw.P_TOPIC_ALIAS_MAXIMUM,
    raw.P_SHARED_SUB_AVAILABLE,
    raw.P_MAXIMUM_PACKET_SIZE,
    raw.P_RECEIVE_MAXIMUM,
]


def connack_for(port, max_packet, client_id=None, **kwargs):
    """CONNECT announcing `max_packet`; returns (CONNACK packet or None if closed, client)."""
    c = raw.RawClient(port, version=5)
    cid = unique_id("mps") if client_id is None else client_id
    c.send(raw.connect(cid, version=5, properties=[(raw.P_MAXIMUM_PACKET_SIZE, max_packet)], **kwargs))
    try:
        return c.recv(), c
    except raw.Closed:
        return None, c


def test_the_default_connack_is_20_bytes(shared_broker):
    p, c = connack_for(shared_broker.port, 20)
    with c:
        assert p.size == 20
        assert set(raw.parse_connack(p, 5)["props"]) == set(DROP_ORDER)


@pytest.mark.parametrize(
    "max_packet,size,dropped",
    [(19, 18, 1), (18, 18, 1), (17, 15, 2), (15, 15, 2), (14, 13, 3), (12, 8, 4), (7, 5, 5), (5, 5, 5)],
)
def test_connack_drops_properties_in_order_until_it_fits(shared_broker, max_packet, size, dropped):
    p, c = connack_for(shared_broker.port, max_packet)
    with c:
        assert p is not None and p.type == raw.CONNACK, "closed without CONNACK"
        assert p.size == size <= max_packet, f"{p.size}-byte CONNACK for a client allowing {max_packet}"
        ack = raw.parse_connack(p, 5)
        assert ack["rc"] == 0
        assert set(ack["props"]) == set(DROP_ORDER[dropped:])
        # The connection works on.
        c.send(raw.pingreq())
        assert c.recv().type == raw.PINGRESP


def test_a_client_too_small_for_any_connack_is_closed_without_one(shared_broker):
    p, c = connack_for(shared_broker.port, 4)
    with c:
        assert p is None, f"sent {p} to a client allowing 4 bytes"


def test_an_assigned_client_identifier_is_never_dropped(shared_broker):
    """The client must learn the id it was given [MQTT-3.2.2-16]: if it does not fit,
    no CONNACK is sent at all."""
    p, c = connack_for(shared_broker.port, 16, client_id="")
    with c:
        assert p is None, f"sent {p} to a client allowing 16 bytes"
    p, c = connack_for(shared_broker.port, 40, client_id="")
    with c:
        ack = raw.parse_connack(p, 5)
        assert ack["rc"] == 0 and p.size <= 40
        assert ack["props"][raw.P_ASSIGNED_CLIENT_ID].startswith("quay-")


def test_a_refusing_connack_drops_its_reason_string_to_fit(shared_broker):
    props = [(raw.P_MAXIMUM_PACKET_SIZE, 6), (raw.P_AUTH_METHOD, "SCRAM-SHA-1")]
    with raw.RawClient(shared_broker.port, version=5) as c:
        c.send(raw.connect(unique_id("mpsref"), version=5, properties=props))
        p = c.recv()
        assert (p.type, p.size, p.body) == (raw.CONNACK, 5, bytes([0, 0x8C, 0]))


@pytest.mark.parametrize("max_packet,with_reason_string", [(20, False), (26, True)])
def test_disconnect_drops_its_reason_string_to_fit(shared_broker, max_packet, with_reason_string):
    """Topic Alias 0 is invalid: DISCONNECT 0x94, 26 bytes with its reason string
    "topic alias invalid", 3 without."""
    p, c = connack_for(shared_broker.port, max_packet)
    with c:
        assert raw.parse_connack(p, 5)["rc"] == 0
        c.send(raw.publish("mps/alias", b"x", version=5, properties=[(raw.P_TOPIC_ALIAS, 0)]))
        _, seen = c.wait_closed()
        assert [q.type for q in seen] == [raw.DISCONNECT]
        d = seen[0]
        assert d.size <= max_packet
        assert raw.parse_disconnect(d) == 0x94
        if with_reason_string:
            assert d.size == 26
            props, _ = raw.decode_props(d.body, 1)
            assert props[raw.P_REASON_STRING] == "topic alias invalid"
        else:
            assert (d.size, d.body) == (3, b"\x94")
