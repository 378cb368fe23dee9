"""The ack-after-fsync checker (fsync_check.py) on hand-made strace output.

Proves the checker before it judges the broker: a correct trace passes, an ack written
before its fsync fails, and unfinished/resumed lines put each syscall's start and end
where strace printed them.
"""

import struct

import pytest

import rawmqtt as raw
from fsync_check import TraceError, check, parse_trace

PORT = 1883
SOCK = f"TCP:[127.0.0.1:{PORT}->127.0.0.1:40001]"
OTHER = f"TCP:[127.0.0.1:{PORT}->127.0.0.1:40002]"
WAL = "/tmp/quay-x/data/db/000004.log"
MANIFEST = "/tmp/quay-x/data/db/MANIFEST-000005"
CONN_TID, WRITER_TID = 101, 102


def hx(data):
    return "".join(f"\\x{b:02x}" for b in data)


def fd(target, number=12):
    # -xx prints paths in hex too; socket names stay as they are.
    return f"{number}<{target if target.startswith('TCP:') else hx(target.encode())}>"


def connack(session_present):
    return bytes([0x20, 2, 1 if session_present else 0, 0])


def suback(pid, codes):
    return raw.packet(raw.SUBACK, 0, struct.pack(">H", pid) + bytes(codes))


class Trace:
    """strace -f -tt -yy -xx lines, built one event at a time."""

    def __init__(self):
        self.lines = []

    def add(self, tid, text):
        self.lines.append(f"{tid}  12:00:00.{len(self.lines) + 1:06d} {text}")
        return self

    def read(self, data, sock=SOCK, tid=CONN_TID):
        return self.add(tid, f'recvfrom({fd(sock)}, "{hx(data)}", 8192, 0, NULL, NULL) = {len(data)}')

    def write(self, data, sock=SOCK, tid=CONN_TID, ret=None):
        ret = len(data) if ret is None else ret
        return self.add(tid, f'sendto({fd(sock)}, "{hx(data)}", {len(data)}, MSG_NOSIGNAL, NULL, 0) = {ret}')

    def sync(self, path=WAL, tid=WRITER_TID, name="fdatasync"):
        self.add(tid, f'write({fd(path, 7)}, "{hx(b"wal record")}", 10) = 10')
        return self.add(tid, f"{name}({fd(path, 7)}) = 0")

    def report(self, **kwargs):
        return check(parse_trace(self.lines), {PORT}, **kwargs)


def persistent_session(trace, client_id="dev1", sock=SOCK):
    return trace.read(raw.connect(client_id, clean=False), sock).sync().write(connack(False), sock)


def only(report, kind):
    found = report.of_kind(kind)
    assert len(found) == 1, f"expected one {kind} verdict, got {[v.describe() for v in report.verdicts]}"
    return found[0]


def test_acks_written_after_a_wal_sync_pass():
    t = persistent_session(Trace())
    t.read(raw.subscribe(1, [("a/#", 1)])).sync().write(suback(1, [1]))
    t.read(raw.publish("a/b", b"x", qos=1, pid=7)).sync().write(raw.ack(raw.PUBACK, 7))
    t.read(raw.publish("a/b", b"y", qos=2, pid=8)).sync().write(raw.ack(raw.PUBREC, 8))
    t.read(raw.ack(raw.PUBREL, 8)).sync().write(raw.ack(raw.PUBCOMP, 8))
    report = t.report()
    assert [v.kind for v in report.verdicts] == ["SUBACK", "PUBACK", "PUBREC", "PUBCOMP"]
    assert all(v.ok for v in report.verdicts), [v.describe() for v in report.verdicts]
    assert report.conns[SOCK].client_id == "dev1" and report.conns[SOCK].persistent
    assert "after WAL sync" in only(report, "PUBACK").describe()
    # CONNACK of a new session (session present 0) promises nothing: no verdict.
    assert report.of_kind("CONNACK") == []


