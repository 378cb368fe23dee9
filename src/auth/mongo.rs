//! `emqx_auth_mongo`: authentication, superuser and ACL from MongoDB (the official
//! `mongodb` driver), with EMQX 4's keys, defaults and document layout.
//!
//! A selector (`username=%u`, conditions joined by commas) becomes a filter document
//! whose values are the client's strings: a value is always a BSON string, never parsed,
//! so a username like `{"$ne": ""}` matches only a user of that name.
//!
//! - auth: `find_one` in `auth_query.collection`; no document = not this backend's user
//!   (ignore); else `auth_query.password_field` (`password`, or `password,salt`).
//! - super: `super_query.super_field` true (`true`, 1, "true") = superuser.
//! - ACL: every document matching any `acl_query.selector*`; its `publish`,
//!   `subscribe` and `pubsub` arrays list topic filters (`%u`/`%c` allowed) that
//!   allow; nothing matching = ignore.

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::options::{ClientOptions, Credential, ServerAddress, Tls, TlsOptions};
use mongodb::Client;

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

pub const NAME: &str = "emqx_auth_mongo";

pub fn spec() -> Spec {
    Spec {
        name: NAME,
        description: "Authentication/ACL with MongoDB",
        start,
    }
}

/// `field=%u,other=%c`: field names and value templates.
#[derive(Debug, Clone)]
struct Selector(Vec<(String, Template)>);

impl Selector {
    fn parse(text: &str) -> Result<Selector, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((field, value)) = part.split_once('=') else {
                return Err("field=value[,field=value...], e.g. username=%u".to_string());
            };
            let field = field.trim();
            if field.is_empty() || field.starts_with('$') {
                return Err("a field name that does not start with $, e.g. username=%u".to_string());
            }
            out.push((field.to_string(), Template::parse(value.trim())));
        }
        if out.is_empty() {
            return Err("field=value, e.g. username=%u".to_string());
        }
        Ok(Selector(out))
    }

    fn filter(&self, vars: &Vars<'_>) -> Document {
        let mut d = Document::new();
        for (field, t) in &self.0 {
            d.insert(
                field.clone(),
                Bson::String(t.render_with(vars, str::to_string)),
            );
        }
        d
    }
}

struct Query {
    collection: String,
    selector: Selector,
}

struct Backend {
    db: mongodb::Database,
    timeout: Duration,
    hash: PasswordHash,
    password_field: String,
    salt_field: Option<String>,
    auth: Option<Query>,
    superuser: Option<(Query, String)>,
    acl: Option<(String, Vec<Selector>)>,
    on_error: OnError,
    outage: Outage,
}

struct Handle;
impl Running for Handle {}

