//! `emqx_auth_http` (EMQX 4): ask a web service. `auth_req` authenticates, `super_req`
//! (asked after a successful authentication) grants superuser, `acl_req` decides
//! publish and subscribe.
//!
//! Answers, as EMQX 4: 200 allows (a body of `ignore` ignores); 400/401 refuse with
//! "bad user name or password" and other 4xx with "not authorized" (an ACL request:
//! deny); anything else, a refused connection or no answer within
//! `auth.http.request.timeout` is not this backend's decision (ignore: the next in the
//! chain, then `allow_anonymous` / `acl_nomatch`), logged at most once per 10 s.
//!
//! Every check is a `Decision::Pending` the connection awaits without blocking its
//! thread; every request is bounded by the timeout, retries included. Placeholder
//! values enter only as URL-encoded query or form values or JSON strings, never as
//! URL text. This module must never log a password.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quay_config::{plugin_read, ConfigError, PluginKeys};

use super::placeholder::{Template, Vars};
use crate::codec::ReasonCode;
use crate::hooks::{AclResult, AuthResult, ClientInfo, Decision, Hook};
use crate::plugins::{Context, PluginError, Running, Spec};

pub const PLUGIN: &str = "emqx_auth_http";

pub fn spec() -> Spec {
    Spec {
        name: PLUGIN,
        description: "Authentication/ACL with HTTP API",
        start: |ctx| Box::pin(start(ctx)),
    }
}

const LOG_INTERVAL_MS: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Put,
}

