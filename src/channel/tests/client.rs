//! A client as the spec wants it, and the checks on every packet a channel sends it
//! that need only the client's own state: packet ids never reused while in flight,
//! DUP only on a re-send, Receive Maximum, topic aliases, PUBACK/PUBREC in PUBLISH
//! order per QoS, one PUBREL per PUBREC, SUBACK and UNSUBACK as asked. What needs
//! the broker's state (QoS, who gets what, wills) is checked in `world`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use crate::codec::{
    ConnAck, Packet, Properties, ProtocolVersion, PubResp, Publish, QoS, ReasonCode,
};

/// A message's identity, carried as its payload: `('p', publisher, n)` for the
/// publishers' messages (n counts up per publisher), `('w', client, connection)` for
/// wills.
pub(super) type Key = (char, usize, u32);

pub(super) fn payload(key: Key) -> Bytes {
    Bytes::from(format!("{}{}:{}", key.0, key.1, key.2))
}

pub(super) fn parse_key(payload: &[u8]) -> Option<Key> {
    let s = std::str::from_utf8(payload).ok()?;
    let kind = s.chars().next()?;
    let (who, n) = s.get(1..)?.split_once(':')?;
    Some((kind, who.parse().ok()?, n.parse().ok()?))
}

/// A PUBLISH as the client application sees it.
#[derive(Debug)]
pub(super) struct Arrival {
    pub key: Key,
    pub topic: Bytes,
    pub qos: QoS,
    pub retain: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutStage {
    Ack,
    Rec,
    Comp,
}

/// One of our QoS 1/2 PUBLISHes, until its flow completes.
struct OutPub {
    /// With its full topic; an alias is chosen each time it is sent.
    publish: Publish,
    stage: OutStage,
    /// Sent order (ids wrap), for resends.
    order: u64,
    /// v5: the reason the first PUBACK/PUBREC must carry.
    reason: Option<ReasonCode>,
}

/// A QoS 1/2 delivery, until we completed it.
struct InPub {
    key: Key,
    qos: QoS,
    /// PUBREC sent (on any connection) / on this connection.
    rec_sent: bool,
    rec_now: bool,
    /// PUBREL received.
    released: bool,
    /// Received on this connection: counts against our Receive Maximum.
    this_conn: bool,
}

/// Counts of protocol situations a client met: the coverage test checks that the
/// random steps reach each rule.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Seen {
    /// DUP resends of a delivery (after a reconnect or a retry).
    pub dup_resends: u64,
    /// Deliveries that named their topic by an alias alone.
    pub alias_only: u64,
    /// Deliveries that filled our Receive Maximum (v5).
    pub receive_max_full: u64,
}

/// Parameters of one CONNECT.
#[derive(Debug, Clone)]
pub(super) struct ConnectOpts {
    pub clean: bool,
    pub v5: bool,
    /// Session Expiry Interval asked (v5).
    pub expiry_s: u32,
    pub receive_max: u16,
    pub alias_max: u16,
    pub keep_alive: u16,
    /// Whether the client sends PINGREQ while time passes.
    pub pinging: bool,
    /// A will, with its Will Delay Interval (v5).
    pub will_delay_s: Option<u32>,
}

pub(super) struct Client {
    pub id: String,
    pub online: bool,
    pub version: ProtocolVersion,
    pub keep_alive: u16,
    pub pinging: bool,
    /// When our last bytes reached the channel.
    pub last_sent: Instant,
    /// Acks for deliveries wait in `owed` instead of going out.
    pub withhold: bool,
    pub outbox: VecDeque<Packet>,
    /// What this client saw (for the coverage test).
    pub seen: Seen,
    owed: Vec<Packet>,
    receive_max: u16,
    alias_max: u16,
    server_receive_max: u16,
    aliases_in: HashMap<u16, Bytes>,
    aliases_out: HashMap<Bytes, u16>,
    acks_q1: VecDeque<u16>,
    acks_q2: VecDeque<u16>,
    /// SUBSCRIBE / UNSUBSCRIBE ids and the reasons their ack must carry.
    acks_sub: BTreeMap<u16, Vec<ReasonCode>>,
    pings: u32,
    // Session state: kept while the server keeps the session.
    next_id: u16,
    sent: u64,
    out_pub: BTreeMap<u16, OutPub>,
    in_pub: BTreeMap<u16, InPub>,
}

