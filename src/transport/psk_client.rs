//! TLS-PSK as a client: the MQTT bridge's `bridge.mqtt.<name>.psk_ciphers`. rustls
//! has no PSK, so this is the system's OpenSSL, as on the PSK listener (`psk.rs`),
//! with the keys from the same PSK file (`psk.file.path`, `psk_file.rs`).
//!
//! Which identity and key, as EMQX 4's bridge client does it unless told otherwise:
//! - `psk_identity` set: that identity is sent, with its key from the PSK file
//!   (what Mosquitto's `bridge_identity` + `bridge_psk` do). TLS 1.2 and 1.3.
//! - not set (EMQX 4, whose Erlang client looks the key up by the server's identity
//!   hint and sends Erlang's default identity): the key is the PSK file's entry for
//!   the hint the remote sends, and the identity sent is `psk_identity`, literally.
//!   TLS 1.3 has no hint, so this is TLS 1.2 only.
//!
//! The PSK file is read again on every connection attempt: a corrected key is used
//! from the next attempt on. The key authenticates the remote; a handshake that
//! ended without it (a TLS 1.3 server going on with a certificate) is refused. No
//! key ever reaches a log line or an error.
//!
//! The connection itself, the socket and the OpenSSL session moved by tokio's
//! readiness, is `PskStream` (`psk_stream.rs`).

use std::path::PathBuf;
use std::sync::OnceLock;

use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslRef, SslStream, SslVerifyMode,
    SslVersion,
};
use tokio::net::TcpStream;

use super::pipe::Pipe;
use super::psk::{looks_like_a_wrong_key, offered, openssl_reason, versions};
use super::psk_file::{PskTable, MAX_IDENTITY_LEN};
pub use super::psk_stream::PskStream;
use crate::config::PskConfig;

/// The identity sent when `psk_identity` is not set: what Erlang's ssl client (and so
/// EMQX 4's bridge) sends when it was given none.
pub const EMQX_DEFAULT_IDENTITY: &str = "psk_identity";

/// The TLS 1.3 suites offered: a key from the PSK callback is bound to SHA-256, so
/// only suites with that hash can use it.
const TLS13_PSK_SUITES: &str = "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";

/// A bridge's PSK client settings, built once at start so a bad setting is reported
/// then, naming it.
pub struct PskClient {
    /// "bridge <name>", for errors and logs.
    label: String,
    ctx: SslContext,
    index: Index<Ssl, Lookup>,
    identity: Option<Box<[u8]>>,
    file: PathBuf,
    delimiter: String,
}

impl std::fmt::Debug for PskClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskClient")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// One connection's key lookup, kept on its `Ssl` for the PSK callback.
struct Lookup {
    table: PskTable,
    identity: Option<Box<[u8]>>,
    file: PathBuf,
    /// What the callback did: the identity sent (and the hint whose key was used),
    /// or why it gave no key.
    outcome: Option<Result<Used, String>>,
}

struct Used {
    identity: Box<[u8]>,
    hint: Option<Box<[u8]>>,
}

impl Lookup {
    /// Fill in the identity and key for a remote that sent `hint`; the key's length.
    fn choose(
        &self,
        hint: Option<&[u8]>,
        identity_out: &mut [u8],
        key_out: &mut [u8],
    ) -> Result<(usize, Used), String> {
        let (identity, by_hint) = match (&self.identity, hint) {
            (Some(identity), _) => (&**identity, None),
            (None, Some(hint)) if !hint.is_empty() => {
                (EMQX_DEFAULT_IDENTITY.as_bytes(), Some(hint))
            }
            (None, _) => {
                return Err(
                    "the remote sent no PSK identity hint to choose a key by; set \
                     psk_identity"
                        .into(),
                )
            }
        };
        let key_of = by_hint.unwrap_or(identity);
        let Some(key) = self.table.key(key_of) else {
            let whose = match by_hint {
                Some(_) => "the remote's identity hint",
                None => "PSK identity",
            };
            return Err(format!(
                "no key for {whose} {:?} in {}",
                String::from_utf8_lossy(key_of),
                self.file.display()
            ));
        };
        // OpenSSL's buffers hold its maximum lengths, which the PSK file enforces.
        if identity.len() >= identity_out.len() || key.len() > key_out.len() {
            return Err("the PSK identity or key is longer than OpenSSL takes".into());
        }
        identity_out[..identity.len()].copy_from_slice(identity);
        identity_out[identity.len()] = 0;
        key_out[..key.len()].copy_from_slice(key);
        Ok((
            key.len(),
            Used {
                identity: identity.into(),
                hint: by_hint.map(Into::into),
            },
        ))
    }
}

