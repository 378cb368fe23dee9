//! MQTT 3.1, 3.1.1 and 5.0 packets to and from bytes.
//!
//! Pure and sans-IO: it works on `BytesMut` buffers the listener fills and drains, never
//! touches a socket or a clock, and never panics on any input (it is fuzzed:
//! `fuzz/fuzz_targets/decode.rs`). It enforces the wire rules of the specs; what is
//! allowed by policy (client id length, topic validity, alias ranges, sizes the broker
//! announces) is the session's call.
//!
//! A connection starts with `decode_connect`, which learns the protocol version from the
//! CONNECT; every later packet goes through `decode` with that version.

mod decode;
mod encode;
mod error;
pub mod packet;
pub mod properties;
pub mod reason;
mod wire;

#[cfg(test)]
mod tests;

use bytes::BytesMut;

pub use error::{DecodeError, EncodeError};
pub use packet::*;
pub use properties::Properties;
pub use reason::ReasonCode;

/// Decode one packet from the front of `buf` for a connection whose protocol is known.
///
/// `Ok(None)` means more bytes are needed; nothing is consumed. `Ok(Some)` consumes
/// exactly that packet's bytes. A packet larger than `max_packet_size` (whole packet,
/// fixed header included) is refused as soon as its remaining length is read, before
/// its body arrives. Decodes every packet type in both directions, so clients can read
/// CONNACK, SUBACK, ... with it too. A CONNECT is decoded in the version it names.
///
/// After an `Err` the connection must be closed; `buf` may have lost the bad packet.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    decode::decode(buf, version, max_packet_size)
}

/// Decode the first packet of a connection, which must be CONNECT, learning the version
/// from it: "MQIsdp" level 3 is 3.1, "MQTT" level 4 is 3.1.1, "MQTT" level 5 is 5.0.
/// A known name with another level is `UnsupportedProtocolVersion`, which the broker
/// answers with a CONNACK before closing. `Ok(None)` and size rules as for `decode`.
pub fn decode_connect(
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    decode::decode_connect(buf, max_packet_size)
}

/// Append the encoded packet to `out`. v3 encoders ignore v5-only fields (properties,
/// reason codes on acks); v5 acks, DISCONNECT and AUTH leave out a Success reason code
/// and empty properties. Properties the spec does not allow on the packet are skipped.
/// CONNECT is written in the version it names. On `Err` nothing is appended.
pub fn encode(
    packet: &Packet,
    version: ProtocolVersion,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    encode::encode(packet, version, out)
}
