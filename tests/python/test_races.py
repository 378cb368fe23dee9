"""Races, takeovers and crashes (issue 7): the durability contract under adversarial timing.

Each test reproduces one defect of issue 7 with real sockets against the real binary.
Races are looped a bounded number of rounds, and a test fails if any round misbehaves;
every wait has a generous bound, so a correct broker passes every time. Where the odds
of hitting a window depend on how busy the store writer is, `BackgroundLoad` keeps it
busy (QoS 1 retained publishes, each one a durable write).

Raw sockets (rawmqtt.py) are used wherever the order of bytes on the wire is the point:
a PUBACK and the end of a session in one write, a socket that never reads, several
CONNECTs released by one barrier, a kill -9 between PUBREL and PUBCOMP.
"""

import socket
import struct
import threading
import time

import pytest

import rawmqtt as raw
from helpers import unique_id

EXPIRY_S = 3600  # Session Expiry Interval of the v5 persistent sessions below
PERSIST = [(raw.P_SESSION_EXPIRY, EXPIRY_S)]
WAIT_S = 10  # bound for anything a correct broker answers in milliseconds
DRAIN_S = 15  # bound for a queue to arrive after a (re)connect
SESSION_TAKEN_OVER = 0x8E


# ---------------------------------------------------------------------------- helpers


def v5(port, cid, clean, properties=PERSIST, timeout_s=WAIT_S):
    """A raw MQTT 5 client connected as `cid`; returns (client, CONNACK dict)."""
    c = raw.RawClient(port, version=5, timeout_s=timeout_s)
    try:
        ack = c.connect(cid, clean=clean, properties=properties, timeout_s=timeout_s)
    except BaseException:
        c.close()
        raise
    assert ack["rc"] == 0, f"{cid}: CONNACK reason {ack['rc']:#x}"
    return c, ack


def disconnect_with_expiry(expiry_s):
    """v5 DISCONNECT, reason Success, carrying a Session Expiry Interval."""
    return raw.packet(raw.DISCONNECT, 0, bytes([0]) + raw.encode_props([(raw.P_SESSION_EXPIRY, expiry_s)]))


def publish_qos1(port, publishes, version=4, window=16, timeout_s=60):
    """Publish every (topic, payload, retain, properties) at QoS 1 on one connection,
    at most `window` unacknowledged (within the broker's Receive Maximum), and wait
    for every PUBACK. Returns the PUBACK reason codes (v5) or 0s."""
    codes = []
    deadline = time.monotonic() + timeout_s
    with raw.RawClient(port, version=version, timeout_s=timeout_s) as p:
        assert p.connect(unique_id("pub"), timeout_s=WAIT_S)["rc"] == 0
        pending = set()
        items = list(publishes)
        sent = 0
        while sent < len(items) or pending:
            burst = bytearray()
            while sent < len(items) and len(pending) < window:
                topic, payload, retain, props = items[sent]
                pid = sent % 65535 + 1
                burst += raw.publish(topic, payload, qos=1, pid=pid, retain=retain, version=version, properties=props)
                pending.add(pid)
                sent += 1
            if burst:
                p.send(bytes(burst))
            left = deadline - time.monotonic()
            assert left > 0, f"{len(pending)} of {len(items)} QoS 1 publishes not acknowledged within {timeout_s}s"
            ack = p.recv_type(raw.PUBACK, left)
            (pid,) = struct.unpack_from(">H", ack.body, 0)
            pending.discard(pid)
            codes.append(ack.body[2] if len(ack.body) > 2 else 0)
    assert all(code < 0x80 for code in codes), f"publishes refused: {sorted(set(codes))}"
    return codes


def qos2_exchange(c, topic, payload, pid, timeout_s=WAIT_S):
    """One inbound QoS 2 flow on `c`: PUBLISH -> PUBREC, PUBREL -> PUBCOMP."""
    c.send(raw.publish(topic, payload, qos=2, pid=pid, version=c.version))
    rec = c.recv_type(raw.PUBREC, timeout_s)
    assert struct.unpack_from(">H", rec.body, 0)[0] == pid
    assert len(rec.body) <= 2 or rec.body[2] < 0x80, f"PUBREC reason {rec.body[2]:#x} for {payload!r}"
    c.send(raw.ack(raw.PUBREL, pid))
    comp = c.recv_type(raw.PUBCOMP, timeout_s)
    assert struct.unpack_from(">H", comp.body, 0)[0] == pid


