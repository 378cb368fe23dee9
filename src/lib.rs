//! Quay: a durable, clustered MQTT broker.
//!
//! Data flows socket → `codec` → `connection` (driver) → `session` (sans-IO state
//! machine) → `broker` (routing, retained, registry) → `quay_storage` (RocksDB, group
//! commit) → back out to subscribers' connections. See docs/ARCHITECTURE.md.

pub mod acl;
pub mod auth;
pub mod banned;
pub mod bridge;
pub mod broker;
pub(crate) mod channel;
pub mod cluster;
pub mod codec;
/// The config loader is its own crate (`emqx_ctl` uses it without the broker).
pub use quay_config as config;
mod connection;
pub mod ctl;
mod hibernate;
pub mod hooks;
pub mod listener;
pub mod logging;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod mountpoint;
pub mod node;
pub mod plugins;
pub mod query;
pub mod router;
pub mod session;
/// The model test's access to the broker (`tests/model/`); not an API.
#[doc(hidden)]
pub mod sim;
pub mod sys;
pub mod topic;
pub mod trace;
pub(crate) mod transport;
