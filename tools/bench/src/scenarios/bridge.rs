//! `bridge`: forwarding through a bridge to a remote Mosquitto (tools/bench/bridge.sh).
//!
//! `bridge-forward`: QoS 1 publishers with a window on the bridging broker (Quay with
//! its durable cache, or a Mosquitto with a bridge doing the same work from memory);
//! one subscriber on the remote counts each message once (payloads are numbered). The
//! figure is messages per second acknowledged locally and arrived remotely.
//!
//! `bridge-fill` publishes into the bridge's cache while the remote is away;
//! `bridge-drain` subscribes on the remote (the script then starts the bridge) and
//! times the replay until every message arrived.

use std::net::SocketAddr;

use anyhow::Result;
use quay::codec::QoS;
use tokio::task::JoinSet;

use super::{ending_note, progress, share, Target};
use crate::client::{publish_template, ConnectOptions, MqttConn};
use crate::load::{publish_acked, spawn_reporting, subscribe_loop, Counting};
use crate::measure::{Better, Figure, Interval};

#[derive(Debug, Clone, clap::Args)]
pub struct BridgeForwardArgs {
    /// The remote broker's port (loopback).
    #[arg(long)]
    pub remote_port: u16,
    #[arg(long, default_value_t = 4)]
    pub publishers: u64,
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    #[arg(long, default_value_t = 128)]
    pub window: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BridgeFillArgs {
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    #[arg(long, default_value_t = 4)]
    pub publishers: u64,
    #[arg(long, default_value_t = 128)]
    pub window: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BridgeDrainArgs {
    #[arg(long)]
    pub remote_port: u16,
    /// Must match what `bridge-fill` published.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// A file the script waits for before starting the bridge: the subscriber is ready.
    #[arg(long)]
    pub ready_file: std::path::PathBuf,
}

async fn remote_subscriber(target: &Target, port: u16, name: &str) -> Result<MqttConn> {
    let remote = SocketAddr::new(target.addr.ip(), port);
    let mut sub =
        MqttConn::connect(remote, &ConnectOptions::clean(format!("{name}-remote-sub"))).await?;
    sub.subscribe(&["fwd/#".to_string()], QoS::AtLeastOnce)
        .await?;
    Ok(sub)
}

async fn publish(
    target: &Target,
    name: &str,
    tasks: &mut JoinSet<()>,
    publishers: u64,
    messages: u64,
    payload: usize,
    window: u64,
) -> Result<std::sync::Arc<crate::measure::Progress>> {
    let acked = progress(messages);
    let mut first_seq = 0;
    for i in 0..publishers {
        let conn = target
            .connect(&ConnectOptions::clean(format!("{name}-pub-{i}")))
            .await?;
        let count = share(messages, publishers, i);
        let template = publish_template(&format!("sensor/bench/{i}"), QoS::AtLeastOnce, payload);
        let a = acked.clone();
        let window = window.max(1);
        spawn_reporting(tasks, &acked, async move {
            publish_acked(conn, template, first_seq, count, window, a)
                .await
                .map(drop)
        });
        first_seq += count;
    }
    Ok(acked)
}

pub async fn forward(target: &Target, args: &BridgeForwardArgs) -> Result<Vec<Figure>> {
    let delivered = progress(args.messages);
    let mut tasks = JoinSet::new();
    let sub = remote_subscriber(target, args.remote_port, "bench-bridge").await?;
    spawn_reporting(
        &mut tasks,
        &delivered,
        subscribe_loop(sub, Counting::Unique(args.messages), delivered.clone()),
    );
    let interval = Interval::start(target.broker_pid)?;
    let acked = publish(
        target,
        "bench-bridge",
        &mut tasks,
        args.publishers,
        args.messages,
        args.payload,
        args.window,
    )
    .await?;
    let deadline = target.deadline();
    let acked_ending = acked.wait(deadline, target.stall).await?;
    let delivered_ending = delivered.wait(deadline, target.stall).await?;
    let elapsed = interval.stop_at(delivered.last_progress().max(acked.last_progress()))?;
    let done = acked.count().min(delivered.count());
    let note = format!(
        "publishers {}, remote subscriber {}; {} publishers, window {}, acked {}, arrived {} (+{} repeats), {:.2}s",
        ending_note(acked_ending),
        ending_note(delivered_ending),
        args.publishers,
        args.window,
        acked.count(),
        delivered.count(),
        delivered.duplicates(),
        elapsed.wall.as_secs_f64()
    );
    Ok(vec![
        Figure::new("throughput", elapsed.rate(done), "msg/s", Better::Higher)
            .with_cpu(&elapsed, done)
            .with_note(note),
        Figure::new(
            "lost",
            (args.messages - delivered.count()) as f64,
            "msgs",
            Better::Exact,
        ),
    ])
}

pub async fn fill(target: &Target, args: &BridgeFillArgs) -> Result<Vec<Figure>> {
    let mut tasks = JoinSet::new();
    let interval = Interval::start(target.broker_pid)?;
    let acked = publish(
        target,
        "bench-bridge-fill",
        &mut tasks,
        args.publishers,
        args.messages,
        args.payload,
        args.window,
    )
    .await?;
    let ending = acked.wait(target.deadline(), target.stall).await?;
    let elapsed = interval.stop_at(acked.last_progress())?;
    Ok(vec![Figure::new(
        "cache fill",
        elapsed.rate(acked.count()),
        "msg/s",
        Better::Higher,
    )
    .with_cpu(&elapsed, acked.count())
    .with_note(format!(
        "{} of {} acknowledged into the cache ({}), remote away",
        acked.count(),
        args.messages,
        ending_note(ending)
    ))])
}

pub async fn drain(target: &Target, args: &BridgeDrainArgs) -> Result<Vec<Figure>> {
    let delivered = progress(args.messages);
    let mut tasks = JoinSet::new();
    let sub = remote_subscriber(target, args.remote_port, "bench-bridge-drain").await?;
    spawn_reporting(
        &mut tasks,
        &delivered,
        subscribe_loop(sub, Counting::Unique(args.messages), delivered.clone()),
    );
    let interval = Interval::start(target.broker_pid)?;
    std::fs::write(&args.ready_file, b"ready\n")?;
    let ending = delivered.wait(target.deadline(), target.stall).await?;
    let elapsed = interval.stop_at(delivered.last_progress())?;
    Ok(vec![
        Figure::new(
            "replay",
            elapsed.rate(delivered.count()),
            "msg/s",
            Better::Higher,
        )
        .with_cpu(&elapsed, delivered.count())
        .with_note(format!(
            "{} of {} arrived ({}), +{} repeats, {:.2}s from the bridge's start",
            delivered.count(),
            args.messages,
            ending_note(ending),
            delivered.duplicates(),
            elapsed.wall.as_secs_f64()
        )),
        Figure::new(
            "replay lost",
            (args.messages - delivered.count()) as f64,
            "msgs",
            Better::Exact,
        ),
    ])
}