def read_acking(c, want, timeout_s=DRAIN_S):
    """Read from `c`, PUBACKing every QoS 1 PUBLISH, until every payload in `want` has
    arrived or the time is up. Returns the payloads received, in order."""
    got = []
    deadline = time.monotonic() + timeout_s
    while not set(want) <= set(got):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            p = c.recv(left)
        except (TimeoutError, raw.Closed):
            break
        if p.type == raw.PUBLISH:
            pub = raw.parse_publish(p, c.version)
            got.append(pub["payload"])
            if pub["qos"] == 1:
                c.send(raw.ack(raw.PUBACK, pub["pid"]))
    return got


class BackgroundLoad:
    """Threads publishing QoS 1 retained messages in bursts, so the store writer always
    has a batch in flight. They reconnect after a broker crash and stop at `__exit__`
    (or after `max_s`, whichever is first)."""

    def __init__(self, port, threads=2, burst=16, payload_size=2048, max_s=120):
        self.port = port
        self.stop = threading.Event()
        self.acked = 0
        self._lock = threading.Lock()
        self._payload = b"x" * payload_size
        self._burst = burst
        self._max_s = max_s
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self):
        for t in self._threads:
            t.start()
        # Running before the test starts its rounds.
        assert self.wait_acked(self._burst, timeout_s=WAIT_S), "background load got no PUBACK"
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def wait_acked(self, n, timeout_s):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.acked >= n:
                    return True
            time.sleep(0.02)
        return False

    def _run(self, index):
        deadline = time.monotonic() + self._max_s
        cid = unique_id(f"load{index}")
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                with raw.RawClient(self.port, version=4, timeout_s=2) as c:
                    c.connect(cid, clean=True, timeout_s=5)
                    n = 0
                    while not self.stop.is_set() and time.monotonic() < deadline:
                        burst = b"".join(
                            raw.publish(f"load/{index}/{(n + k) % 8}", self._payload, qos=1, pid=k + 1, retain=True)
                            for k in range(self._burst)
                        )
                        c.send(burst)
                        for _ in range(self._burst):
                            c.recv_type(raw.PUBACK, 5)
                        n += self._burst
                        with self._lock:
                            self.acked += self._burst
            except (OSError, raw.Closed, TimeoutError, AssertionError, ValueError, IndexError):
                # The broker is down (a test killed it) or slow: try again shortly.
                self.stop.wait(0.05)


# ---------------------------------------------- 1. a shared stored message released twice

ROUNDS_1 = 10
MESSAGES_1 = 5


@pytest.mark.parametrize("end", ["disconnect-expiry-0", "clean-start-reconnect"])
def test_ack_and_session_end_in_one_batch_keep_message_for_offline_sessions(broker, end):
    """Issue 7 defect 1. Three persistent QoS 1 subscribers of one topic, two offline.
    The online one acks its copies and ends its session in the same write (PUBACKs
    followed at once by DISCONNECT with Session Expiry 0, or by a Clean Start reconnect).
    Its session's end must release only its own references: the offline sessions still
    get every message, with and without a restart before they come back."""
    topic = "race1/t"
    a_id, b_id, c_id = (unique_id(f"r1{n}") for n in "abc")
    for cid in (b_id, c_id):
        c, _ = v5(broker.port, cid, clean=True)
        assert c.subscribe(1, [(topic, 1)]) == [1]
        c.send(raw.disconnect(version=5))
        c.close()
    failures = []
    with BackgroundLoad(broker.port):
        a, _ = v5(broker.port, a_id, clean=True)
        assert a.subscribe(1, [(topic, 1)]) == [1]
        try:
            for r in range(ROUNDS_1):
                restart = r % 2 == 1
                payloads = [f"r{r}-m{i}".encode() for i in range(MESSAGES_1)]
                publish_qos1(broker.port, [(topic, p, False, ()) for p in payloads])

                pids, got = [], []
                deadline = time.monotonic() + WAIT_S
                while len(got) < MESSAGES_1 and time.monotonic() < deadline:
                    p = a.recv(max(0.0, deadline - time.monotonic()))
                    if p.type == raw.PUBLISH:
                        pub = raw.parse_publish(p, 5)
                        pids.append(pub["pid"])
                        got.append(pub["payload"])
                assert got == payloads, f"round {r}: the online subscriber got {got}"
                acks = b"".join(raw.ack(raw.PUBACK, pid) for pid in pids)
                if end == "disconnect-expiry-0":
                    a.send(acks + disconnect_with_expiry(0))
                    a.wait_closed(timeout_s=WAIT_S)
                    a.close()
                    a, _ = v5(broker.port, a_id, clean=True)
                else:
                    fresh = raw.RawClient(broker.port, version=5, timeout_s=WAIT_S)
                    a.send(acks)
                    fresh.send(raw.connect(a_id, version=5, clean=True, properties=PERSIST))
                    a.close()
                    a = fresh
                    ack = raw.parse_connack(a.recv_type(raw.CONNACK, WAIT_S), 5)
                    assert ack["rc"] == 0 and not ack["session_present"]
                # A new persistent session for the next round.
                assert a.subscribe(1, [(topic, 1)]) == [1]

                if restart:
                    a.close()
                    broker.restart()
                    a, ack = v5(broker.port, a_id, clean=False)
                    assert ack["session_present"], f"round {r}: the online subscriber's new session lost in a restart"
                for cid in (b_id, c_id):
                    c, ack = v5(broker.port, cid, clean=False)
                    try:
                        assert ack["session_present"], f"round {r}: {cid}'s session is gone"
                        received = read_acking(c, payloads, timeout_s=5)
                        missing = [p.decode() for p in payloads if p not in received]
                        if missing:
                            failures.append(f"round {r} ({'restart' if restart else 'no restart'}): {cid} never got {missing}")
                        c.send(raw.disconnect(version=5))
                    finally:
                        c.close()
        finally:
            a.close()
    assert not failures, f"{len(failures)} offline subscriber(s) lost messages:\n" + "\n".join(failures)