fn start(ctx: Context) -> BoxFuture<Result<Box<dyn Running>, PluginError>> {
    Box::pin(async move {
        let s = Section::new(&ctx.keys, "auth.mongo");
        let kind = s.string("type", "single")?;
        let rs_set_name = s.string("rs_set_name", "")?;
        let servers = s.string("server", "127.0.0.1:27017")?;
        let pool = s.pool(8)?;
        let login = s.string("login", "")?;
        let password = s.string("password", "")?;
        let auth_source = s.string("auth_source", "admin")?;
        let database = s.string("database", "mqtt")?;
        let timeout = s.duration("query_timeout", Duration::from_secs(5))?;
        let on_error = OnError::read(&s)?;
        let tls = s.tls()?;
        let selector = |name: &'static str, default: &str| {
            s.get(name, None, |v| Selector::parse(v).map(Some))
                .map(|sel| sel.or_else(|| Selector::parse(default).ok()))
        };
        let auth_collection = s.string("auth_query.collection", "mqtt_user")?;
        let fields = s.string("auth_query.password_field", "password")?;
        let hash = s.get(
            "auth_query.password_hash",
            PasswordHash::parse("sha256").map_err(PluginError::Start)?,
            |v| PasswordHash::parse(v).map_err(|_| super::hash::EXPECTED.to_string()),
        )?;
        let auth_selector = selector("auth_query.selector", "username=%u")?;
        let super_on = s.boolean("super_query", true)?;
        let super_collection = s.string("super_query.collection", "mqtt_user")?;
        let super_field = s.string("super_query.super_field", "is_superuser")?;
        let super_selector = selector("super_query.selector", "username=%u")?;
        let acl_on = s.boolean("acl_query", true)?;
        let acl_collection = s.string("acl_query.collection", "mqtt_acl")?;
        let mut acl_selectors = vec![selector("acl_query.selector", "username=%u")?];
        // EMQX: acl_query.selector.1, .2, ... are asked too (e.g. username=$all).
        const NUMBERED: [&str; 8] = [
            "acl_query.selector.1",
            "acl_query.selector.2",
            "acl_query.selector.3",
            "acl_query.selector.4",
            "acl_query.selector.5",
            "acl_query.selector.6",
            "acl_query.selector.7",
            "acl_query.selector.8",
        ];
        for key in NUMBERED {
            acl_selectors.push(s.get(key, None, |v| Selector::parse(v).map(Some))?);
        }
        if !matches!(kind.as_str(), "single" | "unknown" | "sharded" | "rs") {
            return Err(s.invalid("type", "single, unknown, sharded or rs").into());
        }
        if kind == "rs" && rs_set_name.is_empty() {
            return Err(s
                .invalid("rs_set_name", "a replica set name (type = rs)")
                .into());
        }
        let mut hosts = Vec::new();
        for h in servers.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let (host, port) = host_port(h, 27017).map_err(|e| s.invalid("server", &e))?;
            hosts.push(ServerAddress::Tcp {
                host,
                port: Some(port),
            });
        }
        if hosts.is_empty() {
            return Err(s.invalid("server", "host:port[,host:port...]").into());
        }
        let tls = match tls {
            None => None,
            Some(t) => {
                if t.keyfile.is_some() && t.keyfile != t.certfile {
                    return Err(s
                        .invalid(
                            "ssl.keyfile",
                            "the same file as ssl.certfile (one PEM with the certificate and key)",
                        )
                        .into());
                }
                let mut o = TlsOptions::default();
                o.ca_file_path = t.cacertfile.clone();
                o.cert_key_file_path = t.certfile.clone();
                o.allow_invalid_certificates = Some(!t.verify);
                Some(Tls::Enabled(o))
            }
        };
        s.finish()?;

        let mut options = ClientOptions::default();
        options.hosts = hosts;
        options.app_name = Some("quay".to_string());
        options.max_pool_size = Some(pool);
        options.min_pool_size = Some(0);
        options.connect_timeout = Some(timeout);
        options.server_selection_timeout = Some(timeout);
        options.direct_connection = Some(kind == "single");
        options.repl_set_name = (!rs_set_name.is_empty()).then_some(rs_set_name);
        options.tls = tls;
        if !login.is_empty() {
            let mut c = Credential::default();
            c.username = Some(login);
            c.password = Some(password);
            c.source = Some(auth_source);
            options.credential = Some(c);
        }
        // Connects lazily: a MongoDB that is down when the plugin loads is not an error.
        let client = Client::with_options(options)
            .map_err(|e| PluginError::Start(format!("auth.mongo: {e}")))?;
        let (password_field, salt_field) = match fields.split_once(',') {
            Some((p, salt)) => (p.trim().to_string(), Some(salt.trim().to_string())),
            None => (fields.trim().to_string(), None),
        };
        let backend = Arc::new(Backend {
            db: client.database(&database),
            timeout,
            hash,
            password_field,
            salt_field,
            auth: auth_selector.map(|selector| Query {
                collection: auth_collection,
                selector,
            }),
            superuser: match (super_on, super_selector) {
                (true, Some(selector)) => Some((
                    Query {
                        collection: super_collection,
                        selector,
                    },
                    super_field,
                )),
                _ => None,
            },
            acl: acl_on.then(|| {
                (
                    acl_collection,
                    acl_selectors.into_iter().flatten().collect(),
                )
            }),
            on_error,
            outage: Outage::new(NAME),
        });
        let hooks = &ctx.broker.hooks;
        let start_err = |e: crate::hooks::HookError| PluginError::Start(e.to_string());
        if backend.auth.is_some() {
            let b = backend.clone();
            hooks
                .add(
                    NAME,
                    0,
                    Hook::authenticate(move |info, creds| b.clone().authenticate(info, creds)),
                )
                .map_err(start_err)?;
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
                .map_err(start_err)?;
        }
        Ok(Box::new(Handle) as Box<dyn Running>)
    })
}

fn text(v: Option<&Bson>) -> Option<String> {
    match v? {
        Bson::String(s) => Some(s.clone()),
        Bson::Boolean(b) => Some(b.to_string()),
        Bson::Int32(i) => Some(i.to_string()),
        Bson::Int64(i) => Some(i.to_string()),
        Bson::Double(d) => Some(d.to_string()),
        _ => None,
    }
}

