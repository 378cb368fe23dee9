//! A simulated MQTT 5 client and what it knows, which is what the reference model
//! checks against: its session as the spec lets a client know it, the messages its
//! application received, and its own QoS 2 receiver state (the spec's method B:
//! deliver on the first PUBLISH of an id, then treat that id as a duplicate until
//! PUBREL). The client never trusts the broker: each check is stated from here.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use quay::codec::QoS;

use super::server::ClientId;
use super::wire::{Down, Pub, Up};

/// What the client can be sure of about its session at the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Knows {
    /// The broker holds it (it answered a CONNECT with it, and nothing since could
    /// have ended it); expires `expiry_s` after the client went offline.
    Alive { expiry_s: u32 },
    /// It ended (expiry 0 and the connection ended). A crash since may bring it
    /// back: its end was a detached write.
    Ended { crash_since: bool },
    /// Anything else: no check depends on it.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutStage {
    /// QoS 1 PUBLISH sent, PUBACK awaited.
    Ack,
    /// QoS 2 PUBLISH sent, PUBREC awaited.
    Rec,
    /// PUBREL sent, PUBCOMP awaited.
    Comp,
}

#[derive(Debug, Clone)]
pub struct OutFlight {
    pub publish: Pub,
    pub stage: OutStage,
    /// When it was first sent: resent in that order [MQTT-4.6.0-1].
    pub order: u64,
}

/// A CONNECT sent and not answered yet.
#[derive(Debug, Clone, Copy)]
pub struct Connecting {
    pub clean_start: bool,
    pub expiry_s: u32,
    /// What CONNACK's session present must say, when the client can know.
    pub expect_present: Option<bool>,
    /// A ghost taken while this CONNECT waited may have made a session the client
    /// has no state for: a session present = 1 may not be the client's.
    pub unsure: bool,
}

pub struct Client {
    pub id: ClientId,
    pub wire: Option<u64>,
    pub connected: bool,
    pub connecting: Option<Connecting>,
    pub knows: Knows,
    /// The next CONNECT uses Clean Start: the client cannot tell which session a
    /// resume would find.
    pub force_clean: bool,
    /// A CONNECT was left unanswered since the last CONNACK.
    pub abandoned: bool,
    /// CONNECTs left unanswered, per wire, that the broker may still take: after
    /// later ones, since connections are not ordered (see `ghost_resolved`).
    pub ghosts: BTreeMap<u64, Connecting>,
    /// Ghosts the broker took while `connecting` was unanswered: taken before it or
    /// after it, the client cannot tell, so its CONNACK alone does not say which
    /// session is there (see `on_packet`).
    pub ghosts_while_connecting: Vec<Connecting>,
    /// The broker no longer reads the client's connection (a ghost taken while the
    /// client was connected took the session over from it, or the server closed it):
    /// what the client sends there is lost (seed 186036: a DISCONNECT with expiry 0
    /// did not end the session).
    pub dead_wire: bool,
    /// A ghost taken while the CONNECT of the client's connection waited may have
    /// taken it over after its CONNACK: whether the broker reads what the client
    /// sends there, the client cannot tell.
    pub maybe_dead_wire: bool,
    /// The client dropped its session state (its session ended) and has not
    /// started a new session since: it cannot resume one.
    pub stateless: bool,
    pub offline_since_ms: Option<u64>,
    /// Which session (as the client tells them apart): bumped when it starts anew.
    pub epoch: u64,
    /// Bumped whenever the client stops being sure its session is alive: an
    /// expectation of delivery holds only within one life.
    pub life: u64,
    pub out: BTreeMap<u16, OutFlight>,
    pub in_qos2: BTreeSet<u16>,
    pub subs: BTreeMap<String, QoS>,
    /// SUBSCRIBE (Some(qos)) or UNSUBSCRIBE (None) sent, not answered.
    pub sub_ops: BTreeMap<u16, (String, Option<QoS>)>,
    pub next_sub_id: u16,
    pub published: u64,
    /// QoS 1/2 PUBLISHes sent, for `OutFlight::order`.
    pub sends: u64,
    pub wills: u64,
    /// Answers not sent yet (a client that acks late).
    pub acks: VecDeque<Up>,
    /// Per epoch: payloads the application got (QoS 1/2, not retained), how often.
    pub got: BTreeMap<Bytes, u32>,
    /// Per epoch: QoS 2 payloads seen in any PUBLISH.
    pub qos2_seen: BTreeSet<Bytes>,
    /// Per epoch: the last publisher counter delivered in order, per publisher.
    pub last_from: BTreeMap<String, u64>,
}

