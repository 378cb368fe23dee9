//! One raw MQTT connection (3.1.1 unless the options say 5.0) over a tokio `TcpStream`,
//! framed by Quay's own codec.
//!
//! Deliberately not a client library: the load loops decide when to write and when to
//! read, so a publisher can pipeline a whole window of PUBLISHes into one `write_all`
//! and a subscriber can answer every PUBLISH of one `read` with one write of PUBACKs.
//! Buffers are reused across calls; nothing here allocates per message except what the
//! codec's decoder hands back (`Bytes` views into the read buffer).
//! The handshakes (connect, subscribe, disconnect) give up after `HANDSHAKE_LIMIT`; the
//! load loops built on `fill`/`flush` are bounded by their callers. This module never
//! measures anything.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use quay::codec::{
    decode, encode, Connect, Disconnect, Packet, Properties, ProtocolVersion, PubResp, Publish,
    QoS, ReasonCode, Subscribe, SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How long a broker may take to answer CONNECT or SUBSCRIBE, or to close after DISCONNECT.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// Large enough for any packet the benchmarks exchange; the broker never sends bigger.
const MAX_PACKET_SIZE: usize = 1 << 20;
/// Bytes asked of the kernel per read while handshaking; idle connections keep this.
const SMALL_READ_CHUNK: usize = 4 * 1024;
/// Bytes asked of the kernel per read under load; big reads make subscribers cheap.
const BULK_READ_CHUNK: usize = 256 * 1024;

/// Options of the CONNECT this connection sends.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub client_id: String,
    /// 3.1.1 for the benchmarks; the soak mixes in 5.0.
    pub protocol: ProtocolVersion,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_session: bool,
    /// Seconds; 0 disables keep-alive, which idle connections rely on.
    pub keep_alive: u16,
    /// CONNECT properties (5.0 only), e.g. Session Expiry Interval.
    pub properties: Properties,
    /// A fixed socket receive buffer (SO_RCVBUF, which also turns off the kernel's
    /// autotuning), as on a small device; `None` leaves the kernel's default.
    pub recv_buffer_bytes: Option<u32>,
    /// CONNECT user name and password (the `connect` scenario logs in).
    pub username: Option<String>,
    pub password: Option<Bytes>,
}

impl ConnectOptions {
    pub fn clean(client_id: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            client_id: client_id.into(),
            protocol: ProtocolVersion::V3_1_1,
            clean_session: true,
            keep_alive: 0,
            properties: Properties::default(),
            recv_buffer_bytes: None,
            username: None,
            password: None,
        }
    }

    pub fn persistent(client_id: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            client_id: client_id.into(),
            protocol: ProtocolVersion::V3_1_1,
            clean_session: false,
            keep_alive: 0,
            properties: Properties::default(),
            recv_buffer_bytes: None,
            username: None,
            password: None,
        }
    }
}

/// The broker answered CONNECT with a refusal (the 3.1.1 return code; 5.0 reason
/// codes are mapped to it); `connect`'s error, for callers that expect a refusal.
#[derive(Debug)]
pub struct ConnackRefused {
    pub client_id: String,
    pub code: u8,
}

impl std::fmt::Display for ConnackRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: CONNACK refused with code {}",
            self.client_id, self.code
        )
    }
}

impl std::error::Error for ConnackRefused {}

/// A connected, CONNACKed MQTT session socket with its two reusable buffers.
pub struct MqttConn {
    stream: TcpStream,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Over WebSocket: the frames read and not yet unframed, and the frame buffer.
    ws: Option<(BytesMut, BytesMut)>,
    read_chunk: usize,
    version: ProtocolVersion,
    pub client_id: String,
    /// Session Present flag of the CONNACK.
    pub session_present: bool,
    /// Properties of the CONNACK (5.0), e.g. the server's Receive Maximum.
    pub connack_properties: Properties,
}

impl MqttConn {
    /// TCP connect, CONNECT, and wait for a successful CONNACK.
    pub async fn connect(addr: SocketAddr, options: &ConnectOptions) -> Result<MqttConn> {
        MqttConn::connect_within(addr, options, HANDSHAKE_LIMIT).await
    }

    /// As `connect`, giving up after `limit` instead of `HANDSHAKE_LIMIT`.
    pub async fn connect_within(
        addr: SocketAddr,
        options: &ConnectOptions,
        limit: Duration,
    ) -> Result<MqttConn> {
        match tokio::time::timeout(limit, MqttConn::connect_unbounded(addr, options, false)).await {
            Ok(result) => result,
            Err(_) => bail!("{}: waited {limit:?} for CONNACK", options.client_id),
        }
    }

