//! The broker's configuration as typed data, loaded once at startup from
//! `etc/emqx.conf`, then `etc/plugins/*.conf`, then `EMQX_*` environment variables.
//!
//! Its own crate because both the broker and `emqx_ctl` (which must find the node's
//! control socket through the same config and overrides) load it, and `emqx_ctl` must
//! not link the broker. The broker re-exports it as `quay::config`.
//!
//! Config is data: this crate is the only place a config string is interpreted. The
//! rest of the broker sees [`Config`] and never looks a key up by name or parses a
//! duration. Every mistake a user can make is reported with where the value came from
//! (file:line or environment variable), the key, the value and what was expected.
//!
//! This module never reads the process environment (the caller passes it in), never
//! writes files and never logs; it reads the config files and nothing else.
//!
//! - `parse.rs`: cuttlefish lines -> entries with their origin
//! - `env.rs`: `EMQX_*` variables -> entries
//! - `values.rs`: value syntax (durations, sizes, booleans, addresses)
//! - `keys.rs`: which keys exist, where each lands, and the checks across keys
//! - `lib.rs`: the types, the built-in defaults and the load order

mod access;
mod env;
mod keys;
mod parse;
mod plugin_keys;
mod sys;
mod values;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

pub use access::{allowed as access_allowed, AccessRule, Cidr, CidrError};
pub use plugin_keys::{read as plugin_read, PluginKeys, Setting};
pub use sys::{OsMonConfig, SysConfig, SysmonConfig, VmMonConfig};

/// Everything the broker is configured with. Paths are absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: NodeConfig,
    pub log: LogConfig,
    /// Sorted by name.
    pub listeners: Vec<ListenerConfig>,
    pub mqtt: MqttConfig,
    pub zones: BTreeMap<String, ZoneConfig>,
    pub storage: StorageConfig,
    pub retainer: RetainerConfig,
    pub access: AccessConfig,
    /// The TLS-PSK identities file (`psk.file.*`, EMQX 4's `emqx_psk_file` plugin).
    pub psk: PskConfig,
    /// `plugins.loaded_file` and every plugin's own settings (`auth.*`, `bridge.*`).
    pub plugins: PluginsConfig,
    /// `$SYS` intervals and the monitors' thresholds (`broker.sys_*`, `sysmon.*`,
    /// `os_mon.*`, `vm_mon.*`).
    pub sys: SysConfig,
    /// The directory relative paths in the config resolve against: the parent of the
    /// config file's directory (`/opt/emqx/etc/emqx.conf` => `/opt/emqx`), as in EMQX.
    pub release_root: PathBuf,
    /// The main config file, absolute.
    pub config_file: PathBuf,
}

/// Which plugins start at boot, and their settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginsConfig {
    /// `plugins.loaded_file`: where `emqx_ctl plugins load|unload` records what runs
    /// (EMQX 4: `data/loaded_plugins`, seeded from `etc/loaded_plugins` on first start).
    /// `None` = `<node.data_dir>/loaded_plugins`.
    pub loaded_file: Option<PathBuf>,
    pub keys: PluginKeys,
}

impl Config {
    /// The file recording which plugins run (see [`PluginsConfig::loaded_file`]).
    pub fn loaded_plugins_file(&self) -> PathBuf {
        self.plugins
            .loaded_file
            .clone()
            .unwrap_or_else(|| self.node.data_dir.join("loaded_plugins"))
    }

