//! How a breaker decides: its window, thresholds, waits and probes.
//!
//! A [`Config`] can only be made by [`ConfigBuilder::build`] (or
//! [`Config::default`]), which refuses every setting that cannot work and says which
//! one and why. Its fields are private, so a `Config` that exists is a valid one:
//! [`CircuitBreaker::new`](crate::CircuitBreaker::new) has nothing left to check and
//! cannot fail, and no code path can meet a window of zero calls.

use std::time::Duration;

/// The largest count window: its ring of outcomes is allocated when the breaker is
/// built (two bytes a call), so a mistyped size must not reserve gigabytes.
pub const MAX_WINDOW_CALLS: u32 = 1_000_000;

/// The most buckets of a time window: recording a call scans them all under the
/// breaker's lock, and past this many the scan costs more than the call it guards
/// (use wider buckets instead).
pub const MAX_BUCKETS: u32 = 1_000;

/// Which recent calls the breaker judges the dependency by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// The last `size` calls, however old.
    CountBased {
        /// How many calls.
        size: u32,
    },
    /// The calls of the last `buckets * bucket_width`, kept in `buckets` slices of
    /// time; a slice older than the window is evicted whole.
    TimeBased {
        /// How many slices.
        buckets: u32,
        /// How long each slice is.
        bucket_width: Duration,
    },
}

// ANCHOR: Config
/// A breaker's settings, valid by construction: [`Config::default`], or one built
/// with [`Config::builder`].
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Default: the last 100 calls.
    pub(crate) window: WindowKind,
    /// Open at this percentage of failed calls or more, in (0, 100]. Default 50.
    pub(crate) failure_rate_threshold: f64,
    /// Also open on slow calls, or not at all (the default: calls are then not even
    /// timed).
    pub(crate) slow_calls: Option<SlowCalls>,
    /// No verdict before the window holds this many calls: two failures out of two
    /// calls say little. Default 10.
    pub(crate) minimum_calls: u32,
    /// How long the breaker stays open before letting probes through. Default 30 s.
    pub(crate) open_wait: Duration,
    /// How many probe calls half-open lets through, and judges together. Default 5.
    pub(crate) half_open_permits: u32,
    /// If half-open has handed out every permit and has no verdict this long after
    /// it began (probes that never answer), open again rather than stay stuck.
    /// Default 60 s.
    pub(crate) max_half_open_wait: Duration,
}

/// Slow-call detection: a dependency that answers, but too slowly, is failing its
/// callers too.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowCalls {
    /// Open at this percentage of slow calls or more, in (0, 100].
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

// ANCHOR: ConfigError
/// A setting that cannot work: which one, and what is allowed.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A count window of 0 calls, or more than the ring may allocate.
    #[error("window: a count window holds 1 to {MAX_WINDOW_CALLS} calls, not {0}")]
    WindowSize(u32),
    /// A time window of 0 buckets, or more than eviction should visit.
    #[error("window: a time window has 1 to {MAX_BUCKETS} buckets, not {0}")]
    Buckets(u32),
    /// Buckets of no width would hold no time.
    #[error("window: bucket_width must be longer than zero")]
    BucketWidth,
    /// Not a percentage the breaker could reach, or one it always reaches (NaN, 0).
    #[error("failure_rate_threshold: a percentage in (0, 100], not {0}")]
    FailureRateThreshold(f64),
    /// The same, for slow calls.
    #[error("slow_calls.rate_threshold: a percentage in (0, 100], not {0}")]
    SlowCallRateThreshold(f64),
    /// Every call would be slow.
    #[error("slow_calls.duration must be longer than zero (or every call is slow)")]
    SlowCallDuration,
    #[error("minimum_calls: 1 to {max} (what the window can hold), not {value}")]
    /// A minimum the window could never reach, or of zero calls.
    MinimumCalls {
        /// The minimum asked for.
        value: u32,
        /// The most the window holds.
        max: u32,
    },
    /// An open breaker would half-open at once: no rest for the dependency.
    #[error("open_wait must be longer than zero (or the dependency gets no rest)")]
    OpenWait,
    /// Half-open with no probe could never close.
    #[error("half_open_permits must be at least 1 (or no probe can close it)")]
    HalfOpenPermits,
    /// Half-open would time out before any probe could answer.
    #[error("max_half_open_wait must be longer than zero")]
    MaxHalfOpenWait,
}
// ANCHOR_END: ConfigError

impl ConfigError {
    /// The setting at fault, named as the builder method that sets it.
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::WindowSize(_)
            | ConfigError::Buckets(_)
            | ConfigError::BucketWidth => "window",
            ConfigError::FailureRateThreshold(_) => "failure_rate_threshold",
            ConfigError::SlowCallRateThreshold(_) => "slow_calls.rate_threshold",
            ConfigError::SlowCallDuration => "slow_calls.duration",
            ConfigError::MinimumCalls { .. } => "minimum_calls",
            ConfigError::OpenWait => "open_wait",
            ConfigError::HalfOpenPermits => "half_open_permits",
            ConfigError::MaxHalfOpenWait => "max_half_open_wait",
        }
    }
}

/// A threshold is a percentage of calls: NaN, infinities, zero (every window would
/// open it) and anything above 100 are refused.
fn is_percentage(value: f64) -> bool {
    value > 0.0 && value <= 100.0
}

