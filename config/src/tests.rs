//! Tests of [`Config::load`] as a whole: files on disk, plugins, environment, paths,
//! and the shipped `etc/emqx.conf` against the built-in defaults.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

/// A release tree in a temp dir: `<root>/etc/emqx.conf` (+ optional plugin files).
struct Release {
    dir: tempfile::TempDir,
}

impl Release {
    fn new(main: &str) -> Release {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::create_dir_all(dir.path().join("etc")).expect("mkdir etc");
        fs::write(dir.path().join("etc/emqx.conf"), main).expect("write emqx.conf");
        Release { dir }
    }

    fn plugin(self, name: &str, text: &str) -> Release {
        let plugins = self.dir.path().join("etc/plugins");
        fs::create_dir_all(&plugins).expect("mkdir plugins");
        fs::write(plugins.join(name), text).expect("write plugin conf");
        self
    }

    fn root(&self) -> PathBuf {
        std::path::absolute(self.dir.path()).expect("absolute root")
    }

    fn config_file(&self) -> PathBuf {
        self.dir.path().join("etc/emqx.conf")
    }

    fn load(&self) -> Result<Config, ConfigError> {
        Config::load(&self.config_file(), &[])
    }

    fn load_env(&self, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(&self.config_file(), &env)
    }

    /// The error message with the temp dir replaced by `<root>`, for exact comparisons.
    fn error(&self, result: Result<Config, ConfigError>) -> String {
        let message = result.expect_err("load should fail").to_string();
        message.replace(&self.dir.path().display().to_string(), "<root>")
    }
}

const MINIMAL: &str = "listener.tcp.external = 1883\nzone.external.max_inflight = 32\n";

/// The shipped config: the repository's `etc/emqx.conf`, next to this crate.
fn shipped_config_file() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the config crate sits in the repository");
    repo.join("etc/emqx.conf")
}

#[test]
fn the_shipped_config_equals_the_built_in_defaults() {
    let file = shipped_config_file();
    let mut loaded = Config::load(&file, &[]).expect("shipped config loads");
    let root = file.parent().and_then(Path::parent).expect("release root");
    // Plugin settings are not defaults of the core: each plugin reads and checks its
    // own (`etc/plugins/emqx_auth_*.conf`, ...) when it starts.
    loaded.plugins.keys = PluginKeys::default();
    assert_eq!(loaded, Config::defaults(root));
    assert_eq!(loaded.release_root, std::path::absolute(root).unwrap());
}

#[test]
fn built_in_defaults() {
    let config = Config::defaults(Path::new("/opt/emqx"));
    assert_eq!(config.node.name, "emqx@127.0.0.1");
    assert_eq!(config.node.data_dir, Path::new("/opt/emqx/data"));
    assert_eq!(config.log.dir, Path::new("/opt/emqx/log"));
    assert_eq!(config.log.to, LogTo::Console);
    assert_eq!(config.log.level, LogLevel::Warning);
    assert_eq!(config.config_file, Path::new("/opt/emqx/etc/emqx.conf"));
    let ids: Vec<_> = config.listeners.iter().map(|l| l.id()).collect();
    assert_eq!(
        ids,
        [
            "mqtt:ssl:external",
            "mqtt:tcp:external",
            "mqtt:tcp:internal",
            "mqtt:ws:external",
            "mqtt:wss:external",
        ]
    );
    assert_eq!(config.listeners[0].bind, "0.0.0.0:8883".parse().unwrap());
    let tls = config.listeners[0].tls.as_ref().expect("TLS settings");
    assert_eq!(tls.certfile, Path::new("/opt/emqx/etc/certs/cert.pem"));
    assert_eq!(tls.verify, TlsVerify::VerifyNone);
    assert_eq!(config.listeners[1].bind, "0.0.0.0:1883".parse().unwrap());
    assert_eq!(config.listeners[2].bind, "127.0.0.1:11883".parse().unwrap());
    assert_eq!(config.listeners[2].zone, "internal");
    assert_eq!(config.listeners[3].bind, "0.0.0.0:8083".parse().unwrap());
    let ws = config.listeners[3].ws.as_ref().expect("WebSocket settings");
    assert_eq!(ws.mqtt_path, "/mqtt");
    assert!(ws.fail_if_no_subprotocol);
    assert!(config.listeners[3].tls.is_none());
    assert_eq!(config.listeners[4].bind, "0.0.0.0:8084".parse().unwrap());
    assert!(config.listeners[4].ws.is_some() && config.listeners[4].tls.is_some());
    assert_eq!(config.zone("internal").max_inflight, 128);
    assert_eq!(config.zone("internal").max_mqueue_len, 10_000);
    assert_eq!(config.zone("external").max_inflight, 32);
    assert_eq!(config.mqtt.max_packet_size, 1 << 20);
    assert_eq!(config.storage.block_cache_size, 64 << 20);
    assert_eq!(config.storage.batch_window, Duration::from_millis(1));
    assert_eq!(config.retainer.max_payload_size, 1 << 20);
}