/// One configured request (`auth_req`, `super_req`, `acl_req`).
#[derive(Debug, Clone)]
struct Request {
    url: String,
    method: Method,
    json: bool,
    params: Vec<(String, Template)>,
    headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct Settings {
    auth: Option<Request>,
    superuser: Option<Request>,
    acl: Option<Request>,
    timeout: Duration,
    connect_timeout: Duration,
    retry_times: u32,
    retry_interval: Duration,
    retry_backoff: f64,
    pool_size: usize,
}

const KNOWN: &[&str] = &[
    "auth.http.{auth_req,super_req,acl_req}",
    "auth.http.<req>.method",
    "auth.http.<req>.content_type",
    "auth.http.<req>.params",
    "auth.http.<req>.headers.<name>",
    "auth.http.header.<name>",
    "auth.http.request.timeout",
    "auth.http.request.connect_timeout",
    "auth.http.request.retry_times",
    "auth.http.request.retry_interval",
    "auth.http.request.retry_backoff",
    "auth.http.pool_size",
];

fn settings(keys: &PluginKeys) -> Result<Settings, ConfigError> {
    let mut global_headers = Vec::new();
    for (rest, setting) in keys.section("auth.http") {
        let full = format!("auth.http.{rest}");
        let known_req = |r: &str| ["auth_req", "super_req", "acl_req"].contains(&r);
        let ok = match rest.split_once('.') {
            None => known_req(rest) || rest == "pool_size",
            Some(("header", name)) => {
                global_headers.push((name.to_string(), setting.value.clone()));
                true
            }
            Some(("request", field)) => [
                "timeout",
                "connect_timeout",
                "retry_times",
                "retry_interval",
                "retry_backoff",
            ]
            .contains(&field),
            Some((req, field)) if known_req(req) => {
                ["method", "content_type", "params"].contains(&field)
                    || field
                        .strip_prefix("headers.")
                        .is_some_and(|h| !h.is_empty())
            }
            _ => false,
        };
        if !ok {
            return Err(keys.unknown(&full, KNOWN));
        }
    }
    let request = |name: &str| -> Result<Option<Request>, ConfigError> {
        let key = format!("auth.http.{name}");
        // Empty = this request is off (so an environment variable can turn it off).
        // Its other keys are checked either way.
        let url = keys
            .read(&key, |v| {
                let url = v.trim();
                if url.is_empty() {
                    return Ok(None);
                }
                match url.parse::<reqwest::Url>() {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(Some(url.to_string())),
                    _ => Err("an http:// or https:// URL, or nothing".into()),
                }
            })?
            .flatten();
        let method = keys
            .read(&format!("{key}.method"), |v| match v {
                "get" | "GET" => Ok(Method::Get),
                "post" | "POST" => Ok(Method::Post),
                "put" | "PUT" => Ok(Method::Put),
                _ => Err("get, post or put".into()),
            })?
            .unwrap_or(Method::Post);
        let mut json = keys
            .read(&format!("{key}.content_type"), |v| match v {
                "json" | "application/json" => Ok(true),
                "x-www-form-urlencoded" | "application/x-www-form-urlencoded" => Ok(false),
                _ => Err("json or x-www-form-urlencoded".into()),
            })?
            .unwrap_or(false);
        let params = keys
            .read(&format!("{key}.params"), |v| {
                v.split(',')
                    .filter(|p| !p.trim().is_empty())
                    .map(|p| match p.split_once('=') {
                        Some((k, t)) if !k.trim().is_empty() => {
                            Ok((k.trim().to_string(), Template::parse(t.trim())))
                        }
                        _ => Err(
                            "name=value pairs separated by commas (clientid=%c,username=%u)".into(),
                        ),
                    })
                    .collect::<Result<Vec<_>, String>>()
            })?
            .unwrap_or_default();
        let mut headers = global_headers.clone();
        for (rest, setting) in keys.section(&format!("{key}.headers")) {
            if rest.eq_ignore_ascii_case("content-type") {
                json = setting.value.contains("json");
                continue;
            }
            headers.push((rest.to_string(), setting.value.clone()));
        }
        Ok(url.map(|url| Request {
            url,
            method,
            json,
            params,
            headers,
        }))
    };
    let positive = |v: &str| {
        plugin_read::duration(v).and_then(|d| {
            if d.is_zero() {
                Err("a duration above 0 (a request must end)".into())
            } else {
                Ok(d)
            }
        })
    };
    Ok(Settings {
        auth: request("auth_req")?,
        superuser: request("super_req")?,
        acl: request("acl_req")?,
        timeout: keys
            .read("auth.http.request.timeout", positive)?
            .unwrap_or(Duration::from_secs(5)),
        connect_timeout: keys
            .read("auth.http.request.connect_timeout", positive)?
            .unwrap_or(Duration::from_secs(5)),
        retry_times: keys
            .read("auth.http.request.retry_times", |v| {
                plugin_read::uint(v, 0, 100)
            })?
            .unwrap_or(3),
        retry_interval: keys
            .read("auth.http.request.retry_interval", plugin_read::duration)?
            .unwrap_or(Duration::from_secs(1)),
        retry_backoff: keys
            .read("auth.http.request.retry_backoff", |v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|b| (1.0..=10.0).contains(b))
                    .ok_or_else(|| "a number from 1.0 to 10.0".to_string())
            })?
            .unwrap_or(2.0),
        pool_size: keys
            .read("auth.http.pool_size", |v| plugin_read::uint(v, 1, 1024))?
            .unwrap_or(32),
    })
}

/// What a web service answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// 200 with a body other than `ignore`.
    Ok,
    /// 200 with the body `ignore`.
    Ignore,
    /// 4xx.
    Refused(u16),
    /// Anything else, an error, a timeout.
    Unavailable,
}

struct Backend {
    client: reqwest::Client,
    settings: Settings,
    /// When an unavailable service was last logged (ms since start) and how many
    /// failures were not logged since.
    last_log_ms: AtomicU64,
    unlogged: AtomicU64,
    started: std::time::Instant,
}

impl Backend {
    /// Render `req`'s parameters for one check (owned, for the request's future).
    fn params(req: &Request, vars: &Vars<'_>) -> Vec<(String, String)> {
        req.params
            .iter()
            .map(|(k, t)| (k.clone(), t.render_with(vars, str::to_string)))
            .collect()
    }

