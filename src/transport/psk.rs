//! TLS-PSK (`listener.ssl.<name>.psk_ciphers`): a TLS session that also accepts
//! clients holding a pre-shared key from `etc/psk.txt` (`psk_file`), served by the
//! system's OpenSSL because rustls has no PSK. The same port still serves certificate
//! clients with the listener's certfile and keyfile: the PSK suites come first in
//! the server's preference, and a client without a PSK never offers them.
//!
//! Like the rustls layer, this one is sans-IO: OpenSSL reads and writes an in-memory
//! `Pipe`, never the socket, so the connection driver keeps owning the socket and a
//! PSK connection hibernates, wakes and closes exactly like any other TLS one.
//!
//! A wrong key, an unknown identity or a broken handshake is an error of this
//! connection only; no key ever reaches a log line.

use std::io::{self, Write};
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslMode, SslOptions,
    SslRef, SslSessionCacheMode, SslStream, SslVerifyMode, SslVersion,
};

use super::pipe::Pipe;
use super::psk_file::PskTable;
use super::tls::TlsSetupError;
use super::Received;
use crate::config::TlsConfig;
use crate::hooks::CertIdentity;

/// The certificate suites a PSK listener offers when `ciphers` names none: the
/// TLS 1.2 suites rustls offers on the other SSL listeners (forward secret, AEAD).
const DEFAULT_CERT_CIPHERS: &str = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:\
     ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:\
     ECDHE-RSA-CHACHA20-POLY1305";

/// The TLS 1.3 suites a PSK listener offers when `ciphers` names none: OpenSSL's,
/// with TLS_AES_128_GCM_SHA256 first. A pre-shared key from the PSK callback is
/// bound to SHA-256, and OpenSSL drops the PSK (and goes on with the certificate)
/// when the suite it chose by its own preference uses another hash.
const DEFAULT_TLS13_SUITES: &str =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

/// TLS records waiting for the socket at most (as rustls's default buffer limit): a
/// client that stops reading holds its channel back instead of growing this.
const OUTBOX_LIMIT: usize = 64 * 1024;

/// A PSK listener's OpenSSL settings, built once at start.
pub struct PskServer {
    ctx: SslContext,
}

impl std::fmt::Debug for PskServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PskServer")
    }
}

/// What the client offered as a PSK identity (kept on its `Ssl` for the log line
/// and for refusing a TLS 1.3 client whose key was not used, see `check_identity`).
struct Offered {
    identity: Box<[u8]>,
    known: bool,
}

/// The `Ssl` slot holding `Offered`.
fn offered_index() -> Result<Index<Ssl, Offered>, ErrorStack> {
    static INDEX: OnceLock<Index<Ssl, Offered>> = OnceLock::new();
    if let Some(index) = INDEX.get() {
        return Ok(*index);
    }
    let index = Ssl::new_ex_index()?;
    Ok(*INDEX.get_or_init(|| index))
}

