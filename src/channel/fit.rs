//! Fitting CONNACK and DISCONNECT into the client's Maximum Packet Size.
//!
//! A v5 client may announce a Maximum Packet Size, and the server must not send it a
//! larger packet [MQTT-3.1.2-24]. CONNACK and our DISCONNECT carry optional properties,
//! so when the whole packet is too large we give properties up, one at a time in a fixed
//! order, until it fits: first what is only text for people, then what tells the client
//! no more than it assumes without it, then limits that the broker enforces anyway (a
//! client that did not learn them is refused per packet or disconnected with the reason
//! code when it goes past them). What the client must know to use the connection at
//! all, the Assigned Client Identifier [MQTT-3.2.2-16] and the Server Keep Alive
//! (without it the broker would have to use the client's keepalive [MQTT-3.2.2-22]),
//! is never dropped: if the packet does not fit even with only those,
//! it is not sent, and the connection is closed without it, as Mosquitto does.
//!
//! Pure: packets in, properties out; no I/O.

use bytes::BytesMut;

use crate::codec::{self, ConnAck, Disconnect, Packet, Properties, ProtocolVersion, ReasonCode};

/// One optional property that may be dropped: its name (for logs and tests) and how to
/// drop it (true if it was there).
type Droppable = (&'static str, fn(&mut Properties) -> bool);

/// The order in which CONNACK properties are dropped until the packet fits.
pub(crate) const CONNACK_DROP_ORDER: &[Droppable] = &[
    // Text for people.
    ("reason string", |p| p.reason_string.take().is_some()),
    ("user properties", |p| {
        !std::mem::take(&mut p.user_properties).is_empty()
    }),
    // Only useful to a client that asked (or to send it elsewhere).
    ("server reference", |p| p.server_reference.take().is_some()),
    ("response information", |p| {
        p.response_information.take().is_some()
    }),
    // Without it the client assumes the same, or only misses a feature.
    ("subscription identifier available", |p| {
        p.subscription_identifier_available.take().is_some()
    }),
    ("topic alias maximum", |p| {
        p.topic_alias_maximum.take().is_some()
    }),
    // Limits the client would otherwise learn from a SUBACK failure code.
    ("shared subscription available", |p| {
        p.shared_subscription_available.take().is_some()
    }),
    ("wildcard subscription available", |p| {
        p.wildcard_subscription_available.take().is_some()
    }),
    // Limits the client would otherwise learn from a DISCONNECT, or never.
    ("maximum packet size", |p| {
        p.maximum_packet_size.take().is_some()
    }),
    ("receive maximum", |p| p.receive_maximum.take().is_some()),
    ("session expiry interval", |p| {
        p.session_expiry_interval.take().is_some()
    }),
    ("retain available", |p| p.retain_available.take().is_some()),
    ("maximum qos", |p| p.maximum_qos.take().is_some()),
    // Never dropped: assigned client identifier, server keep alive (and the
    // authentication method/data, which the broker does not send).
];

/// The order for our DISCONNECT (it carries a reason string, nothing else today).
pub(crate) const DISCONNECT_DROP_ORDER: &[Droppable] = &[
    ("reason string", |p| p.reason_string.take().is_some()),
    ("user properties", |p| {
        !std::mem::take(&mut p.user_properties).is_empty()
    }),
    ("server reference", |p| p.server_reference.take().is_some()),
];

/// What fitting a packet came to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fit<T> {
    /// Send this; `dropped` names the properties given up, in order.
    Send {
        packet: T,
        dropped: Vec<&'static str>,
    },
    /// Not even the packet without every droppable property fits: `size` bytes.
    TooLarge { size: usize },
}

/// `ack` with as few properties dropped (in `CONNACK_DROP_ORDER`) as its encoding for
/// `version` needs to be at most `max` bytes. v3 CONNACKs have no properties and fit.
pub(crate) fn connack(mut ack: ConnAck, version: ProtocolVersion, max: u32) -> Fit<ConnAck> {
    let (session_present, reason) = (ack.session_present, ack.reason);
    match shrink(&mut ack.properties, CONNACK_DROP_ORDER, max, |p| {
        encoded_len(
            &Packet::ConnAck(ConnAck {
                session_present,
                reason,
                properties: p.clone(),
            }),
            version,
        )
    }) {
        Ok(dropped) => Fit::Send {
            packet: ack,
            dropped,
        },
        Err(size) => Fit::TooLarge { size },
    }
}

/// Our DISCONNECT with `reason`, described by a reason string if it fits in `max`.
pub(crate) fn disconnect(reason: ReasonCode, max: u32) -> Fit<Disconnect> {
    let mut properties = Properties {
        reason_string: Some(reason.description().to_owned()),
        ..Properties::default()
    };
    match shrink(&mut properties, DISCONNECT_DROP_ORDER, max, |p| {
        encoded_len(
            &Packet::Disconnect(Disconnect {
                reason,
                properties: p.clone(),
            }),
            ProtocolVersion::V5,
        )
    }) {
        Ok(dropped) => Fit::Send {
            packet: Disconnect { reason, properties },
            dropped,
        },
        Err(size) => Fit::TooLarge { size },
    }
}

/// Drop properties from `p` in `order` until `len(p) <= max`. Ok: what was dropped;
/// Err: the size with everything droppable gone.
fn shrink(
    p: &mut Properties,
    order: &[Droppable],
    max: u32,
    len: impl Fn(&Properties) -> usize,
) -> Result<Vec<&'static str>, usize> {
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let mut dropped = Vec::new();
    let mut size = len(p);
    for (name, drop) in order {
        if size <= max {
            return Ok(dropped);
        }
        if drop(p) {
            dropped.push(*name);
            size = len(p);
        }
    }
    if size <= max {
        Ok(dropped)
    } else {
        Err(size)
    }
}

