//! The connection driver: the async edge around one client's channel.
//!
//! It owns the socket: it reads bytes and hands them, through the connection's
//! transport (plain, TLS, WebSocket, or WebSocket over TLS: `crate::transport`), to
//! the channel (`crate::channel`, sans-IO), takes mailbox events for it, writes what
//! the channel produced, and runs its timers; it makes no protocol decision. One task
//! per busy connection; an idle one hibernates without a task
//! (`Connection::hibernate`, `crate::hibernate`). A failure here closes this
//! connection only.

pub(crate) mod accept;
pub(crate) mod enhanced_auth;
mod refusals;
mod site;

pub(crate) use site::{Edge, Site};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use crate::broker::registry::ConnEvent;
use crate::channel::connect::{preface, Preface};
use crate::channel::{Channel, Close, Now};
use crate::codec::ReasonCode;
use crate::config::WsConfig;
use crate::hibernate::{Hibernator, Readable};
use crate::metrics::Metrics;
use crate::transport::tls::TlsListener;
use crate::transport::ws::{WsError, WsState};
use crate::transport::{Received, Transport};
use refusals::ReadFailed;

/// Bound on the last write to a closing connection (DISCONNECT, pending acks): a
/// client that stopped reading cannot hold up its successor or a shutdown.
const FINAL_WRITE: Duration = Duration::from_secs(1);

/// How `Connection::run` ends.
enum Outcome {
    Closed(Close),
    /// Quiet for `hibernate_after` with nothing pending: park it (see `hibernate`).
    Idle,
}

/// What a listener gives each connection it accepts.
pub(crate) struct Env {
    /// The listener's shared part (its `edge` is always there for a socket).
    pub site: Arc<Site>,
    /// Held for the connection's whole life, hibernated or not.
    pub guard: ConnGuard,
}

/// The layers a listener's connections get, set up in this order before CONNECT.
/// In the listener's `Site`, shared by its connections.
pub(crate) struct ListenerLayers {
    /// `proxy_protocol = on`: a PROXY header first, naming the client.
    pub proxy: Option<ProxyLayer>,
    /// An SSL or WSS listener's TLS settings.
    pub tls: Option<Arc<TlsListener>>,
    /// A WS or WSS listener's WebSocket settings.
    pub ws: Option<WsConfig>,
}

/// A listener's `proxy_protocol` settings.
pub(crate) struct ProxyLayer {
    pub timeout: Duration,
    /// The listener (its access rules, its refusal counts).
    pub entry: Arc<crate::listener::control::ListenerEntry>,
}

/// A listener's connection slot and the node's open-file slot, from the accept until
/// the `Connection` is built (a refused or failed connect gives both back by dropping
/// this).
pub(crate) struct ConnGuard {
    /// Forgotten once the connection is built: its `Drop` gives the slot back.
    pub permit: OwnedSemaphorePermit,
    /// The node's open-file ceiling (zero-sized).
    pub slot: crate::listener::ceiling::Slot,
}

pub(crate) struct Connection {
    channel: Channel,
    transport: Transport,
    /// The node's open-file ceiling (zero-sized); the listener's slot is given back
    /// by `Drop`, through the channel's site.
    _slot: crate::listener::ceiling::Slot,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(edge) = &self.channel.site().edge {
            edge.slots.add_permits(1);
        }
    }
}

/// Idle connections parked without a task (see `crate::hibernate`).
#[derive(Clone)]
pub struct Hibernation(Arc<Hibernator<Box<Connection>>>);

impl Hibernation {
    /// Start the poller; woken connections resume as tasks on the current runtime.
    pub fn start() -> std::io::Result<Hibernation> {
        let runtime = tokio::runtime::Handle::current();
        let hibernator = Hibernator::start(
            move |conn: Box<Connection>, socket| {
                runtime.spawn(resume(conn, socket));
            },
            |conn: &mut Box<Connection>, socket: &std::net::TcpStream| conn.answer_pings(socket),
        )?;
        Ok(Hibernation(hibernator))
    }

