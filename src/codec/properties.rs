//! MQTT 5 properties as a typed struct (absent = `None`/empty).
//!
//! Encoding/decoding of the property block lives in this file too (see `decode_properties`
//! and `encode_properties`); which properties a packet may carry is checked by the decoder.

use bytes::Bytes;

use super::error::{DecodeError, EncodeError};
use super::wire::{put_binary, put_string, put_varint, ByteCount, Reader, Sink};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01
    pub payload_format_indicator: Option<u8>,
    /// 0x02, seconds
    pub message_expiry_interval: Option<u32>,
    /// 0x03
    pub content_type: Option<String>,
    /// 0x08
    pub response_topic: Option<String>,
    /// 0x09
    pub correlation_data: Option<Bytes>,
    /// 0x0B, may appear several times in PUBLISH (server to client)
    pub subscription_identifiers: Vec<u32>,
    /// 0x11, seconds
    pub session_expiry_interval: Option<u32>,
    /// 0x12
    pub assigned_client_identifier: Option<String>,
    /// 0x13, seconds
    pub server_keep_alive: Option<u16>,
    /// 0x15
    pub authentication_method: Option<String>,
    /// 0x16
    pub authentication_data: Option<Bytes>,
    /// 0x17
    pub request_problem_information: Option<u8>,
    /// 0x18, seconds
    pub will_delay_interval: Option<u32>,
    /// 0x19
    pub request_response_information: Option<u8>,
    /// 0x1A
    pub response_information: Option<String>,
    /// 0x1C
    pub server_reference: Option<String>,
    /// 0x1F
    pub reason_string: Option<String>,
    /// 0x21
    pub receive_maximum: Option<u16>,
    /// 0x22
    pub topic_alias_maximum: Option<u16>,
    /// 0x23
    pub topic_alias: Option<u16>,
    /// 0x24
    pub maximum_qos: Option<u8>,
    /// 0x25
    pub retain_available: Option<u8>,
    /// 0x26, in order of appearance
    pub user_properties: Vec<(String, String)>,
    /// 0x27
    pub maximum_packet_size: Option<u32>,
    /// 0x28
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }
}

/// Which property block is being read or written: the spec allows each property only in
/// some packets (MQTT 5.0 section 2.2.2.2), and the will has a block of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PropertyOwner {
    Connect,
    Will,
    ConnAck,
    Publish,
    PubAck,
    PubRec,
    PubRel,
    PubComp,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

impl PropertyOwner {
    pub(crate) fn name(self) -> &'static str {
        use PropertyOwner::*;
        match self {
            Connect => "CONNECT",
            Will => "CONNECT will properties",
            ConnAck => "CONNACK",
            Publish => "PUBLISH",
            PubAck => "PUBACK",
            PubRec => "PUBREC",
            PubRel => "PUBREL",
            PubComp => "PUBCOMP",
            Subscribe => "SUBSCRIBE",
            SubAck => "SUBACK",
            Unsubscribe => "UNSUBSCRIBE",
            UnsubAck => "UNSUBACK",
            Disconnect => "DISCONNECT",
            Auth => "AUTH",
        }
    }

    /// Whether property `id` may appear in this block. Unknown ids are never allowed.
    pub(crate) fn allows(self, id: u8) -> bool {
        use PropertyOwner::*;
        match id {
            0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(self, Publish | Will),
            0x0B => matches!(self, Publish | Subscribe),
            0x11 => matches!(self, Connect | ConnAck | Disconnect),
            0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => self == ConnAck,
            0x15 | 0x16 => matches!(self, Connect | ConnAck | Auth),
            0x17 | 0x19 => self == Connect,
            0x18 => self == Will,
            0x1C => matches!(self, ConnAck | Disconnect),
            0x1F => matches!(
                self,
                ConnAck
                    | PubAck
                    | PubRec
                    | PubRel
                    | PubComp
                    | SubAck
                    | UnsubAck
                    | Disconnect
                    | Auth
            ),
            0x21 | 0x22 | 0x27 => matches!(self, Connect | ConnAck),
            0x23 => self == Publish,
            0x26 => true,
            _ => false,
        }
    }
}

/// Stores a property that may appear once [MQTT-2.2.2-2 and each property's "It is a
/// Protocol Error to include ... more than once"].
fn set_once<T>(slot: &mut Option<T>, value: T, id: u8) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::DuplicateProperty(id));
    }
    *slot = Some(value);
    Ok(())
}

/// A byte property whose only valid values are 0 and 1 (a Protocol Error otherwise).
fn flag_byte(r: &mut Reader, invalid: &'static str) -> Result<u8, DecodeError> {
    let v = r.u8("property value truncated")?;
    if v > 1 {
        return Err(DecodeError::Protocol(invalid));
    }
    Ok(v)
}

