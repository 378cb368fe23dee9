"""Keep alive: a silent client is dropped after 1.5 x keepalive; a pinging one is not."""

import time

import pytest

import rawmqtt as raw
from helpers import unique_id


@pytest.mark.parametrize("version", [4, 5], ids=["3.1.1", "5.0"])
def test_silent_client_closed_after_keepalive(shared_broker, version):
    with raw.RawClient(shared_broker.port, version=version) as c:
        ack = c.connect(unique_id("silent"), keepalive=1)
        assert ack["rc"] == 0
        if version == 5:
            assert ack["props"].get(raw.P_SERVER_KEEPALIVE, 1) == 1, "server changed keepalive"
        start = time.monotonic()
        try:
            c.wait_closed(timeout_s=6)
        except TimeoutError:
            pytest.fail("silent client with keepalive 1 s still connected after 6 s")
        waited = time.monotonic() - start
        assert 1.0 <= waited <= 3.0, f"closed after {waited:.2f}s, expected ~1.5 s"


def test_pinging_client_stays_connected(shared_broker):
    with raw.RawClient(shared_broker.port) as c:
        assert c.connect(unique_id("pinger"), keepalive=1)["rc"] == 0
        for _ in range(8):  # 4 s, well past 1.5 x keepalive
            time.sleep(0.5)
            c.send(raw.pingreq())
            p = c.recv(timeout_s=2)
            assert (p.type, p.body) == (raw.PINGRESP, b"")


# -- zone.<zone>.max_keepalive (Mosquitto's max_keepalive) ------------------------------


def closed_after(c, timeout_s):
    start = time.monotonic()
    try:
        _, seen = c.wait_closed(timeout_s=timeout_s)
    except TimeoutError:
        pytest.fail(f"still connected after {timeout_s} s")
    return time.monotonic() - start, seen


@pytest.mark.parametrize("asked", [0, 60])
def test_max_keepalive_lowers_a_v5_keepalive_and_enforces_it(broker_factory, asked):
    broker = broker_factory({"zone.external.max_keepalive": 2})
    with raw.RawClient(broker.port, version=5) as c:
        ack = c.connect(unique_id("maxka"), keepalive=asked)
        assert ack["rc"] == 0
        assert ack["props"].get(raw.P_SERVER_KEEPALIVE) == 2
        waited, seen = closed_after(c, 8)
        assert 2.5 <= waited <= 4.5, f"closed {waited:.2f}s after CONNACK, expected ~3 s (1.5 x 2)"
        assert [raw.parse_disconnect(p) for p in seen] == [0x8D], seen


def test_max_keepalive_leaves_a_shorter_v5_keepalive_alone(broker_factory):
    broker = broker_factory({"zone.external.max_keepalive": 2})
    with raw.RawClient(broker.port, version=5) as c:
        ack = c.connect(unique_id("maxka"), keepalive=1)
        assert ack["rc"] == 0
        assert raw.P_SERVER_KEEPALIVE not in ack["props"]
        waited, _ = closed_after(c, 6)
        assert 1.0 <= waited <= 2.5, f"closed after {waited:.2f}s, expected ~1.5 s"


@pytest.mark.parametrize("version", [3, 4], ids=["3.1", "3.1.1"])
@pytest.mark.parametrize("asked,rc", [(0, 2), (61, 2), (60, 0), (1, 0)])
def test_max_keepalive_refuses_v3_clients_above_it_with_identifier_rejected(broker_factory, version, asked, rc):
    """As Mosquitto: v3 cannot be told another keepalive, so one above max_keepalive,
    or 0, gets CONNACK return code 2 (identifier rejected) and the connection closes."""
    broker = broker_factory({"zone.external.max_keepalive": 60})
    with raw.RawClient(broker.port, version=version) as c:
        assert c.connect(unique_id("maxka3"), keepalive=asked)["rc"] == rc
        if rc:
            _, seen = closed_after(c, 5)
            assert seen == []


def test_server_keepalive_overrides_max_keepalive_for_v5(broker_factory):
    broker = broker_factory({"zone.external.max_keepalive": 10, "zone.external.server_keepalive": 30})
    for asked in (0, 5, 100):
        with raw.RawClient(broker.port, version=5) as c:
            ack = c.connect(unique_id("srvka"), keepalive=asked)
            assert (ack["rc"], ack["props"].get(raw.P_SERVER_KEEPALIVE)) == (0, 30)


@pytest.mark.parametrize("version", [4, 5], ids=["3.1.1", "5.0"])
def test_by_default_keepalive_0_is_accepted_unchanged(shared_broker, version):
    """Unlike Mosquitto 2.0.12+, the default max_keepalive (65535) refuses nobody."""
    with raw.RawClient(shared_broker.port, version=version) as c:
        ack = c.connect(unique_id("ka0"), keepalive=0)
        assert ack["rc"] == 0
        assert raw.P_SERVER_KEEPALIVE not in ack["props"]
        c.send(raw.pingreq())
        assert c.recv().type == raw.PINGRESP


def test_an_invalid_max_keepalive_stops_start_up_naming_the_key(broker_factory):
    broker = broker_factory({"zone.external.max_keepalive": 70000}, start=False)
    with pytest.raises(AssertionError) as failed:
        broker.start(timeout_s=20)
    assert "EMQX_ZONE__EXTERNAL__MAX_KEEPALIVE: zone.external.max_keepalive: expected an integer from 0 to 65535" in str(failed.value)
