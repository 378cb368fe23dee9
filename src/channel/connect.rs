//! CONNECT's checks, made before any session is touched: validation, the client id
//! (assigned when empty), keepalive, Session Expiry, and the CONNACK: its properties
//! fitted to the client's Maximum Packet Size, or the refusal that says why. What
//! CONNECT then does to the session is decided in `session_open`.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;

use super::fit::{self, Fit};
use super::keepalive::{self, Keepalive};
use crate::broker::Broker;
use crate::codec::{self, ConnAck, Connect, Packet, Properties, ProtocolVersion, ReasonCode};
use crate::config::ZoneConfig;
use crate::connection::enhanced_auth::Enhanced;
use crate::message::ClientId;
use crate::metrics::Metrics;
use crate::topic;

/// A CONNECT that passed every check, with the CONNACK it will get.
pub(crate) struct Admission {
    /// The CONNECT, with its final client id (the username's, or assigned); its will
    /// moves into the channel.
    pub connect: Connect,
    pub client_id: ClientId,
    pub keepalive: Keepalive,
    /// Session Expiry Interval in seconds, capped at the zone's.
    pub expiry_s: u32,
    /// The CONNACK's properties, already fitted to `client_max_packet`.
    pub ack_props: Properties,
    /// The largest packet the client takes (v5 Maximum Packet Size).
    pub client_max_packet: u32,
    pub peer: SocketAddr,
}

/// What the first bytes of a connection hold: its first packet must be a CONNECT
/// [MQTT-3.1.0-1].
pub(crate) enum Preface {
    /// Not a whole packet yet.
    More,
    Connect(Box<Connect>),
    /// Not a CONNECT we take: write these bytes (may be none), then close.
    Reject(&'static [u8]),
}

/// Decode the first packet from `rbuf`, or say why the connection ends.
pub(crate) fn preface(broker: &Broker, peer: SocketAddr, rbuf: &mut BytesMut) -> Preface {
    let max_packet = broker.config.mqtt.max_packet_size as usize;
    match codec::decode_connect(rbuf, max_packet) {
        Ok(None) => Preface::More,
        Ok(Some(Packet::Connect(c))) => {
            Metrics::inc(&broker.metrics.packets_connect);
            Metrics::inc(&broker.metrics.packets_received);
            Preface::Connect(c)
        }
        Ok(Some(_)) => Preface::Reject(&[]),
        Err(e) => {
            // Counted every time, logged at most once every 10 s: a scanner must
            // not fill the log.
            static BAD: crate::logging::Throttle = crate::logging::Throttle::new();
            if let Some(skipped) = BAD.ready(crate::message::now_ms(), 10_000) {
                tracing::warn!(%peer, error = %e, not_logged_since = skipped, "bad CONNECT");
            }
            Metrics::inc(&broker.metrics.packets_malformed);
            match e {
                // A 3.1.1-shaped CONNACK with return code 1 (unacceptable protocol
                // version), which every version reads.
                codec::DecodeError::UnsupportedProtocolVersion(_) => {
                    Preface::Reject(&[0x20, 0x02, 0x00, 0x01])
                }
                _ => Preface::Reject(&[]),
            }
        }
    }
}

/// A CONNECT refused: the encoded CONNACK that says why, if one can be sent.
pub(crate) struct Refused(pub Option<BytesMut>);

/// Check `connect` and decide its CONNACK. `enhanced`: the client completed the
/// enhanced authentication its CONNECT asked for (the CONNACK says so). `fresh_id`
/// names a client that sent an empty client id (v5, or v3.1.1 with Clean Session).
pub(crate) fn admit(
    broker: &Broker,
    zone: &ZoneConfig,
    peer: SocketAddr,
    mut connect: Connect,
    enhanced: Option<&Enhanced>,
    fresh_id: impl FnOnce() -> String,
) -> Result<Admission, Refused> {
    let version = connect.protocol;
    // CONNACK too must fit the client's Maximum Packet Size [MQTT-3.1.2-24].
    let client_max_packet = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
    let refuse = |reason| refusal(peer, version, client_max_packet, reason);
    validate(broker, zone, &mut connect, enhanced).map_err(refuse)?;
    // After `validate` gave the final client id, and after an enhanced exchange
    // named the username it proved.
    let now_s = broker.now_ms() / 1000;
    let username = connect.username.as_deref();
    if let Some(kind) = broker
        .banned
        .check(&connect.client_id, username, peer.ip(), now_s)
    {
        tracing::info!(client_id = %connect.client_id, %peer, by = kind.name(), "banned client refused");
        return Err(refuse(ReasonCode::BANNED));
    }
    let keepalive = keepalive::negotiate(version, connect.keep_alive, zone).map_err(|reason| {
        tracing::info!(%peer, keep_alive = connect.keep_alive, max_keepalive = zone.max_keepalive, "keepalive above max_keepalive");
        refuse(reason)
    })?;
    let mut ack_props = Properties::default();
    if connect.client_id.is_empty() {
        connect.client_id = fresh_id();
        if version.is_v5() {
            ack_props.assigned_client_identifier = Some(connect.client_id.clone());
        }
    }
    let client_id: ClientId = crate::memory::long_lived(|| Arc::from(connect.client_id.as_str()));
    let expiry_s = session_expiry(&connect, zone, &mut ack_props);
    ack_props.server_keep_alive = keepalive.server_keep_alive;
    if let Some(e) = enhanced {
        // MQTT 5 §3.2.2.3.17-18: the method of the CONNECT, and the exchange's last data.
        ack_props.authentication_method = Some(e.method.clone());
        ack_props.authentication_data = e.data.clone();
    }
    if version.is_v5() {
        describe_limits(broker, zone, &mut ack_props);
    }
    let ack = ConnAck {
        session_present: false,
        reason: ReasonCode::Success,
        properties: ack_props,
    };
    // A CONNACK that cannot be sent must not take over or create anything.
    let ack_props = match fit::connack(ack, version, client_max_packet) {
        Fit::Send { packet, dropped } => {
            if !dropped.is_empty() {
                tracing::debug!(%client_id, max = client_max_packet, ?dropped, "CONNACK properties dropped to fit the client's Maximum Packet Size");
            }
            packet.properties
        }
        Fit::TooLarge { size } => {
            tracing::info!(%client_id, %peer, size, max = client_max_packet, "CONNACK does not fit the client's Maximum Packet Size; closing without it");
            return Err(Refused(None));
        }
    };
    Ok(Admission {
        connect,
        client_id,
        keepalive,
        expiry_s,
        ack_props,
        client_max_packet,
        peer,
    })
}

impl Admission {
    /// Refuse this client after all (authentication, or the store), with `reason`.
    pub fn refuse(&self, reason: ReasonCode) -> Refused {
        refusal(
            self.peer,
            self.connect.protocol,
            self.client_max_packet,
            reason,
        )
    }

