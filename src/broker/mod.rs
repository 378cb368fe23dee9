//! The broker: shared state every connection uses (registry and routes, retained
//! index, store, metrics), startup recovery, and the publish path.

pub mod mailbox;
mod publish;
pub mod registry;
mod retained;
mod session_map;
pub mod stamp;
pub mod subscriptions;
mod wills;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quay_storage::{Op, Store, StoreConfig};
use thiserror::Error;

use crate::config::{Config, FsyncPolicy, Zone, DEFAULT_ZONE_NAME};
use crate::message::Message;
use crate::metrics::Metrics;
use crate::router::RetainedIndex;
use registry::{Registry, SessionHandle, SessionMeta, SessionState, Stamp, SubOpts};

pub use publish::{PublishDone, Routed};
pub use retained::{RetainedLookup, RetainedRead};

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error("opening the store in {path}: {source}")]
    Store {
        path: String,
        source: quay_storage::StoreError,
    },
    #[error("recovering from the store: {0}")]
    Recover(#[from] quay_storage::StoreError),
}

pub struct Broker {
    pub config: Arc<Config>,
    pub store: Store,
    pub registry: Registry,
    pub retained: RetainedIndex,
    pub wills: wills::DelayedWills,
    /// The hook chain every channel runs (`crate::hooks`); empty until a plugin or
    /// a feature registers something.
    pub hooks: crate::hooks::Hooks,
    /// The file ACL (`acl_file`); loaded by the node at start (`FileAcl::load_at_start`).
    pub acl: crate::acl::FileAcl,
    pub metrics: Metrics,
    /// Figures a running plugin adds to the metrics (a bridge's queue and counts).
    pub metric_sources: crate::metrics::Sources,
    /// Banned clients (`emqx_ctl banned`), loaded at start.
    pub banned: crate::banned::Bans,
    /// `emqx_ctl trace`: the running traces (`crate::trace`).
    pub traces: Arc<crate::trace::Traces>,
    next_conn_id: AtomicU64,
    /// One background compaction at a time.
    compacting: Arc<AtomicBool>,
    /// One retained expiry scan out at a time: a slow one is not queued behind again.
    sweeping_retained: AtomicBool,
    pub started_at: Instant,
    /// Connections hibernating now (see `crate::hibernate`).
    pub hibernated: crate::metrics::Gauge,
    /// Every configured zone, shared by its listeners, connections and sessions.
    zones: BTreeMap<String, Arc<Zone>>,
    incarnation_base: u64,
    /// Set only by the model test (`crate::sim`): its clock, fault switches and
    /// publish probe. None in production, where it costs one branch where it is read.
    sim: Option<Box<crate::sim::Simulation>>,
}

impl Broker {
    /// Open the store under `node.data_dir` and rebuild sessions, routes and the
    /// retained index from it. Reads metadata only: queued messages stay on disk.
    pub fn open(config: Config) -> Result<Arc<Broker>, BrokerError> {
        let path = config.node.data_dir.join("db");
        let store_config = StoreConfig {
            fsync: config.storage.fsync == FsyncPolicy::Batch,
            batch_window: config.storage.batch_window,
            batch_max: config.storage.batch_max,
            block_cache_bytes: config.storage.block_cache_size as usize,
            read_threads: config.storage.read_threads,
            read_queue_max: quay_storage::READ_QUEUE_MAX,
            max_open_files: crate::listener::ceiling::store_open_files(),
        };
        let started = Instant::now();
        tracing::info!(path = %path.display(), "opening store");
        let store = Store::open(&path, store_config).map_err(|source| BrokerError::Store {
            path: path.display().to_string(),
            source,
        })?;
        let incarnation_base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let broker = Broker::over(config, store, incarnation_base, None);
        broker.recover()?;
        tracing::info!(
            sessions = broker.registry.len(),
            routes = broker.registry.route_count(),
            retained = broker.retained.len(),
            delayed_wills = broker.wills.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovery done"
        );
        Ok(broker)
    }

    /// A broker over a simulated store (`Store::simulated`), recovered from it as
    /// `open` does, on the simulation's clock. For the model test (`crate::sim`).
    #[doc(hidden)]
    pub fn open_simulated(
        config: Config,
        store: Store,
        incarnation_base: u64,
        sim: crate::sim::Simulation,
    ) -> Result<Arc<Broker>, BrokerError> {
        let broker = Broker::over(config, store, incarnation_base, Some(Box::new(sim)));
        broker.recover()?;
        Ok(broker)
    }