    async fn ask(&self, req: &Request, params: Vec<(String, String)>) -> Answer {
        let attempt = async {
            let mut wait = self.settings.retry_interval;
            let mut tries_left = self.settings.retry_times;
            loop {
                match self.send(req, &params).await {
                    Err(e) if e.is_connect() && tries_left > 0 => {
                        tries_left -= 1;
                        tokio::time::sleep(wait).await;
                        wait = wait.mul_f64(self.settings.retry_backoff);
                    }
                    other => return other,
                }
            }
        };
        let answer = match tokio::time::timeout(self.settings.timeout, attempt).await {
            Ok(Ok((200, body))) if body.trim() == "ignore" => Answer::Ignore,
            Ok(Ok((200, _))) => Answer::Ok,
            Ok(Ok((code @ 400..=499, _))) => Answer::Refused(code),
            Ok(Ok((code, _))) => {
                self.log_unavailable(&req.url, &format!("HTTP status {code}"));
                Answer::Unavailable
            }
            Ok(Err(e)) => {
                self.log_unavailable(&req.url, &e.without_url().to_string());
                Answer::Unavailable
            }
            Err(_) => {
                self.log_unavailable(&req.url, "no answer within auth.http.request.timeout");
                Answer::Unavailable
            }
        };
        answer
    }

    async fn send(
        &self,
        req: &Request,
        params: &[(String, String)],
    ) -> Result<(u16, String), reqwest::Error> {
        let mut builder = match req.method {
            Method::Get => self.client.get(&req.url).query(params),
            Method::Post | Method::Put => {
                let b = if req.method == Method::Post {
                    self.client.post(&req.url)
                } else {
                    self.client.put(&req.url)
                };
                if req.json {
                    let body: serde_json::Map<String, serde_json::Value> = params
                        .iter()
                        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                        .collect();
                    b.json(&body)
                } else {
                    b.form(params)
                }
            }
        };
        for (name, value) in &req.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let response = builder.send().await?;
        let status = response.status().as_u16();
        // Bounded: only `ignore` matters, and the whole request is under the timeout.
        let body = response.text().await.unwrap_or_default();
        Ok((status, body.chars().take(64).collect()))
    }

    fn log_unavailable(&self, url: &str, why: &str) {
        // 0 = never logged; a time of 0 is stored as 1.
        let now = (self.started.elapsed().as_millis() as u64).max(1);
        let last = self.last_log_ms.load(Ordering::Relaxed);
        let due = last == 0 || now >= last + LOG_INTERVAL_MS;
        if !due
            || self
                .last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
        tracing::warn!(
            url,
            reason = why,
            not_logged_since = unlogged,
            "HTTP auth service unavailable; its checks are ignored"
        );
    }
}

async fn start(ctx: Context) -> Result<Box<dyn Running>, PluginError> {
    let settings = settings(&ctx.keys)?;
    let client = reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .pool_max_idle_per_host(settings.pool_size)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| PluginError::Start(format!("HTTP client: {e}")))?;
    let backend = Arc::new(Backend {
        client,
        settings,
        last_log_ms: AtomicU64::new(0),
        unlogged: AtomicU64::new(0),
        started: std::time::Instant::now(),
    });
    if backend.settings.auth.is_some() {
        let b = backend.clone();
        ctx.broker
            .hooks
            .add(
                PLUGIN,
                0,
                Hook::authenticate(move |info, creds| {
                    let Some(req) = &b.settings.auth else {
                        return Decision::Ready(AuthResult::Ignore);
                    };
                    let vars = Vars {
                        password: creds.password.as_deref(),
                        ..Vars::client(info)
                    };
                    let params = Backend::params(req, &vars);
                    let super_params = b
                        .settings
                        .superuser
                        .as_ref()
                        .map(|s| Backend::params(s, &Vars::client(info)));
                    let (b, info) = (b.clone(), info.clone());
                    Decision::pending(
                        async move { authenticate(&b, &info, params, super_params).await },
                    )
                }),
            )
            .map_err(|e| PluginError::Start(e.to_string()))?;
    }
    if backend.settings.acl.is_some() {
        let b = backend.clone();
        ctx.broker
            .hooks
            .add(
                PLUGIN,
                0,
                Hook::check_acl(move |info, access, topic| {
                    let Some(req) = &b.settings.acl else {
                        return Decision::Ready(AclResult::Ignore);
                    };
                    let vars = Vars {
                        topic: Some(topic),
                        access: Some(access),
                        ..Vars::client(info)
                    };
                    let params = Backend::params(req, &vars);
                    let b = b.clone();
                    Decision::pending(async move { check_acl(&b, params).await })
                }),
            )
            .map_err(|e| PluginError::Start(e.to_string()))?;
    }
    Ok(Box::new(()))
}