/// What the client did with a packet, for the model.
pub enum Noticed {
    /// PUBACK/PUBREC for this payload: the broker took responsibility.
    Acked(Bytes),
    /// A first delivery without DUP came after a later message of its publisher:
    /// wrong unless that message was routed again (its publisher sent it again, as
    /// it must while unacknowledged, after the later one).
    OutOfOrder(Bytes, String),
    Violation(String),
    /// The client closes this connection.
    MustClose,
    /// QoS 1 PUBACKs out of PUBLISH order [MQTT-4.6.0-2].
    OutOfOrderAck(String),
}

impl Client {
    pub fn new(id: &str) -> Client {
        Client {
            id: ClientId::from(id),
            wire: None,
            connected: false,
            connecting: None,
            knows: Knows::Unknown,
            force_clean: false,
            abandoned: false,
            ghosts: BTreeMap::new(),
            ghosts_while_connecting: Vec::new(),
            dead_wire: false,
            maybe_dead_wire: false,
            stateless: true,
            offline_since_ms: None,
            epoch: 0,
            life: 0,
            out: BTreeMap::new(),
            in_qos2: BTreeSet::new(),
            subs: BTreeMap::new(),
            sub_ops: BTreeMap::new(),
            next_sub_id: 1000,
            published: 0,
            sends: 0,
            wills: 0,
            acks: VecDeque::new(),
            got: BTreeMap::new(),
            qos2_seen: BTreeSet::new(),
            last_from: BTreeMap::new(),
        }
    }

    /// Forget the session: a new one starts (Clean Start, or session present = 0).
    pub fn new_epoch(&mut self) {
        self.epoch += 1;
        self.life += 1;
        self.out.clear();
        self.in_qos2.clear();
        self.subs.clear();
        self.sub_ops.clear();
        self.got.clear();
        self.qos2_seen.clear();
        self.last_from.clear();
    }

    fn set_knows(&mut self, knows: Knows) {
        if matches!(self.knows, Knows::Alive { .. }) && !matches!(knows, Knows::Alive { .. }) {
            self.life += 1;
        }
        self.knows = knows;
    }

    /// Whether the session may have expired by `now_ms` (as far as the client knows).
    pub fn may_have_expired(&self, now_ms: u64) -> bool {
        match (self.knows, self.offline_since_ms) {
            (Knows::Alive { expiry_s }, Some(since)) => {
                expiry_s != u32::MAX && now_ms.saturating_sub(since) >= expiry_s as u64 * 1000
            }
            _ => false,
        }
    }

    /// The session the broker must have for a CONNECT without Clean Start now.
    pub fn expect_present(&self, now_ms: u64) -> Option<bool> {
        match self.knows {
            Knows::Alive { .. } if self.may_have_expired(now_ms) => None,
            Knows::Alive { .. } => Some(true),
            Knows::Ended { crash_since: false } => Some(false),
            _ => None,
        }
    }

