//! Wills waiting out their Will Delay Interval (MQTT 5 §3.1.3.2.2).
//!
//! A will with a delay is stored (`wills` column family) when its connection ends and
//! kept here until it is due, its session ends, or its client reconnects to the
//! session (which cancels it). It is published with its own deletion in one store
//! request, so after a crash a will is either stored for its persistent subscribers
//! and gone, or still waiting: never lost (QoS 0 and clean subscribers, delivered at
//! once, may see it again after a crash in between). The 1 s sweep publishes what is
//! due; wills recovered at start wait the same way. Nothing here blocks: the map's lock is held for map operations only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use quay_storage::{DelayedWill, Op};

use super::Broker;
use crate::message::{ClientId, Message};

#[derive(Default)]
pub struct DelayedWills {
    pending: Mutex<HashMap<ClientId, (u64, Message)>>,
}

impl DelayedWills {
    fn pending(&self) -> MutexGuard<'_, HashMap<ClientId, (u64, Message)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.pending().len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending().is_empty()
    }

    /// Keep a will recovered from the store.
    pub(super) fn recovered(&self, client: ClientId, due_ms: u64, msg: Message) {
        self.pending().insert(client, (due_ms, msg));
    }

    fn take(&self, client: &str) -> Option<Message> {
        self.pending().remove(client).map(|(_, msg)| msg)
    }

    fn take_due(&self, now_ms: u64) -> Vec<(ClientId, Message)> {
        let mut pending = self.pending();
        let due: Vec<ClientId> = pending
            .iter()
            .filter(|(_, (due_ms, _))| *due_ms <= now_ms)
            .map(|(client, _)| client.clone())
            .collect();
        due.into_iter()
            .filter_map(|client| pending.remove(&client).map(|(_, msg)| (client, msg)))
            .collect()
    }
}

impl Broker {
    /// `client`'s connection ended with a will to publish at `due_ms`.
    pub fn delay_will(&self, client: ClientId, due_ms: u64, msg: Message) {
        let will = DelayedWill {
            due_ms,
            msg: msg.to_stored(),
        };
        self.store.writer().submit_detached(vec![Op::PutWill {
            client: client.clone(),
            will,
        }]);
        self.wills.pending().insert(client, (due_ms, msg));
    }

    /// `client` reconnected to its session within the delay: no will.
    pub fn cancel_will(&self, client: &ClientId) {
        if self.wills.take(client).is_some() {
            self.store.writer().submit_detached(vec![Op::DeleteWill {
                client: client.clone(),
            }]);
        }
    }

    /// `client`'s session ended: its waiting will is due now.
    pub fn publish_will_now(self: &Arc<Self>, client: &ClientId) {
        if let Some(msg) = self.wills.take(client) {
            self.publish_will(client.clone(), msg);
        }
    }

    /// Publish the wills whose delay has run out.
    pub(super) fn publish_due_wills(self: &Arc<Self>, now_ms: u64) {
        for (client, msg) in self.wills.take_due(now_ms) {
            self.publish_will(client, msg);
        }
    }

    fn publish_will(self: &Arc<Self>, client: ClientId, msg: Message) {
        tracing::info!(client_id = %client, topic = %msg.topic_str(), "publishing delayed will");
        self.publish(msg, vec![Op::DeleteWill { client }], Box::new(|_| {}));
    }
}
