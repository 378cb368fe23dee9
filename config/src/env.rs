//! Environment overrides, EMQX style: `EMQX_` + the key upper-cased with `.` written as
//! `__` sets that key, e.g. `EMQX_LISTENER__TCP__EXTERNAL=127.0.0.1:1884` sets
//! `listener.tcp.external`.
//!
//! Only variables that start with `EMQX_` and contain `__` are considered, so
//! `EMQX_NODE_NAME` or `EMQX_LOADED_PLUGINS` (used by EMQX's scripts) pass untouched.
//! This file never reads the process environment: the caller passes the variables in,
//! so tests give their own list and the binary gives `std::env::vars()`.

use super::keys::TOP_LEVEL_KEYS;
use super::parse::{check_key, unquote, Entry};
use super::{ConfigError, Origin};

const PREFIX: &str = "EMQX_";

/// Turns the relevant variables into entries, in the order given.
pub(super) fn overrides(vars: &[(String, String)]) -> Result<Vec<Entry>, ConfigError> {
    let mut entries = Vec::new();
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        // `EMQX_ALLOW_ANONYMOUS` sets a top-level key; other names without `__`
        // (`EMQX_NODE_NAME`, `EMQX_LOADED_PLUGINS`) are not overrides, as in EMQX.
        if !rest.contains("__") && !TOP_LEVEL_KEYS.contains(&rest.to_ascii_lowercase().as_str()) {
            continue;
        }
        let origin = Origin::Env { var: name.clone() };
        let key = rest.to_ascii_lowercase().replace("__", ".");
        check_key(&key).map_err(|problem| ConfigError::Syntax {
            origin: origin.clone(),
            problem,
        })?;
        entries.push(Entry {
            key,
            value: unquote(value).to_string(),
            origin,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn keys_and_values(entries: &[Entry]) -> Vec<(&str, &str)> {
        entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect()
    }

    #[test]
    fn maps_variable_names_to_keys() {
        let entries = overrides(&vars(&[
            ("EMQX_LISTENER__TCP__EXTERNAL", "127.0.0.1:1884"),
            ("EMQX_NODE__DATA_DIR", "/tmp/d"),
            ("EMQX_ZONE__EXTERNAL__MAX_INFLIGHT", " \"64\" "),
            ("EMQX_ACL_NOMATCH", "deny"),
        ]))
        .unwrap();
        assert_eq!(
            keys_and_values(&entries),
            vec![
                ("listener.tcp.external", "127.0.0.1:1884"),
                ("node.data_dir", "/tmp/d"),
                ("zone.external.max_inflight", "64"),
                ("acl_nomatch", "deny"),
            ]
        );
        assert_eq!(
            entries[1].origin,
            Origin::Env {
                var: "EMQX_NODE__DATA_DIR".to_string()
            }
        );
    }

    #[test]
    fn ignores_variables_that_are_not_overrides() {
        let entries = overrides(&vars(&[
            ("PATH", "/usr/bin"),
            ("EMQX_NODE_NAME", "emqx@host"),
            ("EMQX_LOADED_PLUGINS", "emqx_retainer"),
            ("MY_EMQX_NODE__NAME", "x@y"),
            ("emqx_node__name", "x@y"),
        ]))
        .unwrap();
        assert!(entries.is_empty(), "{entries:?}");
    }

    #[test]
    fn a_malformed_key_names_the_variable() {
        let err = overrides(&vars(&[("EMQX_NODE____NAME", "x@y")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("environment variable EMQX_NODE____NAME: invalid key \"node..name\""),
            "{err}"
        );
    }
}
