//! Values stored under the keys in `keys.rs`: typed records with a version byte.
//!
//! RocksDB's block checksums catch bit rot; these decoders catch everything else
//! (truncation, a newer format, a bug) and return a typed error instead of panicking.

use bytes::Bytes;
use thiserror::Error;

const VERSION: u8 = 1;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("{record}: unknown format version {version}")]
    Version { record: &'static str, version: u8 },
    #[error("{record}: truncated at byte {at}")]
    Truncated { record: &'static str, at: usize },
    #[error("{record}: {what} is not UTF-8")]
    Utf8 {
        record: &'static str,
        what: &'static str,
    },
    #[error("{record}: {extra} trailing bytes")]
    Trailing { record: &'static str, extra: usize },
}

/// A message as written once to the `msgs` log (and as a copy in `retained`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Unix milliseconds when the broker accepted it.
    pub publish_ms: u64,
    /// Unix milliseconds after which it must not be delivered; 0 = never expires.
    pub expiry_ms: u64,
    pub qos: u8,
    pub retain: bool,
    /// Publisher's client id (for No Local and logs); shared with the live message.
    pub from: std::sync::Arc<str>,
    pub topic: Bytes,
    pub payload: Bytes,
    /// The broker's own encoding of the pass-through v5 properties; opaque here.
    pub properties: Bytes,
}

/// One queued delivery of a message to a persistent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub msg_id: u64,
    /// QoS the subscriber gets (min of publish and subscription QoS).
    pub qos: u8,
    /// RETAIN flag to deliver with.
    pub retain: bool,
    /// QoS 2 outbound: PUBREC received, only PUBREL/PUBCOMP remain.
    pub released: bool,
    pub subscription_ids: Vec<u32>,
    /// The message itself, when this entry is its only reference (one persistent
    /// subscriber): then it is not in `msgs` and `msg_id` names nothing there.
    pub inline: Option<StoredMessage>,
}

/// What the writer needs to know of a queue entry to complete it: which message
/// reference it holds, if any. Read without copying an inline message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHead {
    pub msg_id: u64,
    pub released: bool,
    pub inline: bool,
}

impl EntryHead {
    /// The message-log reference this entry holds: none once released (QoS 2 after
    /// PUBREC) or when the message is inline.
    pub fn msg_ref(&self) -> Option<u64> {
        (!self.released && !self.inline).then_some(self.msg_id)
    }
}

/// A will waiting out its Will Delay Interval after its client disconnected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayedWill {
    /// Unix milliseconds when it is due (at the latest when the session ends).
    pub due_ms: u64,
    pub msg: StoredMessage,
}

