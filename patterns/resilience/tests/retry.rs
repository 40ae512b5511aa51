//! Retries: who is retried, how often, how long the waits are, and what a budget does to an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use resilience::backoff::Backoff;
use resilience::budget::RetryBudget;
use resilience::retry::{Idempotency, RetryPolicy, Retryable};

#[derive(Debug, PartialEq)]
enum UpstreamError {
    Unavailable,
    BadRequest,
}

impl Retryable for UpstreamError {
    fn is_retryable(&self) -> bool {
        *self == UpstreamError::Unavailable
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpstreamError::Unavailable => "503 Service Unavailable",
            UpstreamError::BadRequest => "400 Bad Request",
        })
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy::new(
        4,
        Backoff { base: Duration::from_millis(10), max: Duration::from_millis(200) },
    )
}

/// Runs one call against an upstream that fails with `error` `failures` times, then succeeds.
async fn call(
    policy: &RetryPolicy,
    idempotency: Idempotency,
    error: fn() -> UpstreamError,
    failures: u32,
    attempts: &AtomicU32,
) -> Result<&'static str, UpstreamError> {
    policy
        .run(idempotency, |attempt| {
            attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt <= failures { Err(error()) } else { Ok("stock: 12") }
            }
        })
        .await
}

#[tokio::test(start_paused = true)]
async fn a_retryable_failure_is_retried_until_it_succeeds() {
    let attempts = AtomicU32::new(0);
    let result = call(
        &policy(),
        Idempotency::Idempotent,
        || UpstreamError::Unavailable,
        2,
        &attempts,
    )
    .await;
    assert_eq!(result, Ok("stock: 12"));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn attempts_stop_at_the_maximum() {
    let attempts = AtomicU32::new(0);
    let result = call(
        &policy(),
        Idempotency::Idempotent,
        || UpstreamError::Unavailable,
        99,
        &attempts,
    )
    .await;
    assert_eq!(result, Err(UpstreamError::Unavailable));
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn an_operation_that_is_not_idempotent_is_never_retried() {
    let attempts = AtomicU32::new(0);
    let result = call(
        &policy(),
        Idempotency::NotIdempotent,
        || UpstreamError::Unavailable,
        1,
        &attempts,
    )
    .await;
    assert_eq!(
        result,
        Err(UpstreamError::Unavailable),
        "the one attempt's error, even though a retry would have worked"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_error_that_is_not_retryable_is_not_retried() {
    let attempts = AtomicU32::new(0);
    let result = call(
        &policy(),
        Idempotency::Idempotent,
        || UpstreamError::BadRequest,
        1,
        &attempts,
    )
    .await;
    assert_eq!(result, Err(UpstreamError::BadRequest));
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn waits_between_attempts_stay_under_their_ceilings() {
    let began = tokio::time::Instant::now();
    let attempts = AtomicU32::new(0);
    call(
        &policy(),
        Idempotency::Idempotent,
        || UpstreamError::Unavailable,
        99,
        &attempts,
    )
    .await
    .unwrap_err();
    // Three waits, each at most 10, 20 and 40 ms.
    assert!(
        began.elapsed() <= Duration::from_millis(70),
        "waited {:?}",
        began.elapsed()
    );
}

// ANCHOR: budget_test
#[tokio::test(start_paused = true)]
async fn with_every_call_failing_a_budget_keeps_attempts_near_the_calls() {
    let calls = 1_000;
    let unbudgeted = AtomicU32::new(0);
    let budgeted = AtomicU32::new(0);
    let with_budget = policy().with_budget(Arc::new(RetryBudget::new(0.1, 10)));
    for _ in 0..calls {
        call(
            &policy(),
            Idempotency::Idempotent,
            || UpstreamError::Unavailable,
            u32::MAX,
            &unbudgeted,
        )
        .await
        .unwrap_err();
        call(
            &with_budget,
            Idempotency::Idempotent,
            || UpstreamError::Unavailable,
            u32::MAX,
            &budgeted,
        )
        .await
        .unwrap_err();
    }
    assert_eq!(
        unbudgeted.load(Ordering::SeqCst),
        4 * calls,
        "a retry storm: four times the load"
    );
    let attempts = budgeted.load(Ordering::SeqCst);
    // Each call deposits 0.1 retry, and 10 are in reserve: at most 1000 + 110.
    assert!(
        attempts <= calls + calls / 10 + 10,
        "{attempts} attempts exceed the budget"
    );
    assert!(attempts > calls, "the budget still allows some retries");
}
// ANCHOR_END: budget_test

#[tokio::test(start_paused = true)]
async fn the_examples_budget_allows_24_retries_because_a_full_budget_drops_a_deposit()
 {
    // The retry_budget example's budget: 10% and a reserve of 5, which is also its cap.
    let budgeted = policy().with_budget(Arc::new(RetryBudget::new(0.1, 5)));
    let attempts = AtomicU32::new(0);
    for _ in 0..200 {
        call(
            &budgeted,
            Idempotency::Idempotent,
            || UpstreamError::Unavailable,
            u32::MAX,
            &attempts,
        )
        .await
        .unwrap_err();
    }
    // 5 + 200 x 0.1 = 25 tokens, less the first deposit, which arrived while the budget was
    // full: 24.9, so 24 retries. Without the cap this would be 225.
    assert_eq!(attempts.load(Ordering::SeqCst), 200 + 24);
}

proptest! {
    #[test]
    fn the_delay_never_exceeds_the_maximum_or_the_ceiling(
        base_ms in 1u64..1_000,
        max_ms in 1u64..60_000,
        retry in 0u32..100,
        seed in any::<u64>(),
    ) {
        let backoff = Backoff { base: Duration::from_millis(base_ms), max: Duration::from_millis(max_ms) };
        let mut rng = fastrand::Rng::with_seed(seed);
        let delay = backoff.delay(retry, &mut rng);
        prop_assert!(delay <= backoff.max);
        prop_assert!(delay <= backoff.ceiling(retry));
    }
}

#[test]
fn full_jitter_spreads_the_waits_over_the_whole_range() {
    let backoff =
        Backoff { base: Duration::from_millis(100), max: Duration::from_secs(10) };
    let ceiling = backoff.ceiling(2); // 400 ms
    let mut rng = fastrand::Rng::with_seed(7);
    let waits: Vec<Duration> =
        (0..1_000).map(|_| backoff.delay(2, &mut rng)).collect();
    // Uniform over [0, 400 ms]: each tenth of the range gets about 100 of the
    // 1000 waits, none is empty, and the waits reach both ends. Callers that
    // failed together spread out over all of it, not around a midpoint.
    let mut tenths = [0u32; 10];
    for wait in &waits {
        let tenth = (wait.as_nanos() * 10 / ceiling.as_nanos()).min(9);
        tenths[tenth as usize] += 1;
    }
    assert!(
        tenths.iter().all(|n| (60..140).contains(n)),
        "waits per tenth of the range: {tenths:?}"
    );
    let (shortest, longest) =
        (waits.iter().min().unwrap(), waits.iter().max().unwrap());
    assert!(*shortest < ceiling / 100, "shortest {shortest:?}");
    assert!(*longest > ceiling * 99 / 100, "longest {longest:?}");
}
