//! `emqx_auth_username` and `emqx_auth_clientid` (EMQX 4.0/4.1): the built-in user
//! stores. One plugin each, alike but for what names an entry (the MQTT username or
//! the client id), their settings prefix and their `emqx_ctl` command.
//!
//! A client whose name has no entry is not this plugin's to decide (ignore: the next
//! in the chain, then `allow_anonymous`); a wrong password is refused with
//! "bad user name or password" (v5 0x86, v3 rc 4). Entries come from the plugin's
//! config file (added at start unless the name is already stored, as EMQX 4) and
//! from `emqx_ctl users|clientid add|update|del`.

use std::collections::BTreeMap;
use std::sync::Arc;

use quay_config::{ConfigError, PluginKeys};
use quay_storage::keys::AuthTable;

use super::credentials::{ChangeError, Check, CredentialTable, Lookup};
use super::hash::{self, Algorithm, PasswordHash};
use crate::codec::ReasonCode;
use crate::ctl::Reply;
use crate::hooks::{AuthResult, BoxFuture, ClientInfo, Decision, Hook};
use crate::plugins::{Context, PluginError, Running, Spec};

/// What tells the two plugins apart.
pub struct Kind {
    pub plugin: &'static str,
    description: &'static str,
    /// Settings prefix: `auth.user`, `auth.client`.
    prefix: &'static str,
    /// The field naming an entry in a preloaded pair: `username`, `clientid`.
    id_field: &'static str,
    table: AuthTable,
    command: &'static str,
    usage: &'static str,
    name_of: fn(&ClientInfo) -> Option<&str>,
}

pub static USERNAME: Kind = Kind {
    plugin: "emqx_auth_username",
    description: "Username Authentication Plugin",
    prefix: "auth.user",
    id_field: "username",
    table: AuthTable::Username,
    command: "users",
    usage: "\
users list                              # List users
users add <Username> <Password>         # Add User
users update <Username> <NewPassword>   # Update User
users del <Username>                    # Delete User
",
    name_of: |info| info.username(),
};

pub static CLIENTID: Kind = Kind {
    plugin: "emqx_auth_clientid",
    description: "ClientId Authentication Plugin",
    prefix: "auth.client",
    id_field: "clientid",
    table: AuthTable::ClientId,
    command: "clientid",
    usage: "\
clientid list                           # List ClientId
clientid add <ClientId> <Password>      # Add ClientId
clientid update <Clientid> <NewPassword> # Update Clientid
clientid del <Clientid>                 # Delete Clientid
",
    name_of: |info| Some(&info.client_id),
};

pub fn username_spec() -> Spec {
    Spec {
        name: USERNAME.plugin,
        description: USERNAME.description,
        start: |ctx| Box::pin(start(&USERNAME, ctx)),
    }
}

pub fn clientid_spec() -> Spec {
    Spec {
        name: CLIENTID.plugin,
        description: CLIENTID.description,
        start: |ctx| Box::pin(start(&CLIENTID, ctx)),
    }
}

/// The plugin's settings, checked.
struct Settings {
    hash: PasswordHash,
    /// `(name, password)` in the order of their ids.
    preload: Vec<(String, String)>,
}

fn settings(kind: &Kind, keys: &PluginKeys) -> Result<Settings, ConfigError> {
    let known = [
        format!("{}.password_hash", kind.prefix),
        format!("{}.<N>.{}", kind.prefix, kind.id_field),
        format!("{}.<N>.password", kind.prefix),
    ];
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    let mut hash = PasswordHash::new(Algorithm::Sha256);
    // id -> (name, password), with the full keys for errors.
    let mut pairs: BTreeMap<&str, (Option<String>, Option<String>)> = BTreeMap::new();
    for (rest, setting) in keys.section(kind.prefix) {
        let full = format!("{}.{rest}", kind.prefix);
        match rest.split_once('.') {
            None if rest == "password_hash" => {
                if let Some(h) = keys.read(&full, |v| {
                    PasswordHash::parse(v).map_err(|_| hash::EXPECTED.to_string())
                })? {
                    hash = h;
                }
            }
            Some((id, field)) if field == kind.id_field => {
                pairs.entry(id).or_default().0 = Some(setting.value.clone());
            }
            Some((id, "password")) => {
                pairs.entry(id).or_default().1 = Some(setting.value.clone());
            }
            _ => return Err(keys.unknown(&full, &known)),
        }
    }
    let mut preload = Vec::new();
    for (id, pair) in pairs {
        match pair {
            (Some(name), Some(password)) => preload.push((name, password)),
            (Some(_), None) | (None, Some(_)) => {
                let (have, missing) = if pair.0.is_some() {
                    (kind.id_field, "password")
                } else {
                    ("password", kind.id_field)
                };
                let key = format!("{}.{id}.{have}", kind.prefix);
                let origin = keys
                    .get(&key)
                    .map(|s| s.origin.clone())
                    .unwrap_or(quay_config::Origin::Env { var: key.clone() });
                return Err(ConfigError::Inconsistent {
                    origin,
                    key,
                    problem: format!("{}.{id}.{missing} is not set", kind.prefix),
                });
            }
            (None, None) => {}
        }
    }
    Ok(Settings { hash, preload })
}

