"""The file ACL (`acl_file`), `acl_nomatch`, `acl_deny_action`, `allow_anonymous` and
`emqx_ctl acl reload`, with real clients against the real binary.

Clients connect from other loopback addresses (127.0.0.x) to be "remote" to the shipped
rules, which let only 127.0.0.1 see `$SYS/#` and subscribe to `#`."""

import subprocess
import time

from conftest import CONFIG, REPO
from helpers import V5, V311, Client, unique_id
from rawmqtt import DISCONNECT, PUBACK, PUBLISH, RawClient, connect, parse_disconnect, publish

REMOTE = "127.0.0.7"


def write_acl(broker, text):
    path = broker.root / "acl.conf"
    path.write_text(text)
    return path


def acl_broker(broker_factory, text, **overrides):
    b = broker_factory(start=False)
    b.overrides["acl_file"] = write_acl(b, text)
    b.overrides.update(overrides)
    return b.start()


def raw(broker, version=5, source=None, client_id=None, **kwargs):
    c = RawClient(broker.port, version=version, source=source)
    ack = c.connect(client_id or unique_id("acl"), **kwargs)
    assert ack["rc"] == 0, ack
    return c


def test_shipped_rules_keep_sys_and_hash_to_localhost(broker):
    local = raw(broker)
    assert local.subscribe(1, [("$SYS/#", 0), ("#", 0)]) == [0, 0]
    remote = raw(broker, source=REMOTE)
    # v5: 0x87 Not authorized for the denied filters; the rest is granted.
    assert remote.subscribe(1, [("$SYS/#", 0), ("#", 0), ("a/#", 1)]) == [0x87, 0x87, 1]
    remote3 = raw(broker, version=4, source=REMOTE)
    assert remote3.subscribe(1, [("$SYS/brokers/+/uptime", 0), ("a/b", 0)]) == [0x80, 0]
    # The dashboard user may subscribe to $SYS from anywhere.
    dash = raw(broker, source=REMOTE, username="dashboard")
    assert dash.subscribe(1, [("$SYS/#", 0)]) == [0]
    # Everything else is allowed: a remote publish reaches a remote subscriber.
    remote.send(publish("a/x", b"hello", qos=1, pid=5, version=5))
    seen = {p.type: p for p in (remote.recv(), remote.recv())}
    ack = seen[PUBACK]
    assert ack.body[:2] == b"\x00\x05" and (len(ack.body) == 2 or ack.body[2] == 0)
    assert seen[PUBLISH].body.endswith(b"hello")


def test_rules_with_placeholders_decide_publish_and_subscribe(broker_factory):
    b = acl_broker(
        broker_factory,
        """
        %% Each device publishes under its own id and reads its own commands.
        {allow, all, publish, ["up/%c/#"]}.
        {allow, {user, "ops"}, subscribe, ["up/#"]}.
        {allow, all, subscribe, ["down/%c/+"]}.
        {deny, all}.
        """,
    )
    ops = Client(b.port, protocol=V5, username="ops")
    ops.connect()
    assert ops.subscribe("up/#", qos=1) == [1]
    dev = Client(b.port, client_id="dev1", protocol=V5)
    dev.connect()
    assert dev.subscribe("down/dev1/cmd", qos=1) == [1]
    # Another device's commands, and a filter wider than the rule: refused.
    assert dev.subscribe("down/dev2/cmd", qos=1) == [0x87]
    assert dev.subscribe("down/dev1/#", qos=1) == [0x87]
    dev.publish("up/dev1/temp", b"21", qos=1)
    # Publishing under another id: PUBACK 0x87, nothing delivered.
    raw_dev = raw(b, client_id="dev2")
    raw_dev.send(publish("up/dev1/temp", b"forged", qos=1, pid=9, version=5))
    ack = raw_dev.recv_type(PUBACK)
    assert ack.body[2] == 0x87, ack
    got = ops.wait_messages(1)
    assert [m.payload for m in got] == [b"21"]
    time.sleep(0.5)
    assert [m.payload for m in ops.messages] == [b"21"], "a denied publish was delivered"
    for c in (ops, dev):
        c.disconnect()


def test_acl_nomatch_deny_refuses_what_no_rule_allows(broker_factory):
    b = acl_broker(
        broker_factory,
        '{allow, all, pubsub, ["open/#"]}.\n',
        acl_nomatch="deny",
    )
    c = raw(b, version=4)
    assert c.subscribe(1, [("open/a", 1), ("closed/a", 1)]) == [1, 0x80]


def test_acl_nomatch_deny_with_an_empty_file_refuses_everything(broker_factory):
    b = acl_broker(broker_factory, "%% no rules\n", acl_nomatch="deny")
    c = raw(b)
    assert c.subscribe(1, [("a", 0)]) == [0x87]


