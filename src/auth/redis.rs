//! `emqx_auth_redis`: authentication, superuser and ACL from Redis, as EMQX 4.
//!
//! - `auth_cmd` (default `HMGET mqtt_user:%u password`): a nil first value = the user
//!   is not here (ignore); else the first value is the stored password, the second
//!   (if any) its salt, compared per `password_hash`.
//! - `super_cmd` (`HGET mqtt_user:%u is_superuser`): `1`/`true` = superuser.
//! - `acl_cmd` (`HGETALL mqtt_acl:%u`): each field a topic filter, its value the access
//!   (1 subscribe, 2 publish, 3 both); allow rules only, nothing matching = ignore.
//!
//! A command is split into words when loaded and each placeholder is replaced inside
//! its word: a value always travels as one argument, so a username `a password`
//! cannot add an argument to `HMGET`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, RedisConnectionInfo, Value,
};
use tokio::sync::Mutex;

use super::db_acl;
use super::hash::PasswordHash;
use super::outage::{OnError, Outage};
use super::placeholder::{Template, Vars};
use super::settings::{host_port, Section};
use super::stored::{password_matches, truthy, WRONG_PASSWORD};
use crate::hooks::{
    Access, AclResult, AuthResult, BoxFuture, ClientInfo, Credentials, Decision, Hook,
};
use crate::plugins::{Context, PluginError, Running, Spec};

pub const NAME: &str = "emqx_auth_redis";

pub fn spec() -> Spec {
    Spec {
        name: NAME,
        description: "Authentication/ACL with Redis",
        start,
    }
}

/// After a failed connect, a slot answers "down" at once for this long instead of
/// every client waiting for its own connect timeout.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// One command: its words, each a template.
#[derive(Debug, Clone)]
struct Command(Vec<Template>);

impl Command {
    fn parse(text: &str) -> Command {
        Command(text.split_whitespace().map(Template::parse).collect())
    }

    fn argv(&self, vars: &Vars<'_>) -> Vec<String> {
        self.0
            .iter()
            .map(|w| w.render_with(vars, str::to_string))
            .collect()
    }
}

struct Settings {
    info: ConnectionInfo,
    tls: Option<redis::TlsCertificates>,
    pool: u32,
    timeout: Duration,
    hash: PasswordHash,
    auth: Option<Command>,
    superuser: Option<Command>,
    acl: Option<Command>,
    on_error: OnError,
}

fn read_settings(ctx: &Context) -> Result<Settings, PluginError> {
    let s = Section::new(&ctx.keys, "auth.redis");
    let kind = s.string("type", "single")?;
    if kind != "single" {
        return Err(s
            .invalid("type", "single (sentinel and cluster are not supported)")
            .into());
    }
    let (host, port) = s.get("server", ("127.0.0.1".to_string(), 6379), |v| {
        host_port(v, 6379)
    })?;
    let db = s.get("database", 0i64, |v| {
        quay_config::plugin_read::uint(v, 0, 1 << 20)
    })?;
    let password = s.string("password", "")?;
    let username = s.string("username", "")?;
    let pool = s.pool(8)?;
    let timeout = s.duration("query_timeout", Duration::from_secs(5))?;
    let hash = s.password_hash("plain")?;
    let command = |name, default| -> Result<Option<Command>, PluginError> {
        Ok(s.template(name, default)?.map(|t| Command::parse(&t)))
    };
    let auth = command("auth_cmd", "HMGET mqtt_user:%u password")?;
    let superuser = command("super_cmd", "HGET mqtt_user:%u is_superuser")?;
    let acl = command("acl_cmd", "HGETALL mqtt_acl:%u")?;
    let on_error = OnError::read(&s)?;
    let tls = s.tls()?;
    let tls_certs = match &tls {
        None => None,
        Some(t) => {
            let read = |p: &std::path::PathBuf, key: &str| {
                std::fs::read(p)
                    .map_err(|e| s.invalid(key, &format!("a readable file ({}: {e})", p.display())))
            };
            let root_cert = t
                .cacertfile
                .as_ref()
                .map(|p| read(p, "ssl.cacertfile"))
                .transpose()?;
            let client_tls = match (&t.certfile, &t.keyfile) {
                (Some(c), Some(k)) => Some(redis::ClientTlsConfig {
                    client_cert: read(c, "ssl.certfile")?,
                    client_key: read(k, "ssl.keyfile")?,
                }),
                _ => None,
            };
            Some(redis::TlsCertificates {
                client_tls,
                root_cert,
            })
        }
    };
    s.finish()?;
    let addr = match &tls {
        None => ConnectionAddr::Tcp(host, port),
        Some(t) => ConnectionAddr::TcpTls {
            host,
            port,
            insecure: !t.verify,
            tls_params: None,
        },
    };
    let info = ConnectionInfo {
        addr,
        redis: RedisConnectionInfo {
            db,
            username: (!username.is_empty()).then_some(username),
            password: (!password.is_empty()).then_some(password),
            ..Default::default()
        },
    };
    Ok(Settings {
        info,
        tls: tls_certs,
        pool,
        timeout,
        hash,
        auth,
        superuser,
        acl,
        on_error,
    })
}

