//! Each client's cache of ACL answers (EMQX's `enable_acl_cache`,
//! `acl_cache_max_size`, `acl_cache_ttl`): a backend is asked once per topic and
//! access per `ttl`, not for every publish.
//!
//! Small on purpose: at most `max_size` entries (32 by default) in a Vec, oldest
//! first, searched linearly (a few short string compares beat hashing at this size).
//! It is created at a client's first check, dropped when the connection hibernates,
//! and emptied whenever the answers may have changed: the hook chain's generation for
//! `client.check_acl` moves on any plugin load/unload, `emqx_ctl acl reload` and
//! `emqx_ctl acl cache-clean` (all clients); `acl cache-clean <ClientId>` reaches one
//! client through its mailbox (`ConnEvent::CleanAclCache`).

use std::time::{Duration, Instant};

use crate::hooks::{Access, AclVerdict};

pub(super) struct AclCache {
    /// `Hooks::generation(ClientCheckAcl)` the entries were answered under.
    generation: u64,
    entries: Vec<Entry>,
}

struct Entry {
    access: Access,
    topic: Box<str>,
    verdict: AclVerdict,
    at: Instant,
}

impl AclCache {
    pub fn new(generation: u64) -> AclCache {
        AclCache {
            generation,
            entries: Vec::new(),
        }
    }

    /// The cached answer, if still fresh under `generation`.
    pub fn get(
        &mut self,
        generation: u64,
        access: Access,
        topic: &str,
        now: Instant,
        ttl: Duration,
    ) -> Option<AclVerdict> {
        self.renew(generation);
        let i = self
            .entries
            .iter()
            .position(|e| e.access == access && &*e.topic == topic)?;
        if now.saturating_duration_since(self.entries[i].at) >= ttl {
            self.entries.remove(i);
            return None;
        }
        Some(self.entries[i].verdict)
    }

    /// Remember an answer given under `generation`; the oldest goes when full.
    pub fn put(
        &mut self,
        generation: u64,
        access: Access,
        topic: &str,
        verdict: AclVerdict,
        now: Instant,
        max_size: usize,
    ) {
        if generation < self.generation {
            // Answered before the chain changed (a slow backend): not for the new chain.
            return;
        }
        self.renew(generation);
        self.entries
            .retain(|e| !(e.access == access && &*e.topic == topic));
        while self.entries.len() >= max_size.max(1) {
            self.entries.remove(0);
        }
        self.entries.push(Entry {
            access,
            topic: topic.into(),
            verdict,
            at: now,
        });
    }

    /// Entries answered under an older chain are worthless.
    fn renew(&mut self, generation: u64) {
        if generation != self.generation {
            self.entries.clear();
            self.generation = generation;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn hit_miss_by_access_and_topic_and_expiry() {
        let t0 = Instant::now();
        let mut c = AclCache::new(1);
        c.put(1, Access::Publish, "a/b", AclVerdict::Deny, t0, 32);
        assert_eq!(
            c.get(1, Access::Publish, "a/b", t0, TTL),
            Some(AclVerdict::Deny)
        );
        assert_eq!(c.get(1, Access::Subscribe, "a/b", t0, TTL), None);
        assert_eq!(c.get(1, Access::Publish, "a/c", t0, TTL), None);
        assert_eq!(c.get(1, Access::Publish, "a/b", t0 + TTL, TTL), None);
        assert_eq!(c.len(), 0, "an expired entry is dropped");
    }

    #[test]
    fn the_oldest_goes_when_full_and_a_new_answer_replaces_the_old() {
        let t0 = Instant::now();
        let mut c = AclCache::new(1);
        for i in 0..4 {
            c.put(
                1,
                Access::Publish,
                &format!("t/{i}"),
                AclVerdict::Allow,
                t0,
                3,
            );
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(1, Access::Publish, "t/0", t0, TTL), None);
        c.put(1, Access::Publish, "t/3", AclVerdict::Deny, t0, 3);
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.get(1, Access::Publish, "t/3", t0, TTL),
            Some(AclVerdict::Deny)
        );
    }

    #[test]
    fn a_new_generation_empties_it_and_late_old_answers_stay_out() {
        let t0 = Instant::now();
        let mut c = AclCache::new(1);
        c.put(1, Access::Publish, "x", AclVerdict::Allow, t0, 32);
        assert_eq!(c.get(2, Access::Publish, "x", t0, TTL), None);
        c.put(1, Access::Publish, "x", AclVerdict::Allow, t0, 32);
        assert_eq!(c.get(2, Access::Publish, "x", t0, TTL), None);
        assert_eq!(c.len(), 0);
    }
}
