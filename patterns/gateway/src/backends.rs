//! The services behind the gateway, each behind its own circuit breaker, with a call counter.
//!
//! Every backend call has a deadline (an instant, so several calls can share one) and runs
//! through [`Backend::guard`]: the breaker is asked first, the call is cut off at the deadline,
//! and the outcome is counted by the circuit-breaker chapter's rule: an HTTP answer by
//! [`circuit_breaker::classify::http_status`] (a 5xx fails, a 4xx, 429 included, is a refusal),
//! a gRPC answer by its equivalent here (`RESOURCE_EXHAUSTED`, gRPC's 429, is a refusal too). A
//! refusal is the backend working correctly, so it counts as a success; timeouts, transport
//! errors and 5xx count as failures. The timeout sits *inside* the breaker's call, so a backend
//! that hangs trips the breaker instead of escaping it.
//!
//! The counters exist for the GraphQL chapter's N+1 test and the example's narration: how many
//! calls a query cost each backend.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use circuit_breaker::classify::http_status;
use circuit_breaker::{CallError, CircuitBreaker, Outcome};
use grpc::proto::v2::payment_queries_client::PaymentQueriesClient;
use grpc::proto::v2::payments_client::PaymentsClient;
use grpc::proto::v2::{AuthorizeRequest, Payment, PaymentsForOrdersRequest};
use http_json::problem::{PROBLEM_JSON, Problem};
use http_json::versions::v2::OrderV2;
use serde::Serialize;
use tokio::time::Instant;
use tonic::Code;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::auth::CALLER_HEADER;
use crate::problem::from_grpc;

/// Why a backend call gave no usable answer.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BackendError {
    /// The breaker refused the call without sending it: 503 at once, no wait.
    #[error("{0} is failing fast: its circuit breaker is open")]
    Open(&'static str),
    /// The deadline passed first: 504, and a failure for the breaker.
    #[error("{0} did not answer before the deadline")]
    Timeout(&'static str),
    /// No connection, an unreadable answer, a 5xx or a gRPC code that is not a
    /// refusal (the second field says which): 502, and a failure for the breaker.
    #[error("{0} is unreachable or failing: {1}")]
    Failed(&'static str, String),
    /// The backend answered, and refused (not its failure: the request's).
    #[error("{0} refused: {detail}", detail = .1.detail)]
    Refused(&'static str, Problem),
}

impl BackendError {
    /// The problem the gateway answers with.
    pub fn problem(&self) -> Problem {
        let detail = self.to_string();
        match self {
            BackendError::Open(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backend-unavailable",
                "A backend is unavailable",
                detail,
            ),
            BackendError::Timeout(_) => Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                "backend-timeout",
                "A backend did not answer in time",
                detail,
            ),
            BackendError::Failed(..) => Problem::new(
                StatusCode::BAD_GATEWAY,
                "backend-failed",
                "A backend failed",
                detail,
            ),
            BackendError::Refused(_, problem) => problem.clone(),
        }
    }

    /// Whether the backend said "no such thing" (as opposed to failing).
    pub fn is_not_found(&self) -> bool {
        matches!(self, BackendError::Refused(_, p) if p.status == 404)
    }
}

/// What went wrong inside one call, before the breaker counts it.
enum Fault {
    Timeout,
    Failed(String),
}

/// A backend's name, breaker and call counter.
#[derive(Debug)]
pub struct Backend {
    /// Names the backend in errors and problem details (`orders`, `payments`).
    pub name: &'static str,
    /// This backend's own breaker: one failing backend does not open another's.
    pub breaker: CircuitBreaker,
    calls: AtomicU64,
}

impl Backend {
    /// A backend with no calls counted yet.
    pub fn new(name: &'static str, breaker: CircuitBreaker) -> Self {
        Backend { name, breaker, calls: AtomicU64::new(0) }
    }

    /// Calls made to this backend so far (refused by the breaker ones excluded).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    // ANCHOR: guard
    /// Runs one call through the breaker, cut off at `deadline`. The call's
    /// `Ok(Err(problem))` is a refusal: a success for the breaker, an error
    /// for the caller.
    async fn guard<T>(
        &self,
        deadline: Instant,
        call: impl Future<Output = Result<Result<T, Problem>, Fault>>,
    ) -> Result<T, BackendError> {
        let name = self.name;
        let counted = async {
            self.calls.fetch_add(1, Ordering::Relaxed);
            match tokio::time::timeout_at(deadline, call).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => Err(Fault::Timeout),
            }
        };
        match self.breaker.call(counted).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(refusal)) => Err(BackendError::Refused(name, refusal)),
            Err(CallError::Rejected(_)) => Err(BackendError::Open(name)),
            Err(CallError::Inner(Fault::Timeout)) => {
                Err(BackendError::Timeout(name))
            }
            Err(CallError::Inner(Fault::Failed(why))) => {
                Err(BackendError::Failed(name, why))
            }
        }
    }
    // ANCHOR_END: guard
}