impl DelayedWill {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::new();
        out.u64(self.due_ms);
        out.bytes(&self.msg.encode());
        out.0
    }

    pub fn decode(buf: &[u8]) -> Result<DelayedWill, RecordError> {
        let mut input = In::new("will", buf)?;
        let due_ms = input.u64()?;
        let msg = StoredMessage::decode(input.bytes()?)?;
        input.finish()?;
        Ok(DelayedWill { due_ms, msg })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionRecord {
    pub protocol_level: u8,
    /// Seconds the session outlives its connection; u32::MAX = never expires.
    pub expiry_interval_s: u32,
    /// Unix milliseconds of the last disconnect; 0 = connected (or the broker died).
    pub disconnected_ms: u64,
    /// Queue entries below this seq may have been sent: resend them with DUP.
    pub dup_below: u64,
    /// The zone of the listener the client last connected through, whose queue
    /// limits apply while it is offline; empty in records written before it was kept
    /// (read as the default zone).
    pub zone: String,
    /// Which life of this client id's session the record belongs to: a fresh value
    /// each time a session is created (0 in records written before it was kept). An
    /// enqueue names the incarnation it was routed to, and the writer refuses it
    /// for any other, so a publish that raced with the end of a session can never
    /// land in its successor's queue.
    pub incarnation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionRecord {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    /// 0 = none.
    pub subscription_id: u32,
}

/// One entry of a built-in credential table: how its password was hashed (the
/// `password_hash` setting in force when it was written, e.g. `sha256`), the entry's
/// random salt, and the stored hash. Kept with the entry so a changed setting applies
/// to new entries and never locks out the ones already stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    pub algorithm: String,
    pub salt: Vec<u8>,
    pub hash: String,
    /// SCRAM-SHA-256 keys of the same password (MQTT 5 enhanced authentication),
    /// derived when the password was set; absent from entries written before they
    /// were kept (those cannot log in with SCRAM until their password is set again).
    pub scram: Option<ScramKeys>,
}

/// What SCRAM keeps of a password (RFC 5802 §3): salt, PBKDF2 iterations, `StoredKey`
/// and `ServerKey`. They verify a proof; they cannot produce one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl CredentialRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::new();
        out.bytes(self.algorithm.as_bytes());
        out.bytes(&self.salt);
        out.bytes(self.hash.as_bytes());
        if let Some(scram) = &self.scram {
            out.bytes(&scram.salt);
            out.u32(scram.iterations);
            out.bytes(&scram.stored_key);
            out.bytes(&scram.server_key);
        }
        out.0
    }

    pub fn decode(buf: &[u8]) -> Result<CredentialRecord, RecordError> {
        let mut input = In::new("credential", buf)?;
        let mut rec = CredentialRecord {
            algorithm: input.string("algorithm")?,
            salt: input.bytes()?.to_vec(),
            hash: input.string("hash")?,
            scram: None,
        };
        if !input.at_end() {
            rec.scram = Some(ScramKeys {
                salt: input.bytes()?.to_vec(),
                iterations: input.u32()?,
                stored_key: input.bytes()?.to_vec(),
                server_key: input.bytes()?.to_vec(),
            });
        }
        input.finish()?;
        Ok(rec)
    }
}

/// One ban (`emqx_ctl banned add`): who set it, why, when, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BannedRecord {
    pub by: String,
    pub reason: String,
    /// Unix seconds when it was set.
    pub at_s: u64,
    /// Unix seconds when it lifts; `None`: never.
    pub until_s: Option<u64>,
}

impl BannedRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::new();
        out.bytes(self.by.as_bytes());
        out.bytes(self.reason.as_bytes());
        out.u64(self.at_s);
        out.u64(self.until_s.unwrap_or(u64::MAX));
        out.0
    }

    pub fn decode(buf: &[u8]) -> Result<BannedRecord, RecordError> {
        let mut input = In::new("banned", buf)?;
        let rec = BannedRecord {
            by: input.string("by")?,
            reason: input.string("reason")?,
            at_s: input.u64()?,
            until_s: Some(input.u64()?).filter(|u| *u != u64::MAX),
        };
        input.finish()?;
        Ok(rec)
    }
}

/// What `emqx_ctl bridges` changed of one bridge, kept apart from its settings file
/// so that both an edit of the file and the changes made at run time take effect:
/// the bridge runs the file's forwards minus `forwards_deleted` plus
/// `forwards_added`, and the same for subscriptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeRecord {
    /// `bridges stop` left it stopped (until `bridges start`).
    pub stopped: bool,
    pub forwards_added: Vec<String>,
    pub forwards_deleted: Vec<String>,
    /// (filter, QoS): added, or the file's filter with another QoS.
    pub subscriptions_added: Vec<(String, u8)>,
    pub subscriptions_deleted: Vec<String>,
}

