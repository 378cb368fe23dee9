//! The session registry and the route table, behind one interface.
//!
//! `Registry` owns which sessions exist (online or offline), which connection holds
//! each, and every subscription (the topic trie). It is the piece a Raft state machine
//! will own in a cluster: all changes go through its methods, nothing else holds these
//! maps. Locks are std locks held for map operations only, never across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use super::mailbox::{Mailbox, Pushed, BACKLOG_HIGH};
use super::session_map::SessionMap;
pub use super::stamp::Stamp;
pub use super::subscriptions::Subscriptions;

use crate::codec::{QoS, ReasonCode, RetainHandling, SubscriptionOptions};
use crate::config::Zone;
use crate::message::ClientId;
use crate::metrics::Gauges;
use crate::router::TopicTrie;
use crate::session::Outgoing;

/// What the broker tells a connection task.
#[derive(Debug)]
pub enum ConnEvent {
    Deliver(Outgoing),
    /// The store finished writing what a PUBLISH from this client needed.
    Durable {
        packet_id: u16,
        qos: QoS,
        ok: bool,
    },
    /// SUBSCRIBE/UNSUBSCRIBE/PUBREL writes are durable: send this reply.
    Reply(Box<crate::codec::Packet>, Vec<Outgoing>),
    /// The release of an outbound QoS 2 delivery is durable: PUBREL may go.
    Released(u16),
    /// A `client.check_acl` decision the channel held packets for
    /// (`Channel::take_decisions`).
    Authorized {
        ticket: u64,
        verdicts: Vec<crate::hooks::AclVerdict>,
    },
    /// The reader pool's answer to `Action::LoadQueue { from, limit }`.
    Loaded {
        from: u64,
        limit: usize,
        page: quay_storage::Result<crate::session::Page>,
    },
    /// The reader pool's answer to a SUBSCRIBE's retained lookups.
    RetainedRead(Box<crate::broker::RetainedRead>),
    /// `emqx_ctl acl cache-clean <ClientId>`: forget the cached ACL answers.
    CleanAclCache,
    /// `emqx_ctl banned add`: close the connection if a ban now names its client.
    CheckBanned,
}

/// A connection's link to its session.
#[derive(Debug)]
pub struct ConnLink {
    pub conn_id: u64,
    /// Closed (`Mailbox::closed`) once the connection has finished and submitted all
    /// its store writes.
    pub mailbox: Arc<Mailbox>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubOpts {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
    /// 0 = none.
    pub subscription_id: u32,
}

impl SubOpts {
    pub fn from_options(o: &SubscriptionOptions, subscription_id: u32) -> SubOpts {
        SubOpts {
            qos: o.qos,
            no_local: o.no_local,
            retain_as_published: o.retain_as_published,
            retain_handling: o.retain_handling,
            subscription_id,
        }
    }
}

/// What a cluster replicates about a session: plain data (no handle, no mailbox, no
/// `Instant`), the same on every node. The session record in the store holds most of
/// it; the subscriptions are the session's rows of the route table.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionMeta {
    /// This life of the session (see `SessionRecord::incarnation`).
    pub incarnation: u64,
    pub persistent: bool,
    pub expiry_interval_s: u32,
    /// Filter → options, ordered; one pointer while there are none.
    pub subscriptions: Subscriptions,
    pub protocol_level: u8,
    /// Stored entries below this seq may have been sent (see `Outbound::dup_below`).
    pub dup_below: u64,
}

/// A session on this node: its replicated metadata (`meta`) beside what only this
/// node has (whether it is still registered here, the live connection and its
/// mailbox, instants, the zone's resolved settings).
#[derive(Debug)]
pub struct SessionState {
    pub meta: SessionMeta,
    /// Still the registered session of its client id. Cleared, under this lock, by
    /// `Registry::remove`: whoever holds a handle checks it before reviving it.
    pub live: bool,
    /// Set only through `Registry::attach`/`detach` once the session is registered:
    /// they keep `connections.count`.
    pub conn: Option<ConnLink>,
    /// Set while offline (wall clock, as the store keeps it): when the session
    /// expires.
    pub offline_since: Stamp,
    /// The zone of the listener the client last connected through (stored with the
    /// session, so a session recovered at start keeps its zone's limits while offline).
    pub zone: Arc<Zone>,
    /// The last connect here (wall clock); none for a session recovered at start.
    pub connected_at: Stamp,
    pub peer: Box<str>,
}

#[derive(Debug)]
pub struct SessionHandle {
    pub client_id: ClientId,
    state: Mutex<SessionState>,
}

