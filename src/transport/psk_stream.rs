//! The bridge's TLS-PSK connection (`psk_client.rs` sets it up): the socket and an
//! OpenSSL client session over an in-memory `Pipe`, as tokio's `AsyncRead` and
//! `AsyncWrite`. Records move between the two on the socket's readiness, so OpenSSL
//! never blocks a thread and never touches the file descriptor.
//!
//! Bounded: at most `OUTBOX_LIMIT` of records wait before a write waits for the
//! socket, a read takes one record's worth at a time, and one `poll_read` reads the
//! socket at most `READS_PER_POLL` times before yielding.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use openssl::ssl::{ErrorCode, SslRef, SslStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::pipe::Pipe;
use super::psk::openssl_reason;

/// TLS records waiting for the socket at most before a write waits for it.
const OUTBOX_LIMIT: usize = 64 * 1024;
/// One read from the socket: a TLS record and its header.
const READ_CHUNK: usize = 16 * 1024 + 512;
/// Socket reads one `poll_read` makes before yielding (records without application
/// data, e.g. TLS 1.3 session tickets, make none of them end the call).
const READS_PER_POLL: usize = 64;
/// Round trips a handshake may take (TLS 1.2 PSK takes two).
const HANDSHAKE_TURNS: usize = 16;

/// A TLS-PSK connection to the remote.
pub struct PskStream {
    tcp: TcpStream,
    tls: SslStream<Pipe>,
    /// close_notify is queued.
    closing: bool,
}

impl PskStream {
    pub(super) fn new(tcp: TcpStream, tls: SslStream<Pipe>) -> PskStream {
        PskStream {
            tcp,
            tls,
            closing: false,
        }
    }

    pub(super) fn ssl(&self) -> &SslRef {
        self.tls.ssl()
    }

    /// Shake hands. Err: OpenSSL's or the socket's reason.
    pub(super) async fn handshake(&mut self) -> Result<(), String> {
        for _ in 0..HANDSHAKE_TURNS {
            match self.tls.do_handshake() {
                Ok(()) => {
                    return std::future::poll_fn(|cx| self.poll_send(cx))
                        .await
                        .map_err(|e| format!("write: {e}"));
                }
                Err(e) if e.code() == ErrorCode::WANT_READ => {
                    std::future::poll_fn(|cx| self.poll_send(cx))
                        .await
                        .map_err(|e| format!("write: {e}"))?;
                    let more = std::future::poll_fn(|cx| self.poll_fill(cx))
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    if !more {
                        return Err("the remote closed the connection in the handshake".into());
                    }
                }
                Err(e) => {
                    // The alert OpenSSL queued tells the remote why.
                    let _ = std::future::poll_fn(|cx| self.poll_send(cx)).await;
                    return Err(ssl_reason(&e));
                }
            }
        }
        Err(format!("no handshake after {HANDSHAKE_TURNS} round trips"))
    }

    /// Write the records waiting in the pipe until none wait.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.tls.get_ref().pending().is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, self.tls.get_ref().pending()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.tls.get_mut().sent(n);
        }
        Poll::Ready(Ok(()))
    }

    /// Read what the socket has into the pipe; false at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut chunk = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut buf))?;
        if buf.filled().is_empty() {
            return Poll::Ready(Ok(false));
        }
        self.tls.get_mut().feed(buf.filled());
        Poll::Ready(Ok(true))
    }
}

fn ssl_reason(e: &openssl::ssl::Error) -> String {
    match (e.ssl_error(), e.io_error()) {
        (Some(stack), _) => openssl_reason(stack),
        (None, Some(io)) => io.to_string(),
        (None, None) => format!("OpenSSL error {:?}", e.code()),
    }
}

fn io_error(e: &openssl::ssl::Error) -> io::Error {
    io::Error::other(format!("TLS: {}", ssl_reason(e)))
}

impl AsyncRead for PskStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        for _ in 0..READS_PER_POLL {
            // What OpenSSL wrote while reading (a TLS 1.3 key update's answer) goes
            // out when the socket takes it; a full socket does not stop reading.
            if let Poll::Ready(Err(e)) = me.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match me.tls.ssl_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Poll::Ready(Ok(())),
                Err(e) if e.code() == ErrorCode::WANT_READ => {
                    // The end of the socket without close_notify ends the stream too.
                    if !ready!(me.poll_fill(cx))? {
                        return Poll::Ready(Ok(()));
                    }
                }
                Err(e) => return Poll::Ready(Err(io_error(&e))),
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl AsyncWrite for PskStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.tls.get_ref().pending().len() >= OUTBOX_LIMIT {
            ready!(me.poll_send(cx))?;
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // The pipe takes every record, so OpenSSL encrypts all it is given.
        let take = buf.len().min(OUTBOX_LIMIT);
        let n = me.tls.ssl_write(&buf[..take]).map_err(|e| io_error(&e))?;
        if let Poll::Ready(Err(e)) = me.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_send(cx))?;
        Pin::new(&mut me.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if !me.closing {
            me.closing = true;
            let _ = me.tls.shutdown();
        }
        ready!(me.poll_send(cx))?;
        Pin::new(&mut me.tcp).poll_shutdown(cx)
    }
}
