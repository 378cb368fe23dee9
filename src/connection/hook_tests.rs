//! The hook points as a connection runs them, end to end: a real driver and channel on
//! a loopback socket, rumqttc clients, hooks registered on the broker.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet as RPacket, QoS as RQoS};
use tokio::sync::mpsc;

use crate::broker::Broker;
use crate::hooks::{Access, AclResult, AuthResult, Decision, Hook, PublishResult};

const WAIT: Duration = Duration::from_secs(10);

/// A broker with a loopback listener driving real connections; returns its port.
async fn serve(broker: Arc<Broker>) -> u16 {
    super::test_listener::serve(broker, None, 64, |_| {}).await
}

/// A rumqttc client whose incoming PUBLISHes (topic, payload) and SUBACK codes come
/// out of the returned channel.
fn client(
    port: u16,
    id: &str,
    password: Option<&str>,
) -> (AsyncClient, mpsc::UnboundedReceiver<RPacket>) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(30));
    if let Some(password) = password {
        options.set_credentials("user", password);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for _ in 0..10_000 {
            match eventloop.poll().await {
                Ok(Event::Incoming(p)) => {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = tx.send(RPacket::Disconnect);
                    return;
                }
            }
        }
    });
    (client, rx)
}

async fn next_where(
    rx: &mut mpsc::UnboundedReceiver<RPacket>,
    pick: impl Fn(&RPacket) -> bool,
) -> RPacket {
    loop {
        let p = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("an event within the wait")
            .expect("the client still runs");
        if pick(&p) {
            return p;
        }
    }
}

