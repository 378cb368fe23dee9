//! `quay-bench`: the load generator behind `tools/bench/run.sh`.
//!
//! Each invocation runs one scenario against one already-running broker on loopback,
//! prints its figures and appends them to a results file; `report` turns that file into
//! Quay-vs-Mosquitto lines and a markdown table. Starting, pinning and stopping brokers
//! is the script's job, never this binary's, except for `soak`, which must kill and
//! restart the broker itself (see `soak`).
//!
//! It talks raw MQTT 3.1.1 through Quay's own codec on a single-threaded runtime, so
//! the generator stays cheap enough not to be what limits the numbers (its CPU use is
//! printed with every figure to prove it).

mod client;
mod load;
mod measure;
mod proc;
mod quay_ctl;
mod report;
mod scale_link;
mod scenarios;
mod soak;
mod ws_frames;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use measure::Figure;
use quay_ctl::QuayCtl;
use scenarios::{
    bridge, connect, drain, fanin, fanout, idle, open_loop, qos1, restart, scale, segment, Target,
};

#[derive(Parser)]
#[command(name = "quay-bench", about = "MQTT load generator: Quay vs Mosquitto")]
struct Cli {
    /// Broker address; loopback only.
    #[arg(long, global = true, default_value = "127.0.0.1")]
    host: IpAddr,
    #[arg(long, global = true, default_value_t = 1883)]
    port: u16,
    /// The broker's pid, for its CPU time and memory.
    #[arg(long, global = true)]
    broker_pid: Option<u32>,
    /// Name the figures are filed under: quay or mosquitto.
    #[arg(long, global = true, default_value = "quay")]
    broker: String,
    /// File the figures are appended to (tab-separated, read by `report`).
    #[arg(long, global = true)]
    results: Option<PathBuf>,
    /// Wall-clock bound of each measured phase, seconds.
    #[arg(long, global = true, default_value_t = 60)]
    time_limit_s: u64,
    /// A phase with no progress for this long is over, seconds.
    #[arg(long, global = true, default_value_t = 5)]
    stall_s: u64,
    /// Quay's `emqx_ctl`, to read the broker's own counters after open-loop runs.
    #[arg(long, global = true, requires = "quay_data_dir")]
    quay_ctl: Option<PathBuf>,
    /// The config file the Quay under test was started with (for `emqx_ctl --config`).
    #[arg(long, global = true)]
    quay_config: Option<PathBuf>,
    /// The data directory of the Quay under test (`emqx_ctl` finds the node there).
    #[arg(long, global = true)]
    quay_data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Many QoS 0 publishers to one wildcard subscriber
    Fanin(fanin::FaninArgs),
    /// The same with the publishers over WebSocket (--ws-port), the subscriber on TCP
    FaninWs(fanin::FaninArgs),
    /// QoS 1 publishers with a window, each to its own persistent subscriber
    Qos1(qos1::Qos1Args),
    /// The same with QoS 2 (persistent publishers: their packet ids are stored too)
    Qos2(qos1::Qos1Args),
    /// One QoS 0 publisher to many subscribers of one topic
    Fanout(fanout::FanoutArgs),
    /// Fan-in, open loop: publishers as fast as the broker reads; sent, delivered, dropped
    FaninOpen(open_loop::FaninOpenArgs),
    /// Fan-out, open loop: one publisher as fast as the broker reads; sent, delivered, dropped
    FanoutOpen(open_loop::FanoutOpenArgs),
    /// Broker memory per idle connection
    Idle(idle::IdleArgs),
    /// Connection rate with a user name and password per client (log in, then leave)
    Connect(connect::ConnectArgs),
    /// Queue QoS 1 messages for an offline session, then time draining them
    Drain(drain::DrainArgs),
    /// Restart step 1: queue messages for an offline session
    RestartFill(restart::RestartFillArgs),
    /// Restart step 2: time from process start to accepting, after the script restarted it
    RestartWait(restart::RestartWaitArgs),
    /// Restart step 3: drain the queue and count what survived
    RestartVerify(restart::RestartVerifyArgs),
    /// One generator of tools/bench/scale.py: open and hold idle connections (TCP, TLS,
    /// WebSocket), pinging on order from stdin; prints, records nothing
    ScaleHold(scale::ScaleHoldArgs),
    /// Durability soak: misbehaving persistent clients and kill -9 of a broker it starts
    /// itself on its own ports (the global --host, --port, --broker... do not apply)
    Soak(soak::SoakArgs),
    /// Bridge: QoS 1 publishers on the bridging broker, a subscriber on the remote
    BridgeForward(bridge::BridgeForwardArgs),
    /// Bridge replay step 1: publish into the cache while the remote is away
    BridgeFill(bridge::BridgeFillArgs),
    /// Bridge replay step 2: subscribe on the remote and time the replay
    BridgeDrain(bridge::BridgeDrainArgs),
    /// The disk's own rate of 4 KiB write + fdatasync (no broker)
    FsyncRate(segment::FsyncRateArgs),
    /// Durable appends to the bridge cache (no broker)
    SegmentAppend(segment::SegmentAppendArgs),
    /// Print the comparison lines (and optionally the markdown table) from --results
    Report {
        /// Only this scenario's lines
        #[arg(long)]
        scenario: Option<String>,
        /// Print the markdown table instead of the lines
        #[arg(long)]
        markdown: bool,
    },
}