# ---------------------------------------------- 2. takeover of a connection blocked writing

MESSAGES_2 = 40
SIZE_2 = 512 * 1024
TAKEOVER_CONNACK_MAX_S = 5


def test_takeover_of_connection_blocked_writing_hands_session_over(broker):
    """Issue 7 defect 2. A persistent subscriber's socket stops reading while forty
    512 KiB QoS 1 messages are published (all PUBACKed to the publisher), so the
    broker's write to it blocks. Its own reconnect must take the session over at once:
    CONNACK quickly, session present, and all forty messages on the new connection."""
    topic = "race2/big"
    cid = unique_id("r2stuck")
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive window set before connect, and never read: the broker's writes block.
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.settimeout(WAIT_S)
    stuck.connect((raw.HOST, broker.port))
    try:
        stuck.sendall(raw.connect(cid, version=4, clean=False) + raw.subscribe(1, [(topic, 1)]))
        head = b""
        deadline = time.monotonic() + WAIT_S
        # CONNACK (4 bytes) + SUBACK (5 bytes), then the socket is left alone.
        while len(head) < 9 and time.monotonic() < deadline:
            chunk = stuck.recv(9 - len(head))
            assert chunk, "broker closed the subscriber before SUBACK"
            head += chunk
        assert head[:2] == b"\x20\x02" and head[4] == 0x90 and head[8] == 1, f"CONNACK/SUBACK: {head!r}"

        payloads = [bytes([i]) * 8 + b"." * (SIZE_2 - 8) for i in range(MESSAGES_2)]
        publish_qos1(broker.port, [(topic, p, False, ()) for p in payloads], window=8, timeout_s=120)
        time.sleep(0.5)  # the broker is now inside a write to `stuck` that cannot finish

        started = time.monotonic()
        with raw.RawClient(broker.port, version=4, timeout_s=30) as fresh:
            fresh.send(raw.connect(cid, version=4, clean=False))
            try:
                ack = raw.parse_connack(fresh.recv_type(raw.CONNACK, 30), 4)
            except TimeoutError:
                pytest.fail("no CONNACK within 30 s for the reconnect that takes over a blocked connection")
            took_s = time.monotonic() - started
            assert ack["rc"] == 0
            assert took_s < TAKEOVER_CONNACK_MAX_S, f"CONNACK took {took_s:.1f}s (session present {ack['session_present']})"
            assert ack["session_present"], "the takeover discarded the persistent session"
            received = read_acking(fresh, payloads, timeout_s=60)
            missing = [i for i, p in enumerate(payloads) if p not in received]
            assert not missing, f"{len(missing)} of {MESSAGES_2} acknowledged messages never arrived: {missing[:10]}"
    finally:
        stuck.close()


# ---------------------------------------------- 3. concurrent CONNECTs for one client id

