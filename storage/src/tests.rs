//! Store behaviour through its public API, on a real RocksDB in a temp dir.

use std::sync::mpsc;
use std::sync::Arc;

use bytes::Bytes;

use crate::*;

fn msg(topic: &str, payload: &[u8]) -> StoredMessage {
    StoredMessage {
        publish_ms: 1,
        expiry_ms: 0,
        qos: 1,
        retain: false,
        from: "pub".into(),
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload),
        properties: Bytes::new(),
    }
}

fn entry(msg_id: u64) -> QueueEntry {
    QueueEntry {
        msg_id,
        qos: 1,
        retain: false,
        released: false,
        subscription_ids: vec![],
        inline: None,
    }
}

/// A message stored once and queued for each of `clients` (queues bounded at `max_len`).
/// The session record of incarnation `incarnation` for `client`.
fn session(client: &ClientId, incarnation: u64) -> Op {
    Op::PutSession {
        client: client.clone(),
        record: SessionRecord {
            protocol_level: 4,
            expiry_interval_s: 60,
            incarnation,
            ..SessionRecord::default()
        },
    }
}

/// Queue `entry` for the first incarnation of `client`'s session.
fn enqueue(client: &ClientId, entry: QueueEntry, max_len: u64) -> Op {
    Op::Enqueue {
        client: client.clone(),
        incarnation: 1,
        entry,
        max_len,
    }
}

/// A message stored once and queued for each of `clients` (queues bounded at
/// `max_len`), whose sessions (incarnation 1) are written first.
fn publish_to(id: u64, msg: StoredMessage, clients: &[&ClientId], max_len: u64) -> Vec<Op> {
    let mut ops: Vec<Op> = clients.iter().map(|client| session(client, 1)).collect();
    ops.push(Op::Message { id, msg });
    ops.extend(
        clients
            .iter()
            .map(|client| enqueue(client, entry(id), max_len)),
    );
    ops
}

fn submit(store: &Store, ops: Vec<Op>) -> Result<Enqueued> {
    let (tx, rx) = mpsc::channel();
    store.writer().submit(
        ops,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv().expect("writer answers")
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreConfig::default()).expect("open store")
}

#[test]
fn a_message_is_written_once_and_deleted_after_the_last_ack() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a: ClientId = Arc::from("a");
    let b: ClientId = Arc::from("b");
    let id = store.next_msg_id();
    let seqs = submit(&store, publish_to(id, msg("t/1", b"hello"), &[&a, &b], 0)).unwrap();
    assert_eq!(seqs, vec![Some(0), Some(0)]);
    assert_eq!(store.queue_range("a", 0, 10).unwrap().len(), 1);
    assert_eq!(
        store.messages(&[id]).unwrap()[0].as_ref().unwrap().payload,
        &b"hello"[..]
    );

    submit(&store, vec![Op::Ack { client: a, seq: 0 }]).unwrap();
    assert!(
        store.messages(&[id]).unwrap()[0].is_some(),
        "b still holds it"
    );
    submit(&store, vec![Op::Ack { client: b, seq: 0 }]).unwrap();
    assert!(
        store.messages(&[id]).unwrap()[0].is_none(),
        "no reference left"
    );
}

#[test]
fn an_unreferenced_message_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let id = store.next_msg_id();
    let a: ClientId = Arc::from("a");
    let r = submit(&store, publish_to(id, msg("t", b"x"), &[&a], 0)).unwrap();
    assert_eq!(r, vec![Some(0)]);
    // Queue of max 1 is full now: the next delivery is dropped and its message not kept.
    let id2 = store.next_msg_id();
    let r = submit(&store, publish_to(id2, msg("t", b"y"), &[&a], 1)).unwrap();
    assert_eq!(r, vec![None]);
    assert!(store.messages(&[id2]).unwrap()[0].is_none());
}

