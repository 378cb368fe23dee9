//! `emqx_ctl trace start client <id> | topic <filter> <file> [level]`: every event of
//! that client (connect, subscribe, unsubscribe, its publishes, deliveries to it,
//! acks, drops, disconnect), or every message published to a topic the filter
//! matches (and its deliveries), is written to the file while the trace runs.
//!
//! The trace hooks (named `trace`) are registered only while at least one trace
//! runs: untraced traffic then pays the hook chain's one relaxed load per point and
//! nothing else. While a trace runs, every event pays one read lock and a compare of
//! the client id (or a topic match) per trace. A line is written with one `write` to
//! the file (no buffer to lose at a crash); a failed write is logged once per trace.
//!
//! Levels: `debug` and `all` (the default) write everything; `info` and above only
//! connect and disconnect (the packet events are debug, as in EMQX).

mod ctl;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::LogLevel;
use crate::hooks::{ClientInfo, Hook, Hooks, PublishResult};
use crate::message::{now_ms, Message};

pub use ctl::run_command;

const HOOK_NAME: &str = "trace";
/// Below every other hook: the trace sees a message as the others left it.
const PRIORITY: i32 = -2000;
/// Payload bytes written per line at most.
const PAYLOAD_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Client(String),
    Topic(String),
}

impl Target {
    /// EMQX's name for the kind (`clientid`, `topic`).
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Client(_) => "clientid",
            Target::Topic(_) => "topic",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Target::Client(s) | Target::Topic(s) => s,
        }
    }
}

/// One running trace.
#[derive(Debug)]
pub struct Trace {
    pub target: Target,
    /// None: `all`.
    pub level: Option<LogLevel>,
    pub path: PathBuf,
    file: File,
    failed: AtomicBool,
}

impl Trace {
    fn write(&self, level: LogLevel, line: std::fmt::Arguments<'_>) {
        if self.level.is_some_and(|l| level < l) {
            return;
        }
        let ms = now_ms();
        let text = format!(
            "{}.{:03} [{}] {line}\n",
            crate::sys::datetime(ms),
            ms % 1000,
            level.as_str()
        );
        if let Err(e) = (&self.file).write_all(text.as_bytes()) {
            if !self.failed.swap(true, Ordering::Relaxed) {
                tracing::error!(file = %self.path.display(), error = %e, "cannot write the trace file");
            }
        }
    }
}

/// The running traces of a node.
#[derive(Debug, Default)]
pub struct Traces {
    running: RwLock<Vec<Arc<Trace>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("already_existed")]
    AlreadyExisted,
    #[error("not_found")]
    NotFound,
    #[error("cannot open {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

fn payload_text(msg: &Message) -> String {
    let end = msg.payload.len().min(PAYLOAD_MAX);
    let mut text = String::from_utf8_lossy(&msg.payload[..end]).into_owned();
    if msg.payload.len() > PAYLOAD_MAX {
        text.push_str("...");
    }
    text
}

