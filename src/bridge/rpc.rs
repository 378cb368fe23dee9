//! The RPC bridge's driver: forward the cache to another Quay node over the
//! node-to-node transport (`crate::cluster`), with the MQTT bridge's guarantees.
//!
//! The address is the peer's node name (`emqx2@127.0.0.1`); its node-to-node port is
//! `rpc.tcp_client_port` (or `name@host:port`). The link must prove it is that node
//! (`Link::dial` checks the cookie; the name it proves must match). Records go out in
//! `Forward` frames of up to `batch_count_limit`, up to `max_inflight_batches` frames
//! unacknowledged; the peer answers `ForwardAck { upto }` once they are stored there,
//! and only then does the cache forget them. What was in flight when a link ended is
//! sent again first on the next one (at least once, in order).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use quay_storage::segment::Record;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Bridge, Status};
use crate::cluster::frames::{Body, Carried, Forward, Frame, Ping};
use crate::cluster::link::Link;
use crate::message::now_ms;

/// (address to dial, node name the peer must prove).
pub fn peer(address: &str, client_port: u16) -> (String, String) {
    let (node, port) = match address.rsplit_once(':') {
        Some((node, port)) if port.parse::<u16>().is_ok() => (node, port.to_string()),
        _ => (address, client_port.to_string()),
    };
    let host = node.split_once('@').map_or(node, |(_, h)| h);
    (format!("{host}:{port}"), node.to_string())
}

pub async fn run(bridge: Arc<Bridge>, mut stop: watch::Receiver<bool>) {
    let mut inflight = tokio::select! {
        w = bridge.rpc_inflight.lock() => w,
        _ = stop.changed() => return,
    };
    let super::config::Address::Rpc(address) = bridge.config.address.clone() else {
        return;
    };
    let (addr, node) = peer(&address, bridge.broker.config.node.rpc_client_port);
    loop {
        bridge.set_status(Status::Connecting);
        let ended = tokio::select! {
            r = session(&bridge, &addr, &node, &mut inflight) => r,
            _ = stop.changed() => return,
        };
        let Err(why) = ended;
        bridge.set_status(Status::Disconnected);
        bridge.failed(&why);
        tokio::select! {
            _ = tokio::time::sleep(bridge.config.reconnect_interval) => {}
            _ = stop.changed() => return,
        }
    }
}

fn forward(bridge: &Bridge, records: &[Record]) -> Frame {
    Frame::of(Body::Forward(Forward {
        bridge: bridge.config.name.clone(),
        messages: records
            .iter()
            .map(|r| Carried {
                seq: r.seq,
                message: r.payload.clone(),
            })
            .collect(),
    }))
}

async fn session(
    bridge: &Arc<Bridge>,
    addr: &str,
    node: &str,
    inflight: &mut VecDeque<Record>,
) -> Result<Infallible, String> {
    let cfg = &bridge.config;
    let me = &bridge.broker.config.node.name;
    let mut link = Link::dial(addr, me, &bridge.broker.config.node.cookie)
        .await
        .map_err(|e| format!("link to {node} at {addr}: {e}"))?;
    if link.peer != node {
        return Err(format!("{addr} is node {}, not {node}", link.peer));
    }
    bridge.connected(addr);
    let batch = cfg.batch_count_limit.max(1);
    let window = cfg.max_inflight_batches.max(1) * batch;
    let resend: Vec<Record> = inflight.iter().cloned().collect();
    for chunk in resend.chunks(batch) {
        link.queue(&forward(bridge, chunk));
    }
    let keepalive = if cfg.keepalive.is_zero() {
        Duration::from_secs(60)
    } else {
        cfg.keepalive
    };
    let mut last_sent = Instant::now();
    let mut last_heard = Instant::now();
    let err = |e: crate::cluster::link::LinkError| format!("link to {node}: {e}");
    loop {
        while inflight.len() < window {
            let records = bridge.queue.pop(
                (window - inflight.len()).min(batch),
                cfg.batch_bytes_limit.min(usize::MAX as u64) as usize,
            );
            if records.is_empty() {
                break;
            }
            link.queue(&forward(bridge, &records));
            inflight.extend(records);
        }
        if link.flush().await.map_err(err)? {
            last_sent = Instant::now();
        }
        let wake = (last_sent + keepalive / 2).min(last_heard + keepalive * 3 / 2);
        let room = inflight.len() < window;
        tokio::select! {
            f = link.recv() => {
                last_heard = Instant::now();
                match f.map_err(err)?.body() {
                    Some(Body::ForwardAck(a)) if a.ok => {
                        let mut n = 0;
                        while inflight.front().is_some_and(|r| r.seq <= a.upto) {
                            inflight.pop_front();
                            n += 1;
                        }
                        bridge.counters.add_forwarded(n);
                        if n > 0 {
                            bridge.queue.ack(a.upto);
                        }
                    }
                    Some(Body::ForwardAck(_)) => {
                        return Err(format!("{node} could not store forwarded messages"))
                    }
                    Some(Body::Pong(_)) => {}
                    Some(Body::Refused(r)) => return Err(format!("{node} ended the link: {}", r.reason)),
                    _ => return Err(format!("unexpected frame from {node}")),
                }
            }
            _ = bridge.appended.notified(), if room => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        if now >= last_heard + keepalive * 3 / 2 {
            return Err(format!(
                "keepalive: nothing from {node} for {}s",
                (keepalive * 3 / 2).as_secs()
            ));
        }
        if now >= last_sent + keepalive / 2 {
            link.queue(&Frame::of(Body::Ping(Ping { at_ms: now_ms() })));
            last_sent = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::peer;

    #[test]
    fn the_peer_address_comes_from_the_node_name() {
        assert_eq!(
            peer("emqx2@127.0.0.1", 5369),
            ("127.0.0.1:5369".to_string(), "emqx2@127.0.0.1".to_string())
        );
        assert_eq!(
            peer("emqx2@127.0.0.1:6000", 5369),
            ("127.0.0.1:6000".to_string(), "emqx2@127.0.0.1".to_string())
        );
    }
}
