//! The open-file ceiling: how many client connections this process can hold.
//!
//! Every connection is a file descriptor, and so is everything else the node keeps
//! open. At start the node raises its `RLIMIT_NOFILE` soft limit to the hard limit and
//! splits it (see [`FileBudget::for_limit`]): RocksDB's table files, a fixed reserve,
//! the listeners, the refusals in flight, and what is left is the connection ceiling.
//! The ceiling is per process, as the limit is, so it is a process-wide count: a
//! [`Slot`] held by each connection (hibernated or not) for its whole life.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

/// RocksDB's table cache at most (`max_open_files`); the store was opened with 512
/// before the budget existed, and it rarely needs more.
const STORE_FILES_MAX: u64 = 512;
/// ... and at least, however low the limit (RocksDB needs a few table files open).
const STORE_FILES_MIN: u64 = 16;
/// Everything else the node holds, measured at ~28 on an idle node: stdio, the log
/// file, RocksDB's own files (WAL, MANIFEST, LOG, LOCK, the directory handles it
/// fsyncs), the runtime's epoll/eventfd/signal descriptors, the hibernation poller,
/// the control socket and a few `emqx_ctl` connections at once, plus headroom.
const FIXED_RESERVE: u64 = 64;
/// Refused connections still open while they get their CONNACK (see `refuse`).
pub const REFUSALS_IN_FLIGHT: u64 = 32;

/// How the open-file limit is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileBudget {
    /// `RLIMIT_NOFILE` after raising: the soft limit, and the hard limit it was raised to.
    pub soft: u64,
    pub hard: u64,
    /// RocksDB's `max_open_files`: soft / 16, within 16..=512.
    pub store: u64,
    /// Client connections at once: soft - store - 64 - listeners - 32.
    pub connections: u64,
}

impl FileBudget {
    /// The split of `soft` open files for a node with `listeners` listening sockets.
    pub fn for_limit(soft: u64, hard: u64, listeners: usize) -> FileBudget {
        let store = (soft / 16).clamp(STORE_FILES_MIN, STORE_FILES_MAX);
        let reserved = store + FIXED_RESERVE + listeners as u64 + REFUSALS_IN_FLIGHT;
        FileBudget {
            soft,
            hard,
            store,
            connections: soft.saturating_sub(reserved),
        }
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit, split it and apply the split
/// (the ceiling, and RocksDB's share for [`store_open_files`]). Logs the result.
pub fn init(listeners: usize) -> FileBudget {
    let (soft, hard) = match raise_nofile() {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit (RLIMIT_NOFILE)");
            // Without the limit, assume Linux's usual default soft limit.
            (1024, 1024)
        }
    };
    let budget = FileBudget::for_limit(soft, hard, listeners);
    CEILING.store(budget.connections as usize, Ordering::Relaxed);
    STORE_FILES.store(
        i32::try_from(budget.store).unwrap_or(i32::MAX),
        Ordering::Relaxed,
    );
    tracing::info!(
        open_files = budget.soft,
        hard_limit = budget.hard,
        store_files = budget.store,
        max_connections = budget.connections,
        "open-file limit raised; connection ceiling set"
    );
    if budget.connections < 1000 {
        tracing::warn!(
            open_files = budget.soft,
            max_connections = budget.connections,
            "low open-file limit: raise it (README, \"Scale and tuning\")"
        );
    }
    budget
}

/// (soft, hard) after setting soft = hard.
fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            // Linux refuses a soft limit above fs.nr_open (a hard limit of "unlimited").
            tracing::warn!(
                soft = limit.rlim_cur,
                hard = limit.rlim_max,
                error = %std::io::Error::last_os_error(),
                "cannot raise the open-file soft limit to the hard limit"
            );
        }
    }
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Connections allowed at once; unlimited until [`init`] ran (unit tests).
static CEILING: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Connections holding a [`Slot`] now.
static OPEN: AtomicUsize = AtomicUsize::new(0);
/// RocksDB's `max_open_files` from the budget; the store's old fixed 512 until then.
static STORE_FILES: AtomicI32 = AtomicI32::new(STORE_FILES_MAX as i32);

/// The connection ceiling [`init`] set (usize::MAX before).
pub fn max_connections() -> usize {
    CEILING.load(Ordering::Relaxed)
}

/// Connections holding a slot now (the `too_many_connections` alarm's numerator).
pub fn open_connections() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// RocksDB's share of the open-file limit (its `max_open_files`).
pub fn store_open_files() -> i32 {
    STORE_FILES.load(Ordering::Relaxed)
}

/// One connection's place under the ceiling; given back when dropped. Zero-sized, so
/// a hibernated connection pays nothing for it.
#[derive(Debug)]
pub struct Slot(());

impl Slot {
    /// A slot, or None at the ceiling.
    pub fn take() -> Option<Slot> {
        let ceiling = CEILING.load(Ordering::Relaxed);
        OPEN.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
            (open < ceiling).then_some(open + 1)
        })
        .ok()
        .map(|_| Slot(()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_is_the_limit_minus_the_reserve() {
        let b = FileBudget::for_limit(20_000, 20_000, 5);
        assert_eq!(b.store, 512);
        assert_eq!(b.connections, 20_000 - 512 - 64 - 5 - 32);
        // The 19,000 idle connections fit under a 20,000-file limit.
        assert!(b.connections >= 19_000);
    }

    #[test]
    fn a_low_limit_shrinks_the_store_share_first() {
        let b = FileBudget::for_limit(300, 300, 5);
        assert_eq!(b.store, 18);
        assert_eq!(b.connections, 300 - 18 - 64 - 5 - 32);
        let tiny = FileBudget::for_limit(64, 64, 5);
        assert_eq!(tiny.store, 16);
        assert_eq!(tiny.connections, 0, "never below zero");
        let big = FileBudget::for_limit(1 << 20, 1 << 20, 5);
        assert_eq!(big.store, 512, "RocksDB's share stays at 512");
    }
}
