//! The breaker as a tower `Layer`, so it wraps a tonic channel, a hyper client or any tower stack.
//!
//! Admission is decided in `poll_ready`: when the breaker refuses, the service reports ready at
//! once without polling the inner service, and `call` answers with the rejection without calling
//! it. An open breaker therefore never touches the dependency, not even to reserve capacity in it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::breaker::{CircuitBreaker, Outcome, Rejected, Ticket};
use crate::call::CallError;
use crate::classify::{AnyError, Classify};

// ANCHOR: CircuitBreakerLayer
/// Wraps services in a [`CircuitBreaker`]; every service made by one layer shares its breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer<C = AnyError> {
    breaker: CircuitBreaker,
    classifier: C,
}

impl CircuitBreakerLayer {
    pub fn new(breaker: CircuitBreaker) -> Self {
        CircuitBreakerLayer { breaker, classifier: AnyError }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Judges results with `classifier` (for HTTP, [`crate::classify::HttpResponse`]).
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
            admission: None,
        }
    }
}
// ANCHOR_END: CircuitBreakerLayer

/// A ticket owned by a service or a response future; dropping it unrecorded abandons the call.
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

enum Admission {
    Granted(OwnedTicket),
    Refused(Rejected),
}

/// A service behind a circuit breaker. Clones share the breaker, not an admission in progress.
pub struct CircuitBreakerService<S, C = AnyError> {
    inner: S,
    breaker: CircuitBreaker,
    classifier: C,
    /// Decided by `poll_ready`, consumed by `call`.
    admission: Option<Admission>,
}

impl<S: Clone, C: Clone> Clone for CircuitBreakerService<S, C> {
    fn clone(&self) -> Self {
        CircuitBreakerService {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
            admission: None,
        }
    }
}

impl<S, C> CircuitBreakerService<S, C> {
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

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let admission = self.admission.get_or_insert_with(|| {
            match self.breaker.acquire_ticket() {
                Ok(ticket) => Admission::Granted(OwnedTicket {
                    breaker: self.breaker.clone(),
                    ticket: Some(ticket),
                }),
                Err(rejected) => Admission::Refused(rejected),
            }
        });
        match admission {
            // Ready to answer with the rejection; the inner service is left alone.
            Admission::Refused(_) => Poll::Ready(Ok(())),
            Admission::Granted(_) => {
                self.inner.poll_ready(cx).map_err(CallError::Inner)
            }
        }
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.admission.take() {
            Some(Admission::Granted(ticket)) => ResponseFuture::Called {
                inner: self.inner.call(request),
                ticket: Some(ticket),
                classifier: self.classifier.clone(),
            },
            Some(Admission::Refused(rejected)) => {
                ResponseFuture::Refused { rejected }
            }
            None => panic!(
                "CircuitBreakerService::call before poll_ready returned Ready (a tower contract violation)"
            ),
        }
    }
}
// ANCHOR_END: Service

pin_project! {
    /// The response of a [`CircuitBreakerService`]: the inner call, judged when it completes.
    #[project = ResponseFutureProj]
    pub enum ResponseFuture<F, C> {
        Called { #[pin] inner: F, ticket: Option<OwnedTicket>, classifier: C },
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
