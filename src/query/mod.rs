//! Typed, read-only queries of a running broker: clients, sessions, subscriptions,
//! routes, retained topics, stats and metrics, as plain serializable data.
//!
//! `emqx_ctl` formats these (`crate::ctl::commands`); the HTTP API and `$SYS` are
//! meant to reuse them. Lists come in pages ([`PageRequest`] -> [`Page`]) keyed by a
//! cursor (the last key seen), so a page stays right while sessions come and go
//! between requests and no caller needs the whole list in memory.
//!
//! A query never changes the broker, never blocks on the store (RocksDB) and never
//! holds a lock across more than one session or map at a time. Counts come from the
//! registry's gauges, not from scans.

mod page;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde::Serialize;

use crate::broker::registry::{SessionHandle, SubOpts};
use crate::broker::Broker;
use crate::metrics::Gauge;
pub use page::{Page, PageRequest, MAX_PAGE_LIMIT};

/// One connected client (also an offline session's last connection in `client`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientSummary {
    pub client_id: String,
    /// `ip:port` of the connection; empty for a session recovered at start.
    pub peer: String,
    pub connected: bool,
    /// 3, 4 or 5.
    pub proto_ver: u8,
    pub clean_start: bool,
    pub expiry_interval_s: u32,
    pub subscriptions: usize,
    /// Wall clock, ms since the epoch; 0 for a session recovered at start.
    pub connected_at_ms: u64,
}

/// One session, online or offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionInfo {
    pub client_id: String,
    pub clean_start: bool,
    pub expiry_interval_s: u32,
    pub connected: bool,
    pub subscriptions: usize,
}

/// The key subscriptions are paged by: client id, then filter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SubscriptionKey {
    pub client_id: String,
    pub filter: String,
}

/// One subscription of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubscriptionInfo {
    pub client_id: String,
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    /// 0 = none.
    pub subscription_id: u32,
}

/// One route: a filter somebody subscribed to, and the node its subscribers are on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteInfo {
    pub topic: String,
    pub node: String,
    /// Sessions subscribed to this filter on that node.
    pub subscribers: usize,
}

/// A gauge's value now and the highest it has been since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Count {
    pub count: u64,
    pub max: u64,
}

impl From<&Gauge> for Count {
    fn from(g: &Gauge) -> Count {
        Count {
            count: g.get(),
            max: g.max(),
        }
    }
}

/// `emqx_ctl broker stats`: what exists now, read from gauges (no scan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub connections: Count,
    pub connections_hibernated: Count,
    pub sessions: Count,
    pub sessions_persistent: Count,
    pub subscriptions: Count,
    pub topics: Count,
    pub routes: Count,
    pub retained: u64,
}

/// `emqx_ctl broker`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokerInfo {
    pub node: String,
    pub sysdescr: String,
    pub version: String,
    pub uptime_s: u64,
}

/// One counter, under its EMQX name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricValue {
    pub name: std::borrow::Cow<'static, str>,
    pub value: u64,
}

pub fn broker_info(broker: &Broker) -> BrokerInfo {
    BrokerInfo {
        node: broker.config.node.name.clone(),
        sysdescr: "Quay durable MQTT broker".into(),
        version: crate::ctl::VERSION.into(),
        uptime_s: broker.started_at.elapsed().as_secs(),
    }
}

pub fn stats(broker: &Broker) -> Stats {
    let g = broker.registry.gauges();
    Stats {
        connections: (&g.connections).into(),
        connections_hibernated: (&broker.hibernated).into(),
        sessions: (&g.sessions).into(),
        sessions_persistent: (&g.sessions_persistent).into(),
        subscriptions: (&g.subscriptions).into(),
        topics: (&g.topics).into(),
        routes: (&g.routes).into(),
        retained: broker.retained.len() as u64,
    }
}

pub fn metrics(broker: &Broker) -> Vec<MetricValue> {
    let mut values: Vec<MetricValue> = broker
        .metrics
        .snapshot()
        .into_iter()
        .map(|(name, value)| MetricValue {
            name: name.into(),
            value,
        })
        .collect();
    // Counted by the store's reader pool itself (it knows no broker metrics).
    values.push(MetricValue {
        name: "store.reads.refused".into(),
        value: broker.store.reader().refused(),
    });
    values.extend(
        broker
            .metric_sources
            .snapshot()
            .into_iter()
            .map(|(name, value)| MetricValue {
                name: name.into(),
                value,
            }),
    );
    values
}

/// Connected clients, by client id.
pub fn clients(broker: &Broker, req: &PageRequest<String>) -> Page<ClientSummary, String> {
    sessions_page(broker, req, |h| h.state().conn.is_some(), client_info)
}

/// The session of `client_id` as a client, connected or not.
pub fn client(broker: &Broker, client_id: &str) -> Option<ClientSummary> {
    broker.registry.get(client_id).map(|h| client_info(&h))
}

