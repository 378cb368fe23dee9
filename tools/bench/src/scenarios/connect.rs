//! `connect`: how fast the broker lets clients in when each must log in. Every client
//! sends CONNECT with a user name and password, waits for a successful CONNACK, sends
//! DISCONNECT and waits for the broker to close; `--concurrency` of them at once, in
//! all `--connections`. The figure is connections per second from the first CONNECT
//! to the last close, and the broker's CPU per connection.
//!
//! Before measuring, one CONNECT with a wrong password must be refused: a broker whose
//! authentication is not set up (everyone let in) fails the run rather than report a
//! rate that checked nothing. Without `--user-prefix` the clients are anonymous (the
//! baseline) and that check is skipped.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio::task::JoinSet;

use super::{bounded, Target};
use crate::client::{ConnackRefused, ConnectOptions, MqttConn};
use crate::measure::{Better, Figure, Interval};

/// Sockets this scenario may use in one run: each closed one waits in TIME_WAIT, and
/// loopback has about 28,000 ephemeral ports (the kernel reuses TIME_WAIT ones on
/// loopback, `tcp_tw_reuse = 2`, but a run need not lean on that).
const MAX_CONNECTIONS: u64 = 20_000;

#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    #[arg(long, default_value_t = 5_000)]
    pub connections: u64,
    /// Clients logging in at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: u64,
    /// Client `i` logs in as `<prefix><i % users>`; without it the clients are anonymous.
    #[arg(long)]
    pub user_prefix: Option<String>,
    /// Distinct users the clients cycle through.
    #[arg(long, default_value_t = 100)]
    pub users: u64,
    /// Every user's password.
    #[arg(long, default_value = "bench-secret")]
    pub password: String,
}

impl ConnectArgs {
    fn options(&self, i: u64) -> ConnectOptions {
        let mut options = ConnectOptions::clean(format!("bench-connect-{i}"));
        if let Some(prefix) = &self.user_prefix {
            options.username = Some(format!("{prefix}{}", i % self.users.max(1)));
            options.password = Some(Bytes::from(self.password.clone()));
        }
        options
    }
}

pub async fn run(target: &Target, args: &ConnectArgs) -> Result<Vec<Figure>> {
    if args.connections == 0 || args.connections > MAX_CONNECTIONS {
        bail!(
            "--connections must be 1..={MAX_CONNECTIONS} (ephemeral ports), got {}",
            args.connections
        );
    }
    if args.user_prefix.is_some() {
        refused_with_wrong_password(target, args).await?;
    }
    let interval = Interval::start(target.broker_pid)?;
    let deadline = target.deadline();
    let mut tasks = JoinSet::new();
    let (mut next, mut done) = (0u64, 0u64);
    let mut last = Instant::now();
    while done < args.connections {
        while (tasks.len() as u64) < args.concurrency.max(1) && next < args.connections {
            let (addr, options) = (target.addr, args.options(next));
            tasks.spawn(async move { MqttConn::connect(addr, &options).await?.disconnect().await });
            next += 1;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let joined = bounded(left, async {
            tasks.join_next().await.context("no connect task left")
        })
        .await
        .with_context(|| format!("after {done} connections"))?;
        joined.context("connect task panicked")??;
        done += 1;
        last = Instant::now();
    }
    let elapsed = interval.stop_at(last)?;
    let who = match &args.user_prefix {
        Some(prefix) => format!("{} users {prefix}N", args.users),
        None => "anonymous".to_string(),
    };
    let note = format!(
        "{} connections, {} at once, {who}, CONNECT to close, {:.2}s",
        args.connections,
        args.concurrency,
        elapsed.wall.as_secs_f64()
    );
    Ok(vec![Figure::new(
        "connect rate",
        elapsed.rate(args.connections),
        "conn/s",
        Better::Higher,
    )
    .with_cpu(&elapsed, args.connections)
    .with_note(note)])
}

/// One CONNECT as the first user with a wrong password must be refused.
async fn refused_with_wrong_password(target: &Target, args: &ConnectArgs) -> Result<()> {
    let mut options = args.options(0);
    options.client_id = "bench-connect-wrong-password".to_string();
    options.password = Some(Bytes::from(format!("not-{}", args.password)));
    let user = options.username.clone().unwrap_or_default();
    match MqttConn::connect(target.addr, &options).await {
        Ok(conn) => {
            conn.disconnect().await.ok();
            bail!("the broker let {user:?} in with a wrong password: is authentication set up?")
        }
        Err(e) if e.downcast_ref::<ConnackRefused>().is_some() => Ok(()),
        Err(e) => Err(e.context("checking that a wrong password is refused")),
    }
}
