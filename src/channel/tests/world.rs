//! The world: clients on channels over one broker, a reference of what the broker
//! must do (which sessions exist, their subscriptions, what each must receive,
//! retained messages, wills), the steps, and the pump that moves everything until
//! the store has answered.
//!
//! The reference is updated when a packet reaches its channel (routing and
//! subscriptions take effect there, synchronously), and checks every delivery:
//! expected at all, at QoS min(publish, granted) [MQTT-3.8.4-8], RETAIN only on
//! retained messages sent for a SUBSCRIBE, first deliveries from one publisher in
//! publish order (QoS 1/2), no QoS 2 message twice; CONNACK's session present;
//! wills exactly when due; and, at the end, after every persistent session is
//! resumed and drained, that no QoS 1/2 message routed to a session still alive
//! was lost.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::client::{parse_key, payload, Arrival, Client, ConnectOpts, Key, Seen};
use super::harness::{Conn, Ended, Sim, STORE_WAIT};
use crate::channel::Close;
use crate::codec::{
    Disconnect, Packet, Properties, QoS, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe,
};

pub(super) const TOPICS: [&str; 4] = ["t/a", "t/b", "t/a/x", "t/c/x"];
pub(super) const FILTERS: [&str; 7] = ["t/a", "t/b", "t/a/x", "t/+", "t/#", "+/a", "t/+/x"];
/// The zone's Session Expiry cap (the default, 2 h): v3 persistent sessions get it.
const MAX_EXPIRY_S: u32 = 7200;
/// The zone's retry interval in these tests.
pub(super) const RETRY: Duration = Duration::from_secs(5);
/// The zone's max_inflight (our Receive Maximum) in these tests.
pub(super) const MAX_INFLIGHT: u16 = 4;
/// The zone's keepalive backoff × 2 (the default 0.75 × 2).
const KEEPALIVE_FACTOR: f64 = 1.5;

#[derive(Debug, Clone, Copy)]
pub(super) enum How {
    /// DISCONNECT 0x00: no will.
    Normal,
    /// DISCONNECT 0x04 (v5; 0x00 for v3).
    WithWill,
    /// The network: no DISCONNECT.
    Lost,
}

#[derive(Debug, Clone)]
pub(super) enum Step {
    Publish {
        c: usize,
        topic: usize,
        qos: u8,
        retain: bool,
    },
    /// PUBLISH, then the connection is lost before its ack.
    PublishThenLose {
        c: usize,
        topic: usize,
        qos: u8,
    },
    Subscribe {
        c: usize,
        filter: usize,
        qos: u8,
    },
    Unsubscribe {
        c: usize,
        filter: usize,
    },
    /// Withhold acks of deliveries, or send the withheld ones.
    Acks {
        c: usize,
        withhold: bool,
    },
    Advance {
        secs: u64,
    },
    Disconnect {
        c: usize,
        how: How,
    },
    /// CONNECT; a takeover when the client is connected.
    Connect {
        c: usize,
        opts: ConnectOpts,
    },
}

/// What a case went through (for the coverage test).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Stats {
    pub deliveries: u64,
    /// Delivered at a lower QoS than published (a lower granted QoS).
    pub downgraded: u64,
    pub retained: u64,
    pub wills_at_once: u64,
    pub wills_delayed: u64,
    pub wills_cancelled: u64,
    pub keepalive_closes: u64,
    pub sessions_expired: u64,
    pub resumed: u64,
    pub takeovers: u64,
    /// Resent QoS 2 PUBLISHes the channel answered without routing.
    pub qos2_resent: u64,
    pub client: Seen,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.deliveries += o.deliveries;
        self.downgraded += o.downgraded;
        self.retained += o.retained;
        self.wills_at_once += o.wills_at_once;
        self.wills_delayed += o.wills_delayed;
        self.wills_cancelled += o.wills_cancelled;
        self.keepalive_closes += o.keepalive_closes;
        self.sessions_expired += o.sessions_expired;
        self.resumed += o.resumed;
        self.takeovers += o.takeovers;
        self.qos2_resent += o.qos2_resent;
        self.client.dup_resends += o.client.dup_resends;
        self.client.alias_only += o.client.alias_only;
        self.client.receive_max_full += o.client.receive_max_full;
    }
}

/// A message routed to a session: the QoS of each copy not yet delivered.
#[derive(Debug, Default)]
struct Expected {
    qos: Vec<QoS>,
    arrived: u32,
}

