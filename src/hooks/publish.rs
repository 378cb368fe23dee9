//! `message.publish` (may rewrite, stop the chain, or drop) and the delivery
//! notifications `message.delivered`, `message.acked`, `message.dropped`.
//!
//! `message.publish` is synchronous on purpose: it runs on every message before
//! routing, and EMQX 4's is synchronous too. A hook that needs I/O for a message
//! (a bridge, a store) copies what it needs into its own bounded queue.

use std::sync::Arc;

use super::{ClientInfo, Hook, HookPoint, Hooks};
use crate::message::{ClientId, Message};
use crate::session;

/// What a `message.publish` hook answers. A hook rewrites the message in place
/// (topic, payload, QoS, flags, properties) through the `&mut Message` it is given:
/// EMQX 4's `{ok, NewMsg}` is a change and `Continue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishResult {
    /// Go on to the next hook with the message as it now is. EMQX 4: `ok` / `{ok, Msg}`.
    Continue,
    /// Publish the message as it now is and run no further hook. EMQX 4: `{stop, Msg}`.
    Stop,
    /// Do not publish it at all (no routing, no store, no retain). EMQX 4:
    /// `{stop, Msg}` with the `allow_publish => false` header.
    Drop,
}

/// What the chain decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Route the message (as the hooks left it).
    Publish,
    /// Dropped by the hook registered under `by` (for the log line and the count).
    Dropped { by: Arc<str> },
}

/// Why a message was dropped (`message.dropped`), named as EMQX counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Published to a topic nobody subscribes to.
    NoSubscribers,
    /// A subscriber's queue was at `max_mqueue_len` (or its mailbox at its hard limit).
    QueueFull,
    /// Its Message Expiry Interval ran out before delivery.
    Expired,
    /// Larger than the subscriber's Maximum Packet Size.
    TooLarge,
    /// A `message.publish` hook dropped it.
    Disallowed,
    /// A stored queue entry whose message is gone (should not happen; logged).
    Missing,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoSubscribers => "no_subscribers",
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
            DropReason::Disallowed => "disallowed",
            DropReason::Missing => "missing",
        }
    }
}

impl From<session::DropReason> for DropReason {
    fn from(r: session::DropReason) -> DropReason {
        match r {
            session::DropReason::QueueFull => DropReason::QueueFull,
            session::DropReason::Missing => DropReason::Missing,
        }
    }
}

/// What a `message.hold` hook gives back: a function that takes the publisher's
/// completion and calls it (true: what the hook promised is durable) when ready. The
/// bridge appends the message to its segment cache and passes the completion to the
/// cache's fsync, so a QoS 1/2 PUBACK/PUBREC waits for it.
pub type Hold = Box<dyn FnOnce(Box<dyn FnOnce(bool) + Send>) + Send>;

impl Hooks {
    /// `message.hold`: every hook that must have the message durable before the
    /// publisher is acknowledged answers a `Hold`. Runs after `message.publish`, on the
    /// message as it will be routed.
    pub fn message_hold(&self, msg: &Message) -> Vec<Hold> {
        let mut holds = Vec::new();
        if let Some(chain) = self.chain(HookPoint::MessageHold) {
            for entry in chain.iter() {
                if let Hook::Hold(f) = &entry.hook {
                    holds.extend(f(msg));
                }
            }
        }
        holds
    }

    /// Run `message.publish` on a message about to be routed, rewriting it in place;
    /// `from` is its publisher's client info when a live client published it. With
    /// nothing registered this is one relaxed load and the message is not touched.
    #[inline]
    pub fn message_publish(
        &self,
        from: Option<&Arc<ClientInfo>>,
        msg: &mut Message,
    ) -> PublishOutcome {
        match self.chain(HookPoint::MessagePublish) {
            None => PublishOutcome::Publish,
            Some(chain) => {
                for entry in chain.iter() {
                    let Hook::MessagePublish(f) = &entry.hook else {
                        continue;
                    };
                    match f(from, msg) {
                        PublishResult::Continue => {}
                        PublishResult::Stop => return PublishOutcome::Publish,
                        PublishResult::Drop => {
                            return PublishOutcome::Dropped {
                                by: entry.name.clone(),
                            }
                        }
                    }
                }
                PublishOutcome::Publish
            }
        }
    }

    /// `message.delivered`: a PUBLISH is about to be sent to `to`.
    #[inline]
    pub fn message_delivered(&self, to: &Arc<ClientInfo>, msg: &Message) {
        if self.is_registered(HookPoint::MessageDelivered) {
            self.notify(HookPoint::MessageDelivered, |h| {
                if let Hook::Delivered(f) = h {
                    f(to, msg)
                }
            });
        }
    }

    /// `message.acked`: `by` completed a QoS 1 (PUBACK) or QoS 2 (PUBCOMP) delivery.
    #[inline]
    pub fn message_acked(&self, by: &Arc<ClientInfo>, msg: &Message) {
        if self.is_registered(HookPoint::MessageAcked) {
            self.notify(HookPoint::MessageAcked, |h| {
                if let Hook::Acked(f) = h {
                    f(by, msg)
                }
            });
        }
    }

    /// `message.dropped`: `msg` will not reach `subscriber` (or anyone, when `None`).
    #[inline]
    pub fn message_dropped(
        &self,
        msg: &Message,
        reason: DropReason,
        subscriber: Option<&ClientId>,
    ) {
        if self.is_registered(HookPoint::MessageDropped) {
            self.notify(HookPoint::MessageDropped, |h| {
                if let Hook::Dropped(f) = h {
                    f(msg, reason, subscriber)
                }
            });
        }
    }
}

/// A completion shared by `parts` callers: `done` runs once, after the last one,
/// with true only if every part answered true.
pub fn join_completions(
    parts: usize,
    done: Box<dyn FnOnce(bool) + Send>,
) -> Arc<dyn Fn(bool) + Send + Sync> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;
    let left = AtomicUsize::new(parts);
    let all_ok = AtomicBool::new(true);
    let done = Mutex::new(Some(done));
    Arc::new(move |ok: bool| {
        if !ok {
            all_ok.store(false, Ordering::SeqCst);
        }
        if left.fetch_sub(1, Ordering::SeqCst) == 1 {
            let d = done.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(d) = d {
                d(all_ok.load(Ordering::SeqCst));
            }
        }
    })
}
