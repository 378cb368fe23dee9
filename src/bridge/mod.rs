//! MQTT bridges (EMQX's `emqx_bridge_mqtt`): forward matching local messages to
//! another broker through a durable segment cache, and publish the remote
//! subscriptions' messages locally.
//!
//! `start(broker, configs)` opens each bridge's cache, registers the
//! `message.hold` hook under `emqx_bridge_mqtt`, and runs each auto-start bridge's
//! client task; `Running::stop` undoes it. The hook appends a matching message
//! (topic mounted with `mountpoint`, `${node}` expanded) to the cache and hands the
//! publisher's acknowledgement to the cache's fsync: a PUBACK/PUBREC is sent only
//! once the record is on disk (durable mode, the default).
//!
//! Loop prevention: messages the bridge itself published (from its remote
//! subscriptions; publisher id `$bridge/<name>`) are never forwarded by any bridge,
//! and v5 remote subscriptions ask for No Local. Two brokers bridging each other
//! should also use distinct mountpoints.

pub mod client;
pub mod config;
pub mod ctl;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use quay_storage::segment::{QueueConfig, SegmentQueue};
use tokio::sync::watch;

use crate::broker::Broker;
use crate::codec::QoS;
use crate::hooks::{Hold, Hook};
use crate::message::{ClientId, Message};
pub use config::{BridgeConfig, Setting};

pub const HOOK_NAME: &str = "emqx_bridge_mqtt";

pub struct Bridge {
    pub config: BridgeConfig,
    pub queue: SegmentQueue,
    broker: Arc<Broker>,
    /// Publisher id of what the bridge publishes locally.
    client_id: ClientId,
    mountpoint: String,
    forwards: Mutex<Vec<String>>,
    subscriptions: Mutex<Vec<(String, QoS)>>,
    status: Mutex<&'static str>,
    task: Mutex<Option<watch::Sender<bool>>>,
    /// Sent, not yet acknowledged by the remote (`client::run`).
    inflight: tokio::sync::Mutex<std::collections::VecDeque<quay_storage::segment::Record>>,
    pub forwarded_count: AtomicU64,
    pub retried_count: AtomicU64,
}

