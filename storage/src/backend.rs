//! The key-value interface under the writer and the reads: RocksDB in production,
//! `sim::SimBackend` in the model test.
//!
//! It is as small as what the store needs: point reads, ordered scans with an upper
//! bound, one seek backwards, and atomic batches written with or without a sync.
//! Methods are generic (closures over borrowed slices, an associated batch type), so
//! the RocksDB path compiles to the same calls as before the trait existed: pinned
//! reads, raw iterators, one `WriteBatch` per group commit. This trait must never
//! grow anything MQTT-shaped; that belongs to `writer.rs` and `read.rs`.

use std::sync::Arc;

use rocksdb::{ReadOptions, WriteBatch, WriteOptions, DB};

use crate::store::{Result, StoreError};

/// A store of column families of ordered byte keys.
pub trait Backend {
    /// Changes gathered for one atomic write.
    type Batch: Default;

    /// The value under `key` in `cf`, handed to `read` without a copy.
    fn get<R>(
        &self,
        cf: &'static str,
        key: &[u8],
        read: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<Option<R>>;

    /// Values under `keys`, in order (`None` where absent).
    fn multi_get(&self, cf: &'static str, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Visit keys `>= from` and `< upper` (to the end when `None`), in order, until
    /// `visit` returns false.
    fn scan(
        &self,
        cf: &'static str,
        from: &[u8],
        upper: Option<&[u8]>,
        visit: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()>;

    /// The last key `<= at` (the last key of `cf` when `None`), handed to `read`.
    fn last_at_or_before<R>(
        &self,
        cf: &'static str,
        at: Option<&[u8]>,
        read: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<Option<R>>;

    fn put(
        &self,
        batch: &mut Self::Batch,
        cf: &'static str,
        key: &[u8],
        value: &[u8],
    ) -> Result<()>;
    fn delete(&self, batch: &mut Self::Batch, cf: &'static str, key: &[u8]) -> Result<()>;
    /// Delete keys `>= from` and `< to`.
    fn delete_range(
        &self,
        batch: &mut Self::Batch,
        cf: &'static str,
        from: &[u8],
        to: &[u8],
    ) -> Result<()>;
    fn batch_is_empty(batch: &Self::Batch) -> bool;

    /// Apply `batch` atomically; with `sync`, it and everything written before it are
    /// durable when this returns.
    fn write(&self, batch: Self::Batch, sync: bool) -> Result<()>;

    /// Make every earlier write durable.
    fn sync_wal(&self) -> Result<()>;
}

/// RocksDB, as opened by `Store::open`.
#[derive(Clone)]
pub struct RocksBackend {
    db: Arc<DB>,
}

impl RocksBackend {
    pub(crate) fn new(db: Arc<DB>) -> RocksBackend {
        RocksBackend { db }
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily> {
        self.db.cf_handle(name).ok_or(StoreError::Closed)
    }
}

impl Backend for RocksBackend {
    type Batch = WriteBatch;

    fn get<R>(
        &self,
        cf: &'static str,
        key: &[u8],
        read: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<Option<R>> {
        match self.db.get_pinned_cf(self.cf(cf)?, key)? {
            Some(value) => read(&value).map(Some),
            None => Ok(None),
        }
    }

    fn multi_get(&self, cf: &'static str, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        let cf = self.cf(cf)?;
        self.db
            .multi_get_cf(keys.iter().map(|k| (cf, *k)))
            .into_iter()
            .map(|r| r.map_err(StoreError::from))
            .collect()
    }

    fn scan(
        &self,
        cf: &'static str,
        from: &[u8],
        upper: Option<&[u8]>,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        let mut read = ReadOptions::default();
        if let Some(upper) = upper {
            read.set_iterate_upper_bound(upper);
        }
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(cf)?, read);
        iter.seek(from);
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if !visit(key, value)? {
                return Ok(());
            }
            iter.next();
        }
        iter.status()?;
        Ok(())
    }

    fn last_at_or_before<R>(
        &self,
        cf: &'static str,
        at: Option<&[u8]>,
        read: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<Option<R>> {
        let mut iter = self.db.raw_iterator_cf(self.cf(cf)?);
        match at {
            Some(at) => iter.seek_for_prev(at),
            None => iter.seek_to_last(),
        }
        let found = match iter.key() {
            Some(key) => Some(read(key)?),
            None => None,
        };
        iter.status()?;
        Ok(found)
    }

    fn put(
        &self,
        batch: &mut WriteBatch,
        cf: &'static str,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        batch.put_cf(self.cf(cf)?, key, value);
        Ok(())
    }

    fn delete(&self, batch: &mut WriteBatch, cf: &'static str, key: &[u8]) -> Result<()> {
        batch.delete_cf(self.cf(cf)?, key);
        Ok(())
    }

    fn delete_range(
        &self,
        batch: &mut WriteBatch,
        cf: &'static str,
        from: &[u8],
        to: &[u8],
    ) -> Result<()> {
        batch.delete_range_cf(self.cf(cf)?, from, to);
        Ok(())
    }

    fn batch_is_empty(batch: &WriteBatch) -> bool {
        batch.is_empty()
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        Ok(self.db.write_opt(batch, &opts)?)
    }

    fn sync_wal(&self) -> Result<()> {
        Ok(self.db.flush_wal(true)?)
    }
}

/// What a read runs over: RocksDB in production, the model test's simulated disk
/// (`sim_store`). Reads only: a batch written through it fails. One branch per call
/// (a scan or a seek, not per key), and nothing on the writer's path.
#[derive(Clone, Copy)]
pub enum ReadDb<'a> {
    Rocks(&'a RocksBackend),
    Sim(&'a crate::sim::SimBackend),
}

impl Backend for ReadDb<'_> {
    type Batch = ();

    fn get<R>(
        &self,
        cf: &'static str,
        key: &[u8],
        read: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<Option<R>> {
        match self {
            ReadDb::Rocks(db) => db.get(cf, key, read),
            ReadDb::Sim(db) => db.get(cf, key, read),
        }
    }

    fn multi_get(&self, cf: &'static str, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        match self {
            ReadDb::Rocks(db) => db.multi_get(cf, keys),
            ReadDb::Sim(db) => db.multi_get(cf, keys),
        }
    }

    fn scan(
        &self,
        cf: &'static str,
        from: &[u8],
        upper: Option<&[u8]>,
        visit: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<()> {
        match self {
            ReadDb::Rocks(db) => db.scan(cf, from, upper, visit),
            ReadDb::Sim(db) => db.scan(cf, from, upper, visit),
        }
    }

    fn last_at_or_before<R>(
        &self,
        cf: &'static str,
        at: Option<&[u8]>,
        read: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<Option<R>> {
        match self {
            ReadDb::Rocks(db) => db.last_at_or_before(cf, at, read),
            ReadDb::Sim(db) => db.last_at_or_before(cf, at, read),
        }
    }

    fn put(&self, _: &mut (), _: &'static str, _: &[u8], _: &[u8]) -> Result<()> {
        Err(read_only())
    }

    fn delete(&self, _: &mut (), _: &'static str, _: &[u8]) -> Result<()> {
        Err(read_only())
    }

    fn delete_range(&self, _: &mut (), _: &'static str, _: &[u8], _: &[u8]) -> Result<()> {
        Err(read_only())
    }

    fn batch_is_empty(_: &()) -> bool {
        true
    }

    fn write(&self, _: (), _: bool) -> Result<()> {
        Err(read_only())
    }

    fn sync_wal(&self) -> Result<()> {
        Err(read_only())
    }
}

fn read_only() -> StoreError {
    StoreError::Write("a read-only view of the store cannot write".into())
}
