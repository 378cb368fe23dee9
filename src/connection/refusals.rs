//! What the broker does not take from a client's transport, counted and logged once per
//! interval: bytes the transport refuses (a TLS record, a WebSocket frame), before or
//! after CONNECT, and a CONNECT that does not come in time; and what `read_more`
//! reports before CONNECT. A client that connects and leaves (a port probe, a health
//! check) is none of these: it is only a debug line.

use std::fmt;
use std::net::SocketAddr;

use super::Site;
use crate::channel::Channel;
use crate::logging::Throttle;
use crate::metrics::Metrics;

/// Each kind is logged at most this often (every one is counted).
const LOG_EVERY_MS: u64 = 10_000;

/// Why `read_more` stopped.
#[derive(Debug)]
pub(super) enum ReadFailed {
    /// The client closed (EOF, a TLS close_notify).
    Closed,
    /// The transport refused what arrived: a TLS record, a WebSocket frame.
    Refused(String),
    /// The socket failed (a reset, a write error while flushing).
    Io(std::io::Error),
}

impl fmt::Display for ReadFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadFailed::Closed => f.write_str("closed by the client"),
            ReadFailed::Refused(reason) => f.write_str(reason),
            ReadFailed::Io(e) => write!(f, "{e}"),
        }
    }
}

impl From<ReadFailed> for String {
    fn from(e: ReadFailed) -> String {
        e.to_string()
    }
}

impl ReadFailed {
    /// An error from reading through the transport: `InvalidData` is the transport's
    /// refusal, anything else the socket's.
    pub(super) fn from_read(e: std::io::Error) -> ReadFailed {
        match e.kind() {
            std::io::ErrorKind::InvalidData => ReadFailed::Refused(e.to_string()),
            _ => ReadFailed::Io(e),
        }
    }
}

/// The connection ended while its CONNECT was awaited: a refusal by the transport is
/// counted in `client.transport.refused` and logged once per interval.
pub(super) fn read_failed(site: &Site, peer: SocketAddr, why: &ReadFailed) {
    let ReadFailed::Refused(reason) = why else {
        tracing::debug!(%peer, listener = %site.listener_id(), reason = %why, "closed before CONNECT");
        return;
    };
    Metrics::inc(&site.broker.metrics.transport_refused);
    static REFUSED: Throttle = Throttle::new();
    if let Some(skipped) = REFUSED.ready(crate::message::now_ms(), LOG_EVERY_MS) {
        tracing::info!(%peer, listener = %site.listener_id(), reason, not_logged_since = skipped, "closed before CONNECT: the transport refused what the client sent");
    }
}

/// No CONNECT within `idle_timeout`: counted in `client.connect.timeout`, logged once
/// per interval.
pub(super) fn timed_out(site: &Site, peer: SocketAddr) {
    Metrics::inc(&site.broker.metrics.connect_timeout);
    static LATE: Throttle = Throttle::new();
    if let Some(skipped) = LATE.ready(crate::message::now_ms(), LOG_EVERY_MS) {
        tracing::info!(%peer, listener = %site.listener_id(), idle_timeout = ?site.zone.idle_timeout, not_logged_since = skipped, "no CONNECT within idle_timeout; closed");
    }
}

/// A connected client's bytes refused by its transport: counted in
/// `client.transport.refused`, logged once per interval; the connection closes.
pub(super) fn after_connect(ch: &Channel, error: &std::io::Error) {
    Metrics::inc(&ch.broker().metrics.transport_refused);
    static REFUSED: Throttle = Throttle::new();
    if let Some(skipped) = REFUSED.ready(crate::message::now_ms(), LOG_EVERY_MS) {
        tracing::info!(client_id = %ch.client_id(), listener = %ch.site().listener_id(), %error, not_logged_since = skipped, "the transport refused what the client sent; closing");
    }
}