def test_an_ack_written_before_its_fsync_fails():
    t = persistent_session(Trace())
    t.read(raw.publish("a/b", b"x", qos=1, pid=7)).write(raw.ack(raw.PUBACK, 7)).sync()
    t.read(raw.ack(raw.PUBREL, 3)).write(raw.ack(raw.PUBCOMP, 3)).sync()
    report = t.report()
    puback, pubcomp = only(report, "PUBACK"), only(report, "PUBCOMP")
    assert not puback.ok and not pubcomp.ok
    text = pubcomp.describe()
    assert "PUBCOMP id 3 to 'dev1'" in text and "no WAL fsync between the read and the write" in text
    assert "read  PUBREL: line 9" in text and "write PUBCOMP: line 10" in text
    # The sync that does exist came before the PUBREL was read (the PUBACK's).
    assert "last WAL sync before the write: line 8" in text


def test_a_sync_that_started_before_the_read_does_not_count():
    # The writer enters fdatasync, the connection reads the PUBLISH meanwhile, the sync
    # returns, then the PUBACK goes out: the sync cannot hold a message not yet read.
    t = persistent_session(Trace())
    t.add(WRITER_TID, f"fdatasync({fd(WAL, 7)} <unfinished ...>")
    t.read(raw.publish("a/b", b"x", qos=1, pid=7))
    t.add(WRITER_TID, "<... fdatasync resumed>) = 0")
    t.write(raw.ack(raw.PUBACK, 7))
    report = t.report()
    verdict = only(report, "PUBACK")
    assert not verdict.ok
    sync = report.wal_syncs[-1]
    assert (sync.entry, sync.exit, sync.ret) == (5, 7, 0)
    assert "entered at line 5, not after line 6" in verdict.describe()


def test_unfinished_and_resumed_calls_are_placed_at_their_start_and_end():
    def run(sync_before_write_starts):
        t = persistent_session(Trace())
        publish = raw.publish("a/b", b"x", qos=1, pid=7)
        # The read starts, the writer thread interrupts it, the read returns.
        t.add(CONN_TID, f"recvfrom({fd(SOCK)},  <unfinished ...>")
        t.add(WRITER_TID, f'write({fd(WAL, 7)}, "{hx(b"old")}", 3) = 3')
        t.add(CONN_TID, f'<... recvfrom resumed>"{hx(publish)}", 8192, 0, NULL, NULL) = {len(publish)}')
        if sync_before_write_starts:
            t.sync()
        ack = raw.ack(raw.PUBACK, 7)
        t.add(CONN_TID, f'sendto({fd(SOCK)}, "{hx(ack)}", 4, MSG_NOSIGNAL, NULL, 0 <unfinished ...>')
        if not sync_before_write_starts:
            t.sync()  # returns while the PUBACK is already being written: too late
        t.add(CONN_TID, "<... sendto resumed>) = 4")
        return only(t.report(), "PUBACK")

    assert run(sync_before_write_starts=True).ok
    late = run(sync_before_write_starts=False)
    assert not late.ok
    assert late.trigger.carried_by.entry == 5 and late.trigger.carried_by.exit == 7
    assert late.ack.carried_by.entry == 8 and late.ack.carried_by.exit == 11


def test_a_resumed_line_without_its_start_is_an_error():
    with pytest.raises(TraceError, match="resumed on thread 5 without its start"):
        parse_trace(["5  12:00:00.000001 <... read resumed>\"\", 10) = 0"])


