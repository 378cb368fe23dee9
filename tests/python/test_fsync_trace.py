"""Ack-after-fsync at the syscall level: the real broker under `strace -f`.

kill -9 cannot show a missing fsync (the page cache survives the process). So the broker
runs under strace, raw-socket clients with persistent sessions go through every exchange
whose acknowledgement promises durability, one at a time, and fsync_check.py reads the
trace: every CONNACK (session present), SUBACK, UNSUBACK, PUBACK, PUBREC, PUBCOMP and
PUBREL must be written to its socket after an fdatasync/fsync of RocksDB's WAL that
started after the read of what it acknowledges and returned before the write.

One exchange at a time keeps unrelated syncs (another client's batch) from falling
between a read and its ack by chance, which would hide a missing one.

A second run with `storage.fsync = none` proves the checker can fail against the real
binary: there, no PUBACK has a sync before it.
"""

import os
import shutil
import signal
import struct
import subprocess
import time

import pytest

import conftest
import rawmqtt as raw
from conftest import Broker
from fsync_check import NAMES, check, parse_trace
from helpers import unique_id

# Exchanges of each kind (each takes a few ms). A resumed session's CONNACK goes out
# unsynced only when the session record's write and the CONNACK barrier land in different
# writer batches (issue 7, defect 8: an empty barrier batch is not synced), 1 to 45 in
# 100 resumes on main: so 100 resumes, which always showed it.
N = 4
RESUMES = 100
RECV_TIMEOUT_S = 10
STOP_TIMEOUT_S = 30

STRACE_FLAGS = [
    "-f",  # every thread: tokio workers, the store writer, RocksDB's
    "-tt",  # wall-clock time per line (for people; the checker orders by line)
    "-yy",  # fd -> path, socket -> TCP:[local->peer]
    "-xx",  # every buffer byte as \xHH: exact packets
    "-s", "1048576",  # never cut a buffer (the checker refuses cut ones)
    "--seccomp-bpf",  # stop only on the traced syscalls: the broker runs near full speed
    "-e", "trace=read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg,"
          "pwrite64,pwritev,pwritev2,fsync,fdatasync",
]

KINDS = ["CONNACK", "SUBACK", "UNSUBACK", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP"]


class TracedBroker(Broker):
    """A Broker whose process is `strace ... -- emqx foreground`.

    strace started with -o blocks fatal signals, so stop and kill signal the broker it
    runs; strace ends when its tracee does and returns the tracee's exit code."""

    def __init__(self, overrides=None):
        super().__init__(overrides)
        self.trace_path = self.root / "strace.txt"

    def argv(self):
        return ["strace", *STRACE_FLAGS, "-o", str(self.trace_path), "--", *super().argv()]

    def tracee(self):
        children = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
        try:
            with open(children) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            return None
        return pids[0] if pids else None

    def _end(self, sig, timeout_s):
        if self.proc is None:
            return None
        proc, pid = self.proc, self.tracee()
        self.proc = None
        if pid is not None:
            os.kill(pid, sig)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=10)
            raise AssertionError(f"traced broker did not end within {timeout_s}s of signal {sig}")

    def stop(self, timeout_s=STOP_TIMEOUT_S):
        return self._end(signal.SIGTERM, timeout_s)

    def kill(self):
        self._end(signal.SIGKILL, 10)


class Client(raw.RawClient):
    """A raw v3.1.1 client that expects exactly the packets the exchange calls for."""

    def expect(self, ptype, pid=None):
        p = self.recv(RECV_TIMEOUT_S)
        assert p.type == ptype, f"expected {NAMES[ptype]}, got {p}"
        if pid is not None:
            got = raw.parse_publish(p, 4)["pid"] if ptype == raw.PUBLISH else struct.unpack_from(">H", p.body)[0]
            assert got == pid, f"{NAMES[ptype]} for packet id {got}, expected {pid}"
        return p


def unsubscribe(pid, topic):
    return raw.packet(raw.UNSUBSCRIBE, 0x02, struct.pack(">H", pid) + raw.utf8(topic))


def persistent(port, client_id, session_present):
    c = Client(port, timeout_s=RECV_TIMEOUT_S)
    ack = c.connect(client_id, clean=False, timeout_s=RECV_TIMEOUT_S)
    assert ack["rc"] == 0 and ack["session_present"] is session_present, ack
    return c


