//! Every decode and encode error, each triggered by crafted input, and the reason code
//! each one reports.

use super::super::wire::put_varint;
use super::*;
use DecodeError as E;

/// A packet with the given first byte and body, remaining length filled in.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    bytes::BufMut::put_u8(&mut out, first);
    put_varint(&mut out, body.len() as u32, "remaining length").expect("small");
    out.extend_from_slice(body);
    out.to_vec()
}

/// A CONNECT body: name, level, flags, keep alive 0, then `rest` verbatim.
fn connect_body(name: &[u8], level: u8, flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0, 0]);
    body.extend_from_slice(rest);
    body
}

/// A v5 CONNECT with property block `props` and client id "c".
fn v5_connect(props: &[u8]) -> Vec<u8> {
    let mut rest = vec![props.len() as u8];
    rest.extend_from_slice(props);
    rest.extend_from_slice(&[0, 1, b'c']);
    frame(0x10, &connect_body(b"MQTT", 5, 0x02, &rest))
}

fn err(bytes: &[u8], version: ProtocolVersion) -> DecodeError {
    match decode(&mut BytesMut::from(bytes), version, NO_LIMIT) {
        Err(e) => e,
        Ok(p) => panic!("{bytes:02x?} decoded as {p:?}"),
    }
}

fn connect_err(bytes: &[u8]) -> DecodeError {
    match decode_connect(&mut BytesMut::from(bytes), NO_LIMIT) {
        Err(e) => e,
        Ok(p) => panic!("{bytes:02x?} decoded as {p:?}"),
    }
}

#[test]
fn packet_too_large_is_refused_from_the_fixed_header_alone() {
    // Only the fixed header has arrived; the body would take the packet to 12 bytes.
    let mut buf = BytesMut::from(&[0x30, 0x0a][..]);
    assert_eq!(
        decode(&mut buf, V5, 11),
        Err(E::PacketTooLarge { size: 12, max: 11 })
    );
    let mut buf = BytesMut::from(&[0x10, 0xff, 0x7f][..]);
    assert_eq!(
        decode_connect(&mut buf, 1024),
        Err(E::PacketTooLarge {
            size: 16_386,
            max: 1024
        })
    );
    // Exactly at the limit is fine.
    assert_eq!(dec_limited(&[0xc0, 0x00], 2), Ok(Some(Packet::PingReq)));
}

fn dec_limited(bytes: &[u8], max: usize) -> Result<Option<Packet>, DecodeError> {
    decode(&mut BytesMut::from(bytes), V3_1_1, max)
}

#[test]
fn remaining_length_longer_than_four_bytes() {
    assert_eq!(
        err(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], V5),
        E::MalformedRemainingLength
    );
    assert_eq!(
        connect_err(&[0x10, 0x80, 0x80, 0x80, 0x80]),
        E::MalformedRemainingLength
    );
    // Inside the body (a property length) it is reported as a malformed field.
    assert_eq!(
        err(&frame(0xe0, &[0x00, 0xff, 0xff, 0xff, 0xff]), V5),
        E::Malformed("variable byte integer is longer than 4 bytes")
    );
}

#[test]
fn invalid_packet_types() {
    assert_eq!(err(&[0x00, 0x00], V5), E::InvalidPacketType(0));
    for version in [V3_1, V3_1_1] {
        assert_eq!(err(&[0xf0, 0x00], version), E::InvalidPacketType(15));
    }
}

#[test]
fn invalid_fixed_header_flags() {
    let cases: [(u8, &str); 6] = [
        (0x60, "PUBREL"),
        (0x80, "SUBSCRIBE"),
        (0xa3, "UNSUBSCRIBE"),
        (0x41, "PUBACK"),
        (0xc8, "PINGREQ"),
        (0x22, "CONNACK"),
    ];
    for (first, packet) in cases {
        let flags = first & 0x0f;
        assert_eq!(
            err(&[first, 0x00], V3_1_1),
            E::InvalidFlags { packet, flags }
        );
    }
    assert_eq!(
        connect_err(&[0x12, 0x00]),
        E::InvalidFlags {
            packet: "CONNECT",
            flags: 2
        }
    );
    // MQTT 3.1 let PUBREL, SUBSCRIBE and UNSUBSCRIBE carry DUP; later versions do not.
    assert_eq!(
        dec(&[0x6a, 2, 0, 1], V3_1),
        Ok(Packet::PubRel(PubResp::new(1)))
    );
    for version in [V3_1_1, V5] {
        let e = err(&[0x6a, 2, 0, 1], version);
        assert_eq!(
            e,
            E::InvalidFlags {
                packet: "PUBREL",
                flags: 0x0a
            }
        );
    }
}