    /// Wake every hibernated connection (they see the shutdown signal) and park no more.
    pub fn shutdown(&self) {
        self.0.shutdown();
    }
}

/// Serve one accepted TCP connection until it closes.
pub(crate) async fn serve(env: Env, stream: TcpStream, mut peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let site = env.site;
    let broker = site.broker.clone();
    // Buffers start empty and grow on demand: idle connections must stay small.
    let mut rbuf = BytesMut::new();
    let mut transport = Transport::Plain;
    let mut username_from_cert = None;
    let layers = site.layers();
    if let Some(proxy) = layers.and_then(|l| l.proxy.as_ref()) {
        // The PROXY header comes first, below TLS and WebSocket; from here on the
        // client it names is the peer (hooks, `clients show`, logs, access rules).
        // What follows it is the next layer's first bytes.
        let header = Box::pin(crate::listener::proxy::read_header(&reader, proxy.timeout));
        match header.await {
            Ok((source, rest)) => {
                peer = source.unwrap_or(peer);
                rbuf = rest;
            }
            Err(reason) => {
                crate::listener::admission::proxy_failed(&broker, &proxy.entry, peer, &reason);
                return;
            }
        }
        if !crate::listener::admission::admit(&broker, &proxy.entry, peer, true) {
            return;
        }
    }
    if let Some(tls) = layers.and_then(|l| l.tls.as_ref()) {
        let shaken = Box::pin(handshake(tls, peer, &mut reader, &mut writer, &mut rbuf));
        let Some(session) = shaken.await else {
            Metrics::inc(&broker.metrics.tls_handshake_failed);
            return;
        };
        username_from_cert = tls
            .peer_cert_as_username
            .and_then(|field| session.tls_identity(field));
        transport = session;
    }
    if let Some(ws) = layers.and_then(|l| l.ws.as_ref()) {
        // WebSocket above whatever is below (TLS for WSS); what the TLS handshake
        // left over is the start of the HTTP request.
        let mut state = WsState::default();
        state.pending_mut().extend_from_slice(&rbuf.split());
        transport = Transport::ws(transport.into_tls(), state);
        let upgrade = Box::pin(upgrade(
            ws,
            site.zone.idle_timeout,
            peer,
            &mut reader,
            &mut writer,
            &mut transport,
            &mut rbuf,
        ));
        if let Err(reason) = upgrade.await {
            Metrics::inc(&broker.metrics.ws_handshake_failed);
            let id = site.listener_id();
            // Logged at most once every 10 s, as TLS handshake failures: a scanner
            // on 8083 must not fill the log; every refusal is counted above.
            if let Some(skipped) = WS_REFUSALS.ready(crate::message::now_ms(), 10_000) {
                tracing::info!(listener = %id, %peer, reason, not_logged_since = skipped, "WebSocket upgrade refused");
            }
            return;
        }
    }
    // CONNECT must arrive within idle_timeout. The connect and teardown stages are
    // boxed: they are large and short-lived, and inlined they would size the future
    // of every connection.
    let connect = Box::pin(tokio::time::timeout(site.zone.idle_timeout, async {
        loop {
            match preface(&broker, peer, &mut rbuf) {
                Preface::More => {}
                Preface::Connect(c) => return Ok(c),
                Preface::Reject(bytes) => return Err(bytes),
            }
            if let Err(why) = read_more(&reader, &mut writer, &mut transport, &mut rbuf).await {
                refusals::read_failed(&site, peer, &why);
                return Err(&[][..]);
            }
        }
    }))
    .await;
    let mut connect = match connect {
        Ok(Ok(c)) => c,
        Ok(Err(reject)) => {
            // The refusal, or what the transport has for the client (a WebSocket
            // Close frame, a TLS alert), bounded as every last write.
            let last = Box::pin(async {
                match reject.is_empty() {
                    true => transport.flush(&mut writer).await,
                    false => transport.send_all(&mut writer, reject).await,
                }
            });
            let _ = tokio::time::timeout(FINAL_WRITE, last).await;
            return;
        }
        Err(_) => {
            refusals::timed_out(&site, peer);
            return;
        }
    };
    if let Some(username) = username_from_cert {
        // The certificate is the client's identity (`peer_cert_as_username`).
        connect.username = Some(username.to_string());
    }
    let wire = enhanced_auth::Wire {
        reader: &reader,
        writer: &mut writer,
        transport: &mut transport,
        rbuf: &mut rbuf,
    };
    let exchange = Box::pin(enhanced_auth::run(
        &broker,
        site.zone.idle_timeout,
        peer,
        &mut connect,
        wire,
    ));
    let Ok(enhanced) = exchange.await else {
        return; // refused (and told so), or gone
    };
    let presented = accept::Presented {
        cert: transport.peer_cert(),
        enhanced,
    };
    let opened = Box::pin(accept::open(&site, peer, *connect, presented, &Now::read));
    let channel = match opened.await {
        Ok(channel) => channel,
        Err(accept::Refused(connack)) => {
            if let Some(connack) = connack {
                let _ = Box::pin(transport.send_all(&mut writer, &connack)).await;
            }
            return;
        }
    };
    let ConnGuard { permit, slot } = env.guard;
    permit.forget();
    let conn = Connection {
        channel,
        transport,
        _slot: slot,
    };
    let stream = reader.reunite(writer).expect("halves of one stream");
    drive(conn, stream, rbuf).await;
}