/// A session as the broker must have it.
struct Session {
    persistent: bool,
    expiry_s: u32,
    offline_since: Option<Instant>,
    subs: BTreeMap<String, QoS>,
    /// (message, RETAIN flag) → copies routed and not yet delivered.
    expect: HashMap<(Key, bool), Expected>,
    /// Per publisher: the last message delivered for the first time (QoS 1/2).
    last_first: HashMap<usize, u32>,
    /// Inbound QoS 2 ids held (a resent PUBLISH of one is not routed again).
    held_in: BTreeSet<u16>,
}

pub(super) struct World {
    sim: Sim,
    conns: Vec<Option<Conn>>,
    clients: Vec<Client>,
    /// The clients under test; the observer (last) only watches wills.
    n: usize,
    sessions: Vec<Option<Session>>,
    /// The will of each client's current connection, with its delay.
    wills: Vec<Option<(Key, u32)>>,
    /// Delayed wills: client → (due, will).
    pending_wills: BTreeMap<usize, (u64, Key)>,
    /// Published, not yet seen by the observer.
    wills_due: BTreeSet<Key>,
    msgs: HashMap<Key, (String, QoS)>,
    retained: BTreeMap<String, (Key, QoS)>,
    published: Vec<u32>,
    connections: u32,
    sub_ids: u16,
    stats: Stats,
    trace: Vec<String>,
}

impl World {
    pub fn new(initial: &[ConnectOpts]) -> World {
        let sim = Sim::new(|z| {
            z.max_inflight = MAX_INFLIGHT;
            z.retry_interval = RETRY;
            // Not modelled: a QoS 2 id held longer is forgotten (EMQX's rule).
            z.await_rel_timeout = Duration::from_secs(365 * 86_400);
        });
        let n = initial.len();
        let now = sim.now().at;
        let mut world = World {
            sim,
            conns: (0..=n).map(|_| None).collect(),
            clients: (0..=n)
                .map(|i| {
                    let id = if i == n {
                        "obs".into()
                    } else {
                        format!("c{i}")
                    };
                    Client::new(id, now)
                })
                .collect(),
            n,
            sessions: (0..n).map(|_| None).collect(),
            wills: vec![None; n + 1],
            pending_wills: BTreeMap::new(),
            wills_due: BTreeSet::new(),
            msgs: HashMap::new(),
            retained: BTreeMap::new(),
            published: vec![0; n],
            connections: 0,
            sub_ids: 0,
            stats: Stats::default(),
            trace: Vec::new(),
        };
        let observer = ConnectOpts {
            clean: true,
            v5: true,
            expiry_s: 0,
            receive_max: 2,
            alias_max: 1,
            keep_alive: 0,
            pinging: false,
            will_delay_s: None,
        };
        world.connect(n, &observer);
        world.subscribe(n, "will/#", QoS::AtLeastOnce);
        for (c, opts) in initial.iter().enumerate() {
            world.connect(c, opts);
        }
        world.pump();
        world
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!("{what}\nsteps so far:\n  {}", self.trace.join("\n  "));
    }

    pub fn step(&mut self, step: &Step) {
        self.trace.push(format!("{step:?}"));
        match step {
            Step::Publish {
                c,
                topic,
                qos,
                retain,
            } => self.publish(*c, TOPICS[*topic], *qos, *retain),
            Step::PublishThenLose { c, topic, qos } => {
                if self.clients[*c].online {
                    self.publish(*c, TOPICS[*topic], *qos, false);
                    self.feed_outbox(*c);
                    self.end_conn(*c, Close::Lost);
                }
            }
            Step::Subscribe { c, filter, qos } => {
                let qos = QoS::from_u8(*qos).unwrap_or_default();
                self.subscribe(*c, FILTERS[*filter], qos);
            }
            Step::Unsubscribe { c, filter } => {
                if self.clients[*c].online {
                    let packet = Packet::Unsubscribe(Unsubscribe {
                        packet_id: self.sub_id(),
                        properties: Properties::default(),
                        filters: vec![FILTERS[*filter].to_owned()],
                    });
                    self.clients[*c].outbox.push_back(packet);
                }
            }
            Step::Acks { c, withhold } => {
                self.clients[*c].withhold = *withhold;
                if !withhold {
                    self.clients[*c].release_owed();
                }
            }
            Step::Advance { secs } => self.advance(Duration::from_secs(*secs)),
            Step::Disconnect { c, how } => {
                if self.clients[*c].online {
                    let reason = match how {
                        How::WithWill if self.clients[*c].version.is_v5() => {
                            ReasonCode::DISCONNECT_WITH_WILL
                        }
                        How::Normal | How::WithWill => ReasonCode::NORMAL_DISCONNECTION,
                        How::Lost => {
                            self.end_conn(*c, Close::Lost);
                            self.pump();
                            self.check_wills();
                            return self.check_sessions();
                        }
                    };
                    let packet = Packet::Disconnect(Disconnect {
                        reason,
                        properties: Properties::default(),
                    });
                    self.clients[*c].outbox.push_back(packet);
                }
            }
            Step::Connect { c, opts } => self.connect(*c, opts),
        }
        self.pump();
        self.check_wills();
        self.check_sessions();
    }