    /// The client stops using its connection (it closed it, saw it close, or
    /// moves to a new one). A session with expiry 0 ends with it.
    pub fn leave_wire(&mut self, now_ms: u64) {
        if let Some(c) = self.connecting.take() {
            // Those ghosts' effects were applied when they were taken; this CONNECT
            // becomes a ghost itself and is reasoned about when it is taken.
            self.ghosts_while_connecting.clear();
            // The broker may still take that CONNECT, later.
            self.abandoned = true;
            if let Some(wire) = self.wire {
                self.ghosts.insert(wire, c);
            }
            // Never answered: what the broker made of it is unknown, except that a
            // resume with a non-zero expiry keeps a session alive either way.
            match self.knows {
                // (unless the session could expire before the CONNECT was taken:
                // then the broker made a new one, which the client never saw)
                Knows::Alive { expiry_s }
                    if !c.clean_start && c.expiry_s > 0 && !self.may_have_expired(now_ms) =>
                {
                    self.knows = Knows::Alive {
                        expiry_s: expiry_s.min(c.expiry_s),
                    }
                }
                _ => {
                    // It may have made a session the client knows nothing of: the
                    // client's state may not be that session's, so it starts anew.
                    self.set_knows(Knows::Unknown);
                    self.force_clean = true;
                }
            }
        }
        self.dead_wire = false;
        self.maybe_dead_wire = false;
        if self.wire.take().is_some() && self.offline_since_ms.is_none() {
            self.offline_since_ms = Some(now_ms);
        }
        self.connected = false;
        self.acks.clear();
        if self.knows == (Knows::Alive { expiry_s: 0 }) {
            // The session ended with its connection, on both sides.
            self.set_knows(Knows::Ended { crash_since: false });
            self.new_epoch();
            self.stateless = true;
        }
    }

    /// The server closed the connection the client just left at `closed_ms`: its
    /// session went offline then, before the client saw it (seed 202095).
    pub fn server_closed_at(&mut self, closed_ms: u64) {
        if let Some(since) = &mut self.offline_since_ms {
            *since = (*since).min(closed_ms);
        }
    }

    pub fn crashed(&mut self, now_ms: u64) {
        self.leave_wire(now_ms);
        // What an abandoned CONNECT did before the crash may have been written.
        let ghosts: Vec<u64> = self.ghosts.keys().copied().collect();
        for wire in ghosts {
            self.ghost_resolved(wire, now_ms);
        }
        if let Knows::Ended { .. } = self.knows {
            self.knows = Knows::Ended { crash_since: true };
        }
    }

    /// The broker finished with the CONNECT on `wire` (taken or refused). If the
    /// client had left it unanswered, that CONNECT may have come after the client's
    /// later ones (connections are not ordered): unless it resumed the session the
    /// client knows is alive, the client can no longer tell which session is there.
    pub fn ghost_resolved(&mut self, wire: u64, now_ms: u64) {
        let Some(c) = self.ghosts.remove(&wire) else {
            return;
        };
        let keeps = !c.clean_start
            && c.expiry_s > 0
            && matches!(self.knows, Knows::Alive { expiry_s } if expiry_s > 0)
            && !self.may_have_expired(now_ms);
        if let (true, Knows::Alive { expiry_s }) = (keeps, self.knows) {
            // It resumed the session with its own expiry.
            self.knows = Knows::Alive {
                expiry_s: expiry_s.min(c.expiry_s),
            };
        } else {
            self.set_knows(Knows::Unknown);
            self.force_clean = true;
            if let Some(connecting) = &mut self.connecting {
                connecting.expect_present = None;
                connecting.unsure = true;
            }
        }
        if self.connecting.is_some() {
            self.ghosts_while_connecting.push(c);
        } else if self.connected {
            self.dead_wire = true;
        }
    }

    /// A CONNECT goes out on `wire`.
    pub fn connect_sent(&mut self, wire: u64, clean_start: bool, expiry_s: u32, now_ms: u64) {
        if clean_start {
            self.force_clean = false;
        }
        let expect_present = if clean_start {
            // The client drops its session state now (MQTT-3.1.2-4).
            self.new_epoch();
            self.set_knows(Knows::Unknown);
            Some(false)
        } else {
            self.expect_present(now_ms)
        };
        if expect_present.is_none() {
            self.set_knows(Knows::Unknown);
        }
        self.wire = Some(wire);
        self.ghosts_while_connecting.clear();
        self.connecting = Some(Connecting {
            clean_start,
            expiry_s,
            expect_present,
            unsure: false,
        });
    }

