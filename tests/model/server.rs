//! The broker side: the REAL broker (`quay::broker::Broker`, its publish, will,
//! expiry and recovery paths) over a simulated store (`quay_storage::SimStore`: the
//! real `WriterCore` on a `SimBackend`, stepped by the model), and the REAL channel
//! of each connection (`quay::sim::SimChannel`), opened by the real
//! `connection::accept::open`. Clients' packets go in as MQTT 5 bytes and what the
//! channels write comes out as bytes (`wire.rs`).
//!
//! Mirrored here is only the connection driver's I/O loop (`connection/mod.rs`,
//! `Connection::run` and `finish`): bytes in while the channel reads, mailbox events
//! in while it takes them, output out, timers when due, and on a kick what the client
//! had sent before it. `accept::open` is async (a takeover waits for the connection
//! it replaces, CONNACK for a store barrier, a resume for a read): its future is
//! polled with a no-op waker, one poll per accept step, so two CONNECTs of one client
//! id race as they do on the runtime.
//!
//! The model learns what it checks against from the broker's probe (`quay::sim`:
//! each routing, and when what it stored is durable) and a `message.dropped` hook
//! (deliveries a queue limit dropped, which may be missing).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quay::broker::Broker;
use quay::codec::{self, Packet};
use quay::config::{Config, Zone};
use quay::hooks::{DropReason, Hook};
use quay::message::Message;
use quay::sim::{Close, Fault, Now, Probe, SimChannel, SimClock, Simulation};
use quay_storage::sim::SimBackend;
use quay_storage::{Op, SimStore, Store};

use super::wire::{decode_down, encode_up, Up, Wire};
use super::Mutation;

pub type ClientId = Arc<str>;

/// What the model learns from the broker as it goes.
#[derive(Debug)]
pub enum Event {
    /// A message was routed (a new routing, not a QoS 2 duplicate).
    Routed {
        routing: u64,
        topic: String,
        payload: Bytes,
        retain: bool,
        publish_ms: u64,
    },
    /// What that routing stored is durable (its completion ran with success);
    /// `wrote`: it had something to store.
    Durable { routing: u64, wrote: bool },
    /// A delivery was dropped by a queue limit (allowed to be missing).
    Dropped { client: ClientId, payload: Bytes },
    /// A stored entry's message was gone: always a bug.
    Missing { client: ClientId },
}

/// Settings a seed chooses.
#[derive(Debug, Clone, Copy)]
pub struct BrokerSettings {
    pub max_inflight: u16,
    pub max_mqueue_len: usize,
    pub page_size: usize,
    pub retainer_expiry_s: u64,
    pub mqueue_store_qos0: bool,
}

/// The broker's probe and `message.dropped` hook: events, in order.
#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    fn push(&self, event: Event) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(event);
    }

    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Probe for Recorder {
    fn routed(&self, msg_id: u64, msg: &Message) {
        self.push(Event::Routed {
            routing: msg_id,
            topic: msg.topic_str().to_owned(),
            payload: msg.payload.clone(),
            retain: msg.retain,
            publish_ms: msg.publish_ms,
        });
    }

    fn durable(&self, msg_id: u64, wrote: bool) {
        self.push(Event::Durable {
            routing: msg_id,
            wrote,
        });
    }
}

type Opening = Pin<Box<dyn Future<Output = Result<SimChannel, Option<BytesMut>>>>>;

/// A CONNECT the broker read, on its way through `accept::open`.
struct Accepting {
    client: ClientId,
    connect: Option<Up>,
    open: Option<Opening>,
}

/// One connection as its driver holds it.
pub struct Conn {
    pub wire: u64,
    pub client: ClientId,
    channel: SimChannel,
    /// What was read from the socket and not yet decoded.
    rbuf: BytesMut,
}

