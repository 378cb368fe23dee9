"""Reads on the store's reader pool (docs/ARCHITECTURE.md, "The reader pool"): what a
client sends behind a read keeps its order, as it did when the read was synchronous.

Each test writes several packets in one send, so the broker has them all before it
has answered the first, and checks the exact order of what comes back."""

import struct

import rawmqtt as raw
from helpers import unique_id

WAIT_S = 10


def unsubscribe(pid, topic):
    return raw.packet(raw.UNSUBSCRIBE, 0x02, struct.pack(">H", pid) + raw.utf8(topic))


def set_retained(port, topics):
    with raw.RawClient(port, timeout_s=WAIT_S) as pub:
        assert pub.connect(unique_id("rpub"), timeout_s=WAIT_S)["rc"] == 0
        for i, topic in enumerate(topics):
            pub.send(raw.publish(topic, f"kept{i}", qos=1, pid=i + 1, retain=True))
            assert pub.recv_type(raw.PUBACK, WAIT_S)
        pub.send(raw.disconnect())


def packets_until_pingresp(c):
    seen = []
    while True:
        p = c.recv(WAIT_S)
        if p.type == raw.PINGRESP:
            return seen
        seen.append(p)


def test_packets_behind_a_subscribe_wait_for_its_retained_messages(shared_broker):
    """SUBSCRIBE to topics with retained messages, UNSUBSCRIBE and PINGREQ in one
    write: SUBACK, every retained message, UNSUBACK, PINGRESP, in that order (the
    retained lookup runs on the reader pool; the UNSUBSCRIBE behind it waits)."""
    prefix = f"rp/{unique_id('s')}"
    topics = [f"{prefix}/{i}" for i in range(5)]
    set_retained(shared_broker.port, topics)
    for round_ in range(10):
        with raw.RawClient(shared_broker.port, timeout_s=WAIT_S) as c:
            assert c.connect(unique_id("rsub"), timeout_s=WAIT_S)["rc"] == 0
            c.send(raw.subscribe(1, [(f"{prefix}/#", 0)]) + unsubscribe(2, f"{prefix}/#") + raw.pingreq())
            seen = packets_until_pingresp(c)
            kinds = [p.type for p in seen]
            assert kinds == [raw.SUBACK] + [raw.PUBLISH] * 5 + [raw.UNSUBACK], f"round {round_}: {kinds}"
            got = sorted(raw.parse_publish(p, 4)["payload"] for p in seen if p.type == raw.PUBLISH)
            assert got == sorted(f"kept{i}".encode() for i in range(5))


def test_a_persistent_subscribe_stores_its_retained_messages_before_sending_them(shared_broker):
    """Persistent session, QoS 1: the retained messages are queued (they get packet
    ids from their queue seqs) and come after the SUBACK, which waits for the
    subscription to be durable (so a PINGRESP may come first, as it always could)."""
    prefix = f"rp/{unique_id('p')}"
    topics = [f"{prefix}/{i}" for i in range(3)]
    set_retained(shared_broker.port, topics)
    cid = unique_id("rpers")
    with raw.RawClient(shared_broker.port, timeout_s=WAIT_S) as c:
        assert c.connect(cid, clean=False, timeout_s=WAIT_S)["rc"] == 0
        c.send(raw.subscribe(1, [(f"{prefix}/#", 1)]) + raw.pingreq())
        seen = [p for p in (c.recv(WAIT_S) for _ in range(5)) if p.type != raw.PINGRESP]
        assert [p.type for p in seen] == [raw.SUBACK] + [raw.PUBLISH] * 3
        pubs = [raw.parse_publish(p, 4) for p in seen[1:]]
        assert all(m["qos"] == 1 and m["retain"] for m in pubs), pubs
        for m in pubs:
            c.send(raw.ack(raw.PUBACK, m["pid"]))
        c.send(raw.disconnect())
    # Acked: nothing is left to resend to the session.
    with raw.RawClient(shared_broker.port, timeout_s=WAIT_S) as c:
        assert c.connect(cid, clean=False, timeout_s=WAIT_S)["session_present"]
        c.send(raw.pingreq())
        assert packets_until_pingresp(c) == []
        c.send(raw.disconnect())


