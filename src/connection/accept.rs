//! CONNECT's asynchronous part: take the session over from another connection, resume
//! it or create it, wait for the store, and build the channel. What is valid and what
//! the CONNACK says is decided in `channel::connect`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quay_storage::{Op, SessionRecord};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::oneshot;

use super::{Connection, Env};
use crate::broker::mailbox::Mailbox;
use crate::broker::registry::{ConnLink, SessionHandle, SessionMeta, SessionState};
use crate::broker::Broker;
use crate::channel::connect::{describe_limits, may_resume, session_expiry, validate};
use crate::channel::fit::{self, Fit};
use crate::channel::keepalive;
use crate::channel::{Accepted, Channel, Now};
use crate::codec::{self, ConnAck, Connect, Packet, Properties, ProtocolVersion, ReasonCode};
use crate::config::Zone;
use crate::hooks::{AuthVerdict, ClientInfo, ConnectedInfo, Credentials, HookPoint};
use crate::message::{now_ms, ClientId};
use crate::metrics::Metrics;
use crate::session::{Inbound, Outbound, SessionConfig};

/// Handle CONNECT; on success the CONNACK is in the channel's output and the
/// connection returned; a refusal's CONNACK is written here.
pub(super) async fn accept(
    env: Env,
    peer: SocketAddr,
    connect: Connect,
    writer: &mut OwnedWriteHalf,
) -> Option<Connection> {
    match open(&env.broker, &env.zone, &env.listener, peer, connect).await {
        Ok(channel) => {
            let Env {
                shutdown,
                hibernation,
                guard,
                ..
            } = env;
            Some(Connection {
                channel,
                shutdown,
                hibernation,
                _guard: guard,
            })
        }
        Err(Refused(Some(connack))) => {
            let _ = writer.write_all(&connack).await;
            None
        }
        Err(Refused(None)) => None,
    }
}

/// A CONNECT refused: the encoded CONNACK that says why, if one can be sent.
pub(crate) struct Refused(pub Option<BytesMut>);

/// The CONNACK refusing a client with `reason`, within its Maximum Packet Size.
fn refusal(
    peer: SocketAddr,
    version: ProtocolVersion,
    client_max_packet: u32,
    reason: ReasonCode,
) -> Refused {
    tracing::info!(%peer, ?reason, "connection refused");
    let properties = Properties {
        reason_string: version.is_v5().then(|| reason.description().to_owned()),
        ..Properties::default()
    };
    let ack = ConnAck {
        session_present: false,
        reason,
        properties,
    };
    let Fit::Send { packet, .. } = fit::connack(ack, version, client_max_packet) else {
        tracing::info!(%peer, max = client_max_packet, "refusing CONNACK larger than the client's Maximum Packet Size; not sent");
        return Refused(None);
    };
    let mut buf = BytesMut::new();
    match codec::encode(&Packet::ConnAck(packet), version, &mut buf) {
        Ok(()) => Refused(Some(buf)),
        Err(_) => Refused(None),
    }
}