    /// As `connect`, over WebSocket: `addr` is a WebSocket listener (path `/mqtt`).
    pub async fn connect_websocket(addr: SocketAddr, options: &ConnectOptions) -> Result<MqttConn> {
        let connecting = MqttConn::connect_unbounded(addr, options, true);
        match tokio::time::timeout(HANDSHAKE_LIMIT, connecting).await {
            Ok(result) => result,
            Err(_) => bail!(
                "{}: waited {HANDSHAKE_LIMIT:?} for CONNACK",
                options.client_id
            ),
        }
    }

    async fn connect_unbounded(
        addr: SocketAddr,
        options: &ConnectOptions,
        websocket: bool,
    ) -> Result<MqttConn> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .context("creating a socket")?;
        if let Some(bytes) = options.recv_buffer_bytes {
            socket
                .set_recv_buffer_size(bytes)
                .with_context(|| format!("setting SO_RCVBUF to {bytes}"))?;
        }
        let mut stream = socket
            .connect(addr)
            .await
            .with_context(|| format!("connecting to {addr} as {:?}", options.client_id))?;
        stream.set_nodelay(true)?;
        let ws = match websocket {
            true => Some((
                crate::ws_frames::upgrade(&mut stream, addr)
                    .await
                    .with_context(|| format!("{}: WebSocket", options.client_id))?,
                BytesMut::new(),
            )),
            false => None,
        };
        let mut conn = MqttConn {
            stream,
            read_buf: BytesMut::with_capacity(4096),
            write_buf: BytesMut::with_capacity(4096),
            ws,
            read_chunk: SMALL_READ_CHUNK,
            version: options.protocol,
            client_id: options.client_id.clone(),
            session_present: false,
            connack_properties: Properties::default(),
        };
        let connect = Connect {
            protocol: options.protocol,
            clean_start: options.clean_session,
            keep_alive: options.keep_alive,
            properties: options.properties.clone(),
            client_id: options.client_id.clone(),
            will: None,
            username: options.username.clone(),
            password: options.password.clone(),
        };
        conn.queue(&Packet::Connect(Box::new(connect)))?;
        conn.flush().await?;
        match conn.recv().await? {
            Packet::ConnAck(ack) if ack.reason == ReasonCode::Success => {
                conn.session_present = ack.session_present;
                conn.connack_properties = ack.properties;
                Ok(conn)
            }
            Packet::ConnAck(ack) => Err(ConnackRefused {
                client_id: conn.client_id.clone(),
                code: ack.reason.to_v3_connack(),
            }
            .into()),
            other => bail!("{}: expected CONNACK, got {}", conn.client_id, other.name()),
        }
    }

    /// Subscribe to each filter at `qos` and wait for the SUBACK; a refused filter is an error.
    pub async fn subscribe(&mut self, filters: &[String], qos: QoS) -> Result<()> {
        let client_id = self.client_id.clone();
        handshake(&client_id, "SUBACK", self.subscribe_unbounded(filters, qos)).await
    }

    async fn subscribe_unbounded(&mut self, filters: &[String], qos: QoS) -> Result<()> {
        let options = SubscriptionOptions {
            qos,
            ..SubscriptionOptions::default()
        };
        let subscribe = Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: filters.iter().map(|f| (f.clone(), options)).collect(),
        };
        self.queue(&Packet::Subscribe(subscribe))?;
        self.flush().await?;
        match self.recv().await? {
            Packet::SubAck(ack) => match ack.reasons.iter().find(|r| r.is_error()) {
                Some(bad) => bail!(
                    "{}: SUBSCRIBE {filters:?} refused ({:#04x})",
                    self.client_id,
                    bad.0
                ),
                None => Ok(()),
            },
            // A persistent session may deliver its queue before the SUBACK.
            Packet::Publish(_) => bail!(
                "{}: PUBLISH before SUBACK; subscribe on a fresh session",
                self.client_id
            ),
            other => bail!("{}: expected SUBACK, got {}", self.client_id, other.name()),
        }
    }

    /// Send DISCONNECT and wait until the broker closes the socket, as MQTT says it must.
    pub async fn disconnect(self) -> Result<()> {
        self.disconnect_with(Properties::default()).await
    }

    /// As `disconnect`, with DISCONNECT properties (5.0), e.g. Session Expiry Interval 0.
    pub async fn disconnect_with(self, properties: Properties) -> Result<()> {
        let client_id = self.client_id.clone();
        handshake(
            &client_id,
            "the broker to close after DISCONNECT",
            self.disconnect_unbounded(properties),
        )
        .await
    }

    async fn disconnect_unbounded(mut self, properties: Properties) -> Result<()> {
        self.queue(&Packet::Disconnect(Disconnect {
            reason: ReasonCode::NORMAL_DISCONNECTION,
            properties,
        }))?;
        self.flush().await?;
        self.stream.shutdown().await.ok();
        let mut sink = [0u8; 1024];
        while matches!(self.stream.read(&mut sink).await, Ok(n) if n > 0) {}
        Ok(())
    }

    /// Read in large chunks from now on: for connections that carry load.
    pub fn bulk(&mut self) {
        self.read_chunk = BULK_READ_CHUNK;
    }

    /// Keep only the socket, for connections that are held open and never used again.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Encode `packet` at the end of the write buffer; nothing is sent until `flush`.
    pub fn queue(&mut self, packet: &Packet) -> Result<()> {
        encode(packet, self.version, &mut self.write_buf)
            .with_context(|| format!("{}: encoding {}", self.client_id, packet.name()))
    }

    /// Queue a PUBACK for `packet_id`.
    pub fn queue_puback(&mut self, packet_id: u16) -> Result<()> {
        self.queue(&Packet::PubAck(PubResp::new(packet_id)))
    }

    /// Queue `template` with `packet_id`, writing `seq` big-endian into the first 8 bytes
    /// of the encoded payload, so receivers can detect loss and duplicates without the
    /// sender allocating a payload per message.
    pub fn queue_publish_seq(
        &mut self,
        template: &Publish,
        packet_id: Option<u16>,
        seq: u64,
    ) -> Result<()> {
        debug_assert!(template.payload.len() >= 8);
        let publish = Publish {
            packet_id,
            ..template.clone()
        };
        self.queue(&Packet::Publish(publish))?;
        let end = self.write_buf.len();
        let start = end - template.payload.len();
        self.write_buf[start..start + 8].copy_from_slice(&seq.to_be_bytes());
        Ok(())
    }

    /// Write everything queued.
    pub async fn flush(&mut self) -> Result<()> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        let bytes = match &mut self.ws {
            None => &self.write_buf,
            Some((_, framed)) => {
                framed.clear();
                crate::ws_frames::frame_into(&self.write_buf, framed);
                framed
            }
        };
        self.stream
            .write_all(bytes)
            .await
            .with_context(|| format!("{}: writing", self.client_id))?;
        self.write_buf.clear();
        Ok(())
    }

    /// One read from the socket into the read buffer; an error if the broker closed it.
    pub async fn fill(&mut self) -> Result<usize> {
        let into = match &mut self.ws {
            None => &mut self.read_buf,
            Some((wire, _)) => wire,
        };
        into.reserve(self.read_chunk);
        let n = self
            .stream
            .read_buf(into)
            .await
            .with_context(|| format!("{}: reading", self.client_id))?;
        if n == 0 {
            bail!("{}: broker closed the connection", self.client_id);
        }
        if let Some((wire, _)) = &mut self.ws {
            crate::ws_frames::unframe(wire, &mut self.read_buf)
                .with_context(|| format!("{}: WebSocket", self.client_id))?;
        }
        Ok(n)
    }

    /// The next complete packet already in the read buffer, if any.
    pub fn next_buffered(&mut self) -> Result<Option<Packet>> {
        decode(&mut self.read_buf, self.version, MAX_PACKET_SIZE)
            .with_context(|| format!("{}: decoding what the broker sent", self.client_id))
    }

    /// The next packet, reading as needed.
    pub async fn recv(&mut self) -> Result<Packet> {
        loop {
            if let Some(packet) = self.next_buffered()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }
}

/// `work` unless it takes longer than `HANDSHAKE_LIMIT`.
async fn handshake<T>(
    client_id: &str,
    waiting_for: &str,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(HANDSHAKE_LIMIT, work).await {
        Ok(result) => result,
        Err(_) => bail!("{client_id}: waited {HANDSHAKE_LIMIT:?} for {waiting_for}"),
    }
}

/// A PUBLISH to clone per message: topic and payload are `Bytes`, so the clone only
/// bumps reference counts. The payload is at least 8 bytes to carry a sequence number.
pub fn publish_template(topic: &str, qos: QoS, payload_len: usize) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::from(vec![b'x'; payload_len.max(8)]),
    }
}

/// The sequence number `queue_publish_seq` wrote into a payload.
pub fn payload_seq(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Packet ids cycle through 1..=65535.
pub fn next_packet_id(id: u16) -> u16 {
    if id == u16::MAX {
        1
    } else {
        id + 1
    }
}
