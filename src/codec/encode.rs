//! Packets to bytes, for all three protocol versions.
//!
//! Each body is written twice through the same code: once into a byte counter to learn
//! the remaining length and to surface every `EncodeError`, then into the output. So the
//! output is never left with half a packet, and the length prefix always matches.
//! The encoder writes what it is given; deciding what to send is the session's job.

use bytes::{BufMut, BytesMut};

use super::error::EncodeError;
use super::packet::*;
use super::properties::{encode_properties, properties_len, Properties, PropertyOwner};
use super::reason::ReasonCode;
use super::wire::{put_binary, put_string, put_varint, ByteCount, Sink, VARINT_MAX};

/// See `codec::encode`.
pub(crate) fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let first = first_byte(packet, version)?;
    let mut count = ByteCount::default();
    body(packet, version, &mut count)?;
    let remaining = count.0;
    let remaining_u32 = u32::try_from(remaining)
        .ok()
        .filter(|&n| n <= VARINT_MAX)
        .ok_or(EncodeError::PacketTooLarge { size: remaining })?;
    out.reserve(1 + 4 + remaining);
    let start = out.len();
    BufMut::put_u8(out, first);
    let written = put_varint(out, remaining_u32, "remaining length")
        .and_then(|()| body(packet, version, out));
    if let Err(e) = written {
        // Unreachable in practice (the counting pass saw the same data), but never leave
        // a partial packet in a buffer that is about to be written to a socket.
        out.truncate(start);
        return Err(e);
    }
    debug_assert_eq!(out.len() - start, 1 + varint_len(remaining_u32) + remaining);
    Ok(())
}

fn varint_len(value: u32) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Packet type in the high nibble, flags in the low one.
fn first_byte(packet: &Packet, version: ProtocolVersion) -> Result<u8, EncodeError> {
    Ok(match packet {
        Packet::Connect(_) => 0x10,
        Packet::ConnAck(_) => 0x20,
        Packet::Publish(p) => 0x30 | u8::from(p.dup) << 3 | (p.qos as u8) << 1 | u8::from(p.retain),
        Packet::PubAck(_) => 0x40,
        Packet::PubRec(_) => 0x50,
        Packet::PubRel(_) => 0x62,
        Packet::PubComp(_) => 0x70,
        Packet::Subscribe(_) => 0x82,
        Packet::SubAck(_) => 0x90,
        Packet::Unsubscribe(_) => 0xA2,
        Packet::UnsubAck(_) => 0xB0,
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(_) => 0xE0,
        Packet::Auth(_) if !version.is_v5() => {
            return Err(EncodeError::NotInVersion {
                packet: "AUTH",
                version,
            });
        }
        Packet::Auth(_) => 0xF0,
    })
}

fn body<S: Sink>(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut S,
) -> Result<(), EncodeError> {
    use PropertyOwner as O;
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => connect(c, out),
        Packet::ConnAck(c) => connack(c, version, out),
        Packet::Publish(p) => publish(p, v5, out),
        Packet::PubAck(p) => pub_resp(p, v5, O::PubAck, out),
        Packet::PubRec(p) => pub_resp(p, v5, O::PubRec, out),
        Packet::PubRel(p) => pub_resp(p, v5, O::PubRel, out),
        Packet::PubComp(p) => pub_resp(p, v5, O::PubComp, out),
        Packet::Subscribe(s) => subscribe(s, v5, out),
        Packet::SubAck(s) => suback(s, v5, out),
        Packet::Unsubscribe(u) => unsubscribe(u, v5, out),
        Packet::UnsubAck(u) => unsuback(u, v5, out),
        Packet::PingReq | Packet::PingResp => Ok(()),
        Packet::Disconnect(d) if v5 => {
            reason_and_properties(d.reason, &d.properties, O::Disconnect, out)
        }
        Packet::Disconnect(_) => Ok(()),
        Packet::Auth(a) => reason_and_properties(a.reason, &a.properties, O::Auth, out),
    }
}

/// CONNECT is written in the version it names (`c.protocol`), whatever the `version`
/// argument says: the CONNECT is what tells the server the version.
fn connect<S: Sink>(c: &Connect, out: &mut S) -> Result<(), EncodeError> {
    let v5 = c.protocol.is_v5();
    let name: &str = match c.protocol {
        ProtocolVersion::V3_1 => "MQIsdp",
        _ => "MQTT",
    };
    put_string(out, name, "protocol name")?;
    out.put_u8(c.protocol.level());
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos as u8) << 3 | u8::from(w.retain) << 5;
    }
    flags |= u8::from(c.password.is_some()) << 6 | u8::from(c.username.is_some()) << 7;
    out.put_u8(flags);
    out.put_u16(c.keep_alive);
    if v5 {
        encode_properties(&c.properties, PropertyOwner::Connect, out)?;
    }
    put_string(out, &c.client_id, "client identifier")?;
    if let Some(w) = &c.will {
        if v5 {
            encode_properties(&w.properties, PropertyOwner::Will, out)?;
        }
        put_binary(out, &w.topic, "will topic")?;
        put_binary(out, &w.payload, "will payload")?;
    }
    if let Some(u) = &c.username {
        put_string(out, u, "user name")?;
    }
    if let Some(p) = &c.password {
        put_binary(out, p, "password")?;
    }
    Ok(())
}