#[test]
fn an_unconfigured_zone_falls_back_to_the_default_zone() {
    let config = Config::defaults(Path::new("/opt/emqx"));
    assert_eq!(config.zone("no-such-zone"), &ZoneConfig::DEFAULT);
}

#[test]
fn relative_paths_resolve_against_the_release_root() {
    let release = Release::new(&format!("{MINIMAL}log.dir = ./logs/here\n"));
    let config = release.load().unwrap();
    let root = release.root();
    assert_eq!(config.release_root, root);
    assert_eq!(config.node.data_dir, root.join("data"));
    assert_eq!(config.log.dir, root.join("logs/here"));
    assert_eq!(config.config_file, root.join("etc/emqx.conf"));
}

#[test]
fn absolute_paths_are_kept() {
    let release = Release::new(&format!("{MINIMAL}node.data_dir = /var/lib/quay\n"));
    assert_eq!(
        release.load().unwrap().node.data_dir,
        Path::new("/var/lib/quay")
    );
}

#[test]
fn only_named_listeners_and_zones_exist() {
    let config = Release::new(MINIMAL).load().unwrap();
    assert_eq!(config.listeners.len(), 1);
    let listener = &config.listeners[0];
    assert_eq!(listener.name, "external");
    assert_eq!(listener.bind, "0.0.0.0:1883".parse().unwrap());
    assert_eq!(listener.acceptors, 8);
    assert_eq!(listener.max_connections, 1_024_000);
    assert_eq!(listener.backlog, 1024);
    assert_eq!(listener.zone, "external");
    assert_eq!(config.zones.keys().collect::<Vec<_>>(), ["external"]);
}

#[test]
fn a_zone_named_by_one_key_gets_defaults_for_the_rest() {
    let config = Release::new(&format!(
        "{MINIMAL}zone.edge.max_inflight = 64\nzone.edge.server_keepalive = 120\n"
    ))
    .load()
    .unwrap();
    let edge = config.zone("edge");
    assert_eq!(edge.max_inflight, 64);
    assert_eq!(edge.server_keepalive, Some(120));
    assert_eq!(
        ZoneConfig {
            max_inflight: 32,
            server_keepalive: None,
            ..edge.clone()
        },
        ZoneConfig::DEFAULT
    );
}

