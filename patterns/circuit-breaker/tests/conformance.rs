//! The circuit breaker's conformance suite: every promise, on paused tokio time or
//! with explicit barriers, never with sleeps as synchronisation.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use circuit_breaker::{
    CallError, CircuitBreaker, CircuitBreakerLayer, Config, Outcome, Reason, State,
    Transition,
};
use tokio::time::{advance, timeout};
use tower::{Layer, Service, ServiceExt, service_fn};

use Outcome::{Failure as F, Ignored as I, Success as S};

type Events = Arc<Mutex<Vec<Transition>>>;

fn with_events(config: Config) -> (CircuitBreaker, Events) {
    let events: Events = Arc::default();
    let sink = Arc::clone(&events);
    let breaker = CircuitBreaker::builder(config)
        .on_transition(move |t| sink.lock().unwrap().push(*t))
        .build();
    (breaker, events)
}

fn moves(events: &Events) -> Vec<(State, State)> {
    events.lock().unwrap().iter().map(|t| (t.from, t.to)).collect()
}

fn record(breaker: &CircuitBreaker, outcomes: &[Outcome]) {
    for outcome in outcomes {
        breaker
            .try_acquire()
            .expect("the breaker should let this call through")
            .record(*outcome);
    }
}

/// Window of 10 calls, verdicts from 10 calls, 50% failure threshold, 10 s open, 2
/// probes.
fn ten_calls() -> Config {
    Config::builder()
        .count_window(10)
        .minimum_calls(10)
        .failure_rate_threshold(50.0)
        .open_wait(Duration::from_secs(10))
        .half_open_permits(2)
        .max_half_open_wait(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn open(breaker: &CircuitBreaker) {
    record(breaker, &[F; 10]);
    assert_eq!(breaker.state(), State::Open);
}

// --- configuration
// --------------------------------------------------------------------------

#[test]
fn invalid_configs_name_the_field_and_what_is_allowed() {
    use circuit_breaker::ConfigError as E;
    let secs = Duration::from_secs;
    let refused = |b: circuit_breaker::ConfigBuilder| b.build().unwrap_err();
    let cases = [
        (Config::builder().count_window(0), E::WindowSize(0)),
        (Config::builder().count_window(1_000_001), E::WindowSize(1_000_001)),
        (Config::builder().time_window(0, secs(1)), E::Buckets(0)),
        (Config::builder().time_window(1_001, secs(1)), E::Buckets(1_001)),
        (Config::builder().time_window(10, Duration::ZERO), E::BucketWidth),
        (
            Config::builder().failure_rate_threshold(0.0),
            E::FailureRateThreshold(0.0),
        ),
        (
            Config::builder().failure_rate_threshold(100.1),
            E::FailureRateThreshold(100.1),
        ),
        (
            Config::builder().failure_rate_threshold(-5.0),
            E::FailureRateThreshold(-5.0),
        ),
        (
            Config::builder().failure_rate_threshold(f64::INFINITY),
            E::FailureRateThreshold(f64::INFINITY),
        ),
        (Config::builder().slow_calls(0.0, secs(1)), E::SlowCallRateThreshold(0.0)),
        (Config::builder().slow_calls(50.0, Duration::ZERO), E::SlowCallDuration),
        (Config::builder().minimum_calls(0), E::MinimumCalls { value: 0, max: 100 }),
        (
            Config::builder().count_window(5).minimum_calls(6),
            E::MinimumCalls { value: 6, max: 5 },
        ),
        (Config::builder().open_wait(Duration::ZERO), E::OpenWait),
        (Config::builder().half_open_permits(0), E::HalfOpenPermits),
        (Config::builder().max_half_open_wait(Duration::ZERO), E::MaxHalfOpenWait),
    ];
    for (builder, expected) in cases {
        assert_eq!(refused(builder), expected);
    }
    // NaN is not equal to itself, so that case compares the field.
    let nan = refused(Config::builder().failure_rate_threshold(f64::NAN));
    assert_eq!(nan.field(), "failure_rate_threshold");
    assert_eq!(
        refused(Config::builder().slow_calls(f64::NAN, secs(1))).field(),
        "slow_calls.rate_threshold"
    );
    // The limits themselves are allowed.
    let edges = Config::builder()
        .count_window(1_000_000)
        .minimum_calls(1_000_000)
        .failure_rate_threshold(100.0)
        .slow_calls(100.0, Duration::from_nanos(1))
        .open_wait(Duration::MAX)
        .half_open_permits(u32::MAX)
        .max_half_open_wait(Duration::MAX)
        .build();
    assert!(edges.is_ok(), "{edges:?}");
    let time = Config::builder()
        .time_window(1_000, Duration::from_nanos(1))
        .minimum_calls(u32::MAX)
        .build();
    assert!(time.is_ok(), "a time window bounds no number of calls: {time:?}");
}

#[tokio::test(start_paused = true)]
async fn a_wait_too_long_for_the_clock_never_ends_and_does_not_overflow() {
    let config = Config::builder()
        .count_window(1)
        .minimum_calls(1)
        .open_wait(Duration::MAX)
        .build()
        .unwrap();
    let breaker = CircuitBreaker::new(config);
    record(&breaker, &[F]);
    advance(Duration::from_secs(100 * 365 * 24 * 3600)).await;
    assert_eq!(breaker.try_acquire().err().map(|r| r.state), Some(State::Open));
    breaker.reset();
    record(&breaker, &[S]);
    assert_eq!(breaker.state(), State::Closed);
}

// --- thresholds and the window
// ----------------------------------------------------------------

#[test]
fn a_failure_rate_exactly_at_the_threshold_opens() {
    let (breaker, events) = with_events(ten_calls());
    record(&breaker, &[S, S, S, S, S, F, F, F, F, F]);
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        events.lock().unwrap()[0].reason,
        Reason::FailureRate { percent: 50.0 }
    );
}

#[test]
fn a_failure_rate_just_below_the_threshold_stays_closed() {
    let breaker = CircuitBreaker::new(ten_calls());
    record(&breaker, &[S, S, S, S, S, S, F, F, F, F]);
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics().failure_rate, 40.0);
}