/// The `Ssl` slot holding `Lookup`.
fn lookup_index() -> Result<Index<Ssl, Lookup>, ErrorStack> {
    static INDEX: OnceLock<Index<Ssl, Lookup>> = OnceLock::new();
    if let Some(index) = INDEX.get() {
        return Ok(*index);
    }
    let index = Ssl::new_ex_index()?;
    Ok(*INDEX.get_or_init(|| index))
}

impl PskClient {
    /// `label` ("bridge <name>") starts every error and names the bridge in logs.
    pub fn new(
        label: &str,
        psk_ciphers: &[String],
        tls_versions: &[String],
        identity: Option<&str>,
        psk_file: &PskConfig,
    ) -> Result<PskClient, String> {
        let openssl = |e: ErrorStack| format!("{label}: OpenSSL: {}", openssl_reason(&e));
        if let Some(id) = identity {
            if id.is_empty() || id.len() > MAX_IDENTITY_LEN {
                return Err(format!(
                    "{label}: psk_identity must be 1 to {MAX_IDENTITY_LEN} bytes"
                ));
            }
        }
        let index = lookup_index().map_err(openssl)?;
        let mut b = SslContextBuilder::new(SslMethod::tls_client()).map_err(openssl)?;
        let (min, mut max) = versions(label, tls_versions).map_err(|e| format!("{label}: {e}"))?;
        if identity.is_none() && max == SslVersion::TLS1_3 {
            if min == SslVersion::TLS1_3 {
                return Err(format!(
                    "{label}: tls_versions = tlsv1.3 needs psk_identity: TLS 1.3 sends no \
                     identity hint to choose a key by"
                ));
            }
            max = SslVersion::TLS1_2;
        }
        b.set_min_proto_version(Some(min)).map_err(openssl)?;
        b.set_max_proto_version(Some(max)).map_err(openssl)?;
        let suites = offered(label, "psk_ciphers", psk_ciphers);
        if suites.is_empty() {
            return Err(format!(
                "{label}: none of the psk_ciphers is offered by this OpenSSL ({}); use e.g. \
                 PSK-AES256-GCM-SHA384,PSK-AES128-GCM-SHA256,PSK-AES128-CBC-SHA",
                openssl::version::version()
            ));
        }
        b.set_cipher_list(&suites.join(":"))
            .map_err(|e| format!("{label}: psk_ciphers: {}", openssl_reason(&e)))?;
        b.set_ciphersuites(TLS13_PSK_SUITES).map_err(openssl)?;
        // The key authenticates the remote; a certificate, if one comes, is not
        // what this connection trusts (see `check_psk_used`).
        b.set_verify(SslVerifyMode::NONE);
        b.set_options(SslOptions::NO_RENEGOTIATION | SslOptions::NO_TICKET);
        b.set_psk_client_callback(move |ssl: &mut SslRef, hint, identity_out, key_out| {
            let Some(lookup) = ssl.ex_data_mut(index) else {
                return Ok(0);
            };
            let (len, outcome) = match lookup.choose(hint, identity_out, key_out) {
                Ok((len, used)) => (len, Ok(used)),
                Err(why) => (0, Err(why)),
            };
            lookup.outcome = Some(outcome);
            // 0: no key; OpenSSL ends the handshake (TLS 1.2) or offers no PSK (1.3).
            Ok(len)
        });
        Ok(PskClient {
            label: label.to_string(),
            ctx: b.build(),
            index,
            identity: identity.map(|id| id.as_bytes().into()),
            file: psk_file.path.clone(),
            delimiter: psk_file.delimiter.clone(),
        })
    }

