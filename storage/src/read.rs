//! Direct reads, over any `Backend`: `Store`'s read methods in production, and the
//! model test's reads of its simulated store. Reads never write.

use bytes::Bytes;

use crate::backend::Backend;
use crate::keys::{self, KeyError};
use crate::records::{
    BannedRecord, BridgeRecord, CredentialRecord, DelayedWill, QueueEntry, SessionRecord,
    StoredMessage, SubscriptionRecord,
};
use crate::store::Result;

fn utf8_key(cf: &'static str, key: &[u8]) -> Result<String> {
    Ok(String::from_utf8(key.to_vec()).map_err(|_| KeyError::Prefix { cf })?)
}

pub fn sessions<B: Backend>(db: &B) -> Result<Vec<(String, SessionRecord)>> {
    let mut out = Vec::new();
    db.scan(keys::CF_SESSIONS, &[], None, |key, value| {
        out.push((
            utf8_key(keys::CF_SESSIONS, key)?,
            SessionRecord::decode(value)?,
        ));
        Ok(true)
    })?;
    Ok(out)
}

pub fn session<B: Backend>(db: &B, client: &str) -> Result<Option<SessionRecord>> {
    db.get(keys::CF_SESSIONS, client.as_bytes(), |v| {
        Ok(SessionRecord::decode(v)?)
    })
}

/// Every stored subscription: (client, filter, options).
pub fn subscriptions<B: Backend>(db: &B) -> Result<Vec<(String, String, SubscriptionRecord)>> {
    let mut out = Vec::new();
    db.scan(keys::CF_SUBS, &[], None, |key, value| {
        let (client, filter) = keys::split_client_key(keys::CF_SUBS, key)?;
        let filter =
            std::str::from_utf8(filter).map_err(|_| KeyError::Prefix { cf: keys::CF_SUBS })?;
        out.push((
            client.to_owned(),
            filter.to_owned(),
            SubscriptionRecord::decode(value)?,
        ));
        Ok(true)
    })?;
    Ok(out)
}

