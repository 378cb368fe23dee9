"""The MQTT bridge with `psk_ciphers` (TLS-PSK over OpenSSL) against a real Mosquitto
started by the test with a `psk_hint` + `psk_file` listener: forwards and remote
subscriptions both ways with an explicit `psk_identity` over TLS 1.2 and 1.3,
`tls_versions` honoured, EMQX 4's way without `psk_identity` (the key of the remote's
hint, identity `psk_identity`), and a wrong key: reported once per interval, the cache
keeps filling, local clients unaffected, and a corrected PSK file picked up by the
next attempt without a restart. Also a Quay node's PSK listener as the remote end."""

import time

import pytest

from bridgeenv import HOST, BridgedBroker, Collector, Mosquitto, bridge_conf, first_arrivals, publish_all
from conftest import Broker, free_port

NODE = "emqx@127.0.0.1"
# Keys start with a non-zero byte: Mosquitto reads hex keys as a number.
KEY = "5f3a9c0e7d1b2a4c6e8f0a1b2c3d4e5f"
WRONG_KEY = "1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a"
IDENTITY = "quay-bridge-1"
HINT = "quay-hint"
PSK_CIPHERS = "PSK-AES256-GCM-SHA384,PSK-AES128-GCM-SHA256,PSK-AES128-CBC-SHA"


def psk_mosquitto(root, lines, extra=""):
    """Mosquitto with a plain listener (`port`, for the test's clients) and a TLS-PSK
    one (`psk_port`, for the bridge) with these `identity:hexkey` lines; there the
    identity becomes the username, so Mosquitto's log shows which one the bridge sent."""
    psk = root / "mosquitto.psk"
    psk.write_text("\n".join(lines) + "\n")
    psk_port = free_port()
    listener = f"listener {psk_port} {HOST}\npsk_hint {HINT}\npsk_file {psk}\nuse_identity_as_username true\n{extra}"
    mosq = Mosquitto(root, extra=listener).start()
    mosq.psk_port = psk_port
    return mosq


def psk_bridge(mosq, root, name="up", identity=IDENTITY, tls_versions=None, interval="1s"):
    extra = f"bridge.mqtt.{name}.ssl = on\nbridge.mqtt.{name}.psk_ciphers = {PSK_CIPHERS}\n"
    extra += f"bridge.mqtt.{name}.reconnect_interval = {interval}\n"
    if identity:
        extra += f"bridge.mqtt.{name}.psk_identity = {identity}\n"
    if tls_versions:
        extra += f"bridge.mqtt.{name}.tls_versions = {tls_versions}\n"
    return bridge_conf(f"{HOST}:{mosq.psk_port}", root, name=name, extra=extra)


def start_quay(conf, psk_lines):
    quay = BridgedBroker(conf)
    # etc/plugins/emqx_psk_file.conf: psk.file.path = etc/psk.txt, under the node's root.
    (quay.root / "etc" / "psk.txt").write_text("\n".join(psk_lines) + "\n")
    quay.start()
    quay.load_bridges()
    return quay


def both_ways(quay, mosq, tag):
    """Forward 100 messages (three of them larger than the PSK stream's 64 KiB outbox)
    to Mosquitto and get one back through the remote subscription; all arrive in order."""
    sub = Collector(mosq.port, "fwd/#")
    local = Collector(quay.port, "remote/#")
    payloads = [f"{tag}-{i}".encode() for i in range(97)]
    payloads += [f"{tag}-big{i}-".encode() * 40_000 for i in range(3)]
    publish_all(quay.port, "sensor/psk", payloads)
    got = sub.wait_for(100, timeout_s=30)
    deadline = time.monotonic() + 15
    # The SUBACK is not visible from here: publish until the first one arrives.
    while time.monotonic() < deadline and not local.got:
        publish_all(mosq.port, "cmd/psk", [f"{tag}-back".encode()])
        local.wait_for(1, timeout_s=1)
    sub.close()
    local.close()
    assert first_arrivals([p for _, p in got]) == payloads
    assert {t for t, _ in got} == {f"fwd/{NODE}/sensor/psk"}
    assert ("remote/cmd/psk", f"{tag}-back".encode()) in local.got


@pytest.mark.parametrize("tls_versions", ["tlsv1.2", "tlsv1.3"])
def test_an_explicit_psk_identity_forwards_and_subscribes_both_ways(tmp_path, tls_versions):
    mosq = psk_mosquitto(tmp_path, [f"{IDENTITY}:{KEY}"])
    quay = start_quay(psk_bridge(mosq, tmp_path, tls_versions=tls_versions), [f"{IDENTITY}:{KEY}", "other:0102"])
    try:
        quay.wait_status("up", "Running")
        both_ways(quay, mosq, tls_versions)
        assert f"u'{IDENTITY}'" in mosq.log.read_text(), "Mosquitto saw the bridge's identity"
        f = quay.bridge_figures("up")
        assert f["status"] == "Running" and f["queued"] == "0", f
    finally:
        quay.cleanup()
        mosq.stop()


def test_tls_versions_are_honoured(tmp_path):
    """Mosquitto takes TLS 1.3 only: the bridge allowed 1.3 connects, the one held to
    1.2 does not (and says why)."""
    mosq = psk_mosquitto(tmp_path, [f"{IDENTITY}:{KEY}"], extra="tls_version tlsv1.3")
    conf = psk_bridge(mosq, tmp_path, tls_versions="tlsv1.3")
    conf += psk_bridge(mosq, tmp_path, name="old", tls_versions="tlsv1.2", interval="200ms")
    quay = start_quay(conf, [f"{IDENTITY}:{KEY}"])
    try:
        quay.wait_status("up", "Running")
        both_ways(quay, mosq, "v13")
        failed = [l for l in quay.console().splitlines() if "bridge connection failed" in l and "bridge=old" in l]
        assert len(failed) == 1, failed
        assert "TLS handshake" in failed[0] and "protocol version" in failed[0], failed[0]
        assert quay.bridge_figures("old")["status"] != "Running"
    finally:
        quay.cleanup()
        mosq.stop()


