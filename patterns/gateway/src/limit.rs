//! Per-client rate limiting: a token bucket for each authenticated client.
//!
//! The limit is keyed on the client the token proved ([`crate::auth::Caller`]), never on
//! anything the client merely says: not `X-Forwarded-For` (any client can write any address in
//! it), not a client id header. That is why this layer runs after authentication. Unauthenticated
//! requests never get this far; a public gateway also limits them, by the peer address its own
//! load balancer saw.
//!
//! Hand-written rather than taken from `governor`, because the chapter is about what the limiter
//! decides: a bucket holds up to `burst` tokens and gains `per_second` tokens a second; a request
//! takes one or is refused with the time until the next one (`Retry-After`). Time is
//! `tokio::time::Instant`, so tests drive it with paused time. Production also evicts idle
//! buckets, and shares counts across gateway instances (or divides the limit between them).

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

/// How many requests a client may send: `burst` at once, `per_second` sustained.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub burst: u32,
    pub per_second: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
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
    pub fn new(rate: Rate) -> Self {
        RateLimiter { rate, buckets: Arc::default() }
    }

    /// Takes a token from `client`'s bucket, or says how long until one is due.
    pub fn check(&self, client: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let Rate { burst, per_second } = self.rate;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets
            .entry(client.to_owned())
            .or_insert(Bucket { tokens: f64::from(burst), updated: now });
        // Refill for the time since the last request, up to the burst.
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(f64::from(burst));
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
    }
}
// ANCHOR_END: RateLimiter

// ANCHOR: rate_limit
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
// ANCHOR_END: rate_limit
