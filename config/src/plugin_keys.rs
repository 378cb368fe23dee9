//! Settings that belong to plugins (`auth.*`, `bridge.*`): kept as written, each with
//! where it came from, and read by the plugin that owns them when it loads.
//!
//! Why not typed here like the core keys: a plugin's keys only matter while it runs,
//! a plugin that is not loaded must not stop the broker over a setting it will never
//! read (EMQX behaves so), and `emqx_ctl plugins reload` re-reads them without
//! restarting. A plugin that loads checks every key of its prefix and names the
//! file:line of a bad one, exactly as a core key would be reported.

use std::collections::BTreeMap;

use super::parse::Entry;
use super::values;
use super::{ConfigError, Origin};

/// First key segments handed to plugins.
pub(super) const PLUGIN_SECTIONS: &[&str] = &["auth", "bridge"];

/// One setting as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub value: String,
    pub origin: Origin,
}

/// Every plugin setting, by full key (`auth.redis.server`). A key given twice keeps
/// its last value, as core keys do.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PluginKeys {
    entries: BTreeMap<String, Setting>,
}

impl PluginKeys {
    pub(super) fn set(&mut self, entry: &Entry) {
        self.entries.insert(
            entry.key.clone(),
            Setting {
                value: entry.value.clone(),
                origin: entry.origin.clone(),
            },
        );
    }

    /// Add or replace one setting (tests, and plugins building settings in code).
    pub fn insert(&mut self, key: &str, value: &str, origin: Origin) {
        self.entries.insert(
            key.to_string(),
            Setting {
                value: value.to_string(),
                origin,
            },
        );
    }

    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.entries.get(key)
    }

    /// Every setting whose key starts with `prefix.` (`"auth.redis"` gives
    /// `auth.redis.server`, ...), as `(rest of the key, setting)`, sorted by key.
    pub fn section<'a>(&'a self, prefix: &str) -> impl Iterator<Item = (&'a str, &'a Setting)> {
        let start = format!("{prefix}.");
        let skip = start.len();
        self.entries
            .range(start.clone()..)
            .take_while(move |(k, _)| k.starts_with(&start))
            .map(move |(k, s)| (&k[skip..], s))
    }

    /// Parse `key`'s value with `parse` (`Ok(None)` when not set); a refusal names the
    /// origin, the key, the value and what was expected.
    pub fn read<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(s) = self.entries.get(key) else {
            return Ok(None);
        };
        parse(&s.value)
            .map(Some)
            .map_err(|expected| ConfigError::InvalidValue {
                origin: s.origin.clone(),
                key: key.to_string(),
                value: s.value.clone(),
                expected,
            })
    }

    /// The error for a key of a plugin's section that the plugin does not know.
    pub fn unknown(&self, key: &str, known: &[&str]) -> ConfigError {
        let origin = self
            .entries
            .get(key)
            .map(|s| s.origin.clone())
            .unwrap_or(Origin::Env {
                var: "(none)".to_string(),
            });
        ConfigError::UnknownKey {
            origin,
            key: key.to_string(),
            hint: format!("; known: {}", known.join(", ")),
        }
    }
}

/// Value readers plugins share with core keys (same syntax, same messages).
pub mod read {
    use std::time::Duration;

    pub fn duration(v: &str) -> Result<Duration, String> {
        super::values::duration(v)
    }
    pub fn size(v: &str) -> Result<u64, String> {
        super::values::size(v)
    }
    pub fn boolean(v: &str) -> Result<bool, String> {
        super::values::boolean(v)
    }
    pub fn uint<T: TryFrom<u64>>(v: &str, min: u64, max: u64) -> Result<T, String> {
        super::values::uint(v, min, max)
    }
    pub fn non_empty(v: &str, what: &str) -> Result<String, String> {
        super::values::non_empty(v, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn keys(list: &[(&str, &str)]) -> PluginKeys {
        let mut k = PluginKeys::default();
        for (i, (key, value)) in list.iter().enumerate() {
            k.insert(
                key,
                value,
                Origin::File {
                    path: PathBuf::from("etc/plugins/emqx_auth_redis.conf"),
                    line: i + 1,
                },
            );
        }
        k
    }

    #[test]
    fn a_section_is_every_key_under_its_prefix_and_nothing_else() {
        let k = keys(&[
            ("auth.redis.server", "127.0.0.1:6379"),
            ("auth.redis.pool", "8"),
            ("auth.redisx.server", "x"),
            ("auth.mysql.server", "y"),
        ]);
        let got: Vec<_> = k
            .section("auth.redis")
            .map(|(k, s)| (k, &*s.value))
            .collect();
        assert_eq!(got, [("pool", "8"), ("server", "127.0.0.1:6379")]);
    }

    #[test]
    fn a_bad_value_names_file_line_key_and_expectation() {
        let k = keys(&[("auth.redis.pool", "many")]);
        let err = k
            .read("auth.redis.pool", |v| read::uint::<u32>(v, 1, 1024))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("etc/plugins/emqx_auth_redis.conf:1: auth.redis.pool: expected "),
            "{err}"
        );
        assert_eq!(
            k.read("auth.redis.server", |v| Ok(v.to_string())).unwrap(),
            None
        );
    }
}
