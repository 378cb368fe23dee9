//! A connection's inbox: what the broker and the store writer hand it.
//!
//! A plain queue plus a `Notify`, rather than a tokio channel, because an idle
//! connection must cost little memory: an empty `VecDeque` allocates nothing, where a
//! channel allocates a block of slots up front. Pushing never blocks (the writer thread
//! pushes from its completions).
//!
//! Deliveries are flow-controlled here. Above `BACKLOG_HIGH` waiting events a push is
//! still taken but answered `Pushed::Congested`: the publishing connection then stops
//! reading its socket until this mailbox has room again (`wait_room`), which is TCP
//! backpressure reaching the publisher's client. Only above `BACKLOG_HARD` (publishers
//! that cannot pause: wills, many at once) is a delivery refused, and counted.
//!
//! A hibernated connection has no task waiting on the `Notify`: it leaves a `Waker`
//! here instead, which the next push wakes. The mailbox also tells whoever asks when
//! its connection has finished (`close`, `closed`), which a takeover waits for.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;

use tokio::sync::{oneshot, Notify};

use super::registry::ConnEvent;
use crate::codec::ReasonCode;

/// Events waiting above which a delivery congests its publisher.
pub const BACKLOG_HIGH: usize = 10_000;
/// Congested publishers wait until the backlog is below this.
pub const BACKLOG_LOW: usize = BACKLOG_HIGH / 2;
/// Events waiting above which a delivery is refused (dropped by the caller).
pub const BACKLOG_HARD: usize = 4 * BACKLOG_HIGH;

#[derive(Debug, Default)]
pub struct Mailbox {
    inner: Mutex<Inner>,
    notify: Notify,
    /// Wall-clock ms when the connection last took events or wrote to its socket:
    /// tells a slow subscriber from one that stopped reading (`stalled_for_ms`).
    progress_ms: AtomicU64,
}

/// How a flow-controlled push went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Accepted,
    /// Accepted, above `BACKLOG_HIGH`: the publisher should wait for `room`.
    Congested,
    /// Refused: above `BACKLOG_HARD`.
    Full,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<ConnEvent>,
    /// Set by a hibernating connection; taken (and woken) by the next push.
    waker: Option<Waker>,
    /// `close` was called: the connection has finished.
    closed: bool,
    /// A stored delivery did not fit: the connection must read its queue from the
    /// store (`take_behind`).
    behind: bool,
    /// Close the connection with this reason (takeover, admin kick, store failure).
    /// Out of band: seen even while the connection takes no events because its
    /// client is not reading.
    kick: Option<ReasonCode>,
    /// Who waits for this mailbox: for `closed`, or for room. Boxed, and only while
    /// someone waits (rarely anyone): every connection has a mailbox, and 8 bytes
    /// here instead of two Vecs' 48 keep it in mimalloc's 128-byte class.
    waiting: Option<Box<Waiting>>,
    /// A mailbox this connection waited for has room (`wait_room`).
    room_ready: bool,
}

#[derive(Debug, Default)]
struct Waiting {
    /// Who waits for `closed` (a takeover).
    on_close: Vec<oneshot::Sender<()>>,
    /// Publishers' mailboxes waiting for the backlog to fall below `BACKLOG_LOW`.
    room: Vec<Arc<Mailbox>>,
}

impl Inner {
    fn waiting(&mut self) -> &mut Waiting {
        self.waiting.get_or_insert_with(Default::default)
    }

