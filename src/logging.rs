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
