//! What must hold of a store between any two batches, checked over any `Backend`.
//!
//! - every logged message's reference count (`refs`, absent = 1) equals the number of
//!   queue entries that hold it (not released, not inline), so it is deleted exactly
//!   when its last holder goes;
//! - no queue entry holds a message that is gone;
//! - no `queue`, `subs` or `awaiting_rel` key belongs to a client without a session
//!   record (an orphan that no session will ever read or delete);
//! - no `refs` key without its message, nor one holding a count below two;
//! - every record decodes.
//!
//! A full scan: for tests (the model test after every batch and every recovery,
//! storage unit tests), never on the broker's hot path.

use std::collections::{BTreeMap, BTreeSet};

use crate::backend::Backend;
use crate::keys;
use crate::records::{QueueEntry, SessionRecord};
use crate::store::Result;

/// At most this many problems are listed (one broken invariant tends to repeat).
const MAX_REPORTED: usize = 20;

/// The broken invariants, described (empty when all hold). Err only when the store
/// cannot be read.
pub fn check<B: Backend>(db: &B) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut report = |p: String| {
        if problems.len() < MAX_REPORTED {
            problems.push(p);
        }
    };
    let mut sessions = BTreeSet::new();
    db.scan(keys::CF_SESSIONS, &[], None, |key, value| {
        let client = String::from_utf8_lossy(key).into_owned();
        if let Err(e) = SessionRecord::decode(value) {
            report(format!("session {client:?}: {e}"));
        }
        sessions.insert(client);
        Ok(true)
    })?;
    // message id -> queue entries holding it
    let mut held: BTreeMap<u64, u32> = BTreeMap::new();
    let mut holders: Vec<(String, u64, u64)> = Vec::new();
    db.scan(keys::CF_QUEUE, &[], None, |key, value| {
        let (client, seq) = match (
            keys::split_client_key(keys::CF_QUEUE, key),
            keys::decode_queue_seq(key),
        ) {
            (Ok((client, _)), Ok(seq)) => (client.to_owned(), seq),
            (Err(e), _) | (_, Err(e)) => {
                report(format!("queue key {key:?}: {e}"));
                return Ok(true);
            }
        };
        if !sessions.contains(&client) {
            report(format!("queue entry {client:?}/{seq} without a session"));
        }
        match QueueEntry::decode(value) {
            Ok(entry) => {
                if let Some(id) = entry.head().msg_ref() {
                    *held.entry(id).or_default() += 1;
                    holders.push((client, seq, id));
                }
            }
            Err(e) => report(format!("queue entry {client:?}/{seq}: {e}")),
        }
        Ok(true)
    })?;
    for cf in [keys::CF_SUBS, keys::CF_AWAITING_REL] {
        db.scan(cf, &[], None, |key, _| {
            match keys::split_client_key(cf, key) {
                Ok((client, _)) if !sessions.contains(client) => {
                    report(format!("{cf} key of {client:?} without a session"))
                }
                Ok(_) => {}
                Err(e) => report(format!("{cf} key {key:?}: {e}")),
            }
            Ok(true)
        })?;
    }
    let mut refs: BTreeMap<u64, u32> = BTreeMap::new();
    db.scan(keys::CF_REFS, &[], None, |key, value| {
        match (keys::decode_msg_key(key), <[u8; 4]>::try_from(value)) {
            (Ok(id), Ok(count)) => {
                let count = u32::from_be_bytes(count);
                if count < 2 {
                    // Absent means one: a key holds only counts above one.
                    report(format!("refs key of message {id} holds {count}"));
                }
                refs.insert(id, count);
            }
            _ => report(format!("refs entry {key:?} = {value:?} is malformed")),
        }
        Ok(true)
    })?;
    let mut logged = BTreeSet::new();
    db.scan(keys::CF_MSGS, &[], None, |key, value| {
        let Ok(id) = keys::decode_msg_key(key) else {
            report(format!("msgs key {key:?} is malformed"));
            return Ok(true);
        };
        if let Err(e) = crate::records::StoredMessage::decode(value) {
            report(format!("message {id}: {e}"));
        }
        logged.insert(id);
        let count = refs.get(&id).copied().unwrap_or(1);
        let holding = held.get(&id).copied().unwrap_or(0);
        if count != holding {
            report(format!(
                "message {id}: reference count {count}, held by {holding} queue entries"
            ));
        }
        Ok(true)
    })?;
    for (client, seq, id) in holders {
        if !logged.contains(&id) {
            report(format!(
                "queue entry {client:?}/{seq} holds message {id}, which is gone"
            ));
        }
    }
    for id in refs.keys() {
        if !logged.contains(id) {
            report(format!("refs key of message {id}, which is gone"));
        }
    }
    Ok(problems)
}
