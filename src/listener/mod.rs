//! Listeners: accept connections and hand each to a connection task.

pub mod admission;
pub mod control;
pub mod proxy;
pub mod rate;
pub mod tcp;
