//! `emqx_auth_ldap`: authentication against an LDAP directory (ldap3), with EMQX 4's
//! keys and defaults.
//!
//! The plugin binds as `bind_dn` and searches `device_dn` (subtree) with
//! `(&(objectClass=<match_objectclass>)(<username.attributetype>=<username>))`, the
//! username escaped per RFC 4515 (`*`, `(`, `)`, `\`, NUL), so `*)(uid=*` is a literal
//! name, never a wildcard. No entry = not this backend's user (ignore). Else the
//! password is checked: against the entry's `password.attributetype` (`{SHA}`,
//! `{SSHA}`, `{MD5}`, `{SMD5}`, `{SHA256}`, `{SSHA256}`, `{SHA512}`, `{SSHA512}` or
//! plain), or, with `bind_as_user = true`, by binding as the entry's DN with it. Wrong =
//! refused (0x86 / rc 4).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use ldap3::{ldap_escape, Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use md5::Md5;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;
use tokio::sync::{Mutex, Semaphore};

use super::outage::{OnError, Outage};
use super::settings::Section;
use super::stored::WRONG_PASSWORD;
use crate::hooks::{AuthResult, BoxFuture, ClientInfo, Credentials, Decision, Hook};
use crate::plugins::{Context, PluginError, Running, Spec};

pub const NAME: &str = "emqx_auth_ldap";

pub fn spec() -> Spec {
    Spec {
        name: NAME,
        description: "Authentication with LDAP",
        start,
    }
}

/// After a failed connect, a slot answers "down" at once for this long.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
/// LDAP result code invalidCredentials (RFC 4511).
const INVALID_CREDENTIALS: u32 = 49;

struct Settings {
    urls: Vec<String>,
    conn: LdapConnSettings,
    pool: u32,
    bind_dn: String,
    bind_password: String,
    timeout: Duration,
    base: String,
    objectclass: String,
    user_attr: String,
    password_attr: String,
    bind_as_user: bool,
    on_error: OnError,
}

fn read_settings(ctx: &Context) -> Result<Settings, PluginError> {
    let s = Section::new(&ctx.keys, "auth.ldap");
    let servers = s.string("servers", "127.0.0.1")?;
    let port = s.get("port", 389u16, |v| {
        quay_config::plugin_read::uint(v, 1, 65535)
    })?;
    let pool = s.pool(8)?;
    let bind_dn = s.string("bind_dn", "cn=root,dc=emqx,dc=io")?;
    let bind_password = s.string("bind_password", "public")?;
    let timeout = s.duration("timeout", Duration::from_secs(30))?;
    let base = s.string("device_dn", "ou=device,dc=emqx,dc=io")?;
    let objectclass = s.string("match_objectclass", "mqttUser")?;
    let user_attr = s.string("username.attributetype", "uid")?;
    let password_attr = s.string("password.attributetype", "userPassword")?;
    let bind_as_user = s.boolean("bind_as_user", false)?;
    let on_error = OnError::read(&s)?;
    // EMQX 4 names the switch `auth.ldap.ssl` (the other backends: `ssl.enable`).
    let tls = s.boolean("ssl", false)?;
    let tls_files = s.tls_files()?;
    for (name, v) in [
        ("match_objectclass", &objectclass),
        ("username.attributetype", &user_attr),
    ] {
        // An attribute description (RFC 4512): letters, digits, hyphens; these go
        // into the filter unescaped, so they must not hold filter syntax.
        if v.is_empty()
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b';')
        {
            return Err(s
                .invalid(name, "an LDAP attribute or class name (letters, digits, -)")
                .into());
        }
    }
    s.finish()?;

    let scheme = if tls { "ldaps" } else { "ldap" };
    let urls: Vec<String> = servers
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| format!("{scheme}://{h}:{port}"))
        .collect();
    if urls.is_empty() {
        return Err(PluginError::Start(
            "auth.ldap.servers: no server given".into(),
        ));
    }
    let mut conn = LdapConnSettings::new().set_conn_timeout(timeout);
    if tls {
        if !tls_files.verify {
            if tls_files.certfile.is_some() {
                return Err(PluginError::Start(
                    "auth.ldap.ssl.verify = false cannot be combined with a client certificate"
                        .into(),
                ));
            }
            conn = conn.set_no_tls_verify(true);
        } else if tls_files.cacertfile.is_some() || tls_files.certfile.is_some() {
            conn = conn.set_config(Arc::new(
                client_config(&tls_files).map_err(PluginError::Start)?,
            ));
        }
    }
    Ok(Settings {
        urls,
        conn,
        pool,
        bind_dn,
        bind_password,
        timeout,
        base,
        objectclass,
        user_attr,
        password_attr,
        bind_as_user,
        on_error,
    })
}

