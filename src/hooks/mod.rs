//! The hook chain: the one place where authentication, ACL, plugins, bridges,
//! `$SYS` events and trace plug into a client's life (EMQX's `emqx_hooks`).
//!
//! Each hook point has a typed callback ([`Hook`]); callbacks are registered under a
//! name with a priority (higher runs first; equal priorities run in registration
//! order, as in EMQX 4) and removed by name when a plugin unloads. The points and what
//! each may answer are listed in docs/ARCHITECTURE.md ("Hooks").
//!
//! Rules this module keeps:
//! - **No cost when nothing is registered**: every runner first checks one bit of an
//!   `AtomicU32` with a relaxed load and returns the caller's default.
//! - **No lock held while a hook runs**: a runner clones the point's chain (an
//!   `Arc<[Entry]>` snapshot, copy-on-write on registration) under a read lock held only
//!   for that clone, so a hook may register or remove hooks, and a slow hook never
//!   holds up registration or other callers.
//! - **Never blocks on I/O**: `client.authenticate` and `client.check_acl` answer a
//!   [`Decision`], `Ready` when known, `Pending(future)` when a backend must be
//!   asked; the caller awaits it without stopping its other work (the channel holds a
//!   client's later packets behind it: `channel::authorize`). Every other point is synchronous and must not
//!   block: a hook that needs I/O hands the event to its own task (a bounded
//!   channel, `try_send`, counted when full).
//!
//! This module must never call into connections or the broker: they call it.

mod auth;
mod client_info;
mod decision;
mod enhanced_auth;
mod events;
mod publish;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

pub use auth::{Access, AclResult, AclVerdict, AuthResult, AuthVerdict};
pub use client_info::{CertIdentity, ClientInfo, Credentials};
pub use decision::{BoxFuture, Decision};
pub use enhanced_auth::{AuthExchange, AuthStep};
pub use events::{ConnectedInfo, DisconnectReason};
pub use publish::{join_completions, DropReason, Hold, PublishOutcome, PublishResult};

use crate::codec::SubscriptionOptions;
use crate::message::{ClientId, Message};

/// Where a callback runs, with EMQX 4's name (`as_str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookPoint {
    ClientAuthenticate,
    ClientCheckAcl,
    ClientConnected,
    ClientDisconnected,
    SessionSubscribed,
    SessionUnsubscribed,
    MessagePublish,
    MessageDelivered,
    MessageAcked,
    MessageDropped,
    ClientEnhancedAuth,
    MessageHold,
}

const POINTS: usize = 12;