impl Command {
    fn scenario(&self) -> &'static str {
        match self {
            Command::Fanin(_) => "fanin",
            Command::FaninWs(_) => "fanin-ws",
            Command::Qos1(_) => "qos1",
            Command::Qos2(_) => "qos2",
            Command::Fanout(_) => "fanout",
            Command::FaninOpen(_) => "fanin-open",
            Command::FanoutOpen(_) => "fanout-open",
            Command::Idle(_) => "idle",
            Command::Connect(_) => "connect",
            Command::Drain(_) => "drain",
            Command::RestartFill(_) | Command::RestartWait(_) | Command::RestartVerify(_) => {
                "restart"
            }
            Command::Soak(_) => "soak",
            Command::BridgeForward(_) => "bridge",
            Command::BridgeFill(_) | Command::BridgeDrain(_) => "bridge-replay",
            Command::FsyncRate(_) | Command::SegmentAppend(_) => "segment",
            Command::ScaleHold(_) => "scale",
            Command::Report { .. } => "",
        }
    }
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    if let Command::Soak(args) = &cli.command {
        // Starts its own broker on its own ports: --host/--port do not apply.
        return soak::main(args);
    }
    if !cli.host.is_loopback() {
        bail!(
            "--host {} is not a loopback address; this tool only loads brokers on this machine",
            cli.host
        );
    }
    let target =
        Target {
            addr: SocketAddr::new(cli.host, cli.port),
            broker_pid: cli.broker_pid,
            time_limit: Duration::from_secs(cli.time_limit_s),
            stall: Duration::from_secs(cli.stall_s),
            quay_ctl: cli.quay_ctl.clone().zip(cli.quay_data_dir.clone()).map(
                |(program, data_dir)| QuayCtl {
                    program,
                    config: cli.quay_config.clone(),
                    data_dir,
                },
            ),
        };
    if let Command::Report { scenario, markdown } = &cli.command {
        let path = cli.results.as_deref().context("report needs --results")?;
        let figures = report::load(path)?;
        if *markdown {
            report::print_markdown(&figures);
        } else {
            report::print_lines(&figures, scenario.as_deref());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::FsyncRate(_) | Command::SegmentAppend(_) = &cli.command {
        let mut figures = match &cli.command {
            Command::FsyncRate(args) => segment::fsync_rate(args)?,
            Command::SegmentAppend(args) => segment::append(args)?,
            _ => unreachable!("matched above"),
        };
        for f in &mut figures {
            f.scenario = "segment".to_string();
            f.broker = cli.broker.clone();
        }
        measure::record(&figures, cli.results.as_deref())?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::ScaleHold(args) = &cli.command {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?;
        runtime.block_on(scale::run(&target, args))?;
        return Ok(ExitCode::SUCCESS);
    }
    // One thread: the script pins this process to one core, and a single-threaded
    // runtime spends nothing on cross-thread wake-ups.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut figures = runtime.block_on(run(&target, &cli.command))?;
    for f in &mut figures {
        f.scenario = cli.command.scenario().to_string();
        f.broker = cli.broker.clone();
    }
    measure::record(&figures, cli.results.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

async fn run(target: &Target, command: &Command) -> Result<Vec<Figure>> {
    match command {
        Command::Fanin(args) => fanin::run(target, args).await,
        Command::FaninWs(args) => {
            anyhow::ensure!(args.ws_port.is_some(), "fanin-ws needs --ws-port");
            fanin::run(target, args).await
        }
        Command::Qos1(args) => qos1::run(target, args, quay::codec::QoS::AtLeastOnce).await,
        Command::Qos2(args) => qos1::run(target, args, quay::codec::QoS::ExactlyOnce).await,
        Command::Fanout(args) => fanout::run(target, args).await,
        Command::FaninOpen(args) => open_loop::fanin(target, args).await,
        Command::FanoutOpen(args) => open_loop::fanout(target, args).await,
        Command::Idle(args) => idle::run(target, args).await,
        Command::Connect(args) => connect::run(target, args).await,
        Command::Drain(args) => drain::run(target, args).await,
        Command::RestartFill(args) => restart::fill_queue(target, args).await,
        Command::RestartWait(args) => restart::wait_restarted(target, args).await,
        Command::RestartVerify(args) => restart::verify(target, args).await,
        Command::BridgeForward(args) => bridge::forward(target, args).await,
        Command::BridgeFill(args) => bridge::fill(target, args).await,
        Command::BridgeDrain(args) => bridge::drain(target, args).await,
        Command::Report { .. }
        | Command::Soak(_)
        | Command::ScaleHold(_)
        | Command::FsyncRate(_)
        | Command::SegmentAppend(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
}
