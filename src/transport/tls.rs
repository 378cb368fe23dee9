//! An SSL listener's TLS settings, built once at start from `listener.ssl.<name>.*`:
//! certificates and key from PEM files, client verification, versions and cipher
//! suites (rustls, with ring's primitives; OpenSSL for a listener with `psk_ciphers`,
//! see `psk.rs`). Errors name the file or key that is wrong.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};

use super::psk::PskServer;
use super::psk_file::PskTable;
use super::Transport;
use crate::config::{CertField, ListenerConfig, TlsConfig, TlsVerify};
use crate::hooks::CertIdentity;

/// What a TLS listener's connections need.
pub struct TlsListener {
    pub server: TlsServer,
    pub handshake_timeout: Duration,
    pub peer_cert_as_username: Option<CertField>,
}

/// Which TLS library serves the listener: rustls, or OpenSSL where clients may
/// bring a pre-shared key (`psk_ciphers`), which rustls does not implement.
pub enum TlsServer {
    Rustls(Arc<ServerConfig>),
    Psk(PskServer),
}

/// Why an SSL listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("listener {listener}: cannot read {what} {path}: {reason}")]
    File {
        listener: String,
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("listener {listener}: {problem}")]
    Settings { listener: String, problem: String },
}

impl TlsListener {
    /// Build the listener's TLS settings; `None` for a plain TCP listener. `psk`:
    /// the node's PSK identities, which a listener with `psk_ciphers` needs.
    pub fn for_listener(
        l: &ListenerConfig,
        psk: Option<&Arc<PskTable>>,
    ) -> Result<Option<Arc<TlsListener>>, TlsSetupError> {
        let Some(tls) = &l.tls else { return Ok(None) };
        let server = match (tls.psk_ciphers.is_empty(), psk) {
            (true, _) => TlsServer::Rustls(Arc::new(server_config(&l.id(), tls)?)),
            (false, Some(table)) => TlsServer::Psk(PskServer::new(&l.id(), tls, table.clone())?),
            (false, None) => {
                return Err(TlsSetupError::Settings {
                    listener: l.id(),
                    problem: "psk_ciphers is set but no PSK file was loaded".into(),
                })
            }
        };
        Ok(Some(Arc::new(TlsListener {
            server,
            handshake_timeout: tls.handshake_timeout,
            peer_cert_as_username: tls.peer_cert_as_username,
        })))
    }
}

impl TlsListener {
    /// A new connection's TLS session, ready for its handshake.
    pub(crate) fn session(&self) -> Result<Transport, String> {
        match &self.server {
            TlsServer::Rustls(config) => rustls::ServerConnection::new(config.clone())
                .map(|s| Transport::tls(Box::new(s)))
                .map_err(|e| e.to_string()),
            TlsServer::Psk(server) => server.session().map(|s| Transport::psk(Box::new(s))),
        }
    }
}

