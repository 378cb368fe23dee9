//! `fanin-open` and `fanout-open`: QoS 0 publishers that write as fast as the broker
//! reads their sockets, with no pacing on deliveries, to subscribers that read as fast as
//! they can. A new user's first test looks like this, and a broker that reads faster
//! than it can deliver must slow the publishers (TCP backpressure) or shed; the paced
//! `fanin`/`fanout` never show which it does.
//!
//! The run ends when every delivery arrived, when nothing was sent or delivered for
//! `--quiet-ms` (whatever is missing by then was dropped), or at the time limit. The
//! figures are what was sent, delivered and dropped (sent x subscribers - delivered) and
//! the delivered rate from the first send to the last delivery. A broker closing a
//! connection is part of the result (a note), not a failed run: shedding or
//! disconnecting is exactly what these scenarios exist to show.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use quay::codec::QoS;
use tokio::task::JoinSet;

use super::{fanin_clients, progress, share, Target};
use crate::client::{publish_template, ConnectOptions, MqttConn};
use crate::load::{publish_qos0, subscribe_loop, Counting};
use crate::measure::{Better, Figure, Interval, Progress};
use crate::quay_ctl::QuayCtl;

/// How often the end conditions are checked.
const POLL: Duration = Duration::from_millis(20);
/// The counter a full queue increments in Quay (EMQX's name).
const QUEUE_FULL: &str = "delivery.dropped.queue_full";

#[derive(Debug, Clone, clap::Args)]
pub struct FaninOpenArgs {
    #[arg(long, default_value_t = 8)]
    pub publishers: u64,
    /// Messages in all, shared across the publishers.
    #[arg(long, default_value_t = 600_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// The run is over once nothing was sent or delivered for this long.
    #[arg(long, default_value_t = 2000)]
    pub quiet_ms: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FanoutOpenArgs {
    #[arg(long, default_value_t = 200)]
    pub subscribers: u64,
    /// Messages published; each is due to every subscriber.
    #[arg(long, default_value_t = 20_000)]
    pub messages: u64,
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// The run is over once nothing was sent or delivered for this long.
    #[arg(long, default_value_t = 2000)]
    pub quiet_ms: u64,
}

pub async fn fanin(target: &Target, args: &FaninOpenArgs) -> Result<Vec<Figure>> {
    let (subscriber, publishers) =
        fanin_clients(target, "bench-fanin-open", args.publishers, None).await?;
    let mut run = OpenRun::new(args.messages, 1);
    // Sequence numbers run across all publishers, so the one subscriber can tell a
    // duplicate from a new message.
    run.subscribe(subscriber, args.messages);
    let interval = Interval::start(target.broker_pid)?;
    let mut first_seq = 0;
    for (i, conn) in publishers.into_iter().enumerate() {
        let count = share(args.messages, args.publishers, i as u64);
        let topic = format!("bench/fanin/{i}");
        run.publish(conn, &topic, args.payload, first_seq, count);
        first_seq += count;
    }
    let shape = format!("{} pub → 1 sub on bench/#", args.publishers);
    run.finish(target, interval, args.quiet_ms, &shape).await
}

pub async fn fanout(target: &Target, args: &FanoutOpenArgs) -> Result<Vec<Figure>> {
    const TOPIC: &str = "bench/fanout-open";
    let mut run = OpenRun::new(args.messages, args.subscribers);
    for i in 0..args.subscribers {
        let mut conn = target
            .connect(&ConnectOptions::clean(format!("bench-fanout-open-sub-{i}")))
            .await?;
        conn.subscribe(&[TOPIC.to_string()], QoS::AtMostOnce)
            .await?;
        run.subscribe(conn, args.messages);
    }
    let publisher = target
        .connect(&ConnectOptions::clean("bench-fanout-open-pub"))
        .await?;
    let interval = Interval::start(target.broker_pid)?;
    run.publish(publisher, TOPIC, args.payload, 0, args.messages);
    let shape = format!("1 pub → {} subs", args.subscribers);
    run.finish(target, interval, args.quiet_ms, &shape).await
}

/// How an open-loop run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenEnding {
    AllDelivered,
    /// Everything was sent, then nothing arrived for the quiet period.
    Quiet,
    /// Publishers could not send the rest and nothing arrived for the quiet period.
    Blocked,
    Deadline,
}

