//! Executing session actions: PUBLISH encoding (v5 properties, topic aliases,
//! the client's maximum packet size), store writes and queue page reads (on the
//! store's reader pool, never on the driver's thread).

use std::collections::VecDeque;
use std::sync::Arc;

use super::{Channel, Now};
use crate::broker::registry::ConnEvent;
use crate::codec::{self, Packet, Properties, PubResp, Publish, ReasonCode};
use crate::hooks::{self, HookPoint};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::session::{Action, DropReason, Outgoing, PageEntry};
use quay_storage::read;

impl Channel {
    /// Run actions until none are left (some produce more: a page read, a discard).
    pub(super) fn execute(&mut self, actions: Vec<crate::session::Action>, now: Now) {
        let mut work: VecDeque<Action> = actions.into();
        while let Some(action) = work.pop_front() {
            match action {
                Action::Publish {
                    packet_id,
                    dup,
                    out,
                } => {
                    // Expired before its onward delivery started: dropped. A resend
                    // (DUP) goes on, as MQTT 5 §3.3.2.3.3 has it.
                    if !dup && out.msg.is_expired(now.ms) {
                        self.dropped(&out.msg, hooks::DropReason::Expired);
                        if let Some(id) = packet_id {
                            work.extend(self.outbound.discard(id, now.at));
                        }
                        continue;
                    }
                    if !self.send_publish(packet_id, dup, &out, now) {
                        if let Some(id) = packet_id {
                            work.extend(self.outbound.discard(id, now.at));
                        }
                    }
                }
                Action::PubRel(id) => self.send(&Packet::PubRel(PubResp {
                    packet_id: id,
                    reason: ReasonCode::Success,
                    properties: Properties::default(),
                })),
                Action::Store(op) => self.turn().store_ops.push(op),
                Action::Release { packet_id, op }
                    if self
                        .site
                        .broker
                        .fault(crate::sim::Fault::PubrelBeforeDurable) =>
                {
                    // The model test's known defect: PUBREL before the release is durable.
                    self.turn().store_ops.push(op);
                    work.extend(self.outbound.released(packet_id, now.at));
                }
                Action::Release { packet_id, op } => {
                    self.when_durable(vec![op], ConnEvent::Released(packet_id));
                }
                Action::LoadQueue { from, limit } => self.load_page(from, limit),
                Action::Dropped(reason, msg) => {
                    let m = &self.site.broker.metrics;
                    Metrics::inc(&m.messages_dropped);
                    Metrics::inc(match reason {
                        DropReason::QueueFull => &m.messages_dropped_queue_full,
                        DropReason::Missing => &m.messages_dropped_expired,
                    });
                    if let Some(msg) = msg {
                        self.site.broker.hooks.message_dropped(
                            &msg,
                            reason.into(),
                            Some(&self.handle.client_id),
                        );
                    }
                }
            }
        }
    }

    /// A delivery to this client dropped here: counted, and told to `message.dropped`.
    fn dropped(&self, msg: &Message, reason: hooks::DropReason) {
        let m = &self.site.broker.metrics;
        Metrics::inc(&m.messages_dropped);
        if reason == hooks::DropReason::Expired {
            m.expired(msg.qos);
        }
        self.site
            .broker
            .hooks
            .message_dropped(msg, reason, Some(&self.handle.client_id));
    }

    /// Submit `ops` (after the detached writes gathered so far) and hand `then` to
    /// this connection once they are durable. A failed write closes the connection:
    /// what `then` would acknowledge is not on disk.
    pub(super) fn when_durable(&mut self, ops: Vec<quay_storage::Op>, then: ConnEvent) {
        self.when_durable_with(ops, move |_| then);
    }

    /// `when_durable`, with the event made from what the writer answered (the seqs
    /// of the request's enqueues).
    pub(super) fn when_durable_with(
        &mut self,
        ops: Vec<quay_storage::Op>,
        then: impl FnOnce(quay_storage::Enqueued) -> ConnEvent + Send + 'static,
    ) {
        self.flush_store_ops();
        let mailbox = self.mailbox.clone();
        let client_id = self.handle.client_id.clone();
        self.site.broker.store.writer().submit(
            ops,
            Box::new(move |result| match result {
                Ok(enqueued) => mailbox.push(then(enqueued)),
                Err(e) => {
                    tracing::error!(%client_id, error = %e, "store write failed; closing the connection");
                    mailbox.kick(ReasonCode::UNSPECIFIED_ERROR);
                }
            }),
        );
    }

    /// Read a queue page: submitted by `flush_store_ops`, after this turn's output.
    /// At most one read is out (`Cursor::Disk { loading }`); should another come
    /// first, the earlier goes at once.
    fn load_page(&mut self, from: u64, limit: usize) {
        if let Some((from, limit)) = self.take_page_read() {
            self.submit_page_read(from, limit);
        }
        let turn = self.turn();
        turn.page_read_from = from;
        // At least 1 (0 means none); a page is never near u32::MAX entries.
        turn.page_read_limit = u32::try_from(limit.max(1)).unwrap_or(u32::MAX);
    }

    /// The page read waiting for `flush_store_ops`, if any (it no longer waits).
    pub(super) fn take_page_read(&mut self) -> Option<(u64, usize)> {
        let turn = self.turn.as_mut()?;
        let limit = std::mem::take(&mut turn.page_read_limit);
        (limit != 0).then_some((turn.page_read_from, limit as usize))
    }

