//! One MQTT connection to the remote broker, as a client: TCP or TLS (rustls with
//! certificates; OpenSSL with a pre-shared key when `psk_ciphers` is set, see
//! `transport/psk_client.rs`), the CONNECT/CONNACK exchange, and packets in and out
//! over the broker's own codec.
//!
//! Writes are gathered (`queue`) and sent together (`flush`): a window of PUBLISHes
//! costs one write, not one per message. `recv` is cancel-safe (bytes read are kept
//! in the buffer), so the driver can race it against its timers.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::config::{BridgeConfig, TlsSettings};
use crate::codec::{self, Connect, Packet, Properties, ProtocolVersion};
use crate::config::PskConfig;
use crate::transport::psk_client::PskClient;

/// Why a connection ended or could not start (logged, then retried).
pub type Failure = String;

/// The most bytes of one packet from the remote we decode.
const MAX_PACKET_IN: usize = 256 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Flush once this much is gathered even in the middle of a batch.
const FLUSH_BYTES: usize = 256 << 10;
/// v5 session expiry asked for when `clean_start = false`: the remote keeps the
/// bridge's subscriptions and queued messages through an outage this long.
const SESSION_EXPIRY_S: u32 = 2 * 60 * 60;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What the remote's CONNACK allows (v5), or the protocol's defaults.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Receive Maximum: QoS 1/2 PUBLISHes it takes unacknowledged.
    pub receive_max: Option<usize>,
    /// Maximum Packet Size it accepts.
    pub max_packet: usize,
    /// Keep alive in force (Server Keep Alive overrides ours).
    pub keepalive: Duration,
}

pub struct Remote {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    version: ProtocolVersion,
    pub limits: Limits,
}

/// How a bridge with `ssl = on` speaks TLS.
pub enum TlsClient {
    /// rustls, the remote proving itself with a certificate.
    Certificates(TlsConnector),
    /// OpenSSL with a pre-shared key (`psk_ciphers`).
    Psk(PskClient),
}

/// The TLS client settings of a bridge with `ssl = on`, built once at start so a bad
/// setting or file is reported then, naming it. `psk_file`: where the keys of a
/// bridge with `psk_ciphers` are.
pub fn tls_client(
    bridge: &str,
    tls: &TlsSettings,
    psk_file: &PskConfig,
) -> Result<TlsClient, String> {
    let label = format!("bridge {bridge}");
    if tls.psk_ciphers.is_empty() {
        return tls_connector(&label, tls).map(TlsClient::Certificates);
    }
    let unused: Vec<&str> = [
        ("cacertfile", tls.cacertfile.is_some()),
        ("certfile", tls.certfile.is_some()),
        ("keyfile", tls.keyfile.is_some()),
    ]
    .iter()
    .filter_map(|(key, set)| set.then_some(*key))
    .collect();
    if !unused.is_empty() {
        tracing::warn!(bridge, ?unused, "with psk_ciphers the key authenticates both ends; these certificate settings are not used");
    }
    let client = PskClient::new(
        &label,
        &tls.psk_ciphers,
        &tls.tls_versions,
        tls.psk_identity.as_deref(),
        psk_file,
    )?;
    client.check_file()?;
    Ok(TlsClient::Psk(client))
}

