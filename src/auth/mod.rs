//! Authentication backends (EMQX 4's `emqx_auth_*` plugins) and what they share:
//! password hashes ([`hash`]) and query placeholders ([`placeholder`]). Each backend
//! is a plugin (`crate::plugins`) that registers `client.authenticate` (and, where
//! EMQX has one, `client.check_acl`) hooks under its plugin name.

pub mod builtin;
mod credentials;
pub mod hash;
pub mod http;
pub mod jwt;
pub mod placeholder;