impl SessionHandle {
    pub fn new(client_id: ClientId, state: SessionState) -> Arc<SessionHandle> {
        let handle = SessionHandle {
            client_id,
            state: Mutex::new(state),
        };
        crate::memory::long_lived(|| Arc::new(handle))
    }

    pub fn state(&self) -> MutexGuard<'_, SessionState> {
        // A panic while holding this lock is a bug; the data is still consistent
        // enough to serve (plain maps), so recover rather than poison everyone.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hand a volatile delivery to the connection, if any, under flow control (see
    /// `Mailbox::push_delivery`).
    pub fn deliver(&self, out: Outgoing) -> Delivered {
        // Pushed under the session lock: no Arc clone on the hot path. Lock order is
        // session state, then mailbox; the connection takes only the mailbox lock.
        match &self.state().conn {
            None => Delivered::Offline,
            Some(link) => match link.mailbox.push_delivery(ConnEvent::Deliver(out)) {
                Pushed::Accepted => Delivered::Sent,
                Pushed::Congested => Delivered::Congested(link.mailbox.clone()),
                Pushed::Full => Delivered::Dropped,
            },
        }
    }

    /// Hand a stored delivery to the connection, if any. One that does not fit its
    /// backlog is not lost (it is stored): the connection is told to read its queue
    /// from the store instead, so it never waits for a later delivery to see the gap.
    /// Stored deliveries never congest their publisher: the store holds them.
    pub fn deliver_stored(&self, out: Outgoing) {
        if let Some(link) = &self.state().conn {
            if !link
                .mailbox
                .push_bounded(ConnEvent::Deliver(out), BACKLOG_HIGH)
            {
                link.mailbox.mark_behind();
            }
        }
    }

    /// Close the connection holding this session, if any. False when offline.
    pub fn kick(&self, reason: ReasonCode) -> bool {
        match &self.state().conn {
            Some(link) => {
                link.mailbox.kick(reason);
                true
            }
            None => false,
        }
    }

    /// Ask the connection to close if a ban names its client; false if not connected.
    pub fn check_banned(&self) -> bool {
        self.tell_connection(ConnEvent::CheckBanned)
    }

    /// Ask the connection to forget its cached ACL answers; false if not connected.
    pub fn clean_acl_cache(&self) -> bool {
        self.tell_connection(ConnEvent::CleanAclCache)
    }

    /// Push `event` to the live connection's mailbox; false if not connected.
    fn tell_connection(&self, event: ConnEvent) -> bool {
        match &self.state().conn {
            Some(link) => {
                link.mailbox.push(event);
                true
            }
            None => false,
        }
    }
}

#[derive(Debug)]
pub enum Delivered {
    Sent,
    Offline,
    /// Taken, but the connection is behind: its publisher should wait for room.
    Congested(Arc<Mailbox>),
    /// The connection is too far behind (`BACKLOG_HARD`): not taken.
    Dropped,
}

/// The route table maps filters to subscriber ids (with the subscriber's session
/// incarnation and options), not to live handles: it is plain data, as a cluster
/// replicates it; `targets` resolves ids to local sessions.
type RouteTable = TopicTrie<ClientId, Route>;

#[derive(Debug, Clone, Copy)]
struct Route {
    /// The session life that subscribed (`SessionState::incarnation`): a route is
    /// removed only by the end of that life, and delivers only to it.
    incarnation: u64,
    opts: SubOpts,
}

#[derive(Default)]
pub struct Registry {
    sessions: Mutex<SessionMap>,
    routes: RwLock<RouteTable>,
    /// One CONNECT at a time per client id (see `lock_client`).
    connecting: Mutex<HashMap<ClientId, Arc<tokio::sync::Mutex<()>>>>,
    /// Counts of what the maps above hold, changed with them (no scans for stats).
    gauges: Gauges,
}

/// Held while a CONNECT decides and installs its session; see `Registry::lock_client`.
pub struct ClientLock<'a> {
    registry: &'a Registry,
    client: ClientId,
    guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for ClientLock<'_> {
    fn drop(&mut self) {
        let mut connecting = self.registry.connecting();
        // Clones are made under this map's lock: two strong counts (the map's and
        // our guard's) mean nobody else waits, so the entry can go.
        let lock = tokio::sync::OwnedMutexGuard::mutex(&self.guard);
        if Arc::strong_count(lock) == 2 {
            connecting.remove(&self.client);
        }
    }
}