/// Open the session CONNECT asks for (taking it over from another connection,
/// resuming it or creating it) and build the client's channel, with the CONNACK in its
/// output. No socket is involved: tests open channels this way too.
pub(crate) async fn open(
    broker: &Arc<Broker>,
    zone: &Arc<Zone>,
    listener: &Arc<str>,
    peer: SocketAddr,
    mut connect: Connect,
) -> Result<Channel, Refused> {
    let version = connect.protocol;
    // The largest packet the client takes (v5); CONNACK too must fit [MQTT-3.1.2-24].
    let client_max_packet = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
    let refuse = |reason: ReasonCode| refusal(peer, version, client_max_packet, reason);
    if let Err(reason) = validate(broker, zone, &mut connect) {
        return Err(refuse(reason));
    }
    let keepalive = match keepalive::negotiate(version, connect.keep_alive, zone) {
        Ok(k) => k,
        Err(reason) => {
            tracing::info!(%peer, keep_alive = connect.keep_alive, max_keepalive = zone.max_keepalive, "keepalive above max_keepalive");
            return Err(refuse(reason));
        }
    };
    let mut ack_props = Properties::default();
    let assigned = connect.client_id.is_empty();
    if assigned {
        connect.client_id = format!("quay-{:x}-{:x}", now_ms(), broker.next_conn_id());
        if version.is_v5() {
            ack_props.assigned_client_identifier = Some(connect.client_id.clone());
        }
    }
    let client_id: Arc<str> = Arc::from(connect.client_id.as_str());
    let superuser = match authenticate(broker, zone, listener, peer, &client_id, &connect).await {
        Ok(superuser) => superuser,
        Err(reason) => return Err(refuse(reason)),
    };
    let expiry_s = session_expiry(&connect, zone, &mut ack_props);
    let persistent = expiry_s > 0;
    ack_props.server_keep_alive = keepalive.server_keep_alive;
    if version.is_v5() {
        describe_limits(broker, zone, &mut ack_props);
    }
    // Decided before the session is touched: a CONNACK that cannot be sent must not
    // take over or create anything.
    let ack = ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: ack_props,
    };
    let ack_props = match fit::connack(ack, version, client_max_packet) {
        Fit::Send { packet, dropped } => {
            if !dropped.is_empty() {
                tracing::debug!(client_id = %client_id, max = client_max_packet, ?dropped, "CONNACK properties dropped to fit the client's Maximum Packet Size");
            }
            packet.properties
        }
        Fit::TooLarge { size } => {
            tracing::info!(client_id = %client_id, %peer, size, max = client_max_packet, "CONNACK does not fit the client's Maximum Packet Size; closing without it");
            return Err(Refused(None));
        }
    };

    // One CONNECT of this client id at a time: the takeover, the decision and the
    // store writes below run under this lock, so exactly one connection wins.
    let client_lock = broker.registry.lock_client(&client_id).await;
    take_over(broker, &client_id).await;
    let existing = broker.registry.get(&client_id);
    let conn_id = broker.next_conn_id();
    let mailbox = Arc::new(Mailbox::default());
    let link = ConnLink {
        conn_id,
        mailbox: mailbox.clone(),
    };
    // Resume under the session's lock, which the expiry sweep also takes: a session
    // is either revived here or ended there, never both.
    let mut link = Some(link);
    let resumed = existing.and_then(|h| {
        let mut st = h.state();
        if !may_resume(connect.clean_start, &st) {
            return None;
        }
        // Resumed with a Session Expiry of 0 (v5): the stored queue is still
        // delivered [MQTT-3.1.2-5], and the session ends with this connection.
        st.meta.expiry_interval_s = expiry_s;
        if let Some(link) = link.take() {
            broker.registry.attach(&mut st, link);
        }
        st.offline_since = None;
        st.connected_at_ms = now_ms();
        st.peer = peer.to_string().into();
        st.meta.protocol_level = version.level();
        st.zone = zone.clone();
        let (dup_below, incarnation) = (st.meta.dup_below, st.meta.incarnation);
        drop(st);
        Some((h, dup_below, incarnation))
    });
    let resume = resumed.is_some();
    // A resumed session is stored whatever its new expiry.
    let persistent = persistent || resume;
    let mut existed_persistent = false;
    let (handle, dup_below, incarnation) = match resumed {
        Some(resumed) => {
            Metrics::inc(&broker.metrics.sessions_resumed);
            broker.cancel_will(&client_id);
            resumed
        }
        None => {
            if let Some(old) = broker.registry.get(&client_id) {
                let writer = broker.store.writer();
                let ended = broker.registry.remove_if(
                    &old,
                    |_| true,
                    |st| {
                        if st.meta.persistent {
                            existed_persistent = true;
                            writer.submit_detached(vec![Op::DeleteSession {
                                client: client_id.clone(),
                            }]);
                        }
                    },
                );
                if ended {
                    Metrics::inc(&broker.metrics.sessions_discarded);
                }
            }
            // The session before this one has ended: its waiting will is due.
            broker.publish_will_now(&client_id);
            Metrics::inc(&broker.metrics.sessions_created);
            let incarnation = broker.next_incarnation();
            let h = SessionHandle::new(
                client_id.clone(),
                SessionState {
                    meta: SessionMeta {
                        incarnation,
                        persistent,
                        expiry_interval_s: expiry_s,
                        subscriptions: Default::default(),
                        protocol_level: version.level(),
                        dup_below: 0,
                    },
                    live: true,
                    conn: link.take(),
                    offline_since: None,
                    zone: zone.clone(),
                    connected_at_ms: now_ms(),
                    peer: peer.to_string().into(),
                },
            );
            broker.registry.insert(h.clone());
            (h, 0, incarnation)
        }
    };
    if persistent {
        let record = SessionRecord {
            protocol_level: version.level(),
            expiry_interval_s: expiry_s,
            disconnected_ms: 0,
            dup_below,
            zone: zone.name.clone(),
            incarnation,
        };
        let op = Op::PutSession {
            client: client_id.clone(),
            record,
        };
        broker.store.writer().submit_detached(vec![op]);
    }
    drop(client_lock);
    // Everything submitted before (the old connection's acks, a discarded session,
    // the session record, the end of a session that went away just before) is
    // durable before we read the stored queue or answer. A clean session needs no
    // barrier only when nothing written is waiting to be synced.
    let needs_barrier =
        persistent || resume || existed_persistent || !broker.store.writer().all_durable();
    let durable = !needs_barrier || store_barrier(broker).await;
    // Read after the barrier: the previous connection's releases are in.
    let restored = match (durable, resume) {
        (true, true) => awaiting_rel(broker, &client_id).await,
        _ => Some(Vec::new()),
    };
    let Some(restored) = restored.filter(|_| durable) else {
        tracing::error!(client_id = %client_id, "store unavailable at connect");
        {
            let mut st = handle.state();
            if st.conn.as_ref().is_some_and(|l| l.conn_id == conn_id) {
                broker.registry.detach(&mut st);
                st.offline_since = Some(Instant::now());
            }
        }
        if !persistent {
            broker.registry.remove(&handle);
        }
        mailbox.close();
        return Err(refuse(ReasonCode::SERVER_UNAVAILABLE));
    };

    let receive_max = connect.properties.receive_maximum.unwrap_or(u16::MAX);
    let now = Now::read();
    let session_config = SessionConfig {
        max_inflight: zone.max_inflight,
        retry_interval: zone.retry_interval,
        max_mqueue_len: zone.max_mqueue_len,
        page_size: 1024,
    };
    let accepted = Accepted {
        broker: broker.clone(),
        conn_id,
        version,
        client_id: client_id.clone(),
        handle,
        persistent,
        outbound: Outbound::new(client_id.clone(), persistent, dup_below, session_config),
        // v5 clients are bounded by our Receive Maximum instead (see `on_publish`).
        inbound: Inbound::new(
            if version.is_v5() {
                0
            } else {
                zone.max_awaiting_rel
            },
            restored,
            now.at,
        ),
        keep_alive: keepalive.seconds,
        will: connect.will.take().map(Box::new),
        client_max_packet,
        alias_out_max: connect.properties.topic_alias_maximum.unwrap_or(0),
        listener: listener.clone(),
        username: connect.username.as_deref().map(Arc::from),
        superuser,
        mailbox,
        zone: zone.clone(),
    };
    let mut channel = Channel::new(accepted, now);
    Metrics::inc(&broker.metrics.connections);
    tracing::info!(client_id = %client_id, %peer, ?version, resume, persistent, "connected");
    let connack = Packet::ConnAck(ConnAck {
        session_present: resume,
        reason: ReasonCode::Success,
        properties: ack_props,
    });
    channel.start(connack, receive_max, now);
    if broker.hooks.any_registered() {
        // Built now, while the session's peer is this connection's.
        channel.client_info();
    }
    if broker.hooks.is_registered(HookPoint::ClientConnected) {
        broker.hooks.client_connected(
            &channel.client_info(),
            &ConnectedInfo {
                clean_start: connect.clean_start,
                keepalive_s: keepalive.seconds,
                session_present: resume,
                expiry_interval_s: expiry_s,
                connected_at_ms: now.ms,
            },
        );
    }
    Ok(channel)
}

