//! CONNECT's decisions: validation, Session Expiry, the CONNACK's description of the
//! broker's limits; and the reverse at the end (detach, will, session end).

use quay_storage::{Op, SessionRecord};

use super::{Channel, Now};
use crate::broker::registry::SessionState;
use crate::broker::Broker;
use crate::codec::{Connect, Properties, ProtocolVersion, QoS, ReasonCode};
use crate::config::ZoneConfig;
use crate::message::Message;
use crate::topic;

/// The v5 CONNACK properties that describe what the broker supports and allows.
pub(crate) fn describe_limits(broker: &Broker, zone: &ZoneConfig, ack: &mut Properties) {
    let mqtt = &broker.config.mqtt;
    // Our Receive Maximum: enforced on inbound QoS 1/2 (see `on_publish`).
    ack.receive_maximum = Some(zone.max_inflight);
    if mqtt.max_qos_allowed < 2 {
        ack.maximum_qos = Some(mqtt.max_qos_allowed);
    }
    if !mqtt.retain_available {
        ack.retain_available = Some(0);
    }
    ack.maximum_packet_size = Some(mqtt.max_packet_size);
    if mqtt.max_topic_alias > 0 {
        ack.topic_alias_maximum = Some(mqtt.max_topic_alias);
    }
    if !mqtt.wildcard_subscription {
        ack.wildcard_subscription_available = Some(0);
    }
    ack.subscription_identifier_available = Some(1);
    // Shared subscriptions arrive with their own issue.
    ack.shared_subscription_available = Some(0);
}

/// Checks that refuse the connection with a CONNACK reason.
pub(crate) fn validate(
    broker: &Broker,
    zone: &ZoneConfig,
    connect: &mut Connect,
) -> Result<(), ReasonCode> {
    let mqtt = &broker.config.mqtt;
    let version = connect.protocol;
    if zone.use_username_as_clientid {
        if let Some(user) = &connect.username {
            connect.client_id = user.clone();
        }
    }
    if connect.client_id.is_empty() && version != ProtocolVersion::V5 && !connect.clean_start {
        // 3.1.1 §3.1.3-8: an empty id needs CleanSession=1; 3.1 has no empty ids.
        return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    }
    if connect.client_id.is_empty() && version == ProtocolVersion::V3_1 {
        return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    }
    if connect.client_id.len() > mqtt.max_clientid_len {
        return Err(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID);
    }
    if connect.properties.receive_maximum == Some(0)
        || connect.properties.maximum_packet_size == Some(0)
    {
        return Err(ReasonCode::PROTOCOL_ERROR);
    }
    if let Some(method) = &connect.properties.authentication_method {
        // No enhanced authentication (AUTH exchanges) is supported; a client asking
        // for one must not be let in as if it had authenticated (MQTT 5 §4.12).
        tracing::info!(client_id = %connect.client_id, method, "unsupported Authentication Method");
        return Err(ReasonCode::BAD_AUTHENTICATION_METHOD);
    }
    if let Some(will) = &connect.will {
        let topic = std::str::from_utf8(&will.topic).unwrap_or("");
        if topic::validate_name(topic, mqtt.max_topic_levels).is_err() {
            return Err(ReasonCode::TOPIC_NAME_INVALID);
        }
        if let Some(response_topic) = &will.properties.response_topic {
            // A will Response Topic must be a Topic Name too [MQTT-3.3.2-14];
            // Mosquitto refuses the CONNECT as a protocol error, so do we.
            if topic::validate_name(response_topic, 0).is_err() {
                tracing::info!(client_id = %connect.client_id, response_topic, "invalid will Response Topic");
                return Err(ReasonCode::PROTOCOL_ERROR);
            }
        }
        if will.qos as u8 > mqtt.max_qos_allowed {
            return Err(ReasonCode::QOS_NOT_SUPPORTED);
        }
        if will.retain && !mqtt.retain_available {
            return Err(ReasonCode::RETAIN_NOT_SUPPORTED);
        }
    }
    Ok(())
}

/// Session Expiry Interval in seconds: v3 clean = 0, v3 persistent = the zone's;
/// v5 as asked, capped at the zone's (told back in CONNACK when capped).
pub(crate) fn session_expiry(connect: &Connect, zone: &ZoneConfig, ack: &mut Properties) -> u32 {
    let max = max_session_expiry_s(zone);
    if !connect.protocol.is_v5() {
        return if connect.clean_start { 0 } else { max };
    }
    let asked = connect.properties.session_expiry_interval.unwrap_or(0);
    if asked > max {
        ack.session_expiry_interval = Some(max);
        return max;
    }
    asked
}

/// Whether a CONNECT resumes the session its client id has (else a new one starts and
/// the old one, if any, is discarded): not with Clean Start, and only a session that
/// is still registered, stored and not held by a connection (a takeover has detached
/// the one before by now).
pub(crate) fn may_resume(clean_start: bool, st: &SessionState) -> bool {
    !clean_start && st.live && st.meta.persistent && st.conn.is_none()
}

/// The longest Session Expiry Interval the zone allows, in seconds.
pub(crate) fn max_session_expiry_s(zone: &ZoneConfig) -> u32 {
    zone.session_expiry_interval.as_secs().min(u32::MAX as u64) as u32
}

impl Channel {
    /// Give the session back: offline (persistent) or gone; publish the will if due.
    pub fn detach(&mut self, publish_will: bool, now: Now) {
        let dup_below = self.outbound.dup_below();
        let writer = self.broker.store.writer();
        let client = &self.client_id;
        let conn_id = self.conn_id;
        // Everything below happens under the session's lock and only if this
        // connection still owns the session: a connection that was taken over (or
        // whose session ended) never writes session state.
        let ours = |st: &SessionState| st.conn.as_ref().is_some_and(|l| l.conn_id == conn_id);
        // The session ends with this connection: clean, or v5 DISCONNECT set its
        // expiry to 0.
        let ended = self.broker.registry.remove_if(
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
                self.broker.registry.detach(&mut st);
                st.offline_since = Some(now.at);
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
            from: self.client_id.clone(),
            publish_ms: now.ms,
            expiry_ms: will
                .properties
                .message_expiry_interval
                .map(|s| now.ms + s as u64 * 1000)
                .unwrap_or(0),
            properties: props,
        };
        if delay_s == 0 {
            self.broker.publish(msg, Vec::new(), Box::new(|_| {}));
            return;
        }
        // Stored: a reconnect within the delay cancels it, the end of the session
        // publishes it at once, a restart keeps it (see `broker::wills`).
        let due_ms = now.ms + u64::from(delay_s) * 1000;
        self.broker.delay_will(self.client_id.clone(), due_ms, msg);
    }
}