def test_without_psk_identity_the_key_is_the_remote_hints_as_in_emqx_4(tmp_path):
    """EMQX 4's bridge (Erlang's ssl client) looks the key up by the server's hint and
    sends the identity `psk_identity`; so does Quay without psk_identity, over TLS 1.2
    (TLS 1.3 has no hint) even though tls_versions allows 1.3."""
    mosq = psk_mosquitto(tmp_path, [f"psk_identity:{KEY}"])
    quay = start_quay(psk_bridge(mosq, tmp_path, identity=None, tls_versions="tlsv1.3,tlsv1.2"), [f"{HINT}:{KEY}"])
    try:
        quay.wait_status("up", "Running")
        both_ways(quay, mosq, "hint")
        assert "u'psk_identity'" in mosq.log.read_text()
    finally:
        quay.cleanup()
        mosq.stop()


@pytest.mark.parametrize("tls_versions", ["tlsv1.2", "tlsv1.3"])
def test_a_wrong_key_is_reported_the_cache_fills_and_a_corrected_file_is_picked_up(tmp_path, tls_versions):
    mosq = psk_mosquitto(tmp_path, [f"{IDENTITY}:{KEY}"])
    conf = psk_bridge(mosq, tmp_path, tls_versions=tls_versions, interval="200ms")
    quay = start_quay(conf, [f"{IDENTITY}:{WRONG_KEY}"])
    try:
        remote = Collector(mosq.port, "fwd/#")
        local = Collector(quay.port, "sensor/#")
        payloads = [f"w{i}".encode() for i in range(100)]
        publish_all(quay.port, "sensor/wrong", payloads)
        assert [p for _, p in local.wait_for(100)] == payloads, "local clients do not notice"
        local.close()
        time.sleep(3)  # ~15 attempts at 200 ms
        failed = [l for l in quay.console().splitlines() if "bridge connection failed" in l and "bridge=up" in l]
        assert len(failed) == 1, failed
        assert f'PSK identity \\"{IDENTITY}\\"' in failed[0] and "(a wrong key?)" in failed[0], failed[0]
        assert WRONG_KEY not in quay.console() and KEY not in quay.console()
        f = quay.bridge_figures("up")
        assert f["status"] in ("Connecting", "Disconnected"), f
        assert f["queued"] == "100", f
        assert remote.got == [], "nothing passed with the wrong key"
        assert quay.ctl("status").returncode == 0
        # The corrected PSK file is read by the next attempt: no restart.
        (quay.root / "etc" / "psk.txt").write_text(f"{IDENTITY}:{KEY}\n")
        quay.wait_status("up", "Running")
        got = remote.wait_for(100, timeout_s=30)
        remote.close()
        assert first_arrivals([p for _, p in got]) == payloads
    finally:
        quay.cleanup()
        mosq.stop()


def test_an_identity_missing_from_the_psk_file_is_named(tmp_path):
    mosq = psk_mosquitto(tmp_path, [f"{IDENTITY}:{KEY}"])
    quay = start_quay(psk_bridge(mosq, tmp_path, interval="200ms"), ["someone-else:0102"])
    try:
        time.sleep(2)
        failed = [l for l in quay.console().splitlines() if "bridge connection failed" in l and "bridge=up" in l]
        assert len(failed) == 1, failed
        assert f'no key for PSK identity \\"{IDENTITY}\\" in ' in failed[0], failed[0]
        assert "psk_identity has no key in the PSK file" in quay.console(), "warned at start"
        assert quay.bridge_figures("up")["status"] != "Running"
    finally:
        quay.cleanup()
        mosq.stop()


@pytest.mark.parametrize("tls_versions", ["tlsv1.2", "tlsv1.3"])
def test_a_quay_psk_listener_as_the_remote_end(tmp_path, tls_versions):
    """Quay's bridge into another Quay node's TLS-PSK listener (`listener.ssl.external.
    psk_ciphers`), both ways; the remote takes the bridge's identity as its username
    and, with use_username_as_clientid, lists it under that identity."""
    remote_psk = tmp_path / "remote-psk.txt"
    remote_psk.write_text(f"{IDENTITY}:{KEY}\nother:0102\n")
    remote = Broker({
        "listener.ssl.external.psk_ciphers": PSK_CIPHERS,
        "listener.ssl.external.tls_versions": tls_versions,
        "listener.ssl.external.peer_cert_as_username": "cn",
        "zone.external.use_username_as_clientid": "true",
        "psk.file.path": remote_psk,
    })
    quay = None
    try:
        remote.start()
        remote.psk_port = remote.ssl_port
        quay = start_quay(psk_bridge(remote, tmp_path, tls_versions=tls_versions), [f"{IDENTITY}:{KEY}"])
        quay.wait_status("up", "Running")
        both_ways(quay, remote, f"quay-{tls_versions}")
        listed = remote.ctl("clients", "list").stdout
        assert f"Client({IDENTITY}," in listed, listed
        assert quay.bridge_figures("up")["queued"] == "0"
    finally:
        if quay is not None:
            quay.cleanup()
        remote.cleanup()
