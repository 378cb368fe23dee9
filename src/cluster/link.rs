//! One authenticated node-to-node connection over TCP.
//!
//! Handshake (both sides hold `node.cookie`; it never crosses the wire):
//!
//! ```text
//! dialer   -> Hello     { version, node, nonce_d }
//! acceptor -> Challenge { version, node, nonce_a, proof_a = HMAC(cookie, "acceptor" | nonce_d | nonce_a | node_a) }
//! dialer   -> Proof     { proof_d = HMAC(cookie, "dialer" | nonce_d | nonce_a | node_d) }
//! acceptor -> Welcome
//! ```
//!
//! Each side checks the other's proof (constant time) before it trusts anything else
//! on the link; a wrong cookie ends the link with `Refused` and a log line. Fresh
//! nonces on both sides make a recorded handshake useless. After it, frames go both
//! ways; every read is bounded (`MAX_FRAME`), and a frame that does not decode ends
//! the link, never the node.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use hmac::{Hmac, Mac};
use prost::Message as _;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::frames::{Body, Challenge, Frame, Hello, Proof, Refused, PROTOCOL_VERSION};

/// The largest frame read; a longer length prefix ends the link.
pub const MAX_FRAME: usize = 64 << 20;
const NONCE_LEN: usize = 32;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the peer closed the link")]
    Closed,
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("the peer refused the link: {0}")]
    Refused(String),
    #[error("handshake timed out")]
    Timeout,
}

pub struct Link {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// The peer's node name, as it proved.
    pub peer: String,
}

