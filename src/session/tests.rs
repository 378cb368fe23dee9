//! Session state machine tests: no sockets, no disk, a clock we move by hand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quay_storage::{Op, QueueEntry};

use super::*;
use crate::codec::QoS;
use crate::message::Message;

fn message(payload: &str, expiry_ms: u64) -> Arc<Message> {
    Arc::new(Message {
        topic: Bytes::from_static(b"t"),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: QoS::ExactlyOnce,
        retain: false,
        from: Arc::from("pub"),
        publish_ms: 0,
        expiry_ms,
        properties: Default::default(),
    })
}

fn volatile(payload: &str, qos: QoS) -> Outgoing {
    Outgoing {
        seq: None,
        msg_id: 0,
        msg: message(payload, 0),
        qos,
        retain: false,
        subscription_ids: vec![],
        resend: false,
        unreferenced: false,
    }
}

fn stored(seq: u64, qos: QoS) -> Outgoing {
    Outgoing {
        seq: Some(seq),
        msg_id: 100 + seq,
        ..volatile(&format!("m{seq}"), qos)
    }
}

fn config(max_inflight: u16, page_size: usize) -> SessionConfig {
    SessionConfig {
        max_inflight,
        retry_interval: Duration::from_secs(30),
        max_mqueue_len: 3,
        page_size,
    }
}

/// (packet id, dup, payload) of each PUBLISH action.
fn publishes(actions: &[Action]) -> Vec<(Option<u16>, bool, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish {
                packet_id,
                dup,
                out,
            } => Some((
                *packet_id,
                *dup,
                String::from_utf8_lossy(&out.msg.payload).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

fn acks(actions: &[Action]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Store(Op::Ack { seq, .. } | Op::AckUnreferenced { seq, .. }) => Some(*seq),
            _ => None,
        })
        .collect()
}

#[test]
fn the_inflight_window_holds_back_until_acked() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), false, 0, config(2, 16));
    assert!(s.attach(65535, now).is_empty());
    let mut sent = Vec::new();
    for p in ["a", "b", "c"] {
        sent.extend(publishes(
            &s.deliver_volatile(volatile(p, QoS::AtLeastOnce), now),
        ));
    }
    assert_eq!(
        sent,
        vec![(Some(1), false, "a".into()), (Some(2), false, "b".into())]
    );
    assert_eq!(s.pending_len(), 1);
    let next = s.on_puback(1, now);
    assert_eq!(publishes(&next), vec![(Some(3), false, "c".into())]);
    // An ack for an id not in flight changes nothing.
    assert!(s.on_puback(1, now).is_empty());
}

#[test]
fn receive_maximum_lowers_the_window() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), false, 0, config(32, 16));
    s.attach(1, now);
    let a = s.deliver_volatile(volatile("a", QoS::AtLeastOnce), now);
    let b = s.deliver_volatile(volatile("b", QoS::AtLeastOnce), now);
    assert_eq!(publishes(&a).len(), 1);
    assert!(publishes(&b).is_empty());
}

#[test]
fn unacked_messages_are_retried_with_dup_after_the_interval() {
    let t0 = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), false, 0, config(4, 16));
    s.attach(65535, t0);
    s.deliver_volatile(volatile("a", QoS::AtLeastOnce), t0);
    assert!(s.tick(t0 + Duration::from_secs(29)).is_empty());
    assert_eq!(s.next_timeout(), Some(t0 + Duration::from_secs(30)));
    let retry = s.tick(t0 + Duration::from_secs(30));
    assert_eq!(publishes(&retry), vec![(Some(1), true, "a".into())]);
    // And on reattach (reconnect), everything unacked goes again with DUP.
    let again = s.attach(65535, t0 + Duration::from_secs(31));
    assert_eq!(publishes(&again), vec![(Some(1), true, "a".into())]);
}

#[test]
fn qos2_outbound_releases_then_completes() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(4, 16));
    s.attach(65535, now);
    s.loaded(0, 16, vec![], now); // nothing stored yet: goes live at seq 0
    assert_eq!(s.cursor(), Cursor::Live { next: 0 });
    let sent = s.deliver_stored(stored(0, QoS::ExactlyOnce), now);
    assert_eq!(publishes(&sent), vec![(Some(1), false, "m0".into())]);
    let rec = s.on_pubrec(1, false, now).expect("known id");
    assert!(
        matches!(&rec[..], [Action::Release { packet_id: 1, op: Op::Release { seq: 0, entry, .. } }] if entry.released),
        "PUBREC asks for a durable release, no PUBREL yet: {rec:?}"
    );
    // Neither a repeated PUBREC, a retry nor a reattach sends PUBREL (or the
    // PUBLISH) before the release is durable.
    assert!(s.on_pubrec(1, false, now).expect("known id").is_empty());
    assert!(s.tick(now + Duration::from_secs(60)).is_empty());
    assert_eq!(s.next_timeout(), None);
    assert!(s.on_pubcomp(1, now).is_empty(), "PUBCOMP before PUBREL");
    assert!(s.on_pubrec(9, false, now).is_none(), "unknown id");
    let rel = s.released(1, now);
    assert!(matches!(&rel[..], [Action::PubRel(1)]), "{rel:?}");
    assert!(s.released(1, now).is_empty(), "once");
    let comp = s.on_pubcomp(1, now);
    assert_eq!(acks(&comp), vec![0]);
}

