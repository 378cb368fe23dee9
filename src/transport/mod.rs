//! What lies between a connection's socket and its channel: nothing (plain TCP), a
//! TLS session (rustls, which is sans-IO like the channel; OpenSSL over an in-memory
//! pipe for TLS-PSK, `psk`), a WebSocket state (`ws`, sans-IO too), or both layered
//! (WSS: TLS below, WebSocket above). The
//! connection driver always reads and writes the TCP socket itself, so every
//! transport hibernates the same way (the socket is parked; the TLS session and the
//! WebSocket state wait in the connection's box) and the channel only ever sees MQTT
//! bytes.
//!
//! Reading: the driver hands every chunk read from the socket to `received`, which
//! appends the MQTT bytes it carries to the read buffer. Writing: `stage` moves what
//! the channel has for the client into the transport (bounded: rustls's buffer limit,
//! one 64 KiB WebSocket frame, so a slow reader still holds the channel back), and
//! `poll_write` writes what is ready for the socket.

mod pipe;
pub mod psk;
pub mod psk_client;
pub mod psk_file;
mod psk_stream;
pub mod tls;
pub mod ws;

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio::net::tcp::OwnedWriteHalf;

use crate::channel::{Channel, Now};
use crate::config::CertField;
use psk::PskSession;

/// The transport of one connection: one pointer, so that every `Connection` (and
/// each hibernated one's box) stays in its allocator size class whatever the
/// listener; the layers live behind it.
pub(crate) enum Transport {
    Plain,
    Layered(Box<Layers>),
}

/// What lies under the channel on a TLS or WebSocket connection. Each layer is boxed
/// on its own: a TLS session is large and plain WebSocket connections carry none.
pub(crate) enum Layers {
    Tls(Box<rustls::ServerConnection>),
    /// TLS with pre-shared keys (OpenSSL): a listener with `psk_ciphers`.
    Psk(Box<PskSession>),
    /// MQTT over WebSocket, over TLS for WSS.
    Ws(Box<Ws>),
}

/// The layers of a WebSocket connection: the TLS session under it (WSS), whose
/// plaintext is the WebSocket's wire.
pub(crate) struct Ws {
    pub tls: Option<Box<rustls::ServerConnection>>,
    pub ws: ws::WsState,
}

