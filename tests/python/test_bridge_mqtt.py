"""The MQTT bridge against a real Mosquitto started by the test (issue 11): forwarding in
order under the mountpoint with ${node}, remote subscriptions, v3.1.1 and v5 (No Local),
TLS with the test's own certificates, offline tolerance through an outage and kill -9
(with and without a corrupt tail), a bad remote, and `emqx_ctl bridges`."""

import struct
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridgeenv import (
    HOST,
    BridgedBroker,
    Collector,
    Mosquitto,
    bridge_conf,
    first_arrivals,
    make_certs,
    publish_all,
    segments,
    wait_segments,
)
from conftest import free_port

NODE = "emqx@127.0.0.1"


@pytest.fixture
def env(tmp_path):
    """(mosquitto, make_quay(conf) -> started node with the plugin loaded, tmp_path)."""
    mosq = Mosquitto(tmp_path).start()
    made = []

    def make(conf=None, load=True):
        b = BridgedBroker(conf or bridge_conf(f"{HOST}:{mosq.port}", tmp_path))
        made.append(b)
        b.start()
        return b.load_bridges() if load else b

    yield mosq, make, tmp_path
    for b in made:
        b.cleanup()
    mosq.stop()


def test_forwards_reach_mosquitto_in_order_under_the_mountpoint(env):
    mosq, make, _ = env
    quay = make()
    sub = Collector(mosq.port, "fwd/#", qos=2)
    payloads = [f"m{i}".encode() for i in range(500)]
    publish_all(quay.port, "sensor/a", payloads)
    publish_all(quay.port, "sensor/q2", [b"exactly-once"], qos=2)
    publish_all(quay.port, "sensor/q0", [b"at-most-once"], qos=0)
    publish_all(quay.port, "other/a", [b"not forwarded"])
    got = sub.wait_for(502)
    time.sleep(0.5)
    sub.close()
    assert [p for t, p in got if t.endswith("sensor/a")] == payloads
    assert {t for t, _ in got} == {f"fwd/{NODE}/sensor/a", f"fwd/{NODE}/sensor/q2", f"fwd/{NODE}/sensor/q0"}
    assert b"not forwarded" not in {p for _, p in got}
    quay.wait_status("up", "Running")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and quay.bridge_figures("up")["queued"] != "0":
        time.sleep(0.1)
    f = quay.bridge_figures("up")
    assert f["queued"] == "0" and f["queued_bytes"] == "0" and int(f["forwarded"]) >= 501, f
    metrics = dict(line.split(":", 1) for line in quay.ctl("metrics").stdout.splitlines())
    metrics = {k.strip(): int(v) for k, v in metrics.items()}
    assert metrics["bridge.up.connected"] == 1
    assert metrics["bridge.up.forwarded"] >= 501
    assert metrics["bridge.up.queued"] == 0 and metrics["bridge.up.dropped"] == 0


def test_remote_subscription_is_published_locally_under_receive_mountpoint(env):
    mosq, make, _ = env
    quay = make()
    quay.wait_status("up", "Running")
    local = Collector(quay.port, "remote/#")
    deadline = time.monotonic() + 15
    # The SUBACK is not visible from here: publish until the first one arrives.
    while time.monotonic() < deadline and not local.got:
        publish_all(mosq.port, "cmd/reboot", [b"now"])
        local.wait_for(1, timeout_s=1)
    publish_all(mosq.port, "cmd/seq", [f"c{i}".encode() for i in range(100)])
    got = local.wait_for(101, timeout_s=30)
    local.close()
    assert ("remote/cmd/reboot", b"now") in got
    assert [p for t, p in got if t == "remote/cmd/seq"] == [f"c{i}".encode() for i in range(100)]