impl Client {
    pub fn new(id: String, now: Instant) -> Client {
        Client {
            id,
            online: false,
            version: ProtocolVersion::V5,
            keep_alive: 0,
            pinging: false,
            last_sent: now,
            withhold: false,
            outbox: VecDeque::new(),
            seen: Seen::default(),
            owed: Vec::new(),
            receive_max: u16::MAX,
            alias_max: 0,
            server_receive_max: u16::MAX,
            aliases_in: HashMap::new(),
            aliases_out: HashMap::new(),
            acks_q1: VecDeque::new(),
            acks_q2: VecDeque::new(),
            acks_sub: BTreeMap::new(),
            pings: 0,
            next_id: 1,
            sent: 0,
            out_pub: BTreeMap::new(),
            in_pub: BTreeMap::new(),
        }
    }

    /// The CONNECT for `opts` (the will's payload is `will`).
    pub fn connect_packet(&self, opts: &ConnectOpts, will: Option<Bytes>) -> crate::codec::Connect {
        let v5 = opts.v5;
        let mut properties = Properties::default();
        if v5 {
            properties.session_expiry_interval = Some(opts.expiry_s);
            properties.receive_maximum = Some(opts.receive_max);
            properties.topic_alias_maximum = Some(opts.alias_max);
        }
        let will = will.map(|payload| {
            let mut properties = Properties::default();
            if v5 {
                properties.will_delay_interval = opts.will_delay_s;
            }
            crate::codec::LastWill {
                topic: Bytes::from(format!("will/{}", self.id)),
                payload,
                qos: QoS::AtLeastOnce,
                retain: false,
                properties,
            }
        });
        crate::codec::Connect {
            protocol: if v5 {
                ProtocolVersion::V5
            } else {
                ProtocolVersion::V3_1_1
            },
            clean_start: opts.clean,
            keep_alive: opts.keep_alive,
            properties,
            client_id: self.id.clone(),
            will,
            username: None,
            password: None,
        }
    }

