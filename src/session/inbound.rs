//! Client-to-server QoS 2 state: packet ids received and awaiting PUBREL.
//!
//! A QoS 2 PUBLISH is routed once, when it first arrives; its packet id is then held
//! (and, for persistent sessions, stored with the message's batch) until PUBREL, so a
//! retransmitted PUBLISH is recognised and not routed again, even after a restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos2Arrival {
    /// First time: route it, then `record` the id.
    New,
    /// Already routed: answer PUBREC again, do not route.
    Duplicate,
    /// `max_awaiting_rel` ids are already held.
    TooMany,
}

#[derive(Debug, Default)]
pub struct Inbound {
    awaiting_rel: BTreeMap<u16, Instant>,
    max_awaiting_rel: usize,
}

impl Inbound {
    pub fn new(
        max_awaiting_rel: usize,
        restored: impl IntoIterator<Item = u16>,
        now: Instant,
    ) -> Inbound {
        Inbound {
            awaiting_rel: restored.into_iter().map(|id| (id, now)).collect(),
            max_awaiting_rel,
        }
    }

    pub fn arrival(&self, packet_id: u16) -> Qos2Arrival {
        if self.awaiting_rel.contains_key(&packet_id) {
            Qos2Arrival::Duplicate
        } else if self.max_awaiting_rel != 0 && self.awaiting_rel.len() >= self.max_awaiting_rel {
            Qos2Arrival::TooMany
        } else {
            Qos2Arrival::New
        }
    }

    pub fn record(&mut self, packet_id: u16, now: Instant) {
        self.awaiting_rel.insert(packet_id, now);
    }

    /// PUBREL: true if the id was held.
    pub fn release(&mut self, packet_id: u16) -> bool {
        self.awaiting_rel.remove(&packet_id).is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.awaiting_rel.is_empty()
    }

    /// Forget ids whose PUBREL did not come within `timeout` (EMQX's await_rel_timeout);
    /// returns them so stored copies can be deleted.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<u16> {
        let expired: Vec<u16> = self
            .awaiting_rel
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) >= timeout)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.awaiting_rel.remove(id);
        }
        expired
    }
}