impl BridgeRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::new();
        out.u8(self.stopped as u8);
        for list in [&self.forwards_added, &self.forwards_deleted] {
            out.u32(list.len() as u32);
            for f in list {
                out.bytes(f.as_bytes());
            }
        }
        out.u32(self.subscriptions_added.len() as u32);
        for (f, qos) in &self.subscriptions_added {
            out.bytes(f.as_bytes());
            out.u8(*qos);
        }
        out.u32(self.subscriptions_deleted.len() as u32);
        for f in &self.subscriptions_deleted {
            out.bytes(f.as_bytes());
        }
        out.0
    }

    pub fn decode(buf: &[u8]) -> Result<BridgeRecord, RecordError> {
        let mut input = In::new("bridge", buf)?;
        let stopped = input.u8()? != 0;
        let strings = |input: &mut In| -> Result<Vec<String>, RecordError> {
            let n = input.u32()?;
            // Each entry takes at least its 4-byte length: a count the rest of the
            // record cannot hold is a truncation, not an allocation.
            let mut v = Vec::with_capacity((n as usize).min(buf.len() / 4));
            for _ in 0..n {
                v.push(input.string("filter")?);
            }
            Ok(v)
        };
        let forwards_added = strings(&mut input)?;
        let forwards_deleted = strings(&mut input)?;
        let n = input.u32()?;
        let mut subscriptions_added = Vec::with_capacity((n as usize).min(buf.len() / 5));
        for _ in 0..n {
            let f = input.string("filter")?;
            subscriptions_added.push((f, input.u8()?));
        }
        let subscriptions_deleted = strings(&mut input)?;
        input.finish()?;
        Ok(BridgeRecord {
            stopped,
            forwards_added,
            forwards_deleted,
            subscriptions_added,
            subscriptions_deleted,
        })
    }
}

struct Out(Vec<u8>);

impl Out {
    fn new() -> Out {
        Out(vec![VERSION])
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        // Lengths are u32: MQTT caps a packet at 256 MiB.
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
}

struct In<'a> {
    record: &'static str,
    buf: &'a [u8],
    at: usize,
}

impl<'a> In<'a> {
    fn new(record: &'static str, buf: &'a [u8]) -> Result<In<'a>, RecordError> {
        let mut input = In { record, buf, at: 0 };
        let version = input.u8()?;
        if version != VERSION {
            return Err(RecordError::Version { record, version });
        }
        Ok(input)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self.at.checked_add(n).filter(|end| *end <= self.buf.len());
        let end = end.ok_or(RecordError::Truncated {
            record: self.record,
            at: self.at,
        })?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], RecordError> {
        let len = self.u32()? as usize;
        self.take(len)
    }
    fn string(&mut self, what: &'static str) -> Result<String, RecordError> {
        self.str(what).map(str::to_owned)
    }
    fn str(&mut self, what: &'static str) -> Result<&'a str, RecordError> {
        let raw = self.bytes()?;
        std::str::from_utf8(raw).map_err(|_| RecordError::Utf8 {
            record: self.record,
            what,
        })
    }
    /// Nothing left: a field added later is absent from older records.
    fn at_end(&self) -> bool {
        self.at == self.buf.len()
    }
    fn finish(self) -> Result<(), RecordError> {
        match self.buf.len() - self.at {
            0 => Ok(()),
            extra => Err(RecordError::Trailing {
                record: self.record,
                extra,
            }),
        }
    }
}

impl StoredMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::new();
        out.u64(self.publish_ms);
        out.u64(self.expiry_ms);
        out.u8(self.qos);
        out.u8(self.retain as u8);
        out.bytes(self.from.as_bytes());
        out.bytes(&self.topic);
        out.bytes(&self.properties);
        out.bytes(&self.payload);
        out.0
    }

    pub fn decode(buf: &[u8]) -> Result<StoredMessage, RecordError> {
        StoredMessage::decode_shared(&Bytes::copy_from_slice(buf))
    }

    /// Decode without copying: topic, properties and payload share `buf`'s memory
    /// (one allocation for the record instead of one per field; the drain reads
    /// every queued message through here).
    pub fn decode_shared(buf: &Bytes) -> Result<StoredMessage, RecordError> {
        let mut input = In::new("message", buf)?;
        let msg = StoredMessage {
            publish_ms: input.u64()?,
            expiry_ms: input.u64()?,
            qos: input.u8()?,
            retain: input.u8()? != 0,
            from: std::sync::Arc::from(input.str("publisher client id")?),
            topic: buf.slice_ref(input.bytes()?),
            properties: buf.slice_ref(input.bytes()?),
            payload: buf.slice_ref(input.bytes()?),
        };
        input.finish()?;
        Ok(msg)
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expiry_ms != 0 && now_ms >= self.expiry_ms
    }
}