    /// Hand the read of a queue page to the store's reader pool: the page comes back
    /// as `ConnEvent::Loaded` (a closed mailbox, after a takeover, just drops it).
    pub(super) fn submit_page_read(&mut self, from: u64, limit: usize) {
        let client = self.handle.client_id.clone();
        let mailbox = self.mailbox.clone();
        self.site.broker.store.reader().submit(
            move |db| read_page(db, &client, from, limit),
            move |page| mailbox.push(ConnEvent::Loaded { from, limit, page }),
        );
    }

    /// The answer to `load_page`.
    pub(super) fn on_loaded(
        &mut self,
        from: u64,
        limit: usize,
        page: quay_storage::Result<crate::session::Page>,
        now: Now,
    ) {
        if self.paused_for == super::InputPause::FirstPage {
            self.paused_for = super::InputPause::No;
        }
        let actions = match page {
            Ok(page) => self.outbound.loaded(from, limit, page, now.at),
            Err(e) => {
                tracing::error!(client_id = %self.handle.client_id, error = %e, from, "cannot read queue; retrying");
                self.outbound.load_failed(from, now.at)
            }
        };
        self.execute(actions, now);
    }

    /// A delivered topic without this client's mountpoint.
    fn unmounted(&self, topic: &bytes::Bytes) -> bytes::Bytes {
        match self.mountpoint() {
            Some(mp) => {
                let rest = crate::mountpoint::unmount(&mp, topic);
                topic.slice(topic.len() - rest.len()..)
            }
            None => topic.clone(),
        }
    }

    /// Encode a PUBLISH for this client. False when it cannot be sent (larger than
    /// the client's Maximum Packet Size): it is then dropped as if delivered.
    fn send_publish(
        &mut self,
        packet_id: Option<u16>,
        dup: bool,
        out: &Outgoing,
        now: Now,
    ) -> bool {
        let msg = &out.msg;
        let mut properties = Properties::default();
        let mut topic = self.unmounted(&msg.topic);
        let mut new_alias = None;
        if self.version.is_v5() {
            properties = msg.properties.clone();
            properties.message_expiry_interval = msg.remaining_expiry_s(now.ms);
            properties.subscription_identifiers = out.subscription_ids.clone();
            if self.alias_out_max > 0 {
                let aliases = self.aliases.get_or_insert_with(Default::default);
                match aliases.outbound.get(&msg.topic) {
                    Some(alias) => {
                        properties.topic_alias = Some(*alias);
                        topic = bytes::Bytes::new();
                    }
                    None if (aliases.outbound.len() as u16) < self.alias_out_max => {
                        // Registered only once the PUBLISH carrying it is really sent.
                        let alias = aliases.outbound.len() as u16 + 1;
                        new_alias = Some(alias);
                        properties.topic_alias = Some(alias);
                    }
                    None => {}
                }
            }
        }
        let packet = Packet::Publish(Publish {
            dup,
            qos: out.qos,
            retain: out.retain,
            topic,
            packet_id,
            properties,
            payload: msg.payload.clone(),
        });
        // Encoded straight into the write buffer; taken back out if too large.
        let (version, max) = (self.version, self.client_max_packet as usize);
        let output = &mut self.turn().output;
        let before = output.len();
        if let Err(e) = codec::encode(&packet, version, output) {
            output.truncate(before);
            tracing::warn!(client_id = %self.client_id(), error = %e, "cannot encode PUBLISH");
            return false;
        }
        let size = output.len() - before;
        if size > max {
            output.truncate(before);
            tracing::info!(client_id = %self.handle.client_id, size, max = self.client_max_packet, "PUBLISH larger than the client accepts; dropped");
            Metrics::inc(&self.site.broker.metrics.messages_dropped_too_large);
            self.site.broker.metrics.dropped_qos2(out.qos);
            self.site.broker.hooks.message_dropped(
                msg,
                hooks::DropReason::TooLarge,
                Some(&self.handle.client_id),
            );
            return false;
        }
        if let Some(alias) = new_alias {
            if let Some(aliases) = &mut self.aliases {
                aliases.outbound.insert(msg.topic.clone(), alias);
            }
        }
        Metrics::inc(&self.site.broker.metrics.packets_sent);
        self.site.broker.metrics.packets.on_sent(&packet);
        self.site.broker.metrics.sent_message(out.qos);
        if let Some(info) = self.info_for(HookPoint::MessageDelivered) {
            self.site.broker.hooks.message_delivered(&info, msg);
        }
        true
    }
}

/// Up to `limit` queue entries of `client` from `from`, with their messages: inline
/// ones carry theirs, the rest are read from the log in one multi-get. Runs on a
/// reader thread. A message that is gone is None (the session drops its entry).
/// The page is built in one pass into one allocation: a drain reads every queued
/// message through here, and moving a page of entries around was a tenth of its CPU.
fn read_page(
    db: &quay_storage::backend::ReadDb<'_>,
    client: &str,
    from: u64,
    limit: usize,
) -> quay_storage::Result<crate::session::Page> {
    let mut page: crate::session::Page = Vec::with_capacity(limit.min(read::PREALLOCATED_MAX));
    // Where the entries whose message is in the log sit in `page`, and their ids.
    let mut logged: Vec<(usize, u64)> = Vec::new();
    read::visit_queue_range(db, client, from, limit, |seq, entry| {
        let stored = PageEntry::from_entry(seq, entry);
        if !stored.inline {
            logged.push((page.len(), stored.msg_id));
        }
        page.push(stored);
        Ok(())
    })?;
    if !logged.is_empty() {
        let ids: Vec<u64> = logged.iter().map(|(_, id)| *id).collect();
        let messages = read::messages(db, &ids)?;
        for ((at, _), stored) in logged.into_iter().zip(messages) {
            page[at].msg = stored.map(|m| Arc::new(Message::from_stored(m)));
        }
    }
    Ok(page)
}
