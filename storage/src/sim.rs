//! An in-memory backend that models durability, for deterministic simulation.
//!
//! Every write is applied at once to the visible state (what reads see, as in
//! RocksDB) and appended to the unsynced log; a synced write or `sync_wal` makes the
//! whole log durable. `crash` models a power failure between two batches: the
//! unsynced log is lost, except a prefix of it that the caller chooses (a WAL reaches
//! the disk in order, and a batch is atomic), and everything in memory is gone.
//! Nothing here is used by the broker in production; it exists so that the writer's
//! real logic (`WriterCore`) can run under a seeded simulation (`tests/model/`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Bound;

use crate::backend::Backend;
use crate::store::Result;

type Cf = BTreeMap<Vec<u8>, Vec<u8>>;
type Tables = BTreeMap<&'static str, Cf>;

#[derive(Debug, Clone)]
enum Change {
    Put(&'static str, Vec<u8>, Vec<u8>),
    Delete(&'static str, Vec<u8>),
    DeleteRange(&'static str, Vec<u8>, Vec<u8>),
}

/// A batch for `SimBackend`.
#[derive(Debug, Default)]
pub struct SimBatch(Vec<Change>);

#[derive(Debug, Default)]
struct State {
    visible: Tables,
    durable: Tables,
    /// Batches written since the last sync, oldest first.
    unsynced: Vec<Vec<Change>>,
    writes: u64,
    syncs: u64,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct SimBackend {
    state: RefCell<State>,
}

fn apply(tables: &mut Tables, changes: &[Change]) {
    for change in changes {
        match change {
            Change::Put(cf, k, v) => {
                tables.entry(cf).or_default().insert(k.clone(), v.clone());
            }
            Change::Delete(cf, k) => {
                if let Some(t) = tables.get_mut(cf) {
                    t.remove(k);
                }
            }
            Change::DeleteRange(cf, from, to) => {
                if let Some(t) = tables.get_mut(cf) {
                    let doomed: Vec<Vec<u8>> = t
                        .range::<[u8], _>((Bound::Included(&from[..]), Bound::Excluded(&to[..])))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        t.remove(&k);
                    }
                }
            }
        }
    }
}

impl SimBackend {
    pub fn new() -> SimBackend {
        SimBackend::default()
    }

    /// Batches written since the last sync.
    pub fn unsynced_batches(&self) -> usize {
        self.state.borrow().unsynced.len()
    }

    /// (batches written, syncs) so far.
    pub fn counts(&self) -> (u64, u64) {
        let s = self.state.borrow();
        (s.writes, s.syncs)
    }

    /// The store after a power failure now: what was synced, plus the first `keep`
    /// unsynced batches (at most all of them). Nothing else survives.
    pub fn crash(self, keep: usize) -> SimBackend {
        let mut s = self.state.into_inner();
        let keep = keep.min(s.unsynced.len());
        for changes in s.unsynced.drain(..keep) {
            apply(&mut s.durable, &changes);
        }
        SimBackend {
            state: RefCell::new(State {
                visible: s.durable.clone(),
                durable: s.durable,
                unsynced: Vec::new(),
                writes: s.writes,
                syncs: s.syncs,
            }),
        }
    }

    /// Every key of `cf` as reads see it now (for checks and traces).
    pub fn dump(&self, cf: &'static str) -> Vec<(Vec<u8>, Vec<u8>)> {
        let s = self.state.borrow();
        s.visible
            .get(cf)
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

impl Backend for SimBackend {
    type Batch = SimBatch;

    fn get<R>(
        &self,
        cf: &'static str,
        key: &[u8],
        read: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<Option<R>> {
        let s = self.state.borrow();
        match s.visible.get(cf).and_then(|t| t.get(key)) {
            Some(v) => read(v).map(Some),
            None => Ok(None),
        }
    }

    fn multi_get(&self, cf: &'static str, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let s = self.state.borrow();
        let t = s.visible.get(cf);
        Ok(keys
            .iter()
            .map(|k| t.and_then(|t| t.get(*k)).cloned())
            .collect())
    }

    fn scan(
        &self,
        cf: &'static str,
        from: &[u8],
        upper: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let s = self.state.borrow();
        let Some(t) = s.visible.get(cf) else {
            return Ok(());
        };
        let upper = match upper {
            Some(u) => Bound::Excluded(u),
            None => Bound::Unbounded,
        };
        for (k, v) in t.range::<[u8], _>((Bound::Included(from), upper)) {
            if !visit(k, v)? {
                break;
            }
        }
        Ok(())
    }

    fn last_at_or_before<R>(
        &self,
        cf: &'static str,
        at: Option<&[u8]>,
        read: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<Option<R>> {
        let s = self.state.borrow();
        let Some(t) = s.visible.get(cf) else {
            return Ok(None);
        };
        let last = match at {
            Some(at) => t
                .range::<[u8], _>((Bound::Unbounded, Bound::Included(at)))
                .next_back(),
            None => t.iter().next_back(),
        };
        match last {
            Some((k, _)) => read(k).map(Some),
            None => Ok(None),
        }
    }

    fn put(&self, batch: &mut SimBatch, cf: &'static str, key: &[u8], value: &[u8]) -> Result<()> {
        batch.0.push(Change::Put(cf, key.to_vec(), value.to_vec()));
        Ok(())
    }

    fn delete(&self, batch: &mut SimBatch, cf: &'static str, key: &[u8]) -> Result<()> {
        batch.0.push(Change::Delete(cf, key.to_vec()));
        Ok(())
    }

    fn delete_range(
        &self,
        batch: &mut SimBatch,
        cf: &'static str,
        from: &[u8],
        to: &[u8],
    ) -> Result<()> {
        batch
            .0
            .push(Change::DeleteRange(cf, from.to_vec(), to.to_vec()));
        Ok(())
    }

    fn batch_is_empty(batch: &SimBatch) -> bool {
        batch.0.is_empty()
    }

    fn write(&self, batch: SimBatch, sync: bool) -> Result<()> {
        let mut s = self.state.borrow_mut();
        apply(&mut s.visible, &batch.0);
        s.unsynced.push(batch.0);
        s.writes += 1;
        if sync {
            sync_all(&mut s);
        }
        Ok(())
    }

    fn sync_wal(&self) -> Result<()> {
        sync_all(&mut self.state.borrow_mut());
        Ok(())
    }
}

fn sync_all(s: &mut State) {
    let unsynced = std::mem::take(&mut s.unsynced);
    for changes in &unsynced {
        apply(&mut s.durable, changes);
    }
    s.syncs += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(b: &SimBackend, key: &[u8]) -> Option<Vec<u8>> {
        b.get("t", key, |v| Ok(v.to_vec())).unwrap()
    }

    #[test]
    fn a_crash_keeps_what_was_synced_and_the_chosen_prefix_of_the_rest() {
        let b = SimBackend::new();
        let mut batch = SimBatch::default();
        b.put(&mut batch, "t", b"a", b"1").unwrap();
        b.write(batch, true).unwrap();
        for (k, v) in [(b"b", b"2"), (b"c", b"3")] {
            let mut batch = SimBatch::default();
            b.put(&mut batch, "t", k, v).unwrap();
            b.write(batch, false).unwrap();
        }
        assert_eq!(
            get(&b, b"c"),
            Some(b"3".to_vec()),
            "reads see unsynced writes"
        );
        assert_eq!(b.unsynced_batches(), 2);
        let after = b.crash(1);
        assert_eq!(get(&after, b"a"), Some(b"1".to_vec()));
        assert_eq!(get(&after, b"b"), Some(b"2".to_vec()));
        assert_eq!(get(&after, b"c"), None);
        let after = after.crash(0);
        assert_eq!(
            get(&after, b"b"),
            Some(b"2".to_vec()),
            "what survived is durable"
        );
    }

    #[test]
    fn sync_wal_makes_earlier_writes_durable_and_ranges_delete() {
        let b = SimBackend::new();
        let mut batch = SimBatch::default();
        for k in [b"a1", b"a2", b"b1"] {
            b.put(&mut batch, "t", k, b"").unwrap();
        }
        b.write(batch, false).unwrap();
        let mut batch = SimBatch::default();
        b.delete_range(&mut batch, "t", b"a", b"b").unwrap();
        b.write(batch, false).unwrap();
        b.sync_wal().unwrap();
        let after = b.crash(0);
        let mut keys = Vec::new();
        after
            .scan("t", b"", None, |k, _| {
                keys.push(k.to_vec());
                Ok(true)
            })
            .unwrap();
        assert_eq!(keys, vec![b"b1".to_vec()]);
        let last = after
            .last_at_or_before("t", Some(b"b0"), |k| Ok(k.to_vec()))
            .unwrap();
        assert_eq!(last, None);
        let last = after
            .last_at_or_before("t", Some(b"b2"), |k| Ok(k.to_vec()))
            .unwrap();
        assert_eq!(last, Some(b"b1".to_vec()));
    }
}