async fn start(kind: &'static Kind, ctx: Context) -> Result<Box<dyn Running>, PluginError> {
    let settings = settings(kind, &ctx.keys)?;
    let store = ctx.broker.store.clone();
    let table = CredentialTable::load(store, kind.table, settings.hash)
        .await
        .map_err(|e| PluginError::Start(format!("reading the stored {}: {e}", kind.command)))?;
    let table = Arc::new(table);
    for (name, password) in &settings.preload {
        match table.add(name, password.as_bytes()).await {
            // A stored entry (perhaps updated with emqx_ctl) wins, as in EMQX 4.
            Ok(()) | Err(ChangeError::Existed) => {}
            Err(e) => {
                return Err(PluginError::Start(format!(
                    "storing the preloaded {} {name:?}: {e}",
                    kind.id_field
                )))
            }
        }
    }
    let checker = table.clone();
    ctx.broker
        .hooks
        .add(
            kind.plugin,
            0,
            Hook::authenticate(move |info, creds| {
                let Some(name) = (kind.name_of)(info) else {
                    return Decision::Ready(AuthResult::Ignore);
                };
                // No password is an empty one: it matches only an empty password.
                let password = creds.password.as_deref().unwrap_or(b"");
                match checker.check(name, password) {
                    Check::Ready(lookup) => Decision::Ready(result(lookup)),
                    Check::Slow(slow) => Decision::pending(async move {
                        match tokio::task::spawn_blocking(move || slow.run()).await {
                            Ok(lookup) => result(lookup),
                            // The check panicked or the runtime is stopping: refuse.
                            Err(_) => AuthResult::Deny(ReasonCode::SERVER_UNAVAILABLE),
                        }
                    }),
                }
            }),
        )
        .map_err(|e| PluginError::Start(e.to_string()))?;
    if kind.table == AuthTable::Username {
        // MQTT 5 enhanced authentication (SCRAM-SHA-256) against the same entries.
        let scram = super::builtin_scram::hook(table.clone())
            .map_err(|e| PluginError::Start(format!("no randomness for SCRAM: {e}")))?;
        ctx.broker
            .hooks
            .add(kind.plugin, 0, scram)
            .map_err(|e| PluginError::Start(e.to_string()))?;
    }
    tracing::info!(plugin = kind.plugin, entries = table.names().len(), hash = %settings.hash, "built-in credentials loaded");
    Ok(Box::new(Builtin { kind, table }))
}

fn result(lookup: Lookup) -> AuthResult {
    match lookup {
        Lookup::Absent => AuthResult::Ignore,
        Lookup::Match => AuthResult::Allow { superuser: false },
        Lookup::Mismatch => AuthResult::Deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
    }
}

struct Builtin {
    kind: &'static Kind,
    table: Arc<CredentialTable>,
}

impl Running for Builtin {
    fn ctl(&self, args: &[String]) -> Option<BoxFuture<Reply>> {
        if args.first().map(String::as_str) != Some(self.kind.command) {
            return None;
        }
        let (kind, table, args) = (self.kind, self.table.clone(), args[1..].to_vec());
        Some(Box::pin(async move { command(kind, &table, &args).await }))
    }
}

/// `emqx_ctl users|clientid ...`, printed as EMQX 4 does (`~p` of the result).
async fn command(kind: &Kind, table: &CredentialTable, args: &[String]) -> Reply {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let changed = match args.as_slice() {
        ["list"] => {
            let mut output = String::new();
            for name in table.names() {
                output.push_str(&name);
                output.push('\n');
            }
            return Reply { code: 0, output };
        }
        ["add", name, password] => table.add(name, password.as_bytes()).await,
        ["update", name, password] => table.update(name, password.as_bytes()).await,
        ["del", name] => table.delete(name).await,
        _ => {
            return Reply {
                code: 1,
                output: kind.usage.to_string(),
            }
        }
    };
    match changed {
        Ok(()) => Reply {
            code: 0,
            output: "ok\n".into(),
        },
        Err(e) => Reply {
            code: 1,
            output: format!("{e}\n"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[(&str, &str)]) -> PluginKeys {
        crate::auth::settings::test_keys("etc/plugins/emqx_auth_username.conf", list)
    }

    #[test]
    fn preloaded_pairs_and_the_hash_are_read_in_id_order() {
        let s = settings(
            &USERNAME,
            &keys(&[
                ("auth.user.2.username", "b"),
                ("auth.user.2.password", "pb"),
                ("auth.user.1.username", "a"),
                ("auth.user.1.password", "pa"),
                ("auth.user.password_hash", "bcrypt"),
            ]),
        )
        .unwrap();
        assert_eq!(
            s.preload,
            [("a".into(), "pa".into()), ("b".into(), "pb".into())]
        );
        assert_eq!(s.hash.to_string(), "bcrypt");
        let d = settings(&CLIENTID, &keys(&[])).unwrap();
        assert_eq!(d.hash.to_string(), "sha256");
    }

    #[test]
    fn half_a_pair_an_unknown_key_and_a_bad_hash_name_their_line() {
        let err = |list: &[(&str, &str)]| {
            settings(&CLIENTID, &keys(list))
                .err()
                .expect("refused")
                .to_string()
        };
        let e = err(&[("auth.client.1.clientid", "c")]);
        assert!(
            e.contains(":1: auth.client.1.clientid: auth.client.1.password is not set"),
            "{e}"
        );
        let e = err(&[("auth.client.1.username", "c")]);
        assert!(e.contains(":1: unknown key auth.client.1.username"), "{e}");
        let e = err(&[("auth.client.password_hash", "rot13")]);
        assert!(
            e.contains(":1: auth.client.password_hash: expected plain"),
            "{e}"
        );
    }
}