ROUNDS_3 = 20
MESSAGES_3 = 20
CONTENDERS_3 = 3
SETTLE_3_S = 5


class Contender:
    """One of several sockets CONNECTing as the same client id at once; it acks every
    PUBLISH it gets and records what it saw until the broker closes it or `stop` is set."""

    def __init__(self, port, cid):
        self.cid = cid
        self.client = raw.RawClient(port, version=5, timeout_s=WAIT_S)
        self.connack = None
        self.payloads = []
        self.disconnect_reasons = []
        self.closed = threading.Event()
        self.error = None

    def run(self, barrier, stop):
        try:
            barrier.wait(timeout=WAIT_S)
            self.client.send(raw.connect(self.cid, version=5, clean=False, properties=PERSIST))
            while not stop.is_set():
                try:
                    p = self.client.recv(0.05)
                except TimeoutError:
                    continue
                self.on_packet(p)
        except (raw.Closed, ConnectionError):
            self.closed.set()
        except Exception as e:  # reported by the test, not swallowed
            self.error = e

    def on_packet(self, p):
        if p.type == raw.CONNACK:
            self.connack = raw.parse_connack(p, 5)
        elif p.type == raw.PUBLISH:
            pub = raw.parse_publish(p, 5)
            self.payloads.append(pub["payload"])
            if pub["qos"] == 1:
                self.client.send(raw.ack(raw.PUBACK, pub["pid"]))
        elif p.type == raw.DISCONNECT:
            self.disconnect_reasons.append(raw.parse_disconnect(p))

    def ping(self, timeout_s=WAIT_S):
        """"live" (PINGREQ answered; what arrives meanwhile is acked), "closed" (by the
        broker) or "silent" (neither within the timeout)."""
        try:
            self.client.send(raw.pingreq())
            deadline = time.monotonic() + timeout_s
            while True:
                p = self.client.recv(max(0.0, deadline - time.monotonic()))
                if p.type == raw.PINGRESP:
                    return "live"
                self.on_packet(p)
        except TimeoutError:
            return "silent"
        except (raw.Closed, ConnectionError):
            self.closed.set()
            return "closed"


def test_concurrent_connects_one_winner_nothing_lost(broker):
    """Issue 7 defect 3. Several CONNECTs (Clean Start 0) for one persistent session with
    20 queued messages, sent at the same moment: exactly one connection survives, the
    others are closed as taken over (DISCONNECT 0x8E if anything), and every queued
    message reaches the client (over all its connections and a last reconnect)."""
    failures = []
    for r in range(ROUNDS_3):
        cid = unique_id("r3")
        topic = f"race3/{cid}"
        c, _ = v5(broker.port, cid, clean=True)
        assert c.subscribe(1, [(topic, 1)]) == [1]
        c.send(raw.disconnect(version=5))
        c.close()
        payloads = [f"r{r}-m{i:02d}".encode() for i in range(MESSAGES_3)]
        publish_qos1(broker.port, [(topic, p, False, ()) for p in payloads])

        contenders = [Contender(broker.port, cid) for _ in range(CONTENDERS_3)]
        barrier = threading.Barrier(CONTENDERS_3)
        stop = threading.Event()
        threads = [threading.Thread(target=k.run, args=(barrier, stop), daemon=True) for k in contenders]
        for t in threads:
            t.start()
        # A correct broker settles in milliseconds: all but one closed.
        deadline = time.monotonic() + SETTLE_3_S
        while time.monotonic() < deadline and sum(not k.closed.is_set() for k in contenders) > 1:
            time.sleep(0.02)
        stop.set()
        for t in threads:
            t.join(timeout=WAIT_S)
        try:
            errors = [k.error for k in contenders if k.error]
            assert not errors, f"round {r}: contender failed: {errors}"
            states = ["closed" if k.closed.is_set() else k.ping() for k in contenders]
            live = [k for k, state in zip(contenders, states) if state == "live"]
            problems = []
            if states.count("live") != 1 or "silent" in states:
                problems.append(f"connections after {SETTLE_3_S}s: {states} (exactly one must be live)")
            for k in live:
                if k.connack is None or k.connack["rc"] != 0 or not k.connack["session_present"]:
                    problems.append(f"the live connection's CONNACK is {k.connack}")
            for k in contenders:
                bad = [reason for reason in k.disconnect_reasons if reason != SESSION_TAKEN_OVER]
                if bad:
                    problems.append(f"a contender got DISCONNECT {[hex(b) for b in bad]}, not 0x8E")
            received = {p for k in contenders for p in k.payloads}
        finally:
            for k in contenders:
                k.client.close()
        # Last reconnect: whatever was not acknowledged must still be queued.
        c, ack = v5(broker.port, cid, clean=False)
        try:
            if not ack["session_present"]:
                problems.append("the session is gone after the concurrent CONNECTs")
            received |= set(read_acking(c, set(payloads) - received, timeout_s=5))
        finally:
            c.send(disconnect_with_expiry(0))
            c.close()
        missing = [p.decode() for p in payloads if p not in received]
        if missing:
            problems.append(f"{len(missing)} of {MESSAGES_3} queued messages lost: {missing[:5]}")
        if problems:
            failures.append(f"round {r}: " + "; ".join(problems))
            if len(failures) == 3:
                break  # enough to show it; each bad round waits out SETTLE_3_S
    assert not failures, f"{len(failures)} of {r + 1} rounds misbehaved:\n" + "\n".join(failures)


