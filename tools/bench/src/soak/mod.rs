//! `quay-bench soak`: the durability soak of issue 7. It starts the real broker itself
//! (own data directory, free loopback ports), runs persistent subscribers that
//! misbehave (`subscriber`) and QoS 1/2 publishers that retransmit across crashes
//! (`publisher`), kills the broker with SIGKILL every few seconds and restarts it on the
//! same directory, then stops the chaos, lets every subscriber drain, and prints one
//! line of figures from the checker (`ledger`, whose doc says exactly what "owed",
//! "lost", "ambiguous" and "duplicate" mean).
//!
//! Bounded everywhere: the chaos lasts `--duration-s`, the drain at most `--drain-s`,
//! every connect and handshake has a limit, every client task ends once the phase is
//! `Stop`. A seed (printed; `--seed` to replay) drives every random choice; what the
//! broker's timing does to the schedule cannot be replayed.

mod broker;
mod ledger;
mod message;
mod publisher;
mod rng;
mod subscriber;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use quay::codec::ProtocolVersion;
use tokio::sync::watch;
use tokio::task::JoinSet;

use broker::{Broker, BrokerKind};
use ledger::{Ledger, Verdict};
use message::Interest;
use publisher::{Publisher, PublisherConfig};
use rng::Rng;
use subscriber::{lock, Misbehaviour, Subscriber, SubscriberConfig, SubscriberStats};

/// How long client tasks get to finish once told to stop.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How often the drain looks at the ledger.
const DRAIN_POLL: Duration = Duration::from_millis(200);

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// Seconds of chaos (publishing, misbehaving clients, kills); the drain comes after
    #[arg(long, default_value_t = 120)]
    duration_s: u64,
    /// Seed of every random choice (printed in the result line); default: from the clock
    #[arg(long)]
    seed: Option<u64>,
    /// Persistent subscribers (every other one also ends its session now and then)
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// QoS 1/2 publishers (persistent sessions)
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Topics soak/0 .. soak/<n-1> (at most 64)
    #[arg(long, default_value_t = 6)]
    topics: usize,
    /// New messages per second, all publishers together
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Unacknowledged messages per publisher, at most
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Bursts of 16-40 big messages on one topic per minute, all publishers together
    #[arg(long, default_value_t = 60)]
    bursts_per_minute: u64,
    /// Payload size of the messages of a burst, bytes
    #[arg(long, default_value_t = 512 * 1024)]
    big_payload: usize,
    /// Shortest time between two kills, ms
    #[arg(long, default_value_t = 2000)]
    kill_min_ms: u64,
    /// Longest time between two kills, ms
    #[arg(long, default_value_t = 6000)]
    kill_max_ms: u64,
    /// No kills: checks the soak itself against a broker that does not crash
    #[arg(long)]
    no_kills: bool,
    /// Longest the drain after the chaos may take, seconds
    #[arg(long, default_value_t = 60)]
    drain_s: u64,
    /// Deliveries quiet for this long end a drain round, ms
    #[arg(long, default_value_t = 3000)]
    quiet_ms: u64,
    /// The broker binary; default: `emqx` next to this one
    #[arg(long)]
    emqx: Option<PathBuf>,
    /// The broker's config; default: etc/emqx.conf of this repository
    #[arg(long)]
    config: Option<PathBuf>,
    /// What subscribers do besides reading (comma-separated); default: all of them
    #[arg(long, value_enum, value_delimiter = ',')]
    misbehave: Option<Vec<Misbehaviour>>,
    /// Run against Mosquitto (this path) instead of Quay: with --no-kills, a check of
    /// the soak's own accounting against another broker
    #[arg(long)]
    mosquitto: Option<PathBuf>,
    /// Keep the broker's directory (data, console log) even when the run passes
    #[arg(long)]
    keep: bool,
}

/// What the clients are told to do; only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Publish, misbehave, get killed.
    Chaos,
    /// Publishers finish what is in flight; subscribers only connect and read. Each new
    /// round makes every subscriber reconnect once more.
    Drain { round: u32 },
    /// Everyone disconnects.
    Stop,
}

