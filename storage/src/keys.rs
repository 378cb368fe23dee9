//! Every on-disk key Quay writes, and nothing else.
//!
//! Integers are fixed-width big-endian so RocksDB's byte order is numeric order: the
//! message log iterates in publish order and a session's queue in enqueue order.
//! Per-client keys start with `u16 len | client id bytes` so that one client's keys form
//! one contiguous, prefix-free range (no client id is a prefix of another's range).
//!
//! | column family | key                                  | value                |
//! |---------------|--------------------------------------|----------------------|
//! | `msgs`        | msg_id u64                           | `StoredMessage`      |
//! | `refs`        | msg_id u64                           | u32 references (absent = 1) |
//! | `sessions`    | client                               | `SessionRecord`      |
//! | `subs`        | client_prefix · filter bytes         | `SubscriptionRecord` |
//! | `queue`       | client_prefix · seq u64              | `QueueEntry`         |
//! | `awaiting_rel`| client_prefix · packet_id u16        | empty                |
//! | `retained`    | topic bytes                          | `StoredMessage`      |
//! | `wills`       | client                               | `DelayedWill`        |
//! | `meta`        | ascii name                           | per key              |
//! | `auth`        | table byte (`u`/`c`) · name bytes     | `CredentialRecord`   |
//! | `bridges`     | bridge name bytes                    | `BridgeRecord`       |
//! | `banned`      | kind byte (`c`/`u`/`h`) · who bytes   | `BannedRecord`       |

use thiserror::Error;

pub const CF_MSGS: &str = "msgs";
pub const CF_REFS: &str = "refs";
pub const CF_SESSIONS: &str = "sessions";
pub const CF_SUBS: &str = "subs";
pub const CF_QUEUE: &str = "queue";
pub const CF_AWAITING_REL: &str = "awaiting_rel";
pub const CF_RETAINED: &str = "retained";
pub const CF_META: &str = "meta";
pub const CF_WILLS: &str = "wills";
/// The built-in user stores (`emqx_auth_username`, `emqx_auth_clientid`).
pub const CF_AUTH: &str = "auth";
/// What `emqx_ctl bridges` changed of each bridge (`emqx_bridge_mqtt`).
pub const CF_BRIDGES: &str = "bridges";
/// Banned clients (`emqx_ctl banned`).
pub const CF_BANNED: &str = "banned";

pub const ALL_CFS: [&str; 12] = [
    CF_MSGS,
    CF_REFS,
    CF_SESSIONS,
    CF_SUBS,
    CF_QUEUE,
    CF_AWAITING_REL,
    CF_RETAINED,
    CF_META,
    CF_WILLS,
    CF_AUTH,
    CF_BRIDGES,
    CF_BANNED,
];

/// `meta` key holding the on-disk format version.
pub const META_FORMAT: &[u8] = b"format";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{cf} key has {len} bytes, expected {expected}")]
    Length {
        cf: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("{cf} key has a client prefix longer than the key")]
    Prefix { cf: &'static str },
    #[error("client id is {0} bytes, more than 65535")]
    ClientTooLong(usize),
}

pub fn msg_key(msg_id: u64) -> [u8; 8] {
    msg_id.to_be_bytes()
}

pub fn decode_msg_key(key: &[u8]) -> Result<u64, KeyError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| KeyError::Length {
        cf: CF_MSGS,
        len: key.len(),
        expected: 8,
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// `u16 len | client`: the start of every per-client key.
pub fn client_prefix(client: &str) -> Result<Vec<u8>, KeyError> {
    let len = u16::try_from(client.len()).map_err(|_| KeyError::ClientTooLong(client.len()))?;
    let mut key = Vec::with_capacity(2 + client.len() + 8);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(client.as_bytes());
    Ok(key)
}

/// The exclusive upper bound of a client's range: the prefix with its last byte bumped,
/// carrying as needed. Client prefixes never consist only of 0xFF bytes (the length is
/// at most 0xFFFF and is followed by data) except the degenerate 65535×0xFF id, for which
/// `None` means "to the end of the column family".
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub fn queue_key(client: &str, seq: u64) -> Result<Vec<u8>, KeyError> {
    let mut key = client_prefix(client)?;
    key.extend_from_slice(&seq.to_be_bytes());
    Ok(key)
}

pub fn awaiting_rel_key(client: &str, packet_id: u16) -> Result<Vec<u8>, KeyError> {
    let mut key = client_prefix(client)?;
    key.extend_from_slice(&packet_id.to_be_bytes());
    Ok(key)
}

pub fn sub_key(client: &str, filter: &str) -> Result<Vec<u8>, KeyError> {
    let mut key = client_prefix(client)?;
    key.extend_from_slice(filter.as_bytes());
    Ok(key)
}

/// Which built-in credential table a `CF_AUTH` key belongs to: its first byte, so each
/// table is one contiguous range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthTable {
    /// `emqx_auth_username`: entries by MQTT username.
    Username,
    /// `emqx_auth_clientid`: entries by client id.
    ClientId,
}