impl PskServer {
    /// The OpenSSL context of `listener` (its id, for errors) from its TLS settings
    /// and the identities in `table`.
    pub fn new(
        listener: &str,
        tls: &TlsConfig,
        table: Arc<PskTable>,
    ) -> Result<PskServer, TlsSetupError> {
        let settings = |problem: String| TlsSetupError::Settings {
            listener: listener.to_string(),
            problem,
        };
        let file_error =
            |what: &'static str, path: &std::path::Path, e: ErrorStack| TlsSetupError::File {
                listener: listener.to_string(),
                what,
                path: path.display().to_string(),
                reason: openssl_reason(&e),
            };
        let openssl = |e: ErrorStack| settings(format!("OpenSSL: {}", openssl_reason(&e)));
        let index = offered_index().map_err(openssl)?;
        let mut b = SslContextBuilder::new(SslMethod::tls_server()).map_err(openssl)?;
        b.set_certificate_chain_file(&tls.certfile)
            .map_err(|e| file_error("certfile", &tls.certfile, e))?;
        b.set_private_key_file(&tls.keyfile, SslFiletype::PEM)
            .map_err(|e| file_error("keyfile", &tls.keyfile, e))?;
        b.check_private_key().map_err(|e| {
            settings(format!(
                "certfile and keyfile do not match: {}",
                openssl_reason(&e)
            ))
        })?;
        let (min, max) = versions(listener, &tls.tls_versions).map_err(settings)?;
        b.set_min_proto_version(Some(min)).map_err(openssl)?;
        b.set_max_proto_version(Some(max)).map_err(openssl)?;
        let (tls12, tls13) = cipher_lists(listener, tls).map_err(settings)?;
        b.set_cipher_list(&tls12)
            .map_err(|e| settings(format!("ciphers: {}", openssl_reason(&e))))?;
        b.set_ciphersuites(tls13.as_deref().unwrap_or(DEFAULT_TLS13_SUITES))
            .map_err(|e| settings(format!("ciphers: {}", openssl_reason(&e))))?;
        // PSK suites first: a client that offers them has a key to try.
        b.set_options(SslOptions::CIPHER_SERVER_PREFERENCE | SslOptions::NO_RENEGOTIATION);
        // Idle connections give their record buffers back (hibernation keeps the
        // session); no session cache or tickets: a PSK client proves its key on
        // every connect, and the node holds nothing per past connection.
        b.set_mode(SslMode::RELEASE_BUFFERS);
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        b.set_num_tickets(0).map_err(openssl)?;
        // OpenSSL refuses a TLS 1.3 PSK handshake under `verify_peer` without one.
        b.set_session_id_context(listener.as_bytes().get(..32).unwrap_or(listener.as_bytes()))
            .map_err(openssl)?;
        match tls.verify {
            crate::config::TlsVerify::VerifyNone => b.set_verify(SslVerifyMode::NONE),
            crate::config::TlsVerify::VerifyPeer => {
                let Some(cafile) = &tls.cacertfile else {
                    return Err(settings("verify = verify_peer needs a cacertfile".into()));
                };
                b.set_ca_file(cafile)
                    .map_err(|e| file_error("cacertfile", cafile, e))?;
                let mut mode = SslVerifyMode::PEER;
                if tls.fail_if_no_peer_cert {
                    mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
                }
                b.set_verify(mode);
            }
        }
        b.set_psk_server_callback(move |ssl: &mut SslRef, identity, key_out| {
            let identity = identity.unwrap_or_default();
            let key = table.key(identity).filter(|k| k.len() <= key_out.len());
            ssl.set_ex_data(
                index,
                Offered {
                    identity: identity.into(),
                    known: key.is_some(),
                },
            );
            // 0: no key for this identity; OpenSSL refuses it (TLS 1.2) or goes on
            // without a PSK (TLS 1.3, refused after the handshake, see `received`).
            Ok(key.map_or(0, |key| {
                key_out[..key.len()].copy_from_slice(key);
                key.len()
            }))
        });
        Ok(PskServer { ctx: b.build() })
    }

    /// A session for a new connection.
    pub(crate) fn session(&self) -> Result<PskSession, String> {
        let index = offered_index().map_err(|e| openssl_reason(&e))?;
        let mut ssl = Ssl::new(&self.ctx).map_err(|e| openssl_reason(&e))?;
        ssl.set_accept_state();
        let stream = SslStream::new(ssl, Pipe::default()).map_err(|e| openssl_reason(&e))?;
        Ok(PskSession {
            stream,
            index,
            psk_used: false,
        })
    }
}

/// One connection's OpenSSL session over its in-memory pipe.
pub(crate) struct PskSession {
    stream: SslStream<Pipe>,
    index: Index<Ssl, Offered>,
    /// The handshake authenticated the client by its key (see `check_identity`).
    psk_used: bool,
}

impl PskSession {
    /// Still in the handshake.
    pub fn is_handshaking(&self) -> bool {
        !self.stream.ssl().is_init_finished()
    }

