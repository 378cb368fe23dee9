"""TLS-PSK (`listener.ssl.external.psk_ciphers`, identities in `psk.file.path`), with
mosquitto_pub/mosquitto_sub `--psk-identity ... --psk ...` over TLS 1.2 and 1.3, MQTT
3.1.1 and 5: publish and subscribe, a wrong key and an unknown identity refused and
counted while good clients go on, plain MQTT on the PSK port closed, an idle PSK
connection hibernating and waking, certificate clients on the same port, the identity
as the username, and a psk.txt with malformed lines or none at all.
"""

import queue
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import HOST
from helpers import stop_process, V5, V311, Client, connected, unique_id, wait_until
from test_flow_control import metric
from test_hibernate import wait_hibernated

REPO = Path(__file__).resolve().parents[2]
CACERT = REPO / "etc" / "certs" / "cacert.pem"

# Keys start with a non-zero byte: mosquitto clients read --psk as a number and drop
# leading 00 bytes.
KEYS = {
    "device-1": "5f3a9c0e7d1b2a4c6e8f0a1b2c3d4e5f",
    "device-2": "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90",
}
WRONG_KEY = "1111111111111111111111111111111111111111111111111111111111111111"
PSK_CIPHERS = "PSK-AES256-GCM-SHA384,PSK-AES128-GCM-SHA256,PSK-AES128-CBC-SHA"
FAILED = "client.tls.handshake_failed"
# mosquitto clients' --tls-version is a minimum: the broker's tls_versions decides.
TLS12, TLS13 = "tlsv1.2", "tlsv1.3,tlsv1.2"


