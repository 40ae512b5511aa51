//! The gateway serves product pages that call two dependencies: inventory (fast) and
//! recommendations (slow today). With a bulkhead per dependency, the slow one cannot take the
//! gateway's whole connection pool; without (to break it), inventory calls queue behind it.
//!
//! Run it:   `cargo run --example bulkhead`
//! Break it: `cargo run --example bulkhead -- --no-bulkhead`
//!
//! The gateway has 10 upstream connections (a pool that makes callers wait when it is empty). A page
//! arrives every 10 ms, 40 in all, each calling inventory (5 ms) and recommendations (400 ms). With
//! bulkheads, recommendations may hold at most 4 connections; beyond that they are rejected at once
//! and the page shows no recommendations. The example checks inventory stayed fast with bulkheads,
//! and was held up without them.
//!
//! Time is simulated: the example runs on tokio's paused clock, which jumps straight to the next
//! timer whenever every task is waiting. The latencies are exact, the numbers are the same on every
//! machine (so the example can check them), and the run takes milliseconds of real time.

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;
use resilience::bulkhead::Bulkhead;
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep};
use tracing::{info, warn};

const POOL: usize = 10;
const PAGES: u32 = 40;
const PAGE_EVERY: Duration = Duration::from_millis(10);
const RECOMMENDATIONS_PLACES: usize = 4;
const INVENTORY_PLACES: usize = 6;
const INVENTORY_LATENCY: Duration = Duration::from_millis(5);
const RECOMMENDATIONS_LATENCY: Duration = Duration::from_millis(400);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Dependency {
    Inventory,
    Recommendations,
}

/// What one call to a dependency cost the caller.
struct Served {
    dependency: Dependency,
    waited: Duration,
    rejected: bool,
}

// ANCHOR: call_dependency
/// One call: through the dependency's bulkhead (if any), then a pooled connection.
async fn call_dependency(
    dependency: Dependency,
    pool: Arc<Semaphore>,
    bulkhead: Option<Bulkhead>,
) -> anyhow::Result<Served> {
    let began = Instant::now();
    let latency = match dependency {
        Dependency::Inventory => INVENTORY_LATENCY,
        Dependency::Recommendations => RECOMMENDATIONS_LATENCY,
    };
    let call = async {
        let _connection = pool.acquire().await?; // waits when the pool is empty
        sleep(latency).await;
        anyhow::Ok(())
    };
    let rejected = match bulkhead {
        Some(bulkhead) => match bulkhead.call(call).await {
            Ok(result) => result.map(|()| false)?,
            Err(_full) => true, // no recommendations on this page; nothing waited
        },
        None => call.await.map(|()| false)?,
    };
    Ok(Served { dependency, waited: began.elapsed(), rejected })
}
// ANCHOR_END: call_dependency

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let flags = infra::example::Flags::parse(&["--no-bulkhead"])
        .map_err(anyhow::Error::msg)?;
    let with_bulkheads = !flags.has("--no-bulkhead");
    let pool = Arc::new(Semaphore::new(POOL));
    // ANCHOR: bulkheads
    // The compartments must fit in what they share: if they added up to more than
    // the pool, a full recommendations compartment and inventory together could
    // still empty it, and inventory would queue again.
    ensure!(INVENTORY_PLACES + RECOMMENDATIONS_PLACES <= POOL);
    let (inventory, recommendations) = if with_bulkheads {
        (
            Some(Bulkhead::new("inventory", INVENTORY_PLACES)),
            Some(Bulkhead::new("recommendations", RECOMMENDATIONS_PLACES)),
        )
    } else {
        (None, None)
    };
    // ANCHOR_END: bulkheads
    info!(
        "{POOL} pooled connections; recommendations take {RECOMMENDATIONS_LATENCY:?} per call today; bulkheads: {}",
        if with_bulkheads { "on" } else { "off" }
    );

    let mut calls = Vec::new();
    for _ in 0..PAGES {
        // A page every 10 ms; each needs recommendations and inventory.
        calls.push(tokio::spawn(call_dependency(
            Dependency::Recommendations,
            Arc::clone(&pool),
            recommendations.clone(),
        )));
        calls.push(tokio::spawn(call_dependency(
            Dependency::Inventory,
            Arc::clone(&pool),
            inventory.clone(),
        )));
        sleep(PAGE_EVERY).await;
    }
    let mut served = Vec::new();
    for call in calls {
        served.push(call.await??);
    }

    let summary = |dependency: Dependency| {
        let mine: Vec<&Served> =
            served.iter().filter(|s| s.dependency == dependency).collect();
        let rejected = mine.iter().filter(|s| s.rejected).count();
        let slowest = mine.iter().map(|s| s.waited).max().unwrap_or_default();
        (mine.len(), rejected, slowest)
    };
    let (inv_calls, inv_rejected, inv_slowest) = summary(Dependency::Inventory);
    let (rec_calls, rec_rejected, rec_slowest) =
        summary(Dependency::Recommendations);
    info!(
        "inventory: {inv_calls} calls, {inv_rejected} rejected, slowest answer after {:.0} ms",
        inv_slowest.as_secs_f64() * 1000.0
    );
    info!(
        "recommendations: {rec_calls} calls, {rec_rejected} rejected at once, slowest answer after {:.0} ms",
        rec_slowest.as_secs_f64() * 1000.0
    );

    if with_bulkheads {
        ensure!(inv_rejected == 0, "inventory's own compartment should have room");
        // The first four pages take the four places and hold them for 400 ms; the last page
        // arrives at 390 ms, so every other page finds the compartment full.
        let last_page_at = PAGE_EVERY * (PAGES - 1);
        ensure!(RECOMMENDATIONS_LATENCY > last_page_at);
        ensure!(
            rec_rejected == PAGES as usize - RECOMMENDATIONS_PLACES,
            "every page after the fourth should be rejected, not {rec_rejected}"
        );
        ensure!(
            inv_slowest < RECOMMENDATIONS_LATENCY / 2,
            "inventory should not wait behind recommendations"
        );
        info!(
            "done: the slow dependency filled only its own compartment; inventory stayed fast"
        );
    } else {
        ensure!(
            inv_slowest >= RECOMMENDATIONS_LATENCY,
            "without bulkheads inventory waits for a slow call to free a connection"
        );
        warn!(
            "done: inventory, which is healthy, answered as slowly as recommendations: they shared one pool"
        );
    }
    Ok(())
}