enum Slot {
    Empty,
    Up(MultiplexedConnection),
    Down(Instant),
}

/// `pool` multiplexed connections, made when first needed and remade after a
/// connection error: a Redis that is down when the plugin loads is not an error.
struct Pool {
    client: Client,
    config: AsyncConnectionConfig,
    slots: Vec<Mutex<Slot>>,
    next: AtomicUsize,
}

impl Pool {
    async fn connection(&self, slot: usize) -> Result<MultiplexedConnection, String> {
        let mut s = self.slots[slot].lock().await;
        match &*s {
            Slot::Up(c) => return Ok(c.clone()),
            Slot::Down(at) if at.elapsed() < RECONNECT_BACKOFF => {
                return Err("not reachable (retrying shortly)".to_string())
            }
            _ => {}
        }
        match self
            .client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
        {
            Ok(c) => {
                *s = Slot::Up(c.clone());
                Ok(c)
            }
            Err(e) => {
                *s = Slot::Down(Instant::now());
                Err(format!("connect: {e}"))
            }
        }
    }

    async fn query(&self, argv: Vec<String>) -> Result<Value, String> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let mut conn = self.connection(slot).await?;
        let Some((name, args)) = argv.split_first() else {
            return Err("an empty command".to_string());
        };
        let mut cmd = redis::cmd(name);
        for a in args {
            cmd.arg(a);
        }
        match cmd.query_async::<Value>(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error()
                    || e.is_unrecoverable_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                {
                    *self.slots[slot].lock().await = Slot::Empty;
                }
                Err(format!("{name}: {e}"))
            }
        }
    }
}

struct Backend {
    pool: Pool,
    timeout: Duration,
    hash: PasswordHash,
    auth: Option<Command>,
    superuser: Option<Command>,
    acl: Option<Command>,
    on_error: OnError,
    outage: Outage,
}

struct Handle;
impl Running for Handle {}

fn start(ctx: Context) -> BoxFuture<Result<Box<dyn Running>, PluginError>> {
    Box::pin(async move {
        let s = read_settings(&ctx)?;
        let client = match s.tls {
            None => Client::open(s.info),
            Some(certs) => Client::build_with_tls(s.info, certs),
        }
        .map_err(|e| PluginError::Start(format!("auth.redis: {e}")))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(s.timeout)
            .set_response_timeout(s.timeout);
        let backend = Arc::new(Backend {
            pool: Pool {
                client,
                config,
                slots: (0..s.pool).map(|_| Mutex::new(Slot::Empty)).collect(),
                next: AtomicUsize::new(0),
            },
            timeout: s.timeout,
            hash: s.hash,
            auth: s.auth,
            superuser: s.superuser,
            acl: s.acl,
            on_error: s.on_error,
            outage: Outage::new(NAME),
        });
        let hooks = &ctx.broker.hooks;
        if backend.auth.is_some() {
            let b = backend.clone();
            hooks
                .add(
                    NAME,
                    0,
                    Hook::authenticate(move |info, creds| b.clone().authenticate(info, creds)),
                )
                .map_err(|e| PluginError::Start(e.to_string()))?;
        }
        if backend.acl.is_some() {
            let b = backend.clone();
            hooks
                .add(
                    NAME,
                    0,
                    Hook::check_acl(move |info, access, topic| {
                        b.clone().check_acl(info, access, topic)
                    }),
                )
                .map_err(|e| PluginError::Start(e.to_string()))?;
        }
        Ok(Box::new(Handle) as Box<dyn Running>)
    })
}

