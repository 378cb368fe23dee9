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