/// All sessions, online and offline, by client id.
pub fn sessions(broker: &Broker, req: &PageRequest<String>) -> Page<SessionInfo, String> {
    sessions_page(broker, req, |_| true, session_info)
}

pub fn session(broker: &Broker, client_id: &str) -> Option<SessionInfo> {
    broker.registry.get(client_id).map(|h| session_info(&h))
}

/// All subscriptions, by client id, then filter.
pub fn subscriptions(
    broker: &Broker,
    req: &PageRequest<SubscriptionKey>,
) -> Page<SubscriptionInfo, SubscriptionKey> {
    let after_client = req.after.as_ref().map(|k| k.client_id.as_str());
    let mut candidates = Vec::new();
    for handle in broker.registry.all() {
        if after_client.is_some_and(|a| &*handle.client_id < a) {
            continue;
        }
        let st = handle.state();
        candidates.extend(
            st.meta
                .subscriptions
                .iter()
                .map(|(filter, opts)| subscription_info(&handle.client_id, filter, opts)),
        );
    }
    page::select(candidates, req, |s| SubscriptionKey {
        client_id: s.client_id.clone(),
        filter: s.filter.clone(),
    })
}

/// The subscriptions of `client_id`'s session, by filter; None without a session.
pub fn subscriptions_of(broker: &Broker, client_id: &str) -> Option<Vec<SubscriptionInfo>> {
    let handle = broker.registry.get(client_id)?;
    let st = handle.state();
    let mut subs: Vec<SubscriptionInfo> = st
        .meta
        .subscriptions
        .iter()
        .map(|(filter, opts)| subscription_info(&handle.client_id, filter, opts))
        .collect();
    subs.sort_by(|a, b| a.filter.cmp(&b.filter));
    Some(subs)
}

/// The route table: each filter with subscribers, by filter.
pub fn routes(broker: &Broker, req: &PageRequest<String>) -> Page<RouteInfo, String> {
    let node = &broker.config.node.name;
    let routes = broker
        .registry
        .filters()
        .into_iter()
        .map(|(topic, subscribers)| RouteInfo {
            topic,
            node: node.clone(),
            subscribers,
        });
    page::select(routes, req, |r| r.topic.clone())
}

/// Topics holding a retained message, in order.
pub fn retained(broker: &Broker, req: &PageRequest<String>) -> Page<String, String> {
    // One more than asked: whether there is a next page is then known exactly.
    let mut topics = broker
        .retained
        .page(req.after.as_deref(), req.limit().saturating_add(1));
    let next = (topics.len() > req.limit()).then(|| {
        topics.truncate(req.limit());
        topics.last().cloned().unwrap_or_default()
    });
    Page {
        items: topics,
        next,
    }
}

fn sessions_page<T>(
    broker: &Broker,
    req: &PageRequest<String>,
    keep: impl Fn(&SessionHandle) -> bool,
    info: fn(&SessionHandle) -> T,
) -> Page<T, String> {
    let after = req.after.as_deref();
    let handles = broker
        .registry
        .all()
        .into_iter()
        .filter(|h| after.is_none_or(|a| &*h.client_id > a) && keep(h));
    // `after` is applied above, on the client id, without allocating a key.
    let page = page::lowest(handles, None, req.limit(), |h: &Arc<SessionHandle>| {
        h.client_id.clone()
    });
    Page {
        items: page.items.iter().map(|h| info(h)).collect(),
        next: page.next.map(|id| id.to_string()),
    }
}

fn client_info(h: &SessionHandle) -> ClientSummary {
    let st = h.state();
    ClientSummary {
        client_id: h.client_id.to_string(),
        peer: st.peer.to_string(),
        connected: st.conn.is_some(),
        proto_ver: st.meta.protocol_level,
        clean_start: !st.meta.persistent,
        expiry_interval_s: st.meta.expiry_interval_s,
        subscriptions: st.meta.subscriptions.len(),
        connected_at_ms: st.connected_at.get().unwrap_or(0),
    }
}

fn session_info(h: &SessionHandle) -> SessionInfo {
    let st = h.state();
    SessionInfo {
        client_id: h.client_id.to_string(),
        clean_start: !st.meta.persistent,
        expiry_interval_s: st.meta.expiry_interval_s,
        connected: st.conn.is_some(),
        subscriptions: st.meta.subscriptions.len(),
    }
}

fn subscription_info(client_id: &str, filter: &str, opts: &SubOpts) -> SubscriptionInfo {
    SubscriptionInfo {
        client_id: client_id.to_owned(),
        filter: filter.to_owned(),
        qos: opts.qos as u8,
        no_local: opts.no_local,
        retain_as_published: opts.retain_as_published,
        retain_handling: opts.retain_handling as u8,
        subscription_id: opts.subscription_id,
    }
}