    fn sub_id(&mut self) -> u16 {
        self.sub_ids = self.sub_ids.wrapping_add(1);
        50_000 + self.sub_ids % 10_000
    }

    fn publish(&mut self, c: usize, topic: &str, qos: u8, retain: bool) {
        let qos = QoS::from_u8(qos).unwrap_or_default();
        let client = &self.clients[c];
        if !client.online || (qos != QoS::AtMostOnce && !client.may_publish()) {
            return;
        }
        self.published[c] += 1;
        let key = ('p', c, self.published[c]);
        self.msgs.insert(key, (topic.to_owned(), qos));
        self.clients[c].publish(topic, key, qos, retain, None);
    }

    fn subscribe(&mut self, c: usize, filter: &str, qos: QoS) {
        if !self.clients[c].online {
            return;
        }
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        let packet = Packet::Subscribe(Subscribe {
            packet_id: self.sub_id(),
            properties: Properties::default(),
            filters: vec![(filter.to_owned(), options)],
        });
        self.clients[c].outbox.push_back(packet);
    }

    // ---- connections ----

    pub fn connect(&mut self, c: usize, opts: &ConnectOpts) {
        let old = self.conns[c].take();
        let took_over = old.is_some();
        self.connections += 1;
        let will = opts
            .will_delay_s
            .map(|d| (('w', c, self.connections), if opts.v5 { d } else { 0 }));
        let connect = self.clients[c].connect_packet(opts, will.map(|(k, _)| payload(k)));
        let (opened, ended) = self.sim.connect(connect, old);
        match ended {
            Some(ended) => {
                self.stats.takeovers += 1;
                self.ended(c, ended);
            }
            None if took_over => self.fail("the connection taken over did not end"),
            None => {}
        }
        let mut conn = match opened {
            Ok(conn) => conn,
            Err(connack) => self.fail(format!("client {c} refused: {connack:?}")),
        };
        let present = if c == self.n {
            false
        } else {
            self.open_session(c, opts)
        };
        let now = self.sim.now();
        let mut output = conn.take_output(now).into_iter();
        let ack = match output.next() {
            Some(Packet::ConnAck(ack)) => ack,
            other => self.fail(format!("client {c}: {other:?} instead of CONNACK")),
        };
        if ack.reason != ReasonCode::Success || ack.session_present != present {
            self.fail(format!(
                "client {c}: {ack:?}, expected success with session present {present}"
            ));
        }
        self.clients[c].connected(opts, &ack, now.at);
        self.wills[c] = will;
        self.conns[c] = Some(conn);
        for packet in output {
            self.receive(c, packet);
        }
    }

    /// The session CONNECT must find (as `accept::open` decides); true if resumed.
    fn open_session(&mut self, c: usize, opts: &ConnectOpts) -> bool {
        let expiry_s = match (opts.v5, opts.clean) {
            (true, _) => opts.expiry_s.min(MAX_EXPIRY_S),
            (false, true) => 0,
            (false, false) => MAX_EXPIRY_S,
        };
        let resumable = |s: &Session| s.persistent && s.offline_since.is_some();
        match &mut self.sessions[c] {
            Some(s) if !opts.clean && resumable(s) => {
                s.expiry_s = expiry_s;
                s.offline_since = None;
                // A reconnect within the Will Delay: no will [MQTT-3.1.3-9].
                if self.pending_wills.remove(&c).is_some() {
                    self.stats.wills_cancelled += 1;
                }
                self.stats.resumed += 1;
                true
            }
            _ => {
                // The session before ends: a will waiting for it is due now.
                if let Some((_, will)) = self.pending_wills.remove(&c) {
                    self.wills_due.insert(will);
                }
                self.sessions[c] = Some(Session {
                    persistent: expiry_s > 0,
                    expiry_s,
                    offline_since: None,
                    subs: BTreeMap::new(),
                    expect: HashMap::new(),
                    last_first: HashMap::new(),
                    held_in: BTreeSet::new(),
                });
                false
            }
        }
    }

