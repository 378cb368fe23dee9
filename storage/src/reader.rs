//! The reader pool: reads that must not run on an async worker.
//!
//! A RocksDB read can take a millisecond or more (a page of a deep queue, a cold
//! block), and a tokio worker blocked on one stalls every connection it serves. So
//! connections hand their reads (queue pages, retained messages for a new
//! subscription, QoS 2 ids at connect, the retained expiry sweep) to a few dedicated
//! threads, in the style of the writer: `submit` never blocks, and the answer comes
//! back through a completion that runs on the reader thread and must be quick (it
//! pushes into a connection's mailbox or a oneshot).
//!
//! Limits: `threads` threads, at most `queue_max` jobs waiting. A job that does not
//! fit is answered at once with `StoreError::Busy` (counted and logged), never
//! queued without bound and never blocking the caller. A read that fails answers
//! with its error; one that panics answers with `StoreError::Read` and the thread
//! goes on. After `stop` every job is answered with `StoreError::Closed` (one that
//! races with `stop` may instead be dropped unanswered, its completion with it: at
//! shutdown, where the connections go too).
//!
//! Ordering against the writer: a read sees every write whose completion ran before
//! the read was submitted (the writer completes only after its batch is written), and
//! may see later ones. Reads never write.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use crate::backend::{ReadDb, RocksBackend};
use crate::sim_store::SimStore;
use crate::store::{Result, StoreError};

/// One job: the read and its completion, fused; called with the database, or with
/// the reason it will not run.
type Job = Box<dyn FnOnce(std::result::Result<&ReadDb<'_>, StoreError>) + Send>;

enum Msg {
    Read(Job),
    /// One per thread, sent by `stop`.
    Stop,
}

#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// Reader threads, at least one.
    pub threads: usize,
    /// Jobs waiting at most; more are refused with `StoreError::Busy`.
    pub queue_max: usize,
}

/// Shared handle to the pool: cheap to clone.
#[derive(Clone)]
pub struct ReaderHandle {
    pool: Pool,
}

#[derive(Clone)]
enum Pool {
    Threads {
        tx: SyncSender<Msg>,
        inner: Arc<Shared>,
    },
    /// The model test's store: reads wait until the simulation runs them
    /// (`SimStore::run_read`), and their answers until it delivers them.
    Sim(Arc<SimStore>),
}

struct Shared {
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Threads that have not yet taken their `Stop`.
    running: AtomicUsize,
    stopped: AtomicBool,
    refused: AtomicU64,
}

impl ReaderHandle {
    /// Run `read` on a reader thread, then `done` with its result (on that thread).
    /// Never blocks: a full queue or a stopped pool answers `done` at once with an
    /// error, on the caller's thread.
    pub fn submit<T: Send + 'static>(
        &self,
        read: impl FnOnce(&ReadDb<'_>) -> Result<T> + Send + 'static,
        done: impl FnOnce(Result<T>) + Send + 'static,
    ) {
        let (tx, inner) = match &self.pool {
            Pool::Threads { tx, inner } => (tx, inner),
            Pool::Sim(sim) => {
                sim.queue_read(Box::new(move |db| {
                    let result = db.and_then(read);
                    Box::new(move || done(result))
                }));
                return;
            }
        };
        if inner.stopped.load(Ordering::Acquire) {
            done(Err(StoreError::Closed));
            return;
        }
        let job: Job = Box::new(move |db| {
            let result = match db {
                Ok(db) => catch_unwind(AssertUnwindSafe(|| read(db))).unwrap_or_else(|_| {
                    tracing::error!("a store read panicked; answered with an error");
                    Err(StoreError::Read("the read panicked".into()))
                }),
                Err(e) => Err(e),
            };
            done(result);
        });
        match tx.try_send(Msg::Read(job)) {
            Ok(()) => {}
            Err(TrySendError::Full(Msg::Read(job))) => {
                let refused = inner.refused.fetch_add(1, Ordering::Relaxed) + 1;
                // Logged on powers of two: a flood must not flood the log too.
                if refused.is_power_of_two() {
                    tracing::warn!(refused, "store reader queue full; read refused");
                }
                job(Err(StoreError::Busy));
            }
            Err(TrySendError::Disconnected(Msg::Read(job))) => job(Err(StoreError::Closed)),
            Err(_) => {}
        }
    }

    /// Reads refused so far because the queue was full.
    pub fn refused(&self) -> u64 {
        match &self.pool {
            Pool::Threads { inner, .. } => inner.refused.load(Ordering::Relaxed),
            Pool::Sim(_) => 0,
        }
    }

    pub(crate) fn simulated(sim: Arc<SimStore>) -> ReaderHandle {
        ReaderHandle {
            pool: Pool::Sim(sim),
        }
    }

    /// Answer what is queued with `Closed`, stop the threads and wait for them (not
    /// for the current thread: a completion may drop the last store handle).
    pub fn stop(&self) {
        let Pool::Threads { tx, inner } = &self.pool else {
            return;
        };
        if inner.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let threads = std::mem::take(&mut *inner.threads.lock().unwrap_or_else(|e| e.into_inner()));
        // One `Stop` per thread; the last to stop answers what is left. A full
        // queue still takes them: the threads keep draining it (answering `Closed`).
        for _ in &threads {
            let _ = tx.send(Msg::Stop);
        }
        for thread in threads {
            if thread.thread().id() != thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

pub(crate) fn spawn(db: RocksBackend, config: ReaderConfig) -> ReaderHandle {
    let (tx, rx) = mpsc::sync_channel::<Msg>(config.queue_max.max(1));
    let rx = Arc::new(Mutex::new(rx));
    let inner = Arc::new(Shared {
        threads: Mutex::new(Vec::new()),
        stopped: AtomicBool::new(false),
        running: AtomicUsize::new(0),
        refused: AtomicU64::new(0),
    });
    let mut threads = Vec::new();
    for i in 0..config.threads.max(1) {
        let rx = rx.clone();
        let db = db.clone();
        let shared = inner.clone();
        let spawned = thread::Builder::new()
            .name(format!("quay-store-reader-{i}"))
            .spawn(move || run(&db, &rx, &shared));
        match spawned {
            Ok(t) => {
                inner.running.fetch_add(1, Ordering::AcqRel);
                threads.push(t);
            }
            // Fewer threads serve the same queue; with none, jobs wait for `stop`,
            // which answers them (`Closed`).
            Err(e) => tracing::error!(error = %e, "cannot start a store reader thread"),
        }
    }
    if threads.is_empty() {
        inner.stopped.store(true, Ordering::Release);
    }
    *inner.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
    ReaderHandle {
        pool: Pool::Threads { tx, inner },
    }
}

fn run(db: &RocksBackend, rx: &Mutex<Receiver<Msg>>, shared: &Shared) {
    let db = ReadDb::Rocks(db);
    loop {
        // One thread waits in `recv` holding the lock; the others wait for the lock.
        let msg = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        match msg {
            Ok(Msg::Read(job)) if shared.stopped.load(Ordering::Acquire) => {
                job(Err(StoreError::Closed))
            }
            Ok(Msg::Read(job)) => job(Ok(&db)),
            Ok(Msg::Stop) => {
                if shared.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                    // The last one: answer what was queued behind the stops.
                    loop {
                        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).try_recv();
                        match next {
                            Ok(Msg::Read(job)) => job(Err(StoreError::Closed)),
                            Ok(Msg::Stop) => {}
                            Err(_) => break,
                        }
                    }
                }
                return;
            }
            Err(_) => return,
        }
    }
}
