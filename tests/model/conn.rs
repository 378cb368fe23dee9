//! The simulated broker's connection side: CONNECT and takeover, the connection
//! loop, packets from the client and the execution of session actions. Mirrors
//! `connection/{connect,mod,packets,outgoing}.rs` (see the table in `broker.rs`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use quay::broker::mailbox::Mailbox;
use quay::broker::registry::{
    ConnEvent, ConnLink, SessionHandle, SessionMeta, SessionState, SubOpts,
};
use quay::codec::{self, Packet, Properties, QoS, ReasonCode};
use quay::message::Message;
use quay::session::{Action, DropReason, Inbound, Outbound, Outgoing, Qos2Arrival, Release};
use quay_storage::{read, Op, QueueEntry, SessionRecord, SubscriptionRecord};

use super::broker::{resp, Accepting, ClientId, Close, Conn, Done, Event, PageRead, SimBroker};
use super::wire::{Down, Pub, Up};
use super::Mutation;

impl SimBroker {
    // ---- CONNECT (connection/connect.rs) ----

    /// A client opened `wire` and sent CONNECT: it waits for its client id's turn.
    pub fn connect_arrived(&mut self, client: &ClientId, wire: u64) {
        self.wires.entry(wire).or_default();
        self.connects
            .entry(client.clone())
            .or_default()
            .push_back(wire);
    }

    /// Clients with a CONNECT waiting.
    pub fn clients_connecting(&self) -> Vec<ClientId> {
        self.connects.keys().cloned().collect()
    }

    /// Move `client`'s first waiting CONNECT on: kick the connection holding the
    /// session (the CONNECT then waits for it to finish), or decide and submit.
    /// Returns whether anything changed.
    pub fn accept_next(&mut self, client: &ClientId) -> bool {
        let Some(&wire) = self.connects.get(client).and_then(|q| q.front()) else {
            return false;
        };
        // take_over: kick the holder and wait until it has finished.
        if let Some(handle) = self.registry.get(client) {
            let old = handle.state().conn.as_ref().map(|l| l.mailbox.clone());
            if let Some(old) = old {
                let already = old.take_kick();
                old.kick(ReasonCode::SESSION_TAKEN_OVER);
                return already.is_none();
            }
        }
        if let Some(q) = self.connects.get_mut(client) {
            q.pop_front();
            if q.is_empty() {
                self.connects.remove(client);
            }
        }
        let Some(Up::Connect {
            clean_start,
            expiry_s,
            will,
        }) = self.wires.get_mut(&wire).and_then(|w| w.up.pop_front())
        else {
            return true; // the client went away before sending anything
        };
        let expiry_s = expiry_s.min(self.zone.session_expiry_interval.as_secs() as u32);
        let persistent = expiry_s > 0;
        let existing = self.registry.get(client);
        let conn_id = self.next_id();
        let mailbox = Arc::new(Mailbox::default());
        let mut link = Some(ConnLink {
            conn_id,
            mailbox: mailbox.clone(),
        });
        let zone = self.zone.clone();
        let resumed = existing.filter(|_| !clean_start).and_then(|h| {
            let mut st = h.state();
            if !(st.live && st.meta.persistent && st.conn.is_none()) {
                return None;
            }
            st.meta.expiry_interval_s = expiry_s;
            st.conn = link.take();
            st.offline_since = None;
            st.zone = zone.clone();
            let (dup_below, incarnation) = (st.meta.dup_below, st.meta.incarnation);
            drop(st);
            Some((h, dup_below, incarnation))
        });
        let resume = resumed.is_some();
        let persistent = persistent || resume;
        let mut existed_persistent = false;
        let (handle, dup_below, incarnation) = match resumed {
            Some(resumed) => {
                self.cancel_will(client);
                resumed
            }
            None => {
                if let Some(old) = self.registry.get(client) {
                    let mut end = false;
                    self.registry
                        .remove_if(&old, |_| true, |st| end = st.meta.persistent);
                    if end {
                        existed_persistent = true;
                        self.submit_detached(vec![Op::DeleteSession {
                            client: client.clone(),
                        }]);
                    }
                }
                self.publish_will_now(client);
                let incarnation = self.next_incarnation();
                let h = SessionHandle::new(
                    client.clone(),
                    SessionState {
                        meta: SessionMeta {
                            incarnation,
                            persistent,
                            expiry_interval_s: expiry_s,
                            subscriptions: Default::default(),
                            protocol_level: 5,
                            dup_below: 0,
                        },
                        live: true,
                        conn: link.take(),
                        offline_since: None,
                        zone: zone.clone(),
                        connected_at_ms: 0,
                        peer: Box::from(""),
                    },
                );
                self.registry.insert(h.clone());
                (h, 0, incarnation)
            }
        };
        if persistent {
            let record = SessionRecord {
                protocol_level: 5,
                expiry_interval_s: expiry_s,
                disconnected_ms: 0,
                dup_below,
                zone: zone.name.clone(),
                incarnation,
            };
            self.submit_detached(vec![Op::PutSession {
                client: client.clone(),
                record,
            }]);
        }
        self.accepting.insert(
            conn_id,
            Accepting {
                wire,
                client: client.clone(),
                handle,
                mailbox,
                persistent,
                resume,
                dup_below,
                will,
            },
        );
        if persistent || resume || existed_persistent {
            self.submit(Vec::new(), Done::Barrier(conn_id));
        } else {
            self.finish_accept(conn_id);
        }
        true
    }

