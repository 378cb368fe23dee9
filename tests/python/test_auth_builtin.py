"""emqx_auth_username and emqx_auth_clientid against the real binary: entries managed
with `emqx_ctl users|clientid`, preloaded from the plugin settings, durable across a
crash, and checked in the chain's load order. Exact CONNACK codes come from raw packets
(v3 rc 4 / v5 0x86 for a wrong password); paho clients connect where a real client's
view is what matters."""

from helpers import V5, Client, unique_id
from rawmqtt import RawClient

BAD_PASSWORD_V5, BAD_PASSWORD_V3 = 0x86, 4
NOT_AUTHORIZED_V5, NOT_AUTHORIZED_V3 = 0x87, 5


def connack(broker, client_id=None, username=None, password=None, version=5):
    """The CONNACK return/reason code a raw client gets."""
    with RawClient(broker.port, version=version) as c:
        return c.connect(client_id or unique_id("auth"), username=username, password=password)["rc"]


def ctl(broker, *args):
    r = broker.ctl(*args)
    return r.stdout


def load(broker, plugin):
    assert ctl(broker, "plugins", "load", plugin) == f"Plugin {plugin} loaded successfully.\n"


def test_users_commands_print_emqx_words_and_decide_connects(broker):
    assert "Unknown command: users list" in ctl(broker, "users", "list")
    load(broker, "emqx_auth_username")
    assert ctl(broker, "users", "list") == ""
    assert ctl(broker, "users", "add", "alice", "s3cret") == "ok\n"
    r = broker.ctl("users", "add", "alice", "other")
    assert (r.stdout, r.returncode) == ("{error,existed}\n", 1)
    assert ctl(broker, "users", "update", "bob", "x") == "{error,noexisted}\n"
    assert ctl(broker, "users", "add", "bob", "pw") == "ok\n"
    assert ctl(broker, "users", "list") == "alice\nbob\n"
    assert "users add <Username> <Password>" in ctl(broker, "users", "add", "only-name")

    assert connack(broker, username="alice", password="s3cret") == 0
    assert connack(broker, username="alice", password="S3cret") == BAD_PASSWORD_V5
    assert connack(broker, username="alice", password="S3cret", version=4) == BAD_PASSWORD_V3
    assert connack(broker, username="alice", password="S3cret", version=3) == BAD_PASSWORD_V3
    # No password, or an empty one, is a wrong password for an entry that has one.
    assert connack(broker, username="alice") == BAD_PASSWORD_V5
    assert connack(broker, username="alice", password="") == BAD_PASSWORD_V5
    # Unknown names are not this plugin's: allow_anonymous (true) decides.
    assert connack(broker, username="carol", password="x") == 0
    assert connack(broker) == 0

    # A real client sees the same.
    good = Client(broker.port, protocol=V5, username="bob", password="pw")
    assert good.connect()[0] == 0
    good.disconnect()
    bad = Client(broker.port, protocol=V5, username="bob", password="nope")
    assert bad.connect(expect_success=False)[0] == BAD_PASSWORD_V5
    bad.stop()

    assert ctl(broker, "users", "update", "alice", "new") == "ok\n"
    assert connack(broker, username="alice", password="s3cret") == BAD_PASSWORD_V5
    assert connack(broker, username="alice", password="new") == 0
    assert ctl(broker, "users", "del", "alice") == "ok\n"
    assert ctl(broker, "users", "del", "alice") == "ok\n"  # as EMQX 4: absent is fine
    assert ctl(broker, "users", "list") == "bob\n"
    assert connack(broker, username="alice", password="anything") == 0  # ignored now

    # Unloaded: the hook and the command go; the entries stay on disk.
    assert ctl(broker, "plugins", "unload", "emqx_auth_username").endswith("successfully.\n")
    assert connack(broker, username="bob", password="wrong") == 0
    assert "Unknown command: users list" in ctl(broker, "users", "list")
    load(broker, "emqx_auth_username")
    assert connack(broker, username="bob", password="wrong") == BAD_PASSWORD_V5


def test_an_acknowledged_add_survives_a_crash_and_the_plugin_restarts_at_boot(broker):
    load(broker, "emqx_auth_clientid")
    for i in range(20):
        assert ctl(broker, "clientid", "add", f"dev-{i}", f"pw-{i}") == "ok\n"
    assert ctl(broker, "clientid", "del", "dev-3") == "ok\n"
    broker.restart(crash=True)
    assert ctl(broker, "clientid", "list") == "".join(
        f"dev-{i}\n" for i in sorted(set(range(20)) - {3}, key=str)
    )
    assert connack(broker, client_id="dev-7", password="pw-7") == 0
    assert connack(broker, client_id="dev-7", password="pw-8") == BAD_PASSWORD_V5
    assert connack(broker, client_id="dev-3", password="pw-3") == 0  # deleted: ignored


