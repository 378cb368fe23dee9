//! Allocations that outlive their connect: kept apart from the short-lived ones.
//!
//! An idle connection keeps a few small objects for as long as it lives (its session
//! handle, mailbox, client id, peer string and, hibernated, its boxed state); the
//! connect that made them also made many short-lived objects of the same sizes. In
//! one heap both share pages, and once the short-lived ones are freed each page stays
//! resident for the few that remain: measured with `tools/bench/scale.py`, about 400
//! bytes of RSS per idle connection on top of the ~800 it holds. Made inside
//! `long_lived`, those objects come from a heap of their own (the `emqx` binary's
//! global allocator asks `long_lived_now`), whose pages they fill densely.
//!
//! Only a hint: without that allocator (tests, other binaries) nothing changes.

use std::cell::Cell;

thread_local! {
    static LONG_LIVED: Cell<bool> = const { Cell::new(false) };
}

/// Run `make`, whose allocations are meant to live as long as a connection.
/// Keep it to the allocation itself: whatever else `make` allocates and frees
/// would interleave the long-lived heap's pages again.
pub fn long_lived<R>(make: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            LONG_LIVED.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(LONG_LIVED.with(|l| l.replace(true)));
    make()
}

/// Whether this thread is inside `long_lived` (for the global allocator).
pub fn long_lived_now() -> bool {
    // During thread teardown the flag may be gone: then it is not set.
    LONG_LIVED.try_with(Cell::get).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_scope_is_set_inside_and_restored_after_even_nested() {
        assert!(!super::long_lived_now());
        super::long_lived(|| {
            assert!(super::long_lived_now());
            super::long_lived(|| assert!(super::long_lived_now()));
            assert!(super::long_lived_now());
        });
        assert!(!super::long_lived_now());
    }
}
