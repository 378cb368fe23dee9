//! Reading one backend's settings (`auth.redis.*`, ...) from the raw plugin keys: every
//! key has a default (EMQX 4's), a bad value names its file:line, and a key the backend
//! does not know is refused, so a typo never silently leaves a default in place.

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::Duration;

use quay_config::{plugin_read as read, ConfigError, PluginKeys};

use super::hash::{self, PasswordHash};
use super::placeholder::Template;

/// One plugin's section, with the keys read so far (for [`Section::finish`]).
pub struct Section<'a> {
    keys: &'a PluginKeys,
    prefix: &'static str,
    known: RefCell<Vec<&'static str>>,
}

impl<'a> Section<'a> {
    pub fn new(keys: &'a PluginKeys, prefix: &'static str) -> Section<'a> {
        Section {
            keys,
            prefix,
            known: RefCell::new(Vec::new()),
        }
    }

    /// `prefix.name` parsed by `parse`, or `default` when not set.
    pub fn get<T>(
        &self,
        name: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.known.borrow_mut().push(name);
        Ok(self
            .keys
            .read(&format!("{}.{name}", self.prefix), parse)?
            .unwrap_or(default))
    }

    pub fn string(&self, name: &'static str, default: &str) -> Result<String, ConfigError> {
        self.get(name, default.to_string(), |v| Ok(v.to_string()))
    }

    pub fn duration(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        self.get(name, default, |v| {
            read::duration(v).and_then(|d| {
                if d.is_zero() {
                    Err("a duration above zero, e.g. 5s".to_string())
                } else {
                    Ok(d)
                }
            })
        })
    }

    pub fn boolean(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        // EMQX writes both `on|off` and `true|false` for these.
        self.get(name, default, |v| match v {
            "on" => Ok(true),
            "off" => Ok(false),
            other => read::boolean(other),
        })
    }

    pub fn pool(&self, default: u32) -> Result<u32, ConfigError> {
        self.get("pool", default, |v| read::uint(v, 1, 1024))
    }

    pub fn password_hash(&self, default: &str) -> Result<PasswordHash, ConfigError> {
        let default = PasswordHash::parse(default).map_err(|e| ConfigError::InvalidValue {
            origin: quay_config::Origin::Env {
                var: "(built-in default)".into(),
            },
            key: format!("{}.password_hash", self.prefix),
            value: default.to_string(),
            expected: e,
        })?;
        self.get("password_hash", default, |v| {
            PasswordHash::parse(v).map_err(|_| hash::EXPECTED.to_string())
        })
    }

    /// A query or command; an empty value turns that check off (`None`).
    pub fn template(
        &self,
        name: &'static str,
        default: &str,
    ) -> Result<Option<String>, ConfigError> {
        let text = self.string(name, default)?;
        Ok((!text.trim().is_empty()).then_some(text))
    }

    /// A parsed template checked by `check` (e.g. SQL literal quoting); its error names
    /// the key's file:line.
    pub fn checked_template<T>(
        &self,
        name: &'static str,
        default: &str,
        check: impl Fn(&Template) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        self.known.borrow_mut().push(name);
        let key = format!("{}.{name}", self.prefix);
        let text = match self.keys.get(&key) {
            Some(s) => s.value.clone(),
            None => default.to_string(),
        };
        if text.trim().is_empty() {
            return Ok(None);
        }
        let parsed = Template::parse(&text);
        match check(&parsed) {
            Ok(t) => Ok(Some(t)),
            Err(expected) => Err(match self.keys.get(&key) {
                Some(s) => ConfigError::InvalidValue {
                    origin: s.origin.clone(),
                    key,
                    value: s.value.clone(),
                    expected,
                },
                None => ConfigError::InvalidValue {
                    origin: quay_config::Origin::Env {
                        var: "(built-in default)".into(),
                    },
                    key,
                    value: text,
                    expected,
                },
            }),
        }
    }

    /// `ssl.enable` and the `ssl.*` files (EMQX 4.3's names); `None` when off.
    pub fn tls(&self) -> Result<Option<TlsSettings>, ConfigError> {
        let enable = self.boolean("ssl.enable", false)?;
        let files = self.tls_files()?;
        Ok(enable.then_some(files))
    }

    /// `ssl.cacertfile`, `ssl.certfile`, `ssl.keyfile`, `ssl.verify`.
    pub fn tls_files(&self) -> Result<TlsSettings, ConfigError> {
        let path = |name: &'static str| -> Result<Option<PathBuf>, ConfigError> {
            let v = self.string(name, "")?;
            Ok((!v.is_empty()).then(|| PathBuf::from(v)))
        };
        let settings = TlsSettings {
            cacertfile: path("ssl.cacertfile")?,
            certfile: path("ssl.certfile")?,
            keyfile: path("ssl.keyfile")?,
            verify: self.boolean("ssl.verify", true)?,
        };
        if settings.certfile.is_some() != settings.keyfile.is_some() {
            return Err(self.invalid(
                "ssl.certfile",
                "ssl.certfile and ssl.keyfile both set (client certificate) or both empty",
            ));
        }
        Ok(settings)
    }

    /// An error about `name` (set or not) that no single value parser can see.
    pub fn invalid(&self, name: &str, expected: &str) -> ConfigError {
        let key = format!("{}.{name}", self.prefix);
        let (origin, value) = match self.keys.get(&key) {
            Some(s) => (s.origin.clone(), s.value.clone()),
            None => (
                quay_config::Origin::Env {
                    var: "(built-in default)".into(),
                },
                String::new(),
            ),
        };
        ConfigError::InvalidValue {
            origin,
            key,
            value,
            expected: expected.to_string(),
        }
    }

    /// Refuse any key of the section that was not read.
    pub fn finish(self) -> Result<(), ConfigError> {
        let known = self.known.into_inner();
        for (rest, _) in self.keys.section(self.prefix) {
            if !known.contains(&rest) {
                let full: Vec<String> = known
                    .iter()
                    .map(|k| format!("{}.{k}", self.prefix))
                    .collect();
                let full: Vec<&str> = full.iter().map(String::as_str).collect();
                return Err(self.keys.unknown(&format!("{}.{rest}", self.prefix), &full));
            }
        }
        Ok(())
    }
}