impl OpenEnding {
    fn note(self) -> &'static str {
        match self {
            OpenEnding::AllDelivered => "all delivered",
            OpenEnding::Quiet => "all sent, then nothing new for the quiet period",
            OpenEnding::Blocked => "publishers blocked and nothing new for the quiet period",
            OpenEnding::Deadline => "hit the time limit",
        }
    }
}

/// The load tasks of one open-loop run and what they counted.
struct OpenRun {
    messages: u64,
    subscribers: u64,
    expected: u64,
    sent: Arc<Progress>,
    delivered: Arc<Progress>,
    /// Errors of load tasks (e.g. the broker closed a connection), for the note.
    failures: Arc<Mutex<Vec<String>>>,
    tasks: JoinSet<()>,
}

impl OpenRun {
    /// `messages` to publish, each due to `subscribers` subscribers.
    fn new(messages: u64, subscribers: u64) -> OpenRun {
        let expected = messages * subscribers;
        OpenRun {
            messages,
            subscribers,
            expected,
            sent: progress(messages),
            delivered: progress(expected),
            failures: Arc::new(Mutex::new(Vec::new())),
            tasks: JoinSet::new(),
        }
    }

    fn spawn(&mut self, work: impl std::future::Future<Output = Result<()>> + Send + 'static) {
        let failures = self.failures.clone();
        self.tasks.spawn(async move {
            if let Err(e) = work.await {
                let mut list = failures.lock().unwrap_or_else(|p| p.into_inner());
                list.push(format!("{e:#}"));
            }
        });
    }

    /// Count the deliveries on `conn` of messages numbered `0..messages`.
    fn subscribe(&mut self, conn: MqttConn, messages: u64) {
        let delivered = self.delivered.clone();
        self.spawn(subscribe_loop(conn, Counting::Unique(messages), delivered));
    }

    /// Publish `count` messages numbered from `first_seq` on `conn`, unpaced.
    fn publish(&mut self, conn: MqttConn, topic: &str, payload: usize, first_seq: u64, count: u64) {
        let template = publish_template(topic, QoS::AtMostOnce, payload);
        let sent = self.sent.clone();
        self.spawn(publish_qos0(conn, template, first_seq, count, sent, None));
    }

    async fn wait(&self, deadline: Instant, quiet: Duration) -> OpenEnding {
        // The counters were made before the connections were set up, which may itself
        // take longer than the quiet period: quiet is counted from now at the earliest.
        let started = Instant::now();
        loop {
            if self.delivered.count() >= self.expected {
                return OpenEnding::AllDelivered;
            }
            let now = Instant::now();
            if now >= deadline {
                return OpenEnding::Deadline;
            }
            let last = started
                .max(self.sent.last_progress())
                .max(self.delivered.last_progress());
            if now.saturating_duration_since(last) >= quiet {
                return if self.sent.count() >= self.messages {
                    OpenEnding::Quiet
                } else {
                    OpenEnding::Blocked
                };
            }
            tokio::time::sleep(POLL.min(deadline - now)).await;
        }
    }

    /// Wait for the end, stop the load, and turn the counts into figures.
    async fn finish(
        mut self,
        target: &Target,
        interval: Interval,
        quiet_ms: u64,
        shape: &str,
    ) -> Result<Vec<Figure>> {
        let ending = self
            .wait(target.deadline(), Duration::from_millis(quiet_ms))
            .await;
        self.tasks.abort_all();
        let elapsed = interval.stop_at(self.delivered.last_progress())?;
        let counts = Counts {
            messages: self.messages,
            sent: self.sent.count(),
            due: self.sent.count() * self.subscribers,
            delivered: self.delivered.count(),
        };
        let mut note = format!(
            "{}; {shape}, open loop; {}, {:.2}s{}",
            ending.note(),
            counts.summary(),
            elapsed.wall.as_secs_f64(),
            self.anomalies()
        );
        let mut figures = vec![
            Figure::new("sent", counts.sent as f64, "msg", Better::Higher)
                .with_note(format!("{} of {}", counts.sent, counts.messages)),
            Figure::new("delivered", counts.delivered as f64, "msg", Better::Higher)
                .with_note(format!("{} of {} due", counts.delivered, counts.due)),
            Figure::new("dropped", counts.dropped() as f64, "msg", Better::Exact)
                .with_note(ending.note()),
        ];
        if let Some(ctl) = &target.quay_ctl {
            match queue_full_figure(ctl).await {
                Ok(figure) => figures.push(figure),
                Err(e) => note.push_str(&format!(", broker counters unread: {e:#}")),
            }
        }
        figures.push(
            Figure::new(
                "delivered rate",
                elapsed.rate(counts.delivered),
                "msg/s",
                Better::Higher,
            )
            .with_cpu(&elapsed, counts.delivered)
            .with_note(note),
        );
        Ok(figures)
    }

