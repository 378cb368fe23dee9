//! Server-to-client delivery: the queue, the inflight window, retries and the cursor
//! over the stored queue.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quay_storage::{ClientId, Op, QueueEntry};

use super::{packet_id_of_seq, Action, DropReason, Outgoing, SessionConfig};
use crate::codec::QoS;
use crate::message::Message;

/// What of the stored queue is in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// Not persistent: nothing is stored.
    Volatile,
    /// Entries from `from` on are stored and not loaded; `loading` while a read is out
    /// (its answer comes later, as `loaded` or `load_failed`: at most one at a time).
    Disk { from: u64, loading: bool },
    /// Everything stored is loaded; the next stored delivery should carry seq `next`.
    Live { next: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// Which packet an in-flight delivery waits for.
enum Stage {
    Ack,
    Rec,
    /// PUBREC received; the entry's release is being made durable. PUBREL goes out
    /// only after that (`released`): a PUBREL followed by a crash that forgot the
    /// release would send the PUBLISH again, a QoS 2 duplicate.
    Releasing,
    Comp,
}

#[derive(Debug)]
struct InFlight {
    out: Outgoing,
    stage: Stage,
    sent_at: Instant,
}

#[derive(Debug)]
pub struct Outbound {
    client: ClientId,
    config: Limits,
    /// Inflight window: at most 65535 (Receive Maximum); u16 keeps the session small.
    window: u16,
    inflight: BTreeMap<u16, InFlight>,
    pending: VecDeque<Outgoing>,
    cursor: Cursor,
    next_volatile_id: u16,
    /// Stored entries below this seq may have been sent by an earlier connection.
    dup_below: u64,
    /// One past the highest stored seq sent by this connection.
    sent_hi: u64,
    /// What happened around the page read (see `Reading`); boxed, and only while
    /// there is something to say, so that an idle session stays small.
    reading: Option<Box<Reading>>,
}

/// `SessionConfig` as every session keeps it: 16 bytes instead of 40.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_inflight: u16,
    /// Milliseconds; 49 days at most (a longer interval is as good as never).
    retry_interval_ms: u32,
    /// 0 = unlimited; a larger bound than u32::MAX is kept as u32::MAX.
    max_mqueue_len: u32,
    page_size: u32,
}

impl From<SessionConfig> for Limits {
    fn from(c: SessionConfig) -> Limits {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Limits {
            max_inflight: c.max_inflight,
            retry_interval_ms: u32::try_from(c.retry_interval.as_millis()).unwrap_or(u32::MAX),
            max_mqueue_len: clamp(c.max_mqueue_len),
            page_size: clamp(c.page_size),
        }
    }
}

impl Limits {
    fn retry_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.retry_interval_ms))
    }

    fn max_mqueue_len(&self) -> usize {
        self.max_mqueue_len as usize
    }

    fn page_size(&self) -> usize {
        self.page_size as usize
    }
}

/// Inputs that came in while a page read was out, or after it failed.
#[derive(Debug, Default)]
struct Reading {
    /// Stored deliveries that arrived while the read was out, in seq order: it may
    /// or may not have seen them, so `loaded` keeps those past the page. At most a
    /// page; beyond that they are left to the next read (`reload`).
    early: Vec<Outgoing>,
    /// A stored delivery was left out while the read was out (mailbox backlog, or
    /// `early` full): after the page, read again even if the page was short.
    reload: bool,
    /// The read failed: the next one goes at this instant (`tick`), not at once.
    retry_at: Option<Instant>,
}

/// How long a failed page read waits before it is tried again.
const LOAD_RETRY: Duration = Duration::from_millis(100);

/// A page read from the store, in seq order.
pub type Page = Vec<PageEntry>;

/// One stored entry of a page: what `loaded` needs of it and its message (None
/// where it is gone). Not the `QueueEntry` itself, whose room for an inline message
/// would triple the size of a page (the message is in `msg` by then).
#[derive(Debug)]
pub struct PageEntry {
    pub seq: u64,
    pub msg_id: u64,
    pub qos: u8,
    pub retain: bool,
    pub released: bool,
    /// The message was inline: the entry holds no reference to the log.
    pub inline: bool,
    pub subscription_ids: Vec<u32>,
    pub msg: Option<Arc<Message>>,
}

