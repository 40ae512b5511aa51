//! The gateway checks stock with the inventory service through a circuit breaker,
//! while the inventory service goes through a fault plan: healthy, failing, slow,
//! recovering.
//!
//! Run it:   `cargo run --example circuit_breaker` Break it: `cargo run --example
//! circuit_breaker -- --no-breaker`  the same outage, unprotected
//!
//! Every state change of the breaker is logged as it happens, and each phase ends
//! with what the callers got and how many calls reached the upstream. The example
//! checks that the breaker spared the upstream during the outage and closed again
//! after it, and exits non-zero if not.
//!
//! It runs on tokio's paused clock: sleeps, timeouts and the breaker's waits all
//! read the same simulated time, which jumps ahead whenever every task is waiting.
//! The four seconds of traffic take a few milliseconds, and every run prints the
//! same counts, whatever the machine's load (the log's timestamps are real time, so
//! they barely move).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::ensure;
use circuit_breaker::{CallError, CircuitBreaker, Config, State};
use tokio::time::{Instant, sleep, timeout};
use tracing::{Instrument, info, info_span, warn};

/// What the inventory service does to each call during a phase.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Healthy,
    /// Answers at once with an error (a 503).
    Failing,
    /// Answers correctly, but this late.
    Slow(Duration),
}

/// The upstream: a fault to apply, and a count of the calls that reached it.
#[derive(Default)]
struct Inventory {
    fault: std::sync::Mutex<Option<Fault>>,
    calls: AtomicU32,
}

impl Inventory {
    async fn check_stock(&self, sku: &str) -> Result<u32, String> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let fault = self
            .fault
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(Fault::Healthy);
        match fault {
            Fault::Healthy => Ok(sku.len() as u32),
            Fault::Failing => Err("503 Service Unavailable".into()),
            Fault::Slow(latency) => {
                sleep(latency).await;
                Ok(sku.len() as u32)
            }
        }
    }
}

/// What the gateway's callers got during one phase.
#[derive(Default, Debug)]
struct Tally {
    ok: u32,
    failed: u32,
    timed_out: u32,
    rejected: u32,
    waited: Duration,
}

const CALL_TIMEOUT: Duration = Duration::from_millis(150);

// ANCHOR: breaker_config
fn breaker() -> anyhow::Result<CircuitBreaker> {
    let config = Config::builder()
        .count_window(10) // judge by the last 10 calls
        .minimum_calls(5) // but not before 5
        // open at 50% failures: 503s, and hangs that the timeout in `call` turns
        // into errors (the breaker itself times nothing)
        .failure_rate_threshold(50.0)
        // or at 50% of calls taking 100 ms or more
        .slow_calls(50.0, Duration::from_millis(100))
        .open_wait(Duration::from_millis(500))
        .half_open_permits(3)
        .build()?;
    Ok(CircuitBreaker::builder(config)
        .on_transition(|t| warn!("breaker {:?} -> {:?}: {}", t.from, t.to, t.reason))
        .build())
}
// ANCHOR_END: breaker_config

/// One gateway call: through the breaker (if any), with a timeout on the upstream
/// call.
async fn call(
    inventory: &Inventory,
    breaker: Option<&CircuitBreaker>,
    tally: &mut Tally,
) {
    let began = Instant::now();
    let upstream = async {
        match timeout(CALL_TIMEOUT, inventory.check_stock("mug-espresso")).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {CALL_TIMEOUT:?}")),
        }
    };
    let result = match breaker {
        Some(breaker) => breaker.call(upstream).await,
        None => upstream.await.map_err(CallError::Inner),
    };
    tally.waited += began.elapsed();
    match result {
        Ok(_) => tally.ok += 1,
        Err(CallError::Rejected(_)) => tally.rejected += 1,
        Err(CallError::Inner(e)) if e.starts_with("no answer") => {
            tally.timed_out += 1
        }
        Err(CallError::Inner(_)) => tally.failed += 1,
    }
}

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() -> anyhow::Result<()> {
    infra::example::init_logging();
    let flags = infra::example::Flags::parse(&["--no-breaker"])
        .map_err(anyhow::Error::msg)?;
    let breaker = if flags.has("--no-breaker") { None } else { Some(breaker()?) };
    let inventory = Arc::new(Inventory::default());
    let plan = [
        ("healthy", Fault::Healthy, 20),
        ("failing", Fault::Failing, 40),
        ("slow", Fault::Slow(Duration::from_millis(120)), 20),
        ("recovering", Fault::Healthy, 40),
    ];
    info!(
        "gateway -> inventory, one call every 25 ms of simulated time, {CALL_TIMEOUT:?} timeout, breaker: {}",
        if breaker.is_some() { "on" } else { "off" }
    );
    let (simulated, real) = (Instant::now(), std::time::Instant::now());

    let mut upstream_calls_in_outage = 0;
    for (name, fault, calls) in plan {
        *inventory.fault.lock().unwrap_or_else(|p| p.into_inner()) = Some(fault);
        let before = inventory.calls.load(Ordering::Relaxed);
        let phase = async {
            let mut tally = Tally::default();
            for _ in 0..calls {
                call(&inventory, breaker.as_ref(), &mut tally).await;
                sleep(Duration::from_millis(25)).await;
            }
            let reached = inventory.calls.load(Ordering::Relaxed) - before;
            info!(
                "{calls} calls: {} ok, {} failed, {} timed out, {} rejected at once; the upstream saw {reached}; callers waited {:.1} ms on average",
                tally.ok,
                tally.failed,
                tally.timed_out,
                tally.rejected,
                tally.waited.as_secs_f64() * 1000.0 / f64::from(calls),
            );
            reached
        };
        // The span covers the phase's calls, the breaker's warnings among them.
        let reached = phase.instrument(info_span!("phase", name)).await;
        if name == "failing" {
            upstream_calls_in_outage = reached;
        }
    }

    info!(
        "{:.2} s of simulated traffic took {:.1} ms of real time",
        simulated.elapsed().as_secs_f64(),
        real.elapsed().as_secs_f64() * 1000.0
    );
    match &breaker {
        Some(breaker) => {
            let m = breaker.metrics();
            info!(
                "breaker metrics: {} ok, {} failed, {} slow, {} rejected, {} transitions",
                m.successful, m.failed, m.slow, m.rejected, m.transitions
            );
            ensure!(
                upstream_calls_in_outage < 20,
                "the breaker should spare the failing upstream most of its 40 calls"
            );
            ensure!(
                breaker.state() == State::Closed,
                "the breaker should close once the upstream recovered"
            );
            info!("done: the breaker opened during the outage and closed after it");
        }
        None => {
            ensure!(
                upstream_calls_in_outage == 40,
                "without a breaker every call reaches the failing upstream"
            );
            info!(
                "done: without a breaker the failing upstream took every one of the 40 calls"
            );
        }
    }
    Ok(())
}
