"""emqx_auth_redis against a real redis-server (tests/python/dbservers.py): EMQX 4's
default commands and layout (`mqtt_user:<name>` hashes, `mqtt_acl:<name>` hashes),
superusers, ACL, load/unload with emqx_ctl and from data/loaded_plugins, and a Redis that
is down or never answers."""

import hashlib
import socket
import threading
import time

import pytest

from authclient import BAD_PASSWORD, NOT_AUTHORIZED, OK, PUBLISHED, SERVER_UNAVAILABLE, Paho, connack
from conftest import HOST, free_port
from dbservers import Redis, redis_server  # noqa: F401 (fixture)
from helpers import V311, unique_id, wait_until

PLUGIN = "emqx_auth_redis"


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


def add_user(redis, name, password, superuser=False):
    redis.cli("hset", f"mqtt_user:{name}", "password", sha256(password),
              "is_superuser", "1" if superuser else "0")


def redis_settings(redis, **extra):
    s = {
        "allow_anonymous": "false",
        "auth.redis.server": f"{HOST}:{redis.port}",
        "auth.redis.password": redis.password,
        "auth.redis.password_hash": "sha256",
    }
    s.update(extra)
    return s


def start_with_plugin(broker_factory, settings, acl_text=None):
    """A broker whose data/loaded_plugins already lists the plugin (a restart's view)."""
    b = broker_factory(start=False)
    b.overrides.update(settings)
    if acl_text is not None:
        acl = b.root / "acl.conf"
        acl.write_text(acl_text)
        b.overrides["acl_file"] = str(acl)
    b.data_dir.mkdir(parents=True, exist_ok=True)
    (b.data_dir / "loaded_plugins").write_text(f"{{{PLUGIN}, true}}.\n")
    return b.start()


@pytest.fixture(scope="module")
def users(redis_server):
    add_user(redis_server, "alice", "alice-pw")
    add_user(redis_server, "root", "root-pw", superuser=True)
    # The injection targets: a user `a` whose password a spliced command would compare.
    add_user(redis_server, "a", "password")
    redis_server.cli("hset", "mqtt_acl:alice", "alice/#", "3", "in/+", "1", "out/%c", "2")
    return redis_server


def test_password_superuser_and_acl_from_redis(broker_factory, users):
    # No file rules and acl_nomatch = deny: only what Redis grants is allowed.
    b = start_with_plugin(broker_factory, redis_settings(users, acl_nomatch="deny"), acl_text="")
    for v in (5, 4):
        assert connack(b.port, "alice", "alice-pw", v) == OK
        assert connack(b.port, "alice", "wrong", v) == BAD_PASSWORD[v]
        assert connack(b.port, "alice", None, v) == BAD_PASSWORD[v]
        # Not in Redis: ignored, then allow_anonymous = false refuses.
        assert connack(b.port, "nobody", "x", v) == NOT_AUTHORIZED[v]

    alice = Paho(b.port, "alice", "alice-pw", client_id="dev-1")
    try:
        assert alice.subscribe("alice/+") == 1
        assert alice.subscribe("in/y") == 1
        assert alice.subscribe("other/x") == 0x87
        assert alice.subscribe("out/dev-1") == 0x87  # publish only
        assert alice.publish("out/dev-1", b"m") in PUBLISHED
        assert alice.publish("out/dev-2", b"m") == 0x87  # %c is the client's own id
        assert alice.publish("in/y", b"m") == 0x87  # subscribe only
        assert alice.publish("alice/t", b"hello") == 0  # alice/x is subscribed
        assert alice.wait_message() == [("alice/t", b"hello")]
    finally:
        alice.close()

    root = Paho(b.port, "root", "root-pw", protocol=V311)
    try:
        # A superuser skips the ACL: v3.1.1 SUBACK grants what no rule allows.
        assert root.subscribe("anything/#") == 1
    finally:
        root.close()


@pytest.mark.parametrize("username", ["a password", "a b", "a\tpassword", "' OR '1'='1", "*)(uid=*"])
def test_usernames_cannot_change_the_command(broker_factory, users, username):
    """The command is split into words before substitution: `a password` is one argument,
    the key `mqtt_user:a password`, which does not exist. Spliced into the text, it would
    read `HMGET mqtt_user:a password password` and log in with user a's password."""
    b = start_with_plugin(broker_factory, redis_settings(users))
    assert connack(b.port, "a", "password") == OK
    assert connack(b.port, username, "password") == NOT_AUTHORIZED[5]
    assert connack(b.port, username, "password", 4) == NOT_AUTHORIZED[4]


