"""Session expiry: sessions end on time, and their queued data leaves the disk."""

import time

import rawmqtt as raw
from helpers import V5, connect_props, connected, unique_id


def v5_session(port, cid, expiry_s):
    return connected(port, cid, protocol=V5, clean_start=False,
                     properties=connect_props(SessionExpiryInterval=expiry_s))


def test_session_kept_within_expiry(shared_broker):
    cid = unique_id("keep")
    v5_session(shared_broker.port, cid, 2).disconnect()
    time.sleep(0.5)
    c = v5_session(shared_broker.port, cid, 2)
    try:
        assert c.session_present is True
    finally:
        c.disconnect()


def test_session_gone_after_expiry(shared_broker):
    cid = unique_id("expire")
    c = v5_session(shared_broker.port, cid, 2)
    c.subscribe("expire/t", qos=1)
    c.disconnect()
    time.sleep(4.0)
    c = v5_session(shared_broker.port, cid, 2)
    try:
        assert c.session_present is False
    finally:
        c.disconnect()


def test_disconnect_can_shorten_session_expiry(shared_broker):
    """v5 DISCONNECT may carry a new Session Expiry Interval; 0 ends the session with the
    connection (MQTT 5.0 3.1.2.11.2), so a reconnect after the close finds no session."""
    cid = unique_id("shorten")
    with raw.RawClient(shared_broker.port, version=5) as c:
        assert c.connect(cid, clean=False, properties=[(raw.P_SESSION_EXPIRY, 600)])["rc"] == 0
        c.send(raw.packet(raw.DISCONNECT, 0, bytes([0]) + raw.encode_props([(raw.P_SESSION_EXPIRY, 0)])))
        c.wait_closed(timeout_s=5)
    with raw.RawClient(shared_broker.port, version=5) as c:
        ack = c.connect(cid, clean=False, properties=[(raw.P_SESSION_EXPIRY, 600)])
        assert ack["session_present"] is False, "session outlived a DISCONNECT with Session Expiry Interval 0"


def test_v5_session_without_expiry_ends_with_connection(shared_broker):
    """No Session Expiry Interval (0): the session ends when the connection closes."""
    cid = unique_id("noexp")
    with raw.RawClient(shared_broker.port, version=5) as c:
        assert c.connect(cid, clean=True)["rc"] == 0
        assert c.subscribe(1, [("noexp/t", 1)]) == [1]
        c.send(raw.disconnect(version=5))
        c.wait_closed(timeout_s=5)
    with raw.RawClient(shared_broker.port, version=5) as c:
        ack = c.connect(cid, clean=False, properties=[(raw.P_SESSION_EXPIRY, 600)])
        assert ack["session_present"] is False, "a session with expiry 0 outlived its connection"


def test_expired_session_data_is_removed_from_disk(broker):
    """~30 MB queued for an offline session; after it expires the store must shrink."""
    cid = unique_id("bigq")
    topic = "bigq/t"
    expiry_s = 15
    c = v5_session(broker.port, cid, expiry_s)
    c.subscribe(topic, qos=1)
    c.disconnect()
    offline_at = time.monotonic()

    pub = connected(broker.port)
    payload = b"x" * 100_000
    infos = [pub.publish(topic, payload[:-6] + f"{i:06d}".encode(), qos=1, wait=False) for i in range(300)]
    for info in infos:
        info.wait_for_publish(timeout=60)
        assert info.is_published()
    pub.disconnect()
    published_in = time.monotonic() - offline_at
    assert published_in < expiry_s, f"publishing took {published_in:.1f}s, longer than the session expiry"

    peak = broker.db_size()
    assert peak >= 20_000_000, f"only {peak} bytes under data/db after queueing 30 MB"

    # Session expiry, then up to 30 s for the store to give the space back.
    time.sleep(max(0.0, expiry_s + 1.5 - (time.monotonic() - offline_at)))
    deadline = time.monotonic() + 30
    sizes = []
    while True:
        size = broker.db_size()
        sizes.append(size)
        if size < peak / 2 or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    assert sizes[-1] < peak / 2, f"data/db still {sizes[-1]} bytes (peak {peak}) 30 s after the session expired: {sizes}"

    c = v5_session(broker.port, cid, expiry_s)
    try:
        assert c.session_present is False
    finally:
        c.disconnect()
