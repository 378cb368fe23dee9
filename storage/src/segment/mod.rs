//! A durable FIFO of opaque records in numbered segment files: the bridges' cache
//! (replayq's properties, in Rust, over memmap2).
//!
//! - `append` frames a record (`format`: version, length, seq, CRC-32) into the write
//!   segment; a new segment starts at `seg_bytes`. In durable mode the record's `done`
//!   runs once it is on disk: a flusher thread takes every span written since its last
//!   round and syncs them together (group commit: one `msync` per batch of appends,
//!   however many producers), then completes the waiters in seq order.
//! - `pop` hands out records in seq order; `ack(seq)` acknowledges everything up to
//!   `seq`. The `COMMIT` file (write tmp, fsync, rename) records the highest
//!   acknowledged seq; segments wholly acknowledged are deleted after it is written.
//! - `max_total_size` bounds the bytes held: past it the oldest segment is dropped,
//!   its records counted (`QueueStats::dropped`) and logged.
//! - Open cuts a torn or corrupt tail of the last segment (logged) and keeps what
//!   precedes it; a corrupt record in an older segment makes the reader skip the rest
//!   of that segment with a log line. It never refuses to start.
//! - Without a directory the queue lives in memory, bounded the same way.
//!
//! Nothing here knows MQTT: a record is bytes.

mod disk;
pub mod format;
mod memory;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use thiserror::Error;

use disk::DiskState;
use memory::MemoryState;

/// Runs once a record is durable (true) or could not be made so (false).
pub type Done = Box<dyn FnOnce(bool) + Send>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub payload: Bytes,
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// `None`: memory only.
    pub dir: Option<PathBuf>,
    pub seg_bytes: u64,
    /// 0: unbounded.
    pub max_total_bytes: u64,
    /// Complete `done` only when the record is synced (default). Off: at once, and the
    /// page cache decides when it reaches the disk (a power loss may lose it; a
    /// crash of the process does not).
    pub durable: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Records appended and not yet acknowledged.
    pub records: u64,
    /// Their bytes (framing included; payload only in memory mode).
    pub bytes: u64,
    pub dropped: u64,
    pub corrupt: u64,
    pub segments: usize,
}

#[derive(Debug, Error)]
pub enum SegmentError {
    #[error("segment queue {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("segment queue is closed")]
    Closed,
    #[error("segment queue {path} is in use by another queue (LOCK held)")]
    Locked { path: String },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Close {
    Open,
    Clean,
    Crash,
}

struct Locked {
    disk: DiskState,
    close: Close,
    /// The flusher has taken a round and not finished it.
    busy: bool,
}

struct Shared {
    state: Mutex<Locked>,
    /// Wakes the flusher.
    work: Condvar,
    /// Signalled after each flusher round (for `sync`).
    round: Condvar,
}

enum Inner {
    Disk {
        shared: Arc<Shared>,
        flusher: Option<JoinHandle<()>>,
    },
    Memory(Mutex<MemoryState>),
}

pub struct SegmentQueue {
    inner: Inner,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the state as consistent as any
    // single step leaves it; keep serving rather than cascade.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SegmentQueue {
    pub fn open(cfg: &QueueConfig) -> Result<SegmentQueue, SegmentError> {
        let Some(dir) = &cfg.dir else {
            return Ok(SegmentQueue {
                inner: Inner::Memory(Mutex::new(MemoryState::new(cfg.max_total_bytes))),
            });
        };
        let disk = DiskState::open(
            dir,
            cfg.seg_bytes.min(u32::MAX as u64) as usize,
            cfg.max_total_bytes,
            cfg.durable,
        )?;
        let shared = Arc::new(Shared {
            state: Mutex::new(Locked {
                disk,
                close: Close::Open,
                busy: false,
            }),
            work: Condvar::new(),
            round: Condvar::new(),
        });
        let s = shared.clone();
        let flusher = std::thread::Builder::new()
            .name("segment-flush".into())
            .spawn(move || flush_loop(&s))
            .map_err(|e| SegmentError::Io {
                path: dir.display().to_string(),
                source: e,
            })?;
        Ok(SegmentQueue {
            inner: Inner::Disk {
                shared,
                flusher: Some(flusher),
            },
        })
    }

