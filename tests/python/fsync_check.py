"""Ack-after-fsync, checked on an `strace -f` trace of the broker. Pure: lines in, verdicts out.

kill -9 cannot show a missing fsync (the page cache survives the process), so this reads
what the broker asked the kernel for. The trace must come from

    strace -f -tt -yy -xx -s 65536 -e trace=<reads,writes,fsync,fdatasync> -o FILE

`-yy` names each fd (a path, or `TCP:[local->peer]`), `-xx` prints every buffer as
`\\xHH` so the exact bytes are known, `-s` must be large enough that nothing a socket
carries is cut (a cut buffer is an error, never a guess).

**Order.** strace -f prints the events of all threads in the order it handles them. A
syscall that another thread's event interrupts is printed in two parts,
`name(args <unfinished ...>` and later `<... name resumed>rest`; the rest holds the
result. A thread stopped at a syscall's exit is resumed only after strace has printed
that exit, so whatever the thread does next (hand a packet to the store writer, wake a
connection) is printed later. Line numbers are therefore a total order that respects
causality. Each syscall gets two positions: `entry`, the line that printed its start,
and `exit`, the line that printed its result (the same line when it was not split).

**The rule.** An acknowledgement that promises durability, carried by the write W that
holds its first byte, acknowledging the inbound packet P, whose last byte came with the
read R on the same socket, is correct only if some fdatasync/fsync S of a WAL file
returned 0 with `exit(R) < entry(S)` and `exit(S) < entry(W)`: the sync started after
the broker could know P and finished before any byte of the ack left. A sync that
started before P was read cannot cover it. The check is necessary, not sufficient: an
unrelated sync that happens to fall in between passes, which is why the test drives
one exchange at a time. A correct broker can never fail it.

Which acks promise what (docs/ARCHITECTURE.md, "Durability contract"):

| ack out (broker -> client) | acknowledges (client -> broker) | promises durability when |
|---|---|---|
| PUBACK / PUBREC | PUBLISH QoS 1 / QoS 2 | reason < 0x80 and `stored(publish)` |
| PUBCOMP | PUBREL | the session is persistent and the reason is Success |
| PUBREL | PUBREC (of our QoS 2 delivery) | the session is persistent and the reason is Success |
| SUBACK / UNSUBACK | SUBSCRIBE / UNSUBSCRIBE | the session is persistent and some filter succeeded |
| CONNACK | CONNECT | the session is persistent, session present = 1, rc 0 |

A session is persistent when its CONNECT had clean session 0 (MQTT 3.x) or a Session
Expiry Interval above 0 (MQTT 5).
"""

import bisect
import re
import struct
from dataclasses import dataclass, field

from rawmqtt import decode_varint

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
NAMES = {
    CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK",
    PUBREC: "PUBREC", PUBREL: "PUBREL", PUBCOMP: "PUBCOMP", SUBSCRIBE: "SUBSCRIBE",
    SUBACK: "SUBACK", UNSUBSCRIBE: "UNSUBSCRIBE", UNSUBACK: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}

READS = {"read", "readv", "recvfrom", "recvmsg", "pread64", "preadv", "preadv2"}
WRITES = {"write", "writev", "sendto", "sendmsg", "pwrite64", "pwritev", "pwritev2"}
SYNCS = {"fsync", "fdatasync"}

# A RocksDB WAL file: <db dir>/000123.log (the info log is called LOG, without digits).
WAL_FILE = re.compile(r"/\d+\.log$")


class TraceError(Exception):
    """The trace cannot be read exactly (wrong strace flags, cut buffers, bad bytes)."""


@dataclass
class Syscall:
    tid: int
    name: str
    fd: int | None
    target: str  # what -yy says the fd is: a path or "TCP:[a:p->b:q]"; "" if unknown
    data: bytes  # bytes moved: the first `ret` bytes of the buffers (I/O calls only)
    ret: int | None  # None when strace printed "?"
    entry: int  # line number (1-based) that printed the call's start
    exit: int  # line number that printed its result
    time: str  # timestamp of the result line
    text: str  # the call as one line, unfinished/resumed parts joined

    def where(self):
        at = f"line {self.exit}" if self.entry == self.exit else f"lines {self.entry}-{self.exit}"
        return f"{at} tid {self.tid} {self.time} {self.name}(fd {self.fd}) = {self.ret}"