pub struct Server {
    broker: Arc<Broker>,
    store: Arc<SimStore>,
    clock: Arc<SimClock>,
    zone: Arc<Zone>,
    recorder: Arc<Recorder>,
    pub conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    /// Per wire whose CONNECT arrived: its accept, until it gives a channel.
    accepting: BTreeMap<u64, Accepting>,
    pub wires: BTreeMap<u64, Wire>,
    pub problems: Vec<String>,
    /// Trace lines of what the broker did, for a failing seed's report.
    pub log: Vec<String>,
    pub now_ms: u64,
    retainer_expiry_ms: u64,
}

impl Server {
    /// A broker over `disk`, recovered from it as `Broker::open` does.
    pub fn open(
        disk: SimBackend,
        settings: BrokerSettings,
        base: Instant,
        epoch_ms: u64,
        now_ms: u64,
        restarts: u64,
        mutation: Mutation,
    ) -> Server {
        let mut config = Config::defaults(Path::new("/nonexistent/quay-model"));
        let zone = config
            .zones
            .get_mut("external")
            .expect("the default config has the external zone");
        zone.max_inflight = settings.max_inflight;
        zone.max_mqueue_len = settings.max_mqueue_len;
        zone.mqueue_store_qos0 = settings.mqueue_store_qos0;
        zone.hibernate_after = None;
        config.retainer.expiry_interval = Duration::from_secs(settings.retainer_expiry_s);
        let (store, sim) = Store::simulated(disk).expect("the simulated disk reads");
        let clock = Arc::new(SimClock::new(base, epoch_ms));
        clock.set_ms(now_ms);
        let recorder = Arc::new(Recorder::default());
        let faults = match mutation {
            Mutation::None => vec![],
            Mutation::PubrelBeforeDurable => vec![Fault::PubrelBeforeDurable],
            Mutation::PubcompBeforeDurable => vec![Fault::PubcompBeforeDurable],
            Mutation::PubackBeforeDurable => vec![Fault::PubackBeforeDurable],
        };
        let simulation = Simulation {
            clock: clock.clone(),
            faults,
            probe: recorder.clone(),
            page_size: settings.page_size,
        };
        // Incarnations unique across restarts, as the wall clock at start makes them.
        let broker = Broker::open_simulated(config, store, (restarts + 1) << 32, simulation)
            .expect("the broker recovers from the simulated disk");
        let dropped = recorder.clone();
        broker
            .hooks
            .add(
                "model",
                0,
                Hook::dropped(move |msg, reason, client| match (reason, client) {
                    (DropReason::QueueFull, Some(client)) => dropped.push(Event::Dropped {
                        client: client.clone(),
                        payload: msg.payload.clone(),
                    }),
                    (DropReason::Missing, Some(client)) => dropped.push(Event::Missing {
                        client: client.clone(),
                    }),
                    _ => {}
                }),
            )
            .expect("the model's hook registers");
        let zone = broker.zone("external");
        Server {
            broker,
            store: sim,
            clock,
            zone,
            recorder,
            conns: BTreeMap::new(),
            next_conn: 0,
            accepting: BTreeMap::new(),
            wires: BTreeMap::new(),
            problems: Vec::new(),
            log: Vec::new(),
            now_ms,
            retainer_expiry_ms: settings.retainer_expiry_s * 1000,
        }
    }

    pub fn now(&self) -> Now {
        self.clock.set_ms(self.now_ms);
        self.clock.now()
    }

    pub fn retainer_expiry_ms(&self) -> u64 {
        self.retainer_expiry_ms
    }

    pub fn store(&self) -> &SimStore {
        &self.store
    }

    pub fn take_events(&self) -> Vec<Event> {
        self.recorder.take()
    }

    /// Power failure: the disk as it survives (`keep` of the unsynced batches); all
    /// memory (broker, channels, pending accepts) is dropped.
    pub fn crash(self, keep: usize) -> SimBackend {
        let disk = self
            .store
            .crash(keep)
            .expect("a store crashes once, with its broker");
        drop(self.conns);
        drop(self.accepting);
        disk
    }

    // ---- connecting ----

