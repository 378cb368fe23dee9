//! The key schema: which keys exist, how each one's value is read and where it lands
//! in [`Config`], and the checks across keys once everything is applied.
//!
//! Entries are applied in order (main file, plugin files, environment), so a key given
//! twice keeps its last value, as with cuttlefish. Listeners and zones exist only if
//! some key names them; everything else starts from the built-in defaults.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::access::{self, AccessRule};
use super::parse::Entry;
use super::plugin_keys::PLUGIN_SECTIONS;
use super::values;
use super::{
    default_log, default_node, resolve, AccessConfig, AclCacheConfig, AclDenyAction, CertField,
    Config, ConfigError, FsyncPolicy, ListenerConfig, LogConfig, LogLevel, LogTo, MqttConfig,
    NodeConfig, Origin, PluginsConfig, PskConfig, RetainerConfig, StorageConfig, TlsConfig,
    TlsVerify, WsConfig, ZoneConfig, MAX_PACKET_SIZE_LIMIT,
};

const SECTIONS: &str = "node.*, rpc.*, log.*, listener.tcp.*, listener.ssl.*, listener.ws.*, \
                        listener.wss.*, mqtt.*, zone.*, storage.*, retainer.*, \
                        psk.file.*, plugins.loaded_file, auth.*, bridge.*, broker.*, sysmon.*, \
                        os_mon.*, vm_mon.*, allow_anonymous, acl_nomatch, acl_file, acl_deny_action";
/// Keys of no section (EMQX 4's authentication and ACL settings).
pub(super) const TOP_LEVEL_KEYS: &[&str] = &[
    "allow_anonymous",
    "acl_nomatch",
    "acl_file",
    "acl_deny_action",
    "enable_acl_cache",
    "acl_cache_max_size",
    "acl_cache_ttl",
];
const NODE_KEYS: &[&str] = &["name", "data_dir", "cookie"];
const RPC_KEYS: &[&str] = &["tcp_server_port", "tcp_client_port"];
const LOG_KEYS: &[&str] = &[
    "to",
    "level",
    "dir",
    "file",
    "rotation",
    "rotation.size",
    "rotation.count",
];
const LISTENER_KEYS: &[&str] = &[
    "acceptors",
    "max_connections",
    "zone",
    "backlog",
    "proxy_protocol",
    "proxy_protocol_timeout",
    "access.<N>",
    "max_conn_rate",
    "mountpoint",
];
const SSL_KEYS: &[&str] = &[
    "handshake_timeout",
    "keyfile",
    "certfile",
    "cacertfile",
    "verify",
    "fail_if_no_peer_cert",
    "tls_versions",
    "ciphers",
    "peer_cert_as_username",
];
/// Keys of `listener.ssl` only (not `listener.wss`): TLS-PSK.
const PSK_LISTENER_KEYS: &[&str] = &["psk_ciphers"];
const PSK_FILE_KEYS: &[&str] = &["path", "delimiter"];
const WS_KEYS: &[&str] = &[
    "mqtt_path",
    "fail_if_no_subprotocol",
    "supported_subprotocols",
];
const TLS_VERSIONS: &[&str] = &["tlsv1.3", "tlsv1.2", "tlsv1.1", "tlsv1"];
const MQTT_KEYS: &[&str] = &[
    "max_packet_size",
    "max_clientid_len",
    "max_topic_levels",
    "max_qos_allowed",
    "max_topic_alias",
    "retain_available",
    "wildcard_subscription",
    "shared_subscription",
    "ignore_loop_deliver",
    "strict_mode",
];
const ZONE_KEYS: &[&str] = &[
    "idle_timeout",
    "hibernate_after",
    "max_inflight",
    "retry_interval",
    "max_awaiting_rel",
    "await_rel_timeout",
    "session_expiry_interval",
    "max_mqueue_len",
    "mqueue_store_qos0",
    "server_keepalive",
    "max_keepalive",
    "keepalive_backoff",
    "max_subscriptions",
    "upgrade_qos",
    "use_username_as_clientid",
    "enable_stats",
    "stall_timeout",
    "mountpoint",
];
const STORAGE_KEYS: &[&str] = &[
    "fsync",
    "batch_window",
    "batch_max",
    "block_cache_size",
    "read_threads",
];
const RETAINER_KEYS: &[&str] = &[
    "max_retained_messages",
    "max_payload_size",
    "expiry_interval",
];

/// A listener's address until its `listener.tcp.<name>` key arrives.
const UNBOUND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

/// The upper bound for `usize` fields, as the `u64` that `values::uint` takes.
const USIZE_MAX: u64 = usize::MAX as u64;