    /// The channel closed the connection itself: only a keepalive timeout (or the
    /// client's DISCONNECT) may do that here.
    fn channel_closed(&mut self, c: usize, close: Close) {
        match &close {
            Close::ByClient { .. } => {}
            Close::Error(r) if *r == ReasonCode::KEEP_ALIVE_TIMEOUT => {
                let client = &self.clients[c];
                let silent = self.sim.now().at - client.last_sent;
                let limit = keepalive_limit(client.keep_alive);
                self.stats.keepalive_closes += 1;
                if client.keep_alive == 0 || silent + Duration::from_millis(100) < limit {
                    self.fail(format!(
                        "client {c} closed for keepalive after {silent:?} of silence (keepalive {} s)",
                        client.keep_alive
                    ));
                }
            }
            other => self.fail(format!("the channel closed client {c}: {other:?}")),
        }
        self.end_conn(c, close);
    }

    fn end_conn(&mut self, c: usize, close: Close) {
        let Some(conn) = self.conns[c].take() else {
            return;
        };
        let ended = conn.finish(close, self.sim.now());
        self.ended(c, ended);
    }

    /// A connection ended: the client reads its last bytes, the session is detached.
    fn ended(&mut self, c: usize, ended: Ended) {
        let reason = match &ended.close {
            Close::Error(r) | Close::Kicked(r) => Some(*r),
            _ => None,
        };
        for packet in ended.output {
            match packet {
                Packet::Disconnect(d) if Some(d.reason) == reason => {}
                Packet::Disconnect(d) => {
                    self.fail(format!("client {c}: {d:?} for {:?}", ended.close))
                }
                other => self.receive(c, other),
            }
        }
        self.clients[c].disconnected();
        if c == self.n {
            return;
        }
        self.detach_session(c, &ended.close);
    }

    /// What `Channel::detach` must leave: the session offline or ended, the will.
    fn detach_session(&mut self, c: usize, close: &Close) {
        let now = self.sim.now();
        let Some(s) = self.sessions[c].as_mut() else {
            self.fail(format!("client {c} was connected without a session"))
        };
        let expiry_s = s.expiry_s;
        if !s.persistent || expiry_s == 0 {
            self.sessions[c] = None;
        } else {
            s.offline_since = Some(now.at);
        }
        let publish_will = match close {
            Close::ByClient { with_will } => *with_will,
            Close::Kicked(r) => *r != ReasonCode::SERVER_SHUTTING_DOWN,
            Close::Lost | Close::Error(_) => true,
        };
        if let (Some((will, delay_s)), true) = (self.wills[c].take(), publish_will) {
            match delay_s.min(expiry_s) {
                0 => {
                    self.stats.wills_at_once += 1;
                    self.wills_due.insert(will);
                }
                delay_s => {
                    self.stats.wills_delayed += 1;
                    let due_ms = now.ms + u64::from(delay_s) * 1000;
                    self.pending_wills.insert(c, (due_ms, will));
                }
            }
        }
    }

    // ---- packets ----

    /// Hand the client's queued packets to its channel, without a pump.
    fn feed_outbox(&mut self, c: usize) {
        while self.conns[c].is_some() {
            let Some(packet) = self.clients[c].outbox.pop_front() else {
                return;
            };
            self.feed(c, packet);
        }
    }

    /// `packet` reaches client `c`'s channel: the reference takes effect first.
    fn feed(&mut self, c: usize, packet: Packet) {
        let now = self.sim.now();
        if c < self.n {
            self.reference_sees(c, &packet);
        } else if let Packet::Subscribe(s) = &packet {
            self.clients[c].subscribe_sent(s.packet_id, vec![ReasonCode::GRANTED_QOS_1]);
        }
        self.clients[c].on_sent(&packet, now.at);
        let Some(conn) = self.conns[c].as_mut() else {
            return;
        };
        if let Err(close) = conn.send(&packet, now) {
            if matches!(close, Close::ByClient { .. }) != matches!(packet, Packet::Disconnect(_)) {
                self.fail(format!("client {c}: {close:?} after {}", packet.name()));
            }
            self.channel_closed(c, close);
        }
    }