# `1234 12:00:00.000001 rest`, `[pid  1234] 12:00:00.000001 rest`, or without pid / time.
_PREFIX = re.compile(
    r"^(?:\[pid\s+(?P<pid1>\d+)\]\s+|(?P<pid2>\d+)\s+)?"
    r"(?:(?P<time>\d\d:\d\d:\d\d(?:\.\d+)?|\d+\.\d+)\s+)?(?P<rest>.*)$"
)
_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>(?P<rest>.*)$")
_CALL = re.compile(r"^(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>-?\d+|\?|0x[0-9a-fA-F]+)(?P<tail>.*)$")
_FD = re.compile(r"^(?P<fd>\d+)(?:<(?P<target>[A-Za-z0-9-]+:\[[^\]]*\]|[^>]*)>)?")
_STRING = re.compile(r'"(?P<body>[^"]*)"(?P<cut>\.\.\.)?')
_HEX = re.compile(r"(?:\\x[0-9a-fA-F]{2})*")


def _unhex(body, what):
    if not _HEX.fullmatch(body):
        raise TraceError(f"{what}: not in \\xHH form (run strace with -xx): {body[:60]!r}")
    return bytes.fromhex(body.replace("\\x", ""))


def _target(raw):
    if raw is None:
        return ""
    if "\\x" in raw:
        return _unhex(raw, "fd path").decode("utf-8", "surrogateescape")
    return raw


def _call(text, tid, entry, exit_, time):
    m = _CALL.match(text)
    if not m:
        return None
    name, args = m["name"], m["args"]
    ret = None if m["ret"] == "?" else int(m["ret"], 0)
    fd_m = _FD.match(args)
    fd = int(fd_m["fd"]) if fd_m else None
    target = _target(fd_m["target"]) if fd_m else ""
    data = b""
    if name in READS or name in WRITES:
        chunks = []
        for s in _STRING.finditer(args):
            if s["cut"]:
                raise TraceError(f"line {exit_}: {name} buffer cut by strace (raise -s): {text[:120]}")
            chunks.append(_unhex(s["body"], f"line {exit_}"))
        data = b"".join(chunks)[: max(ret or 0, 0)]
        if ret is not None and ret > 0 and len(data) != ret:
            raise TraceError(f"line {exit_}: {name} returned {ret} but shows {len(data)} bytes")
    return Syscall(tid, name, fd, target, data, ret, entry, exit_, time, text)


def parse_trace(lines):
    """Syscalls in the order of their results, unfinished/resumed pairs joined per thread."""
    calls = []
    pending = {}  # tid -> (entry line, text so far, name)
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\n")
        m = _PREFIX.match(line)
        tid = int(m["pid1"] or m["pid2"] or 0)
        time = m["time"] or ""
        rest = m["rest"]
        if rest.startswith(("+++", "---")) or not rest:
            continue  # exits and signals
        if rest.endswith(_UNFINISHED):
            head = rest[: -len(_UNFINISHED)]
            name = head.split("(", 1)[0]
            if tid in pending:
                raise TraceError(f"line {number}: thread {tid} starts {name} while {pending[tid][2]} is unfinished")
            pending[tid] = (number, head, name)
            continue
        resumed = _RESUMED.match(rest)
        if resumed:
            started = pending.pop(tid, None)
            if started is None or started[2] != resumed["name"]:
                raise TraceError(f"line {number}: {resumed['name']} resumed on thread {tid} without its start")
            entry, head, _ = started
            call = _call(head + resumed["rest"], tid, entry, number, time)
        else:
            call = _call(rest, tid, number, number, time)
        if call is not None:
            calls.append(call)
    return calls


# -- MQTT packets in a byte stream --------------------------------------------------------


@dataclass
class Packet:
    type: int
    flags: int
    body: bytes
    start: int  # offset of the first byte in its direction's stream
    end: int  # offset one past the last byte
    carried_by: Syscall = None  # set by Stream: first byte (outbound) / last byte (inbound)

    @property
    def name(self):
        return NAMES.get(self.type, f"type {self.type}")

    def packet_id(self):
        if self.type == PUBLISH:
            if not self.qos:
                return None
            (n,) = struct.unpack_from(">H", self.body, 0)
            return struct.unpack_from(">H", self.body, 2 + n)[0]
        if self.type in (PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK):
            return struct.unpack_from(">H", self.body, 0)[0]
        return None

    @property
    def qos(self):
        return (self.flags >> 1) & 3

    def topic(self):
        (n,) = struct.unpack_from(">H", self.body, 0)
        return self.body[2 : 2 + n].decode("utf-8", "replace")


