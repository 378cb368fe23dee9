//! `restart`: how long a broker holding a deep offline queue takes to come back. The
//! runner script drives three steps around a broker stop and start:
//! `restart-fill` queues messages to an offline persistent session (as `drain` does),
//! the script stops the broker gracefully and starts it again, `restart-wait` measures
//! from the new process's start until its listener accepts a TCP connection and until
//! it answers a CONNECT, and `restart-verify` drains the queue to prove nothing was lost.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::net::TcpStream;

use super::drain::{drain, fill, Queue};
use super::Target;
use crate::client::{ConnectOptions, MqttConn};
use crate::measure::{Better, Figure};
use crate::proc::process_rss_kib;

const QUEUE: Queue<'static> = Queue {
    client_id: "bench-restart-sub",
    topic: "bench/restart",
};
/// How often a connection is tried while the broker starts.
const POLL: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, clap::Args)]
pub struct RestartFillArgs {
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 16)]
    pub payload: usize,
    #[arg(long, default_value_t = 256)]
    pub window: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RestartWaitArgs {
    /// When the broker process was started, in nanoseconds since the Unix epoch
    /// (`date +%s%N` just before starting it).
    #[arg(long)]
    pub since_unix_ns: u128,
    /// How long the graceful stop took, measured by the script, to report with the rest.
    #[arg(long)]
    pub shutdown_ms: Option<f64>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RestartVerifyArgs {
    /// Must match what `restart-fill` queued.
    #[arg(long, default_value_t = 1_000_000)]
    pub messages: u64,
}

pub async fn fill_queue(target: &Target, args: &RestartFillArgs) -> Result<Vec<Figure>> {
    fill(target, &QUEUE, args.messages, args.payload, args.window).await
}

pub async fn wait_restarted(target: &Target, args: &RestartWaitArgs) -> Result<Vec<Figure>> {
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let already = Duration::from_nanos(now_ns.saturating_sub(args.since_unix_ns) as u64);
    let limit = target.time_limit.saturating_sub(already);
    let listening = already + wait_accept(target.addr, limit).await?;
    let connect_limit = target.time_limit.saturating_sub(listening);
    let started = Instant::now();
    let probe = super::bounded(
        connect_limit,
        MqttConn::connect(target.addr, &ConnectOptions::clean("bench-restart-probe")),
    )
    .await
    .context("first CONNECT after the restart")?;
    let answering = listening + started.elapsed();
    probe.disconnect().await?;
    let rss = match target.broker_pid {
        Some(pid) => format!(", broker RSS {} KiB", process_rss_kib(pid)?),
        None => String::new(),
    };
    let mut figures = vec![
        Figure::new(
            "listening",
            listening.as_secs_f64() * 1e3,
            "ms",
            Better::Lower,
        )
        .with_note(format!("process start to TCP accept{rss}")),
        Figure::new(
            "first connack",
            answering.as_secs_f64() * 1e3,
            "ms",
            Better::Lower,
        )
        .with_note("process start to CONNACK"),
    ];
    if let Some(ms) = args.shutdown_ms {
        figures.push(
            Figure::new("graceful stop", ms, "ms", Better::Lower).with_note("SIGTERM to exit"),
        );
    }
    Ok(figures)
}

pub async fn verify(target: &Target, args: &RestartVerifyArgs) -> Result<Vec<Figure>> {
    drain(target, &QUEUE, args.messages).await
}

/// Time until a TCP connection to `addr` succeeds, trying every millisecond.
pub async fn wait_accept(addr: SocketAddr, limit: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(started.elapsed());
        }
        if started.elapsed() >= limit {
            bail!("{addr} did not accept a connection within {limit:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}