    /// After the barrier: QoS 2 state, CONNACK, attach.
    pub(crate) fn finish_accept(&mut self, conn_id: u64) {
        let Some(a) = self.accepting.remove(&conn_id) else {
            return;
        };
        let now = self.now();
        let restored = if a.resume {
            read::awaiting_rel(self.core.backend(), &a.client).expect("sim reads")
        } else {
            Vec::new()
        };
        let mut conn = Conn {
            id: conn_id,
            wire: a.wire,
            client: a.client.clone(),
            handle: a.handle,
            mailbox: a.mailbox,
            persistent: a.persistent,
            outbound: Outbound::new(
                a.client.clone(),
                a.persistent,
                a.dup_below,
                self.session_config(),
            ),
            // v5 clients are bounded by our Receive Maximum instead.
            inbound: Inbound::new(0, restored, now),
            pending_in: BTreeMap::new(),
            store_ops: Vec::new(),
            will: a.will,
        };
        self.send(conn.wire, Down::ConnAck { present: a.resume });
        let actions = conn.outbound.attach(u16::MAX, now);
        self.execute(&mut conn, actions);
        self.conns.insert(conn_id, conn);
    }

    // ---- the connection loop (connection/mod.rs) ----

    /// One turn of the connection's loop: events, kick, then up to `packets` packets
    /// from its client, then its gathered store writes. Returns whether anything
    /// happened.
    pub fn turn(&mut self, conn_id: u64, packets: usize) -> bool {
        let Some(mut conn) = self.conns.remove(&conn_id) else {
            return false;
        };
        let mut busy = false;
        let events = conn.mailbox.take_all();
        busy |= !events.is_empty();
        for event in events {
            self.on_event(&mut conn, event);
        }
        if conn.mailbox.take_behind() {
            let actions = conn.outbound.behind(self.now());
            self.execute(&mut conn, actions);
        }
        if conn.mailbox.take_kick().is_some() {
            // What the client sent before it was replaced still counts.
            let close = loop {
                let Some(p) = self
                    .wires
                    .get_mut(&conn.wire)
                    .and_then(|w| w.up.pop_front())
                else {
                    break Close::Kicked;
                };
                if let Err(close) = self.on_packet(&mut conn, p) {
                    break close;
                }
            };
            self.finish(conn, close);
            return true;
        }
        for _ in 0..packets {
            let Some(p) = self
                .wires
                .get_mut(&conn.wire)
                .and_then(|w| w.up.pop_front())
            else {
                break;
            };
            busy = true;
            if let Err(close) = self.on_packet(&mut conn, p) {
                self.finish(conn, close);
                return true;
            }
        }
        self.flush_store_ops(&mut conn);
        self.conns.insert(conn_id, conn);
        busy
    }

