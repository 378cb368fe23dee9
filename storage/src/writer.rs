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

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};

use crate::keys;
use crate::records::{QueueEntry, SessionRecord, StoredMessage, SubscriptionRecord};
use crate::store::{cf, Result, StoreError};

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
    /// `max_len` entries (0 = no limit). The completion reports the assigned sequence
    /// number, or `None` when the queue was full and the delivery dropped.
    Enqueue {
        client: ClientId,
        entry: QueueEntry,
        max_len: u64,
    },
    /// Delivery finished (PUBACK/PUBCOMP, expiry or drop): remove the entry and, if it
    /// still holds one, release its message reference.
    Ack {
        client: ClientId,
        seq: u64,
        msg_id: Option<u64>,
    },
    /// QoS 2 outbound PUBREC: the entry now only waits for PUBCOMP; its message
    /// reference (`msg_id`, none for an inline message) is released.
    Release {
        client: ClientId,
        seq: u64,
        entry: QueueEntry,
        msg_id: Option<u64>,
    },
    PutSession {
        client: ClientId,
        record: SessionRecord,
    },
    /// Remove a session with its subscriptions, queue and QoS 2 state.
    DeleteSession {
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
}

/// Sequence numbers assigned to a request's `Enqueue` ops, in op order.
pub type Enqueued = Vec<Option<u64>>;
pub type Completion = Box<dyn FnOnce(Result<Enqueued>) + Send>;