#[test]
fn listeners_are_sorted_by_name_and_take_their_sub_keys() {
    let config = Release::new(
        "zone.external.idle_timeout = 15s\n\
         zone.internal.idle_timeout = 15s\n\
         listener.tcp.zeta.acceptors = 2\n\
         listener.tcp.zeta = [::1]:1885\n\
         listener.tcp.zeta.zone = internal\n\
         listener.tcp.alpha = 127.0.0.1:1884\n\
         listener.tcp.alpha.backlog = 64\n\
         listener.tcp.alpha.max_connections = 10\n",
    )
    .load()
    .unwrap();
    let names: Vec<_> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["alpha", "zeta"]);
    let (alpha, zeta) = (&config.listeners[0], &config.listeners[1]);
    assert_eq!((alpha.backlog, alpha.max_connections), (64, 10));
    assert_eq!(alpha.zone, "external");
    assert_eq!(zeta.bind, "[::1]:1885".parse().unwrap());
    assert_eq!((zeta.acceptors, zeta.zone.as_str()), (2, "internal"));
}

#[test]
fn the_last_of_a_repeated_key_wins() {
    let config = Release::new(&format!(
        "{MINIMAL}mqtt.max_packet_size = 64KB\nmqtt.max_packet_size = 2MB\n"
    ))
    .load()
    .unwrap();
    assert_eq!(config.mqtt.max_packet_size, 2 << 20);
}

#[test]
fn a_malformed_value_names_file_line_key_value_and_expectation() {
    let release = Release::new(&format!("{MINIMAL}\n## size\nmqtt.max_packet_size = abc\n"));
    assert_eq!(
        release.error(release.load()),
        "<root>/etc/emqx.conf:5: mqtt.max_packet_size: expected a size like 1MB, got \"abc\""
    );
}

#[test]
fn malformed_values_of_each_kind() {
    let cases = [
        (
            "zone.external.idle_timeout = soon",
            "expected a duration like 30s",
        ),
        (
            "mqtt.retain_available = yes",
            "expected true, false, on or off",
        ),
        (
            "zone.external.max_inflight = lots",
            "expected an integer from 1 to 65535",
        ),
        (
            "zone.external.max_keepalive = 1h",
            "expected an integer from 0 to 65535",
        ),
        (
            "listener.tcp.external = host:1883",
            "expected a port like 1883",
        ),
        (
            "retainer.max_payload_size = 1PB",
            "expected a size like 1MB",
        ),
    ];
    for (line, expected) in cases {
        let release = Release::new(&format!("{MINIMAL}{line}\n"));
        let key = line.split(" = ").next().unwrap();
        let message = release.error(release.load());
        let prefix = format!("<root>/etc/emqx.conf:3: {key}: {expected}");
        assert!(message.starts_with(&prefix), "{line}: {message}");
    }
}

#[test]
fn an_unknown_key_is_an_error_with_file_and_line() {
    let release = Release::new(&format!("{MINIMAL}mqtt.max_packet_sise = 1MB\n"));
    let message = release.error(release.load());
    assert!(
        message.starts_with("<root>/etc/emqx.conf:3: unknown key mqtt.max_packet_sise; "),
        "{message}"
    );
}

#[test]
fn a_missing_config_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etc/emqx.conf");
    let message = Config::load(&path, &[]).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("cannot read config file {}: ", path.display())),
        "{message}"
    );
}

#[test]
fn environment_overrides_win_over_files() {
    let release = Release::new(MINIMAL);
    let config = release
        .load_env(&[
            ("EMQX_LISTENER__TCP__EXTERNAL", "127.0.0.1:1884"),
            ("EMQX_NODE__DATA_DIR", "/tmp/d"),
            ("EMQX_NODE__NAME", "quay@10.0.0.1"),
            ("EMQX_ZONE__EXTERNAL__MAX_INFLIGHT", "64"),
            ("EMQX_LOG__DIR", "var/log"),
            ("EMQX_NODE_NAME", "ignored, no double underscore"),
            ("HOME", "/root"),
        ])
        .unwrap();
    assert_eq!(config.listeners[0].bind, "127.0.0.1:1884".parse().unwrap());
    assert_eq!(config.node.data_dir, Path::new("/tmp/d"));
    assert_eq!(config.node.name, "quay@10.0.0.1");
    assert_eq!(config.zone("external").max_inflight, 64);
    assert_eq!(config.log.dir, release.root().join("var/log"));
}