# ------------------------------------ 4. a reused inbound QoS 2 packet id after a crash

ROUNDS_4 = 20


def test_reused_inbound_qos2_packet_id_after_crash_is_a_new_message(broker):
    """Issue 7 defect 4. A persistent QoS 2 publisher completes PUBLISH id 1 (PUBCOMP
    received), the broker is killed at once, and after the restart the publisher sends
    a new QoS 2 message with id 1, which PUBCOMP made free. It must be routed: PUBCOMP
    may go out only once the release of the id is durable."""
    topic = "race4/t"
    sub_id, pub_id = unique_id("r4sub"), unique_id("r4pub")
    with raw.RawClient(broker.port) as s:
        assert s.connect(sub_id, clean=False)["rc"] == 0
        assert s.subscribe(1, [(topic, 1)]) == [1]
        s.send(raw.disconnect())
    sent = []
    with BackgroundLoad(broker.port):
        for r in range(ROUNDS_4):
            before, after = f"r{r}-before-crash".encode(), f"r{r}-after-crash".encode()
            with raw.RawClient(broker.port, timeout_s=WAIT_S) as p:
                assert p.connect(pub_id, clean=False, timeout_s=WAIT_S)["rc"] == 0
                qos2_exchange(p, topic, before, pid=1)
                broker.kill()
            broker.start()
            with raw.RawClient(broker.port, timeout_s=WAIT_S) as p:
                assert p.connect(pub_id, clean=False, timeout_s=WAIT_S)["rc"] == 0
                qos2_exchange(p, topic, after, pid=1)
                p.send(raw.disconnect())
            sent += [before, after]
    with raw.RawClient(broker.port) as s:
        ack = s.connect(sub_id, clean=False, timeout_s=WAIT_S)
        assert ack["session_present"], "the subscriber's session is gone"
        got = read_acking(s, sent, timeout_s=DRAIN_S)
    missing = [p.decode() for p in sent if p not in got]
    assert not missing, f"{len(missing)} completed QoS 2 messages never routed: {missing}"


# ------------------------------------------------- 5. outbound QoS 2 across a crash

ROUNDS_5 = 20


def pid_of(p):
    return struct.unpack_from(">H", p.body, 0)[0]


def packets_until_pingresp(c, timeout_s=WAIT_S):
    """Send PINGREQ and return every packet the broker sent before PINGRESP: a fence
    that shows what it had queued for `c`, with no sleep."""
    c.send(raw.pingreq())
    seen = []
    deadline = time.monotonic() + timeout_s
    while True:
        p = c.recv(max(0.0, deadline - time.monotonic()))
        if p.type == raw.PINGRESP:
            return seen
        seen.append(p)