/// A listener while keys are still arriving: its address may come after its sub-keys,
/// so `config.bind` is a placeholder until `bind_origin` is set.
#[derive(Debug)]
struct ListenerDraft {
    config: ListenerConfig,
    /// Where the address was set; `None` while it has not been.
    bind_origin: Option<Origin>,
    /// Where the zone was set; `None` while it is the default for the name.
    zone_origin: Option<Origin>,
    /// The first entry that named this listener, for "no address" errors.
    first_origin: Origin,
    /// `access.N` rules by N, so they apply in N's order whatever the file order.
    access: BTreeMap<u32, AccessRule>,
}

/// The configuration being assembled; paths stay as given until [`Builder::finish`].
#[derive(Debug)]
pub(super) struct Builder {
    node: NodeConfig,
    log: LogConfig,
    /// By (proto, name): `("tcp", "external")`.
    listeners: BTreeMap<(&'static str, String), ListenerDraft>,
    mqtt: MqttConfig,
    zones: BTreeMap<String, ZoneConfig>,
    storage: StorageConfig,
    retainer: RetainerConfig,
    access: AccessConfig,
    acl_cache: AclCacheConfig,
    acl_cache_on: bool,
    psk: PskConfig,
    plugins: PluginsConfig,
    sys: super::SysConfig,
}

impl Builder {
    /// Built-in defaults for every section, no listeners and no zones.
    pub(super) fn new() -> Builder {
        let relative = Path::new("");
        Builder {
            node: default_node(relative),
            log: default_log(relative),
            listeners: BTreeMap::new(),
            mqtt: MqttConfig::default(),
            zones: BTreeMap::new(),
            storage: StorageConfig::default(),
            retainer: RetainerConfig::default(),
            access: AccessConfig::with_defaults(relative),
            acl_cache: AclCacheConfig::DEFAULT,
            acl_cache_on: true,
            psk: PskConfig::default(),
            plugins: PluginsConfig::default(),
            sys: super::SysConfig::default(),
        }
    }

    /// Sets one key. Unknown keys and malformed values are errors naming the entry.
    pub(super) fn apply(&mut self, entry: &Entry) -> Result<(), ConfigError> {
        let segments: Vec<&str> = entry.key.split('.').collect();
        match segments.as_slice() {
            ["node", field] => self.apply_node(field, entry),
            ["rpc", field] => self.apply_rpc(field, entry),
            ["log", field] => self.apply_log(field, entry),
            ["log", "rotation", field] => self.apply_log(&format!("rotation.{field}"), entry),
            ["listener", proto @ ("tcp" | "ssl" | "ws" | "wss"), name] => {
                let bind = entry.read(values::listen_addr)?;
                let draft = self.listener(proto, name, entry);
                draft.config.bind = bind;
                draft.bind_origin = Some(entry.origin.clone());
                Ok(())
            }
            ["listener", proto @ ("tcp" | "ssl" | "ws" | "wss"), name, field] => {
                self.apply_listener(proto, name, field, entry)
            }
            ["listener", proto @ ("tcp" | "ssl" | "ws" | "wss"), name, "access", n] => {
                let n: u32 = n.parse().map_err(|_| ConfigError::InvalidValue {
                    origin: entry.origin.clone(),
                    key: entry.key.clone(),
                    value: entry.value.clone(),
                    expected: "a key access.<N> with N a rule number (access.1, access.2, ...)"
                        .to_string(),
                })?;
                let rule = entry.read(access::access_rule)?;
                self.listener(proto, name, entry).access.insert(n, rule);
                Ok(())
            }
            ["mqtt", field] => self.apply_mqtt(field, entry),
            ["zone", zone, field] => self.apply_zone(zone, field, entry),
            ["storage", field] => self.apply_storage(field, entry),
            ["retainer", field] => self.apply_retainer(field, entry),
            [field] if TOP_LEVEL_KEYS.contains(field) => self.apply_access(field, entry),
            ["psk", "file", field] => self.apply_psk_file(field, entry),
            [section @ ("broker" | "sysmon" | "os_mon" | "vm_mon"), field] => {
                if self.sys.apply(section, field, entry)? {
                    return Ok(());
                }
                let (group, known) = match *section {
                    "broker" => ("broker.* keys", super::sys::BROKER_KEYS),
                    "sysmon" => ("sysmon.* keys", super::sys::SYSMON_KEYS),
                    "os_mon" => ("os_mon.* keys", super::sys::OS_MON_KEYS),
                    _ => ("vm_mon.* keys", super::sys::VM_MON_KEYS),
                };
                Err(unknown(entry, group, known))
            }
            ["plugins", "loaded_file"] => {
                self.plugins.loaded_file =
                    Some(entry.read(|v| values::non_empty(v, "a file path").map(PathBuf::from))?);
                Ok(())
            }
            [section, _, ..] if PLUGIN_SECTIONS.contains(section) => {
                self.plugins.keys.set(entry);
                Ok(())
            }
            _ => Err(unknown(entry, "known key groups", &[SECTIONS])),
        }
    }

