"""MQTT over TLS (`listener.ssl.external`), with real clients: paho over TLS with and
without a client certificate, mosquitto_pub/mosquitto_sub with --cafile/--cert, a
client certificate from a CA the broker does not trust, the certificate as the
username, and bad input on the TLS port (plain MQTT, garbage, a silent client) that
is closed, counted, and noticed by nobody else.
"""

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN_DIR, HOST
from helpers import V5, V311, Client, connected, unique_id, wait_until
from test_flow_control import metric
from test_hibernate import assert_parks_and_wakes


def certgen(out, *args):
    subprocess.run([str(BIN_DIR / "quay-certgen"), "--out", str(out), *args], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A trusted CA set (client CN `device-1`) and a rogue CA set the broker does not know."""
    good = certgen(tmp_path_factory.mktemp("good"), "--client-cn", "device-1")
    rogue = certgen(tmp_path_factory.mktemp("rogue"), "--ca-cn", "Rogue CA", "--client-cn", "device-1")
    return {"good": good, "rogue": rogue}


def ssl_overrides(certs, **extra):
    good = certs["good"]
    overrides = {
        "listener.ssl.external.keyfile": good / "key.pem",
        "listener.ssl.external.certfile": good / "cert.pem",
        "listener.ssl.external.cacertfile": good / "cacert.pem",
    }
    overrides.update({f"listener.ssl.external.{k}": v for k, v in extra.items()})
    return overrides


def tls_client(broker, certs, client_cert=None, **kwargs):
    tls = {"ca_certs": str(certs["good"] / "cacert.pem")}
    if client_cert is not None:
        tls["certfile"] = str(client_cert / "client-cert.pem")
        tls["keyfile"] = str(client_cert / "client-key.pem")
    return Client(broker.ssl_port, tls=tls, **kwargs)


@pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5.0"])
def test_paho_over_tls_publishes_and_subscribes(broker_factory, certs, protocol):
    broker = broker_factory(ssl_overrides(certs))
    sub = tls_client(broker, certs, protocol=protocol)
    sub.connect()
    sub.subscribe("tls/t", qos=1)
    # A plain TCP client and a TLS client share the broker.
    pub = connected(broker.port, protocol=protocol)
    tls_pub = tls_client(broker, certs, protocol=protocol)
    tls_pub.connect()
    try:
        pub.publish("tls/t", b"from-tcp", qos=1)
        tls_pub.publish("tls/t", b"from-tls" * 5000, qos=1)
        sub.wait_messages(2)
        assert sorted(m.payload for m in sub.messages) == [b"from-tcp", b"from-tls" * 5000]
    finally:
        for c in (sub, pub, tls_pub):
            c.disconnect()


def test_a_persistent_tls_session_gets_its_queue_after_reconnecting(broker_factory, certs):
    broker = broker_factory(ssl_overrides(certs))
    cid = unique_id("tls-persist")
    sub = tls_client(broker, certs, client_id=cid, clean=False)
    sub.connect()
    sub.subscribe("tls/q", qos=1)
    sub.disconnect()
    pub = connected(broker.port)
    for i in range(50):
        pub.publish("tls/q", f"m{i}".encode(), qos=1)
    pub.disconnect()
    again = tls_client(broker, certs, client_id=cid, clean=False)
    again.connect()
    try:
        assert again.session_present
        again.wait_messages(50)
        assert [m.payload for m in again.messages] == [f"m{i}".encode() for i in range(50)]
    finally:
        again.disconnect()


def test_an_idle_tls_connection_hibernates_and_wakes_with_its_session(broker_factory, certs):
    overrides = ssl_overrides(certs)
    overrides["zone.external.hibernate_after"] = "500ms"
    broker = broker_factory(overrides)
    sub = tls_client(broker, certs, protocol=V5)
    sub.connect()
    sub.subscribe("hib/t", qos=1)
    try:
        assert_parks_and_wakes(broker, sub, "hib/t")
    finally:
        sub.disconnect()


def test_verify_peer_needs_a_certificate_from_the_trusted_ca(broker_factory, certs):
    broker = broker_factory(ssl_overrides(certs, verify="verify_peer", fail_if_no_peer_cert="true"))
    ok = tls_client(broker, certs, client_cert=certs["good"])
    ok.connect()
    ok.disconnect()
    # No certificate, and one from a CA the broker does not trust: no CONNACK.
    for client_cert in (None, certs["rogue"]):
        c = tls_client(broker, certs, client_cert=client_cert)
        with pytest.raises((ssl.SSLError, OSError, AssertionError)):
            c.connect(timeout_s=5)
        c.stop()
    assert wait_until(lambda: metric(broker, "client.tls.handshake_failed") >= 1, 5)
    # The broker still serves TLS clients with a good certificate.
    again = tls_client(broker, certs, client_cert=certs["good"])
    again.connect()
    again.disconnect()


def test_verify_peer_without_fail_if_no_peer_cert_lets_anonymous_tls_clients_in(broker_factory, certs):
    broker = broker_factory(ssl_overrides(certs, verify="verify_peer", fail_if_no_peer_cert="false"))
    c = tls_client(broker, certs)
    c.connect()
    c.disconnect()
    rogue = tls_client(broker, certs, client_cert=certs["rogue"])
    with pytest.raises((ssl.SSLError, OSError, AssertionError)):
        rogue.connect(timeout_s=5)
    rogue.stop()


@pytest.mark.parametrize("field,expected", [("cn", "device-1"), ("dn", "CN=device-1, O=Quay")])
def test_the_client_certificate_is_the_username(broker_factory, certs, field, expected):
    # With use_username_as_clientid the username shows as the client id.
    overrides = ssl_overrides(certs, verify="verify_peer", peer_cert_as_username=field)
    overrides["zone.external.use_username_as_clientid"] = "true"
    broker = broker_factory(overrides)
    c = tls_client(broker, certs, client_cert=certs["good"], client_id="ignored", username="claimed")
    c.connect()
    try:
        listed = broker.ctl("clients", "list").stdout
        assert f"Client({expected}," in listed, listed
    finally:
        c.disconnect()


def test_mosquitto_clients_with_cafile_and_client_certificates(broker_factory, certs):
    broker = broker_factory(ssl_overrides(certs, verify="verify_peer", fail_if_no_peer_cert="true"))
    good = certs["good"]
    tls_args = ["--cafile", str(good / "cacert.pem"), "--cert", str(good / "client-cert.pem"),
                "--key", str(good / "client-key.pem")]
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", HOST, "-p", str(broker.ssl_port), "-t", "mq/tls", "-C", "3", "-W", "20",
         "-q", "1", *tls_args],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        # Subscribed once its session shows up (mosquitto_sub subscribes right after CONNACK).
        assert wait_until(lambda: "Client(" in broker.ctl("clients", "list").stdout, 10)
        time.sleep(0.3)
        for i in range(3):
            subprocess.run(
                ["mosquitto_pub", "-h", HOST, "-p", str(broker.ssl_port), "-t", "mq/tls", "-m", f"p{i}", "-q", "1",
                 *tls_args],
                check=True, timeout=20,
            )
        out, _ = sub.communicate(timeout=25)
        assert out.split() == ["p0", "p1", "p2"]
    finally:
        sub.kill()
    # Without a client certificate mosquitto_pub is refused.
    refused = subprocess.run(
        ["mosquitto_pub", "-h", HOST, "-p", str(broker.ssl_port), "-t", "mq/tls", "-m", "x",
         "--cafile", str(good / "cacert.pem")],
        capture_output=True, timeout=20,
    )
    assert refused.returncode != 0


def test_bad_input_on_the_tls_port_is_closed_and_nobody_else_notices(broker_factory, certs):
    broker = broker_factory(ssl_overrides(certs, handshake_timeout="1s"))
    healthy = tls_client(broker, certs)
    healthy.connect()
    healthy.subscribe("bad/#", qos=1)
    before = metric(broker, "client.tls.handshake_failed")
    # Plain MQTT CONNECT bytes, then garbage: closed without an answer.
    for junk in (bytes.fromhex("101000044d5154540402003c0004746573740000"), b"\x16\x03\x01\x00\x05hello" * 3):
        with socket.create_connection((HOST, broker.ssl_port), timeout=5) as s:
            s.sendall(junk)
            s.settimeout(5)
            data = b""
            try:
                while True:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except ConnectionResetError:
                pass
            assert b"\x20\x02" not in data, "a CONNACK went out on a non-TLS connection"
    # A client that never speaks: closed after handshake_timeout.
    with socket.create_connection((HOST, broker.ssl_port), timeout=5) as s:
        s.settimeout(5)
        started = time.monotonic()
        assert s.recv(1) == b""
        assert time.monotonic() - started < 4
    assert wait_until(lambda: metric(broker, "client.tls.handshake_failed") >= before + 3, 5)
    pub = tls_client(broker, certs)
    pub.connect()
    pub.publish("bad/ok", b"still here", qos=1)
    healthy.wait_messages(1)
    assert healthy.disconnects == []
    pub.disconnect()
    healthy.disconnect()


def test_a_missing_certificate_file_stops_the_start_with_its_path(broker_factory, certs, tmp_path):
    missing = tmp_path / "nope.pem"
    broker = broker_factory({"listener.ssl.external.certfile": missing}, start=False)
    with pytest.raises(AssertionError) as failed:
        broker.start(timeout_s=15)
    assert str(missing) in str(failed.value)
    assert "certfile" in str(failed.value)


def test_shipped_development_certificates_work_out_of_the_box(broker_factory):
    broker = broker_factory()
    repo = Path(__file__).resolve().parents[2]
    c = Client(broker.ssl_port, tls={"ca_certs": str(repo / "etc" / "certs" / "cacert.pem")})
    c.connect()
    c.disconnect()


def test_packets_in_the_same_read_as_the_close_notify_count(broker_factory, certs):
    """A PUBLISH and a DISCONNECT sent in one TCP write with the TLS close_notify
    right behind them: the PUBLISH is delivered and the DISCONNECT ends the session
    normally (no will), as on plain TCP."""
    import rawmqtt as raw

    broker = broker_factory(ssl_overrides(certs))
    watcher = connected(broker.port)
    watcher.subscribe("cn/#", qos=1)
    ctx = ssl.create_default_context(cafile=str(certs["good"] / "cacert.pem"))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with socket.create_connection((HOST, broker.ssl_port), timeout=5) as s:

        def pump(until, steps=50):
            """Move records both ways until `until()` is done (bounded)."""
            for _ in range(steps):
                try:
                    return until()
                except ssl.SSLWantReadError:
                    s.sendall(outgoing.read())
                    data = s.recv(65536)
                    assert data, "closed by the broker"
                    incoming.write(data)
            raise AssertionError("no progress")

        pump(tls.do_handshake)
        tls.write(raw.connect(unique_id("cn"), will={"topic": "cn/will", "payload": "gone"}))
        s.sendall(outgoing.read())
        assert pump(lambda: tls.read(4))[0] == 0x20, "no CONNACK"
        tls.write(raw.publish("cn/data", b"last words") + raw.disconnect())
        try:
            tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # the close_notify is written; the broker's is not awaited
        s.sendall(outgoing.read())  # PUBLISH, DISCONNECT and close_notify in one write
    watcher.wait_messages(1)
    time.sleep(0.5)
    assert [(m.topic, m.payload) for m in watcher.messages] == [("cn/data", b"last words")]
    watcher.disconnect()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["1.3", "1.2"])
def test_a_reconnecting_client_resumes_its_tls_session(broker_factory, certs, version):
    """Stateless session tickets: the second connection resumes the first's session
    (no certificate signature), and still gets a CONNACK."""
    import rawmqtt as raw

    broker = broker_factory(ssl_overrides(certs))
    ctx = ssl.create_default_context(cafile=str(certs["good"] / "cacert.pem"))
    ctx.minimum_version = ctx.maximum_version = version

    def session(resume=None):
        with socket.create_connection((HOST, broker.ssl_port), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname="localhost", session=resume) as tls:
                tls.sendall(raw.connect(unique_id("resume")))
                # TLS 1.3 tickets arrive after the handshake: read the CONNACK first.
                assert tls.recv(4)[0] == 0x20
                return tls.session, tls.session_reused

    first, reused = session()
    assert not reused
    assert first is not None and first.has_ticket, "the broker issued no session ticket"
    _, reused = session(first)
    assert reused, "the reconnect did a full handshake"
