//! `$SYS/brokers/...`: what the node publishes about itself (EMQX's `emqx_sys`).
//!
//! - `$SYS/brokers` (the running nodes) and `version`, `sysdescr`: retained, at start;
//! - `uptime`, `datetime`: every `broker.sys_heartbeat`;
//! - `stats/*`, `metrics/*`: every `broker.sys_interval` ([`figures`]);
//! - `clients/<id>/connected|disconnected`: as they happen ([`client_events`]);
//! - `alarms/*`, `sysmon/*`: from the monitors ([`alarms`], [`sysmon`]).
//!
//! Every message goes through the normal publish path (`Broker::publish`: hooks,
//! routing, retained) as a message of no client, at QoS 0, from this module's own
//! task: hooks only queue events for it (bounded), so no client's connection ever
//! routes a `$SYS` message or waits for one. No client may publish into `$SYS/`
//! ([`is_sys_topic`], checked by the channel).

pub mod alarms;
pub mod client_events;
pub mod figures;
pub mod sysmon;
mod text;

pub use text::datetime;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::broker::Broker;
use crate::codec::{Properties, QoS};
use crate::message::{now_ms, Message};

/// Events waiting for the `$SYS` task at most; beyond, they are dropped and counted
/// (see [`SysQueue`]).
const QUEUE_MAX: usize = 4096;

/// Whether `topic` is the broker's own: `$SYS` or below it.
pub fn is_sys_topic(topic: &[u8]) -> bool {
    topic == b"$SYS" || topic.starts_with(b"$SYS/")
}

/// A `$SYS` message for the task to publish: the topic below `$SYS/brokers/<node>/`.
#[derive(Debug)]
pub struct SysEvent {
    pub suffix: String,
    pub payload: Bytes,
    pub retain: bool,
}

/// The sending side hooks and monitors use: never blocks, drops (counted, logged at
/// most every 10 s) when the task is behind.
#[derive(Clone, Debug)]
pub struct SysQueue {
    tx: mpsc::Sender<SysEvent>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl SysQueue {
    pub fn send(&self, event: SysEvent) {
        // Closed: the node is stopping and the task has ended; nothing to publish to.
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(event) {
            let n = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            static FULL: crate::logging::Throttle = crate::logging::Throttle::new();
            if let Some(unlogged) = FULL.ready(now_ms(), 10_000) {
                tracing::warn!(
                    dropped = n + 1,
                    unlogged,
                    "$SYS event queue full; event dropped"
                );
            }
        }
    }
}

/// Publish `$SYS/brokers/<node>/<suffix>`.
pub fn publish(broker: &Arc<Broker>, suffix: &str, payload: impl Into<Bytes>, retain: bool) {
    let topic = format!("$SYS/brokers/{}/{suffix}", broker.config.node.name);
    publish_topic(broker, topic, payload.into(), retain);
}

fn publish_topic(broker: &Arc<Broker>, topic: String, payload: Bytes, retain: bool) {
    let msg = Message {
        topic: Bytes::from(topic),
        payload,
        qos: QoS::AtMostOnce,
        retain,
        from: Arc::from(""),
        publish_ms: now_ms(),
        expiry_ms: 0,
        properties: Properties::default(),
    };
    broker.publish(msg, Vec::new(), Box::new(|_| {}));
}

/// The retained messages of a starting node: `$SYS/brokers`, version, sysdescr.
fn publish_at_start(broker: &Arc<Broker>) {
    let info = crate::query::broker_info(broker);
    // One node until the cluster exists: the list is this node.
    publish_topic(
        broker,
        "$SYS/brokers".into(),
        Bytes::from(info.node.clone()),
        true,
    );
    publish(broker, "version", info.version, true);
    publish(broker, "sysdescr", info.sysdescr, true);
}

fn publish_heartbeat(broker: &Arc<Broker>) {
    let uptime = text::uptime(broker.started_at.elapsed().as_secs());
    publish(broker, "uptime", uptime, false);
    publish(broker, "datetime", text::datetime(now_ms()), false);
}

fn publish_figures(broker: &Arc<Broker>) {
    for (name, value) in figures::stats(broker) {
        publish(broker, &format!("stats/{name}"), value.to_string(), false);
    }
    for (name, value) in figures::metrics(broker) {
        publish(broker, &format!("metrics/{name}"), value.to_string(), false);
    }
}

/// An interval timer, or one that never fires for a zero period (turned off).
fn every(period: Duration) -> Option<tokio::time::Interval> {
    (!period.is_zero()).then(|| {
        let mut t = tokio::time::interval(period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Register the `$SYS` hooks and start the task that publishes everything; it ends
/// at shutdown. Also starts the monitors (alarms, sysmon).
pub fn start(
    broker: &Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<SysEvent>(QUEUE_MAX);
    let queue = SysQueue {
        tx,
        dropped: Arc::default(),
    };
    client_events::register(broker, queue.clone());
    let monitors = alarms::start(broker, queue.clone(), shutdown.clone());
    let sysmon = sysmon::start(broker, queue, shutdown.clone());
    let broker = broker.clone();
    tokio::spawn(async move {
        publish_at_start(&broker);
        let sys = &broker.config.sys;
        let mut heartbeat = every(sys.sys_heartbeat);
        let mut interval = every(sys.sys_interval);
        loop {
            tokio::select! {
                _ = tick(&mut heartbeat) => publish_heartbeat(&broker),
                _ = tick(&mut interval) => publish_figures(&broker),
                Some(ev) = rx.recv() => publish(&broker, &ev.suffix, ev.payload, ev.retain),
                _ = shutdown.changed() => break,
            }
        }
        client_events::unregister(&broker);
        let _ = monitors.await;
        let _ = sysmon.await;
    })
}