    /// `wire` (TLS records) into the session; the plaintext appended to `plain`.
    /// Err: the handshake or a record failed; the reason names the PSK identity.
    pub fn received(&mut self, wire: &[u8], plain: &mut BytesMut) -> Result<Received, String> {
        self.stream.get_mut().feed(wire);
        if self.is_handshaking() {
            match self.stream.do_handshake() {
                Ok(()) => self.check_identity()?,
                Err(e) if e.code() == ErrorCode::WANT_READ => return Ok(Received::Open),
                Err(e) => return Err(self.failure(&e)),
            }
        }
        // Bounded: each turn takes at least one record's plaintext out of the inbox,
        // which holds at most what one socket read brought.
        for _ in 0..4096 {
            let start = plain.len();
            plain.resize(start + 16 * 1024, 0);
            let read = self.stream.ssl_read(&mut plain[start..]);
            plain.truncate(start + *read.as_ref().unwrap_or(&0));
            match read {
                Ok(_) => {}
                Err(e) if e.code() == ErrorCode::WANT_READ => break,
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Ok(Received::Closed),
                Err(e) => return Err(self.failure(&e)),
            }
        }
        Ok(Received::Open)
    }

    /// After the handshake: was the offered key used? In TLS 1.2 the callback runs
    /// only once a PSK suite is chosen, and a wrong key fails the handshake, so a
    /// known identity was used. In TLS 1.3 OpenSSL asks for the key while reading
    /// the ClientHello and, when the identity is unknown or the key does not fit the
    /// chosen suite, goes on with the certificate instead of refusing: such a
    /// client is refused here, so a device that offered a key this node does not
    /// accept never gets in as an anonymous certificate client.
    fn check_identity(&mut self) -> Result<(), String> {
        let ssl = self.stream.ssl();
        let resumed = ssl.session_reused();
        let tls13 = ssl.version2() == Some(SslVersion::TLS1_3);
        let Some(offered) = ssl.ex_data(self.index) else {
            return Ok(());
        };
        let name = String::from_utf8_lossy(&offered.identity).into_owned();
        if !offered.known {
            return Err(format!("unknown PSK identity {name:?}"));
        }
        if tls13 && !resumed {
            return Err(format!(
                "PSK identity {name:?} passed over: TLS_AES_128_GCM_SHA256 must be the \
                 listener's first TLS 1.3 suite"
            ));
        }
        self.psk_used = true;
        Ok(())
    }

    /// Why the session failed, with the identity the client offered, if any.
    fn failure(&self, e: &openssl::ssl::Error) -> String {
        let reason = match (e.ssl_error(), e.io_error()) {
            (Some(stack), _) => openssl_reason(stack),
            (None, Some(io)) => io.to_string(),
            (None, None) => format!("OpenSSL error {:?}", e.code()),
        };
        match self.stream.ssl().ex_data(self.index) {
            Some(Offered {
                identity,
                known: false,
                ..
            }) => format!(
                "unknown PSK identity {:?} ({reason})",
                String::from_utf8_lossy(identity)
            ),
            Some(Offered {
                identity,
                known: true,
                ..
            }) => {
                let hint = if looks_like_a_wrong_key(&reason) {
                    " (a wrong key?)"
                } else {
                    ""
                };
                format!(
                    "PSK identity {:?}: {reason}{hint}",
                    String::from_utf8_lossy(identity)
                )
            }
            None => reason,
        }
    }

    /// The identity of a client that connected with a PSK; `None` for a
    /// certificate client.
    pub fn psk_identity(&self) -> Option<Arc<str>> {
        let offered = self.stream.ssl().ex_data(self.index)?;
        self.psk_used
            .then(|| Arc::from(String::from_utf8_lossy(&offered.identity).as_ref()))
    }

    /// The client certificate's subject (a certificate client on a PSK listener
    /// with `verify = verify_peer`).
    pub fn peer_certificate(&self) -> Option<CertIdentity> {
        let der = self.stream.ssl().peer_certificate()?.to_der().ok()?;
        super::tls::cert_identity(&der)
    }

    /// Encrypt as much of `plain` as the outbox takes (bounded by `OUTBOX_LIMIT`);
    /// how much was taken. 0 once the session has failed or closed.
    pub fn write_plain(&mut self, plain: &[u8]) -> usize {
        let room = OUTBOX_LIMIT.saturating_sub(self.pending_out().len());
        let take = plain.len().min(room);
        if take == 0 {
            return 0;
        }
        // The pipe takes every record, so OpenSSL writes all it is given.
        self.stream.ssl_write(&plain[..take]).unwrap_or(0)
    }

