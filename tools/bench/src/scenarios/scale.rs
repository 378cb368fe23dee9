//! `scale-hold`: one generator process of `tools/bench/scale.py`. Opens `--connections`
//! MQTT 3.1.1 connections of one kind (TCP, TLS, WebSocket), prints when they are all
//! in, then holds them, taking orders from stdin, one per line:
//!
//! - `ping SECONDS`: every connection sends PINGREQ every SECONDS, the connections'
//!   first pings spread evenly over one interval (a fleet's pings are not in step);
//! - `count`: print the PINGREQs sent and PINGRESPs and closes seen so far;
//! - end of input (or `quit`): exit, which closes every connection.
//!
//! Several processes share one measurement (the script splits the connections so no
//! process needs more open files than its limit); each prints wall-clock timestamps
//! (Unix ns) so the script can take the storm from the first start to the last end.
//! Bounded: each connect by `HANDSHAKE_LIMIT`, the storm by `--time-limit-s`, the hold
//! by `--hold-limit-s`.

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use quay::codec::{encode, Connect, Packet, Properties, ProtocolVersion};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::Target;
use crate::client::HANDSHAKE_LIMIT;
use crate::scale_link::{tls_config, Kind, Link};

#[derive(Debug, Clone, clap::Args)]
pub struct ScaleHoldArgs {
    #[arg(long, value_enum)]
    pub kind: Kind,
    #[arg(long)]
    pub connections: u64,
    /// Client ids are PREFIX-N.
    #[arg(long, default_value = "scale")]
    pub id_prefix: String,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 50)]
    pub concurrency: usize,
    /// The Keep Alive the CONNECTs announce, seconds (longer than the quiet settle
    /// phase, so no broker closes a connection before `ping` starts).
    #[arg(long, default_value_t = 60)]
    pub keep_alive: u16,
    /// The CA the TLS connections trust.
    #[arg(long)]
    pub cafile: Option<PathBuf>,
    /// Connect from this many loopback source addresses (127.0.0.2, 127.0.0.3, ...),
    /// round robin. From one address, Linux looks for a free ephemeral port by scanning
    /// (even ports first), which slows every connect once half the range is in use;
    /// 0: from 127.0.0.1 as usual.
    #[arg(long, default_value_t = 0)]
    pub source_ips: u8,
    /// Exit after this long holding, whatever stdin says, seconds.
    #[arg(long, default_value_t = 600)]
    pub hold_limit_s: u64,
}

/// Counters the connection tasks share (one thread: plain `Rc`).
#[derive(Default)]
struct Counts {
    pings: AtomicU64,
    pongs: AtomicU64,
    closed: AtomicU64,
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub async fn run(target: &Target, args: &ScaleHoldArgs) -> Result<()> {
    if args.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let tls = match (args.kind, &args.cafile) {
        (Kind::Tls, Some(cafile)) => Some(tls_config(cafile)?),
        (Kind::Tls, None) => bail!("--kind tls needs --cafile"),
        _ => None,
    };
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let started_ns = unix_ns();
            let deadline = Instant::now() + target.time_limit;
            let mut connecting = JoinSet::new();
            let mut links = Vec::with_capacity(args.connections as usize);
            let mut next = 0u64;
            while (links.len() as u64) < args.connections {
                while connecting.len() < args.concurrency && next < args.connections {
                    let (addr, tls) = (target.addr, tls.clone());
                    let connect =
                        connect_packet(&format!("{}-{next}", args.id_prefix), args.keep_alive)?;
                    let kind = args.kind;
                    let source = (args.source_ips > 0).then(|| {
                        std::net::IpAddr::from([
                            127,
                            0,
                            0,
                            2 + (next % u64::from(args.source_ips)) as u8,
                        ])
                    });
                    connecting.spawn_local(async move {
                        tokio::time::timeout(HANDSHAKE_LIMIT, async {
                            let mut link = Link::open(addr, source, kind, tls.as_ref()).await?;
                            link.send(&connect).await?;
                            let mut got = BytesMut::new();
                            while got.len() < 4 {
                                if !link.recv(&mut got).await? {
                                    bail!("closed before CONNACK");
                                }
                            }
                            if got[..4] != [0x20, 0x02, 0x00, 0x00] {
                                bail!("refused: CONNACK {:02x?}", &got[..4]);
                            }
                            Ok(link)
                        })
                        .await
                        .context("no CONNACK in time")?
                    });
                    next += 1;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                let joined = tokio::time::timeout(left, connecting.join_next())
                    .await
                    .with_context(|| {
                        format!(
                            "storm past --time-limit-s after {} connections",
                            links.len()
                        )
                    })?
                    .context("no connect task left")?;
                let link = joined
                    .context("connect task panicked")?
                    .with_context(|| format!("after {} connections", links.len()))?;
                links.push(link);
            }
            let ended_ns = unix_ns();
            println!(
                "connected {} start_ns {started_ns} end_ns {ended_ns} gen_cpu_ms {}",
                links.len(),
                crate::proc::self_cpu().as_millis()
            );
            hold(links, args).await
        })
        .await
}

