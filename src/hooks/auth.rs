//! `client.authenticate` and `client.check_acl`: chains that stop at the first hook
//! that decides (allow or deny) and fall through on ignore, to the caller's default
//! when every hook ignored (`allow_anonymous`, `acl_nomatch`). Either may wait on a
//! backend: a `Pending` answer suspends the chain, and the hooks after it run when it
//! answers ignore.

use std::sync::Arc;

use super::{ClientInfo, Credentials, Decision, Entry, Hook, HookPoint, Hooks};
use crate::codec::ReasonCode;

/// What an authentication hook answers (EMQX 4: `{stop, #{auth_result => success}}`,
/// `{stop, #{auth_result => Reason}}`, `ok`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Allow {
        superuser: bool,
    },
    /// Refused; the CONNACK reason (v3 clients get `ReasonCode::to_v3_connack`):
    /// `BAD_USER_NAME_OR_PASSWORD`, `NOT_AUTHORIZED`, `BANNED`, `SERVER_UNAVAILABLE`
    /// (a backend that is down and configured to refuse), `BAD_AUTHENTICATION_METHOD`.
    Deny(ReasonCode),
    /// Not mine to decide: ask the next hook.
    Ignore,
}

/// What the chain decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    Allow { superuser: bool },
    Deny(ReasonCode),
}

impl AuthResult {
    fn verdict(self) -> Option<AuthVerdict> {
        match self {
            AuthResult::Allow { superuser } => Some(AuthVerdict::Allow { superuser }),
            AuthResult::Deny(code) => Some(AuthVerdict::Deny(code)),
            AuthResult::Ignore => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    Publish,
    Subscribe,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Publish => "publish",
            Access::Subscribe => "subscribe",
        }
    }
}

/// What an ACL hook answers (EMQX 4: `{stop, allow}`, `{stop, deny}`, `ok`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclResult {
    Allow,
    Deny,
    Ignore,
}

/// What the chain decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclVerdict {
    Allow,
    Deny,
}

impl AclResult {
    fn verdict(self) -> Option<AclVerdict> {
        match self {
            AclResult::Allow => Some(AclVerdict::Allow),
            AclResult::Deny => Some(AclVerdict::Deny),
            AclResult::Ignore => None,
        }
    }
}

impl Hooks {
    /// Run `client.authenticate`; `anonymous` is the answer when every hook ignores
    /// (or none is registered): `Allow { superuser: false }` with `allow_anonymous =
    /// true`, else `Deny(NOT_AUTHORIZED)`. The result's `superuser` goes into the
    /// client's [`ClientInfo`] (`with_superuser`).
    #[inline]
    pub fn authenticate(
        &self,
        info: &Arc<ClientInfo>,
        creds: &Arc<Credentials>,
        anonymous: AuthVerdict,
    ) -> Decision<AuthVerdict> {
        match self.chain(HookPoint::ClientAuthenticate) {
            None => Decision::Ready(anonymous),
            Some(chain) => authenticate_from(chain, 0, info, creds, anonymous),
        }
    }

    /// Run `client.check_acl` for `topic` (a topic name for publish, a filter for
    /// subscribe, as the client sent it: before the mountpoint is applied, as EMQX 4). A superuser is allowed without
    /// asking any hook (as EMQX 4's `emqx_access_control`). `nomatch` is the answer
    /// when every hook ignores (`acl_nomatch`). What to do with a denial (drop,
    /// SUBACK 0x80/0x87, disconnect per `acl_deny_action`) is the caller's.
    #[inline]
    pub fn check_acl(
        &self,
        info: &Arc<ClientInfo>,
        access: Access,
        topic: &str,
        nomatch: AclVerdict,
    ) -> Decision<AclVerdict> {
        if !self.is_registered(HookPoint::ClientCheckAcl) {
            return Decision::Ready(nomatch);
        }
        if info.is_superuser {
            return Decision::Ready(AclVerdict::Allow);
        }
        let chain = self.snapshot(HookPoint::ClientCheckAcl);
        check_acl_from(chain, 0, info, access, topic, nomatch)
    }
}

fn authenticate_from(
    chain: Arc<[Entry]>,
    start: usize,
    info: &Arc<ClientInfo>,
    creds: &Arc<Credentials>,
    anonymous: AuthVerdict,
) -> Decision<AuthVerdict> {
    for (i, entry) in chain.iter().enumerate().skip(start) {
        let Hook::Authenticate(f) = &entry.hook else {
            continue;
        };
        match f(info, creds) {
            Decision::Ready(r) => {
                if let Some(v) = r.verdict() {
                    tracing::debug!(client_id = %info.client_id, hook = %entry.name, verdict = ?v, "authenticated");
                    return Decision::Ready(v);
                }
            }
            Decision::Pending(answer) => {
                let (info, creds) = (info.clone(), creds.clone());
                return Decision::pending(async move {
                    match answer.await.verdict() {
                        Some(v) => v,
                        None => {
                            authenticate_from(chain, i + 1, &info, &creds, anonymous)
                                .resolve()
                                .await
                        }
                    }
                });
            }
        }
    }
    Decision::Ready(anonymous)
}

fn check_acl_from(
    chain: Arc<[Entry]>,
    start: usize,
    info: &Arc<ClientInfo>,
    access: Access,
    topic: &str,
    nomatch: AclVerdict,
) -> Decision<AclVerdict> {
    for (i, entry) in chain.iter().enumerate().skip(start) {
        let Hook::CheckAcl(f) = &entry.hook else {
            continue;
        };
        match f(info, access, topic) {
            Decision::Ready(r) => {
                if let Some(v) = r.verdict() {
                    return Decision::Ready(v);
                }
            }
            Decision::Pending(answer) => {
                // Owned copies only on this (already allocating) path.
                let (info, topic) = (info.clone(), Arc::<str>::from(topic));
                return Decision::pending(async move {
                    match answer.await.verdict() {
                        Some(v) => v,
                        None => {
                            check_acl_from(chain, i + 1, &info, access, &topic, nomatch)
                                .resolve()
                                .await
                        }
                    }
                });
            }
        }
    }
    Decision::Ready(nomatch)
}
