//! The transmit jitter of RFC 5880 §6.8.7, from a small seeded generator so the state machine
//! stays deterministic under test.

use std::time::Duration;

/// xorshift64*: not for secrets, only to keep two systems' packets from falling into step.
#[derive(Debug, Clone)]
pub(super) struct Jitter(u64);

impl Jitter {
    pub(super) fn new(seed: u64) -> Self {
        // Zero is the one state xorshift never leaves.
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `interval` reduced by 0–25 %, or by 10–25 % when the detect multiplier is 1 (so one
    /// late packet cannot reach the remote's detection time).
    pub(super) fn apply(&mut self, interval: Duration, detect_mult: u8) -> Duration {
        let (low, high) = if detect_mult == 1 {
            (75, 90)
        } else {
            (75, 100)
        };
        // Percent in [low, high]; per mille keeps a little more resolution.
        let span = (high - low) * 10 + 1;
        let per_mille = low * 10 + self.next() % span;
        interval * per_mille as u32 / 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_the_rfc_bounds() {
        let mut j = Jitter::new(7);
        let base = Duration::from_millis(100);
        let (mut lo, mut hi) = (base, Duration::ZERO);
        for _ in 0..10_000 {
            let d = j.apply(base, 3);
            assert!(d >= base * 3 / 4 && d <= base, "{d:?}");
            lo = lo.min(d);
            hi = hi.max(d);
        }
        // The whole range is used, not one point of it.
        assert!(lo < Duration::from_millis(77) && hi > Duration::from_millis(98));
        for _ in 0..10_000 {
            let d = j.apply(base, 1);
            assert!(d >= base * 3 / 4 && d <= base * 9 / 10, "{d:?}");
        }
    }

    #[test]
    fn a_zero_seed_still_varies() {
        let mut j = Jitter::new(0);
        let a = j.apply(Duration::from_secs(1), 3);
        let b = j.apply(Duration::from_secs(1), 3);
        let c = j.apply(Duration::from_secs(1), 3);
        assert!(a != b || b != c);
    }
}