#[test]
fn sequences_and_references_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let a: ClientId = Arc::from("dev");
    let id;
    {
        let store = open(dir.path());
        id = store.next_msg_id();
        let mut ops = vec![
            session(&a, 1),
            Op::Message {
                id,
                msg: msg("t", b"x"),
            },
        ];
        for _ in 0..3 {
            ops.push(enqueue(&a, entry(id), 0));
        }
        assert_eq!(
            submit(&store, ops).unwrap(),
            vec![Some(0), Some(1), Some(2)]
        );
        // Dropping the last handle stops the writer and releases the database.
        drop(store);
    }
    let store = open(dir.path());
    assert!(
        store.next_msg_id() > id,
        "ids are not reused while referenced"
    );
    let r = submit(&store, vec![enqueue(&a, entry(id), 0)]).unwrap();
    assert_eq!(r, vec![Some(3)], "next seq continues after reopen");
    // Four references now (3 + 1); acking all four deletes the message.
    for seq in 0..4 {
        submit(
            &store,
            vec![Op::Ack {
                client: a.clone(),
                seq,
            }],
        )
        .unwrap();
    }
    assert!(store.messages(&[id]).unwrap()[0].is_none());
    assert!(store.queue_range("dev", 0, 10).unwrap().is_empty());
}

#[test]
fn deleting_a_session_releases_its_queue_and_subscriptions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a: ClientId = Arc::from("a");
    let id = store.next_msg_id();
    submit(
        &store,
        vec![
            session(&a, 1),
            Op::PutSubscription {
                client: a.clone(),
                filter: "t/#".into(),
                record: SubscriptionRecord::default(),
            },
            Op::PutAwaitingRel {
                client: a.clone(),
                packet_id: 7,
            },
            Op::Message {
                id,
                msg: msg("t/1", b"x"),
            },
            enqueue(&a, entry(id), 0),
        ],
    )
    .unwrap();
    assert_eq!(store.awaiting_rel("a").unwrap(), vec![7]);
    assert_eq!(store.subscriptions().unwrap().len(), 1);
    submit(&store, vec![Op::DeleteSession { client: a }]).unwrap();
    assert!(store.sessions().unwrap().is_empty());
    assert!(store.subscriptions().unwrap().is_empty());
    assert!(store.awaiting_rel("a").unwrap().is_empty());
    assert!(store.queue_range("a", 0, 10).unwrap().is_empty());
    assert!(store.messages(&[id]).unwrap()[0].is_none());
    assert_eq!(store.check_invariants().unwrap(), Vec::<String>::new());
}

#[test]
fn released_entries_keep_their_slot_but_not_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a: ClientId = Arc::from("a");
    let id = store.next_msg_id();
    submit(&store, publish_to(id, msg("t", b"x"), &[&a], 0)).unwrap();
    let released = QueueEntry {
        released: true,
        ..entry(id)
    };
    submit(
        &store,
        vec![Op::Release {
            client: a.clone(),
            seq: 0,
            entry: released.clone(),
        }],
    )
    .unwrap();
    assert!(store.messages(&[id]).unwrap()[0].is_none());
    assert_eq!(store.queue_range("a", 0, 10).unwrap(), vec![(0, released)]);
    submit(&store, vec![Op::Ack { client: a, seq: 0 }]).unwrap();
    assert!(store.queue_range("a", 0, 10).unwrap().is_empty());
}

#[test]
fn retained_messages_are_stored_listed_and_expired() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut expiring = msg("r/2", b"b");
    expiring.expiry_ms = 100;
    submit(
        &store,
        vec![
            Op::PutRetained {
                topic: Bytes::from_static(b"r/1"),
                msg: msg("r/1", b"a"),
            },
            Op::PutRetained {
                topic: Bytes::from_static(b"r/2"),
                msg: expiring,
            },
        ],
    )
    .unwrap();
    assert_eq!(store.retained_topics().unwrap().len(), 2);
    assert_eq!(
        store.expired_retained(150).unwrap(),
        vec![Bytes::from_static(b"r/2")]
    );
    submit(
        &store,
        vec![Op::DeleteRetained {
            topic: Bytes::from_static(b"r/1"),
        }],
    )
    .unwrap();
    assert!(store.retained(b"r/1").unwrap().is_none());
}

