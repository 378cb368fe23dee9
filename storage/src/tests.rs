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
fn publish_to(id: u64, msg: StoredMessage, clients: &[&ClientId], max_len: u64) -> Vec<Op> {
    let mut ops = vec![Op::Message { id, msg }];
    ops.extend(clients.iter().map(|client| Op::Enqueue {
        client: (*client).clone(),
        entry: entry(id),
        max_len,
    }));
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

    submit(
        &store,
        vec![Op::Ack {
            client: a,
            seq: 0,
            msg_id: Some(id),
        }],
    )
    .unwrap();
    assert!(
        store.messages(&[id]).unwrap()[0].is_some(),
        "b still holds it"
    );
    submit(
        &store,
        vec![Op::Ack {
            client: b,
            seq: 0,
            msg_id: Some(id),
        }],
    )
    .unwrap();
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
        let mut ops = vec![Op::Message {
            id,
            msg: msg("t", b"x"),
        }];
        for _ in 0..3 {
            ops.push(Op::Enqueue {
                client: a.clone(),
                entry: entry(id),
                max_len: 0,
            });
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
    let r = submit(
        &store,
        vec![Op::Enqueue {
            client: a.clone(),
            entry: entry(id),
            max_len: 0,
        }],
    )
    .unwrap();
    assert_eq!(r, vec![Some(3)], "next seq continues after reopen");
    // Four references now (3 + 1); acking all four deletes the message.
    for seq in 0..4 {
        submit(
            &store,
            vec![Op::Ack {
                client: a.clone(),
                seq,
                msg_id: Some(id),
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
            Op::PutSession {
                client: a.clone(),
                record: SessionRecord {
                    protocol_level: 4,
                    expiry_interval_s: 60,
                    disconnected_ms: 0,
                    dup_below: 0,
                    zone: String::new(),
                },
            },
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
            Op::Enqueue {
                client: a.clone(),
                entry: entry(id),
                max_len: 0,
            },
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
            msg_id: Some(id),
        }],
    )
    .unwrap();
    assert!(store.messages(&[id]).unwrap()[0].is_none());
    assert_eq!(store.queue_range("a", 0, 10).unwrap(), vec![(0, released)]);
    submit(
        &store,
        vec![Op::Ack {
            client: a,
            seq: 0,
            msg_id: None,
        }],
    )
    .unwrap();
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
    let inline = QueueEntry {
        inline: Some(msg("t", b"only copy")),
        ..entry(id)
    };
    let r = submit(
        &store,
        vec![Op::Enqueue {
            client: a.clone(),
            entry: inline.clone(),
            max_len: 0,
        }],
    )
    .unwrap();
    assert_eq!(r, vec![Some(0)]);
    assert!(
        store.messages(&[id]).unwrap()[0].is_none(),
        "not in the log"
    );
    assert_eq!(store.queue_range("a", 0, 10).unwrap(), vec![(0, inline)]);
    submit(
        &store,
        vec![Op::Ack {
            client: a,
            seq: 0,
            msg_id: None,
        }],
    )
    .unwrap();
    assert!(store.queue_range("a", 0, 10).unwrap().is_empty());
}