/// Run `client.authenticate` (an asynchronous backend is awaited here: this
/// connection waits, nobody else); Ok(superuser) when it lets the client in.
async fn authenticate(
    broker: &Broker,
    zone: &Zone,
    listener: &Arc<str>,
    peer: SocketAddr,
    client_id: &ClientId,
    connect: &Connect,
) -> Result<bool, ReasonCode> {
    if !broker.hooks.is_registered(HookPoint::ClientAuthenticate) {
        return Ok(false);
    }
    let mut info = ClientInfo::new(
        client_id.clone(),
        peer,
        connect.protocol,
        listener.clone(),
        Arc::from(zone.name.as_str()),
    );
    info.username = connect.username.as_deref().map(Arc::from);
    let info = Arc::new(info);
    let creds = Arc::new(Credentials {
        password: connect.password.clone(),
        auth_method: None,
        auth_data: None,
    });
    // Everyone is let in until an authentication backend says otherwise
    // (`allow_anonymous` arrives with the authentication chain).
    let anonymous = AuthVerdict::Allow { superuser: false };
    match broker
        .hooks
        .authenticate(&info, &creds, anonymous)
        .resolve()
        .await
    {
        AuthVerdict::Allow { superuser } => Ok(superuser),
        AuthVerdict::Deny(reason) => {
            tracing::info!(%client_id, %peer, ?reason, "authentication failed");
            Err(reason)
        }
    }
}

