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
//! client closes and starts clean, as [MQTT-3.2.2-4] tells it to).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quay::codec::{
    Packet, Properties, ProtocolVersion, PubResp, Publish, QoS, Subscribe, SubscriptionOptions,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;

use super::ledger::{Arrival, Ledger};
use super::message::{payload_id, topic_index, Interest, MsgId};
use super::rng::Rng;
use super::Phase;
use crate::client::{ConnectOptions, MqttConn, HANDSHAKE_LIMIT};

/// Session Expiry Interval a v5 subscriber asks for: longer than any run.
pub const SESSION_EXPIRY_S: u32 = 3600;
/// How long a CONNACK may take: more than the broker's own 10 s takeover wait, so a
/// slow takeover shows as what the broker answered, not as our impatience.
const CONNECT_LIMIT: Duration = Duration::from_secs(15);
/// How long concurrent CONNECTs of one client may all stay connected before the client
/// calls it a broker fault and keeps the newest.
const SETTLE_LIMIT: Duration = Duration::from_secs(3);
/// Socket receive buffer of a subscriber, as on a small device: a subscriber that
/// stops reading fills it (and the broker's send buffer) after a few MB, so the broker's
/// writes to it block, which is what takeovers must cope with (issue 7, defect 2).
const RECV_BUFFER_BYTES: u32 = 64 * 1024;
/// A CONNACK slower than this is counted: a takeover that waits for a blocked
/// connection shows as one (issue 7, defect 2: the broker gives up after 10 s).
const SLOW_CONNACK: Duration = Duration::from_secs(5);
/// How long an ender reads before ending its session, to receive what it is owed.
const SETTLE_BEFORE_END: Duration = Duration::from_secs(3);

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

/// What a subscriber does between reads, each with its weight among the choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Misbehaviour {
    /// Nothing: only read (alone, it leaves the kills as the only fault).
    None,
    /// Stop reading for 0.3-4 s.
    Pause,
    /// Close the socket without DISCONNECT, stay away 0-2 s.
    Drop,
    /// DISCONNECT (session kept), stay away 0-2 s.
    Disconnect,
    /// Connect again while the old socket is still open, unread.
    Takeover,
    /// Stop reading for 1-6 s, then connect again while the old socket stays open,
    /// unread, for 5-15 s: a device whose link went half-open.
    HalfOpen,
    /// Two or three CONNECTs at once while the old socket is still open.
    Concurrent,
    /// SUBSCRIBE again to the same filters.
    Resubscribe,
    /// End the session on purpose (only the enders: every other subscriber).
    End,
}

impl Misbehaviour {
    pub const ALL: [Misbehaviour; 8] = [
        Misbehaviour::Pause,
        Misbehaviour::Drop,
        Misbehaviour::Disconnect,
        Misbehaviour::Takeover,
        Misbehaviour::HalfOpen,
        Misbehaviour::Concurrent,
        Misbehaviour::Resubscribe,
        Misbehaviour::End,
    ];

    /// Weight against 50 for a plain read.
    fn weight(self) -> u64 {
        match self {
            Misbehaviour::None => 0,
            Misbehaviour::Pause => 8,
            Misbehaviour::Drop => 6,
            Misbehaviour::Disconnect => 6,
            Misbehaviour::Takeover => 8,
            Misbehaviour::HalfOpen => 4,
            Misbehaviour::Concurrent => 5,
            Misbehaviour::Resubscribe => 3,
            Misbehaviour::End => 4,
        }
    }
}

/// How a subscriber ends its session on purpose.
#[derive(Debug, Clone, Copy)]
enum EndBy {
    /// v5 DISCONNECT with Session Expiry Interval 0.
    DisconnectExpiryZero,
    /// Clean Start / Clean Session = 1 reconnect, while the old socket is still open
    /// (a takeover) or after dropping it.
    CleanReconnect { takeover: bool },
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
                // [MQTT-3.1.2-6]; the incarnation does not (see `ledger`).
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