    fn reference_sees(&mut self, c: usize, packet: &Packet) {
        if self.sessions[c].is_none() {
            self.fail(format!("client {c} sends without a session"));
        }
        match packet {
            Packet::Publish(p) => {
                let key = parse_key(&p.payload).filter(|k| self.msgs.contains_key(k));
                let Some(key) = key else {
                    self.fail(format!("client {c} publishes an unknown message"))
                };
                let id = p.packet_id.unwrap_or(0);
                let s = self.sessions[c].as_mut().expect("checked above");
                if p.qos == QoS::ExactlyOnce && !s.held_in.insert(id) {
                    // A resent QoS 2 PUBLISH the channel holds: PUBREC, no routing.
                    self.stats.qos2_resent += 1;
                    self.clients[c].expect_reason(id, Some(ReasonCode::Success));
                    return;
                }
                let matched = self.route(key, p.retain);
                let reason = if matched > 0 {
                    ReasonCode::Success
                } else {
                    ReasonCode::NO_MATCHING_SUBSCRIBERS
                };
                self.clients[c].expect_reason(id, Some(reason));
            }
            Packet::PubRel(r) => {
                let s = self.sessions[c].as_mut().expect("checked above");
                s.held_in.remove(&r.packet_id);
            }
            Packet::Subscribe(sub) => {
                let s = self.sessions[c].as_mut().expect("checked above");
                let mut reasons = Vec::new();
                for (filter, opts) in &sub.filters {
                    s.subs.insert(filter.clone(), opts.qos);
                    reasons.push(ReasonCode(opts.qos as u8));
                    // Retained messages for the new subscription, with RETAIN.
                    for (topic, (key, qos)) in &self.retained {
                        if crate::topic::matches(filter, topic) {
                            let e = s.expect.entry((*key, true)).or_default();
                            e.qos.push((*qos).min(opts.qos));
                        }
                    }
                }
                self.clients[c].subscribe_sent(sub.packet_id, reasons);
            }
            Packet::Unsubscribe(u) => {
                let s = self.sessions[c].as_mut().expect("checked above");
                let reasons = u
                    .filters
                    .iter()
                    .map(|f| match s.subs.remove(f) {
                        Some(_) => ReasonCode::Success,
                        None => ReasonCode::NO_SUBSCRIPTION_EXISTED,
                    })
                    .collect();
                self.clients[c].subscribe_sent(u.packet_id, reasons);
            }
            _ => {}
        }
    }

    /// Route `key` as the broker must: one copy per session with a matching
    /// subscription, at min(publish QoS, highest granted QoS). Returns the matches.
    fn route(&mut self, key: Key, retain: bool) -> usize {
        let (topic, qos) = self.msgs[&key].clone();
        if retain {
            self.retained.insert(topic.clone(), (key, qos));
        }
        let mut matched = 0;
        for s in self.sessions.iter_mut().flatten() {
            let granted = s
                .subs
                .iter()
                .filter(|(f, _)| crate::topic::matches(f, &topic))
                .map(|(_, q)| *q)
                .max();
            if let Some(granted) = granted {
                matched += 1;
                s.expect
                    .entry((key, false))
                    .or_default()
                    .qos
                    .push(qos.min(granted));
            }
        }
        matched
    }

    /// A packet from client `c`'s channel.
    fn receive(&mut self, c: usize, packet: Packet) {
        if let Packet::Disconnect(d) = &packet {
            self.fail(format!("client {c}: {d:?} while the connection goes on"));
        }
        match self.clients[c].on_packet(packet) {
            Err(e) => self.fail(format!("client {c}: {e}")),
            Ok(Some(arrival)) => self.arrived(c, arrival),
            Ok(None) => {}
        }
    }

