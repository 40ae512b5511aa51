//! Sliding windows over recent call outcomes.
//!
//! Both windows keep running totals next to the raw data, so recording a call and
//! reading the failure rate cost O(1), with no allocation after construction. The
//! time-based window adds eviction: it visits only the buckets that time has moved
//! past since the last record or read, one per bucket width elapsed and never more
//! than all of them, so under steady traffic that is O(1) too, and after an idle
//! spell one pass over the buckets. They are public so the property test can check
//! them against a naive model.

use std::num::NonZeroU32;
use std::time::Duration;

/// One call's outcome, as the window sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// The call failed.
    pub failed: bool,
    /// The call took at least the slow-call duration (failed or not).
    pub slow: bool,
}

/// How many calls a window holds, and how many of those failed or were slow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Calls in the window.
    pub calls: u32,
    /// Of which failed.
    pub failures: u32,
    /// Of which were slow.
    pub slow: u32,
}

impl Totals {
    pub(crate) fn add(&mut self, s: Sample) {
        self.calls += 1;
        self.failures += u32::from(s.failed);
        self.slow += u32::from(s.slow);
    }

    fn remove(&mut self, other: Totals) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }

    /// Whether `part` is at least `percent` of the calls, without dividing (0 calls:
    /// never).
    pub fn reaches(&self, part: u32, percent: f64) -> bool {
        self.calls > 0 && f64::from(part) * 100.0 >= percent * f64::from(self.calls)
    }

    /// `part` as a percentage of the calls (0 when there are none).
    pub fn percent(&self, part: u32) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            f64::from(part) * 100.0 / f64::from(self.calls)
        }
    }
}

// ANCHOR: CountWindow
/// The last `size` calls, in a ring buffer.
#[derive(Debug, Clone)]
pub struct CountWindow {
    size: usize,
    ring: Vec<Sample>,
    /// Where the next sample goes; once the ring is full, also the oldest sample.
    next: usize,
    totals: Totals,
}

impl CountWindow {
    /// A window of `size` calls (non-zero: a ring of no slots has nowhere to put a
    /// call).
    pub fn new(size: NonZeroU32) -> Self {
        let size = size.get() as usize;
        CountWindow {
            size,
            ring: Vec::with_capacity(size),
            next: 0,
            totals: Totals::default(),
        }
    }

    /// Adds a call, evicting the oldest once the ring is full.
    pub fn record(&mut self, sample: Sample) {
        if self.ring.len() < self.size {
            self.ring.push(sample);
        } else {
            // Full: the new sample replaces the oldest, whose counts leave the
            // totals.
            let evicted = std::mem::replace(&mut self.ring[self.next], sample);
            let mut old = Totals::default();
            old.add(evicted);
            self.totals.remove(old);
        }
        // A branch, not `%`: a division per call is measurable on the hot path.
        self.next += 1;
        if self.next == self.size {
            self.next = 0;
        }
        self.totals.add(sample);
    }

    /// The window's totals, kept current: nothing is recounted.
    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// Whether the window holds `size` calls (the oldest is evicted by the next
    /// one).
    pub fn is_full(&self) -> bool {
        self.ring.len() == self.size
    }

    /// Forgets every call: a breaker that closes starts a fresh window.
    pub fn clear(&mut self) {
        self.ring.clear();
        self.next = 0;
        self.totals = Totals::default();
    }
}
// ANCHOR_END: CountWindow

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time this bucket holds: elapsed time divided by the bucket
    /// width.
    epoch: u64,
    totals: Totals,
}

/// The calls of the last `buckets` slices of `bucket_width` each. Time is given by
/// the caller as the duration since a fixed start, which keeps the window testable
/// and clock-free.
#[derive(Debug, Clone)]
pub struct TimeWindow {
    buckets: Vec<Bucket>,
    width: Duration,
    totals: Totals,
    /// The latest slice of time seen: every bucket older than the window ending
    /// here has been evicted.
    latest: u64,
    /// Buckets visited by eviction, for the test of its cost.
    #[cfg(test)]
    visited: u64,
}

impl TimeWindow {
    /// A window of `buckets` slices (non-zero) of `width` each (a zero width is
    /// taken as 1 ns).
    pub fn new(buckets: NonZeroU32, width: Duration) -> Self {
        TimeWindow {
            buckets: vec![Bucket::default(); buckets.get() as usize],
            width,
            totals: Totals::default(),
            latest: 0,
            #[cfg(test)]
            visited: 0,
        }
    }

    fn epoch(&self, at: Duration) -> u64 {
        (at.as_nanos() / self.width.as_nanos().max(1)) as u64
    }

