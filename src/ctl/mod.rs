//! The node's side of the control channel behind `emqx_ctl` and `emqx stop|ping`.
//!
//! The wire format and the client live in the `quay-ctl` crate (which `emqx_ctl`
//! links without the broker); this module serves it and answers commands by
//! formatting what `crate::query` returns.

mod commands;
mod listeners;
mod plugins;
pub mod server;

pub use commands::run_command;
pub use quay_ctl::{socket_path, Reply, VERSION};