    /// The DISCONNECT went out (`expiry_s`: its Session Expiry property).
    pub fn disconnected(&mut self, expiry_s: Option<u32>, now_ms: u64) {
        if self.dead_wire {
            // Sent on a connection a ghost took over: the broker never reads it.
            self.leave_wire(now_ms);
            return;
        }
        if self.maybe_dead_wire && expiry_s.is_some() {
            // The new expiry may or may not have reached the session.
            self.set_knows(Knows::Unknown);
            self.force_clean = true;
        }
        if let (Knows::Alive { expiry_s: current }, Some(e)) = (self.knows, expiry_s) {
            if e <= current {
                self.knows = Knows::Alive { expiry_s: e };
            }
        }
        self.leave_wire(now_ms);
    }

    /// Answer what the application must answer, and report what the model needs.
    pub fn on_packet(&mut self, packet: Down, now_ms: u64) -> Vec<Noticed> {
        let mut noticed = Vec::new();
        match packet {
            Down::ConnAck { present } => {
                let Some(c) = self.connecting.take() else {
                    return noticed;
                };
                // The session may have expired while the CONNECT waited.
                let may_have_expired = self.may_have_expired(now_ms);
                let expect = c.expect_present.filter(|e| !*e || !may_have_expired);
                self.connected = true;
                self.offline_since_ms = None;
                match expect {
                    Some(true) if !present => noticed.push(Noticed::Violation(format!(
                        "{}: session lost: CONNACK session present = 0 for a session that must exist",
                        self.id
                    ))),
                    Some(false) if present => noticed.push(Noticed::Violation(format!(
                        "{}: CONNACK session present = 1 for a session that ended",
                        self.id
                    ))),
                    _ => {}
                }
                let ghost = std::mem::take(&mut self.abandoned);
                if present && (self.stateless || c.unsure || (ghost && may_have_expired)) {
                    // A session the client has no state for (it came back after a
                    // crash), or may not have (an abandoned CONNECT, taken after the
                    // session expired, made a new one: seed 32395): the client must
                    // close [MQTT-3.2.2-4], and starts anew.
                    self.connected = false;
                    self.force_clean = true;
                    self.set_knows(Knows::Unknown);
                    noticed.push(Noticed::MustClose);
                    return noticed;
                }
                if present {
                    // Same session: send again what is not acknowledged, in order.
                    let mut unacked: Vec<(&u16, &OutFlight)> = self.out.iter().collect();
                    unacked.sort_by_key(|(_, f)| f.order);
                    for (id, f) in unacked {
                        self.acks.push_back(match f.stage {
                            OutStage::Comp => Up::PubRel(*id),
                            _ => Up::Publish(Pub {
                                dup: true,
                                ..f.publish.clone()
                            }),
                        });
                    }
                } else if !c.clean_start {
                    self.new_epoch();
                }
                if !present {
                    self.stateless = false;
                }
                self.knows = Knows::Alive {
                    expiry_s: c.expiry_s,
                };
                // A ghost taken while this CONNECT waited may have been taken after
                // it (seed 16240): it then took this session over, resuming it only
                // if it still existed then (this CONNECT's expiry is not 0; if it is,
                // the session ended with this connection and the ghost made a new
                // one) and only if the ghost itself resumed with a non-zero expiry.
                self.maybe_dead_wire = !self.ghosts_while_connecting.is_empty();
                for g in std::mem::take(&mut self.ghosts_while_connecting) {
                    match self.knows {
                        Knows::Alive { expiry_s }
                            if expiry_s > 0 && !g.clean_start && g.expiry_s > 0 =>
                        {
                            self.knows = Knows::Alive {
                                expiry_s: expiry_s.min(g.expiry_s),
                            };
                        }
                        _ => {
                            self.set_knows(Knows::Unknown);
                            self.force_clean = true;
                        }
                    }
                }
            }
            Down::Publish(p) => self.on_publish(p, &mut noticed),
            Down::PubRel(id) => {
                self.in_qos2.remove(&id);
                self.acks.push_back(Up::PubComp(id));
            }
            Down::PubAck(id) => {
                if let Some(f) = self.out.get(&id).filter(|f| f.stage == OutStage::Ack) {
                    // PUBACKs come in the order of their PUBLISHes [MQTT-4.6.0-2].
                    let order = f.order;
                    if let Some((_, earlier)) = self
                        .out
                        .iter()
                        .find(|(_, e)| e.stage == OutStage::Ack && e.order < order)
                    {
                        noticed.push(Noticed::OutOfOrderAck(format!(
                            "{}: PUBACK for {:?} before the PUBACK for the earlier {:?}",
                            self.id, f.publish.payload, earlier.publish.payload
                        )));
                    }
                }
                if self.out.get(&id).is_some_and(|f| f.stage == OutStage::Ack) {
                    if let Some(f) = self.out.remove(&id) {
                        noticed.push(Noticed::Acked(f.publish.payload));
                    }
                }
            }
            Down::PubRec(id) => {
                if let Some(f) = self.out.get_mut(&id) {
                    if f.stage == OutStage::Rec {
                        f.stage = OutStage::Comp;
                        noticed.push(Noticed::Acked(f.publish.payload.clone()));
                    }
                    if f.stage == OutStage::Comp {
                        self.acks.push_back(Up::PubRel(id));
                    }
                }
            }
            Down::PubComp(id) => {
                if self.out.get(&id).is_some_and(|f| f.stage == OutStage::Comp) {
                    self.out.remove(&id);
                }
            }
            Down::SubAck { id, granted } => {
                if let Some((filter, Some(_))) = self.sub_ops.remove(&id) {
                    if let Some(qos) = QoS::from_u8(granted) {
                        self.subs.insert(filter, qos);
                    }
                }
            }
            Down::UnsubAck(id) => {
                if let Some((filter, None)) = self.sub_ops.remove(&id) {
                    self.subs.remove(&filter);
                }
            }
            Down::Disconnect => self.leave_wire(now_ms),
            // The connection closes after it; the CONNECT stays unanswered.
            Down::Refused => {}
        }
        noticed
    }

