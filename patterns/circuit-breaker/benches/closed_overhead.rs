//! Closed-state overhead per call: no breaker, this crate, and published Rust
//! breakers, measured in one run on one machine, plus heap allocations per call from
//! a counting allocator.
//!
//! Run it: `cargo bench -p circuit-breaker --bench closed_overhead`
//!
//! Every contender wraps the same trivial async call that always succeeds, so what
//! is measured is the breaker's own cost on the happy path. `cargo test` runs this
//! file once in criterion's test mode, which keeps it compiling and working.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic with a message

use std::hint::black_box;
use std::time::{Duration, Instant};

use circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, Config};
use criterion::Criterion;
use failsafe::futures::CircuitBreaker as _;
use recloser::{AsyncRecloser, Recloser};
use tower::{Layer, Service, ServiceExt, service_fn};

#[path = "../tests/support/counting.rs"]
mod counting;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

async fn work() -> Result<u64, &'static str> {
    Ok(black_box(42))
}

/// Runs `call` `n` times on the runtime; returns the elapsed time and the
/// allocations made.
fn run(
    rt: &tokio::runtime::Runtime,
    n: u64,
    mut call: impl AsyncFnMut(),
) -> (Duration, u64) {
    rt.block_on(async {
        let allocations = counting::allocations();
        let began = Instant::now();
        for _ in 0..n {
            call().await;
        }
        (began.elapsed(), counting::allocations() - allocations)
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let _clock = rt.enter();

    let ours = CircuitBreaker::new(Config::default());
    let recloser = AsyncRecloser::from(Recloser::custom().build());
    let failsafe = failsafe::Config::new().build();
    let echo =
        || service_fn(|x: u64| async move { Ok::<_, &'static str>(black_box(x)) });
    let mut ours_layer =
        CircuitBreakerLayer::new(CircuitBreaker::new(Config::default()))
            .layer(echo());
    let mut theirs_layer =
        tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
            .build()
            .expect("a valid tower-resilience config")
            .layer(echo());
    let mut no_layer = echo();

    // Each contender runs `n` calls and reports (time, allocations). The tower ones
    // await readiness and then the call, in full.
    type Contender<'a> = (&'static str, Box<dyn FnMut(u64) -> (Duration, u64) + 'a>);
    let mut contenders: Vec<Contender> = vec![
        (
            "no breaker, async fn",
            Box::new(|n| run(&rt, n, async || consume(work().await))),
        ),
        (
            "circuit-breaker call()",
            Box::new(|n| run(&rt, n, async || consume(ours.call(work()).await))),
        ),
        (
            "recloser 1.4",
            Box::new(|n| run(&rt, n, async || consume(recloser.call(work()).await))),
        ),
        (
            "failsafe 1.3",
            Box::new(|n| run(&rt, n, async || consume(failsafe.call(work()).await))),
        ),
        (
            "no breaker, tower",
            Box::new(|n| {
                run(&rt, n, async || consume(call_tower(&mut no_layer).await))
            }),
        ),
        (
            "circuit-breaker layer",
            Box::new(|n| {
                run(&rt, n, async || consume(call_tower(&mut ours_layer).await))
            }),
        ),
        (
            "tower-resilience 0.14",
            Box::new(|n| {
                run(&rt, n, async || consume(call_tower(&mut theirs_layer).await))
            }),
        ),
    ];

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("closed_call");
    for (name, measure) in &mut contenders {
        group.bench_function(*name, |b| b.iter_custom(|n| measure(n).0));
    }
    group.finish();
    criterion.final_summary();

    println!("\nheap allocations per call (10 000 calls each, after a warm-up):");
    for (name, measure) in &mut contenders {
        measure(1_000);
        let (_, allocations) = measure(10_000);
        println!("  {name:<24} {:>6.2}", allocations as f64 / 10_000.0);
    }
}

/// Keeps the optimizer from discarding a result, whatever its type.
fn consume<T>(value: T) {
    let _ = black_box(value);
}

async fn call_tower<S: Service<u64>>(
    service: &mut S,
) -> Result<S::Response, S::Error> {
    service.ready().await?.call(1).await
}