    /// Encrypt all of `plain` (a refusing CONNACK, a last packet: small).
    pub fn write_all_plain(&mut self, plain: &[u8]) -> io::Result<()> {
        let mut rest = plain;
        while !rest.is_empty() {
            match self.stream.ssl_write(rest) {
                Ok(0) | Err(_) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
            }
        }
        Ok(())
    }

    /// So many records wait for the socket that nothing more may be read: what the
    /// channel writes stays within `OUTBOX_LIMIT`, but OpenSSL answers some records
    /// on its own (a TLS 1.3 KeyUpdate request with a KeyUpdate), and a client that
    /// sends those without reading would otherwise grow the outbox without bound.
    pub fn backlogged(&self) -> bool {
        self.pending_out().len() >= 2 * OUTBOX_LIMIT
    }

    /// Records are waiting for the socket.
    pub fn wants_write(&self) -> bool {
        !self.pending_out().is_empty()
    }

    fn pending_out(&self) -> &[u8] {
        self.stream.get_ref().pending()
    }

    /// Write waiting records to `sock` until none wait or it would block.
    pub fn write_tls(&mut self, sock: &mut dyn Write) -> io::Result<usize> {
        let pipe = self.stream.get_mut();
        let mut total = 0;
        while !pipe.pending().is_empty() {
            match sock.write(pipe.pending()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    pipe.sent(n);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && total > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// The session ends: a close_notify goes out with the last bytes.
    pub fn send_close_notify(&mut self) {
        let _ = self.stream.shutdown();
    }
}

/// Whether OpenSSL's `reason` is what a key the two sides do not share looks like:
/// to the side that finds out, or, in the alert it sends, to the other one.
pub(super) fn looks_like_a_wrong_key(reason: &str) -> bool {
    [
        "bad record mac",
        "binder does not verify",
        "digest check failed",
        "alert decrypt error",
        "alert illegal parameter",
    ]
    .iter()
    .any(|sign| reason.contains(sign))
}

/// The lowest and highest of the versions `names` lists that are offered (1.3 and
/// 1.2; the older ones are logged and not offered, as on the rustls listeners).
pub(super) fn versions(
    listener: &str,
    names: &[String],
) -> Result<(SslVersion, SslVersion), String> {
    let mut offered = Vec::new();
    for name in names {
        match name.as_str() {
            "tlsv1.3" => offered.push((13, SslVersion::TLS1_3)),
            "tlsv1.2" => offered.push((12, SslVersion::TLS1_2)),
            old => tracing::warn!(
                listener,
                version = old,
                "TLS version below 1.2 is not offered"
            ),
        }
    }
    let min = offered.iter().min_by_key(|v| v.0);
    let max = offered.iter().max_by_key(|v| v.0);
    match (min, max) {
        (Some(min), Some(max)) => Ok((min.1, max.1)),
        _ => Err("tls_versions names neither tlsv1.3 nor tlsv1.2".into()),
    }
}

/// The TLS 1.2 cipher list (the PSK suites that OpenSSL implements, then the
/// certificate suites) and the TLS 1.3 suites `ciphers` names (None: the default).
fn cipher_lists(listener: &str, tls: &TlsConfig) -> Result<(String, Option<String>), String> {
    let psk = offered(listener, "psk_ciphers", &tls.psk_ciphers);
    if psk.is_empty() {
        return Err(format!(
            "none of the psk_ciphers is offered by this OpenSSL ({}); use e.g. \
             PSK-AES256-GCM-SHA384,PSK-AES128-GCM-SHA256,PSK-AES128-CBC-SHA",
            openssl::version::version()
        ));
    }
    let ciphers = offered(listener, "ciphers", &tls.ciphers);
    if ciphers.is_empty() && !tls.ciphers.is_empty() {
        return Err("none of the ciphers is offered by this OpenSSL".to_string());
    }
    let (tls13, tls12): (Vec<&str>, Vec<&str>) = ciphers
        .into_iter()
        .partition(|name| name.starts_with("TLS_"));
    let cert = match tls12.is_empty() {
        true => DEFAULT_CERT_CIPHERS.to_string(),
        false => tls12.join(":"),
    };
    let tls13 = (!tls13.is_empty()).then(|| tls13.join(":"));
    Ok((format!("{}:{cert}", psk.join(":")), tls13))
}

/// The names in `names` (of config key `key`) that this OpenSSL implements; the
/// others are logged and skipped (3DES and RC4, in EMQX 4's example `psk_ciphers`,
/// are gone from OpenSSL 3's default provider).
pub(super) fn offered<'a>(listener: &str, key: &str, names: &'a [String]) -> Vec<&'a str> {
    let (known, skipped): (Vec<&str>, Vec<&str>) = names
        .iter()
        .map(String::as_str)
        .partition(|name| implemented(name));
    if !skipped.is_empty() {
        tracing::warn!(
            listener,
            key,
            ?skipped,
            "cipher suites this OpenSSL does not offer; skipped"
        );
    }
    known
}

/// Whether this OpenSSL offers the suite `name` (TLS 1.3 names start with `TLS_`).
fn implemented(name: &str) -> bool {
    SslContextBuilder::new(SslMethod::tls_server())
        .and_then(|mut b| match name.starts_with("TLS_") {
            true => b.set_ciphersuites(name),
            false => b.set_cipher_list(name),
        })
        .is_ok()
}

/// OpenSSL's reasons, short ("unknown psk identity"), without file and line.
pub(super) fn openssl_reason(stack: &ErrorStack) -> String {
    let reasons: Vec<&str> = stack.errors().iter().filter_map(|e| e.reason()).collect();
    match reasons.is_empty() {
        true => stack.to_string(),
        false => reasons.join("; "),
    }
}

#[cfg(test)]
mod tests {
    //! A server session and an OpenSSL client, both over in-memory pipes, moved by
    //! hand (bounded turns): no socket, no clock.

