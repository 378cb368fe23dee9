"""The MQTT bridge against a real Mosquitto: forwarding in order, the mountpoint with
${node}, remote subscriptions, and offline tolerance through kill -9 (issue 11)."""

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from conftest import REPO, Broker, free_port, port_accepts

HOST = "127.0.0.1"


class Mosquitto:
    def __init__(self, root):
        self.root = Path(root)
        self.port = free_port()
        self.proc = None
        conf = self.root / "mosquitto.conf"
        conf.write_text(f"listener {self.port} {HOST}\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 0\n")
        self.conf = conf

    def start(self):
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if port_accepts(self.port):
                return
            time.sleep(0.05)
        raise AssertionError("mosquitto did not start")

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
            self.proc = None


class BridgedBroker(Broker):
    """A Quay node whose etc/ is a copy with etc/plugins/emqx_bridge_mqtt.conf written."""

    def __init__(self, bridge_conf):
        super().__init__()
        shutil.copytree(REPO / "etc", self.root / "etc")
        (self.root / "etc" / "plugins" / "emqx_bridge_mqtt.conf").write_text(bridge_conf)

    def argv(self):
        return [self.emqx, "--config", str(self.root / "etc" / "emqx.conf"), "foreground"]


class Collector:
    """A subscriber on Mosquitto recording (topic, payload) in arrival order."""

    def __init__(self, port, topic, proto=mqtt.MQTTv311):
        self.got = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"collector-{os.getpid()}-{port}", protocol=proto)
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.connect(HOST, port)
        self.c.loop_start()
        self.c.subscribe(topic, qos=1)
        assert self.ready.wait(10)

    def _on_message(self, _c, _u, msg):
        with self.lock:
            self.got.append((msg.topic, msg.payload))

    def wait_for(self, n, timeout_s=60):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.got) >= n:
                    return list(self.got)
            time.sleep(0.05)
        with self.lock:
            return list(self.got)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def publish_all(port, topic, payloads, qos=1):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{time.monotonic_ns()}", protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    c.connect(HOST, port)
    c.loop_start()
    infos = [c.publish(topic, p, qos=qos) for p in payloads]
    for i in infos:
        i.wait_for_publish(60)
        assert i.is_published()
    c.loop_stop()
    c.disconnect()


def bridge_conf(mosq_port, root, extra=""):
    return f"""
bridge.mqtt.up.address = {HOST}:{mosq_port}
bridge.mqtt.up.proto_ver = mqttv4
bridge.mqtt.up.client_id = quay_bridge_{mosq_port}
bridge.mqtt.up.forwards = sensor/#
bridge.mqtt.up.mountpoint = fwd/${{node}}/
bridge.mqtt.up.reconnect_interval = 1s
bridge.mqtt.up.retry_interval = 5s
bridge.mqtt.up.queue.replayq_dir = {root}/bridgeq/
bridge.mqtt.up.queue.replayq_seg_bytes = 64KB
bridge.mqtt.up.subscription.1.topic = cmd/#
bridge.mqtt.up.subscription.1.qos = 1
bridge.mqtt.up.receive_mountpoint = remote/
{extra}
"""


@pytest.fixture
def env(tmp_path):
    mosq = Mosquitto(tmp_path)
    mosq.start()
    made = []

    def make():
        b = BridgedBroker(bridge_conf(mosq.port, tmp_path))
        made.append(b)
        b.start()
        out = b.ctl("plugins", "load", "emqx_bridge_mqtt").stdout
        assert "successfully" in out, out
        return b

    yield mosq, make, tmp_path
    for b in made:
        b.cleanup()
    mosq.stop()


def node_name(broker):
    return broker.ctl("status").split("Node ")[1].split(" ")[0] if "Node " in broker.ctl("status") else None


