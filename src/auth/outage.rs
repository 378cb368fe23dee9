//! What a backend does when its server is down, slow or answers garbage: the check
//! answers ignore (the next backend, then `allow_anonymous` / `acl_nomatch`, decide, as
//! EMQX 4 does) or, with `<prefix>.on_error = deny`, refuses the client with "server
//! unavailable". Either way the broker keeps serving, and the failure is logged at most
//! once per [`LOG_INTERVAL`] per backend (with how many were not logged), never once
//! per connection, and never with a password.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use quay_config::ConfigError;

use super::settings::Section;
use crate::codec::ReasonCode;
use crate::hooks::{AclResult, AuthResult};

pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// `<prefix>.on_error`: what a failed check answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Ask the next backend (EMQX 4's behaviour; the default).
    Ignore,
    /// Refuse: CONNACK 0x88 (v5) / 3 (v3) "server unavailable"; ACL checks deny.
    Deny,
}

impl OnError {
    pub fn read(section: &Section<'_>) -> Result<OnError, ConfigError> {
        section.get("on_error", OnError::Ignore, |v| match v {
            "ignore" => Ok(OnError::Ignore),
            "deny" => Ok(OnError::Deny),
            _ => Err("ignore or deny".to_string()),
        })
    }

    pub fn auth(self) -> AuthResult {
        match self {
            OnError::Ignore => AuthResult::Ignore,
            OnError::Deny => AuthResult::Deny(ReasonCode::SERVER_UNAVAILABLE),
        }
    }

    pub fn acl(self) -> AclResult {
        match self {
            OnError::Ignore => AclResult::Ignore,
            OnError::Deny => AclResult::Deny,
        }
    }
}

/// Rate-limited logging of one backend's failures.
pub struct Outage {
    backend: &'static str,
    last_logged: Mutex<Option<Instant>>,
    not_logged: AtomicU64,
    failing: AtomicBool,
}

impl Outage {
    pub fn new(backend: &'static str) -> Outage {
        Outage {
            backend,
            last_logged: Mutex::new(None),
            not_logged: AtomicU64::new(0),
            failing: AtomicBool::new(false),
        }
    }

    /// A check failed with `error` (which must not hold a password).
    pub fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.failing.store(true, Ordering::Relaxed);
        let now = Instant::now();
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < LOG_INTERVAL) {
            self.not_logged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(now);
        drop(last);
        let not_logged = self.not_logged.swap(0, Ordering::Relaxed);
        tracing::warn!(
            plugin = self.backend,
            check = what,
            error = %error,
            failures_not_logged = not_logged,
            "authentication backend failed; the check is answered per on_error \
             (next failures logged at most every {}s)",
            LOG_INTERVAL.as_secs()
        );
    }

    /// A check got an answer: log the recovery once.
    pub fn answered(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(
                plugin = self.backend,
                "authentication backend answers again"
            );
        }
    }
}
