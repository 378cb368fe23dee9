//! Alarms: `$SYS/brokers/<node>/alarms/alert` when a condition starts and
//! `alarms/clear` when it ends, each exactly once per episode (EMQX 4's `emqx_alarm`,
//! with `os_mon.*` / `vm_mon.*` thresholds):
//!
//! | alarm | raised when | cleared when |
//! |---|---|---|
//! | `high_cpu_usage` | host CPU busy ≥ `os_mon.cpu_high_watermark` | < `cpu_low_watermark` |
//! | `high_system_memory_usage` | host memory used ≥ `os_mon.sysmem_high_watermark` | below it |
//! | `high_process_memory_usage` | node RSS ≥ `os_mon.procmem_high_watermark` of host memory | below it |
//! | `disk_almost_full` | file system of `node.data_dir` used ≥ `os_mon.disk_high_watermark` | below it |
//! | `too_many_connections` | connections ≥ `vm_mon.process_high_watermark` of the connection ceiling | < `process_low_watermark` |
//!
//! The decisions ([`AlarmBook`]) are pure and unit-tested with made-up samples; the
//! probes read `/proc` and `statvfs` on the monitor's own task, once per check
//! interval, never on a connection's path.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use super::{SysEvent, SysQueue};
use crate::broker::Broker;
use crate::message::now_ms;

/// The payload of `alarms/alert` and `alarms/clear`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alarm {
    pub name: &'static str,
    pub message: String,
    /// Unix ms when it was raised.
    pub activated_at: u64,
    /// Unix ms when it was cleared (only in `alarms/clear`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deactivated_at: Option<u64>,
}

/// What a sample did to an alarm.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Raised(Alarm),
    Cleared(Alarm),
}

/// The alarms active now, and the rule that moves them: raise at or above `high`,
/// clear below `low` (≤ `high`); in between, nothing changes (so a value hovering at
/// the threshold raises once, not at every sample).
#[derive(Debug, Default)]
pub struct AlarmBook {
    active: BTreeMap<&'static str, Alarm>,
}

impl AlarmBook {
    /// One sample `value` (a fraction) of alarm `name`.
    pub fn sample(
        &mut self,
        name: &'static str,
        value: f64,
        high: f64,
        low: f64,
        now_ms: u64,
    ) -> Option<Change> {
        let low = low.min(high);
        match self.active.get(name) {
            None if value >= high => {
                let alarm = Alarm {
                    name,
                    message: format!(
                        "{name}: {:.1}% (threshold {:.1}%)",
                        value * 100.0,
                        high * 100.0
                    ),
                    activated_at: now_ms,
                    deactivated_at: None,
                };
                self.active.insert(name, alarm.clone());
                Some(Change::Raised(alarm))
            }
            Some(_) if value < low => {
                let mut alarm = self.active.remove(name)?;
                alarm.deactivated_at = Some(now_ms);
                Some(Change::Cleared(alarm))
            }
            _ => None,
        }
    }

    pub fn active(&self) -> impl Iterator<Item = &Alarm> {
        self.active.values()
    }
}

/// Host CPU busy fraction between two `/proc/stat` readings.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    pub fn read() -> Option<CpuTimes> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        let v: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
        let total: u64 = v.iter().take(8).sum();
        Some(CpuTimes {
            busy: total.saturating_sub(idle),
            total,
        })
    }

    pub fn busy_since(self, before: CpuTimes) -> f64 {
        let total = self.total.saturating_sub(before.total);
        if total == 0 {
            return 0.0;
        }
        self.busy.saturating_sub(before.busy) as f64 / total as f64
    }
}

/// (total, available) host memory in bytes, from `/proc/meminfo`.
pub fn host_memory() -> Option<(u64, u64)> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

/// This process's resident set in bytes.
pub fn process_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).unwrap_or(4096))
}

/// The used fraction of the file system holding `path` (as `df` counts it).
pub fn disk_used(path: &Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path; `st` is written by statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let total = st.f_blocks as f64;
    let used = (st.f_blocks - st.f_bfree) as f64;
    let usable = used + st.f_bavail as f64;
    (total > 0.0 && usable > 0.0).then(|| used / usable)
}

/// A check that runs every `every`.
struct Due {
    every: Duration,
    next: Instant,
}

impl Due {
    fn new(every: Duration, now: Instant) -> Due {
        Due {
            every,
            next: now + every,
        }
    }

    fn ready(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.every;
        true
    }
}

fn publish(queue: &SysQueue, change: Change) {
    let (what, alarm) = match &change {
        Change::Raised(a) => ("alert", a),
        Change::Cleared(a) => ("clear", a),
    };
    match what {
        "alert" => tracing::warn!(alarm = alarm.name, message = %alarm.message, "alarm raised"),
        _ => tracing::info!(alarm = alarm.name, "alarm cleared"),
    }
    queue.send(SysEvent {
        suffix: format!("alarms/{what}"),
        payload: serde_json::to_string(alarm).unwrap_or_default().into(),
        retain: false,
    });
}