impl Config {
    /// Starts from [`Config::default`]; `build` checks every setting.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder(Config::default())
    }

    /// Which calls are judged.
    pub fn window(&self) -> WindowKind {
        self.window
    }
    /// Open at this failure percentage or more.
    pub fn failure_rate_threshold(&self) -> f64 {
        self.failure_rate_threshold
    }
    /// The slow-call rule, if calls are timed at all.
    pub fn slow_calls(&self) -> Option<SlowCalls> {
        self.slow_calls
    }
    /// No verdict before the window holds this many calls.
    pub fn minimum_calls(&self) -> u32 {
        self.minimum_calls
    }
    /// How long the breaker stays open before probing.
    pub fn open_wait(&self) -> Duration {
        self.open_wait
    }
    /// How many probes half-open lets through and judges together.
    pub fn half_open_permits(&self) -> u32 {
        self.half_open_permits
    }
    /// How long half-open may wait for its probes' verdict.
    pub fn max_half_open_wait(&self) -> Duration {
        self.max_half_open_wait
    }

    /// Every rule a working breaker needs; the first broken one is reported.
    fn validate(&self) -> Result<(), ConfigError> {
        let most_calls = match self.window {
            WindowKind::CountBased { size } => {
                if size == 0 || size > MAX_WINDOW_CALLS {
                    return Err(ConfigError::WindowSize(size));
                }
                size
            }
            WindowKind::TimeBased { buckets, bucket_width } => {
                if buckets == 0 || buckets > MAX_BUCKETS {
                    return Err(ConfigError::Buckets(buckets));
                }
                if bucket_width.is_zero() {
                    return Err(ConfigError::BucketWidth);
                }
                u32::MAX // no bound: as many calls as arrive in the window
            }
        };
        let rate = self.failure_rate_threshold;
        if !is_percentage(rate) {
            return Err(ConfigError::FailureRateThreshold(rate));
        }
        if let Some(slow) = self.slow_calls {
            if !is_percentage(slow.rate_threshold) {
                return Err(ConfigError::SlowCallRateThreshold(slow.rate_threshold));
            }
            if slow.duration.is_zero() {
                return Err(ConfigError::SlowCallDuration);
            }
        }
        let value = self.minimum_calls;
        if value == 0 || value > most_calls {
            return Err(ConfigError::MinimumCalls { value, max: most_calls });
        }
        if self.open_wait.is_zero() {
            return Err(ConfigError::OpenWait);
        }
        if self.half_open_permits == 0 {
            return Err(ConfigError::HalfOpenPermits);
        }
        if self.max_half_open_wait.is_zero() {
            return Err(ConfigError::MaxHalfOpenWait);
        }
        Ok(())
    }
}

/// Builds a [`Config`], validating it at the end. Waits too long for the clock to
/// represent their end (`Duration::MAX`) are allowed and mean "never": an
/// `open_wait` that long keeps the breaker open until
/// [`reset`](crate::CircuitBreaker::reset).
#[derive(Clone, Debug)]
pub struct ConfigBuilder(Config);

impl ConfigBuilder {
    /// Judge by the last `size` calls, however old (1 to a million).
    pub fn count_window(mut self, size: u32) -> Self {
        self.0.window = WindowKind::CountBased { size };
        self
    }
    /// Judge by the calls of the last `buckets` x `bucket_width` (1 to 1000 buckets).
    pub fn time_window(mut self, buckets: u32, bucket_width: Duration) -> Self {
        self.0.window = WindowKind::TimeBased { buckets, bucket_width };
        self
    }
    /// Open at this percentage of failed calls or more, in (0, 100].
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.0.failure_rate_threshold = percent;
        self
    }
    /// Counts calls of at least `duration` as slow, and opens at `rate_percent` slow
    /// calls.
    pub fn slow_calls(mut self, rate_percent: f64, duration: Duration) -> Self {
        self.0.slow_calls =
            Some(SlowCalls { rate_threshold: rate_percent, duration });
        self
    }
    /// Give no verdict before this many calls (1 to the window's size).
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.0.minimum_calls = calls;
        self
    }
    /// Stay open this long before probing; `Duration::MAX` means until `reset`.
    pub fn open_wait(mut self, wait: Duration) -> Self {
        self.0.open_wait = wait;
        self
    }
    /// Let this many probes through when half-open, and judge them together.
    pub fn half_open_permits(mut self, permits: u32) -> Self {
        self.0.half_open_permits = permits;
        self
    }
    /// Open again if half-open has no verdict this long after it began.
    pub fn max_half_open_wait(mut self, wait: Duration) -> Self {
        self.0.max_half_open_wait = wait;
        self
    }
    /// The config, or the first setting that cannot work, named.
    pub fn build(self) -> Result<Config, ConfigError> {
        self.0.validate()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_valid() {
        assert_eq!(Config::builder().build(), Ok(Config::default()));
    }

    #[test]
    fn errors_say_what_is_allowed() {
        let err = Config::builder().count_window(0).build().unwrap_err();
        assert_eq!(
            err.to_string(),
            "window: a count window holds 1 to 1000000 calls, not 0"
        );
        let err = Config::builder().count_window(5).minimum_calls(6).build();
        assert_eq!(
            err.unwrap_err().to_string(),
            "minimum_calls: 1 to 5 (what the window can hold), not 6"
        );
    }
}
