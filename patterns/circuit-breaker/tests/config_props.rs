//! Arbitrary configurations, edge values included (zeros, `u32::MAX`, NaN,
//! infinities, `Duration::MAX`): the builder accepts exactly the ones the rules
//! below allow, nothing panics, and every accepted one builds a breaker that opens,
//! probes and closes again.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::time::Duration;

use circuit_breaker::{
    CallError, CircuitBreaker, CircuitBreakerLayer, Config, ConfigError, Outcome,
    State,
};
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt, service_fn};

/// Everything a caller can pass to the builder.
#[derive(Clone, Debug)]
struct Settings {
    window: Window,
    failure_rate_threshold: f64,
    slow_calls: Option<(f64, Duration)>,
    minimum_calls: u32,
    open_wait: Duration,
    half_open_permits: u32,
    max_half_open_wait: Duration,
}

#[derive(Clone, Copy, Debug)]
enum Window {
    Count(u32),
    Time(u32, Duration),
}

impl Settings {
    fn build(&self) -> Result<Config, ConfigError> {
        let builder = match self.window {
            Window::Count(size) => Config::builder().count_window(size),
            Window::Time(buckets, width) => {
                Config::builder().time_window(buckets, width)
            }
        };
        let builder = match self.slow_calls {
            Some((rate, duration)) => builder.slow_calls(rate, duration),
            None => builder,
        };
        builder
            .failure_rate_threshold(self.failure_rate_threshold)
            .minimum_calls(self.minimum_calls)
            .open_wait(self.open_wait)
            .half_open_permits(self.half_open_permits)
            .max_half_open_wait(self.max_half_open_wait)
            .build()
    }

    /// The rules, written independently of the crate's validation.
    fn valid(&self) -> bool {
        let percentage = |p: f64| p > 0.0 && p <= 100.0;
        let window_ok = match self.window {
            Window::Count(size) => (1..=1_000_000).contains(&size),
            Window::Time(buckets, width) => {
                (1..=1_000).contains(&buckets) && !width.is_zero()
            }
        };
        let most_calls = match self.window {
            Window::Count(size) => size,
            Window::Time(..) => u32::MAX,
        };
        window_ok
            && percentage(self.failure_rate_threshold)
            && self
                .slow_calls
                .is_none_or(|(rate, d)| percentage(rate) && !d.is_zero())
            && (1..=most_calls).contains(&self.minimum_calls)
            && !self.open_wait.is_zero()
            && self.half_open_permits >= 1
            && !self.max_half_open_wait.is_zero()
    }
}

/// Mostly ordinary values (so that about half the configs are valid and get
/// exercised), then the edges: zero, the limits and one past them, the extremes of
/// the type.
fn count(ordinary: std::ops::Range<u32>) -> impl Strategy<Value = u32> {
    prop_oneof![
        12 => ordinary,
        1 => Just(0u32),
        1 => Just(1_000_000u32),
        1 => Just(1_000_001u32),
        1 => Just(u32::MAX),
        1 => any::<u32>(),
    ]
}

fn buckets() -> impl Strategy<Value = u32> {
    prop_oneof![
        12 => 1u32..12,
        1 => Just(0u32),
        1 => Just(1_000u32),
        1 => Just(1_001u32),
        1 => any::<u32>(),
    ]
}