#[test]
fn a_failure_rate_just_above_the_threshold_opens() {
    let breaker = CircuitBreaker::new(ten_calls());
    record(&breaker, &[S, S, S, S, F, F, F, F, F, F]);
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn no_verdict_before_the_minimum_number_of_calls() {
    let config = Config::builder()
        .count_window(10)
        .minimum_calls(5)
        .failure_rate_threshold(50.0)
        .build()
        .unwrap();
    let breaker = CircuitBreaker::new(config);
    record(&breaker, &[F, F, F, F]);
    assert_eq!(
        breaker.state(),
        State::Closed,
        "100% failures, but only 4 calls of the 5 needed"
    );
    record(&breaker, &[F]);
    assert_eq!(breaker.state(), State::Open);
}

#[test]
fn the_count_window_forgets_calls_that_slid_out() {
    let config = Config::builder()
        .count_window(4)
        .minimum_calls(4)
        .failure_rate_threshold(75.0)
        .build()
        .unwrap();
    let breaker = CircuitBreaker::new(config);
    record(&breaker, &[F, F, S, S]); // 50%
    record(&breaker, &[S]); // window F S S S: 25%, the first F wrapped out
    record(&breaker, &[F, F]); // S S F F: 50%
    assert_eq!(breaker.state(), State::Closed);
    record(&breaker, &[F]); // S F F F: 75%
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn the_time_window_evicts_old_buckets() {
    let config = Config::builder()
        .time_window(5, Duration::from_secs(1))
        .minimum_calls(3)
        .failure_rate_threshold(50.0)
        .build()
        .unwrap();
    let breaker = CircuitBreaker::new(config);
    record(&breaker, &[F]);
    advance(Duration::from_secs(1)).await;
    record(&breaker, &[F]);
    // The first failure's bucket has left the 5 s window.
    advance(Duration::from_secs(4)).await;
    record(&breaker, &[S, S]);
    assert_eq!(
        breaker.state(),
        State::Closed,
        "F S S is 33%; counting the evicted F would make 50%"
    );
    assert_eq!(breaker.metrics().window.calls, 3);
    record(&breaker, &[F]); // F S S F: 50%
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_breaker_even_when_they_succeed() {
    let config = Config::builder()
        .count_window(4)
        .minimum_calls(4)
        .slow_calls(50.0, Duration::from_millis(500))
        .build()
        .unwrap();
    let (breaker, events) = with_events(config);
    for latency in [10, 600, 10, 700] {
        let answer = breaker.call(async {
            tokio::time::sleep(Duration::from_millis(latency)).await;
            Ok::<_, Infallible>(())
        });
        answer.await.unwrap();
    }
    assert_eq!(breaker.state(), State::Open);
    assert_eq!(
        events.lock().unwrap()[0].reason,
        Reason::SlowCallRate { percent: 50.0 }
    );
    assert_eq!(breaker.metrics().slow, 2);
}

// --- open and half-open
// -----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn open_becomes_half_open_when_the_wait_has_elapsed() {
    let (breaker, events) = with_events(ten_calls());
    open(&breaker);
    advance(Duration::from_secs(10) - Duration::from_millis(1)).await;
    assert_eq!(breaker.try_acquire().err().map(|r| r.state), Some(State::Open));
    advance(Duration::from_millis(1)).await;
    let probe = breaker.try_acquire().expect("a probe after the open wait");
    assert_eq!(breaker.state(), State::HalfOpen);
    probe.record(S);
    assert_eq!(events.lock().unwrap()[1].reason, Reason::OpenWaitElapsed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_gives_its_permit_back() {
    let breaker = CircuitBreaker::new(
        Config::builder()
            .count_window(1)
            .minimum_calls(1)
            .half_open_permits(1)
            .open_wait(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    record(&breaker, &[F]);
    advance(Duration::from_secs(1)).await;
    let probe = breaker.try_acquire().unwrap();
    assert!(breaker.try_acquire().is_err(), "the only permit is taken");
    drop(probe); // the probe's caller gave up
    breaker.try_acquire().expect("the permit is free again").record(S);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn an_ignored_probe_gives_its_permit_back() {
    let breaker = CircuitBreaker::new(
        Config::builder()
            .count_window(1)
            .minimum_calls(1)
            .half_open_permits(1)
            .open_wait(Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    record(&breaker, &[F]);
    advance(Duration::from_secs(1)).await;
    breaker.try_acquire().unwrap().record(I);
    assert_eq!(breaker.state(), State::HalfOpen, "an ignored probe decides nothing");
    breaker.try_acquire().expect("the permit is free again").record(F);
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_its_permits_among_64_concurrent_callers() {
    let config = Config::builder()
        .count_window(1)
        .minimum_calls(1)
        .half_open_permits(3)
        .open_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let breaker = CircuitBreaker::new(config);
    record(&breaker, &[F]);
    advance(Duration::from_secs(1)).await;
    let runtime = tokio::runtime::Handle::current();
    let granted = AtomicUsize::new(0);
    let (all_asked, all_counted) = (Barrier::new(64), Barrier::new(64));
    std::thread::scope(|scope| {
        for _ in 0..64 {
            scope.spawn(|| {
                let _clock = runtime.enter(); // read the test's paused clock
                all_asked.wait();
                let permit = breaker.try_acquire();
                if permit.is_ok() {
                    granted.fetch_add(1, Ordering::SeqCst);
                }
                all_counted.wait(); // hold every permit until everyone has asked
                drop(permit);
            });
        }
    });
    assert_eq!(granted.load(Ordering::SeqCst), 3);
    assert_eq!(breaker.metrics().rejected, 61);
    assert_eq!(breaker.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn the_full_cycle_closed_open_half_open_open_half_open_closed() {
    let (breaker, events) = with_events(ten_calls());
    open(&breaker);
    advance(Duration::from_secs(10)).await;
    record(&breaker, &[F, S]); // probes: 50% failures, at the threshold
    assert_eq!(breaker.state(), State::Open);
    advance(Duration::from_secs(10)).await;
    record(&breaker, &[S, S]);
    assert_eq!(breaker.state(), State::Closed);
    use State::*;
    assert_eq!(
        moves(&events),
        [
            (Closed, Open),
            (Open, HalfOpen),
            (HalfOpen, Open),
            (Open, HalfOpen),
            (HalfOpen, Closed)
        ]
    );
    assert_eq!(
        events.lock().unwrap()[2].reason,
        Reason::ProbesFailed { failure_percent: 50.0, slow_percent: 0.0 }
    );
    // Closed again with a clean window: one failure is not a verdict.
    record(&breaker, &[F]);
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_half_open_whose_probes_never_answer_opens_again() {
    // 2 probes, 30 s at most in half-open.
    let (breaker, events) = with_events(ten_calls());
    open(&breaker);
    advance(Duration::from_secs(10)).await;
    let hung = [breaker.try_acquire().unwrap(), breaker.try_acquire().unwrap()];
    advance(Duration::from_secs(29)).await;
    assert_eq!(
        breaker.try_acquire().err().map(|r| r.state),
        Some(State::HalfOpen),
        "still waiting for the probes"
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(
        breaker.try_acquire().err().map(|r| r.state),
        Some(State::Open),
        "gave up on the probes"
    );
    assert_eq!(
        events.lock().unwrap().last().unwrap().reason,
        Reason::HalfOpenTimedOut
    );
    for late in hung {
        late.record(S); // answers from an old half-open decide nothing now
    }
    assert_eq!(breaker.state(), State::Open);
    advance(Duration::from_secs(10)).await;
    record(&breaker, &[S, S]);
    assert_eq!(breaker.state(), State::Closed);
}

#[test]
fn an_outcome_from_before_a_transition_is_discarded() {
    let breaker = CircuitBreaker::new(ten_calls());
    let in_flight = breaker.try_acquire().unwrap();
    breaker.force_open();
    breaker.reset();
    in_flight.record(F);
    assert_eq!(
        breaker.metrics().window.calls,
        0,
        "the failure belongs to a window that no longer exists"
    );
}

// --- events, metrics, operators
// ---------------------------------------------------------------

#[test]
fn a_transition_is_reported_exactly_once_when_64_failures_race_across_the_threshold()
{
    let (breaker, events) = with_events(ten_calls());
    let all_admitted = Barrier::new(64);
    std::thread::scope(|scope| {
        for _ in 0..64 {
            scope.spawn(|| {
                let permit = breaker.try_acquire().unwrap();
                all_admitted.wait();
                permit.record(F);
            });
        }
    });
    assert_eq!(moves(&events), [(State::Closed, State::Open)]);
    assert_eq!(breaker.metrics().transitions, 1);
    assert_eq!(breaker.metrics().failed, 64);
}

#[test]
fn concurrent_mixed_outcomes_are_all_counted_exactly() {
    // Mostly successes (the lock-free all-clear path) and some failures (the locked
    // path), from 64 threads at once. Whatever state the interleaving drives the
    // breaker to, every outcome it accepted is counted, and every call it refused is
    // counted as a rejection.
    let breaker = CircuitBreaker::new(
        Config::builder().count_window(20).minimum_calls(20).build().unwrap(),
    );
    let (successes, failures, refused) =
        (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    let start = Barrier::new(64);
    std::thread::scope(|scope| {
        for t in 0..64 {
            let (breaker, successes, failures, refused, start) =
                (&breaker, &successes, &failures, &refused, &start);
            scope.spawn(move || {
                start.wait();
                for i in 0..100 {
                    let Ok(permit) = breaker.try_acquire() else {
                        refused.fetch_add(1, Ordering::SeqCst);
                        continue;
                    };
                    if (i + t) % 25 == 0 {
                        permit.record(F);
                        failures.fetch_add(1, Ordering::SeqCst);
                    } else {
                        permit.record(S);
                        successes.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
        }
    });
    let m = breaker.metrics();
    let (s, f, r) =
        (successes.into_inner(), failures.into_inner(), refused.into_inner());
    assert_eq!(s + f + r, 6_400);
    assert_eq!((m.successful, m.failed, m.rejected), (s as u64, f as u64, r as u64));
    // The window still judges after all that: reset, then failures open it.
    breaker.reset();
    record(&breaker, &[F; 20]);
    assert_eq!(breaker.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn force_open_disable_and_reset() {
    let (breaker, events) = with_events(ten_calls());
    breaker.force_open();
    advance(Duration::from_secs(3600)).await;
    assert_eq!(
        breaker.try_acquire().err().map(|r| r.state),
        Some(State::ForcedOpen),
        "no half-open from forced-open"
    );
    breaker.force_open(); // already there: no second event
    breaker.disable();
    record(&breaker, &[F; 50]);
    assert_eq!(breaker.state(), State::Disabled, "disabled judges nothing");
    breaker.reset();
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.metrics().window.calls, 0);
    use State::*;
    assert_eq!(
        moves(&events),
        [(Closed, ForcedOpen), (ForcedOpen, Disabled), (Disabled, Closed)]
    );
}

#[test]
fn metrics_count_every_kind_of_call() {
    let breaker = CircuitBreaker::new(ten_calls());
    record(&breaker, &[S, S, I, F, F, F, F, F, F, F, F]);
    assert!(breaker.try_acquire().is_err());
    let m = breaker.metrics();
    assert_eq!(
        (m.successful, m.failed, m.ignored, m.rejected, m.state),
        (2, 8, 1, 1, State::Open)
    );
}

// --- the two ways to use it
// -------------------------------------------------------------------

#[tokio::test]
async fn call_runs_the_future_only_when_allowed() {
    let breaker = CircuitBreaker::new(ten_calls());
    for _ in 0..10 {
        let result = breaker.call(async { Err::<(), _>("upstream 503") }).await;
        assert_eq!(result, Err(CallError::Inner("upstream 503")));
    }
    let ran = AtomicUsize::new(0);
    let result = breaker
        .call(async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, &str>(())
        })
        .await;
    assert!(matches!(result, Err(CallError::Rejected(r)) if r.state == State::Open));
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "an open breaker does not even start the call"
    );
}

#[tokio::test]
async fn a_classifier_decides_what_counts_as_a_failure() {
    let breaker = CircuitBreaker::new(ten_calls());
    let by_status = |r: &Result<u16, ()>| match r {
        Ok(status) => circuit_breaker::classify::http_status(*status),
        Err(()) => Outcome::Failure,
    };
    for _ in 0..20 {
        breaker.call_with(async { Ok::<u16, ()>(404) }, by_status).await.unwrap();
    }
    assert_eq!(
        breaker.state(),
        State::Closed,
        "404s are the caller's problem, not the upstream's"
    );
    for _ in 0..4 {
        breaker.call_with(async { Ok::<u16, ()>(503) }, by_status).await.unwrap();
    }
    assert_eq!(breaker.state(), State::Closed, "4 of the last 10 calls failed: 40%");
    breaker.call_with(async { Ok::<u16, ()>(503) }, by_status).await.unwrap();
    assert_eq!(breaker.state(), State::Open, "5 of the last 10: 50%");
}

/// One probe permit, 1 s open wait, opened by a single failure.
fn one_probe() -> Config {
    Config::builder()
        .count_window(1)
        .minimum_calls(1)
        .half_open_permits(1)
        .open_wait(Duration::from_secs(1))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_future_gives_its_probe_permit_back() {
    let breaker = CircuitBreaker::new(one_probe());
    record(&breaker, &[F]);
    advance(Duration::from_secs(1)).await;

    // The caller gives up on a probe that hangs: its timeout drops the `call`
    // future.
    let hangs = std::future::pending::<Result<(), &str>>();
    let gave_up = timeout(Duration::from_secs(5), breaker.call(hangs)).await;
    assert!(gave_up.is_err(), "the probe never answered");
    assert_eq!(breaker.state(), State::HalfOpen);
    breaker.try_acquire().expect("the timed-out probe's permit is free").record(S);
    assert_eq!(breaker.state(), State::Closed);

    // The same, dropping by hand a call that was polled once (and holds the permit).
    record(&breaker, &[F]);
    advance(Duration::from_secs(1)).await;
    let mut probe = Box::pin(breaker.call(std::future::pending::<Result<(), ()>>()));
    assert!(futures::poll!(probe.as_mut()).is_pending());
    assert!(breaker.try_acquire().is_err(), "the only permit is held by the call");
    drop(probe);
    breaker.try_acquire().expect("dropping the call freed the permit").record(S);
    assert_eq!(breaker.state(), State::Closed);
}

/// An inner service that counts readiness polls and calls; `true` fails, and
/// `pending` hangs.
fn counted_upstream(
    readied: &Arc<AtomicUsize>,
    called: &Arc<AtomicUsize>,
    pending: bool,
) -> impl Service<
    bool,
    Response = &'static str,
    Error = &'static str,
    Future = impl Future<Output = Result<&'static str, &'static str>>,
> + Clone {
    let called = Arc::clone(called);
    let inner = service_fn(move |fail: bool| {
        called.fetch_add(1, Ordering::SeqCst);
        async move {
            if pending {
                std::future::pending::<()>().await;
            }
            if fail { Err("upstream 500") } else { Ok("ok") }
        }
    });
    CountReady { inner, readied: Arc::clone(readied) }
}

#[tokio::test]
async fn the_layer_rejects_without_calling_the_inner_service_and_clones_share_state()
{
    let (readied, called) = (Arc::default(), Arc::default());
    let breaker = CircuitBreaker::new(ten_calls());
    let mut first = CircuitBreakerLayer::new(breaker.clone())
        .layer(counted_upstream(&readied, &called, false));
    let mut second = first.clone();

    for _ in 0..10 {
        assert!(matches!(
            first.ready().await.unwrap().call(true).await,
            Err(CallError::Inner("upstream 500"))
        ));
    }
    assert_eq!(breaker.state(), State::Open);
    let called_before = called.load(Ordering::SeqCst);

    // The clone shares the breaker: it is open for the second service too.
    let rejected = second.ready().await.unwrap().call(false).await;
    assert!(
        matches!(rejected, Err(CallError::Rejected(r)) if r.state == State::Open)
    );
    assert_eq!(
        called.load(Ordering::SeqCst),
        called_before,
        "no call reached the upstream"
    );
    assert_eq!(readied.load(Ordering::SeqCst), 11, "readiness is the inner's");
}

#[tokio::test]
async fn the_layer_decides_when_called_not_when_polled_ready() {
    let (readied, called) = (Arc::default(), Arc::default());
    let breaker = CircuitBreaker::new(ten_calls());
    let layer = CircuitBreakerLayer::new(breaker.clone());
    let mut early = layer.layer(counted_upstream(&readied, &called, false));
    // Readied while the breaker is closed (as a balancer's ready cache does ahead
    // of work)...
    early.ready().await.unwrap();
    // ...and the breaker opens before the request comes.
    open(&breaker);
    let late = early.call(false).await;
    assert!(
        matches!(late, Err(CallError::Rejected(r)) if r.state == State::Open),
        "a service readied before the breaker opened is still refused: {late:?}"
    );
    assert_eq!(called.load(Ordering::SeqCst), 0, "the upstream was not called");
}

#[tokio::test(start_paused = true)]
async fn a_readied_idle_service_holds_no_probe_permit() {
    let (readied, called) = (Arc::default(), Arc::default());
    let breaker = CircuitBreaker::new(one_probe());
    let layer = CircuitBreakerLayer::new(breaker.clone());
    let mut idle = layer.layer(counted_upstream(&readied, &called, false));
    let mut busy = layer.layer(counted_upstream(&readied, &called, false));
    record(&breaker, &[F]);
    advance(Duration::from_secs(1)).await;

    idle.ready().await.unwrap(); // readied, then never called
    let probe = busy.ready().await.unwrap().call(false).await;
    assert_eq!(probe, Ok("ok"), "the only probe permit went to the call");
    assert_eq!(breaker.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_response_future_gives_its_probe_permit_back() {
    let (readied, called) = (Arc::default(), Arc::default());
    let breaker = CircuitBreaker::new(one_probe());
    let layer = CircuitBreakerLayer::new(breaker.clone());
    let mut hanging = layer.layer(counted_upstream(&readied, &called, true));
    record(&breaker, &[F]);
    advance(Duration::from_secs(1)).await;

    let response = hanging.ready().await.unwrap().call(false);
    assert!(timeout(Duration::from_secs(5), response).await.is_err(), "it hangs");
    assert_eq!(called.load(Ordering::SeqCst), 1, "the probe was sent");
    breaker.try_acquire().expect("the dropped probe's permit is free").record(S);
    assert_eq!(breaker.state(), State::Closed);
}

/// A service wrapper that counts `poll_ready` calls.
#[derive(Clone)]
struct CountReady<S> {
    inner: S,
    readied: Arc<AtomicUsize>,
}

impl<S: Service<R>, R> Service<R> for CountReady<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.readied.fetch_add(1, Ordering::SeqCst);
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, request: R) -> S::Future {
        self.inner.call(request)
    }
}
