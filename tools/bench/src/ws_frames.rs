//! The client side of MQTT over WebSocket for the benchmarks: the HTTP upgrade, and
//! binary frames around what `MqttConn` writes and reads. Minimal on purpose (no
//! fragmentation, no control frames but Close, which ends the connection): the
//! brokers under test send only final binary frames to a client that never pings.
//!
//! Client frames must be masked (RFC 6455 5.3); the mask key here is all zeros,
//! which is a valid key that leaves the payload as is, so the generator spends no
//! CPU on masking while each broker still runs its unmasking code.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The path both brokers serve MQTT on (Quay's `mqtt_path`; Mosquitto takes any).
const PATH: &str = "/mqtt";
/// A response head longer than this is not a WebSocket upgrade.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// Upgrade `stream` to WebSocket (subprotocol `mqtt`); bytes the broker sent after
/// the response head are returned (frames already).
pub async fn upgrade(stream: &mut TcpStream, addr: SocketAddr) -> Result<BytesMut> {
    // A fixed key: the benchmarks do not need a fresh nonce per connection.
    let request = format!(
        "GET {PATH} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("writing the upgrade request")?;
    let mut head = BytesMut::with_capacity(512);
    loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 101") {
                bail!("upgrade refused: {}", String::from_utf8_lossy(&head[..end]));
            }
            head.advance(end + 4);
            return Ok(head);
        }
        if head.len() > MAX_RESPONSE_HEAD {
            bail!("no end of the upgrade response in {MAX_RESPONSE_HEAD} bytes");
        }
        if stream
            .read_buf(&mut head)
            .await
            .context("reading the upgrade response")?
            == 0
        {
            bail!("closed during the upgrade");
        }
    }
}

/// Append `payload` to `out` as one masked (zero key) final binary frame.
pub fn frame_into(payload: &[u8], out: &mut BytesMut) {
    let len = payload.len();
    out.reserve(len + 14);
    out.extend_from_slice(&[0x82]);
    match len {
        0..=125 => out.extend_from_slice(&[0x80 | len as u8]),
        126..=65535 => {
            out.extend_from_slice(&[0x80 | 126]);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.extend_from_slice(&[0x80 | 127]);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(payload);
}

/// Move the payloads of the complete frames at the front of `wire` into `into`; an
/// incomplete frame stays in `wire`.
pub fn unframe(wire: &mut BytesMut, into: &mut BytesMut) -> Result<()> {
    loop {
        if wire.len() < 2 {
            return Ok(());
        }
        let (opcode, masked) = (wire[0] & 0x0f, wire[1] & 0x80 != 0);
        if masked || wire[0] & 0x80 == 0 {
            bail!("a masked or fragmented frame from the broker");
        }
        let (len, at) = match wire[1] & 0x7f {
            126 if wire.len() >= 4 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
            127 if wire.len() >= 10 => {
                let bytes: [u8; 8] = wire[2..10].try_into().context("frame length")?;
                (
                    usize::try_from(u64::from_be_bytes(bytes)).context("frame length")?,
                    10,
                )
            }
            126 | 127 => return Ok(()),
            n => (n as usize, 2),
        };
        if wire.len() < at + len {
            return Ok(());
        }
        match opcode {
            0x2 => into.extend_from_slice(&wire[at..at + len]),
            0x8 => bail!("the broker sent a Close frame"),
            other => bail!("unexpected frame opcode {other}"),
        }
        wire.advance(at + len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_at_every_length_form() {
        for len in [0, 5, 125, 126, 65535, 65536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut framed = BytesMut::new();
            frame_into(&payload, &mut framed);
            // The broker's side would unmask; with a zero key the bytes are as sent.
            let mask_at = framed.len() - len - 4;
            assert_eq!(&framed[mask_at..mask_at + 4], &[0; 4]);
            // As a server frame (no mask bit, no key), cut in two at every 7th byte.
            let mut server = BytesMut::new();
            server.extend_from_slice(&[0x82]);
            let second = framed[1] & 0x7f;
            server.extend_from_slice(&[second]);
            server.extend_from_slice(&framed[2..mask_at]);
            server.extend_from_slice(&payload);
            let cut = server.len() / 7;
            let (mut wire, mut into) = (BytesMut::new(), BytesMut::new());
            wire.extend_from_slice(&server[..cut]);
            unframe(&mut wire, &mut into).unwrap();
            wire.extend_from_slice(&server[cut..]);
            unframe(&mut wire, &mut into).unwrap();
            assert_eq!(&into[..], &payload[..], "length {len}");
            assert!(wire.is_empty());
        }
    }
}
