//! The HAProxy PROXY protocol header (`proxy_protocol = on`): a load balancer in
//! front of the broker writes it first on every connection it opens, naming the
//! client it stands for. Version 1 is a text line (`PROXY TCP4 <src> <dst> <sport>
//! <dport>\r\n`, at most 107 bytes); version 2 is binary (a 12-byte signature, a
//! command, an address family, a length, the addresses, then TLVs, which are skipped).
//!
//! `parse` is sans-IO: it looks at the bytes received so far and says whether the
//! header is complete, how long it is and which client it names. It never reads past
//! the header, and never panics on any input (a property test feeds it random and
//! truncated bytes). `read_header` is the one async function: it reads a socket until
//! the header is complete, within the listener's `proxy_protocol_timeout`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use tokio::net::tcp::OwnedReadHalf;

/// The version 2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The version 1 prefix.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest version 1 line, CRLF included (the spec's bound).
const V1_MAX: usize = 107;
/// The fixed part of a version 2 header.
const V2_FIXED: usize = 16;

/// What the bytes received so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A valid start: more bytes are needed.
    Incomplete,
    /// The header takes `len` bytes; what follows is the client's own data.
    /// `source` is the client it names; None when it names none (v2 LOCAL, a health
    /// check of the proxy itself; v1 UNKNOWN; v2 UNSPEC or UNIX addresses), and the
    /// socket's peer then stands.
    Done {
        len: usize,
        source: Option<SocketAddr>,
    },
}

/// Why a header is refused; the connection is then closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 line longer than 107 bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 line: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2: unsupported version {0:#x}")]
    V2Version(u8),
    #[error("PROXY v2: unsupported command {0:#x}")]
    V2Command(u8),
    #[error("PROXY v2: address family/protocol {0:#04x} unsupported")]
    V2Family(u8),
    #[error("PROXY v2: {family} addresses need {need} bytes, the header has {len}")]
    V2Short {
        family: &'static str,
        need: usize,
        len: usize,
    },
}

/// Look at the first bytes of a connection.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let Some(&first) = buf.first() else {
        return Ok(Parsed::Incomplete);
    };
    if first == V1_PREFIX[0] {
        return parse_v1(buf);
    }
    if first == V2_SIGNATURE[0] {
        return parse_v2(buf);
    }
    Err(ProxyError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let prefix = buf.len().min(V1_PREFIX.len());
    if buf[..prefix] != V1_PREFIX[..prefix] {
        return Err(ProxyError::NotProxy);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return match buf.len() >= V1_MAX {
            true => Err(ProxyError::V1TooLong),
            false => Ok(Parsed::Incomplete),
        };
    };
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..end])
        .map_err(|_| ProxyError::V1Malformed("not ASCII"))?;
    let len = end + 2;
    let mut fields = line.split(' ');
    let source = match fields.next() {
        // The rest of an UNKNOWN line is ignored (the spec says so).
        Some("UNKNOWN") => None,
        Some(family @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = fields.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Err(ProxyError::V1Malformed(
                    "expected 4 fields after the family",
                ));
            };
            let ip = |text: &str| -> Result<IpAddr, ProxyError> {
                let ip = match family {
                    "TCP4" => text.parse::<Ipv4Addr>().map(IpAddr::V4),
                    _ => text.parse::<Ipv6Addr>().map(IpAddr::V6),
                };
                ip.map_err(|_| ProxyError::V1Malformed("bad address for the family"))
            };
            let port = |text: &str| -> Result<u16, ProxyError> {
                match text.bytes().all(|b| b.is_ascii_digit()) {
                    true => text.parse().ok(),
                    false => None,
                }
                .ok_or(ProxyError::V1Malformed("bad port"))
            };
            let (src, _dst) = (ip(src)?, ip(dst)?);
            let (sport, _dport) = (port(sport)?, port(dport)?);
            Some(SocketAddr::new(src, sport))
        }
        _ => {
            return Err(ProxyError::V1Malformed(
                "family is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    Ok(Parsed::Done { len, source })
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let prefix = buf.len().min(V2_SIGNATURE.len());
    if buf[..prefix] != V2_SIGNATURE[..prefix] {
        return Err(ProxyError::NotProxy);
    }
    let Some(fixed) = buf.get(..V2_FIXED) else {
        return Ok(Parsed::Incomplete);
    };
    let (ver_cmd, family, addr_len) = (
        fixed[12],
        fixed[13],
        u16::from_be_bytes([fixed[14], fixed[15]]) as usize,
    );
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Version(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0F {
        0 => true,
        1 => false,
        cmd => return Err(ProxyError::V2Command(cmd)),
    };
    let len = V2_FIXED + addr_len;
    let Some(body) = buf.get(V2_FIXED..len) else {
        return Ok(Parsed::Incomplete);
    };
    let short = |family, need| ProxyError::V2Short {
        family,
        need,
        len: addr_len,
    };
    // The address block; TLVs after it are skipped.
    let source = match family {
        // TCP or UDP over IPv4: src, dst, sport, dport.
        0x11 | 0x12 => {
            let b = body.get(..12).ok_or(short("IPv4", 12))?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([b[8], b[9]])))
        }
        0x21 | 0x22 => {
            let b = body.get(..36).ok_or(short("IPv6", 36))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            let ip = Ipv6Addr::from(octets);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([b[32], b[33]]),
            ))
        }
        // UNSPEC and UNIX sockets name no IP client.
        0x00 | 0x31 | 0x32 => None,
        // LOCAL ignores the family (the spec: the receiver must accept it).
        _ if local => None,
        other => return Err(ProxyError::V2Family(other)),
    };
    Ok(Parsed::Done {
        len,
        source: if local { None } else { source },
    })
}

