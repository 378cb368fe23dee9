//! Logging set-up from `log.*` (tracing-subscriber), with a filter `emqx_ctl log`
//! changes at run time. `RUST_LOG` overrides the start level.

mod control;
mod rotate;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogConfig, LogLevel, LogTo};
pub use control::run_command;
pub use rotate::RotatingFile;

/// EMQX level names to tracing levels.
fn level(name: LogLevel) -> &'static str {
    match name {
        LogLevel::Debug => "debug",
        LogLevel::Info | LogLevel::Notice => "info",
        LogLevel::Warning => "warn",
        _ => "error",
    }
}

fn filter_for(level_name: LogLevel) -> EnvFilter {
    EnvFilter::new(format!("{},rocksdb=warn", level(level_name)))
}

/// What `emqx_ctl log` reads and changes.
struct LogState {
    filter: reload::Handle<EnvFilter, Registry>,
    level: Mutex<LogLevel>,
    to: LogTo,
    file: PathBuf,
}

static STATE: OnceLock<LogState> = OnceLock::new();

pub fn init(config: &LogConfig) -> std::io::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| filter_for(config.level));
    let (filter, handle) = reload::Layer::new(filter);
    let path = config.dir.join(&config.file);
    let to_file = || -> std::io::Result<Mutex<RotatingFile>> {
        std::fs::create_dir_all(&config.dir)?;
        let max = config.rotation.then_some(config.rotation_size);
        Ok(Mutex::new(RotatingFile::open(
            &path,
            max,
            config.rotation_count,
        )?))
    };
    let (writer, ansi) = match config.to {
        LogTo::Console => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
        LogTo::File => (BoxMakeWriter::new(to_file()?), false),
        LogTo::Both => (BoxMakeWriter::new(std::io::stderr.and(to_file()?)), false),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(writer);
    // A second init (tests) is harmless: keep the first subscriber.
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        let _ = STATE.set(LogState {
            filter: handle,
            level: Mutex::new(config.level),
            to: config.to,
            file: path,
        });
    }
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
