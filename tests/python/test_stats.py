"""`emqx_ctl broker stats` reads gauges kept as sessions and subscriptions change: they must
equal what is there after subscribe/unsubscribe/resubscribe, session end, takeover,
clean-start reconnect, session expiry and restarts (graceful and kill -9), and agree with
what `clients list`, `sessions list` and `subscriptions list` show."""

from helpers import V5, V311, connect_props, connected, unique_id, wait_until

GAUGES = ("connections", "sessions", "sessions.persistent", "subscriptions", "topics", "routes")


def stats(broker):
    r = broker.ctl("broker", "stats")
    assert r.returncode == 0, r.stdout + r.stderr
    out = {}
    for line in r.stdout.splitlines():
        name, _, value = line.partition(":")
        out[name.strip()] = int(value)
    return out


def lines(broker, *args):
    r = broker.ctl(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.splitlines()


def expect(broker, connections, sessions, persistent, subscriptions, topics):
    """Wait until the gauges show these counts (disconnects settle asynchronously), then
    check them against the lists, which scan the registry."""
    want = {
        "connections.count": connections,
        "sessions.count": sessions,
        "sessions.persistent.count": persistent,
        "subscriptions.count": subscriptions,
        "topics.count": topics,
        # One route (filter -> this node) per distinct filter on a single node.
        "routes.count": topics,
    }
    # After a (re)start the MQTT port accepts a moment before the control socket.
    assert wait_until(lambda: broker.ctl("ping").returncode == 0, 10), "emqx_ctl cannot reach the node"
    seen = []

    def matches():
        s = stats(broker)
        seen.append(s)
        return all(s[k] == v for k, v in want.items())

    assert wait_until(matches, 10), f"wanted {want}, last stats {seen[-1]}"
    assert len(lines(broker, "clients", "list")) == connections
    assert len(lines(broker, "sessions", "list")) == sessions
    assert len(lines(broker, "subscriptions", "list")) == subscriptions
    # Stable: nothing is still on its way to change them.
    s = stats(broker)
    assert all(s[k] == v for k, v in want.items()), (want, s)
    for name in GAUGES:
        assert s[f"{name}.max"] >= s[f"{name}.count"], s
    return s


def test_stats_follow_subscribe_unsubscribe_session_end_and_takeover(broker):
    expect(broker, 0, 0, 0, 0, 0)
    a_id = unique_id("stat-a")
    a = connected(broker.port, a_id, clean=False)
    a.subscribe("st/1")
    a.subscribe("st/+")
    b = connected(broker.port, unique_id("stat-b"))
    b.subscribe("st/1")
    expect(broker, 2, 2, 1, 3, 2)

    a.subscribe("st/1", qos=2)  # the same filter again: replaced, not added
    expect(broker, 2, 2, 1, 3, 2)
    assert "st/1:2" in "\n".join(lines(broker, "subscriptions", "show", a_id))
    a.unsubscribe("st/+")
    expect(broker, 2, 2, 1, 2, 1)
    a.unsubscribe("st/+")  # nothing to remove
    expect(broker, 2, 2, 1, 2, 1)
    a.subscribe("st/+")
    expect(broker, 2, 2, 1, 3, 2)

    b.disconnect()  # clean session: ends with its connection
    s = expect(broker, 1, 1, 1, 2, 2)
    assert s["connections.max"] == 2 and s["sessions.max"] == 2
    assert s["subscriptions.max"] == 3 and s["topics.max"] == 2

    a2 = connected(broker.port, a_id, clean=False)  # takes the session over
    assert a2.session_present
    assert a.wait_disconnect(5), "the old connection was not taken over"
    a.stop()
    expect(broker, 1, 1, 1, 2, 2)

    a2.disconnect()  # persistent: offline, kept with its subscriptions
    expect(broker, 0, 1, 1, 2, 2)

    a3 = connected(broker.port, a_id, clean=False)  # resumed
    assert a3.session_present
    expect(broker, 1, 1, 1, 2, 2)
    a3.disconnect()

    a4 = connected(broker.port, a_id, clean=True)  # clean start: the stored session ends
    assert not a4.session_present
    expect(broker, 1, 1, 0, 0, 0)
    a4.disconnect()
    expect(broker, 0, 0, 0, 0, 0)


def test_stats_after_restart_and_crash_recovery(broker):
    ids = [unique_id(f"stat-r{i}") for i in range(3)]
    clients = [connected(broker.port, cid, clean=False) for cid in ids]
    for i, c in enumerate(clients):
        c.subscribe("rs/shared")
        c.subscribe(f"rs/{i}")
    clean = connected(broker.port, unique_id("stat-clean"))
    clean.subscribe("rs/shared")
    expect(broker, 4, 4, 3, 7, 4)
    clients[0].disconnect()  # offline before the stop, the others online
    expect(broker, 3, 4, 3, 7, 4)

    broker.restart()
    for c in clients[1:] + [clean]:
        c.stop()
    # Recovered: the stored sessions, offline, with their subscriptions; no clean one.
    s = expect(broker, 0, 3, 3, 6, 4)
    assert s["connections.max"] == 0 and s["sessions.max"] == 3

    resumed = connected(broker.port, ids[1], clean=False)
    assert resumed.session_present
    expect(broker, 1, 3, 3, 6, 4)
    broker.restart(crash=True)  # kill -9 with a connection attached
    resumed.stop()
    expect(broker, 0, 3, 3, 6, 4)


def test_stats_count_v5_expiry_and_zero_expiry_resume(broker):
    cid = unique_id("stat-x")
    c = connected(broker.port, cid, protocol=V5, clean_start=False,
                  properties=connect_props(SessionExpiryInterval=1))
    c.subscribe("x5/a")
    c.disconnect()
    expect(broker, 0, 1, 1, 1, 1)
    # Expires a second later: the sweep ends it and its routes.
    expect(broker, 0, 0, 0, 0, 0)

    keep = connected(broker.port, unique_id("stat-k"), protocol=V5, clean_start=False,
                     properties=connect_props(SessionExpiryInterval=300))
    keep.subscribe("x5/b")
    keep.disconnect()
    expect(broker, 0, 1, 1, 1, 1)
    # Resumed with Session Expiry 0: the session ends with this connection.
    again = connected(broker.port, keep.client_id, protocol=V5, clean_start=False,
                      properties=connect_props(SessionExpiryInterval=0))
    assert again.session_present
    expect(broker, 1, 1, 1, 1, 1)
    again.disconnect()
    expect(broker, 0, 0, 0, 0, 0)


def test_v311_and_v5_kick_ends_the_connection_in_stats(broker):
    v3 = connected(broker.port, unique_id("stat-k3"), protocol=V311, clean=False)
    v5 = connected(broker.port, unique_id("stat-k5"), protocol=V5)
    expect(broker, 2, 2, 1, 0, 0)
    assert broker.ctl("clients", "kick", v3.client_id).returncode == 0
    assert broker.ctl("clients", "kick", v5.client_id).returncode == 0
    assert v3.wait_disconnect(5) and v5.wait_disconnect(5)
    v3.stop()
    v5.stop()
    expect(broker, 0, 1, 1, 0, 0)