    fn arrived(&mut self, c: usize, a: Arrival) {
        if c == self.n {
            if a.key.0 != 'w' || !self.wills_due.remove(&a.key) {
                self.fail(format!(
                    "will {:?} arrived but is not due (early, cancelled or twice)",
                    a.key
                ));
            }
            return;
        }
        let Some((topic, _)) = self.msgs.get(&a.key) else {
            self.fail(format!("client {c} got {:?}, never published", a.key))
        };
        if a.topic != topic.as_bytes() {
            self.fail(format!(
                "client {c} got {:?} on topic {:?}, published on {topic}",
                a.key, a.topic
            ));
        }
        let Some(s) = self.sessions[c].as_mut() else {
            self.fail(format!("client {c} got {:?} without a session", a.key))
        };
        let Some(e) = s.expect.get_mut(&(a.key, a.retain)) else {
            self.fail(format!(
                "client {c} got {:?} (RETAIN {}), not routed to it",
                a.key, a.retain
            ))
        };
        let Some(i) = e.qos.iter().position(|q| *q == a.qos) else {
            let left = e.qos.clone();
            self.fail(format!(
                "client {c} got {:?} at {:?}; copies routed and not delivered: {left:?} (QoS = min(publish, granted))",
                a.key, a.qos
            ))
        };
        e.qos.swap_remove(i);
        e.arrived += 1;
        self.stats.deliveries += 1;
        self.stats.retained += u64::from(a.retain);
        self.stats.downgraded += u64::from(a.qos < self.msgs[&a.key].1);
        let first = e.arrived == 1;
        if first && !a.retain && a.qos != QoS::AtMostOnce {
            let last = s.last_first.entry(a.key.1).or_insert(0);
            if a.key.2 <= *last {
                let last = *last;
                self.fail(format!(
                    "client {c} got {:?} after message {last} of the same publisher",
                    a.key
                ));
            }
            *last = a.key.2;
        }
    }

    // ---- the pump and the clock ----

    /// Move packets both ways and mailbox events until nothing moves and no client
    /// waits for an answer; wait for the store writer in between (bounded).
    pub fn pump(&mut self) {
        let started = Instant::now();
        let mut quiet = 0;
        for _ in 0..100_000 {
            let mut moved = false;
            for c in 0..self.conns.len() {
                if !self.clients[c].outbox.is_empty() && self.conns[c].is_some() {
                    moved = true;
                    self.feed_outbox(c);
                }
                let now = self.sim.now();
                let Some(conn) = self.conns[c].as_mut() else {
                    continue;
                };
                match conn.take_mailbox(now) {
                    Ok(any) => moved |= any,
                    Err(close) => {
                        self.channel_closed(c, close);
                        moved = true;
                        continue;
                    }
                }
                let packets = conn.take_output(now);
                moved |= !packets.is_empty();
                for packet in packets {
                    self.receive(c, packet);
                }
            }
            if moved {
                quiet = 0;
                continue;
            }
            let waiting = self
                .clients
                .iter()
                .enumerate()
                .find_map(|(c, client)| {
                    client
                        .waiting()
                        .map(|w| format!("client {c} waits for {w}"))
                })
                .or_else(|| {
                    self.conns.iter().enumerate().find_map(|(c, conn)| {
                        conn.as_ref()
                            .filter(|conn| conn.awaiting_store())
                            .map(|_| format!("channel {c} waits for the store"))
                    })
                });
            match waiting {
                None if quiet > 0 => return,
                Some(w) if started.elapsed() > STORE_WAIT => {
                    self.fail(format!("the channel never answered: {w}"))
                }
                Some(_) if quiet > 1 => std::thread::sleep(Duration::from_millis(1)),
                _ => {}
            }
            self.sim.barrier();
            quiet += 1;
        }
        self.fail("the pump did not settle");
    }

    /// Let `by` pass on the simulated clock, stopping at every channel deadline and
    /// at least once a second (the broker's sweep period): pinging clients ping,
    /// timers run, the sweep runs.
    fn advance(&mut self, by: Duration) {
        let target = self.sim.now().at + by;
        for _ in 0..100_000 {
            let now = self.sim.now();
            if now.at >= target {
                return;
            }
            let mut next = (now.at + Duration::from_secs(1)).min(target);
            for conn in self.conns.iter().flatten() {
                let due = conn.channel.next_deadline(now);
                next = next.min(due.max(now.at + Duration::from_millis(1)));
            }
            self.sim.clock.advance_to(next);
            let now = self.sim.now();
            for c in 0..self.clients.len() {
                let client = &self.clients[c];
                let half = Duration::from_secs(u64::from(client.keep_alive)) / 2;
                if client.online
                    && client.pinging
                    && client.keep_alive > 0
                    && now.at - client.last_sent >= half
                {
                    self.feed(c, Packet::PingReq);
                }
            }
            for c in 0..self.conns.len() {
                if let Some(conn) = self.conns[c].as_mut() {
                    if let Err(close) = conn.channel.on_timer(now) {
                        self.channel_closed(c, close);
                    }
                }
            }
            self.sweep();
            self.pump();
            self.check_keepalive();
            self.check_wills();
            self.check_sessions();
        }
        self.fail("the clock did not reach its target");
    }

