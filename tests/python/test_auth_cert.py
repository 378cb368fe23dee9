"""A TLS client certificate's subject reaching the authentication backends, with paho
over TLS and certificates from quay-certgen: `%C` (Common Name) and `%d` (Distinguished
Name) in emqx_auth_http's auth and ACL requests, empty for a client that sent no
certificate, and `peer_cert_as_username = cn | dn` making the certificate the user name
a backend checks (emqx_auth_http, and the built-in emqx_auth_username), whatever user
name the client claims.

Two certificate sets from two CAs (client CNs `device-1` and `device-2`); the broker
trusts both (its cacertfile holds both CAs), so a backend, not the TLS layer, is what
tells the two devices apart."""

import pytest

from helpers import V5, V311, Client, wait_until
from test_auth_http import AuthServer
from test_tls import certgen

DN = {"device-1": "CN=device-1, O=Quay", "device-2": "CN=device-2, O=Quay"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    one = certgen(tmp_path_factory.mktemp("one"), "--client-cn", "device-1")
    two = certgen(tmp_path_factory.mktemp("two"), "--client-cn", "device-2")
    bundle = tmp_path_factory.mktemp("bundle") / "cacerts.pem"
    bundle.write_text((one / "cacert.pem").read_text() + (two / "cacert.pem").read_text())
    return {"device-1": one, "device-2": two, "server": one, "bundle": bundle}


@pytest.fixture
def server():
    s = AuthServer()
    yield s
    s.close()


def tls_overrides(certs, **extra):
    server = certs["server"]
    overrides = {
        "listener.ssl.external.keyfile": server / "key.pem",
        "listener.ssl.external.certfile": server / "cert.pem",
        "listener.ssl.external.cacertfile": certs["bundle"],
        "listener.ssl.external.verify": "verify_peer",
        "listener.ssl.external.fail_if_no_peer_cert": "false",
    }
    overrides.update({f"listener.ssl.external.{k}": v for k, v in extra.items()})
    return overrides


def tls_client(broker, certs, device=None, protocol=V5, **kwargs):
    """A paho client on the TLS port, presenting `device`'s certificate (or none)."""
    tls = {"ca_certs": str(certs["server"] / "cacert.pem")}
    if device is not None:
        tls["certfile"] = str(certs[device] / "client-cert.pem")
        tls["keyfile"] = str(certs[device] / "client-key.pem")
    return Client(broker.ssl_port, tls=tls, protocol=protocol, **kwargs)


def connack_code(client):
    """The CONNACK reason code (v5) or return code (v3) the client got."""
    rc, _, _ = client.connect(expect_success=False)
    client.stop()
    return rc.value if hasattr(rc, "value") else int(rc)


def http_broker(broker_factory, server, overrides, **http):
    settings = {
        "allow_anonymous": "false",
        "auth.http.auth_req": server.url("/auth"),
        "auth.http.auth_req.params": "clientid=%c,username=%u,password=%P,cn=%C,dn=%d",
        "auth.http.super_req": "",
        "auth.http.acl_req": server.url("/acl"),
        "auth.http.acl_req.params": "username=%u,cn=%C,dn=%d,topic=%t,access=%A",
        "auth.http.request.timeout": "2s",
        "acl_nomatch": "deny",
    }
    settings.update(http)
    settings.update(overrides)
    b = broker_factory(overrides=settings)
    assert wait_until(lambda: b.ctl("ping").returncode == 0, 10)
    r = b.ctl("plugins", "load", "emqx_auth_http")
    assert r.stdout == "Plugin emqx_auth_http loaded successfully.\n", r.stdout + r.stderr
    return b


def only_device_1(req):
    """Lets in the client whose certificate says device-1, refuses everyone else."""
    return (200, "ok") if req["params"].get("cn") == "device-1" else (403, "no")


def own_tree_of_the_cn(req):
    """A client may use `<its CN>/...` and nothing else."""
    p = req["params"]
    return (200, "ok") if p.get("cn") and p.get("topic", "").startswith(p["cn"] + "/") else (403, "no")


@pytest.mark.parametrize("protocol", [V5, V311], ids=["5.0", "3.1.1"])
def test_cn_and_dn_reach_the_http_auth_and_acl_requests(broker_factory, server, certs, protocol):
    server.answers["/auth"] = only_device_1
    server.answers["/acl"] = own_tree_of_the_cn
    b = http_broker(broker_factory, server, tls_overrides(certs))

    c = tls_client(b, certs, "device-1", protocol=protocol, username="someone", password="pw")
    c.connect()
    try:
        (auth,) = server.of("/auth")
        assert auth["params"]["cn"] == "device-1"
        assert auth["params"]["dn"] == DN["device-1"]
        assert auth["params"]["username"] == "someone", "without peer_cert_as_username the claimed name stays"
        # The ACL request carries them too, and the backend's answer decides.
        denied = 0x87 if protocol == V5 else 0x80
        assert c.subscribe("device-1/cmd/#") == [1]
        assert c.subscribe("device-2/cmd/#") == [denied]
        acl = server.of("/acl")
        assert {(r["params"]["cn"], r["params"]["dn"], r["params"]["topic"]) for r in acl} == {
            ("device-1", DN["device-1"], "device-1/cmd/#"),
            ("device-1", DN["device-1"], "device-2/cmd/#"),
        }
    finally:
        c.disconnect()

    # The other CA's device: same TLS trust, but the backend refuses its CN (403).
    other = tls_client(b, certs, "device-2", protocol=protocol, username="someone", password="pw")
    # (paho reports a 3.1.1 return code 5 as the 5.0 code it maps to, 0x87)
    assert connack_code(other) == 0x87
    assert server.of("/auth")[-1]["params"]["cn"] == "device-2"
    assert server.of("/auth")[-1]["params"]["dn"] == DN["device-2"]


def test_without_a_certificate_cn_and_dn_are_empty(broker_factory, server, certs):
    server.answers["/auth"] = only_device_1
    b = http_broker(broker_factory, server, tls_overrides(certs))
    c = tls_client(b, certs, None, username="someone", password="pw")
    assert connack_code(c) == 0x87
    (auth,) = server.of("/auth")
    assert auth["params"]["cn"] == "" and auth["params"]["dn"] == ""
    assert auth["params"]["username"] == "someone"


@pytest.mark.parametrize("field", ["cn", "dn"])
def test_peer_cert_as_username_is_the_name_the_http_backend_checks(broker_factory, server, certs, field):
    def the_certificate_is_the_user(req):
        p = req["params"]
        ok = p["username"] == (p["cn"] if field == "cn" else p["dn"]) and p["password"] == "pw"
        return (200, "ok") if ok else (401, "no")

    server.answers["/auth"] = the_certificate_is_the_user
    server.answers["/acl"] = lambda req: (200, "ok") if req["params"]["username"] == req["params"][field] else (403, "no")
    b = http_broker(broker_factory, server, tls_overrides(certs, peer_cert_as_username=field))

    c = tls_client(b, certs, "device-1", username="admin", password="pw")
    c.connect()
    try:
        expected = "device-1" if field == "cn" else DN["device-1"]
        assert server.of("/auth")[0]["params"]["username"] == expected, "the claimed name was replaced"
        assert c.subscribe("anything/here") == [1]
        assert server.of("/acl")[0]["params"]["username"] == expected
    finally:
        c.disconnect()
    # The password is still checked.
    wrong = tls_client(b, certs, "device-1", username="admin", password="not-pw")
    assert connack_code(wrong) == 0x86


def test_peer_cert_as_username_cn_with_the_builtin_user_store(broker_factory, certs):
    b = broker_factory(
        overrides={
            **tls_overrides(certs, peer_cert_as_username="cn"),
            "allow_anonymous": "false",
            "auth.user.password_hash": "sha256",
        }
    )
    assert wait_until(lambda: b.ctl("ping").returncode == 0, 10)
    assert b.ctl("plugins", "load", "emqx_auth_username").returncode == 0
    assert b.ctl("users", "add", "device-1", "device-1-pw").stdout == "ok\n"
    assert b.ctl("users", "add", "admin", "admin-pw").stdout == "ok\n"

    # device-1's certificate and its password: in, whatever name the client claims.
    c = tls_client(b, certs, "device-1", username="admin", password="device-1-pw")
    c.connect()
    c.disconnect()
    # admin's password does not help a client holding device-1's certificate: the
    # store checks the certificate's name.
    assert connack_code(tls_client(b, certs, "device-1", username="admin", password="admin-pw")) == 0x86
    # device-2 has no entry: not this backend's, and allow_anonymous = false refuses.
    assert connack_code(tls_client(b, certs, "device-2", username="device-1", password="device-1-pw")) == 0x87
    # Plain TCP on the same broker is untouched: the claimed name is checked.
    tcp = Client(b.port, protocol=V5, username="admin", password="admin-pw")
    tcp.connect()
    tcp.disconnect()
