//! Every plugin this broker knows, in the order `emqx_ctl plugins list` shows them.
//! A new plugin adds one line here.

use super::Spec;

pub fn all() -> Vec<Spec> {
    vec![
        crate::auth::builtin::clientid_spec(),
        crate::auth::http::spec(),
        crate::auth::jwt::spec(),
        crate::auth::builtin::username_spec(),
        crate::auth::redis::spec(),
        crate::auth::pgsql::spec(),
        crate::auth::mysql::spec(),
        crate::auth::ldap::spec(),
        crate::auth::mongo::spec(),
        Spec {
            name: crate::bridge::HOOK_NAME,
            description: "EMQ X Bridge to MQTT brokers",
            start: crate::bridge::plugin_start,
        },
    ]
}
