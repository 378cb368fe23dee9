//! Broker counters, named as EMQX 4 names them (`emqx_ctl metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::codec::{Packet, QoS};

macro_rules! metrics {
    ($($field:ident => $name:literal),* $(,)?) => {
        /// Monotonic counters; relaxed atomics (they are statistics, not synchronisation).
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(pub $field: AtomicU64,)*
            /// MQTT packets by type (the guide's `packets/*`).
            pub packets: PacketCounts,
        }

        impl Metrics {
            /// (EMQX metric name, value) for every counter, in a stable order.
            pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
                vec![$(($name, self.$field.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

metrics! {
    bytes_received => "bytes.received",
    bytes_sent => "bytes.sent",
    packets_received => "packets.received",
    packets_sent => "packets.sent",
    packets_connect => "packets.connect.received",
    packets_malformed => "packets.malformed",
    tls_handshake_failed => "client.tls.handshake_failed",
    ws_handshake_failed => "client.ws.handshake_failed",
    proxy_protocol_failed => "client.proxy_protocol.failed",
    transport_refused => "client.transport.refused",
    connect_timeout => "client.connect.timeout",
    access_denied => "client.access_denied",
    packets_publish_denied => "packets.publish.auth_error",
    packets_subscribe_denied => "packets.subscribe.auth_error",
    connections => "client.connected",
    disconnections => "client.disconnected",
    connections_stalled => "client.disconnected.stalled",
    connections_refused_ceiling => "client.refused.ceiling",
    connections_refused_max => "client.refused.max_connections",
    accept_failed => "listener.accept.failed",
    publishers_paused => "client.flow_control.paused",
    messages_received => "messages.received",
    messages_sent => "messages.sent",
    messages_qos0_received => "messages.qos0.received",
    messages_qos1_received => "messages.qos1.received",
    messages_qos2_received => "messages.qos2.received",
    messages_qos0_sent => "messages.qos0.sent",
    messages_qos1_sent => "messages.qos1.sent",
    messages_qos2_sent => "messages.qos2.sent",
    messages_qos2_expired => "messages.qos2.expired",
    messages_qos2_dropped => "messages.qos2.dropped",
    messages_forward => "messages.forward",
    messages_dropped_sys_topic => "messages.dropped.sys_topic",
    messages_retained => "messages.retained",
    messages_dropped => "messages.dropped",
    messages_dropped_no_subscribers => "messages.dropped.no_subscribers",
    messages_dropped_queue_full => "delivery.dropped.queue_full",
    messages_dropped_expired => "delivery.dropped.expired",
    messages_dropped_too_large => "delivery.dropped.too_large",
    messages_qos2_duplicate => "messages.qos2.dropped.duplicate",
    sessions_created => "session.created",
    sessions_resumed => "session.resumed",
    sessions_takenover => "session.takenover",
    sessions_discarded => "session.discarded",
    sessions_expired => "session.terminated.expired",
}

/// Reads a plugin's figures: `(metric name, value)`.
pub type SourceFn = dyn Fn() -> Vec<(String, u64)> + Send + Sync;

/// Figures that plugins add to `emqx_ctl metrics` and `$SYS` while they run, by the
/// plugin that added them. Read only when the metrics are listed.
#[derive(Default)]
pub struct Sources(std::sync::RwLock<Vec<(&'static str, std::sync::Arc<SourceFn>)>>);

impl Sources {
    /// Add (or replace) `owner`'s figures.
    pub fn set(&self, owner: &'static str, f: std::sync::Arc<SourceFn>) {
        let mut v = self.0.write().unwrap_or_else(|p| p.into_inner());
        v.retain(|(o, _)| *o != owner);
        v.push((owner, f));
    }

    pub fn remove(&self, owner: &str) {
        let mut v = self.0.write().unwrap_or_else(|p| p.into_inner());
        v.retain(|(o, _)| *o != owner);
    }

    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let sources: Vec<_> = self
            .0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(_, f)| f.clone())
            .collect();
        sources.iter().flat_map(|f| f()).collect()
    }
}

impl Metrics {
    /// A delivery dropped because a queue was full (two counters, EMQX's names; a
    /// third for QoS 2).
    pub fn dropped_queue_full(&self, qos: QoS) {
        Metrics::inc(&self.messages_dropped);
        Metrics::inc(&self.messages_dropped_queue_full);
        self.dropped_qos2(qos);
    }

    /// `messages.qos2.dropped`, for a dropped delivery of QoS 2.
    pub fn dropped_qos2(&self, qos: QoS) {
        if qos == QoS::ExactlyOnce {
            Metrics::inc(&self.messages_qos2_dropped);
        }
    }

    /// A delivery whose Message Expiry ran out before it was sent.
    pub fn expired(&self, qos: QoS) {
        Metrics::inc(&self.messages_dropped_expired);
        if qos == QoS::ExactlyOnce {
            Metrics::inc(&self.messages_qos2_expired);
        }
    }

    /// A message sent to a subscriber at `qos`.
    pub fn sent_message(&self, qos: QoS) {
        Metrics::inc(&self.messages_sent);
        Metrics::inc(match qos {
            QoS::AtMostOnce => &self.messages_qos0_sent,
            QoS::AtLeastOnce => &self.messages_qos1_sent,
            QoS::ExactlyOnce => &self.messages_qos2_sent,
        });
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// MQTT control packets by their type number (1 CONNECT ..= 15 AUTH), received and
/// sent, and acknowledgements that named no packet in flight (`missed`). One relaxed
/// add per packet.
#[derive(Debug, Default)]
pub struct PacketCounts {
    received: [AtomicU64; 16],
    sent: [AtomicU64; 16],
    missed: [AtomicU64; 16],
}

/// MQTT control packet type numbers (MQTT 5 §2.1.2).
pub mod packet_type {
    pub const CONNECT: usize = 1;
    pub const CONNACK: usize = 2;
    pub const PUBLISH: usize = 3;
    pub const PUBACK: usize = 4;
    pub const PUBREC: usize = 5;
    pub const PUBREL: usize = 6;
    pub const PUBCOMP: usize = 7;
    pub const SUBSCRIBE: usize = 8;
    pub const SUBACK: usize = 9;
    pub const UNSUBSCRIBE: usize = 10;
    pub const UNSUBACK: usize = 11;
    pub const PINGREQ: usize = 12;
    pub const PINGRESP: usize = 13;
    pub const DISCONNECT: usize = 14;
    pub const AUTH: usize = 15;
}

fn type_of(p: &Packet) -> usize {
    use packet_type::*;
    match p {
        Packet::Connect(_) => CONNECT,
        Packet::ConnAck(_) => CONNACK,
        Packet::Publish(_) => PUBLISH,
        Packet::PubAck(_) => PUBACK,
        Packet::PubRec(_) => PUBREC,
        Packet::PubRel(_) => PUBREL,
        Packet::PubComp(_) => PUBCOMP,
        Packet::Subscribe(_) => SUBSCRIBE,
        Packet::SubAck(_) => SUBACK,
        Packet::Unsubscribe(_) => UNSUBSCRIBE,
        Packet::UnsubAck(_) => UNSUBACK,
        Packet::PingReq => PINGREQ,
        Packet::PingResp => PINGRESP,
        Packet::Disconnect(_) => DISCONNECT,
        Packet::Auth(_) => AUTH,
    }
}

impl PacketCounts {
    pub fn on_received(&self, p: &Packet) {
        Metrics::inc(&self.received[type_of(p)]);
    }

    pub fn on_sent(&self, p: &Packet) {
        Metrics::inc(&self.sent[type_of(p)]);
    }

    /// An ack (PUBACK, PUBREC, PUBREL, PUBCOMP) for a packet id not in flight.
    pub fn on_missed(&self, packet_type: usize) {
        Metrics::inc(&self.missed[packet_type & 15]);
    }

    pub fn received(&self, packet_type: usize) -> u64 {
        self.received[packet_type & 15].load(Ordering::Relaxed)
    }

    pub fn sent(&self, packet_type: usize) -> u64 {
        self.sent[packet_type & 15].load(Ordering::Relaxed)
    }

    pub fn missed(&self, packet_type: usize) -> u64 {
        self.missed[packet_type & 15].load(Ordering::Relaxed)
    }
}

/// A count of something that exists now (connections, sessions, ...), kept as it
/// changes, with the highest value it reached since start (EMQX's `*.count` and
/// `*.max`). Relaxed atomics: statistics, not synchronisation. The owner changes it
/// under the lock of the thing it counts, so it is exact whenever that is quiet.
#[derive(Debug, Default)]
pub struct Gauge {
    value: AtomicU64,
    max: AtomicU64,
}

impl Gauge {
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    pub fn inc(&self) {
        let now = self.value.fetch_add(1, Ordering::Relaxed) + 1;
        self.max.fetch_max(now, Ordering::Relaxed);
    }

    /// Never below zero: a decrement without its increment is a bug, not a wrap to
    /// 2^64 in `emqx_ctl broker stats`.
    pub fn dec(&self) {
        let _ = self
            .value
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    /// Set from an exact count the owner keeps (a map's or a trie's size).
    pub fn set(&self, value: u64) {
        self.value.store(value, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }
}

/// What the registry and the route table hold now; see docs/ARCHITECTURE.md ("Gauges").
#[derive(Debug, Default)]
pub struct Gauges {
    /// Registered sessions with a connection attached.
    pub connections: Gauge,
    /// Registered sessions, online or offline.
    pub sessions: Gauge,
    /// Registered sessions that are stored (persistent).
    pub sessions_persistent: Gauge,
    /// (client, filter) pairs in the route table.
    pub subscriptions: Gauge,
    /// Distinct filters in the route table.
    pub topics: Gauge,
    /// (filter, node) routes: one per distinct filter on a single node.
    pub routes: Gauge,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gauge_keeps_its_max_and_never_goes_below_zero() {
        let g = Gauge::default();
        g.inc();
        g.inc();
        g.dec();
        assert_eq!((g.get(), g.max()), (1, 2));
        g.dec();
        g.dec();
        assert_eq!((g.get(), g.max()), (0, 2));
        g.set(5);
        g.set(3);
        assert_eq!((g.get(), g.max()), (3, 5));
    }
}
