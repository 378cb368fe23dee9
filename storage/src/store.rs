//! The RocksDB store: opening, column families, and direct reads.
//!
//! Reads are `read.rs`'s, over the RocksDB backend; async code reads through the
//! reader pool (`reader.rs`). Writes never happen here: they go through the single group-commit writer
//! (`writer.rs`), which owns reference counts and queue sequence numbers. Reads are
//! direct and may run on any thread.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, DB};
use thiserror::Error;

use crate::backend::{ReadDb, RocksBackend};
use crate::keys::{self, KeyError};
use crate::read;
use crate::reader::{self, ReaderConfig, ReaderHandle};
use crate::records::{
    CredentialRecord, DelayedWill, QueueEntry, RecordError, SessionRecord, StoredMessage,
    SubscriptionRecord,
};
use crate::sim::SimBackend;
use crate::sim_store::SimStore;
use crate::writer::{self, WriterConfig, WriterCore, WriterHandle};

/// Reads waiting for the reader pool at most. A connection has at most one queue page
/// and one subscription's retained lookup out at a time, so this is reached only by
/// tens of thousands of connections reading at once; beyond it a read is refused.
pub const READ_QUEUE_MAX: usize = 65_536;

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
    #[error("store reader queue is full")]
    Busy,
    #[error("read failed: {0}")]
    Read(String),
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
    /// Threads of the reader pool (`reader.rs`).
    pub read_threads: usize,
    /// Reads waiting at most; more are refused (`StoreError::Busy`).
    pub read_queue_max: usize,
    /// RocksDB's table files open at once: its share of the process's open-file limit,
    /// which client sockets share (the broker's `listener::ceiling`).
    pub max_open_files: i32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            fsync: true,
            batch_window: std::time::Duration::from_millis(1),
            batch_max: 4096,
            block_cache_bytes: 64 << 20,
            read_threads: 2,
            read_queue_max: READ_QUEUE_MAX,
            max_open_files: 512,
        }
    }
}

/// Options of the `queue` column family: each client's queue keeps an insert hint
/// in the memtable (`memtable_insert_with_hint_prefix_extractor`, not in RocksDB's C
/// API, hence the options string). A drain deletes its entries in seq order while
/// they are still in the memtable, so each tombstone lands right after the previous
/// one's entry; without a hint RocksDB searches the whole skiplist for each (a fifth
/// of a drain's CPU), with one it moves a step from the last insert. The prefix is
/// the key's first 10 bytes (client id length and up to 8 bytes of the id): clients
/// that share it share a hint, which costs them a longer step, never a wrong insert.
/// Hints live in the memtable's arena, so they count towards its size.
fn queue_cf_options() -> Result<Options> {
    Ok(Options::default().get_options_from_string(
        "memtable_insert_with_hint_prefix_extractor=rocksdb.CappedPrefix.10",
    )?)
}

/// Shared handle: cheap to clone. Dropping the last clone stops the writer and
/// RocksDB's background work, so no RocksDB thread outlives the store (a thread still
/// compacting while the process exits aborts it).
#[derive(Clone)]
pub struct Store {
    disk: Disk,
    next_msg_id: Arc<AtomicU64>,
    writer: WriterHandle,
    reader: ReaderHandle,
    _close_on_drop: Option<Arc<CloseOnDrop>>,
}

#[derive(Clone)]
enum Disk {
    Rocks {
        db: Arc<DB>,
        backend: RocksBackend,
    },
    /// The model test's store (`sim_store`): no thread, no RocksDB.
    Sim(Arc<SimStore>),
}

