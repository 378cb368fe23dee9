//! A built-in credential table (`emqx_auth_username`, `emqx_auth_clientid`): entries
//! kept durably in the store's `auth` column family and, for the checks, in memory.
//!
//! The in-memory map is loaded once when the plugin starts and changed only by
//! `emqx_ctl` (and the preloaded entries), after the change is on disk: a CONNECT never
//! reads the disk, and an `emqx_ctl ... add` that printed `ok` survives a crash.
//! Changes are serialized by one async lock, so "add unless it exists" cannot race
//! another add. This module must never log a password or a hash.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use quay_storage::keys::AuthTable;
use quay_storage::{CredentialRecord, Op, ScramKeys, Store, StoreError};
use tokio::sync::Mutex;

use super::hash::{Algorithm, PasswordHash, SaltAt};
use super::scram::ScramCredential;

/// Bytes of random salt per entry (EMQX 4 used 4).
const SALT_BYTES: usize = 16;

/// One stored entry, ready to check.
#[derive(Debug)]
struct Entry {
    /// `None` when the stored algorithm is not one this build knows: the entry then
    /// refuses every password rather than letting the name fall through the chain.
    hash: Option<PasswordHash>,
    salt: Vec<u8>,
    stored: String,
    /// SCRAM-SHA-256 keys of the same password (username table only).
    scram: Option<ScramCredential>,
}

impl Entry {
    fn from_record(name: &str, record: CredentialRecord) -> Entry {
        let hash = PasswordHash::parse(&record.algorithm).ok();
        if hash.is_none() {
            tracing::error!(name, algorithm = %record.algorithm, "stored credential has an unknown password hash; it refuses every password");
        }
        let scram = record.scram.and_then(|k| {
            Some(ScramCredential {
                salt: k.salt,
                iterations: k.iterations,
                stored_key: k.stored_key.try_into().ok()?,
                server_key: k.server_key.try_into().ok()?,
            })
        });
        Entry {
            hash,
            salt: record.salt,
            stored: record.hash,
            scram,
        }
    }

    fn verify(&self, password: &[u8]) -> bool {
        match self.hash {
            Some(hash) => hash.verify(password, &self.salt, &self.stored),
            None => false,
        }
    }

    /// Hashes slow enough that checking one must not run on a connection's thread.
    fn is_slow(&self) -> bool {
        matches!(
            self.hash.map(|h| h.algorithm),
            Some(Algorithm::Bcrypt | Algorithm::Pbkdf2 { .. })
        )
    }
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// No such entry: not this table's to decide.
    Absent,
    Match,
    Mismatch,
}

/// A check that must wait (see [`CredentialTable::check`]).
pub enum Check {
    Ready(Lookup),
    /// A slow hash: run [`SlowCheck::run`] off the connection's thread.
    Slow(SlowCheck),
}

pub struct SlowCheck {
    entry: Arc<Entry>,
    password: Vec<u8>,
}

impl SlowCheck {
    pub fn run(self) -> Lookup {
        if self.entry.verify(&self.password) {
            Lookup::Match
        } else {
            Lookup::Mismatch
        }
    }
}

/// Why a change was refused; displayed as EMQX 4's `emqx_ctl` prints it.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{{error,existed}}")]
    Existed,
    #[error("{{error,noexisted}}")]
    NotExisted,
    #[error("{{error,{0:?}}}")]
    Store(String),
}

impl From<StoreError> for ChangeError {
    fn from(e: StoreError) -> Self {
        ChangeError::Store(e.to_string())
    }
}

pub struct CredentialTable {
    table: AuthTable,
    store: Store,
    /// How new entries are hashed (`auth.user.password_hash`).
    hash: PasswordHash,
    entries: RwLock<HashMap<String, Arc<Entry>>>,
    /// Held across a whole change (check, durable write, map update).
    changes: Mutex<()>,
}

