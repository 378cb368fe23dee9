//! The publish path: match subscribers, write what must survive (once), then deliver.
//!
//! Deliveries to persistent sessions (QoS 1/2, and QoS 0 to offline ones when
//! `mqueue_store_qos0`) and retained updates are written in one store request: the
//! message once, plus one small queue entry per such subscriber. When the writer has
//! made that request durable it runs our completion, which hands each online
//! subscriber its stored delivery (in seq order: the writer completes in order) and
//! tells the publisher its PUBACK/PUBREC may go. Everything else is delivered at once.

use std::sync::Arc;

use quay_storage::{Op, QueueEntry};

use super::mailbox::Mailbox;
use super::registry::{Delivered, SessionHandle};
use super::Broker;
use crate::codec::QoS;
use crate::hooks::{ClientInfo, DropReason, PublishOutcome};
use crate::logging::Throttle;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::session::Outgoing;

/// Runs once what the publish needed is durable (true) or failed to be (false).
pub type PublishDone = Box<dyn FnOnce(bool) + Send>;

/// What routing a message found.
#[derive(Debug, Default)]
pub struct Routed {
    /// Subscribers that matched.
    pub matched: usize,
    /// A subscriber's connection that is behind (`Delivered::Congested`): the
    /// publisher should read no more until it has room (`Mailbox::room`).
    pub congested: Option<Arc<Mailbox>>,
}

impl Broker {
    /// Route `msg`. `extra` ops ride in the same durable batch (e.g. the QoS 2 packet
    /// id of a persistent publisher). `done` is called exactly once. Not from a
    /// client (a will, a bridge): `message.publish` hooks see no client.
    pub fn publish(self: &Arc<Self>, msg: Message, extra: Vec<Op>, done: PublishDone) -> Routed {
        self.publish_ordered(None, msg, extra, done, false)
    }

    /// `publish` for a message a client published.
    pub fn publish_from(
        self: &Arc<Self>,
        from: Option<Arc<ClientInfo>>,
        msg: Message,
        extra: Vec<Op>,
        done: PublishDone,
    ) -> Routed {
        self.publish_ordered(from.as_ref(), msg, extra, done, false)
    }