    /// The publishers waiting for room, no longer waiting.
    fn take_room(&mut self) -> Vec<Arc<Mailbox>> {
        let Some(waiting) = self.waiting.as_mut() else {
            return Vec::new();
        };
        let room = std::mem::take(&mut waiting.room);
        if waiting.on_close.is_empty() {
            self.waiting = None;
        }
        room
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

    /// Push a delivery under flow control (see the module's notes).
    pub fn push_delivery(&self, event: ConnEvent) -> Pushed {
        let mut pushed = Pushed::Full;
        self.update_and_wake(|inner| {
            let len = inner.queue.len();
            if len >= BACKLOG_HARD {
                return false;
            }
            inner.queue.push_back(event);
            pushed = if len >= BACKLOG_HIGH {
                Pushed::Congested
            } else {
                Pushed::Accepted
            };
            true
        });
        pushed
    }

    /// `waiter` (a publisher's mailbox) is told (`take_room`) once fewer than
    /// `BACKLOG_LOW` events wait here, or this connection has finished: at once if
    /// that is so already.
    pub fn wait_room(&self, waiter: Arc<Mailbox>) {
        {
            let mut inner = self.inner();
            if inner.queue.len() >= BACKLOG_LOW && !inner.closed {
                inner.waiting().room.push(waiter);
                return;
            }
        }
        waiter.signal_room();
    }

    fn signal_room(&self) {
        self.update_and_wake(|inner| {
            inner.room_ready = true;
            true
        });
    }

    /// Whether a mailbox this connection waited for has room (see `wait_room`).
    pub fn take_room(&self) -> bool {
        std::mem::take(&mut self.inner().room_ready)
    }

    /// The connection took events or wrote to its socket.
    pub fn note_progress(&self, now_ms: u64) {
        self.progress_ms.store(now_ms, Ordering::Relaxed);
    }

    /// How long deliveries have been held up here: None while the backlog is below
    /// `BACKLOG_HIGH` (nobody is congested by it), else the time since the
    /// connection last made progress.
    pub fn stalled_for_ms(&self, now_ms: u64) -> Option<u64> {
        if self.inner().queue.len() < BACKLOG_HIGH {
            return None;
        }
        Some(now_ms.saturating_sub(self.progress_ms.load(Ordering::Relaxed)))
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

    /// Everything waiting, in order, in one lock (the queue keeps no memory); wakes
    /// the publishers waiting for room.
    pub fn take_all(&self) -> VecDeque<ConnEvent> {
        let (events, room) = {
            let mut inner = self.inner();
            let events = std::mem::take(&mut inner.queue);
            (events, inner.take_room())
        };
        if !events.is_empty() {
            self.note_progress(crate::message::now_ms());
        }
        for waiter in room {
            waiter.signal_room();
        }
        events
    }

    /// Resolves when something was pushed since the last wake-up.
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// Leave `waker` for the next push, unless events already wait (false).
    pub fn arm(&self, waker: Waker) -> bool {
        let mut inner = self.inner();
        if !inner.queue.is_empty() || inner.behind || inner.kick.is_some() || inner.room_ready {
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
            inner.closed = true;
            inner.waiting.take().map(|w| *w).unwrap_or_default()
        };
        for tx in waiting.on_close {
            let _ = tx.send(());
        }
        for waiter in waiting.room {
            waiter.signal_room();
        }
    }

    /// Resolves once `close` was called.
    pub async fn closed(&self) {
        let rx = {
            let mut inner = self.inner();
            if inner.closed {
                return;
            }
            let (tx, rx) = oneshot::channel();
            inner.waiting().on_close.push(tx);
            rx
        };
        let _ = rx.await;
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    fn event() -> ConnEvent {
        ConnEvent::Released(1)
    }

    fn fill(mailbox: &Mailbox, n: usize) {
        for _ in 0..n {
            assert_eq!(mailbox.push_delivery(event()), Pushed::Accepted);
        }
    }

    #[test]
    fn deliveries_congest_above_high_and_are_refused_above_hard() {
        let mailbox = Mailbox::default();
        fill(&mailbox, BACKLOG_HIGH);
        assert_eq!(mailbox.push_delivery(event()), Pushed::Congested);
        for _ in BACKLOG_HIGH + 1..BACKLOG_HARD {
            assert_eq!(mailbox.push_delivery(event()), Pushed::Congested);
        }
        assert_eq!(mailbox.push_delivery(event()), Pushed::Full);
        // Acks and replies are never refused.
        mailbox.push(ConnEvent::Durable {
            packet_id: 1,
            qos: QoS::AtLeastOnce,
            ok: true,
        });
        assert_eq!(mailbox.take_all().len(), BACKLOG_HARD + 1);
        assert_eq!(mailbox.push_delivery(event()), Pushed::Accepted);
    }

    #[test]
    fn a_waiting_publisher_is_told_when_the_backlog_is_taken() {
        let subscriber = Mailbox::default();
        let publisher = Arc::new(Mailbox::default());
        fill(&subscriber, BACKLOG_HIGH);
        subscriber.wait_room(publisher.clone());
        assert!(!publisher.take_room(), "no room yet");
        subscriber.take_all();
        assert!(publisher.take_room(), "told once taken");
        assert!(!publisher.take_room(), "told once");
    }

    #[test]
    fn a_waiting_publisher_is_told_when_the_subscriber_finishes() {
        let subscriber = Mailbox::default();
        let publisher = Arc::new(Mailbox::default());
        fill(&subscriber, BACKLOG_HIGH);
        subscriber.wait_room(publisher.clone());
        subscriber.close();
        assert!(publisher.take_room());
        // Waiting on a finished connection returns at once.
        subscriber.wait_room(publisher.clone());
        assert!(publisher.take_room());
    }

    #[test]
    fn a_stall_counts_only_while_the_backlog_holds_publishers_up() {
        let mailbox = Mailbox::default();
        mailbox.note_progress(1_000);
        fill(&mailbox, BACKLOG_HIGH - 1);
        assert_eq!(mailbox.stalled_for_ms(9_000), None);
        fill(&mailbox, 1);
        assert_eq!(mailbox.stalled_for_ms(9_000), Some(8_000));
        mailbox.note_progress(9_000);
        assert_eq!(mailbox.stalled_for_ms(9_500), Some(500));
    }

    #[tokio::test]
    async fn wait_returns_for_a_push_before_or_during_it_and_not_otherwise() {
        use std::time::Duration;
        let mailbox = Arc::new(Mailbox::default());
        // Pushed before waiting: not lost.
        mailbox.push(event());
        tokio::time::timeout(Duration::from_secs(5), mailbox.wait())
            .await
            .expect("a push before wait is seen");
        // Nothing since: wait waits.
        let idle = tokio::time::timeout(Duration::from_millis(100), mailbox.wait()).await;
        assert!(idle.is_err(), "woke without a push");
        // Pushed from another thread while waiting: woken.
        let pusher = mailbox.clone();
        let push = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            pusher.push(event());
        });
        tokio::time::timeout(Duration::from_secs(5), mailbox.wait())
            .await
            .expect("a push during wait wakes it");
        push.join().unwrap();
        assert_eq!(mailbox.take_all().len(), 2);
    }

    /// A pusher on another thread, a waiter that takes everything and waits again:
    /// no push is left without a wake-up (the waiter would sleep on a full mailbox).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiter_racing_a_pusher_misses_no_push() {
        use std::time::Duration;
        let mailbox = Arc::new(Mailbox::default());
        let total = 200_000;
        let pusher = mailbox.clone();
        let push = std::thread::spawn(move || {
            for i in 0..total {
                pusher.push(event());
                if i % 1000 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let mut got = 0;
        loop {
            got += mailbox.take_all().len();
            if got == total {
                break;
            }
            tokio::select! {
                _ = mailbox.wait() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("not woken with {got} of {total} taken"),
            }
        }
        push.join().unwrap();
    }
}
