//! A persistent QoS 1 / QoS 2 publisher that outlives broker crashes, as the spec wants
//! a sender to: after every reconnect it sends again, in order, what was not finished,
//! a QoS 1 or unreceived QoS 2 PUBLISH with DUP = 1 and its packet id, a PUBREL for a
//! QoS 2 message whose PUBREC arrived [MQTT-4.4.0-1]. Its session is never ended, so
//! the broker must recognise a QoS 2 retransmission it already has.
//!
//! Every message carries a unique payload (`message`), now and then in a burst of big
//! ones that can fill a subscriber's socket while it does not read. Half of the
//! publishers reuse the lowest free packet id at once (as some client libraries do),
//! so a QoS 2 id comes back right after its PUBCOMP; the others count up.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use quay::codec::{Packet, Properties, ProtocolVersion, PubResp, Publish, QoS};
use tokio::sync::watch;
use tracing::debug;

use super::ledger::Ledger;
use super::message::{payload, topic_name, MsgId};
use super::rng::Rng;
use super::subscriber::{lock, SESSION_EXPIRY_S};
use super::Phase;
use crate::client::{next_packet_id, ConnectOptions, MqttConn};

const CONNECT_LIMIT: Duration = Duration::from_secs(15);
/// Size of an ordinary payload, bytes.
const SMALL_PAYLOAD: usize = 64;
/// Messages in a burst of big ones.
const BURST_LEN: (u64, u64) = (16, 40);

pub struct PublisherConfig {
    pub index: u32,
    pub client_id: String,
    pub protocol: ProtocolVersion,
    pub addr: SocketAddr,
    pub topics: usize,
    /// Most messages unacknowledged at once.
    pub window: usize,
    /// Time between two new messages.
    pub interval: Duration,
    /// Size of the messages of a burst, bytes.
    pub big_payload: usize,
    /// Chance that a tick starts a burst, per million.
    pub burst_per_million_ticks: u64,
    /// Reuse the lowest free packet id instead of counting up.
    pub lowest_free_id: bool,
}

/// What an unfinished message waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// QoS 1, waiting for PUBACK.
    Puback,
    /// QoS 2, waiting for PUBREC.
    Pubrec,
    /// QoS 2, PUBREC received, waiting for PUBCOMP.
    Pubcomp,
}

struct Outgoing {
    packet_id: u16,
    id: MsgId,
    publish: Publish,
    stage: Stage,
}

pub struct Publisher {
    cfg: PublisherConfig,
    rng: Rng,
    ledger: Arc<Mutex<Ledger>>,
    phase: watch::Receiver<Phase>,
    inflight: VecDeque<Outgoing>,
    next_seq: u64,
    last_packet_id: u16,
    /// Big messages still to send in the current burst, and their topic.
    burst: (u64, usize),
    session_exists: bool,
}

impl Publisher {
    pub fn new(
        cfg: PublisherConfig,
        rng: Rng,
        ledger: Arc<Mutex<Ledger>>,
        phase: watch::Receiver<Phase>,
    ) -> Publisher {
        Publisher {
            cfg,
            rng,
            ledger,
            phase,
            inflight: VecDeque::new(),
            next_seq: 0,
            last_packet_id: 0,
            burst: (0, 0),
            session_exists: false,
        }
    }

    fn producing(&self) -> bool {
        *self.phase.borrow() == Phase::Chaos
    }

    /// Publish until the chaos ends, then finish what is in flight; give up when the
    /// phase is `Stop`. Tells the ledger when it is done either way.
    pub async fn run(mut self) {
        loop {
            if *self.phase.borrow() == Phase::Stop {
                break;
            }
            if !self.producing() && self.inflight.is_empty() {
                break;
            }
            let mut conn = match self.connect().await {
                Ok(conn) => conn,
                Err(e) => {
                    debug!(client_id = %self.cfg.client_id, error = %e, "publisher connect failed");
                    tokio::time::sleep(self.rng.millis(20, 200)).await;
                    continue;
                }
            };
            match self.serve(&mut conn).await {
                Ok(()) => {
                    conn.disconnect().await.ok();
                    break;
                }
                Err(e) => {
                    debug!(client_id = %self.cfg.client_id, error = %e, "publisher connection ended");
                    tokio::time::sleep(self.rng.millis(20, 200)).await;
                }
            }
        }
        lock(&self.ledger).publisher_done();
    }

