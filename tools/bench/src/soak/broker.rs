//! The broker under test: the real `emqx` binary in the foreground, on a free loopback
//! port, with its own data directory, killed (SIGKILL) and restarted on the same
//! directory and port as often as the soak wants. Or Mosquitto, the same way: without
//! kills it checks the soak's own accounting against a broker that keeps its promises
//! within one process lifetime (with kills it loses what it had not autosaved, by design).
//!
//! Every wait is bounded: start-up (`START_LIMIT`), exit after SIGKILL (`KILL_LIMIT`),
//! graceful stop (`STOP_LIMIT`). The process is killed when this value is dropped.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

const START_LIMIT: Duration = Duration::from_secs(60);
const KILL_LIMIT: Duration = Duration::from_secs(10);
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// Which broker binary, and how it is configured.
#[derive(Debug, Clone)]
pub enum BrokerKind {
    /// `emqx --config <config> foreground`.
    Quay { emqx: PathBuf, config: PathBuf },
    /// `mosquitto -c <root>/mosquitto.conf`, with persistence.
    Mosquitto { mosquitto: PathBuf },
}

pub struct Broker {
    kind: BrokerKind,
    root: PathBuf,
    port: u16,
    internal_port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Broker {
    /// A broker that will run with its data, logs and console output under a new
    /// directory `root` (which must not exist yet).
    pub fn new(kind: BrokerKind, root: PathBuf) -> Result<Broker> {
        match &kind {
            BrokerKind::Quay { emqx, config } => {
                if !emqx.is_file() {
                    bail!(
                        "broker binary {} not found (build it with `cargo build --release --bin emqx`, or pass --emqx)",
                        emqx.display()
                    );
                }
                if !config.is_file() {
                    bail!("config {} not found (pass --config)", config.display());
                }
            }
            BrokerKind::Mosquitto { mosquitto } => {
                if !mosquitto.is_file() {
                    bail!(
                        "{} not found (apt-get install mosquitto)",
                        mosquitto.display()
                    );
                }
            }
        }
        std::fs::create_dir(&root)
            .with_context(|| format!("creating the soak directory {}", root.display()))?;
        let port = free_port()?;
        let mut internal_port = free_port()?;
        for _ in 0..100 {
            if internal_port != port {
                break;
            }
            internal_port = free_port()?;
        }
        if let BrokerKind::Mosquitto { .. } = kind {
            let conf = format!(
                "listener {port} 127.0.0.1\n\
                 allow_anonymous true\n\
                 user root\n\
                 # unbounded queues: a drop for a full queue would look like a loss\n\
                 max_queued_messages 0\n\
                 persistence true\n\
                 persistence_location {}/\n\
                 log_dest file {}/mosquitto.log\n\
                 log_type error\n\
                 log_type warning\n",
                root.display(),
                root.display()
            );
            let path = root.join("mosquitto.conf");
            std::fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(Broker {
            kind,
            root,
            port,
            internal_port,
            child: None,
            starts: 0,
        })
    }

    /// What runs, for the log line.
    pub fn describe(&self) -> String {
        match &self.kind {
            BrokerKind::Quay { emqx, .. } => emqx.display().to_string(),
            BrokerKind::Mosquitto { mosquitto } => mosquitto.display().to_string(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn console_log(&self) -> PathBuf {
        self.root.join("console.log")
    }

    /// Start the process and wait until its listener accepts.
    pub async fn start(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("broker already running");
        }
        self.starts += 1;
        let log_path = self.console_log();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let err = log
            .try_clone()
            .context("duplicating the console log handle")?;
        let mut command = match &self.kind {
            BrokerKind::Quay { emqx, config } => {
                let loopback = |port: u16| format!("127.0.0.1:{port}");
                let mut c = Command::new(emqx);
                c.arg("--config")
                    .arg(config)
                    .arg("foreground")
                    .env("EMQX_LISTENER__TCP__EXTERNAL", loopback(self.port))
                    .env("EMQX_LISTENER__TCP__INTERNAL", loopback(self.internal_port))
                    .env("EMQX_LISTENER__SSL__EXTERNAL", "127.0.0.1:0")
                    .env("EMQX_LISTENER__WS__EXTERNAL", "127.0.0.1:0")
                    .env("EMQX_LISTENER__WSS__EXTERNAL", "127.0.0.1:0")
                    .env("EMQX_NODE__DATA_DIR", self.root.join("data"))
                    .env("EMQX_LOG__DIR", self.root.join("log"))
                    // Unbounded stored queues: a drop for a full queue would look like a loss.
                    .env("EMQX_ZONE__EXTERNAL__MAX_MQUEUE_LEN", "0");
                c
            }
            BrokerKind::Mosquitto { mosquitto } => {
                let mut c = Command::new(mosquitto);
                c.arg("-c").arg(self.root.join("mosquitto.conf"));
                c
            }
        };
        let child = command
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.describe()))?;
        self.child = Some(child);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "broker exited with {status} during start #{} (see {})",
                    self.starts,
                    log_path.display()
                );
            }
            if tokio::net::TcpStream::connect(self.addr()).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill().await.ok();
                bail!(
                    "broker did not accept on {} within {START_LIMIT:?} (see {})",
                    self.addr(),
                    log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: the crash the soak is about. Returns once the process is gone.
    pub async fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child
            .start_kill()
            .context("sending SIGKILL to the broker")?;
        match tokio::time::timeout(KILL_LIMIT, child.wait()).await {
            Ok(status) => status.map(|_| ()).context("waiting for the killed broker"),
            Err(_) => bail!("broker still running {KILL_LIMIT:?} after SIGKILL"),
        }
    }

    /// SIGTERM and wait for the graceful exit; SIGKILL if it takes longer than
    /// `STOP_LIMIT`, which is an error.
    pub async fn stop(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("broker not running");
        };
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on the pid of our own child, which has not been reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        match tokio::time::timeout(STOP_LIMIT, child.wait()).await {
            Ok(status) => status.context("waiting for the broker to stop"),
            Err(_) => {
                child.start_kill().ok();
                child.wait().await.ok();
                bail!("broker ignored SIGTERM for {STOP_LIMIT:?}")
            }
        }
    }
}

/// A loopback port nobody uses now, below the kernel's ephemeral range. While the broker
/// is down its clients keep connecting, and each outgoing connection takes an ephemeral
/// local port: a broker port inside that range can be taken by one of them (or by a
/// client connected to itself), and the restart then fails to bind.
fn free_port() -> Result<u16> {
    let (ephemeral_low, _) = ephemeral_range();
    let low: u16 = 10_000;
    let high = ephemeral_low.saturating_sub(1).max(low + 1000);
    let mut rng = super::rng::Rng::new(u64::from(std::process::id()) ^ nanos());
    for _ in 0..200 {
        let port = rng.between(u64::from(low), u64::from(high)) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port between {low} and {high} in 200 tries")
}

/// `net.ipv4.ip_local_port_range`, or Linux's default if it cannot be read.
fn ephemeral_range() -> (u16, u16) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(low), Some(high)) if low <= high => (low, high),
        _ => (32768, 60999),
    }
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
