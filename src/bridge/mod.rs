//! Bridges (EMQX's `emqx_bridge_mqtt` plugin): forward matching local messages to
//! another broker through a durable segment cache, and publish what the remote
//! subscriptions bring in locally.
//!
//! The plugin's start opens each bridge's cache (`quay_storage::segment`), registers
//! the `message.hold` hook and starts each bridge's task (`mqtt.rs`; `rpc.rs` for a
//! `name@host` address). The hook appends a message that a forward matches (topic
//! under `mountpoint`, `${node}` expanded) to the cache and hands the publisher's
//! acknowledgement to the cache's group commit: a QoS 1/2 PUBACK/PUBREC goes out only
//! once the record is on disk (`queue.durable = on`, the default), so kill -9 or a
//! power loss after the ack loses nothing. The task removes a record from the cache
//! only after the remote acknowledged it (PUBACK, PUBCOMP).
//!
//! Loop prevention: what a bridge publishes locally (from its remote subscriptions,
//! publisher id `$bridge/<name>`) is never forwarded by that bridge, and v5 remote
//! subscriptions ask for No Local. Two brokers bridging each other both ways should
//! also use mountpoints that the other side's forwards do not match.
//!
//! What `emqx_ctl bridges` changes (forwards, subscriptions, stopped) is written to
//! RocksDB (`topics.rs`, `BridgeRecord`) before it reports success.

pub mod config;
pub mod ctl;
mod mqtt;
mod remote;
mod rpc;
mod topics;
mod window;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quay_storage::segment::{QueueConfig, Record, SegmentError, SegmentQueue};
use quay_storage::{BridgeRecord, Op, StoredMessage};
use tokio::sync::{watch, Notify};

use crate::broker::Broker;
use crate::codec::{Publish, QoS, ReasonCode};
use crate::hooks::{Hold, Hook};
use crate::logging::Throttle;
use crate::message::{now_ms, ClientId, Message};
pub use config::{Address, BridgeConfig, Setting};
use topics::Topics;
use window::{InflightWindow, Outbound};

pub const HOOK_NAME: &str = "emqx_bridge_mqtt";

/// A repeated failure (the same reason again) is logged at most this often.
const FAILURE_LOG_PERIOD: Duration = Duration::from_secs(30);
/// Other repeated conditions (refused or oversized messages, append errors).
const WARN_PERIOD_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Stopped,
    Connecting,
    Running,
    Disconnected,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Stopped => "Stopped",
            Status::Connecting => "Connecting",
            Status::Running => "Running",
            Status::Disconnected => "Disconnected",
        }
    }
}

/// Monotonic counts of one bridge (relaxed atomics: statistics).
#[derive(Debug, Default)]
pub struct Counters {
    forwarded: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
    received: AtomicU64,
}

/// A bridge's figures at one moment (`emqx_ctl bridges list`, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeFigures {
    pub status: Status,
    /// Records in the cache not yet acknowledged by the remote.
    pub queued: u64,
    pub queued_bytes: u64,
    /// Acknowledged by the remote.
    pub forwarded: u64,
    /// Sent again (retry_interval).
    pub retried: u64,
    /// Lost to `max_total_size`, expired, refused by the remote, too large for it.
    pub dropped: u64,
    /// Published locally from the remote subscriptions.
    pub received: u64,
}