def test_load_and_unload_with_emqx_ctl(broker_factory, users):
    b = broker_factory(start=False)
    b.overrides.update(redis_settings(users))
    b.start()
    assert wait_until(lambda: b.ctl("ping").returncode == 0, 10)
    assert connack(b.port, "alice", "alice-pw") == NOT_AUTHORIZED[5]  # no backend yet
    r = b.ctl("plugins", "load", PLUGIN)
    assert r.returncode == 0 and "loaded successfully" in r.stdout, r.stdout + r.stderr
    assert f"{{{PLUGIN}, true}}." in (b.data_dir / "loaded_plugins").read_text()
    assert connack(b.port, "alice", "alice-pw") == OK
    assert connack(b.port, "alice", "nope") == BAD_PASSWORD[5]
    listed = b.ctl("plugins", "list").stdout
    assert f"Plugin({PLUGIN}, " in listed and "active=true" in listed
    # Survives a restart: the node starts it from data/loaded_plugins.
    b.restart()
    assert connack(b.port, "alice", "alice-pw") == OK
    assert wait_until(lambda: b.ctl("ping").returncode == 0, 10)
    r = b.ctl("plugins", "unload", PLUGIN)
    assert r.returncode == 0, r.stdout + r.stderr
    assert connack(b.port, "alice", "alice-pw") == NOT_AUTHORIZED[5]


def test_a_bad_setting_names_file_line_and_stops_the_load(broker_factory, users):
    b = broker_factory(start=False)
    b.overrides.update(redis_settings(users, **{"auth.redis.pool": "many"}))
    b.start()
    assert wait_until(lambda: b.ctl("ping").returncode == 0, 10)
    r = b.ctl("plugins", "load", PLUGIN)
    assert r.returncode != 0
    assert "auth.redis.pool" in r.stdout and "EMQX_AUTH__REDIS__POOL" in r.stdout, r.stdout


def failures_logged(b):
    return b.log_tail().count("authentication backend failed")


def test_redis_down_at_start_then_up_then_down(broker_factory, users):
    """Down at start is not a start error; while down, clients are passed on (ignore) to
    allow_anonymous within the timeout and failures are logged once per interval; when
    Redis comes up the backend answers without a restart, and again after it stops."""
    own = Redis()
    try:
        settings = redis_settings(own, allow_anonymous="true", **{"auth.redis.query_timeout": "1s"})
        b = start_with_plugin(broker_factory, settings)
        started = time.monotonic()
        for _ in range(20):
            assert connack(b.port, "alice", "alice-pw") == OK  # anonymous: Redis is down
        assert time.monotonic() - started < 20
        assert 1 <= failures_logged(b) <= 2, b.log_tail()
        own.start()
        add_user(own, "alice", "alice-pw")
        # Now the backend decides: a wrong password is refused.
        assert wait_until(lambda: connack(b.port, "alice", "wrong") == BAD_PASSWORD[5], 10)
        assert "answers again" in b.log_tail()
        own.stop()
        assert connack(b.port, "alice", "wrong") == OK  # down again: ignored
    finally:
        own.cleanup()


def test_on_error_deny_refuses_with_server_unavailable(broker_factory, users):
    port = free_port()  # nothing listens
    settings = redis_settings(users, allow_anonymous="true", **{
        "auth.redis.server": f"{HOST}:{port}", "auth.redis.on_error": "deny",
        "auth.redis.query_timeout": "1s"})
    b = start_with_plugin(broker_factory, settings)
    assert connack(b.port, "alice", "alice-pw", 5) == SERVER_UNAVAILABLE[5]
    assert connack(b.port, "alice", "alice-pw", 4) == SERVER_UNAVAILABLE[4]


def test_a_redis_that_never_answers_times_out_and_others_are_served(broker_factory, users):
    """A peer that accepts and then says nothing: each check gives up after query_timeout
    and the client is passed on; meanwhile the broker serves other clients."""
    silent = socket.socket()
    silent.bind((HOST, 0))
    silent.listen(64)
    held = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        settings = redis_settings(users, allow_anonymous="true", **{
            "auth.redis.server": f"{HOST}:{silent.getsockname()[1]}",
            "auth.redis.query_timeout": "1s"})
        b = start_with_plugin(broker_factory, settings)
        results = []
        threads = [threading.Thread(target=lambda: results.append(connack(b.port, "u", "p", timeout_s=15)))
                   for _ in range(10)]
        started = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join(20)
        assert results == [OK] * 10
        assert time.monotonic() - started < 10
        assert failures_logged(b) <= 2
    finally:
        stop.set()
        t.join(5)
        for s in held:
            s.close()
        silent.close()


def test_salt_after_the_password(broker_factory, redis_server):
    name = unique_id("salty")
    redis_server.cli("hset", f"mqtt_user:{name}", "password", sha256("pw" + "NaCl"), "salt", "NaCl")
    settings = redis_settings(redis_server, **{
        "auth.redis.password_hash": "sha256,salt",
        "auth.redis.auth_cmd": "HMGET mqtt_user:%u password salt"})
    b = start_with_plugin(broker_factory, settings)
    assert connack(b.port, name, "pw") == OK
    assert connack(b.port, name, "NaClpw") == BAD_PASSWORD[5]