def test_preloaded_entries_from_settings_and_a_prewritten_loaded_plugins_file(broker_factory):
    b = broker_factory(
        start=False,
        overrides={
            "auth.user.1.username": "admin",
            "auth.user.1.password": "public",
            "auth.user.2.username": "guest",
            "auth.user.2.password": "guest",
            "auth.user.password_hash": "bcrypt",
            "allow_anonymous": "false",
        },
    )
    b.data_dir.mkdir(parents=True)
    (b.data_dir / "loaded_plugins").write_text("{emqx_auth_username, true}.\n")
    b.start()
    assert ctl(b, "users", "list") == "admin\nguest\n"
    assert connack(b, username="admin", password="public") == 0
    assert connack(b, username="admin", password="guest") == BAD_PASSWORD_V5
    assert connack(b, username="nobody", password="x") == NOT_AUTHORIZED_V5
    assert connack(b, username="nobody", password="x", version=4) == NOT_AUTHORIZED_V3
    # A stored entry wins over the setting at the next start, as in EMQX 4.
    assert ctl(b, "users", "update", "admin", "changed") == "ok\n"
    b.restart()
    assert connack(b, username="admin", password="public") == BAD_PASSWORD_V5
    assert connack(b, username="admin", password="changed") == 0
    # A deleted preloaded entry comes back from the settings at the next start.
    assert ctl(b, "users", "del", "guest") == "ok\n"
    b.restart()
    assert connack(b, username="guest", password="guest") == 0


def test_injection_shaped_names_match_only_themselves(broker_factory):
    b = broker_factory(overrides={"allow_anonymous": "false"})
    load(b, "emqx_auth_username")
    names = ["' OR '1'='1", "*)(uid=*", "*", "a b", "ünï", "%u", "admin\\"]
    for i, name in enumerate(names):
        assert ctl(b, "users", "add", name, f"pw{i}") == "ok\n", name
    for i, name in enumerate(names):
        assert connack(b, username=name, password=f"pw{i}") == 0, name
        assert connack(b, username=name, password=f"pw{(i + 1) % len(names)}") == BAD_PASSWORD_V5
    # Wildcard- and SQL-shaped names are plain strings: other names are not found.
    for other in ["admin", "x", "' OR '1'='2", ""]:
        assert connack(b, username=other, password="pw0") == NOT_AUTHORIZED_V5, other


def test_a_username_that_is_someone_elses_client_id_does_not_pass(broker_factory):
    b = broker_factory(overrides={"allow_anonymous": "false"})
    load(b, "emqx_auth_clientid")
    load(b, "emqx_auth_username")
    assert ctl(b, "clientid", "add", "dev1", "devpw") == "ok\n"
    assert ctl(b, "users", "add", "alice", "userpw") == "ok\n"
    # dev1's password under the username dev1, from another client id: neither table
    # has it, so nobody decides and anonymous access is off.
    assert connack(b, client_id="other", username="dev1", password="devpw") == NOT_AUTHORIZED_V5
    # alice's password with the client id alice: not a client id entry.
    assert connack(b, client_id="alice", password="userpw") == NOT_AUTHORIZED_V5
    assert connack(b, client_id="dev1", password="devpw") == 0
    assert connack(b, client_id="x", username="alice", password="userpw") == 0


def test_the_plugin_loaded_first_checks_first(broker):
    load(broker, "emqx_auth_clientid")
    load(broker, "emqx_auth_username")
    assert ctl(broker, "clientid", "add", "c1", "client-pw") == "ok\n"
    assert ctl(broker, "users", "add", "u1", "user-pw") == "ok\n"
    # Both have an entry: the clientid plugin, loaded first, decides.
    assert connack(broker, client_id="c1", username="u1", password="user-pw") == BAD_PASSWORD_V5
    assert connack(broker, client_id="c1", username="u1", password="client-pw") == 0
    # Reload order: username first now (unload + load puts it last, so unload clientid).
    ctl(broker, "plugins", "unload", "emqx_auth_clientid")
    load(broker, "emqx_auth_clientid")
    assert connack(broker, client_id="c1", username="u1", password="user-pw") == 0
    assert connack(broker, client_id="c1", username="u1", password="client-pw") == BAD_PASSWORD_V5
    # The order is kept in data/loaded_plugins and holds after a restart.
    broker.restart()
    assert connack(broker, client_id="c1", username="u1", password="user-pw") == 0


def test_a_bad_setting_refuses_the_load_with_its_origin(broker_factory):
    b = broker_factory(overrides={"auth.client.password_hash": "rot13"})
    out = ctl(b, "plugins", "load", "emqx_auth_clientid")
    assert out.startswith("Load plugin emqx_auth_clientid error: "), out
    assert "auth.client.password_hash: expected plain" in out, out
    assert "Unknown command" in ctl(b, "clientid", "list")
    assert connack(b) == 0