#[test]
fn compaction_reclaims_deleted_messages() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a: ClientId = Arc::from("a");
    // Incompressible bytes (xorshift), so LZ4 cannot hide the size.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let payload: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut ids = Vec::new();
    for _ in 0..2000 {
        let id = store.next_msg_id();
        ids.push(id);
        submit(&store, publish_to(id, msg("t", &payload), &[&a], 0)).unwrap();
    }
    store.compact().unwrap();
    let full = store.live_data_bytes();
    assert!(full > 2000 * 1024, "data written: {full}");
    submit(&store, vec![Op::DeleteSession { client: a }]).unwrap();
    store.compact().unwrap();
    let after = store.live_data_bytes();
    assert!(
        after < full / 10,
        "after delete + compact: {after} of {full}"
    );
}

#[test]
fn an_inline_message_lives_in_its_queue_entry_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a: ClientId = Arc::from("a");
    let id = store.next_msg_id();
    submit(&store, vec![session(&a, 1)]).unwrap();
    let inline = QueueEntry {
        inline: Some(msg("t", b"only copy")),
        ..entry(id)
    };
    let r = submit(&store, vec![enqueue(&a, inline.clone(), 0)]).unwrap();
    assert_eq!(r, vec![Some(0)]);
    assert!(
        store.messages(&[id]).unwrap()[0].is_none(),
        "not in the log"
    );
    assert_eq!(store.queue_range("a", 0, 10).unwrap(), vec![(0, inline)]);
    submit(&store, vec![Op::Ack { client: a, seq: 0 }]).unwrap();
    assert!(store.queue_range("a", 0, 10).unwrap().is_empty());
}

/// Three persistent sessions share one logged message; `a` holds it in a queue.
fn shared_by_three(store: &Store) -> (u64, [ClientId; 3]) {
    let clients: [ClientId; 3] = [Arc::from("a"), Arc::from("b"), Arc::from("c")];
    let id = store.next_msg_id();
    let [a, b, c] = &clients;
    submit(store, publish_to(id, msg("t", b"shared"), &[a, b, c], 0)).unwrap();
    (id, clients)
}

#[test]
fn an_ack_and_the_end_of_its_session_in_one_batch_release_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (id, [a, b, _]) = shared_by_three(&store);
    // `a` acks its copy and its session ends in the same batch (clean-start
    // reconnect): its reference goes once, not once per op.
    submit(
        &store,
        vec![
            Op::Ack {
                client: a.clone(),
                seq: 0,
            },
            Op::DeleteSession { client: a },
        ],
    )
    .unwrap();
    assert!(
        store.messages(&[id]).unwrap()[0].is_some(),
        "b and c still hold the message"
    );
    assert_eq!(store.queue_range("b", 0, 10).unwrap().len(), 1);
    drop(store);
    let store = open(dir.path());
    submit(&store, vec![Op::Ack { client: b, seq: 0 }]).unwrap();
    assert!(
        store.messages(&[id]).unwrap()[0].is_some(),
        "c still holds the message after a reopen and b's ack"
    );
    assert_eq!(store.check_invariants().unwrap(), Vec::<String>::new());
}

#[test]
fn the_last_release_of_a_shared_message_leaves_no_count_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (id, clients) = shared_by_three(&store);
    // One ack per batch: the count goes 3, 2, 1 (no key), 0 (no message).
    for client in &clients {
        submit(
            &store,
            vec![Op::Ack {
                client: client.clone(),
                seq: 0,
            }],
        )
        .unwrap();
        assert_eq!(store.check_invariants().unwrap(), Vec::<String>::new());
    }
    assert!(store.messages(&[id]).unwrap()[0].is_none());
}

