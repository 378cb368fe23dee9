//! The simulated broker: the broker and connection roles played synchronously, over
//! the REAL store writer logic (`WriterCore` on a `SimBackend`), the REAL session
//! state machines (`Outbound`, `Inbound`), the REAL registry, mailboxes and retained
//! index. The async connection driver is not sans-IO yet, so its rules are mirrored
//! here, one function per real one; keep them in step when the real ones change.
//! The connection side (`accept_next` to `load_page`) is in `conn.rs`.
//!
//! | here | mirrors |
//! |------|---------|
//! | `accept_next`, `finish_accept` | `connection::connect::accept` (lock per client id, `take_over`, resume / create / discard, `PutSession`, barrier, CONNACK, `attach`) |
//! | `finish`, `detach` | `Connection::finish`, `Connection::detach` (ownership check, end or record the session, wills) |
//! | `turn` | one turn of `Connection::run`: mailbox events, `behind`, kick (drain what the client sent, then finish), packets, `flush_store_ops` |
//! | `on_packet`, `on_publish`, `on_durable`, `on_subscribe`, `on_unsubscribe` | `channel/packets.rs` (the sim reads retained messages at SUBSCRIBE; the channel reads them on the reader pool, pausing its input) |
//! | `execute`, `when_durable`, `load_page` | `channel/deliver.rs` (`load_page` submits to the reader pool) |
//! | `run_read`, `answer_read` | a reader pool thread: runs one page read (`read_page`), later pushes `ConnEvent::Loaded`; the simulation picks which and when, so answers come after later commits, deliveries and acks |
//! | `on_event` | `Connection::on_event` |
//! | `on_timer` | `Connection::on_timer` (retries, `await_rel_timeout`) |
//! | `send_pubcomp`, the Receive Maximum check in `on_publish` | `Connection::send_pubcomp`, `receive_quota_used` |
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
    ConnEvent, Delivered, Registry, SessionHandle, SessionMeta, SessionState, SubOpts,
};
use quay::codec::{Packet, Properties, PubResp, QoS, ReasonCode, RetainHandling};
use quay::config::{Zone, ZoneConfig};
use quay::message::Message;
use quay::router::RetainedIndex;
use quay::session::{Inbound, Outbound, Outgoing, SessionConfig};
use quay_storage::sim::SimBackend;
use quay_storage::{read, DelayedWill, Op, QueueEntry, WriteRequest, WriterCore};

use super::wire::{Down, WillSpec, Wire};
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

/// A queue page read out on the reader pool (`Action::LoadQueue`).
pub(crate) struct PageRead {
    pub(crate) client: ClientId,
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) from: u64,
    pub(crate) limit: usize,
}

/// A CONNECT accepted up to its store barrier (`accept` before CONNACK).
pub(crate) struct Accepting {
    pub(crate) wire: u64,
    pub(crate) client: ClientId,
    pub(crate) handle: Arc<SessionHandle>,
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) persistent: bool,
    pub(crate) resume: bool,
    pub(crate) dup_below: u64,
    pub(crate) will: Option<WillSpec>,
}

pub struct Conn {
    pub id: u64,
    pub wire: u64,
    pub client: ClientId,
    pub(crate) handle: Arc<SessionHandle>,
    pub(crate) mailbox: Arc<Mailbox>,
    pub(crate) persistent: bool,
    pub(crate) outbound: Outbound,
    pub(crate) inbound: Inbound,
    pub(crate) pending_in: BTreeMap<u16, bool>,
    pub(crate) store_ops: Vec<Op>,
    pub(crate) will: Option<WillSpec>,
}

pub(crate) enum Close {
    ByClient,
    Kicked,
    Lost,
    ProtocolError,
}

