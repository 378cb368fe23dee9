//! The cuttlefish line syntax: `key = value` lines become [`Entry`]s that remember
//! where they came from.
//!
//! This file knows the shape of a line, not which keys exist or what their values
//! mean (that is `keys.rs` and `values.rs`). Rules, as cuttlefish has them:
//! - blank lines and lines starting with `#` (including `##`) are ignored;
//! - a `#` after a value starts a comment (`key = 1MB  # one megabyte`);
//! - surrounding whitespace is trimmed from keys and values;
//! - a value may be wrapped in double quotes, which are removed (`"a # b"` keeps its `#`);
//! - a key is dot-separated words of letters, digits, `_` and `-`.

use std::path::Path;

use super::values::Expected;
use super::{ConfigError, Origin};

/// One `key = value` setting, from a file line or an environment variable.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Entry {
    pub(super) key: String,
    pub(super) value: String,
    pub(super) origin: Origin,
}

impl Entry {
    /// Parses this entry's value with `parse`, turning a refusal into an error that
    /// names the origin, the key, the value and what was expected.
    pub(super) fn read<T>(
        &self,
        parse: impl FnOnce(&str) -> Result<T, Expected>,
    ) -> Result<T, ConfigError> {
        parse(&self.value).map_err(|expected| ConfigError::InvalidValue {
            origin: self.origin.clone(),
            key: self.key.clone(),
            value: self.value.clone(),
            expected,
        })
    }
}

/// Reads and parses one config file. `path` is used as given in error messages.
pub(super) fn parse_file(path: &Path) -> Result<Vec<Entry>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_str(&text, path)
}

/// Parses config text as if read from `path` (used only for origins).
pub(super) fn parse_str(text: &str, path: &Path) -> Result<Vec<Entry>, ConfigError> {
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let origin = Origin::File {
            path: path.to_path_buf(),
            line: index + 1,
        };
        let syntax = |problem: String| ConfigError::Syntax {
            origin: origin.clone(),
            problem,
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(syntax(format!("expected `key = value`, got {line:?}")));
        };
        let key = key.trim();
        check_key(key).map_err(syntax)?;
        let value = value_text(value).map_err(|problem| syntax(format!("{key}: {problem}")))?;
        entries.push(Entry {
            key: key.to_string(),
            value,
            origin,
        });
    }
    Ok(entries)
}

/// Checks the key's shape: `word(.word)*`, words of ASCII letters, digits, `_`, `-`.
pub(super) fn check_key(key: &str) -> Result<(), String> {
    let word_ok = |word: &str| {
        !word.is_empty()
            && word
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    if key.split('.').all(word_ok) {
        Ok(())
    } else {
        Err(format!(
            "invalid key {key:?}: a key is dot-separated words of letters, digits, '_' and '-'"
        ))
    }
}

/// The value part of a line: trimmed, a trailing `# comment` removed, and surrounding
/// double quotes stripped.
fn value_text(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if let Some(quoted) = raw.strip_prefix('"') {
        let Some(end) = quoted.find('"') else {
            return Err(format!("unterminated quoted value {raw:?}"));
        };
        let after = quoted[end + 1..].trim_start();
        if !after.is_empty() && !after.starts_with('#') {
            return Err(format!("unexpected text after the quoted value: {after:?}"));
        }
        return Ok(quoted[..end].to_string());
    }
    // A comment starts at a `#` after whitespace, as in cuttlefish: `#` inside a
    // value is data (the guide's `forwards = sensor1/#,sensor2/#`).
    let without_comment = match raw
        .char_indices()
        .find(|&(i, c)| c == '#' && raw[..i].ends_with([' ', '\t']))
    {
        Some((hash, _)) => &raw[..hash],
        None => raw,
    };
    Ok(without_comment.trim_end().to_string())
}

/// Strips one pair of surrounding double quotes, if present (for environment values).
pub(super) fn unquote(value: &str) -> &str {
    let value = value.trim();
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_inside_a_value_is_data_and_after_whitespace_a_comment() {
        assert_eq!(
            value_text("sensor1/#,sensor2/#").unwrap(),
            "sensor1/#,sensor2/#"
        );
        assert_eq!(value_text("a/#  # forwards").unwrap(), "a/#");
        assert_eq!(value_text("1MB # one megabyte").unwrap(), "1MB");
    }

    fn parse(text: &str) -> Result<Vec<(String, String, usize)>, String> {
        let entries = parse_str(text, Path::new("etc/test.conf")).map_err(|e| e.to_string())?;
        Ok(entries
            .into_iter()
            .map(|e| match e.origin {
                Origin::File { line, .. } => (e.key, e.value, line),
                Origin::Env { .. } => unreachable!("file entries have file origins"),
            })
            .collect())
    }

    fn kv(key: &str, value: &str, line: usize) -> (String, String, usize) {
        (key.to_string(), value.to_string(), line)
    }

    #[test]
    fn comments_blank_lines_and_whitespace_are_ignored() {
        let text = "## A comment\n# another\n\n   \nnode.name = emqx@127.0.0.1   \n\t mqtt.max_packet_size=1MB\r\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                kv("node.name", "emqx@127.0.0.1", 5),
                kv("mqtt.max_packet_size", "1MB", 6)
            ]
        );
    }

    #[test]
    fn trailing_comments_are_stripped() {
        assert_eq!(
            parse("mqtt.max_packet_size = 1MB  ## one megabyte").unwrap(),
            vec![kv("mqtt.max_packet_size", "1MB", 1)]
        );
    }

    #[test]
    fn quoted_values_lose_their_quotes() {
        assert_eq!(
            parse("node.name = \"emqx@host\"\nlog.file = \"a # b.log\" # note\nlog.dir = \"\"")
                .unwrap(),
            vec![
                kv("node.name", "emqx@host", 1),
                kv("log.file", "a # b.log", 2),
                kv("log.dir", "", 3)
            ]
        );
    }

    #[test]
    fn values_may_contain_equals_signs() {
        assert_eq!(parse("a.b = x=y").unwrap(), vec![kv("a.b", "x=y", 1)]);
    }

    #[test]
    fn a_line_without_equals_is_an_error_with_file_and_line() {
        assert_eq!(
            parse("\n## ok\nnode.name emqx@host\n").unwrap_err(),
            "etc/test.conf:3: expected `key = value`, got \"node.name emqx@host\""
        );
    }

    #[test]
    fn malformed_keys_are_errors() {
        for bad in ["= 1", "a..b = 1", ".a = 1", "a. = 1", "a b = 1", "a/b = 1"] {
            let err = parse(bad).unwrap_err();
            assert!(
                err.starts_with("etc/test.conf:1: invalid key"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn broken_quotes_are_errors() {
        assert_eq!(
            parse("node.name = \"emqx@host").unwrap_err(),
            "etc/test.conf:1: node.name: unterminated quoted value \"\\\"emqx@host\""
        );
        assert!(parse("node.name = \"emqx\"@host")
            .unwrap_err()
            .contains("unexpected text after the quoted value"));
    }

    #[test]
    fn repeated_keys_are_all_kept_in_order() {
        // The last one wins when the entries are applied; the parser keeps them all.
        assert_eq!(
            parse("a.b = 1\na.b = 2").unwrap(),
            vec![kv("a.b", "1", 1), kv("a.b", "2", 2)]
        );
    }

    #[test]
    fn unquote_strips_one_pair() {
        assert_eq!(unquote("\"x\""), "x");
        assert_eq!(unquote(" x "), "x");
        assert_eq!(unquote("\"x"), "\"x");
    }
}
