//! For tests: a loopback listener whose accepted connections run the real driver
//! (`serve`) with the given layers, as a node's listener does, without the node.

use std::sync::Arc;

use tokio::net::TcpStream;

use super::{ConnGuard, Edge, Env, Hibernation, ListenerLayers, Site};
use crate::broker::Broker;

/// Serve connections on a free loopback port (returned) with `layers` (None: plain
/// TCP), at most `max_connections` at once; `tune` sees each accepted socket first.
pub(super) async fn serve(
    broker: Arc<Broker>,
    layers: Option<ListenerLayers>,
    max_connections: usize,
    tune: fn(&TcpStream),
) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (alive, alive_rx) = tokio::sync::mpsc::channel(1);
    let (tx, shutdown) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let site = Arc::new(Site {
        broker: broker.clone(),
        zone: broker.zone("external"),
        listener: Arc::from("external"),
        edge: Some(Edge {
            id: Arc::from("mqtt:test:external"),
            layers,
            shutdown,
            hibernation: Hibernation::start().unwrap(),
            slots: slots.clone(),
            _alive: alive,
        }),
    });
    tokio::spawn(async move {
        // The node's side of `alive` and of the shutdown signal, kept while serving.
        let _kept = (alive_rx, tx);
        while let Ok((stream, peer)) = listener.accept().await {
            tune(&stream);
            let env = Env {
                site: site.clone(),
                guard: ConnGuard {
                    permit: slots.clone().try_acquire_owned().unwrap(),
                    slot: crate::listener::ceiling::Slot::take().unwrap(),
                },
            };
            tokio::spawn(super::serve(env, stream, peer));
        }
    });
    port
}
