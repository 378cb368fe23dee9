//! What a subscriber does besides reading, and how: the misbehaviours the soak picks
//! from, takeovers by its own new sockets (one, or two or three CONNECTs at once), and
//! the deliberate end of a session. Methods of `Subscriber`, kept apart from its
//! protocol handling so each file holds one idea.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use quay::codec::{Packet, Properties};
use tokio::task::JoinSet;
use tracing::debug;

use super::{lock, Subscriber, CONNECT_LIMIT};
use crate::client::MqttConn;

/// How long concurrent CONNECTs of one client may all stay connected before the client
/// calls it a broker fault and keeps the newest.
const SETTLE_LIMIT: Duration = Duration::from_secs(3);
/// How long an ender reads before ending its session, to receive what it is owed.
const SETTLE_BEFORE_END: Duration = Duration::from_secs(3);

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

impl Subscriber {
    pub(super) async fn chaos_step(&mut self) -> Result<()> {
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