impl Counters {
    fn add_forwarded(&self, n: u64) {
        self.forwarded.fetch_add(n, Ordering::Relaxed);
    }
    fn add_retried(&self, n: u64) {
        self.retried.fetch_add(n, Ordering::Relaxed);
    }
    fn add_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// Connection failures in a row, for logging each reason once per period.
#[derive(Default)]
struct FailureLog {
    streak: u64,
    /// Reasons logged since `period_start` (a few: a remote may alternate two).
    logged: Vec<String>,
    period_start: Option<Instant>,
    unlogged: u64,
}

/// Distinct reasons logged at once within one period; more wait for the next.
const FAILURE_REASONS_PER_PERIOD: usize = 4;

pub struct Bridge {
    pub config: BridgeConfig,
    pub queue: SegmentQueue,
    broker: Arc<Broker>,
    /// Publisher id of what the bridge publishes locally.
    client_id: ClientId,
    /// `mountpoint` with `${node}` expanded.
    mountpoint: String,
    topics: Mutex<Topics>,
    /// The forwards in force, read on every publish.
    forwards: RwLock<Arc<Vec<String>>>,
    status: Mutex<Status>,
    task: Mutex<Option<watch::Sender<bool>>>,
    /// Records sent and not yet acknowledged; kept across reconnects and a stop and
    /// start (sent again with DUP).
    window: tokio::sync::Mutex<InflightWindow>,
    /// The same for an RPC bridge (`rpc.rs`): records sent, not yet acknowledged.
    rpc_inflight: tokio::sync::Mutex<std::collections::VecDeque<Record>>,
    /// Signalled after each append: the task has something to send.
    appended: Notify,
    tls: Option<remote::TlsClient>,
    pub counters: Counters,
    failures: Mutex<FailureLog>,
    warn: Throttle,
    /// One `emqx_ctl` change at a time, so the record written is the one in force.
    edits: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks; a poisoned value is whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Bridge {
    fn set_status(&self, s: Status) {
        *lock(&self.status) = s;
    }

    pub fn figures(&self) -> BridgeFigures {
        let q = self.queue.stats();
        let c = &self.counters;
        BridgeFigures {
            status: *lock(&self.status),
            queued: q.records,
            queued_bytes: q.bytes,
            forwarded: c.forwarded.load(Ordering::Relaxed),
            retried: c.retried.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed) + q.dropped,
            received: c.received.load(Ordering::Relaxed),
        }
    }

    /// `bridge.<name>.*` in `emqx_ctl metrics` (and `metrics/bridge/<name>/*` in $SYS).
    fn metrics(&self) -> Vec<(String, u64)> {
        let f = self.figures();
        let n = &self.config.name;
        vec![
            (
                format!("bridge.{n}.connected"),
                (f.status == Status::Running) as u64,
            ),
            (format!("bridge.{n}.queued"), f.queued),
            (format!("bridge.{n}.queued_bytes"), f.queued_bytes),
            (format!("bridge.{n}.forwarded"), f.forwarded),
            (format!("bridge.{n}.dropped"), f.dropped),
            (format!("bridge.{n}.retried"), f.retried),
            (format!("bridge.{n}.received"), f.received),
        ]
    }

    pub fn forwards(&self) -> Vec<String> {
        lock(&self.topics).forwards()
    }

    pub fn subscriptions(&self) -> Vec<(String, QoS)> {
        lock(&self.topics).subscriptions()
    }

    /// Apply `change` to the topics and the stopped flag, write the result to RocksDB
    /// and only then put it in force. Err: not written, nothing changed.
    async fn change(&self, change: impl FnOnce(&mut Topics)) -> Result<(), String> {
        let _one = self.edits.lock().await;
        let mut next = lock(&self.topics).clone();
        change(&mut next);
        let op = Op::PutBridge {
            name: self.config.name.clone(),
            record: next.record.clone(),
        };
        if let Err(e) = self.broker.store.writer().write_durable(vec![op]).await {
            return Err(e.to_string());
        }
        *self.forwards.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next.forwards());
        *lock(&self.topics) = next;
        Ok(())
    }

