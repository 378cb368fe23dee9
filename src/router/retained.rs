//! The retained-message index: which topics hold a retained message.
//!
//! Only topics are in memory; messages stay in the store's `retained` column family
//! and are read when a subscription asks for them. A message whose store write is
//! still in flight is kept in `pending` until the write commits, so a subscriber that
//! comes in between still gets it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use crate::message::Message;
use crate::topic;

#[derive(Debug, Default)]
pub struct RetainedIndex {
    topics: RwLock<BTreeSet<String>>,
    pending: Mutex<HashMap<String, Arc<Message>>>,
    /// The number of topics and its highest since start (`$SYS/.../retained/*`),
    /// set under the write lock from the set's size.
    count: crate::metrics::Gauge,
}

impl RetainedIndex {
    /// `msg` is being written for `topic`; serve it from memory until `committed`.
    pub fn set_pending(&self, topic: &str, msg: Arc<Message>) {
        self.pending_map().insert(topic.to_owned(), msg);
    }

    /// The write of `msg` committed (or failed): read `topic` from the store again,
    /// unless a newer message replaced it meanwhile.
    pub fn committed(&self, topic: &str, msg: &Arc<Message>) {
        let mut pending = self.pending_map();
        if pending.get(topic).is_some_and(|m| Arc::ptr_eq(m, msg)) {
            pending.remove(topic);
        }
    }

    pub fn pending(&self, topic: &str) -> Option<Arc<Message>> {
        self.pending_map().get(topic).cloned()
    }

    fn pending_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Message>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, topic: &str) -> bool {
        let mut topics = self.write();
        let added = topics.insert(topic.to_owned());
        self.count.set(topics.len() as u64);
        added
    }

    pub fn remove(&self, topic: &str) -> bool {
        self.pending_map().remove(topic);
        let mut topics = self.write();
        let removed = topics.remove(topic);
        self.count.set(topics.len() as u64);
        removed
    }

    /// The count of retained topics, and its highest since start.
    pub fn gauge(&self) -> &crate::metrics::Gauge {
        &self.count
    }

    /// Forget `topic` after the store deleted its expired message, unless a newer
    /// message for it is on its way (pending): that one's write follows the delete.
    pub fn remove_expired(&self, topic: &str) {
        let pending = self.pending_map();
        if !pending.contains_key(topic) {
            let mut topics = self.write();
            topics.remove(topic);
            self.count.set(topics.len() as u64);
        }
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.read().contains(topic)
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Retained topics matched by `filter`. Scans only the range sharing the filter's
    /// literal prefix (the levels before its first wildcard).
    pub fn matching(&self, filter: &str) -> Vec<String> {
        let topics = self.read();
        if !topic::has_wildcard(filter) {
            return topics.get(filter).into_iter().cloned().collect();
        }
        let literal: Vec<&str> = filter
            .split('/')
            .take_while(|l| *l != "+" && *l != "#")
            .collect();
        let prefix = literal.join("/");
        topics
            .range(prefix.clone()..)
            .take_while(|t| t.starts_with(&prefix))
            .filter(|t| topic::matches(filter, t))
            .cloned()
            .collect()
    }

    /// Up to `limit` retained topics after `after`, in order: a page of the index.
    pub fn page(&self, after: Option<&str>, limit: usize) -> Vec<String> {
        use std::ops::Bound::{Excluded, Unbounded};
        let topics = self.read();
        let start = match after {
            Some(a) => Excluded(a),
            None => Unbounded,
        };
        topics
            .range::<str, _>((start, Unbounded))
            .take(limit)
            .cloned()
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeSet<String>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeSet<String>> {
        self.topics.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_lookups_use_the_literal_prefix() {
        let idx = RetainedIndex::default();
        for t in ["a/b", "a/c/d", "ab/x", "b", "$SYS/x", "a"] {
            idx.insert(t);
        }
        assert_eq!(idx.matching("a/+"), vec!["a/b"]);
        assert_eq!(idx.matching("a/#"), vec!["a", "a/b", "a/c/d"]);
        assert_eq!(idx.matching("#"), vec!["a", "a/b", "a/c/d", "ab/x", "b"]);
        assert_eq!(idx.matching("$SYS/#"), vec!["$SYS/x"]);
        assert_eq!(idx.matching("b"), vec!["b"]);
        assert!(idx.remove("b"));
        assert!(idx.matching("b").is_empty());
    }
}
