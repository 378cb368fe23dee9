//! Banned clients (EMQX's `emqx_banned`): a client id, a username or a peer host that
//! may not connect until a ban lifts. Set and lifted with `emqx_ctl banned`, kept in
//! the store's `banned` column family and, for the checks, in memory.
//!
//! A CONNECT is checked before anything else decides on it (authentication, an
//! enhanced exchange such as SCRAM, the session) and once more after an exchange
//! named the username it proved; a banned client gets CONNACK 0x8A (v5) or return
//! code 5 (v3). With no ban set, the check is one atomic load.
//!
//! A change is answered only once it is on disk. Expired bans stop counting at once
//! and leave the disk at the next sweep (`Broker::sweep_expired`).

pub mod ctl;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;

use quay_storage::keys::BanKind;
use quay_storage::{BannedRecord, Op, Store, StoreError};

/// One ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    pub kind: BanKind,
    /// The client id, the username, or the peer's IP address (canonical text).
    pub who: String,
    pub by: String,
    pub reason: String,
    /// Unix seconds when it was set.
    pub at_s: u64,
    /// Unix seconds when it lifts; None: never.
    pub until_s: Option<u64>,
}

impl Ban {
    fn active(&self, now_s: u64) -> bool {
        self.until_s.is_none_or(|u| now_s < u)
    }

    fn record(&self) -> BannedRecord {
        BannedRecord {
            by: self.by.clone(),
            reason: self.reason.clone(),
            at_s: self.at_s,
            until_s: self.until_s,
        }
    }
}

/// A peer host as bans name it: `::ffff:10.0.0.1` is `10.0.0.1`.
pub fn peer_host(ip: IpAddr) -> String {
    ip.to_canonical().to_string()
}

/// The ban table.
pub struct Bans {
    /// By kind (`slot`), then who.
    entries: RwLock<[HashMap<Box<str>, Ban>; 3]>,
    /// Entries held: a CONNECT takes no lock while there are none.
    count: AtomicUsize,
    /// The earliest `until` held (u64::MAX: none), so a sweep finding nothing due
    /// takes no lock.
    next_expiry_s: AtomicU64,
    /// Held across a whole change (durable write, then the map) and by a sweep.
    changes: tokio::sync::Mutex<()>,
}

impl Default for Bans {
    fn default() -> Self {
        Bans {
            entries: RwLock::default(),
            count: AtomicUsize::new(0),
            next_expiry_s: AtomicU64::new(u64::MAX),
            changes: tokio::sync::Mutex::new(()),
        }
    }
}

fn slot(kind: BanKind) -> usize {
    match kind {
        BanKind::ClientId => 0,
        BanKind::Username => 1,
        BanKind::PeerHost => 2,
    }
}

impl Bans {
    /// Fill the table from what the store holds (at start).
    pub fn load(&self, stored: Vec<(BanKind, String, BannedRecord)>) {
        let mut entries = self.write();
        for (kind, who, r) in stored {
            let ban = Ban {
                kind,
                who: who.clone(),
                by: r.by,
                reason: r.reason,
                at_s: r.at_s,
                until_s: r.until_s,
            };
            entries[slot(kind)].insert(who.into_boxed_str(), ban);
        }
        self.recount(&entries);
    }