    /// The shipped list of plugins to start, copied to [`Config::loaded_plugins_file`]
    /// when that does not exist yet: `etc/loaded_plugins` beside the config file.
    pub fn shipped_loaded_plugins_file(&self) -> PathBuf {
        self.config_file
            .parent()
            .unwrap_or(Path::new("."))
            .join("loaded_plugins")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// `name@host`.
    pub name: String,
    pub data_dir: PathBuf,
    /// `node.cookie`: the secret two nodes prove to each other before the node-to-node
    /// transport carries anything (never sent in clear).
    pub cookie: String,
    /// `rpc.tcp_server_port`: where this node accepts node-to-node connections (on
    /// its node name's host); `None`: it accepts none.
    pub rpc_server_port: Option<u16>,
    /// `rpc.tcp_client_port`: the port of other nodes' node-to-node listener.
    pub rpc_client_port: u16,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub to: LogTo,
    pub level: LogLevel,
    pub dir: PathBuf,
    /// File name inside `dir`.
    pub file: String,
    /// `log.rotation`: roll the file over at `rotation_size`.
    pub rotation: bool,
    /// `log.rotation.size`: bytes per file before it rolls over.
    pub rotation_size: u64,
    /// `log.rotation.count`: rolled-over files kept (`emqx.log.1` ..= `.N`).
    pub rotation_count: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTo {
    Console,
    File,
    Both,
}

/// Syslog severities, as EMQX names them; each level logs itself and everything above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

impl LogLevel {
    pub const ALL: [LogLevel; 8] = [
        LogLevel::Debug,
        LogLevel::Info,
        LogLevel::Notice,
        LogLevel::Warning,
        LogLevel::Error,
        LogLevel::Critical,
        LogLevel::Alert,
        LogLevel::Emergency,
    ];

    /// The name used in the config file (`warning`).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Notice => "notice",
            LogLevel::Warning => "warning",
            LogLevel::Error => "error",
            LogLevel::Critical => "critical",
            LogLevel::Alert => "alert",
            LogLevel::Emergency => "emergency",
        }
    }
}

/// One MQTT listener, from `listener.<proto>.<name> = <addr>` and its sub-keys
/// (`proto`: `tcp`, `ssl` for MQTT over TLS, `ws` for MQTT over WebSocket, `wss` for
/// MQTT over WebSocket over TLS).
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    /// `Some` for `listener.ssl.<name>` and `listener.wss.<name>`: TLS.
    pub tls: Option<TlsConfig>,
    /// `Some` for `listener.ws.<name>` and `listener.wss.<name>`: WebSocket.
    pub ws: Option<WsConfig>,
    pub acceptors: usize,
    pub max_connections: usize,
    /// Always names a zone in [`Config::zones`].
    pub zone: String,
    pub backlog: u32,
    /// A HAProxy PROXY protocol header (v1 or v2) comes first on every connection.
    pub proxy_protocol: bool,
    /// How long a connection may take to send its PROXY header.
    pub proxy_protocol_timeout: Duration,
    /// `access.N` rules in the order of N (see [`access::allowed`]).
    pub access: Vec<AccessRule>,
    /// Connections admitted per second; None: no limit.
    pub max_conn_rate: Option<u32>,
    /// Topic prefix for this listener's clients (`%c`, `%u` not yet replaced);
    /// overrides the zone's.
    pub mountpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MqttConfig {
    /// Bytes, 1..=268435455 (the largest MQTT remaining length).
    pub max_packet_size: u32,
    pub max_clientid_len: usize,
    /// 0 = unlimited.
    pub max_topic_levels: usize,
    /// 0..=2.
    pub max_qos_allowed: u8,
    pub max_topic_alias: u16,
    pub retain_available: bool,
    pub wildcard_subscription: bool,
    pub shared_subscription: bool,
    pub ignore_loop_deliver: bool,
    pub strict_mode: bool,
}

