//! Channel tests in quinn-proto's style: real channels over a real broker (RocksDB in
//! a temp dir), no sockets, a simulated clock, and in-memory clients that follow the
//! spec and check every packet they get.
//!
//! - `harness`: the broker, the clock, opening channels (`accept::open`) and the
//!   moves of a driver turn.
//! - `client`: the spec's client and the checks that need only its state.
//! - `world`: the reference of what the broker must do, the steps and the pump.
//! - `props`: randomized steps (proptest), bounded in steps and time.
//! - `rules`: one deterministic test per rule.

mod client;
mod harness;
mod props;
mod rules;
mod world;