    fn over(
        config: Config,
        store: Store,
        incarnation_base: u64,
        sim: Option<Box<crate::sim::Simulation>>,
    ) -> Arc<Broker> {
        Arc::new(Broker {
            store,
            registry: Registry::default(),
            retained: RetainedIndex::default(),
            wills: Default::default(),
            hooks: crate::hooks::Hooks::new(),
            acl: crate::acl::FileAcl::new(config.access.acl_file.clone()),
            metrics: Metrics::default(),
            metric_sources: Default::default(),
            banned: Default::default(),
            traces: Arc::default(),
            next_conn_id: AtomicU64::new(1),
            compacting: Arc::new(AtomicBool::new(false)),
            sweeping_retained: AtomicBool::new(false),
            started_at: Instant::now(),
            hibernated: Default::default(),
            zones: config
                .zones
                .iter()
                .map(|(name, z)| {
                    let zone = Zone {
                        name: name.clone(),
                        config: z.clone(),
                    };
                    (name.clone(), Arc::new(zone))
                })
                .collect(),
            config: Arc::new(config),
            incarnation_base,
            sim,
        })
    }

    /// The time on the broker's own paths (recovery; the model's CONNECT clock): the clocks,
    /// or the model test's simulated one.
    pub(crate) fn now(&self) -> crate::channel::Now {
        match &self.sim {
            None => crate::channel::Now::read(),
            Some(sim) => sim.clock.now(),
        }
    }

    /// The wall clock in ms, or the model test's.
    pub(crate) fn now_ms(&self) -> u64 {
        match &self.sim {
            None => crate::message::now_ms(),
            Some(sim) => sim.clock.now().ms,
        }
    }

    /// Queue entries a session reads from the store at a time (the model test
    /// makes pages small, to run the paths between them).
    pub(crate) fn queue_page_size(&self) -> usize {
        self.sim.as_ref().map_or(1024, |s| s.page_size)
    }

    /// Whether the model test switched `fault` on (never in production).
    pub(crate) fn fault(&self, fault: crate::sim::Fault) -> bool {
        self.sim.as_ref().is_some_and(|s| s.faults.contains(&fault))
    }

