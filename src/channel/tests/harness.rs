//! The harness: a real broker (RocksDB in a temp dir, fsync off), channels opened
//! without sockets (`connection::accept::open`), a simulated clock, and the moves of
//! one driver turn (`connection::Connection::run`): bytes in, mailbox events,
//! output out, `close` + `detach` at the end.

use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::broker::Broker;
use crate::channel::{Channel, Close, Now};
use crate::codec::{self, Connect, Packet, ProtocolVersion};
use crate::config::{Config, FsyncPolicy, Zone, ZoneConfig};
use crate::connection::accept;

/// The simulated wall clock runs a day ahead of the real one: a stray read of the
/// real wall clock (see `Sim::sweep`) never finds a simulated deadline due.
const WALL_AHEAD_MS: u64 = 86_400_000;

/// How long the harness waits for the store writer's answers at most.
pub(super) const STORE_WAIT: Duration = Duration::from_secs(5);

/// Simulated time: a real `Instant` base plus an offset the test moves.
pub(super) struct Clock {
    base_at: Instant,
    base_ms: u64,
    offset: Duration,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            base_at: Instant::now(),
            base_ms: crate::message::now_ms() + WALL_AHEAD_MS,
            offset: Duration::ZERO,
        }
    }

    pub fn now(&self) -> Now {
        Now {
            at: self.base_at + self.offset,
            ms: self.base_ms + self.offset.as_millis() as u64,
        }
    }

    pub fn advance(&mut self, by: Duration) {
        self.offset += by;
    }

    /// Move to `at` unless that is in the past.
    pub fn advance_to(&mut self, at: Instant) {
        self.offset = self.offset.max(at.saturating_duration_since(self.base_at));
    }
}

/// A broker and the clock its channels run on.
pub(super) struct Sim {
    pub broker: Arc<Broker>,
    pub zone: Arc<Zone>,
    pub clock: Clock,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.broker.store.shutdown();
    }
}

/// What a closed connection left: why, and the last bytes it wrote, decoded.
pub(super) struct Ended {
    pub close: Close,
    pub output: Vec<Packet>,
}

impl Sim {
    /// A broker whose `external` zone `tune` adjusts (hibernation is off: that is
    /// the driver's business).
    pub fn new(tune: impl FnOnce(&mut ZoneConfig)) -> Sim {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::defaults(dir.path());
        config.node.data_dir = dir.path().join("data");
        config.storage.fsync = FsyncPolicy::None;
        config.storage.batch_window = Duration::ZERO;
        let zone = config.zones.get_mut("external").expect("external zone");
        zone.hibernate_after = None;
        tune(zone);
        let broker = Broker::open(config).expect("broker opens");
        let zone = broker.zone("external");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Sim {
            broker,
            zone,
            clock: Clock::new(),
            rt,
            _dir: dir,
        }
    }

    pub fn now(&self) -> Now {
        self.clock.now()
    }

    /// Open a channel for `connect`. `old` is the connection holding the session, if
    /// any: a takeover kicks it, and it finishes on its next turn (returned as
    /// `Ended`), as its driver would. A refusal returns the CONNACK.
    pub fn connect(
        &mut self,
        connect: Connect,
        old: Option<Conn>,
    ) -> (Result<Conn, Vec<Packet>>, Option<Ended>) {
        let version = connect.protocol;
        let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
        let (broker, zone, clock) = (self.broker.clone(), self.zone.clone(), &self.clock);
        let site = crate::connection::Site::detached(broker.clone(), zone, Arc::from("external"));
        let mut old = old;
        let mut ended = None;
        let opened = self.rt.block_on(async {
            let now = || clock.now();
            let mut open =
                std::pin::pin!(accept::open(&site, peer, connect, Default::default(), &now));
            // Bounded: the store answers within milliseconds, a takeover within a turn.
            for _ in 0..5_000 {
                if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), &mut open).await {
                    return Some(r);
                }
                if let Some(mut conn) = old.take() {
                    match conn.take_mailbox(clock.now()) {
                        Err(close) => ended = Some(conn.finish(close, clock.now())),
                        Ok(_) => old = Some(conn),
                    }
                }
            }
            None
        });
        assert!(old.is_none(), "the connection taken over was never kicked");
        let opened = opened.expect("accept::open finished within 5 s");
        let result = match opened {
            Ok(channel) => Ok(Conn {
                channel,
                version,
                rbuf: BytesMut::new(),
            }),
            Err(accept::Refused(bytes)) => {
                let mut buf = bytes.unwrap_or_default();
                Err(decode_all(&mut buf, version))
            }
        };
        (result, ended)
    }

    /// Wait until everything submitted to the store writer so far has been answered
    /// (the writer completes in order), at most `STORE_WAIT`.
    pub fn barrier(&self) {
        let (tx, rx) = mpsc::channel();
        self.broker.store.writer().submit(
            Vec::new(),
            Box::new(move |_| {
                let _ = tx.send(());
            }),
        );
        rx.recv_timeout(STORE_WAIT)
            .expect("the store writer answered within 5 s");
    }

    /// The broker's periodic sweep on the simulated clock: session expiry, delayed
    /// wills and retained expiry at the simulated wall-clock time.
    pub fn sweep(&self) {
        self.broker.sweep_expired_at(self.now().ms);
    }
}

