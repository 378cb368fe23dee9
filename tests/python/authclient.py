"""Client-side helpers shared by the authentication backend tests: the exact CONNACK code
a username/password gets (raw packets, so v3's return code is seen as sent), and a paho
client that logs in and reports SUBACK codes and whether a publish got through."""

import struct
import threading

import paho.mqtt.client as mqtt

from helpers import HOST, V5, V311, unique_id
from rawmqtt import CONNACK, CONNECT, Closed, RawClient, encode_props, packet, parse_connack, utf8

# CONNACK codes: v5 reason codes and the v3.1.1 return codes they map to.
OK = 0
# A v5 PUBACK for an accepted message: success, or "no matching subscribers".
PUBLISHED = (0, 0x10)
BAD_PASSWORD = {5: 0x86, 4: 4}
NOT_AUTHORIZED = {5: 0x87, 4: 5}
SERVER_UNAVAILABLE = {5: 0x88, 4: 3}


def connect_packet(client_id, username, password, version):
    flags = 0x02
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = utf8(b"MQTT") + bytes([version, flags]) + struct.pack(">H", 60)
    if version == 5:
        body += encode_props(())
    body += utf8(client_id)
    if username is not None:
        body += utf8(username)
    if password is not None:
        pw = password.encode() if isinstance(password, str) else password
        body += struct.pack(">H", len(pw)) + pw
    return packet(CONNECT, 0, body)


def connack(port, username, password, version=5, client_id=None, timeout_s=10):
    """The CONNACK return/reason code for these credentials (version 4 = 3.1.1, 5 = 5.0)."""
    c = RawClient(port, version=version, timeout_s=timeout_s)
    try:
        c.send(connect_packet(client_id or unique_id("auth"), username, password, version))
        p = c.recv(timeout_s)
        assert p.type == CONNACK, f"expected CONNACK, got {p}"
        return parse_connack(p, version)["rc"]
    except Closed:
        return None
    finally:
        c.close()


class Paho:
    """A logged-in paho client (v5 or v3.1.1) with synchronous subscribe/publish."""

    def __init__(self, port, username, password, protocol=V5, client_id=None, timeout_s=10):
        self.timeout_s = timeout_s
        self.client_id = client_id or unique_id("paho")
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=protocol)
        self.c.username_pw_set(username, password)
        self.messages = []
        self._cv = threading.Condition()
        self._acks = {}
        self.connect_rc = None

        def on_connect(client, userdata, flags, rc, properties):
            with self._cv:
                self.connect_rc = rc.value
                self._cv.notify_all()

        def on_subscribe(client, userdata, mid, rcs, properties):
            with self._cv:
                self._acks[mid] = [r.value for r in rcs]
                self._cv.notify_all()

        def on_publish(client, userdata, mid, rc, properties):
            with self._cv:
                self._acks[mid] = rc.value
                self._cv.notify_all()

        def on_message(client, userdata, msg):
            with self._cv:
                self.messages.append((msg.topic, msg.payload))
                self._cv.notify_all()

        self.c.on_connect = on_connect
        self.c.on_subscribe = on_subscribe
        self.c.on_publish = on_publish
        self.c.on_message = on_message
        self.c.connect(HOST, port)
        self.c.loop_start()
        with self._cv:
            assert self._cv.wait_for(lambda: self.connect_rc is not None, timeout_s), "no CONNACK"
        assert self.connect_rc == 0, f"connect refused: {self.connect_rc:#x}"

    def _wait_ack(self, mid):
        with self._cv:
            assert self._cv.wait_for(lambda: mid in self._acks, self.timeout_s), "no ack"
            return self._acks.pop(mid)

    def subscribe(self, topic, qos=1):
        """The SUBACK code for `topic` (granted QoS, or 0x80 / 0x87 when refused)."""
        rc, mid = self.c.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return self._wait_ack(mid)[0]

    def publish(self, topic, payload, qos=1):
        """Publish and wait for the PUBACK; returns its reason code (0, or 0x87 denied in v5)."""
        info = self.c.publish(topic, payload, qos)
        return self._wait_ack(info.mid)

    def wait_message(self, timeout_s=5):
        with self._cv:
            self._cv.wait_for(lambda: self.messages, timeout_s)
            return list(self.messages)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()
