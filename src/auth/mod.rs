//! Authentication backends (EMQX 4's `emqx_auth_*` plugins) and what they share:
//! password hashes ([`hash`]), query placeholders ([`placeholder`]), reading a
//! backend's settings ([`settings`]), what a failing backend answers and how it is
//! logged ([`outage`]), stored passwords ([`stored`]), SQL statements ([`sql`]) and
//! database ACL rows ([`db_acl`]), and SCRAM-SHA-256 for MQTT 5 enhanced authentication
//! against the built-in user store ([`scram`]). Each backend is a plugin (`crate::plugins`) that
//! registers `client.authenticate` (and, where EMQX has one, `client.check_acl`) hooks
//! under its plugin name.

pub mod builtin;
mod builtin_scram;
mod credentials;
pub mod db_acl;
pub mod hash;
pub mod http;
pub mod jwt;
pub mod ldap;
pub mod mongo;
pub mod mysql;
pub mod outage;
pub mod pgsql;
pub mod placeholder;
pub mod redis;
pub mod scram;
pub mod settings;
pub mod sql;
pub mod sql_backend;
pub mod stored;