/// What the orders service answered to a forwarded request.
#[derive(Debug)]
pub struct Forwarded {
    /// Passed to the client as it is, 4xx included (a 5xx never gets here: it
    /// is a [`BackendError::Failed`]).
    pub status: StatusCode,
    /// Says whether the body is an order or a problem; passed on.
    pub content_type: Option<String>,
    /// Where a created order lives, in the backend's paths: the route rewrites it.
    pub location: Option<String>,
    /// The `Idempotent-Replayed` header: this answer is a replay of an earlier one.
    pub replayed: Option<String>,
    /// On a 429 or 503: when the client may try again.
    pub retry_after: Option<String>,
    /// The body, read whole and passed on unparsed.
    pub body: Vec<u8>,
}

/// Writes what a call to a backend carries besides the request itself into its headers:
/// the capstone's trace context, so that a composed read joins its caller's trace. The chapter's
/// gateway traces nothing and sets none.
pub type Propagate = fn(&mut reqwest::header::HeaderMap);

/// The headers `propagate` writes, or none.
fn propagated(propagate: Option<Propagate>) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(propagate) = propagate {
        propagate(&mut headers);
    }
    headers
}

/// The orders service (HTTP/JSON), spoken to with reqwest.
#[derive(Debug)]
pub struct OrdersBackend {
    /// Its name, breaker and call counter.
    pub backend: Backend,
    base_url: String,
    http: reqwest::Client,
    propagate: Option<Propagate>,
}

impl OrdersBackend {
    /// A client for the orders service at `base_url`. Connecting is given 2 s;
    /// the whole call is bounded by each call's deadline. Fails only if reqwest
    /// cannot build its client (its TLS backend, for one).
    pub fn new(
        base_url: String,
        breaker: CircuitBreaker,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(OrdersBackend {
            backend: Backend::new("orders", breaker),
            base_url,
            http,
            propagate: None,
        })
    }

    /// Every call also carries the headers `propagate` writes, at the call.
    pub fn with_propagation(mut self, propagate: Propagate) -> Self {
        self.propagate = Some(propagate);
        self
    }

