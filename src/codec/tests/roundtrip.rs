//! Hand-picked round trips for every packet type in every version, and the places where
//! encode then decode is deliberately not the identity (v3 dropping v5 fields, etc.).

use std::collections::BTreeSet;

use super::*;

#[test]
fn every_sample_round_trips_in_every_version() {
    for version in ALL_VERSIONS {
        for packet in samples(version) {
            assert_round_trip(&packet, version);
        }
    }
}

#[test]
fn samples_cover_every_packet_type() {
    for version in ALL_VERSIONS {
        let names: BTreeSet<&str> = samples(version).iter().map(Packet::name).collect();
        let expected = if version.is_v5() { 15 } else { 14 };
        assert_eq!(names.len(), expected, "{version:?}: {names:?}");
    }
}

#[test]
fn back_to_back_packets_decode_one_at_a_time() {
    for version in ALL_VERSIONS {
        let packets = samples(version);
        let mut buf = BytesMut::new();
        for p in &packets {
            buf.extend_from_slice(&enc(p, version));
        }
        for p in &packets {
            assert_eq!(decode(&mut buf, version, NO_LIMIT), Ok(Some(p.clone())));
        }
        assert_eq!(decode(&mut buf, version, NO_LIMIT), Ok(None));
    }
}

#[test]
fn v3_encoder_ignores_v5_fields() {
    let v5_samples = samples(V5);
    for version in [V3_1, V3_1_1] {
        for packet in v5_samples.iter().filter(|p| !matches!(p, Packet::Auth(_))) {
            let mut packet = packet.clone();
            if let Packet::Connect(c) = &mut packet {
                // A CONNECT says its own version; make it a v3 one that has v5 fields.
                c.protocol = version;
            }
            let decoded = dec(&enc(&packet, version), version).expect("v3 bytes decode");
            let name = packet.name();
            assert_eq!(decoded, strip_v5(packet, version), "{name} in {version:?}");
        }
    }
}

/// What a v3 round trip keeps of a v5 packet.
fn strip_v5(packet: Packet, version: ProtocolVersion) -> Packet {
    let none = Properties::default;
    let ok = ReasonCode::Success;
    match packet {
        Packet::Connect(mut c) => {
            c.properties = none();
            if let Some(w) = &mut c.will {
                w.properties = none();
            }
            Packet::Connect(c)
        }
        Packet::ConnAck(c) => Packet::ConnAck(ConnAck {
            session_present: c.session_present && version != V3_1,
            reason: ReasonCode::from_v3_connack(c.reason.to_v3_connack()),
            properties: none(),
        }),
        Packet::Publish(p) => Packet::Publish(Publish {
            properties: none(),
            ..p
        }),
        Packet::PubAck(p) => Packet::PubAck(PubResp::new(p.packet_id)),
        Packet::PubRec(p) => Packet::PubRec(PubResp::new(p.packet_id)),
        Packet::PubRel(p) => Packet::PubRel(PubResp::new(p.packet_id)),
        Packet::PubComp(p) => Packet::PubComp(PubResp::new(p.packet_id)),
        Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            properties: none(),
            filters: s
                .filters
                .into_iter()
                .map(|(f, o)| {
                    let qos = o.qos;
                    (
                        f,
                        SubscriptionOptions {
                            qos,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            ..s
        }),
        Packet::SubAck(s) => Packet::SubAck(SubAck {
            properties: none(),
            reasons: s
                .reasons
                .into_iter()
                .map(|r| {
                    if r.0 <= 2 {
                        r
                    } else {
                        ReasonCode::UNSPECIFIED_ERROR
                    }
                })
                .collect(),
            ..s
        }),
        Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            properties: none(),
            ..u
        }),
        Packet::UnsubAck(u) => Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: none(),
            reasons: Vec::new(),
        }),
        Packet::Disconnect(_) => Packet::Disconnect(Disconnect {
            reason: ok,
            properties: none(),
        }),
        other => other,
    }
}

#[test]
fn v5_acks_leave_out_success_and_empty_properties() {
    let ack = |reason, properties| {
        Packet::PubAck(PubResp {
            packet_id: 1,
            reason,
            properties,
        })
    };
    // [MQTT-3.4.2-1]: Success without properties is just the packet id.
    assert_eq!(
        &enc(&ack(ReasonCode::Success, Properties::default()), V5)[..],
        [0x40, 2, 0, 1]
    );
    // A reason without properties needs no property length.
    assert_eq!(
        &enc(
            &ack(ReasonCode::NO_MATCHING_SUBSCRIBERS, Properties::default()),
            V5
        )[..],
        [0x40, 3, 0, 1, 0x10]
    );
    let reason_string = Properties {
        reason_string: Some("r".into()),
        ..Properties::default()
    };
    assert_eq!(
        &enc(&ack(ReasonCode::Success, reason_string), V5)[..],
        [0x40, 8, 0, 1, 0x00, 4, 0x1F, 0, 1, b'r']
    );
    let disconnect = Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: Properties::default(),
    });
    assert_eq!(&enc(&disconnect, V5)[..], [0xE0, 0]);
    let auth = Packet::Auth(Auth {
        reason: ReasonCode::RE_AUTHENTICATE,
        properties: Properties::default(),
    });
    assert_eq!(&enc(&auth, V5)[..], [0xF0, 1, 0x19]);
}