    fn apply_node(&mut self, field: &str, entry: &Entry) -> Result<(), ConfigError> {
        let node = &mut self.node;
        match field {
            "name" => node.name = entry.read(node_name)?,
            "data_dir" => node.data_dir = entry.read(|v| dir(v, "a directory"))?,
            "cookie" => node.cookie = entry.read(|v| values::non_empty(v, "a cookie"))?,
            _ => return Err(unknown(entry, "node.* keys", NODE_KEYS)),
        }
        Ok(())
    }

    fn apply_rpc(&mut self, field: &str, entry: &Entry) -> Result<(), ConfigError> {
        let node = &mut self.node;
        match field {
            "tcp_server_port" => {
                node.rpc_server_port = Some(entry.read(|v| values::uint(v, 1, 65_535))?)
            }
            "tcp_client_port" => {
                node.rpc_client_port = entry.read(|v| values::uint(v, 1, 65_535))?
            }
            _ => return Err(unknown(entry, "rpc.* keys", RPC_KEYS)),
        }
        Ok(())
    }

    fn apply_access(&mut self, field: &str, entry: &Entry) -> Result<(), ConfigError> {
        let access = &mut self.access;
        match field {
            "allow_anonymous" => access.allow_anonymous = entry.read(values::boolean)?,
            "acl_nomatch" => {
                access.acl_nomatch_allow = entry.read(|v| match v {
                    "allow" => Ok(true),
                    "deny" => Ok(false),
                    _ => Err("allow or deny".to_string()),
                })?
            }
            "acl_file" => {
                access.acl_file =
                    entry.read(|v| values::non_empty(v, "a file path").map(PathBuf::from))?
            }
            "acl_deny_action" => {
                access.acl_deny_action = entry.read(|v| match v {
                    "ignore" => Ok(AclDenyAction::Ignore),
                    "disconnect" => Ok(AclDenyAction::Disconnect),
                    _ => Err("ignore or disconnect".to_string()),
                })?
            }
            // `enable_acl_cache = off` wins whatever order the three come in.
            "enable_acl_cache" => self.acl_cache_on = entry.read(values::boolean)?,
            "acl_cache_max_size" => self.acl_cache.max_size = count(entry, 1)?,
            "acl_cache_ttl" => self.acl_cache.ttl = entry.read(values::duration)?,
            _ => return Err(unknown(entry, "top-level keys", TOP_LEVEL_KEYS)),
        }
        Ok(())
    }

    fn apply_log(&mut self, field: &str, entry: &Entry) -> Result<(), ConfigError> {
        let log = &mut self.log;
        match field {
            "to" => log.to = entry.read(log_to)?,
            "level" => log.level = entry.read(log_level)?,
            "dir" => log.dir = entry.read(|v| dir(v, "a directory"))?,
            "file" => log.file = entry.read(|v| values::non_empty(v, "a file name"))?,
            "rotation" => log.rotation = entry.read(values::boolean)?,
            "rotation.size" => {
                log.rotation_size = entry.read(|v| match values::size(v)? {
                    0 => Err("a size above 0, like 10MB".to_string()),
                    n => Ok(n),
                })?
            }
            "rotation.count" => log.rotation_count = entry.read(|v| values::uint(v, 1, 1000))?,
            _ => return Err(unknown(entry, "log.* keys", LOG_KEYS)),
        }
        Ok(())
    }

