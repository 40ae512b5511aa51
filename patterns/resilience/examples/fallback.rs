//! The gateway shows stock from the inventory service through a circuit breaker; while the breaker
//! is open, it answers from the last good answer, marked as degraded.
//!
//! Run it:   `cargo run --example fallback`
//! Break it: `cargo run --example fallback -- --no-fallback`  the same outage, errors instead
//!
//! The inventory service answers, then fails for a while, then recovers. Every page logs what it
//! showed: fresh stock, degraded stock (with its age and the reason), or an error.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::ensure;
use circuit_breaker::{CircuitBreaker, Config};
use resilience::fallback::{Answer, LastKnownGood};
use tracing::{info, warn};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let flags = infra::example::Flags::parse(&["--no-fallback"])
        .map_err(anyhow::Error::msg)?;
    let with_fallback = !flags.has("--no-fallback");
    let breaker = CircuitBreaker::builder(
        Config::builder()
            .count_window(4)
            .minimum_calls(4)
            .open_wait(Duration::from_millis(300))
            .half_open_permits(1)
            .build()?,
    )
    .on_transition(|t| warn!("breaker {:?} -> {:?}: {}", t.from, t.to, t.reason))
    .build();
    let inventory_down = AtomicBool::new(false);
    // Stock a few seconds old is still a fair guess; much older is not.
    let last_good = LastKnownGood::with_max_age(Duration::from_secs(5));
    let (mut fresh, mut degraded, mut errors) = (0, 0, 0);
    let outage = 10..25;
    let mut last_page_fresh = false;

    for page in 0..40 {
        inventory_down.store(outage.contains(&page), Ordering::Relaxed);
        // ANCHOR: page
        let stock = breaker.call(async {
            if inventory_down.load(Ordering::Relaxed) {
                Err("503 from inventory")
            } else {
                Ok(12u32)
            }
        });
        // No safe default for stock: an honest "unknown" beats a made-up number.
        let default = None;
        let answer = if with_fallback {
            last_good.or_fallback(stock, default).await
        } else {
            stock.await.map(Answer::Fresh)
        };
        match answer {
            Ok(Answer::Fresh(stock)) => {
                fresh += 1;
                last_page_fresh = page == 39;
                info!(page, "stock: {stock}");
            }
            Ok(Answer::Degraded { value, why, age }) => {
                degraded += 1;
                let age = age.map_or("a default".to_owned(), |a| {
                    format!("{} ms old", a.as_millis())
                });
                warn!(page, "stock: {value} (DEGRADED: {age}, because {why})");
            }
            Err(error) => {
                errors += 1;
                warn!(page, "stock unavailable: {error}");
            }
        }
        // ANCHOR_END: page
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    info!("pages: {fresh} fresh, {degraded} degraded, {errors} errors");
    // How long the breaker stays open after the outage depends on timing; what the pages showed
    // during it, and that it closed again by the end, does not.
    let outage_pages = outage.len();
    if with_fallback {
        ensure!(
            errors == 0 && degraded >= outage_pages,
            "every outage page should show degraded stock, none an error"
        );
    } else {
        ensure!(
            degraded == 0 && errors >= outage_pages,
            "without a fallback every outage page shows an error"
        );
    }
    ensure!(
        fresh >= 10 && last_page_fresh,
        "pages before the outage, and the last page after it, are fresh"
    );
    Ok(())
}
