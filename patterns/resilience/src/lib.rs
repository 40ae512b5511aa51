//! Resilience around synchronous calls: what a caller does when a dependency fails or is slow.
//!
//! - [`backoff`]: exponential backoff with *full jitter*: the n-th retry waits a random time
//!   between zero and `min(max, base * 2^n)`, so a crowd of callers that failed together does not
//!   retry together.
//! - [`budget`]: a retry budget. Retries may add at most a fixed fraction to the traffic, so an
//!   outage cannot multiply every call by `max_attempts` (a retry storm).
//! - [`retry`]: the retry loop, which retries only idempotent operations and only errors that say
//!   a retry might help, backing off between attempts and asking the budget first.
//! - [`bulkhead`]: a per-dependency limit on calls in flight that rejects when full instead of
//!   queueing, so one slow dependency cannot take every connection and task from the others.
//! - [`fallback`]: a last known good (or default) answer when the real one cannot be had, always
//!   marked as degraded so nobody mistakes it for fresh data.
//!
//! Timeouts are not here: they are a `tokio::time::timeout` (or a gRPC deadline) on each call,
//! shown in the request/response chapters. Everything here assumes every call has one.

#![warn(missing_docs)]

pub mod backoff;
pub mod budget;
pub mod bulkhead;
pub mod fallback;
pub mod retry;