#[test]
fn v5_acks_with_reason_but_no_property_length_decode() {
    assert_eq!(
        dec(&[0x50, 3, 0, 5, 0x80], V5),
        Ok(Packet::PubRec(PubResp {
            packet_id: 5,
            reason: ReasonCode::UNSPECIFIED_ERROR,
            properties: Properties::default(),
        }))
    );
    assert_eq!(
        dec(&[0xE0, 1, 0x8E], V5),
        Ok(Packet::Disconnect(Disconnect {
            reason: ReasonCode::SESSION_TAKEN_OVER,
            properties: Properties::default(),
        }))
    );
    // Reason and an empty property block.
    assert_eq!(
        dec(&[0x70, 4, 0, 5, 0x00, 0x00], V5),
        Ok(Packet::PubComp(PubResp::new(5)))
    );
}

#[test]
fn properties_not_allowed_on_a_packet_are_skipped_when_encoding() {
    let will_props = Properties {
        will_delay_interval: Some(60),
        message_expiry_interval: Some(5),
        session_expiry_interval: Some(1),
        ..Properties::default()
    };
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: b("t"),
        packet_id: None,
        properties: will_props,
        payload: Bytes::new(),
    });
    let expected = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: b("t"),
        packet_id: None,
        properties: Properties {
            message_expiry_interval: Some(5),
            ..Properties::default()
        },
        payload: Bytes::new(),
    });
    assert_eq!(dec(&enc(&publish, V5), V5), Ok(expected));
    // An ack whose only properties are not allowed on it is written in its short form.
    let ack = Packet::PubAck(PubResp {
        packet_id: 3,
        reason: ReasonCode::Success,
        properties: Properties {
            topic_alias: Some(1),
            ..Properties::default()
        },
    });
    assert_eq!(&enc(&ack, V5)[..], [0x40, 2, 0, 3]);
}

#[test]
fn v3_connack_uses_3_1_1_return_codes() {
    let connack = |reason| {
        Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: Properties::default(),
        })
    };
    assert_eq!(
        &enc(&connack(ReasonCode::BANNED), V3_1_1)[..],
        [0x20, 2, 0, 5]
    );
    assert_eq!(
        &enc(&connack(ReasonCode::UNSUPPORTED_PROTOCOL_VERSION), V3_1)[..],
        [0x20, 2, 0, 1]
    );
    assert_eq!(
        &enc(&connack(ReasonCode::SERVER_BUSY), V3_1_1)[..],
        [0x20, 2, 0, 3]
    );
    for code in 0..=5u8 {
        let expected = connack(ReasonCode::from_v3_connack(code));
        assert_eq!(dec(&[0x20, 2, 0, code], V3_1_1), Ok(expected));
    }
    // 3.1 has no Session Present: the byte is reserved and ignored.
    assert_eq!(
        dec(&[0x20, 2, 1, 0], V3_1),
        Ok(connack(ReasonCode::Success))
    );
    let present = Packet::ConnAck(ConnAck {
        session_present: true,
        reason: ReasonCode::Success,
        properties: Properties::default(),
    });
    assert_eq!(&enc(&present, V3_1)[..], [0x20, 2, 0, 0]);
    assert_eq!(&enc(&present, V3_1_1)[..], [0x20, 2, 1, 0]);
}

#[test]
fn v3_suback_writes_any_failure_as_0x80() {
    let suback = Packet::SubAck(SubAck {
        packet_id: 1,
        properties: Properties::default(),
        reasons: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::NOT_AUTHORIZED],
    });
    assert_eq!(&enc(&suback, V3_1_1)[..], [0x90, 4, 0, 1, 0x01, 0x80]);
    assert_eq!(&enc(&suback, V5)[..], [0x90, 5, 0, 1, 0, 0x01, 0x87]);
}

#[test]
fn connect_is_written_in_the_version_it_names() {
    for packet in samples(V5)
        .into_iter()
        .filter(|p| matches!(p, Packet::Connect(_)))
    {
        for version in ALL_VERSIONS {
            assert_eq!(enc(&packet, version), enc(&packet, V5));
            // And `decode` reads a CONNECT in its own version too.
            assert_eq!(dec(&enc(&packet, V5), version), Ok(packet.clone()));
        }
    }
}

#[test]
fn v3_accepts_dup_on_qos_0_and_keeps_it() {
    let publish = Packet::Publish(Publish {
        dup: true,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: b("t"),
        packet_id: None,
        properties: Properties::default(),
        payload: b("p"),
    });
    for version in [V3_1, V3_1_1] {
        assert_round_trip(&publish, version);
    }
}

#[test]
fn v5_empty_topic_with_alias_round_trips() {
    let publish = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Bytes::new(),
        packet_id: Some(2),
        properties: Properties {
            topic_alias: Some(3),
            ..Properties::default()
        },
        payload: b("p"),
    });
    assert_round_trip(&publish, V5);
}
