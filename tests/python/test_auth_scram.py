"""MQTT 5 enhanced authentication, SCRAM-SHA-256 (RFC 5802/7677), against the built-in
user store (emqx_auth_username): a real client (MQTT.js, its SCRAM side computed with
Node's crypto in mqttjs_scram.mjs) logs in, checks the server's signature and is
subject to its user's ACL; AUTH exchanges driven by hand with scramp (a SCRAM client
library from PyPI) show every way one can go wrong: a wrong password, an unknown user
(indistinguishable from a wrong password), a malformed message, a packet other than
AUTH, a silent client, a changed password, a restart, and a method nobody serves
(still CONNACK 0x8C)."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from scramp import ScramClient, ScramException

from authclient import connack
from helpers import unique_id, wait_until
from rawmqtt import (CONNACK, P_AUTH_DATA, P_AUTH_METHOD, Closed, RawClient, connect, decode_props,
                     encode_props, packet, parse_connack, publish)

METHOD = "SCRAM-SHA-256"
AUTH = 15
CONTINUE = 0x18
OK, BAD_PASSWORD, NOT_AUTHORIZED, PROTOCOL_ERROR, BAD_METHOD = 0, 0x86, 0x87, 0x82, 0x8C
HERE = Path(__file__).resolve().parent
ACL = """{allow, {user, "alice"}, pubsub, ["alice/#"]}.
{deny, all}.
"""


def scram_broker(broker_factory, **extra):
    b = broker_factory(start=False)
    acl = b.root / "acl.conf"
    acl.write_text(ACL)
    b.overrides.update({"allow_anonymous": "false", "acl_file": str(acl), "acl_nomatch": "deny", **extra})
    b.data_dir.mkdir(parents=True, exist_ok=True)
    (b.data_dir / "loaded_plugins").write_text("{emqx_auth_username, true}.\n")
    b.start()
    assert wait_until(lambda: b.ctl("ping").returncode == 0, 10)
    assert b.ctl("users", "add", "alice", "s3cret").stdout == "ok\n"
    return b


def auth_packet(data, reason=CONTINUE, method=METHOD):
    return packet(AUTH, 0, bytes([reason]) + encode_props([(P_AUTH_METHOD, method), (P_AUTH_DATA, data)]))


def parse_auth(p):
    assert p.type == AUTH, f"expected AUTH, got {p}"
    props, _ = decode_props(p.body, 1)
    return p.body[0], props


class Exchange:
    """One connection going through the SCRAM exchange by hand."""

    def __init__(self, port, username, password, client_id=None):
        self.c = RawClient(port, version=5)
        self.scram = ScramClient([METHOD], username, password)
        first = self.scram.get_client_first().encode()
        props = [(P_AUTH_METHOD, METHOD), (P_AUTH_DATA, first)]
        self.c.send(connect(client_id or unique_id("scram"), version=5, properties=props))

    def server_first(self):
        reason, props = parse_auth(self.c.recv())
        assert reason == CONTINUE and props[P_AUTH_METHOD] == METHOD
        return props[P_AUTH_DATA].decode()

    def finish(self):
        """Answer the server-first; the CONNACK."""
        self.scram.set_server_first(self.server_first())
        self.c.send(auth_packet(self.scram.get_client_final().encode()))
        p = self.c.recv()
        assert p.type == CONNACK, f"expected CONNACK, got {p}"
        return parse_connack(p, 5)

    def close(self):
        self.c.close()


def login(port, username, password):
    """The CONNACK of a whole exchange; the server's signature checked when it succeeds."""
    x = Exchange(port, username, password)
    try:
        ack = x.finish()
        if ack["rc"] == OK:
            assert ack["props"][P_AUTH_METHOD] == METHOD
            x.scram.set_server_final(ack["props"][P_AUTH_DATA].decode())  # raises if forged
        return ack["rc"]
    finally:
        x.close()


