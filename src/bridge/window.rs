//! The forwarding window of one bridge connection, sans-IO: which cache records are
//! in flight to the remote, under which packet ids, and which prefix of them the
//! cache may now forget.
//!
//! The driver (`mqtt.rs`) pushes records it popped from the cache, sends what this
//! returns, and feeds back the remote's PUBACK / PUBREC / PUBCOMP. A record is done at
//! its PUBACK (QoS 1), PUBCOMP (QoS 2), or once written (QoS 0); `ackable` is the
//! highest seq at or below which every record is done: only that goes to
//! `SegmentQueue::ack`, so the cache never forgets a record the remote has not taken,
//! whatever order the acknowledgements arrive in.
//!
//! The window outlives connections: `resend` gives what a new connection must send
//! again ([MQTT-4.4.0-1]: unacknowledged PUBLISHes with DUP, PUBRELs of those that had
//! their PUBREC). Time is a parameter (`now_ms`), never read here.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::codec::{Packet, Properties, PubResp, Publish, QoS};

/// One forwarded message as it goes on the wire (topic already mounted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Properties,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Sent,
    /// QoS 2: PUBREC in, PUBREL sent; waiting for PUBCOMP.
    Released,
    Done,
}

#[derive(Debug)]
struct Slot {
    seq: u64,
    packet_id: Option<u16>,
    msg: Outbound,
    stage: Stage,
    sent_ms: u64,
}

/// What `on_ack` made of an acknowledgement.
#[derive(Debug, PartialEq, Eq)]
pub enum AckOutcome {
    /// Send this (PUBREL after a PUBREC).
    Reply(Box<Packet>),
    /// Records done; the cache may forget up to `ackable()`.
    Progress,
    /// The remote refused the record (v5 reason code >= 0x80): done with, not delivered.
    Refused,
    /// An id we do not have in flight (a late duplicate): ignored.
    Unknown,
}

#[derive(Debug)]
pub struct InflightWindow {
    capacity: usize,
    slots: VecDeque<Slot>,
    /// packet id -> seq of the slot holding it.
    ids: HashMap<u16, u64>,
    next_id: u16,
    /// Highest seq already reported as ackable.
    reported: u64,
}

/// The most records in flight: packet ids are 16 bits and one is kept for SUBSCRIBE.
pub const MAX_WINDOW: usize = 65_000;

/// Packet id of the bridge's SUBSCRIBE, never given to a PUBLISH.
pub const SUBSCRIBE_ID: u16 = u16::MAX;

impl InflightWindow {
    pub fn new(capacity: usize) -> InflightWindow {
        InflightWindow {
            capacity: capacity.clamp(1, MAX_WINDOW),
            slots: VecDeque::new(),
            ids: HashMap::new(),
            next_id: 1,
            reported: 0,
        }
    }

