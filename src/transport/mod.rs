//! What lies between a connection's socket and its channel: nothing (plain TCP) or a
//! TLS session (rustls, which is sans-IO like the channel). The connection driver
//! always reads and writes the TCP socket itself, so every transport hibernates the
//! same way (the socket is parked; the TLS session waits in the connection's box) and
//! the channel only ever sees MQTT bytes.
//!
//! Reading: the driver hands every chunk read from the socket to `received`, which
//! appends the MQTT bytes it carries to the read buffer. Writing: `stage` moves what
//! the channel has for the client into the TLS session (bounded by rustls's buffer
//! limit, so a slow reader still holds the channel back), and `poll_write` writes
//! what is ready for the socket.

pub mod tls;

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;

use crate::channel::{Channel, Now};

/// The transport of one connection.
pub(crate) enum Transport {
    Plain,
    /// Boxed: a TLS session is large and plain connections are the many.
    Tls(Box<rustls::ServerConnection>),
}

/// A transport-level failure: the connection is closed and the reason logged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS: {0}")]
    Io(#[from] io::Error),
}

/// What a chunk of socket bytes amounted to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    Open,
    /// The peer ended the session (TLS close_notify): like end of stream.
    Closed,
}

impl Transport {
    /// `wire` was read from the socket: append the MQTT bytes it carries to `rbuf`.
    pub fn received(
        &mut self,
        wire: &[u8],
        rbuf: &mut BytesMut,
    ) -> Result<Received, TransportError> {
        let Transport::Tls(tls) = self else {
            rbuf.extend_from_slice(wire);
            return Ok(Received::Open);
        };
        let mut rest = wire;
        while !rest.is_empty() {
            // Takes what fits in its buffer; the loop hands it the rest once the
            // records so far are processed and their plaintext taken.
            let taken = tls.read_tls(&mut rest)?;
            let state = tls.process_new_packets()?;
            let mut plain = state.plaintext_bytes_to_read();
            while plain > 0 {
                let start = rbuf.len();
                rbuf.resize(start + plain, 0);
                let n = tls.reader().read(&mut rbuf[start..])?;
                rbuf.truncate(start + n);
                if n == 0 {
                    break;
                }
                plain -= n;
            }
            if state.peer_has_closed() {
                return Ok(Received::Closed);
            }
            if taken == 0 {
                break;
            }
        }
        Ok(Received::Open)
    }

    /// Still in the TLS handshake.
    pub fn handshaking(&self) -> bool {
        match self {
            Transport::Plain => false,
            Transport::Tls(tls) => tls.is_handshaking(),
        }
    }

    /// Move what the channel has for the client into the transport (TLS: encrypted
    /// into records, as far as the session's buffer limit allows).
    pub fn stage(&mut self, ch: &mut Channel, now: Now) {
        if let Transport::Tls(tls) = self {
            let output = ch.output();
            if output.is_empty() {
                return;
            }
            // rustls takes at most its buffer limit (64 KiB by default); never fails
            // for a connection past its handshake.
            if let Ok(n) = tls.writer().write(output) {
                if n > 0 {
                    ch.written(n, now);
                }
            }
        }
    }

    /// Send `bytes` (not from a channel: a refusing CONNACK, the handshake's
    /// records, a last write), waiting for the socket as needed.
    pub async fn send_all(&mut self, sock: &mut OwnedWriteHalf, bytes: &[u8]) -> io::Result<()> {
        let Transport::Tls(tls) = self else {
            return tokio::io::AsyncWriteExt::write_all(sock, bytes).await;
        };
        tls.writer().write_all(bytes)?;
        self.flush(sock).await
    }

    /// Wait until every TLS record is written (nothing to do for plain TCP, which
    /// stages nothing).
    pub async fn flush(&mut self, sock: &mut OwnedWriteHalf) -> io::Result<()> {
        while self.wants_write(&[]) {
            std::future::poll_fn(|cx| self.poll_write(cx, sock, &[])).await?;
        }
        Ok(())
    }

    /// Whether bytes wait for the socket: the channel's (plain) or TLS records.
    pub fn wants_write(&self, channel_output: &[u8]) -> bool {
        match self {
            Transport::Plain => !channel_output.is_empty(),
            Transport::Tls(tls) => tls.wants_write(),
        }
    }

    /// Write what the channel has for the client as far as the socket takes it now,
    /// without waiting (what it does not take waits for `poll_write`).
    pub fn write_now(
        &mut self,
        ch: &mut Channel,
        sock: &OwnedWriteHalf,
        now: Now,
    ) -> io::Result<()> {
        if let Transport::Plain = self {
            if ch.output().is_empty() {
                return Ok(());
            }
            return match sock.try_write(ch.output()) {
                Ok(0) => Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    ch.written(n, now);
                    Ok(())
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => Err(e),
            };
        }
        self.stage(ch, now);
        let Transport::Tls(tls) = self else {
            return Ok(());
        };
        while tls.wants_write() {
            match tls.write_tls(&mut TryWriter(sock)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Write what is ready: the channel's bytes `plain` (plain TCP; the count is of
    /// those bytes) or the session's records (TLS; the count is of wire bytes, the
    /// plaintext was counted by `stage`). Pending while the socket is full.
    pub fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        sock: &mut OwnedWriteHalf,
        plain: &[u8],
    ) -> Poll<io::Result<usize>> {
        let tls = match self {
            Transport::Plain => return Pin::new(sock).poll_write(cx, plain),
            Transport::Tls(tls) => tls,
        };
        let mut total = 0;
        while tls.wants_write() {
            match tls.write_tls(&mut PollWriter { sock, cx }) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return match total {
                        0 => Poll::Pending,
                        n => Poll::Ready(Ok(n)),
                    };
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(total))
    }

    /// The session ends: a TLS close_notify goes out with the last bytes.
    pub fn close(&mut self) {
        if let Transport::Tls(tls) = self {
            tls.send_close_notify();
        }
    }
}

/// `Write` over a socket half that never waits: WouldBlock when it is full.
struct TryWriter<'a>(&'a OwnedWriteHalf);

impl Write for TryWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `Write` over a socket half for rustls's `write_tls`, inside a poll: WouldBlock
/// when the socket is full (the task is then woken when it has room).
struct PollWriter<'a, 'b> {
    sock: &'a mut OwnedWriteHalf,
    cx: &'a mut Context<'b>,
}

impl Write for PollWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.sock).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match Pin::new(&mut *self.sock).poll_write_vectored(self.cx, bufs) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