/// Per-zone session and connection settings (`zone.<name>.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneConfig {
    pub idle_timeout: Duration,
    /// Quiet time after which a connection hibernates (gives up its task until the
    /// next packet, delivery or deadline); None (`0s`) never.
    pub hibernate_after: Option<Duration>,
    /// 1..=65535.
    pub max_inflight: u16,
    pub retry_interval: Duration,
    /// 0 = unlimited.
    pub max_awaiting_rel: usize,
    pub await_rel_timeout: Duration,
    pub session_expiry_interval: Duration,
    /// 0 = unlimited.
    pub max_mqueue_len: usize,
    pub mqueue_store_qos0: bool,
    /// Seconds; `None` = use the client's keepalive.
    pub server_keepalive: Option<u16>,
    /// Seconds: the longest keepalive a client may use (Mosquitto's `max_keepalive`);
    /// a longer one, or 0, is lowered to it (v5, via Server Keep Alive) or refused (v3).
    /// 0 and 65535 mean no cap; see [`ZoneConfig::keepalive_cap`].
    pub max_keepalive: u16,
    /// A connection is dropped after `keepalive * keepalive_backoff * 2` of silence.
    pub keepalive_backoff: f64,
    /// 0 = unlimited.
    pub max_subscriptions: usize,
    pub upgrade_qos: bool,
    pub use_username_as_clientid: bool,
    pub enable_stats: bool,
    /// A connection whose backlog holds up its publishers (see
    /// `broker::mailbox`) and that makes no progress for this long is closed;
    /// None (`0s`): never, publishers wait for it as long as it lives.
    pub stall_timeout: Option<Duration>,
    /// Topic prefix for the zone's clients (`%c`, `%u` not yet replaced); a
    /// listener's own `mountpoint` overrides it.
    pub mountpoint: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    pub fsync: FsyncPolicy,
    /// How long the writer gathers a batch at most.
    pub batch_window: Duration,
    /// Entries per batch at most, >= 1.
    pub batch_max: usize,
    /// Bytes.
    pub block_cache_size: u64,
    /// Threads of the store's reader pool (queue pages, retained lookups), 1..=64.
    pub read_threads: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every group-commit batch is fsynced before its acks are released.
    Batch,
    /// Rely on the OS to write back; acks go out once the batch is written.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetainerConfig {
    /// 0 = unlimited.
    pub max_retained_messages: usize,
    /// Bytes; 0 = unlimited.
    pub max_payload_size: u64,
    /// Zero = retained messages never expire.
    pub expiry_interval: Duration,
}

/// Who may connect and what they may do: `allow_anonymous`, `acl_*` (EMQX 4's
/// top-level keys).
#[derive(Debug, Clone, PartialEq)]
pub struct AccessConfig {
    /// Let a client in when no authentication backend decides.
    pub allow_anonymous: bool,
    /// Allow a publish or subscribe that no ACL rule or backend decides.
    pub acl_nomatch_allow: bool,
    /// The file ACL (`etc/acl.conf`).
    pub acl_file: PathBuf,
    /// What a denied publish or subscribe does to the connection.
    pub acl_deny_action: AclDenyAction,
    /// `enable_acl_cache`, `acl_cache_max_size`, `acl_cache_ttl`: `None` = off.
    pub acl_cache: Option<AclCacheConfig>,
}

/// Each client's cache of ACL answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclCacheConfig {
    pub max_size: usize,
    pub ttl: Duration,
}

