"""`$SYS/brokers/...` (src/sys/): every topic of the guide's tables, the client events'
JSON, `emqx_ctl broker [stats|metrics]` showing the same figures, and clients kept out
of `$SYS` (no publishing into it; the shipped ACL keeps remote subscribers out)."""

import json
import time

from helpers import V5, V311, Client, connected, unique_id, wait_until
from rawmqtt import PUBACK, RawClient, publish

NODE = "emqx@127.0.0.1"
FAST = {"broker.sys_interval": "1s", "broker.sys_heartbeat": "1s"}

# The guide's tables ("$SYS - System topic"), below $SYS/brokers/${node}/.
BROKER_TOPICS = ["version", "uptime", "datetime", "sysdescr"]
STATS = [
    "connections/count", "connections/max",
    "sessions/count", "sessions/max",
    "sessions/persistent/count", "sessions/persistent/max",
    "suboptions/count", "suboptions/max",
    "subscribers/max", "subscribers/count",
    "subscriptions/max", "subscriptions/count",
    "subscriptions/shared/count", "subscriptions/shared/max",
    "topics/count", "topics/max",
    "routes/count", "routes/max",
    "retained/count", "retained/max",
]
METRICS = [
    "bytes/received", "bytes/sent",
    "packets/received", "packets/sent",
    "packets/connect", "packets/connack",
    "packets/publish/received", "packets/publish/sent",
    "packets/puback/received", "packets/puback/sent", "packets/puback/missed",
    "packets/pubrec/received", "packets/pubrec/sent", "packets/pubrec/missed",
    "packets/pubrel/received", "packets/pubrel/sent", "packets/pubrel/missed",
    "packets/pubcomp/received", "packets/pubcomp/sent", "packets/pubcomp/missed",
    "packets/subscribe", "packets/suback",
    "packets/unsubscribe", "packets/unsuback",
    "packets/pingreq", "packets/pingresp",
    "packets/disconnect/received", "packets/disconnect/sent",
    "packets/auth",
    "messages/received", "messages/sent", "messages/expired", "messages/retained",
    "messages/dropped", "messages/forward",
    "messages/qos0/received", "messages/qos0/sent",
    "messages/qos1/received", "messages/qos1/sent",
    "messages/qos2/received", "messages/qos2/sent",
    "messages/qos2/expired", "messages/qos2/dropped",
]


def sys_topic(suffix):
    return f"$SYS/brokers/{NODE}/{suffix}"


def latest(client):
    """{topic: payload} of the newest message on each topic."""
    with client._cond:
        return {m.topic: m.payload for m in client.messages}


def test_a_local_subscriber_sees_every_topic_of_the_guide(broker_factory):
    broker = broker_factory(FAST)
    sub = connected(broker.port, protocol=V5)
    sub.subscribe("$SYS/#", qos=0)
    want = (
        ["$SYS/brokers"]
        + [sys_topic(t) for t in BROKER_TOPICS]
        + [sys_topic("stats/" + t) for t in STATS]
        + [sys_topic("metrics/" + t) for t in METRICS]
    )
    assert wait_until(lambda: set(want) <= set(latest(sub)), timeout_s=10), sorted(
        set(want) - set(latest(sub))
    )
    seen = latest(sub)
    assert seen["$SYS/brokers"] == NODE.encode()
    assert seen[sys_topic("version")] == b"0.1.0"
    assert seen[sys_topic("uptime")].endswith(b"seconds")
    time.strptime(seen[sys_topic("datetime")].decode(), "%Y-%m-%d %H:%M:%S")
    # version and sysdescr are retained: a later subscriber gets them at once.
    late = connected(broker.port)
    late.subscribe(sys_topic("+"), qos=0)
    late.wait_messages(2)
    retained = {m.topic for m in late.messages if m.retain}
    assert {sys_topic("version"), sys_topic("sysdescr")} <= retained
    # Every payload is a number; this subscriber itself is counted.
    for t in STATS + METRICS:
        int(seen[sys_topic(("stats/" if t in STATS else "metrics/") + t)])
    assert wait_until(lambda: int(latest(sub).get(sys_topic("stats/connections/count"), b"0")) == 2)
    assert int(latest(sub)[sys_topic("stats/subscriptions/count")]) == 2
    # `#` never matches $SYS topics.
    hash_sub = connected(broker.port)
    hash_sub.subscribe("#", qos=0)
    time.sleep(2.5)
    assert not [m.topic for m in hash_sub.messages if m.topic.startswith("$")]
    for c in (sub, late, hash_sub):
        c.disconnect()


def test_counters_move_with_traffic_and_match_emqx_ctl(broker_factory):
    broker = broker_factory(FAST)
    sub = connected(broker.port, protocol=V5)
    sub.subscribe("$SYS/brokers/+/metrics/#", qos=0)
    pub = connected(broker.port)
    for qos in (0, 1, 2):
        pub.publish(f"t/{qos}", b"x", qos=qos)
    pub.disconnect()

    def metric(name):
        return int(latest(sub).get(sys_topic("metrics/" + name), b"-1"))

    assert wait_until(
        lambda: all(metric(f"messages/qos{q}/received") >= 1 for q in (0, 1, 2))
        and metric("packets/pubrel/received") >= 1
        and metric("packets/disconnect/received") >= 1,
        timeout_s=5,
    ), latest(sub)
    assert metric("packets/puback/sent") >= 1 and metric("packets/pubrec/sent") >= 1
    assert metric("packets/pubcomp/sent") >= 1 and metric("packets/connect") >= 2
    # `broker metrics` prints the same names and (once traffic stops) the same values.
    out = broker.ctl("broker", "metrics").stdout
    ctl = {k.strip(): int(v) for k, _, v in (l.partition(":") for l in out.splitlines())}
    for name in METRICS:
        assert name in ctl, name
    assert ctl["messages/qos1/received"] == metric("messages/qos1/received")
    stats = broker.ctl("broker", "stats").stdout
    names = {l.partition(":")[0].strip() for l in stats.splitlines()}
    assert {t.replace("/", ".") for t in STATS} <= names
    info = broker.ctl("broker").stdout
    assert "sysdescr" in info and "uptime" in info and "datetime" in info
    sub.disconnect()


