//! Exponential backoff with full jitter.

use std::time::Duration;

// ANCHOR: Backoff
/// The wait before retry number `n` (0 for the first retry) is uniformly random in
/// `[0, min(max, base * 2^n)]`. The randomness spreads out callers that failed at
/// the same moment; the cap keeps a long outage from growing waits without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first retry's ceiling; each later retry doubles it.
    pub base: Duration,
    /// The most any wait may be, however long the outage.
    pub max: Duration,
}

impl Backoff {
    /// The upper bound of the wait before retry `n`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).unwrap_or(self.max).min(self.max)
    }

    /// A random wait before retry `n`, never above [`ceiling`](Self::ceiling).
    pub fn delay(&self, retry: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling =
            u64::try_from(self.ceiling(retry).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.u64(0..=ceiling))
    }
}
// ANCHOR_END: Backoff

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_until_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(100),
        };
        let ceilings: Vec<u128> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [10, 20, 40, 80, 100, 100]);
        assert_eq!(
            b.ceiling(1000),
            Duration::from_millis(100),
            "no overflow for huge retry counts"
        );
    }
}