#[test]
fn qos2_outbound_to_a_volatile_session_sends_pubrel_at_once() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), false, 0, config(4, 16));
    s.attach(65535, now);
    let sent = s.deliver_volatile(volatile("v", QoS::ExactlyOnce), now);
    let id = publishes(&sent)[0].0.expect("QoS 2 has an id");
    let rec = s.on_pubrec(id, false, now).expect("known id");
    assert!(
        matches!(&rec[..], [Action::PubRel(i)] if *i == id),
        "{rec:?}"
    );
}

#[test]
fn a_persistent_session_pages_its_queue_from_the_store() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(2, 4));
    let first = s.attach(65535, now);
    assert!(matches!(
        first[..],
        [Action::LoadQueue { from: 0, limit: 4 }]
    ));
    let entry = |seq: u64, released: bool| PageEntry {
        msg: Some(message(&format!("m{seq}"), 0)),
        ..PageEntry::from_entry(
            seq,
            QueueEntry {
                msg_id: 100 + seq,
                qos: 1,
                retain: false,
                released,
                subscription_ids: vec![],
                inline: None,
            },
        )
    };
    // A full page: a released QoS2 entry (PUBREL again) and three to send.
    let page = vec![
        entry(5, true),
        entry(6, false),
        entry(7, false),
        entry(8, false),
    ];
    let actions = s.loaded(0, 4, page, now);
    assert!(
        actions.iter().any(|a| matches!(a, Action::PubRel(6))),
        "pid of seq 5 is 6"
    );
    // Window 2 is taken by the PUBREL and one PUBLISH.
    assert_eq!(publishes(&actions), vec![(Some(7), false, "m6".into())]);
    assert_eq!(
        s.cursor(),
        Cursor::Disk {
            from: 9,
            loading: false
        },
        "memory still half full"
    );
    // Deliveries arriving while in disk mode are left to the next page.
    assert!(publishes(&s.deliver_stored(stored(9, QoS::AtLeastOnce), now)).is_empty());
    let acked = s.on_puback(7, now);
    assert_eq!(acks(&acked), vec![6]);
    assert_eq!(publishes(&acked), vec![(Some(8), false, "m7".into())]);
    assert!(
        acked
            .iter()
            .any(|a| matches!(a, Action::LoadQueue { from: 9, .. })),
        "memory below half: read the next page"
    );
    let actions = s.loaded(9, 4, vec![entry(9, false)], now);
    assert!(publishes(&actions).is_empty(), "window still full");
    assert_eq!(s.cursor(), Cursor::Live { next: 10 });
    // A late duplicate of a loaded seq is ignored; the next seq is taken.
    s.deliver_stored(stored(9, QoS::AtLeastOnce), now);
    s.deliver_stored(stored(10, QoS::AtLeastOnce), now);
    assert_eq!(s.pending_len(), 3, "m8 m9 m10");
}

#[test]
fn live_overflow_falls_back_to_the_store() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(1, 2));
    s.attach(65535, now);
    s.loaded(0, 2, vec![], now);
    for seq in 0..3 {
        s.deliver_stored(stored(seq, QoS::AtLeastOnce), now);
    }
    // seq 0 in flight, seq 1 and 2 pending = page size; seq 3 overflows.
    let a = s.deliver_stored(stored(3, QoS::AtLeastOnce), now);
    assert!(publishes(&a).is_empty());
    assert_eq!(
        s.cursor(),
        Cursor::Disk {
            from: 3,
            loading: false
        }
    );
}

#[test]
fn a_stored_delivery_left_out_of_the_mailbox_is_read_from_the_store() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(4, 16));
    s.attach(65535, now);
    s.loaded(0, 16, vec![], now);
    s.deliver_stored(stored(0, QoS::AtLeastOnce), now);
    // seq 1 was the last publish and did not fit the mailbox: no later delivery
    // will show the gap, so being told is what reads it.
    let actions = s.behind(now);
    assert!(
        matches!(&actions[..], [Action::LoadQueue { from: 1, .. }]),
        "{actions:?}"
    );
    assert!(s.behind(now).is_empty(), "already reading from the store");
}