impl AuthTable {
    fn tag(self) -> u8 {
        match self {
            AuthTable::Username => b'u',
            AuthTable::ClientId => b'c',
        }
    }

    /// The table's key range: `[tag]` up to `[tag + 1]`.
    pub fn range(self) -> ([u8; 1], [u8; 1]) {
        ([self.tag()], [self.tag() + 1])
    }
}

/// `table tag | name`: a name is any UTF-8 (MQTT caps it at 65535 bytes).
pub fn auth_key(table: AuthTable, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + name.len());
    key.push(table.tag());
    key.extend_from_slice(name.as_bytes());
    key
}

/// The name of a `CF_AUTH` key of `table`.
pub fn decode_auth_key(table: AuthTable, key: &[u8]) -> Result<&str, KeyError> {
    match key.split_first() {
        Some((tag, name)) if *tag == table.tag() => {
            std::str::from_utf8(name).map_err(|_| KeyError::Prefix { cf: CF_AUTH })
        }
        _ => Err(KeyError::Prefix { cf: CF_AUTH }),
    }
}

/// What a ban names: a client id, a username or a peer's IP address. Its tag is the
/// first byte of a `CF_BANNED` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BanKind {
    ClientId,
    Username,
    PeerHost,
}

impl BanKind {
    pub const ALL: [BanKind; 3] = [BanKind::ClientId, BanKind::Username, BanKind::PeerHost];

    fn tag(self) -> u8 {
        match self {
            BanKind::ClientId => b'c',
            BanKind::Username => b'u',
            BanKind::PeerHost => b'h',
        }
    }

    /// EMQX's name of the kind (the `as` of a ban): `clientid`, `username`, `peerhost`.
    pub fn name(self) -> &'static str {
        match self {
            BanKind::ClientId => "clientid",
            BanKind::Username => "username",
            BanKind::PeerHost => "peerhost",
        }
    }

    pub fn parse(name: &str) -> Option<BanKind> {
        BanKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// `kind tag | who`.
pub fn banned_key(kind: BanKind, who: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + who.len());
    key.push(kind.tag());
    key.extend_from_slice(who.as_bytes());
    key
}

/// The kind and who of a `CF_BANNED` key.
pub fn decode_banned_key(key: &[u8]) -> Result<(BanKind, &str), KeyError> {
    let bad = KeyError::Prefix { cf: CF_BANNED };
    let (tag, who) = key
        .split_first()
        .ok_or(KeyError::Prefix { cf: CF_BANNED })?;
    let kind = BanKind::ALL
        .into_iter()
        .find(|k| k.tag() == *tag)
        .ok_or(KeyError::Prefix { cf: CF_BANNED })?;
    let who = std::str::from_utf8(who).map_err(|_| bad)?;
    Ok((kind, who))
}

/// Split a per-client key into (client id, rest).
pub fn split_client_key<'a>(
    cf: &'static str,
    key: &'a [u8],
) -> Result<(&'a str, &'a [u8]), KeyError> {
    if key.len() < 2 {
        return Err(KeyError::Prefix { cf });
    }
    let len = u16::from_be_bytes([key[0], key[1]]) as usize;
    if key.len() < 2 + len {
        return Err(KeyError::Prefix { cf });
    }
    let client = std::str::from_utf8(&key[2..2 + len]).map_err(|_| KeyError::Prefix { cf })?;
    Ok((client, &key[2 + len..]))
}

pub fn decode_queue_seq(key: &[u8]) -> Result<u64, KeyError> {
    let (_, rest) = split_client_key(CF_QUEUE, key)?;
    let bytes: [u8; 8] = rest.try_into().map_err(|_| KeyError::Length {
        cf: CF_QUEUE,
        len: rest.len(),
        expected: 8,
    })?;
    Ok(u64::from_be_bytes(bytes))
}