def test_v5_forwards_keep_user_properties_and_no_local_stops_the_echo(env):
    """The bridge subscribes on Mosquitto to the very topics it forwards to: with v5's
    No Local, Mosquitto does not send its own forwards back, and a message published
    there by someone else still comes in."""
    mosq, make, tmp = env
    conf = bridge_conf(
        f"{HOST}:{mosq.port}",
        tmp,
        proto="mqttv5",
        extra="bridge.mqtt.up.subscription.2.topic = fwd/#\nbridge.mqtt.up.subscription.2.qos = 1\n",
    )
    quay = make(conf)
    quay.wait_status("up", "Running")
    remote_sub = Collector(mosq.port, "fwd/#", proto=mqtt.MQTTv5)
    echoed = Collector(quay.port, "remote/#", proto=mqtt.MQTTv5)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="v5pub", protocol=mqtt.MQTTv5)
    c.connect(HOST, quay.port)
    c.loop_start()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("origin", "quay")]
    c.publish("sensor/v5", b"with-props", qos=1, properties=props).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()
    assert remote_sub.wait_for(1, timeout_s=20) == [(f"fwd/{NODE}/sensor/v5", b"with-props")]
    publish_all(mosq.port, "fwd/elsewhere/x", [b"from-mosquitto"], proto=mqtt.MQTTv5)
    got = echoed.wait_for(1, timeout_s=20)
    time.sleep(1.0)  # time for an echo, if No Local were not honoured, to arrive
    got = echoed.wait_for(2, timeout_s=0.1)
    remote_sub.close()
    echoed.close()
    assert got == [("remote/fwd/elsewhere/x", b"from-mosquitto")]