#[test]
fn protocol_name_and_level() {
    let bad_name = frame(0x10, &connect_body(b"MQTX", 4, 0x02, &[0, 0]));
    assert_eq!(
        connect_err(&bad_name),
        E::InvalidProtocolName("MQTX".into())
    );
    for (name, level) in [(&b"MQTT"[..], 6), (b"MQTT", 3), (b"MQIsdp", 4)] {
        let bytes = frame(0x10, &connect_body(name, level, 0x02, &[0, 0]));
        let e = connect_err(&bytes);
        assert_eq!(e, E::UnsupportedProtocolVersion(level));
        assert_eq!(e.reason_code(), ReasonCode::UNSUPPORTED_PROTOCOL_VERSION);
    }
}

#[test]
fn first_packet_must_be_connect() {
    assert_eq!(connect_err(&[0x30, 0x00]), E::ExpectedConnect("PUBLISH"));
    assert_eq!(connect_err(&[0xc0, 0x00]), E::ExpectedConnect("PINGREQ"));
    assert_eq!(
        connect_err(&[0x00]),
        E::ExpectedConnect("reserved packet type 0")
    );
}

#[test]
fn strings_must_be_utf8_without_nul() {
    assert_eq!(
        err(&frame(0x30, &[0, 2, 0xc3, 0x28]), V3_1_1),
        E::InvalidUtf8
    );
    assert_eq!(
        err(&frame(0x30, &[0, 2, b'a', 0x00]), V3_1_1),
        E::InvalidUtf8
    );
    // Encoded surrogate U+D800.
    assert_eq!(
        err(&frame(0x30, &[0, 3, 0xed, 0xa0, 0x80]), V3_1_1),
        E::InvalidUtf8
    );
    // Inside a property (Reason String).
    assert_eq!(
        err(&frame(0x40, &[0, 1, 0x00, 4, 0x1f, 0, 1, 0xff]), V5),
        E::InvalidUtf8
    );
    let bad_client_id = frame(0x10, &connect_body(b"MQTT", 4, 0x02, &[0, 1, 0xfe]));
    assert_eq!(connect_err(&bad_client_id), E::InvalidUtf8);
}

#[test]
fn invalid_qos() {
    assert_eq!(
        err(&frame(0x36, &[0, 1, b't', 0, 1]), V3_1_1),
        E::InvalidQoS(3)
    );
    // Will QoS 3.
    let will_qos_3 = frame(
        0x10,
        &connect_body(b"MQTT", 4, 0x1e, &[0, 0, 0, 1, b't', 0, 0]),
    );
    assert_eq!(connect_err(&will_qos_3), E::InvalidQoS(3));
    assert_eq!(
        err(&frame(0x82, &[0, 1, 0, 1, b'a', 3]), V3_1_1),
        E::InvalidQoS(3)
    );
    assert_eq!(
        err(&frame(0x82, &[0, 1, 0, 0, 1, b'a', 3]), V5),
        E::InvalidQoS(3)
    );
}

#[test]
fn zero_packet_id() {
    assert_eq!(
        err(&frame(0x32, &[0, 1, b't', 0, 0]), V3_1_1),
        E::ZeroPacketId
    );
    assert_eq!(err(&[0x40, 2, 0, 0], V5), E::ZeroPacketId);
    assert_eq!(err(&[0x62, 2, 0, 0], V3_1), E::ZeroPacketId);
    assert_eq!(
        err(&frame(0x82, &[0, 0, 0, 1, b'a', 0]), V3_1_1),
        E::ZeroPacketId
    );
    assert_eq!(
        err(&frame(0xa2, &[0, 0, 0, 0, 1, b'a']), V5),
        E::ZeroPacketId
    );
    assert_eq!(err(&[0x90, 3, 0, 0, 0], V3_1_1), E::ZeroPacketId);
    assert_eq!(err(&[0xb0, 2, 0, 0], V3_1_1), E::ZeroPacketId);
}