impl AclCacheConfig {
    pub const DEFAULT: AclCacheConfig = AclCacheConfig {
        max_size: 32,
        ttl: Duration::from_secs(60),
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclDenyAction {
    /// Drop the publish (v5 PUBACK/PUBREC 0x87), refuse the filter (SUBACK 0x80/0x87).
    Ignore,
    /// The same, then close the connection (v5 DISCONNECT 0x87).
    Disconnect,
}

impl AccessConfig {
    fn with_defaults(release_root: &Path) -> AccessConfig {
        AccessConfig {
            allow_anonymous: true,
            acl_nomatch_allow: true,
            acl_file: resolve(release_root, Path::new("etc/acl.conf")),
            acl_deny_action: AclDenyAction::Ignore,
            acl_cache: Some(AclCacheConfig::DEFAULT),
        }
    }
}

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of a config file; `path` as it was given to [`Config::load`].
    File {
        path: PathBuf,
        line: usize,
    },
    Env {
        var: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Env { var } => write!(f, "environment variable {var}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: {problem}")]
    Syntax { origin: Origin, problem: String },
    #[error("{origin}: unknown key {key}{hint}")]
    UnknownKey {
        origin: Origin,
        key: String,
        /// Which keys would have been accepted there, starting with "; ".
        hint: String,
    },
    #[error("{origin}: {key}: expected {expected}, got {value:?}")]
    InvalidValue {
        origin: Origin,
        key: String,
        value: String,
        expected: String,
    },
    /// A value that is well-formed on its own but does not fit with the rest.
    #[error("{origin}: {key}: {problem}")]
    Inconsistent {
        origin: Origin,
        key: String,
        problem: String,
    },
}

const DEFAULT_NODE_NAME: &str = "emqx@127.0.0.1";
const DEFAULT_DATA_DIR: &str = "data";
const DEFAULT_LOG_DIR: &str = "log";
const DEFAULT_LOG_FILE: &str = "emqx.log";
const CONFIG_FILE_IN_RELEASE: &str = "etc/emqx.conf";

/// The largest MQTT packet: the remaining length is at most 268,435,455 bytes.
pub const MAX_PACKET_SIZE_LIMIT: u32 = 268_435_455;

/// The zone [`Config::zone`] falls back to for a name that is not configured.
static DEFAULT_ZONE: ZoneConfig = ZoneConfig::DEFAULT;

impl ZoneConfig {
    /// What any zone starts from: the defaults of `zone.<name>.*` keys it does not set.
    pub const DEFAULT: ZoneConfig = ZoneConfig {
        idle_timeout: Duration::from_secs(15),
        hibernate_after: Some(Duration::from_secs(5)),
        max_inflight: 32,
        retry_interval: Duration::from_secs(30),
        max_awaiting_rel: 100,
        await_rel_timeout: Duration::from_secs(300),
        session_expiry_interval: Duration::from_secs(2 * 3600),
        max_mqueue_len: 1000,
        mqueue_store_qos0: true,
        server_keepalive: None,
        max_keepalive: u16::MAX,
        keepalive_backoff: 0.75,
        max_subscriptions: 0,
        upgrade_qos: false,
        use_username_as_clientid: false,
        enable_stats: true,
        stall_timeout: Some(Duration::from_secs(10)),
        mountpoint: None,
    };

    /// The cap `max_keepalive` puts on client keepalives, if any. At 65535 (the default)
    /// no keepalive is above it, and a keepalive of 0 stays allowed too: unlike
    /// Mosquitto 2.0.12+, whose default refuses v3 clients with keepalive 0, the
    /// default changes nothing. 0 means no cap as in Mosquitto.
    pub fn keepalive_cap(&self) -> Option<u16> {
        Some(self.max_keepalive).filter(|&max| max != 0 && max != u16::MAX)
    }

    /// The `internal` zone of the shipped config: trusted local clients get a wider
    /// inflight window and a deeper queue.
    pub fn internal() -> ZoneConfig {
        ZoneConfig {
            max_inflight: 128,
            max_mqueue_len: 10_000,
            ..ZoneConfig::DEFAULT
        }
    }
}

impl Default for ZoneConfig {
    fn default() -> Self {
        ZoneConfig::DEFAULT
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_packet_size: 1024 * 1024,
            max_clientid_len: 65_535,
            max_topic_levels: 0,
            max_qos_allowed: 2,
            max_topic_alias: 65_535,
            retain_available: true,
            wildcard_subscription: true,
            shared_subscription: true,
            ignore_loop_deliver: false,
            strict_mode: false,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            fsync: FsyncPolicy::Batch,
            batch_window: Duration::from_millis(1),
            batch_max: 4096,
            block_cache_size: 64 * 1024 * 1024,
            read_threads: 2,
        }
    }
}

impl Default for RetainerConfig {
    fn default() -> Self {
        RetainerConfig {
            max_retained_messages: 0,
            max_payload_size: 1024 * 1024,
            expiry_interval: Duration::ZERO,
        }
    }
}