/// The TLS handshake (rustls, or OpenSSL on a PSK listener), within the listener's
/// `handshake_timeout`; what the client sent after it (its CONNECT) is left in
/// `rbuf`. None: failed, logged.
async fn handshake(
    tls: &TlsListener,
    peer: SocketAddr,
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    rbuf: &mut BytesMut,
) -> Option<Transport> {
    let mut transport = match tls.session() {
        Ok(session) => session,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "TLS session not created");
            return None;
        }
    };
    let shaken = tokio::time::timeout(tls.handshake_timeout, async {
        // Bytes read behind a PROXY header are the start of the handshake.
        let early = rbuf.split();
        through(&mut transport, &early, rbuf).map_err(|e| e.to_string())?;
        while transport.handshaking() {
            transport.flush(writer).await.map_err(|e| e.to_string())?;
            read_more(reader, writer, &mut transport, rbuf).await?;
        }
        // The last flight (TLS 1.3: session tickets) goes out before CONNACK.
        transport.flush(writer).await.map_err(|e| e.to_string())
    })
    .await;
    let failed = match shaken {
        Ok(Ok(())) => None,
        Ok(Err(reason)) => Some(reason),
        Err(_) => Some(format!(
            "not finished within handshake_timeout ({:?})",
            tls.handshake_timeout
        )),
    };
    if let Some(reason) = failed {
        // An alert the session has for the client (a bad certificate), if it can go.
        let _ = tokio::time::timeout(FINAL_WRITE, transport.flush(writer)).await;
        // Logged at most once every 10 s (a scan or a flood must not fill the log);
        // every failure is counted in `client.tls.handshake_failed`.
        static FAILED: crate::logging::Throttle = crate::logging::Throttle::new();
        if let Some(skipped) = FAILED.ready(crate::message::now_ms(), 10_000) {
            tracing::info!(%peer, reason, not_logged_since = skipped, "TLS handshake failed");
        }
        return None;
    }
    Some(transport)
}

/// Upgrade refusals on every WebSocket listener, logged once per interval.
static WS_REFUSALS: crate::logging::Throttle = crate::logging::Throttle::new();

