//! One more attempt at a read that failed, within a budget.
//!
//! The gateway's composed reads (`GET /orders/{id}` and GraphQL) ask orders and payments, and a
//! read asked twice changes nothing, so a second attempt is safe. It is made only when the first
//! failed in a way another attempt may not meet (no connection, a 5xx, a gRPC code that is not a
//! refusal: [`BackendError::Failed`]); never for a refusal, a deadline that passed or a breaker
//! that is not closed (a retry would be refused, or would spend a half-open breaker's probes);
//! only while the deadline leaves [`MIN_LEFT`]; and only when the backend's budget (the
//! retries chapter's [`RetryBudget`]: a tenth of the calls, two in reserve) has a token. A backend
//! that fails for everyone then gets a tenth more calls from the gateway's retries, not twice as
//! many.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use gateway::backends::BackendError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use resilience::budget::RetryBudget;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::metrics::{FloatGauge, Refresh};

/// Retries allowed per call.
pub const RATIO: f64 = 0.1;
/// Retries a quiet gateway may make before any call has paid for them.
pub const RESERVE: u32 = 2;
/// The least time a retry starts with: one that is bound to time out would only add a failure
/// to the breaker's count.
pub const MIN_LEFT: Duration = Duration::from_millis(250);

/// One backend's budget and what it allowed.
pub struct Retries {
    budget: RetryBudget,
    sent: Counter,
    refused: Counter,
}

impl Retries {
    fn new(sent: Counter, refused: Counter) -> Self {
        Retries { budget: RetryBudget::new(RATIO, RESERVE), sent, refused }
    }

    /// Runs `attempt`, and once more when it failed as the module says and the budget allows.
    /// `closed` says whether the backend's breaker is closed now.
    pub async fn call<T, F, Fut>(
        &self,
        deadline: Instant,
        closed: impl Fn() -> bool,
        attempt: F,
    ) -> Result<T, BackendError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        self.budget.deposit();
        let first = attempt().await;
        let Err(BackendError::Failed(backend, why)) = &first else { return first };
        if deadline.saturating_duration_since(Instant::now()) < MIN_LEFT || !closed()
        {
            return first;
        }
        if !self.budget.try_withdraw() {
            self.refused.inc();
            warn!(backend, %why, "a read failed; no retry: the retry budget is spent");
            return first;
        }
        self.sent.inc();
        info!(backend, %why, "a read failed; trying once more");
        attempt().await
    }
}

/// The composed reads' retries, one budget per backend.
pub struct ReadRetries {
    /// Before orders' reads.
    pub orders: Retries,
    /// Before payments' reads.
    pub payments: Retries,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    backend: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BudgetLabels {
    backend: &'static str,
}

impl ReadRetries {
    /// The retries of the reads of `orders` and `payments` (the breakers' names), counted in
    /// `registry`, and the refresh that reads each budget's tokens at a scrape.
    pub fn registered(
        registry: &mut Registry,
        orders: &'static str,
        payments: &'static str,
    ) -> (Arc<ReadRetries>, Refresh) {
        let retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "shop_retries",
            "Second attempts at a failed read, by backend and outcome: sent, or refused because \
             the retry budget was spent",
            retries.clone(),
        );
        let tokens = Family::<BudgetLabels, FloatGauge>::default();
        registry.register(
            "shop_retry_budget_tokens",
            "Retries each backend's budget holds now (a tenth of a retry saved per call, two at \
             most)",
            tokens.clone(),
        );
        let of = |backend| {
            let count = |outcome| {
                retries.get_or_create(&RetryLabels { backend, outcome }).clone()
            };
            Retries::new(count("sent"), count("refused"))
        };
        let read =
            Arc::new(ReadRetries { orders: of(orders), payments: of(payments) });
        let watched = Arc::clone(&read);
        let refresh: Refresh = Arc::new(move || {
            for (backend, retries) in
                [(orders, &watched.orders), (payments, &watched.payments)]
            {
                tokens
                    .get_or_create(&BudgetLabels { backend })
                    .set(retries.budget.tokens());
            }
            Box::pin(async { Ok(()) })
        });
        (read, refresh)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use http_json::problem::Problem;

    use super::*;

    fn retries() -> (Retries, Counter, Counter) {
        let (sent, refused) = (Counter::default(), Counter::default());
        (Retries::new(sent.clone(), refused.clone()), sent, refused)
    }

    fn failing() -> Result<(), BackendError> {
        Err(BackendError::Failed("orders", "answered 500".into()))
    }

    #[tokio::test]
    async fn a_failed_read_is_tried_once_more_while_the_budget_lasts() {
        let (retries, sent, refused) = retries();
        let later = Instant::now() + Duration::from_secs(60);
        let attempts = Cell::new(0);
        let attempt = || {
            attempts.set(attempts.get() + 1);
            async { failing() }
        };
        // The reserve pays for two retries; the calls after them save a tenth each, so the
        // tenth call after the reserve ran out has one again.
        for _ in 0..11 {
            assert!(retries.call(later, || true, attempt).await.is_err());
        }
        assert_eq!((sent.get(), refused.get()), (3, 8));
        assert_eq!(attempts.get(), 11 + 3);
    }

    #[tokio::test]
    async fn refusals_passed_deadlines_and_successes_are_not_tried_again() {
        let (retries, sent, refused) = retries();
        let later = Instant::now() + Duration::from_secs(60);
        let attempts = Cell::new(0);
        let refusal = || {
            attempts.set(attempts.get() + 1);
            async {
                Err::<(), _>(BackendError::Refused(
                    "orders",
                    Problem::not_found("no"),
                ))
            }
        };
        assert!(retries.call(later, || true, refusal).await.is_err());
        let timeout = || {
            attempts.set(attempts.get() + 1);
            async { Err::<(), _>(BackendError::Timeout("orders")) }
        };
        assert!(retries.call(later, || true, timeout).await.is_err());
        let fine = || {
            attempts.set(attempts.get() + 1);
            async { Ok(()) }
        };
        assert!(retries.call(later, || true, fine).await.is_ok());
        // A failure with the deadline gone: no time for a second attempt.
        let failed = || {
            attempts.set(attempts.get() + 1);
            async { failing() }
        };
        assert!(retries.call(Instant::now(), || true, failed).await.is_err());
        // A failure with the breaker no longer closed: a retry would be refused or use up
        // its probes.
        let failed = || {
            attempts.set(attempts.get() + 1);
            async { failing() }
        };
        assert!(retries.call(later, || false, failed).await.is_err());
        assert_eq!(attempts.get(), 5, "each once");
        assert_eq!((sent.get(), refused.get()), (0, 0));
    }
}
