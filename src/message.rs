//! A routed application message, shared by every subscriber that gets it (`Arc`), and
//! its conversion to and from the stored form.
//!
//! Only the v5 properties that travel with a message are kept (payload format, content
//! type, response topic, correlation data, user properties); expiry is kept as an
//! absolute deadline so the countdown continues while the message waits in a queue.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use quay_storage::StoredMessage;

use crate::codec::{Properties, QoS};

pub type ClientId = Arc<str>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Publisher's client id ("" for wills of anonymous or system messages).
    pub from: ClientId,
    pub publish_ms: u64,
    /// Absolute Unix ms after which the message is dropped; 0 = never.
    pub expiry_ms: u64,
    /// Pass-through properties (see module docs).
    pub properties: Properties,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Message {
    pub fn topic_str(&self) -> &str {
        // The decoder validated UTF-8; stored topics were validated when published.
        std::str::from_utf8(&self.topic).unwrap_or("")
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expiry_ms != 0 && now_ms >= self.expiry_ms
    }

    /// Seconds left before expiry, rounded up, for the Message Expiry Interval property
    /// sent to a subscriber; `None` when the message does not expire.
    pub fn remaining_expiry_s(&self, now_ms: u64) -> Option<u32> {
        if self.expiry_ms == 0 {
            return None;
        }
        let left = self.expiry_ms.saturating_sub(now_ms);
        Some(left.div_ceil(1000).min(u32::MAX as u64) as u32)
    }

    /// Keep only the properties that travel with the message.
    pub fn pass_through(props: &Properties) -> Properties {
        Properties {
            payload_format_indicator: props.payload_format_indicator,
            content_type: props.content_type.clone(),
            response_topic: props.response_topic.clone(),
            correlation_data: props.correlation_data.clone(),
            user_properties: props.user_properties.clone(),
            ..Properties::default()
        }
    }

    pub fn to_stored(&self) -> StoredMessage {
        StoredMessage {
            publish_ms: self.publish_ms,
            expiry_ms: self.expiry_ms,
            qos: self.qos as u8,
            retain: self.retain,
            from: self.from.clone(),
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            properties: encode_properties(&self.properties),
        }
    }

    pub fn from_stored(stored: StoredMessage) -> Message {
        Message {
            topic: stored.topic,
            payload: stored.payload,
            qos: QoS::from_u8(stored.qos).unwrap_or(QoS::AtMostOnce),
            retain: stored.retain,
            from: stored.from,
            publish_ms: stored.publish_ms,
            expiry_ms: stored.expiry_ms,
            properties: decode_properties(stored.properties),
        }
    }
}

const P_FORMAT: u8 = 1;
const P_CONTENT_TYPE: u8 = 2;
const P_RESPONSE_TOPIC: u8 = 3;
const P_CORRELATION: u8 = 4;
const P_USER: u8 = 5;

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn encode_properties(p: &Properties) -> Bytes {
    let mut out = BytesMut::new();
    if let Some(f) = p.payload_format_indicator {
        out.put_u8(P_FORMAT);
        out.put_u8(f);
    }
    if let Some(ct) = &p.content_type {
        out.put_u8(P_CONTENT_TYPE);
        put_bytes(&mut out, ct.as_bytes());
    }
    if let Some(rt) = &p.response_topic {
        out.put_u8(P_RESPONSE_TOPIC);
        put_bytes(&mut out, rt.as_bytes());
    }
    if let Some(cd) = &p.correlation_data {
        out.put_u8(P_CORRELATION);
        put_bytes(&mut out, cd);
    }
    for (k, v) in &p.user_properties {
        out.put_u8(P_USER);
        put_bytes(&mut out, k.as_bytes());
        put_bytes(&mut out, v.as_bytes());
    }
    out.freeze()
}

/// Lenient by design: stored bytes were written by `encode_properties`; a record that
/// does not parse loses its properties, never the message.
fn decode_properties(mut b: Bytes) -> Properties {
    fn take(b: &mut Bytes) -> Option<Bytes> {
        if b.remaining() < 4 {
            return None;
        }
        let len = b.get_u32() as usize;
        (b.remaining() >= len).then(|| b.split_to(len))
    }
    fn text(b: &mut Bytes) -> Option<String> {
        String::from_utf8(take(b)?.to_vec()).ok()
    }
    let mut p = Properties::default();
    while b.has_remaining() {
        let ok = match b.get_u8() {
            P_FORMAT if b.has_remaining() => {
                p.payload_format_indicator = Some(b.get_u8());
                true
            }
            P_CONTENT_TYPE => text(&mut b).map(|v| p.content_type = Some(v)).is_some(),
            P_RESPONSE_TOPIC => text(&mut b).map(|v| p.response_topic = Some(v)).is_some(),
            P_CORRELATION => take(&mut b).map(|v| p.correlation_data = Some(v)).is_some(),
            P_USER => match (text(&mut b), text(&mut b)) {
                (Some(k), Some(v)) => {
                    p.user_properties.push((k, v));
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !ok {
            tracing::warn!("stored message properties are malformed; dropping them");
            return Properties::default();
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_roundtrip_keeps_pass_through_properties() {
        let msg = Message {
            topic: Bytes::from_static(b"a/b"),
            payload: Bytes::from_static(b"payload"),
            qos: QoS::ExactlyOnce,
            retain: true,
            from: Arc::from("c1"),
            publish_ms: 10,
            expiry_ms: 5000,
            properties: Properties {
                payload_format_indicator: Some(1),
                content_type: Some("text/plain".into()),
                response_topic: Some("reply/to".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                ..Properties::default()
            },
        };
        assert_eq!(Message::from_stored(msg.to_stored()), msg);
    }

    #[test]
    fn expiry_counts_down() {
        let msg = Message {
            topic: Bytes::from_static(b"t"),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            from: Arc::from(""),
            publish_ms: 0,
            expiry_ms: 10_000,
            properties: Properties::default(),
        };
        assert_eq!(msg.remaining_expiry_s(0), Some(10));
        assert_eq!(msg.remaining_expiry_s(8_500), Some(2));
        assert!(!msg.is_expired(9_999));
        assert!(msg.is_expired(10_000));
    }
}
