//! The simulated broker: the broker and connection roles played synchronously, over
//! the REAL store writer logic (`WriterCore` on a `SimBackend`), the REAL session
//! state machines (`Outbound`, `Inbound`), the REAL registry, mailboxes and retained
//! index. The async connection driver is not sans-IO yet, so its rules are mirrored
//! here, one function per real one; keep them in step when the real ones change:
//!
//! | here | mirrors |
//! |------|---------|
//! | `accept_next`, `finish_accept` | `connection::connect::accept` (lock per client id, `take_over`, resume / create / discard, `PutSession`, barrier, CONNACK, `attach`) |
//! | `finish`, `detach` | `Connection::finish`, `Connection::detach` (ownership check, end or record the session, wills) |
//! | `turn` | one turn of `Connection::run`: mailbox events, `behind`, kick (drain what the client sent, then finish), packets, `flush_store_ops` |
//! | `on_packet`, `on_publish`, `on_durable`, `on_subscribe`, `on_unsubscribe` | `connection/packets.rs` |
//! | `execute`, `when_durable`, `load_page` | `connection/outgoing.rs` |
//! | `on_event` | `Connection::on_event` |
//! | `on_timer` | `Connection::on_timer` (retries, `await_rel_timeout`) |
//! | `publish`, `retain`, `retained_for` | `broker/publish.rs` |
//! | `recover`, `sweep` | `Broker::recover`, `Broker::sweep_expired` |
//! | `delay_will`, `cancel_will`, `publish_will_now`, due wills | `broker/wills.rs` |
//! | `commit` | the writer thread: a batch of the first `n` queued requests, completions in order |
//!
//! Differences, on purpose: every client speaks MQTT 5 with default properties, no
//! topic aliases, no size limits, no message expiry (a message's expiry is checked
//! against the real clock inside `Outbound`); time is the simulation's clock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quay::broker::mailbox::Mailbox;
use quay::broker::registry::{
    ConnEvent, ConnLink, Delivered, Registry, SessionHandle, SessionState, SubOpts,
};
use quay::codec::{self, Packet, Properties, PubResp, QoS, ReasonCode, RetainHandling};
use quay::config::{Zone, ZoneConfig};
use quay::message::Message;
use quay::router::RetainedIndex;
use quay::session::{Action, DropReason, Inbound, Outbound, Outgoing, Qos2Arrival, SessionConfig};
use quay_storage::sim::SimBackend;
use quay_storage::{
    read, DelayedWill, Op, QueueEntry, SessionRecord, SubscriptionRecord, WriteRequest, WriterCore,
};

use super::wire::{Down, Pub, Up, WillSpec, Wire};
use super::Mutation;

pub type ClientId = Arc<str>;

/// What the model learns from the broker as it goes.
#[derive(Debug)]
pub enum Event {
    /// A PUBLISH was routed (a new routing, not a QoS 2 duplicate).
    Routed {
        routing: u64,
        topic: String,
        payload: Bytes,
        retain: bool,
        publish_ms: u64,
    },
    /// What that routing stored is durable (its completion ran with success);
    /// `wrote`: it had something to store (else it completed at once).
    Durable { routing: u64, wrote: bool },
    /// A delivery was dropped by a queue limit (allowed to be missing).
    Dropped { client: ClientId, payload: Bytes },
    /// A stored entry's message was gone: always a bug.
    Missing { client: ClientId, seq: u64 },
}

/// What runs when a queued store request completes.
pub enum Done {
    Detached,
    Publish {
        routing: u64,
        stored: Vec<(Arc<SessionHandle>, Outgoing)>,
        retained: Option<Arc<Message>>,
        publisher: Option<(Arc<Mailbox>, u16, QoS)>,
    },
    Event(Arc<Mailbox>, ConnEvent),
    SubscribeStored {
        mailbox: Arc<Mailbox>,
        ack: Box<Packet>,
        retained: Vec<Outgoing>,
        stored: Vec<Outgoing>,
    },
    Barrier(u64),
    RetainedSweep(Vec<Bytes>),
}

/// A CONNECT accepted up to its store barrier (`accept` before CONNACK).
struct Accepting {
    wire: u64,
    client: ClientId,
    handle: Arc<SessionHandle>,
    mailbox: Arc<Mailbox>,
    persistent: bool,
    resume: bool,
    dup_below: u64,
    will: Option<WillSpec>,
}

pub struct Conn {
    pub id: u64,
    pub wire: u64,
    pub client: ClientId,
    handle: Arc<SessionHandle>,
    mailbox: Arc<Mailbox>,
    persistent: bool,
    outbound: Outbound,
    inbound: Inbound,
    pending_in: BTreeMap<u16, bool>,
    store_ops: Vec<Op>,
    will: Option<WillSpec>,
}

enum Close {
    ByClient,
    Kicked,
    Lost,
    ProtocolError,
}

pub struct SimBroker {
    core: WriterCore<SimBackend>,
    /// Submitted, not yet committed, in submission order.
    pending: Vec<(WriteRequest, Done)>,
    registry: Registry,
    retained: RetainedIndex,
    /// Delayed wills: client -> (due ms, message).
    wills: BTreeMap<ClientId, (u64, Message)>,
    pub conns: BTreeMap<u64, Conn>,
    accepting: BTreeMap<u64, Accepting>,
    pub wires: BTreeMap<u64, Wire>,
    /// CONNECTs per client id, in arrival order, waiting for `accept_next`.
    pub connects: BTreeMap<ClientId, VecDeque<u64>>,
    next_msg_id: u64,
    next_id: u64,
    incarnation_base: u64,
    next_routing: u64,
    zone: Arc<Zone>,
    retainer_expiry_ms: u64,
    pub events: Vec<Event>,
    pub problems: Vec<String>,
    /// Trace lines of what the broker did, for a failing seed's report.
    pub log: Vec<String>,
    /// Simulated time: `base + now_ms - epoch_ms`.
    base: Instant,
    pub now_ms: u64,
    epoch_ms: u64,
    page_size: usize,
    mutation: Mutation,
}