impl PageEntry {
    /// `entry`, at seq `seq`: an inline message moves to `msg`; a logged one is left
    /// for the caller to fill in (`msg` None).
    pub fn from_entry(seq: u64, mut entry: QueueEntry) -> PageEntry {
        let inline = entry.inline.take();
        PageEntry {
            seq,
            msg_id: entry.msg_id,
            qos: entry.qos,
            retain: entry.retain,
            released: entry.released,
            inline: inline.is_some(),
            subscription_ids: entry.subscription_ids,
            msg: inline.map(|m| Arc::new(Message::from_stored(m))),
        }
    }
}

impl Outbound {
    /// A session's outbound side. Persistent sessions start with everything on disk;
    /// stored entries below `dup_below` count as sent before (DUP on resend).
    pub fn new(
        client: ClientId,
        persistent: bool,
        dup_below: u64,
        config: SessionConfig,
    ) -> Outbound {
        let window = config.max_inflight.max(1);
        Outbound {
            client,
            config: Limits::from(config),
            window,
            inflight: BTreeMap::new(),
            pending: VecDeque::new(),
            cursor: if persistent {
                Cursor::Disk {
                    from: 0,
                    loading: false,
                }
            } else {
                Cursor::Volatile
            },
            next_volatile_id: 1,
            dup_below,
            sent_hi: 0,
            reading: None,
        }
    }

    /// What the next connection's `dup_below` should be.
    pub fn dup_below(&self) -> u64 {
        self.dup_below.max(self.sent_hi)
    }

    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    /// Nothing in flight, queued or left on disk to load: nothing will happen
    /// until a delivery arrives.
    pub fn is_idle(&self) -> bool {
        self.inflight.is_empty()
            && self.pending.is_empty()
            && !matches!(self.cursor, Cursor::Disk { .. })
    }

    /// Give back queue memory kept from busier times.
    pub fn shrink(&mut self) {
        self.pending.shrink_to_fit();
    }