def test_packets_split_across_reads_and_batched_in_writes():
    t = persistent_session(Trace())
    publish = raw.publish("a/b", b"payload", qos=1, pid=9)
    t.read(publish[:5])
    t.sync()  # before the last byte arrived: cannot cover the message
    t.read(publish[5:] + raw.pingreq())
    ack = raw.ack(raw.PUBACK, 9)
    # One writev carries the PUBACK and a delivery; a partial sendto before it moved 0 bytes.
    t.write(ack, ret=-1)
    delivery = raw.publish("x", b"d", qos=0)
    t.add(CONN_TID, f'writev({fd(SOCK)}, [{{iov_base="{hx(ack)}", iov_len=4}}, '
                    f'{{iov_base="{hx(delivery)}", iov_len={len(delivery)}}}], 2) = {4 + len(delivery)}')
    verdict = only(t.report(), "PUBACK")
    assert not verdict.ok
    assert verdict.trigger.carried_by.exit == 8  # the second read holds the last byte
    assert verdict.ack.carried_by.name == "writev"


def test_only_wal_syncs_count():
    t = persistent_session(Trace())
    t.read(raw.publish("a/b", b"x", qos=1, pid=7)).sync(path=MANIFEST).write(raw.ack(raw.PUBACK, 7))
    assert not only(t.report(), "PUBACK").ok
    t = persistent_session(Trace())
    t.read(raw.publish("a/b", b"x", qos=1, pid=7)).sync(name="fsync").write(raw.ack(raw.PUBACK, 7))
    assert only(t.report(), "PUBACK").ok


def test_what_promises_durability():
    t = Trace()
    # A clean session: its PUBCOMP, SUBACK and CONNACK promise nothing.
    t.read(raw.connect("clean1", clean=True), OTHER).write(connack(False), OTHER)
    t.read(raw.ack(raw.PUBREL, 3), OTHER).write(raw.ack(raw.PUBCOMP, 3), OTHER)
    t.read(raw.subscribe(1, [("a", 1)]), OTHER).write(suback(1, [1]), OTHER)
    # A resumed persistent session: CONNACK with session present does; our PUBREL in
    # answer to its PUBREC does; a SUBACK refusing every filter does not; a PUBLISH the
    # test says needs no storage does not.
    t.read(raw.connect("dev1", clean=False)).write(connack(True))
    t.read(raw.ack(raw.PUBREC, 11)).write(raw.ack(raw.PUBREL, 11))
    t.read(raw.subscribe(2, [("$share/g/a", 1)])).write(suback(2, [0x80]))
    t.read(raw.publish("volatile/x", b"x", qos=1, pid=5)).write(raw.ack(raw.PUBACK, 5))
    report = t.report(stored=lambda publish: not publish.topic().startswith("volatile/"))
    assert sorted(v.kind for v in report.verdicts) == ["CONNACK", "PUBREL"]
    assert not any(v.ok for v in report.verdicts)


def test_v5_persistence_comes_from_session_expiry():
    t = Trace()
    t.read(raw.connect("v5a", version=5, clean=True, properties=[(raw.P_SESSION_EXPIRY, 60)]))
    t.write(bytes([0x20, 3, 0, 0, 0]))
    t.read(raw.ack(raw.PUBREL, 4)).write(raw.ack(raw.PUBCOMP, 4))
    report = t.report()
    assert report.conns[SOCK].persistent and report.conns[SOCK].level == 5
    assert not only(report, "PUBCOMP").ok


def test_an_ack_without_its_trigger_is_set_aside():
    # PUBREL resent after a reconnect answers a PUBREC read by an earlier connection.
    t = persistent_session(Trace())
    t.write(raw.ack(raw.PUBREL, 2))
    report = t.report()
    assert report.verdicts == []
    assert [p.name for _, p in report.unmatched] == ["PUBREL"]


def test_a_cut_buffer_is_an_error():
    line = f'1  12:00:00.000001 recvfrom({fd(SOCK)}, "\\x30\\x05"..., 8192, 0, NULL, NULL) = 7'
    with pytest.raises(TraceError, match="raise -s"):
        parse_trace([line])


def test_buffers_must_be_hex():
    line = f'1  12:00:00.000001 sendto({fd(SOCK)}, "@\\2\\0\\1", 4, 0, NULL, 0) = 4'
    with pytest.raises(TraceError, match="-xx"):
        parse_trace([line])
