//! Hibernation: idle connections that hold no task.
//!
//! A connection with nothing to do for `hibernate_after` (no pending writes, nothing
//! in flight, nothing in its mailbox) gives up its task and its tokio registration.
//! Its state and its socket wait here instead, the socket in one shared epoll set,
//! and whatever would have woken the task wakes the connection: its socket turning
//! readable (a packet, EOF, an error), a waker it handed out being woken (its
//! mailbox got an event), its deadline passing (keepalive), or shutdown. Waking takes
//! the state out and hands it to the `resume` callback, which spawns a task that goes
//! on where the old one stopped. EMQX hibernates idle connection processes for the
//! same reason (`hibernate_after`).
//!
//! A parked connection costs its state plus a map entry: no future, no timer entry,
//! no reactor slot. Parking and waking cost a few syscalls each.
//!
//! Some input needs no task at all: before waking an item whose socket turned
//! readable, the poller asks `on_readable`, which may answer it in place (a plain
//! connection's PINGREQs: a keepalive costs two syscalls, not a wake-up and a task
//! that lives until the next `hibernate_after`) and give the item its next deadline.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

/// Longest sleep of the poller thread: it notices a dropped hibernator this soon.
const MAX_POLL: Duration = Duration::from_secs(1);
/// Events taken per `epoll_wait`.
const EVENTS_PER_POLL: usize = 256;

type Resume<T> = dyn Fn(T, TcpStream) + Send + Sync;
type OnReadable<T> = dyn Fn(&mut T, &TcpStream) -> Readable + Send + Sync;

/// What `on_readable` did with a parked item's readable socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readable {
    /// Handled in place: the item stays parked, now until this deadline.
    Handled(Option<Instant>),
    /// Needs the item's task: wake it.
    Wake,
}

pub struct Hibernator<T: Send + 'static> {
    epoll: OwnedFd,
    resume: Box<Resume<T>>,
    on_readable: Box<OnReadable<T>>,
    state: Mutex<State<T>>,
    next_token: AtomicU64,
}

struct State<T> {
    parked: HashMap<u64, Parked<T>>,
    deadlines: BTreeSet<(Instant, u64)>,
    closing: bool,
}

struct Parked<T> {
    item: T,
    socket: TcpStream,
    deadline: Option<Instant>,
}

