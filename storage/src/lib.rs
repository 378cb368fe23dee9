//! Quay's durable store.
//!
//! RocksDB column families behind a typed API: `keys` owns every on-disk key,
//! `records` every value, `store` opens the database and serves reads, and `writer` is
//! the single group-commit writer through which every change goes. Nothing in this
//! crate knows MQTT beyond the shape of a stored message.

pub mod keys;
pub mod records;
mod store;
mod writer;

pub use records::{
    DelayedWill, EntryHead, QueueEntry, RecordError, SessionRecord, StoredMessage,
    SubscriptionRecord,
};
pub use store::{Result, Store, StoreConfig, StoreError};
pub use writer::{ClientId, Completion, Enqueued, Op, WriterHandle};

#[cfg(test)]
mod tests;
