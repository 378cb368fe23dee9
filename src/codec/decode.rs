//! Bytes to packets: framing (fixed header, size limit, "need more bytes") and one
//! function per packet body, for all three protocol versions.
//!
//! The decoder is the broker's first line against hostile input: it checks every rule
//! the specs put on the wire format, never panics, never allocates more than the packet
//! it was handed holds, and leaves policy (topic validity, client id length, alias
//! ranges, authorization) to the session.

use bytes::{Buf, Bytes, BytesMut};

use super::error::DecodeError;
use super::packet::*;
use super::properties::{decode_properties, Properties, PropertyOwner};
use super::reason::ReasonCode;
use super::wire::{varint_prefix, Reader};

const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;
const AUTH: u8 = 15;

/// Name of a fixed-header packet type, for errors.
fn type_name(packet_type: u8) -> &'static str {
    match packet_type {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => "reserved packet type 0",
    }
}

/// See `codec::decode`.
pub(crate) fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let (packet_type, flags) = (first >> 4, first & 0x0F);
    // Checked on the first byte so that garbage is refused before waiting for a body.
    check_fixed_header(packet_type, flags, version)?;
    let Some(body) = take_frame(buf, max_packet_size)? else {
        return Ok(None);
    };
    decode_body(packet_type, flags, Reader::new(body), version).map(Some)
}

/// See `codec::decode_connect`.
pub(crate) fn decode_connect(
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let (packet_type, flags) = (first >> 4, first & 0x0F);
    if packet_type != CONNECT {
        return Err(DecodeError::ExpectedConnect(type_name(packet_type)));
    }
    if flags != 0 {
        return Err(DecodeError::InvalidFlags {
            packet: "CONNECT",
            flags,
        });
    }
    let Some(body) = take_frame(buf, max_packet_size)? else {
        return Ok(None);
    };
    Ok(Some(Packet::Connect(Box::new(connect(Reader::new(body))?))))
}

/// Fixed-header flags per type [MQTT-2.2.2-1, MQTT-2.1.3-1]: PUBREL, SUBSCRIBE and
/// UNSUBSCRIBE carry 0b0010, PUBLISH carries DUP/QoS/RETAIN, all others 0.
fn check_fixed_header(
    packet_type: u8,
    flags: u8,
    version: ProtocolVersion,
) -> Result<(), DecodeError> {
    match packet_type {
        0 => Err(DecodeError::InvalidPacketType(0)),
        AUTH if !version.is_v5() => Err(DecodeError::InvalidPacketType(AUTH)),
        PUBLISH => {
            let qos = publish_qos(flags)?;
            // A Protocol Error in v5. 3.1.1 states the rule [MQTT-3.3.1-2] without a
            // consequence, so v3 accepts it (and keeps the flag) to tolerate lax clients.
            if version.is_v5() && qos == QoS::AtMostOnce && flags & 0x08 != 0 {
                return Err(DecodeError::Protocol(
                    "PUBLISH with QoS 0 has the DUP flag set",
                ));
            }
            Ok(())
        }
        // MQTT 3.1 defines DUP on these too (they are QoS 1 messages there), so a 3.1
        // client may set it when it retries one.
        6 | 8 | 10 if flags == 0b0010 || (version == ProtocolVersion::V3_1 && flags == 0b1010) => {
            Ok(())
        }
        6 | 8 | 10 => Err(DecodeError::InvalidFlags {
            packet: type_name(packet_type),
            flags,
        }),
        _ if flags != 0 => Err(DecodeError::InvalidFlags {
            packet: type_name(packet_type),
            flags,
        }),
        _ => Ok(()),
    }
}

fn publish_qos(flags: u8) -> Result<QoS, DecodeError> {
    let bits = (flags >> 1) & 0x03;
    QoS::from_u8(bits).ok_or(DecodeError::InvalidQoS(bits))
}