    async fn connect(&mut self) -> Result<MqttConn> {
        let mut options = ConnectOptions::persistent(self.cfg.client_id.clone());
        options.protocol = self.cfg.protocol;
        if self.cfg.protocol.is_v5() {
            options.properties = Properties {
                session_expiry_interval: Some(SESSION_EXPIRY_S),
                ..Properties::default()
            };
        }
        let conn = MqttConn::connect_within(self.cfg.addr, &options, CONNECT_LIMIT).await?;
        if self.session_exists && !conn.session_present {
            // The broker forgot our session: QoS 2 retransmissions may now be routed
            // twice. Keep sending them anyway, so every message ends acknowledged and
            // the subscribers' side shows what that costs.
            lock(&self.ledger).anomalies.session_lost += 1;
        }
        self.session_exists = true;
        Ok(conn)
    }

    /// One connection: retransmit, then publish and handle acks until the chaos is over
    /// and nothing is in flight (`Ok`), or the connection fails (`Err`).
    async fn serve(&mut self, conn: &mut MqttConn) -> Result<()> {
        for out in &self.inflight {
            match out.stage {
                Stage::Puback | Stage::Pubrec => {
                    let again = Publish {
                        dup: true,
                        ..out.publish.clone()
                    };
                    conn.queue(&Packet::Publish(again))?;
                }
                Stage::Pubcomp => conn.queue(&Packet::PubRel(PubResp::new(out.packet_id)))?,
            }
        }
        conn.flush().await?;
        let window = match conn.connack_properties.receive_maximum {
            Some(max) => self.cfg.window.min(usize::from(max)),
            None => self.cfg.window,
        };
        let mut ticker = tokio::time::interval(self.cfg.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if !self.producing() && self.inflight.is_empty() {
                return Ok(());
            }
            if *self.phase.borrow() == Phase::Stop {
                bail!("stopped with {} in flight", self.inflight.len());
            }
            let read = tokio::select! {
                r = conn.fill() => Some(r),
                _ = ticker.tick() => None,
            };
            match read {
                Some(r) => {
                    r?;
                    let now = Instant::now();
                    while let Some(packet) = conn.next_buffered()? {
                        self.on_packet(conn, packet, now)?;
                    }
                }
                None if self.producing() => {
                    let n = if self.burst.0 > 0 { window } else { 1 };
                    for _ in 0..n {
                        if self.inflight.len() >= window {
                            break;
                        }
                        self.publish_new(conn)?;
                    }
                }
                None => {}
            }
            conn.flush().await?;
        }
    }

    fn allocate_packet_id(&mut self) -> u16 {
        let in_use =
            |id: u16, inflight: &VecDeque<Outgoing>| inflight.iter().any(|o| o.packet_id == id);
        let mut id = if self.cfg.lowest_free_id {
            1
        } else {
            next_packet_id(self.last_packet_id)
        };
        // The window is far below 65535, so a free id is found within window + 1 steps.
        while in_use(id, &self.inflight) {
            id = next_packet_id(id);
        }
        self.last_packet_id = id;
        id
    }