/// Up to `limit` queue entries of `client` with seq >= `from_seq`, in order.
pub fn queue_range<B: Backend>(
    db: &B,
    client: &str,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<(u64, QueueEntry)>> {
    let mut out = Vec::with_capacity(limit.min(PREALLOCATED_MAX));
    visit_queue_range(db, client, from_seq, limit, |seq, entry| {
        out.push((seq, entry));
        Ok(())
    })?;
    Ok(out)
}

/// Entries a reader allocates room for up front: a page (1024 by default) fits, and
/// an absurd `limit` cannot allocate wildly.
pub const PREALLOCATED_MAX: usize = 4096;

/// `queue_range`, handing each entry to `visit` as it is decoded, so a caller that
/// builds its own page does not collect (and move) the entries twice.
pub fn visit_queue_range<B: Backend>(
    db: &B,
    client: &str,
    from_seq: u64,
    limit: usize,
    mut visit: impl FnMut(u64, QueueEntry) -> Result<()>,
) -> Result<()> {
    let start = keys::queue_key(client, from_seq)?;
    let end = keys::prefix_end(&keys::client_prefix(client)?);
    if limit == 0 {
        return Ok(());
    }
    let mut seen = 0;
    db.scan(keys::CF_QUEUE, &start, end.as_deref(), |key, value| {
        visit(keys::decode_queue_seq(key)?, QueueEntry::decode(value)?)?;
        seen += 1;
        Ok(seen < limit)
    })
}

/// One past the highest seq in `client`'s queue (0 when empty): one seek.
pub fn next_queue_seq<B: Backend>(db: &B, client: &str) -> Result<u64> {
    let prefix = keys::client_prefix(client)?;
    let end = keys::prefix_end(&prefix);
    let next = db.last_at_or_before(keys::CF_QUEUE, end.as_deref(), |key| {
        Ok(if key.starts_with(&prefix) {
            keys::decode_queue_seq(key)? + 1
        } else {
            0
        })
    })?;
    Ok(next.unwrap_or(0))
}

/// Messages by id, `None` where a message is gone.
pub fn messages<B: Backend>(db: &B, ids: &[u64]) -> Result<Vec<Option<StoredMessage>>> {
    let keys: Vec<[u8; 8]> = ids.iter().map(|id| keys::msg_key(*id)).collect();
    let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    db.multi_get(keys::CF_MSGS, &refs)?
        .into_iter()
        .map(|v| match v {
            Some(v) => Ok(Some(StoredMessage::decode_shared(&Bytes::from(v))?)),
            None => Ok(None),
        })
        .collect()
}

/// QoS 2 packet ids received from `client` and awaiting PUBREL.
pub fn awaiting_rel<B: Backend>(db: &B, client: &str) -> Result<Vec<u16>> {
    let prefix = keys::client_prefix(client)?;
    let end = keys::prefix_end(&prefix);
    let mut out = Vec::new();
    db.scan(keys::CF_AWAITING_REL, &prefix, end.as_deref(), |key, _| {
        out.push(keys::decode_awaiting_rel(key)?);
        Ok(true)
    })?;
    Ok(out)
}

/// Every stored delayed will: (client, will).
pub fn wills<B: Backend>(db: &B) -> Result<Vec<(String, DelayedWill)>> {
    let mut out = Vec::new();
    db.scan(keys::CF_WILLS, &[], None, |key, value| {
        out.push((utf8_key(keys::CF_WILLS, key)?, DelayedWill::decode(value)?));
        Ok(true)
    })?;
    Ok(out)
}

/// Topics of every retained message.
pub fn retained_topics<B: Backend>(db: &B) -> Result<Vec<Bytes>> {
    let mut out = Vec::new();
    db.scan(keys::CF_RETAINED, &[], None, |key, _| {
        out.push(Bytes::copy_from_slice(key));
        Ok(true)
    })?;
    Ok(out)
}

pub fn retained<B: Backend>(db: &B, topic: &[u8]) -> Result<Option<StoredMessage>> {
    db.get(keys::CF_RETAINED, topic, |v| Ok(StoredMessage::decode(v)?))
}

/// Retained messages whose expiry is at or before `now_ms`.
pub fn expired_retained<B: Backend>(db: &B, now_ms: u64) -> Result<Vec<Bytes>> {
    let mut out = Vec::new();
    db.scan(keys::CF_RETAINED, &[], None, |key, value| {
        if StoredMessage::decode(value)?.is_expired(now_ms) {
            out.push(Bytes::copy_from_slice(key));
        }
        Ok(true)
    })?;
    Ok(out)
}

/// The highest message id in the log (0 when empty).
pub fn last_msg_id<B: Backend>(db: &B) -> Result<u64> {
    let last = db.last_at_or_before(keys::CF_MSGS, None, |key| Ok(keys::decode_msg_key(key)?))?;
    Ok(last.unwrap_or(0))
}

/// Every entry of a built-in credential table, by name.
pub fn credentials<B: Backend>(
    db: &B,
    table: keys::AuthTable,
) -> Result<Vec<(String, CredentialRecord)>> {
    let (from, to) = table.range();
    let mut out = Vec::new();
    db.scan(keys::CF_AUTH, &from, Some(&to), |key, value| {
        out.push((
            keys::decode_auth_key(table, key)?.to_string(),
            CredentialRecord::decode(value)?,
        ));
        Ok(true)
    })?;
    Ok(out)
}

/// Every ban, by kind then who.
pub fn banned<B: Backend>(db: &B) -> Result<Vec<(keys::BanKind, String, BannedRecord)>> {
    let mut out = Vec::new();
    db.scan(keys::CF_BANNED, &[], None, |key, value| {
        let (kind, who) = keys::decode_banned_key(key)?;
        out.push((kind, who.to_string(), BannedRecord::decode(value)?));
        Ok(true)
    })?;
    Ok(out)
}

/// What `emqx_ctl bridges` changed, by bridge name.
pub fn bridges<B: Backend>(db: &B) -> Result<Vec<(String, BridgeRecord)>> {
    let mut out = Vec::new();
    db.scan(keys::CF_BRIDGES, &[], None, |key, value| {
        out.push((
            utf8_key(keys::CF_BRIDGES, key)?,
            BridgeRecord::decode(value)?,
        ));
        Ok(true)
    })?;
    Ok(out)
}
