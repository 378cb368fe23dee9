//! The TLS-PSK identities file (`psk.file.path`, EMQX 4's `emqx_psk_file` plugin):
//! one `identity<delimiter>hexkey` per line, the key in hexadecimal as Mosquitto's
//! `psk_file` and `mosquitto_pub --psk` write it. Blank lines and `#` comments are
//! skipped. A malformed line is reported with its file:line and skipped, so one bad
//! entry never keeps the broker (or the other devices) from starting.
//!
//! Never log or display a key: only identities and line numbers leave this module.

use std::collections::HashMap;
use std::path::Path;

/// The longest identity and key OpenSSL takes (`PSK_MAX_IDENTITY_LEN`,
/// `PSK_MAX_PSK_LEN`): a longer entry could never be used, so it is refused here.
pub const MAX_IDENTITY_LEN: usize = 256;
pub const MAX_KEY_LEN: usize = 512;

/// Identities and their keys.
#[derive(Default)]
pub struct PskTable {
    keys: HashMap<Box<[u8]>, Box<[u8]>>,
}

impl std::fmt::Debug for PskTable {
    /// Identities only: keys are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskTable")
            .field("identities", &self.keys.len())
            .finish()
    }
}

/// A line that was skipped, and why (never with the key in it).
#[derive(Debug, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based.
    pub line: usize,
    pub reason: String,
}

impl PskTable {
    pub fn key(&self, identity: &[u8]) -> Option<&[u8]> {
        self.keys.get(identity).map(|k| &**k)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Read `path`; every skipped line is logged with `path:line`. Err: the file
    /// cannot be read at all.
    pub fn load(path: &Path, delimiter: &str) -> std::io::Result<PskTable> {
        let text = std::fs::read_to_string(path)?;
        let (table, bad) = PskTable::parse(&text, delimiter);
        for BadLine { line, reason } in bad {
            tracing::warn!(file = %format!("{}:{line}", path.display()), reason, "PSK file line skipped");
        }
        Ok(table)
    }

    /// The entries of `text` and the lines skipped. An identity given twice keeps its
    /// last key (the earlier line is reported).
    pub fn parse(text: &str, delimiter: &str) -> (PskTable, Vec<BadLine>) {
        let mut table = PskTable::default();
        let mut bad = Vec::new();
        let mut seen_at: HashMap<Box<[u8]>, usize> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let entry = raw.trim_end_matches('\r').trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            match parse_entry(entry, delimiter) {
                Ok((identity, key)) => {
                    if let Some(earlier) = seen_at.insert(identity.clone(), line) {
                        bad.push(BadLine {
                            line: earlier,
                            reason: format!(
                                "identity {:?} is given again on line {line}, which wins",
                                String::from_utf8_lossy(&identity)
                            ),
                        });
                    }
                    table.keys.insert(identity, key);
                }
                Err(reason) => bad.push(BadLine { line, reason }),
            }
        }
        bad.sort_by_key(|b| b.line);
        (table, bad)
    }
}

/// An identity and its key.
type Entry = (Box<[u8]>, Box<[u8]>);

/// `identity<delimiter>hexkey` (already trimmed) -> (identity, key bytes).
fn parse_entry(entry: &str, delimiter: &str) -> Result<Entry, String> {
    let Some((identity, hex)) = entry.split_once(delimiter) else {
        return Err(format!("no {delimiter:?} between identity and key"));
    };
    let identity = identity.trim_end();
    if identity.is_empty() {
        return Err("empty identity".to_string());
    }
    if identity.len() > MAX_IDENTITY_LEN {
        return Err(format!("identity longer than {MAX_IDENTITY_LEN} bytes"));
    }
    let key = decode_hex(hex.trim_start())
        .map_err(|why| format!("key of {identity:?} is not hexadecimal: {why}"))?;
    if key.len() > MAX_KEY_LEN {
        return Err(format!(
            "key of {identity:?} is longer than {MAX_KEY_LEN} bytes"
        ));
    }
    Ok((identity.as_bytes().into(), key.into()))
}

