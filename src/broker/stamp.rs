//! A wall-clock time in Unix milliseconds, or none, in 6 bytes: every session handle
//! keeps two (connected at, offline since), and at 8 + 8 bytes they would take it out
//! of mimalloc's 128-byte size class. 48 bits of milliseconds last until the year
//! 10889; a later time is kept as the largest one.

use std::fmt;

#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp([u16; 3]);

/// Stored as ms + 1, so that 0 (all zero bits) is "none" and ms 0 is a time.
const MAX: u64 = (1 << 48) - 1;

impl Stamp {
    pub const NONE: Stamp = Stamp([0; 3]);

    pub fn at(ms: u64) -> Stamp {
        let v = ms.saturating_add(1).min(MAX);
        Stamp([v as u16, (v >> 16) as u16, (v >> 32) as u16])
    }

    pub fn get(self) -> Option<u64> {
        let [a, b, c] = self.0.map(u64::from);
        (a | b << 16 | c << 32).checked_sub(1)
    }
}

impl fmt::Debug for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::Stamp;

    #[test]
    fn six_bytes_none_zero_and_a_far_future_kept_as_the_largest() {
        assert_eq!(std::mem::size_of::<Stamp>(), 6);
        assert_eq!(Stamp::NONE.get(), None);
        assert_eq!(Stamp::default(), Stamp::NONE);
        for ms in [0, 1, 65_535, 65_536, 1_764_547_200_123, (1 << 48) - 2] {
            assert_eq!(Stamp::at(ms).get(), Some(ms), "{ms}");
        }
        assert_eq!(Stamp::at(u64::MAX).get(), Some((1 << 48) - 2));
    }
}