def decode_packets(data):
    """Whole MQTT packets in `data`, in order; an incomplete tail is left out."""
    out, pos = [], 0
    while pos + 2 <= len(data):
        length, mult, i = 0, 1, pos + 1
        while True:
            if i >= len(data):
                return out
            byte = data[i]
            length += (byte & 0x7F) * mult
            i += 1
            if not byte & 0x80:
                break
            mult *= 128
            if i - pos > 4:
                raise TraceError(f"malformed remaining length at stream offset {pos}")
        if i + length > len(data):
            return out
        out.append(Packet(data[pos] >> 4, data[pos] & 0x0F, bytes(data[i : i + length]), pos, i + length))
        pos = i + length
    return out


class Stream:
    """One direction of one socket: the bytes in order, and which syscall moved each."""

    def __init__(self):
        self.data = bytearray()
        self.starts = []  # stream offset where each call's bytes begin
        self.calls = []

    def add(self, call):
        if call.data:
            self.starts.append(len(self.data))
            self.calls.append(call)
            self.data += call.data

    def call_at(self, offset):
        return self.calls[bisect.bisect_right(self.starts, offset) - 1]

    def packets(self, inbound):
        """Packets with `carried_by`: the read with the last byte (inbound: only then can the
        broker act on it), the write with the first byte (outbound: no byte of an ack may
        leave early)."""
        found = decode_packets(self.data)
        for p in found:
            p.carried_by = self.call_at(p.end - 1 if inbound else p.start)
        return found


_TCP = re.compile(r"^TCP:\[(?P<local>[^\]]*?):(?P<lport>\d+)->(?P<peer>.*)\]$")


@dataclass
class Connection:
    target: str
    inbound: Stream = field(default_factory=Stream)
    outbound: Stream = field(default_factory=Stream)
    client_id: str = ""
    level: int = 4
    persistent: bool = False


def connections(calls, ports):
    """Client connections to the broker's listener `ports`, keyed by their -yy name.

    The name (`TCP:[127.0.0.1:1883->127.0.0.1:40312]`) outlives fd reuse; a peer port
    is not reused within one short test run."""
    conns = {}
    for call in calls:
        m = _TCP.match(call.target)
        if not m or int(m["lport"]) not in ports:
            continue
        conn = conns.setdefault(call.target, Connection(call.target))
        if call.name in READS:
            conn.inbound.add(call)
        elif call.name in WRITES:
            conn.outbound.add(call)
    return conns


def parse_connect(body):
    """(protocol level, clean flag, session expiry, client id) of a CONNECT body."""
    (n,) = struct.unpack_from(">H", body, 0)
    pos = 2 + n
    level, flags = body[pos], body[pos + 1]
    pos += 4  # level, flags, keepalive
    expiry = 0
    if level == 5:
        plen, pos = _varint(body, pos)
        end = pos + plen
        expiry = _find_u32_property(body[pos:end], 0x11) or 0
        pos = end
    (n,) = struct.unpack_from(">H", body, pos)
    client_id = body[pos + 2 : pos + 2 + n].decode("utf-8", "replace")
    return level, bool(flags & 0x02), expiry, client_id


def _varint(buf, pos):
    try:
        return decode_varint(buf, pos)
    except ValueError as e:
        raise TraceError(str(e)) from e


_PROP_SIZES = {0x01: 1, 0x17: 1, 0x19: 1, 0x24: 1, 0x25: 1, 0x28: 1, 0x29: 1, 0x2A: 1,
               0x13: 2, 0x21: 2, 0x22: 2, 0x23: 2, 0x02: 4, 0x11: 4, 0x18: 4, 0x27: 4}


def _find_u32_property(props, wanted):
    pos = 0
    while pos < len(props):
        pid, pos = _varint(props, pos)
        if pid == wanted:
            return struct.unpack_from(">I", props, pos)[0]
        if pid in _PROP_SIZES:
            pos += _PROP_SIZES[pid]
        elif pid == 0x0B:
            _, pos = _varint(props, pos)
        elif pid == 0x26:
            for _ in range(2):
                (n,) = struct.unpack_from(">H", props, pos)
                pos += 2 + n
        else:  # strings and binary data
            (n,) = struct.unpack_from(">H", props, pos)
            pos += 2 + n
    return None


def _reason(ack, level):
    """Reason code of PUBACK/PUBREC/PUBREL/PUBCOMP (absent: Success)."""
    return ack.body[2] if level == 5 and len(ack.body) > 2 else 0


def _suback_codes(ack, level):
    pos = 2
    if level == 5:
        plen, pos = _varint(ack.body, pos)
        pos += plen
    return list(ack.body[pos:])


# -- The check ------------------------------------------------------------------------------

# ack sent by the broker -> (what it acknowledges, QoS of a PUBLISH trigger)
TRIGGER = {
    PUBACK: (PUBLISH, 1),
    PUBREC: (PUBLISH, 2),
    PUBCOMP: (PUBREL, None),
    PUBREL: (PUBREC, None),
    SUBACK: (SUBSCRIBE, None),
    UNSUBACK: (UNSUBSCRIBE, None),
    CONNACK: (CONNECT, None),
}


