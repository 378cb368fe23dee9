//! The soak's checker: what every client saw, on one clock, and what was owed to whom.
//!
//! All actors run in this one process and stamp their events with `Instant::now()`, so
//! every timestamp below is on one monotonic clock. The broker acts between two of our
//! events (after we wrote a packet, before we read its answer), which is what makes the
//! rules exact without looking inside the broker.
//!
//! # Events
//! - a message `m`: `sent(m)`, the moment just before its first PUBLISH was written (a
//!   retransmission after a reconnect keeps this first moment); `acked(m)`, the moment
//!   just after the first PUBACK (QoS 1) or PUBREC (QoS 2) for it was read: from then
//!   on the broker has promised it. The broker routed `m` (took its set of subscribers)
//!   at some instant inside `[sent(m), acked(m)]`, whichever copy it routed.
//! - a subscriber's **incarnation** `e`: one persistent session, from the client's
//!   point of view. It starts when the client begins a fresh session (the first
//!   connect, or after ending the previous one) and lasts until the client ends it on
//!   purpose: v5 DISCONNECT with Session Expiry 0, a v5 Clean Start = 1 reconnect, or a
//!   3.1.1 Clean Session = 1 reconnect. Broker crashes, takeovers, dropped sockets and a
//!   broker that forgets the session (Session Present = 0 on a resume) do not end it:
//!   the client never asked for that. Its stamps: `subscribe_sent(e)`, before the first
//!   SUBSCRIBE of `e` was written; `suback(e)`, after its first SUBACK was read (the
//!   subscription is durable and routed from then on); `end_sent(e)`, before the packet
//!   that ends it (the DISCONNECT or the clean CONNECT) was written; `end_done(e)`, after
//!   the CONNACK that proves it gone was read (of the clean CONNECT, or of the first
//!   resume after the DISCONNECT that says Session Present = 0).
//!
//! # Owed
//! `m` is **owed** to incarnation `e` of subscriber `S` iff
//! 1. `m`'s topic matches `S`'s filters, and `m` was acked (not refused), and
//! 2. `suback(e) < sent(m)`: the subscription was in place before the broker could
//!    route `m`, and
//! 3. `e` had not ended when the broker promised `m`: `acked(m) < end_sent(e)` (or `e`
//!    never ended).
//!
//! Then the broker routed `m` while `e`'s session held the subscription, so `m` sits in
//! that session. The incarnation windows `(suback, end_sent)` of one subscriber do not
//! overlap, so `m` is owed to at most one of them.
//!
//! An owed message stays owed until delivered or until `e` ends: a client that ends its
//! session gives up what it had not received. So at the end of the run:
//! - owed to an incarnation still alive and never delivered to `S`: **lost**;
//! - owed to an ended incarnation and never delivered: **forfeited** (the client's own
//!   choice; reported, not a failure).
//!
//! # Ambiguous
//! A matching acked message that is owed to no incarnation is **ambiguous** if the broker
//! may have routed it into a session while it held the subscription: `[sent(m),
//! acked(m)]` overlaps `[subscribe_sent(e), end_done(e)]` (open-ended while unconfirmed)
//! for some `e`: a SUBSCRIBE or an end in flight while `m` was in flight. Ambiguous
//! messages are counted, never owed, so a race of the test itself is never reported as a
//! loss. Any other matching message was certainly routed while `S` had no subscription.
//!
//! # Duplicates
//! The subscriber reports a delivery when its client would hand the message to the
//! application: every QoS 1 PUBLISH, and a QoS 2 PUBLISH whose packet id is not awaiting
//! PUBREL (a QoS 2 retransmission before PUBREL is the same delivery, as the spec's
//! "method B" receiver treats it). A QoS 2 message handed over twice within one
//! incarnation is a **QoS 2 duplicate**. One handed over again in a later incarnation
//! (the broker kept a session the client ended) is **stale**, counted apart. QoS 1
//! repeats are allowed and counted as **QoS 1 duplicates**.

mod verdict;

use std::collections::HashMap;
use std::time::Instant;

use quay::codec::QoS;

use super::message::MsgId;

pub use verdict::Verdict;

/// How many examples of each kind of failure the report keeps.
const SAMPLES_KEPT: usize = 10;

