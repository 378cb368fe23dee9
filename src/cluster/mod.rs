//! Node-to-node transport: what one Quay node says to another, and how it knows
//! the other is one of its own.
//!
//! `frames` is the wire vocabulary (prost messages, length-prefixed); `link` is one
//! authenticated connection (both sides prove they hold `node.cookie`, which never
//! crosses the wire); `server` accepts links on `rpc.tcp_server_port` and serves what
//! they carry. The RPC bridge (`crate::bridge::rpc`) is the first user; the cluster
//! (routes, session registry, message forwarding) adds its frames here.

pub mod frames;
pub mod link;
pub mod server;
