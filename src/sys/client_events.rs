//! `$SYS/brokers/<node>/clients/<client id>/connected | disconnected`, from the
//! `client.connected` and `client.disconnected` hooks (registered as `sys`). The
//! hooks build the JSON payload and queue it for the `$SYS` task; they never publish
//! from the client's connection.

use std::sync::Arc;

use serde::Serialize;

use super::{SysEvent, SysQueue};
use crate::broker::Broker;
use crate::codec::ProtocolVersion;
use crate::hooks::{ClientInfo, ConnectedInfo, DisconnectReason, Hook, HookPoint};

/// The hooks' name (`emqx_ctl` and plugins see it).
pub const HOOK_NAME: &str = "sys";
/// After everything else that watches a connection: `$SYS` reports what happened.
const PRIORITY: i32 = -100;

/// The `connected` payload, with EMQX's field names.
#[derive(Debug, Serialize)]
pub struct Connected<'a> {
    pub clientid: &'a str,
    pub username: Option<&'a str>,
    pub ipaddress: String,
    /// The CONNACK's reason (0: accepted; refused clients never connect).
    pub connack: u8,
    /// Unix ms.
    pub ts: u64,
    pub proto_ver: u8,
    pub proto_name: &'static str,
    pub clean_start: bool,
    pub keepalive: u16,
}

/// The `disconnected` payload.
#[derive(Debug, Serialize)]
pub struct Disconnected<'a> {
    pub clientid: &'a str,
    pub username: Option<&'a str>,
    /// `normal`, `takeovered`, `kicked`, ... (`DisconnectReason::as_str`).
    pub reason: &'static str,
    pub ts: u64,
}

fn proto_name(v: ProtocolVersion) -> &'static str {
    match v {
        ProtocolVersion::V3_1 => "MQIsdp",
        _ => "MQTT",
    }
}

pub fn connected_json(info: &ClientInfo, ev: &ConnectedInfo) -> String {
    let payload = Connected {
        clientid: &info.client_id,
        username: info.username.as_deref(),
        ipaddress: info.peer.ip().to_string(),
        connack: 0,
        ts: ev.connected_at_ms,
        proto_ver: info.protocol.level(),
        proto_name: proto_name(info.protocol),
        clean_start: ev.clean_start,
        keepalive: ev.keepalive_s,
    };
    serde_json::to_string(&payload).unwrap_or_default()
}

pub fn disconnected_json(info: &ClientInfo, reason: DisconnectReason, at_ms: u64) -> String {
    let payload = Disconnected {
        clientid: &info.client_id,
        username: info.username.as_deref(),
        reason: reason.as_str(),
        ts: at_ms,
    };
    serde_json::to_string(&payload).unwrap_or_default()
}

fn event(info: &ClientInfo, what: &str, json: String) -> SysEvent {
    SysEvent {
        suffix: format!("clients/{}/{what}", info.client_id),
        payload: json.into(),
        retain: false,
    }
}

pub fn register(broker: &Arc<Broker>, queue: SysQueue) {
    let on_connect = queue.clone();
    let added = broker.hooks.add(
        HOOK_NAME,
        PRIORITY,
        Hook::connected(move |info, ev| {
            on_connect.send(event(info, "connected", connected_json(info, ev)));
        }),
    );
    let added = added.and_then(|_| {
        broker.hooks.add(
            HOOK_NAME,
            PRIORITY,
            Hook::disconnected(move |info, reason, at_ms| {
                queue.send(event(
                    info,
                    "disconnected",
                    disconnected_json(info, reason, at_ms),
                ));
            }),
        )
    });
    if let Err(e) = added {
        tracing::error!(error = %e, "cannot register the $SYS client event hooks");
    }
}

pub fn unregister(broker: &Broker) {
    broker.hooks.remove(HookPoint::ClientConnected, HOOK_NAME);
    broker
        .hooks
        .remove(HookPoint::ClientDisconnected, HOOK_NAME);
}
