//! Percentiles of a latency sample.

use std::time::Duration;

/// A sorted latency sample.
pub struct Sample(Vec<Duration>);

impl Sample {
    /// Sorts the measurements; an empty sample has no percentiles.
    pub fn new(mut measurements: Vec<Duration>) -> Option<Self> {
        if measurements.is_empty() {
            return None;
        }
        measurements.sort_unstable();
        Some(Sample(measurements))
    }

    // ANCHOR: percentile
    /// The nearest-rank percentile: the smallest measurement with at least `p`% of
    /// the sample at or below it. `p` is clamped to 0..=100.
    pub fn percentile(&self, p: f64) -> Duration {
        let p = p.clamp(0.0, 100.0);
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }
    // ANCHOR_END: percentile

    /// How many samples were taken: a percentile of a few is not worth printing.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no sample was taken (no percentile can be read then).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sample = Sample::new(ms(&[5, 1, 4, 2, 3, 10, 9, 8, 7, 6])).unwrap();
        assert_eq!(sample.percentile(50.0), Duration::from_millis(5));
        assert_eq!(sample.percentile(90.0), Duration::from_millis(9));
        assert_eq!(sample.percentile(99.0), Duration::from_millis(10));
        assert_eq!(sample.percentile(0.0), Duration::from_millis(1));
        assert_eq!(sample.percentile(250.0), Duration::from_millis(10));
    }

    #[test]
    fn an_empty_sample_has_no_percentiles() {
        assert!(Sample::new(Vec::new()).is_none());
    }
}
