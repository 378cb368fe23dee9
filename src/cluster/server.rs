//! The node-to-node listener (`rpc.tcp_server_port`, on the node name's host):
//! accepts links, checks the cookie (`link.rs`), and serves what they carry.
//!
//! Served now: `Forward` from another node's RPC bridge. Each message is published
//! here through the normal path, in order; once every one of a frame is stored as
//! its subscribers need it, `ForwardAck { upto }` goes back and the sender's cache
//! forgets them. A message that cannot be stored acks nothing (`ok = false`) and the
//! link ends: the sender sends it again on its next link.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::frames::{Body, Forward, ForwardAck, Frame};
use super::link::{Link, LinkError};
use crate::broker::Broker;
use crate::message::Message;
use quay_storage::StoredMessage;

/// Where this node listens: its node name's host and `rpc.tcp_server_port`.
pub fn listen_addr(node: &str, port: u16) -> Result<SocketAddr, String> {
    let host = node.split_once('@').map_or("127.0.0.1", |(_, h)| h);
    let ip = host
        .parse::<std::net::IpAddr>()
        .map_err(|_| format!("node name {node}: the node-to-node listener needs an IP host"))?;
    Ok(SocketAddr::new(ip, port))
}

/// Accept links until `shutdown`.
pub async fn serve(
    broker: Arc<Broker>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "node-to-node accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let broker = broker.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let me = broker.config.node.name.clone();
            let link = match Link::accept(stream, &me, &broker.config.node.cookie).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(peer = %peer, error = %e, "node-to-node link refused");
                    return;
                }
            };
            tracing::info!(node = %link.peer, peer = %peer, "node-to-node link up");
            let node = link.peer.clone();
            let ended = tokio::select! {
                r = serve_link(&broker, link) => r,
                _ = shutdown.changed() => Ok(()),
            };
            match ended {
                Ok(()) | Err(LinkError::Closed) => {
                    tracing::info!(node = %node, "node-to-node link down")
                }
                Err(e) => tracing::warn!(node = %node, error = %e, "node-to-node link ended"),
            }
        });
    }
}

async fn serve_link(broker: &Arc<Broker>, mut link: Link) -> Result<(), LinkError> {
    loop {
        match link.recv().await?.body() {
            Some(Body::Forward(f)) => {
                let ack = store(broker, &link.peer, f).await;
                let ok = ack.ok;
                link.send(&Frame::of(Body::ForwardAck(ack))).await?;
                if !ok {
                    return Ok(());
                }
            }
            Some(Body::Ping(p)) => link.send(&Frame::of(Body::Pong(p))).await?,
            Some(Body::Refused(r)) => return Err(LinkError::Refused(r.reason)),
            _ => {
                return Err(LinkError::Handshake(
                    "unexpected frame on an established link".into(),
                ))
            }
        }
    }
}

/// Publish a `Forward`'s messages here, in order; the ack once all are stored.
async fn store(broker: &Arc<Broker>, peer: &str, f: Forward) -> ForwardAck {
    let Some(upto) = f.messages.last().map(|m| m.seq) else {
        return ForwardAck { upto: 0, ok: true };
    };
    let mut waits = Vec::with_capacity(f.messages.len());
    for carried in f.messages {
        let stored = match StoredMessage::decode(&carried.message) {
            Ok(m) => m,
            Err(e) => {
                // Not a message this node can read (a newer format): skipping it
                // would lose it silently; refusing keeps it in the sender's cache.
                tracing::error!(node = peer, bridge = %f.bridge, seq = carried.seq, error = %e, "forwarded message unreadable; refused");
                return ForwardAck { upto: 0, ok: false };
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        broker.publish(
            Message::from_stored(stored),
            Vec::new(),
            Box::new(move |ok| {
                let _ = tx.send(ok);
            }),
        );
        waits.push(rx);
    }
    let mut ok = true;
    for w in waits {
        ok &= w.await.unwrap_or(false);
    }
    if !ok {
        tracing::error!(node = peer, bridge = %f.bridge, "forwarded messages could not be stored; the sender keeps them");
    }
    ForwardAck {
        upto: if ok { upto } else { 0 },
        ok,
    }
}
