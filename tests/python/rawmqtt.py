"""Byte-level MQTT for tests that must control (or break) exactly what goes on the wire.

Encoders build packets for 3.1 (level 3), 3.1.1 (level 4) and 5.0 (level 5); `RawClient`
reads whole packets with a timeout and decodes the few it needs. Property ids are those
of MQTT 5.0 section 2.2.2.2.
"""

import socket
import struct
import time

HOST = "127.0.0.1"

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

# property id -> kind
P_PAYLOAD_FORMAT, P_MESSAGE_EXPIRY, P_CONTENT_TYPE = 0x01, 0x02, 0x03
P_RESPONSE_TOPIC, P_CORRELATION_DATA, P_SUBSCRIPTION_ID = 0x08, 0x09, 0x0B
P_SESSION_EXPIRY, P_ASSIGNED_CLIENT_ID, P_SERVER_KEEPALIVE = 0x11, 0x12, 0x13
P_REASON_STRING, P_RECEIVE_MAXIMUM, P_TOPIC_ALIAS_MAXIMUM, P_TOPIC_ALIAS = 0x1F, 0x21, 0x22, 0x23
P_MAXIMUM_QOS, P_RETAIN_AVAILABLE, P_USER_PROPERTY, P_MAXIMUM_PACKET_SIZE = 0x24, 0x25, 0x26, 0x27
P_WILL_DELAY, P_AUTH_METHOD, P_AUTH_DATA = 0x18, 0x15, 0x16
P_WILDCARD_SUB_AVAILABLE, P_SUB_ID_AVAILABLE, P_SHARED_SUB_AVAILABLE = 0x28, 0x29, 0x2A

_BYTE = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
_U16 = {0x13, 0x21, 0x22, 0x23}
_U32 = {0x02, 0x11, 0x18, 0x27}
_VARINT = {0x0B}
_UTF8 = {0x03, 0x08, 0x12, 0x15, 0x1A, 0x1C, 0x1F}
_BINARY = {0x09, 0x16}
_PAIR = {0x26}


