//! Packets from the client after CONNECT.

use std::sync::Arc;

use quay_storage::{Op, QueueEntry, SubscriptionRecord};

use super::authorize::{allowed, Verdicts};
use super::{Channel, Close, InputPause, Now};
use crate::broker::registry::{ConnEvent, SubOpts};
use crate::broker::{RetainedLookup, RetainedRead};
use crate::codec::{
    Packet, Properties, PubResp, Publish, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    UnsubAck, Unsubscribe,
};
use crate::config::AclDenyAction;
use crate::hooks::{AclVerdict, HookPoint};
use crate::message::Message;
use crate::metrics::{packet_type, Metrics};
use crate::session::{Outgoing, Qos2Arrival, Release};
use crate::topic;

fn resp(packet_id: u16, reason: ReasonCode) -> PubResp {
    PubResp {
        packet_id,
        reason,
        properties: Properties::default(),
    }
}

impl Channel {
    /// A packet from the client, in the order it was sent.
    pub(super) fn on_packet(&mut self, packet: Packet, now: Now) -> Result<(), Close> {
        let packet = match packet {
            // Topic aliases follow arrival order, whatever waits for a decision: the
            // PUBLISH carries its topic from here on.
            Packet::Publish(mut p) => {
                p.topic = self.resolve_alias(&p)?;
                p.properties.topic_alias = None;
                Packet::Publish(p)
            }
            other => other,
        };
        self.authorize(packet, now)
    }

