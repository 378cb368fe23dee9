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
//! A parked connection costs its state plus a 24-byte slot and an 8-byte deadline
//! entry: no future, no timer entry, no reactor slot, no allocation for its waker
//! (`token_waker`). Parking and waking cost a few syscalls each.
//!
//! Some input needs no task at all: before waking an item whose socket turned
//! readable, the poller asks `on_readable`, which may answer it in place (a plain
//! connection's PINGREQs: a keepalive costs two syscalls, not a wake-up and a task
//! that lives until the next `hibernate_after`) and give the item its next deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::Waker;
use std::time::{Duration, Instant};

mod token_waker;

/// Longest sleep of the poller thread: it notices a dropped hibernator this soon.
const MAX_POLL: Duration = Duration::from_secs(1);
/// Events taken per `epoll_wait`.
const EVENTS_PER_POLL: usize = 256;
/// A token is a slot's generation above its index, 24 bits each: at most 16.7M
/// items parked at once, and a token names one parking of its slot until the slot
/// has been reused 16.7M times (a stale waker then wakes the wrong item: a spurious
/// wake-up, which only costs that item a task until it hibernates again).
const INDEX_BITS: u32 = 24;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
const _: () = assert!(2 * INDEX_BITS <= token_waker::TOKEN_BITS);
/// Slots are allocated this many at a time, never moved.
const CHUNK: usize = 1024;

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
    /// Deadlines are kept as milliseconds since this instant (`tick`).
    epoch: Instant,
    /// This hibernator's id for its wakers (`token_waker`).
    id: u16,
}

struct State<T> {
    /// The parked items, by slot index; chunks are never moved or freed.
    chunks: Vec<Box<[Slot<T>]>>,
    /// Vacant slots below `used`, taken first.
    vacant: Vec<u32>,
    /// Slots handed out so far.
    used: u32,
    /// Deadlines as `tick << INDEX_BITS | index`, earliest first. Entries are not
    /// removed when their item wakes or gets another deadline: one whose slot no
    /// longer holds that tick is skipped when it comes up (each item has at most a
    /// few: one per deadline change within its keepalive).
    deadlines: BinaryHeap<Reverse<u64>>,
    parked: usize,
    closing: bool,
}

/// One parked item, or a vacant slot (`item` None). 24 bytes for a boxed item.
struct Slot<T> {
    item: Option<T>,
    socket: Option<TcpStream>,
    /// Bumped at each park here (24 bits): the token's upper half.
    generation: u32,
    /// `Hibernator::tick` of its deadline; 0: none.
    deadline: u64,
}

impl<T> Slot<T> {
    const VACANT: Slot<T> = Slot {
        item: None,
        socket: None,
        generation: 0,
        deadline: 0,
    };
}

impl<T> State<T> {
    fn slot(&mut self, index: u64) -> &mut Slot<T> {
        let index = index as usize;
        &mut self.chunks[index / CHUNK][index % CHUNK]
    }

    /// The slot of the item parked under `token`, if it still is.
    fn parked_mut(&mut self, token: u64) -> Option<&mut Slot<T>> {
        let index = token & INDEX_MASK;
        if index >= u64::from(self.used) {
            return None;
        }
        let slot = self.slot(index);
        (slot.item.is_some() && u64::from(slot.generation) == token >> INDEX_BITS).then_some(slot)
    }

    /// A vacant slot's index; None past 2^24 slots.
    fn claim(&mut self) -> Option<u64> {
        if let Some(index) = self.vacant.pop() {
            return Some(u64::from(index));
        }
        let index = self.used;
        if u64::from(index) > INDEX_MASK {
            return None;
        }
        if index as usize == self.chunks.len() * CHUNK {
            // Kept as long as the hibernator (`crate::memory`).
            let chunk = crate::memory::long_lived(|| (0..CHUNK).map(|_| Slot::VACANT).collect());
            self.chunks.push(chunk);
        }
        self.used += 1;
        Some(u64::from(index))
    }

    /// Take the item parked under `token` out, its slot vacant again.
    fn take(&mut self, token: u64) -> Option<(T, TcpStream)> {
        let slot = self.parked_mut(token)?;
        let item = slot.item.take()?;
        let socket = slot.socket.take()?;
        slot.deadline = 0;
        self.vacant.push((token & INDEX_MASK) as u32);
        self.parked -= 1;
        Some((item, socket))
    }

    /// The earliest deadline entry still in force, `(tick, token)`; stale ones on
    /// top are dropped on the way.
    fn first_deadline(&mut self) -> Option<(u64, u64)> {
        while let Some(&Reverse(entry)) = self.deadlines.peek() {
            let (tick, index) = (entry >> INDEX_BITS, entry & INDEX_MASK);
            let slot = self.slot(index);
            if slot.item.is_some() && slot.deadline == tick {
                return Some((tick, u64::from(slot.generation) << INDEX_BITS | index));
            }
            self.deadlines.pop();
        }
        None
    }