    /// The CONNACK accepting the client.
    pub fn connack(&mut self, session_present: bool) -> Packet {
        Packet::ConnAck(ConnAck {
            session_present,
            reason: ReasonCode::Success,
            properties: std::mem::take(&mut self.ack_props),
        })
    }
}

/// Refuse a CONNECT before it was admitted (its enhanced authentication failed).
pub(crate) fn refuse_unadmitted(
    peer: SocketAddr,
    connect: &Connect,
    reason: ReasonCode,
) -> Refused {
    let client_max_packet = connect.properties.maximum_packet_size.unwrap_or(u32::MAX);
    refusal(peer, connect.protocol, client_max_packet, reason)
}

/// The CONNACK refusing a client with `reason`, within its Maximum Packet Size.
fn refusal(
    peer: SocketAddr,
    version: ProtocolVersion,
    client_max_packet: u32,
    reason: ReasonCode,
) -> Refused {
    tracing::info!(%peer, ?reason, "connection refused");
    let properties = Properties {
        reason_string: version.is_v5().then(|| reason.description().to_owned()),
        ..Properties::default()
    };
    let ack = ConnAck {
        session_present: false,
        reason,
        properties,
    };
    let Fit::Send { packet, .. } = fit::connack(ack, version, client_max_packet) else {
        tracing::info!(%peer, max = client_max_packet, "refusing CONNACK larger than the client's Maximum Packet Size; not sent");
        return Refused(None);
    };
    let mut buf = BytesMut::new();
    match codec::encode(&Packet::ConnAck(packet), version, &mut buf) {
        Ok(()) => Refused(Some(buf)),
        Err(_) => Refused(None),
    }
}

/// The v5 CONNACK properties that describe what the broker supports and allows.
fn describe_limits(broker: &Broker, zone: &ZoneConfig, ack: &mut Properties) {
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
fn validate(
    broker: &Broker,
    zone: &ZoneConfig,
    connect: &mut Connect,
    enhanced: Option<&Enhanced>,
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
        // A method no `client.enhanced_authenticate` hook served: the client must not
        // be let in as if it had authenticated (MQTT 5 §4.12).
        if enhanced.map(|e| e.method.as_str()) != Some(method.as_str()) {
            tracing::info!(client_id = %connect.client_id, method, "unsupported Authentication Method");
            return Err(ReasonCode::BAD_AUTHENTICATION_METHOD);
        }
    }
    if let Some(will) = &connect.will {
        let topic = std::str::from_utf8(&will.topic).unwrap_or("");
        if topic::validate_name(topic, mqtt.max_topic_levels).is_err() {
            return Err(ReasonCode::TOPIC_NAME_INVALID);
        }
        if crate::sys::is_sys_topic(&will.topic) {
            // `$SYS/` is the broker's: a will may not publish there either.
            tracing::info!(client_id = %connect.client_id, topic, "will to a $SYS topic; refused");
            return Err(ReasonCode::NOT_AUTHORIZED);
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
fn session_expiry(connect: &Connect, zone: &ZoneConfig, ack: &mut Properties) -> u32 {
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

/// The longest Session Expiry Interval the zone allows, in seconds.
pub(crate) fn max_session_expiry_s(zone: &ZoneConfig) -> u32 {
    zone.session_expiry_interval.as_secs().min(u32::MAX as u64) as u32
}
