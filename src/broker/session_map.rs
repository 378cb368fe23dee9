//! The registry's sessions by client id, one pointer per entry.
//!
//! A `HashMap<ClientId, Arc<SessionHandle>>` stores the key beside the handle that
//! already holds it: 24 bytes a bucket. This table stores only the handle (8 bytes)
//! and finds it by the handle's own `client_id`: at 19,000 sessions that is 15 bytes
//! per session instead of 43, for every session of the node.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use super::registry::SessionHandle;

#[derive(Default)]
pub(super) struct SessionMap {
    table: HashTable<Arc<SessionHandle>>,
    hasher: std::collections::hash_map::RandomState,
}

impl SessionMap {
    fn hash(&self, client: &str) -> u64 {
        self.hasher.hash_one(client)
    }

    pub fn get(&self, client: &str) -> Option<&Arc<SessionHandle>> {
        self.table
            .find(self.hash(client), |h| &*h.client_id == client)
    }

    /// Register `handle` under its client id; the handle it replaces, if any.
    pub fn insert(&mut self, handle: Arc<SessionHandle>) -> Option<Arc<SessionHandle>> {
        let hash = self.hash(&handle.client_id);
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |h| h.client_id == handle.client_id,
            |h| hasher.hash_one(&*h.client_id),
        ) {
            Entry::Occupied(mut e) => Some(std::mem::replace(e.get_mut(), handle)),
            Entry::Vacant(e) => {
                e.insert(handle);
                None
            }
        }
    }

    pub fn remove(&mut self, client: &str) -> Option<Arc<SessionHandle>> {
        let hash = self.hash(client);
        match self.table.find_entry(hash, |h| &*h.client_id == client) {
            Ok(e) => Some(e.remove().0),
            Err(_) => None,
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<SessionHandle>> {
        self.table.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: &str) -> Arc<SessionHandle> {
        let zone = Arc::new(crate::config::Zone {
            name: "external".into(),
            config: crate::config::ZoneConfig::DEFAULT,
        });
        SessionHandle::new(
            Arc::from(id),
            super::super::registry::SessionState {
                meta: super::super::registry::SessionMeta {
                    incarnation: 1,
                    persistent: false,
                    expiry_interval_s: 0,
                    subscriptions: Default::default(),
                    protocol_level: 4,
                    dup_below: 0,
                },
                live: true,
                conn: None,
                offline_since: crate::broker::registry::Stamp::NONE,
                zone,
                connected_at: crate::broker::registry::Stamp::NONE,
                peer: "127.0.0.1:1".into(),
            },
        )
    }

    #[test]
    fn finds_replaces_and_removes_by_client_id() {
        let mut map = SessionMap::default();
        assert!(map.is_empty());
        for i in 0..1000 {
            assert!(map.insert(handle(&format!("c{i}"))).is_none());
        }
        assert_eq!(map.len(), 1000);
        assert_eq!(&*map.get("c7").unwrap().client_id, "c7");
        assert!(map.get("nobody").is_none());
        let newer = handle("c7");
        let old = map.insert(newer.clone()).expect("replaced");
        assert!(!Arc::ptr_eq(&old, &newer));
        assert!(Arc::ptr_eq(map.get("c7").unwrap(), &newer));
        assert_eq!(map.len(), 1000);
        assert!(Arc::ptr_eq(&map.remove("c7").unwrap(), &newer));
        assert!(map.remove("c7").is_none());
        assert_eq!(map.values().count(), 999);
    }
}
