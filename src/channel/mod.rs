//! The channel: one client's MQTT protocol, sans-IO (EMQX's `emqx_channel`).
//!
//! Every protocol decision about a connected client lives here: PUBLISH checks and
//! topic aliases, inbound and outbound QoS 1/2 state (through `session::Inbound` and
//! `Outbound`), SUBSCRIBE/UNSUBSCRIBE, DISCONNECT and will rules, keepalive and every
//! other timer, and what a closing connection leaves behind. The channel never touches
//! a socket or reads a clock: the driver (`crate::connection`) hands it packets,
//! mailbox events and the time (`Now`), and takes from it the bytes to write
//! (`output`) and the reason to close (`Close`). Routing and store writes go to the
//! broker (in-memory registry and trie; the store writer's queue), whose answers come
//! back as mailbox events.
//!
//! CONNECT's decisions are here too: `connect` checks it and decides its CONNACK
//! (validation, client id, keepalive, expiry, properties) before any session is
//! touched; `session_open` decides and applies which session the client gets (resume,
//! or a new one discarding the old, whose will is then due) and builds the channel;
//! `detach` gives the session back at the end. The driver (`connection::accept`) only
//! waits in between: for the authentication hook, for the connection it takes the
//! session from, for the store.

mod acl_cache;
mod authorize;
pub(crate) mod connect;
mod deliver;
mod detach;
pub(crate) mod fit;
pub(crate) mod keepalive;
mod packets;
pub(crate) mod session_open;
#[cfg(test)]
mod tests;

pub(crate) use keepalive::only_pings;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::broker::mailbox::{Mailbox, BACKLOG_HIGH};
use crate::broker::registry::{ConnEvent, SessionHandle};
use crate::broker::Broker;
use crate::codec::{self, LastWill, Packet, ProtocolVersion, ReasonCode};
use crate::config::Zone;
use crate::connection::Site;
use crate::hooks::{CertIdentity, ClientInfo, DisconnectReason, HookPoint};
use crate::message::ClientId;
use crate::metrics::Metrics;
use crate::session::{Inbound, Outbound};

/// Above this many bytes waiting to be written, the channel takes no more events and
/// the driver reads no more packets until the client has read some.
pub(crate) const OUTPUT_HIGH: usize = 256 * 1024;

/// The time, as the driver read it: monotonic for timers, wall-clock milliseconds for
/// message timestamps and expiry (which are stored and outlive the process).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub at: Instant,
    pub ms: u64,
}

impl Now {
    /// Read both clocks. Only the driver calls this.
    pub fn read() -> Now {
        Now {
            at: Instant::now(),
            ms: crate::message::now_ms(),
        }
    }
}

/// Why a connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// DISCONNECT from the client; `with_will` for v5 reason 0x04.
    ByClient { with_will: bool },
    /// The socket closed or failed without DISCONNECT.
    Lost,
    /// We end it: send DISCONNECT with this reason (v5), publish the will.
    Error(ReasonCode),
    /// Taken over or kicked: DISCONNECT with this reason (v5); will per reason.
    Kicked(ReasonCode),
}

/// Why the channel takes no packet from its client for now: a read on the store's
/// reader pool is out whose answer must be handled first, as the synchronous read it
/// replaces was. The client's packets wait in the socket and the driver's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputPause {
    No,
    /// The first page of a resumed queue (`start`): what was stored goes out before
    /// the answer to anything the client sends after CONNECT.
    FirstPage,
    /// A SUBSCRIBE's retained messages (`on_subscribe`): what follows it (an
    /// UNSUBSCRIBE, more acks) is handled after it, in its order.
    Retained,
}

/// What CONNECT decided for a new channel (see `session_open`).
pub(crate) struct Accepted {
    /// The listener that accepted it: broker, zone, name.
    pub site: Arc<Site>,
    pub conn_id: u64,
    pub username: Option<Arc<str>>,
    /// An authentication hook made it a superuser (it skips `client.check_acl`).
    pub superuser: bool,
    pub version: ProtocolVersion,
    pub handle: Arc<SessionHandle>,
    pub persistent: bool,
    pub outbound: Outbound,
    pub inbound: Inbound,
    pub keep_alive: u16,
    pub will: Option<Box<LastWill>>,
    pub client_max_packet: u32,
    pub alias_out_max: u16,
    pub mailbox: Arc<Mailbox>,
}