impl Bridge {
    fn set_status(&self, s: &'static str) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    pub fn status(&self) -> &'static str {
        *self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forwarded(&self, n: u64) {
        self.forwarded_count.fetch_add(n, Ordering::Relaxed);
    }

    fn retried(&self, n: u64) {
        self.retried_count.fetch_add(n, Ordering::Relaxed);
    }

    pub fn forwards(&self) -> Vec<String> {
        self.forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn subscriptions(&self) -> Vec<(String, QoS)> {
        self.subscriptions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn edit_forwards(&self, f: impl FnOnce(&mut Vec<String>)) {
        f(&mut self.forwards.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn edit_subscriptions(&self, f: impl FnOnce(&mut Vec<(String, QoS)>)) {
        f(&mut self.subscriptions.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Subscriptions are sent at connect: a running bridge reconnects to apply a
    /// change (what is in flight is resent, at least once).
    pub fn resubscribe(self: &Arc<Self>) {
        if self.stop() {
            self.start();
        }
    }

    /// Append `msg` if a forward matches it; the hold completes when it is durable.
    fn hold(self: &Arc<Self>, msg: &Message) -> Option<Hold> {
        if msg.from.starts_with("$bridge/") {
            return None;
        }
        let topic = msg.topic_str();
        if !self
            .forwards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|f| crate::topic::matches(f, topic))
        {
            return None;
        }
        let mut stored = msg.to_stored();
        stored.topic = bytes::Bytes::from(crate::mountpoint::mount(&self.mountpoint, topic));
        let record = stored.encode();
        let me = self.clone();
        Some(Box::new(move |done| {
            // `done` runs after this record's fsync (false if it failed).
            if let Err(e) = me.queue.append(&record, Some(done)) {
                tracing::error!(bridge = %me.config.name, error = %e, "bridge cache append failed");
            }
        }))
    }

    /// Start the client task (no-op when running).
    pub fn start(self: &Arc<Self>) -> bool {
        let mut task = self.task.lock().unwrap_or_else(|p| p.into_inner());
        if task.is_some() {
            return false;
        }
        let (tx, rx) = watch::channel(false);
        *task = Some(tx);
        tokio::spawn(client::run(self.clone(), rx));
        true
    }

    pub fn stop(&self) -> bool {
        let t = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.set_status("Stopped");
        match t {
            Some(tx) => {
                let _ = tx.send(true);
                true
            }
            None => false,
        }
    }
}

/// The bridges of a node, as started.
pub struct Running {
    pub bridges: Vec<Arc<Bridge>>,
    broker: Arc<Broker>,
}

impl Running {
    pub fn get(&self, name: &str) -> Option<&Arc<Bridge>> {
        self.bridges.iter().find(|b| b.config.name == name)
    }

    /// Stop every client and remove the hook.
    pub fn stop(&self) {
        for b in &self.bridges {
            b.stop();
        }
        self.broker.hooks.remove_all(HOOK_NAME);
        *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// The bridges that run now, for `emqx_ctl bridges` (one node per process).
static RUNNING: Mutex<Option<Vec<Arc<Bridge>>>> = Mutex::new(None);

pub fn running() -> Option<Vec<Arc<Bridge>>> {
    RUNNING.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Open every bridge's cache, register the hook, start the auto-start bridges. Must
/// run inside the tokio runtime.
pub fn start(
    broker: &Arc<Broker>,
    configs: Vec<BridgeConfig>,
) -> Result<Running, quay_storage::segment::SegmentError> {
    let mut bridges = Vec::new();
    for cfg in configs {
        let queue = SegmentQueue::open(&QueueConfig {
            dir: cfg.replayq_dir.clone(),
            seg_bytes: cfg.replayq_seg_bytes,
            max_total_bytes: cfg.max_total_size,
            durable: cfg.durable,
        })?;
        let mountpoint = cfg.mountpoint.replace("${node}", &broker.config.node.name);
        let (forwards, subscriptions) =
            ctl::read_topics(&ctl::topics_file(&broker.config.node.data_dir, &cfg.name))
                .unwrap_or_else(|| (cfg.forwards.clone(), cfg.subscriptions.clone()));
        bridges.push(Arc::new(Bridge {
            client_id: ClientId::from(format!("$bridge/{}", cfg.name)),
            mountpoint,
            forwards: Mutex::new(forwards),
            subscriptions: Mutex::new(subscriptions),
            status: Mutex::new("Stopped"),
            task: Mutex::new(None),
            inflight: tokio::sync::Mutex::new(Default::default()),
            forwarded_count: AtomicU64::new(0),
            retried_count: AtomicU64::new(0),
            broker: broker.clone(),
            queue,
            config: cfg,
        }));
    }
    let hooked = bridges.clone();
    let _ = broker.hooks.add(
        HOOK_NAME,
        0,
        Hook::hold(move |msg| {
            let holds: Vec<Hold> = hooked.iter().filter_map(|b| b.hold(msg)).collect();
            match holds.len() {
                0 => None,
                1 => holds.into_iter().next(),
                n => Some(Box::new(move |done| {
                    let join = crate::hooks::join_completions(n, done);
                    for h in holds {
                        let j = join.clone();
                        h(Box::new(move |ok| j(ok)));
                    }
                })),
            }
        }),
    );
    for b in &bridges {
        tracing::info!(bridge = %b.config.name, records = b.queue.stats().records, "bridge cache opened");
        if b.config.auto_start {
            b.start();
        }
    }
    *RUNNING.lock().unwrap_or_else(|p| p.into_inner()) = Some(bridges.clone());
    Ok(Running {
        bridges,
        broker: broker.clone(),
    })
}

impl crate::plugins::Running for Running {
    fn stop(self: Box<Self>) {
        Running::stop(&self);
    }
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
            .map_err(|e| crate::plugins::PluginError::Start(e.to_string()))?;
        Ok(Box::new(running) as Box<dyn crate::plugins::Running>)
    })
}