/// Settings a seed chooses.
#[derive(Debug, Clone, Copy)]
pub struct BrokerSettings {
    pub max_inflight: u16,
    pub max_mqueue_len: usize,
    pub page_size: usize,
    pub retainer_expiry_s: u64,
    pub mqueue_store_qos0: bool,
}

fn resp(packet_id: u16, reason: ReasonCode) -> PubResp {
    PubResp {
        packet_id,
        reason,
        properties: Properties::default(),
    }
}

impl SimBroker {
    /// A broker over `disk`, recovered from it as `Broker::open` does.
    pub fn open(
        disk: SimBackend,
        settings: BrokerSettings,
        base: Instant,
        epoch_ms: u64,
        now_ms: u64,
        restarts: u64,
        mutation: Mutation,
    ) -> SimBroker {
        let zone = Arc::new(Zone {
            name: "external".into(),
            config: ZoneConfig {
                max_inflight: settings.max_inflight,
                max_mqueue_len: settings.max_mqueue_len,
                mqueue_store_qos0: settings.mqueue_store_qos0,
                ..ZoneConfig::DEFAULT
            },
        });
        let next_msg_id = read::last_msg_id(&disk).expect("sim reads") + 1;
        let mut broker = SimBroker {
            core: WriterCore::new(disk, true),
            pending: Vec::new(),
            registry: Registry::default(),
            retained: RetainedIndex::default(),
            wills: BTreeMap::new(),
            conns: BTreeMap::new(),
            accepting: BTreeMap::new(),
            wires: BTreeMap::new(),
            connects: BTreeMap::new(),
            next_msg_id,
            next_id: 1,
            // Unique across restarts, as the wall clock at start is in `Broker`.
            incarnation_base: (restarts + 1) << 32,
            next_routing: restarts << 32,
            zone,
            retainer_expiry_ms: settings.retainer_expiry_s * 1000,
            events: Vec::new(),
            problems: Vec::new(),
            log: Vec::new(),
            base,
            now_ms,
            epoch_ms,
            page_size: settings.page_size,
            mutation,
        };
        broker.recover();
        broker
    }

    pub fn now(&self) -> Instant {
        self.base + Duration::from_millis(self.now_ms - self.epoch_ms)
    }

    pub fn retainer_expiry_ms(&self) -> u64 {
        self.retainer_expiry_ms
    }

    pub fn backend(&self) -> &SimBackend {
        self.core.backend()
    }

    /// Power failure: the disk as it survives (`keep` of the unsynced batches).
    pub fn crash(self, keep: usize) -> SimBackend {
        self.core.into_backend().crash(keep)
    }

    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    fn submit(&mut self, ops: Vec<Op>, done: Done) {
        let waited = !matches!(done, Done::Detached);
        self.pending.push((WriteRequest { ops, waited }, done));
    }

    fn submit_detached(&mut self, ops: Vec<Op>) {
        self.submit(ops, Done::Detached);
    }

    /// The writer thread's turn: one batch of the first `n` queued requests, then
    /// their completions in order. Returns the store's broken invariants.
    pub fn commit(&mut self, n: usize) -> Vec<String> {
        let n = n.min(self.pending.len());
        let (requests, dones): (Vec<WriteRequest>, Vec<Done>) = self.pending.drain(..n).unzip();
        for (i, r) in requests.iter().enumerate() {
            let ops: Vec<String> = r.ops.iter().map(brief).collect();
            self.log.push(format!(
                "  batch[{i}]{}: {}",
                if r.waited { " (waited)" } else { "" },
                ops.join(", ")
            ));
        }
        let results = self.core.commit(&requests);
        let problems = quay_storage::check_invariants(self.core.backend()).expect("sim reads");
        for (done, result) in dones.into_iter().zip(results) {
            self.complete(done, result);
        }
        problems
    }