    /// TLS-PSK over `tcp`: read the PSK file, shake hands. Err: why, naming the
    /// identity and the file, never the key.
    pub async fn connect(&self, tcp: TcpStream) -> Result<PskStream, String> {
        let text = tokio::fs::read_to_string(&self.file).await.map_err(|e| {
            format!(
                "cannot read the PSK file {} (psk.file.path): {e}",
                self.file.display()
            )
        })?;
        // Malformed lines were logged when the bridge started; here they only miss.
        let (table, _) = PskTable::parse(&text, &self.delimiter);
        let openssl = |e: ErrorStack| openssl_reason(&e);
        let mut ssl = Ssl::new(&self.ctx).map_err(openssl)?;
        ssl.set_ex_data(
            self.index,
            Lookup {
                table,
                identity: self.identity.clone(),
                file: self.file.clone(),
                outcome: None,
            },
        );
        ssl.set_connect_state();
        let tls = SslStream::new(ssl, Pipe::default()).map_err(openssl)?;
        let mut stream = PskStream::new(tcp, tls);
        if let Err(reason) = stream.handshake().await {
            return Err(failure(stream.ssl(), self.index, reason));
        }
        check_psk_used(stream.ssl(), self.index)?;
        Ok(stream)
    }

    /// Check the PSK file can be read now (at start), logging its malformed lines.
    pub fn check_file(&self) -> Result<(), String> {
        let label = &self.label;
        let table = PskTable::load(&self.file, &self.delimiter).map_err(|e| {
            format!(
                "{label}: cannot read the PSK file {} (psk.file.path): {e}",
                self.file.display()
            )
        })?;
        if let Some(id) = &self.identity {
            if table.key(id).is_none() {
                tracing::warn!(tls_for = %label, identity = %String::from_utf8_lossy(id), file = %self.file.display(), "psk_identity has no key in the PSK file; the bridge cannot connect until it has one");
            }
        }
        Ok(())
    }
}

/// The handshake is done: refuse one that did not use the key. In TLS 1.2 the only
/// suites offered are PSK suites, so it was used if the callback gave one; in TLS 1.3
/// the server may pass the key over and go on with a certificate.
fn check_psk_used(ssl: &SslRef, index: Index<Ssl, Lookup>) -> Result<(), String> {
    let gave_key = matches!(
        ssl.ex_data(index).and_then(|l| l.outcome.as_ref()),
        Some(Ok(_))
    );
    let tls13 = ssl.version2() == Some(SslVersion::TLS1_3);
    if !gave_key || (tls13 && !ssl.session_reused()) {
        return Err(failure(
            ssl,
            index,
            "the remote did not take the pre-shared key (it went on without one)".into(),
        ));
    }
    Ok(())
}

/// Why the handshake failed: the lookup's own reason when it gave no key, else
/// OpenSSL's with the identity sent.
fn failure(ssl: &SslRef, index: Index<Ssl, Lookup>, reason: String) -> String {
    match ssl.ex_data(index).and_then(|l| l.outcome.as_ref()) {
        Some(Err(why)) => why.clone(),
        Some(Ok(used)) => {
            let by_hint = match &used.hint {
                Some(hint) => format!(
                    ", key of the remote's hint {:?}",
                    String::from_utf8_lossy(hint)
                ),
                None => String::new(),
            };
            let wrong = match looks_like_a_wrong_key(&reason) {
                true => " (a wrong key?)",
                false => "",
            };
            format!(
                "PSK identity {:?}{by_hint}: {reason}{wrong}",
                String::from_utf8_lossy(&used.identity)
            )
        }
        None => reason,
    }
}

#[cfg(test)]
mod tests {
    //! Against the PSK listener's own server session (`psk.rs`) over a loopback
    //! socket: the two OpenSSL sides of Quay agree, a wrong key and a missing one
    //! are errors naming the identity, and a key never shows.

    use super::*;
    use std::sync::Arc;

    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use crate::config::TlsConfig;
    use crate::transport::psk::PskServer;
    use crate::transport::Received;

    const KEY_HEX: &str = "5f3a9c0e7d1b2a4c6e8f0a1b2c3d4e5f";

    fn psk_server(versions: &[&str], psk_line: &str) -> PskServer {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut tls = TlsConfig::with_defaults();
        tls.certfile = root.join("etc/certs/cert.pem");
        tls.keyfile = root.join("etc/certs/key.pem");
        tls.cacertfile = None;
        tls.tls_versions = versions.iter().map(|v| v.to_string()).collect();
        tls.psk_ciphers = vec!["PSK-AES128-GCM-SHA256".into()];
        let (table, bad) = PskTable::parse(psk_line, ":");
        assert!(bad.is_empty());
        PskServer::new("mqtt:ssl:test", &tls, Arc::new(table)).unwrap()
    }

