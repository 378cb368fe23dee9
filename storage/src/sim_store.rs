//! A `Store` without threads, stepped by the model test (`tests/model/`).
//!
//! The broker runs over it unchanged: its writer handle queues requests here instead
//! of sending them to the writer thread, and its reader handle queues reads instead
//! of handing them to the pool. The simulation decides when each happens: `commit`
//! makes one batch of the first `n` queued requests through the real `WriterCore`
//! over a `SimBackend` and then runs their completions in order (as the writer
//! thread does); `run_read` runs one queued read (in any order) and keeps its answer,
//! which `answer` delivers later (a reader thread between its read and its
//! completion, so answers can come after later commits); `crash` loses everything
//! in memory and what the disk had not synced.
//!
//! Completions run with no lock held: they submit more work, as the broker's do.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::backend::ReadDb;
use crate::sim::SimBackend;
use crate::store::StoreError;
use crate::writer::{Completion, Request, WriteRequest, WriterCore};

/// A queued read: run over the disk (or told why not), it gives back its answer.
pub(crate) type SimRead =
    Box<dyn FnOnce(Result<&ReadDb<'_>, StoreError>) -> Box<dyn FnOnce() + Send> + Send>;

/// See the module docs.
pub struct SimStore {
    state: Mutex<State>,
}

struct State {
    /// None once crashed: what a dead process's handles submit goes nowhere.
    core: Option<WriterCore<SimBackend>>,
    /// Submitted, not yet committed, in submission order.
    writes: Vec<Request>,
    reads: Vec<SimRead>,
    answers: Vec<Box<dyn FnOnce() + Send>>,
}

impl SimStore {
    pub(crate) fn new(core: WriterCore<SimBackend>) -> SimStore {
        SimStore {
            state: Mutex::new(State {
                core: Some(core),
                writes: Vec::new(),
                reads: Vec::new(),
                answers: Vec::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn queue_write(&self, request: Request) {
        let refused = {
            let mut state = self.state();
            if state.core.is_some() {
                state.writes.push(request);
                None
            } else {
                request.done
            }
        };
        if let Some(done) = refused {
            done(Err(StoreError::Closed));
        }
    }

    pub(crate) fn queue_read(&self, read: SimRead) {
        let refused = {
            let mut state = self.state();
            if state.core.is_some() {
                state.reads.push(read);
                None
            } else {
                Some(read)
            }
        };
        if let Some(read) = refused {
            read(Err(StoreError::Closed))();
        }
    }

    /// Requests waiting for the writer.
    pub fn pending_writes(&self) -> usize {
        self.state().writes.len()
    }

    /// Reads waiting for a reader thread.
    pub fn pending_reads(&self) -> usize {
        self.state().reads.len()
    }

    /// Reads run whose answers have not been delivered.
    pub fn pending_answers(&self) -> usize {
        self.state().answers.len()
    }

    /// The writer thread's turn: one batch of the first `n` queued requests, then
    /// their completions in order. Returns the requests and the store's broken
    /// invariants after the batch (`check_invariants`).
    pub fn commit(&self, n: usize) -> (Vec<WriteRequest>, Vec<String>) {
        let (requests, dones, problems) = {
            let mut state = self.state();
            let n = n.min(state.writes.len());
            let (requests, dones): (Vec<WriteRequest>, Vec<Option<Completion>>) = state
                .writes
                .drain(..n)
                .map(|r| {
                    let waited = r.done.is_some();
                    (WriteRequest { ops: r.ops, waited }, r.done)
                })
                .unzip();
            let Some(core) = state.core.as_mut() else {
                return (Vec::new(), Vec::new());
            };
            let results = core.commit(&requests);
            let problems = crate::invariants::check(core.backend())
                .unwrap_or_else(|e| vec![format!("the store cannot be read: {e}")]);
            let dones: Vec<_> = dones.into_iter().zip(results).collect();
            (requests, dones, problems)
        };
        for (done, result) in dones {
            if let Some(done) = done {
                done(result);
            }
        }
        (requests, problems)
    }

    /// A reader thread runs the `i`th queued read (failing it with a read error when
    /// `fail`); its answer waits for `answer`.
    pub fn run_read(&self, i: usize, fail: bool) {
        let mut state = self.state();
        if i >= state.reads.len() {
            return;
        }
        let read = state.reads.remove(i);
        let answer = match (&state.core, fail) {
            (Some(core), false) => read(Ok(&ReadDb::Sim(core.backend()))),
            _ => read(Err(StoreError::Read("a simulated read failure".into()))),
        };
        state.answers.push(answer);
    }

    /// The `i`th answer reaches whoever waits for it (a mailbox, a oneshot).
    pub fn answer(&self, i: usize) {
        let answer = {
            let mut state = self.state();
            if i >= state.answers.len() {
                return;
            }
            state.answers.remove(i)
        };
        answer();
    }

    /// `f` over the disk as reads see it now (for checks).
    pub fn with_backend<R>(&self, f: impl FnOnce(&SimBackend) -> R) -> Option<R> {
        self.state().core.as_ref().map(|core| f(core.backend()))
    }

    /// Batches written since the last sync.
    pub fn unsynced_batches(&self) -> usize {
        self.with_backend(|b| b.unsynced_batches()).unwrap_or(0)
    }

    /// Power failure: all memory is gone (queued requests and reads are dropped
    /// unanswered, as a dead process leaves them), and the disk keeps what was
    /// synced plus the first `keep` unsynced batches. None if it crashed already.
    pub fn crash(&self, keep: usize) -> Option<SimBackend> {
        let (core, writes, reads, answers) = {
            let mut state = self.state();
            (
                state.core.take(),
                std::mem::take(&mut state.writes),
                std::mem::take(&mut state.reads),
                std::mem::take(&mut state.answers),
            )
        };
        // Dropped without the lock: they may hold the last handles of this store.
        drop((writes, reads, answers));
        core.map(|core| core.into_backend().crash(keep))
    }
}

impl std::fmt::Debug for SimStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("SimStore")
            .field("writes", &state.writes.len())
            .field("reads", &state.reads.len())
            .field("answers", &state.answers.len())
            .finish()
    }
}

/// Keep `Arc<SimStore>` shareable across the broker's threads.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Arc<SimStore>>();
};