    async fn chaos_step(&mut self) -> Result<()> {
        let mut choices = vec![(None, 50)];
        for m in &self.cfg.misbehaviours {
            if *m != Misbehaviour::End || self.cfg.ender {
                choices.push((Some(*m), m.weight()));
            }
        }
        let weights: Vec<u64> = choices.iter().map(|c| c.1).collect();
        let choice = choices[self.rng.weighted(&weights)].0;
        if let Some(m) = choice {
            debug!(client_id = %self.cfg.client_id, action = ?m, "misbehaving");
        }
        match choice {
            None => {
                let d = self.rng.millis(100, 1500);
                self.read_for(d).await
            }
            Some(Misbehaviour::None) => Ok(()),
            Some(Misbehaviour::Pause) => {
                // Stop reading: acks stop, the broker's window fills, its writes block.
                self.stats.pauses += 1;
                tokio::time::sleep(self.rng.millis(300, 4000)).await;
                Ok(())
            }
            Some(Misbehaviour::Drop) => {
                self.stats.drops += 1;
                self.conn = None;
                tokio::time::sleep(self.rng.millis(0, 2000)).await;
                Ok(())
            }
            Some(Misbehaviour::Disconnect) => {
                self.stats.drops += 1;
                if let Some(conn) = self.conn.take() {
                    conn.disconnect().await?;
                }
                tokio::time::sleep(self.rng.millis(0, 2000)).await;
                Ok(())
            }
            Some(Misbehaviour::Takeover) => self.takeover(1).await,
            Some(Misbehaviour::HalfOpen) => {
                self.stats.pauses += 1;
                tokio::time::sleep(self.rng.millis(1000, 6000)).await;
                self.long_hold = true;
                self.takeover(1).await
            }
            Some(Misbehaviour::Concurrent) => {
                let n = self.rng.between(2, 3) as usize;
                self.takeover(n).await
            }
            Some(Misbehaviour::Resubscribe) => self.send_subscribe().await,
            Some(Misbehaviour::End) => self.end_session().await,
        }
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

    /// Connect `n` new sockets while the current one stays open, unread (a half-open
    /// link), then keep the one the broker kept.
    async fn takeover(&mut self, n: usize) -> Result<()> {
        self.stats.takeovers += 1;
        if n > 1 {
            self.stats.concurrent_connects += 1;
        }
        self.abandon_current();
        let options = self.options(false);
        let addr = self.cfg.addr;
        let mut attempts = JoinSet::new();
        for _ in 0..n {
            let options = options.clone();
            let jitter = if n > 1 {
                self.rng.millis(0, 20)
            } else {
                Duration::ZERO
            };
            attempts.spawn(async move {
                tokio::time::sleep(jitter).await;
                let started = Instant::now();
                let conn = MqttConn::connect_within(addr, &options, CONNECT_LIMIT).await;
                (conn, started, Instant::now())
            });
        }
        let mut candidates = Vec::new();
        while let Some(joined) = attempts.join_next().await {
            if let Ok((Ok(conn), started, at)) = joined {
                self.note_connack_delay(at - started);
                candidates.push(Candidate {
                    conn,
                    pending: Vec::new(),
                    open: true,
                    connack_at: at,
                });
            }
        }
        self.stats.connects += candidates.len() as u64;
        if candidates.is_empty() {
            bail!(
                "{}: no takeover connection got a CONNACK",
                self.cfg.client_id
            );
        }
        // Session Present is checked once, on the first CONNACK: all of them resume the
        // same session, and the first answer decides what the client keeps.
        candidates.sort_by_key(|c| c.connack_at);
        self.resumed(&candidates[0].conn)?;
        let mut winner = if candidates.len() == 1 {
            candidates.pop().context("one candidate")?
        } else {
            self.settle(candidates).await?
        };
        for packet in std::mem::take(&mut winner.pending) {
            self.handle(&mut winner.conn, packet)?;
        }
        winner.conn.flush().await?;
        self.conn = Some(winner.conn);
        self.subscribe_if_needed().await
    }

    /// Of several connections that all got a CONNACK, wait until the broker has closed
    /// all but one (reading them into `pending`, unprocessed) and return that one.
    async fn settle(&mut self, mut candidates: Vec<Candidate>) -> Result<Candidate> {
        let deadline = Instant::now() + SETTLE_LIMIT;
        loop {
            let open = candidates.iter().filter(|c| c.open).count();
            if open <= 1 {
                break;
            }
            if Instant::now() >= deadline {
                debug!(client_id = %self.cfg.client_id, open, "concurrent CONNECTs all stayed connected");
                lock(&self.ledger).anomalies.double_live += 1;
                break;
            }
            for c in candidates.iter_mut().filter(|c| c.open) {
                c.poll(Duration::from_millis(20)).await;
            }
        }
        // The newest connection the broker has not closed; the rest are abandoned.
        let winner = candidates
            .into_iter()
            .filter(|c| c.open)
            .max_by_key(|c| c.connack_at);
        winner
            .with_context(|| format!("{}: the broker closed every connection", self.cfg.client_id))
    }

    /// Stop reading the current connection and leave it open for a while, as a device
    /// does whose old link went half-open: mostly up to 3 s, sometimes (and always
    /// after `HalfOpen`) 5-15 s, longer than the broker's 10 s takeover wait.
    fn abandon_current(&mut self) {
        if let Some(old) = self.conn.take() {
            let hold = if std::mem::take(&mut self.long_hold) || self.rng.percent(10) {
                self.rng.millis(5000, 15000)
            } else {
                self.rng.millis(0, 3000)
            };
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                drop(old);
            });
        }
    }

    /// End the session on purpose (see `EndBy`), after reading for a while to receive
    /// what it is owed.
    async fn end_session(&mut self) -> Result<()> {
        let settle_until = Instant::now() + SETTLE_BEFORE_END;
        while self.conn.is_some() && Instant::now() < settle_until {
            let outstanding = lock(&self.ledger).outstanding(self.sub);
            if outstanding == 0 {
                break;
            }
            self.read_for(Duration::from_millis(100)).await?;
        }
        if self.rng.percent(50) {
            // End right behind fresh acks, so the acks and the end of the session can
            // meet in one store batch (issue 7, defect 1).
            self.read_until_something(Duration::from_secs(1)).await?;
        }
        let how = match (self.cfg.protocol.is_v5(), self.rng.below(3)) {
            (true, 0) => EndBy::DisconnectExpiryZero,
            (_, n) => EndBy::CleanReconnect { takeover: n == 1 },
        };
        self.stats.session_ends += 1;
        {
            let mut ledger = lock(&self.ledger);
            self.incarnation = ledger.end_session(self.sub, Instant::now());
            self.kills_at_end = ledger.kills();
        }
        self.awaiting_rel.clear();
        self.subscribed = false;
        self.session_exists = false;
        match how {
            EndBy::DisconnectExpiryZero => {
                let Some(conn) = self.conn.take() else {
                    self.needs_fresh_session = true;
                    return Ok(());
                };
                let expiry_zero = Properties {
                    session_expiry_interval: Some(0),
                    ..Properties::default()
                };
                if conn.disconnect_with(expiry_zero).await.is_err() {
                    // Not seen closed: the end may not have happened.
                    self.needs_fresh_session = true;
                }
                // Resume at once, or after a pause: the resume must find no session.
                tokio::time::sleep(self.rng.millis(0, 300)).await;
            }
            EndBy::CleanReconnect { takeover } => {
                self.needs_fresh_session = true;
                if takeover {
                    self.abandon_current();
                } else {
                    self.conn = None;
                }
            }
        }
        self.connect().await
    }
}

/// One of several connections opened at once for the same client id.
struct Candidate {
    conn: MqttConn,
    /// Packets read while waiting for the broker to pick; handled only if this one wins.
    pending: Vec<Packet>,
    open: bool,
    connack_at: Instant,
}

impl Candidate {
    /// Read what arrives within `d` into `pending`; a DISCONNECT, EOF or error closes it.
    async fn poll(&mut self, d: Duration) {
        match tokio::time::timeout(d, self.conn.fill()).await {
            Err(_) => return,
            Ok(Err(_)) => {
                self.open = false;
                return;
            }
            Ok(Ok(_)) => {}
        }
        loop {
            match self.conn.next_buffered() {
                Ok(Some(Packet::Disconnect(_))) | Err(_) => {
                    self.open = false;
                    return;
                }
                Ok(Some(packet)) => self.pending.push(packet),
                Ok(None) => return,
            }
        }
    }
}

pub fn lock(ledger: &Mutex<Ledger>) -> std::sync::MutexGuard<'_, Ledger> {
    // A panic while holding the lock is a bug in the soak; the figures are still the
    // best we have, so keep going with them.
    ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