pub struct SimBroker {
    pub(crate) core: WriterCore<SimBackend>,
    /// Submitted, not yet committed, in submission order.
    pub(crate) pending: Vec<(WriteRequest, Done)>,
    /// Page reads handed to the reader pool and not yet run, in submission order.
    pub(crate) reads: Vec<PageRead>,
    /// Page reads run, their answers not yet in the mailbox (a reader thread between
    /// its read and its completion): later commits can deliver first.
    pub(crate) answers: Vec<(Arc<Mailbox>, ConnEvent)>,
    pub(crate) registry: Registry,
    pub(crate) retained: RetainedIndex,
    /// Delayed wills: client -> (due ms, message).
    pub(crate) wills: BTreeMap<ClientId, (u64, Message)>,
    pub conns: BTreeMap<u64, Conn>,
    pub(crate) accepting: BTreeMap<u64, Accepting>,
    pub wires: BTreeMap<u64, Wire>,
    /// CONNECTs per client id, in arrival order, waiting for `accept_next`.
    pub connects: BTreeMap<ClientId, VecDeque<u64>>,
    pub(crate) next_msg_id: u64,
    pub(crate) next_id: u64,
    pub(crate) incarnation_base: u64,
    pub(crate) next_routing: u64,
    pub(crate) zone: Arc<Zone>,
    pub(crate) retainer_expiry_ms: u64,
    pub events: Vec<Event>,
    pub problems: Vec<String>,
    /// Trace lines of what the broker did, for a failing seed's report.
    pub log: Vec<String>,
    /// Simulated time: `base + now_ms - epoch_ms`.
    pub(crate) base: Instant,
    pub now_ms: u64,
    pub(crate) epoch_ms: u64,
    pub(crate) page_size: usize,
    pub(crate) mutation: Mutation,
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

pub(crate) fn resp(packet_id: u16, reason: ReasonCode) -> PubResp {
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
            reads: Vec::new(),
            answers: Vec::new(),
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

    /// Some connection waits to read its queue again after a failed read.
    pub fn waits_to_retry_a_read(&self) -> bool {
        self.reads.is_empty()
            && self.answers.is_empty()
            && self.conns.values().any(|c| c.outbound.retrying_load())
    }

    pub fn pending_requests(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn submit(&mut self, ops: Vec<Op>, done: Done) {
        let waited = !matches!(done, Done::Detached);
        self.pending.push((WriteRequest { ops, waited }, done));
    }

    pub(crate) fn submit_detached(&mut self, ops: Vec<Op>) {
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

    pub(crate) fn complete(
        &mut self,
        done: Done,
        result: quay_storage::Result<quay_storage::Enqueued>,
    ) {
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

    pub(crate) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(crate) fn next_incarnation(&mut self) -> u64 {
        self.incarnation_base + self.next_id()
    }

    pub(crate) fn session_config(&self) -> SessionConfig {
        SessionConfig {
            max_inflight: self.zone.max_inflight,
            retry_interval: self.zone.retry_interval,
            max_mqueue_len: self.zone.max_mqueue_len,
            page_size: self.page_size,
        }
    }

    pub(crate) fn send(&mut self, wire: u64, packet: Down) {
        self.log.push(format!("  wire {wire} <- {packet:?}"));
        if let Some(w) = self.wires.get_mut(&wire) {
            w.down.push_back(packet);
        }
    }

    // ---- recovery and the sweep (broker/mod.rs) ----

    pub(crate) fn recover(&mut self) {
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
                    meta: SessionMeta {
                        incarnation: record.incarnation,
                        persistent: true,
                        expiry_interval_s: record.expiry_interval_s,
                        subscriptions: Default::default(),
                        protocol_level: record.protocol_level,
                        dup_below,
                    },
                    live: true,
                    conn: None,
                    offline_since: Some(offline_since),
                    zone: self.zone.clone(),
                    connected_at_ms: 0,
                    peer: Box::from(""),
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
                    (true, Some(since)) if st.meta.expiry_interval_s != u32::MAX => {
                        now.saturating_duration_since(since)
                            >= Duration::from_secs(st.meta.expiry_interval_s as u64)
                    }
                    _ => false,
                },
                |st| end = st.meta.persistent,
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

    pub(crate) fn delay_will(&mut self, client: ClientId, due_ms: u64, msg: Message) {
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

    pub(crate) fn cancel_will(&mut self, client: &ClientId) {
        if self.wills.remove(client).is_some() {
            self.submit_detached(vec![Op::DeleteWill {
                client: client.clone(),
            }]);
        }
    }

    pub(crate) fn publish_will_now(&mut self, client: &ClientId) {
        if let Some((_, msg)) = self.wills.remove(client) {
            self.publish(
                msg,
                vec![Op::DeleteWill {
                    client: client.clone(),
                }],
                None,
                false,
            );
        }
    }

    // ---- the publish path (broker/publish.rs) ----

    /// Route `msg`; `publisher` is told `Durable` once what it needed is stored.
    /// Returns how many subscribers matched.
    /// Mirrors `Broker::publish_ordered` (`after_pending`: the publisher waits for the
    /// store on earlier publishes, so this one completes through the writer too).
    pub(crate) fn publish(
        &mut self,
        msg: Message,
        extra: Vec<Op>,
        publisher: Option<(Arc<Mailbox>, u16, QoS)>,
        after_pending: bool,
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
                    st.meta.persistent,
                    st.conn.is_some(),
                    st.meta.incarnation,
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
                unreferenced: false,
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
            } else if online && matches!(t.handle.deliver(out), Delivered::Dropped) {
                self.events.push(Event::Dropped {
                    client: t.handle.client_id.clone(),
                    payload: msg.payload.clone(),
                });
            }
        }
        match (enqueues.as_mut_slice(), stored.as_mut_slice()) {
            ([], _) => {}
            ([Op::Enqueue { entry, .. }], [(_, out)]) => {
                entry.inline = Some(msg.to_stored());
                out.unreferenced = true;
            }
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
        if ops.is_empty() && !after_pending {
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

    pub(crate) fn retain(&mut self, msg: &Arc<Message>, ops: &mut Vec<Op>) -> bool {
        let topic = msg.topic_str();
        if msg.payload.is_empty() {
            self.retained.remove(topic);
            ops.push(Op::DeleteRetained {
                topic: msg.topic.clone(),
            });
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

    pub(crate) fn retained_for(&self, filter: &str) -> Vec<Arc<Message>> {
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
        Op::AckUnreferenced { client, seq } => format!("AckUnreferenced({client}/{seq})"),
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
