//! Per-client rate limiting: a token bucket for each authenticated client.
//!
//! The limit is keyed on the client the token proved ([`crate::auth::Caller`]), never on
//! anything the client merely says: not `X-Forwarded-For` (any client can write any address in
//! it), not a client id header. That is why this layer runs after authentication. Unauthenticated
//! requests never get this far; a public gateway also limits them, by the peer address its own
//! load balancer saw.
//!
//! Hand-written so that the chapter can show, in twenty lines, what a limiter decides: a bucket
//! holds up to `burst` tokens and gains `per_second` tokens a second; a request takes one or is
//! refused with the time until the next one (`Retry-After`). Time is `tokio::time::Instant`, so
//! tests drive it with paused time. In production, use the `governor` crate (GCRA, the same
//! decisions in integer nanoseconds, lock-free, with a keyed store that can shrink); a test feeds
//! both the same requests and checks that they decide alike. Production also evicts idle buckets,
//! and shares counts across gateway instances (or divides the limit between them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use http_json::problem::Problem;
use tokio::time::Instant;
use tracing::warn;

use crate::auth::Caller;
use crate::problem::respond;

// ANCHOR: Rate
/// How many requests a client may send: `burst` at once, `per_second` sustained.
/// Only [`Rate::new`] makes one, so a rate that could never refill is a
/// configuration error at start-up, not a panic in the request path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    burst: u32,
    per_second: f64,
    /// What one token is worth in time: a new one every `period`.
    period: Duration,
    /// A full bucket, in time: `burst` periods.
    full: Duration,
}

/// Why [`Rate::new`] refused a rate.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RateError {
    /// A bucket that holds nothing.
    #[error("a burst of 0 refuses every request: allow at least 1")]
    NoBurst,
    /// Zero, negative, NaN or infinite.
    #[error("{0} tokens a second is not a rate: use a positive number")]
    NotPositive(f64),
    /// A period or a full bucket that `Duration` cannot hold.
    #[error("{0} tokens a second is beyond what a nanosecond clock can count")]
    OutOfRange(f64),
}

impl Rate {
    /// Checks the rate once, at start-up: the request path then only adds and
    /// subtracts durations.
    pub fn new(burst: u32, per_second: f64) -> Result<Rate, RateError> {
        if burst == 0 {
            return Err(RateError::NoBurst);
        }
        // Also refuses NaN (`!(x > 0.0)` is true for it) and infinity.
        if !(per_second > 0.0 && per_second.is_finite()) {
            return Err(RateError::NotPositive(per_second));
        }
        let out_of_range = RateError::OutOfRange(per_second);
        let period = Duration::try_from_secs_f64(1.0 / per_second)
            .map_err(|_| out_of_range.clone())?;
        let full = period.checked_mul(burst).ok_or(out_of_range.clone())?;
        if period.is_zero() {
            return Err(out_of_range);
        }
        Ok(Rate { burst, per_second, period, full })
    }
}
// ANCHOR_END: Rate

impl Rate {
    /// The most requests a client may send at once, after a quiet spell.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The sustained rate, as configured.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// The time it takes to earn one token.
    pub fn period(&self) -> Duration {
        self.period
    }
}

impl Default for Rate {
    /// Five at once, one a second.
    fn default() -> Self {
        let period = Duration::from_secs(1);
        Rate { burst: 5, per_second: 1.0, period, full: period * 5 }
    }
}

#[derive(Debug)]
struct Bucket {
    /// The tokens, counted in time: one token is worth one `period`. Whole
    /// nanoseconds add up exactly, where a float count of tokens drifts (a
    /// float bucket refilled in ten steps of 0.1 holds 0.9999999999999999).
    credit: Duration,
    updated: Instant,
}

// ANCHOR: RateLimiter
/// One token bucket per client, shared by every request of the gateway.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    rate: Rate,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

impl RateLimiter {
    /// A limiter where every client starts with a full bucket.
    pub fn new(rate: Rate) -> Self {
        RateLimiter { rate, buckets: Arc::default() }
    }

    /// Takes a token from `client`'s bucket, or says how long until one is due.
    pub fn check(&self, client: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let Rate { period, full, .. } = self.rate;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(client.to_owned())
            .or_insert(Bucket { credit: full, updated: now });
        // Refill for the time since the last request, up to the burst.
        let elapsed = now.duration_since(bucket.updated);
        bucket.credit = (bucket.credit + elapsed).min(full);
        bucket.updated = now;
        // One token costs one period; short of it, the rest is the wait.
        match bucket.credit.checked_sub(period) {
            Some(left) => {
                bucket.credit = left;
                Ok(())
            }
            None => Err(period - bucket.credit),
        }
    }
}
// ANCHOR_END: RateLimiter

/// Middleware: 429 with `Retry-After` (whole seconds, rounded up) when the
/// authenticated client's bucket is empty.
pub async fn rate_limit(
    State(limiter): State<RateLimiter>,
    request: Request,
    next: Next,
) -> Response {
    let Some(caller) = request.extensions().get::<Caller>() else {
        // Only reachable if the layers were put in the wrong order: fail closed.
        let detail = "no authenticated caller to rate-limit";
        let status = StatusCode::INTERNAL_SERVER_ERROR;
        return respond(Problem::new(
            status,
            "gateway-error",
            "Gateway misconfigured",
            detail,
        ));
    };
    match limiter.check(&caller.client) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            warn!(client = %caller.client, "rate limited: retry after {secs} s");
            let detail = format!("{} sent too many requests", caller.client);
            let p = Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Slow down",
                detail,
            );
            let mut response = respond(p);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_that_cannot_refill_is_refused_at_construction() {
        assert_eq!(Rate::new(0, 1.0), Err(RateError::NoBurst));
        for bad in [0.0, -1.0, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(Rate::new(5, bad), Err(RateError::NotPositive(bad)), "{bad}");
        }
        assert!(matches!(Rate::new(5, f64::NAN), Err(RateError::NotPositive(_))));
        // A token every 10^300 s, or 10^10 a second: no clock counts that.
        for bad in [1e-300, 1e10] {
            assert_eq!(Rate::new(5, bad), Err(RateError::OutOfRange(bad)), "{bad}");
        }
        let rate = Rate::new(10, 1.0 / 60.0).unwrap();
        assert_eq!((rate.burst(), rate.period()), (10, Duration::from_secs(60)));
        assert_eq!(Rate::default(), Rate::new(5, 1.0).unwrap());
    }
}
