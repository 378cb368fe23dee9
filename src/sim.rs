//! What the model test (`tests/model/`) needs to run the real broker and channels in
//! one thread on a simulated clock: not an API, hidden from the docs.
//!
//! The model opens a broker over a simulated store (`Broker::open_simulated`,
//! `quay_storage::Store::simulated`) with a `Simulation`: the clock the broker's own
//! paths read (recovery, retained lookups; `open` passes it to CONNECT as its clock),
//! the queue page size, switches that put known defects back into the real code (the
//! model must catch each), and a probe told of every routing and of when what it
//! stored is durable. Channels are opened through the real
//! `connection::accept::open` (`open`), and `SimChannel` hands the model exactly the
//! calls the connection driver makes (`connection::Connection::run`), nothing more:
//! the model mirrors the driver's I/O loop, never a protocol decision.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::broker::mailbox::Mailbox;
use crate::broker::registry::ConnEvent;
use crate::broker::{Broker, PublishDone};
use crate::channel::Channel;
pub use crate::channel::{Close, Now};
use crate::codec::Connect;
use crate::config::Zone;
use crate::message::Message;

/// A known defect the model test must catch (its mutation check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// PUBREL sent in the same turn as the unsynced release of the message.
    PubrelBeforeDurable,
    /// PUBCOMP sent before the deletion of the inbound QoS 2 id is durable.
    PubcompBeforeDurable,
    /// PUBACK / PUBREC allowed before what the publish stored is durable.
    PubackBeforeDurable,
}

/// Told of what the publish path does (`broker::publish`).
pub trait Probe: Send + Sync {
    /// A message was routed; `msg_id` names this routing.
    fn routed(&self, msg_id: u64, msg: &Message);
    /// What routing `msg_id` had to store is durable (`wrote`: it had something
    /// to store; else it completed without the disk, or after a barrier).
    fn durable(&self, msg_id: u64, wrote: bool);
}

/// The simulated time: a real `Instant` and wall-clock ms at the start, plus an
/// offset the model moves.
pub struct SimClock {
    base_at: Instant,
    base_ms: u64,
    offset_ms: AtomicU64,
}

impl SimClock {
    pub fn new(base_at: Instant, base_ms: u64) -> SimClock {
        SimClock {
            base_at,
            base_ms,
            offset_ms: AtomicU64::new(0),
        }
    }

    pub fn set_ms(&self, ms: u64) {
        self.offset_ms
            .store(ms.saturating_sub(self.base_ms), Ordering::Relaxed);
    }

    pub fn now(&self) -> Now {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        Now {
            at: self.base_at + Duration::from_millis(offset),
            ms: self.base_ms + offset,
        }
    }
}

/// What the model sets on its broker.
pub struct Simulation {
    pub clock: Arc<SimClock>,
    pub faults: Vec<Fault>,
    pub probe: Arc<dyn Probe>,
    /// Queue entries per page read (production: 1024).
    pub page_size: usize,
}

impl Simulation {
    /// Tell the probe of a routing, and return `done` wrapped to tell it when the
    /// routing completes (`Fault::PubackBeforeDurable`: `done` runs now instead).
    pub(crate) fn routed(
        &self,
        msg_id: u64,
        msg: &Message,
        wrote: bool,
        done: PublishDone,
    ) -> PublishDone {
        self.probe.routed(msg_id, msg);
        let done = if self.faults.contains(&Fault::PubackBeforeDurable) {
            done(true);
            Box::new(|_| {})
        } else {
            done
        };
        let probe = self.probe.clone();
        Box::new(move |ok| {
            if ok {
                probe.durable(msg_id, wrote);
            }
            done(ok)
        })
    }
}

/// The broker's periodic sweep (session expiry, delayed wills, retained expiry) at
/// the simulated `now`.
pub fn sweep(broker: &Arc<Broker>, now: Now) {
    broker.sweep_expired_at(now.ms);
}

/// Open the session `connect` asks for and build its channel, as a connection does
/// after reading CONNECT (`connection::accept::open`). Err: refused, with the
/// CONNACK that says why if one can be sent.
pub async fn open(
    broker: Arc<Broker>,
    zone: Arc<Zone>,
    connect: Connect,
) -> Result<SimChannel, Option<BytesMut>> {
    let listener: Arc<str> = Arc::from(zone.name.as_str());
    let site = crate::connection::Site::detached(broker.clone(), zone, listener);
    let peer = SocketAddr::from(([127, 0, 0, 1], 1883));
    // The broker's clock is the simulation's.
    let clock = || broker.now();
    match crate::connection::accept::open(&site, peer, connect, Default::default(), &clock).await {
        Ok(channel) => Ok(SimChannel { channel }),
        Err(refused) => Err(refused.0),
    }
}

/// A channel as its driver holds it: each method is the channel's own.
pub struct SimChannel {
    channel: Channel,
}

impl SimChannel {
    pub fn mailbox(&self) -> &Arc<Mailbox> {
        self.channel.mailbox()
    }

    pub fn output(&self) -> &[u8] {
        self.channel.output()
    }

    pub fn written(&mut self, n: usize, now: Now) {
        self.channel.written(n, now)
    }

    pub fn reading(&self) -> bool {
        self.channel.reading()
    }

    pub fn taking_events(&self) -> bool {
        self.channel.taking_events()
    }

    pub fn bytes_read(&mut self, n: usize, now: Now) {
        self.channel.bytes_read(n, now)
    }

    pub fn handle_bytes(&mut self, rbuf: &mut BytesMut, now: Now) -> Result<(), Close> {
        self.channel.handle_bytes(rbuf, now)
    }

    pub fn handle_events(
        &mut self,
        events: impl IntoIterator<Item = ConnEvent>,
        now: Now,
    ) -> Result<(), Close> {
        self.channel.handle_events(events, now)
    }

    pub fn behind(&mut self, now: Now) {
        self.channel.behind(now)
    }

    pub fn waiting_for_room(&self) -> bool {
        self.channel.waiting_for_room()
    }

    pub fn resume_reading(&mut self, rbuf: &mut BytesMut, now: Now) -> Result<(), Close> {
        self.channel.resume_reading(rbuf, now)
    }

    pub fn end_read_pause(&mut self) {
        self.channel.end_read_pause()
    }

    pub fn flush_store_ops(&mut self) {
        self.channel.flush_store_ops()
    }

    /// Hook decisions the driver would run; the model registers no deciding hook.
    pub fn has_decisions(&mut self) -> bool {
        !self.channel.take_decisions().is_empty()
    }

    pub fn next_deadline(&self, now: Now) -> Instant {
        self.channel.next_deadline(now)
    }

    pub fn on_timer(&mut self, now: Now) -> Result<(), Close> {
        self.channel.on_timer(now)
    }

    pub fn close(&mut self, close: &Close, now: Now) -> bool {
        self.channel.close(close, now)
    }

    pub fn detach(&mut self, publish_will: bool, now: Now) {
        self.channel.detach(publish_will, now)
    }
}
