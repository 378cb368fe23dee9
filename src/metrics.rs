//! Broker counters, named as EMQX 4 names them (`emqx_ctl metrics`).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! metrics {
    ($($field:ident => $name:literal),* $(,)?) => {
        /// Monotonic counters; relaxed atomics (they are statistics, not synchronisation).
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(pub $field: AtomicU64,)*
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
    packets_publish_denied => "packets.publish.auth_error",
    packets_subscribe_denied => "packets.subscribe.auth_error",
    connections => "client.connected",
    disconnections => "client.disconnected",
    connections_stalled => "client.disconnected.stalled",
    publishers_paused => "client.flow_control.paused",
    messages_received => "messages.received",
    messages_sent => "messages.sent",
    messages_qos0_received => "messages.qos0.received",
    messages_qos1_received => "messages.qos1.received",
    messages_qos2_received => "messages.qos2.received",
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

impl Metrics {
    /// A delivery dropped because a queue was full (two counters, EMQX's names).
    pub fn dropped_queue_full(&self) {
        Metrics::inc(&self.messages_dropped);
        Metrics::inc(&self.messages_dropped_queue_full);
    }

    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}