    /// Append `msg` if a forward matches it; the hold completes when it is durable.
    fn hold(self: &Arc<Self>, msg: &Message) -> Option<Hold> {
        if *msg.from == *self.client_id {
            return None;
        }
        let topic = msg.topic_str();
        let forwards = self
            .forwards
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !forwards.iter().any(|f| crate::topic::matches(f, topic)) {
            return None;
        }
        let mut stored = msg.to_stored();
        stored.topic = Bytes::from(crate::mountpoint::mount(&self.mountpoint, topic));
        let record = stored.encode();
        let me = self.clone();
        Some(Box::new(move |done| {
            // `done` runs after this record's fsync (false if it failed).
            match me.queue.append(&record, Some(done)) {
                Ok(_) => me.appended.notify_one(),
                Err(e) => {
                    if let Some(skipped) = me.warn.ready(now_ms(), WARN_PERIOD_MS) {
                        tracing::error!(bridge = %me.config.name, error = %e, skipped, "bridge cache append failed; the publisher is not acknowledged");
                    }
                }
            }
        }))
    }

    /// A record of the cache as it goes to the remote; None (counted, logged) when it
    /// expired or cannot be read.
    fn outbound(&self, r: &Record, now_ms: u64) -> Option<Outbound> {
        let stored = match StoredMessage::decode(&r.payload) {
            Ok(m) => m,
            Err(e) => {
                self.counters.add_dropped(1);
                tracing::error!(bridge = %self.config.name, seq = r.seq, error = %e, "bridge cache record unreadable; skipped");
                return None;
            }
        };
        let msg = Message::from_stored(stored);
        if msg.is_expired(now_ms) {
            self.counters.add_dropped(1);
            return None;
        }
        let properties = if self.config.proto_ver.is_v5() {
            let mut p = msg.properties.clone();
            p.message_expiry_interval = msg.remaining_expiry_s(now_ms);
            p
        } else {
            Default::default()
        };
        Some(Outbound {
            topic: msg.topic,
            payload: msg.payload,
            qos: msg.qos,
            retain: msg.retain,
            properties,
        })
    }

    /// A message from a remote subscription: published here (under
    /// `receive_mountpoint`) through the normal path. True once it is stored as the
    /// local subscribers need it.
    async fn receive(&self, p: Publish) -> bool {
        let topic = crate::mountpoint::mount(
            &self.config.receive_mountpoint,
            std::str::from_utf8(&p.topic).unwrap_or(""),
        );
        let now = now_ms();
        let expiry_ms = p
            .properties
            .message_expiry_interval
            .map_or(0, |s| now + u64::from(s) * 1000);
        let msg = Message {
            topic: Bytes::from(topic),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            from: self.client_id.clone(),
            publish_ms: now,
            expiry_ms,
            properties: Message::pass_through(&p.properties),
        };
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.broker.publish(
            msg,
            Vec::new(),
            Box::new(move |ok| {
                let _ = tx.send(ok);
            }),
        );
        rx.await.unwrap_or(false)
    }

    /// Connected. Logged unless failures were logged within the period: a remote
    /// that accepts and then drops every connection is one condition, logged as such.
    fn connected(&self, addr: &str) {
        self.set_status(Status::Running);
        let mut f = lock(&self.failures);
        let quiet = f
            .period_start
            .is_none_or(|t| t.elapsed() >= FAILURE_LOG_PERIOD);
        if quiet {
            tracing::info!(bridge = %self.config.name, address = addr, failed_attempts = f.streak, "bridge connected");
        }
        f.streak = 0;
    }

    /// A connection failed or ended: each distinct reason is logged once per
    /// `FAILURE_LOG_PERIOD` (the first few at once), with the attempts not logged.
    fn failed(&self, why: &str) {
        let mut f = lock(&self.failures);
        f.streak += 1;
        let due = f
            .period_start
            .is_none_or(|t| t.elapsed() >= FAILURE_LOG_PERIOD);
        if due {
            f.logged.clear();
            f.period_start = Some(Instant::now());
        }
        let new = !f.logged.iter().any(|r| r == why);
        if new && f.logged.len() < FAILURE_REASONS_PER_PERIOD {
            tracing::warn!(
                bridge = %self.config.name,
                reason = why,
                attempts_not_logged = f.unlogged,
                retry_in_ms = self.config.reconnect_interval.as_millis() as u64,
                queued = self.queue.stats().records,
                "bridge connection failed"
            );
            f.logged.push(why.to_string());
            f.unlogged = 0;
        } else {
            f.unlogged += 1;
        }
    }

