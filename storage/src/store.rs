//! The RocksDB store: opening, column families, and direct reads.
//!
//! Writes never happen here: they go through the single group-commit writer
//! (`writer.rs`), which owns reference counts and queue sequence numbers. Reads are
//! direct and may run on any thread.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, Direction, IteratorMode, Options,
    ReadOptions, DB,
};
use thiserror::Error;

use crate::keys::{self, KeyError};
use crate::records::{
    DelayedWill, QueueEntry, RecordError, SessionRecord, StoredMessage, SubscriptionRecord,
};
use crate::writer::{self, WriterConfig, WriterHandle};

/// On-disk format written in `meta/format`; a store with another value is refused.
const FORMAT_VERSION: &[u8] = b"quay-1";

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("key: {0}")]
    Key(#[from] KeyError),
    #[error("record: {0}")]
    Record(#[from] RecordError),
    #[error("data dir {path} holds format {found:?}, this build reads {expected:?}")]
    Format {
        path: String,
        found: String,
        expected: String,
    },
    #[error("store writer has stopped")]
    Closed,
    #[error("write failed: {0}")]
    Write(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// fsync every batch before completing its waiters (durable acks).
    pub fsync: bool,
    /// How long the writer may wait for more requests after the first of a batch.
    pub batch_window: std::time::Duration,
    /// Most requests in one batch.
    pub batch_max: usize,
    pub block_cache_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            fsync: true,
            batch_window: std::time::Duration::from_millis(1),
            batch_max: 4096,
            block_cache_bytes: 64 << 20,
        }
    }
}

/// Shared handle: cheap to clone. Dropping the last clone stops the writer and
/// RocksDB's background work, so no RocksDB thread outlives the store (a thread still
/// compacting while the process exits aborts it).
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<DB>,
    next_msg_id: Arc<AtomicU64>,
    writer: WriterHandle,
    _close_on_drop: Arc<CloseOnDrop>,
}

struct CloseOnDrop {
    db: Arc<DB>,
    writer: WriterHandle,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.writer.stop();
        self.db.cancel_all_background_work(true);
    }
}

