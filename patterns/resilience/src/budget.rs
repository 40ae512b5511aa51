//! A retry budget: retries may add at most a fraction of the calls.
//!
//! Every call deposits `ratio` tokens (0.1: one retry per ten calls); every retry withdraws a whole
//! token, and is refused when there is none. A small reserve lets a quiet service retry its first
//! few failures. When everything fails, total attempts stay near `calls * (1 + ratio)` instead of
//! `calls * max_attempts`: the dependency's load grows by a tenth, not fourfold.

use std::sync::Mutex;

// ANCHOR: RetryBudget
/// Tokens are counted in thousandths, in integers: ten deposits of 0.1 must make
/// exactly one retry, which floating point does not promise (0.1 added ten times is
/// 0.9999999999999999).
#[derive(Debug)]
pub struct RetryBudget {
    deposit_milli: u64,
    max_milli: u64,
    milli_tokens: Mutex<u64>,
}

const ONE_RETRY: u64 = 1000;

impl RetryBudget {
    /// `ratio`: retries allowed per call (0.1 = 10%, kept to three decimals);
    /// `reserve`: tokens at start, and the most that can ever be saved up.
    pub fn new(ratio: f64, reserve: u32) -> Self {
        let reserve = u64::from(reserve.max(1)) * ONE_RETRY;
        let deposit_milli =
            (ratio.clamp(0.0, 1000.0) * ONE_RETRY as f64).round() as u64;
        RetryBudget {
            deposit_milli,
            max_milli: reserve,
            milli_tokens: Mutex::new(reserve),
        }
    }

    /// Called once per call (not per attempt).
    pub fn deposit(&self) {
        let mut tokens = self.milli_tokens.lock().unwrap_or_else(|p| p.into_inner());
        *tokens = (*tokens + self.deposit_milli).min(self.max_milli);
    }

    /// The tokens saved now, in retries (a fraction while deposits fill one):
    /// what an operator graphs to see a budget running dry.
    pub fn tokens(&self) -> f64 {
        let tokens = *self.milli_tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens as f64 / ONE_RETRY as f64
    }

    /// Called before each retry: `true` if the budget allows it.
    pub fn try_withdraw(&self) -> bool {
        let mut tokens = self.milli_tokens.lock().unwrap_or_else(|p| p.into_inner());
        if *tokens >= ONE_RETRY {
            *tokens -= ONE_RETRY;
            true
        } else {
            false
        }
    }
}
// ANCHOR_END: RetryBudget

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_percent_means_one_retry_per_ten_calls_after_the_reserve() {
        let budget = RetryBudget::new(0.1, 2);
        assert!(budget.try_withdraw() && budget.try_withdraw(), "the reserve");
        assert!(!budget.try_withdraw(), "reserve spent, nothing deposited");
        for _ in 0..9 {
            budget.deposit();
        }
        assert!(!budget.try_withdraw(), "0.9 tokens is not a retry");
        budget.deposit();
        assert!(budget.try_withdraw(), "ten calls earned one retry");
    }

    #[test]
    fn floating_point_would_miss_the_tenth_deposit() {
        let sum: f64 = (0..10).map(|_| 0.1).sum();
        assert!(sum < 1.0, "{sum}: why tokens are counted in integer thousandths");
    }

    #[test]
    fn a_deposit_into_a_full_budget_is_dropped() {
        let budget = RetryBudget::new(0.1, 5);
        for _ in 0..10 {
            budget.deposit(); // a whole token's worth, deposited into a full budget
        }
        let retries = (0..10).filter(|_| budget.try_withdraw()).count();
        assert_eq!(retries, 5, "the reserve, and nothing of the deposits");
    }

    #[test]
    fn savings_are_capped() {
        let budget = RetryBudget::new(0.5, 3);
        for _ in 0..1000 {
            budget.deposit();
        }
        let retries = (0..10).filter(|_| budget.try_withdraw()).count();
        assert_eq!(retries, 3, "a quiet hour must not fund a storm");
    }
}