#[test]
fn malformed_packets() {
    let malformed = |e: DecodeError| matches!(e, E::Malformed(_));
    // Truncated fields.
    assert!(malformed(err(&frame(0x30, &[0, 5, b'a']), V3_1_1)));
    assert!(malformed(connect_err(&frame(0x10, &[0, 4, b'M', b'Q']))));
    assert!(malformed(connect_err(&frame(
        0x10,
        &connect_body(b"MQTT", 4, 0x02, &[0])
    ))));
    assert!(malformed(err(&[0x40, 1, 0], V3_1_1)));
    // Trailing bytes.
    assert!(malformed(err(&[0xc0, 1, 0], V3_1_1)));
    assert!(malformed(err(&[0x40, 3, 0, 1, 0], V3_1_1)));
    assert!(malformed(err(&[0xe0, 1, 0], V3_1_1)));
    assert!(malformed(err(&[0xb0, 3, 0, 1, 0], V3_1_1)));
    assert!(malformed(connect_err(&frame(
        0x10,
        &connect_body(b"MQTT", 4, 0x02, &[0, 0, 9])
    ))));
    assert!(malformed(err(&[0x20, 3, 0, 0, 0], V3_1_1)));
    // Property block longer than the packet.
    assert!(malformed(err(&[0x40, 4, 0, 1, 0, 5], V5)));
    // CONNECT reserved flag [MQTT-3.1.2-3].
    let reserved = frame(0x10, &connect_body(b"MQTT", 4, 0x03, &[0, 0]));
    assert_eq!(
        connect_err(&reserved),
        E::Malformed("CONNECT reserved flag (bit 0) is set")
    );
    // 3.1.1 password without user name [MQTT-3.1.2-22].
    let password_only = frame(0x10, &connect_body(b"MQTT", 4, 0x42, &[0, 0, 0, 1, b'p']));
    assert!(malformed(connect_err(&password_only)));
    // Reserved subscription option bits.
    assert!(malformed(err(
        &frame(0x82, &[0, 1, 0, 1, b'a', 0x04]),
        V3_1_1
    )));
    assert!(malformed(err(
        &frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x40]),
        V5
    )));
}

#[test]
fn protocol_errors() {
    let protocol = |e: DecodeError| matches!(e, E::Protocol(_));
    // DUP on QoS 0 is refused in v5 only.
    assert!(protocol(err(&frame(0x38, &[0, 1, b't', 0]), V5)));
    // Will QoS / retain without the will flag.
    for flags in [0x0a, 0x22] {
        let bytes = frame(0x10, &connect_body(b"MQTT", 4, flags, &[0, 0]));
        assert!(protocol(connect_err(&bytes)), "{flags:#x}");
    }
    // No topic filters.
    assert!(protocol(err(&[0x82, 2, 0, 1], V3_1_1)));
    assert!(protocol(err(&[0x82, 3, 0, 1, 0], V5)));
    assert!(protocol(err(&[0xa2, 2, 0, 1], V3_1_1)));
    // Retain Handling 3.
    assert!(protocol(err(
        &frame(0x82, &[0, 1, 0, 0, 1, b'a', 0x30]),
        V5
    )));
    // Subscription Identifier 0.
    assert!(protocol(err(
        &frame(0x82, &[0, 1, 2, 0x0b, 0, 0, 1, b'a', 0]),
        V5
    )));
    // Property values the spec limits.
    assert!(protocol(err(&v5_connect(&[0x21, 0, 0]), V5)));
    assert!(protocol(err(&v5_connect(&[0x27, 0, 0, 0, 0]), V5)));
    assert!(protocol(err(&v5_connect(&[0x17, 2]), V5)));
    assert!(protocol(err(&[0x20, 5, 0, 0, 2, 0x24, 2], V5)));
    // Empty topic: never in v3, only with a Topic Alias in v5.
    assert!(protocol(err(&frame(0x30, &[0, 0, b'p']), V3_1_1)));
    assert!(protocol(err(&frame(0x30, &[0, 0, 0, b'p']), V5)));
    // CONNACK reserved flag bits, and empty SUBACK / UNSUBACK.
    assert!(protocol(err(&[0x20, 2, 0x02, 0], V3_1_1)));
    assert!(protocol(err(&[0x90, 2, 0, 1], V3_1_1)));
    assert!(protocol(err(&[0xb0, 3, 0, 1, 0], V5)));
}

