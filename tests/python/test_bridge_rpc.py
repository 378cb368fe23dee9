"""The RPC bridge between two Quay nodes on loopback (issue 11): forwards go over the
node-to-node transport (cookie-authenticated prost frames over TCP) under the mountpoint,
in order, through a kill -9 and restart of the receiving node; a node with another
cookie is refused on both sides."""

import time

from bridgeenv import BridgedBroker, Collector, first_arrivals, publish_all
from conftest import Broker, free_port


def receiver(port, cookie="quay-test-cookie"):
    # 2,000 replayed messages may reach the subscriber's session before it reconnects:
    # a deeper queue than the default 1,000, whose overflow would drop (as EMQX does)
    # what this test is about.
    return Broker({"node.name": "emqx2@127.0.0.1", "node.cookie": cookie, "rpc.tcp_server_port": port,
                   "zone.external.max_mqueue_len": "100000"})


def sender(tmp_path, port, cookie="quay-test-cookie"):
    conf = f"""
bridge.mqtt.rpc.address = emqx2@127.0.0.1:{port}
bridge.mqtt.rpc.forwards = sensor/#
bridge.mqtt.rpc.mountpoint = bridge/${{node}}/
bridge.mqtt.rpc.reconnect_interval = 500ms
bridge.mqtt.rpc.queue.replayq_dir = {tmp_path}/rpcq/
bridge.mqtt.rpc.queue.replayq_seg_bytes = 64KB
"""
    return BridgedBroker(conf, {"node.name": "emqx1@127.0.0.1", "node.cookie": cookie})


def test_rpc_bridge_forwards_in_order_through_a_kill_9_of_the_receiving_node(tmp_path):
    port = free_port()
    b = receiver(port)
    a = sender(tmp_path, port)
    try:
        b.start()
        a.start()
        a.load_bridges()
        a.wait_status("rpc", "Running")
        cid = f"rpc-collector-{time.monotonic_ns() % 100000}"
        sub = Collector(b.port, "bridge/#", client_id=cid)
        first = [f"before-{i:04d}".encode() for i in range(500)]
        publish_all(a.port, "sensor/t", first)
        got = sub.wait_for(500, timeout_s=60)
        assert {t for t, _ in got} == {"bridge/emqx1@127.0.0.1/sensor/t"}
        assert first_arrivals([p for _, p in got]) == first
        sub.close()
        b.kill()
        second = [f"during-{i:04d}".encode() for i in range(2000)]
        publish_all(a.port, "sensor/t", second)
        assert int(a.bridge_figures("rpc")["queued"]) == len(second)
        b.start()
        sub = Collector(b.port, "bridge/#", client_id=cid, got=sub.got)
        got = sub.wait_for(500 + len(second), timeout_s=90)
        sub.close()
        assert first_arrivals([p for _, p in got]) == first + second
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and a.bridge_figures("rpc")["queued"] != "0":
            time.sleep(0.1)
        assert a.bridge_figures("rpc")["queued"] == "0"
    finally:
        a.cleanup()
        b.cleanup()


def test_a_node_with_another_cookie_is_refused(tmp_path):
    port = free_port()
    b = receiver(port, cookie="right")
    a = sender(tmp_path, port, cookie="wrong")
    try:
        b.start()
        a.start()
        a.load_bridges()
        publish_all(a.port, "sensor/x", [b"kept"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "does not hold our cookie" not in a.console():
            time.sleep(0.1)
        assert "does not hold our cookie" in a.console()
        assert "node-to-node link refused" in b.console_log.read_text(errors="replace")
        assert a.bridge_figures("rpc")["status"] != "Running"
        assert a.bridge_figures("rpc")["queued"] == "1"
    finally:
        a.cleanup()
        b.cleanup()
