//! The connection driver: the async edge around one client.
//!
//! It reads bytes, decodes packets, feeds them to the session state machine and the
//! broker, executes the actions that come back (send, store, load a page), and
//! handles events from the broker (deliveries, durable acks, kicks). One task per
//! busy connection; an idle one hibernates without a task (`Connection::hibernate`,
//! `crate::hibernate`). A failure here closes this connection only.

mod connect;
mod fit;
mod keepalive;
mod outgoing;
mod packets;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use crate::broker::mailbox::{Mailbox, BACKLOG_HIGH};
use crate::broker::registry::{ConnEvent, SessionHandle};
use crate::broker::Broker;
use crate::codec::{self, LastWill, Packet, ProtocolVersion, ReasonCode};
use crate::config::Zone;
use crate::hibernate::Hibernator;
use crate::message::{now_ms, ClientId};
use crate::metrics::Metrics;
use crate::session::{Inbound, Outbound};

/// Why a connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Close {
    /// DISCONNECT from the client; `with_will` for v5 reason 0x04.
    ByClient { with_will: bool },
    /// The socket closed or failed without DISCONNECT.
    Lost,
    /// We end it: send DISCONNECT with this reason (v5), publish the will.
    Error(ReasonCode),
    /// Taken over or kicked: DISCONNECT with this reason (v5); will per reason.
    Kicked(ReasonCode),
}

/// Above this many bytes waiting to be written, a connection takes no more events
/// and reads no more packets until its client has read some.
const WBUF_HIGH: usize = 256 * 1024;

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
    pub broker: Arc<Broker>,
    pub zone: Arc<Zone>,
    pub shutdown: watch::Receiver<bool>,
    pub hibernation: Hibernation,
    /// Held for the connection's whole life, hibernated or not.
    pub guard: ConnGuard,
}

/// A listener's connection slot and the node's count of live connections.
pub(crate) struct ConnGuard {
    pub _permit: OwnedSemaphorePermit,
    pub _alive: mpsc::Sender<()>,
}

pub(crate) struct Connection {
    broker: Arc<Broker>,
    zone: Arc<Zone>,
    shutdown: watch::Receiver<bool>,
    hibernation: Hibernation,
    _guard: ConnGuard,
    conn_id: u64,
    peer: SocketAddr,
    version: ProtocolVersion,
    client_id: ClientId,
    handle: Arc<SessionHandle>,
    persistent: bool,
    outbound: Outbound,
    inbound: Inbound,
    /// Seconds; 0 = none.
    keep_alive: u16,
    /// Boxed: a full v5 property set is large and most clients have no will.
    will: Option<Box<LastWill>>,
    /// Largest packet the client accepts (v5 Maximum Packet Size).
    client_max_packet: u32,
    /// Topic aliases the client set (v5).
    alias_in: BTreeMap<u16, Bytes>,
    /// Topic aliases we set, and how many the client allows.
    alias_out: BTreeMap<Bytes, u16>,
    alias_out_max: u16,
    /// Inbound QoS 1/2 packet ids waiting for the store: did they match a subscriber?
    pending_in: BTreeMap<u16, bool>,
    /// Detached store writes (acks, releases), submitted once per loop turn.
    store_ops: Vec<quay_storage::Op>,
    mailbox: Arc<Mailbox>,
    /// A subscriber this client published to is behind (`Routed::congested`): no
    /// more packets are read or decoded until its mailbox has room (`take_room`).
    paused: bool,
    wbuf: BytesMut,
    last_packet_at: Instant,
    /// Last packet or mailbox event: hibernation counts from here.
    active_at: Instant,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Finished (or its task was dropped): a successor waiting in a takeover goes on.
        self.mailbox.close();
    }
}

/// Idle connections parked without a task (see `crate::hibernate`).
#[derive(Clone)]
pub struct Hibernation(Arc<Hibernator<Box<Connection>>>);

impl Hibernation {
    /// Start the poller; woken connections resume as tasks on the current runtime.
    pub fn start() -> std::io::Result<Hibernation> {
        let runtime = tokio::runtime::Handle::current();
        let hibernator = Hibernator::start(move |conn: Box<Connection>, socket| {
            runtime.spawn(resume(conn, socket));
        })?;
        Ok(Hibernation(hibernator))
    }

    /// Wake every hibernated connection (they see the shutdown signal) and park no more.
    pub fn shutdown(&self) {
        self.0.shutdown();
    }
}

