//! One module per benchmark scenario. Each sets up its connections, measures one
//! interval (wall clock, broker CPU, generator CPU) and returns its figures; none of
//! them starts or stops a broker (the runner script does) or prints a comparison.

pub mod bridge;
pub mod connect;
pub mod drain;
pub mod fanin;
pub mod fanout;
pub mod idle;
pub mod open_loop;
pub mod qos1;
pub mod restart;
pub mod scale;
pub mod segment;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use quay::codec::QoS;

use crate::client::{ConnectOptions, MqttConn};
use crate::measure::{Ending, Progress};
use crate::quay_ctl::QuayCtl;

/// The broker under test and the bounds every scenario keeps.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// For CPU and memory figures; without it those are left out.
    pub broker_pid: Option<u32>,
    /// Wall-clock bound of each measured phase.
    pub time_limit: Duration,
    /// A phase with no progress for this long is over.
    pub stall: Duration,
    /// How to read Quay's own counters, when the broker is Quay and the runner says how.
    pub quay_ctl: Option<QuayCtl>,
}

impl Target {
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.time_limit
    }

    pub async fn connect(&self, options: &ConnectOptions) -> Result<MqttConn> {
        MqttConn::connect(self.addr, options).await
    }

    /// A fresh persistent session subscribed to `filter` at `qos`, then disconnected, so
    /// the broker queues what is published to it.
    pub async fn park_persistent_subscriber(
        &self,
        client_id: &str,
        filter: &str,
        qos: QoS,
    ) -> Result<()> {
        // Clean first so an earlier run's session cannot deliver before the SUBACK.
        self.connect(&ConnectOptions::clean(client_id))
            .await?
            .disconnect()
            .await?;
        let mut conn = self.connect(&ConnectOptions::persistent(client_id)).await?;
        conn.subscribe(&[filter.to_string()], qos).await?;
        conn.disconnect().await
    }

    /// Wait on `progress` within this target's bounds.
    pub async fn wait(&self, progress: &Progress) -> Result<Ending> {
        progress.wait(self.deadline(), self.stall).await
    }
}

/// `work`, or an error once `limit` has passed.
pub async fn bounded<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("no answer from the broker within {limit:?}"),
    }
}

/// How publishers were paced (`--max-ahead`), for notes.
/// The clients of a fan-in: one QoS 0 subscriber of `bench/#` and `publishers`
/// publishers, named after `name`; with `ws_port` the publishers connect over
/// WebSocket to that port (the subscriber stays on TCP).
pub async fn fanin_clients(
    target: &Target,
    name: &str,
    publishers: u64,
    ws_port: Option<u16>,
) -> Result<(MqttConn, Vec<MqttConn>)> {
    let mut subscriber = target
        .connect(&ConnectOptions::clean(format!("{name}-sub")))
        .await?;
    subscriber
        .subscribe(&["bench/#".to_string()], QoS::AtMostOnce)
        .await?;
    let mut conns = Vec::new();
    for i in 0..publishers {
        let options = ConnectOptions::clean(format!("{name}-pub-{i}"));
        conns.push(match ws_port {
            Some(port) => {
                let addr = SocketAddr::new(target.addr.ip(), port);
                MqttConn::connect_websocket(addr, &options).await?
            }
            None => target.connect(&options).await?,
        });
    }
    Ok((subscriber, conns))
}

pub fn pacing_note(max_ahead: u64) -> String {
    match max_ahead {
        0 => "open loop".to_string(),
        n => format!("at most {n} msgs ahead"),
    }
}

/// "complete" or how the phase ended early, for notes.
pub fn ending_note(ending: Ending) -> &'static str {
    match ending {
        Ending::Complete => "complete",
        Ending::Stalled => "stalled",
        Ending::Deadline => "hit the time limit",
    }
}

/// `n` shared across `parts` as evenly as possible: part `i`'s share.
pub fn share(n: u64, parts: u64, i: u64) -> u64 {
    n / parts + u64::from(i < n % parts)
}

/// A fresh shared counter.
pub fn progress(target: u64) -> Arc<Progress> {
    Arc::new(Progress::new(target))
}
