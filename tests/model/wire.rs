//! What travels between a simulated client and the simulated broker: MQTT packets
//! reduced to what the model needs (v5 semantics), in two in-memory queues per
//! connection, like a TCP stream in each direction.

use std::collections::VecDeque;

use bytes::Bytes;
use quay::codec::QoS;

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
    /// DISCONNECT from the server (takeover, protocol error).
    Disconnect,
}

/// One connection's two streams.
#[derive(Debug, Default)]
pub struct Wire {
    pub up: VecDeque<Up>,
    pub down: VecDeque<Down>,
    /// The server closed it (after its last packets in `down`).
    pub server_closed: bool,
}
