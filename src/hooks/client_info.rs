//! What every hook sees of a client: who it is, where it came from, and what it
//! presented. Built once per connection by the channel and shared (`Arc`) with every
//! hook call, the ACL, `$SYS` events and `emqx_ctl`; never mutated in place (a
//! successful authentication that grants superuser builds a new one with
//! [`ClientInfo::with_superuser`]).
//!
//! This module must never hold the password: that travels separately, in
//! [`Credentials`], which never prints it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;

use crate::codec::ProtocolVersion;
use crate::message::ClientId;

/// One connected (or connecting) client, as hooks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: ClientId,
    pub username: Option<Arc<str>>,
    pub peer: SocketAddr,
    pub protocol: ProtocolVersion,
    /// The listener that accepted the connection (`listener.tcp.<name>`).
    pub listener: Arc<str>,
    /// The zone the listener puts its clients in (`zone.<name>.*`).
    pub zone: Arc<str>,
    /// Topic prefix for this client (`%c`/`%u` already replaced), if any.
    pub mountpoint: Option<Arc<str>>,
    /// The client certificate's identity (TLS listeners with peer verification).
    pub cert: Option<CertIdentity>,
    /// Granted by an authentication hook; a superuser skips `client.check_acl`.
    pub is_superuser: bool,
}

/// Subject of a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// Common Name (EMQX's `peer_cert_as_username = cn`).
    pub cn: Option<Arc<str>>,
    /// The whole subject Distinguished Name (`peer_cert_as_username = dn`).
    pub dn: Option<Arc<str>>,
}

impl CertIdentity {
    /// The part `peer_cert_as_username` names.
    pub fn field(&self, field: crate::config::CertField) -> Option<Arc<str>> {
        match field {
            crate::config::CertField::Cn => self.cn.clone(),
            crate::config::CertField::Dn => self.dn.clone(),
        }
    }
}

impl ClientInfo {
    /// A client with only what every connection has; the rest is set by field.
    pub fn new(
        client_id: ClientId,
        peer: SocketAddr,
        protocol: ProtocolVersion,
        listener: Arc<str>,
        zone: Arc<str>,
    ) -> ClientInfo {
        ClientInfo {
            client_id,
            username: None,
            peer,
            protocol,
            listener,
            zone,
            mountpoint: None,
            cert: None,
            is_superuser: false,
        }
    }

    /// The same client with `is_superuser` set as an authentication hook decided.
    pub fn with_superuser(self: &Arc<Self>, is_superuser: bool) -> Arc<ClientInfo> {
        if self.is_superuser == is_superuser {
            return self.clone();
        }
        Arc::new(ClientInfo {
            is_superuser,
            ..ClientInfo::clone(self)
        })
    }

    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }
}

/// What a client presented to prove who it is (CONNECT password, MQTT 5
/// authentication method and data). Its `Debug` never shows the secrets, so it can be
/// logged by mistake without leaking them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub password: Option<Bytes>,
    /// MQTT 5 Authentication Method (enhanced authentication), e.g. `SCRAM-SHA-256`.
    pub auth_method: Option<Arc<str>>,
    /// MQTT 5 Authentication Data of the CONNECT.
    pub auth_data: Option<Bytes>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |b: &Option<Bytes>| b.as_ref().map(|b| format!("<{} bytes>", b.len()));
        f.debug_struct("Credentials")
            .field("password", &hidden(&self.password))
            .field("auth_method", &self.auth_method)
            .field("auth_data", &hidden(&self.auth_data))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> Arc<ClientInfo> {
        Arc::new(ClientInfo::new(
            Arc::from("c1"),
            "127.0.0.1:5000".parse().unwrap(),
            ProtocolVersion::V5,
            Arc::from("external"),
            Arc::from("external"),
        ))
    }

    #[test]
    fn with_superuser_shares_when_unchanged_and_copies_when_changed() {
        let a = info();
        assert!(Arc::ptr_eq(&a, &a.with_superuser(false)));
        let su = a.with_superuser(true);
        assert!(su.is_superuser && !a.is_superuser);
        assert_eq!(su.client_id, a.client_id);
    }

    #[test]
    fn credentials_debug_hides_secrets() {
        let c = Credentials {
            password: Some(Bytes::from_static(b"hunter2")),
            auth_method: Some(Arc::from("SCRAM-SHA-256")),
            auth_data: Some(Bytes::from_static(b"secret-nonce")),
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("secret-nonce"),
            "{shown}"
        );
        assert!(
            shown.contains("<7 bytes>") && shown.contains("SCRAM-SHA-256"),
            "{shown}"
        );
    }
}