/// A backend's TLS client settings (`<prefix>.ssl.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Trust these CAs instead of the system's.
    pub cacertfile: Option<PathBuf>,
    /// A client certificate and key (mutual TLS).
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    /// Check the server's certificate and name (`false` encrypts only).
    pub verify: bool,
}

/// `host:port` with a default port; IPv6 as `[::1]:port`.
pub fn host_port(v: &str, default_port: u16) -> Result<(String, u16), String> {
    let expected = || "host:port, e.g. 127.0.0.1:6379".to_string();
    let v = v.trim();
    if v.is_empty() {
        return Err(expected());
    }
    let (host, port) = if let Some(rest) = v.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(expected)?;
        (h, after.strip_prefix(':'))
    } else {
        match v.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (v, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| expected())?,
        None => default_port,
    };
    if host.is_empty() || port == 0 {
        return Err(expected());
    }
    Ok((host.to_string(), port))
}

/// Settings as a plugin's file would give them, one per line from line 1 (tests).
#[cfg(test)]
pub(crate) fn test_keys(file: &str, list: &[(&str, &str)]) -> PluginKeys {
    let mut keys = PluginKeys::default();
    for (i, (key, value)) in list.iter().enumerate() {
        let origin = quay_config::Origin::File {
            path: PathBuf::from(file),
            line: i + 1,
        };
        keys.insert(key, value, origin);
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[(&str, &str)]) -> PluginKeys {
        crate::auth::settings::test_keys("etc/plugins/emqx_auth_x.conf", list)
    }

    #[test]
    fn defaults_values_and_unknown_keys() {
        let k = keys(&[("auth.x.pool", "4"), ("auth.x.sever", "typo")]);
        let s = Section::new(&k, "auth.x");
        assert_eq!(s.pool(8).unwrap(), 4);
        assert_eq!(s.string("server", "127.0.0.1:1").unwrap(), "127.0.0.1:1");
        let err = s.finish().unwrap_err().to_string();
        assert!(
            err.contains("emqx_auth_x.conf:2") && err.contains("auth.x.sever"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_value_names_its_line() {
        let k = keys(&[("auth.x.query_timeout", "soon")]);
        let s = Section::new(&k, "auth.x");
        let err = s
            .duration("query_timeout", Duration::from_secs(5))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("etc/plugins/emqx_auth_x.conf:1: auth.x.query_timeout"),
            "{err}"
        );
    }

    #[test]
    fn host_and_port() {
        assert_eq!(
            host_port("127.0.0.1:6380", 6379).unwrap(),
            ("127.0.0.1".into(), 6380)
        );
        assert_eq!(
            host_port("localhost", 6379).unwrap(),
            ("localhost".into(), 6379)
        );
        assert_eq!(host_port("[::1]:7", 6379).unwrap(), ("::1".into(), 7));
        assert!(
            host_port("h:x", 1).is_err()
                && host_port("", 1).is_err()
                && host_port("h:0", 1).is_err()
        );
    }
}