#[test]
fn an_unknown_environment_key_names_the_variable() {
    let release = Release::new(MINIMAL);
    let message = release.error(release.load_env(&[("EMQX_MQTT__NO_SUCH_KEY", "1")]));
    assert!(
        message.starts_with(
            "environment variable EMQX_MQTT__NO_SUCH_KEY: unknown key mqtt.no_such_key; "
        ),
        "{message}"
    );
}

#[test]
fn a_malformed_environment_value_names_the_variable() {
    let release = Release::new(MINIMAL);
    let message = release.error(release.load_env(&[("EMQX_MQTT__MAX_PACKET_SIZE", "big")]));
    assert_eq!(
        message,
        "environment variable EMQX_MQTT__MAX_PACKET_SIZE: mqtt.max_packet_size: \
         expected a size like 1MB, got \"big\""
    );
}

#[test]
fn plugin_files_load_in_name_order_after_the_main_file() {
    let release = Release::new(&format!("{MINIMAL}retainer.max_payload_size = 1KB\n"))
        .plugin("b_second.conf", "retainer.expiry_interval = 2h\n")
        .plugin(
            "a_first.conf",
            "retainer.expiry_interval = 1h\nretainer.max_payload_size = 2KB\n",
        )
        .plugin("notes.txt", "this is not config\n");
    let config = release.load().unwrap();
    assert_eq!(config.retainer.max_payload_size, 2048);
    assert_eq!(config.retainer.expiry_interval, Duration::from_secs(7200));
}

#[test]
fn errors_in_plugin_files_name_the_plugin_file() {
    let release =
        Release::new(MINIMAL).plugin("emqx_retainer.conf", "\nretainer.max_payload_size = x\n");
    assert_eq!(
        release.error(release.load()),
        "<root>/etc/plugins/emqx_retainer.conf:2: retainer.max_payload_size: \
         expected a size like 1MB, got \"x\""
    );
}

#[test]
fn environment_overrides_win_over_plugin_files() {
    let release =
        Release::new(MINIMAL).plugin("emqx_retainer.conf", "retainer.max_retained_messages = 5\n");
    let config = release
        .load_env(&[("EMQX_RETAINER__MAX_RETAINED_MESSAGES", "7")])
        .unwrap();
    assert_eq!(config.retainer.max_retained_messages, 7);
}

#[test]
fn a_listener_in_an_undefined_zone_is_an_error() {
    let release = Release::new("zone.external.max_inflight = 32\nlistener.tcp.external = 1883\nlistener.tcp.external.zone = edge\n");
    let message = release.error(release.load());
    assert!(
        message.starts_with(
            "<root>/etc/emqx.conf:3: listener.tcp.external.zone: listener \"external\" is in zone \"edge\", which is not defined"
        ),
        "{message}"
    );
    assert!(message.ends_with("defined zones: external)"), "{message}");
}

#[test]
fn a_listener_whose_default_zone_is_undefined_is_an_error() {
    let release = Release::new("listener.tcp.internal = 11883\n");
    let message = release.error(release.load());
    assert!(
        message.starts_with(
            "<root>/etc/emqx.conf:1: listener.tcp.internal: listener \"internal\" is in zone \"internal\""
        ),
        "{message}"
    );
    assert!(message.ends_with("defined zones: none)"), "{message}");
}

#[test]
fn a_listener_without_an_address_is_an_error() {
    let release = Release::new(&format!("{MINIMAL}listener.tcp.extra.acceptors = 4\n"));
    assert_eq!(
        release.error(release.load()),
        "<root>/etc/emqx.conf:3: listener.tcp.extra: listener \"extra\" has settings but no \
         address; add `listener.tcp.extra = <port | ip:port>`"
    );
}