struct Request {
    ops: Vec<Op>,
    done: Option<Completion>,
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
    tx: Sender<Msg>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl WriterHandle {
    /// Queue `ops`; `done` runs on the writer thread once they are durable (or failed).
    /// It must be quick and must not block: hand results to another task.
    pub fn submit(&self, ops: Vec<Op>, done: Completion) {
        if let Err(mpsc::SendError(Msg::Write(req))) = self.tx.send(Msg::Write(Request {
            ops,
            done: Some(done),
        })) {
            if let Some(done) = req.done {
                done(Err(StoreError::Closed));
            }
        }
    }

    /// Queue `ops` with nobody waiting (acks, cleanup): durable with the next batch.
    pub fn submit_detached(&self, ops: Vec<Op>) {
        if self
            .tx
            .send(Msg::Write(Request { ops, done: None }))
            .is_err()
        {
            tracing::error!("store writer stopped; a write was dropped");
        }
    }

    /// Wait until everything submitted before this call is durable.
    pub fn barrier(&self) -> Result<()> {
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
        let _ = self.tx.send(Msg::Stop);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            // A completion running on the writer thread may drop the last store
            // handle: never join yourself.
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

pub(crate) fn spawn(db: Arc<DB>, config: WriterConfig) -> WriterHandle {
    let (tx, rx) = mpsc::channel();
    let mut writer = Writer {
        db,
        config,
        next_seq: HashMap::new(),
        queue_len: HashMap::new(),
        refs: HashMap::new(),
    };
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
        tx,
        thread: Arc::new(Mutex::new(thread)),
    }
}

struct Writer {
    db: Arc<DB>,
    config: WriterConfig,
    next_seq: HashMap<ClientId, u64>,
    queue_len: HashMap<ClientId, u64>,
    refs: HashMap<u64, u32>,
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
                        rx.recv_timeout(deadline - now)
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
        let mut batch = WriteBatch::default();
        let mut results = Vec::with_capacity(requests.len());
        let mut pending = PendingEnqueues::default();
        for req in &requests {
            results.push(self.apply(&mut batch, &req.ops, &mut pending));
        }
        // fsync only when someone waits for durability. A batch of detached writes
        // (acks, cleanup) still reaches the WAL in the OS, so it survives a process
        // crash; the next synced batch makes it durable against power loss too.
        let waited = requests.iter().any(|r| r.done.is_some());
        let outcome = if batch.is_empty() {
            Ok(())
        } else {
            let mut opts = WriteOptions::default();
            opts.set_sync(self.config.fsync && waited);
            self.db.write_opt(batch, &opts)
        };
        if let Err(e) = &outcome {
            tracing::error!(error = %e, requests = requests.len(), "store batch failed");
            // Cached counters may now be ahead of the disk: reload them lazily.
            self.next_seq.clear();
            self.queue_len.clear();
            self.refs.clear();
        }
        for (req, result) in requests.into_iter().zip(results) {
            let Some(done) = req.done else { continue };
            match &outcome {
                Ok(()) => done(result),
                Err(e) => done(Err(StoreError::Write(e.to_string()))),
            }
        }
    }

    fn apply(
        &mut self,
        batch: &mut WriteBatch,
        ops: &[Op],
        pending: &mut PendingEnqueues,
    ) -> Result<Enqueued> {
        let mut enqueued = Vec::new();
        let mut new_messages: Vec<(u64, &StoredMessage, u32)> = Vec::new();
        for op in ops {
            match op {
                Op::Message { id, msg } => new_messages.push((*id, msg, 0)),
                Op::Enqueue {
                    client,
                    entry,
                    max_len,
                } => {
                    if *max_len != 0 {
                        let len = self.queue_len(client, *max_len)?;
                        if len >= *max_len {
                            enqueued.push(None);
                            continue;
                        }
                        self.queue_len.insert(client.clone(), len + 1);
                    }
                    let seq = self.next_seq(client)?;
                    batch.put_cf(
                        cf(&self.db, keys::CF_QUEUE)?,
                        keys::queue_key(client, seq)?,
                        entry.encode(),
                    );
                    self.next_seq.insert(client.clone(), seq + 1);
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
                        pending.add(client, entry.msg_id);
                    }
                    enqueued.push(Some(seq));
                }
                Op::Ack {
                    client,
                    seq,
                    msg_id,
                } => {
                    batch.delete_cf(
                        cf(&self.db, keys::CF_QUEUE)?,
                        keys::queue_key(client, *seq)?,
                    );
                    if let Some(len) = self.queue_len.get_mut(client) {
                        *len = len.saturating_sub(1);
                    }
                    if let Some(id) = msg_id {
                        self.release_ref(batch, *id)?;
                    }
                }
                Op::Release {
                    client,
                    seq,
                    entry,
                    msg_id,
                } => {
                    batch.put_cf(
                        cf(&self.db, keys::CF_QUEUE)?,
                        keys::queue_key(client, *seq)?,
                        entry.encode(),
                    );
                    if let Some(id) = msg_id {
                        self.release_ref(batch, *id)?;
                    }
                }
                Op::PutSession { client, record } => {
                    batch.put_cf(
                        cf(&self.db, keys::CF_SESSIONS)?,
                        client.as_bytes(),
                        record.encode(),
                    );
                }
                Op::DeleteSession { client } => self.delete_session(batch, client, pending)?,
                Op::PutSubscription {
                    client,
                    filter,
                    record,
                } => {
                    batch.put_cf(
                        cf(&self.db, keys::CF_SUBS)?,
                        keys::sub_key(client, filter)?,
                        record.encode(),
                    );
                }
                Op::DeleteSubscription { client, filter } => {
                    batch.delete_cf(cf(&self.db, keys::CF_SUBS)?, keys::sub_key(client, filter)?);
                }
                Op::PutAwaitingRel { client, packet_id } => {
                    batch.put_cf(
                        cf(&self.db, keys::CF_AWAITING_REL)?,
                        keys::awaiting_rel_key(client, *packet_id)?,
                        b"",
                    );
                }
                Op::DeleteAwaitingRel { client, packet_id } => {
                    batch.delete_cf(
                        cf(&self.db, keys::CF_AWAITING_REL)?,
                        keys::awaiting_rel_key(client, *packet_id)?,
                    );
                }
                Op::PutRetained { topic, msg } => {
                    batch.put_cf(cf(&self.db, keys::CF_RETAINED)?, topic, msg.encode());
                }
                Op::DeleteRetained { topic } => {
                    batch.delete_cf(cf(&self.db, keys::CF_RETAINED)?, topic);
                }
            }
        }
        for (id, msg, refs) in new_messages {
            if refs == 0 {
                continue;
            }
            batch.put_cf(
                cf(&self.db, keys::CF_MSGS)?,
                keys::msg_key(id),
                msg.encode(),
            );
            // No `refs` key means one reference: the common single-subscriber case
            // costs no extra key.
            if refs > 1 {
                batch.put_cf(
                    cf(&self.db, keys::CF_REFS)?,
                    keys::msg_key(id),
                    refs.to_be_bytes(),
                );
                self.refs.insert(id, refs);
            }
        }
        Ok(enqueued)
    }

    fn next_seq(&mut self, client: &ClientId) -> Result<u64> {
        if let Some(seq) = self.next_seq.get(client) {
            return Ok(*seq);
        }
        let prefix = keys::client_prefix(client)?;
        let mut iter = self.db.raw_iterator_cf(cf(&self.db, keys::CF_QUEUE)?);
        match keys::prefix_end(&prefix) {
            Some(end) => iter.seek_for_prev(end),
            None => iter.seek_to_last(),
        }
        let next = match iter.key() {
            Some(key) if key.starts_with(&prefix) => keys::decode_queue_seq(key)? + 1,
            _ => 0,
        };
        iter.status()?;
        Ok(next)
    }