impl QueueEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::new();
        out.u64(self.msg_id);
        out.u8(self.qos);
        out.u8(self.retain as u8 | (self.released as u8) << 1 | (self.inline.is_some() as u8) << 2);
        out.u32(self.subscription_ids.len() as u32);
        for id in &self.subscription_ids {
            out.u32(*id);
        }
        if let Some(msg) = &self.inline {
            out.bytes(&msg.encode());
        }
        out.0
    }

    pub fn head(&self) -> EntryHead {
        EntryHead {
            msg_id: self.msg_id,
            released: self.released,
            inline: self.inline.is_some(),
        }
    }

    /// The head of an encoded entry (its fixed fields only).
    pub fn decode_head(buf: &[u8]) -> Result<EntryHead, RecordError> {
        let mut input = In::new("queue entry", buf)?;
        let msg_id = input.u64()?;
        let _qos = input.u8()?;
        let flags = input.u8()?;
        Ok(EntryHead {
            msg_id,
            released: flags & 2 != 0,
            inline: flags & 4 != 0,
        })
    }

    pub fn decode(buf: &[u8]) -> Result<QueueEntry, RecordError> {
        QueueEntry::decode_shared(&Bytes::copy_from_slice(buf))
    }

    /// Decode without copying an inline message (see `StoredMessage::decode_shared`).
    pub fn decode_shared(buf: &Bytes) -> Result<QueueEntry, RecordError> {
        let mut input = In::new("queue entry", buf)?;
        let msg_id = input.u64()?;
        let qos = input.u8()?;
        let flags = input.u8()?;
        let count = input.u32()? as usize;
        // Bounded by the record size, so a corrupt count cannot allocate wildly.
        let mut subscription_ids = Vec::with_capacity(count.min(buf.len() / 4));
        for _ in 0..count {
            subscription_ids.push(input.u32()?);
        }
        let inline = if flags & 4 != 0 {
            Some(StoredMessage::decode_shared(
                &buf.slice_ref(input.bytes()?),
            )?)
        } else {
            None
        };
        input.finish()?;
        Ok(QueueEntry {
            msg_id,
            qos,
            retain: flags & 1 != 0,
            released: flags & 2 != 0,
            subscription_ids,
            inline,
        })
    }
}

impl SessionRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::new();
        out.u8(self.protocol_level);
        out.u32(self.expiry_interval_s);
        out.u64(self.disconnected_ms);
        out.u64(self.dup_below);
        out.bytes(self.zone.as_bytes());
        out.u64(self.incarnation);
        out.0
    }

    pub fn decode(buf: &[u8]) -> Result<SessionRecord, RecordError> {
        let mut input = In::new("session", buf)?;
        let rec = SessionRecord {
            protocol_level: input.u8()?,
            expiry_interval_s: input.u32()?,
            disconnected_ms: input.u64()?,
            dup_below: input.u64()?,
            zone: if input.at_end() {
                String::new()
            } else {
                input.string("zone")?
            },
            incarnation: if input.at_end() { 0 } else { input.u64()? },
        };
        input.finish()?;
        Ok(rec)
    }
}