fn tls_connector(label: &str, tls: &TlsSettings) -> Result<TlsConnector, String> {
    let provider = Arc::new(crate::transport::tls::provider(label, &tls.ciphers)?);
    let versions = crate::transport::tls::versions(label, &tls.tls_versions)?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| format!("{label}: tls_versions and ciphers do not fit together: {e}"))?;
    let mut roots = RootCertStore::empty();
    match &tls.cacertfile {
        Some(path) => {
            for ca in crate::transport::tls::read_certs(path).map_err(|e| file(label, path, e))? {
                roots
                    .add(ca)
                    .map_err(|e| file(label, path, e.to_string()))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for ca in found.certs {
                let _ = roots.add(ca);
            }
        }
    }
    let builder = builder.with_root_certificates(roots);
    let config = match (&tls.certfile, &tls.keyfile) {
        (Some(cert), Some(key)) => {
            let certs =
                crate::transport::tls::read_certs(cert).map_err(|e| file(label, cert, e))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| file(label, key, e.to_string()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("{label}: certfile and keyfile do not match: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(format!("{label}: certfile and keyfile go together")),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

fn file(label: &str, path: &Path, why: String) -> String {
    format!("{label}: cannot read {}: {why}", path.display())
}

impl Remote {
    /// Connect to `addr` (host:port), over TLS when `tls` is given, and log in.
    pub async fn connect(
        cfg: &BridgeConfig,
        addr: &str,
        tls: Option<&TlsClient>,
    ) -> Result<Remote, Failure> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr}: timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some(TlsClient::Psk(client)) => {
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, client.connect(tcp))
                    .await
                    .map_err(|_| format!("TLS handshake with {addr}: timed out"))?
                    .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                Box::new(stream)
            }
            Some(TlsClient::Certificates(connector)) => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let name = match host.parse::<IpAddr>() {
                    Ok(ip) => ServerName::IpAddress(ip.into()),
                    Err(_) => ServerName::try_from(host.to_string())
                        .map_err(|e| format!("TLS server name {host:?}: {e}"))?,
                };
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
                    .await
                    .map_err(|_| format!("TLS handshake with {addr}: timed out"))?
                    .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
                Box::new(stream)
            }
        };
        let mut remote = Remote {
            io,
            rbuf: BytesMut::with_capacity(16 << 10),
            wbuf: BytesMut::with_capacity(16 << 10),
            version: cfg.proto_ver,
            limits: Limits {
                receive_max: None,
                max_packet: MAX_PACKET_IN,
                keepalive: cfg.keepalive,
            },
        };
        let mut properties = Properties::default();
        if cfg.proto_ver.is_v5() && !cfg.clean_start {
            properties.session_expiry_interval = Some(SESSION_EXPIRY_S);
        }
        remote.queue(&Packet::Connect(Box::new(Connect {
            protocol: cfg.proto_ver,
            clean_start: cfg.clean_start,
            keep_alive: cfg.keepalive.as_secs().min(65_535) as u16,
            properties,
            client_id: cfg.client_id.clone(),
            will: None,
            username: cfg.username.clone(),
            password: cfg.password.clone().map(Bytes::from),
        })))?;
        remote.flush().await?;
        let ack = tokio::time::timeout(CONNECT_TIMEOUT, remote.recv())
            .await
            .map_err(|_| format!("no CONNACK from {addr} within 10s"))??;
        match ack {
            Packet::ConnAck(a) if !a.reason.is_error() => {
                let p = &a.properties;
                remote.limits.receive_max = p.receive_maximum.map(usize::from);
                if let Some(max) = p.maximum_packet_size {
                    remote.limits.max_packet = max as usize;
                }
                if let Some(k) = p.server_keep_alive {
                    remote.limits.keepalive = Duration::from_secs(k.into());
                }
                Ok(remote)
            }
            Packet::ConnAck(a) => Err(format!(
                "{addr} refused CONNECT: {} ({:#04x})",
                a.reason.description(),
                a.reason.0
            )),
            p => Err(format!("{addr} answered CONNECT with {}", p.name())),
        }
    }

    /// Add `p` to what the next `flush` sends. False (nothing queued) when it is
    /// larger than the remote accepts.
    pub fn queue(&mut self, p: &Packet) -> Result<bool, Failure> {
        let before = self.wbuf.len();
        codec::encode(p, self.version, &mut self.wbuf)
            .map_err(|e| format!("cannot encode {}: {e}", p.name()))?;
        if self.wbuf.len() - before > self.limits.max_packet {
            self.wbuf.truncate(before);
            return Ok(false);
        }
        Ok(true)
    }

    /// Whether enough is gathered to send it before queueing more.
    pub fn full(&self) -> bool {
        self.wbuf.len() >= FLUSH_BYTES
    }

    /// Send what is queued; whether there was anything.
    pub async fn flush(&mut self) -> Result<bool, Failure> {
        if self.wbuf.is_empty() {
            return Ok(false);
        }
        let out = self.wbuf.split();
        self.io
            .write_all(&out)
            .await
            .map_err(|e| format!("write: {e}"))?;
        self.io.flush().await.map_err(|e| format!("write: {e}"))?;
        Ok(true)
    }

    /// A packet already read, if one is whole in the buffer.
    pub fn try_next(&mut self) -> Result<Option<Packet>, Failure> {
        codec::decode(&mut self.rbuf, self.version, MAX_PACKET_IN)
            .map_err(|e| format!("bad packet from the remote: {e}"))
    }

    /// The next packet. Cancel-safe.
    pub async fn recv(&mut self) -> Result<Packet, Failure> {
        loop {
            if let Some(p) = self.try_next()? {
                return Ok(p);
            }
            let n = self
                .io
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("the remote closed the connection".into());
            }
        }
    }
}