    fn apply_listener(
        &mut self,
        proto: &str,
        name: &str,
        field: &str,
        entry: &Entry,
    ) -> Result<(), ConfigError> {
        match field {
            "acceptors" => {
                let acceptors = count(entry, 1)?;
                self.listener(proto, name, entry).config.acceptors = acceptors;
            }
            "max_connections" => {
                let max = count(entry, 1)?;
                self.listener(proto, name, entry).config.max_connections = max;
            }
            "zone" => {
                let zone = entry.read(|v| values::non_empty(v, "a zone name"))?;
                let draft = self.listener(proto, name, entry);
                draft.config.zone = zone;
                draft.zone_origin = Some(entry.origin.clone());
            }
            "backlog" => {
                let backlog = entry.read(|v| values::uint(v, 1, u32::MAX.into()))?;
                self.listener(proto, name, entry).config.backlog = backlog;
            }
            "proxy_protocol" => {
                self.listener(proto, name, entry).config.proxy_protocol = flag(entry)?;
            }
            "proxy_protocol_timeout" => {
                let timeout = duration(entry)?;
                self.listener(proto, name, entry)
                    .config
                    .proxy_protocol_timeout = timeout;
            }
            "max_conn_rate" => {
                // 0 (or absent): no limit.
                let rate = entry.read(|v| values::uint(v, 0, u32::MAX.into()))?;
                let rate = Some(rate).filter(|&r| r > 0);
                self.listener(proto, name, entry).config.max_conn_rate = rate;
            }
            "mountpoint" => {
                let mountpoint = mountpoint(entry)?;
                self.listener(proto, name, entry).config.mountpoint = mountpoint;
            }
            _ => {
                let config = &mut self.listener(proto, name, entry).config;
                match (&mut config.tls, &mut config.ws) {
                    (Some(tls), _) if SSL_KEYS.contains(&field) => apply_tls(tls, field, entry)?,
                    (Some(tls), None) if PSK_LISTENER_KEYS.contains(&field) => {
                        tls.psk_ciphers = entry.read(|v| match comma_list(v) {
                            names if names.is_empty() => {
                                Err("at least one PSK cipher suite name".to_string())
                            }
                            names => Ok(names),
                        })?
                    }
                    (_, Some(ws)) if WS_KEYS.contains(&field) => apply_ws(ws, field, entry)?,
                    (tls, ws) => {
                        let mut keys = LISTENER_KEYS.to_vec();
                        if tls.is_some() {
                            keys.extend(SSL_KEYS);
                        }
                        if tls.is_some() && ws.is_none() {
                            keys.extend(PSK_LISTENER_KEYS);
                        }
                        if ws.is_some() {
                            keys.extend(WS_KEYS);
                        }
                        let what = format!("listener.{proto}.<name>.* keys");
                        return Err(unknown(entry, &what, &keys));
                    }
                }
            }
        }
        Ok(())
    }

    /// The draft for listener `proto`/`name`, created with default sub-key values.
    fn listener(&mut self, proto: &str, name: &str, entry: &Entry) -> &mut ListenerDraft {
        let tls = || Some(TlsConfig::with_defaults());
        let ws = || Some(WsConfig::with_defaults());
        let (proto, tls, ws) = match proto {
            "ssl" => ("ssl", tls(), None),
            "ws" => ("ws", None, ws()),
            "wss" => ("wss", tls(), ws()),
            _ => ("tcp", None, None),
        };
        self.listeners
            .entry((proto, name.to_string()))
            .or_insert_with(|| ListenerDraft {
                config: ListenerConfig::with_defaults(name, UNBOUND, tls, ws),
                bind_origin: None,
                zone_origin: None,
                first_origin: entry.origin.clone(),
                access: BTreeMap::new(),
            })
    }

    fn apply_mqtt(&mut self, field: &str, entry: &Entry) -> Result<(), ConfigError> {
        let mqtt = &mut self.mqtt;
        match field {
            "max_packet_size" => mqtt.max_packet_size = entry.read(packet_size)?,
            "max_clientid_len" => mqtt.max_clientid_len = count(entry, 1)?,
            "max_topic_levels" => mqtt.max_topic_levels = count(entry, 0)?,
            "max_qos_allowed" => mqtt.max_qos_allowed = entry.read(|v| values::uint(v, 0, 2))?,
            "max_topic_alias" => mqtt.max_topic_alias = short(entry, 0)?,
            "retain_available" => mqtt.retain_available = flag(entry)?,
            "wildcard_subscription" => mqtt.wildcard_subscription = flag(entry)?,
            "shared_subscription" => mqtt.shared_subscription = flag(entry)?,
            "ignore_loop_deliver" => mqtt.ignore_loop_deliver = flag(entry)?,
            "strict_mode" => mqtt.strict_mode = flag(entry)?,
            _ => return Err(unknown(entry, "mqtt.* keys", MQTT_KEYS)),
        }
        Ok(())
    }