    /// CONNACK arrived: drop our session state unless the server kept it, then
    /// resend what is unfinished with its original ids [MQTT-4.4.0-1].
    pub fn connected(&mut self, opts: &ConnectOpts, ack: &ConnAck, now: Instant) {
        self.online = true;
        self.version = if opts.v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V3_1_1
        };
        self.keep_alive = ack.properties.server_keep_alive.unwrap_or(opts.keep_alive);
        self.pinging = opts.pinging;
        self.last_sent = now;
        self.receive_max = if opts.v5 { opts.receive_max } else { u16::MAX };
        self.alias_max = if opts.v5 { opts.alias_max } else { 0 };
        self.server_receive_max = ack.properties.receive_maximum.unwrap_or(u16::MAX);
        if !ack.session_present {
            self.out_pub.clear();
            self.in_pub.clear();
        }
        let mut unfinished: Vec<(u64, u16)> =
            self.out_pub.iter().map(|(id, o)| (o.order, *id)).collect();
        unfinished.sort_unstable();
        for (_, id) in unfinished {
            let Some(o) = self.out_pub.get(&id) else {
                continue;
            };
            let packet = match o.stage {
                OutStage::Ack | OutStage::Rec => {
                    let mut p = o.publish.clone();
                    p.dup = true;
                    self.with_alias(p)
                }
                OutStage::Comp => Packet::PubRel(PubResp::new(id)),
            };
            self.outbox.push_back(packet);
        }
    }

    /// The connection is gone: what belonged to it goes; the session state stays.
    pub fn disconnected(&mut self) {
        self.online = false;
        self.outbox.clear();
        self.owed.clear();
        self.aliases_in.clear();
        self.aliases_out.clear();
        self.acks_q1.clear();
        self.acks_q2.clear();
        self.acks_sub.clear();
        self.pings = 0;
        for e in self.in_pub.values_mut() {
            e.this_conn = false;
            e.rec_now = false;
        }
    }

    /// Room for another QoS 1/2 PUBLISH under the server's Receive Maximum.
    pub fn may_publish(&self) -> bool {
        self.online && self.out_pub.len() < usize::from(self.server_receive_max.min(8))
    }

    /// Queue a PUBLISH of `key` (QoS 1/2 take a free packet id). Returns its id.
    pub fn publish(
        &mut self,
        topic: &str,
        key: Key,
        qos: QoS,
        retain: bool,
        reason: Option<ReasonCode>,
    ) -> Option<u16> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.free_id());
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic: Bytes::from(topic.to_owned()),
            packet_id,
            properties: Properties::default(),
            payload: payload(key),
        };
        if let Some(id) = packet_id {
            self.sent += 1;
            self.out_pub.insert(
                id,
                OutPub {
                    publish: publish.clone(),
                    stage: if qos == QoS::AtLeastOnce {
                        OutStage::Ack
                    } else {
                        OutStage::Rec
                    },
                    order: self.sent,
                    reason,
                },
            );
        }
        let packet = self.with_alias(publish);
        self.outbox.push_back(packet);
        packet_id
    }

    /// Set the expected first-ack reason of a queued PUBLISH (known once routed).
    pub fn expect_reason(&mut self, packet_id: u16, reason: Option<ReasonCode>) {
        if let Some(o) = self.out_pub.get_mut(&packet_id) {
            o.reason = reason;
        }
    }

    /// v5: two topic aliases of our own, set on first use, then the alias alone.
    fn with_alias(&mut self, mut p: Publish) -> Packet {
        if self.version.is_v5() {
            match self.aliases_out.get(&p.topic) {
                Some(alias) => {
                    p.properties.topic_alias = Some(*alias);
                    p.topic = Bytes::new();
                }
                None if self.aliases_out.len() < 2 => {
                    let alias = self.aliases_out.len() as u16 + 1;
                    self.aliases_out.insert(p.topic.clone(), alias);
                    p.properties.topic_alias = Some(alias);
                }
                None => {}
            }
        }
        Packet::Publish(p)
    }

    fn free_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.out_pub.contains_key(&id) {
                return id;
            }
        }
    }

    pub fn subscribe_sent(&mut self, packet_id: u16, reasons: Vec<ReasonCode>) {
        self.acks_sub.insert(packet_id, reasons);
    }

    /// Send the acks withheld so far.
    pub fn release_owed(&mut self) {
        self.outbox.extend(self.owed.drain(..));
    }

    /// An ack for a delivery: out now, or owed while acks are withheld.
    fn ack(&mut self, packet: Packet) {
        if self.withhold {
            self.owed.push(packet);
        } else {
            self.outbox.push_back(packet);
        }
    }

    /// `packet` is leaving for the channel now: what it changes in our state.
    pub fn on_sent(&mut self, packet: &Packet, now: Instant) {
        self.last_sent = now;
        match packet {
            Packet::Publish(p) => {
                if let Some(id) = p.packet_id {
                    match p.qos {
                        QoS::AtLeastOnce => self.acks_q1.push_back(id),
                        _ => self.acks_q2.push_back(id),
                    }
                }
            }
            Packet::PubAck(r)
                if self
                    .in_pub
                    .get(&r.packet_id)
                    .is_some_and(|e| e.qos == QoS::AtLeastOnce) =>
            {
                self.in_pub.remove(&r.packet_id);
            }
            Packet::PubRec(r) => {
                if let Some(e) = self.in_pub.get_mut(&r.packet_id) {
                    e.rec_sent = true;
                    e.rec_now = true;
                }
            }
            Packet::PubComp(r) if self.in_pub.get(&r.packet_id).is_some_and(|e| e.released) => {
                self.in_pub.remove(&r.packet_id);
            }
            Packet::PingReq => self.pings += 1,
            _ => {}
        }
    }

    /// Waiting for an answer the channel owes: a pump must not stop before it comes.
    pub fn waiting(&self) -> Option<String> {
        if !self.online {
            return None;
        }
        if let Some((id, o)) = self.out_pub.iter().next() {
            return Some(format!("the ack of our PUBLISH {id} ({:?})", o.stage));
        }
        if let Some(id) = self.acks_sub.keys().next() {
            return Some(format!("SUBACK/UNSUBACK {id}"));
        }
        if self.pings > 0 {
            return Some("PINGRESP".into());
        }
        self.in_pub
            .iter()
            .find(|(_, e)| e.rec_now && !e.released)
            .map(|(id, _)| format!("PUBREL {id} after our PUBREC"))
    }

    /// A packet from the channel. Returns what the application gets, if anything.
    pub fn on_packet(&mut self, packet: Packet) -> Result<Option<Arrival>, String> {
        match packet {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(r) => {
                self.first_ack(r, QoS::AtLeastOnce)?;
                Ok(None)
            }
            Packet::PubRec(r) => {
                let id = r.packet_id;
                self.first_ack(r, QoS::ExactlyOnce)?;
                self.outbox.push_back(Packet::PubRel(PubResp::new(id)));
                Ok(None)
            }
            Packet::PubComp(r) => {
                match self.out_pub.get(&r.packet_id) {
                    Some(o) if o.stage == OutStage::Comp && r.reason == ReasonCode::Success => {
                        self.out_pub.remove(&r.packet_id);
                    }
                    _ => return Err(format!("unexpected {r:?}: no PUBREL of ours waits for it")),
                }
                Ok(None)
            }
            Packet::PubRel(r) => {
                let id = r.packet_id;
                match self.in_pub.get_mut(&id) {
                    Some(e) if e.qos == QoS::ExactlyOnce && e.rec_sent => e.released = true,
                    _ => return Err(format!("PUBREL {id} without a PUBREC of ours")),
                }
                self.ack(Packet::PubComp(PubResp::new(id)));
                Ok(None)
            }
            Packet::SubAck(a) => {
                self.sub_ack(a.packet_id, &a.reasons)?;
                Ok(None)
            }
            Packet::UnsubAck(a) => {
                self.sub_ack(a.packet_id, &a.reasons)?;
                Ok(None)
            }
            Packet::PingResp => {
                if self.pings == 0 {
                    return Err("PINGRESP without PINGREQ".into());
                }
                self.pings -= 1;
                Ok(None)
            }
            other => Err(format!("unexpected {} from the channel", other.name())),
        }
    }

    fn sub_ack(&mut self, id: u16, reasons: &[ReasonCode]) -> Result<(), String> {
        let Some(expected) = self.acks_sub.remove(&id) else {
            return Err(format!("SUBACK/UNSUBACK {id} nobody asked for"));
        };
        // v3 UNSUBACK has no reasons.
        if reasons.is_empty() && !self.version.is_v5() {
            return Ok(());
        }
        if reasons != expected.as_slice() {
            return Err(format!(
                "SUBACK/UNSUBACK {id} says {reasons:?}, expected {expected:?}"
            ));
        }
        Ok(())
    }

    /// PUBACK / PUBREC: for a PUBLISH of ours, in PUBLISH order per QoS
    /// [MQTT-4.6.0-2, -3], with the reason routing predicted.
    fn first_ack(&mut self, r: PubResp, qos: QoS) -> Result<(), String> {
        let id = r.packet_id;
        let (queue, stage) = match qos {
            QoS::AtLeastOnce => (&mut self.acks_q1, OutStage::Ack),
            _ => (&mut self.acks_q2, OutStage::Rec),
        };
        let o = match self.out_pub.get_mut(&id) {
            Some(o) if o.stage == stage => o,
            _ => {
                return Err(format!(
                    "{qos:?} ack {r:?} for no PUBLISH of ours awaiting it"
                ))
            }
        };
        if queue.front() != Some(&id) {
            return Err(format!(
                "{qos:?} ack for {id} out of PUBLISH order (next expected: {:?})",
                queue.front()
            ));
        }
        queue.pop_front();
        if r.reason.is_error() {
            return Err(format!("{qos:?} ack {r:?} refuses our PUBLISH"));
        }
        if let (Some(reason), true) = (o.reason, self.version.is_v5()) {
            if r.reason != reason {
                return Err(format!(
                    "ack of {id} says {:?}, routing says {reason:?}",
                    r.reason
                ));
            }
        }
        if qos == QoS::AtLeastOnce {
            self.out_pub.remove(&id);
        } else {
            o.stage = OutStage::Comp;
        }
        Ok(())
    }

    fn on_publish(&mut self, p: Publish) -> Result<Option<Arrival>, String> {
        if p.qos == QoS::AtMostOnce && p.dup {
            return Err("DUP set on a QoS 0 PUBLISH [MQTT-3.3.1-2]".into());
        }
        let topic = self.resolve_topic(&p)?;
        let key =
            parse_key(&p.payload).ok_or_else(|| format!("unknown payload {:?}", p.payload))?;
        let arrival = Arrival {
            key,
            topic,
            qos: p.qos,
            retain: p.retain,
        };
        let Some(id) = p.packet_id else {
            return Ok(Some(arrival));
        };
        let first = match self.in_pub.get_mut(&id) {
            None => {
                if p.dup {
                    return Err(format!(
                        "PUBLISH {id} ({key:?}) has DUP set but was never sent before"
                    ));
                }
                self.in_pub.insert(
                    id,
                    InPub {
                        key,
                        qos: p.qos,
                        rec_sent: false,
                        rec_now: false,
                        released: false,
                        this_conn: true,
                    },
                );
                true
            }
            Some(e) => {
                if !p.dup {
                    return Err(format!(
                        "packet id {id} reused while in flight (holds {:?}, got {key:?} without DUP)",
                        e.key
                    ));
                }
                if e.key != key || e.qos != p.qos {
                    return Err(format!(
                        "DUP resend of {id} carries {key:?} {:?}, first sent {:?} {:?}",
                        p.qos, e.key, e.qos
                    ));
                }
                if e.released {
                    return Err(format!("PUBLISH {id} resent after its PUBREL"));
                }
                e.this_conn = true;
                self.seen.dup_resends += 1;
                false
            }
        };
        let in_flight = self.in_pub.values().filter(|e| e.this_conn).count();
        if self.version.is_v5() && in_flight == usize::from(self.receive_max) {
            self.seen.receive_max_full += 1;
        }
        if in_flight > usize::from(self.receive_max) {
            return Err(format!(
                "{in_flight} QoS 1/2 PUBLISHes unacknowledged, above our Receive Maximum {}",
                self.receive_max
            ));
        }
        self.ack(match p.qos {
            QoS::AtLeastOnce => Packet::PubAck(PubResp::new(id)),
            _ => Packet::PubRec(PubResp::new(id)),
        });
        Ok(first.then_some(arrival))
    }

    /// The topic of a PUBLISH: its own, or the one its alias was last set to.
    fn resolve_topic(&mut self, p: &Publish) -> Result<Bytes, String> {
        let Some(alias) = p.properties.topic_alias else {
            if p.topic.is_empty() {
                return Err("PUBLISH without topic or alias".into());
            }
            return Ok(p.topic.clone());
        };
        if !self.version.is_v5() || alias == 0 || alias > self.alias_max {
            return Err(format!(
                "topic alias {alias} outside our Topic Alias Maximum {}",
                self.alias_max
            ));
        }
        if p.topic.is_empty() {
            self.seen.alias_only += 1;
            return self
                .aliases_in
                .get(&alias)
                .cloned()
                .ok_or_else(|| format!("topic alias {alias} used before it was set"));
        }
        self.aliases_in.insert(alias, p.topic.clone());
        Ok(p.topic.clone())
    }
}
