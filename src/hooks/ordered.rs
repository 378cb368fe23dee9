//! `InOrder`: decisions that complete out of order, released in the order they were
//! asked. A channel uses it for `client.check_acl(publish)`: the PUBLISHes of one
//! client must reach the router in the order the client sent them (MQTT 4.6), but an
//! ACL backend (HTTP, SQL) may answer the second before the first, and while any of
//! them waits the connection must keep delivering, acking and answering PINGREQ.
//!
//! Every waiting future is polled (so the backend's requests run concurrently); only
//! the oldest is ever released. The queue is bounded by the caller: the channel stops
//! taking PUBLISHes (stops reading its socket) while `len()` is at its limit.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Context, Poll};

use super::decision::{BoxFuture, Decision};

enum Slot<V> {
    Ready(V),
    Pending(BoxFuture<V>),
}

pub struct InOrder<T, V> {
    queue: VecDeque<(T, Slot<V>)>,
}

impl<T, V> Default for InOrder<T, V> {
    fn default() -> Self {
        InOrder {
            queue: VecDeque::new(),
        }
    }
}

impl<T, V> InOrder<T, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Items waiting (their own decision, or an earlier one).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Hand in `item` with its decision. With nothing waiting and a ready decision it
    /// comes straight back (no queueing, no allocation: the path of every in-memory
    /// hook); otherwise it waits behind the ones before it and comes out of
    /// [`poll_next`](Self::poll_next) / [`next`](Self::next).
    #[must_use = "a returned item is released now and must be acted on"]
    pub fn push(&mut self, item: T, decision: Decision<V>) -> Option<(T, V)> {
        match decision {
            Decision::Ready(v) if self.queue.is_empty() => Some((item, v)),
            Decision::Ready(v) => {
                self.queue.push_back((item, Slot::Ready(v)));
                None
            }
            Decision::Pending(fut) => {
                self.queue.push_back((item, Slot::Pending(fut)));
                None
            }
        }
    }

    /// Drive every waiting decision; release the oldest item once it is decided.
    /// `Pending` while empty, so it can sit in a `select!` branch.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<(T, V)> {
        for (_, slot) in self.queue.iter_mut() {
            if let Slot::Pending(fut) = slot {
                if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                    *slot = Slot::Ready(v);
                }
            }
        }
        match self.queue.front() {
            Some((_, Slot::Ready(_))) => match self.queue.pop_front() {
                Some((item, Slot::Ready(v))) => Poll::Ready((item, v)),
                _ => Poll::Pending,
            },
            _ => Poll::Pending,
        }
    }

    /// The next item in order, once decided (never resolves while empty).
    pub async fn next(&mut self) -> (T, V) {
        poll_fn(|cx| self.poll_next(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn waiting(rx: oneshot::Receiver<bool>) -> Decision<bool> {
        Decision::pending(async move { rx.await.unwrap_or(false) })
    }

    #[test]
    fn ready_with_nothing_waiting_passes_straight_through() {
        let mut q: InOrder<u32, bool> = InOrder::new();
        assert_eq!(q.push(1, Decision::Ready(true)), Some((1, true)));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn later_answers_wait_for_earlier_ones() {
        let mut q: InOrder<u32, bool> = InOrder::new();
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        assert!(q.push(1, waiting(rx1)).is_none());
        assert!(q.push(2, waiting(rx2)).is_none());
        // A ready answer behind a pending one must wait too.
        assert!(q.push(3, Decision::Ready(true)).is_none());
        assert_eq!(q.len(), 3);

        // The second backend answers first: nothing may come out yet.
        tx2.send(false).unwrap();
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), q.next()).await;
        assert!(early.is_err(), "released out of order: {early:?}");

        tx1.send(true).unwrap();
        assert_eq!(q.next().await, (1, true));
        assert_eq!(q.next().await, (2, false));
        assert_eq!(q.next().await, (3, true));
        assert!(q.is_empty());
        // Empty again: a ready decision passes straight through.
        assert_eq!(q.push(4, Decision::Ready(false)), Some((4, false)));
    }

    #[tokio::test]
    async fn other_work_goes_on_while_a_decision_waits() {
        // The shape a connection uses: one select! over the pending decisions and its
        // other inputs; the other inputs are served while the ACL backend is slow.
        let mut q: InOrder<u32, bool> = InOrder::new();
        let (tx, rx) = oneshot::channel();
        assert!(q.push(7, waiting(rx)).is_none());
        let (other_tx, mut other_rx) = tokio::sync::mpsc::channel::<u32>(8);
        for i in 0..3 {
            other_tx.send(i).await.unwrap();
        }
        let mut served = Vec::new();
        let mut answer_tx = Some(tx);
        let released = loop {
            tokio::select! {
                (item, v) = q.next() => break (item, v),
                Some(i) = other_rx.recv() => {
                    served.push(i);
                    if served.len() == 3 {
                        if let Some(tx) = answer_tx.take() { tx.send(true).unwrap(); }
                    }
                }
            }
        };
        assert_eq!(served, vec![0, 1, 2]);
        assert_eq!(released, (7, true));
    }
}
