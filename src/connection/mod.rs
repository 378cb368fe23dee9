//! The connection driver: the async edge around one client.
//!
//! It reads bytes, decodes packets, feeds them to the session state machine and the
//! broker, executes the actions that come back (send, store, load a page), and
//! handles events from the broker (deliveries, durable acks, kicks). One task per
//! connection; a failure here closes this connection only.

mod connect;
mod outgoing;
mod packets;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::broker::mailbox::Mailbox;
use crate::broker::registry::{ConnEvent, SessionHandle};
use crate::broker::Broker;
use crate::codec::{self, Disconnect, LastWill, Packet, ProtocolVersion, ReasonCode};
use crate::config::ZoneConfig;
use crate::message::ClientId;
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

pub(crate) struct Connection {
    broker: Arc<Broker>,
    zone: ZoneConfig,
    conn_id: u64,
    peer: SocketAddr,
    version: ProtocolVersion,
    client_id: ClientId,
    handle: Arc<SessionHandle>,
    persistent: bool,
    outbound: Outbound,
    inbound: Inbound,
    keep_alive: Duration,
    /// Boxed: a full v5 property set is large and most clients have no will.
    will: Option<Box<LastWill>>,
    /// Largest packet the client accepts (v5 Maximum Packet Size).
    client_max_packet: usize,
    /// Topic aliases the client set (v5).
    alias_in: HashMap<u16, Bytes>,
    /// Topic aliases we set, and how many the client allows.
    alias_out: HashMap<Bytes, u16>,
    alias_out_max: u16,
    /// Inbound QoS 1/2 packet ids waiting for the store: did they match a subscriber?
    pending_in: HashMap<u16, bool>,
    /// Detached store writes (acks, releases), submitted once per loop turn.
    store_ops: Vec<quay_storage::Op>,
    mailbox: Arc<Mailbox>,
    wbuf: BytesMut,
    last_packet_at: Instant,
}

