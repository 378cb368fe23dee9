//! Codec tests: round trips, exact wire bytes, every error, partial input, and property
//! tests over generated packets and mutated bytes. Shared helpers and sample packets here.

mod errors;
mod partial;
mod proptests;
mod roundtrip;
mod strategies;
mod wire_bytes;

use bytes::{Bytes, BytesMut};

use super::*;

pub(super) const V3_1: ProtocolVersion = ProtocolVersion::V3_1;
pub(super) const V3_1_1: ProtocolVersion = ProtocolVersion::V3_1_1;
pub(super) const V5: ProtocolVersion = ProtocolVersion::V5;
pub(super) const ALL_VERSIONS: [ProtocolVersion; 3] = [V3_1, V3_1_1, V5];

/// A limit that no test packet reaches.
pub(super) const NO_LIMIT: usize = 1 << 30;

pub(super) fn enc(packet: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    if let Err(e) = encode(packet, version, &mut out) {
        panic!("encoding {packet:?} in {version:?} failed: {e}");
    }
    out
}

/// Decodes `bytes` as one packet and checks that it was consumed whole.
pub(super) fn dec(bytes: &[u8], version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode(&mut buf, version, NO_LIMIT)?;
    let packet =
        packet.unwrap_or_else(|| panic!("complete packet {bytes:02x?} reported as partial"));
    assert!(
        buf.is_empty(),
        "{} bytes left after {}",
        buf.len(),
        packet.name()
    );
    Ok(packet)
}

/// Asserts encode-then-decode gives back `packet`, through `decode` and, for CONNECT,
/// through `decode_connect`.
pub(super) fn assert_round_trip(packet: &Packet, version: ProtocolVersion) {
    let bytes = enc(packet, version);
    assert_eq!(
        dec(&bytes, version).as_ref(),
        Ok(packet),
        "bytes {bytes:02x?}"
    );
    if let Packet::Connect(_) = packet {
        let mut buf = bytes.clone();
        assert_eq!(decode_connect(&mut buf, NO_LIMIT), Ok(Some(packet.clone())));
        assert!(buf.is_empty());
    }
}

pub(super) fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub(super) fn props_with_user(key: &str, value: &str) -> Properties {
    Properties {
        user_properties: vec![(key.into(), value.into())],
        ..Properties::default()
    }
}

/// `p` in v5, empty in v3: what a v3 decoder gives back.
fn v5_only(version: ProtocolVersion, p: Properties) -> Properties {
    if version.is_v5() {
        p
    } else {
        Properties::default()
    }
}

/// Reason `r` in v5, Success in v3 (where acks carry no reason).
fn v5_reason(version: ProtocolVersion, r: ReasonCode) -> ReasonCode {
    if version.is_v5() {
        r
    } else {
        ReasonCode::Success
    }
}

