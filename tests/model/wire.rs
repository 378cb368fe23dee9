//! What travels between a simulated client and the broker: MQTT packets reduced to
//! what the model needs (v5 semantics), in two in-memory queues per connection, like
//! a TCP stream in each direction. The broker reads and writes real MQTT 5 bytes:
//! `encode_up` and `decode_down` translate at its end.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use quay::codec::{
    self, Connect, Disconnect, LastWill, Packet, Properties, ProtocolVersion, PubResp, Publish,
    QoS, ReasonCode, RetainHandling, Subscribe, SubscriptionOptions, Unsubscribe,
};

/// A will the client registers in CONNECT (topic `will/<client>`).
#[derive(Debug, Clone)]
pub struct WillSpec {
    pub qos: QoS,
    pub delay_s: u32,
    pub payload: Bytes,
}

/// Client to server.
#[derive(Debug, Clone)]
pub enum Up {
    Connect {
        clean_start: bool,
        expiry_s: u32,
        will: Option<WillSpec>,
    },
    Publish(Pub),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        id: u16,
        filter: String,
        qos: QoS,
    },
    Unsubscribe {
        id: u16,
        filter: String,
    },
    /// DISCONNECT, with a Session Expiry Interval property or none.
    Disconnect {
        expiry_s: Option<u32>,
    },
    /// The stream ended without DISCONNECT (network loss).
    Eof,
}

/// A PUBLISH either way.
#[derive(Debug, Clone)]
pub struct Pub {
    pub id: Option<u16>,
    pub qos: QoS,
    pub dup: bool,
    pub retain: bool,
    pub topic: String,
    pub payload: Bytes,
}

/// Server to client.
#[derive(Debug, Clone)]
pub enum Down {
    ConnAck {
        present: bool,
    },
    Publish(Pub),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    SubAck {
        id: u16,
        granted: u8,
    },
    UnsubAck(u16),
    /// DISCONNECT from the server (takeover).
    Disconnect,
    /// CONNACK refusing the connection (the store was unavailable).
    Refused,
}

/// One connection's two streams.
#[derive(Debug, Default)]
pub struct Wire {
    pub up: VecDeque<Up>,
    pub down: VecDeque<Down>,
    /// The server closed it (after its last packets in `down`).
    pub server_closed: bool,
    /// When (simulated ms): the session it held went offline then, before its
    /// client can see it.
    pub closed_ms: u64,
}

/// The MQTT 5 packet `up` is on the wire (`client`'s, for CONNECT); None for `Eof`.
pub fn encode_up(up: &Up, client: &str) -> Option<BytesMut> {
    let resp = |packet_id: u16| PubResp {
        packet_id,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    };
    let packet = match up {
        Up::Connect {
            clean_start,
            expiry_s,
            will,
        } => Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V5,
            clean_start: *clean_start,
            keep_alive: 0,
            properties: Properties {
                session_expiry_interval: (*expiry_s > 0).then_some(*expiry_s),
                ..Properties::default()
            },
            client_id: client.to_owned(),
            will: will.as_ref().map(|w| LastWill {
                topic: Bytes::from(format!("will/{client}")),
                payload: w.payload.clone(),
                qos: w.qos,
                retain: false,
                properties: Properties {
                    will_delay_interval: (w.delay_s > 0).then_some(w.delay_s),
                    ..Properties::default()
                },
            }),
            username: None,
            password: None,
        })),
        Up::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: p.qos,
            retain: p.retain,
            topic: Bytes::from(p.topic.clone()),
            packet_id: p.id,
            properties: Properties::default(),
            payload: p.payload.clone(),
        }),
        Up::PubAck(id) => Packet::PubAck(resp(*id)),
        Up::PubRec(id) => Packet::PubRec(resp(*id)),
        Up::PubRel(id) => Packet::PubRel(resp(*id)),
        Up::PubComp(id) => Packet::PubComp(resp(*id)),
        Up::Subscribe { id, filter, qos } => Packet::Subscribe(Subscribe {
            packet_id: *id,
            properties: Properties::default(),
            filters: vec![(
                filter.clone(),
                SubscriptionOptions {
                    qos: *qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendAlways,
                },
            )],
        }),
        Up::Unsubscribe { id, filter } => Packet::Unsubscribe(Unsubscribe {
            packet_id: *id,
            properties: Properties::default(),
            filters: vec![filter.clone()],
        }),
        Up::Disconnect { expiry_s } => Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: Properties {
                session_expiry_interval: *expiry_s,
                ..Properties::default()
            },
        }),
        Up::Eof => return None,
    };
    let mut buf = BytesMut::new();
    codec::encode(&packet, ProtocolVersion::V5, &mut buf).expect("a client packet encodes");
    Some(buf)
}

/// What the broker wrote, as the client reads it; Err names what no correct broker
/// sends this client (an error where none may happen, or bytes that do not decode).
pub fn decode_down(buf: &mut BytesMut) -> Result<Vec<Down>, String> {
    let mut out = Vec::new();
    loop {
        let packet = match codec::decode(buf, ProtocolVersion::V5, usize::MAX) {
            Ok(Some(p)) => p,
            Ok(None) if buf.is_empty() => return Ok(out),
            Ok(None) => return Err(format!("{} bytes of a partial packet", buf.len())),
            Err(e) => return Err(format!("undecodable bytes: {e}")),
        };
        let refused =
            |what: &str, reason: ReasonCode| Err(format!("{what} with reason {:#04x}", reason.0));
        out.push(match packet {
            Packet::ConnAck(a) if a.reason == ReasonCode::Success => Down::ConnAck {
                present: a.session_present,
            },
            // Refused: only when a store read failed (the model fails some).
            Packet::ConnAck(a) if a.reason == ReasonCode::SERVER_UNAVAILABLE => Down::Refused,
            Packet::ConnAck(a) => return refused("CONNACK", a.reason),
            Packet::Publish(p) => Down::Publish(Pub {
                id: p.packet_id,
                qos: p.qos,
                dup: p.dup,
                retain: p.retain,
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                payload: p.payload,
            }),
            // Our client never sends what the broker may refuse.
            Packet::PubAck(r) if r.reason.is_error() => return refused("PUBACK", r.reason),
            Packet::PubRec(r) if r.reason.is_error() => return refused("PUBREC", r.reason),
            Packet::PubAck(r) => Down::PubAck(r.packet_id),
            Packet::PubRec(r) => Down::PubRec(r.packet_id),
            // 0x92 (id not found) is fine: an id released before a crash or takeover.
            Packet::PubRel(r) => Down::PubRel(r.packet_id),
            Packet::PubComp(r) => Down::PubComp(r.packet_id),
            Packet::SubAck(s) => Down::SubAck {
                id: s.packet_id,
                granted: s.reasons.first().map_or(0x80, |r| r.0),
            },
            Packet::UnsubAck(u) => Down::UnsubAck(u.packet_id),
            Packet::Disconnect(d) if d.reason == ReasonCode::SESSION_TAKEN_OVER => Down::Disconnect,
            Packet::Disconnect(d) => return refused("DISCONNECT", d.reason),
            other => return Err(format!("unexpected {}", other.name())),
        });
    }
}
