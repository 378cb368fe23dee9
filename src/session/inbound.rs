//! Client-to-server QoS 2 state: packet ids received and awaiting PUBREL, and how many
//! of them count against this connection's Receive Maximum (MQTT 5).
//!
//! A QoS 2 PUBLISH is routed once, when it first arrives; its packet id is then held
//! (and, for persistent sessions, stored with the message's batch) until PUBREL, so a
//! retransmitted PUBLISH is recognised and not routed again, even after a restart.
//!
//! Receive Maximum counts a QoS 2 PUBLISH from its arrival until its PUBCOMP is sent,
//! because the client gets that send quota back only when PUBCOMP reaches it (MQTT 5
//! §4.9). So an id whose PUBREL arrived stays held, as `Releasing`, until the connection
//! says its PUBCOMP left (`completed`), whenever that is; the id is not free for a new
//! PUBLISH before then either (MQTT 5 §2.2.1). Ids restored from the store at a
//! reconnect do not count: the client starts each connection with its full quota
//! (§4.9); they count once the client resends their PUBLISH.
//!
//! Kept at 32 bytes: it lives in every `Connection`, which must fit 512 bytes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos2Arrival {
    /// First time: route it, then `record` the id.
    New,
    /// Already routed: answer PUBREC again, do not route.
    Duplicate,
    /// Released but its PUBCOMP not sent yet: the client may not reuse the id yet.
    InUse,
    /// `max_awaiting_rel` ids are already held.
    TooMany,
}

/// What a PUBREL means for its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Released now: PUBCOMP once that is durable.
    First,
    /// Already releasing: its PUBCOMP follows, nothing to do.
    Repeated,
    /// Not held: PUBCOMP with Packet Identifier Not Found.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// PUBREC sent (or restored from the store); `counted` against Receive Maximum.
    Awaiting { counted: bool },
    /// PUBREL received, PUBCOMP not sent yet (it waits for the id's deletion to be
    /// durable); held so the id is not reused before then, `counted` as before.
    Releasing { counted: bool },
}

#[derive(Debug, Clone, Copy)]
struct Held {
    /// PUBREC sent (or restored) at: `expire` counts from here.
    since: Instant,
    state: State,
}

#[derive(Debug, Default)]
pub struct Inbound {
    held: BTreeMap<u16, Held>,
    /// Held ids counting against Receive Maximum (at most 65535: ids are u16).
    counted: u32,
    /// 0 = unlimited (MQTT 5 connections: Receive Maximum bounds them instead).
    max_awaiting_rel: u32,
}

impl Inbound {
    pub fn new(
        max_awaiting_rel: usize,
        restored: impl IntoIterator<Item = u16>,
        now: Instant,
    ) -> Inbound {
        let held = Held {
            since: now,
            state: State::Awaiting { counted: false },
        };
        Inbound {
            held: restored.into_iter().map(|id| (id, held)).collect(),
            counted: 0,
            max_awaiting_rel: u32::try_from(max_awaiting_rel).unwrap_or(u32::MAX),
        }
    }

    pub fn arrival(&self, packet_id: u16) -> Qos2Arrival {
        match self.held.get(&packet_id).map(|h| h.state) {
            Some(State::Awaiting { .. }) => Qos2Arrival::Duplicate,
            Some(State::Releasing { .. }) => Qos2Arrival::InUse,
            None if self.max_awaiting_rel != 0
                && self.held.len() >= self.max_awaiting_rel as usize =>
            {
                Qos2Arrival::TooMany
            }
            None => Qos2Arrival::New,
        }
    }

    /// PUBREC is going out for a new id: hold it, counted.
    pub fn record(&mut self, packet_id: u16, now: Instant) {
        let held = Held {
            since: now,
            state: State::Awaiting { counted: true },
        };
        match self.held.insert(packet_id, held).map(|h| h.state) {
            Some(State::Awaiting { counted: true }) | Some(State::Releasing { counted: true }) => {}
            Some(State::Awaiting { counted: false })
            | Some(State::Releasing { counted: false })
            | None => self.counted += 1,
        }
    }

    /// Whether a held id already counts against Receive Maximum (false if not held).
    pub fn is_counted(&self, packet_id: u16) -> bool {
        self.held.get(&packet_id).is_some_and(|h| {
            matches!(
                h.state,
                State::Awaiting { counted: true } | State::Releasing { counted: true }
            )
        })
    }

    /// The client resent the PUBLISH of a held id on this connection: from now on it
    /// counts against Receive Maximum, as the client counts it.
    pub fn count(&mut self, packet_id: u16) {
        if let Some(held) = self.held.get_mut(&packet_id) {
            if held.state == (State::Awaiting { counted: false }) {
                held.state = State::Awaiting { counted: true };
                self.counted += 1;
            }
        }
    }

    /// PUBREL. A held id stays held (and counted, if it was) until
    /// `completed` says its PUBCOMP was sent: a PUBREL repeated before then gets no
    /// early PUBCOMP that would let the client reuse the id too soon.
    pub fn release(&mut self, packet_id: u16) -> Release {
        let Some(held) = self.held.get_mut(&packet_id) else {
            return Release::Unknown;
        };
        match held.state {
            State::Awaiting { counted } => {
                held.state = State::Releasing { counted };
                Release::First
            }
            State::Releasing { .. } => Release::Repeated,
        }
    }

    /// The PUBCOMP for `packet_id` was sent: the id and its Receive Maximum slot are
    /// free. Call it when PUBCOMP really leaves (for an id not released: no-op).
    pub fn completed(&mut self, packet_id: u16) {
        if let Some(State::Releasing { counted }) = self.held.get(&packet_id).map(|h| h.state) {
            self.held.remove(&packet_id);
            if counted {
                self.counted -= 1;
            }
        }
    }

    /// QoS 2 publishes counting against Receive Maximum: held and counted, or released
    /// and waiting for their PUBCOMP to be sent.
    pub fn quota_used(&self) -> usize {
        self.counted as usize
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Forget ids whose PUBREL did not come within `timeout` (EMQX's await_rel_timeout);
    /// returns them so stored copies can be deleted. Their quota is given back too.
    /// Released ids wait for their PUBCOMP, not for the client: they do not expire.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<u16> {
        let expired: Vec<u16> = self
            .held
            .iter()
            .filter(|(_, h)| {
                matches!(h.state, State::Awaiting { .. })
                    && now.saturating_duration_since(h.since) >= timeout
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            if let Some(held) = self.held.remove(id) {
                if held.state == (State::Awaiting { counted: true }) {
                    self.counted -= 1;
                }
            }
        }
        expired
    }
}
