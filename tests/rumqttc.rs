//! Drives the real `emqx` binary with rumqttc, over MQTT 3.1.1 (`rumqttc`) and 5.0
//! (`rumqttc::v5`): a QoS 1 round trip, a persistent session across a kill -9 and a
//! restart on the same data dir, and a retained message across the same.
//!
//! Each test starts its own node on free loopback ports with a temp data dir; the node is
//! SIGKILLed and the dir removed when the test's `Node` drops. Every wait is bounded.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port");
    listener.local_addr().expect("local addr").port()
}

fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// One broker process on its own ports and data dir; restarts keep both.
struct Node {
    child: Option<Child>,
    port: u16,
    internal_port: u16,
    dir: tempfile::TempDir,
}

impl Node {
    fn start() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("quay-rs-")
            .tempdir_in("/tmp")
            .expect("create temp dir");
        let mut node = Node {
            child: None,
            port: free_port(),
            internal_port: free_port(),
            dir,
        };
        node.spawn();
        node
    }

    fn config() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("etc")
            .join("emqx.conf")
    }

    fn console_log(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.console_log())
            .expect("open console log");
        let root = self.dir.path();
        let mut child = Command::new(env!("CARGO_BIN_EXE_emqx"))
            .arg("--config")
            .arg(Self::config())
            .arg("foreground")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env(
                "EMQX_LISTENER__TCP__EXTERNAL",
                format!("127.0.0.1:{}", self.port),
            )
            .env(
                "EMQX_LISTENER__TCP__INTERNAL",
                format!("127.0.0.1:{}", self.internal_port),
            )
            // The TLS listener is not used here: any free port.
            .env("EMQX_LISTENER__SSL__EXTERNAL", "127.0.0.1:0")
            .env("EMQX_LISTENER__WS__EXTERNAL", "127.0.0.1:0")
            .env("EMQX_LISTENER__WSS__EXTERNAL", "127.0.0.1:0")
            .env("EMQX_NODE__DATA_DIR", root.join("data"))
            .env("EMQX_LOG__DIR", root.join("log"))
            .env("EMQX_LOG__LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn emqx");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("poll child") {
                panic!("emqx exited during start with {status}:\n{}", self.log());
            }
            if accepts(self.port) {
                break;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "emqx did not accept on {} within {START_TIMEOUT:?}:\n{}",
                    self.port,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// kill -9: the node gets no chance to flush anything.
    fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn crash_and_restart(&mut self) {
        self.crash();
        self.spawn();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.console_log()).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.crash();
        if std::thread::panicking() {
            eprintln!("---- emqx console log ----\n{}", self.log());
        }
    }
}

/// A client's event loop on its own task, events forwarded to a channel. The pump stops at
/// the first connection error, so a dropped client is not silently reconnected.
struct Pump<E> {
    events: mpsc::UnboundedReceiver<Result<E, String>>,
    task: JoinHandle<()>,
}