    pub fn on_timer_all(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(mut conn) = self.conns.remove(&id) {
                self.on_timer(&mut conn);
                self.conns.insert(id, conn);
            }
        }
    }

    pub(crate) fn on_timer(&mut self, conn: &mut Conn) {
        let now = self.now();
        let actions = conn.outbound.tick(now);
        self.execute(conn, actions);
        for id in conn.inbound.expire(now, self.zone.await_rel_timeout) {
            if conn.persistent {
                conn.store_ops.push(Op::DeleteAwaitingRel {
                    client: conn.client.clone(),
                    packet_id: id,
                });
            }
        }
    }

    pub(crate) fn on_event(&mut self, conn: &mut Conn, event: ConnEvent) {
        let now = self.now();
        match event {
            ConnEvent::Deliver(out) => {
                let actions = if out.seq.is_some() {
                    conn.outbound.deliver_stored(out, now)
                } else {
                    conn.outbound.deliver_volatile(out, now)
                };
                self.execute(conn, actions);
            }
            ConnEvent::Durable { packet_id, qos, ok } => self.on_durable(conn, packet_id, qos, ok),
            ConnEvent::Reply(packet, retained) => {
                match *packet {
                    // A PUBCOMP frees its id's Receive Maximum slot as it leaves.
                    Packet::PubComp(r) => self.send_pubcomp(conn, r.packet_id),
                    other => self.send_packet(conn.wire, other),
                }
                for out in retained {
                    let actions = if out.seq.is_some() {
                        conn.outbound.deliver_stored(out, now)
                    } else {
                        conn.outbound.deliver_volatile(out, now)
                    };
                    self.execute(conn, actions);
                }
            }
            ConnEvent::Released(packet_id) => {
                let actions = conn.outbound.released(packet_id, now);
                self.execute(conn, actions);
            }
            // The model registers no hooks: nothing is ever held for a decision.
            ConnEvent::Authorized { .. } => unreachable!("no authorization hooks in the model"),
            ConnEvent::Loaded { from, limit, page } => {
                let actions = match page {
                    Ok(page) => conn.outbound.loaded(from, limit, page, now),
                    Err(_) => conn.outbound.load_failed(from, now),
                };
                self.execute(conn, actions);
            }
            // The sim reads retained messages at SUBSCRIBE (`on_subscribe`).
            ConnEvent::RetainedRead(_) => unreachable!("the sim reads retained at once"),
        }
    }

    pub(crate) fn send_packet(&mut self, wire: u64, packet: Packet) {
        let down = match packet {
            Packet::SubAck(s) => Down::SubAck {
                id: s.packet_id,
                granted: s.reasons.first().map(|r| r.0).unwrap_or(0x80),
            },
            Packet::UnsubAck(u) => Down::UnsubAck(u.packet_id),
            Packet::PubComp(r) => Down::PubComp(r.packet_id),
            other => panic!("the sim does not send {other:?}"),
        };
        self.send(wire, down);
    }

    pub(crate) fn flush_store_ops(&mut self, conn: &mut Conn) {
        if !conn.store_ops.is_empty() {
            let ops = std::mem::take(&mut conn.store_ops);
            self.submit_detached(ops);
        }
    }

    pub(crate) fn when_durable(&mut self, conn: &mut Conn, ops: Vec<Op>, then: ConnEvent) {
        self.flush_store_ops(conn);
        self.submit(ops, Done::Event(conn.mailbox.clone(), then));
    }

    pub(crate) fn finish(&mut self, mut conn: Conn, close: Close) {
        self.flush_store_ops(&mut conn);
        if matches!(close, Close::Kicked | Close::ProtocolError) {
            self.send(conn.wire, Down::Disconnect);
        }
        if let Some(w) = self.wires.get_mut(&conn.wire) {
            w.server_closed = true;
        }
        let publish_will = !matches!(close, Close::ByClient);
        self.detach(&mut conn, publish_will);
        conn.mailbox.close();
    }

    pub(crate) fn detach(&mut self, conn: &mut Conn, publish_will: bool) {
        let now = self.now();
        let now_ms = self.now_ms;
        let dup_below = conn.outbound.dup_below();
        let conn_id = conn.id;
        let ours = |st: &SessionState| st.conn.as_ref().is_some_and(|l| l.conn_id == conn_id);
        let mut end = false;
        let ended = self.registry.remove_if(
            &conn.handle,
            |st| ours(st) && (!st.meta.persistent || st.meta.expiry_interval_s == 0),
            |st| end = st.meta.persistent,
        );
        if end {
            self.submit_detached(vec![Op::DeleteSession {
                client: conn.client.clone(),
            }]);
        }
        let (expiry_s, record) = {
            let mut st = conn.handle.state();
            let mut record = None;
            if !ended && st.live && ours(&st) {
                st.conn = None;
                st.offline_since = Some(now);
                st.meta.dup_below = dup_below;
                record = Some(SessionRecord {
                    protocol_level: 5,
                    expiry_interval_s: st.meta.expiry_interval_s,
                    disconnected_ms: now_ms,
                    dup_below,
                    zone: st.zone.name.clone(),
                    incarnation: st.meta.incarnation,
                });
            }
            (st.meta.expiry_interval_s, record)
        };
        if let Some(record) = record {
            self.submit_detached(vec![Op::PutSession {
                client: conn.client.clone(),
                record,
            }]);
        }
        let Some(will) = conn.will.take().filter(|_| publish_will) else {
            return;
        };
        let delay_s = will.delay_s.min(expiry_s);
        let msg = Message {
            topic: Bytes::from(format!("will/{}", conn.client)),
            payload: will.payload.clone(),
            qos: will.qos,
            retain: false,
            from: conn.client.clone(),
            publish_ms: now_ms,
            expiry_ms: 0,
            properties: Default::default(),
        };
        if delay_s == 0 {
            self.publish(msg, Vec::new(), None, false);
            return;
        }
        let due_ms = now_ms + u64::from(delay_s) * 1000;
        self.delay_will(conn.client.clone(), due_ms, msg);
    }

    // ---- packets (connection/packets.rs) ----

    pub(crate) fn on_packet(&mut self, conn: &mut Conn, packet: Up) -> Result<(), Close> {
        let now = self.now();
        self.log.push(format!(
            "  conn {} ({}) reads {packet:?}",
            conn.id, conn.client
        ));
        match packet {
            Up::Publish(p) => self.on_publish(conn, p),
            Up::PubAck(id) => {
                let actions = conn.outbound.on_puback(id, now);
                self.execute(conn, actions);
            }
            Up::PubRec(id) => match conn.outbound.on_pubrec(id, false, now) {
                Some(actions) => self.execute(conn, actions),
                None => self.send(conn.wire, Down::PubRel(id)),
            },
            Up::PubComp(id) => {
                let actions = conn.outbound.on_pubcomp(id, now);
                self.execute(conn, actions);
            }
            Up::PubRel(id) => match conn.inbound.release(id) {
                Release::Unknown => self.send_pubcomp(conn, id),
                Release::Repeated => {}
                Release::First => {
                    let pubcomp = Packet::PubComp(resp(id, ReasonCode::Success));
                    let ops = if conn.persistent {
                        vec![Op::DeleteAwaitingRel {
                            client: conn.client.clone(),
                            packet_id: id,
                        }]
                    } else {
                        Vec::new()
                    };
                    if self.mutation == Mutation::PubcompBeforeDurable {
                        // The defect: PUBCOMP before the id's release is durable.
                        conn.store_ops.extend(ops);
                        drop(pubcomp);
                        self.send_pubcomp(conn, id);
                    } else {
                        self.reply_when_durable(conn, ops, pubcomp, Vec::new());
                    }
                }
            },
            Up::Subscribe { id, filter, qos } => self.on_subscribe(conn, id, filter, qos),
            Up::Unsubscribe { id, filter } => self.on_unsubscribe(conn, id, filter),
            Up::Disconnect { expiry_s } => {
                if let Some(expiry) = expiry_s {
                    let mut st = conn.handle.state();
                    if st.meta.expiry_interval_s == 0 && expiry > 0 {
                        return Err(Close::ProtocolError);
                    }
                    let max = self.zone.session_expiry_interval.as_secs();
                    st.meta.expiry_interval_s = expiry.min(max.min(u32::MAX as u64) as u32);
                }
                return Err(Close::ByClient);
            }
            Up::Eof => return Err(Close::Lost),
            Up::Connect { .. } => return Err(Close::ProtocolError),
        }
        Ok(())
    }

    pub(crate) fn on_publish(&mut self, conn: &mut Conn, p: Pub) {
        let msg = Message {
            topic: Bytes::from(p.topic.clone()),
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            from: conn.client.clone(),
            publish_ms: self.now_ms,
            expiry_ms: 0,
            properties: Default::default(),
        };
        let Some(packet_id) = p.id else {
            self.publish(msg, Vec::new(), None, false);
            return;
        };
        if conn.pending_in.contains_key(&packet_id) {
            return;
        }
        // Receive Maximum: our client never sends more than it allows, so hitting it
        // means the broker counts wrong (the real one closes the connection, 0x93).
        let holds_slot = p.qos == QoS::ExactlyOnce && conn.inbound.is_counted(packet_id);
        if !holds_slot && conn.pending_in.len() + conn.inbound.quota_used() >= self.receive_max() {
            self.problems.push(format!(
                "{}: Receive Maximum exceeded by a client that keeps to it (packet id {packet_id})",
                conn.client
            ));
            return;
        }
        let mut extra = Vec::new();
        if p.qos == QoS::ExactlyOnce {
            match conn.inbound.arrival(packet_id) {
                Qos2Arrival::Duplicate => {
                    conn.inbound.count(packet_id);
                    self.send(conn.wire, Down::PubRec(packet_id));
                    return;
                }
                Qos2Arrival::InUse | Qos2Arrival::TooMany => {
                    // Our client reuses an id only after its PUBCOMP, and v5 has
                    // no max_awaiting_rel: neither may happen.
                    self.problems.push(format!(
                        "{}: QoS 2 PUBLISH id {packet_id} refused as in use or too many",
                        conn.client
                    ));
                    return;
                }
                Qos2Arrival::New => {
                    if conn.persistent {
                        extra.push(Op::PutAwaitingRel {
                            client: conn.client.clone(),
                            packet_id,
                        });
                    }
                }
            }
        }
        let after_pending = !conn.pending_in.is_empty();
        conn.pending_in.insert(packet_id, true);
        let publisher = Some((conn.mailbox.clone(), packet_id, p.qos));
        let matched = self.publish(msg, extra, publisher, after_pending);
        conn.pending_in.insert(packet_id, matched > 0);
    }

    /// Our Receive Maximum: the zone's `max_inflight`, told in CONNACK.
    pub(crate) fn receive_max(&self) -> usize {
        usize::from(self.zone.max_inflight)
    }

    /// `Connection::send_pubcomp`: PUBCOMP out, the id's Receive Maximum slot back.
    pub(crate) fn send_pubcomp(&mut self, conn: &mut Conn, packet_id: u16) {
        self.send(conn.wire, Down::PubComp(packet_id));
        conn.inbound.completed(packet_id);
    }

    pub(crate) fn on_durable(&mut self, conn: &mut Conn, packet_id: u16, qos: QoS, ok: bool) {
        conn.pending_in.remove(&packet_id);
        if !ok {
            return; // the sim's store never fails
        }
        match qos {
            QoS::AtLeastOnce => self.send(conn.wire, Down::PubAck(packet_id)),
            QoS::ExactlyOnce => {
                conn.inbound.record(packet_id, self.now());
                self.send(conn.wire, Down::PubRec(packet_id));
            }
            QoS::AtMostOnce => {}
        }
    }

    pub(crate) fn on_subscribe(
        &mut self,
        conn: &mut Conn,
        packet_id: u16,
        filter: String,
        qos: QoS,
    ) {
        let mut ops = Vec::new();
        let mut retained = Vec::new();
        let mut stored = Vec::new();
        let opts = SubOpts {
            qos,
            ..SubOpts::default()
        };
        self.registry.subscribe(&conn.handle, &filter, opts);
        if conn.persistent {
            ops.push(Op::PutSubscription {
                client: conn.client.clone(),
                filter: filter.clone(),
                record: SubscriptionRecord {
                    qos: qos as u8,
                    ..SubscriptionRecord::default()
                },
            });
        }
        let ack = Packet::SubAck(codec::SubAck {
            packet_id,
            properties: Properties::default(),
            reasons: vec![ReasonCode(qos as u8)],
        });
        if self.retained.is_empty() {
            self.reply_when_durable(conn, ops, ack, Vec::new());
            return;
        }
        // The real connection writes the subscription now and reads the retained
        // messages on the reader pool, taking no packet until they are in; the sim
        // reads them at once (nothing of this client can come in between).
        conn.store_ops.append(&mut ops);
        for msg in self.retained_for(&filter) {
            let mut out = Outgoing {
                seq: None,
                msg_id: 0,
                qos: msg.qos.min(qos),
                retain: true,
                subscription_ids: vec![],
                resend: false,
                unreferenced: false,
                msg: msg.clone(),
            };
            if conn.persistent && out.qos != QoS::AtMostOnce {
                out.msg_id = self.next_msg_id;
                out.unreferenced = true;
                self.next_msg_id += 1;
                let (incarnation, max_len) = {
                    let st = conn.handle.state();
                    (st.meta.incarnation, st.zone.max_mqueue_len as u64)
                };
                ops.push(Op::Enqueue {
                    client: conn.client.clone(),
                    incarnation,
                    entry: QueueEntry {
                        msg_id: out.msg_id,
                        qos: out.qos as u8,
                        retain: true,
                        released: false,
                        subscription_ids: vec![],
                        inline: Some(out.msg.to_stored()),
                    },
                    max_len,
                });
                stored.push(out);
            } else {
                retained.push(out);
            }
        }
        if !conn.persistent {
            self.on_event(conn, ConnEvent::Reply(Box::new(ack), retained));
            return;
        }
        // Persistent: even with nothing to store, SUBACK waits for the subscription.
        self.flush_store_ops(conn);
        let done = Done::SubscribeStored {
            mailbox: conn.mailbox.clone(),
            ack: Box::new(ack),
            retained,
            stored,
        };
        self.submit(ops, done);
    }

    pub(crate) fn on_unsubscribe(&mut self, conn: &mut Conn, packet_id: u16, filter: String) {
        let mut ops = Vec::new();
        if self.registry.unsubscribe(&conn.handle, &filter) && conn.persistent {
            ops.push(Op::DeleteSubscription {
                client: conn.client.clone(),
                filter,
            });
        }
        let ack = Packet::UnsubAck(codec::UnsubAck {
            packet_id,
            properties: Properties::default(),
            reasons: vec![ReasonCode::Success],
        });
        self.reply_when_durable(conn, ops, ack, Vec::new());
    }

    pub(crate) fn reply_when_durable(
        &mut self,
        conn: &mut Conn,
        ops: Vec<Op>,
        reply: Packet,
        retained: Vec<Outgoing>,
    ) {
        let event = ConnEvent::Reply(Box::new(reply), retained);
        if ops.is_empty() {
            self.on_event(conn, event);
            return;
        }
        self.when_durable(conn, ops, event);
    }

    // ---- executing session actions (connection/outgoing.rs) ----

    pub(crate) fn execute(&mut self, conn: &mut Conn, actions: Vec<Action>) {
        let mut work: VecDeque<Action> = actions.into();
        while let Some(action) = work.pop_front() {
            match action {
                Action::Publish {
                    packet_id,
                    dup,
                    out,
                } => {
                    let p = Pub {
                        id: packet_id,
                        qos: out.qos,
                        dup,
                        retain: out.retain,
                        topic: out.msg.topic_str().to_owned(),
                        payload: out.msg.payload.clone(),
                    };
                    self.send(conn.wire, Down::Publish(p));
                }
                Action::PubRel(id) => self.send(conn.wire, Down::PubRel(id)),
                Action::Store(op) => conn.store_ops.push(op),
                Action::Release { packet_id, op } => {
                    if self.mutation == Mutation::PubrelBeforeDurable {
                        // The defect: PUBREL in the same turn as the unsynced release.
                        conn.store_ops.push(op);
                        let now = self.now();
                        work.extend(conn.outbound.released(packet_id, now));
                    } else {
                        self.when_durable(conn, vec![op], ConnEvent::Released(packet_id));
                    }
                }
                Action::LoadQueue { from, limit } => self.load_page(conn, from, limit),
                Action::Dropped(DropReason::Missing, _) => {}
                Action::Dropped(..) => {}
            }
        }
    }

    /// Hand the page read to the reader pool; `run_read` answers it later.
    pub(crate) fn load_page(&mut self, conn: &mut Conn, from: u64, limit: usize) {
        self.reads.push(PageRead {
            client: conn.client.clone(),
            mailbox: conn.mailbox.clone(),
            from,
            limit,
        });
    }

    /// A reader thread runs read `i` now, against the disk as it is now; its answer
    /// reaches the connection's mailbox with `answer_read` (`fail`: the read fails).
    pub fn run_read(&mut self, i: usize, fail: bool) {
        if i >= self.reads.len() {
            return;
        }
        let read = self.reads.remove(i);
        if fail {
            self.log.push(format!(
                "  reader: page of {} from {} fails",
                read.client, read.from
            ));
            let answer = ConnEvent::Loaded {
                from: read.from,
                limit: read.limit,
                page: Err(quay_storage::StoreError::Busy),
            };
            self.answers.push((read.mailbox, answer));
            return;
        }
        let disk = self.core.backend();
        let entries =
            read::queue_range(disk, &read.client, read.from, read.limit).expect("sim reads");
        let ids: Vec<u64> = entries
            .iter()
            .filter(|(_, e)| e.inline.is_none())
            .map(|(_, e)| e.msg_id)
            .collect();
        let mut logged = read::messages(disk, &ids).expect("sim reads").into_iter();
        let mut page = Vec::new();
        for (seq, entry) in entries {
            let stored = match &entry.inline {
                Some(m) => Some(m.clone()),
                None => logged.next().flatten(),
            };
            if stored.is_none() && !entry.released {
                self.events.push(Event::Missing {
                    client: read.client.clone(),
                    seq,
                });
            }
            page.push((
                seq,
                entry,
                stored.map(|m| Arc::new(Message::from_stored(m))),
            ));
        }
        let seqs: Vec<u64> = page.iter().map(|(seq, _, _)| *seq).collect();
        self.log.push(format!(
            "  reader: page of {} from {}: {seqs:?}",
            read.client, read.from
        ));
        let answer = ConnEvent::Loaded {
            from: read.from,
            limit: read.limit,
            page: Ok(page),
        };
        self.answers.push((read.mailbox, answer));
    }

    /// The reader thread that ran answer `i` completes it: into the mailbox.
    pub fn answer_read(&mut self, i: usize) {
        if i < self.answers.len() {
            let (mailbox, answer) = self.answers.remove(i);
            mailbox.push(answer);
        }
    }
}