    fn psk_file(dir: &tempfile::TempDir, text: &str) -> PskConfig {
        let path = dir.path().join("psk.txt");
        std::fs::write(&path, text).unwrap();
        PskConfig {
            path,
            delimiter: ":".into(),
        }
    }

    fn client(versions: &[&str], identity: Option<&str>, file: &PskConfig) -> PskClient {
        let versions: Vec<String> = versions.iter().map(|v| v.to_string()).collect();
        let ciphers = vec!["PSK-AES128-GCM-SHA256".to_string(), "PSK-RC4-SHA".into()];
        PskClient::new("bridge t", &ciphers, &versions, identity, file).unwrap()
    }

    /// Serve one connection with `server`'s session: echo what arrives, prefixed.
    /// Ok(()) when the client closed; Err(the server's reason).
    async fn serve_one(listener: TcpListener, server: PskServer) -> Result<(), String> {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut session = server.session()?;
        let mut plain = BytesMut::new();
        let mut wire = vec![0u8; 32 * 1024];
        for _ in 0..200 {
            let n = sock.read(&mut wire).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            let state = session.received(&wire[..n], &mut plain);
            let mut out = Vec::new();
            let _ = session.write_tls(&mut out);
            sock.write_all(&out).await.map_err(|e| e.to_string())?;
            if state? == Received::Closed {
                return Ok(());
            }
            if !plain.is_empty() {
                let mut echo = b"echo:".to_vec();
                echo.extend_from_slice(&plain.split());
                session.write_all_plain(&echo).unwrap();
                let mut out = Vec::new();
                session.write_tls(&mut out).unwrap();
                sock.write_all(&out).await.map_err(|e| e.to_string())?;
            }
        }
        Err("too many turns".into())
    }

