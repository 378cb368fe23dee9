//! `idle`: open many connections that CONNECT and then say nothing (keep-alive 0), and
//! read the broker's resident memory before and after they have been quiet for
//! `--settle-s`. The figures are KiB of broker memory per connection and how fast the
//! broker accepted the connections.
//!
//! The generator holds every socket, and so does the broker: with a per-process limit
//! of 20,000 open files, 10,000 is the most either side can afford with headroom.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::task::JoinSet;

use super::{bounded, Target};
use crate::client::{ConnectOptions, MqttConn};
use crate::measure::{Better, Figure, Interval};
use crate::proc::process_rss_kib;

/// Connections being set up at once.
const CONCURRENT_CONNECTS: usize = 200;
/// The most connections this scenario will open (see the module docs).
const MAX_CONNECTIONS: u64 = 10_000;

#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    #[arg(long, default_value_t = 10_000)]
    pub connections: u64,
    /// Time the broker gets to settle before memory is read again: long enough for
    /// Quay's idle connections to hibernate (`zone.external.hibernate_after`, 5 s by
    /// default) and for freed memory to go back to the OS.
    #[arg(long, default_value_t = 10)]
    pub settle_s: u64,
}

pub async fn run(target: &Target, args: &IdleArgs) -> Result<Vec<Figure>> {
    let Some(pid) = target.broker_pid else {
        bail!("idle needs --broker-pid to read the broker's memory");
    };
    if args.connections == 0 || args.connections > MAX_CONNECTIONS {
        bail!(
            "--connections must be 1..={MAX_CONNECTIONS} (open-file limits), got {}",
            args.connections
        );
    }
    let rss_before = process_rss_kib(pid)?;
    let interval = Interval::start(target.broker_pid)?;
    let mut held = Vec::with_capacity(args.connections as usize);
    let mut tasks = JoinSet::new();
    let mut next = 0u64;
    let deadline = target.deadline();
    while (held.len() as u64) < args.connections {
        while tasks.len() < CONCURRENT_CONNECTS && next < args.connections {
            let (addr, id) = (target.addr, format!("bench-idle-{next}"));
            tasks.spawn(async move { MqttConn::connect(addr, &ConnectOptions::clean(id)).await });
            next += 1;
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let joined = bounded(left, async {
            tasks.join_next().await.context("no connect task left")
        })
        .await
        .with_context(|| format!("after {} connections", held.len()))?;
        let conn = joined.context("connect task panicked")??;
        held.push(conn.into_stream());
    }
    let elapsed = interval.stop_at(std::time::Instant::now())?;
    tokio::time::sleep(Duration::from_secs(args.settle_s)).await;
    let rss_after = process_rss_kib(pid)?;
    let n = args.connections;
    let per_connection = rss_after.saturating_sub(rss_before) as f64 / n as f64;
    let note = format!("{n} connections, broker RSS {rss_before} KiB -> {rss_after} KiB");
    drop(held);
    Ok(vec![
        Figure::new("memory", per_connection, "KiB/conn", Better::Lower).with_note(note),
        Figure::new("connect rate", elapsed.rate(n), "conn/s", Better::Higher)
            .with_cpu(&elapsed, n),
    ])
}