/// Reads a property length and the block after it, checking each property against
/// `owner` and against the spec's value rules.
pub(crate) fn decode_properties(
    r: &mut Reader,
    owner: PropertyOwner,
) -> Result<Properties, DecodeError> {
    const TRUNC: &str = "property value truncated";
    let len = r.varint("property length truncated")?;
    let mut block = r.take(len as usize, "property length exceeds the packet")?;
    let mut p = Properties::default();
    while !block.is_empty() {
        // The identifier is formally a variable byte integer, but every defined id is
        // below 0x80, so a byte with the continuation bit is an unknown id either way.
        let id = block.u8("property identifier truncated")?;
        if !owner.allows(id) {
            return Err(DecodeError::InvalidProperty {
                packet: owner.name(),
                id,
            });
        }
        let b = &mut block;
        match id {
            0x01 => {
                let v = flag_byte(b, "Payload Format Indicator is not 0 or 1")?;
                set_once(&mut p.payload_format_indicator, v, id)?
            }
            0x02 => set_once(&mut p.message_expiry_interval, b.u32(TRUNC)?, id)?,
            0x03 => set_once(&mut p.content_type, b.string(TRUNC)?, id)?,
            0x08 => set_once(&mut p.response_topic, b.string(TRUNC)?, id)?,
            0x09 => set_once(&mut p.correlation_data, b.binary(TRUNC)?, id)?,
            0x0B => {
                let v = b.varint(TRUNC)?;
                if v == 0 {
                    return Err(DecodeError::Protocol("Subscription Identifier is 0"));
                }
                // Several are normal in a PUBLISH to a client that matched several
                // subscriptions; a SUBSCRIBE carries at most one.
                if owner != PropertyOwner::Publish && !p.subscription_identifiers.is_empty() {
                    return Err(DecodeError::DuplicateProperty(id));
                }
                p.subscription_identifiers.push(v);
            }
            0x11 => set_once(&mut p.session_expiry_interval, b.u32(TRUNC)?, id)?,
            0x12 => set_once(&mut p.assigned_client_identifier, b.string(TRUNC)?, id)?,
            0x13 => set_once(&mut p.server_keep_alive, b.u16(TRUNC)?, id)?,
            0x15 => set_once(&mut p.authentication_method, b.string(TRUNC)?, id)?,
            0x16 => set_once(&mut p.authentication_data, b.binary(TRUNC)?, id)?,
            0x17 => {
                let v = flag_byte(b, "Request Problem Information is not 0 or 1")?;
                set_once(&mut p.request_problem_information, v, id)?
            }
            0x18 => set_once(&mut p.will_delay_interval, b.u32(TRUNC)?, id)?,
            0x19 => {
                let v = flag_byte(b, "Request Response Information is not 0 or 1")?;
                set_once(&mut p.request_response_information, v, id)?
            }
            0x1A => set_once(&mut p.response_information, b.string(TRUNC)?, id)?,
            0x1C => set_once(&mut p.server_reference, b.string(TRUNC)?, id)?,
            0x1F => set_once(&mut p.reason_string, b.string(TRUNC)?, id)?,
            0x21 => {
                let v = b.u16(TRUNC)?;
                if v == 0 {
                    return Err(DecodeError::Protocol("Receive Maximum is 0"));
                }
                set_once(&mut p.receive_maximum, v, id)?
            }
            0x22 => set_once(&mut p.topic_alias_maximum, b.u16(TRUNC)?, id)?,
            0x23 => set_once(&mut p.topic_alias, b.u16(TRUNC)?, id)?,
            0x24 => {
                let v = flag_byte(b, "Maximum QoS is not 0 or 1")?;
                set_once(&mut p.maximum_qos, v, id)?
            }
            0x25 => {
                let v = flag_byte(b, "Retain Available is not 0 or 1")?;
                set_once(&mut p.retain_available, v, id)?
            }
            0x26 => {
                let key = b.string(TRUNC)?;
                let value = b.string(TRUNC)?;
                p.user_properties.push((key, value));
            }
            0x27 => {
                let v = b.u32(TRUNC)?;
                if v == 0 {
                    return Err(DecodeError::Protocol("Maximum Packet Size is 0"));
                }
                set_once(&mut p.maximum_packet_size, v, id)?
            }
            0x28 => {
                let v = flag_byte(b, "Wildcard Subscription Available is not 0 or 1")?;
                set_once(&mut p.wildcard_subscription_available, v, id)?
            }
            0x29 => {
                let v = flag_byte(b, "Subscription Identifier Available is not 0 or 1")?;
                set_once(&mut p.subscription_identifier_available, v, id)?
            }
            0x2A => {
                let v = flag_byte(b, "Shared Subscription Available is not 0 or 1")?;
                set_once(&mut p.shared_subscription_available, v, id)?
            }
            // `allows` admitted only the ids above.
            _ => {
                return Err(DecodeError::InvalidProperty {
                    packet: owner.name(),
                    id,
                })
            }
        }
    }
    Ok(p)
}