impl Store {
    pub fn open(path: &Path, config: StoreConfig) -> Result<Store> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Bound open files well below the process limit shared with client sockets.
        opts.set_max_open_files(512);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(256 << 20);
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let cfs = keys::ALL_CFS.iter().map(|name| {
            let mut cf_opts = Options::default();
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            if *name == keys::CF_REFS {
                // Most lookups miss (single-reference messages have no key).
                table.set_bloom_filter(10.0, false);
            }
            cf_opts.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(*name, cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        let meta = db.cf_handle(keys::CF_META).ok_or(StoreError::Closed)?;
        match db.get_cf(meta, keys::META_FORMAT)? {
            None => db.put_cf(meta, keys::META_FORMAT, FORMAT_VERSION)?,
            Some(found) if found == FORMAT_VERSION => {}
            Some(found) => {
                return Err(StoreError::Format {
                    path: path.display().to_string(),
                    found: String::from_utf8_lossy(&found).into_owned(),
                    expected: String::from_utf8_lossy(FORMAT_VERSION).into_owned(),
                })
            }
        }
        let db = Arc::new(db);
        let next_msg_id = Arc::new(AtomicU64::new(last_msg_id(&db)? + 1));
        let writer = writer::spawn(
            db.clone(),
            WriterConfig {
                fsync: config.fsync,
                batch_window: config.batch_window,
                batch_max: config.batch_max.max(1),
            },
        );
        Ok(Store {
            _close_on_drop: Arc::new(CloseOnDrop {
                db: db.clone(),
                writer: writer.clone(),
            }),
            db,
            next_msg_id,
            writer,
        })
    }

    /// Stop the writer and RocksDB's background flushes and compactions, waiting for
    /// them. For process exit: no RocksDB thread may run while the process tears down.
    pub fn shutdown(&self) {
        self.writer.stop();
        self.db.cancel_all_background_work(true);
    }

    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }

    /// A fresh, never reused message id.
    pub fn next_msg_id(&self) -> u64 {
        self.next_msg_id.fetch_add(1, Ordering::Relaxed)
    }

    fn cf(&self, name: &'static str) -> Result<&rocksdb::ColumnFamily> {
        cf(&self.db, name)
    }

    pub fn sessions(&self) -> Result<Vec<(String, SessionRecord)>> {
        let cf = self.cf(keys::CF_SESSIONS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            let client = String::from_utf8(key.to_vec()).map_err(|_| KeyError::Prefix {
                cf: keys::CF_SESSIONS,
            })?;
            out.push((client, SessionRecord::decode(&value)?));
        }
        Ok(out)
    }

    pub fn session(&self, client: &str) -> Result<Option<SessionRecord>> {
        let cf = self.cf(keys::CF_SESSIONS)?;
        match self.db.get_cf(cf, client.as_bytes())? {
            Some(v) => Ok(Some(SessionRecord::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every stored subscription: (client, filter, options).
    pub fn subscriptions(&self) -> Result<Vec<(String, String, SubscriptionRecord)>> {
        let cf = self.cf(keys::CF_SUBS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            let (client, filter) = keys::split_client_key(keys::CF_SUBS, &key)?;
            let filter =
                std::str::from_utf8(filter).map_err(|_| KeyError::Prefix { cf: keys::CF_SUBS })?;
            out.push((
                client.to_owned(),
                filter.to_owned(),
                SubscriptionRecord::decode(&value)?,
            ));
        }
        Ok(out)
    }

    /// Up to `limit` queue entries of `client` with seq >= `from_seq`, in order.
    pub fn queue_range(
        &self,
        client: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, QueueEntry)>> {
        let cf = self.cf(keys::CF_QUEUE)?;
        let start = keys::queue_key(client, from_seq)?;
        let mut read = ReadOptions::default();
        if let Some(end) = keys::prefix_end(&keys::client_prefix(client)?) {
            read.set_iterate_upper_bound(end);
        }
        let mut out = Vec::new();
        let iter =
            self.db
                .iterator_cf_opt(cf, read, IteratorMode::From(&start, Direction::Forward));
        for item in iter.take(limit) {
            let (key, value) = item?;
            out.push((keys::decode_queue_seq(&key)?, QueueEntry::decode(&value)?));
        }
        Ok(out)
    }

    /// One past the highest seq in `client`'s queue (0 when empty): one seek.
    pub fn next_queue_seq(&self, client: &str) -> Result<u64> {
        next_queue_seq(&self.db, client)
    }

    /// Messages by id, `None` where a message is gone.
    pub fn messages(&self, ids: &[u64]) -> Result<Vec<Option<StoredMessage>>> {
        let cf = self.cf(keys::CF_MSGS)?;
        let keys: Vec<_> = ids.iter().map(|id| (cf, keys::msg_key(*id))).collect();
        self.db
            .multi_get_cf(keys)
            .into_iter()
            .map(|r| match r? {
                Some(v) => Ok(Some(StoredMessage::decode(&v)?)),
                None => Ok(None),
            })
            .collect()
    }

    /// QoS 2 packet ids received from `client` and awaiting PUBREL.
    pub fn awaiting_rel(&self, client: &str) -> Result<Vec<u16>> {
        let cf = self.cf(keys::CF_AWAITING_REL)?;
        let prefix = keys::client_prefix(client)?;
        let mut read = ReadOptions::default();
        if let Some(end) = keys::prefix_end(&prefix) {
            read.set_iterate_upper_bound(end);
        }
        let mut out = Vec::new();
        let iter =
            self.db
                .iterator_cf_opt(cf, read, IteratorMode::From(&prefix, Direction::Forward));
        for item in iter {
            let (key, _) = item?;
            out.push(keys::decode_awaiting_rel(&key)?);
        }
        Ok(out)
    }

    /// Every stored delayed will: (client, will).
    pub fn wills(&self) -> Result<Vec<(String, DelayedWill)>> {
        let cf = self.cf(keys::CF_WILLS)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            let client = String::from_utf8(key.to_vec())
                .map_err(|_| KeyError::Prefix { cf: keys::CF_WILLS })?;
            out.push((client, DelayedWill::decode(&value)?));
        }
        Ok(out)
    }

    /// Topics of every retained message (keys only: payloads stay on disk).
    pub fn retained_topics(&self) -> Result<Vec<Bytes>> {
        let cf = self.cf(keys::CF_RETAINED)?;
        let mut out = Vec::new();
        let mut iter = self.db.raw_iterator_cf(cf);
        iter.seek_to_first();
        while let Some(key) = iter.key() {
            out.push(Bytes::copy_from_slice(key));
            iter.next();
        }
        iter.status()?;
        Ok(out)
    }

    pub fn retained(&self, topic: &[u8]) -> Result<Option<StoredMessage>> {
        let cf = self.cf(keys::CF_RETAINED)?;
        match self.db.get_cf(cf, topic)? {
            Some(v) => Ok(Some(StoredMessage::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Retained messages whose expiry is at or before `now_ms` (a background sweep).
    pub fn expired_retained(&self, now_ms: u64) -> Result<Vec<Bytes>> {
        let cf = self.cf(keys::CF_RETAINED)?;
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            if StoredMessage::decode(&value)?.is_expired(now_ms) {
                out.push(Bytes::copy_from_slice(&key));
            }
        }
        Ok(out)
    }

    /// Flush memtables to SST files, so the next open has no WAL to replay.
    pub fn flush(&self) -> Result<()> {
        for name in keys::ALL_CFS {
            self.db.flush_cf(self.cf(name)?)?;
        }
        Ok(())
    }

    /// Flush memtables and compact every column family so deleted data leaves the disk.
    pub fn compact(&self) -> Result<()> {
        for name in keys::ALL_CFS {
            let cf = self.cf(name)?;
            self.db.flush_cf(cf)?;
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Approximate bytes of live data (SST files + memtables), for metrics and tests.
    pub fn live_data_bytes(&self) -> u64 {
        keys::ALL_CFS
            .iter()
            .filter_map(|name| {
                let cf = self.db.cf_handle(name)?;
                let sst = self
                    .db
                    .property_int_value_cf(cf, "rocksdb.live-sst-files-size")
                    .ok()??;
                let mem = self
                    .db
                    .property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")
                    .ok()??;
                Some(sst + mem)
            })
            .sum()
    }
}

pub(crate) fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name).ok_or(StoreError::Closed)
}

pub(crate) fn next_queue_seq(db: &DB, client: &str) -> Result<u64> {
    let prefix = keys::client_prefix(client)?;
    let mut iter = db.raw_iterator_cf(cf(db, keys::CF_QUEUE)?);
    match keys::prefix_end(&prefix) {
        Some(end) => iter.seek_for_prev(end),
        None => iter.seek_to_last(),
    }
    let next = match iter.key() {
        Some(key) if key.starts_with(&prefix) => keys::decode_queue_seq(key)? + 1,
        _ => 0,
    };
    iter.status()?;
    Ok(next)
}

fn last_msg_id(db: &DB) -> Result<u64> {
    let cf = cf(db, keys::CF_MSGS)?;
    let mut iter = db.raw_iterator_cf(cf);
    iter.seek_to_last();
    let last = match iter.key() {
        Some(key) => keys::decode_msg_key(key)?,
        None => 0,
    };
    iter.status()?;
    Ok(last)
}