fn connack<S: Sink>(c: &ConnAck, version: ProtocolVersion, out: &mut S) -> Result<(), EncodeError> {
    // 3.1 has no Session Present; its first byte is reserved.
    let session_present = c.session_present && version != ProtocolVersion::V3_1;
    out.put_u8(u8::from(session_present));
    if version.is_v5() {
        out.put_u8(c.reason.0);
        encode_properties(&c.properties, PropertyOwner::ConnAck, out)
    } else {
        out.put_u8(c.reason.to_v3_connack());
        Ok(())
    }
}

fn publish<S: Sink>(p: &Publish, v5: bool, out: &mut S) -> Result<(), EncodeError> {
    put_binary(out, &p.topic, "topic name")?;
    if p.qos != QoS::AtMostOnce {
        out.put_u16(p.packet_id.ok_or(EncodeError::MissingPacketId)?);
    }
    if v5 {
        encode_properties(&p.properties, PropertyOwner::Publish, out)?;
    }
    out.put_slice(&p.payload);
    Ok(())
}

fn pub_resp<S: Sink>(
    p: &PubResp,
    v5: bool,
    owner: PropertyOwner,
    out: &mut S,
) -> Result<(), EncodeError> {
    out.put_u16(p.packet_id);
    if v5 {
        reason_and_properties(p.reason, &p.properties, owner, out)?;
    }
    Ok(())
}

/// v5 tail of acks, DISCONNECT and AUTH: the spec lets the sender drop the properties
/// when empty, and the reason code too when it is Success, and that is what peers expect.
fn reason_and_properties<S: Sink>(
    reason: ReasonCode,
    properties: &Properties,
    owner: PropertyOwner,
    out: &mut S,
) -> Result<(), EncodeError> {
    let has_properties = properties_len(properties, owner)? > 0;
    if reason == ReasonCode::Success && !has_properties {
        return Ok(());
    }
    out.put_u8(reason.0);
    if has_properties {
        encode_properties(properties, owner, out)?;
    }
    Ok(())
}

fn subscribe<S: Sink>(s: &Subscribe, v5: bool, out: &mut S) -> Result<(), EncodeError> {
    out.put_u16(s.packet_id);
    if v5 {
        encode_properties(&s.properties, PropertyOwner::Subscribe, out)?;
    }
    for (filter, o) in &s.filters {
        put_string(out, filter, "topic filter")?;
        let mut options = o.qos as u8;
        if v5 {
            options |= u8::from(o.no_local) << 2
                | u8::from(o.retain_as_published) << 3
                | (o.retain_handling as u8) << 4;
        }
        out.put_u8(options);
    }
    Ok(())
}

fn suback<S: Sink>(s: &SubAck, v5: bool, out: &mut S) -> Result<(), EncodeError> {
    out.put_u16(s.packet_id);
    if v5 {
        encode_properties(&s.properties, PropertyOwner::SubAck, out)?;
    }
    for reason in &s.reasons {
        let code = match reason.0 {
            // v3 knows only granted QoS 0..2 and one failure code.
            code @ 0x00..=0x02 => code,
            _ if !v5 => 0x80,
            code => code,
        };
        out.put_u8(code);
    }
    Ok(())
}

fn unsubscribe<S: Sink>(u: &Unsubscribe, v5: bool, out: &mut S) -> Result<(), EncodeError> {
    out.put_u16(u.packet_id);
    if v5 {
        encode_properties(&u.properties, PropertyOwner::Unsubscribe, out)?;
    }
    for filter in &u.filters {
        put_string(out, filter, "topic filter")?;
    }
    Ok(())
}

fn unsuback<S: Sink>(u: &UnsubAck, v5: bool, out: &mut S) -> Result<(), EncodeError> {
    out.put_u16(u.packet_id);
    if v5 {
        encode_properties(&u.properties, PropertyOwner::UnsubAck, out)?;
        for reason in &u.reasons {
            out.put_u8(reason.0);
        }
    }
    Ok(())
}