    /// Sends a request on and returns the answer as it is (problems included).
    /// Only the headers named here leave the gateway: the client's other
    /// headers, a forged caller header among them, are not forwarded.
    #[allow(clippy::too_many_arguments)]
    pub async fn forward(
        &self,
        method: reqwest::Method,
        path_and_query: &str,
        content_type: Option<&str>,
        idempotency_key: Option<&str>,
        body: Vec<u8>,
        caller: &str,
        request_id: &str,
        deadline: Instant,
    ) -> Result<Forwarded, BackendError> {
        let url = format!("{}{path_and_query}", self.base_url);
        let mut request = self
            .http
            .request(method, url)
            .headers(propagated(self.propagate))
            .header(CALLER_HEADER, caller)
            .header(http_json::server::CORRELATION_ID, request_id);
        if let Some(content_type) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        if let Some(key) = idempotency_key {
            request = request.header(http_json::idempotency::IDEMPOTENCY_KEY, key);
        }
        let call = async move {
            let response = request.body(body).send().await.map_err(failed)?;
            let status = response.status();
            let header = |name: &str| {
                let value = response.headers().get(name)?;
                match value.to_str() {
                    Ok(text) => Some(text.to_owned()),
                    // Not passed on; said, so a missing Location can be traced.
                    Err(e) => {
                        tracing::warn!(header = name, %e, "backend header dropped");
                        None
                    }
                }
            };
            let forwarded = Forwarded {
                status: StatusCode::from_u16(status.as_u16())
                    .unwrap_or(StatusCode::BAD_GATEWAY),
                content_type: header("content-type"),
                location: header("location"),
                replayed: header(http_json::idempotency::IDEMPOTENT_REPLAYED),
                retry_after: header("retry-after"),
                body: response.bytes().await.map_err(failed)?.to_vec(),
            };
            // The breaker chapter's rule: only a 5xx is the backend failing.
            // A 429 is passed on to the client, Retry-After and all.
            if http_status(status.as_u16()) == Outcome::Failure {
                return Err(Fault::Failed(format!("answered {status}")));
            }
            Ok(Ok(forwarded))
        };
        self.backend.guard(deadline, call).await
    }

    /// `GET /v2/orders/{id}`, decoded.
    pub async fn get(
        &self,
        id: &str,
        caller: &str,
        deadline: Instant,
    ) -> Result<OrderV2, BackendError> {
        let path = format!("/v2/orders/{id}");
        self.get_json(&path, caller, deadline).await
    }

    /// `GET /v2/orders?customer_id=...`, decoded.
    pub async fn list(
        &self,
        customer_id: &str,
        caller: &str,
        deadline: Instant,
    ) -> Result<Vec<OrderV2>, BackendError> {
        let query: String = customer_id
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        let path = format!("/v2/orders?customer_id={query}");
        self.get_json(&path, caller, deadline).await
    }

    /// `GET path` (`/v2/orders/...`), decoded as `T`: what [`OrdersBackend::get`]
    /// and [`OrdersBackend::list`] use, and any other read of the service.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        caller: &str,
        deadline: Instant,
    ) -> Result<T, BackendError> {
        let request = self
            .http
            .get(format!("{}{path}", self.base_url))
            .headers(propagated(self.propagate))
            .header(CALLER_HEADER, caller);
        let call = async move {
            let response = request.send().await.map_err(failed)?;
            let status = response.status();
            let is_problem = response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
            if http_status(status.as_u16()) == Outcome::Failure {
                return Err(Fault::Failed(format!("answered {status}")));
            }
            if status.is_success() {
                return Ok(Ok(response.json::<T>().await.map_err(failed)?));
            }
            // Anything else is a refusal: the backend's problem body if it
            // sent one, or one that names its status.
            if is_problem {
                return Ok(Err(response.json::<Problem>().await.map_err(failed)?));
            }
            let code = StatusCode::from_u16(status.as_u16())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            let detail = format!("orders answered {status}");
            Ok(Err(Problem::new(
                code,
                "orders-refused",
                "Refused by orders",
                detail,
            )))
        };
        self.backend.guard(deadline, call).await
    }
}

fn failed(error: reqwest::Error) -> Fault {
    Fault::Failed(error.to_string())
}

/// A payment as the gateway shows it in JSON.
#[derive(
    Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct PaymentView {
    /// The id payments gave the authorization.
    pub payment_id: String,
    /// The order the payment is for: what composition joins on.
    pub order_id: String,
    /// `authorized`, `captured` or `settled` (the chapter's service); the whole shop's payments
    /// also answer `pending`, `declined`, `refunded` and `voided`.
    pub status: String,
    /// The amount authorized, in cents.
    pub amount_cents: u64,
    /// The card network's approval code, as payments reports it.
    pub authorization_code: String,
}

impl From<Payment> for PaymentView {
    fn from(payment: Payment) -> Self {
        let status = payment.status().as_str_name();
        let status = status.trim_start_matches("PAYMENT_STATUS_").to_lowercase();
        PaymentView {
            payment_id: payment.payment_id,
            order_id: payment.order_id,
            status,
            amount_cents: payment.amount_cents,
            authorization_code: payment.authorization_code,
        }
    }
}

