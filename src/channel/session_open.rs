//! CONNECT's session decision, once the client is authenticated and no connection
//! holds its session any more: resume the session its client id has, or start a new
//! one (discarding the old one, whose waiting will is then due); what is stored about
//! it; and the channel that serves it. The driver (`connection::accept`) does only the
//! waiting around these steps: the takeover, the store barrier, the read of the
//! inbound QoS 2 ids.

use std::sync::Arc;

use quay_storage::{Op, SessionRecord};

use super::connect::Admission;
use super::{Accepted, Channel, Now};
use crate::broker::mailbox::Mailbox;
use crate::broker::registry::{ConnLink, SessionHandle, SessionMeta, SessionState, Stamp};
use crate::broker::Broker;
use crate::config::Zone;
use crate::hooks::{ConnectedInfo, HookPoint};
use crate::metrics::Metrics;
use crate::session::{Inbound, Outbound, SessionConfig};

/// Whether a CONNECT resumes the session its client id has (else a new one starts and
/// the old one, if any, is discarded): not with Clean Start, and only a session that
/// is still registered, stored and not held by a connection (a takeover has detached
/// the one before by now).
pub(crate) fn may_resume(clean_start: bool, st: &SessionState) -> bool {
    !clean_start && st.live && st.meta.persistent && st.conn.is_none()
}

/// The session a CONNECT got, attached to its new connection.
pub(crate) struct Settled {
    broker: Arc<Broker>,
    zone: Arc<Zone>,
    handle: Arc<SessionHandle>,
    conn_id: u64,
    mailbox: Arc<Mailbox>,
    /// An existing session was resumed (CONNACK's Session Present).
    pub resumed: bool,
    /// The session is stored (it outlives the connection, or was resumed).
    persistent: bool,
    dup_below: u64,
    /// Store writes were submitted that must be durable before the CONNACK (and
    /// before a resumed session's QoS 2 ids are read).
    pub needs_barrier: bool,
}

/// Resume or create the session `a` asks for and attach it to a new connection.
/// The caller holds the client id's CONNECT lock (`Registry::lock_client`) and has
/// taken the session over from any connection that held it, so exactly one CONNECT
/// of a client id settles at a time.
pub(crate) fn settle(broker: &Arc<Broker>, zone: &Arc<Zone>, a: &Admission, now: Now) -> Settled {
    let client_id = &a.client_id;
    let version = a.connect.protocol;
    let conn_id = broker.next_conn_id();
    let mailbox = crate::memory::long_lived(|| Arc::new(Mailbox::default()));
    let mut link = Some(ConnLink {
        conn_id,
        mailbox: mailbox.clone(),
    });
    // Resumed under the session's lock, which the expiry sweep also takes: a session
    // is either revived here or ended there, never both.
    let resumed = broker.registry.get(client_id).and_then(|h| {
        let mut st = h.state();
        if !may_resume(a.connect.clean_start, &st) {
            return None;
        }
        // Resumed with a Session Expiry of 0 (v5): the stored queue is still
        // delivered [MQTT-3.1.2-5], and the session ends with this connection.
        st.meta.expiry_interval_s = a.expiry_s;
        if let Some(link) = link.take() {
            broker.registry.attach(&mut st, link);
        }
        st.offline_since = Stamp::NONE;
        st.connected_at = Stamp::at(now.ms);
        st.peer = peer_string(a.peer);
        st.meta.protocol_level = version.level();
        st.zone = zone.clone();
        let (dup_below, incarnation) = (st.meta.dup_below, st.meta.incarnation);
        drop(st);
        Some((h, dup_below, incarnation))
    });
    let resume = resumed.is_some();
    // A resumed session is stored whatever its new expiry.
    let persistent = a.expiry_s > 0 || resume;
    let mut discarded_stored = false;
    let (handle, dup_below, incarnation) = match resumed {
        Some(resumed) => {
            Metrics::inc(&broker.metrics.sessions_resumed);
            broker.cancel_will(client_id);
            resumed
        }
        None => {
            discarded_stored = discard(broker, client_id);
            // The session before this one has ended: its waiting will is due.
            broker.publish_will_now(client_id);
            Metrics::inc(&broker.metrics.sessions_created);
            let incarnation = broker.next_incarnation();
            let h = SessionHandle::new(
                client_id.clone(),
                SessionState {
                    meta: SessionMeta {
                        incarnation,
                        persistent,
                        expiry_interval_s: a.expiry_s,
                        subscriptions: Default::default(),
                        protocol_level: version.level(),
                        dup_below: 0,
                    },
                    live: true,
                    conn: link.take(),
                    offline_since: Stamp::NONE,
                    zone: zone.clone(),
                    connected_at: Stamp::at(now.ms),
                    peer: peer_string(a.peer),
                },
            );
            broker.registry.insert(h.clone());
            (h, 0, incarnation)
        }
    };
    if persistent {
        let record = SessionRecord {
            protocol_level: version.level(),
            expiry_interval_s: a.expiry_s,
            disconnected_ms: 0,
            dup_below,
            zone: zone.name.clone(),
            incarnation,
        };
        broker.store.writer().submit_detached(vec![Op::PutSession {
            client: client_id.clone(),
            record,
        }]);
    }
    // Everything submitted before (the old connection's acks, a discarded session,
    // the session record, the end of a session that went away just before) is
    // durable before the stored queue is read or the client is answered. A clean
    // session needs no barrier only when nothing written is waiting to be synced.
    let needs_barrier = persistent || discarded_stored || !broker.store.writer().all_durable();
    Settled {
        broker: broker.clone(),
        zone: zone.clone(),
        handle,
        conn_id,
        mailbox,
        resumed: resume,
        persistent,
        dup_below,
        needs_barrier,
    }
}

