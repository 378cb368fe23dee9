//! Property tests: generated packets round-trip and split anywhere; random and mutated
//! bytes never panic the decoder, and whatever it accepts re-encodes to the same packet
//! (the same oracle the cargo-fuzz target uses, run here on stable).

use proptest::collection::vec;
use proptest::prelude::*;

use super::strategies::packet;
use super::*;

/// Limit used on hostile input, so the size check is exercised too.
const FUZZ_LIMIT: usize = 256;

/// Decodes a whole stream as a connection would (CONNECT first, then the rest in its
/// version) and, separately, as a connection already in `version`. Checks the decoder's
/// contract on every step.
fn check_stream(bytes: &[u8], version: ProtocolVersion) {
    let mut buf = BytesMut::from(bytes);
    if let Ok(Some(Packet::Connect(c))) = decode_connect(&mut buf, FUZZ_LIMIT) {
        check_accepted(&Packet::Connect(c.clone()), c.protocol);
        check_rest(&mut buf, c.protocol);
    }
    check_rest(&mut BytesMut::from(bytes), version);
}

fn check_rest(buf: &mut BytesMut, version: ProtocolVersion) {
    loop {
        let before = buf.clone();
        match decode(buf, version, FUZZ_LIMIT) {
            Ok(Some(p)) => {
                assert!(buf.len() < before.len(), "{} consumed nothing", p.name());
                check_accepted(&p, version);
            }
            Ok(None) => {
                assert_eq!(*buf, before, "Ok(None) consumed bytes");
                return;
            }
            Err(_) => return,
        }
    }
}

/// Anything the decoder accepts has a canonical encoding that decodes to the same packet.
fn check_accepted(packet: &Packet, version: ProtocolVersion) {
    let mut out = BytesMut::new();
    if let Err(e) = encode(packet, version, &mut out) {
        panic!("decoded {packet:?} does not encode: {e}");
    }
    assert!(out.len() <= FUZZ_LIMIT, "re-encoding grew past the limit");
    assert_eq!(dec(&out, version).as_ref(), Ok(packet));
}

fn any_version() -> impl Strategy<Value = ProtocolVersion> {
    proptest::sample::select(ALL_VERSIONS.to_vec())
}

fn round_trip_and_every_split(packet: &Packet, version: ProtocolVersion) {
    assert_round_trip(packet, version);
    let bytes = enc(packet, version);
    for split in 0..bytes.len() {
        let mut buf = BytesMut::from(&bytes[..split]);
        assert_eq!(decode(&mut buf, version, NO_LIMIT), Ok(None));
        assert_eq!(buf.len(), split);
    }
}

proptest! {
    #[test]
    fn generated_v3_1_packets_round_trip(p in packet(V3_1)) {
        round_trip_and_every_split(&p, V3_1);
    }

    #[test]
    fn generated_v3_1_1_packets_round_trip(p in packet(V3_1_1)) {
        round_trip_and_every_split(&p, V3_1_1);
    }

    #[test]
    fn generated_v5_packets_round_trip(p in packet(V5)) {
        round_trip_and_every_split(&p, V5);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..96), version in any_version()) {
        check_stream(&bytes, version);
    }

    /// Valid packets with a few bytes overwritten reach much deeper than random bytes.
    #[test]
    fn mutated_packets_never_panic(
        (version, p) in any_version().prop_flat_map(|v| (Just(v), packet(v))),
        edits in vec((any::<usize>(), any::<u8>()), 1..4),
        cut in any::<usize>(),
    ) {
        let mut bytes = enc(&p, version).to_vec();
        for (at, value) in edits {
            let len = bytes.len();
            bytes[at % len] = value;
        }
        check_stream(&bytes, version);
        bytes.truncate(cut % (bytes.len() + 1));
        check_stream(&bytes, version);
    }
}
