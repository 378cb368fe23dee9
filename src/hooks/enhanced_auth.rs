//! `client.enhanced_authenticate`: MQTT 5 enhanced authentication (§4.12). A CONNECT
//! with an Authentication Method asks each hook, in order, for an exchange of that
//! method; the first that has one runs it, step by step, as the connection driver
//! carries its data back and forth in AUTH packets. No hook for the method: the
//! CONNECT is refused with 0x8C (Bad authentication method), as before any existed.
//!
//! An exchange is sans-IO and synchronous: it gets the client's Authentication Data
//! and says what to answer. A method whose steps need I/O would need a `Decision`
//! here; SCRAM's do not (its slow PBKDF2 ran when the password was stored).

use bytes::Bytes;

use super::{Hook, HookPoint, Hooks};
use crate::codec::ReasonCode;

/// What an exchange answers to one message of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send AUTH (0x18, Continue authentication) with this data; the client answers
    /// with an AUTH of its own.
    Continue(Bytes),
    /// Authenticated: the client is `username` from now on (ACL, hooks); the CONNACK
    /// carries `data`.
    Done {
        username: String,
        data: Option<Bytes>,
        superuser: bool,
    },
    /// Refused with this CONNACK reason.
    Fail(ReasonCode),
}

/// One client's exchange of one method.
pub trait AuthExchange: Send {
    /// The next step, given the client's Authentication Data: the CONNECT's first,
    /// then each AUTH's (empty when a packet carried none).
    fn step(&mut self, data: &[u8]) -> AuthStep;
}

impl Hooks {
    /// An exchange for `method` from the first hook that serves it.
    pub fn enhanced_auth(&self, method: &str) -> Option<Box<dyn AuthExchange>> {
        let chain = self.chain(HookPoint::ClientEnhancedAuth)?;
        chain.iter().find_map(|entry| match &entry.hook {
            Hook::EnhancedAuth(f) => f(method),
            _ => None,
        })
    }
}