#[test]
fn acks_and_releases_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (id, [a, b, c]) = shared_by_three(&store);
    let ack = |client: &ClientId| Op::Ack {
        client: client.clone(),
        seq: 0,
    };
    let release = |client: &ClientId| Op::Release {
        client: client.clone(),
        seq: 0,
        entry: QueueEntry {
            released: true,
            ..entry(id)
        },
    };
    // Twice in one batch, then again in a later one: each counts once.
    submit(&store, vec![ack(&a), ack(&a)]).unwrap();
    submit(&store, vec![ack(&a)]).unwrap();
    submit(&store, vec![release(&b), release(&b)]).unwrap();
    submit(&store, vec![release(&b), ack(&b), ack(&b)]).unwrap();
    assert!(store.messages(&[id]).unwrap()[0].is_some(), "c holds it");
    assert_eq!(store.queue_range("c", 0, 10).unwrap().len(), 1);
    submit(&store, vec![ack(&c)]).unwrap();
    assert!(
        store.messages(&[id]).unwrap()[0].is_none(),
        "last reference"
    );
    // An ack after the session is gone, and a delete of a deleted session.
    submit(
        &store,
        vec![
            Op::DeleteSession { client: c.clone() },
            ack(&c),
            Op::DeleteSession { client: c },
        ],
    )
    .unwrap();
    assert_eq!(store.check_invariants().unwrap(), Vec::<String>::new());
}

#[test]
fn a_session_deleted_in_the_batch_that_enqueued_to_it_releases_its_new_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (id, [a, b, _]) = shared_by_three(&store);
    let id2 = store.next_msg_id();
    let mut ops = publish_to(id2, msg("t", b"second"), &[&a, &b], 0);
    ops.push(Op::Ack {
        client: a.clone(),
        seq: 1,
    });
    ops.push(Op::DeleteSession { client: a.clone() });
    // The session comes back in the same batch and gets a new entry; one routed to
    // its earlier incarnation is refused.
    ops.push(session(&a, 2));
    ops.push(enqueue(&a, entry(id2), 0));
    ops.push(Op::Enqueue {
        client: a.clone(),
        incarnation: 2,
        entry: entry(id2),
        max_len: 0,
    });
    let seqs = submit(&store, ops).unwrap();
    assert_eq!(seqs[2], None, "routed to the ended incarnation");
    let queue = store.queue_range("a", 0, 10).unwrap();
    assert_eq!(queue.len(), 1, "only the entry after the delete: {queue:?}");
    assert!(queue[0].0 >= 2, "seqs keep rising after a delete");
    submit(
        &store,
        vec![
            Op::Ack {
                client: b.clone(),
                seq: 1,
            },
            Op::Ack {
                client: a,
                seq: queue[0].0,
            },
        ],
    )
    .unwrap();
    assert!(store.messages(&[id2]).unwrap()[0].is_none());
    assert!(store.messages(&[id]).unwrap()[0].is_some());
}