impl ListenerConfig {
    /// A listener with the default sub-key values; its zone is the zone of the same
    /// name for `external` and `internal`, else `external`.
    fn with_defaults(
        name: &str,
        bind: SocketAddr,
        tls: Option<TlsConfig>,
        ws: Option<WsConfig>,
    ) -> ListenerConfig {
        ListenerConfig {
            name: name.to_string(),
            bind,
            tls,
            ws,
            acceptors: 8,
            max_connections: 1_024_000,
            zone: default_zone_of_listener(name).to_string(),
            backlog: 1024,
            proxy_protocol: false,
            proxy_protocol_timeout: Duration::from_secs(3),
            access: Vec::new(),
            max_conn_rate: None,
            mountpoint: None,
        }
    }
}

impl ListenerConfig {
    /// `tcp`, `ssl`, `ws` or `wss`, as in the keys.
    pub fn proto(&self) -> &'static str {
        match (self.tls.is_some(), self.ws.is_some()) {
            (false, false) => "tcp",
            (true, false) => "ssl",
            (false, true) => "ws",
            (true, true) => "wss",
        }
    }

    /// The listener's id as EMQX 4 shows it: `mqtt:tcp:external`, `mqtt:ssl:external`,
    /// `mqtt:ws:external`, `mqtt:wss:external`.
    pub fn id(&self) -> String {
        format!("mqtt:{}:{}", self.proto(), self.name)
    }
}

/// The TLS settings of a `listener.ssl.<name>`. Paths are resolved against the release
/// root; what the names in `tls_versions` and `ciphers` mean is the broker's business
/// (it says which it cannot use).
#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub keyfile: PathBuf,
    pub certfile: PathBuf,
    /// The CAs that client certificates must chain to (`verify = verify_peer`).
    pub cacertfile: Option<PathBuf>,
    pub verify: TlsVerify,
    /// With `verify_peer`: a client without a certificate is refused.
    pub fail_if_no_peer_cert: bool,
    /// `tlsv1.3`, `tlsv1.2`, `tlsv1.1`, `tlsv1`, in the given order.
    pub tls_versions: Vec<String>,
    /// OpenSSL cipher suite names; empty = the TLS library's defaults.
    pub ciphers: Vec<String>,
    /// The handshake must finish within this.
    pub handshake_timeout: Duration,
    /// Take the client certificate's CN or whole DN as the MQTT username (on a PSK
    /// listener, a PSK client's identity).
    pub peer_cert_as_username: Option<CertField>,
    /// `listener.ssl.<name>.psk_ciphers`, OpenSSL names of TLS 1.2 PSK suites. Not
    /// empty: the listener also accepts TLS-PSK clients (served by OpenSSL).
    pub psk_ciphers: Vec<String>,
}

/// Where the TLS-PSK identities and keys are (`psk.file.path`, lines
/// `identity<delimiter>hexkey`), read at start when a listener has `psk_ciphers`.
#[derive(Debug, Clone, PartialEq)]
pub struct PskConfig {
    pub path: PathBuf,
    /// Separates the identity from the key on each line: `:` as in EMQX 4.
    pub delimiter: String,
}

impl Default for PskConfig {
    fn default() -> Self {
        PskConfig {
            path: PathBuf::from("etc/psk.txt"),
            delimiter: ":".to_string(),
        }
    }
}

/// The WebSocket settings of a `listener.ws.<name>` or `listener.wss.<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct WsConfig {
    /// The HTTP path clients upgrade on; any other path is answered 404.
    pub mqtt_path: String,
    /// Refuse (HTTP 400) an upgrade that offers no `Sec-WebSocket-Protocol`.
    pub fail_if_no_subprotocol: bool,
    /// The subprotocols accepted; the first the client offers that is here is chosen.
    pub supported_subprotocols: Vec<String>,
}