def test_a_resumed_queue_goes_out_before_the_answer_to_the_next_packet(shared_broker):
    """CONNECT and PINGREQ in one write to a session with messages queued: CONNACK,
    the queued messages, then PINGRESP (the first page is read on the reader pool
    before the channel takes the PINGREQ)."""
    topic = f"rp/{unique_id('q')}"
    cid = unique_id("rq")
    with raw.RawClient(shared_broker.port, timeout_s=WAIT_S) as c:
        assert c.connect(cid, clean=False, timeout_s=WAIT_S)["rc"] == 0
        assert c.subscribe(1, [(topic, 1)], timeout_s=WAIT_S) == [1]
        c.send(raw.disconnect())
    with raw.RawClient(shared_broker.port, timeout_s=WAIT_S) as pub:
        assert pub.connect(unique_id("rqpub"), timeout_s=WAIT_S)["rc"] == 0
        for i in range(20):
            pub.send(raw.publish(topic, f"q{i}", qos=1, pid=i + 1))
            assert pub.recv_type(raw.PUBACK, WAIT_S)
    with raw.RawClient(shared_broker.port, timeout_s=WAIT_S) as c:
        c.send(raw.connect(cid, clean=False) + raw.pingreq())
        ack = raw.parse_connack(c.recv(WAIT_S), 4)
        assert ack["session_present"] and ack["rc"] == 0
        seen = packets_until_pingresp(c)
        payloads = [raw.parse_publish(p, 4)["payload"] for p in seen if p.type == raw.PUBLISH]
        # The default window (max_inflight 32) holds all 20.
        assert payloads == [f"q{i}".encode() for i in range(20)], payloads
        c.send(raw.disconnect())


def test_a_queue_of_several_pages_drains_in_order_each_message_once(broker_factory):
    """2,600 QoS 1 messages queued (no queue limit) (two pages of 1,024 and part of a third; the next
    page is read while the current one goes out, and handed to the reader pool after
    the turn's PUBLISHes are written): a client acking as it reads gets each once, in
    order, without DUP, and a second connection finds nothing left to send."""
    broker = broker_factory({"zone.external.max_mqueue_len": 0})
    topic = f"rp/{unique_id('pages')}"
    cid = unique_id("rpages")
    count, chunk = 2600, 100
    with raw.RawClient(broker.port, timeout_s=WAIT_S) as c:
        assert c.connect(cid, clean=False, timeout_s=WAIT_S)["rc"] == 0
        assert c.subscribe(1, [(topic, 1)], timeout_s=WAIT_S) == [1]
        c.send(raw.disconnect())
    with raw.RawClient(broker.port, timeout_s=WAIT_S) as pub:
        assert pub.connect(unique_id("rpagespub"), timeout_s=WAIT_S)["rc"] == 0
        for start in range(0, count, chunk):
            pub.send(b"".join(raw.publish(topic, f"m{i}", qos=1, pid=i + 1) for i in range(start, start + chunk)))
            for _ in range(chunk):
                assert pub.recv_type(raw.PUBACK, WAIT_S)
        pub.send(raw.disconnect())
    with raw.RawClient(broker.port, timeout_s=WAIT_S) as c:
        assert c.connect(cid, clean=False, timeout_s=WAIT_S)["session_present"]
        got = []
        while len(got) < count:
            try:
                p = c.recv(WAIT_S)
            except TimeoutError:
                raise AssertionError(f"stalled after {len(got)} of {count}")
            assert p.type == raw.PUBLISH, p
            m = raw.parse_publish(p, 4)
            assert m["qos"] == 1 and not m["dup"], m
            got.append(m["payload"])
            c.send(raw.ack(raw.PUBACK, m["pid"]))
        assert got == [f"m{i}".encode() for i in range(count)]
        c.send(raw.disconnect())
    with raw.RawClient(broker.port, timeout_s=WAIT_S) as c:
        assert c.connect(cid, clean=False, timeout_s=WAIT_S)["session_present"]
        c.send(raw.pingreq())
        assert packets_until_pingresp(c) == []
        c.send(raw.disconnect())
