//! One seeded run: the clients, the broker, the disk, the clock, and the reference
//! model that checks them after every step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quay::codec::QoS;
use quay::topic;
use quay_storage::sim::SimBackend;

use super::client::{Client, Knows, Noticed, OutFlight, OutStage};
use super::rng::Rng;
use super::server::{BrokerSettings, ClientId, Event, Server};
use super::wire::{Pub, Up, WillSpec};
use super::Mutation;

const TOPICS: [&str; 3] = ["t/a", "t/b", "t/c"];
const FILTERS: [&str; 5] = ["t/a", "t/b", "t/+", "t/#", "will/#"];
const EXPIRIES: [u32; 5] = [0, 5, 30, 3600, 3600];
/// Simulated wall clock at start, far in the future: `Outbound` compares message
/// expiry with the real clock, and simulated messages never expire.
const EPOCH_MS: u64 = 4_000_000_000_000;
/// The step that crashes the broker (chosen apart from the weighted ones).
const CRASH: usize = 99;
/// Runs whose drain crashes once, in one of its first rounds: the backlog a drain
/// delivers (resent PUBLISHes, PUBRELs, PUBCOMPs) makes many acknowledgements whose
/// store writes a crash right after can lose, which the random steps (a crash in
/// about one step of a hundred) rarely reach.
const DRAIN_CRASH_PCT: u64 = 50;
/// Packet ids a client uses for its QoS 1/2 PUBLISHes (few, so they are reused).
const PUBLISH_IDS: u16 = 6;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime for the model's context");
}

/// Who must get an acknowledged message: a client's session in one life.
type Holder = (usize, u64, u64);

struct Published {
    topic: String,
    qos: QoS,
    acked: bool,
    /// Routings of it whose store request completed.
    durable_routings: u32,
    must_reach: BTreeSet<Holder>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub steps: u64,
    pub crashes: u64,
    pub commits: u64,
    pub acked: u64,
    pub checked_deliveries: u64,
    pub takeovers: u64,
}

pub struct World {
    rng: Rng,
    broker: Option<Server>,
    clients: Vec<Client>,
    next_wire: u64,
    pub trace: Vec<String>,
    pub problems: Vec<String>,
    published: BTreeMap<Bytes, Published>,
    routings: BTreeMap<u64, (Bytes, BTreeSet<Holder>)>,
    dropped: BTreeSet<(ClientId, Bytes)>,
    /// How often each payload was routed (a publisher may send it again).
    routed: BTreeMap<Bytes, u32>,
    /// Retained updates routed and not yet durable: routing -> (topic, payload, ms).
    retain_ops: BTreeMap<u64, (String, Bytes, u64)>,
    /// Per topic, the last durable retained update (empty payload: cleared).
    retained: BTreeMap<String, (Bytes, u64)>,
    settings: BrokerSettings,
    base: Instant,
    now_ms: u64,
    restarts: u64,
    mutation: Mutation,
    pub stats: Stats,
}

impl World {
    pub fn new(seed: u64, mutation: Mutation) -> World {
        let mut rng = Rng::new(seed);
        // Short queues: a QoS 0 delivery must never push out a stored entry.
        let settings = BrokerSettings {
            max_inflight: *rng.pick(&[1, 2, 4, 32]).unwrap_or(&32),
            max_mqueue_len: *rng.pick(&[1000, 1000, 4]).unwrap_or(&1000),
            page_size: *rng.pick(&[2, 3, 1024]).unwrap_or(&1024),
            retainer_expiry_s: *rng.pick(&[0, 0, 20]).unwrap_or(&0),
            mqueue_store_qos0: rng.chance(50),
        };
        let clients = (0..rng.range(3, 6))
            .map(|i| Client::new(&format!("c{i}")))
            .collect();
        let base = Instant::now();
        let broker = Server::open(
            SimBackend::new(),
            settings,
            base,
            EPOCH_MS,
            EPOCH_MS,
            0,
            mutation,
        );
        let trace = vec![format!("seed {seed}: {settings:?}")];
        World {
            rng,
            broker: Some(broker),
            clients,
            next_wire: 1,
            trace,
            problems: Vec::new(),
            published: BTreeMap::new(),
            routings: BTreeMap::new(),
            dropped: BTreeSet::new(),
            routed: BTreeMap::new(),
            retain_ops: BTreeMap::new(),
            retained: BTreeMap::new(),
            settings,
            base,
            now_ms: EPOCH_MS,
            restarts: 0,
            mutation,
            stats: Stats::default(),
        }
    }