/// The HTTP upgrade to WebSocket, within `timeout` (the zone's `idle_timeout`, as for
/// CONNECT); frames the client sent right behind it are decoded into `rbuf`. A
/// refusal's HTTP response is written (bounded) before the connection is dropped.
async fn upgrade(
    config: &WsConfig,
    timeout: Duration,
    peer: SocketAddr,
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    transport: &mut Transport,
    rbuf: &mut BytesMut,
) -> Result<(), String> {
    let done = tokio::time::timeout(timeout, async {
        loop {
            // `serve` made it a WebSocket transport just before.
            let Some(layers) = transport.ws_layer() else {
                return Err("not a WebSocket transport".to_string());
            };
            match layers.ws.upgrade(config, rbuf) {
                Ok(true) => break,
                Ok(false) => {}
                Err(WsError::Refused { status, reason }) => {
                    return Err(format!("{status}: {reason}"))
                }
                Err(e) => return Err(e.to_string()),
            }
            read_more(reader, writer, transport, rbuf).await?;
        }
        // The 101 response goes out before CONNACK.
        transport.flush(writer).await.map_err(|e| e.to_string())
    })
    .await;
    let reason = match done {
        Ok(Ok(())) => {
            tracing::debug!(%peer, "WebSocket upgraded");
            return Ok(());
        }
        Ok(Err(reason)) => reason,
        Err(_) => format!("no WebSocket upgrade within idle_timeout ({timeout:?})"),
    };
    // The refusal's HTTP response (404, 400, ...), if it can go.
    let _ = tokio::time::timeout(FINAL_WRITE, async {
        let _ = transport.flush(writer).await;
        let _ = writer.shutdown().await;
    })
    .await;
    Err(reason)
}

/// Run a connection until it closes or hibernates.
async fn drive(mut conn: Connection, mut stream: TcpStream, mut rbuf: BytesMut) {
    loop {
        let (mut reader, mut writer) = stream.into_split();
        let close = match conn.run(&mut reader, &mut writer, &mut rbuf).await {
            Outcome::Closed(close) => close,
            Outcome::Idle => {
                let socket = reader.reunite(writer).expect("halves of one stream");
                match conn.hibernate(socket) {
                    Ok(()) => return,
                    // Not parked after all (shutting down): go on.
                    Err((back, Some(socket))) => {
                        conn = *back;
                        stream = socket;
                        continue;
                    }
                    Err((back, None)) => {
                        Box::pin(back.finish(Close::Lost, None)).await;
                        return;
                    }
                }
            }
        };
        Box::pin(conn.finish(close, Some(&mut writer))).await;
        return;
    }
}

/// A hibernated connection woke up: run it as a task again.
async fn resume(conn: Box<Connection>, socket: std::net::TcpStream) {
    conn.channel.broker().hibernated.dec();
    match TcpStream::from_std(socket) {
        // Out of the box: a running connection lives in its task.
        Ok(stream) => drive(*conn, stream, BytesMut::new()).await,
        Err(e) => {
            tracing::warn!(client_id = %conn.channel.client_id(), error = %e, "cannot resume a hibernated connection");
            Box::pin(conn.finish(Close::Lost, None)).await;
        }
    }
}

/// Before CONNECT is handled (handshake, upgrade, CONNECT itself): wait for the
/// socket and pass what it has through the transport. Err says why the stream ended.
/// What the transport answered on its own past its bound (WebSocket Pongs) is
/// written first: a client that does not read it is held back by its socket.
async fn read_more(
    reader: &OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    transport: &mut Transport,
    rbuf: &mut BytesMut,
) -> Result<(), ReadFailed> {
    if transport.backlogged() {
        transport.flush(writer).await.map_err(ReadFailed::Io)?;
    }
    reader.readable().await.map_err(ReadFailed::Io)?;
    match read_some(reader, transport, rbuf) {
        Ok(0) => Err(ReadFailed::Closed),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(ReadFailed::from_read(e)),
    }
}

