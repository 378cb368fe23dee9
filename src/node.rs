//! A running node: broker, listeners, control socket, expiry sweeps, and graceful
//! shutdown (stop accepting, close sessions with Server Shutting Down, flush).

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::{Broker, BrokerError};
use crate::config::Config;
use crate::connection::Hibernation;
use crate::plugins::Plugins;
use crate::transport::psk_file::PskTable;
use crate::transport::tls::{TlsListener, TlsSetupError};
use crate::{ctl, listener};

#[derive(Debug, Error)]
pub enum NodeError {
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("listener {name} cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error("plugin: {0}")]
    Plugin(#[from] crate::plugins::PluginError),
    #[error("ACL file {0}")]
    Acl(#[from] crate::acl::AclError),
    #[error("cannot read the PSK file {path} (psk.file.path): {source}")]
    PskFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the hibernation poller: {0}")]
    Hibernation(std::io::Error),
    #[error("control socket {path}: {source}")]
    Ctl {
        path: String,
        source: std::io::Error,
    },
}

/// The PSK identities, read once when some listener has `psk_ciphers` (a missing
/// file stops the start, as a missing certfile does; a malformed line is logged
/// and skipped).
fn load_psk_file(config: &Config) -> Result<Option<Arc<PskTable>>, NodeError> {
    let psk_listeners = config
        .listeners
        .iter()
        .filter(|l| l.tls.as_ref().is_some_and(|t| !t.psk_ciphers.is_empty()));
    if psk_listeners.count() == 0 {
        return Ok(None);
    }
    let path = &config.psk.path;
    let table =
        PskTable::load(path, &config.psk.delimiter).map_err(|source| NodeError::PskFile {
            path: path.display().to_string(),
            source,
        })?;
    tracing::info!(file = %path.display(), identities = table.len(), "PSK file loaded");
    Ok(Some(Arc::new(table)))
}

/// Run until SIGINT/SIGTERM or `emqx stop`. Returns after a graceful shutdown.
pub async fn run(config: Config) -> Result<(), NodeError> {
    let data_dir = config.node.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| NodeError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    // Before the store opens: RocksDB's share of the open-file limit comes from it.
    listener::ceiling::init(config.listeners.len());
    let broker = Broker::open(config)?;
    broker.acl.load_at_start(&broker.hooks)?;
    // Before any listener accepts: no client may pass an incomplete auth chain.
    let plugins = Arc::new(Plugins::new(
        broker.clone(),
        crate::plugins::registry::all(),
    ));
    plugins.start_at_boot().await?;
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // Each connection task holds a clone; when all are dropped, all have finished.
    let (alive_tx, mut alive_rx) = tokio::sync::mpsc::channel::<()>(1);

    // The control socket is bound before any listener: once a client can connect,
    // `emqx_ctl` answers too (its connections wait in the backlog until served).
    let ctl_path = ctl::socket_path(&data_dir);
    let ctl_listener = ctl::server::bind(&ctl_path).map_err(|source| NodeError::Ctl {
        path: ctl_path.display().to_string(),
        source,
    })?;
    let psk = load_psk_file(&broker.config)?;
    let mut bound = Vec::new();
    for l in &broker.config.listeners {
        let tls = TlsListener::for_listener(l, psk.as_ref())?;
        let listener = listener::tcp::bind(l).map_err(|source| NodeError::Bind {
            name: l.id(),
            addr: l.bind.to_string(),
            source,
        })?;
        tracing::info!(listener = %l.id(), addr = %l.bind, "listening");
        bound.push((l.clone(), listener, tls));
    }
    let hibernation = Hibernation::start().map_err(NodeError::Hibernation)?;
    let mut listeners = JoinSet::new();
    // What `emqx_ctl listeners` sees and commands.
    let mut table = Vec::new();
    for (l, listener, tls) in bound {
        let control = listener::control::Control::new(l.clone());
        table.push(control.entry.clone());
        listeners.spawn(listener::tcp::serve(
            broker.clone(),
            l,
            listener,
            shutdown_rx.clone(),
            alive_tx.clone(),
            hibernation.clone(),
            tls,
            control,
        ));
    }
    if let Some(port) = broker.config.node.rpc_server_port {
        let bind_err = |addr: String, source| NodeError::Bind {
            name: "rpc.tcp_server_port".into(),
            addr,
            source,
        };
        let addr = crate::cluster::server::listen_addr(&broker.config.node.name, port)
            .map_err(|e| bind_err(port.to_string(), std::io::Error::other(e)))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| bind_err(addr.to_string(), e))?;
        tracing::info!(addr = %addr, "node-to-node listener");
        tokio::spawn(crate::cluster::server::serve(
            broker.clone(),
            listener,
            shutdown_rx.clone(),
        ));
    }
    let pid_path = data_dir.join("emqx.pid");
    if let Err(e) = std::fs::write(&pid_path, format!("{}\n", std::process::id())) {
        tracing::warn!(path = %pid_path.display(), error = %e, "cannot write pid file");
    }
    let ctl_node = Arc::new(ctl::server::Node {
        broker: broker.clone(),
        listeners: Arc::new(table),
        plugins: plugins.clone(),
        stop: stop_tx.clone(),
    });
    tokio::spawn(ctl::server::serve(
        ctl_node,
        ctl_listener,
        shutdown_rx.clone(),
    ));
    let sweeper = {
        let broker = broker.clone();
        let mut shutdown = shutdown_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => { broker.sweep_expired(); }
                    _ = shutdown.changed() => break,
                }
            }
        })
    };
    let sys = crate::sys::start(&broker, shutdown_rx.clone());
    tracing::info!(node = %broker.config.node.name, version = ctl::VERSION, "quay is running");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => tracing::info!("SIGTERM: shutting down"),
        _ = stop_rx.changed() => tracing::info!("stop requested: shutting down"),
    }
    let _ = shutdown_tx.send(true);
    while listeners.join_next().await.is_some() {}
    // Hibernated connections have no task to see the signal: wake them.
    hibernation.shutdown();
    // Connections close with Server Shutting Down; give them a bounded time.
    drop(alive_tx);
    let drain = alive_rx.recv();
    if tokio::time::timeout(Duration::from_secs(10), drain)
        .await
        .is_err()
    {
        tracing::warn!("connections did not close within 10s");
    }
    let _ = sweeper.await;
    // After the connections: a bridge may still take their last messages.
    plugins.stop_all().await;
    let _ = sys.await;
    // Everything acknowledged is durable already; flushing memtables makes the next
    // start skip WAL replay.
    let store = broker.store.clone();
    match tokio::task::spawn_blocking(move || store.writer().barrier().and_then(|_| store.flush()))
        .await
    {
        Ok(Ok(())) => tracing::info!("store flushed"),
        _ => tracing::error!("store flush failed at shutdown"),
    }
    let _ = std::fs::remove_file(&ctl_path);
    let _ = std::fs::remove_file(&pid_path);
    broker.store.shutdown();
    tracing::info!("stopped");
    Ok(())
}
