//! Reading retained messages, off the async workers: for a new subscription (through
//! the store's reader pool) and for the expiry sweep.
//!
//! What a lookup returns is decided when it runs on the reader thread, exactly as the
//! synchronous lookup did at SUBSCRIBE: the topics the index holds then, each served
//! from the pending map while its write is in flight, else from the store. The
//! subscription is routed before the lookup is submitted, so a retained message set
//! while it is out reaches the subscriber as a live delivery, and also as a retained
//! one if the lookup runs after it was set: the same outcomes as before, in a window
//! as long as the read instead of a few instructions.

use std::sync::Arc;

use quay_storage::backend::ReadDb;
use quay_storage::read;

use super::Broker;
use crate::codec::{Packet, QoS};
use crate::message::Message;

/// A SUBSCRIBE whose retained messages were read: what the connection needs to
/// finish it (`ConnEvent::RetainedRead`).
#[derive(Debug)]
pub struct RetainedRead {
    /// The SUBACK, sent once what the subscription wrote is durable.
    pub ack: Packet,
    /// Per filter that asked for its retained messages.
    pub lookups: Vec<RetainedLookup>,
}

#[derive(Debug)]
pub struct RetainedLookup {
    pub filter: String,
    pub granted: QoS,
    /// 0 = none.
    pub subscription_id: u32,
    /// Filled by the read: the live retained messages matching `filter`.
    pub messages: Vec<Arc<Message>>,
}

impl Broker {
    /// Fill each lookup's messages on the reader pool, then call `done` (on the
    /// reader thread, or at once when the pool refuses: then with none, logged).
    pub fn read_retained(
        self: &Arc<Self>,
        mut read: RetainedRead,
        done: impl FnOnce(RetainedRead) + Send + 'static,
    ) {
        let broker = self.clone();
        let filters: Vec<String> = read.lookups.iter().map(|l| l.filter.clone()).collect();
        self.store.reader().submit(
            move |db| {
                Ok(filters
                    .iter()
                    .map(|f| broker.retained_for(db, f))
                    .collect::<Vec<_>>())
            },
            move |found| {
                match found {
                    Ok(found) => {
                        for (lookup, messages) in read.lookups.iter_mut().zip(found) {
                            lookup.messages = messages;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read retained messages"),
                }
                done(read)
            },
        );
    }

    /// Retained messages for a new subscription to `filter`, live ones only. Runs on
    /// a reader thread.
    pub fn retained_for(&self, db: &ReadDb<'_>, filter: &str) -> Vec<Arc<Message>> {
        let now = self.now_ms();
        let read = |topic: String| -> Option<Arc<Message>> {
            if let Some(msg) = self.retained.pending(&topic) {
                return (!msg.is_expired(now)).then_some(msg);
            }
            match read::retained(db, topic.as_bytes()) {
                Ok(Some(stored)) if !stored.is_expired(now) => {
                    Some(Arc::new(Message::from_stored(stored)))
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(topic, error = %e, "cannot read retained message");
                    None
                }
            }
        };
        self.retained
            .matching(filter)
            .into_iter()
            .filter_map(read)
            .collect()
    }
}
