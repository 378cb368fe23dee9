//! What the kernel says about the broker process and about this generator: CPU time
//! from `/proc/<pid>/stat` and `getrusage`, resident memory from `/proc/<pid>/status`.
//!
//! Reads only; never signals or otherwise touches the broker.

use std::time::Duration;

use anyhow::{bail, Context, Result};

/// CPU time (user + system) of a whole process, all threads, including ones that exited.
/// From the process's CPU-time clock (nanoseconds) where the kernel lets us read it;
/// else from `/proc/<pid>/stat`, in clock ticks (10 ms: ±5% of a 0.2 s drain).
pub fn process_cpu(pid: u32) -> Result<Duration> {
    match process_clock(pid) {
        Some(cpu) => Ok(cpu),
        None => process_cpu_ticks(pid),
    }
}

/// `CLOCK_PROCESS_CPUTIME_ID` of another process: `clock_getcpuclockid`.
fn process_clock(pid: u32) -> Option<Duration> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: both calls only write into the locals we pass.
    let ok = unsafe {
        libc::clock_getcpuclockid(pid, &mut clock) == 0 && libc::clock_gettime(clock, &mut ts) == 0
    };
    if !ok {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
}

/// `process_cpu` from `/proc/<pid>/stat` (utime + stime, in clock ticks).
fn process_cpu_ticks(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let Some(after_name) = text.rfind(')').map(|i| &text[i + 1..]) else {
        bail!("{path}: no ')' after the command name");
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {} is not a number", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(ticks_to_duration(total))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = if per_second > 0 {
        per_second as u64
    } else {
        100
    };
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / per_second)
}

/// Resident set size in KiB (`VmRSS`).
pub fn process_rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{path}: no VmRSS line"))
}

/// CPU time (user + system) this generator process has used so far.
pub fn self_cpu() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU used by the broker and by the generator between `start` and `stop`.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    broker: Option<Duration>,
    generator: Duration,
}

impl CpuSample {
    /// `broker_pid` is optional so the tool can run against a broker it cannot see.
    pub fn take(broker_pid: Option<u32>) -> Result<CpuSample> {
        let broker = broker_pid.map(process_cpu).transpose()?;
        Ok(CpuSample {
            broker,
            generator: self_cpu(),
        })
    }

    /// (broker CPU, generator CPU) used since `earlier`.
    pub fn since(&self, earlier: &CpuSample) -> (Option<Duration>, Duration) {
        let broker = match (self.broker, earlier.broker) {
            (Some(now), Some(then)) => Some(now.saturating_sub(then)),
            _ => None,
        };
        (broker, self.generator.saturating_sub(earlier.generator))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        let mut spin = 0u64;
        for i in 0..20_000_000u64 {
            spin = spin.wrapping_add(i ^ (spin >> 3));
        }
        assert!(spin != 1);
        assert!(process_rss_kib(pid).unwrap() > 0);
        assert!(process_cpu(pid).is_ok());
        // Both sources count the same CPU (the ticks round down to 10 ms).
        let (clock, ticks) = (process_clock(pid).unwrap(), process_cpu_ticks(pid).unwrap());
        assert!(
            clock + Duration::from_millis(50) >= ticks
                && ticks + Duration::from_millis(50) >= clock,
            "{clock:?} vs {ticks:?}"
        );
        assert!(self_cpu() > Duration::ZERO);
    }
}