    /// The kind of the first active ban naming this client, if any.
    pub fn check(
        &self,
        client_id: &str,
        username: Option<&str>,
        peer: IpAddr,
        now_s: u64,
    ) -> Option<BanKind> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let host = peer_host(peer);
        let entries = self.read();
        let candidates = [
            (BanKind::ClientId, Some(client_id)),
            (BanKind::Username, username),
            (BanKind::PeerHost, Some(host.as_str())),
        ];
        let found = candidates.into_iter().find_map(|(kind, who)| {
            let ban = entries[slot(kind)].get(who?)?;
            ban.active(now_s).then_some(kind)
        });
        found
    }

    /// Every active ban, by kind then who.
    pub fn list(&self, now_s: u64) -> Vec<Ban> {
        let entries = self.read();
        let mut bans: Vec<Ban> = entries
            .iter()
            .flat_map(|m| m.values())
            .filter(|b| b.active(now_s))
            .cloned()
            .collect();
        bans.sort_by(|a, b| (a.kind, &a.who).cmp(&(b.kind, &b.who)));
        bans
    }

    /// Add or replace `ban`; returns once it is durable.
    pub async fn add(&self, store: &Store, ban: Ban) -> Result<(), StoreError> {
        let _change = self.changes.lock().await;
        durable(
            store,
            Op::PutBanned {
                kind: ban.kind,
                who: ban.who.clone(),
                record: ban.record(),
            },
        )
        .await?;
        let mut entries = self.write();
        entries[slot(ban.kind)].insert(ban.who.clone().into_boxed_str(), ban);
        self.recount(&entries);
        Ok(())
    }

    /// Lift the ban of `who`; Ok(false) when there was none. Returns once durable.
    pub async fn delete(
        &self,
        store: &Store,
        kind: BanKind,
        who: &str,
    ) -> Result<bool, StoreError> {
        let _change = self.changes.lock().await;
        if !self.read()[slot(kind)].contains_key(who) {
            return Ok(false);
        }
        durable(
            store,
            Op::DeleteBanned {
                kind,
                who: who.to_string(),
            },
        )
        .await?;
        let mut entries = self.write();
        entries[slot(kind)].remove(who);
        self.recount(&entries);
        Ok(true)
    }

    /// Forget bans that lifted at or before `now_s`, and delete them from the disk
    /// (not waited for: a lifted ban counts for nothing). Skipped while a change is
    /// being made; the next sweep takes it. Returns how many were removed.
    pub fn sweep(&self, store: &Store, now_s: u64) -> usize {
        if now_s < self.next_expiry_s.load(Ordering::Acquire) {
            return 0;
        }
        let Ok(_change) = self.changes.try_lock() else {
            return 0;
        };
        let mut entries = self.write();
        let mut ops = Vec::new();
        for map in entries.iter_mut() {
            map.retain(|who, ban| {
                let keep = ban.active(now_s);
                if !keep {
                    tracing::info!(kind = ban.kind.name(), who = %who, "ban lifted (expired)");
                    ops.push(Op::DeleteBanned {
                        kind: ban.kind,
                        who: who.to_string(),
                    });
                }
                keep
            });
        }
        self.recount(&entries);
        let removed = ops.len();
        if removed > 0 {
            store.writer().submit_detached(ops);
        }
        removed
    }

    fn recount(&self, entries: &[HashMap<Box<str>, Ban>; 3]) {
        let count = entries.iter().map(HashMap::len).sum();
        let next = entries
            .iter()
            .flat_map(|m| m.values())
            .filter_map(|b| b.until_s)
            .min()
            .unwrap_or(u64::MAX);
        self.next_expiry_s.store(next, Ordering::Release);
        self.count.store(count, Ordering::Release);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, [HashMap<Box<str>, Ban>; 3]> {
        // Nothing panics while holding the write lock; a poisoned table is whole.
        self.entries.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, [HashMap<Box<str>, Ban>; 3]> {
        self.entries.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Close the live connections `ban` names, as if kicked (v5 DISCONNECT 0x98). Each
/// one checks itself against the table (`ConnEvent::CheckBanned`): a username or a
/// proxied peer is the connection's to know.
pub fn disconnect_banned(broker: &crate::broker::Broker, ban: &Ban) {
    match ban.kind {
        BanKind::ClientId => {
            if let Some(handle) = broker.registry.get(&ban.who) {
                handle.check_banned();
            }
        }
        BanKind::PeerHost | BanKind::Username => {
            for handle in broker.registry.all() {
                let named = ban.kind == BanKind::Username || {
                    let st = handle.state();
                    st.peer
                        .parse::<std::net::SocketAddr>()
                        .is_ok_and(|p| peer_host(p.ip()) == ban.who)
                };
                if named {
                    handle.check_banned();
                }
            }
        }
    }
}

/// Submit `op` and wait until its batch is durable.
async fn durable(store: &Store, op: Op) -> Result<(), StoreError> {
    store.writer().write_durable(vec![op]).await
}

/// Now, in Unix seconds.
pub fn now_s() -> u64 {
    crate::message::now_ms() / 1000
}

#[cfg(test)]
mod tests;