impl CredentialTable {
    /// The table as stored. Reads the disk once (on a blocking thread).
    pub async fn load(
        store: Store,
        table: AuthTable,
        hash: PasswordHash,
    ) -> Result<CredentialTable, StoreError> {
        let reader = store.clone();
        let records = tokio::task::spawn_blocking(move || reader.credentials(table))
            .await
            .map_err(|e| StoreError::Read(e.to_string()))??;
        let entries = records
            .into_iter()
            .map(|(name, record)| {
                let entry = Arc::new(Entry::from_record(&name, record));
                (name, entry)
            })
            .collect();
        Ok(CredentialTable {
            table,
            store,
            hash: with_salt(hash),
            entries: RwLock::new(entries),
            changes: Mutex::new(()),
        })
    }

    /// Check `password` for `name`: at once for fast hashes, as a [`SlowCheck`] for
    /// bcrypt and pbkdf2 (tens of milliseconds of CPU each).
    pub fn check(&self, name: &str, password: &[u8]) -> Check {
        let entry = match self.read().get(name) {
            Some(e) => e.clone(),
            None => return Check::Ready(Lookup::Absent),
        };
        if entry.is_slow() {
            return Check::Slow(SlowCheck {
                entry,
                password: password.to_vec(),
            });
        }
        Check::Ready(if entry.verify(password) {
            Lookup::Match
        } else {
            Lookup::Mismatch
        })
    }

    /// Every name, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// `name`'s SCRAM-SHA-256 keys; None when there is no such entry or it was stored
    /// before the keys were kept.
    pub fn scram(&self, name: &str) -> Option<ScramCredential> {
        self.read().get(name)?.scram.clone()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.read().contains_key(name)
    }

    /// Add `name` unless it exists; returns once the entry is durable.
    pub async fn add(&self, name: &str, password: &[u8]) -> Result<(), ChangeError> {
        let _change = self.changes.lock().await;
        if self.contains(name) {
            return Err(ChangeError::Existed);
        }
        self.put(name, password).await
    }

    /// Replace the password of an existing `name`; returns once it is durable.
    pub async fn update(&self, name: &str, password: &[u8]) -> Result<(), ChangeError> {
        let _change = self.changes.lock().await;
        if !self.contains(name) {
            return Err(ChangeError::NotExisted);
        }
        self.put(name, password).await
    }

    /// Remove `name` (absent or not, as EMQX 4); returns once that is durable.
    pub async fn delete(&self, name: &str) -> Result<(), ChangeError> {
        let _change = self.changes.lock().await;
        self.write(Op::DeleteCredential {
            table: self.table,
            name: name.to_string(),
        })
        .await?;
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(())
    }

