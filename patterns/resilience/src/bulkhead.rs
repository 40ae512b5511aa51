//! Bulkheads: a limit on calls in flight per dependency, rejecting when full.
//!
//! A ship's bulkheads keep one flooded compartment from sinking the others. Here the compartments
//! are dependencies: without limits, a slow dependency gradually holds every connection, task and
//! pool slot of the caller (calls to it arrive at the same rate but leave slowly), and calls to
//! healthy dependencies queue behind them. With a bulkhead per dependency, the slow one can fill
//! only its own compartment; past that, its calls are rejected at once (and can take a fallback),
//! and the rest of the caller keeps working.

use std::future::IntoFuture;
use std::sync::Arc;

use tokio::sync::Semaphore;

// ANCHOR: Bulkhead
/// At most `max_in_flight` calls at once; the next one is rejected, not queued.
#[derive(Clone, Debug)]
pub struct Bulkhead {
    name: &'static str,
    max_in_flight: usize,
    permits: Arc<Semaphore>,
}

/// The bulkhead was full: the call was not made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("bulkhead {name} is full ({max_in_flight} in flight): rejected, not queued")]
pub struct BulkheadFull {
    /// Which dependency's compartment was full, for the logs and metrics.
    pub name: &'static str,
    /// Its size: a rejection at a small limit reads differently from one at a large.
    pub max_in_flight: usize,
}

impl Bulkhead {
    /// A compartment of `max_in_flight` places for the dependency `name`; size
    /// it from the dependency's normal concurrency (rate x latency) plus headroom.
    pub fn new(name: &'static str, max_in_flight: usize) -> Self {
        Bulkhead {
            name,
            max_in_flight,
            permits: Arc::new(Semaphore::new(max_in_flight)),
        }
    }

    /// Runs `call` if there is room, holding a place until it ends or is dropped.
    pub async fn call<F: IntoFuture>(
        &self,
        call: F,
    ) -> Result<F::Output, BulkheadFull> {
        let full =
            BulkheadFull { name: self.name, max_in_flight: self.max_in_flight };
        let _place = self.permits.try_acquire().map_err(|_| full)?;
        Ok(call.into_future().await)
    }

    /// Calls holding a place now: the figure to export, since a bulkhead that is
    /// often full in normal traffic is too small.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.permits.available_permits()
    }
}
// ANCHOR_END: Bulkhead