#[test]
fn a_failed_request_leaves_no_trace_and_spares_its_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (id, [a, b, _]) = shared_by_three(&store);
    // A client id too long for a key fails the request after earlier ops of it
    // were applied: the ack, the subscription and the enqueue must not land.
    let too_long: ClientId = Arc::from("x".repeat(70_000).as_str());
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    store.writer().submit(
        vec![
            Op::Ack {
                client: a.clone(),
                seq: 0,
            },
            Op::PutSubscription {
                client: a.clone(),
                filter: "f/#".into(),
                record: SubscriptionRecord::default(),
            },
            enqueue(&a, entry(id), 0),
            Op::PutAwaitingRel {
                client: too_long,
                packet_id: 1,
            },
        ],
        Box::new(move |r| tx.send(("bad", r.is_ok())).unwrap()),
    );
    store.writer().submit(
        vec![Op::Ack {
            client: b.clone(),
            seq: 0,
        }],
        Box::new(move |r| tx2.send(("good", r.is_ok())).unwrap()),
    );
    let mut answers: Vec<_> = rx.iter().take(2).collect();
    answers.sort();
    assert_eq!(answers, vec![("bad", false), ("good", true)]);
    assert!(store.subscriptions().unwrap().is_empty());
    assert_eq!(
        store.queue_range("a", 0, 10).unwrap().len(),
        1,
        "a's ack undone"
    );
    assert!(
        store.queue_range("b", 0, 10).unwrap().is_empty(),
        "b's ack kept"
    );
    // References: a and c still hold the message; two acks delete it.
    for client in [&a, &Arc::from("c")] {
        assert!(store.messages(&[id]).unwrap()[0].is_some());
        submit(
            &store,
            vec![Op::Ack {
                client: client.clone(),
                seq: 0,
            }],
        )
        .unwrap();
    }
    assert!(store.messages(&[id]).unwrap()[0].is_none());
}

/// `n` messages queued for `client`, seqs 0..n.
fn publish_n(store: &Store, client: &ClientId, n: u64) {
    for _ in 0..n {
        let id = store.next_msg_id();
        submit(store, publish_to(id, msg("t", b"x"), &[client], 0)).unwrap();
    }
}

/// Ack seqs 0..n of `client`, in one request.
fn ack_all(store: &Store, client: &ClientId, n: u64) {
    let acks = (0..n)
        .map(|seq| Op::Ack {
            client: client.clone(),
            seq,
        })
        .collect();
    submit(store, acks).unwrap();
}

#[test]
fn seqs_do_not_start_over_when_a_queue_drains_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let a: ClientId = Arc::from("a");
    publish_n(&open(dir.path()), &a, 3);
    // After a restart the session has read seqs 0..3 and acks them all before the
    // next publish: that one must not get seq 0 again (the session is past it).
    let store = open(dir.path());
    ack_all(&store, &a, 3);
    let id = store.next_msg_id();
    let seqs = submit(&store, publish_to(id, msg("t", b"y"), &[&a], 0)).unwrap();
    assert_eq!(seqs, vec![Some(3)]);
}

#[test]
fn seqs_do_not_start_over_after_a_refused_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a: ClientId = Arc::from("a");
    publish_n(&store, &a, 3);
    ack_all(&store, &a, 3);
    // Someone else's request is refused and the writer reloads its counts.
    let too_long: ClientId = Arc::from("x".repeat(70_000).as_str());
    let refused = Op::PutAwaitingRel {
        client: too_long,
        packet_id: 1,
    };
    assert!(submit(&store, vec![refused]).is_err());
    let id = store.next_msg_id();
    let seqs = submit(&store, publish_to(id, msg("t", b"y"), &[&a], 0)).unwrap();
    assert_eq!(
        seqs,
        vec![Some(3)],
        "the online session's cursor is already at 3"
    );
}