/// End the session `client_id` has, if any (a CONNECT that does not resume it);
/// true if it was stored, and its deletion is now submitted.
fn discard(broker: &Broker, client_id: &crate::message::ClientId) -> bool {
    let Some(old) = broker.registry.get(client_id) else {
        return false;
    };
    let writer = broker.store.writer();
    let mut stored = false;
    let ended = broker.registry.remove_if(
        &old,
        |_| true,
        |st| {
            if st.meta.persistent {
                stored = true;
                writer.submit_detached(vec![Op::DeleteSession {
                    client: client_id.clone(),
                }]);
            }
        },
    );
    if ended {
        Metrics::inc(&broker.metrics.sessions_discarded);
    }
    stored
}

impl Settled {
    /// The store failed before the CONNACK: give the session back as if this
    /// connection had dropped at once (offline if stored, else gone).
    pub fn abandon(self, now: Now) {
        {
            let mut st = self.handle.state();
            if st.conn.as_ref().is_some_and(|l| l.conn_id == self.conn_id) {
                self.broker.registry.detach(&mut st);
                st.offline_since = Stamp::at(now.ms);
            }
        }
        if !self.persistent {
            self.broker.registry.remove(&self.handle);
        }
        self.mailbox.close();
    }
}

impl Channel {
    /// The channel for a settled session, with the CONNACK in its output.
    /// `awaiting_rel`: a resumed session's inbound QoS 2 ids, read after the barrier.
    pub(crate) fn open(
        s: Settled,
        mut a: Admission,
        site: Arc<crate::connection::Site>,
        superuser: bool,
        awaiting_rel: Vec<u16>,
        now: Now,
    ) -> Channel {
        let version = a.connect.protocol;
        let zone = s.zone.clone();
        let session_config = SessionConfig {
            max_inflight: zone.max_inflight,
            retry_interval: zone.retry_interval,
            max_mqueue_len: zone.max_mqueue_len,
            page_size: s.broker.queue_page_size(),
        };
        let accepted = Accepted {
            site,
            conn_id: s.conn_id,
            version,
            handle: s.handle,
            persistent: s.persistent,
            outbound: Outbound::new(
                a.client_id.clone(),
                s.persistent,
                s.dup_below,
                session_config,
            ),
            // v5 clients are bounded by our Receive Maximum instead (see `on_publish`).
            inbound: Inbound::new(
                if version.is_v5() {
                    0
                } else {
                    zone.max_awaiting_rel
                },
                awaiting_rel,
                now.at,
            ),
            keep_alive: a.keepalive.seconds,
            will: a.connect.will.take().map(|mut will| {
                if let Some(template) = zone.mountpoint.as_deref() {
                    let username = a.connect.username.as_deref();
                    let prefix = crate::mountpoint::expand(template, &a.client_id, username);
                    let topic = String::from_utf8_lossy(&will.topic);
                    will.topic = crate::mountpoint::mount(&prefix, &topic).into();
                }
                Box::new(will)
            }),
            client_max_packet: a.client_max_packet,
            alias_out_max: a.connect.properties.topic_alias_maximum.unwrap_or(0),
            username: a.connect.username.as_deref().map(Arc::from),
            superuser,
            mailbox: s.mailbox,
        };
        let broker = s.broker;
        let mut channel = Channel::new(accepted, now);
        Metrics::inc(&broker.metrics.connections);
        tracing::info!(client_id = %a.client_id, peer = %a.peer, ?version, resume = s.resumed, persistent = s.persistent, "connected");
        let receive_max = a.connect.properties.receive_maximum.unwrap_or(u16::MAX);
        let connack = a.connack(s.resumed);
        channel.start(connack, receive_max, now);
        if broker.hooks.any_registered() {
            // Built now, while the session's peer is this connection's.
            channel.client_info();
        }
        if broker.hooks.is_registered(HookPoint::ClientConnected) {
            broker.hooks.client_connected(
                &channel.client_info(),
                &ConnectedInfo {
                    clean_start: a.connect.clean_start,
                    keepalive_s: a.keepalive.seconds,
                    session_present: s.resumed,
                    expiry_interval_s: a.expiry_s,
                    connected_at_ms: now.ms,
                },
            );
        }
        channel
    }
}

/// The peer as the session keeps it (allocated with the connection's other
/// long-lived objects, `crate::memory`).
fn peer_string(peer: std::net::SocketAddr) -> Box<str> {
    let text = peer.to_string();
    crate::memory::long_lived(|| Box::from(text.as_str()))
}
