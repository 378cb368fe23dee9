//! The end of a connection: give the session back (offline, or ended when it is clean
//! or its expiry is 0) and publish or schedule the will.

use quay_storage::{Op, SessionRecord};

use super::{Channel, Now};
use crate::broker::registry::{SessionState, Stamp};
use crate::codec::QoS;
use crate::message::Message;

impl Channel {
    /// Give the session back: offline (persistent) or gone; publish the will if due.
    pub fn detach(&mut self, publish_will: bool, now: Now) {
        let dup_below = self.outbound.dup_below();
        let writer = self.site.broker.store.writer();
        let client = &self.handle.client_id;
        let conn_id = self.conn_id;
        // Everything below happens under the session's lock and only if this
        // connection still owns the session: a connection that was taken over (or
        // whose session ended) never writes session state.
        let ours = |st: &SessionState| st.conn.as_ref().is_some_and(|l| l.conn_id == conn_id);
        // The session ends with this connection: clean, or v5 DISCONNECT set its
        // expiry to 0.
        let ended = self.site.broker.registry.remove_if(
            &self.handle,
            |st| ours(st) && (!st.meta.persistent || st.meta.expiry_interval_s == 0),
            |st| {
                if st.meta.persistent {
                    writer.submit_detached(vec![Op::DeleteSession {
                        client: client.clone(),
                    }]);
                }
            },
        );
        let expiry_s = {
            let mut st = self.handle.state();
            if !ended && st.live && ours(&st) {
                self.site.broker.registry.detach(&mut st);
                st.offline_since = Stamp::at(now.ms);
                st.meta.dup_below = dup_below;
                let op = Op::PutSession {
                    client: client.clone(),
                    record: SessionRecord {
                        protocol_level: self.version.level(),
                        expiry_interval_s: st.meta.expiry_interval_s,
                        disconnected_ms: now.ms,
                        dup_below,
                        zone: st.zone.name.clone(),
                        incarnation: st.meta.incarnation,
                    },
                };
                writer.submit_detached(vec![op]);
            }
            st.meta.expiry_interval_s
        };
        let Some(will) = self.will.take().filter(|_| publish_will) else {
            return;
        };
        let delay_s = will
            .properties
            .will_delay_interval
            .unwrap_or(0)
            .min(expiry_s);
        let mut props = Message::pass_through(&will.properties);
        props.user_properties = will.properties.user_properties.clone();
        let msg = Message {
            topic: will.topic.clone(),
            payload: will.payload.clone(),
            qos: will.qos.min(QoS::ExactlyOnce),
            retain: will.retain,
            from: self.handle.client_id.clone(),
            publish_ms: now.ms,
            expiry_ms: will
                .properties
                .message_expiry_interval
                .map(|s| now.ms + s as u64 * 1000)
                .unwrap_or(0),
            properties: props,
        };
        if delay_s == 0 {
            self.site.broker.publish(msg, Vec::new(), Box::new(|_| {}));
            return;
        }
        // Stored: a reconnect within the delay cancels it, the end of the session
        // publishes it at once, a restart keeps it (see `broker::wills`).
        let due_ms = now.ms + u64::from(delay_s) * 1000;
        self.site
            .broker
            .delay_will(self.handle.client_id.clone(), due_ms, msg);
    }
}
