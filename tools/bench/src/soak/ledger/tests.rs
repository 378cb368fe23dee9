//! The checker's rules on hand-made timelines (see the module doc of `ledger`).

use std::time::Duration;

use super::*;

/// A clock for tests: `t(n)` is n milliseconds after a fixed start.
struct Clock(Instant);

impl Clock {
    fn t(&self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
}

fn arrival(topic: usize, qos: QoS) -> Arrival {
    Arrival {
        topic: Some(topic),
        qos,
        packet_id: Some(1),
        dup: false,
    }
}

fn lost_samples(samples: &[Sample]) -> Vec<MsgId> {
    samples
        .iter()
        .filter(|s| s.kind == "lost")
        .filter_map(|s| s.msg)
        .collect()
}

fn id(seq: u64) -> MsgId {
    MsgId { publisher: 0, seq }
}

/// A ledger with one publisher and one subscriber of topic 0, subscribed at 10 ms.
fn setup() -> (Ledger, Clock, usize) {
    let clock = Clock(Instant::now());
    let mut l = Ledger::new(1, clock.0);
    let s = l.add_subscriber("s", 0b1);
    l.subscribe_sent(s, clock.t(5));
    l.suback(s, clock.t(10));
    (l, clock, s)
}

fn publish(l: &mut Ledger, c: &Clock, topic: usize, qos: QoS, sent: u64, acked: u64) -> MsgId {
    let m = id(l.messages[0].len() as u64);
    l.sent(m, topic, qos, c.t(sent));
    l.acked(m, c.t(acked));
    m
}

#[test]
fn acked_after_suback_and_not_delivered_is_lost() {
    let (mut l, c, s) = setup();
    let a = publish(&mut l, &c, 0, QoS::AtLeastOnce, 20, 25);
    let b = publish(&mut l, &c, 0, QoS::ExactlyOnce, 30, 35);
    let _other_topic = publish(&mut l, &c, 1, QoS::AtLeastOnce, 30, 35);
    l.delivered(s, a, arrival(0, QoS::AtLeastOnce), 0, c.t(40));
    let (v, samples) = l.check();
    assert_eq!((v.published, v.acked, v.owed, v.delivered), (3, 3, 2, 1));
    assert_eq!(v.lost, 1);
    assert_eq!(lost_samples(&samples), [b]);
    assert_eq!(l.outstanding(s), 1);
}

#[test]
fn a_message_lost_by_every_session_is_told_apart() {
    let (mut l, c, s) = setup();
    let t = l.add_subscriber("t", 0b1);
    l.subscribe_sent(t, c.t(5));
    l.suback(t, c.t(10));
    let nowhere = publish(&mut l, &c, 0, QoS::ExactlyOnce, 20, 25);
    let somewhere = publish(&mut l, &c, 0, QoS::ExactlyOnce, 30, 35);
    l.delivered(s, somewhere, arrival(0, QoS::ExactlyOnce), 0, c.t(40));
    let (v, samples) = l.check();
    assert_eq!(v.lost, 3);
    let everywhere: Vec<Option<MsgId>> = samples
        .iter()
        .filter(|x| x.kind == "lost_everywhere")
        .map(|x| x.msg)
        .collect();
    assert_eq!(everywhere, [None, Some(nowhere)]);
}

#[test]
fn sent_before_suback_is_ambiguous_and_before_subscribe_is_not_owed() {
    let (mut l, c, s) = setup();
    publish(&mut l, &c, 0, QoS::AtLeastOnce, 8, 12); // SUBSCRIBE and PUBLISH in flight together
    publish(&mut l, &c, 0, QoS::AtLeastOnce, 1, 3); // acked before the SUBSCRIBE was sent
    let (v, _) = l.check();
    assert_eq!((v.owed, v.lost, v.ambiguous), (0, 0, 1));
    assert_eq!(l.outstanding(s), 0);
}

#[test]
fn ending_the_session_forfeits_what_was_not_delivered() {
    let (mut l, c, s) = setup();
    let before = publish(&mut l, &c, 0, QoS::ExactlyOnce, 20, 25);
    let in_flight = publish(&mut l, &c, 0, QoS::ExactlyOnce, 45, 55); // acked after end_sent
    assert_eq!(l.end_session(s, c.t(50)), 1);
    publish(&mut l, &c, 0, QoS::ExactlyOnce, 70, 75); // after end_done, before resubscribing
    l.end_confirmed(s, c.t(60));
    l.subscribe_sent(s, c.t(80));
    l.suback(s, c.t(90));
    let after = publish(&mut l, &c, 0, QoS::ExactlyOnce, 100, 105);
    let (v, samples) = l.check();
    assert_eq!(v.owed, 2, "{v:?}");
    assert_eq!(v.forfeited, 1, "{before} owed to the ended session");
    assert_eq!(
        v.ambiguous, 1,
        "{in_flight} was in flight while the session ended"
    );
    assert_eq!(v.lost, 1);
    assert_eq!(lost_samples(&samples), [after]);
}

#[test]
fn unconfirmed_end_keeps_everything_after_it_ambiguous() {
    let (mut l, c, s) = setup();
    l.end_session(s, c.t(50));
    publish(&mut l, &c, 0, QoS::AtLeastOnce, 500, 505);
    let (v, _) = l.check();
    assert_eq!((v.owed, v.ambiguous), (0, 1));
    l.end_confirmed(s, c.t(100));
    let (v, _) = l.check();
    assert_eq!((v.owed, v.ambiguous), (0, 0));
}

#[test]
fn duplicates_by_qos_and_incarnation() {
    let (mut l, c, s) = setup();
    let q1 = publish(&mut l, &c, 0, QoS::AtLeastOnce, 20, 25);
    let q2 = publish(&mut l, &c, 0, QoS::ExactlyOnce, 20, 25);
    let q2b = publish(&mut l, &c, 0, QoS::ExactlyOnce, 20, 25);
    for _ in 0..2 {
        l.delivered(s, q1, arrival(0, QoS::AtLeastOnce), 0, c.t(30));
        l.delivered(s, q2, arrival(0, QoS::ExactlyOnce), 0, c.t(30));
    }
    l.delivered(s, q2b, arrival(0, QoS::ExactlyOnce), 0, c.t(30));
    l.end_session(s, c.t(40));
    l.delivered(s, q2b, arrival(0, QoS::ExactlyOnce), 1, c.t(50));
    let (v, samples) = l.check();
    assert_eq!((v.qos1_duplicates, v.qos2_duplicates, v.stale), (1, 1, 1));
    assert_eq!(v.delivered, 3);
    assert!(samples
        .iter()
        .any(|x| x.kind == "qos2_duplicate" && x.msg == Some(q2)));
}

#[test]
fn refused_and_unacked_are_not_owed_and_foreign_payloads_are_errors() {
    let (mut l, c, s) = setup();
    let r = publish(&mut l, &c, 0, QoS::AtLeastOnce, 20, 25);
    l.refused(r);
    l.sent(id(1), 0, QoS::AtLeastOnce, c.t(30));
    l.delivered(s, id(99), arrival(0, QoS::AtLeastOnce), 0, c.t(40));
    l.delivered(s, id(1), arrival(3, QoS::AtLeastOnce), 0, c.t(40));
    let (v, _) = l.check();
    assert_eq!((v.refused, v.unacked, v.owed, v.lost), (1, 1, 0, 0));
    assert_eq!(l.anomalies.protocol_errors, 2);
}
