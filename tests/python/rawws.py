"""Byte-level MQTT over WebSocket for tests that must control the frames: the HTTP
upgrade, masked client frames (binary, text, fragments, control), and the server's
frames read back and checked (unmasked, final)."""

import base64
import os
import socket
import ssl
import struct
import time

from rawmqtt import HOST, Packet, decode_varint

BINARY, TEXT, CONTINUATION, CLOSE, PING, PONG = 0x2, 0x1, 0x0, 0x8, 0x9, 0xA


def frame(opcode, payload, fin=True, mask=True):
    """A client frame (masked unless `mask=False`, which a server must refuse)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def upgrade_request(path="/mqtt", protocol="mqtt", key=None):
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {HOST}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawWs:
    """One connection: `upgrade()` returns the HTTP response head; then `send_frame`,
    `recv_frame` (opcode, payload) and `recv_packet` (MQTT, from binary payloads)."""

    def __init__(self, port, tls_ca=None, timeout_s=5):
        sock = socket.create_connection((HOST, port), timeout=timeout_s)
        if tls_ca is not None:
            ctx = ssl.create_default_context(cafile=str(tls_ca))
            ctx.check_hostname = False
            sock = ctx.wrap_socket(sock)
        self.sock = sock
        self.buf = b""
        self.mqtt = b""

    def _fill(self, deadline):
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the broker")
        self.buf += chunk

    def upgrade(self, request=None, timeout_s=5):
        self.sock.sendall(request or upgrade_request())
        deadline = time.monotonic() + timeout_s
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return head.decode()

    def send(self, data):
        self.sock.sendall(data)

    def send_frame(self, opcode, payload, fin=True):
        self.sock.sendall(frame(opcode, payload, fin))

    def recv_frame(self, timeout_s=5):
        deadline = time.monotonic() + timeout_s
        while True:
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                assert b1 & 0x80 == 0, "a server frame is masked"
                n, at = b1 & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    (n,), at = struct.unpack(">H", self.buf[2:4]), 4
                elif n == 127 and len(self.buf) >= 10:
                    (n,), at = struct.unpack(">Q", self.buf[2:10]), 10
                if n < 126 or at > 2:
                    if len(self.buf) >= at + n:
                        payload, self.buf = self.buf[at : at + n], self.buf[at + n :]
                        assert b0 & 0x80, "a server frame is fragmented"
                        return b0 & 0x0F, payload
            self._fill(deadline)

    def recv_packet(self, timeout_s=5):
        deadline = time.monotonic() + timeout_s
        while True:
            if len(self.mqtt) >= 2:
                try:
                    length, pos = decode_varint(self.mqtt, 1)
                except (IndexError, ValueError):
                    length = None
                if length is not None and len(self.mqtt) >= pos + length:
                    first, body = self.mqtt[0], self.mqtt[pos : pos + length]
                    self.mqtt = self.mqtt[pos + length :]
                    return Packet(first, body, pos + length)
            opcode, payload = self.recv_frame(max(0.01, deadline - time.monotonic()))
            assert opcode == BINARY, f"frame opcode {opcode}: {payload!r}"
            self.mqtt += payload

    def read_until_closed(self, timeout_s=5):
        """Everything the broker sends until it closes the socket."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self._fill(deadline)
            except TimeoutError:
                break
            except (ConnectionError, OSError):
                return self.buf
        raise AssertionError("the broker did not close the connection")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