impl Backend {
    async fn run(&self, what: &str, argv: Vec<String>) -> Option<Value> {
        match tokio::time::timeout(self.timeout, self.pool.query(argv)).await {
            Ok(Ok(v)) => {
                self.outage.answered();
                Some(v)
            }
            Ok(Err(e)) => {
                self.outage.failed(what, &e);
                None
            }
            Err(_) => {
                self.outage
                    .failed(what, &format!("no answer within {:?}", self.timeout));
                None
            }
        }
    }

    fn authenticate(
        self: Arc<Self>,
        info: &Arc<ClientInfo>,
        creds: &Arc<Credentials>,
    ) -> Decision<AuthResult> {
        let Some(cmd) = &self.auth else {
            return Decision::Ready(AuthResult::Ignore);
        };
        let argv = cmd.argv(&Vars {
            password: creds.password.as_deref(),
            ..Vars::client(info)
        });
        let (info, password) = (info.clone(), creds.password.clone());
        Decision::pending(async move {
            let Some(answer) = self.run("auth_cmd", argv).await else {
                return self.on_error.auth();
            };
            let mut values = strings(answer).into_iter();
            let Some(Some(stored)) = values.next() else {
                return AuthResult::Ignore; // not this backend's user
            };
            let salt = values.next().flatten().unwrap_or_default();
            if !password_matches(self.hash, password, salt, stored).await {
                return WRONG_PASSWORD;
            }
            let superuser = match &self.superuser {
                None => false,
                Some(cmd) => {
                    let argv = cmd.argv(&Vars::client(&info));
                    match self.run("super_cmd", argv).await {
                        Some(v) => strings(v)
                            .first()
                            .cloned()
                            .flatten()
                            .is_some_and(|v| truthy(&v)),
                        None => false,
                    }
                }
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
        let Some(cmd) = &self.acl else {
            return Decision::Ready(AclResult::Ignore);
        };
        let argv = cmd.argv(&Vars {
            topic: Some(topic),
            access: Some(access),
            ..Vars::client(info)
        });
        let (info, topic) = (info.clone(), topic.to_string());
        Decision::pending(async move {
            let Some(answer) = self.run("acl_cmd", argv).await else {
                return self.on_error.acl();
            };
            let mut rules = Vec::new();
            for (filter, acc) in pairs(answer) {
                match db_acl::from_redis(&filter, &acc) {
                    Ok(r) => rules.push(r),
                    Err(e) => {
                        tracing::warn!(plugin = NAME, topic = %filter, error = %e, "ACL entry skipped")
                    }
                }
            }
            db_acl::decide(&rules, &info, access, &topic)
        })
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        Value::Okay => Some("OK".to_string()),
        _ => None,
    }
}

/// A reply as a list of optional strings (one value, or an array of them).
fn strings(v: Value) -> Vec<Option<String>> {
    match v {
        Value::Array(items) | Value::Set(items) => items.iter().map(text).collect(),
        other => vec![text(&other)],
    }
}

/// A hash reply (`HGETALL`: a flat array in RESP2, a map in RESP3) as pairs.
fn pairs(v: Value) -> Vec<(String, String)> {
    match v {
        Value::Map(kv) => kv
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, text(v)?)))
            .collect(),
        Value::Array(items) => items
            .chunks_exact(2)
            .filter_map(|kv| Some((text(&kv[0])?, text(&kv[1])?)))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ProtocolVersion;

    #[test]
    fn a_value_with_spaces_stays_one_argument() {
        let mut info = ClientInfo::new(
            Arc::from("c"),
            "127.0.0.1:1".parse().unwrap(),
            ProtocolVersion::V5,
            Arc::from("l"),
            Arc::from("z"),
        );
        info.username = Some(Arc::from("a password"));
        let argv = Command::parse("HMGET  mqtt_user:%u password").argv(&Vars::client(&info));
        assert_eq!(argv, ["HMGET", "mqtt_user:a password", "password"]);
    }

    #[test]
    fn replies_as_strings_and_pairs() {
        let v = Value::Array(vec![Value::BulkString(b"pw".to_vec()), Value::Nil]);
        assert_eq!(strings(v), [Some("pw".to_string()), None]);
        let h = Value::Array(vec![
            Value::BulkString(b"a/#".to_vec()),
            Value::BulkString(b"1".to_vec()),
            Value::BulkString(b"odd".to_vec()),
        ]);
        assert_eq!(pairs(h), [("a/#".to_string(), "1".to_string())]);
    }
}