def test_forwards_reach_mosquitto_in_order_under_the_mountpoint(env):
    mosq, make, _ = env
    quay = make()
    sub = Collector(mosq.port, "fwd/#")
    payloads = [f"m{i}".encode() for i in range(500)]
    publish_all(quay.port, "sensor/a", payloads)
    publish_all(quay.port, "other/a", [b"not forwarded"])
    got = sub.wait_for(500)
    sub.close()
    assert [p for _, p in got] == payloads
    topics = {t for t, _ in got}
    assert len(topics) == 1
    (topic,) = topics
    assert topic.startswith("fwd/") and topic.endswith("/sensor/a") and "${node}" not in topic
    assert "@" in topic, f"${{node}} expands to the node name: {topic}"


def test_remote_subscription_is_published_locally(env):
    mosq, make, _ = env
    quay = make()
    local = Collector(quay.port, "remote/#")
    time.sleep(1.5)  # the bridge has connected and subscribed (reconnect_interval 1s)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not local.got:
        publish_all(mosq.port, "cmd/reboot", [b"now"])
        local.wait_for(1, timeout_s=1)
    local.close()
    assert ("remote/cmd/reboot", b"now") in local.got


def test_acknowledged_messages_survive_an_outage_and_kill_9(env):
    mosq, make, tmp = env
    quay = make()
    mosq.stop()
    payloads = [f"offline-{i}".encode() for i in range(2000)]
    publish_all(quay.port, "sensor/b", payloads)
    segs = list((tmp / "bridgeq").glob("*.seg"))
    assert len(segs) > 1, "the cache rotated segments"
    quay.kill()
    quay.start()
    mosq.start()
    sub = Collector(mosq.port, "fwd/#")
    got = sub.wait_for(len(payloads), timeout_s=90)
    sub.close()
    arrived = [p for _, p in got]
    # At least once, in order: every acknowledged message, first arrivals in order.
    seen, firsts = set(), []
    for p in arrived:
        if p not in seen:
            seen.add(p)
            firsts.append(p)
    assert firsts == payloads, f"{len(firsts)} of {len(payloads)} arrived"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(list((tmp / "bridgeq").glob("*.seg"))) > 1:
        time.sleep(0.1)
    assert len(list((tmp / "bridgeq").glob("*.seg"))) == 1, "acknowledged segments were deleted"


def test_emqx_ctl_bridges_with_the_guides_output_and_changes_survive_restart(env):
    mosq, make, _ = env
    quay = make()
    ctl = lambda *a: quay.ctl("bridges", *a).stdout
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "Running" not in ctl("list"):
        time.sleep(0.1)
    assert ctl("list") == "name: up     status: Running\n"
    assert ctl("stop", "up") == "Stop bridge successfully.\n"
    assert ctl("list") == "name: up     status: Stopped\n"
    assert ctl("start", "up") == "Start bridge successfully.\n"
    assert ctl("forwards", "up") == "topic:   sensor/#\n"
    assert ctl("add-forward", "up", "topic3/#") == "Add-forward topic successfully.\n"
    assert ctl("add-forwards", "up", "topic4/#") == "Add-forward topic successfully.\n"
    assert ctl("del-forwards", "up", "topic4/#") == "Del-forward topic successfully.\n"
    assert ctl("subscriptions", "up") == "topic: cmd/#, qos: 1\n"
    assert ctl("add-subscription", "up", "cmd/topic3", "1") == "Add-subscription topic successfully.\n"
    assert ctl("add-subscription", "up", "cmd/topic4", "2") == "Add-subscription topic successfully.\n"
    assert ctl("del-subscription", "up", "cmd/topic4") == "Del-subscription topic successfully.\n"
    assert quay.ctl("bridges", "start", "nope").returncode != 0
    quay.kill()
    quay.start()
    assert ctl("forwards", "up") == "topic:   sensor/#\ntopic:   topic3/#\n"
    assert ctl("subscriptions", "up") == "topic: cmd/#, qos: 1\ntopic: cmd/topic3, qos: 1\n"
    # The added forward works after the restart.
    sub = Collector(mosq.port, "fwd/#")
    publish_all(quay.port, "topic3/x", [b"added"])
    got = sub.wait_for(1, timeout_s=30)
    sub.close()
    assert [p for _, p in got] == [b"added"]