impl SubscriptionRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Out::new();
        out.u8(self.qos);
        out.u8(self.no_local as u8 | (self.retain_as_published as u8) << 1);
        out.u8(self.retain_handling);
        out.u32(self.subscription_id);
        out.0
    }

    pub fn decode(buf: &[u8]) -> Result<SubscriptionRecord, RecordError> {
        let mut input = In::new("subscription", buf)?;
        let qos = input.u8()?;
        let flags = input.u8()?;
        let rec = SubscriptionRecord {
            qos,
            no_local: flags & 1 != 0,
            retain_as_published: flags & 2 != 0,
            retain_handling: input.u8()?,
            subscription_id: input.u32()?,
        };
        input.finish()?;
        Ok(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn credential_roundtrip(algorithm in "[a-z0-9,]{1,30}",
                                salt in proptest::collection::vec(any::<u8>(), 0..32),
                                hash in "[ -~]{0,100}") {
            let rec = CredentialRecord { algorithm, salt, hash, scram: None };
            let bytes = rec.encode();
            prop_assert_eq!(CredentialRecord::decode(&bytes).unwrap(), rec);
            prop_assert!(CredentialRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        }

        #[test]
        fn credential_with_scram_keys_roundtrip(salt in proptest::collection::vec(any::<u8>(), 0..32),
                                                iterations: u32,
                                                key in proptest::collection::vec(any::<u8>(), 32)) {
            let scram = ScramKeys { salt: salt.clone(), iterations, stored_key: key.clone(), server_key: key };
            let rec = CredentialRecord { algorithm: "sha256".into(), salt, hash: "ab".into(), scram: Some(scram) };
            let bytes = rec.encode();
            prop_assert_eq!(CredentialRecord::decode(&bytes).unwrap(), rec.clone());
            // Cut anywhere inside the SCRAM keys: an error, never an entry without them.
            let plain_len = CredentialRecord { scram: None, ..rec }.encode().len();
            for cut in plain_len + 1..bytes.len() {
                prop_assert!(CredentialRecord::decode(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn bridge_roundtrip(stopped: bool, fa in proptest::collection::vec("[a-z/#+]{0,12}", 0..4),
                            fd in proptest::collection::vec("[a-z/#+]{0,12}", 0..4),
                            sa in proptest::collection::vec(("[a-z/#+]{0,12}", 0u8..3), 0..4),
                            sd in proptest::collection::vec("[a-z/#+]{0,12}", 0..4)) {
            let rec = BridgeRecord { stopped, forwards_added: fa, forwards_deleted: fd,
                subscriptions_added: sa, subscriptions_deleted: sd };
            let bytes = rec.encode();
            prop_assert_eq!(BridgeRecord::decode(&bytes).unwrap(), rec);
            for cut in 0..bytes.len() {
                prop_assert!(BridgeRecord::decode(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn banned_roundtrip(by in "[ -~]{0,12}", reason in "\\PC{0,20}", at_s: u64,
                            until_s in proptest::option::of(0u64..u64::MAX)) {
            let rec = BannedRecord { by, reason, at_s, until_s };
            let bytes = rec.encode();
            prop_assert_eq!(BannedRecord::decode(&bytes).unwrap(), rec);
            for cut in 0..bytes.len() {
                prop_assert!(BannedRecord::decode(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn message_roundtrip(publish_ms: u64, expiry_ms: u64, qos in 0u8..3, retain: bool,
                             from in "[ -~]{0,20}", topic in "[a-z/]{1,20}",
                             payload in proptest::collection::vec(any::<u8>(), 0..200),
                             props in proptest::collection::vec(any::<u8>(), 0..20)) {
            let msg = StoredMessage { publish_ms, expiry_ms, qos, retain, from: from.into(),
                topic: Bytes::from(topic), payload: Bytes::from(payload), properties: Bytes::from(props) };
            let bytes = msg.encode();
            prop_assert_eq!(StoredMessage::decode(&bytes).unwrap(), msg);
            // Every strict prefix is rejected, never mis-read.
            for cut in 0..bytes.len() {
                prop_assert!(StoredMessage::decode(&bytes[..cut]).is_err());
            }
        }

        #[test]
        fn queue_entry_roundtrip(msg_id: u64, qos in 0u8..3, retain: bool, released: bool,
                                 ids in proptest::collection::vec(1u32..268_435_455, 0..4)) {
            let e = QueueEntry { msg_id, qos, retain, released, subscription_ids: ids, inline: None };
            prop_assert_eq!(QueueEntry::decode(&e.encode()).unwrap(), e.clone());
            let inline = QueueEntry {
                inline: Some(StoredMessage {
                    publish_ms: 1, expiry_ms: 0, qos, retain, from: "p".into(),
                    topic: Bytes::from_static(b"t/1"), payload: Bytes::from(vec![7u8; 40]),
                    properties: Bytes::new(),
                }),
                ..e
            };
            let bytes = inline.encode();
            prop_assert_eq!(QueueEntry::decode(&bytes).unwrap(), inline);
            for cut in 0..bytes.len() {
                prop_assert!(QueueEntry::decode(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn session_and_subscription_roundtrip() {
        let s = SessionRecord {
            protocol_level: 5,
            expiry_interval_s: 7200,
            disconnected_ms: 12345,
            dup_below: 42,
            zone: "internal".into(),
            incarnation: 77,
        };
        assert_eq!(SessionRecord::decode(&s.encode()).unwrap(), s);
        // Written before the incarnation was kept.
        let bytes = s.encode();
        let read = SessionRecord::decode(&bytes[..bytes.len() - 8]).unwrap();
        assert_eq!((read.zone.as_str(), read.incarnation), ("internal", 0));
        // Written before the zone was kept: the fields up to dup_below.
        let old = &s.encode()[..1 + 1 + 4 + 8 + 8];
        let read = SessionRecord::decode(old).unwrap();
        assert_eq!((read.dup_below, read.zone.as_str()), (42, ""));
        let sub = SubscriptionRecord {
            qos: 2,
            no_local: true,
            retain_as_published: false,
            retain_handling: 1,
            subscription_id: 9,
        };
        assert_eq!(SubscriptionRecord::decode(&sub.encode()).unwrap(), sub);
    }

    #[test]
    fn rejects_unknown_version_and_trailing_bytes() {
        let mut bytes = SessionRecord::default().encode();
        bytes[0] = 9;
        assert_eq!(
            SessionRecord::decode(&bytes),
            Err(RecordError::Version {
                record: "session",
                version: 9
            })
        );
        let mut bytes = SessionRecord::default().encode();
        bytes.push(0);
        assert!(matches!(
            SessionRecord::decode(&bytes),
            Err(RecordError::Trailing { extra: 1, .. })
        ));
    }

    #[test]
    fn a_shared_decode_copies_no_field_of_an_inline_message() {
        let msg = StoredMessage {
            publish_ms: 1,
            expiry_ms: 0,
            qos: 1,
            retain: false,
            from: "p".into(),
            topic: Bytes::from_static(b"a/b"),
            payload: Bytes::from(vec![7u8; 64]),
            properties: Bytes::new(),
        };
        let entry = QueueEntry {
            msg_id: 9,
            qos: 1,
            retain: false,
            released: false,
            subscription_ids: vec![],
            inline: Some(msg.clone()),
        };
        let buf = Bytes::from(entry.encode());
        let decoded = QueueEntry::decode_shared(&buf).unwrap();
        assert_eq!(decoded, entry);
        let inline = decoded.inline.unwrap();
        let within = |b: &Bytes| {
            let (start, end) = (buf.as_ptr() as usize, buf.as_ptr() as usize + buf.len());
            (start..=end).contains(&(b.as_ptr() as usize))
        };
        assert!(
            within(&inline.payload) && within(&inline.topic),
            "fields point into the record"
        );
    }
}