/// A rustls client config trusting `cacertfile` (else the system's roots) with an
/// optional client certificate.
fn client_config(t: &super::settings::TlsSettings) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &t.cacertfile {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots);
    match (&t.certfile, &t.keyfile) {
        (Some(c), Some(k)) => {
            let chain = CertificateDer::pem_file_iter(c)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("{}: {e}", c.display()))?;
            let key =
                PrivateKeyDer::from_pem_file(k).map_err(|e| format!("{}: {e}", k.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

enum Slot {
    Empty,
    Up(Ldap),
    Down(Instant),
}

struct Backend {
    s: Settings,
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
    /// Bounds the short-lived connections of `bind_as_user` to `pool`.
    user_binds: Semaphore,
    outage: Outage,
}

struct Handle;
impl Running for Handle {}

fn start(ctx: Context) -> BoxFuture<Result<Box<dyn Running>, PluginError>> {
    Box::pin(async move {
        let s = read_settings(&ctx)?;
        let backend = Arc::new(Backend {
            slots: (0..s.pool).map(|_| Mutex::new(Slot::Empty)).collect(),
            next: AtomicUsize::new(0),
            user_binds: Semaphore::new(s.pool as usize),
            outage: Outage::new(NAME),
            s,
        });
        let b = backend.clone();
        ctx.broker
            .hooks
            .add(
                NAME,
                0,
                Hook::authenticate(move |info, creds| b.clone().authenticate(info, creds)),
            )
            .map_err(|e| PluginError::Start(e.to_string()))?;
        Ok(Box::new(Handle) as Box<dyn Running>)
    })
}

/// Why a check could not be answered (the server, not the client).
type Failure = String;

impl Backend {
    /// A new connection to the first server that accepts it.
    async fn open(&self) -> Result<Ldap, Failure> {
        let mut last = String::from("no server");
        for url in &self.s.urls {
            match LdapConnAsync::with_settings(self.s.conn.clone(), url).await {
                Ok((conn, ldap)) => {
                    tokio::spawn(async move {
                        if let Err(e) = conn.drive().await {
                            tracing::debug!(plugin = NAME, error = %e, "LDAP connection ended");
                        }
                    });
                    return Ok(ldap);
                }
                Err(e) => last = format!("{url}: {e}"),
            }
        }
        Err(last)
    }

    /// A pooled connection bound as `bind_dn`.
    async fn connection(&self, slot: usize) -> Result<Ldap, Failure> {
        let mut s = self.slots[slot].lock().await;
        match &*s {
            Slot::Up(l) => return Ok(l.clone()),
            Slot::Down(at) if at.elapsed() < RECONNECT_BACKOFF => {
                return Err("not reachable (retrying shortly)".to_string())
            }
            _ => {}
        }
        let result = async {
            let mut ldap = self.open().await?;
            ldap.with_timeout(self.s.timeout)
                .simple_bind(&self.s.bind_dn, &self.s.bind_password)
                .await
                .and_then(|r| r.success())
                .map_err(|e| format!("bind as {}: {e}", self.s.bind_dn))?;
            Ok::<_, Failure>(ldap)
        }
        .await;
        match result {
            Ok(l) => {
                *s = Slot::Up(l.clone());
                Ok(l)
            }
            Err(e) => {
                *s = Slot::Down(Instant::now());
                Err(e)
            }
        }
    }

    /// The entry for `username`: its DN and password values.
    async fn find(&self, username: &str) -> Result<Option<(String, Vec<Vec<u8>>)>, Failure> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut ldap = self.connection(slot).await?;
        let filter = format!(
            "(&(objectClass={})({}={}))",
            self.s.objectclass,
            self.s.user_attr,
            ldap_escape(username)
        );
        let answer = ldap
            .with_timeout(self.s.timeout)
            .search(
                &self.s.base,
                Scope::Subtree,
                &filter,
                vec![self.s.password_attr.as_str()],
            )
            .await
            .and_then(|r| r.success());
        let entries = match answer {
            Ok((entries, _)) => entries,
            Err(e) => {
                if ldap.is_closed() {
                    *self.slots[slot].lock().await = Slot::Empty;
                }
                return Err(format!("search: {e}"));
            }
        };
        let Some(first) = entries.into_iter().next() else {
            return Ok(None);
        };
        // ldap3 panics on an entry it cannot parse; a server must not be able to crash us.
        let entry = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            SearchEntry::construct(first)
        }))
        .map_err(|_| "the server sent a malformed entry".to_string())?;
        let attr = &self.s.password_attr;
        let mut values: Vec<Vec<u8>> = Vec::new();
        for (k, v) in &entry.attrs {
            if k.eq_ignore_ascii_case(attr) {
                values.extend(v.iter().map(|s| s.as_bytes().to_vec()));
            }
        }
        for (k, v) in &entry.bin_attrs {
            if k.eq_ignore_ascii_case(attr) {
                values.extend(v.iter().cloned());
            }
        }
        Ok(Some((entry.dn, values)))
    }

    /// Whether `password` binds as `dn` (a fresh connection: a bind changes who the
    /// connection is).
    async fn binds_as(&self, dn: &str, password: &[u8]) -> Result<bool, Failure> {
        let _permit = self.user_binds.acquire().await.map_err(|e| e.to_string())?;
        let Ok(password) = std::str::from_utf8(password) else {
            return Ok(false);
        };
        if password.is_empty() {
            return Ok(false); // an empty password is an unauthenticated bind (RFC 4513 5.1.2)
        }
        let mut ldap = self.open().await?;
        let result = ldap
            .with_timeout(self.s.timeout)
            .simple_bind(dn, password)
            .await;
        let _ = ldap.unbind().await;
        match result {
            Ok(r) if r.rc == 0 => Ok(true),
            Ok(r) if r.rc == INVALID_CREDENTIALS => Ok(false),
            Ok(r) => Err(format!("bind: result code {}", r.rc)),
            Err(e) => Err(format!("bind: {e}")),
        }
    }

    async fn check(&self, username: &str, password: Option<Bytes>) -> Result<AuthResult, Failure> {
        let Some((dn, stored)) = self.find(username).await? else {
            return Ok(AuthResult::Ignore);
        };
        let Some(password) = password else {
            return Ok(WRONG_PASSWORD);
        };
        let ok = if self.s.bind_as_user {
            self.binds_as(&dn, &password).await?
        } else {
            stored.iter().any(|s| password_matches(&password, s))
        };
        Ok(if ok {
            AuthResult::Allow { superuser: false }
        } else {
            WRONG_PASSWORD
        })
    }

    fn authenticate(
        self: Arc<Self>,
        info: &Arc<ClientInfo>,
        creds: &Arc<Credentials>,
    ) -> Decision<AuthResult> {
        let Some(username) = info.username.clone() else {
            return Decision::Ready(AuthResult::Ignore);
        };
        let password = creds.password.clone();
        Decision::pending(async move {
            match tokio::time::timeout(self.s.timeout, self.check(&username, password)).await {
                Ok(Ok(r)) => {
                    self.outage.answered();
                    r
                }
                Ok(Err(e)) => {
                    self.outage.failed("search", &e);
                    self.s.on_error.auth()
                }
                Err(_) => {
                    self.outage
                        .failed("search", &format!("no answer within {:?}", self.s.timeout));
                    self.s.on_error.auth()
                }
            }
        })
    }
}

