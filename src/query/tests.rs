//! Each query's content and paging, on a real broker (temp data dir) whose registry
//! and retained index are filled directly, without connections.

use std::sync::Arc;

use super::*;
use crate::broker::mailbox::Mailbox;
use crate::broker::registry::{ConnLink, SessionMeta, SessionState, Stamp};
use crate::codec::{QoS, RetainHandling};

struct Fixture {
    broker: Arc<Broker>,
    _dir: tempfile::TempDir,
}

fn broker() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = crate::config::Config::defaults(dir.path());
    config.node.data_dir = dir.path().join("data");
    config.node.name = "q1@127.0.0.1".into();
    let broker = Broker::open(config).expect("broker opens");
    Fixture { broker, _dir: dir }
}

/// Register a session; `peer` Some = connected from there.
fn add(broker: &Broker, client: &str, persistent: bool, peer: Option<&str>) -> Arc<SessionHandle> {
    let handle = SessionHandle::new(
        Arc::from(client),
        SessionState {
            meta: SessionMeta {
                incarnation: 7,
                persistent,
                expiry_interval_s: if persistent { 3600 } else { 0 },
                subscriptions: Default::default(),
                protocol_level: 5,
                dup_below: 0,
            },
            live: true,
            conn: peer.map(|_| ConnLink {
                conn_id: 1,
                mailbox: Arc::new(Mailbox::default()),
            }),
            offline_since: Stamp::NONE,
            zone: broker.zone("external"),
            connected_at: Stamp::at(1_700_000_000_000),
            peer: peer.unwrap_or("").into(),
        },
    );
    broker.registry.insert(handle.clone());
    handle
}

fn opts(qos: QoS) -> SubOpts {
    SubOpts {
        qos,
        no_local: true,
        retain_as_published: false,
        retain_handling: RetainHandling::Never,
        subscription_id: 9,
    }
}

/// Every page of a query, following `next`, with the sizes of the pages.
fn walk<T, K: Clone>(
    limit: usize,
    mut query: impl FnMut(&PageRequest<K>) -> Page<T, K>,
) -> (Vec<T>, Vec<usize>) {
    let mut items = Vec::new();
    let mut sizes = Vec::new();
    let mut req = PageRequest::first(limit);
    for _ in 0..1000 {
        let page = query(&req);
        sizes.push(page.items.len());
        items.extend(page.items);
        match page.next {
            Some(next) => req = PageRequest::after(next, limit),
            None => return (items, sizes),
        }
    }
    panic!("paging did not end");
}

#[test]
fn clients_are_the_connected_sessions_in_client_id_order() {
    let f = broker();
    let b = &f.broker;
    for (id, online) in [
        ("d", true),
        ("a", true),
        ("c", false),
        ("b", true),
        ("e", true),
    ] {
        let h = add(b, id, true, online.then_some("127.0.0.1:5000"));
        b.registry.subscribe(&h, "x/#", opts(QoS::AtLeastOnce));
    }
    let (listed, sizes) = walk(2, |req| clients(b, req));
    let ids: Vec<&str> = listed.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "d", "e"]);
    assert_eq!(sizes, [2, 2], "no empty page after an exact fit");
    assert_eq!(
        listed[0],
        ClientSummary {
            client_id: "a".into(),
            peer: "127.0.0.1:5000".into(),
            connected: true,
            proto_ver: 5,
            clean_start: false,
            expiry_interval_s: 3600,
            subscriptions: 1,
            connected_at_ms: 1_700_000_000_000,
        }
    );
    // `client` finds an offline session too, as `emqx_ctl clients show` always did.
    assert_eq!(client(b, "c").map(|c| c.connected), Some(false));
    assert_eq!(client(b, "nobody"), None);
    // A page after a client that has gone meanwhile still continues in order.
    let page = clients(b, &PageRequest::after("bb".to_string(), 10));
    let ids: Vec<&str> = page.items.iter().map(|c| c.client_id.as_str()).collect();
    assert_eq!((ids, page.next), (vec!["d", "e"], None));
}

#[test]
fn sessions_include_offline_and_clean_ones() {
    let f = broker();
    let b = &f.broker;
    add(b, "p-off", true, None);
    add(b, "p-on", true, Some("10.0.0.1:1"));
    add(b, "clean", false, Some("10.0.0.2:2"));
    let (listed, _) = walk(1, |req| sessions(b, req));
    assert_eq!(
        listed,
        vec![
            SessionInfo {
                client_id: "clean".into(),
                clean_start: true,
                expiry_interval_s: 0,
                connected: true,
                subscriptions: 0,
            },
            SessionInfo {
                client_id: "p-off".into(),
                clean_start: false,
                expiry_interval_s: 3600,
                connected: false,
                subscriptions: 0,
            },
            SessionInfo {
                client_id: "p-on".into(),
                clean_start: false,
                expiry_interval_s: 3600,
                connected: true,
                subscriptions: 0,
            },
        ]
    );
    assert_eq!(session(b, "p-off"), Some(listed[1].clone()));
    assert_eq!(session(b, "gone"), None);
}