    /// A v5 PUBACK/PUBREC refusing a message (counted as dropped).
    fn refused(&self, reason: ReasonCode) {
        self.counters.add_dropped(1);
        if let Some(skipped) = self.warn.ready(now_ms(), WARN_PERIOD_MS) {
            tracing::warn!(bridge = %self.config.name, ?reason, skipped, "the remote refused a forwarded message; dropped");
        }
    }

    fn too_large(&self, seq: u64, max: usize) {
        if let Some(skipped) = self.warn.ready(now_ms(), WARN_PERIOD_MS) {
            tracing::warn!(bridge = %self.config.name, seq, max_packet_size = max, skipped, "a forwarded message is larger than the remote accepts; dropped");
        }
    }

    fn subscribed(&self, reasons: &[ReasonCode]) {
        let subs = self.subscriptions();
        for ((topic, _), r) in subs.iter().zip(reasons) {
            if r.is_error() {
                tracing::warn!(bridge = %self.config.name, topic, reason = ?r, "the remote refused a bridge subscription");
            }
        }
    }

    /// Start the task (false when it runs already).
    pub fn start(self: &Arc<Self>) -> bool {
        let mut task = lock(&self.task);
        if task.is_some() {
            return false;
        }
        let (tx, rx) = watch::channel(false);
        *task = Some(tx);
        self.set_status(Status::Connecting);
        match &self.config.address {
            Address::Mqtt(_) => {
                tokio::spawn(mqtt::run(self.clone(), rx));
            }
            Address::Rpc(_) => {
                tokio::spawn(rpc::run(self.clone(), rx));
            }
        }
        true
    }

    /// Stop the task (false when it was not running).
    pub fn stop(&self) -> bool {
        let t = lock(&self.task).take();
        self.set_status(Status::Stopped);
        match t {
            Some(tx) => {
                let _ = tx.send(true);
                true
            }
            None => false,
        }
    }

    /// Subscriptions are sent at connect: a running bridge reconnects to apply a
    /// change (what is in flight is sent again: at least once).
    fn resubscribe(self: &Arc<Self>) {
        if self.stop() {
            self.start();
        }
    }
}

/// The bridges of a node while the plugin runs.
pub struct Running {
    pub bridges: Vec<Arc<Bridge>>,
    broker: Arc<Broker>,
}

impl Running {
    pub fn get(&self, name: &str) -> Option<&Arc<Bridge>> {
        self.bridges.iter().find(|b| b.config.name == name)
    }
}

impl crate::plugins::Running for Running {
    fn stop(self: Box<Self>) {
        self.broker.metric_sources.remove(HOOK_NAME);
        for b in &self.bridges {
            b.stop();
        }
    }

    fn ctl(&self, args: &[String]) -> Option<crate::hooks::BoxFuture<crate::ctl::Reply>> {
        if args.first().map(String::as_str) != Some("bridges") {
            return None;
        }
        let (bridges, args) = (self.bridges.clone(), args[1..].to_vec());
        Some(Box::pin(async move { ctl::run(&bridges, &args).await }))
    }
}

/// How long a start waits for the previous run's caches to close (a reload).
const REOPEN_WAIT: Duration = Duration::from_secs(10);