def varint(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def utf8(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def encode_props(items):
    """`items`: list of (property id, value)."""
    body = bytearray()
    for pid, value in items:
        body += varint(pid)
        if pid in _BYTE:
            body.append(value)
        elif pid in _U16:
            body += struct.pack(">H", value)
        elif pid in _U32:
            body += struct.pack(">I", value)
        elif pid in _VARINT:
            body += varint(value)
        elif pid in _UTF8 or pid in _BINARY:
            body += utf8(value)
        elif pid in _PAIR:
            body += utf8(value[0]) + utf8(value[1])
        else:
            raise ValueError(f"unknown property {pid:#x}")
    return varint(len(body)) + bytes(body)


def decode_varint(buf, pos):
    value, mult = 0, 1
    for _ in range(4):
        byte = buf[pos]
        pos += 1
        value += (byte & 0x7F) * mult
        if not byte & 0x80:
            return value, pos
        mult *= 128
    raise ValueError("malformed variable byte integer")


def decode_props(buf, pos):
    """Returns ({id: value, or [values] for user properties / subscription ids}, new pos)."""
    length, pos = decode_varint(buf, pos)
    end = pos + length
    out = {}
    while pos < end:
        pid, pos = decode_varint(buf, pos)
        if pid in _BYTE:
            value = buf[pos]
            pos += 1
        elif pid in _U16:
            (value,) = struct.unpack_from(">H", buf, pos)
            pos += 2
        elif pid in _U32:
            (value,) = struct.unpack_from(">I", buf, pos)
            pos += 4
        elif pid in _VARINT:
            value, pos = decode_varint(buf, pos)
        elif pid in _UTF8 or pid in _BINARY:
            (n,) = struct.unpack_from(">H", buf, pos)
            value = bytes(buf[pos + 2 : pos + 2 + n])
            value = value.decode() if pid in _UTF8 else value
            pos += 2 + n
        elif pid in _PAIR:
            (n,) = struct.unpack_from(">H", buf, pos)
            k = bytes(buf[pos + 2 : pos + 2 + n]).decode()
            pos += 2 + n
            (m,) = struct.unpack_from(">H", buf, pos)
            v = bytes(buf[pos + 2 : pos + 2 + m]).decode()
            pos += 2 + m
            value = (k, v)
        else:
            raise ValueError(f"unknown property id {pid:#x}")
        if pid in _PAIR or pid in _VARINT:
            out.setdefault(pid, []).append(value)
        else:
            out[pid] = value
    return out, end


def packet(ptype, flags, body):
    return bytes([(ptype << 4) | flags]) + varint(len(body)) + body


def connect(client_id, version=4, clean=True, keepalive=60, properties=(), will=None, username=None, password=None):
    """CONNECT. version 3 = MQTT 3.1 ("MQIsdp"), 4 = 3.1.1, 5 = 5.0.

    `will`: dict(topic, payload, qos=0, retain=False, properties=()).
    """
    name = b"MQIsdp" if version == 3 else b"MQTT"
    flags = 0x02 if clean else 0
    if will:
        flags |= 0x04 | (will.get("qos", 0) << 3) | (0x20 if will.get("retain") else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = utf8(name) + bytes([version, flags]) + struct.pack(">H", keepalive)
    if version == 5:
        body += encode_props(properties)
    body += utf8(client_id)
    if will:
        if version == 5:
            body += encode_props(will.get("properties", ()))
        body += utf8(will["topic"]) + utf8(will["payload"])
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += utf8(password)
    return packet(CONNECT, 0, body)


def subscribe(pid, filters, version=4, properties=()):
    """`filters`: list of (filter, options byte: QoS | NL<<2 | RAP<<3 | RH<<4)."""
    body = struct.pack(">H", pid)
    if version == 5:
        body += encode_props(properties)
    for topic, options in filters:
        body += utf8(topic) + bytes([options])
    return packet(SUBSCRIBE, 0x02, body)


def publish(topic, payload, qos=0, pid=None, retain=False, dup=False, version=4, properties=()):
    flags = (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    body = utf8(topic)
    if qos:
        body += struct.pack(">H", pid)
    if version == 5:
        body += encode_props(properties)
    body += payload if isinstance(payload, bytes) else payload.encode()
    return packet(PUBLISH, flags, body)


def ack(ptype, pid):
    """PUBACK / PUBREC / PUBREL / PUBCOMP with reason Success (short form, valid in 3 and 5)."""
    return packet(ptype, 0x02 if ptype == PUBREL else 0, struct.pack(">H", pid))


def pingreq():
    return bytes([0xC0, 0x00])


def disconnect(version=4, reason=0):
    if version == 5 and reason:
        return packet(DISCONNECT, 0, bytes([reason, 0]))
    return bytes([0xE0, 0x00])


class Packet:
    def __init__(self, first, body, raw_len):
        self.type = first >> 4
        self.flags = first & 0x0F
        self.body = body
        self.size = raw_len  # the whole packet on the wire, fixed header included

    def __repr__(self):
        return f"Packet(type={self.type}, flags={self.flags:#x}, body={self.body[:60]!r})"


class Closed(Exception):
    """The broker closed the connection."""


class RawClient:
    """A blocking TCP MQTT client that does only what the test tells it to."""

    def __init__(self, port, version=4, timeout_s=5, source=None):
        """`source`: the loopback address to connect from (e.g. "127.0.0.5")."""
        self.version = version
        source_address = (source, 0) if source else None
        self.sock = socket.create_connection((HOST, port), timeout=timeout_s, source_address=source_address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError
        except (ConnectionResetError, BrokenPipeError) as e:
            raise Closed(str(e))
        if not chunk:
            raise Closed("EOF")
        self.buf += chunk

    def recv(self, timeout_s=5):
        """The next whole packet. Raises TimeoutError, or Closed when the broker closes."""
        deadline = time.monotonic() + timeout_s
        while True:
            if len(self.buf) >= 2:
                try:
                    length, pos = decode_varint(self.buf, 1)
                except IndexError:
                    length = None
                if length is not None and len(self.buf) >= pos + length:
                    first = self.buf[0]
                    body = bytes(self.buf[pos : pos + length])
                    del self.buf[: pos + length]
                    return Packet(first, body, pos + length)
            self._fill(deadline)

    def recv_type(self, ptype, timeout_s=5):
        """Skip packets until one of `ptype` (bounded by the timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            p = self.recv(max(0.0, deadline - time.monotonic()))
            if p.type == ptype:
                return p

    def wait_closed(self, timeout_s=5):
        """Read until the broker closes; returns (seconds waited, packets seen before close).

        Raises TimeoutError if the connection is still open after `timeout_s`."""
        start = time.monotonic()
        seen = []
        while True:
            left = timeout_s - (time.monotonic() - start)
            try:
                seen.append(self.recv(max(0.0, left)))
            except Closed:
                return time.monotonic() - start, seen

    def connect(self, client_id, timeout_s=5, **kwargs):
        """Send CONNECT, return the decoded CONNACK: dict(session_present, rc, props)."""
        self.send(connect(client_id, version=self.version, **kwargs))
        p = self.recv(timeout_s)
        assert p.type == CONNACK, f"expected CONNACK, got {p}"
        return parse_connack(p, self.version)

    def subscribe(self, pid, filters, properties=(), timeout_s=5):
        """Send SUBSCRIBE, return the list of SUBACK reason codes."""
        self.send(subscribe(pid, filters, self.version, properties))
        p = self.recv_type(SUBACK, timeout_s)
        return parse_suback(p, self.version)["codes"]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def parse_connack(p, version):
    out = {"session_present": bool(p.body[0] & 1), "rc": p.body[1], "props": {}}
    if version == 5 and len(p.body) > 2:
        out["props"], _ = decode_props(p.body, 2)
    return out


def parse_suback(p, version):
    (pid,) = struct.unpack_from(">H", p.body, 0)
    pos = 2
    props = {}
    if version == 5:
        props, pos = decode_props(p.body, pos)
    return {"pid": pid, "props": props, "codes": list(p.body[pos:])}


def parse_publish(p, version):
    qos = (p.flags >> 1) & 3
    (n,) = struct.unpack_from(">H", p.body, 0)
    topic = p.body[2 : 2 + n].decode()
    pos = 2 + n
    pid = None
    if qos:
        (pid,) = struct.unpack_from(">H", p.body, pos)
        pos += 2
    props = {}
    if version == 5:
        props, pos = decode_props(p.body, pos)
    return {
        "topic": topic,
        "qos": qos,
        "retain": bool(p.flags & 1),
        "dup": bool(p.flags & 8),
        "pid": pid,
        "props": props,
        "payload": p.body[pos:],
    }


def parse_disconnect(p):
    """v5 DISCONNECT reason code (0 when the packet has no body)."""
    return p.body[0] if p.body else 0