impl<T: Send + 'static> Hibernator<T> {
    /// A hibernator whose woken items go to `resume` (called on whichever thread
    /// woke them: the poller, a waker's caller, or `shutdown`'s caller), and its
    /// poller thread. `on_readable` runs on the poller, under the hibernator's lock,
    /// when a parked item's socket has data (not EOF or an error): it must not block.
    pub fn start(
        resume: impl Fn(T, TcpStream) + Send + Sync + 'static,
        on_readable: impl Fn(&mut T, &TcpStream) -> Readable + Send + Sync + 'static,
    ) -> io::Result<Arc<Self>> {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        let hibernator = Arc::new(Hibernator {
            epoll,
            resume: Box::new(resume),
            on_readable: Box::new(on_readable),
            state: Mutex::new(State {
                parked: HashMap::new(),
                deadlines: BTreeSet::new(),
                closing: false,
            }),
            next_token: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&hibernator);
        std::thread::Builder::new()
            .name("quay-hibernate".into())
            .spawn(move || poll_loop(weak))?;
        Ok(hibernator)
    }

    /// Park `item` with its socket until the socket is readable, `deadline` passes,
    /// the waker given to `arm` is woken, or `shutdown`. `arm` registers that waker
    /// where events arrive and returns false if some are already waiting (the item
    /// is then woken at once). Err gives both back: the hibernator is shutting down
    /// or the socket cannot be watched.
    pub fn park(
        self: &Arc<Self>,
        item: T,
        socket: TcpStream,
        deadline: Option<Instant>,
        arm: impl FnOnce(Waker) -> bool,
    ) -> Result<(), (T, TcpStream)> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = self.state();
            if state.closing {
                return Err((item, socket));
            }
            // Level-triggered and one-shot: data that arrived before this call is
            // reported at once, and one event wakes the item once.
            let mut event = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
                u64: token,
            };
            // SAFETY: both descriptors are open (we own them); `event` outlives the call.
            let rc = unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    socket.as_raw_fd(),
                    &mut event,
                )
            };
            if rc < 0 {
                tracing::warn!(error = %io::Error::last_os_error(), "cannot hibernate a connection");
                return Err((item, socket));
            }
            if let Some(at) = deadline {
                state.deadlines.insert((at, token));
            }
            state.parked.insert(
                token,
                Parked {
                    item,
                    socket,
                    deadline,
                },
            );
        }
        // Armed after the entry exists, so that a wake-up from now on finds it.
        let waker = Waker::from(Arc::new(TokenWaker {
            hibernator: Arc::downgrade(self),
            token,
        }));
        if !arm(waker) {
            self.wake(token);
        }
        Ok(())
    }

    /// Resume the item parked under `token`, if it still is.
    fn wake(&self, token: u64) {
        let parked = {
            let mut state = self.state();
            let Some(parked) = state.parked.remove(&token) else {
                return;
            };
            if let Some(at) = parked.deadline {
                state.deadlines.remove(&(at, token));
            }
            parked
        };
        self.unwatch(parked.socket.as_raw_fd());
        (self.resume)(parked.item, parked.socket);
    }

    /// Offer the item under `token` to `on_readable`; true if it stays parked (or is
    /// gone already), its socket watched again for the next event.
    fn handled_in_place(&self, token: u64) -> bool {
        let mut state = self.state();
        let Some(parked) = state.parked.get_mut(&token) else {
            return true;
        };
        let Readable::Handled(deadline) = (self.on_readable)(&mut parked.item, &parked.socket)
        else {
            return false;
        };
        let old = std::mem::replace(&mut parked.deadline, deadline);
        let fd = parked.socket.as_raw_fd();
        if old != deadline {
            if let Some(at) = old {
                state.deadlines.remove(&(at, token));
            }
            if let Some(at) = deadline {
                state.deadlines.insert((at, token));
            }
        }
        // One-shot: the descriptor is disabled until re-armed.
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open (the socket is in `parked`, which the lock
        // keeps); `event` outlives the call.
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut event) };
        rc == 0
    }

    /// Wake everything parked and refuse further parking.
    pub fn shutdown(&self) {
        let all: Vec<Parked<T>> = {
            let mut state = self.state();
            state.closing = true;
            state.deadlines.clear();
            state.parked.drain().map(|(_, p)| p).collect()
        };
        for parked in all {
            self.unwatch(parked.socket.as_raw_fd());
            (self.resume)(parked.item, parked.socket);
        }
    }

    /// How many items are parked now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.state().parked.len()
    }

    fn unwatch(&self, fd: RawFd) {
        // SAFETY: both descriptors are open; DEL ignores the event argument.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
    }

    /// Wait up to `timeout` for readable sockets; wake them and everything due.
    fn poll_once(&self, timeout: Duration) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_POLL];
        let timeout = self
            .state()
            .deadlines
            .first()
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
            .map_or(timeout, |due| due.min(timeout));
        // Round up: waking a millisecond early would only sleep again.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: `events` is a valid buffer of EVENTS_PER_POLL entries.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                EVENTS_PER_POLL as i32,
                ms,
            )
        };
        for event in events.iter().take(n.max(0) as usize) {
            let only_data = event.events & !(libc::EPOLLIN as u32) == 0;
            if !(only_data && self.handled_in_place(event.u64)) {
                self.wake(event.u64);
            }
        }
        let now = Instant::now();
        let due: Vec<u64> = {
            let state = self.state();
            state
                .deadlines
                .iter()
                .take_while(|(at, _)| *at <= now)
                .map(|(_, token)| *token)
                .collect()
        };
        for token in due {
            self.wake(token);
        }
    }

    fn state(&self) -> MutexGuard<'_, State<T>> {
        // The maps stay consistent across a panic elsewhere; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn poll_loop<T: Send + 'static>(hibernator: Weak<Hibernator<T>>) {
    while let Some(h) = hibernator.upgrade() {
        if h.state().closing {
            return;
        }
        h.poll_once(MAX_POLL);
    }
}

/// Wakes one parked item; a no-op once it was woken some other way.
struct TokenWaker<T: Send + 'static> {
    hibernator: Weak<Hibernator<T>>,
    token: u64,
}

impl<T: Send + 'static> Wake for TokenWaker<T> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(h) = self.hibernator.upgrade() {
            h.wake(self.token);
        }
    }
}

#[cfg(test)]
mod tests;