    async fn put(&self, name: &str, password: &[u8]) -> Result<(), ChangeError> {
        let mut salt = vec![0u8; SALT_BYTES];
        getrandom::getrandom(&mut salt)
            .map_err(|e| ChangeError::Store(format!("no random salt: {e}")))?;
        let (hash, salt) = (self.hash, salt);
        let password = password.to_vec();
        let with_scram = self.table == AuthTable::Username;
        // bcrypt, pbkdf2 and SCRAM's 4,096 PBKDF2 rounds take milliseconds: not on a
        // runtime thread.
        let stored = tokio::task::spawn_blocking(move || {
            let stored = hash.hash(&password, &salt);
            let scram = with_scram.then(|| ScramCredential::new_random(&password));
            (stored, salt, scram)
        })
        .await
        .map_err(|e| ChangeError::Store(e.to_string()))?;
        let scram = match stored.2 {
            Some(Ok(c)) => Some(ScramKeys {
                salt: c.salt,
                iterations: c.iterations,
                stored_key: c.stored_key.to_vec(),
                server_key: c.server_key.to_vec(),
            }),
            Some(Err(e)) => return Err(ChangeError::Store(format!("no random salt: {e}"))),
            None => None,
        };
        let record = CredentialRecord {
            algorithm: self.hash.to_string(),
            salt: stored.1,
            hash: stored.0,
            scram,
        };
        self.write(Op::PutCredential {
            table: self.table,
            name: name.to_string(),
            record: record.clone(),
        })
        .await?;
        let entry = Arc::new(Entry::from_record(name, record));
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), entry);
        Ok(())
    }

    /// Submit `op` and wait until its batch is durable.
    async fn write(&self, op: Op) -> Result<(), StoreError> {
        self.store.writer().write_durable(vec![op]).await
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Entry>>> {
        // Nothing panics while holding the write lock; a poisoned map is whole.
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every digest of a built-in table is salted (the salt before the password, as
/// EMQX 4 did); bcrypt and pbkdf2 take the salt their own way, plain ignores it.
fn with_salt(hash: PasswordHash) -> PasswordHash {
    match hash.algorithm {
        Algorithm::Md5 | Algorithm::Sha | Algorithm::Sha256 | Algorithm::Sha512 => PasswordHash {
            salt: SaltAt::Before,
            ..hash
        },
        _ => hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    fn lookup(t: &CredentialTable, name: &str, pw: &[u8]) -> Lookup {
        match t.check(name, pw) {
            Check::Ready(l) => l,
            Check::Slow(s) => s.run(),
        }
    }

    #[test]
    fn entries_are_salted_durable_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        rt().block_on(async {
            let store = Store::open(dir.path(), Default::default()).unwrap();
            let hash = PasswordHash::parse("sha256").unwrap();
            let t = CredentialTable::load(store.clone(), AuthTable::Username, hash)
                .await
                .unwrap();
            t.add("alice", b"pw").await.unwrap();
            t.add("bob", b"pw").await.unwrap();
            assert!(matches!(
                t.add("alice", b"x").await,
                Err(ChangeError::Existed)
            ));
            assert!(matches!(
                t.update("carol", b"x").await,
                Err(ChangeError::NotExisted)
            ));
            assert_eq!(lookup(&t, "alice", b"pw"), Lookup::Match);
            assert_eq!(lookup(&t, "alice", b"pW"), Lookup::Mismatch);
            assert_eq!(lookup(&t, "alice", b""), Lookup::Mismatch);
            assert_eq!(lookup(&t, "carol", b"pw"), Lookup::Absent);
            // Per-entry salt: the same password is stored differently.
            let stored = store.credentials(AuthTable::Username).unwrap();
            assert_eq!(stored.len(), 2);
            assert_ne!(stored[0].1.hash, stored[1].1.hash);
            assert_eq!(stored[0].1.salt.len(), SALT_BYTES);
            assert!(!stored[0].1.hash.contains("pw"));
            // The other table does not see these names.
            assert!(store.credentials(AuthTable::ClientId).unwrap().is_empty());
            t.update("bob", b"new").await.unwrap();
            t.delete("alice").await.unwrap();
            t.delete("nobody").await.unwrap();
            drop(t);
            store.shutdown();
        });
        rt().block_on(async {
            let store = Store::open(dir.path(), Default::default()).unwrap();
            // A changed setting applies to new entries; old ones keep theirs.
            let t = CredentialTable::load(
                store.clone(),
                AuthTable::Username,
                PasswordHash::parse("bcrypt").unwrap(),
            )
            .await
            .unwrap();
            assert_eq!(t.names(), ["bob"]);
            assert_eq!(lookup(&t, "bob", b"new"), Lookup::Match);
            assert_eq!(lookup(&t, "bob", b"pw"), Lookup::Mismatch);
            t.add("dave", b"pw").await.unwrap();
            assert!(matches!(t.check("dave", b"pw"), Check::Slow(_)));
            assert_eq!(lookup(&t, "dave", b"pw"), Lookup::Match);
            store.shutdown();
        });
    }

    #[test]
    fn an_unknown_stored_algorithm_refuses_every_password() {
        let e = Entry::from_record(
            "x",
            CredentialRecord {
                algorithm: "argon9".into(),
                salt: vec![],
                hash: "pw".into(),
                scram: None,
            },
        );
        assert!(!e.verify(b"pw"));
    }
}