def test_v5_user_properties_arrive_at_mosquitto(env):
    mosq, make, tmp = env
    quay = make(bridge_conf(f"{HOST}:{mosq.port}", tmp, proto="mqttv5"))
    quay.wait_status("up", "Running")
    seen = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="v5sub", protocol=mqtt.MQTTv5)
    sub.on_message = lambda _c, _u, m: seen.append((m.topic, m.payload, getattr(m.properties, "UserProperty", None)))
    sub.connect(HOST, mosq.port)
    sub.loop_start()
    sub.subscribe("fwd/#", qos=1)
    time.sleep(0.5)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="v5pub2", protocol=mqtt.MQTTv5)
    c.connect(HOST, quay.port)
    c.loop_start()
    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("origin", "quay")]
    c.publish("sensor/p", b"x", qos=1, properties=props).wait_for_publish(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not seen:
        time.sleep(0.05)
    c.loop_stop()
    c.disconnect()
    sub.loop_stop()
    sub.disconnect()
    assert seen == [(f"fwd/{NODE}/sensor/p", b"x", [("origin", "quay")])]


def test_tls_to_mosquitto_with_its_own_certificates(tmp_path):
    certs = make_certs(tmp_path / "certs")
    mosq = Mosquitto(tmp_path, tls=certs).start()
    conf = bridge_conf(
        f"{HOST}:{mosq.port}",
        tmp_path,
        extra=f"bridge.mqtt.up.ssl = on\nbridge.mqtt.up.cacertfile = {certs['ca']}\nbridge.mqtt.up.tls_versions = tlsv1.2,tlsv1.3\n",
    )
    # A second bridge that does not trust the test CA: refused by its own TLS check.
    conf += bridge_conf(f"{HOST}:{mosq.port}", tmp_path, name="untrusted", extra="bridge.mqtt.untrusted.ssl = on\n")
    quay = BridgedBroker(conf)
    try:
        quay.start()
        quay.load_bridges()
        quay.wait_status("up", "Running")
        sub = Collector(mosq.port, "fwd/#", tls_ca=certs["ca"])
        local = Collector(quay.port, "remote/#")
        payloads = [f"tls{i}".encode() for i in range(200)]
        publish_all(quay.port, "sensor/tls", payloads)
        got = sub.wait_for(400, timeout_s=30)
        # Both bridges forward sensor/#: the trusted one's copies arrive, the other's do not.
        assert first_arrivals([p for _, p in got]) == payloads
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not local.got:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tlspub", protocol=mqtt.MQTTv311)
            c.tls_set(ca_certs=str(certs["ca"]))
            c.connect(HOST, mosq.port)
            c.loop_start()
            c.publish("cmd/tls", b"over-tls", qos=1).wait_for_publish(10)
            c.loop_stop()
            c.disconnect()
            local.wait_for(1, timeout_s=1)
        sub.close()
        local.close()
        assert ("remote/cmd/tls", b"over-tls") in local.got
        assert quay.bridge_figures("untrusted")["status"] != "Running"
        assert "TLS handshake" in quay.console() and "bridge=untrusted" in quay.console()
        assert int(quay.bridge_figures("untrusted")["queued"]) == len(payloads)
    finally:
        quay.cleanup()
        mosq.stop()


def write_corrupt_tail(seg):
    """A torn record right after the last whole one of the write segment: header of a
    2 KB record whose bytes never made it, as a crash mid-write leaves it."""
    data = seg.read_bytes()
    at = 24
    while at + 18 <= len(data) and data[at] == 1:
        (length,) = struct.unpack(">I", data[at + 2 : at + 6])
        at += 18 + length
    torn = bytes([1, 0x51]) + struct.pack(">I", 2048) + struct.pack(">Q", 999_999_999) + b"\xde\xad\xbe\xef" + b"garbage!" * 4
    with open(seg, "r+b") as f:
        f.seek(at)
        f.write(torn)
    return at


@pytest.mark.parametrize("corrupt_tail", [False, True], ids=["clean", "corrupt_tail"])
def test_10000_acknowledged_messages_survive_an_outage_and_kill_9(env, corrupt_tail):
    mosq, make, tmp = env
    quay = make()
    quay.wait_status("up", "Running")
    mosq.stop()
    payloads = [f"offline-{i:05d}".encode() for i in range(10_000)]
    publish_all(quay.port, "sensor/b", payloads)
    assert len(segments(tmp)) > 3, "the cache rotated segments"
    assert quay.bridge_figures("up")["queued"] == "10000"
    quay.kill()
    if corrupt_tail:
        write_corrupt_tail(segments(tmp)[-1])
    mosq.start()
    sub = Collector(mosq.port, "fwd/#")
    quay.start()
    got = sub.wait_for(len(payloads), timeout_s=120)
    sub.close()
    arrived = [p for _, p in got]
    assert first_arrivals(arrived) == payloads, f"{len(first_arrivals(arrived))} of {len(payloads)} arrived in order"
    assert wait_segments(tmp, 1) == 1, "acknowledged segments were deleted"
    f = quay.bridge_figures("up")
    assert f["queued"] == "0", f
    if corrupt_tail:
        assert "torn or corrupt tail truncated" in quay.console()


def test_a_bad_remote_is_logged_once_per_interval_and_local_clients_do_not_notice(tmp_path):
    refusing = Mosquitto(tmp_path / "deny", anonymous=False).start()
    dead_port = free_port()  # nobody listens here: connection refused
    conf = bridge_conf(f"{HOST}:{dead_port}", tmp_path, name="dead", extra="bridge.mqtt.dead.reconnect_interval = 200ms\n")
    conf += bridge_conf(f"{HOST}:{refusing.port}", tmp_path, name="deny", extra="bridge.mqtt.deny.reconnect_interval = 200ms\n")
    quay = BridgedBroker(conf)
    try:
        quay.start()
        quay.load_bridges()
        local = Collector(quay.port, "sensor/#")
        payloads = [f"local{i}".encode() for i in range(300)]
        publish_all(quay.port, "sensor/x", payloads)
        assert [p for _, p in local.wait_for(300)] == payloads
        local.close()
        time.sleep(3)  # ~15 attempts per bridge at 200 ms
        log = quay.console()
        dead = [l for l in log.splitlines() if "bridge connection failed" in l and "bridge=dead" in l]
        deny = [l for l in log.splitlines() if "bridge connection failed" in l and "bridge=deny" in l]
        assert len(dead) == 1, dead
        assert len(deny) == 1, deny
        assert "Connection refused" in dead[0] or "refused" in dead[0]
        assert "refused CONNECT: not authorized (0x87)" in deny[0], deny[0]
        for name in ("dead", "deny"):
            f = quay.bridge_figures(name)
            assert f["status"] in ("Connecting", "Disconnected"), f
            assert f["queued"] == str(len(payloads)), f
            assert int(f["queued_bytes"]) > len(payloads) * 18, f
        metrics = quay.ctl("metrics").stdout
        assert "bridge.dead.connected" in metrics and "bridge.deny.queued" in metrics
    finally:
        quay.cleanup()
        refusing.stop()


def test_emqx_ctl_bridges_with_the_guides_output_and_changes_survive_kill_9(env):
    mosq, make, _ = env
    quay = make()
    ctl = quay.bridges
    quay.wait_status("up", "Running")
    assert ctl("list").startswith("name: up     status: Running     queued: 0     queued_bytes: 0")
    assert ctl("stop", "up") == "Stop bridge successfully.\n"
    assert ctl("list").startswith("name: up     status: Stopped     ")
    assert ctl("forwards", "up") == "topic:   sensor/#\n"
    assert ctl("add-forward", "up", "topic3/#") == "Add-forward topic successfully.\n"
    assert ctl("add-forwards", "up", "topic4/#") == "Add-forward topic successfully.\n"
    assert ctl("del-forwards", "up", "topic4/#") == "Del-forward topic successfully.\n"
    assert ctl("del-forward", "up", "sensor/#") == "Del-forward topic successfully.\n"
    assert ctl("forwards", "up") == "topic:   topic3/#\n"
    assert ctl("subscriptions", "up") == "topic: cmd/#, qos: 1\n"
    assert ctl("add-subscription", "up", "cmd/topic3", "1") == "Add-subscription topic successfully.\n"
    assert ctl("add-subscription", "up", "cmd/topic4", "2") == "Add-subscription topic successfully.\n"
    assert ctl("del-subscription", "up", "cmd/topic4") == "Del-subscription topic successfully.\n"
    bad = quay.ctl("bridges", "start", "nope")
    assert bad.returncode != 0 and bad.stdout == "Bridge nope not found.\n"
    assert quay.ctl("bridges", "add-forward", "up", "a/#/b").returncode != 0
    assert quay.ctl("bridges", "add-subscription", "up", "x", "3").returncode != 0
    usage = quay.ctl("bridges").stdout
    assert "bridges add-subscription <Name> <Topic> <Qos>   # Add bridge subscriptions topic" in usage
    quay.kill()
    quay.start()
    # Stopped by emqx_ctl stays stopped; the topic changes are kept (RocksDB).
    assert ctl("list").startswith("name: up     status: Stopped     ")
    assert ctl("forwards", "up") == "topic:   topic3/#\n"
    assert ctl("subscriptions", "up") == "topic: cmd/#, qos: 1\ntopic: cmd/topic3, qos: 1\n"
    sub = Collector(mosq.port, "fwd/#")
    publish_all(quay.port, "topic3/x", [b"added"])
    publish_all(quay.port, "sensor/x", [b"deleted forward"])
    assert ctl("start", "up") == "Start bridge successfully.\n"
    got = sub.wait_for(1, timeout_s=30)
    time.sleep(0.5)
    sub.close()
    assert [p for _, p in got] == [b"added"]
    quay.wait_status("up", "Running")


def test_a_remote_that_drops_the_link_on_every_publish_keeps_the_cache_and_local_clients(tmp_path):
    """Mosquitto's ACL denies the bridge's publishes; Mosquitto 2.0 answers a denied v5
    QoS 1 PUBLISH with PUBACK 0x87 and then closes the connection. The bridge keeps
    retrying, logs the failure once, keeps every message it could not deliver (a
    refusal it did read counts as dropped), and local clients notice nothing."""
    acl = tmp_path / "acl"
    acl.write_text("topic read #\n")
    mosq = Mosquitto(tmp_path, extra=f"acl_file {acl}").start()
    quay = BridgedBroker(bridge_conf(f"{HOST}:{mosq.port}", tmp_path, proto="mqttv5"))
    try:
        quay.start()
        quay.load_bridges()
        quay.wait_status("up", "Running")
        local = Collector(quay.port, "sensor/#")
        payloads = [f"d{i}".encode() for i in range(50)]
        publish_all(quay.port, "sensor/denied", payloads)
        assert [p for _, p in local.wait_for(50)] == payloads
        local.close()
        time.sleep(4)  # several reconnects at 1 s
        f = quay.bridge_figures("up")
        assert int(f["queued"]) + int(f["dropped"]) == 50 and int(f["queued"]) >= 48, f
        assert f["forwarded"] == "0", f
        # Mosquitto closes or resets: at most those two reasons, each logged once.
        failed = [l for l in quay.console().splitlines() if "bridge connection failed" in l and "bridge=up" in l]
        assert 1 <= len(failed) <= 2, failed
        assert mosq.log.read_text().count("Denied PUBLISH") >= 3, "the bridge kept retrying"
    finally:
        quay.cleanup()
        mosq.stop()