/// One matching subscriber of a published topic, merged over its matching filters.
pub struct Target {
    pub handle: Arc<SessionHandle>,
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub subscription_ids: Vec<u32>,
}

impl Registry {
    fn sessions(&self) -> MutexGuard<'_, SessionMap> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connecting(&self) -> MutexGuard<'_, HashMap<ClientId, Arc<tokio::sync::Mutex<()>>>> {
        self.connecting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serialize CONNECTs of one client id: concurrent ones take turns, each taking
    /// over the session from the one before, so exactly one connection ends up
    /// holding it and no two ever serve one queue.
    pub async fn lock_client(&self, client: &ClientId) -> ClientLock<'_> {
        let lock = self.connecting().entry(client.clone()).or_default().clone();
        ClientLock {
            registry: self,
            client: client.clone(),
            guard: lock.lock_owned().await,
        }
    }

    pub fn get(&self, client: &str) -> Option<Arc<SessionHandle>> {
        self.sessions().get(client).cloned()
    }

    /// Register `handle` (its connection, if it has one, is counted). Callers remove
    /// the previous session of the client id first.
    pub fn insert(&self, handle: Arc<SessionHandle>) {
        let mut sessions = self.sessions();
        let (persistent, connected) = {
            let st = handle.state();
            (st.meta.persistent, st.live && st.conn.is_some())
        };
        if let Some(old) = sessions.insert(handle) {
            // Not done by any caller; keeps the persistent count right if it were.
            // The old handle stays live, so its connection is counted until it detaches.
            if old.state().meta.persistent {
                self.gauges.sessions_persistent.dec();
            }
        }
        self.gauges.sessions.set(sessions.len() as u64);
        if persistent {
            self.gauges.sessions_persistent.inc();
        }
        if connected {
            self.gauges.connections.inc();
        }
    }

    /// Attach a connection to a session (a resumed one: new sessions come with
    /// theirs through `insert`), replacing any link it had.
    pub fn attach(&self, st: &mut SessionState, link: ConnLink) {
        if st.live && st.conn.is_none() {
            self.gauges.connections.inc();
        }
        st.conn = Some(link);
    }

    /// Take the connection off a session: it is offline (or ending).
    pub fn detach(&self, st: &mut SessionState) -> Option<ConnLink> {
        let link = st.conn.take();
        if st.live && link.is_some() {
            self.gauges.connections.dec();
        }
        link
    }

    /// What is registered and routed now.
    pub fn gauges(&self) -> &Gauges {
        &self.gauges
    }