    fn complete(&mut self, done: Done, result: quay_storage::Result<quay_storage::Enqueued>) {
        match done {
            Done::Detached => {}
            Done::Publish {
                routing,
                stored,
                retained,
                publisher,
            } => {
                if let Some(msg) = &retained {
                    self.retained.committed(msg.topic_str(), msg);
                }
                let ok = match result {
                    Ok(seqs) => {
                        for ((handle, mut out), seq) in stored.into_iter().zip(seqs) {
                            match seq {
                                Some(seq) => {
                                    out.seq = Some(seq);
                                    handle.deliver_stored(out);
                                }
                                None => self.events.push(Event::Dropped {
                                    client: handle.client_id.clone(),
                                    payload: out.msg.payload.clone(),
                                }),
                            }
                        }
                        self.events.push(Event::Durable {
                            routing,
                            wrote: true,
                        });
                        true
                    }
                    Err(_) => false,
                };
                if let Some((mailbox, packet_id, qos)) = publisher {
                    mailbox.push(ConnEvent::Durable { packet_id, qos, ok });
                }
            }
            Done::Event(mailbox, event) => {
                if result.is_ok() {
                    mailbox.push(event);
                } else {
                    mailbox.kick(ReasonCode::UNSPECIFIED_ERROR);
                }
            }
            Done::SubscribeStored {
                mailbox,
                ack,
                mut retained,
                stored,
            } => match result {
                Ok(seqs) => {
                    for (mut out, seq) in stored.into_iter().zip(seqs) {
                        if let Some(seq) = seq {
                            out.seq = Some(seq);
                            retained.push(out);
                        }
                    }
                    mailbox.push(ConnEvent::Reply(ack, retained));
                }
                Err(_) => mailbox.kick(ReasonCode::UNSPECIFIED_ERROR),
            },
            Done::Barrier(conn) => self.finish_accept(conn),
            Done::RetainedSweep(topics) => {
                if let Ok(deleted) = result {
                    for (topic, deleted) in topics.iter().zip(deleted) {
                        if let (Some(_), Ok(t)) = (deleted, std::str::from_utf8(topic)) {
                            self.retained.remove_expired(t);
                        }
                    }
                }
            }
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn next_incarnation(&mut self) -> u64 {
        self.incarnation_base + self.next_id()
    }

    fn session_config(&self) -> SessionConfig {
        SessionConfig {
            max_inflight: self.zone.max_inflight,
            retry_interval: self.zone.retry_interval,
            max_mqueue_len: self.zone.max_mqueue_len,
            page_size: self.page_size,
        }
    }

    fn send(&mut self, wire: u64, packet: Down) {
        self.log.push(format!("  wire {wire} <- {packet:?}"));
        if let Some(w) = self.wires.get_mut(&wire) {
            w.down.push_back(packet);
        }
    }

    // ---- recovery and the sweep (broker/mod.rs) ----

    fn recover(&mut self) {
        let now = self.now();
        let now_ms = self.now_ms;
        let disk = self.core.backend();
        let sessions = read::sessions(disk).expect("sim reads");
        let mut expired = Vec::new();
        for (client, record) in sessions {
            let offline_ms = if record.disconnected_ms == 0 {
                0
            } else {
                now_ms.saturating_sub(record.disconnected_ms)
            };
            let expiry_ms = record.expiry_interval_s as u64 * 1000;
            if record.expiry_interval_s != u32::MAX && offline_ms >= expiry_ms {
                expired.push(client);
                continue;
            }
            let offline_since = now
                .checked_sub(Duration::from_millis(offline_ms))
                .unwrap_or(now);
            let next_seq = read::next_queue_seq(disk, &client).expect("sim reads");
            let dup_below = if record.disconnected_ms == 0 {
                next_seq
            } else {
                record.dup_below.min(next_seq)
            };
            self.registry.insert(SessionHandle::new(
                Arc::from(client.as_str()),
                SessionState {
                    live: true,
                    incarnation: record.incarnation,
                    persistent: true,
                    expiry_interval_s: record.expiry_interval_s,
                    conn: None,
                    offline_since: Some(offline_since),
                    subscriptions: Default::default(),
                    zone: self.zone.clone(),
                    connected_at_ms: 0,
                    peer: Box::from(""),
                    protocol_level: record.protocol_level,
                    dup_below,
                },
            ));
        }
        for (client, filter, record) in read::subscriptions(disk).expect("sim reads") {
            let Some(handle) = self.registry.get(&client) else {
                continue;
            };
            let opts = SubOpts {
                qos: QoS::from_u8(record.qos).unwrap_or_default(),
                no_local: record.no_local,
                retain_as_published: record.retain_as_published,
                retain_handling: RetainHandling::SendAlways,
                subscription_id: record.subscription_id,
            };
            self.registry.subscribe(&handle, &filter, opts);
        }
        for topic in read::retained_topics(disk).expect("sim reads") {
            if let Ok(t) = std::str::from_utf8(&topic) {
                self.retained.insert(t);
            }
        }
        for (client, will) in read::wills(disk).expect("sim reads") {
            self.wills.insert(
                Arc::from(client.as_str()),
                (will.due_ms, Message::from_stored(will.msg)),
            );
        }
        if !expired.is_empty() {
            let ops = expired
                .into_iter()
                .map(|c| Op::DeleteSession {
                    client: Arc::from(c.as_str()),
                })
                .collect();
            self.submit_detached(ops);
        }
    }

    /// `Broker::sweep_expired` at the simulated now.
    pub fn sweep(&mut self) {
        let now = self.now();
        let now_ms = self.now_ms;
        let due: Vec<ClientId> = self
            .wills
            .iter()
            .filter(|(_, (due, _))| *due <= now_ms)
            .map(|(c, _)| c.clone())
            .collect();
        for client in due {
            self.publish_will_now(&client);
        }
        for handle in self.registry.all() {
            let mut end = false;
            let ended = self.registry.remove_if(
                &handle,
                |st| match (st.conn.is_none(), st.offline_since) {
                    (true, Some(since)) if st.expiry_interval_s != u32::MAX => {
                        now.saturating_duration_since(since)
                            >= Duration::from_secs(st.expiry_interval_s as u64)
                    }
                    _ => false,
                },
                |st| end = st.persistent,
            );
            if end {
                self.submit_detached(vec![Op::DeleteSession {
                    client: handle.client_id.clone(),
                }]);
            }
            if ended {
                self.publish_will_now(&handle.client_id);
            }
        }
        let topics = read::expired_retained(self.core.backend(), now_ms).expect("sim reads");
        if !topics.is_empty() {
            let ops = topics
                .iter()
                .map(|topic| Op::DeleteRetainedIfExpired {
                    topic: topic.clone(),
                    now_ms,
                })
                .collect();
            self.submit(ops, Done::RetainedSweep(topics));
        }
    }

    // ---- wills (broker/wills.rs) ----

    fn delay_will(&mut self, client: ClientId, due_ms: u64, msg: Message) {
        let will = DelayedWill {
            due_ms,
            msg: msg.to_stored(),
        };
        self.submit_detached(vec![Op::PutWill {
            client: client.clone(),
            will,
        }]);
        self.wills.insert(client, (due_ms, msg));
    }

    fn cancel_will(&mut self, client: &ClientId) {
        if self.wills.remove(client).is_some() {
            self.submit_detached(vec![Op::DeleteWill {
                client: client.clone(),
            }]);
        }
    }

    fn publish_will_now(&mut self, client: &ClientId) {
        if let Some((_, msg)) = self.wills.remove(client) {
            self.publish(
                msg,
                vec![Op::DeleteWill {
                    client: client.clone(),
                }],
                None,
            );
        }
    }

    // ---- the publish path (broker/publish.rs) ----

    /// Route `msg`; `publisher` is told `Durable` once what it needed is stored.
    /// Returns how many subscribers matched.
    fn publish(
        &mut self,
        msg: Message,
        extra: Vec<Op>,
        publisher: Option<(Arc<Mailbox>, u16, QoS)>,
    ) -> usize {
        let msg = Arc::new(msg);
        let routing = self.next_routing;
        self.next_routing += 1;
        self.events.push(Event::Routed {
            routing,
            topic: msg.topic_str().to_owned(),
            payload: msg.payload.clone(),
            retain: msg.retain,
            publish_ms: msg.publish_ms,
        });
        let mut ops = extra;
        let retained = msg.retain && self.retain(&msg, &mut ops);
        let targets = self.registry.targets(msg.topic_str());
        let msg_id = self.next_msg_id;
        self.next_msg_id += 1;
        let mut stored: Vec<(Arc<SessionHandle>, Outgoing)> = Vec::new();
        let mut enqueues: Vec<Op> = Vec::new();
        let mut matched = 0;
        for t in targets {
            if t.no_local && *t.handle.client_id == *msg.from {
                continue;
            }
            matched += 1;
            let (persistent, online, incarnation, max_len, upgrade_qos, store_qos0) = {
                let st = t.handle.state();
                (
                    st.persistent,
                    st.conn.is_some(),
                    st.incarnation,
                    st.zone.max_mqueue_len as u64,
                    st.zone.upgrade_qos,
                    st.zone.mqueue_store_qos0,
                )
            };
            let qos = if upgrade_qos {
                t.qos
            } else {
                msg.qos.min(t.qos)
            };
            let out = Outgoing {
                seq: None,
                msg_id,
                msg: msg.clone(),
                qos,
                retain: msg.retain && t.retain_as_published,
                subscription_ids: t.subscription_ids,
                resend: false,
            };
            if persistent && (qos != QoS::AtMostOnce || (!online && store_qos0)) {
                enqueues.push(Op::Enqueue {
                    client: t.handle.client_id.clone(),
                    incarnation,
                    entry: QueueEntry {
                        msg_id,
                        qos: qos as u8,
                        retain: out.retain,
                        released: false,
                        subscription_ids: out.subscription_ids.clone(),
                        inline: None,
                    },
                    max_len,
                });
                stored.push((t.handle, out));
            } else if online && t.handle.deliver(out) == Delivered::Dropped {
                self.events.push(Event::Dropped {
                    client: t.handle.client_id.clone(),
                    payload: msg.payload.clone(),
                });
            }
        }
        match enqueues.as_mut_slice() {
            [] => {}
            [Op::Enqueue { entry, .. }] => entry.inline = Some(msg.to_stored()),
            _ => ops.push(Op::Message {
                id: msg_id,
                msg: msg.to_stored(),
            }),
        }
        ops.append(&mut enqueues);
        let mut publisher = publisher;
        if self.mutation == Mutation::PubackBeforeDurable {
            // The defect: the publisher is acknowledged before the store is durable.
            if let Some((mailbox, packet_id, qos)) = publisher.take() {
                mailbox.push(ConnEvent::Durable {
                    packet_id,
                    qos,
                    ok: true,
                });
            }
        }
        if ops.is_empty() {
            if msg.retain && publisher.as_ref().is_some_and(|p| p.2 != QoS::AtMostOnce) {
                // Acknowledged at once, although an earlier update of this retained
                // topic may not be durable yet (a clear whose topic the index had
                // already forgotten): after a crash the old message is back.
                let topic = msg.topic.clone();
                let earlier = self.pending.iter().any(|(r, _)| {
                    r.ops.iter().any(|op| match op {
                        Op::PutRetained { topic: t, .. } | Op::DeleteRetained { topic: t } => {
                            *t == topic
                        }
                        _ => false,
                    })
                });
                if earlier && super::known_bugs() {
                    self.problems.push(format!(
                        "{}: retained clear of {} acknowledged before the earlier update of that topic is durable",
                        msg.from,
                        msg.topic_str()
                    ));
                }
            }
            self.events.push(Event::Durable {
                routing,
                wrote: false,
            });
            if let Some((mailbox, packet_id, qos)) = publisher {
                mailbox.push(ConnEvent::Durable {
                    packet_id,
                    qos,
                    ok: true,
                });
            }
            return matched;
        }
        let done = Done::Publish {
            routing,
            stored,
            retained: retained.then(|| msg.clone()),
            publisher,
        };
        self.submit(ops, done);
        matched
    }

    fn retain(&mut self, msg: &Arc<Message>, ops: &mut Vec<Op>) -> bool {
        let topic = msg.topic_str();
        if msg.payload.is_empty() {
            if self.retained.remove(topic) {
                ops.push(Op::DeleteRetained {
                    topic: msg.topic.clone(),
                });
            }
            return false;
        }
        let mut stored = msg.to_stored();
        if stored.expiry_ms == 0 && self.retainer_expiry_ms != 0 {
            stored.expiry_ms = msg.publish_ms + self.retainer_expiry_ms;
        }
        self.retained.set_pending(topic, msg.clone());
        self.retained.insert(topic);
        ops.push(Op::PutRetained {
            topic: msg.topic.clone(),
            msg: stored,
        });
        true
    }

    fn retained_for(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = self.now_ms;
        self.retained
            .matching(filter)
            .into_iter()
            .filter_map(|topic| {
                if let Some(msg) = self.retained.pending(&topic) {
                    return (!msg.is_expired(now)).then_some(msg);
                }
                match read::retained(self.core.backend(), topic.as_bytes()) {
                    Ok(Some(stored)) if !stored.is_expired(now) => {
                        // The retained copy's expiry is the retainer's, checked here
                        // on the simulated clock; `Outbound` checks a message's own
                        // expiry against the real clock, so it is not carried.
                        let mut msg = Message::from_stored(stored);
                        msg.expiry_ms = 0;
                        Some(Arc::new(msg))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    // ---- CONNECT (connection/connect.rs) ----

    /// A client opened `wire` and sent CONNECT: it waits for its client id's turn.
    pub fn connect_arrived(&mut self, client: &ClientId, wire: u64) {
        self.wires.entry(wire).or_default();
        self.connects
            .entry(client.clone())
            .or_default()
            .push_back(wire);
    }

    /// Clients with a CONNECT waiting.
    pub fn clients_connecting(&self) -> Vec<ClientId> {
        self.connects.keys().cloned().collect()
    }

    /// Move `client`'s first waiting CONNECT on: kick the connection holding the
    /// session (the CONNECT then waits for it to finish), or decide and submit.
    /// Returns whether anything changed.
    pub fn accept_next(&mut self, client: &ClientId) -> bool {
        let Some(&wire) = self.connects.get(client).and_then(|q| q.front()) else {
            return false;
        };
        // take_over: kick the holder and wait until it has finished.
        if let Some(handle) = self.registry.get(client) {
            let old = handle.state().conn.as_ref().map(|l| l.mailbox.clone());
            if let Some(old) = old {
                let already = old.take_kick();
                old.kick(ReasonCode::SESSION_TAKEN_OVER);
                return already.is_none();
            }
        }
        if let Some(q) = self.connects.get_mut(client) {
            q.pop_front();
            if q.is_empty() {
                self.connects.remove(client);
            }
        }
        let Some(Up::Connect {
            clean_start,
            expiry_s,
            will,
        }) = self.wires.get_mut(&wire).and_then(|w| w.up.pop_front())
        else {
            return true; // the client went away before sending anything
        };
        let expiry_s = expiry_s.min(self.zone.session_expiry_interval.as_secs() as u32);
        let persistent = expiry_s > 0;
        let existing = self.registry.get(client);
        let conn_id = self.next_id();
        let mailbox = Arc::new(Mailbox::default());
        let mut link = Some(ConnLink {
            conn_id,
            mailbox: mailbox.clone(),
        });
        let zone = self.zone.clone();
        let resumed = existing.filter(|_| !clean_start).and_then(|h| {
            let mut st = h.state();
            if !(st.live && st.persistent && st.conn.is_none()) {
                return None;
            }
            st.expiry_interval_s = expiry_s;
            st.conn = link.take();
            st.offline_since = None;
            st.zone = zone.clone();
            let (dup_below, incarnation) = (st.dup_below, st.incarnation);
            drop(st);
            Some((h, dup_below, incarnation))
        });
        let resume = resumed.is_some();
        let persistent = persistent || resume;
        let mut existed_persistent = false;
        let (handle, dup_below, incarnation) = match resumed {
            Some(resumed) => {
                self.cancel_will(client);
                resumed
            }
            None => {
                if let Some(old) = self.registry.get(client) {
                    let mut end = false;
                    self.registry
                        .remove_if(&old, |_| true, |st| end = st.persistent);
                    if end {
                        existed_persistent = true;
                        self.submit_detached(vec![Op::DeleteSession {
                            client: client.clone(),
                        }]);
                    }
                }
                self.publish_will_now(client);
                let incarnation = self.next_incarnation();
                let h = SessionHandle::new(
                    client.clone(),
                    SessionState {
                        live: true,
                        incarnation,
                        persistent,
                        expiry_interval_s: expiry_s,
                        conn: link.take(),
                        offline_since: None,
                        subscriptions: Default::default(),
                        zone: zone.clone(),
                        connected_at_ms: 0,
                        peer: Box::from(""),
                        protocol_level: 5,
                        dup_below: 0,
                    },
                );
                self.registry.insert(h.clone());
                (h, 0, incarnation)
            }
        };
        if persistent {
            let record = SessionRecord {
                protocol_level: 5,
                expiry_interval_s: expiry_s,
                disconnected_ms: 0,
                dup_below,
                zone: zone.name.clone(),
                incarnation,
            };
            self.submit_detached(vec![Op::PutSession {
                client: client.clone(),
                record,
            }]);
        }
        self.accepting.insert(
            conn_id,
            Accepting {
                wire,
                client: client.clone(),
                handle,
                mailbox,
                persistent,
                resume,
                dup_below,
                will,
            },
        );
        if persistent || resume || existed_persistent {
            self.submit(Vec::new(), Done::Barrier(conn_id));
        } else {
            self.finish_accept(conn_id);
        }
        true
    }

    /// After the barrier: QoS 2 state, CONNACK, attach.
    fn finish_accept(&mut self, conn_id: u64) {
        let Some(a) = self.accepting.remove(&conn_id) else {
            return;
        };
        let now = self.now();
        let restored = if a.resume {
            read::awaiting_rel(self.core.backend(), &a.client).expect("sim reads")
        } else {
            Vec::new()
        };
        let mut conn = Conn {
            id: conn_id,
            wire: a.wire,
            client: a.client.clone(),
            handle: a.handle,
            mailbox: a.mailbox,
            persistent: a.persistent,
            outbound: Outbound::new(
                a.client.clone(),
                a.persistent,
                a.dup_below,
                self.session_config(),
            ),
            // v5 clients are bounded by our Receive Maximum instead.
            inbound: Inbound::new(0, restored, now),
            pending_in: BTreeMap::new(),
            store_ops: Vec::new(),
            will: a.will,
        };
        self.send(conn.wire, Down::ConnAck { present: a.resume });
        let actions = conn.outbound.attach(u16::MAX, now);
        self.execute(&mut conn, actions);
        self.conns.insert(conn_id, conn);
    }

    // ---- the connection loop (connection/mod.rs) ----

    /// One turn of the connection's loop: events, kick, then up to `packets` packets
    /// from its client, then its gathered store writes. Returns whether anything
    /// happened.
    pub fn turn(&mut self, conn_id: u64, packets: usize) -> bool {
        let Some(mut conn) = self.conns.remove(&conn_id) else {
            return false;
        };
        let mut busy = false;
        let events = conn.mailbox.take_all();
        busy |= !events.is_empty();
        for event in events {
            self.on_event(&mut conn, event);
        }
        if conn.mailbox.take_behind() {
            let actions = conn.outbound.behind(self.now());
            self.execute(&mut conn, actions);
        }
        if conn.mailbox.take_kick().is_some() {
            // What the client sent before it was replaced still counts.
            let close = loop {
                let Some(p) = self
                    .wires
                    .get_mut(&conn.wire)
                    .and_then(|w| w.up.pop_front())
                else {
                    break Close::Kicked;
                };
                if let Err(close) = self.on_packet(&mut conn, p) {
                    break close;
                }
            };
            self.finish(conn, close);
            return true;
        }
        for _ in 0..packets {
            let Some(p) = self
                .wires
                .get_mut(&conn.wire)
                .and_then(|w| w.up.pop_front())
            else {
                break;
            };
            busy = true;
            if let Err(close) = self.on_packet(&mut conn, p) {
                self.finish(conn, close);
                return true;
            }
        }
        self.flush_store_ops(&mut conn);
        self.conns.insert(conn_id, conn);
        busy
    }

    pub fn on_timer_all(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(mut conn) = self.conns.remove(&id) {
                self.on_timer(&mut conn);
                self.conns.insert(id, conn);
            }
        }
    }

    fn on_timer(&mut self, conn: &mut Conn) {
        let now = self.now();
        let actions = conn.outbound.tick(now);
        self.execute(conn, actions);
        for id in conn.inbound.expire(now, self.zone.await_rel_timeout) {
            if conn.persistent {
                conn.store_ops.push(Op::DeleteAwaitingRel {
                    client: conn.client.clone(),
                    packet_id: id,
                });
            }
        }
    }

    fn on_event(&mut self, conn: &mut Conn, event: ConnEvent) {
        let now = self.now();
        match event {
            ConnEvent::Deliver(out) => {
                let actions = if out.seq.is_some() {
                    conn.outbound.deliver_stored(out, now)
                } else {
                    conn.outbound.deliver_volatile(out, now)
                };
                self.execute(conn, actions);
            }
            ConnEvent::Durable { packet_id, qos, ok } => self.on_durable(conn, packet_id, qos, ok),
            ConnEvent::Reply(packet, retained) => {
                match *packet {
                    // A PUBCOMP frees its id's Receive Maximum slot as it leaves.
                    Packet::PubComp(r) => self.send_pubcomp(conn, r.packet_id),
                    other => self.send_packet(conn.wire, other),
                }
                for out in retained {
                    let actions = if out.seq.is_some() {
                        conn.outbound.deliver_stored(out, now)
                    } else {
                        conn.outbound.deliver_volatile(out, now)
                    };
                    self.execute(conn, actions);
                }
            }
            ConnEvent::Released(packet_id) => {
                let actions = conn.outbound.released(packet_id, now);
                self.execute(conn, actions);
            }
        }
    }

    fn send_packet(&mut self, wire: u64, packet: Packet) {
        let down = match packet {
            Packet::SubAck(s) => Down::SubAck {
                id: s.packet_id,
                granted: s.reasons.first().map(|r| r.0).unwrap_or(0x80),
            },
            Packet::UnsubAck(u) => Down::UnsubAck(u.packet_id),
            Packet::PubComp(r) => Down::PubComp(r.packet_id),
            other => panic!("the sim does not send {other:?}"),
        };
        self.send(wire, down);
    }

    fn flush_store_ops(&mut self, conn: &mut Conn) {
        if !conn.store_ops.is_empty() {
            let ops = std::mem::take(&mut conn.store_ops);
            self.submit_detached(ops);
        }
    }

    fn when_durable(&mut self, conn: &mut Conn, ops: Vec<Op>, then: ConnEvent) {
        self.flush_store_ops(conn);
        self.submit(ops, Done::Event(conn.mailbox.clone(), then));
    }

    fn finish(&mut self, mut conn: Conn, close: Close) {
        self.flush_store_ops(&mut conn);
        if matches!(close, Close::Kicked | Close::ProtocolError) {
            self.send(conn.wire, Down::Disconnect);
        }
        if let Some(w) = self.wires.get_mut(&conn.wire) {
            w.server_closed = true;
        }
        let publish_will = !matches!(close, Close::ByClient);
        self.detach(&mut conn, publish_will);
        conn.mailbox.close();
    }

    fn detach(&mut self, conn: &mut Conn, publish_will: bool) {
        let now = self.now();
        let now_ms = self.now_ms;
        let dup_below = conn.outbound.dup_below();
        let conn_id = conn.id;
        let ours = |st: &SessionState| st.conn.as_ref().is_some_and(|l| l.conn_id == conn_id);
        let mut end = false;
        let ended = self.registry.remove_if(
            &conn.handle,
            |st| ours(st) && (!st.persistent || st.expiry_interval_s == 0),
            |st| end = st.persistent,
        );
        if end {
            self.submit_detached(vec![Op::DeleteSession {
                client: conn.client.clone(),
            }]);
        }
        let (expiry_s, record) = {
            let mut st = conn.handle.state();
            let mut record = None;
            if !ended && st.live && ours(&st) {
                st.conn = None;
                st.offline_since = Some(now);
                st.dup_below = dup_below;
                record = Some(SessionRecord {
                    protocol_level: 5,
                    expiry_interval_s: st.expiry_interval_s,
                    disconnected_ms: now_ms,
                    dup_below,
                    zone: st.zone.name.clone(),
                    incarnation: st.incarnation,
                });
            }
            (st.expiry_interval_s, record)
        };
        if let Some(record) = record {
            self.submit_detached(vec![Op::PutSession {
                client: conn.client.clone(),
                record,
            }]);
        }
        let Some(will) = conn.will.take().filter(|_| publish_will) else {
            return;
        };
        let delay_s = will.delay_s.min(expiry_s);
        let msg = Message {
            topic: Bytes::from(format!("will/{}", conn.client)),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: false,
            from: conn.client.clone(),
            publish_ms: now_ms,
            expiry_ms: 0,
            properties: Default::default(),
        };
        if delay_s == 0 {
            self.publish(msg, Vec::new(), None);
            return;
        }
        let due_ms = now_ms + u64::from(delay_s) * 1000;
        self.delay_will(conn.client.clone(), due_ms, msg);
    }

    // ---- packets (connection/packets.rs) ----

    fn on_packet(&mut self, conn: &mut Conn, packet: Up) -> Result<(), Close> {
        let now = self.now();
        self.log.push(format!(
            "  conn {} ({}) reads {packet:?}",
            conn.id, conn.client
        ));
        match packet {
            Up::Publish(p) => self.on_publish(conn, p),
            Up::PubAck(id) => {
                let actions = conn.outbound.on_puback(id, now);
                self.execute(conn, actions);
            }
            Up::PubRec(id) => match conn.outbound.on_pubrec(id, false, now) {
                Some(actions) => self.execute(conn, actions),
                None => self.send(conn.wire, Down::PubRel(id)),
            },
            Up::PubComp(id) => {
                let actions = conn.outbound.on_pubcomp(id, now);
                self.execute(conn, actions);
            }
            Up::PubRel(id) => {
                if !conn.inbound.release(id) {
                    self.send_pubcomp(conn, id);
                } else {
                    let pubcomp = Packet::PubComp(resp(id, ReasonCode::Success));
                    let ops = if conn.persistent {
                        vec![Op::DeleteAwaitingRel {
                            client: conn.client.clone(),
                            packet_id: id,
                        }]
                    } else {
                        Vec::new()
                    };
                    if self.mutation == Mutation::PubcompBeforeDurable {
                        // The defect: PUBCOMP before the id's release is durable.
                        conn.store_ops.extend(ops);
                        drop(pubcomp);
                        self.send_pubcomp(conn, id);
                    } else {
                        self.reply_when_durable(conn, ops, pubcomp, Vec::new());
                    }
                }
            }
            Up::Subscribe { id, filter, qos } => self.on_subscribe(conn, id, filter, qos),
            Up::Unsubscribe { id, filter } => self.on_unsubscribe(conn, id, filter),
            Up::Disconnect { expiry_s } => {
                if let Some(expiry) = expiry_s {
                    let mut st = conn.handle.state();
                    if st.expiry_interval_s == 0 && expiry > 0 {
                        return Err(Close::ProtocolError);
                    }
                    let max = self.zone.session_expiry_interval.as_secs();
                    st.expiry_interval_s = expiry.min(max.min(u32::MAX as u64) as u32);
                }
                return Err(Close::ByClient);
            }
            Up::Eof => return Err(Close::Lost),
            Up::Connect { .. } => return Err(Close::ProtocolError),
        }
        Ok(())
    }

    fn on_publish(&mut self, conn: &mut Conn, p: Pub) {
        let msg = Message {
            topic: Bytes::from(p.topic.clone()),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            from: conn.client.clone(),
            publish_ms: self.now_ms,
            expiry_ms: 0,
            properties: Default::default(),
        };
        let Some(packet_id) = p.id else {
            self.publish(msg, Vec::new(), None);
            return;
        };
        if conn.pending_in.contains_key(&packet_id) {
            return;
        }
        // Receive Maximum: our client never sends more than it allows, so hitting it
        // means the broker counts wrong (the real one closes the connection, 0x93).
        let holds_slot = p.qos == QoS::ExactlyOnce && conn.inbound.is_counted(packet_id);
        if !holds_slot && conn.pending_in.len() + conn.inbound.quota_used() >= self.receive_max() {
            self.problems.push(format!(
                "{}: Receive Maximum exceeded by a client that keeps to it (packet id {packet_id})",
                conn.client
            ));
            return;
        }
        let mut extra = Vec::new();
        if p.qos == QoS::ExactlyOnce {
            match conn.inbound.arrival(packet_id) {
                Qos2Arrival::Duplicate => {
                    conn.inbound.count(packet_id);
                    self.send(conn.wire, Down::PubRec(packet_id));
                    return;
                }
                Qos2Arrival::InUse | Qos2Arrival::TooMany => {
                    // Our client reuses an id only after its PUBCOMP, and v5 has
                    // no max_awaiting_rel: neither may happen.
                    self.problems.push(format!(
                        "{}: QoS 2 PUBLISH id {packet_id} refused as in use or too many",
                        conn.client
                    ));
                    return;
                }
                Qos2Arrival::New => {
                    if conn.persistent {
                        extra.push(Op::PutAwaitingRel {
                            client: conn.client.clone(),
                            packet_id,
                        });
                    }
                }
            }
        }
        conn.pending_in.insert(packet_id, true);
        let matched = self.publish(msg, extra, Some((conn.mailbox.clone(), packet_id, p.qos)));
        conn.pending_in.insert(packet_id, matched > 0);
    }

    /// Our Receive Maximum: the zone's `max_inflight`, told in CONNACK.
    fn receive_max(&self) -> usize {
        usize::from(self.zone.max_inflight)
    }

    /// `Connection::send_pubcomp`: PUBCOMP out, the id's Receive Maximum slot back.
    fn send_pubcomp(&mut self, conn: &mut Conn, packet_id: u16) {
        self.send(conn.wire, Down::PubComp(packet_id));
        conn.inbound.completed(packet_id);
    }

    fn on_durable(&mut self, conn: &mut Conn, packet_id: u16, qos: QoS, ok: bool) {
        conn.pending_in.remove(&packet_id);
        if !ok {
            return; // the sim's store never fails
        }
        match qos {
            QoS::AtLeastOnce => self.send(conn.wire, Down::PubAck(packet_id)),
            QoS::ExactlyOnce => {
                conn.inbound.record(packet_id, self.now());
                self.send(conn.wire, Down::PubRec(packet_id));
            }
            QoS::AtMostOnce => {}
        }
    }

    fn on_subscribe(&mut self, conn: &mut Conn, packet_id: u16, filter: String, qos: QoS) {
        let mut ops = Vec::new();
        let mut retained = Vec::new();
        let mut stored = Vec::new();
        let opts = SubOpts {
            qos,
            ..SubOpts::default()
        };
        self.registry.subscribe(&conn.handle, &filter, opts);
        if conn.persistent {
            ops.push(Op::PutSubscription {
                client: conn.client.clone(),
                filter: filter.clone(),
                record: SubscriptionRecord {
                    qos: qos as u8,
                    ..SubscriptionRecord::default()
                },
            });
        }
        for msg in self.retained_for(&filter) {
            let mut out = Outgoing {
                seq: None,
                msg_id: 0,
                qos: msg.qos.min(qos),
                retain: true,
                subscription_ids: vec![],
                resend: false,
                msg: msg.clone(),
            };
            if conn.persistent && out.qos != QoS::AtMostOnce {
                out.msg_id = self.next_msg_id;
                self.next_msg_id += 1;
                let (incarnation, max_len) = {
                    let st = conn.handle.state();
                    (st.incarnation, st.zone.max_mqueue_len as u64)
                };
                ops.push(Op::Enqueue {
                    client: conn.client.clone(),
                    incarnation,
                    entry: QueueEntry {
                        msg_id: out.msg_id,
                        qos: out.qos as u8,
                        retain: true,
                        released: false,
                        subscription_ids: vec![],
                        inline: Some(out.msg.to_stored()),
                    },
                    max_len,
                });
                stored.push(out);
            } else {
                retained.push(out);
            }
        }
        let ack = Packet::SubAck(codec::SubAck {
            packet_id,
            properties: Properties::default(),
            reasons: vec![ReasonCode(qos as u8)],
        });
        if stored.is_empty() {
            self.reply_when_durable(conn, ops, ack, retained);
            return;
        }
        self.flush_store_ops(conn);
        let done = Done::SubscribeStored {
            mailbox: conn.mailbox.clone(),
            ack: Box::new(ack),
            retained,
            stored,
        };
        self.submit(ops, done);
    }

    fn on_unsubscribe(&mut self, conn: &mut Conn, packet_id: u16, filter: String) {
        let mut ops = Vec::new();
        if self.registry.unsubscribe(&conn.handle, &filter) && conn.persistent {
            ops.push(Op::DeleteSubscription {
                client: conn.client.clone(),
                filter,
            });
        }
        let ack = Packet::UnsubAck(codec::UnsubAck {
            packet_id,
            properties: Properties::default(),
            reasons: vec![ReasonCode::Success],
        });
        self.reply_when_durable(conn, ops, ack, Vec::new());
    }

    fn reply_when_durable(
        &mut self,
        conn: &mut Conn,
        ops: Vec<Op>,
        reply: Packet,
        retained: Vec<Outgoing>,
    ) {
        let event = ConnEvent::Reply(Box::new(reply), retained);
        if ops.is_empty() {
            self.on_event(conn, event);
            return;
        }
        self.when_durable(conn, ops, event);
    }

    // ---- executing session actions (connection/outgoing.rs) ----

    fn execute(&mut self, conn: &mut Conn, actions: Vec<Action>) {
        let mut work: VecDeque<Action> = actions.into();
        while let Some(action) = work.pop_front() {
            match action {
                Action::Publish {
                    packet_id,
                    dup,
                    out,
                } => {
                    let p = Pub {
                        id: packet_id,
                        qos: out.qos,
                        dup,
                        retain: out.retain,
                        topic: out.msg.topic_str().to_owned(),
                        payload: out.msg.payload.clone(),
                    };
                    self.send(conn.wire, Down::Publish(p));
                }
                Action::PubRel(id) => self.send(conn.wire, Down::PubRel(id)),
                Action::Store(op) => conn.store_ops.push(op),
                Action::Release { packet_id, op } => {
                    if self.mutation == Mutation::PubrelBeforeDurable {
                        // The defect: PUBREL in the same turn as the unsynced release.
                        conn.store_ops.push(op);
                        let now = self.now();
                        work.extend(conn.outbound.released(packet_id, now));
                    } else {
                        self.when_durable(conn, vec![op], ConnEvent::Released(packet_id));
                    }
                }
                Action::LoadQueue { from, limit } => work.extend(self.load_page(conn, from, limit)),
                Action::Dropped(DropReason::Missing) => {}
                Action::Dropped(_) => {}
            }
        }
    }

    fn load_page(&mut self, conn: &mut Conn, from: u64, limit: usize) -> Vec<Action> {
        let now = self.now();
        let disk = self.core.backend();
        let entries = read::queue_range(disk, &conn.client, from, limit).expect("sim reads");
        let ids: Vec<u64> = entries
            .iter()
            .filter(|(_, e)| e.inline.is_none())
            .map(|(_, e)| e.msg_id)
            .collect();
        let mut logged = read::messages(disk, &ids).expect("sim reads").into_iter();
        let mut page = Vec::new();
        for (seq, entry) in entries {
            let stored = match &entry.inline {
                Some(m) => Some(m.clone()),
                None => logged.next().flatten(),
            };
            if stored.is_none() && !entry.released {
                self.events.push(Event::Missing {
                    client: conn.client.clone(),
                    seq,
                });
            }
            page.push((
                seq,
                entry,
                stored.map(|m| Arc::new(Message::from_stored(m))),
            ));
        }
        conn.outbound.loaded(from, limit, page, now)
    }
}

/// One op, briefly, for traces.
fn brief(op: &Op) -> String {
    let payload =
        |m: &quay_storage::StoredMessage| String::from_utf8_lossy(&m.payload).into_owned();
    match op {
        Op::Message { id, msg } => format!("Message#{id}({})", payload(msg)),
        Op::Enqueue {
            client,
            incarnation,
            entry,
            ..
        } => format!(
            "Enqueue({client}@{incarnation:x}, msg#{}{})",
            entry.msg_id,
            entry
                .inline
                .as_ref()
                .map(|m| format!(" inline {}", payload(m)))
                .unwrap_or_default()
        ),
        Op::Ack { client, seq } => format!("Ack({client}/{seq})"),
        Op::Release { client, seq, .. } => format!("Release({client}/{seq})"),
        Op::PutSession { client, record } => format!(
            "PutSession({client}@{:x}, expiry {}, disconnected {}, dup_below {})",
            record.incarnation, record.expiry_interval_s, record.disconnected_ms, record.dup_below
        ),
        Op::DeleteSession { client } => format!("DeleteSession({client})"),
        Op::PutWill { client, .. } => format!("PutWill({client})"),
        Op::DeleteWill { client } => format!("DeleteWill({client})"),
        Op::PutSubscription { client, filter, .. } => {
            format!("PutSubscription({client}, {filter})")
        }
        Op::DeleteSubscription { client, filter } => {
            format!("DeleteSubscription({client}, {filter})")
        }
        Op::PutAwaitingRel { client, packet_id } => {
            format!("PutAwaitingRel({client}, {packet_id})")
        }
        Op::DeleteAwaitingRel { client, packet_id } => {
            format!("DeleteAwaitingRel({client}, {packet_id})")
        }
        Op::PutRetained { topic, msg } => {
            format!(
                "PutRetained({}, {})",
                String::from_utf8_lossy(topic),
                payload(msg)
            )
        }
        Op::DeleteRetained { topic } => {
            format!("DeleteRetained({})", String::from_utf8_lossy(topic))
        }
        Op::DeleteRetainedIfExpired { topic, .. } => {
            format!(
                "DeleteRetainedIfExpired({})",
                String::from_utf8_lossy(topic)
            )
        }
    }
}
