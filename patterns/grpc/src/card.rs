//! The card network: the slow, remote system the payments service calls to authorize a payment.
//!
//! It is simulated in process, but it behaves as the real thing does in the one respect this
//! chapter cares about: it reserves the funds (places a *hold*) as soon as it accepts a request,
//! and answers later. If the payments service gives up waiting after that, nothing it drops on
//! its side takes the hold back: the customer's money stays reserved for a payment that never
//! happened. That is why the payments service tells the network how long it may take (see
//! [`crate::deadline`]): a network that knows it cannot answer in time refuses at once, before it
//! holds anything.
//!
//! In production the hold would be released by a reversal message, and the budget would be sent
//! as the downstream protocol allows (`grpc-timeout` again, or an HTTP client's timeout).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use uuid::Uuid;

use crate::ledger::PaymentError;

/// A card token the simulated network always declines (to break things on purpose).
pub const DECLINED_CARD: &str = "tok_declined";

/// The simulated card network. It takes `latency` to answer every request.
#[derive(Debug, Default)]
pub struct CardNetwork {
    latency: Duration,
    holds: AtomicU64,
}

impl CardNetwork {
    /// A card network that takes `latency` to decide, with no hold placed yet.
    pub fn new(latency: Duration) -> Self {
        CardNetwork { latency, holds: AtomicU64::new(0) }
    }

    // ANCHOR: hold
    /// Places a hold of `amount_cents` on the card and returns the approval code.
    /// Given a `budget` shorter than it needs, it refuses at once and holds nothing.
    pub async fn hold(
        &self,
        card_token: &str,
        amount_cents: u64,
        budget: Option<Duration>,
    ) -> Result<String, PaymentError> {
        if let Some(left) = budget
            && left < self.latency
        {
            return Err(PaymentError::NoTime { needed: self.latency, left });
        }
        if card_token == DECLINED_CARD {
            self.answer_later().await;
            return Err(PaymentError::Declined("insufficient funds".into()));
        }
        // The funds are reserved now; the answer comes later.
        self.holds.fetch_add(1, Ordering::Relaxed);
        self.answer_later().await;
        let code = Uuid::new_v4().simple().to_string()[..6].to_uppercase();
        tracing::debug!(amount_cents, %code, "card network: hold placed");
        Ok(code)
    }
    // ANCHOR_END: hold

    async fn answer_later(&self) {
        // No timer for no latency: a zero sleep still waits for the timer's next tick (about 1 ms).
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
    }

    /// How many holds the network has placed, answered or not.
    pub fn holds(&self) -> u64 {
        self.holds.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_budget_it_cannot_meet_is_refused_before_anything_is_held() {
        let network = CardNetwork::new(Duration::from_millis(800));
        let began = tokio::time::Instant::now();
        let refused = network
            .hold("tok_visa", 100, Some(Duration::from_millis(270)))
            .await
            .unwrap_err();
        assert_eq!(
            refused,
            PaymentError::NoTime {
                needed: Duration::from_millis(800),
                left: Duration::from_millis(270)
            }
        );
        assert_eq!(began.elapsed(), Duration::ZERO, "refused at once");
        assert_eq!(network.holds(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_budget_it_holds_first_and_answers_after_its_latency() {
        let network = CardNetwork::new(Duration::from_millis(800));
        let began = tokio::time::Instant::now();
        let code = network.hold("tok_visa", 100, None).await.unwrap();
        assert_eq!(code.len(), 6);
        assert_eq!(began.elapsed(), Duration::from_millis(800));
        assert_eq!(network.holds(), 1);
        assert!(matches!(
            network.hold(DECLINED_CARD, 100, Some(Duration::from_secs(1))).await,
            Err(PaymentError::Declined(_))
        ));
        assert_eq!(network.holds(), 1, "a decline holds nothing");
    }
}