/// The payments service (gRPC), spoken to with tonic over one HTTP/2 channel.
#[derive(Debug)]
pub struct PaymentsBackend {
    /// Its name, breaker and call counter.
    pub backend: Backend,
    channel: Channel,
    propagate: Option<Propagate>,
}

impl PaymentsBackend {
    /// Connects lazily: the first call opens the connection, so the gateway
    /// starts even while payments is down (and its breaker then counts that).
    pub fn new(
        url: String,
        breaker: CircuitBreaker,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(url)?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        Ok(PaymentsBackend::over(channel, breaker))
    }

    /// Calls payments over `channel`, built by the caller: one that speaks TLS, say.
    pub fn over(channel: Channel, breaker: CircuitBreaker) -> Self {
        let backend = Backend::new("payments", breaker);
        PaymentsBackend { backend, channel, propagate: None }
    }

    /// Every call also carries the headers `propagate` writes, at the call, as metadata.
    pub fn with_propagation(mut self, propagate: Propagate) -> Self {
        self.propagate = Some(propagate);
        self
    }

    /// `Authorize`, with the caller in metadata and what is left of the deadline
    /// sent as `grpc-timeout`.
    pub async fn authorize(
        &self,
        message: AuthorizeRequest,
        caller: &str,
        deadline: Instant,
    ) -> Result<PaymentView, BackendError> {
        let request = grpc_request(message, caller, deadline, self.propagate);
        let mut client = PaymentsClient::new(self.channel.clone());
        let call = async move { classify(client.authorize(request).await) };
        self.backend.guard(deadline, call).await.map(PaymentView::from)
    }

    /// The payments of these orders, in one call (orders without one are absent).
    pub async fn for_orders(
        &self,
        order_ids: Vec<String>,
        caller: &str,
        deadline: Instant,
    ) -> Result<Vec<PaymentView>, BackendError> {
        let message = PaymentsForOrdersRequest { order_ids };
        let request = grpc_request(message, caller, deadline, self.propagate);
        let mut client = PaymentQueriesClient::new(self.channel.clone());
        let call = async move {
            let answer = classify(client.payments_for_orders(request).await)?;
            Ok(answer.map(|a| a.payments))
        };
        let payments = self.backend.guard(deadline, call).await?;
        Ok(payments.into_iter().map(PaymentView::from).collect())
    }
}

fn grpc_request<T>(
    message: T,
    caller: &str,
    deadline: Instant,
    propagate: Option<Propagate>,
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    for (name, value) in &propagated(propagate) {
        let key = AsciiMetadataKey::from_bytes(name.as_str().as_bytes());
        match (key, AsciiMetadataValue::try_from(value.as_bytes())) {
            (Ok(key), Ok(value)) => {
                request.metadata_mut().insert(key, value);
            }
            _ => {
                tracing::warn!(header = %name, "not valid as gRPC metadata: not sent")
            }
        }
    }
    if let Ok(value) = AsciiMetadataValue::try_from(caller) {
        request.metadata_mut().insert(CALLER_HEADER, value);
    }
    request
}

/// A gRPC answer as the breaker should count it: refusals are the backend
/// working, the rest are its failures.
fn classify<T>(
    answer: Result<tonic::Response<T>, tonic::Status>,
) -> Result<Result<T, Problem>, Fault> {
    // tonic's own timer (the grpc-timeout we set) reports CANCELLED; name it.
    match answer.map_err(grpc::client::name_the_deadline) {
        Ok(response) => Ok(Ok(response.into_inner())),
        Err(status) => match status.code() {
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unauthenticated
            | Code::ResourceExhausted => Ok(Err(from_grpc(&status))),
            Code::DeadlineExceeded => Err(Fault::Timeout),
            _ => Err(Fault::Failed(format!(
                "{}: {}",
                grpc::ledger::code_name(status.code()),
                status.message()
            ))),
        },
    }
}