    fn broker(&mut self) -> &mut Server {
        self.broker.as_mut().expect("a broker runs between steps")
    }

    fn log(&mut self, line: String) {
        self.trace.push(format!("[{}] {line}", self.stats.steps));
    }

    /// Run `steps` random steps, then drain and check. Err when a check failed.
    pub fn run(&mut self, steps: u64) -> Result<(), ()> {
        // `accept::open` waits for a takeover with a tokio timer: its futures are
        // polled inside a runtime's context (the runtime itself never runs).
        RUNTIME.with(|rt| {
            let _context = rt.enter();
            self.run_in_context(steps)
        })
    }

    fn run_in_context(&mut self, steps: u64) -> Result<(), ()> {
        for _ in 0..steps {
            self.stats.steps += 1;
            self.step();
            self.absorb();
            if !self.problems.is_empty() {
                return Err(());
            }
        }
        self.log("drain".into());
        self.drain();
        self.absorb();
        self.final_checks();
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(())
        }
    }

    fn step(&mut self) {
        let n = self.clients.len();
        let c = self.rng.below(n as u64) as usize;
        let client = &self.clients[c];
        let connected = client.connected;
        let has_wire = client.wire.is_some();
        let readable = client.wire.is_some_and(|w| {
            self.broker
                .as_ref()
                .and_then(|b| b.wires.get(&w))
                .is_some_and(|w| !w.down.is_empty() || w.server_closed)
        });
        let acks = connected && !client.acks.is_empty();
        let broker = self.broker.as_ref().expect("broker");
        let conns = broker.conns.len() as u64;
        let connecting = broker.accepting().len() as u64;
        let pending = broker.pending_requests() as u64;
        let reads = broker.pending_reads() as u64;
        let answers = broker.pending_answers() as u64;
        let weights = [
            if has_wire { 1 } else { 6 },   // 0 connect (or take over)
            if connected { 10 } else { 0 }, // 1 publish
            if connected { 3 } else { 0 },  // 2 (un)subscribe
            if readable { 12 } else { 0 },  // 3 client reads
            if acks { 8 } else { 0 },       // 4 client sends acks
            if connected { 2 } else { 0 },  // 5 disconnect / network loss
            conns.min(1) * 14,              // 6 a connection's turn
            connecting.min(1) * 8,          // 7 accept a CONNECT
            pending.min(1) * 12,            // 8 commit a batch
            2,                              // 9 the clock moves
            reads.min(1) * 10,              // 10 a reader thread runs a page read
            answers.min(1) * 10,            // 11 ... and completes it (mailbox)
        ];
        // About two crashes in a run of 200 steps.
        let choice = if self.rng.chance(1) {
            Some(CRASH)
        } else {
            self.rng.weighted(&weights)
        };
        match choice {
            Some(0) => self.connect(c),
            Some(1) => self.publish(c),
            Some(2) => self.subscribe(c),
            Some(3) => {
                let k = self.rng.range(1, 4) as usize;
                self.client_reads(c, k);
            }
            Some(4) => self.client_acks(c),
            Some(5) => self.disconnect(c),
            Some(6) => {
                let ids: Vec<u64> = self.broker().conns.keys().copied().collect();
                if let Some(&id) = self.rng.pick(&ids) {
                    let k = self.rng.range(1, 4) as usize;
                    let client = self.broker().conns[&id].client.clone();
                    self.log(format!(
                        "server: turn of {client}'s connection {id} ({k} packets)"
                    ));
                    self.broker().turn(id, k);
                }
            }
            Some(7) => {
                let waiting = self.broker().accepting();
                if let Some(&wire) = self.rng.pick(&waiting) {
                    self.log(format!(
                        "server: accept step for the CONNECT on wire {wire}"
                    ));
                    self.accept_step(wire);
                }
            }
            Some(8) => {
                let pending = self.broker().pending_requests() as u64;
                let k = if self.rng.chance(50) {
                    pending
                } else {
                    self.rng.range(1, pending)
                };
                self.commit(k as usize);
            }
            Some(9) => {
                let s = self.rng.range(1, 8);
                self.now_ms += s * 1000;
                self.log(format!("clock +{s}s; sweep and timers"));
                let now = self.now_ms;
                let broker = self.broker();
                broker.now_ms = now;
                broker.on_timer_all();
                broker.sweep();
            }
            Some(CRASH) => self.crash(),
            Some(10) => {
                let i = self.rng.below(reads) as usize;
                let fail = self.rng.chance(5);
                self.log(format!(
                    "reader: run page read {i}{}",
                    if fail { " (fails)" } else { "" }
                ));
                self.broker().run_read(i, fail);
            }
            Some(11) => {
                let i = self.rng.below(answers) as usize;
                self.log(format!("reader: answer {i} reaches its mailbox"));
                self.broker().answer_read(i);
            }
            _ => {}
        }
    }

    /// One poll of an accept; when it is done, a client that left that CONNECT
    /// unanswered learns it (`Client::ghost_resolved`).
    fn accept_step(&mut self, wire: u64) -> bool {
        let done = self.broker().accept_step(wire);
        if done {
            let now = self.now_ms;
            for c in &mut self.clients {
                c.ghost_resolved(wire, now);
            }
        }
        done
    }

    fn commit(&mut self, k: usize) {
        self.stats.commits += 1;
        self.log(format!("writer: commit a batch of {k} requests"));
        let problems = self.broker().commit(k);
        for p in problems {
            self.problems
                .push(format!("store invariant after a commit: {p}"));
        }
        self.absorb();
        self.check_retained();
    }

    /// The store holds, per topic, what the last durable retained update left (its
    /// message, or nothing after a clear), unless that message may have expired.
    fn check_retained(&mut self) {
        let broker = self.broker.as_ref().expect("broker");
        let expiry_ms = broker.retainer_expiry_ms();
        for (topic, (payload, publish_ms)) in &self.retained {
            let stored = broker
                .store()
                .with_backend(|b| quay_storage::read::retained(b, topic.as_bytes()))
                .expect("the store runs")
                .expect("sim reads")
                .map(|m| m.payload);
            let may_expire = expiry_ms != 0 && self.now_ms >= publish_ms + expiry_ms;
            let ok = match &stored {
                None => payload.is_empty() || may_expire,
                Some(p) => p == payload,
            };
            if !ok {
                self.problems.push(format!(
                    "retained {topic}: the last durable update left {payload:?}, the store holds {stored:?}"
                ));
            }
        }
    }

    /// When the server closed `wire`, if it did.
    fn server_closed_ms(&self, wire: Option<u64>) -> Option<u64> {
        let broker = self.broker.as_ref()?;
        let w = broker.wires.get(&wire?)?;
        w.server_closed.then_some(w.closed_ms)
    }

    /// Client `c` left `wire`: if the server had closed it, the session went offline
    /// then, before the client saw it (`Client::server_closed_at`).
    fn left_wire(&mut self, c: usize, wire: Option<u64>) {
        if let Some(closed_ms) = self.server_closed_ms(wire) {
            self.clients[c].server_closed_at(closed_ms);
        }
    }

    fn crash(&mut self) {
        let closed: Vec<Option<u64>> = (0..self.clients.len())
            .map(|c| self.server_closed_ms(self.clients[c].wire))
            .collect();
        let broker = self.broker.take().expect("broker");
        let unsynced = broker.store().unsynced_batches() as u64;
        let keep = if self.rng.chance(30) {
            unsynced
        } else {
            self.rng.range(0, unsynced)
        };
        self.log(format!(
            "CRASH: {keep} of {unsynced} unsynced batches survive, all memory lost; restart"
        ));
        self.stats.crashes += 1;
        let disk = broker.crash(keep as usize);
        for p in quay_storage::check_invariants(&disk).expect("sim reads") {
            self.problems
                .push(format!("store invariant after a crash: {p}"));
        }
        self.restarts += 1;
        self.broker = Some(Server::open(
            disk,
            self.settings,
            self.base,
            EPOCH_MS,
            self.now_ms,
            self.restarts,
            self.mutation,
        ));
        self.routings.clear();
        self.retain_ops.clear();
        self.check_retained();
        let now = self.now_ms;
        for (c, closed_ms) in self.clients.iter_mut().zip(closed) {
            c.crashed(now);
            if let Some(closed_ms) = closed_ms {
                c.server_closed_at(closed_ms);
            }
        }
    }

    fn new_wire(&mut self) -> u64 {
        self.next_wire += 1;
        self.next_wire
    }

    fn connect(&mut self, c: usize) {
        let clean_start = self.rng.chance(20);
        let expiry_s = *self.rng.pick(&EXPIRIES).unwrap_or(&0);
        let will = self.rng.chance(30).then(|| {
            self.clients[c].wills += 1;
            WillSpec {
                qos: QoS::from_u8(self.rng.below(3) as u8).unwrap_or_default(),
                delay_s: *self.rng.pick(&[0, 0, 5, 30]).unwrap_or(&0),
                payload: Bytes::from(format!(
                    "will|{}|{}",
                    self.clients[c].id, self.clients[c].wills
                )),
            }
        });
        self.connect_with(c, clean_start, expiry_s, will);
    }

    fn connect_with(&mut self, c: usize, clean_start: bool, expiry_s: u32, will: Option<WillSpec>) {
        let now = self.now_ms;
        let id = self.clients[c].id.clone();
        if let Some(old) = self.clients[c].wire {
            // A reconnect while the old connection is open (half-open link, or a
            // CONNECT still unanswered): a takeover. What the client sent on the
            // old one may still reach the broker, or be lost with the link.
            let lose = self.rng.chance(50);
            self.stats.takeovers += 1;
            if lose {
                if let Some(w) = self.broker().wires.get_mut(&old) {
                    w.up.clear();
                }
            }
            self.log(format!(
                "{id}: leaves connection {old} ({}) to reconnect",
                if lose {
                    "unsent packets lost"
                } else {
                    "unsent packets still arrive"
                }
            ));
            self.clients[c].leave_wire(now);
            self.left_wire(c, Some(old));
        }
        // A client unsure which session a resume would find starts anew.
        let clean_start = clean_start || self.clients[c].force_clean;
        let wire = self.new_wire();
        self.clients[c].connect_sent(wire, clean_start, expiry_s, now);
        let expect = self.clients[c].connecting.and_then(|x| x.expect_present);
        self.log(format!(
            "{id}: CONNECT on {wire} clean_start={clean_start} expiry={expiry_s} will={:?} (expects present={expect:?})",
            will.as_ref().map(|w| (w.qos as u8, w.delay_s))
        ));
        let broker = self.broker();
        broker
            .wires
            .entry(wire)
            .or_default()
            .up
            .push_back(Up::Connect {
                clean_start,
                expiry_s,
                will,
            });
        broker.connect_arrived(&id, wire);
    }

    fn send_up(&mut self, c: usize, packet: Up) {
        if let Some(wire) = self.clients[c].wire {
            if let Some(w) = self.broker().wires.get_mut(&wire) {
                w.up.push_back(packet);
            }
        }
    }

    fn publish(&mut self, c: usize) {
        let qos = match self.rng.below(10) {
            0..=1 => QoS::AtMostOnce,
            2..=5 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        };
        let topic = self.rng.pick(&TOPICS).copied().unwrap_or("t/a").to_owned();
        let retain = self.rng.chance(15);
        let clear = retain && self.rng.chance(30);
        self.publish_with(c, qos, topic, retain, clear);
    }

    fn publish_with(&mut self, c: usize, qos: QoS, topic: String, retain: bool, clear: bool) {
        let client = &mut self.clients[c];
        let id = if qos == QoS::AtMostOnce {
            None
        } else {
            // The broker's Receive Maximum bounds what is unacknowledged.
            if client.out.len() >= usize::from(self.settings.max_inflight) {
                return;
            }
            match (1..=PUBLISH_IDS).find(|id| !client.out.contains_key(id)) {
                Some(id) => Some(id),
                None => return,
            }
        };
        let payload = if clear {
            Bytes::new()
        } else {
            client.published += 1;
            Bytes::from(format!("{}|{}", client.id, client.published))
        };
        let p = Pub {
            id,
            qos,
            dup: false,
            retain,
            topic: topic.clone(),
            payload: payload.clone(),
        };
        if let Some(id) = id {
            let stage = if qos == QoS::AtLeastOnce {
                OutStage::Ack
            } else {
                OutStage::Rec
            };
            client.sends += 1;
            client.out.insert(
                id,
                OutFlight {
                    publish: p.clone(),
                    stage,
                    order: client.sends,
                },
            );
            if !payload.is_empty() {
                self.published.insert(
                    payload.clone(),
                    Published {
                        topic: topic.clone(),
                        qos,
                        acked: false,
                        durable_routings: 0,
                        must_reach: BTreeSet::new(),
                    },
                );
            }
        }
        // What the client owes goes first: resent PUBLISHes keep their order
        // before new ones [MQTT-4.6.0-1].
        self.flush_acks(c, usize::MAX);
        let id_ = self.clients[c].id.clone();
        self.log(format!(
            "{id_}: PUBLISH {payload:?} to {topic} qos {} id {id:?} retain {retain}",
            qos as u8
        ));
        self.send_up(c, Up::Publish(p));
    }

    fn subscribe(&mut self, c: usize) {
        let client = &mut self.clients[c];
        client.next_sub_id = if client.next_sub_id >= 1999 {
            1000
        } else {
            client.next_sub_id + 1
        };
        let id = client.next_sub_id;
        let existing: Vec<String> = client.subs.keys().cloned().collect();
        let packet = if !existing.is_empty() && self.rng.chance(30) {
            let filter = self.rng.pick(&existing).cloned().unwrap_or_default();
            self.clients[c].sub_ops.insert(id, (filter.clone(), None));
            Up::Unsubscribe { id, filter }
        } else {
            let filter = self.rng.pick(&FILTERS).copied().unwrap_or("t/#").to_owned();
            let qos = QoS::from_u8(self.rng.below(3) as u8).unwrap_or_default();
            self.clients[c]
                .sub_ops
                .insert(id, (filter.clone(), Some(qos)));
            Up::Subscribe { id, filter, qos }
        };
        let name = self.clients[c].id.clone();
        self.log(format!("{name}: {packet:?}"));
        self.send_up(c, packet);
    }

    fn client_reads(&mut self, c: usize, k: usize) -> bool {
        let Some(wire) = self.clients[c].wire else {
            return false;
        };
        let now = self.now_ms;
        let mut moved = false;
        for _ in 0..k {
            let (packet, closed) = match self.broker().wires.get_mut(&wire) {
                Some(w) => (w.down.pop_front(), w.server_closed),
                None => (None, true),
            };
            let Some(packet) = packet else {
                if closed {
                    let id = self.clients[c].id.clone();
                    self.log(format!("{id}: sees connection {wire} closed"));
                    self.clients[c].leave_wire(now);
                    moved = true;
                }
                break;
            };
            moved = true;
            let id = self.clients[c].id.clone();
            self.log(format!("{id}: got {packet:?}"));
            for n in self.clients[c].on_packet(packet, now) {
                match n {
                    Noticed::Acked(payload) => {
                        if let Some(p) = self.published.get_mut(&payload) {
                            if p.durable_routings == 0 {
                                // A PUBACK/PUBREC promises the message was taken
                                // (e.g. a stale QoS 2 id swallowed a new message).
                                self.problems.push(format!(
                                    "{id}: {payload:?} acknowledged, but no routing of it completed"
                                ));
                            }
                            if !p.acked {
                                p.acked = true;
                                self.stats.acked += 1;
                            }
                        }
                    }
                    Noticed::OutOfOrder(payload, v) => {
                        if self.routed.get(&payload).copied().unwrap_or(0) < 2 {
                            self.problems.push(v);
                        }
                    }
                    Noticed::Violation(v) => self.problems.push(v),
                    Noticed::OutOfOrderAck(v) => self.problems.push(v),
                    Noticed::MustClose => {
                        self.log(format!("{id}: closes: it has no state for that session"));
                        self.send_up(c, Up::Eof);
                        self.clients[c].leave_wire(now);
                    }
                }
            }
            if self.clients[c].wire != Some(wire) {
                break;
            }
        }
        if self.clients[c].wire != Some(wire) {
            self.left_wire(c, Some(wire));
        }
        if moved && self.rng.chance(50) {
            self.flush_acks(c, usize::MAX);
        }
        moved
    }

    fn client_acks(&mut self, c: usize) {
        let n = self.clients[c].acks.len() as u64;
        let k = if self.rng.chance(50) {
            n
        } else {
            self.rng.range(1, n.max(1))
        };
        self.flush_acks(c, k as usize);
    }

    fn flush_acks(&mut self, c: usize, k: usize) {
        if !self.clients[c].connected {
            return;
        }
        let mut sent = Vec::new();
        for _ in 0..k {
            let Some(p) = self.clients[c].acks.pop_front() else {
                break;
            };
            sent.push(p);
        }
        if sent.is_empty() {
            return;
        }
        let id = self.clients[c].id.clone();
        self.log(format!("{id}: sends {sent:?}"));
        for p in sent {
            self.send_up(c, p);
        }
    }

    fn disconnect(&mut self, c: usize) {
        let now = self.now_ms;
        let id = self.clients[c].id.clone();
        if self.rng.chance(30) {
            self.log(format!("{id}: network loss"));
            self.send_up(c, Up::Eof);
            let wire = self.clients[c].wire;
            self.clients[c].leave_wire(now);
            self.left_wire(c, wire);
            return;
        }
        let current = match self.clients[c].knows {
            Knows::Alive { expiry_s } => expiry_s,
            _ => 0,
        };
        // Session Expiry in DISCONNECT: none, 0, or lower (never 0 -> non-zero).
        let expiry = match self.rng.below(3) {
            0 => None,
            1 => Some(0),
            _ if current > 5 => Some(5),
            _ => None,
        };
        self.log(format!("{id}: DISCONNECT expiry {expiry:?}"));
        self.send_up(c, Up::Disconnect { expiry_s: expiry });
        let wire = self.clients[c].wire;
        if self.server_closed_ms(wire).is_some() {
            self.clients[c].dead_wire = true;
        }
        self.clients[c].disconnected(expiry, now);
        self.left_wire(c, wire);
    }

    /// Learn from what the broker did in the last step.
    fn absorb(&mut self) {
        let log = std::mem::take(&mut self.broker().log);
        self.trace.extend(log);
        let events = self.broker().take_events();
        let problems = std::mem::take(&mut self.broker().problems);
        self.problems.extend(problems);
        for event in events {
            match event {
                Event::Routed {
                    routing,
                    topic,
                    payload,
                    retain,
                    publish_ms,
                } => {
                    *self.routed.entry(payload.clone()).or_default() += 1;
                    let holders = self.must_reach(&payload);
                    self.routings.insert(routing, (payload.clone(), holders));
                    if retain {
                        self.retain_ops
                            .insert(routing, (topic, payload, publish_ms));
                    }
                }
                Event::Durable { routing, wrote } => {
                    // A retained update that wrote nothing (a clear of a topic the
                    // index no longer had) leaves the store as earlier updates do.
                    if let Some((topic, payload, publish_ms)) = self.retain_ops.remove(&routing) {
                        if wrote {
                            self.retained.insert(topic, (payload, publish_ms));
                        }
                    }
                    if let Some((payload, holders)) = self.routings.remove(&routing) {
                        if let Some(p) = self.published.get_mut(&payload) {
                            p.durable_routings += 1;
                            p.must_reach.extend(holders);
                        }
                    }
                }
                Event::Dropped { client, payload } => {
                    self.dropped.insert((client, payload));
                }
                Event::Missing { client } => self.problems.push(format!(
                    "{client}: a queue entry refers to a message that is gone"
                )),
            }
        }
    }

    /// The sessions that must get `payload` if this routing is acknowledged: those
    /// whose client is sure its session is alive and persistent, with a QoS 1/2
    /// subscription acknowledged (SUBACK) and no (un)subscribe in flight that matches.
    fn must_reach(&self, payload: &Bytes) -> BTreeSet<Holder> {
        let mut holders = BTreeSet::new();
        let Some(p) = self.published.get(payload) else {
            return holders;
        };
        if p.qos == QoS::AtMostOnce {
            return holders;
        }
        for (i, c) in self.clients.iter().enumerate() {
            match c.knows {
                Knows::Alive { expiry_s } if expiry_s > 0 => {}
                _ => continue,
            }
            if c.may_have_expired(self.now_ms) {
                continue;
            }
            if c.sub_ops.values().any(|(f, _)| topic::matches(f, &p.topic)) {
                continue;
            }
            let granted = c
                .subs
                .iter()
                .filter(|(f, _)| topic::matches(f, &p.topic))
                .map(|(_, q)| *q)
                .max();
            if granted.is_some_and(|q| q != QoS::AtMostOnce) {
                holders.insert((i, c.epoch, c.life));
            }
        }
        holders
    }

    /// No faults: reconnect every client whose session must exist, and run until
    /// nothing moves, so every queue is delivered.
    fn drain(&mut self) {
        let mut crash_at = self.rng.chance(DRAIN_CRASH_PCT).then(|| self.rng.below(4));
        let mut publish_after: Vec<usize> = Vec::new();
        let mut waited = 0;
        for round in 0..400 {
            let mut moved = false;
            let now = self.now_ms;
            for c in 0..self.clients.len() {
                let client = &self.clients[c];
                if client.wire.is_none() && !client.may_have_expired(now) {
                    if let Knows::Alive { expiry_s } = client.knows {
                        if expiry_s > 0 {
                            self.connect_with(c, false, expiry_s, None);
                            moved = true;
                        }
                    }
                }
            }
            for wire in self.broker().accepting() {
                moved |= self.accept_step(wire);
            }
            if self.broker().pending_requests() > 0 {
                let n = self.broker().pending_requests();
                self.commit(n);
                moved = true;
            }
            while self.broker().pending_reads() > 0 {
                self.broker().run_read(0, false);
                moved = true;
            }
            while self.broker().pending_answers() > 0 {
                self.broker().answer_read(0);
                moved = true;
            }
            let ids: Vec<u64> = self.broker().conns.keys().copied().collect();
            for id in ids {
                moved |= self.broker().turn(id, usize::MAX);
            }
            for c in 0..self.clients.len() {
                moved |= self.client_reads(c, usize::MAX);
                if !self.clients[c].acks.is_empty() && self.clients[c].connected {
                    self.flush_acks(c, usize::MAX);
                    moved = true;
                }
            }
            if crash_at == Some(round) {
                crash_at = None;
                self.absorb();
                self.crash();
                publish_after = (0..self.clients.len()).collect();
                moved = true;
            }
            // After the crash, each client that is back publishes once at QoS 2: a
            // packet id the broker still holds from before the crash (a lost PUBCOMP
            // deletion) would swallow it.
            for c in std::mem::take(&mut publish_after) {
                if self.clients[c].connected && self.clients[c].connecting.is_none() {
                    let topic = self.rng.pick(&TOPICS).copied().unwrap_or("t/a").to_owned();
                    self.publish_with(c, QoS::ExactlyOnce, topic, false, false);
                    moved = true;
                } else if self.clients[c].wire.is_some()
                    || matches!(self.clients[c].knows, Knows::Alive { expiry_s } if expiry_s > 0)
                {
                    // (connecting, or reconnected by the next round)
                    publish_after.push(c);
                }
            }
            if !moved && waited < 10 {
                // A timer is due soon (a failed page read retries after a pause).
                if let Some(at) = self.broker().deadline_within(Duration::from_secs(2)) {
                    waited += 1;
                    self.now_ms = self.now_ms.max(at);
                    let now = self.now_ms;
                    self.broker().now_ms = now;
                    self.broker().on_timer_all();
                    moved = true;
                }
            }
            self.absorb();
            if !moved {
                return;
            }
        }
        self.problems
            .push("the drain did not settle in 400 rounds".into());
    }

    fn final_checks(&mut self) {
        for c in &self.clients {
            if let Knows::Alive { expiry_s } = c.knows {
                if expiry_s > 0 && !c.may_have_expired(self.now_ms) && !c.connected {
                    self.problems.push(format!(
                        "{}: could not reconnect to its session in the drain",
                        c.id
                    ));
                }
            }
        }
        for (payload, p) in &self.published {
            if !p.acked {
                continue;
            }
            for &(i, epoch, life) in &p.must_reach {
                let c = &self.clients[i];
                if c.epoch != epoch || c.life != life || !c.connected {
                    continue; // that session ended since (or the drain could not reach it)
                }
                self.stats.checked_deliveries += 1;
                if !c.got.contains_key(payload)
                    && !self.dropped.contains(&(c.id.clone(), payload.clone()))
                {
                    self.problems.push(format!(
                        "{}: acknowledged message {payload:?} (qos {}, to {}) never delivered to its persistent session",
                        c.id, p.qos as u8, p.topic
                    ));
                }
            }
        }
    }
}