fn proof(
    cookie: &str,
    role: &[u8],
    dialer_nonce: &[u8],
    acceptor_nonce: &[u8],
    node: &str,
) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(cookie.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(role);
    mac.update(dialer_nonce);
    mac.update(acceptor_nonce);
    mac.update(node.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn check(cookie: &str, role: &[u8], dn: &[u8], an: &[u8], node: &str, got: &[u8]) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(cookie.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(role);
    mac.update(dn);
    mac.update(an);
    mac.update(node.as_bytes());
    mac.verify_slice(got).is_ok()
}

fn nonce() -> Result<Vec<u8>, LinkError> {
    let mut n = vec![0u8; NONCE_LEN];
    getrandom::getrandom(&mut n)
        .map_err(|e| LinkError::Handshake(format!("no random nonce: {e}")))?;
    Ok(n)
}

impl Link {
    fn new(stream: TcpStream) -> Link {
        let _ = stream.set_nodelay(true);
        Link {
            stream,
            rbuf: BytesMut::with_capacity(64 << 10),
            wbuf: BytesMut::with_capacity(64 << 10),
            peer: String::new(),
        }
    }

    /// Connect to `addr` as node `me` and prove the cookie both ways.
    pub async fn dial(addr: &str, me: &str, cookie: &str) -> Result<Link, LinkError> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut link = Link::new(TcpStream::connect(addr).await?);
            let dn = nonce()?;
            link.send(&Frame::of(Body::Hello(Hello {
                version: PROTOCOL_VERSION,
                node: me.to_string(),
                nonce: dn.clone(),
            })))
            .await?;
            let ch = match link.recv().await?.body() {
                Some(Body::Challenge(c)) => c,
                Some(Body::Refused(r)) => return Err(LinkError::Refused(r.reason)),
                _ => return Err(LinkError::Handshake("expected a challenge".into())),
            };
            if !check(cookie, b"acceptor", &dn, &ch.nonce, &ch.node, &ch.proof) {
                return Err(LinkError::Handshake(format!(
                    "node {} does not hold our cookie",
                    ch.node
                )));
            }
            link.send(&Frame::of(Body::Proof(Proof {
                proof: proof(cookie, b"dialer", &dn, &ch.nonce, me),
            })))
            .await?;
            match link.recv().await?.body() {
                Some(Body::Welcome) => {}
                Some(Body::Refused(r)) => return Err(LinkError::Refused(r.reason)),
                _ => return Err(LinkError::Handshake("expected a welcome".into())),
            }
            link.peer = ch.node;
            Ok(link)
        })
        .await
        .map_err(|_| LinkError::Timeout)?
    }

    /// Take an accepted connection through the handshake as node `me`.
    pub async fn accept(stream: TcpStream, me: &str, cookie: &str) -> Result<Link, LinkError> {
        tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut link = Link::new(stream);
            let hello = match link.recv().await?.body() {
                Some(Body::Hello(h)) => h,
                _ => return Err(LinkError::Handshake("expected a hello".into())),
            };
            if hello.version != PROTOCOL_VERSION {
                let reason = format!(
                    "protocol version {} is not ours ({PROTOCOL_VERSION})",
                    hello.version
                );
                link.refuse(&reason).await;
                return Err(LinkError::Handshake(reason));
            }
            let an = nonce()?;
            link.send(&Frame::of(Body::Challenge(Challenge {
                version: PROTOCOL_VERSION,
                node: me.to_string(),
                nonce: an.clone(),
                proof: proof(cookie, b"acceptor", &hello.nonce, &an, me),
            })))
            .await?;
            let p = match link.recv().await?.body() {
                Some(Body::Proof(p)) => p,
                Some(Body::Refused(r)) => return Err(LinkError::Refused(r.reason)),
                _ => return Err(LinkError::Handshake("expected a proof".into())),
            };
            if !check(cookie, b"dialer", &hello.nonce, &an, &hello.node, &p.proof) {
                link.refuse("bad cookie").await;
                return Err(LinkError::Handshake(format!(
                    "node {} does not hold our cookie",
                    hello.node
                )));
            }
            link.send(&Frame::of(Body::Welcome)).await?;
            link.peer = hello.node;
            Ok(link)
        })
        .await
        .map_err(|_| LinkError::Timeout)?
    }

    async fn refuse(&mut self, reason: &str) {
        let _ = self
            .send(&Frame::of(Body::Refused(Refused {
                reason: reason.to_string(),
            })))
            .await;
    }

    /// Add a frame to the next `flush`.
    pub fn queue(&mut self, f: &Frame) {
        let len = f.encoded_len();
        self.wbuf.reserve(4 + len);
        self.wbuf.extend_from_slice(&(len as u32).to_be_bytes());
        // Cannot fail: the buffer has room (reserved above).
        let _ = f.encode(&mut self.wbuf);
    }

    /// Send what is queued; whether there was anything.
    pub async fn flush(&mut self) -> Result<bool, LinkError> {
        if self.wbuf.is_empty() {
            return Ok(false);
        }
        let out = self.wbuf.split();
        self.stream.write_all(&out).await?;
        Ok(true)
    }

    pub async fn send(&mut self, f: &Frame) -> Result<(), LinkError> {
        self.queue(f);
        self.flush().await.map(|_| ())
    }

    /// A whole frame already read, if any.
    pub fn try_recv(&mut self) -> Result<Option<Frame>, LinkError> {
        if self.rbuf.len() < 4 {
            return Ok(None);
        }
        let len =
            u32::from_be_bytes([self.rbuf[0], self.rbuf[1], self.rbuf[2], self.rbuf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(LinkError::TooLarge(len));
        }
        if self.rbuf.len() < 4 + len {
            self.rbuf.reserve(4 + len - self.rbuf.len());
            return Ok(None);
        }
        self.rbuf.advance(4);
        let body = self.rbuf.split_to(len).freeze();
        Ok(Some(Frame::decode(body)?))
    }

    /// The next frame. Cancel-safe: bytes read stay in the buffer.
    pub async fn recv(&mut self) -> Result<Frame, LinkError> {
        loop {
            if let Some(f) = self.try_recv()? {
                return Ok(f);
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(LinkError::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::frames::Ping;

    async fn pair(
        dial_cookie: &str,
        accept_cookie: &str,
    ) -> (Result<Link, LinkError>, Result<Link, LinkError>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accept_cookie = accept_cookie.to_string();
        let acceptor = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            Link::accept(s, "b@127.0.0.1", &accept_cookie).await
        });
        let dialed = Link::dial(&addr, "a@127.0.0.1", dial_cookie).await;
        (dialed, acceptor.await.unwrap())
    }

    #[tokio::test]
    async fn nodes_with_one_cookie_link_and_exchange_frames() {
        let (a, b) = pair("secret", "secret").await;
        let (mut a, mut b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.peer, "b@127.0.0.1");
        assert_eq!(b.peer, "a@127.0.0.1");
        a.send(&Frame::of(Body::Ping(Ping { at_ms: 7 })))
            .await
            .unwrap();
        assert_eq!(
            b.recv().await.unwrap(),
            Frame::of(Body::Ping(Ping { at_ms: 7 }))
        );
    }

    #[tokio::test]
    async fn a_wrong_cookie_is_refused_on_both_sides() {
        let (a, b) = pair("secret", "other").await;
        assert!(matches!(a, Err(LinkError::Handshake(_))), "{:?}", a.err());
        assert!(b.is_err());
    }

    #[tokio::test]
    async fn an_oversized_length_ends_the_link_without_reading_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let (s, _) = listener.accept().await.unwrap();
        raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let r = Link::accept(s, "b@127.0.0.1", "secret").await;
        assert!(matches!(r, Err(LinkError::TooLarge(_))), "{:?}", r.err());
    }
}
