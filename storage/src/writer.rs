//! The one writer: group commit of every durable change.
//!
//! Requests queue on a channel; a dedicated thread gathers what is there (up to
//! `batch_max`, waiting at most `batch_window` after the first), turns it into one
//! `WriteBatch`, writes it with one fsync, and only then completes each request's
//! waiter, in submission order. That completion is what releases a PUBACK.
//!
//! The writer owns the state that must change atomically with the batch: each
//! session's next queue sequence number, its queue length, and each message's count of
//! live queue references (a message is deleted when that count reaches zero). These are
//! loaded lazily from disk the first time a session or message is touched, so opening a
//! store never scans queues. This module must never be called from async code in a way
//! that blocks: `submit` only sends on a channel.
//!
//! The thread (`run`) only gathers requests and completes waiters; building and
//! writing a batch is `WriterCore::commit`, generic over the `Backend`, so the model
//! test (`tests/model/`) drives the very same logic synchronously over a simulated
//! disk, choosing which requests form each batch.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::{Backend, RocksBackend};
use crate::keys;
use crate::keys::{AuthTable, BanKind};
use crate::records::{
    BannedRecord, BridgeRecord, CredentialRecord, DelayedWill, EntryHead, QueueEntry,
    SessionRecord, StoredMessage, SubscriptionRecord,
};
use crate::sim_store::SimStore;
use crate::store::{Result, StoreError};

pub type ClientId = Arc<str>;

/// One change. Per-client ops name the client by id.
#[derive(Debug, Clone)]
pub enum Op {
    /// Append a message to the log. Its reference count is the number of `Enqueue` ops
    /// in the same request that name it and are accepted; with none, it is not written.
    Message {
        id: u64,
        msg: StoredMessage,
    },
    /// Queue a delivery for a persistent session unless its queue already holds
    /// `max_len` entries (0 = no limit), or the session is not (any longer) the
    /// `incarnation` it was routed to. The completion reports the assigned sequence
    /// number, or `None` when the delivery was dropped.
    Enqueue {
        client: ClientId,
        incarnation: u64,
        entry: QueueEntry,
        max_len: u64,
    },
    /// Delivery finished (PUBACK/PUBCOMP, expiry or drop): remove the entry and
    /// release the message reference it still holds. The writer reads the entry
    /// (from this batch or the disk) to know that: an ack of an entry that is
    /// already gone (acked twice, or its session deleted) changes nothing.
    Ack {
        client: ClientId,
        seq: u64,
    },
    /// `Ack` of an entry its session knows holds no message reference (inline, or
    /// released): deleted without reading it, which is as idempotent (deleting an
    /// absent key changes nothing), unless the batch knows the entry or the writer
    /// counts the session's queue, which take the exact `Ack` path.
    AckUnreferenced {
        client: ClientId,
        seq: u64,
    },
    /// QoS 2 outbound PUBREC: the entry (`entry`, its released form) now only waits
    /// for PUBCOMP, and its message reference is released. Idempotent like `Ack`.
    Release {
        client: ClientId,
        seq: u64,
        entry: QueueEntry,
    },
    PutSession {
        client: ClientId,
        record: SessionRecord,
    },
    /// Remove a session with its subscriptions, queue and QoS 2 state. Not its
    /// delayed will: that is due when the session ends, and goes when published.
    DeleteSession {
        client: ClientId,
    },
    PutWill {
        client: ClientId,
        will: DelayedWill,
    },
    DeleteWill {
        client: ClientId,
    },
    PutSubscription {
        client: ClientId,
        filter: String,
        record: SubscriptionRecord,
    },
    DeleteSubscription {
        client: ClientId,
        filter: String,
    },
    PutAwaitingRel {
        client: ClientId,
        packet_id: u16,
    },
    DeleteAwaitingRel {
        client: ClientId,
        packet_id: u16,
    },
    PutRetained {
        topic: Bytes,
        msg: StoredMessage,
    },
    DeleteRetained {
        topic: Bytes,
    },
    /// Delete the retained message of `topic` if, as the batch leaves it, it expired
    /// at or before `now_ms` (a sweep's scan may be older than a new message).
    DeleteRetainedIfExpired {
        topic: Bytes,
        now_ms: u64,
    },
    /// Add or replace an entry of a built-in credential table.
    PutCredential {
        table: AuthTable,
        name: String,
        record: CredentialRecord,
    },
    DeleteCredential {
        table: AuthTable,
        name: String,
    },
    /// Replace what `emqx_ctl bridges` changed of bridge `name`.
    PutBridge {
        name: String,
        record: BridgeRecord,
    },
    /// Add or replace a ban.
    PutBanned {
        kind: BanKind,
        who: String,
        record: BannedRecord,
    },
    DeleteBanned {
        kind: BanKind,
        who: String,
    },
}

