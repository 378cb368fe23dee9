//! CONNECT's waiting, around the channel's decisions: the authentication hook, taking
//! the session over from another connection, the store barrier and the read of a
//! resumed session's QoS 2 ids. What is valid and what the CONNACK says is decided in
//! `channel::connect`; which session the client gets, in `channel::session_open`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::broker::Broker;
pub(crate) use crate::channel::connect::Refused;
use crate::channel::connect::{admit, Admission};
use crate::channel::session_open::settle;
use crate::channel::{Channel, Now};
use crate::codec::{Connect, ReasonCode};
use crate::config::Zone;
use crate::connection::enhanced_auth::Enhanced;
use crate::hooks::{AuthVerdict, CertIdentity, ClientInfo, Credentials, HookPoint};
use crate::message::ClientId;
use crate::metrics::Metrics;

/// What a client proved before its CONNECT is admitted: the TLS layer's verified
/// certificate, and an enhanced authentication it completed in AUTH packets.
#[derive(Debug, Default)]
pub(crate) struct Presented {
    pub cert: Option<CertIdentity>,
    pub enhanced: Option<Enhanced>,
}

/// Open the session CONNECT asks for (taking it over from another connection,
/// resuming it or creating it) and build the client's channel, with the CONNACK in its
/// output. No socket is involved, and the time comes from `clock` (`Now::read`, or a
/// simulated one): tests open channels this way too.
pub(crate) async fn open(
    site: &Arc<super::Site>,
    peer: SocketAddr,
    connect: Connect,
    presented: Presented,
    clock: &(dyn Fn() -> Now + Sync),
) -> Result<Channel, Refused> {
    let Presented { cert, enhanced } = presented;
    let (broker, zone, listener) = (&site.broker, &site.zone, &site.listener);
    let admission = admit(broker, zone, peer, connect, enhanced.as_ref(), || {
        format!("quay-{:x}-{:x}", clock().ms, broker.next_conn_id())
    })?;
    let superuser = match &enhanced {
        // The exchange was the authentication: the chain would only look for a
        // password the client did not send.
        Some(e) => e.superuser,
        None => authenticate(broker, zone, listener, &admission, cert.as_ref())
            .await
            .map_err(|reason| admission.refuse(reason))?,
    };
    // One CONNECT of this client id at a time: the takeover and the decision run
    // under this lock, so exactly one connection wins.
    let client_id = admission.client_id.clone();
    let client_lock = broker.registry.lock_client(&client_id).await;
    take_over(broker, &client_id, clock).await;
    let settled = settle(broker, zone, &admission, clock());
    drop(client_lock);
    // A ban set since `admit` checked: `banned::disconnect_banned` may have looked
    // for this client before it was registered, so look again now that it is.
    let connect = &admission.connect;
    let now_s = clock().ms / 1000;
    let username = connect.username.as_deref();
    if let Some(kind) = broker
        .banned
        .check(&client_id, username, admission.peer.ip(), now_s)
    {
        tracing::info!(%client_id, by = kind.name(), "banned while connecting; refused");
        settled.abandon(clock());
        return Err(admission.refuse(ReasonCode::BANNED));
    }
    let durable = !settled.needs_barrier || store_barrier(broker).await;
    // Read after the barrier: the previous connection's releases are in.
    let awaiting_rel = match (durable, settled.resumed) {
        (true, true) => awaiting_rel(broker, &client_id).await,
        (true, false) => Some(Vec::new()),
        (false, _) => None,
    };
    let Some(awaiting_rel) = awaiting_rel else {
        tracing::error!(%client_id, "store unavailable at connect");
        settled.abandon(clock());
        return Err(admission.refuse(ReasonCode::SERVER_UNAVAILABLE));
    };
    let mut channel = Channel::open(
        settled,
        admission,
        site.clone(),
        superuser,
        awaiting_rel,
        clock(),
    );
    if let Some(cert) = cert {
        channel.pin_cert(cert);
    }
    Ok(channel)
}

/// Run `client.authenticate` (an asynchronous backend is awaited here: this
/// connection waits, nobody else); Ok(superuser) when it lets the client in.
async fn authenticate(
    broker: &Broker,
    zone: &Zone,
    listener: &Arc<str>,
    admission: &Admission,
    cert: Option<&CertIdentity>,
) -> Result<bool, ReasonCode> {
    let (client_id, peer, connect) = (&admission.client_id, admission.peer, &admission.connect);
    // `allow_anonymous`: the answer when no backend decides.
    let anonymous = if broker.config.access.allow_anonymous {
        AuthVerdict::Allow { superuser: false }
    } else {
        AuthVerdict::Deny(ReasonCode::NOT_AUTHORIZED)
    };
    if !broker.hooks.is_registered(HookPoint::ClientAuthenticate) {
        return match anonymous {
            AuthVerdict::Allow { superuser } => Ok(superuser),
            AuthVerdict::Deny(reason) => {
                tracing::info!(%client_id, %peer, "anonymous client refused (allow_anonymous = false)");
                Err(reason)
            }
        };
    }
    let mut info = ClientInfo::new(
        client_id.clone(),
        peer,
        connect.protocol,
        listener.clone(),
        Arc::from(zone.name.as_str()),
    );
    info.username = connect.username.as_deref().map(Arc::from);
    info.cert = cert.cloned();
    info.mountpoint = zone.mountpoint.as_deref().map(|template| {
        let prefix = crate::mountpoint::expand(template, client_id, info.username.as_deref());
        Arc::from(prefix.as_ref())
    });
    let info = Arc::new(info);
    let creds = Arc::new(Credentials {
        password: connect.password.clone(),
        auth_method: None,
        auth_data: None,
    });
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
async fn take_over(broker: &Broker, client_id: &ClientId, clock: &(dyn Fn() -> Now + Sync)) {
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
            st.offline_since = crate::broker::registry::Stamp::at(clock().ms);
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
    broker
        .store
        .writer()
        .write_durable(Vec::new())
        .await
        .is_ok()
}
