//! A persistent subscriber that misbehaves the way devices do: it drops its socket,
//! reconnects while still connected (a takeover by its own second socket, sometimes two
//! or three CONNECTs at once), stops reading for a while, resubscribes, and (if it is an
//! "ender") ends its session on purpose, every way MQTT allows.
//!
//! It is a correct MQTT client all the same, because the checker's rules (see
//! `ledger`) assume one: it keeps its QoS 2 receiver state (packet ids awaiting PUBREL)
//! across connections of one session and clears it when the session ends or the broker
//! says it has none; it never processes bytes from a socket it has abandoned (a device
//! whose old link is half-open does not read it either, and what arrived there unacked
//! is the broker's to send again); after ending a session it insists on a fresh one
//! (Session Present = 1 then means the broker kept what it should not have, and the
//! client closes and starts clean, as MQTT 5 [MQTT-3.2.2-4] tells it to).

mod misbehave;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quay::codec::{
    Packet, Properties, ProtocolVersion, PubResp, Publish, QoS, Subscribe, SubscriptionOptions,
};
use tokio::sync::watch;
use tracing::debug;

use super::ledger::{Arrival, Ledger};
use super::message::{payload_id, topic_index, Interest, MsgId};
use super::rng::Rng;
use super::Phase;
use crate::client::{ConnectOptions, MqttConn, HANDSHAKE_LIMIT};

pub use misbehave::Misbehaviour;

/// Session Expiry Interval a v5 subscriber asks for: longer than any run.
pub const SESSION_EXPIRY_S: u32 = 3600;
/// How long a CONNACK may take: more than the broker's own 10 s takeover wait, so a
/// slow takeover shows as what the broker answered, not as our impatience.
const CONNECT_LIMIT: Duration = Duration::from_secs(15);
/// Socket receive buffer of a subscriber, as on a small device: a subscriber that
/// stops reading fills it (and the broker's send buffer) after a few MB, so the broker's
/// writes to it block, which is what takeovers must cope with (issue 7, defect 2).
const RECV_BUFFER_BYTES: u32 = 64 * 1024;
/// A CONNACK slower than this is counted: a takeover that waits for a blocked
/// connection shows as one (issue 7, defect 2: the broker gives up after 10 s).
const SLOW_CONNACK: Duration = Duration::from_secs(5);

/// What the soak asked each subscriber to do, counted.
#[derive(Debug, Clone, Copy, Default)]
pub struct SubscriberStats {
    pub connects: u64,
    pub takeovers: u64,
    pub concurrent_connects: u64,
    pub pauses: u64,
    pub drops: u64,
    pub session_ends: u64,
}

pub struct SubscriberConfig {
    pub client_id: String,
    pub protocol: ProtocolVersion,
    pub interest: Interest,
    /// Whether this one ends its session now and then (the others keep one session for
    /// the whole run, so every loss on them is seen).
    pub ender: bool,
    pub addr: SocketAddr,
    /// What it may do besides reading.
    pub misbehaviours: Vec<Misbehaviour>,
}

pub struct Subscriber {
    cfg: SubscriberConfig,
    /// Index in the ledger.
    sub: usize,
    rng: Rng,
    ledger: Arc<Mutex<Ledger>>,
    phase: watch::Receiver<Phase>,
    conn: Option<MqttConn>,
    /// The ledger's incarnation this client is in.
    incarnation: usize,
    /// A CONNACK of this incarnation's session was seen (so Session Present must be 1).
    session_exists: bool,
    /// SUBACK seen since the session was (re)created.
    subscribed: bool,
    /// An end is under way: the next connect must prove the old session gone.
    needs_fresh_session: bool,
    /// Kills counted when the current end started: a crash in between excuses a stale
    /// session (the end may not have been durable).
    kills_at_end: u64,
    /// QoS 2 packet id -> message, received and not yet released by PUBREL.
    awaiting_rel: HashMap<u16, MsgId>,
    next_packet_id: u16,
    drain_round: u32,
    /// The next abandoned connection is held open 5-15 s.
    long_hold: bool,
    stats: SubscriberStats,
}