/// Number of bytes the properties allowed in `owner` take, without the length prefix.
/// Zero means the block is empty, which lets acks omit it.
pub(crate) fn properties_len(p: &Properties, owner: PropertyOwner) -> Result<usize, EncodeError> {
    let mut count = ByteCount::default();
    write_properties(p, owner, &mut count)?;
    Ok(count.0)
}

/// Writes the property length and the properties allowed in `owner`.
///
/// Properties the spec does not allow in this packet are skipped rather than refused, so
/// that e.g. will properties (with Will Delay Interval) can be sent as a PUBLISH's.
pub(crate) fn encode_properties<S: Sink>(
    p: &Properties,
    owner: PropertyOwner,
    out: &mut S,
) -> Result<(), EncodeError> {
    let len = properties_len(p, owner)?;
    let len = u32::try_from(len).map_err(|_| EncodeError::PacketTooLarge { size: len })?;
    put_varint(out, len, "property length")?;
    write_properties(p, owner, out)
}

/// Writes each allowed property, in identifier order.
fn write_properties<S: Sink>(
    p: &Properties,
    owner: PropertyOwner,
    out: &mut S,
) -> Result<(), EncodeError> {
    let mut w = PropertyWriter { owner, out };
    w.byte(0x01, p.payload_format_indicator);
    w.four(0x02, p.message_expiry_interval);
    w.string(0x03, p.content_type.as_deref(), "Content Type")?;
    w.string(0x08, p.response_topic.as_deref(), "Response Topic")?;
    w.binary(0x09, p.correlation_data.as_deref(), "Correlation Data")?;
    if owner.allows(0x0B) {
        for &id in &p.subscription_identifiers {
            w.out.put_u8(0x0B);
            put_varint(w.out, id, "Subscription Identifier")?;
        }
    }
    w.four(0x11, p.session_expiry_interval);
    w.string(
        0x12,
        p.assigned_client_identifier.as_deref(),
        "Assigned Client Identifier",
    )?;
    w.two(0x13, p.server_keep_alive);
    w.string(
        0x15,
        p.authentication_method.as_deref(),
        "Authentication Method",
    )?;
    w.binary(
        0x16,
        p.authentication_data.as_deref(),
        "Authentication Data",
    )?;
    w.byte(0x17, p.request_problem_information);
    w.four(0x18, p.will_delay_interval);
    w.byte(0x19, p.request_response_information);
    w.string(
        0x1A,
        p.response_information.as_deref(),
        "Response Information",
    )?;
    w.string(0x1C, p.server_reference.as_deref(), "Server Reference")?;
    w.string(0x1F, p.reason_string.as_deref(), "Reason String")?;
    w.two(0x21, p.receive_maximum);
    w.two(0x22, p.topic_alias_maximum);
    w.two(0x23, p.topic_alias);
    w.byte(0x24, p.maximum_qos);
    w.byte(0x25, p.retain_available);
    if owner.allows(0x26) {
        for (key, value) in &p.user_properties {
            w.out.put_u8(0x26);
            put_string(w.out, key, "User Property name")?;
            put_string(w.out, value, "User Property value")?;
        }
    }
    w.four(0x27, p.maximum_packet_size);
    w.byte(0x28, p.wildcard_subscription_available);
    w.byte(0x29, p.subscription_identifier_available);
    w.byte(0x2A, p.shared_subscription_available);
    Ok(())
}

/// Writes one optional property if present and allowed in `owner`.
struct PropertyWriter<'a, S> {
    owner: PropertyOwner,
    out: &'a mut S,
}

impl<S: Sink> PropertyWriter<'_, S> {
    fn wanted<T>(&mut self, id: u8, value: Option<T>) -> Option<T> {
        let value = value.filter(|_| self.owner.allows(id))?;
        self.out.put_u8(id);
        Some(value)
    }

    fn byte(&mut self, id: u8, value: Option<u8>) {
        if let Some(v) = self.wanted(id, value) {
            self.out.put_u8(v);
        }
    }

    fn two(&mut self, id: u8, value: Option<u16>) {
        if let Some(v) = self.wanted(id, value) {
            self.out.put_u16(v);
        }
    }

    fn four(&mut self, id: u8, value: Option<u32>) {
        if let Some(v) = self.wanted(id, value) {
            self.out.put_u32(v);
        }
    }

    fn string(
        &mut self,
        id: u8,
        value: Option<&str>,
        field: &'static str,
    ) -> Result<(), EncodeError> {
        match self.wanted(id, value) {
            Some(v) => put_string(self.out, v, field),
            None => Ok(()),
        }
    }

    fn binary(
        &mut self,
        id: u8,
        value: Option<&[u8]>,
        field: &'static str,
    ) -> Result<(), EncodeError> {
        match self.wanted(id, value) {
            Some(v) => put_binary(self.out, v, field),
            None => Ok(()),
        }
    }
}