pub(crate) struct Channel {
    /// Its listener's broker, zone and name (one pointer: see `connection::Site`).
    site: Arc<Site>,
    conn_id: u64,
    /// What `client_info` is built from, when a hook wants it (not kept built: most
    /// nodes register no hook, and an idle connection must stay small).
    username: Option<Arc<str>>,
    superuser: bool,
    /// `client_info`, once built: at connect when any hook is registered (so it
    /// records this connection's peer), else at its first use.
    info: std::cell::OnceCell<Arc<ClientInfo>>,
    version: ProtocolVersion,
    /// Its session; the client id is the handle's (`client_id`).
    handle: Arc<SessionHandle>,
    persistent: bool,
    outbound: Outbound,
    inbound: Inbound,
    /// Seconds; 0 = none.
    keep_alive: u16,
    /// Boxed: a full v5 property set is large and most clients have no will.
    will: Option<Box<LastWill>>,
    /// Largest packet the client accepts (v5 Maximum Packet Size).
    client_max_packet: u32,
    /// Topic aliases both ways (v5), once the client uses any (boxed: most never do).
    aliases: Option<Box<Aliases>>,
    /// How many topic aliases the client allows us to set.
    alias_out_max: u16,
    /// What a busy channel holds between turns; None while there is none (always,
    /// once it may hibernate: `shrink`).
    turn: Option<Box<Turn>>,
    /// This connection's inbox; store completions answer through it.
    mailbox: Arc<Mailbox>,
    /// Packets waiting for an authorization decision, or behind one, and the ACL
    /// answer cache (boxed: most clients have neither).
    acl: Option<Box<authorize::AclState>>,
    /// A subscriber this client published to is behind (`Routed::congested`): no
    /// more packets are handled until its mailbox has room (`Mailbox::take_room`).
    paused: bool,
    /// A store read the client's next packets must wait for is out (`InputPause`).
    paused_for: InputPause,
    /// Kicked: what the client sent is handled to its end, without pauses.
    closing: bool,
    last_packet_at: Instant,
    /// Last packet or mailbox event: hibernation counts from here.
    active_at: Instant,
}

/// What a channel holds between driver turns, all of it empty when the channel is
/// idle: boxed, and dropped then, so that a hibernated connection does not carry it
/// (84 bytes less; the `Connection` fits mimalloc's 320-byte class, see
/// `connection::tests`).
#[derive(Default)]
struct Turn {
    /// Encoded packets for the client, which the driver writes.
    output: BytesMut,
    /// Inbound QoS 1/2 packet ids waiting for the store: did they match a subscriber?
    pending_in: BTreeMap<u16, bool>,
    /// Detached store writes (acks, releases), submitted once per driver turn.
    store_ops: Vec<quay_storage::Op>,
    /// The queue page to read from this seq, `page_read_limit` entries, submitted
    /// with `store_ops`: after the turn's output is written (see `flush_store_ops`).
    page_read_from: u64,
    /// 0: no page read waits.
    page_read_limit: u32,
}

impl Turn {
    fn is_empty(&self) -> bool {
        self.output.is_empty()
            && self.store_ops.is_empty()
            && self.page_read_limit == 0
            && self.pending_in.is_empty()
    }
}

/// `Channel::pending_in` of a channel with no `Turn`.
static NO_PENDING_IN: BTreeMap<u16, bool> = BTreeMap::new();

impl Drop for Channel {
    fn drop(&mut self) {
        // Finished (or its task was dropped): a successor waiting in a takeover goes on.
        self.mailbox.close();
    }
}