    pub fn len(&self) -> usize {
        self.sessions().len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions().is_empty()
    }

    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.sessions().values().cloned().collect()
    }

    /// Client ids with a CONNECT in progress or waiting (for tests and stats).
    pub fn connecting_len(&self) -> usize {
        self.connecting().len()
    }

    pub fn route_count(&self) -> usize {
        self.routes().len()
    }

    /// Distinct filters in the route table and how many subscribers each has.
    pub fn filters(&self) -> Vec<(String, usize)> {
        self.routes().filters()
    }

    fn routes(&self) -> std::sync::RwLockReadGuard<'_, RouteTable> {
        self.routes.read().unwrap_or_else(|e| e.into_inner())
    }

    fn routes_mut(&self) -> std::sync::RwLockWriteGuard<'_, RouteTable> {
        self.routes.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Called with the route table's write lock held after every change to it.
    fn count_routes(&self, routes: &RouteTable) {
        self.gauges.subscriptions.set(routes.len() as u64);
        let filters = routes.filter_count() as u64;
        self.gauges.topics.set(filters);
        // One route (filter -> this node) per filter until there is a cluster.
        self.gauges.routes.set(filters);
    }

    /// Remove `handle` (if it is still the registered one) and all its routes.
    pub fn remove(&self, handle: &Arc<SessionHandle>) -> bool {
        self.remove_if(handle, |_| true, |_| {})
    }

    /// Remove `handle` if it is live and `decide` says so, both under its state
    /// lock, and run `removed` under that lock too (the store write that ends the
    /// session: submitted there, it is ordered before anything a successor writes).
    /// True when this call removed it.
    pub fn remove_if(
        &self,
        handle: &Arc<SessionHandle>,
        decide: impl FnOnce(&SessionState) -> bool,
        removed: impl FnOnce(&SessionState),
    ) -> bool {
        let (filters, incarnation): (Vec<String>, u64) = {
            let mut sessions = self.sessions();
            let mut st = handle.state();
            if !st.live || !decide(&st) {
                return false;
            }
            st.live = false;
            if st.conn.is_some() {
                self.gauges.connections.dec();
            }
            removed(&st);
            if sessions
                .get(&handle.client_id)
                .is_some_and(|h| Arc::ptr_eq(h, handle))
            {
                sessions.remove(&handle.client_id);
                self.gauges.sessions.set(sessions.len() as u64);
                if st.meta.persistent {
                    self.gauges.sessions_persistent.dec();
                }
            }
            let filters = st.meta.subscriptions.take_filters();
            (filters, st.meta.incarnation)
        };
        let mut routes = self.routes_mut();
        for f in filters {
            if let Some(route) = routes.get(&f, &handle.client_id) {
                if route.incarnation == incarnation {
                    routes.remove(&f, &handle.client_id);
                }
            }
        }
        self.count_routes(&routes);
        true
    }

    /// Add or replace a subscription; returns true if it already existed. A session
    /// that has ended gets no route: the session's lock is held across the route
    /// change (lock order: session, then routes), so `remove_if` cannot run between
    /// them and leave a route behind.
    pub fn subscribe(&self, handle: &Arc<SessionHandle>, filter: &str, opts: SubOpts) -> bool {
        let mut st = handle.state();
        if !st.live {
            return false;
        }
        let existed = st
            .meta
            .subscriptions
            .insert(filter.to_owned(), opts)
            .is_some();
        let mut routes = self.routes_mut();
        let route = Route {
            incarnation: st.meta.incarnation,
            opts,
        };
        routes.insert(filter, handle.client_id.clone(), route);
        self.count_routes(&routes);
        existed
    }

    /// Remove a subscription; returns true if it existed.
    pub fn unsubscribe(&self, handle: &Arc<SessionHandle>, filter: &str) -> bool {
        let mut st = handle.state();
        let existed = st.meta.subscriptions.remove(filter).is_some();
        if existed {
            let mut routes = self.routes_mut();
            routes.remove(filter, &handle.client_id);
            self.count_routes(&routes);
        }
        existed
    }

    /// Subscribers of `topic`, one per client, with the highest QoS and every
    /// subscription identifier of its matching filters (MQTT 5 §3.3.4).
    pub fn targets(&self, topic: &str) -> Vec<Target> {
        struct Merged {
            client: ClientId,
            qos: QoS,
            no_local: bool,
            retain_as_published: bool,
            subscription_ids: Vec<u32>,
        }
        let mut matched: Vec<Merged> = Vec::new();
        {
            let routes = self.routes();
            let mut index: HashMap<ClientId, usize> = HashMap::new();
            routes.for_each_match(topic, |client, route| {
                let i = *index.entry(client.clone()).or_insert_with(|| {
                    matched.push(Merged {
                        client: client.clone(),
                        qos: QoS::AtMostOnce,
                        no_local: true,
                        retain_as_published: false,
                        subscription_ids: Vec::new(),
                    });
                    matched.len() - 1
                });
                let (m, opts) = (&mut matched[i], &route.opts);
                m.qos = m.qos.max(opts.qos);
                // Delivered unless every matching subscription says No Local.
                m.no_local &= opts.no_local;
                m.retain_as_published |= opts.retain_as_published;
                if opts.subscription_id != 0 {
                    m.subscription_ids.push(opts.subscription_id);
                }
            });
        }
        // Ids to this node's sessions, in one look at the session map. A session
        // that ended since the routes were read is skipped; one that started since
        // (same id, new incarnation) refuses a stale enqueue in the writer.
        let sessions = self.sessions();
        matched
            .into_iter()
            .filter_map(|m| {
                Some(Target {
                    handle: sessions.get(&m.client)?.clone(),
                    qos: m.qos,
                    no_local: m.no_local,
                    retain_as_published: m.retain_as_published,
                    subscription_ids: m.subscription_ids,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connects_of_one_client_take_turns_and_leave_no_entry() {
        let registry = Arc::new(Registry::default());
        let client: ClientId = Arc::from("c");
        let first = registry.lock_client(&client).await;
        let waiter = {
            let registry = registry.clone();
            let client = client.clone();
            tokio::spawn(async move {
                let _second = registry.lock_client(&client).await;
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "the second CONNECT waits for the first"
        );
        drop(first);
        waiter.await.unwrap();
        assert_eq!(registry.connecting_len(), 0, "no entry is left behind");
    }
}

#[cfg(test)]
#[path = "registry_gauges.rs"]
mod gauge_tests;