impl Traces {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Trace>>> {
        self.running.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_lock(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Trace>>> {
        self.running.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn list(&self) -> Vec<Arc<Trace>> {
        self.read().clone()
    }

    /// Start tracing `target` into `path` (created or appended to).
    pub fn start(
        self: &Arc<Self>,
        hooks: &Hooks,
        target: Target,
        level: Option<LogLevel>,
        path: PathBuf,
    ) -> Result<(), TraceError> {
        let mut running = self.write_lock();
        if running.iter().any(|t| t.target == target) {
            return Err(TraceError::AlreadyExisted);
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| TraceError::File {
                path: path.display().to_string(),
                source,
            })?;
        running.push(Arc::new(Trace {
            target,
            level,
            path,
            file,
            failed: AtomicBool::new(false),
        }));
        if running.len() == 1 {
            self.register(hooks);
        }
        Ok(())
    }

    pub fn stop(&self, hooks: &Hooks, target: &Target) -> Result<(), TraceError> {
        let mut running = self.write_lock();
        let before = running.len();
        running.retain(|t| t.target != *target);
        if running.len() == before {
            return Err(TraceError::NotFound);
        }
        if running.is_empty() {
            hooks.remove_all(HOOK_NAME);
        }
        Ok(())
    }

    /// Each trace of client `id`.
    fn of_client(&self, id: &str, f: impl Fn(&Trace)) {
        for t in self.read().iter() {
            if matches!(&t.target, Target::Client(c) if c == id) {
                f(t);
            }
        }
    }

    /// Each trace of a message: its publisher's or subscriber's (`client`), or its
    /// topic's.
    fn of_message(&self, client: Option<&str>, msg: &Message, f: impl Fn(&Trace)) {
        for t in self.read().iter() {
            let hit = match &t.target {
                Target::Client(c) => client == Some(c.as_str()),
                Target::Topic(filter) => crate::topic::matches(filter, msg.topic_str()),
            };
            if hit {
                f(t);
            }
        }
    }

    fn register(self: &Arc<Self>, hooks: &Hooks) {
        use LogLevel::{Debug, Info};
        let t = self.clone();
        let mut added = vec![hooks.add(
            HOOK_NAME,
            PRIORITY,
            Hook::connected(move |info, ev| {
                t.of_client(&info.client_id, |tr| {
                    tr.write(
                        Info,
                        format_args!(
                            "{} CONNECTED from {} (proto_ver {}, clean_start {}, keepalive {}, session_present {})",
                            info.client_id,
                            info.peer,
                            info.protocol.level(),
                            ev.clean_start,
                            ev.keepalive_s,
                            ev.session_present
                        ),
                    )
                })
            }),
        )];
        let t = self.clone();
        added.push(hooks.add(
            HOOK_NAME,
            PRIORITY,
            Hook::disconnected(move |info, reason, _| {
                t.of_client(&info.client_id, |tr| {
                    tr.write(
                        Info,
                        format_args!("{} DISCONNECTED ({})", info.client_id, reason.as_str()),
                    )
                })
            }),
        ));
        let t = self.clone();
        added.push(hooks.add(
            HOOK_NAME,
            PRIORITY,
            Hook::subscribed(move |info, filter, opts| {
                t.of_client(&info.client_id, |tr| {
                    tr.write(
                        Debug,
                        format_args!(
                            "{} SUBSCRIBE {filter} (qos {})",
                            info.client_id, opts.qos as u8
                        ),
                    )
                })
            }),
        ));
        let t = self.clone();
        added.push(hooks.add(
            HOOK_NAME,
            PRIORITY,
            Hook::unsubscribed(move |info, filter| {
                t.of_client(&info.client_id, |tr| {
                    tr.write(
                        Debug,
                        format_args!("{} UNSUBSCRIBE {filter}", info.client_id),
                    )
                })
            }),
        ));
        let t = self.clone();
        added.push(hooks.add(
            HOOK_NAME,
            PRIORITY,
            Hook::message_publish(move |from, msg| {
                let client = from.map(|c| &*c.client_id);
                t.of_message(client, msg, |tr| {
                    tr.write(
                        Debug,
                        format_args!(
                            "{} PUBLISH to {} (qos {}, retain {}, {} bytes): {}",
                            client.unwrap_or("-"),
                            msg.topic_str(),
                            msg.qos as u8,
                            msg.retain,
                            msg.payload.len(),
                            payload_text(msg)
                        ),
                    )
                });
                PublishResult::Continue
            }),
        ));
        let t = self.clone();
        added.push(hooks.add(
            HOOK_NAME,
            PRIORITY,
            Hook::delivered(move |to: &Arc<ClientInfo>, msg| {
                t.of_message(Some(&to.client_id), msg, |tr| {
                    tr.write(
                        Debug,
                        format_args!(
                            "{} DELIVER {} from {} ({} bytes): {}",
                            to.client_id,
                            msg.topic_str(),
                            if msg.from.is_empty() { "-" } else { &msg.from },
                            msg.payload.len(),
                            payload_text(msg)
                        ),
                    )
                })
            }),
        ));
        let t = self.clone();
        added.push(hooks.add(
            HOOK_NAME,
            PRIORITY,
            Hook::acked(move |by, msg| {
                t.of_message(Some(&by.client_id), msg, |tr| {
                    tr.write(
                        Debug,
                        format_args!("{} ACKED {}", by.client_id, msg.topic_str()),
                    )
                })
            }),
        ));
        let t = self.clone();
        added.push(hooks.add(
            HOOK_NAME,
            PRIORITY,
            Hook::dropped(move |msg, reason, subscriber| {
                let client = subscriber.map(|c| &**c);
                t.of_message(client, msg, |tr| {
                    tr.write(
                        Debug,
                        format_args!(
                            "{} DROPPED {} ({})",
                            client.unwrap_or("-"),
                            msg.topic_str(),
                            reason.as_str()
                        ),
                    )
                })
            }),
        ));
        for r in added {
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot register a trace hook");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;

    use super::*;
    use crate::codec::{ProtocolVersion, QoS};
    use crate::hooks::PublishOutcome;

    fn client(id: &str) -> Arc<ClientInfo> {
        Arc::new(ClientInfo::new(
            Arc::from(id),
            "127.0.0.1:40000".parse().unwrap(),
            ProtocolVersion::V3_1_1,
            Arc::from("external"),
            Arc::from("external"),
        ))
    }

    fn msg(topic: &'static str) -> Message {
        Message {
            topic: Bytes::from_static(topic.as_bytes()),
            payload: Bytes::from_static(b"p"),
            qos: QoS::AtMostOnce,
            retain: false,
            from: Arc::from("c"),
            publish_ms: 1,
            expiry_ms: 0,
            properties: Default::default(),
        }
    }

    /// ns per `message.publish` of an untraced client: with no trace running (the
    /// hooks are not registered) and with a client and a topic trace of others.
    fn publish_ns(hooks: &Hooks) -> f64 {
        const N: u32 = 1_000_000;
        let c = client("untraced");
        let mut m = msg("a/b");
        let start = Instant::now();
        let mut published = 0u32;
        for _ in 0..N {
            let out = hooks.message_publish(Some(&c), std::hint::black_box(&mut m));
            published += (out == PublishOutcome::Publish) as u32;
        }
        assert_eq!(published, N);
        start.elapsed().as_nanos() as f64 / N as f64
    }

    #[test]
    fn traces_write_only_their_target_and_untraced_traffic_is_cheap() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = Hooks::new();
        let traces = Arc::new(Traces::default());
        let idle = publish_ns(&hooks);
        let file = dir.path().join("c.log");
        traces
            .start(&hooks, Target::Client("traced".into()), None, file.clone())
            .unwrap();
        let topic_file = dir.path().join("t.log");
        traces
            .start(
                &hooks,
                Target::Topic("t/#".into()),
                None,
                topic_file.clone(),
            )
            .unwrap();
        let running = publish_ns(&hooks);
        eprintln!(
            "trace: message.publish of an untraced client: {idle:.2} ns/call with no trace, \
             {running:.2} ns/call with a client and a topic trace of others"
        );
        // The traced client's publish is written; nobody else's.
        hooks.message_publish(Some(&client("traced")), &mut msg("x/y"));
        hooks.message_publish(Some(&client("other")), &mut msg("t/1"));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("traced PUBLISH to x/y"), "{text}");
        assert_eq!(text.lines().count(), 1, "{text}");
        let topic_text = std::fs::read_to_string(&topic_file).unwrap();
        assert!(topic_text.contains("other PUBLISH to t/1"), "{topic_text}");
        assert_eq!(topic_text.lines().count(), 1, "{topic_text}");
        // Stopping the last trace removes the hooks.
        traces
            .stop(&hooks, &Target::Client("traced".into()))
            .unwrap();
        traces.stop(&hooks, &Target::Topic("t/#".into())).unwrap();
        assert!(!hooks.is_registered(crate::hooks::HookPoint::MessagePublish));
        assert!(matches!(
            traces.stop(&hooks, &Target::Topic("t/#".into())),
            Err(TraceError::NotFound)
        ));
    }
}
