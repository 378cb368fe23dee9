"""Session takeover: a second connection with the same client id replaces the first."""

import pytest

import rawmqtt as raw
from helpers import V311, V5, connect_props, connected, unique_id


@pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5.0"])
def test_second_connection_takes_over(shared_broker, protocol):
    cid = unique_id("dup")
    first = connected(shared_broker.port, cid, protocol=protocol)
    second = connected(shared_broker.port, cid, protocol=protocol)
    try:
        assert first.wait_disconnect(timeout_s=5), "first connection not closed by the takeover"
        if protocol == V5:
            reason, _ = first.disconnects[0]
            assert reason == 0x8E, f"expected DISCONNECT Session taken over (0x8E), got {reason}"
        topic = f"takeover/{cid}"
        assert second.subscribe(topic, qos=1) == [1]
        second.publish(topic, b"still works", qos=1)
        assert [m.payload for m in second.wait_messages(1)] == [b"still works"]
        assert second.disconnects == [], "the new connection must stay up"
    finally:
        first.stop()
        second.disconnect()


def test_takeover_v5_disconnect_packet_bytes(shared_broker):
    cid = unique_id("dupraw")
    with raw.RawClient(shared_broker.port, version=5) as first:
        assert first.connect(cid)["rc"] == 0
        with raw.RawClient(shared_broker.port, version=5) as second:
            assert second.connect(cid)["rc"] == 0
            _, seen = first.wait_closed(timeout_s=5)
            disconnects = [p for p in seen if p.type == raw.DISCONNECT]
            assert len(disconnects) == 1, f"packets before close: {seen}"
            assert raw.parse_disconnect(disconnects[0]) == 0x8E


@pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5.0"])
def test_takeover_keeps_persistent_session(shared_broker, protocol):
    cid = unique_id("dupsess")
    kwargs = {"protocol": protocol}
    if protocol == V5:
        kwargs.update(clean_start=False, properties=connect_props(SessionExpiryInterval=300))
    else:
        kwargs["clean"] = False
    topic = f"takeover/sess/{cid}"
    first = connected(shared_broker.port, cid, **kwargs)
    first.subscribe(topic, qos=1)
    second = connected(shared_broker.port, cid, **kwargs)
    pub = connected(shared_broker.port)
    try:
        assert second.session_present is True
        assert first.wait_disconnect(timeout_s=5)
        pub.publish(topic, b"to the new owner", qos=1)
        assert [m.payload for m in second.wait_messages(1)] == [b"to the new owner"]
    finally:
        first.stop()
        second.disconnect()
        pub.disconnect()
