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
    pub name: &'static str,
    pub max_in_flight: usize,
}

impl Bulkhead {
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

    pub fn in_flight(&self) -> usize {
        self.max_in_flight - self.permits.available_permits()
    }
}
// ANCHOR_END: Bulkhead
