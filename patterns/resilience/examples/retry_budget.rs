//! The checkout calls the payments service during an outage, with retries: with a retry budget,
//! and (to break it) without one, which turns the outage into a retry storm.
//!
//! Run it:   `cargo run --example retry_budget`
//! Break it: `cargo run --example retry_budget -- --no-budget`   every call retries 3 more times
//!
//! 200 checkouts arrive in waves of 20 while every payments call fails with a 503. Each checkout
//! may try up to 4 times, with exponential backoff and full jitter. The example counts the attempts
//! that reached the payments service and checks the exact count the budget allows: 224 with it,
//! 800 without.
//!
//! It runs on one thread, so a checkout's deposit and its first withdrawal follow each other
//! without another checkout in between. That makes the count depend only on the plan, not on how
//! threads interleave (see the comment at the final check).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure};
use resilience::backoff::Backoff;
use resilience::budget::RetryBudget;
use resilience::retry::{Idempotency, RetryPolicy, Retryable};
use tracing::{info, warn};

/// What the payments service answers during the outage.
#[derive(Debug)]
struct Unavailable;

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("503 Service Unavailable")
    }
}

impl Retryable for Unavailable {
    fn is_retryable(&self) -> bool {
        true
    }
}

const CHECKOUTS: u32 = 200;
const WAVE: u32 = 20;

// ANCHOR: policy
fn policy(budgeted: bool) -> RetryPolicy {
    let policy = RetryPolicy::new(
        4,
        Backoff { base: Duration::from_millis(5), max: Duration::from_millis(80) },
    );
    if budgeted {
        // Retries may add 10% to the calls, plus a reserve of 5 for a quiet start.
        policy.with_budget(Arc::new(RetryBudget::new(0.1, 5)))
    } else {
        policy
    }
}
// ANCHOR_END: policy

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let flags = infra::example::Flags::parse(&["--no-budget"])
        .map_err(anyhow::Error::msg)?;
    let budgeted = !flags.has("--no-budget");
    let policy = policy(budgeted);
    let reached = Arc::new(AtomicU32::new(0));
    info!(
        "payments is down; {CHECKOUTS} checkouts, up to 4 attempts each, retry budget: {}",
        if budgeted { "10%" } else { "none" }
    );

    for wave in 0..CHECKOUTS / WAVE {
        let mut callers = Vec::new();
        for _ in 0..WAVE {
            let (policy, reached) = (policy.clone(), Arc::clone(&reached));
            // Reading a payment's status is idempotent, so it may be retried.
            callers.push(tokio::spawn(async move {
                policy
                    .run(Idempotency::Idempotent, |_| {
                        reached.fetch_add(1, Ordering::Relaxed);
                        async { Err::<(), _>(Unavailable) }
                    })
                    .await
            }));
        }
        for caller in callers {
            // The outage is total: a checkout that succeeded would be a bug here.
            if caller.await?.is_ok() {
                bail!("a checkout succeeded while payments was down");
            }
        }
        info!(
            wave,
            "{} checkouts so far; the payments service has seen {} attempts",
            (wave + 1) * WAVE,
            reached.load(Ordering::Relaxed)
        );
    }

    // Creating a payment without an idempotency key is not idempotent: one attempt, never retried.
    let attempts = AtomicU32::new(0);
    let charged = policy
        .run(Idempotency::NotIdempotent, |_| {
            attempts.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), _>(Unavailable) }
        })
        .await;
    ensure!(charged.is_err(), "the POST cannot succeed while payments is down");
    info!(
        "a non-idempotent POST /payments was tried {} time(s): retrying it could charge twice",
        attempts.load(Ordering::Relaxed)
    );

    let total = reached.load(Ordering::Relaxed);
    let load = f64::from(total) / f64::from(CHECKOUTS);
    if budgeted {
        info!(
            "done: {total} attempts for {CHECKOUTS} checkouts ({load:.2}x the load); the budget refused the rest"
        );
        // ANCHOR: exact_count
        // The budget starts full: its reserve of 5 is also its cap. The first
        // checkout's deposit of 0.1 overflows the cap and is dropped; no later
        // one can (each checkout spends before the next one deposits). Left:
        // 5 + 200 x 0.1 - 0.1 = 24.9 tokens, 24 whole retries; 0.9 unspent.
        ensure!(
            total == CHECKOUTS + 24,
            "the budget allows exactly 24 retries here, not {}",
            total - CHECKOUTS
        );
        // ANCHOR_END: exact_count
    } else {
        warn!(
            "done: {total} attempts for {CHECKOUTS} checkouts ({load:.2}x the load): a retry storm on a service that is already down"
        );
        ensure!(
            total == 4 * CHECKOUTS,
            "without a budget every checkout makes all 4 attempts"
        );
    }
    ensure!(
        attempts.load(Ordering::Relaxed) == 1,
        "a non-idempotent call must not be retried"
    );
    Ok(())
}