#[test]
fn subscriptions_page_by_client_then_filter() {
    let f = broker();
    let b = &f.broker;
    let x = add(b, "x", true, None);
    let y = add(b, "y", false, Some("127.0.0.1:2"));
    for filter in ["b", "a/+", "c/#"] {
        b.registry.subscribe(&x, filter, opts(QoS::ExactlyOnce));
    }
    b.registry.subscribe(&y, "a/+", opts(QoS::AtMostOnce));
    let (subs, sizes) = walk(2, |req| subscriptions(b, req));
    let keys: Vec<(&str, &str, u8)> = subs
        .iter()
        .map(|s| (s.client_id.as_str(), s.filter.as_str(), s.qos))
        .collect();
    assert_eq!(
        keys,
        [
            ("x", "a/+", 2),
            ("x", "b", 2),
            ("x", "c/#", 2),
            ("y", "a/+", 0)
        ]
    );
    assert_eq!(sizes, [2, 2]);
    assert_eq!(
        subs[0],
        SubscriptionInfo {
            client_id: "x".into(),
            filter: "a/+".into(),
            qos: 2,
            no_local: true,
            retain_as_published: false,
            retain_handling: 2,
            subscription_id: 9,
        }
    );
    // A cursor in the middle of one client's subscriptions.
    let page = subscriptions(
        b,
        &PageRequest::after(
            SubscriptionKey {
                client_id: "x".into(),
                filter: "b".into(),
            },
            10,
        ),
    );
    let filters: Vec<&str> = page.items.iter().map(|s| s.filter.as_str()).collect();
    assert_eq!(filters, ["c/#", "a/+"]);
    let of_x = subscriptions_of(b, "x").expect("x has a session");
    let filters: Vec<&str> = of_x.iter().map(|s| s.filter.as_str()).collect();
    assert_eq!(filters, ["a/+", "b", "c/#"]);
    assert_eq!(subscriptions_of(b, "none"), None);
}

#[test]
fn routes_are_distinct_filters_with_their_subscriber_counts() {
    let f = broker();
    let b = &f.broker;
    let x = add(b, "x", false, Some("127.0.0.1:1"));
    let y = add(b, "y", false, Some("127.0.0.1:2"));
    b.registry.subscribe(&x, "t/+", opts(QoS::AtMostOnce));
    b.registry.subscribe(&y, "t/+", opts(QoS::AtMostOnce));
    b.registry.subscribe(&y, "s", opts(QoS::AtMostOnce));
    let (listed, sizes) = walk(1, |req| routes(b, req));
    assert_eq!(
        listed,
        vec![
            RouteInfo {
                topic: "s".into(),
                node: "q1@127.0.0.1".into(),
                subscribers: 1
            },
            RouteInfo {
                topic: "t/+".into(),
                node: "q1@127.0.0.1".into(),
                subscribers: 2
            },
        ]
    );
    assert_eq!(sizes, [1, 1]);
}

#[test]
fn retained_topics_page_in_order() {
    let f = broker();
    let b = &f.broker;
    for t in ["b/2", "a", "b/1", "c"] {
        b.retained.insert(t);
    }
    let (topics, sizes) = walk(3, |req| retained(b, req));
    assert_eq!(topics, ["a", "b/1", "b/2", "c"]);
    assert_eq!(sizes, [3, 1]);
    let (topics, sizes) = walk(4, |req| retained(b, req));
    assert_eq!((topics.len(), sizes), (4, vec![4]));
}

#[test]
fn stats_and_metrics_read_gauges_and_counters() {
    let f = broker();
    let b = &f.broker;
    let x = add(b, "x", true, Some("127.0.0.1:1"));
    add(b, "y", true, None);
    add(b, "z", false, Some("127.0.0.1:2"));
    b.registry.subscribe(&x, "a", opts(QoS::AtMostOnce));
    b.registry.subscribe(&x, "b", opts(QoS::AtMostOnce));
    b.retained.insert("r");
    b.registry.remove(&x);
    let s = stats(b);
    let c = |count, max| Count { count, max };
    assert_eq!(
        s,
        Stats {
            connections: c(1, 2),
            connections_hibernated: Count { count: 0, max: 0 },
            sessions: c(2, 3),
            sessions_persistent: c(1, 2),
            subscriptions: c(0, 2),
            topics: c(0, 2),
            routes: c(0, 2),
            retained: 1,
        }
    );
    crate::metrics::Metrics::inc(&b.metrics.sessions_created);
    let m = metrics(b);
    let created = m
        .iter()
        .find(|m| m.name == "session.created")
        .map(|m| m.value);
    assert_eq!(created, Some(1));
    // Every counter, and the reader pool's refusals (none here).
    assert_eq!(m.len(), b.metrics.snapshot().len() + 1);
    let refused = m.iter().find(|m| m.name == "store.reads.refused");
    assert_eq!(refused.map(|m| m.value), Some(0));
    let info = broker_info(b);
    assert_eq!(
        (info.node.as_str(), info.version.as_str()),
        ("q1@127.0.0.1", crate::ctl::VERSION)
    );
}

#[test]
fn queries_serialize_as_plain_json() {
    let f = broker();
    let b = &f.broker;
    add(b, "j", false, Some("127.0.0.1:9"));
    let json = serde_json::to_value(clients(b, &PageRequest::first(10))).expect("serializes");
    assert_eq!(json["items"][0]["client_id"], "j");
    assert_eq!(json["next"], serde_json::Value::Null);
    let json = serde_json::to_value(stats(b)).expect("serializes");
    assert_eq!(json["connections"]["count"], 1);
}