/// Serve one accepted TCP connection until it closes.
pub(crate) async fn serve(env: Env, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let broker = env.broker.clone();
    let max_packet = broker.config.mqtt.max_packet_size as usize;
    // Buffers start empty and grow on demand: idle connections must stay small.
    let mut rbuf = BytesMut::new();
    // CONNECT must arrive within idle_timeout. The connect and teardown stages are
    // boxed: they are large and short-lived, and inlined they would size the future
    // of every connection.
    let connect = Box::pin(tokio::time::timeout(env.zone.idle_timeout, async {
        loop {
            match codec::decode_connect(&mut rbuf, max_packet) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(Some(e)),
            }
            match reader.read_buf(&mut rbuf).await {
                Ok(0) | Err(_) => return Err(None),
                Ok(_) => {}
            }
        }
    }))
    .await;
    let connect = match connect {
        Ok(Ok(Packet::Connect(c))) => c,
        Ok(Ok(_)) => return,
        Ok(Err(Some(e))) => {
            tracing::warn!(%peer, error = %e, "bad CONNECT");
            Metrics::inc(&broker.metrics.packets_malformed);
            if let codec::DecodeError::UnsupportedProtocolVersion(_) = e {
                // A 3.1.1-shaped CONNACK with return code 1, which every version reads.
                let _ = writer.write_all(&[0x20, 0x02, 0x00, 0x01]).await;
            }
            return;
        }
        Ok(Err(None)) => return,
        Err(_) => {
            tracing::debug!(%peer, "no CONNECT within idle_timeout");
            return;
        }
    };
    Metrics::inc(&broker.metrics.packets_connect);
    let accepted = Box::pin(connect::accept(env, peer, *connect, &mut writer));
    let Some(conn) = accepted.await else {
        return;
    };
    let stream = reader.reunite(writer).expect("halves of one stream");
    drive(conn, stream, rbuf).await;
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
    conn.broker.hibernated.fetch_sub(1, Ordering::Relaxed);
    match TcpStream::from_std(socket) {
        // Out of the box: a running connection lives in its task.
        Ok(stream) => drive(*conn, stream, BytesMut::new()).await,
        Err(e) => {
            tracing::warn!(client_id = %conn.client_id, error = %e, "cannot resume a hibernated connection");
            Box::pin(conn.finish(Close::Lost, None)).await;
        }
    }
}

/// Read what the socket has (up to 16 KiB) through a stack buffer, appending to
/// `rbuf`: the connection's own buffer grows only to what is really pending.
fn read_some(
    reader: &tokio::net::tcp::OwnedReadHalf,
    rbuf: &mut BytesMut,
) -> std::io::Result<usize> {
    let mut scratch = [0u8; 16 * 1024];
    let n = reader.try_read(&mut scratch)?;
    rbuf.extend_from_slice(&scratch[..n]);
    Ok(n)
}

/// What the kernel already holds for this socket, read without waiting and without
/// asking tokio's reactor first (which may not have seen those bytes yet): for a
/// connection that is being closed and must still process what its client sent.
fn read_now(
    reader: &tokio::net::tcp::OwnedReadHalf,
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
    rbuf.extend_from_slice(&scratch[..n]);
    Ok(n)
}