/// Kick the connection holding `client_id`'s session, if any, and wait until it has
/// finished (its store writes submitted, its session detached). Writes to a client
/// are interruptible by the kick, so this does not wait for a socket that stopped
/// reading; it never gives up, because a successor serving the queue while the old
/// connection still does would send one message twice.
async fn take_over(broker: &Broker, client_id: &ClientId) {
    loop {
        let Some(handle) = broker.registry.get(client_id) else {
            return;
        };
        let old = handle.state().conn.as_ref().map(|l| l.mailbox.clone());
        let Some(old) = old else { return };
        tracing::info!(%client_id, "session taken over");
        Metrics::inc(&broker.metrics.sessions_takenover);
        old.kick(ReasonCode::SESSION_TAKEN_OVER);
        let mut waited_s = 0;
        while tokio::time::timeout(Duration::from_secs(10), old.closed())
            .await
            .is_err()
        {
            waited_s += 10;
            tracing::warn!(%client_id, waited_s, "the connection being taken over has not finished yet");
        }
        // Finished without detaching (its task was dropped): the link is stale. The
        // session goes offline here, or this loop would find it again forever.
        let mut st = handle.state();
        if st
            .conn
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(&l.mailbox, &old))
        {
            tracing::warn!(%client_id, "the connection taken over ended without detaching its session");
            broker.registry.detach(&mut st);
            st.offline_since = Some(Instant::now());
        }
    }
}

/// The inbound QoS 2 ids of a resumed session, read on the store's reader pool (a
/// scan of its `awaiting_rel` range) while this task waits without a thread. None
/// when the read failed: the connection is refused, since resuming without the ids
/// would route a resent PUBLISH again (a QoS 2 duplicate).
async fn awaiting_rel(broker: &Broker, client_id: &ClientId) -> Option<Vec<u16>> {
    let (tx, rx) = oneshot::channel();
    let client = client_id.clone();
    broker.store.reader().submit(
        move |db| quay_storage::read::awaiting_rel(db, &client),
        move |ids| {
            let _ = tx.send(ids);
        },
    );
    match rx.await {
        Ok(Ok(ids)) => Some(ids),
        Ok(Err(e)) => {
            tracing::error!(client_id = %client_id, error = %e, "cannot read QoS 2 state");
            None
        }
        Err(_) => {
            tracing::error!(client_id = %client_id, "store reader stopped; QoS 2 state not read");
            None
        }
    }
}

/// Wait, without blocking a thread, until everything submitted so far is durable.
async fn store_barrier(broker: &Broker) -> bool {
    let (tx, rx) = oneshot::channel();
    broker.store.writer().submit(
        Vec::new(),
        Box::new(move |result| {
            let _ = tx.send(result.is_ok());
        }),
    );
    rx.await.unwrap_or(false)
}