/// Splits one whole packet off the front of `buf` and returns its body (after the fixed
/// header). `Ok(None)` leaves `buf` untouched. The size limit is applied as soon as the
/// remaining length is known, so an oversized packet is refused before it is buffered.
fn take_frame(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Bytes>, DecodeError> {
    let Some((remaining_len, len_bytes)) = varint_prefix(buf.get(1..).unwrap_or_default())? else {
        return Ok(None);
    };
    let header_len = 1 + len_bytes;
    let size = header_len + remaining_len as usize;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(header_len);
    Ok(Some(frame))
}

fn decode_body(
    packet_type: u8,
    flags: u8,
    r: Reader,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    use PropertyOwner as O;
    Ok(match packet_type {
        1 => Packet::Connect(Box::new(connect(r)?)),
        2 => Packet::ConnAck(connack(r, version)?),
        3 => Packet::Publish(publish(r, flags, version)?),
        4 => Packet::PubAck(pub_resp(r, version, O::PubAck)?),
        5 => Packet::PubRec(pub_resp(r, version, O::PubRec)?),
        6 => Packet::PubRel(pub_resp(r, version, O::PubRel)?),
        7 => Packet::PubComp(pub_resp(r, version, O::PubComp)?),
        8 => Packet::Subscribe(subscribe(r, version)?),
        9 => Packet::SubAck(suback(r, version)?),
        10 => Packet::Unsubscribe(unsubscribe(r, version)?),
        11 => Packet::UnsubAck(unsuback(r, version)?),
        12 => {
            r.finish("PINGREQ has a body")?;
            Packet::PingReq
        }
        13 => {
            r.finish("PINGRESP has a body")?;
            Packet::PingResp
        }
        14 => {
            let (reason, properties) = reason_and_properties(r, version, O::Disconnect)?;
            Packet::Disconnect(Disconnect { reason, properties })
        }
        15 => {
            let (reason, properties) = reason_and_properties(r, version, O::Auth)?;
            Packet::Auth(Auth { reason, properties })
        }
        other => return Err(DecodeError::InvalidPacketType(other)),
    })
}

/// CONNECT; the protocol version comes from the packet itself, whatever the connection
/// thought it was (a second CONNECT is the session's protocol error to report).
fn connect(mut r: Reader) -> Result<Connect, DecodeError> {
    let name = r.binary("CONNECT protocol name truncated")?;
    let level = r.u8("CONNECT protocol level missing")?;
    let protocol = match (&name[..], level) {
        (b"MQIsdp", 3) => ProtocolVersion::V3_1,
        (b"MQTT", 4) => ProtocolVersion::V3_1_1,
        (b"MQTT", 5) => ProtocolVersion::V5,
        (b"MQTT", _) | (b"MQIsdp", _) => {
            return Err(DecodeError::UnsupportedProtocolVersion(level))
        }
        _ => {
            return Err(DecodeError::InvalidProtocolName(
                String::from_utf8_lossy(&name).into_owned(),
            ))
        }
    };
    let v5 = protocol.is_v5();
    let flags = r.u8("CONNECT flags missing")?;
    if flags & 0x01 != 0 {
        // [MQTT-3.1.2-3]: "If the reserved flag is not 0 it is a Malformed Packet".
        return Err(DecodeError::Malformed(
            "CONNECT reserved flag (bit 0) is set",
        ));
    }
    let clean_start = flags & 0x02 != 0;
    let will_flag = flags & 0x04 != 0;
    let will_qos_bits = (flags >> 3) & 0x03;
    let will_retain = flags & 0x20 != 0;
    let password_flag = flags & 0x40 != 0;
    let username_flag = flags & 0x80 != 0;
    let will_qos = QoS::from_u8(will_qos_bits).ok_or(DecodeError::InvalidQoS(will_qos_bits))?;
    if !will_flag && (will_qos_bits != 0 || will_retain) {
        // [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-15].
        return Err(DecodeError::Protocol(
            "CONNECT sets will QoS or will retain without the will flag",
        ));
    }
    if password_flag && !username_flag && !v5 {
        // [MQTT-3.1.2-22]; MQTT 5 allows a password without a user name.
        return Err(DecodeError::Malformed(
            "CONNECT sets the password flag without the user name flag",
        ));
    }
    let keep_alive = r.u16("CONNECT keep alive truncated")?;
    let properties = if v5 {
        decode_properties(&mut r, PropertyOwner::Connect)?
    } else {
        Properties::default()
    };
    let client_id = r.string("CONNECT client identifier truncated")?;
    let will = if will_flag {
        let properties = if v5 {
            decode_properties(&mut r, PropertyOwner::Will)?
        } else {
            Properties::default()
        };
        let topic = r.utf8("CONNECT will topic truncated")?;
        let payload = r.binary("CONNECT will payload truncated")?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("CONNECT user name truncated")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary("CONNECT password truncated")?)
    } else {
        None
    };
    r.finish("CONNECT has bytes after its last field")?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        properties,
        client_id,
        will,
        username,
        password,
    })
}

