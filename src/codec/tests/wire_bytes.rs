//! Byte-exact tests against hand-written wire bytes (checked against the specs' figures
//! and what common clients send), in both directions.

use super::super::wire::{put_varint, varint_prefix};
use super::*;

/// `bytes` decodes to `packet` and `packet` encodes to exactly `bytes`.
fn assert_wire(bytes: &[u8], packet: &Packet, version: ProtocolVersion) {
    assert_eq!(
        dec(bytes, version).as_ref(),
        Ok(packet),
        "decoding {bytes:02x?}"
    );
    assert_eq!(&enc(packet, version)[..], bytes, "encoding {packet:?}");
}

fn connect(protocol: ProtocolVersion, client_id: &str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    }
}

#[test]
fn mosquitto_pub_3_1_1_session() {
    // `mosquitto_pub -i mosq-pub-1 -t test -m hello`: CONNECT, PUBLISH, DISCONNECT.
    #[rustfmt::skip]
    let connect_bytes = [
        0x10, 0x16,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c,
        0x00, 0x0a, b'm', b'o', b's', b'q', b'-', b'p', b'u', b'b', b'-', b'1',
    ];
    let packet = Packet::Connect(Box::new(connect(V3_1_1, "mosq-pub-1")));
    assert_wire(&connect_bytes, &packet, V3_1_1);
    let mut buf = BytesMut::from(&connect_bytes[..]);
    assert_eq!(decode_connect(&mut buf, NO_LIMIT), Ok(Some(packet)));

    let publish_bytes = [
        0x30, 0x0b, 0x00, 0x04, b't', b'e', b's', b't', b'h', b'e', b'l', b'l', b'o',
    ];
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: b("test"),
        packet_id: None,
        properties: Properties::default(),
        payload: b("hello"),
    });
    assert_wire(&publish_bytes, &publish, V3_1_1);
    assert_wire(
        &[0xe0, 0x00],
        &Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }),
        V3_1_1,
    );
}

#[test]
fn mqtt_3_1_connect_and_connack() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x11,
        0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3c,
        0x00, 0x03, b'a', b'b', b'c',
    ];
    let packet = Packet::Connect(Box::new(connect(V3_1, "abc")));
    assert_wire(&bytes, &packet, V3_1);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(decode_connect(&mut buf, NO_LIMIT), Ok(Some(packet)));
    let connack = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
        properties: Properties::default(),
    });
    assert_wire(&[0x20, 0x02, 0x00, 0x02], &connack, V3_1);
}

#[test]
fn v5_connect_with_properties_will_and_credentials() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x2c,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05,
        0b1110_1110, // user name, password, will retain, will QoS 1, will, clean start
        0x00, 0x3c,
        0x08, 0x11, 0x00, 0x00, 0x0e, 0x10, 0x21, 0x00, 0x14, // session expiry 3600, receive max 20
        0x00, 0x03, b'a', b'b', b'c',
        0x05, 0x18, 0x00, 0x00, 0x00, 0x1e, // will delay 30
        0x00, 0x01, b'w',
        0x00, 0x02, b'b', b'y',
        0x00, 0x01, b'u',
        0x00, 0x02, 0x00, 0xff,
    ];
    let packet = Packet::Connect(Box::new(Connect {
        properties: Properties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(20),
            ..Properties::default()
        },
        will: Some(LastWill {
            topic: b("w"),
            payload: b("by"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                will_delay_interval: Some(30),
                ..Properties::default()
            },
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(&[0x00, 0xff])),
        ..connect(V5, "abc")
    }));
    assert_wire(&bytes, &packet, V5);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(decode_connect(&mut buf, NO_LIMIT), Ok(Some(packet)));
}

#[test]
fn v5_connect_password_without_user_name() {
    #[rustfmt::skip]
    let bytes = [
        0x10, 0x11,
        0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x42, 0x00, 0x00, 0x00,
        0x00, 0x01, b'c',
        0x00, 0x01, b'p',
    ];
    let packet = Packet::Connect(Box::new(Connect {
        keep_alive: 0,
        password: Some(b("p")),
        ..connect(V5, "c")
    }));
    assert_wire(&bytes, &packet, V5);
}

#[test]
fn v5_publish_with_topic_alias() {
    // QoS 1, empty topic standing for alias 7.
    let bytes = [
        0x32, 0x0a, 0x00, 0x00, 0x00, 0x01, 0x03, 0x23, 0x00, 0x07, b'h', b'i',
    ];
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Bytes::new(),
        packet_id: Some(1),
        properties: Properties {
            topic_alias: Some(7),
            ..Properties::default()
        },
        payload: b("hi"),
    });
    assert_wire(&bytes, &packet, V5);
}