fn percent() -> impl Strategy<Value = f64> {
    prop_oneof![
        12 => 0.0f64..=100.0,
        1 => Just(0.0),
        1 => Just(100.0),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(-1.0),
        1 => Just(100.0 + 1e-9),
        1 => any::<f64>(),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        12 => (1u64..5_000).prop_map(Duration::from_millis),
        1 => Just(Duration::ZERO),
        1 => Just(Duration::from_nanos(1)),
        1 => Just(Duration::MAX),
        1 => (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn settings() -> impl Strategy<Value = Settings> {
    let window = prop_oneof![
        count(1..40).prop_map(Window::Count),
        (buckets(), duration()).prop_map(|(b, w)| Window::Time(b, w)),
    ];
    (
        window,
        percent(),
        prop::option::of((percent(), duration())),
        count(1..12),
        duration(),
        count(1..6),
        duration(),
    )
        .prop_map(|(window, rate, slow, minimum, open, permits, max_half)| {
            Settings {
                window,
                failure_rate_threshold: rate,
                slow_calls: slow,
                minimum_calls: minimum,
                open_wait: open,
                half_open_permits: permits,
                max_half_open_wait: max_half,
            }
        })
}

/// Small enough to drive in a test case (the others are only built and called a
/// little).
const DRIVABLE: u32 = 300;
const A_DAY: Duration = Duration::from_secs(24 * 3600);

/// Drives a breaker built from an accepted config through its whole cycle.
async fn exercise(config: Config) -> Result<(), TestCaseError> {
    let breaker = CircuitBreaker::new(config.clone());
    let ok = breaker.call(async { Ok::<_, ()>(1) }).await;
    prop_assert_eq!(ok, Ok(1), "a new breaker lets calls through");
    let mut layered = CircuitBreakerLayer::new(breaker.clone()).layer(service_fn(
        |fail: bool| async move { if fail { Err(()) } else { Ok(()) } },
    ));
    let through_layer = layered.ready().await.map_err(|e| format!("{e:?}"));
    prop_assert!(through_layer.is_ok());
    prop_assert_eq!(layered.call(false).await, Ok(()));

    breaker.reset();
    let minimum = config.minimum_calls();
    if minimum > DRIVABLE {
        // Too many calls to reach a verdict here: check it stays closed on failures.
        for _ in 0..DRIVABLE {
            breaker.call(async { Err::<(), _>(()) }).await.unwrap_err();
        }
        prop_assert_eq!(breaker.state(), State::Closed);
        return Ok(());
    }
    // All failures: a 100% failure rate reaches any threshold once the minimum is
    // met.
    for n in 1..=minimum {
        prop_assert_eq!(
            breaker.state(),
            State::Closed,
            "after {} of {} calls",
            n - 1,
            minimum
        );
        let failed = breaker.call(async { Err::<(), _>("503") }).await;
        prop_assert_eq!(failed, Err(CallError::Inner("503")));
    }
    prop_assert_eq!(breaker.state(), State::Open);
    let refused = breaker.call(async { Ok::<_, ()>(()) }).await;
    prop_assert!(matches!(refused, Err(CallError::Rejected(_))), "open rejects");

    let wait = config.open_wait();
    if wait > A_DAY {
        tokio::time::advance(A_DAY).await;
        prop_assert!(breaker.try_acquire().is_err(), "still open after a day");
        return Ok(());
    }
    tokio::time::advance(wait).await;
    let permits = config.half_open_permits();
    for _ in 0..permits.min(DRIVABLE) {
        let probe = breaker.try_acquire();
        prop_assert!(probe.is_ok(), "a probe is let through");
        prop_assert_eq!(breaker.state(), State::HalfOpen);
        if let Ok(probe) = probe {
            probe.record(Outcome::Success);
        }
    }
    if permits <= DRIVABLE {
        prop_assert_eq!(breaker.state(), State::Closed, "the probes succeeded");
    }
    breaker.force_open();
    breaker.disable();
    let disabled = breaker.call(async { Err::<(), _>(()) }).await;
    prop_assert_eq!(disabled, Err(CallError::Inner(())), "disabled lets it through");
    breaker.reset();
    prop_assert_eq!(breaker.metrics().window.calls, 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_config_is_refused_or_builds_a_working_breaker(s in settings()) {
        let built = s.build();
        prop_assert_eq!(built.is_ok(), s.valid(), "{:?} gave {:?}", s, built);
        if let Ok(config) = built {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(exercise(config))?;
        }
    }
}