/// Start the monitor task; it samples every second what is due and ends at shutdown.
pub fn start(
    broker: &Arc<Broker>,
    queue: SysQueue,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let broker = broker.clone();
    tokio::spawn(async move {
        let os = broker.config.sys.os_mon.clone();
        let vm = broker.config.sys.vm_mon.clone();
        let data_dir = broker.config.node.data_dir.clone();
        let start = Instant::now();
        // Each first check one interval after start, as EMQX's monitors do.
        let (mut cpu_due, mut mem_due, mut disk_due, mut conn_due) = (
            Due::new(os.cpu_check_interval, start),
            Due::new(os.mem_check_interval, start),
            Due::new(os.disk_check_interval, start),
            Due::new(vm.check_interval, start),
        );
        let mut cpu_before = CpuTimes::read();
        let mut book = AlarmBook::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
            }
            let now = Instant::now();
            let ms = now_ms();
            let mut changes = Vec::new();
            if cpu_due.ready(now) {
                if let (Some(before), Some(after)) = (cpu_before, CpuTimes::read()) {
                    let busy = after.busy_since(before);
                    changes.extend(book.sample(
                        "high_cpu_usage",
                        busy,
                        os.cpu_high_watermark,
                        os.cpu_low_watermark,
                        ms,
                    ));
                }
                cpu_before = CpuTimes::read();
            }
            if mem_due.ready(now) {
                if let Some((total, available)) = host_memory().filter(|(t, _)| *t > 0) {
                    let used = 1.0 - available as f64 / total as f64;
                    let high = os.sysmem_high_watermark;
                    changes.extend(book.sample("high_system_memory_usage", used, high, high, ms));
                    if let Some(rss) = process_rss() {
                        let share = rss as f64 / total as f64;
                        let high = os.procmem_high_watermark;
                        changes.extend(book.sample(
                            "high_process_memory_usage",
                            share,
                            high,
                            high,
                            ms,
                        ));
                    }
                }
            }
            if disk_due.ready(now) {
                if let Some(used) = disk_used(&data_dir) {
                    let high = os.disk_high_watermark;
                    changes.extend(book.sample("disk_almost_full", used, high, high, ms));
                }
            }
            if conn_due.ready(now) {
                let ceiling = crate::listener::ceiling::max_connections();
                if ceiling != usize::MAX && ceiling > 0 {
                    let open = crate::listener::ceiling::open_connections();
                    changes.extend(book.sample(
                        "too_many_connections",
                        open as f64 / ceiling as f64,
                        vm.process_high_watermark,
                        vm.process_low_watermark,
                        ms,
                    ));
                }
            }
            for change in changes {
                publish(&queue, change);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every alarm, forced up and down by its samples: raised once, cleared once.
    #[test]
    fn each_alarm_is_raised_once_and_cleared_once() {
        let alarms = [
            ("high_cpu_usage", 0.8, 0.6),
            ("high_system_memory_usage", 0.7, 0.7),
            ("high_process_memory_usage", 0.05, 0.05),
            ("disk_almost_full", 0.9, 0.9),
            ("too_many_connections", 0.8, 0.6),
        ];
        for (name, high, low) in alarms {
            let mut book = AlarmBook::default();
            let samples = [
                high / 2.0,
                high,
                high + 0.01,
                1.0,
                (high + low) / 2.0,
                high,
                low / 2.0,
                0.0,
            ];
            let mut changes = Vec::new();
            for (t, v) in samples.into_iter().enumerate() {
                changes.extend(book.sample(name, v, high, low, t as u64));
            }
            let names: Vec<_> = changes
                .iter()
                .map(|c| match c {
                    Change::Raised(a) => ("raised", a.name, a.activated_at, a.deactivated_at),
                    Change::Cleared(a) => ("cleared", a.name, a.activated_at, a.deactivated_at),
                })
                .collect();
            // Hovering between low and high (or at high) changes nothing.
            let want = vec![("raised", name, 1, None), ("cleared", name, 1, Some(6))];
            assert_eq!(names, want, "{name}");
            assert_eq!(book.active().count(), 0);
        }
    }

    #[test]
    fn the_payload_has_name_message_and_activated_at() {
        let mut book = AlarmBook::default();
        let Some(Change::Raised(a)) = book.sample("disk_almost_full", 0.95, 0.9, 0.9, 42) else {
            panic!("not raised");
        };
        let json: serde_json::Value = serde_json::to_value(&a).unwrap();
        assert_eq!(json["name"], "disk_almost_full");
        assert_eq!(json["activated_at"], 42);
        assert!(json["message"].as_str().unwrap().contains("95.0%"));
        assert!(json.get("deactivated_at").is_none());
    }

    #[test]
    fn the_probes_read_this_machine() {
        let (total, available) = host_memory().unwrap();
        assert!(total > 0 && available <= total);
        assert!(process_rss().unwrap() > 0);
        let used = disk_used(Path::new("/")).unwrap();
        assert!((0.0..=1.0).contains(&used));
        let a = CpuTimes::read().unwrap();
        let b = CpuTimes::read().unwrap();
        assert!((0.0..=1.0).contains(&b.busy_since(a)));
    }
}
