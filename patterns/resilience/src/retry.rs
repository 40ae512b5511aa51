//! The retry loop: only idempotent operations, only retryable errors, with backoff and a budget.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::budget::RetryBudget;

/// Whether running an operation twice has the same effect as running it once. Only idempotent
/// operations are retried: a GET, a PUT of a whole resource, a POST with an idempotency key. A
/// plain POST that creates an order is not, and retrying it after a timeout may create two.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotency {
    /// Safe to run again: a read, a whole-resource PUT, a create with a key.
    Idempotent,
    /// Not safe to run again: tried once, whatever the error.
    NotIdempotent,
}

/// Errors say whether another attempt could help: a timeout or a 503 may pass next time, a 400
/// will fail the same way forever.
pub trait Retryable {
    /// Whether the same request could succeed next time.
    fn is_retryable(&self) -> bool;
}

/// How to retry: attempts in total (the first included), backoff, and an optional shared budget.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least 1.
    pub max_attempts: u32,
    /// How long to wait before each retry.
    pub backoff: Backoff,
    /// Shared by every clone of the policy, so all its calls draw on one budget;
    /// `None` retries up to `max_attempts` whatever the load.
    pub budget: Option<Arc<RetryBudget>>,
}

impl RetryPolicy {
    /// `max_attempts` in all (0 is taken as 1), with no budget: add one with
    /// [`with_budget`](Self::with_budget) for any call made on behalf of many users.
    pub fn new(max_attempts: u32, backoff: Backoff) -> Self {
        RetryPolicy { max_attempts: max_attempts.max(1), backoff, budget: None }
    }

    /// Shares `budget` among every call made with this policy.
    pub fn with_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    // ANCHOR: run
    /// Runs `operation` (given the attempt number, from 1) until it succeeds, fails
    /// with an error not worth retrying, runs out of attempts, or is over budget.
    pub async fn run<T, E, F, Fut>(
        &self,
        idempotency: Idempotency,
        mut operation: F,
    ) -> Result<T, E>
    where
        E: Retryable + std::fmt::Display,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        let mut rng = fastrand::Rng::new();
        let mut attempt = 1;
        loop {
            let error = match operation(attempt).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            if idempotency == Idempotency::NotIdempotent
                || !error.is_retryable()
                || attempt >= self.max_attempts
            {
                return Err(error);
            }
            if let Some(budget) = &self.budget
                && !budget.try_withdraw()
            {
                warn!(attempt, "retry budget exhausted; failing fast: {error}");
                return Err(error);
            }
            let wait: Duration = self.backoff.delay(attempt - 1, &mut rng);
            info!(attempt, "attempt failed ({error}); retrying in {wait:?}");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
    // ANCHOR_END: run
}