impl Connection {
    async fn run(
        &mut self,
        reader: &mut tokio::net::tcp::OwnedReadHalf,
        writer: &mut OwnedWriteHalf,
        rbuf: &mut BytesMut,
    ) -> Outcome {
        let max_packet = self.broker.config.mqtt.max_packet_size as usize;
        let mailbox = self.mailbox.clone();
        let mut shutdown = self.shutdown.clone();
        // Packets already buffered behind the CONNECT.
        if let Err(close) = self.decode_all(rbuf, max_packet) {
            return Outcome::Closed(close);
        }
        loop {
            // Take events only while the client reads what we already have for it
            // and the session's queue is short: a client that stopped reading holds
            // its deliveries in the mailbox, which slows their publishers (see
            // `broker::mailbox`), and in the store; not in our memory.
            if self.wbuf.len() < WBUF_HIGH && self.outbound.pending_len() < BACKLOG_HIGH {
                let events = mailbox.take_all();
                if !events.is_empty() {
                    self.active_at = Instant::now();
                    for event in events {
                        if let Err(close) = self.on_event(event) {
                            return Outcome::Closed(close);
                        }
                    }
                }
                if mailbox.take_behind() {
                    let actions = self.outbound.behind(Instant::now());
                    self.execute(actions);
                }
            }
            if self.paused && mailbox.take_room() {
                // The subscriber we waited for has room (or has gone): read on.
                self.paused = false;
                // We did not read; the client may well have sent.
                self.last_packet_at = Instant::now();
                if let Err(close) = self.decode_all(rbuf, max_packet) {
                    return Outcome::Closed(close);
                }
            }
            if let Some(reason) = mailbox.take_kick() {
                // What the client sent before it was replaced (a PUBACK, a
                // DISCONNECT) still counts: process it first.
                if let Err(earlier) = self.drain_socket(reader, rbuf, max_packet) {
                    return Outcome::Closed(earlier);
                }
                return Outcome::Closed(Close::Kicked(reason));
            }
            self.flush_store_ops();
            let deadline = self.next_deadline();
            let reading = !self.paused && self.wbuf.len() < WBUF_HIGH;
            // Writing is one branch among others, never awaited alone: a kick or
            // shutdown interrupts a write to a socket that stopped reading.
            tokio::select! {
                written = writer.write(&self.wbuf), if !self.wbuf.is_empty() => {
                    match written {
                        Ok(0) | Err(_) => return Outcome::Closed(Close::Lost),
                        Ok(n) => {
                            self.mailbox.note_progress(now_ms());
                            Metrics::add(&self.broker.metrics.bytes_sent, n as u64);
                            bytes::Buf::advance(&mut self.wbuf, n);
                            if self.wbuf.is_empty() && self.wbuf.capacity() > 64 * 1024 {
                                self.wbuf = BytesMut::new();
                            }
                        }
                    }
                }
                ready = reader.readable(), if reading => {
                    if ready.is_err() {
                        return Outcome::Closed(Close::Lost);
                    }
                    match read_some(reader, rbuf) {
                        Ok(0) => return Outcome::Closed(Close::Lost),
                        Ok(n) => {
                            Metrics::add(&self.broker.metrics.bytes_received, n as u64);
                            self.last_packet_at = Instant::now();
                            self.active_at = self.last_packet_at;
                            if let Err(close) = self.decode_all(rbuf, max_packet) {
                                return Outcome::Closed(close);
                            }
                            if rbuf.is_empty() {
                                // Decoded payloads keep their own share of the old
                                // allocation; an idle connection holds none.
                                *rbuf = BytesMut::new();
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return Outcome::Closed(Close::Lost),
                    }
                }
                // Events are taken at the top of the loop.
                _ = mailbox.wait() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now();
                    if let Err(close) = self.on_timer(now) {
                        return Outcome::Closed(close);
                    }
                    if self.may_hibernate(now, rbuf) {
                        return Outcome::Idle;
                    }
                }
                _ = shutdown.changed() => return Outcome::Closed(Close::Kicked(ReasonCode::SERVER_SHUTTING_DOWN)),
            }
        }
    }

    /// Quiet for `hibernate_after`, with nothing buffered, in flight or awaited?
    /// When the time has come but something is pending, look again one period later.
    fn may_hibernate(&mut self, now: Instant, rbuf: &BytesMut) -> bool {
        let Some(after) = self.zone.hibernate_after else {
            return false;
        };
        if now < self.active_at + after {
            return false;
        }
        let idle = rbuf.is_empty()
            && !self.paused
            && self.wbuf.is_empty()
            && self.store_ops.is_empty()
            && self.pending_in.is_empty()
            && self.outbound.is_idle()
            && self.inbound.is_empty();
        if !idle {
            self.active_at = now;
        }
        idle
    }

    /// Park in the hibernator until the socket, the mailbox, the keepalive deadline
    /// or shutdown wakes it. Err gives the connection back with its socket (None: the
    /// socket was lost on the way).
    #[allow(clippy::type_complexity)]
    fn hibernate(mut self, socket: TcpStream) -> Result<(), (Box<Self>, Option<TcpStream>)> {
        // Nothing is pending (`may_hibernate`): give back what buffers kept.
        self.wbuf = BytesMut::new();
        self.store_ops = Vec::new();
        self.outbound.shrink();
        let socket = match socket.into_std() {
            Ok(socket) => socket,
            Err(e) => {
                tracing::warn!(client_id = %self.client_id, error = %e, "cannot hibernate");
                return Err((Box::new(self), None));
            }
        };
        let deadline = self
            .keepalive_timeout()
            .and_then(|t| self.last_packet_at.checked_add(t));
        let mailbox = self.mailbox.clone();
        let hibernator = self.hibernation.0.clone();
        let broker = self.broker.clone();
        tracing::debug!(client_id = %self.client_id, "hibernating");
        broker.hibernated.fetch_add(1, Ordering::Relaxed);
        // Boxed now, late: the boxes of hibernated connections are allocated together
        // instead of among the short-lived allocations of their connects, so they
        // pack densely and the memory their tasks used goes back to the OS.
        match hibernator.park(Box::new(self), socket, deadline, |waker| mailbox.arm(waker)) {
            Ok(()) => Ok(()),
            Err((conn, socket)) => {
                broker.hibernated.fetch_sub(1, Ordering::Relaxed);
                let socket = TcpStream::from_std(socket).ok();
                Err((conn, socket))
            }
        }
    }

    /// Process what is already readable, without waiting (bounded: 64 reads).
    fn drain_socket(
        &mut self,
        reader: &tokio::net::tcp::OwnedReadHalf,
        rbuf: &mut BytesMut,
        max_packet: usize,
    ) -> Result<(), Close> {
        for _ in 0..64 {
            match read_now(reader, rbuf) {
                Ok(0) | Err(_) => break,
                Ok(_) => self.decode_all(rbuf, max_packet)?,
            }
        }
        Ok(())
    }

    /// Decode and handle every complete packet in `rbuf`, stopping early when a
    /// publish congested a subscriber (the rest waits in `rbuf` for its room).
    fn decode_all(&mut self, rbuf: &mut BytesMut, max_packet: usize) -> Result<(), Close> {
        while !self.paused {
            match codec::decode(rbuf, self.version, max_packet) {
                Ok(Some(packet)) => {
                    Metrics::inc(&self.broker.metrics.packets_received);
                    self.on_packet(packet)?;
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::warn!(client_id = %self.client_id, peer = %self.peer, error = %e, "malformed packet");
                    Metrics::inc(&self.broker.metrics.packets_malformed);
                    return Err(Close::Error(e.reason_code()));
                }
            }
        }
        Ok(())
    }

    /// Silence after which the client is gone: keepalive × backoff × 2 (EMQX's rule,
    /// 1.5× by default); None without keepalive or when too large to matter.
    fn keepalive_timeout(&self) -> Option<Duration> {
        if self.keep_alive == 0 {
            return None;
        }
        Duration::try_from_secs_f64(f64::from(self.keep_alive) * self.zone.keepalive_backoff * 2.0)
            .ok()
    }

    fn next_deadline(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let keepalive = self
            .keepalive_timeout()
            .and_then(|t| self.last_packet_at.checked_add(t))
            .unwrap_or(far);
        let retry = self.outbound.next_timeout().unwrap_or(far);
        // QoS 2 ids awaiting PUBREL are swept once a second at most.
        let rel = if self.inbound.is_empty() {
            far
        } else {
            Instant::now() + Duration::from_secs(1)
        };
        let hibernate = self
            .zone
            .hibernate_after
            .and_then(|after| self.active_at.checked_add(after))
            .unwrap_or(far);
        // Held up by a subscriber: look for a stall once a second. Our own backlog
        // holding up publishers: look once a second too.
        let taking = self.wbuf.len() < WBUF_HIGH && self.outbound.pending_len() < BACKLOG_HIGH;
        let stall = if self.paused || !taking {
            Instant::now() + Duration::from_secs(1)
        } else {
            far
        };
        keepalive.min(retry).min(rel).min(hibernate).min(stall)
    }

    fn on_timer(&mut self, now: Instant) -> Result<(), Close> {
        if self.paused {
            // Not reading by our choice: the client's silence proves nothing.
            self.last_packet_at = now;
        }
        if self
            .keepalive_timeout()
            .is_some_and(|t| now.saturating_duration_since(self.last_packet_at) >= t)
        {
            tracing::info!(client_id = %self.client_id, "keepalive timeout");
            return Err(Close::Error(ReasonCode::KEEP_ALIVE_TIMEOUT));
        }
        if let (Some(limit), Some(stalled_ms)) = (
            self.zone.stall_timeout,
            self.mailbox.stalled_for_ms(now_ms()),
        ) {
            if stalled_ms >= limit.as_millis() as u64 {
                tracing::warn!(client_id = %self.client_id, peer = %self.peer, stalled_ms, "the client stopped reading while its deliveries held up their publishers; closing it (stall_timeout)");
                Metrics::inc(&self.broker.metrics.connections_stalled);
                return Err(Close::Error(ReasonCode::QUOTA_EXCEEDED));
            }
        }
        let actions = self.outbound.tick(now);
        self.execute(actions);
        for id in self.inbound.expire(now, self.zone.await_rel_timeout) {
            tracing::warn!(client_id = %self.client_id, packet_id = id, "PUBREL not received in time; id released");
            if self.persistent {
                self.store_ops.push(quay_storage::Op::DeleteAwaitingRel {
                    client: self.client_id.clone(),
                    packet_id: id,
                });
            }
        }
        Ok(())
    }

    fn on_event(&mut self, event: ConnEvent) -> Result<(), Close> {
        let now = Instant::now();
        match event {
            ConnEvent::Deliver(out) => {
                let actions = if out.seq.is_some() {
                    self.outbound.deliver_stored(out, now)
                } else {
                    self.outbound.deliver_volatile(out, now)
                };
                self.execute(actions);
            }
            ConnEvent::Durable { packet_id, qos, ok } => self.on_durable(packet_id, qos, ok)?,
            ConnEvent::Reply(packet, retained) => {
                match *packet {
                    // A PUBCOMP frees its id's Receive Maximum slot as it leaves.
                    Packet::PubComp(r) => self.send_pubcomp(r.packet_id, r.reason),
                    other => self.send(&other),
                }
                for out in retained {
                    // Stored ones (retained QoS 1/2 to a persistent session) carry
                    // their queue seq; the rest are volatile.
                    let actions = if out.seq.is_some() {
                        self.outbound.deliver_stored(out, now)
                    } else {
                        self.outbound.deliver_volatile(out, now)
                    };
                    self.execute(actions);
                }
            }
            ConnEvent::Released(packet_id) => {
                let actions = self.outbound.released(packet_id, now);
                self.execute(actions);
            }
        }
        Ok(())
    }

    /// Encode `packet` into the write buffer.
    fn send(&mut self, packet: &Packet) {
        if let Err(e) = codec::encode(packet, self.version, &mut self.wbuf) {
            tracing::error!(client_id = %self.client_id, packet = packet.name(), error = %e, "cannot encode");
            return;
        }
        Metrics::inc(&self.broker.metrics.packets_sent);
    }

    /// Leave: say why (v5), publish the will if due, and hand the session back to
    /// the registry (offline) or end it.
    async fn finish(mut self, close: Close, writer: Option<&mut OwnedWriteHalf>) {
        // Before anything else: a successor waits for this task to end and then for
        // the store, so our acks must be submitted by then.
        self.flush_store_ops();
        let reason = match &close {
            Close::Error(r) | Close::Kicked(r) => Some(*r),
            _ => None,
        };
        if let (Some(reason), true) = (reason, self.version.is_v5()) {
            // Within the client's Maximum Packet Size, like everything we send.
            match fit::disconnect(reason, self.client_max_packet) {
                fit::Fit::Send { packet, .. } => self.send(&Packet::Disconnect(packet)),
                fit::Fit::TooLarge { size } => {
                    tracing::info!(client_id = %self.client_id, size, max = self.client_max_packet, "DISCONNECT larger than the client accepts; closing without it");
                }
            }
        }
        if let Some(writer) = writer {
            let wbuf = &self.wbuf;
            let _ = tokio::time::timeout(FINAL_WRITE, async {
                if !wbuf.is_empty() {
                    let _ = writer.write_all(wbuf).await;
                }
                let _ = writer.shutdown().await;
            })
            .await;
        }
        Metrics::inc(&self.broker.metrics.disconnections);
        let publish_will = match close {
            Close::ByClient { with_will } => with_will,
            // Not on shutdown (the broker is going away); on takeover the will delay
            // decides (a zero delay publishes, as MQTT 5 §3.1.3.2.2 says).
            Close::Kicked(r) => r != ReasonCode::SERVER_SHUTTING_DOWN,
            Close::Lost | Close::Error(_) => true,
        };
        tracing::info!(client_id = %self.client_id, peer = %self.peer, ?close, "disconnected");
        self.detach(publish_will);
    }
}

#[cfg(test)]
mod tests {
    /// A busy connection keeps this future (its task); a hibernated one keeps only
    /// its boxed `Connection`, the largest part of an idle connection's memory. The
    /// connect and teardown stages are boxed to keep the future small, and the
    /// `Connection` fits mimalloc's 512-byte size class; this guards both.
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
            broker: broker.clone(),
            zone,
            shutdown,
            hibernation: super::Hibernation::start().unwrap(),
            guard: super::ConnGuard {
                _permit: permit,
                _alive: alive,
            },
        };
        let fut = super::serve(env, stream, peer);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 2560, "connection future is {size} bytes");
        let conn = std::mem::size_of::<super::Connection>();
        assert!(conn <= 512, "Connection is {conn} bytes");
        // Each session's handle, with its Arc counts, in mimalloc's 192-byte class.
        let handle = std::mem::size_of::<crate::broker::registry::SessionHandle>();
        assert!(handle + 16 <= 192, "SessionHandle is {handle} bytes");
    }
}