impl Subscriber {
    pub fn new(
        cfg: SubscriberConfig,
        rng: Rng,
        ledger: Arc<Mutex<Ledger>>,
        phase: watch::Receiver<Phase>,
        topics: usize,
    ) -> Subscriber {
        let sub = lock(&ledger).add_subscriber(&cfg.client_id, cfg.interest.mask(topics));
        Subscriber {
            cfg,
            sub,
            rng,
            ledger,
            phase,
            conn: None,
            incarnation: 0,
            session_exists: false,
            subscribed: false,
            needs_fresh_session: false,
            kills_at_end: 0,
            awaiting_rel: HashMap::new(),
            next_packet_id: 0,
            drain_round: 0,
            long_hold: false,
            stats: SubscriberStats::default(),
        }
    }

    /// Run until the phase is `Stop`; each step is bounded, so this ends soon after.
    pub async fn run(mut self) -> SubscriberStats {
        loop {
            let phase = *self.phase.borrow();
            if phase == Phase::Stop {
                break;
            }
            if let Phase::Drain { round } = phase {
                if round != self.drain_round {
                    // A new drain round: come back on a fresh connection, which makes the
                    // broker send again whatever was in flight on the old one.
                    self.drain_round = round;
                    if let Some(conn) = self.conn.take() {
                        conn.disconnect().await.ok();
                    }
                }
            }
            let step = match (self.conn.is_some(), phase) {
                (false, _) => self.connect().await,
                (true, Phase::Chaos) => self.chaos_step().await,
                (true, Phase::Drain { round }) => {
                    let read = self.read_for(Duration::from_millis(200)).await;
                    if read.is_ok() && self.subscribed && !self.needs_fresh_session {
                        lock(&self.ledger).ready(self.sub, round);
                    }
                    read
                }
                (true, Phase::Stop) => Ok(()),
            };
            if let Err(e) = step {
                debug!(client_id = %self.cfg.client_id, error = %e, "subscriber step failed");
                self.conn = None;
                tokio::time::sleep(self.rng.millis(20, 200)).await;
            }
        }
        if let Some(conn) = self.conn.take() {
            conn.disconnect().await.ok();
        }
        self.stats
    }

    fn options(&self, clean: bool) -> ConnectOptions {
        let mut options = if clean {
            ConnectOptions::clean(self.cfg.client_id.clone())
        } else {
            ConnectOptions::persistent(self.cfg.client_id.clone())
        };
        options.protocol = self.cfg.protocol;
        options.recv_buffer_bytes = Some(RECV_BUFFER_BYTES);
        if self.cfg.protocol.is_v5() {
            options.properties = Properties {
                session_expiry_interval: Some(SESSION_EXPIRY_S),
                ..Properties::default()
            };
        }
        options
    }

    /// Connect: resume the session, or (after an end) start a fresh one; then subscribe
    /// if this session has no SUBACK yet.
    async fn connect(&mut self) -> Result<()> {
        let conn = if self.needs_fresh_session {
            self.fresh_session().await?
        } else {
            let conn = self.open(false).await?;
            self.stats.connects += 1;
            self.resumed(&conn)?;
            conn
        };
        self.conn = Some(conn);
        self.subscribe_if_needed().await
    }

    /// TCP connect, CONNECT, CONNACK; a slow CONNACK is counted.
    async fn open(&mut self, clean: bool) -> Result<MqttConn> {
        let started = Instant::now();
        let conn =
            MqttConn::connect_within(self.cfg.addr, &self.options(clean), CONNECT_LIMIT).await?;
        self.note_connack_delay(started.elapsed());
        Ok(conn)
    }

    fn note_connack_delay(&self, delay: Duration) {
        if delay >= SLOW_CONNACK {
            debug!(client_id = %self.cfg.client_id, ?delay, "slow CONNACK");
            lock(&self.ledger).anomalies.slow_connacks += 1;
        }
    }

