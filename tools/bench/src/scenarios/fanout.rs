//! `fanout`: one QoS 0 publisher, many subscribers on the same topic; the figure is
//! deliveries per second summed over the subscribers.

use anyhow::Result;
use quay::codec::QoS;
use tokio::task::JoinSet;

use super::{ending_note, pacing_note, progress, Target};
use crate::client::{publish_template, ConnectOptions};
use crate::load::{publish_qos0, spawn_reporting, subscribe_loop, Counting, Pacing};
use crate::measure::{Better, Figure, Interval};

const TOPIC: &str = "bench/fanout";

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    #[arg(long, default_value_t = 200)]
    pub subscribers: u64,
    /// Messages published; each is delivered to every subscriber.
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Messages that may be published and not yet delivered (0: publish open-loop,
    /// as fast as the broker reads, and let it queue or shed the excess).
    #[arg(long, default_value_t = 1000)]
    pub max_ahead: u64,
}

pub async fn run(target: &Target, args: &FanoutArgs) -> Result<Vec<Figure>> {
    let expected = args.messages * args.subscribers;
    let delivered = progress(expected);
    let mut tasks = JoinSet::new();
    for i in 0..args.subscribers {
        let mut conn = target
            .connect(&ConnectOptions::clean(format!("bench-fanout-sub-{i}")))
            .await?;
        conn.subscribe(&[TOPIC.to_string()], QoS::AtMostOnce)
            .await?;
        spawn_reporting(
            &mut tasks,
            &delivered,
            subscribe_loop(conn, Counting::All(args.messages), delivered.clone()),
        );
    }
    let publisher = target
        .connect(&ConnectOptions::clean("bench-fanout-pub"))
        .await?;
    let sent = progress(args.messages);
    let pacing = (args.max_ahead > 0).then(|| Pacing {
        delivered: delivered.clone(),
        deliveries_per_message: args.subscribers,
        max_ahead: args.max_ahead,
    });
    let interval = Interval::start(target.broker_pid)?;
    let template = publish_template(TOPIC, QoS::AtMostOnce, args.payload);
    spawn_reporting(
        &mut tasks,
        &delivered,
        publish_qos0(
            publisher,
            template,
            0,
            args.messages,
            sent.clone(),
            pacing.clone(),
        ),
    );
    let ending = target.wait(&delivered).await?;
    let elapsed = interval.stop_at(delivered.last_progress())?;
    let received = delivered.count();
    let pacing_note = pacing_note(args.max_ahead);
    let note = format!(
        "{}, {pacing_note}; {} subscribers, published {}, delivered {} of {}, lost {}, {:.2}s",
        ending_note(ending),
        args.subscribers,
        sent.count(),
        received,
        expected,
        expected - received,
        elapsed.wall.as_secs_f64()
    );
    Ok(vec![Figure::new(
        "deliveries",
        elapsed.rate(received),
        "msg/s",
        Better::Higher,
    )
    .with_cpu(&elapsed, received)
    .with_note(note)])
}