/// Read a PROXY header off `reader` within `timeout`. Ok: the client it names (None:
/// keep the socket's peer) and the bytes after it already read (the start of the TLS
/// handshake, the HTTP upgrade or CONNECT). Err: why the connection must be closed.
pub(crate) async fn read_header(
    reader: &OwnedReadHalf,
    timeout: Duration,
) -> Result<(Option<SocketAddr>, BytesMut), String> {
    let mut buf = BytesMut::new();
    let read = async {
        // Bounded: every turn adds bytes, and a header is at most 16 + 65535 bytes
        // (v2); `parse` refuses a v1 line past 107.
        loop {
            match parse(&buf).map_err(|e| e.to_string())? {
                Parsed::Done { len, source } => {
                    let rest = buf.split_off(len);
                    return Ok((source, rest));
                }
                Parsed::Incomplete => {}
            }
            reader.readable().await.map_err(|e| e.to_string())?;
            let mut scratch = [0u8; 4096];
            match reader.try_read(&mut scratch) {
                Ok(0) => return Err("closed before the end of the PROXY header".to_string()),
                Ok(n) => buf.extend_from_slice(&scratch[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "no complete PROXY header within proxy_protocol_timeout ({timeout:?})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v2(cmd: u8, family: u8, addrs: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(family);
        h.extend_from_slice(&((addrs.len() + tlvs.len()) as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h.extend_from_slice(tlvs);
        h
    }

    fn done(len: usize, source: &str) -> Result<Parsed, ProxyError> {
        Ok(Parsed::Done {
            len,
            source: Some(source.parse().unwrap()),
        })
    }

    #[test]
    fn v1_lines_name_the_client() {
        let line = b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 1883\r\n";
        let mut with_connect = line.to_vec();
        with_connect.extend_from_slice(&[0x10, 0x0c]);
        assert_eq!(parse(&with_connect), done(line.len(), "127.0.0.5:40000"));
        let six = b"PROXY TCP6 2001:db8::7 ::1 5 1883\r\n";
        assert_eq!(parse(six), done(six.len(), "[2001:db8::7]:5"));
        let unknown = b"PROXY UNKNOWN whatever follows\r\n";
        assert_eq!(
            parse(unknown),
            Ok(Parsed::Done {
                len: unknown.len(),
                source: None
            })
        );
    }

    #[test]
    fn v1_every_prefix_is_incomplete_and_bad_lines_are_refused() {
        let line = b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n";
        for n in 0..line.len() {
            assert_eq!(parse(&line[..n]), Ok(Parsed::Incomplete), "{n}");
        }
        for bad in [
            &b"PROXY TCP4 10.0.0.1 10.0.0.2 1\r\n"[..],
            b"PROXY TCP4 ::1 10.0.0.2 1 2\r\n",
            b"PROXY TCP6 10.0.0.1 ::1 1 2\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 65536 2\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 +1 2\r\n",
            b"PROXY UDP4 10.0.0.1 10.0.0.2 1 2\r\n",
            b"PROXY TCP4  10.0.0.1 10.0.0.2 1 2\r\n",
            b"PROXY \xff\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyError::V1Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse(&[b'P'; 200][..]), Err(ProxyError::NotProxy));
        let long = [&b"PROXY UNKNOWN "[..], &[b'x'; 120]].concat();
        assert_eq!(parse(&long), Err(ProxyError::V1TooLong));
        assert_eq!(parse(b"\x10\x0c\x00\x04MQTT"), Err(ProxyError::NotProxy));
        assert_eq!(parse(b"GET /mqtt HTTP/1.1\r\n"), Err(ProxyError::NotProxy));
    }

    #[test]
    fn v2_headers_name_the_client_and_skip_tlvs() {
        let v4 = [127, 0, 0, 5, 127, 0, 0, 1, 0x9c, 0x40, 0x07, 0x5b];
        let tlvs = [0x04, 0x00, 0x02, 0xAB, 0xCD]; // PP2_TYPE_NOOP
        let h = v2(1, 0x11, &v4, &tlvs);
        let mut with_data = h.clone();
        with_data.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(parse(&with_data), done(h.len(), "127.0.0.5:40000"));
        for n in 0..h.len() {
            assert_eq!(parse(&h[..n]), Ok(Parsed::Incomplete), "{n}");
        }
        let mut v6 = vec![0u8; 36];
        v6[15] = 1; // ::1
        v6[31] = 1;
        v6[32..34].copy_from_slice(&7u16.to_be_bytes());
        let h = v2(1, 0x21, &v6, &[]);
        assert_eq!(parse(&h), done(h.len(), "[::1]:7"));
    }

    #[test]
    fn v2_local_and_unspec_keep_the_socket_peer() {
        for h in [
            v2(0, 0x00, &[], &[]),
            v2(0, 0x11, &[1; 12], &[]),
            v2(0, 0x77, &[], &[]),
            v2(1, 0x00, &[], &[]),
            v2(1, 0x31, &[0; 216], &[]),
        ] {
            assert_eq!(
                parse(&h),
                Ok(Parsed::Done {
                    len: h.len(),
                    source: None
                })
            );
        }
    }

    #[test]
    fn v2_bad_headers_are_refused() {
        assert_eq!(
            parse(&v2(1, 0x11, &[0; 4], &[])),
            Err(ProxyError::V2Short {
                family: "IPv4",
                need: 12,
                len: 4
            })
        );
        assert!(parse(&v2(1, 0x21, &[0; 12], &[])).is_err());
        assert_eq!(
            parse(&v2(2, 0x11, &[0; 12], &[])),
            Err(ProxyError::V2Command(2))
        );
        assert_eq!(
            parse(&v2(1, 0x41, &[0; 12], &[])),
            Err(ProxyError::V2Family(0x41))
        );
        let mut bad_version = v2(1, 0x11, &[0; 12], &[]);
        bad_version[12] = 0x11;
        assert_eq!(parse(&bad_version), Err(ProxyError::V2Version(1)));
        assert_eq!(parse(b"\r\n\r\nX"), Err(ProxyError::NotProxy));
    }

    proptest! {
        /// Any bytes: no panic, and a Done never claims more than was given.
        #[test]
        fn never_panics_on_random_input(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Parsed::Done { len, .. }) = parse(&bytes) {
                prop_assert!(len <= bytes.len());
            }
        }

        /// Random bytes behind a valid start (v1 or v2): no panic, and every prefix of
        /// a header that parses is Incomplete or an error, never a different Done.
        #[test]
        fn never_panics_behind_a_valid_start(
            v1 in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = if v1 { b"PROXY ".to_vec() } else { V2_SIGNATURE.to_vec() };
            bytes.extend_from_slice(&tail);
            if let Ok(Parsed::Done { len, .. }) = parse(&bytes) {
                prop_assert!(len <= bytes.len());
                for n in 0..len {
                    let early = matches!(parse(&bytes[..n]), Ok(Parsed::Done { .. }));
                    prop_assert!(!early, "a prefix of {} bytes parsed as done", n);
                }
            }
        }

        /// A generated v2 header with random addresses and TLVs parses to its source,
        /// and truncated it is Incomplete.
        #[test]
        fn generated_v2_headers_parse(
            ip in any::<[u8; 4]>(),
            port in any::<u16>(),
            tlvs in proptest::collection::vec(any::<u8>(), 0..100),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut addrs = ip.to_vec();
            addrs.extend_from_slice(&[10, 0, 0, 1]);
            addrs.extend_from_slice(&port.to_be_bytes());
            addrs.extend_from_slice(&1883u16.to_be_bytes());
            let h = v2(1, 0x11, &addrs, &tlvs);
            let want = SocketAddr::new(Ipv4Addr::from(ip).into(), port);
            prop_assert_eq!(parse(&h), Ok(Parsed::Done { len: h.len(), source: Some(want) }));
            prop_assert_eq!(parse(&h[..cut.index(h.len())]), Ok(Parsed::Incomplete));
        }
    }
}
