"""Flow control: a subscriber that is behind slows its publishers instead of losing
their messages, and one that stopped reading is closed instead of stalling them.

Publishers here are open loop: raw sockets that write pre-encoded QoS 0 PUBLISHes as
fast as the broker reads them. Subscribers read with raw sockets and count.
"""

import socket
import threading
import time

from rawmqtt import PUBLISH, Closed, RawClient, publish, disconnect

TOPIC_PREFIX = "flow"


def metric(broker, name):
    out = broker.ctl("metrics")
    assert out.returncode == 0, out.stderr
    for line in out.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return int(value)
    raise AssertionError(f"metric {name} not in:\n{out.stdout}")


def blast(port, client_id, topic, count, payload_size=64, results=None, keepalive=60):
    """Connect and write `count` QoS 0 PUBLISHes as fast as the socket takes them."""
    c = RawClient(port, timeout_s=30)
    c.connect(client_id, keepalive=keepalive)
    one = publish(topic, b"x" * payload_size)
    chunk = one * 500
    sent = 0
    while sent < count:
        n = min(500, count - sent)
        c.send(chunk if n == 500 else one * n)
        sent += n
    # DISCONNECT after the last PUBLISH: reaching it means everything was read.
    c.send(disconnect())
    if results is not None:
        results[client_id] = (sent, c)
    else:
        c.close()
    return sent


class Counter:
    """A raw subscriber that counts PUBLISH packets, reading `pace_s` apart per 64 KiB."""

    def __init__(self, port, client_id, topic_filter, pace_s=0.0, version=4):
        self.client = RawClient(port, version=version, timeout_s=30)
        self.client.connect(client_id)
        codes = self.client.subscribe(1, [(topic_filter, 0)])
        assert codes == [0], codes
        self.pace_s = pace_s
        self.count = 0
        self.closed = False
        self.last_packet = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def run(self):
        sock = self.client.sock
        buf = self.client.buf
        sock.settimeout(0.2)
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                self.closed = True
                return
            if not chunk:
                self.closed = True
                return
            buf += chunk
            pos = 0
            while len(buf) - pos >= 2:
                length, shift = 0, 0
                i = pos + 1
                complete = False
                while i < len(buf):
                    byte = buf[i]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not byte & 0x80:
                        complete = True
                        break
                if not complete or len(buf) < i + length:
                    break
                if buf[pos] >> 4 == PUBLISH:
                    self.count += 1
                else:
                    self.last_packet = bytes(buf[pos : i + length])
                pos = i + length
            del buf[:pos]
            if self.pace_s:
                time.sleep(self.pace_s)

    def wait_count(self, n, timeout_s, quiet_s=3.0):
        """Wait until `n` arrived, or nothing new arrived for `quiet_s`."""
        deadline = time.monotonic() + timeout_s
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline and self.count < n:
            if self.count != last:
                last, last_change = self.count, time.monotonic()
            elif time.monotonic() - last_change > quiet_s:
                break
            time.sleep(0.05)
        return self.count

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        self.client.close()


def test_an_open_loop_burst_to_a_slow_subscriber_is_delivered_in_full(broker_factory):
    """4 publishers write 200,000 QoS 0 messages as fast as they can to one subscriber
    that reads slowly: nothing is dropped (the queue is unlimited, as configured), the
    publishers were slowed instead (the flow-control counter moved)."""
    broker = broker_factory({"zone.external.max_mqueue_len": 0})
    sub = Counter(broker.port, "flow-sub", f"{TOPIC_PREFIX}/#", pace_s=0.002).start()
    per_publisher = 50_000
    threads = [
        threading.Thread(target=blast, args=(broker.port, f"flow-pub-{i}", f"{TOPIC_PREFIX}/{i}", per_publisher))
        for i in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a publisher did not finish within 120 s"
    total = 4 * per_publisher
    got = sub.wait_count(total, timeout_s=120)
    sub.close()
    assert got == total, f"delivered {got} of {total}"
    assert metric(broker, "delivery.dropped.queue_full") == 0
    assert metric(broker, "client.flow_control.paused") > 0, "the publishers were never slowed"


def test_a_subscriber_that_stops_reading_is_closed_and_the_rest_get_everything(broker_factory):
    """One subscriber stops reading; the publisher is held up by it for `stall_timeout`
    (longer than its own keepalive timeout: being held up is not silence), then the
    stalled subscriber is closed with 0x97 and the healthy subscriber gets every message."""
    broker = broker_factory({"zone.external.max_mqueue_len": 0, "zone.external.stall_timeout": "3s"})
    # A v5 subscriber that never reads after SUBACK.
    stalled = RawClient(broker.port, version=5, timeout_s=10)
    stalled.connect("flow-stalled")
    assert stalled.subscribe(1, [(f"{TOPIC_PREFIX}/#", 0)]) == [0]
    healthy = Counter(broker.port, "flow-healthy", f"{TOPIC_PREFIX}/#").start()
    # 60 MB: far more than the stalled socket's kernel buffers and our write buffer.
    total = 60_000
    results = {}
    started = time.monotonic()
    # keepalive 1 s: a publisher not read for 1.5 s would be timed out if pausing counted.
    publisher = threading.Thread(
        target=blast,
        args=(broker.port, "flow-pub", f"{TOPIC_PREFIX}/x", total),
        kwargs={"results": results, "keepalive": 1, "payload_size": 1000},
    )
    publisher.start()
    publisher.join(timeout=60)
    assert not publisher.is_alive(), "the publisher stayed blocked: the stalled subscriber was never closed"
    got = healthy.wait_count(total, timeout_s=60)
    elapsed = time.monotonic() - started
    healthy.close()
    if got != total:
        # Which counter moved tells a broker drop from a delivery that stalled.
        dropped = [l for l in broker.ctl("metrics").stdout.splitlines() if "dropped" in l or "stalled" in l]
        raise AssertionError(f"the healthy subscriber got {got} of {total}; {dropped}")
    assert elapsed >= 2.5, f"done in {elapsed:.1f}s: the publisher was never held up"
    assert metric(broker, "client.disconnected.stalled") == 1
    # The stalled one, read at last: closed after what it was sent (a DISCONNECT 0x97
    # only if it fitted into the last second of writing, which a full buffer rules out).
    others = []
    try:
        for _ in range(1_000_000):
            p = stalled.recv(10)
            if p.type != PUBLISH:
                others.append(p)
    except Closed:
        pass
    assert all(p.type == 14 and p.body[:1] == b"\x97" for p in others), f"unexpected {others}"
    stalled.close()
    _, pub = results["flow-pub"]
    pub.close()