    fn set_deadline(&mut self, token: u64, tick: u64) {
        let index = token & INDEX_MASK;
        let slot = self.slot(index);
        if slot.deadline == tick {
            return;
        }
        slot.deadline = tick;
        if tick != 0 {
            let entry = Reverse(tick << INDEX_BITS | index);
            if self.deadlines.len() == self.deadlines.capacity() {
                // Grown with the parked items, and kept (`crate::memory`).
                crate::memory::long_lived(|| self.deadlines.reserve(self.deadlines.len().max(64)));
            }
            self.deadlines.push(entry);
        }
    }
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
        let mut registered = true;
        let hibernator = Arc::new_cyclic(|weak: &Weak<Self>| {
            let id = token_waker::register(weak.clone());
            registered = id.is_some();
            Hibernator {
                epoll,
                resume: Box::new(resume),
                on_readable: Box::new(on_readable),
                state: Mutex::new(State {
                    chunks: Vec::new(),
                    vacant: Vec::new(),
                    used: 0,
                    deadlines: BinaryHeap::new(),
                    parked: 0,
                    closing: false,
                }),
                epoch: Instant::now(),
                id: id.unwrap_or(u16::MAX),
            }
        });
        if !registered {
            return Err(io::Error::other("65,535 hibernators at once"));
        }
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
        let token = {
            let mut state = self.state();
            if state.closing {
                return Err((item, socket));
            }
            let Some(index) = state.claim() else {
                tracing::warn!("cannot hibernate a connection: 2^24 parked already");
                return Err((item, socket));
            };
            let slot = state.slot(index);
            slot.generation = (slot.generation + 1) & INDEX_MASK as u32;
            let token = u64::from(slot.generation) << INDEX_BITS | index;
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
                state.vacant.push(index as u32);
                return Err((item, socket));
            }
            slot_fill(state.slot(index), item, socket);
            state.parked += 1;
            state.set_deadline(token, deadline.map_or(0, |at| self.tick(at)));
            token
        };
        // Armed after the slot is filled, so that a wake-up from now on finds it.
        if !arm(token_waker::waker(self.id, token)) {
            self.wake(token);
        }
        Ok(())
    }

    /// Milliseconds from `epoch` to `at`, rounded up (an item never wakes before its
    /// deadline), plus one: 0 means no deadline.
    fn tick(&self, at: Instant) -> u64 {
        let ms = at
            .saturating_duration_since(self.epoch)
            .as_micros()
            .div_ceil(1000);
        // 2^40 ms is 34 years: past it, a deadline is as good as none.
        ms.min((1 << 40) - 2) as u64 + 1
    }

    /// The instant a tick stands for.
    fn instant(&self, tick: u64) -> Instant {
        self.epoch + Duration::from_millis(tick - 1)
    }

    /// Resume the item parked under `token`, if it still is.
    fn wake(&self, token: u64) {
        let Some((item, socket)) = self.state().take(token) else {
            return;
        };
        self.unwatch(socket.as_raw_fd());
        (self.resume)(item, socket);
    }

    /// Offer the item under `token` to `on_readable`; true if it stays parked (or is
    /// gone already), its socket watched again for the next event.
    fn handled_in_place(&self, token: u64) -> bool {
        let mut state = self.state();
        let Some(slot) = state.parked_mut(token) else {
            return true;
        };
        let (Some(item), Some(socket)) = (slot.item.as_mut(), slot.socket.as_ref()) else {
            return true;
        };
        let Readable::Handled(deadline) = (self.on_readable)(item, socket) else {
            return false;
        };
        let fd = socket.as_raw_fd();
        state.set_deadline(token, deadline.map_or(0, |at| self.tick(at)));
        // One-shot: the descriptor is disabled until re-armed.
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open (the socket is in its slot, which the lock
        // keeps); `event` outlives the call.
        let rc =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut event) };
        rc == 0
    }

    /// Wake everything parked and refuse further parking.
    pub fn shutdown(&self) {
        let all: Vec<(T, TcpStream)> = {
            let mut state = self.state();
            state.closing = true;
            state.deadlines.clear();
            let mut all = Vec::with_capacity(state.parked);
            for slot in state.chunks.iter_mut().flat_map(|c| c.iter_mut()) {
                if let (Some(item), Some(socket)) = (slot.item.take(), slot.socket.take()) {
                    all.push((item, socket));
                }
                slot.deadline = 0;
            }
            state.parked = 0;
            all
        };
        for (item, socket) in all {
            self.unwatch(socket.as_raw_fd());
            (self.resume)(item, socket);
        }
    }

    /// How many items are parked now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.state().parked
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
            .first_deadline()
            .map(|(tick, _)| self.instant(tick).saturating_duration_since(Instant::now()))
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
        let mut due = Vec::new();
        {
            let mut state = self.state();
            while let Some((tick, token)) = state.first_deadline() {
                if self.instant(tick) > now {
                    break;
                }
                state.deadlines.pop();
                due.push(token);
            }
        }
        for token in due {
            self.wake(token);
        }
    }

    fn state(&self) -> MutexGuard<'_, State<T>> {
        // The slots stay consistent across a panic elsewhere; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn slot_fill<T>(slot: &mut Slot<T>, item: T, socket: TcpStream) {
    slot.item = Some(item);
    slot.socket = Some(socket);
    slot.deadline = 0;
}

impl<T: Send + 'static> token_waker::Target for Hibernator<T> {
    fn wake_token(&self, token: u64) {
        self.wake(token);
    }
}

impl<T: Send + 'static> Drop for Hibernator<T> {
    fn drop(&mut self) {
        token_waker::unregister(self.id);
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

#[cfg(test)]
mod tests;