/// Read what the socket has (up to 16 KiB) through a stack buffer and pass it
/// through the transport, appending the MQTT bytes to `rbuf`: the connection's own
/// buffer grows only to what is really pending. Ok(0): the stream ended (EOF, or a
/// TLS close_notify); a TLS failure is an `InvalidData` error.
fn read_some(
    reader: &OwnedReadHalf,
    transport: &mut Transport,
    rbuf: &mut BytesMut,
) -> std::io::Result<usize> {
    let mut scratch = [0u8; 16 * 1024];
    let n = reader.try_read(&mut scratch)?;
    through(transport, &scratch[..n], rbuf)
}

/// `wire` bytes read from the socket, through the transport into `rbuf`.
fn through(transport: &mut Transport, wire: &[u8], rbuf: &mut BytesMut) -> std::io::Result<usize> {
    if wire.is_empty() {
        return Ok(0);
    }
    match transport.received(wire, rbuf) {
        Ok(Received::Open) => Ok(wire.len()),
        Ok(Received::Closed) => Ok(0),
        Err(e) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
    }
}

/// What the kernel already holds for this socket, read without waiting and without
/// asking tokio's reactor first (which may not have seen those bytes yet): for a
/// connection that is being closed and must still process what its client sent.
fn read_now(
    reader: &OwnedReadHalf,
    transport: &mut Transport,
    rbuf: &mut BytesMut,
) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let fd = reader.as_ref().as_raw_fd();
    let mut scratch = [0u8; 16 * 1024];
    // SAFETY: `fd` is the open socket `reader` owns for the whole call, and the
    // buffer is valid for writes of its length.
    let n = unsafe {
        libc::recv(
            fd,
            scratch.as_mut_ptr().cast(),
            scratch.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let n = usize::try_from(n).map_err(|_| std::io::Error::last_os_error())?;
    through(transport, &scratch[..n], rbuf)
}

impl Connection {
    async fn run(
        &mut self,
        reader: &mut OwnedReadHalf,
        writer: &mut OwnedWriteHalf,
        rbuf: &mut BytesMut,
    ) -> Outcome {
        let mailbox = self.channel.mailbox().clone();
        let mut shutdown = self
            .channel
            .site()
            .edge
            .as_ref()
            .map(|e| e.shutdown.clone());
        let ch = &mut self.channel;
        let transport = &mut self.transport;
        // Packets already buffered behind the CONNECT.
        if let Err(close) = ch.handle_bytes(rbuf, Now::read()) {
            return Outcome::Closed(close);
        }
        loop {
            if ch.taking_events() {
                let events = mailbox.take_all();
                if !events.is_empty() {
                    if let Err(close) = ch.handle_events(events, Now::read()) {
                        return Outcome::Closed(close);
                    }
                    // Packets held back for a store read (`InputPause`) go on once it
                    // is answered; nothing happens while it is not.
                    if let Err(close) = ch.handle_bytes(rbuf, Now::read()) {
                        return Outcome::Closed(close);
                    }
                }
                if mailbox.take_behind() {
                    ch.behind(Now::read());
                }
            }
            // Only a paused channel waits for room (one signal per pause): no
            // mailbox lock on every turn for it.
            if ch.waiting_for_room() && mailbox.take_room() {
                if let Err(close) = ch.resume_reading(rbuf, Now::read()) {
                    return Outcome::Closed(close);
                }
            }
            if let Some(reason) = mailbox.take_kick() {
                // What the client sent before it was replaced (a PUBACK, a
                // DISCONNECT) still counts: handle it first, also what waited for
                // a store read that will not be answered now.
                ch.end_read_pause();
                if let Err(earlier) = ch
                    .handle_bytes(rbuf, Now::read())
                    .and_then(|()| drain_socket(ch, reader, transport, rbuf))
                {
                    return Outcome::Closed(earlier);
                }
                return Outcome::Closed(Close::Kicked(reason));
            }
            // Hand the client what is ready before waking the store's threads with
            // the writes and reads gathered meanwhile: on a busy (or single) core a
            // woken store thread may run first, and the client would wait for it.
            // During a drain this overlaps the client's turn with the deletion of
            // the entries it just acknowledged and the read of the next page.
            // Through the transport: TLS and WebSocket bytes are staged first.
            if transport.write_now(ch, writer, Now::read()).is_err() {
                return Outcome::Closed(Close::Lost);
            }
            ch.flush_store_ops();
            run_decisions(ch);
            let now = Now::read();
            transport.stage(ch, now);
            let deadline = ch.next_deadline(now);
            // Nor while the transport holds too much it answered on its own.
            let reading = ch.reading() && !transport.backlogged();
            let output = ch.output();
            let writing = transport.wants_write(output);
            // Writing is one branch among others, never awaited alone: a kick or
            // shutdown interrupts a write to a socket that stopped reading.
            tokio::select! {
                written = std::future::poll_fn(|cx| transport.poll_write(cx, writer, output)), if writing => {
                    match written {
                        Err(_) => return Outcome::Closed(Close::Lost),
                        Ok(n) if matches!(transport, Transport::Plain) && n > 0 => {
                            ch.written(n, Now::read());
                        }
                        Ok(_) => {}
                    }
                }
                ready = reader.readable(), if reading => {
                    if ready.is_err() {
                        return Outcome::Closed(Close::Lost);
                    }
                    match read_some(reader, transport, rbuf) {
                        Ok(0) => {
                            // A TLS close_notify can come in the same read as the
                            // last packets before it (PUBLISH, DISCONNECT): those
                            // still count (plain TCP leaves nothing here).
                            if let Err(close) = ch.handle_bytes(rbuf, Now::read()) {
                                return Outcome::Closed(close);
                            }
                            return Outcome::Closed(Close::Lost);
                        }
                        Ok(n) => {
                            let now = Now::read();
                            ch.bytes_read(n, now);
                            if let Err(close) = ch.handle_bytes(rbuf, now) {
                                return Outcome::Closed(close);
                            }
                            if rbuf.is_empty() {
                                // Decoded payloads keep their own share of the old
                                // allocation; an idle connection holds none.
                                *rbuf = BytesMut::new();
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => {
                            if e.kind() == std::io::ErrorKind::InvalidData {
                                refusals::after_connect(ch, &e);
                            }
                            return Outcome::Closed(Close::Lost);
                        }
                    }
                }
                // Events are taken at the top of the loop.
                _ = mailbox.wait() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = Now::read();
                    if let Err(close) = ch.on_timer(now) {
                        return Outcome::Closed(close);
                    }
                    // A connection woken by a packet is past its hibernate deadline,
                    // and tokio may not have reported the socket readable yet: read
                    // what the kernel holds first, or it parks again at once (and
                    // level-triggered epoll wakes it again: a busy loop, no answer).
                    if may_hibernate(ch, transport, now, rbuf) {
                        if let Err(close) = drain_socket(ch, reader, transport, rbuf) {
                            return Outcome::Closed(close);
                        }
                        if may_hibernate(ch, transport, Now::read(), rbuf) {
                            return Outcome::Idle;
                        }
                    }
                }
                _ = shut_down(&mut shutdown) => return Outcome::Closed(Close::Kicked(ReasonCode::SERVER_SHUTTING_DOWN)),
            }
        }
    }

    /// Park in the hibernator until the socket, the mailbox, the keepalive deadline
    /// or shutdown wakes it. Err gives the connection back with its socket (None: the
    /// socket was lost on the way).
    #[allow(clippy::type_complexity)]
    fn hibernate(mut self, socket: TcpStream) -> Result<(), (Box<Self>, Option<TcpStream>)> {
        let Some(edge) = &self.channel.site().edge else {
            // No hibernator (`may_hibernate` says so first).
            return Err((Box::new(self), Some(socket)));
        };
        let hibernator = edge.hibernation.0.clone();
        // Nothing is pending (`may_hibernate`): give back what buffers kept.
        self.channel.shrink();
        let socket = match socket.into_std() {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!(client_id = %self.channel.client_id(), error = %e, "cannot hibernate");
                return Err((Box::new(self), None));
            }
        };
        let deadline = self.channel.keepalive_deadline();
        let mailbox = self.channel.mailbox().clone();
        let broker = self.channel.broker().clone();
        tracing::debug!(client_id = %self.channel.client_id(), "hibernating");
        broker.hibernated.inc();
        // Boxed now, late: the boxes of hibernated connections are allocated together
        // instead of among the short-lived allocations of their connects, so they
        // pack densely and the memory their tasks used goes back to the OS.
        let boxed = crate::memory::long_lived(|| Box::new(self));
        match hibernator.park(boxed, socket, deadline, |waker| mailbox.arm(waker)) {
            Ok(()) => Ok(()),
            Err((conn, socket)) => {
                broker.hibernated.dec();
                let socket = TcpStream::from_std(socket).ok();
                Err((conn, socket))
            }
        }
    }

    /// Hibernated, its socket readable: if what it holds is only PINGREQs (a plain
    /// connection's keepalive), answer them here and stay parked; anything else (a
    /// packet, part of one, EOF, TLS or WebSocket bytes) wakes the connection, with
    /// nothing read. A PINGRESP the socket cannot take at once waits in the channel's
    /// output for the woken connection to write.
    fn answer_pings(&mut self, socket: &std::net::TcpStream) -> Readable {
        use std::io::{Read, Write};
        if !matches!(self.transport, Transport::Plain) {
            return Readable::Wake;
        }
        let mut wire = [0u8; 64];
        let Ok(n) = socket.peek(&mut wire) else {
            return Readable::Wake;
        };
        let Some(pings) = crate::channel::only_pings(&wire[..n]) else {
            return Readable::Wake;
        };
        let mut reader = socket;
        if reader.read_exact(&mut wire[..n]).is_err() {
            // Peeked bytes are there to read; a failure is the socket's: wake.
            return Readable::Wake;
        }
        let now = Now::read();
        self.channel.pings_answered_dormant(pings, now);
        let out = self.channel.output();
        let sent = (&*socket).write(out).unwrap_or(0);
        self.channel.written(sent, now);
        if self.channel.output().is_empty() {
            // Parked again as small as it was (the PINGRESP's buffer goes).
            self.channel.drop_turn();
            Readable::Handled(self.channel.keepalive_deadline())
        } else {
            Readable::Wake
        }
    }

    /// Leave: the channel says why (v5) and whether the will is due; write what it
    /// has for the client (bounded), then hand the session back.
    async fn finish(mut self, close: Close, writer: Option<&mut OwnedWriteHalf>) {
        let publish_will = self.channel.close(&close, Now::read());
        if let Some(writer) = writer {
            let (ch, transport) = (&mut self.channel, &mut self.transport);
            let _ = tokio::time::timeout(FINAL_WRITE, async {
                match transport {
                    Transport::Plain => {
                        let _ = writer.write_all(ch.output()).await;
                    }
                    Transport::Layered(_) => {
                        // Staging stops after a WebSocket Close frame went out.
                        while transport.stage(ch, Now::read()) {
                            if transport.flush(writer).await.is_err() {
                                break;
                            }
                        }
                        transport.close();
                        let _ = transport.flush(writer).await;
                    }
                }
                let _ = writer.shutdown().await;
            })
            .await;
        }
        self.channel.detach(publish_will, Now::read());
    }
}

/// Run the authorization decisions the channel waits for (a hook asking a backend);
/// each answers through the mailbox. Off this task, so the connection goes on.
fn run_decisions(ch: &mut Channel) {
    for (ticket, decision) in ch.take_decisions() {
        let mailbox = ch.mailbox().clone();
        tokio::spawn(async move {
            let verdicts = decision.await;
            mailbox.push(ConnEvent::Authorized { ticket, verdicts });
        });
    }
}

/// Quiet for `hibernate_after`, with nothing buffered, in flight or awaited?
fn may_hibernate(ch: &mut Channel, transport: &Transport, now: Now, rbuf: &BytesMut) -> bool {
    let Some(after) = ch
        .zone()
        .hibernate_after
        .filter(|_| ch.site().edge.is_some())
    else {
        return false;
    };
    rbuf.is_empty() && !transport.wants_write(&[]) && ch.hibernation_due(now, after)
}

/// The node is shutting down (never, for a connection without an edge).
async fn shut_down(shutdown: &mut Option<tokio::sync::watch::Receiver<bool>>) {
    match shutdown {
        // Also when the sender is gone: the node is.
        Some(rx) => {
            let _ = rx.changed().await;
        }
        None => std::future::pending().await,
    }
}

/// Handle what is already readable, without waiting (bounded: 64 reads).
fn drain_socket(
    ch: &mut Channel,
    reader: &OwnedReadHalf,
    transport: &mut Transport,
    rbuf: &mut BytesMut,
) -> Result<(), Close> {
    for _ in 0..64 {
        match read_now(reader, transport, rbuf) {
            Ok(n) if n > 0 => ch.bytes_read(n, Now::read()),
            // Nothing more, or the end: a TLS close_notify may still have left the
            // last packets before it in `rbuf` (handled below, as `drive` does).
            _ => break,
        }
        ch.handle_bytes(rbuf, Now::read())?;
    }
    ch.handle_bytes(rbuf, Now::read())
}

#[cfg(test)]
mod hook_tests;

#[cfg(test)]
mod stalled_reader_tests;

#[cfg(test)]
mod test_listener;

#[cfg(test)]
mod tests {
    /// A busy connection keeps this future (its task); a hibernated one keeps only
    /// its boxed `Connection`, the largest part of an idle connection's memory. The
    /// connect and teardown stages are boxed to keep the future small, and the
    /// `Connection` fits mimalloc's 320-byte size class; this guards both.
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config::defaults(dir.path());
        config.node.data_dir = dir.path().join("data");
        let broker = crate::broker::Broker::open(config).unwrap();
        let zone = broker.zone("external");
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let (alive, _alive_rx) = tokio::sync::mpsc::channel(1);
        let permit = std::sync::Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let env = super::Env {
            site: std::sync::Arc::new(super::Site {
                broker: broker.clone(),
                zone,
                listener: std::sync::Arc::from("external"),
                edge: Some(super::Edge {
                    id: std::sync::Arc::from("mqtt:tcp:external"),
                    layers: None,
                    shutdown,
                    hibernation: super::Hibernation::start().unwrap(),
                    slots: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
                    _alive: alive,
                }),
            }),
            guard: super::ConnGuard {
                permit,
                slot: crate::listener::ceiling::Slot::take().unwrap(),
            },
        };
        let fut = super::serve(env, stream, peer);
        let size = std::mem::size_of_val(&fut);
        // With tokio's task header (cache-line aligned) and trailer, a future up to
        // about 2,900 bytes keeps the task in mimalloc's 3,072-byte size class; the
        // transport (TLS) added 72 bytes to the 2,560 before it.
        assert!(size <= 2688, "connection future is {size} bytes");
        let conn = std::mem::size_of::<super::Connection>();
        assert!(conn <= 320, "Connection is {conn} bytes");
        // Every layer past plain TCP is behind one pointer: a plain connection
        // carries no TLS session or WebSocket state, and none a second pointer.
        let transport = std::mem::size_of::<crate::transport::Transport>();
        assert!(transport <= 8, "Transport is {transport} bytes");
        // Each session's handle, with its Arc counts, in mimalloc's 128-byte class.
        let handle = std::mem::size_of::<crate::broker::registry::SessionHandle>();
        assert!(handle + 16 <= 128, "SessionHandle is {handle} bytes");
        // Each connection's mailbox, with its Arc counts, in the 96-byte class.
        let mailbox = std::mem::size_of::<crate::broker::mailbox::Mailbox>();
        assert!(mailbox + 16 <= 128, "Mailbox is {mailbox} bytes");
    }
}
