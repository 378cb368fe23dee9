"""Banned clients (`emqx_ctl banned add|del|list`): by client id, username or peer
host, with a reason and an expiry. A banned client gets CONNACK 0x8A (v5) or return
code 5 (v3.1.1), whatever it presents (a password, a SCRAM exchange); a client already
connected when the ban is set is disconnected; bans are on disk once `ok` is printed
(they survive kill -9) and lift by themselves at their expiry."""

import threading
import time

import paho.mqtt.client as mqtt

from authclient import connack
from helpers import V5, wait_until, unique_id
from rawmqtt import DISCONNECT, RawClient, parse_disconnect
from test_auth_scram import Exchange, login, scram_broker

OK = 0
BANNED = {5: 0x8A, 4: 5}
ADMINISTRATIVE_ACTION = 0x98


def ban(b, kind, who, *options):
    r = b.ctl("banned", "add", kind, who, *options)
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stdout + r.stderr
    return r


def listed(b):
    r = b.ctl("banned", "list")
    assert r.returncode == 0, r.stdout
    return r.stdout.splitlines()


def test_a_ban_by_clientid_username_or_host_refuses_only_that_client(broker):
    ban(broker, "clientid", "bad-device", "--reason", "flooding")
    ban(broker, "username", "mallory")
    ban(broker, "peerhost", "127.0.0.2", "--by", "ops", "--reason", "scanner")
    for v in (5, 4):
        assert connack(broker.port, None, None, v, client_id="bad-device") == BANNED[v]
        assert connack(broker.port, "mallory", "pw", v) == BANNED[v]
        with RawClient(broker.port, version=v, source="127.0.0.2") as c:
            assert c.connect(unique_id("from-2"))["rc"] == BANNED[v]
        # Everyone else is let in: another id, another name, another host.
        assert connack(broker.port, "alice", "pw", v, client_id="good-device") == OK
        with RawClient(broker.port, version=v, source="127.0.0.3") as c:
            assert c.connect(unique_id("from-3"))["rc"] == OK
    lines = listed(broker)
    assert len(lines) == 3, lines
    assert lines[0].startswith("Banned(clientid=bad-device, by=emqx_ctl, reason=flooding, at=20")
    assert lines[0].endswith(", until=infinity)")
    assert lines[1].startswith("Banned(username=mallory, by=emqx_ctl, reason=, at=")
    assert lines[2].startswith("Banned(peerhost=127.0.0.2, by=ops, reason=scanner, at=")

    # A real client library sees the reason too.
    seen = {}
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bad-device", protocol=V5)

    def on_connect(client, userdata, flags, reason_code, properties):
        seen["rc"] = reason_code.value
        done.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        assert done.wait(10)
    finally:
        c.loop_stop()
        c.disconnect()
    assert seen["rc"] == 0x8A

    r = broker.ctl("banned", "del", "clientid", "bad-device")
    assert (r.returncode, r.stdout) == (0, "ok\n")
    assert connack(broker.port, None, None, 5, client_id="bad-device") == OK
    assert len(listed(broker)) == 2


def test_bad_ban_commands_say_what_is_wrong_and_change_nothing(broker):
    cases = [
        (("banned", "add", "ip", "1.2.3.4"), "expected clientid, username or peerhost"),
        (("banned", "add", "peerhost", "1.2.3.400"), "not an IP address"),
        (("banned", "add", "clientid", "c", "--until", "yesterday"), "RFC 3339"),
        (("banned", "add", "clientid", "c", "--until", "1000"), "in the past"),
        (("banned", "add", "clientid", "c", "--duration", "10"), "--duration 10"),
        (("banned", "add", "clientid", "c", "--reason"), "needs a value"),
        (("banned", "del", "clientid", "nobody"), "clientid nobody is not banned"),
        (("banned", "frobnicate"), "unknown command"),
    ]
    for args, message in cases:
        r = broker.ctl(*args)
        assert r.returncode == 1 and message in r.stdout, (args, r.stdout)
    assert listed(broker) == []
    assert connack(broker.port, None, None, 5, client_id="c") == OK


