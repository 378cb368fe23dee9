//! `drain`: a persistent QoS 1 subscriber goes offline, the broker queues messages for
//! it, and it comes back (clean_session=false) to take them all. The figures are how
//! fast the queue drains and how many messages were lost (must be 0).
//!
//! The two phases (`fill` and `drain`) are also the two halves of `restart`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use quay::codec::QoS;
use tokio::task::JoinSet;

use super::{ending_note, progress, Target};
use crate::client::{publish_template, ConnectOptions};
use crate::load::{publish_acked, spawn_reporting, subscribe_loop, Counting};
use crate::measure::{Better, Ending, Figure, Interval, Progress};

#[derive(Debug, Clone, clap::Args)]
pub struct DrainArgs {
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Unacknowledged PUBLISHes the publisher keeps in flight while filling.
    #[arg(long, default_value_t = 128)]
    pub window: u64,
}

/// The offline subscriber's client id and topic for one scenario.
pub struct Queue<'a> {
    pub client_id: &'a str,
    pub topic: &'a str,
}

pub async fn run(target: &Target, args: &DrainArgs) -> Result<Vec<Figure>> {
    let queue = Queue {
        client_id: "bench-drain-sub",
        topic: "bench/drain",
    };
    let mut figures = fill(target, &queue, args.messages, args.payload, args.window).await?;
    figures.extend(drain(target, &queue, args.messages).await?);
    Ok(figures)
}

/// Park a persistent subscriber, then publish `messages` QoS 1 messages to it and wait
/// for every PUBACK. Figure: "fill", acknowledged messages per second.
pub async fn fill(
    target: &Target,
    queue: &Queue<'_>,
    messages: u64,
    payload: usize,
    window: u64,
) -> Result<Vec<Figure>> {
    target
        .park_persistent_subscriber(queue.client_id, queue.topic, QoS::AtLeastOnce)
        .await?;
    let publisher = target
        .connect(&ConnectOptions::clean(format!("{}-pub", queue.client_id)))
        .await?;
    let acked = progress(messages);
    let mut tasks = JoinSet::new();
    let interval = Interval::start(target.broker_pid)?;
    let template = publish_template(queue.topic, QoS::AtLeastOnce, payload);
    let acked_by_broker = acked.clone();
    spawn_reporting(&mut tasks, &acked, async move {
        publish_acked(
            publisher,
            template,
            0,
            messages,
            window.max(1),
            acked_by_broker,
        )
        .await?
        .disconnect()
        .await
    });
    let ending = target.wait(&acked).await?;
    let elapsed = interval.stop_at(acked.last_progress())?;
    if ending != Ending::Complete {
        bail!(
            "filling the offline queue {}: {} of {messages} PUBLISHes acknowledged",
            ending_note(ending),
            acked.count()
        );
    }
    // Let the publisher's DISCONNECT finish before the next phase.
    while tasks.join_next().await.is_some() {}
    let note = format!(
        "{messages} x {payload} B QoS 1 to an offline session, {:.2}s",
        elapsed.wall.as_secs_f64()
    );
    Ok(vec![Figure::new(
        "fill",
        elapsed.rate(messages),
        "msg/s",
        Better::Higher,
    )
    .with_cpu(&elapsed, messages)
    .with_note(note)])
}

/// Reconnect the parked subscriber and take all `messages`, PUBACKing each. Figures:
/// "drain" (messages per second from CONNECT to the last one) and "lost".
pub async fn drain(target: &Target, queue: &Queue<'_>, messages: u64) -> Result<Vec<Figure>> {
    let delivered = Arc::new(Progress::with_marks(messages, (messages / 10).max(1)));
    let interval = Interval::start(target.broker_pid)?;
    let conn = target
        .connect(&ConnectOptions::persistent(queue.client_id))
        .await?;
    let connacked = Instant::now();
    let session_present = conn.session_present;
    let mut tasks = JoinSet::new();
    spawn_reporting(
        &mut tasks,
        &delivered,
        subscribe_loop(conn, Counting::Unique(messages), delivered.clone()),
    );
    let ending = target.wait(&delivered).await?;
    let elapsed = interval.stop_at(delivered.last_progress())?;
    let received = delivered.count();
    let lost = messages - received;
    let note = format!(
        "{}; session present {session_present}, received {received} of {messages}, duplicates {}, {:.2}s; {}",
        ending_note(ending),
        delivered.duplicates(),
        elapsed.wall.as_secs_f64(),
        timeline(interval.started(), connacked, &delivered)
    );
    Ok(vec![
        Figure::new("drain", elapsed.rate(received), "msg/s", Better::Higher)
            .with_cpu(&elapsed, received)
            .with_note(note),
        Figure::new("lost", lost as f64, "msgs", Better::Exact),
    ])
}

/// Where a drain's time went, in ms from its start: CONNACK, the first delivery, and
/// the time each tenth of the messages took ("connack 1.2 ms, first 3.4 ms, tenths
/// 20 21 ..."): a slow start or an uneven middle shows here, not in the rate.
fn timeline(start: Instant, connacked: Instant, delivered: &Progress) -> String {
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let first = match delivered.first_mark() {
        Some(first) => format!("{:.1} ms", ms(first.saturating_duration_since(start))),
        None => "none".to_string(),
    };
    let mut previous = start;
    let tenths: Vec<String> = delivered
        .marks()
        .into_iter()
        .map(|at| {
            let took = at.saturating_duration_since(previous);
            previous = at;
            format!("{:.0}", ms(took))
        })
        .collect();
    format!(
        "connack {:.1} ms, first {first}, tenths (ms) {}",
        ms(connacked.saturating_duration_since(start)),
        tenths.join(" ")
    )
}
