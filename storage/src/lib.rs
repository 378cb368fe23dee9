//! Quay's durable store.
//!
//! RocksDB column families behind a typed API: `keys` owns every on-disk key,
//! `records` every value, `store` opens the database, `read` serves reads, `reader` runs them on a pool of threads for async callers, and `writer`
//! is the single group-commit writer through which every change goes. `backend` is
//! the key-value interface under `read` and `writer`: RocksDB in production, and
//! `sim::SimBackend` (an in-memory disk that loses unsynced writes in a simulated
//! crash) under the model test, where `sim_store::SimStore` steps the writer and the
//! reads of a `Store::simulated` by hand; `invariants` checks a store's references and keys. Nothing in this
//! crate knows MQTT beyond the shape of a stored message.

pub mod backend;
mod invariants;
pub mod keys;
pub mod read;
mod reader;
pub mod records;
pub mod segment;
pub mod sim;
mod sim_store;
mod store;
mod writer;

pub use invariants::check as check_invariants;
pub use reader::ReaderHandle;
pub use records::{
    BannedRecord, BridgeRecord, CredentialRecord, DelayedWill, EntryHead, QueueEntry, RecordError,
    ScramKeys, SessionRecord, StoredMessage, SubscriptionRecord,
};
pub use sim_store::SimStore;
pub use store::{Result, Store, StoreConfig, StoreError, READ_QUEUE_MAX};
pub use writer::{ClientId, Completion, Enqueued, Op, WriteRequest, WriterCore, WriterHandle};

#[cfg(test)]
mod reader_tests;
#[cfg(test)]
mod tests;