    /// The zone called `name`; the default zone's settings under that name if it is
    /// not configured (a session stored before its zone was removed from the config).
    pub fn zone(&self, name: &str) -> Arc<Zone> {
        match self.zones.get(name) {
            Some(zone) => zone.clone(),
            None => Arc::new(Zone {
                name: name.to_owned(),
                config: self.config.zone(name).clone(),
            }),
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A fresh session incarnation, unique across restarts too: the wall clock in
    /// nanoseconds at start plus a counter (see `SessionRecord::incarnation`).
    pub fn next_incarnation(&self) -> u64 {
        self.incarnation_base
            .wrapping_add(self.next_conn_id.fetch_add(1, Ordering::Relaxed))
    }

    fn recover(&self) -> Result<(), quay_storage::StoreError> {
        let now_ms = self.now().ms;
        self.banned.load(self.store.banned()?);
        let sessions = self.store.sessions()?;
        let total = sessions.len();
        let mut expired = Vec::new();
        for (i, (client, record)) in sessions.into_iter().enumerate() {
            if i > 0 && i % 10_000 == 0 {
                tracing::info!(done = i, total, "recovering sessions");
            }
            // A session that was online when the broker died has no disconnect time:
            // its expiry counts from this start.
            let offline_ms = if record.disconnected_ms == 0 {
                0
            } else {
                now_ms.saturating_sub(record.disconnected_ms)
            };
            let expiry_ms = record.expiry_interval_s as u64 * 1000;
            if record.expiry_interval_s != u32::MAX && offline_ms >= expiry_ms {
                expired.push(client);
                continue;
            }
            let offline_since = Stamp::at(now_ms - offline_ms);
            let client: Arc<str> = Arc::from(client.as_str());
            // Records written before the zone was kept belong to the default zone.
            let zone = match record.zone.as_str() {
                "" => self.zone(DEFAULT_ZONE_NAME),
                name => self.zone(name),
            };
            // Online when the broker died: what was stored may have been sent. What
            // is stored from now on has not (seqs start over after an empty queue).
            let next_seq = self.store.next_queue_seq(&client)?;
            let dup_below = if record.disconnected_ms == 0 {
                next_seq
            } else {
                record.dup_below.min(next_seq)
            };
            self.registry.insert(SessionHandle::new(
                client,
                SessionState {
                    meta: SessionMeta {
                        incarnation: record.incarnation,
                        persistent: true,
                        expiry_interval_s: record.expiry_interval_s,
                        subscriptions: Default::default(),
                        protocol_level: record.protocol_level,
                        dup_below,
                    },
                    live: true,
                    conn: None,
                    offline_since,
                    zone,
                    connected_at: Stamp::NONE,
                    peer: Box::from(""),
                },
            ));
        }
        for (client, filter, record) in self.store.subscriptions()? {
            let Some(handle) = self.registry.get(&client) else {
                continue; // expired above, or an orphan: deleted with its session
            };
            let opts = SubOpts {
                qos: crate::codec::QoS::from_u8(record.qos).unwrap_or_default(),
                no_local: record.no_local,
                retain_as_published: record.retain_as_published,
                retain_handling: match record.retain_handling {
                    1 => crate::codec::RetainHandling::SendIfNew,
                    2 => crate::codec::RetainHandling::Never,
                    _ => crate::codec::RetainHandling::SendAlways,
                },
                subscription_id: record.subscription_id,
            };
            self.registry.subscribe(&handle, &filter, opts);
        }
        for topic in self.store.retained_topics()? {
            match std::str::from_utf8(&topic) {
                Ok(t) => {
                    self.retained.insert(t);
                }
                Err(_) => tracing::warn!(?topic, "retained topic is not UTF-8; skipped"),
            }
        }
        for (client, will) in self.store.wills()? {
            let msg = Message::from_stored(will.msg);
            self.wills
                .recovered(Arc::from(client.as_str()), will.due_ms, msg);
        }
        if !expired.is_empty() {
            tracing::info!(
                count = expired.len(),
                "sessions expired while the broker was down"
            );
            // One request each: a session whose data cannot be read does not keep the
            // others from going.
            for client in expired {
                self.store.writer().submit_detached(vec![Op::DeleteSession {
                    client: Arc::from(client.as_str()),
                }]);
            }
        }
        Ok(())
    }

    /// Delete offline sessions whose expiry passed and retained messages whose expiry
    /// passed (those after a scan on the reader pool); compact when something was
    /// deleted so the disk space comes back. Returns how many sessions ended. Session
    /// expiry counts on the wall clock, as the store keeps disconnect times.
    pub fn sweep_expired(self: &Arc<Self>) -> usize {
        self.sweep_expired_at(crate::message::now_ms())
    }

    /// `sweep_expired` at a given wall-clock time (the simulations').
    pub(crate) fn sweep_expired_at(self: &Arc<Self>, now_ms: u64) -> usize {
        // Wills first: a will is due at the latest when its session ends.
        self.publish_due_wills(now_ms);
        let writer = self.store.writer();
        let mut sessions = 0;
        let expired = |st: &SessionState| match (st.conn.is_none(), st.offline_since.get()) {
            (true, Some(since)) if st.meta.expiry_interval_s != u32::MAX => {
                now_ms.saturating_sub(since) >= u64::from(st.meta.expiry_interval_s) * 1000
            }
            _ => false,
        };
        for handle in self.registry.all() {
            // A cheap look first (the session's lock only), then decided again and
            // ended under that lock, which a resuming CONNECT also takes: a session
            // is either revived or ended, never both.
            if !expired(&handle.state()) {
                continue;
            }
            let ended = self.registry.remove_if(&handle, expired, |st| {
                if st.meta.persistent {
                    writer.submit_detached(vec![Op::DeleteSession {
                        client: handle.client_id.clone(),
                    }]);
                }
            });
            if ended {
                self.publish_will_now(&handle.client_id);
                tracing::info!(client_id = %handle.client_id, "session expired");
                Metrics::inc(&self.metrics.sessions_expired);
                sessions += 1;
            }
        }
        self.sweep_expired_retained(now_ms);
        self.banned.sweep(&self.store, now_ms / 1000);
        if sessions > 0 {
            self.compact_soon();
        }
        sessions
    }

    /// The retained half of the sweep: the scan of the `retained` column family runs
    /// on the reader pool (it reads every retained message), and its answer asks the
    /// writer to delete those still expired when the delete applies: a message set
    /// after the scan survives, and so does its index entry.
    fn sweep_expired_retained(self: &Arc<Self>, now_ms: u64) {
        if self.sweeping_retained.swap(true, Ordering::AcqRel) {
            return;
        }
        let broker = self.clone();
        self.store.reader().submit(
            move |db| quay_storage::read::expired_retained(db, now_ms),
            move |topics| {
                broker.sweeping_retained.store(false, Ordering::Release);
                let topics = match topics {
                    Ok(topics) if topics.is_empty() => return,
                    Ok(topics) => topics,
                    Err(e) => {
                        tracing::warn!(error = %e, "retained expiry sweep failed");
                        return;
                    }
                };
                let ops = topics
                    .iter()
                    .map(|topic| Op::DeleteRetainedIfExpired {
                        topic: topic.clone(),
                        now_ms,
                    })
                    .collect();
                let deleter = broker.clone();
                broker.store.writer().submit(
                    ops,
                    Box::new(move |result| {
                        let Ok(deleted) = result else { return };
                        for (topic, deleted) in topics.iter().zip(deleted) {
                            if let (Some(_), Ok(t)) = (deleted, std::str::from_utf8(topic)) {
                                deleter.retained.remove_expired(t);
                            }
                        }
                    }),
                );
                broker.compact_soon();
            },
        );
    }

    /// Flush and compact after a sweep deleted something, so the disk space comes
    /// back; one compaction at a time, on its own thread (it is slow).
    fn compact_soon(&self) {
        // A simulated store has nothing to compact, and the model runs no thread.
        if self.sim.is_some() {
            return;
        }
        if !self.compacting.swap(true, Ordering::AcqRel) {
            let store = self.store.clone();
            let compacting = self.compacting.clone();
            std::thread::spawn(move || {
                if let Err(e) = store.writer().barrier().and_then(|_| store.compact()) {
                    tracing::warn!(error = %e, "compaction after expiry failed");
                }
                compacting.store(false, Ordering::Release);
            });
        }
    }
}