def test_deny_action_disconnect_closes_the_connection(broker_factory):
    b = acl_broker(
        broker_factory,
        '{deny, all, publish, ["secret/#"]}.\n{allow, all}.\n',
        acl_deny_action="disconnect",
    )
    c = raw(b)
    c.send(publish("open", b"x", qos=1, pid=1, version=5))
    assert c.recv_type(PUBACK).body[:2] == b"\x00\x01"
    c.send(publish("secret/x", b"x", qos=1, pid=2, version=5))
    _, seen = c.wait_closed()
    assert [p.type for p in seen] == [DISCONNECT], seen
    assert parse_disconnect(seen[0]) == 0x87
    # A v3.1.1 client is just closed; others are unaffected.
    c3 = raw(b, version=4)
    c3.send(publish("secret/y", b"x", qos=0, version=4))
    c3.wait_closed()
    other = raw(b)
    assert other.subscribe(1, [("open", 0)]) == [0]


def test_a_syntax_error_stops_the_start_with_file_line_and_column(broker_factory):
    b = broker_factory(start=False)
    path = write_acl(b, '{allow, all}.\n{allow, {user, "a"}, pubsub ["t"]}.\n')
    b.overrides["acl_file"] = path
    proc = subprocess.run(
        [b.emqx, "--config", str(CONFIG), "foreground"],
        env=b.env(),
        cwd=str(REPO),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"{path}:2:29: expected `,` or `}}`" in out, out


def test_reload_applies_new_rules_and_keeps_old_ones_on_error(broker_factory):
    b = acl_broker(broker_factory, '{deny, all, subscribe, ["t/1"]}.\n')
    path = b.root / "acl.conf"
    c = raw(b)
    assert c.subscribe(1, [("t/1", 0), ("t/2", 0)]) == [0x87, 0]
    path.write_text('{deny, all, subscribe, ["t/2"]}.\n')
    out = b.ctl("acl", "reload")
    assert out.returncode == 0 and "Reload acl_internal successfully" in out.stdout, out
    assert c.subscribe(2, [("t/1", 0), ("t/2", 0)]) == [0, 0x87]
    path.write_text('{deny, all, subscribe, ["t/3"]\n')
    out = b.ctl("acl", "reload")
    assert out.returncode != 0
    assert f"{path}:2:1:" in out.stdout + out.stderr, out
    # The rules of the last good load still decide.
    assert c.subscribe(3, [("t/2", 0), ("t/3", 0)]) == [0x87, 0]


def test_allow_anonymous_false_refuses_clients_without_a_backend(broker_factory):
    b = broker_factory({"allow_anonymous": "false"})
    c5 = RawClient(b.port, version=5)
    assert c5.connect(unique_id("anon"))["rc"] == 0x87
    c3 = RawClient(b.port, version=4)
    assert c3.connect(unique_id("anon"))["rc"] == 5
    paho = Client(b.port, protocol=V311)
    rc = paho.connect(expect_success=False)[0]
    assert rc.is_failure
    paho.stop()


def test_acl_cache_clean_commands(broker_factory):
    """`acl cache-clean` for all clients, this node, one client; a client that is not
    connected is Not Found, another node's name is refused. (That a cleared cache is
    asked again is covered in Rust: connection::hook_tests; that `acl reload` clears
    every cache, by the reload test above.)"""
    b = acl_broker(broker_factory, '{deny, all, subscribe, ["t/1"]}.\n')
    cid = unique_id("cached")
    c = raw(b, client_id=cid)
    assert c.subscribe(1, [("t/1", 0)]) == [0x87]
    cases = [
        (("acl", "cache-clean"), 0, "ACL cache cleaned on all clients.\n"),
        (("acl", "cache-clean", "all"), 0, "ACL cache cleaned on all clients.\n"),
        (("acl", "cache-clean", "node", "emqx@127.0.0.1"), 0, "ACL cache cleaned on node emqx@127.0.0.1.\n"),
        (("acl", "cache-clean", "node", "other@host"), 1, "ACL cache-clean failed on node other@host: not this node.\n"),
        (("acl", "cache-clean", cid), 0, f"ACL cache cleaned for {cid}.\n"),
        (("acl", "cache-clean", "nobody-here"), 1, "Not Found.\n"),
    ]
    for args, code, text in cases:
        out = b.ctl(*args)
        assert (out.returncode, out.stdout) == (code, text), (args, out)
    # The client was woken by its clean and still works, rules unchanged.
    assert c.subscribe(2, [("t/1", 0), ("t/2", 0)]) == [0x87, 0]