    /// Records that may still be pushed (`limit`: the remote's Receive Maximum, if any).
    pub fn room(&self, limit: Option<usize>) -> usize {
        let cap = limit.map_or(self.capacity, |l| l.min(self.capacity));
        let busy = self.slots.iter().filter(|s| s.stage != Stage::Done).count();
        cap.saturating_sub(busy)
            .min(MAX_WINDOW.saturating_sub(self.slots.len()))
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Records not yet done (waiting for the remote).
    #[cfg(test)]
    fn unacknowledged(&self) -> usize {
        self.slots.iter().filter(|s| s.stage != Stage::Done).count()
    }

    fn take_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = if id >= SUBSCRIBE_ID - 1 { 1 } else { id + 1 };
            if !self.ids.contains_key(&id) {
                return id;
            }
        }
    }

    /// Take record `seq` into the window and give the PUBLISH to send. Seqs must
    /// increase.
    pub fn push(&mut self, seq: u64, msg: Outbound, now_ms: u64) -> Packet {
        debug_assert!(self.slots.back().is_none_or(|s| s.seq < seq));
        let packet_id = (msg.qos != QoS::AtMostOnce).then(|| self.take_id());
        if let Some(id) = packet_id {
            self.ids.insert(id, seq);
        }
        let publish = to_publish(&msg, packet_id, false);
        self.slots.push_back(Slot {
            seq,
            packet_id,
            stage: if packet_id.is_none() {
                Stage::Done
            } else {
                Stage::Sent
            },
            msg,
            sent_ms: now_ms,
        });
        publish
    }

    fn slot_of(&mut self, packet_id: u16) -> Option<&mut Slot> {
        let seq = *self.ids.get(&packet_id)?;
        let front = self.slots.front()?.seq;
        // Seqs increase but may skip (records dropped or corrupt): search near.
        let guess = usize::try_from(seq.checked_sub(front)?).ok()?;
        let at = if self.slots.get(guess).is_some_and(|s| s.seq == seq) {
            guess
        } else {
            self.slots.binary_search_by_key(&seq, |s| s.seq).ok()?
        };
        self.slots.get_mut(at)
    }

    /// A record that is not sent at all (expired, or unreadable): done at once.
    pub fn skip(&mut self, seq: u64) {
        debug_assert!(self.slots.back().is_none_or(|s| s.seq < seq));
        self.slots.push_back(Slot {
            seq,
            packet_id: None,
            msg: Outbound {
                topic: Bytes::new(),
                payload: Bytes::new(),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Properties::default(),
            },
            stage: Stage::Done,
            sent_ms: 0,
        });
    }

    /// The last record pushed could not be sent after all (too large for the remote):
    /// done with, its packet id free again.
    pub fn abandon_last(&mut self) {
        if let Some(s) = self.slots.back_mut() {
            if let Some(id) = s.packet_id.take() {
                self.ids.remove(&id);
            }
            s.stage = Stage::Done;
        }
    }

    /// A v5 PUBACK or PUBREC with an error reason code: the remote will not take it.
    pub fn on_refused(&mut self, packet_id: u16) -> AckOutcome {
        match self.slot_of(packet_id) {
            Some(s) if s.stage == Stage::Sent => {
                s.stage = Stage::Done;
                self.ids.remove(&packet_id);
                AckOutcome::Refused
            }
            _ => AckOutcome::Unknown,
        }
    }

    /// PUBACK (QoS 1 done).
    pub fn on_puback(&mut self, packet_id: u16) -> AckOutcome {
        match self.slot_of(packet_id) {
            Some(s) if s.msg.qos == QoS::AtLeastOnce && s.stage == Stage::Sent => {
                s.stage = Stage::Done;
                self.ids.remove(&packet_id);
                AckOutcome::Progress
            }
            _ => AckOutcome::Unknown,
        }
    }

    /// PUBREC (QoS 2: the remote owns the message now; answer PUBREL).
    pub fn on_pubrec(&mut self, packet_id: u16, now_ms: u64) -> AckOutcome {
        match self.slot_of(packet_id) {
            Some(s) if s.msg.qos == QoS::ExactlyOnce && s.stage != Stage::Done => {
                s.stage = Stage::Released;
                s.sent_ms = now_ms;
                AckOutcome::Reply(Box::new(Packet::PubRel(PubResp::new(packet_id))))
            }
            // A PUBREC for an id we no longer hold: PUBREL anyway so the remote can
            // finish its side (it answers PUBCOMP, which we then ignore).
            _ => AckOutcome::Reply(Box::new(Packet::PubRel(PubResp::new(packet_id)))),
        }
    }

    /// PUBCOMP (QoS 2 done).
    pub fn on_pubcomp(&mut self, packet_id: u16) -> AckOutcome {
        match self.slot_of(packet_id) {
            Some(s) if s.msg.qos == QoS::ExactlyOnce && s.stage != Stage::Done => {
                s.stage = Stage::Done;
                self.ids.remove(&packet_id);
                AckOutcome::Progress
            }
            _ => AckOutcome::Unknown,
        }
    }

    /// The highest seq at or below which every record is done, if it moved since the
    /// last call; the done prefix leaves the window.
    pub fn ackable(&mut self) -> Option<u64> {
        let mut upto = None;
        while self.slots.front().is_some_and(|s| s.stage == Stage::Done) {
            if let Some(s) = self.slots.pop_front() {
                upto = Some(s.seq);
            }
        }
        match upto {
            Some(seq) if seq > self.reported => {
                self.reported = seq;
                Some(seq)
            }
            _ => None,
        }
    }

    /// What a new connection sends first, in order: every PUBLISH still waiting for
    /// its PUBACK/PUBREC again with DUP, a PUBREL for every QoS 2 that had its PUBREC.
    pub fn resend(&mut self, now_ms: u64) -> Vec<Packet> {
        let mut out = Vec::new();
        for s in self.slots.iter_mut() {
            match s.stage {
                Stage::Sent => out.push(to_publish(&s.msg, s.packet_id, true)),
                Stage::Released => out.push(Packet::PubRel(PubResp::new(s.packet_id.unwrap_or(0)))),
                Stage::Done => continue,
            }
            s.sent_ms = now_ms;
        }
        out
    }

    /// Retransmissions due on a live connection (`retry_interval`, MQTT 3.x only: v5
    /// forbids resending except on reconnect [MQTT-4.4.0-1]). How many, and what.
    pub fn due(&mut self, now_ms: u64, retry_ms: u64) -> Vec<Packet> {
        let mut out = Vec::new();
        if retry_ms == 0 {
            return out;
        }
        for s in self.slots.iter_mut() {
            if s.stage == Stage::Done || now_ms.saturating_sub(s.sent_ms) < retry_ms {
                continue;
            }
            s.sent_ms = now_ms;
            out.push(match s.stage {
                Stage::Released => Packet::PubRel(PubResp::new(s.packet_id.unwrap_or(0))),
                _ => to_publish(&s.msg, s.packet_id, true),
            });
        }
        out
    }

    /// When the oldest unacknowledged record becomes due, if any.
    pub fn next_due_ms(&self, retry_ms: u64) -> Option<u64> {
        self.slots
            .iter()
            .filter(|s| s.stage != Stage::Done)
            .map(|s| s.sent_ms + retry_ms)
            .min()
    }
}