def test_outbound_qos2_pubrel_state_survives_crash(broker):
    """Issue 7 defect 5. A persistent QoS 2 subscriber receives PUBLISH, sends PUBREC,
    receives PUBREL, and the broker is killed before PUBCOMP. After the restart the
    broker must resend PUBREL for that id and never the PUBLISH again: PUBREL may go out
    only once the released state is durable. A new session each round, so that each
    round is one clean case."""
    topic = "race5/t"
    failures = []
    with BackgroundLoad(broker.port):
        for r in range(ROUNDS_5):
            cid = unique_id("r5sub")
            payload = f"r{r}".encode()
            s, _ = v5(broker.port, cid, clean=True)
            try:
                assert s.subscribe(1, [(topic, 2)]) == [2]
                with raw.RawClient(broker.port, timeout_s=WAIT_S) as pub:
                    assert pub.connect(unique_id("r5pub"), timeout_s=WAIT_S)["rc"] == 0
                    qos2_exchange(pub, topic, payload, pid=1)
                msg = raw.parse_publish(s.recv_type(raw.PUBLISH, WAIT_S), 5)
                assert msg["payload"] == payload and msg["qos"] == 2, f"round {r}: {msg}"
                s.send(raw.ack(raw.PUBREC, msg["pid"]))
                rel = s.recv(WAIT_S)
                assert rel.type == raw.PUBREL and pid_of(rel) == msg["pid"], f"round {r}: {rel}"
                broker.kill()  # before PUBCOMP
            finally:
                s.close()
            broker.start()

            s, ack = v5(broker.port, cid, clean=False)
            try:
                assert ack["session_present"], f"round {r}: the subscriber's session is gone"
                seen = packets_until_pingresp(s)
                publishes = [raw.parse_publish(p, 5) for p in seen if p.type == raw.PUBLISH]
                rels = [pid_of(p) for p in seen if p.type == raw.PUBREL]
                if publishes:
                    failures.append(f"round {r}: after the crash the PUBLISH was sent again: "
                                    f"{[(m['payload'], 'dup' if m['dup'] else 'no dup') for m in publishes]}")
                if rels != [msg["pid"]]:
                    failures.append(f"round {r}: after the crash PUBREL ids {rels}, expected [{msg['pid']}]")
                s.send(disconnect_with_expiry(0))
            finally:
                s.close()
    assert not failures, (f"outbound QoS 2 not exactly once across kill -9 ({len(failures)} problems "
                          f"in {ROUNDS_5} rounds):\n" + "\n".join(failures))


def test_delivery_goes_on_after_restored_pubrel_completes(broker):
    """Found while writing the defect 5 test (not in issue 7's list): after a restart, a
    session resumed with a QoS 2 delivery at the PUBREL stage; once the client sends
    PUBCOMP, a message published next must reach it on the same connection."""
    topic = "race5/next"
    cid = unique_id("r5next")
    s, _ = v5(broker.port, cid, clean=True)
    try:
        assert s.subscribe(1, [(topic, 2)]) == [2]
        with raw.RawClient(broker.port, timeout_s=WAIT_S) as pub:
            assert pub.connect(unique_id("r5pub"))["rc"] == 0
            qos2_exchange(pub, topic, b"first", pid=1)
        first = raw.parse_publish(s.recv_type(raw.PUBLISH, WAIT_S), 5)
        s.send(raw.ack(raw.PUBREC, first["pid"]))
        assert s.recv_type(raw.PUBREL, WAIT_S)
    finally:
        s.close()
    broker.restart()  # graceful: what was sent is durable, the PUBREL stage included
    s, ack = v5(broker.port, cid, clean=False)
    try:
        assert ack["session_present"]
        rel = s.recv(WAIT_S)
        assert rel.type == raw.PUBREL and pid_of(rel) == first["pid"], f"expected PUBREL {first['pid']}, got {rel}"
        s.send(raw.ack(raw.PUBCOMP, first["pid"]))
        assert packets_until_pingresp(s) == []  # the PUBCOMP is processed
        with raw.RawClient(broker.port, timeout_s=WAIT_S) as pub:
            assert pub.connect(unique_id("r5pub"))["rc"] == 0
            qos2_exchange(pub, topic, b"second", pid=1)
        try:
            second = raw.parse_publish(s.recv_type(raw.PUBLISH, WAIT_S), 5)
        except TimeoutError:
            pytest.fail(f"the next message never reached the connection within {WAIT_S}s")
        assert second["payload"] == b"second"
        assert not second["dup"], "DUP = 1 on a message's first delivery [MQTT-3.3.1-1]"
    finally:
        s.close()


# ----------------------------------------------- 7. retained expiry sweep vs. fresh retains

RETAINED_7 = 3000
GROUP_7 = 100  # topics per filter checked: well below a session's max_mqueue_len (1000)