#[derive(Debug, Clone)]
struct Message {
    topic: usize,
    qos: QoS,
    sent: Instant,
    acked: Option<Instant>,
    refused: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Incarnation {
    pub subscribe_sent: Option<Instant>,
    pub suback: Option<Instant>,
    pub end_sent: Option<Instant>,
    pub end_done: Option<Instant>,
}

impl Incarnation {
    /// Rule 2 and 3 of "Owed" for a message sent at `sent` and acked at `acked`.
    fn owes(&self, sent: Instant, acked: Instant) -> bool {
        self.suback.is_some_and(|s| s < sent) && self.end_sent.is_none_or(|end| acked < end)
    }

    /// Whether the broker may have routed into this incarnation's subscription at some
    /// instant of `[sent, acked]`.
    fn may_hold(&self, sent: Instant, acked: Instant) -> bool {
        let Some(from) = self.subscribe_sent else {
            return false;
        };
        let until_ok = match (self.end_sent, self.end_done) {
            (None, _) | (Some(_), None) => true,
            (Some(_), Some(done)) => sent <= done,
        };
        acked >= from && until_ok
    }
}

#[derive(Debug, Clone, Copy)]
struct Delivery {
    incarnation: usize,
    /// How the first copy came: its packet id, DUP flag and time (for the diagnosis).
    packet_id: Option<u16>,
    dup: bool,
    at: Instant,
}

/// How a PUBLISH reached a subscriber, as the diagnosis shows it.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub topic: Option<usize>,
    pub qos: QoS,
    pub packet_id: Option<u16>,
    pub dup: bool,
}

#[derive(Debug, Default)]
struct SubscriberLog {
    name: String,
    topics_mask: u64,
    incarnations: Vec<Incarnation>,
    deliveries: HashMap<MsgId, Delivery>,
    /// The last drain round in which it was connected, subscribed and reading.
    ready_round: u32,
}

/// Anomalies the clients saw that are not losses or duplicates by themselves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anomalies {
    /// Session Present = 0 on a resume of a session the client never ended.
    pub session_lost: u64,
    /// Session Present = 1 after the client ended its session (no crash in between).
    pub stale_session: u64,
    /// Two or more of a client's concurrent CONNECTs stayed connected.
    pub double_live: u64,
    /// CONNACKs that took 5 s or more.
    pub slow_connacks: u64,
    /// Packets a client could not accept (unknown ids, a QoS 2 id reused before
    /// PUBREL, payloads no publisher wrote, wrong topic or QoS).
    pub protocol_errors: u64,
}

/// One kind of failure with the message and subscriber, for the diagnosis on stderr.
#[derive(Debug, Clone)]
pub struct Sample {
    pub kind: &'static str,
    /// The client it happened to.
    pub client: String,
    /// The message, unless the sample is about a client as a whole.
    pub msg: Option<MsgId>,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Ledger {
    start: Option<Instant>,
    /// `messages[publisher][seq]`: publishers number their messages 0, 1, 2, ...
    messages: Vec<Vec<Message>>,
    subscribers: Vec<SubscriberLog>,
    kills: Vec<Instant>,
    pub anomalies: Anomalies,
    qos1_duplicates: u64,
    qos2_duplicates: u64,
    stale: u64,
    samples: Vec<Sample>,
    last_delivery: Option<Instant>,
    publishers_done: usize,
}

/// What `classify` decides for one (subscriber, message) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owed {
    To { incarnation: usize, ended: bool },
    Ambiguous,
    No,
}

impl Ledger {
    /// `start` is the zero of the `+s` times in the diagnosis.
    pub fn new(publishers: usize, start: Instant) -> Ledger {
        Ledger {
            start: Some(start),
            messages: vec![Vec::new(); publishers],
            ..Ledger::default()
        }
    }

    /// Seconds since the run started, for the diagnosis.
    fn at(&self, t: Instant) -> String {
        match self.start {
            Some(s) if t >= s => format!("+{:.3}s", (t - s).as_secs_f64()),
            _ => "?".to_string(),
        }
    }

    fn sample(&mut self, kind: &'static str, sub: usize, msg: MsgId, detail: String) {
        if self.samples.iter().filter(|s| s.kind == kind).count() < SAMPLES_KEPT {
            let client = self.subscribers[sub].name.clone();
            self.samples.push(Sample {
                kind,
                client,
                msg: Some(msg),
                detail,
            });
        }
    }

