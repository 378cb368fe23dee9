//! Logging set-up from `log.*` (tracing-subscriber). `RUST_LOG` overrides the level.

use std::fs::OpenOptions;
use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogTo};

/// EMQX level names to tracing levels.
fn level(name: &str) -> &'static str {
    match name {
        "debug" => "debug",
        "info" | "notice" => "info",
        "warning" => "warn",
        _ => "error",
    }
}

pub fn init(config: &LogConfig) -> std::io::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{},rocksdb=warn", level(config.level.as_str())))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let to_file = || -> std::io::Result<Mutex<std::fs::File>> {
        std::fs::create_dir_all(&config.dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(config.dir.join(&config.file))?;
        Ok(Mutex::new(file))
    };
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match config.to {
        LogTo::Console => builder.with_writer(std::io::stderr).try_init(),
        LogTo::File => builder.with_ansi(false).with_writer(to_file()?).try_init(),
        LogTo::Both => builder
            .with_ansi(false)
            .with_writer(std::io::stderr.and(to_file()?))
            .try_init(),
    };
    Ok(())
}

/// At most one log line per period for a condition that can repeat at message rate
/// (a full backlog): `ready` says whether this occurrence should be logged, and how
/// many were left unlogged since the last one.
#[derive(Debug, Default)]
pub struct Throttle {
    last_ms: std::sync::atomic::AtomicU64,
    skipped: std::sync::atomic::AtomicU64,
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle {
            last_ms: std::sync::atomic::AtomicU64::new(0),
            skipped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Some(occurrences not logged before this one) when this one should be logged.
    pub fn ready(&self, now_ms: u64, period_ms: u64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.last_ms.load(Relaxed);
        if now_ms.saturating_sub(last) >= period_ms
            && self
                .last_ms
                .compare_exchange(last, now_ms, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.skipped.swap(0, Relaxed));
        }
        self.skipped.fetch_add(1, Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    #[test]
    fn a_throttle_logs_once_per_period_and_counts_the_rest() {
        let t = Throttle::new();
        assert_eq!(t.ready(10_000, 10_000), Some(0));
        assert_eq!(t.ready(10_001, 10_000), None);
        assert_eq!(t.ready(15_000, 10_000), None);
        assert_eq!(t.ready(20_000, 10_000), Some(2));
    }
}