#[test]
fn v5_subscribe_with_options_and_identifier() {
    // QoS 1 | No Local | Retain As Published | Retain Handling 2 = 0x2d.
    let bytes = [
        0x82, 0x0b, 0x00, 0x01, 0x02, 0x0b, 0x05, 0x00, 0x03, b'a', b'/', b'b', 0x2d,
    ];
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties {
            subscription_identifiers: vec![5],
            ..Properties::default()
        },
        filters: vec![(
            "a/b".into(),
            SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::Never,
            },
        )],
    });
    assert_wire(&bytes, &packet, V5);
}

#[test]
fn v3_subscribe_and_suback() {
    let bytes = [0x82, 0x08, 0x00, 0x0a, 0x00, 0x03, b'a', b'/', b'#', 0x02];
    let packet = Packet::Subscribe(Subscribe {
        packet_id: 10,
        properties: Properties::default(),
        filters: vec![(
            "a/#".into(),
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                ..SubscriptionOptions::default()
            },
        )],
    });
    assert_wire(&bytes, &packet, V3_1_1);
    let suback = Packet::SubAck(SubAck {
        packet_id: 10,
        properties: Properties::default(),
        reasons: vec![ReasonCode::GRANTED_QOS_2, ReasonCode::UNSPECIFIED_ERROR],
    });
    assert_wire(&[0x90, 0x04, 0x00, 0x0a, 0x02, 0x80], &suback, V3_1_1);
    let unsuback = Packet::UnsubAck(UnsubAck {
        packet_id: 10,
        properties: Properties::default(),
        reasons: Vec::new(),
    });
    assert_wire(&[0xb0, 0x02, 0x00, 0x0a], &unsuback, V3_1_1);
}

#[test]
fn v5_connack_with_properties() {
    let bytes = [0x20, 0x06, 0x01, 0x00, 0x03, 0x22, 0x00, 0x0a];
    let packet = Packet::ConnAck(ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: Properties {
            topic_alias_maximum: Some(10),
            ..Properties::default()
        },
    });
    assert_wire(&bytes, &packet, V5);
    // A v5 CONNACK always carries a property length, even when empty.
    let refused = Packet::ConnAck(ConnAck {
        session_present: false,
        reason: ReasonCode::NOT_AUTHORIZED,
        properties: Properties::default(),
    });
    assert_wire(&[0x20, 0x03, 0x00, 0x87, 0x00], &refused, V5);
}

#[test]
fn v3_pubrel_and_ping() {
    assert_wire(
        &[0x62, 0x02, 0x12, 0x34],
        &Packet::PubRel(PubResp::new(0x1234)),
        V3_1_1,
    );
    assert_wire(&[0xc0, 0x00], &Packet::PingReq, V3_1);
    assert_wire(&[0xd0, 0x00], &Packet::PingResp, V5);
}

#[test]
fn multi_byte_remaining_length() {
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: b("t"),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from(vec![7; 200]),
    });
    let bytes = enc(&publish, V3_1_1);
    // 2 + 1 + 200 = 203 = 0x4b | 0x80, then 1.
    assert_eq!(&bytes[..5], [0x31, 0xcb, 0x01, 0x00, 0x01]);
    assert_eq!(bytes.len(), 3 + 203);
}

#[test]
fn variable_byte_integer_boundaries() {
    let cases: [(u32, &[u8]); 8] = [
        (0, &[0x00]),
        (127, &[0x7f]),
        (128, &[0x80, 0x01]),
        (16_383, &[0xff, 0x7f]),
        (16_384, &[0x80, 0x80, 0x01]),
        (2_097_151, &[0xff, 0xff, 0x7f]),
        (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        (268_435_455, &[0xff, 0xff, 0xff, 0x7f]),
    ];
    for (value, bytes) in cases {
        let mut out = BytesMut::new();
        put_varint(&mut out, value, "test").expect("in range");
        assert_eq!(&out[..], bytes, "{value}");
        assert_eq!(varint_prefix(bytes), Ok(Some((value, bytes.len()))));
    }
    assert_eq!(
        put_varint(&mut BytesMut::new(), 268_435_456, "test"),
        Err(EncodeError::ValueOutOfRange {
            field: "test",
            value: 268_435_456
        })
    );
}
