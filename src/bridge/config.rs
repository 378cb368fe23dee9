//! `bridge.mqtt.<name>.*` settings (etc/plugins/emqx_bridge_mqtt.conf), read from
//! `(key, value, origin)` triples so the plugin framework's generic home for plugin
//! settings can hand them over unchanged. Every error names the origin and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::codec::{ProtocolVersion, QoS};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{origin}: {key} = {value:?}: {why}")]
pub struct BridgeConfigError {
    pub origin: String,
    pub key: String,
    pub value: String,
    pub why: String,
}

/// One setting as read from a file: key, value, and where it came from (`file:line`).
#[derive(Debug, Clone)]
pub struct Setting {
    pub key: String,
    pub value: String,
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// host:port: an MQTT bridge.
    Mqtt(String),
    /// name@host: an RPC bridge to another Quay node (`rpc.rs`).
    Rpc(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConfig {
    pub name: String,
    pub address: Address,
    pub proto_ver: ProtocolVersion,
    pub client_id: String,
    pub clean_start: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub ssl: bool,
    pub tls: TlsSettings,
    pub keepalive: Duration,
    pub forwards: Vec<String>,
    pub mountpoint: String,
    pub subscriptions: Vec<(String, QoS)>,
    pub receive_mountpoint: String,
    pub reconnect_interval: Duration,
    pub retry_interval: Duration,
    pub max_inflight_batches: usize,
    pub batch_count_limit: usize,
    pub batch_bytes_limit: u64,
    pub replayq_dir: Option<PathBuf>,
    pub replayq_seg_bytes: u64,
    pub max_total_size: u64,
    /// `queue.durable` (ours): off trades the ack-after-fsync promise for speed.
    pub durable: bool,
    pub auto_start: bool,
}

/// `cacertfile`, `certfile`, `keyfile`, `ciphers`, `psk_ciphers`, `psk_identity`,
/// `tls_versions` (used when `ssl = on`); paths resolved against the release root.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TlsSettings {
    pub cacertfile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub ciphers: Vec<String>,
    pub psk_ciphers: Vec<String>,
    /// `psk_identity` (ours): the identity sent, keyed in the PSK file. Not set: the
    /// key is the one of the remote's identity hint, as EMQX 4 does
    /// (`transport/psk_client.rs`).
    pub psk_identity: Option<String>,
    pub tls_versions: Vec<String>,
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect()
}

impl BridgeConfig {
    fn defaults(name: &str) -> BridgeConfig {
        BridgeConfig {
            name: name.to_string(),
            address: Address::Mqtt(String::new()),
            proto_ver: ProtocolVersion::V3_1_1,
            client_id: format!("bridge_{name}"),
            clean_start: true,
            username: None,
            password: None,
            ssl: false,
            tls: TlsSettings {
                tls_versions: vec!["tlsv1.3".into(), "tlsv1.2".into()],
                ..TlsSettings::default()
            },
            keepalive: Duration::from_secs(60),
            forwards: Vec::new(),
            mountpoint: String::new(),
            subscriptions: Vec::new(),
            receive_mountpoint: String::new(),
            reconnect_interval: Duration::from_secs(30),
            retry_interval: Duration::from_secs(20),
            max_inflight_batches: 32,
            batch_count_limit: 32,
            batch_bytes_limit: 1 << 20,
            replayq_dir: None,
            replayq_seg_bytes: 10 << 20,
            max_total_size: 5 << 30,
            durable: true,
            auto_start: true,
        }
    }
}

fn err(s: &Setting, why: impl Into<String>) -> BridgeConfigError {
    BridgeConfigError {
        origin: s.origin.clone(),
        key: s.key.clone(),
        value: s.value.clone(),
        why: why.into(),
    }
}

pub fn duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "" | "s" => n * 1000,
        "m" => n * 60_000,
        "h" => n * 3_600_000,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

pub fn size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn boolean(s: &Setting) -> Result<bool, BridgeConfigError> {
    match s.value.as_str() {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(err(s, "expected on | off | true | false")),
    }
}

/// Every `bridge.mqtt.*` setting into bridges, by name. `release_root` resolves a
/// relative `replayq_dir`. Keys of no bridge setting are errors.
pub fn parse(
    settings: &[Setting],
    release_root: &Path,
) -> Result<Vec<BridgeConfig>, BridgeConfigError> {
    let mut bridges: BTreeMap<String, BridgeConfig> = BTreeMap::new();
    let mut subs: BTreeMap<(String, u32), (Option<String>, QoS)> = BTreeMap::new();
    for s in settings {
        let Some(rest) = s.key.strip_prefix("bridge.mqtt.") else {
            return Err(err(s, "not a bridge.mqtt.<name>.<key> setting"));
        };
        let Some((name, key)) = rest.split_once('.') else {
            return Err(err(s, "expected bridge.mqtt.<name>.<key>"));
        };
        let b = bridges
            .entry(name.to_string())
            .or_insert_with(|| BridgeConfig::defaults(name));
        let v = s.value.as_str();
        let dur = || duration(v).ok_or_else(|| err(s, "expected a duration like 30s"));
        let sz = || size(v).ok_or_else(|| err(s, "expected a size like 10MB"));
        let count = || {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n > 0 && *n <= 65_535)
                .ok_or_else(|| err(s, "expected an integer 1..65535"))
        };
        match key {
            "address" => {
                b.address = if v.contains('@') {
                    Address::Rpc(v.to_string())
                } else if v
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok())
                {
                    Address::Mqtt(v.to_string())
                } else {
                    return Err(err(
                        s,
                        "expected host:port (MQTT bridge) or name@host (RPC bridge)",
                    ));
                }
            }
            "proto_ver" => {
                b.proto_ver = match v {
                    "mqttv3" => ProtocolVersion::V3_1,
                    "mqttv4" => ProtocolVersion::V3_1_1,
                    "mqttv5" => ProtocolVersion::V5,
                    _ => return Err(err(s, "expected mqttv3 | mqttv4 | mqttv5")),
                }
            }
            "client_id" => b.client_id = v.to_string(),
            "clean_start" => b.clean_start = boolean(s)?,
            "username" => b.username = Some(v.to_string()),
            "password" => b.password = Some(v.to_string()),
            "ssl" => b.ssl = boolean(s)?,
            "cacertfile" => b.tls.cacertfile = Some(release_root.join(v)),
            "certfile" => b.tls.certfile = Some(release_root.join(v)),
            "keyfile" => b.tls.keyfile = Some(release_root.join(v)),
            "ciphers" => b.tls.ciphers = list(v),
            "psk_ciphers" => b.tls.psk_ciphers = list(v),
            "psk_identity" => {
                let max = crate::transport::psk_file::MAX_IDENTITY_LEN;
                if v.is_empty() || v.len() > max {
                    return Err(err(s, format!("expected an identity of 1 to {max} bytes")));
                }
                b.tls.psk_identity = Some(v.to_string());
            }
            "tls_versions" => b.tls.tls_versions = list(v),
            "keepalive" => b.keepalive = dur()?,
            "forwards" => {
                b.forwards = list(v);
                if let Some(bad) = b
                    .forwards
                    .iter()
                    .find(|f| crate::topic::validate_filter(f, 0).is_err())
                {
                    return Err(err(s, format!("{bad:?} is not a topic filter")));
                }
            }
            "mountpoint" => b.mountpoint = v.to_string(),
            "receive_mountpoint" => b.receive_mountpoint = v.to_string(),
            "reconnect_interval" => b.reconnect_interval = dur()?,
            "retry_interval" => b.retry_interval = dur()?,
            "max_inflight_batches" => b.max_inflight_batches = count()?,
            "queue.batch_count_limit" => b.batch_count_limit = count()?,
            "queue.batch_bytes_limit" => b.batch_bytes_limit = sz()?,
            "queue.replayq_dir" => {
                b.replayq_dir = (!v.is_empty()).then(|| release_root.join(v));
            }
            "queue.replayq_seg_bytes" => b.replayq_seg_bytes = sz()?,
            "queue.max_total_size" => b.max_total_size = sz()?,
            "queue.durable" => b.durable = boolean(s)?,
            "start_type" => {
                b.auto_start = match v {
                    "auto" => true,
                    "manual" => false,
                    _ => return Err(err(s, "expected auto | manual")),
                }
            }
            _ => {
                let sub = key
                    .strip_prefix("subscription.")
                    .and_then(|r| r.split_once('.'))
                    .and_then(|(n, f)| n.parse::<u32>().ok().map(|n| (n, f)));
                match sub {
                    Some((n, "topic")) => {
                        subs.entry((name.to_string(), n))
                            .or_insert((None, QoS::AtLeastOnce))
                            .0 = Some(v.to_string())
                    }
                    Some((n, "qos")) => {
                        let q = v
                            .parse::<u8>()
                            .ok()
                            .and_then(QoS::from_u8)
                            .ok_or_else(|| err(s, "expected 0, 1 or 2"))?;
                        subs.entry((name.to_string(), n))
                            .or_insert((None, QoS::AtLeastOnce))
                            .1 = q
                    }
                    _ => return Err(err(s, "unknown bridge setting")),
                }
            }
        }
    }
    for ((name, _), (topic, qos)) in subs {
        if let (Some(b), Some(t)) = (bridges.get_mut(&name), topic) {
            b.subscriptions.push((t, qos));
        }
    }
    for b in bridges.values() {
        let whole = |why: String| BridgeConfigError {
            origin: "etc/plugins/emqx_bridge_mqtt.conf".into(),
            key: format!("bridge.mqtt.{}", b.name),
            value: String::new(),
            why,
        };
        if b.address == Address::Mqtt(String::new()) {
            return Err(whole("no address set".into()));
        }
        if !b.tls.ciphers.is_empty() && !b.tls.psk_ciphers.is_empty() {
            return Err(whole(
                "ciphers and psk_ciphers cannot be set at the same time".into(),
            ));
        }
        if b.tls.psk_identity.is_some() && b.tls.psk_ciphers.is_empty() {
            return Err(whole("psk_identity is set but psk_ciphers is not".into()));
        }
        if let Some((t, _)) = b
            .subscriptions
            .iter()
            .find(|(t, _)| crate::topic::validate_filter(t, 0).is_err())
        {
            return Err(whole(format!("subscription {t:?} is not a topic filter")));
        }
    }
    Ok(bridges.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(k: &str, v: &str) -> Setting {
        Setting {
            key: k.into(),
            value: v.into(),
            origin: "emqx_bridge_mqtt.conf:7".into(),
        }
    }

    #[test]
    fn the_guides_example_parses() {
        let b = parse(
            &[
                s("bridge.mqtt.aws.address", "127.0.0.1:1883"),
                s("bridge.mqtt.aws.proto_ver", "mqttv5"),
                s("bridge.mqtt.aws.forwards", "sensor1/#,sensor2/#"),
                s("bridge.mqtt.aws.mountpoint", "bridge/emqx2/${node}/"),
                s("bridge.mqtt.aws.subscription.2.topic", "cmd/topic2"),
                s("bridge.mqtt.aws.subscription.1.topic", "cmd/topic1"),
                s("bridge.mqtt.aws.subscription.1.qos", "2"),
                s("bridge.mqtt.aws.queue.replayq_dir", "data/q/"),
                s("bridge.mqtt.aws.queue.replayq_seg_bytes", "10MB"),
                s("bridge.mqtt.aws.reconnect_interval", "5s"),
            ],
            Path::new("/opt/emqx"),
        )
        .unwrap();
        assert_eq!(b.len(), 1);
        let b = &b[0];
        assert_eq!(b.address, Address::Mqtt("127.0.0.1:1883".into()));
        assert_eq!(b.proto_ver, ProtocolVersion::V5);
        assert_eq!(b.forwards, vec!["sensor1/#", "sensor2/#"]);
        assert_eq!(
            b.subscriptions,
            vec![
                ("cmd/topic1".into(), QoS::ExactlyOnce),
                ("cmd/topic2".into(), QoS::AtLeastOnce)
            ]
        );
        assert_eq!(b.replayq_dir, Some(PathBuf::from("/opt/emqx/data/q/")));
        assert_eq!(b.replayq_seg_bytes, 10 << 20);
        assert_eq!(b.reconnect_interval, Duration::from_secs(5));
    }

    #[test]
    fn a_bad_value_names_its_origin_and_key() {
        let e = parse(&[s("bridge.mqtt.aws.keepalive", "soon")], Path::new("/")).unwrap_err();
        assert_eq!(e.to_string(), "emqx_bridge_mqtt.conf:7: bridge.mqtt.aws.keepalive = \"soon\": expected a duration like 30s");
        assert!(parse(&[s("bridge.mqtt.aws.bogus", "1")], Path::new("/")).is_err());
        assert!(parse(&[s("bridge.mqtt.aws.address", "nohost")], Path::new("/")).is_err());
    }

    #[test]
    fn psk_ciphers_and_psk_identity() {
        let b = parse(
            &[
                s("bridge.mqtt.aws.address", "127.0.0.1:8883"),
                s("bridge.mqtt.aws.ssl", "on"),
                s(
                    "bridge.mqtt.aws.psk_ciphers",
                    "PSK-AES128-CBC-SHA, PSK-AES256-GCM-SHA384",
                ),
                s("bridge.mqtt.aws.psk_identity", "edge-7"),
                s("bridge.mqtt.aws.tls_versions", "tlsv1.3,tlsv1.2"),
            ],
            Path::new("/"),
        )
        .unwrap();
        let tls = &b[0].tls;
        assert_eq!(
            tls.psk_ciphers,
            vec!["PSK-AES128-CBC-SHA", "PSK-AES256-GCM-SHA384"]
        );
        assert_eq!(tls.psk_identity.as_deref(), Some("edge-7"));
        // Not set: None (the remote's hint chooses the key).
        let b = parse(
            &[
                s("bridge.mqtt.aws.address", "127.0.0.1:8883"),
                s("bridge.mqtt.aws.psk_ciphers", "PSK-AES128-CBC-SHA"),
            ],
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(b[0].tls.psk_identity, None);
    }

    #[test]
    fn a_bad_psk_identity_is_refused_naming_the_key() {
        let e = parse(
            &[
                s("bridge.mqtt.aws.address", "127.0.0.1:8883"),
                s("bridge.mqtt.aws.psk_ciphers", "PSK-AES128-CBC-SHA"),
                s("bridge.mqtt.aws.psk_identity", &"x".repeat(257)),
            ],
            Path::new("/"),
        )
        .unwrap_err();
        assert_eq!(e.key, "bridge.mqtt.aws.psk_identity");
        assert!(e.why.contains("1 to 256 bytes"), "{e}");
        let e = parse(
            &[
                s("bridge.mqtt.aws.address", "127.0.0.1:8883"),
                s("bridge.mqtt.aws.psk_identity", "edge-7"),
            ],
            Path::new("/"),
        )
        .unwrap_err();
        assert_eq!(e.why, "psk_identity is set but psk_ciphers is not");
        let e = parse(
            &[
                s("bridge.mqtt.aws.address", "127.0.0.1:8883"),
                s("bridge.mqtt.aws.psk_ciphers", "PSK-AES128-CBC-SHA"),
                s("bridge.mqtt.aws.ciphers", "ECDHE-RSA-AES128-GCM-SHA256"),
            ],
            Path::new("/"),
        )
        .unwrap_err();
        assert!(e.why.contains("cannot be set at the same time"), "{e}");
    }
}