#[test]
fn two_listeners_on_one_address_is_an_error() {
    let release = Release::new(&format!("{MINIMAL}listener.tcp.other = 0.0.0.0:1883\n"));
    assert_eq!(
        release.error(release.load()),
        "<root>/etc/emqx.conf:3: listener.tcp.other: address 0.0.0.0:1883 is already used by \
         listener.tcp.external"
    );
}

#[test]
fn listeners_may_share_port_zero() {
    let release = Release::new(&format!(
        "{MINIMAL}listener.tcp.external = 0\nlistener.tcp.other = 0\n"
    ));
    assert_eq!(release.load().unwrap().listeners.len(), 2);
}

#[test]
fn a_syntax_error_names_file_and_line() {
    let release = Release::new(&format!("{MINIMAL}this is not config\n"));
    assert_eq!(
        release.error(release.load()),
        "<root>/etc/emqx.conf:3: expected `key = value`, got \"this is not config\""
    );
}

#[test]
fn the_config_file_is_found_walking_up_from_a_directory() {
    let release = Release::new(MINIMAL);
    let deep = release.dir.path().join("target/release");
    fs::create_dir_all(&deep).unwrap();
    assert_eq!(
        find_config_upwards(&deep),
        Some(release.dir.path().join("etc/emqx.conf"))
    );
    let elsewhere = tempfile::tempdir().unwrap();
    assert_eq!(find_config_upwards(elsewhere.path()), None);
}

#[test]
fn ssl_listener_keys() {
    let text = "listener.ssl.s = 127.0.0.1:8884\n\
                listener.ssl.s.verify = verify_peer\n\
                listener.ssl.s.fail_if_no_peer_cert = true\n\
                listener.ssl.s.tls_versions = tlsv1.2\n\
                listener.ssl.s.ciphers = ECDHE-RSA-AES128-GCM-SHA256, TLS_AES_128_GCM_SHA256\n\
                listener.ssl.s.peer_cert_as_username = dn\n\
                listener.ssl.s.handshake_timeout = 2s\n\
                listener.ssl.s.keyfile = k.pem\n\
                zone.external.max_inflight = 32\n";
    let config = Release::new(text).load().unwrap();
    let listener = &config.listeners[0];
    assert_eq!(listener.id(), "mqtt:ssl:s");
    let tls = listener.tls.as_ref().unwrap();
    assert_eq!(tls.verify, TlsVerify::VerifyPeer);
    assert!(tls.fail_if_no_peer_cert);
    assert_eq!(tls.tls_versions, ["tlsv1.2"]);
    assert_eq!(
        tls.ciphers,
        ["ECDHE-RSA-AES128-GCM-SHA256", "TLS_AES_128_GCM_SHA256"]
    );
    assert_eq!(tls.peer_cert_as_username, Some(CertField::Dn));
    assert_eq!(tls.handshake_timeout, Duration::from_secs(2));
    assert!(tls.keyfile.is_absolute() && tls.keyfile.ends_with("k.pem"));
}

#[test]
fn bad_listener_values_name_the_key() {
    for (line, wants) in [
        (
            "listener.ssl.s.verify = maybe",
            "verify_peer or verify_none",
        ),
        ("listener.ssl.s.tls_versions = sslv3", "TLS versions from"),
        ("listener.ssl.s.peer_cert_as_username = email", "cn or dn"),
        (
            "listener.tcp.t.keyfile = k.pem",
            "listener.tcp.<name>.* keys",
        ),
        (
            "listener.ws.w.mqtt_path = mqtt",
            "an HTTP path starting with /",
        ),
        (
            "listener.ws.w.supported_subprotocols = ,",
            "at least one subprotocol",
        ),
        ("listener.ws.w.keyfile = k.pem", "listener.ws.<name>.* keys"),
        (
            "listener.tcp.t.mqtt_path = /mqtt",
            "listener.tcp.<name>.* keys",
        ),
        ("listener.tcp.t.access.1 = permit all", "`allow` or `deny`"),
        ("listener.wss.t.access.x = allow all", "access.<N>"),
        ("listener.ws.t.proxy_protocol = yes", "on or off"),
        ("listener.ssl.t.proxy_protocol_timeout = 3", "with a unit"),
        ("listener.tcp.t.max_conn_rate = -1", "integer"),
        ("listener.tcp.t.mountpoint = a/+/", "without wildcards"),
        ("zone.z.mountpoint = +/x", "without wildcards"),
    ] {
        let err = Release::new(&format!("{line}\n"))
            .load()
            .unwrap_err()
            .to_string();
        assert!(err.contains(wants), "{line}: {err}");
        assert!(err.contains("emqx.conf:1"), "{line}: {err}");
    }
}