    /// The broker's sweep, and what it must do: end offline sessions past their
    /// expiry (their waiting wills are due at once), publish wills past their delay.
    fn sweep(&mut self) {
        self.sim.sweep();
        let now = self.sim.now();
        for c in 0..self.n {
            let expired = self.sessions[c].as_ref().is_some_and(|s| {
                s.offline_since.is_some_and(|since| {
                    now.at - since >= Duration::from_secs(u64::from(s.expiry_s))
                })
            });
            if expired {
                self.stats.sessions_expired += 1;
                self.sessions[c] = None;
                if let Some((_, will)) = self.pending_wills.remove(&c) {
                    self.wills_due.insert(will);
                }
            }
        }
        let due: Vec<usize> = self
            .pending_wills
            .iter()
            .filter(|(_, (due_ms, _))| *due_ms <= now.ms)
            .map(|(c, _)| *c)
            .collect();
        for c in due {
            if let Some((_, will)) = self.pending_wills.remove(&c) {
                self.wills_due.insert(will);
            }
        }
    }

    fn check_keepalive(&self) {
        let now = self.sim.now().at;
        for (c, client) in self.clients.iter().enumerate() {
            let limit = keepalive_limit(client.keep_alive) + Duration::from_secs(1);
            if client.online && client.keep_alive > 0 && now - client.last_sent > limit {
                self.fail(format!(
                    "client {c} silent for {:?} with keepalive {} s and still connected",
                    now - client.last_sent,
                    client.keep_alive
                ));
            }
        }
    }

    /// The broker holds exactly the sessions the reference says exist.
    fn check_sessions(&self) {
        for c in 0..self.n {
            let id = &self.clients[c].id;
            let held = self.sim.broker.registry.get(id).is_some();
            if held != self.sessions[c].is_some() {
                self.fail(format!(
                    "client {c}: the broker {} its session, the reference says it {}",
                    if held { "holds" } else { "has no" },
                    if held { "ended" } else { "exists" }
                ));
            }
        }
    }

    /// Every will published has reached the observer (it is online and reads all).
    fn check_wills(&self) {
        if !self.wills_due.is_empty() {
            self.fail(format!("wills due but not published: {:?}", self.wills_due));
        }
    }

    /// The end of a case: acks flow again, every persistent session offline is
    /// resumed and drained; then no QoS 1/2 copy routed to a live session may be
    /// missing, and the store's invariants hold.
    pub fn finish(mut self) -> Stats {
        self.trace.push("finish".into());
        for client in &mut self.clients {
            client.withhold = false;
            client.release_owed();
        }
        self.pump();
        for c in 0..self.n {
            let offline = self.sessions[c]
                .as_ref()
                .is_some_and(|s| s.offline_since.is_some());
            if offline {
                let opts = ConnectOpts {
                    clean: false,
                    v5: true,
                    expiry_s: 60,
                    receive_max: 8,
                    alias_max: 2,
                    keep_alive: 0,
                    pinging: false,
                    will_delay_s: None,
                };
                self.connect(c, &opts);
            }
        }
        self.pump();
        for (c, s) in self.sessions.iter().enumerate() {
            let Some(s) = s else { continue };
            for ((key, retain), e) in &s.expect {
                if e.qos.iter().any(|q| *q != QoS::AtMostOnce) {
                    self.fail(format!(
                        "client {c}: {key:?} (RETAIN {retain}) routed at {:?} never arrived",
                        e.qos
                    ));
                }
            }
        }
        self.sim.barrier();
        match self.sim.broker.store.check_invariants() {
            Ok(problems) if problems.is_empty() => {}
            other => self.fail(format!("store invariants: {other:?}")),
        }
        let mut stats = self.stats;
        for client in &self.clients {
            stats.client.dup_resends += client.seen.dup_resends;
            stats.client.alias_only += client.seen.alias_only;
            stats.client.receive_max_full += client.seen.receive_max_full;
        }
        stats
    }
}

/// Silence after which the channel must close a connection with keepalive `k` s.
fn keepalive_limit(k: u16) -> Duration {
    Duration::from_secs_f64(f64::from(k) * KEEPALIVE_FACTOR)
}
