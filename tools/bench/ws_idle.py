#!/usr/bin/env python3
"""Idle connections over TCP, WebSocket and WSS: the broker's RSS per connection,
Quay and Mosquitto 2 side by side in one run (same certificates, a `protocol
websockets` listener for Mosquitto), on loopback.

    python3 tools/bench/ws_idle.py [--connections 2000] [--kinds tcp,ws,wss]

For each broker and kind: a fresh broker, its RSS read, N clients connected (raw
sockets: HTTP upgrade, CONNECT in one binary frame, CONNACK awaited), then RSS read
right after the connect storm (32 clients connecting at once) and again once settled (Quay: every connection
hibernated; Mosquitto: after the same wait). Prints one line per figure and a ratio
against Mosquitto. Bounded: every wait has a deadline; the brokers are stopped at the end.
"""

import argparse
import base64
import os
import resource
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from procutil import HOST, free_port, rss_kib, stop, wait_port

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/quay-target"))
EMQX = TARGET / "release" / "emqx"
EMQX_CTL = TARGET / "release" / "emqx_ctl"
CERTS = ROOT / "etc" / "certs"
SETTLE_S = 8
# Clients connecting at once (Mosquitto's WebSocket listener answers each upgrade
# slowly; in parallel the storm takes seconds instead of minutes).
PARALLEL = 32


def connect_packet(client_id):
    cid = client_id.encode()
    body = struct.pack(">H", 4) + b"MQTT" + bytes([4, 0x02]) + struct.pack(">H", 600)
    body += struct.pack(">H", len(cid)) + cid
    return bytes([0x10, len(body)]) + body


def ws_frame(payload):
    key = os.urandom(4)
    return bytes([0x82, 0x80 | len(payload)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def recv_until(sock, predicate, timeout_s=10):
    data = b""
    deadline = time.monotonic() + timeout_s
    while not predicate(data):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out; got {data[:80]!r}")
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"closed; got {data[:80]!r}")
        data += chunk
    return data


def open_client(kind, port, i, tls_ctx):
    sock = socket.create_connection((HOST, port), timeout=10)
    if kind == "wss":
        sock = tls_ctx.wrap_socket(sock)
    cid = f"idle-{kind}-{i}"
    if kind == "tcp":
        sock.sendall(connect_packet(cid))
        recv_until(sock, lambda d: len(d) >= 4)
        return sock
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /mqtt HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        ).encode()
    )
    head = recv_until(sock, lambda d: b"\r\n\r\n" in d)
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"upgrade refused: {head[:80]!r}")
    rest = head.partition(b"\r\n\r\n")[2]
    sock.sendall(ws_frame(connect_packet(cid)))
    # The CONNACK frame: 2 bytes of header, 4 of CONNACK.
    if len(rest) < 6:
        recv_until(sock, lambda d: len(rest) + len(d) >= 6)
    return sock


class Quay:
    name = "quay"

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="quay-wsidle-"))
        self.ports = {"tcp": free_port(), "ws": free_port(), "wss": free_port()}
        env = dict(os.environ)
        env.update(
            {
                "EMQX_LISTENER__TCP__EXTERNAL": f"{HOST}:{self.ports['tcp']}",
                "EMQX_LISTENER__TCP__INTERNAL": f"{HOST}:0",
                "EMQX_LISTENER__SSL__EXTERNAL": f"{HOST}:0",
                "EMQX_LISTENER__WS__EXTERNAL": f"{HOST}:{self.ports['ws']}",
                "EMQX_LISTENER__WSS__EXTERNAL": f"{HOST}:{self.ports['wss']}",
                "EMQX_NODE__DATA_DIR": str(self.root / "data"),
                "EMQX_LOG__DIR": str(self.root / "log"),
                "EMQX_ZONE__EXTERNAL__HIBERNATE_AFTER": "2s",
            }
        )
        self.env = env
        self.proc = subprocess.Popen(
            [str(EMQX), "--config", str(ROOT / "etc/emqx.conf"), "foreground"],
            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_port(self.ports["tcp"], self.proc)

    def settle(self, n):
        deadline = time.monotonic() + SETTLE_S + n / 500
        while time.monotonic() < deadline:
            out = subprocess.run([str(EMQX_CTL), "broker", "stats"], env=self.env, capture_output=True, text=True)
            for line in out.stdout.splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "connections.hibernated" and int(value) >= n:
                    time.sleep(1)
                    return "all hibernated"
            time.sleep(0.5)
        return "NOT all hibernated"

    def stop(self):
        stop(self.proc)


class Mosquitto:
    name = "mosquitto"

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="mosq-wsidle-"))
        self.ports = {"tcp": free_port(), "ws": free_port(), "wss": free_port()}
        conf = self.root / "mosquitto.conf"
        conf.write_text(
            f"allow_anonymous true\npersistence false\nlog_dest none\n"
            f"listener {self.ports['tcp']} {HOST}\n"
            f"listener {self.ports['ws']} {HOST}\nprotocol websockets\n"
            f"listener {self.ports['wss']} {HOST}\nprotocol websockets\n"
            f"certfile {CERTS / 'cert.pem'}\nkeyfile {CERTS / 'key.pem'}\n"
        )
        binary = "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else "mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.ports["tcp"], self.proc)

    def settle(self, n):
        time.sleep(SETTLE_S)
        return f"after {SETTLE_S}s"

    def stop(self):
        stop(self.proc)


def measure(broker_cls, kind, n, tls_ctx):
    broker = broker_cls()
    clients = []
    try:
        time.sleep(0.5)
        base = rss_kib(broker.proc.pid)
        started = time.monotonic()
        with ThreadPoolExecutor(PARALLEL) as pool:
            clients.extend(pool.map(lambda i: open_client(kind, broker.ports[kind], i, tls_ctx), range(n)))
        storm_s = time.monotonic() - started
        after_storm = rss_kib(broker.proc.pid)
        state = broker.settle(n)
        settled = rss_kib(broker.proc.pid)
        return {
            "storm": (after_storm - base) / n,
            "settled": (settled - base) / n,
            "rate": n / storm_s,
            "note": state,
        }
    finally:
        for c in clients:
            c.close()
        broker.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--kinds", default="tcp,ws,wss")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.connections + 100 > hard:
        sys.exit(f"--connections {args.connections} needs more than the open-file limit {hard}")
    tls_ctx = ssl.create_default_context(cafile=str(CERTS / "cacert.pem"))
    tls_ctx.check_hostname = False
    n = args.connections
    for kind in args.kinds.split(","):
        results = {}
        for broker_cls in (Quay, Mosquitto):
            results[broker_cls.name] = measure(broker_cls, kind, n, tls_ctx)
        q, m = results["quay"], results["mosquitto"]
        for moment in ("storm", "settled"):
            print(
                f"idle {kind:3} {n} connections, RSS per connection {moment:7}: quay {q[moment]:6.2f} KiB, "
                f"mosquitto {m[moment]:6.2f} KiB, ratio {q[moment] / max(m[moment], 0.01):.2f}x"
                + (f" (quay: {q['note']})" if moment == "settled" else "")
            )
        print(
            f"idle {kind:3} {n} connections, connect rate ({PARALLEL} Python clients at once): "
            f"quay {q['rate']:.0f}/s, mosquitto {m['rate']:.0f}/s, ratio {q['rate'] / m['rate']:.2f}x"
        )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