#[test]
fn ws_and_wss_listener_keys() {
    let text = "listener.ws.w = 127.0.0.1:9083\n\
                listener.ws.w.mqtt_path = /ws\n\
                listener.ws.w.fail_if_no_subprotocol = false\n\
                listener.ws.w.supported_subprotocols = mqtt, mqttv3.1\n\
                listener.wss.s = 127.0.0.1:9084\n\
                listener.wss.s.mqtt_path = /secure\n\
                listener.wss.s.verify = verify_peer\n\
                listener.wss.s.handshake_timeout = 3s\n\
                zone.external.max_inflight = 32\n";
    let config = Release::new(text).load().unwrap();
    let ids: Vec<_> = config.listeners.iter().map(|l| l.id()).collect();
    assert_eq!(ids, ["mqtt:ws:w", "mqtt:wss:s"]);
    let ws = config.listeners[0].ws.as_ref().unwrap();
    assert_eq!(ws.mqtt_path, "/ws");
    assert!(!ws.fail_if_no_subprotocol);
    assert_eq!(ws.supported_subprotocols, ["mqtt", "mqttv3.1"]);
    assert!(config.listeners[0].tls.is_none());
    let wss = &config.listeners[1];
    assert_eq!(wss.ws.as_ref().unwrap().mqtt_path, "/secure");
    let tls = wss.tls.as_ref().unwrap();
    assert_eq!(tls.verify, TlsVerify::VerifyPeer);
    assert_eq!(tls.handshake_timeout, Duration::from_secs(3));
    assert!(tls.certfile.is_absolute());
}

#[test]
fn per_listener_options_on_every_kind() {
    for proto in ["tcp", "ssl", "ws", "wss"] {
        let text = format!(
            "listener.{proto}.p = 127.0.0.1:9999\n\
             listener.{proto}.p.proxy_protocol = on\n\
             listener.{proto}.p.proxy_protocol_timeout = 500ms\n\
             listener.{proto}.p.access.2 = deny all\n\
             listener.{proto}.p.access.1 = allow 127.0.0.0/8\n\
             listener.{proto}.p.max_conn_rate = 50\n\
             listener.{proto}.p.mountpoint = devices/%c/\n\
             zone.external.mountpoint = zone/\n"
        );
        let config = Release::new(&text).load().unwrap();
        let l = &config.listeners[0];
        assert!(l.proxy_protocol, "{proto}");
        assert_eq!(l.proxy_protocol_timeout, Duration::from_millis(500));
        let rules: Vec<String> = l.access.iter().map(ToString::to_string).collect();
        assert_eq!(
            rules,
            ["allow 127.0.0.0/8", "deny all"],
            "N's order, not the file's"
        );
        assert_eq!(l.max_conn_rate, Some(50));
        assert_eq!(l.mountpoint.as_deref(), Some("devices/%c/"));
        assert_eq!(
            config.zones["external"].mountpoint.as_deref(),
            Some("zone/")
        );
    }
    let plain = Release::new("listener.tcp.p = 127.0.0.1:9999\nzone.external.max_inflight = 32\n")
        .load()
        .unwrap();
    let l = &plain.listeners[0];
    assert!(!l.proxy_protocol && l.access.is_empty() && l.mountpoint.is_none());
    assert_eq!(l.max_conn_rate, None);
    assert_eq!(l.proxy_protocol_timeout, Duration::from_secs(3));
}