def test_bans_survive_kill_9_and_lift_at_their_expiry(broker):
    ban(broker, "clientid", "short", "--duration", "4s")
    ban(broker, "username", "forever", "--reason", "kept")
    until = int(time.time()) + 3600
    ban(broker, "peerhost", "127.0.0.9", "--until", str(until))
    # `ok` was printed: the bans are on disk, whatever happens to the process now.
    broker.restart(crash=True)
    assert connack(broker.port, None, None, 5, client_id="short") == BANNED[5]
    assert connack(broker.port, "forever", "pw", 4) == BANNED[4]
    with RawClient(broker.port, version=5, source="127.0.0.9") as c:
        assert c.connect(unique_id("h"))["rc"] == BANNED[5]
    assert any("until=" + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until)) in line
               for line in listed(broker)), listed(broker)
    # The short one lifts by itself; the others stay.
    assert wait_until(lambda: connack(broker.port, None, None, 5, client_id="short") == OK, 15)
    assert [line.split(",")[0] for line in listed(broker)] == ["Banned(username=forever", "Banned(peerhost=127.0.0.9"]
    # Swept from the disk too: a restart does not bring it back.
    broker.restart()
    assert connack(broker.port, None, None, 5, client_id="short") == OK
    assert len(listed(broker)) == 2


def test_banning_a_connected_client_disconnects_it(broker):
    by_id = RawClient(broker.port, version=5)
    assert by_id.connect("victim-1")["rc"] == OK
    by_name = RawClient(broker.port, version=5)
    assert by_name.connect("victim-2", username="eve", password=b"pw")["rc"] == OK
    by_host = RawClient(broker.port, version=4, source="127.0.0.7")
    assert by_host.connect("victim-3")["rc"] == OK
    bystander = RawClient(broker.port, version=5)
    assert bystander.connect("bystander", username="bob", password=b"pw")["rc"] == OK

    ban(broker, "clientid", "victim-1")
    ban(broker, "username", "eve")
    ban(broker, "peerhost", "127.0.0.7")
    for c in (by_id, by_name):
        _, seen = c.wait_closed(10)
        # v5: told why, as a kick is.
        assert [p.type for p in seen] == [DISCONNECT], seen
        assert parse_disconnect(seen[0]) == ADMINISTRATIVE_ACTION
        c.close()
    _, seen = by_host.wait_closed(10)
    assert seen == []  # v3.1.1 has no DISCONNECT from the server
    by_host.close()
    # The bystander keeps its connection.
    bystander.send(bytes([0xC0, 0x00]))  # PINGREQ
    assert bystander.recv().type == 13
    bystander.close()
    assert connack(broker.port, "eve", "pw", 5) == BANNED[5]


def test_scram_logins_are_banned_too(broker_factory):
    b = scram_broker(broker_factory)
    assert login(b.port, "alice", "s3cret") == OK
    # A SCRAM client names itself in the exchange, not in the CONNECT: refused once
    # the exchange has proved who it is.
    ban(b, "username", "alice")
    assert login(b.port, "alice", "s3cret") == 0x8A
    assert b.ctl("banned", "del", "username", "alice").returncode == 0
    assert login(b.port, "alice", "s3cret") == OK
    # A banned client id is refused before any exchange: the first answer is the
    # CONNACK, not a server-first.
    ban(b, "clientid", "scram-device")
    x = Exchange(b.port, "alice", "s3cret", client_id="scram-device")
    try:
        p = x.c.recv()
    finally:
        x.close()
    assert (p.type, p.body[1]) == (2, 0x8A), p


def test_a_ban_set_while_the_client_authenticates_still_refuses_it(broker_factory):
    """The race: CONNECT passes the ban check, waits on a slow backend, the ban is set
    meanwhile (and finds no registered connection to disconnect), then the backend lets
    the client in. It must still be refused."""
    from test_auth_http import AuthServer, http_broker

    server = AuthServer()
    entered = threading.Event()

    def slow_allow(req):
        entered.set()
        return (200, "ok", 1.5)

    server.answers["/auth"] = slow_allow
    try:
        b = http_broker(broker_factory, server, **{"auth.http.request.timeout": "5s"})
        result = {}

        def connect():
            with RawClient(b.port, version=5, timeout_s=10) as c:
                result["rc"] = c.connect("racer", username="u", password=b"p", timeout_s=10)["rc"]

        t = threading.Thread(target=connect)
        t.start()
        assert entered.wait(10), "the CONNECT never reached the backend"
        ban(b, "clientid", "racer")
        t.join(15)
        assert result.get("rc") == BANNED[5], result
        assert "racer" not in b.ctl("clients", "list").stdout
    finally:
        server.close()