/// One result per `Enqueue` op (its seq, or None when dropped) and per
/// `DeleteRetainedIfExpired` op (Some(0) when deleted, None when kept), in op order.
pub type Enqueued = Vec<Option<u64>>;
pub type Completion = Box<dyn FnOnce(Result<Enqueued>) + Send>;

/// One request to the writer: its ops, applied together or not at all, and whether
/// someone waits for it to be durable (which makes its batch synced).
#[derive(Debug, Clone)]
pub struct WriteRequest {
    pub ops: Vec<Op>,
    pub waited: bool,
}

pub(crate) struct Request {
    pub(crate) ops: Vec<Op>,
    pub(crate) done: Option<Completion>,
}

enum Msg {
    Write(Request),
    /// Commit what is gathered, then exit.
    Stop,
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub fsync: bool,
    pub batch_window: Duration,
    pub batch_max: usize,
}

#[derive(Clone)]
pub struct WriterHandle {
    queue: Queue,
    detached: Arc<DetachedCounts>,
}

#[derive(Clone)]
enum Queue {
    Thread {
        tx: Sender<Msg>,
        thread: Arc<Mutex<Option<JoinHandle<()>>>>,
    },
    /// The model test's store: requests wait until the simulation commits them
    /// (`SimStore::commit`).
    Sim(Arc<SimStore>),
}

/// Detached requests submitted, and how many of them (in order) a synced batch has
/// made durable: equal means nothing written without a waiter is still unsynced.
#[derive(Default)]
pub(crate) struct DetachedCounts {
    submitted: AtomicU64,
    synced: AtomicU64,
}

impl WriterHandle {
    /// Queue `ops`; `done` runs on the writer thread once they are durable (or failed).
    /// It must be quick and must not block: hand results to another task.
    pub fn submit(&self, ops: Vec<Op>, done: Completion) {
        let request = Request {
            ops,
            done: Some(done),
        };
        let tx = match &self.queue {
            Queue::Thread { tx, .. } => tx,
            Queue::Sim(sim) => return sim.queue_write(request),
        };
        if let Err(mpsc::SendError(Msg::Write(req))) = tx.send(Msg::Write(request)) {
            if let Some(done) = req.done {
                done(Err(StoreError::Closed));
            }
        }
    }