def mqttjs(port, username, password):
    assert shutil.which("node"), "node is not installed (tools/test.sh installs it)"
    assert (HERE.parent / "browser" / "node_modules" / "mqtt").exists(), "MQTT.js missing: tools/test.sh runs npm ci"
    r = subprocess.run(["node", str(HERE / "mqttjs_scram.mjs"), str(port), username, password],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_mqttjs_logs_in_with_scram_and_checks_the_server(broker_factory):
    b = scram_broker(broker_factory)
    r = mqttjs(b.port, "alice", "s3cret")
    # The broker proved it knows the password (server signature), and the client is
    # alice for the ACL: alice/# is hers, and her message came back.
    assert r == {"connected": True, "method": METHOD, "serverVerified": True, "suback": 1,
                 "message": ["alice/t", "hello over scram"]}, r
    wrong = mqttjs(b.port, "alice", "not-it")
    assert wrong["connected"] is False and wrong["code"] == BAD_PASSWORD, wrong


def test_a_wrong_password_and_an_unknown_user_look_the_same(broker_factory):
    b = scram_broker(broker_factory)
    assert login(b.port, "alice", "s3cret") == OK
    assert login(b.port, "alice", "wrong") == BAD_PASSWORD
    assert login(b.port, "mallory", "s3cret") == BAD_PASSWORD
    # An unknown name gets a server-first like a known one: salt, 4096 iterations,
    # and the same salt each time it asks (no way to tell it does not exist).
    salts = []
    for name in ("mallory", "mallory", "alice"):
        x = Exchange(b.port, name, "x")
        attrs = dict(a.split("=", 1) for a in x.server_first().split(","))
        x.close()
        assert attrs["i"] == "4096" and len(attrs["s"]) > 0
        salts.append(attrs["s"])
    assert salts[0] == salts[1] != salts[2]


def test_password_logins_still_work_and_a_changed_password_applies(broker_factory):
    b = scram_broker(broker_factory)
    for v in (5, 4):
        assert connack(b.port, "alice", "s3cret", v) == OK
    assert b.ctl("users", "update", "alice", "n3w").stdout == "ok\n"
    assert login(b.port, "alice", "s3cret") == BAD_PASSWORD
    assert login(b.port, "alice", "n3w") == OK
    # The keys are stored with the entry: a restart keeps them.
    b.restart()
    assert login(b.port, "alice", "n3w") == OK
    assert b.ctl("users", "del", "alice").stdout == "ok\n"
    assert login(b.port, "alice", "n3w") == BAD_PASSWORD


def test_broken_exchanges_are_refused_and_the_broker_keeps_serving(broker_factory):
    b = scram_broker(broker_factory, **{"zone.external.idle_timeout": "2s"})

    def first_message_answer(data):
        with RawClient(b.port, version=5) as c:
            c.send(connect(unique_id("bad"), version=5, properties=[(P_AUTH_METHOD, METHOD), (P_AUTH_DATA, data)]))
            return parse_connack(c.recv_type(CONNACK), 5)["rc"]

    # Malformed client-first messages: no GS2 header, channel binding asked, empty name.
    assert first_message_answer(b"n=alice,r=abc") == NOT_AUTHORIZED
    assert first_message_answer(b"p=tls-unique,,n=alice,r=abc") == NOT_AUTHORIZED
    assert first_message_answer(b"n,,n=,r=abc") == NOT_AUTHORIZED

    # A PUBLISH where the AUTH should be: protocol error.
    x = Exchange(b.port, "alice", "s3cret")
    x.server_first()
    x.c.send(publish("alice/t", b"early", version=5))
    p = x.c.recv()
    assert p.type == CONNACK and parse_connack(p, 5)["rc"] == PROTOCOL_ERROR
    x.close()

    # A forged proof with the right nonce.
    x = Exchange(b.port, "alice", "s3cret")
    x.scram.set_server_first(x.server_first())
    final = x.scram.get_client_final()
    forged = final[: final.index(",p=")] + ",p=" + "A" * 43 + "="
    x.c.send(auth_packet(forged.encode()))
    assert parse_connack(x.c.recv(), 5)["rc"] == BAD_PASSWORD
    x.close()

    # A client that goes quiet after the server-first is closed within idle_timeout.
    x = Exchange(b.port, "alice", "s3cret")
    x.server_first()
    start = time.monotonic()
    with pytest.raises(Closed):
        x.c.recv(timeout_s=10)
    assert time.monotonic() - start < 8
    x.close()

    # Meanwhile and after, others log in.
    assert login(b.port, "alice", "s3cret") == OK
    assert connack(b.port, "alice", "s3cret") == OK


def test_methods_nobody_serves_still_get_0x8c(broker_factory):
    b = scram_broker(broker_factory)
    with RawClient(b.port, version=5) as c:
        ack = c.connect(unique_id("k"), properties=[(P_AUTH_METHOD, "KERBEROS"), (P_AUTH_DATA, b"x")])
        assert ack["rc"] == BAD_METHOD
    # Without the user store plugin, SCRAM-SHA-256 has no server either.
    assert b.ctl("plugins", "unload", "emqx_auth_username").returncode == 0
    with RawClient(b.port, version=5) as c:
        ack = c.connect(unique_id("s"), properties=[(P_AUTH_METHOD, METHOD),
                                                    (P_AUTH_DATA, b"n,,n=alice,r=abc")])
        assert ack["rc"] == BAD_METHOD


def test_scramp_would_notice_a_forged_server_signature():
    """The check `login` relies on: scramp refuses a server-final that is not the server's."""
    c = ScramClient([METHOD], "user", "pencil", c_nonce="rOprNGfwEbeRWgbNEkqO")
    c.get_client_first()
    c.set_server_first("r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    c.get_client_final()
    with pytest.raises(ScramException):
        c.set_server_final("v=" + "A" * 43 + "=")