    /// Duplicates and connections the broker closed, for the note ("" if none).
    fn anomalies(&self) -> String {
        let mut out = String::new();
        let duplicates = self.delivered.duplicates();
        if duplicates > 0 {
            out.push_str(&format!(", {duplicates} duplicates"));
        }
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(first) = failures.first() {
            out.push_str(&format!(
                ", {} connection(s) ended early, first: {first}",
                failures.len()
            ));
        }
        out
    }
}

/// Quay's count of deliveries dropped on a full queue, with its other counters in the note.
async fn queue_full_figure(ctl: &QuayCtl) -> Result<Figure> {
    let metrics = ctl.metrics().await?;
    let Some(&queue_full) = metrics.get(QUEUE_FULL) else {
        bail!("emqx_ctl metrics printed no {QUEUE_FULL}");
    };
    let get = |name: &str| {
        metrics
            .get(name)
            .map_or("n/a".to_string(), |v| v.to_string())
    };
    let note = format!(
        "broker counters: messages.received {}, messages.sent {}, messages.dropped {}",
        get("messages.received"),
        get("messages.sent"),
        get("messages.dropped")
    );
    Ok(Figure::new(QUEUE_FULL, queue_full as f64, "msg", Better::Exact).with_note(note))
}

/// What one run counted; `dropped` is what was sent and never arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    /// Messages the publishers were to send.
    messages: u64,
    /// Messages the publishers handed to the kernel.
    sent: u64,
    /// Deliveries due for what was sent.
    due: u64,
    delivered: u64,
}

impl Counts {
    fn dropped(&self) -> u64 {
        self.due.saturating_sub(self.delivered)
    }

    fn summary(&self) -> String {
        let unsent = match self.messages - self.sent.min(self.messages) {
            0 => String::new(),
            n => format!(" ({n} never sent)"),
        };
        let pct = 100.0 * self.delivered as f64 / self.due.max(1) as f64;
        format!(
            "sent {}{unsent}, delivered {} of {} ({pct:.1}%), dropped {}",
            self.sent,
            self.delivered,
            self.due,
            self.dropped()
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Counts, OpenEnding, OpenRun};

    #[tokio::test]
    async fn a_run_ends_delivered_quiet_blocked_or_at_the_deadline() {
        let far = Instant::now() + Duration::from_secs(10);
        let quiet = Duration::from_millis(100);
        let run = OpenRun::new(10, 2);
        run.sent.add(10);
        run.delivered.add(20);
        assert_eq!(run.wait(far, quiet).await, OpenEnding::AllDelivered);

        let run = OpenRun::new(10, 2);
        run.sent.add(10);
        run.delivered.add(15);
        assert_eq!(run.wait(far, quiet).await, OpenEnding::Quiet);

        // Publishers that cannot write the rest (the broker stopped reading them).
        let run = OpenRun::new(10, 2);
        run.sent.add(4);
        assert_eq!(run.wait(far, quiet).await, OpenEnding::Blocked);

        let run = OpenRun::new(10, 2);
        let soon = Instant::now() + Duration::from_millis(50);
        let t0 = Instant::now();
        assert_eq!(
            run.wait(soon, Duration::from_secs(5)).await,
            OpenEnding::Deadline
        );
        assert!(t0.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn dropped_is_what_was_sent_and_never_arrived() {
        let c = Counts {
            messages: 600_000,
            sent: 600_000,
            due: 600_000,
            delivered: 80_000,
        };
        assert_eq!(c.dropped(), 520_000);
        assert_eq!(
            c.summary(),
            "sent 600000, delivered 80000 of 600000 (13.3%), dropped 520000"
        );
        // Publishers stopped by the time limit: the unsent part is not a drop.
        let c = Counts {
            messages: 100,
            sent: 40,
            due: 400,
            delivered: 400,
        };
        assert_eq!(c.dropped(), 0);
        assert!(c.summary().contains("(60 never sent)"));
    }
}