/// A transport seen by layer, for matching.
enum View<'a> {
    Plain,
    Tls(&'a mut rustls::ServerConnection),
    Psk(&'a mut PskSession),
    Ws(&'a mut Ws),
}

enum ViewRef<'a> {
    Plain,
    Tls(&'a rustls::ServerConnection),
    Psk(&'a PskSession),
    Ws(&'a Ws),
}

/// A transport-level failure: the connection is closed and the reason logged.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TransportError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS: {0}")]
    Io(#[from] io::Error),
    #[error(transparent)]
    Ws(#[from] ws::WsError),
    /// A TLS-PSK failure, with the identity the client offered.
    #[error("TLS: {0}")]
    Psk(String),
}

/// What a chunk of socket bytes amounted to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    Open,
    /// The peer ended the session (TLS close_notify): like end of stream.
    Closed,
}

impl Transport {
    pub fn tls(session: Box<rustls::ServerConnection>) -> Transport {
        Transport::Layered(Box::new(Layers::Tls(session)))
    }

    pub fn psk(session: Box<PskSession>) -> Transport {
        Transport::Layered(Box::new(Layers::Psk(session)))
    }

    pub fn ws(tls: Option<Box<rustls::ServerConnection>>, ws: ws::WsState) -> Transport {
        Transport::Layered(Box::new(Layers::Ws(Box::new(Ws { tls, ws }))))
    }

    /// The TLS session of a TLS-only transport (after its handshake).
    pub fn into_tls(self) -> Option<Box<rustls::ServerConnection>> {
        match self {
            Transport::Layered(layers) => match *layers {
                Layers::Tls(session) => Some(session),
                Layers::Psk(_) | Layers::Ws(_) => None,
            },
            Transport::Plain => None,
        }
    }

    /// Who the TLS layer says the client is, as `peer_cert_as_username` asks: the
    /// certificate's CN or DN, or a PSK client's identity (for either field).
    pub fn tls_identity(&self, field: CertField) -> Option<std::sync::Arc<str>> {
        match self.view_ref() {
            ViewRef::Tls(tls) => tls::peer_identity(tls)?.field(field),
            ViewRef::Psk(psk) => psk
                .psk_identity()
                .or_else(|| psk.peer_certificate()?.field(field)),
            ViewRef::Plain | ViewRef::Ws(_) => None,
        }
    }

    /// The verified client certificate's subject, on any TLS-carrying transport (TLS,
    /// PSK with `verify_peer`, WSS): what `%C`/`%d` placeholders and ACLs see.
    pub fn peer_cert(&self) -> Option<crate::hooks::CertIdentity> {
        match self.view_ref() {
            ViewRef::Tls(tls) => tls::peer_identity(tls),
            ViewRef::Psk(psk) => psk.peer_certificate(),
            ViewRef::Ws(ws) => tls::peer_identity(ws.tls.as_deref()?),
            ViewRef::Plain => None,
        }
    }

    /// The WebSocket layer, if any.
    pub fn ws_layer(&mut self) -> Option<&mut Ws> {
        match self.view() {
            View::Ws(ws) => Some(ws),
            _ => None,
        }
    }

    fn view(&mut self) -> View<'_> {
        match self {
            Transport::Plain => View::Plain,
            Transport::Layered(layers) => match &mut **layers {
                Layers::Tls(tls) => View::Tls(tls),
                Layers::Psk(psk) => View::Psk(psk),
                Layers::Ws(ws) => View::Ws(ws),
            },
        }
    }

    fn view_ref(&self) -> ViewRef<'_> {
        match self {
            Transport::Plain => ViewRef::Plain,
            Transport::Layered(layers) => match &**layers {
                Layers::Tls(tls) => ViewRef::Tls(tls),
                Layers::Psk(psk) => ViewRef::Psk(psk),
                Layers::Ws(ws) => ViewRef::Ws(ws),
            },
        }
    }

    /// `wire` was read from the socket: append the MQTT bytes it carries to `rbuf`.
    pub fn received(
        &mut self,
        wire: &[u8],
        rbuf: &mut BytesMut,
    ) -> Result<Received, TransportError> {
        match self.view() {
            View::Plain => {
                rbuf.extend_from_slice(wire);
                Ok(Received::Open)
            }
            View::Tls(tls) => tls_received(tls, wire, rbuf),
            View::Psk(psk) => psk.received(wire, rbuf).map_err(TransportError::Psk),
            View::Ws(layers) => {
                let Ws { tls, ws } = layers;
                let Some(tls) = tls else {
                    return Ok(match ws.received(wire, rbuf)? {
                        ws::WsReceived::Open => Received::Open,
                        ws::WsReceived::Closed => Received::Closed,
                    });
                };
                // The plaintext is the WebSocket's wire: straight into its pending bytes.
                let tls_state = tls_received(tls, wire, ws.pending_mut())?;
                let ws_state = ws.decode(rbuf)?;
                if tls_state == Received::Closed || ws_state == ws::WsReceived::Closed {
                    return Ok(Received::Closed);
                }
                Ok(Received::Open)
            }
        }
    }

    /// Whether the transport holds so much for the client (WebSocket Pongs, OpenSSL's
    /// KeyUpdates: what it answered on its own) that the connection must write it
    /// before reading more. rustls needs no such bound: it queues at most one KeyUpdate
    /// answer, and refuses more than 32 requests in a row.
    pub fn backlogged(&self) -> bool {
        match self.view_ref() {
            ViewRef::Ws(layers) => layers.ws.backlogged(),
            ViewRef::Psk(psk) => psk.backlogged(),
            ViewRef::Plain | ViewRef::Tls(_) => false,
        }
    }

    /// Still in the TLS handshake.
    pub fn handshaking(&self) -> bool {
        match self.view_ref() {
            ViewRef::Plain | ViewRef::Ws(_) => false,
            ViewRef::Tls(tls) => tls.is_handshaking(),
            ViewRef::Psk(psk) => psk.is_handshaking(),
        }
    }

    /// Move what the channel has for the client into the transport (TLS: encrypted
    /// into records, as far as the session's buffer limit allows; WebSocket: framed,
    /// one bounded frame at a time). Whether anything was taken.
    pub fn stage(&mut self, ch: &mut Channel, now: Now) -> bool {
        let output = ch.output();
        if output.is_empty() {
            return false;
        }
        let n = match self.view() {
            View::Plain => 0,
            // rustls takes at most its buffer limit (64 KiB by default); never fails
            // for a connection past its handshake.
            View::Tls(tls) => tls.writer().write(output).unwrap_or(0),
            View::Psk(psk) => psk.write_plain(output),
            View::Ws(layers) => layers.ws.stage(output),
        };
        if n > 0 {
            ch.written(n, now);
        }
        n > 0
    }

    /// Send `bytes` (not from a channel: a refusing CONNACK, the handshake's
    /// records, a last write), waiting for the socket as needed.
    pub async fn send_all(&mut self, sock: &mut OwnedWriteHalf, bytes: &[u8]) -> io::Result<()> {
        match self.view() {
            View::Plain => return tokio::io::AsyncWriteExt::write_all(sock, bytes).await,
            View::Tls(tls) => tls.writer().write_all(bytes)?,
            View::Psk(psk) => psk.write_all_plain(bytes)?,
            View::Ws(layers) => layers.ws.stage_all(bytes),
        }
        self.flush(sock).await
    }

    /// Wait until every TLS record and WebSocket frame is written (nothing to do for
    /// plain TCP, which stages nothing).
    pub async fn flush(&mut self, sock: &mut OwnedWriteHalf) -> io::Result<()> {
        while self.wants_write(&[]) {
            std::future::poll_fn(|cx| self.poll_write(cx, sock, &[])).await?;
        }
        Ok(())
    }

    /// Whether bytes wait for the socket: the channel's (plain), TLS records or
    /// WebSocket frames.
    pub fn wants_write(&self, channel_output: &[u8]) -> bool {
        match self.view_ref() {
            ViewRef::Plain => !channel_output.is_empty(),
            ViewRef::Tls(tls) => tls.wants_write(),
            ViewRef::Psk(psk) => psk.wants_write(),
            ViewRef::Ws(layers) => {
                !layers.ws.out().is_empty() || layers.tls.as_ref().is_some_and(|t| t.wants_write())
            }
        }
    }

    /// Write what is ready: the channel's bytes `plain` (plain TCP; the count is of
    /// those bytes) or the transport's (TLS, WebSocket; the count is of wire bytes,
    /// the channel's were counted by `stage`). Pending while the socket is full.
    pub fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        sock: &mut OwnedWriteHalf,
        plain: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.view() {
            View::Plain => Pin::new(sock).poll_write(cx, plain),
            View::Tls(tls) => poll_write_tls(tls, cx, sock),
            View::Psk(psk) => poll_write_psk(psk, cx, sock),
            View::Ws(layers) => {
                let Ws { tls, ws } = layers;
                let Some(tls) = tls else {
                    return poll_write_ws(ws, cx, sock);
                };
                // Frames into the session as far as its buffer allows, records out,
                // until both are empty or the socket is full (bounded: each turn
                // either empties the session or waits).
                let mut total = 0;
                for _ in 0..64 {
                    let taken = tls.writer().write(ws.out()).unwrap_or(0);
                    ws.sent(taken);
                    if taken == 0 && !ws.out().is_empty() && !tls.wants_write() {
                        // The session takes no more (it failed or was closed).
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    match poll_write_tls(tls, cx, sock) {
                        Poll::Ready(Ok(n)) => total += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending if total == 0 => return Poll::Pending,
                        Poll::Pending => break,
                    }
                    if ws.out().is_empty() && !tls.wants_write() {
                        break;
                    }
                }
                Poll::Ready(Ok(total))
            }
        }
    }

    /// Write what is ready as far as the socket takes it now, without waiting: the
    /// channel's output (plain), or TLS records and WebSocket frames after staging it.
    /// What the socket does not take waits for `poll_write`. Err: the socket failed.
    pub fn write_now(
        &mut self,
        ch: &mut Channel,
        sock: &OwnedWriteHalf,
        now: Now,
    ) -> io::Result<()> {
        let View::Plain = self.view() else {
            self.stage(ch, now);
            return self.flush_now(sock);
        };
        let output = ch.output();
        if output.is_empty() {
            return Ok(());
        }
        match sock.try_write(output) {
            Ok(0) => Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                ch.written(n, now);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The transport's bytes to the socket as far as it takes them now.
    fn flush_now(&mut self, sock: &OwnedWriteHalf) -> io::Result<()> {
        let mut sock = TryWriter(sock);
        match self.view() {
            View::Plain => Ok(()),
            View::Tls(tls) => write_tls_now(tls, &mut sock),
            View::Psk(psk) => match psk.write_tls(&mut sock) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                other => other.map(|_| ()),
            },
            View::Ws(layers) => {
                let Ws { tls, ws } = layers;
                // Bounded: each turn empties the session, or the socket is full.
                for _ in 0..64 {
                    if ws.out().is_empty() && tls.as_ref().is_none_or(|t| !t.wants_write()) {
                        break;
                    }
                    let Some(tls) = tls else {
                        match sock.write(ws.out()) {
                            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                            Ok(n) => ws.sent(n),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e),
                        }
                        continue;
                    };
                    let taken = tls.writer().write(ws.out()).unwrap_or(0);
                    ws.sent(taken);
                    write_tls_now(tls, &mut sock)?;
                    if tls.wants_write() || taken == 0 {
                        // The socket is full, or the session takes no more now.
                        break;
                    }
                }
                Ok(())
            }
        }
    }

    /// The session ends: a WebSocket Close frame and a TLS close_notify go out with
    /// the last bytes.
    pub fn close(&mut self) {
        match self.view() {
            View::Plain => {}
            View::Tls(tls) => tls.send_close_notify(),
            View::Psk(psk) => psk.send_close_notify(),
            View::Ws(layers) => {
                let Ws { tls, ws } = layers;
                ws.close();
                if let Some(tls) = tls {
                    let taken = tls.writer().write(ws.out()).unwrap_or(0);
                    ws.sent(taken);
                    // After the Close frame, unless it did not fit (then the TCP
                    // close ends the session).
                    if ws.out().is_empty() {
                        tls.send_close_notify();
                    }
                }
            }
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

/// `wire` (TLS records) into the session; the plaintext appended to `plain`.
fn tls_received(
    tls: &mut rustls::ServerConnection,
    wire: &[u8],
    plain: &mut BytesMut,
) -> Result<Received, TransportError> {
    let mut rest = wire;
    while !rest.is_empty() {
        // Takes what fits in its buffer; the loop hands it the rest once the
        // records so far are processed and their plaintext taken.
        let taken = tls.read_tls(&mut rest)?;
        let state = tls.process_new_packets()?;
        let mut readable = state.plaintext_bytes_to_read();
        while readable > 0 {
            let start = plain.len();
            plain.resize(start + readable, 0);
            let n = tls.reader().read(&mut plain[start..])?;
            plain.truncate(start + n);
            if n == 0 {
                break;
            }
            readable -= n;
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

/// Write the session's records until it has none or the socket is full.
fn poll_write_tls(
    tls: &mut rustls::ServerConnection,
    cx: &mut Context<'_>,
    sock: &mut OwnedWriteHalf,
) -> Poll<io::Result<usize>> {
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

/// Write the PSK session's records until it has none or the socket is full.
fn poll_write_psk(
    psk: &mut PskSession,
    cx: &mut Context<'_>,
    sock: &mut OwnedWriteHalf,
) -> Poll<io::Result<usize>> {
    match psk.write_tls(&mut PollWriter { sock, cx }) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
        other => Poll::Ready(other),
    }
}

/// Write the WebSocket's frames (plain WS) until none wait or the socket is full.
fn poll_write_ws(
    ws: &mut ws::WsState,
    cx: &mut Context<'_>,
    sock: &mut OwnedWriteHalf,
) -> Poll<io::Result<usize>> {
    let mut total = 0;
    while !ws.out().is_empty() {
        match Pin::new(&mut *sock).poll_write(cx, ws.out()) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                ws.sent(n);
                total += n;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending if total == 0 => return Poll::Pending,
            Poll::Pending => break,
        }
    }
    Poll::Ready(Ok(total))
}

/// Write the session's records until it has none or the socket is full, now.
fn write_tls_now(tls: &mut rustls::ServerConnection, sock: &mut TryWriter<'_>) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
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