    /// Queue `ops` and wait, without blocking a thread, until they are durable. With
    /// no ops it is a barrier: everything submitted before is durable when it returns.
    pub async fn write_durable(&self, ops: Vec<Op>) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            ops,
            Box::new(move |r| {
                let _ = tx.send(r.map(|_| ()));
            }),
        );
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queue `ops` with nobody waiting (acks, cleanup): durable with the next batch.
    pub fn submit_detached(&self, ops: Vec<Op>) {
        // Counted before it is sent, so `all_durable` can never miss it.
        self.detached.submitted.fetch_add(1, Ordering::SeqCst);
        let request = Request { ops, done: None };
        let tx = match &self.queue {
            Queue::Thread { tx, .. } => tx,
            Queue::Sim(sim) => return sim.queue_write(request),
        };
        if tx.send(Msg::Write(request)).is_err() {
            tracing::error!("store writer stopped; a write was dropped");
        }
    }

    /// True when every detached write submitted so far is durable: nothing a
    /// barrier would need to wait for (with fsync off: written).
    pub fn all_durable(&self) -> bool {
        self.detached.synced.load(Ordering::SeqCst)
            == self.detached.submitted.load(Ordering::SeqCst)
    }

    /// Wait until everything submitted before this call is durable. Not on the
    /// model test's store, which commits only when the simulation says so.
    pub fn barrier(&self) -> Result<()> {
        if let Queue::Sim(_) = self.queue {
            return Err(StoreError::Write(
                "a simulated store has no blocking barrier".into(),
            ));
        }
        let (tx, rx) = mpsc::channel();
        self.submit(
            Vec::new(),
            Box::new(move |r| {
                let _ = tx.send(r.map(|_| ()));
            }),
        );
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Commit what was submitted, stop the writer thread and wait for it. Later
    /// submits fail with `Closed`.
    pub fn stop(&self) {
        let Queue::Thread { tx, thread } = &self.queue else {
            return;
        };
        let _ = tx.send(Msg::Stop);
        let thread = thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            // A completion running on the writer thread may drop the last store
            // handle: never join yourself.
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

pub(crate) fn spawn(db: RocksBackend, config: WriterConfig) -> WriterHandle {
    let (tx, rx) = mpsc::channel();
    let core = WriterCore::new(db, config.fsync);
    let detached = core.detached.clone();
    let mut writer = Writer { core, config };
    let spawned = thread::Builder::new()
        .name("quay-store-writer".into())
        .spawn(move || writer.run(rx));
    let thread = match spawned {
        Ok(t) => Some(t),
        Err(e) => {
            // Without a writer every submit fails with Closed; nothing is acknowledged.
            tracing::error!(error = %e, "cannot start the store writer thread");
            None
        }
    };
    WriterHandle {
        queue: Queue::Thread {
            tx,
            thread: Arc::new(Mutex::new(thread)),
        },
        detached,
    }
}

/// The handle of a simulated store's writer (`sim_store`), counting detached writes
/// in `detached` as the thread's handle does.
pub(crate) fn simulated(sim: Arc<SimStore>, detached: Arc<DetachedCounts>) -> WriterHandle {
    WriterHandle {
        queue: Queue::Sim(sim),
        detached,
    }
}

/// The writer thread: gathers requests into batches for its `WriterCore`.
struct Writer {
    core: WriterCore<RocksBackend>,
    config: WriterConfig,
}

/// The writer's state and its batch logic, without a thread: see the module docs.
pub struct WriterCore<B: Backend> {
    db: B,
    fsync: bool,
    next_seq: HashMap<ClientId, u64>,
    queue_len: HashMap<ClientId, u64>,
    refs: HashMap<u64, u32>,
    /// A batch was written without fsync since the last synced one.
    unsynced: bool,
    detached: Arc<DetachedCounts>,
    /// Detached requests committed so far (all of them written).
    detached_written: u64,
}

impl Writer {
    fn run(&mut self, rx: Receiver<Msg>) {
        let mut stopping = false;
        while !stopping {
            let Ok(Msg::Write(first)) = rx.recv() else {
                break;
            };
            let mut waited = first.done.is_some();
            let mut requests = vec![first];
            // Gather what is already queued. Wait out the window only for a batch
            // that will be fsynced (someone waits): that is what the wait amortizes.
            // Detached writes (acks) go at once, without extra wake-ups.
            let now = Instant::now();
            let deadline = now.checked_add(self.config.batch_window).unwrap_or(now);
            while requests.len() < self.config.batch_max {
                let next = match rx.try_recv() {
                    Ok(m) => Ok(m),
                    Err(_) => {
                        let now = Instant::now();
                        if !waited || now >= deadline {
                            break;
                        }
                        // Within the window, wait for more only while more keeps
                        // coming: a quiet gap means the producers wait on this batch.
                        let gap = (self.config.batch_window / 4).min(deadline - now);
                        rx.recv_timeout(gap)
                    }
                };
                match next {
                    Ok(Msg::Write(r)) => {
                        waited |= r.done.is_some();
                        requests.push(r);
                    }
                    Ok(Msg::Stop) => {
                        stopping = true;
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        stopping = true;
                        break;
                    }
                }
            }
            self.commit(requests);
        }
        // Whatever arrived after the stop is refused, not silently dropped.
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Write(Request {
                done: Some(done), ..
            }) = msg
            {
                done(Err(StoreError::Closed));
            }
        }
        tracing::debug!("store writer stopped");
    }

    fn commit(&mut self, requests: Vec<Request>) {
        let (writes, dones): (Vec<WriteRequest>, Vec<Option<Completion>>) = requests
            .into_iter()
            .map(|r| {
                let waited = r.done.is_some();
                (WriteRequest { ops: r.ops, waited }, r.done)
            })
            .unzip();
        let results = self.core.commit(&writes);
        for (done, result) in dones.into_iter().zip(results) {
            if let Some(done) = done {
                done(result);
            }
        }
    }
}

impl<B: Backend> WriterCore<B> {
    /// A writer over `db` that knows nothing cached yet (as after a restart).
    pub fn new(db: B, fsync: bool) -> WriterCore<B> {
        WriterCore {
            db,
            fsync,
            next_seq: HashMap::new(),
            queue_len: HashMap::new(),
            refs: HashMap::new(),
            unsynced: false,
            detached: Arc::default(),
            detached_written: 0,
        }
    }

    pub fn backend(&self) -> &B {
        &self.db
    }

    /// The counts `all_durable` compares, shared with a handle.
    pub(crate) fn detached_counts(&self) -> Arc<DetachedCounts> {
        self.detached.clone()
    }

    /// Give the backend back (the writer's memory is dropped, as in a crash).
    pub fn into_backend(self) -> B {
        self.db
    }

    /// Apply `requests` to one batch, write it (synced when someone waits and fsync
    /// is on), and return each request's result, in order: what its waiter may now
    /// be told. A failed write fails every request of the batch.
    pub fn commit(&mut self, requests: &[WriteRequest]) -> Vec<Result<Enqueued>> {
        let (batch, deleted, results) = self.build(requests);
        // fsync only when someone waits for durability. A batch of detached writes
        // (acks, cleanup) still reaches the WAL in the OS, so it survives a process
        // crash; the next synced batch (or WAL sync) makes it durable too.
        let waited = requests.iter().any(|r| r.waited);
        let sync = self.fsync && waited;
        let wrote = !B::batch_is_empty(&batch);
        let outcome = if wrote {
            self.db.write(batch, sync)
        } else if sync && self.unsynced {
            // Nothing new, but a waiter (a barrier: CONNACK after a takeover) needs
            // what earlier unsynced batches wrote to be durable.
            self.db.sync_wal()
        } else {
            Ok(())
        };
        // A deleted session's counters go: read again from the disk if the client id
        // comes back (what the batch wrote after the delete is on disk by then, and
        // an ack caches the next seq before it deletes anything).
        for client in deleted {
            self.next_seq.remove(&client);
            self.queue_len.remove(&client);
        }
        self.detached_written += requests.iter().filter(|r| !r.waited).count() as u64;
        match &outcome {
            Ok(()) if sync || !self.fsync => {
                self.unsynced = false;
                self.detached
                    .synced
                    .store(self.detached_written, Ordering::SeqCst);
            }
            Ok(()) => self.unsynced |= wrote,
            Err(e) => {
                tracing::error!(error = %e, requests = requests.len(), "store batch failed");
                // Cached counters may now be ahead of the disk: reload them lazily.
                self.forget_cached();
            }
        }
        match outcome {
            Ok(()) => results,
            Err(e) => {
                let e = e.to_string();
                results
                    .into_iter()
                    .map(|_| Err(StoreError::Write(e.clone())))
                    .collect()
            }
        }
    }

    /// Apply every request to one batch. A request that fails (a key too long, a
    /// read error, a corrupt record) must leave no trace: the batch and the cached
    /// state are rebuilt without it, from what is on disk.
    fn build(
        &mut self,
        requests: &[WriteRequest],
    ) -> (B::Batch, Vec<ClientId>, Vec<Result<Enqueued>>) {
        let mut failed: Vec<Option<StoreError>> = requests.iter().map(|_| None).collect();
        loop {
            let mut batch = B::Batch::default();
            let mut state = BatchState::default();
            let mut results = Vec::with_capacity(requests.len());
            let mut retry = false;
            for (i, req) in requests.iter().enumerate() {
                if failed[i].is_some() {
                    results.push(Ok(Vec::new()));
                    continue;
                }
                match self.apply(&mut batch, &mut state, &req.ops) {
                    Ok(enqueued) => results.push(Ok(enqueued)),
                    Err(e) => {
                        tracing::error!(error = %e, "store request refused");
                        failed[i] = Some(e);
                        self.forget_cached();
                        retry = true;
                        break;
                    }
                }
            }
            if retry {
                continue;
            }
            let results = results
                .into_iter()
                .zip(failed)
                .map(|(r, f)| match f {
                    Some(e) => Err(e),
                    None => r,
                })
                .collect();
            return (batch, state.deleted, results);
        }
    }

    /// Reload counts lazily from the disk after a failure. Not `next_seq`: a cached
    /// seq ahead of the disk only leaves a gap (a session reads past it), while one
    /// read back from a drained queue would start over below seqs a session already
    /// has.
    fn forget_cached(&mut self) {
        self.queue_len.clear();
        self.refs.clear();
    }

    fn apply(
        &mut self,
        batch: &mut B::Batch,
        state: &mut BatchState,
        ops: &[Op],
    ) -> Result<Enqueued> {
        let mut enqueued = Vec::new();
        let mut new_messages: NewMessages = Vec::new();
        for op in ops {
            match op {
                Op::Message { id, msg } => new_messages.push((*id, msg, 0)),
                Op::Enqueue {
                    client,
                    incarnation,
                    entry,
                    max_len,
                } => {
                    if self.session_incarnation(state, client)? != Some(*incarnation) {
                        enqueued.push(None);
                        continue;
                    }
                    if *max_len != 0 {
                        let len = self.queue_len(client, *max_len)?;
                        if len >= *max_len {
                            enqueued.push(None);
                            continue;
                        }
                        self.queue_len.insert(client.clone(), len + 1);
                    }
                    let seq = self.next_seq(client)?;
                    self.db.put(
                        batch,
                        keys::CF_QUEUE,
                        &keys::queue_key(client, seq)?,
                        &entry.encode(),
                    )?;
                    self.next_seq.insert(client.clone(), seq + 1);
                    state.set(client, seq, Some(entry.head()));
                    // An inline message is its own only reference: nothing to count.
                    if entry.inline.is_none() {
                        match new_messages
                            .iter_mut()
                            .find(|(id, _, _)| *id == entry.msg_id)
                        {
                            Some((_, _, refs)) => *refs += 1,
                            // A message written by an earlier request.
                            None => self.add_ref(batch, entry.msg_id, 1)?,
                        }
                    }
                    enqueued.push(Some(seq));
                }
                Op::AckUnreferenced { client, seq }
                    if !self.queue_len.contains_key(client) && !state.knows(client, *seq) =>
                {
                    self.remove_entry(batch, state, client, *seq)?;
                }
                Op::Ack { client, seq } | Op::AckUnreferenced { client, seq } => {
                    let Some(head) = self.entry_head(state, client, *seq)? else {
                        continue; // already acked, or its session is gone
                    };
                    self.remove_entry(batch, state, client, *seq)?;
                    if let Some(len) = self.queue_len.get_mut(client) {
                        *len = len.saturating_sub(1);
                    }
                    if let Some(id) = head.msg_ref() {
                        self.release(batch, &mut new_messages, id)?;
                    }
                }
                Op::Release { client, seq, entry } => {
                    let Some(head) = self.entry_head(state, client, *seq)? else {
                        continue;
                    };
                    if head.released {
                        continue;
                    }
                    let released = QueueEntry {
                        released: true,
                        inline: None,
                        ..entry.clone()
                    };
                    self.db.put(
                        batch,
                        keys::CF_QUEUE,
                        &keys::queue_key(client, *seq)?,
                        &released.encode(),
                    )?;
                    state.set(client, *seq, Some(released.head()));
                    if let Some(id) = head.msg_ref() {
                        self.release(batch, &mut new_messages, id)?;
                    }
                }
                Op::PutSession { client, record } => {
                    self.db.put(
                        batch,
                        keys::CF_SESSIONS,
                        client.as_bytes(),
                        &record.encode(),
                    )?;
                    state.client(client).session = Some(Some(record.incarnation));
                }
                Op::DeleteSession { client } => {
                    self.delete_session(batch, state, &mut new_messages, client)?
                }
                Op::PutWill { client, will } => {
                    self.db
                        .put(batch, keys::CF_WILLS, client.as_bytes(), &will.encode())?;
                }
                Op::DeleteWill { client } => {
                    self.db.delete(batch, keys::CF_WILLS, client.as_bytes())?;
                }
                Op::PutSubscription {
                    client,
                    filter,
                    record,
                } => {
                    self.db.put(
                        batch,
                        keys::CF_SUBS,
                        &keys::sub_key(client, filter)?,
                        &record.encode(),
                    )?;
                }
                Op::DeleteSubscription { client, filter } => {
                    self.db
                        .delete(batch, keys::CF_SUBS, &keys::sub_key(client, filter)?)?;
                }
                Op::PutAwaitingRel { client, packet_id } => {
                    self.db.put(
                        batch,
                        keys::CF_AWAITING_REL,
                        &keys::awaiting_rel_key(client, *packet_id)?,
                        b"",
                    )?;
                }
                Op::DeleteAwaitingRel { client, packet_id } => {
                    self.db.delete(
                        batch,
                        keys::CF_AWAITING_REL,
                        &keys::awaiting_rel_key(client, *packet_id)?,
                    )?;
                }
                Op::PutRetained { topic, msg } => {
                    self.db
                        .put(batch, keys::CF_RETAINED, topic, &msg.encode())?;
                    state.retained.insert(topic.clone(), Some(msg.expiry_ms));
                }
                Op::DeleteRetained { topic } => {
                    self.db.delete(batch, keys::CF_RETAINED, topic)?;
                    state.retained.insert(topic.clone(), None);
                }
                Op::DeleteRetainedIfExpired { topic, now_ms } => {
                    let expiry_ms = match state.retained.get(topic) {
                        Some(known) => *known,
                        None => self.db.get(keys::CF_RETAINED, topic, |v| {
                            Ok(StoredMessage::decode(v)?.expiry_ms)
                        })?,
                    };
                    let expired = expiry_ms.is_some_and(|e| e != 0 && e <= *now_ms);
                    if expired {
                        self.db.delete(batch, keys::CF_RETAINED, topic)?;
                        state.retained.insert(topic.clone(), None);
                    }
                    enqueued.push(expired.then_some(0));
                }
                Op::PutCredential {
                    table,
                    name,
                    record,
                } => {
                    self.db.put(
                        batch,
                        keys::CF_AUTH,
                        &keys::auth_key(*table, name),
                        &record.encode(),
                    )?;
                }
                Op::DeleteCredential { table, name } => {
                    self.db
                        .delete(batch, keys::CF_AUTH, &keys::auth_key(*table, name))?;
                }
                Op::PutBridge { name, record } => {
                    self.db
                        .put(batch, keys::CF_BRIDGES, name.as_bytes(), &record.encode())?;
                }
                Op::PutBanned { kind, who, record } => {
                    self.db.put(
                        batch,
                        keys::CF_BANNED,
                        &keys::banned_key(*kind, who),
                        &record.encode(),
                    )?;
                }
                Op::DeleteBanned { kind, who } => {
                    self.db
                        .delete(batch, keys::CF_BANNED, &keys::banned_key(*kind, who))?;
                }
            }
        }
        for (id, msg, refs) in new_messages {
            if refs == 0 {
                continue;
            }
            self.db
                .put(batch, keys::CF_MSGS, &keys::msg_key(id), &msg.encode())?;
            // No `refs` key means one reference: the common single-subscriber case
            // costs no extra key.
            if refs > 1 {
                self.db.put(
                    batch,
                    keys::CF_REFS,
                    &keys::msg_key(id),
                    &refs.to_be_bytes(),
                )?;
                self.refs.insert(id, refs);
            }
        }
        Ok(enqueued)
    }

    /// Delete queue entry `seq` of `client`. The queue's next seq is learned first:
    /// read from the disk only after a drain, it would start over and hand out seqs
    /// the session has already passed.
    fn remove_entry(
        &mut self,
        batch: &mut B::Batch,
        state: &mut BatchState,
        client: &ClientId,
        seq: u64,
    ) -> Result<()> {
        // Cached before anything is deleted (see `forget_cached`); once cached it
        // stays, so a drain's acks do not clone and re-insert it one by one.
        if !self.next_seq.contains_key(client) {
            let next = crate::read::next_queue_seq(&self.db, client)?;
            self.next_seq.insert(client.clone(), next);
        }
        self.db
            .delete(batch, keys::CF_QUEUE, &keys::queue_key(client, seq)?)?;
        state.set(client, seq, None);
        Ok(())
    }

    fn next_seq(&mut self, client: &ClientId) -> Result<u64> {
        if let Some(seq) = self.next_seq.get(client) {
            return Ok(*seq);
        }
        crate::read::next_queue_seq(&self.db, client)
    }

    /// The queue's length, counted at most up to `cap` the first time (so a deep
    /// queue never stalls the writer); a count that hit the cap is not cached, since
    /// the real length may be larger.
    fn queue_len(&mut self, client: &ClientId, cap: u64) -> Result<u64> {
        if let Some(len) = self.queue_len.get(client) {
            return Ok(*len);
        }
        let prefix = keys::client_prefix(client)?;
        let end = keys::prefix_end(&prefix);
        let mut len = 0u64;
        if cap > 0 {
            self.db
                .scan(keys::CF_QUEUE, &prefix, end.as_deref(), |_, _| {
                    len += 1;
                    Ok(len < cap)
                })?;
        }
        if len < cap {
            self.queue_len.insert(client.clone(), len);
        }
        Ok(len)
    }

    fn refs_of(&mut self, msg_id: u64) -> Result<u32> {
        if let Some(refs) = self.refs.get(&msg_id) {
            return Ok(*refs);
        }
        let stored = self.db.get(keys::CF_REFS, &keys::msg_key(msg_id), |v| {
            Ok(match v {
                [a, b, c, d] => u32::from_be_bytes([*a, *b, *c, *d]),
                _ => 1,
            })
        })?;
        // Absent: a message written with a single reference.
        Ok(stored.unwrap_or(1))
    }

    fn add_ref(&mut self, batch: &mut B::Batch, msg_id: u64, n: u32) -> Result<()> {
        let refs = self.refs_of(msg_id)? + n;
        self.db.put(
            batch,
            keys::CF_REFS,
            &keys::msg_key(msg_id),
            &refs.to_be_bytes(),
        )?;
        self.refs.insert(msg_id, refs);
        Ok(())
    }

    /// Release a reference to `msg_id`: counted down in `new` when the request being
    /// applied writes that message, else against the stored count.
    fn release(&mut self, batch: &mut B::Batch, new: &mut NewMessages, msg_id: u64) -> Result<()> {
        match new.iter_mut().find(|(id, _, _)| *id == msg_id) {
            Some((_, _, refs)) => {
                *refs = refs.saturating_sub(1);
                Ok(())
            }
            None => self.release_ref(batch, msg_id),
        }
    }

    fn release_ref(&mut self, batch: &mut B::Batch, msg_id: u64) -> Result<()> {
        let before = self.refs_of(msg_id)?;
        let refs = before.saturating_sub(1);
        if refs == 0 {
            self.db
                .delete(batch, keys::CF_MSGS, &keys::msg_key(msg_id))?;
            if before > 1 {
                self.db
                    .delete(batch, keys::CF_REFS, &keys::msg_key(msg_id))?;
            }
            self.refs.remove(&msg_id);
        } else if refs == 1 {
            // A `refs` key exists only for counts above one (absent = 1), so the
            // deletion of the message above never leaves one behind.
            self.db
                .delete(batch, keys::CF_REFS, &keys::msg_key(msg_id))?;
            self.refs.insert(msg_id, refs);
        } else {
            self.db.put(
                batch,
                keys::CF_REFS,
                &keys::msg_key(msg_id),
                &refs.to_be_bytes(),
            )?;
            self.refs.insert(msg_id, refs);
        }
        Ok(())
    }

    /// The entry `seq` of `client` as this batch leaves it: from the batch if the
    /// batch touched it, else from the disk. None when there is no such entry.
    fn entry_head(
        &self,
        state: &BatchState,
        client: &ClientId,
        seq: u64,
    ) -> Result<Option<EntryHead>> {
        if let Some(overlay) = state.clients.get(client) {
            if let Some(slot) = overlay.slots.get(&seq) {
                return Ok(*slot);
            }
            if overlay.cleared {
                return Ok(None);
            }
        }
        let key = keys::queue_key(client, seq)?;
        self.db.get(keys::CF_QUEUE, &key, |v| {
            Ok(readable_head(client, seq, QueueEntry::decode_head(v)))
        })
    }

    /// The incarnation of `client`'s session as this batch leaves it; None when it
    /// has no session.
    fn session_incarnation(
        &self,
        state: &mut BatchState,
        client: &ClientId,
    ) -> Result<Option<u64>> {
        let overlay = state.client(client);
        if let Some(known) = overlay.session {
            return Ok(known);
        }
        let known = self.db.get(keys::CF_SESSIONS, client.as_bytes(), |v| {
            Ok(match SessionRecord::decode(v) {
                Ok(record) => Some(record.incarnation),
                Err(e) => {
                    // Refusing its enqueues beats failing every publish routed to it
                    // (and to everyone else in the same request).
                    tracing::error!(client_id = %client, error = %e, "undecodable session record; its deliveries are dropped");
                    None
                }
            })
        })?;
        let known = known.flatten();
        overlay.session = Some(known);
        Ok(known)
    }

    fn delete_session(
        &mut self,
        batch: &mut B::Batch,
        state: &mut BatchState,
        new_messages: &mut NewMessages,
        client: &ClientId,
    ) -> Result<()> {
        let prefix = keys::client_prefix(client)?;
        let end = keys::prefix_end(&prefix);
        // Keep seqs rising within this process: an ack from a connection that served
        // the old session can never name an entry of a new one.
        let next_seq = self.next_seq(client)?;
        // Release what the queue still holds as this batch leaves it: entries on
        // disk that the batch has not touched, plus the batch's own version of the
        // rest (enqueued, released or acked earlier in this very batch).
        let overlay = state.client(client);
        let mut held = Vec::new();
        if !overlay.cleared {
            self.db
                .scan(keys::CF_QUEUE, &prefix, end.as_deref(), |key, value| {
                    let seq = keys::decode_queue_seq(key)?;
                    if !overlay.slots.contains_key(&seq) {
                        let head = readable_head(client, seq, QueueEntry::decode_head(value));
                        if let Some(id) = head.msg_ref() {
                            held.push(id);
                        }
                    }
                    Ok(true)
                })?;
        }
        held.extend(overlay.slots.values().flatten().filter_map(|h| h.msg_ref()));
        overlay.cleared = true;
        overlay.slots.clear();
        overlay.session = Some(None);
        for id in held {
            self.release(batch, new_messages, id)?;
        }
        let end = end.unwrap_or_else(|| vec![0xFF; prefix.len() + 9]);
        for name in [keys::CF_QUEUE, keys::CF_SUBS, keys::CF_AWAITING_REL] {
            self.db.delete_range(batch, name, &prefix, &end)?;
        }
        self.db
            .delete(batch, keys::CF_SESSIONS, client.as_bytes())?;
        // Kept for the rest of the batch (a new session may enqueue in it), then
        // forgotten (`commit`): the caches hold live sessions only.
        self.next_seq.insert(client.clone(), next_seq);
        self.queue_len.insert(client.clone(), 0);
        state.deleted.push(client.clone());
        Ok(())
    }
}

/// Messages the request being applied writes, with the references counted so far.
type NewMessages<'a> = Vec<(u64, &'a StoredMessage, u32)>;