def test_client_events_carry_every_field(broker_factory):
    broker = broker_factory(FAST)
    sub = connected(broker.port)
    sub.subscribe(sys_topic("clients/#"), qos=0)
    cid = unique_id("ev")
    c = Client(broker.port, client_id=cid, protocol=V5, keepalive=25, username="alice")
    c.connect()
    c.disconnect()
    kicked = connected(broker.port, client_id=cid + "k")
    assert broker.ctl("clients", "kick", cid + "k").returncode == 0
    kicked.wait_disconnect()
    msgs = sub.wait_messages(4)
    by_topic = {m.topic: json.loads(m.payload) for m in msgs}
    conn = by_topic[sys_topic(f"clients/{cid}/connected")]
    assert set(conn) == {
        "clientid", "username", "ipaddress", "connack", "ts",
        "proto_ver", "proto_name", "clean_start", "keepalive",
    }
    assert conn["clientid"] == cid and conn["username"] == "alice"
    assert conn["ipaddress"] == "127.0.0.1" and conn["connack"] == 0
    assert conn["proto_ver"] == 5 and conn["proto_name"] == "MQTT"
    assert conn["keepalive"] == 25 and conn["clean_start"] is True
    assert abs(conn["ts"] / 1000 - time.time()) < 60
    gone = by_topic[sys_topic(f"clients/{cid}/disconnected")]
    assert set(gone) == {"clientid", "username", "reason", "ts"}
    assert gone["reason"] == "normal" and gone["username"] == "alice"
    assert by_topic[sys_topic(f"clients/{cid}k/disconnected")]["reason"] == "kicked"
    assert by_topic[sys_topic(f"clients/{cid}k/connected")]["proto_ver"] == 4
    sub.disconnect()


def test_takeover_and_a_closed_socket_are_reported(broker_factory):
    broker = broker_factory(FAST)
    sub = connected(broker.port)
    sub.subscribe(sys_topic("clients/+/disconnected"), qos=0)
    cid = unique_id("tk")
    first = connected(broker.port, client_id=cid, clean=False)
    second = connected(broker.port, client_id=cid, clean=False)
    raw = RawClient(broker.port)
    assert raw.connect(cid + "raw")["rc"] == 0
    raw.sock.close()
    msgs = sub.wait_messages(2)
    reasons = {m.topic.split("/")[-2]: json.loads(m.payload)["reason"] for m in msgs}
    assert reasons[cid] == "takeovered"
    assert reasons[cid + "raw"] == "closed"
    for c in (first, second, sub):
        c.stop()


def test_clients_cannot_publish_into_sys(broker_factory):
    broker = broker_factory(FAST)
    sub = connected(broker.port)
    sub.subscribe("$SYS/brokers/+/fake/#", qos=0)
    raw = RawClient(broker.port, version=5)
    assert raw.connect(unique_id("sp"))["rc"] == 0
    raw.send(publish(f"$SYS/brokers/{NODE}/fake/x", b"no", qos=1, pid=3, version=5))
    ack = raw.recv_type(PUBACK)
    assert ack.body[:2] == b"\x00\x03" and ack.body[2] == 0x87, ack.body
    v3 = connected(broker.port)
    v3.publish(f"$SYS/brokers/{NODE}/fake/y", b"no", qos=1)
    time.sleep(0.5)
    assert sub.messages == []
    out = broker.ctl("broker", "metrics").stdout
    assert "messages/dropped/sys_topic" in out
    line = [l for l in out.splitlines() if l.startswith("messages/dropped/sys_topic")][0]
    assert int(line.partition(":")[2]) == 2
    assert "PUBLISH to a $SYS topic; dropped" in broker.log_tail()
    for c in (sub, v3):
        c.disconnect()


def test_a_will_cannot_publish_into_sys(broker):
    will = {"topic": f"$SYS/brokers/{NODE}/fake", "payload": b"x"}
    assert RawClient(broker.port, version=5).connect(unique_id("w5"), will=will)["rc"] == 0x87
    assert RawClient(broker.port, version=4).connect(unique_id("w4"), will=will)["rc"] == 5


def test_the_shipped_acl_keeps_sys_to_localhost(broker_factory):
    broker = broker_factory(FAST)
    remote = RawClient(broker.port, version=5, source="127.0.0.2")
    assert remote.connect(unique_id("remote"))["rc"] == 0
    assert remote.subscribe(1, [("$SYS/#", 0)]) == [0x87]
    local = RawClient(broker.port, version=5)
    assert local.connect(unique_id("local"))["rc"] == 0
    assert local.subscribe(1, [("$SYS/#", 0)]) == [0]