    /// A CONNECT reached the broker on `wire` (the driver has read it).
    pub fn connect_arrived(&mut self, client: &ClientId, wire: u64) {
        let connect = self.wires.get_mut(&wire).and_then(|w| w.up.pop_front());
        self.accepting.insert(
            wire,
            Accepting {
                client: client.clone(),
                connect,
                open: None,
            },
        );
    }

    /// Wires whose CONNECT is still being accepted.
    pub fn accepting(&self) -> Vec<u64> {
        self.accepting.keys().copied().collect()
    }

    /// One poll of `wire`'s accept (started on the first). True when it finished.
    pub fn accept_step(&mut self, wire: u64) -> bool {
        let Some(accepting) = self.accepting.get_mut(&wire) else {
            return false;
        };
        if accepting.open.is_none() {
            let client = accepting.client.clone();
            let connect = accepting
                .connect
                .take()
                .and_then(|up| encode_up(&up, &client))
                .and_then(|mut bytes| codec::decode_connect(&mut bytes, usize::MAX).ok())
                .flatten();
            let Some(Packet::Connect(connect)) = connect else {
                self.problems
                    .push(format!("wire {wire}: no CONNECT where the client sent one"));
                self.accepting.remove(&wire);
                return true;
            };
            let open = quay::sim::open(self.broker.clone(), self.zone.clone(), *connect);
            accepting.open = Some(Box::pin(open));
        }
        let Some(open) = accepting.open.as_mut() else {
            return false;
        };
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready(opened) = open.as_mut().poll(&mut cx) else {
            return false;
        };
        let Some(accepting) = self.accepting.remove(&wire) else {
            return true;
        };
        match opened {
            Ok(channel) => {
                self.next_conn += 1;
                let id = self.next_conn;
                self.log.push(format!(
                    "  connection {id} of {} on wire {wire} accepted",
                    accepting.client
                ));
                self.conns.insert(
                    id,
                    Conn {
                        wire,
                        client: accepting.client,
                        channel,
                        rbuf: BytesMut::new(),
                    },
                );
            }
            Err(connack) => {
                self.log.push(format!("  wire {wire}: CONNECT refused"));
                self.write(wire, connack.unwrap_or_default());
                let now_ms = self.now_ms;
                if let Some(w) = self.wires.get_mut(&wire) {
                    w.server_closed = true;
                    w.closed_ms = now_ms;
                }
            }
        }
        true
    }

    // ---- the driver's loop ----

    /// One turn of `Connection::run` for connection `id`: mailbox events, room, a
    /// kick, store ops, output, then up to `packets` packets from the socket while
    /// the channel reads. True when something moved.
    pub fn turn(&mut self, id: u64, packets: usize) -> bool {
        let now = self.now();
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        let mut moved = false;
        let wire = conn.wire;
        let mut up = self
            .wires
            .get_mut(&wire)
            .map(|w| std::mem::take(&mut w.up))
            .unwrap_or_default();
        let result = drive(conn, &mut up, packets, now, &mut moved);
        if let Some(w) = self.wires.get_mut(&wire) {
            // What the channel did not read stays in the socket.
            up.append(&mut w.up);
            w.up = up;
        }
        let output = take_output(conn, now);
        moved |= !output.is_empty();
        self.write(wire, output);
        if let Some(conn) = self.conns.get(&id) {
            if let Err(close) = result {
                self.log.push(format!(
                    "  connection {id} of {} ends: {close:?}",
                    conn.client
                ));
                self.finish(id, close);
                moved = true;
            }
        }
        moved
    }

