//! What a soak message carries, so the checker can tell every delivery apart: the
//! payload starts with its publisher's index and that publisher's sequence number (both
//! big-endian), which makes each message unique in the run; topics are `soak/<k>`.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes at the front of every payload that identify the message.
pub const HEADER_LEN: usize = 12;

/// One published message: `(publisher index, sequence number of that publisher)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId {
    pub publisher: u32,
    pub seq: u64,
}

impl std::fmt::Display for MsgId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p{}#{}", self.publisher, self.seq)
    }
}

/// A payload of `len` bytes (at least `HEADER_LEN`) that names `id`.
pub fn payload(id: MsgId, len: usize) -> Bytes {
    let len = len.max(HEADER_LEN);
    let mut buf = BytesMut::with_capacity(len);
    buf.put_u32(id.publisher);
    buf.put_u64(id.seq);
    buf.resize(len, b'.');
    buf.freeze()
}

/// The message a payload names; `None` for a payload no soak publisher wrote.
pub fn payload_id(payload: &[u8]) -> Option<MsgId> {
    let publisher = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?);
    let seq = u64::from_be_bytes(payload.get(4..HEADER_LEN)?.try_into().ok()?);
    Some(MsgId { publisher, seq })
}

pub fn topic_name(topic: usize) -> String {
    format!("soak/{topic}")
}

/// The index `k` of a topic `soak/<k>`.
pub fn topic_index(topic: &[u8]) -> Option<usize> {
    std::str::from_utf8(topic.strip_prefix(b"soak/")?)
        .ok()?
        .parse()
        .ok()
}

/// What a subscriber subscribes to, for its whole life: either `soak/+` or some exact
/// topics, never both, so no message matches two of its filters (an overlap may be
/// delivered once or twice, which would blur the duplicate count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    All,
    Topics(Vec<usize>),
}

impl Interest {
    pub fn filters(&self) -> Vec<String> {
        match self {
            Interest::All => vec!["soak/+".to_string()],
            Interest::Topics(topics) => topics.iter().map(|t| topic_name(*t)).collect(),
        }
    }

    /// Bit `k` set for every topic `soak/<k>` it matches (at most 64 topics).
    pub fn mask(&self, topics: usize) -> u64 {
        match self {
            Interest::All if topics >= 64 => u64::MAX,
            Interest::All => (1u64 << topics) - 1,
            Interest::Topics(list) => list.iter().fold(0, |m, t| m | 1u64 << t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_names_its_message() {
        let id = MsgId {
            publisher: 3,
            seq: 1 << 40,
        };
        let p = payload(id, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(payload_id(&p), Some(id));
        assert_eq!(payload(id, 0).len(), HEADER_LEN);
        assert_eq!(payload_id(b"short"), None);
    }

    #[test]
    fn topics_and_masks() {
        assert_eq!(topic_index(topic_name(17).as_bytes()), Some(17));
        assert_eq!(topic_index(b"other/1"), None);
        assert_eq!(Interest::All.mask(3), 0b111);
        assert_eq!(Interest::Topics(vec![0, 2]).mask(3), 0b101);
        assert_eq!(Interest::Topics(vec![0, 2]).filters(), ["soak/0", "soak/2"]);
    }
}