impl Channel {
    pub fn new(a: Accepted, now: Now) -> Channel {
        Channel {
            site: a.site,
            conn_id: a.conn_id,
            username: a.username,
            superuser: a.superuser,
            info: std::cell::OnceCell::new(),
            version: a.version,
            handle: a.handle,
            persistent: a.persistent,
            outbound: a.outbound,
            inbound: a.inbound,
            keep_alive: a.keep_alive,
            will: a.will,
            client_max_packet: a.client_max_packet,
            aliases: None,
            alias_out_max: a.alias_out_max,
            turn: None,
            mailbox: a.mailbox,
            acl: None,
            paused: false,
            paused_for: InputPause::No,
            closing: false,
            last_packet_at: now.at,
            active_at: now.at,
        }
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.site.broker
    }

    pub fn zone(&self) -> &Zone {
        &self.site.zone
    }

    pub fn site(&self) -> &Arc<Site> {
        &self.site
    }

    pub fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }

    pub fn client_id(&self) -> &ClientId {
        &self.handle.client_id
    }

    /// Who the client is, as hooks see it: built once, when first wanted (callers ask
    /// only when a hook is registered for the point at hand: see `info_for`).
    pub fn client_info(&self) -> Arc<ClientInfo> {
        self.info.get_or_init(|| self.build_info()).clone()
    }

    fn build_info(&self) -> Arc<ClientInfo> {
        // The session keeps the peer of the connection holding it; after a takeover
        // that is the successor's, so only ours is taken.
        let peer = {
            let st = self.handle.state();
            let ours = st.conn.as_ref().is_some_and(|l| l.conn_id == self.conn_id);
            ours.then(|| st.peer.parse().ok()).flatten()
        }
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let mut info = ClientInfo::new(
            self.handle.client_id.clone(),
            peer,
            self.version,
            self.site.listener.clone(),
            Arc::from(self.site.zone.name.as_str()),
        );
        info.username = self.username.clone();
        info.mountpoint = self.mountpoint().map(|mp| Arc::from(mp.as_ref()));
        info.is_superuser = self.superuser;
        Arc::new(info)
    }

    /// The client showed a certificate: hooks see its subject. Kept in the built
    /// `ClientInfo`, which stays built (also through hibernation) for such clients,
    /// so plain clients carry no field for it.
    pub fn pin_cert(&mut self, cert: CertIdentity) {
        let mut info = ClientInfo::clone(&self.build_info());
        info.cert = Some(cert);
        self.info = std::cell::OnceCell::from(Arc::new(info));
    }

    /// This client's topic prefix (`crate::mountpoint`), if its listener or zone
    /// has one.
    fn mountpoint(&self) -> Option<std::borrow::Cow<'_, str>> {
        let template = self.site.zone.mountpoint.as_deref()?;
        Some(crate::mountpoint::expand(
            template,
            &self.handle.client_id,
            self.username.as_deref(),
        ))
    }

    /// `client_info`, if a hook is registered at `point`.
    fn info_for(&self, point: HookPoint) -> Option<Arc<ClientInfo>> {
        self.site
            .broker
            .hooks
            .is_registered(point)
            .then(|| self.client_info())
    }

    /// CONNACK accepted: send it and start delivering.
    pub fn start(&mut self, connack: Packet, receive_max: u16, now: Now) {
        self.send(&connack);
        let actions = self.outbound.attach(receive_max, now.at);
        self.execute(actions, now);
        if matches!(
            self.outbound.cursor(),
            crate::session::Cursor::Disk { loading: true, .. }
        ) {
            self.paused_for = InputPause::FirstPage;
        }
    }

    /// Closing: packets that waited for a store read are handled without it, and so
    /// is every packet after them, even one that would wait for a read again (a
    /// SUBSCRIBE's retained lookup) or a publish that congests a subscriber: a
    /// DISCONNECT behind it still counts (found by the model test).
    pub fn end_read_pause(&mut self) {
        self.paused_for = InputPause::No;
        self.closing = true;
    }

    // ---- what the driver reads and writes ----

    /// Bytes to write to the client.
    pub fn output(&self) -> &[u8] {
        self.turn.as_ref().map_or(&[], |t| &t.output)
    }

    /// `n` bytes of `output` were written.
    pub fn written(&mut self, n: usize, now: Now) {
        self.mailbox.note_progress(now.ms);
        Metrics::add(&self.site.broker.metrics.bytes_sent, n as u64);
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        bytes::Buf::advance(&mut turn.output, n);
        if turn.output.is_empty() && turn.output.capacity() > 64 * 1024 {
            turn.output = BytesMut::new();
        }
    }

    /// The turn's state, made when first needed.
    fn turn(&mut self) -> &mut Turn {
        self.turn.get_or_insert_with(Default::default)
    }

    /// Inbound QoS 1/2 packet ids waiting for the store (see `Turn::pending_in`).
    fn pending_in(&self) -> &BTreeMap<u16, bool> {
        self.turn.as_ref().map_or(&NO_PENDING_IN, |t| &t.pending_in)
    }

    /// Whether the channel takes packets: not while a subscriber it published to is
    /// behind, nor while the client has much unread output.
    pub fn reading(&self) -> bool {
        !self.paused
            && self.paused_for == InputPause::No
            && self.output().len() < OUTPUT_HIGH
            && self
                .acl
                .as_ref()
                .is_none_or(|h| h.len() < authorize::HELD_MAX)
    }

    /// Whether the channel takes mailbox events: only while the client reads what it
    /// already has and the session's queue is short. A client that stopped reading
    /// holds its deliveries in the mailbox, which slows their publishers (see
    /// `broker::mailbox`), and in the store; not in our memory.
    pub fn taking_events(&self) -> bool {
        self.output().len() < OUTPUT_HIGH && self.outbound.pending_len() < BACKLOG_HIGH
    }

    /// `n` bytes arrived from the client.
    pub fn bytes_read(&mut self, n: usize, now: Now) {
        Metrics::add(&self.site.broker.metrics.bytes_received, n as u64);
        self.last_packet_at = now.at;
        self.active_at = now.at;
    }

    /// `pings` PINGREQs read while the connection hibernated (see `only_pings`):
    /// counted as any packet, the keepalive restarted, their PINGRESPs in `output`.
    pub fn pings_answered_dormant(&mut self, pings: usize, now: Now) {
        Metrics::add(&self.site.broker.metrics.bytes_received, 2 * pings as u64);
        self.last_packet_at = now.at;
        for _ in 0..pings {
            Metrics::inc(&self.site.broker.metrics.packets_received);
            self.site
                .broker
                .metrics
                .packets
                .on_received(&Packet::PingReq);
            self.send(&Packet::PingResp);
        }
    }

    /// Decode and handle every complete packet in `rbuf`, stopping early when a
    /// publish congested a subscriber (the rest waits in `rbuf` for its room).
    pub fn handle_bytes(&mut self, rbuf: &mut BytesMut, now: Now) -> Result<(), Close> {
        let max_packet = self.site.broker.config.mqtt.max_packet_size as usize;
        while self.closing || (!self.paused && self.paused_for == InputPause::No) {
            match codec::decode(rbuf, self.version, max_packet) {
                Ok(Some(packet)) => {
                    Metrics::inc(&self.site.broker.metrics.packets_received);
                    self.site.broker.metrics.packets.on_received(&packet);
                    self.on_packet(packet, now)?;
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    tracing::warn!(client_id = %self.handle.client_id, peer = %self.handle.state().peer, error = %e, "malformed packet");
                    Metrics::inc(&self.site.broker.metrics.packets_malformed);
                    return Err(Close::Error(e.reason_code()));
                }
            }
        }
        Ok(())
    }

    /// Mailbox events, in order.
    pub fn handle_events(
        &mut self,
        events: impl IntoIterator<Item = ConnEvent>,
        now: Now,
    ) -> Result<(), Close> {
        let mut any = false;
        for event in events {
            any = true;
            self.on_event(event, now)?;
        }
        if any {
            self.active_at = now.at;
        }
        Ok(())
    }

    /// Stored deliveries were left out of the mailbox: read the queue from the store.
    pub fn behind(&mut self, now: Now) {
        let actions = self.outbound.behind(now.at);
        self.execute(actions, now);
    }

    /// A subscriber this channel waited for has room (or has gone): take packets again.
    /// Paused by a congested subscriber (`Routed::congested`).
    pub fn waiting_for_room(&self) -> bool {
        self.paused
    }

    pub fn resume_reading(&mut self, rbuf: &mut BytesMut, now: Now) -> Result<(), Close> {
        if !self.paused {
            return Ok(());
        }
        self.paused = false;
        // We did not read; the client may well have sent.
        self.last_packet_at = now.at;
        self.handle_bytes(rbuf, now)
    }

    /// Submit the store writes gathered since the last call, as one request, then
    /// the queue page read asked for meanwhile. The driver calls this once per turn,
    /// after writing what the turn produced for the client: each wakes a store
    /// thread, which on a shared core may run before this task writes (a page read
    /// takes about half a millisecond), and the client would wait for it. A read
    /// submitted later sees more of the writer's work, never less (`reader.rs`).
    pub fn flush_store_ops(&mut self) {
        if let Some(turn) = self.turn.as_mut().filter(|t| !t.store_ops.is_empty()) {
            let ops = std::mem::take(&mut turn.store_ops);
            self.site.broker.store.writer().submit_detached(ops);
        }
        if let Some((from, limit)) = self.take_page_read() {
            self.submit_page_read(from, limit);
        }
    }

    // ---- timers ----

    /// Silence after which the client is gone: keepalive × backoff × 2 (EMQX's rule,
    /// 1.5× by default); None without keepalive or when too large to matter.
    fn keepalive_timeout(&self) -> Option<Duration> {
        if self.keep_alive == 0 {
            return None;
        }
        Duration::try_from_secs_f64(
            f64::from(self.keep_alive) * self.site.zone.keepalive_backoff * 2.0,
        )
        .ok()
    }

    /// When the keepalive runs out, if it can: the driver's hibernation deadline.
    pub fn keepalive_deadline(&self) -> Option<Instant> {
        self.keepalive_timeout()
            .and_then(|t| self.last_packet_at.checked_add(t))
    }

    /// The next moment `on_timer` has something to do.
    pub fn next_deadline(&self, now: Now) -> Instant {
        let far = now.at + Duration::from_secs(3600);
        let keepalive = self.keepalive_deadline().unwrap_or(far);
        let retry = self.outbound.next_timeout().unwrap_or(far);
        // QoS 2 ids awaiting PUBREL are swept once a second at most.
        let rel = if self.inbound.is_empty() {
            far
        } else {
            now.at + Duration::from_secs(1)
        };
        let hibernate = self
            .site
            .zone
            .hibernate_after
            .and_then(|after| self.active_at.checked_add(after))
            .unwrap_or(far);
        // Held up by a subscriber, or holding publishers up: look once a second.
        let stall = if self.paused || !self.taking_events() {
            now.at + Duration::from_secs(1)
        } else {
            far
        };
        keepalive.min(retry).min(rel).min(hibernate).min(stall)
    }

    pub fn on_timer(&mut self, now: Now) -> Result<(), Close> {
        if self.paused {
            // Not reading by our choice: the client's silence proves nothing.
            self.last_packet_at = now.at;
        }
        if self
            .keepalive_timeout()
            .is_some_and(|t| now.at.saturating_duration_since(self.last_packet_at) >= t)
        {
            tracing::info!(client_id = %self.handle.client_id, "keepalive timeout");
            return Err(Close::Error(ReasonCode::KEEP_ALIVE_TIMEOUT));
        }
        if let (Some(limit), Some(stalled_ms)) = (
            self.site.zone.stall_timeout,
            self.mailbox.stalled_for_ms(now.ms),
        ) {
            if stalled_ms >= limit.as_millis() as u64 {
                tracing::warn!(client_id = %self.handle.client_id, peer = %self.handle.state().peer, stalled_ms, "the client stopped reading while its deliveries held up their publishers; closing it (stall_timeout)");
                Metrics::inc(&self.site.broker.metrics.connections_stalled);
                return Err(Close::Error(ReasonCode::QUOTA_EXCEEDED));
            }
        }
        let actions = self.outbound.tick(now.at);
        self.execute(actions, now);
        for id in self
            .inbound
            .expire(now.at, self.site.zone.await_rel_timeout)
        {
            tracing::warn!(client_id = %self.handle.client_id, packet_id = id, "PUBREL not received in time; id released");
            if self.persistent {
                let client = self.handle.client_id.clone();
                self.turn()
                    .store_ops
                    .push(quay_storage::Op::DeleteAwaitingRel {
                        client,
                        packet_id: id,
                    });
            }
        }
        Ok(())
    }

    /// Quiet for `after` with nothing buffered, in flight or awaited: nothing will
    /// happen until a packet, an event or a deadline. When the time has come but
    /// something is pending, look again one period later.
    pub fn hibernation_due(&mut self, now: Now, after: Duration) -> bool {
        if now.at < self.active_at + after {
            return false;
        }
        let idle = !self.paused
            && !self.holding()
            && self.paused_for == InputPause::No
            && self.turn.as_ref().is_none_or(|t| t.is_empty())
            && self.outbound.is_idle()
            && self.inbound.is_empty();
        if !idle {
            self.active_at = now.at;
        }
        idle
    }

    /// A store read or write this channel waits for is still out: the channel tests'
    /// pump waits for it (reads come from the reader pool, not the writer).
    #[cfg(test)]
    pub(crate) fn awaiting_store(&self) -> bool {
        self.paused_for != InputPause::No
            || !self.pending_in().is_empty()
            || matches!(
                self.outbound.cursor(),
                crate::session::Cursor::Disk { loading: true, .. }
            )
    }

    /// Give back what buffers kept (before hibernating).
    pub fn shrink(&mut self) {
        // Rebuilt from the same fields when a hook next wants it (192 bytes less per
        // hibernated client that ever published or subscribed with an ACL in force).
        if self.info.get().is_some_and(|i| i.cert.is_none()) {
            self.info.take();
        }
        self.clean_acl_cache();
        self.drop_turn();
        self.outbound.shrink();
    }

    // ---- events ----

    fn on_event(&mut self, event: ConnEvent, now: Now) -> Result<(), Close> {
        match event {
            ConnEvent::Deliver(out) => {
                let actions = if out.seq.is_some() {
                    self.outbound.deliver_stored(out, now.at)
                } else {
                    self.outbound.deliver_volatile(out, now.at)
                };
                self.execute(actions, now);
            }
            ConnEvent::Durable { packet_id, qos, ok } => {
                self.on_durable(packet_id, qos, ok, now)?
            }
            ConnEvent::Reply(packet, retained) => {
                match *packet {
                    // A PUBCOMP frees its id's Receive Maximum slot as it leaves.
                    Packet::PubComp(r) => self.send_pubcomp(r.packet_id, r.reason),
                    other => self.send(&other),
                }
                for out in retained {
                    // Stored ones (retained QoS 1/2 to a persistent session) carry
                    // their queue seq; the rest are volatile.
                    let actions = if out.seq.is_some() {
                        self.outbound.deliver_stored(out, now.at)
                    } else {
                        self.outbound.deliver_volatile(out, now.at)
                    };
                    self.execute(actions, now);
                }
            }
            ConnEvent::Released(packet_id) => {
                let actions = self.outbound.released(packet_id, now.at);
                self.execute(actions, now);
            }
            ConnEvent::Authorized { ticket, verdicts } => self.authorized(ticket, verdicts, now)?,
            ConnEvent::Loaded { from, limit, page } => self.on_loaded(from, limit, page, now),
            ConnEvent::RetainedRead(read) => self.on_retained_read(*read, now)?,
            ConnEvent::CleanAclCache => self.clean_acl_cache(),
            ConnEvent::CheckBanned => {
                let info = self.client_info();
                let banned = self.site.broker.banned.check(
                    &info.client_id,
                    info.username.as_deref(),
                    info.peer.ip(),
                    now.ms / 1000,
                );
                if let Some(kind) = banned {
                    tracing::info!(client_id = %self.client_id(), by = kind.name(), "banned: disconnected");
                    return Err(Close::Kicked(ReasonCode::ADMINISTRATIVE_ACTION));
                }
            }
        }
        Ok(())
    }

    /// Drop the turn's state if it holds nothing (its buffers with it).
    pub fn drop_turn(&mut self) {
        if self.turn.as_ref().is_some_and(|t| t.is_empty()) {
            self.turn = None;
        }
    }

    /// Encode `packet` into the output.
    fn send(&mut self, packet: &Packet) {
        let version = self.version;
        if let Err(e) = codec::encode(packet, version, &mut self.turn().output) {
            tracing::error!(client_id = %self.handle.client_id, packet = packet.name(), error = %e, "cannot encode");
            return;
        }
        Metrics::inc(&self.site.broker.metrics.packets_sent);
        self.site.broker.metrics.packets.on_sent(packet);
    }

    // ---- the end ----

    /// The connection ends for `close`: submit what is pending, say why (v5, within
    /// the client's Maximum Packet Size), and tell whether the will is due. The
    /// driver writes what `output` holds (bounded) and then calls `detach`.
    pub fn close(&mut self, close: &Close, now: Now) -> bool {
        // Before anything else: a successor waits for this connection to finish and
        // then for the store, so our acks must be submitted by then. Not a page read:
        // its answer would reach a closed mailbox.
        self.take_page_read();
        self.flush_store_ops();
        let reason = match close {
            Close::Error(r) | Close::Kicked(r) => Some(*r),
            _ => None,
        };
        if let (Some(reason), true) = (reason, self.version.is_v5()) {
            match fit::disconnect(reason, self.client_max_packet) {
                fit::Fit::Send { packet, .. } => self.send(&Packet::Disconnect(packet)),
                fit::Fit::TooLarge { size } => {
                    tracing::info!(client_id = %self.handle.client_id, size, max = self.client_max_packet, "DISCONNECT larger than the client accepts; closing without it");
                }
            }
        }
        Metrics::inc(&self.site.broker.metrics.disconnections);
        tracing::info!(client_id = %self.handle.client_id, ?close, "disconnected");
        let reason = disconnect_reason(close);
        if let Some(info) = self.info_for(HookPoint::ClientDisconnected) {
            self.site
                .broker
                .hooks
                .client_disconnected(&info, reason, now.ms);
        }
        match close {
            Close::ByClient { with_will } => *with_will,
            // Not on shutdown (the broker is going away); on takeover the will delay
            // decides (a zero delay publishes, as MQTT 5 §3.1.3.2.2 says).
            Close::Kicked(r) => *r != ReasonCode::SERVER_SHUTTING_DOWN,
            Close::Lost | Close::Error(_) => true,
        }
    }
}