pub fn decode_awaiting_rel(key: &[u8]) -> Result<u16, KeyError> {
    let (_, rest) = split_client_key(CF_AWAITING_REL, key)?;
    let bytes: [u8; 2] = rest.try_into().map_err(|_| KeyError::Length {
        cf: CF_AWAITING_REL,
        len: rest.len(),
        expected: 2,
    })?;
    Ok(u16::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn msg_keys_sort_numerically() {
        let ids = [0u64, 1, 255, 256, 65_535, 1 << 32, u64::MAX - 1, u64::MAX];
        for pair in ids.windows(2) {
            assert!(msg_key(pair[0]) < msg_key(pair[1]));
        }
        assert_eq!(decode_msg_key(&msg_key(1 << 40)).unwrap(), 1 << 40);
        assert!(decode_msg_key(&[1, 2, 3]).is_err());
    }

    #[test]
    fn queue_keys_of_one_client_sort_by_seq_and_stay_in_its_range() {
        let prefix = client_prefix("dev-1").unwrap();
        let end = prefix_end(&prefix).unwrap();
        let mut last = prefix.clone();
        for seq in [0u64, 1, 2, 300, 70_000, u64::MAX] {
            let key = queue_key("dev-1", seq).unwrap();
            assert!(key > last);
            assert!(key < end);
            assert_eq!(decode_queue_seq(&key).unwrap(), seq);
            last = key;
        }
    }

    #[test]
    fn a_client_id_that_extends_another_does_not_fall_in_its_range() {
        let short = client_prefix("a").unwrap();
        let end = prefix_end(&short).unwrap();
        let long = queue_key("ab", 0).unwrap();
        assert!(!(long >= short && long < end));
    }

    #[test]
    fn banned_keys_round_trip_and_refuse_unknown_tags() {
        for kind in BanKind::ALL {
            for who in ["", "c1", "10.0.0.1", "ünï"] {
                assert_eq!(
                    decode_banned_key(&banned_key(kind, who)).unwrap(),
                    (kind, who)
                );
            }
            assert_eq!(BanKind::parse(kind.name()), Some(kind));
        }
        assert!(decode_banned_key(b"").is_err());
        assert!(decode_banned_key(b"xabc").is_err());
        assert!(decode_banned_key(&[b'c', 0xff]).is_err());
        assert_eq!(BanKind::parse("ip"), None);
    }

    #[test]
    fn auth_tables_do_not_overlap_and_names_round_trip() {
        for table in [AuthTable::Username, AuthTable::ClientId] {
            let (from, to) = table.range();
            for name in ["", "a", "\u{10ffff}", "' OR '1'='1"] {
                let key = auth_key(table, name);
                assert!(key.as_slice() >= &from[..] && key.as_slice() < &to[..]);
                assert_eq!(decode_auth_key(table, &key).unwrap(), name);
            }
        }
        let user = auth_key(AuthTable::Username, "x");
        let (from, to) = AuthTable::ClientId.range();
        assert!(!(user.as_slice() >= &from[..] && user.as_slice() < &to[..]));
        assert!(decode_auth_key(AuthTable::ClientId, &user).is_err());
        assert!(decode_auth_key(AuthTable::Username, &[b'u', 0xff]).is_err());
    }

    #[test]
    fn split_rejects_truncated_keys() {
        assert_eq!(
            split_client_key(CF_QUEUE, &[0, 5, b'a']),
            Err(KeyError::Prefix { cf: CF_QUEUE })
        );
        assert!(client_prefix(&"x".repeat(70_000)).is_err());
    }

    proptest! {
        #[test]
        fn queue_order_is_client_then_seq(a in "[a-z]{1,8}", b in "[a-z]{1,8}", s1: u64, s2: u64) {
            let ka = queue_key(&a, s1).unwrap();
            let kb = queue_key(&b, s2).unwrap();
            if a == b {
                prop_assert_eq!(ka.cmp(&kb), s1.cmp(&s2));
            } else {
                // Different clients never interleave: each key is outside the other's range.
                let pa = client_prefix(&a).unwrap();
                prop_assert!(!(kb >= pa && kb < prefix_end(&pa).unwrap()));
            }
            let (client, _) = split_client_key(CF_QUEUE, &ka).unwrap();
            prop_assert_eq!(client, a.as_str());
        }

        #[test]
        fn awaiting_rel_roundtrip(c in "[ -~]{0,30}", id: u16) {
            let key = awaiting_rel_key(&c, id).unwrap();
            prop_assert_eq!(decode_awaiting_rel(&key).unwrap(), id);
        }
    }
}