    /// The queue's length, counted at most up to `cap` the first time (so a deep
    /// queue never stalls the writer); a count that hit the cap is not cached, since
    /// the real length may be larger.
    fn queue_len(&mut self, client: &ClientId, cap: u64) -> Result<u64> {
        if let Some(len) = self.queue_len.get(client) {
            return Ok(*len);
        }
        let prefix = keys::client_prefix(client)?;
        let mut read = ReadOptions::default();
        if let Some(end) = keys::prefix_end(&prefix) {
            read.set_iterate_upper_bound(end);
        }
        let mut len = 0u64;
        let iter = self.db.iterator_cf_opt(
            cf(&self.db, keys::CF_QUEUE)?,
            read,
            IteratorMode::From(&prefix, Direction::Forward),
        );
        for item in iter.take(cap as usize) {
            item?;
            len += 1;
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
        let stored = self
            .db
            .get_cf(cf(&self.db, keys::CF_REFS)?, keys::msg_key(msg_id))?;
        Ok(match stored {
            Some(v) if v.len() == 4 => u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
            // Absent: a message written with a single reference.
            _ => 1,
        })
    }

    fn add_ref(&mut self, batch: &mut WriteBatch, msg_id: u64, n: u32) -> Result<()> {
        let refs = self.refs_of(msg_id)? + n;
        batch.put_cf(
            cf(&self.db, keys::CF_REFS)?,
            keys::msg_key(msg_id),
            refs.to_be_bytes(),
        );
        self.refs.insert(msg_id, refs);
        Ok(())
    }

    fn release_ref(&mut self, batch: &mut WriteBatch, msg_id: u64) -> Result<()> {
        let before = self.refs_of(msg_id)?;
        let refs = before.saturating_sub(1);
        if refs == 0 {
            batch.delete_cf(cf(&self.db, keys::CF_MSGS)?, keys::msg_key(msg_id));
            if before > 1 {
                batch.delete_cf(cf(&self.db, keys::CF_REFS)?, keys::msg_key(msg_id));
            }
            self.refs.remove(&msg_id);
        } else {
            batch.put_cf(
                cf(&self.db, keys::CF_REFS)?,
                keys::msg_key(msg_id),
                refs.to_be_bytes(),
            );
            self.refs.insert(msg_id, refs);
        }
        Ok(())
    }

    fn delete_session(
        &mut self,
        batch: &mut WriteBatch,
        client: &ClientId,
        pending: &mut PendingEnqueues,
    ) -> Result<()> {
        let prefix = keys::client_prefix(client)?;
        let end = keys::prefix_end(&prefix);
        // Release the references held by the queue on disk and by enqueues earlier in
        // this very batch (not yet on disk, but deleted by the range below).
        let mut read = ReadOptions::default();
        if let Some(end) = &end {
            read.set_iterate_upper_bound(end.clone());
        }
        let held: Vec<u64> = {
            let iter = self.db.iterator_cf_opt(
                cf(&self.db, keys::CF_QUEUE)?,
                read,
                IteratorMode::From(&prefix, Direction::Forward),
            );
            let mut held = Vec::new();
            for item in iter {
                let (_, value) = item?;
                let entry = QueueEntry::decode(&value)?;
                if !entry.released && entry.inline.is_none() {
                    held.push(entry.msg_id);
                }
            }
            held
        };
        for id in held.into_iter().chain(pending.take(client)) {
            self.release_ref(batch, id)?;
        }
        let end = end.unwrap_or_else(|| vec![0xFF; prefix.len() + 9]);
        for name in [keys::CF_QUEUE, keys::CF_SUBS, keys::CF_AWAITING_REL] {
            batch.delete_range_cf(cf(&self.db, name)?, &prefix, &end);
        }
        batch.delete_cf(cf(&self.db, keys::CF_SESSIONS)?, client.as_bytes());
        self.next_seq.remove(client);
        self.queue_len.remove(client);
        Ok(())
    }
}

/// Messages enqueued earlier in the batch being built, per client.
#[derive(Default)]
struct PendingEnqueues(HashMap<ClientId, Vec<u64>>);

impl PendingEnqueues {
    fn add(&mut self, client: &ClientId, msg_id: u64) {
        self.0.entry(client.clone()).or_default().push(msg_id);
    }
    fn take(&mut self, client: &ClientId) -> Vec<u64> {
        self.0.remove(client).unwrap_or_default()
    }
}
