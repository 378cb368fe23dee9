//! A connection's inbox: what the broker and the store writer hand it.
//!
//! A plain queue plus a `Notify`, rather than a tokio channel, because an idle
//! connection must cost little memory: an empty `VecDeque` allocates nothing, where a
//! channel allocates a block of slots up front. Pushing never blocks (the writer thread
//! pushes from its completions); deliveries are bounded by the caller (`MAX_BACKLOG`).

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::registry::ConnEvent;

#[derive(Debug, Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<ConnEvent>>,
    notify: Notify,
}

impl Mailbox {
    pub fn push(&self, event: ConnEvent) {
        self.queue().push_back(event);
        // Stores a permit when nobody waits, so a wake-up is never lost.
        self.notify.notify_one();
    }

    /// Push unless `max` events already wait; false when full.
    pub fn push_bounded(&self, event: ConnEvent, max: usize) -> bool {
        {
            let mut queue = self.queue();
            if queue.len() >= max {
                return false;
            }
            queue.push_back(event);
        }
        self.notify.notify_one();
        true
    }

    /// Everything waiting, in order, in one lock (the queue keeps no memory).
    pub fn take_all(&self) -> VecDeque<ConnEvent> {
        std::mem::take(&mut *self.queue())
    }

    /// Resolves when something was pushed since the last wake-up.
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<ConnEvent>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}