#[test]
fn properties_must_belong_to_the_packet() {
    let invalid = |packet, id| E::InvalidProperty { packet, id };
    // Topic Alias only in PUBLISH.
    assert_eq!(
        err(&v5_connect(&[0x23, 0, 1]), V5),
        invalid("CONNECT", 0x23)
    );
    // Session Expiry not in PUBLISH.
    let publish = frame(0x30, &[0, 1, b't', 5, 0x11, 0, 0, 0, 1]);
    assert_eq!(err(&publish, V5), invalid("PUBLISH", 0x11));
    // Will Delay only among will properties.
    assert_eq!(
        err(&v5_connect(&[0x18, 0, 0, 0, 1]), V5),
        invalid("CONNECT", 0x18)
    );
    // Unknown ids, including one that looks like a multi-byte identifier.
    assert_eq!(
        err(&[0xe0, 4, 0, 2, 0x7f, 0], V5),
        invalid("DISCONNECT", 0x7f)
    );
    assert_eq!(
        err(&[0xe0, 4, 0, 2, 0x80, 0x01], V5),
        invalid("DISCONNECT", 0x80)
    );
    // Will properties are checked as their own block.
    let mut rest = vec![0, 0, 1, b'c', 2, 0x23, 0];
    rest.extend_from_slice(&[0, 1, b't', 0, 0]);
    let will = frame(0x10, &connect_body(b"MQTT", 5, 0x06, &rest));
    assert_eq!(connect_err(&will), invalid("CONNECT will properties", 0x23));
}