#[test]
fn a_qos0_delivery_never_pushes_out_a_stored_entry() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(1, 1024));
    s.attach(65535, now);
    s.loaded(0, 1024, vec![], now);
    for seq in 0..5 {
        s.deliver_stored(stored(seq, QoS::AtLeastOnce), now);
    }
    // max_mqueue_len is 3 and four stored entries wait: a QoS 0 delivery may only
    // push out volatile ones, never ack (delete) a stored one.
    for i in 0..5 {
        let actions = s.deliver_volatile(volatile(&format!("q{i}"), QoS::AtMostOnce), now);
        assert!(acks(&actions).is_empty(), "{actions:?}");
    }
}

#[test]
fn the_volatile_queue_drops_its_oldest_when_full() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), false, 0, config(1, 16));
    s.attach(65535, now);
    for p in ["a", "b", "c", "d"] {
        s.deliver_volatile(volatile(p, QoS::AtLeastOnce), now);
    }
    // "a" in flight; queue of 3 holds b c d; "e" pushes out "b".
    let dropped = s.deliver_volatile(volatile("e", QoS::AtLeastOnce), now);
    assert!(matches!(
        dropped[..],
        [Action::Dropped(DropReason::QueueFull, Some(_))]
    ));
    let next = s.on_puback(1, now);
    assert_eq!(publishes(&next), vec![(Some(2), false, "c".into())]);
}

#[test]
fn qos0_stored_entries_are_acked_when_sent() {
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(4, 16));
    s.attach(65535, now);
    s.loaded(0, 16, vec![], now);
    let actions = s.deliver_stored(stored(0, QoS::AtMostOnce), now);
    assert_eq!(publishes(&actions), vec![(None, false, "m0".into())]);
    assert_eq!(acks(&actions), vec![0]);
}

#[test]
fn seq_derived_packet_ids_wrap_and_wait_for_a_busy_id() {
    assert_eq!(packet_id_of_seq(0), 1);
    assert_eq!(packet_id_of_seq(65_534), 65_535);
    assert_eq!(packet_id_of_seq(65_535), 1);
    let now = Instant::now();
    let mut s = Outbound::new(Arc::from("c"), true, 0, config(4, 16));
    s.attach(65535, now);
    s.loaded(0, 16, vec![], now);
    s.deliver_stored(stored(0, QoS::AtLeastOnce), now);
    // Pretend seqs 1..65534 were acked; seq 65535 maps to id 1, still in flight.
    let mut s2 = s;
    s2.deliver_stored(stored(1, QoS::AtLeastOnce), now);
    assert_eq!(s2.inflight_len(), 2);
}

#[test]
fn inbound_qos2_ids_are_remembered_until_pubrel_or_timeout() {
    let t0 = Instant::now();
    let mut i = Inbound::new(2, [7], t0);
    assert_eq!(
        i.arrival(7),
        Qos2Arrival::Duplicate,
        "restored from the store"
    );
    assert_eq!(i.arrival(8), Qos2Arrival::New);
    i.record(8, t0);
    assert_eq!(i.arrival(9), Qos2Arrival::TooMany);
    assert_eq!(i.release(7), Release::First);
    assert_eq!(i.release(7), Release::Repeated, "held until its PUBCOMP");
    assert_eq!(i.arrival(7), Qos2Arrival::InUse);
    i.completed(7);
    assert_eq!(i.release(7), Release::Unknown);
    assert_eq!(
        i.expire(t0 + Duration::from_secs(10), Duration::from_secs(5)),
        vec![8]
    );
    assert!(i.is_empty());
}

#[test]
fn a_qos2_id_counts_against_receive_maximum_until_its_pubcomp_is_sent() {
    let t0 = Instant::now();
    // 0: no max_awaiting_rel (MQTT 5: Receive Maximum bounds the ids instead).
    let mut i = Inbound::new(0, [], t0);
    for id in 1..=3 {
        assert_eq!(i.arrival(id), Qos2Arrival::New);
        i.record(id, t0);
    }
    assert_eq!(i.quota_used(), 3);
    i.record(2, t0); // recording twice counts once
    assert_eq!(i.quota_used(), 3);
    assert_eq!(i.release(2), Release::First, "PUBREL");
    assert_eq!(
        i.release(2),
        Release::Repeated,
        "a repeated PUBREL finds it still held"
    );
    assert_eq!(i.quota_used(), 3, "PUBREL arrived, PUBCOMP not sent yet");
    assert!(i.is_counted(2));
    assert_eq!(
        i.arrival(2),
        Qos2Arrival::InUse,
        "not reusable before PUBCOMP"
    );
    i.completed(1);
    assert_eq!(
        i.quota_used(),
        3,
        "no PUBREL for 1 yet: completed is a no-op"
    );
    // Released ids wait for their PUBCOMP, not for the client: they do not expire.
    let later = t0 + Duration::from_secs(10);
    assert_eq!(i.expire(later, Duration::from_secs(5)), vec![1, 3]);
    assert_eq!(i.quota_used(), 1, "expired ids give their quota back");
    assert!(!i.is_empty());
    i.completed(2);
    assert_eq!(i.quota_used(), 0, "PUBCOMP sent");
    assert_eq!(i.arrival(2), Qos2Arrival::New, "the id is free again");
    i.completed(2);
    assert_eq!(i.quota_used(), 0, "completed twice frees once");
    assert!(i.is_empty());
}

