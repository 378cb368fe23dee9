//! Listeners: accept connections and hand each to a connection task.

pub mod ceiling;
mod refuse;
pub mod tcp;