pub fn main(args: &SoakArgs) -> Result<ExitCode> {
    if !(1..=64).contains(&args.topics) {
        bail!("--topics {} must be 1 to 64", args.topics);
    }
    if args.subscribers == 0 || args.publishers == 0 || args.rate == 0 {
        bail!("--subscribers, --publishers and --rate must be positive");
    }
    if !(1..=1000).contains(&args.window) {
        bail!("--window {} must be 1 to 1000", args.window);
    }
    if args.kill_min_ms == 0 || args.kill_min_ms > args.kill_max_ms {
        bail!(
            "--kill-min-ms {} must be positive and at most --kill-max-ms {}",
            args.kill_min_ms,
            args.kill_max_ms
        );
    }
    if std::env::var_os("RUST_LOG").is_some() {
        // The clients log why each connection ended at debug level: RUST_LOG=debug.
        // Uptime stamps: the same clock as the `+s` times of the diagnosis.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .with_timer(tracing_subscriber::fmt::time::Uptime::default())
            .init();
    }
    let clock_start = Instant::now();
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    // One thread: the clients are cheap, and one thread leaves the second core to the
    // broker.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(args, seed, clock_start))
}

async fn run(args: &SoakArgs, seed: u64, clock_start: Instant) -> Result<ExitCode> {
    let emqx = match &args.emqx {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating this binary")?
            .with_file_name("emqx"),
    };
    let config = args.config.clone().unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../etc/emqx.conf"))
    });
    let root = PathBuf::from(format!("/tmp/quay-soak-{}-{seed}", std::process::id()));
    let kind = match &args.mosquitto {
        Some(mosquitto) => BrokerKind::Mosquitto {
            mosquitto: mosquitto.clone(),
        },
        None => BrokerKind::Quay { emqx, config },
    };
    let mut broker = Broker::new(kind, root)?;
    eprintln!(
        "[soak] seed {seed}: {}s of chaos, {} subscribers, {} publishers, {} msg/s; broker {} on {}, data in {}",
        args.duration_s,
        args.subscribers,
        args.publishers,
        args.rate,
        broker.describe(),
        broker.addr(),
        broker.root().display()
    );
    broker.start().await?;

    let ledger = Arc::new(Mutex::new(Ledger::new(args.publishers, clock_start)));
    let (phase_tx, phase_rx) = watch::channel(Phase::Chaos);
    let mut subscribers = JoinSet::new();
    for i in 0..args.subscribers {
        let client_id = format!("soak-sub-{i}");
        let mut rng = Rng::fork(seed, &client_id);
        let cfg = SubscriberConfig {
            protocol: pick_protocol(&mut rng, 60),
            interest: pick_interest(&mut rng, args.topics),
            ender: i % 2 == 1,
            addr: broker.addr(),
            misbehaviours: args
                .misbehave
                .clone()
                .unwrap_or_else(|| Misbehaviour::ALL.to_vec()),
            client_id,
        };
        let sub = Subscriber::new(cfg, rng, ledger.clone(), phase_rx.clone(), args.topics);
        subscribers.spawn(sub.run());
    }
    // Publish once every subscriber has its subscription (or after a bound), so the
    // first messages are owed rather than ambiguous.
    let subscribed_by = Instant::now() + Duration::from_secs(10);
    while lock(&ledger).subscribers_subscribed() < args.subscribers
        && Instant::now() < subscribed_by
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut publishers = JoinSet::new();
    let interval = Duration::from_secs_f64(args.publishers as f64 / args.rate as f64);
    for p in 0..args.publishers {
        let client_id = format!("soak-pub-{p}");
        let mut rng = Rng::fork(seed, &client_id);
        let cfg = PublisherConfig {
            index: p as u32,
            protocol: pick_protocol(&mut rng, 50),
            addr: broker.addr(),
            topics: args.topics,
            window: args.window,
            interval,
            big_payload: args.big_payload,
            burst_per_million_ticks: (args.bursts_per_minute as f64 / 60.0 / args.publishers as f64
                * interval.as_secs_f64()
                * 1e6) as u64,
            lowest_free_id: p % 2 == 0,
            client_id,
        };
        publishers.spawn(Publisher::new(cfg, rng, ledger.clone(), phase_rx.clone()).run());
    }

    let started = Instant::now();
    let chaos = kill_repeatedly(
        &mut broker,
        Rng::fork(seed, "killer"),
        started + Duration::from_secs(args.duration_s),
        &ledger,
        args,
    )
    .await;
    if let Err(e) = chaos {
        phase_tx.send_replace(Phase::Stop);
        subscribers.abort_all();
        publishers.abort_all();
        broker.kill().await.ok();
        return Err(e.context(format!(
            "the broker did not come back (data and console log kept in {})",
            broker.root().display()
        )));
    }

    // Drain: round 1, and a round 2 (everyone reconnects again) if anything is missing.
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_s);
    let quiet = Duration::from_millis(args.quiet_ms);
    let mut drained = false;
    for round in 1..=2 {
        phase_tx.send_replace(Phase::Drain { round });
        drained = drain_round(&ledger, args, round, quiet, drain_deadline).await;
        let (v, _) = lock(&ledger).check();
        if v.lost == 0 && v.unacked == 0 {
            break;
        }
    }
    phase_tx.send_replace(Phase::Stop);
    let mut stats = SubscriberStats::default();
    let stop_deadline = tokio::time::Instant::now() + STOP_GRACE;
    while let Ok(Some(joined)) =
        tokio::time::timeout_at(stop_deadline, subscribers.join_next()).await
    {
        if let Ok(s) = joined {
            add_stats(&mut stats, &s);
        }
    }
    while let Ok(Some(_)) = tokio::time::timeout_at(stop_deadline, publishers.join_next()).await {}
    subscribers.abort_all();
    publishers.abort_all();
    let stopped = broker.stop().await;

    let ledger = lock(&ledger);
    let (v, samples) = ledger.check();
    let failed = v.lost > 0 || v.qos2_duplicates > 0;
    println!(
        "{}",
        result_line(seed, &v, &ledger, &stats, started.elapsed())
    );
    for s in &samples {
        match s.msg {
            Some(msg) => eprintln!("[soak] {} {} {msg}: {}", s.kind, s.client, s.detail),
            None => eprintln!("[soak] {} {}: {}", s.kind, s.client, s.detail),
        }
    }
    if failed && ledger.kills() > 0 {
        eprintln!("[soak] kills at {}", ledger.kill_times());
    }
    if !drained {
        eprintln!(
            "[soak] the drain did not go quiet within {}s: what is still missing may only be late",
            args.drain_s
        );
    }
    let mut keep = args.keep || failed;
    match stopped {
        Ok(status) if status.success() => {}
        Ok(status) => {
            eprintln!("[soak] the broker exited with {status} on SIGTERM");
            keep = true;
        }
        Err(e) => {
            eprintln!("[soak] stopping the broker: {e:#}");
            keep = true;
        }
    }
    if keep {
        eprintln!(
            "[soak] kept {} (data, console.log; replay with --seed {seed})",
            broker.root().display()
        );
    } else {
        std::fs::remove_dir_all(broker.root()).ok();
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn pick_protocol(rng: &mut Rng, v5_percent: u64) -> ProtocolVersion {
    if rng.percent(v5_percent) {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V3_1_1
    }
}

/// A quarter subscribe to `soak/+`, the rest to one to three distinct topics.
fn pick_interest(rng: &mut Rng, topics: usize) -> Interest {
    if rng.percent(25) {
        return Interest::All;
    }
    let n = rng.between(1, topics.min(3) as u64) as usize;
    let mut chosen: Vec<usize> = Vec::with_capacity(n);
    while chosen.len() < n {
        let t = rng.below(topics as u64) as usize;
        if !chosen.contains(&t) {
            chosen.push(t);
        }
    }
    chosen.sort_unstable();
    Interest::Topics(chosen)
}

/// SIGKILL the broker every `kill_min_ms..=kill_max_ms` and start it again on the same
/// directory and port, until `until`. Returns how many kills there were.
async fn kill_repeatedly(
    broker: &mut Broker,
    mut rng: Rng,
    until: Instant,
    ledger: &Mutex<Ledger>,
    args: &SoakArgs,
) -> Result<u64> {
    let until_tokio = tokio::time::Instant::from_std(until);
    if args.no_kills {
        tokio::time::sleep_until(until_tokio).await;
        return Ok(0);
    }
    let mut kills = 0;
    loop {
        let wait = rng.millis(args.kill_min_ms, args.kill_max_ms);
        if Instant::now() + wait >= until {
            tokio::time::sleep_until(until_tokio).await;
            return Ok(kills);
        }
        tokio::time::sleep(wait).await;
        // Counted before the kill, so a client that saw the count unchanged knows no
        // crash came between.
        lock(ledger).kill(Instant::now());
        kills += 1;
        broker.kill().await?;
        // Sometimes stay down a moment: clients then meet refused connections.
        if rng.percent(30) {
            tokio::time::sleep(rng.millis(0, 1000)).await;
        }
        restart(broker, kills).await?;
    }
}

/// Start the broker again after a kill; a failed start is retried a few times (and
/// reported), so one unlucky start does not end the run.
async fn restart(broker: &mut Broker, kills: u64) -> Result<()> {
    const TRIES: u32 = 3;
    let mut attempt = 1;
    loop {
        match broker.start().await {
            Ok(()) => return Ok(()),
            Err(e) if attempt < TRIES => {
                eprintln!("[soak] restart after kill {kills} failed ({e:#}); trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                attempt += 1;
            }
            Err(e) => return Err(e.context(format!("restart after kill {kills}"))),
        }
    }
}

/// Wait until every publisher is done, every subscriber is connected and subscribed in
/// this round, and no delivery came for `quiet`; false if `deadline` came first.
async fn drain_round(
    ledger: &Mutex<Ledger>,
    args: &SoakArgs,
    round: u32,
    quiet: Duration,
    deadline: Instant,
) -> bool {
    let round_start = Instant::now();
    loop {
        tokio::time::sleep(DRAIN_POLL).await;
        let now = Instant::now();
        {
            let l = lock(ledger);
            let last = l
                .last_delivery()
                .map_or(round_start, |t| t.max(round_start));
            if l.publishers_done() == args.publishers
                && l.subscribers_ready(round) == args.subscribers
                && now - last >= quiet
            {
                return true;
            }
        }
        if now >= deadline {
            return false;
        }
    }
}

fn add_stats(total: &mut SubscriberStats, s: &SubscriberStats) {
    total.connects += s.connects;
    total.takeovers += s.takeovers;
    total.concurrent_connects += s.concurrent_connects;
    total.pauses += s.pauses;
    total.drops += s.drops;
    total.session_ends += s.session_ends;
}

/// The one line: the figures the issue asks for first, then the rest.
fn result_line(
    seed: u64,
    v: &Verdict,
    ledger: &Ledger,
    stats: &SubscriberStats,
    elapsed: Duration,
) -> String {
    let a = &ledger.anomalies;
    format!(
        "soak: seed={seed} published={} acked={} delivered={} lost={} qos2_duplicates={} \
         ambiguous={} kills={} qos1_duplicates={} owed={} forfeited={} stale={} unacked={} \
         refused={} session_lost={} stale_session={} double_live={} slow_connacks={} protocol_errors={} \
         connects={} takeovers={} concurrent_connects={} session_ends={} pauses={} drops={} elapsed_s={}",
        v.published,
        v.acked,
        v.delivered,
        v.lost,
        v.qos2_duplicates,
        v.ambiguous,
        ledger.kills(),
        v.qos1_duplicates,
        v.owed,
        v.forfeited,
        v.stale,
        v.unacked,
        v.refused,
        a.session_lost,
        a.stale_session,
        a.double_live,
        a.slow_connacks,
        a.protocol_errors,
        stats.connects,
        stats.takeovers,
        stats.concurrent_connects,
        stats.session_ends,
        stats.pauses,
        stats.drops,
        elapsed.as_secs()
    )
}
