//! A connection's inbox: what the broker and the store writer hand it.
//!
//! A plain queue plus a `Notify`, rather than a tokio channel, because an idle
//! connection must cost little memory: an empty `VecDeque` allocates nothing, where a
//! channel allocates a block of slots up front. Pushing never blocks (the writer thread
//! pushes from its completions); deliveries are bounded by the caller (`MAX_BACKLOG`).
//!
//! A hibernated connection has no task waiting on the `Notify`: it leaves a `Waker`
//! here instead, which the next push wakes. The mailbox also tells whoever asks when
//! its connection has finished (`close`, `closed`), which a takeover waits for.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::Waker;

use tokio::sync::{oneshot, Notify};

use super::registry::ConnEvent;
use crate::codec::ReasonCode;

#[derive(Debug, Default)]
pub struct Mailbox {
    inner: Mutex<Inner>,
    notify: Notify,
}

#[derive(Debug)]
struct Inner {
    queue: VecDeque<ConnEvent>,
    /// Set by a hibernating connection; taken (and woken) by the next push.
    waker: Option<Waker>,
    /// Who waits for `closed` (a takeover, rarely anyone); None once closed.
    on_close: Option<Vec<oneshot::Sender<()>>>,
    /// A stored delivery did not fit: the connection must read its queue from the
    /// store (`take_behind`).
    behind: bool,
    /// Close the connection with this reason (takeover, admin kick, store failure).
    /// Out of band: seen even while the connection takes no events because its
    /// client is not reading.
    kick: Option<ReasonCode>,
}

impl Default for Inner {
    fn default() -> Inner {
        Inner {
            queue: VecDeque::new(),
            waker: None,
            on_close: Some(Vec::new()),
            behind: false,
            kick: None,
        }
    }
}

impl Mailbox {
    pub fn push(&self, event: ConnEvent) {
        self.update_and_wake(|inner| {
            inner.queue.push_back(event);
            true
        });
    }

    /// Push unless `max` events already wait; false when full.
    pub fn push_bounded(&self, event: ConnEvent, max: usize) -> bool {
        self.update_and_wake(|inner| {
            let room = inner.queue.len() < max;
            if room {
                inner.queue.push_back(event);
            }
            room
        })
    }

    /// Ask the connection to close with `reason` (the first reason asked wins).
    pub fn kick(&self, reason: ReasonCode) {
        self.update_and_wake(|inner| {
            inner.kick.get_or_insert(reason);
            true
        });
    }

    pub fn take_kick(&self) -> Option<ReasonCode> {
        self.inner().kick.take()
    }

    /// A stored delivery was left out (backlog full): see `take_behind`.
    pub fn mark_behind(&self) {
        self.update_and_wake(|inner| {
            inner.behind = true;
            true
        });
    }

    /// Whether stored deliveries were left out since the last call.
    pub fn take_behind(&self) -> bool {
        std::mem::take(&mut self.inner().behind)
    }

    /// Change the mailbox under its lock; when `change` says it added something,
    /// wake the connection (its task, or the hibernated connection's waker).
    fn update_and_wake(&self, change: impl FnOnce(&mut Inner) -> bool) -> bool {
        let waker = {
            let mut inner = self.inner();
            if !change(&mut inner) {
                return false;
            }
            inner.waker.take()
        };
        self.wake(waker);
        true
    }

    fn wake(&self, waker: Option<Waker>) {
        // Stores a permit when nobody waits, so a wake-up is never lost.
        self.notify.notify_one();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Everything waiting, in order, in one lock (the queue keeps no memory).
    pub fn take_all(&self) -> VecDeque<ConnEvent> {
        std::mem::take(&mut self.inner().queue)
    }

    /// Resolves when something was pushed since the last wake-up.
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// Leave `waker` for the next push, unless events already wait (false).
    pub fn arm(&self, waker: Waker) -> bool {
        let mut inner = self.inner();
        if !inner.queue.is_empty() || inner.behind || inner.kick.is_some() {
            return false;
        }
        inner.waker = Some(waker);
        true
    }

    /// The connection has finished: wake whoever waits in `closed`.
    pub fn close(&self) {
        let waiting = {
            let mut inner = self.inner();
            inner.waker = None;
            inner.on_close.take()
        };
        for tx in waiting.into_iter().flatten() {
            let _ = tx.send(());
        }
    }

    /// Resolves once `close` was called.
    pub async fn closed(&self) {
        let rx = {
            let mut inner = self.inner();
            let Some(waiting) = inner.on_close.as_mut() else {
                return;
            };
            let (tx, rx) = oneshot::channel();
            waiting.push(tx);
            rx
        };
        let _ = rx.await;
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
