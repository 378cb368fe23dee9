//! The per-client session state machine, sans-IO.
//!
//! A `Session` takes deliveries, acks, pages read from the store and clock ticks
//! (`now` is always a parameter) and returns `Action`s: packets to send, store writes to
//! submit, queue pages to read. It never touches a socket, a clock or the disk; the
//! connection driver (`crate::connection`) executes its actions.
//!
//! Persistent sessions keep their queue in the store. Entries have a sequence number
//! (`seq`) assigned by the store writer, in order; the packet id of a stored entry is
//! derived from its seq, so ids survive restarts without a write per send. The session
//! holds at most a page of them in memory (the `Cursor` says what is loaded).

mod inbound;
mod outbound;

use std::sync::Arc;
use std::time::Duration;

use quay_storage::Op;

pub use inbound::{Inbound, Qos2Arrival, Release};
pub use outbound::{Cursor, Outbound, Page, PageEntry};

use crate::codec::QoS;
use crate::message::Message;

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Outbound QoS 1/2 window (zone max_inflight, lowered by the client's Receive Maximum).
    pub max_inflight: u16,
    pub retry_interval: Duration,
    /// In-memory queue bound for non-persistent sessions (0 = unlimited); persistent
    /// sessions enforce it in the store.
    pub max_mqueue_len: usize,
    /// Stored entries read per page, and the most held in memory at once.
    pub page_size: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_inflight: 32,
            retry_interval: Duration::from_secs(30),
            max_mqueue_len: 1000,
            page_size: 1024,
        }
    }
}

/// A message on its way to this session's client.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Queue sequence number when the delivery is stored (persistent sessions).
    pub seq: Option<u64>,
    /// Store id of the message (meaningful with `seq`).
    pub msg_id: u64,
    pub msg: Arc<Message>,
    /// QoS granted for this delivery: min(publish, subscription).
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// Possibly sent before (a stored entry re-read after a reconnect): send with DUP.
    pub resend: bool,
    /// The stored entry holds no reference into the message log (its message is
    /// inline): its ack needs no read of the entry (`Op::AckUnreferenced`).
    pub unreferenced: bool,
}

impl Outgoing {
    /// The stored form of a released QoS 2 entry: no message (inline or not) is kept.
    fn released_entry(&self) -> quay_storage::QueueEntry {
        quay_storage::QueueEntry {
            msg_id: self.msg_id,
            qos: self.qos as u8,
            retain: self.retain,
            released: true,
            subscription_ids: self.subscription_ids.clone(),
            inline: None,
        }
    }
}

/// Why the session dropped a delivery (counted in metrics). Expiry is checked by the
/// channel, which has the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    QueueFull,
    /// A stored entry whose message is gone (should not happen; logged).
    Missing,
}

#[derive(Debug)]
pub enum Action {
    /// Send a PUBLISH (`packet_id` is None for QoS 0).
    Publish {
        packet_id: Option<u16>,
        dup: bool,
        out: Outgoing,
    },
    PubRel(u16),
    /// Make `op` (a QoS 2 release) durable, then call `Outbound::released(packet_id)`.
    Release {
        packet_id: u16,
        op: Op,
    },
    /// Submit a store write nobody waits for.
    Store(Op),
    /// Read up to `limit` stored entries from `from` (off the caller's thread: the
    /// answer may come after other inputs) and call `Outbound::loaded`, or
    /// `Outbound::load_failed` when the read fails. At most one is out at a time.
    LoadQueue {
        from: u64,
        limit: usize,
    },
    /// A delivery dropped (with its message, when there is one), to count and to
    /// tell `message.dropped`.
    Dropped(DropReason, Option<Arc<Message>>),
}

/// Packet id of a stored delivery: a bijection of seq mod 65535 onto 1..=65535.
pub fn packet_id_of_seq(seq: u64) -> u16 {
    (seq % 65_535) as u16 + 1
}

#[cfg(test)]
mod loading_tests;
#[cfg(test)]
mod tests;