    async fn run(
        server: PskServer,
        client: &PskClient,
    ) -> (Result<Vec<u8>, String>, Result<(), String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = tokio::spawn(serve_one(listener, server));
        let talk = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let mut s = client.connect(tcp).await?;
            s.write_all(b"hello").await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            let mut got = vec![0u8; 10];
            s.read_exact(&mut got).await.map_err(|e| e.to_string())?;
            s.shutdown().await.map_err(|e| e.to_string())?;
            Ok(got)
        };
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), talk)
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        let served = tokio::time::timeout(std::time::Duration::from_secs(10), served)
            .await
            .map(|r| r.unwrap())
            .unwrap_or_else(|_| Err("server timed out".into()));
        (got, served)
    }

    #[tokio::test]
    async fn an_explicit_identity_talks_over_tls_1_2_and_1_3() {
        let dir = tempfile::tempdir().unwrap();
        let file = psk_file(&dir, &format!("bridge-1:{KEY_HEX}\n"));
        for versions in [&["tlsv1.2"][..], &["tlsv1.3"], &["tlsv1.3", "tlsv1.2"]] {
            let server = psk_server(versions, &format!("bridge-1:{KEY_HEX}"));
            let (got, served) = run(server, &client(versions, Some("bridge-1"), &file)).await;
            assert_eq!(got.as_deref(), Ok(&b"echo:hello"[..]), "{versions:?}");
            assert_eq!(served, Ok(()), "{versions:?}");
        }
    }

    #[tokio::test]
    async fn a_wrong_key_and_a_missing_identity_are_errors_naming_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let file = psk_file(&dir, "bridge-1:1111111111111111\n");
        for versions in [&["tlsv1.2"][..], &["tlsv1.3"]] {
            let server = psk_server(versions, &format!("bridge-1:{KEY_HEX}"));
            let (got, served) = run(server, &client(versions, Some("bridge-1"), &file)).await;
            let why = got.unwrap_err();
            assert!(why.starts_with("PSK identity \"bridge-1\""), "{why}");
            assert!(served.is_err());
            assert!(!why.contains("1111") && !why.contains(KEY_HEX), "{why}");
            let server = psk_server(versions, &format!("bridge-1:{KEY_HEX}"));
            let (got, _) = run(server, &client(versions, Some("stranger"), &file)).await;
            let why = got.unwrap_err();
            assert_eq!(
                why,
                format!(
                    "no key for PSK identity \"stranger\" in {}",
                    file.path.display()
                )
            );
        }
    }

    #[tokio::test]
    async fn a_tls_1_3_server_that_passes_the_key_over_for_its_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = psk_file(&dir, &format!("bridge-1:{KEY_HEX}\n"));
        // The server does not know the identity: OpenSSL goes on with its certificate.
        let server = psk_server(&["tlsv1.3"], &format!("someone-else:{KEY_HEX}"));
        let (got, _) = run(server, &client(&["tlsv1.3"], Some("bridge-1"), &file)).await;
        let why = got.unwrap_err();
        assert!(
            why.starts_with(
                "PSK identity \"bridge-1\": the remote did not take the pre-shared key"
            ),
            "{why}"
        );
    }

    #[tokio::test]
    async fn a_missing_file_is_an_error_naming_it() {
        let file = PskConfig {
            path: "/nonexistent/psk.txt".into(),
            delimiter: ":".into(),
        };
        let c = client(&["tlsv1.2"], Some("bridge-1"), &file);
        assert!(c.check_file().is_err());
        let (got, _) = run(psk_server(&["tlsv1.2"], &format!("x:{KEY_HEX}")), &c).await;
        let why = got.unwrap_err();
        assert!(
            why.starts_with("cannot read the PSK file /nonexistent/psk.txt"),
            "{why}"
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused_at_start() {
        let file = PskConfig::default();
        let v = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let ciphers = v(&["PSK-AES128-GCM-SHA256"]);
        let e = PskClient::new("bridge t", &ciphers, &v(&["tlsv1.3"]), None, &file).unwrap_err();
        assert!(e.contains("needs psk_identity"), "{e}");
        let e = PskClient::new(
            "bridge t",
            &v(&["PSK-RC4-SHA"]),
            &v(&["tlsv1.2"]),
            None,
            &file,
        )
        .unwrap_err();
        assert!(e.contains("none of the psk_ciphers"), "{e}");
        let e =
            PskClient::new("bridge t", &ciphers, &v(&["tlsv1.2"]), Some(""), &file).unwrap_err();
        assert!(e.contains("psk_identity must be"), "{e}");
        // No identity: TLS 1.3 is dropped, TLS 1.2 stays.
        assert!(PskClient::new(
            "bridge t",
            &ciphers,
            &v(&["tlsv1.3", "tlsv1.2"]),
            None,
            &file
        )
        .is_ok());
    }

    #[test]
    fn without_an_identity_the_key_is_the_hints_and_the_identity_erlangs_default() {
        let (table, _) = PskTable::parse(&format!("quay-hint:{KEY_HEX}\nbridge-1:0102"), ":");
        let mut lookup = Lookup {
            table,
            identity: None,
            file: "etc/psk.txt".into(),
            outcome: None,
        };
        let mut id = [0u8; 257];
        let mut key = [0u8; 512];
        let (len, used) = lookup
            .choose(Some(b"quay-hint"), &mut id, &mut key)
            .unwrap();
        assert_eq!(&id[..13], b"psk_identity\0");
        assert_eq!(len, 16);
        assert_eq!(key[0], 0x5f);
        assert_eq!(used.hint.as_deref(), Some(&b"quay-hint"[..]));
        let e = lookup.choose(None, &mut id, &mut key).err().unwrap();
        assert!(e.contains("no PSK identity hint"), "{e}");
        let e = lookup
            .choose(Some(b"other"), &mut id, &mut key)
            .err()
            .unwrap();
        assert_eq!(
            e,
            "no key for the remote's identity hint \"other\" in etc/psk.txt"
        );
        // An explicit identity wins over the hint.
        lookup.identity = Some(b"bridge-1".as_slice().into());
        let (len, used) = lookup
            .choose(Some(b"quay-hint"), &mut id, &mut key)
            .unwrap();
        assert_eq!(
            (len, &id[..9], &key[..2]),
            (2, &b"bridge-1\0"[..], &[1u8, 2][..])
        );
        assert!(used.hint.is_none());
    }
}
