//! The TCP listeners: plain (`listener.tcp.<name>`), MQTT over TLS
//! (`listener.ssl.<name>`), MQTT over WebSocket (`listener.ws.<name>`) and over
//! WebSocket over TLS (`listener.wss.<name>`); the TLS handshake and the HTTP upgrade
//! run on the connection's task.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};

use crate::broker::Broker;
use crate::config::ListenerConfig;
use crate::connection::{ConnGuard, Env, Hibernation, ListenerLayers};
use crate::transport::tls::TlsListener;

use super::refuse;

/// Bind now (so start-up fails on a taken port), serve in the background.
pub fn bind(config: &ListenerConfig) -> std::io::Result<TcpListener> {
    let socket = match config.bind {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(config.bind)?;
    socket.listen(config.backlog)
}

/// Accept until `shutdown` flips; every connection holds a clone of `alive`, also
/// while it hibernates.
pub async fn serve(
    broker: Arc<Broker>,
    config: ListenerConfig,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    alive: tokio::sync::mpsc::Sender<()>,
    hibernation: Hibernation,
    tls: Option<Arc<TlsListener>>,
) {
    let limit = Arc::new(Semaphore::new(
        config.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let zone = broker.zone(&config.zone);
    let name: Arc<str> = Arc::from(config.name.as_str());
    let layers = (tls.is_some() || config.ws.is_some()).then(|| {
        Arc::new(ListenerLayers {
            tls,
            ws: config.ws.clone(),
        })
    });
    let mut stop = shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                refuse::accept_failed(&broker, &config, &e).await;
                continue;
            }
        };
        let (permit, slot) = match refuse::admit(&limit) {
            Ok(admitted) => admitted,
            Err(why) => {
                refuse::refuse(&broker, &config, stream, peer, why);
                continue;
            }
        };
        let env = Env {
            broker: broker.clone(),
            zone: zone.clone(),
            listener: name.clone(),
            layers: layers.clone(),
            shutdown: shutdown.clone(),
            hibernation: hibernation.clone(),
            guard: ConnGuard {
                _permit: permit,
                _slot: slot,
                _alive: alive.clone(),
            },
        };
        tokio::spawn(crate::connection::serve(env, stream, peer));
    }
}
