//! Life-cycle notifications: `client.connected`, `client.disconnected`,
//! `session.subscribed`, `session.unsubscribed`. Every registered hook sees every
//! event (none can stop the chain, so one plugin can never hide an event from
//! `$SYS` or trace); hooks must return quickly and never block.

use std::sync::Arc;

use super::{ClientInfo, Hook, HookPoint, Hooks};
use crate::codec::{ReasonCode, SubscriptionOptions};

/// What `client.connected` reports besides the client (the `$SYS` connected event's
/// fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectedInfo {
    pub clean_start: bool,
    pub keepalive_s: u16,
    pub session_present: bool,
    /// Session Expiry Interval in effect (v3: 0 for a clean session, else unlimited).
    pub expiry_interval_s: u32,
    /// Unix ms when the CONNACK was sent.
    pub connected_at_ms: u64,
}

/// Why a connection ended, with the name `$SYS/.../disconnected` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT (v5: its reason code).
    Normal(ReasonCode),
    /// The socket closed (or failed) without a DISCONNECT.
    Closed,
    /// Another connection with the same client id resumed the session.
    Takeovered,
    /// Another connection with the same client id started a clean session.
    Discarded,
    /// `emqx_ctl clients kick` (or the HTTP API).
    Kicked,
    KeepaliveTimeout,
    /// The client broke the protocol; the code we sent or would have sent.
    ProtocolError(ReasonCode),
    /// A publish or subscribe was denied and `acl_deny_action = disconnect`.
    NotAuthorized,
    /// It stopped reading while holding publishers up (`zone.stall_timeout`).
    Stalled,
    Shutdown,
}

impl DisconnectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::Normal(_) => "normal",
            DisconnectReason::Closed => "closed",
            DisconnectReason::Takeovered => "takeovered",
            DisconnectReason::Discarded => "discarded",
            DisconnectReason::Kicked => "kicked",
            DisconnectReason::KeepaliveTimeout => "keepalive_timeout",
            DisconnectReason::ProtocolError(_) => "protocol_error",
            DisconnectReason::NotAuthorized => "not_authorized",
            DisconnectReason::Stalled => "stalled",
            DisconnectReason::Shutdown => "shutdown",
        }
    }
}

impl Hooks {
    /// `client.connected`: after the CONNACK that accepted the client.
    #[inline]
    pub fn client_connected(&self, info: &Arc<ClientInfo>, ev: &ConnectedInfo) {
        if self.is_registered(HookPoint::ClientConnected) {
            self.notify(HookPoint::ClientConnected, |h| {
                if let Hook::Connected(f) = h {
                    f(info, ev)
                }
            });
        }
    }

    /// `client.disconnected`: once per connection that ran `client.connected`, when
    /// it ends, at `at_ms` (Unix ms).
    #[inline]
    pub fn client_disconnected(
        &self,
        info: &Arc<ClientInfo>,
        reason: DisconnectReason,
        at_ms: u64,
    ) {
        if self.is_registered(HookPoint::ClientDisconnected) {
            self.notify(HookPoint::ClientDisconnected, |h| {
                if let Hook::Disconnected(f) = h {
                    f(info, reason, at_ms)
                }
            });
        }
    }

    /// `session.subscribed`: a filter was granted (after its ACL check and the store).
    #[inline]
    pub fn session_subscribed(
        &self,
        info: &Arc<ClientInfo>,
        filter: &str,
        opts: &SubscriptionOptions,
    ) {
        if self.is_registered(HookPoint::SessionSubscribed) {
            self.notify(HookPoint::SessionSubscribed, |h| {
                if let Hook::Subscribed(f) = h {
                    f(info, filter, opts)
                }
            });
        }
    }

    /// `session.unsubscribed`: a filter the session had was removed.
    #[inline]
    pub fn session_unsubscribed(&self, info: &Arc<ClientInfo>, filter: &str) {
        if self.is_registered(HookPoint::SessionUnsubscribed) {
            self.notify(HookPoint::SessionUnsubscribed, |h| {
                if let Hook::Unsubscribed(f) = h {
                    f(info, filter)
                }
            });
        }
    }
}
