//! What `emqx_auth_pgsql` and `emqx_auth_mysql` share: EMQX 4's queries and their
//! meaning, over a [`SqlPool`] each backend implements with its own driver.
//!
//! - `auth_query`: no row = not this backend's user (ignore); else the `password`
//!   column (the first column if none is named so) against the client's password, with
//!   the `salt` column if there is one. Wrong = refused (0x86 / rc 4).
//! - `super_query`, asked after a successful password check: a true first column (1,
//!   true) makes the client a superuser, which skips ACL checks.
//! - `acl_query`: rows as in [`super::db_acl`].

use std::sync::Arc;
use std::time::Duration;

use quay_config::ConfigError;

use super::db_acl;
use super::hash::PasswordHash;
use super::outage::{OnError, Outage};
use super::placeholder::Vars;
use super::settings::Section;
use super::sql::{column, Dialect, Row, Statement};
use super::stored::{password_matches, truthy, WRONG_PASSWORD};
use crate::hooks::{
    Access, AclResult, AuthResult, BoxFuture, ClientInfo, Credentials, Decision, Hook,
};
use crate::plugins::{Context, PluginError, Running};

/// A bounded pool of connections to one database.
pub trait SqlPool: Send + Sync + 'static {
    /// Run `sql` with `binds` (all text) and return every row as text. The error must
    /// not contain a password.
    fn query(&self, sql: String, binds: Vec<String>) -> BoxFuture<Result<Vec<Row>, String>>;
    /// Close the connections (plugin unload).
    fn close(&self);
}

/// EMQX 4's default queries (the same for both databases).
pub const AUTH_QUERY: &str = "select password from mqtt_user where username = '%u' limit 1";
pub const SUPER_QUERY: &str = "select is_superuser from mqtt_user where username = '%u' limit 1";
pub const ACL_QUERY: &str =
    "select allow, ipaddr, username, clientid, access, topic from mqtt_acl \
     where ipaddr = '%a' or username = '%u' or username = '$all' or clientid = '%c'";

/// The query settings both backends read.
pub struct Queries {
    pub auth: Option<Statement>,
    pub superuser: Option<Statement>,
    pub acl: Option<Statement>,
    pub hash: PasswordHash,
    pub timeout: Duration,
    pub on_error: OnError,
}

impl Queries {
    pub fn read(s: &Section<'_>, dialect: Dialect) -> Result<Queries, ConfigError> {
        let build = |t: &super::placeholder::Template| Statement::build(t, dialect);
        Ok(Queries {
            auth: s.checked_template("auth_query", AUTH_QUERY, build)?,
            superuser: s.checked_template("super_query", SUPER_QUERY, build)?,
            acl: s.checked_template("acl_query", ACL_QUERY, build)?,
            hash: s.password_hash("sha256")?,
            timeout: s.duration("query_timeout", Duration::from_secs(5))?,
            on_error: OnError::read(s)?,
        })
    }
}

struct Backend {
    name: &'static str,
    pool: Box<dyn SqlPool>,
    q: Queries,
    outage: Outage,
}

struct Handle(Arc<Backend>);

impl Running for Handle {
    fn stop(self: Box<Self>) {
        self.0.pool.close();
    }
}

/// Register the hooks of a started backend.
pub fn register(
    ctx: &Context,
    name: &'static str,
    pool: Box<dyn SqlPool>,
    q: Queries,
) -> Result<Box<dyn Running>, PluginError> {
    let backend = Arc::new(Backend {
        name,
        pool,
        q,
        outage: Outage::new(name),
    });
    let hooks = &ctx.broker.hooks;
    let start_err = |e: crate::hooks::HookError| PluginError::Start(e.to_string());
    if backend.q.auth.is_some() {
        let b = backend.clone();
        hooks
            .add(
                name,
                0,
                Hook::authenticate(move |info, creds| b.clone().authenticate(info, creds)),
            )
            .map_err(start_err)?;
    }
    if backend.q.acl.is_some() {
        let b = backend.clone();
        hooks
            .add(
                name,
                0,
                Hook::check_acl(move |info, access, topic| {
                    b.clone().check_acl(info, access, topic)
                }),
            )
            .map_err(start_err)?;
    }
    Ok(Box::new(Handle(backend)))
}

impl Backend {
    async fn rows(&self, what: &str, stmt: &Statement, vars: &Vars<'_>) -> Option<Vec<Row>> {
        let query = self.pool.query(stmt.sql.clone(), stmt.values(vars));
        match tokio::time::timeout(self.q.timeout, query).await {
            Ok(Ok(rows)) => {
                self.outage.answered();
                Some(rows)
            }
            Ok(Err(e)) => {
                self.outage.failed(what, &e);
                None
            }
            Err(_) => {
                self.outage
                    .failed(what, &format!("no answer within {:?}", self.q.timeout));
                None
            }
        }
    }

    fn authenticate(
        self: Arc<Self>,
        info: &Arc<ClientInfo>,
        creds: &Arc<Credentials>,
    ) -> Decision<AuthResult> {
        if self.q.auth.is_none() {
            return Decision::Ready(AuthResult::Ignore);
        }
        let (info, password) = (info.clone(), creds.password.clone());
        Decision::pending(async move {
            let Some(stmt) = &self.q.auth else {
                return AuthResult::Ignore;
            };
            let vars = Vars {
                password: password.as_deref(),
                ..Vars::client(&info)
            };
            let Some(rows) = self.rows("auth_query", stmt, &vars).await else {
                return self.q.on_error.auth();
            };
            let Some(row) = rows.first() else {
                return AuthResult::Ignore; // not this backend's user
            };
            let stored = column(row, "password")
                .or_else(|| row.first().and_then(|(_, v)| v.as_deref()))
                .map(str::to_string);
            let Some(stored) = stored else {
                return WRONG_PASSWORD; // a user without a password cannot log in with one
            };
            let salt = column(row, "salt").unwrap_or_default().to_string();
            if !password_matches(self.q.hash, password.clone(), salt, stored).await {
                return WRONG_PASSWORD;
            }
            let superuser = match &self.q.superuser {
                None => false,
                Some(stmt) => match self.rows("super_query", stmt, &Vars::client(&info)).await {
                    Some(rows) => rows
                        .first()
                        .and_then(|r| r.first())
                        .and_then(|(_, v)| v.as_deref())
                        .is_some_and(truthy),
                    None => false,
                },
            };
            AuthResult::Allow { superuser }
        })
    }

    fn check_acl(
        self: Arc<Self>,
        info: &Arc<ClientInfo>,
        access: Access,
        topic: &str,
    ) -> Decision<AclResult> {
        if self.q.acl.is_none() {
            return Decision::Ready(AclResult::Ignore);
        }
        let (info, topic) = (info.clone(), topic.to_string());
        Decision::pending(async move {
            let Some(stmt) = &self.q.acl else {
                return AclResult::Ignore;
            };
            let vars = Vars {
                topic: Some(&topic),
                access: Some(access),
                ..Vars::client(&info)
            };
            let Some(rows) = self.rows("acl_query", stmt, &vars).await else {
                return self.q.on_error.acl();
            };
            let mut rules = Vec::with_capacity(rows.len());
            for row in &rows {
                match db_acl::from_row(row) {
                    Ok(r) => rules.push(r),
                    Err(e) => tracing::warn!(plugin = self.name, error = %e, "ACL row skipped"),
                }
            }
            db_acl::decide(&rules, &info, access, &topic)
        })
    }
}
