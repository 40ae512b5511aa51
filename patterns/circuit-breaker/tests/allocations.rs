//! The happy path allocates nothing: a closed breaker's `call` and tower layer make
//! no heap allocation per call (counted by a counting global allocator in this test
//! binary).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, Config};
use tower::{Layer, Service, ServiceExt, service_fn};

#[path = "support/counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// Counted on this thread only (the runtime is current-thread, so the breaker runs
/// here too).
#[test]
fn closed_calls_make_no_heap_allocation() {
    let rt =
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let breaker = CircuitBreaker::new(
        Config::builder()
            .time_window(10, std::time::Duration::from_secs(1))
            .build()
            .unwrap(),
    );
    let mut layered = CircuitBreakerLayer::new(breaker.clone())
        .layer(service_fn(|x: u64| async move { Ok::<_, ()>(x) }));
    rt.block_on(async {
        // Warm up: lazily initialised runtime and timer state may allocate once.
        for _ in 0..100 {
            breaker.call(async { Ok::<_, ()>(1) }).await.unwrap();
            layered.ready().await.unwrap().call(1).await.unwrap();
        }
        let before = counting::allocations();
        for i in 0..1_000 {
            // Some failures, below the threshold.
            let failed = i % 10 == 0;
            let outcome = if failed { Err(()) } else { Ok(1) };
            assert_eq!(breaker.call(async { outcome }).await.is_err(), failed);
            layered.ready().await.unwrap().call(1).await.unwrap();
        }
        assert_eq!(
            counting::allocations() - before,
            0,
            "the closed path must not allocate"
        );
    });
    assert_eq!(breaker.state(), circuit_breaker::State::Closed);
}