async fn open_queue(cfg: &BridgeConfig) -> Result<SegmentQueue, SegmentError> {
    let qcfg = QueueConfig {
        dir: cfg.replayq_dir.clone(),
        seg_bytes: cfg.replayq_seg_bytes,
        max_total_bytes: cfg.max_total_size,
        durable: cfg.durable,
    };
    let deadline = tokio::time::Instant::now() + REOPEN_WAIT;
    loop {
        match SegmentQueue::open(&qcfg) {
            Err(SegmentError::Locked { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return r,
        }
    }
}

/// Open every bridge's cache, register the hook, start the bridges that should run.
pub async fn start(broker: &Arc<Broker>, configs: Vec<BridgeConfig>) -> Result<Running, String> {
    let records = broker
        .store
        .bridges()
        .map_err(|e| format!("cannot read the bridges' changes: {e}"))?;
    let mut bridges = Vec::new();
    for cfg in configs {
        let tls = match (&cfg.address, cfg.ssl) {
            (Address::Mqtt(_), true) => {
                Some(remote::tls_client(&cfg.name, &cfg.tls, &broker.config.psk)?)
            }
            _ => None,
        };
        let queue = open_queue(&cfg)
            .await
            .map_err(|e| format!("bridge {}: {e}", cfg.name))?;
        let record = records
            .iter()
            .find(|(n, _)| *n == cfg.name)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(BridgeRecord::default);
        let topics = Topics::new(cfg.forwards.clone(), cfg.subscriptions.clone(), record);
        let window = InflightWindow::new(cfg.max_inflight_batches * cfg.batch_count_limit);
        bridges.push(Arc::new(Bridge {
            client_id: ClientId::from(format!("$bridge/{}", cfg.name)),
            mountpoint: cfg.mountpoint.replace("${node}", &broker.config.node.name),
            forwards: RwLock::new(Arc::new(topics.forwards())),
            topics: Mutex::new(topics),
            status: Mutex::new(Status::Stopped),
            task: Mutex::new(None),
            window: tokio::sync::Mutex::new(window),
            rpc_inflight: tokio::sync::Mutex::new(Default::default()),
            appended: Notify::new(),
            tls,
            counters: Counters::default(),
            failures: Mutex::new(FailureLog::default()),
            warn: Throttle::new(),
            edits: tokio::sync::Mutex::new(()),
            broker: broker.clone(),
            queue,
            config: cfg,
        }));
    }
    let hooked = bridges.clone();
    broker
        .hooks
        .add(
            HOOK_NAME,
            0,
            Hook::hold(move |msg| {
                let mut holds: Vec<Hold> = hooked.iter().filter_map(|b| b.hold(msg)).collect();
                match holds.len() {
                    0 => None,
                    1 => holds.pop(),
                    n => Some(Box::new(move |done| {
                        let join = crate::hooks::join_completions(n, done);
                        for h in holds {
                            let j = join.clone();
                            h(Box::new(move |ok| j(ok)));
                        }
                    })),
                }
            }),
        )
        .map_err(|e| e.to_string())?;
    let sourced = bridges.clone();
    broker.metric_sources.set(
        HOOK_NAME,
        Arc::new(move || sourced.iter().flat_map(|b| b.metrics()).collect()),
    );
    for b in &bridges {
        let stopped = lock(&b.topics).record.stopped;
        tracing::info!(bridge = %b.config.name, records = b.queue.stats().records, stopped_by_ctl = stopped, "bridge cache opened");
        if b.config.auto_start && !stopped {
            b.start();
        }
    }
    Ok(Running {
        bridges,
        broker: broker.clone(),
    })
}

/// The plugin's start (`emqx_ctl plugins load emqx_bridge_mqtt`, or at boot when
/// `loaded_plugins` names it): every `bridge.mqtt.*` setting, checked here.
pub fn plugin_start(
    ctx: crate::plugins::Context,
) -> crate::hooks::BoxFuture<Result<Box<dyn crate::plugins::Running>, crate::plugins::PluginError>>
{
    Box::pin(async move {
        let settings: Vec<Setting> = ctx
            .keys
            .section("bridge.mqtt")
            .map(|(rest, s)| Setting {
                key: format!("bridge.mqtt.{rest}"),
                value: s.value.clone(),
                origin: s.origin.to_string(),
            })
            .collect();
        let configs = config::parse(&settings, &ctx.broker.config.release_root)
            .map_err(|e| crate::plugins::PluginError::Start(e.to_string()))?;
        let running = start(&ctx.broker, configs)
            .await
            .map_err(crate::plugins::PluginError::Start)?;
        Ok(Box::new(running) as Box<dyn crate::plugins::Running>)
    })
}