#[test]
fn psk_ciphers_on_ssl_listeners_and_the_psk_file_from_its_plugin() {
    let release = Release::new(
        "zone.external.idle_timeout = 15s\n\
         listener.ssl.psk = 8885\n\
         listener.ssl.psk.psk_ciphers = PSK-AES128-GCM-SHA256, PSK-AES128-CBC-SHA\n",
    )
    .plugin(
        "emqx_psk_file.conf",
        "psk.file.path = etc/devices.psk\npsk.file.delimiter = =>\n",
    );
    let config = release.load().unwrap();
    let tls = config.listeners[0].tls.as_ref().unwrap();
    assert_eq!(
        tls.psk_ciphers,
        ["PSK-AES128-GCM-SHA256", "PSK-AES128-CBC-SHA"]
    );
    assert_eq!(config.psk.path, release.root().join("etc/devices.psk"));
    assert_eq!(config.psk.delimiter, "=>");
    // Only `listener.ssl` takes it (not WSS, not TCP), and never empty.
    for (key, expected) in [
        (
            "listener.wss.x.psk_ciphers = PSK-AES128-CBC-SHA",
            "unknown key",
        ),
        (
            "listener.tcp.x.psk_ciphers = PSK-AES128-CBC-SHA",
            "unknown key",
        ),
        (
            "listener.ssl.x.psk_ciphers = ,",
            "at least one PSK cipher suite name",
        ),
        (
            "psk.file.sep = :",
            "unknown key psk.file.sep; psk.file.* keys: path, delimiter",
        ),
    ] {
        let release = Release::new(&format!("{key}\n"));
        let message = release.error(release.load());
        assert!(message.contains(expected), "{key}: {message}");
    }
}

#[test]
fn the_acl_cache_keys_and_off_whatever_the_order() {
    let r = Release::new(&format!(
        "{MINIMAL}acl_cache_max_size = 8\nacl_cache_ttl = 5s\n"
    ));
    assert_eq!(
        r.load().unwrap().access.acl_cache,
        Some(AclCacheConfig {
            max_size: 8,
            ttl: Duration::from_secs(5)
        })
    );
    let r = Release::new(&format!(
        "{MINIMAL}enable_acl_cache = off\nacl_cache_max_size = 8\n"
    ));
    assert_eq!(r.load().unwrap().access.acl_cache, None);
    let r = Release::new(&format!("{MINIMAL}acl_cache_max_size = 0\n"));
    assert!(r.error(r.load()).contains("acl_cache_max_size"));
    let env = r.load_env(&[("EMQX_ENABLE_ACL_CACHE", "false")]);
    assert!(env.is_err(), "the file's bad size still fails");
}

#[test]
fn plugin_sections_are_kept_raw_with_their_origin_and_env_overrides() {
    let r = Release::new(MINIMAL).plugin(
        "emqx_auth_redis.conf",
        "auth.redis.server = 127.0.0.1:6379\nauth.redis.pool = 8\n",
    );
    let c = r.load_env(&[("EMQX_AUTH__REDIS__POOL", "4")]).unwrap();
    let keys = &c.plugins.keys;
    assert_eq!(
        keys.get("auth.redis.server").unwrap().value,
        "127.0.0.1:6379"
    );
    let pool = keys.get("auth.redis.pool").unwrap();
    assert_eq!(pool.value, "4");
    assert_eq!(
        pool.origin.to_string(),
        "environment variable EMQX_AUTH__REDIS__POOL"
    );
    assert_eq!(
        c.loaded_plugins_file(),
        r.root().join("data/loaded_plugins")
    );
    let r = Release::new(&format!("{MINIMAL}plugins.loaded_file = var/lp\n"));
    assert_eq!(
        r.load().unwrap().loaded_plugins_file(),
        r.root().join("var/lp")
    );
}