/// Serve one accepted TCP connection until it closes.
pub async fn serve(
    broker: Arc<Broker>,
    zone: ZoneConfig,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let max_packet = broker.config.mqtt.max_packet_size as usize;
    // Buffers start empty and grow on demand: idle connections must stay small.
    let mut rbuf = BytesMut::new();
    // CONNECT must arrive within idle_timeout. The connect and teardown stages are
    // boxed: they are large and short-lived, and inlined they would size the future
    // that an idle connection keeps for its whole life.
    let connect = Box::pin(tokio::time::timeout(zone.idle_timeout, async {
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
    let mailbox = Arc::new(Mailbox::default());
    let (closed_tx, closed_rx) = watch::channel(());
    let accepted = Box::pin(connect::accept(
        &broker,
        zone,
        peer,
        *connect,
        mailbox.clone(),
        closed_rx,
        &mut writer,
    ));
    let Some(mut conn) = accepted.await else {
        return;
    };
    let close = conn
        .run(&mut reader, &mut writer, &mut rbuf, &mailbox, &mut shutdown)
        .await;
    Box::pin(conn.finish(close, &mut writer)).await;
    drop(closed_tx);
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

impl Connection {
    async fn run(
        &mut self,
        reader: &mut tokio::net::tcp::OwnedReadHalf,
        writer: &mut OwnedWriteHalf,
        rbuf: &mut BytesMut,
        mailbox: &Mailbox,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Close {
        let max_packet = self.broker.config.mqtt.max_packet_size as usize;
        // Packets already buffered behind the CONNECT.
        if let Err(close) = self.decode_all(rbuf, max_packet) {
            return close;
        }
        loop {
            self.flush_store_ops();
            if !self.wbuf.is_empty() {
                let n = self.wbuf.len();
                if writer.write_all(&self.wbuf).await.is_err() {
                    return Close::Lost;
                }
                Metrics::add(&self.broker.metrics.bytes_sent, n as u64);
                if self.wbuf.capacity() > 64 * 1024 {
                    self.wbuf = BytesMut::new();
                } else {
                    self.wbuf.clear();
                }
            }
            let deadline = self.next_deadline();
            tokio::select! {
                ready = reader.readable() => {
                    if ready.is_err() {
                        return Close::Lost;
                    }
                    match read_some(reader, rbuf) {
                        Ok(0) => return Close::Lost,
                        Ok(n) => {
                            Metrics::add(&self.broker.metrics.bytes_received, n as u64);
                            self.last_packet_at = Instant::now();
                            if let Err(close) = self.decode_all(rbuf, max_packet) {
                                return close;
                            }
                            if rbuf.is_empty() {
                                // Decoded payloads keep their own share of the old
                                // allocation; an idle connection holds none.
                                *rbuf = BytesMut::new();
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return Close::Lost,
                    }
                }
                _ = mailbox.wait() => {
                    for event in mailbox.take_all() {
                        if let Err(close) = self.on_event(event) {
                            if let Close::Kicked(_) = close {
                                // What the client sent before it was replaced (a PUBACK,
                                // a DISCONNECT) still counts: process it first.
                                if let Err(earlier) = self.drain_socket(reader, rbuf, max_packet) {
                                    return earlier;
                                }
                            }
                            return close;
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if let Err(close) = self.on_timer(Instant::now()) {
                        return close;
                    }
                }
                _ = shutdown.changed() => return Close::Kicked(ReasonCode::SERVER_SHUTTING_DOWN),
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
            match read_some(reader, rbuf) {
                Ok(0) | Err(_) => break,
                Ok(_) => self.decode_all(rbuf, max_packet)?,
            }
        }
        Ok(())
    }

    fn decode_all(&mut self, rbuf: &mut BytesMut, max_packet: usize) -> Result<(), Close> {
        loop {
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
    }

    /// Silence after which the client is gone: keepalive × backoff × 2 (EMQX's rule,
    /// 1.5× by default); None without keepalive or when too large to matter.
    fn keepalive_timeout(&self) -> Option<Duration> {
        if self.keep_alive.is_zero() {
            return None;
        }
        Duration::try_from_secs_f64(
            self.keep_alive.as_secs_f64() * self.zone.keepalive_backoff * 2.0,
        )
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
        keepalive.min(retry).min(rel)
    }

    fn on_timer(&mut self, now: Instant) -> Result<(), Close> {
        if self
            .keepalive_timeout()
            .is_some_and(|t| now.saturating_duration_since(self.last_packet_at) >= t)
        {
            tracing::info!(client_id = %self.client_id, "keepalive timeout");
            return Err(Close::Error(ReasonCode::KEEP_ALIVE_TIMEOUT));
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
                self.send(&packet);
                for out in retained {
                    let actions = self.outbound.deliver_volatile(out, now);
                    self.execute(actions);
                }
            }
            ConnEvent::Kick(reason) => return Err(Close::Kicked(reason)),
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
    async fn finish(mut self, close: Close, writer: &mut OwnedWriteHalf) {
        // Before anything else: a successor waits for this task to end and then for
        // the store, so our acks must be submitted by then.
        self.flush_store_ops();
        let reason = match &close {
            Close::Error(r) | Close::Kicked(r) => Some(*r),
            _ => None,
        };
        if let (Some(reason), true) = (reason, self.version.is_v5()) {
            self.send(&Packet::Disconnect(Disconnect {
                reason,
                properties: crate::codec::Properties {
                    reason_string: Some(reason.description().to_owned()),
                    ..Default::default()
                },
            }));
        }
        if !self.wbuf.is_empty() {
            let _ = writer.write_all(&self.wbuf).await;
        }
        let _ = writer.shutdown().await;
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
    /// An idle connection keeps this future alive for its whole life: it is the
    /// largest part of its memory. Connect and teardown stages are boxed to keep it
    /// small; this guards against inlining a large stage again.
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
        let zone = broker.config.zone("external").clone();
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let fut = super::serve(broker.clone(), zone, stream, peer, shutdown);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= 2560, "connection future is {size} bytes");
        assert!(std::mem::size_of::<super::Connection>() <= 768);
    }
}