#[test]
fn the_inbound_state_stays_small() {
    // It lives in every Connection, which must fit mimalloc's 512-byte class.
    assert!(std::mem::size_of::<Inbound>() <= 32);
}

#[test]
fn restored_qos2_ids_count_only_once_their_publish_is_resent() {
    let t0 = Instant::now();
    let mut i = Inbound::new(0, [5, 6], t0);
    assert_eq!(
        i.quota_used(),
        0,
        "a new connection starts with its full quota"
    );
    assert_eq!(i.arrival(5), Qos2Arrival::Duplicate);
    assert!(!i.is_counted(5));
    i.count(5);
    i.count(5);
    assert!(i.is_counted(5));
    assert_eq!(i.quota_used(), 1);
    // PUBREL for the uncounted one frees nothing it did not take; the id is held
    // until its PUBCOMP is sent (a crash before that must not lose a reuse of it).
    assert_eq!(i.release(6), Release::First);
    assert_eq!(i.arrival(6), Qos2Arrival::InUse);
    assert_eq!(i.quota_used(), 1);
    i.completed(6);
    assert_eq!(i.arrival(6), Qos2Arrival::New);
    assert_eq!(i.quota_used(), 1);
    assert_eq!(i.release(5), Release::First);
    assert_eq!(i.quota_used(), 1);
    i.completed(5);
    assert_eq!(i.quota_used(), 0);
    assert!(i.is_empty());
}

#[test]
fn entries_sent_by_an_earlier_connection_are_resent_with_dup() {
    let now = Instant::now();
    let mut first = Outbound::new(Arc::from("c"), true, 0, config(4, 16));
    first.attach(65535, now);
    first.loaded(0, 16, vec![], now);
    first.deliver_stored(stored(0, QoS::AtLeastOnce), now);
    assert_eq!(first.dup_below(), 1, "seq 0 was sent");
    // The next connection re-reads seq 0 (unacked) and a never-sent seq 1.
    let mut second = Outbound::new(Arc::from("c"), true, first.dup_below(), config(4, 16));
    second.attach(65535, now);
    let entry = |seq: u64| PageEntry {
        msg: Some(message(&format!("m{seq}"), 0)),
        ..PageEntry::from_entry(
            seq,
            QueueEntry {
                msg_id: 100 + seq,
                qos: 1,
                retain: false,
                released: false,
                subscription_ids: vec![],
                inline: None,
            },
        )
    };
    let actions = second.loaded(0, 16, vec![entry(0), entry(1)], now);
    assert_eq!(
        publishes(&actions),
        vec![(Some(1), true, "m0".into()), (Some(2), false, "m1".into())]
    );
}

#[test]
fn a_page_entry_carries_an_inline_message_and_leaves_a_logged_one_to_fill_in() {
    let stored = quay_storage::StoredMessage {
        publish_ms: 1,
        expiry_ms: 0,
        qos: 1,
        retain: false,
        from: "pub".into(),
        topic: Bytes::from_static(b"t/1"),
        properties: Bytes::new(),
        payload: Bytes::from_static(b"inline"),
    };
    let entry = |inline: Option<quay_storage::StoredMessage>| QueueEntry {
        msg_id: 7,
        qos: 1,
        retain: true,
        released: false,
        subscription_ids: vec![3],
        inline,
    };
    let carried = PageEntry::from_entry(4, entry(Some(stored)));
    assert!(carried.inline);
    let msg = carried.msg.expect("the inline message");
    assert_eq!(
        (&msg.topic[..], &msg.payload[..]),
        (&b"t/1"[..], &b"inline"[..])
    );
    assert_eq!((carried.seq, carried.msg_id, carried.retain), (4, 7, true));
    assert_eq!(carried.subscription_ids, vec![3]);
    let logged = PageEntry::from_entry(5, entry(None));
    assert!(!logged.inline && logged.msg.is_none());
}
