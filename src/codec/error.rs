//! Why a packet could not be decoded or encoded.
//!
//! Every decode error is something a peer caused, so each one names what was wrong, and
//! `DecodeError::reason_code` says which MQTT 5 reason code the broker should put in the
//! CONNACK or DISCONNECT it sends before closing. Where the spec says which class a
//! violation belongs to ("is a Malformed Packet" vs "is a Protocol Error") the decoder
//! follows it; otherwise rule violations are protocol errors and format problems malformed.

use thiserror::Error;

use super::packet::ProtocolVersion;
use super::reason::ReasonCode;

/// A packet the decoder refused. After any of these the connection must be closed: the
/// byte stream can no longer be trusted to be at a packet boundary.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },
    #[error("remaining length is longer than 4 bytes")]
    MalformedRemainingLength,
    #[error("invalid packet type {0}")]
    InvalidPacketType(u8),
    #[error("invalid fixed header flags {flags:#06b} for {packet}")]
    InvalidFlags { packet: &'static str, flags: u8 },
    #[error("unknown protocol name {0:?} in CONNECT")]
    InvalidProtocolName(String),
    #[error("unsupported protocol level {0} in CONNECT")]
    UnsupportedProtocolVersion(u8),
    #[error("first packet must be CONNECT, got {0}")]
    ExpectedConnect(&'static str),
    #[error("string is not valid UTF-8 or contains U+0000")]
    InvalidUtf8,
    #[error("invalid QoS {0}")]
    InvalidQoS(u8),
    #[error("packet identifier is 0")]
    ZeroPacketId,
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("property {id:#04x} is not allowed in {packet}")]
    InvalidProperty { packet: &'static str, id: u8 },
    #[error("property {0:#04x} appears more than once")]
    DuplicateProperty(u8),
    /// A reason or return code that the spec does not define for this packet.
    #[error("reason code {code:#04x} is not valid in {packet}")]
    InvalidReasonCode { packet: &'static str, code: u8 },
}

impl DecodeError {
    /// The MQTT 5 reason code to report this error with (CONNACK before the session
    /// exists, DISCONNECT after). For a v3 client the broker maps it itself: a v3 CONNACK
    /// has only `to_v3_connack` codes, and a v3 session just closes the connection.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocolVersion(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            DecodeError::Protocol(_)
            | DecodeError::DuplicateProperty(_)
            | DecodeError::ZeroPacketId
            | DecodeError::ExpectedConnect(_)
            | DecodeError::InvalidReasonCode { .. } => ReasonCode::PROTOCOL_ERROR,
            DecodeError::MalformedRemainingLength
            | DecodeError::InvalidPacketType(_)
            | DecodeError::InvalidFlags { .. }
            | DecodeError::InvalidProtocolName(_)
            | DecodeError::InvalidUtf8
            | DecodeError::InvalidQoS(_)
            | DecodeError::Malformed(_)
            | DecodeError::InvalidProperty { .. } => ReasonCode::MALFORMED_PACKET,
        }
    }
}

/// A packet that has no wire form. The encoder writes what it is given otherwise (it does
/// not second-guess a zero packet id or a DUP flag on QoS 0), so these are all limits of
/// the format, never policy.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// Strings and binary data carry a 2-byte length prefix.
    #[error("{field} is {len} bytes, more than the 65535 a length prefix can hold")]
    FieldTooLong { field: &'static str, len: usize },
    /// The remaining length is a variable byte integer of at most 4 bytes.
    #[error("packet body of {size} bytes exceeds the 268435455 bytes MQTT can frame")]
    PacketTooLarge { size: usize },
    #[error("PUBLISH with QoS > 0 has no packet identifier")]
    MissingPacketId,
    /// A variable byte integer field (Subscription Identifier) outside 0..=268435455.
    #[error("{field} value {value} does not fit a variable byte integer")]
    ValueOutOfRange { field: &'static str, value: u32 },
    #[error("{packet} does not exist in protocol {version:?}")]
    NotInVersion {
        packet: &'static str,
        version: ProtocolVersion,
    },
}