struct CloseOnDrop {
    db: Arc<DB>,
    writer: WriterHandle,
    reader: ReaderHandle,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.reader.stop();
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
        opts.set_max_open_files(config.max_open_files);
        opts.set_keep_log_file_num(4);
        opts.set_max_total_wal_size(256 << 20);
        let cache = Cache::new_lru_cache(config.block_cache_bytes);
        let cfs = keys::ALL_CFS.iter().map(|name| {
            let mut cf_opts = if *name == keys::CF_QUEUE {
                queue_cf_options()?
            } else {
                Options::default()
            };
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            if *name == keys::CF_REFS {
                // Most lookups miss (single-reference messages have no key).
                table.set_bloom_filter(10.0, false);
            }
            cf_opts.set_block_based_table_factory(&table);
            Ok(ColumnFamilyDescriptor::new(*name, cf_opts))
        });
        let cfs = cfs.collect::<Result<Vec<_>>>()?;
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
        let backend = RocksBackend::new(db.clone());
        let next_msg_id = Arc::new(AtomicU64::new(read::last_msg_id(&backend)? + 1));
        let writer = writer::spawn(
            backend.clone(),
            WriterConfig {
                fsync: config.fsync,
                batch_window: config.batch_window,
                batch_max: config.batch_max.max(1),
            },
        );
        let reader = reader::spawn(
            backend.clone(),
            ReaderConfig {
                threads: config.read_threads.max(1),
                queue_max: config.read_queue_max.max(1),
            },
        );
        Ok(Store {
            _close_on_drop: Some(Arc::new(CloseOnDrop {
                db: db.clone(),
                writer: writer.clone(),
                reader: reader.clone(),
            })),
            disk: Disk::Rocks { db, backend },
            next_msg_id,
            writer,
            reader,
        })
    }

    /// A store over the simulated disk `backend`, with fsync on, whose writer and
    /// reader pool the returned `SimStore` steps (see `sim_store`). For the model test.
    #[doc(hidden)]
    pub fn simulated(backend: SimBackend) -> Result<(Store, Arc<SimStore>)> {
        let next_msg_id = Arc::new(AtomicU64::new(read::last_msg_id(&backend)? + 1));
        let core = WriterCore::new(backend, true);
        let detached = core.detached_counts();
        let sim = Arc::new(SimStore::new(core));
        let store = Store {
            disk: Disk::Sim(sim.clone()),
            next_msg_id,
            writer: writer::simulated(sim.clone(), detached),
            reader: ReaderHandle::simulated(sim.clone()),
            _close_on_drop: None,
        };
        Ok((store, sim))
    }

    /// `read` over the disk, directly (not on the reader pool).
    fn read<T>(&self, read: impl FnOnce(&ReadDb<'_>) -> Result<T>) -> Result<T> {
        match &self.disk {
            Disk::Rocks { backend, .. } => read(&ReadDb::Rocks(backend)),
            Disk::Sim(sim) => sim
                .with_backend(|b| read(&ReadDb::Sim(b)))
                .unwrap_or(Err(StoreError::Closed)),
        }
    }

    /// RocksDB, unless this store is simulated.
    fn rocks(&self) -> Option<&Arc<DB>> {
        match &self.disk {
            Disk::Rocks { db, .. } => Some(db),
            Disk::Sim(_) => None,
        }
    }

    /// Stop the writer and RocksDB's background flushes and compactions, waiting for
    /// them. For process exit: no RocksDB thread may run while the process tears down.
    pub fn shutdown(&self) {
        self.reader.stop();
        self.writer.stop();
        if let Some(db) = self.rocks() {
            db.cancel_all_background_work(true);
        }
    }

    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }

    /// The reader pool: reads for async code (see `reader.rs`).
    pub fn reader(&self) -> &ReaderHandle {
        &self.reader
    }

    /// A fresh, never reused message id.
    pub fn next_msg_id(&self) -> u64 {
        self.next_msg_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn sessions(&self) -> Result<Vec<(String, SessionRecord)>> {
        self.read(|db| read::sessions(db))
    }

    pub fn session(&self, client: &str) -> Result<Option<SessionRecord>> {
        self.read(|db| read::session(db, client))
    }

    /// Every stored subscription: (client, filter, options).
    pub fn subscriptions(&self) -> Result<Vec<(String, String, SubscriptionRecord)>> {
        self.read(|db| read::subscriptions(db))
    }

    /// Up to `limit` queue entries of `client` with seq >= `from_seq`, in order.
    pub fn queue_range(
        &self,
        client: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<(u64, QueueEntry)>> {
        self.read(|db| read::queue_range(db, client, from_seq, limit))
    }

    /// One past the highest seq in `client`'s queue (0 when empty): one seek.
    pub fn next_queue_seq(&self, client: &str) -> Result<u64> {
        self.read(|db| read::next_queue_seq(db, client))
    }

    /// Messages by id, `None` where a message is gone.
    pub fn messages(&self, ids: &[u64]) -> Result<Vec<Option<StoredMessage>>> {
        self.read(|db| read::messages(db, ids))
    }

    /// QoS 2 packet ids received from `client` and awaiting PUBREL.
    pub fn awaiting_rel(&self, client: &str) -> Result<Vec<u16>> {
        self.read(|db| read::awaiting_rel(db, client))
    }

    /// Every stored delayed will: (client, will).
    pub fn wills(&self) -> Result<Vec<(String, DelayedWill)>> {
        self.read(|db| read::wills(db))
    }

    /// Topics of every retained message (keys only: payloads stay on disk).
    pub fn retained_topics(&self) -> Result<Vec<Bytes>> {
        self.read(|db| read::retained_topics(db))
    }

    pub fn retained(&self, topic: &[u8]) -> Result<Option<StoredMessage>> {
        self.read(|db| read::retained(db, topic))
    }

    /// Retained messages whose expiry is at or before `now_ms` (a background sweep).
    pub fn expired_retained(&self, now_ms: u64) -> Result<Vec<Bytes>> {
        self.read(|db| read::expired_retained(db, now_ms))
    }

    /// Every entry of a built-in credential table (read once when its plugin starts).
    pub fn credentials(&self, table: keys::AuthTable) -> Result<Vec<(String, CredentialRecord)>> {
        self.read(|db| read::credentials(db, table))
    }

    /// Every ban (read once at start).
    pub fn banned(&self) -> Result<Vec<(keys::BanKind, String, crate::records::BannedRecord)>> {
        self.read(|db| read::banned(db))
    }

    /// What `emqx_ctl bridges` changed, by bridge name (read when the plugin starts).
    pub fn bridges(&self) -> Result<Vec<(String, crate::records::BridgeRecord)>> {
        self.read(|db| read::bridges(db))
    }

    /// The store's invariants (see `invariants.rs`); a list of what is broken.
    pub fn check_invariants(&self) -> Result<Vec<String>> {
        self.read(|db| crate::invariants::check(db))
    }

    /// Flush memtables to SST files, so the next open has no WAL to replay.
    pub fn flush(&self) -> Result<()> {
        let Some(db) = self.rocks() else {
            return Ok(());
        };
        for name in keys::ALL_CFS {
            db.flush_cf(cf(db, name)?)?;
        }
        Ok(())
    }

    /// Flush memtables and compact every column family so deleted data leaves the disk.
    pub fn compact(&self) -> Result<()> {
        let Some(db) = self.rocks() else {
            return Ok(());
        };
        for name in keys::ALL_CFS {
            let cf = cf(db, name)?;
            db.flush_cf(cf)?;
            db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Whether RocksDB is stopping or slowing writes now (a write stall: too many
    /// memtables or level-0 files while compaction catches up).
    pub fn write_stalled(&self) -> bool {
        let Some(db) = self.rocks() else {
            return false;
        };
        let int = |name: &str| db.property_int_value(name).ok().flatten().unwrap_or(0);
        int("rocksdb.is-write-stopped") > 0 || int("rocksdb.actual-delayed-write-rate") > 0
    }

    /// Approximate bytes of live data (SST files + memtables), for metrics and tests.
    pub fn live_data_bytes(&self) -> u64 {
        let Some(db) = self.rocks() else {
            return 0;
        };
        keys::ALL_CFS
            .iter()
            .filter_map(|name| {
                let cf = db.cf_handle(name)?;
                let sst = db
                    .property_int_value_cf(cf, "rocksdb.live-sst-files-size")
                    .ok()??;
                let mem = db
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