    /// Handle a packet whose authorization (`verdicts`) is decided.
    pub(super) fn dispatch(
        &mut self,
        packet: Packet,
        verdicts: Verdicts,
        now: Now,
    ) -> Result<(), Close> {
        if self.site.broker.config.access.acl_deny_action == AclDenyAction::Disconnect
            && verdicts.contains(&AclVerdict::Deny)
        {
            // `acl_deny_action = disconnect`: no ack, the connection ends (as EMQX 4).
            let metric = match packet {
                Packet::Publish(_) => &self.site.broker.metrics.packets_publish_denied,
                _ => &self.site.broker.metrics.packets_subscribe_denied,
            };
            Metrics::inc(metric);
            tracing::info!(client_id = %self.handle.client_id, "not authorized; disconnecting (acl_deny_action = disconnect)");
            return Err(Close::Error(ReasonCode::NOT_AUTHORIZED));
        }
        match packet {
            Packet::Publish(p) => self.on_publish(p, allowed(&verdicts, 0), now)?,
            Packet::PubAck(r) => {
                self.count_missed(r.packet_id, packet_type::PUBACK);
                self.acked(r.packet_id);
                let actions = self.outbound.on_puback(r.packet_id, now.at);
                self.execute(actions, now);
            }
            Packet::PubRec(r) => {
                match self
                    .outbound
                    .on_pubrec(r.packet_id, r.reason.is_error(), now.at)
                {
                    Some(actions) => self.execute(actions, now),
                    None => {
                        self.site
                            .broker
                            .metrics
                            .packets
                            .on_missed(packet_type::PUBREC);
                        self.send(&Packet::PubRel(resp(
                            r.packet_id,
                            ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
                        )))
                    }
                }
            }
            Packet::PubComp(r) => {
                self.count_missed(r.packet_id, packet_type::PUBCOMP);
                self.acked(r.packet_id);
                let actions = self.outbound.on_pubcomp(r.packet_id, now.at);
                self.execute(actions, now);
            }
            Packet::PubRel(r) => match self.inbound.release(r.packet_id) {
                Release::Unknown => {
                    self.site
                        .broker
                        .metrics
                        .packets
                        .on_missed(packet_type::PUBREL);
                    let reason = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
                    self.send_pubcomp(r.packet_id, reason);
                }
                // Its PUBCOMP is on its way (after the durable release).
                Release::Repeated => {}
                Release::First => {
                    // PUBCOMP lets the client reuse the id: it goes only once the id's
                    // release is durable, or a crash would bring the id back and
                    // swallow the client's next PUBLISH with it as a duplicate. Until
                    // it goes, the id keeps its Receive Maximum slot (`send_pubcomp`).
                    let pubcomp = Packet::PubComp(resp(r.packet_id, ReasonCode::Success));
                    let ops = if self.persistent {
                        vec![Op::DeleteAwaitingRel {
                            client: self.handle.client_id.clone(),
                            packet_id: r.packet_id,
                        }]
                    } else {
                        Vec::new()
                    };
                    if self
                        .site
                        .broker
                        .fault(crate::sim::Fault::PubcompBeforeDurable)
                    {
                        // The model test's known defect: PUBCOMP before the deletion.
                        self.turn().store_ops.extend(ops);
                        self.send_pubcomp(r.packet_id, ReasonCode::Success);
                    } else {
                        self.reply_when_durable(ops, pubcomp, Vec::new(), now);
                    }
                }
            },
            Packet::Subscribe(s) => self.on_subscribe(s, &verdicts, now),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u, now),
            Packet::PingReq => self.send(&Packet::PingResp),
            Packet::Disconnect(d) => {
                if let Some(expiry) = d.properties.session_expiry_interval {
                    let mut st = self.handle.state();
                    if st.meta.expiry_interval_s == 0 && expiry > 0 {
                        // MQTT 5 §3.14.2.2.2: cannot turn a 0 expiry into a non-zero one.
                        return Err(Close::Error(ReasonCode::PROTOCOL_ERROR));
                    }
                    st.meta.expiry_interval_s =
                        expiry.min(super::connect::max_session_expiry_s(&self.site.zone));
                }
                return Err(Close::ByClient {
                    with_will: d.reason == ReasonCode::DISCONNECT_WITH_WILL,
                });
            }
            Packet::Auth(_) => return Err(Close::Error(ReasonCode::BAD_AUTHENTICATION_METHOD)),
            other => {
                tracing::warn!(client_id = %self.handle.client_id, packet = other.name(), "unexpected packet from client");
                return Err(Close::Error(ReasonCode::PROTOCOL_ERROR));
            }
        }
        Ok(())
    }

    /// `message.acked` for the delivery `packet_id` completes, if anyone listens.
    /// `packets.puback.missed` / `packets.pubcomp.missed`: an ack for no delivery in
    /// flight.
    fn count_missed(&self, packet_id: u16, packet_type: usize) {
        if self.outbound.inflight_message(packet_id).is_none() {
            self.site.broker.metrics.packets.on_missed(packet_type);
        }
    }

    fn acked(&self, packet_id: u16) {
        if self
            .site
            .broker
            .hooks
            .is_registered(HookPoint::MessageAcked)
        {
            if let Some(msg) = self.outbound.inflight_message(packet_id) {
                self.site
                    .broker
                    .hooks
                    .message_acked(&self.client_info(), msg);
            }
        }
    }

    fn on_publish(&mut self, p: Publish, allowed: bool, now: Now) -> Result<(), Close> {
        let broker = self.site.broker.clone();
        let mqtt = &broker.config.mqtt;
        let metrics = &broker.metrics;
        Metrics::inc(&metrics.messages_received);
        Metrics::inc(match p.qos {
            QoS::AtMostOnce => &metrics.messages_qos0_received,
            QoS::AtLeastOnce => &metrics.messages_qos1_received,
            QoS::ExactlyOnce => &metrics.messages_qos2_received,
        });
        // Resolved on arrival (`on_packet`).
        let topic = p.topic.clone();
        let topic_str = std::str::from_utf8(&topic).unwrap_or("");
        if let Err(e) = topic::validate_name(topic_str, mqtt.max_topic_levels) {
            tracing::warn!(client_id = %self.handle.client_id, error = %e, "invalid PUBLISH topic");
            return Err(Close::Error(ReasonCode::TOPIC_NAME_INVALID));
        }
        if p.qos as u8 > mqtt.max_qos_allowed {
            return Err(Close::Error(ReasonCode::QOS_NOT_SUPPORTED));
        }
        if p.retain && !mqtt.retain_available {
            return Err(Close::Error(ReasonCode::RETAIN_NOT_SUPPORTED));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            // Only the server puts Subscription Identifiers in a PUBLISH [MQTT-3.3.4-6].
            tracing::warn!(client_id = %self.handle.client_id, "PUBLISH from the client carries a Subscription Identifier");
            return Err(Close::Error(ReasonCode::PROTOCOL_ERROR));
        }
        if let Some(response_topic) = &p.properties.response_topic {
            // A Response Topic must be a Topic Name, without wildcards [MQTT-3.3.2-14].
            if let Err(e) = topic::validate_name(response_topic, 0) {
                tracing::warn!(client_id = %self.handle.client_id, error = %e, "invalid PUBLISH Response Topic");
                return Err(Close::Error(ReasonCode::PROTOCOL_ERROR));
            }
        }
        let topic = match self.mountpoint() {
            Some(mp) => bytes::Bytes::from(crate::mountpoint::mount(&mp, topic_str)),
            None => topic,
        };
        let publish_ms = now.ms;
        let msg = Message {
            topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            from: self.handle.client_id.clone(),
            publish_ms,
            expiry_ms: p
                .properties
                .message_expiry_interval
                .map(|s| publish_ms + s as u64 * 1000)
                .unwrap_or(0),
            properties: Message::pass_through(&p.properties),
        };
        // `$SYS/...` is the broker's own (crate::sys): no client may publish there,
        // whatever the ACL says.
        let to_sys = crate::sys::is_sys_topic(&msg.topic);
        if !allowed || to_sys {
            // `acl_deny_action = ignore` (EMQX's default): dropped, and a QoS 1/2
            // publisher is told so (v5: 0x87; v3 acks carry no reason).
            if to_sys {
                Metrics::inc(&metrics.messages_dropped_sys_topic);
                static SYS: crate::logging::Throttle = crate::logging::Throttle::new();
                if let Some(unlogged) = SYS.ready(publish_ms, 10_000) {
                    tracing::warn!(client_id = %self.handle.client_id, topic = %msg.topic_str(), unlogged, "PUBLISH to a $SYS topic; dropped");
                }
            } else {
                Metrics::inc(&metrics.packets_publish_denied);
                tracing::info!(client_id = %self.handle.client_id, topic = %msg.topic_str(), "PUBLISH not authorized; dropped");
            }
            let denied = |id| resp(id, ReasonCode::NOT_AUTHORIZED);
            match (p.qos, p.packet_id) {
                (QoS::AtLeastOnce, Some(id)) => self.ack_in_order(Packet::PubAck(denied(id))),
                (QoS::ExactlyOnce, Some(id)) => self.ack_in_order(Packet::PubRec(denied(id))),
                _ => {}
            }
            return Ok(());
        }
        let Some(packet_id) = p.packet_id else {
            let routed = self.site.broker.publish_from(
                self.info_for(HookPoint::MessagePublish),
                msg,
                Vec::new(),
                Box::new(|_| {}),
            );
            self.pause_for(routed.congested);
            return Ok(());
        };
        if self.pending_in().contains_key(&packet_id) {
            // A retransmission of a PUBLISH still being stored: its ack will come.
            return Ok(());
        }
        // MQTT 5: every QoS 1/2 PUBLISH takes a slot of our Receive Maximum until its
        // PUBACK / PUBCOMP is sent; only a resent QoS 2 PUBLISH that holds one already
        // takes none. One more than the client may send is a protocol violation,
        // however it was paced (MQTT 5 §4.9). v3 has no Receive Maximum: its QoS 2 ids
        // are bounded by `max_awaiting_rel` (TooMany below) instead.
        let holds_slot = p.qos == QoS::ExactlyOnce && self.inbound.is_counted(packet_id);
        if self.version.is_v5() && !holds_slot && self.receive_quota_used() >= self.receive_max() {
            tracing::info!(client_id = %self.handle.client_id, packet_id, receive_maximum = self.receive_max(), "Receive Maximum exceeded");
            return Err(Close::Error(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
        }
        let mut extra = Vec::new();
        if p.qos == QoS::ExactlyOnce {
            match self.inbound.arrival(packet_id) {
                Qos2Arrival::Duplicate => {
                    Metrics::inc(&metrics.messages_qos2_duplicate);
                    self.inbound.count(packet_id);
                    self.ack_in_order(Packet::PubRec(resp(packet_id, ReasonCode::Success)));
                    return Ok(());
                }
                Qos2Arrival::InUse if self.version.is_v5() => {
                    // Released, PUBCOMP not sent yet: the client may not reuse the id
                    // (MQTT 5 §2.2.1). Refused, not routed; the flow ends here.
                    tracing::warn!(client_id = %self.handle.client_id, packet_id, "QoS 2 PUBLISH reuses an id before its PUBCOMP");
                    self.ack_in_order(Packet::PubRec(resp(
                        packet_id,
                        ReasonCode::PACKET_IDENTIFIER_IN_USE,
                    )));
                    return Ok(());
                }
                Qos2Arrival::InUse => {
                    tracing::warn!(client_id = %self.handle.client_id, packet_id, "QoS 2 PUBLISH reuses an id before its PUBCOMP");
                    return Err(Close::Error(ReasonCode::PACKET_IDENTIFIER_IN_USE));
                }
                Qos2Arrival::TooMany => {
                    tracing::info!(client_id = %self.handle.client_id, packet_id, max_awaiting_rel = self.site.zone.max_awaiting_rel, "too many QoS 2 ids awaiting PUBREL");
                    return Err(Close::Error(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
                }
                Qos2Arrival::New => {
                    if self.persistent {
                        extra.push(Op::PutAwaitingRel {
                            client: self.handle.client_id.clone(),
                            packet_id,
                        });
                    }
                }
            }
        }
        let qos = p.qos;
        let mailbox = self.mailbox.clone();
        let after_pending = !self.pending_in().is_empty();
        // Placeholder until `publish` returns; the Durable event is handled after.
        self.turn().pending_in.insert(packet_id, true);
        let routed = self.site.broker.publish_ordered(
            self.info_for(HookPoint::MessagePublish).as_ref(),
            msg,
            extra,
            Box::new(move |ok| {
                mailbox.push(ConnEvent::Durable { packet_id, qos, ok });
            }),
            after_pending,
        );
        self.turn().pending_in.insert(packet_id, routed.matched > 0);
        self.pause_for(routed.congested);
        Ok(())
    }

    /// A subscriber of what we just published is behind: read nothing more from
    /// this client until it has room (TCP backpressure; see `broker::mailbox`).
    fn pause_for(&mut self, congested: Option<Arc<crate::broker::mailbox::Mailbox>>) {
        if let (Some(congested), false) = (congested, self.paused) {
            Metrics::inc(&self.site.broker.metrics.publishers_paused);
            self.paused = true;
            congested.wait_room(self.mailbox.clone());
        }
    }

    /// Send a PUBACK / PUBREC that needs nothing stored, after the acks of earlier
    /// PUBLISHes still waiting for the store: acks go out in PUBLISH order
    /// [MQTT-4.6.0-2], and the writer completes in order.
    fn ack_in_order(&mut self, ack: Packet) {
        if self.pending_in().is_empty() {
            self.send(&ack);
        } else {
            self.when_durable(Vec::new(), ConnEvent::Reply(Box::new(ack), Vec::new()));
        }
    }

    /// Our Receive Maximum (MQTT 5): the zone's `max_inflight`, told in CONNACK.
    fn receive_max(&self) -> usize {
        usize::from(self.site.zone.max_inflight)
    }

    /// Inbound QoS 1/2 publishes not yet answered with PUBACK / PUBCOMP: those waiting
    /// for the store, and QoS 2 ids held or released but not yet completed.
    fn receive_quota_used(&self) -> usize {
        self.pending_in().len() + self.inbound.quota_used()
    }

    /// Send PUBCOMP for an inbound QoS 2 id and give its Receive Maximum slot back.
    /// Whatever sends a PUBCOMP goes through here, at the moment it is sent.
    pub(super) fn send_pubcomp(&mut self, packet_id: u16, reason: ReasonCode) {
        self.send(&Packet::PubComp(resp(packet_id, reason)));
        self.inbound.completed(packet_id);
    }

    /// The store answered for an inbound QoS 1/2 PUBLISH: acknowledge it now.
    pub(super) fn on_durable(
        &mut self,
        packet_id: u16,
        qos: QoS,
        ok: bool,
        now: Now,
    ) -> Result<(), Close> {
        let matched = self.turn().pending_in.remove(&packet_id).unwrap_or(true);
        if !ok {
            // Not stored: never acknowledge what we may lose. v3 has no way to say so.
            if !self.version.is_v5() {
                return Err(Close::Error(ReasonCode::UNSPECIFIED_ERROR));
            }
        }
        let reason = match (ok, matched) {
            (false, _) => ReasonCode::UNSPECIFIED_ERROR,
            (true, false) => ReasonCode::NO_MATCHING_SUBSCRIBERS,
            (true, true) => ReasonCode::Success,
        };
        match qos {
            QoS::AtLeastOnce => self.send(&Packet::PubAck(resp(packet_id, reason))),
            QoS::ExactlyOnce => {
                if ok {
                    self.inbound.record(packet_id, now.at);
                }
                self.send(&Packet::PubRec(resp(packet_id, reason)));
            }
            QoS::AtMostOnce => {}
        }
        Ok(())
    }

    fn resolve_alias(&mut self, p: &Publish) -> Result<bytes::Bytes, Close> {
        let Some(alias) = p.properties.topic_alias else {
            return Ok(p.topic.clone());
        };
        if alias == 0 || alias > self.site.broker.config.mqtt.max_topic_alias {
            return Err(Close::Error(ReasonCode::TOPIC_ALIAS_INVALID));
        }
        let aliases = self.aliases.get_or_insert_with(Default::default);
        if p.topic.is_empty() {
            return aliases
                .inbound
                .get(&alias)
                .cloned()
                .ok_or(Close::Error(ReasonCode::PROTOCOL_ERROR));
        }
        aliases.inbound.insert(alias, p.topic.clone());
        Ok(p.topic.clone())
    }

    fn on_subscribe(&mut self, s: Subscribe, verdicts: &Verdicts, now: Now) {
        let mqtt = &self.site.broker.config.mqtt;
        let sub_id = s
            .properties
            .subscription_identifiers
            .first()
            .copied()
            .unwrap_or(0);
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut ops = Vec::new();
        let mut lookups = Vec::new();
        for (i, (filter, options)) in s.filters.iter().enumerate() {
            // Checked as the client sent it; subscribed under the mountpoint.
            let valid = topic::validate_filter(filter, mqtt.max_topic_levels).is_ok();
            let mounted = match self.mountpoint() {
                Some(mp) if valid => crate::mountpoint::mount(&mp, filter),
                _ => filter.clone(),
            };
            let filter = &mounted;
            let reason = if !valid {
                ReasonCode::TOPIC_FILTER_INVALID
            } else if !allowed(verdicts, i) {
                Metrics::inc(&self.site.broker.metrics.packets_subscribe_denied);
                ReasonCode::NOT_AUTHORIZED
            } else if filter.starts_with("$share/") || filter.starts_with("$queue/") {
                ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
            } else if !mqtt.wildcard_subscription && topic::has_wildcard(filter) {
                ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
            } else if self.site.zone.max_subscriptions > 0
                && self.handle.state().meta.subscriptions.len() >= self.site.zone.max_subscriptions
                && !self.handle.state().meta.subscriptions.contains_key(filter)
            {
                ReasonCode::QUOTA_EXCEEDED
            } else {
                let granted =
                    QoS::from_u8((options.qos as u8).min(mqtt.max_qos_allowed)).unwrap_or_default();
                let opts = SubOpts {
                    qos: granted,
                    ..SubOpts::from_options(options, sub_id)
                };
                let existed = self
                    .site
                    .broker
                    .registry
                    .subscribe(&self.handle, filter, opts);
                if let Some(info) = self.info_for(HookPoint::SessionSubscribed) {
                    self.site
                        .broker
                        .hooks
                        .session_subscribed(&info, filter, options);
                }
                if self.persistent {
                    ops.push(Op::PutSubscription {
                        client: self.handle.client_id.clone(),
                        filter: filter.clone(),
                        record: SubscriptionRecord {
                            qos: granted as u8,
                            no_local: opts.no_local,
                            retain_as_published: opts.retain_as_published,
                            retain_handling: opts.retain_handling as u8,
                            subscription_id: sub_id,
                        },
                    });
                }
                let send_retained = match opts.retain_handling {
                    RetainHandling::SendAlways => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::Never => false,
                };
                if send_retained && !self.site.broker.retained.is_empty() {
                    lookups.push(RetainedLookup {
                        filter: filter.clone(),
                        granted,
                        subscription_id: sub_id,
                        messages: Vec::new(),
                    });
                }
                ReasonCode(granted as u8)
            };
            if reason.is_error() {
                tracing::info!(client_id = %self.handle.client_id, filter, ?reason, "subscription refused");
            }
            reasons.push(reason);
        }
        let ack = Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Properties::default(),
            reasons,
        });
        if lookups.is_empty() {
            self.reply_when_durable(ops, ack, Vec::new(), now);
            return;
        }
        // The retained messages are read on the store's reader pool. The subscription
        // is written now, in this client's order; until the answer is in, this
        // connection takes no further packet from its client (`InputPause`), so
        // what follows (an UNSUBSCRIBE, more acks) is handled after it, as before.
        self.turn().store_ops.append(&mut ops);
        self.paused_for = InputPause::Retained;
        let mailbox = self.mailbox.clone();
        self.site
            .broker
            .read_retained(RetainedRead { ack, lookups }, move |read| {
                mailbox.push(ConnEvent::RetainedRead(Box::new(read)));
            });
    }

    /// The retained messages of a SUBSCRIBE were read: SUBACK once the subscription
    /// is durable, then the messages. For a persistent session the QoS 1/2 ones are
    /// stored first, like any QoS 1/2 delivery, and go with the seqs the writer gave
    /// them (in op order; a full queue drops one).
    pub(super) fn on_retained_read(&mut self, read: RetainedRead, now: Now) -> Result<(), Close> {
        if self.paused_for == InputPause::Retained {
            self.paused_for = InputPause::No;
        }
        self.finish_subscribe(read, now)?;
        // Packets held for authorization behind the SUBSCRIBE go on (the driver
        // decodes what waits in its buffer).
        self.release_held(now)
    }

    fn finish_subscribe(&mut self, read: RetainedRead, now: Now) -> Result<(), Close> {
        let mut ops = Vec::new();
        let mut retained = Vec::new();
        let mut stored = Vec::new();
        for lookup in read.lookups {
            for msg in lookup.messages {
                let mut out = Outgoing {
                    seq: None,
                    msg_id: 0,
                    qos: msg.qos.min(lookup.granted),
                    retain: true,
                    subscription_ids: if lookup.subscription_id != 0 {
                        vec![lookup.subscription_id]
                    } else {
                        vec![]
                    },
                    resend: false,
                    unreferenced: false,
                    msg,
                };
                if self.persistent && out.qos != QoS::AtMostOnce {
                    out.msg_id = self.site.broker.store.next_msg_id();
                    out.unreferenced = true; // stored inline
                    ops.push(self.enqueue_op(&out));
                    stored.push(out);
                } else {
                    retained.push(out);
                }
            }
        }
        let ack = read.ack;
        if !self.persistent {
            return self.on_event(ConnEvent::Reply(Box::new(ack), retained), now);
        }
        // Persistent: even with nothing to store, this waits (a barrier) for the
        // subscription written at SUBSCRIBE to be durable.
        let broker = self.site.broker.clone();
        self.when_durable_with(ops, move |seqs| {
            for (mut out, seq) in stored.into_iter().zip(seqs) {
                match seq {
                    Some(seq) => {
                        out.seq = Some(seq);
                        retained.push(out);
                    }
                    None => broker.metrics.dropped_queue_full(out.qos),
                }
            }
            ConnEvent::Reply(Box::new(ack), retained)
        });
        Ok(())
    }

    /// The store op that queues `out` (a retained message, inline) for this session.
    fn enqueue_op(&self, out: &Outgoing) -> Op {
        let (incarnation, max_len) = {
            let st = self.handle.state();
            (st.meta.incarnation, st.zone.max_mqueue_len as u64)
        };
        Op::Enqueue {
            client: self.handle.client_id.clone(),
            incarnation,
            entry: QueueEntry {
                msg_id: out.msg_id,
                qos: out.qos as u8,
                retain: true,
                released: false,
                subscription_ids: out.subscription_ids.clone(),
                inline: Some(out.msg.to_stored()),
            },
            max_len,
        }
    }

    fn on_unsubscribe(&mut self, u: Unsubscribe, now: Now) {
        let mut ops = Vec::new();
        let reasons = u
            .filters
            .iter()
            .map(|filter| {
                let mounted = self
                    .mountpoint()
                    .map(|mp| crate::mountpoint::mount(&mp, filter));
                let filter = mounted.as_ref().unwrap_or(filter);
                if self.site.broker.registry.unsubscribe(&self.handle, filter) {
                    if let Some(info) = self.info_for(HookPoint::SessionUnsubscribed) {
                        self.site.broker.hooks.session_unsubscribed(&info, filter);
                    }
                    if self.persistent {
                        ops.push(Op::DeleteSubscription {
                            client: self.handle.client_id.clone(),
                            filter: filter.clone(),
                        });
                    }
                    ReasonCode::Success
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        let ack = Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: Properties::default(),
            reasons,
        });
        self.reply_when_durable(ops, ack, Vec::new(), now);
    }

    /// Send `reply` (then `retained`) once `ops` are durable; at once when there are none.
    fn reply_when_durable(
        &mut self,
        ops: Vec<Op>,
        reply: Packet,
        retained: Vec<Outgoing>,
        now: Now,
    ) {
        if ops.is_empty() {
            let _ = self.on_event(ConnEvent::Reply(Box::new(reply), retained), now);
            return;
        }
        self.when_durable(ops, ConnEvent::Reply(Box::new(reply), retained));
    }
}
