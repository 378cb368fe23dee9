//! Admission at accept: a connection past the node's open-file ceiling or its
//! listener's `max_connections` is refused cleanly instead of silently closed. On a
//! plain TCP listener it is read for its CONNECT (bounded) and answered with CONNACK
//! 0x97 Quota exceeded (5.0) or return code 3 Server unavailable (3.1/3.1.1), so the
//! client knows to back off; on TLS and WebSocket listeners, where answering would
//! cost a handshake, it is closed before CONNECT. Refusals are counted and logged at
//! most once every 10 s; a failing `accept` (EMFILE, ENFILE) backs off.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ceiling::{self, Slot, REFUSALS_IN_FLIGHT};
use super::control::{ListenerEntry, Refusal};
use crate::broker::Broker;
use crate::codec::{self, ConnAck, Packet, Properties, ProtocolVersion, ReasonCode};
use crate::config::ListenerConfig;
use crate::logging::Throttle;
use crate::metrics::Metrics;

/// How long a refused client gets to send its CONNECT and take the CONNACK.
const REFUSAL_WAIT: Duration = Duration::from_secs(3);
/// A CONNECT bigger than this is not waited for (the refusal holds a file meanwhile).
const REFUSAL_READ_MAX: usize = 16 * 1024;
/// Pause after a failed `accept` (out of files): the pending connection stays in the
/// backlog, so retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const LOG_PERIOD_MS: u64 = 10_000;

/// The listener's permit and the node's slot for a new connection, or why not.
pub fn admit(limit: &Arc<Semaphore>) -> Result<(OwnedSemaphorePermit, Slot), Refusal> {
    let slot = Slot::take().ok_or(Refusal::Ceiling)?;
    let permit = limit
        .clone()
        .try_acquire_owned()
        .map_err(|_| Refusal::MaxConns)?;
    Ok((permit, slot))
}

/// Refuse `stream` (`why` is `Ceiling` or `MaxConns`): count it for the node and in
/// the listener's `shutdown_count`, log (throttled), and answer it in the background.
pub fn refuse(
    broker: &Arc<Broker>,
    entry: &ListenerEntry,
    stream: TcpStream,
    peer: SocketAddr,
    why: Refusal,
) {
    let config = &entry.config;
    entry.refused(why);
    static CEILING: Throttle = Throttle::new();
    static MAX_CONNECTIONS: Throttle = Throttle::new();
    let (counter, throttle, max, reason) = match why {
        Refusal::Ceiling => (
            &broker.metrics.connections_refused_ceiling,
            &CEILING,
            ceiling::max_connections(),
            "open-file ceiling reached",
        ),
        // `admit` refuses for the ceiling or `max_connections` only.
        _ => (
            &broker.metrics.connections_refused_max,
            &MAX_CONNECTIONS,
            config.max_connections,
            "listener's max_connections reached",
        ),
    };
    Metrics::inc(counter);
    if let Some(skipped) = throttle.ready(crate::message::now_ms(), LOG_PERIOD_MS) {
        tracing::warn!(listener = %config.id(), %peer, max, not_logged_since = skipped, "{reason}; connection refused");
    }
    // TLS and WebSocket clients would need a handshake first; and refusals in flight
    // are bounded, as each holds a file.
    static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
    if config.tls.is_some() || config.ws.is_some() {
        return; // dropping the stream closes it
    }
    if IN_FLIGHT.fetch_add(1, Ordering::Relaxed) >= REFUSALS_IN_FLIGHT as usize {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_WAIT, answer(stream)).await;
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    });
}

/// Read the CONNECT and answer it with a refusing CONNACK in its version.
async fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(256);
    let version = loop {
        match codec::decode_connect(&mut buf, REFUSAL_READ_MAX) {
            Ok(Some(Packet::Connect(connect))) => break connect.protocol,
            Ok(None) => {}
            // Not MQTT, or not a CONNECT: nothing to answer.
            Ok(Some(_)) | Err(_) => return Ok(()),
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    };
    let mut out = BytesMut::with_capacity(8);
    if codec::encode(&refusal_connack(version), version, &mut out).is_ok() {
        stream.write_all(&out).await?;
        stream.shutdown().await?;
    }
    Ok(())
}

/// 0x97 Quota exceeded for 5.0; for 3.1 and 3.1.1 return code 3, Server unavailable
/// (3.1.1 has no quota code; 3 tells the client to try again later).
fn refusal_connack(version: ProtocolVersion) -> Packet {
    let reason = match version {
        ProtocolVersion::V5 => ReasonCode::QUOTA_EXCEEDED,
        _ => ReasonCode::SERVER_UNAVAILABLE,
    };
    Packet::ConnAck(ConnAck {
        session_present: false,
        reason,
        properties: Properties::default(),
    })
}

/// After a failed `accept`: count, log (throttled) and pause instead of spinning.
pub async fn accept_failed(broker: &Broker, config: &ListenerConfig, error: &std::io::Error) {
    static FAILED: Throttle = Throttle::new();
    Metrics::inc(&broker.metrics.accept_failed);
    if let Some(skipped) = FAILED.ready(crate::message::now_ms(), LOG_PERIOD_MS) {
        tracing::warn!(listener = %config.id(), %error, not_logged_since = skipped, backoff_ms = ACCEPT_BACKOFF.as_millis() as u64, "accept failed (out of open files?); backing off");
    }
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(version: ProtocolVersion) -> Vec<u8> {
        let mut out = BytesMut::new();
        codec::encode(&refusal_connack(version), version, &mut out).expect("encodes");
        out.to_vec()
    }

    #[test]
    fn refusals_are_quota_exceeded_in_5_and_server_unavailable_in_3() {
        assert_eq!(encoded(ProtocolVersion::V5), [0x20, 0x03, 0x00, 0x97, 0x00]);
        assert_eq!(encoded(ProtocolVersion::V3_1_1), [0x20, 0x02, 0x00, 0x03]);
        assert_eq!(encoded(ProtocolVersion::V3_1), [0x20, 0x02, 0x00, 0x03]);
    }
}