    /// `publish`, with `after_pending`: the publisher still waits for the store on
    /// earlier publishes, so `done` must not run before theirs (acks go out in
    /// PUBLISH order [MQTT-4.6.0-2]) even when this one needs nothing stored.
    pub fn publish_ordered(
        self: &Arc<Self>,
        from: Option<&Arc<ClientInfo>>,
        mut msg: Message,
        extra: Vec<Op>,
        done: PublishDone,
        after_pending: bool,
    ) -> Routed {
        if let PublishOutcome::Dropped { by } = self.hooks.message_publish(from, &mut msg) {
            // Consumed by a hook: not routed, stored or retained. What `extra` holds
            // (the publisher's QoS 2 state) is still written, and acked as usual.
            tracing::debug!(topic = %msg.topic_str(), hook = %by, "message dropped by a message.publish hook");
            Metrics::inc(&self.metrics.messages_dropped);
            self.hooks
                .message_dropped(&msg, DropReason::Disallowed, None);
            self.finish_without_routing(extra, done, after_pending);
            return Routed::default();
        }
        let done = self.held(&msg, done);
        let msg = Arc::new(msg);
        let mut ops = extra;
        let retained = msg.retain && self.retain(&msg, &mut ops);
        let topic = msg.topic_str();
        let targets = self.registry.targets(topic);
        let msg_id = self.store.next_msg_id();
        let mut stored: Vec<(Arc<SessionHandle>, Outgoing)> = Vec::new();
        let mut enqueues: Vec<Op> = Vec::new();
        let mut matched = 0;
        let mut congested = None;
        for t in targets {
            if t.no_local && *t.handle.client_id == *msg.from {
                continue;
            }
            matched += 1;
            let (persistent, online, incarnation, max_len, upgrade_qos, store_qos0) = {
                let st = t.handle.state();
                (
                    st.meta.persistent,
                    st.conn.is_some(),
                    st.meta.incarnation,
                    st.zone.max_mqueue_len as u64,
                    st.zone.upgrade_qos,
                    st.zone.mqueue_store_qos0,
                )
            };
            let qos = if upgrade_qos {
                t.qos
            } else {
                msg.qos.min(t.qos)
            };
            let out = Outgoing {
                seq: None,
                msg_id,
                msg: msg.clone(),
                qos,
                // Routed messages lose RETAIN unless the subscriber asked to keep it.
                retain: msg.retain && t.retain_as_published,
                subscription_ids: t.subscription_ids,
                resend: false,
                unreferenced: false,
            };
            if persistent && (qos != QoS::AtMostOnce || (!online && store_qos0)) {
                enqueues.push(Op::Enqueue {
                    client: t.handle.client_id.clone(),
                    incarnation,
                    entry: QueueEntry {
                        msg_id,
                        qos: qos as u8,
                        retain: out.retain,
                        released: false,
                        subscription_ids: out.subscription_ids.clone(),
                        inline: None,
                    },
                    max_len,
                });
                stored.push((t.handle, out));
            } else if online {
                match t.handle.deliver(out) {
                    Delivered::Congested(mailbox) => congested = Some(mailbox),
                    Delivered::Dropped => {
                        self.metrics.dropped_queue_full(qos);
                        self.hooks.message_dropped(
                            &msg,
                            DropReason::QueueFull,
                            Some(&t.handle.client_id),
                        );
                        static FULL: Throttle = Throttle::new();
                        if let Some(unlogged) = FULL.ready(msg.publish_ms, 10_000) {
                            tracing::warn!(client_id = %t.handle.client_id, unlogged, "delivery dropped: the subscriber's backlog is full");
                        }
                    }
                    Delivered::Sent | Delivered::Offline => {}
                }
            }
        }
        if matched == 0 {
            Metrics::inc(&self.metrics.messages_dropped_no_subscribers);
            self.hooks
                .message_dropped(&msg, DropReason::NoSubscribers, None);
        }
        match (enqueues.as_mut_slice(), stored.as_mut_slice()) {
            ([], _) => {}
            // One persistent subscriber: the message goes inside its queue entry, still
            // written once, and its ack is one delete.
            ([Op::Enqueue { entry, .. }], [(_, out)]) => {
                entry.inline = Some(msg.to_stored());
                out.unreferenced = true;
            }
            _ => ops.push(Op::Message {
                id: msg_id,
                msg: msg.to_stored(),
            }),
        }
        // Enqueues follow the Message op: the writer counts references in op order.
        ops.append(&mut enqueues);
        let done = match &self.sim {
            None => done,
            Some(sim) => sim.routed(msg_id, &msg, !ops.is_empty(), done),
        };
        if ops.is_empty() {
            self.finish_without_routing(ops, done, after_pending);
            return Routed { matched, congested };
        }
        let broker = self.clone();
        self.store.writer().submit(
            ops,
            Box::new(move |result| {
                if retained {
                    broker.retained.committed(msg.topic_str(), &msg);
                }
                match result {
                    Ok(seqs) => {
                        for ((handle, mut out), seq) in stored.into_iter().zip(seqs) {
                            match seq {
                                Some(seq) => {
                                    out.seq = Some(seq);
                                    handle.deliver_stored(out);
                                }
                                None => {
                                    // The writer refused it: the stored queue is at
                                    // `max_mqueue_len`.
                                    broker.metrics.dropped_queue_full(out.qos);
                                    broker.hooks.message_dropped(
                                        &msg,
                                        DropReason::QueueFull,
                                        Some(&handle.client_id),
                                    );
                                }
                            }
                        }
                        done(true);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, topic = %msg.topic_str(), "publish not stored");
                        done(false);
                    }
                }
            }),
        );
        Routed { matched, congested }
    }

    /// `done` once the store and every `message.hold` hook (a bridge's cache) agree,
    /// with the AND of their answers. No hook: `done` itself.
    fn held(&self, msg: &Message, done: PublishDone) -> PublishDone {
        let holds = self.hooks.message_hold(msg);
        if holds.is_empty() {
            return done;
        }
        let join = crate::hooks::join_completions(holds.len() + 1, done);
        for hold in holds {
            let j = join.clone();
            hold(Box::new(move |ok| j(ok)));
        }
        Box::new(move |ok| join(ok))
    }

    /// Complete a publish that routes nothing: `ops` (if any) durable, then `done`,
    /// after what the publisher submitted before when `after_pending`.
    fn finish_without_routing(&self, ops: Vec<Op>, done: PublishDone, after_pending: bool) {
        if ops.is_empty() && !after_pending {
            done(true);
            return;
        }
        // Completes after what was submitted before: the writer is in order.
        self.store
            .writer()
            .submit(ops, Box::new(move |r| done(r.is_ok())));
    }

    /// Update the retained store for a PUBLISH with RETAIN set (empty payload deletes).
    /// True when a message was set (and is pending until its write commits).
    fn retain(&self, msg: &Arc<Message>, ops: &mut Vec<Op>) -> bool {
        let topic = msg.topic_str();
        if msg.payload.is_empty() {
            // Deleted in the store even when the index no longer knows the topic: an
            // earlier set or clear of it may still be on its way to the disk, and
            // this clear's ack must not leave before a clear is.
            self.retained.remove(topic);
            ops.push(Op::DeleteRetained {
                topic: msg.topic.clone(),
            });
            return false;
        }
        let limits = &self.config.retainer;
        if limits.max_payload_size > 0 && msg.payload.len() as u64 > limits.max_payload_size {
            tracing::warn!(
                topic,
                size = msg.payload.len(),
                "retained payload too large; not retained"
            );
            return false;
        }
        if limits.max_retained_messages > 0
            && !self.retained.contains(topic)
            && self.retained.len() >= limits.max_retained_messages
        {
            tracing::warn!(topic, "retained message limit reached; not retained");
            return false;
        }
        let mut stored = msg.to_stored();
        if stored.expiry_ms == 0 && !limits.expiry_interval.is_zero() {
            stored.expiry_ms = msg.publish_ms + limits.expiry_interval.as_millis() as u64;
        }
        self.retained.set_pending(topic, msg.clone());
        self.retained.insert(topic);
        Metrics::inc(&self.metrics.messages_retained);
        ops.push(Op::PutRetained {
            topic: msg.topic.clone(),
            msg: stored,
        });
        true
    }
}
