"""Clients for the tests: a paho wrapper that records everything it sees, and waits.

Every wait takes a timeout; nothing here loops without a bound. Auto-reconnect is off, so
a client the broker drops stays dropped (takeover and kick tests depend on that).
"""

import itertools
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

HOST = "127.0.0.1"
V31, V311, V5 = mqtt.MQTTv31, mqtt.MQTTv311, mqtt.MQTTv5
WAIT_S = 10

_ids = itertools.count()


def unique_id(prefix):
    """A client id no other test uses (max 23 chars for MQTT 3.1)."""
    return f"{prefix[:12]}-{next(_ids)}-{int(time.time() * 1000) % 100000}"


def wait_until(predicate, timeout_s=WAIT_S, interval_s=0.02):
    """True as soon as `predicate()` is, False after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def props(packet_type, **values):
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def connect_props(**values):
    return props(PacketTypes.CONNECT, **values)


def publish_props(**values):
    return props(PacketTypes.PUBLISH, **values)


class Received:
    """One delivered PUBLISH as the test sees it."""

    def __init__(self, msg):
        self.topic = msg.topic
        self.payload = msg.payload
        self.qos = msg.qos
        self.retain = bool(msg.retain)
        self.dup = bool(msg.dup)
        self.mid = msg.mid
        self.properties = getattr(msg, "properties", None)
        self.at = time.monotonic()

    def prop(self, name, default=None):
        if self.properties is None:
            return default
        return getattr(self.properties, name, default)

    def __repr__(self):
        return f"Received({self.topic!r}, {self.payload[:40]!r}, qos={self.qos}, retain={self.retain})"


class Client:
    """A paho client on its own network thread that keeps what it receives.

    `connect()` waits for CONNACK; `messages` fills as PUBLISHes arrive; `wait_messages(n)`
    waits for at least n of them.
    """

    def __init__(
        self,
        port,
        client_id=None,
        protocol=V311,
        clean=True,
        keepalive=30,
        manual_ack=False,
        tls=None,
        username=None,
        password=None,
        transport="tcp",
        ws_path="/mqtt",
    ):
        self.port = port
        self.protocol = protocol
        self.client_id = unique_id("c") if client_id is None else client_id
        kwargs = {}
        if protocol != V5:
            kwargs["clean_session"] = clean
        self.clean = clean
        self.keepalive = keepalive
        self.c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
            transport=transport,
            **kwargs,
        )
        if transport == "websockets":
            self.c.ws_set_options(path=ws_path)
        if tls is not None:
            # ca_certs / certfile / keyfile, as paho's tls_set takes them.
            self.c.tls_set(**tls)
        if username is not None:
            self.c.username_pw_set(username, password)
        self.c.max_inflight_messages_set(100)
        self.c.max_queued_messages_set(0)
        self._cond = threading.Condition()
        self.messages = []
        self.connack = None  # (reason_code, session_present, properties)
        self.disconnects = []  # (reason_code, properties)
        self.subacks = {}  # mid -> [reason codes]
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_unsubscribe = self._on_unsubscribe
        self.unsubacks = {}  # mid -> [reason codes]
        self._looping = False

    # -- callbacks (network thread) --
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self.connack = (reason_code, bool(flags.session_present), properties)
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append(Received(msg))
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self._cond:
            self.disconnects.append((reason_code, properties))
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self.subacks[mid] = list(reason_codes)
            self._cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self.unsubacks[mid] = list(reason_codes)
            self._cond.notify_all()

    def _wait(self, predicate, timeout_s):
        with self._cond:
            return self._cond.wait_for(predicate, timeout=timeout_s)

    # -- actions --
    def set_will(self, topic, payload, qos=1, retain=False, properties=None):
        self.c.will_set(topic, payload, qos=qos, retain=retain, properties=properties)
        return self

    def connect(self, clean_start=None, properties=None, timeout_s=WAIT_S, expect_success=True):
        """Connect and wait for CONNACK. Returns (reason_code, session_present, properties)."""
        kwargs = {}
        if self.protocol == V5:
            kwargs["clean_start"] = self.clean if clean_start is None else clean_start
            kwargs["properties"] = properties
        self.c.connect(HOST, self.port, keepalive=self.keepalive, **kwargs)
        if not self._looping:
            self.c.loop_start()
            self._looping = True
        got = self._wait(lambda: self.connack is not None or self.disconnects, timeout_s)
        assert got, f"{self.client_id}: no CONNACK within {timeout_s}s"
        assert self.connack is not None, f"{self.client_id}: disconnected before CONNACK: {self.disconnects}"
        if expect_success:
            assert not self.connack[0].is_failure, f"{self.client_id}: CONNACK {self.connack[0]}"
        return self.connack

    @property
    def session_present(self):
        return self.connack[1]

    def subscribe(self, topic, qos=1, options=None, properties=None, timeout_s=WAIT_S):
        """Subscribe and wait for SUBACK. `topic` may be a list of (filter, qos|SubscribeOptions)."""
        if isinstance(topic, list):
            rc, mid = self.c.subscribe(topic, properties=properties)
        else:
            if options is not None:
                rc, mid = self.c.subscribe(topic, options=options, properties=properties)
            else:
                rc, mid = self.c.subscribe(topic, qos, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe not sent: {rc}"
        assert self._wait(lambda: mid in self.subacks, timeout_s), f"no SUBACK for {topic} within {timeout_s}s"
        return [int(code.value) if hasattr(code, "value") else int(code) for code in self.subacks[mid]]

    def unsubscribe(self, topic, timeout_s=WAIT_S):
        rc, mid = self.c.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"unsubscribe not sent: {rc}"
        assert self._wait(lambda: mid in self.unsubacks, timeout_s), f"no UNSUBACK for {topic}"
        return self.unsubacks[mid]

    def publish(self, topic, payload, qos=0, retain=False, properties=None, wait=True, timeout_s=WAIT_S):
        """Publish; with `wait`, block until PUBACK (QoS1) / PUBCOMP (QoS2) or the write (QoS0)."""
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish to {topic} not sent: {info.rc}"
        if wait:
            info.wait_for_publish(timeout=timeout_s)
            assert info.is_published(), f"publish to {topic} (qos {qos}) not acknowledged within {timeout_s}s"
        return info

    def wait_messages(self, n, timeout_s=WAIT_S):
        """Wait for at least `n` messages; returns a copy of all received so far."""
        self._wait(lambda: len(self.messages) >= n, timeout_s)
        with self._cond:
            return list(self.messages)

    def wait_disconnect(self, timeout_s=WAIT_S):
        return self._wait(lambda: bool(self.disconnects), timeout_s)

    def payloads(self):
        with self._cond:
            return [m.payload for m in self.messages]

    def disconnect(self, properties=None):
        """Clean DISCONNECT, then stop the network thread."""
        if self.c.is_connected():
            self.c.disconnect(properties=properties)
            self._wait(lambda: bool(self.disconnects), 5)
        self.stop()

    def stop(self):
        if self._looping:
            self.c.loop_stop()
            self._looping = False


def connected(port, client_id=None, protocol=V311, clean=True, **kwargs):
    """A Client already connected (CONNACK success checked)."""
    connect_kwargs = {k: kwargs.pop(k) for k in ("clean_start", "properties") if k in kwargs}
    c = Client(port, client_id=client_id, protocol=protocol, clean=clean, **kwargs)
    c.connect(**connect_kwargs)
    return c


def sub_options(qos=1, no_local=False, retain_as_published=False, retain_handling=0):
    return SubscribeOptions(
        qos=qos,
        noLocal=no_local,
        retainAsPublished=retain_as_published,
        retainHandling=retain_handling,
    )


def settle(seconds=0.5):
    """Give the broker time to deliver something that must NOT arrive. Bounded by design."""
    time.sleep(seconds)


def stop_process(proc, timeout_s=10):
    """SIGTERM a helper process (haproxy, a PSK test server), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)