def every_exchange(port):
    """Each ack kind N times or more, one exchange at a time. Returns {kind: count}."""
    sub_id, pub_id = unique_id("fst-sub"), unique_id("fst-pub")
    sub = persistent(port, sub_id, session_present=False)
    assert sub.subscribe(1, [("fst/q1/#", 1), ("fst/q2/#", 2)], timeout_s=RECV_TIMEOUT_S) == [1, 2]
    for i in range(N):
        assert sub.subscribe(10 + i, [(f"fst/extra/{i}", 1)], timeout_s=RECV_TIMEOUT_S) == [1]
    for i in range(N):
        sub.send(unsubscribe(20 + i, f"fst/extra/{i}"))
        sub.expect(raw.UNSUBACK, 20 + i)
    for _ in range(RESUMES):
        sub.send(raw.disconnect())
        sub.wait_closed(RECV_TIMEOUT_S)
        sub.close()
        sub = persistent(port, sub_id, session_present=True)

    pub = persistent(port, pub_id, session_present=False)
    for i in range(N):
        pub.send(raw.publish("fst/q1/a", f"q1-{i}", qos=1, pid=1 + i))
        pub.expect(raw.PUBACK, 1 + i)
        delivery = raw.parse_publish(sub.expect(raw.PUBLISH), 4)
        assert delivery["payload"] == f"q1-{i}".encode() and delivery["qos"] == 1, delivery
        sub.send(raw.ack(raw.PUBACK, delivery["pid"]))
    for i in range(N):
        pid = 100 + i
        pub.send(raw.publish("fst/q2/a", f"q2-{i}", qos=2, pid=pid))
        pub.expect(raw.PUBREC, pid)
        # Our delivery to the persistent subscriber: its PUBREC, our PUBREL, its PUBCOMP.
        delivery = raw.parse_publish(sub.expect(raw.PUBLISH), 4)
        assert delivery["payload"] == f"q2-{i}".encode() and delivery["qos"] == 2, delivery
        sub.send(raw.ack(raw.PUBREC, delivery["pid"]))
        sub.expect(raw.PUBREL, delivery["pid"])
        sub.send(raw.ack(raw.PUBCOMP, delivery["pid"]))
        # Only then the publisher's PUBREL, so the two flows do not overlap.
        pub.send(raw.ack(raw.PUBREL, pid))
        pub.expect(raw.PUBCOMP, pid)
    for i in range(N):  # retained, no subscriber: stored for the retained store alone
        pub.send(raw.publish(f"fst/ret/{i}", f"r1-{i}", qos=1, pid=200 + i, retain=True))
        pub.expect(raw.PUBACK, 200 + i)
        pub.send(raw.publish(f"fst/ret2/{i}", f"r2-{i}", qos=2, pid=300 + i, retain=True))
        pub.expect(raw.PUBREC, 300 + i)
        pub.send(raw.ack(raw.PUBREL, 300 + i))
        pub.expect(raw.PUBCOMP, 300 + i)
    for c in (sub, pub):
        c.send(raw.disconnect())
        c.wait_closed(RECV_TIMEOUT_S)
        c.close()
    return {"CONNACK": RESUMES, "SUBACK": N + 1, "UNSUBACK": N, "PUBACK": 2 * N,
            "PUBREC": 2 * N, "PUBREL": N, "PUBCOMP": 2 * N}


def qos1_to_a_persistent_subscriber(port):
    sub = persistent(port, unique_id("fsn-sub"), session_present=False)
    assert sub.subscribe(1, [("fsn/#", 1)], timeout_s=RECV_TIMEOUT_S) == [1]
    pub = persistent(port, unique_id("fsn-pub"), session_present=False)
    for i in range(N):
        pub.send(raw.publish("fsn/a", f"n-{i}", qos=1, pid=1 + i))
        pub.expect(raw.PUBACK, 1 + i)
        delivery = raw.parse_publish(sub.expect(raw.PUBLISH), 4)
        sub.send(raw.ack(raw.PUBACK, delivery["pid"]))
    for c in (sub, pub):
        c.send(raw.disconnect())
        c.wait_closed(RECV_TIMEOUT_S)
        c.close()
    return {"PUBACK": N}


def traced_run(overrides, scenario):
    """Run `scenario` against a traced broker; yield (report, expected counts, broker)."""
    b = TracedBroker(overrides)
    conftest._live_brokers.append(b)
    try:
        b.start()
        expected = scenario(b.port)
        code = b.stop()
        assert code == 0, f"traced broker exited with {code}"
        with open(b.trace_path, encoding="utf-8", errors="surrogateescape") as f:
            calls = parse_trace(f)
        report = check(calls, {b.port, b.internal_port})
        keep = os.environ.get("QUAY_FSYNC_TRACE_DIR")
        if keep:  # for a person reading a failure
            os.makedirs(keep, exist_ok=True)
            shutil.copy(b.trace_path, os.path.join(keep, f"strace-{b.port}-{int(time.time())}.txt"))
        yield report, expected, b
    finally:
        b.cleanup()
        conftest._live_brokers.remove(b)


@pytest.fixture(scope="module")
def batch_run():
    """The default `storage.fsync = batch`, every exchange."""
    yield from traced_run({}, every_exchange)


@pytest.fixture(scope="module")
def no_fsync_run():
    """`storage.fsync = none` (EMQX_STORAGE__FSYNC=none): acks without fsync."""
    yield from traced_run({"storage.fsync": "none"}, qos1_to_a_persistent_subscriber)


def test_the_trace_shows_every_connection_and_wal_syncs(batch_run):
    report, expected, broker = batch_run
    # sub: first connect + its resumes; pub: one connect. (Broker.start's port probe
    # connects too, and sends nothing.)
    mqtt = [c.client_id for c in report.conns.values() if c.client_id]
    assert len(mqtt) == RESUMES + 2, mqtt
    assert report.wal_syncs, "no fdatasync/fsync of a WAL file in the trace"
    assert all(str(broker.data_dir) in s.target for s in report.wal_syncs), report.wal_syncs[0].target
    assert not report.unmatched, [(c.client_id, p.name, p.packet_id()) for c, p in report.unmatched]


@pytest.mark.parametrize("kind", KINDS)
def test_ack_leaves_after_a_wal_fsync(batch_run, kind):
    report, expected, _ = batch_run
    verdicts = report.of_kind(kind)
    assert len(verdicts) == expected[kind], (
        f"{len(verdicts)} {kind} that promise durability found in the trace, expected {expected[kind]}")
    early = [v for v in verdicts if not v.ok]
    assert not early, (
        f"{len(early)} of {len(verdicts)} {kind} written before the WAL was fsynced:\n"
        + "\n".join(v.describe() for v in early[:3]))


def test_without_fsync_the_checker_fails_every_puback(no_fsync_run):
    report, expected, _ = no_fsync_run
    verdicts = report.of_kind("PUBACK")
    assert len(verdicts) == expected["PUBACK"]
    passed = [v.describe() for v in verdicts if v.ok]
    assert not passed, "with storage.fsync = none a PUBACK still followed a WAL sync:\n" + "\n".join(passed)
