//! System monitor events, `$SYS/brokers/<node>/sysmon/<name>` (EMQX's `sysmon.*`),
//! with what each means in a Rust node instead of the Erlang VM:
//!
//! | event | Quay publishes it when | threshold |
//! |---|---|---|
//! | `long_schedule` | a runtime worker was held: a 100 ms timer fired later than the threshold (a task poll that blocked a worker) | `sysmon.long_schedule` (240ms; 0: off) |
//! | `large_heap` | the node's RSS went above the threshold (once per crossing) | `sysmon.large_heap` (2GB; 0: off) |
//! | `long_gc` | RocksDB stalled or slowed writes (compaction behind) for longer than the threshold | `sysmon.long_gc` (0: off) |
//! | `busy_port` | a connection was closed because its client stopped reading while its send buffer stayed full (`zone.stall_timeout`) | `sysmon.busy_port` (false: off) |
//! | `busy_dist_port` | a node-to-node link backed up: never yet (one node) | `sysmon.busy_dist_port` |
//!
//! Payload: JSON `{"name", "message", "value", "threshold", "ts"}`. `long_schedule`
//! is published at most once per 10 s (`value`: the worst delay in ms since the last
//! one). Everything is sampled on this module's own task.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::{SysEvent, SysQueue};
use crate::broker::Broker;
use crate::hooks::{DisconnectReason, Hook, HookPoint};
use crate::message::now_ms;

const HOOK_NAME: &str = "sysmon";
/// The watchdog's timer; its lateness is the scheduling delay.
const PROBE: Duration = Duration::from_millis(100);
const LONG_SCHEDULE_EVERY_MS: u64 = 10_000;

#[derive(Debug, Serialize)]
pub struct SysmonEvent {
    pub name: &'static str,
    pub message: String,
    pub value: u64,
    pub threshold: u64,
    pub ts: u64,
}

fn send(queue: &SysQueue, ev: SysmonEvent) {
    tracing::warn!(event = ev.name, message = %ev.message, "sysmon");
    queue.send(SysEvent {
        suffix: format!("sysmon/{}", ev.name),
        payload: serde_json::to_string(&ev).unwrap_or_default().into(),
        retain: false,
    });
}

pub fn start(
    broker: &Arc<Broker>,
    queue: SysQueue,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let cfg = broker.config.sys.sysmon.clone();
    if cfg.busy_port {
        let q = queue.clone();
        let hook = Hook::disconnected(move |info, reason, at_ms| {
            if reason == DisconnectReason::Stalled {
                send(
                    &q,
                    SysmonEvent {
                        name: "busy_port",
                        message: format!(
                            "client {} stopped reading with its send buffer full",
                            info.client_id
                        ),
                        value: 1,
                        threshold: 0,
                        ts: at_ms,
                    },
                );
            }
        });
        if let Err(e) = broker.hooks.add(HOOK_NAME, -100, hook) {
            tracing::error!(error = %e, "cannot register the sysmon hook");
        }
    }
    let broker = broker.clone();
    tokio::spawn(async move {
        let long_schedule_ms = cfg.long_schedule.as_millis() as u64;
        let long_gc = cfg.long_gc;
        let mut worst_delay_ms = 0;
        let mut last_schedule_event = 0u64;
        let mut above_heap = false;
        let mut stall_since: Option<Instant> = None;
        let mut stall_reported = false;
        let mut last_second = Instant::now();
        loop {
            let before = Instant::now();
            tokio::select! {
                _ = tokio::time::sleep(PROBE) => {}
                _ = shutdown.changed() => break,
            }
            let now = Instant::now();
            let late_ms = now.duration_since(before).saturating_sub(PROBE).as_millis() as u64;
            let ms = now_ms();
            if long_schedule_ms > 0 && late_ms >= long_schedule_ms {
                worst_delay_ms = worst_delay_ms.max(late_ms);
            }
            if worst_delay_ms > 0
                && ms.saturating_sub(last_schedule_event) >= LONG_SCHEDULE_EVERY_MS
            {
                last_schedule_event = ms;
                send(
                    &queue,
                    SysmonEvent {
                        name: "long_schedule",
                        message: format!("a runtime worker was held for {worst_delay_ms} ms"),
                        value: worst_delay_ms,
                        threshold: long_schedule_ms,
                        ts: ms,
                    },
                );
                worst_delay_ms = 0;
            }
            // The rest once a second.
            if now.duration_since(last_second) < Duration::from_secs(1) {
                continue;
            }
            last_second = now;
            if cfg.large_heap > 0 {
                if let Some(rss) = super::alarms::process_rss() {
                    let above = rss > cfg.large_heap;
                    if above && !above_heap {
                        send(
                            &queue,
                            SysmonEvent {
                                name: "large_heap",
                                message: format!("RSS {rss} bytes is above sysmon.large_heap"),
                                value: rss,
                                threshold: cfg.large_heap,
                                ts: ms,
                            },
                        );
                    }
                    above_heap = above;
                }
            }
            if !long_gc.is_zero() {
                if broker.store.write_stalled() {
                    let since = *stall_since.get_or_insert(now);
                    let lasted = now.duration_since(since);
                    if lasted >= long_gc && !stall_reported {
                        stall_reported = true;
                        send(
                            &queue,
                            SysmonEvent {
                                name: "long_gc",
                                message: "RocksDB is stalling writes (compaction behind)".into(),
                                value: lasted.as_millis() as u64,
                                threshold: long_gc.as_millis() as u64,
                                ts: ms,
                            },
                        );
                    }
                } else {
                    stall_since = None;
                    stall_reported = false;
                }
            }
        }
        broker
            .hooks
            .remove(HookPoint::ClientDisconnected, HOOK_NAME);
    })
}