    /// The clock moved: each connection's timer runs if its deadline passed.
    pub fn on_timer_all(&mut self) {
        let now = self.now();
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            if conn.channel.next_deadline(now) > now.at {
                continue;
            }
            let result = conn.channel.on_timer(now);
            conn.channel.flush_store_ops();
            let wire = conn.wire;
            let output = take_output(conn, now);
            self.write(wire, output);
            if let Err(close) = result {
                self.finish(id, close);
            }
        }
    }

    /// The earliest deadline of any connection, if one is within `within`.
    pub fn deadline_within(&self, within: Duration) -> Option<u64> {
        let now = self.now();
        self.conns
            .values()
            .map(|c| c.channel.next_deadline(now))
            .min()
            .filter(|at| *at <= now.at + within)
            .map(|at| self.now_ms + at.saturating_duration_since(now.at).as_millis() as u64)
    }

    /// The broker's periodic sweep (`Broker::sweep_expired`) at the simulated now.
    pub fn sweep(&mut self) {
        let now = self.now();
        quay::sim::sweep(&self.broker, now);
    }

    /// `Connection::finish`: the channel says why and whether the will is due, its
    /// last output is written, the session is handed back.
    fn finish(&mut self, id: u64, close: Close) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        let now = self.now();
        let publish_will = conn.channel.close(&close, now);
        let output = take_output(&mut conn, now);
        self.write(conn.wire, output);
        let now_ms = self.now_ms;
        if let Some(w) = self.wires.get_mut(&conn.wire) {
            w.server_closed = true;
            w.closed_ms = now_ms;
        }
        conn.channel.detach(publish_will, now);
    }

    /// Bytes the broker wrote to `wire`, as its client will read them.
    fn write(&mut self, wire: u64, mut bytes: BytesMut) {
        if bytes.is_empty() {
            return;
        }
        match decode_down(&mut bytes) {
            Ok(packets) => {
                for p in packets {
                    self.log.push(format!("  wire {wire} <- {p:?}"));
                    if let Some(w) = self.wires.get_mut(&wire) {
                        w.down.push_back(p);
                    }
                }
            }
            Err(e) => self
                .problems
                .push(format!("wire {wire}: the broker wrote {e}")),
        }
    }

    // ---- the store ----

    pub fn pending_requests(&self) -> usize {
        self.store.pending_writes()
    }

    pub fn pending_reads(&self) -> usize {
        self.store.pending_reads()
    }

    pub fn pending_answers(&self) -> usize {
        self.store.pending_answers()
    }

    /// The writer thread's turn: one batch of the first `n` queued requests, then
    /// their completions in order. Returns the store's broken invariants.
    pub fn commit(&mut self, n: usize) -> Vec<String> {
        let (requests, problems) = self.store.commit(n);
        for (i, r) in requests.iter().enumerate() {
            let ops: Vec<String> = r.ops.iter().map(brief).collect();
            self.log.push(format!(
                "  batch[{i}]{}: {}",
                if r.waited { " (waited)" } else { "" },
                ops.join(", ")
            ));
        }
        problems
    }

    pub fn run_read(&mut self, i: usize, fail: bool) {
        self.store.run_read(i, fail);
    }

    pub fn answer_read(&mut self, i: usize) {
        self.store.answer(i);
    }
}

/// The moves of `Connection::run` up to its `select!` and the socket read in it
/// (`packets` packets from `up` at most); Err: the connection ends.
fn drive(
    conn: &mut Conn,
    up: &mut VecDeque<Up>,
    packets: usize,
    now: Now,
    moved: &mut bool,
) -> Result<(), Close> {
    let ch = &mut conn.channel;
    let mailbox = ch.mailbox().clone();
    let client = conn.client.clone();
    // `run` starts with the packets already buffered behind the CONNECT.
    ch.handle_bytes(&mut conn.rbuf, now)?;
    if ch.taking_events() {
        let events = mailbox.take_all();
        if !events.is_empty() {
            *moved = true;
            ch.handle_events(events, now)?;
            ch.handle_bytes(&mut conn.rbuf, now)?;
        }
        if mailbox.take_behind() {
            *moved = true;
            ch.behind(now);
        }
    }
    if ch.waiting_for_room() && mailbox.take_room() {
        *moved = true;
        ch.resume_reading(&mut conn.rbuf, now)?;
    }
    if let Some(reason) = mailbox.take_kick() {
        // What the client sent before it was replaced still counts (`drain_socket`).
        ch.end_read_pause();
        ch.handle_bytes(&mut conn.rbuf, now)?;
        while let Some(p) = up.pop_front() {
            let Some(bytes) = encode_up(&p, &client) else {
                break;
            };
            conn.rbuf.extend_from_slice(&bytes);
            ch.bytes_read(bytes.len(), now);
            ch.handle_bytes(&mut conn.rbuf, now)?;
        }
        return Err(Close::Kicked(reason));
    }
    ch.flush_store_ops();
    assert!(
        !ch.has_decisions(),
        "a hook decision without a deciding hook"
    );
    for _ in 0..packets {
        if !ch.reading() {
            break;
        }
        let Some(p) = up.pop_front() else {
            break;
        };
        *moved = true;
        let Some(bytes) = encode_up(&p, &client) else {
            // The socket read 0: the client is gone.
            return Err(Close::Lost);
        };
        conn.rbuf.extend_from_slice(&bytes);
        ch.bytes_read(bytes.len(), now);
        ch.handle_bytes(&mut conn.rbuf, now)?;
    }
    // The top of the next turn of the loop.
    ch.flush_store_ops();
    Ok(())
}