    fn apply_zone(&mut self, zone: &str, field: &str, entry: &Entry) -> Result<(), ConfigError> {
        // Naming a zone in any key brings it into being with the default settings.
        let mut z = self.zones.get(zone).cloned().unwrap_or_default();
        match field {
            "idle_timeout" => z.idle_timeout = duration(entry)?,
            "hibernate_after" => {
                z.hibernate_after = Some(duration(entry)?).filter(|d| !d.is_zero())
            }
            "max_inflight" => z.max_inflight = short(entry, 1)?,
            "retry_interval" => z.retry_interval = duration(entry)?,
            "stall_timeout" => z.stall_timeout = Some(duration(entry)?).filter(|d| !d.is_zero()),
            "max_awaiting_rel" => z.max_awaiting_rel = count(entry, 0)?,
            "await_rel_timeout" => z.await_rel_timeout = duration(entry)?,
            "session_expiry_interval" => z.session_expiry_interval = duration(entry)?,
            "max_mqueue_len" => z.max_mqueue_len = count(entry, 0)?,
            "mqueue_store_qos0" => z.mqueue_store_qos0 = flag(entry)?,
            "server_keepalive" => z.server_keepalive = Some(short(entry, 0)?),
            "max_keepalive" => z.max_keepalive = short(entry, 0)?,
            "keepalive_backoff" => {
                z.keepalive_backoff = entry.read(|v| values::float_above(v, 0.5))?
            }
            "max_subscriptions" => z.max_subscriptions = count(entry, 0)?,
            "upgrade_qos" => z.upgrade_qos = flag(entry)?,
            "use_username_as_clientid" => z.use_username_as_clientid = flag(entry)?,
            "enable_stats" => z.enable_stats = flag(entry)?,
            "mountpoint" => z.mountpoint = mountpoint(entry)?,
            _ => return Err(unknown(entry, "zone.<name>.* keys", ZONE_KEYS)),
        }
        self.zones.insert(zone.to_string(), z);
        Ok(())
    }

    fn apply_storage(&mut self, field: &str, entry: &Entry) -> Result<(), ConfigError> {
        let storage = &mut self.storage;
        match field {
            "fsync" => storage.fsync = entry.read(fsync_policy)?,
            "batch_window" => storage.batch_window = duration(entry)?,
            "batch_max" => storage.batch_max = count(entry, 1)?,
            "block_cache_size" => storage.block_cache_size = entry.read(values::size)?,
            "read_threads" => {
                storage.read_threads = entry.read(|v| values::uint(v, 1, MAX_READ_THREADS))?
            }
            _ => return Err(unknown(entry, "storage.* keys", STORAGE_KEYS)),
        }
        Ok(())
    }

    fn apply_retainer(&mut self, field: &str, entry: &Entry) -> Result<(), ConfigError> {
        let retainer = &mut self.retainer;
        match field {
            "max_retained_messages" => retainer.max_retained_messages = count(entry, 0)?,
            "max_payload_size" => retainer.max_payload_size = entry.read(values::size)?,
            "expiry_interval" => retainer.expiry_interval = duration(entry)?,
            _ => return Err(unknown(entry, "retainer.* keys", RETAINER_KEYS)),
        }
        Ok(())
    }

    fn apply_psk_file(&mut self, field: &str, entry: &Entry) -> Result<(), ConfigError> {
        match field {
            "path" => self.psk.path = entry.read(|v| values::non_empty(v, "a file path"))?.into(),
            "delimiter" => {
                self.psk.delimiter = entry.read(|v| values::non_empty(v, "a separator"))?
            }
            _ => return Err(unknown(entry, "psk.file.* keys", PSK_FILE_KEYS)),
        }
        Ok(())
    }