fn connect_packet(client_id: &str, keep_alive: u16) -> Result<Vec<u8>> {
    let connect = Connect {
        protocol: ProtocolVersion::V3_1_1,
        clean_start: true,
        keep_alive,
        properties: Properties::default(),
        client_id: client_id.to_string(),
        will: None,
        username: None,
        password: None,
    };
    let mut out = BytesMut::new();
    encode(
        &Packet::Connect(Box::new(connect)),
        ProtocolVersion::V3_1_1,
        &mut out,
    )
    .context("encoding CONNECT")?;
    Ok(out.to_vec())
}

/// Hold every link; obey stdin until it ends or the hold limit passes.
async fn hold(links: Vec<Link>, args: &ScaleHoldArgs) -> Result<()> {
    let counts = Rc::new(Counts::default());
    let (ping_tx, ping_rx) = watch::channel::<Option<Duration>>(None);
    let n = links.len() as u32;
    let mut tasks = JoinSet::new();
    for (i, link) in links.into_iter().enumerate() {
        let (counts, ping_rx) = (counts.clone(), ping_rx.clone());
        tasks.spawn_local(keep(link, i as u32, n, ping_rx, counts));
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let limit = tokio::time::sleep(Duration::from_secs(args.hold_limit_s));
    tokio::pin!(limit);
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line.context("reading stdin")?,
            _ = &mut limit => None,
        };
        let Some(line) = line else { break };
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("ping"), Some(secs)) => {
                let secs: f64 = secs.parse().with_context(|| format!("ping {secs}"))?;
                let _ = ping_tx.send(Some(Duration::from_secs_f64(secs)));
            }
            (Some("count"), _) => println!(
                "pings {} pongs {} closed {}",
                counts.pings.load(Ordering::Relaxed),
                counts.pongs.load(Ordering::Relaxed),
                counts.closed.load(Ordering::Relaxed)
            ),
            (Some("quit"), _) => break,
            _ => bail!("unknown order {line:?} (ping SECONDS | count | quit)"),
        }
    }
    tasks.abort_all();
    Ok(())
}

/// One connection: read (counting PINGRESPs, noticing a close) and, once pinging is
/// on, send a PINGREQ every interval from a start spread by `i` of `n`.
async fn keep(
    mut link: Link,
    i: u32,
    n: u32,
    mut ping: watch::Receiver<Option<Duration>>,
    counts: Rc<Counts>,
) {
    const PINGREQ: [u8; 2] = [0xC0, 0x00];
    let mut got = BytesMut::new();
    let mut next: Option<tokio::time::Instant> = None;
    loop {
        let at = next;
        let tick = async move {
            match at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = link.recv(&mut got) => {
                if !matches!(read, Ok(true)) {
                    counts.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                // Only PINGRESPs (0xD0 0x00) come to an idle 3.1.1 client.
                let whole = got.len() / 2;
                counts.pongs.fetch_add(whole as u64, Ordering::Relaxed);
                let _ = got.split_to(whole * 2);
            }
            changed = ping.changed(), if next.is_none() => {
                if changed.is_err() {
                    return;
                }
                if let Some(every) = *ping.borrow() {
                    let offset = every.mul_f64(f64::from(i) / f64::from(n.max(1)));
                    next = Some(tokio::time::Instant::now() + offset);
                }
            }
            _ = tick => {
                if link.send(&PINGREQ).await.is_err() {
                    counts.closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                counts.pings.fetch_add(1, Ordering::Relaxed);
                let every = (*ping.borrow()).unwrap_or(Duration::from_secs(10));
                next = next.map(|at| at + every);
            }
        }
    }
}