fn broker() -> (tempfile::TempDir, Arc<Broker>) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::config::Config::defaults(dir.path());
    config.node.data_dir = dir.path().join("data");
    let broker = Broker::open(config).unwrap();
    (dir, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_authorize_rewrite_drop_and_observe_in_the_clients_order() {
    let (_dir, broker) = broker();
    let hooks = &broker.hooks;
    let connected = Arc::new(AtomicUsize::new(0));
    let disconnected = Arc::new(Mutex::new(Vec::new()));
    let subscribed = Arc::new(Mutex::new(Vec::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(Mutex::new(Vec::new()));
    hooks
        .add(
            "auth",
            0,
            Hook::authenticate(|_, creds| {
                let bad = creds.password.as_deref() == Some(b"wrong".as_slice());
                Decision::Ready(if bad {
                    AuthResult::Deny(crate::codec::ReasonCode::BAD_USER_NAME_OR_PASSWORD)
                } else {
                    AuthResult::Ignore
                })
            }),
        )
        .unwrap();
    hooks
        .add(
            "acl",
            0,
            Hook::check_acl(|_, access, topic| {
                match (access, topic) {
                    // A backend that takes its time: everything behind it waits.
                    (Access::Publish, t) if t.starts_with("slow/") => Decision::pending(async {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        AclResult::Allow
                    }),
                    (Access::Publish, t) if t.starts_with("deny/") => {
                        Decision::Ready(AclResult::Deny)
                    }
                    (Access::Subscribe, "forbidden/#") => Decision::Ready(AclResult::Deny),
                    _ => Decision::Ready(AclResult::Ignore),
                }
            }),
        )
        .unwrap();
    hooks
        .add(
            "rewrite",
            0,
            Hook::message_publish(|_, msg| match msg.topic_str() {
                "rewrite/x" => {
                    msg.payload = bytes::Bytes::from_static(b"rewritten");
                    PublishResult::Continue
                }
                "drop/x" => PublishResult::Drop,
                _ => PublishResult::Continue,
            }),
        )
        .unwrap();
    {
        let connected = connected.clone();
        hooks
            .add(
                "events",
                0,
                Hook::connected(move |_, _| {
                    connected.fetch_add(1, Ordering::SeqCst);
                }),
            )
            .unwrap();
        let disconnected = disconnected.clone();
        hooks
            .add(
                "events",
                0,
                Hook::disconnected(move |info, reason, _| {
                    disconnected
                        .lock()
                        .unwrap()
                        .push((info.client_id.to_string(), reason.as_str()));
                }),
            )
            .unwrap();
        let subscribed = subscribed.clone();
        hooks
            .add(
                "events",
                0,
                Hook::subscribed(move |_, filter, _| {
                    subscribed.lock().unwrap().push(filter.to_owned());
                }),
            )
            .unwrap();
        let dropped = dropped.clone();
        hooks
            .add(
                "events",
                0,
                Hook::dropped(move |msg, reason, _| {
                    dropped
                        .lock()
                        .unwrap()
                        .push((msg.topic_str().to_owned(), reason.as_str()));
                }),
            )
            .unwrap();
        let acked = acked.clone();
        hooks
            .add(
                "events",
                0,
                Hook::acked(move |_, _| {
                    acked.fetch_add(1, Ordering::SeqCst);
                }),
            )
            .unwrap();
    }
    let port = serve(broker.clone()).await;

    // Authentication: a wrong password is refused with CONNACK rc 4 (v3).
    let (_refused, mut refused_rx) = client(port, "hooks-refused", Some("wrong"));
    let refused = next_where(&mut refused_rx, |p| {
        matches!(p, RPacket::ConnAck(_) | RPacket::Disconnect)
    })
    .await;
    assert!(
        !matches!(refused, RPacket::ConnAck(ref a) if a.code == rumqttc::ConnectReturnCode::Success),
        "refused client got {refused:?}"
    );

    let (sub, mut sub_rx) = client(port, "hooks-sub", Some("right"));
    next_where(&mut sub_rx, |p| matches!(p, RPacket::ConnAck(_))).await;
    sub.subscribe("#", RQoS::AtLeastOnce).await.unwrap();
    let ack = next_where(&mut sub_rx, |p| matches!(p, RPacket::SubAck(_))).await;
    assert!(
        matches!(ack, RPacket::SubAck(ref a) if a.return_codes == [rumqttc::SubscribeReasonCode::Success(RQoS::AtLeastOnce)])
    );
    sub.subscribe("forbidden/#", RQoS::AtLeastOnce)
        .await
        .unwrap();
    let ack = next_where(&mut sub_rx, |p| matches!(p, RPacket::SubAck(_))).await;
    assert!(
        matches!(ack, RPacket::SubAck(ref a) if a.return_codes == [rumqttc::SubscribeReasonCode::Failure]),
        "a denied subscription is refused: {ack:?}"
    );

    let (publisher, mut pub_rx) = client(port, "hooks-pub", None);
    next_where(&mut pub_rx, |p| matches!(p, RPacket::ConnAck(_))).await;
    for topic in ["slow/1", "ok/1", "deny/1", "rewrite/x", "drop/x", "ok/2"] {
        publisher
            .publish(topic, RQoS::AtLeastOnce, false, topic.as_bytes().to_vec())
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 4 {
        if let RPacket::Publish(p) =
            next_where(&mut sub_rx, |p| matches!(p, RPacket::Publish(_))).await
        {
            got.push((
                p.topic.clone(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            ));
        }
    }
    let want: Vec<(String, String)> = [
        ("slow/1", "slow/1"),
        ("ok/1", "ok/1"),
        ("rewrite/x", "rewritten"),
        ("ok/2", "ok/2"),
    ]
    .iter()
    .map(|(t, p)| (t.to_string(), p.to_string()))
    .collect();
    assert_eq!(got, want, "held behind the slow decision, in the client's order; denied and dropped ones never arrive");
    // The publisher got an ack for every one (denied and dropped included).
    for _ in 0..6 {
        next_where(&mut pub_rx, |p| matches!(p, RPacket::PubAck(_))).await;
    }
    assert_eq!(
        broker
            .metrics
            .packets_publish_denied
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(
        broker
            .metrics
            .packets_subscribe_denied
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(*subscribed.lock().unwrap(), vec!["#".to_string()]);
    assert_eq!(
        *dropped.lock().unwrap(),
        vec![("drop/x".to_string(), "disallowed")],
        "the message a hook dropped is reported; a denied PUBLISH is not a dropped message"
    );
    assert_eq!(
        connected.load(Ordering::SeqCst),
        2,
        "the refused client never connected"
    );
    // The subscriber's client acks each delivery (QoS 1).
    let deadline = tokio::time::Instant::now() + WAIT;
    while acked.load(Ordering::SeqCst) < 4 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(acked.load(Ordering::SeqCst), 4);
    publisher.disconnect().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while disconnected.lock().unwrap().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        *disconnected.lock().unwrap(),
        vec![("hooks-pub".to_string(), "normal")]
    );
}

/// The per-client ACL cache: a backend is asked once per topic, answers that took a
/// backend round trip are cached too, and every way of clearing it makes the next
/// check ask again (one client's clean, a chain change, the ttl).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_answers_are_cached_per_client_until_cleared_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::config::Config::defaults(dir.path());
    config.node.data_dir = dir.path().join("data");
    config.access.acl_cache = Some(crate::config::AclCacheConfig {
        max_size: 32,
        ttl: Duration::from_secs(2),
    });
    let broker = Broker::open(config).unwrap();
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let calls = calls.clone();
        broker
            .hooks
            .add(
                "backend",
                0,
                Hook::check_acl(move |_, _, topic| {
                    calls.lock().unwrap().push(topic.to_owned());
                    if topic.starts_with("slow/") {
                        Decision::pending(async {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            AclResult::Allow
                        })
                    } else {
                        Decision::Ready(AclResult::Allow)
                    }
                }),
            )
            .unwrap();
    }
    let asked = |topic: &str| calls.lock().unwrap().iter().filter(|t| *t == topic).count();
    let port = serve(broker.clone()).await;
    let (c, mut rx) = client(port, "cached", None);
    next_where(&mut rx, |p| matches!(p, RPacket::ConnAck(_))).await;
    let publish = |topic: &'static str| {
        let c = c.clone();
        async move {
            c.publish(topic, RQoS::AtLeastOnce, false, b"x".to_vec())
                .await
                .unwrap();
        }
    };
    for _ in 0..3 {
        publish("a/1").await;
        next_where(&mut rx, |p| matches!(p, RPacket::PubAck(_))).await;
        publish("slow/1").await;
        next_where(&mut rx, |p| matches!(p, RPacket::PubAck(_))).await;
    }
    assert_eq!((asked("a/1"), asked("slow/1")), (1, 1), "{calls:?}");

    // The clean travels through the client's mailbox, so it may land after a publish
    // already read from the socket: publish until the backend is asked again.
    assert!(broker.registry.get("cached").unwrap().clean_acl_cache());
    for _ in 0..100 {
        publish("a/1").await;
        next_where(&mut rx, |p| matches!(p, RPacket::PubAck(_))).await;
        if asked("a/1") > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(asked("a/1"), 2, "asked again after this client's clean");
    publish("a/1").await;
    next_where(&mut rx, |p| matches!(p, RPacket::PubAck(_))).await;
    assert_eq!(asked("a/1"), 2, "and cached again");

    broker
        .hooks
        .invalidate(crate::hooks::HookPoint::ClientCheckAcl);
    publish("a/1").await;
    next_where(&mut rx, |p| matches!(p, RPacket::PubAck(_))).await;
    assert_eq!(asked("a/1"), 3, "asked again after the chain changed");

    tokio::time::sleep(Duration::from_millis(2_100)).await;
    publish("a/1").await;
    next_where(&mut rx, |p| matches!(p, RPacket::PubAck(_))).await;
    assert_eq!(asked("a/1"), 4, "asked again after the ttl");
}