    /// Resolves paths against `release_root` and checks what single keys cannot:
    /// every listener has an address, names a defined zone, and binds a distinct address.
    pub(super) fn finish(
        self,
        release_root: &Path,
        config_file: PathBuf,
    ) -> Result<Config, ConfigError> {
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        for ((proto, name), draft) in self.listeners {
            let address_key = format!("listener.{proto}.{name}");
            let Some(bind_origin) = draft.bind_origin else {
                return Err(ConfigError::Inconsistent {
                    origin: draft.first_origin,
                    problem: format!(
                        "listener {name:?} has settings but no address; \
                         add `{address_key} = <port | ip:port>`"
                    ),
                    key: address_key,
                });
            };
            let mut listener = draft.config;
            listener.access = draft.access.into_values().collect();
            if let Some(tls) = listener.tls.as_mut() {
                tls.keyfile = resolve(release_root, &tls.keyfile);
                tls.certfile = resolve(release_root, &tls.certfile);
                tls.cacertfile = tls.cacertfile.as_deref().map(|p| resolve(release_root, p));
            }
            let zone = &listener.zone;
            if !self.zones.contains_key(zone) {
                let (origin, key) = match draft.zone_origin {
                    Some(origin) => (origin, format!("{address_key}.zone")),
                    None => (bind_origin, address_key),
                };
                let defined: Vec<&str> = self.zones.keys().map(String::as_str).collect();
                let defined = if defined.is_empty() {
                    "none".to_string()
                } else {
                    defined.join(", ")
                };
                return Err(ConfigError::Inconsistent {
                    origin,
                    key,
                    problem: format!(
                        "listener {name:?} is in zone {zone:?}, which is not defined \
                         (a zone is defined by its zone.{zone}.* keys; defined zones: {defined})"
                    ),
                });
            }
            let bind = listener.bind;
            // Port 0 asks the OS for a free port, so several listeners may share it.
            if let Some(other) = listeners
                .iter()
                .find(|other| other.bind == bind && bind.port() != 0)
            {
                return Err(ConfigError::Inconsistent {
                    origin: bind_origin,
                    key: address_key,
                    problem: format!(
                        "address {bind} is already used by listener.{}.{}",
                        other.proto(),
                        other.name
                    ),
                });
            }
            listeners.push(listener);
        }

        let mut node = self.node;
        node.data_dir = resolve(release_root, &node.data_dir);
        let mut log = self.log;
        log.dir = resolve(release_root, &log.dir);
        let mut access = self.access;
        access.acl_file = resolve(release_root, &access.acl_file);
        access.acl_cache = Some(self.acl_cache).filter(|_| self.acl_cache_on);
        let mut psk = self.psk;
        psk.path = resolve(release_root, &psk.path);
        Ok(Config {
            node,
            log,
            listeners,
            mqtt: self.mqtt,
            zones: self.zones,
            storage: self.storage,
            retainer: self.retainer,
            access,
            psk,
            plugins: PluginsConfig {
                loaded_file: self.plugins.loaded_file.map(|p| resolve(release_root, &p)),
                keys: self.plugins.keys,
            },
            sys: self.sys,
            release_root: release_root.to_path_buf(),
            config_file,
        })
    }
}

/// A count or length, at least `min`.
/// More reader threads than this only compete with the workers for the cores.
const MAX_READ_THREADS: u64 = 64;

/// One `listener.ssl.<name>.<field>` TLS key.
fn apply_tls(tls: &mut TlsConfig, field: &str, entry: &Entry) -> Result<(), ConfigError> {
    let path = |v: &str| values::non_empty(v, "a file path").map(PathBuf::from);
    match field {
        "handshake_timeout" => tls.handshake_timeout = entry.read(values::duration)?,
        "keyfile" => tls.keyfile = entry.read(path)?,
        "certfile" => tls.certfile = entry.read(path)?,
        "cacertfile" => tls.cacertfile = Some(entry.read(path)?),
        "verify" => {
            tls.verify = entry.read(|v| match v {
                "verify_peer" => Ok(TlsVerify::VerifyPeer),
                "verify_none" => Ok(TlsVerify::VerifyNone),
                _ => Err("verify_peer or verify_none".to_string()),
            })?
        }
        "fail_if_no_peer_cert" => tls.fail_if_no_peer_cert = entry.read(values::boolean)?,
        "tls_versions" => {
            tls.tls_versions = entry.read(|v| {
                let versions = comma_list(v);
                match versions
                    .iter()
                    .find(|x| !TLS_VERSIONS.contains(&x.as_str()))
                {
                    Some(bad) => Err(format!(
                        "TLS versions from {} (comma-separated), not {bad:?}",
                        TLS_VERSIONS.join(", ")
                    )),
                    None if versions.is_empty() => Err("at least one TLS version".to_string()),
                    None => Ok(versions),
                }
            })?
        }
        "ciphers" => tls.ciphers = entry.read(|v| Ok(comma_list(v)))?,
        "peer_cert_as_username" => {
            tls.peer_cert_as_username = entry.read(|v| match v {
                "cn" => Ok(Some(CertField::Cn)),
                "dn" => Ok(Some(CertField::Dn)),
                "off" | "false" => Ok(None),
                _ => Err("cn or dn".to_string()),
            })?
        }
        _ => return Err(unknown(entry, "listener.ssl.<name>.* keys", SSL_KEYS)),
    }
    Ok(())
}

/// One `listener.ws(s).<name>.<field>` WebSocket key.
fn apply_ws(ws: &mut WsConfig, field: &str, entry: &Entry) -> Result<(), ConfigError> {
    match field {
        "mqtt_path" => {
            ws.mqtt_path = entry.read(|v| match v.starts_with('/') {
                true => Ok(v.to_string()),
                false => Err("an HTTP path starting with /".to_string()),
            })?
        }
        "fail_if_no_subprotocol" => ws.fail_if_no_subprotocol = entry.read(values::boolean)?,
        "supported_subprotocols" => {
            ws.supported_subprotocols = entry.read(|v| match comma_list(v) {
                names if names.is_empty() => Err("at least one subprotocol name".to_string()),
                names => Ok(names),
            })?
        }
        _ => return Err(unknown(entry, "listener.ws.<name>.* keys", WS_KEYS)),
    }
    Ok(())
}

/// `a, b,c` → `["a", "b", "c"]`, blanks dropped.
fn comma_list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn count(entry: &Entry, min: u64) -> Result<usize, ConfigError> {
    entry.read(|v| values::uint(v, min, USIZE_MAX))
}

/// A 16-bit quantity (inflight window, topic alias, seconds of keepalive), at least `min`.
fn short(entry: &Entry, min: u64) -> Result<u16, ConfigError> {
    entry.read(|v| values::uint(v, min, u16::MAX.into()))
}

fn flag(entry: &Entry) -> Result<bool, ConfigError> {
    entry.read(values::boolean)
}

/// A topic prefix; empty means none.
fn mountpoint(entry: &Entry) -> Result<Option<String>, ConfigError> {
    entry.read(|v| {
        if v.contains(['+', '#', '\0']) {
            return Err("a topic prefix without wildcards, like devices/%c/".to_string());
        }
        Ok(Some(v.to_string()).filter(|v| !v.is_empty()))
    })
}

fn duration(entry: &Entry) -> Result<std::time::Duration, ConfigError> {
    entry.read(values::duration)
}

fn unknown(entry: &Entry, group: &str, known: &[&str]) -> ConfigError {
    ConfigError::UnknownKey {
        origin: entry.origin.clone(),
        key: entry.key.clone(),
        hint: format!("; {group}: {}", known.join(", ")),
    }
}

fn node_name(text: &str) -> Result<String, values::Expected> {
    match text.split_once('@') {
        Some((name, host)) if !name.is_empty() && !host.is_empty() && !host.contains('@') => {
            Ok(text.to_string())
        }
        _ => Err("a node name like emqx@127.0.0.1".to_string()),
    }
}

fn dir(text: &str, what: &str) -> Result<PathBuf, values::Expected> {
    values::non_empty(text, what).map(PathBuf::from)
}

fn log_to(text: &str) -> Result<LogTo, values::Expected> {
    match text {
        "console" => Ok(LogTo::Console),
        "file" => Ok(LogTo::File),
        "both" => Ok(LogTo::Both),
        _ => Err("console, file or both".to_string()),
    }
}

fn log_level(text: &str) -> Result<LogLevel, values::Expected> {
    LogLevel::ALL
        .into_iter()
        .find(|level| level.as_str() == text)
        .ok_or_else(|| {
            "debug, info, notice, warning, error, critical, alert or emergency".to_string()
        })
}

fn fsync_policy(text: &str) -> Result<FsyncPolicy, values::Expected> {
    match text {
        "batch" => Ok(FsyncPolicy::Batch),
        "none" => Ok(FsyncPolicy::None),
        _ => Err("batch or none".to_string()),
    }
}

fn packet_size(text: &str) -> Result<u32, values::Expected> {
    let bytes = values::size(text)?;
    match u32::try_from(bytes) {
        Ok(bytes) if (1..=MAX_PACKET_SIZE_LIMIT).contains(&bytes) => Ok(bytes),
        _ => Err(format!(
            "a size from 1 to {MAX_PACKET_SIZE_LIMIT} bytes (the MQTT maximum, 256MB - 1)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, value: &str) -> Entry {
        Entry {
            key: key.to_string(),
            value: value.to_string(),
            origin: Origin::File {
                path: PathBuf::from("etc/emqx.conf"),
                line: 7,
            },
        }
    }

    /// Every field a hint lists is handled: applying it never says "unknown key".
    #[test]
    fn the_listed_keys_are_the_handled_keys() {
        let groups: [(&str, &[&str]); 17] = [
            ("broker.", super::super::sys::BROKER_KEYS),
            ("sysmon.", super::super::sys::SYSMON_KEYS),
            ("os_mon.", super::super::sys::OS_MON_KEYS),
            ("vm_mon.", super::super::sys::VM_MON_KEYS),
            ("node.", NODE_KEYS),
            ("log.", LOG_KEYS),
            ("listener.tcp.x.", LISTENER_KEYS),
            ("listener.ssl.x.", SSL_KEYS),
            ("listener.ws.x.", WS_KEYS),
            ("listener.wss.x.", WS_KEYS),
            ("listener.wss.x.", SSL_KEYS),
            ("mqtt.", MQTT_KEYS),
            ("zone.x.", ZONE_KEYS),
            ("storage.", STORAGE_KEYS),
            ("retainer.", RETAINER_KEYS),
            ("listener.ssl.x.", PSK_LISTENER_KEYS),
            ("psk.file.", PSK_FILE_KEYS),
        ];
        for (prefix, fields) in groups {
            for field in fields {
                let key = format!("{prefix}{field}");
                let result = Builder::new().apply(&entry(&key, "\u{0}"));
                assert!(
                    !matches!(result, Err(ConfigError::UnknownKey { .. })),
                    "{key} is listed but not handled"
                );
            }
        }
    }

    #[test]
    fn unknown_keys_list_what_is_known_nearby() {
        let err = Builder::new()
            .apply(&entry("mqtt.max_packet_sise", "1MB"))
            .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "etc/emqx.conf:7: unknown key mqtt.max_packet_sise; mqtt.* keys: max_packet_size, "
            ),
            "{err}"
        );
        let err = Builder::new()
            .apply(&entry("cluster.name", "x"))
            .unwrap_err();
        assert!(
            err.to_string().contains("known key groups: node.*"),
            "{err}"
        );
        let err = Builder::new()
            .apply(&entry("listener.tcp.external.send_timeout", "15s"))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("listener.tcp.<name>.* keys: acceptors"),
            "{err}"
        );
    }

