//! `broker.sys_*` ($SYS publishing), `sysmon.*`, `os_mon.*` and `vm_mon.*` (alarm and
//! system-monitor thresholds), with EMQX 4's names and defaults. What each means in
//! Quay is in README ("$SYS topics", "Alarms and sysmon").

use std::time::Duration;

use super::parse::Entry;
use super::values;
use super::ConfigError;

pub(super) const BROKER_KEYS: &[&str] = &["sys_interval", "sys_heartbeat"];
pub(super) const SYSMON_KEYS: &[&str] = &[
    "long_gc",
    "long_schedule",
    "large_heap",
    "busy_port",
    "busy_dist_port",
];
pub(super) const OS_MON_KEYS: &[&str] = &[
    "cpu_check_interval",
    "cpu_high_watermark",
    "cpu_low_watermark",
    "mem_check_interval",
    "sysmem_high_watermark",
    "procmem_high_watermark",
    "disk_check_interval",
    "disk_high_watermark",
];
pub(super) const VM_MON_KEYS: &[&str] = &[
    "check_interval",
    "process_high_watermark",
    "process_low_watermark",
];

/// `$SYS` publishing and the monitors that raise alarms and sysmon events.
#[derive(Debug, Clone, PartialEq)]
pub struct SysConfig {
    /// `broker.sys_interval`: stats and metrics; zero turns them off.
    pub sys_interval: Duration,
    /// `broker.sys_heartbeat`: uptime and datetime; zero turns them off.
    pub sys_heartbeat: Duration,
    pub sysmon: SysmonConfig,
    pub os_mon: OsMonConfig,
    pub vm_mon: VmMonConfig,
}

/// `sysmon.*`: events published to `$SYS/brokers/<node>/sysmon/*`.
#[derive(Debug, Clone, PartialEq)]
pub struct SysmonConfig {
    /// A RocksDB write stall or compaction pause longer than this; zero: off.
    pub long_gc: Duration,
    /// A storage batch (group commit) taking longer than this; zero: off.
    pub long_schedule: Duration,
    /// Process RSS above this many bytes; zero: off.
    pub large_heap: u64,
    /// Report connections whose send buffer stays full.
    pub busy_port: bool,
    /// Report node-to-node links that back up (none until the cluster exists).
    pub busy_dist_port: bool,
}

/// `os_mon.*`: the host. Watermarks are fractions (0.8 for `80%`).
#[derive(Debug, Clone, PartialEq)]
pub struct OsMonConfig {
    pub cpu_check_interval: Duration,
    pub cpu_high_watermark: f64,
    pub cpu_low_watermark: f64,
    pub mem_check_interval: Duration,
    pub sysmem_high_watermark: f64,
    pub procmem_high_watermark: f64,
    /// Quay's: the file system holding `node.data_dir`.
    pub disk_check_interval: Duration,
    pub disk_high_watermark: f64,
}

/// `vm_mon.*`: the node. EMQX's processes are Quay's connections: the watermarks are
/// fractions of the connection ceiling (`src/listener/ceiling.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct VmMonConfig {
    pub check_interval: Duration,
    pub process_high_watermark: f64,
    pub process_low_watermark: f64,
}

impl Default for SysConfig {
    fn default() -> SysConfig {
        SysConfig {
            sys_interval: Duration::from_secs(60),
            sys_heartbeat: Duration::from_secs(30),
            sysmon: SysmonConfig {
                long_gc: Duration::ZERO,
                long_schedule: Duration::from_millis(240),
                large_heap: 2 * 1024 * 1024 * 1024,
                busy_port: false,
                busy_dist_port: true,
            },
            os_mon: OsMonConfig {
                cpu_check_interval: Duration::from_secs(60),
                cpu_high_watermark: 0.80,
                cpu_low_watermark: 0.60,
                mem_check_interval: Duration::from_secs(60),
                sysmem_high_watermark: 0.70,
                procmem_high_watermark: 0.05,
                disk_check_interval: Duration::from_secs(60),
                disk_high_watermark: 0.90,
            },
            vm_mon: VmMonConfig {
                check_interval: Duration::from_secs(30),
                process_high_watermark: 0.80,
                process_low_watermark: 0.60,
            },
        }
    }
}

/// `80%` (or `0.8`) as a fraction in 0..=1.
fn percent(text: &str) -> Result<f64, values::Expected> {
    let expected = || "a percentage like 80%".to_string();
    let value = match text.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map_err(|_| expected())? / 100.0,
        None => text.parse::<f64>().map_err(|_| expected())?,
    };
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err("a percentage from 0% to 100%".to_string())
    }
}

/// A check interval: at least 1s, so no monitor spins.
fn interval(text: &str) -> Result<Duration, values::Expected> {
    let d = values::duration(text)?;
    if d < Duration::from_secs(1) {
        return Err("an interval of at least 1s".to_string());
    }
    Ok(d)
}

impl SysConfig {
    /// Apply `<section>.<field>`; `Ok(false)` for a field the section does not have.
    pub(super) fn apply(
        &mut self,
        section: &str,
        field: &str,
        entry: &Entry,
    ) -> Result<bool, ConfigError> {
        let (sysmon, os, vm) = (&mut self.sysmon, &mut self.os_mon, &mut self.vm_mon);
        match (section, field) {
            ("broker", "sys_interval") => self.sys_interval = entry.read(values::duration)?,
            ("broker", "sys_heartbeat") => self.sys_heartbeat = entry.read(values::duration)?,
            ("sysmon", "long_gc") => sysmon.long_gc = entry.read(values::duration)?,
            ("sysmon", "long_schedule") => sysmon.long_schedule = entry.read(values::duration)?,
            ("sysmon", "large_heap") => sysmon.large_heap = entry.read(values::size)?,
            ("sysmon", "busy_port") => sysmon.busy_port = entry.read(values::boolean)?,
            ("sysmon", "busy_dist_port") => sysmon.busy_dist_port = entry.read(values::boolean)?,
            ("os_mon", "cpu_check_interval") => os.cpu_check_interval = entry.read(interval)?,
            ("os_mon", "cpu_high_watermark") => os.cpu_high_watermark = entry.read(percent)?,
            ("os_mon", "cpu_low_watermark") => os.cpu_low_watermark = entry.read(percent)?,
            ("os_mon", "mem_check_interval") => os.mem_check_interval = entry.read(interval)?,
            ("os_mon", "sysmem_high_watermark") => {
                os.sysmem_high_watermark = entry.read(percent)?
            }
            ("os_mon", "procmem_high_watermark") => {
                os.procmem_high_watermark = entry.read(percent)?
            }
            ("os_mon", "disk_check_interval") => os.disk_check_interval = entry.read(interval)?,
            ("os_mon", "disk_high_watermark") => os.disk_high_watermark = entry.read(percent)?,
            ("vm_mon", "check_interval") => vm.check_interval = entry.read(interval)?,
            ("vm_mon", "process_high_watermark") => {
                vm.process_high_watermark = entry.read(percent)?
            }
            ("vm_mon", "process_low_watermark") => {
                vm.process_low_watermark = entry.read(percent)?
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::percent;

    #[test]
    fn percentages_read_as_fractions() {
        assert_eq!(percent("80%"), Ok(0.8));
        assert_eq!(percent("0%"), Ok(0.0));
        assert_eq!(percent("0.5"), Ok(0.5));
        assert!(percent("120%").is_err());
        assert!(percent("high").is_err());
    }
}