    /// A client got a packet it cannot accept; `detail` says which and why.
    pub fn protocol_error(&mut self, client: &str, detail: String) {
        self.anomalies.protocol_errors += 1;
        if self.samples.iter().filter(|s| s.kind == "protocol").count() < SAMPLES_KEPT {
            self.samples.push(Sample {
                kind: "protocol",
                client: client.to_string(),
                msg: None,
                detail,
            });
        }
    }

    pub fn add_subscriber(&mut self, name: &str, topics_mask: u64) -> usize {
        self.subscribers.push(SubscriberLog {
            name: name.to_string(),
            topics_mask,
            incarnations: vec![Incarnation::default()],
            deliveries: HashMap::new(),
            ready_round: 0,
        });
        self.subscribers.len() - 1
    }

    // --- publishers ---

    /// The first PUBLISH of `msg` is about to be written. Sequence numbers of a
    /// publisher must come in order 0, 1, 2, ...
    pub fn sent(&mut self, msg: MsgId, topic: usize, qos: QoS, now: Instant) {
        let list = &mut self.messages[msg.publisher as usize];
        assert_eq!(
            list.len() as u64,
            msg.seq,
            "publisher numbers its messages in order"
        );
        list.push(Message {
            topic,
            qos,
            sent: now,
            acked: None,
            refused: false,
        });
    }

    /// The first PUBACK / PUBREC for `msg` was read.
    pub fn acked(&mut self, msg: MsgId, now: Instant) {
        if let Some(m) = self.message_mut(msg) {
            m.acked.get_or_insert(now);
        }
    }

    /// The broker answered `msg` with an error reason code: it promised nothing.
    pub fn refused(&mut self, msg: MsgId) {
        if let Some(m) = self.message_mut(msg) {
            m.refused = true;
        }
    }

    pub fn publisher_done(&mut self) {
        self.publishers_done += 1;
    }

    pub fn publishers_done(&self) -> usize {
        self.publishers_done
    }

    fn message_mut(&mut self, msg: MsgId) -> Option<&mut Message> {
        self.messages
            .get_mut(msg.publisher as usize)?
            .get_mut(msg.seq as usize)
    }

    fn message(&self, msg: MsgId) -> Option<&Message> {
        self.messages
            .get(msg.publisher as usize)?
            .get(msg.seq as usize)
    }

    // --- subscribers ---

    fn current(&mut self, sub: usize) -> &mut Incarnation {
        let log = &mut self.subscribers[sub];
        let last = log.incarnations.len() - 1;
        &mut log.incarnations[last]
    }

    /// A SUBSCRIBE of the current incarnation is about to be written.
    pub fn subscribe_sent(&mut self, sub: usize, now: Instant) {
        self.current(sub).subscribe_sent.get_or_insert(now);
    }

    /// A SUBACK (all filters granted) was read for the current incarnation.
    pub fn suback(&mut self, sub: usize, now: Instant) {
        self.current(sub).suback.get_or_insert(now);
    }

    /// The client is about to end its session on purpose; returns the new incarnation.
    pub fn end_session(&mut self, sub: usize, now: Instant) -> usize {
        self.current(sub).end_sent = Some(now);
        let log = &mut self.subscribers[sub];
        log.incarnations.push(Incarnation::default());
        log.incarnations.len() - 1
    }

    /// A CONNACK proved the session ended by the last `end_session` gone.
    pub fn end_confirmed(&mut self, sub: usize, now: Instant) {
        let log = &mut self.subscribers[sub];
        let n = log.incarnations.len();
        if n >= 2 {
            log.incarnations[n - 2].end_done.get_or_insert(now);
        }
    }

