//! Partial input: every prefix of a packet is "need more bytes" and consumes nothing.

use super::*;

/// Every sample in every version, with its encoding.
fn encoded_samples() -> Vec<(ProtocolVersion, Packet, BytesMut)> {
    let mut out = Vec::new();
    for version in ALL_VERSIONS {
        for packet in samples(version) {
            let bytes = enc(&packet, version);
            out.push((version, packet, bytes));
        }
    }
    out
}

#[test]
fn every_prefix_needs_more_bytes_and_consumes_nothing() {
    for (version, packet, bytes) in encoded_samples() {
        for split in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            assert_eq!(
                decode(&mut buf, version, NO_LIMIT),
                Ok(None),
                "{} in {version:?} split at {split}",
                packet.name()
            );
            assert_eq!(&buf[..], &bytes[..split], "consumed bytes at split {split}");
            if let Packet::Connect(_) = packet {
                assert_eq!(decode_connect(&mut buf, NO_LIMIT), Ok(None));
                assert_eq!(&buf[..], &bytes[..split]);
            }
        }
    }
}

#[test]
fn byte_at_a_time_arrival_yields_each_packet_once() {
    for version in ALL_VERSIONS {
        let packets = samples(version);
        let mut stream = Vec::new();
        for p in &packets {
            stream.extend_from_slice(&enc(p, version));
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for &byte in &stream {
            buf.extend_from_slice(&[byte]);
            if let Some(p) = decode(&mut buf, version, NO_LIMIT).expect("valid stream") {
                decoded.push(p);
            }
        }
        assert_eq!(decoded, packets);
        assert!(buf.is_empty());
    }
}

#[test]
fn a_packet_followed_by_part_of_the_next_leaves_the_part() {
    for (version, packet, bytes) in encoded_samples() {
        let mut buf = bytes.clone();
        buf.extend_from_slice(&[0x30]);
        assert_eq!(decode(&mut buf, version, NO_LIMIT), Ok(Some(packet)));
        assert_eq!(&buf[..], [0x30]);
        assert_eq!(decode(&mut buf, version, NO_LIMIT), Ok(None));
    }
}

#[test]
fn partial_remaining_length_needs_more_bytes() {
    for prefix in [
        &[0x30][..],
        &[0x30, 0x80],
        &[0x30, 0xff, 0xff],
        &[0x30, 0xff, 0xff, 0xff],
    ] {
        let mut buf = BytesMut::from(prefix);
        assert_eq!(decode(&mut buf, V5, NO_LIMIT), Ok(None), "{prefix:02x?}");
        assert_eq!(buf.len(), prefix.len());
    }
    let mut empty = BytesMut::new();
    assert_eq!(decode(&mut empty, V5, NO_LIMIT), Ok(None));
    assert_eq!(decode_connect(&mut empty, NO_LIMIT), Ok(None));
}