impl<E> Drop for Pump<E> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<E: std::fmt::Debug> Pump<E> {
    /// The first event `pick` maps to `Some`, skipping the others; panics after `EVENT_TIMEOUT`.
    async fn next<T>(&mut self, what: &str, mut pick: impl FnMut(E) -> Option<T>) -> T {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.events.recv()).await {
                Err(_) => panic!("no {what} within {EVENT_TIMEOUT:?}"),
                Ok(None) => panic!("event loop ended while waiting for {what}"),
                Ok(Some(Err(e))) => panic!("connection error while waiting for {what}: {e}"),
                Ok(Some(Ok(event))) => {
                    if let Some(t) = pick(event) {
                        return t;
                    }
                }
            }
        }
    }

    /// Waits until the event loop reports the connection closed (after a DISCONNECT).
    async fn closed(&mut self) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.events.recv()).await {
                Err(_) => panic!("connection not closed within {EVENT_TIMEOUT:?}"),
                Ok(None) | Ok(Some(Err(_))) => return,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// The client API both protocol versions share, written once over the names a version's
/// module imports (`AsyncClient`, `Event`, `Packet`, `ConnAck`, `Publish`, `QoS`, ...).
macro_rules! client_api {
    () => {
        pub struct Conn {
            pub client: AsyncClient,
            pub pump: Pump<Event>,
            pub connack: ConnAck,
        }

        /// Start the event loop on its own task and wait for a successful CONNACK.
        async fn open(options: MqttOptions) -> Conn {
            let (client, mut eventloop) = AsyncClient::new(options, 256);
            let (tx, events) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    let event = eventloop.poll().await.map_err(|e| e.to_string());
                    let stop = event.is_err();
                    if tx.send(event).is_err() || stop {
                        return;
                    }
                }
            });
            let mut pump = Pump { events, task };
            let connack = pump
                .next("CONNACK", |e| match e {
                    Event::Incoming(Packet::ConnAck(ack)) => Some(ack),
                    _ => None,
                })
                .await;
            assert_eq!(connack.code, ConnectReturnCode::Success);
            Conn {
                client,
                pump,
                connack,
            }
        }

        impl Conn {
            pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
                self.client
                    .subscribe(filter, qos)
                    .await
                    .expect("queue SUBSCRIBE");
                let codes = self
                    .pump
                    .next("SUBACK", |e| match e {
                        Event::Incoming(Packet::SubAck(ack)) => Some(ack.return_codes),
                        _ => None,
                    })
                    .await;
                assert_eq!(codes, vec![SubscribeReasonCode::Success(qos)]);
            }

            /// Publishes QoS 1 and waits for its PUBACK.
            pub async fn publish_acked(&mut self, topic: &str, payload: Vec<u8>, retain: bool) {
                self.client
                    .publish(topic, QoS::AtLeastOnce, retain, payload)
                    .await
                    .expect("queue PUBLISH");
                self.pump
                    .next("PUBACK", |e| {
                        matches!(e, Event::Incoming(Packet::PubAck(_))).then_some(())
                    })
                    .await;
            }

            pub async fn next_publish(&mut self) -> Publish {
                self.pump
                    .next("PUBLISH", |e| match e {
                        Event::Incoming(Packet::Publish(p)) => Some(p),
                        _ => None,
                    })
                    .await
            }

            pub async fn disconnect(mut self) {
                self.client.disconnect().await.expect("queue DISCONNECT");
                self.pump.closed().await;
            }
        }
    };
}

mod v4 {
    use super::*;
    use rumqttc::{
        AsyncClient, ConnAck, ConnectReturnCode, Event, MqttOptions, Packet, Publish, QoS,
        SubscribeReasonCode,
    };

    client_api!();

    pub async fn connect(port: u16, id: &str, clean: bool) -> Conn {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_session(clean);
        open(options).await
    }
}

mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectReturnCode, Packet, Publish, SubscribeReasonCode,
    };
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    client_api!();

    pub async fn connect(
        port: u16,
        id: &str,
        clean_start: bool,
        session_expiry_s: Option<u32>,
    ) -> Conn {
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_clean_start(clean_start);
        options.set_session_expiry_interval(session_expiry_s);
        open(options).await
    }
}

#[tokio::test]
async fn v4_qos1_round_trip() {
    let node = Node::start();
    let mut sub = v4::connect(node.port, "rs-v4-sub", true).await;
    assert!(!sub.connack.session_present);
    sub.subscribe("rs/v4/+", rumqttc::QoS::AtLeastOnce).await;
    let mut publisher = v4::connect(node.port, "rs-v4-pub", true).await;
    publisher
        .publish_acked("rs/v4/a", b"hello v4".to_vec(), false)
        .await;
    let got = sub.next_publish().await;
    assert_eq!(got.topic, "rs/v4/a");
    assert_eq!(&got.payload[..], b"hello v4");
    assert_eq!(got.qos, rumqttc::QoS::AtLeastOnce);
    assert!(!got.retain);
    publisher.disconnect().await;
    sub.disconnect().await;
}

#[tokio::test]
async fn v5_qos1_round_trip() {
    use rumqttc::v5::mqttbytes::QoS;
    let node = Node::start();
    let mut sub = v5::connect(node.port, "rs-v5-sub", true, None).await;
    let props = sub.connack.properties.clone().expect("CONNACK properties");
    assert!(
        props.receive_max.unwrap_or(0) >= 1,
        "Receive Maximum missing: {props:?}"
    );
    assert!(
        props.topic_alias_max.unwrap_or(0) >= 1,
        "Topic Alias Maximum missing: {props:?}"
    );
    assert!(
        props.max_packet_size.unwrap_or(0) >= 1024,
        "Maximum Packet Size missing: {props:?}"
    );
    sub.subscribe("rs/v5/#", QoS::AtLeastOnce).await;
    let mut publisher = v5::connect(node.port, "rs-v5-pub", true, None).await;
    publisher
        .publish_acked("rs/v5/a/b", b"hello v5".to_vec(), false)
        .await;
    let got = sub.next_publish().await;
    assert_eq!(&got.topic[..], b"rs/v5/a/b");
    assert_eq!(&got.payload[..], b"hello v5");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    publisher.disconnect().await;
    sub.disconnect().await;
}