impl Backend {
    async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = mongodb::error::Result<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.timeout, fut).await {
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

    async fn find_one(&self, what: &str, q: &Query, vars: &Vars<'_>) -> Option<Option<Document>> {
        let coll = self.db.collection::<Document>(&q.collection);
        let filter = q.selector.filter(vars);
        self.timed(what, async {
            coll.find_one(filter).max_time(self.timeout).await
        })
        .await
    }

    fn authenticate(
        self: Arc<Self>,
        info: &Arc<ClientInfo>,
        creds: &Arc<Credentials>,
    ) -> Decision<AuthResult> {
        let (info, password) = (info.clone(), creds.password.clone());
        Decision::pending(async move {
            let Some(q) = &self.auth else {
                return AuthResult::Ignore;
            };
            let vars = Vars {
                password: password.as_deref(),
                ..Vars::client(&info)
            };
            let Some(found) = self.find_one("auth_query", q, &vars).await else {
                return self.on_error.auth();
            };
            let Some(user) = found else {
                return AuthResult::Ignore; // not this backend's user
            };
            let Some(stored) = text(user.get(&self.password_field)) else {
                return WRONG_PASSWORD;
            };
            let salt = self
                .salt_field
                .as_ref()
                .and_then(|f| text(user.get(f)))
                .unwrap_or_default();
            if !password_matches(self.hash, password.clone(), salt, stored).await {
                return WRONG_PASSWORD;
            }
            let superuser = match &self.superuser {
                None => false,
                Some((q, field)) => {
                    match self.find_one("super_query", q, &Vars::client(&info)).await {
                        Some(Some(d)) => text(d.get(field)).is_some_and(|v| truthy(&v)),
                        _ => false,
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
        let (info, topic) = (info.clone(), topic.to_string());
        Decision::pending(async move {
            let Some((collection, selectors)) = &self.acl else {
                return AclResult::Ignore;
            };
            let vars = Vars {
                topic: Some(&topic),
                access: Some(access),
                ..Vars::client(&info)
            };
            let any: Vec<Bson> = selectors
                .iter()
                .map(|s| Bson::Document(s.filter(&vars)))
                .collect();
            let coll = self.db.collection::<Document>(collection);
            let docs = self
                .timed("acl_query", async {
                    let cursor = coll
                        .find(doc! { "$or": any })
                        .max_time(self.timeout)
                        .limit(ACL_DOCS_MAX)
                        .await?;
                    collect_docs(cursor).await
                })
                .await;
            let Some(docs) = docs else {
                return self.on_error.acl();
            };
            let mut rules = Vec::new();
            for d in &docs {
                for (field, code) in [("subscribe", "1"), ("publish", "2"), ("pubsub", "3")] {
                    let Some(Bson::Array(topics)) = d.get(field) else {
                        continue;
                    };
                    for t in topics.iter().filter_map(|t| t.as_str()) {
                        match db_acl::from_redis(t, code) {
                            Ok(r) => rules.push(r),
                            Err(e) => {
                                tracing::warn!(plugin = NAME, topic = %t, error = %e, "ACL entry skipped")
                            }
                        }
                    }
                }
            }
            db_acl::decide(&rules, &info, access, &topic)
        })
    }
}

/// At most this many ACL documents are read for one check.
const ACL_DOCS_MAX: i64 = 1000;

/// Drain a cursor (already limited to [`ACL_DOCS_MAX`] by the query) into a vector.
async fn collect_docs(
    mut cursor: mongodb::Cursor<Document>,
) -> mongodb::error::Result<Vec<Document>> {
    let mut out = Vec::new();
    while cursor.advance().await? {
        out.push(cursor.deserialize_current()?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ProtocolVersion;

    #[test]
    fn selectors_become_string_filters() {
        let mut info = ClientInfo::new(
            Arc::from("c1"),
            "127.0.0.1:1".parse().unwrap(),
            ProtocolVersion::V5,
            Arc::from("l"),
            Arc::from("z"),
        );
        info.username = Some(Arc::from("{\"$ne\": \"\"}"));
        let s = Selector::parse("username=%u, clientid=%c").unwrap();
        assert_eq!(
            s.filter(&Vars::client(&info)),
            doc! { "username": "{\"$ne\": \"\"}", "clientid": "c1" }
        );
        assert!(Selector::parse("username").is_err());
        assert!(Selector::parse("$where=1").is_err());
        assert!(Selector::parse("").is_err());
    }
}