    /// Append one record; `done` runs when it is durable (at once in memory or
    /// non-durable mode). Returns its seq.
    pub fn append(&self, payload: &[u8], done: Option<Done>) -> Result<u64, SegmentError> {
        match &self.inner {
            Inner::Memory(m) => {
                let seq = lock(m).append(payload);
                if let Some(done) = done {
                    done(true);
                }
                Ok(seq)
            }
            Inner::Disk { shared, .. } => {
                let mut g = lock(&shared.state);
                if g.close != Close::Open {
                    drop(g);
                    if let Some(done) = done {
                        done(false);
                    }
                    return Err(SegmentError::Closed);
                }
                let seq = match g.disk.append(payload) {
                    Ok(seq) => seq,
                    Err(e) => {
                        drop(g);
                        if let Some(done) = done {
                            done(false);
                        }
                        return Err(e);
                    }
                };
                let durable = g.disk.durable;
                let now = match done {
                    Some(done) if durable => {
                        g.disk.waiters.push_back((seq, done));
                        None
                    }
                    done => done,
                };
                drop(g);
                if durable {
                    shared.work.notify_one();
                }
                if let Some(done) = now {
                    done(true);
                }
                Ok(seq)
            }
        }
    }

    /// The next records in order: at most `max_count`, and no more once `max_bytes`
    /// of payload are taken (at least one record when there is any).
    pub fn pop(&self, max_count: usize, max_bytes: usize) -> Vec<Record> {
        match &self.inner {
            Inner::Memory(m) => lock(m).pop(max_count, max_bytes),
            Inner::Disk { shared, .. } => {
                let mut g = lock(&shared.state);
                let out = g.disk.pop(max_count, max_bytes);
                let wake = !g.disk.delete.is_empty();
                drop(g);
                if wake {
                    shared.work.notify_one();
                }
                out
            }
        }
    }

    /// Acknowledge every record up to and including `seq`.
    pub fn ack(&self, seq: u64) {
        match &self.inner {
            Inner::Memory(m) => lock(m).ack(seq),
            Inner::Disk { shared, .. } => {
                lock(&shared.state).disk.ack(seq);
                shared.work.notify_one();
            }
        }
    }

    pub fn stats(&self) -> QueueStats {
        match &self.inner {
            Inner::Memory(m) => {
                let m = lock(m);
                QueueStats {
                    records: m.depth(),
                    bytes: m.bytes(),
                    dropped: m.dropped,
                    corrupt: 0,
                    segments: 0,
                }
            }
            Inner::Disk { shared, .. } => {
                let g = lock(&shared.state);
                QueueStats {
                    records: g.disk.depth(),
                    bytes: g.disk.unacked_bytes(),
                    dropped: g.disk.counters.dropped,
                    corrupt: g.disk.counters.corrupt,
                    segments: g.disk.segment_count(),
                }
            }
        }
    }