@dataclass
class Verdict:
    """One acknowledgement that promises durability, and the WAL sync that covers it."""

    kind: str
    conn: Connection
    ack: Packet
    trigger: Packet
    sync: Syscall | None  # the first WAL sync that satisfies the rule, or None
    last_sync_before: Syscall | None  # for the message when there is none

    @property
    def ok(self):
        return self.sync is not None

    def describe(self):
        pid = self.ack.packet_id()
        head = (f"{self.kind}{'' if pid is None else f' id {pid}'} to {self.conn.client_id!r} "
                f"({self.conn.target})")
        read, write = self.trigger.carried_by, self.ack.carried_by
        lines = [f"  read  {self.trigger.name}: {read.where()}",
                 f"  write {self.kind}: {write.where()}"]
        if self.ok:
            return f"{head}: after WAL sync {self.sync.where()}\n" + "\n".join(lines)
        before = self.last_sync_before
        if before is None:
            lines.append("  no WAL sync returned before the write at all")
        else:
            lines.append(f"  last WAL sync before the write: {before.where()} "
                         f"(entered at line {before.entry}, not after line {read.exit})")
        return f"{head}: written with no WAL fsync between the read and the write\n" + "\n".join(lines)


@dataclass
class Report:
    verdicts: list  # one per ack that promises durability
    unmatched: list  # (Connection, Packet): acks with no trigger on their connection
    wal_syncs: list  # every fsync/fdatasync of a WAL file
    conns: dict

    def of_kind(self, kind):
        return [v for v in self.verdicts if v.kind == kind]


def _promises(ack, trigger, conn, stored):
    if ack.type in (PUBACK, PUBREC):
        return _reason(ack, conn.level) < 0x80 and stored(trigger)
    if ack.type in (PUBCOMP, PUBREL):
        return conn.persistent and _reason(ack, conn.level) == 0
    if ack.type == SUBACK:
        return conn.persistent and any(c < 0x80 for c in _suback_codes(ack, conn.level))
    if ack.type == UNSUBACK:
        return conn.persistent and (conn.level < 5 or 0 in _suback_codes(ack, conn.level))
    if ack.type == CONNACK:
        return conn.persistent and bool(ack.body[0] & 1) and ack.body[1] == 0
    return False


def check(calls, ports, is_wal=lambda path: bool(WAL_FILE.search(path)), stored=lambda publish: True):
    """Apply the rule to every durability-promising ack on connections to `ports`.

    `stored(publish_packet)` says whether a QoS 1/2 PUBLISH had to be stored (it has a
    persistent subscriber or is retained); the test knows its topics."""
    syncs = [c for c in calls if c.name in SYNCS and is_wal(c.target)]
    conns = connections(calls, ports)
    verdicts, unmatched = [], []
    for conn in conns.values():
        inbound = conn.inbound.packets(inbound=True)
        outbound = [p for p in conn.outbound.packets(inbound=False) if p.type in TRIGGER]
        if inbound and inbound[0].type == CONNECT:
            level, clean, expiry, conn.client_id = parse_connect(inbound[0].body)
            conn.level = level
            conn.persistent = expiry > 0 if level == 5 else not clean
        # Hand each ack the oldest not yet acknowledged trigger of its kind and packet id
        # that was read before the ack was written.
        waiting, next_in = {}, 0
        for ack in sorted(outbound, key=lambda p: p.carried_by.entry):
            while next_in < len(inbound) and inbound[next_in].carried_by.exit < ack.carried_by.entry:
                p = inbound[next_in]
                waiting.setdefault((p.type, p.qos if p.type == PUBLISH else None, p.packet_id()), []).append(p)
                next_in += 1
            trigger_type, qos = TRIGGER[ack.type]
            queue = waiting.get((trigger_type, qos, ack.packet_id()))
            if not queue:
                unmatched.append((conn, ack))
                continue
            trigger = queue.pop(0)
            if not _promises(ack, trigger, conn, stored):
                continue
            read_exit, write_entry = trigger.carried_by.exit, ack.carried_by.entry
            covering = [s for s in syncs if s.ret == 0 and s.entry > read_exit and s.exit < write_entry]
            before = [s for s in syncs if s.exit < write_entry]
            verdicts.append(Verdict(NAMES[ack.type], conn, ack, trigger,
                                    covering[0] if covering else None,
                                    before[-1] if before else None))
    return Report(verdicts, unmatched, syncs, conns)
