//! Wakers that name a parked item by its token: nothing allocated per park.
//!
//! A `Waker` is a pointer and a vtable; ours carries no pointer, only numbers: the
//! hibernator's id in a process-wide table (the top 16 bits) and the item's token
//! (the low 48). Cloning and dropping it cost nothing, and a hibernated connection
//! holds no `Arc` for its waker. Waking looks the hibernator up in the table; a
//! hibernator that is gone, or an item woken already (its token no longer names a
//! parked item), makes it a no-op.

use std::sync::{RwLock, Weak};
use std::task::{RawWaker, RawWakerVTable, Waker};

/// Bits of a waker's number that hold the token; the hibernator's id is above them.
pub(super) const TOKEN_BITS: u32 = 48;

// The number is the waker's data pointer.
const _: () = assert!(usize::BITS == 64);

/// What a token waker wakes.
pub(super) trait Target: Send + Sync {
    fn wake_token(&self, token: u64);
}

/// Live hibernators by id; a dropped one's entry is None and its id reused.
static TARGETS: RwLock<Vec<Option<Weak<dyn Target>>>> = RwLock::new(Vec::new());

/// An id for `target`; None if 65,535 hibernators are alive at once (`u16::MAX`
/// names none).
pub(super) fn register(target: Weak<dyn Target>) -> Option<u16> {
    let mut targets = TARGETS.write().unwrap_or_else(|e| e.into_inner());
    let id = match targets.iter().position(Option::is_none) {
        Some(free) => free,
        None => {
            targets.push(None);
            targets.len() - 1
        }
    };
    let id = u16::try_from(id).ok().filter(|&id| id != u16::MAX)?;
    targets[usize::from(id)] = Some(target);
    Some(id)
}

/// `id` is free again: its hibernator is gone.
pub(super) fn unregister(id: u16) {
    let mut targets = TARGETS.write().unwrap_or_else(|e| e.into_inner());
    if let Some(entry) = targets.get_mut(usize::from(id)) {
        *entry = None;
    }
}

/// A waker that wakes `token` of hibernator `id`.
pub(super) fn waker(id: u16, token: u64) -> Waker {
    debug_assert!(token >> TOKEN_BITS == 0);
    let number = (u64::from(id) << TOKEN_BITS) | token;
    let raw = RawWaker::new(std::ptr::without_provenance(number as usize), &VTABLE);
    // SAFETY: the vtable's functions never dereference the data pointer (it is a
    // number, see above) and uphold RawWaker's contract: clone returns a waker of
    // the same number, wake and wake_by_ref wake it, drop releases nothing.
    unsafe { Waker::from_raw(raw) }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake, drop);

fn clone(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

fn wake(data: *const ()) {
    let number = data.addr() as u64;
    let id = (number >> TOKEN_BITS) as usize;
    let token = number & ((1 << TOKEN_BITS) - 1);
    let target = {
        let targets = TARGETS.read().unwrap_or_else(|e| e.into_inner());
        targets.get(id).and_then(|t| t.as_ref()?.upgrade())
    };
    if let Some(target) = target {
        target.wake_token(token);
    }
}

fn drop(_: *const ()) {}