/// Hex digits (either case, no `0x`) -> bytes; the reason never quotes the input.
fn decode_hex(hex: &str) -> Result<Vec<u8>, String> {
    if hex.is_empty() {
        return Err("empty".to_string());
    }
    if !hex.len().is_multiple_of(2) {
        return Err(format!("odd number of digits ({})", hex.len()));
    }
    let digit = |c: u8, at: usize| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("character {} is not a hex digit", at + 1)),
    };
    hex.as_bytes()
        .chunks(2)
        .enumerate()
        .map(|(i, pair)| Ok(digit(pair[0], 2 * i)? << 4 | digit(pair[1], 2 * i + 1)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_comments_and_blank_lines() {
        let text = "# devices\n\ndevice1:00112233445566778899AABBCCDDEEFF\r\n  device 2 : 0a0B  \n";
        let (table, bad) = PskTable::parse(text, ":");
        assert_eq!(bad, vec![]);
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.key(b"device1"),
            Some(
                &[
                    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc,
                    0xdd, 0xee, 0xff
                ][..]
            )
        );
        // The identity keeps its inner space; blanks around the delimiter go.
        assert_eq!(table.key(b"device 2"), Some(&[0x0a, 0x0b][..]));
        assert_eq!(table.key(b"device3"), None);
    }

    #[test]
    fn malformed_lines_are_skipped_with_their_line_and_reason() {
        let text = [
            "good:abcd",
            "no delimiter here",
            ":abcd",
            "odd:abc",
            "nothex:zz12",
            "empty:",
            "0x:0x12",
            "good2:1234",
        ]
        .join("\n");
        let (table, bad) = PskTable::parse(&text, ":");
        assert_eq!(table.len(), 2, "{bad:?}");
        assert_eq!(table.key(b"good2"), Some(&[0x12, 0x34][..]));
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7]);
        assert!(bad[0].reason.contains("no \":\""), "{}", bad[0].reason);
        assert_eq!(bad[1].reason, "empty identity");
        assert!(
            bad[2].reason.contains("odd number of digits (3)"),
            "{}",
            bad[2].reason
        );
        assert!(
            bad[3].reason.contains("character 1 is not a hex digit"),
            "{}",
            bad[3].reason
        );
        assert!(bad[4].reason.contains("empty"), "{}", bad[4].reason);
        assert!(
            bad[5].reason.contains("character 2 is not a hex digit"),
            "{}",
            bad[5].reason
        );
    }

    #[test]
    fn a_reason_never_shows_the_key() {
        let (_, bad) = PskTable::parse("dev:secret1234567", ":");
        assert_eq!(bad.len(), 1);
        assert!(!bad[0].reason.contains("secret"), "{}", bad[0].reason);
    }

    #[test]
    fn another_delimiter_and_the_first_occurrence_splits() {
        let (table, bad) = PskTable::parse("a::b=>0102\nc=>03", "=>");
        assert_eq!(bad, vec![]);
        assert_eq!(table.key(b"a::b"), Some(&[1, 2][..]));
        assert_eq!(table.key(b"c"), Some(&[3][..]));
        // With ':' the identity ends at the first one.
        let (table, bad) = PskTable::parse("id:01:02", ":");
        assert_eq!(table.len(), 0);
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn a_repeated_identity_keeps_the_last_key_and_reports_the_first() {
        let (table, bad) = PskTable::parse("dev:01\nother:02\ndev:03", ":");
        assert_eq!(table.key(b"dev"), Some(&[3][..]));
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 1);
        assert!(bad[0].reason.contains("line 3"), "{}", bad[0].reason);
    }

    #[test]
    fn lengths_past_openssl_limits_are_refused() {
        let long_id = "i".repeat(MAX_IDENTITY_LEN + 1);
        let long_key = "ab".repeat(MAX_KEY_LEN + 1);
        let max_key = "ab".repeat(MAX_KEY_LEN);
        let text = format!("{long_id}:01\nk:{long_key}\nm:{max_key}");
        let (table, bad) = PskTable::parse(&text, ":");
        assert_eq!(bad.iter().map(|b| b.line).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(table.key(b"m").map(<[u8]>::len), Some(MAX_KEY_LEN));
    }

    #[test]
    fn the_shipped_example_file_parses_cleanly() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/psk.txt");
        let text = std::fs::read_to_string(&path).expect("etc/psk.txt");
        let (table, bad) = PskTable::parse(&text, ":");
        assert_eq!(bad, vec![]);
        assert!(!table.is_empty());
    }

    proptest::proptest! {
        /// Any text parses without panicking, and every kept key came from hex.
        #[test]
        fn any_text_parses_without_panic(text in "\\PC{0,200}", delim in "[:=|]{1,2}") {
            let (table, bad) = PskTable::parse(&text, &delim);
            proptest::prop_assert!(table.len() + bad.len() <= text.lines().count() * 2);
        }
    }
}