/// One client's connection as its driver holds it: the channel and the read buffer.
pub(super) struct Conn {
    pub channel: Channel,
    pub version: ProtocolVersion,
    rbuf: BytesMut,
}

impl Conn {
    /// The client sent `packet`: its bytes arrive and are handled.
    pub fn send(&mut self, packet: &Packet, now: Now) -> Result<(), Close> {
        let before = self.rbuf.len();
        codec::encode(packet, self.version, &mut self.rbuf).expect("a client packet encodes");
        self.channel.bytes_read(self.rbuf.len() - before, now);
        self.channel.handle_bytes(&mut self.rbuf, now)
    }

    /// Take the mailbox as `Connection::run` does: events (while the channel takes
    /// them), the backlog signal, room, then a kick. True when something was taken.
    pub fn take_mailbox(&mut self, now: Now) -> Result<bool, Close> {
        let mailbox = self.channel.mailbox().clone();
        let mut any = false;
        if self.channel.taking_events() {
            let events = mailbox.take_all();
            if !events.is_empty() {
                any = true;
                self.channel.handle_events(events, now)?;
                // Packets held back for a store read go on once it is answered.
                self.channel.handle_bytes(&mut self.rbuf, now)?;
            }
            if mailbox.take_behind() {
                any = true;
                self.channel.behind(now);
            }
        }
        if mailbox.take_room() {
            any = true;
            self.channel.resume_reading(&mut self.rbuf, now)?;
        }
        if let Some(reason) = mailbox.take_kick() {
            self.kicked(now)?;
            return Err(Close::Kicked(reason));
        }
        self.channel.flush_store_ops();
        // The driver runs hook decisions here (`run_decisions`); these tests register
        // no hook, so there must be none.
        assert!(
            self.channel.take_decisions().is_empty(),
            "a hook decision without a registered hook"
        );
        Ok(any)
    }

    /// The driver's first move on a kick: what the client sent before it was
    /// replaced still counts, also what waited for a store read that will not be
    /// answered now (a DISCONNECT among it ends the connection its way).
    pub fn kicked(&mut self, now: Now) -> Result<(), Close> {
        self.channel.end_read_pause();
        self.channel.handle_bytes(&mut self.rbuf, now)
    }

    /// A store read or write the channel waits for is out (queue pages and
    /// retained lookups come from the reader pool, whose answers a writer barrier
    /// does not wait for).
    pub fn awaiting_store(&self) -> bool {
        self.channel.awaiting_store()
    }

    /// Everything the channel wrote, decoded, as the client reads it.
    pub fn take_output(&mut self, now: Now) -> Vec<Packet> {
        let mut buf = BytesMut::from(self.channel.output());
        let n = buf.len();
        let packets = decode_all(&mut buf, self.version);
        if n > 0 {
            self.channel.written(n, now);
        }
        packets
    }

    /// End the connection as the driver's `finish` does: `close` (DISCONNECT and the
    /// will decision), the last output, `detach`.
    pub fn finish(mut self, close: Close, now: Now) -> Ended {
        let publish_will = self.channel.close(&close, now);
        let output = self.take_output(now);
        self.channel.detach(publish_will, now);
        Ended { close, output }
    }
}

/// Every packet in `buf`; the channel must never write a partial or bad one.
fn decode_all(buf: &mut BytesMut, version: ProtocolVersion) -> Vec<Packet> {
    let mut packets = Vec::new();
    loop {
        match codec::decode(buf, version, usize::MAX) {
            Ok(Some(p)) => packets.push(p),
            Ok(None) => break,
            Err(e) => panic!("the channel wrote an undecodable packet: {e}"),
        }
    }
    assert!(buf.is_empty(), "the channel wrote a partial packet");
    packets
}
