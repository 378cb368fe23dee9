"""emqx_auth_ldap against a real OpenLDAP slapd (tests/python/dbservers.py) with EMQX's
defaults (bind as cn=root,dc=emqx,dc=io, search ou=device for objectClass=mqttUser and
uid=<username>): RFC 2307 password schemes, bind_as_user, filter injection, load/unload
and a directory that is down."""

import base64
import hashlib
import time

import pytest

from authclient import BAD_PASSWORD, NOT_AUTHORIZED, OK, SERVER_UNAVAILABLE, connack
from conftest import HOST, free_port
from dbservers import ldap_server  # noqa: F401 (fixture)
from helpers import unique_id, wait_until

PLUGIN = "emqx_auth_ldap"


def ssha(password, salt=b"NaCl"):
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def sha(password):
    return "{SHA}" + base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()


def entry(uid, password, objectclass="mqttUser"):
    return (f"dn: uid={uid},ou=device,dc=emqx,dc=io\n"
            f"objectClass: account\nobjectClass: simpleSecurityObject\nobjectClass: {objectclass}\n"
            f"uid: {uid}\nuserPassword: {password}\n\n")


@pytest.fixture(scope="module")
def directory(ldap_server):
    ldap_server.ldapadd(
        "dn: dc=emqx,dc=io\nobjectClass: dcObject\nobjectClass: organization\no: emqx\ndc: emqx\n\n"
        "dn: ou=device,dc=emqx,dc=io\nobjectClass: organizationalUnit\nou: device\n\n"
        + entry("alice", ssha("alice-pw"))
        + entry("bob", sha("bob-pw"))
        + entry("carol", "carol-plain")
        # The wildcard target: the first entry a `(uid=*)` filter would find.
        + entry("aaron", "shared-pw")
        # An entry without the mqttUser class is not a device.
        + entry("dave", "dave-pw", objectclass="top")
    )
    return ldap_server


def settings(ldap, **extra):
    s = {"allow_anonymous": "false", "auth.ldap.servers": HOST, "auth.ldap.port": str(ldap.port),
         "auth.ldap.timeout": "3s"}
    s.update({f"auth.ldap.{k}": v for k, v in extra.items()})
    return s


def start_with_plugin(broker_factory, s):
    b = broker_factory(start=False)
    b.overrides.update(s)
    b.data_dir.mkdir(parents=True, exist_ok=True)
    (b.data_dir / "loaded_plugins").write_text(f"{{{PLUGIN}, true}}.\n")
    return b.start()


def test_password_schemes_and_unknown_users(broker_factory, directory):
    b = start_with_plugin(broker_factory, settings(directory))
    for v in (5, 4):
        assert connack(b.port, "alice", "alice-pw", v) == OK  # {SSHA}
        assert connack(b.port, "bob", "bob-pw", v) == OK  # {SHA}
        assert connack(b.port, "carol", "carol-plain", v) == OK  # plain
        assert connack(b.port, "alice", "wrong", v) == BAD_PASSWORD[v]
        assert connack(b.port, "alice", None, v) == BAD_PASSWORD[v]
        assert connack(b.port, "nobody", "x", v) == NOT_AUTHORIZED[v]  # ignored
        assert connack(b.port, "dave", "dave-pw", v) == NOT_AUTHORIZED[v]  # not an mqttUser


@pytest.mark.parametrize("username", ["*", "a*", "*)(uid=*", "aaron)(|(uid=*", "' OR '1'='1", "aaron\\2a"])
def test_filter_injection_never_authenticates(broker_factory, directory, username):
    """Escaped per RFC 4515, `*` and parentheses are literal characters of the name, so
    these find no entry; unescaped, `a*` or `*)(uid=*` would find aaron and log in with
    aaron's password."""
    b = start_with_plugin(broker_factory, settings(directory))
    assert connack(b.port, "aaron", "shared-pw") == OK
    assert connack(b.port, username, "shared-pw") == NOT_AUTHORIZED[5]


def test_bind_as_user(broker_factory, directory):
    b = start_with_plugin(broker_factory, settings(directory, bind_as_user="true"))
    assert connack(b.port, "alice", "alice-pw") == OK  # slapd checks the {SSHA} itself
    assert connack(b.port, "alice", "wrong") == BAD_PASSWORD[5]
    assert connack(b.port, "alice", "") == BAD_PASSWORD[5]  # not an anonymous bind
    assert connack(b.port, "nobody", "x") == NOT_AUTHORIZED[5]


def test_load_and_unload_and_a_bad_setting(broker_factory, directory):
    b = broker_factory(start=False)
    b.overrides.update(settings(directory))
    b.start()
    assert wait_until(lambda: b.ctl("ping").returncode == 0, 10)
    assert connack(b.port, "alice", "alice-pw") == NOT_AUTHORIZED[5]
    r = b.ctl("plugins", "load", PLUGIN)
    assert r.returncode == 0, r.stdout + r.stderr
    assert connack(b.port, "alice", "alice-pw") == OK
    assert b.ctl("plugins", "unload", PLUGIN).returncode == 0
    assert connack(b.port, "alice", "alice-pw") == NOT_AUTHORIZED[5]
    b.stop()
    b.overrides["auth.ldap.username.attributetype"] = "uid)(x"
    b.start()
    assert wait_until(lambda: b.ctl("ping").returncode == 0, 10)
    r = b.ctl("plugins", "load", PLUGIN)
    assert r.returncode != 0 and "auth.ldap.username.attributetype" in r.stdout, r.stdout


def test_directory_down_or_wrong_manager_password(broker_factory, directory):
    s = settings(directory, port=str(free_port()), timeout="1s")
    s["allow_anonymous"] = "true"
    b = start_with_plugin(broker_factory, s)
    started = time.monotonic()
    for _ in range(5):
        assert connack(b.port, "alice", "wrong") == OK  # passed over: anonymous allowed
    assert time.monotonic() - started < 10
    assert 1 <= b.log_tail().count("authentication backend failed") <= 2
    b.stop()
    # The directory is up but our manager bind fails: also a backend failure.
    b.overrides.update(settings(directory, bind_password="not-public", on_error="deny"))
    b.start()
    assert connack(b.port, "alice", "alice-pw", 5) == SERVER_UNAVAILABLE[5]
    assert connack(b.port, "alice", "alice-pw", 4) == SERVER_UNAVAILABLE[4]
    assert "not-public" not in b.log_tail()