#[test]
fn duplicate_properties() {
    let twice = [0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2];
    assert_eq!(err(&v5_connect(&twice), V5), E::DuplicateProperty(0x11));
    let sub_ids = frame(0x82, &[0, 1, 4, 0x0b, 1, 0x0b, 2, 0, 1, b'a', 0]);
    assert_eq!(err(&sub_ids, V5), E::DuplicateProperty(0x0b));
    // User Property may repeat anywhere, Subscription Identifier in PUBLISH.
    let users = [0x26, 0, 1, b'k', 0, 0, 0x26, 0, 1, b'k', 0, 0];
    assert!(dec(&v5_connect(&users), V5).is_ok());
    let publish = frame(0x30, &[0, 1, b't', 4, 0x0b, 1, 0x0b, 2]);
    match dec(&publish, V5) {
        Ok(Packet::Publish(p)) => assert_eq!(p.properties.subscription_identifiers, vec![1, 2]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn reason_codes_must_exist_for_the_packet() {
    let invalid = |packet, code| E::InvalidReasonCode { packet, code };
    assert_eq!(err(&[0x40, 3, 0, 1, 0x05], V5), invalid("PUBACK", 0x05));
    assert_eq!(err(&[0x62, 3, 0, 1, 0x10], V5), invalid("PUBREL", 0x10));
    assert_eq!(err(&[0x20, 3, 0, 0x04, 0], V5), invalid("CONNACK", 0x04));
    assert_eq!(err(&[0x20, 2, 0, 6], V3_1_1), invalid("CONNACK", 6));
    assert_eq!(err(&[0x90, 3, 0, 1, 3], V3_1_1), invalid("SUBACK", 3));
    assert_eq!(err(&[0x90, 4, 0, 1, 0, 0x11], V5), invalid("SUBACK", 0x11));
    assert_eq!(
        err(&[0xb0, 4, 0, 1, 0, 0x10], V5),
        invalid("UNSUBACK", 0x10)
    );
    assert_eq!(err(&[0xe0, 1, 0x18], V5), invalid("DISCONNECT", 0x18));
    assert_eq!(err(&[0xf0, 1, 0x04], V5), invalid("AUTH", 0x04));
}

#[test]
fn reason_code_per_error() {
    let cases = [
        (E::PacketTooLarge { size: 2, max: 1 }, 0x95),
        (E::UnsupportedProtocolVersion(6), 0x84),
        (E::Protocol("x"), 0x82),
        (E::DuplicateProperty(0x11), 0x82),
        (E::ZeroPacketId, 0x82),
        (E::ExpectedConnect("PUBLISH"), 0x82),
        (
            E::InvalidReasonCode {
                packet: "PUBACK",
                code: 5,
            },
            0x82,
        ),
        (E::MalformedRemainingLength, 0x81),
        (E::InvalidPacketType(0), 0x81),
        (
            E::InvalidFlags {
                packet: "PUBREL",
                flags: 0,
            },
            0x81,
        ),
        (E::InvalidProtocolName("x".into()), 0x81),
        (E::InvalidUtf8, 0x81),
        (E::InvalidQoS(3), 0x81),
        (E::Malformed("x"), 0x81),
        (
            E::InvalidProperty {
                packet: "CONNECT",
                id: 0x23,
            },
            0x81,
        ),
    ];
    for (e, code) in cases {
        assert_eq!(e.reason_code(), ReasonCode(code), "{e}");
    }
}

#[test]
fn error_messages_name_what_was_wrong() {
    let flags = E::InvalidFlags {
        packet: "PUBREL",
        flags: 0,
    }
    .to_string();
    assert!(
        flags.contains("PUBREL") && flags.contains("0b0000"),
        "{flags}"
    );
    let name = E::InvalidProtocolName("MQTX".into()).to_string();
    assert!(name.contains("MQTX"), "{name}");
    let property = E::InvalidProperty {
        packet: "CONNECT",
        id: 0x23,
    }
    .to_string();
    assert!(
        property.contains("CONNECT") && property.contains("0x23"),
        "{property}"
    );
    let too_large = E::PacketTooLarge { size: 12, max: 11 }.to_string();
    assert!(
        too_large.contains("12") && too_large.contains("11"),
        "{too_large}"
    );
}

fn encode_err(packet: &Packet, version: ProtocolVersion) -> EncodeError {
    // Prefilled so that "nothing is appended on error" is checked too.
    let mut out = BytesMut::from(&b"prefix"[..]);
    let e = match encode(packet, version, &mut out) {
        Err(e) => e,
        Ok(()) => panic!("{} encoded", packet.name()),
    };
    assert_eq!(&out[..], b"prefix");
    e
}

fn publish(qos: QoS, packet_id: Option<u16>, payload: Bytes) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: b("t"),
        packet_id,
        properties: Properties::default(),
        payload,
    }
}

#[test]
fn encode_errors() {
    let mut connect = match &samples(V5)[0] {
        Packet::Connect(c) => c.clone(),
        other => panic!("{other:?}"),
    };
    connect.client_id = "x".repeat(65_536);
    assert_eq!(
        encode_err(&Packet::Connect(connect), V5),
        EncodeError::FieldTooLong {
            field: "client identifier",
            len: 65_536
        }
    );
    // One byte over the largest remaining length (the zeroed pages are never touched).
    let huge = Bytes::from(vec![0u8; 268_435_455 - 3 + 1]);
    let too_large = Packet::Publish(publish(QoS::AtMostOnce, None, huge));
    assert_eq!(
        encode_err(&too_large, V3_1_1),
        EncodeError::PacketTooLarge { size: 268_435_456 }
    );
    let no_id = Packet::Publish(publish(QoS::AtLeastOnce, None, Bytes::new()));
    assert_eq!(encode_err(&no_id, V5), EncodeError::MissingPacketId);
    let mut sub_id = publish(QoS::AtMostOnce, None, Bytes::new());
    sub_id.properties.subscription_identifiers = vec![268_435_456];
    assert_eq!(
        encode_err(&Packet::Publish(sub_id), V5),
        EncodeError::ValueOutOfRange {
            field: "Subscription Identifier",
            value: 268_435_456
        }
    );
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    });
    assert_eq!(
        encode_err(&auth, V3_1_1),
        EncodeError::NotInVersion {
            packet: "AUTH",
            version: V3_1_1
        }
    );
}