/// The writer's batch logic over the simulated disk: what a crash keeps is a
/// consistent store, and the invariant checker sees a broken one.
#[test]
fn the_writer_core_over_the_simulated_disk_survives_a_crash_consistently() {
    use crate::backend::Backend;
    let mut core = WriterCore::new(sim::SimBackend::new(), true);
    let a: ClientId = Arc::from("a");
    let b: ClientId = Arc::from("b");
    let waited = |ops: Vec<Op>| WriteRequest { ops, waited: true };
    let detached = |ops: Vec<Op>| WriteRequest { ops, waited: false };
    let results = core.commit(&[waited(publish_to(1, msg("t", b"x"), &[&a, &b], 0))]);
    assert_eq!(results[0].as_ref().unwrap(), &vec![Some(0), Some(0)]);
    // An ack written without sync, then lost in a power failure.
    core.commit(&[detached(vec![Op::Ack {
        client: a.clone(),
        seq: 0,
    }])]);
    assert_eq!(
        read::queue_range(core.backend(), "a", 0, 10).unwrap().len(),
        0
    );
    assert_eq!(
        check_invariants(core.backend()).unwrap(),
        Vec::<String>::new()
    );
    let disk = core.into_backend().crash(0);
    assert_eq!(read::queue_range(&disk, "a", 0, 10).unwrap().len(), 1);
    assert_eq!(check_invariants(&disk).unwrap(), Vec::<String>::new());
    // A new writer (its memory lost) continues from the disk.
    let mut core = WriterCore::new(disk, true);
    core.commit(&[waited(vec![
        Op::Ack {
            client: a.clone(),
            seq: 0,
        },
        Op::DeleteSession { client: b.clone() },
    ])]);
    assert!(read::messages(core.backend(), &[1]).unwrap()[0].is_none());
    assert_eq!(
        check_invariants(core.backend()).unwrap(),
        Vec::<String>::new()
    );
    // Break it by hand: a reference count with no holder, an orphan queue entry.
    let disk = core.backend();
    let mut batch = sim::SimBatch::default();
    disk.put(
        &mut batch,
        keys::CF_MSGS,
        &keys::msg_key(9),
        &msg("t", b"y").encode(),
    )
    .unwrap();
    disk.put(
        &mut batch,
        keys::CF_QUEUE,
        &keys::queue_key("nobody", 3).unwrap(),
        &entry(9).encode(),
    )
    .unwrap();
    disk.put(
        &mut batch,
        keys::CF_REFS,
        &keys::msg_key(9),
        &2u32.to_be_bytes(),
    )
    .unwrap();
    disk.put(
        &mut batch,
        keys::CF_REFS,
        &keys::msg_key(10),
        &2u32.to_be_bytes(),
    )
    .unwrap();
    disk.write(batch, true).unwrap();
    let problems = check_invariants(disk).unwrap();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(problems[0].contains("without a session"), "{problems:?}");
    assert!(
        problems[1].contains("reference count 2, held by 1"),
        "{problems:?}"
    );
    assert!(
        problems[2].contains("message 10, which is gone"),
        "{problems:?}"
    );
}

/// An entry or a session record that cannot be decoded (a bug, a format change)
/// costs its own delivery, logged, and never fails the requests around it.
#[test]
fn an_undecodable_record_does_not_fail_the_requests_that_touch_it() {
    use crate::backend::Backend;
    let mut core = WriterCore::new(sim::SimBackend::new(), true);
    let a: ClientId = Arc::from("a");
    let b: ClientId = Arc::from("b");
    let waited = |ops: Vec<Op>| WriteRequest { ops, waited: true };
    core.commit(&[waited(publish_to(1, msg("t", b"x"), &[&a, &b], 0))]);
    // a's entry 0 and b's session record are garbage now.
    let disk = core.backend();
    let mut batch = sim::SimBatch::default();
    disk.put(
        &mut batch,
        keys::CF_QUEUE,
        &keys::queue_key("a", 0).unwrap(),
        b"\x09junk",
    )
    .unwrap();
    disk.put(&mut batch, keys::CF_SESSIONS, b"b", b"\x09junk")
        .unwrap();
    disk.write(batch, true).unwrap();
    let results = core.commit(&[waited(vec![Op::Ack {
        client: a.clone(),
        seq: 0,
    }])]);
    assert!(results[0].is_ok(), "{results:?}");
    assert!(read::queue_range(core.backend(), "a", 0, 10)
        .unwrap()
        .is_empty());
    // A publish to both: b's delivery is refused (no readable session), a's stands.
    let mut ops = vec![Op::Message {
        id: 2,
        msg: msg("t", b"y"),
    }];
    ops.extend([&a, &b].map(|c| enqueue(c, entry(2), 0)));
    let results = core.commit(&[waited(ops)]);
    assert_eq!(results[0].as_ref().unwrap(), &vec![Some(1), None]);
}