    /// Check the Session Present flag of a Clean Start = 0 CONNACK.
    fn resumed(&mut self, conn: &MqttConn) -> Result<()> {
        let now = Instant::now();
        debug!(
            client_id = %self.cfg.client_id,
            session_present = conn.session_present,
            expected = self.session_exists,
            "resumed"
        );
        match (self.session_exists, conn.session_present) {
            (true, true) => {}
            (true, false) => {
                // The broker forgot a session the client never ended: its state goes
                // (MQTT 5 [MQTT-3.2.2-5]); the incarnation does not (see `ledger`).
                lock(&self.ledger).anomalies.session_lost += 1;
                self.awaiting_rel.clear();
                self.subscribed = false;
            }
            (false, false) => {
                // First connect, or the resume after a DISCONNECT with expiry 0: the old
                // session is gone, as it should be.
                lock(&self.ledger).end_confirmed(self.sub, now);
            }
            (false, true) => {
                // The broker kept a session the client ended (or, after a crash, one whose
                // CONNACK the client never saw: then it is not counted).
                let mut ledger = lock(&self.ledger);
                if ledger.kills() == self.kills_at_end {
                    ledger.anomalies.stale_session += 1;
                }
                drop(ledger);
                self.needs_fresh_session = true;
                bail!("{}: session present after ending it", self.cfg.client_id);
            }
        }
        self.session_exists = true;
        Ok(())
    }

    /// Prove the ended session gone with a clean connect, and open the new one.
    async fn fresh_session(&mut self) -> Result<MqttConn> {
        if self.cfg.protocol.is_v5() {
            // Clean Start = 1 with a Session Expiry: the new session in one CONNECT.
            let conn = self.open(true).await?;
            self.stats.connects += 1;
            self.fresh(&conn)?;
            return Ok(conn);
        }
        // 3.1.1: a Clean Session = 1 connection discards the session and its own ends
        // with it; the persistent one after it starts empty.
        let clean = self.open(true).await?;
        self.stats.connects += 1;
        self.fresh(&clean)?;
        clean.disconnect().await?;
        self.session_exists = false;
        let conn = self.open(false).await?;
        self.stats.connects += 1;
        self.resumed(&conn)?;
        Ok(conn)
    }

    /// The CONNACK of a clean connect: the old session is gone.
    fn fresh(&mut self, conn: &MqttConn) -> Result<()> {
        let now = Instant::now();
        if conn.session_present {
            self.protocol_error("Session Present = 1 on a clean start".into());
            bail!(
                "{}: session present = 1 on a clean start",
                self.cfg.client_id
            );
        }
        lock(&self.ledger).end_confirmed(self.sub, now);
        self.needs_fresh_session = false;
        self.session_exists = true;
        Ok(())
    }

    /// SUBSCRIBE unless this session has its SUBACK, and read (handling deliveries)
    /// until the SUBACK arrives, as a client that needs its subscription does.
    async fn subscribe_if_needed(&mut self) -> Result<()> {
        if self.subscribed {
            return Ok(());
        }
        self.send_subscribe().await?;
        let deadline = Instant::now() + HANDSHAKE_LIMIT;
        while !self.subscribed {
            if Instant::now() >= deadline {
                bail!(
                    "{}: no SUBACK within {HANDSHAKE_LIMIT:?}",
                    self.cfg.client_id
                );
            }
            self.read_for(Duration::from_millis(50)).await?;
        }
        Ok(())
    }