    /// Wait until everything appended so far is durable and every acknowledgement is
    /// committed; false if `timeout` passed first.
    pub fn sync(&self, timeout: Duration) -> bool {
        let Inner::Disk { shared, .. } = &self.inner else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        let mut g = lock(&shared.state);
        loop {
            let d = &g.disk;
            if !g.busy
                && d.dirty.is_empty()
                && d.waiters.is_empty()
                && d.commit.is_none()
                && d.delete.is_empty()
                && !d.dir_dirty
            {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            shared.work.notify_one();
            g = shared
                .round
                .wait_timeout(g, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// The directory, for a disk queue.
    pub fn dir(&self) -> Option<PathBuf> {
        match &self.inner {
            Inner::Memory(_) => None,
            Inner::Disk { shared, .. } => Some(lock(&shared.state).disk.dir().to_path_buf()),
        }
    }

    /// Stop as a killed process would: the flusher ends after its current round and
    /// nothing more is synced or committed. For tests of recovery.
    #[doc(hidden)]
    pub fn crash(mut self) {
        self.stop(Close::Crash);
    }

    /// Test accessor: (path, first seq, written length) of the write segment, and
    /// where synced data ends in it.
    #[doc(hidden)]
    pub fn write_segment(&self) -> Option<(PathBuf, u64, usize, usize)> {
        let Inner::Disk { shared, .. } = &self.inner else {
            return None;
        };
        let g = lock(&shared.state);
        let (path, first, len) = g.disk.write_segment();
        let (no, end) = g.disk.synced_end;
        let (wno, _) = g.disk.write_pos();
        Some((
            path,
            first,
            len,
            if no == wno { end } else { format::SEG_HEADER },
        ))
    }

    fn stop(&mut self, how: Close) {
        if let Inner::Disk { shared, flusher } = &mut self.inner {
            lock(&shared.state).close = how;
            shared.work.notify_all();
            if let Some(f) = flusher.take() {
                let _ = f.join();
            }
        }
    }
}

impl Drop for SegmentQueue {
    fn drop(&mut self) {
        self.stop(Close::Clean);
    }
}

struct Round {
    dirty: Vec<disk::Dirty>,
    upto: u64,
    pos: (u64, usize),
    dir: Option<PathBuf>,
    commit: Option<(PathBuf, u64)>,
    delete: Vec<PathBuf>,
}

fn flush_loop(shared: &Shared) {
    loop {
        let round = {
            let mut g = lock(&shared.state);
            loop {
                if g.close == Close::Crash {
                    return;
                }
                let d = &g.disk;
                if !d.dirty.is_empty()
                    || d.dir_dirty
                    || d.commit.is_some()
                    || !d.delete.is_empty()
                    || !d.waiters.is_empty()
                {
                    break;
                }
                if g.close == Close::Clean {
                    return;
                }
                g = shared.work.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            g.busy = true;
            let d = &mut g.disk;
            let dir = d.dir().to_path_buf();
            Round {
                dirty: std::mem::take(&mut d.dirty),
                upto: d.written_seq,
                pos: d.write_pos(),
                dir: std::mem::take(&mut d.dir_dirty).then(|| dir.clone()),
                commit: d.commit.take().map(|seq| (dir, seq)),
                delete: std::mem::take(&mut d.delete),
            }
        };
        let ok = sync_round(&round);
        let done = {
            let mut g = lock(&shared.state);
            g.busy = false;
            if ok {
                g.disk.synced_end = round.pos;
            }
            let mut done = Vec::new();
            while g
                .disk
                .waiters
                .front()
                .is_some_and(|(s, _)| *s <= round.upto)
            {
                if let Some((_, d)) = g.disk.waiters.pop_front() {
                    done.push(d);
                }
            }
            done
        };
        shared.round.notify_all();
        for d in done {
            d(ok);
        }
    }
}

/// One group commit: the new files' directory entry, every written span, then the
/// commit file, then the deletions it allows. False if data could not be synced.
fn sync_round(r: &Round) -> bool {
    let mut ok = true;
    if let Some(dir) = &r.dir {
        if let Err(e) = sync_dir(dir) {
            tracing::error!(dir = %dir.display(), error = %e, "segment queue: cannot sync the directory");
            ok = false;
        }
    }
    for d in &r.dirty {
        if let Err(e) = d.map.flush_range(d.from, d.to - d.from) {
            tracing::error!(error = %e, "segment queue: msync failed; records not acknowledged");
            ok = false;
        }
    }
    if let Some((dir, seq)) = &r.commit {
        if let Err(e) = write_commit(dir, *seq) {
            tracing::error!(dir = %dir.display(), error = %e, "segment queue: cannot write the commit file");
            return ok;
        }
    }
    for path in &r.delete {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "segment queue: cannot delete an acknowledged segment");
        }
    }
    ok
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn write_commit(dir: &Path, seq: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join("COMMIT.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&format::encode_commit(seq))?;
    f.sync_all()?;
    std::fs::rename(&tmp, disk::commit_path(dir))?;
    sync_dir(dir)
}
