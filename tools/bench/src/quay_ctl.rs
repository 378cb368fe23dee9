//! Quay's own counters (`emqx_ctl metrics`), read after an open-loop run so the report
//! can say where the broker itself counted what the subscribers never saw
//! (`delivery.dropped.queue_full`).
//!
//! Goes through the `emqx_ctl` binary, as an operator would, not through the broker's
//! library: the command line is the stable surface. Reads only; a failure to read is
//! reported by the caller as a note, never as a failed run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::Command;

/// How long `emqx_ctl` may take to answer.
const CTL_LIMIT: Duration = Duration::from_secs(15);

/// How to reach the Quay node under test with `emqx_ctl`.
#[derive(Debug, Clone)]
pub struct QuayCtl {
    /// The `emqx_ctl` binary.
    pub program: PathBuf,
    /// The config file the node was started with (`emqx_ctl --config`), if not the default.
    pub config: Option<PathBuf>,
    /// The node's data directory: `emqx_ctl` finds the node's socket there, and the
    /// runner starts each Quay with its own (`EMQX_NODE__DATA_DIR`).
    pub data_dir: PathBuf,
}

impl QuayCtl {
    /// Every counter `emqx_ctl metrics` prints, by EMQX name.
    pub async fn metrics(&self) -> Result<BTreeMap<String, u64>> {
        let mut command = Command::new(&self.program);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        command
            .arg("metrics")
            .env("EMQX_NODE__DATA_DIR", &self.data_dir)
            .kill_on_drop(true);
        let output = match tokio::time::timeout(CTL_LIMIT, command.output()).await {
            Ok(output) => output.with_context(|| format!("running {}", self.program.display()))?,
            Err(_) => bail!(
                "{} metrics gave no answer within {CTL_LIMIT:?}",
                self.program.display()
            ),
        };
        if !output.status.success() {
            bail!(
                "{} metrics failed ({}): {}",
                self.program.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(parse_metrics(&String::from_utf8_lossy(&output.stdout)))
    }
}

/// `name   : value` lines; anything else (a header, a value that is not a count) is skipped.
pub fn parse_metrics(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_metrics;

    #[test]
    fn reads_emqx_ctl_metrics_lines() {
        let text = "messages.received                       : 600000\n\
                    delivery.dropped.queue_full             : 520000\n\
                    garbage line\n\
                    odd.value : n/a\n";
        let m = parse_metrics(text);
        assert_eq!(m.get("messages.received"), Some(&600_000));
        assert_eq!(m.get("delivery.dropped.queue_full"), Some(&520_000));
        assert_eq!(m.len(), 2);
    }
}
