//! The figures `$SYS` publishes every `broker.sys_interval`, named as the guide's
//! tables name them (`stats/<name>`, `metrics/<name>`), and printed by `emqx_ctl
//! broker stats|metrics`. One list for both, so they cannot disagree.
//!
//! Everything here reads gauges and relaxed counters: no scan, no lock held.

use crate::broker::Broker;
use crate::metrics::packet_type::*;
use crate::metrics::Gauge;
use crate::query;

/// `(name under stats/, value)`: every line of the guide's statistics tables, then
/// Quay's own (hibernated connections).
pub fn stats(broker: &Broker) -> Vec<(&'static str, u64)> {
    let g = broker.registry.gauges();
    let zero = Gauge::default();
    // Every subscription is one subscriber entry and one set of options; there are no
    // shared subscriptions yet (their gauges stay at zero).
    let pairs: [(&'static str, &'static str, &Gauge); 11] = [
        ("connections/count", "connections/max", &g.connections),
        ("sessions/count", "sessions/max", &g.sessions),
        (
            "sessions/persistent/count",
            "sessions/persistent/max",
            &g.sessions_persistent,
        ),
        ("suboptions/count", "suboptions/max", &g.subscriptions),
        ("subscribers/count", "subscribers/max", &g.subscriptions),
        ("subscriptions/count", "subscriptions/max", &g.subscriptions),
        (
            "subscriptions/shared/count",
            "subscriptions/shared/max",
            &zero,
        ),
        ("topics/count", "topics/max", &g.topics),
        ("routes/count", "routes/max", &g.routes),
        ("retained/count", "retained/max", broker.retained.gauge()),
        (
            "connections/hibernated",
            "connections/hibernated/max",
            &broker.hibernated,
        ),
    ];
    pairs
        .iter()
        .flat_map(|(count, max, gauge)| [(*count, gauge.get()), (*max, gauge.max())])
        .collect()
}

/// The EMQX 4 counter names the guide's metrics table covers (published under the
/// guide's names); every other counter is published as `metrics/` + its name with
/// `.` as `/`.
const IN_THE_GUIDE: &[&str] = &[
    "bytes.received",
    "bytes.sent",
    "packets.received",
    "packets.sent",
    "packets.connect.received",
    "messages.received",
    "messages.sent",
    "messages.retained",
    "messages.dropped",
    "messages.forward",
    "messages.qos0.received",
    "messages.qos0.sent",
    "messages.qos1.received",
    "messages.qos1.sent",
    "messages.qos2.received",
    "messages.qos2.sent",
    "messages.qos2.expired",
    "messages.qos2.dropped",
];

/// `(name under metrics/, value)`: every line of the guide's metrics tables, then
/// Quay's other counters (drop reasons, refusals, sessions, the store).
pub fn metrics(broker: &Broker) -> Vec<(String, u64)> {
    let m = &broker.metrics;
    let p = &m.packets;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let mut out: Vec<(String, u64)> = vec![
        ("bytes/received".into(), get(&m.bytes_received)),
        ("bytes/sent".into(), get(&m.bytes_sent)),
        ("packets/received".into(), get(&m.packets_received)),
        ("packets/sent".into(), get(&m.packets_sent)),
        // CONNECT is decoded before the channel exists (`channel::connect::preface`).
        ("packets/connect".into(), get(&m.packets_connect)),
        ("packets/connack".into(), p.sent(CONNACK)),
        ("packets/publish/received".into(), p.received(PUBLISH)),
        ("packets/publish/sent".into(), p.sent(PUBLISH)),
    ];
    for (name, t) in [
        ("puback", PUBACK),
        ("pubrec", PUBREC),
        ("pubrel", PUBREL),
        ("pubcomp", PUBCOMP),
    ] {
        out.push((format!("packets/{name}/received"), p.received(t)));
        out.push((format!("packets/{name}/sent"), p.sent(t)));
        out.push((format!("packets/{name}/missed"), p.missed(t)));
    }
    out.extend([
        ("packets/subscribe".into(), p.received(SUBSCRIBE)),
        ("packets/suback".into(), p.sent(SUBACK)),
        ("packets/unsubscribe".into(), p.received(UNSUBSCRIBE)),
        ("packets/unsuback".into(), p.sent(UNSUBACK)),
        ("packets/pingreq".into(), p.received(PINGREQ)),
        ("packets/pingresp".into(), p.sent(PINGRESP)),
        ("packets/disconnect/received".into(), p.received(DISCONNECT)),
        ("packets/disconnect/sent".into(), p.sent(DISCONNECT)),
        ("packets/auth".into(), p.received(AUTH)),
        ("messages/received".into(), get(&m.messages_received)),
        ("messages/sent".into(), get(&m.messages_sent)),
        ("messages/expired".into(), get(&m.messages_dropped_expired)),
        ("messages/retained".into(), get(&m.messages_retained)),
        ("messages/dropped".into(), get(&m.messages_dropped)),
        ("messages/forward".into(), get(&m.messages_forward)),
        (
            "messages/qos0/received".into(),
            get(&m.messages_qos0_received),
        ),
        ("messages/qos0/sent".into(), get(&m.messages_qos0_sent)),
        (
            "messages/qos1/received".into(),
            get(&m.messages_qos1_received),
        ),
        ("messages/qos1/sent".into(), get(&m.messages_qos1_sent)),
        (
            "messages/qos2/received".into(),
            get(&m.messages_qos2_received),
        ),
        ("messages/qos2/sent".into(), get(&m.messages_qos2_sent)),
        (
            "messages/qos2/expired".into(),
            get(&m.messages_qos2_expired),
        ),
        (
            "messages/qos2/dropped".into(),
            get(&m.messages_qos2_dropped),
        ),
    ]);
    for v in query::metrics(broker) {
        if !IN_THE_GUIDE.contains(&v.name.as_ref()) {
            out.push((v.name.replace('.', "/"), v.value));
        }
    }
    out
}

/// `emqx_ctl broker`: what `version`, `sysdescr`, `uptime` and `datetime` carry.
pub fn broker_text(broker: &Broker) -> String {
    let info = query::broker_info(broker);
    format!(
        "sysdescr  : {}\nversion   : {}\nuptime    : {}\ndatetime  : {}\n",
        info.sysdescr,
        info.version,
        super::text::uptime(info.uptime_s),
        super::text::datetime(crate::message::now_ms()),
    )
}

/// `emqx_ctl broker stats`: [`stats`], with `.` for `/` (EMQX 4's stat names).
pub fn stats_text(broker: &Broker) -> String {
    let rows = stats(broker);
    lines(rows.iter().map(|(name, v)| (name.replace('/', "."), *v)))
}

/// `emqx_ctl broker metrics`: [`metrics`], under the names `$SYS` uses.
pub fn metrics_text(broker: &Broker) -> String {
    lines(metrics(broker).into_iter())
}

fn lines(rows: impl Iterator<Item = (String, u64)>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (name, value) in rows {
        let _ = writeln!(out, "{name:<32} : {value}");
    }
    out
}
