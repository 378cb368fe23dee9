//! The chain's rules, checked without sockets: `chain` for what each point decides
//! (allow/deny/ignore, rewrite/stop/drop, notifications, async answers, the default
//! when nothing is registered), `registry` for registration (priority order, names,
//! removal, registration while other threads call hooks) and a measurement of the
//! fast path (printed, never asserted: timing depends on the machine).

mod chain;
mod registry;

use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::*;
use crate::codec::{ProtocolVersion, QoS};

pub(super) fn client(id: &str) -> Arc<ClientInfo> {
    let mut info = ClientInfo::new(
        Arc::from(id),
        "127.0.0.1:40000".parse().unwrap(),
        ProtocolVersion::V3_1_1,
        Arc::from("external"),
        Arc::from("external"),
    );
    info.username = Some(Arc::from("u1"));
    Arc::new(info)
}

pub(super) fn creds(password: &'static [u8]) -> Arc<Credentials> {
    Arc::new(Credentials {
        password: Some(Bytes::from_static(password)),
        ..Credentials::default()
    })
}

pub(super) fn msg(topic: &'static str) -> Message {
    Message {
        topic: Bytes::from_static(topic.as_bytes()),
        payload: Bytes::from_static(b"p"),
        qos: QoS::AtLeastOnce,
        retain: false,
        from: Arc::from("pub"),
        publish_ms: 1,
        expiry_ms: 0,
        properties: Default::default(),
    }
}

pub(super) const ANON_ALLOW: AuthVerdict = AuthVerdict::Allow { superuser: false };

/// A notification hook that appends `name` to `log` when it runs.
pub(super) fn logger(log: &Arc<Mutex<Vec<&'static str>>>, name: &'static str) -> Hook {
    let log = log.clone();
    Hook::unsubscribed(move |_, _| log.lock().unwrap().push(name))
}