    use super::*;

    const KEY: [u8; 16] = [0x5f; 16];

    fn server(tls_versions: &[&str]) -> PskServer {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut tls = TlsConfig::with_defaults();
        tls.certfile = root.join("etc/certs/cert.pem");
        tls.keyfile = root.join("etc/certs/key.pem");
        tls.cacertfile = None;
        tls.tls_versions = tls_versions.iter().map(|v| v.to_string()).collect();
        tls.psk_ciphers = vec!["PSK-AES128-GCM-SHA256".into(), "PSK-RC4-SHA".into()];
        let (table, bad) = PskTable::parse("device-1:5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f", ":");
        assert!(bad.is_empty());
        PskServer::new("mqtt:ssl:test", &tls, Arc::new(table)).unwrap()
    }

    fn client(identity: &'static str, key: [u8; 16]) -> SslStream<Pipe> {
        // Not `SslConnector`, whose cipher list leaves PSK out.
        let mut b = SslContextBuilder::new(SslMethod::tls_client()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        b.set_psk_client_callback(move |_, _hint, id_out, key_out| {
            id_out[..identity.len()].copy_from_slice(identity.as_bytes());
            id_out[identity.len()] = 0;
            key_out[..key.len()].copy_from_slice(&key);
            Ok(key.len())
        });
        let mut ssl = Ssl::new(&b.build()).unwrap();
        ssl.set_connect_state();
        SslStream::new(ssl, Pipe::default()).unwrap()
    }

    /// Run the handshake: Ok(server) once both ends are done, Err(server's reason).
    fn shake(server: &PskServer, client: &mut SslStream<Pipe>) -> Result<PskSession, String> {
        let mut session = server.session().unwrap();
        let mut plain = BytesMut::new();
        for _ in 0..20 {
            let client_done = client.do_handshake().is_ok();
            let wire = client.get_mut().take_pending();
            session.received(&wire, &mut plain)?;
            let mut back = Vec::new();
            let _ = session.write_tls(&mut back);
            client.get_mut().feed(&back);
            if client_done && !session.is_handshaking() {
                return Ok(session);
            }
        }
        panic!("handshake did not finish in 20 turns");
    }

    #[test]
    fn a_psk_client_talks_both_ways_over_tls_1_2_and_1_3() {
        for versions in [&["tlsv1.2"][..], &["tlsv1.3", "tlsv1.2"]] {
            let server = server(versions);
            let mut client = client("device-1", KEY);
            let mut session = shake(&server, &mut client).unwrap();
            assert_eq!(session.psk_identity().as_deref(), Some("device-1"));
            let mut plain = BytesMut::new();
            client.ssl_write(b"\x10connect").unwrap();
            let wire = client.get_mut().take_pending();
            assert_eq!(session.received(&wire, &mut plain), Ok(Received::Open));
            assert_eq!(&plain[..], b"\x10connect");
            assert_eq!(session.write_plain(b"\x20connack"), 8);
            assert!(session.wants_write());
            let mut back = Vec::new();
            session.write_tls(&mut back).unwrap();
            assert!(!session.wants_write());
            client.get_mut().feed(&back);
            let mut buf = [0u8; 64];
            let n = client.ssl_read(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"\x20connack");
            // close_notify ends the stream.
            let _ = client.shutdown();
            let wire = client.get_mut().take_pending();
            assert_eq!(session.received(&wire, &mut plain), Ok(Received::Closed));
        }
    }

    #[test]
    fn a_wrong_key_and_an_unknown_identity_are_refused_with_the_identity() {
        for versions in [&["tlsv1.2"][..], &["tlsv1.3"]] {
            let server = server(versions);
            let wrong = shake(&server, &mut client("device-1", [1; 16]))
                .err()
                .unwrap();
            assert!(wrong.contains("PSK identity \"device-1\""), "{wrong}");
            assert!(wrong.contains("a wrong key?"), "{wrong}");
            // TLS 1.3: OpenSSL would go on with the certificate; refused all the same.
            let unknown = shake(&server, &mut client("stranger", KEY)).err().unwrap();
            assert!(
                unknown.starts_with("unknown PSK identity \"stranger\""),
                "{unknown}"
            );
            assert!(!wrong.contains("5f5f") && !unknown.contains("5f5f"));
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let server = server(&["tlsv1.3", "tlsv1.2"]);
        let mut session = server.session().unwrap();
        let mut plain = BytesMut::new();
        let connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04test";
        assert!(session.received(connect, &mut plain).is_err());
        assert!(plain.is_empty());
    }

    #[test]
    fn cipher_names_openssl_lacks_are_skipped_and_none_left_is_an_error() {
        let mut tls = TlsConfig::with_defaults();
        tls.psk_ciphers = ["PSK-RC4-SHA", "PSK-AES128-CBC-SHA", "PSK-3DES-EDE-CBC-SHA"]
            .map(String::from)
            .to_vec();
        tls.ciphers = [
            "TLS_AES_128_GCM_SHA256",
            "NO-SUCH-SUITE",
            "ECDHE-RSA-AES128-GCM-SHA256",
        ]
        .map(String::from)
        .to_vec();
        let (tls12, tls13) = cipher_lists("l", &tls).unwrap();
        assert_eq!(tls12, "PSK-AES128-CBC-SHA:ECDHE-RSA-AES128-GCM-SHA256");
        assert_eq!(tls13.as_deref(), Some("TLS_AES_128_GCM_SHA256"));
        tls.ciphers = vec!["NO-SUCH-SUITE".into()];
        assert!(cipher_lists("l", &tls).is_err());
        tls.ciphers = vec![];
        tls.psk_ciphers = vec!["PSK-RC4-SHA".into()];
        let err = cipher_lists("l", &tls).unwrap_err();
        assert!(err.starts_with("none of the psk_ciphers"), "{err}");
    }

    #[test]
    fn the_outbox_is_bounded() {
        let server = server(&["tlsv1.3", "tlsv1.2"]);
        let mut client = client("device-1", KEY);
        let mut session = shake(&server, &mut client).unwrap();
        let big = vec![7u8; 4 * OUTBOX_LIMIT];
        let taken = session.write_plain(&big);
        assert!(taken > 0 && taken <= OUTBOX_LIMIT, "{taken}");
        assert_eq!(
            session.write_plain(&big),
            0,
            "a full outbox takes nothing more"
        );
    }
}
