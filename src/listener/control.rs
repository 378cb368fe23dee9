//! What `emqx_ctl listeners` sees and does: each listener's figures (current
//! connections, refusals by reason) and its listening socket, which `stop` closes
//! (connections already accepted stay, as in EMQX) and `restart` binds again with the
//! same config. The accept loop owns the socket; commands reach it over a channel and
//! it answers each one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::config::ListenerConfig;

/// Why a listener closed a connection before MQTT (`shutdown_count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An `access.N` rule denied the peer.
    AccessDenied = 0,
    /// A broken PROXY header, or none within `proxy_protocol_timeout`.
    ProxyProtocol = 1,
    /// `max_connections` reached.
    MaxConns = 2,
    /// The node's open-file ceiling reached (`listener::ceiling`).
    Ceiling = 3,
}

impl Refusal {
    const ALL: [Refusal; 4] = [
        Refusal::AccessDenied,
        Refusal::ProxyProtocol,
        Refusal::MaxConns,
        Refusal::Ceiling,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::AccessDenied => "access_denied",
            Refusal::ProxyProtocol => "proxy_protocol",
            Refusal::MaxConns => "max_conns",
            Refusal::Ceiling => "ceiling",
        }
    }
}

/// A command for a listener's accept loop; the answer says what happened.
pub enum Command {
    Stop(oneshot::Sender<Result<(), String>>),
    Restart(oneshot::Sender<Result<(), String>>),
}

/// One listener as the control channel sees it.
pub struct ListenerEntry {
    pub config: ListenerConfig,
    /// The connection slots (`max_connections`); the accept loop takes one per
    /// connection and the connection holds it to its end.
    pub slots: Arc<Semaphore>,
    refusals: [AtomicU64; 4],
    /// The address bound now (the real port when the config says 0); None: stopped.
    bound: Mutex<Option<SocketAddr>>,
    commands: mpsc::Sender<Command>,
}

/// The accept loop's side: the commands to answer.
pub struct Control {
    pub entry: Arc<ListenerEntry>,
    pub commands: mpsc::Receiver<Command>,
}

impl Control {
    /// A listener's entry for the control channel, and the commands its accept loop
    /// answers.
    pub fn new(config: ListenerConfig) -> Control {
        let (tx, rx) = mpsc::channel(4);
        let slots = Arc::new(Semaphore::new(
            config.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        Control {
            entry: Arc::new(ListenerEntry {
                config,
                slots,
                refusals: Default::default(),
                bound: Mutex::new(None),
                commands: tx,
            }),
            commands: rx,
        }
    }
}

impl ListenerEntry {
    pub fn refused(&self, why: Refusal) {
        self.refusals[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        Refusal::ALL
            .iter()
            .map(|&r| (r.name(), self.refusals[r as usize].load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Connections open now.
    pub fn current(&self) -> usize {
        let max = self.config.max_connections.min(Semaphore::MAX_PERMITS);
        max.saturating_sub(self.slots.available_permits())
    }

    /// Where it listens: the bound address, else the configured one.
    pub fn listen_on(&self) -> SocketAddr {
        self.bound_now().unwrap_or(self.config.bind)
    }

    pub fn bound_now(&self) -> Option<SocketAddr> {
        *self.bound.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_bound(&self, addr: Option<SocketAddr>) {
        *self.bound.lock().unwrap_or_else(|e| e.into_inner()) = addr;
    }

    /// Ask the accept loop to close its socket (`stop`) or bind it again (`restart`).
    pub async fn command(
        &self,
        make: fn(oneshot::Sender<Result<(), String>>) -> Command,
    ) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| "the listener is shutting down".to_string())?;
        rx.await
            .map_err(|_| "the listener is shutting down".to_string())?
    }

    /// Whether `id` names this listener: `mqtt:tcp:external` (EMQX 4.3+), or by
    /// address `mqtt:tcp:0.0.0.0:1883` / `mqtt:tcp:1883` (earlier EMQX 4).
    pub fn is_named(&self, id: &str) -> bool {
        let Some(rest) = id
            .strip_prefix("mqtt:")
            .and_then(|r| r.strip_prefix(self.config.proto()))
            .and_then(|r| r.strip_prefix(':'))
        else {
            return false;
        };
        let addr = self.listen_on();
        rest == self.config.name
            || rest == addr.to_string()
            || rest == self.config.bind.to_string()
            || rest.parse::<u16>().is_ok_and(|p| p == addr.port())
    }
}

/// The listening socket as the accept loop holds it: None while stopped.
pub struct Socket {
    listener: Option<TcpListener>,
    entry: Arc<ListenerEntry>,
    /// The address bound last: a restart binds it again (the same port when the
    /// config says port 0).
    last: SocketAddr,
}

impl Socket {
    pub fn new(listener: TcpListener, entry: Arc<ListenerEntry>) -> Socket {
        let bound = listener.local_addr().ok();
        entry.set_bound(bound);
        Socket {
            listener: Some(listener),
            last: bound.unwrap_or(entry.config.bind),
            entry,
        }
    }

    /// The next connection; pending forever while stopped.
    pub async fn accept(&self) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
        match &self.listener {
            Some(l) => l.accept().await,
            None => std::future::pending().await,
        }
    }

    /// Carry out a command and answer it.
    pub fn apply(&mut self, command: Command) {
        let id = self.entry.config.id();
        let (reply, result) = match command {
            Command::Stop(reply) => {
                let result = match self.listener.take() {
                    Some(_) => Ok(()),
                    None => Err("already stopped".to_string()),
                };
                (reply, result)
            }
            Command::Restart(reply) => {
                // Closed first: the new socket binds the same address.
                self.listener = None;
                let config = ListenerConfig {
                    bind: self.last,
                    ..self.entry.config.clone()
                };
                let result = match super::tcp::bind(&config) {
                    Ok(l) => {
                        self.listener = Some(l);
                        Ok(())
                    }
                    Err(e) => Err(format!("cannot bind {}: {e}", self.last)),
                };
                (reply, result)
            }
        };
        let bound = self.listener.as_ref().and_then(|l| l.local_addr().ok());
        self.entry.set_bound(bound);
        match &result {
            Ok(()) => {
                tracing::info!(listener = %id, addr = ?bound, "listener {}", if bound.is_some() { "restarted" } else { "stopped" })
            }
            Err(e) => tracing::warn!(listener = %id, error = %e, "listener command failed"),
        }
        let _ = reply.send(result);
    }
}