    /// The message of the delivery in flight under `packet_id`, if any.
    pub fn inflight_message(&self, packet_id: u16) -> Option<&Message> {
        self.inflight.get(&packet_id).map(|f| &*f.out.msg)
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// A connection took the session: resend what is unacknowledged (with DUP) and
    /// start sending. `receive_max` is the client's Receive Maximum (v5) or 65535.
    pub fn attach(&mut self, receive_max: u16, now: Instant) -> Vec<Action> {
        self.window = self.config.max_inflight.min(receive_max).max(1);
        let mut actions = Vec::new();
        for (id, f) in self.inflight.iter_mut() {
            f.sent_at = now;
            if let Some(action) = resend(*id, f) {
                actions.push(action);
            }
        }
        self.pump(now, &mut actions);
        actions
    }

    /// A stored delivery, completed by the store writer in seq order.
    pub fn deliver_stored(&mut self, out: Outgoing, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(seq) = out.seq else {
            return self.deliver_volatile(out, now);
        };
        match self.cursor {
            // The read that is out may have missed it: kept for `loaded`.
            Cursor::Disk {
                from,
                loading: true,
            } if seq >= from => {
                let page_size = self.config.page_size();
                let reading = self.reading.get_or_insert_with(Box::default);
                if reading.early.len() < page_size {
                    reading.early.push(out);
                } else {
                    reading.early = Vec::new();
                    reading.reload = true;
                }
            }
            // Stored, so the next page read will bring it.
            Cursor::Disk { .. } => {}
            Cursor::Volatile => {
                tracing::warn!(client_id = %self.client, seq, "stored delivery for a volatile session");
            }
            Cursor::Live { next } if seq < next => {}
            Cursor::Live { next }
                if seq > next || self.pending.len() >= self.config.page_size() =>
            {
                // Out of memory budget (or a gap): read it back from disk later.
                self.cursor = Cursor::Disk {
                    from: next,
                    loading: false,
                };
            }
            Cursor::Live { .. } => {
                self.cursor = Cursor::Live { next: seq + 1 };
                self.pending.push_back(out);
            }
        }
        self.pump(now, &mut actions);
        actions
    }

    /// Stored deliveries were left out of the mailbox (its backlog was full): what
    /// is not loaded yet is read from the store.
    pub fn behind(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.cursor {
            Cursor::Live { next } => {
                self.cursor = Cursor::Disk {
                    from: next,
                    loading: false,
                };
                self.pump(now, &mut actions);
            }
            // The read that is out may have been taken before the left-out entries
            // were written: read on after it.
            Cursor::Disk { loading: true, .. } => {
                self.reading.get_or_insert_with(Box::default).reload = true
            }
            Cursor::Disk { loading: false, .. } | Cursor::Volatile => {}
        }
        actions
    }

    /// A delivery that is not stored (non-persistent session, or QoS 0 to an online one).
    pub fn deliver_volatile(&mut self, out: Outgoing, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let limit = self.config.max_mqueue_len();
        let volatile = match self.cursor {
            Cursor::Volatile => self.pending.len(),
            _ => self.pending.iter().filter(|o| o.seq.is_none()).count(),
        };
        if limit != 0 && volatile >= limit {
            // EMQX's policy: the oldest queued message gives way. Only a volatile
            // one: stored entries in memory are the store's queue (bounded there),
            // and dropping one would delete a message its publisher was acked for.
            if let Some(i) = self.pending.iter().position(|o| o.seq.is_none()) {
                if let Some(old) = self.pending.remove(i) {
                    self.finish_dropped(&old, DropReason::QueueFull, &mut actions);
                }
            }
        }
        self.pending.push_back(out);
        self.pump(now, &mut actions);
        actions
    }

    /// The page read for `Action::LoadQueue { from, limit }`, whenever it comes back:
    /// deliveries, acks and other events may have come in between.
    pub fn loaded(&mut self, from: u64, limit: usize, entries: Page, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.cursor
            != (Cursor::Disk {
                from,
                loading: true,
            })
        {
            return actions; // stale read
        }
        let (early, reload) = match self.reading.take() {
            Some(reading) => (reading.early, reading.reload),
            None => (Vec::new(), false),
        };
        let full_page = entries.len() >= limit;
        let mut next = from;
        for entry in entries {
            let (seq, msg) = (entry.seq, entry.msg);
            next = seq + 1;
            let id = packet_id_of_seq(seq);
            if entry.released {
                let msg = msg.unwrap_or_else(|| Arc::new(placeholder()));
                self.inflight.insert(
                    id,
                    InFlight {
                        out: Outgoing {
                            seq: Some(seq),
                            msg_id: entry.msg_id,
                            msg,
                            qos: QoS::ExactlyOnce,
                            retain: entry.retain,
                            subscription_ids: entry.subscription_ids,
                            resend: true,
                            unreferenced: true,
                        },
                        stage: Stage::Comp,
                        sent_at: now,
                    },
                );
                actions.push(Action::PubRel(id));
                continue;
            }
            let Some(msg) = msg else {
                tracing::warn!(client_id = %self.client, seq, msg_id = entry.msg_id, "queued message is missing");
                actions.push(self.ack_op(seq, false));
                actions.push(Action::Dropped(DropReason::Missing, None));
                continue;
            };
            self.pending.push_back(Outgoing {
                seq: Some(seq),
                msg_id: entry.msg_id,
                msg,
                qos: QoS::from_u8(entry.qos).unwrap_or(QoS::AtMostOnce),
                retain: entry.retain,
                subscription_ids: entry.subscription_ids,
                resend: seq < self.dup_below,
                unreferenced: entry.inline,
            });
        }
        self.cursor = if full_page || reload {
            // What arrived meanwhile is stored: the next read brings it.
            Cursor::Disk {
                from: next,
                loading: false,
            }
        } else {
            self.follow_page(next, early)
        };
        self.pump(now, &mut actions);
        actions
    }

    /// After a short page ending before `next`: the stored deliveries that arrived
    /// while it was read and that it did not hold follow it, if they continue it
    /// without a gap and fit in memory; otherwise the rest is read from disk.
    fn follow_page(&mut self, mut next: u64, early: Vec<Outgoing>) -> Cursor {
        for out in early {
            let Some(seq) = out.seq else { continue };
            if seq < next {
                continue; // the page held it
            }
            if seq > next || self.pending.len() >= self.config.page_size() {
                return Cursor::Disk {
                    from: next,
                    loading: false,
                };
            }
            self.pending.push_back(out);
            next = seq + 1;
        }
        Cursor::Live { next }
    }

    /// The read for `Action::LoadQueue { from, .. }` failed: it is asked again after
    /// `LOAD_RETRY` (`tick`), and what arrived meanwhile is left to that read.
    pub fn load_failed(&mut self, from: u64, now: Instant) -> Vec<Action> {
        if self.cursor
            == (Cursor::Disk {
                from,
                loading: true,
            })
        {
            self.cursor = Cursor::Disk {
                from,
                loading: false,
            };
            // What arrived meanwhile is stored: the retried read brings it.
            self.reading = Some(Box::new(Reading {
                retry_at: Some(now.checked_add(LOAD_RETRY).unwrap_or(now)),
                ..Reading::default()
            }));
        }
        Vec::new()
    }

    pub fn on_puback(&mut self, packet_id: u16, now: Instant) -> Vec<Action> {
        self.complete(packet_id, Stage::Ack, now)
    }

    pub fn on_pubcomp(&mut self, packet_id: u16, now: Instant) -> Vec<Action> {
        self.complete(packet_id, Stage::Comp, now)
    }

    /// PUBREC: `failed` when the v5 reason code is an error, which ends the flow.
    /// Returns None when the packet id is unknown (the caller answers PUBREL 0x92).
    pub fn on_pubrec(&mut self, packet_id: u16, failed: bool, now: Instant) -> Option<Vec<Action>> {
        let f = self.inflight.get_mut(&packet_id)?;
        let mut actions = Vec::new();
        match f.stage {
            Stage::Rec if failed => return Some(self.complete(packet_id, Stage::Rec, now)),
            Stage::Rec => {
                f.sent_at = now;
                match f.out.seq {
                    Some(seq) => {
                        f.stage = Stage::Releasing;
                        actions.push(Action::Release {
                            packet_id,
                            op: Op::Release {
                                client: self.client.clone(),
                                seq,
                                entry: f.out.released_entry(),
                            },
                        });
                    }
                    None => {
                        f.stage = Stage::Comp;
                        actions.push(Action::PubRel(packet_id));
                    }
                }
            }
            // A repeated PUBREC: PUBREL follows once the release is durable.
            Stage::Releasing => {}
            // A repeated PUBREC: repeat the PUBREL.
            Stage::Comp => actions.push(Action::PubRel(packet_id)),
            Stage::Ack => return None,
        }
        Some(actions)
    }

    /// The release asked for by `Action::Release` is durable: send PUBREL.
    pub fn released(&mut self, packet_id: u16, now: Instant) -> Vec<Action> {
        match self.inflight.get_mut(&packet_id) {
            Some(f) if f.stage == Stage::Releasing => {
                f.stage = Stage::Comp;
                f.sent_at = now;
                vec![Action::PubRel(packet_id)]
            }
            _ => Vec::new(),
        }
    }

    /// Drop an in-flight delivery that cannot be sent (too large for the client), as
    /// if it had been acknowledged.
    pub fn discard(&mut self, packet_id: u16, now: Instant) -> Vec<Action> {
        match self.inflight.get(&packet_id).map(|f| f.stage) {
            Some(stage) => self.complete(packet_id, stage, now),
            None => Vec::new(),
        }
    }

    fn complete(&mut self, packet_id: u16, stage: Stage, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match self.inflight.get(&packet_id) {
            Some(f) if f.stage == stage => {}
            _ => {
                tracing::debug!(client_id = %self.client, packet_id, ?stage, "ack for unknown packet id");
                return actions;
            }
        }
        if let Some(f) = self.inflight.remove(&packet_id) {
            if let Some(seq) = f.out.seq {
                // A released entry (PUBCOMP) no longer holds its message.
                actions.push(self.ack_op(seq, f.out.unreferenced || stage == Stage::Comp));
            }
        }
        self.pump(now, &mut actions);
        actions
    }

    /// Resend what has waited `retry_interval`; returns packets to send.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.retry_at().is_some_and(|at| now >= at) {
            self.reading = None;
            self.pump(now, &mut actions);
        }
        let retry = self.config.retry_interval();
        for (id, f) in self.inflight.iter_mut() {
            if f.stage != Stage::Releasing && now.saturating_duration_since(f.sent_at) >= retry {
                f.sent_at = now;
                actions.extend(resend(*id, f));
            }
        }
        actions
    }

    /// When `tick` next has work.
    pub fn next_timeout(&self) -> Option<Instant> {
        // checked: a configured interval may be absurdly large, never a panic.
        self.inflight
            .values()
            .filter(|f| f.stage != Stage::Releasing)
            .filter_map(|f| f.sent_at.checked_add(self.config.retry_interval()))
            .chain(self.retry_at())
            .min()
    }

    /// A page read failed and waits for its retry (`tick`).
    pub fn retrying_load(&self) -> bool {
        self.retry_at().is_some()
    }

    /// When a failed page read is tried again.
    fn retry_at(&self) -> Option<Instant> {
        self.reading.as_ref().and_then(|r| r.retry_at)
    }

    /// Hand out what the window allows. Message expiry is the channel's to check
    /// when it sends (it has the wall clock): an expired delivery comes back through
    /// `discard`, as one too large for the client does.
    fn pump(&mut self, now: Instant, actions: &mut Vec<Action>) {
        while self.inflight.len() < usize::from(self.window) {
            let Some(out) = self.pending.pop_front() else {
                break;
            };
            if out.qos == QoS::AtMostOnce {
                if let Some(seq) = out.seq {
                    self.sent_hi = self.sent_hi.max(seq + 1);
                    actions.push(self.ack_op(seq, out.unreferenced));
                }
                actions.push(Action::Publish {
                    packet_id: None,
                    dup: false,
                    out,
                });
                continue;
            }
            let id = match out.seq {
                Some(seq) => packet_id_of_seq(seq),
                None => match self.free_volatile_id() {
                    Some(id) => id,
                    None => {
                        self.pending.push_front(out);
                        break;
                    }
                },
            };
            if self.inflight.contains_key(&id) {
                // Its id is still taken (a wrapped seq): wait for that ack.
                self.pending.push_front(out);
                break;
            }
            let stage = if out.qos == QoS::AtLeastOnce {
                Stage::Ack
            } else {
                Stage::Rec
            };
            if let Some(seq) = out.seq {
                self.sent_hi = self.sent_hi.max(seq + 1);
            }
            actions.push(Action::Publish {
                packet_id: Some(id),
                dup: out.resend,
                out: out.clone(),
            });
            self.inflight.insert(
                id,
                InFlight {
                    out,
                    stage,
                    sent_at: now,
                },
            );
        }
        // Prefetch: the next page is asked for once the one in memory is half
        // sent, so its read runs while the rest goes out and the socket never
        // waits for the disk. Memory holds at most about a page and a half.
        if let Cursor::Disk {
            from,
            loading: false,
        } = self.cursor
        {
            let half = (self.config.page_size() / 2).max(1);
            if self.pending.len() < half && self.retry_at().is_none() {
                self.cursor = Cursor::Disk {
                    from,
                    loading: true,
                };
                actions.push(Action::LoadQueue {
                    from,
                    limit: self.config.page_size(),
                });
            }
        }
    }

    fn free_volatile_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_volatile_id;
            self.next_volatile_id = self.next_volatile_id.checked_add(1).unwrap_or(1);
            if !self.inflight.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    fn finish_dropped(&self, out: &Outgoing, reason: DropReason, actions: &mut Vec<Action>) {
        if let Some(seq) = out.seq {
            actions.push(self.ack_op(seq, out.unreferenced));
        }
        actions.push(Action::Dropped(reason, Some(out.msg.clone())));
    }

    /// The store op completing entry `seq`; `unreferenced` when the entry is known
    /// to hold no message reference (the writer then need not read it).
    fn ack_op(&self, seq: u64, unreferenced: bool) -> Action {
        let client = self.client.clone();
        Action::Store(if unreferenced {
            Op::AckUnreferenced { client, seq }
        } else {
            Op::Ack { client, seq }
        })
    }
}

/// What to send again for an in-flight delivery (nothing while its release is being
/// stored: PUBREL follows that).
fn resend(packet_id: u16, f: &InFlight) -> Option<Action> {
    match f.stage {
        Stage::Releasing => None,
        Stage::Comp => Some(Action::PubRel(packet_id)),
        Stage::Ack | Stage::Rec => Some(Action::Publish {
            packet_id: Some(packet_id),
            dup: true,
            out: f.out.clone(),
        }),
    }
}

/// Stand-in for a released QoS 2 entry, whose message is no longer needed (only its
/// packet id is: PUBREL carries no payload).
fn placeholder() -> Message {
    Message {
        topic: bytes::Bytes::new(),
        payload: bytes::Bytes::new(),
        qos: QoS::ExactlyOnce,
        retain: false,
        from: Arc::from(""),
        publish_ms: 0,
        expiry_ms: 0,
        properties: Default::default(),
    }
}
