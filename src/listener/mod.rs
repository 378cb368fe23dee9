//! Listeners: accept connections and hand each to a connection task.

pub mod admission;
pub mod ceiling;
pub mod control;
pub mod proxy;
pub mod rate;
mod refuse;
pub mod tcp;