fn server_config(listener: &str, tls: &TlsConfig) -> Result<ServerConfig, TlsSetupError> {
    let settings = |problem: String| TlsSetupError::Settings {
        listener: listener.to_string(),
        problem,
    };
    let file_error = |what: &'static str, path: &Path, reason: String| TlsSetupError::File {
        listener: listener.to_string(),
        what,
        path: path.display().to_string(),
        reason,
    };
    let certs = read_certs(&tls.certfile)
        .map_err(|reason| file_error("certfile", &tls.certfile, reason))?;
    let key = PrivateKeyDer::from_pem_file(&tls.keyfile)
        .map_err(|e| file_error("keyfile", &tls.keyfile, e.to_string()))?;
    let provider = Arc::new(provider(listener, &tls.ciphers).map_err(settings)?);
    let versions = versions(listener, &tls.tls_versions).map_err(settings)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| settings(format!("tls_versions and ciphers do not fit together: {e}")))?;
    let builder = match tls.verify {
        TlsVerify::VerifyNone => builder.with_no_client_auth(),
        TlsVerify::VerifyPeer => {
            let Some(cafile) = &tls.cacertfile else {
                return Err(settings("verify = verify_peer needs a cacertfile".into()));
            };
            let mut roots = RootCertStore::empty();
            let cas =
                read_certs(cafile).map_err(|reason| file_error("cacertfile", cafile, reason))?;
            for ca in cas {
                roots
                    .add(ca)
                    .map_err(|e| file_error("cacertfile", cafile, e.to_string()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if tls.fail_if_no_peer_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| settings(format!("client verification: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| settings(format!("certfile and keyfile do not match: {e}")))?;
    // Stateless session tickets (keys rotated every 6 h): a fleet reconnecting after a
    // network blip resumes without the certificate signature, and the node keeps no
    // per-session state for it (rustls's default cache holds only 256 sessions).
    config.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| settings(format!("session tickets: {e}")))?;
    Ok(config)
}

/// Every certificate in a PEM file; at least one.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE in it".into());
    }
    Ok(certs)
}

/// ring's primitives with the cipher suites `ciphers` names (OpenSSL or IANA names);
/// names rustls does not implement (CBC, DHE, RSA key exchange) are logged and
/// skipped, as they would be refused by any modern client anyway.
pub(crate) fn provider(listener: &str, ciphers: &[String]) -> Result<CryptoProvider, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    if ciphers.is_empty() {
        return Ok(provider);
    }
    let mut chosen: Vec<SupportedCipherSuite> = Vec::new();
    let mut skipped = Vec::new();
    for name in ciphers {
        match provider
            .cipher_suites
            .iter()
            .find(|s| suite_names(s).iter().any(|n| n.eq_ignore_ascii_case(name)))
        {
            Some(suite) if !chosen.contains(suite) => chosen.push(*suite),
            Some(_) => {}
            None => skipped.push(name.as_str()),
        }
    }
    if !skipped.is_empty() {
        tracing::warn!(
            listener,
            ?skipped,
            "cipher suites not implemented by rustls; skipped"
        );
    }
    if chosen.is_empty() {
        return Err(format!(
            "none of the ciphers is implemented; use some of {}",
            provider
                .cipher_suites
                .iter()
                .map(|s| suite_names(s)[0])
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    provider.cipher_suites = chosen;
    Ok(provider)
}

/// The OpenSSL name and the IANA name of a suite.
fn suite_names(suite: &SupportedCipherSuite) -> [&'static str; 2] {
    use rustls::CipherSuite as C;
    let openssl = match suite.suite() {
        C::TLS13_AES_256_GCM_SHA384 => "TLS_AES_256_GCM_SHA384",
        C::TLS13_AES_128_GCM_SHA256 => "TLS_AES_128_GCM_SHA256",
        C::TLS13_CHACHA20_POLY1305_SHA256 => "TLS_CHACHA20_POLY1305_SHA256",
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => "ECDHE-ECDSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => "ECDHE-ECDSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-ECDSA-CHACHA20-POLY1305",
        C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => "ECDHE-RSA-AES256-GCM-SHA384",
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => "ECDHE-RSA-AES128-GCM-SHA256",
        C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => "",
    };
    [openssl, suite.suite().as_str().unwrap_or("")]
}

/// The versions `tls_versions` names that rustls speaks (1.3, 1.2); the older ones
/// are logged and not offered.
pub(crate) fn versions(
    listener: &str,
    names: &[String],
) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let mut versions = Vec::new();
    for name in names {
        match name.as_str() {
            "tlsv1.3" => versions.push(&rustls::version::TLS13),
            "tlsv1.2" => versions.push(&rustls::version::TLS12),
            old => {
                tracing::warn!(
                    listener,
                    version = old,
                    "TLS version below 1.2 is not offered"
                );
            }
        }
    }
    if versions.is_empty() {
        return Err("tls_versions names neither tlsv1.3 nor tlsv1.2".into());
    }
    Ok(versions)
}

/// The subject of the client's certificate, if it sent one (verified by then).
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<CertIdentity> {
    cert_identity(conn.peer_certificates()?.first()?.as_ref())
}

/// The subject of a DER certificate.
pub fn cert_identity(der: &[u8]) -> Option<CertIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(Arc::from);
    Some(CertIdentity {
        cn,
        dn: Some(Arc::from(subject.to_string().as_str())),
    })
}