    /// Queue the next message; its first-send stamp is taken before the write.
    fn publish_new(&mut self, conn: &mut MqttConn) -> Result<()> {
        if self.burst.0 == 0 && self.rng.below(1_000_000) < self.cfg.burst_per_million_ticks {
            let topic = self.rng.below(self.cfg.topics as u64) as usize;
            self.burst = (self.rng.between(BURST_LEN.0, BURST_LEN.1), topic);
        }
        let (topic, size) = if self.burst.0 > 0 {
            self.burst.0 -= 1;
            (self.burst.1, self.cfg.big_payload)
        } else {
            (
                self.rng.below(self.cfg.topics as u64) as usize,
                SMALL_PAYLOAD,
            )
        };
        let qos = if self.rng.percent(50) {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let id = MsgId {
            publisher: self.cfg.index,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let packet_id = self.allocate_packet_id();
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: Bytes::from(topic_name(topic)),
            packet_id: Some(packet_id),
            properties: Properties::default(),
            payload: payload(id, size),
        };
        conn.queue(&Packet::Publish(publish.clone()))?;
        lock(&self.ledger).sent(id, topic, qos, Instant::now());
        let stage = if qos == QoS::AtLeastOnce {
            Stage::Puback
        } else {
            Stage::Pubrec
        };
        self.inflight.push_back(Outgoing {
            packet_id,
            id,
            publish,
            stage,
        });
        Ok(())
    }

    fn position(&self, packet_id: u16, stages: &[Stage]) -> Option<usize> {
        self.inflight
            .iter()
            .position(|o| o.packet_id == packet_id && stages.contains(&o.stage))
    }

    fn on_packet(&mut self, conn: &mut MqttConn, packet: Packet, now: Instant) -> Result<()> {
        match packet {
            Packet::PubAck(ack) => match self.position(ack.packet_id, &[Stage::Puback]) {
                Some(i) => {
                    let out = self.inflight.remove(i).map(|o| o.id);
                    if let Some(id) = out {
                        let mut ledger = lock(&self.ledger);
                        if ack.reason.is_error() {
                            ledger.refused(id);
                        } else {
                            ledger.acked(id, now);
                        }
                    }
                }
                None => self.protocol_error(format!(
                    "PUBACK for packet id {} not awaiting one",
                    ack.packet_id
                )),
            },
            Packet::PubRec(rec) => {
                match self.position(rec.packet_id, &[Stage::Pubrec, Stage::Pubcomp]) {
                    Some(i) if rec.reason.is_error() && self.inflight[i].stage == Stage::Pubrec => {
                        // The exchange ends here [MQTT-4.3.3-4]; nothing was promised.
                        if let Some(out) = self.inflight.remove(i) {
                            lock(&self.ledger).refused(out.id);
                        }
                    }
                    Some(_) if rec.reason.is_error() => {
                        self.protocol_error(format!(
                            "PUBREC {:#04x} for packet id {} after a successful PUBREC",
                            rec.reason.0, rec.packet_id
                        ));
                    }
                    Some(i) => {
                        let out = &mut self.inflight[i];
                        if out.stage == Stage::Pubrec {
                            out.stage = Stage::Pubcomp;
                            lock(&self.ledger).acked(out.id, now);
                        }
                        conn.queue(&Packet::PubRel(PubResp::new(rec.packet_id)))?;
                    }
                    None => self.protocol_error(format!(
                        "PUBREC for packet id {} not in flight",
                        rec.packet_id
                    )),
                }
            }
            Packet::PubComp(comp) => match self.position(comp.packet_id, &[Stage::Pubcomp]) {
                Some(i) => {
                    self.inflight.remove(i);
                }
                None => self.protocol_error(format!(
                    "PUBCOMP for packet id {} not awaiting one",
                    comp.packet_id
                )),
            },
            Packet::Disconnect(d) => {
                bail!(
                    "{}: broker sent DISCONNECT {:#04x}",
                    self.cfg.client_id,
                    d.reason.0
                )
            }
            Packet::PingResp => {}
            other => self.protocol_error(format!("unexpected {}", other.name())),
        }
        Ok(())
    }

    fn protocol_error(&self, detail: String) {
        debug!(client_id = %self.cfg.client_id, %detail, "protocol error");
        lock(&self.ledger).protocol_error(&self.cfg.client_id, detail);
    }
}
