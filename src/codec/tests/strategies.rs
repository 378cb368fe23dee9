//! proptest generators for packets that are valid in a given version, in the shape that
//! version's decoder returns, so that `decode(encode(p)) == p` must hold for all of them.

use proptest::collection::vec;
use proptest::option::of as opt;
use proptest::prelude::*;
use proptest::sample::select;

use super::super::properties::PropertyOwner;
use super::*;

/// Short strings of any non-control characters (so never U+0000), multi-byte included.
fn text() -> BoxedStrategy<String> {
    "\\PC{0,6}".boxed()
}

fn data() -> BoxedStrategy<Bytes> {
    vec(any::<u8>(), 0..8).prop_map(Bytes::from).boxed()
}

fn flag() -> BoxedStrategy<u8> {
    (0..=1u8).boxed()
}

fn packet_id() -> BoxedStrategy<u16> {
    (1..=u16::MAX).boxed()
}

fn qos() -> BoxedStrategy<QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]).boxed()
}

/// Any valid property set, before trimming to what a packet allows.
fn any_properties() -> BoxedStrategy<Properties> {
    let a = (
        opt(flag()),
        opt(any::<u32>()),
        opt(text()),
        opt(text()),
        opt(data()),
        vec(1..=268_435_455u32, 0..3),
        opt(any::<u32>()),
        opt(text()),
        opt(any::<u16>()),
        opt(text()),
    );
    let b = (
        opt(data()),
        opt(flag()),
        opt(any::<u32>()),
        opt(flag()),
        opt(text()),
        opt(text()),
        opt(text()),
        opt(1..=u16::MAX),
        opt(any::<u16>()),
        opt(any::<u16>()),
    );
    let c = (
        opt(flag()),
        opt(flag()),
        vec((text(), text()), 0..3),
        opt(1..=u32::MAX),
        opt(flag()),
        opt(flag()),
        opt(flag()),
    );
    (a, b, c)
        .prop_map(|(a, b, c)| Properties {
            payload_format_indicator: a.0,
            message_expiry_interval: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifiers: a.5,
            session_expiry_interval: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive: a.8,
            authentication_method: a.9,
            authentication_data: b.0,
            request_problem_information: b.1,
            will_delay_interval: b.2,
            request_response_information: b.3,
            response_information: b.4,
            server_reference: b.5,
            reason_string: b.6,
            receive_maximum: b.7,
            topic_alias_maximum: b.8,
            topic_alias: b.9,
            maximum_qos: c.0,
            retain_available: c.1,
            user_properties: c.2,
            maximum_packet_size: c.3,
            wildcard_subscription_available: c.4,
            subscription_identifier_available: c.5,
            shared_subscription_available: c.6,
        })
        .boxed()
}

/// Clears every property `owner` may not carry (the encoder would skip them).
fn only_allowed(mut p: Properties, owner: PropertyOwner) -> Properties {
    fn keep<T>(slot: &mut Option<T>, owner: PropertyOwner, id: u8) {
        if !owner.allows(id) {
            *slot = None;
        }
    }
    keep(&mut p.payload_format_indicator, owner, 0x01);
    keep(&mut p.message_expiry_interval, owner, 0x02);
    keep(&mut p.content_type, owner, 0x03);
    keep(&mut p.response_topic, owner, 0x08);
    keep(&mut p.correlation_data, owner, 0x09);
    match owner {
        PropertyOwner::Publish => {}
        PropertyOwner::Subscribe => p.subscription_identifiers.truncate(1),
        _ => p.subscription_identifiers.clear(),
    }
    keep(&mut p.session_expiry_interval, owner, 0x11);
    keep(&mut p.assigned_client_identifier, owner, 0x12);
    keep(&mut p.server_keep_alive, owner, 0x13);
    keep(&mut p.authentication_method, owner, 0x15);
    keep(&mut p.authentication_data, owner, 0x16);
    keep(&mut p.request_problem_information, owner, 0x17);
    keep(&mut p.will_delay_interval, owner, 0x18);
    keep(&mut p.request_response_information, owner, 0x19);
    keep(&mut p.response_information, owner, 0x1A);
    keep(&mut p.server_reference, owner, 0x1C);
    keep(&mut p.reason_string, owner, 0x1F);
    keep(&mut p.receive_maximum, owner, 0x21);
    keep(&mut p.topic_alias_maximum, owner, 0x22);
    keep(&mut p.topic_alias, owner, 0x23);
    keep(&mut p.maximum_qos, owner, 0x24);
    keep(&mut p.retain_available, owner, 0x25);
    keep(&mut p.maximum_packet_size, owner, 0x27);
    keep(&mut p.wildcard_subscription_available, owner, 0x28);
    keep(&mut p.subscription_identifier_available, owner, 0x29);
    keep(&mut p.shared_subscription_available, owner, 0x2A);
    p
}