/// `password` against one stored `userPassword` value (RFC 2307 scheme prefixes).
fn password_matches(password: &[u8], stored: &[u8]) -> bool {
    let eq = |a: &[u8], b: &[u8]| bool::from(a.ct_eq(b));
    let Some(rest) = stored.strip_prefix(b"{") else {
        return eq(password, stored);
    };
    let Some(close) = rest.iter().position(|&b| b == b'}') else {
        return eq(password, stored);
    };
    let scheme = String::from_utf8_lossy(&rest[..close]).to_ascii_uppercase();
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&rest[close + 1..]) else {
        return false;
    };
    fn salted<D: Digest>(password: &[u8], decoded: &[u8], size: usize) -> bool {
        if decoded.len() < size {
            return false;
        }
        let (digest, salt) = decoded.split_at(size);
        let mut h = D::new();
        h.update(password);
        h.update(salt);
        bool::from(h.finalize().as_slice().ct_eq(digest))
    }
    match scheme.as_str() {
        "SHA" => eq(&Sha1::digest(password), &decoded),
        "SSHA" => salted::<Sha1>(password, &decoded, 20),
        "MD5" => eq(&Md5::digest(password), &decoded),
        "SMD5" => salted::<Md5>(password, &decoded, 16),
        "SHA256" => eq(&Sha256::digest(password), &decoded),
        "SSHA256" => salted::<Sha256>(password, &decoded, 32),
        "SHA512" => eq(&Sha512::digest(password), &decoded),
        "SSHA512" => salted::<Sha512>(password, &decoded, 64),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    #[test]
    fn rfc2307_schemes() {
        let sha = format!("{{SHA}}{}", b64(&Sha1::digest(b"pw")));
        assert!(
            password_matches(b"pw", sha.as_bytes()) && !password_matches(b"px", sha.as_bytes())
        );
        let mut ssha = Sha256::digest(b"pwNaCl").to_vec();
        ssha.extend_from_slice(b"NaCl");
        let ssha = format!("{{ssha256}}{}", b64(&ssha));
        assert!(
            password_matches(b"pw", ssha.as_bytes())
                && !password_matches(b"pwNaCl", ssha.as_bytes())
        );
        assert!(password_matches(b"plain", b"plain") && !password_matches(b"plai", b"plain"));
        assert!(
            !password_matches(b"pw", b"{CRYPT}abc")
                && !password_matches(b"pw", b"{SHA}not base64!")
        );
        assert!(!password_matches(
            b"",
            format!("{{SSHA}}{}", b64(b"short")).as_bytes()
        ));
    }

    #[test]
    fn usernames_are_escaped_in_filters() {
        assert_eq!(ldap_escape("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(ldap_escape("a\\b\0"), "a\\5cb\\00");
    }
}