def retained_payloads(port, filters):
    """{topic: payload} of the retained messages a new clean-session subscriber gets for
    each of `filters`, one SUBSCRIBE (QoS 0) at a time. The broker sends a subscribe's
    retained messages with its SUBACK, so a PINGREQ after it is answered after them."""
    got = {}
    with raw.RawClient(port, version=4, timeout_s=WAIT_S) as c:
        assert c.connect(unique_id("r7chk"), timeout_s=WAIT_S)["rc"] == 0
        for n, topic_filter in enumerate(filters):
            c.send(raw.subscribe(n + 1, [(topic_filter, 0)]) + raw.pingreq())
            while True:
                p = c.recv(WAIT_S)
                if p.type == raw.PINGRESP:
                    break
                if p.type == raw.PUBLISH:
                    pub = raw.parse_publish(p, 4)
                    if pub["retain"]:
                        got[pub["topic"]] = pub["payload"]
    return got


FILLER_7 = 10_000  # retained messages sorted after ours: they lengthen each sweep's scan
SPAN_7_S = 2.2  # each stream's length: at least two sweeps fall inside it
LAG_7_S = 1.02  # a fresh message follows its expiring one by just over the expiry


class PacedStream(threading.Thread):
    """Publishes `items` (topic, payload, properties) as retained QoS 1 on one MQTT 5
    connection, item i not before `start + i * interval` and, when `after` is given,
    not before `after` has had item i acknowledged (so a topic's two messages are
    never reordered). At most 32 unacknowledged (the broker's Receive Maximum)."""

    def __init__(self, port, items, start, interval, after=None):
        super().__init__(daemon=True)
        self.port, self.items, self.start_at, self.interval, self.after = port, items, start, interval, after
        self.acked = threading.Condition()
        self.acked_upto = 0  # items 0..acked_upto-1 all acknowledged
        self._acked = set()
        self.error = None

    def wait_acked(self, i, timeout_s):
        with self.acked:
            return self.acked.wait_for(lambda: self.acked_upto > i, timeout_s)

    def run(self):
        try:
            self._run()
        except Exception as e:  # reported by the test
            self.error = e

    def _run(self):
        deadline = self.start_at + len(self.items) * self.interval + 60
        with raw.RawClient(self.port, version=5, timeout_s=WAIT_S) as c:
            assert c.connect(unique_id("r7pace"))["rc"] == 0
            sent, pending = 0, {}
            while self.acked_upto < len(self.items):
                now = time.monotonic()
                assert now < deadline, f"paced stream stuck at {self.acked_upto} of {len(self.items)}"
                burst = bytearray()
                while (sent < len(self.items) and len(pending) < 32
                       and now >= self.start_at + sent * self.interval
                       and (self.after is None or self.after.wait_acked(sent, 0))):
                    topic, payload, props = self.items[sent]
                    pid = sent % 65535 + 1
                    burst += raw.publish(topic, payload, qos=1, pid=pid, retain=True, version=5, properties=props)
                    pending[pid] = sent
                    sent += 1
                if burst:
                    c.send(bytes(burst))
                try:
                    p = c.recv(0.001)
                except TimeoutError:
                    continue
                if p.type != raw.PUBACK:
                    continue
                assert len(p.body) <= 2 or p.body[2] < 0x80, f"PUBACK reason {p.body[2]:#x}"
                with self.acked:
                    self._acked.add(pending.pop(struct.unpack_from(">H", p.body, 0)[0]))
                    while self.acked_upto in self._acked:
                        self._acked.discard(self.acked_upto)
                        self.acked_upto += 1
                    self.acked.notify_all()


def test_retained_expiry_sweep_never_deletes_a_fresh_retained_message(broker):
    """Issue 7 defect 7. 3,000 retained messages with a 1 s Message Expiry Interval, each
    replaced by a non-expiring one on its topic just after it expired, at a steady pace
    for 2.2 s: the 1 s expiry sweeps run while replacements are being written. Every
    topic must keep its fresh retained message, also after a restart."""
    groups = RETAINED_7 // GROUP_7
    topics = [f"race7/{g:02d}/{i:03d}" for g in range(groups) for i in range(GROUP_7)]
    publish_qos1(broker.port, [(f"zz7/{i // 100:03d}/{i % 100:02d}", b"filler", True, ()) for i in range(FILLER_7)],
                 version=5, window=32)
    interval = SPAN_7_S / RETAINED_7
    start = time.monotonic() + 0.05
    expiring = PacedStream(broker.port, [(t, b"expires", [(raw.P_MESSAGE_EXPIRY, 1)]) for t in topics],
                           start, interval)
    fresh = {t: f"fresh-{t}".encode() for t in topics}
    replacing = PacedStream(broker.port, [(t, fresh[t], ()) for t in topics], start + LAG_7_S, interval,
                            after=expiring)
    for stream in (expiring, replacing):
        stream.start()
    for stream in (expiring, replacing):
        stream.join(timeout=LAG_7_S + SPAN_7_S + 90)
        assert not stream.is_alive(), "a paced stream did not finish"
        assert stream.error is None, f"paced stream failed: {stream.error!r}"
    time.sleep(1.2)  # whatever the last sweep deletes has been applied

    def check(when):
        got = retained_payloads(broker.port, [f"race7/{g:02d}/+" for g in range(groups)])
        missing = sorted(t for t in topics if got.get(t) != fresh[t])
        assert not missing, (f"{when}: {len(missing)} of {RETAINED_7} fresh retained messages gone or stale, "
                             f"e.g. {[(t, got.get(t)) for t in missing[:5]]}")

    check("before restart")
    broker.restart()
    check("after restart")