    /// SUBSCRIBE to every filter at QoS 2; the SUBACK is handled where it arrives.
    async fn send_subscribe(&mut self) -> Result<()> {
        self.next_packet_id = crate::client::next_packet_id(self.next_packet_id);
        let options = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            ..SubscriptionOptions::default()
        };
        let subscribe = Subscribe {
            packet_id: self.next_packet_id,
            properties: Properties::default(),
            filters: self
                .cfg
                .interest
                .filters()
                .into_iter()
                .map(|f| (f, options))
                .collect(),
        };
        let conn = self
            .conn
            .as_mut()
            .context("subscribe without a connection")?;
        conn.queue(&Packet::Subscribe(subscribe))?;
        lock(&self.ledger).subscribe_sent(self.sub, Instant::now());
        conn.flush().await
    }

    /// Read and answer everything that arrives for `d`.
    async fn read_for(&mut self, d: Duration) -> Result<()> {
        let mut conn = self.conn.take().context("read without a connection")?;
        let deadline = tokio::time::Instant::now() + d;
        loop {
            self.handle_buffered(&mut conn)?;
            conn.flush().await?;
            match tokio::time::timeout_at(deadline, conn.fill()).await {
                Err(_) => break,
                Ok(read) => {
                    read?;
                }
            }
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// Read until at least one packet arrived (or `limit` passed), answer it, return.
    async fn read_until_something(&mut self, limit: Duration) -> Result<()> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(packet) = conn.next_buffered()? {
                self.handle(&mut conn, packet)?;
                self.handle_buffered(&mut conn)?;
                break;
            }
            match tokio::time::timeout_at(deadline, conn.fill()).await {
                Err(_) => break,
                Ok(read) => {
                    read?;
                }
            }
        }
        conn.flush().await?;
        self.conn = Some(conn);
        Ok(())
    }

    /// Handle every complete packet in the read buffer; an error if the broker closed.
    fn handle_buffered(&mut self, conn: &mut MqttConn) -> Result<()> {
        while let Some(packet) = conn.next_buffered()? {
            self.handle(conn, packet)?;
        }
        Ok(())
    }

    fn handle(&mut self, conn: &mut MqttConn, packet: Packet) -> Result<()> {
        let now = Instant::now();
        match packet {
            Packet::Publish(publish) => self.on_publish(conn, publish, now)?,
            Packet::PubRel(rel) => {
                self.awaiting_rel.remove(&rel.packet_id);
                conn.queue(&Packet::PubComp(PubResp::new(rel.packet_id)))?;
            }
            Packet::SubAck(ack) => {
                if ack.reasons.iter().any(|r| r.is_error()) {
                    self.protocol_error(format!("SUBACK refused: {:?}", ack.reasons));
                } else if !self.subscribed {
                    self.subscribed = true;
                    lock(&self.ledger).suback(self.sub, now);
                }
            }
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

    fn on_publish(&mut self, conn: &mut MqttConn, publish: Publish, now: Instant) -> Result<()> {
        let topic = topic_index(&publish.topic);
        let Some(id) = payload_id(&publish.payload) else {
            self.protocol_error(format!(
                "a {}-byte payload no publisher wrote",
                publish.payload.len()
            ));
            return Ok(());
        };
        let packet_id = publish.packet_id;
        let deliver = match (publish.qos, packet_id) {
            (QoS::ExactlyOnce, Some(pid)) => match self.awaiting_rel.get(&pid) {
                None => {
                    self.awaiting_rel.insert(pid, id);
                    true
                }
                // The same message again before PUBREL: answered, not handed over again.
                Some(held) if *held == id => false,
                Some(held) => {
                    // An id reused before its PUBREL: a method-B receiver must take it
                    // for the held message, so this one is not handed over.
                    let detail = format!(
                        "QoS 2 packet id {pid} of {held} (not released) reused for {id} (dup {})",
                        publish.dup
                    );
                    self.protocol_error(detail);
                    false
                }
            },
            _ => true,
        };
        if deliver {
            let arrival = Arrival {
                topic,
                qos: publish.qos,
                packet_id,
                dup: publish.dup,
            };
            lock(&self.ledger).delivered(self.sub, id, arrival, self.incarnation, now);
        }
        match (publish.qos, packet_id) {
            (QoS::AtLeastOnce, Some(pid)) => conn.queue_puback(pid)?,
            (QoS::ExactlyOnce, Some(pid)) => conn.queue(&Packet::PubRec(PubResp::new(pid)))?,
            _ => {}
        }
        Ok(())
    }
}

pub fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    // A panic while holding the lock is a bug in the soak; the figures are still the
    // best we have, so keep going with them.
    ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