    fn on_publish(&mut self, p: Pub, noticed: &mut Vec<Noticed>) {
        let id = p.id.unwrap_or(0);
        // Retained messages sent on subscribe are copies, one per subscribe: the
        // checks below are about routed messages.
        let tracked = !p.retain && !p.payload.is_empty();
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                if tracked {
                    self.deliver(&p, noticed);
                }
                self.acks.push_back(Up::PubAck(id));
            }
            QoS::ExactlyOnce => {
                if tracked {
                    if !p.dup && self.qos2_seen.contains(&p.payload) {
                        noticed.push(Noticed::Violation(format!(
                            "{}: QoS 2 message {:?} sent again without DUP (packet id {id})",
                            self.id, p.payload
                        )));
                    }
                    self.qos2_seen.insert(p.payload.clone());
                }
                if self.in_qos2.insert(id) && tracked {
                    if self.got.contains_key(&p.payload) {
                        noticed.push(Noticed::Violation(format!(
                            "{}: QoS 2 message {:?} delivered twice (packet id {id}, dup {})",
                            self.id, p.payload, p.dup
                        )));
                    }
                    self.deliver(&p, noticed);
                }
                self.acks.push_back(Up::PubRec(id));
            }
        }
    }

    fn deliver(&mut self, p: &Pub, noticed: &mut Vec<Noticed>) {
        let first = !self.got.contains_key(&p.payload);
        *self.got.entry(p.payload.clone()).or_default() += 1;
        if !first || p.dup {
            return;
        }
        // Order: first deliveries without DUP from one publisher come in the order
        // it published them (wills have their own counter, and are left out).
        let Some((from, n)) = parse_payload(&p.payload) else {
            return;
        };
        let last = self.last_from.entry(from.clone()).or_insert(0);
        if n < *last {
            noticed.push(Noticed::OutOfOrder(
                p.payload.clone(),
                format!(
                    "{}: message {from}#{n} arrived after {from}#{} (per-publisher order)",
                    self.id, *last
                ),
            ));
        }
        *last = (*last).max(n);
    }
}

/// `client|n` of a published payload; None for wills and anything else.
pub fn parse_payload(payload: &[u8]) -> Option<(String, u64)> {
    let s = std::str::from_utf8(payload).ok()?;
    let (from, n) = s.split_once('|')?;
    if from == "will" {
        return None;
    }
    Some((from.to_owned(), n.parse().ok()?))
}