const QUEUED: usize = 20;

#[tokio::test]
async fn v4_persistent_session_survives_kill_and_restart() {
    let mut node = Node::start();
    let mut sub = v4::connect(node.port, "rs-v4-persist", false).await;
    assert!(!sub.connack.session_present);
    sub.subscribe("rs/persist/v4", rumqttc::QoS::AtLeastOnce)
        .await;
    sub.disconnect().await;

    let mut publisher = v4::connect(node.port, "rs-v4-persist-pub", true).await;
    let sent: BTreeSet<Vec<u8>> = (0..QUEUED)
        .map(|i| format!("v4-{i:03}").into_bytes())
        .collect();
    for payload in &sent {
        publisher
            .publish_acked("rs/persist/v4", payload.clone(), false)
            .await;
    }
    drop(publisher);
    node.crash_and_restart();

    let mut sub = v4::connect(node.port, "rs-v4-persist", false).await;
    assert!(sub.connack.session_present, "session lost across kill -9");
    let mut got = BTreeSet::new();
    while got.len() < sent.len() {
        got.insert(sub.next_publish().await.payload.to_vec());
    }
    assert_eq!(got, sent);
    sub.disconnect().await;
}

#[tokio::test]
async fn v5_persistent_session_survives_kill_and_restart() {
    use rumqttc::v5::mqttbytes::QoS;
    let mut node = Node::start();
    let mut sub = v5::connect(node.port, "rs-v5-persist", false, Some(3600)).await;
    assert!(!sub.connack.session_present);
    sub.subscribe("rs/persist/v5", QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let mut publisher = v5::connect(node.port, "rs-v5-persist-pub", true, None).await;
    let sent: BTreeSet<Vec<u8>> = (0..QUEUED)
        .map(|i| format!("v5-{i:03}").into_bytes())
        .collect();
    for payload in &sent {
        publisher
            .publish_acked("rs/persist/v5", payload.clone(), false)
            .await;
    }
    drop(publisher);
    node.crash_and_restart();

    let mut sub = v5::connect(node.port, "rs-v5-persist", false, Some(3600)).await;
    assert!(sub.connack.session_present, "session lost across kill -9");
    let mut got = BTreeSet::new();
    while got.len() < sent.len() {
        got.insert(sub.next_publish().await.payload.to_vec());
    }
    assert_eq!(got, sent);
    sub.disconnect().await;
}

#[tokio::test]
async fn retained_message_survives_kill_and_restart() {
    let mut node = Node::start();
    let mut publisher = v4::connect(node.port, "rs-retain-pub", true).await;
    publisher
        .publish_acked("rs/retained/v4", b"kept v4".to_vec(), true)
        .await;
    drop(publisher);
    let mut publisher5 = v5::connect(node.port, "rs-retain-pub5", true, None).await;
    publisher5
        .publish_acked("rs/retained/v5", b"kept v5".to_vec(), true)
        .await;
    drop(publisher5);
    node.crash_and_restart();

    let mut sub = v4::connect(node.port, "rs-retain-sub", true).await;
    sub.subscribe("rs/retained/+", rumqttc::QoS::AtLeastOnce)
        .await;
    let mut got = BTreeSet::new();
    for _ in 0..2 {
        let p = sub.next_publish().await;
        assert!(
            p.retain,
            "retained message delivered without the retain flag: {p:?}"
        );
        got.insert((p.topic.clone(), p.payload.to_vec()));
    }
    let expected: BTreeSet<_> = [
        ("rs/retained/v4".to_string(), b"kept v4".to_vec()),
        ("rs/retained/v5".to_string(), b"kept v5".to_vec()),
    ]
    .into_iter()
    .collect();
    assert_eq!(got, expected);

    let mut sub5 = v5::connect(node.port, "rs-retain-sub5", true, None).await;
    sub5.subscribe("rs/retained/v5", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await;
    let p = sub5.next_publish().await;
    assert!(p.retain);
    assert_eq!(&p.payload[..], b"kept v5");
    sub5.disconnect().await;
    sub.disconnect().await;
}
