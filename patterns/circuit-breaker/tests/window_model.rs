//! Property tests: the windows' running totals always equal a naive recount of the
//! same calls.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::Duration;

use circuit_breaker::window::{CountWindow, Sample, TimeWindow, Totals};
use proptest::prelude::*;

fn recount<'a>(samples: impl Iterator<Item = &'a Sample>) -> Totals {
    samples.fold(Totals::default(), |mut t, s| {
        t.calls += 1;
        t.failures += u32::from(s.failed);
        t.slow += u32::from(s.slow);
        t
    })
}

fn sample() -> impl Strategy<Value = Sample> {
    (any::<bool>(), any::<bool>()).prop_map(|(failed, slow)| Sample { failed, slow })
}

proptest! {
    #[test]
    fn the_count_window_matches_the_last_n_calls(
        size in 1u32..20,
        samples in prop::collection::vec(sample(), 0..200),
    ) {
        let mut window = CountWindow::new(NonZeroU32::new(size).unwrap());
        let mut model: VecDeque<Sample> = VecDeque::new();
        for s in samples {
            window.record(s);
            model.push_back(s);
            if model.len() > size as usize {
                model.pop_front();
            }
            prop_assert_eq!(window.totals(), recount(model.iter()));
        }
    }

    #[test]
    fn the_time_window_matches_the_calls_of_the_last_buckets(
        buckets in 1u32..10,
        // Mostly small steps, and now and then a jump past the whole window.
        steps in prop::collection::vec(
            (prop_oneof![9 => 0u64..2500, 1 => 0u64..12_000], sample()),
            0..200,
        ),
    ) {
        let width = Duration::from_millis(1000);
        let mut window = TimeWindow::new(NonZeroU32::new(buckets).unwrap(), width);
        let mut model: Vec<(u64, Sample)> = Vec::new();
        let mut now_ms = 0u64;
        for (step, s) in steps {
            now_ms += step;
            window.record(Duration::from_millis(now_ms), s);
            model.push((now_ms / 1000, s));
            // A call stays while its bucket is one of the last `buckets` buckets.
            let current = now_ms / 1000;
            let kept = model
                .iter()
                .filter(|(epoch, _)| epoch + u64::from(buckets) > current)
                .map(|(_, s)| s);
            let totals = window.totals(Duration::from_millis(now_ms));
            prop_assert_eq!(totals, recount(kept));
        }
    }
}
