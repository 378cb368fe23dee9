//! Arbitrary bytes into the MQTT decoder, the way a connection meets them: first
//! `decode_connect`, then `decode` in the version the CONNECT named, and also `decode`
//! in each version directly. The decoder must never panic, must consume nothing when it
//! asks for more bytes, and whatever it accepts must re-encode to bytes that decode to
//! the same packet.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use quay::codec::{decode, decode_connect, encode, Packet, ProtocolVersion};

/// Small enough that the size check is reached by fuzz inputs.
const MAX_PACKET_SIZE: usize = 4096;

const VERSIONS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    if let Ok(Some(packet)) = decode_connect(&mut buf, MAX_PACKET_SIZE) {
        if let Packet::Connect(connect) = &packet {
            let version = connect.protocol;
            check_accepted(&packet, version);
            decode_stream(&mut buf, version);
        }
    }
    for version in VERSIONS {
        decode_stream(&mut BytesMut::from(data), version);
    }
});

/// Decodes packets until the input runs out or is refused. Bounded: every accepted
/// packet consumes at least two bytes.
fn decode_stream(buf: &mut BytesMut, version: ProtocolVersion) {
    loop {
        let before = buf.clone();
        match decode(buf, version, MAX_PACKET_SIZE) {
            Ok(Some(packet)) => {
                assert!(
                    buf.len() < before.len(),
                    "{} consumed nothing",
                    packet.name()
                );
                check_accepted(&packet, version);
            }
            Ok(None) => {
                assert_eq!(*buf, before, "Ok(None) consumed bytes");
                return;
            }
            Err(_) => return,
        }
    }
}

fn check_accepted(packet: &Packet, version: ProtocolVersion) {
    let mut encoded = BytesMut::new();
    if let Err(e) = encode(packet, version, &mut encoded) {
        panic!("decoded {packet:?} does not encode: {e}");
    }
    let len = encoded.len();
    match decode(&mut encoded, version, usize::MAX) {
        Ok(Some(again)) => {
            assert_eq!(&again, packet, "round trip changed the packet");
            assert!(
                encoded.is_empty(),
                "re-encoded {len} bytes decode with bytes left over"
            );
        }
        other => panic!("re-encoded {packet:?} decodes as {other:?}"),
    }
}
