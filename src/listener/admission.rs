//! Who a listener lets in, at accept: `max_conn_rate` (the loop pauses accepting
//! while the bucket is empty, as EMQX 4) and the `access.N` rules (a denied peer is
//! closed at once). With `proxy_protocol = on` the rules apply to the client the
//! PROXY header names, so they are checked after the header, on the connection's task
//! (`connection::serve`), not here: the socket's peer is the load balancer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use super::control::{ListenerEntry, Refusal, Socket};
use super::rate::ConnRate;
use crate::broker::Broker;
use crate::config::{access_allowed, ListenerConfig, Zone, ZoneConfig};
use crate::metrics::Metrics;

/// Refusals logged at most once per this interval (each one is counted).
const LOG_EVERY_MS: u64 = 10_000;

/// The next connection, no sooner than `max_conn_rate` allows.
pub async fn accept_paced(
    socket: &Socket,
    rate: &mut Option<ConnRate>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    if let Some(rate) = rate.as_mut() {
        let wait = rate.wait(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
    let accepted = socket.accept().await;
    if let (Some(rate), Ok(_)) = (rate.as_mut(), &accepted) {
        rate.take(Instant::now());
    }
    accepted
}

/// Whether `peer` passes the listener's `access.N` rules; a refusal is counted
/// (`client.access_denied`, the listener's `shutdown_count`) and logged once per
/// interval. `proxied`: `peer` came from a PROXY header.
pub fn admit(broker: &Broker, entry: &ListenerEntry, peer: SocketAddr, proxied: bool) -> bool {
    if access_allowed(&entry.config.access, peer.ip()) {
        return true;
    }
    Metrics::inc(&broker.metrics.access_denied);
    entry.refused(Refusal::AccessDenied);
    static DENIED: crate::logging::Throttle = crate::logging::Throttle::new();
    if let Some(skipped) = DENIED.ready(crate::message::now_ms(), LOG_EVERY_MS) {
        tracing::info!(listener = %entry.config.id(), %peer, proxied, not_logged_since = skipped, "connection denied by the listener's access rules");
    }
    false
}

/// A broken or late PROXY header: counted and logged once per interval with the
/// socket's peer and the reason.
pub fn proxy_failed(broker: &Broker, entry: &ListenerEntry, socket_peer: SocketAddr, reason: &str) {
    Metrics::inc(&broker.metrics.proxy_protocol_failed);
    entry.refused(Refusal::ProxyProtocol);
    static FAILED: crate::logging::Throttle = crate::logging::Throttle::new();
    if let Some(skipped) = FAILED.ready(crate::message::now_ms(), LOG_EVERY_MS) {
        tracing::info!(listener = %entry.config.id(), peer = %socket_peer, reason, not_logged_since = skipped, "PROXY protocol header refused");
    }
}

/// The zone this listener's clients get: the named zone, with the listener's
/// `mountpoint` in place of the zone's when it has one.
pub fn listener_zone(zone: Arc<Zone>, config: &ListenerConfig) -> Arc<Zone> {
    match &config.mountpoint {
        None => zone,
        Some(mountpoint) => Arc::new(Zone {
            name: zone.name.clone(),
            config: ZoneConfig {
                mountpoint: Some(mountpoint.clone()),
                ..zone.config.clone()
            },
        }),
    }
}