    /// Moves the window's end to `at` and returns its slice of time. A time earlier
    /// than one already seen counts as the latest (the window never goes back).
    ///
    /// The buckets that slide out on the way from `latest` to `now` are those of
    /// slices `latest - n + 1 ..= now - n` (for `n` buckets), and they sit in exactly
    /// the slots that slices `latest + 1 ..= now` are about to use. So only those
    /// slots are visited: one per slice of time elapsed, at most `n`.
    fn advance(&mut self, at: Duration) -> u64 {
        let now = self.epoch(at);
        if now <= self.latest {
            return self.latest;
        }
        let span = self.buckets.len() as u64;
        let steps = (now - self.latest).min(span);
        for epoch in now - steps + 1..=now {
            let bucket = &mut self.buckets[(epoch % span) as usize];
            self.totals.remove(bucket.totals);
            *bucket = Bucket { epoch, totals: Totals::default() };
        }
        #[cfg(test)]
        {
            self.visited += steps;
        }
        self.latest = now;
        now
    }

    /// Adds a call made at `at` (time since a fixed start).
    pub fn record(&mut self, at: Duration, sample: Sample) {
        let now = self.advance(at);
        let slot = (now % self.buckets.len() as u64) as usize;
        let bucket = &mut self.buckets[slot];
        if bucket.epoch != now {
            // Only after `clear`: a slot whose slice `advance` did not reach.
            self.totals.remove(bucket.totals);
            *bucket = Bucket { epoch: now, totals: Totals::default() };
        }
        bucket.totals.add(sample);
        self.totals.add(sample);
    }

    /// The totals of the window ending at `at`.
    pub fn totals(&mut self, at: Duration) -> Totals {
        self.advance(at);
        self.totals
    }

    /// Forgets every call: a breaker that closes starts a fresh window.
    pub fn clear(&mut self) {
        self.buckets.fill(Bucket::default());
        self.totals = Totals::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: Sample = Sample { failed: true, slow: false };
    const OK: Sample = Sample { failed: false, slow: false };
    const SLOW: Sample = Sample { failed: false, slow: true };

    #[test]
    fn the_count_window_wraps_around_and_forgets_the_oldest() {
        let mut w = CountWindow::new(NonZeroU32::new(3).unwrap());
        for s in [FAIL, FAIL, OK] {
            w.record(s);
        }
        assert_eq!(w.totals(), Totals { calls: 3, failures: 2, slow: 0 });
        w.record(SLOW); // evicts the first FAIL
        assert_eq!(w.totals(), Totals { calls: 3, failures: 1, slow: 1 });
        w.record(OK); // evicts the second FAIL
        w.record(OK); // evicts OK
        assert_eq!(w.totals(), Totals { calls: 3, failures: 0, slow: 1 });
        w.record(OK); // evicts SLOW
        assert_eq!(w.totals(), Totals { calls: 3, failures: 0, slow: 0 });
        w.clear();
        assert_eq!(w.totals(), Totals::default());
    }

    #[test]
    fn the_time_window_evicts_whole_buckets_as_time_passes() {
        let s = Duration::from_secs;
        // The last 3 seconds, in 1-second buckets.
        let mut w = TimeWindow::new(NonZeroU32::new(3).unwrap(), s(1));
        w.record(s(0), FAIL);
        w.record(Duration::from_millis(1500), FAIL);
        w.record(s(2), OK);
        assert_eq!(
            w.totals(Duration::from_millis(2999)),
            Totals { calls: 3, failures: 2, slow: 0 }
        );
        // At 3 s the bucket of second 0 leaves the window.
        assert_eq!(w.totals(s(3)), Totals { calls: 2, failures: 1, slow: 0 });
        // A new call at 4 s reuses the slot of second 1, whose call is gone too.
        w.record(s(4), SLOW);
        assert_eq!(w.totals(s(4)), Totals { calls: 2, failures: 0, slow: 1 });
        // Long silence empties the window.
        assert_eq!(w.totals(s(60)), Totals::default());
    }

    /// Eviction visits one bucket per slice of time elapsed, not every bucket on
    /// every call: 10,000 calls over 100 s in a window of 1,000 buckets of 100 ms
    /// visit 1,000 buckets in all (one per slice), where a scan would visit 10
    /// million. After an idle spell longer than the window, one pass of 1,000.
    #[test]
    fn eviction_visits_only_the_buckets_time_moved_past() {
        let mut w = TimeWindow::new(NonZeroU32::new(1000).unwrap(), ms(100));
        for call in 0..10_000u64 {
            w.record(ms(call * 10), FAIL);
            w.totals(ms(call * 10));
        }
        assert_eq!(w.visited, 999, "slices 1 to 999 (slice 0 needs no eviction)");
        assert_eq!(w.totals(ms(99_999)).calls, 10_000);
        assert_eq!(w.totals(ms(1_000_000)), Totals::default());
        assert_eq!(w.visited, 999 + 1000, "a jump past the window: one pass");
        w.record(ms(999), OK); // earlier than seen: counts at the latest time
        assert_eq!(w.totals(ms(1_000_000)).calls, 1);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentages_of_an_empty_window_are_zero() {
        assert_eq!(Totals::default().percent(0), 0.0);
        assert_eq!(Totals { calls: 4, failures: 1, slow: 0 }.percent(1), 25.0);
    }
}
