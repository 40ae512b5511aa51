//! The breaker as a tower `Layer`, so it wraps a tonic channel, a hyper client or
//! any tower stack.
//!
//! Admission is decided in `call`, for each request, at the moment it is made.
//! `poll_ready` only passes on the inner service's readiness: in tower, a service
//! may be polled ready long before it is called (a balancer keeps its endpoints
//! ready ahead of work, as p2c's `ReadyCache` does; a caller may ready a service and
//! then wait for work; tower's `Buffer` is not one of them, its worker polls the
//! service only with a request in hand and calls it at once), and a breaker that
//! decided in `poll_ready` would let through a call made after it opened, and let a
//! readied but idle service hold one of half-open's few probe permits. When the breaker refuses,
//! `call` does not call the inner service and returns a future that is ready at once
//! with the rejection. The inner service keeps whatever `poll_ready` reserved in it
//! (a buffer slot) for the next call, as tower allows.
//!
//! The price: while the breaker is open, a caller still waits for the inner service
//! to be ready before it hears the rejection. If the inner service can stay unready
//! for long (a concurrency limit full of hung calls), put a load-shedding layer
//! beneath the breaker, or time out the wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::breaker::{CircuitBreaker, Outcome, Rejected, Ticket};
use crate::call::CallError;
use crate::classify::{AnyError, Classify};

/// Wraps services in a [`CircuitBreaker`]; every service made by one layer shares
/// its breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<C = AnyError> {
    breaker: CircuitBreaker,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A layer that counts any `Err` as a failure; see `with_classifier` for HTTP.
    pub fn new(breaker: CircuitBreaker) -> Self {
        CircuitBreakerLayer { breaker, classifier: AnyError }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Judges results with `classifier` (for HTTP,
    /// [`crate::classify::HttpResponse`]).
    pub fn with_classifier<D>(self, classifier: D) -> CircuitBreakerLayer<D> {
        CircuitBreakerLayer { breaker: self.breaker, classifier }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A ticket owned by a response future; dropping it unrecorded abandons the call.
struct OwnedTicket {
    breaker: CircuitBreaker,
    ticket: Option<Ticket>,
}

impl OwnedTicket {
    fn complete(mut self, outcome: Outcome) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.complete(ticket, outcome);
        }
    }
}

impl Drop for OwnedTicket {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.breaker.abandon(ticket);
        }
    }
}

/// A service behind a circuit breaker. Clones share the breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreakerService<S, C = AnyError> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
}

impl<S, C> CircuitBreakerService<S, C> {
    /// The breaker, shared with every clone of the service: for metrics and operators.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }
}

// ANCHOR: Service
impl<S, Req, C> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = CallError<S::Error>;
    type Future = ResponseFuture<S::Future, C>;

    /// The inner service's readiness, nothing more: admission waits for `call`.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(CallError::Inner)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.breaker.acquire_ticket() {
            Ok(ticket) => ResponseFuture::Called {
                // Dropped unrecorded (the response future was dropped): abandoned.
                ticket: Some(OwnedTicket {
                    breaker: self.breaker.clone(),
                    ticket: Some(ticket),
                }),
                inner: self.inner.call(request),
                classifier: self.classifier.clone(),
            },
            // The inner service is not called; what its poll_ready reserved stays
            // reserved for the next call.
            Err(rejected) => ResponseFuture::Refused { rejected },
        }
    }
}
// ANCHOR_END: Service

pin_project! {
    /// The response of a [`CircuitBreakerService`]: the inner call, judged when it
    /// completes.
    #[project = ResponseFutureProj]
    // pin-project-lite takes no attribute on a field but `#[pin]`, so the fields
    // are described in their variant's doc instead.
    #[allow(missing_docs)]
    pub enum ResponseFuture<F, C> {
        /// Admitted: the inner call runs, and is judged when it completes.
        /// (`inner`: the inner service's response future; `ticket`: the breaker's
        /// record of the call, completed with its outcome; `classifier`: how to
        /// count that outcome.)
        Called { #[pin] inner: F, ticket: Option<OwnedTicket>, classifier: C },
        /// Refused: ready at once with the rejection (`rejected`: which state
        /// refused).
        Refused { rejected: Rejected },
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    C: Classify<T, E>,
{
    type Output = Result<T, CallError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Refused { rejected } => {
                Poll::Ready(Err(CallError::Rejected(*rejected)))
            }
            ResponseFutureProj::Called { inner, ticket, classifier } => {
                let result = ready!(inner.poll(cx));
                if let Some(ticket) = ticket.take() {
                    ticket.complete(classifier.classify(&result));
                }
                Poll::Ready(result.map_err(CallError::Inner))
            }
        }
    }
}
