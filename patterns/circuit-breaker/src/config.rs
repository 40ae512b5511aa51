//! How a breaker decides: its window, thresholds, waits and probes, validated once at build time.

use std::time::Duration;

/// Which recent calls the breaker judges the dependency by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// The last `size` calls, however old.
    CountBased { size: u32 },
    /// The calls of the last `buckets * bucket_width`, kept in `buckets` slices of time; a slice
    /// older than the window is evicted whole.
    TimeBased { buckets: u32, bucket_width: Duration },
}

// ANCHOR: Config
/// A breaker's settings. Build with [`Config::builder`]; every field has a documented default.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Default: the last 100 calls.
    pub window: WindowKind,
    /// Open when at least this percentage of the window's calls failed (0 < x <= 100). Default 50.
    pub failure_rate_threshold: f64,
    /// Also open on slow calls, or not at all (the default: calls are then not even timed).
    pub slow_calls: Option<SlowCalls>,
    /// No verdict before the window holds this many calls: two failures out of two calls say
    /// little. Default 10.
    pub minimum_calls: u32,
    /// How long the breaker stays open before letting probes through. Default 30 s.
    pub open_wait: Duration,
    /// How many probe calls half-open lets through, and judges together. Default 5.
    pub half_open_permits: u32,
    /// If half-open has no verdict after this long (probes that never answer), open again rather
    /// than stay stuck. Default 60 s.
    pub max_half_open_wait: Duration,
}

/// Slow-call detection: a dependency that answers, but too slowly, is failing its callers too.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowCalls {
    /// Open when at least this percentage of the window's calls were slow (0 < x <= 100).
    pub rate_threshold: f64,
    /// A call taking at least this long is slow, whether it succeeded or not.
    pub duration: Duration,
}
// ANCHOR_END: Config

impl Default for Config {
    fn default() -> Self {
        Config {
            window: WindowKind::CountBased { size: 100 },
            failure_rate_threshold: 50.0,
            slow_calls: None,
            minimum_calls: 10,
            open_wait: Duration::from_secs(30),
            half_open_permits: 5,
            max_half_open_wait: Duration::from_secs(60),
        }
    }
}

/// A setting that cannot work, with the field and the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid circuit breaker config: {field} {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError { field, problem: problem.into() }
}

impl Config {
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder(Config::default())
    }

    /// Checks every setting; `ConfigBuilder::build` calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rate = |field, value: f64| {
            if value.is_finite() && value > 0.0 && value <= 100.0 {
                Ok(())
            } else {
                Err(invalid(
                    field,
                    format!("must be a percentage in (0, 100], got {value}"),
                ))
            }
        };
        rate("failure_rate_threshold", self.failure_rate_threshold)?;
        if let Some(slow) = self.slow_calls {
            rate("slow_calls.rate_threshold", slow.rate_threshold)?;
            if slow.duration.is_zero() {
                return Err(invalid(
                    "slow_calls.duration",
                    "must be positive (every call would be slow)",
                ));
            }
        }
        let capacity = match self.window {
            WindowKind::CountBased { size } => {
                if size == 0 {
                    return Err(invalid("window", "size must be at least 1"));
                }
                Some(size)
            }
            WindowKind::TimeBased { buckets, bucket_width } => {
                if buckets == 0 {
                    return Err(invalid("window", "needs at least 1 bucket"));
                }
                if bucket_width.is_zero() {
                    return Err(invalid("window", "bucket_width must be positive"));
                }
                None
            }
        };
        if self.minimum_calls == 0 {
            return Err(invalid("minimum_calls", "must be at least 1"));
        }
        if let Some(size) = capacity {
            if self.minimum_calls > size {
                return Err(invalid(
                    "minimum_calls",
                    format!(
                        "{} can never be reached by a window of {size} calls",
                        self.minimum_calls
                    ),
                ));
            }
        }
        if self.half_open_permits == 0 {
            return Err(invalid(
                "half_open_permits",
                "must be at least 1, or the breaker could never close",
            ));
        }
        if self.max_half_open_wait.is_zero() {
            return Err(invalid("max_half_open_wait", "must be positive"));
        }
        Ok(())
    }
}

/// Builds a [`Config`], validating it at the end.
#[derive(Clone, Debug)]
pub struct ConfigBuilder(Config);

impl ConfigBuilder {
    pub fn count_window(mut self, size: u32) -> Self {
        self.0.window = WindowKind::CountBased { size };
        self
    }
    pub fn time_window(mut self, buckets: u32, bucket_width: Duration) -> Self {
        self.0.window = WindowKind::TimeBased { buckets, bucket_width };
        self
    }
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.0.failure_rate_threshold = percent;
        self
    }
    /// Counts calls of at least `duration` as slow, and opens at `rate_percent` slow calls.
    pub fn slow_calls(mut self, rate_percent: f64, duration: Duration) -> Self {
        self.0.slow_calls =
            Some(SlowCalls { rate_threshold: rate_percent, duration });
        self
    }
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.0.minimum_calls = calls;
        self
    }
    pub fn open_wait(mut self, wait: Duration) -> Self {
        self.0.open_wait = wait;
        self
    }
    pub fn half_open_permits(mut self, permits: u32) -> Self {
        self.0.half_open_permits = permits;
        self
    }
    pub fn max_half_open_wait(mut self, wait: Duration) -> Self {
        self.0.max_half_open_wait = wait;
        self
    }
    pub fn build(self) -> Result<Config, ConfigError> {
        self.0.validate()?;
        Ok(self.0)
    }
}