#[test]
fn an_unreferenced_ack_deletes_without_reading_and_stays_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a: ClientId = Arc::from("a");
    let id = store.next_msg_id();
    submit(&store, vec![session(&a, 1)]).unwrap();
    let inline = QueueEntry {
        inline: Some(msg("t", b"only copy")),
        ..entry(id)
    };
    assert_eq!(
        submit(&store, vec![enqueue(&a, inline, 0)]).unwrap(),
        vec![Some(0)]
    );
    let unref = || Op::AckUnreferenced {
        client: a.clone(),
        seq: 0,
    };
    submit(&store, vec![unref(), unref()]).unwrap();
    submit(&store, vec![unref()]).unwrap();
    assert!(store.queue_range("a", 0, 10).unwrap().is_empty());
    // Seqs go on after the drain.
    let id = store.next_msg_id();
    let seqs = submit(&store, publish_to(id, msg("t", b"y"), &[&a], 0)).unwrap();
    assert_eq!(seqs, vec![Some(1)]);
}

#[test]
fn queues_sharing_a_memtable_insert_hint_keep_exactly_their_entries() {
    // The queue column family keeps an insert hint per first 10 key bytes (the id's
    // length and up to 8 bytes of it): the first two clients share one, the third
    // has its own. Interleaved enqueues and acks, in and out of seq order, must
    // leave each queue exactly what it was not acked, before and after a reopen.
    let dir = tempfile::tempdir().unwrap();
    let clients: [ClientId; 3] = [
        Arc::from("bench-drain-0001"),
        Arc::from("bench-drain-0002"),
        Arc::from("other"),
    ];
    let n = 300u64;
    let store = open(dir.path());
    for _ in 0..n {
        let id = store.next_msg_id();
        let to: Vec<&ClientId> = clients.iter().collect();
        submit(&store, publish_to(id, msg("t", b"x"), &to, 0)).unwrap();
    }
    // Each batch acks for all three: client 0 its even seqs from the top down,
    // client 1 its odd seqs in order, client 2 every third seq.
    let mut expected: Vec<Vec<u64>> = vec![(0..n).collect(); 3];
    for round in 0..(n / 2) {
        let mut ops = Vec::new();
        let down = n - 2 - 2 * round;
        let up = 2 * round + 1;
        ops.push(Op::Ack {
            client: clients[0].clone(),
            seq: down,
        });
        ops.push(Op::Ack {
            client: clients[1].clone(),
            seq: up,
        });
        if round * 3 < n {
            ops.push(Op::Ack {
                client: clients[2].clone(),
                seq: round * 3,
            });
            expected[2].retain(|s| *s != round * 3);
        }
        expected[0].retain(|s| *s != down);
        expected[1].retain(|s| *s != up);
        submit(&store, ops).unwrap();
    }
    let check = |store: &Store| {
        for (client, want) in clients.iter().zip(&expected) {
            let got: Vec<u64> = store
                .queue_range(client, 0, 1000)
                .unwrap()
                .into_iter()
                .map(|(seq, _)| seq)
                .collect();
            assert_eq!(&got, want, "{client}");
        }
    };
    check(&store);
    drop(store);
    check(&open(dir.path()));
}

/// `write_durable` returns once the ops are durable (readable through a new handle
/// of the same store), an empty write is a barrier, and a stopped writer says so.
#[test]
fn write_durable_waits_for_its_ops_and_reports_a_stopped_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let a: ClientId = "a".into();
    rt.block_on(store.writer().write_durable(vec![session(&a, 7)]))
        .unwrap();
    assert_eq!(store.session("a").unwrap().unwrap().incarnation, 7);
    rt.block_on(store.writer().write_durable(Vec::new()))
        .unwrap();
    let writer = store.writer();
    store.shutdown();
    assert!(matches!(
        rt.block_on(writer.write_durable(vec![session(&a, 8)])),
        Err(StoreError::Closed)
    ));
}