/// One or more packets of every type that exists in `version`, in the shape a decoder
/// of that version gives back (so each must round-trip unchanged).
pub(super) fn samples(version: ProtocolVersion) -> Vec<Packet> {
    let v5 = version.is_v5();
    let user = |k: &str| v5_only(version, props_with_user(k, "v"));
    let mut out = vec![
        Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: true,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: "c".into(),
            will: None,
            username: None,
            password: None,
        })),
        Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: false,
            keep_alive: 0,
            properties: v5_only(
                version,
                Properties {
                    session_expiry_interval: Some(3600),
                    receive_maximum: Some(10),
                    maximum_packet_size: Some(1 << 20),
                    topic_alias_maximum: Some(5),
                    request_problem_information: Some(0),
                    authentication_method: Some("SCRAM".into()),
                    ..props_with_user("k", "v")
                },
            ),
            client_id: "client-é".into(),
            will: Some(LastWill {
                topic: b("will/t"),
                payload: Bytes::from_static(b"\x00bye\xff"),
                qos: QoS::ExactlyOnce,
                retain: true,
                properties: v5_only(
                    version,
                    Properties {
                        will_delay_interval: Some(30),
                        content_type: Some("text/plain".into()),
                        ..Properties::default()
                    },
                ),
            }),
            username: Some("user".into()),
            password: Some(Bytes::from_static(b"pw\x00")),
        })),
        Packet::ConnAck(ConnAck {
            session_present: version != V3_1,
            reason: ReasonCode::Success,
            properties: v5_only(
                version,
                Properties {
                    assigned_client_identifier: Some("auto-1".into()),
                    maximum_qos: Some(1),
                    retain_available: Some(0),
                    topic_alias_maximum: Some(10),
                    ..Properties::default()
                },
            ),
        }),
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            properties: Properties::default(),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: b("a/b"),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::new(),
        }),
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: b("a/ü"),
            packet_id: Some(1),
            properties: v5_only(
                version,
                Properties {
                    payload_format_indicator: Some(1),
                    message_expiry_interval: Some(10),
                    response_topic: Some("r".into()),
                    correlation_data: Some(b("corr")),
                    subscription_identifiers: vec![1, 268_435_455],
                    ..props_with_user("a", "b")
                },
            ),
            payload: b("hello"),
        }),
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: b("x"),
            packet_id: Some(65535),
            properties: Properties::default(),
            payload: Bytes::from(vec![0xAB; 300]),
        }),
    ];
    for (i, make) in [
        Packet::PubAck,
        Packet::PubRec,
        Packet::PubRel,
        Packet::PubComp,
    ]
    .into_iter()
    .enumerate()
    {
        let error = if i < 2 {
            ReasonCode::NO_MATCHING_SUBSCRIBERS
        } else {
            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
        };
        out.push(make(PubResp {
            packet_id: 7,
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }));
        out.push(make(PubResp {
            packet_id: 8,
            reason: v5_reason(version, error),
            properties: Properties::default(),
        }));
        out.push(make(PubResp {
            packet_id: 9,
            reason: v5_reason(version, error),
            properties: v5_only(
                version,
                Properties {
                    reason_string: Some("why".into()),
                    ..Properties::default()
                },
            ),
        }));
        out.push(make(PubResp {
            packet_id: 10,
            reason: ReasonCode::Success,
            properties: user("only-props"),
        }));
    }
    let full_options = SubscriptionOptions {
        qos: QoS::ExactlyOnce,
        no_local: v5,
        retain_as_published: v5,
        retain_handling: if v5 {
            RetainHandling::Never
        } else {
            RetainHandling::SendAlways
        },
    };
    out.extend([
        Packet::Subscribe(Subscribe {
            packet_id: 11,
            properties: v5_only(
                version,
                Properties {
                    subscription_identifiers: vec![42],
                    ..props_with_user("s", "t")
                },
            ),
            filters: vec![
                ("a/+".into(), SubscriptionOptions::default()),
                ("#".into(), full_options),
            ],
        }),
        Packet::SubAck(SubAck {
            packet_id: 11,
            properties: user("sa"),
            reasons: vec![
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::GRANTED_QOS_2,
                ReasonCode::UNSPECIFIED_ERROR,
            ],
        }),
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 12,
            properties: user("u"),
            filters: vec!["a/+".into(), "b".into()],
        }),
        Packet::UnsubAck(UnsubAck {
            packet_id: 12,
            properties: user("ua"),
            reasons: if v5 {
                vec![ReasonCode::Success, ReasonCode::NO_SUBSCRIPTION_EXISTED]
            } else {
                Vec::new()
            },
        }),
        Packet::PingReq,
        Packet::PingResp,
        Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }),
    ]);
    if v5 {
        out.extend([
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::DISCONNECT_WITH_WILL,
                properties: Properties::default(),
            }),
            Packet::Disconnect(Disconnect {
                reason: ReasonCode::SERVER_MOVED,
                properties: Properties {
                    session_expiry_interval: Some(0),
                    server_reference: Some("other:1883".into()),
                    reason_string: Some("moved".into()),
                    ..Properties::default()
                },
            }),
            Packet::Auth(Auth {
                reason: ReasonCode::Success,
                properties: Properties::default(),
            }),
            Packet::Auth(Auth {
                reason: ReasonCode::CONTINUE_AUTHENTICATION,
                properties: Properties {
                    authentication_method: Some("SCRAM-SHA-1".into()),
                    authentication_data: Some(b("data")),
                    ..Properties::default()
                },
            }),
        ]);
    }
    out
}
