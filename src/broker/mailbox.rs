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
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(event);
        // Stores a permit when nobody waits, so a wake-up is never lost.
        self.notify.notify_one();
    }

    pub fn pop(&self) -> Option<ConnEvent> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let event = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 64 {
            // A burst is over: give the memory back.
            *queue = VecDeque::new();
        }
        event
    }

    pub fn len(&self) -> usize {
        self.queue.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Make the next `wait` return at once (the reader stopped with events left).
    pub fn push_wakeup(&self) {
        self.notify.notify_one();
    }

    /// Resolves when something was pushed since the last wake-up.
    pub async fn wait(&self) {
        self.notify.notified().await
    }
}
