//! The bridge's MQTT client (plain TCP; 3.1, 3.1.1, 5.0) over the broker's codec.
//!
//! One connection at a time per bridge, run by `run` until the bridge stops:
//! connect, subscribe the remote subscriptions, then forward what the segment queue
//! holds with QoS 1, keeping up to `max_inflight_batches` x `batch_count_limit`
//! PUBLISHes unacknowledged. A record leaves the queue (`ack`) only when its PUBACK,
//! and those of everything before it, are in. On any failure the connection is
//! dropped, the unacknowledged records are sent again (DUP) on the next one, after
//! `reconnect_interval`; a failure is logged once per attempt with its reason.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quay_storage::segment::Record;
use quay_storage::StoredMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::config::BridgeConfig;
use super::Bridge;
use crate::codec::{
    self, Connect, Packet, Properties, ProtocolVersion, PubResp, Publish, QoS, Subscribe,
    SubscriptionOptions,
};
use crate::message::{now_ms, Message};

const MAX_PACKET: usize = 256 << 20;

/// Why a connection ended.
type Failure = String;

pub async fn run(bridge: Arc<Bridge>, mut stop: watch::Receiver<bool>) {
    let cfg = bridge.config.clone();
    // Records sent and not yet acknowledged, kept across reconnects and across a stop
    // and start (resent with DUP). Held for the task's life: a task started while the
    // previous one is still ending waits for it, so one client runs at a time.
    let mut inflight = tokio::select! {
        g = bridge.inflight.lock() => g,
        _ = stop.changed() => return,
    };
    let inflight: &mut VecDeque<Record> = &mut inflight;
    loop {
        bridge.set_status("Connecting");
        let result = tokio::select! {
            r = session(&bridge, &cfg, inflight) => r,
            _ = stop.changed() => return,
        };
        let Err(why) = result;
        bridge.set_status("Disconnected");
        tracing::warn!(bridge = %cfg.name, reason = %why, retry_in_ms = cfg.reconnect_interval.as_millis() as u64, "bridge connection failed");
        tokio::select! {
            _ = tokio::time::sleep(cfg.reconnect_interval) => {}
            _ = stop.changed() => return,
        }
    }
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Conn {
    async fn send(&mut self, p: &Packet) -> Result<(), Failure> {
        let mut out = BytesMut::new();
        codec::encode(p, self.version, &mut out).map_err(|e| format!("encode: {e}"))?;
        self.stream
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    async fn recv(&mut self) -> Result<Packet, Failure> {
        loop {
            if let Some(p) = codec::decode(&mut self.buf, self.version, MAX_PACKET)
                .map_err(|e| format!("bad packet from remote: {e}"))?
            {
                return Ok(p);
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("remote closed the connection".into());
            }
        }
    }
}

async fn connect(cfg: &BridgeConfig, addr: &str) -> Result<Conn, Failure> {
    let stream = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect to {addr}: timed out"))?
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(8192),
        version: cfg.proto_ver,
    };
    let connect = Packet::Connect(Box::new(Connect {
        protocol: cfg.proto_ver,
        clean_start: cfg.clean_start,
        keep_alive: cfg.keepalive.as_secs().min(65_535) as u16,
        properties: Properties::default(),
        client_id: cfg.client_id.clone(),
        will: None,
        username: cfg.username.clone(),
        password: cfg.password.clone().map(Bytes::from),
    }));
    conn.send(&connect).await?;
    let ack = tokio::time::timeout(Duration::from_secs(10), conn.recv())
        .await
        .map_err(|_| "no CONNACK within 10s".to_string())??;
    match ack {
        Packet::ConnAck(a) if !a.reason.is_error() => Ok(conn),
        Packet::ConnAck(a) => Err(format!("CONNECT refused: {:?}", a.reason)),
        p => Err(format!("expected CONNACK, got {}", p.name())),
    }
}

fn to_publish(r: &Record, packet_id: u16, dup: bool) -> Result<Publish, Failure> {
    let m =
        StoredMessage::decode(&r.payload).map_err(|e| format!("cache record {}: {e}", r.seq))?;
    Ok(Publish {
        dup,
        qos: QoS::AtLeastOnce,
        retain: m.retain,
        topic: m.topic,
        packet_id: Some(packet_id),
        properties: Properties::default(),
        payload: m.payload,
    })
}

fn packet_id(seq: u64) -> u16 {
    (seq % 65_535) as u16 + 1
}

async fn session(
    bridge: &Arc<Bridge>,
    cfg: &BridgeConfig,
    inflight: &mut VecDeque<Record>,
) -> Result<std::convert::Infallible, Failure> {
    let super::config::Address::Mqtt(addr) = &cfg.address else {
        return Err("RPC bridges (name@host) are not implemented yet".into());
    };
    if cfg.ssl {
        return Err("ssl = on is not implemented yet for bridges".into());
    }
    let mut conn = connect(cfg, addr).await?;
    tracing::info!(bridge = %cfg.name, address = %addr, "bridge connected");
    bridge.set_status("Running");
    let subs = bridge.subscriptions();
    if !subs.is_empty() {
        let filters = subs
            .iter()
            .map(|(t, q)| {
                (
                    t.clone(),
                    SubscriptionOptions {
                        qos: *q,
                        no_local: true,
                        ..Default::default()
                    },
                )
            })
            .collect();
        conn.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters,
        }))
        .await?;
    }
    // Resend what was in flight, in order, with DUP.
    let mut acked: BTreeMap<u64, bool> = BTreeMap::new();
    for r in inflight.iter() {
        conn.send(&Packet::Publish(to_publish(r, packet_id(r.seq), true)?))
            .await?;
        acked.insert(r.seq, false);
    }
    let window = cfg.max_inflight_batches * cfg.batch_count_limit;
    let keepalive = if cfg.keepalive.is_zero() {
        Duration::from_secs(3600)
    } else {
        cfg.keepalive
    };
    let mut last_sent = Instant::now();
    let mut last_heard = Instant::now();
    let mut retry_at = Instant::now() + cfg.retry_interval;
    loop {
        // Fill the window from the queue.
        while inflight.len() < window {
            let room = (window - inflight.len()).min(cfg.batch_count_limit);
            let batch = bridge.queue.pop(room, cfg.batch_bytes_limit as usize);
            if batch.is_empty() {
                break;
            }
            for r in batch {
                conn.send(&Packet::Publish(to_publish(&r, packet_id(r.seq), false)?))
                    .await?;
                acked.insert(r.seq, false);
                inflight.push_back(r);
            }
            last_sent = Instant::now();
        }
        let idle = tokio::time::sleep(Duration::from_millis(if inflight.len() < window {
            20
        } else {
            200
        }));
        tokio::select! {
            p = conn.recv() => {
                last_heard = Instant::now();
                match p? {
                    Packet::PubAck(a) => {
                        if let Some(r) = inflight.iter().find(|r| packet_id(r.seq) == a.packet_id) {
                            acked.insert(r.seq, true);
                        }
                        // Acknowledge the prefix whose PUBACKs are all in.
                        let mut upto = None;
                        while inflight.front().is_some_and(|r| acked.get(&r.seq) == Some(&true)) {
                            if let Some(r) = inflight.pop_front() {
                                acked.remove(&r.seq);
                                bridge.forwarded(1);
                                upto = Some(r.seq);
                            }
                        }
                        if let Some(seq) = upto {
                            bridge.queue.ack(seq);
                        }
                    }
                    Packet::Publish(p) => bridge.receive(&mut conn, p).await?,
                    Packet::PubRel(r) => conn.send(&Packet::PubComp(PubResp::new(r.packet_id))).await?,
                    Packet::PingResp | Packet::SubAck(_) => {}
                    Packet::Disconnect(d) => return Err(format!("remote sent DISCONNECT {:?}", d.reason)),
                    p => return Err(format!("unexpected {} from remote", p.name())),
                }
            }
            _ = idle => {}
        }
        let now = Instant::now();
        if now.duration_since(last_sent) >= keepalive / 2 {
            conn.send(&Packet::PingReq).await?;
            last_sent = now;
        }
        if now.duration_since(last_heard) >= keepalive * 3 / 2 + Duration::from_secs(1) {
            return Err("keepalive: nothing heard from the remote".into());
        }
        if now >= retry_at {
            retry_at = now + cfg.retry_interval;
            for r in inflight.iter() {
                if acked.get(&r.seq) == Some(&false) {
                    bridge.retried(1);
                    conn.send(&Packet::Publish(to_publish(r, packet_id(r.seq), true)?))
                        .await?;
                }
            }
        }
    }
}

impl Bridge {
    /// A message from a remote subscription: published locally (with
    /// `receive_mountpoint`) through the normal path; acknowledged to the remote when
    /// the local publish is durable.
    async fn receive(self: &Arc<Self>, conn: &mut Conn, p: Publish) -> Result<(), Failure> {
        let topic = crate::mountpoint::mount(
            &self.config.receive_mountpoint,
            std::str::from_utf8(&p.topic).unwrap_or(""),
        );
        let msg = Message {
            topic: Bytes::from(topic),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            from: self.client_id.clone(),
            publish_ms: now_ms(),
            expiry_ms: 0,
            properties: Properties::default(),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.broker.publish(
            msg,
            Vec::new(),
            Box::new(move |ok| {
                let _ = tx.send(ok);
            }),
        );
        let ok = rx.await.unwrap_or(false);
        let Some(id) = p.packet_id else { return Ok(()) };
        if !ok {
            return Err("a received message could not be stored".into());
        }
        match p.qos {
            QoS::AtLeastOnce => conn.send(&Packet::PubAck(PubResp::new(id))).await,
            QoS::ExactlyOnce => conn.send(&Packet::PubRec(PubResp::new(id))).await,
            QoS::AtMostOnce => Ok(()),
        }
    }
}
