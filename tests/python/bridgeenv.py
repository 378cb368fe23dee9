"""What the bridge tests share: a real Mosquitto started by the test (plain or TLS, with
certificates the test makes with the openssl CLI), a Quay node with
etc/plugins/emqx_bridge_mqtt.conf written, a collecting subscriber and a bulk publisher.
Every wait is bounded."""

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from conftest import REPO, Broker, free_port, port_accepts

HOST = "127.0.0.1"


class Mosquitto:
    """A Mosquitto broker on a free loopback port, configured by `extra` lines."""

    def __init__(self, root, extra="", tls=None, anonymous=True):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = None
        # `user root`: the test's files are readable only by root (tmp dirs are 0700).
        lines = ["user root", f"listener {self.port} {HOST}", f"allow_anonymous {'true' if anonymous else 'false'}"]
        if tls:
            lines += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
        lines += ["max_inflight_messages 0", "max_queued_messages 0", "persistence false", extra]
        self.conf = self.root / f"mosquitto-{self.port}.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = self.root / f"mosquitto-{self.port}.log"

    def start(self):
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf), "-v"], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if port_accepts(self.port):
                return self
            time.sleep(0.05)
        raise AssertionError("mosquitto did not start:\n" + self.log.read_text()[-2000:])

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)
            self.proc = None


def make_certs(root):
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl CLI, EC keys)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    ca, ca_key = root / "ca.pem", root / "ca.key"
    cert, key, csr = root / "server.pem", root / "server.key", root / "server.csr"
    ext = root / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2", "-subj", "/CN=quay-bridge-test-ca")
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return {"ca": ca, "cert": cert, "key": key}


class BridgedBroker(Broker):
    """A Quay node whose etc/ is a copy with etc/plugins/emqx_bridge_mqtt.conf written."""

    def __init__(self, bridge_conf, overrides=None):
        super().__init__(overrides)
        shutil.copytree(REPO / "etc", self.root / "etc")
        (self.root / "etc" / "plugins" / "emqx_bridge_mqtt.conf").write_text(bridge_conf)

    def argv(self):
        return [self.emqx, "--config", str(self.root / "etc" / "emqx.conf"), "foreground"]

    def load_bridges(self):
        out = self.ctl("plugins", "load", "emqx_bridge_mqtt").stdout
        assert "successfully" in out, out + self.log_tail()
        return self

    def bridges(self, *args):
        return self.ctl("bridges", *args).stdout

    def bridge_figures(self, name):
        """`bridges list`'s fields of one bridge as a dict of strings."""
        for line in self.bridges("list").splitlines():
            fields = [f.split(": ", 1) for f in line.split("     ")]
            d = {k: v for k, v in fields}
            if d.get("name") == name:
                return d
        raise AssertionError(f"bridge {name} not listed")

    def wait_status(self, name, status, timeout_s=15):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.bridge_figures(name)["status"] == status:
                return
            time.sleep(0.1)
        raise AssertionError(f"bridge {name} not {status}: {self.bridges('list')}")

    def console(self):
        return self.console_log.read_text(errors="replace")


class Collector:
    """A subscriber recording (topic, payload) in arrival order."""

    def __init__(self, port, topic, proto=mqtt.MQTTv311, qos=1, tls_ca=None, client_id=None, got=None):
        """`client_id` given: a persistent session (clean session off), which a new
        Collector with the same id resumes; `got` carries on an earlier one's list."""
        self.got = got if got is not None else []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        cid = client_id or f"collector-{os.getpid()}-{port}-{time.monotonic_ns() % 100000}"
        extra = {"clean_session": False} if client_id and proto != mqtt.MQTTv5 else {}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=proto, **extra)
        if tls_ca:
            self.c.tls_set(ca_certs=str(tls_ca))
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.connect(HOST, port)
        self.c.loop_start()
        self.c.subscribe(topic, qos=qos)
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


def publish_all(port, topic, payloads, qos=1, proto=mqtt.MQTTv311, timeout_s=120):
    """Publish every payload and wait for each acknowledgement (bounded)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{time.monotonic_ns()}", protocol=proto)
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    c.connect(HOST, port)
    c.loop_start()
    infos = [c.publish(topic, p, qos=qos) for p in payloads]
    deadline = time.monotonic() + timeout_s
    for i in infos:
        i.wait_for_publish(max(0.1, deadline - time.monotonic()))
        assert i.is_published(), "a publish was not acknowledged in time"
    c.loop_stop()
    c.disconnect()


def first_arrivals(payloads):
    """At-least-once arrivals reduced to the first of each, in order."""
    seen, out = set(), []
    for p in payloads:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def bridge_conf(address, root, name="up", proto="mqttv4", extra=""):
    return f"""
bridge.mqtt.{name}.address = {address}
bridge.mqtt.{name}.proto_ver = {proto}
bridge.mqtt.{name}.client_id = quay_{name}_{os.getpid()}_{time.monotonic_ns() % 100000}
bridge.mqtt.{name}.forwards = sensor/#
bridge.mqtt.{name}.mountpoint = fwd/${{node}}/
bridge.mqtt.{name}.reconnect_interval = 1s
bridge.mqtt.{name}.retry_interval = 5s
bridge.mqtt.{name}.keepalive = 10s
bridge.mqtt.{name}.queue.replayq_dir = {root}/bridgeq-{name}/
bridge.mqtt.{name}.queue.replayq_seg_bytes = 64KB
bridge.mqtt.{name}.subscription.1.topic = cmd/#
bridge.mqtt.{name}.subscription.1.qos = 1
bridge.mqtt.{name}.receive_mountpoint = remote/
{extra}
"""


def segments(root, name="up"):
    return sorted((Path(root) / f"bridgeq-{name}").glob("*.seg"))


def wait_segments(root, n, name="up", timeout_s=15):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(segments(root, name)) > n:
        time.sleep(0.1)
    return len(segments(root, name))
