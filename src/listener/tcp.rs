//! The TCP listeners: plain (`listener.tcp.<name>`), MQTT over TLS
//! (`listener.ssl.<name>`), MQTT over WebSocket (`listener.ws.<name>`) and over
//! WebSocket over TLS (`listener.wss.<name>`); the TLS handshake and the HTTP upgrade
//! run on the connection's task.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use super::admission::{accept_paced, admit, listener_zone};
use super::control::{Command, Control, Socket};
use super::rate::ConnRate;
use crate::broker::Broker;
use crate::config::ListenerConfig;
use crate::connection::{ConnGuard, Edge, Env, Hibernation, ListenerLayers, ProxyLayer, Site};
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

/// What wakes the accept loop.
enum Next {
    Accepted(std::io::Result<(tokio::net::TcpStream, SocketAddr)>),
    Command(Command),
    Shutdown,
}

/// Accept until `shutdown` flips; every connection holds a clone of `alive`, also
/// while it hibernates. `control` brings `emqx_ctl listeners stop|restart`.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    broker: Arc<Broker>,
    config: ListenerConfig,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    alive: tokio::sync::mpsc::Sender<()>,
    hibernation: Hibernation,
    tls: Option<Arc<TlsListener>>,
    control: Control,
) {
    let Control {
        entry,
        mut commands,
    } = control;
    let limit = entry.slots.clone();
    let zone = listener_zone(broker.zone(&config.zone), &config);
    let name: Arc<str> = Arc::from(config.name.as_str());
    let proxy = config.proxy_protocol.then(|| ProxyLayer {
        timeout: config.proxy_protocol_timeout,
        entry: entry.clone(),
    });
    let layers =
        (tls.is_some() || config.ws.is_some() || proxy.is_some()).then(|| ListenerLayers {
            proxy,
            tls,
            ws: config.ws.clone(),
        });
    let mut stop = shutdown.clone();
    // Every connection holds the site (hibernated ones too); the node's shutdown
    // waits for the last `alive` clone, this loop's going when it returns.
    let site = Arc::new(Site {
        broker: broker.clone(),
        zone,
        listener: name,
        edge: Some(Edge {
            id: Arc::from(config.id()),
            layers,
            shutdown,
            hibernation,
            slots: limit.clone(),
            _alive: alive,
        }),
    });
    let mut socket = Socket::new(listener, entry.clone());
    let mut rate = config
        .max_conn_rate
        .map(|r| ConnRate::new(r, std::time::Instant::now()));
    loop {
        let next = tokio::select! {
            a = accept_paced(&socket, &mut rate) => Next::Accepted(a),
            Some(c) = commands.recv() => Next::Command(c),
            _ = stop.changed() => Next::Shutdown,
        };
        let accepted = match next {
            Next::Accepted(a) => a,
            Next::Command(c) => {
                socket.apply(c);
                continue;
            }
            Next::Shutdown => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                refuse::accept_failed(&broker, &config, &e).await;
                continue;
            }
        };
        // With the PROXY protocol the rules see the client, after its header.
        if !config.proxy_protocol && !admit(&broker, &entry, peer, false) {
            continue;
        }
        let (permit, slot) = match refuse::admit(&limit) {
            Ok(admitted) => admitted,
            Err(why) => {
                refuse::refuse(&broker, &entry, stream, peer, why);
                continue;
            }
        };
        let env = Env {
            site: site.clone(),
            guard: ConnGuard { permit, slot },
        };
        tokio::spawn(crate::connection::serve(env, stream, peer));
    }
}