impl HookPoint {
    pub const ALL: [HookPoint; POINTS] = [
        HookPoint::ClientAuthenticate,
        HookPoint::ClientCheckAcl,
        HookPoint::ClientConnected,
        HookPoint::ClientDisconnected,
        HookPoint::SessionSubscribed,
        HookPoint::SessionUnsubscribed,
        HookPoint::MessagePublish,
        HookPoint::MessageDelivered,
        HookPoint::MessageAcked,
        HookPoint::MessageDropped,
        HookPoint::ClientEnhancedAuth,
        HookPoint::MessageHold,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HookPoint::ClientAuthenticate => "client.authenticate",
            HookPoint::ClientCheckAcl => "client.check_acl",
            HookPoint::ClientConnected => "client.connected",
            HookPoint::ClientDisconnected => "client.disconnected",
            HookPoint::SessionSubscribed => "session.subscribed",
            HookPoint::SessionUnsubscribed => "session.unsubscribed",
            HookPoint::MessagePublish => "message.publish",
            HookPoint::MessageDelivered => "message.delivered",
            HookPoint::MessageAcked => "message.acked",
            HookPoint::MessageDropped => "message.dropped",
            HookPoint::ClientEnhancedAuth => "client.enhanced_authenticate",
            HookPoint::MessageHold => "message.hold",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn bit(self) -> u32 {
        1 << self.index()
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub type AuthenticateFn =
    dyn Fn(&Arc<ClientInfo>, &Arc<Credentials>) -> Decision<AuthResult> + Send + Sync;
pub type CheckAclFn = dyn Fn(&Arc<ClientInfo>, Access, &str) -> Decision<AclResult> + Send + Sync;
pub type ConnectedFn = dyn Fn(&Arc<ClientInfo>, &ConnectedInfo) + Send + Sync;
/// `(client, reason, at_ms)`.
pub type DisconnectedFn = dyn Fn(&Arc<ClientInfo>, DisconnectReason, u64) + Send + Sync;
pub type SubscribedFn = dyn Fn(&Arc<ClientInfo>, &str, &SubscriptionOptions) + Send + Sync;
pub type UnsubscribedFn = dyn Fn(&Arc<ClientInfo>, &str) + Send + Sync;
/// `(publisher, message)`; the publisher is `None` for messages of no live client
/// (`$SYS`, bridges' inbound messages, delayed wills published after their client left).
pub type MessagePublishFn =
    dyn Fn(Option<&Arc<ClientInfo>>, &mut Message) -> PublishResult + Send + Sync;
/// `(subscriber, message)`.
pub type DeliveredFn = dyn Fn(&Arc<ClientInfo>, &Message) + Send + Sync;
/// `(subscriber, message)`.
pub type AckedFn = dyn Fn(&Arc<ClientInfo>, &Message) + Send + Sync;
/// `(message, reason, subscriber whose queue dropped it, if any)`.
pub type DroppedFn = dyn Fn(&Message, DropReason, Option<&ClientId>) + Send + Sync;
/// `(authentication method)`: an exchange if this hook serves the method.
pub type EnhancedAuthFn = dyn Fn(&str) -> Option<Box<dyn AuthExchange>> + Send + Sync;
/// `(message)` about to be routed: `Some(hold)` makes the publisher's PUBACK/PUBREC
/// wait until the hook calls `hold`'s completion (see `publish::Hold`).
pub type HoldFn = dyn Fn(&Message) -> Option<Hold> + Send + Sync;

/// A typed callback for one hook point. Build it with the constructor of its point
/// (`Hook::authenticate(|info, creds| ...)`).
#[derive(Clone)]
pub enum Hook {
    Authenticate(Arc<AuthenticateFn>),
    CheckAcl(Arc<CheckAclFn>),
    Connected(Arc<ConnectedFn>),
    Disconnected(Arc<DisconnectedFn>),
    Subscribed(Arc<SubscribedFn>),
    Unsubscribed(Arc<UnsubscribedFn>),
    MessagePublish(Arc<MessagePublishFn>),
    Delivered(Arc<DeliveredFn>),
    Acked(Arc<AckedFn>),
    Dropped(Arc<DroppedFn>),
    EnhancedAuth(Arc<EnhancedAuthFn>),
    Hold(Arc<HoldFn>),
}

impl Hook {
    pub fn point(&self) -> HookPoint {
        match self {
            Hook::Authenticate(_) => HookPoint::ClientAuthenticate,
            Hook::CheckAcl(_) => HookPoint::ClientCheckAcl,
            Hook::Connected(_) => HookPoint::ClientConnected,
            Hook::Disconnected(_) => HookPoint::ClientDisconnected,
            Hook::Subscribed(_) => HookPoint::SessionSubscribed,
            Hook::Unsubscribed(_) => HookPoint::SessionUnsubscribed,
            Hook::MessagePublish(_) => HookPoint::MessagePublish,
            Hook::Delivered(_) => HookPoint::MessageDelivered,
            Hook::Acked(_) => HookPoint::MessageAcked,
            Hook::Dropped(_) => HookPoint::MessageDropped,
            Hook::EnhancedAuth(_) => HookPoint::ClientEnhancedAuth,
            Hook::Hold(_) => HookPoint::MessageHold,
        }
    }

    pub fn authenticate(
        f: impl Fn(&Arc<ClientInfo>, &Arc<Credentials>) -> Decision<AuthResult> + Send + Sync + 'static,
    ) -> Hook {
        Hook::Authenticate(Arc::new(f))
    }

    pub fn check_acl(
        f: impl Fn(&Arc<ClientInfo>, Access, &str) -> Decision<AclResult> + Send + Sync + 'static,
    ) -> Hook {
        Hook::CheckAcl(Arc::new(f))
    }

    pub fn connected(f: impl Fn(&Arc<ClientInfo>, &ConnectedInfo) + Send + Sync + 'static) -> Hook {
        Hook::Connected(Arc::new(f))
    }

    pub fn disconnected(
        f: impl Fn(&Arc<ClientInfo>, DisconnectReason, u64) + Send + Sync + 'static,
    ) -> Hook {
        Hook::Disconnected(Arc::new(f))
    }

    pub fn subscribed(
        f: impl Fn(&Arc<ClientInfo>, &str, &SubscriptionOptions) + Send + Sync + 'static,
    ) -> Hook {
        Hook::Subscribed(Arc::new(f))
    }

    pub fn unsubscribed(f: impl Fn(&Arc<ClientInfo>, &str) + Send + Sync + 'static) -> Hook {
        Hook::Unsubscribed(Arc::new(f))
    }

    pub fn message_publish(
        f: impl Fn(Option<&Arc<ClientInfo>>, &mut Message) -> PublishResult + Send + Sync + 'static,
    ) -> Hook {
        Hook::MessagePublish(Arc::new(f))
    }

    pub fn delivered(f: impl Fn(&Arc<ClientInfo>, &Message) + Send + Sync + 'static) -> Hook {
        Hook::Delivered(Arc::new(f))
    }

    pub fn acked(f: impl Fn(&Arc<ClientInfo>, &Message) + Send + Sync + 'static) -> Hook {
        Hook::Acked(Arc::new(f))
    }

    pub fn dropped(
        f: impl Fn(&Message, DropReason, Option<&ClientId>) + Send + Sync + 'static,
    ) -> Hook {
        Hook::Dropped(Arc::new(f))
    }

    pub fn enhanced_auth(
        f: impl Fn(&str) -> Option<Box<dyn AuthExchange>> + Send + Sync + 'static,
    ) -> Hook {
        Hook::EnhancedAuth(Arc::new(f))
    }

    pub fn hold(f: impl Fn(&Message) -> Option<Hold> + Send + Sync + 'static) -> Hook {
        Hook::Hold(Arc::new(f))
    }
}

/// One registered callback.
#[derive(Clone)]
struct Entry {
    name: Arc<str>,
    priority: i32,
    hook: Hook,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    #[error("hook {name:?} is already registered on {point}")]
    AlreadyExists { point: HookPoint, name: String },
}

/// The registry: one ordered chain per hook point. Shared as `Arc<Hooks>` by every
/// connection; registration may happen from any thread at any time.
pub struct Hooks {
    /// Bit `point.index()` set while that point's chain is non-empty: the fast path.
    registered: AtomicU32,
    /// Each point's chain in run order. Replaced whole on every change (copy-on-write),
    /// so a runner's snapshot never changes under it.
    chains: RwLock<[Arc<[Entry]>; POINTS]>,
    /// Bumped on every change of a point's chain, and by `invalidate`: whoever keeps
    /// answers of a chain (the per-client ACL cache) knows they may be stale.
    generations: [AtomicU64; POINTS],
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            registered: AtomicU32::new(0),
            chains: RwLock::new(std::array::from_fn(|_| Arc::from(Vec::new()))),
            generations: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for point in HookPoint::ALL {
            let names: Vec<_> = self
                .list(point)
                .into_iter()
                .map(|(n, p)| format!("{n}@{p}"))
                .collect();
            if !names.is_empty() {
                m.entry(&point.as_str(), &names);
            }
        }
        m.finish()
    }
}

impl Hooks {
    pub fn new() -> Hooks {
        Hooks::default()
    }

    /// Register `hook` under `name` at `priority` (higher runs first; among equal
    /// priorities, earlier registrations first). A name is unique per point, as
    /// EMQX refuses the same callback twice. Calls that start after this returns see
    /// the hook; calls already running finish with the chain they started with.
    pub fn add(&self, name: &str, priority: i32, hook: Hook) -> Result<(), HookError> {
        let point = hook.point();
        let mut chains = self.write();
        let chain = &chains[point.index()];
        if chain.iter().any(|e| &*e.name == name) {
            return Err(HookError::AlreadyExists {
                point,
                name: name.to_string(),
            });
        }
        // Before the first entry of lower priority: stable for equal priorities.
        let at = chain
            .iter()
            .position(|e| e.priority < priority)
            .unwrap_or(chain.len());
        let mut next: Vec<Entry> = chain.to_vec();
        next.insert(
            at,
            Entry {
                name: Arc::from(name),
                priority,
                hook,
            },
        );
        self.replace(&mut chains, point, next);
        tracing::debug!(
            hook = name,
            point = point.as_str(),
            priority,
            "hook registered"
        );
        Ok(())
    }

    /// Remove the callback `name` from `point`; false if it was not there.
    pub fn remove(&self, point: HookPoint, name: &str) -> bool {
        let mut chains = self.write();
        let chain = &chains[point.index()];
        if !chain.iter().any(|e| &*e.name == name) {
            return false;
        }
        let next: Vec<Entry> = chain.iter().filter(|e| &*e.name != name).cloned().collect();
        self.replace(&mut chains, point, next);
        tracing::debug!(hook = name, point = point.as_str(), "hook removed");
        true
    }

    /// Remove `name` from every point (a plugin unloading); how many were removed.
    pub fn remove_all(&self, name: &str) -> usize {
        HookPoint::ALL
            .into_iter()
            .filter(|&p| self.remove(p, name))
            .count()
    }

    /// `(name, priority)` of each callback on `point`, in run order.
    pub fn list(&self, point: HookPoint) -> Vec<(Arc<str>, i32)> {
        self.snapshot(point)
            .iter()
            .map(|e| (e.name.clone(), e.priority))
            .collect()
    }

    /// Whether anything is registered on `point`: one relaxed load. A caller may use
    /// it to skip building a hook's arguments.
    #[inline]
    pub fn is_registered(&self, point: HookPoint) -> bool {
        self.registered.load(Ordering::Relaxed) & point.bit() != 0
    }

    /// How many times `point`'s chain changed (or was invalidated): one relaxed load.
    #[inline]
    pub fn generation(&self, point: HookPoint) -> u64 {
        self.generations[point.index()].load(Ordering::Acquire)
    }

    /// Tell keepers of `point`'s answers that they changed although the chain did not
    /// (the file ACL reloaded its rules, `emqx_ctl acl cache-clean`).
    pub fn invalidate(&self, point: HookPoint) {
        self.generations[point.index()].fetch_add(1, Ordering::AcqRel);
    }

    /// Whether any hook is registered at all.
    #[inline]
    pub fn any_registered(&self) -> bool {
        self.registered.load(Ordering::Relaxed) != 0
    }

    /// The chain to run, or `None` (the fast path) when nothing is registered.
    #[inline]
    fn chain(&self, point: HookPoint) -> Option<Arc<[Entry]>> {
        if self.is_registered(point) {
            Some(self.snapshot(point))
        } else {
            None
        }
    }

    #[inline(never)]
    fn snapshot(&self, point: HookPoint) -> Arc<[Entry]> {
        // Held only for this clone; a poisoned lock still holds a consistent array
        // (nothing in the write sections can panic half-way), so use it.
        let chains = self.chains.read().unwrap_or_else(|e| e.into_inner());
        chains[point.index()].clone()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, [Arc<[Entry]>; POINTS]> {
        self.chains.write().unwrap_or_else(|e| e.into_inner())
    }

    fn replace(&self, chains: &mut [Arc<[Entry]>; POINTS], point: HookPoint, next: Vec<Entry>) {
        let empty = next.is_empty();
        chains[point.index()] = Arc::from(next);
        self.invalidate(point);
        // Under the write lock, so bits of two points changing at once cannot lose
        // each other's update.
        if empty {
            self.registered.fetch_and(!point.bit(), Ordering::Relaxed);
        } else {
            self.registered.fetch_or(point.bit(), Ordering::Relaxed);
        }
    }

    /// Run a notification point: every callback, in order, none can stop the others.
    #[inline(never)]
    fn notify(&self, point: HookPoint, mut call: impl FnMut(&Hook)) {
        for entry in self.snapshot(point).iter() {
            call(&entry.hook);
        }
    }
}
