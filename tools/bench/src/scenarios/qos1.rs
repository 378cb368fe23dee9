//! `qos1` and `qos2`: publishers with a window of unfinished QoS 1 (or QoS 2)
//! PUBLISHes, each feeding its own persistent-session subscriber, which acknowledges
//! every delivery (PUBACK; PUBREC then PUBCOMP). The figure is messages per second
//! both acknowledged to the publisher and delivered. Quay makes every PUBACK, PUBREC,
//! PUBCOMP and PUBREL wait for what it promises to be fsynced.

use anyhow::Result;
use quay::codec::QoS;
use tokio::task::JoinSet;

use super::{ending_note, progress, share, Target};
use crate::client::{publish_template, ConnectOptions};
use crate::load::{publish_acked, spawn_reporting, subscribe_loop, Counting};
use crate::measure::{Better, Figure, Interval};

#[derive(Debug, Clone, clap::Args)]
pub struct Qos1Args {
    /// Publisher/subscriber pairs.
    #[arg(long, default_value_t = 4)]
    pub pairs: u64,
    /// Messages in all, shared across the pairs.
    #[arg(long, default_value_t = 400_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 256)]
    pub payload: usize,
    /// Unacknowledged PUBLISHes each publisher keeps in flight.
    #[arg(long, default_value_t = 128)]
    pub window: u64,
}

pub async fn run(target: &Target, args: &Qos1Args, qos: QoS) -> Result<Vec<Figure>> {
    let name = if qos == QoS::ExactlyOnce {
        "qos2"
    } else {
        "qos1"
    };
    let delivered = progress(args.messages);
    let acked = progress(args.messages);
    let mut tasks = JoinSet::new();
    let mut publishers = Vec::new();
    for i in 0..args.pairs {
        let topic = format!("bench/q/{i}");
        let id = format!("bench-{name}-sub-{i}");
        target
            .connect(&ConnectOptions::clean(id.as_str()))
            .await?
            .disconnect()
            .await?;
        let mut sub = target.connect(&ConnectOptions::persistent(id)).await?;
        sub.subscribe(std::slice::from_ref(&topic), qos).await?;
        let count = share(args.messages, args.pairs, i);
        spawn_reporting(
            &mut tasks,
            &delivered,
            subscribe_loop(sub, Counting::All(count), delivered.clone()),
        );
        // QoS 2 publishers keep a session, so their packet ids are stored too.
        let publisher_id = format!("bench-{name}-pub-{i}");
        let publisher = match qos {
            QoS::ExactlyOnce => ConnectOptions::persistent(publisher_id),
            _ => ConnectOptions::clean(publisher_id),
        };
        let publisher = target.connect(&publisher).await?;
        publishers.push((publisher, topic, count));
    }
    let interval = Interval::start(target.broker_pid)?;
    let window = args.window.max(1);
    let mut first_seq = 0;
    for (conn, topic, count) in publishers {
        let template = publish_template(&topic, qos, args.payload);
        let acked_by_broker = acked.clone();
        spawn_reporting(&mut tasks, &acked, async move {
            publish_acked(conn, template, first_seq, count, window, acked_by_broker)
                .await
                .map(drop)
        });
        first_seq += count;
    }
    let deadline = target.deadline();
    let acked_ending = acked.wait(deadline, target.stall).await?;
    let delivered_ending = delivered.wait(deadline, target.stall).await?;
    let end = acked.last_progress().max(delivered.last_progress());
    let elapsed = interval.stop_at(end)?;
    let done = acked.count().min(delivered.count());
    let note = format!(
        "publishers {}, subscribers {}; {} pairs, window {}, acked {}, delivered {}, {:.2}s",
        ending_note(acked_ending),
        ending_note(delivered_ending),
        args.pairs,
        args.window,
        acked.count(),
        delivered.count(),
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