def psk_file(tmp_path, extra_lines=()):
    path = tmp_path / "psk.txt"
    lines = ["# test identities", *extra_lines, *(f"{i}:{k}" for i, k in KEYS.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def psk_broker(broker_factory, tmp_path, extra_lines=(), tls_versions=TLS13, **extra):
    overrides = {
        "listener.ssl.external.psk_ciphers": PSK_CIPHERS,
        "listener.ssl.external.tls_versions": tls_versions,
        "listener.ssl.external.handshake_timeout": "2s",
        "psk.file.path": psk_file(tmp_path, extra_lines),
    }
    overrides.update(extra)
    return broker_factory(overrides)


def psk_args(identity, key=None):
    return ["--psk-identity", identity, "--psk", key or KEYS[identity]]


def pub(broker, topic, message, *tls_args, version="mqttv311", qos="1"):
    return subprocess.run(
        ["mosquitto_pub", "-h", HOST, "-p", str(broker.ssl_port), "-t", topic, "-m", message, "-q", qos,
         "-V", version, *tls_args],
        capture_output=True, text=True, timeout=20,
    )


class Sub:
    """A mosquitto_sub whose output lines are read by a thread (bounded waits)."""

    def __init__(self, broker, topic, *tls_args, version="mqttv311", count=None, extra=()):
        argv = ["mosquitto_sub", "-h", HOST, "-p", str(broker.ssl_port), "-t", topic, "-q", "1", "-V", version,
                "-W", "60", *tls_args, *extra]
        if count is not None:
            argv += ["-C", str(count)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def next(self, timeout_s=10):
        try:
            return self.lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"mosquitto_sub got nothing within {timeout_s}s") from None

    def stop(self):
        stop_process(self.proc)


def wait_subscribed(broker, count=1):
    """mosquitto_sub subscribes right after its CONNACK: wait for its session."""
    assert wait_until(lambda: broker.ctl("clients", "list").stdout.count("Client(") >= count, 10)
    time.sleep(0.3)


def log_contains(broker, text, timeout_s=5):
    return wait_until(lambda: text in broker.log_tail(), timeout_s)


@pytest.mark.parametrize("tls_versions", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("version", ["mqttv311", "mqttv5"])
def test_psk_clients_publish_and_subscribe(broker_factory, tmp_path, version, tls_versions):
    broker = psk_broker(broker_factory, tmp_path, tls_versions=tls_versions)
    sub = Sub(broker, "psk/t", *psk_args("device-1"), version=version, count=3)
    try:
        wait_subscribed(broker)
        for i in range(2):
            done = pub(broker, "psk/t", f"psk-{i}", *psk_args("device-2"), version=version)
            assert done.returncode == 0, done.stderr
        # A plain TCP client shares the broker with them.
        tcp = connected(broker.port)
        tcp.publish("psk/t", b"from-tcp", qos=1)
        tcp.disconnect()
        assert [sub.next() for _ in range(3)] == ["psk-0", "psk-1", "from-tcp"]
    finally:
        sub.stop()
    assert metric(broker, FAILED) == 0


@pytest.mark.parametrize("tls_versions", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_a_wrong_key_is_refused_and_counted_while_good_clients_go_on(broker_factory, tmp_path, tls_versions):
    broker = psk_broker(broker_factory, tmp_path, tls_versions=tls_versions)
    sub = Sub(broker, "wrong/#", *psk_args("device-1"))
    try:
        wait_subscribed(broker)
        # Wrong keys side by side with good publishers.
        wrong = [
            subprocess.Popen(
                ["mosquitto_pub", "-h", HOST, "-p", str(broker.ssl_port), "-t", "wrong/bad", "-m", "x", "-q", "1",
                 *psk_args("device-2", WRONG_KEY)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for i in range(6)
        ]
        good = [pub(broker, f"wrong/good{i}", f"good-{i}", *psk_args("device-2")) for i in range(3)]
        codes = [p.wait(timeout=20) for p in wrong]
        assert all(code != 0 for code in codes), codes
        assert [g.returncode for g in good] == [0, 0, 0], [g.stderr for g in good]
        assert sorted(sub.next() for _ in range(3)) == ["good-0", "good-1", "good-2"]
        assert wait_until(lambda: metric(broker, FAILED) == 6, 5), metric(broker, FAILED)
        # Logged once per interval, with the peer and the identity, never the key.
        assert log_contains(broker, 'PSK identity \\"device-2\\"'), broker.log_tail()
        assert "wrong key" in broker.log_tail()
        expected = "bad record mac" if tls_versions == TLS12 else "binder does not verify"
        assert expected in broker.log_tail()
        assert WRONG_KEY not in broker.log_tail() and KEYS["device-2"] not in broker.log_tail()
        assert sub.proc.poll() is None, "the good subscriber was disconnected"
    finally:
        sub.stop()


@pytest.mark.parametrize("tls_versions", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_an_unknown_identity_is_refused(broker_factory, tmp_path, tls_versions):
    broker = psk_broker(broker_factory, tmp_path, tls_versions=tls_versions)
    refused = pub(broker, "psk/u", "x", *psk_args("stranger", KEYS["device-1"]))
    assert refused.returncode != 0
    assert wait_until(lambda: metric(broker, FAILED) == 1, 5)
    # TLS 1.2: OpenSSL refuses it; TLS 1.3: refused after the handshake.
    expected = " (psk identity not found)" if tls_versions == TLS12 else '"'
    assert log_contains(broker, 'unknown PSK identity \\"stranger\\"' + expected), broker.log_tail()
    # In TLS 1.3 OpenSSL would go on with the certificate: the client must not be
    # let in as an anonymous certificate client.
    assert "Client(" not in broker.ctl("clients", "list").stdout


def test_plain_mqtt_and_silence_on_the_psk_port_are_closed(broker_factory, tmp_path):
    broker = psk_broker(broker_factory, tmp_path)
    sub = Sub(broker, "plain/#", *psk_args("device-1"))
    try:
        wait_subscribed(broker)
        connect = bytes.fromhex("101000044d5154540402003c0004746573740000")
        with socket.create_connection((HOST, broker.ssl_port), timeout=5) as s:
            s.sendall(connect)
            s.settimeout(5)
            data = b""
            try:
                while chunk := s.recv(4096):
                    data += chunk
            except ConnectionResetError:
                pass
            assert b"\x20\x02" not in data, "a CONNACK went out on a non-TLS connection"
        # Silent past handshake_timeout (2s): closed.
        with socket.create_connection((HOST, broker.ssl_port), timeout=8) as s:
            started = time.monotonic()
            assert s.recv(1) == b""
            assert 1.5 < time.monotonic() - started < 6
        assert wait_until(lambda: metric(broker, FAILED) == 2, 5)
        done = pub(broker, "plain/ok", "still here", *psk_args("device-2"))
        assert done.returncode == 0, done.stderr
        assert sub.next() == "still here"
    finally:
        sub.stop()


def test_an_idle_psk_connection_hibernates_and_wakes(broker_factory, tmp_path):
    broker = psk_broker(broker_factory, tmp_path, **{"zone.external.hibernate_after": "500ms"})
    sub = Sub(broker, "hib/t", *psk_args("device-1"), version="mqttv5")
    try:
        wait_subscribed(broker)
        for round_ in range(3):
            wait_hibernated(broker, 1)
            p = connected(broker.port)
            p.publish("hib/t", f"wake-{round_}".encode(), qos=1)
            p.disconnect()
            assert sub.next() == f"wake-{round_}"
        wait_hibernated(broker, 1)
        # A PSK publisher reaches the hibernated PSK subscriber too.
        done = pub(broker, "hib/t", "from-psk", *psk_args("device-2"), version="mqttv5")
        assert done.returncode == 0, done.stderr
        assert sub.next() == "from-psk"
        assert sub.proc.poll() is None
    finally:
        sub.stop()


@pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5.0"])
def test_certificate_clients_share_the_psk_port(broker_factory, tmp_path, protocol):
    broker = psk_broker(broker_factory, tmp_path)
    cert_sub = Client(broker.ssl_port, tls={"ca_certs": str(CACERT)}, protocol=protocol)
    cert_sub.connect()
    cert_sub.subscribe("mixed/#", qos=1)
    psk_sub = Sub(broker, "mixed/#", *psk_args("device-1"))
    try:
        wait_subscribed(broker, 2)
        done = pub(broker, "mixed/psk", "from-psk", *psk_args("device-2"))
        assert done.returncode == 0, done.stderr
        done = pub(broker, "mixed/cert", "from-cert", "--cafile", str(CACERT))
        assert done.returncode == 0, done.stderr
        cert_sub.wait_messages(2)
        assert sorted(m.payload for m in cert_sub.messages) == [b"from-cert", b"from-psk"]
        assert sorted(psk_sub.next() for _ in range(2)) == ["from-cert", "from-psk"]
    finally:
        psk_sub.stop()
        cert_sub.disconnect()


@pytest.mark.parametrize("tls_versions", [TLS12, TLS13], ids=["tls1.2", "tls1.3"])
def test_psk_or_mutual_tls_on_one_port(broker_factory, tmp_path, tls_versions):
    # verify_peer + fail_if_no_peer_cert: a key or a client certificate, nothing less.
    broker = psk_broker(broker_factory, tmp_path, tls_versions=tls_versions, **{
        "listener.ssl.external.verify": "verify_peer",
        "listener.ssl.external.fail_if_no_peer_cert": "true",
    })
    certs = REPO / "etc" / "certs"
    with_cert = ["--cafile", str(CACERT), "--cert", str(certs / "client-cert.pem"),
                 "--key", str(certs / "client-key.pem")]
    assert pub(broker, "m/t", "psk", *psk_args("device-1")).returncode == 0
    assert pub(broker, "m/t", "cert", *with_cert).returncode == 0
    assert pub(broker, "m/t", "anonymous", "--cafile", str(CACERT)).returncode != 0
    assert wait_until(lambda: metric(broker, FAILED) == 1, 5)
    assert log_contains(broker, "peer did not return a certificate"), broker.log_tail()


def test_the_psk_identity_is_the_username_with_peer_cert_as_username(broker_factory, tmp_path):
    # With use_username_as_clientid the username shows as the client id.
    broker = psk_broker(broker_factory, tmp_path, **{
        "listener.ssl.external.peer_cert_as_username": "cn",
        "zone.external.use_username_as_clientid": "true",
    })
    sub = Sub(broker, "id/t", *psk_args("device-1"), extra=["-u", "claimed", "-i", unique_id("ignored")])
    try:
        wait_subscribed(broker)
        listed = broker.ctl("clients", "list").stdout
        assert "Client(device-1," in listed, listed
    finally:
        sub.stop()


def test_malformed_psk_file_lines_are_logged_and_skipped(broker_factory, tmp_path):
    bad = ["no-delimiter-here", "odd:abc", "nothex:zz11", ":5f3a"]
    broker = psk_broker(broker_factory, tmp_path, extra_lines=bad)
    path = tmp_path / "psk.txt"
    log = broker.log_tail()
    for line in (2, 3, 4, 5):
        assert f"{path}:{line}" in log, log
    assert "identities=2" in log, log
    # The good entries after them work.
    done = pub(broker, "skip/t", "ok", *psk_args("device-1"))
    assert done.returncode == 0, done.stderr


def test_a_missing_psk_file_stops_the_start_with_its_path(broker_factory, tmp_path):
    missing = tmp_path / "nope.txt"
    broker = broker_factory(
        {"listener.ssl.external.psk_ciphers": PSK_CIPHERS, "psk.file.path": missing}, start=False
    )
    with pytest.raises(AssertionError) as failed:
        broker.start(timeout_s=15)
    assert str(missing) in str(failed.value)
    assert "psk.file.path" in str(failed.value)


def test_psk_ciphers_on_a_wss_listener_is_an_unknown_key(broker_factory):
    broker = broker_factory({"listener.wss.external.psk_ciphers": PSK_CIPHERS}, start=False)
    with pytest.raises(AssertionError) as failed:
        broker.start(timeout_s=15)
    assert "unknown key listener.wss.external.psk_ciphers" in str(failed.value)