fn connack(mut r: Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let flags = r.u8("CONNACK flags missing")?;
    let code = r.u8("CONNACK return code missing")?;
    // In 3.1 the first byte is reserved and unused; 3.1.1 and 5 put Session Present in
    // bit 0 and reserve the rest [MQTT-3.2.2-1].
    let session_present = match version {
        ProtocolVersion::V3_1 => false,
        _ if flags & 0xFE != 0 => {
            return Err(DecodeError::Protocol(
                "CONNACK acknowledge flags has reserved bits set",
            ));
        }
        _ => flags & 0x01 != 0,
    };
    let (reason, properties) = if version.is_v5() {
        let reason = reason_code(PropertyOwner::ConnAck, code)?;
        (reason, decode_properties(&mut r, PropertyOwner::ConnAck)?)
    } else {
        if code > 5 {
            return Err(DecodeError::InvalidReasonCode {
                packet: "CONNACK",
                code,
            });
        }
        (ReasonCode::from_v3_connack(code), Properties::default())
    };
    r.finish("CONNACK has bytes after its last field")?;
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

fn publish(mut r: Reader, flags: u8, version: ProtocolVersion) -> Result<Publish, DecodeError> {
    let qos = publish_qos(flags)?;
    let topic = r.utf8("PUBLISH topic name truncated")?;
    let packet_id = match qos {
        QoS::AtMostOnce => None,
        _ => Some(packet_id(&mut r)?),
    };
    let properties = if version.is_v5() {
        decode_properties(&mut r, PropertyOwner::Publish)?
    } else {
        Properties::default()
    };
    if topic.is_empty() {
        if !version.is_v5() {
            // [MQTT-4.7.3-1]: topic names are at least one character long.
            return Err(DecodeError::Protocol("PUBLISH topic name is empty"));
        }
        if properties.topic_alias.is_none() {
            // MQTT 5 section 3.3.2.1: empty only when a Topic Alias stands in for it.
            return Err(DecodeError::Protocol(
                "PUBLISH topic name is empty and has no Topic Alias",
            ));
        }
    }
    Ok(Publish {
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

/// A non-zero packet identifier [MQTT-2.2.1-3].
fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    match r.u16("packet identifier truncated")? {
        0 => Err(DecodeError::ZeroPacketId),
        id => Ok(id),
    }
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP. In v5 the reason code and properties may be left off
/// when they are Success and empty (remaining length 2, or 3 without properties).
fn pub_resp(
    mut r: Reader,
    version: ProtocolVersion,
    owner: PropertyOwner,
) -> Result<PubResp, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let (reason, properties) = reason_and_properties(r, version, owner)?;
    Ok(PubResp {
        packet_id,
        reason,
        properties,
    })
}

/// The optional tail of acks, DISCONNECT and AUTH: reason code then properties, each
/// omitted when the body ends before it (v5), nothing at all in v3.
fn reason_and_properties(
    mut r: Reader,
    version: ProtocolVersion,
    owner: PropertyOwner,
) -> Result<(ReasonCode, Properties), DecodeError> {
    if !version.is_v5() {
        r.finish("packet is longer than its fields")?;
        return Ok((ReasonCode::Success, Properties::default()));
    }
    let reason = if r.is_empty() {
        ReasonCode::Success
    } else {
        reason_code(owner, r.u8("reason code missing")?)?
    };
    let properties = if r.is_empty() {
        Properties::default()
    } else {
        decode_properties(&mut r, owner)?
    };
    r.finish("packet has bytes after its properties")?;
    Ok((reason, properties))
}

fn subscribe(mut r: Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let properties = if version.is_v5() {
        decode_properties(&mut r, PropertyOwner::Subscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string("SUBSCRIBE topic filter truncated")?;
        let options = r.u8("SUBSCRIBE subscription options missing")?;
        filters.push((filter, subscription_options(options, version)?));
    }
    if filters.is_empty() {
        // [MQTT-3.8.3-3] (3.1.1), and a Protocol Error in 5.0 section 3.8.3.
        return Err(DecodeError::Protocol("SUBSCRIBE has no topic filters"));
    }
    Ok(Subscribe {
        packet_id,
        properties,
        filters,
    })
}

/// v3: only the requested QoS, upper six bits reserved [MQTT-3.8.3-4]. v5: QoS, No Local,
/// Retain As Published, Retain Handling, bits 6-7 reserved [MQTT-3.8.3-5].
fn subscription_options(
    options: u8,
    version: ProtocolVersion,
) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = if version.is_v5() { 0xC0 } else { 0xFC };
    if options & reserved != 0 {
        return Err(DecodeError::Malformed(
            "SUBSCRIBE subscription options has reserved bits set",
        ));
    }
    let qos_bits = options & 0x03;
    let qos = QoS::from_u8(qos_bits).ok_or(DecodeError::InvalidQoS(qos_bits))?;
    let retain_handling = match (options >> 4) & 0x03 {
        0 => RetainHandling::SendAlways,
        1 => RetainHandling::SendIfNew,
        2 => RetainHandling::Never,
        _ => return Err(DecodeError::Protocol("SUBSCRIBE Retain Handling is 3")),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: options & 0x04 != 0,
        retain_as_published: options & 0x08 != 0,
        retain_handling,
    })
}

fn suback(mut r: Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let properties = if version.is_v5() {
        decode_properties(&mut r, PropertyOwner::SubAck)?
    } else {
        Properties::default()
    };
    let mut reasons = Vec::new();
    while !r.is_empty() {
        let code = r.u8("SUBACK reason code missing")?;
        let reason = if version.is_v5() {
            reason_code(PropertyOwner::SubAck, code)?
        } else if matches!(code, 0x00..=0x02 | 0x80) {
            ReasonCode(code)
        } else {
            return Err(DecodeError::InvalidReasonCode {
                packet: "SUBACK",
                code,
            });
        };
        reasons.push(reason);
    }
    if reasons.is_empty() {
        return Err(DecodeError::Protocol("SUBACK has no reason codes"));
    }
    Ok(SubAck {
        packet_id,
        properties,
        reasons,
    })
}

fn unsubscribe(mut r: Reader, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    let properties = if version.is_v5() {
        decode_properties(&mut r, PropertyOwner::Unsubscribe)?
    } else {
        Properties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string("UNSUBSCRIBE topic filter truncated")?);
    }
    if filters.is_empty() {
        // [MQTT-3.10.3-2] (3.1.1), and a Protocol Error in 5.0 section 3.10.3.
        return Err(DecodeError::Protocol("UNSUBSCRIBE has no topic filters"));
    }
    Ok(Unsubscribe {
        packet_id,
        properties,
        filters,
    })
}

fn unsuback(mut r: Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
    let packet_id = packet_id(&mut r)?;
    if !version.is_v5() {
        r.finish("UNSUBACK is longer than its packet identifier")?;
        return Ok(UnsubAck {
            packet_id,
            properties: Properties::default(),
            reasons: Vec::new(),
        });
    }
    let properties = decode_properties(&mut r, PropertyOwner::UnsubAck)?;
    let mut reasons = Vec::new();
    while !r.is_empty() {
        reasons.push(reason_code(
            PropertyOwner::UnsubAck,
            r.u8("UNSUBACK reason code missing")?,
        )?);
    }
    if reasons.is_empty() {
        return Err(DecodeError::Protocol("UNSUBACK has no reason codes"));
    }
    Ok(UnsubAck {
        packet_id,
        properties,
        reasons,
    })
}

/// A v5 reason code, checked against the codes the spec defines for that packet.
fn reason_code(packet: PropertyOwner, code: u8) -> Result<ReasonCode, DecodeError> {
    use PropertyOwner as O;
    let valid = match packet {
        O::ConnAck => {
            matches!(code, 0x00 | 0x80..=0x8A | 0x8C | 0x90 | 0x95 | 0x97 | 0x99..=0x9D | 0x9F)
        }
        O::PubAck | O::PubRec => matches!(
            code,
            0x00 | 0x10 | 0x80 | 0x83 | 0x87 | 0x90 | 0x91 | 0x97 | 0x99
        ),
        O::PubRel | O::PubComp => matches!(code, 0x00 | 0x92),
        O::SubAck => matches!(
            code,
            0x00..=0x02 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2
        ),
        O::UnsubAck => matches!(code, 0x00 | 0x11 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91),
        O::Disconnect => {
            matches!(code, 0x00 | 0x04 | 0x80..=0x83 | 0x87 | 0x89 | 0x8B | 0x8D..=0x90 | 0x93..=0xA2)
        }
        O::Auth => matches!(code, 0x00 | 0x18 | 0x19),
        O::Connect | O::Will | O::Publish | O::Subscribe | O::Unsubscribe => false,
    };
    if valid {
        Ok(ReasonCode(code))
    } else {
        Err(DecodeError::InvalidReasonCode {
            packet: packet.name(),
            code,
        })
    }
}