async fn authenticate(
    b: &Backend,
    info: &ClientInfo,
    params: Vec<(String, String)>,
    super_params: Option<Vec<(String, String)>>,
) -> AuthResult {
    let Some(req) = &b.settings.auth else {
        return AuthResult::Ignore;
    };
    match b.ask(req, params).await {
        Answer::Ok => {
            let superuser = match (&b.settings.superuser, super_params) {
                (Some(s), Some(p)) => b.ask(s, p).await == Answer::Ok,
                _ => false,
            };
            tracing::debug!(client_id = %info.client_id, superuser, "HTTP auth allowed");
            AuthResult::Allow { superuser }
        }
        Answer::Refused(400 | 401) => AuthResult::Deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
        Answer::Refused(_) => AuthResult::Deny(ReasonCode::NOT_AUTHORIZED),
        Answer::Ignore | Answer::Unavailable => AuthResult::Ignore,
    }
}

async fn check_acl(b: &Backend, params: Vec<(String, String)>) -> AclResult {
    let Some(req) = &b.settings.acl else {
        return AclResult::Ignore;
    };
    match b.ask(req, params).await {
        Answer::Ok => AclResult::Allow,
        Answer::Refused(_) => AclResult::Deny,
        Answer::Ignore | Answer::Unavailable => AclResult::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[(&str, &str)]) -> PluginKeys {
        crate::auth::settings::test_keys("etc/plugins/emqx_auth_http.conf", list)
    }

    #[test]
    fn requests_and_their_options_are_read() {
        let s = settings(&keys(&[
            ("auth.http.auth_req", "http://127.0.0.1:8991/mqtt/auth"),
            ("auth.http.auth_req.method", "get"),
            (
                "auth.http.auth_req.params",
                "clientid=%c,username=%u,password=%P",
            ),
            ("auth.http.auth_req.headers.X-Token", "abc"),
            ("auth.http.acl_req", "http://127.0.0.1:8991/mqtt/acl"),
            ("auth.http.acl_req.headers.content-type", "application/json"),
            ("auth.http.header.Accept", "*/*"),
            ("auth.http.request.timeout", "2s"),
        ]))
        .unwrap();
        let auth = s.auth.unwrap();
        assert_eq!(auth.method, Method::Get);
        assert_eq!(auth.params.len(), 3);
        assert_eq!(auth.params[2].0, "password");
        assert_eq!(
            auth.headers,
            [
                ("Accept".into(), "*/*".into()),
                ("X-Token".into(), "abc".into())
            ]
        );
        let acl = s.acl.unwrap();
        assert!(acl.json && acl.method == Method::Post);
        assert!(s.superuser.is_none());
        assert_eq!(s.timeout, Duration::from_secs(2));
    }

    #[test]
    fn bad_settings_name_their_line() {
        let err = |list: &[(&str, &str)]| settings(&keys(list)).err().unwrap().to_string();
        let e = err(&[("auth.http.auth_req", "ftp://x")]);
        assert!(
            e.contains(":1: auth.http.auth_req: expected an http"),
            "{e}"
        );
        let e = err(&[("auth.http.auth_req.method", "delete")]);
        assert!(
            e.contains(":1: auth.http.auth_req.method: expected get, post or put"),
            "{e}"
        );
        let e = err(&[("auth.http.request.timeout", "0s")]);
        assert!(e.contains("a request must end"), "{e}");
        let e = err(&[("auth.http.auth_request", "http://x")]);
        assert!(e.contains(":1: unknown key auth.http.auth_request"), "{e}");
    }
}
