//! A circuit breaker: stop calling a dependency that is failing, give it time, then
//! probe it.
//!
//! When a dependency fails, callers that keep calling it make things worse twice
//! over: each caller waits for its timeout (tying up its own threads, connections
//! and memory), and the struggling dependency gets no relief. A breaker counts
//! recent outcomes; when the failure rate (or the slow-call rate) crosses a
//! threshold it *opens* and fails calls at once, without calling. After a wait it
//! *half-opens* and lets a few probes through; their outcome closes it again or
//! reopens it.
//!
//! Use one breaker per dependency (per remote service, not per endpoint, unless
//! endpoints fail independently), shared by all callers. Do not use it to hide bugs
//! (a 4xx answer is not the dependency's failure: the HTTP classifier in
//! [`classify`] counts it as a success), or for a dependency you call so rarely that
//! there is never a meaningful window. Pair it with timeouts: a breaker cannot count
//! a call that never ends.
//!
//! - [`Config`]: count- or time-based window, failure and slow-call thresholds,
//!   minimum calls, open wait, half-open permits, and an escape from a half-open
//!   that gets no answers. Only [`ConfigBuilder::build`] makes one, and it refuses
//!   what cannot work with a [`ConfigError`] naming the setting, so building a
//!   breaker cannot fail and no setting can make it panic.
//! - [`CircuitBreaker`]: the state machine, shared by clones;
//!   [`CircuitBreaker::call`] wraps one future (a reqwest call),
//!   [`CircuitBreakerLayer`] wraps a tower service (a tonic channel).
//! - Transitions are reported once each to listeners ([`Builder::on_transition`]);
//!   counters and rates are in [`Metrics`]; operators can
//!   [`force_open`](CircuitBreaker::force_open),
//!   [`disable`](CircuitBreaker::disable) and [`reset`](CircuitBreaker::reset).
//!
//! Production additions: export [`Metrics`] to your metrics system and alert on
//! transitions, and keep the breaker's state per process (sharing it across a fleet
//! couples every instance's view to one store's availability).

#![warn(missing_docs)]

pub mod breaker;
pub mod call;
pub mod classify;
pub mod config;
pub mod layer;
pub mod window;

pub use breaker::{
    Builder, CircuitBreaker, Metrics, Outcome, Permit, Reason, Rejected, State,
    Transition,
};
pub use call::CallError;
pub use config::{
    Config, ConfigBuilder, ConfigError, MAX_BUCKETS, MAX_WINDOW_CALLS, SlowCalls,
    WindowKind,
};
pub use layer::{CircuitBreakerLayer, CircuitBreakerService};