    #[test]
    fn enumerations_and_special_values() {
        let mut b = Builder::new();
        for (key, value) in [
            ("log.to", "both"),
            ("log.level", "debug"),
            ("storage.fsync", "none"),
            ("zone.a.server_keepalive", "30"),
            ("zone.a.max_keepalive", "60"),
            ("zone.b.max_keepalive", "0"),
            ("mqtt.max_packet_size", "268435455"),
        ] {
            b.apply(&entry(key, value)).unwrap();
        }
        assert_eq!(b.log.to, LogTo::Both);
        assert_eq!(b.log.level, LogLevel::Debug);
        assert_eq!(b.storage.fsync, FsyncPolicy::None);
        assert_eq!(b.zones["a"].server_keepalive, Some(30));
        assert_eq!(b.zones["a"].keepalive_cap(), Some(60));
        assert_eq!(
            b.zones["b"].keepalive_cap(),
            None,
            "0: no cap, as in Mosquitto"
        );
        assert_eq!(ZoneConfig::DEFAULT.keepalive_cap(), None, "65535: no cap");
        assert_eq!(b.mqtt.max_packet_size, MAX_PACKET_SIZE_LIMIT);
    }

    #[test]
    fn values_out_of_range_are_refused() {
        let cases = [
            (
                "mqtt.max_packet_size",
                "256MB",
                "a size from 1 to 268435455 bytes",
            ),
            (
                "mqtt.max_packet_size",
                "0",
                "a size from 1 to 268435455 bytes",
            ),
            ("mqtt.max_qos_allowed", "3", "an integer from 0 to 2"),
            (
                "zone.external.max_inflight",
                "0",
                "an integer from 1 to 65535",
            ),
            (
                "zone.external.max_inflight",
                "65536",
                "an integer from 1 to 65535",
            ),
            (
                "zone.external.max_keepalive",
                "65536",
                "an integer from 0 to 65535",
            ),
            (
                "zone.external.max_keepalive",
                "-1",
                "an integer from 0 to 65535",
            ),
            (
                "zone.external.keepalive_backoff",
                "0.5",
                "a number greater than 0.5",
            ),
            ("storage.batch_max", "0", "an integer >= 1"),
            ("storage.read_threads", "0", "an integer from 1 to 64"),
            ("storage.read_threads", "65", "an integer from 1 to 64"),
            ("node.name", "emqx", "a node name like emqx@127.0.0.1"),
            ("node.name", "emqx@", "a node name like emqx@127.0.0.1"),
            ("node.data_dir", "", "a directory"),
            ("log.level", "warn", "debug, info, notice, warning"),
            ("log.to", "off", "console, file or both"),
            ("storage.fsync", "always", "batch or none"),
            (
                "listener.tcp.external",
                "localhost:1883",
                "a port like 1883",
            ),
        ];
        for (key, value, expected) in cases {
            let err = Builder::new()
                .apply(&entry(key, value))
                .unwrap_err()
                .to_string();
            let prefix = format!("etc/emqx.conf:7: {key}: expected {expected}");
            assert!(err.starts_with(&prefix), "{key} = {value}: {err}");
            assert!(err.ends_with(&format!("got {value:?}")), "{err}");
        }
    }
}
