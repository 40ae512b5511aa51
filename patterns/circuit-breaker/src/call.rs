//! Wrapping one call: `breaker.call(future)`, for clients that are not tower
//! services (reqwest).

use std::future::IntoFuture;

use crate::breaker::{CircuitBreaker, Rejected};
use crate::classify::{AnyError, Classify};

/// A call through the breaker failed: either the breaker refused it, or the call
/// itself failed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError<E> {
    /// The breaker refused: the dependency was not called.
    #[error(transparent)]
    Rejected(Rejected),
    /// The call was made and failed with its own error.
    #[error(transparent)]
    Inner(E),
}

impl CircuitBreaker {
    // ANCHOR: call
    /// Runs `call` if the breaker allows it, counting any `Err` as a failure.
    pub async fn call<F, T, E>(&self, call: F) -> Result<T, CallError<E>>
    where
        F: IntoFuture<Output = Result<T, E>>,
    {
        self.call_with(call, AnyError).await
    }

    /// Runs `call` if the breaker allows it, counting its result as `classifier`
    /// says. The breaker is asked when the returned future is first polled; dropping
    /// the future before it completes (a timeout, a `select!`) counts nothing and
    /// frees a probe's permit.
    pub async fn call_with<F, T, E, C>(
        &self,
        call: F,
        classifier: C,
    ) -> Result<T, CallError<E>>
    where
        F: IntoFuture<Output = Result<T, E>>,
        C: Classify<T, E>,
    {
        let permit = self.try_acquire().map_err(CallError::Rejected)?;
        // If this future is dropped here (the caller gave up), the permit's Drop
        // gives it back.
        let result = call.into_future().await;
        permit.record(classifier.classify(&result));
        result.map_err(CallError::Inner)
    }
    // ANCHOR_END: call
}