fn to_publish(msg: &Outbound, packet_id: Option<u16>, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup: dup && packet_id.is_some(),
        qos: msg.qos,
        retain: msg.retain,
        topic: msg.topic.clone(),
        packet_id,
        properties: msg.properties.clone(),
        payload: msg.payload.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn out(qos: QoS, n: u64) -> Outbound {
        Outbound {
            topic: Bytes::from(format!("t/{n}")),
            payload: Bytes::from(n.to_string()),
            qos,
            retain: false,
            properties: Properties::default(),
        }
    }

    fn id_of(p: &Packet) -> u16 {
        match p {
            Packet::Publish(p) => p.packet_id.unwrap_or(0),
            Packet::PubRel(r) => r.packet_id,
            _ => 0,
        }
    }

    #[test]
    fn out_of_order_pubacks_release_only_the_done_prefix() {
        let mut w = InflightWindow::new(8);
        let ids: Vec<u16> = (1..=4)
            .map(|s| id_of(&w.push(s, out(QoS::AtLeastOnce, s), 0)))
            .collect();
        assert_eq!(w.room(None), 4);
        assert_eq!(w.on_puback(ids[2]), AckOutcome::Progress);
        assert_eq!(
            w.ackable(),
            None,
            "seq 3 acked, 1 and 2 not: nothing to forget"
        );
        assert_eq!(w.on_puback(ids[0]), AckOutcome::Progress);
        assert_eq!(w.ackable(), Some(1));
        assert_eq!(w.on_puback(ids[1]), AckOutcome::Progress);
        assert_eq!(w.ackable(), Some(3));
        assert_eq!(
            w.on_puback(ids[1]),
            AckOutcome::Unknown,
            "a duplicate PUBACK"
        );
        assert_eq!(w.unacknowledged(), 1);
    }

    #[test]
    fn qos2_needs_pubrec_then_pubcomp_and_a_reconnect_resends_pubrel() {
        let mut w = InflightWindow::new(8);
        let id = id_of(&w.push(7, out(QoS::ExactlyOnce, 7), 0));
        assert_eq!(
            w.on_puback(id),
            AckOutcome::Unknown,
            "PUBACK does not end QoS 2"
        );
        assert_eq!(
            w.on_pubrec(id, 5),
            AckOutcome::Reply(Box::new(Packet::PubRel(PubResp::new(id))))
        );
        assert_eq!(w.ackable(), None);
        assert_eq!(w.resend(9), vec![Packet::PubRel(PubResp::new(id))]);
        assert_eq!(w.on_pubcomp(id), AckOutcome::Progress);
        assert_eq!(w.ackable(), Some(7));
        assert!(w.is_empty());
    }

    #[test]
    fn a_reconnect_resends_unacknowledged_publishes_with_dup_in_order() {
        let mut w = InflightWindow::new(8);
        for s in [3, 5, 9] {
            w.push(s, out(QoS::AtLeastOnce, s), 0);
        }
        w.push(10, out(QoS::AtMostOnce, 10), 0);
        let first = id_of(&w.resend(1)[0]);
        w.on_puback(first);
        let again = w.resend(2);
        let topics: Vec<_> = again
            .iter()
            .map(|p| match p {
                Packet::Publish(p) => {
                    assert!(p.dup);
                    p.topic.clone()
                }
                p => panic!("{p:?}"),
            })
            .collect();
        assert_eq!(topics, vec![Bytes::from("t/5"), Bytes::from("t/9")]);
    }

    #[test]
    fn retransmission_waits_for_retry_interval() {
        let mut w = InflightWindow::new(8);
        w.push(1, out(QoS::AtLeastOnce, 1), 1_000);
        assert!(w.due(1_500, 1_000).is_empty());
        assert_eq!(w.next_due_ms(1_000), Some(2_000));
        let again = w.due(2_000, 1_000);
        assert!(matches!(&again[..], [Packet::Publish(p)] if p.dup));
        assert!(w.due(2_500, 1_000).is_empty());
        assert!(w.due(9_000, 0).is_empty(), "0 turns retransmission off");
    }

    #[test]
    fn packet_ids_are_never_shared_and_never_the_subscribe_id() {
        let mut w = InflightWindow::new(MAX_WINDOW);
        let mut live = VecDeque::new();
        let mut in_use = std::collections::HashSet::new();
        for s in 1..=70_000u64 {
            if w.room(None) == 0 {
                // The oldest half is acknowledged, in order.
                for _ in 0..30_000 {
                    let id = live.pop_front().unwrap();
                    assert_eq!(w.on_puback(id), AckOutcome::Progress);
                    in_use.remove(&id);
                }
                assert!(w.ackable().is_some());
            }
            let id = id_of(&w.push(s, out(QoS::AtLeastOnce, s), 0));
            assert_ne!(id, SUBSCRIBE_ID);
            assert_ne!(id, 0);
            assert!(in_use.insert(id), "id {id} handed out twice");
            live.push_back(id);
        }
    }

    proptest! {
        /// Whatever order acknowledgements arrive in, `ackable` never passes a record
        /// that is not done, and once all are done it reaches the last seq.
        #[test]
        fn ackable_never_passes_an_unacknowledged_record(
            qos in prop::collection::vec(0u8..3, 1..60),
            order in prop::collection::vec(any::<prop::sample::Index>(), 0..200),
        ) {
            let mut w = InflightWindow::new(64);
            let mut pending: Vec<(u64, u16, QoS)> = Vec::new();
            let mut done = std::collections::BTreeSet::new();
            for (i, q) in qos.iter().enumerate() {
                let seq = (i as u64) * 2 + 1;
                let q = QoS::from_u8(*q).unwrap_or_default();
                let p = w.push(seq, out(q, seq), 0);
                if q == QoS::AtMostOnce { done.insert(seq); } else { pending.push((seq, id_of(&p), q)); }
            }
            let mut reported = 0;
            let mut check = |w: &mut InflightWindow, done: &std::collections::BTreeSet<u64>| -> Result<(), TestCaseError> {
                if let Some(upto) = w.ackable() {
                    prop_assert!(upto > reported);
                    for s in (1..=upto).filter(|s| s % 2 == 1) {
                        prop_assert!(done.contains(&s), "seq {} forgotten before it was done", s);
                    }
                    reported = upto;
                }
                Ok(())
            };
            for ix in order {
                if pending.is_empty() { break; }
                let (seq, id, q) = pending[ix.index(pending.len())];
                if q == QoS::ExactlyOnce {
                    let _ = w.on_pubrec(id, 0);
                    w.on_pubcomp(id);
                } else {
                    w.on_puback(id);
                }
                done.insert(seq);
                pending.retain(|p| p.0 != seq);
                check(&mut w, &done)?;
            }
            for (seq, id, q) in std::mem::take(&mut pending) {
                if q == QoS::ExactlyOnce { let _ = w.on_pubrec(id, 0); w.on_pubcomp(id); } else { w.on_puback(id); }
                done.insert(seq);
            }
            check(&mut w, &done)?;
            prop_assert_eq!(reported, qos.len() as u64 * 2 - 1);
            prop_assert!(w.is_empty());
        }
    }
}