fn properties(version: ProtocolVersion, owner: PropertyOwner) -> BoxedStrategy<Properties> {
    if version.is_v5() {
        any_properties()
            .prop_map(move |p| only_allowed(p, owner))
            .boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

/// Reason codes the spec defines for `owner` in v5; in v3 what the decoder can return.
fn reason(version: ProtocolVersion, owner: PropertyOwner) -> BoxedStrategy<ReasonCode> {
    use PropertyOwner as O;
    let codes: Vec<u8> = match (version.is_v5(), owner) {
        (false, O::ConnAck) => vec![0x00, 0x84, 0x85, 0x88, 0x86, 0x87],
        (false, O::SubAck) => vec![0x00, 0x01, 0x02, 0x80],
        (false, _) => vec![0x00],
        (true, O::ConnAck) => vec![
            0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
            0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
        ],
        (true, O::PubAck | O::PubRec) => vec![0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
        (true, O::PubRel | O::PubComp) => vec![0x00, 0x92],
        (true, O::SubAck) => vec![
            0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
        ],
        (true, O::UnsubAck) => vec![0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91],
        (true, O::Disconnect) => {
            let mut v = vec![
                0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E,
            ];
            v.extend([
                0x8F, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C,
            ]);
            v.extend([0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2]);
            v
        }
        (true, O::Auth) => vec![0x00, 0x18, 0x19],
        (true, _) => vec![0x00],
    };
    select(codes).prop_map(ReasonCode).boxed()
}

fn topic() -> BoxedStrategy<Bytes> {
    "[a-z/+#é]{1,8}"
        .prop_map(|s| Bytes::from(s.into_bytes()))
        .boxed()
}

fn connect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    use PropertyOwner as O;
    let will = (
        topic(),
        data(),
        qos(),
        any::<bool>(),
        properties(version, O::Will),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    let fields = (
        any::<bool>(),
        any::<u16>(),
        properties(version, O::Connect),
        text(),
    );
    let credentials = (opt(text()), opt(data()));
    (fields, opt(will), credentials)
        .prop_map(
            move |(
                (clean_start, keep_alive, properties, client_id),
                will,
                (username, password),
            )| {
                // Only v5 allows a password without a user name.
                let password = password.filter(|_| version.is_v5() || username.is_some());
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive,
                    properties,
                    client_id,
                    will,
                    username,
                    password,
                }))
            },
        )
        .boxed()
}

fn publish(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let head = (
        any::<bool>(),
        qos(),
        any::<bool>(),
        prop_oneof![topic(), Just(Bytes::new())],
    );
    let body = (
        packet_id(),
        properties(version, PropertyOwner::Publish),
        data(),
    );
    (head, body)
        .prop_map(
            move |((dup, qos, retain, topic), (id, properties, payload))| {
                let at_most_once = qos == QoS::AtMostOnce;
                // An empty topic needs a Topic Alias (v5) and is never valid in v3.
                let topic = if topic.is_empty() && properties.topic_alias.is_none() {
                    Bytes::from_static(b"t")
                } else {
                    topic
                };
                Packet::Publish(Publish {
                    dup: dup && !(version.is_v5() && at_most_once),
                    qos,
                    retain,
                    topic,
                    packet_id: if at_most_once { None } else { Some(id) },
                    properties,
                    payload,
                })
            },
        )
        .boxed()
}

fn pub_resp(version: ProtocolVersion, owner: PropertyOwner) -> BoxedStrategy<PubResp> {
    (
        packet_id(),
        reason(version, owner),
        properties(version, owner),
    )
        .prop_map(|(packet_id, reason, properties)| PubResp {
            packet_id,
            reason,
            properties,
        })
        .boxed()
}

fn subscription_options(version: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    let handling = select(vec![
        RetainHandling::SendAlways,
        RetainHandling::SendIfNew,
        RetainHandling::Never,
    ]);
    (qos(), any::<bool>(), any::<bool>(), handling)
        .prop_map(
            move |(qos, no_local, retain_as_published, retain_handling)| {
                if version.is_v5() {
                    SubscriptionOptions {
                        qos,
                        no_local,
                        retain_as_published,
                        retain_handling,
                    }
                } else {
                    SubscriptionOptions {
                        qos,
                        ..SubscriptionOptions::default()
                    }
                }
            },
        )
        .boxed()
}

/// Any packet valid in `version`.
pub(super) fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    use PropertyOwner as O;
    let v = version;
    let connack = (
        any::<bool>(),
        reason(v, O::ConnAck),
        properties(v, O::ConnAck),
    )
        .prop_map(move |(session_present, reason, properties)| {
            Packet::ConnAck(ConnAck {
                session_present: session_present && version != V3_1,
                reason,
                properties,
            })
        });
    let subscribe = (
        packet_id(),
        properties(v, O::Subscribe),
        vec((text(), subscription_options(v)), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        });
    let suback = (
        packet_id(),
        properties(v, O::SubAck),
        vec(reason(v, O::SubAck), 1..4),
    )
        .prop_map(|(packet_id, properties, reasons)| {
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                reasons,
            })
        });
    let unsubscribe = (
        packet_id(),
        properties(v, O::Unsubscribe),
        vec(text(), 1..4),
    )
        .prop_map(|(packet_id, properties, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        });
    let unsuback_reasons = if v.is_v5() { 1..4 } else { 0..1 };
    let unsuback = (
        packet_id(),
        properties(v, O::UnsubAck),
        vec(reason(v, O::UnsubAck), unsuback_reasons),
    )
        .prop_map(|(packet_id, properties, reasons)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                reasons,
            })
        });
    let disconnect = (reason(v, O::Disconnect), properties(v, O::Disconnect))
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }));
    let mut choices: Vec<BoxedStrategy<Packet>> = vec![
        connect(v),
        connack.boxed(),
        publish(v),
        pub_resp(v, O::PubAck).prop_map(Packet::PubAck).boxed(),
        pub_resp(v, O::PubRec).prop_map(Packet::PubRec).boxed(),
        pub_resp(v, O::PubRel).prop_map(Packet::PubRel).boxed(),
        pub_resp(v, O::PubComp).prop_map(Packet::PubComp).boxed(),
        subscribe.boxed(),
        suback.boxed(),
        unsubscribe.boxed(),
        unsuback.boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect.boxed(),
    ];
    if v.is_v5() {
        let auth = (reason(v, O::Auth), properties(v, O::Auth))
            .prop_map(|(reason, properties)| Packet::Auth(Auth { reason, properties }));
        choices.push(auth.boxed());
    }
    proptest::strategy::Union::new(choices).boxed()
}
