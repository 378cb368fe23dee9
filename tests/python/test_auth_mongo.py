"""emqx_auth_mongo against nx-27017, a MongoDB wire-protocol server from PyPI
(tests/python/dbservers.py; MongoDB itself has no Debian 12 package): EMQX 4's
collections and selectors, superusers, ACL documents, operator injection through the
username, and a server that is down."""

import hashlib
import time

import pytest

from authclient import BAD_PASSWORD, NOT_AUTHORIZED, OK, SERVER_UNAVAILABLE, Paho, connack
from conftest import HOST, free_port
from dbservers import mongo_server  # noqa: F401 (fixture)
from helpers import V311, unique_id, wait_until

PLUGIN = "emqx_auth_mongo"


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


def settings(mongo, **extra):
    s = {"allow_anonymous": "false", "auth.mongo.server": f"{HOST}:{mongo.port}",
         "auth.mongo.query_timeout": "3s"}
    s.update({f"auth.mongo.{k}": v for k, v in extra.items()})
    return s


def start_with_plugin(broker_factory, s, acl_text=None):
    b = broker_factory(start=False)
    b.overrides.update(s)
    if acl_text is not None:
        acl = b.root / "acl.conf"
        acl.write_text(acl_text)
        b.overrides["acl_file"] = str(acl)
    b.data_dir.mkdir(parents=True, exist_ok=True)
    (b.data_dir / "loaded_plugins").write_text(f"{{{PLUGIN}, true}}.\n")
    return b.start()


@pytest.fixture(scope="module")
def data(mongo_server):
    db = mongo_server.db()
    db.mqtt_user.insert_many([
        {"username": "alice", "password": sha256("alice-pw"), "is_superuser": False},
        {"username": "root", "password": sha256("root-pw"), "is_superuser": True},
        {"username": "salty", "password": sha256("pw" + "NaCl"), "salt": "NaCl"},
    ])
    db.mqtt_acl.insert_many([
        {"username": "alice", "publish": ["out/%c"], "subscribe": ["in/#"], "pubsub": ["alice/+"]},
        {"username": "$all", "subscribe": ["public/#"]},
    ])
    return mongo_server


def test_password_superuser_and_acl_documents(broker_factory, data):
    s = settings(data, **{"acl_query.selector.1": "username=$all"})
    s["acl_nomatch"] = "deny"
    b = start_with_plugin(broker_factory, s, acl_text="")
    for v in (5, 4):
        assert connack(b.port, "alice", "alice-pw", v) == OK
        assert connack(b.port, "alice", "wrong", v) == BAD_PASSWORD[v]
        assert connack(b.port, "nobody", "x", v) == NOT_AUTHORIZED[v]
    c = Paho(b.port, "alice", "alice-pw", client_id="dev-1")
    try:
        assert c.subscribe("in/x/y") == 1
        assert c.subscribe("public/news") == 1  # from the username=$all selector
        assert c.subscribe("alice/+") == 1
        assert c.subscribe("out/dev-1") == 0x87  # publish only
        assert c.publish("out/dev-2", b"m") == 0x87  # %c: its own id only
        assert c.publish("alice/x", b"hi") == 0
        assert c.wait_message() == [("alice/x", b"hi")]
    finally:
        c.close()
    su = Paho(b.port, "root", "root-pw", protocol=V311)
    try:
        assert su.subscribe("anything/#") == 1
    finally:
        su.close()


@pytest.mark.parametrize("username", ['{"$ne": ""}', '{"$gt": ""}', "' OR '1'='1", "*)(uid=*", ".*"])
def test_operator_injection_never_authenticates(broker_factory, data, username):
    """The selector's values are BSON strings: an operator document written as a username
    is only a name nobody has."""
    b = start_with_plugin(broker_factory, settings(data))
    assert connack(b.port, "alice", "alice-pw") == OK
    assert connack(b.port, username, "alice-pw") == NOT_AUTHORIZED[5]


def test_salt_field_and_load_unload(broker_factory, data):
    s = settings(data, **{"auth_query.password_field": "password,salt",
                          "auth_query.password_hash": "sha256,salt"})
    b = broker_factory(start=False)
    b.overrides.update(s)
    b.start()
    assert wait_until(lambda: b.ctl("ping").returncode == 0, 10)
    assert connack(b.port, "salty", "pw") == NOT_AUTHORIZED[5]
    assert b.ctl("plugins", "load", PLUGIN).returncode == 0
    assert connack(b.port, "salty", "pw") == OK
    assert connack(b.port, "salty", "NaClpw") == BAD_PASSWORD[5]
    assert b.ctl("plugins", "unload", PLUGIN).returncode == 0
    assert connack(b.port, "salty", "pw") == NOT_AUTHORIZED[5]


def test_mongo_down_is_passed_over_or_refused_per_on_error(broker_factory, data):
    s = settings(data, server=f"{HOST}:{free_port()}", query_timeout="1s")
    s["allow_anonymous"] = "true"
    b = start_with_plugin(broker_factory, s)
    started = time.monotonic()
    for _ in range(3):
        assert connack(b.port, "alice", "wrong") == OK
    assert time.monotonic() - started < 10
    assert 1 <= b.log_tail().count("authentication backend failed") <= 2
    b.stop()
    b.overrides["auth.mongo.on_error"] = "deny"
    b.start()
    assert connack(b.port, "alice", "alice-pw", 5) == SERVER_UNAVAILABLE[5]
    assert connack(b.port, "alice", "alice-pw", 4) == SERVER_UNAVAILABLE[4]