impl WsConfig {
    /// EMQX 4's defaults: path `/mqtt`, a subprotocol required; the accepted names are
    /// EMQX 4's (`mqtt`, `mqtt-v3`, `mqtt-v3.1.1`, `mqtt-v5`) and those MQTT clients
    /// send for 3.1 and 3.1.1 (`mqttv3.1`, `mqttv3.1.1`).
    pub fn with_defaults() -> WsConfig {
        WsConfig {
            mqtt_path: "/mqtt".to_string(),
            fail_if_no_subprotocol: true,
            supported_subprotocols: [
                "mqtt",
                "mqttv3.1",
                "mqttv3.1.1",
                "mqtt-v3",
                "mqtt-v3.1.1",
                "mqtt-v5",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// Whether an SSL listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVerify {
    VerifyNone,
    VerifyPeer,
}

/// Which part of the client certificate's subject becomes the username.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertField {
    Cn,
    Dn,
}

impl TlsConfig {
    /// EMQX 4's defaults: the development certificates in `etc/certs/`, no client
    /// certificate asked for, TLS 1.3 and 1.2, the library's cipher suites.
    pub fn with_defaults() -> TlsConfig {
        TlsConfig {
            keyfile: PathBuf::from("etc/certs/key.pem"),
            certfile: PathBuf::from("etc/certs/cert.pem"),
            cacertfile: Some(PathBuf::from("etc/certs/cacert.pem")),
            verify: TlsVerify::VerifyNone,
            fail_if_no_peer_cert: false,
            tls_versions: vec!["tlsv1.3".into(), "tlsv1.2".into()],
            ciphers: Vec::new(),
            handshake_timeout: Duration::from_secs(15),
            peer_cert_as_username: None,
            psk_ciphers: Vec::new(),
        }
    }
}

/// The zone of listeners that name none, and of sessions stored before their zone was.
pub const DEFAULT_ZONE_NAME: &str = "external";

/// A zone with its name, shared by the listeners, connections and sessions in it.
#[derive(Debug)]
pub struct Zone {
    pub name: String,
    pub config: ZoneConfig,
}

impl std::ops::Deref for Zone {
    type Target = ZoneConfig;

    fn deref(&self) -> &ZoneConfig {
        &self.config
    }
}

fn default_zone_of_listener(listener: &str) -> &'static str {
    match listener {
        "internal" => "internal",
        _ => DEFAULT_ZONE_NAME,
    }
}

impl Config {
    /// Reads `config_file`, then every `*.conf` in `<config dir>/plugins/` (by name; a
    /// missing directory is fine), then applies `EMQX_*` overrides from `env`. A key set
    /// more than once keeps its last value. Relative paths resolve against the release
    /// root, the parent of the config file's directory.
    pub fn load(config_file: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let absolute_file =
            std::path::absolute(config_file).map_err(|source| ConfigError::Read {
                path: config_file.to_path_buf(),
                source,
            })?;
        let config_dir = absolute_file.parent().unwrap_or(Path::new("/"));
        let release_root = config_dir.parent().unwrap_or(config_dir).to_path_buf();

        let mut builder = keys::Builder::new();
        for entry in parse::parse_file(config_file)? {
            builder.apply(&entry)?;
        }
        let plugins_dir = config_file
            .parent()
            .unwrap_or(Path::new(""))
            .join("plugins");
        for plugin_file in plugin_files(&plugins_dir)? {
            for entry in parse::parse_file(&plugin_file)? {
                builder.apply(&entry)?;
            }
        }
        for entry in env::overrides(env)? {
            builder.apply(&entry)?;
        }
        builder.finish(&release_root, absolute_file)
    }

