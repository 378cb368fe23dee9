//! `fanin`: many QoS 0 publishers, one subscriber on a wildcard; the figure is what the
//! subscriber receives per second.

use anyhow::Result;
use quay::codec::QoS;
use tokio::task::JoinSet;

use super::{ending_note, fanin_clients, pacing_note, progress, share, Target};
use crate::client::publish_template;
use crate::load::{publish_qos0, spawn_reporting, subscribe_loop, Counting, Pacing};
use crate::measure::{Better, Figure, Interval};

#[derive(Debug, Clone, clap::Args)]
pub struct FaninArgs {
    #[arg(long, default_value_t = 8)]
    pub publishers: u64,
    /// Messages in all, shared across the publishers.
    #[arg(long, default_value_t = 2_000_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Messages that may be published and not yet delivered (0: publish open-loop,
    /// as fast as the broker reads, and let it queue or shed the excess).
    #[arg(long, default_value_t = 4000)]
    pub max_ahead: u64,
    /// Publishers connect over WebSocket to this port (same host, path /mqtt).
    #[arg(long)]
    pub ws_port: Option<u16>,
}

pub async fn run(target: &Target, args: &FaninArgs) -> Result<Vec<Figure>> {
    let (subscriber, publishers) =
        fanin_clients(target, "bench-fanin", args.publishers, args.ws_port).await?;

    let delivered = progress(args.messages);
    let sent = progress(args.messages);
    let mut tasks = JoinSet::new();
    spawn_reporting(
        &mut tasks,
        &delivered,
        subscribe_loop(subscriber, Counting::All(args.messages), delivered.clone()),
    );
    let pacing = (args.max_ahead > 0).then(|| Pacing {
        delivered: delivered.clone(),
        deliveries_per_message: 1,
        max_ahead: args.max_ahead,
    });
    let interval = Interval::start(target.broker_pid)?;
    let mut first_seq = 0;
    for (i, conn) in publishers.into_iter().enumerate() {
        let count = share(args.messages, args.publishers, i as u64);
        let template = publish_template(&format!("bench/fanin/{i}"), QoS::AtMostOnce, args.payload);
        spawn_reporting(
            &mut tasks,
            &delivered,
            publish_qos0(
                conn,
                template,
                first_seq,
                count,
                sent.clone(),
                pacing.clone(),
            ),
        );
        first_seq += count;
    }
    let ending = target.wait(&delivered).await?;
    let elapsed = interval.stop_at(delivered.last_progress())?;
    let received = delivered.count();
    let pacing_note = pacing_note(args.max_ahead);
    let note = format!(
        "{}, {pacing_note}; sent {}, received {}, lost {}, {:.2}s",
        ending_note(ending),
        sent.count(),
        received,
        args.messages - received,
        elapsed.wall.as_secs_f64()
    );
    Ok(vec![Figure::new(
        "throughput",
        elapsed.rate(received),
        "msg/s",
        Better::Higher,
    )
    .with_cpu(&elapsed, received)
    .with_note(note)])
}
