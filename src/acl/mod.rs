//! The file ACL (`acl_file = etc/acl.conf`, EMQX's internal ACL): rules in Erlang-term
//! syntax, checked in order, the first that matches decides. It is the last link of
//! `client.check_acl`: backends registered by plugins ask first, and when no rule
//! matches either, `acl_nomatch` decides (see `channel::authorize`).
//!
//! Loading is all or nothing: a syntax error names the file, line and column; at start
//! the broker refuses to run, and `emqx_ctl acl reload` keeps the rules it had.

mod rule;
pub(crate) mod term;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::hooks::{Access, AclResult, ClientInfo, Decision, Hook, HookPoint, Hooks};
pub use rule::{Permission, Rule};

/// The hook's name on `client.check_acl`.
const HOOK_NAME: &str = "acl_file";
/// Below every backend: the file ACL is asked last, as in EMQX.
const HOOK_PRIORITY: i32 = -1000;

/// Why a file could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclError {
    pub path: PathBuf,
    /// Line and column of the offending term; None when the file could not be read.
    pub at: Option<(u32, u32)>,
    pub message: String,
    /// The file does not exist (at start, EMQX runs without file rules then).
    pub not_found: bool,
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.path.display(), self.message)
            }
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for AclError {}

type Rules = Arc<[Rule]>;

/// The loaded rules, shared with the hook.
pub struct FileAcl {
    path: PathBuf,
    rules: Arc<RwLock<Rules>>,
}

impl FileAcl {
    pub fn new(path: PathBuf) -> FileAcl {
        FileAcl {
            path,
            rules: Arc::new(RwLock::new(Arc::from(Vec::new()))),
        }
    }

    /// Load at start: a missing file means no file rules (logged, as EMQX does); any
    /// other error stops the broker.
    pub fn load_at_start(&self, hooks: &Hooks) -> Result<usize, AclError> {
        match self.reload(hooks) {
            Err(e) if e.not_found => {
                tracing::error!(file = %self.path.display(), "ACL file not found: no file rules (acl_nomatch decides)");
                Ok(0)
            }
            other => other,
        }
    }

    /// Read the file again; on success its rules replace the old ones (and the hook is
    /// registered while there is any rule), on error the old ones stay.
    pub fn reload(&self, hooks: &Hooks) -> Result<usize, AclError> {
        let rules: Rules = Arc::from(read(&self.path)?);
        let count = rules.len();
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = rules;
        // The hook reads the rules in force, so a reload swaps them without taking the
        // hook out (which would let everything through meanwhile under acl_nomatch =
        // allow). It is registered only while there are rules: none costs nothing.
        if count > 0 {
            let shared = self.rules.clone();
            let hook = Hook::check_acl(move |info, access, topic| {
                let rules = shared.read().unwrap_or_else(|e| e.into_inner()).clone();
                Decision::Ready(check(&rules, info, access, topic))
            });
            // Already there from an earlier load: that one reads the same rules.
            let _ = hooks.add(HOOK_NAME, HOOK_PRIORITY, hook);
        } else {
            hooks.remove(HookPoint::ClientCheckAcl, HOOK_NAME);
        }
        // Clients' cached answers came from the old rules.
        hooks.invalidate(HookPoint::ClientCheckAcl);
        tracing::info!(file = %self.path.display(), rules = count, "ACL rules loaded");
        Ok(count)
    }
}

/// The first rule matching decides; Ignore when none does.
pub fn check(rules: &[Rule], client: &ClientInfo, access: Access, topic: &str) -> AclResult {
    match rules.iter().find(|r| r.matches(client, access, topic)) {
        Some(r) if r.permission == Permission::Allow => AclResult::Allow,
        Some(_) => AclResult::Deny,
        None => AclResult::Ignore,
    }
}

/// Parse and compile `path`.
pub fn read(path: &Path) -> Result<Vec<Rule>, AclError> {
    let fail = |at, message: String, not_found| AclError {
        path: path.to_path_buf(),
        at,
        message,
        not_found,
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        let not_found = e.kind() == std::io::ErrorKind::NotFound;
        fail(None, format!("cannot read: {e}"), not_found)
    })?;
    let forms =
        term::forms(&text).map_err(|e| fail(Some((e.pos.line, e.pos.col)), e.message, false))?;
    forms
        .iter()
        .map(|t| {
            Rule::compile(t).map_err(|e| fail(Some((e.pos.line, e.pos.col)), e.message, false))
        })
        .collect()
}