/// Everything the channel has for its client, as written.
fn take_output(conn: &mut Conn, now: Now) -> BytesMut {
    let out = BytesMut::from(conn.channel.output());
    if !out.is_empty() {
        conn.channel.written(out.len(), now);
    }
    out
}

/// One op, briefly, for traces.
fn brief(op: &Op) -> String {
    let payload =
        |m: &quay_storage::StoredMessage| String::from_utf8_lossy(&m.payload).into_owned();
    match op {
        Op::Message { id, msg } => format!("Message#{id}({})", payload(msg)),
        Op::Enqueue {
            client,
            incarnation,
            entry,
            ..
        } => format!(
            "Enqueue({client}@{incarnation:x}, msg#{}{})",
            entry.msg_id,
            entry
                .inline
                .as_ref()
                .map(|m| format!(" inline {}", payload(m)))
                .unwrap_or_default()
        ),
        Op::Ack { client, seq } => format!("Ack({client}/{seq})"),
        Op::AckUnreferenced { client, seq } => format!("AckUnreferenced({client}/{seq})"),
        Op::Release { client, seq, .. } => format!("Release({client}/{seq})"),
        Op::PutSession { client, record } => format!(
            "PutSession({client}@{:x}, expiry {}, disconnected {}, dup_below {})",
            record.incarnation, record.expiry_interval_s, record.disconnected_ms, record.dup_below
        ),
        Op::DeleteSession { client } => format!("DeleteSession({client})"),
        Op::PutWill { client, .. } => format!("PutWill({client})"),
        Op::DeleteWill { client } => format!("DeleteWill({client})"),
        Op::PutSubscription { client, filter, .. } => {
            format!("PutSubscription({client}, {filter})")
        }
        Op::DeleteSubscription { client, filter } => {
            format!("DeleteSubscription({client}, {filter})")
        }
        Op::PutAwaitingRel { client, packet_id } => {
            format!("PutAwaitingRel({client}, {packet_id})")
        }
        Op::DeleteAwaitingRel { client, packet_id } => {
            format!("DeleteAwaitingRel({client}, {packet_id})")
        }
        Op::PutRetained { topic, msg } => format!(
            "PutRetained({}, {})",
            String::from_utf8_lossy(topic),
            payload(msg)
        ),
        Op::DeleteRetained { topic } => {
            format!("DeleteRetained({})", String::from_utf8_lossy(topic))
        }
        Op::DeleteRetainedIfExpired { topic, .. } => format!(
            "DeleteRetainedIfExpired({})",
            String::from_utf8_lossy(topic)
        ),
        Op::PutCredential { table, name, .. } => format!("PutCredential({table:?}, {name})"),
        Op::DeleteCredential { table, name } => format!("DeleteCredential({table:?}, {name})"),
        Op::PutBridge { name, .. } => format!("PutBridge({name})"),
        Op::PutBanned { kind, who, .. } => format!("PutBanned({kind:?}, {who})"),
        Op::DeleteBanned { kind, who } => format!("DeleteBanned({kind:?}, {who})"),
    }
}