/// The queue entries a batch being built has touched, per client, so that every op
/// is computed against the batch's state and not only the disk's.
#[derive(Default)]
struct BatchState {
    clients: HashMap<ClientId, ClientOverlay>,
    /// Retained messages the batch wrote (their expiry) or deleted (None).
    retained: HashMap<Bytes, Option<u64>>,
    /// Sessions the batch deleted: their cached counters go once it is written.
    deleted: Vec<ClientId>,
}

#[derive(Default)]
struct ClientOverlay {
    /// The session was deleted earlier in the batch: nothing on disk counts.
    cleared: bool,
    /// Entries as the batch leaves them (None: deleted).
    slots: BTreeMap<u64, Option<EntryHead>>,
    /// The session's incarnation (None inside: no session), once read or written.
    session: Option<Option<u64>>,
}

impl BatchState {
    fn client(&mut self, client: &ClientId) -> &mut ClientOverlay {
        self.clients.entry(client.clone()).or_default()
    }

    /// Whether the batch has its own version of this entry (or dropped the disk's).
    fn knows(&self, client: &ClientId, seq: u64) -> bool {
        self.clients
            .get(client)
            .is_some_and(|o| o.cleared || o.slots.contains_key(&seq))
    }

    fn set(&mut self, client: &ClientId, seq: u64, head: Option<EntryHead>) {
        self.client(client).slots.insert(seq, head);
    }
}

/// A stored entry's head, or, for one that cannot be decoded, a head that holds no
/// reference: the entry can still be acked or deleted (its message, if logged, is
/// leaked rather than every request touching the entry failing). Logged.
fn readable_head(
    client: &ClientId,
    seq: u64,
    head: std::result::Result<EntryHead, crate::records::RecordError>,
) -> EntryHead {
    head.unwrap_or_else(|e| {
        tracing::error!(client_id = %client, seq, error = %e, "undecodable queue entry; completed without releasing a message");
        EntryHead {
            msg_id: 0,
            released: true,
            inline: false,
        }
    })
}