    /// The built-in defaults, equal to loading the shipped `etc/emqx.conf` and
    /// `etc/plugins/*.conf` from `release_root` with no overrides.
    pub fn defaults(release_root: &Path) -> Config {
        let release_root =
            std::path::absolute(release_root).unwrap_or_else(|_| release_root.to_path_buf());
        let mut tls = TlsConfig::with_defaults();
        tls.keyfile = resolve(&release_root, &tls.keyfile);
        tls.certfile = resolve(&release_root, &tls.certfile);
        tls.cacertfile = tls.cacertfile.map(|p| resolve(&release_root, &p));
        let any = |port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
        let ws = Some(WsConfig::with_defaults());
        // In the order loading gives: by protocol (ssl, tcp, ws, wss), then name.
        let listeners = vec![
            ListenerConfig::with_defaults("external", any(8883), Some(tls.clone()), None),
            ListenerConfig::with_defaults("external", any(1883), None, None),
            ListenerConfig::with_defaults(
                "internal",
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 11883),
                None,
                None,
            ),
            ListenerConfig::with_defaults("external", any(8083), None, ws.clone()),
            ListenerConfig::with_defaults("external", any(8084), Some(tls), ws),
        ];
        let zones = BTreeMap::from([
            ("external".to_string(), ZoneConfig::DEFAULT),
            ("internal".to_string(), ZoneConfig::internal()),
        ]);
        Config {
            node: default_node(&release_root),
            log: default_log(&release_root),
            listeners,
            mqtt: MqttConfig::default(),
            zones,
            storage: StorageConfig::default(),
            retainer: RetainerConfig::default(),
            access: AccessConfig::with_defaults(&release_root),
            psk: PskConfig {
                path: resolve(&release_root, &PskConfig::default().path),
                ..PskConfig::default()
            },
            plugins: PluginsConfig::default(),
            sys: SysConfig::default(),
            config_file: release_root.join(CONFIG_FILE_IN_RELEASE),
            release_root,
        }
    }

    /// Where to look for the config when none is given: `./etc/emqx.conf` if it exists,
    /// else the first `etc/emqx.conf` found walking up from the running executable's
    /// directory (so `target/release/emqx` finds the repository's `etc/`), else
    /// `./etc/emqx.conf` (whose absence [`Config::load`] then reports).
    pub fn default_file() -> PathBuf {
        let local = PathBuf::from(CONFIG_FILE_IN_RELEASE);
        if local.is_file() {
            return local;
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().and_then(find_config_upwards))
            .unwrap_or(local)
    }

    /// The named zone, or the built-in default zone if no such zone is configured.
    pub fn zone(&self, name: &str) -> &ZoneConfig {
        self.zones.get(name).unwrap_or(&DEFAULT_ZONE)
    }
}

/// The default `node.*` settings, `data_dir` resolved against `release_root` (the
/// builder passes an empty root to keep it relative until the real root is known).
fn default_node(release_root: &Path) -> NodeConfig {
    NodeConfig {
        name: DEFAULT_NODE_NAME.to_string(),
        data_dir: resolve(release_root, Path::new(DEFAULT_DATA_DIR)),
        cookie: "emqxsecretcookie".to_string(),
        rpc_server_port: None,
        rpc_client_port: 5369,
    }
}

fn default_log(release_root: &Path) -> LogConfig {
    LogConfig {
        to: LogTo::Console,
        level: LogLevel::Warning,
        dir: resolve(release_root, Path::new(DEFAULT_LOG_DIR)),
        file: DEFAULT_LOG_FILE.to_string(),
        rotation: true,
        rotation_size: 10 * 1024 * 1024,
        rotation_count: 5,
    }
}

/// `path` against `release_root` if relative, without `.` components.
fn resolve(release_root: &Path, path: &Path) -> PathBuf {
    release_root
        .join(path)
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

fn find_config_upwards(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join(CONFIG_FILE_IN_RELEASE))
        .find(|candidate| candidate.is_file())
}

/// The `*.conf` files of the plugins directory, sorted by file name.
fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read_error(e)),
    };
    let mut files = Vec::new();
    for item in listing {
        let path = item.map_err(read_error)?.path();
        if path.extension().is_some_and(|ext| ext == "conf") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}