    /// The client hands `msg` to its application, in `incarnation`.
    pub fn delivered(
        &mut self,
        sub: usize,
        msg: MsgId,
        arrival: Arrival,
        incarnation: usize,
        now: Instant,
    ) {
        self.last_delivery = Some(now);
        let Arrival {
            topic,
            qos,
            packet_id,
            dup,
        } = arrival;
        let Some(m) = self.message(msg) else {
            self.anomalies.protocol_errors += 1;
            self.sample("unknown", sub, msg, "no publisher sent it".into());
            return;
        };
        if topic != Some(m.topic) || qos != m.qos {
            let detail = format!(
                "published on soak/{} at QoS {}, received on {topic:?} at QoS {}",
                m.topic, m.qos as u8, qos as u8
            );
            self.anomalies.protocol_errors += 1;
            self.sample("mismatch", sub, msg, detail);
        }
        let log = &mut self.subscribers[sub];
        let Some(first) = log.deliveries.get(&msg).copied() else {
            let first = Delivery {
                incarnation,
                packet_id,
                dup,
                at: now,
            };
            log.deliveries.insert(msg, first);
            return;
        };
        if qos != QoS::ExactlyOnce {
            self.qos1_duplicates += 1;
            return;
        }
        let detail = format!(
            "first at {} (packet id {:?}, dup {}, incarnation {}), again at {} (packet id {packet_id:?}, dup {dup}, incarnation {incarnation}); {}",
            self.at(first.at),
            first.packet_id,
            first.dup,
            first.incarnation,
            self.at(now),
            self.kills_between(first.at, now),
        );
        if first.incarnation == incarnation {
            self.qos2_duplicates += 1;
            self.sample("qos2_duplicate", sub, msg, detail);
        } else {
            self.stale += 1;
            self.sample("stale", sub, msg, detail);
        }
    }

    /// The broker is about to be killed.
    pub fn kill(&mut self, now: Instant) {
        self.kills.push(now);
    }

    pub fn kills(&self) -> u64 {
        self.kills.len() as u64
    }

    fn kills_between(&self, from: Instant, to: Instant) -> String {
        let n = self
            .kills
            .iter()
            .filter(|k| **k >= from && **k <= to)
            .count();
        format!("{n} kills between")
    }

    /// When the kills happened, for the diagnosis.
    pub fn kill_times(&self) -> String {
        let times: Vec<String> = self.kills.iter().map(|k| self.at(*k)).collect();
        times.join(" ")
    }

    /// `sub` is connected, subscribed and reading in drain round `round`.
    pub fn ready(&mut self, sub: usize, round: u32) {
        self.subscribers[sub].ready_round = round;
    }

    /// Subscribers whose first session has its SUBACK.
    pub fn subscribers_subscribed(&self) -> usize {
        self.subscribers
            .iter()
            .filter(|s| s.incarnations[0].suback.is_some())
            .count()
    }

    pub fn subscribers_ready(&self, round: u32) -> usize {
        self.subscribers
            .iter()
            .filter(|s| s.ready_round == round)
            .count()
    }

    pub fn last_delivery(&self) -> Option<Instant> {
        self.last_delivery
    }

    /// Messages owed to `sub`'s current incarnation and not delivered yet.
    pub fn outstanding(&self, sub: usize) -> u64 {
        let log = &self.subscribers[sub];
        let current = log.incarnations.len() - 1;
        let mut n = 0;
        self.for_each_match(log, |id, owed| {
            if owed
                == (Owed::To {
                    incarnation: current,
                    ended: false,
                })
                && !log.deliveries.contains_key(&id)
            {
                n += 1;
            }
        });
        n
    }

    fn for_each_match(&self, log: &SubscriberLog, mut f: impl FnMut(MsgId, Owed)) {
        for (p, list) in self.messages.iter().enumerate() {
            for (seq, m) in list.iter().enumerate() {
                if log.topics_mask & (1u64 << m.topic) == 0 {
                    continue;
                }
                let id = MsgId {
                    publisher: p as u32,
                    seq: seq as u64,
                };
                f(id, classify(&log.incarnations, m));
            }
        }
    }
}

/// Owed, ambiguous or not owed: the rules of the module doc for one acked message.
fn classify(incarnations: &[Incarnation], m: &Message) -> Owed {
    let Some(acked) = m.acked.filter(|_| !m.refused) else {
        return Owed::No;
    };
    if let Some(i) = incarnations.iter().position(|e| e.owes(m.sent, acked)) {
        return Owed::To {
            incarnation: i,
            ended: incarnations[i].end_sent.is_some(),
        };
    }
    if incarnations.iter().any(|e| e.may_hold(m.sent, acked)) {
        Owed::Ambiguous
    } else {
        Owed::No
    }
}

#[cfg(test)]
mod tests;