# ------------------------------- 12. session present = 1 for a session that already ended

ROUNDS_12 = 20
CLIENTS_12 = 4  # clients doing it at the same moment in each round


def end_and_resume(port, cid, barrier):
    """One try of defect 12 for `cid`; returns a problem description or None."""
    topic = f"race12/{cid}"
    old, _ = v5(port, cid, clean=True)
    new = pub = None
    try:
        assert old.subscribe(1, [(topic, 1)]) == [1]
        new = raw.RawClient(port, version=5, timeout_s=WAIT_S)
        pub = raw.RawClient(port, version=4, timeout_s=WAIT_S)
        assert pub.connect(unique_id("r12pub"))["rc"] == 0
        barrier.wait(timeout=WAIT_S)
        old.send(disconnect_with_expiry(0))
        new.send(raw.connect(cid, version=5, clean=False, properties=PERSIST))
        ack = raw.parse_connack(new.recv_type(raw.CONNACK, WAIT_S), 5)
        assert ack["rc"] == 0, f"CONNACK {ack}"
        if ack["session_present"]:
            pub.send(raw.publish(topic, b"to-old-subscription", qos=1, pid=1))
            pub.recv_type(raw.PUBACK, WAIT_S)
            if b"to-old-subscription" not in read_acking(new, [b"to-old-subscription"], timeout_s=5):
                return "session present = 1 but its subscription delivers nothing"
        assert new.subscribe(2, [(topic, 1)]) == [1]
        pub.send(raw.publish(topic, b"to-new-subscription", qos=1, pid=2))
        pub.recv_type(raw.PUBACK, WAIT_S)
        if b"to-new-subscription" not in read_acking(new, [b"to-new-subscription"], timeout_s=5):
            return f"session present {int(ack['session_present'])}: a new subscription delivers nothing"
        new.send(disconnect_with_expiry(0))
        return None
    finally:
        for c in (old, new, pub):
            if c is not None:
                c.close()


def test_session_present_matches_session_after_disconnect_expiry_0(broker):
    """Issue 7 defect 12. A v5 client ends its session (DISCONNECT, Session Expiry 0)
    and reconnects at once with Clean Start 0. CONNACK must be consistent with what the
    broker really holds [MQTT-3.2.2-3]: session present 0 (the session ended) and a new
    subscription works; were it 1, the old subscription would have to deliver.
    Several clients at once per round, beside two publishing threads, to widen the race."""
    results = {}

    def run(r, k, barrier):
        try:
            results[(r, k)] = end_and_resume(broker.port, unique_id(f"r12-{k}"), barrier)
        except Exception as e:  # reported below, with its round
            results[(r, k)] = f"error: {e!r}"

    with BackgroundLoad(broker.port, threads=2):
        for r in range(ROUNDS_12):
            if sum(1 for (rr, _), problem in results.items() if problem) >= 3:
                break  # enough to show it; each bad try waits out its delivery timeout
            barrier = threading.Barrier(CLIENTS_12)
            threads = [threading.Thread(target=run, args=(r, k, barrier), daemon=True) for k in range(CLIENTS_12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=30)
    failures = [f"round {r} client {k}: {problem}" for (r, k), problem in sorted(results.items()) if problem]
    assert not failures, (f"{len(failures)} of {len(results)} tries inconsistent:\n" + "\n".join(failures))
    assert len(results) == ROUNDS_12 * CLIENTS_12, "a try did not finish"