/// How `client.disconnected` (and `$SYS`) names why a connection ended.
fn disconnect_reason(close: &Close) -> DisconnectReason {
    match *close {
        Close::ByClient { with_will: false } => {
            DisconnectReason::Normal(ReasonCode::NORMAL_DISCONNECTION)
        }
        Close::ByClient { with_will: true } => {
            DisconnectReason::Normal(ReasonCode::DISCONNECT_WITH_WILL)
        }
        Close::Lost => DisconnectReason::Closed,
        Close::Error(ReasonCode::KEEP_ALIVE_TIMEOUT) => DisconnectReason::KeepaliveTimeout,
        // The only close we make with 0x97 (see `on_timer`).
        Close::Error(ReasonCode::QUOTA_EXCEEDED) => DisconnectReason::Stalled,
        Close::Error(ReasonCode::NOT_AUTHORIZED) => DisconnectReason::NotAuthorized,
        Close::Error(r) => DisconnectReason::ProtocolError(r),
        Close::Kicked(ReasonCode::SESSION_TAKEN_OVER) => DisconnectReason::Takeovered,
        Close::Kicked(ReasonCode::SERVER_SHUTTING_DOWN) => DisconnectReason::Shutdown,
        Close::Kicked(_) => DisconnectReason::Kicked,
    }
}

/// Topic aliases of one connection (MQTT 5 §3.3.2.3.4).
#[derive(Default)]
struct Aliases {
    /// Set by the client: alias to topic.
    inbound: BTreeMap<u16, Bytes>,
    /// Set by us: topic to alias.
    outbound: BTreeMap<Bytes, u16>,
}
