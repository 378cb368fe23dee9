"""The open-file ceiling and `max_connections`: past either, a new client gets a clean
refusal (CONNACK 0x97 Quota exceeded in 5.0, return code 3 Server unavailable in 3.1.1)
while the clients already connected keep working, and a freed place is taken again.

The ceiling test runs the broker under `prlimit --nofile=200:300`: the broker raises its
soft limit to the hard limit (300) and keeps a reserve for RocksDB, listeners, logs and
the control socket (README, "Scale and tuning"); what is left is the ceiling it logs.
"""

import re
import socket
import ssl
import time
from pathlib import Path

from conftest import Broker
from helpers import V5, V311, Client, unique_id, wait_until
import rawmqtt
from test_flow_control import metric

REPO = Path(__file__).resolve().parents[2]
QUOTA_EXCEEDED = 0x97
SERVER_UNAVAILABLE_V3 = 3
# paho maps a 3.1.1 return code 3 to this reason code.
PAHO_SERVER_UNAVAILABLE = 0x88


class LimitedBroker(Broker):
    """A broker started with a soft limit of 200 and a hard limit of 300 open files."""

    def argv(self):
        return ["prlimit", "--nofile=200:300", "--", *super().argv()]

def logged_ceiling(broker):
    """(open files, connection ceiling) from the broker's start-up line."""
    found = {}

    def read():
        text = broker.log_tail()
        if "connection ceiling set" not in text:
            return False
        line = next(l for l in text.splitlines() if "connection ceiling set" in l)
        found.update(re.findall(r"(\w+)=(\d+)", line))
        return True

    assert wait_until(read, timeout_s=10), f"no ceiling line in the log:\n{broker.log_tail()}"
    return int(found["open_files"]), int(found["max_connections"])


def raw_connect(port, version=4):
    c = rawmqtt.RawClient(port, version=version)
    return c, c.connect(unique_id("raw"), keepalive=0)


def assert_refused_raw(port, version, expected):
    c = rawmqtt.RawClient(port, version=version)
    try:
        connack = c.connect(unique_id("over"), keepalive=0)
        assert connack["rc"] == expected, connack
        c.wait_closed(timeout_s=5)
    finally:
        c.close()


def assert_refused_paho(port, protocol, expected):
    c = Client(port, protocol=protocol)
    try:
        reason, _, _ = c.connect(expect_success=False)
        assert reason.value == expected, f"CONNACK {reason}"
    finally:
        c.c.loop_stop()


def test_at_the_open_file_ceiling_new_clients_are_refused_and_old_ones_keep_working():
    broker = LimitedBroker()
    try:
        broker.start()
        open_files, ceiling = logged_ceiling(broker)
        assert open_files == 300, "the soft limit (200) was raised to the hard limit (300)"
        assert 100 <= ceiling < 300, ceiling
        # The start-up probe's connection is gone before clients count.
        time.sleep(0.5)
        sub = Client(broker.port, protocol=V311)
        sub.connect()
        sub.subscribe("ceiling/t", qos=1)
        pub = Client(broker.port, protocol=V311)
        pub.connect()
        held = []
        for _ in range(ceiling - 2):
            c, connack = raw_connect(broker.port)
            held.append(c)
            assert connack["rc"] == 0, f"refused after {len(held) + 1} of {ceiling}: {connack}"

        assert_refused_paho(broker.port, V5, QUOTA_EXCEEDED)
        assert_refused_paho(broker.port, V311, PAHO_SERVER_UNAVAILABLE)
        assert_refused_raw(broker.port, 5, QUOTA_EXCEEDED)
        assert_refused_raw(broker.port, 4, SERVER_UNAVAILABLE_V3)
        assert metric(broker, "client.refused.ceiling") == 4

        # The clients already in keep working.
        pub.publish("ceiling/t", b"still here", qos=1)
        assert sub.wait_messages(1)[0].payload == b"still here"
        held[0].send(rawmqtt.pingreq())
        assert held[0].recv().type == rawmqtt.PINGRESP
        text = broker.log_tail()
        assert text.count("open-file ceiling reached; connection refused") == 1, "logged once per interval"

        # A freed place is taken again.
        for c in held[:5]:
            c.close()

        def admitted():
            c, connack = raw_connect(broker.port)
            if connack["rc"] == 0:
                held.append(c)
                return True
            c.close()
            return False

        assert wait_until(admitted, timeout_s=10, interval_s=0.2), "no client admitted after 5 left"
        for c in held:
            c.close()
        sub.disconnect()
        pub.disconnect()
    finally:
        broker.cleanup()


def test_max_connections_refuses_with_a_connack(broker_factory):
    broker = broker_factory(
        {"listener.tcp.external.max_connections": 2, "listener.ssl.external.max_connections": 1}
    )
    time.sleep(0.5)  # the start-up probe's connection is gone
    first, a = raw_connect(broker.port)
    second, b = raw_connect(broker.port, version=5)
    assert a["rc"] == 0 and b["rc"] == 0
    assert_refused_paho(broker.port, V5, QUOTA_EXCEEDED)
    assert_refused_raw(broker.port, 4, SERVER_UNAVAILABLE_V3)
    assert metric(broker, "client.refused.max_connections") == 2
    first.close()
    # Retried until the freed slot is seen: a try before that is one more refusal.
    assert wait_until(lambda: raw_connect(broker.port)[1]["rc"] == 0, timeout_s=10, interval_s=0.2)
    second.close()
    refused_before_tls = metric(broker, "client.refused.max_connections")

    # On a TLS listener the refusal is a closed socket before the handshake completes.
    ctx = ssl.create_default_context(cafile=str(REPO / "etc/certs/cacert.pem"))
    ctx.check_hostname = False
    inside = ctx.wrap_socket(socket.create_connection(("127.0.0.1", broker.ssl_port), timeout=5))
    inside.sendall(rawmqtt.connect(unique_id("tls"), keepalive=0))
    assert inside.recv(4) == b"\x20\x02\x00\x00"
    refused = socket.create_connection(("127.0.0.1", broker.ssl_port), timeout=5)
    try:
        try:
            tls = ctx.wrap_socket(refused)
            tls.sendall(rawmqtt.connect(unique_id("tls"), keepalive=0))
            got = tls.recv(4)
        except (ssl.SSLError, OSError):
            got = b""
        assert got == b"", f"a TLS client past max_connections got {got!r}"
    finally:
        refused.close()
        inside.close()
    assert metric(broker, "client.refused.max_connections") == refused_before_tls + 1