/// Bytes the packet takes on the wire; usize::MAX if it cannot be encoded at all.
fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let mut buf = BytesMut::new();
    match codec::encode(packet, version, &mut buf) {
        Ok(()) => buf.len(),
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CONNACK the broker sends on its defaults (20 bytes) plus the optional
    /// extras it may add, to exercise the whole order.
    fn full_connack() -> ConnAck {
        ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: Properties {
                reason_string: Some("why".into()),
                user_properties: vec![("k".into(), "v".into())],
                server_reference: Some("other:1883".into()),
                response_information: Some("resp/".into()),
                subscription_identifier_available: Some(1),
                topic_alias_maximum: Some(65535),
                shared_subscription_available: Some(0),
                wildcard_subscription_available: Some(0),
                maximum_packet_size: Some(1 << 20),
                receive_maximum: Some(32),
                session_expiry_interval: Some(7200),
                retain_available: Some(0),
                maximum_qos: Some(1),
                assigned_client_identifier: Some("quay-1".into()),
                server_keep_alive: Some(30),
                ..Properties::default()
            },
        }
    }

    fn len(ack: &ConnAck) -> usize {
        encoded_len(&Packet::ConnAck(ack.clone()), ProtocolVersion::V5)
    }

    #[test]
    fn a_connack_that_fits_is_left_alone() {
        let ack = full_connack();
        let size = len(&ack) as u32;
        assert_eq!(
            connack(ack.clone(), ProtocolVersion::V5, size),
            Fit::Send {
                packet: ack,
                dropped: vec![]
            }
        );
    }

    #[test]
    fn properties_go_in_the_documented_order_and_no_more_than_needed() {
        let full = full_connack();
        let full_len = len(&full);
        let names: Vec<&str> = CONNACK_DROP_ORDER.iter().map(|(n, _)| *n).collect();
        // For every limit from the full size down, the result fits, drops a prefix of
        // the order, and keeps the property before which it stopped (minimal).
        for max in (1..=full_len as u32).rev() {
            match connack(full.clone(), ProtocolVersion::V5, max) {
                Fit::Send { packet, dropped } => {
                    assert!(len(&packet) <= max as usize, "max {max}");
                    assert_eq!(dropped, names[..dropped.len()], "max {max}");
                    if !dropped.is_empty() {
                        let mut one_less = full.clone();
                        for (_, drop) in &CONNACK_DROP_ORDER[..dropped.len() - 1] {
                            drop(&mut one_less.properties);
                        }
                        assert!(len(&one_less) > max as usize, "max {max}: dropped too much");
                    }
                    let p = &packet.properties;
                    assert_eq!(p.assigned_client_identifier.as_deref(), Some("quay-1"));
                    assert_eq!(p.server_keep_alive, Some(30));
                }
                Fit::TooLarge { size } => {
                    let mut bare = full.clone();
                    for (_, drop) in CONNACK_DROP_ORDER {
                        drop(&mut bare.properties);
                    }
                    assert_eq!(size, len(&bare));
                    assert!(size > max as usize, "max {max}");
                }
            }
        }
    }

    #[test]
    fn the_default_connack_fits_in_19_bytes_without_subscription_identifier_available() {
        let ack = ConnAck {
            session_present: true,
            reason: ReasonCode::Success,
            properties: Properties {
                receive_maximum: Some(32),
                maximum_packet_size: Some(1 << 20),
                topic_alias_maximum: Some(65535),
                subscription_identifier_available: Some(1),
                shared_subscription_available: Some(0),
                ..Properties::default()
            },
        };
        assert_eq!(len(&ack), 20);
        let Fit::Send { packet, dropped } = connack(ack, ProtocolVersion::V5, 19) else {
            panic!("does not fit");
        };
        assert_eq!(dropped, ["subscription identifier available"]);
        assert_eq!(len(&packet), 18);
    }

    #[test]
    fn a_bare_connack_is_five_bytes_and_nothing_smaller_is_possible() {
        let ack = ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: Properties {
                receive_maximum: Some(32),
                ..Properties::default()
            },
        };
        assert!(matches!(
            connack(ack.clone(), ProtocolVersion::V5, 5),
            Fit::Send { ref dropped, .. } if dropped == &["receive maximum"]
        ));
        assert_eq!(
            connack(ack, ProtocolVersion::V5, 4),
            Fit::TooLarge { size: 5 }
        );
    }

    #[test]
    fn a_v3_connack_has_no_properties_to_drop() {
        let ack = ConnAck {
            session_present: false,
            reason: ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            properties: Properties::default(),
        };
        assert!(matches!(
            connack(ack, ProtocolVersion::V3_1_1, u32::MAX),
            Fit::Send { .. }
        ));
    }

    #[test]
    fn disconnect_drops_its_reason_string_first() {
        let reason = ReasonCode::RECEIVE_MAXIMUM_EXCEEDED;
        let Fit::Send { packet, dropped } = disconnect(reason, u32::MAX) else {
            panic!("no room needed");
        };
        assert!(dropped.is_empty());
        let full = encoded_len(&Packet::Disconnect(packet), ProtocolVersion::V5);
        assert_eq!(full, 4 + 3 + "receive maximum exceeded".len());
        let Fit::Send { packet, dropped } = disconnect(reason, full as u32 - 1) else {
            panic!("a bare DISCONNECT fits");
        };
        assert_eq!(dropped, ["reason string"]);
        assert_eq!(packet.properties, Properties::default());
        assert_eq!(
            encoded_len(&Packet::Disconnect(packet), ProtocolVersion::V5),
            3
        );
        assert_eq!(disconnect(reason, 2), Fit::TooLarge { size: 3 });
    }
}
